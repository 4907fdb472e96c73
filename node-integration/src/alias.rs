//! The per-peer loopback address: every punched peer is `127.a.b.c`, derived from its identity.
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
//! set-up. The derivation avoids `127.0.x.x` (127.0.0.1, 127.0.0.53 of systemd-resolved and
//! 127.0.1.1 of Debian's /etc/hosts live there), `127.255.x.x` (holds the broadcast address)
//! and last octets 0 and 255. That leaves 254 * 256 * 254 (about 16.5 million) addresses:
//! with 100 live peers the chance that two share one is about 0.03 %, and the bridge refuses
//! the second of two live peers that collide instead of mixing them up.

use std::net::Ipv4Addr;

use punch_proto::PeerId;
use sha2::{Digest, Sha256};

/// Domain separation for the hash, so the address says nothing else about the key.
const DOMAIN: &[u8] = b"punch-node loopback alias v1";

/// The loopback address that stands for `peer` on this machine.
pub fn peer_alias(peer: &PeerId) -> Ipv4Addr {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(peer.as_bytes());
    let d = h.finalize();
    Ipv4Addr::new(127, 1 + d[0] % 254, d[1], 1 + d[2] % 254)
}

/// Whether `ip` is an address [`peer_alias`] can return.
pub fn is_alias(ip: Ipv4Addr) -> bool {
    let [first, a, _, c] = ip.octets();
    first == 127 && (1..=254).contains(&a) && (1..=254).contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use punch_proto::Keypair;

    #[test]
    fn aliases_are_stable_distinct_and_in_range() {
        let ids: Vec<PeerId> = (0..200)
            .map(|_| Keypair::generate().expect("keygen").public())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let ip = peer_alias(id);
            assert_eq!(ip, peer_alias(id), "derivation is deterministic");
            assert!(is_alias(ip), "{ip} out of range");
            assert!(ip.is_loopback());
            assert_ne!(ip, Ipv4Addr::LOCALHOST);
            seen.insert(ip);
        }
        assert_eq!(seen.len(), ids.len(), "200 random identities, no collision");
    }

    #[test]
    fn snapshot_of_one_derivation() {
        let id = PeerId::from_bytes([7; 32]).expect("a valid key");
        // Changing the derivation would move every peer's address: a deliberate, visible step.
        assert_eq!(peer_alias(&id), Ipv4Addr::new(127, 135, 6, 68));
        assert!(!is_alias(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!is_alias(Ipv4Addr::new(127, 255, 1, 1)));
        assert!(!is_alias(Ipv4Addr::new(127, 3, 4, 255)));
        assert!(is_alias(Ipv4Addr::new(127, 3, 4, 5)));
    }
}
