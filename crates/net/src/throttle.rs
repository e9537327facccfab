//! Limits on what a (hostile) guest can make the host do: a token bucket, a table of token
//! buckets keyed by guest, and rate-limited log lines (at most a burst of lines per guest, then
//! one per refill; a line after a suppressed stretch says how many were suppressed).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket: holds up to `burst` tokens, refilled at `per_sec` tokens per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_sec` per second.
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_sec).min(self.burst);
            self.last = now;
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (an idle entry that can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One token bucket per key (a guest's address or MAC), created full on first use. Idle
/// (full) buckets are forgotten once the table holds more than `max_keys`, so a guest that
/// varies its key grows the table by at most that much.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    per_sec: u32,
    burst: u32,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Eq + Hash + Clone> KeyedBuckets<K> {
    /// Buckets of `burst` tokens refilled at `per_sec`, pruned beyond `max_keys` entries.
    pub fn new(per_sec: u32, burst: u32, max_keys: usize) -> Self {
        KeyedBuckets {
            per_sec,
            burst,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `key`'s bucket.
    pub fn try_take(&mut self, key: &K, now: Instant) -> bool {
        if self.buckets.len() >= self.max_keys && !self.buckets.contains_key(key) {
            self.buckets.retain(|_, bucket| !bucket.is_full(now));
            if self.buckets.len() >= self.max_keys {
                // Every entry is busy: refuse rather than grow without bound.
                return false;
            }
        }
        let (per_sec, burst) = (self.per_sec, self.burst);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(per_sec, burst, now))
            .try_take(now)
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Guest-triggered log lines per guest: a burst of [`LOG_BURST`], then one every
/// [`LOG_INTERVAL`]; the first line let through after some were dropped says how many.
pub const LOG_BURST: u32 = 10;
/// One guest-triggered log line per this interval once the burst is spent.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Guests tracked by one [`LogLimiter`] (idle ones are forgotten beyond this).
const LOG_MAX_KEYS: usize = 4096;

#[derive(Debug)]
struct LogEntry {
    bucket: TokenBucket,
    suppressed: u64,
}

/// Rate-limits log lines a guest can trigger, per key (instance id, MAC, address).
#[derive(Debug)]
pub struct LogLimiter<K> {
    burst: u32,
    interval: Duration,
    entries: HashMap<K, LogEntry>,
}

impl<K: Eq + Hash + Clone> Default for LogLimiter<K> {
    fn default() -> Self {
        Self::new(LOG_BURST, LOG_INTERVAL)
    }
}

impl<K: Eq + Hash + Clone> LogLimiter<K> {
    /// `burst` lines at once per key, then one per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        LogLimiter {
            burst: burst.max(1),
            interval: interval.max(Duration::from_millis(1)),
            entries: HashMap::new(),
        }
    }

    /// Whether a line for `key` may be logged at `now`: `Some(n)` with the number of lines
    /// suppressed for `key` since the last one logged, `None` to drop this one (counted).
    pub fn check(&mut self, key: &K, now: Instant) -> Option<u64> {
        if self.entries.len() >= LOG_MAX_KEYS && !self.entries.contains_key(key) {
            self.entries.retain(|_, e| e.suppressed > 0 || !e.bucket.is_full(now));
        }
        let refill_ms = self.interval.as_millis().max(1) as f64;
        let entry = self.entries.entry(key.clone()).or_insert_with(|| LogEntry {
            // per_sec is fractional: build the bucket by hand.
            bucket: TokenBucket {
                burst: f64::from(self.burst),
                per_sec: 1000.0 / refill_ms,
                tokens: f64::from(self.burst),
                last: now,
            },
            suppressed: 0,
        });
        if entry.bucket.try_take(now) {
            Some(std::mem::take(&mut entry.suppressed))
        } else {
            entry.suppressed += 1;
            None
        }
    }

    /// Logs `line` (to stderr) for `key` unless suppressed, noting the suppressed count.
    pub fn eprintln(&mut self, key: &K, line: std::fmt::Arguments<'_>) {
        if let Some(line) = self.format(key, line, Instant::now()) {
            eprintln!("{line}");
        }
    }

    /// The line to log for `key` at `now`, or `None` when it is suppressed.
    pub fn format(&mut self, key: &K, line: std::fmt::Arguments<'_>, now: Instant) -> Option<String> {
        match self.check(key, now)? {
            0 => Some(line.to_string()),
            n => Some(format!("{line} ({n} similar lines suppressed)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, t0);
        assert_eq!((0..20).filter(|_| bucket.try_take(t0)).count(), 5);
        // 10 per second: one token per 100 ms.
        assert!(!bucket.try_take(t0 + Duration::from_millis(50)));
        assert!(bucket.try_take(t0 + Duration::from_millis(110)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(120)));
        // Never more than the burst, however long it waits.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| bucket.try_take(later)).count(), 5);
    }

    #[test]
    fn keyed_buckets_are_independent_and_bounded() {
        let t0 = Instant::now();
        let mut buckets = KeyedBuckets::new(1, 3, 2);
        assert_eq!((0..10).filter(|_| buckets.try_take(&"a", t0)).count(), 3);
        // `a` spent everything; `b` still has its whole burst.
        assert!(buckets.try_take(&"b", t0));
        // Full table of busy keys: a new key is refused rather than added.
        assert!(!buckets.try_take(&"c", t0));
        assert_eq!(buckets.len(), 2);
        // Once they are idle (full again) they are forgotten to make room.
        let later = t0 + Duration::from_secs(10);
        assert!(buckets.try_take(&"c", later));
        assert_eq!(buckets.len(), 1);
    }

    #[test]
    fn log_lines_are_limited_per_key_and_report_what_was_suppressed() {
        let t0 = Instant::now();
        let mut limiter = LogLimiter::new(3, Duration::from_secs(10));
        let lines: Vec<_> = (0..100)
            .filter_map(|i| limiter.format(&"guest-a", format_args!("line {i}"), t0))
            .collect();
        assert_eq!(lines, ["line 0", "line 1", "line 2"]);
        // Another guest is not affected.
        assert_eq!(limiter.format(&"guest-b", format_args!("b"), t0).as_deref(), Some("b"));
        // Still limited 5 s later; after 10 s one line, saying how many were dropped.
        assert_eq!(
            limiter.format(&"guest-a", format_args!("x"), t0 + Duration::from_secs(5)),
            None
        );
        assert_eq!(
            limiter
                .format(&"guest-a", format_args!("y"), t0 + Duration::from_secs(10))
                .as_deref(),
            Some("y (98 similar lines suppressed)")
        );
        assert_eq!(
            limiter.format(&"guest-a", format_args!("z"), t0 + Duration::from_secs(10)),
            None
        );
    }
}
