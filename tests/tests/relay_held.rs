//! The relay's held side, against the library server in the test process (its counters show
//! when a relay connection is held, which the binary does not): bytes a held side wrote right
//! after its HELLO reach its partner, and a partner over its source's limit gets the pair
//! dropped and both sides refused with `SourceLimit`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use punch_proto::message::RelayEnd;
use punch_proto::relay::Refusal;
use punch_proto::Keypair;
use punch_rendezvous::{Config, Server};
use punch_tests::init_tracing;
use punch_tests::relay::{open_relay, read_n, read_refusal, Punch};
use tokio::io::AsyncWriteExt;

/// Bound on anything that must happen on loopback.
const T: Duration = Duration::from_secs(5);

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("an IP address"))
}

async fn server(configure: impl FnOnce(&mut Config)) -> Server {
    init_tracing();
    let listen = "127.0.0.1:0".parse().expect("a socket address");
    let mut config = Config::new(listen, Keypair::generate().expect("a fresh key"));
    configure(&mut config);
    Server::spawn(config).await.expect("starting the server")
}

/// Waits until the server holds `n` relay connections waiting for their partner.
async fn until_held(server: &Server, n: u64) {
    let deadline = Instant::now() + T;
    while server.stats().relay_held != n {
        assert!(Instant::now() < deadline, "{:?}", server.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn bytes_written_right_after_the_hello_wait_for_the_partner() {
    let s = server(|_| {}).await;
    let p = Punch::new_at(s.local_addr(), &s.identity()).await.unwrap();
    let [ta, tb] = p.tickets().unwrap();
    let mut a = open_relay(s.local_addr(), None, &ta.token, b"preamble and noise of A")
        .await
        .unwrap();
    until_held(&s, 1).await;
    // More bytes while held: they wait in the socket, nothing is read.
    a.write_all(b", and more").await.unwrap();
    let mut b = open_relay(s.local_addr(), None, &tb.token, b"B")
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut b, 33, T).await.unwrap(),
        b"preamble and noise of A, and more"
    );
    assert_eq!(read_n(&mut a, 1, T).await.unwrap(), b"B");
    let st = s.stats();
    assert_eq!(
        (st.relay_held, st.relay_active, st.relay_started),
        (0, 1, 1)
    );
    drop((a, b));
    let deadline = Instant::now() + T;
    while s.stats().relay_active != 0 {
        assert!(Instant::now() < deadline, "the session did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.stats().relay_bytes, 34);
}

#[tokio::test]
async fn a_partner_over_its_source_limit_drops_the_pair() {
    let s = server(|c| c.relay_max_sessions_per_source = 1).await;
    let addr = s.local_addr();
    // 127.0.0.2 holds one session.
    let p1 = Punch::new_at(addr, &s.identity()).await.unwrap();
    let [t1a, t1b] = p1.tickets().unwrap();
    let mut a = open_relay(addr, ip("127.0.0.2"), &t1a.token, b"")
        .await
        .unwrap();
    let mut b = open_relay(addr, ip("127.0.0.2"), &t1b.token, b"x")
        .await
        .unwrap();
    assert_eq!(read_n(&mut a, 1, T).await.unwrap(), b"x");

    let p2 = Punch::new_at(addr, &s.identity()).await.unwrap();
    let [t2a, t2b] = p2.tickets().unwrap();
    let mut held = open_relay(addr, ip("127.0.0.3"), &t2a.token, b"")
        .await
        .unwrap();
    until_held(&s, 1).await;
    let mut partner = open_relay(addr, ip("127.0.0.2"), &t2b.token, b"")
        .await
        .unwrap();
    assert_eq!(
        read_refusal(&mut partner, T).await.unwrap(),
        Refusal::SourceLimit
    );
    assert_eq!(
        read_refusal(&mut held, T).await.unwrap(),
        Refusal::SourceLimit
    );
    let st = s.stats();
    assert_eq!((st.relay_held, st.relay_refused_source_limit), (0, 1));
    // The first session is untouched.
    b.write_all(b"y").await.unwrap();
    assert_eq!(read_n(&mut a, 1, T).await.unwrap(), b"y");
}

#[tokio::test]
async fn shutdown_ends_relayed_sessions_and_tells_both_peers() {
    let s = server(|_| {}).await;
    let mut p = Punch::new_at(s.local_addr(), &s.identity()).await.unwrap();
    let (mut a, mut b) = p.relay_at(s.local_addr()).await.unwrap();
    a.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut b, 1, T).await.unwrap(), b"x");
    let (_, ended) = tokio::join!(s.shutdown(), p.relay_ended(T));
    assert_eq!(ended.unwrap(), [RelayEnd::Shutdown, RelayEnd::Shutdown]);
}

#[tokio::test]
async fn held_and_spliced_relay_connections_take_no_waiting_place() {
    // One place for connections waiting for their first message: were relay connections
    // still in it, each new control connection would evict one of them.
    let s = server(|c| c.max_waiting_connections = 1).await;
    let addr = s.local_addr();
    let p1 = Punch::new_at(addr, &s.identity()).await.unwrap();
    let [t1a, t1b] = p1.tickets().unwrap();
    // One connection at a time: two waiting for their first bytes at once would be one too
    // many for the single place, whatever they are.
    let mut a = open_relay(addr, None, &t1a.token, b"").await.unwrap();
    until_held(&s, 1).await;
    let mut b = open_relay(addr, None, &t1b.token, b"x").await.unwrap();
    assert_eq!(read_n(&mut a, 1, T).await.unwrap(), b"x");
    let p2 = Punch::new_at(addr, &s.identity()).await.unwrap();
    let [t2a, t2b] = p2.tickets().unwrap();
    let mut held = open_relay(addr, None, &t2a.token, b"held").await.unwrap();
    until_held(&s, 1).await;
    let evicted = s.stats().evicted;
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        newcomers.push(
            punch_tests::TestClient::connect(addr, &s.identity())
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        s.stats().evicted,
        evicted,
        "no relay connection was evicted"
    );
    a.write_all(b"y").await.unwrap();
    assert_eq!(read_n(&mut b, 1, T).await.unwrap(), b"y");
    let mut partner = open_relay(addr, None, &t2b.token, b"").await.unwrap();
    assert_eq!(read_n(&mut partner, 4, T).await.unwrap(), b"held");
    partner.write_all(b"z").await.unwrap();
    assert_eq!(read_n(&mut held, 1, T).await.unwrap(), b"z");
}
