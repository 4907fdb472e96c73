//! Two clients' control machines and the rendezvous registry on a virtual clock (see
//! `sim/mod.rs`): registration, restarts, dial moments, expiry, rate limits, stale offers,
//! silent peers. Each test runs in a few milliseconds of real time.
#![allow(clippy::unwrap_used)]

mod sim;

use std::time::Duration;

use punch::{Error, RendezvousError, Status};
use sim::{limits, Fault, Link, Outcome, Sim, A, B};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn failures(sim: &Sim, i: usize) -> Vec<&Error> {
    sim.nodes[i]
        .outcomes
        .iter()
        .filter_map(|(_, _, o)| match o {
            Outcome::Failed(e) => Some(e),
            Outcome::Punch(_) => None,
        })
        .collect()
}

#[test]
fn registration_and_reregistration_after_a_rendezvous_restart() {
    let mut sim = Sim::new(1, [Link::new(20), Link::new(60)], limits());
    sim.run_until(SEC);
    assert!(sim.is_registered(A) && sim.is_registered(B));
    assert_eq!(sim.registered_peers(), 2);
    assert!(
        matches!(sim.nodes[A].status, Status::Registered { observed, .. } if observed == sim.nodes[A].public)
    );

    sim.at(2 * SEC, Fault::ServerDown);
    sim.at(8 * SEC, Fault::ServerUp);
    sim.run_until(8 * SEC - MS);
    assert!(!sim.is_registered(A) && !sim.is_registered(B));
    assert!(
        matches!(&sim.nodes[B].status, Status::Disconnected { reason } if reason.to_string().contains("refused"))
    );
    // Refused reconnects back off: each pause at least as long as half the one before doubled.
    let connects = &sim.nodes[A].connects;
    let gaps: Vec<Duration> = connects.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 4, "{gaps:?}");
    assert!(
        gaps.windows(2).skip(1).all(|g| g[1] * 2 >= g[0]),
        "{gaps:?}"
    );
    assert!(
        *gaps.last().unwrap() > gaps[1] * 2,
        "the backoff grew: {gaps:?}"
    );

    // Both are back within one capped backoff and a handshake of the restart.
    sim.run_until(8 * SEC + punch::config::DEFAULT_RECONNECT_MAX + SEC);
    assert!(sim.is_registered(A) && sim.is_registered(B));
    assert_eq!(sim.registered_peers(), 2);
    let token = sim.connect(A);
    sim.run_until(sim.elapsed() + SEC);
    assert!(matches!(sim.nodes[A].outcomes.last(), Some((_, t, Outcome::Punch(_))) if *t == token));
    assert_eq!(sim.nodes[B].punches.len(), 1);
}

#[test]
fn both_sides_dial_at_the_same_virtual_instant_with_asymmetric_delays() {
    let mut sim = Sim::new(2, [Link::new(5), Link::new(140)], limits());
    sim.run_until(12 * SEC); // a few pings refine the RTT estimates
    let asked = sim.now;
    sim.connect(A);
    sim.run_until(sim.elapsed() + SEC);
    let (pa, pb) = (&sim.nodes[A].punches[0], &sim.nodes[B].punches[0]);
    assert_eq!(pa.offer.session_id, pb.offer.session_id);
    // The offers arrive 135 ms apart...
    assert_eq!(pb.received - pa.received, 135 * MS);
    // ...and both sides dial at the same virtual instant: the server's send time plus the
    // longer one-way delay plus the margin.
    let apart = if pa.dial_at > pb.dial_at {
        pa.dial_at - pb.dial_at
    } else {
        pb.dial_at - pa.dial_at
    };
    assert!(apart <= Duration::from_micros(1), "{apart:?}");
    // The moment: the server's send time plus B's one-way delay, plus B's RTT variation (RFC
    // 6298: half its first RTT, 280 ms, then three quarters of that at each of the two steady
    // samples, at 5 and 10 s), plus the margin.
    let server_sent = asked + 5 * MS;
    let rttvar = Duration::from_micros(140_000 * 9 / 16);
    let want = 140 * MS + rttvar + limits().dial_margin;
    let got = pa.dial_at - server_sent;
    assert!(
        got.abs_diff(want) <= Duration::from_micros(2),
        "{got:?} {want:?}"
    );
}

#[test]
fn a_late_offer_still_dials_at_the_moment_on_the_servers_clock() {
    // A's path is short when its RTT is measured, then its delay grows (a queue filling up)
    // just before the punch: its offer arrives 55 ms later than the server expects.
    let mut sim = Sim::new(2, [Link::new(5), Link::new(140)], limits());
    sim.run_until(12 * SEC);
    sim.at(12 * SEC + 100 * MS, Fault::Delay(A, 60 * MS));
    sim.run_until(12 * SEC + 200 * MS);
    let asked = sim.now;
    sim.connect(B);
    sim.run_until(sim.elapsed() + SEC);
    let (pa, pb) = (&sim.nodes[A].punches[0], &sim.nodes[B].punches[0]);
    // B's request takes 140 ms to the server, the offers 60 ms to A (5 ms expected) and 140
    // ms to B.
    assert_eq!(pa.received - asked, 200 * MS);
    assert_eq!(pb.received - asked, 280 * MS);
    // With the server's clock placed from its pongs, A dials at the moment, with B; counted
    // from the offer's arrival, as a client without the clock does, it would dial 55 ms late.
    let apart = pa.dial_at.max(pb.dial_at) - pa.dial_at.min(pb.dial_at);
    assert!(apart <= Duration::from_micros(1), "{apart:?}");
}

#[test]
fn requests_expire_when_the_rendezvous_hangs_then_silence_reconnects() {
    let mut sim = Sim::new(3, [Link::new(20), Link::new(20)], limits());
    sim.run_until(6 * SEC); // one ping at 5 s
    sim.at(6 * SEC, Fault::ServerHung(true));
    sim.run_until(6 * SEC + 100 * MS);
    let asked = sim.now;
    let token = sim.connect(A);
    sim.run_until(sim.elapsed() + punch::config::DEFAULT_REQUEST_TIMEOUT);
    let (at, t, outcome) = sim.nodes[A].outcomes.last().unwrap();
    assert_eq!(*t, token);
    assert_eq!(*at - asked, punch::config::DEFAULT_REQUEST_TIMEOUT);
    assert!(
        matches!(outcome, Outcome::Failed(Error::RequestTimeout(d)) if *d == punch::config::DEFAULT_REQUEST_TIMEOUT)
    );
    // The last word from the server was the pong to the ping A sent beside its answer to the
    // server's first ping (sent 5 s after A's registration at 60 ms, heard at 5.08 s): that
    // pong is heard at 5.12 s, and three intervals later A gives up on the server.
    let silent = 5120 * MS + 3 * punch_rendezvous::config::DEFAULT_PING_INTERVAL;
    sim.run_until(silent - MS);
    assert!(sim.is_registered(A), "{:#?}", sim.trace());
    sim.run_until(silent);
    assert!(!sim.is_registered(A));
    assert!(matches!(
        &sim.nodes[A].status,
        Status::Disconnected {
            reason: RendezvousError::Silent
        }
    ));
    // The hung server accepts TCP but never answers the handshake: attempts time out.
    sim.run_until(40 * SEC);
    assert!(!sim.is_registered(A));
    assert!(sim
        .trace()
        .iter()
        .any(|l| l.contains("A close: connect and handshake did not finish")));
    sim.at(41 * SEC, Fault::ServerHung(false));
    sim.run_until(41 * SEC + punch::config::DEFAULT_RECONNECT_MAX + 6 * SEC);
    assert!(sim.is_registered(A) && sim.is_registered(B));
}

#[test]
fn the_registry_rate_limit_reaches_the_requester_as_a_typed_error() {
    let mut lim = limits();
    lim.punch_requests_per_minute = 2;
    let mut sim = Sim::new(4, [Link::new(10), Link::new(10)], lim);
    sim.run_until(SEC);
    for _ in 0..3 {
        sim.connect(A);
    }
    sim.run_until(2 * SEC);
    assert_eq!(sim.nodes[A].punches.len(), 2);
    assert_eq!(sim.nodes[B].punches.len(), 2);
    let failed = failures(&sim, A);
    assert!(
        matches!(failed[..], [Error::RateLimited { retry_after: Some(wait) }] if *wait > 20 * SEC),
        "{failed:?}"
    );
    // A minute later the bucket has refilled.
    sim.run_until(62 * SEC);
    sim.connect(A);
    sim.run_until(63 * SEC);
    assert_eq!(sim.nodes[A].punches.len(), 3);
}

#[test]
fn a_stale_offer_after_re_registration_is_not_mistaken_for_a_new_request() {
    let mut sim = Sim::new(5, [Link::new(50), Link::new(10)], limits());
    sim.run_until(SEC);
    let first = sim.connect(A);
    // The request reaches the server at +50 ms; A's offer would arrive at +100 ms: the link is
    // cut in between, after B already has its offer.
    sim.at(sim.elapsed() + 75 * MS, Fault::CutLink(A));
    sim.run_until(sim.elapsed() + 80 * MS);
    assert!(matches!(
        failures(&sim, A)[..],
        [Error::RendezvousUnreachable { .. }]
    ));
    assert_eq!(
        sim.nodes[B].punches.len(),
        1,
        "B got the offer of the lost request"
    );
    assert!(sim.nodes[A].punches.is_empty());
    sim.run_until(3 * SEC);
    assert!(sim.is_registered(A));
    let second = sim.connect(A);
    sim.run_until(4 * SEC);
    let a = &sim.nodes[A];
    assert_eq!(a.punches.len(), 1);
    assert_eq!(a.punches[0].reply, Some(second));
    assert_ne!(first, second);
    let b = &sim.nodes[B].punches;
    assert_eq!(b.len(), 2);
    assert_ne!(b[0].offer.session_id, b[1].offer.session_id);
    assert_eq!(a.punches[0].offer.session_id, b[1].offer.session_id);
}

#[test]
fn a_peer_that_never_answers() {
    let mut sim = Sim::new(6, [Link::new(10), Link::new(30)], limits());
    sim.run_until(SEC);
    sim.at(2 * SEC, Fault::Blackhole(B, true));
    // The server does not know yet: A's request gets offers, B's never arrives.
    sim.run_until(3 * SEC);
    sim.connect(A);
    sim.run_until(4 * SEC);
    assert_eq!(sim.nodes[A].punches.len(), 1);
    assert!(sim.nodes[B].punches.is_empty());
    // B hears nothing (its last ping arrived at 30 ms): silence after three ping intervals,
    // then handshakes that time out, with growing pauses.
    sim.run_until(60 * SEC);
    assert!(!sim.is_registered(B));
    assert!(sim
        .trace()
        .iter()
        .any(|l| l.contains("B close: rendezvous went silent")));
    let connects = &sim.nodes[B].connects;
    assert!(connects.len() >= 4, "{connects:?}");
    sim.at(61 * SEC, Fault::Blackhole(B, false));
    sim.run_until(61 * SEC + punch::config::DEFAULT_RECONNECT_MAX + 6 * SEC);
    assert!(sim.is_registered(B));
}

fn lossy_run(seed: u64) -> Vec<String> {
    let mut link = Link::new(40);
    link.loss = 0.3;
    let mut sim = Sim::new(seed, [link, Link::new(15)], limits());
    sim.run_until(2 * SEC);
    sim.connect(A);
    sim.at(4 * SEC, Fault::ServerDown);
    sim.at(5 * SEC, Fault::ServerUp);
    sim.run_until(12 * SEC);
    sim.connect(B);
    sim.run_until(20 * SEC);
    sim.trace().to_vec()
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let first = lossy_run(42);
    assert!(first.len() > 20, "{first:?}");
    assert_eq!(first, lossy_run(42));
    assert_ne!(first, lossy_run(43));
}
