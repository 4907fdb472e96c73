//! Keeps punched peers connected to a node: the logic of kaspad-punch, independent of kaspad.
//!
//! ```text
//! for each configured peer (one task each):
//!   loop: skip while the peer's own session to us is live (it dials us; one Kaspa link is
//!         enough) -> Client::connect(peer) -> Bridge::attach (we are the Kaspa dialer)
//!         -> NodeDialer::dial(127.a.b.c:port) -> wait until the Kaspa connection or the
//!         session ends -> back off (doubling, with jitter) -> re-punch
//! inbound (one task): Incoming::next -> refuse beyond max_inbound -> Bridge::attach
//!         (the peer dials; its connections reach the node from its alias) -> hold until
//!         the session ends, or close it once the node has had no Kaspa peer at its
//!         alias for inbound_idle_timeout (an idle session must not keep a max_inbound slot)
//! ```
//!
//! Every task belongs to the [`Link`]'s JoinSet; dropping the link stops them and closes
//! every bridged session. What happened is reported as [`LinkEvent`]s.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use punch::throttle::LogThrottle;
use punch::{Client, Denylist, Incoming, PathKind};
use punch_proto::PeerId;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use crate::bridge::{Bridge, BridgeError, BridgedPeer};

/// Inbound punched peers at most: each is a Kaspa inbound peer taking bandwidth and a share
/// of the node's inbound slots; 8 leaves most of kaspad's default 128 to ordinary peers.
pub const DEFAULT_MAX_INBOUND: usize = 8;
/// First pause before re-punching a peer: a session that just dropped usually comes back at
/// once (the peer restarted, a NAT mapping expired), so try again soon.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest pause between punches to an unreachable peer: once a minute keeps well under the
/// rendezvous's default of 20 punch requests per minute per identity, even for several peers.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// After asking the node to dial, how long the first Kaspa connection may take to show up
/// on the bridge before the attempt counts as failed (kaspad's connection manager works in
/// rounds of a few seconds).
pub const DEFAULT_FIRST_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// An inbound punched session whose peer has had no Kaspa connection with the node (no peer
/// at its alias, see [`NodeDialer::has_peer_at`]) for this long is closed and its
/// `max_inbound` slot freed (checked every quarter of it, so closed within 1.25 times it):
/// keys are free, so without it a few idle sessions hold every slot. An honest peer's node
/// dials as soon as its session is up (its link asks at once), and that peer itself gives up
/// after [`DEFAULT_FIRST_CONNECTION_TIMEOUT`], also 30 s, so no honest peer is cut off before
/// it would have given up; after its Kaspa connection drops the peer re-punches within
/// seconds anyway.
pub const DEFAULT_INBOUND_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept for slow observers.
pub const EVENT_BUFFER: usize = 256;

/// What punch reads of the node: its connected peers and its bans.
pub trait NodeView: Send + Sync + 'static {
    /// Whether the node has a Kaspa peer (handshake done) at `ip` now. An inbound punched
    /// session counts as carrying a Kaspa connection only then: a bare TCP connection to
    /// the node's P2P port, which the node's gRPC server keeps open without a request (no
    /// timeout there), does not. An implementation that cannot tell (its query failed)
    /// should answer `true`, so a local fault never closes an honest peer.
    fn has_peer_at(&self, ip: IpAddr) -> BoxFuture<'static, bool>;

    /// The IP addresses the node has banned now. A banned alias's identity and observed
    /// address are then refused at the punch layer too (see [`crate::peering`]).
    fn banned_ips(&self) -> BoxFuture<'static, Vec<IpAddr>> {
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// How the node is asked to connect to a bridge listener (a [`Link`]'s node; kaspad-punch's
/// kaspad dials its slots by itself, see [`crate::slots`], and is only a [`NodeView`]).
pub trait NodeDialer: NodeView {
    /// Asks the node to connect to `addr`. Returns an error if the node refused outright;
    /// `Ok` may mean "requested" for nodes that connect asynchronously.
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, Result<(), DialError>>;
}

/// A [`NodeDialer`] seen as the [`NodeView`] it also is (for the accept loop).
struct ViewOf(Arc<dyn NodeDialer>);

impl NodeView for ViewOf {
    fn has_peer_at(&self, ip: IpAddr) -> BoxFuture<'static, bool> {
        self.0.has_peer_at(ip)
    }

    fn banned_ips(&self) -> BoxFuture<'static, Vec<IpAddr>> {
        self.0.banned_ips()
    }
}

/// The node (or its RPC) refused to connect to a bridge listener: the node's side, with its
/// own error as the source. `Clone` (the source is shared) to travel in [`LinkEvent`]s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the node refused to connect to {addr}: {source}")]
#[non_exhaustive]
pub struct DialError {
    pub addr: SocketAddr,
    #[source]
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

impl DialError {
    pub fn new(addr: SocketAddr, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            addr,
            source: Arc::new(source),
        }
    }
}

/// Why one round of a [`Link`] keeper did not connect the peer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The punch failed (see [`punch::Error`] for whose fault).
    #[error("punch failed: {0}")]
    Punch(#[source] Arc<punch::Error>),
    /// The session could not be bridged (local configuration: alias or port).
    #[error("bridge: {0}")]
    Bridge(#[source] Arc<BridgeError>),
    /// The rendezvous made us the responder of a punch we requested: it broke the protocol.
    #[error("the requester of a punch must be the Kaspa dialer")]
    NotDialer,
    #[error(transparent)]
    Dial(#[from] DialError),
    /// No node connection came to a slot for the session within `waited` (the node's side:
    /// kaspad dials its slots at its own pace, see [`crate::slots`]).
    #[error("the node did not dial a slot for the punched peer within {waited:?}")]
    NoSlot { waited: Duration },
    /// The node accepted the dial request but never connected (the node's side).
    #[error("the node did not connect to {addr} within {waited:?}")]
    NotConnected { addr: SocketAddr, waited: Duration },
}

impl NodeDialer for Arc<crate::node::KaspaNode> {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, Result<(), DialError>> {
        let node = self.clone();
        Box::pin(async move {
            node.connect(addr)
                .await
                .map(|_| ())
                .map_err(|e| DialError::new(addr, e))
        })
    }
}

impl NodeView for Arc<crate::node::KaspaNode> {
    fn has_peer_at(&self, ip: IpAddr) -> BoxFuture<'static, bool> {
        let found = self
            .peers()
            .iter()
            .any(|p| p.net_address().ip().to_canonical() == ip);
        Box::pin(std::future::ready(found))
    }
}

/// Configuration of a [`Link`].
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Peers to keep connected (we request the punches and dial them at the Kaspa level).
    pub peers: Vec<PeerId>,
    /// See [`DEFAULT_MAX_INBOUND`]. (Whether inbound punches happen at all is the punch
    /// client's `accept_inbound`.)
    pub max_inbound: usize,
    /// See [`DEFAULT_RETRY_MIN`].
    pub retry_min: Duration,
    /// See [`DEFAULT_RETRY_MAX`].
    pub retry_max: Duration,
    /// See [`DEFAULT_FIRST_CONNECTION_TIMEOUT`].
    pub first_connection_timeout: Duration,
    /// See [`DEFAULT_INBOUND_IDLE_TIMEOUT`].
    pub inbound_idle_timeout: Duration,
}

impl LinkConfig {
    pub fn new(peers: Vec<PeerId>) -> Self {
        Self {
            peers,
            max_inbound: DEFAULT_MAX_INBOUND,
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            first_connection_timeout: DEFAULT_FIRST_CONNECTION_TIMEOUT,
            inbound_idle_timeout: DEFAULT_INBOUND_IDLE_TIMEOUT,
        }
    }
}

/// What the link did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LinkEvent {
    /// A session with `peer` is up and bridged.
    Punched {
        peer: PeerId,
        outbound: bool,
        path: PathKind,
        remote: SocketAddr,
        elapsed: Duration,
        alias: std::net::Ipv4Addr,
    },
    /// The node was asked to dial the peer's bridge listener.
    Dialed {
        peer: PeerId,
        addr: SocketAddr,
        result: Result<(), DialError>,
    },
    /// The peer's Kaspa connection or session ended.
    Ended { peer: PeerId, outbound: bool },
    /// A punch to `peer` failed; the next try is in `retry_in`.
    PunchFailed {
        peer: PeerId,
        error: LinkError,
        retry_in: Duration,
    },
    /// An inbound session was refused.
    Refused { peer: PeerId, reason: String },
    /// An inbound session's peer had no Kaspa connection with the node for `idle`; the
    /// session was closed, freeing its slot (sent instead of [`LinkEvent::Ended`]).
    IdleClosed { peer: PeerId, idle: Duration },
}

/// Running link tasks. Dropping it stops them and closes every bridged session.
#[derive(Debug)]
pub struct Link {
    events: broadcast::Sender<LinkEvent>,
    /// Keeps the punch client running (it stops when every handle is dropped) even with no
    /// configured peers, when only the accept loop runs.
    client: Client,
    _tasks: JoinSet<()>,
}

impl Link {
    pub fn spawn(
        client: Client,
        incoming: Incoming,
        bridge: Bridge,
        dialer: Arc<dyn NodeDialer>,
        config: LinkConfig,
    ) -> Link {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut tasks = JoinSet::new();
        for peer in config.peers.iter().copied() {
            let keeper = Keeper {
                peer,
                client: client.clone(),
                bridge: bridge.clone(),
                dialer: dialer.clone(),
                config: config.clone(),
                events: events.clone(),
            };
            let span = info_span!("keep", peer = %peer.short());
            tasks.spawn(keeper.run().instrument(span));
        }
        tasks.spawn(accept_loop(
            incoming,
            bridge,
            InboundLimits {
                max_inbound: config.max_inbound,
                max_per_ip: usize::MAX,
                idle_timeout: config.inbound_idle_timeout,
            },
            Arc::new(ViewOf(dialer)),
            Denylist::default(),
            Arc::new(Seen::default()),
            events.clone(),
            watch::Sender::default(), // Link publishes no state
        ));
        Link {
            events,
            client,
            _tasks: tasks,
        }
    }

    /// The punch client (our identity, registration status).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LinkEvent> {
        self.events.subscribe()
    }
}

pub(crate) fn punched(bridged: &BridgedPeer, outbound: bool) -> LinkEvent {
    let info = bridged.info();
    info!(peer = %info.peer.short(), path = %info.path, remote = %info.remote, ms = info.elapsed.as_millis() as u64, alias = %bridged.alias(), outbound, "punched peer connected");
    LinkEvent::Punched {
        peer: info.peer,
        outbound,
        path: info.path,
        remote: info.remote,
        elapsed: info.elapsed,
        alias: bridged.alias(),
    }
}

struct Keeper {
    peer: PeerId,
    client: Client,
    bridge: Bridge,
    dialer: Arc<dyn NodeDialer>,
    config: LinkConfig,
    events: broadcast::Sender<LinkEvent>,
}

impl Keeper {
    async fn run(self) {
        let mut backoff = self.config.retry_min;
        loop {
            if self.bridge.is_live(&self.peer) {
                // The peer punched us (and dials us); wait for that session to end.
                tokio::time::sleep(self.config.retry_min).await;
                continue;
            }
            match self.once().await {
                Ok(()) => backoff = self.config.retry_min,
                Err(error) => {
                    let retry_in = jitter(backoff);
                    warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "punched peer not connected");
                    let _ = self.events.send(LinkEvent::PunchFailed {
                        peer: self.peer,
                        error,
                        retry_in,
                    });
                    tokio::time::sleep(retry_in).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                    continue;
                }
            }
            tokio::time::sleep(jitter(self.config.retry_min)).await;
        }
    }

    /// One punch, bridge and Kaspa dial; returns when the connection has ended (`Ok`) or
    /// failed to come up (`Err`).
    async fn once(&self) -> Result<(), LinkError> {
        let session = self
            .client
            .connect(self.peer)
            .await
            .map_err(|e| LinkError::Punch(Arc::new(e)))?;
        let bridged = self
            .bridge
            .attach(session)
            .await
            .map_err(|e| LinkError::Bridge(Arc::new(e)))?;
        let _ = self.events.send(punched(&bridged, true));
        let addr = bridged.dial_addr().ok_or(LinkError::NotDialer)?;
        let result = self.dialer.dial(addr).await;
        let _ = self.events.send(LinkEvent::Dialed {
            peer: self.peer,
            addr,
            result: result.clone(),
        });
        result?;
        let waited = self.config.first_connection_timeout;
        if tokio::time::timeout(waited, bridged.used()).await.is_err() {
            return Err(LinkError::NotConnected { addr, waited });
        }
        bridged.idle().await;
        let _ = self.events.send(LinkEvent::Ended {
            peer: self.peer,
            outbound: true,
        });
        Ok(())
    }
}

/// Caps on inbound punched sessions (see [`accept_loop`]).
#[derive(Debug, Clone)]
pub struct InboundLimits {
    /// See [`DEFAULT_MAX_INBOUND`].
    pub max_inbound: usize,
    /// Inbound sessions at most per source IP as the rendezvous observed it (see
    /// [`DEFAULT_MAX_INBOUND_PER_IP`]).
    pub max_per_ip: usize,
    /// See [`DEFAULT_INBOUND_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
}

/// Inbound punched peers at most from one IP address (as the rendezvous observed it): keys
/// are free, so one host could otherwise fill every inbound slot with fresh identities (and
/// evade a ban of one alias with the next); 2 still lets two nodes behind one NAT in.
pub const DEFAULT_MAX_INBOUND_PER_IP: usize = 2;

/// The inbound side now and its refusals since start, for status and metrics (published by
/// [`accept_loop`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundState {
    /// Inbound punched sessions bridged now, the distinct IPs they come from, and the most from
    /// one IP (against [`InboundLimits::max_per_ip`]).
    pub held: usize,
    pub ips: usize,
    pub most_from_one_ip: usize,
    /// Sessions refused since start: denied (a mirrored ban), the total cap, the per-IP cap,
    /// and those the bridge could not take.
    pub refused_denied: u64,
    pub refused_full: u64,
    pub refused_per_ip: u64,
    pub not_bridged: u64,
}

/// Takes inbound punched sessions: refuses beyond the caps (total and per observed IP) and
/// denied identities/addresses, bridges the rest, and closes those that carry no Kaspa
/// connection for the idle timeout. Publishes what it holds and refused in `state`.
#[allow(clippy::too_many_arguments)] // the peering's shared parts, each passed once at spawn
pub(crate) async fn accept_loop(
    mut incoming: Incoming,
    bridge: Bridge,
    limits: InboundLimits,
    node: Arc<dyn NodeView>,
    deny: Denylist,
    seen: Arc<Seen>,
    events: broadcast::Sender<LinkEvent>,
    state: watch::Sender<InboundState>,
) {
    let publish = |held: usize, per_ip: &HashMap<IpAddr, usize>| {
        state.send_modify(|s| {
            s.held = held;
            s.ips = per_ip.len();
            s.most_from_one_ip = per_ip.values().copied().max().unwrap_or(0);
        });
    };
    // Each held session's task returns its observed IP and the peer if closed for idling.
    let mut held: JoinSet<(IpAddr, Option<PeerId>)> = JoinSet::new();
    let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
    let mut idle_log = LogThrottle::default();
    let mut refuse_log = LogThrottle::default();
    let idle_timeout = limits.idle_timeout;
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some(session) = next else { break };
                let info = session.info();
                let peer = info.peer;
                let ip = info.observed.ip().to_canonical();
                let refusal = if deny.is_denied(&peer, ip, tokio::time::Instant::now().into_std()) {
                    state.send_modify(|s| s.refused_denied += 1);
                    Some("denied (banned)".to_string())
                } else if held.len() >= limits.max_inbound {
                    state.send_modify(|s| s.refused_full += 1);
                    Some(format!("{} inbound punched peers already", limits.max_inbound))
                } else if per_ip.get(&ip).copied().unwrap_or(0) >= limits.max_per_ip {
                    state.send_modify(|s| s.refused_per_ip += 1);
                    Some(format!("{} inbound punched peers from {ip} already", limits.max_per_ip))
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    if let Some(held_back) = refuse_log.hit(tokio::time::Instant::now().into_std()) {
                        warn!(peer = %peer.short(), %ip, %reason, held_back, total = refuse_log.total(), "inbound session refused");
                    }
                    let _ = events.send(LinkEvent::Refused { peer, reason });
                    continue;
                }
                seen.record(peer, ip);
                match bridge.attach(session).await {
                    Ok(bridged) => {
                        *per_ip.entry(ip).or_default() += 1;
                        let _ = events.send(punched(&bridged, false));
                        let events = events.clone();
                        let node = node.clone();
                        held.spawn(async move {
                            if idle(&bridged, &*node, idle_timeout).await {
                                drop(bridged); // closes the session
                                let _ = events.send(LinkEvent::IdleClosed { peer, idle: idle_timeout });
                                return (ip, Some(peer));
                            }
                            let _ = events.send(LinkEvent::Ended { peer, outbound: false });
                            (ip, None)
                        });
                        publish(held.len(), &per_ip);
                    }
                    Err(e) => {
                        state.send_modify(|s| s.not_bridged += 1);
                        warn!(peer = %peer.short(), error = %e, "inbound session not bridged");
                        let _ = events.send(LinkEvent::Refused { peer, reason: e.to_string() });
                    }
                }
            }
            Some(done) = held.join_next(), if !held.is_empty() => {
                let Ok((ip, idled)) = done else { continue };
                if let Some(n) = per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&ip);
                    }
                }
                publish(held.len(), &per_ip);
                if let Some(peer) = idled {
                    if let Some(held_back) = idle_log.hit(tokio::time::Instant::now().into_std()) {
                        info!(peer = %peer.short(), idle_s = idle_timeout.as_secs_f32(), held_back, total = idle_log.total(), "idle inbound punched session closed (no Kaspa connection)");
                    }
                }
            }
        }
    }
}

/// The IP address each recently seen peer had, as the rendezvous observed it: a ban of a
/// peer's alias also denies that address at the punch layer. Bounded: forgotten in bulk
/// beyond [`Seen::CAPACITY`] entries.
#[derive(Debug, Default)]
pub struct Seen(std::sync::Mutex<HashMap<PeerId, IpAddr>>);

impl Seen {
    /// As many identities as the alias table remembers by default.
    pub const CAPACITY: usize = crate::alias::DEFAULT_CAPACITY;

    pub fn record(&self, peer: PeerId, ip: IpAddr) {
        let mut map = crate::lock(&self.0);
        if map.len() >= Self::CAPACITY && !map.contains_key(&peer) {
            map.clear();
        }
        map.insert(peer, ip);
    }

    pub fn ip_of(&self, peer: &PeerId) -> Option<IpAddr> {
        crate::lock(&self.0).get(peer).copied()
    }
}

/// Waits until `bridged`'s session ends (`false`) or the node has had no Kaspa peer at its
/// alias for `limit` (`true`), counted from now; looks every quarter of `limit`.
pub(crate) async fn idle(bridged: &BridgedPeer, node: &dyn NodeView, limit: Duration) -> bool {
    let alias = IpAddr::V4(bridged.alias());
    let every = (limit / 4).max(Duration::from_millis(50));
    let mut last_used = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = bridged.closed() => return false,
            _ = tokio::time::sleep(every) => {}
        }
        let now = tokio::time::Instant::now();
        if node.has_peer_at(alias).await {
            last_used = now;
        } else if now.duration_since(last_used) >= limit {
            return true;
        }
    }
}

/// Between half and all of `d`, so that peers do not retry in lockstep (punch's own jitter).
pub(crate) fn jitter(d: Duration) -> Duration {
    punch::control::jitter(d, &mut rand::thread_rng())
}
