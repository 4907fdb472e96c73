//! The punch-layer deny list: identities and IP addresses we refuse to punch with, each until
//! a deadline.
//!
//! The application fills it (kaspad-punch bans a misbehaving Kaspa peer here as well as in
//! kaspad); the client reads it at two points, before anything touches the network:
//!
//! - an inbound offer (we are the target) whose peer identity is denied, or whose address as
//!   the rendezvous observed it (`peer_observed`) has a denied IP, is refused before any dial
//!   ([`crate::Event::InboundDenied`], a rate-limited log line), exactly like a peer the
//!   allow-list does not name;
//! - [`crate::Client::connect`] to a denied identity fails with [`crate::Error::Denied`]
//!   without a request to the rendezvous.
//!
//! [`Denylist`] is a cheap cloneable handle: every clone (the one in [`crate::Config::deny`],
//! the application's own) sees the same entries. It holds at most [`MAX_DENIED`] entries of
//! each kind; inserting into a full table first drops the expired entries, then the entry that
//! expires soonest, so the table never grows without bound and a long ban is the last to go.
//!
//! Time: deadlines are `std::time::Instant`s, compared with the `now` the caller passes (the
//! client passes tokio's clock, which is the same clock unless a test paused it). No clock is
//! read here.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use punch_proto::PeerId;

use crate::lock;

/// Entries of each kind (identities, IPs) the list holds at most. A Kaspa node bans a few
/// peers an hour; 4,096 is far beyond that while bounding the table to about 200 KiB
/// (an entry costs about 50 bytes), whatever an application feeding it from peer behaviour
/// does under attack.
pub const MAX_DENIED: usize = 4096;

#[derive(Debug, Default)]
struct Tables {
    peers: HashMap<PeerId, Instant>,
    ips: HashMap<IpAddr, Instant>,
}

/// Identities and IPs refused until a deadline (see the module doc). `Default` is empty.
#[derive(Debug, Clone, Default)]
pub struct Denylist {
    inner: Arc<Mutex<Tables>>,
}

impl Denylist {
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses punches with `peer` until `until` (a later deadline replaces an earlier one;
    /// an earlier one never shortens a ban).
    pub fn deny_peer(&self, peer: PeerId, until: Instant) {
        insert(&mut lock(&self.inner).peers, peer, until);
    }

    /// Refuses inbound punches from peers the rendezvous observed at `ip` until `until`.
    pub fn deny_ip(&self, ip: IpAddr, until: Instant) {
        insert(&mut lock(&self.inner).ips, ip, until);
    }

    /// Lifts the ban of `peer`, if any.
    pub fn allow_peer(&self, peer: &PeerId) {
        lock(&self.inner).peers.remove(peer);
    }

    /// Lifts the ban of `ip`, if any.
    pub fn allow_ip(&self, ip: &IpAddr) {
        lock(&self.inner).ips.remove(ip);
    }

    /// Whether `peer`, or a peer seen at `ip`, is denied at `now`.
    pub fn is_denied(&self, peer: &PeerId, ip: IpAddr, now: Instant) -> bool {
        let t = lock(&self.inner);
        live(&t.peers, peer, now) || live(&t.ips, &ip, now)
    }

    /// Whether `peer` is denied at `now` (whatever its address).
    pub fn is_peer_denied(&self, peer: &PeerId, now: Instant) -> bool {
        live(&lock(&self.inner).peers, peer, now)
    }

    /// Drops the entries expired at `now`. Not needed for correctness (expired entries deny
    /// nothing, and a full table drops them itself); for applications that want the memory
    /// back sooner.
    pub fn prune(&self, now: Instant) {
        let mut t = lock(&self.inner);
        t.peers.retain(|_, until| *until > now);
        t.ips.retain(|_, until| *until > now);
    }

    /// Entries held (identities, IPs), expired ones included until pruned.
    pub fn len(&self) -> (usize, usize) {
        let t = lock(&self.inner);
        (t.peers.len(), t.ips.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

fn live<K: Eq + Hash>(map: &HashMap<K, Instant>, key: &K, now: Instant) -> bool {
    map.get(key).is_some_and(|until| *until > now)
}

fn insert<K: Eq + Hash + Copy>(map: &mut HashMap<K, Instant>, key: K, until: Instant) {
    if let Some(old) = map.get_mut(&key) {
        *old = (*old).max(until);
        return;
    }
    if map.len() >= MAX_DENIED {
        // Make room by dropping the ban that ends soonest (an expired one ends soonest of
        // all, so expired entries always go first). One O(MAX_DENIED) scan, only when full.
        let soonest = map
            .iter()
            .min_by_key(|(_, until)| **until)
            .map(|(k, u)| (*k, *u));
        if let Some((k, u)) = soonest {
            if u >= until {
                // Every held ban outlasts the new one: keep them, drop the newcomer.
                return;
            }
            map.remove(&k);
        }
    }
    map.insert(key, until);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32]).unwrap()
    }

    #[test]
    fn entries_deny_until_their_deadline() {
        let d = Denylist::new();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        assert!(!d.is_denied(&id(1), ip, t0));
        d.deny_peer(id(1), t0 + 10 * s);
        d.deny_ip(ip, t0 + 5 * s);
        // A clone is the same list.
        let c = d.clone();
        assert!(c.is_denied(&id(1), other, t0));
        assert!(c.is_peer_denied(&id(1), t0 + 9 * s));
        assert!(c.is_denied(&id(2), ip, t0 + 4 * s));
        assert!(
            !c.is_denied(&id(2), ip, t0 + 5 * s),
            "expired at its deadline"
        );
        assert!(!c.is_denied(&id(2), other, t0));
        assert!(!c.is_peer_denied(&id(1), t0 + 10 * s));
        // An earlier deadline does not shorten a ban; a later one extends it.
        d.deny_peer(id(1), t0 + s);
        assert!(d.is_peer_denied(&id(1), t0 + 9 * s));
        d.deny_peer(id(1), t0 + 20 * s);
        assert!(d.is_peer_denied(&id(1), t0 + 19 * s));
        d.allow_peer(&id(1));
        assert!(!d.is_peer_denied(&id(1), t0));
        d.allow_ip(&ip);
        assert!(!d.is_denied(&id(2), ip, t0));
        d.deny_ip(ip, t0 + s);
        d.deny_peer(id(3), t0 + 3 * s);
        d.prune(t0 + 2 * s);
        assert_eq!(d.len(), (1, 0));
    }

    #[test]
    fn a_full_table_drops_the_soonest_ending_ban() {
        let d = Denylist::new();
        let t0 = Instant::now();
        let at = |i: usize| t0 + Duration::from_secs(10 + i as u64);
        let ip = |i: usize| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        for i in 0..MAX_DENIED {
            d.deny_ip(ip(i), at(i));
        }
        assert_eq!(d.len(), (0, MAX_DENIED));
        // A ban shorter than every held one is not taken.
        d.deny_ip(ip(MAX_DENIED), t0);
        assert!(!d.is_denied(&id(1), ip(MAX_DENIED), t0));
        // A longer one replaces the soonest-ending (ip 0).
        d.deny_ip(ip(MAX_DENIED), at(MAX_DENIED));
        assert_eq!(d.len(), (0, MAX_DENIED));
        assert!(d.is_denied(&id(1), ip(MAX_DENIED), t0));
        assert!(!d.is_denied(&id(1), ip(0), t0));
        assert!(d.is_denied(&id(1), ip(1), t0));
    }
}
