//! The demo: a rendezvous and two Kaspa P2P nodes, each behind its own punch client, punch to
//! each other, bridge the session and run Kaspa's handshake over it.
//!
//! ```text
//! A, B register with the rendezvous
//! A: Client::connect(B)  -> offer to both -> simultaneous dials -> authenticated session
//! A: bridge listener 127.b.b.b:p (B's alias)     B: bridge delivers to its node from 127.a.a.a
//! A's node dials 127.b.b.b:p -> Version / Verack / Ready both ways over the punched session
//! ```
//!
//! Everything is recorded on a [`Timeline`] with milliseconds since the start. Punch-internal
//! steps (offer, first dial) are not visible through punch's API; the `punch-demo` binary adds
//! them from punch's tracing events (see its `timeline_layer`). This runs on loopback
//! (127.0.0.1, no NAT in between); the NAT-namespace mode is for later.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use punch::{Client, Config as PunchConfig};
use punch_proto::Keypair;
use tokio::task::JoinSet;

use crate::bridge::{Bridge, BridgeConfig};
use crate::handshake::Step;
use crate::node::{KaspaNode, NodeConfig, DEFAULT_NETWORK};

/// Rendezvous registration must happen within this time on loopback (milliseconds normally).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// The punch: offer, dial moment, authentication; the client's own window is 10 s.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Both nodes must report Ready within this time of the Kaspa dial: kaspa-p2p-lib allows 4 s
/// for Version/Verack and 8 s for Ready, so 15 s covers a slow but valid handshake.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

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

/// Timestamped events from the demo and from punch's tracing events. Shared, append-only.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    entries: Mutex<Vec<Entry>>,
    /// Punch short ids (first characters of the identity) to the demo's names "A" and "B".
    names: Mutex<HashMap<String, String>>,
}

impl Timeline {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            entries: Mutex::default(),
            names: Mutex::default(),
        })
    }

    pub fn record(&self, who: &str, what: impl Into<String>) {
        self.record_at(Instant::now(), who, what);
    }

    pub fn record_at(&self, at: Instant, who: &str, what: impl Into<String>) {
        lock(&self.entries).push(Entry {
            at: at.saturating_duration_since(self.start),
            who: who.to_string(),
            what: what.into(),
        });
    }

    /// Names a punch identity (by its short form, as punch's logs print it).
    pub fn name(&self, short_id: &str, who: &str) {
        lock(&self.names).insert(short_id.to_string(), who.to_string());
    }

    /// The demo name of a punch short id, if it is one of ours.
    pub fn who(&self, short_id: &str) -> Option<String> {
        lock(&self.names).get(short_id).cloned()
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
    /// "loopback" (the only mode so far).
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

fn setup_err(stage: &'static str) -> impl Fn(String) -> DemoError {
    move |reason| DemoError::Setup { stage, reason }
}

/// Runs the demo on loopback and records it on `timeline`.
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

    let node_a = start_node(&config.network_a).await?;
    let node_b = start_node(&config.network_b).await?;
    let mut watchers = JoinSet::new();
    for (who, node) in [("A", &node_a), ("B", &node_b)] {
        let mut events = node.subscribe();
        let timeline = timeline.clone();
        watchers.spawn(async move {
            let mut ready = None;
            let mut rejected = None;
            while let Ok(ev) = events.recv().await {
                let what = match &ev.step {
                    Step::Version {
                        protocol_version,
                        network,
                    } => format!(
                        "kaspa: Version received from {} (protocol {protocol_version}, network {network})",
                        ev.addr
                    ),
                    Step::Verack => format!("kaspa: Verack received from {}", ev.addr),
                    Step::Ready { protocol_version } => {
                        ready = Some(ev.outbound);
                        format!(
                            "kaspa: Ready ({}, protocol {protocol_version}): peer {} connected",
                            if ev.outbound { "outbound" } else { "inbound" },
                            ev.addr
                        )
                    }
                    Step::Rejected { reason } => {
                        rejected = Some(reason.clone());
                        format!("kaspa: handshake with {} rejected: {reason}", ev.addr)
                    }
                };
                timeline.record_at(ev.at, who, what);
                if ready.is_some() || rejected.is_some() {
                    break;
                }
            }
            (who, ready.is_some(), rejected)
        });
    }

    let (client_a, _incoming_a) = start_client(&server, false, &timeline, "A").await?;
    let (client_b, mut incoming_b) = start_client(&server, true, &timeline, "B").await?;

    timeline.record(
        "A",
        format!("punch: connect to B ({})", client_b.id().short()),
    );
    let (session_a, session_b) = tokio::join!(
        tokio::time::timeout(PUNCH_TIMEOUT, client_a.connect(client_b.id())),
        tokio::time::timeout(PUNCH_TIMEOUT, incoming_b.next()),
    );
    let session_a = session_a
        .map_err(|_| setup_err("punch (A)")("timed out".into()))?
        .map_err(|e| setup_err("punch (A)")(e.to_string()))?;
    let session_b = session_b
        .map_err(|_| setup_err("punch (B)")("timed out".into()))?
        .ok_or_else(|| setup_err("punch (B)")("client stopped".into()))?;
    for (who, info) in [("A", session_a.info()), ("B", session_b.info())] {
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
    }

    let bridge_a = bridge_for(&node_a)?;
    let bridge_b = bridge_for(&node_b)?;
    let peer_a = bridge_a
        .attach(session_a)
        .await
        .map_err(|e| setup_err("bridge (A)")(e.to_string()))?;
    let peer_b = bridge_b
        .attach(session_b)
        .await
        .map_err(|e| setup_err("bridge (B)")(e.to_string()))?;
    let dial = peer_a
        .dial_addr()
        .ok_or_else(|| setup_err("bridge (A)")("the requester is not the Kaspa dialer".into()))?;
    timeline.record(
        "B",
        format!(
            "bridge: B delivers A's streams to its node {} from {}",
            node_b.p2p_addr(),
            peer_b.alias()
        ),
    );
    timeline.record("A", format!("kaspa: node A dials B at {dial} (B's alias)"));
    let dial_result = tokio::time::timeout(READY_TIMEOUT, node_a.connect(dial)).await;
    if let Ok(Err(e)) = &dial_result {
        timeline.record("A", format!("kaspa: dial failed: {e}"));
    }

    let mut report = Report {
        a_ready: false,
        b_ready: false,
        rejections: Vec::new(),
        mode: "loopback",
        setup: format!(
            "node A: Kaspa node id {}, P2P {}, punch id {}\nnode B: Kaspa node id {}, P2P {}, punch id {}\nB as seen by A: {}; A as seen by B: {}",
            node_a.node_id(),
            node_a.p2p_addr(),
            client_a.id().short(),
            node_b.node_id(),
            node_b.p2p_addr(),
            client_b.id().short(),
            peer_a.alias(),
            peer_b.alias(),
        ),
    };
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, watchers.join_next()).await {
        let Ok((who, ready, rejected)) = joined else {
            continue;
        };
        match who {
            "A" => report.a_ready = ready,
            _ => report.b_ready = ready,
        }
        report.rejections.extend(rejected);
    }
    node_a.close().await;
    node_b.close().await;
    drop((peer_a, peer_b));
    Ok(report)
}

async fn start_node(network: &str) -> Result<KaspaNode, DemoError> {
    KaspaNode::start(NodeConfig {
        network: network.to_string(),
        ..NodeConfig::default()
    })
    .await
    .map_err(|e| setup_err("kaspa node")(e.to_string()))
}

fn bridge_for(node: &KaspaNode) -> Result<Bridge, DemoError> {
    Bridge::new(BridgeConfig::new(node.p2p_addr())).map_err(|e| setup_err("bridge")(e.to_string()))
}

async fn start_client(
    server: &punch_rendezvous::Server,
    accept: bool,
    timeline: &Timeline,
    who: &str,
) -> Result<(Client, punch::Incoming), DemoError> {
    let keypair = Keypair::generate().map_err(|e| setup_err("punch key")(e.to_string()))?;
    timeline.name(&keypair.public().short(), who);
    let mut config = PunchConfig::new(server.local_addr(), server.identity(), keypair);
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.accept_inbound = accept;
    let (client, incoming) = Client::start(config)
        .await
        .map_err(|e| setup_err("punch client")(e.to_string()))?;
    let observed = client
        .wait_registered(REGISTER_TIMEOUT)
        .await
        .map_err(|e| setup_err("registration")(e.to_string()))?;
    timeline.record(
        who,
        format!(
            "punch: registered as {} (observed {observed})",
            client.id().short()
        ),
    );
    Ok((client, incoming))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
