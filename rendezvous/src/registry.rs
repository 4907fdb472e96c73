//! The registry and punch coordinator: a pure state machine fed `(now, event)`.
//!
//! It knows who is registered (identity, observed address, local addresses, RTT, whether it
//! accepts punches) and turns a punch request into two matching offers, or a typed error for
//! the requester. No sockets and no clock here: the server's connection drivers call in with
//! `now` and carry out the returned [`Action`]s in order.
//!
//! Dial scheduling: the server sends both offers at the same instant `now`. Offer X reaches its
//! peer after that peer's one-way delay `owd_x` (estimated as SRTT / 2), give or take the
//! variation of its round trips (RTTVAR, kept as TCP keeps it, RFC 6298). Both dial at server
//! time `T = now + max(owd_a + late_a, owd_b + late_b) + margin`, where `late_x` (RTTVAR,
//! capped at [`MAX_LATENESS`]) is the room left for offer X arriving later than its estimate,
//! and `margin` only the time a client needs to act on an offer. The offer names `T` twice:
//! on the server's clock ([`Offer::dial_at_us`], microseconds from the epoch given by
//! [`Registry::with_clock`]; a client that has placed that clock from its pongs dials then,
//! so a late offer does not make a late dial) and as the wait after receipt,
//! `T - now - owd_x` (for a client without the clock). So the wait is measured, not fixed: a
//! steady 1 ms path gets a few milliseconds, a jittery one as much room as its jitter.
//! A peer controls its own SRTT and RTTVAR (it can answer pings late), so each is capped
//! ([`MAX_OWD`], [`MAX_LATENESS`]): one side's claimed delay cannot hold the other's dial back
//! by more than that.
//!
//! Local addresses. A peer's claimed local addresses are not verified, and its partner dials
//! every one it is given, so they are a lever for making others dial hosts the claimant
//! chooses. They are passed on only to a partner seen from the same public IP (both behind
//! one NAT, the only case where a LAN address can be the better path), only private ones
//! ([`is_dialable_local`]), and at most [`MAX_LOCAL_CANDIDATES`].
//!
//! Sybils. Identities are free, so no limit may be per identity alone. A target's
//! registration carries its allow-list (at most [`MAX_ALLOW`] identities, empty: anyone),
//! checked before any budget is charged: a requester not on it gets `NotAllowed` and the
//! target never hears of it. Punch requests are limited per identity, per source (IPv4
//! address, IPv6 /64) and per network (IPv4 /24, IPv6 /48); offers to one target are budgeted
//! per (target, requesting source) and per (target, requesting network), so requesters from
//! one block of addresses cannot spend the budget of everyone else. Registrations are capped
//! per source and per network, so a block of addresses cannot fill `max_peers`.
//!
//! Networks. A registration names its network (`kaspa-mainnet`, ...; empty: none). A punch
//! request between two peers that both name one is refused `WrongNetwork` unless the names are
//! equal, before any offer budget is charged and without telling the target. `Discover` answers
//! with a random sample of the asker's network's accepting peers from the [`Directory`]
//! (never the asker, never a peer whose allow-list leaves the asker out, at most
//! `discover_max`), and is charged to the same three request budgets as a punch request: a
//! sample costs the server about what a refused punch request does. An asker without a
//! network gets `BadRequest`.
//!
//! Memory: `peers` holds at most `max_peers` entries (each with at most [`MAX_ALLOW`] allowed
//! identities, 2 KiB, and a network name of at most 64 bytes,
//! [`punch_proto::message::MAX_NETWORK_LEN`]); the directory one entry per accepting peer
//! and one per network with such peers; the per-source and per-network registration counts
//! at most one entry per peer; each of the five rate tables at most `max_rate_keys` keys
//! ([`RateTable`]), and [`Registry::prune`] drops keys idle for a minute.
//!
//! NAT check. A peer's probe (a second connection from its punch port to the server's NAT
//! check port, authenticated as the same identity) is compared with its registration's
//! observed address ([`Registry::nat_checked`]); the result travels in the offers its partners
//! get ([`Offer::peer_nat`]), so they can tell early when a direct punch cannot work. A new
//! registration starts unknown again.
//!
//! Session ids are random (from an RNG the registry owns, seeded at construction so tests and
//! the simulator stay deterministic), never 0, so they reveal neither how many sessions the
//! server has coordinated nor which id comes next.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use punch_proto::message::{
    ErrorCode, ErrorReply, NatMapping, Offer, Register, ServerMsg, MAX_ALLOW, MAX_DISCOVERED,
    PROTOCOL_VERSION,
};
use punch_proto::{PeerId, Role};

use crate::config;
use crate::directory::Directory;
use crate::gate::Prefix;
use crate::limiter::{Limited, RateTable};

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

/// Limits the registry enforces (the server's [`crate::Config`] documents each default).
/// "Source" is an IPv4 address or IPv6 /64, "network" an IPv4 /24 or IPv6 /48 ([`Prefix`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_peers: usize,
    pub max_registrations_per_source: usize,
    pub max_registrations_per_network: usize,
    /// Per requesting identity.
    pub punch_requests_per_minute: u32,
    pub punch_requests_per_source_per_minute: u32,
    pub punch_requests_per_network_per_minute: u32,
    /// Offers to one target from requesters of one source.
    pub offers_per_target_per_source_per_minute: u32,
    /// Offers to one target from requesters of one network.
    pub offers_per_target_per_network_per_minute: u32,
    /// Keys each rate table holds at most.
    pub max_rate_keys: usize,
    pub dial_margin: Duration,
    /// Peers one `Discover` answer names at most (also capped at [`MAX_DISCOVERED`]).
    pub discover_max: usize,
}

impl Default for Limits {
    /// The server's defaults.
    fn default() -> Self {
        Self {
            max_peers: config::DEFAULT_MAX_PEERS,
            max_registrations_per_source: config::DEFAULT_MAX_REGISTRATIONS_PER_SOURCE,
            max_registrations_per_network: config::DEFAULT_MAX_REGISTRATIONS_PER_NETWORK,
            punch_requests_per_minute: config::DEFAULT_PUNCH_REQUESTS_PER_MINUTE,
            punch_requests_per_source_per_minute:
                config::DEFAULT_PUNCH_REQUESTS_PER_SOURCE_PER_MINUTE,
            punch_requests_per_network_per_minute:
                config::DEFAULT_PUNCH_REQUESTS_PER_NETWORK_PER_MINUTE,
            offers_per_target_per_source_per_minute:
                config::DEFAULT_OFFERS_PER_TARGET_PER_SOURCE_PER_MINUTE,
            offers_per_target_per_network_per_minute:
                config::DEFAULT_OFFERS_PER_TARGET_PER_NETWORK_PER_MINUTE,
            max_rate_keys: config::DEFAULT_MAX_RATE_KEYS,
            dial_margin: config::DEFAULT_DIAL_MARGIN,
            discover_max: config::DEFAULT_DISCOVER_MAX,
        }
    }
}

/// Counters, exported by the binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub registrations: u64,
    pub replaced: u64,
    pub offers: u64,
    /// Punch requests answered with an error (any code, including the two below).
    pub refused: u64,
    /// Punch requests refused by the target's allow-list (the target was not told).
    pub not_allowed: u64,
    /// Punch requests refused by a request or offer budget.
    pub rate_limited: u64,
    /// Registrations refused for their source's or network's cap (`NetworkFull`).
    pub network_full: u64,
    /// Punch requests refused because the two peers registered different networks.
    pub wrong_network: u64,
    /// `Discover` requests answered with a sample (refusals count in `refused`).
    pub discovers: u64,
    /// NAT checks compared with a registration.
    pub nat_checks: u64,
    /// Of those, the ones that showed an endpoint-dependent mapping.
    pub nat_endpoint_dependent: u64,
    /// `rate_limited` by the budget that was spent.
    pub limited: RateLimitHits,
}

/// Requests refused by each rate budget (their sum is [`Stats::rate_limited`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHits {
    /// `punch_requests_per_minute` of one identity.
    pub identity: u64,
    /// `punch_requests_per_source_per_minute`.
    pub source: u64,
    /// `punch_requests_per_network_per_minute`.
    pub network: u64,
    /// `offers_per_target_per_source_per_minute`.
    pub target_source: u64,
    /// `offers_per_target_per_network_per_minute`.
    pub target_network: u64,
}

#[derive(Debug)]
struct Peer {
    conn: ConnId,
    observed: SocketAddr,
    local: Vec<SocketAddr>,
    accept_inbound: bool,
    /// Who may punch to this peer; empty: anyone.
    allow: Vec<PeerId>,
    /// The network it registered; empty: none.
    network: String,
    srtt: Duration,
    /// The mean deviation of its round trips (RFC 6298's RTTVAR).
    rttvar: Duration,
    /// The mapping its NAT check showed; unknown until one arrives.
    nat: NatMapping,
}

impl Peer {
    /// Whether `from` may punch to this peer by its allow-list.
    fn allows(&self, from: &PeerId) -> bool {
        self.allow.is_empty() || self.allow.contains(from)
    }
}

/// Registered peers and the punch coordinator.
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    peers: HashMap<PeerId, Peer>,
    /// Registered peers per source and per network (entries at zero are removed).
    per_source: HashMap<Prefix, usize>,
    per_network: HashMap<Prefix, usize>,
    requests_by_id: RateTable<PeerId>,
    requests_by_source: RateTable<Prefix>,
    requests_by_network: RateTable<Prefix>,
    offers_by_source: RateTable<(PeerId, Prefix)>,
    offers_by_network: RateTable<(PeerId, Prefix)>,
    /// Accepting peers by network, for `Discover`.
    directory: Directory,
    sessions: StdRng,
    /// Draws `Discover` samples (its own stream, so samples do not shift session ids).
    sampler: StdRng,
    stats: Stats,
    /// The epoch of the server's clock that offers name dial moments on, if any.
    epoch: Option<Instant>,
}

/// A refusal of a punch request: code, detail for the requester, retry time.
type Refusal = (ErrorCode, String, Option<Duration>);

/// A rate table's refusal as the requester's error.
fn rate_refusal(what: impl FnOnce() -> String) -> impl FnOnce(Limited) -> Refusal {
    move |limited| match limited {
        Limited::Wait(wait) => (ErrorCode::RateLimited, what(), Some(wait)),
        Limited::TableFull(wait) => (
            ErrorCode::RateLimited,
            "the rendezvous's rate tables are full; retry later".into(),
            Some(wait),
        ),
    }
}

fn count_up(map: &mut HashMap<Prefix, usize>, key: Prefix) {
    *map.entry(key).or_insert(0) += 1;
}

fn count_down(map: &mut HashMap<Prefix, usize>, key: Prefix) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// Mixed into the session seed for the `Discover` sampler's seed, so the two RNGs differ.
const SAMPLER_SEED: u64 = 0x6469_7363_6f76_6572;

/// The largest one-way delay the dial schedule believes. Real paths stay below it (a
/// geostationary satellite hop is about 300 ms one way); a larger SRTT is a slow or lying
/// peer, and believing it would make the *other* peer wait: a requester answering pings late
/// could hold the target's dial back by seconds. With the cap, no peer waits longer than
/// `MAX_OWD + dial_margin` after its offer arrives.
pub const MAX_OWD: Duration = Duration::from_millis(500);

/// The most room the dial schedule leaves for an offer arriving late (see the module doc): a
/// peer whose round trips vary more than this is on a path no schedule can hit, and its
/// claimed variation must not hold the other peer's dial back further.
pub const MAX_LATENESS: Duration = Duration::from_millis(250);

/// The most claimed local addresses passed on in one offer. A host behind one NAT has one or
/// two LAN addresses (an interface per family, sometimes a VPN or container bridge); four
/// covers that, while bounding how many hosts on the partner's LAN one offer makes it dial.
pub const MAX_LOCAL_CANDIDATES: usize = 4;

impl Registry {
    /// `session_seed` seeds the RNG that draws session ids (and, mixed with a constant, the
    /// one that draws `Discover` samples); the server seeds it randomly, so
    /// ids are unpredictable and ids from before a restart do not repeat (a stale punched
    /// stream then fails the Noise prologue). Tests pass a fixed seed for determinism.
    pub fn new(limits: Limits, session_seed: u64) -> Self {
        let keys = limits.max_rate_keys;
        Self {
            requests_by_id: RateTable::new(limits.punch_requests_per_minute, keys),
            requests_by_source: RateTable::new(limits.punch_requests_per_source_per_minute, keys),
            requests_by_network: RateTable::new(limits.punch_requests_per_network_per_minute, keys),
            offers_by_source: RateTable::new(limits.offers_per_target_per_source_per_minute, keys),
            offers_by_network: RateTable::new(
                limits.offers_per_target_per_network_per_minute,
                keys,
            ),
            limits,
            peers: HashMap::new(),
            per_source: HashMap::new(),
            per_network: HashMap::new(),
            directory: Directory::new(),
            sessions: StdRng::seed_from_u64(session_seed),
            sampler: StdRng::seed_from_u64(session_seed ^ SAMPLER_SEED),
            stats: Stats::default(),
            epoch: None,
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
    /// same identity (whose connection is closed). Returns the registration error to send, if
    /// any: `UnsupportedVersion`, `NetworkFull` (the source or network holds its maximum of
    /// registrations; a replacement does not count its own old registration), `ServerFull`.
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
        let (source, network) = (Prefix::of(observed.ip()), Prefix::network(observed.ip()));
        let old = self.peers.get(&peer).map(|p| p.observed.ip());
        let held = |map: &HashMap<Prefix, usize>, key: Prefix, of: fn(IpAddr) -> Prefix| {
            let own = old.is_some_and(|ip| of(ip) == key);
            map.get(&key).copied().unwrap_or(0) - usize::from(own)
        };
        if held(&self.per_source, source, Prefix::of) >= self.limits.max_registrations_per_source
            || held(&self.per_network, network, Prefix::network)
                >= self.limits.max_registrations_per_network
        {
            self.stats.network_full += 1;
            return Err(ErrorCode::NetworkFull);
        }
        let mut actions = Vec::new();
        if let Some(old) = self.peers.remove(&peer) {
            self.directory.remove(&old.network, &peer);
            actions.push(Action::Close {
                conn: old.conn,
                reason: "replaced by a newer registration of the same identity",
            });
            count_down(&mut self.per_source, Prefix::of(old.observed.ip()));
            count_down(&mut self.per_network, Prefix::network(old.observed.ip()));
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
                allow: register.allow.iter().take(MAX_ALLOW).copied().collect(),
                network: register.network.clone(),
                srtt: rtt,
                // RFC 6298's first estimate: one sample says little about the variation.
                rttvar: rtt / 2,
                nat: NatMapping::Unknown,
            },
        );
        if register.accept_inbound {
            self.directory.insert(&register.network, peer);
        }
        count_up(&mut self.per_source, source);
        count_up(&mut self.per_network, network);
        self.stats.registrations += 1;
        Ok(actions)
    }

    /// Peers registered now from `observed`'s source and network.
    pub fn registered_from(&self, observed: IpAddr) -> (usize, usize) {
        let get = |map: &HashMap<Prefix, usize>, key| map.get(&key).copied().unwrap_or(0);
        (
            get(&self.per_source, Prefix::of(observed)),
            get(&self.per_network, Prefix::network(observed)),
        )
    }

    /// Forgets `peer` if it is still registered on `conn` (a replaced registration is not touched).
    pub fn unregister(&mut self, peer: &PeerId, conn: ConnId) {
        if self.is_registered(peer, conn) {
            if let Some(old) = self.peers.remove(peer) {
                self.directory.remove(&old.network, peer);
                count_down(&mut self.per_source, Prefix::of(old.observed.ip()));
                count_down(&mut self.per_network, Prefix::network(old.observed.ip()));
            }
        }
    }

    /// Feeds an RTT sample, smoothed as TCP does (RFC 6298): rttvar += (|srtt - sample| -
    /// rttvar) / 4, then srtt += (sample - srtt) / 8.
    pub fn rtt_sample(&mut self, peer: &PeerId, conn: ConnId, sample: Duration) {
        if let Some(p) = self.peers.get_mut(peer).filter(|p| p.conn == conn) {
            let (srtt, rttvar, r) = (
                p.srtt.as_secs_f64(),
                p.rttvar.as_secs_f64(),
                sample.as_secs_f64(),
            );
            p.rttvar = Duration::from_secs_f64(rttvar + ((srtt - r).abs() - rttvar) / 4.0);
            p.srtt = Duration::from_secs_f64(srtt + (r - srtt) / 8.0);
        }
    }

    /// Sets the epoch of the server's clock that offers name their dial moment on
    /// ([`Offer::dial_at_us`], [`clock_us`]); without it offers carry only the relative delay.
    pub fn with_clock(mut self, epoch: Instant) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// The control connection `peer` is registered on now (to tell it about its relayed
    /// sessions).
    pub fn conn_of(&self, peer: &PeerId) -> Option<ConnId> {
        self.peers.get(peer).map(|p| p.conn)
    }

    /// A NAT check of `peer`, seen from `probe`: classified against the address its
    /// registration was seen from, and kept for the offers its partners get. `None` when
    /// `peer` is not registered (nothing is kept; the prober can still compare for itself).
    pub fn nat_checked(&mut self, peer: &PeerId, probe: SocketAddr) -> Option<NatMapping> {
        let p = self.peers.get_mut(peer)?;
        p.nat = NatMapping::from_observed(p.observed, probe);
        self.stats.nat_checks += 1;
        if p.nat == NatMapping::EndpointDependent {
            self.stats.nat_endpoint_dependent += 1;
        }
        Some(p.nat)
    }

    /// The NAT mapping recorded for a registered peer.
    pub fn nat_of(&self, peer: &PeerId) -> Option<NatMapping> {
        self.peers.get(peer).map(|p| p.nat)
    }

    /// The smoothed RTT of a registered peer.
    pub fn srtt(&self, peer: &PeerId) -> Option<Duration> {
        self.peers.get(peer).map(|p| p.srtt)
    }

    /// The RTT variation (RTTVAR) of a registered peer.
    pub fn rttvar(&self, peer: &PeerId) -> Option<Duration> {
        self.peers.get(peer).map(|p| p.rttvar)
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
            Err(refusal) => self.refuse(conn, request_id, refusal),
        }
    }

    /// Handles a `Discover` from `from` (registered on `conn`): a uniformly random sample of at
    /// most `max` (capped at `discover_max` and [`MAX_DISCOVERED`]) peers of its network that
    /// accept punches and whose allow-list admits it, never itself. Charged to the request
    /// budgets of a punch request; `BadRequest` when `from` registered no network.
    pub fn discover(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: PeerId,
        request_id: u64,
        max: u32,
    ) -> Vec<Action> {
        match self.try_discover(now, conn, from, request_id, max) {
            Ok(actions) => actions,
            Err(refusal) => self.refuse(conn, request_id, refusal),
        }
    }

    fn try_discover(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: PeerId,
        request_id: u64,
        max: u32,
    ) -> Result<Vec<Action>, Refusal> {
        self.charge_request(now, conn, from)?;
        let asker = &self.peers[&from];
        if asker.network.is_empty() {
            return Err((
                ErrorCode::BadRequest,
                "register with a network to discover its peers".into(),
                None,
            ));
        }
        let want = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(self.limits.discover_max)
            .min(MAX_DISCOVERED);
        let peers = &self.peers;
        let sample = self
            .directory
            .sample(&asker.network, want, &mut self.sampler, |p| {
                *p != from && peers.get(p).is_some_and(|p| p.allows(&from))
            });
        self.stats.discovers += 1;
        Ok(vec![Action::Send {
            conn,
            msg: ServerMsg::Discovered {
                request_id,
                peers: sample,
            },
        }])
    }

    /// Counts a refusal and turns it into the error reply for the requester.
    fn refuse(&mut self, conn: ConnId, request_id: u64, refusal: Refusal) -> Vec<Action> {
        let (code, detail, retry_after) = refusal;
        self.stats.refused += 1;
        match code {
            ErrorCode::NotAllowed => self.stats.not_allowed += 1,
            ErrorCode::RateLimited => self.stats.rate_limited += 1,
            ErrorCode::WrongNetwork => self.stats.wrong_network += 1,
            _ => {}
        }
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

    /// Checks that `from` is registered on `conn` and charges one request to its identity,
    /// source and network budgets (all three checked before any is charged, so a request
    /// refused by one costs no token of the others). Punch requests and `Discover` share them.
    fn charge_request(&mut self, now: Instant, conn: ConnId, from: PeerId) -> Result<(), Refusal> {
        // A connection replaced by a newer registration of the same identity may still send a
        // request before it reads its Close: it must not act for the new connection.
        let Some(a) = self.peers.get(&from).filter(|a| a.conn == conn) else {
            return Err((
                ErrorCode::BadRequest,
                "this connection's registration was replaced".into(),
                None,
            ));
        };
        let ip = a.observed.ip();
        let (source, network) = (Prefix::of(ip), Prefix::network(ip));
        let limits = &self.limits;
        let hits = &mut self.stats.limited;
        self.requests_by_id
            .check(now, &from)
            .inspect_err(|_| hits.identity += 1)
            .map_err(rate_refusal(|| {
                format!(
                    "more than {} requests per minute from this identity",
                    limits.punch_requests_per_minute
                )
            }))?;
        self.requests_by_source
            .check(now, &source)
            .inspect_err(|_| hits.source += 1)
            .map_err(rate_refusal(|| {
                format!(
                    "more than {} requests per minute from {source}",
                    limits.punch_requests_per_source_per_minute
                )
            }))?;
        self.requests_by_network
            .check(now, &network)
            .inspect_err(|_| hits.network += 1)
            .map_err(rate_refusal(|| {
                format!(
                    "more than {} requests per minute from {network}",
                    limits.punch_requests_per_network_per_minute
                )
            }))?;
        let taken = [
            self.requests_by_id.take(now, from),
            self.requests_by_source.take(now, source),
            self.requests_by_network.take(now, network),
        ];
        debug_assert!(taken.iter().all(Result::is_ok), "{taken:?}");
        Ok(())
    }

    fn try_connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        from: PeerId,
        request_id: u64,
        target: PeerId,
        can_send: impl Fn(ConnId) -> bool,
    ) -> Result<Vec<Action>, Refusal> {
        self.charge_request(now, conn, from)?;
        let ip = self.peers[&from].observed.ip();
        let (source, network) = (Prefix::of(ip), Prefix::network(ip));
        let limits = &self.limits;
        if from == target {
            return Err((
                ErrorCode::SelfConnect,
                "cannot punch to yourself".into(),
                None,
            ));
        }
        let a = &self.peers[&from];
        let b = self.peers.get(&target).ok_or_else(|| {
            (
                ErrorCode::PeerOffline,
                format!("peer {} is not registered", target.short()),
                None,
            )
        })?;
        // Two named networks that differ: refused before anything else is learnt about the
        // target or any offer budget is charged, and the target never hears of it.
        if !a.network.is_empty() && !b.network.is_empty() && a.network != b.network {
            return Err((
                ErrorCode::WrongNetwork,
                format!(
                    "peer {} is on network {}, not {}",
                    target.short(),
                    b.network,
                    a.network
                ),
                None,
            ));
        }
        if !b.accept_inbound {
            return Err((
                ErrorCode::PeerRefuses,
                format!("peer {} does not accept inbound punches", target.short()),
                None,
            ));
        }
        // Before any budget: a stranger to the target's allow-list spends nobody's budget
        // and the target never hears of the request.
        if !b.allows(&from) {
            return Err((
                ErrorCode::NotAllowed,
                format!(
                    "peer {} accepts punches only from the peers it names",
                    target.short()
                ),
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
        let too_many = |from: Prefix| {
            move || {
                format!(
                    "peer {} receives too many punch requests from {from}",
                    target.short()
                )
            }
        };
        let hits = &mut self.stats.limited;
        self.offers_by_source
            .check(now, &(target, source))
            .inspect_err(|_| hits.target_source += 1)
            .map_err(rate_refusal(too_many(source)))?;
        self.offers_by_network
            .check(now, &(target, network))
            .inspect_err(|_| hits.target_network += 1)
            .map_err(rate_refusal(too_many(network)))?;
        let taken = [
            self.offers_by_source.take(now, (target, source)),
            self.offers_by_network.take(now, (target, network)),
        ];
        debug_assert!(taken.iter().all(Result::is_ok), "{taken:?}");

        let (owd_a, owd_b) = (owd(a.srtt), owd(b.srtt));
        let reach = |owd: Duration, p: &Peer| owd + p.rttvar.min(MAX_LATENESS);
        let at = reach(owd_a, a).max(reach(owd_b, b)) + limits.dial_margin;
        let dial_at_us = self.epoch.map(|epoch| clock_us(epoch, now + at));
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
                    dial_at_us,
                    relay: None,
                    upgrade: None,
                    peer_nat: b.nat,
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
                    dial_at_us,
                    relay: None,
                    upgrade: None,
                    peer_nat: a.nat,
                }),
            },
        ])
    }

    /// Forgets rate-limit state that is idle (a full bucket, so forgetting it changes no
    /// answer): every table then holds only keys used in the last minute.
    pub fn prune(&mut self, now: Instant) {
        self.requests_by_id.prune(now);
        self.requests_by_source.prune(now);
        self.requests_by_network.prune(now);
        self.offers_by_source.prune(now);
        self.offers_by_network.prune(now);
    }

    /// The accepting peers by network that `Discover` samples (for tests and metrics).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Keys held by the five rate tables (requests by identity, source, network; offers by
    /// target and source, target and network), for tests and metrics.
    pub fn rate_keys(&self) -> [usize; 5] {
        [
            self.requests_by_id.len(),
            self.requests_by_source.len(),
            self.requests_by_network.len(),
            self.offers_by_source.len(),
            self.offers_by_network.len(),
        ]
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

/// The server's clock at `at`, as pongs and offers carry it: microseconds since `epoch`, plus
/// one (0 on the wire means "not given").
pub fn clock_us(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX - 1) + 1
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
#[path = "registry_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "registry_network_tests.rs"]
mod network_tests;
