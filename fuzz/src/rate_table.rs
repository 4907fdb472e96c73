//! Harness of the rendezvous [`RateTable`]: any rate and key cap, then checks, takes and
//! prunes of keys from a small pool, with the clock moving forward, checked against a model
//! written from the type's documentation.
//!
//! After every event:
//! - the table never holds more than `max_keys' = max(max_keys, 1)` keys;
//! - `check` takes nothing: a `check` right after another `check` of the same key at the same
//!   instant gives the same answer (a scan it may run only forgets full buckets);
//! - `take` succeeds exactly when `check` would, and then no key ever exceeds its rate over any
//!   window (`capacity + capacity * elapsed / 60 s` takes, capacity = max(per_minute, 1));
//! - a `Wait` refusal comes only for a key with `capacity` takes in the last minute, and a
//!   take at `now + wait` is no longer refused for that reason;
//! - a `TableFull` refusal comes only for a key the table does not hold while it holds
//!   `max_keys'` keys, with a wait of at most `FULL_TABLE_SCAN_INTERVAL`;
//! - `prune` never adds keys (it forgets only full buckets, which a fresh key equals: the
//!   rate bound above, checked across prunes, shows nothing was forgotten too early).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch_rendezvous::limiter::{Limited, RateTable, FULL_TABLE_SCAN_INTERVAL};

const MAX_EVENTS: usize = 512;
const KEYS: u8 = 12;
const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    per_minute: u8,
    max_keys: u8,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    Check(u8),
    Take(u8),
    Prune,
    AdvanceMillis(u16),
    AdvanceSecs(u8),
}

pub fn run(s: Scenario) {
    let per_minute = u32::from(s.per_minute % 8);
    let max_keys = usize::from(s.max_keys % 8);
    let cap = f64::from(per_minute.max(1));
    let max_eff = max_keys.max(1);
    let mut t = RateTable::new(per_minute, max_keys);
    let t0 = Instant::now();
    let mut now = t0;
    let mut taken: HashMap<u8, Vec<Instant>> = HashMap::new();
    let slack = Duration::from_micros(1);
    let recent = |taken: &HashMap<u8, Vec<Instant>>, k: u8, now: Instant| {
        let since = now.checked_sub(MINUTE + slack).unwrap_or(t0);
        taken
            .get(&k)
            .map_or(0, |ts| ts.iter().filter(|x| **x >= since).count())
    };

    for event in s.events.iter().take(MAX_EVENTS) {
        match *event {
            Event::AdvanceMillis(ms) => now += Duration::from_millis(u64::from(ms)),
            Event::AdvanceSecs(secs) => now += Duration::from_secs(u64::from(secs)),
            Event::Prune => {
                let before = t.len();
                t.prune(now);
                assert!(t.len() <= before, "prune added keys");
            }
            Event::Check(k) | Event::Take(k) => {
                let k = k % KEYS;
                let first = t.check(now, &k);
                let second = t.check(now, &k);
                assert_eq!(first, second, "check consumed or changed state");
                let result = if matches!(event, Event::Take(_)) {
                    let r = t.take(now, k);
                    assert_eq!(r, first, "take disagrees with check");
                    r
                } else {
                    first
                };
                match result {
                    Ok(()) => {
                        if matches!(event, Event::Take(_)) {
                            let ts = taken.entry(k).or_default();
                            ts.push(now);
                            for &start in ts.iter() {
                                let n = ts.iter().filter(|x| **x >= start).count();
                                let allowed = cap + (now - start).as_secs_f64() * cap / 60.0;
                                assert!(n as f64 <= allowed + 1e-6, "{n} takes, allowed {allowed}");
                            }
                        }
                    }
                    Err(Limited::Wait(wait)) => {
                        let n = recent(&taken, k, now);
                        assert!(n as f64 >= cap, "refused after {n} takes in a minute");
                        assert!(wait <= MINUTE + slack, "wait {wait:?}");
                        let mut later = t.clone();
                        assert!(
                            !matches!(later.check(now + wait + slack, &k), Err(Limited::Wait(_))),
                            "still waiting after the promised {wait:?}"
                        );
                    }
                    Err(Limited::TableFull(wait)) => {
                        assert_eq!(t.len(), max_eff, "full refusal of a table not full");
                        assert!(wait <= FULL_TABLE_SCAN_INTERVAL && wait > Duration::ZERO);
                    }
                }
            }
        }
        assert!(
            t.len() <= max_eff,
            "{} keys over the cap {max_eff}",
            t.len()
        );
    }
}
