//! The real `punch listen` against hostile peers, on loopback with the real `rendezvous`.
//!
//! - A stranger not on `--allow` asks to punch: the rendezvous refuses it (`NotAllowed`: the
//!   listener registered its list), the listener never dials it (a trap listener registered
//!   as the stranger's local address sees no connection) nor hears of it, the stranger's own
//!   punch fails with a typed error; the allowed peer punches and echoes data.
//! - An allowed peer opens far more streams than the caps in one session and holds them: the
//!   forwarded service never sees more connections at once than the per-session forward cap,
//!   the listener's file descriptors stay bounded, and a second honest peer punches and echoes
//!   data during the flood.
//! - An allowed peer piles up sessions (a new client with the same key each time, as a
//!   reconnecting node would): those beyond the per-peer cap are closed at once, the earlier
//!   ones keep working.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use punch::forward::{DEFAULT_FORWARDS_PER_SESSION, DEFAULT_SESSIONS_PER_PEER};
use punch::Error;
use punch_proto::message::{ClientMsg, ErrorCode, Register, ServerMsg, PROTOCOL_VERSION};
use punch_proto::Keypair;
use punch_tests::{
    echo_once, init_tracing, punch_client, ListenProcess, RendezvousProcess, TestClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bounds every wait that must end: loopback punches take milliseconds.
const HANG: Duration = Duration::from_secs(20);
/// Streams the flooder opens in one session: far above every cap (yamux 256, forwards 64).
const FLOOD_STREAMS: usize = 2000;

/// A local TCP echo service counting the connections it holds at once, and the most it held.
#[derive(Default)]
struct Echo {
    open: AtomicUsize,
    most: AtomicUsize,
    accepted: AtomicUsize,
}

async fn echo_service() -> (SocketAddr, Arc<Echo>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = Arc::new(Echo::default());
    let counts = echo.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counts = counts.clone();
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let now = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
            counts.most.fetch_max(now, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                counts.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_never_dialed_while_the_allowed_peer_is_served() {
    init_tracing();
    let rv = RendezvousProcess::spawn(&[]);
    let (service, _echo) = echo_service().await;
    let alice = Keypair::generate().unwrap();
    let listener = ListenProcess::spawn(&rv, service, &[alice.public()], &[]);

    // Stranger 1, a raw protocol client whose only local address is a trap: a dial by the
    // listener would land there.
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let register = Register {
        version: PROTOCOL_VERSION,
        local_addrs: vec![trap.local_addr().unwrap()],
        accept_inbound: false,
        allow: vec![],
        network: String::new(),
        probe: false,
    };
    let mut raw = TestClient::connect_with(
        rv.addr(),
        &rv.identity(),
        Keypair::generate().unwrap(),
        &register,
    )
    .await
    .unwrap();
    raw.send(&ClientMsg::Connect {
        request_id: 1,
        peer: listener.id,
    })
    .await
    .unwrap();
    // The listener registered its --allow list: the rendezvous refuses the stranger itself.
    match raw.recv_skip_pings(HANG).await.unwrap() {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::NotAllowed, "{e:?}"),
        other => panic!("expected the refusal, got {other:?}"),
    };
    // Stranger 2, the real client library: its punch fails with a typed error.
    let stranger = punch_client(&rv, Keypair::generate().unwrap()).await;
    let started = Instant::now();
    let refused = stranger.connect(listener.id).await;
    assert!(
        matches!(refused, Err(Error::NotAllowed { peer }) if peer == listener.id),
        "{refused:?}"
    );
    assert!(started.elapsed() < HANG);
    let dialed = tokio::time::timeout(Duration::from_millis(500), trap.accept()).await;
    assert!(
        dialed.is_err(),
        "the listener dialed a stranger: {dialed:?}"
    );

    // The allowed peer is served.
    let alice = punch_client(&rv, alice).await;
    let session = tokio::time::timeout(HANG, alice.connect(listener.id))
        .await
        .unwrap()
        .unwrap();
    echo_once(&session, b"hello from alice\n").await;

    // The listener never heard of the strangers (the rendezvous refused them); its own check
    // of the list is covered by punch's control-machine tests.
    let log = listener.log_text();
    assert!(!log.contains("not on the allow-list"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_capped_and_an_honest_peer_still_punches() {
    init_tracing();
    let rv = RendezvousProcess::spawn(&[]);
    let (service, echo) = echo_service().await;
    let (mallory, carol) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let listener = ListenProcess::spawn(&rv, service, &[mallory.public(), carol.public()], &[]);

    let mallory = punch_client(&rv, mallory).await;
    let flood = tokio::time::timeout(HANG, mallory.connect(listener.id))
        .await
        .unwrap()
        .unwrap();
    let fds_before = listener.open_fds();
    // Open far more streams than any cap and hold them all; each carries a byte so that a
    // forwarded one is really in use.
    let mut held = Vec::with_capacity(FLOOD_STREAMS);
    for _ in 0..FLOOD_STREAMS {
        let Ok(mut stream) = flood.open_stream().await else {
            break;
        };
        let _ = stream.write_all(b"x").await;
        held.push(stream);
    }
    assert_eq!(
        held.len(),
        FLOOD_STREAMS,
        "opening streams locally never fails"
    );
    // Every stream gets its answer: the echoed byte when forwarded, a reset when refused. So
    // once all have answered, the listener has dealt with the whole flood.
    let answers = futures::future::join_all(held.iter_mut().map(|stream| async move {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(HANG, stream.read(&mut byte)).await {
            Ok(Ok(1)) => byte[0] == b'x',
            Ok(_) => false,
            Err(_) => panic!("a flood stream got neither its echo nor a reset"),
        }
    }))
    .await;
    let forwarded = answers.iter().filter(|&&f| f).count();
    assert_eq!(
        forwarded, DEFAULT_FORWARDS_PER_SESSION,
        "forwarded streams of one session, the rest reset"
    );
    assert_eq!(
        echo.most.load(Ordering::SeqCst),
        DEFAULT_FORWARDS_PER_SESSION,
        "service connections at once"
    );
    // The listener holds its sockets, the forwards' service connections and little else.
    let fds_during = listener.open_fds();
    assert!(
        fds_during <= fds_before + 2 * DEFAULT_FORWARDS_PER_SESSION + 16,
        "listener fds: {fds_before} before the flood, {fds_during} during"
    );

    // During the flood (all its streams still held), an honest peer punches and is served.
    let carol = punch_client(&rv, carol).await;
    let session = tokio::time::timeout(HANG, carol.connect(listener.id))
        .await
        .unwrap()
        .unwrap();
    echo_once(&session, b"hello from carol\n").await;
    assert!(echo.most.load(Ordering::SeqCst) <= DEFAULT_FORWARDS_PER_SESSION + 1);

    let log = listener.log_text();
    assert!(
        log.contains("too many forwarded streams"),
        "no refusal in the log:\n{log}"
    );
    assert!(
        log.matches("too many forwarded streams").count() <= 2,
        "refusals are rate-limited:\n{log}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_per_peer_cap_are_closed() {
    init_tracing();
    let rv = RendezvousProcess::spawn(&[]);
    let (service, _echo) = echo_service().await;
    let mallory = Keypair::generate().unwrap();
    let listener = ListenProcess::spawn(&rv, service, &[mallory.public()], &[]);

    let mut sessions = Vec::new();
    for _ in 0..DEFAULT_SESSIONS_PER_PEER + 2 {
        // Each client has its own punch port, so each session is a new connection; the
        // session outlives its client.
        let c = punch_client(&rv, mallory.clone()).await;
        let session = tokio::time::timeout(HANG, c.connect(listener.id))
            .await
            .unwrap()
            .unwrap();
        c.shutdown().await;
        sessions.push(session);
    }
    let (kept, over) = sessions.split_at(DEFAULT_SESSIONS_PER_PEER);
    for session in over {
        tokio::time::timeout(HANG, session.closed())
            .await
            .expect("a session beyond the cap is closed by the listener");
    }
    for (i, session) in kept.iter().enumerate() {
        assert!(
            !session.is_closed(),
            "session {i} within the cap was closed"
        );
        echo_once(session, format!("session {i}\n").as_bytes()).await;
    }
    let log = listener.log_text();
    assert!(log.contains("too many sessions"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_caps_hold_across_peers_and_are_set_by_flags() {
    init_tracing();
    let rv = RendezvousProcess::spawn(&[]);
    let (service, echo) = echo_service().await;
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate().unwrap()).collect();
    let ids: Vec<_> = keys.iter().map(Keypair::public).collect();
    let listener = ListenProcess::spawn(
        &rv,
        service,
        &ids,
        &["--max-sessions", "2", "--max-forwards", "3"],
    );

    // Three peers, each one session: the third is over the total and closed at once.
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for key in &keys {
        let c = punch_client(&rv, key.clone()).await;
        let session = tokio::time::timeout(HANG, c.connect(listener.id))
            .await
            .unwrap()
            .unwrap();
        sessions.push(session);
        clients.push(c);
    }
    tokio::time::timeout(HANG, sessions[2].closed())
        .await
        .expect("the session beyond --max-sessions is closed by the listener");

    // The two served peers open three streams each and hold them: at most three reach the
    // service at once, whichever peer opened them.
    let mut held = Vec::new();
    for session in &sessions[..2] {
        for i in 0..3 {
            let mut s = session.open_stream().await.unwrap();
            // A stream over the cap may already be reset by the listener: the write can fail.
            let _ = s.write_all(format!("held {i}\n").as_bytes()).await;
            held.push(s);
        }
    }
    let deadline = Instant::now() + HANG;
    while echo.accepted.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give any stream beyond the cap time to reach the service if it wrongly could.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        echo.most.load(Ordering::SeqCst),
        3,
        "service connections at once"
    );

    // Once the held streams are gone, both peers are served again.
    drop(held);
    let deadline = Instant::now() + HANG;
    while echo.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo_once(&sessions[0], b"first peer again\n").await;
    echo_once(&sessions[1], b"second peer again\n").await;
    let log = listener.log_text();
    assert!(log.contains("too many sessions"), "{log}");
    assert!(log.contains("too many forwarded streams"), "{log}");
}
