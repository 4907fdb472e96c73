//! The punch half of kaspad-punch: a punch client registered with this node's Kaspa network,
//! punch-node's bridge to kaspad's P2P port, the slot pool kaspad dials punched peers
//! through, and punch-node's automatic [`Peering`] (discovery, pinned `--punch-peer`s, capped
//! inbound punches, bans mirrored at the punch layer).
//!
//! kaspad is never asked to dial over RPC (AddPeer needs kaspad's unsafe RPC mode): the slot
//! addresses are added to kaspad's own `--addpeer` list at start, and kaspad's connection
//! manager dials them by itself (see punch_node::slots). So kaspad's RPC and wRPC listeners
//! are exactly as the operator set them, unsafe mode included.
//!
//! It runs on its own thread with its own tokio runtime: kaspad's `Core` owns the main thread
//! and its runtimes, and punch must not depend on their life cycle.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::future::BoxFuture;
use kaspa_rpc_core::api::rpc::RpcApi;
use kaspa_rpc_service::service::RpcCoreService;
use kaspa_utils::networking::{ContextualNetAddress, NetAddress};
use kaspad_lib::args::Args;
use punch_node::bridge::{Bridge, BridgeConfig};
use punch_node::link::{InboundLimits, InboundState, LinkEvent, NodeView};
use punch_node::peering::{Cooling, Peering, PeeringConfig, PeeringWatch, PlanState};
use punch_node::slots::{self, SlotPool};
use punch_proto::Keypair;
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};

use crate::cli::PunchArgs;

/// kaspad's P2P listen address (what `--listen` says, or kaspad's default for the network).
pub fn p2p_address(args: &Args) -> SocketAddr {
    let default_port = args.network().default_p2p_port();
    let addr = args
        .listen
        .unwrap_or(ContextualNetAddress::unspecified())
        .normalize(default_port);
    SocketAddr::from(addr)
}

/// The network name punch registers with (`kaspa-mainnet`, `kaspa-testnet-10`,
/// `kaspa-simnet`, ...): discovery only ever offers peers of the same one.
pub fn network_name(args: &Args) -> String {
    format!("kaspa-{}", args.network())
}

/// Slot listeners bound before kaspad starts, and what they were added to kaspad's flags as.
#[derive(Debug)]
pub struct Slots(Vec<std::net::TcpListener>);

/// Checks kaspad's flags against punch, binds the slots and adds them to kaspad's flags:
/// as permanent peers (`--addpeer`), and to its outbound target, so that punched peers come
/// in addition to `--outpeers` public ones instead of taking their places.
pub fn prepare(punch: &PunchArgs, args: &mut Args) -> anyhow::Result<Slots> {
    if !args.connect_peers.is_empty() {
        bail!("--connect cannot be combined with punch: kaspad dials punched peers through slots added as --addpeer peers, and kaspad refuses --connect with --addpeer (use --addpeer for fixed peers)");
    }
    if punch.accept && args.inbound_limit == 0 {
        bail!("--maxinpeers=0 turns kaspad's P2P listener off, which punch needs to take inbound punches: raise --maxinpeers or add --punch-no-accept");
    }
    let p2p = p2p_address(args);
    if !p2p.is_ipv4() {
        bail!("--listen={p2p}: punched peers reach kaspad from 127.a.b.c aliases, which an IPv6 listener would see as ::ffff:127.a.b.c and key wrongly; with punch, use an IPv4 --listen (e.g. --listen=0.0.0.0:{})", p2p.port());
    }
    let listeners = slots::bind(punch.slots()).context("binding the punch slots on 127.0.200.x")?;
    for l in &listeners {
        let addr = l.local_addr().context("punch slot address")?;
        args.add_peers
            .push(ContextualNetAddress::from(NetAddress::from(addr)));
    }
    args.outbound_target += listeners.len();
    Ok(Slots(listeners))
}

/// What punch asks of kaspad, in-process and only through RPC calls allowed in safe mode:
/// its connected peers (GetConnectedPeerInfo) and its bans (GetPeerAddresses).
struct NodeRpc(Arc<RpcCoreService>);

impl NodeView for NodeRpc {
    fn has_peer_at(&self, ip: IpAddr) -> BoxFuture<'static, bool> {
        let rpc = self.0.clone();
        Box::pin(async move {
            match rpc.get_connected_peer_info().await {
                Ok(info) => info
                    .peer_info
                    .iter()
                    .any(|p| SocketAddr::from(p.address).ip().to_canonical() == ip),
                Err(error) => {
                    // Cannot tell: keep the session (a local fault must not cut peers).
                    warn!(%error, "GetConnectedPeerInfo failed; idle punched sessions kept");
                    true
                }
            }
        })
    }

    fn banned_ips(&self) -> BoxFuture<'static, Vec<IpAddr>> {
        let rpc = self.0.clone();
        Box::pin(async move {
            match rpc.get_peer_addresses().await {
                Ok(addrs) => addrs
                    .banned_addresses
                    .into_iter()
                    .map(IpAddr::from)
                    .collect(),
                Err(error) => {
                    warn!(%error, "GetPeerAddresses failed; bans not mirrored this time");
                    Vec::new()
                }
            }
        })
    }
}

/// The running punch thread.
pub struct PunchThread {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl PunchThread {
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

pub fn start(
    args: PunchArgs,
    slots: Slots,
    rpc: Arc<RpcCoreService>,
    node_p2p: SocketAddr,
    network: String,
) -> anyhow::Result<PunchThread> {
    let (keypair, created) = Keypair::load_or_generate(&args.key_file)
        .with_context(|| format!("--punch-key-file {}", args.key_file.display()))?;
    if created {
        info!(path = %args.key_file.display(), "created a new punch identity");
    }
    info!(id = %keypair.public(), "punch identity");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("punch")
        .enable_all()
        .build()
        .context("punch runtime")?;
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("punch".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Err(e) = run(args, keypair, slots, rpc, node_p2p, network, stopped).await {
                    warn!(error = %e, "punch stopped");
                }
            })
        })
        .context("punch thread")?;
    Ok(PunchThread { stop, thread })
}

/// The peering's state as the status document's `peering` and `inbound` sections.
fn peering_json(plan: &PlanState, inbound: &InboundState) -> serde_json::Value {
    let by_cooling = |counts: &[u64; 4]| {
        Cooling::ALL
            .iter()
            .map(|c| (c.label().to_owned(), serde_json::json!(counts[*c as usize])))
            .collect::<serde_json::Map<_, _>>()
    };
    serde_json::json!({
        "peering": {
            "target": plan.target,
            "pinned": plan.pinned,
            "running": { "pinned": plan.running_pinned, "discovered": plan.running_discovered },
            "candidates": plan.candidates,
            "cooling": by_cooling(&plan.cooling.map(|n| n as u64)),
            "discovering": plan.discovering,
            "next_discovery_in_secs": plan.next_discover_in.map(|d| d.as_secs_f64()),
            "discoveries": { "ok": plan.discoveries, "failed": plan.discoveries_failed },
            "discovered_peers": plan.discovered_peers,
            "rounds_ended": by_cooling(&plan.rounds_ended),
        },
        "inbound": {
            "held": inbound.held,
            "ips": inbound.ips,
            "most_from_one_ip": inbound.most_from_one_ip,
            "refused": {
                "denied": inbound.refused_denied,
                "full": inbound.refused_full,
                "per_ip": inbound.refused_per_ip,
                "not_bridged": inbound.not_bridged,
            },
        },
    })
}

/// The peering's state as metrics (prefix `punch_`).
fn peering_metrics(
    e: &mut punch_ops::metrics::Emit<'_>,
    plan: &PlanState,
    inbound: &InboundState,
) -> Result<(), std::fmt::Error> {
    use punch_ops::metrics::gauge_value;
    e.gauges(
        "peering_rounds",
        "Outbound punch rounds running now, with pinned and with discovered peers",
        &[
            (&[("peer", "pinned")], gauge_value(plan.running_pinned)),
            (
                &[("peer", "discovered")],
                gauge_value(plan.running_discovered),
            ),
        ],
    )?;
    e.gauge(
        "peering_candidates",
        "Discovered peers waiting to be tried",
        gauge_value(plan.candidates),
    )?;
    let cooling: Vec<_> = Cooling::ALL
        .iter()
        .map(|c| {
            (
                [("reason", c.label())],
                gauge_value(plan.cooling[*c as usize]),
            )
        })
        .collect();
    let cooling: Vec<_> = cooling.iter().map(|(l, v)| (&l[..], *v)).collect();
    e.gauges(
        "peering_cooling",
        "Peers waiting before their next punch, by how their last round ended",
        &cooling,
    )?;
    let ended: Vec<_> = Cooling::ALL
        .iter()
        .map(|c| ([("outcome", c.label())], plan.rounds_ended[*c as usize]))
        .collect();
    let ended: Vec<_> = ended.iter().map(|(l, v)| (&l[..], *v)).collect();
    e.counters(
        "peering_rounds_ended",
        "Outbound rounds ended, by outcome (failed punch, no slot dialed, refused by kaspad, ended)",
        &ended,
    )?;
    e.counters(
        "peering_discoveries",
        "Discover requests to the rendezvous, by result",
        &[
            (&[("result", "ok")], plan.discoveries),
            (&[("result", "failed")], plan.discoveries_failed),
        ],
    )?;
    e.counter(
        "peering_discovered_peers",
        "Peers listed in discovery answers",
        plan.discovered_peers,
    )?;
    e.gauge(
        "inbound_most_from_one_ip",
        "Inbound punched sessions from the busiest observed IP (against --punch-max-inbound-per-ip)",
        gauge_value(inbound.most_from_one_ip),
    )?;
    e.counters(
        "inbound_refused_by_cap",
        "Inbound punched sessions refused by kaspad-punch, by reason",
        &[
            (&[("reason", "denied")], inbound.refused_denied),
            (&[("reason", "full")], inbound.refused_full),
            (&[("reason", "per_ip")], inbound.refused_per_ip),
            (&[("reason", "not_bridged")], inbound.not_bridged),
        ],
    )
}

async fn start_ops(
    args: &PunchArgs,
    client: &punch::Client,
    slots: &SlotPool,
    deny: &punch::Denylist,
    peering: PeeringWatch,
) -> anyhow::Result<punch::ops::Operated> {
    let (s, d, w) = (slots.clone(), deny.clone(), peering.clone());
    let gather: Box<dyn prometheus_client::collector::Collector> = Box::new(
        punch_ops::metrics::Gather(move |e: &mut punch_ops::metrics::Emit<'_>| {
            use punch_ops::metrics::gauge_value;
            // The peering's own counts: a round holds each outbound session (within the rounds
            // the outbound cap allows), the accept loop each inbound one (the count its caps
            // are checked against).
            let (plan, inbound) = w.get();
            e.gauges(
                "kaspa_peers",
                "Punched sessions bridged to kaspad now, by who dialed",
                &[
                    (&[("direction", "outbound")], gauge_value(w.outbound_held())),
                    (&[("direction", "inbound")], gauge_value(inbound.held)),
                ],
            )?;
            e.gauge(
                "slots",
                "Slots kaspad dials punched peers through",
                gauge_value(s.addrs().len()),
            )?;
            e.gauge(
                "slots_in_use",
                "Slots bound to a session, or sessions waiting for one",
                gauge_value(s.in_use()),
            )?;
            let st = s.stats();
            e.counters(
                "slot_connections",
                "kaspad's connections to slots, by what became of them",
                &[
                    (&[("outcome", "handed")], st.handed),
                    (&[("outcome", "held")], st.held),
                    (&[("outcome", "refused")], st.refused),
                ],
            )?;
            let (peers, ips) = d.len();
            e.gauges(
                "denied",
                "Identities and IPs refused at the punch layer now (kaspad's bans, mirrored)",
                &[
                    (&[("kind", "peer")], gauge_value(peers)),
                    (&[("kind", "ip")], gauge_value(ips)),
                ],
            )?;
            peering_metrics(e, &plan, &inbound)
        }),
    );
    let (s, d) = (slots.clone(), deny.clone());
    let caps = (
        args.max_inbound,
        args.max_inbound_per_ip,
        args.outpeers,
        args.peers.len(),
        args.accept,
    );
    let extra = move || {
        let st = s.stats();
        let (denied_peers, denied_ips) = d.len();
        let (plan, held) = peering.get();
        let mut doc = serde_json::json!({
            "command": "kaspad-punch",
            "accept": caps.4,
            "caps": {
                "inbound": { "used": held.held, "max": caps.0 },
                "inbound_per_ip": { "used": held.most_from_one_ip, "max": caps.1 },
                "outbound": { "used": peering.outbound_held(), "max": caps.2 + caps.3 },
            },
            "slots": {
                "count": s.addrs().len(),
                "in_use": s.in_use(),
                "handed": st.handed,
                "held": st.held,
                "refused": st.refused,
            },
            "denied": { "peers": denied_peers, "ips": denied_ips },
        });
        if let (Some(doc), serde_json::Value::Object(more)) =
            (doc.as_object_mut(), peering_json(&plan, &held))
        {
            doc.extend(more);
        }
        doc
    };
    punch::ops::operate(
        client,
        "kaspad-punch",
        args.metrics,
        &args.status_socket,
        extra,
        Some(gather),
    )
    .await
    .context("--punch-metrics / --punch-status-socket")
}

/// How often kaspad's P2P listener is tried before punch registers, and how often the wait
/// is logged.
const NODE_LISTEN_POLL: Duration = Duration::from_millis(200);
const NODE_LISTEN_LOG: Duration = Duration::from_secs(10);

/// Returns once kaspad's P2P listener takes connections at `addr` (where the bridge delivers
/// peers' connections, [`Bridge::node`]). Punch registers (and so can be punched) only then: a
/// peer's Kaspa connection delivered before it would be closed at once, which the peer takes
/// for kaspad refusing it and does not retry for minutes
/// (`punch_node::peering::REFUSED_COOLDOWN`). kaspad opens the listener after its start-up
/// (database, consensus), seconds after punch's thread starts on a loaded machine.
async fn node_listening(addr: SocketAddr) {
    let started = tokio::time::Instant::now();
    let mut logged = started;
    loop {
        let probe = tokio::time::timeout(NODE_LISTEN_POLL, tokio::net::TcpStream::connect(addr));
        if let Ok(Ok(_)) = probe.await {
            if started.elapsed() >= NODE_LISTEN_POLL {
                info!(%addr, waited_ms = started.elapsed().as_millis() as u64, "kaspad's P2P listener is up; registering with the rendezvous");
            }
            return;
        }
        if logged.elapsed() >= NODE_LISTEN_LOG {
            logged = tokio::time::Instant::now();
            info!(%addr, waited_s = started.elapsed().as_secs(), "waiting for kaspad's P2P listener before registering with the rendezvous");
        }
        tokio::time::sleep(NODE_LISTEN_POLL).await;
    }
}

async fn run(
    args: PunchArgs,
    keypair: Keypair,
    slots: Slots,
    rpc: Arc<RpcCoreService>,
    node_p2p: SocketAddr,
    network: String,
    mut stopped: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let bridge = Bridge::new(BridgeConfig::new(node_p2p))?;
    // The slots' start grace (held connections while the first punches run) counts from
    // here, once kaspad is up.
    if args.accept {
        tokio::select! {
            _ = node_listening(bridge.node()) => {}
            _ = &mut stopped => return Ok(()),
        }
    }
    let (slots, _slot_tasks) =
        SlotPool::start(slots.0, slots::DEFAULT_HOLD, slots::DEFAULT_START_GRACE)
            .context("punch slots")?;
    info!(
        slots = slots.addrs().len(),
        outpeers = args.outpeers,
        pinned = args.peers.len(),
        accept = args.accept,
        %network,
        "punch peering"
    );
    let deny = punch::Denylist::default();
    let mut config = punch::Config::new(args.rendezvous, args.rendezvous_key, keypair);
    config.accept_inbound = args.accept;
    config.network = Some(network);
    config.deny = deny.clone();
    let (client, incoming) = punch::Client::start(config).await?;
    let mut peering = PeeringConfig::new(args.peers.clone(), args.outpeers);
    peering.accept = args.accept;
    peering.inbound = InboundLimits {
        max_inbound: args.max_inbound,
        max_per_ip: args.max_inbound_per_ip,
        idle_timeout: args.inbound_idle_timeout,
    };
    let link = Peering::spawn(
        client.clone(),
        incoming,
        bridge,
        slots.clone(),
        Arc::new(NodeRpc(rpc)),
        deny.clone(),
        peering,
    );
    let _ops = start_ops(&args, &client, &slots, &deny, link.watch()).await?;
    let mut events = link.subscribe();
    // The link logs each punched peer's path itself ("punched peer connected"); this adds
    // what kaspad did with it. A lagging receiver only loses log lines, never stops punch.
    let log = async {
        loop {
            match events.recv().await {
                Ok(LinkEvent::Ended { peer, outbound }) => {
                    info!(peer = %peer.short(), outbound, "punched peer disconnected")
                }
                // IdleClosed is logged by the link itself, rate-limited (a Sybil flood).
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "punch events dropped from the log")
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    tokio::select! {
        _ = stopped => {}
        _ = log => {}
    }
    drop(link);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Punch waits for kaspad's P2P listener: not done while nothing listens on the port, done
    /// once something does (at the address the bridge delivers to: an unspecified listen
    /// address is taken as 127.0.0.1).
    #[tokio::test]
    async fn registration_waits_for_the_node_listener() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe); // the port is free now: nothing listens
        let bridge =
            Bridge::new(BridgeConfig::new(SocketAddr::from(([0, 0, 0, 0], port)))).unwrap();
        let wait = tokio::spawn(node_listening(bridge.node()));
        tokio::time::sleep(4 * NODE_LISTEN_POLL).await;
        assert!(!wait.is_finished(), "returned with no listener on {port}");
        let _listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("still waiting with a listener up")
            .unwrap();
    }
}
