//! Harness of the rendezvous [`TokenBucket`]: any capacity and period, then clock steps (in
//! microseconds, to reach rounding edges), takes and fullness queries.
//!
//! With `capacity' = max(capacity, 1)` and `period' = max(period, 1 ms)`, the documented
//! behaviour "allows `capacity` events at once and refills at `capacity` per `period`" means:
//! - no window `[s, now]` ever holds more than `capacity' + capacity' * (now - s) / period'`
//!   successful takes (checked for every window starting at a take);
//! - a take fails only if at least `capacity'` takes succeeded in the last `period'`, and a full
//!   bucket grants `capacity'` takes at once;
//! - a refusal's wait is exact: a take at `now + wait` succeeds, one well before it fails;
//! - the bucket is full once nothing was taken for a period, and asking does not consume.

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch_rendezvous::limiter::TokenBucket;

const MAX_EVENTS: usize = 512;
/// Bursts larger than this are not replayed in full by the "a full bucket grants its
/// capacity" probe, to keep inputs fast.
const MAX_PROBED_BURST: f64 = 256.0;

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    capacity: u32,
    period_ms: u32,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    AdvanceMicros(u32),
    AdvanceMillis(u16),
    Take,
    IsFull,
}

pub fn run(s: Scenario) {
    let t0 = Instant::now();
    let period = Duration::from_millis(u64::from(s.period_ms));
    let mut bucket = TokenBucket::new(s.capacity, period, t0);
    let cap = f64::from(s.capacity.max(1));
    let period_eff = period.max(Duration::from_millis(1));
    let rate = cap / period_eff.as_secs_f64();
    let slack = Duration::from_micros(1);
    let mut now = t0;
    let mut taken: Vec<Instant> = Vec::new();
    let recent = |taken: &[Instant], now: Instant| {
        let since = now.checked_sub(period_eff + slack).unwrap_or(t0);
        taken.iter().filter(|t| **t >= since).count()
    };
    for event in s.events.iter().take(MAX_EVENTS) {
        match event {
            Event::AdvanceMicros(us) => now += Duration::from_micros(u64::from(*us)),
            Event::AdvanceMillis(ms) => now += Duration::from_millis(u64::from(*ms)),
            Event::Take => {
                let n = recent(&taken, now);
                match bucket.try_take(now) {
                    Ok(()) => {
                        taken.push(now);
                        for &start in &taken {
                            let count = taken.iter().filter(|t| **t >= start).count();
                            let allowed = cap + (now - start).as_secs_f64() * rate;
                            assert!(
                                count as f64 <= allowed + 1e-6,
                                "{count} takes in {:?}, allowed {allowed}",
                                now - start
                            );
                        }
                    }
                    Err(wait) => {
                        assert!(n as f64 >= cap, "refused after {n} takes in a period");
                        assert!(wait <= period_eff + slack, "wait {wait:?} over a period");
                        let mut later = bucket.clone();
                        assert!(
                            later.try_take(now + wait + slack).is_ok(),
                            "still refused after the promised {wait:?}"
                        );
                        let early = wait / 1000 + slack;
                        if wait > early {
                            let mut sooner = bucket.clone();
                            assert!(
                                sooner.try_take(now + wait - early).is_err(),
                                "wait {wait:?} is pessimistic"
                            );
                        }
                    }
                }
            }
            Event::IsFull => {
                let n = recent(&taken, now);
                let full = bucket.is_full(now);
                if n == 0 {
                    assert!(full, "not full after a period without takes");
                }
                if full && cap <= MAX_PROBED_BURST {
                    let mut probe = bucket.clone();
                    for i in 0..cap as u32 {
                        assert!(probe.try_take(now).is_ok(), "full bucket refused take {i}");
                    }
                    assert!(probe.try_take(now).is_err(), "burst over capacity");
                }
                assert_eq!(bucket.is_full(now), full, "asking changed the answer");
            }
        }
    }
}
