//! The punch attempt: a pure state machine fed `now`, dial outcomes, accepted streams and
//! authentication outcomes, deciding what the driver ([`crate::driver`]) does next.
//!
//! Dialing. From the moment the rendezvous set, it dials every candidate address of the peer
//! (its observed public address first, then its local addresses for peers on the same LAN),
//! and redials a candidate [`Schedule::retry_interval`] after each failure, until the window
//! closes. Routers either drop an early SYN (the kernel's own SYN retransmission, 1 s later,
//! then passes the hole our SYN opened) or answer it with a RST. A RST also moves our own
//! router's conntrack entry for the punch to CLOSE, and the peer's SYN arriving on a CLOSE entry
//! is INVALID and dropped or reset in turn: the hole has to be reopened by our next SYN before
//! the peer's arrives. So a refused dial is redialed at once, which paces itself at one round
//! trip (the RST took that long to come back), up to [`FAST_REDIALS`] times per candidate; other
//! failures, and refusals beyond that, wait [`Schedule::retry_interval`].
//!
//! Local candidates are claims the peer made and nobody checked, pointing into our own LAN, so
//! they are dialed sparingly: no fast redials (there is no NAT between us to open), and after
//! [`LOCAL_REFUSALS`] refusals never again (the peer's listener would have answered the first
//! dial). Any candidate whose far end answers with bytes that are not a punch preamble is a
//! different service and is not dialed again either.
//!
//! Choosing the stream. Every stream that connects, dialed or accepted, gets a [`StreamId`] and
//! is authenticated (preamble and Noise KK, [`crate::auth`]), within
//! [`Schedule::auth_timeout`]. The initiator confirms the first stream that authenticates
//! (others wait as backups, confirmed in turn if it fails); the responder waits for the
//! confirm on every authenticated stream and takes the first one it arrives on. A confirm
//! gets [`CONFIRM_TIMEOUT`]. The winner is [`Action::Established`]; every other stream is
//! abandoned first.
//!
//! Giving up. At the deadline no more dials go out and new streams are abandoned, but streams
//! already being authenticated or confirmed finish (each is bounded by its own timeout). Once
//! none is left the attempt fails: with [`GaveUp::AuthFailed`] if some stream reached a holder
//! of the wrong key or another session (the first such error), else [`GaveUp::Timeout`]. It
//! does not fail earlier when every candidate address answered with the wrong key: the peer's
//! own dial can still reach our listener from an address the rendezvous did not know, until
//! the window closes.
//!
//! The relay ([`Attempt::with_relay`]). When no direct stream has authenticated by the time
//! the rendezvous's ticket names (a fraction of the round trip after the dial moment), the
//! attempt opens one relay connection ([`Action::DialRelay`]); its stream is authenticated
//! and confirmed like the others, so whichever authenticates first serves. A relayed winner
//! starts the session at once ([`Action::Relayed`]) and the attempt goes on: the first
//! direct stream confirmed before the window closes is the session's new path
//! ([`Action::Upgrade`]). The initiator marks that confirm as an upgrade (UPGRADE, not
//! CONFIRM, [`crate::auth`]): a responder that gets it before the relayed stream's confirm
//! (the direct path is faster) holds it until the relayed session has started, so both
//! sides start on the relay and move to the same direct stream. A relayed session whose
//! window closes without a direct stream stays relayed; the attempt ends quietly.
//!
//! The driver calls [`Attempt::poll`] until it returns `None`, carrying out each action, then
//! sleeps until [`Attempt::poll_timeout`] or the next outcome, and reports outcomes with the
//! `on_*` methods. `poll` first expires timers, then returns queued actions in the order they
//! were decided, then due dials in preference order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punch_proto::Role;

use crate::auth::{AuthError, AuthErrorKind};

/// Refused dials of one candidate that are redialed at once (see the module doc). 32 round
/// trips cover the peer's dial moment even with a few RTTs of clock or scheduling error.
pub const FAST_REDIALS: u32 = 32;

/// Refused dials after which a local candidate is given up. On a shared LAN the peer's
/// listener accepts the first dial that arrives, so a RST means the address is not (or no
/// longer) the peer's; three allow for a peer that rebinds its port. With it, one offer makes
/// us dial an unanswering LAN host at most this many times, not once per round trip.
pub const LOCAL_REFUSALS: u32 = 3;

/// How long a confirm may take on an authenticated stream. Sending it is one small frame on a
/// connection that just carried the handshake, and receiving it is one one-way trip after our
/// last handshake message: both take well under a second on any real path. 5 s leave room for
/// a few TCP retransmissions (the minimum RTO is 200 ms to 1 s) and bound how long a stream the
/// initiator chose not to confirm, or a stalled write, keeps the punch from ending.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Names one stream of an attempt, dialed or accepted.
pub type StreamId = u64;

/// How a dial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Actively refused (RST): redial at once while the fast budget lasts.
    Refused,
    /// Anything else (timeout, unreachable, address in use): wait the retry interval.
    Other,
}

/// Timing of an attempt.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When the first dials go out (the agreed moment).
    pub start: Instant,
    /// How long after `start` the attempt stops dialing and taking new streams.
    pub window: Duration,
    /// Pause between a failed dial and the next dial of the same candidate.
    pub retry_interval: Duration,
    /// How long a connected stream may take to authenticate.
    pub auth_timeout: Duration,
}

/// What happened to one candidate, for logs and the timeout error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub addr: SocketAddr,
    pub dials: u32,
    pub last_error: Option<CandidateError>,
}

/// The last thing that went wrong with a candidate (a summary: the verdict of a wrong key
/// carries the full [`AuthError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// The dial failed: refused, unreachable, timed out (the network, or nobody listening).
    #[error("dial: {0}")]
    Dial(std::io::ErrorKind),
    /// Its stream did not authenticate.
    #[error("authentication: {0}")]
    Auth(AuthErrorKind),
    /// Its stream did not authenticate within [`Schedule::auth_timeout`].
    #[error("authentication timed out")]
    AuthTimedOut,
    /// Its stream authenticated but the confirm failed.
    #[error("confirm: {0}")]
    Confirm(AuthErrorKind),
    /// Its stream authenticated but no confirm came within [`CONFIRM_TIMEOUT`].
    #[error("confirm timed out")]
    ConfirmTimedOut,
}

/// What the driver must do, in the order [`Attempt::poll`] returns them.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Connect from the shared port to the address; report [`Attempt::on_connected`] or
    /// [`Attempt::on_dial_failed`].
    Dial(SocketAddr),
    /// Run preamble and Noise KK on the stream; report [`Attempt::on_authenticated`] or
    /// [`Attempt::on_auth_failed`].
    Authenticate(StreamId),
    /// Initiator: send CONFIRM on the authenticated stream; responder: wait for the
    /// initiator's CONFIRM on it. Report [`Attempt::on_confirmed`] or
    /// [`Attempt::on_confirm_failed`].
    Confirm(StreamId),
    /// Drop the stream and any work in progress on it.
    Abandon(StreamId),
    /// The punch succeeded on this stream. The last action.
    Established(StreamId),
    /// Open a relay connection to the rendezvous and present this side's ticket; report
    /// [`Attempt::on_relay_connected`] or [`Attempt::on_relay_failed`].
    DialRelay,
    /// A session starts on this relayed stream; the attempt goes on for a direct stream
    /// until its window closes.
    Relayed(StreamId),
    /// Initiator, after [`Action::Relayed`]: send the upgrade confirm on this authenticated
    /// direct stream (report like [`Action::Confirm`]).
    ConfirmUpgrade(StreamId),
    /// The relayed session moves to this direct stream. The last action.
    Upgrade(StreamId),
    /// The punch failed. The last action.
    Fail(GaveUp),
}

/// Why an attempt gave up.
#[derive(Debug)]
pub enum GaveUp {
    /// A stream reached someone without the expected key, or from another session.
    AuthFailed { addr: SocketAddr, error: AuthError },
    /// No stream was established within the window.
    Timeout { tried: Vec<Tried> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Will be dialed at this time.
    Waiting(Instant),
    /// A dial is in flight.
    Dialing,
    /// Connected; its stream is being authenticated or confirmed.
    Connected(StreamId),
    /// Given up (a wrong key, another service, or a local address refusing): not dialed again.
    Failed,
}

#[derive(Debug)]
struct Candidate {
    tried: Tried,
    state: State,
    refusals: u32,
    /// A local address the peer claimed (not the address the rendezvous observed).
    local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Preamble and KK running, until this time.
    Authenticating(Instant),
    /// Initiator: authenticated, waiting for the confirm of another stream to fail.
    Backup,
    /// Confirm sent or awaited, until this time.
    Confirming(Instant),
    /// Responder: the upgrade confirm came before the relayed stream's confirm; held until
    /// the relayed session exists, at most until this time.
    Held(Instant),
}

/// The relay fallback of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// No relay for this punch.
    Off,
    /// Will be dialed at this time.
    Waiting(Instant),
    Dialing,
    /// Connected (its stream is in `streams`), or done with.
    Used,
}

#[derive(Debug)]
struct Entry {
    id: StreamId,
    addr: SocketAddr,
    /// Dialed by us (its candidate is `addr`), or accepted by the listener.
    dialed: bool,
    /// Through the relay.
    relayed: bool,
    step: Step,
}

/// One punch attempt.
#[derive(Debug)]
pub struct Attempt {
    schedule: Schedule,
    role: Role,
    candidates: Vec<Candidate>,
    streams: Vec<Entry>,
    next_stream: StreamId,
    actions: VecDeque<Action>,
    /// The first error that says "wrong peer", reported if nothing is established.
    auth_error: Option<(SocketAddr, AuthError)>,
    finished: bool,
    relay: Relay,
    /// The relay's address and what happened there, for the timeout error.
    relay_tried: Option<Tried>,
    /// Streams the peer dials or accepts directly are taken ([`Attempt::relay_only`]).
    direct: bool,
    /// A session runs on the relay ([`Action::Relayed`]); the attempt looks for a direct
    /// stream to move it to.
    relayed: bool,
}

impl Attempt {
    /// Candidates are deduplicated and kept in order (preferred first), all treated as
    /// observed addresses. `role` is ours, as the rendezvous assigned it.
    pub fn new(
        schedule: Schedule,
        role: Role,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        Self::with_local(schedule, role, addrs, [])
    }

    /// Like [`Attempt::new`], with the peer's claimed local addresses after the observed
    /// ones (dialed sparingly, see the module doc). An address in both lists is observed.
    pub fn with_local(
        schedule: Schedule,
        role: Role,
        observed: impl IntoIterator<Item = SocketAddr>,
        local: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        let mut candidates: Vec<Candidate> = Vec::new();
        let addrs = observed.into_iter().map(|a| (a, false));
        for (addr, local) in addrs.chain(local.into_iter().map(|a| (a, true))) {
            if !candidates.iter().any(|c| c.tried.addr == addr) {
                candidates.push(Candidate {
                    tried: Tried {
                        addr,
                        dials: 0,
                        last_error: None,
                    },
                    state: State::Waiting(schedule.start),
                    refusals: 0,
                    local,
                });
            }
        }
        Self {
            schedule,
            role,
            candidates,
            streams: Vec::new(),
            next_stream: 0,
            actions: VecDeque::new(),
            auth_error: None,
            finished: false,
            relay: Relay::Off,
            relay_tried: None,
            direct: true,
            relayed: false,
        }
    }

    /// Adds the relay fallback: [`Action::DialRelay`] at `at` (the rendezvous's ticket says
    /// when), to the relay at `addr`. Whichever stream authenticates first serves; a relayed
    /// session then moves to a direct stream if one authenticates before the window closes.
    pub fn with_relay(mut self, at: Instant, addr: SocketAddr) -> Self {
        self.relay = Relay::Waiting(at);
        self.relay_tried = Some(Tried {
            addr,
            dials: 0,
            last_error: None,
        });
        self
    }

    /// No direct streams: no dials, and streams the listener accepts are abandoned (to test
    /// or diagnose the relay). Without a relay the attempt can only time out.
    pub fn relay_only(mut self) -> Self {
        self.direct = false;
        self.candidates.clear();
        self
    }

    /// When the attempt stops dialing and taking new streams.
    pub fn deadline(&self) -> Instant {
        self.schedule.start + self.schedule.window
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// Whether the attempt has decided (established or failed); it then does nothing more.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next action to carry out now, if any. Call until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        self.expire(now);
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if self.finished || self.is_expired(now) {
            return None;
        }
        if matches!(self.relay, Relay::Waiting(at) if at <= now) && !self.relayed {
            self.relay = Relay::Dialing;
            if let Some(t) = self.relay_tried.as_mut() {
                t.dials += 1;
            }
            return Some(Action::DialRelay);
        }
        let c = self
            .candidates
            .iter_mut()
            .find(|c| matches!(c.state, State::Waiting(at) if at <= now))?;
        c.state = State::Dialing;
        c.tried.dials += 1;
        Some(Action::Dial(c.tried.addr))
    }

    /// When the driver should call [`Attempt::poll`] again if nothing is reported before.
    pub fn poll_timeout(&self) -> Instant {
        let deadline = self.deadline();
        let dials = self
            .candidates
            .iter()
            .filter_map(|c| match c.state {
                State::Waiting(at) => Some(at),
                _ => None,
            })
            .min()
            .unwrap_or(deadline)
            .min(deadline);
        let dials = match self.relay {
            Relay::Waiting(at) => dials.min(at),
            _ => dials,
        };
        self.streams
            .iter()
            .filter_map(|e| match e.step {
                Step::Authenticating(until) | Step::Confirming(until) | Step::Held(until) => {
                    Some(until)
                }
                Step::Backup => None,
            })
            .fold(dials, Instant::min)
    }

    /// Streams past their timeouts are abandoned; at the deadline, with no stream left, the
    /// attempt fails.
    fn expire(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        let expired: Vec<(StreamId, Step)> = self
            .streams
            .iter()
            .filter(|e| {
                matches!(e.step, Step::Authenticating(t) | Step::Confirming(t) | Step::Held(t) if t <= now)
            })
            .map(|e| (e.id, e.step))
            .collect();
        for (id, step) in expired {
            let Some(entry) = self.remove(id) else {
                continue;
            };
            self.actions.push_back(Action::Abandon(id));
            let (Step::Authenticating(at) | Step::Confirming(at) | Step::Held(at)) = step else {
                continue;
            };
            let confirming = matches!(step, Step::Confirming(_) | Step::Held(_));
            if entry.relayed {
                let error = if confirming {
                    CandidateError::ConfirmTimedOut
                } else {
                    CandidateError::AuthTimedOut
                };
                if let Some(t) = self.relay_tried.as_mut() {
                    t.last_error = Some(error);
                }
            } else if entry.dialed {
                let error = if confirming {
                    CandidateError::ConfirmTimedOut
                } else {
                    CandidateError::AuthTimedOut
                };
                self.redial(entry.addr, at, error);
            }
            if confirming {
                self.confirm_next(now);
            }
        }
        if self.is_expired(now) && self.streams.is_empty() && self.relay != Relay::Dialing {
            self.finished = true;
            if self.relayed {
                // The relayed session serves; no direct stream this time.
                return;
            }
            let gave_up = match self.auth_error.take() {
                Some((addr, error)) => GaveUp::AuthFailed { addr, error },
                None => GaveUp::Timeout {
                    tried: self.tried(),
                },
            };
            self.actions.push_back(Action::Fail(gave_up));
        }
    }

    fn candidate(&mut self, addr: SocketAddr) -> Option<&mut Candidate> {
        self.candidates.iter_mut().find(|c| c.tried.addr == addr)
    }

    /// Takes the stream out of the attempt, with any work on it still queued (its outcome
    /// came, or it timed out, before the driver drained the action).
    fn remove(&mut self, id: StreamId) -> Option<Entry> {
        let i = self.streams.iter().position(|e| e.id == id)?;
        self.actions
            .retain(|a| !matches!(a, Action::Authenticate(x) | Action::Confirm(x) if *x == id));
        Some(self.streams.remove(i))
    }

    /// The stream dialed to `addr` is gone: dial the candidate again `retry_interval` after
    /// `at`.
    fn redial(&mut self, addr: SocketAddr, at: Instant, error: CandidateError) {
        let retry = at + self.schedule.retry_interval;
        if let Some(c) = self.candidate(addr) {
            c.tried.last_error = Some(error);
            c.state = State::Waiting(retry);
        }
    }

    /// A dial failed: redial at once if it was refused and the fast budget lasts, else after
    /// the retry interval; a local candidate never at once, and not after [`LOCAL_REFUSALS`].
    pub fn on_dial_failed(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        failure: Failure,
        error: std::io::ErrorKind,
    ) {
        let paced = now + self.schedule.retry_interval;
        if let Some(c) = self.candidate(addr) {
            c.tried.last_error = Some(CandidateError::Dial(error));
            if c.state == State::Dialing {
                let refused = failure == Failure::Refused;
                let fast = refused && !c.local && c.refusals < FAST_REDIALS;
                c.refusals += u32::from(refused);
                c.state = if c.local && c.refusals >= LOCAL_REFUSALS {
                    State::Failed
                } else {
                    State::Waiting(if fast { now } else { paced })
                };
            }
        }
    }

    fn new_stream(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        dialed: bool,
        relayed: bool,
    ) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        // A relay connection opened before the deadline may finish after it.
        let late = self.is_expired(now) && !relayed;
        if self.finished || late || (!relayed && !self.direct) {
            self.actions.push_back(Action::Abandon(id));
        } else {
            self.streams.push(Entry {
                id,
                addr,
                dialed,
                relayed,
                step: Step::Authenticating(now + self.schedule.auth_timeout),
            });
            self.actions.push_back(Action::Authenticate(id));
        }
        id
    }

    /// A dial to `addr` connected. Returns the id of its stream, to be authenticated (or
    /// abandoned: after the deadline, or for a candidate with no dial in flight).
    pub fn on_connected(&mut self, now: Instant, addr: SocketAddr) -> StreamId {
        let dialing = self
            .candidates
            .iter()
            .any(|c| c.tried.addr == addr && c.state == State::Dialing);
        if !dialing {
            let id = self.next_stream;
            self.next_stream += 1;
            self.actions.push_back(Action::Abandon(id));
            return id;
        }
        let id = self.new_stream(now, addr, true, false);
        if self.streams.iter().any(|e| e.id == id) {
            if let Some(c) = self.candidate(addr) {
                c.state = State::Connected(id);
            }
        }
        id
    }

    /// The listener accepted a stream for this punch from `from`. Returns its id.
    pub fn on_accepted(&mut self, now: Instant, from: SocketAddr) -> StreamId {
        self.new_stream(now, from, false, false)
    }

    /// The relay connection is open and our ticket sent. Returns its stream's id, to be
    /// authenticated like any other (or abandoned, when a direct stream already won).
    pub fn on_relay_connected(&mut self, now: Instant) -> StreamId {
        if self.relay != Relay::Dialing {
            let id = self.next_stream;
            self.next_stream += 1;
            self.actions.push_back(Action::Abandon(id));
            return id;
        }
        self.relay = Relay::Used;
        let addr = self
            .relay_tried
            .as_ref()
            .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |t| t.addr);
        self.new_stream(now, addr, false, true)
    }

    /// The relay connection could not be opened. It is not retried: the relay is the
    /// rendezvous, which this client reached a moment ago.
    pub fn on_relay_failed(&mut self, _now: Instant, error: std::io::ErrorKind) {
        if self.relay == Relay::Dialing {
            self.relay = Relay::Used;
            if let Some(t) = self.relay_tried.as_mut() {
                t.last_error = Some(CandidateError::Dial(error));
            }
        }
    }

    /// The stream's far end proved it holds the expected key.
    pub fn on_authenticated(&mut self, now: Instant, id: StreamId) {
        let confirming = self
            .streams
            .iter()
            .any(|e| matches!(e.step, Step::Confirming(_)));
        let Some(entry) = self.streams.iter_mut().find(|e| e.id == id) else {
            return;
        };
        if !matches!(entry.step, Step::Authenticating(_)) {
            return;
        }
        // The initiator confirms one stream at a time (the responder takes the first CONFIRM
        // that arrives, so a second would be ignored); the responder waits on all of them.
        if self.role == Role::Initiator && confirming {
            entry.step = Step::Backup;
        } else {
            entry.step = Step::Confirming(now + CONFIRM_TIMEOUT);
            self.actions
                .push_back(if self.role == Role::Initiator && self.relayed {
                    Action::ConfirmUpgrade(id)
                } else {
                    Action::Confirm(id)
                });
        }
    }

    /// The stream did not authenticate (the driver has dropped it). A wrong key stays wrong,
    /// and a far end that is not speaking the punch protocol (bad preamble) is some other
    /// service: neither address is dialed again. A stream that merely broke is redialed.
    pub fn on_auth_failed(&mut self, now: Instant, id: StreamId, error: AuthError) {
        let Some(entry) = self.streams.iter().find(|e| e.id == id) else {
            return;
        };
        if !matches!(entry.step, Step::Authenticating(_)) {
            return;
        }
        let Some(entry) = self.remove(id) else { return };
        if entry.relayed {
            // The relay refused, or the far end failed authentication through it.
            if let Some(t) = self.relay_tried.as_mut() {
                t.last_error = Some(CandidateError::Auth(error.kind()));
            }
            if error.is_final() && self.auth_error.is_none() {
                self.auth_error = Some((entry.addr, error));
            }
            return;
        }
        let final_ = error.is_final();
        let foreign = matches!(error, AuthError::Preamble);
        if entry.dialed {
            if final_ || foreign {
                if let Some(c) = self.candidate(entry.addr) {
                    c.tried.last_error = Some(CandidateError::Auth(error.kind()));
                    c.state = State::Failed;
                }
            } else {
                self.redial(entry.addr, now, CandidateError::Auth(error.kind()));
            }
        }
        if final_ && self.auth_error.is_none() {
            self.auth_error = Some((entry.addr, error));
        }
    }

    /// The confirm went through on the stream (initiator: sent; responder: the plain
    /// confirm arrived): it wins. A relayed winner starts the session on the relay
    /// ([`Action::Relayed`]) and the attempt goes on for a direct stream; the initiator's
    /// confirm on a direct stream after that is the upgrade ([`Action::Upgrade`]).
    pub fn on_confirmed(&mut self, now: Instant, id: StreamId) {
        let Some(entry) = self
            .streams
            .iter()
            .find(|e| e.id == id && matches!(e.step, Step::Confirming(_)))
        else {
            return;
        };
        if self.finished {
            return;
        }
        if self.relayed {
            // Initiator: the upgrade confirm went out. (A responder takes upgrades only
            // through `on_upgrade_confirmed`; a plain confirm now is not from the protocol.)
            if self.role == Role::Initiator && !entry.relayed {
                self.finish(id, Action::Upgrade(id));
            }
            return;
        }
        if !entry.relayed {
            self.finish(id, Action::Established(id));
            return;
        }
        // The session starts on the relay; direct streams carry on.
        self.relayed = true;
        self.remove(id);
        for e in std::mem::take(&mut self.streams) {
            if e.relayed {
                self.actions.push_back(Action::Abandon(e.id));
            } else {
                self.streams.push(e);
            }
        }
        self.actions.push_back(Action::Relayed(id));
        if self.role == Role::Initiator {
            self.confirm_next(now);
        } else if let Some(held) = self
            .streams
            .iter()
            .find(|e| matches!(e.step, Step::Held(_)))
        {
            let held = held.id;
            self.finish(held, Action::Upgrade(held));
        }
    }

    /// Responder: the upgrade confirm arrived on a direct stream. After the relayed session
    /// started it moves there; before (the relayed confirm is slower than the direct one),
    /// it waits for the relayed confirm.
    pub fn on_upgrade_confirmed(&mut self, now: Instant, id: StreamId) {
        if self.finished || self.role != Role::Responder {
            return;
        }
        let Some(entry) = self
            .streams
            .iter_mut()
            .find(|e| e.id == id && !e.relayed && matches!(e.step, Step::Confirming(_)))
        else {
            return;
        };
        if self.relayed {
            self.finish(id, Action::Upgrade(id));
        } else {
            entry.step = Step::Held(now + CONFIRM_TIMEOUT);
        }
    }

    /// The attempt ends with `last` on stream `keep`; every other stream is abandoned first.
    fn finish(&mut self, keep: StreamId, last: Action) {
        self.finished = true;
        for e in std::mem::take(&mut self.streams) {
            if e.id != keep {
                self.actions.push_back(Action::Abandon(e.id));
            }
        }
        self.actions.push_back(last);
    }

    /// The confirm failed on the stream (the driver has dropped it): the initiator confirms
    /// its next backup; a dialed candidate is dialed again. `error` goes into [`Tried`] only:
    /// the far end had proved its key, so this is not an authentication failure.
    pub fn on_confirm_failed(&mut self, now: Instant, id: StreamId, error: AuthError) {
        let confirming = self
            .streams
            .iter()
            .any(|e| e.id == id && matches!(e.step, Step::Confirming(_)));
        if !confirming {
            return;
        }
        let Some(entry) = self.remove(id) else { return };
        if entry.relayed {
            if let Some(t) = self.relay_tried.as_mut() {
                t.last_error = Some(CandidateError::Confirm(error.kind()));
            }
        } else if entry.dialed {
            self.redial(entry.addr, now, CandidateError::Confirm(error.kind()));
        }
        self.confirm_next(now);
    }

    /// Initiator: confirms the oldest backup stream, if no confirm is in progress.
    fn confirm_next(&mut self, now: Instant) {
        if self
            .streams
            .iter()
            .any(|e| matches!(e.step, Step::Confirming(_)))
        {
            return;
        }
        if let Some(e) = self.streams.iter_mut().find(|e| e.step == Step::Backup) {
            e.step = Step::Confirming(now + CONFIRM_TIMEOUT);
            self.actions.push_back(if self.relayed {
                Action::ConfirmUpgrade(e.id)
            } else {
                Action::Confirm(e.id)
            });
        }
    }

    /// The address a stream came from (its candidate if dialed, the peer's address if
    /// accepted), while the stream is part of the attempt.
    pub fn stream_addr(&self, id: StreamId) -> Option<SocketAddr> {
        self.streams.iter().find(|e| e.id == id).map(|e| e.addr)
    }

    /// Whether the stream runs through the relay.
    pub fn is_relayed(&self, id: StreamId) -> bool {
        self.streams.iter().any(|e| e.id == id && e.relayed)
    }

    /// What was tried, for the error report: the candidates, then the relay (if any).
    pub fn tried(&self) -> Vec<Tried> {
        self.candidates
            .iter()
            .map(|c| c.tried.clone())
            .chain(self.relay_tried.iter().filter(|t| t.dials > 0).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn schedule(start: Instant, window: Duration, retry_interval: Duration) -> Schedule {
        Schedule {
            start,
            window,
            retry_interval,
            auth_timeout: ms(1000),
        }
    }

    /// Every action due now.
    fn drain(a: &mut Attempt, now: Instant) -> Vec<Action> {
        std::iter::from_fn(|| a.poll(now)).collect()
    }

    /// The next action, which must be a dial (or nothing).
    fn dial(a: &mut Attempt, now: Instant) -> Option<SocketAddr> {
        match a.poll(now) {
            Some(Action::Dial(x)) => Some(x),
            None => None,
            other => panic!("expected a dial, got {other:?}"),
        }
    }

    fn wrong_key() -> AuthError {
        AuthError::StaleSession {
            expected: 1,
            found: 2,
        }
    }

    #[test]
    fn dials_all_then_paces_retries_until_window_closes() {
        let t0 = Instant::now();
        let mut a = Attempt::new(
            schedule(t0 + ms(100), ms(1000), ms(300)),
            Role::Initiator,
            [
                addr("203.0.113.1:1"),
                addr("10.0.0.2:1"),
                addr("203.0.113.1:1"),
            ],
        );
        assert_eq!(dial(&mut a, t0), None, "nothing before the agreed moment");
        assert_eq!(a.poll_timeout(), t0 + ms(100));
        let now = t0 + ms(100);
        assert_eq!(dial(&mut a, now), Some(addr("203.0.113.1:1")));
        assert_eq!(dial(&mut a, now), Some(addr("10.0.0.2:1")));
        assert_eq!(dial(&mut a, now), None, "duplicates removed, none due");
        // The public address times out: redialed 300 ms later, not before.
        a.on_dial_failed(
            now + ms(5),
            addr("203.0.113.1:1"),
            Failure::Other,
            std::io::ErrorKind::TimedOut,
        );
        assert_eq!(a.poll_timeout(), now + ms(305));
        assert_eq!(dial(&mut a, now + ms(200)), None);
        assert_eq!(dial(&mut a, now + ms(305)), Some(addr("203.0.113.1:1")));
        // The LAN address connects but holds the wrong key: never dialed again.
        let lan = a.on_connected(now + ms(306), addr("10.0.0.2:1"));
        assert!(
            matches!(drain(&mut a, now + ms(306))[..], [Action::Authenticate(id)] if id == lan)
        );
        a.on_auth_failed(now + ms(310), lan, wrong_key());
        a.on_dial_failed(
            now + ms(400),
            addr("203.0.113.1:1"),
            Failure::Other,
            std::io::ErrorKind::TimedOut,
        );
        let mut dial_times = Vec::new();
        for step in 0..32u64 {
            let t = now + ms(400 + step * 50);
            if t >= a.deadline() {
                break;
            }
            if let Some(x) = dial(&mut a, t) {
                assert_eq!(x, addr("203.0.113.1:1"));
                dial_times.push(t - now);
                a.on_dial_failed(t, x, Failure::Other, std::io::ErrorKind::TimedOut);
            }
        }
        assert_eq!(
            dial_times,
            [ms(700)],
            "the redial due at 1000 ms meets the closed window"
        );
        assert!(a.is_expired(now + ms(1000)));
        let tried = a.tried();
        assert_eq!(tried[0].dials, 3);
        assert_eq!(
            tried[1].last_error,
            Some(CandidateError::Auth(AuthErrorKind::StaleSession))
        );
        assert_eq!(
            tried[0].last_error,
            Some(CandidateError::Dial(std::io::ErrorKind::TimedOut))
        );
    }

    #[test]
    fn refused_dials_are_redialed_at_once_then_paced() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(10_000), ms(250)), Role::Initiator, [peer]);
        let mut t = t0;
        for i in 0..FAST_REDIALS {
            assert_eq!(dial(&mut a, t), Some(peer), "fast redial {i}");
            assert_eq!(dial(&mut a, t), None, "one dial in flight at a time");
            t += ms(1);
            a.on_dial_failed(
                t,
                peer,
                Failure::Refused,
                std::io::ErrorKind::ConnectionRefused,
            );
        }
        assert_eq!(dial(&mut a, t), Some(peer));
        a.on_dial_failed(
            t,
            peer,
            Failure::Refused,
            std::io::ErrorKind::ConnectionRefused,
        );
        assert_eq!(dial(&mut a, t), None, "budget used: paced now");
        assert_eq!(a.poll_timeout(), t + ms(250));
        assert_eq!(a.tried()[0].dials, FAST_REDIALS + 1);
    }

    /// Runs an attempt in which every dial is refused at once, polling every millisecond
    /// over the whole window; returns the dials per candidate.
    fn dials_when_everything_refuses(a: &mut Attempt, t0: Instant) -> Vec<u32> {
        let mut t = t0;
        while !a.is_expired(t) {
            while let Some(action) = a.poll(t) {
                if let Action::Dial(x) = action {
                    a.on_dial_failed(
                        t,
                        x,
                        Failure::Refused,
                        std::io::ErrorKind::ConnectionRefused,
                    );
                }
            }
            t += ms(1);
        }
        a.tried().iter().map(|c| c.dials).collect()
    }

    #[test]
    fn local_candidates_get_no_fast_redials_and_few_refusals() {
        let t0 = Instant::now();
        let observed = addr("203.0.113.9:7");
        let locals = [addr("10.0.0.5:22"), addr("10.0.0.6:80"), observed];
        let mut a = Attempt::with_local(
            schedule(t0, ms(12_500), ms(250)),
            Role::Responder,
            [observed],
            locals,
        );
        let dials = dials_when_everything_refuses(&mut a, t0);
        // The observed address: 1 + FAST_REDIALS at once (within the first millisecond),
        // then one every 250 ms. The locals (the duplicate of the observed one stays
        // observed): LOCAL_REFUSALS each, 250 ms apart, then never again.
        assert_eq!(dials.len(), 3);
        assert_eq!(dials[0], 1 + FAST_REDIALS + 12_499 / 250);
        assert_eq!(dials[1..], [LOCAL_REFUSALS, LOCAL_REFUSALS]);
        let mut b = Attempt::with_local(
            schedule(t0, ms(12_500), ms(250)),
            Role::Responder,
            [observed],
            [addr("10.0.0.5:22")],
        );
        assert_eq!(
            b.poll(t0)
                .map(|x| matches!(x, Action::Dial(d) if d == observed)),
            Some(true)
        );
        assert!(matches!(b.poll(t0), Some(Action::Dial(_))));
        b.on_dial_failed(
            t0,
            addr("10.0.0.5:22"),
            Failure::Refused,
            std::io::ErrorKind::ConnectionRefused,
        );
        assert!(
            b.poll(t0).is_none(),
            "a refused local is not redialed at once"
        );
        assert_eq!(b.poll_timeout(), t0 + ms(250));
    }

    #[test]
    fn a_candidate_answering_with_foreign_bytes_is_not_redialed() {
        let t0 = Instant::now();
        let (observed, ssh) = (addr("203.0.113.9:7"), addr("10.0.0.5:22"));
        let mut a = Attempt::with_local(
            schedule(t0, ms(5000), ms(250)),
            Role::Initiator,
            [observed],
            [ssh],
        );
        assert_eq!(dial(&mut a, t0), Some(observed));
        assert_eq!(dial(&mut a, t0), Some(ssh));
        let s = a.on_connected(t0 + ms(1), ssh);
        drain(&mut a, t0 + ms(1));
        a.on_auth_failed(t0 + ms(2), s, AuthError::Preamble);
        // Also the observed address, should a non-punch service sit there.
        let o = a.on_connected(t0 + ms(3), observed);
        drain(&mut a, t0 + ms(3));
        a.on_auth_failed(t0 + ms(4), o, AuthError::Preamble);
        let mut t = t0 + ms(4);
        while t < a.deadline() {
            assert_eq!(dial(&mut a, t), None, "redialed at {:?}", t - t0);
            t += ms(50);
        }
        let tried = a.tried();
        assert_eq!((tried[0].dials, tried[1].dials), (1, 1));
        assert_eq!(
            tried[1].last_error,
            Some(CandidateError::Auth(AuthErrorKind::Preamble))
        );
        // Not a wrong key: the attempt ends in a timeout, not an authentication failure.
        let deadline = a.deadline();
        assert!(matches!(
            drain(&mut a, deadline)[..],
            [Action::Fail(GaveUp::Timeout { .. })]
        ));
    }

    #[test]
    fn initiator_confirms_the_first_authenticated_stream_and_abandons_the_rest() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Initiator, [peer]);
        assert_eq!(dial(&mut a, t0), Some(peer));
        let out = a.on_connected(t0 + ms(10), peer);
        let inb = a.on_accepted(t0 + ms(11), addr("203.0.113.9:40000"));
        assert!(matches!(
            drain(&mut a, t0 + ms(11))[..],
            [Action::Authenticate(x), Action::Authenticate(y)] if x == out && y == inb
        ));
        // Both authenticate; the outbound one first: it is confirmed, the inbound waits.
        a.on_authenticated(t0 + ms(20), out);
        a.on_authenticated(t0 + ms(21), inb);
        assert!(matches!(drain(&mut a, t0 + ms(21))[..], [Action::Confirm(x)] if x == out));
        a.on_confirmed(t0 + ms(22), out);
        assert!(matches!(
            drain(&mut a, t0 + ms(22))[..],
            [Action::Abandon(x), Action::Established(y)] if x == inb && y == out
        ));
        assert!(a.is_finished());
        // Nothing more happens: a late stream is abandoned, no dials, no failure.
        let late = a.on_accepted(t0 + ms(30), addr("203.0.113.9:40001"));
        assert!(matches!(drain(&mut a, t0 + ms(6000))[..], [Action::Abandon(x)] if x == late));
    }

    #[test]
    fn initiator_falls_back_to_the_backup_when_a_confirm_fails() {
        let t0 = Instant::now();
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Initiator, []);
        let first = a.on_accepted(t0, addr("198.51.100.1:1"));
        let second = a.on_accepted(t0, addr("198.51.100.1:2"));
        drain(&mut a, t0);
        a.on_authenticated(t0 + ms(1), first);
        a.on_authenticated(t0 + ms(2), second);
        assert!(matches!(drain(&mut a, t0 + ms(2))[..], [Action::Confirm(x)] if x == first));
        a.on_confirm_failed(t0 + ms(3), first, AuthError::Closed);
        assert!(matches!(drain(&mut a, t0 + ms(3))[..], [Action::Confirm(x)] if x == second));
        a.on_confirmed(t0 + ms(4), second);
        assert!(matches!(drain(&mut a, t0 + ms(4))[..], [Action::Established(x)] if x == second));
    }

    #[test]
    fn responder_takes_the_stream_the_confirm_arrives_on() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Responder, [peer]);
        assert_eq!(dial(&mut a, t0), Some(peer));
        let out = a.on_connected(t0, peer);
        let inb = a.on_accepted(t0, addr("203.0.113.9:40000"));
        drain(&mut a, t0);
        a.on_authenticated(t0 + ms(1), out);
        a.on_authenticated(t0 + ms(1), inb);
        assert!(matches!(
            drain(&mut a, t0 + ms(1))[..],
            [Action::Confirm(x), Action::Confirm(y)] if x == out && y == inb
        ));
        a.on_confirmed(t0 + ms(2), inb);
        assert!(matches!(
            drain(&mut a, t0 + ms(2))[..],
            [Action::Abandon(x), Action::Established(y)] if x == out && y == inb
        ));
    }

    #[test]
    fn a_confirm_that_never_comes_times_out_and_the_address_is_redialed() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(60_000), ms(250)), Role::Responder, [peer]);
        assert_eq!(dial(&mut a, t0), Some(peer));
        let s = a.on_connected(t0, peer);
        drain(&mut a, t0);
        a.on_authenticated(t0 + ms(10), s);
        assert!(matches!(drain(&mut a, t0 + ms(10))[..], [Action::Confirm(x)] if x == s));
        let timeout = t0 + ms(10) + CONFIRM_TIMEOUT;
        assert_eq!(a.poll_timeout(), timeout, "the confirm is bounded");
        assert!(drain(&mut a, timeout - ms(1)).is_empty());
        assert!(matches!(drain(&mut a, timeout)[..], [Action::Abandon(x)] if x == s));
        assert_eq!(
            a.tried()[0].last_error,
            Some(CandidateError::ConfirmTimedOut)
        );
        assert_eq!(a.poll_timeout(), timeout + ms(250));
        assert_eq!(dial(&mut a, timeout + ms(250)), Some(peer));
        // A report for the abandoned stream changes nothing.
        a.on_confirmed(timeout + ms(251), s);
        assert!(drain(&mut a, timeout + ms(251)).is_empty());
    }

    #[test]
    fn authentication_is_bounded() {
        let t0 = Instant::now();
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Initiator, []);
        let s = a.on_accepted(t0, addr("198.51.100.1:1"));
        drain(&mut a, t0);
        assert_eq!(a.poll_timeout(), t0 + ms(1000));
        assert!(matches!(drain(&mut a, t0 + ms(1000))[..], [Action::Abandon(x)] if x == s));
    }

    #[test]
    fn a_wrong_key_everywhere_does_not_end_the_window_early() {
        // Unsound to stop early: the peer's own dial may still reach our listener.
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(2000), ms(250)), Role::Responder, [peer]);
        assert_eq!(dial(&mut a, t0), Some(peer));
        let s = a.on_connected(t0, peer);
        drain(&mut a, t0);
        a.on_auth_failed(t0 + ms(5), s, wrong_key());
        assert!(
            drain(&mut a, t0 + ms(1500)).is_empty(),
            "waits for the window"
        );
        assert_eq!(a.poll_timeout(), t0 + ms(2000));
        let genuine = a.on_accepted(t0 + ms(1500), addr("203.0.113.9:41000"));
        assert!(
            matches!(drain(&mut a, t0 + ms(1500))[..], [Action::Authenticate(x)] if x == genuine)
        );
        a.on_authenticated(t0 + ms(1600), genuine);
        drain(&mut a, t0 + ms(1600));
        a.on_confirmed(t0 + ms(1700), genuine);
        assert!(
            matches!(drain(&mut a, t0 + ms(1700))[..], [Action::Established(x)] if x == genuine)
        );
    }

    #[test]
    fn error_precedence_wrong_key_over_timeout_and_first_wrong_key_wins() {
        let t0 = Instant::now();
        let (p1, p2) = (addr("203.0.113.9:7"), addr("10.0.0.9:7"));
        let mut a = Attempt::new(schedule(t0, ms(2000), ms(250)), Role::Initiator, [p1, p2]);
        assert_eq!(dial(&mut a, t0), Some(p1));
        assert_eq!(dial(&mut a, t0), Some(p2));
        let s1 = a.on_connected(t0, p1);
        let s2 = a.on_connected(t0, p2);
        drain(&mut a, t0);
        a.on_auth_failed(t0 + ms(1), s2, AuthError::Closed);
        a.on_auth_failed(t0 + ms(2), s1, wrong_key());
        let inb = a.on_accepted(t0 + ms(3), addr("198.51.100.7:9"));
        drain(&mut a, t0 + ms(3));
        a.on_auth_failed(t0 + ms(4), inb, AuthError::Preamble);
        // A stream still authenticating at the deadline may finish; then the attempt fails.
        let last = a.on_accepted(t0 + ms(1999), addr("198.51.100.8:9"));
        drain(&mut a, t0 + ms(1999));
        assert!(
            !drain(&mut a, t0 + ms(2000))
                .iter()
                .any(|x| matches!(x, Action::Fail(_) | Action::Dial(_))),
            "no dial and no verdict while a stream authenticates"
        );
        a.on_auth_failed(t0 + ms(2100), last, wrong_key());
        match &drain(&mut a, t0 + ms(2100))[..] {
            [Action::Fail(GaveUp::AuthFailed { addr, error })] => {
                assert_eq!(*addr, p1, "the first wrong key");
                assert!(error.is_final());
            }
            other => panic!("expected AuthFailed, got {other:?}"),
        }
        assert!(a.is_finished());

        // Only broken streams: a timeout naming what was tried.
        let mut b = Attempt::new(schedule(t0, ms(2000), ms(250)), Role::Initiator, [p1]);
        assert_eq!(dial(&mut b, t0), Some(p1));
        let s = b.on_connected(t0, p1);
        drain(&mut b, t0);
        b.on_auth_failed(t0 + ms(1), s, AuthError::Closed);
        match &drain(&mut b, t0 + ms(2000))[..] {
            [Action::Fail(GaveUp::Timeout { tried })] => {
                assert_eq!(tried[0].addr, p1);
                assert_eq!(tried[0].dials, 1);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    const RELAY: &str = "198.51.100.250:7717";

    #[test]
    fn the_relay_is_dialed_at_its_time_and_a_relayed_session_moves_to_a_later_direct_stream() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Initiator, [peer])
            .with_relay(t0 + ms(100), addr(RELAY));
        assert_eq!(dial(&mut a, t0), Some(peer));
        assert_eq!(a.poll_timeout(), t0 + ms(100), "wakes for the relay");
        assert!(drain(&mut a, t0 + ms(99)).is_empty());
        assert!(matches!(
            drain(&mut a, t0 + ms(100))[..],
            [Action::DialRelay]
        ));
        let r = a.on_relay_connected(t0 + ms(110));
        assert!(matches!(drain(&mut a, t0 + ms(110))[..], [Action::Authenticate(x)] if x == r));
        assert!(a.is_relayed(r));
        a.on_authenticated(t0 + ms(150), r);
        assert!(matches!(drain(&mut a, t0 + ms(150))[..], [Action::Confirm(x)] if x == r));
        a.on_confirmed(t0 + ms(151), r);
        assert!(matches!(drain(&mut a, t0 + ms(151))[..], [Action::Relayed(x)] if x == r));
        assert!(!a.is_finished(), "the attempt goes on for a direct stream");
        // The direct dial keeps being retried, and its stream becomes the upgrade.
        a.on_dial_failed(
            t0 + ms(200),
            peer,
            Failure::Other,
            std::io::ErrorKind::TimedOut,
        );
        assert_eq!(dial(&mut a, t0 + ms(450)), Some(peer));
        let d = a.on_connected(t0 + ms(460), peer);
        drain(&mut a, t0 + ms(460));
        a.on_authenticated(t0 + ms(470), d);
        assert!(matches!(drain(&mut a, t0 + ms(470))[..], [Action::ConfirmUpgrade(x)] if x == d));
        a.on_confirmed(t0 + ms(471), d);
        assert!(matches!(drain(&mut a, t0 + ms(471))[..], [Action::Upgrade(x)] if x == d));
        assert!(a.is_finished());
    }

    #[test]
    fn a_direct_stream_before_the_relay_time_means_no_relay_connection() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Initiator, [peer])
            .with_relay(t0 + ms(100), addr(RELAY));
        assert_eq!(dial(&mut a, t0), Some(peer));
        let d = a.on_connected(t0 + ms(5), peer);
        drain(&mut a, t0 + ms(5));
        a.on_authenticated(t0 + ms(10), d);
        drain(&mut a, t0 + ms(10));
        a.on_confirmed(t0 + ms(11), d);
        assert!(matches!(drain(&mut a, t0 + ms(11))[..], [Action::Established(x)] if x == d));
        assert!(
            drain(&mut a, t0 + ms(200)).is_empty(),
            "no relay dial after the win"
        );
        assert_eq!(a.tried().len(), 1, "the relay was never tried");
    }

    #[test]
    fn a_direct_stream_that_authenticates_while_the_relay_confirms_is_its_upgrade() {
        // Initiator: the relayed stream is being confirmed when the direct one authenticates:
        // the direct one waits as a backup and is confirmed as the upgrade.
        let t0 = Instant::now();
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Initiator, [])
            .with_relay(t0, addr(RELAY));
        assert!(matches!(drain(&mut a, t0)[..], [Action::DialRelay]));
        let r = a.on_relay_connected(t0 + ms(1));
        let d = a.on_accepted(t0 + ms(1), addr("203.0.113.9:4000"));
        drain(&mut a, t0 + ms(1));
        a.on_authenticated(t0 + ms(2), r);
        a.on_authenticated(t0 + ms(3), d);
        assert!(matches!(drain(&mut a, t0 + ms(3))[..], [Action::Confirm(x)] if x == r));
        a.on_confirmed(t0 + ms(4), r);
        assert!(matches!(
            drain(&mut a, t0 + ms(4))[..],
            [Action::Relayed(x), Action::ConfirmUpgrade(y)] if x == r && y == d
        ));
        a.on_confirmed(t0 + ms(5), d);
        assert!(matches!(drain(&mut a, t0 + ms(5))[..], [Action::Upgrade(x)] if x == d));
    }

    #[test]
    fn responder_holds_an_upgrade_that_beats_the_relayed_confirm() {
        let t0 = Instant::now();
        let mut a = Attempt::new(schedule(t0, ms(5000), ms(250)), Role::Responder, [])
            .with_relay(t0, addr(RELAY));
        assert!(matches!(drain(&mut a, t0)[..], [Action::DialRelay]));
        let r = a.on_relay_connected(t0 + ms(1));
        let d = a.on_accepted(t0 + ms(1), addr("203.0.113.9:4000"));
        drain(&mut a, t0 + ms(1));
        a.on_authenticated(t0 + ms(2), r);
        a.on_authenticated(t0 + ms(2), d);
        assert_eq!(drain(&mut a, t0 + ms(2)).len(), 2, "both await a confirm");
        // The upgrade confirm on the direct stream arrives first: it waits.
        a.on_upgrade_confirmed(t0 + ms(3), d);
        assert!(drain(&mut a, t0 + ms(3)).is_empty());
        a.on_confirmed(t0 + ms(9), r);
        assert!(matches!(
            drain(&mut a, t0 + ms(9))[..],
            [Action::Relayed(x), Action::Upgrade(y)] if x == r && y == d
        ));
        assert!(a.is_finished());
    }

    #[test]
    fn a_relayed_session_without_a_direct_stream_ends_the_attempt_quietly() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(2000), ms(250)), Role::Responder, [peer])
            .with_relay(t0 + ms(50), addr(RELAY));
        let mut t = t0;
        let mut relayed = false;
        while t <= t0 + ms(2500) {
            while let Some(action) = a.poll(t) {
                match action {
                    Action::Dial(x) => {
                        a.on_dial_failed(t, x, Failure::Other, std::io::ErrorKind::TimedOut)
                    }
                    Action::DialRelay => {
                        let r = a.on_relay_connected(t);
                        drain(&mut a, t);
                        a.on_authenticated(t, r);
                        drain(&mut a, t);
                        a.on_confirmed(t, r);
                    }
                    Action::Relayed(_) => relayed = true,
                    Action::Fail(f) => panic!("a relayed attempt must not fail: {f:?}"),
                    _ => {}
                }
            }
            t += ms(10);
        }
        assert!(relayed && a.is_finished());
    }

    #[test]
    fn relay_only_dials_nothing_takes_no_direct_stream_and_reports_the_relay_refusal() {
        let t0 = Instant::now();
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(schedule(t0, ms(2000), ms(250)), Role::Initiator, [peer])
            .with_relay(t0, addr(RELAY))
            .relay_only();
        assert!(matches!(drain(&mut a, t0)[..], [Action::DialRelay]));
        let inbound = a.on_accepted(t0 + ms(1), addr("203.0.113.9:4000"));
        assert!(matches!(drain(&mut a, t0 + ms(1))[..], [Action::Abandon(x)] if x == inbound));
        let r = a.on_relay_connected(t0 + ms(2));
        drain(&mut a, t0 + ms(2));
        a.on_auth_failed(
            t0 + ms(3),
            r,
            AuthError::Relay(punch_proto::relay::Refusal::Full),
        );
        match &drain(&mut a, t0 + ms(2000))[..] {
            [Action::Fail(GaveUp::Timeout { tried })] => {
                assert_eq!(tried.len(), 1);
                assert_eq!(tried[0].addr, addr(RELAY));
                assert_eq!(
                    tried[0].last_error,
                    Some(CandidateError::Auth(AuthErrorKind::Relay(
                        punch_proto::relay::Refusal::Full
                    )))
                );
            }
            other => panic!("expected a timeout naming the relay, got {other:?}"),
        }
    }
}
