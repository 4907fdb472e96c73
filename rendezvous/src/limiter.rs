//! A token bucket fed explicit timestamps (no clock inside, so tests drive time).

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

    /// Whether the bucket is full at `now` (its owner is idle and it can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
