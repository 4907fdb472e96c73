//! Shared set-up of the integration tests: a rendezvous on 127.0.0.1 and "peers", each a
//! Kaspa node (kaspa-p2p-lib adaptor with kaspad's handshake rules), its bridge and its punch
//! client, all in this process.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punch::{Client, Incoming};
use punch_node::bridge::{Bridge, BridgeConfig, BridgedPeer};
use punch_node::handshake::HandshakeEvent;
use punch_node::node::{KaspaNode, NodeConfig, DEFAULT_NETWORK};
use punch_proto::Keypair;
use punch_rendezvous::Server;
use tokio::sync::broadcast;

pub const REGISTER: Duration = Duration::from_secs(10);
pub const PUNCH: Duration = Duration::from_secs(15);

pub async fn rendezvous() -> Server {
    Server::spawn(punch_rendezvous::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Keypair::generate().unwrap(),
    ))
    .await
    .unwrap()
}

pub struct Peer {
    pub node: KaspaNode,
    pub bridge: Bridge,
    pub client: Client,
    pub incoming: Incoming,
    pub events: broadcast::Receiver<HandshakeEvent>,
}

impl Peer {
    pub async fn start(server: &Server, network: &str, accept: bool) -> Peer {
        let node = KaspaNode::start(NodeConfig {
            network: network.into(),
            ..NodeConfig::default()
        })
        .await
        .unwrap();
        let events = node.subscribe();
        let bridge = Bridge::new(BridgeConfig::new(node.p2p_addr())).unwrap();
        let (client, incoming) = registered_client(server, accept).await;
        Peer {
            node,
            bridge,
            client,
            incoming,
            events,
        }
    }

    pub async fn mainnet(server: &Server, accept: bool) -> Peer {
        Self::start(server, DEFAULT_NETWORK, accept).await
    }
}

/// A punch client on 127.0.0.1 with a fresh identity, registered with `server`.
pub async fn registered_client(server: &Server, accept: bool) -> (Client, Incoming) {
    let mut config = punch::Config::new(
        server.local_addr(),
        server.identity(),
        Keypair::generate().unwrap(),
    );
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.accept_inbound = accept;
    let (client, incoming) = Client::start(config).await.unwrap();
    client.wait_registered(REGISTER).await.unwrap();
    (client, incoming)
}

/// `a` punches `b` and both bridge the session: (a's side, b's side).
pub async fn punch(a: &Peer, b: &mut Peer) -> (BridgedPeer, BridgedPeer) {
    let (sa, sb) = tokio::join!(a.client.connect(b.client.id()), async {
        tokio::time::timeout(PUNCH, b.incoming.next())
            .await
            .unwrap()
            .unwrap()
    });
    let sa = sa.unwrap();
    (
        a.bridge.attach(sa).await.unwrap(),
        b.bridge.attach(sb).await.unwrap(),
    )
}

/// Waits (bounded) until `node` has `n` handshaken peers; returns whether it did.
pub async fn wait_peers(node: &KaspaNode, n: usize, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if node.peers().len() == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.peers().len() == n
}

/// Handshake events received so far (without waiting for more).
pub fn drain(events: &mut broadcast::Receiver<HandshakeEvent>) -> Vec<HandshakeEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = events.try_recv() {
        out.push(ev);
    }
    out
}

/// Waits (bounded) for the first event matching `pred`.
pub async fn wait_event(
    events: &mut broadcast::Receiver<HandshakeEvent>,
    within: Duration,
    pred: impl Fn(&HandshakeEvent) -> bool,
) -> Option<HandshakeEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ev)) if pred(&ev) => return Some(ev),
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
}

pub fn ip_of(addr: SocketAddr) -> std::net::IpAddr {
    addr.ip().to_canonical()
}
