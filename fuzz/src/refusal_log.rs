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
    RequestRate,
    NotAllowed,
    NetworkFull,
    ServerFull,
}

impl Why {
    fn reason(self) -> Reason {
        match self {
            Why::Rate => Reason::Rate,
            Why::PerIp => Reason::PerIp,
            Why::Evicted => Reason::Evicted,
            Why::Silent => Reason::Silent,
            Why::RequestRate => Reason::RequestRate,
            Why::NotAllowed => Reason::NotAllowed,
            Why::NetworkFull => Reason::NetworkFull,
            Why::ServerFull => Reason::ServerFull,
        }
    }

    /// Its place in [`Totals`].
    fn index(self) -> usize {
        self as usize
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

/// Counts per [`Why`] (in its order), then failed handshakes not logged one by one.
#[derive(Default)]
struct Totals([u64; 9]);

const FAILED: usize = 8;

impl Totals {
    fn add(&mut self, why: Why) {
        self.0[why.index()] += 1;
    }

    fn add_summary(&mut self, s: &Summary) {
        for (t, n) in self.0.iter_mut().zip(counts(s)) {
            *t += n;
        }
    }

    fn as_tuple(&self) -> [u64; 9] {
        self.0
    }
}

/// A summary's counts in [`Totals`]' order.
fn counts(s: &Summary) -> [u64; 9] {
    [
        s.rate,
        s.per_ip,
        s.evicted,
        s.silent,
        s.request_rate,
        s.not_allowed,
        s.network_full,
        s.server_full,
        s.failed_unlogged,
    ]
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
                    current.0[FAILED] += 1;
                    fed.0[FAILED] += 1;
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
                let quiet = current.as_tuple() == [0; 9];
                match &got {
                    None => assert!(quiet, "no summary after refusals"),
                    Some(sum) => {
                        assert!(!quiet, "a summary of a quiet interval: {sum:?}");
                        assert_eq!(counts(sum), current.as_tuple(), "summary counts");
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
                        assert_eq!(
                            sum.registry_total(),
                            sum.request_rate + sum.not_allowed + sum.network_full + sum.server_full
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
        let sum: Vec<u64> = r.iter().zip(c).map(|(a, b)| a + b).collect();
        assert_eq!(sum, fed.as_tuple(), "refusals lost or doubled");
    }
    // Whatever is still counting comes out in full once the interval has ended.
    let end = now + interval;
    let got = log.summary(end);
    if current.as_tuple() == [0; 9] {
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
