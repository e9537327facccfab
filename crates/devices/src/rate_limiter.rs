//! Token-bucket rate limiting for virtio devices (ops/s and bytes/s), woken by a timerfd.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// A token-bucket limit: `*_per_sec` refills, `*_burst` is the bucket size (defaults to
/// one second's worth). Absent or zero means unlimited.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests (block) or frames (net) per second.
    pub ops_per_sec: Option<u64>,
    /// Bucket size in requests.
    pub ops_burst: Option<u64>,
    /// Bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Bucket size in bytes.
    pub bytes_burst: Option<u64>,
}

impl RateLimitConfig {
    /// True when no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.ops_per_sec.unwrap_or(0) == 0 && self.bytes_per_sec.unwrap_or(0) == 0
    }
}

/// Token amounts are kept in billionths of a token so that refilling by
/// `elapsed_nanoseconds * tokens_per_second` is exact integer arithmetic.
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// One token bucket: holds up to `size` tokens, refilled continuously at `refill_per_sec`.
#[derive(Debug)]
struct TokenBucket {
    size: u64,
    refill_per_sec: u64,
    /// Current content in billionths of a token; negative after an oversized request.
    nano_tokens: i128,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` when `per_sec` is absent or zero (unlimited).
    fn new(per_sec: Option<u64>, burst: Option<u64>, now: Instant) -> Option<Self> {
        let refill_per_sec = per_sec.filter(|&rate| rate > 0)?;
        let size = burst.unwrap_or(refill_per_sec);
        Some(Self {
            size,
            refill_per_sec,
            nano_tokens: nano(size),
            last_refill: now,
        })
    }

    fn capacity(&self) -> i128 {
        nano(self.size)
    }

    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last_refill) else {
            return;
        };
        self.last_refill = now;
        let missing = (self.capacity() - self.nano_tokens).max(0) as u128;
        let added = elapsed.as_nanos().saturating_mul(u128::from(self.refill_per_sec));
        // `added.min(missing)` is at most `missing`, which came from an i128.
        self.nano_tokens += added.min(missing) as i128;
    }

    /// An amount no larger than the bucket needs that many tokens; a larger one needs a full
    /// bucket (and then drives the bucket negative), so it passes eventually.
    fn target(&self, tokens: u64) -> i128 {
        nano(tokens).min(self.capacity())
    }

    fn can_take(&self, tokens: u64) -> bool {
        self.nano_tokens >= self.target(tokens)
    }

    fn take(&mut self, tokens: u64) {
        self.nano_tokens -= nano(tokens);
    }

    /// Time until `can_take(tokens)` holds, rounded up to the nanosecond.
    fn wait_for(&self, tokens: u64) -> Duration {
        let deficit = (self.target(tokens) - self.nano_tokens).max(0) as u128;
        let nanos = deficit.div_ceil(u128::from(self.refill_per_sec));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

fn nano(tokens: u64) -> i128 {
    i128::from(tokens) * NANOS_PER_SEC
}

/// An ops bucket and a bytes bucket. When a request does not fit, the limiter arms a
/// timerfd for the moment it will, and stays blocked until [`RateLimiter::event_handler`]
/// runs (the device watches [`RateLimiter::timer_fd`] and calls it when readable).
#[derive(Debug)]
pub struct RateLimiter {
    ops: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Present only when some limit is set.
    timer: Option<TimerFd>,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter for `config`; creates a non-blocking timerfd only when a limit is set.
    pub fn new(config: &RateLimitConfig) -> io::Result<Self> {
        let now = Instant::now();
        let ops = TokenBucket::new(config.ops_per_sec, config.ops_burst, now);
        let bytes = TokenBucket::new(config.bytes_per_sec, config.bytes_burst, now);
        let timer = if ops.is_some() || bytes.is_some() {
            let timer = TimerFd::new()?;
            set_nonblocking(timer.as_raw_fd())?;
            Some(timer)
        } else {
            None
        };
        Ok(Self {
            ops,
            bytes,
            timer,
            blocked: false,
        })
    }

    /// A limiter that lets everything through and owns no timer.
    pub fn unlimited() -> Self {
        Self {
            ops: None,
            bytes: None,
            timer: None,
            blocked: false,
        }
    }

    /// [`RateLimiter::new`] for `Some(config)`, [`RateLimiter::unlimited`] for `None`.
    pub fn from_config(config: Option<&RateLimitConfig>) -> io::Result<Self> {
        config.map_or_else(|| Ok(Self::unlimited()), Self::new)
    }

    /// Takes `ops` operations and `bytes` bytes from the buckets, all or nothing. On refusal
    /// the timer is armed and the limiter stays blocked until [`RateLimiter::event_handler`].
    pub fn consume(&mut self, ops: u64, bytes: u64) -> bool {
        self.consume_at(ops, bytes, Instant::now())
    }

    fn consume_at(&mut self, ops: u64, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let mut wait = Duration::ZERO;
        for (bucket, amount) in [(&mut self.ops, ops), (&mut self.bytes, bytes)] {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                if !bucket.can_take(amount) {
                    wait = wait.max(bucket.wait_for(amount));
                }
            }
        }
        if !wait.is_zero() {
            // `wait` is at least 1 ns here, so this arms (a zero duration would disarm).
            let armed = self.timer.as_mut().map(|timer| timer.reset(wait, None));
            if let Some(Ok(())) = armed {
                self.blocked = true;
                return false;
            }
            // Without a working timer nothing would wake the device: fail open.
        }
        if let Some(bucket) = &mut self.ops {
            bucket.take(ops);
        }
        if let Some(bucket) = &mut self.bytes {
            bucket.take(bytes);
        }
        true
    }

    /// True between a refused [`RateLimiter::consume`] and the next
    /// [`RateLimiter::event_handler`]: the device should not try again before then.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd to watch for readability, if any limit is set.
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The timer fired: clears it and unblocks the limiter.
    pub fn event_handler(&mut self) {
        if let Some(timer) = &mut self.timer {
            // EAGAIN (not expired yet, or already read) is fine: a retry re-arms it.
            let _ = timer.wait();
        }
        self.blocked = false;
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the flags of `fd`, which the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes the status flags of `fd`; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(config: RateLimitConfig) -> (RateLimiter, Instant) {
        let mut limiter = RateLimiter::new(&config).unwrap();
        let start = Instant::now();
        for bucket in [&mut limiter.ops, &mut limiter.bytes].into_iter().flatten() {
            bucket.last_refill = start;
        }
        (limiter, start)
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn unlimited_never_blocks() {
        let mut limiter = RateLimiter::new(&RateLimitConfig::default()).unwrap();
        assert!(limiter.timer_fd().is_none());
        for _ in 0..10_000 {
            assert!(limiter.consume(1_000, u64::MAX));
        }
        assert!(!limiter.is_blocked());
        assert!(RateLimiter::unlimited().consume(u64::MAX, u64::MAX));
    }

    #[test]
    fn ops_limit_allows_burst_then_throttles_and_refills() {
        let (mut limiter, t0) = limiter(RateLimitConfig {
            ops_per_sec: Some(100),
            ..Default::default()
        });
        assert!(limiter.timer_fd().is_some());
        for _ in 0..100 {
            assert!(limiter.consume_at(1, 0, t0));
        }
        assert!(!limiter.consume_at(1, 0, t0));
        assert!(limiter.is_blocked());
        assert!(limiter.timer.as_ref().unwrap().is_armed().unwrap());
        // Blocked until the timer event, whatever the time.
        assert!(!limiter.consume_at(1, 0, t0 + ms(50)));
        limiter.event_handler();
        assert!(!limiter.is_blocked());
        // 9.999 ms refill 0.9999 tokens: not enough; 10 ms make exactly one.
        assert!(!limiter.consume_at(1, 0, t0 + Duration::from_micros(9_999)));
        assert_eq!(limiter.ops.as_ref().unwrap().wait_for(1), Duration::from_micros(1));
        limiter.event_handler();
        assert!(limiter.consume_at(1, 0, t0 + ms(10)));
        limiter.event_handler();
        assert!(!limiter.consume_at(1, 0, t0 + ms(10)));
        limiter.event_handler();
        // A long pause refills no more than the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..100 {
            assert!(limiter.consume_at(1, 0, later));
        }
        assert!(!limiter.consume_at(1, 0, later));
    }

    #[test]
    fn bytes_limit_with_explicit_burst() {
        let (mut limiter, t0) = limiter(RateLimitConfig {
            bytes_per_sec: Some(1_000),
            bytes_burst: Some(4_096),
            ..Default::default()
        });
        assert!(limiter.consume_at(1_000_000, 4_000, t0), "ops are unlimited");
        assert!(!limiter.consume_at(1, 97, t0));
        assert_eq!(limiter.bytes.as_ref().unwrap().wait_for(97), ms(1));
        limiter.event_handler();
        assert!(limiter.consume_at(1, 97, t0 + ms(1)));
        limiter.event_handler();
        assert_eq!(limiter.bytes.as_ref().unwrap().nano_tokens, 0);
    }

    #[test]
    fn oversized_request_passes_when_full_then_goes_negative() {
        let (mut limiter, t0) = limiter(RateLimitConfig {
            bytes_per_sec: Some(1_000),
            ..Default::default()
        });
        assert!(limiter.consume_at(1, 2_500, t0));
        assert_eq!(limiter.bytes.as_ref().unwrap().nano_tokens, nano(1_000) - nano(2_500));
        assert!(!limiter.consume_at(1, 2_500, t0));
        // Back to a full bucket after paying the 1500-byte debt plus 1000 bytes.
        assert_eq!(limiter.bytes.as_ref().unwrap().wait_for(2_500), ms(2_500));
        limiter.event_handler();
        assert!(!limiter.consume_at(1, 2_500, t0 + ms(2_499)));
        limiter.event_handler();
        assert!(limiter.consume_at(1, 2_500, t0 + ms(2_500)));
    }

    #[test]
    fn both_buckets_are_all_or_nothing() {
        let (mut limiter, t0) = limiter(RateLimitConfig {
            ops_per_sec: Some(10),
            bytes_per_sec: Some(100),
            ..Default::default()
        });
        assert!(limiter.consume_at(1, 100, t0));
        // Bytes refuse: the op must not be taken either.
        assert!(!limiter.consume_at(1, 1, t0));
        assert_eq!(limiter.ops.as_ref().unwrap().nano_tokens, nano(9));
        limiter.event_handler();
        // 100 ms give back 10 bytes and one op (already full: stays 10).
        assert!(limiter.consume_at(1, 10, t0 + ms(100)));
        assert_eq!(limiter.ops.as_ref().unwrap().nano_tokens, nano(9));
    }

    #[test]
    fn timer_fires_and_event_handler_clears_it() {
        let mut limiter = RateLimiter::new(&RateLimitConfig {
            ops_per_sec: Some(10),
            ops_burst: Some(1),
            ..Default::default()
        })
        .unwrap();
        assert!(limiter.consume(1, 0));
        assert!(!limiter.consume(1, 0));
        let mut pollfd = libc::pollfd {
            fd: limiter.timer_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pollfd` is a valid, exclusively borrowed array of one entry.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 1_000) };
        assert_eq!(ready, 1);
        limiter.event_handler();
        // SAFETY: as above.
        let ready_again = unsafe { libc::poll(&mut pollfd, 1, 0) };
        assert_eq!(ready_again, 0, "timer read and cleared");
        assert!(limiter.consume(1, 0));
    }
}
