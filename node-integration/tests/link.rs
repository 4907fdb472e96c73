//! The link (kaspad-punch's logic) with in-process Kaspa nodes: a configured peer is punched,
//! bridged and dialed; when the Kaspa connection drops it is re-punched; inbound punched
//! peers beyond the limit are refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{registered_client, rendezvous, wait_peers};
use punch_node::bridge::{Bridge, BridgeConfig};
use punch_node::link::{Link, LinkConfig, LinkEvent};
use punch_node::node::{KaspaNode, NodeConfig};
use punch_proto::PeerId;
use punch_rendezvous::Server;
use tokio::sync::broadcast;

const SETTLE: Duration = Duration::from_secs(20);

struct Linked {
    node: Arc<KaspaNode>,
    id: PeerId,
    link: Link,
}

async fn linked(server: &Server, peers: Vec<PeerId>, accept: bool, max_inbound: usize) -> Linked {
    let node = Arc::new(KaspaNode::start(NodeConfig::default()).await.unwrap());
    let bridge = Bridge::new(BridgeConfig::new(node.p2p_addr())).unwrap();
    let (client, incoming) = registered_client(server, accept).await;
    let id = client.id();
    let mut link_config = LinkConfig::new(peers);
    link_config.max_inbound = max_inbound;
    link_config.retry_min = Duration::from_millis(200);
    link_config.retry_max = Duration::from_secs(2);
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
