//! Harness of node-integration's `AliasTable` (the identity -> 127.a.b.c alias allocator):
//! acquires and releases of a few identities on small ranges and capacities, checked against a
//! model of who holds live sessions.
//!
//! The table's file is compiled here by path: node-integration itself depends on the Kaspa
//! crates, far too heavy to build with the sanitizer, while the table needs only `punch-proto`,
//! `rand` and `thiserror` (and `crate::lock`, defined in this crate's root).
//!
//! After every event:
//! - no alias is held by two identities, and `holder` is the inverse of `get`;
//! - an identity with a live session keeps the alias it had when the session began;
//! - the table remembers at most its capacity (and never more than the range holds);
//! - a new identity is refused only when every remembered identity is live and the table is
//!   full; a known identity is never refused and gets its own alias back.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use arbitrary::Arbitrary;
use punch_proto::{Keypair, PeerId};

#[path = "../../node-integration/src/alias.rs"]
#[allow(dead_code)]
mod alias;

use alias::{AliasError, AliasRange, AliasTable};

const PEERS: usize = 12;
const MAX_EVENTS: usize = 512;

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    range_len: u8,
    range_start: u16,
    capacity: u8,
    cursor: u16,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    Acquire(u8),
    Release(u8),
}

fn peers() -> &'static [PeerId] {
    static PEERS_CELL: std::sync::OnceLock<Vec<PeerId>> = std::sync::OnceLock::new();
    PEERS_CELL.get_or_init(|| {
        (0..PEERS)
            .map(|_| Keypair::generate().expect("keygen").public())
            .collect()
    })
}

pub fn run(s: Scenario) {
    let peers = peers();
    let len = u32::from(s.range_len % 16) + 1;
    // 127.1.0.1 plus an offset that stays within one /16 of valid last octets.
    let first = Ipv4Addr::new(127, 1, (s.range_start % 200) as u8, 1);
    let Ok(range) = AliasRange::new(first, len) else {
        return;
    };
    let capacity = usize::from(s.capacity % 16) + 1;
    let mut table = AliasTable::new(range, capacity, u32::from(s.cursor));
    let bound = capacity.min(len as usize);
    // Model: live sessions per identity, and the alias each live identity holds.
    let mut live = [0usize; PEERS];
    let mut held: HashMap<usize, Ipv4Addr> = HashMap::new();

    for event in s.events.iter().take(MAX_EVENTS) {
        match *event {
            Event::Acquire(i) => {
                let i = usize::from(i) % PEERS;
                let known = table.get(&peers[i]);
                match table.acquire(peers[i]) {
                    Ok(a) => {
                        if let Some(k) = known {
                            assert_eq!(a, k, "a known identity gets its alias back");
                        }
                        if live[i] > 0 {
                            assert_eq!(Some(&a), held.get(&i), "a live identity keeps its alias");
                        }
                        live[i] += 1;
                        held.insert(i, a);
                    }
                    Err(AliasError::Full { .. }) => {
                        assert!(known.is_none(), "a known identity was refused");
                        assert_eq!(table.len(), bound, "refused with room left");
                        assert!(
                            (0..PEERS)
                                .filter(|&j| table.get(&peers[j]).is_some())
                                .all(|j| live[j] > 0),
                            "refused while an idle entry could be evicted"
                        );
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            Event::Release(i) => {
                let i = usize::from(i) % PEERS;
                if live[i] > 0 {
                    table.release(&peers[i]);
                    live[i] -= 1;
                    if live[i] == 0 {
                        held.remove(&i);
                    }
                }
            }
        }
        assert!(table.len() <= bound);
        let mut seen = HashMap::new();
        for (j, p) in peers.iter().enumerate() {
            assert_eq!(table.is_live(p), live[j] > 0, "liveness of identity {j}");
            if let Some(a) = table.get(p) {
                assert_eq!(table.holder(a), Some(*p), "holder is the inverse of get");
                assert!(seen.insert(a, j).is_none(), "alias {a} held twice");
            }
            if live[j] > 0 {
                assert_eq!(table.get(p), held.get(&j).copied(), "a live alias moved");
            }
        }
    }
}
