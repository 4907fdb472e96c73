//! Unit tests of the registry's networks: `WrongNetwork` refusals and `Discover` samples.

use std::collections::HashSet;

use super::*;

fn id(b: u8) -> PeerId {
    PeerId::from_bytes([b; 32]).unwrap()
}

fn limits() -> Limits {
    Limits {
        max_peers: 100,
        discover_max: 4,
        ..Limits::default()
    }
}

fn reg(network: &str, accept: bool) -> Register {
    Register {
        version: PROTOCOL_VERSION,
        local_addrs: vec![],
        accept_inbound: accept,
        allow: vec![],
        network: network.into(),
        probe: false,
    }
}

/// Registers peer `i` on connection `i` from its own address.
fn add(r: &mut Registry, i: u8, register: &Register) {
    let obs = SocketAddr::from(([198, 51, 100, i], 1000));
    r.register(u64::from(i), id(i), obs, register, Duration::ZERO)
        .unwrap();
}

fn sample(actions: &[Action]) -> Vec<PeerId> {
    match actions {
        [Action::Send {
            msg: ServerMsg::Discovered { peers, .. },
            ..
        }] => peers.clone(),
        _ => panic!("expected Discovered, got {actions:?}"),
    }
}

fn error(actions: &[Action]) -> &ErrorReply {
    match actions {
        [Action::Send {
            msg: ServerMsg::Error(e),
            ..
        }] => e,
        _ => panic!("expected an error, got {actions:?}"),
    }
}

#[test]
fn punches_across_networks_are_refused_without_telling_the_target() {
    let mut r = Registry::new(limits(), 1);
    add(&mut r, 1, &reg("kaspa-mainnet", true));
    add(&mut r, 2, &reg("kaspa-testnet-10", true));
    add(&mut r, 3, &reg("", true));
    add(&mut r, 4, &reg("kaspa-mainnet", true));
    let now = Instant::now();
    for (from, to) in [(1, 2), (2, 1), (2, 4)] {
        let actions = r.connect(now, u64::from(from), id(from), 9, id(to), |_| true);
        let e = error(&actions);
        assert_eq!((e.code, e.request_id), (ErrorCode::WrongNetwork, 9));
    }
    assert_eq!(r.stats().wrong_network, 3);
    // The same network, or no network on either side: offers to both.
    for (from, to) in [(1, 4), (1, 3), (3, 2)] {
        let actions = r.connect(now, u64::from(from), id(from), 9, id(to), |_| true);
        assert_eq!(actions.len(), 2, "{from} -> {to}: {actions:?}");
    }
    assert_eq!(r.stats().offers, 3);
}

#[test]
fn discover_samples_accepting_peers_of_the_askers_network() {
    let mut r = Registry::new(limits(), 2);
    for i in 1..=10 {
        add(&mut r, i, &reg("kaspa-mainnet", true));
    }
    add(&mut r, 11, &reg("kaspa-mainnet", false));
    add(&mut r, 12, &reg("kaspa-testnet-10", true));
    add(&mut r, 13, &reg("", true));
    // Peer 10 serves only peer 2.
    add(
        &mut r,
        10,
        &Register {
            allow: vec![id(2)],
            ..reg("kaspa-mainnet", true)
        },
    );
    let mut now = Instant::now();
    let mut seen = HashSet::new();
    for round in 0..50 {
        // A minute apart, so the per-identity budget never runs out.
        now += Duration::from_secs(60);
        let s = sample(&r.discover(now, 1, id(1), round, 100));
        assert_eq!(s.len(), 4, "capped at discover_max");
        assert_eq!(s.iter().collect::<HashSet<_>>().len(), 4, "{s:?}");
        for p in &s {
            assert!(!matches!(p.as_bytes()[0], 1 | 10..=13), "{p:?}");
        }
        seen.insert(s);
    }
    assert!(
        seen.len() > 10,
        "samples are random: {} distinct",
        seen.len()
    );
    // Peer 2 is on peer 10's allow-list; it asks for 2 and gets 2.
    let mut found_10 = false;
    for round in 0..50 {
        now += Duration::from_secs(60);
        let s = sample(&r.discover(now, 2, id(2), round, 2));
        assert_eq!(s.len(), 2);
        found_10 |= s.contains(&id(10));
    }
    assert!(found_10);
    // The only accepting testnet peer asks: nobody else is there.
    assert!(sample(&r.discover(now, 12, id(12), 1, 16)).is_empty());
    // No network: BadRequest.
    let e = error(&r.discover(now, 13, id(13), 7, 16)).clone();
    assert_eq!((e.code, e.request_id), (ErrorCode::BadRequest, 7));
    assert_eq!(r.stats().discovers, 101);
}

#[test]
fn the_directory_follows_registrations() {
    let mut r = Registry::new(limits(), 3);
    add(&mut r, 1, &reg("kaspa-mainnet", true));
    add(&mut r, 2, &reg("kaspa-mainnet", true));
    assert_eq!(r.directory().len_of("kaspa-mainnet"), 2);
    // Replaced by a registration that does not accept: unlisted.
    add(&mut r, 1, &reg("kaspa-mainnet", false));
    assert!(!r.directory().contains("kaspa-mainnet", &id(1)));
    // Replaced by one on another network: moves.
    add(&mut r, 2, &reg("kaspa-simnet", true));
    assert_eq!(r.directory().len_of("kaspa-mainnet"), 0);
    assert!(r.directory().contains("kaspa-simnet", &id(2)));
    // A stale connection's unregister leaves the new registration listed.
    r.unregister(&id(2), 99);
    assert!(r.directory().contains("kaspa-simnet", &id(2)));
    r.unregister(&id(2), 2);
    r.unregister(&id(1), 1);
    assert!(r.directory().is_empty() && r.is_empty());
}

#[test]
fn discover_shares_the_punch_request_budget() {
    let mut r = Registry::new(
        Limits {
            punch_requests_per_minute: 3,
            ..limits()
        },
        4,
    );
    add(&mut r, 1, &reg("kaspa-mainnet", true));
    add(&mut r, 2, &reg("kaspa-mainnet", true));
    let now = Instant::now();
    assert_eq!(r.connect(now, 1, id(1), 1, id(2), |_| true).len(), 2);
    assert_eq!(sample(&r.discover(now, 1, id(1), 2, 8)), vec![id(2)]);
    assert_eq!(sample(&r.discover(now, 1, id(1), 3, 8)), vec![id(2)]);
    let e = error(&r.discover(now, 1, id(1), 4, 8)).clone();
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(e.retry_after.is_some_and(|w| w > Duration::ZERO), "{e:?}");
    let e = error(&r.connect(now, 1, id(1), 5, id(2), |_| true)).clone();
    assert_eq!(e.code, ErrorCode::RateLimited);
    // Another identity still discovers; a stale connection cannot.
    assert_eq!(sample(&r.discover(now, 2, id(2), 6, 8)), vec![id(1)]);
    assert_eq!(
        error(&r.discover(now, 7, id(2), 7, 8)).code,
        ErrorCode::BadRequest
    );
    assert_eq!(r.stats().rate_limited, 2);
}
