//! The punch attempt scheduler: a pure state machine fed `now` and dial outcomes.
//!
//! From the moment the rendezvous set, it dials every candidate address of the peer (its
//! observed public address first, then its local addresses for peers on the same LAN), and
//! redials a candidate [`Schedule::retry_interval`] after each failure, until the window
//! closes. Routers either drop an early SYN (the kernel's own SYN retransmission, 1 s later,
//! then passes the hole our SYN opened) or answer it with a RST. A RST also moves our own
//! router's conntrack entry for the punch to CLOSE, and the peer's SYN arriving on a CLOSE entry
//! is INVALID and dropped or reset in turn: the hole has to be reopened by our next SYN before
//! the peer's arrives. So a refused dial is redialed at once, which paces itself at one round
//! trip (the RST took that long to come back), up to [`FAST_REDIALS`] times per candidate; other
//! failures, and refusals beyond that, wait [`Schedule::retry_interval`]. The driver asks
//! [`Attempt::poll_dial`] for due dials, [`Attempt::poll_timeout`] for when to wake, and reports
//! outcomes; authentication of connected streams is the driver's business.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Refused dials of one candidate that are redialed at once (see the module doc). 32 round
/// trips cover the peer's dial moment even with a few RTTs of clock or scheduling error.
pub const FAST_REDIALS: u32 = 32;

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
    /// How long after `start` the attempt gives up.
    pub window: Duration,
    /// Pause between a failed dial and the next dial of the same candidate.
    pub retry_interval: Duration,
}

/// What happened to one candidate, for logs and the timeout error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub addr: SocketAddr,
    pub dials: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Will be dialed at this time.
    Waiting(Instant),
    /// A dial is in flight.
    Dialing,
    /// Connected; the stream is being authenticated.
    Connected,
    /// Authentication failed on this address: not dialed again.
    Failed,
}

#[derive(Debug)]
struct Candidate {
    tried: Tried,
    state: State,
    refusals: u32,
}

/// One punch attempt.
#[derive(Debug)]
pub struct Attempt {
    schedule: Schedule,
    candidates: Vec<Candidate>,
}

impl Attempt {
    /// Candidates are deduplicated and kept in order (preferred first).
    pub fn new(schedule: Schedule, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut candidates: Vec<Candidate> = Vec::new();
        for addr in addrs {
            if !candidates.iter().any(|c| c.tried.addr == addr) {
                candidates.push(Candidate {
                    tried: Tried {
                        addr,
                        dials: 0,
                        last_error: None,
                    },
                    state: State::Waiting(schedule.start),
                    refusals: 0,
                });
            }
        }
        Self {
            schedule,
            candidates,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.schedule.start + self.schedule.window
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// The next candidate to dial now, if any is due. Call until it returns `None`.
    pub fn poll_dial(&mut self, now: Instant) -> Option<SocketAddr> {
        if self.is_expired(now) {
            return None;
        }
        let c = self
            .candidates
            .iter_mut()
            .find(|c| matches!(c.state, State::Waiting(at) if at <= now))?;
        c.state = State::Dialing;
        c.tried.dials += 1;
        Some(c.tried.addr)
    }

    /// When the driver should call [`Attempt::poll_dial`] again (or give up).
    pub fn poll_timeout(&self) -> Instant {
        self.candidates
            .iter()
            .filter_map(|c| match c.state {
                State::Waiting(at) => Some(at),
                _ => None,
            })
            .min()
            .unwrap_or_else(|| self.deadline())
            .min(self.deadline())
    }

    fn get(&mut self, addr: SocketAddr) -> Option<&mut Candidate> {
        self.candidates.iter_mut().find(|c| c.tried.addr == addr)
    }

    /// A dial failed: redial at once if it was refused and the fast budget lasts, else after
    /// the retry interval.
    pub fn on_dial_failed(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        failure: Failure,
        error: String,
    ) {
        let paced = now + self.schedule.retry_interval;
        if let Some(c) = self.get(addr) {
            c.tried.last_error = Some(error);
            if c.state == State::Dialing {
                let fast = failure == Failure::Refused && c.refusals < FAST_REDIALS;
                if failure == Failure::Refused {
                    c.refusals += 1;
                }
                c.state = State::Waiting(if fast { now } else { paced });
            }
        }
    }

    /// A dial connected; its stream is now being authenticated.
    pub fn on_connected(&mut self, addr: SocketAddr) {
        if let Some(c) = self.get(addr) {
            c.state = State::Connected;
        }
    }

    /// The stream from this candidate did not authenticate. A wrong key stays wrong, so the
    /// address is not dialed again; a stream that merely broke is redialed.
    pub fn on_auth_failed(&mut self, now: Instant, addr: SocketAddr, error: String, final_: bool) {
        let retry = now + self.schedule.retry_interval;
        if let Some(c) = self.get(addr) {
            c.tried.last_error = Some(error);
            c.state = if final_ {
                State::Failed
            } else {
                State::Waiting(retry)
            };
        }
    }

    /// What was tried, for the error report.
    pub fn tried(&self) -> Vec<Tried> {
        self.candidates.iter().map(|c| c.tried.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn dials_all_then_paces_retries_until_window_closes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Attempt::new(
            Schedule {
                start: t0 + ms(100),
                window: ms(1000),
                retry_interval: ms(300),
            },
            [
                addr("203.0.113.1:1"),
                addr("10.0.0.2:1"),
                addr("203.0.113.1:1"),
            ],
        );
        assert_eq!(a.poll_dial(t0), None, "nothing before the agreed moment");
        assert_eq!(a.poll_timeout(), t0 + ms(100));
        let now = t0 + ms(100);
        assert_eq!(a.poll_dial(now), Some(addr("203.0.113.1:1")));
        assert_eq!(a.poll_dial(now), Some(addr("10.0.0.2:1")));
        assert_eq!(a.poll_dial(now), None, "duplicates removed, none due");
        // The public address times out: redialed 300 ms later, not before.
        a.on_dial_failed(
            now + ms(5),
            addr("203.0.113.1:1"),
            Failure::Other,
            "timeout".into(),
        );
        assert_eq!(a.poll_timeout(), now + ms(305));
        assert_eq!(a.poll_dial(now + ms(200)), None);
        assert_eq!(a.poll_dial(now + ms(305)), Some(addr("203.0.113.1:1")));
        // The LAN address connects but holds the wrong key: never dialed again.
        a.on_connected(addr("10.0.0.2:1"));
        a.on_auth_failed(now + ms(310), addr("10.0.0.2:1"), "bad key".into(), true);
        a.on_dial_failed(
            now + ms(400),
            addr("203.0.113.1:1"),
            Failure::Other,
            "timeout".into(),
        );
        let mut dial_times = Vec::new();
        for step in 0..32u64 {
            let t = now + ms(400 + step * 50);
            if let Some(x) = a.poll_dial(t) {
                assert_eq!(x, addr("203.0.113.1:1"));
                dial_times.push(t - now);
                a.on_dial_failed(t, x, Failure::Other, "timeout".into());
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
        assert_eq!(tried[1].last_error.as_deref(), Some("bad key"));
    }

    #[test]
    fn refused_dials_are_redialed_at_once_then_paced() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let peer = addr("203.0.113.9:7");
        let mut a = Attempt::new(
            Schedule {
                start: t0,
                window: ms(10_000),
                retry_interval: ms(250),
            },
            [peer],
        );
        let mut t = t0;
        for i in 0..FAST_REDIALS {
            assert_eq!(a.poll_dial(t), Some(peer), "fast redial {i}");
            assert_eq!(a.poll_dial(t), None, "one dial in flight at a time");
            t += ms(1);
            a.on_dial_failed(t, peer, Failure::Refused, "refused".into());
        }
        assert_eq!(a.poll_dial(t), Some(peer));
        a.on_dial_failed(t, peer, Failure::Refused, "refused".into());
        assert_eq!(a.poll_dial(t), None, "budget used: paced now");
        assert_eq!(a.poll_timeout(), t + ms(250));
        assert_eq!(a.tried()[0].dials, FAST_REDIALS + 1);
    }
}
