//! End to end against the rendezvous library server on 127.0.0.1 with real protocol clients:
//! registration and the observed address, offers to both sides with one dial moment, every
//! typed error, replacement of a registration, a wrong pinned key, a replayed handshake, the
//! per-IP limit, the handshake and idle timeouts, protocol violations and graceful shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punch_proto::channel::ChannelError;
use punch_proto::message::{
    ClientMsg, ErrorCode, ErrorReply, Offer, Register, ServerMsg, PROTOCOL_VERSION,
};
use punch_proto::{Keypair, PeerId, Role};
use punch_rendezvous::{Config, Server, ServerStats};
use punch_tests::{default_register, init_tracing, RegistrationRefused, TestClient, RECV_TIMEOUT};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// How long a test waits for the server's counters to reach an expected state.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for: loopback delivers in well under a millisecond.
const QUIET: Duration = Duration::from_millis(200);

fn config() -> Config {
    init_tracing();
    let listen = "127.0.0.1:0".parse().expect("a socket address");
    Config::new(listen, Keypair::generate().expect("a fresh key"))
}

async fn client(server: &Server) -> TestClient {
    TestClient::connect(server.local_addr(), &server.identity())
        .await
        .expect("registering a client")
}

async fn client_with(server: &Server, keypair: Keypair, register: &Register) -> TestClient {
    TestClient::connect_with(server.local_addr(), &server.identity(), keypair, register)
        .await
        .expect("registering a client")
}

fn register(local_addrs: &[&str], accept_inbound: bool) -> Register {
    Register {
        version: PROTOCOL_VERSION,
        local_addrs: local_addrs
            .iter()
            .map(|a| a.parse().expect("a socket address"))
            .collect(),
        accept_inbound,
        allow: vec![],
        network: String::new(),
        probe: false,
    }
}

fn connect(request_id: u64, peer: PeerId) -> ClientMsg {
    ClientMsg::Connect { request_id, peer }
}

async fn recv_offer(client: &mut TestClient) -> Offer {
    match client
        .recv_skip_pings(RECV_TIMEOUT)
        .await
        .expect("an offer")
    {
        ServerMsg::Offer(o) => o,
        other => panic!("expected an Offer, got {other:?}"),
    }
}

/// Receives an offer and notes when it arrived, to compute the moment the client would dial.
async fn recv_offer_at(client: &mut TestClient) -> (Offer, Instant) {
    let offer = recv_offer(client).await;
    (offer, Instant::now())
}

async fn recv_error(client: &mut TestClient) -> ErrorReply {
    match client
        .recv_skip_pings(RECV_TIMEOUT)
        .await
        .expect("an error reply")
    {
        ServerMsg::Error(e) => e,
        other => panic!("expected an Error, got {other:?}"),
    }
}

/// Waits until the server's counters satisfy `cond`.
async fn wait_for(server: &Server, what: &str, cond: impl Fn(&ServerStats) -> bool) {
    let deadline = Instant::now() + STATS_TIMEOUT;
    loop {
        let stats = server.stats();
        if cond(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads from a raw stream until the server closes it (EOF or reset); returns how long it took.
async fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at((start + timeout).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("server did not close the connection within {timeout:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    if a > b {
        a - b
    } else {
        b - a
    }
}

#[tokio::test]
async fn register_reports_observed_address() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_secs(7);
    let server = Server::spawn(cfg).await.unwrap();
    let mut a = client(&server).await;
    let mut b = client(&server).await;

    for c in [&a, &b] {
        assert_eq!(c.registered().observed, c.local_addr());
        assert_eq!(c.registered().ping_interval, Duration::from_secs(7));
    }
    assert_ne!(a.registered().observed, b.registered().observed);
    a.ping().await.unwrap();
    b.ping().await.unwrap();
    let stats = server.stats();
    assert_eq!((stats.registered, stats.accepted), (2, 2));
    assert_eq!(stats.handshake_failed, 0);
}

#[tokio::test]
async fn offers_reach_both_sides_with_one_dial_moment() {
    let margin = Duration::from_millis(100);
    let mut cfg = config();
    cfg.dial_margin = margin;
    let server = Server::spawn(cfg).await.unwrap();
    // A may initiate even though it refuses inbound punches. Of its claimed local addresses
    // only the private one and loopback (A is on loopback) may be passed on, not 8.8.8.8.
    let a_reg = register(
        &["127.0.0.1:40001", "192.168.7.7:40001", "8.8.8.8:53"],
        false,
    );
    let mut a = client_with(&server, Keypair::generate().unwrap(), &a_reg).await;
    let mut b = client(&server).await;

    a.send(&connect(7, b.id())).await.unwrap();
    let ((oa, ta), (ob, tb)) = tokio::join!(recv_offer_at(&mut a), recv_offer_at(&mut b));

    assert_eq!(oa.session_id, ob.session_id);
    assert_ne!(oa.session_id, 0);
    assert_eq!((oa.request_id, ob.request_id), (7, 0));
    assert_eq!((oa.peer, ob.peer), (b.id(), a.id()));
    assert_eq!(
        (oa.peer_observed, ob.peer_observed),
        (b.local_addr(), a.local_addr())
    );
    assert_eq!((oa.role, ob.role), (Role::Initiator, Role::Responder));
    let expected_local: Vec<SocketAddr> = vec![
        "127.0.0.1:40001".parse().unwrap(),
        "192.168.7.7:40001".parse().unwrap(),
    ];
    assert_eq!(ob.peer_local, expected_local);
    assert!(oa.peer_local.is_empty());

    // The server picks T = max(owd) + margin and tells each side T - owd. On loopback both
    // one-way delays are tiny, so both delays are about the margin...
    for d in [oa.dial_delay, ob.dial_delay] {
        assert!(
            d >= margin && d <= margin + Duration::from_millis(50),
            "dial delay {d:?} with margin {margin:?}"
        );
    }
    // ...both offers name one moment on the server's clock...
    assert!(oa.dial_at_us.is_some());
    assert_eq!(oa.dial_at_us, ob.dial_at_us);
    // ...and both sides would dial at the same moment: arrival + delay agree.
    let skew = abs_diff(ta + oa.dial_delay, tb + ob.dial_delay);
    println!(
        "dial delays: A {:?}, B {:?}; dial-moment skew {skew:?}",
        oa.dial_delay, ob.dial_delay
    );
    assert!(
        skew <= Duration::from_millis(25),
        "dial moments {skew:?} apart"
    );

    // A second request is a new session.
    a.send(&connect(8, b.id())).await.unwrap();
    let (oa2, ob2) = tokio::join!(recv_offer(&mut a), recv_offer(&mut b));
    assert_eq!(oa2.session_id, ob2.session_id);
    assert_ne!(oa2.session_id, oa.session_id);
    assert_eq!(oa2.request_id, 8);
    assert_eq!(server.stats().offers, 2);
}

#[tokio::test]
async fn typed_errors_for_offline_refusing_and_self() {
    let server = Server::spawn(config()).await.unwrap();
    let mut a = client(&server).await;
    let mut refuser =
        client_with(&server, Keypair::generate().unwrap(), &register(&[], false)).await;
    let offline = Keypair::generate().unwrap().public();

    let cases = [
        (1, offline, ErrorCode::PeerOffline),
        (2, refuser.id(), ErrorCode::PeerRefuses),
        (3, a.id(), ErrorCode::SelfConnect),
    ];
    for (request_id, peer, code) in cases {
        a.send(&connect(request_id, peer)).await.unwrap();
        let e = recv_error(&mut a).await;
        assert_eq!((e.request_id, e.code), (request_id, code), "{e:?}");
        assert_eq!(e.retry_after, None);
        assert!(!e.detail.is_empty());
    }
    // The refusing peer heard nothing, and both connections are still served.
    refuser.stay_alive(QUIET).await.unwrap();
    refuser.ping().await.unwrap();
    a.ping().await.unwrap();
    let stats = server.stats();
    assert_eq!((stats.refused, stats.offers, stats.registered), (3, 0, 2));
}

#[tokio::test]
async fn registration_refusals_are_typed() {
    let mut cfg = config();
    cfg.max_peers = 2;
    let server = Server::spawn(cfg).await.unwrap();

    let mut future = default_register();
    future.version = PROTOCOL_VERSION + 98;
    let err = TestClient::connect_with(
        server.local_addr(),
        &server.identity(),
        Keypair::generate().unwrap(),
        &future,
    )
    .await
    .unwrap_err();
    let refused = err.downcast_ref::<RegistrationRefused>().unwrap();
    assert_eq!(refused.0.code, ErrorCode::UnsupportedVersion);
    assert_eq!(refused.0.request_id, 0);

    let a_key = Keypair::generate().unwrap();
    let mut a_old = client_with(&server, a_key.clone(), &default_register()).await;
    let _b = client(&server).await;
    let err = TestClient::connect(server.local_addr(), &server.identity())
        .await
        .unwrap_err();
    let refused = err.downcast_ref::<RegistrationRefused>().unwrap();
    assert_eq!(refused.0.code, ErrorCode::ServerFull);

    // A known identity coming back is a replacement, allowed even when the server is full.
    let mut a_new = client_with(&server, a_key, &default_register()).await;
    a_old.expect_closed(RECV_TIMEOUT).await.unwrap();
    a_new.ping().await.unwrap();
    assert_eq!(server.stats().registered, 2);
}

#[tokio::test]
async fn punch_requests_are_rate_limited_per_identity() {
    let mut cfg = config();
    cfg.punch_requests_per_minute = 3;
    let server = Server::spawn(cfg).await.unwrap();
    let mut a = client(&server).await;
    let mut b = client(&server).await;
    let mut c = client(&server).await;

    for request_id in 1..=3 {
        a.send(&connect(request_id, b.id())).await.unwrap();
        let (oa, _) = tokio::join!(recv_offer(&mut a), recv_offer(&mut b));
        assert_eq!(oa.request_id, request_id);
    }
    a.send(&connect(4, b.id())).await.unwrap();
    let e = recv_error(&mut a).await;
    assert_eq!((e.request_id, e.code), (4, ErrorCode::RateLimited));
    // 3 per minute refill one token every 20 s.
    let wait = e
        .retry_after
        .expect("a rate-limit error says when to retry");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(20),
        "retry after {wait:?}"
    );
    b.stay_alive(QUIET).await.unwrap();

    // The budget is per requester: C still gets through to B.
    c.send(&connect(1, b.id())).await.unwrap();
    let (oc, ob) = tokio::join!(recv_offer(&mut c), recv_offer(&mut b));
    assert_eq!((oc.peer, ob.peer), (b.id(), c.id()));
    let stats = server.stats();
    assert_eq!((stats.offers, stats.refused), (4, 1));
}

#[tokio::test]
async fn offers_to_one_target_are_rate_limited() {
    let mut cfg = config();
    cfg.offers_per_target_per_source_per_minute = 2;
    let server = Server::spawn(cfg).await.unwrap();
    let mut a = client(&server).await;
    let mut b = client(&server).await;
    let mut c = client(&server).await;

    a.send(&connect(1, b.id())).await.unwrap();
    tokio::join!(recv_offer(&mut a), recv_offer(&mut b));
    c.send(&connect(1, b.id())).await.unwrap();
    tokio::join!(recv_offer(&mut c), recv_offer(&mut b));
    // A third requester-side request to B exceeds B's budget, whoever asks.
    a.send(&connect(2, b.id())).await.unwrap();
    let e = recv_error(&mut a).await;
    assert_eq!((e.request_id, e.code), (2, ErrorCode::RateLimited));
    let wait = e
        .retry_after
        .expect("a rate-limit error says when to retry");
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(30));
    b.stay_alive(QUIET).await.unwrap();
    // Another target has its own budget.
    b.send(&connect(1, a.id())).await.unwrap();
    let (ob, oa) = tokio::join!(recv_offer(&mut b), recv_offer(&mut a));
    assert_eq!((ob.peer, oa.peer), (a.id(), b.id()));
}

#[tokio::test]
async fn second_registration_replaces_the_first() {
    let server = Server::spawn(config()).await.unwrap();
    let key = Keypair::generate().unwrap();
    let mut old = client_with(&server, key.clone(), &default_register()).await;
    let mut b = client(&server).await;
    let mut new = client_with(&server, key.clone(), &default_register()).await;

    old.expect_closed(RECV_TIMEOUT).await.unwrap();
    // Once the old connection's task has ended (its slot is freed), the registration that
    // remains is the new one.
    wait_for(&server, "the old connection to end", |s| {
        s.active_connections == 2
    })
    .await;
    let stats = server.stats();
    assert_eq!((stats.registered, stats.replaced), (2, 1));

    b.send(&connect(5, key.public())).await.unwrap();
    let (ob, on) = tokio::join!(recv_offer(&mut b), recv_offer(&mut new));
    assert_eq!(ob.peer_observed, new.local_addr());
    assert_ne!(ob.peer_observed, old.local_addr());
    assert_eq!((on.peer, on.role), (b.id(), Role::Responder));
    new.ping().await.unwrap();
}

#[tokio::test]
async fn client_pinned_to_wrong_server_key_fails_handshake() {
    let server = Server::spawn(config()).await.unwrap();
    let key = Keypair::generate().unwrap();
    let wrong = Keypair::generate().unwrap().public();

    let err = TestClient::connect_with(
        server.local_addr(),
        &wrong,
        key.clone(),
        &default_register(),
    )
    .await
    .unwrap_err();
    assert!(
        err.downcast_ref::<ChannelError>().is_some(),
        "expected a channel error, got {err:#}"
    );
    wait_for(&server, "the failed handshake to be counted", |s| {
        s.handshake_failed == 1 && s.active_connections == 0
    })
    .await;
    assert_eq!(server.stats().registered, 0);

    // The same client with the right key is served normally.
    let mut ok = client_with(&server, key, &default_register()).await;
    ok.ping().await.unwrap();
}

#[tokio::test]
async fn per_ip_limit_refuses_extra_connections_only() {
    let mut cfg = config();
    cfg.max_connections_per_ip = 3;
    // Idle connections below must not be closed by the handshake timeout mid-test.
    cfg.handshake_timeout = Duration::from_secs(30);
    let server = Server::spawn(cfg).await.unwrap();
    let addr = server.local_addr();

    let mut honest = client(&server).await;
    let idle1 = TcpStream::connect(addr).await.unwrap();
    let _idle2 = TcpStream::connect(addr).await.unwrap();
    wait_for(&server, "three connections", |s| s.active_connections == 3).await;

    let err = TestClient::connect(addr, &server.identity())
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<ChannelError>().is_some(),
        "expected the connection to be dropped, got {err:#}"
    );
    wait_for(&server, "the refusal to be counted", |s| {
        s.rejected_ip_limit == 1
    })
    .await;
    honest.ping().await.unwrap();

    // Another source address is not affected by 127.0.0.1 being at its limit.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut other = TestClient::handshake(
        stream,
        &server.identity(),
        Keypair::generate().unwrap(),
        &default_register(),
    )
    .await
    .unwrap();
    assert_eq!(
        other.registered().observed.ip(),
        "127.0.0.2".parse::<std::net::IpAddr>().unwrap()
    );
    other.ping().await.unwrap();

    // A freed slot admits a new connection from 127.0.0.1.
    drop(idle1);
    wait_for(&server, "the closed slot to be released", |s| {
        s.active_connections == 3
    })
    .await;
    let mut late = client(&server).await;
    late.ping().await.unwrap();
    assert_eq!(server.stats().rejected_ip_limit, 1);
}

#[tokio::test]
async fn silent_connections_time_out() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_millis(300);
    cfg.ping_interval = Duration::from_millis(100);
    cfg.idle_timeout = Duration::from_millis(400);
    let server = Server::spawn(cfg).await.unwrap();

    // A connection that never starts the handshake is closed at the handshake timeout.
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    let took = wait_closed(&mut raw, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    wait_for(&server, "the timeout to be counted", |s| {
        s.handshake_failed == 1
    })
    .await;

    // A registered client that answers pings stays; one that does not is dropped.
    let mut live = client(&server).await;
    let mut mute = client(&server).await;
    let start = Instant::now();
    let (alive, closed) = tokio::join!(
        live.stay_alive(Duration::from_millis(1200)),
        mute.expect_closed(Duration::from_secs(3))
    );
    alive.unwrap();
    closed.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(350));
    live.ping().await.unwrap();
    wait_for(&server, "only the live client to remain", |s| {
        s.registered == 1 && s.active_connections == 1
    })
    .await;
}

#[tokio::test]
async fn protocol_violation_closes_the_connection() {
    let server = Server::spawn(config()).await.unwrap();
    let mut bystander = client(&server).await;
    let mut bad = client(&server).await;
    // Encrypted correctly, but not a control message.
    bad.send_raw(&[0xff, 0xff, 0xff]).await.unwrap();
    bad.expect_closed(RECV_TIMEOUT).await.unwrap();
    wait_for(&server, "the protocol error to be counted", |s| {
        s.protocol_errors == 1 && s.registered == 1
    })
    .await;
    bystander.ping().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_closes_every_connection() {
    let server = Server::spawn(config()).await.unwrap();
    let addr = server.local_addr();
    let mut a = client(&server).await;
    let mut b = client(&server).await;
    let mut half_open = TcpStream::connect(addr).await.unwrap();
    wait_for(&server, "three connections", |s| s.active_connections == 3).await;

    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown finishes within its grace period");
    // Each registered peer is told to come back within the window (2 peers: the minimum),
    // then closed.
    for c in [&mut a, &mut b] {
        let told = c.recv_skip_pings(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            told,
            ServerMsg::GoingAway {
                reconnect_within: punch_rendezvous::config::MIN_RECONNECT_WINDOW
            }
        );
        c.expect_closed(Duration::from_secs(1)).await.unwrap();
    }
    wait_closed(&mut half_open, Duration::from_secs(1)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

/// A captured handshake replayed from another connection registers nobody: the server answers
/// the replayed message 1 with a fresh ephemeral key, so the captured message 3 (the victim's
/// identity and registration) no longer decrypts. This is also the only way to claim another
/// peer's identity without its private key. The victim stays registered and served.
#[tokio::test]
async fn replayed_handshake_registers_nobody_and_the_victim_stays() {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;

    let server = Server::spawn(config()).await.unwrap();
    // A recording proxy in front of the server: what an on-path attacker would capture.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let upstream = server.local_addr();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let record = captured.clone();
    tokio::spawn(async move {
        let (client_side, _) = proxy.accept().await.unwrap();
        let server_side = TcpStream::connect(upstream).await.unwrap();
        let (mut cr, mut cw) = client_side.into_split();
        let (mut sr, mut sw) = server_side.into_split();
        let up = async {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = cr.read(&mut buf).await {
                record.lock().unwrap().extend_from_slice(&buf[..n]);
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let down = tokio::io::copy(&mut sr, &mut cw);
        let _ = tokio::join!(up, down);
    });
    let mut victim = TestClient::connect(proxy_addr, &server.identity())
        .await
        .unwrap();
    victim.ping().await.unwrap();
    wait_for(&server, "the victim's registration", |s| s.registered == 1).await;

    let replay = captured.lock().unwrap().clone();
    assert!(replay.len() > 2 + punch_proto::channel::XK_MESSAGE1_LEN);
    let mut attacker = TcpStream::connect(server.local_addr()).await.unwrap();
    attacker.write_all(&replay).await.unwrap();
    wait_closed(&mut attacker, RECV_TIMEOUT).await;
    wait_for(&server, "the replay's handshake failure", |s| {
        s.handshake_failed == 1 && s.registered == 1 && s.replaced == 0
    })
    .await;
    victim.ping().await.unwrap();
}
