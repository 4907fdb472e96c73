//! Admission of handshakes: who may make the server do Noise work, fed explicit timestamps.
//!
//! A connection costs the server a socket and nothing else until its first frame (Noise
//! message 1) arrives. Only then does the driver ask [`HandshakeGate::admit`], which decides:
//!
//! 1. the source's token bucket must have a token (a replayed or garbage message 1 costs a
//!    Diffie-Hellman and a log line; one source may only make so many per minute);
//! 2. if the source's prefix already holds its share of pending handshakes, its own oldest
//!    pending handshake is evicted (new ones are likelier alive; a flood only churns itself);
//! 3. if every slot is taken, the oldest pending handshake among the prefixes holding the most
//!    is evicted, so a prefix holding one slot loses it only when every prefix holds one.
//!
//! Sources are keyed by [`Prefix`]: an IPv4 address (/32: carrier-grade NAT already puts many
//! honest users on one address, so grouping /24s would punish them for their neighbours) or an
//! IPv6 /64 (one subscriber's LAN, which picks any address inside it for free).
//! The driver carries out evictions (cancels that connection) and calls
//! [`HandshakeGate::finish`] when a handshake ends either way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::limiter::TokenBucket;

/// The unit sources are limited by: an IPv4 address or an IPv6 /64 ([`Prefix::of`]); and the
/// wider unit, a network: an IPv4 /24 or an IPv6 /48 ([`Prefix::network`]).
///
/// Why two: an attacker with a few dozen addresses usually has them in a few /24s (one hosting
/// provider's block), and an IPv6 /48 is one site's allocation holding 65,536 /64s. Limits per
/// address keep one CGNAT address from crowding out the rest of its /24; limits per network
/// keep a block of addresses from multiplying its share by the addresses it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    V4([u8; 4]),
    V6([u8; 8]),
    /// An IPv4 /24.
    V4Net([u8; 3]),
    /// An IPv6 /48.
    V6Net([u8; 6]),
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v6 = |bytes: &[u8]| {
            let mut o = [0u8; 16];
            o[..bytes.len()].copy_from_slice(bytes);
            std::net::Ipv6Addr::from(o)
        };
        match self {
            Prefix::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            Prefix::V6(o) => write!(f, "{}/64", v6(o)),
            Prefix::V4Net([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Prefix::V6Net(o) => write!(f, "{}/48", v6(o)),
        }
    }
}

impl Prefix {
    /// The network `ip` is in: its IPv4 /24 or IPv6 /48 (IPv4-mapped IPv6 counts as IPv4).
    pub fn network(ip: IpAddr) -> Self {
        match Prefix::of(ip) {
            Prefix::V4([a, b, c, _]) => Prefix::V4Net([a, b, c]),
            Prefix::V6(p) => {
                let mut n = [0u8; 6];
                n.copy_from_slice(&p[..6]);
                Prefix::V6Net(n)
            }
            net => net,
        }
    }

    /// The source `ip` is: its IPv4 address or IPv6 /64.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Prefix::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Prefix::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&o[..8]);
                    Prefix::V6(p)
                }
            },
        }
    }
}

/// Limits of a [`HandshakeGate`].
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    /// Pending handshakes in total.
    pub max_pending: usize,
    /// Pending handshakes per prefix.
    pub max_pending_per_prefix: usize,
    /// Handshakes each prefix may start per minute (also the burst); `None`: no rate limit
    /// (the server's second gate, over connections still waiting for message 1, has none).
    pub per_source_per_minute: Option<u32>,
}

/// Why a handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source's handshake rate is spent.
    Rate,
}

/// A handshake admitted, possibly at the cost of another one the driver must drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub evicted: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    prefix: Prefix,
    since: Instant,
}

/// Pending handshakes and per-source rates. No clock, no I/O.
#[derive(Debug)]
pub struct HandshakeGate {
    limits: GateLimits,
    pending: HashMap<u64, Pending>,
    per_prefix: HashMap<Prefix, usize>,
    buckets: HashMap<Prefix, TokenBucket>,
}

impl HandshakeGate {
    pub fn new(limits: GateLimits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
            per_prefix: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    /// Handshakes pending now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Connection `id` from `ip` sent its first frame at `now`: admit it or refuse it.
    pub fn admit(&mut self, now: Instant, id: u64, ip: IpAddr) -> Result<Admitted, Refusal> {
        let prefix = Prefix::of(ip);
        if let Some(per_minute) = self.limits.per_source_per_minute {
            let bucket = self
                .buckets
                .entry(prefix)
                .or_insert_with(|| TokenBucket::new(per_minute, Duration::from_secs(60), now));
            if bucket.try_take(now).is_err() {
                return Err(Refusal::Rate);
            }
        }
        let held = self.per_prefix.get(&prefix).copied().unwrap_or(0);
        let evicted = if held >= self.limits.max_pending_per_prefix.max(1) {
            self.oldest_of(prefix)
        } else if self.pending.len() >= self.limits.max_pending.max(1) {
            self.oldest_of_largest()
        } else {
            None
        };
        if let Some(old) = evicted {
            self.finish(old);
        }
        self.pending.insert(id, Pending { prefix, since: now });
        *self.per_prefix.entry(prefix).or_insert(0) += 1;
        Ok(Admitted { evicted })
    }

    /// The handshake of `id` ended (done, failed or evicted); unknown ids are ignored.
    pub fn finish(&mut self, id: u64) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_prefix.get_mut(&p.prefix) {
            *n -= 1;
            if *n == 0 {
                self.per_prefix.remove(&p.prefix);
            }
        }
    }

    /// Forgets the rate state of sources that have been idle long enough to be full again.
    pub fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    /// The oldest pending handshake among the prefixes holding the most (ties: the lowest id).
    /// Oldest, not any: a source cannot pick an address that makes others lose the tie.
    fn oldest_of_largest(&self) -> Option<u64> {
        let most = self.per_prefix.values().copied().max()?;
        self.pending
            .iter()
            .filter(|(_, p)| self.per_prefix.get(&p.prefix) == Some(&most))
            .min_by_key(|(id, p)| (p.since, **id))
            .map(|(id, _)| *id)
    }

    /// The oldest pending handshake of `prefix` (ties: the lowest id).
    fn oldest_of(&self, prefix: Prefix) -> Option<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| p.prefix == prefix)
            .min_by_key(|(id, p)| (p.since, **id))
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn gate(max_pending: usize, per_prefix: usize, per_minute: u32) -> HandshakeGate {
        HandshakeGate::new(GateLimits {
            max_pending,
            max_pending_per_prefix: per_prefix,
            per_source_per_minute: Some(per_minute),
        })
    }

    #[test]
    fn ipv6_is_keyed_on_the_64_and_ipv4_on_the_address() {
        assert_eq!(
            Prefix::of(ip("2001:db8:1:2::1")),
            Prefix::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Prefix::of(ip("2001:db8:1:2::1")),
            Prefix::of(ip("2001:db8:1:3::1"))
        );
        assert_ne!(Prefix::of(ip("10.0.0.1")), Prefix::of(ip("10.0.0.2")));
        assert_eq!(
            Prefix::of(ip("::ffff:10.0.0.1")),
            Prefix::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn networks_are_the_ipv4_24_and_the_ipv6_48() {
        let net = |s| Prefix::network(ip(s));
        assert_eq!(net("127.0.0.1"), net("127.0.0.200"));
        assert_ne!(net("127.0.0.1"), net("127.0.1.1"));
        assert_eq!(net("::ffff:10.0.0.1"), net("10.0.0.9"));
        assert_eq!(net("2001:db8:1:2::1"), net("2001:db8:1:ffff::1"));
        assert_ne!(net("2001:db8:1::1"), net("2001:db8:2::1"));
        // A network never equals an address, even 10.0.0.0 and its /24.
        assert_ne!(net("10.0.0.0"), Prefix::of(ip("10.0.0.0")));
        assert_eq!(net("127.0.1.9").to_string(), "127.0.1.0/24");
        assert_eq!(net("2001:db8:1:2::1").to_string(), "2001:db8:1::/48");
        assert_eq!(
            Prefix::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Prefix::of(ip("10.1.2.3")).to_string(), "10.1.2.3");
    }

    #[test]
    fn a_full_prefix_evicts_its_own_oldest() {
        let t0 = Instant::now();
        let mut g = gate(100, 2, 100);
        let s = Duration::from_millis(1);
        assert_eq!(
            g.admit(t0, 1, ip("10.0.0.1")),
            Ok(Admitted { evicted: None })
        );
        assert_eq!(
            g.admit(t0 + s, 2, ip("10.0.0.1")),
            Ok(Admitted { evicted: None })
        );
        assert_eq!(
            g.admit(t0 + s, 3, ip("10.0.0.2")),
            Ok(Admitted { evicted: None })
        );
        assert_eq!(
            g.admit(t0 + 2 * s, 4, ip("10.0.0.1")),
            Ok(Admitted { evicted: Some(1) })
        );
        assert_eq!(g.pending(), 3);
    }

    #[test]
    fn when_full_the_largest_prefix_loses_its_oldest() {
        let t0 = Instant::now();
        let mut g = gate(4, 8, 100);
        let s = Duration::from_millis(1);
        // The honest source is the oldest of all, but holds only one slot.
        g.admit(t0, 10, ip("10.0.0.9")).unwrap();
        for id in 1..=3 {
            g.admit(t0 + s * id as u32, id, ip("10.0.0.1")).unwrap();
        }
        assert_eq!(
            g.admit(t0 + 10 * s, 20, ip("10.0.0.2")).unwrap().evicted,
            Some(1)
        );
        // Now 10.0.0.1 holds 2, the others 1 each: 10.0.0.1 loses again.
        assert_eq!(
            g.admit(t0 + 11 * s, 21, ip("10.0.0.3")).unwrap().evicted,
            Some(2)
        );
        // Every prefix holds one: equal shares, so the oldest of all goes.
        assert_eq!(
            g.admit(t0 + 12 * s, 22, ip("10.0.0.4")).unwrap().evicted,
            Some(10)
        );
        assert_eq!(g.pending(), 4);
    }

    #[test]
    fn finish_frees_slots_and_unknown_ids_are_ignored() {
        let t0 = Instant::now();
        let mut g = gate(1, 1, 100);
        g.admit(t0, 1, ip("10.0.0.1")).unwrap();
        g.finish(1);
        g.finish(1);
        g.finish(99);
        assert_eq!(g.pending(), 0);
        assert_eq!(g.admit(t0, 2, ip("10.0.0.2")).unwrap().evicted, None);
    }

    #[test]
    fn each_source_is_rate_limited_alone() {
        let t0 = Instant::now();
        let mut g = gate(1000, 1000, 3);
        for id in 0..3 {
            g.admit(t0, id, ip("10.0.0.1")).unwrap();
        }
        assert_eq!(g.admit(t0, 3, ip("10.0.0.1")), Err(Refusal::Rate));
        // A refusal takes no slot; another source is not affected.
        assert_eq!(g.pending(), 3);
        assert!(g.admit(t0, 4, ip("10.0.0.2")).is_ok());
        // One token back after 20 s (3 per minute).
        assert!(g
            .admit(t0 + Duration::from_secs(21), 5, ip("10.0.0.1"))
            .is_ok());
        for id in 0..6 {
            g.finish(id);
        }
        g.prune(t0 + Duration::from_secs(600));
        assert!(g.buckets.is_empty(), "idle sources are forgotten");
    }

    #[test]
    fn without_a_rate_only_the_slots_limit() {
        let t0 = Instant::now();
        let mut g = HandshakeGate::new(GateLimits {
            max_pending: 2,
            max_pending_per_prefix: usize::MAX,
            per_source_per_minute: None,
        });
        for id in 0..1000 {
            g.admit(t0, id, ip("10.0.0.1")).unwrap();
        }
        assert_eq!(g.pending(), 2);
        assert!(g.buckets.is_empty());
    }
}
