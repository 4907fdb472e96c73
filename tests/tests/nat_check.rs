//! The NAT check on loopback: the real `rendezvous` binary's second port answers a client's
//! probe from its punch port, the client reports its mapping (trivially endpoint-independent
//! here, no NAT, port preserved) and the server passes each peer's mapping on in offers;
//! `--nat-check-listen off` leaves the mapping unknown without harm. Hostile connections to
//! the check port (garbage, silence, a relay hello, a registration, a probe on the main port)
//! are closed and counted like on the main port, and the server keeps answering real checks.

use std::time::{Duration, Instant};

use punch::nat::NatCheckError;
use punch::{Event, NatMapping};
use punch_proto::message::{ErrorCode, Register};
use punch_proto::Keypair;
use punch_rendezvous::{Config, Server, ServerStats};
use punch_tests::{
    default_register, punch_client, punch_client_at, RegistrationRefused, RendezvousProcess,
    TestClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A check on loopback takes milliseconds; this bounds a broken one.
const CHECK_WAIT: Duration = Duration::from_secs(10);
/// How long the server may take to close a hostile connection: the first-message timeout
/// configured below plus scheduling slack.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

fn probe() -> Register {
    Register {
        probe: true,
        ..default_register()
    }
}

#[tokio::test]
async fn loopback_is_endpoint_independent_and_offers_carry_it() {
    let rv = RendezvousProcess::spawn(&[]);
    let check = rv.nat_check_addr().expect("the check listens by default");
    assert_eq!(check.ip(), rv.addr().ip());
    assert_ne!(check.port(), rv.addr().port());

    let a = punch_client(&rv, Keypair::generate().unwrap()).await;
    let b = punch_client_at(
        &rv,
        "127.0.0.1",
        Keypair::generate().unwrap(),
        Some(punch::Allow::Any),
    )
    .await;
    for client in [&a, &b] {
        let nat = client
            .wait_nat(CHECK_WAIT)
            .await
            .expect("a NAT check result");
        assert_eq!(nat.mapping, NatMapping::EndpointIndependent, "{nat}");
        assert!(nat.public && nat.port_preserved, "{nat}");
        assert_eq!(nat.local.port(), client.local_addr().port());
        assert_eq!(nat.probe_observed, Some(nat.observed));
        assert!(nat.check_error.is_none());
        assert_eq!(
            nat.to_string(),
            format!("no NAT (observed {})", nat.observed)
        );
        assert_eq!(client.nat(), Some(nat));
    }
    // Both checked before the punch: each offer names the other's mapping.
    let mut events = a.events();
    let _session = a.connect(b.id()).await.expect("a punch on loopback");
    let peer_nat = std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        Event::Offer { peer_nat, .. } => Some(peer_nat),
        _ => None,
    });
    assert_eq!(peer_nat, Some(NatMapping::EndpointIndependent));
}

#[tokio::test]
async fn without_a_check_port_the_mapping_is_unknown_and_nothing_breaks() {
    let rv = RendezvousProcess::spawn(&["--nat-check-listen", "off"]);
    assert_eq!(rv.nat_check_addr(), None);
    let a = punch_client(&rv, Keypair::generate().unwrap()).await;
    let nat = a.wait_nat(CHECK_WAIT).await.expect("a result, unknown");
    assert_eq!(nat.mapping, NatMapping::Unknown);
    assert!(matches!(nat.check_error, Some(NatCheckError::NotOffered)));
    assert!(
        nat.public && nat.port_preserved,
        "known from the control connection"
    );
    assert!(matches!(a.status(), punch::Status::Registered { .. }));
}

/// A library server on loopback with both ports, short first-message and handshake timeouts.
async fn server() -> Server {
    let listen = "127.0.0.1:0".parse().expect("an address");
    let mut config = Config::new(listen, Keypair::generate().expect("a key"));
    config.first_message_timeout = Duration::from_secs(1);
    config.handshake_timeout = Duration::from_secs(2);
    Server::spawn(config).await.expect("binding")
}

async fn wait_for(server: &Server, what: &str, cond: impl Fn(&ServerStats) -> bool) {
    let deadline = Instant::now() + CLOSE_WAIT;
    while !cond(&server.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", server.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `bytes` (maybe nothing) and returns once the server closed the connection.
async fn send_and_expect_close(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connecting");
    s.write_all(bytes).await.expect("writing");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{addr}: still open after {CLOSE_WAIT:?}");
}

#[tokio::test]
async fn hostile_connections_to_the_check_port_are_closed_and_counted_like_on_the_main_port() {
    let server = server().await;
    let check = server.nat_check_addr().expect("a check port");
    let main = server.local_addr();
    let id = server.identity();

    // The same garbage on each port: a wrong-length message 1, a bogus 48-byte message 1,
    // random bytes with a plausible length prefix, then silence (first-message timeout).
    let mut bogus = vec![0, 48];
    bogus.extend_from_slice(&[0x5a; 48]);
    let garbage: [&[u8]; 4] = [
        &[0, 3, 1, 2, 3],
        &bogus,
        &[0, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        &[],
    ];
    let mut counted = Vec::new();
    for port in [main, check] {
        let before = server.stats();
        for g in garbage {
            send_and_expect_close(port, g).await;
        }
        wait_for(&server, "all counted", |s| {
            s.handshake_failed >= before.handshake_failed + garbage.len() as u64
        })
        .await;
        let after = server.stats();
        counted.push((
            after.handshake_failed - before.handshake_failed,
            after.silent - before.silent,
        ));
    }
    assert_eq!(counted[0], counted[1], "main vs check port");
    assert_eq!(counted[1], (4, 1));

    // A relay hello is served on the main port only: on the check port it fails the
    // handshake (message 1 of the wrong length).
    let before = server.stats().handshake_failed;
    send_and_expect_close(check, b"PR\x01").await;
    wait_for(&server, "relay hello refused", |s| {
        s.handshake_failed > before
    })
    .await;

    // A registration on the check port, and a probe on the main port: typed refusals.
    for (addr, register) in [(check, default_register()), (main, probe())] {
        let before = server.stats().protocol_errors;
        let err = TestClient::connect_with(addr, &id, Keypair::generate().unwrap(), &register)
            .await
            .expect_err("refused");
        let refused = err.downcast_ref::<RegistrationRefused>().expect("typed");
        assert_eq!(
            refused.0.code,
            ErrorCode::BadRequest,
            "{addr}: {}",
            refused.0.detail
        );
        wait_for(&server, "counted", |s| s.protocol_errors > before).await;
    }
    assert_eq!(server.stats().registered, 0);

    // A probe that stalls after the handshake (never reads) costs nothing lasting: the answer
    // is written and the server closes.
    let mut stalled = TestClient::connect_with(check, &id, Keypair::generate().unwrap(), &probe())
        .await
        .expect("answered");
    stalled.expect_closed(CLOSE_WAIT).await.unwrap();

    // The server keeps serving: a registered raw client's probe is classified.
    let keypair = Keypair::generate().unwrap();
    let control = TestClient::connect_with(main, &id, keypair.clone(), &default_register())
        .await
        .unwrap();
    let answered = server.stats().nat_checks;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.set_reuseport(true).unwrap();
    // From another port than the control connection's: the server sees endpoint-dependent.
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stream = socket.connect(check).await.unwrap();
    let mut probe_client = TestClient::handshake(stream, &id, keypair, &probe())
        .await
        .unwrap();
    assert_ne!(
        probe_client.registered().observed,
        control.registered().observed
    );
    assert_eq!(probe_client.registered().nat_check_port, None);
    probe_client.expect_closed(CLOSE_WAIT).await.unwrap();
    let s = server.stats();
    assert_eq!((s.nat_checks, s.nat_endpoint_dependent), (answered + 1, 1));
    assert_eq!(s.registered, 1);
    server.shutdown().await;
}
