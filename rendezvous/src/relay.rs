//! The relay's decisions: which punches get relay tickets, which relay connections are paired,
//! and how many relayed sessions exist. A pure table fed `now`; the server's relay driver
//! (`server/relay.rs`) does the I/O.
//!
//! ```text
//! Connect from A to B    registry makes the two Offers; [`attach_tickets`] issues one token
//!                        per side (a pending pair, expiring after `pair_timeout`)
//! A's relay connection   HELLO(token A) -> arrive: First (the pair's session slots are now
//!                        reserved; A's connection is held, nothing read)
//! B's relay connection   HELLO(token B) -> arrive: Second (the pair is active: splice)
//! end                    release(pair): the slots are free again
//! ```
//!
//! A token works once: any arrival removes it. A pair whose first side came and whose second
//! did not by its expiry is released by [`RelayTable::prune`] (the driver tells the waiting
//! side `PeerAbsent`). Limits on relayed sessions (total, per identity, per source) are
//! checked when the first side arrives, for the total, its own peer and its source, and the
//! slots are reserved then, so a held connection already counts: held and spliced connections
//! together are at most two per allowed session. The second side's peer and source are
//! checked on its arrival (a held side cannot take its partner's share: a peer punching to a
//! victim and holding first sides spends its own slots, not the victim's); if either is over
//! its limit, the pair is dropped and both sides are refused with that reason.
//!
//! Memory: at most `max_pending` pairs not yet active (each two token keys and a pair, about
//! 200 bytes); when full, offers go out without a ticket. Active pairs are bounded by
//! `max_sessions`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use punch_proto::message::{RelayTicket, ServerMsg, RELAY_TOKEN_LEN};
use punch_proto::relay::Refusal;
use punch_proto::PeerId;

use crate::gate::Prefix;
use crate::registry::Action;

/// A relay token: names one side of one punch.
pub type Token = [u8; RELAY_TOKEN_LEN];

/// Names a pair in the table (never reused while the table lives).
pub type PairId = u64;

/// The longest `after` a ticket says: beyond it a peer waits longer for the relay than any
/// real path explains, and a peer lying about its RTT would delay the fallback of its partner.
pub const MAX_RELAY_AFTER: Duration = Duration::from_secs(2);

/// When a client should open its relay connection, measured from the dial moment, if no direct
/// stream has authenticated by then: `srtt_a + srtt_b`, clamped to `[min, 2 s]`.
///
/// Why: the direct punch needs about two peer RTTs after the dial moment (the SYNs cross and
/// the SYN-ACKs come back, then Noise KK's messages 1 and 2); the relay path needs one server
/// RTT to connect, then the same KK through the server, whose path is about `srtt_a/2 +
/// srtt_b/2` each way. The peer RTT is at most about `srtt_a + srtt_b` (the path through the
/// server), so starting the relay that late lets a direct path that works at the first SYN win,
/// while a pair that must be relayed is ready about three server RTTs after the dial moment.
/// Measured in the NAT lab at 50 ms per link (server RTT ~100 ms, peer RTT ~200 ms): with half
/// the larger SRTT instead, the relay won every pair that can punch by ~50 ms (a TCP connect to
/// the server is quicker than a simultaneous open) and the session moved to direct 50 ms later;
/// with `srtt_a + srtt_b` those pairs go direct at once, and relayed pairs are ready in well
/// under a second. `min` keeps loopback and LAN peers (SRTT near zero) from racing the relay
/// against a punch that has not had a scheduler slice.
pub fn relay_after(srtt_a: Duration, srtt_b: Duration, min: Duration) -> Duration {
    (srtt_a + srtt_b).clamp(min, MAX_RELAY_AFTER.max(min))
}

/// Limits of a [`RelayTable`] (the server's [`crate::Config`] documents each default).
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Pairs issued and not yet active at most.
    pub max_pending: usize,
    /// How long a pair's tokens stay valid after they are issued.
    pub pair_timeout: Duration,
    /// Relayed sessions (a held first side counts) at most.
    pub max_sessions: usize,
    /// Relayed sessions one identity is part of, at most.
    pub max_sessions_per_peer: usize,
    /// Relayed sessions with a side from one source (IPv4 address, IPv6 /64), at most.
    pub max_sessions_per_source: usize,
    /// The smallest `after` a ticket says.
    pub after_min: Duration,
}

/// One side of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The requester (the punch's initiator).
    A,
    /// The target.
    B,
}

impl Side {
    /// The side's place in a pair's `[requester, target]` arrays.
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What a relay connection's HELLO leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The first side of its pair: hold the connection until the second arrives or
    /// `deadline` passes (then refuse it with `PeerAbsent` and [`RelayTable::release`] it).
    First {
        pair: PairId,
        session_id: u64,
        deadline: Instant,
    },
    /// The second side: splice it to the held first side; [`RelayTable::release`] at the end.
    Second {
        pair: PairId,
        session_id: u64,
        /// The two peers, requester first.
        peers: [PeerId; 2],
    },
}

/// A refused relay connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub reason: Refusal,
    /// A pair whose first side is held and must be refused with the same reason (the pair was
    /// dropped because its second side could not be admitted).
    pub abandoned: Option<PairId>,
}

impl From<Refusal> for Refused {
    fn from(reason: Refusal) -> Self {
        Self {
            reason,
            abandoned: None,
        }
    }
}

#[derive(Debug)]
struct Pair {
    session_id: u64,
    peers: [PeerId; 2],
    tokens: [Token; 2],
    expires: Instant,
    state: PairState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairState {
    /// Tokens issued, nobody came yet.
    Issued,
    /// One side (`side`'s peer) came from `source` and is held; a session slot, its peer's
    /// slot and its source's slot are reserved.
    Waiting { source: Prefix, side: Side },
    /// Both came; slots reserved (a second source only if it differs from the first).
    Active {
        first: Prefix,
        second: Option<Prefix>,
    },
}

/// Counters, exported by the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Pairs issued (offers that carried tickets).
    pub issued: u64,
    /// Offers that went out without a ticket because the pending table was full.
    pub pending_full: u64,
    /// Sessions that became active (both sides arrived).
    pub started: u64,
    pub refused_unknown_token: u64,
    pub refused_full: u64,
    pub refused_peer_limit: u64,
    pub refused_source_limit: u64,
    /// First sides whose partner never came.
    pub peer_absent: u64,
}

/// Pending pairs by token, and the counts behind the session limits.
#[derive(Debug)]
pub struct RelayTable {
    limits: RelayLimits,
    tokens: HashMap<Token, (PairId, Side)>,
    pairs: HashMap<PairId, Pair>,
    /// Pairs in order of expiry (every pair lives `pair_timeout`, so issue order is expiry
    /// order); entries of released or activated pairs are skipped when met.
    expiry: VecDeque<(Instant, PairId)>,
    /// Pairs not yet active (issued or waiting).
    pending: usize,
    /// Pairs holding slots (waiting or active).
    sessions: usize,
    /// Pairs whose first side is held (waiting).
    held: usize,
    per_peer: HashMap<PeerId, usize>,
    per_source: HashMap<Prefix, usize>,
    next_pair: PairId,
    stats: RelayStats,
}

fn up<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    *map.entry(key).or_insert(0) += 1;
}

fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl RelayTable {
    pub fn new(limits: RelayLimits) -> Self {
        Self {
            limits,
            tokens: HashMap::new(),
            pairs: HashMap::new(),
            expiry: VecDeque::new(),
            pending: 0,
            sessions: 0,
            held: 0,
            per_peer: HashMap::new(),
            per_source: HashMap::new(),
            next_pair: 1,
            stats: RelayStats::default(),
        }
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Pairs not yet active.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Sessions holding slots: a side held waiting, or both spliced.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Pairs whose first side is held, waiting for the second.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Issues a pair for punch `session_id` between `peers` (requester first) with the two
    /// `tokens` (drawn by the caller from a CSPRNG). Returns the two tickets, or `None` when the
    /// table holds its maximum of pending pairs (the offers then go out without one).
    pub fn issue(
        &mut self,
        now: Instant,
        session_id: u64,
        peers: [PeerId; 2],
        tokens: [Token; 2],
        srtts: [Duration; 2],
    ) -> Option<[RelayTicket; 2]> {
        self.prune(now);
        if self.pending >= self.limits.max_pending
            || tokens[0] == tokens[1]
            || tokens.iter().any(|t| self.tokens.contains_key(t))
        {
            // A token collision (2^-128) is treated as full: no ticket rather than a clash.
            self.stats.pending_full += 1;
            return None;
        }
        let pair = self.next_pair;
        self.next_pair += 1;
        let expires = now + self.limits.pair_timeout;
        self.tokens.insert(tokens[0], (pair, Side::A));
        self.tokens.insert(tokens[1], (pair, Side::B));
        self.pairs.insert(
            pair,
            Pair {
                session_id,
                peers,
                tokens,
                expires,
                state: PairState::Issued,
            },
        );
        self.expiry.push_back((expires, pair));
        self.pending += 1;
        self.stats.issued += 1;
        let after = relay_after(srtts[0], srtts[1], self.limits.after_min);
        Some(tokens.map(|token| RelayTicket { token, after }))
    }

    /// A relay connection from `source` presented `token` at `now`.
    pub fn arrive(
        &mut self,
        now: Instant,
        token: &Token,
        source: Prefix,
    ) -> Result<Arrival, Refused> {
        self.prune(now);
        let Some((id, side)) = self.tokens.remove(token) else {
            self.stats.refused_unknown_token += 1;
            return Err(Refusal::UnknownToken.into());
        };
        let limits = &self.limits;
        let pair = self
            .pairs
            .get_mut(&id)
            .expect("a token's pair is in the table");
        match pair.state {
            PairState::Issued => {
                let refusal = if self.sessions >= limits.max_sessions {
                    Some(Refusal::Full)
                } else if self
                    .per_peer
                    .get(&pair.peers[side.index()])
                    .copied()
                    .unwrap_or(0)
                    >= limits.max_sessions_per_peer
                {
                    Some(Refusal::PeerLimit)
                } else if self.per_source.get(&source).copied().unwrap_or(0)
                    >= limits.max_sessions_per_source
                {
                    Some(Refusal::SourceLimit)
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    // The other token must not start a pair that cannot be admitted either.
                    self.drop_pair(id);
                    self.count_refusal(reason);
                    return Err(reason.into());
                }
                pair.state = PairState::Waiting { source, side };
                let (session_id, deadline) = (pair.session_id, pair.expires);
                self.sessions += 1;
                self.held += 1;
                up(&mut self.per_peer, pair.peers[side.index()]);
                up(&mut self.per_source, source);
                Ok(Arrival::First {
                    pair: id,
                    session_id,
                    deadline,
                })
            }
            PairState::Waiting {
                source: first,
                side: held,
            } => {
                // Only now does the pair count for the second peer: a held side, which its
                // partner has not vouched for, cannot take the partner's slots.
                let peer = pair.peers[held.other().index()];
                let second = (source != first).then_some(source);
                let refusal = if self.per_peer.get(&peer).copied().unwrap_or(0)
                    >= limits.max_sessions_per_peer
                {
                    Some(Refusal::PeerLimit)
                } else if second.is_some_and(|s| {
                    self.per_source.get(&s).copied().unwrap_or(0) >= limits.max_sessions_per_source
                }) {
                    Some(Refusal::SourceLimit)
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    self.release(id);
                    self.count_refusal(reason);
                    return Err(Refused {
                        reason,
                        abandoned: Some(id),
                    });
                }
                pair.state = PairState::Active { first, second };
                let (session_id, peers) = (pair.session_id, pair.peers);
                up(&mut self.per_peer, peer);
                if let Some(s) = second {
                    up(&mut self.per_source, s);
                }
                self.pending -= 1;
                self.held -= 1;
                self.stats.started += 1;
                Ok(Arrival::Second {
                    pair: id,
                    session_id,
                    peers,
                })
            }
            // Both tokens of an active pair were used, so none can name it; refused all the same.
            PairState::Active { .. } => {
                self.stats.refused_unknown_token += 1;
                Err(Refusal::UnknownToken.into())
            }
        }
    }

    /// Ends a pair whatever its state (a held side given up, a session ended), freeing its
    /// slots; a pair already gone is ignored.
    pub fn release(&mut self, pair: PairId) {
        self.drop_pair(pair);
    }

    /// The held first side of `pair` gave up waiting (its deadline passed): counted as
    /// `PeerAbsent` if the pair was still waiting, and released.
    pub fn give_up(&mut self, pair: PairId) {
        if let Some(Pair {
            state: PairState::Waiting { .. },
            ..
        }) = self.pairs.get(&pair)
        {
            self.stats.peer_absent += 1;
        }
        self.drop_pair(pair);
    }

    /// Drops the pairs whose tokens expired by `now`; held first sides among them are counted
    /// as `PeerAbsent` (their driver refuses them on its own timer, at the same deadline).
    pub fn prune(&mut self, now: Instant) {
        while let Some(&(expires, id)) = self.expiry.front() {
            if expires > now {
                break;
            }
            self.expiry.pop_front();
            match self.pairs.get(&id).map(|p| p.state) {
                Some(PairState::Issued) => self.drop_pair(id),
                Some(PairState::Waiting { .. }) => {
                    self.stats.peer_absent += 1;
                    self.drop_pair(id);
                }
                Some(PairState::Active { .. }) | None => {}
            }
        }
    }

    fn count_refusal(&mut self, reason: Refusal) {
        match reason {
            Refusal::Full => self.stats.refused_full += 1,
            Refusal::PeerLimit => self.stats.refused_peer_limit += 1,
            Refusal::SourceLimit => self.stats.refused_source_limit += 1,
            _ => {}
        }
    }

    fn drop_pair(&mut self, id: PairId) {
        let Some(pair) = self.pairs.remove(&id) else {
            return;
        };
        for t in &pair.tokens {
            self.tokens.remove(t);
        }
        let (first, second) = match pair.state {
            PairState::Issued => {
                self.pending -= 1;
                return;
            }
            PairState::Waiting { source, side } => {
                self.pending -= 1;
                self.held -= 1;
                down(&mut self.per_peer, &pair.peers[side.index()]);
                (source, None)
            }
            PairState::Active { first, second } => {
                for p in &pair.peers {
                    down(&mut self.per_peer, p);
                }
                (first, second)
            }
        };
        self.sessions -= 1;
        down(&mut self.per_source, &first);
        if let Some(s) = second {
            down(&mut self.per_source, &s);
        }
    }
}

/// Gives the two Offers of a punch (as the registry made them) a ticket each, when the table
/// has room. `tokens` draws a fresh token (the server passes a CSPRNG); `srtt` is a peer's
/// control-connection smoothed RTT. Actions that are not a pair of offers are left alone.
pub fn attach_tickets(
    table: &mut RelayTable,
    now: Instant,
    actions: &mut [Action],
    mut tokens: impl FnMut() -> Token,
    srtt: impl Fn(&PeerId) -> Option<Duration>,
) {
    let [Action::Send {
        msg: ServerMsg::Offer(to_a),
        ..
    }, Action::Send {
        msg: ServerMsg::Offer(to_b),
        ..
    }] = actions
    else {
        return;
    };
    if to_a.session_id != to_b.session_id {
        return;
    }
    // The requester's offer names the target, and the target's names the requester.
    let peers = [to_b.peer, to_a.peer];
    let srtts = peers.map(|p| srtt(&p).unwrap_or_default());
    let pair_tokens = [tokens(), tokens()];
    if let Some([ta, tb]) = table.issue(now, to_a.session_id, peers, pair_tokens, srtts) {
        to_a.relay = Some(ta);
        to_b.relay = Some(tb);
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
