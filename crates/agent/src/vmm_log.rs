//! Why a VMM ended: the last `vm-exit` event it wrote to `vmm.log` (its stderr), else its
//! exit status when the agent is its parent, else "ended without a word".

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// File name of the VMM's stderr (event lines) in the run directory.
pub const LOG_FILE: &str = "vmm.log";

/// Most of `vmm.log` read when looking for the exit event.
const MAX_TAIL: u64 = 1 << 20;

/// Why a VMM ended, in hearth-vmm's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    /// `guest-poweroff`, `guest-reboot`, `guest-crash`, `killed` or `vmm-error`.
    pub reason: String,
    /// Human detail, often empty.
    pub detail: String,
}

impl ExitRecord {
    fn new(reason: &str, detail: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

/// Reads what the VMM started at `offset` of `log` wrote and works out why it ended;
/// `wait_status` is the raw `waitpid` status when the agent reaped it.
pub fn exit_record(log: &Path, offset: u64, wait_status: Option<i32>, pid: i32) -> ExitRecord {
    let text = read_tail(log, offset).unwrap_or_default();
    from_log_text(&text, wait_status, pid)
}

fn read_tail(log: &Path, offset: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(log)?;
    let len = file.metadata()?.len();
    let start = offset.min(len).max(len.saturating_sub(MAX_TAIL));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The decision, on the text the VMM wrote.
pub fn from_log_text(text: &str, wait_status: Option<i32>, pid: i32) -> ExitRecord {
    let mut last_text_line = "";
    let mut exit_event = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) if value["event"] == "vm-exit" => exit_event = Some(value),
            Ok(_) => {}
            Err(_) => last_text_line = line,
        }
    }
    if let Some(event) = exit_event {
        let reason = event["reason"].as_str().unwrap_or("vmm-error");
        return ExitRecord::new(reason, event["detail"].as_str().unwrap_or_default());
    }
    let Some(status) = wait_status else {
        return ExitRecord::new(
            "killed",
            format!("hearth-vmm (pid {pid}) ended without a vm-exit event (killed by a signal?)"),
        );
    };
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let name = signal_name(signal);
        let reason = match signal {
            libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGHUP => "killed",
            _ => "vmm-error",
        };
        return ExitRecord::new(
            reason,
            format!("hearth-vmm (pid {pid}) was killed by signal {signal} ({name})"),
        );
    }
    let code = libc::WEXITSTATUS(status);
    let said = |fallback: String| {
        if last_text_line.is_empty() {
            fallback
        } else {
            last_text_line.to_string()
        }
    };
    match code {
        0 => ExitRecord::new("guest-poweroff", ""),
        3 => ExitRecord::new("guest-reboot", ""),
        4 => ExitRecord::new("guest-crash", said(String::new())),
        5 => ExitRecord::new("killed", said(String::new())),
        1 => ExitRecord::new(
            "vmm-error",
            said("hearth-vmm refused its configuration (status 1)".into()),
        ),
        code => ExitRecord::new("vmm-error", said(format!("hearth-vmm exited with status {code}"))),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED: &str = r#"{"devices":["block","rng"],"event":"vm-started","pid":7,"vcpus":1}"#;

    #[test]
    fn the_last_vm_exit_event_wins() {
        let text = format!(
            "{STARTED}\n{}\n{STARTED}\n{}\n",
            r#"{"detail":"","event":"vm-exit","exit_status":3,"reason":"guest-reboot","uptime_ms":5}"#,
            r#"{"detail":"triple fault","event":"vm-exit","exit_status":4,"reason":"guest-crash","uptime_ms":5}"#
        );
        assert_eq!(
            from_log_text(&text, None, 7),
            ExitRecord::new("guest-crash", "triple fault")
        );
    }

    #[test]
    fn without_an_event_the_wait_status_decides() {
        // Exited with status 1 (a configuration error): the error line is the detail.
        let text = "hearth-vmm: invalid config: kernel /nope: No such file or directory\n";
        let record = from_log_text(text, Some(1 << 8), 7);
        assert_eq!(record.reason, "vmm-error");
        assert!(record.detail.contains("kernel /nope"), "{record:?}");
        // SIGKILL.
        let record = from_log_text(STARTED, Some(libc::SIGKILL), 7);
        assert_eq!(record.reason, "killed");
        assert!(record.detail.contains("signal 9 (SIGKILL)"), "{record:?}");
        // SIGABRT is the VMM failing, not someone stopping it.
        assert_eq!(from_log_text("", Some(libc::SIGABRT), 7).reason, "vmm-error");
        assert_eq!(from_log_text("", Some(3 << 8), 7).reason, "guest-reboot");
    }

    #[test]
    fn an_adopted_vmm_that_vanished_is_reported_killed() {
        let record = from_log_text(STARTED, None, 42);
        assert_eq!(record.reason, "killed");
        assert!(record.detail.contains("pid 42"), "{record:?}");
    }

    #[test]
    fn only_events_after_the_offset_count() {
        let dir = std::env::temp_dir().join(format!("hearth-agent-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(LOG_FILE);
        let old = r#"{"detail":"","event":"vm-exit","exit_status":0,"reason":"guest-poweroff","uptime_ms":5}"#;
        std::fs::write(&log, format!("{old}\n{STARTED}\n")).unwrap();
        let offset = old.len() as u64 + 1;
        assert_eq!(exit_record(&log, offset, None, 1).reason, "killed");
        assert_eq!(exit_record(&log, 0, None, 1).reason, "guest-poweroff");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
