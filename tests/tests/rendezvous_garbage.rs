//! The real `rendezvous` binary under 1,000 connections of garbage from one script.
//!
//! Every connection sends one kind of malformed handshake (nothing, one byte, a zero-length
//! frame, an oversized length prefix, a truncated frame, a whole frame of the wrong length, a
//! bogus Noise message 1, a real message 1 followed by a bogus message 3, or random bytes),
//! half-closes, and must then be closed *by the server*, with one log line naming the failure.
//! Every 100th connection is a slowloris (a partial frame, never finished) that only the
//! handshake timeout may close. The server's memory must stay flat, and afterwards real
//! clients still register and get offers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punch_proto::noise::Handshake;
use punch_proto::{Keypair, PeerId};
use punch_tests::{rss_kib, RendezvousProcess, TestClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Garbage connections in total (the "1,000 connections").
const CONNECTIONS: usize = 1000;
/// Connections in flight at once: well under the server's 32 per IP, with slowloris room.
const BATCH: usize = 8;
/// One connection in this many is a slowloris.
const SLOWLORIS_EVERY: usize = 100;
/// The server's handshake timeout, short so slowloris connections end quickly; the
/// half-closed ones must be closed long before it (their log line says "failed", not "timed out").
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on how long the server may take to close one connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowed RSS growth between the first 100 connections and the end: per-connection state is
/// a few KiB and freed on close, so a leak of even 8 KiB per connection would exceed this.
const RSS_GROWTH_LIMIT_KIB: u64 = 8 * 1024;
/// Largest control frame the server accepts (`punch_proto::frame::MAX_CONTROL_FRAME`).
const MAX_FRAME: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Nothing,
    OneByte,
    ZeroLength,
    Oversized,
    Truncated,
    WrongLength,
    BadMessage1,
    Message1ThenGarbage,
    Random,
    Slowloris,
}

impl Kind {
    /// The kinds that half-close after sending, cycled through in order.
    const HALF_CLOSED: [Kind; 9] = [
        Kind::Nothing,
        Kind::OneByte,
        Kind::ZeroLength,
        Kind::Oversized,
        Kind::Truncated,
        Kind::WrongLength,
        Kind::BadMessage1,
        Kind::Message1ThenGarbage,
        Kind::Random,
    ];

    /// What the server's close line for this kind must contain.
    fn expected_log(self) -> &'static [&'static str] {
        const FAILED: &str = "closed: handshake failed";
        match self {
            Kind::Nothing => &[FAILED, "connection closed by the other side"],
            Kind::OneByte | Kind::Truncated => &[FAILED, "bytes remaining on stream"],
            Kind::ZeroLength => &[FAILED, "empty frame"],
            Kind::Oversized => &[FAILED, "frame of 65535 bytes exceeds the maximum"],
            Kind::WrongLength => &[FAILED, "handshake message 1 has"],
            Kind::BadMessage1 | Kind::Message1ThenGarbage => {
                &[FAILED, "noise handshake or decryption failed"]
            }
            Kind::Random => &[FAILED],
            Kind::Slowloris => &["closed: handshake timed out"],
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// The bytes a connection of `kind` sends (after the real message 1, for that kind).
fn garbage(kind: Kind, rng: &mut StdRng) -> Vec<u8> {
    match kind {
        Kind::Nothing => Vec::new(),
        Kind::OneByte => random_bytes(rng, 1),
        Kind::ZeroLength => {
            let mut v = vec![0, 0];
            let tail = rng.gen_range(0..64);
            v.extend(random_bytes(rng, tail));
            v
        }
        Kind::Oversized => {
            let mut v = vec![0xff, 0xff];
            let tail = rng.gen_range(0..2048);
            v.extend(random_bytes(rng, tail));
            v
        }
        Kind::Truncated | Kind::Slowloris => {
            let mut len = rng.gen_range(2..=MAX_FRAME);
            if kind == Kind::Slowloris && len == punch_proto::channel::XK_MESSAGE1_LEN {
                // A partial message 1 is a silent connection: closed at the same timeout but
                // only counted in the refusal summary (tests/tests/handshake_slots.rs).
                len += 1;
            }
            let mut v = (len as u16).to_be_bytes().to_vec();
            let sent = rng.gen_range(0..len);
            v.extend(random_bytes(rng, sent));
            v
        }
        Kind::WrongLength => {
            let mut len = rng.gen_range(1..=MAX_FRAME);
            if len == punch_proto::channel::XK_MESSAGE1_LEN {
                len += 1;
            }
            frame(&random_bytes(rng, len))
        }
        Kind::BadMessage1 => frame(&random_bytes(rng, punch_proto::channel::XK_MESSAGE1_LEN)),
        Kind::Message1ThenGarbage => {
            let len = rng.gen_range(1..=MAX_FRAME);
            frame(&random_bytes(rng, len))
        }
        Kind::Random => {
            let len = rng.gen_range(1..=8192);
            random_bytes(rng, len)
        }
    }
}

/// One garbage connection, closed by the server.
#[derive(Debug)]
struct Record {
    kind: Kind,
    port: u16,
    took: Duration,
}

async fn run_one(
    addr: SocketAddr,
    server_id: PeerId,
    kind: Kind,
    payload: Vec<u8>,
) -> anyhow::Result<Record> {
    let mut stream = TcpStream::connect(addr).await?;
    let port = stream.local_addr()?.port();
    let start = Instant::now();
    if kind == Kind::Message1ThenGarbage {
        let key = Keypair::generate()?;
        let m1 = Handshake::control_client(&key, &server_id)?.write(&[])?;
        stream.write_all(&frame(&m1)).await?;
        let mut m2 = [0u8; 2 + 48];
        tokio::time::timeout(CLOSE_TIMEOUT, stream.read_exact(&mut m2))
            .await
            .map_err(|_| anyhow::anyhow!("no message 2 from port {port}"))??;
        anyhow::ensure!(m2[..2] == [0, 48], "message 2 is one 48-byte frame");
    }
    // The server may close (even reset) before everything is written: that is its right.
    let _ = stream.write_all(&payload).await;
    if kind != Kind::Slowloris {
        let _ = stream.shutdown().await;
    }
    let limit = match kind {
        Kind::Slowloris => HANDSHAKE_TIMEOUT + CLOSE_TIMEOUT,
        _ => CLOSE_TIMEOUT,
    };
    // Nothing (more) may come from the server: the one read must see EOF or a reset.
    let mut buf = [0u8; 1024];
    match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
        Err(_) => anyhow::bail!("{kind:?} from port {port} still open after {limit:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => anyhow::bail!("{kind:?} from port {port}: server sent {n} bytes"),
    }
    Ok(Record {
        kind,
        port,
        took: start.elapsed(),
    })
}

/// The server's close lines by client port: `conn{addr=127.0.0.1:PORT}: ... closed: ...`.
fn close_lines(log: &str) -> HashMap<u16, Vec<String>> {
    let mut by_port: HashMap<u16, Vec<String>> = HashMap::new();
    for line in log.lines().filter(|l| l.contains("closed: handshake")) {
        let port = line
            .split("conn{addr=")
            .nth(1)
            .and_then(|rest| rest.split(['}', ' ']).next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .unwrap_or_else(|| panic!("close line without a client address: {line}"));
        by_port.entry(port).or_default().push(line.to_string());
    }
    by_port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_thousand_garbage_connections() {
    let started = Instant::now();
    let seed = std::env::var("PUNCH_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("seed {seed} (set PUNCH_GARBAGE_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    let timeout_secs = HANDSHAKE_TIMEOUT.as_secs().to_string();
    // All connections come from 127.0.0.1: lift the per-source handshake rate and share, and
    // the budget of failure lines, so that every one of them is handshaken and logged on its
    // own line (those limits are tested in handshake_slots.rs).
    let mut server = RendezvousProcess::spawn(&[
        "--handshake-timeout-secs",
        &timeout_secs,
        "--handshakes-per-source-per-minute",
        "1000000",
        "--max-pending-handshakes-per-prefix",
        "512",
        "--failure-log-lines-per-interval",
        "1000000",
    ]);
    let (addr, server_id, pid) = (server.addr(), server.identity(), server.pid());
    let rss_start = rss_kib(pid);

    let mut records = Vec::with_capacity(CONNECTIONS);
    let mut slowloris = JoinSet::new();
    let mut rss_after_100 = None;
    for batch_start in (0..CONNECTIONS).step_by(BATCH) {
        let mut batch = JoinSet::new();
        for i in batch_start..(batch_start + BATCH).min(CONNECTIONS) {
            let kind = if i % SLOWLORIS_EVERY == SLOWLORIS_EVERY / 2 {
                Kind::Slowloris
            } else {
                Kind::HALF_CLOSED[i % Kind::HALF_CLOSED.len()]
            };
            let payload = garbage(kind, &mut rng);
            let conn = run_one(addr, server_id, kind, payload);
            if kind == Kind::Slowloris {
                slowloris.spawn(conn);
            } else {
                batch.spawn(conn);
            }
        }
        while let Some(res) = batch.join_next().await {
            records.push(res.unwrap().unwrap());
        }
        if rss_after_100.is_none() && batch_start + BATCH >= 100 {
            rss_after_100 = Some(rss_kib(pid));
        }
    }
    while let Some(res) = slowloris.join_next().await {
        let record = res.unwrap().unwrap();
        assert!(
            record.took >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
            "a slowloris was closed after {:?}, before the handshake timeout",
            record.took
        );
        records.push(record);
    }
    assert_eq!(records.len(), CONNECTIONS);
    let slowest = records
        .iter()
        .filter(|r| r.kind != Kind::Slowloris)
        .map(|r| r.took)
        .max()
        .unwrap();
    let rss_after_100 = rss_after_100.unwrap();
    let rss_end = rss_kib(pid);
    println!(
        "{CONNECTIONS} garbage connections in {:?}; slowest half-closed close {slowest:?}",
        started.elapsed()
    );
    println!("server RSS: start {rss_start} KiB, after 100 {rss_after_100} KiB, end {rss_end} KiB");
    assert!(
        rss_end <= rss_after_100 + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {rss_after_100} KiB to {rss_end} KiB"
    );
    assert!(server.exited().is_none(), "the server died");

    // Every connection got exactly one close line naming its failure. The log is written
    // just after the socket closes, so give the last lines a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lines = close_lines(&server.log_text());
    while lines.values().map(Vec::len).sum::<usize>() < CONNECTIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = close_lines(&server.log_text());
    }
    assert_eq!(
        lines.values().map(Vec::len).sum::<usize>(),
        CONNECTIONS,
        "one close line per connection"
    );
    let mut uses: HashMap<u16, usize> = HashMap::new();
    for r in &records {
        *uses.entry(r.port).or_default() += 1;
    }
    let mut checked: HashMap<Kind, usize> = HashMap::new();
    for r in &records {
        let at_port = lines.get(&r.port).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            at_port.len(),
            uses[&r.port],
            "close lines for port {}",
            r.port
        );
        if uses[&r.port] > 1 {
            // The port was reused by another connection: the lines cannot be told apart.
            continue;
        }
        for expected in r.kind.expected_log() {
            assert!(
                at_port[0].contains(expected),
                "{:?} from port {}: expected {expected:?} in {:?}",
                r.kind,
                r.port,
                at_port[0]
            );
        }
        *checked.entry(r.kind).or_default() += 1;
    }
    println!("close lines checked per kind: {checked:?}");
    assert_eq!(
        checked.len(),
        Kind::HALF_CLOSED.len() + 1,
        "every kind checked"
    );

    // Real clients still register and are served.
    let mut a = TestClient::connect(addr, &server_id).await.unwrap();
    let mut b = TestClient::connect(addr, &server_id).await.unwrap();
    assert_eq!(a.registered().observed, a.local_addr());
    a.punch_offers_with(&mut b).await.unwrap();
    a.ping().await.unwrap();
    assert!(server.log_text().contains("registered"));
    assert!(server.exited().is_none(), "the server died");
    println!("total runtime {:?}", started.elapsed());
}
