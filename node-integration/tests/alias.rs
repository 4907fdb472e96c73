//! Aliases come from the bridge's table, not from the key (finding 10 of the hostile-peers
//! issue): a stranger cannot take a live friend's `127.a.b.c`, whatever key it holds. The
//! hub's table is given a range of two aliases, so after the friend and a first stranger the
//! cursor points at the friend's alias again: that is the "collision" a ground key used to
//! produce. The second stranger is refused while both are live, and when the first leaves a
//! third gets the first one's alias, never the friend's; the friend's Kaspa connection, seen
//! by the hub's node from the friend's alias, is untouched throughout.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{ip_of, punch, rendezvous, wait_peers, Peer, PUNCH};
use punch_node::alias::{AliasError, AliasRange};
use punch_node::bridge::{Bridge, BridgeConfig, BridgeError};

const SETTLE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_stranger_never_gets_a_live_friends_alias() {
    let server = rendezvous().await;
    let mut hub = Peer::mainnet(&server, true).await;
    let mut config = BridgeConfig::new(hub.node.p2p_addr());
    config.alias_range = AliasRange::new(Ipv4Addr::new(127, 9, 0, 1), 2).unwrap();
    config.alias_capacity = 2;
    hub.bridge = Bridge::new(config).unwrap();

    let friend = Peer::mainnet(&server, false).await;
    let (to_hub, at_hub) = punch(&friend, &mut hub).await;
    friend
        .node
        .connect(to_hub.dial_addr().unwrap())
        .await
        .unwrap();
    assert!(wait_peers(&hub.node, 1, SETTLE).await);
    let friend_alias = at_hub.alias();
    assert_eq!(hub.bridge.alias_of(&friend.client.id()), Some(friend_alias));

    let first = Peer::mainnet(&server, false).await;
    let (_first_side, first_at_hub) = punch(&first, &mut hub).await;
    assert_ne!(first_at_hub.alias(), friend_alias);

    // Both aliases live: the next stranger gets none, and is not given the friend's.
    let second = Peer::mainnet(&server, false).await;
    let (s, h) = tokio::join!(second.client.connect(hub.client.id()), async {
        tokio::time::timeout(PUNCH, hub.incoming.next())
            .await
            .unwrap()
            .unwrap()
    });
    let _second_side = s.unwrap();
    let err = hub.bridge.attach(h).await.unwrap_err();
    assert!(
        matches!(&err, BridgeError::Alias(AliasError::Full { peer, live: 2 }) if *peer == second.client.id()),
        "{err:?}"
    );

    // The first stranger leaves; a third one now gets its alias (the first is evicted, being
    // idle), not the friend's.
    let first_alias = first_at_hub.alias();
    drop(first_at_hub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = Peer::mainnet(&server, false).await;
    let (_third_side, third_at_hub) = punch(&third, &mut hub).await;
    assert_eq!(third_at_hub.alias(), first_alias);
    assert_eq!(hub.bridge.alias_of(&first.client.id()), None, "evicted");
    assert_eq!(hub.bridge.alias_of(&friend.client.id()), Some(friend_alias));

    // The friend is still connected, seen from its own alias.
    assert_eq!(hub.node.peers().len(), 1);
    assert_eq!(hub.node.peers()[0].identity(), friend.node.node_id());
    assert_eq!(
        ip_of(hub.node.peers()[0].net_address()),
        IpAddr::V4(friend_alias)
    );
}
