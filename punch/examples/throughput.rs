//! Bulk throughput of one punched stream against raw TCP in the same run, on loopback.
//!
//! `cargo run --release -p punch --example throughput -- [MIB] [WINDOW_MIB] [ROUNDS]`
//! (defaults 1024, 16, 3): starts an in-process rendezvous and two clients, punches, then sends
//! MIB MiB over one stream (the receiver counts every byte) and the same over a plain loopback
//! TCP connection, alternating, ROUNDS times; prints each run and the median ratio. Only public
//! API, so the same file measures older commits.
#![allow(clippy::unwrap_used)] // a measuring tool: any failure is fatal and says where

use std::time::{Duration, Instant};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: MIB WINDOW_MIB ROUNDS"))
        .collect();
    let mib = args.first().copied().unwrap_or(1024);
    let window_mib = args.get(1).copied().unwrap_or(16);
    let rounds = args.get(2).copied().unwrap_or(3);
    let total = mib * 1024 * 1024;

    let server = punch_rendezvous::server::Server::spawn(punch_rendezvous::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Keypair::generate().unwrap(),
    ))
    .await
    .unwrap();
    let client = |accept: bool| {
        let mut config = Config::new(
            server.local_addr(),
            server.identity(),
            Keypair::generate().unwrap(),
        );
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.accept_inbound = accept;
        config.stream_window = (window_mib * 1024 * 1024) as u32;
        Client::start(config)
    };
    let (a, _) = client(false).await.unwrap();
    let (b, mut b_in) = client(true).await.unwrap();
    a.wait_registered(Duration::from_secs(10)).await.unwrap();
    b.wait_registered(Duration::from_secs(10)).await.unwrap();
    let (sa, sb) = tokio::join!(a.connect(b.id()), b_in.next());
    let (sa, mut sb) = (sa.unwrap(), sb.unwrap());

    let (mut punch_runs, mut tcp_runs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let w = sa.open_stream().await.unwrap();
        let r = sb.accept_stream().await.unwrap();
        let p = pump(w, r, total).await;
        let t = raw_tcp(total).await;
        println!(
            "round {round}: punch stream {p:.0} MB/s, raw TCP {t:.0} MB/s, ratio {:.3}",
            p / t
        );
        punch_runs.push(p);
        tcp_runs.push(t);
    }
    let (p, t) = (median(punch_runs), median(tcp_runs));
    println!(
        "median of {rounds}: punch stream {p:.0} MB/s ({mib} MiB, {window_mib} MiB window), raw TCP {t:.0} MB/s, ratio {:.3}",
        p / t
    );
}
