//! The files a RegisterImage caller names: only below hearthd's import directory
//! (`--image-import-dir`), reached one component at a time without following a symbolic
//! link, and read from the descriptors opened then (never reopened by path, so a file
//! swapped after the checks is not the file read).

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Component, Path, PathBuf};

/// A file opened below the import directory.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The file (a regular file).
    pub file: File,
    /// Its directory, for the files a manifest names relative to it.
    pub dir: File,
    /// Its path relative to the import directory (for messages).
    pub relative: PathBuf,
}

/// The path `given` (absolute below `import_dir`, or relative to it) as the names of its
/// components below `import_dir`: no `..`, nothing outside.
pub(crate) fn components_beneath(import_dir: &Path, given: &str) -> Result<Vec<OsString>, String> {
    if given.is_empty() {
        return Err("an empty path".to_string());
    }
    if given.as_bytes().contains(&0) {
        return Err("a path with a NUL byte".to_string());
    }
    let path = Path::new(given);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("'{given}' has a '..' component"));
    }
    let relative = if path.is_absolute() {
        let canonical = std::fs::canonicalize(import_dir).ok();
        let stripped = path
            .strip_prefix(import_dir)
            .ok()
            .or_else(|| canonical.as_deref().and_then(|dir| path.strip_prefix(dir).ok()));
        match stripped {
            Some(relative) => relative.to_path_buf(),
            None => {
                return Err(format!(
                    "'{given}' is outside the image import directory {}",
                    import_dir.display()
                ))
            }
        }
    } else {
        path.to_path_buf()
    };
    let names: Vec<OsString> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return Err(format!("'{given}' names the import directory itself, not a file"));
    }
    Ok(names)
}

fn open_at(dir: &File, name: &OsString, flags: libc::c_int) -> std::io::Result<File> {
    let name = CString::new(name.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string, both alive for
    // the call; a returned descriptor is new and owned by nothing else.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened above and is owned by the returned File only.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn describe(error: &std::io::Error, shown: &Path) -> String {
    match error.raw_os_error() {
        Some(libc::ELOOP) => format!("'{}' is or passes through a symbolic link", shown.display()),
        Some(libc::ENOTDIR) => format!(
            "'{}' passes through a symbolic link or something not a directory",
            shown.display()
        ),
        Some(libc::ENOENT) => format!("'{}': no such file", shown.display()),
        _ => format!("'{}': {error}", shown.display()),
    }
}

/// Opens the regular file at `names` below the directory `root`, one component at a time,
/// refusing symbolic links anywhere.
pub(crate) fn open_below(root: &File, names: &[OsString], shown: &Path) -> Result<(File, File), String> {
    let (last, dirs) = names
        .split_last()
        .ok_or_else(|| format!("'{}' names no file", shown.display()))?;
    let mut dir = root.try_clone().map_err(|e| describe(&e, shown))?;
    for name in dirs {
        dir = open_at(&dir, name, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| describe(&e, shown))?;
    }
    let file =
        open_at(&dir, last, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).map_err(|e| describe(&e, shown))?;
    let meta = file.metadata().map_err(|e| describe(&e, shown))?;
    if !meta.is_file() {
        return Err(format!("'{}' is not a regular file", shown.display()));
    }
    Ok((dir, file))
}

/// Opens `given` below `import_dir` (see the module docs).
pub(crate) fn open(import_dir: &Path, given: &str) -> Result<Opened, String> {
    let names = components_beneath(import_dir, given)?;
    let root = File::open(import_dir).map_err(|e| {
        format!(
            "the image import directory {} cannot be opened: {e}",
            import_dir.display()
        )
    })?;
    let relative: PathBuf = names.iter().collect();
    let (dir, file) = open_below(&root, &names, &relative)?;
    Ok(Opened { file, dir, relative })
}

/// Reads a whole opened file (at most `limit` bytes).
pub(crate) fn read_all(file: &File, limit: u64, shown: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let mut reader = file.take(limit + 1);
    reader.read_to_end(&mut bytes).map_err(|e| describe(&e, shown))?;
    if bytes.len() as u64 > limit {
        return Err(format!("'{}' is larger than {limit} bytes", shown.display()));
    }
    Ok(bytes)
}

/// Opens every file `manifest` names, relative to the manifest's directory `dir` (itself
/// below the import directory), refusing symbolic links.
pub(crate) fn open_manifest_files(
    dir: &File,
    manifest: &hearth_image::Manifest,
    shown_dir: &Path,
) -> Result<HashMap<String, File>, String> {
    let mut files = HashMap::new();
    for (_, file) in manifest.files() {
        if files.contains_key(&file.path) {
            continue;
        }
        let names: Vec<OsString> = Path::new(&file.path)
            .components()
            .map(|c| match c {
                Component::Normal(name) => Ok(name.to_os_string()),
                _ => Err(format!("'{}': not a plain relative path", file.path)),
            })
            .collect::<Result<_, _>>()?;
        let shown = shown_dir.join(&file.path);
        let (_, opened) = open_below(dir, &names, &shown)?;
        files.insert(file.path.clone(), opened);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn paths_stay_below_the_import_directory() {
        let dir = TempDir::new("import-paths");
        let import = dir.path().join("import");
        std::fs::create_dir_all(import.join("a")).unwrap();
        std::fs::write(import.join("a/f"), b"x").unwrap();
        let inside = |given: &str| components_beneath(&import, given);
        assert_eq!(inside("a/f").unwrap().len(), 2);
        assert_eq!(inside(&import.join("a/./f").display().to_string()).unwrap().len(), 2);
        assert!(inside("/etc/passwd")
            .unwrap_err()
            .contains("outside the image import directory"));
        assert!(inside("a/../a/f").unwrap_err().contains(".."));
        assert!(inside(&format!("{}/../import/a/f", import.display())).is_err());
        assert!(inside(&import.display().to_string()).is_err());
        assert!(inside("").is_err());
        assert_eq!(
            read_all(&open(&import, "a/f").unwrap().file, 10, Path::new("f")).unwrap(),
            b"x"
        );
        // Symbolic links anywhere on the path, to a file or to a directory.
        std::os::unix::fs::symlink("/etc/passwd", import.join("passwd")).unwrap();
        std::os::unix::fs::symlink(import.join("a"), import.join("b")).unwrap();
        assert!(open(&import, "passwd").unwrap_err().contains("symbolic link"));
        assert!(open(&import, "b/f").unwrap_err().contains("symbolic link"));
        assert!(open(&import, "a").unwrap_err().contains("not a regular file"));
        assert!(open(&import, "nope").unwrap_err().contains("no such file"));
    }
}
