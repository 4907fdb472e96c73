//! Bulk throughput of one punched stream against raw TCP in the same run, on loopback.
//!
//! `cargo run --release -p punch --example throughput -- [MIB] [WINDOW_MIB] [ROUNDS] [tunnel]`
//! (defaults 1024, 16, 3): starts an in-process rendezvous and two clients, punches, then sends
//! MIB MiB over one stream (the receiver counts every byte) and the same over a plain loopback
//! TCP connection, alternating, ROUNDS times; prints each run and the median ratio. Each round
//! also measures, as anchors: the one-core seal rate of the Noise transport (MIB MiB in
//! 65,519-byte messages; the stream as a fraction of it), the same transfer over snow +
//! tokio-yamux without punch (`anchors.rs`), and 16 streams of MIB/16 MiB each at once over
//! the punched session (their total rate against the one stream). After the rounds, 1 KiB
//! request/response latency (p50, p99) over a stream, over TCP and over snow + tokio-yamux. With
//! `tunnel`, a third measurement runs what `punch connect --local` -> `punch listen --forward`
//! do (TCP -> `forward::splice` -> stream -> `forward::serve` -> TCP), on a second session, and
//! its ratio to the stream. With `relay`, a third pair of clients that dial nothing directly
//! gets a session through the rendezvous's relay (its rate limits lifted for the measurement),
//! and the same transfer over one of its streams is compared with the direct stream: what the
//! relay's extra hop and copy cost. Only public API, so the same file measures older commits
//! (`relay` needs the relay). With `profile`, only the punched stream runs (for `perf record`).
#![allow(clippy::unwrap_used)] // a measuring tool: any failure is fatal and says where

use std::time::{Duration, Instant};

mod anchors;

use punch::{Client, Config};
use punch_proto::Keypair;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 256 * 1024;

async fn pump<W: AsyncWrite + Unpin, R: AsyncRead + Unpin + Send + 'static>(
    mut w: W,
    mut r: R,
    total: u64,
) -> f64 {
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < total {
            let n = r.read(&mut buf).await.expect("read");
            assert!(n > 0, "stream ended early at {got}");
            got += n as u64;
        }
        got
    });
    let buf = vec![0x5Au8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        w.write_all(&buf[..n]).await.expect("write");
        sent += n as u64;
    }
    w.flush().await.expect("flush");
    let got = reader.await.expect("reader");
    assert_eq!(got, total);
    total as f64 / start.elapsed().as_secs_f64() / 1e6
}

async fn raw_tcp(total: u64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, (b, _)) = (a.unwrap(), b.unwrap());
    pump(a, b, total).await
}

/// Request/response round trips of `MESSAGE` bytes each way, after which the other side
/// echoes them: (p50, p99) in microseconds over `n` round trips.
async fn round_trips<S>(mut client: S, server: S, n: usize) -> (f64, f64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    const MESSAGE: usize = 1024;
    let echo = tokio::spawn(async move {
        let mut server = server;
        let mut buf = [0u8; MESSAGE];
        while server.read_exact(&mut buf).await.is_ok() {
            server.write_all(&buf).await.unwrap();
        }
    });
    let (request, mut response) = ([0x5Au8; MESSAGE], [0u8; MESSAGE]);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.write_all(&request).await.unwrap();
        client.read_exact(&mut response).await.unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(client);
    echo.abort();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[n / 2], times[n * 99 / 100])
}

/// Sends `total` bytes split over `streams` streams of one session at once; total MB/s.
async fn pump_many(a: &punch::Session, b: &mut punch::Session, streams: u64, total: u64) -> f64 {
    let mut pairs = Vec::new();
    for _ in 0..streams {
        let w = a.open_stream().await.unwrap();
        let r = b.accept_stream().await.unwrap();
        pairs.push((w, r));
    }
    let start = Instant::now();
    let each = total / streams;
    let runs: Vec<_> = pairs
        .into_iter()
        .map(|(w, r)| tokio::spawn(pump(w, r, each)))
        .collect();
    for run in runs {
        run.await.unwrap();
    }
    (each * streams) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let tunnel = std::env::args().any(|a| a == "tunnel");
    let relay = std::env::args().any(|a| a == "relay");
    let only_stream = std::env::args().any(|a| a == "profile");
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| a != "tunnel" && a != "relay" && a != "profile")
        .map(|a| a.parse().expect("numbers: MIB WINDOW_MIB ROUNDS"))
        .collect();
    let mib = args.first().copied().unwrap_or(1024);
    let window_mib = args.get(1).copied().unwrap_or(16);
    let rounds = args.get(2).copied().unwrap_or(3);
    let total = mib * 1024 * 1024;

    let mut server_config =
        punch_rendezvous::Config::new("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap());
    // Measure the relay's own cost, not its default 16 MiB/s per-session cap.
    server_config.relay_rate_per_session = 1 << 40;
    server_config.relay_rate_total = 1 << 40;
    let server = punch_rendezvous::server::Server::spawn(server_config)
        .await
        .unwrap();
    let client_with = |accept: bool, direct: bool| {
        let mut config = Config::new(
            server.local_addr(),
            server.identity(),
            Keypair::generate().unwrap(),
        );
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.accept_inbound = accept;
        config.stream_window = (window_mib * 1024 * 1024) as u32;
        config.direct = direct;
        Client::start(config)
    };
    let client = |accept: bool| client_with(accept, true);
    let (a, _) = client(false).await.unwrap();
    let (b, mut b_in) = client(true).await.unwrap();
    a.wait_registered(Duration::from_secs(10)).await.unwrap();
    b.wait_registered(Duration::from_secs(10)).await.unwrap();
    let (sa, sb) = tokio::join!(a.connect(b.id()), b_in.next());
    let (sa, mut sb) = (sa.unwrap(), sb.unwrap());

    // The tunnel: a sink service behind `forward::serve` on a second listening client, and a
    // local listener whose connections `forward::splice` puts on streams of a second session.
    let local = if tunnel {
        let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let (c, _) = client(false).await.unwrap();
        let (d, d_in) = client(true).await.unwrap();
        c.wait_registered(Duration::from_secs(10)).await.unwrap();
        d.wait_registered(Duration::from_secs(10)).await.unwrap();
        tokio::spawn(punch::forward::serve(
            d_in,
            sink_addr,
            punch::forward::ListenLimits::default(),
        ));
        let session = c.connect(d.id()).await.unwrap();
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local_addr = local.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = local.accept().await {
                let stream = session.open_stream().await.unwrap();
                tokio::spawn(punch::forward::splice(tcp, stream));
            }
        });
        // Both clients live until the process exits.
        std::mem::forget((c, d));
        Some((local_addr, sink))
    } else {
        None
    };

    let relayed = if relay {
        let (e, _) = client_with(false, false).await.unwrap();
        let (f, mut f_in) = client_with(true, false).await.unwrap();
        e.wait_registered(Duration::from_secs(10)).await.unwrap();
        f.wait_registered(Duration::from_secs(10)).await.unwrap();
        let (se, sf) = tokio::join!(e.connect(f.id()), f_in.next());
        let (se, sf) = (se.unwrap(), sf.unwrap());
        assert_eq!(se.path().kind, punch::PathKind::Relayed);
        std::mem::forget((e, f));
        Some((se, sf))
    } else {
        None
    };
    let mut relay_runs = Vec::new();
    let mut relayed = relayed;
    let (mut punch_runs, mut tcp_runs, mut tunnel_runs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seal_runs, mut plain_runs, mut many_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let w = sa.open_stream().await.unwrap();
        let r = sb.accept_stream().await.unwrap();
        let p = pump(w, r, total).await;
        if only_stream {
            println!("round {round}: punch stream {p:.0} MB/s");
            continue;
        }
        let t = raw_tcp(total).await;
        let (w, r) = anchors::plain_yamux_stream((window_mib * 1024 * 1024) as u32).await;
        let y = pump(w, r, total).await;
        let s = tokio::task::spawn_blocking(move || anchors::seal_rate(total))
            .await
            .unwrap();
        let m = pump_many(&sa, &mut sb, 16, total).await;
        print!(
            "round {round}: punch stream {p:.0} MB/s, raw TCP {t:.0} MB/s, ratio {:.3}; \
             snow+yamux {y:.0} MB/s, stream/that {:.3}; seal {s:.0} MB/s, stream/seal {:.3}; \
             16 streams {m:.0} MB/s, {:.3} of one",
            p / t,
            p / y,
            p / s,
            m / p
        );
        plain_runs.push(p / y);
        seal_runs.push(p / s);
        many_runs.push(m / p);
        if let Some((local_addr, sink)) = &local {
            let w = TcpStream::connect(local_addr).await.unwrap();
            let (r, _) = sink.accept().await.unwrap();
            let u = pump(w, r, total).await;
            print!("; tunnel {u:.0} MB/s, {:.3} of the stream", u / p);
            tunnel_runs.push(u / p);
        }
        if let Some((se, sf)) = relayed.as_mut() {
            let w = se.open_stream().await.unwrap();
            let r = sf.accept_stream().await.unwrap();
            let v = pump(w, r, total).await;
            print!("; relayed stream {v:.0} MB/s, {:.3} of direct", v / p);
            relay_runs.push(v / p);
        }
        println!();
        punch_runs.push(p);
        tcp_runs.push(t);
    }
    if only_stream {
        return;
    }
    // Latency of small messages: 1 KiB request/response over a stream and over TCP, 2,000
    // round trips each, alternating.
    let (mut rr_stream, mut rr_tcp, mut rr_plain) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let a = sa.open_stream().await.unwrap();
        let b = sb.accept_stream().await.unwrap();
        let (s50, s99) = round_trips(a, b, 2000).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (a, (b, _)) = (a.unwrap(), b.unwrap());
        a.set_nodelay(true).unwrap();
        b.set_nodelay(true).unwrap();
        let (t50, t99) = round_trips(a, b, 2000).await;
        let (a, b) = anchors::plain_yamux_stream((window_mib * 1024 * 1024) as u32).await;
        let (y50, y99) = round_trips(a, b, 2000).await;
        println!(
            "round {round}: 1 KiB request/response p50/p99: stream {s50:.0}/{s99:.0} us, TCP {t50:.0}/{t99:.0} us, snow+yamux {y50:.0}/{y99:.0} us; p50 stream/TCP {:.2}, stream/(snow+yamux) {:.2}",
            s50 / t50,
            s50 / y50
        );
        rr_stream.push(s50);
        rr_tcp.push(t50);
        rr_plain.push(s50 / y50);
    }
    let (p, t) = (median(punch_runs), median(tcp_runs));
    print!(
        "median of {rounds}: punch stream {p:.0} MB/s ({mib} MiB, {window_mib} MiB window), raw TCP {t:.0} MB/s, ratio {:.3}",
        p / t
    );
    print!(
        "; stream/(snow+yamux) {:.3}; stream/seal {:.3}; 16 streams/one {:.3}",
        median(plain_runs.clone()),
        median(seal_runs.clone()),
        median(many_runs.clone())
    );
    if tunnel {
        print!("; tunnel/stream {:.3}", median(tunnel_runs.clone()));
    }
    if relay {
        print!("; relayed/direct {:.3}", median(relay_runs.clone()));
    }
    let (s50, t50) = (median(rr_stream), median(rr_tcp));
    println!(
        "; 1 KiB request/response p50 stream {s50:.0} us, TCP {t50:.0} us, ratio {:.2}, stream/(snow+yamux) {:.2}",
        s50 / t50,
        median(rr_plain)
    );
    // One line per figure for scripts/bench.sh's table: measurement, punch, baseline, ratio.
    println!(
        "BENCH\tone stream ({mib} MiB, loopback)\t{p:.0} MB/s\traw TCP {t:.0} MB/s\t{:.3}",
        p / t
    );
    println!(
        "BENCH\tone stream / snow + tokio-yamux without punch\t{p:.0} MB/s\tsame transfer over plain snow+yamux\t{:.3}",
        median(plain_runs)
    );
    println!(
        "BENCH\tone stream / one-core seal rate (both sides share 2 cores)\t{p:.0} MB/s\tNoise seal, one core\t{:.3}",
        median(seal_runs)
    );
    println!(
        "BENCH\t16 streams at once / one stream\t-\tone stream {p:.0} MB/s\t{:.3}",
        median(many_runs)
    );
    if tunnel {
        println!(
            "BENCH\tCLI tunnel / session\t-\tthe stream in the same run\t{:.3}",
            median(tunnel_runs)
        );
    }
    if relay {
        println!(
            "BENCH\trelayed stream / direct (loopback, relay limits lifted)\t-\tdirect stream\t{:.3}",
            median(relay_runs)
        );
    }
    println!(
        "BENCH\t1 KiB request/response p50 over a stream\t{s50:.0} us\tTCP {t50:.0} us\t{:.2}",
        s50 / t50
    );
}
