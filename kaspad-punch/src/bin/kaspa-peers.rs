//! kaspa-peers: asks a running kaspad (or kaspad-punch) over its gRPC RPC who it is and which
//! peers it is connected to. For operators checking that punched peers are connected, and for
//! the NAT-lab test of kaspad-punch.
//!
//! ```text
//! $ kaspa-peers --rpc 127.0.0.1:16610
//! self 3a6bde9d-70c0-45cb-af02-0fed6bf83571 server 2.1.0 synced false
//! peer 3636f7dd-cf79-4db0-9240-83b63a9601ee 127.7.144.11:34267 outbound ua=/kaspad:2.1.0/kaspad:2.1.0/ connected=56s
//! ```
//!
//! `--ban IP` / `--unban IP` first ban or unban an address (kaspad's own Ban and Unban RPCs).
//! Exits 0 after printing, 1 when the RPC cannot be reached or answers with an error.

use std::net::IpAddr;
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
    /// First ban this IP (kaspad's Ban RPC; needs unsafe RPC, which kaspad-punch turns on):
    /// kaspad disconnects it and refuses it until unbanned.
    #[arg(long, value_name = "IP")]
    ban: Option<IpAddr>,
    /// First unban this IP.
    #[arg(long, value_name = "IP")]
    unban: Option<IpAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = Duration::from_secs(args.timeout_secs);
    tokio::time::timeout(limit, run(&args))
        .await
        .with_context(|| format!("no answer from {} within {limit:?}", args.rpc))?
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let rpc = &args.rpc;
    let client = GrpcClient::connect(format!("grpc://{rpc}"))
        .await
        .with_context(|| format!("connecting to the RPC at {rpc}"))?;
    if let Some(ip) = args.ban {
        client.ban(ip.into()).await.context("Ban")?;
        println!("banned {ip}");
    }
    if let Some(ip) = args.unban {
        client.unban(ip.into()).await.context("Unban")?;
        println!("unbanned {ip}");
    }
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
