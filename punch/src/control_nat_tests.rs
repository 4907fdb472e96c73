//! Unit tests of the control machine's NAT check, on made-up instants.

use super::test_support::{config, drain, MS};
use super::*;
use punch_proto::message::{NatMapping, Registered};
use punch_proto::Role;

const CHECK_PORT: u16 = 7718;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn local() -> SocketAddr {
    sa("192.168.1.2:40001")
}

/// Connects and registers `c` at `now`, seen at `observed`, told of the check port; returns
/// the actions of the registration, without our first ping (control_tests covers it).
fn register(c: &mut Control<u32>, now: Instant, observed: SocketAddr) -> Vec<Action<u32>> {
    c.on_connected(now, local());
    c.handle_message(
        now,
        ServerMsg::Registered(Registered {
            observed,
            ping_interval: Duration::from_secs(5),
            nat_check_port: Some(CHECK_PORT),
        }),
    );
    let mut actions = drain(c);
    actions.retain(|a| !matches!(a, Action::Send(ClientMsg::Ping { .. })));
    actions
}

fn published(actions: &[Action<u32>]) -> Option<&NatBehaviour> {
    match actions {
        [Action::Emit(Event::NatChecked(a)), Action::SetNat(b)] if a == b => Some(b),
        _ => None,
    }
}

#[test]
fn a_registration_naming_a_check_port_asks_for_a_check_there() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    drain(&mut c);
    let observed = sa("203.0.113.5:40001");
    let actions = register(&mut c, t0, observed);
    // At the rendezvous's IP, on the port it named; nothing is published before the answer.
    assert!(
        matches!(actions.last(), Some(Action::NatCheck { server }) if *server == sa("198.51.100.1:7718")),
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::SetNat(_))));
    assert!(c.nat().is_none());

    c.on_nat_checked(Ok(observed));
    let actions = drain(&mut c);
    let nat = published(&actions).expect("the result is published");
    assert_eq!(nat.mapping, NatMapping::EndpointIndependent);
    assert!(nat.port_preserved && !nat.public);
    assert_eq!(nat.probe_observed, Some(observed));
    assert_eq!(c.nat(), Some(nat));
    assert_eq!(c.stats().nat_checks, 1);
}

#[test]
fn another_port_for_the_probe_is_endpoint_dependent() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    drain(&mut c);
    register(&mut c, t0, sa("203.0.113.5:51000"));
    c.on_nat_checked(Ok(sa("203.0.113.5:62000")));
    let nat = c.nat().expect("checked");
    assert_eq!(nat.mapping, NatMapping::EndpointDependent);
    assert!(!nat.port_preserved);
}

#[test]
fn a_failed_check_is_unknown_and_a_stale_answer_is_ignored() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    drain(&mut c);
    let observed = sa("203.0.113.5:40001");
    register(&mut c, t0, observed);
    c.on_nat_checked(Err(NatCheckError::Timeout(Duration::from_secs(5))));
    let nat = c.nat().expect("a failed check is a result too").clone();
    assert_eq!(nat.mapping, NatMapping::Unknown);
    assert!(matches!(nat.check_error, Some(NatCheckError::Timeout(_))));
    assert!(c.registered().is_some(), "never fatal");

    // Checked again after the next registration; the connection is lost before the answer,
    // which then changes nothing.
    c.on_lost(t0 + MS, RendezvousError::Silent);
    c.handle_timeout(t0 + Duration::from_secs(1));
    drain(&mut c);
    let actions = register(&mut c, t0 + Duration::from_secs(1), observed);
    assert!(matches!(actions.last(), Some(Action::NatCheck { .. })));
    c.on_lost(t0 + Duration::from_secs(2), RendezvousError::Silent);
    drain(&mut c);
    c.on_nat_checked(Ok(observed));
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.nat(), Some(&nat), "the last result is kept");
}

#[test]
fn offers_carry_the_peers_mapping() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 1);
    drain(&mut c);
    register(&mut c, t0, sa("203.0.113.5:51000"));
    c.on_nat_checked(Ok(sa("203.0.113.5:62000")));
    drain(&mut c);
    let peer = PeerId::from_bytes([3; 32]).unwrap();
    c.handle_message(
        t0,
        ServerMsg::Offer(Offer {
            session_id: 5,
            request_id: 0,
            peer,
            peer_observed: sa("198.51.100.7:7000"),
            peer_local: vec![],
            role: Role::Responder,
            dial_delay: 50 * MS,
            dial_at_us: None,
            relay: None,
            upgrade: None,
            peer_nat: NatMapping::EndpointDependent,
        }),
    );
    let actions = drain(&mut c);
    assert!(
        matches!(
            &actions[..],
            [
                Action::Emit(Event::Offer {
                    peer_nat: NatMapping::EndpointDependent,
                    ..
                }),
                Action::StartPunch { .. }
            ]
        ),
        "{actions:?}"
    );
    // Both sides symmetric: the punch still starts (the relay may carry it), and the
    // outlook the machine logs says why a direct path will not appear.
    assert_eq!(
        crate::nat::direct_outlook(c.nat(), NatMapping::EndpointDependent),
        DirectOutlook::Impossible
    );
}
