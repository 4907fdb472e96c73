//! Unit tests of the control machine, on made-up instants (no clock, no runtime).

use std::io;

use super::test_support::{config, drain, local, peer, MS};
use super::*;
use punch_proto::channel::ChannelError;
use punch_proto::message::{NatMapping, Registered};
use punch_proto::Role;

const PING: Duration = Duration::from_secs(5);

fn observed() -> SocketAddr {
    "203.0.113.7:4000".parse().unwrap()
}

fn registered_msg() -> ServerMsg {
    ServerMsg::Registered(Registered {
        observed: observed(),
        ping_interval: PING,
        nat_check_port: None,
    })
}

/// A machine registered at `t0`, its actions drained.
fn registered(config: ControlConfig, t0: Instant) -> Control<u32> {
    let mut c = Control::new(config, t0, 1);
    drain(&mut c);
    c.on_connected(t0, local());
    c.handle_message(t0, registered_msg());
    drain(&mut c);
    assert_eq!(c.registered(), Some(observed()));
    c
}

fn offer(request_id: u64, peer: PeerId, role: Role) -> Offer {
    Offer {
        session_id: 77,
        request_id,
        peer,
        peer_observed: "203.0.113.9:5000".parse().unwrap(),
        peer_local: vec![],
        role,
        dial_delay: 50 * MS,
        dial_at_us: None,
        relay: None,
        upgrade: None,
        peer_nat: NatMapping::Unknown,
    }
}

fn disconnected_reason(actions: &[Action<u32>]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::SetStatus(Status::Disconnected { reason }) => Some(reason.to_string()),
        _ => None,
    })
}

/// What the driver reports when the TCP connect to the rendezvous is refused.
fn refused() -> RendezvousError {
    RendezvousError::Connect(Arc::new(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "connection refused",
    )))
}

/// What the driver reports when the peer closes the control connection.
fn lost() -> RendezvousError {
    RendezvousError::Lost(Arc::new(ChannelError::Closed))
}

#[test]
fn connects_at_once_and_registers() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    let actions = drain(&mut c);
    assert!(matches!(
        actions[..],
        [Action::SetStatus(Status::Connecting), Action::Connect]
    ));
    assert_eq!(c.registered(), None);
    c.on_connected(t0 + 10 * MS, local());
    assert!(drain(&mut c).is_empty());
    c.handle_message(t0 + 20 * MS, registered_msg());
    let actions = drain(&mut c);
    let Some(
        [Action::Emit(Event::Registered {
            observed: o,
            local: l,
        }), Action::SetStatus(Status::Registered { rtt: None, .. }), Action::Emit(Event::NatChecked(_)), Action::SetNat(nat), Action::Send(ClientMsg::Ping { nonce })],
    ) = actions.get(..)
    else {
        panic!("{actions:?}")
    };
    assert_eq!((*o, *l), (observed(), local()));
    // A rendezvous without a NAT check port: the check's result (unknown) comes at once.
    assert_eq!(nat.mapping, NatMapping::Unknown);
    // The pong to our first ping gives the round trip.
    let nonce = *nonce;
    c.handle_message(
        t0 + 20 * MS,
        ServerMsg::Pong {
            nonce: nonce ^ 1,
            server_time_us: None,
        },
    );
    assert!(
        drain(&mut c).is_empty(),
        "a pong of another nonce is no sample"
    );
    c.handle_message(
        t0 + 50 * MS,
        ServerMsg::Pong {
            nonce,
            server_time_us: None,
        },
    );
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [Action::SetStatus(Status::Registered { rtt: Some(rtt), .. })] if *rtt == 30 * MS),
        "{actions:?}"
    );
    // Each ping of the server's is answered, and (with none of ours outstanding) gets one
    // of ours beside it.
    c.handle_message(t0 + 60 * MS, ServerMsg::Ping { nonce: 9 });
    let actions = drain(&mut c);
    assert!(
        matches!(
            &actions[..],
            [
                Action::Send(ClientMsg::Pong { nonce: 9 }),
                Action::Send(ClientMsg::Ping { .. })
            ]
        ),
        "{actions:?}"
    );
    c.handle_message(t0 + 70 * MS, ServerMsg::Ping { nonce: 10 });
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [Action::Send(ClientMsg::Pong { nonce: 10 })]),
        "ours is still outstanding: {actions:?}"
    );
    let reg = c.config().register_message(local());
    assert_eq!(reg.local_addrs, vec![local()]);
    assert!(reg.accept_inbound);
    assert_eq!(reg.version, PROTOCOL_VERSION);
    assert_eq!(c.stats().registrations, 1);
}

/// Delays of `n` failed connects in a row, each retried exactly when due.
fn failure_delays(seed: u64, n: usize) -> Vec<Duration> {
    let mut t = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t, seed);
    drain(&mut c);
    let mut delays = Vec::new();
    for _ in 0..n {
        c.on_connect_failed(t, refused());
        let actions = drain(&mut c);
        assert_eq!(
            disconnected_reason(&actions),
            Some("connect: connection refused".to_string())
        );
        let retry_at = c.poll_timeout().unwrap();
        delays.push(retry_at - t);
        c.handle_timeout(retry_at - Duration::from_nanos(1));
        assert!(drain(&mut c).is_empty(), "no reconnect before it is due");
        c.handle_timeout(retry_at);
        assert!(matches!(
            drain(&mut c)[..],
            [Action::SetStatus(Status::Connecting), Action::Connect]
        ));
        t = retry_at;
    }
    delays
}

#[test]
fn failed_connects_back_off_doubling_with_bounded_jitter_up_to_the_cap() {
    let delays = failure_delays(7, 12);
    let mut nominal = config().reconnect_min;
    for (i, d) in delays.iter().enumerate() {
        assert!(
            *d >= nominal / 2 && *d <= nominal,
            "attempt {i}: {d:?} outside [{:?}, {nominal:?}]",
            nominal / 2
        );
        nominal = (nominal * 2).min(config().reconnect_max);
    }
    assert_eq!(nominal, config().reconnect_max, "the cap was reached");
    assert!(delays.iter().all(|d| *d <= config().reconnect_max));
}

#[test]
fn jitter_is_seeded() {
    assert_eq!(failure_delays(3, 6), failure_delays(3, 6));
    assert_ne!(failure_delays(3, 6), failure_delays(4, 6));
}

#[test]
fn registration_resets_the_backoff() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    let mut t = t0;
    for _ in 0..6 {
        c.on_connect_failed(t, refused());
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
    }
    c.on_connected(t, local());
    c.handle_message(t, registered_msg());
    drain(&mut c);
    c.on_lost(t, lost());
    let actions = drain(&mut c);
    assert_eq!(
        disconnected_reason(&actions),
        Some("connection lost: connection closed by the other side".to_string())
    );
    let delay = c.poll_timeout().unwrap() - t;
    assert!(delay <= config().reconnect_min, "{delay:?}");
    assert_eq!(c.stats().losses, 1);
}

#[test]
fn handshake_and_registration_have_deadlines() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + config().handshake_timeout));
    c.handle_timeout(t0 + config().handshake_timeout);
    let actions = drain(&mut c);
    assert!(matches!(actions[0], Action::Close { .. }));
    assert!(disconnected_reason(&actions)
        .unwrap()
        .contains("did not finish within"));

    let t1 = c.poll_timeout().unwrap();
    c.handle_timeout(t1);
    c.on_connected(t1, local());
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t1 + config().handshake_timeout));
    c.handle_timeout(t1 + config().handshake_timeout);
    let actions = drain(&mut c);
    assert!(matches!(actions[0], Action::Close { .. }));
    assert_eq!(
        disconnected_reason(&actions),
        Some("no registration reply".to_string())
    );

    let t2 = c.poll_timeout().unwrap();
    c.handle_timeout(t2);
    c.on_connected(t2, local());
    c.handle_message(
        t2,
        ServerMsg::Error(ErrorReply {
            request_id: 0,
            code: ErrorCode::ServerFull,
            detail: "full".into(),
            retry_after: None,
        }),
    );
    let actions = drain(&mut c);
    assert!(disconnected_reason(&actions)
        .unwrap()
        .starts_with("registration refused (ServerFull)"));
    assert_eq!(c.registered(), None);
}

#[test]
fn silence_means_reconnect_and_any_message_is_a_sign_of_life() {
    let t0 = Instant::now();
    let mut c = registered(config(), t0);
    let limit = PING * MISSED_PINGS;
    assert_eq!(c.poll_timeout(), Some(t0 + limit));
    c.handle_message(t0 + PING, ServerMsg::Ping { nonce: 9 });
    assert!(matches!(
        drain(&mut c)[..],
        [Action::Send(ClientMsg::Pong { nonce: 9 })]
    ));
    c.handle_timeout(t0 + limit);
    assert!(drain(&mut c).is_empty(), "the ping moved the deadline");
    assert_eq!(c.poll_timeout(), Some(t0 + PING + limit));
    c.handle_timeout(t0 + PING + limit);
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[0], Action::Close { reason } if matches!(reason, RendezvousError::Silent))
    );
    assert_eq!(
        disconnected_reason(&actions),
        Some("rendezvous went silent".to_string())
    );
    let retry = c.poll_timeout().unwrap() - (t0 + PING + limit);
    assert!(retry >= config().reconnect_min / 2 && retry <= config().reconnect_min);
    c.handle_timeout(t0 + PING + limit + retry);
    assert!(matches!(
        drain(&mut c)[..],
        [Action::SetStatus(Status::Connecting), Action::Connect]
    ));
}

#[test]
fn tiny_ping_intervals_do_not_make_a_hair_trigger() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    c.on_connected(t0, local());
    c.handle_message(
        t0,
        ServerMsg::Registered(Registered {
            observed: observed(),
            ping_interval: Duration::ZERO,
            nat_check_port: None,
        }),
    );
    assert_eq!(
        c.poll_timeout(),
        Some(t0 + MIN_PING_INTERVAL * MISSED_PINGS)
    );
}

#[test]
fn requests_expire_in_order_with_request_timeout() {
    let t0 = Instant::now();
    let mut c = registered(config(), t0);
    c.connect(t0, peer(2), 1);
    let actions = drain(&mut c);
    assert!(matches!(
        &actions[..],
        [Action::Send(ClientMsg::Connect { request_id: 1, peer: p }),
         Action::Emit(Event::Requested { .. })] if *p == peer(2)
    ));
    c.connect(t0 + Duration::from_secs(1), peer(3), 2);
    drain(&mut c);
    let timeout = config().request_timeout;
    assert_eq!(c.poll_timeout(), Some(t0 + timeout));
    c.handle_timeout(t0 + timeout);
    let actions = drain(&mut c);
    assert!(
        matches!(&actions[..], [Action::Reply { token: 1, error: Error::RequestTimeout(d) }] if *d == timeout),
        "{actions:?}"
    );
    assert_eq!(c.pending_requests(), 1);
    c.handle_timeout(t0 + Duration::from_secs(1) + timeout);
    assert!(matches!(
        drain(&mut c)[..],
        [Action::Reply {
            token: 2,
            error: Error::RequestTimeout(_)
        }]
    ));
    // The late offer of an expired request starts nothing.
    c.handle_message(
        t0 + Duration::from_secs(7),
        ServerMsg::Offer(offer(1, peer(2), Role::Initiator)),
    );
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.stats().expired, 2);
}

#[test]
fn refusals_map_to_typed_errors() {
    let t0 = Instant::now();
    let mut c = registered(config(), t0);
    let codes = [
        ErrorCode::PeerOffline,
        ErrorCode::PeerRefuses,
        ErrorCode::NotAllowed,
        ErrorCode::RateLimited,
        ErrorCode::SelfConnect,
    ];
    for (i, code) in codes.iter().enumerate() {
        c.connect(t0, peer(2), i as u32);
        drain(&mut c);
        c.handle_message(
            t0,
            ServerMsg::Error(ErrorReply {
                request_id: i as u64 + 1,
                code: *code,
                detail: "no".into(),
                retry_after: (*code == ErrorCode::RateLimited).then_some(Duration::from_secs(3)),
            }),
        );
        let actions = drain(&mut c);
        let [Action::Reply { token, error }] = &actions[..] else {
            panic!("{actions:?}");
        };
        assert_eq!(*token, i as u32);
        match (code, error) {
            (ErrorCode::PeerOffline, Error::PeerOffline { peer: p })
            | (ErrorCode::PeerRefuses, Error::PeerRefuses { peer: p })
            | (ErrorCode::NotAllowed, Error::NotAllowed { peer: p }) => assert_eq!(*p, peer(2)),
            (ErrorCode::RateLimited, Error::RateLimited { retry_after }) => {
                assert_eq!(*retry_after, Some(Duration::from_secs(3)))
            }
            (ErrorCode::SelfConnect, Error::Rendezvous { code, detail }) => {
                assert_eq!((*code, detail.as_str()), (ErrorCode::SelfConnect, "no"))
            }
            other => panic!("{other:?}"),
        }
    }
    // An error for a request that is gone is ignored; one for no request ends the connection.
    let err = |request_id| {
        ServerMsg::Error(ErrorReply {
            request_id,
            code: ErrorCode::BadRequest,
            detail: "bad".into(),
            retry_after: None,
        })
    };
    c.handle_message(t0, err(1));
    assert!(drain(&mut c).is_empty());
    assert!(c.registered().is_some());
    c.handle_message(t0, err(0));
    let actions = drain(&mut c);
    assert!(matches!(actions[0], Action::Close { .. }));
    assert!(disconnected_reason(&actions)
        .unwrap()
        .starts_with("rendezvous error (BadRequest)"));
    assert_eq!(c.stats().refused, codes.len() as u64);
}

#[test]
fn requests_wait_for_a_registration_under_way_and_fail_between_attempts() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    drain(&mut c);
    // Connecting: the request waits, and is sent once registered.
    c.connect(t0, peer(2), 5);
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.pending_requests(), 1);
    c.on_connected(t0 + MS, local());
    c.handle_message(t0 + 2 * MS, registered_msg());
    let actions = drain(&mut c);
    assert!(
        matches!(
            &actions[..],
            [
                Action::Emit(Event::Registered { .. }),
                Action::SetStatus(_),
                Action::Send(ClientMsg::Connect { request_id: 1, .. }),
                Action::Emit(Event::Requested { .. }),
                // The NAT check's result (this rendezvous offers none).
                Action::Emit(Event::NatChecked(_)),
                Action::SetNat(_),
                Action::Send(ClientMsg::Ping { .. })
            ]
        ),
        "{actions:?}"
    );
    // Its timeout counts from the request, not from the registration.
    assert_eq!(c.poll_timeout(), Some(t0 + config().request_timeout));

    // A request waiting on an attempt that fails fails with it.
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    drain(&mut c);
    c.connect(t0, peer(2), 6);
    c.on_connect_failed(t0 + MS, refused());
    let actions = drain(&mut c);
    assert!(matches!(
        &actions[0],
        Action::Reply { token: 6, error: Error::RendezvousUnreachable { source: reason, .. } }
            if reason.to_string() == "connect: connection refused"
    ));
    // Between attempts: refused at once.
    c.connect(t0 + MS, peer(2), 7);
    let actions = drain(&mut c);
    assert!(matches!(
        &actions[..],
        [Action::Reply { token: 7, error: Error::RendezvousUnreachable { source: reason, .. } }]
            if matches!(reason, RendezvousError::Reconnecting)
    ));
    assert_eq!(c.pending_requests(), 0);
}

#[test]
fn a_lost_connection_fails_requests_and_re_registration_starts_afresh() {
    let t0 = Instant::now();
    let mut c = registered(config(), t0);
    c.connect(t0, peer(2), 1);
    drain(&mut c);
    c.on_lost(t0 + MS, lost());
    let actions = drain(&mut c);
    assert!(matches!(
        &actions[0],
        Action::Reply { token: 1, error: Error::RendezvousUnreachable { source: reason, .. } }
            if matches!(reason, RendezvousError::Lost(_))
    ));
    assert!(!actions.iter().any(|a| matches!(a, Action::Close { .. })));
    // Reconnects and registers again: a new Connect, the registration sent anew.
    let t1 = c.poll_timeout().unwrap();
    c.handle_timeout(t1);
    assert!(matches!(drain(&mut c)[..], [_, Action::Connect]));
    // A frame from the old connection arriving now is ignored.
    c.handle_message(t1, ServerMsg::Offer(offer(1, peer(2), Role::Initiator)));
    assert!(drain(&mut c).is_empty());
    c.on_connected(t1, local());
    c.handle_message(t1, registered_msg());
    drain(&mut c);
    assert_eq!(c.stats().registrations, 2);
    // Request ids keep growing: a stale offer for request 1 does not match request 2.
    c.connect(t1, peer(2), 2);
    assert!(matches!(
        drain(&mut c)[0],
        Action::Send(ClientMsg::Connect { request_id: 2, .. })
    ));
    c.handle_message(t1, ServerMsg::Offer(offer(1, peer(2), Role::Initiator)));
    assert!(drain(&mut c).is_empty());
    // An offer naming another peer does not consume the request either.
    c.handle_message(t1, ServerMsg::Offer(offer(2, peer(9), Role::Initiator)));
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.pending_requests(), 1);
    c.handle_message(
        t1 + 30 * MS,
        ServerMsg::Offer(offer(2, peer(2), Role::Initiator)),
    );
    let actions = drain(&mut c);
    assert!(matches!(
        &actions[..],
        [Action::Emit(Event::Offer { inbound: false, session_id: 77, .. }),
         Action::StartPunch { reply: Some(2), started, .. }] if *started == t1
    ));
}

#[test]
fn inbound_offers_follow_accept_inbound() {
    let t0 = Instant::now();
    let mut c = registered(config(), t0);
    c.handle_message(
        t0 + MS,
        ServerMsg::Offer(offer(0, peer(4), Role::Responder)),
    );
    let actions = drain(&mut c);
    assert!(matches!(
        &actions[..],
        [Action::Emit(Event::Offer { inbound: true, .. }),
         Action::StartPunch { reply: None, started, .. }] if *started == t0 + MS
    ));
    let mut closed = registered(
        ControlConfig {
            accept_inbound: false,
            ..config()
        },
        t0,
    );
    assert!(!closed.config().register_message(local()).accept_inbound);
    closed.handle_message(t0, ServerMsg::Offer(offer(0, peer(4), Role::Responder)));
    assert!(drain(&mut closed).is_empty());
}

#[test]
fn a_malformed_frame_ends_the_connection() {
    let t0 = Instant::now();
    let mut c = registered(config(), t0);
    c.handle_frame(t0, &[0xff, 0xff, 0xff]);
    let actions = drain(&mut c);
    assert!(matches!(actions[0], Action::Close { .. }));
    assert!(disconnected_reason(&actions)
        .unwrap()
        .starts_with("malformed message from rendezvous"));
    // A well-formed frame goes through the real decoder.
    let mut c = registered(config(), t0);
    c.handle_frame(t0, &ServerMsg::Ping { nonce: 3 }.encode());
    assert!(matches!(
        drain(&mut c)[..],
        [Action::Send(ClientMsg::Pong { nonce: 3 })]
    ));
}

#[test]
fn inbound_offers_from_peers_off_the_allow_list_start_nothing() {
    let t0 = Instant::now();
    let allowed = peer(4);
    let mut c = registered(
        ControlConfig {
            allow: Allow::Only([allowed].into_iter().collect()),
            ..config()
        },
        t0,
    );
    // A stranger, many times: each offer is refused and reported, none starts a punch.
    for i in 0..100 {
        c.handle_message(
            t0 + i * MS,
            ServerMsg::Offer(offer(0, peer(9), Role::Responder)),
        );
        let actions = drain(&mut c);
        assert!(
            matches!(
                &actions[..],
                [Action::Emit(Event::InboundRefused { peer: p, session_id: 77 })] if *p == peer(9)
            ),
            "{actions:?}"
        );
    }
    assert_eq!(c.stats().inbound_refused, 100);
    assert_eq!(c.stats().offers, 0);
    // The allowed peer's offer starts its punch.
    c.handle_message(
        t0 + Duration::from_secs(1),
        ServerMsg::Offer(offer(0, allowed, Role::Responder)),
    );
    assert!(matches!(
        &drain(&mut c)[..],
        [
            Action::Emit(Event::Offer { inbound: true, .. }),
            Action::StartPunch { reply: None, .. }
        ]
    ));
    // The allow-list is about inbound punches only: our own requests to anyone still work.
    c.connect(t0 + Duration::from_secs(2), peer(9), 1);
    drain(&mut c);
    c.handle_message(
        t0 + Duration::from_secs(2),
        ServerMsg::Offer(offer(1, peer(9), Role::Initiator)),
    );
    assert!(drain(&mut c)
        .iter()
        .any(|a| matches!(a, Action::StartPunch { reply: Some(1), .. })));
    assert_eq!(c.stats().inbound_refused, 100);
}

#[test]
fn the_registration_carries_the_allow_list() {
    let with = |allow, accept_inbound| {
        ControlConfig {
            allow,
            accept_inbound,
            ..config()
        }
        .register_message(local())
    };
    let any = with(Allow::Any, true);
    assert_eq!((any.accept_inbound, any.allow.len()), (true, 0));
    assert_eq!(any.local_addrs, vec![local()]);
    // Sorted, so the message does not depend on the set's order.
    let two = with(Allow::Only([peer(9), peer(4)].into_iter().collect()), true);
    assert_eq!(
        (two.accept_inbound, two.allow),
        (true, vec![peer(4), peer(9)])
    );
    // An empty list serves nobody: registered as inbound off, not as "anyone".
    let nobody = with(Allow::Only(Default::default()), true);
    assert_eq!((nobody.accept_inbound, nobody.allow.len()), (false, 0));
    // Too long to send: the rendezvous cannot filter, the machine still does.
    let many = (0..=MAX_ALLOW as u8).map(|i| peer(0x10 + i)).collect();
    let long = with(Allow::Only(many), true);
    assert_eq!((long.accept_inbound, long.allow.len()), (true, 0));
    // Inbound off stays off whatever the list.
    let off = with(Allow::Only([peer(4)].into_iter().collect()), false);
    assert!(!off.accept_inbound);
}

/// The delay the machine hands the driver for the punch it starts.
fn started_delay(actions: &[Action<u32>]) -> Duration {
    actions
        .iter()
        .find_map(|a| match a {
            Action::StartPunch { offer, .. } => Some(offer.dial_delay),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no punch started: {actions:?}"))
}

#[test]
fn an_offer_is_dialed_at_its_moment_on_the_servers_clock() {
    let t0 = Instant::now();
    let mut c = Control::new(config(), t0, 1);
    drain(&mut c);
    c.on_connected(t0, local());
    c.handle_message(t0, registered_msg());
    let nonce = drain(&mut c)
        .iter()
        .find_map(|a| match a {
            Action::Send(ClientMsg::Ping { nonce }) => Some(*nonce),
            _ => None,
        })
        .expect("a ping at registration");
    let offer_at = |session_id: u64, dial_at_us: u64| {
        let mut o = offer(0, peer(4), Role::Responder);
        o.session_id = session_id;
        o.dial_at_us = Some(dial_at_us);
        ServerMsg::Offer(o)
    };
    // Before a pong with the server's time, the offer's own delay (50 ms) counts.
    c.handle_message(t0 + 5 * MS, offer_at(1, 1_300_000));
    assert_eq!(started_delay(&drain(&mut c)), 50 * MS);
    // The pong: a 20 ms round trip, the server's clock reading 1.01 s at its middle (t0 + 10
    // ms), so its 1.3 s is our t0 + 300 ms.
    c.handle_message(
        t0 + 20 * MS,
        ServerMsg::Pong {
            nonce,
            server_time_us: Some(1_010_000),
        },
    );
    drain(&mut c);
    // An offer arriving at t0 + 100 ms waits until t0 + 300 ms, whatever its own delay says.
    c.handle_message(t0 + 100 * MS, offer_at(2, 1_300_000));
    assert_eq!(started_delay(&drain(&mut c)), 200 * MS);
    // One arriving after its moment dials at once.
    c.handle_message(t0 + 400 * MS, offer_at(3, 1_300_000));
    assert_eq!(started_delay(&drain(&mut c)), Duration::ZERO);
    // A moment far beyond the offer's own delay is not believed past MAX_CLOCK_SHIFT.
    c.handle_message(t0 + 400 * MS, offer_at(4, 60_000_000));
    assert_eq!(started_delay(&drain(&mut c)), 50 * MS + MAX_CLOCK_SHIFT);
}
