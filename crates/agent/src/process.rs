//! hearth-vmm processes: starting one in its own session, telling whether a pid is still
//! one of ours, reaping it when we are its parent, signalling it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::LaunchError;

/// What `check` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Still running.
    Alive,
    /// Gone; the raw wait status when we were its parent and reaped it.
    Exited(Option<i32>),
}

/// Looks at `pid` without blocking: reaps it if it is our child and has ended; otherwise
/// `kill(pid, 0)` and, for a zombie of someone else, `/proc/<pid>/stat`.
pub fn check(pid: i32) -> ProcessState {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only writes the status integer we pass.
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if reaped == pid {
        return ProcessState::Exited(Some(status));
    }
    if reaped == 0 {
        return ProcessState::Alive;
    }
    // Not our child (ECHILD): someone else's, e.g. a VMM started by an earlier agent.
    // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
    let exists = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists || is_zombie(pid) {
        ProcessState::Exited(None)
    } else {
        ProcessState::Alive
    }
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // "pid (comm) S …": the comm may hold spaces and parentheses, the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_none_or(|state| state == 'Z' || state == 'X')
}

/// The argument vector of `pid`, from `/proc/<pid>/cmdline`.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The config file a `hearth-vmm --config FILE` argument vector names, if it is one.
fn vmm_config_arg(argv: &[String], vmm_binary: &Path) -> Option<PathBuf> {
    let program = Path::new(argv.first()?).file_name()?.to_str()?;
    let expected = vmm_binary.file_name().and_then(|n| n.to_str()).unwrap_or("hearth-vmm");
    if program != expected && !program.starts_with("hearth-vmm") {
        return None;
    }
    let position = argv.iter().position(|a| a == "--config")?;
    argv.get(position + 1).map(PathBuf::from)
}

/// Whether `pid` is a hearth-vmm started with `--config config_path`.
pub fn is_our_vmm(pid: i32, vmm_binary: &Path, config_path: &Path) -> bool {
    cmdline(pid)
        .and_then(|argv| vmm_config_arg(&argv, vmm_binary))
        .is_some_and(|config| config == config_path)
}

/// Every running hearth-vmm whose `--config` lies directly in a directory of `run_dir`:
/// config path → pid. Finds a VMM even when the agent died before writing its pid file.
pub fn find_vmms(run_dir: &Path, vmm_binary: &Path) -> HashMap<PathBuf, i32> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Some(config) = cmdline(pid).and_then(|argv| vmm_config_arg(&argv, vmm_binary)) else {
            continue;
        };
        let in_run_dir = config.parent().and_then(Path::parent) == Some(run_dir);
        if in_run_dir && !matches!(check(pid), ProcessState::Exited(_)) {
            found.insert(config, pid);
        }
    }
    found
}

/// Sends `signal` to `pid` if it is still the VMM started with `config_path` (so that a
/// recycled pid is never hit).
pub fn signal_vmm(pid: i32, signal: i32, vmm_binary: &Path, config_path: &Path) -> io::Result<()> {
    if !is_our_vmm(pid, vmm_binary, config_path) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill has no memory effects; the pid was just checked to be our VMM.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts `vmm_binary --config config_path` in `dir`, in a session of its own (the agent
/// dying or being signalled must not reach it), stdin and stdout on /dev/null, stderr
/// appended to `log`. Returns its pid; the caller reaps it (`check`).
pub fn spawn_vmm(vmm_binary: &Path, dir: &Path, config_path: &Path, log: &Path) -> Result<i32, LaunchError> {
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| LaunchError::WriteFile {
            path: log.to_path_buf(),
            source,
        })?;
    let mut command = Command::new(vmm_binary);
    command
        .arg("--config")
        .arg(config_path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| LaunchError::Spawn {
        binary: vmm_binary.to_path_buf(),
        source,
    })?;
    // The `Child` is dropped without waiting: `check` reaps the pid.
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_child_is_alive_then_reaped_with_its_status() {
        // Reaped by `check`, as the agent reaps its VMMs.
        let pid = Command::new("sh")
            .args(["-c", "sleep 0.2; exit 3"])
            .spawn()
            .unwrap()
            .id() as i32;
        assert_eq!(check(pid), ProcessState::Alive);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let ProcessState::Exited(status) = check(pid) {
                break status;
            }
            assert!(Instant::now() < deadline, "child did not end");
            std::thread::sleep(Duration::from_millis(10));
        };
        let status = status.expect("we are the parent: the status is known");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3);
        // Reaped: no zombie is left, and the pid now reads as gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(check(pid), ProcessState::Exited(None));
    }

    #[test]
    fn only_hearth_vmm_with_our_config_is_ours() {
        let bin = Path::new("/opt/hearth/hearth-vmm");
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            vmm_config_arg(&argv(&["/usr/bin/hearth-vmm", "--config", "/r/i-1/config.json"]), bin),
            Some(PathBuf::from("/r/i-1/config.json"))
        );
        assert_eq!(
            vmm_config_arg(&argv(&["/bin/sleep", "--config", "/r/i-1/config.json"]), bin),
            None
        );
        assert_eq!(vmm_config_arg(&argv(&["hearth-vmm", "--kernel", "k"]), bin), None);
        // Our own process is not a VMM.
        assert!(!is_our_vmm(
            std::process::id() as i32,
            bin,
            Path::new("/r/i-1/config.json")
        ));
    }
}
