//! The punch half of kaspad-punch: a punch client, punch-node's bridge to kaspad's P2P port,
//! and punch-node's `Link`, which keeps `--punch-peer`s connected and takes inbound punches.
//! kaspad is asked to dial a punched peer through its own AddPeer (in-process, not over the
//! network), so its connection manager, handshake rules, limits and bans all apply.
//!
//! It runs on its own thread with its own tokio runtime: kaspad's `Core` owns the main thread
//! and its runtimes, and punch must not depend on their life cycle.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};
use futures::future::BoxFuture;
use kaspa_rpc_core::api::rpc::RpcApi;
use kaspa_rpc_service::service::RpcCoreService;
use kaspa_utils::networking::{ContextualNetAddress, NetAddress};
use kaspad_lib::args::Args;
use punch_node::bridge::{Bridge, BridgeConfig};
use punch_node::link::{DialError, Link, LinkConfig, LinkEvent, NodeDialer};
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

/// Refuses RPC listeners that are not on loopback (punch turns on unsafe RPC).
pub fn check_rpc_is_local(args: &Args) -> anyhow::Result<()> {
    if let Some(rpc) = &args.rpclisten {
        let addr = SocketAddr::from(rpc.normalize(0));
        if !addr.ip().is_loopback() {
            bail!("punch needs kaspad's unsafe RPC mode (for AddPeer): --rpclisten must be a loopback address, not {addr}");
        }
    }
    if args.rpclisten_borsh.is_some() || args.rpclisten_json.is_some() {
        bail!("punch needs kaspad's unsafe RPC mode (for AddPeer): --rpclisten-borsh / --rpclisten-json are not allowed with punch");
    }
    Ok(())
}

/// Asks kaspad to connect to a bridge listener (kaspad's AddPeer, not permanent: the link
/// re-punches and asks again when the connection ends).
struct RpcDialer(Arc<RpcCoreService>);

impl NodeDialer for RpcDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, Result<(), DialError>> {
        let rpc = self.0.clone();
        Box::pin(async move {
            rpc.add_peer(ContextualNetAddress::from(NetAddress::from(addr)), false)
                .await
                .map_err(|e| DialError::new(addr, e))
        })
    }

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
    rpc: Arc<RpcCoreService>,
    node_p2p: SocketAddr,
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
                if let Err(e) = run(args, keypair, rpc, node_p2p, stopped).await {
                    warn!(error = %e, "punch stopped");
                }
            })
        })
        .context("punch thread")?;
    Ok(PunchThread { stop, thread })
}

async fn run(
    args: PunchArgs,
    keypair: Keypair,
    rpc: Arc<RpcCoreService>,
    node_p2p: SocketAddr,
    stopped: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let mut config = punch::Config::new(args.rendezvous, args.rendezvous_key, keypair);
    config.accept_inbound = args.accept;
    let (client, incoming) = punch::Client::start(config).await?;
    let bridge = Bridge::new(BridgeConfig::new(node_p2p))?;
    let mut link_config = LinkConfig::new(args.peers);
    link_config.max_inbound = args.max_inbound;
    link_config.inbound_idle_timeout = args.inbound_idle_timeout;
    let link = Link::spawn(
        client,
        incoming,
        bridge,
        Arc::new(RpcDialer(rpc)),
        link_config,
    );
    let mut events = link.subscribe();
    // The link logs each punched peer's path itself ("punched peer connected"); this adds
    // what kaspad did with it. A lagging receiver only loses log lines, never stops punch.
    let log = async {
        loop {
            match events.recv().await {
                Ok(LinkEvent::Dialed { peer, addr, result }) => match result {
                    Ok(()) => {
                        info!(peer = %peer.short(), %addr, "kaspad asked to connect to the punched peer")
                    }
                    Err(error) => {
                        warn!(peer = %peer.short(), %addr, %error, "kaspad refused to connect to the punched peer")
                    }
                },
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
