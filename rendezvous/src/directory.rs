//! The peer directory behind `Discover`: per network name, the registered peers that accept
//! inbound punches, kept so that a uniformly random sample of k of them costs O(k), however
//! many peers the network has.
//!
//! Each network's peers are a `Vec` and every peer's index in it is in a map, so a peer is
//! removed in O(1) by moving the last one into its place (`swap_remove`). Sampling walks a
//! partial Fisher-Yates shuffle of the `Vec` without touching it: the swaps live in a small
//! map for the length of one call. Pure: no clock, no I/O; the caller owns the RNG.
//!
//! Peers without a network are never indexed: they can neither be discovered nor discover.

use std::collections::HashMap;

use rand::Rng;

use punch_proto::PeerId;

/// Candidates one sample looks at, per peer it may return. A candidate is skipped when it is
/// the asker or its allow-list does not name the asker; an allow-list costs nothing to
/// register, so without a bound a network full of closed peers would make every `Discover`
/// walk all of them. Four tries per answer fill a sample unless three in four peers of the
/// network are closed to the asker, and bound the work of one request to `4 * discover_max`.
pub const DRAWS_PER_ANSWER: usize = 4;

/// Accepting peers by network, sampled uniformly at random.
#[derive(Debug, Default)]
pub struct Directory {
    networks: HashMap<String, Vec<PeerId>>,
    /// Each indexed peer's position in its network's `Vec`.
    positions: HashMap<PeerId, usize>,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes `peer` under `network`. An empty network is not indexed; a peer already indexed
    /// (under any network) is left as it is: the registry removes a peer before re-adding it.
    pub fn insert(&mut self, network: &str, peer: PeerId) {
        if network.is_empty() || self.positions.contains_key(&peer) {
            return;
        }
        let list = self.networks.entry(network.to_owned()).or_default();
        self.positions.insert(peer, list.len());
        list.push(peer);
    }

    /// Removes `peer` from `network`'s list, if it is there. An emptied network is forgotten,
    /// so the map holds only networks with at least one accepting peer.
    pub fn remove(&mut self, network: &str, peer: &PeerId) {
        let Some(list) = self.networks.get_mut(network) else {
            return;
        };
        let Some(&pos) = self.positions.get(peer) else {
            return;
        };
        if list.get(pos) != Some(peer) {
            return;
        }
        self.positions.remove(peer);
        list.swap_remove(pos);
        if let Some(moved) = list.get(pos) {
            self.positions.insert(*moved, pos);
        }
        if list.is_empty() {
            self.networks.remove(network);
        }
    }

    /// Accepting peers indexed under `network`.
    pub fn len_of(&self, network: &str) -> usize {
        self.networks.get(network).map_or(0, Vec::len)
    }

    /// Peers indexed in all networks.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Networks with at least one accepting peer.
    pub fn networks(&self) -> usize {
        self.networks.len()
    }

    /// Whether `peer` is indexed under `network`.
    pub fn contains(&self, network: &str, peer: &PeerId) -> bool {
        match (self.networks.get(network), self.positions.get(peer)) {
            (Some(list), Some(&pos)) => list.get(pos) == Some(peer),
            _ => false,
        }
    }

    /// At most `want` distinct peers of `network` for which `eligible` holds, chosen uniformly
    /// at random: every eligible peer is equally likely to be in the answer, in random order.
    /// Looks at no more than `want * DRAWS_PER_ANSWER + 1` candidates (the `+ 1` for the
    /// asker itself), so it may return fewer than `want` when most candidates are not eligible.
    pub fn sample(
        &self,
        network: &str,
        want: usize,
        rng: &mut impl Rng,
        eligible: impl Fn(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        let Some(list) = self.networks.get(network) else {
            return Vec::new();
        };
        let n = list.len();
        let draws = want
            .saturating_mul(DRAWS_PER_ANSWER)
            .saturating_add(1)
            .min(n);
        let mut out = Vec::with_capacity(want.min(n));
        // The partial shuffle's swaps: position -> the index now at that position.
        let mut swapped: HashMap<usize, usize> = HashMap::with_capacity(draws);
        for i in 0..draws {
            if out.len() >= want {
                break;
            }
            let j = rng.gen_range(i..n);
            let at_i = swapped.get(&i).copied().unwrap_or(i);
            let at_j = swapped.get(&j).copied().unwrap_or(j);
            // Position i is never read again; j now holds what was at i.
            swapped.insert(j, at_i);
            let candidate = list[at_j];
            if eligible(&candidate) {
                out.push(candidate);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn id(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32]).unwrap()
    }

    #[test]
    fn insert_and_remove_keep_positions_consistent() {
        let mut d = Directory::new();
        for i in 1..=5 {
            d.insert("main", id(i));
        }
        d.insert("test", id(6));
        d.insert("", id(7));
        d.insert("test", id(1)); // already indexed under main: ignored
        assert_eq!((d.len_of("main"), d.len_of("test"), d.len()), (5, 1, 6));
        assert!(!d.contains("", &id(7)) && !d.contains("test", &id(1)));
        d.remove("main", &id(2));
        d.remove("test", &id(3)); // not in that network: nothing happens
        assert_eq!(d.len_of("main"), 4);
        for i in [1, 3, 4, 5] {
            assert!(d.contains("main", &id(i)), "{i}");
        }
        assert!(!d.contains("main", &id(2)));
        d.remove("test", &id(6));
        assert_eq!(d.networks(), 1, "an emptied network is forgotten");
        for i in [1, 3, 4, 5] {
            d.remove("main", &id(i));
        }
        assert!(d.is_empty() && d.networks() == 0);
    }

    #[test]
    fn samples_are_bounded_distinct_eligible_and_uniform() {
        let mut d = Directory::new();
        for i in 1..=20 {
            d.insert("main", id(i));
        }
        d.insert("test", id(100));
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = HashMap::new();
        let rounds = 4000;
        for _ in 0..rounds {
            // Peer 1 asks; peer 2 is closed to it.
            let s = d.sample("main", 5, &mut rng, |p| *p != id(1) && *p != id(2));
            assert_eq!(s.len(), 5);
            let distinct: HashSet<_> = s.iter().collect();
            assert_eq!(distinct.len(), 5, "{s:?}");
            for p in s {
                assert!(p != id(1) && p != id(2) && p != id(100));
                *seen.entry(p).or_insert(0u32) += 1;
            }
        }
        // 18 eligible peers, 5 of them per sample: each expected 4000 * 5 / 18 = 1111 times.
        assert_eq!(seen.len(), 18);
        for (p, n) in &seen {
            assert!((900..1350).contains(n), "{p:?} drawn {n} times");
        }
        // Fewer eligible than wanted: all of them; an unknown network: none.
        let s = d.sample("test", 5, &mut rng, |_| true);
        assert_eq!(s, vec![id(100)]);
        assert!(d.sample("nope", 5, &mut rng, |_| true).is_empty());
        assert!(d.sample("main", 0, &mut rng, |_| true).is_empty());
    }

    #[test]
    fn a_network_of_closed_peers_costs_a_bounded_walk() {
        let mut d = Directory::new();
        for i in 0..=250u8 {
            let mut key = [1u8; 32];
            key[0] = i;
            d.insert("main", PeerId::from_bytes(key).unwrap());
        }
        assert_eq!(d.len_of("main"), 251);
        let looked = std::cell::Cell::new(0);
        let mut rng = StdRng::seed_from_u64(1);
        let s = d.sample("main", 3, &mut rng, |_| {
            looked.set(looked.get() + 1);
            false
        });
        assert!(s.is_empty());
        assert_eq!(looked.get(), 3 * DRAWS_PER_ANSWER + 1);
    }
}
