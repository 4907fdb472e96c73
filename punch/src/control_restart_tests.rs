//! Unit tests of the control machine when the rendezvous restarts (`GoingAway`), on made-up
//! instants.

use std::io;

use super::test_support::{config, drain, local, peer, MS};
use super::*;
use punch_proto::message::Registered;

const WINDOW: Duration = Duration::from_secs(10);

fn registered_msg() -> ServerMsg {
    ServerMsg::Registered(Registered {
        observed: "203.0.113.7:4000".parse().unwrap(),
        ping_interval: Duration::from_secs(5),
        nat_check_port: None,
    })
}

fn going_away(within: Duration) -> ServerMsg {
    ServerMsg::GoingAway {
        reconnect_within: within,
    }
}

/// A machine registered at `t0`, its actions drained.
fn registered(t0: Instant, seed: u64) -> Control<u32> {
    let mut c = Control::new(config(), t0, seed);
    c.on_connected(t0, local());
    c.handle_message(t0, registered_msg());
    drain(&mut c);
    assert!(c.registered().is_some());
    c
}

fn refused() -> RendezvousError {
    RendezvousError::Connect(Arc::new(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "connection refused",
    )))
}

/// When a machine registered at `t0` and told `GoingAway { WINDOW }` at `t0` reconnects.
fn reconnect_delay(seed: u64) -> Duration {
    let t0 = Instant::now();
    let mut c = registered(t0, seed);
    c.handle_message(t0, going_away(WINDOW));
    c.poll_timeout().unwrap() - t0
}

#[test]
fn going_away_is_no_failure_and_says_the_server_restarts() {
    let t0 = Instant::now();
    let mut c = registered(t0, 1);
    c.connect(t0, peer(2), 7);
    drain(&mut c);
    c.handle_message(t0 + MS, going_away(WINDOW));
    let actions = drain(&mut c);
    let is_going_away = |r: &RendezvousError| matches!(r, RendezvousError::GoingAway { reconnect_within } if *reconnect_within == WINDOW);
    // No `Close`: the server closes, so the TIME_WAIT is its own, not our punch port's.
    assert!(
        matches!(&actions[..], [
            Action::Reply { token: 7, error: Error::RendezvousUnreachable { source: r1, .. } },
            Action::Emit(Event::Disconnected { reason: r2 }),
            Action::SetStatus(Status::Disconnected { reason: r3 }),
        ] if [r1, r2, r3].into_iter().all(is_going_away)),
        "{actions:?}"
    );
    assert_eq!(c.registered(), None);
    assert_eq!(c.stats().going_away, 1);
    assert_eq!(c.stats().losses, 0, "a restart is not a lost connection");
    // The server closes the connection next: nothing changes.
    let retry_at = c.poll_timeout().unwrap();
    c.on_lost(t0 + 2 * MS, RendezvousError::Silent);
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(retry_at));
    // Requests between now and the reconnect fail at once, as while reconnecting.
    c.connect(t0 + 3 * MS, peer(2), 8);
    assert!(matches!(
        drain(&mut c)[..],
        [Action::Reply {
            token: 8,
            error: Error::RendezvousUnreachable {
                source: RendezvousError::Reconnecting,
                ..
            }
        }]
    ));
    // Nothing before the chosen moment, a connect at it.
    c.handle_timeout(retry_at - Duration::from_nanos(1));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(retry_at);
    assert!(matches!(
        drain(&mut c)[..],
        [Action::SetStatus(Status::Connecting), Action::Connect]
    ));
}

#[test]
fn reconnect_moments_are_uniform_over_the_window_and_seeded() {
    let delays: Vec<Duration> = (0..2_000).map(reconnect_delay).collect();
    assert!(delays.iter().all(|d| *d <= WINDOW), "within the window");
    // Ten slices of one second, 200 expected in each.
    let mut slices = [0u32; 10];
    for d in &delays {
        slices[(d.as_secs() as usize).min(9)] += 1;
    }
    assert!(
        slices.iter().all(|n| (140..=260).contains(n)),
        "not uniform: {slices:?}"
    );
    assert_eq!(reconnect_delay(5), reconnect_delay(5));
    assert_ne!(reconnect_delay(5), reconnect_delay(6));
}

#[test]
fn a_failed_reconnect_tries_again_within_the_window_then_backs_off_afresh() {
    let t0 = Instant::now();
    let min = config().reconnect_min;
    let mut c = registered(t0, 3);
    c.handle_message(t0, going_away(WINDOW));
    let mut t = c.poll_timeout().unwrap();
    let end = t0 + WINDOW;
    // The server is not up yet: new random moments in what is left of the window.
    let mut moments = 0;
    while t + min < end {
        c.handle_timeout(t);
        drain(&mut c);
        c.on_connect_failed(t, refused());
        drain(&mut c);
        let retry_at = c.poll_timeout().unwrap();
        assert!(
            retry_at >= t + min && retry_at <= end,
            "{:?}",
            retry_at - t0
        );
        t = retry_at;
        moments += 1;
        assert!(moments < 100, "the window ends");
    }
    // Past the window: the usual jittered doubling, from the minimum.
    let mut nominal = min;
    for _ in 0..4 {
        c.handle_timeout(t);
        drain(&mut c);
        c.on_connect_failed(t, refused());
        drain(&mut c);
        let retry_at = c.poll_timeout().unwrap();
        let d = retry_at - t;
        assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
        nominal *= 2;
        t = retry_at;
    }
    c.handle_timeout(t);
    c.on_connected(t, local());
    c.handle_message(t, registered_msg());
    assert!(c.registered().is_some());
    assert_eq!(c.stats().registrations, 2);
    // Registered again: a later failure is an ordinary one, whatever the old window said.
    let mut c = registered(t0, 4);
    c.handle_message(t0, going_away(WINDOW));
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    c.on_connected(t, local());
    c.handle_message(t, registered_msg());
    c.on_lost(t, RendezvousError::Silent);
    c.handle_timeout(c.poll_timeout().unwrap());
    let t = c.poll_timeout().unwrap();
    c.on_connect_failed(t, refused());
    assert!(
        c.poll_timeout().unwrap() - t <= 2 * min,
        "backoff, not the old window"
    );
}

#[test]
fn going_away_before_the_registration_and_an_empty_window() {
    let t0 = Instant::now();
    let mut c: Control<u32> = Control::new(config(), t0, 4);
    c.on_connected(t0, local());
    drain(&mut c);
    // The server shut down between our handshake and its `Registered`.
    c.handle_message(t0 + MS, going_away(WINDOW));
    let actions = drain(&mut c);
    assert!(matches!(
        actions[0],
        Action::Emit(Event::Disconnected {
            reason: RendezvousError::GoingAway { .. }
        })
    ));
    let d = c.poll_timeout().unwrap() - (t0 + MS);
    assert!(d <= WINDOW, "{d:?}");
    assert_eq!(c.stats().going_away, 1);
    // A window of zero: back at once.
    let mut c = registered(t0, 5);
    c.handle_message(t0 + MS, going_away(Duration::ZERO));
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + MS));
}
