//! The per-peer loopback address: every punched peer is `127.a.b.c`, assigned by a local
//! table (not derived from its identity, so no key can be ground to land on a friend's).
//!
//! Kaspa keys its limits by IP address: two pending inbound handshakes per source IP in
//! kaspa-p2p-lib's inbound handler, bans per IP in kaspad's address manager, and duplicate
//! detection by (node id, IP) in kaspad's connection initializer. If every punched peer reached
//! the node from 127.0.0.1, all of them would share one IP: three peers handshaking at once
//! would hit the pending limit, a ban would cut off every punched peer, and duplicates would
//! be judged by node id alone. Giving each peer its own loopback address keeps those rules
//! acting per punched peer, and the same address is used in both directions (the listener the
//! node dials, and the source address of streams delivered to the node), so the node sees one
//! consistent address for a peer whichever side dialed.
//!
//! Linux routes all of `127.0.0.0/8` to `lo`, so any such address can be bound without
//! set-up. The space avoids `127.0.x.x` (127.0.0.1, 127.0.0.53 of systemd-resolved and
//! 127.0.1.1 of Debian's /etc/hosts live there), `127.255.x.x` (holds the broadcast address)
//! and last octets 0 and 255: [`SPACE`] = 254 * 256 * 254 (about 16.5 million) addresses.
//!
//! An earlier version hashed the identity into this space (24 bits): a stranger could grind a
//! key whose alias was a friend's (12 minutes of Python on one core) and inherit what kaspad
//! keyed on that address. [`AliasTable`] instead hands out aliases:
//!
//! - **Never two identities on one alias**: an alias belongs to one table entry; a new
//!   identity only ever gets an alias no entry holds.
//! - **Stable while known**: an identity keeps its alias across sessions (reconnects,
//!   re-punches) as long as it has an entry, so kaspad sees one address for it.
//! - **Bounded, and a live peer's alias is never taken**: at most `capacity` entries. When
//!   the table is full, the entry whose last session ended longest ago is evicted; an entry
//!   with a live session is never evicted, and if every entry is live the new identity is
//!   refused ([`AliasError::Full`]).
//! - **A freed alias is not reissued soon**: new aliases come from a cursor that walks the
//!   range in order (skipping held ones) and starts at a random place, so an evicted alias
//!   comes back only after the cursor has gone round the whole range: with the default range,
//!   16.5 million new identities later. Each needs a punched session accepted by us: with
//!   sessions cycled at 80 a second (8 inbound slots, a 100 ms punch each: about the most the
//!   slots allow, however many offers the rendezvous grants), that takes 57 hours: beyond
//!   kaspad's ban duration (24 hours, `MAX_BANNED_TIME` in kaspa-addressmanager).
//!   So a stranger does not inherit a ban on an evicted peer's alias, and a banned identity
//!   that comes back while it has its entry gets the banned alias again. (An identity that is
//!   evicted, or a fresh key, gets a new alias and so is not under the old ban: refusing
//!   banned identities at the punch layer is another piece of work. Under a flood of fresh
//!   identities from one /24 (60 offers a minute) an idle entry survives 4096 / 60, about 68
//!   minutes.) The table lives in memory: after a restart the cursor starts at a new random
//!   place, and kaspad's persisted bans then hit a new peer only if it lands on one of the few
//!   banned aliases (about 1 in 16.5 million per banned alias).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use punch_proto::PeerId;

use crate::lock;

/// Addresses in the alias space (see the module doc).
pub const SPACE: u32 = 254 * 256 * 254;
/// Identities remembered at most: far above the live punched peers (8 inbound by default plus
/// the configured peers), so a peer that reconnects within hours keeps its address even while
/// strangers come and go; an entry costs about 100 bytes, so the table stays under 1 MB.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Whether `ip` is in the alias space.
pub fn is_alias(ip: Ipv4Addr) -> bool {
    index_of(ip).is_some()
}

fn index_of(ip: Ipv4Addr) -> Option<u32> {
    let [first, a, b, c] = ip.octets();
    let ok = first == 127 && (1..=254).contains(&a) && (1..=254).contains(&c);
    ok.then(|| (u32::from(a) - 1) * 256 * 254 + u32::from(b) * 254 + (u32::from(c) - 1))
}

fn address_of(index: u32) -> Ipv4Addr {
    let a = 1 + index / (256 * 254);
    let b = (index / 254) % 256;
    let c = 1 + index % 254;
    // In range for index < SPACE: a <= 254, b <= 255, c <= 254.
    Ipv4Addr::new(127, a as u8, b as u8, c as u8)
}

/// A run of consecutive aliases (in the order `127.1.0.1, 127.1.0.2, ... 127.1.0.254,
/// 127.1.1.1, ...`) that a table hands out. The default is the whole space; outside Linux,
/// where each loopback address must be configured (`ifconfig lo0 alias`), a small range of
/// configured addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AliasRange {
    first: u32,
    count: u32,
}

impl AliasRange {
    /// The whole alias space.
    pub const ALL: AliasRange = AliasRange {
        first: 0,
        count: SPACE,
    };

    /// `count` aliases starting at `first`.
    pub fn new(first: Ipv4Addr, count: u32) -> Result<Self, AliasError> {
        let bad = AliasError::BadRange { first, count };
        let start = index_of(first).ok_or(bad.clone())?;
        if count == 0 || u64::from(start) + u64::from(count) > u64::from(SPACE) {
            return Err(bad);
        }
        Ok(Self {
            first: start,
            count,
        })
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`th alias of the range (`i < len`).
    fn nth(&self, i: u32) -> Ipv4Addr {
        address_of(self.first + i % self.count)
    }
}

impl Default for AliasRange {
    fn default() -> Self {
        Self::ALL
    }
}

/// Why an identity got no alias.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AliasError {
    /// Local configuration: the range is empty or leaves the alias space.
    #[error("alias range of {count} addresses from {first} is not inside 127.1.0.1-127.254.255.254 (last octet 1-254)")]
    BadRange { first: Ipv4Addr, count: u32 },
    /// Every entry has a live session: more live punched peers than the table holds (local
    /// configuration: the capacity or range is smaller than the peers allowed at once).
    #[error("all {live} aliases are held by live punched peers; {peer} gets none")]
    Full { peer: PeerId, live: usize },
}

/// What the table did, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AliasStats {
    /// Identities given a new alias.
    pub assigned: u64,
    /// Entries without a live session forgotten to make room.
    pub evicted: u64,
    /// Identities refused because every entry was live.
    pub refused: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    alias: Ipv4Addr,
    /// Sessions holding the alias now (a re-punch can overlap the session it replaces).
    live: usize,
    /// When the entry was last acquired or released, in table operations.
    last: u64,
}

/// Identity -> alias, as described in the module doc. Pure: no clock (recency is counted in
/// table operations), no randomness (the cursor's start is an input).
#[derive(Debug, Clone)]
pub struct AliasTable {
    range: AliasRange,
    capacity: usize,
    /// Offset in `range` of the next alias to try.
    cursor: u32,
    tick: u64,
    by_peer: HashMap<PeerId, Entry>,
    by_alias: HashMap<Ipv4Addr, PeerId>,
    /// Entries without a live session, by `last`: the front is evicted first.
    idle: BTreeMap<u64, PeerId>,
    stats: AliasStats,
}

impl AliasTable {
    /// A table handing out aliases of `range`, remembering at most `capacity` identities
    /// (and never more than the range holds), the first new alias at offset `start`.
    pub fn new(range: AliasRange, capacity: usize, start: u32) -> Self {
        let capacity = capacity.clamp(1, range.len() as usize);
        Self {
            range,
            capacity,
            cursor: start % range.len(),
            tick: 0,
            by_peer: HashMap::new(),
            by_alias: HashMap::new(),
            idle: BTreeMap::new(),
            stats: AliasStats::default(),
        }
    }

    /// A new session with `peer`: its alias (the one it already has, or a free one). The
    /// caller must [`release`](Self::release) it once per successful call.
    pub fn acquire(&mut self, peer: PeerId) -> Result<Ipv4Addr, AliasError> {
        self.tick += 1;
        if let Some(e) = self.by_peer.get_mut(&peer) {
            if e.live == 0 {
                self.idle.remove(&e.last);
            }
            e.live += 1;
            e.last = self.tick;
            return Ok(e.alias);
        }
        if self.by_peer.len() >= self.capacity {
            let Some((_, old)) = self.idle.pop_first() else {
                self.stats.refused += 1;
                return Err(AliasError::Full {
                    peer,
                    live: self.by_peer.len(),
                });
            };
            if let Some(e) = self.by_peer.remove(&old) {
                self.by_alias.remove(&e.alias);
            }
            self.stats.evicted += 1;
        }
        // Fewer entries than aliases in the range, so a free one is found within the range.
        for _ in 0..self.range.len() {
            let alias = self.range.nth(self.cursor);
            self.cursor = (self.cursor + 1) % self.range.len();
            if self.by_alias.contains_key(&alias) {
                continue;
            }
            self.by_alias.insert(alias, peer);
            self.by_peer.insert(
                peer,
                Entry {
                    alias,
                    live: 1,
                    last: self.tick,
                },
            );
            self.stats.assigned += 1;
            return Ok(alias);
        }
        self.stats.refused += 1;
        Err(AliasError::Full {
            peer,
            live: self.by_peer.len(),
        })
    }

    /// A session with `peer` ended. Its entry stays (idle once no session is left).
    pub fn release(&mut self, peer: &PeerId) {
        self.tick += 1;
        if let Some(e) = self.by_peer.get_mut(peer) {
            if e.live == 0 {
                return;
            }
            e.live -= 1;
            if e.live == 0 {
                e.last = self.tick;
                self.idle.insert(e.last, *peer);
            }
        }
    }

    /// The alias `peer` has, live or not.
    pub fn get(&self, peer: &PeerId) -> Option<Ipv4Addr> {
        self.by_peer.get(peer).map(|e| e.alias)
    }

    /// The identity holding `alias`.
    pub fn holder(&self, alias: Ipv4Addr) -> Option<PeerId> {
        self.by_alias.get(&alias).copied()
    }

    /// Whether `peer` has a live session.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.by_peer.get(peer).is_some_and(|e| e.live > 0)
    }

    /// Identities remembered.
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    pub fn stats(&self) -> AliasStats {
        self.stats
    }
}

/// A shared [`AliasTable`] handing out [`AliasLease`]s. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Aliases(Arc<Mutex<AliasTable>>);

impl Aliases {
    /// A table over `range` remembering `capacity` identities, starting at a random place.
    pub fn new(range: AliasRange, capacity: usize) -> Self {
        let start = rand::Rng::gen_range(&mut rand::thread_rng(), 0..range.len());
        Self::from_table(AliasTable::new(range, capacity, start))
    }

    pub fn from_table(table: AliasTable) -> Self {
        Self(Arc::new(Mutex::new(table)))
    }

    /// `peer`'s alias for one session, released when the lease is dropped.
    pub fn lease(&self, peer: PeerId) -> Result<AliasLease, AliasError> {
        let alias = lock(&self.0).acquire(peer)?;
        Ok(AliasLease {
            aliases: self.clone(),
            peer,
            alias,
        })
    }

    /// The alias `peer` has (it may have no live session).
    pub fn get(&self, peer: &PeerId) -> Option<Ipv4Addr> {
        lock(&self.0).get(peer)
    }

    /// Whether a session with `peer` holds a lease now.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        lock(&self.0).is_live(peer)
    }

    /// The identity `alias` belongs to (live or remembered).
    pub fn holder(&self, alias: Ipv4Addr) -> Option<PeerId> {
        lock(&self.0).holder(alias)
    }

    pub fn stats(&self) -> AliasStats {
        lock(&self.0).stats()
    }
}

impl Default for Aliases {
    fn default() -> Self {
        Self::new(AliasRange::ALL, DEFAULT_CAPACITY)
    }
}

/// One session's hold on its peer's alias.
#[derive(Debug)]
pub struct AliasLease {
    aliases: Aliases,
    peer: PeerId,
    alias: Ipv4Addr,
}

impl AliasLease {
    pub fn alias(&self) -> Ipv4Addr {
        self.alias
    }
}

impl Drop for AliasLease {
    fn drop(&mut self) {
        lock(&self.aliases.0).release(&self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punch_proto::Keypair;
    use std::collections::HashSet;

    fn id() -> PeerId {
        Keypair::generate().expect("keygen").public()
    }

    fn range(first: [u8; 4], count: u32) -> AliasRange {
        AliasRange::new(Ipv4Addr::from(first), count).expect("a valid range")
    }

    #[test]
    fn space_mapping_round_trips_and_avoids_reserved_addresses() {
        assert_eq!(address_of(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(address_of(253), Ipv4Addr::new(127, 1, 0, 254));
        assert_eq!(address_of(254), Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(address_of(SPACE - 1), Ipv4Addr::new(127, 254, 255, 254));
        for i in [0, 1, 253, 254, 65_023, 65_024, 1_000_003, SPACE - 1] {
            assert_eq!(index_of(address_of(i)), Some(i));
        }
        for ip in [
            "127.0.0.1",
            "127.0.1.1",
            "127.255.1.1",
            "127.3.4.255",
            "127.3.4.0",
        ] {
            assert!(!is_alias(ip.parse().expect("ip")), "{ip}");
        }
        assert!(is_alias(Ipv4Addr::new(127, 3, 4, 5)));
        assert!(AliasRange::new(Ipv4Addr::new(127, 254, 255, 254), 2).is_err());
        assert!(AliasRange::new(Ipv4Addr::new(127, 0, 0, 1), 2).is_err());
        assert!(AliasRange::new(Ipv4Addr::new(127, 1, 0, 1), 0).is_err());
        assert_eq!(range([127, 1, 0, 1], SPACE), AliasRange::ALL);
    }

    #[test]
    fn identities_get_distinct_aliases_that_stay_while_known() {
        let mut t = AliasTable::new(AliasRange::ALL, 1000, 12_345);
        let ids: Vec<PeerId> = (0..500).map(|_| id()).collect();
        let mut seen = HashSet::new();
        for p in &ids {
            let a = t.acquire(*p).expect("room");
            assert!(is_alias(a), "{a}");
            assert!(seen.insert(a), "{a} handed out twice");
        }
        for p in &ids {
            let a = t.get(p).expect("known");
            t.release(p);
            assert!(!t.is_live(p));
            assert_eq!(t.acquire(*p), Ok(a), "same alias after a reconnect");
            assert_eq!(t.holder(a), Some(*p));
        }
        assert_eq!(t.stats().assigned, 500);
    }

    /// The attack the hash allowed: a stranger that would "collide" with a friend. Here the
    /// cursor is made to come round to the friend's alias while the friend is live, in a
    /// range too small to have a spare: the stranger gets another alias or none.
    #[test]
    fn a_live_alias_is_never_handed_to_another_identity() {
        let friend = id();
        let mut t = AliasTable::new(range([127, 9, 9, 1], 3), 3, 0);
        let fa = t.acquire(friend).expect("room");
        assert_eq!(fa, Ipv4Addr::new(127, 9, 9, 1));
        let (s1, s2, s3, s4) = (id(), id(), id(), id());
        let a1 = t.acquire(s1).expect("room");
        let a2 = t.acquire(s2).expect("room");
        // The cursor now points at the friend's alias again. s1 leaves; s3 arrives: the
        // table is full, s1 (idle) is evicted, and the friend's alias is skipped.
        t.release(&s1);
        let a3 = t.acquire(s3).expect("s1 evicted");
        assert_eq!(a3, a1, "the only alias that is not held");
        assert_ne!(a3, fa);
        assert_eq!(t.get(&s1), None, "s1 forgotten");
        // Everyone is live now: s4 is refused rather than given any of them.
        assert_eq!(t.acquire(s4), Err(AliasError::Full { peer: s4, live: 3 }));
        assert_eq!(t.holder(fa), Some(friend));
        assert_eq!(t.holder(a2), Some(s2));
        assert_eq!(t.stats().refused, 1);
        assert_eq!(t.stats().evicted, 1);
    }

    #[test]
    fn eviction_takes_the_longest_idle_and_never_a_live_entry() {
        let mut t = AliasTable::new(AliasRange::ALL, 3, 0);
        let (live, old, recent, new) = (id(), id(), id(), id());
        let la = t.acquire(live).expect("room");
        t.acquire(old).expect("room");
        t.acquire(recent).expect("room");
        t.release(&old);
        t.release(&recent);
        t.acquire(new).expect("old evicted");
        assert_eq!(t.get(&old), None);
        assert!(t.get(&recent).is_some());
        assert_eq!(t.get(&live), Some(la));
        // Two sessions with one peer: the alias stays live until both end.
        t.acquire(live).expect("known");
        t.release(&live);
        assert!(t.is_live(&live));
        t.release(&live);
        assert!(!t.is_live(&live));
        t.release(&live); // an extra release changes nothing
        assert_eq!(t.get(&live), Some(la));
        assert_eq!(t.len(), 3);
    }

    /// Strangers churning through a small table: every one is evicted soon after it leaves,
    /// yet no alias comes back (the cursor has 16.5 million to walk through first).
    #[test]
    fn evicted_aliases_are_not_reissued_to_new_identities() {
        let mut t = AliasTable::new(AliasRange::ALL, 4, SPACE - 10);
        let friend = id();
        let fa = t.acquire(friend).expect("room");
        let mut seen = HashSet::from([fa]);
        for _ in 0..5_000 {
            let s = id();
            let a = t.acquire(s).expect("an idle entry to evict");
            assert!(seen.insert(a), "{a} reissued");
            t.release(&s);
        }
        assert_eq!(t.get(&friend), Some(fa), "the live friend kept its alias");
        assert_eq!(t.len(), 4);
        assert_eq!(t.stats().evicted, 5_000 - 3);
    }

    /// Random acquire/release sequences against a model of who is live: the table's two
    /// maps agree, no alias has two holders, a live identity's alias never changes, an
    /// identity keeps its alias while it has an entry, and a refusal happens only when every
    /// entry is live.
    #[test]
    fn random_operations_keep_the_invariants() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(10);
        let ids: Vec<PeerId> = (0..9).map(|_| id()).collect();
        for (range_len, capacity) in [(5, 4), (4, 8), (3, 3), (64, 2)] {
            let mut t = AliasTable::new(range([127, 5, 0, 1], range_len), capacity, 2);
            let cap = capacity.min(range_len as usize);
            let mut live = vec![0usize; ids.len()];
            let mut held: Vec<Option<Ipv4Addr>> = vec![None; ids.len()];
            for _ in 0..20_000 {
                let i = rng.gen_range(0..ids.len());
                if rng.gen_bool(0.55) {
                    let before = t.get(&ids[i]);
                    let live_entries = live.iter().filter(|&&n| n > 0).count();
                    match t.acquire(ids[i]) {
                        Ok(a) => {
                            if let Some(b) = before {
                                assert_eq!(a, b, "kept while known");
                            }
                            live[i] += 1;
                            held[i] = Some(a);
                        }
                        Err(AliasError::Full { .. }) => {
                            assert!(before.is_none());
                            assert_eq!(live_entries, cap, "refused with an idle entry");
                        }
                        Err(e) => panic!("{e}"),
                    }
                } else if live[i] > 0 {
                    t.release(&ids[i]);
                    live[i] -= 1;
                }
                let mut aliases = HashSet::new();
                for (j, p) in ids.iter().enumerate() {
                    assert_eq!(t.is_live(p), live[j] > 0);
                    if let Some(a) = t.get(p) {
                        assert!(aliases.insert(a), "{a} has two holders");
                        assert_eq!(t.holder(a), Some(*p));
                    }
                    if live[j] > 0 {
                        assert_eq!(t.get(p), held[j], "a live alias moved");
                    }
                }
                assert!(t.len() <= cap);
            }
            let st = t.stats();
            assert!(
                st.evicted > 0 && st.refused > 0,
                "both paths exercised: {st:?}"
            );
        }
    }
}
