//! Relayed sessions on 127.0.0.1 through a real rendezvous: peers that dial nothing directly
//! (`Config::direct` off, as if every direct path were blocked) get a session through the
//! rendezvous's relay, authenticated like a direct one, and the relay's reason for ending one
//! reaches both sides.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use punch::{Client, Config, Incoming, PathKind, Session};
use punch_proto::Keypair;
use punch_rendezvous::Server;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGISTER: Duration = Duration::from_secs(10);
/// Bounds a wait that must end, so a bug fails the test instead of hanging it.
const HANG: Duration = Duration::from_secs(20);

async fn relay_only_client(server: &Server, accept: bool) -> (Client, Incoming) {
    let mut config = Config::new(
        server.local_addr(),
        server.identity(),
        Keypair::generate().unwrap(),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.accept_inbound = accept;
    config.direct = false;
    let (c, inc) = Client::start(config).await.unwrap();
    c.wait_registered(REGISTER).await.unwrap();
    (c, inc)
}

async fn relayed_pair(server: &Server) -> (Session, Session, Client, Client) {
    let (a, _) = relay_only_client(server, false).await;
    let (b, mut b_in) = relay_only_client(server, true).await;
    let (sa, sb) = tokio::join!(a.connect(b.id()), async {
        tokio::time::timeout(HANG, b_in.next())
            .await
            .unwrap()
            .unwrap()
    });
    (sa.unwrap(), sb, a, b)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

#[tokio::test]
async fn peers_without_a_direct_path_get_an_authenticated_relayed_session() {
    let server = Server::spawn(punch_rendezvous::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Keypair::generate().unwrap(),
    ))
    .await
    .unwrap();
    let (sa, mut sb, a, b) = relayed_pair(&server).await;
    for (s, peer) in [(&sa, b.id()), (&sb, a.id())] {
        assert_eq!(s.info().path, PathKind::Relayed);
        assert_eq!(s.path().kind, PathKind::Relayed);
        assert_eq!(s.info().peer, peer, "authenticated as the expected peer");
        assert_eq!(
            s.info().remote,
            server.local_addr(),
            "the far end is the relay"
        );
    }
    let up = random_bytes(8 << 20);
    let down = random_bytes(6 << 20);
    let (up_sum, down_sum) = (Sha256::digest(&up), Sha256::digest(&down));
    let mut s = sa.open_stream().await.unwrap();
    let echo = tokio::spawn(async move {
        let mut t = tokio::time::timeout(HANG, sb.accept_stream())
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        t.read_to_end(&mut got).await.unwrap();
        t.write_all(&down).await.unwrap();
        t.shutdown().await.unwrap();
        (Sha256::digest(&got), sb)
    });
    s.write_all(&up).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(HANG, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let (got_up, _sb) = echo.await.unwrap();
    assert_eq!(got_up, up_sum, "upload intact through the relay");
    assert_eq!(Sha256::digest(&got), down_sum, "download intact");
}

#[tokio::test]
async fn a_relay_limit_ends_the_session_on_both_sides_with_its_reason() {
    let mut config =
        punch_rendezvous::Config::new("127.0.0.1:0".parse().unwrap(), Keypair::generate().unwrap());
    config.relay_max_bytes = 4 << 20;
    let server = Server::spawn(config).await.unwrap();
    let (sa, mut sb, _a, _b) = relayed_pair(&server).await;
    let mut s = sa.open_stream().await.unwrap();
    let sink = tokio::spawn(async move {
        let mut t = tokio::time::timeout(HANG, sb.accept_stream())
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(t.read(&mut buf).await, Ok(n) if n > 0) {}
        sb
    });
    // More than the limit: the relay cuts the session part way.
    let chunk = vec![7u8; 256 * 1024];
    for _ in 0..64 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    tokio::time::timeout(HANG, sa.closed()).await.unwrap();
    let sb = tokio::time::timeout(HANG, sink).await.unwrap().unwrap();
    tokio::time::timeout(HANG, sb.closed()).await.unwrap();
    for s in [&sa, &sb] {
        let reason = s.end_reason().map(|r| r.to_string());
        assert_eq!(
            reason.as_deref(),
            Some("relay ended the session: the relay's byte limit per session was reached"),
            "both sides see the relay's reason"
        );
    }
}
