//! The link (kaspad-punch's logic) with in-process Kaspa nodes: a configured peer is punched,
//! bridged and dialed; when the Kaspa connection drops it is re-punched; inbound punched
//! peers beyond the limit are refused; an idle inbound session (a Sybil holding a slot) is
//! closed and the slot goes to an honest peer.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{registered_client, rendezvous, wait_peers};
use punch_node::bridge::{Bridge, BridgeConfig};
use punch_node::link::{Link, LinkConfig, LinkEvent};
use punch_node::node::{KaspaNode, NodeConfig};
use punch_proto::PeerId;
use punch_rendezvous::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

const SETTLE: Duration = Duration::from_secs(20);

struct Linked {
    node: Arc<KaspaNode>,
    id: PeerId,
    link: Link,
}

async fn linked(server: &Server, peers: Vec<PeerId>, accept: bool, max_inbound: usize) -> Linked {
    linked_with(server, peers, accept, max_inbound, |_| {}).await
}

async fn linked_with(
    server: &Server,
    peers: Vec<PeerId>,
    accept: bool,
    max_inbound: usize,
    tweak: impl FnOnce(&mut LinkConfig),
) -> Linked {
    let node = Arc::new(KaspaNode::start(NodeConfig::default()).await.unwrap());
    let bridge = Bridge::new(BridgeConfig::new(node.p2p_addr())).unwrap();
    let (client, incoming) = registered_client(server, accept).await;
    let id = client.id();
    let mut link_config = LinkConfig::new(peers);
    link_config.max_inbound = max_inbound;
    link_config.retry_min = Duration::from_millis(200);
    link_config.retry_max = Duration::from_secs(2);
    tweak(&mut link_config);
    let link = Link::spawn(
        client,
        incoming,
        bridge,
        Arc::new(node.clone()),
        link_config,
    );
    Linked { node, id, link }
}

async fn next_matching(
    events: &mut broadcast::Receiver<LinkEvent>,
    pred: impl Fn(&LinkEvent) -> bool,
) -> LinkEvent {
    tokio::time::timeout(SETTLE, async {
        loop {
            let ev = events.recv().await.unwrap();
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_configured_peer_is_connected_and_repunched_after_a_drop() {
    let server = rendezvous().await;
    let hub = linked(&server, vec![], true, 8).await;
    let spoke = linked(&server, vec![hub.id], false, 8).await;
    let mut events = spoke.link.subscribe();

    assert!(wait_peers(&hub.node, 1, SETTLE).await, "first connection");
    assert!(wait_peers(&spoke.node, 1, SETTLE).await);
    assert!(spoke.node.peers()[0].is_outbound(), "the spoke dials");

    // The hub's node drops every peer: the spoke sees its Kaspa connection end and punches
    // again (the old session is closed first, freeing the shared port's 4-tuple).
    hub.node.close().await;
    let ended = next_matching(&mut events, |e| matches!(e, LinkEvent::Ended { .. })).await;
    assert!(matches!(ended, LinkEvent::Ended { outbound: true, peer } if peer == hub.id));
    let again = next_matching(&mut events, |e| matches!(e, LinkEvent::Dialed { .. })).await;
    assert!(
        matches!(&again, LinkEvent::Dialed { result: Ok(()), .. }),
        "{again:?}"
    );
    assert!(wait_peers(&hub.node, 1, SETTLE).await, "reconnected");
}

#[tokio::test]
async fn inbound_punched_peers_beyond_the_limit_are_refused() {
    let server = rendezvous().await;
    let hub = linked(&server, vec![], true, 1).await;
    let mut hub_events = hub.link.subscribe();
    let first = linked(&server, vec![hub.id], false, 8).await;
    assert!(wait_peers(&hub.node, 1, SETTLE).await);
    let second = linked(&server, vec![hub.id], false, 8).await;
    let refused = next_matching(&mut hub_events, |e| matches!(e, LinkEvent::Refused { .. })).await;
    assert!(
        matches!(&refused, LinkEvent::Refused { peer, .. } if *peer == second.id),
        "{refused:?}"
    );
    assert_eq!(hub.node.peers().len(), 1);
    assert_eq!(hub.node.peers()[0].identity(), first.node.node_id());
}

/// Finding 10 of the hostile-peers issue: an authenticated session that never carries a Kaspa
/// connection used to hold a `max_inbound` slot until it closed. The Sybil here is a bare
/// punch client (no Kaspa node): it takes the hub's only slot and even opens a stream that
/// the hub's bridge delivers to the node's P2P port (the node's gRPC server answers the
/// HTTP/2 preface and would hold that connection open), but never handshakes. An honest
/// peer is refused while it lasts, the hub closes it after the (shortened) idle limit, and
/// the honest peer then connects and stays connected past the limit.
#[tokio::test]
async fn an_idle_inbound_session_is_closed_and_an_honest_peer_gets_the_slot() {
    const IDLE: Duration = Duration::from_secs(3);
    let server = rendezvous().await;
    let hub = linked_with(&server, vec![], true, 1, |c| c.inbound_idle_timeout = IDLE).await;
    let mut hub_events = hub.link.subscribe();

    let (sybil, _sybil_incoming) = registered_client(&server, false).await;
    let sybil_session = sybil.connect(hub.id).await.unwrap();
    let held_at = Instant::now();
    let punched = next_matching(&mut hub_events, |e| matches!(e, LinkEvent::Punched { .. })).await;
    assert!(
        matches!(&punched, LinkEvent::Punched { peer, outbound: false, .. } if *peer == sybil.id()),
        "{punched:?}"
    );
    // A connection to the node, held open without a Kaspa handshake: the node's HTTP/2
    // SETTINGS come back through the bridge.
    let mut stream = sybil_session.opener().open_stream().await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut settings = [0u8; 9];
    tokio::time::timeout(SETTLE, stream.read_exact(&mut settings))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings[3], 0x4, "an HTTP/2 SETTINGS frame from the node");

    let honest = linked(&server, vec![hub.id], false, 8).await;
    let refused = next_matching(&mut hub_events, |e| matches!(e, LinkEvent::Refused { .. })).await;
    assert!(
        matches!(&refused, LinkEvent::Refused { peer, .. } if *peer == honest.id),
        "the Sybil holds the slot: {refused:?}"
    );

    let closed = next_matching(&mut hub_events, |e| {
        matches!(e, LinkEvent::IdleClosed { .. })
    })
    .await;
    assert!(
        matches!(&closed, LinkEvent::IdleClosed { peer, idle } if *peer == sybil.id() && *idle == IDLE),
        "{closed:?}"
    );
    let waited = held_at.elapsed();
    // The hub counts from its attach, a few ms before or after `held_at`.
    assert!(
        waited >= IDLE - Duration::from_millis(200),
        "closed after {waited:?}, before the limit"
    );
    tokio::time::timeout(SETTLE, sybil_session.closed())
        .await
        .expect("the hub closed the Sybil's session");

    assert!(
        wait_peers(&hub.node, 1, SETTLE).await,
        "the honest peer got the slot"
    );
    assert_eq!(hub.node.peers()[0].identity(), honest.node.node_id());
    // A session carrying a Kaspa connection is not idle: still there after the limit.
    tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
    assert_eq!(hub.node.peers().len(), 1);
    assert_eq!(hub.node.peers()[0].identity(), honest.node.node_id());
    println!("Sybil's idle session closed {waited:?} after it was punched (limit {IDLE:?})");
}
