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

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use punch::{Session, SessionInfo};
use punch_proto::{PeerId, Role};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::alias::{AliasError, AliasLease, AliasRange, Aliases, DEFAULT_CAPACITY};

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
    /// Aliases handed to peers: the whole space by default (Linux routes all of
    /// 127.0.0.0/8 to `lo`); elsewhere, the loopback addresses configured for punch.
    pub alias_range: AliasRange,
    /// Identities whose alias is remembered, see [`DEFAULT_CAPACITY`].
    pub alias_capacity: usize,
}

impl BridgeConfig {
    pub fn new(node_p2p: SocketAddr) -> Self {
        Self {
            node_p2p,
            max_streams_per_peer: DEFAULT_MAX_STREAMS_PER_PEER,
            node_connect_timeout: DEFAULT_NODE_CONNECT_TIMEOUT,
            dial_port: 0,
            alias_range: AliasRange::ALL,
            alias_capacity: DEFAULT_CAPACITY,
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
    /// No alias for the peer: every alias is held by a live peer (see [`crate::alias`]).
    #[error(transparent)]
    Alias(#[from] AliasError),
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
    /// This node dials the peer through a slot of a [`crate::slots::SlotPool`]: the node's
    /// connections to the slot are handed to this session.
    SlotDialer,
    /// The peer dials; its connections arrive at the node from the peer's alias.
    Acceptor,
}

/// A node connection handed to a bridged peer by a slot (see [`crate::slots`]).
pub(crate) type Handoff = (TcpStream, SocketAddr);

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
    aliases: Aliases,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Result<Self, BridgeError> {
        let node = match config.node_p2p.ip() {
            ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], config.node_p2p.port())),
            IpAddr::V4(_) => config.node_p2p,
            IpAddr::V6(_) => return Err(BridgeError::NodeAddress(config.node_p2p)),
        };
        Ok(Self {
            node,
            aliases: Aliases::new(config.alias_range, config.alias_capacity),
            config: Arc::new(config),
        })
    }

    /// The node's P2P address the bridge delivers peers' connections to (an unspecified
    /// listen address taken as 127.0.0.1).
    pub fn node(&self) -> SocketAddr {
        self.node
    }

    /// Whether a session with `peer` is bridged right now.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.aliases.is_live(peer)
    }

    /// The alias `peer` has on this machine (from its current or an earlier session).
    pub fn alias_of(&self, peer: &PeerId) -> Option<Ipv4Addr> {
        self.aliases.get(peer)
    }

    /// The bridge's alias table.
    pub fn aliases(&self) -> &Aliases {
        &self.aliases
    }

    /// Bridges `session`: as the Kaspa dialer if we requested the punch (initiator), else as
    /// the acceptor. The returned handle owns the session.
    pub async fn attach(&self, session: Session) -> Result<BridgedPeer, BridgeError> {
        self.attach_inner(session, false)
            .await
            .map(|(peer, _)| peer)
    }

    /// Bridges a session we requested (initiator) whose Kaspa connections come from a slot
    /// of a [`crate::slots::SlotPool`] instead of a listener on the peer's alias: the node
    /// dials the slot, and the pool hands each of its connections to this peer through the
    /// returned sender. A responder session is bridged as [`Bridge::attach`] does.
    pub(crate) async fn attach_for_slot(
        &self,
        session: Session,
    ) -> Result<(BridgedPeer, Option<mpsc::Sender<Handoff>>), BridgeError> {
        self.attach_inner(session, true).await
    }

    async fn attach_inner(
        &self,
        session: Session,
        slot: bool,
    ) -> Result<(BridgedPeer, Option<mpsc::Sender<Handoff>>), BridgeError> {
        let info = session.info().clone();
        let peer = info.peer;
        let lease = self.aliases.lease(peer)?;
        let alias = lease.alias();
        let mut handoff = None;
        let (side, inlet) = match info.role {
            Role::Initiator if slot => {
                let (tx, rx) = mpsc::channel(self.config.max_streams_per_peer.max(1));
                handoff = Some(tx);
                (KaspaSide::SlotDialer, Inlet::Slot(rx))
            }
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
                (KaspaSide::Dialer { addr }, Inlet::Listener(listener))
            }
            Role::Responder => (KaspaSide::Acceptor, Inlet::None),
        };
        let (counts_tx, counts) = watch::channel(Counts::default());
        let span = info_span!("bridge", peer = %peer.short(), %alias, remote = %info.remote);
        info!(parent: &span, side = ?side, "punched peer bridged");
        let driver = PeerDriver {
            session,
            inlet,
            alias,
            node: self.node,
            config: self.config.clone(),
            counts: counts_tx,
            _lease: lease,
        };
        let task = tokio::spawn(driver.run().instrument(span));
        let bridged = BridgedPeer {
            info,
            alias,
            side,
            counts,
            task,
        };
        Ok((bridged, handoff))
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

    /// Where the node should dial this peer, if it is the Kaspa dialer through a listener
    /// of its own (not through a slot).
    pub fn dial_addr(&self) -> Option<SocketAddr> {
        match self.side {
            KaspaSide::Dialer { addr } => Some(addr),
            KaspaSide::SlotDialer | KaspaSide::Acceptor => None,
        }
    }

    /// Whether this node is the Kaspa dialer of the pair (we requested the punch).
    pub fn is_dialer(&self) -> bool {
        !matches!(self.side, KaspaSide::Acceptor)
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

/// Where a dialing peer's Kaspa connections come from.
enum Inlet {
    /// A listener on the peer's alias (the node was asked to dial it).
    Listener(TcpListener),
    /// Connections to a slot, handed over by the slot pool.
    Slot(mpsc::Receiver<Handoff>),
    /// The slot let go of this peer: still the dialing side, with no new connections.
    Closed,
    /// The peer dials: no node connection comes to this side.
    None,
}

impl Inlet {
    async fn accept(&mut self) -> io::Result<Handoff> {
        match self {
            Inlet::Listener(l) => l.accept().await,
            Inlet::Slot(rx) => match rx.recv().await {
                Some(conn) => Ok(conn),
                // The pool let go of this peer's slot: no more connections, none to wait for.
                None => {
                    *self = Inlet::Closed;
                    std::future::pending().await
                }
            },
            Inlet::Closed | Inlet::None => std::future::pending().await,
        }
    }

    fn is_dialer(&self) -> bool {
        !matches!(self, Inlet::None)
    }
}

struct PeerDriver {
    session: Session,
    inlet: Inlet,
    alias: Ipv4Addr,
    node: SocketAddr,
    config: Arc<BridgeConfig>,
    counts: watch::Sender<Counts>,
    /// The peer's alias, held until the driver ends.
    _lease: AliasLease,
}

impl PeerDriver {
    async fn run(mut self) {
        let opener = self.session.opener();
        let mut splices: JoinSet<()> = JoinSet::new();
        loop {
            tokio::select! {
                res = self.inlet.accept() => match res {
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
                    Some(_) if self.inlet.is_dialer() => {
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
