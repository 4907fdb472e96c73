//! A crowd of registered `punch::Client`s in one process, for the rendezvous restart
//! measurement ([`punch_tests::restart`]).
//!
//! `restart_herd RENDEZVOUS RENDEZVOUS_ID FIRST COUNT PER_SOURCE SOURCES_PER_NET` starts
//! clients `FIRST..FIRST+COUNT`, client `i` bound to [`punch_tests::restart::client_ip`],
//! in batches (a herd at start would be a herd too), and prints, one line each:
//! - `ready N` once all are registered;
//! - `away I MICROS` when client `I` is told the rendezvous is going away (`MICROS`: wall
//!   clock, microseconds since the Unix epoch);
//! - `retry I` for each failed reconnect attempt after that (the server not up yet, or
//!   refused);
//! - `lost I REASON` for a loss the rendezvous did not announce (`back` follows too);
//! - `back I MICROS` when client `I` is registered again.
//!
//! Runs until its stdin closes. Each client holds two descriptors (punch port listener and
//! control connection); the soft open-files limit is raised to the hard one first.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use punch::{Client, Config, Event, RendezvousError};
use punch_tests::restart::client_ip;
use tokio::io::AsyncBufReadExt;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

/// Clients started (and registered) at once: well within the server's 512 handshake slots and
/// its per-source rate, so the start is no herd of its own.
const BATCH: usize = 100;
/// How long one client may take to register at start.
const REGISTER_WAIT: Duration = Duration::from_secs(60);

fn micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, key, first, count, per_source, per_net] = &args[..] else {
        bail!(
            "usage: restart_herd RENDEZVOUS RENDEZVOUS_ID FIRST COUNT PER_SOURCE SOURCES_PER_NET"
        );
    };
    let addr = addr.parse().context("rendezvous address")?;
    let key: punch_proto::PeerId = key.parse().context("rendezvous id")?;
    let first: usize = first.parse()?;
    let count: usize = count.parse()?;
    let per_source: usize = per_source.parse()?;
    let per_net: usize = per_net.parse()?;
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        rlimit::increase_nofile_limit(hard).context("raising the open files limit")?;
    }

    let mut clients = Vec::with_capacity(count);
    let end = first + count;
    for start in (first..end).step_by(BATCH) {
        let mut starting = JoinSet::new();
        for i in start..(start + BATCH).min(end) {
            let mut config = Config::new(addr, key, punch_proto::Keypair::generate()?);
            config.bind = std::net::SocketAddr::new(client_ip(i, per_source, per_net), 0);
            starting.spawn(async move {
                let (client, incoming) = Client::start(config).await?;
                client.wait_registered(REGISTER_WAIT).await?;
                anyhow::Ok((i, client, incoming))
            });
        }
        while let Some(started) = starting.join_next().await {
            let (i, client, incoming) = started??;
            tokio::spawn(watch(i, client.events()));
            clients.push((client, incoming));
        }
    }
    println!("ready {}", clients.len());

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    Ok(())
}

/// Reports client `i`'s way through a restart (see the module doc).
async fn watch(i: usize, mut events: broadcast::Receiver<Event>) {
    let mut away = false;
    loop {
        match events.recv().await {
            Ok(Event::Disconnected { reason }) => match reason {
                RendezvousError::GoingAway { .. } if !away => {
                    away = true;
                    println!("away {i} {}", micros());
                }
                _ if away => println!("retry {i}"),
                reason => {
                    away = true;
                    println!("lost {i} {}", reason.to_string().replace('\n', " "));
                }
            },
            Ok(Event::Registered { .. }) if away => {
                away = false;
                println!("back {i} {}", micros());
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
