//! Backoff for guests in a reboot loop. A guest that reboots (hearth-vmm exit status 3) is
//! started again, always (EC2 keeps a rebooting instance running), but not at once forever:
//! the first [`FREE_RESTARTS`] quick reboots in a row restart at once, the next ones wait
//! [`FIRST_DELAY`], doubling up to [`MAX_DELAY`]. A boot that stayed up [`STABLE_UPTIME`]
//! ends the loop: its reboot restarts at once again.

use std::time::{Duration, Instant};

/// Quick reboots in a row restarted without delay.
pub const FREE_RESTARTS: u32 = 3;
/// Delay before the first delayed restart.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between two restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A boot that lasted this long was not part of a reboot loop.
pub const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// Reboot-loop state of one instance (in memory: an agent restart forgets it).
#[derive(Debug, Default, Clone)]
pub struct RebootBackoff {
    /// Reboots in a row whose boot lasted less than [`STABLE_UPTIME`].
    quick_reboots: u32,
    /// No restart before this.
    not_before: Option<Instant>,
}

impl RebootBackoff {
    /// Records a guest reboot whose boot lasted `uptime` (`None`: unknown, e.g. an adopted
    /// VMM, counted as stable) and returns how long to wait before the next start.
    pub fn record_reboot(&mut self, uptime: Option<Duration>, now: Instant) -> Duration {
        match uptime {
            Some(uptime) if uptime < STABLE_UPTIME => self.quick_reboots = self.quick_reboots.saturating_add(1),
            _ => self.quick_reboots = 1,
        }
        let delay = delay_after(self.quick_reboots);
        self.not_before = (!delay.is_zero()).then(|| now + delay);
        delay
    }

    /// Quick reboots in a row so far.
    pub fn quick_reboots(&self) -> u32 {
        self.quick_reboots
    }

    /// How long the next restart must still wait at `now` (zero: start it).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// Forgets the loop (a stop or a new start generation).
    pub fn reset(&mut self) {
        *self = RebootBackoff::default();
    }
}

/// The delay after the `n`th quick reboot in a row: 0 up to [`FREE_RESTARTS`], then 1 s,
/// 2 s, 4 s, … capped at [`MAX_DELAY`].
pub fn delay_after(n: u32) -> Duration {
    if n <= FREE_RESTARTS {
        return Duration::ZERO;
    }
    let doublings = (n - FREE_RESTARTS - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_after_the_free_restarts_and_is_capped() {
        let delays: Vec<u64> = (1..=12).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(delays, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_stable_boot_resets_the_loop() {
        let t0 = Instant::now();
        let mut backoff = RebootBackoff::default();
        let quick = Some(Duration::from_millis(50));
        for _ in 0..FREE_RESTARTS {
            assert_eq!(backoff.record_reboot(quick, t0), Duration::ZERO);
            assert_eq!(backoff.remaining(t0), Duration::ZERO);
        }
        assert_eq!(backoff.record_reboot(quick, t0), FIRST_DELAY);
        assert_eq!(backoff.remaining(t0), FIRST_DELAY);
        assert_eq!(backoff.remaining(t0 + FIRST_DELAY), Duration::ZERO);
        assert_eq!(backoff.record_reboot(quick, t0), 2 * FIRST_DELAY);
        assert_eq!(backoff.quick_reboots(), FREE_RESTARTS + 2);
        // Up a while: the next reboot restarts at once, the count starts over.
        assert_eq!(backoff.record_reboot(Some(STABLE_UPTIME), t0), Duration::ZERO);
        assert_eq!(backoff.quick_reboots(), 1);
        assert_eq!(backoff.record_reboot(None, t0), Duration::ZERO);
        backoff.reset();
        assert_eq!(backoff.quick_reboots(), 0);
    }
}
