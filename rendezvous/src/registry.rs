//! The registry and punch coordinator: a pure state machine fed `(now, event)`.
//!
//! It knows who is registered (identity, observed address, local addresses, RTT, whether it
//! accepts punches) and turns a punch request into two matching offers, or a typed error for
//! the requester. No sockets and no clock here: the server's connection drivers call in with
//! `now` and carry out the returned [`Action`]s in order.
//!
//! Dial scheduling: the server sends both offers at the same instant `now`. Offer X reaches its
//! peer after that peer's one-way delay `owd_x` (estimated as SRTT / 2). Both should dial at
//! server time `T = now + max(owd_a, owd_b) + margin`, so peer X waits `T - now - owd_x` after
//! receiving its offer. Both SYNs then leave at the same moment, whatever the two path lengths.
//! A peer controls its own SRTT (it can answer pings late), so each estimate is capped at
//! [`MAX_OWD`]: one side's claimed delay cannot hold the other's dial back by more than that.
//!
//! Local addresses. A peer's claimed local addresses are not verified, and its partner dials
//! every one it is given, so they are a lever for making others dial hosts the claimant
//! chooses. They are passed on only to a partner seen from the same public IP (both behind
//! one NAT, the only case where a LAN address can be the better path), only private ones
//! ([`is_dialable_local`]), and at most [`MAX_LOCAL_CANDIDATES`].
//!
//! Session ids are random (from an RNG the registry owns, seeded at construction so tests and
//! the simulator stay deterministic), never 0, so they reveal neither how many sessions the
//! server has coordinated nor which id comes next.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use punch_proto::message::{ErrorCode, ErrorReply, Offer, Register, ServerMsg, PROTOCOL_VERSION};
use punch_proto::{PeerId, Role};

use crate::limiter::TokenBucket;

/// Identifies one control connection (a registration of an identity may move between them).
pub type ConnId = u64;

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a message on a connection.
    Send { conn: ConnId, msg: ServerMsg },
    /// Close a connection (replaced by a newer registration of the same identity).
    Close { conn: ConnId, reason: &'static str },
}

/// Limits the registry enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_peers: usize,
    pub punch_requests_per_minute: u32,
    pub offers_per_target_per_minute: u32,
    pub dial_margin: Duration,
}

/// Counters, exported by the binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub registrations: u64,
    pub replaced: u64,
    pub offers: u64,
    pub refused: u64,
}

#[derive(Debug)]
struct Peer {
    conn: ConnId,
    observed: SocketAddr,
    local: Vec<SocketAddr>,
    accept_inbound: bool,
    srtt: Duration,
}

/// Registered peers and the punch coordinator.
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    peers: HashMap<PeerId, Peer>,
    request_buckets: HashMap<PeerId, TokenBucket>,
    offer_buckets: HashMap<PeerId, TokenBucket>,
    sessions: StdRng,
    stats: Stats,
}

const MINUTE: Duration = Duration::from_secs(60);

/// The largest one-way delay the dial schedule believes. Real paths stay below it (a
/// geostationary satellite hop is about 300 ms one way); a larger SRTT is a slow or lying
/// peer, and believing it would make the *other* peer wait: a requester answering pings late
/// could hold the target's dial back by seconds. With the cap, no peer waits longer than
/// `MAX_OWD + dial_margin` after its offer arrives.
pub const MAX_OWD: Duration = Duration::from_millis(500);

/// The most claimed local addresses passed on in one offer. A host behind one NAT has one or
/// two LAN addresses (an interface per family, sometimes a VPN or container bridge); four
/// covers that, while bounding how many hosts on the partner's LAN one offer makes it dial.
pub const MAX_LOCAL_CANDIDATES: usize = 4;

impl Registry {
    /// `session_seed` seeds the RNG that draws session ids; the server seeds it randomly, so
    /// ids are unpredictable and ids from before a restart do not repeat (a stale punched
    /// stream then fails the Noise prologue). Tests pass a fixed seed for determinism.
    pub fn new(limits: Limits, session_seed: u64) -> Self {
        Self {
            limits,
            peers: HashMap::new(),
            request_buckets: HashMap::new(),
            offer_buckets: HashMap::new(),
            sessions: StdRng::seed_from_u64(session_seed),
            stats: Stats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether `peer` is registered on `conn`.
    pub fn is_registered(&self, peer: &PeerId, conn: ConnId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.conn == conn)
    }

    /// Registers `peer` on `conn`, seen from `observed`, replacing an older registration of the
    /// same identity (whose connection is closed). Returns the registration error to send, if any.
    pub fn register(
        &mut self,
        conn: ConnId,
        peer: PeerId,
        observed: SocketAddr,
        register: &Register,
        rtt: Duration,
    ) -> Result<Vec<Action>, ErrorCode> {
        if register.version != PROTOCOL_VERSION {
            return Err(ErrorCode::UnsupportedVersion);
        }
        let mut actions = Vec::new();
        if let Some(old) = self.peers.get(&peer) {
            actions.push(Action::Close {
                conn: old.conn,
                reason: "replaced by a newer registration of the same identity",
            });
            self.stats.replaced += 1;
        } else if self.peers.len() >= self.limits.max_peers {
            return Err(ErrorCode::ServerFull);
        }
        let local = register
            .local_addrs
            .iter()
            .copied()
            .filter(|a| is_dialable_local(a, &observed))
            .take(MAX_LOCAL_CANDIDATES)
            .collect();
        self.peers.insert(
            peer,
            Peer {
                conn,
                observed,
                local,
                accept_inbound: register.accept_inbound,
                srtt: rtt,
            },
        );
        self.stats.registrations += 1;
        Ok(actions)
    }

    /// Forgets `peer` if it is still registered on `conn` (a replaced registration is not touched).
    pub fn unregister(&mut self, peer: &PeerId, conn: ConnId) {
        if self.is_registered(peer, conn) {
            self.peers.remove(peer);
        }
    }

    /// Feeds an RTT sample (smoothed as TCP does: srtt += (sample - srtt) / 8).
    pub fn rtt_sample(&mut self, peer: &PeerId, conn: ConnId, sample: Duration) {
        if let Some(p) = self.peers.get_mut(peer).filter(|p| p.conn == conn) {
            let srtt = p.srtt.as_secs_f64();
            p.srtt = Duration::from_secs_f64(srtt + (sample.as_secs_f64() - srtt) / 8.0);
        }
    }

    /// The smoothed RTT of a registered peer.
    pub fn srtt(&self, peer: &PeerId) -> Option<Duration> {
        self.peers.get(peer).map(|p| p.srtt)
    }

    /// Handles a punch request from `from` (registered on `conn`) to `target`.
    ///
    /// `can_send(conn)` says whether that connection's outbound queue takes a message now.
    /// Both offers or neither: when either side's queue is full (it is not reading its
    /// control connection), the requester gets `PeerOffline` instead, because one side dialing
    /// alone can only fail. The target's offer budget is not charged then.
    pub fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: PeerId,
        request_id: u64,
        target: PeerId,
        can_send: impl Fn(ConnId) -> bool,
    ) -> Vec<Action> {
        match self.try_connect(now, conn, from, request_id, target, can_send) {
            Ok(actions) => actions,
            Err((code, detail, retry_after)) => {
                self.stats.refused += 1;
                vec![Action::Send {
                    conn,
                    msg: ServerMsg::Error(ErrorReply {
                        request_id,
                        code,
                        detail,
                        retry_after,
                    }),
                }]
            }
        }
    }

    fn try_connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: PeerId,
        request_id: u64,
        target: PeerId,
        can_send: impl Fn(ConnId) -> bool,
    ) -> Result<Vec<Action>, (ErrorCode, String, Option<Duration>)> {
        // A connection replaced by a newer registration of the same identity may still send a
        // request before it reads its Close: it must not act for the new connection.
        if !self.is_registered(&from, conn) {
            return Err((
                ErrorCode::BadRequest,
                "this connection's registration was replaced".into(),
                None,
            ));
        }
        let limits = &self.limits;
        self.request_buckets
            .entry(from)
            .or_insert_with(|| TokenBucket::new(limits.punch_requests_per_minute, MINUTE, now))
            .try_take(now)
            .map_err(|wait| {
                (
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} punch requests per minute",
                        limits.punch_requests_per_minute
                    ),
                    Some(wait),
                )
            })?;
        if from == target {
            return Err((
                ErrorCode::SelfConnect,
                "cannot punch to yourself".into(),
                None,
            ));
        }
        let a = self.peers.get(&from).ok_or((
            ErrorCode::BadRequest,
            "requester is not registered".into(),
            None,
        ))?;
        debug_assert_eq!(a.conn, conn);
        let b = self.peers.get(&target).ok_or_else(|| {
            (
                ErrorCode::PeerOffline,
                format!("peer {} is not registered", target.short()),
                None,
            )
        })?;
        if !b.accept_inbound {
            return Err((
                ErrorCode::PeerRefuses,
                format!("peer {} does not accept inbound punches", target.short()),
                None,
            ));
        }
        if !can_send(a.conn) || !can_send(b.conn) {
            return Err((
                ErrorCode::PeerOffline,
                "peer is not reading its control connection".into(),
                None,
            ));
        }
        self.offer_buckets
            .entry(target)
            .or_insert_with(|| TokenBucket::new(limits.offers_per_target_per_minute, MINUTE, now))
            .try_take(now)
            .map_err(|wait| {
                (
                    ErrorCode::RateLimited,
                    format!("peer {} receives too many punch requests", target.short()),
                    Some(wait),
                )
            })?;

        let (owd_a, owd_b) = (owd(a.srtt), owd(b.srtt));
        let at = owd_a.max(owd_b) + limits.dial_margin;
        let session_id = next_session_id(&mut self.sessions);
        self.stats.offers += 1;
        let (a_local, b_local) = local_candidates(a, b);
        Ok(vec![
            Action::Send {
                conn: a.conn,
                msg: ServerMsg::Offer(Offer {
                    session_id,
                    request_id,
                    peer: target,
                    peer_observed: b.observed,
                    peer_local: b_local,
                    role: Role::Initiator,
                    dial_delay: at - owd_a,
                }),
            },
            Action::Send {
                conn: b.conn,
                msg: ServerMsg::Offer(Offer {
                    session_id,
                    request_id: 0,
                    peer: from,
                    peer_observed: a.observed,
                    peer_local: a_local,
                    role: Role::Responder,
                    dial_delay: at - owd_b,
                }),
            },
        ])
    }

    /// Forgets rate-limit state of identities that are idle (full bucket) and gone, so the
    /// maps stay bounded by the live peers plus those limited in the last minute.
    pub fn prune(&mut self, now: Instant) {
        let peers = &self.peers;
        self.request_buckets
            .retain(|id, b| peers.contains_key(id) || !b.is_full(now));
        self.offer_buckets
            .retain(|id, b| peers.contains_key(id) || !b.is_full(now));
    }
}

/// The local addresses of `a` and `b` their partners get: both lists when the two were seen
/// from the same public IP (one NAT), none otherwise (see the module doc).
fn local_candidates(a: &Peer, b: &Peer) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    if a.observed.ip() == b.observed.ip() {
        (a.local.clone(), b.local.clone())
    } else {
        (Vec::new(), Vec::new())
    }
}

/// The one-way delay estimate used for dial scheduling: half the SRTT, at most [`MAX_OWD`].
pub fn owd(srtt: Duration) -> Duration {
    (srtt / 2).min(MAX_OWD)
}

/// A random session id, never 0 (a client's `Offer` with id 0 would look unset in logs and
/// tables). Uniqueness among live sessions is probabilistic: with n sessions alive the chance
/// that any two share an id is below n^2 / 2^65 (about 3e-8 for a million), and a shared id
/// only matters for two sessions of the same pair of peers, whose Noise prologues then match.
fn next_session_id(rng: &mut StdRng) -> u64 {
    loop {
        let id: u64 = rng.gen();
        if id != 0 {
            return id;
        }
    }
}

/// Which claimed local addresses the server passes on. A claimed address is not verified, so
/// passing any address would let a peer make others dial third parties (reflection). Only
/// private-network addresses (RFC 1918, RFC 6598 shared space, IPv6 ULA) are passed; loopback
/// only when the peer itself came from loopback (tests on one machine).
pub fn is_dialable_local(addr: &SocketAddr, observed: &SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (v4.is_loopback() && observed.ip().is_loopback())
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.is_loopback() && observed.ip().is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_peers: 3,
            punch_requests_per_minute: 2,
            offers_per_target_per_minute: 3,
            dial_margin: Duration::from_millis(50),
        }
    }

    fn id(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32]).unwrap()
    }

    fn reg(accept: bool) -> Register {
        Register {
            version: PROTOCOL_VERSION,
            local_addrs: vec![
                "192.168.1.10:4000".parse().unwrap(),
                "198.51.100.9:22".parse().unwrap(),
            ],
            accept_inbound: accept,
        }
    }

    /// Peers 1, 2 and 3, on connections 1, 2 and 3, all accepting and seen from one address.
    fn three_peers() -> Registry {
        let mut r = Registry::new(limits(), 10);
        let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        for i in 1..=3 {
            r.register(u64::from(i), id(i), obs, &reg(true), Duration::ZERO)
                .unwrap();
        }
        r
    }

    fn error_code(actions: &[Action]) -> Option<ErrorCode> {
        match actions {
            [Action::Send {
                msg: ServerMsg::Error(e),
                ..
            }] => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn offers_are_consistent_and_synchronized() {
        let mut r = Registry::new(limits(), 10);
        let a_obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        let b_obs: SocketAddr = "203.0.113.2:2000".parse().unwrap();
        r.register(1, id(1), a_obs, &reg(true), Duration::from_millis(20))
            .unwrap();
        r.register(2, id(2), b_obs, &reg(true), Duration::from_millis(200))
            .unwrap();
        let now = Instant::now();
        let actions = r.connect(now, 1, id(1), 42, id(2), |_| true);
        let [Action::Send {
            conn: 1,
            msg: ServerMsg::Offer(oa),
        }, Action::Send {
            conn: 2,
            msg: ServerMsg::Offer(ob),
        }] = &actions[..]
        else {
            panic!("expected two offers, got {actions:?}");
        };
        assert_eq!(oa.session_id, ob.session_id);
        assert_eq!((oa.request_id, ob.request_id), (42, 0));
        assert_eq!((oa.peer, ob.peer), (id(2), id(1)));
        assert_eq!((oa.peer_observed, ob.peer_observed), (b_obs, a_obs));
        assert_eq!((oa.role, ob.role), (Role::Initiator, Role::Responder));
        // Seen from different public IPs: no local address is passed on either way.
        assert!(oa.peer_local.is_empty() && ob.peer_local.is_empty());
        // Both dial at the same server time: receive time (owd) + delay is equal.
        assert_eq!(
            Duration::from_millis(10) + oa.dial_delay,
            Duration::from_millis(100) + ob.dial_delay
        );
        assert_eq!(ob.dial_delay, Duration::from_millis(50));
    }

    fn offers(actions: &[Action]) -> (&Offer, &Offer) {
        match actions {
            [Action::Send {
                msg: ServerMsg::Offer(oa),
                ..
            }, Action::Send {
                msg: ServerMsg::Offer(ob),
                ..
            }] => (oa, ob),
            _ => panic!("expected two offers, got {actions:?}"),
        }
    }

    #[test]
    fn a_claimed_rtt_cannot_delay_the_other_dial_beyond_the_cap() {
        let mut r = Registry::new(limits(), 10);
        let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        // The requester answers pings 4.6 s late; the target is 20 ms away.
        r.register(1, id(1), obs, &reg(true), Duration::from_millis(4600))
            .unwrap();
        r.register(2, id(2), obs, &reg(true), Duration::from_millis(20))
            .unwrap();
        let actions = r.connect(Instant::now(), 1, id(1), 1, id(2), |_| true);
        let (oa, ob) = offers(&actions);
        let margin = limits().dial_margin;
        assert_eq!(ob.dial_delay, MAX_OWD + margin - Duration::from_millis(10));
        assert_eq!(oa.dial_delay, margin);
        assert!(ob.dial_delay <= MAX_OWD + margin);
        assert_eq!(owd(Duration::from_secs(60)), MAX_OWD);
        assert_eq!(owd(Duration::from_millis(300)), Duration::from_millis(150));
    }

    #[test]
    fn session_ids_are_random_non_zero_and_distinct() {
        let mut r = three_peers();
        let now = Instant::now();
        let mut ids = Vec::new();
        for (t, from) in [(0, 1), (0, 3), (1, 1), (1, 3)] {
            let at = now + MINUTE * t;
            let actions = r.connect(at, u64::from(from), id(from), 1, id(2), |_| true);
            ids.push(offers(&actions).0.session_id);
        }
        assert!(ids.iter().all(|&i| i != 0));
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "{ids:?}");
        // Not a sequence: consecutive ids do not differ by a constant step.
        let steps: Vec<u64> = ids.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(steps.windows(2).any(|s| s[0] != s[1]), "{ids:?}");
        // Deterministic for a seed, different across seeds.
        let first = |seed| next_session_id(&mut StdRng::seed_from_u64(seed));
        assert_eq!(first(10), ids[0]);
        assert_ne!(first(10), first(11));
    }

    #[test]
    fn typed_errors() {
        let mut r = Registry::new(limits(), 10);
        let now = Instant::now();
        let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        r.register(1, id(1), obs, &reg(true), Duration::ZERO)
            .unwrap();
        r.register(2, id(2), obs, &reg(false), Duration::ZERO)
            .unwrap();
        assert_eq!(
            error_code(&r.connect(now, 1, id(1), 1, id(9), |_| true)),
            Some(ErrorCode::PeerOffline)
        );
        assert_eq!(
            error_code(&r.connect(now, 1, id(1), 2, id(2), |_| true)),
            Some(ErrorCode::PeerRefuses)
        );
        assert_eq!(
            error_code(&r.connect(now, 1, id(1), 3, id(1), |_| true)),
            Some(ErrorCode::RateLimited)
        );
        assert_eq!(
            error_code(&r.connect(now + MINUTE, 2, id(2), 1, id(2), |_| true)),
            Some(ErrorCode::SelfConnect)
        );
        assert_eq!(r.stats().refused, 4);
    }

    #[test]
    fn offers_per_target_are_limited() {
        let mut r = three_peers();
        let now = Instant::now();
        // Peers 1 and 3 each ask twice for peer 2: the fourth offer exceeds 3 per minute.
        assert_eq!(r.connect(now, 1, id(1), 1, id(2), |_| true).len(), 2);
        assert_eq!(r.connect(now, 1, id(1), 2, id(2), |_| true).len(), 2);
        assert_eq!(r.connect(now, 3, id(3), 3, id(2), |_| true).len(), 2);
        assert_eq!(
            error_code(&r.connect(now, 3, id(3), 4, id(2), |_| true)),
            Some(ErrorCode::RateLimited)
        );
    }

    #[test]
    fn both_offers_or_neither() {
        let mut r = three_peers();
        let now = Instant::now();
        // Peer 2's queue is full: peer 1 gets one error, and peer 2 no offer.
        let actions = r.connect(now, 1, id(1), 7, id(2), |c| c != 2);
        let [Action::Send {
            conn: 1,
            msg: ServerMsg::Error(e),
        }] = &actions[..]
        else {
            panic!("expected one error to the requester, got {actions:?}");
        };
        assert_eq!((e.request_id, e.code), (7, ErrorCode::PeerOffline));
        assert_eq!(r.stats().offers, 0);
        // The refusal did not use peer 2's offer budget (3 a minute): three more offers fit.
        assert_eq!(r.connect(now, 3, id(3), 1, id(2), |_| true).len(), 2);
        assert_eq!(r.connect(now, 3, id(3), 2, id(2), |_| true).len(), 2);
        assert_eq!(r.connect(now, 1, id(1), 8, id(2), |_| true).len(), 2);
    }

    #[test]
    fn replacement_and_capacity() {
        let mut r = three_peers();
        let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        assert_eq!(
            r.register(4, id(4), obs, &reg(true), Duration::ZERO),
            Err(ErrorCode::ServerFull)
        );
        // Same identity on a new connection: replaces cleanly even when full.
        let actions = r
            .register(5, id(1), obs, &reg(true), Duration::ZERO)
            .unwrap();
        assert!(matches!(actions[..], [Action::Close { conn: 1, .. }]));
        // The old connection going away does not remove the new registration.
        r.unregister(&id(1), 1);
        assert!(r.is_registered(&id(1), 5));
        r.unregister(&id(1), 5);
        assert!(!r.is_registered(&id(1), 5));
        assert_eq!(r.len(), 2);
        let mut bad = reg(true);
        bad.version = 99;
        assert_eq!(
            r.register(6, id(6), obs, &bad, Duration::ZERO),
            Err(ErrorCode::UnsupportedVersion)
        );
    }

    #[test]
    fn replaced_connection_cannot_request() {
        let mut r = Registry::new(limits(), 10);
        let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        r.register(1, id(1), obs, &reg(true), Duration::ZERO)
            .unwrap();
        r.register(2, id(2), obs, &reg(true), Duration::ZERO)
            .unwrap();
        r.register(3, id(1), obs, &reg(true), Duration::ZERO)
            .unwrap();
        let actions = r.connect(Instant::now(), 1, id(1), 42, id(2), |_| true);
        assert_eq!(error_code(&actions), Some(ErrorCode::BadRequest));
        assert!(matches!(actions[..], [Action::Send { conn: 1, .. }]));
        // The new connection still has its full rate budget.
        assert_eq!(
            r.connect(Instant::now(), 3, id(1), 43, id(2), |_| true)
                .len(),
            2
        );
        assert_eq!(
            r.connect(Instant::now(), 3, id(1), 44, id(2), |_| true)
                .len(),
            2
        );
    }

    #[test]
    fn rtt_smoothing_and_prune() {
        let mut r = Registry::new(limits(), 10);
        let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        r.register(1, id(1), obs, &reg(true), Duration::from_millis(80))
            .unwrap();
        r.rtt_sample(&id(1), 1, Duration::from_millis(160));
        assert_eq!(r.srtt(&id(1)), Some(Duration::from_millis(90)));
        r.rtt_sample(&id(1), 99, Duration::from_secs(10));
        assert_eq!(r.srtt(&id(1)), Some(Duration::from_millis(90)));
        let now = Instant::now();
        r.connect(now, 1, id(1), 1, id(7), |_| true);
        r.unregister(&id(1), 1);
        r.prune(now);
        assert_eq!(r.request_buckets.len(), 1, "recently limited: kept");
        r.prune(now + MINUTE * 2);
        assert!(r.request_buckets.is_empty());
    }

    #[test]
    fn local_addresses_only_behind_one_nat_private_and_capped() {
        let mut r = Registry::new(limits(), 10);
        let nat: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        let elsewhere: SocketAddr = "198.51.100.4:1000".parse().unwrap();
        // An attacker claims ten private hosts, and a public one.
        let mut claims = reg(true);
        claims.local_addrs = (1..=10)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 22)))
            .chain(["198.51.100.9:22".parse().unwrap()])
            .collect();
        r.register(1, id(1), nat, &claims, Duration::ZERO).unwrap();
        r.register(2, id(2), nat, &reg(true), Duration::ZERO)
            .unwrap();
        r.register(3, id(3), elsewhere, &reg(true), Duration::ZERO)
            .unwrap();
        let now = Instant::now();
        // Same public IP (one NAT, another port): the first four private claims, both ways.
        let actions = r.connect(now, 1, id(1), 1, id(2), |_| true);
        let (oa, ob) = offers(&actions);
        let first_four: Vec<SocketAddr> = claims.local_addrs[..MAX_LOCAL_CANDIDATES].to_vec();
        assert_eq!(ob.peer_local, first_four);
        assert_eq!(oa.peer_local, vec!["192.168.1.10:4000".parse().unwrap()]);
        // Another public IP: nothing local, in either direction.
        let actions = r.connect(now, 1, id(1), 2, id(3), |_| true);
        let (oa, ob) = offers(&actions);
        assert!(oa.peer_local.is_empty());
        assert!(ob.peer_local.is_empty());
    }

    #[test]
    fn local_address_filter() {
        let public: SocketAddr = "203.0.113.1:1000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let ok = |a: &str, o: &SocketAddr| is_dialable_local(&a.parse().unwrap(), o);
        assert!(ok("10.1.2.3:5", &public));
        assert!(ok("100.64.0.1:5", &public));
        assert!(ok("[fd00::1]:5", &public));
        assert!(!ok("127.0.0.1:5", &public));
        assert!(ok("127.0.0.1:5", &lo));
        assert!(!ok("8.8.8.8:53", &public));
        assert!(!ok("10.1.2.3:0", &public));
    }
}
