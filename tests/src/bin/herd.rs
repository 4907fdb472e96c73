//! A crowd of light registered peers in one process, for the rendezvous capacity measurement
//! (`tests/tests/capacity.rs`).
//!
//! `herd RENDEZVOUS RENDEZVOUS_ID FIRST COUNT TOTAL` opens COUNT control connections (peers
//! FIRST.. of a crowd of TOTAL, which may be split over several processes), each a fresh
//! identity doing the real handshake and registration ([`punch_tests::TestClient`], no client
//! library above it), and keeps each one alive by answering the server's pings. The server sees
//! registered peers exactly as it sees real ones, less their NAT check probe. Client `i` binds
//! [`herd_ip`]`(i)`, so the server's per-address and per-network limits hold at their defaults.
//!
//! Prints `progress N MILLIS` every [`PROGRESS_EVERY`] registrations and `ready N MILLIS
//! FAILED` at the end (milliseconds since the first connection), then runs until its stdin
//! closes. `lost N` reports peers whose connection ended while idling (printed once a second
//! at most, only when it changed). Each peer holds one descriptor: the soft open-files limit is
//! raised to the hard one, and a COUNT the hard limit cannot hold is refused (split the crowd
//! over several processes).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use punch_proto::message::{ClientMsg, ServerMsg};
use punch_proto::{Keypair, PeerId};
use punch_tests::restart::client_ip;
use punch_tests::{default_register, TestClient};
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinSet;

/// Handshakes in flight at once: below the server's 512 handshake slots, and spread over many
/// networks by [`herd_ip`], so no prefix holds more than its 16 pending handshakes.
const IN_FLIGHT: usize = 256;
const PROGRESS_EVERY: usize = 5_000;
/// Peers per source address and addresses per /24: 16 x 15 = 240 per network, within the
/// server's defaults (32 per address, 256 per network).
const PER_SOURCE: usize = 16;
const SOURCES_PER_NET: usize = 15;
/// How long one registration may take before it counts as failed.
const REGISTER_WAIT: Duration = Duration::from_secs(30);

/// The loopback address of peer `i` of `count`: [`client_ip`]'s layout, with consecutive peers
/// in different /24s, so the handshakes in flight at any moment come from many networks, as
/// they do in the wild.
fn herd_ip(i: usize, count: usize) -> IpAddr {
    let per_net = PER_SOURCE * SOURCES_PER_NET;
    let nets = count.div_ceil(per_net).max(1);
    client_ip((i % nets) * per_net + i / nets, PER_SOURCE, SOURCES_PER_NET)
}

async fn register(server: SocketAddr, server_id: PeerId, ip: IpAddr) -> anyhow::Result<TestClient> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    let stream = socket.connect(server).await?;
    let keypair = Keypair::generate()?;
    TestClient::handshake(stream, &server_id, keypair, &default_register()).await
}

/// Answers pings until the connection ends.
async fn idle(mut client: TestClient, lost: Arc<AtomicUsize>) {
    loop {
        match client.recv_timeout(Duration::from_secs(3600)).await {
            Ok(ServerMsg::Ping { nonce }) => {
                if client.send(&ClientMsg::Pong { nonce }).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    lost.fetch_add(1, Ordering::Relaxed);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, key, first, count, total] = &args[..] else {
        bail!("usage: herd RENDEZVOUS RENDEZVOUS_ID FIRST COUNT TOTAL");
    };
    let server: SocketAddr = addr.parse().context("rendezvous address")?;
    let server_id: PeerId = key.parse().context("rendezvous id")?;
    let first: usize = first.parse().context("first")?;
    let count: usize = count.parse().context("count")?;
    let total: usize = total.parse().context("total")?;
    let need = count as u64 + 100;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if hard < need {
        bail!("{count} peers need {need} open files; the hard limit is {hard}: split the herd");
    }
    rlimit::increase_nofile_limit(hard)?;

    let lost = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let (mut done, mut failed) = (0usize, 0usize);
    let mut starting = JoinSet::new();
    let mut next = 0;
    while done + failed < count {
        while next < count && starting.len() < IN_FLIGHT {
            let ip = herd_ip(first + next, total);
            starting.spawn(tokio::time::timeout(
                REGISTER_WAIT,
                register(server, server_id, ip),
            ));
            next += 1;
        }
        match starting.join_next().await {
            Some(Ok(Ok(Ok(client)))) => {
                done += 1;
                tokio::spawn(idle(client, lost.clone()));
                if done % PROGRESS_EVERY == 0 {
                    println!("progress {done} {}", start.elapsed().as_millis());
                }
            }
            Some(Ok(Ok(Err(e)))) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("herd: registration failed: {e:#}");
                }
            }
            Some(Ok(Err(_))) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("herd: registration timed out after {REGISTER_WAIT:?}");
                }
            }
            Some(Err(e)) => bail!("a registration task failed: {e}"),
            None => break,
        }
    }
    println!("ready {done} {} {failed}", start.elapsed().as_millis());

    let report = {
        let lost = lost.clone();
        tokio::spawn(async move {
            let mut said = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = lost.load(Ordering::Relaxed);
                if now != said {
                    println!("lost {now}");
                    said = now;
                }
            }
        })
    };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    report.abort();
    Ok(())
}
