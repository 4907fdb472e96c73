//! Attacks on a real rendezvous on loopback, all at once, while an honest pair punches.
//!
//! Each attacker comes from its own loopback address (127.0.0.0/8 is all ours), the honest
//! peers from theirs, so per-IP limits act as they would on the internet. While garbage, a
//! slowloris, half-open handshakes, a connection flood and a punch-request flood run, the
//! honest peers must register, punch, and move data both ways; afterwards the server must have
//! refused or closed every attacker connection with its limits, and its connection count and
//! registry must be back to the honest peers.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use punch::{Client, Config, Error};
use punch_proto::noise::Handshake;
use punch_proto::Keypair;
use punch_rendezvous::Server;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

const HONEST_A: &str = "127.0.0.11";
const HONEST_B: &str = "127.0.0.12";

async fn connect_from(ip: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(server).await
}

async fn honest(server: &Server, ip: &str, accept: bool) -> (Client, punch::Incoming) {
    let mut config = Config::new(
        server.local_addr(),
        server.identity(),
        Keypair::generate().unwrap(),
    );
    config.bind = format!("{ip}:0").parse().unwrap();
    config.accept_inbound = accept;
    let (c, inc) = Client::start(config).await.unwrap();
    c.wait_registered(Duration::from_secs(10)).await.unwrap();
    (c, inc)
}

/// Garbage: random bytes, oversized and empty frames, from one address.
async fn garbage(server: SocketAddr, until: Instant) -> u32 {
    let mut n = 0;
    while Instant::now() < until && n < 2000 {
        let Ok(mut s) = connect_from("127.0.0.21", server).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let mut junk = vec![0u8; 2 + (n as usize * 37) % 300];
        rand::thread_rng().fill_bytes(&mut junk);
        match n % 3 {
            0 => junk[..2].copy_from_slice(&[0xff, 0xff]),
            1 => junk[..2].copy_from_slice(&[0, 0]),
            _ => {}
        }
        let _ = s.write_all(&junk).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
        n += 1;
    }
    n
}

/// Slowloris: many connections, one byte a second, never finishing message 1.
async fn slowloris(server: SocketAddr, until: Instant) -> u32 {
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = connect_from("127.0.0.22", server).await {
            held.push(s);
        }
    }
    let opened = held.len() as u32;
    while Instant::now() < until {
        for s in &mut held {
            let _ = s.write_all(&[0]).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    opened
}

/// Half-open handshakes: a valid Noise message 1, then silence.
async fn half_open(server: SocketAddr, server_id: punch_proto::PeerId, until: Instant) -> u32 {
    let mut held = Vec::new();
    for _ in 0..40 {
        let Ok(mut s) = connect_from("127.0.0.23", server).await else {
            continue;
        };
        let me = Keypair::generate().unwrap();
        let mut hs = Handshake::control_client(&me, &server_id).unwrap();
        let m1 = hs.write(&[]).unwrap();
        let _ = s.write_all(&(m1.len() as u16).to_be_bytes()).await;
        let _ = s.write_all(&m1).await;
        held.push(s);
    }
    let n = held.len() as u32;
    tokio::time::sleep_until(until.into()).await;
    n
}

/// A flood of connections that close at once.
async fn conn_flood(server: SocketAddr, until: Instant) -> u32 {
    let mut n = 0;
    while Instant::now() < until && n < 3000 {
        if connect_from("127.0.0.24", server).await.is_ok() {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_peers_punch_while_the_rendezvous_is_attacked() {
    let mut config =
        punch_rendezvous::Config::new("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap());
    config.handshake_timeout = Duration::from_secs(2);
    let server = Server::spawn(config).await.unwrap();
    let (addr, id) = (server.local_addr(), server.identity());
    let until = Instant::now() + Duration::from_secs(6);

    let mut attacks = JoinSet::new();
    attacks.spawn(async move { ("garbage", garbage(addr, until).await) });
    attacks.spawn(async move { ("slowloris", slowloris(addr, until).await) });
    attacks.spawn(async move { ("half-open", half_open(addr, id, until).await) });
    attacks.spawn(async move { ("conn-flood", conn_flood(addr, until).await) });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A punch-request flood from a registered identity, aimed at the honest B.
    let (b, mut b_in) = honest(&server, HONEST_B, true).await;
    let (flooder, _) = honest(&server, "127.0.0.25", false).await;
    let mut flood = JoinSet::new();
    for _ in 0..60 {
        let (f, target) = (flooder.clone(), b.id());
        flood.spawn(async move { f.connect(target).await.map(|_| ()) });
    }

    // Meanwhile the honest pair punches and moves data.
    let (a, _) = honest(&server, HONEST_A, false).await;
    let started = Instant::now();
    let (sa, sb) = tokio::join!(a.connect(b.id()), async {
        loop {
            let s = tokio::time::timeout(Duration::from_secs(20), b_in.next())
                .await
                .unwrap()
                .unwrap();
            if s.info().peer == a.id() {
                return s;
            }
        }
    });
    let sa = sa.unwrap();
    let mut sb = sb;
    eprintln!(
        "honest punch under attack: {} ms",
        started.elapsed().as_millis()
    );
    let echo = tokio::spawn(async move {
        let mut st = sb.accept_stream().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        st.read_exact(&mut buf).await.unwrap();
        st.write_all(&buf).await.unwrap();
        st.shutdown().await.unwrap();
    });
    let mut st = sa.open_stream().await.unwrap();
    let mut payload = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut payload);
    st.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; 1 << 20];
    st.read_exact(&mut back).await.unwrap();
    assert!(
        back == payload,
        "data crossed both ways intact during the attack"
    );
    echo.await.unwrap();

    let mut limited = 0;
    while let Some(r) = flood.join_next().await {
        match r.unwrap() {
            Err(Error::RateLimited { retry_after }) => {
                assert!(retry_after.is_some());
                limited += 1;
            }
            Err(Error::PunchTimeout { .. }) | Ok(()) => {}
            Err(e) => eprintln!("flood request ended with: {e}"),
        }
    }
    while let Some(r) = attacks.join_next().await {
        let (name, n) = r.unwrap();
        eprintln!("attack {name}: {n}");
        assert!(n > 0, "attack {name} did nothing");
    }
    let stats = server.stats();
    eprintln!("{stats:?}");
    assert!(
        limited >= 30,
        "the request flood was rate limited ({limited} of 60)"
    );
    assert!(
        stats.handshake_failed >= 100,
        "garbage and stalled handshakes were closed"
    );
    assert!(
        stats.rejected_ip_limit > 0,
        "per-IP limits refused the floods"
    );
    assert!(
        stats.offers <= 2 + 20,
        "at most the flooder's budget reached B: {}",
        stats.offers
    );

    // Once the attackers are gone, only honest state remains.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = server.stats();
        if s.active_connections == 3 && s.registered == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server did not return to the honest state: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(flooder);
}
