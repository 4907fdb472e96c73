//! Harness of the rendezvous [`HandshakeGate`]: arbitrary limits, then admissions from a pool
//! of sources (IPv4 addresses, IPv4-mapped IPv6 ones, IPv6 addresses sharing or not a /64),
//! finishes of pending or unknown handshakes, prunes and clock steps, checked against a model
//! written from the module's documentation.
//!
//! With `cap = max(max_pending, 1)`, `share = max(max_pending_per_prefix, 1)` and
//! `rate = max(per_source_per_minute, 1)` per minute (burst `rate`), after every event:
//! - a refusal is `Rate`, only with a rate configured, only when the source's prefix really
//!   had `rate` admissions in the last minute, and it changes nothing pending;
//! - no prefix is ever admitted more than `rate + rate * (now - s) / 60 s` times over any
//!   window `[s, now]` (prunes included: forgetting a full bucket must not grant more);
//! - an eviction names a handshake that was pending, and exactly the documented one: the
//!   oldest (ties: lowest id) of the source's own prefix when it holds its share, else, when
//!   all `cap` slots are taken, the oldest (ties: lowest id) among the prefixes holding the
//!   most; no eviction otherwise;
//! - `pending()` equals the model's count, never over `cap`, and no prefix holds over `share`.
//!
//! - memory (checked at prunes, formatting the gate is slow): the gate keeps no rate state without a rate, never more than one bucket per prefix
//!   seen, and after `prune(now)` only the buckets of prefixes that tried within the last
//!   minute (plus rounding slack). The maps are private and `pending()` is the only size the
//!   gate exposes, so the buckets are counted in its `Debug` output.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch_rendezvous::gate::{Admitted, GateLimits, HandshakeGate, Prefix, Refusal};

/// Events per input; the rate check is quadratic in the admissions of one prefix.
const MAX_EVENTS: usize = 512;
const MINUTE: Duration = Duration::from_secs(60);
/// A bucket refills in at most a minute; floating-point rounding may take it a hair longer.
const PRUNE_SLACK: Duration = Duration::from_millis(1);

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    max_pending: u8,
    max_pending_per_prefix: u8,
    per_source_per_minute: Option<u8>,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    /// A new connection (fresh id: the driver never reuses one) from source `src`.
    Admit {
        src: u8,
    },
    /// Finish the `nth` pending handshake (by id order), or an unknown id if none.
    Finish {
        nth: u8,
    },
    FinishUnknown {
        id: u8,
    },
    Prune,
    AdvanceMillis(u16),
    AdvanceSecs(u8),
}

/// Sixteen sources making nine prefixes: two IPv4 addresses also seen as IPv4-mapped IPv6,
/// IPv6 addresses two by two in one /64, and single ones.
fn source(n: u8) -> IpAddr {
    let n = n % 16;
    match n {
        0..=3 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, n % 2)),
        4..=5 => IpAddr::V6(Ipv4Addr::new(10, 0, 0, n % 2).to_ipv6_mapped()),
        6..=11 => {
            let net = u16::from((n - 6) / 2);
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, u16::from(n)))
        }
        _ => IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    prefix: Prefix,
    since: Instant,
}

pub fn run(s: Scenario) {
    let t0 = Instant::now();
    let limits = GateLimits {
        max_pending: usize::from(s.max_pending % 32),
        max_pending_per_prefix: usize::from(s.max_pending_per_prefix % 32),
        per_source_per_minute: s.per_source_per_minute.map(u32::from),
    };
    let cap = limits.max_pending.max(1);
    let share = limits.max_pending_per_prefix.max(1);
    let rate = limits.per_source_per_minute.map(|r| r.max(1));
    let mut gate = HandshakeGate::new(limits);
    let mut now = t0;
    let mut next_id = 0u64;
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut admitted: HashMap<Prefix, Vec<Instant>> = HashMap::new();
    let slack = Duration::from_micros(1);
    // The last admission attempt of each prefix, with a rate configured.
    let mut tried: HashMap<Prefix, Instant> = HashMap::new();

    for event in s.events.iter().take(MAX_EVENTS) {
        match *event {
            Event::AdvanceMillis(ms) => now += Duration::from_millis(u64::from(ms)),
            Event::AdvanceSecs(secs) => now += Duration::from_secs(u64::from(secs)),
            Event::Prune => {
                assert!(buckets(&gate) <= tried.len(), "more buckets than sources");
                gate.prune(now);
                let recent = tried
                    .values()
                    .filter(|t| now.saturating_duration_since(**t) < MINUTE + PRUNE_SLACK)
                    .count();
                let kept = buckets(&gate);
                assert!(
                    kept <= recent,
                    "{kept} buckets kept by a prune, {recent} sources active"
                );
            }
            Event::FinishUnknown { id } => {
                // Ids at or above `next_id` were never handed out.
                gate.finish(next_id + u64::from(id));
            }
            Event::Finish { nth } => {
                let mut ids: Vec<u64> = pending.keys().copied().collect();
                ids.sort_unstable();
                if let Some(&id) = ids.get(usize::from(nth) % ids.len().max(1)) {
                    pending.remove(&id);
                    gate.finish(id);
                    gate.finish(id);
                }
            }
            Event::Admit { src } => {
                let ip = source(src);
                let prefix = Prefix::of(ip);
                let id = next_id;
                next_id += 1;
                if rate.is_some() {
                    tried.insert(prefix, now);
                }
                let times = admitted.entry(prefix).or_default();
                let recent = times
                    .iter()
                    .filter(|t| now.saturating_duration_since(**t) < MINUTE + slack)
                    .count();
                match gate.admit(now, id, ip) {
                    Err(Refusal::Rate) => {
                        let rate = rate.expect("refused by rate without a rate configured");
                        assert!(
                            recent >= rate as usize,
                            "{prefix:?} refused after {recent} admissions in a minute (rate {rate})"
                        );
                    }
                    Ok(Admitted { evicted }) => {
                        times.push(now);
                        if let Some(rate) = rate {
                            let rate = f64::from(rate);
                            for &start in times.iter() {
                                let count = times.iter().filter(|t| **t >= start).count();
                                let allowed = rate + rate * (now - start).as_secs_f64() / 60.0;
                                assert!(
                                    count as f64 <= allowed + 1e-6,
                                    "{prefix:?}: {count} admissions in {:?}, allowed {allowed}",
                                    now - start
                                );
                            }
                        }
                        let held = pending.values().filter(|p| p.prefix == prefix).count();
                        let expected = if held >= share {
                            oldest(&pending, |p| p.prefix == prefix)
                        } else if pending.len() >= cap {
                            let mut per: HashMap<Prefix, usize> = HashMap::new();
                            for p in pending.values() {
                                *per.entry(p.prefix).or_default() += 1;
                            }
                            let most = per.values().copied().max().unwrap_or(0);
                            oldest(&pending, |p| per[&p.prefix] == most)
                        } else {
                            None
                        };
                        if let Some(old) = evicted {
                            assert!(pending.contains_key(&old), "evicted {old}, never pending");
                        }
                        assert_eq!(
                            evicted,
                            expected,
                            "wrong eviction admitting {id} from {prefix:?} ({held} held, {} \
                             pending, cap {cap}, share {share})",
                            pending.len()
                        );
                        if let Some(old) = evicted {
                            pending.remove(&old);
                        }
                        pending.insert(id, Pending { prefix, since: now });
                    }
                }
            }
        }
        assert_eq!(gate.pending(), pending.len(), "pending count drifted");
        assert!(
            pending.len() <= cap,
            "{} pending over cap {cap}",
            pending.len()
        );
        let mut per: HashMap<Prefix, usize> = HashMap::new();
        for p in pending.values() {
            *per.entry(p.prefix).or_default() += 1;
        }
        for (prefix, n) in per {
            assert!(n <= share, "{prefix:?} holds {n} over its share {share}");
        }
    }
}

/// The oldest pending handshake among those matching (ties: the lowest id).
fn oldest(pending: &HashMap<u64, Pending>, f: impl Fn(&Pending) -> bool) -> Option<u64> {
    pending
        .iter()
        .filter(|(_, p)| f(p))
        .min_by_key(|(id, p)| (p.since, **id))
        .map(|(id, _)| *id)
}

/// The token buckets the gate holds, counted in its `Debug` output (the map is private).
fn buckets(gate: &HandshakeGate) -> usize {
    format!("{gate:?}").matches("TokenBucket").count()
}
