//! Harness of the rendezvous [`RefusalLog`]: any interval and line budget, then refusals of
//! every reason from a pool of sources, failed handshakes, summary requests and clock steps,
//! checked against a model written from the module's documentation.
//!
//! After every event:
//! - a summary counts exactly the refusals of each reason and the failed handshakes over
//!   budget recorded since the interval last restarted, its `interval` is the time since then,
//!   and its `sources` is the number of distinct prefixes among those refusals (at most
//!   `MAX_TRACKED_SOURCES`, exact below it); summed over all summaries and what is still
//!   counting, nothing is lost or counted twice;
//! - a summary comes only once the interval has ended, so two summaries are always at least
//!   an interval apart, and a quiet interval gives none (but still restarts counting);
//! - `may_log_failure` says yes exactly `failure_lines` times per interval, then counts.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch_rendezvous::gate::Prefix;
use punch_rendezvous::refusal_log::{Reason, RefusalLog, Summary};

const MAX_EVENTS: usize = 1024;
/// Refusals fed by floods per input: enough to pass the bound on sources twice, few enough to
/// keep inputs fast.
const MAX_FLOODED: u32 = 2 * MAX_TRACKED_SOURCES as u32 + 64;
/// The module's bound on distinct sources remembered per interval (private there).
const MAX_TRACKED_SOURCES: usize = 4096;

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    interval_ms: u16,
    failure_lines: u8,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    Record {
        reason: Why,
        src: u16,
    },
    /// `32 * (n + 1)` refusals at once from distinct sources (up to 8192: past the bound on
    /// sources remembered), within `MAX_FLOODED` per input.
    Flood {
        reason: Why,
        first: u16,
        n: u8,
    },
    Failure,
    Summary,
    AdvanceMillis(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Why {
    Rate,
    PerIp,
    Evicted,
    Silent,
}

impl Why {
    fn reason(self) -> Reason {
        match self {
            Why::Rate => Reason::Rate,
            Why::PerIp => Reason::PerIp,
            Why::Evicted => Reason::Evicted,
            Why::Silent => Reason::Silent,
        }
    }
}

/// IPv4 sources below 0x8000, IPv6 ones above (each a /64 of its own).
fn source(n: u16) -> Prefix {
    let ip = if n < 0x8000 {
        IpAddr::V4(Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, n, 0, 0, 0, 1))
    };
    Prefix::of(ip)
}

#[derive(Default)]
struct Totals {
    rate: u64,
    per_ip: u64,
    evicted: u64,
    silent: u64,
    failed_unlogged: u64,
}

impl Totals {
    fn add(&mut self, why: Why) {
        match why {
            Why::Rate => self.rate += 1,
            Why::PerIp => self.per_ip += 1,
            Why::Evicted => self.evicted += 1,
            Why::Silent => self.silent += 1,
        }
    }

    fn add_summary(&mut self, s: &Summary) {
        self.rate += s.rate;
        self.per_ip += s.per_ip;
        self.evicted += s.evicted;
        self.silent += s.silent;
        self.failed_unlogged += s.failed_unlogged;
    }

    fn as_tuple(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.rate,
            self.per_ip,
            self.evicted,
            self.silent,
            self.failed_unlogged,
        )
    }
}

pub fn run(s: Scenario) {
    let t0 = Instant::now();
    let interval = Duration::from_millis(u64::from(s.interval_ms));
    let budget = u64::from(s.failure_lines);
    let mut log = RefusalLog::new(interval, budget, t0);
    let mut now = t0;
    // The model of the interval counting now.
    let mut since = t0;
    let mut current = Totals::default();
    let mut sources: HashSet<Prefix> = HashSet::new();
    let mut lines_used = 0u64;
    // Everything fed, and everything summarized.
    let mut fed = Totals::default();
    let mut reported = Totals::default();
    let mut last_summary: Option<Instant> = None;
    let mut flooded = 0u32;

    for event in s.events.iter().take(MAX_EVENTS) {
        match *event {
            Event::AdvanceMillis(ms) => now += Duration::from_millis(u64::from(ms)),
            Event::Record { reason, src } => {
                log.record(reason.reason(), source(src));
                current.add(reason);
                fed.add(reason);
                sources.insert(source(src));
            }
            Event::Flood { reason, first, n } => {
                let count = (32 * (u32::from(n) + 1)).min(MAX_FLOODED - flooded);
                flooded += count;
                for i in 0..count as u16 {
                    let src = source(first.wrapping_add(i.wrapping_mul(17)));
                    log.record(reason.reason(), src);
                    current.add(reason);
                    fed.add(reason);
                    sources.insert(src);
                }
            }
            Event::Failure => {
                let may = log.may_log_failure();
                assert_eq!(
                    may,
                    lines_used < budget,
                    "failure line {} of a budget of {budget}",
                    lines_used + 1
                );
                if may {
                    lines_used += 1;
                } else {
                    current.failed_unlogged += 1;
                    fed.failed_unlogged += 1;
                }
            }
            Event::Summary => {
                let elapsed = now - since;
                let got = log.summary(now);
                if elapsed < interval {
                    assert_eq!(
                        got, None,
                        "a summary {elapsed:?} into a {interval:?} interval"
                    );
                    continue;
                }
                let quiet = current.as_tuple() == (0, 0, 0, 0, 0);
                match &got {
                    None => assert!(quiet, "no summary after refusals"),
                    Some(sum) => {
                        assert!(!quiet, "a summary of a quiet interval: {sum:?}");
                        assert_eq!(
                            (
                                sum.rate,
                                sum.per_ip,
                                sum.evicted,
                                sum.silent,
                                sum.failed_unlogged
                            ),
                            current.as_tuple(),
                            "summary counts"
                        );
                        assert_eq!(sum.interval, elapsed, "summary interval");
                        assert_eq!(
                            sum.sources,
                            sources.len().min(MAX_TRACKED_SOURCES),
                            "summary sources"
                        );
                        assert_eq!(
                            sum.total(),
                            sum.rate + sum.per_ip + sum.evicted + sum.silent
                        );
                        if let Some(last) = last_summary {
                            assert!(
                                now - last >= interval,
                                "two summaries {:?} apart, interval {interval:?}",
                                now - last
                            );
                        }
                        last_summary = Some(now);
                        reported.add_summary(sum);
                    }
                }
                since = now;
                current = Totals::default();
                sources.clear();
                lines_used = 0;
            }
        }
        let (r, c) = (reported.as_tuple(), current.as_tuple());
        assert_eq!(
            (r.0 + c.0, r.1 + c.1, r.2 + c.2, r.3 + c.3, r.4 + c.4),
            fed.as_tuple(),
            "refusals lost or doubled"
        );
    }
    // Whatever is still counting comes out in full once the interval has ended.
    let end = now + interval;
    let got = log.summary(end);
    if current.as_tuple() == (0, 0, 0, 0, 0) {
        assert_eq!(got, None);
    } else {
        let sum = got.expect("no final summary after refusals");
        reported.add_summary(&sum);
        assert_eq!(
            reported.as_tuple(),
            fed.as_tuple(),
            "refusals lost or doubled"
        );
    }
}
