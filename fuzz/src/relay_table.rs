//! Harness of the rendezvous [`RelayTable`]: small limits, then tickets issued for punches
//! between peers of a small pool, relay arrivals presenting issued, reused or made-up tokens
//! from a few sources, releases, give-ups and the clock moving forward, checked against a
//! model written from the type's documentation.
//!
//! After every event:
//! - pending pairs never exceed `max_pending`, sessions (held or spliced) never exceed
//!   `max_sessions`, held sides never exceed sessions;
//! - a token never issued, or already presented once, is `UnknownToken`; a token works once;
//! - the first arrival of a pair is `First` (its deadline the pair's expiry), the second
//!   (the other token, while the first is held) is `Second` for the same pair, with the
//!   session id and the two peers (requester first) the tickets were issued for;
//! - an arrival after the pair's expiry is `UnknownToken`;
//! - both tickets of a pair say the same `after`, within `[after_min, 2 s]`;
//! - after releasing every pair and moving past every expiry, nothing is pending, held or
//!   counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch_proto::relay::Refusal;
use punch_proto::PeerId;
use punch_rendezvous::gate::Prefix;
use punch_rendezvous::relay::{Arrival, PairId, RelayLimits, RelayTable, Token, MAX_RELAY_AFTER};

const MAX_EVENTS: usize = 512;
const PEERS: u8 = 5;
const SOURCES: u8 = 4;

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    max_pending: u8,
    max_sessions: u8,
    max_per_peer: u8,
    max_per_source: u8,
    pair_timeout_ms: u16,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    /// A punch between two peers of the pool; tokens drawn from the byte (mostly distinct).
    Issue(u8, u8, u8, u16, u16),
    /// An arrival presenting the pick-th token issued so far (or, high bit, a made-up one)
    /// from a source of the pool.
    Arrive(u8, u8),
    Release(u8),
    GiveUp(u8),
    AdvanceMillis(u16),
}

fn peer(i: u8) -> PeerId {
    let mut b = [0x40u8; 32];
    b[0] = 0x10 + i % PEERS;
    PeerId::from_bytes(b).expect("a valid test key")
}

fn source(i: u8) -> Prefix {
    Prefix::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1 + i % SOURCES)))
}

/// What the model remembers of an issued ticket.
#[derive(Debug, Clone)]
struct Issued {
    token: Token,
    /// Index of the other side's ticket in `issued`.
    partner: usize,
    session_id: u64,
    peers: [PeerId; 2],
    expires: Instant,
    used: bool,
}

pub fn run(s: Scenario) {
    let limits = RelayLimits {
        max_pending: usize::from(s.max_pending % 8),
        pair_timeout: Duration::from_millis(u64::from(s.pair_timeout_ms)),
        max_sessions: usize::from(s.max_sessions % 8),
        max_sessions_per_peer: usize::from(s.max_per_peer % 4),
        max_sessions_per_source: usize::from(s.max_per_source % 4),
        after_min: Duration::from_millis(20),
    };
    let mut table = RelayTable::new(limits.clone());
    let t0 = Instant::now();
    let mut now = t0;
    let mut issued: Vec<Issued> = Vec::new();
    // Pairs the table named (First/Second), for releases.
    let mut pairs: Vec<PairId> = Vec::new();
    // First arrivals still held, by pair: the ticket index of the held side.
    let mut held: HashMap<PairId, usize> = HashMap::new();
    let mut next_session = 1u64;
    for event in s.events.iter().take(MAX_EVENTS) {
        match *event {
            Event::Issue(a, b, seed, srtt_a, srtt_b) => {
                let (pa, pb) = (peer(a), peer(b));
                let mut ta = [seed; 16];
                ta[15] = issued.len() as u8;
                let mut tb = ta;
                tb[14] = 0xff;
                let session_id = next_session;
                next_session += 1;
                let srtts = [
                    Duration::from_millis(u64::from(srtt_a)),
                    Duration::from_millis(u64::from(srtt_b)),
                ];
                if let Some([x, y]) = table.issue(now, session_id, [pa, pb], [ta, tb], srtts) {
                    assert_eq!((x.token, y.token), (ta, tb));
                    assert_eq!(x.after, y.after, "both sides hear the same time");
                    assert!(x.after >= limits.after_min && x.after <= MAX_RELAY_AFTER.max(limits.after_min));
                    let i = issued.len();
                    let expires = now + limits.pair_timeout;
                    for (token, partner) in [(ta, i + 1), (tb, i)] {
                        issued.push(Issued {
                            token,
                            partner,
                            session_id,
                            peers: [pa, pb],
                            expires,
                            used: false,
                        });
                    }
                }
            }
            Event::Arrive(pick, src) => {
                if pick & 0x80 != 0 || issued.is_empty() {
                    let mut made_up = [0xeeu8; 16];
                    made_up[0] = pick;
                    if !issued.iter().any(|t| t.token == made_up) {
                        let r = table.arrive(now, &made_up, source(src));
                        assert_eq!(r.map_err(|e| e.reason), Err(Refusal::UnknownToken));
                    }
                    continue;
                }
                let i = usize::from(pick) % issued.len();
                let t = issued[i].clone();
                let r = table.arrive(now, &t.token, source(src));
                issued[i].used = true;
                if t.used || now >= t.expires {
                    assert_eq!(
                        r.as_ref().map_err(|e| e.reason).err(),
                        Some(Refusal::UnknownToken),
                        "a used or expired token: {r:?}"
                    );
                    continue;
                }
                match r {
                    Ok(Arrival::First {
                        pair,
                        session_id,
                        deadline,
                    }) => {
                        assert!(!issued[t.partner].used, "first only while the partner never came");
                        assert_eq!(session_id, t.session_id);
                        assert_eq!(deadline, t.expires);
                        held.insert(pair, i);
                        pairs.push(pair);
                    }
                    Ok(Arrival::Second {
                        pair,
                        session_id,
                        peers,
                    }) => {
                        assert_eq!(held.remove(&pair), Some(t.partner), "second after its partner was held");
                        assert_eq!(session_id, t.session_id);
                        assert_eq!(peers, t.peers, "requester first");
                    }
                    Err(refused) => {
                        assert_ne!(refused.reason, Refusal::UnknownToken, "a fresh token was unknown");
                        if let Some(p) = refused.abandoned {
                            assert!(held.remove(&p).is_some(), "only a held pair is abandoned");
                        }
                        // A refused pair is dropped whole: its other token is gone too.
                        issued[t.partner].used = true;
                    }
                }
            }
            Event::Release(pick) | Event::GiveUp(pick) if !pairs.is_empty() => {
                let pair = pairs[usize::from(pick) % pairs.len()];
                if let Some(i) = held.remove(&pair) {
                    let partner = issued[i].partner;
                    issued[partner].used = true;
                }
                if matches!(event, Event::Release(_)) {
                    table.release(pair);
                } else {
                    table.give_up(pair);
                }
            }
            Event::Release(_) | Event::GiveUp(_) => {}
            Event::AdvanceMillis(ms) => {
                now += Duration::from_millis(u64::from(ms));
                table.prune(now);
                // Expired pairs are dropped whole, held sides included.
                held.retain(|_, i| issued[*i].expires > now);
            }
        }
        assert!(table.pending() <= limits.max_pending, "pending over its bound");
        assert!(table.sessions() <= limits.max_sessions, "sessions over their bound");
        assert!(table.held() <= table.sessions());
    }
    for pair in pairs {
        table.release(pair);
    }
    table.prune(now + limits.pair_timeout + Duration::from_secs(1));
    assert_eq!(
        (table.pending(), table.sessions(), table.held()),
        (0, 0, 0),
        "everything released"
    );
}
