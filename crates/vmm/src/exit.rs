//! Why a VM ended: the first reason reported wins, and becomes the process exit status
//! and the `vm-exit` event line.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VMM process ends. Exit statuses are part of the CLI contract (`USAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered itself off (ACPI S5). Status 0.
    GuestPowerOff,
    /// The guest asked for a reset (i8042 or ACPI reset register). Status 3.
    GuestReboot,
    /// The guest crashed: triple fault, KVM internal error, failed entry. Status 4.
    GuestCrash(String),
    /// Ended from outside: `kill` command, a signal, or the power button not answered in
    /// time. Status 5.
    Killed(String),
    /// The VMM itself failed. Status 2.
    VmmError(String),
}

impl ExitReason {
    /// The process exit status.
    pub fn exit_status(&self) -> i32 {
        match self {
            ExitReason::GuestPowerOff => 0,
            ExitReason::VmmError(_) => 2,
            ExitReason::GuestReboot => 3,
            ExitReason::GuestCrash(_) => 4,
            ExitReason::Killed(_) => 5,
        }
    }

    /// Short stable name used in event lines.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::GuestPowerOff => "guest-poweroff",
            ExitReason::GuestReboot => "guest-reboot",
            ExitReason::GuestCrash(_) => "guest-crash",
            ExitReason::Killed(_) => "killed",
            ExitReason::VmmError(_) => "vmm-error",
        }
    }

    /// Human detail, empty when the name says it all.
    pub fn detail(&self) -> &str {
        match self {
            ExitReason::GuestPowerOff | ExitReason::GuestReboot => "",
            ExitReason::GuestCrash(d) | ExitReason::Killed(d) | ExitReason::VmmError(d) => d,
        }
    }
}

/// Shared by every thread that can end the VM; the event loop waits on `event`.
#[derive(Debug)]
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl VmExit {
    /// A fresh, not yet requested exit.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another one came first, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none() {
            *current = Some(reason);
            let _ = self.event.write(1);
        }
    }

    /// The reason, once requested.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True once an exit was requested.
    pub fn is_requested(&self) -> bool {
        self.reason().is_some()
    }

    /// The eventfd the event loop watches.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let exit = VmExit::new().unwrap();
        assert!(!exit.is_requested());
        exit.request(ExitReason::GuestPowerOff);
        exit.request(ExitReason::Killed("late".into()));
        assert_eq!(exit.reason(), Some(ExitReason::GuestPowerOff));
        assert_eq!(exit.event().read().unwrap(), 1);
    }

    #[test]
    fn statuses_are_distinct() {
        let all = [
            ExitReason::GuestPowerOff,
            ExitReason::VmmError(String::new()),
            ExitReason::GuestReboot,
            ExitReason::GuestCrash(String::new()),
            ExitReason::Killed(String::new()),
        ];
        let statuses: std::collections::HashSet<i32> = all.iter().map(|r| r.exit_status()).collect();
        assert_eq!(statuses.len(), all.len());
        assert!(!statuses.contains(&1), "1 is reserved for configuration errors");
    }
}
