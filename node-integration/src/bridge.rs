//! The bridge between punched sessions and an unmodified Kaspa node on the same machine.
//!
//! Kaspa nodes speak gRPC over real TCP only, so every Kaspa connection to a punched peer is a
//! real loopback TCP connection spliced to one yamux stream of the punched session. The peer's
//! [`crate::alias`] address `127.a.b.c` is used in both directions:
//!
//! ```text
//! Kaspa dialer side (our punch role: initiator, i.e. we asked for the punch)
//!   node --TCP--> 127.a.b.c:port (bridge listener) ==open_stream==> punched session
//! Kaspa acceptor side (punch role: responder, the peer asked)
//!   punched session ==accept_stream==> bridge --TCP from 127.a.b.c:*--> node's P2P port
//! ```
//!
//! So the node sees each punched peer at its own IP, and its per-IP limits, bans and
//! duplicate checks act per punched peer. Exactly one side of a pair dials at the Kaspa
//! level: the one that requested the punch. A stream the peer opens toward the dialing side
//! is reset, and the acceptor side never opens streams, so a pair never ends up with two
//! Kaspa connections on one session (a second session, as after a re-punch, can carry a
//! second connection: the node's duplicate check then refuses it, as for any peer).
//!
//! At most [`DEFAULT_MAX_STREAMS_PER_PEER`] connections are bridged per session; the
//! listener only takes connections from this machine (it is bound to a loopback address) and
//! is closed when the session ends. One driver task per bridged peer owns the session, the
//! listener and the splices; dropping the [`BridgedPeer`] aborts it and closes everything.

use crate::lock;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use punch::{Session, SessionInfo};
use punch_proto::{PeerId, Role};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::alias::peer_alias;

/// Kaspa connections bridged per session at once: one is normal; a few more cover a node
/// that reconnects before it has noticed that its previous connection died.
pub const DEFAULT_MAX_STREAMS_PER_PEER: usize = 4;
/// Copy buffer per direction of a splice: tokio's default of 8 KiB turns every 8 KiB the
/// node writes into its own yamux frame and Noise message; 64 KiB lets a burst of HTTP/2
/// frames cross as fewer, larger ones, for 128 KiB of memory per connection.
pub const SPLICE_BUFFER: usize = 64 * 1024;
/// Delivering a stream to the node's P2P port is a loopback connect: if it takes this long
/// the node is not listening.
pub const DEFAULT_NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Configuration of a [`Bridge`].
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The node's P2P address: where streams from peers that dialed us are delivered. An
    /// unspecified address (`0.0.0.0` or `[::]`, a node listening everywhere) means 127.0.0.1.
    pub node_p2p: SocketAddr,
    /// See [`DEFAULT_MAX_STREAMS_PER_PEER`].
    pub max_streams_per_peer: usize,
    /// See [`DEFAULT_NODE_CONNECT_TIMEOUT`].
    pub node_connect_timeout: Duration,
    /// Port of the listener on a peer's alias when we dial. 0 (the default) takes a free port
    /// per session, so a second session with the same peer can coexist (the node then judges
    /// the duplicate). A fixed port gives each peer one stable address (`127.a.b.c:port`), so
    /// a node told to keep that address connected reconnects by itself after a re-punch; a
    /// second live session with the same peer then fails with [`BridgeError::Bind`].
    pub dial_port: u16,
}

impl BridgeConfig {
    pub fn new(node_p2p: SocketAddr) -> Self {
        Self {
            node_p2p,
            max_streams_per_peer: DEFAULT_MAX_STREAMS_PER_PEER,
            node_connect_timeout: DEFAULT_NODE_CONNECT_TIMEOUT,
            dial_port: 0,
        }
    }
}

/// Why a session could not be bridged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// Local configuration: the node must be reachable over IPv4 loopback.
    #[error("node P2P address {0} is not reachable from 127.0.0.0/8 (use an IPv4 or unspecified address)")]
    NodeAddress(SocketAddr),
    /// Two live peers derive the same loopback address (rare; see `alias`).
    #[error("peer {peer} derives loopback address {alias}, already used by live peer {holder}")]
    AliasCollision {
        alias: Ipv4Addr,
        peer: PeerId,
        holder: PeerId,
    },
    /// The listener on the peer's alias could not be bound (outside Linux, 127.0.0.0/8 other
    /// than 127.0.0.1 may need an alias on the loopback interface).
    #[error("cannot listen on {alias} for peer {peer}: {source}")]
    Bind {
        alias: Ipv4Addr,
        peer: PeerId,
        #[source]
        source: io::Error,
    },
}

/// Which side of the pair dials at the Kaspa level, from this node's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KaspaSide {
    /// This node dials the peer at `addr` (the bridge listener on the peer's alias).
    Dialer { addr: SocketAddr },
    /// The peer dials; its connections arrive at the node from the peer's alias.
    Acceptor,
}

/// Connections of one bridged peer, as the driver reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Kaspa connections being spliced now.
    pub open: usize,
    /// Kaspa connections spliced so far.
    pub total: usize,
    /// Whether the punched session has ended (the driver then stops).
    pub ended: bool,
}

/// Attaches punched sessions to the node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bridge {
    config: Arc<BridgeConfig>,
    node: SocketAddr,
    live: Arc<Mutex<HashMap<Ipv4Addr, (PeerId, usize)>>>,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Result<Self, BridgeError> {
        let node = match config.node_p2p.ip() {
            ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], config.node_p2p.port())),
            IpAddr::V4(_) => config.node_p2p,
            IpAddr::V6(_) => return Err(BridgeError::NodeAddress(config.node_p2p)),
        };
        Ok(Self {
            config: Arc::new(config),
            node,
            live: Arc::default(),
        })
    }

    /// Whether a session with `peer` is bridged right now.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        lock(&self.live)
            .get(&peer_alias(peer))
            .is_some_and(|(p, _)| p == peer)
    }

    /// Bridges `session`: as the Kaspa dialer if we requested the punch (initiator), else as
    /// the acceptor. The returned handle owns the session.
    pub async fn attach(&self, session: Session) -> Result<BridgedPeer, BridgeError> {
        let info = session.info().clone();
        let peer = info.peer;
        let alias = peer_alias(&peer);
        let guard = LiveGuard::claim(self.live.clone(), alias, peer)?;
        let (side, listener) = match info.role {
            Role::Initiator => {
                let bind = |source| BridgeError::Bind {
                    alias,
                    peer,
                    source,
                };
                let listener = TcpListener::bind((alias, self.config.dial_port))
                    .await
                    .map_err(bind)?;
                let addr = listener.local_addr().map_err(bind)?;
                (KaspaSide::Dialer { addr }, Some(listener))
            }
            Role::Responder => (KaspaSide::Acceptor, None),
        };
        let (counts_tx, counts) = watch::channel(Counts::default());
        let span = info_span!("bridge", peer = %peer.short(), %alias, remote = %info.remote);
        info!(parent: &span, side = ?side, "punched peer bridged");
        let driver = PeerDriver {
            session,
            listener,
            alias,
            node: self.node,
            config: self.config.clone(),
            counts: counts_tx,
            _guard: guard,
        };
        let task = tokio::spawn(driver.run().instrument(span));
        Ok(BridgedPeer {
            info,
            alias,
            side,
            counts,
            task,
        })
    }
}

/// A bridged punched peer. Dropping it closes the session and its Kaspa connections.
#[derive(Debug)]
pub struct BridgedPeer {
    info: SessionInfo,
    alias: Ipv4Addr,
    side: KaspaSide,
    counts: watch::Receiver<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl BridgedPeer {
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The peer's loopback address on this machine.
    pub fn alias(&self) -> Ipv4Addr {
        self.alias
    }

    /// Where the node should dial this peer, if it is the Kaspa dialer.
    pub fn dial_addr(&self) -> Option<SocketAddr> {
        match self.side {
            KaspaSide::Dialer { addr } => Some(addr),
            KaspaSide::Acceptor => None,
        }
    }

    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// Resolves when the punched session has ended.
    pub async fn closed(&self) {
        let mut rx = self.counts.clone();
        let _ = rx.wait_for(|c| c.ended).await;
    }

    /// Resolves once a first Kaspa connection was bridged, or the session ended.
    pub async fn used(&self) {
        let mut rx = self.counts.clone();
        let _ = rx.wait_for(|c| c.ended || c.total > 0).await;
    }

    /// Resolves when the session ended, or when every Kaspa connection bridged so far has
    /// closed (at least one having existed): the node dropped the peer.
    pub async fn idle(&self) {
        let mut rx = self.counts.clone();
        let _ = rx
            .wait_for(|c| c.ended || (c.total > 0 && c.open == 0))
            .await;
    }
}

impl Drop for BridgedPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Registration of a live alias; released when the driver ends.
struct LiveGuard {
    live: Arc<Mutex<HashMap<Ipv4Addr, (PeerId, usize)>>>,
    alias: Ipv4Addr,
}

impl LiveGuard {
    fn claim(
        live: Arc<Mutex<HashMap<Ipv4Addr, (PeerId, usize)>>>,
        alias: Ipv4Addr,
        peer: PeerId,
    ) -> Result<Self, BridgeError> {
        {
            let mut map = lock(&live);
            let entry = map.entry(alias).or_insert((peer, 0));
            if entry.0 != peer {
                return Err(BridgeError::AliasCollision {
                    alias,
                    peer,
                    holder: entry.0,
                });
            }
            entry.1 += 1;
        }
        Ok(Self { live, alias })
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.live);
        if let Some(entry) = map.get_mut(&self.alias) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                map.remove(&self.alias);
            }
        }
    }
}

struct PeerDriver {
    session: Session,
    listener: Option<TcpListener>,
    alias: Ipv4Addr,
    node: SocketAddr,
    config: Arc<BridgeConfig>,
    counts: watch::Sender<Counts>,
    _guard: LiveGuard,
}

async fn accept(listener: &Option<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

impl PeerDriver {
    async fn run(mut self) {
        let opener = self.session.opener();
        let mut splices: JoinSet<()> = JoinSet::new();
        loop {
            tokio::select! {
                res = accept(&self.listener) => match res {
                    Ok((tcp, from)) => {
                        if splices.len() >= self.config.max_streams_per_peer {
                            warn!(%from, "too many Kaspa connections to this peer; refused");
                            continue;
                        }
                        let _ = tcp.set_nodelay(true);
                        let opener = opener.clone();
                        self.opened();
                        splices.spawn(async move {
                            match opener.open_stream().await {
                                Ok(stream) => {
                                    let res = splice(tcp, stream).await;
                                    debug!(%from, ?res, "outbound Kaspa connection ended");
                                }
                                Err(e) => warn!(error = %e, "could not open a stream to the peer"),
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "bridge accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                stream = self.session.accept_stream() => match stream {
                    None => break,
                    Some(_) if self.listener.is_some() => {
                        debug!("the peer opened a stream toward the dialing side; reset");
                    }
                    Some(_) if splices.len() >= self.config.max_streams_per_peer => {
                        warn!("too many Kaspa connections from this peer; stream reset");
                    }
                    Some(stream) => {
                        let (alias, node, timeout) = (self.alias, self.node, self.config.node_connect_timeout);
                        self.opened();
                        splices.spawn(async move {
                            match tokio::time::timeout(timeout, connect_as_alias(alias, node)).await {
                                Ok(Ok(tcp)) => {
                                    let res = splice(tcp, stream).await;
                                    debug!(?res, "inbound Kaspa connection ended");
                                }
                                Ok(Err(e)) => warn!(%node, error = %e, "could not deliver a stream to the node"),
                                Err(_) => warn!(%node, "delivering a stream to the node timed out"),
                            }
                        });
                    }
                },
                Some(_) = splices.join_next(), if !splices.is_empty() => {
                    self.counts.send_modify(|c| c.open = c.open.saturating_sub(1));
                }
            }
        }
        info!("punched session ended; bridge closed");
        self.counts.send_modify(|c| {
            c.ended = true;
            c.open = 0;
        });
    }

    fn opened(&self) {
        self.counts.send_modify(|c| {
            c.open += 1;
            c.total += 1;
        });
    }
}

/// Copies both ways between a node connection and a punched stream until both ends close.
async fn splice(mut tcp: TcpStream, mut stream: punch::Stream) -> io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, SPLICE_BUFFER, SPLICE_BUFFER)
        .await
}

/// A TCP connection to `node` from the peer's alias, so the node sees the peer's address.
async fn connect_as_alias(alias: Ipv4Addr, node: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((alias, 0)))?;
    let tcp = socket.connect(node).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
