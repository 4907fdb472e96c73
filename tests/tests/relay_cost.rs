//! What the relay costs the rendezvous, measured against the real binary on loopback; the
//! numbers go to README.md's Relay section. Ignored by default (they move a gigabyte and open
//! hundreds of connections); run in release:
//!
//! ```text
//! cargo build --release -p punch-rendezvous --bins
//! cargo nextest run --release -p punch-tests --test relay_cost --run-ignored only --no-capture
//! ```

use std::time::{Duration, Instant};

use punch_tests::relay::{read_n, Punch};
use punch_tests::{rss_kib, RendezvousProcess, TestClient, RECV_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// CPU seconds (user + system) process `pid` has used (`/proc/PID/stat`, 100 ticks a second).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    let after_comm = &stat[stat.rfind(')').expect("a comm field") + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    let field = |i: usize| -> u64 { fields[i].parse().expect("a tick count") };
    let ticks = field(11) + field(12);
    ticks as f64 / 100.0
}

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;

/// Writes `total` bytes into `w` while `r` reads them; returns the seconds it took.
async fn move_bytes(w: &mut TcpStream, r: &mut TcpStream, total: u64) -> f64 {
    let start = Instant::now();
    let chunk = vec![0xa5u8; CHUNK];
    let write = async {
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            w.write_all(&chunk[..n]).await.expect("writing");
            left -= n as u64;
        }
    };
    let read = async {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < total {
            let n = r.read(&mut buf).await.expect("reading");
            assert!(n > 0, "closed after {got} bytes");
            got += n as u64;
        }
    };
    let timeout = Duration::from_secs(120);
    tokio::time::timeout(timeout, async { tokio::join!(write, read) })
        .await
        .expect("a gigabyte within two minutes");
    start.elapsed().as_secs_f64()
}

#[tokio::test]
#[ignore = "a measurement: moves 2 GiB; run in release"]
async fn cpu_per_relayed_gib() {
    let lifted = "1000000000000";
    let rv = RendezvousProcess::spawn(&[
        "--relay-rate-per-session",
        lifted,
        "--relay-rate-total",
        lifted,
    ]);
    // Baseline in the same run: plain loopback TCP.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut w = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut r, _) = listener.accept().await.unwrap();
    let raw = move_bytes(&mut w, &mut r, GIB).await;

    let p = Punch::new(&rv).await.unwrap();
    let (mut a, mut b) = p.relay(&rv).await.unwrap();
    let before = cpu_secs(rv.pid());
    let relayed = move_bytes(&mut a, &mut b, GIB).await;
    let cpu = cpu_secs(rv.pid()) - before;
    println!(
        "relay: 1 GiB in {relayed:.2} s ({:.0} MiB/s), rendezvous CPU {cpu:.2} s per GiB; \
         raw loopback TCP in the same run {raw:.2} s ({:.0} MiB/s)",
        1024.0 / relayed,
        1024.0 / raw
    );
    println!(
        "BENCH\trelay throughput, one session (loopback)\t{:.0} MiB/s, rendezvous {cpu:.2} CPU s per GiB\traw TCP {:.0} MiB/s\t{:.3}",
        1024.0 / relayed,
        1024.0 / raw,
        raw / relayed
    );
    assert!(cpu > 0.0, "the rendezvous did the copying");
}

/// Limits lifted so that one test client may punch hundreds of times from one address (the
/// relay's rates stay at their defaults).
const LIFTED: [&str; 18] = [
    "--max-connections-per-ip",
    "100000",
    "--handshakes-per-source-per-minute",
    "100000",
    "--punch-requests-per-minute",
    "100000",
    "--punch-requests-per-source-per-minute",
    "100000",
    "--punch-requests-per-network-per-minute",
    "100000",
    "--offers-per-target-per-source-per-minute",
    "100000",
    "--offers-per-target-per-network-per-minute",
    "100000",
    "--relay-max-sessions-per-peer",
    "100000",
    "--relay-max-sessions-per-source",
    "100000",
];

/// `n` punches between two test clients, each with its two relay tickets, and the two clients
/// (to keep them registered; the requester pinged, so that every offer has been read).
async fn ticket_pairs(
    rv: &RendezvousProcess,
    n: usize,
) -> (
    Vec<[punch_proto::message::RelayTicket; 2]>,
    TestClient,
    TestClient,
) {
    let mut a = TestClient::connect(rv.addr(), &rv.identity())
        .await
        .expect("registering the requester");
    let mut b = TestClient::connect(rv.addr(), &rv.identity())
        .await
        .expect("registering the target");
    let mut tickets = Vec::with_capacity(n);
    for _ in 0..n {
        let p = Punch::between(a, b).await.expect("a punch");
        tickets.push(p.tickets().expect("relay tickets"));
        (a, b) = (p.a, p.b);
    }
    a.ping().await.expect("a ping");
    (tickets, a, b)
}

/// Relayed pairs held open for the memory measurement.
const PAIRS: usize = 200;

#[tokio::test]
#[ignore = "a measurement: opens 800 connections; run in release"]
async fn rss_per_relayed_session() {
    let rv = RendezvousProcess::spawn(&LIFTED);
    let (punches, mut a, _b) = ticket_pairs(&rv, PAIRS).await;
    let before = rss_kib(rv.pid());
    let msg_len: usize = std::env::var("RELAY_COST_MSG_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let mut conns = Vec::with_capacity(PAIRS);
    for [ta, tb] in &punches {
        let mut x = punch_tests::relay::open_relay(rv.addr(), None, &ta.token, b"")
            .await
            .unwrap();
        let mut y = punch_tests::relay::open_relay(rv.addr(), None, &tb.token, b"")
            .await
            .unwrap();
        // A few kilobytes each way, as a yamux session's handshake and pings would (or
        // RELAY_COST_MSG_BYTES, to touch the whole copy buffers).
        let msg = vec![1u8; msg_len];
        x.write_all(&msg).await.unwrap();
        read_n(&mut y, msg.len(), RECV_TIMEOUT).await.unwrap();
        y.write_all(&msg).await.unwrap();
        read_n(&mut x, msg.len(), RECV_TIMEOUT).await.unwrap();
        conns.push((x, y));
    }
    a.ping().await.unwrap();
    let after = rss_kib(rv.pid());
    let per = (after.saturating_sub(before)) as f64 / PAIRS as f64;
    println!(
        "relay: {PAIRS} open relayed sessions ({msg_len} bytes each way), rendezvous RSS \
         {before} KiB -> {after} KiB, {per:.1} KiB per session"
    );
    println!("BENCH\trelay memory per open relayed session\t{per:.1} KiB\t-\t-");
    assert!(after > before, "the sessions cost memory");
    drop(conns);
}

/// Relayed pairs moving data at once for the load measurement.
const BUSY_PAIRS: usize = 500;
/// How long they move data.
const BUSY_FOR: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: 500 relayed sessions moving data for 10 s; run in release"]
async fn cpu_and_rss_with_500_relayed_sessions_moving_data() {
    // The default rates: 16 MiB/s per session, 128 MiB/s in total, shared by all 500.
    let mut flags = LIFTED.to_vec();
    flags.extend(["--relay-max-sessions", "1000"]);
    let rv = RendezvousProcess::spawn(&flags);
    let (tickets, _a, _b) = ticket_pairs(&rv, BUSY_PAIRS).await;
    let before_rss = rss_kib(rv.pid());
    let mut pairs = Vec::with_capacity(BUSY_PAIRS);
    for [ta, tb] in &tickets {
        let x = punch_tests::relay::open_relay(rv.addr(), None, &ta.token, b"")
            .await
            .unwrap();
        let y = punch_tests::relay::open_relay(rv.addr(), None, &tb.token, b"")
            .await
            .unwrap();
        pairs.push((x, y));
    }
    let cpu_before = cpu_secs(rv.pid());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut x, mut y) in pairs {
        tasks.spawn(async move {
            let chunk = vec![0x5au8; 16 * 1024];
            let mut buf = vec![0u8; 64 * 1024];
            let mut moved = 0u64;
            let (mut xr, mut xw) = x.split();
            let write = async {
                while start.elapsed() < BUSY_FOR {
                    if xw.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = xw.shutdown().await;
            };
            let read = async {
                while let Ok(n) = y.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    moved += n as u64;
                }
            };
            // Nothing comes back the other way; the read half only keeps the socket whole.
            let _ = &mut xr;
            tokio::join!(write, read);
            moved
        });
    }
    let mut total = 0u64;
    let mut rss_peak = 0;
    let watch = async {
        while start.elapsed() < BUSY_FOR {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss_peak = rss_peak.max(rss_kib(rv.pid()));
        }
    };
    let collect = async {
        while let Some(moved) = tasks.join_next().await {
            total += moved.unwrap();
        }
    };
    tokio::join!(watch, collect);
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(rv.pid()) - cpu_before;
    println!(
        "relay: {BUSY_PAIRS} sessions moving data for {secs:.1} s: {:.1} MiB/s through the relay \
         in total ({:.0} KiB/s per session), rendezvous CPU {:.0}% of one core \
         ({:.2} CPU s per GiB), RSS {before_rss} KiB before the sessions, peak {rss_peak} KiB \
         ({:.1} KiB per session)",
        total as f64 / secs / (1 << 20) as f64,
        total as f64 / secs / 1024.0 / BUSY_PAIRS as f64,
        100.0 * cpu / secs,
        cpu / (total as f64 / GIB as f64),
        (rss_peak.saturating_sub(before_rss)) as f64 / BUSY_PAIRS as f64,
    );
    assert!(total > 0, "data moved");
}
