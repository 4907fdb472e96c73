//! Token buckets fed explicit timestamps (no clock inside, so tests drive time),
//! [`RateTable`], a bounded map of them keyed by identity, source or (target, source), and
//! [`ByteBucket`], the relay's bytes-per-second budget enforced by back-pressure.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Allows `capacity` events at once and refills at `capacity` per `period`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilling `capacity` tokens per `period`.
    pub fn new(capacity: u32, period: Duration, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            tokens: capacity,
            per_sec: capacity / period.as_secs_f64().max(1e-3),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }

    /// Whether a take would succeed at `now` (or how long until it would), taking nothing.
    pub fn available(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }

    /// Whether the bucket is full at `now` (its owner is idle and it can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// A budget of bytes per second with a burst, for back-pressure: the relay forwards what it
/// read, charges it, and waits [`ByteBucket::charge`]'s answer before reading again. The
/// balance may go negative (a read is never split or dropped); the wait pays the debt back.
#[derive(Debug, Clone)]
pub struct ByteBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    /// A full bucket of `burst` bytes refilling at `rate` bytes per second (both at least 1).
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Charges `n` bytes sent at `now`; returns how long to wait before reading more (zero
    /// while the burst lasts).
    pub fn charge(&mut self, now: Instant, n: usize) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Why a [`RateTable`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The key's bucket is empty: retry after this.
    Wait(Duration),
    /// The key is new and the table holds its maximum of keys that are not idle: retry after
    /// this (the next chance for idle keys to be pruned).
    TableFull(Duration),
}

/// How often a full [`RateTable`] may scan itself for idle keys to make room: each scan walks
/// the whole table, so a flood of new keys into a full table costs one walk per second, not
/// one per request.
pub const FULL_TABLE_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// One token bucket per key (`per_minute` each, also the burst), at most `max_keys` keys.
///
/// Memory is bounded: a key absent from the table is a full bucket, so a key whose bucket is
/// full again (idle for a minute) is dropped by [`RateTable::prune`] without changing any
/// answer; and the table never holds more than `max_keys` keys. A new key arriving when the
/// table is full of keys that are not idle is refused ([`Limited::TableFull`]): forgetting a
/// busy key instead would hand its owner a fresh burst.
#[derive(Debug, Clone)]
pub struct RateTable<K> {
    per_minute: u32,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
    last_full_scan: Option<Instant>,
}

impl<K: Hash + Eq + Clone> RateTable<K> {
    pub fn new(per_minute: u32, max_keys: usize) -> Self {
        Self {
            per_minute,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
            last_full_scan: None,
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Whether [`RateTable::take`] for `key` would succeed at `now`; takes nothing, but may
    /// prune idle keys to make room for a new one.
    pub fn check(&mut self, now: Instant, key: &K) -> Result<(), Limited> {
        if let Some(b) = self.buckets.get_mut(key) {
            return b.available(now).map_err(Limited::Wait);
        }
        if self.buckets.len() < self.max_keys {
            return Ok(());
        }
        let scan_due = self
            .last_full_scan
            .is_none_or(|t| now.saturating_duration_since(t) >= FULL_TABLE_SCAN_INTERVAL);
        if scan_due {
            self.last_full_scan = Some(now);
            self.prune(now);
            if self.buckets.len() < self.max_keys {
                return Ok(());
            }
        }
        let since = self
            .last_full_scan
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        Err(Limited::TableFull(
            FULL_TABLE_SCAN_INTERVAL
                .saturating_sub(since)
                .max(Duration::from_millis(1)),
        ))
    }

    /// Takes a token for `key` at `now` (after a successful [`RateTable::check`]).
    pub fn take(&mut self, now: Instant, key: K) -> Result<(), Limited> {
        self.check(now, &key)?;
        let per_minute = self.per_minute;
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(per_minute, Duration::from_secs(60), now))
            .try_take(now)
            .map_err(Limited::Wait)
    }

    /// Drops the keys whose bucket is full at `now` (idle long enough that forgetting them
    /// changes nothing).
    pub fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_table_limits_each_key_and_stays_bounded() {
        let t0 = Instant::now();
        let mut t = RateTable::new(2, 3);
        let s = Duration::from_secs(1);
        // Each key has its own burst of 2.
        for key in [1, 1, 2, 2, 3] {
            assert_eq!(t.check(t0, &key), Ok(()));
            t.take(t0, key).unwrap();
        }
        assert_eq!(t.check(t0, &1), Err(Limited::Wait(Duration::from_secs(30))));
        assert_eq!(t.take(t0, 1), Err(Limited::Wait(Duration::from_secs(30))));
        // Checking takes nothing: key 3 still has one token.
        assert_eq!(t.check(t0, &3), Ok(()));
        assert_eq!(t.check(t0, &3), Ok(()));
        // Full of busy keys: a new key is refused, no key forgotten.
        assert!(matches!(t.check(t0, &4), Err(Limited::TableFull(_))));
        assert_eq!(t.len(), 3);
        // Within the scan interval a full table does not scan again.
        let Err(Limited::TableFull(wait)) = t.check(t0 + s / 2, &4) else {
            panic!("expected a full table");
        };
        assert_eq!(wait, s / 2);
        // Key 3 (one take) is full again after 30 s; at 31 s the scan makes room for key 4.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(t.take(later, 4), Ok(()));
        assert_eq!(t.len(), 3);
        // Busy keys survive a prune, idle ones go.
        t.prune(later);
        assert_eq!(t.len(), 3);
        t.prune(t0 + Duration::from_secs(120));
        assert!(t.is_empty());
    }

    #[test]
    fn a_byte_bucket_holds_a_sender_to_its_rate() {
        let t0 = Instant::now();
        let mut b = ByteBucket::new(1000, 500, t0);
        // The burst goes through without waiting; the next 1000 bytes cost a second.
        assert_eq!(b.charge(t0, 500), Duration::ZERO);
        assert_eq!(b.charge(t0, 1000), Duration::from_secs(1));
        // Waiting the answer pays the debt back exactly.
        assert_eq!(b.charge(t0 + Duration::from_secs(1), 0), Duration::ZERO);
        // A sender that always waits what it is told moves `rate` bytes per second, plus the
        // burst once.
        let mut now = t0 + Duration::from_secs(10);
        let start = now;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(10) {
            now += b.charge(now, 64);
            sent += 64;
        }
        assert!((10_400..=10_600).contains(&sent), "{sent}");
        // Idle time refills only up to the burst.
        assert_eq!(
            b.charge(now + Duration::from_secs(100), 500),
            Duration::ZERO
        );
        assert_eq!(
            b.charge(now + Duration::from_secs(100), 1),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, Duration::from_secs(60), t0);
        for _ in 0..3 {
            b.try_take(t0).unwrap();
        }
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        assert!(b.try_take(t0 + Duration::from_secs(19)).is_err());
        assert!(b.try_take(t0 + Duration::from_secs(21)).is_ok());
        assert!(!b.is_full(t0 + Duration::from_secs(21)));
        assert!(b.is_full(t0 + Duration::from_secs(200)));
    }
}
