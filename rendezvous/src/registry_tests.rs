//! Unit tests of the registry, on made-up instants and addresses.

use super::*;

const MINUTE: Duration = Duration::from_secs(60);

fn limits() -> Limits {
    Limits {
        max_peers: 3,
        max_registrations_per_source: 100,
        max_registrations_per_network: 100,
        punch_requests_per_minute: 2,
        punch_requests_per_source_per_minute: 100,
        punch_requests_per_network_per_minute: 100,
        offers_per_target_per_source_per_minute: 3,
        offers_per_target_per_network_per_minute: 100,
        max_rate_keys: 100,
        dial_margin: Duration::from_millis(50),
        discover_max: 16,
    }
}

fn id(b: u8) -> PeerId {
    PeerId::from_bytes([b; 32]).unwrap()
}

fn reg(accept: bool) -> Register {
    Register {
        version: PROTOCOL_VERSION,
        local_addrs: vec![
            "192.168.1.10:4000".parse().unwrap(),
            "198.51.100.9:22".parse().unwrap(),
        ],
        accept_inbound: accept,
        allow: vec![],
        network: String::new(),
        probe: false,
    }
}

/// Peers 1, 2 and 3, on connections 1, 2 and 3, all accepting and seen from one address.
fn three_peers() -> Registry {
    let mut r = Registry::new(limits(), 10);
    let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    for i in 1..=3 {
        r.register(u64::from(i), id(i), obs, &reg(true), Duration::ZERO)
            .unwrap();
    }
    r
}

fn error_code(actions: &[Action]) -> Option<ErrorCode> {
    match actions {
        [Action::Send {
            msg: ServerMsg::Error(e),
            ..
        }] => Some(e.code),
        _ => None,
    }
}

#[test]
fn offers_are_consistent_and_synchronized() {
    let mut r = Registry::new(limits(), 10);
    let a_obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let b_obs: SocketAddr = "203.0.113.2:2000".parse().unwrap();
    r.register(1, id(1), a_obs, &reg(true), Duration::from_millis(20))
        .unwrap();
    r.register(2, id(2), b_obs, &reg(true), Duration::from_millis(200))
        .unwrap();
    let now = Instant::now();
    let epoch = now - Duration::from_secs(1);
    let mut r = r.with_clock(epoch);
    let actions = r.connect(now, 1, id(1), 42, id(2), |_| true);
    let [Action::Send {
        conn: 1,
        msg: ServerMsg::Offer(oa),
    }, Action::Send {
        conn: 2,
        msg: ServerMsg::Offer(ob),
    }] = &actions[..]
    else {
        panic!("expected two offers, got {actions:?}");
    };
    assert_eq!(oa.session_id, ob.session_id);
    assert_eq!((oa.request_id, ob.request_id), (42, 0));
    assert_eq!((oa.peer, ob.peer), (id(2), id(1)));
    assert_eq!((oa.peer_observed, ob.peer_observed), (b_obs, a_obs));
    assert_eq!((oa.role, ob.role), (Role::Initiator, Role::Responder));
    // Seen from different public IPs: no local address is passed on either way.
    assert!(oa.peer_local.is_empty() && ob.peer_local.is_empty());
    // Both dial at the same server time: receive time (owd) + delay is equal.
    assert_eq!(
        Duration::from_millis(10) + oa.dial_delay,
        Duration::from_millis(100) + ob.dial_delay
    );
    // That moment: B's one-way delay (100 ms) + its RTT variation (one sample: half the RTT,
    // 100 ms) + the margin (50 ms), 250 ms after the offers left.
    assert_eq!(ob.dial_delay, Duration::from_millis(150));
    // The same moment on the server's clock, in both offers.
    let at = clock_us(epoch, now + Duration::from_millis(250));
    assert_eq!((oa.dial_at_us, ob.dial_at_us), (Some(at), Some(at)));
    assert_eq!(at, 1_250_001);
}

#[test]
fn the_room_for_a_late_offer_follows_the_measured_rtt_variation() {
    let mut r = Registry::new(limits(), 10);
    let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let rtt = Duration::from_millis(40);
    r.register(1, id(1), obs, &reg(true), rtt).unwrap();
    r.register(2, id(2), obs, &reg(true), rtt).unwrap();
    // One sample: RTTVAR is half of it (RFC 6298).
    assert_eq!(r.rttvar(&id(1)), Some(Duration::from_millis(20)));
    // Steady samples shrink it by a quarter each...
    for _ in 0..10 {
        r.rtt_sample(&id(1), 1, rtt);
    }
    let steady = r.rttvar(&id(1)).unwrap();
    assert!(steady < Duration::from_millis(2), "{steady:?}");
    // The moment is the later reach (one-way delay + variation) plus the margin: B's, 20 + 20
    // ms, so A (20 ms away) waits 20 ms + the margin after its offer arrives.
    let actions = r.connect(Instant::now(), 1, id(1), 1, id(2), |_| true);
    let oa = offers(&actions).0;
    assert_eq!(
        oa.dial_delay,
        Duration::from_millis(20) + limits().dial_margin
    );
    // Once B's round trips are steady too, the wait is little more than the margin.
    for _ in 0..10 {
        r.rtt_sample(&id(2), 2, rtt);
    }
    let actions = r.connect(Instant::now(), 1, id(1), 2, id(2), |_| true);
    let oa = offers(&actions).0;
    assert!(
        oa.dial_delay < Duration::from_millis(2) + limits().dial_margin,
        "{oa:?}"
    );
    // Jitter (samples of 10 and 70 ms around a 40 ms mean) widens it again.
    for i in 0..8 {
        let sample = Duration::from_millis(if i % 2 == 0 { 10 } else { 70 });
        r.rtt_sample(&id(2), 2, sample);
    }
    let jittery = r.rttvar(&id(2)).unwrap();
    assert!(jittery > Duration::from_millis(20), "{jittery:?}");
    // A sample from another connection of the same identity is not taken.
    r.rtt_sample(&id(2), 7, Duration::from_secs(3));
    assert_eq!(r.rttvar(&id(2)), Some(jittery));
}

fn offers(actions: &[Action]) -> (&Offer, &Offer) {
    match actions {
        [Action::Send {
            msg: ServerMsg::Offer(oa),
            ..
        }, Action::Send {
            msg: ServerMsg::Offer(ob),
            ..
        }] => (oa, ob),
        _ => panic!("expected two offers, got {actions:?}"),
    }
}

#[test]
fn a_claimed_rtt_cannot_delay_the_other_dial_beyond_the_cap() {
    let mut r = Registry::new(limits(), 10);
    let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    // The requester answers pings 4.6 s late; the target is 20 ms away.
    r.register(1, id(1), obs, &reg(true), Duration::from_millis(4600))
        .unwrap();
    r.register(2, id(2), obs, &reg(true), Duration::from_millis(20))
        .unwrap();
    let actions = r.connect(Instant::now(), 1, id(1), 1, id(2), |_| true);
    let (oa, ob) = offers(&actions);
    // The claim is capped twice: its one-way delay at MAX_OWD, its variation (half of 4.6 s
    // from the one sample) at MAX_LATENESS.
    let margin = limits().dial_margin;
    assert_eq!(
        ob.dial_delay,
        MAX_OWD + MAX_LATENESS + margin - Duration::from_millis(10)
    );
    assert_eq!(oa.dial_delay, MAX_LATENESS + margin);
    assert!(ob.dial_delay <= MAX_OWD + MAX_LATENESS + margin);
    assert_eq!(owd(Duration::from_secs(60)), MAX_OWD);
    assert_eq!(owd(Duration::from_millis(300)), Duration::from_millis(150));
}

#[test]
fn session_ids_are_random_non_zero_and_distinct() {
    let mut r = three_peers();
    let now = Instant::now();
    let mut ids = Vec::new();
    for (t, from) in [(0, 1), (0, 3), (1, 1), (1, 3)] {
        let at = now + MINUTE * t;
        let actions = r.connect(at, u64::from(from), id(from), 1, id(2), |_| true);
        ids.push(offers(&actions).0.session_id);
    }
    assert!(ids.iter().all(|&i| i != 0));
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "{ids:?}");
    // Not a sequence: consecutive ids do not differ by a constant step.
    let steps: Vec<u64> = ids.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(steps.windows(2).any(|s| s[0] != s[1]), "{ids:?}");
    // Deterministic for a seed, different across seeds.
    let first = |seed| next_session_id(&mut StdRng::seed_from_u64(seed));
    assert_eq!(first(10), ids[0]);
    assert_ne!(first(10), first(11));
}

#[test]
fn typed_errors() {
    let mut r = Registry::new(limits(), 10);
    let now = Instant::now();
    let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    r.register(1, id(1), obs, &reg(true), Duration::ZERO)
        .unwrap();
    r.register(2, id(2), obs, &reg(false), Duration::ZERO)
        .unwrap();
    assert_eq!(
        error_code(&r.connect(now, 1, id(1), 1, id(9), |_| true)),
        Some(ErrorCode::PeerOffline)
    );
    assert_eq!(
        error_code(&r.connect(now, 1, id(1), 2, id(2), |_| true)),
        Some(ErrorCode::PeerRefuses)
    );
    assert_eq!(
        error_code(&r.connect(now, 1, id(1), 3, id(1), |_| true)),
        Some(ErrorCode::RateLimited)
    );
    assert_eq!(
        error_code(&r.connect(now + MINUTE, 2, id(2), 1, id(2), |_| true)),
        Some(ErrorCode::SelfConnect)
    );
    assert_eq!(r.stats().refused, 4);
}

#[test]
fn offers_per_target_are_limited() {
    let mut r = three_peers();
    let now = Instant::now();
    // Peers 1 and 3 each ask twice for peer 2: the fourth offer exceeds 3 per minute.
    assert_eq!(r.connect(now, 1, id(1), 1, id(2), |_| true).len(), 2);
    assert_eq!(r.connect(now, 1, id(1), 2, id(2), |_| true).len(), 2);
    assert_eq!(r.connect(now, 3, id(3), 3, id(2), |_| true).len(), 2);
    assert_eq!(
        error_code(&r.connect(now, 3, id(3), 4, id(2), |_| true)),
        Some(ErrorCode::RateLimited)
    );
}

#[test]
fn both_offers_or_neither() {
    let mut r = three_peers();
    let now = Instant::now();
    // Peer 2's queue is full: peer 1 gets one error, and peer 2 no offer.
    let actions = r.connect(now, 1, id(1), 7, id(2), |c| c != 2);
    let [Action::Send {
        conn: 1,
        msg: ServerMsg::Error(e),
    }] = &actions[..]
    else {
        panic!("expected one error to the requester, got {actions:?}");
    };
    assert_eq!((e.request_id, e.code), (7, ErrorCode::PeerOffline));
    assert_eq!(r.stats().offers, 0);
    // The refusal did not use peer 2's offer budget (3 a minute): three more offers fit.
    assert_eq!(r.connect(now, 3, id(3), 1, id(2), |_| true).len(), 2);
    assert_eq!(r.connect(now, 3, id(3), 2, id(2), |_| true).len(), 2);
    assert_eq!(r.connect(now, 1, id(1), 8, id(2), |_| true).len(), 2);
}

#[test]
fn replacement_and_capacity() {
    let mut r = three_peers();
    let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    assert_eq!(
        r.register(4, id(4), obs, &reg(true), Duration::ZERO),
        Err(ErrorCode::ServerFull)
    );
    // Same identity on a new connection: replaces cleanly even when full.
    let actions = r
        .register(5, id(1), obs, &reg(true), Duration::ZERO)
        .unwrap();
    assert!(matches!(actions[..], [Action::Close { conn: 1, .. }]));
    // The old connection going away does not remove the new registration.
    r.unregister(&id(1), 1);
    assert!(r.is_registered(&id(1), 5));
    r.unregister(&id(1), 5);
    assert!(!r.is_registered(&id(1), 5));
    assert_eq!(r.len(), 2);
    let mut bad = reg(true);
    bad.version = 99;
    assert_eq!(
        r.register(6, id(6), obs, &bad, Duration::ZERO),
        Err(ErrorCode::UnsupportedVersion)
    );
}

#[test]
fn replaced_connection_cannot_request() {
    let mut r = Registry::new(limits(), 10);
    let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    r.register(1, id(1), obs, &reg(true), Duration::ZERO)
        .unwrap();
    r.register(2, id(2), obs, &reg(true), Duration::ZERO)
        .unwrap();
    r.register(3, id(1), obs, &reg(true), Duration::ZERO)
        .unwrap();
    let actions = r.connect(Instant::now(), 1, id(1), 42, id(2), |_| true);
    assert_eq!(error_code(&actions), Some(ErrorCode::BadRequest));
    assert!(matches!(actions[..], [Action::Send { conn: 1, .. }]));
    // The new connection still has its full rate budget.
    assert_eq!(
        r.connect(Instant::now(), 3, id(1), 43, id(2), |_| true)
            .len(),
        2
    );
    assert_eq!(
        r.connect(Instant::now(), 3, id(1), 44, id(2), |_| true)
            .len(),
        2
    );
}

#[test]
fn rtt_smoothing_and_prune() {
    let mut r = Registry::new(limits(), 10);
    let obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    r.register(1, id(1), obs, &reg(true), Duration::from_millis(80))
        .unwrap();
    r.rtt_sample(&id(1), 1, Duration::from_millis(160));
    assert_eq!(r.srtt(&id(1)), Some(Duration::from_millis(90)));
    r.rtt_sample(&id(1), 99, Duration::from_secs(10));
    assert_eq!(r.srtt(&id(1)), Some(Duration::from_millis(90)));
    let now = Instant::now();
    r.connect(now, 1, id(1), 1, id(7), |_| true);
    r.unregister(&id(1), 1);
    r.prune(now);
    assert_eq!(r.rate_keys(), [1, 1, 1, 0, 0], "recently used: kept");
    r.prune(now + MINUTE * 2);
    assert_eq!(r.rate_keys(), [0; 5]);
}

#[test]
fn local_addresses_only_behind_one_nat_private_and_capped() {
    let mut r = Registry::new(limits(), 10);
    let nat: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let elsewhere: SocketAddr = "198.51.100.4:1000".parse().unwrap();
    // An attacker claims ten private hosts, and a public one.
    let mut claims = reg(true);
    claims.local_addrs = (1..=10)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 22)))
        .chain(["198.51.100.9:22".parse().unwrap()])
        .collect();
    r.register(1, id(1), nat, &claims, Duration::ZERO).unwrap();
    r.register(2, id(2), nat, &reg(true), Duration::ZERO)
        .unwrap();
    r.register(3, id(3), elsewhere, &reg(true), Duration::ZERO)
        .unwrap();
    let now = Instant::now();
    // Same public IP (one NAT, another port): the first four private claims, both ways.
    let actions = r.connect(now, 1, id(1), 1, id(2), |_| true);
    let (oa, ob) = offers(&actions);
    let first_four: Vec<SocketAddr> = claims.local_addrs[..MAX_LOCAL_CANDIDATES].to_vec();
    assert_eq!(ob.peer_local, first_four);
    assert_eq!(oa.peer_local, vec!["192.168.1.10:4000".parse().unwrap()]);
    // Another public IP: nothing local, in either direction.
    let actions = r.connect(now, 1, id(1), 2, id(3), |_| true);
    let (oa, ob) = offers(&actions);
    assert!(oa.peer_local.is_empty());
    assert!(ob.peer_local.is_empty());
}

fn at(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 1000))
}

fn allowing(ids: &[PeerId]) -> Register {
    Register {
        allow: ids.to_vec(),
        ..reg(true)
    }
}

#[test]
fn strangers_to_the_allow_list_are_refused_before_any_budget() {
    let mut r = Registry::new(
        Limits {
            max_peers: 100,
            punch_requests_per_minute: 100,
            ..limits()
        },
        10,
    );
    let now = Instant::now();
    // Target 2 serves only peer 1; peer 3 is a stranger from the same address.
    r.register(
        2,
        id(2),
        at([203, 0, 113, 2]),
        &allowing(&[id(1)]),
        Duration::ZERO,
    )
    .unwrap();
    r.register(1, id(1), at([203, 0, 113, 1]), &reg(true), Duration::ZERO)
        .unwrap();
    r.register(3, id(3), at([203, 0, 113, 1]), &reg(true), Duration::ZERO)
        .unwrap();
    for i in 0..50 {
        let actions = r.connect(now, 3, id(3), i, id(2), |_| true);
        assert_eq!(error_code(&actions), Some(ErrorCode::NotAllowed));
        // Only the requester hears of it.
        assert!(matches!(actions[..], [Action::Send { conn: 3, .. }]));
    }
    assert_eq!(r.stats().not_allowed, 50);
    assert_eq!(r.stats().offers, 0);
    // The offer budget of (2, 203.0.113.1) is untouched: peer 1 gets its 3.
    for i in 0..3 {
        assert_eq!(r.connect(now, 1, id(1), i, id(2), |_| true).len(), 2);
    }
    assert_eq!(
        error_code(&r.connect(now, 1, id(1), 9, id(2), |_| true)),
        Some(ErrorCode::RateLimited)
    );
    // An empty list is "anyone".
    assert_eq!(r.connect(now, 2, id(2), 1, id(3), |_| true).len(), 2);
}

#[test]
fn offer_budgets_are_per_target_and_requesting_source_and_network() {
    let mut r = Registry::new(
        Limits {
            max_peers: 100,
            punch_requests_per_minute: 100,
            offers_per_target_per_source_per_minute: 2,
            offers_per_target_per_network_per_minute: 3,
            ..limits()
        },
        10,
    );
    let now = Instant::now();
    r.register(1, id(1), at([198, 51, 100, 9]), &reg(true), Duration::ZERO)
        .unwrap();
    // Sybils 10..=13 on two addresses of 203.0.113.0/24; honest peer 20 in another /24.
    for (i, last) in [(10, 1), (11, 1), (12, 2), (13, 2)] {
        r.register(
            u64::from(i),
            id(i),
            at([203, 0, 113, last]),
            &reg(true),
            Duration::ZERO,
        )
        .unwrap();
    }
    r.register(20, id(20), at([203, 0, 114, 1]), &reg(true), Duration::ZERO)
        .unwrap();
    let ask = |r: &mut Registry, from: u8| {
        let actions = r.connect(now, u64::from(from), id(from), 1, id(1), |_| true);
        error_code(&actions)
    };
    // Two identities of one address share its budget of 2.
    assert_eq!(ask(&mut r, 10), None);
    assert_eq!(ask(&mut r, 11), None);
    assert_eq!(ask(&mut r, 10), Some(ErrorCode::RateLimited));
    assert_eq!(ask(&mut r, 11), Some(ErrorCode::RateLimited));
    // The other address of the /24 has its own 2, but the /24 only 3 in all.
    assert_eq!(ask(&mut r, 12), None);
    assert_eq!(ask(&mut r, 13), Some(ErrorCode::RateLimited));
    // Another network is untouched by all of it.
    assert_eq!(ask(&mut r, 20), None);
    assert_eq!(ask(&mut r, 20), None);
    // And the target itself can still reach the Sybils (budgets are per target).
    assert_eq!(r.connect(now, 1, id(1), 2, id(10), |_| true).len(), 2);
    assert_eq!(r.stats().rate_limited, 3);
}

#[test]
fn requests_are_limited_per_source_and_network_whatever_the_identities() {
    let mut r = Registry::new(
        Limits {
            max_peers: 100,
            punch_requests_per_minute: 100,
            punch_requests_per_source_per_minute: 3,
            punch_requests_per_network_per_minute: 5,
            ..limits()
        },
        10,
    );
    let now = Instant::now();
    for (i, ip) in [
        (1, [203, 0, 113, 1]),
        (2, [203, 0, 113, 1]),
        (3, [203, 0, 113, 2]),
    ] {
        r.register(i, id(i as u8), at(ip), &reg(true), Duration::ZERO)
            .unwrap();
    }
    r.register(9, id(9), at([198, 51, 100, 1]), &reg(true), Duration::ZERO)
        .unwrap();
    let ask = |r: &mut Registry, from: u8| {
        let actions = r.connect(now, u64::from(from), id(from), 1, id(42), |_| true);
        error_code(&actions)
    };
    // Requests for an offline peer still count: they are what a scan makes.
    for from in [1, 2, 1] {
        assert_eq!(ask(&mut r, from), Some(ErrorCode::PeerOffline));
    }
    assert_eq!(
        ask(&mut r, 2),
        Some(ErrorCode::RateLimited),
        "the address's 3"
    );
    for _ in 0..2 {
        assert_eq!(ask(&mut r, 3), Some(ErrorCode::PeerOffline));
    }
    assert_eq!(ask(&mut r, 3), Some(ErrorCode::RateLimited), "the /24's 5");
    assert_eq!(
        ask(&mut r, 9),
        Some(ErrorCode::PeerOffline),
        "another network"
    );
    // A refusal by one table took no token from the others: peer 9's identity table
    // holds only its own request.
    assert_eq!(r.rate_keys()[..3], [4, 3, 2]);
}

#[test]
fn registrations_are_capped_per_source_and_network() {
    let mut r = Registry::new(
        Limits {
            max_peers: 100,
            max_registrations_per_source: 2,
            max_registrations_per_network: 3,
            ..limits()
        },
        10,
    );
    let reg_at = |r: &mut Registry, i: u8, ip: [u8; 4]| {
        r.register(u64::from(i), id(i), at(ip), &reg(true), Duration::ZERO)
            .map(|_| ())
    };
    assert_eq!(reg_at(&mut r, 1, [203, 0, 113, 1]), Ok(()));
    assert_eq!(reg_at(&mut r, 2, [203, 0, 113, 1]), Ok(()));
    assert_eq!(
        reg_at(&mut r, 3, [203, 0, 113, 1]),
        Err(ErrorCode::NetworkFull)
    );
    assert_eq!(reg_at(&mut r, 3, [203, 0, 113, 2]), Ok(()));
    assert_eq!(
        reg_at(&mut r, 4, [203, 0, 113, 3]),
        Err(ErrorCode::NetworkFull)
    );
    assert_eq!(reg_at(&mut r, 4, [203, 0, 114, 3]), Ok(()));
    assert_eq!(r.stats().network_full, 2);
    // A replacement does not count its own old registration, even from a full network.
    assert_eq!(reg_at(&mut r, 1, [203, 0, 113, 1]), Ok(()));
    assert_eq!(reg_at(&mut r, 2, [203, 0, 113, 2]), Ok(()));
    assert_eq!(r.registered_from("203.0.113.2".parse().unwrap()), (2, 3));
    assert_eq!(r.registered_from("203.0.113.1".parse().unwrap()), (1, 3));
    // Leaving frees the slot.
    r.unregister(&id(3), 3);
    assert_eq!(reg_at(&mut r, 5, [203, 0, 113, 7]), Ok(()));
    assert_eq!(r.len(), 4);
    for i in [1, 2, 4, 5] {
        r.unregister(&id(i), u64::from(i));
    }
    assert!(r.is_empty());
    assert!(r.per_source.is_empty() && r.per_network.is_empty());
}

#[test]
fn local_address_filter() {
    let public: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let ok = |a: &str, o: &SocketAddr| is_dialable_local(&a.parse().unwrap(), o);
    assert!(ok("10.1.2.3:5", &public));
    assert!(ok("100.64.0.1:5", &public));
    assert!(ok("[fd00::1]:5", &public));
    assert!(!ok("127.0.0.1:5", &public));
    assert!(ok("127.0.0.1:5", &lo));
    assert!(!ok("8.8.8.8:53", &public));
    assert!(!ok("10.1.2.3:0", &public));
}

#[test]
fn nat_checks_classify_the_registration_and_travel_in_offers() {
    let mut r = Registry::new(limits(), 10);
    let a_obs: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let b_obs: SocketAddr = "203.0.113.2:2000".parse().unwrap();
    r.register(1, id(1), a_obs, &reg(true), Duration::ZERO)
        .unwrap();
    r.register(2, id(2), b_obs, &reg(true), Duration::ZERO)
        .unwrap();
    let (oa, ob) = {
        let actions = r.connect(Instant::now(), 1, id(1), 1, id(2), |_| true);
        let (oa, ob) = offers(&actions);
        (oa.peer_nat, ob.peer_nat)
    };
    assert_eq!((oa, ob), (NatMapping::Unknown, NatMapping::Unknown));
    // A's probe comes from the same address, B's from another port of its NAT.
    assert_eq!(
        r.nat_checked(&id(1), a_obs),
        Some(NatMapping::EndpointIndependent)
    );
    let b_probe: SocketAddr = "203.0.113.2:2999".parse().unwrap();
    assert_eq!(
        r.nat_checked(&id(2), b_probe),
        Some(NatMapping::EndpointDependent)
    );
    // A stranger's probe changes nothing and is not counted.
    assert_eq!(r.nat_checked(&id(9), a_obs), None);
    assert_eq!(
        (r.stats().nat_checks, r.stats().nat_endpoint_dependent),
        (2, 1)
    );
    let actions = r.connect(Instant::now(), 1, id(1), 2, id(2), |_| true);
    let (oa, ob) = offers(&actions);
    // Each side hears about the other.
    assert_eq!(oa.peer_nat, NatMapping::EndpointDependent);
    assert_eq!(ob.peer_nat, NatMapping::EndpointIndependent);
    // A new registration (a reconnect, maybe through another network) starts unknown again.
    r.register(3, id(2), b_obs, &reg(true), Duration::ZERO)
        .unwrap();
    assert_eq!(r.nat_of(&id(2)), Some(NatMapping::Unknown));
}
