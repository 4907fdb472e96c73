//! kaspa-mine: mines one block on a simnet kaspad (or kaspad-punch) over its gRPC RPC, or
//! asks whether the node has a block. For tests that need blocks to flow between nodes.
//!
//! ```text
//! $ kaspa-mine --rpc 127.0.0.1:16610
//! block 6f1c...e2a9
//! $ kaspa-mine --rpc 127.0.0.1:16610 --has-block 6f1c...e2a9
//! present 6f1c...e2a9
//! ```
//!
//! Mining asks the node for a block template (GetBlockTemplate) paying to a simnet address
//! made from a fresh random key (the key is thrown away: the coins are only for show), finds
//! a nonce that meets the header's target with `kaspa-pow` (simnet's difficulty is tiny: a
//! few tries), submits the block (SubmitBlock) and prints `block <hash>`, the header hash in
//! hex. A node with no peers never counts itself synced and refuses templates and blocks
//! then: start it with kaspad's `--enable-unsynced-mining`. Exits 0 when the node reports
//! the block accepted, 1 on any failure.
//!
//! `--has-block HASH` asks GetBlock (no transactions): prints `present <hash>` and exits 0
//! when the node has the block (header or full block), prints `absent <hash>` and exits 1
//! when the node answers that it cannot find it, exits 2 when the RPC fails otherwise (or
//! HASH is not 64 hex digits).

use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use kaspa_addresses::{Address, Prefix, Version};
use kaspa_consensus_core::header::Header;
use kaspa_grpc_client::GrpcClient;
use kaspa_rpc_core::api::rpc::RpcApi;
use kaspa_rpc_core::{RpcHash, RpcRawBlock, SubmitBlockReport};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Mines one simnet block over a kaspad's gRPC RPC, or checks that the node has a block"
)]
struct Args {
    /// The node's gRPC RPC address (kaspad's --rpclisten).
    #[arg(long)]
    rpc: String,
    /// Give up after this many seconds (connecting, the template, the nonce search and the
    /// submission together).
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Do not mine: print `present HASH` and exit 0 if the node has this block, `absent
    /// HASH` and exit 1 if it does not; exit 2 if the RPC fails or HASH is not 64 hex digits.
    #[arg(long, value_name = "HASH")]
    has_block: Option<String>,
}

/// The most nonces tried on one template. Simnet's target passes about every other nonce;
/// a million misses means the template is not a simnet one.
const MAX_NONCES: u64 = 1_000_000;
/// How often (in nonces) the search checks the clock.
const CLOCK_EVERY: u64 = 1024;
/// What the block's coinbase carries as extra data.
const EXTRA_DATA: &[u8] = b"kaspa-mine";
/// The error text kaspad's consensus gives for an unknown block hash (`HeaderNotFound`).
const NOT_FOUND: &str = "cannot find header";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let limit = Duration::from_secs(args.timeout_secs);
    match &args.has_block {
        Some(hash) => {
            let hash = match parse_hash(hash) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("kaspa-mine: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let result = tokio::time::timeout(limit, has_block(&args.rpc, hash)).await;
            match result {
                Ok(Ok(true)) => {
                    println!("present {hash}");
                    ExitCode::SUCCESS
                }
                Ok(Ok(false)) => {
                    println!("absent {hash}");
                    ExitCode::from(1)
                }
                Ok(Err(e)) => {
                    eprintln!("kaspa-mine: {e:#}");
                    ExitCode::from(2)
                }
                Err(_) => {
                    eprintln!("kaspa-mine: no answer from {} within {limit:?}", args.rpc);
                    ExitCode::from(2)
                }
            }
        }
        None => {
            let deadline = Instant::now() + limit;
            let result = tokio::time::timeout(limit, mine(&args.rpc, deadline)).await;
            match result {
                Ok(Ok(hash)) => {
                    println!("block {hash}");
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => {
                    eprintln!("kaspa-mine: {e:#}");
                    ExitCode::from(1)
                }
                Err(_) => {
                    eprintln!(
                        "kaspa-mine: mining on {} did not finish within {limit:?}",
                        args.rpc
                    );
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// A block hash: 64 hex digits.
fn parse_hash(s: &str) -> anyhow::Result<RpcHash> {
    if s.len() != 64 {
        bail!("a block hash is 64 hex digits, got {} characters", s.len());
    }
    RpcHash::from_str(s).map_err(|e| anyhow::anyhow!("bad block hash {s:?}: {e}"))
}

async fn connect(rpc: &str) -> anyhow::Result<GrpcClient> {
    GrpcClient::connect(format!("grpc://{rpc}"))
        .await
        .with_context(|| format!("connecting to the RPC at {rpc}"))
}

/// Whether the node has block `hash`: `Ok(false)` only when the node says it cannot find it.
async fn has_block(rpc: &str, hash: RpcHash) -> anyhow::Result<bool> {
    let client = connect(rpc).await?;
    let answer = client.get_block(hash, false).await;
    let _ = client.disconnect().await;
    match answer {
        Ok(block) if block.header.hash == hash => Ok(true),
        Ok(block) => bail!("GetBlock {hash} answered with block {}", block.header.hash),
        Err(e) if e.to_string().contains(NOT_FOUND) => Ok(false),
        Err(e) => Err(e).context("GetBlock"),
    }
}

/// Gets a template, solves it and submits it; returns the accepted block's hash.
async fn mine(rpc: &str, deadline: Instant) -> anyhow::Result<RpcHash> {
    let client = connect(rpc).await?;
    let result = mine_with(&client, deadline).await;
    let _ = client.disconnect().await;
    result
}

async fn mine_with(client: &GrpcClient, deadline: Instant) -> anyhow::Result<RpcHash> {
    let template = client
        .get_block_template(pay_address(), EXTRA_DATA.to_vec())
        .await
        .context(
            "GetBlockTemplate (is the node on simnet? a node that is not synced, e.g. one \
             with no peers, needs kaspad's --enable-unsynced-mining to hand out templates)",
        )?;
    let mut block: RpcRawBlock = template.block;
    let nonce = solve(&block, deadline)?;
    block.header.nonce = nonce;
    let hash = Header::try_from(&block.header)
        .context("the template's header")?
        .hash;
    let response = client
        .submit_block(block, false)
        .await
        .context("SubmitBlock")?;
    match response.report {
        SubmitBlockReport::Success => Ok(hash),
        SubmitBlockReport::Reject(reason) => bail!(
            "the node rejected block {hash}: {reason} (a node that is not synced needs \
             kaspad's --enable-unsynced-mining to accept mined blocks)"
        ),
    }
}

/// A nonce that makes `block`'s header meet its own target, tried from a random start.
fn solve(block: &RpcRawBlock, deadline: Instant) -> anyhow::Result<u64> {
    let header = Header::try_from(&block.header).context("the template's header")?;
    let state = kaspa_pow::State::new(&header);
    let start: u64 = secp256k1::rand::random();
    for i in 0..MAX_NONCES {
        if i.is_multiple_of(CLOCK_EVERY) && Instant::now() >= deadline {
            bail!("no nonce meets the target after {i} tries (out of time)");
        }
        let nonce = start.wrapping_add(i);
        if state.check_pow(nonce).0 {
            return Ok(nonce);
        }
    }
    bail!(
        "no nonce meets the target (bits {:#x}) in {MAX_NONCES} tries: is the node on simnet?",
        block.header.bits
    )
}

/// A simnet pay-to-public-key address for a fresh random key.
fn pay_address() -> Address {
    let (_secret, public) = secp256k1::generate_keypair(&mut secp256k1::rand::thread_rng());
    let (x_only, _parity) = public.x_only_public_key();
    Address::new(Prefix::Simnet, Version::PubKey, &x_only.serialize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_must_be_64_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_hash(&hex).unwrap().to_string(), hex);
        assert!(parse_hash("ab").is_err());
        assert!(parse_hash(&"zz".repeat(32)).is_err());
        assert!(parse_hash(&"ab".repeat(33)).is_err());
    }

    #[test]
    fn pay_addresses_are_simnet_and_fresh() {
        let a = pay_address();
        let b = pay_address();
        assert_eq!(a.prefix, Prefix::Simnet);
        assert!(a.to_string().starts_with("kaspasim:"), "{a}");
        assert_ne!(a, b);
    }
}
