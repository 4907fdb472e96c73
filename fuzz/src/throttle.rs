//! Harness of punch's [`LogThrottle`]: any interval, then events and clock steps (in
//! microseconds and milliseconds, to reach the interval's edges), checked against a model
//! written from the module's documentation.
//!
//! After every event:
//! - the first event is reported; later ones exactly when at least the interval has passed
//!   since the last report, so reports are never less than an interval apart;
//! - a report's count is exactly the events held back since the previous report;
//! - `total()` counts every event, and reports plus the counts they carry plus the events
//!   still held back add up to it.

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch::throttle::LogThrottle;

const MAX_EVENTS: usize = 1024;

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    interval_ms: u32,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    /// `n + 1` events at the current time.
    Hit(u8),
    AdvanceMicros(u32),
    AdvanceMillis(u16),
    AdvanceSecs(u8),
}

pub fn run(s: Scenario) {
    let t0 = Instant::now();
    let interval = Duration::from_millis(u64::from(s.interval_ms));
    let mut throttle = LogThrottle::new(interval);
    let mut now = t0;
    let mut last: Option<Instant> = None;
    let mut held = 0u64;
    let mut hits = 0u64;
    let mut reports = 0u64;
    let mut reported_held = 0u64;

    for event in s.events.iter().take(MAX_EVENTS) {
        match *event {
            Event::AdvanceMicros(us) => now += Duration::from_micros(u64::from(us)),
            Event::AdvanceMillis(ms) => now += Duration::from_millis(u64::from(ms)),
            Event::AdvanceSecs(secs) => now += Duration::from_secs(u64::from(secs)),
            Event::Hit(n) => {
                for _ in 0..=n {
                    hits += 1;
                    let due = last.is_none_or(|l| now - l >= interval);
                    match throttle.hit(now) {
                        Some(count) => {
                            assert!(
                                due,
                                "reported {:?} after the last report, interval {interval:?}",
                                last.map(|l| now - l)
                            );
                            assert_eq!(count, held, "held-back count of a report");
                            reports += 1;
                            reported_held += count;
                            held = 0;
                            last = Some(now);
                        }
                        None => {
                            assert!(!due, "held back though the interval has passed");
                            held += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(throttle.total(), hits, "total");
        assert_eq!(
            reports + reported_held + held,
            hits,
            "events lost or doubled"
        );
    }
}
