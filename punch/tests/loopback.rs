//! Punches on 127.0.0.1 through a real rendezvous server with real sockets: data integrity,
//! many streams, a one-way bulk transfer, typed errors, an impostor, a rendezvous restart,
//! the client's event stream.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use punch::{Client, Config, Error, Incoming, RendezvousError, Session};
use punch_proto::Keypair;
use punch_rendezvous::Server;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGISTER: Duration = Duration::from_secs(10);

async fn server_on(addr: SocketAddr, key: Keypair) -> Server {
    Server::spawn(punch_rendezvous::Config::new(addr, key))
        .await
        .unwrap()
}

async fn client(server: &Server, accept: bool) -> (Client, Incoming) {
    let mut config = Config::new(
        server.local_addr(),
        server.identity(),
        Keypair::generate().unwrap(),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.accept_inbound = accept;
    let (c, inc) = Client::start(config).await.unwrap();
    let observed = c.wait_registered(REGISTER).await.unwrap();
    assert_eq!(
        observed,
        c.local_addr(),
        "observed address is the punch port"
    );
    (c, inc)
}

async fn pair(server: &Server) -> (Session, Session, Client, Client) {
    let (a, _) = client(server, false).await;
    let (b, mut b_in) = client(server, true).await;
    let (sa, sb) = tokio::join!(a.connect(b.id()), async {
        tokio::time::timeout(Duration::from_secs(15), b_in.next())
            .await
            .unwrap()
            .unwrap()
    });
    let sa = sa.unwrap();
    assert_eq!(sa.info().peer, b.id());
    assert_eq!(sb.info().peer, a.id());
    assert_eq!(sa.info().path, punch::PathKind::Direct);
    (sa, sb, a, b)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

#[tokio::test]
async fn bytes_cross_both_ways_intact() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap()).await;
    let (sa, mut sb, _a, _b) = pair(&server).await;
    let up = random_bytes(8 << 20);
    let down = random_bytes(6 << 20);
    let (up_sum, down_sum) = (Sha256::digest(&up), Sha256::digest(&down));
    let mut s = sa.open_stream().await.unwrap();
    let echo_side = tokio::spawn(async move {
        let mut t = sb.accept_stream().await.unwrap();
        let mut got = Vec::new();
        // Read the upload fully (the opener half-closes), then send the download.
        t.read_to_end(&mut got).await.unwrap();
        t.write_all(&down).await.unwrap();
        t.shutdown().await.unwrap();
        (Sha256::digest(&got), sb)
    });
    let writer = async {
        s.write_all(&up).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    };
    let got_down = writer.await;
    let (got_up_sum, _sb) = echo_side.await.unwrap();
    assert_eq!(got_up_sum, up_sum);
    assert_eq!(Sha256::digest(&got_down), down_sum);
}

#[tokio::test]
async fn hundred_parallel_streams() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap()).await;
    let (sa, mut sb, _a, _b) = pair(&server).await;
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let mut st = sb.accept_stream().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut st);
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            }));
        }
        join_all(tasks).await;
        sb
    });
    let opener = sa.opener();
    let results = join_all((0..100u32).map(|i| {
        let opener = opener.clone();
        async move {
            let data = random_bytes(64 * 1024 + i as usize);
            let mut st = opener.open_stream().await.unwrap();
            let (mut r, mut w) = tokio::io::split(&mut st);
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let recv = r.read_to_end(&mut back);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            back == data
        }
    }))
    .await;
    assert_eq!(results.iter().filter(|ok| **ok).count(), 100);
    echo.await.unwrap();
}

/// tokio-yamux 0.3.20 starts every stream at a 256 KiB window, which caps a stream at
/// 256 KiB / RTT unless it grows: the window must grow towards the configured 16 MiB once the
/// peer reads (checked through yamux's own accounting, not a timing).
#[tokio::test]
async fn stream_window_grows_beyond_the_initial_256_kib() {
    const INITIAL: u32 = 256 * 1024;
    let server = server_on("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap()).await;
    let (sa, mut sb, _a, _b) = pair(&server).await;
    let mut w = sa.open_stream().await.unwrap();
    assert_eq!(w.send_window(), INITIAL);
    let data = vec![7u8; 4 << 20];
    let reader = tokio::spawn(async move {
        let mut r = sb.accept_stream().await.unwrap();
        let mut got = vec![0u8; 4 << 20];
        r.read_exact(&mut got).await.unwrap();
        (r, sb)
    });
    w.write_all(&data).await.unwrap();
    let _keep = reader.await.unwrap();
    // Let the last window updates arrive, then a write processes them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.write_all(b"x").await.unwrap();
    let window = w.send_window();
    eprintln!("send window after 4 MiB read by the peer: {window} bytes");
    assert!(
        window > 8 * INITIAL,
        "window stayed near the initial 256 KiB: {window}"
    );
}

/// tokio-yamux only processes window updates while a stream is read; a stream that is only
/// written must still finish (the `Stream` wrapper polls the read side when a write blocks).
#[tokio::test]
async fn one_way_bulk_transfer_of_one_gib() {
    const TOTAL: u64 = 1 << 30;
    let server = server_on("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap()).await;
    let (sa, mut sb, _a, _b) = pair(&server).await;
    let mut w = sa.open_stream().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut r = sb.accept_stream().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let (mut n, mut sum) = (0u64, 0u64);
        loop {
            let k = r.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            sum = buf[..k]
                .iter()
                .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
            n += k as u64;
        }
        (n, sum)
    });
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let expected_sum = {
        let mut sum = 0u64;
        for _ in 0..(TOTAL / chunk.len() as u64) {
            sum = chunk
                .iter()
                .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
        }
        sum
    };
    let started = Instant::now();
    let write = async {
        for _ in 0..(TOTAL / chunk.len() as u64) {
            w.write_all(&chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(240), write)
        .await
        .expect("the write-only stream stalled");
    let (n, sum) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, TOTAL);
    assert_eq!(sum, expected_sum);
    eprintln!(
        "1 GiB one-way in {:.1} s ({:.0} MB/s, debug build)",
        started.elapsed().as_secs_f64(),
        TOTAL as f64 / 1e6 / started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn offline_refusing_and_self_fail_fast_with_typed_errors() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap()).await;
    let (a, _) = client(&server, false).await;
    let (closed, _) = client(&server, false).await;
    let nobody = Keypair::generate().unwrap().public();
    let t = Instant::now();
    assert!(matches!(a.connect(nobody).await, Err(Error::PeerOffline { peer }) if peer == nobody));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "offline peer fails fast: {:?}",
        t.elapsed()
    );
    assert!(matches!(
        a.connect(closed.id()).await,
        Err(Error::PeerRefuses { .. })
    ));
    assert!(matches!(
        a.connect(a.id()).await,
        Err(Error::Rendezvous { .. })
    ));
}

#[tokio::test]
async fn wrong_rendezvous_key_is_reported() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap()).await;
    let mut config = Config::new(
        server.local_addr(),
        Keypair::generate().unwrap().public(),
        Keypair::generate().unwrap(),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    let (c, _) = Client::start(config).await.unwrap();
    let err = c.wait_registered(Duration::from_secs(2)).await.unwrap_err();
    assert!(
        matches!(&err, Error::RendezvousUnreachable {
            source: RendezvousError::NotRegistered { last: Some(last), .. },
            ..
        } if matches!(**last, RendezvousError::Handshake(_))),
        "{err}"
    );
    assert!(err.to_string().contains("handshake failed"), "{err}");
}

#[tokio::test]
async fn rendezvous_restart_keeps_peers_registered() {
    let key = Keypair::generate().unwrap();
    let server = server_on("127.0.0.1:0".parse().unwrap(), key.clone()).await;
    let addr = server.local_addr();
    let (a, _) = client(&server, false).await;
    let (b, mut b_in) = client(&server, true).await;
    server.shutdown().await;
    let restarted = Instant::now();
    let server = server_on(addr, key).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.stats().registered < 2 {
        assert!(
            Instant::now() < deadline,
            "peers did not re-register in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "both peers re-registered {} ms after the restart",
        restarted.elapsed().as_millis()
    );
    a.wait_registered(REGISTER).await.unwrap();
    let (sa, sb) = tokio::join!(a.connect(b.id()), b_in.next());
    assert_eq!(sa.unwrap().info().peer, b.id());
    assert_eq!(sb.unwrap().info().peer, a.id());
}

/// A rendezvous that lies: it tells the client that peer B is at an address where an impostor
/// (holding another key) answers. The session must not open, with a typed error.
#[tokio::test]
async fn impostor_is_rejected() {
    use punch_rendezvous::test_support::{impostor, LyingRendezvous};

    let server_key = Keypair::generate().unwrap();
    let victim_expects = Keypair::generate().unwrap().public(); // "B"
    let impostor_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let impostor_addr = impostor_listener.local_addr().unwrap();
    let fake = LyingRendezvous::spawn(server_key.clone(), impostor_addr, 77)
        .await
        .unwrap();
    let mut config = Config::new(
        fake.addr(),
        server_key.public(),
        Keypair::generate().unwrap(),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.punch_window = Duration::from_secs(2);
    let victim = config.keypair.public();
    // Plays the KK initiator with the impostor's own key, claiming to be B.
    let impostor_task = tokio::spawn(impostor(
        impostor_listener,
        Keypair::generate().unwrap(),
        victim,
        77,
        Duration::from_secs(4),
    ));
    let (c, _) = Client::start(config).await.unwrap();
    c.wait_registered(REGISTER).await.unwrap();
    let res = c.connect(victim_expects).await;
    assert!(
        matches!(res, Err(Error::AuthFailed { addr, .. }) if addr == impostor_addr),
        "{res:?}"
    );
    let report = impostor_task.await.unwrap();
    assert!(report.attempts >= 1, "the impostor was dialed");
    assert_eq!(report.answered, 0, "the victim answered an impostor");
}

/// Collects the events received so far.
fn drain(rx: &mut tokio::sync::broadcast::Receiver<punch::Event>) -> Vec<punch::Event> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::test]
async fn events_report_each_step_of_a_punch_in_order() {
    use punch::Event;
    let server = server_on("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap()).await;
    let (a, _) = client(&server, false).await;
    let (b, mut b_in) = client(&server, true).await;
    let (mut a_events, mut b_events) = (a.events(), b.events());
    let (sa, _sb) = tokio::join!(a.connect(b.id()), async {
        tokio::time::timeout(Duration::from_secs(15), b_in.next())
            .await
            .unwrap()
            .unwrap()
    });
    let sa = sa.unwrap();
    // Established is sent before the session is handed over, so everything is here.
    let a_seen = drain(&mut a_events);
    let b_seen = drain(&mut b_events);
    let kinds = |v: &[Event]| -> Vec<&'static str> {
        v.iter()
            .map(|e| match e {
                Event::Registered { .. } => "registered",
                Event::Disconnected { .. } => "disconnected",
                Event::Requested { .. } => "requested",
                Event::Offer { .. } => "offer",
                Event::Dial { .. } => "dial",
                Event::Established(_) => "established",
                Event::Failed { .. } => "failed",
                _ => "other",
            })
            .collect()
    };
    assert_eq!(
        kinds(&a_seen),
        ["requested", "offer", "dial", "established"],
        "{a_seen:?}"
    );
    assert_eq!(kinds(&b_seen)[0], "offer", "{b_seen:?}");
    assert_eq!(kinds(&b_seen).last(), Some(&"established"), "{b_seen:?}");
    match (&a_seen[1], &a_seen[2], &a_seen[3]) {
        (
            Event::Offer {
                peer,
                inbound: false,
                observed,
                session_id,
                ..
            },
            Event::Dial { addr, .. },
            Event::Established(info),
        ) => {
            assert_eq!(*peer, b.id());
            assert_eq!(*observed, b.local_addr());
            assert_eq!(*addr, b.local_addr());
            assert_eq!(info.session_id, *session_id);
            assert_eq!(info.session_id, sa.info().session_id);
        }
        other => panic!("unexpected events {other:?}"),
    }
    assert!(
        matches!(&b_seen[0], Event::Offer { peer, inbound: true, .. } if *peer == a.id()),
        "{b_seen:?}"
    );

    // A request the rendezvous refuses (B is gone) shows as Requested and nothing more: the
    // caller gets the typed error, and no offer or dial follows.
    let gone = b.id();
    drop((b, b_in, _sb));
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().registered != 1 {
        assert!(Instant::now() < deadline, "B's registration did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = a.connect(gone).await.unwrap_err();
    assert!(matches!(err, Error::PeerOffline { .. }), "{err}");
    let later = drain(&mut a_events);
    assert!(
        matches!(later.as_slice(), [Event::Requested { peer }] if *peer == gone),
        "{later:?}"
    );
}
