//! Kaspa's handshake between two real kaspa-p2p-lib adaptors over punched sessions on
//! loopback, through the bridge: success, wrong network, duplicate connection, per-peer bans,
//! and several punched peers at once.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{drain, ip_of, punch, rendezvous, wait_event, wait_peers, Peer};
use kaspa_p2p_lib::common::ProtocolError;
use kaspa_p2p_lib::ConnectionError;
use punch_node::handshake::Step;

const SETTLE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn version_verack_ready_over_a_punched_session() {
    let server = rendezvous().await;
    let mut a = Peer::mainnet(&server, false).await;
    let mut b = Peer::mainnet(&server, true).await;
    let (pa, pb) = punch(&a, &mut b).await;

    // Exactly one side dials at the Kaspa level: the one that asked for the punch.
    let dial = pa.dial_addr().expect("the requester dials");
    assert!(pb.dial_addr().is_none(), "the accepting side never dials");
    assert_eq!(ip_of(dial), std::net::IpAddr::V4(pa.alias()));
    assert_eq!(a.bridge.alias_of(&b.client.id()), Some(pa.alias()));

    a.node.connect(dial).await.unwrap();
    assert!(wait_peers(&a.node, 1, SETTLE).await);
    assert!(wait_peers(&b.node, 1, SETTLE).await);

    let at_a = &a.node.peers()[0];
    assert!(at_a.is_outbound());
    assert_eq!(at_a.net_address(), dial);
    assert_eq!(at_a.identity(), b.node.node_id());
    let at_b = &b.node.peers()[0];
    assert!(!at_b.is_outbound());
    assert_eq!(ip_of(at_b.net_address()), std::net::IpAddr::V4(pb.alias()));
    assert_eq!(b.bridge.alias_of(&a.client.id()), Some(pb.alias()));
    assert_eq!(at_b.identity(), a.node.node_id());
    assert_eq!(at_b.properties().protocol_version, 11);

    for events in [&mut a.events, &mut b.events] {
        let steps: Vec<Step> = drain(events).into_iter().map(|e| e.step).collect();
        assert!(
            steps.iter().any(|s| matches!(
                s,
                Step::Version {
                    protocol_version: 11,
                    ..
                }
            )),
            "{steps:?}"
        );
        assert!(steps.contains(&Step::Verack), "{steps:?}");
        assert!(
            steps.contains(&Step::Ready {
                protocol_version: 11
            }),
            "{steps:?}"
        );
    }
    assert_eq!(pa.counts().open, 1);
    assert_eq!(pb.counts().open, 1);
}

#[tokio::test]
async fn wrong_network_name_is_rejected() {
    let server = rendezvous().await;
    let a = Peer::mainnet(&server, false).await;
    let mut b = Peer::start(&server, "kaspa-testnet-10", true).await;
    let (pa, _pb) = punch(&a, &mut b).await;

    let err = a.node.connect(pa.dial_addr().unwrap()).await.unwrap_err();
    assert!(
        matches!(&err, ConnectionError::ProtocolError(ProtocolError::WrongNetwork(ours, theirs))
            if ours == "kaspa-mainnet" && theirs == "kaspa-testnet-10"),
        "{err:?}"
    );
    let at_b = wait_event(&mut b.events, SETTLE, |e| {
        matches!(e.step, Step::Rejected { .. } | Step::Ready { .. })
    })
    .await
    .unwrap();
    assert!(
        matches!(&at_b.step, Step::Rejected { reason } if reason.contains("Network mismatch")),
        "{at_b:?}"
    );
    assert!(a.node.peers().is_empty());
    assert!(b.node.peers().is_empty());
}

/// A second Kaspa connection between a connected pair (kaspad redialing, or an `addpeer` of
/// an address it already has) is refused as a duplicate: the bridge delivers it from the same
/// alias, so the (node id, IP) key matches. (A second *punched session* with the same peer
/// cannot exist while the first lives: the shared punch port would need the same TCP 4-tuple
/// twice; punch reports EADDRNOTAVAIL dials and a timeout.)
#[tokio::test]
async fn second_connection_between_the_same_pair_is_a_duplicate() {
    let server = rendezvous().await;
    let a = Peer::mainnet(&server, false).await;
    let mut b = Peer::mainnet(&server, true).await;
    let (pa, pb) = punch(&a, &mut b).await;
    let dial = pa.dial_addr().unwrap();
    a.node.connect(dial).await.unwrap();
    assert!(wait_peers(&b.node, 1, SETTLE).await);
    drain(&mut b.events);

    let err = a.node.connect(dial).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectionError::ProtocolError(ProtocolError::PeerAlreadyExists(_))
        ),
        "{err:?}"
    );
    // B judged the same (node id, alias IP) key a duplicate, too.
    let at_b = wait_event(&mut b.events, SETTLE, |e| {
        matches!(e.step, Step::Rejected { .. } | Step::Ready { .. })
    })
    .await
    .unwrap();
    assert!(
        matches!(&at_b.step, Step::Rejected { reason } if reason.contains("already exists")),
        "{at_b:?}"
    );
    assert_eq!(ip_of(at_b.addr), std::net::IpAddr::V4(pb.alias()));
    assert_eq!(a.node.peers().len(), 1);
    assert_eq!(b.node.peers().len(), 1);
    // The refused connection is torn down; the first one stays.
    let start = std::time::Instant::now();
    while (pa.counts().open, pb.counts().open) != (1, 1) && start.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((pa.counts().open, pa.counts().total), (1, 2));
    assert_eq!((pb.counts().open, pb.counts().total), (1, 2));
}

#[tokio::test]
async fn several_punched_peers_handshake_at_once() {
    const SPOKES: usize = 6;
    let server = rendezvous().await;
    let mut hub = Peer::mainnet(&server, true).await;
    let mut spokes = Vec::new();
    for _ in 0..SPOKES {
        spokes.push(Peer::mainnet(&server, false).await);
    }
    // All punches at once; the hub bridges each inbound session as it arrives.
    let hub_bridge = hub.bridge.clone();
    let accept = async {
        let mut held = Vec::new();
        while held.len() < SPOKES {
            let s = tokio::time::timeout(common::PUNCH, hub.incoming.next())
                .await
                .unwrap()
                .unwrap();
            held.push(hub_bridge.attach(s).await.unwrap());
        }
        held
    };
    let hub_id = hub.client.id();
    let dials = futures::future::join_all(spokes.iter().map(|s| async move {
        let session = s.client.connect(hub_id).await.unwrap();
        let bridged = s.bridge.attach(session).await.unwrap();
        (bridged, s)
    }));
    let (held, bridged) = tokio::join!(accept, dials);
    // Then every spoke's node dials the hub at the same moment.
    let results = futures::future::join_all(
        bridged
            .iter()
            .map(|(p, s)| s.node.connect(p.dial_addr().unwrap())),
    )
    .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(wait_peers(&hub.node, SPOKES, SETTLE).await);
    let seen: HashSet<_> = hub
        .node
        .peers()
        .iter()
        .map(|p| ip_of(p.net_address()))
        .collect();
    let expected: HashSet<_> = spokes
        .iter()
        .map(|s| std::net::IpAddr::V4(hub.bridge.alias_of(&s.client.id()).unwrap()))
        .collect();
    assert_eq!(
        seen, expected,
        "each punched peer arrives from its own alias"
    );
    assert!(drain(&mut hub.events)
        .iter()
        .all(|e| !matches!(e.step, Step::Rejected { .. })));
    drop(held);
}

#[tokio::test]
async fn a_ban_acts_on_one_punched_peer_only() {
    let server = rendezvous().await;
    let mut hub = Peer::mainnet(&server, true).await;
    let banned = Peer::mainnet(&server, false).await;
    let other = Peer::mainnet(&server, false).await;
    // The hub bans the alias its table gave the peer (before any Kaspa connection).
    let (pb, hb) = punch(&banned, &mut hub).await;
    let banned_alias = std::net::IpAddr::V4(hb.alias());
    hub.node.ban(banned_alias);
    let err = banned.node.connect(pb.dial_addr().unwrap()).await;
    assert!(err.is_err(), "a banned peer must not connect");
    let (po, _ho) = punch(&other, &mut hub).await;
    other.node.connect(po.dial_addr().unwrap()).await.unwrap();
    assert!(wait_peers(&hub.node, 1, SETTLE).await);
    assert_eq!(hub.node.peers()[0].identity(), other.node.node_id());
    let rejected: Vec<_> = drain(&mut hub.events)
        .into_iter()
        .filter(|e| matches!(&e.step, Step::Rejected { reason } if reason.contains("banned")))
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(ip_of(rejected[0].addr), banned_alias);
}
