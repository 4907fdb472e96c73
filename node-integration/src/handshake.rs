//! Kaspa's P2P handshake with kaspad's acceptance rules, as a kaspa-p2p-lib
//! [`ConnectionInitializer`], written here against the library's public API (no code taken
//! from rusty-kaspa's flows crate).
//!
//! Both sides run the same sequence, whichever dialed (kaspa-p2p-lib calls the initializer
//! for outbound connections inside `connect_peer`, and for inbound ones from its gRPC
//! handler):
//!
//! ```text
//! send Version(protocol 11, network name, node id)
//!     recv Version  -> send Verack          (concurrently)
//!     recv Verack                           (the answer to our Version)
//! checks, in kaspad's order:
//!     duplicate: the hub already has (peer node id, peer IP)   -> PeerAlreadyExists
//!     self-connection: peer node id == ours                    -> LoopbackConnection
//!     network name differs                                     -> WrongNetwork
//!     protocol version < MIN_PROTOCOL_VERSION                  -> VersionMismatch
//! record the peer's properties (user agent, versions, clock offset) on the router
//! send Ready, recv Ready
//! ```
//!
//! An inbound connection from a banned IP is refused before anything is sent, as kaspad does.
//! On an error kaspa-p2p-lib sends a `Reject` with the reason and closes the connection.
//! Each step is reported as a [`HandshakeEvent`] (for the demo's timeline and the tests).
//! After `Ready` the only flow registered answers `Ping` with `Pong`; any other message is
//! unrouted and kaspa-p2p-lib closes the connection, which is all a handshake node needs.

use crate::lock;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kaspa_p2p_lib::common::ProtocolError;
use kaspa_p2p_lib::convert::model::version::Version;
use kaspa_p2p_lib::pb::{self, kaspad_message::Payload};
use kaspa_p2p_lib::{
    dequeue_with_timeout, make_message, ConnectionInitializer, Hub, KaspadMessagePayloadType,
    PeerProperties, Router,
};
use kaspa_utils::networking::PeerId as NodeId;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tracing::{debug, info};

/// The protocol version we announce: kaspad 2.1's current one.
pub const PROTOCOL_VERSION: u32 = 11;
/// The oldest version kaspad 2.1 still accepts (it runs its v10 flows for such peers).
pub const MIN_PROTOCOL_VERSION: u32 = 10;
/// How long to wait for the peer's Version and Verack: kaspa-p2p-lib's own handshake waits
/// this long, so a punched peer is held to the same standard as any other.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(4);
/// How long to wait for the peer's Ready: kaspa-p2p-lib's value, for the same reason; it is
/// longer because the peer registers all its flows before sending Ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(8);
/// Events kept for slow observers; older ones are dropped (observers see a lag error).
pub const EVENT_BUFFER: usize = 1024;

/// One step of one connection's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// The peer's Version arrived (we answer it with Verack).
    Version {
        protocol_version: u32,
        network: String,
    },
    /// The peer's Verack arrived (it accepted our Version).
    Verack,
    /// Both Ready messages crossed: the peer is connected at the Kaspa level.
    Ready { protocol_version: u32 },
    /// The handshake failed (the reason as kaspa-p2p-lib's error prints it).
    Rejected { reason: String },
}

/// A handshake step of the connection with `addr`.
#[derive(Debug, Clone)]
pub struct HandshakeEvent {
    pub at: Instant,
    /// The peer's address as the node sees it (a punched peer's 127.a.b.c alias).
    pub addr: SocketAddr,
    /// Whether this node dialed.
    pub outbound: bool,
    pub step: Step,
}

/// The rules a node applies, set from its configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Network name both sides must announce, e.g. `kaspa-mainnet` or `kaspa-testnet-10`.
    pub network: String,
    /// This node's id (a UUID in Kaspa); a peer announcing the same id is ourselves.
    pub node_id: NodeId,
    /// Announced in Version messages.
    pub user_agent: String,
}

/// kaspad's handshake rules as a kaspa-p2p-lib connection initializer.
#[derive(Debug)]
pub struct Initializer {
    rules: Rules,
    hub: Hub,
    banned: Arc<Mutex<HashSet<IpAddr>>>,
    events: broadcast::Sender<HandshakeEvent>,
    /// The pong flows of live connections; dropping the initializer (with its node) ends them.
    flows: Mutex<JoinSet<()>>,
}

impl Initializer {
    /// `hub` must be the hub given to the adaptor (the duplicate check looks there).
    pub fn new(rules: Rules, hub: Hub, banned: Arc<Mutex<HashSet<IpAddr>>>) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            rules,
            hub,
            banned,
            events,
            flows: Mutex::new(JoinSet::new()),
        }
    }

    /// Handshake events of every connection from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HandshakeEvent> {
        self.events.subscribe()
    }

    fn emit(&self, router: &Router, step: Step) {
        let _ = self.events.send(HandshakeEvent {
            at: Instant::now(),
            addr: router.net_address(),
            outbound: router.is_outbound(),
            step,
        });
    }

    fn version_message(&self) -> pb::VersionMessage {
        let timestamp = unix_ms();
        pb::VersionMessage {
            protocol_version: PROTOCOL_VERSION,
            services: 0,
            timestamp,
            address: None,
            id: self.rules.node_id.as_bytes().to_vec(),
            user_agent: self.rules.user_agent.clone(),
            disable_relay_tx: false,
            subnetwork_id: None,
            network: self.rules.network.clone(),
        }
    }

    async fn run(&self, router: &Arc<Router>) -> Result<u32, ProtocolError> {
        let ip = router.net_address().ip().to_canonical();
        if !router.is_outbound() && lock(&self.banned).contains(&ip) {
            return Err(ProtocolError::Other("peer is banned"));
        }
        // Subscribe before starting the receive loop, or early messages find no route.
        let mut version_rx = router.subscribe(vec![KaspadMessagePayloadType::Version]);
        let mut verack_rx = router.subscribe(vec![KaspadMessagePayloadType::Verack]);
        let mut ready_rx = router.subscribe(vec![KaspadMessagePayloadType::Ready]);
        let ping_rx = router.subscribe(vec![KaspadMessagePayloadType::Ping]);
        router.start();

        router
            .enqueue(make_message!(Payload::Version, self.version_message()))
            .await?;
        let receive_version = async {
            let v = dequeue_with_timeout!(version_rx, Payload::Version, VERSION_TIMEOUT)?;
            self.emit(
                router,
                Step::Version {
                    protocol_version: v.protocol_version,
                    network: v.network.clone(),
                },
            );
            router
                .enqueue(make_message!(Payload::Verack, pb::VerackMessage {}))
                .await?;
            Ok::<_, ProtocolError>(v)
        };
        let receive_verack = async {
            dequeue_with_timeout!(verack_rx, Payload::Verack, VERSION_TIMEOUT)?;
            self.emit(router, Step::Verack);
            Ok::<_, ProtocolError>(())
        };
        let (theirs, ()) = tokio::try_join!(receive_version, receive_verack)?;
        let theirs = Version::try_from(theirs)?;
        router.set_identity(theirs.id);

        if self.hub.has_peer(router.key()) {
            return Err(ProtocolError::PeerAlreadyExists(router.key()));
        }
        if theirs.id == self.rules.node_id {
            return Err(ProtocolError::LoopbackConnection(router.key()));
        }
        if theirs.network != self.rules.network {
            return Err(ProtocolError::WrongNetwork(
                self.rules.network.clone(),
                theirs.network,
            ));
        }
        if theirs.protocol_version < MIN_PROTOCOL_VERSION {
            return Err(ProtocolError::VersionMismatch(
                PROTOCOL_VERSION,
                theirs.protocol_version,
            ));
        }
        let applied = theirs.protocol_version.min(PROTOCOL_VERSION);
        let now_ms = unix_ms();
        router.set_properties(Arc::new(PeerProperties {
            user_agent: theirs.user_agent,
            advertised_protocol_version: theirs.protocol_version,
            protocol_version: applied,
            disable_relay_tx: theirs.disable_relay_tx,
            subnetwork_id: theirs.subnetwork_id,
            time_offset: now_ms.saturating_sub(theirs.timestamp as i64),
        }));

        router
            .enqueue(make_message!(Payload::Ready, pb::ReadyMessage {}))
            .await?;
        dequeue_with_timeout!(ready_rx, Payload::Ready, READY_TIMEOUT)?;
        {
            let mut flows = lock(&self.flows);
            // Reap the flows of closed connections so the set holds only live ones.
            while flows.try_join_next().is_some() {}
            flows.spawn(pong_flow(router.clone(), ping_rx));
        }
        Ok(applied)
    }
}

#[tonic::async_trait]
impl ConnectionInitializer for Initializer {
    async fn initialize_connection(&self, router: Arc<Router>) -> Result<(), ProtocolError> {
        match self.run(&router).await {
            Ok(protocol_version) => {
                info!(peer = %router, outbound = router.is_outbound(), protocol_version, "kaspa handshake complete");
                self.emit(&router, Step::Ready { protocol_version });
                Ok(())
            }
            Err(e) => {
                debug!(peer = %router, error = %e, "kaspa handshake failed");
                self.emit(
                    &router,
                    Step::Rejected {
                        reason: e.to_string(),
                    },
                );
                Err(e)
            }
        }
    }
}

/// Answers pings for as long as the connection lives. It ends by itself: closing the router
/// drops its routes, which ends `recv`.
async fn pong_flow(router: Arc<Router>, mut pings: kaspa_p2p_lib::IncomingRoute) {
    while let Some(msg) = pings.recv().await {
        let Some(Payload::Ping(ping)) = msg.payload else {
            break;
        };
        let pong = make_message!(Payload::Pong, pb::PongMessage { nonce: ping.nonce });
        if router.enqueue(pong).await.is_err() {
            break;
        }
    }
}

/// Milliseconds since the Unix epoch, as Kaspa's Version timestamps count.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
