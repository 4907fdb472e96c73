//! punch-demo: a rendezvous and two Kaspa P2P nodes, each behind its own punch client, punch
//! to each other, bridge the session ([`punch_node::bridge`]) and run Kaspa's handshake over
//! it. The library half of the `punch-demo` binary (`src/main.rs`), kept a library so the
//! tests can run the loopback demo in-process.
//!
//! ```text
//! A, B register with the rendezvous
//! A: Client::connect(B)  -> offer to both -> simultaneous dials -> authenticated session
//! A: bridge listener 127.b.b.b:p (B's alias)     B: bridge delivers to its node from 127.a.a.a
//! A's node dials 127.b.b.b:p -> Version / Verack / Ready both ways over the punched session
//! ```
//!
//! One side of the demo is a [`DemoPeer`]: a Kaspa node, a punch client and a bridge. [`run`]
//! runs both peers and a rendezvous in this process on loopback; [`nat`] runs each
//! in its own process inside a network namespace, behind its own NAT router, with the same
//! [`DemoPeer`] code.
//!
//! Everything is recorded on a [`Timeline`] with milliseconds since the start, punch's own
//! steps (offer, first dial) from its event stream ([`Client::events`]).

pub mod nat;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use punch::{Client, Config as PunchConfig, Event as PunchEvent, Incoming};
use punch_proto::{Keypair, PeerId};

use punch_node::bridge::{Bridge, BridgeConfig, BridgedPeer};
use punch_node::handshake::{HandshakeEvent, Step};
use punch_node::node::{KaspaNode, NodeConfig, DEFAULT_NETWORK};

/// Rendezvous registration must happen within this time (milliseconds normally).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// The punch: offer, dial moment, authentication; the client's own window is 10 s.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Both nodes must report Ready within this time of the Kaspa dial: kaspa-p2p-lib allows 4 s
/// for Version/Verack and 8 s for Ready, so 15 s covers a slow but valid handshake.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a NAT-mode peer keeps its session after its handshake ended, unless the other
/// side closes it first or the demo ends both (see [`Finished`]).
pub const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Network name of node A.
    pub network_a: String,
    /// Network name of node B (a different name shows the rejection).
    pub network_b: String,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            network_a: DEFAULT_NETWORK.into(),
            network_b: DEFAULT_NETWORK.into(),
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: Duration,
    pub who: String,
    pub what: String,
}

/// Timestamped events from the demo, punch's event stream and the nodes. Shared, append-only.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    /// The wall-clock time of `start`: entries from other processes (NAT mode) arrive with
    /// wall-clock times, which all processes on one machine share.
    start_wall: SystemTime,
    /// Also print each entry on stdout as an [`EVENT_PREFIX`] line (the NAT mode's peers).
    export: AtomicBool,
    entries: Mutex<Vec<Entry>>,
}

/// Prefix of an exported timeline line: `@event <unix micros> <who> <what>`.
pub const EVENT_PREFIX: &str = "@event ";

impl Timeline {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            start_wall: SystemTime::now(),
            export: AtomicBool::new(false),
            entries: Mutex::default(),
        })
    }

    /// From now on, also prints every entry on stdout for a parent process to collect.
    pub fn export(&self) {
        self.export.store(true, Ordering::Relaxed);
    }

    pub fn record(&self, who: &str, what: impl Into<String>) {
        self.record_at(Instant::now(), who, what);
    }

    pub fn record_at(&self, at: Instant, who: &str, what: impl Into<String>) {
        let at = at.saturating_duration_since(self.start);
        let what = what.into();
        if self.export.load(Ordering::Relaxed) {
            let wall = self.start_wall + at;
            let micros = wall
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            let line = format!("{EVENT_PREFIX}{micros} {who} {}\n", what.replace('\n', " "));
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        lock(&self.entries).push(Entry {
            at,
            who: who.to_string(),
            what,
        });
    }

    /// Adds an entry exported by another process (see [`Timeline::export`]); `None` if `line`
    /// is not one.
    pub fn import(&self, line: &str) -> Option<()> {
        let rest = line.strip_prefix(EVENT_PREFIX)?;
        let (micros, rest) = rest.split_once(' ')?;
        let (who, what) = rest.split_once(' ')?;
        let wall = UNIX_EPOCH + Duration::from_micros(micros.parse().ok()?);
        let at = wall.duration_since(self.start_wall).unwrap_or_default();
        lock(&self.entries).push(Entry {
            at,
            who: who.to_string(),
            what: what.to_string(),
        });
        Some(())
    }

    /// Entries sorted by time.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v = lock(&self.entries).clone();
        v.sort_by_key(|e| e.at);
        v
    }

    /// The timeline as a table.
    pub fn render(&self) -> String {
        let mut out = String::from("      ms  who  event\n");
        for e in self.entries() {
            let _ = writeln!(out, "{:>8}  {:<3}  {}", e.at.as_millis(), e.who, e.what);
        }
        out
    }
}

/// The outcome of a demo run.
#[derive(Debug, Clone)]
pub struct Report {
    pub a_ready: bool,
    pub b_ready: bool,
    /// Rejection reasons, if any side refused the handshake.
    pub rejections: Vec<String>,
    /// "loopback" or "nat".
    pub mode: &'static str,
    /// A description of both nodes for the output.
    pub setup: String,
}

impl Report {
    pub fn success(&self) -> bool {
        self.a_ready && self.b_ready
    }
}

/// Why the demo could not run to the handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error("{stage}: {reason}")]
    Setup { stage: &'static str, reason: String },
}

pub(crate) fn setup_err(stage: &'static str) -> impl Fn(String) -> DemoError {
    move |reason| DemoError::Setup { stage, reason }
}

/// Runs the demo on loopback, everything in this process, and records it on `timeline`.
pub async fn run(config: DemoConfig, timeline: Arc<Timeline>) -> Result<Report, DemoError> {
    let server = punch_rendezvous::Server::spawn(punch_rendezvous::Config::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Keypair::generate().map_err(|e| setup_err("rendezvous key")(e.to_string()))?,
    ))
    .await
    .map_err(|e| setup_err("rendezvous")(e.to_string()))?;
    timeline.record(
        "R",
        format!("rendezvous listening on {}", server.local_addr()),
    );
    let peer_config = |who: &str, network: &str, accept| -> Result<PeerConfig, DemoError> {
        Ok(PeerConfig {
            who: who.to_string(),
            network: network.to_string(),
            rendezvous: server.local_addr(),
            rendezvous_key: server.identity(),
            keypair: Keypair::generate().map_err(|e| setup_err("punch key")(e.to_string()))?,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            accept,
        })
    };
    let b = DemoPeer::start(peer_config("B", &config.network_b, true)?, &timeline).await?;
    let a = DemoPeer::start(peer_config("A", &config.network_a, false)?, &timeline).await?;
    let b_id = b.id();
    let (a, b) = tokio::join!(a.run(Some((b_id, "B"))), b.run(None));
    let (a, b) = (a?, b?);
    // Only now that both are done: a side that closed at its own Ready could cut off its
    // Ready message to the other, which it has only queued.
    let (a, b) = (a.close().await, b.close().await);
    Ok(Report {
        a_ready: a.ready,
        b_ready: b.ready,
        rejections: a.rejection.into_iter().chain(b.rejection).collect(),
        mode: "loopback",
        setup: format!("{}\n{}", a.setup, b.setup),
    })
}

/// One side of the demo.
#[derive(Debug)]
pub struct PeerConfig {
    /// The demo's name for it: "A" or "B".
    pub who: String,
    /// The Kaspa network name its node announces.
    pub network: String,
    pub rendezvous: SocketAddr,
    pub rendezvous_key: PeerId,
    pub keypair: Keypair,
    /// The punch client's local address: 127.0.0.1:0 on loopback, 0.0.0.0:0 behind a NAT.
    pub bind: SocketAddr,
    /// Whether it takes inbound punches.
    pub accept: bool,
}

/// How one side's handshake ended.
#[derive(Debug, Clone)]
pub struct PeerOutcome {
    pub ready: bool,
    pub rejection: Option<String>,
    /// One line describing the node, its identity and the punched peer's alias.
    pub setup: String,
}

/// A side whose handshake has ended, still connected: a node that reached Ready has only
/// queued its own Ready message, so closing at once could cut it off from the other side.
/// Close when the other side is done too ([`Finished::close`]) or when it leaves
/// ([`Finished::hold`]).
#[derive(Debug)]
pub struct Finished {
    pub outcome: PeerOutcome,
    node: KaspaNode,
    peer: BridgedPeer,
}

impl Finished {
    /// Ends the node's connections and the punched session.
    pub async fn close(self) -> PeerOutcome {
        self.node.close().await;
        drop(self.peer);
        self.outcome
    }

    /// Keeps the session until the other side closes it or `max` passes, then closes.
    pub async fn hold(self, max: Duration) -> PeerOutcome {
        let _ = tokio::time::timeout(max, self.peer.closed()).await;
        self.close().await
    }
}

/// One side of the demo, registered with the rendezvous: a Kaspa node (kaspa-p2p-lib's
/// adaptor with kaspad's handshake rules) on loopback and a punch client.
#[derive(Debug)]
pub struct DemoPeer {
    who: String,
    node: KaspaNode,
    client: Client,
    incoming: Incoming,
    timeline: Arc<Timeline>,
    /// Records the client's punch events into the timeline while the peer lives.
    _events: AbortOnDrop,
}

/// A task that ends when its handle is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DemoPeer {
    /// Starts the node and the punch client and waits for the registration.
    pub async fn start(config: PeerConfig, timeline: &Arc<Timeline>) -> Result<Self, DemoError> {
        let who = config.who;
        let node = KaspaNode::start(NodeConfig {
            network: config.network,
            ..NodeConfig::default()
        })
        .await
        .map_err(|e| setup_err("kaspa node")(e.to_string()))?;
        let mut punch = PunchConfig::new(config.rendezvous, config.rendezvous_key, config.keypair);
        punch.bind = config.bind;
        punch.accept_inbound = config.accept;
        let (client, incoming) = Client::start(punch)
            .await
            .map_err(|e| setup_err("punch client")(e.to_string()))?;
        let events = AbortOnDrop(tokio::spawn(record_punch_events(
            client.events(),
            timeline.clone(),
            who.clone(),
        )));
        let observed = client
            .wait_registered(REGISTER_TIMEOUT)
            .await
            .map_err(|e| setup_err("registration")(e.to_string()))?;
        timeline.record(
            &who,
            format!(
                "punch: registered as {} (observed {observed})",
                client.id().short()
            ),
        );
        Ok(Self {
            who,
            node,
            client,
            incoming,
            timeline: timeline.clone(),
            _events: events,
        })
    }

    /// The punch identity.
    pub fn id(&self) -> PeerId {
        self.client.id()
    }

    /// Punches to `target` (the requester, which also dials at the Kaspa level) or waits for
    /// the other side's punch (`None`), bridges the session to the node and waits for the
    /// handshake's end.
    pub async fn run(self, target: Option<(PeerId, &str)>) -> Result<Finished, DemoError> {
        let Self {
            who,
            node,
            client,
            mut incoming,
            timeline,
            _events,
        } = self;
        let who = who.as_str();
        let mut watcher = tokio::spawn(watch_handshake(
            node.subscribe(),
            timeline.clone(),
            who.to_string(),
        ));

        let session = match target {
            Some((id, name)) => {
                timeline.record(who, format!("punch: connect to {name} ({})", id.short()));
                tokio::time::timeout(PUNCH_TIMEOUT, client.connect(id))
                    .await
                    .map_err(|_| setup_err("punch")("timed out".into()))?
                    .map_err(|e| setup_err("punch")(e.to_string()))?
            }
            None => tokio::time::timeout(PUNCH_TIMEOUT, incoming.next())
                .await
                .map_err(|_| setup_err("punch")("no inbound punch in time".into()))?
                .ok_or_else(|| setup_err("punch")("client stopped".into()))?,
        };
        let info = session.info();
        timeline.record(
            who,
            format!(
                "punch: authenticated session, path {} to {} (role {:?}, {} ms since request)",
                info.path,
                info.remote,
                info.role,
                info.elapsed.as_millis()
            ),
        );

        let bridge = Bridge::new(BridgeConfig::new(node.p2p_addr()))
            .map_err(|e| setup_err("bridge")(e.to_string()))?;
        let peer = bridge
            .attach(session)
            .await
            .map_err(|e| setup_err("bridge")(e.to_string()))?;
        let dialer = peer.dial_addr();
        match dialer {
            Some(dial) => {
                timeline.record(
                    who,
                    format!("kaspa: node {who} dials {dial} (the peer's alias)"),
                );
                match tokio::time::timeout(READY_TIMEOUT, node.connect(dial)).await {
                    Ok(Err(e)) => timeline.record(who, format!("kaspa: dial failed: {e}")),
                    Err(_) => timeline.record(who, "kaspa: dial timed out"),
                    Ok(Ok(_)) => {}
                }
            }
            None => timeline.record(
                who,
                format!(
                    "bridge: delivers the peer's streams to node {who} at {} from {}",
                    node.p2p_addr(),
                    peer.alias()
                ),
            ),
        }
        let watched = tokio::time::timeout(READY_TIMEOUT, &mut watcher).await;
        // A watcher that timed out must not outlive the run.
        watcher.abort();
        let (ready, rejection) = watched.ok().and_then(Result::ok).unwrap_or((false, None));
        let setup = format!(
            "node {who}: Kaspa node id {}, P2P {}, punch id {}, sees its peer as {}",
            node.node_id(),
            node.p2p_addr(),
            client.id().short(),
            peer.alias(),
        );
        Ok(Finished {
            outcome: PeerOutcome {
                ready,
                rejection,
                setup,
            },
            node,
            peer,
        })
    }
}

/// Records the punch client's offers, first dials and failures (the session itself is
/// recorded by [`DemoPeer::run`]) until the client stops.
async fn record_punch_events(
    mut events: tokio::sync::broadcast::Receiver<PunchEvent>,
    timeline: Arc<Timeline>,
    who: String,
) {
    let mut dialed = std::collections::HashSet::new();
    loop {
        match events.recv().await {
            Ok(PunchEvent::Offer {
                observed,
                locals,
                dial_delay,
                ..
            }) => timeline.record(
                &who,
                format!(
                    "punch: offer received (peer seen at {observed}, {locals} local address(es), dial in {} ms)",
                    dial_delay.as_millis()
                ),
            ),
            Ok(PunchEvent::Dial {
                session_id, addr, ..
            }) if dialed.insert(session_id) => {
                timeline.record(&who, format!("punch: first dial to {addr}"))
            }
            Ok(PunchEvent::Failed { error, .. }) => {
                timeline.record(&who, format!("punch: failed: {error}"))
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Records the node's handshake steps until Ready or a rejection: (ready, rejection).
async fn watch_handshake(
    mut events: tokio::sync::broadcast::Receiver<HandshakeEvent>,
    timeline: Arc<Timeline>,
    who: String,
) -> (bool, Option<String>) {
    while let Ok(ev) = events.recv().await {
        let (what, end) = match &ev.step {
            Step::Version {
                protocol_version,
                network,
            } => (
                format!(
                    "kaspa: Version received from {} (protocol {protocol_version}, network {network})",
                    ev.addr
                ),
                None,
            ),
            Step::Verack => (format!("kaspa: Verack received from {}", ev.addr), None),
            Step::Ready { protocol_version } => (
                format!(
                    "kaspa: Ready ({}, protocol {protocol_version}): peer {} connected",
                    if ev.outbound { "outbound" } else { "inbound" },
                    ev.addr
                ),
                Some((true, None)),
            ),
            Step::Rejected { reason } => (
                format!("kaspa: handshake with {} rejected: {reason}", ev.addr),
                Some((false, Some(reason.clone()))),
            ),
            // `Step` is non-exhaustive: a step added later is shown, and the wait goes on.
            other => (format!("kaspa: {other:?} from {}", ev.addr), None),
        };
        timeline.record_at(ev.at, &who, what);
        if let Some(end) = end {
            return end;
        }
    }
    (false, None)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
