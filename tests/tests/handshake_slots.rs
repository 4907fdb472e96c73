//! Handshake slots and per-source handshake rates of the real `rendezvous` binary.
//!
//! - Many silent and half-open connections from 20 loopback sources, far more than the
//!   server's (deliberately small) handshake slots: silent ones hold only a socket, half-open
//!   ones are evicted oldest-first from the busiest sources, and two honest clients from other
//!   addresses still register, get a punch offer and are answered.
//! - Silent connections from 20 sources beyond the places for connections waiting for
//!   message 1: the oldest of the busiest sources are dropped, honest clients get in.
//! - A replay flood of one recorded message 1 from 20 sources: only each source's handshake
//!   budget is answered, everything else is refused, the refusals and the failures beyond a
//!   small budget of lines appear as a few summary lines (not one line each), and an honest
//!   client from another address still registers.
//!
//! Each attacker and honest client binds its own 127.0.0.x (127.0.0.0/8 is all local on
//! Linux), so the per-source limits act as they would on the internet.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use punch_proto::noise::Handshake;
use punch_proto::{Keypair, PeerId};
use punch_tests::{default_register, RendezvousProcess, TestClient, RECV_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// Bound on waiting for the server's summary lines (written once a second in these tests).
const SUMMARY_WAIT: Duration = Duration::from_secs(5);

async fn connect_from(ip: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(server).await
}

async fn honest_from(ip: &str, server: SocketAddr, id: &PeerId) -> TestClient {
    let stream = connect_from(ip, server).await.unwrap();
    TestClient::handshake(
        stream,
        id,
        Keypair::generate().unwrap(),
        &default_register(),
    )
    .await
    .unwrap()
}

fn framed_message1(server_id: &PeerId) -> Vec<u8> {
    let key = Keypair::generate().unwrap();
    let m1 = Handshake::control_client(&key, server_id)
        .unwrap()
        .write(&[])
        .unwrap();
    let mut out = (m1.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&m1);
    out
}

/// The sum over the server's refusal summaries of the count just before `tag`.
fn summed(log: &str, tag: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("refused ") && l.contains("connections from"))
        .filter_map(|l| {
            let before = &l[..l.find(tag)?];
            before.rsplit([' ', ':', ',']).next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Waits until the summaries count at least `want` before `tag`.
async fn wait_summed(server: &RendezvousProcess, tag: &str, want: u64) -> u64 {
    let deadline = Instant::now() + SUMMARY_WAIT;
    loop {
        let n = summed(&server.log_text(), tag);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sources of the slot attack, and connections of each kind per source.
const SOURCES: u8 = 20;
const SILENT_PER_SOURCE: usize = 4;
const HALF_OPEN_PER_SOURCE: usize = 4;
/// The server's handshake slots in the slot test: 80 half-open handshakes exceed them 5-fold.
const SLOTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_floods_do_not_lock_out_honest_clients() {
    let slots = SLOTS.to_string();
    let server = RendezvousProcess::spawn(&[
        "--max-handshakes",
        &slots,
        "--max-pending-handshakes-per-prefix",
        "4",
        "--max-connections-per-ip",
        "8",
        // Long timeouts: the attack is still there while the honest clients register.
        "--handshake-timeout-secs",
        "60",
        "--first-message-timeout-secs",
        "60",
        "--refusal-log-interval-secs",
        "1",
    ]);
    let (addr, id) = (server.addr(), server.identity());

    // Every attack connection from 20 sources; the sockets are held until the end.
    let mut held = Vec::new();
    let mut answered = 0;
    for src in 1..=SOURCES {
        let ip = format!("127.0.1.{src}");
        for _ in 0..SILENT_PER_SOURCE {
            held.push(connect_from(&ip, addr).await.unwrap());
        }
        for _ in 0..HALF_OPEN_PER_SOURCE {
            let mut s = connect_from(&ip, addr).await.unwrap();
            s.write_all(&framed_message1(&id)).await.unwrap();
            // Message 2 means the handshake took a slot (it may be evicted later); a close
            // means it was evicted already. Either way the server has dealt with it.
            let mut m2 = [0u8; 50];
            if tokio::time::timeout(RECV_TIMEOUT, s.read_exact(&mut m2))
                .await
                .unwrap()
                .is_ok()
            {
                answered += 1;
            }
            held.push(s);
        }
    }
    let half_open = usize::from(SOURCES) * HALF_OPEN_PER_SOURCE;
    assert!(
        answered >= SLOTS,
        "the slots were filled ({answered} answered)"
    );

    // Honest clients from two other addresses register and are served through the attack.
    let mut a = honest_from("127.0.0.50", addr, &id).await;
    let mut b = honest_from("127.0.0.51", addr, &id).await;
    a.punch_offers_with(&mut b).await.unwrap();
    a.ping().await.unwrap();
    b.ping().await.unwrap();

    // The half-open handshakes beyond the slots were evicted; the first honest client evicted
    // one more, the second found the slot the first had freed. That shows as summaries, not as
    // a line per connection.
    let want = (half_open - SLOTS + 1) as u64;
    let evicted = wait_summed(&server, " (evicted)", want).await;
    assert_eq!(evicted, want, "evictions");
    let log = server.log_text();
    let lines = log.lines().count();
    println!("{evicted} evictions; {lines} log lines:\n{log}");
    assert!(
        lines < 50,
        "{lines} log lines for {half_open} half-open handshakes"
    );
    drop(held);
}

/// Connections waiting for message 1 that the server keeps in the waiting test.
const WAITING: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_many_sources_are_dropped_oldest_first() {
    let waiting = WAITING.to_string();
    let server = RendezvousProcess::spawn(&[
        "--max-waiting-connections",
        &waiting,
        "--first-message-timeout-secs",
        "60",
        "--refusal-log-interval-secs",
        "1",
    ]);
    let (addr, id) = (server.addr(), server.identity());
    let mut held = Vec::new();
    for src in 1..=SOURCES {
        for _ in 0..SILENT_PER_SOURCE {
            held.push(connect_from(&format!("127.0.3.{src}"), addr).await.unwrap());
        }
    }
    let silent = usize::from(SOURCES) * SILENT_PER_SOURCE;
    // The server accepts in order, so the silent ones are all placed before the first honest
    // client, which evicts one more; the second finds the place the first has left.
    let mut a = honest_from("127.0.0.52", addr, &id).await;
    let mut b = honest_from("127.0.0.53", addr, &id).await;
    a.ping().await.unwrap();
    b.ping().await.unwrap();
    let want = (silent - WAITING + 1) as u64;
    let evicted = wait_summed(&server, " (evicted)", want).await;
    assert_eq!(evicted, want, "silent connections dropped for newer ones");
    // The dropped ones are closed by the server: the oldest is among them.
    let mut buf = [0u8; 1];
    let first = tokio::time::timeout(RECV_TIMEOUT, held[0].read(&mut buf))
        .await
        .expect("the oldest silent connection was closed");
    assert!(matches!(first, Ok(0) | Err(_)), "closed, not answered");
    let lines = server.log_text().lines().count();
    assert!(
        lines < 50,
        "{lines} log lines for {silent} silent connections"
    );
}

/// Replayed messages 1 in the flood, how many are in flight at once (under the per-IP limit
/// of 32), and from how many sources (127.0.2.1 up).
const REPLAYS: usize = 2000;
const IN_FLIGHT: usize = 16;
const REPLAY_SOURCES: usize = 20;
/// Handshakes each flooding source may start per minute (and at once).
const BUDGET: usize = 5;
/// Failed handshakes the server logs one line each per (1 s) interval.
const FAILURE_LINES: usize = 10;

async fn replay_once(addr: SocketAddr, source: usize, m1: &[u8]) -> bool {
    let ip = format!("127.0.2.{}", 1 + source % REPLAY_SOURCES);
    let mut s = connect_from(&ip, addr).await.unwrap();
    let _ = s.write_all(m1).await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    // The server may reset rather than close: what was read before still counts.
    let _ = tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut got))
        .await
        .unwrap();
    !got.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_flood_is_rate_limited_and_summarised() {
    let (budget, lines) = (BUDGET.to_string(), FAILURE_LINES.to_string());
    let server = RendezvousProcess::spawn(&[
        "--handshakes-per-source-per-minute",
        &budget,
        "--failure-log-lines-per-interval",
        &lines,
        "--refusal-log-interval-secs",
        "1",
    ]);
    let (addr, id) = (server.addr(), server.identity());
    let m1 = framed_message1(&id);
    let started = Instant::now();

    let flood = async {
        let mut answered = 0;
        let mut tasks = JoinSet::new();
        for i in 0..REPLAYS {
            if i >= IN_FLIGHT {
                answered += usize::from(tasks.join_next().await.unwrap().unwrap());
            }
            let m1 = m1.clone();
            tasks.spawn(async move { replay_once(addr, i, &m1).await });
        }
        while let Some(r) = tasks.join_next().await {
            answered += usize::from(r.unwrap());
        }
        answered
    };
    // An honest client from another address registers in the middle of the flood.
    let honest = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c = honest_from("127.0.0.90", addr, &id).await;
        c.ping().await.unwrap();
        c
    };
    let (answered, mut c) = tokio::join!(flood, honest);
    println!(
        "{REPLAYS} replays in {:?}; {answered} answered",
        started.elapsed()
    );
    // Each source's budget, plus what refilled while the flood ran (one every 12 s).
    let refilled = (started.elapsed().as_secs() as usize * BUDGET).div_ceil(60);
    assert!(
        (REPLAY_SOURCES..=REPLAY_SOURCES * (BUDGET + refilled)).contains(&answered),
        "{answered} replays were answered with message 2"
    );

    let refused = (REPLAYS - answered) as u64;
    let rate = wait_summed(&server, " (rate)", refused).await;
    assert_eq!(rate, refused, "every refusal is counted in a summary");
    // Every answered replay failed its handshake: on its own line or counted in a summary.
    let deadline = Instant::now() + SUMMARY_WAIT;
    let (own_lines, unlogged) = loop {
        let log = server.log_text();
        let own = log.matches("closed: handshake failed").count();
        let unlogged = summed(&log, " failed handshakes not logged") as usize;
        if own + unlogged >= answered || Instant::now() > deadline {
            break (own, unlogged);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        own_lines + unlogged,
        answered,
        "every failure is logged or counted"
    );
    assert!(unlogged > 0, "the budget of failure lines was spent");
    let log = server.log_text();
    let lines = log.lines().count();
    println!("{lines} log lines:\n{log}");
    assert!(lines < 50, "{lines} log lines for {REPLAYS} replays");
    c.ping().await.unwrap();
}
