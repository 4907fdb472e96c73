//! A minimal Kaspa P2P node: kaspa-p2p-lib's real `Adaptor` (tonic server and client, hub,
//! routers) with the [`crate::handshake`] initializer applying kaspad's handshake rules.
//!
//! It speaks Kaspa's gRPC over real TCP, exactly as kaspad does: `Adaptor::bidirectional`
//! serves on a socket address it binds itself, and `Adaptor::connect_peer("host:port")` dials
//! one. That is why punched peers reach it through the loopback [`crate::bridge`] rather than
//! by handing it streams. The demo and the tests use it as a stand-in for kaspad that starts
//! in milliseconds; kaspad-punch runs the real daemon with the same bridge.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaspa_p2p_lib::{Adaptor, ConnectionError, Hub, Peer, PeerKey};
use kaspa_utils::networking::{NetAddress, PeerId as NodeId};
use tokio::sync::broadcast;

use crate::handshake::{HandshakeEvent, Initializer, Rules};

/// The network name kaspad announces on mainnet; nodes on other networks refuse us.
pub const DEFAULT_NETWORK: &str = "kaspa-mainnet";
/// How long [`KaspaNode::start`] waits for the adaptor's listener to accept connections: the
/// adaptor binds in a spawned task and reports nothing, so we probe.
pub const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// Configuration of a [`KaspaNode`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// P2P listen address; port 0 picks a free port (see [`KaspaNode::start`]).
    pub listen: SocketAddr,
    /// Network name; nodes must agree on it.
    pub network: String,
    /// Node id; random when `None` (kaspad draws a new one at every start, too).
    pub node_id: Option<NodeId>,
    /// User agent in Version messages.
    pub user_agent: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            network: DEFAULT_NETWORK.to_string(),
            node_id: None,
            user_agent: format!("/punch-node:{}/", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("could not reserve a P2P port on {addr}: {source}")]
    Port {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("kaspa-p2p-lib adaptor: {0}")]
    Adaptor(#[from] ConnectionError),
    #[error("the P2P listener on {addr} did not come up within {waited:?}")]
    NotListening { addr: SocketAddr, waited: Duration },
}

/// A running Kaspa P2P node. Dropping it stops the listener; call [`KaspaNode::close`] first
/// to also end its peers' connections.
pub struct KaspaNode {
    adaptor: Arc<Adaptor>,
    initializer: Arc<Initializer>,
    banned: Arc<Mutex<HashSet<IpAddr>>>,
    node_id: NodeId,
    p2p_addr: SocketAddr,
}

impl std::fmt::Debug for KaspaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KaspaNode")
            .field("node_id", &self.node_id)
            .field("p2p_addr", &self.p2p_addr)
            .finish()
    }
}

impl KaspaNode {
    /// Starts the node's adaptor (must run inside a tokio runtime). With port 0 a free port is
    /// found by binding and releasing it, because the adaptor does not report the port it
    /// bound; another process could take it in between, which on a test machine is rare.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let p2p_addr = if config.listen.port() == 0 {
            let probe = TcpListener::bind(config.listen).map_err(|source| NodeError::Port {
                addr: config.listen,
                source,
            })?;
            probe.local_addr().map_err(|source| NodeError::Port {
                addr: config.listen,
                source,
            })?
        } else {
            config.listen
        };
        let node_id = config.node_id.unwrap_or_else(random_node_id);
        let hub = Hub::new();
        let banned = Arc::new(Mutex::new(HashSet::new()));
        let rules = Rules {
            network: config.network,
            node_id,
            user_agent: config.user_agent,
        };
        let initializer = Arc::new(Initializer::new(rules, hub.clone(), banned.clone()));
        let adaptor = Adaptor::bidirectional(
            NetAddress::from(p2p_addr),
            hub,
            initializer.clone(),
            Default::default(),
        )?;
        wait_listening(p2p_addr).await?;
        Ok(Self {
            adaptor,
            initializer,
            banned,
            node_id,
            p2p_addr,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Where the node's P2P server listens.
    pub fn p2p_addr(&self) -> SocketAddr {
        self.p2p_addr
    }

    /// Handshake events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HandshakeEvent> {
        self.initializer.subscribe()
    }

    /// Dials a peer at the Kaspa level and runs the handshake (`Adaptor::connect_peer`).
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerKey, ConnectionError> {
        self.adaptor.connect_peer(addr.to_string()).await
    }

    /// Peers that completed the handshake.
    pub fn peers(&self) -> Vec<Peer> {
        self.adaptor.active_peers()
    }

    /// Refuses future inbound connections from `ip` (kaspad bans by IP).
    pub fn ban(&self, ip: IpAddr) {
        self.banned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip);
    }

    /// Ends every peer connection.
    pub async fn close(&self) {
        self.adaptor.close().await;
    }
}

async fn wait_listening(addr: SocketAddr) -> Result<(), NodeError> {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let start = Instant::now();
    while start.elapsed() < LISTEN_WAIT {
        if tokio::net::TcpStream::connect(target).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(NodeError::NotListening {
        addr,
        waited: LISTEN_WAIT,
    })
}

/// A random node id, as kaspad draws one (a version-4-like random UUID).
pub fn random_node_id() -> NodeId {
    NodeId::from_slice(&rand::random::<[u8; 16]>()).expect("a UUID is 16 bytes")
}
