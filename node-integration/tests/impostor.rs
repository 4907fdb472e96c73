//! An impostor never reaches Kaspa: a lying rendezvous sends our node's punch client to an
//! address where someone holding another key claims to be the trusted peer. The punch fails
//! authentication, so the bridge never gets a session and the Kaspa node never sees a
//! connection, let alone a handshake.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{drain, REGISTER};
use punch::{Client, Config, Error};
use punch_node::bridge::{Bridge, BridgeConfig};
use punch_node::node::{KaspaNode, NodeConfig};
use punch_proto::Keypair;
use punch_rendezvous::test_support::{impostor, LyingRendezvous};

#[tokio::test]
async fn impostor_never_reaches_kaspa() {
    let node = KaspaNode::start(NodeConfig::default()).await.unwrap();
    let mut events = node.subscribe();
    let bridge = Bridge::new(BridgeConfig::new(node.p2p_addr())).unwrap();

    let server_key = Keypair::generate().unwrap();
    let trusted = Keypair::generate().unwrap().public();
    let impostor_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let impostor_addr = impostor_listener.local_addr().unwrap();
    // The lying rendezvous: registers us, then answers our request for `trusted` with the
    // impostor's address.
    let fake = LyingRendezvous::spawn(server_key.clone(), impostor_addr, 91)
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

    // The impostor answers every dial with the preamble and a KK handshake under its own key,
    // claiming to be `trusted`; it counts how many bytes it ever gets back after that.
    let impostor_task = tokio::spawn(impostor(
        impostor_listener,
        Keypair::generate().unwrap(),
        victim,
        91,
        Duration::from_secs(4),
    ));

    let (client, _incoming) = Client::start(config).await.unwrap();
    client.wait_registered(REGISTER).await.unwrap();
    let res = client.connect(trusted).await;
    assert!(
        matches!(res, Err(Error::AuthFailed { addr, .. }) if addr == impostor_addr),
        "{res:?}"
    );
    let report = impostor_task.await.unwrap();
    assert!(report.attempts >= 1, "the impostor was dialed");
    assert_eq!(report.answered, 0, "the victim answered an impostor");

    // Nothing reached the bridge or Kaspa.
    assert!(!bridge.is_live(&trusted));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(node.peers().is_empty());
    assert!(drain(&mut events).is_empty(), "no Kaspa handshake began");
    drop(fake);
}
