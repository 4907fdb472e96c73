//! kaspa-peers: asks a running kaspad (or kaspad-punch) over its gRPC RPC who it is and which
//! peers it is connected to. For operators checking that punched peers are connected, and for
//! the NAT-lab test of kaspad-punch.
//!
//! ```text
//! $ kaspa-peers --rpc 127.0.0.1:16610
//! self 3f0c2a9e-... server 2.1.0 synced false
//! peer 8b41d7c2-... 127.176.78.131:36853 outbound ua=/kaspad:2.1.0/ connected=12s
//! ```
//!
//! Exits 0 after printing, 1 when the RPC cannot be reached or answers with an error.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kaspa_grpc_client::GrpcClient;
use kaspa_rpc_core::api::rpc::RpcApi;

#[derive(Debug, Parser)]
#[command(version, about = "Lists a kaspad's connected peers over its gRPC RPC")]
struct Args {
    /// The node's gRPC RPC address (kaspad's --rpclisten).
    #[arg(long, default_value = "127.0.0.1:16110")]
    rpc: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = Duration::from_secs(args.timeout_secs);
    tokio::time::timeout(limit, run(&args.rpc))
        .await
        .with_context(|| format!("no answer from {} within {limit:?}", args.rpc))?
}

async fn run(rpc: &str) -> anyhow::Result<()> {
    let client = GrpcClient::connect(format!("grpc://{rpc}"))
        .await
        .with_context(|| format!("connecting to the RPC at {rpc}"))?;
    let info = client.get_info().await.context("GetInfo")?;
    println!(
        "self {} server {} synced {}",
        info.p2p_id, info.server_version, info.is_synced
    );
    let peers = client
        .get_connected_peer_info()
        .await
        .context("GetConnectedPeerInfo")?;
    for p in peers.peer_info {
        println!(
            "peer {} {} {} ua={} connected={}s",
            p.id,
            p.address,
            if p.is_outbound { "outbound" } else { "inbound" },
            p.user_agent,
            p.time_connected / 1000
        );
    }
    let _ = client.disconnect().await;
    Ok(())
}
