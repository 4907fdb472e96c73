//! Harness of the punch [`Attempt`]: arbitrary schedules, roles and candidate lists (with
//! duplicates), driven by arbitrary sequences of clock steps, polls and dial/auth outcomes.
//!
//! In *driver* mode (`legal`), outcomes follow the contract of the punch driver
//! (`punch/src/driver.rs`): a dial outcome only for a dial in flight, an auth failure only for
//! the stream of a connected candidate, plus calls for addresses and streams that are not part
//! of the attempt (which must change nothing). The model, written from the module's
//! documentation, then checks:
//! - dials happen only in `[start, deadline)`, only for candidates, in preference order, each
//!   due candidate exactly once per poll loop, never one with a dial in flight, connected or
//!   failed for good; a refused dial of an observed candidate is redialed at once for the
//!   first [`FAST_REDIALS`] refusals, any other failed dial `retry_interval` later, not sooner;
//!   a local candidate is never redialed at once and given up after [`LOCAL_REFUSALS`]
//!   refusals; a candidate whose stream got a bad preamble (another service) is given up;
//! - `poll_timeout` is the earliest due retry or the deadline, whichever comes first (never
//!   past the deadline, never a busy loop once due dials are drained);
//! - a connected stream is authenticated, and abandoned (its candidate redialed
//!   `retry_interval` after the timeout) once `auth_timeout` passes without an outcome; a
//!   stream connecting at or after the deadline is abandoned;
//! - the attempt fails once, only at or after the deadline with no stream left, with the first
//!   wrong-key error if there was one, else a timeout listing what was tried;
//! - `tried()` lists the deduplicated candidates in order with their dial counts and last errors.
//!
//! In *chaos* mode every method is called with any candidate or stream in any state, accepted
//! streams and confirms included; it must not panic, never dial at or after the deadline or
//! after deciding, decide at most once, and `poll_timeout` must not pass the deadline by more
//! than the longest stream timeout. Chaos scenarios may add the relay fallback (and relay
//! only): the relay is dialed at most once and never after a decision, a session starts on the
//! relay at most once, an upgrade comes only after it and decides, and a relayed attempt never
//! also establishes directly or fails.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch::attempt::{
    Action, Attempt, CandidateError, Failure, GaveUp, Schedule, StreamId, Tried, CONFIRM_TIMEOUT,
    FAST_REDIALS, LOCAL_REFUSALS,
};
use punch::auth::AuthError;
use punch_proto::Role;

const MAX_EVENTS: usize = 512;
/// Candidates come from this many addresses, so lists repeat some.
const POOL: u8 = 6;
const DIAL_ERRORS: [ErrorKind; 4] = [
    ErrorKind::TimedOut,
    ErrorKind::ConnectionRefused,
    ErrorKind::ConnectionReset,
    ErrorKind::AddrInUse,
];

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    start_ms: u16,
    window_ms: u16,
    retry_ms: u16,
    auth_ms: u16,
    initiator: bool,
    /// Candidate addresses; with the high bit set, a local address the peer claimed.
    candidates: Vec<u8>,
    legal: bool,
    /// Chaos only: the relay fallback this long after the start, and relay only.
    relay_ms: Option<u16>,
    relay_only: bool,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    Advance(u16),
    /// The driver's loop: `poll` until `None`, then `poll_timeout`.
    PollDial,
    /// A dial in flight fails; `true`: refused (RST).
    DialFailed(u8, bool),
    Connected(u8),
    /// A stream fails authentication: `true`, a wrong key; `false`, it broke, or with the
    /// pick's high bit set, the far end sent a bad preamble (another service).
    AuthFailed(u8, bool),
    /// A call for an address or stream outside the contract (chaos) or outside the attempt
    /// (driver).
    Stray(u8, u8, bool),
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i % POOL), 4000))
}

/// Addresses that are never candidates.
fn stranger(i: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, i), 4000))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle(Instant),
    InFlight,
    /// Its stream is authenticating until the given time.
    Connected(StreamId, Instant),
    Failed,
}

/// What the model knows beyond the candidates.
#[derive(Debug, Default)]
struct Verdict {
    /// The address of the first wrong-key failure.
    first_final: Option<SocketAddr>,
    decided: bool,
    relay_dials: u32,
    relayed: bool,
}

fn auth_error(final_: bool) -> AuthError {
    if final_ {
        AuthError::StaleSession {
            expected: 1,
            found: 2,
        }
    } else {
        AuthError::Closed
    }
}

#[derive(Debug, Clone)]
struct Cand {
    tried: Tried,
    state: State,
    refusals: u32,
    local: bool,
}

pub fn run(s: Scenario) {
    let t0 = Instant::now();
    let schedule = Schedule {
        start: t0 + Duration::from_millis(u64::from(s.start_ms)),
        window: Duration::from_millis(u64::from(s.window_ms)),
        retry_interval: Duration::from_millis(u64::from(s.retry_ms)),
        auth_timeout: Duration::from_millis(u64::from(s.auth_ms)),
    };
    let role = if s.initiator {
        Role::Initiator
    } else {
        Role::Responder
    };
    let deadline = schedule.start + schedule.window;
    let picks = s.candidates.iter().take(16);
    let (local, observed): (Vec<u8>, Vec<u8>) = picks.partition(|&&i| i & 0x80 != 0);
    let observed: Vec<SocketAddr> = observed.into_iter().map(addr).collect();
    let local: Vec<SocketAddr> = local.into_iter().map(addr).collect();
    let mut attempt = Attempt::with_local(
        schedule,
        role,
        observed.iter().copied(),
        local.iter().copied(),
    );
    if !s.legal {
        if let Some(ms) = s.relay_ms {
            let at = schedule.start + Duration::from_millis(u64::from(ms));
            attempt = attempt.with_relay(at, stranger(250));
        }
        if s.relay_only {
            attempt = attempt.relay_only();
        }
    }
    let mut verdict = Verdict::default();
    assert_eq!(attempt.deadline(), deadline);
    // Observed addresses first; an address in both lists is observed.
    let mut model: Vec<Cand> = Vec::new();
    let tagged = observed.iter().map(|a| (a, false));
    for (a, is_local) in tagged.chain(local.iter().map(|a| (a, true))) {
        if !model.iter().any(|c| c.tried.addr == *a) {
            model.push(Cand {
                tried: Tried {
                    addr: *a,
                    dials: 0,
                    last_error: None,
                },
                state: State::Idle(schedule.start),
                refusals: 0,
                local: is_local,
            });
        }
    }
    let mut now = t0;
    for (n, event) in s.events.iter().take(MAX_EVENTS).enumerate() {
        // Dial errors vary, so `tried()` shows which failure was the last.
        let error = DIAL_ERRORS[n % DIAL_ERRORS.len()];
        if s.legal {
            driver_step(
                &mut attempt,
                &mut model,
                &mut verdict,
                event,
                &mut now,
                schedule,
                error,
            );
            let due = model
                .iter()
                .filter_map(|c| match c.state {
                    State::Idle(at) => Some(at),
                    _ => None,
                })
                .min()
                .map_or(deadline, |at| at.min(deadline));
            let due = model
                .iter()
                .filter_map(|c| match c.state {
                    State::Connected(_, until) => Some(until),
                    _ => None,
                })
                .fold(due, Instant::min);
            assert_eq!(attempt.poll_timeout(), due, "poll_timeout");
            let tried: Vec<Tried> = model.iter().map(|c| c.tried.clone()).collect();
            assert_eq!(attempt.tried(), tried);
        } else {
            chaos_step(&mut attempt, &mut verdict, event, &mut now, schedule, error);
            let longest = schedule.auth_timeout.max(CONFIRM_TIMEOUT);
            assert!(attempt.poll_timeout() <= deadline.max(now + longest));
        }
        assert_eq!(attempt.is_expired(now), now >= deadline);
    }
}

/// Picks the `pick`-th candidate (cyclically) among those in `state`.
fn nth_in(model: &[Cand], state: State, pick: u8) -> Option<usize> {
    let idx: Vec<usize> = (0..model.len())
        .filter(|&i| model[i].state == state)
        .collect();
    (!idx.is_empty()).then(|| idx[usize::from(pick) % idx.len()])
}

/// The candidate whose stream is `id`.
fn with_stream(model: &[Cand], id: StreamId) -> Option<usize> {
    model
        .iter()
        .position(|c| matches!(c.state, State::Connected(s, _) if s == id))
}

fn driver_step(
    attempt: &mut Attempt,
    model: &mut [Cand],
    verdict: &mut Verdict,
    event: &Event,
    now: &mut Instant,
    schedule: Schedule,
    error: ErrorKind,
) {
    let deadline = schedule.start + schedule.window;
    let retry = schedule.retry_interval;
    match event {
        Event::Advance(ms) => *now += Duration::from_millis(u64::from(*ms)),
        Event::PollDial => {
            // Streams past their auth timeout are abandoned first, their candidates redialed.
            let mut timed_out = Vec::new();
            for c in model.iter_mut() {
                if let State::Connected(id, until) = c.state {
                    if until <= *now {
                        timed_out.push(id);
                        c.state = State::Idle(until + retry);
                        c.tried.last_error = Some(CandidateError::AuthTimedOut);
                    }
                }
            }
            let mut dialed = 0;
            while let Some(action) = attempt.poll(*now) {
                let a = match action {
                    Action::Dial(a) => a,
                    Action::Authenticate(id) => {
                        assert!(with_stream(model, id).is_some(), "authenticates {id}");
                        continue;
                    }
                    Action::Abandon(id) => {
                        // Timed out, or connected too late / for no dial (never tracked).
                        timed_out.retain(|&t| t != id);
                        assert!(with_stream(model, id).is_none(), "abandoned live {id}");
                        continue;
                    }
                    Action::Fail(gave_up) => {
                        assert!(!verdict.decided, "decided twice");
                        verdict.decided = true;
                        assert!(*now >= deadline, "failed before the deadline");
                        assert!(
                            !model
                                .iter()
                                .any(|c| matches!(c.state, State::Connected(..))),
                            "failed with a stream authenticating"
                        );
                        match (gave_up, verdict.first_final) {
                            (GaveUp::AuthFailed { addr, error }, Some(first)) => {
                                assert_eq!(addr, first, "not the first wrong key");
                                assert!(error.is_final());
                            }
                            (GaveUp::Timeout { tried }, None) => {
                                let want: Vec<Tried> =
                                    model.iter().map(|c| c.tried.clone()).collect();
                                assert_eq!(tried, want);
                            }
                            (g, f) => panic!("verdict {g:?} with first wrong key {f:?}"),
                        }
                        continue;
                    }
                    other => panic!("{other:?} without any stream authenticated"),
                };
                dialed += 1;
                assert!(dialed <= model.len(), "poll_dial does not stop");
                assert!(*now >= schedule.start, "dial before the agreed moment");
                assert!(*now < deadline, "dial after the window closed");
                let first_due = model
                    .iter()
                    .position(|c| matches!(c.state, State::Idle(at) if at <= *now))
                    .expect("dialed a candidate that is not due");
                let c = &mut model[first_due];
                assert_eq!(a, c.tried.addr, "not the first due candidate in order");
                c.state = State::InFlight;
                c.tried.dials += 1;
            }
            assert!(timed_out.is_empty(), "timed-out streams not abandoned");
            if *now < deadline {
                assert!(
                    !model
                        .iter()
                        .any(|c| matches!(c.state, State::Idle(at) if at <= *now)),
                    "a due candidate was not dialed"
                );
                assert!(
                    attempt.poll_timeout() > *now,
                    "busy loop: timeout already due"
                );
            }
        }
        Event::DialFailed(pick, refused) => {
            if let Some(i) = nth_in(model, State::InFlight, *pick) {
                let c = &mut model[i];
                let failure = if *refused {
                    Failure::Refused
                } else {
                    Failure::Other
                };
                attempt.on_dial_failed(*now, c.tried.addr, failure, error);
                let fast = *refused && !c.local && c.refusals < FAST_REDIALS;
                c.refusals += u32::from(*refused);
                c.state = if c.local && c.refusals >= LOCAL_REFUSALS {
                    State::Failed
                } else {
                    State::Idle(if fast { *now } else { *now + retry })
                };
                c.tried.last_error = Some(CandidateError::Dial(error));
            }
        }
        Event::Connected(pick) => {
            if let Some(i) = nth_in(model, State::InFlight, *pick) {
                let id = attempt.on_connected(*now, model[i].tried.addr);
                if *now < deadline {
                    model[i].state = State::Connected(id, *now + schedule.auth_timeout);
                }
            }
        }
        Event::AuthFailed(pick, final_) => {
            let connected: Vec<usize> = (0..model.len())
                .filter(|&i| matches!(model[i].state, State::Connected(..)))
                .collect();
            if !connected.is_empty() {
                let i = connected[usize::from(*pick) % connected.len()];
                let State::Connected(id, _) = model[i].state else {
                    unreachable!("filtered")
                };
                let foreign = !*final_ && pick & 0x80 != 0;
                let e = if foreign {
                    AuthError::Preamble
                } else {
                    auth_error(*final_)
                };
                model[i].tried.last_error = Some(CandidateError::Auth(e.kind()));
                attempt.on_auth_failed(*now, id, e);
                model[i].state = if *final_ || foreign {
                    State::Failed
                } else {
                    State::Idle(*now + retry)
                };
                if *final_ && verdict.first_final.is_none() {
                    verdict.first_final = Some(model[i].tried.addr);
                }
            }
        }
        Event::Stray(call, a, final_) => {
            let addr = stranger(*a);
            // Ids far above any the attempt hands out.
            let id = StreamId::MAX - StreamId::from(*a);
            match call % 3 {
                0 => attempt.on_dial_failed(*now, addr, failure(*final_), error),
                1 => {
                    attempt.on_connected(*now, addr);
                }
                _ => attempt.on_auth_failed(*now, id, auth_error(*final_)),
            }
        }
    }
}

fn failure(refused: bool) -> Failure {
    if refused {
        Failure::Refused
    } else {
        Failure::Other
    }
}

fn chaos_step(
    attempt: &mut Attempt,
    verdict: &mut Verdict,
    event: &Event,
    now: &mut Instant,
    schedule: Schedule,
    error: ErrorKind,
) {
    let deadline = schedule.start + schedule.window;
    // Stream ids as the attempt hands them out: small numbers.
    let id = |a: u8| StreamId::from(a % 16);
    match event {
        Event::Advance(ms) => *now += Duration::from_millis(u64::from(*ms)),
        Event::PollDial => {
            let mut dialed = 0;
            let mut others = 0;
            while let Some(action) = attempt.poll(*now) {
                match action {
                    Action::Dial(_) => {
                        dialed += 1;
                        assert!(dialed <= usize::from(POOL), "poll does not stop");
                        assert!(*now < deadline, "dial after the window closed");
                        assert!(!verdict.decided, "dial after the verdict");
                    }
                    Action::Established(_) | Action::Fail(_) => {
                        assert!(!verdict.decided, "decided twice");
                        assert!(!verdict.relayed, "a relayed attempt decided otherwise");
                        verdict.decided = true;
                    }
                    Action::DialRelay => {
                        assert!(!verdict.decided && !verdict.relayed, "relay after the verdict");
                        verdict.relay_dials += 1;
                        assert_eq!(verdict.relay_dials, 1, "the relay is dialed once");
                    }
                    Action::Relayed(_) => {
                        assert!(!verdict.decided && !verdict.relayed, "relayed twice or late");
                        verdict.relayed = true;
                    }
                    Action::ConfirmUpgrade(_) => {
                        assert!(verdict.relayed && !verdict.decided, "upgrade confirm unrelayed");
                    }
                    Action::Upgrade(_) => {
                        assert!(verdict.relayed && !verdict.decided, "upgrade unrelayed or late");
                        verdict.decided = true;
                    }
                    _ => {
                        others += 1;
                        assert!(others <= 4096, "poll does not stop");
                    }
                }
            }
        }
        Event::DialFailed(a, refused) => {
            attempt.on_dial_failed(*now, addr(*a), failure(*refused), error)
        }
        Event::Connected(a) => {
            attempt.on_connected(*now, addr(*a));
        }
        Event::AuthFailed(a, final_) => attempt.on_auth_failed(*now, id(*a), auth_error(*final_)),
        Event::Stray(call, a, final_) => {
            let at = if call & 8 == 0 {
                addr(*a)
            } else {
                stranger(*a)
            };
            match call % 10 {
                0 => attempt.on_dial_failed(*now, at, failure(*final_), error),
                1 => {
                    attempt.on_connected(*now, at);
                }
                2 => {
                    attempt.on_accepted(*now, at);
                }
                3 => attempt.on_authenticated(*now, id(*a)),
                4 => attempt.on_confirmed(*now, id(*a)),
                5 => attempt.on_confirm_failed(*now, id(*a), auth_error(*final_)),
                6 => {
                    attempt.on_relay_connected(*now);
                }
                7 => attempt.on_relay_failed(*now, error),
                8 => attempt.on_upgrade_confirmed(*now, id(*a)),
                _ => attempt.on_auth_failed(
                    *now,
                    id(*a),
                    AuthError::Relay(punch_proto::relay::Refusal::from_code(*a)),
                ),
            }
        }
    }
}
