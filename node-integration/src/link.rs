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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use punch::throttle::LogThrottle;
use punch::{Client, Incoming, PathKind};
use punch_proto::PeerId;
use tokio::sync::broadcast;
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

/// How the node is asked to connect to a bridge listener.
pub trait NodeDialer: Send + Sync + 'static {
    /// Asks the node to connect to `addr`. Returns an error if the node refused outright;
    /// `Ok` may mean "requested" for nodes that connect asynchronously.
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, Result<(), DialError>>;

    /// Whether the node has a Kaspa peer (handshake done) at `ip` now. An inbound punched
    /// session counts as carrying a Kaspa connection only then: a bare TCP connection to
    /// the node's P2P port, which the node's gRPC server keeps open without a request (no
    /// timeout there), does not. An implementation that cannot tell (its query failed)
    /// should answer `true`, so a local fault never closes an honest peer.
    fn has_peer_at(&self, ip: IpAddr) -> BoxFuture<'static, bool>;
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
            config.max_inbound,
            dialer,
            config.inbound_idle_timeout,
            events.clone(),
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

fn punched(bridged: &BridgedPeer, outbound: bool) -> LinkEvent {
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

async fn accept_loop(
    mut incoming: Incoming,
    bridge: Bridge,
    max_inbound: usize,
    node: Arc<dyn NodeDialer>,
    idle_timeout: Duration,
    events: broadcast::Sender<LinkEvent>,
) {
    // Each held session's task returns the peer if it was closed for being idle.
    let mut held: JoinSet<Option<PeerId>> = JoinSet::new();
    let mut idle_log = LogThrottle::default();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some(session) = next else { break };
                let peer = session.info().peer;
                if held.len() >= max_inbound {
                    let reason = format!("{max_inbound} inbound punched peers already");
                    warn!(peer = %peer.short(), %reason, "inbound session refused");
                    let _ = events.send(LinkEvent::Refused { peer, reason });
                    continue;
                }
                match bridge.attach(session).await {
                    Ok(bridged) => {
                        let _ = events.send(punched(&bridged, false));
                        let events = events.clone();
                        let node = node.clone();
                        held.spawn(async move {
                            if idle(&bridged, &*node, idle_timeout).await {
                                drop(bridged); // closes the session
                                let _ = events.send(LinkEvent::IdleClosed { peer, idle: idle_timeout });
                                return Some(peer);
                            }
                            let _ = events.send(LinkEvent::Ended { peer, outbound: false });
                            None
                        });
                    }
                    Err(e) => {
                        warn!(peer = %peer.short(), error = %e, "inbound session not bridged");
                        let _ = events.send(LinkEvent::Refused { peer, reason: e.to_string() });
                    }
                }
            }
            Some(done) = held.join_next(), if !held.is_empty() => {
                if let Ok(Some(peer)) = done {
                    if let Some(held_back) = idle_log.hit(tokio::time::Instant::now().into_std()) {
                        info!(peer = %peer.short(), idle_s = idle_timeout.as_secs_f32(), held_back, total = idle_log.total(), "idle inbound punched session closed (no Kaspa connection)");
                    }
                }
            }
        }
    }
}

/// Waits until `bridged`'s session ends (`false`) or the node has had no Kaspa peer at its
/// alias for `limit` (`true`), counted from now; looks every quarter of `limit`.
async fn idle(bridged: &BridgedPeer, node: &dyn NodeDialer, limit: Duration) -> bool {
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
fn jitter(d: Duration) -> Duration {
    punch::control::jitter(d, &mut rand::thread_rng())
}
