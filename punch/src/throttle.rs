//! Rate-limited reporting of repeated refusals: a hostile peer can make us refuse something
//! thousands of times a second, and one log line each would turn its flood into ours.
//!
//! [`LogThrottle`] is pure (fed `now`): it lets one report through per interval and counts
//! the ones it held back, so that the next line says how many there were.

use std::time::{Duration, Instant};

/// One report per this interval at most: often enough to see an attack start and stop,
/// rarely enough that a flood costs a line a minute.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Lets one report through per interval; counts every event.
#[derive(Debug, Clone)]
pub struct LogThrottle {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
    total: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_INTERVAL)
    }
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            held_back: 0,
            total: 0,
        }
    }

    /// An event at `now`. `Some(n)`: report it now, saying `n` earlier events were held
    /// back since the last report; `None`: stay quiet (it is counted).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }

    /// Events seen, reported or not.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_interval_counting_the_rest() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = LogThrottle::new(10 * s);
        assert_eq!(t.hit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.hit(t0 + i * s), None);
        }
        assert_eq!(t.hit(t0 + 10 * s), Some(5));
        assert_eq!(t.hit(t0 + 11 * s), None);
        assert_eq!(t.hit(t0 + 30 * s), Some(1));
        assert_eq!(t.total(), 9);
    }
}
