//! Harness of the rendezvous [`Registry`]: arbitrary sequences of registrations (in one of
//! three networks or none), unregistrations, RTT samples, punch requests, `Discover`s and
//! prunes, from a pool of six identities on
//! eight connections, with time moving forward, checked against a model written from the
//! module's documentation.
//!
//! Invariants after every event:
//! - the registry holds exactly the model's peers (never more than `max_peers`), each on the
//!   connection of its latest registration, and its `Stats` count what happened;
//! - a registration fails exactly with `UnsupportedVersion` (other version), `NetworkFull`
//!   (its source, IPv4 address or IPv6 /64, or its network, IPv4 /24 or IPv6 /48, already holds
//!   its cap of other peers) or `ServerFull` (new identity, full registry), and replacing an
//!   identity closes its old connection;
//! - an RTT sample moves the smoothed RTT one eighth of the way to the sample, and only on the
//!   identity's current connection;
//! - a punch request gives either two offers or one typed error to the requesting connection:
//!   the offers go to both peers' connections, share a fresh session id, mirror peers and
//!   observed addresses, pass on only private local addresses (at most
//!   `MAX_LOCAL_CANDIDATES`, and only between peers seen from the same public IP), give the roles Initiator and
//!   Responder, and make both sides dial at the same server time
//!   (`dial_delay_a + owd_a == dial_delay_b + owd_b`, within 1 ms after the wire's whole
//!   milliseconds, owd = SRTT / 2 capped at `MAX_OWD`), the later side waiting exactly the
//!   margin and nobody more than `MAX_OWD` + margin; every offer and error fits one
//!   control frame and survives encoding;
//! - an error is `BadRequest` for a connection that is not the requester's registration
//!   (before any rate limit, costing no token), else the first of `SelfConnect`, `PeerOffline`,
//!   `WrongNetwork` (both peers named a network, not the same one), `PeerRefuses`,
//!   `NotAllowed` (a non-empty allow-list of the target without the requester) that applies, then `PeerOffline` when either side's outbound queue is full
//!   (both offers or neither), or `RateLimited` with a retry time, and only when the requester's
//!   identity, source or network (or the target's budget for that source or network) really
//!   used up its bucket in the last minute; no identity, source, network, (target, source) or
//!   (target, network) ever exceeds its rate (burst plus refill) over any window, and a
//!   refused request takes no token;
//! - a `Discover` is `BadRequest` from a stale connection (no token), else charged like a
//!   punch request (`RateLimited` only when a request bucket is spent), else `BadRequest` for
//!   an asker without a network, else `Discovered` to the asker: at most
//!   `min(max, discover_max, MAX_DISCOVERED)` distinct peers, each registered in the asker's
//!   network, accepting punches, not the asker, with an allow-list that is empty or names the
//!   asker; and when the network's accepting peers fit the sampler's draws, exactly as many as
//!   the bound or the eligible peers allow;
//! - the directory lists exactly the model's accepting peers that named a network, each under
//!   its own.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch_proto::frame::MAX_CONTROL_FRAME;
use punch_proto::message::{
    ErrorCode, NatMapping, Register, ServerMsg, MAX_DISCOVERED, PROTOCOL_VERSION,
};
use punch_proto::noise::TAG_LEN;
use punch_proto::{PeerId, Role};
use punch_rendezvous::directory::DRAWS_PER_ANSWER;
use punch_rendezvous::gate::Prefix;
use punch_rendezvous::registry::{self, Action, ConnId, Limits, Registry, Stats};

/// Events per input: enough to fill and churn a small registry; the rate checks are quadratic.
const MAX_EVENTS: usize = 256;
const PEERS: u8 = 6;
const CONNS: u8 = 8;
const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    max_peers: u8,
    max_per_source: u8,
    max_per_network: u8,
    punch_requests_per_minute: u8,
    requests_per_source: u8,
    requests_per_network: u8,
    offers_per_source: u8,
    offers_per_network: u8,
    dial_margin_ms: u16,
    discover_max: u8,
    session_seed: u64,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    Register {
        conn: u8,
        peer: u8,
        observed: Addr,
        locals: Vec<Addr>,
        accept_inbound: bool,
        /// Bit `p` set: peer `p` is on the allow-list (none set: anyone).
        allow: u8,
        /// Index into [`NETWORKS`].
        network: u8,
        other_version: Option<u32>,
        rtt_ms: u32,
    },
    Unregister {
        peer: u8,
        conn: u8,
    },
    RttSample {
        peer: u8,
        conn: u8,
        sample_ms: u32,
    },
    Connect {
        conn: u8,
        from: u8,
        request_id: u64,
        target: u8,
        /// Bit `c` set: connection `c`'s outbound queue is full.
        full_queues: u8,
    },
    Discover {
        conn: u8,
        from: u8,
        request_id: u64,
        max: u8,
    },
    Prune,
    Advance {
        ms: u32,
    },
    /// A NAT check (probe) of `peer`, seen from `observed`.
    NatCheck {
        peer: u8,
        observed: Addr,
    },
}

/// An address: mostly from a pool covering every class the local-address filter knows.
#[derive(Debug, Arbitrary)]
pub enum Addr {
    Pool(u8),
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

const POOL: [&str; 12] = [
    "203.0.113.7:4000",
    "10.0.0.2:4000",
    "192.168.1.5:1",
    "172.31.255.1:65535",
    "172.32.0.1:4000",
    "100.64.1.2:7",
    "100.128.0.1:7",
    "127.0.0.1:4000",
    "[fd00::1]:4000",
    "[::1]:4000",
    "[2001:db8::1]:4000",
    "10.0.0.2:0",
];

impl Addr {
    fn get(&self) -> SocketAddr {
        match self {
            Addr::Pool(i) => POOL[usize::from(*i) % POOL.len()]
                .parse()
                .expect("pool address"),
            Addr::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(*ip)), *port),
            Addr::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(*ip)), *port),
        }
    }
}

/// The networks peers register in; "" is none.
const NETWORKS: [&str; 4] = ["", "kaspa-mainnet", "kaspa-testnet-10", "kaspa-simnet"];

fn peer(p: u8) -> PeerId {
    PeerId::from_bytes([0x10 + p % PEERS; 32]).expect("a valid key")
}

fn conn(c: u8) -> ConnId {
    u64::from(c % CONNS)
}

/// The local-address rule of the registry's documentation, written independently: RFC 1918,
/// RFC 6598 shared space and IPv6 ULA; loopback only for a peer seen on loopback; never port 0.
fn spec_dialable(addr: &SocketAddr, observed: &SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let loopback_ok = observed.ip().is_loopback();
    match addr.ip() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a == 10
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 100 && (64..128).contains(&b))
                || (a == 127 && loopback_ok)
        }
        IpAddr::V6(v6) => {
            let first = v6.octets()[0];
            first == 0xfc || first == 0xfd || (v6 == Ipv6Addr::LOCALHOST && loopback_ok)
        }
    }
}

#[derive(Debug, Clone)]
struct ModelPeer {
    conn: ConnId,
    observed: SocketAddr,
    local: Vec<SocketAddr>,
    accept_inbound: bool,
    allow: Vec<PeerId>,
    network: &'static str,
    nat: NatMapping,
}

/// Counts events in sliding windows, for the rate-limit checks.
#[derive(Debug)]
struct Window<K>(HashMap<K, Vec<Instant>>);

impl<K> Default for Window<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Hash + Eq> Window<K> {
    fn count(&self, id: &K, from: Instant, to: Instant) -> usize {
        self.0.get(id).map_or(0, |ts| {
            ts.iter().filter(|t| **t >= from && **t <= to).count()
        })
    }

    /// Records an event and checks that no window ending now holds more than the bucket
    /// allows: `capacity` at once plus `capacity` per minute.
    fn record(&mut self, id: K, now: Instant, capacity: f64, what: &str) {
        let ts = self.0.entry(id).or_default();
        ts.push(now);
        for &start in ts.iter() {
            let n = ts.iter().filter(|t| **t >= start).count();
            let allowed = capacity + (now - start).as_secs_f64() * capacity / 60.0;
            assert!(
                n as f64 <= allowed + 1e-6,
                "{n} {what} in {:?}, allowed {allowed}",
                now - start
            );
        }
    }
}

pub fn run(s: Scenario) {
    let limits = Limits {
        max_peers: usize::from(s.max_peers % 8),
        max_registrations_per_source: usize::from(s.max_per_source % 8),
        max_registrations_per_network: usize::from(s.max_per_network % 8),
        punch_requests_per_minute: u32::from(s.punch_requests_per_minute % 6),
        punch_requests_per_source_per_minute: u32::from(s.requests_per_source % 8),
        punch_requests_per_network_per_minute: u32::from(s.requests_per_network % 10),
        offers_per_target_per_source_per_minute: u32::from(s.offers_per_source % 6),
        offers_per_target_per_network_per_minute: u32::from(s.offers_per_network % 8),
        // Never reached here: more keys than events.
        max_rate_keys: 4 * MAX_EVENTS,
        dial_margin: Duration::from_millis(u64::from(s.dial_margin_ms)),
        // Past MAX_DISCOVERED now and then, to check the protocol's own cap.
        discover_max: usize::from(s.discover_max % 72),
    };
    // A bucket of capacity 0 holds one token (`TokenBucket::new`).
    let cap = |c: u32| f64::from(c.max(1));
    let request_cap = cap(limits.punch_requests_per_minute);
    let source_cap = cap(limits.punch_requests_per_source_per_minute);
    let network_cap = cap(limits.punch_requests_per_network_per_minute);
    let offer_source_cap = cap(limits.offers_per_target_per_source_per_minute);
    let offer_network_cap = cap(limits.offers_per_target_per_network_per_minute);
    let mut r = Registry::new(limits.clone(), s.session_seed);
    let mut now = Instant::now();
    let mut model: HashMap<PeerId, ModelPeer> = HashMap::new();
    let mut stats = Stats::default();
    let mut sessions = HashSet::new();
    let mut requests: Window<PeerId> = Window::default();
    let mut source_requests: Window<Prefix> = Window::default();
    let mut network_requests: Window<Prefix> = Window::default();
    let mut source_offers: Window<(PeerId, Prefix)> = Window::default();
    let mut network_offers: Window<(PeerId, Prefix)> = Window::default();
    // Records a request that passed the request limits (it took a token of each).
    let record_request = |requests: &mut Window<PeerId>,
                          sources: &mut Window<Prefix>,
                          networks: &mut Window<Prefix>,
                          from: PeerId,
                          ip: IpAddr,
                          now: Instant| {
        requests.record(from, now, request_cap, "requests");
        sources.record(Prefix::of(ip), now, source_cap, "requests from a source");
        networks.record(
            Prefix::network(ip),
            now,
            network_cap,
            "requests from a network",
        );
    };

    for event in s.events.iter().take(MAX_EVENTS) {
        match event {
            Event::Register {
                conn: c,
                peer: p,
                observed,
                locals,
                accept_inbound,
                allow,
                network,
                other_version,
                rtt_ms,
            } => {
                let (c, p) = (conn(*c), peer(*p));
                let network = NETWORKS[usize::from(*network) % NETWORKS.len()];
                // The server observes a TCP peer address: never port 0.
                let mut observed = observed.get();
                if observed.port() == 0 {
                    observed.set_port(1);
                }
                let register = Register {
                    version: other_version.unwrap_or(PROTOCOL_VERSION),
                    local_addrs: locals.iter().take(20).map(Addr::get).collect(),
                    accept_inbound: *accept_inbound,
                    allow: (0..PEERS)
                        .filter(|i| allow & (1 << i) != 0)
                        .map(peer)
                        .collect(),
                    network: network.into(),
                    probe: false,
                };
                let rtt = Duration::from_millis(u64::from(*rtt_ms));
                let res = r.register(c, p, observed, &register, rtt);
                let old = model.get(&p).map(|m| m.conn);
                // Other peers registered from the same source and network.
                let others = |of: fn(IpAddr) -> Prefix| {
                    model
                        .iter()
                        .filter(|(id, m)| **id != p && of(m.observed.ip()) == of(observed.ip()))
                        .count()
                };
                if register.version != PROTOCOL_VERSION {
                    assert_eq!(res, Err(ErrorCode::UnsupportedVersion));
                } else if others(Prefix::of) >= limits.max_registrations_per_source
                    || others(Prefix::network) >= limits.max_registrations_per_network
                {
                    assert_eq!(res, Err(ErrorCode::NetworkFull));
                    stats.network_full += 1;
                } else if old.is_none() && model.len() >= limits.max_peers {
                    assert_eq!(res, Err(ErrorCode::ServerFull));
                } else {
                    let actions = res.expect("registration refused");
                    match (old, &actions[..]) {
                        (None, []) => {}
                        (Some(old), [Action::Close { conn, .. }]) if *conn == old => {
                            stats.replaced += 1;
                        }
                        (old, actions) => panic!("old conn {old:?}, actions {actions:?}"),
                    }
                    stats.registrations += 1;
                    let local = register
                        .local_addrs
                        .iter()
                        .copied()
                        .filter(|a| spec_dialable(a, &observed))
                        .take(registry::MAX_LOCAL_CANDIDATES)
                        .collect();
                    model.insert(
                        p,
                        ModelPeer {
                            conn: c,
                            observed,
                            local,
                            accept_inbound: *accept_inbound,
                            allow: register.allow.clone(),
                            network,
                            // A new registration is unchecked.
                            nat: NatMapping::Unknown,
                        },
                    );
                    assert_eq!(r.srtt(&p), Some(rtt));
                }
            }
            Event::Unregister { peer: p, conn: c } => {
                let (p, c) = (peer(*p), conn(*c));
                r.unregister(&p, c);
                if model.get(&p).is_some_and(|m| m.conn == c) {
                    model.remove(&p);
                }
            }
            Event::RttSample {
                peer: p,
                conn: c,
                sample_ms,
            } => {
                let (p, c) = (peer(*p), conn(*c));
                let sample = Duration::from_millis(u64::from(*sample_ms));
                let before = r.srtt(&p);
                r.rtt_sample(&p, c, sample);
                let after = r.srtt(&p);
                match (model.get(&p), before, after) {
                    (Some(m), Some(b), Some(a)) if m.conn == c => {
                        let want = b.as_secs_f64() + (sample.as_secs_f64() - b.as_secs_f64()) / 8.0;
                        assert!(
                            (a.as_secs_f64() - want).abs() < 1e-6,
                            "srtt {b:?} + sample {sample:?} gave {a:?}"
                        );
                    }
                    _ => assert_eq!(before, after, "sample on a stale connection applied"),
                }
            }
            Event::Connect {
                conn: c,
                from,
                request_id,
                target,
                full_queues,
            } => {
                let (c, from, target) = (conn(*c), peer(*from), peer(*target));
                let (srtt_a, srtt_b) = (r.srtt(&from), r.srtt(&target));
                let can_send = |c: ConnId| full_queues & (1 << c) == 0;
                let actions = r.connect(now, c, from, *request_id, target, can_send);
                // A request from a connection that is not the requester's registration is
                // refused before it costs a token.
                let current = model.get(&from).is_some_and(|m| m.conn == c);
                let expected = if !current {
                    Some(ErrorCode::BadRequest)
                } else if from == target {
                    Some(ErrorCode::SelfConnect)
                } else if !model.contains_key(&target) {
                    Some(ErrorCode::PeerOffline)
                } else if !model[&from].network.is_empty()
                    && !model[&target].network.is_empty()
                    && model[&from].network != model[&target].network
                {
                    Some(ErrorCode::WrongNetwork)
                } else if !model[&target].accept_inbound {
                    Some(ErrorCode::PeerRefuses)
                } else if !model[&target].allow.is_empty() && !model[&target].allow.contains(&from)
                {
                    Some(ErrorCode::NotAllowed)
                } else if !can_send(c) || !can_send(model[&target].conn) {
                    Some(ErrorCode::PeerOffline)
                } else {
                    None
                };
                for a in &actions {
                    let Action::Send { msg, .. } = a else {
                        panic!("connect returned {a:?}");
                    };
                    assert!(msg.encode().len() + TAG_LEN <= MAX_CONTROL_FRAME);
                    assert_eq!(
                        ServerMsg::decode(&msg.encode()).ok().as_ref(),
                        wire(msg).as_ref()
                    );
                }
                match &actions[..] {
                    [Action::Send {
                        conn: ca,
                        msg: ServerMsg::Offer(oa),
                    }, Action::Send {
                        conn: cb,
                        msg: ServerMsg::Offer(ob),
                    }] => {
                        assert_eq!(expected, None, "offer despite {expected:?}");
                        let (a, b) = (&model[&from], &model[&target]);
                        assert_eq!((*ca, *cb), (a.conn, b.conn));
                        assert_eq!(oa.session_id, ob.session_id);
                        assert!(sessions.insert(oa.session_id), "session id reused");
                        assert_eq!((oa.request_id, ob.request_id), (*request_id, 0));
                        assert_eq!((oa.peer, ob.peer), (target, from));
                        assert_eq!(
                            (oa.peer_observed, ob.peer_observed),
                            (b.observed, a.observed)
                        );
                        // Each side hears the other's NAT check.
                        assert_eq!((oa.peer_nat, ob.peer_nat), (b.nat, a.nat));
                        // Local addresses only between peers behind one public IP.
                        if a.observed.ip() == b.observed.ip() {
                            assert_eq!((&oa.peer_local, &ob.peer_local), (&b.local, &a.local));
                        } else {
                            assert!(oa.peer_local.is_empty() && ob.peer_local.is_empty());
                        }
                        assert!(oa.peer_local.len() <= registry::MAX_LOCAL_CANDIDATES);
                        assert_eq!((oa.role, ob.role), (Role::Initiator, Role::Responder));
                        let owd_a = registry::owd(srtt_a.expect("requester has an RTT"));
                        let owd_b = registry::owd(srtt_b.expect("target has an RTT"));
                        assert_eq!(oa.dial_delay + owd_a, ob.dial_delay + owd_b, "dial moments");
                        // The later side waits the margin plus the room for a late offer
                        // (an RTT variation, capped), never more.
                        let least = oa.dial_delay.min(ob.dial_delay);
                        assert!(least >= limits.dial_margin, "margin {least:?}");
                        assert!(least <= limits.dial_margin + registry::MAX_LATENESS);
                        assert_eq!(oa.dial_at_us, ob.dial_at_us, "one moment on the clock");
                        let most = registry::MAX_OWD + registry::MAX_LATENESS + limits.dial_margin;
                        assert!(oa.dial_delay.max(ob.dial_delay) <= most, "dial delay bound");
                        let ms = |d: Duration| d.as_millis().min(u128::from(u32::MAX));
                        let (wa, wb) = (ms(oa.dial_delay), ms(ob.dial_delay));
                        if wa < u128::from(u32::MAX) && wb < u128::from(u32::MAX) {
                            let ta = Duration::from_millis(wa as u64) + owd_a;
                            let tb = Duration::from_millis(wb as u64) + owd_b;
                            let skew = ta.abs_diff(tb);
                            assert!(skew < Duration::from_millis(1), "wire skew {skew:?}");
                        }
                        stats.offers += 1;
                        let ip = a.observed.ip();
                        record_request(
                            &mut requests,
                            &mut source_requests,
                            &mut network_requests,
                            from,
                            ip,
                            now,
                        );
                        let (src, net) = (Prefix::of(ip), Prefix::network(ip));
                        source_offers.record((target, src), now, offer_source_cap, "offers");
                        network_offers.record((target, net), now, offer_network_cap, "offers");
                    }
                    [Action::Send {
                        conn: ce,
                        msg: ServerMsg::Error(e),
                    }] => {
                        assert_eq!(*ce, c, "error to another connection");
                        assert_eq!(e.request_id, *request_id);
                        stats.refused += 1;
                        if e.code == ErrorCode::RateLimited {
                            assert!(current, "rate limited a request from a stale connection");
                            assert!(e.retry_after.is_some(), "rate limited without retry time");
                            stats.rate_limited += 1;
                            let since = now.checked_sub(MINUTE + Duration::from_millis(1));
                            let since = since.unwrap_or(now);
                            let ip = model[&from].observed.ip();
                            let (src, net) = (Prefix::of(ip), Prefix::network(ip));
                            let d = e.detail.as_str();
                            let (n, cap) = if d.ends_with("per minute from this identity") {
                                (requests.count(&from, since, now), request_cap)
                            } else if d.ends_with(&format!(" requests per minute from {src}")) {
                                (source_requests.count(&src, since, now), source_cap)
                            } else if d.ends_with(&format!(" requests per minute from {net}")) {
                                (network_requests.count(&net, since, now), network_cap)
                            } else {
                                assert_eq!(expected, None, "target limit before {expected:?}");
                                record_request(
                                    &mut requests,
                                    &mut source_requests,
                                    &mut network_requests,
                                    from,
                                    ip,
                                    now,
                                );
                                if d.ends_with(&format!("too many punch requests from {src}")) {
                                    (
                                        source_offers.count(&(target, src), since, now),
                                        offer_source_cap,
                                    )
                                } else {
                                    assert!(
                                        d.ends_with(&format!("too many punch requests from {net}")),
                                        "rate limited for {d:?}"
                                    );
                                    (
                                        network_offers.count(&(target, net), since, now),
                                        offer_network_cap,
                                    )
                                }
                            };
                            assert!(n as f64 >= cap, "limited after {n}: {d}");
                        } else {
                            assert_eq!(Some(e.code), expected);
                            if e.code == ErrorCode::NotAllowed {
                                stats.not_allowed += 1;
                            }
                            if e.code == ErrorCode::WrongNetwork {
                                stats.wrong_network += 1;
                            }
                            if current {
                                let ip = model[&from].observed.ip();
                                record_request(
                                    &mut requests,
                                    &mut source_requests,
                                    &mut network_requests,
                                    from,
                                    ip,
                                    now,
                                );
                            }
                        }
                    }
                    other => panic!("connect returned {other:?}"),
                }
            }
            Event::Discover {
                conn: c,
                from,
                request_id,
                max,
            } => {
                let (c, from) = (conn(*c), peer(*from));
                let actions = r.discover(now, c, from, *request_id, u32::from(*max));
                let current = model.get(&from).is_some_and(|m| m.conn == c);
                let [Action::Send { conn: to, msg }] = &actions[..] else {
                    panic!("discover returned {actions:?}");
                };
                assert_eq!(*to, c, "answer to another connection");
                assert!(msg.encode().len() + TAG_LEN <= MAX_CONTROL_FRAME);
                assert_eq!(ServerMsg::decode(&msg.encode()).ok(), wire(msg));
                if !current {
                    assert!(
                        matches!(msg, ServerMsg::Error(e) if e.code == ErrorCode::BadRequest),
                        "{msg:?}"
                    );
                    stats.refused += 1;
                    check_invariants(&r, &model, &stats, &limits);
                    continue;
                }
                let ip = model[&from].observed.ip();
                let (src, net) = (Prefix::of(ip), Prefix::network(ip));
                if let ServerMsg::Error(e) = msg {
                    assert_eq!(e.request_id, *request_id);
                    stats.refused += 1;
                    if e.code == ErrorCode::RateLimited {
                        assert!(e.retry_after.is_some(), "rate limited without retry time");
                        stats.rate_limited += 1;
                        let since = now.checked_sub(MINUTE + Duration::from_millis(1));
                        let since = since.unwrap_or(now);
                        let d = e.detail.as_str();
                        let (n, cap) = if d.ends_with("per minute from this identity") {
                            (requests.count(&from, since, now), request_cap)
                        } else if d.ends_with(&format!(" requests per minute from {src}")) {
                            (source_requests.count(&src, since, now), source_cap)
                        } else {
                            assert!(
                                d.ends_with(&format!(" requests per minute from {net}")),
                                "rate limited for {d:?}"
                            );
                            (network_requests.count(&net, since, now), network_cap)
                        };
                        assert!(n as f64 >= cap, "limited after {n}: {d}");
                        check_invariants(&r, &model, &stats, &limits);
                        continue;
                    }
                }
                record_request(
                    &mut requests,
                    &mut source_requests,
                    &mut network_requests,
                    from,
                    ip,
                    now,
                );
                let asker_network = model[&from].network;
                match msg {
                    ServerMsg::Error(e) => {
                        assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
                        assert!(asker_network.is_empty(), "refused a networked asker: {e:?}");
                    }
                    ServerMsg::Discovered {
                        request_id: id,
                        peers,
                    } => {
                        assert_eq!(id, request_id);
                        assert!(
                            !asker_network.is_empty(),
                            "sample for an asker without network"
                        );
                        let want = usize::from(*max)
                            .min(limits.discover_max)
                            .min(MAX_DISCOVERED);
                        assert!(peers.len() <= want, "{} > {want}", peers.len());
                        let distinct: HashSet<_> = peers.iter().collect();
                        assert_eq!(distinct.len(), peers.len(), "duplicates in {peers:?}");
                        let eligible = |id: &PeerId, m: &ModelPeer| {
                            *id != from
                                && m.accept_inbound
                                && m.network == asker_network
                                && (m.allow.is_empty() || m.allow.contains(&from))
                        };
                        for p in peers {
                            assert!(
                                model.get(p).is_some_and(|m| eligible(p, m)),
                                "{p:?} is not an eligible peer"
                            );
                        }
                        let listed = model
                            .values()
                            .filter(|m| m.accept_inbound && m.network == asker_network)
                            .count();
                        let n_eligible = model.iter().filter(|(id, m)| eligible(id, m)).count();
                        if listed <= want * DRAWS_PER_ANSWER + 1 {
                            assert_eq!(peers.len(), want.min(n_eligible), "sample too small");
                        }
                        stats.discovers += 1;
                    }
                    other => panic!("discover answered {other:?}"),
                }
            }
            Event::NatCheck { peer: p, observed } => {
                let p = peer(*p);
                let observed = observed.get();
                let got = r.nat_checked(&p, observed);
                let want = model.get_mut(&p).map(|m| {
                    m.nat = if m.observed == observed {
                        NatMapping::EndpointIndependent
                    } else {
                        NatMapping::EndpointDependent
                    };
                    m.nat
                });
                assert_eq!(got, want);
                if let Some(nat) = want {
                    stats.nat_checks += 1;
                    if nat == NatMapping::EndpointDependent {
                        stats.nat_endpoint_dependent += 1;
                    }
                }
                assert_eq!(r.nat_of(&p), want);
            }
            Event::Prune => r.prune(now),
            Event::Advance { ms } => now += Duration::from_millis(u64::from(*ms)),
        }

        check_invariants(&r, &model, &stats, &limits);
    }
}

/// The invariants checked after every event.
fn check_invariants(
    r: &Registry,
    model: &HashMap<PeerId, ModelPeer>,
    stats: &Stats,
    limits: &Limits,
) {
    assert_eq!(r.len(), model.len());
    assert!(r.len() <= limits.max_peers);
    assert_eq!(r.is_empty(), model.is_empty());
    for (id, m) in model {
        assert!(r.is_registered(id, m.conn));
        let listed = m.accept_inbound && !m.network.is_empty();
        assert_eq!(r.directory().contains(m.network, id), listed, "{m:?}");
    }
    let listed = model
        .values()
        .filter(|m| m.accept_inbound && !m.network.is_empty())
        .count();
    assert_eq!(r.directory().len(), listed);
    for network in NETWORKS {
        let n = model
            .values()
            .filter(|m| m.accept_inbound && m.network == network && !network.is_empty())
            .count();
        assert_eq!(r.directory().len_of(network), n, "{network}");
    }
    for p in 0..PEERS {
        assert_eq!(r.srtt(&peer(p)).is_some(), model.contains_key(&peer(p)));
    }
    // Which budget refused a request is the registry's to say (the model tracks only that one
    // did): the hits by budget must add up to the refusals for rate.
    let got = r.stats().clone();
    let l = got.limited;
    assert_eq!(
        l.identity + l.source + l.network + l.target_source + l.target_network,
        got.rate_limited,
        "{l:?}"
    );
    let mut want = stats.clone();
    want.limited = l;
    assert_eq!(got, want);
}

/// What the client decodes from `msg`: delays in whole milliseconds.
fn wire(msg: &ServerMsg) -> Option<ServerMsg> {
    let mut msg = msg.clone();
    let ms = |d: Duration| {
        Duration::from_millis(u64::try_from(d.as_millis().min(u128::from(u32::MAX))).unwrap_or(0))
    };
    match &mut msg {
        ServerMsg::Offer(o) => {
            o.peer_local.truncate(punch_proto::message::MAX_LOCAL_ADDRS);
            o.dial_delay = ms(o.dial_delay);
        }
        ServerMsg::Error(e) => e.retry_after = e.retry_after.map(ms).filter(|d| !d.is_zero()),
        _ => {}
    }
    Some(msg)
}
