//! Unit tests of the relay table, on made-up instants, tokens and sources.

use super::*;

use punch_proto::message::Offer;
use punch_proto::Role;

const MS: Duration = Duration::from_millis(1);

fn limits() -> RelayLimits {
    RelayLimits {
        max_pending: 4,
        pair_timeout: Duration::from_secs(15),
        max_sessions: 3,
        max_sessions_per_peer: 2,
        max_sessions_per_source: 2,
        after_min: 20 * MS,
    }
}

fn id(b: u8) -> PeerId {
    PeerId::from_bytes([b; 32]).unwrap()
}

fn src(last: u8) -> Prefix {
    Prefix::of([10, 0, 0, last].into())
}

/// Tokens of pair `n`: `[2n, 2n + 1]` repeated.
fn tokens(n: u8) -> [Token; 2] {
    [[2 * n; RELAY_TOKEN_LEN], [2 * n + 1; RELAY_TOKEN_LEN]]
}

fn issue(t: &mut RelayTable, now: Instant, n: u8, peers: [u8; 2]) -> [RelayTicket; 2] {
    t.issue(
        now,
        u64::from(n) + 100,
        peers.map(id),
        tokens(n),
        [10 * MS, 80 * MS],
    )
    .expect("room for a pair")
}

fn refusal(r: Result<Arrival, Refused>) -> Refusal {
    r.expect_err("a refusal").reason
}

#[test]
fn after_is_the_sum_of_the_srtts_within_bounds() {
    assert_eq!(relay_after(10 * MS, 80 * MS, 20 * MS), 90 * MS);
    assert_eq!(
        relay_after(Duration::ZERO, 2 * MS, 20 * MS),
        20 * MS,
        "floor"
    );
    assert_eq!(
        relay_after(Duration::from_secs(30), MS, 20 * MS),
        MAX_RELAY_AFTER,
        "a peer answering pings late cannot delay its partner's fallback beyond 2 s"
    );
}

#[test]
fn the_two_sides_of_a_pair_meet_once() {
    let t0 = Instant::now();
    let mut t = RelayTable::new(limits());
    let [ta, tb] = issue(&mut t, t0, 1, [1, 2]);
    assert_eq!((ta.after, tb.after), (90 * MS, 90 * MS));
    assert_eq!(t.pending(), 1);
    let first = t.arrive(t0 + MS, &tb.token, src(2)).unwrap();
    assert_eq!(
        first,
        Arrival::First {
            pair: 1,
            session_id: 101,
            deadline: t0 + Duration::from_secs(15)
        }
    );
    assert_eq!(
        t.sessions(),
        1,
        "a held side already holds its session's slots"
    );
    // The same token again: used.
    assert_eq!(
        refusal(t.arrive(t0 + MS, &tb.token, src(2))),
        Refusal::UnknownToken
    );
    let second = t.arrive(t0 + 2 * MS, &ta.token, src(1)).unwrap();
    assert_eq!(
        second,
        Arrival::Second {
            pair: 1,
            session_id: 101,
            peers: [id(1), id(2)]
        }
    );
    assert_eq!((t.pending(), t.sessions(), t.held()), (0, 1, 0));
    // Neither token starts anything again, even while the session runs.
    for tok in [&ta.token, &tb.token] {
        assert_eq!(
            refusal(t.arrive(t0 + 3 * MS, tok, src(1))),
            Refusal::UnknownToken
        );
    }
    t.release(1);
    t.release(1);
    assert_eq!((t.pending(), t.sessions()), (0, 0));
    assert!(t.per_peer.is_empty() && t.per_source.is_empty());
    assert_eq!(
        refusal(t.arrive(t0, &[9; RELAY_TOKEN_LEN], src(1))),
        Refusal::UnknownToken,
        "never issued"
    );
    let s = t.stats();
    assert_eq!((s.issued, s.started, s.refused_unknown_token), (1, 1, 4));
}

#[test]
fn tokens_expire_and_a_held_side_is_counted_absent() {
    let t0 = Instant::now();
    let mut t = RelayTable::new(limits());
    let [ta, _] = issue(&mut t, t0, 1, [1, 2]);
    let [_, tb2] = issue(&mut t, t0, 2, [1, 3]);
    assert!(matches!(
        t.arrive(t0, &tb2.token, src(3)),
        Ok(Arrival::First { .. })
    ));
    let late = t0 + Duration::from_secs(15);
    assert_eq!(
        refusal(t.arrive(late, &ta.token, src(1))),
        Refusal::UnknownToken
    );
    assert_eq!((t.pending(), t.sessions(), t.held()), (0, 0, 0));
    assert!(t.tokens.is_empty() && t.pairs.is_empty());
    assert_eq!(t.stats().peer_absent, 1);
    // The driver's own release of the given-up side after the prune changes nothing.
    t.release(2);
    assert_eq!(t.sessions(), 0);
}

#[test]
fn pending_pairs_are_bounded() {
    let t0 = Instant::now();
    let mut t = RelayTable::new(limits());
    for n in 0..4 {
        issue(&mut t, t0, n, [1, 2]);
    }
    assert_eq!(
        t.issue(t0, 9, [id(1), id(2)], tokens(9), [MS, MS]),
        None,
        "full: the offers go without tickets"
    );
    assert_eq!(t.stats().pending_full, 1);
    // Expired pairs make room again.
    let later = t0 + Duration::from_secs(16);
    assert!(t
        .issue(later, 9, [id(1), id(2)], tokens(9), [MS, MS])
        .is_some());
    assert_eq!(t.pending(), 1);
    // A token already in use is never issued twice.
    assert!(t
        .issue(later, 10, [id(1), id(2)], tokens(9), [MS, MS])
        .is_none());
}

#[test]
fn session_limits_total_per_peer_and_per_source() {
    let t0 = Instant::now();
    let mut t = RelayTable::new(RelayLimits {
        max_pending: 100,
        ..limits()
    });
    // Peer 1 in two sessions: its limit.
    for (n, other) in [(1, 2), (2, 3)] {
        let [ta, tb] = issue(&mut t, t0, n, [1, other]);
        t.arrive(t0, &ta.token, src(n)).unwrap();
        t.arrive(t0, &tb.token, src(10 + n)).unwrap();
    }
    // Peer 1 arriving first for a third session: refused, and the pair is dropped whole.
    let [ta, tb] = issue(&mut t, t0, 3, [4, 1]);
    assert_eq!(refusal(t.arrive(t0, &tb.token, src(3))), Refusal::PeerLimit);
    assert_eq!(
        refusal(t.arrive(t0, &ta.token, src(3))),
        Refusal::UnknownToken,
        "a refused pair is dropped whole"
    );
    // Peer 9 held, waiting for peer 1: the held side did not take peer 1's share (it was
    // full already), and peer 1 arriving second is refused with the held side named.
    let [ta, tb] = issue(&mut t, t0, 6, [9, 1]);
    let Ok(Arrival::First { pair, .. }) = t.arrive(t0, &ta.token, src(6)) else {
        panic!("peer 9 has room");
    };
    assert_eq!(
        t.per_peer.get(&id(1)),
        Some(&2),
        "held sides count only their own peer"
    );
    assert_eq!(
        t.arrive(t0, &tb.token, src(7)),
        Err(Refused {
            reason: Refusal::PeerLimit,
            abandoned: Some(pair)
        })
    );
    assert_eq!(
        t.per_peer.get(&id(9)),
        None,
        "the abandoned side's slot is free"
    );
    // A third session elsewhere fills the total of 3.
    let [ta, _] = issue(&mut t, t0, 4, [5, 6]);
    assert!(t.arrive(t0, &ta.token, src(4)).is_ok());
    let [ta, _] = issue(&mut t, t0, 5, [7, 8]);
    assert_eq!(refusal(t.arrive(t0, &ta.token, src(5))), Refusal::Full);
    t.release(1);

    // Per source: source 20 holds two sessions; a third first side from it is refused, and a
    // second side from it drops the pair and names the held side to refuse too.
    let mut t = RelayTable::new(RelayLimits {
        max_pending: 100,
        max_sessions: 100,
        max_sessions_per_peer: 100,
        ..limits()
    });
    for n in 1..=2 {
        let [ta, tb] = issue(&mut t, t0, n, [1, 2]);
        t.arrive(t0, &ta.token, src(20)).unwrap();
        // Both sides from one source count that source once.
        t.arrive(t0, &tb.token, src(20)).unwrap();
    }
    let [ta, _] = issue(&mut t, t0, 3, [1, 2]);
    assert_eq!(
        refusal(t.arrive(t0, &ta.token, src(20))),
        Refusal::SourceLimit
    );
    let [ta, tb] = issue(&mut t, t0, 4, [1, 2]);
    let Ok(Arrival::First { pair, .. }) = t.arrive(t0, &ta.token, src(21)) else {
        panic!("the first side from another source is admitted");
    };
    assert_eq!(
        t.arrive(t0, &tb.token, src(20)),
        Err(Refused {
            reason: Refusal::SourceLimit,
            abandoned: Some(pair)
        })
    );
    assert_eq!(t.sessions(), 2);
    assert_eq!(
        t.per_source.get(&src(21)),
        None,
        "the abandoned pair's slot is free"
    );
    let s = t.stats();
    assert_eq!((s.refused_source_limit, s.started), (2, 2));
}

fn offer(session_id: u64, peer: PeerId, role: Role) -> Offer {
    Offer {
        session_id,
        request_id: 0,
        peer,
        peer_observed: "10.0.0.1:1".parse().unwrap(),
        peer_local: vec![],
        role,
        dial_delay: 50 * MS,
        dial_at_us: None,
        relay: None,
        upgrade: None,
        peer_nat: punch_proto::message::NatMapping::Unknown,
    }
}

#[test]
fn tickets_ride_on_the_two_offers_of_a_punch() {
    let t0 = Instant::now();
    let mut t = RelayTable::new(limits());
    let mut actions = vec![
        Action::Send {
            conn: 1,
            msg: ServerMsg::Offer(offer(7, id(2), Role::Initiator)),
        },
        Action::Send {
            conn: 2,
            msg: ServerMsg::Offer(offer(7, id(1), Role::Responder)),
        },
    ];
    let mut next = 0u8;
    let srtt = |p: &PeerId| Some(if *p == id(1) { 300 * MS } else { 10 * MS });
    attach_tickets(
        &mut t,
        t0,
        &mut actions,
        || {
            next += 1;
            [next; RELAY_TOKEN_LEN]
        },
        srtt,
    );
    let tickets: Vec<RelayTicket> = actions
        .iter()
        .map(|a| match a {
            Action::Send {
                msg: ServerMsg::Offer(o),
                ..
            } => o.relay.clone().expect("a ticket"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(tickets[0].token, [1; RELAY_TOKEN_LEN]);
    assert_eq!(tickets[1].token, [2; RELAY_TOKEN_LEN]);
    assert!(tickets.iter().all(|t| t.after == 310 * MS));
    // The requester's token names the requester's side: its arrival first, then the target's.
    let Ok(Arrival::First { session_id, .. }) = t.arrive(t0, &tickets[0].token, src(1)) else {
        panic!("first");
    };
    assert_eq!(session_id, 7);
    let Ok(Arrival::Second { peers, .. }) = t.arrive(t0, &tickets[1].token, src(2)) else {
        panic!("second");
    };
    assert_eq!(peers, [id(1), id(2)]);

    // An error reply is left alone.
    let mut refused = vec![Action::Close {
        conn: 1,
        reason: "x",
    }];
    attach_tickets(&mut t, t0, &mut refused, || [0; 16], srtt);
    assert_eq!(t.stats().issued, 1);
}

#[test]
fn held_sides_do_not_spend_their_partners_share() {
    let t0 = Instant::now();
    let mut t = RelayTable::new(RelayLimits {
        max_pending: 100,
        max_sessions: 100,
        max_sessions_per_source: 100,
        ..limits()
    });
    // Three requesters hold first sides of punches toward peer 1, who never comes.
    for n in 0..3 {
        let [ta, _] = issue(&mut t, t0, n, [20 + n, 1]);
        assert!(matches!(
            t.arrive(t0, &ta.token, src(20 + n)),
            Ok(Arrival::First { .. })
        ));
    }
    // Peer 1's own two sessions are admitted all the same.
    for n in 3..5 {
        let [ta, tb] = issue(&mut t, t0, n, [1, 30 + n]);
        assert!(matches!(
            t.arrive(t0, &ta.token, src(1)),
            Ok(Arrival::First { .. })
        ));
        assert!(matches!(
            t.arrive(t0, &tb.token, src(30 + n)),
            Ok(Arrival::Second { .. })
        ));
    }
    assert_eq!((t.sessions(), t.held()), (5, 3));
}
