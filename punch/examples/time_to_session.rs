//! Time from a connect request to an open, authenticated session on loopback, against the
//! same punch with the old fixed 50 ms dial margin, in the same run.
//!
//! `cargo run --release -p punch --example time_to_session -- [PUNCHES]` (default 50): two
//! in-process rendezvous servers, one with the default dial schedule (measured path delay and
//! variation plus `DEFAULT_DIAL_MARGIN`), one with a 50 ms margin (what every punch waited
//! before issue 16); on each, PUNCHES pairs of registered clients punch once each, alternating
//! between the servers (a pair punching again at once would find its previous connection's
//! address pair still closing). Prints p50 and p90 of each and their ratio, and a raw TCP
//! connect on loopback for scale.
#![allow(clippy::unwrap_used)] // a measuring tool: any failure is fatal and says where

use std::time::{Duration, Instant};

use punch::{Client, Config, Incoming};
use punch_proto::Keypair;
use punch_rendezvous::server::Server;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn server(margin: Option<Duration>) -> Server {
    let mut config =
        punch_rendezvous::Config::new("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap());
    // Every client is on 127.0.0.1: lift what is counted per address.
    config.max_connections_per_ip = 100_000;
    config.max_registrations_per_source = 100_000;
    config.max_registrations_per_network = 100_000;
    config.max_pending_handshakes_per_prefix = 100_000;
    config.handshakes_per_source_per_minute = 100_000;
    config.punch_requests_per_minute = 100_000;
    config.punch_requests_per_source_per_minute = 100_000;
    config.punch_requests_per_network_per_minute = 100_000;
    config.offers_per_target_per_source_per_minute = 100_000;
    config.offers_per_target_per_network_per_minute = 100_000;
    if let Some(margin) = margin {
        config.dial_margin = margin;
    }
    Server::spawn(config).await.unwrap()
}

async fn pair(server: &Server) -> (Client, Client, Incoming) {
    let client = |accept: bool| {
        let mut config = Config::new(
            server.local_addr(),
            server.identity(),
            Keypair::generate().unwrap(),
        );
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.accept_inbound = accept;
        Client::start(config)
    };
    let (a, _) = client(false).await.unwrap();
    let (b, b_in) = client(true).await.unwrap();
    a.wait_registered(Duration::from_secs(10)).await.unwrap();
    b.wait_registered(Duration::from_secs(10)).await.unwrap();
    // The first pongs (the server's clock) come one round trip after registering.
    tokio::time::sleep(Duration::from_millis(20)).await;
    (a, b, b_in)
}

async fn punch_once(a: &Client, b: &Client, b_in: &mut Incoming) -> Duration {
    let asked = Instant::now();
    let (sa, sb) = tokio::join!(a.connect(b.id()), b_in.next());
    let took = asked.elapsed();
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let path = sa.path().kind;
    assert_eq!(path, punch::PathKind::Direct, "after {took:?}");
    drop((sa, sb));
    took
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let punches: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("PUNCHES"))
        .unwrap_or(50);
    let (now, before) = (
        server(None).await,
        server(Some(Duration::from_millis(50))).await,
    );
    let (mut pairs_now, mut pairs_before) = (Vec::new(), Vec::new());
    for _ in 0..punches {
        pairs_now.push(pair(&now).await);
        pairs_before.push(pair(&before).await);
    }
    let (mut measured, mut fixed, mut tcp) = (Vec::new(), Vec::new(), Vec::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for ((a, b, b_in), (c, d, d_in)) in pairs_now.iter_mut().zip(pairs_before.iter_mut()) {
        measured.push(punch_once(a, b, b_in).await);
        fixed.push(punch_once(c, d, d_in).await);
        let t = Instant::now();
        let (s, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        tcp.push(t.elapsed());
        drop((s.unwrap(), accepted.unwrap()));
        // Sessions close in the background; let them, so each punch starts alike.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (m50, m90) = (
        percentile(&mut measured, 0.5),
        percentile(&mut measured, 0.9),
    );
    let (f50, f90) = (percentile(&mut fixed, 0.5), percentile(&mut fixed, 0.9));
    let t50 = percentile(&mut tcp, 0.5);
    println!(
        "time to session (loopback, {punches} punches each): measured dial moment p50 {:.1} ms p90 {:.1} ms; fixed 50 ms margin p50 {:.1} ms p90 {:.1} ms; ratio p50 {:.3}; raw TCP connect p50 {:.3} ms",
        ms(m50),
        ms(m90),
        ms(f50),
        ms(f90),
        ms(m50) / ms(f50),
        ms(t50)
    );
    println!(
        "BENCH\ttime to a session, loopback p50\t{:.1} ms (p90 {:.1})\tfixed 50 ms margin {:.1} ms\t{:.3}",
        ms(m50),
        ms(m90),
        ms(f50),
        ms(m50) / ms(f50)
    );
    for (a, b, _) in pairs_now.into_iter().chain(pairs_before) {
        a.shutdown().await;
        b.shutdown().await;
    }
}
