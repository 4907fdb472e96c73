//! The control connection to the rendezvous as a pure state machine fed `(now, input)`.
//!
//! [`Control`] decides everything about the client's one control connection: when to
//! (re)connect and with what backoff, when the rendezvous has gone silent, when a connect
//! request has waited too long, and what each server message means. It does no I/O and reads
//! no clock: the driver (`crate::client`) feeds it what happened with the time it happened,
//! drains [`Control::poll_action`] in order and carries out each [`Action`], then sleeps until
//! [`Control::poll_timeout`] and calls [`Control::handle_timeout`]. Jitter comes from a
//! seeded RNG, so a run is reproducible from `(seed, inputs)`.
//!
//! Message sequence and states:
//!
//! ```text
//!  Idle --retry_at--> Connecting --on_connected--> AwaitingRegistered --Registered--> Registered
//!   ^  Connect          (driver: TCP connect from the      (server: Registered     Ping -> Pong
//!   |                    punch port, Noise XK + Register)   { observed })          Connect -> Offer | Error
//!   |                        |                               |                         |
//!   +-- backoff: doubling, --+-- timeout / failure ----------+-- timeout / refused     |
//!   |   jitter, capped                                                                 |
//!   +-- reconnect_min (jittered): silence, lost connection, malformed message ---------+
//!   +-- uniformly random in reconnect_within: GoingAway (the server restarts) ---------+
//! ```
//!
//! A rendezvous that shuts down says `GoingAway { reconnect_within }` first. That is no
//! failure: the machine comes back at a uniformly random moment in the window (from its seeded
//! RNG), so the server's peers return spread over it instead of all at once. An attempt that
//! fails (the server not up yet) is retried at a new random moment in the rest of the window,
//! and after the window with the usual backoff, afresh from `reconnect_min`.
//!
//! NAT check: a `Registered` naming a NAT check port makes the machine ask for one
//! ([`Action::NatCheck`]: a probe from the punch port, see [`crate::nat`]); the driver reports
//! the answer with [`Control::on_nat_checked`], and the machine classifies it
//! ([`crate::nat::classify`]), logs it (at info the first time and when it changes) and
//! publishes it ([`Action::SetNat`], [`Event::NatChecked`]). An offer whose two mappings rule
//! out a direct punch ([`crate::nat::direct_outlook`]) is logged as such when it arrives.
//!
//! Dial moments: pongs from the server carry its clock, which [`ServerClock`] places on ours
//! from our pings' round trips; an offer's dial moment on that clock then decides when to dial
//! (see [`crate::clock`]), and before the first such pong (or from a server that does not say)
//! the offer's `dial_delay` after its arrival does. Either way [`Action::StartPunch`] carries
//! the delay from the offer's arrival.
//!
//! Requests ([`Control::connect`], [`Control::discover`]: `Discover` -> `Discovered | Error`)
//! made while a connection attempt is under way are sent once
//! registered; between attempts they fail at once. Each waits for its offer or refusal at
//! most [`ControlConfig::request_timeout`] and fails with [`Error::RendezvousUnreachable`] if
//! the connection (or the attempt) is lost meanwhile. Request ids keep
//! growing across reconnects, so an offer quoting a request from an earlier connection never
//! matches a newer request.
//!
//! The deny list ([`crate::Denylist`]) is read here with the `now` the driver passes: a punch
//! request to a denied identity fails at once without a message, and an inbound offer from a
//! denied identity or observed IP is refused before any dial, like one the allow-list refuses.
//!
//! Time: the machine takes `std::time::Instant` values. Drivers read the tokio clock
//! (`tokio::time::Instant::now().into_std()`), so `tokio::time::pause` controls them too.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use punch_proto::message::{
    ClientMsg, ErrorCode, ErrorReply, Offer, Register, ServerMsg, MAX_ALLOW, PROTOCOL_VERSION,
};
use punch_proto::PeerId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use crate::clock::ServerClock;
use crate::config::{Allow, Config};
use crate::deny::Denylist;
use crate::error::{Error, RendezvousError};
use crate::event::{Event, Status};
use crate::nat::{self, DirectOutlook, NatBehaviour, NatCheckError};
use crate::throttle::LogThrottle;

/// The rendezvous is considered gone after this many of its ping intervals without a word:
/// one lost or late ping is normal on a congested path, three in a row are not.
pub const MISSED_PINGS: u32 = 3;
/// How much later than the offer's `dial_delay` the server's clock may place the dial: the
/// server's estimate of our one-way delay can be high by up to its cap (500 ms), and an
/// estimate of its clock further off than that is not believed.
pub const MAX_CLOCK_SHIFT: Duration = Duration::from_millis(500);
/// The silence limit is computed from at least this ping interval, so that a server announcing
/// a tiny interval does not make us drop it on the first scheduling hiccup.
pub const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);

/// What the control machine needs from the client configuration.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// For [`Error::RendezvousUnreachable`].
    pub rendezvous: SocketAddr,
    /// Sent in the registration; offers for inbound punches are ignored when off.
    pub accept_inbound: bool,
    /// Which peers' inbound offers start a punch; the others are refused before any dial.
    pub allow: Allow,
    /// Our network, sent in the registration; empty: none (then `discover` fails at once).
    pub network: String,
    /// Identities and IPs refused before any request or dial (shared with the application).
    pub deny: Denylist,
    /// TCP connect plus Noise handshake must finish in this time, and the server's
    /// `Registered` must follow within it again.
    pub handshake_timeout: Duration,
    /// How long a request waits for its offer or refusal.
    pub request_timeout: Duration,
    /// Reconnect backoff bounds (see [`Backoff`]).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl From<&Config> for ControlConfig {
    fn from(c: &Config) -> Self {
        Self {
            rendezvous: c.rendezvous,
            accept_inbound: c.accept_inbound,
            allow: c.allow.clone(),
            network: c.network.clone().unwrap_or_default(),
            deny: c.deny.clone(),
            handshake_timeout: c.auth_timeout,
            request_timeout: c.request_timeout,
            reconnect_min: c.reconnect_min,
            reconnect_max: c.reconnect_max,
        }
    }
}

impl ControlConfig {
    /// The registration sent in the third handshake message, once the connection's local
    /// address is known. It carries the allow-list, so the rendezvous refuses strangers
    /// before charging any budget and before telling us ([`Allow::Only`] of at most
    /// [`MAX_ALLOW`] ids, sorted so the message is the same each time). An empty
    /// [`Allow::Only`] serves nobody: sent as "inbound off". A list longer than
    /// [`MAX_ALLOW`] cannot be sent: the registration says "anyone" and the list is only
    /// checked here (`punch listen` refuses such a list; a warning is logged).
    pub fn register_message(&self, local: SocketAddr) -> Register {
        let (accept_inbound, allow) = match &self.allow {
            Allow::Any => (self.accept_inbound, Vec::new()),
            Allow::Only(ids) if ids.is_empty() => (false, Vec::new()),
            Allow::Only(ids) if ids.len() > MAX_ALLOW => {
                warn!(
                    allowed = ids.len(),
                    max = MAX_ALLOW,
                    "allow-list too long to register; the rendezvous will not filter for us"
                );
                (self.accept_inbound, Vec::new())
            }
            Allow::Only(ids) => {
                let mut ids: Vec<PeerId> = ids.iter().copied().collect();
                ids.sort_unstable_by_key(|id| *id.as_bytes());
                (self.accept_inbound, ids)
            }
        };
        Register {
            version: PROTOCOL_VERSION,
            local_addrs: vec![local],
            accept_inbound,
            allow,
            network: self.network.clone(),
            probe: false,
        }
    }
}

/// What the driver must do, in the order [`Control::poll_action`] returns them. `T` is the
/// driver's reply token of a connect request (a oneshot sender, or an id in the simulator).
#[derive(Debug)]
pub enum Action<T> {
    /// Open a control connection from the punch port and run the handshake with
    /// [`ControlConfig::register_message`]; report [`Control::on_connected`] or
    /// [`Control::on_connect_failed`].
    Connect,
    /// Drop the control connection, or abandon the connection or handshake in progress.
    Close { reason: RendezvousError },
    /// Send a message on the control connection (a failed write is [`Control::on_lost`]).
    Send(ClientMsg),
    /// The request ends without a punch (or, for [`Control::discover`], without an answer).
    Reply { token: T, error: Error },
    /// The answer to [`Control::discover`]: identities of our network, none of them denied.
    Discovered { token: T, peers: Vec<PeerId> },
    /// Start the punch `offer` describes. `reply` is the request's token (`None` for a punch
    /// another peer asked for); `started` is when the request (or the inbound offer) came.
    StartPunch {
        offer: Offer,
        reply: Option<T>,
        started: Instant,
    },
    /// The relay ended the relayed session `session_id` and says why: tell the session.
    RelayEnded {
        session_id: u64,
        reason: punch_proto::message::RelayEnd,
    },
    /// Publish an event.
    Emit(Event),
    /// Publish the new status.
    SetStatus(Status),
    /// Run a NAT check: connect from the punch port to `server`, handshake with
    /// [`crate::nat::probe_message`], read the observed address, wait for the server to close
    /// (bounded); report [`Control::on_nat_checked`]. Replaces a check still running.
    NatCheck { server: SocketAddr },
    /// Publish the NAT check's result.
    SetNat(NatBehaviour),
}

/// Reconnect delays: doubling from `min` up to `max`, each jittered to between half and all
/// of its nominal value so that many clients do not reconnect in lockstep after a restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay, jittered; the nominal delay doubles for the time after.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = jitter(self.next, rng);
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Between half and all of `d`.
pub fn jitter(d: Duration, rng: &mut impl Rng) -> Duration {
    d / 2 + d.mul_f64(rng.gen::<f64>() / 2.0)
}

/// Counters of the control connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connection attempts started.
    pub connects: u64,
    pub registrations: u64,
    /// Registered connections lost (silence, errors, closed by the server).
    pub losses: u64,
    pub requests: u64,
    pub expired: u64,
    pub refused: u64,
    pub offers: u64,
    /// Inbound offers from peers not on the allow-list (nothing dialed).
    pub inbound_refused: u64,
    /// Inbound offers from denied identities or IPs (nothing dialed).
    pub inbound_denied: u64,
    /// Punch requests to denied identities, failed without asking the rendezvous.
    pub denied: u64,
    /// `Discover` requests answered.
    pub discovered: u64,
    /// Times the rendezvous said it was going away (a restart); not counted in `losses`.
    pub going_away: u64,
    /// NAT checks finished (answered or failed).
    pub nat_checks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to reconnect.
    Idle { retry_at: Instant },
    /// The driver is connecting and running the handshake.
    Connecting { deadline: Instant },
    /// Handshake done; waiting for the server's `Registered`.
    AwaitingRegistered {
        local: SocketAddr,
        deadline: Instant,
    },
    Registered {
        observed: SocketAddr,
        local: SocketAddr,
        last_heard: Instant,
        silence_limit: Duration,
        /// Our ping to the server awaiting its pong: nonce and when it went out.
        ping: Option<(u64, Instant)>,
        /// The last round trip to the server (our ping to its pong).
        rtt: Option<Duration>,
        /// The server's clock, from our pings' round trips: offers' dial moments are on it.
        clock: ServerClock,
    },
}

/// What a request asks the rendezvous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// A punch to `peer`; `upgrade`: to move this relayed session ([`Control::upgrade`]).
    Punch { peer: PeerId, upgrade: Option<u64> },
    /// A sample of at most `max` peers of our network.
    Discover { max: u32 },
}

#[derive(Debug)]
struct Pending<T> {
    what: Request,
    token: T,
    started: Instant,
    /// Sent on the current connection (a request made while connecting waits for the
    /// registration).
    sent: bool,
}

/// The control connection's state machine (see the module doc).
#[derive(Debug)]
pub struct Control<T> {
    config: ControlConfig,
    rng: StdRng,
    state: State,
    backoff: Backoff,
    /// The end of the reconnect window a `GoingAway` gave, until we are registered again.
    restart_until: Option<Instant>,
    /// Ordered by request id, so expiry and loss reply in request order.
    pending: BTreeMap<u64, Pending<T>>,
    next_request: u64,
    actions: VecDeque<Action<T>>,
    stats: Stats,
    /// Refused inbound offers are logged at most once per interval.
    refusals: LogThrottle,
    /// Denied inbound offers likewise, on a line of their own.
    denials: LogThrottle,
    /// The last NAT check's result (kept across reconnects until the next one finishes).
    nat: Option<NatBehaviour>,
    /// The NAT check under way: the control connection's local and observed addresses.
    nat_check: Option<(SocketAddr, SocketAddr)>,
}

impl<T> Control<T> {
    /// A machine that connects at once; `seed` drives the jitter.
    pub fn new(config: ControlConfig, now: Instant, seed: u64) -> Self {
        let mut c = Self {
            backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            restart_until: None,
            config,
            rng: StdRng::seed_from_u64(seed),
            state: State::Idle { retry_at: now },
            pending: BTreeMap::new(),
            next_request: 1,
            actions: VecDeque::new(),
            stats: Stats::default(),
            refusals: LogThrottle::default(),
            denials: LogThrottle::default(),
            nat: None,
            nat_check: None,
        };
        c.start_connect(now);
        c
    }

    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What the last NAT check said (`None` before the first one finished).
    pub fn nat(&self) -> Option<&NatBehaviour> {
        self.nat.as_ref()
    }

    /// Our observed address while registered.
    pub fn registered(&self) -> Option<SocketAddr> {
        match self.state {
            State::Registered { observed, .. } => Some(observed),
            _ => None,
        }
    }

    /// Requests waiting for their offer or refusal.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// The next thing to do; call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action<T>> {
        self.actions.pop_front()
    }

    /// When [`Control::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state = match self.state {
            State::Idle { retry_at } => retry_at,
            State::Connecting { deadline } | State::AwaitingRegistered { deadline, .. } => deadline,
            State::Registered {
                last_heard,
                silence_limit,
                ..
            } => last_heard + silence_limit,
        };
        let expiry = self
            .pending
            .values()
            .map(|p| p.started + self.config.request_timeout)
            .min();
        Some(expiry.map_or(state, |e| e.min(state)))
    }

    /// Timers: reconnect, handshake and registration deadlines, request expiry, silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_requests(now);
        match self.state {
            State::Idle { retry_at } if now >= retry_at => self.start_connect(now),
            State::Connecting { deadline } if now >= deadline => {
                let reason = RendezvousError::HandshakeTimeout(self.config.handshake_timeout);
                self.close(reason.clone());
                self.connect_failed(now, reason);
            }
            State::AwaitingRegistered { deadline, .. } if now >= deadline => {
                let reason = RendezvousError::NoRegistrationReply;
                self.close(reason.clone());
                self.connect_failed(now, reason);
            }
            State::Registered {
                last_heard,
                silence_limit,
                ..
            } if now >= last_heard + silence_limit => {
                let reason = RendezvousError::Silent;
                self.close(reason.clone());
                self.lose(now, reason);
            }
            _ => {}
        }
    }

    /// The application asks for a punch to `peer`; `token` comes back in the request's
    /// [`Action::Reply`] or [`Action::StartPunch`]. While a connection attempt is under way
    /// the request waits for the registration (within its timeout); between attempts it
    /// fails at once.
    pub fn connect(&mut self, now: Instant, peer: PeerId, token: T) {
        self.request(
            now,
            Request::Punch {
                peer,
                upgrade: None,
            },
            token,
        );
    }

    /// Asks for a new punch to `peer` to move the relayed session `session_id` to a direct
    /// connection: answered like [`Control::connect`], with an offer naming the session
    /// ([`Offer::upgrade`]) and no relay ticket.
    pub fn upgrade(&mut self, now: Instant, peer: PeerId, session_id: u64, token: T) {
        let upgrade = Some(session_id);
        self.request(now, Request::Punch { peer, upgrade }, token);
    }

    /// The application asks for at most `max` peers of our network that accept punches
    /// ([`Action::Discovered`] with `token`, or [`Action::Reply`]); waits and fails like
    /// [`Control::connect`]. Without a network it fails at once ([`Error::NoNetwork`]).
    pub fn discover(&mut self, now: Instant, max: usize, token: T) {
        if self.config.network.is_empty() {
            let error = Error::NoNetwork;
            self.actions.push_back(Action::Reply { token, error });
            return;
        }
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        self.request(now, Request::Discover { max }, token);
    }

    fn request(&mut self, now: Instant, what: Request, token: T) {
        if let Request::Punch { peer, .. } = what {
            if self.config.deny.is_peer_denied(&peer, now) {
                self.stats.denied += 1;
                info!(peer = %peer.short(), "punch to a denied peer; not requested");
                let error = Error::Denied { peer };
                self.actions.push_back(Action::Reply { token, error });
                return;
            }
        }
        if let State::Idle { .. } = self.state {
            let error = self.unreachable(RendezvousError::Reconnecting);
            self.actions.push_back(Action::Reply { token, error });
            return;
        }
        let request_id = self.next_request;
        self.next_request += 1;
        self.stats.requests += 1;
        self.pending.insert(
            request_id,
            Pending {
                what,
                token,
                started: now,
                sent: false,
            },
        );
        if let State::Registered { .. } = self.state {
            self.send_request(request_id);
        } else {
            debug!(?what, request_id, "request waits for the registration");
        }
    }

    fn send_request(&mut self, request_id: u64) {
        let Some(p) = self.pending.get_mut(&request_id) else {
            return;
        };
        p.sent = true;
        let (peer, upgrade) = match p.what {
            Request::Punch { peer, upgrade } => (peer, upgrade),
            Request::Discover { max } => {
                debug!(request_id, max, "discover requested");
                let msg = ClientMsg::Discover { request_id, max };
                self.actions.push_back(Action::Send(msg));
                return;
            }
        };
        let msg = match upgrade {
            None => {
                debug!(peer = %peer.short(), request_id, "punch requested");
                ClientMsg::Connect { request_id, peer }
            }
            Some(session_id) => {
                debug!(peer = %peer.short(), request_id, session = session_id, "punch requested to move a relayed session to direct");
                ClientMsg::Upgrade {
                    request_id,
                    peer,
                    session_id,
                }
            }
        };
        self.actions.push_back(Action::Send(msg));
        self.actions
            .push_back(Action::Emit(Event::Requested { peer }));
    }

    /// The handshake of the connection [`Action::Connect`] asked for completed; `local` is the
    /// connection's local address.
    pub fn on_connected(&mut self, now: Instant, local: SocketAddr) {
        if let State::Connecting { .. } = self.state {
            self.state = State::AwaitingRegistered {
                local,
                deadline: now + self.config.handshake_timeout,
            };
        }
    }

    /// The connection or its handshake failed.
    pub fn on_connect_failed(&mut self, now: Instant, reason: RendezvousError) {
        if let State::Connecting { .. } = self.state {
            self.connect_failed(now, reason);
        }
    }

    /// The connection broke (read or write error, closed by the server).
    pub fn on_lost(&mut self, now: Instant, reason: RendezvousError) {
        match self.state {
            State::Registered { .. } => self.lose(now, reason),
            State::Connecting { .. } | State::AwaitingRegistered { .. } => {
                self.connect_failed(now, reason)
            }
            State::Idle { .. } => {}
        }
    }

    /// A frame arrived on the control connection.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        match ServerMsg::decode(frame) {
            Ok(msg) => self.handle_message(now, msg),
            Err(e) => {
                let reason = RendezvousError::Malformed(Arc::new(e));
                self.close(reason.clone());
                self.on_lost(now, reason);
            }
        }
    }

    /// A decoded message arrived on the control connection.
    pub fn handle_message(&mut self, now: Instant, msg: ServerMsg) {
        match self.state {
            State::AwaitingRegistered { local, .. } => self.first_message(now, local, msg),
            State::Registered {
                ref mut last_heard,
                ref mut ping,
                ref mut rtt,
                ref mut clock,
                observed,
                local,
                ..
            } => {
                *last_heard = now;
                match msg {
                    ServerMsg::Ping { nonce } => {
                        self.actions
                            .push_back(Action::Send(ClientMsg::Pong { nonce }));
                        // One ping of ours per ping of the server's: our RTT stays as fresh as
                        // its, at no timer of our own.
                        if ping.is_none() {
                            let nonce = self.rng.gen();
                            *ping = Some((nonce, now));
                            self.actions
                                .push_back(Action::Send(ClientMsg::Ping { nonce }));
                        }
                    }
                    ServerMsg::Pong {
                        nonce,
                        server_time_us,
                    } => {
                        if let Some((sent_nonce, sent)) = *ping {
                            if sent_nonce == nonce {
                                *ping = None;
                                *rtt = Some(now.saturating_duration_since(sent));
                                if let Some(server_us) = server_time_us {
                                    clock.on_pong(sent, now, server_us);
                                }
                                let rtt = *rtt;
                                self.actions
                                    .push_back(Action::SetStatus(Status::Registered {
                                        observed,
                                        local,
                                        rtt,
                                    }));
                            }
                        }
                    }
                    ServerMsg::Offer(offer) => self.offer(now, offer),
                    ServerMsg::Discovered { request_id, peers } => {
                        self.discovered(now, request_id, peers)
                    }
                    ServerMsg::Error(e) => self.refused(now, e),
                    ServerMsg::RelayEnded { session_id, reason } => self
                        .actions
                        .push_back(Action::RelayEnded { session_id, reason }),
                    ServerMsg::GoingAway { reconnect_within } => {
                        self.going_away(now, reconnect_within)
                    }
                    other => debug!(?other, "ignored message"),
                }
            }
            State::Idle { .. } | State::Connecting { .. } => {
                debug!(?msg, "message without a connection; ignored")
            }
        }
    }

    fn first_message(&mut self, now: Instant, local: SocketAddr, msg: ServerMsg) {
        match msg {
            ServerMsg::Registered(r) => {
                info!(observed = %r.observed, %local, "registered with the rendezvous");
                let nonce = self.rng.gen();
                self.state = State::Registered {
                    observed: r.observed,
                    local,
                    last_heard: now,
                    silence_limit: r.ping_interval.max(MIN_PING_INTERVAL) * MISSED_PINGS,
                    ping: Some((nonce, now)),
                    rtt: None,
                    clock: ServerClock::default(),
                };
                self.backoff.reset();
                self.restart_until = None;
                self.stats.registrations += 1;
                self.actions.push_back(Action::Emit(Event::Registered {
                    observed: r.observed,
                    local,
                }));
                self.actions
                    .push_back(Action::SetStatus(Status::Registered {
                        observed: r.observed,
                        local,
                        rtt: None,
                    }));
                let waiting: Vec<u64> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| !p.sent)
                    .map(|(id, _)| *id)
                    .collect();
                for request_id in waiting {
                    self.send_request(request_id);
                }
                // After the requests: they are what someone waits for.
                match r.nat_check_port {
                    Some(port) => {
                        self.nat_check = Some((local, r.observed));
                        let server = SocketAddr::new(self.config.rendezvous.ip(), port);
                        self.actions.push_back(Action::NatCheck { server });
                    }
                    None => self.nat_checked(local, r.observed, Err(NatCheckError::NotOffered)),
                }
                // A first ping at once: the round trip is known within one.
                self.actions
                    .push_back(Action::Send(ClientMsg::Ping { nonce }));
            }
            // Shut down before it registered us: the same as when registered.
            ServerMsg::GoingAway { reconnect_within } => self.going_away(now, reconnect_within),
            ServerMsg::Error(e) => {
                let reason = RendezvousError::RegistrationRefused {
                    code: e.code,
                    detail: e.detail,
                };
                self.close(reason.clone());
                self.connect_failed(now, reason);
            }
            other => {
                let reason = RendezvousError::Unexpected(Box::new(other));
                self.close(reason.clone());
                self.connect_failed(now, reason);
            }
        }
    }

    /// How long after `now` (the offer's arrival) to dial: until the offer's dial moment on
    /// the server's clock when that clock is placed ([`ServerClock`]), so a late offer does
    /// not make a late dial; else the offer's `dial_delay`. A moment already past means now.
    /// Never later than `dial_delay` + [`MAX_CLOCK_SHIFT`]: a clock estimate that far off is
    /// wrong (the server restarted, the samples are stale), and the relative delay is safe.
    fn dial_delay(&self, now: Instant, offer: &Offer) -> Duration {
        let State::Registered { clock, .. } = &self.state else {
            return offer.dial_delay;
        };
        match offer.dial_at_us.and_then(|at| clock.local(at)) {
            Some((at, _)) => at
                .saturating_duration_since(now)
                .min(offer.dial_delay + MAX_CLOCK_SHIFT),
            None => offer.dial_delay,
        }
    }

    fn offer(&mut self, now: Instant, offer: Offer) {
        let inbound = offer.request_id == 0;
        let (reply, started) = if inbound {
            if !self.config.accept_inbound {
                warn!(peer = %offer.peer.short(), "offer for an inbound punch, but inbound is off; ignored");
                return;
            }
            if !self.config.allow.permits(&offer.peer) {
                self.refuse_inbound(now, &offer);
                return;
            }
            if self
                .config
                .deny
                .is_denied(&offer.peer, offer.peer_observed.ip(), now)
            {
                self.deny_inbound(now, &offer);
                return;
            }
            (None, now)
        } else {
            match self.pending.remove(&offer.request_id) {
                Some(p)
                    if p.what
                        == (Request::Punch {
                            peer: offer.peer,
                            upgrade: offer.upgrade,
                        }) =>
                {
                    (Some(p.token), p.started)
                }
                other => {
                    // A mismatched peer leaves the request waiting for its own offer.
                    if let Some(p) = other {
                        self.pending.insert(offer.request_id, p);
                    }
                    debug!(
                        request_id = offer.request_id,
                        "offer for an unknown or expired request; ignored"
                    );
                    return;
                }
            }
        };
        self.stats.offers += 1;
        let mut offer = offer;
        offer.dial_delay = self.dial_delay(now, &offer);
        self.actions.push_back(Action::Emit(Event::Offer {
            peer: offer.peer,
            session_id: offer.session_id,
            role: offer.role,
            inbound,
            observed: offer.peer_observed,
            locals: offer.peer_local.len(),
            dial_delay: offer.dial_delay,
            peer_nat: offer.peer_nat,
        }));
        self.log_outlook(&offer);
        self.actions.push_back(Action::StartPunch {
            offer,
            reply,
            started,
        });
    }

    /// The NAT check the machine asked for ([`Action::NatCheck`]) ended: `Ok` with the
    /// address the rendezvous saw the probe at. Ignored when the connection it was for is
    /// gone.
    pub fn on_nat_checked(&mut self, result: Result<SocketAddr, NatCheckError>) {
        let Some((local, observed)) = self.nat_check.take() else {
            debug!("NAT check result for a connection that is gone; ignored");
            return;
        };
        self.nat_checked(local, observed, result);
    }

    fn nat_checked(
        &mut self,
        local: SocketAddr,
        observed: SocketAddr,
        result: Result<SocketAddr, NatCheckError>,
    ) {
        let behaviour = nat::classify(local, observed, result);
        self.stats.nat_checks += 1;
        if self.nat.as_ref().is_some_and(|b| b.same_as(&behaviour)) {
            debug!("NAT check: {behaviour}");
        } else {
            info!("NAT check: {behaviour}");
        }
        self.nat = Some(behaviour.clone());
        self.actions
            .push_back(Action::Emit(Event::NatChecked(behaviour.clone())));
        self.actions.push_back(Action::SetNat(behaviour));
    }

    /// Says early when the two NAT mappings rule a direct punch out, or make it unlikely
    /// (once per offer; an upgrade offer, retried in the background, only at debug).
    fn log_outlook(&self, offer: &Offer) {
        let outlook = nat::direct_outlook(self.nat.as_ref(), offer.peer_nat);
        let then = match (offer.upgrade, &offer.relay) {
            (Some(_), _) => "the session stays relayed",
            (None, Some(_)) => "expecting the relay",
            (None, None) => "and the rendezvous gave no relay ticket: the punch will fail",
        };
        let peer = offer.peer.short();
        match outlook {
            DirectOutlook::Possible => {}
            _ if offer.upgrade.is_some() => {
                debug!(%peer, ?outlook, "direct punch unlikely; {then}");
            }
            DirectOutlook::Impossible => warn!(
                %peer,
                "our NAT and the peer's are both endpoint-dependent (symmetric): a direct \
                 punch cannot work; {then}"
            ),
            DirectOutlook::OneSideDependent { ours } => info!(
                %peer,
                "{} NAT is endpoint-dependent (symmetric): a direct punch works only if the \
                 other side accepts unsolicited connections; otherwise {then}",
                if ours { "our" } else { "the peer's" }
            ),
        }
    }

    /// An inbound offer from a peer not on the allow-list: counted, reported, never dialed.
    fn refuse_inbound(&mut self, now: Instant, offer: &Offer) {
        self.stats.inbound_refused += 1;
        if let Some(held_back) = self.refusals.hit(now) {
            warn!(
                peer = %offer.peer.short(),
                held_back,
                total = self.stats.inbound_refused,
                "inbound punch from a peer not on the allow-list; refused (no dial)"
            );
        }
        self.actions.push_back(Action::Emit(Event::InboundRefused {
            peer: offer.peer,
            session_id: offer.session_id,
        }));
    }

    /// An inbound offer from a denied identity or IP: counted, reported, never dialed.
    fn deny_inbound(&mut self, now: Instant, offer: &Offer) {
        self.stats.inbound_denied += 1;
        if let Some(held_back) = self.denials.hit(now) {
            warn!(
                peer = %offer.peer.short(),
                observed = %offer.peer_observed,
                held_back,
                total = self.stats.inbound_denied,
                "inbound punch from a denied peer or address; refused (no dial)"
            );
        }
        self.actions.push_back(Action::Emit(Event::InboundDenied {
            peer: offer.peer,
            session_id: offer.session_id,
            observed: offer.peer_observed,
        }));
    }

    /// The answer to a `Discover`: peers on our deny list (and ourselves, should a confused
    /// rendezvous name us) are left out.
    fn discovered(&mut self, now: Instant, request_id: u64, peers: Vec<PeerId>) {
        let Some(p) = self.pending.remove(&request_id) else {
            debug!(
                request_id,
                "discover answer for an expired request; ignored"
            );
            return;
        };
        if !matches!(p.what, Request::Discover { .. }) {
            debug!(request_id, "discover answer to a punch request; ignored");
            self.pending.insert(request_id, p);
            return;
        }
        let deny = &self.config.deny;
        let peers: Vec<PeerId> = peers
            .into_iter()
            .filter(|peer| !deny.is_peer_denied(peer, now))
            .collect();
        debug!(request_id, peers = peers.len(), "discovered");
        self.stats.discovered += 1;
        self.actions.push_back(Action::Discovered {
            token: p.token,
            peers,
        });
    }

    fn refused(&mut self, now: Instant, e: ErrorReply) {
        let Some(p) = self.pending.remove(&e.request_id) else {
            if e.request_id == 0 {
                let reason = RendezvousError::Server {
                    code: e.code,
                    detail: e.detail,
                };
                self.close(reason.clone());
                self.lose(now, reason);
            } else {
                debug!(request_id = e.request_id, "error for an expired request");
            }
            return;
        };
        let error = match (e.code, p.what) {
            (ErrorCode::RateLimited, _) => Error::RateLimited {
                retry_after: e.retry_after,
            },
            (ErrorCode::PeerOffline, Request::Punch { peer, .. }) => Error::PeerOffline { peer },
            (ErrorCode::PeerRefuses, Request::Punch { peer, .. }) => Error::PeerRefuses { peer },
            (ErrorCode::NotAllowed, Request::Punch { peer, .. }) => Error::NotAllowed { peer },
            (ErrorCode::WrongNetwork, Request::Punch { peer, .. }) => Error::WrongNetwork {
                peer,
                network: self.config.network.clone(),
            },
            (code, _) => Error::Rendezvous {
                code,
                detail: e.detail,
            },
        };
        match p.what {
            Request::Punch { peer, .. } => {
                info!(peer = %peer.short(), %error, "punch refused by the rendezvous");
            }
            Request::Discover { .. } => info!(%error, "discover refused by the rendezvous"),
        }
        self.stats.refused += 1;
        self.actions.push_back(Action::Reply {
            token: p.token,
            error,
        });
    }

    fn expire_requests(&mut self, now: Instant) {
        let timeout = self.config.request_timeout;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.started + timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.stats.expired += 1;
                self.actions.push_back(Action::Reply {
                    token: p.token,
                    error: Error::RequestTimeout(timeout),
                });
            }
        }
    }

    fn start_connect(&mut self, now: Instant) {
        self.stats.connects += 1;
        self.state = State::Connecting {
            deadline: now + self.config.handshake_timeout,
        };
        self.actions
            .push_back(Action::SetStatus(Status::Connecting));
        self.actions.push_back(Action::Connect);
    }

    fn close(&mut self, reason: RendezvousError) {
        self.actions.push_back(Action::Close { reason });
    }

    /// A connection attempt failed: retry after the next (growing) backoff.
    /// Within a restart's window, the next attempt is a new random moment in what is left of
    /// it instead: the peers whose moment fell into the server's downtime then spread over the
    /// rest of the window rather than all coming back through their backoffs the moment the
    /// server is up (measured with 10,000 peers and a window meant to bring 1,000 a second:
    /// 1,475 registrations in the busiest second with the backoff, 1,129-1,186 with this).
    fn connect_failed(&mut self, now: Instant, reason: RendezvousError) {
        let min = self.config.reconnect_min;
        let delay = match self.restart_until {
            Some(until) if until > now + min => {
                min + (until - now - min).mul_f64(self.rng.gen::<f64>())
            }
            _ => {
                self.restart_until = None;
                self.backoff.next_delay(&mut self.rng)
            }
        };
        warn!(rendezvous = %self.config.rendezvous, %reason, retry_in_ms = delay.as_millis() as u64, "rendezvous unreachable");
        self.fail_pending(&reason);
        self.disconnected(now + delay, reason);
    }

    /// A registered connection was lost: fail the pending requests, reconnect soon.
    fn lose(&mut self, now: Instant, reason: RendezvousError) {
        warn!(%reason, "lost the rendezvous; reconnecting");
        self.stats.losses += 1;
        self.backoff.reset();
        let delay = self.backoff.next_delay(&mut self.rng);
        self.fail_pending(&reason);
        self.disconnected(now + delay, reason);
    }

    /// The rendezvous is going away (restarting) and closes the connection next: come back
    /// at a uniformly random moment within its window (again, should the server not be up
    /// yet: see [`Self::connect_failed`]), then with a fresh backoff. We leave
    /// the close to the server (no [`Action::Close`]), so the TIME_WAIT of the connection is
    /// its own and not on the 4-tuple our punch port reconnects from; a connection the server
    /// fails to close is dropped at the reconnect ([`Action::Connect`]).
    fn going_away(&mut self, now: Instant, reconnect_within: Duration) {
        let delay = reconnect_within.mul_f64(self.rng.gen::<f64>());
        info!(
            rendezvous = %self.config.rendezvous,
            window_ms = reconnect_within.as_millis() as u64,
            reconnect_in_ms = delay.as_millis() as u64,
            "the rendezvous is going away (restart); reconnecting at a random moment in its window"
        );
        self.stats.going_away += 1;
        self.backoff.reset();
        self.restart_until = Some(now + reconnect_within);
        let reason = RendezvousError::GoingAway { reconnect_within };
        self.fail_pending(&reason);
        self.disconnected(now + delay, reason);
    }

    /// Every request ends with the connection (its offer could only come on it).
    fn fail_pending(&mut self, reason: &RendezvousError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let error = self.unreachable(reason.clone());
            self.actions.push_back(Action::Reply {
                token: p.token,
                error,
            });
        }
    }

    fn disconnected(&mut self, retry_at: Instant, reason: RendezvousError) {
        self.state = State::Idle { retry_at };
        self.nat_check = None;
        self.actions.push_back(Action::Emit(Event::Disconnected {
            reason: reason.clone(),
        }));
        self.actions
            .push_back(Action::SetStatus(Status::Disconnected { reason }));
    }

    fn unreachable(&self, source: RendezvousError) -> Error {
        Error::RendezvousUnreachable {
            addr: self.config.rendezvous,
            source,
        }
    }
}

#[cfg(test)]
#[path = "control_test_support.rs"]
mod test_support;

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "control_network_tests.rs"]
mod network_tests;

#[cfg(test)]
#[path = "control_nat_tests.rs"]
mod nat_tests;

#[cfg(test)]
#[path = "control_restart_tests.rs"]
mod restart_tests;
