//! Where the guest's serial output goes: written out a line at a time, and, when it is a
//! file, kept to a bounded size however much the guest prints.
//!
//! A line at a time (or [`ConsoleOut::LINE_LIMIT`] bytes of a longer one) instead of one
//! `write(2)` per byte the guest prints: a Linux boot prints ~20 KB. A partial line (a
//! prompt) waits for [`ConsoleOut::tick`], which the event loop calls every 50 ms and the
//! VMM once more at its end; only a VMM killed by SIGKILL loses what it held, at most 50 ms
//! of an unfinished line.
//!
//! A console file never grows past [`ConsoleOut::HARD_LIMIT`]: once it passes
//! [`ConsoleOut::TRIM_AT`], the next tick replaces it (a new file renamed over it, so a
//! reader sees the old file or the new one, never a half-written one) with its last
//! [`ConsoleOut::KEEP`] bytes, from a line start — what EC2's GetConsoleOutput returns is
//! the last 64 KiB. Output that arrives while the file is at the hard limit (a guest
//! printing faster than the ticks trim) is dropped, and a line in the file says how much.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The console's destination.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    /// The console file, when it is one (kept bounded).
    path: Option<PathBuf>,
    /// Bytes in the file (or written to the stream).
    size: u64,
    /// Bytes dropped at the hard limit since the last trim.
    dropped: u64,
    pending: Vec<u8>,
}

impl ConsoleOut {
    /// Longest run written at once when no newline comes.
    pub const LINE_LIMIT: usize = 4096;
    /// What a trim keeps: the size of EC2's console output.
    pub const KEEP: u64 = 64 << 10;
    /// A console file larger than this is trimmed at the next tick.
    pub const TRIM_AT: u64 = 256 << 10;
    /// A console file never grows past this.
    pub const HARD_LIMIT: u64 = 1 << 20;

    /// Output to a stream (standard output, nowhere): written as it comes, never trimmed.
    pub fn stream(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            path: None,
            size: 0,
            dropped: 0,
            pending: Vec::with_capacity(256),
        }
    }

    /// Output appended to the file at `path` (created 0600 if missing; what an earlier run
    /// left there counts towards the limits).
    pub fn file(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            out: Box::new(file),
            path: Some(path.to_path_buf()),
            size,
            dropped: 0,
            pending: Vec::with_capacity(256),
        })
    }

    /// Writes out what is held (dropping what would pass the hard limit).
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // At the hard limit a file takes nothing more: a line that does not fit is dropped
        // whole, so the file ends with a whole line.
        if self.path.is_some() && self.size + self.pending.len() as u64 > Self::HARD_LIMIT {
            self.dropped += self.pending.len() as u64;
            self.pending.clear();
            return Ok(());
        }
        let result = self.out.write_all(&self.pending);
        self.size += self.pending.len() as u64;
        // Output that cannot be written (full disk, closed pipe) is dropped, never hoarded.
        self.pending.clear();
        result
    }

    /// Writes out a partial line, and trims a console file that has passed
    /// [`ConsoleOut::TRIM_AT`]. A trim that fails leaves the file as it was (and the hard
    /// limit still holds).
    pub fn tick(&mut self) {
        let _ = self.write_pending();
        if self.size > Self::TRIM_AT {
            let _ = self.trim();
        }
    }

    fn trim(&mut self) -> io::Result<()> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let mut current = File::open(&path)?;
        let len = current.metadata()?.len();
        let start = len.saturating_sub(Self::KEEP);
        current.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity(Self::KEEP as usize);
        current.take(Self::KEEP).read_to_end(&mut tail)?;
        // From the first whole line.
        let from = if start > 0 {
            tail.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1)
        } else {
            0
        };
        let mut kept = tail.split_off(from);
        if self.dropped > 0 {
            kept.extend_from_slice(
                format!(
                    "[hearth-vmm: {} bytes of console output dropped: the guest printed faster than the console is kept]\n",
                    self.dropped
                )
                .as_bytes(),
            );
        }
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".trim");
        let temp = path.with_file_name(name);
        let result = (|| {
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&kept)?;
            std::fs::rename(&temp, &path)?;
            // Appends from here go to the new file.
            OpenOptions::new().append(true).open(&path)
        })();
        match result {
            Ok(file) => {
                self.out = Box::new(file);
                self.size = kept.len() as u64;
                self.dropped = 0;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.pending.len() >= Self::LINE_LIMIT {
            self.write_pending()?;
        }
        Ok(buf.len())
    }

    /// The UART flushes after every byte; holding the line is the point, so this does nothing
    /// ([`ConsoleOut::tick`] writes).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOut {
    fn drop(&mut self) {
        let _ = self.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-console-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_console_file_is_trimmed_to_its_last_lines_and_never_passes_the_hard_limit() {
        let dir = temp_dir("trim");
        let path = dir.join("console.log");
        let mut out = ConsoleOut::file(&path).unwrap();
        // Lines up to the hard limit and beyond, without a tick: the file stops at the limit.
        let mut n = 0u64;
        while n < 100_000 {
            writeln!(out, "line {n:08}").unwrap();
            n += 1;
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            size,
            ConsoleOut::HARD_LIMIT / 14 * 14,
            "whole 14-byte lines up to the limit"
        );
        // The tick trims: the last whole lines up to KEEP bytes, and a note of what was dropped.
        out.tick();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= ConsoleOut::KEEP + 200, "{}", text.len());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("line "), "{}", lines[0]);
        let last = lines.iter().rev().find(|l| l.starts_with("line ")).unwrap();
        assert_eq!(
            *last,
            format!("line {:08}", ConsoleOut::HARD_LIMIT / 14 - 1),
            "the last line kept before the limit"
        );
        assert!(lines.last().unwrap().contains("bytes of console output dropped"));
        // Writing goes on into the new file.
        writeln!(out, "after").unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("dropped: the guest printed faster than the console is kept]\nafter\n"));
        assert!(!dir.join("console.log.trim").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_small_console_file_is_left_alone_and_a_stream_is_never_cut() {
        let dir = temp_dir("small");
        let path = dir.join("console.log");
        std::fs::write(&path, "from the last boot\n").unwrap();
        let mut out = ConsoleOut::file(&path).unwrap();
        write!(out, "partial").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "from the last boot\n");
        out.tick();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "from the last boot\npartial");
        let _ = std::fs::remove_dir_all(&dir);

        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared::default();
        let mut out = ConsoleOut::stream(Box::new(sink.clone()));
        for _ in 0..(ConsoleOut::HARD_LIMIT / 10 + 10) {
            out.write_all(b"123456789\n").unwrap();
        }
        out.tick();
        assert_eq!(
            sink.0.lock().unwrap().len() as u64,
            (ConsoleOut::HARD_LIMIT / 10 + 10) * 10
        );
    }
}
