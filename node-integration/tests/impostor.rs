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
use punch_proto::channel::server_handshake;
use punch_proto::message::{ClientMsg, Offer, Registered, ServerMsg};
use punch_proto::noise::Handshake;
use punch_proto::{Keypair, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn impostor_never_reaches_kaspa() {
    let node = KaspaNode::start(NodeConfig::default()).await.unwrap();
    let mut events = node.subscribe();
    let bridge = Bridge::new(BridgeConfig::new(node.p2p_addr())).unwrap();

    let server_key = Keypair::generate().unwrap();
    let trusted = Keypair::generate().unwrap().public();
    let impostor = Keypair::generate().unwrap();
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let impostor_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let impostor_addr = impostor_listener.local_addr().unwrap();

    // The lying rendezvous: registers us, then answers our request for `trusted` with the
    // impostor's address.
    let sk = server_key.clone();
    let rendezvous = tokio::spawn(async move {
        let (tcp, from) = fake.accept().await.unwrap();
        let mut acc = server_handshake(tcp, &sk).await.unwrap();
        let reg = ServerMsg::Registered(Registered {
            observed: from,
            ping_interval: Duration::from_secs(5),
        });
        acc.channel.send(&reg.encode()).await.unwrap();
        loop {
            let msg = ClientMsg::decode(&acc.channel.recv().await.unwrap()).unwrap();
            if let ClientMsg::Connect { request_id, peer } = msg {
                let offer = ServerMsg::Offer(Offer {
                    session_id: 91,
                    request_id,
                    peer,
                    peer_observed: impostor_addr,
                    peer_local: vec![],
                    role: Role::Responder,
                    dial_delay: Duration::ZERO,
                });
                acc.channel.send(&offer.encode()).await.unwrap();
                return acc;
            }
        }
    });

    let mut config = Config::new(fake_addr, server_key.public(), Keypair::generate().unwrap());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.punch_window = Duration::from_secs(2);
    let victim = config.keypair.public();

    // The impostor answers every dial with the preamble and a KK handshake under its own key,
    // claiming to be `trusted`; it counts how many bytes it ever gets back after that.
    let impostor_task = tokio::spawn(async move {
        let (mut attempts, mut answered) = (0, 0usize);
        while let Ok(Ok((mut tcp, _))) =
            tokio::time::timeout(Duration::from_secs(4), impostor_listener.accept()).await
        {
            let mut pre = [0u8; 12];
            if tcp.read_exact(&mut pre).await.is_err() {
                continue;
            }
            tcp.write_all(&pre).await.unwrap();
            let mut hs = Handshake::peer(Role::Initiator, &impostor, &victim, 91).unwrap();
            let m1 = hs.write(&[]).unwrap();
            tcp.write_all(&(m1.len() as u16).to_be_bytes())
                .await
                .unwrap();
            tcp.write_all(&m1).await.unwrap();
            let mut rest = Vec::new();
            answered += tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap_or(0);
            attempts += 1;
        }
        (attempts, answered)
    });

    let (client, _incoming) = Client::start(config).await.unwrap();
    client.wait_registered(REGISTER).await.unwrap();
    let res = client.connect(trusted).await;
    assert!(
        matches!(res, Err(Error::AuthFailed { addr, .. }) if addr == impostor_addr),
        "{res:?}"
    );
    let (attempts, answered) = impostor_task.await.unwrap();
    assert!(attempts >= 1, "the impostor was dialed");
    assert_eq!(answered, 0, "the victim answered an impostor");

    // Nothing reached the bridge or Kaspa.
    assert!(!bridge.is_live(&trusted));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(node.peers().is_empty());
    assert!(drain(&mut events).is_empty(), "no Kaspa handshake began");
    drop(rendezvous);
}
