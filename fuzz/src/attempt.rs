//! Harness of the punch [`Attempt`] scheduler: arbitrary schedules and candidate lists (with
//! duplicates), driven by arbitrary sequences of clock steps, dial polls and dial/auth
//! outcomes.
//!
//! In *driver* mode (`legal`), outcomes follow the contract of `punch::punch::run`: a dial
//! outcome only for a dial in flight, an auth failure only for a connected candidate, plus calls
//! for addresses that are no candidate (which must change nothing). The model, written from the
//! module's documentation, then checks:
//! - dials happen only in `[start, deadline)`, only for candidates, in preference order, each
//!   due candidate exactly once per poll loop, never one with a dial in flight, connected or
//!   failed for good; a refused dial is redialed at once for the first [`FAST_REDIALS`]
//!   refusals of a candidate, any other failed dial `retry_interval` later, not sooner;
//! - `poll_timeout` is the earliest due retry or the deadline, whichever comes first (never
//!   past the deadline, never a busy loop once due dials are drained);
//! - `tried()` lists the deduplicated candidates in order with their dial counts and last errors.
//!
//! In *chaos* mode every method is called with any candidate in any state; it must not panic,
//! never dial at or after the deadline, and `poll_timeout` must not pass the deadline.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use punch::attempt::{Attempt, Failure, Schedule, Tried, FAST_REDIALS};

const MAX_EVENTS: usize = 512;
/// Candidates come from this many addresses, so lists repeat some.
const POOL: u8 = 6;

#[derive(Debug, Arbitrary)]
pub struct Scenario {
    start_ms: u16,
    window_ms: u16,
    retry_ms: u16,
    candidates: Vec<u8>,
    legal: bool,
    events: Vec<Event>,
}

#[derive(Debug, Arbitrary)]
pub enum Event {
    Advance(u16),
    /// The driver's loop: `poll_dial` until `None`, then `poll_timeout`.
    PollDial,
    /// A dial in flight fails; `true`: refused (RST).
    DialFailed(u8, bool),
    Connected(u8),
    AuthFailed(u8, bool),
    /// A call for an address outside the contract (chaos) or outside the candidates (driver).
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
    Connected,
    Failed,
}

#[derive(Debug, Clone)]
struct Cand {
    tried: Tried,
    state: State,
    refusals: u32,
}

pub fn run(s: Scenario) {
    let t0 = Instant::now();
    let schedule = Schedule {
        start: t0 + Duration::from_millis(u64::from(s.start_ms)),
        window: Duration::from_millis(u64::from(s.window_ms)),
        retry_interval: Duration::from_millis(u64::from(s.retry_ms)),
    };
    let deadline = schedule.start + schedule.window;
    let addrs: Vec<SocketAddr> = s.candidates.iter().take(16).map(|&i| addr(i)).collect();
    let mut attempt = Attempt::new(schedule, addrs.iter().copied());
    assert_eq!(attempt.deadline(), deadline);
    let mut model: Vec<Cand> = Vec::new();
    for a in &addrs {
        if !model.iter().any(|c| c.tried.addr == *a) {
            model.push(Cand {
                tried: Tried {
                    addr: *a,
                    dials: 0,
                    last_error: None,
                },
                state: State::Idle(schedule.start),
                refusals: 0,
            });
        }
    }
    let mut now = t0;
    for (n, event) in s.events.iter().take(MAX_EVENTS).enumerate() {
        let error = format!("error {n}");
        if s.legal {
            driver_step(&mut attempt, &mut model, event, &mut now, schedule, error);
            let due = model
                .iter()
                .filter_map(|c| match c.state {
                    State::Idle(at) => Some(at),
                    _ => None,
                })
                .min()
                .map_or(deadline, |at| at.min(deadline));
            assert_eq!(attempt.poll_timeout(), due, "poll_timeout");
            let tried: Vec<Tried> = model.iter().map(|c| c.tried.clone()).collect();
            assert_eq!(attempt.tried(), tried);
        } else {
            chaos_step(&mut attempt, event, &mut now, schedule, error);
            assert!(attempt.poll_timeout() <= deadline);
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

fn driver_step(
    attempt: &mut Attempt,
    model: &mut [Cand],
    event: &Event,
    now: &mut Instant,
    schedule: Schedule,
    error: String,
) {
    let deadline = schedule.start + schedule.window;
    let retry = schedule.retry_interval;
    match event {
        Event::Advance(ms) => *now += Duration::from_millis(u64::from(*ms)),
        Event::PollDial => {
            let mut dialed = 0;
            while let Some(a) = attempt.poll_dial(*now) {
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
                attempt.on_dial_failed(*now, c.tried.addr, failure, error.clone());
                let fast = *refused && c.refusals < FAST_REDIALS;
                c.refusals += u32::from(*refused);
                c.state = State::Idle(if fast { *now } else { *now + retry });
                c.tried.last_error = Some(error);
            }
        }
        Event::Connected(pick) => {
            if let Some(i) = nth_in(model, State::InFlight, *pick) {
                attempt.on_connected(model[i].tried.addr);
                model[i].state = State::Connected;
            }
        }
        Event::AuthFailed(pick, final_) => {
            if let Some(i) = nth_in(model, State::Connected, *pick) {
                attempt.on_auth_failed(*now, model[i].tried.addr, error.clone(), *final_);
                model[i].state = if *final_ {
                    State::Failed
                } else {
                    State::Idle(*now + retry)
                };
                model[i].tried.last_error = Some(error);
            }
        }
        Event::Stray(call, a, final_) => {
            let a = stranger(*a);
            match call % 3 {
                0 => attempt.on_dial_failed(*now, a, failure(*final_), error),
                1 => attempt.on_connected(a),
                _ => attempt.on_auth_failed(*now, a, error, *final_),
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
    event: &Event,
    now: &mut Instant,
    schedule: Schedule,
    error: String,
) {
    let deadline = schedule.start + schedule.window;
    match event {
        Event::Advance(ms) => *now += Duration::from_millis(u64::from(*ms)),
        Event::PollDial => {
            let mut dialed = 0;
            while attempt.poll_dial(*now).is_some() {
                dialed += 1;
                assert!(dialed <= usize::from(POOL), "poll_dial does not stop");
                assert!(*now < deadline, "dial after the window closed");
            }
        }
        Event::DialFailed(a, refused) => {
            attempt.on_dial_failed(*now, addr(*a), failure(*refused), error)
        }
        Event::Connected(a) => attempt.on_connected(addr(*a)),
        Event::AuthFailed(a, final_) => attempt.on_auth_failed(*now, addr(*a), error, *final_),
        Event::Stray(call, a, final_) => {
            let a = if call & 4 == 0 {
                addr(*a)
            } else {
                stranger(*a)
            };
            match call % 3 {
                0 => attempt.on_dial_failed(*now, a, failure(*final_), error),
                1 => attempt.on_connected(a),
                _ => attempt.on_auth_failed(*now, a, error, *final_),
            }
        }
    }
}
