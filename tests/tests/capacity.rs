//! How many registered peers the real `rendezvous` holds, at what memory each, how fast they
//! register, and whether a punch between two fresh clients is still answered among them.
//!
//! The peers are a [`herd`](../src/bin/herd.rs) process: real handshakes and registrations from
//! many loopback addresses, each connection then answering the server's pings. Two checks:
//! - `a_punch_is_answered_among_two_thousand_registered_peers` runs in the normal suite and
//!   checks the outcome only (every peer registered and kept, the punch direct);
//! - `capacity` is the measurement (`scripts/bench.sh` runs it in release; `CAPACITY_PEERS`,
//!   default 100,000) and prints the figures for BENCHMARKS.md. It raises the open-files
//!   limit for itself, the herd and the server (root may; anyone else needs `ulimit -Hn`).
//!
//! ```text
//! cargo build --release -p punch-rendezvous -p punch-tests --bins
//! cargo nextest run --release -p punch-tests --test capacity --run-ignored only --no-capture
//! ```

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use punch::{Client, Config, PathKind};
use punch_proto::Keypair;
use punch_tests::{bin_path, metric, rss_kib, scrape, LineChild, RendezvousProcess};

/// What one herd run showed: one or more `herd` processes, each registering its share of the
/// peers.
struct Herd {
    registered: usize,
    failed: usize,
    /// From the first connection until the last process had registered its share.
    took: Duration,
    children: Vec<LineChild>,
    lines: std::sync::mpsc::Receiver<(usize, String)>,
}

impl Herd {
    /// Starts `count` peers against `rv`, split over processes of at most `per_process` peers,
    /// and waits until all have registered or failed.
    fn start(rv: &RendezvousProcess, count: usize, per_process: usize, wait: Duration) -> Herd {
        let (tx, lines) = std::sync::mpsc::channel();
        let mut children = Vec::new();
        for (part, first) in (0..count).step_by(per_process.max(1)).enumerate() {
            let share = per_process.min(count - first);
            let child = LineChild::spawn(
                Command::new(bin_path("herd")).args([
                    rv.addr().to_string(),
                    rv.identity().to_string(),
                    first.to_string(),
                    share.to_string(),
                    count.to_string(),
                ]),
                tx.clone(),
                move |line| (part, line),
            );
            children.push(child);
        }
        let deadline = Instant::now() + wait;
        let (mut ready, mut registered, mut failed, mut took) = (0, 0, 0, Duration::ZERO);
        while ready < children.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, line) = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the herd did not finish registering within {wait:?}"));
            if let ["ready", n, ms, f] = line.split_whitespace().collect::<Vec<_>>()[..] {
                ready += 1;
                registered += n.parse::<usize>().unwrap();
                failed += f.parse::<usize>().unwrap();
                took = took.max(Duration::from_millis(ms.parse().unwrap()));
            }
        }
        Herd {
            registered,
            failed,
            took,
            children,
            lines,
        }
    }

    /// Peers the herd lost since it finished registering (their connection ended).
    fn lost(&self) -> usize {
        let mut by_part = vec![0; self.children.len()];
        for (part, line) in self.lines.try_iter() {
            if let Some(n) = line.strip_prefix("lost ").and_then(|n| n.parse().ok()) {
                by_part[part] = n;
            }
        }
        by_part.iter().sum()
    }
}

/// This process's open-files limit, soft raised to hard; children inherit it. Raising the
/// hard limit takes CAP_SYS_RESOURCE, which not every root has (containers drop it).
fn raise_nofile() -> u64 {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::increase_nofile_limit(hard).unwrap_or(soft)
}

/// Descriptors the rendezvous keeps besides one per peer with `--relay off`: 512 waiting
/// connections, 512 handshakes and 64 spare (`Config::fds_needed`).
const SERVER_FDS: u64 = 512 + 512 + 64;

/// Two fresh clients register and one punches to the other: the time from the connect request
/// to the open session, and its path.
async fn fresh_punch(rv: &RendezvousProcess) -> (Duration, PathKind) {
    let client = |ip: &str, accept: bool| {
        let mut config = Config::new(rv.addr(), rv.identity(), Keypair::generate().unwrap());
        config.bind = format!("{ip}:0").parse().unwrap();
        config.accept_inbound = accept;
        Client::start(config)
    };
    let (a, _) = client("127.9.0.1", false).await.unwrap();
    let (b, mut b_in) = client("127.9.0.2", true).await.unwrap();
    a.wait_registered(Duration::from_secs(30)).await.unwrap();
    b.wait_registered(Duration::from_secs(30)).await.unwrap();
    let asked = Instant::now();
    let (sa, sb) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(a.connect(b.id()), b_in.next())
    })
    .await
    .expect("the punch ends within 30 s");
    let took = asked.elapsed();
    let (sa, _sb) = (sa.unwrap(), sb.unwrap());
    let path = sa.path().kind;
    a.shutdown().await;
    b.shutdown().await;
    (took, path)
}

fn rendezvous(peers: usize) -> RendezvousProcess {
    let max = (peers + 100).to_string();
    RendezvousProcess::spawn(&[
        "--max-peers",
        &max,
        "--relay",
        "off",
        "--metrics",
        "127.0.0.1:0",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_punch_is_answered_among_two_thousand_registered_peers() {
    const PEERS: usize = 2_000;
    let limit = raise_nofile();
    assert!(
        limit > 2 * (PEERS as u64 + SERVER_FDS),
        "open files limit {limit}"
    );
    let rv = rendezvous(PEERS);
    let herd =
        tokio::task::block_in_place(|| Herd::start(&rv, PEERS, PEERS, Duration::from_secs(120)));
    assert_eq!((herd.registered, herd.failed), (PEERS, 0));
    let (took, path) = fresh_punch(&rv).await;
    assert_eq!(path, PathKind::Direct, "after {took:?}");
    let page = scrape(rv.metrics().unwrap()).await;
    assert_eq!(
        metric(&page, "rendezvous_registered_peers"),
        Some(PEERS as f64)
    );
    assert_eq!(herd.lost(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: as many connections as the open-files limit allows; run in release (scripts/bench.sh)"]
async fn capacity() {
    let asked: u64 = std::env::var("CAPACITY_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // One process cannot hold more descriptors than its limit: the server holds one per peer
    // (plus SERVER_FDS and the two fresh clients' connections), each herd process up to
    // the limit less a margin.
    let limit = raise_nofile();
    let fit = limit.saturating_sub(SERVER_FDS + 200);
    let peers = asked.min(fit) as usize;
    if (peers as u64) < asked {
        println!(
            "capacity: {asked} peers asked, but the open files limit is {limit} (and raising \
             the hard limit needs CAP_SYS_RESOURCE): measuring {peers}"
        );
    }
    let per_process = (limit.saturating_sub(500) as usize).max(1);
    let rv = rendezvous(peers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(rv.pid());
    let herd = tokio::task::block_in_place(|| {
        Herd::start(&rv, peers, per_process, Duration::from_secs(1200))
    });
    // Let the server settle (registrations logged, first pings answered) before measuring.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = rss_kib(rv.pid());
    let page = scrape(rv.metrics().unwrap()).await;
    let registered = metric(&page, "rendezvous_registered_peers").unwrap_or(0.0);
    let handshakes = metric(&page, "rendezvous_handshakes_total{result=\"ok\"}").unwrap_or(0.0);
    let (took, path) = fresh_punch(&rv).await;
    let lost = herd.lost();

    let secs = herd.took.as_secs_f64();
    let per_peer = (after - before) as f64 * 1024.0 / herd.registered.max(1) as f64;
    println!("capacity: peers {peers}, registered {} (server says {registered}), failed {}, lost while idle {lost}", herd.registered, herd.failed);
    println!(
        "capacity: server RSS {} MB before, {} MB with the peers: {:.0} bytes ({:.1} KiB) per registered peer",
        before / 1024,
        after / 1024,
        per_peer,
        per_peer / 1024.0
    );
    println!(
        "capacity: registration {:.1} s for all: {:.0} registrations (one handshake each)/s; {handshakes} handshakes ok in all",
        secs,
        herd.registered as f64 / secs,
    );
    println!(
        "capacity: a punch between two fresh clients among them: {path:?} after {} ms",
        took.as_millis()
    );
    println!(
        "BENCH\trendezvous memory per registered peer ({} peers)\t{:.1} KiB\ttarget 8 KiB\t{:.2}",
        herd.registered,
        per_peer / 1024.0,
        per_peer / 8192.0
    );
    println!(
        "BENCH\tregistrations (handshake + register) per second\t{:.0}/s\t-\t-",
        herd.registered as f64 / secs
    );
    println!(
        "BENCH\tpunch between fresh clients among {} peers\t{path:?} in {} ms\ttarget < 1000 ms\t{:.3}",
        herd.registered,
        took.as_millis(),
        took.as_secs_f64()
    );
    assert_eq!(herd.registered, peers);
}
