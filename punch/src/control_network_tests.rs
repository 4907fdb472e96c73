//! Unit tests of the control machine's networks, `Discover` and deny list, on made-up instants.

use super::test_support::{drain, peer, MS};
use super::*;
use punch_proto::message::{NatMapping, Registered};
use punch_proto::Role;

/// A client on `network`.
fn config(network: &str) -> ControlConfig {
    ControlConfig {
        network: network.into(),
        ..super::test_support::config()
    }
}

fn registered(config: ControlConfig, t0: Instant) -> Control<u32> {
    let mut c = Control::new(config, t0, 1);
    drain(&mut c);
    c.on_connected(t0, "192.168.1.2:4000".parse().unwrap());
    c.handle_message(
        t0,
        ServerMsg::Registered(Registered {
            observed: "203.0.113.7:4000".parse().unwrap(),
            ping_interval: Duration::from_secs(5),
            nat_check_port: None,
        }),
    );
    drain(&mut c);
    c
}

fn inbound_offer(from: PeerId, observed: &str) -> Offer {
    Offer {
        session_id: 77,
        request_id: 0,
        peer: from,
        peer_observed: observed.parse().unwrap(),
        peer_local: vec![],
        role: Role::Responder,
        dial_delay: 50 * MS,
        dial_at_us: None,
        relay: None,
        upgrade: None,
        peer_nat: NatMapping::Unknown,
    }
}

#[test]
fn the_registration_carries_the_network() {
    let local = "192.168.1.2:4000".parse().unwrap();
    let reg = config("kaspa-testnet-10").register_message(local);
    assert_eq!(reg.network, "kaspa-testnet-10");
    assert_eq!(config("").register_message(local).network, "");
}

#[test]
fn discover_sends_a_request_and_delivers_the_answer_without_denied_peers() {
    let t0 = Instant::now();
    let cfg = config("kaspa-mainnet");
    let deny = cfg.deny.clone();
    deny.deny_peer(peer(5), t0 + Duration::from_secs(60));
    let mut c = registered(cfg, t0);
    c.discover(t0, 8, 3);
    let actions = drain(&mut c);
    let [Action::Send(ClientMsg::Discover { request_id, max: 8 })] = &actions[..] else {
        panic!("{actions:?}");
    };
    let request_id = *request_id;
    // An answer to an unknown request is ignored.
    c.handle_message(
        t0,
        ServerMsg::Discovered {
            request_id: request_id + 100,
            peers: vec![peer(4)],
        },
    );
    assert!(drain(&mut c).is_empty());
    c.handle_message(
        t0 + MS,
        ServerMsg::Discovered {
            request_id,
            peers: vec![peer(4), peer(5), peer(6)],
        },
    );
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [Action::Discovered { token: 3, peers }] if *peers == vec![peer(4), peer(6)]),
        "{actions:?}"
    );
    assert_eq!((c.stats().discovered, c.pending_requests()), (1, 0));
}

#[test]
fn discover_fails_with_typed_errors() {
    let t0 = Instant::now();
    // No network: at once, nothing sent.
    let mut c = registered(config(""), t0);
    c.discover(t0, 8, 1);
    let actions = drain(&mut c);
    assert!(
        matches!(
            &actions[..],
            [Action::Reply {
                token: 1,
                error: Error::NoNetwork
            }]
        ),
        "{actions:?}"
    );
    // Rate limited, with the retry time.
    let mut c = registered(config("kaspa-mainnet"), t0);
    c.discover(t0, usize::MAX, 2);
    let actions = drain(&mut c);
    assert!(
        matches!(
            &actions[..],
            [Action::Send(ClientMsg::Discover {
                request_id: 1,
                max: u32::MAX
            })]
        ),
        "{actions:?}"
    );
    c.handle_message(
        t0,
        ServerMsg::Error(ErrorReply {
            request_id: 1,
            code: ErrorCode::RateLimited,
            detail: "slow down".into(),
            retry_after: Some(Duration::from_millis(1500)),
        }),
    );
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [Action::Reply { token: 2, error: Error::RateLimited { retry_after: Some(d) } }] if *d == Duration::from_millis(1500)),
        "{actions:?}"
    );
    // No answer within the request timeout.
    c.discover(t0, 4, 3);
    drain(&mut c);
    c.handle_timeout(t0 + Duration::from_secs(5));
    let actions = drain(&mut c);
    assert!(
        matches!(
            &actions[..],
            [Action::Reply {
                token: 3,
                error: Error::RequestTimeout(_)
            }]
        ),
        "{actions:?}"
    );
}

#[test]
fn wrong_network_refusals_name_the_peer_and_our_network() {
    let t0 = Instant::now();
    let mut c = registered(config("kaspa-mainnet"), t0);
    c.connect(t0, peer(2), 7);
    drain(&mut c);
    c.handle_message(
        t0,
        ServerMsg::Error(ErrorReply {
            request_id: 1,
            code: ErrorCode::WrongNetwork,
            detail: "other network".into(),
            retry_after: None,
        }),
    );
    let actions = drain(&mut c);
    let [Action::Reply {
        token: 7,
        error: Error::WrongNetwork { peer: p, network },
    }] = &actions[..]
    else {
        panic!("{actions:?}");
    };
    assert_eq!((*p, network.as_str()), (peer(2), "kaspa-mainnet"));
}

#[test]
fn denied_peers_are_neither_requested_nor_dialed() {
    let t0 = Instant::now();
    let cfg = config("kaspa-mainnet");
    let deny = cfg.deny.clone();
    let mut c = registered(cfg, t0);
    let until = t0 + Duration::from_secs(60);
    deny.deny_peer(peer(9), until);
    deny.deny_ip("198.51.100.66".parse().unwrap(), until);
    // Outbound: the request fails at once, no message to the rendezvous.
    c.connect(t0, peer(9), 1);
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [Action::Reply { token: 1, error: Error::Denied { peer: p } }] if *p == peer(9)),
        "{actions:?}"
    );
    // Inbound, by identity and by observed IP (any port): refused and reported, no punch.
    for (from, at) in [
        (peer(9), "203.0.113.50:1000"),
        (peer(3), "198.51.100.66:2222"),
    ] {
        c.handle_message(t0, ServerMsg::Offer(inbound_offer(from, at)));
        let actions = drain(&mut c);
        assert!(
            matches!(&actions[..], [Action::Emit(Event::InboundDenied { peer: p, session_id: 77, observed })] if *p == from && observed.to_string() == at),
            "{actions:?}"
        );
    }
    assert_eq!((c.stats().inbound_denied, c.stats().offers), (2, 0));
    // Another peer from another address punches as usual; after the ban, so does peer 9.
    c.handle_message(
        t0,
        ServerMsg::Offer(inbound_offer(peer(3), "203.0.113.50:1000")),
    );
    assert!(drain(&mut c)
        .iter()
        .any(|a| matches!(a, Action::StartPunch { reply: None, .. })));
    c.handle_message(
        until,
        ServerMsg::Offer(inbound_offer(peer(9), "203.0.113.50:1000")),
    );
    assert!(drain(&mut c)
        .iter()
        .any(|a| matches!(a, Action::StartPunch { reply: None, .. })));
    assert_eq!(c.stats().denied, 1);
}
