//! Carries out one punch: the pure [`Attempt`] decides, this driver does the I/O. It waits
//! for the agreed moment, dials the candidates from the shared port, authenticates and
//! confirms the streams the attempt names (dialed or accepted, see [`crate::auth`]), and
//! returns the winner as a [`Session`], or the attempt's verdict as a typed [`Error`].
//!
//! Each action becomes at most one task in a JoinSet owned by [`run`]: dials in `dials`,
//! authentication and confirms in `work` (keyed by stream id, so an abandoned stream's task is
//! aborted). Returning drops both sets, which ends every task and closes every losing stream.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use punch_proto::message::{Offer, RelayEnd, RELAY_TOKEN_LEN};
use punch_proto::{Keypair, PeerId, Role};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::attempt::{Action, Attempt, Failure, GaveUp, Schedule, StreamId};
use crate::auth::{authenticate, AuthContext, AuthError, Authenticated, Selected};
use crate::client::Command;
use crate::config::Config;
use crate::error::Error;
use crate::event::{Event, Status};
use crate::session::{PathControl, PathKind, PathState, Session, SessionInfo, SessionTable};
use crate::socket;

/// A stream the listener accepted and routed to this punch by its preamble.
pub(crate) type Inbound = (TcpStream, SocketAddr);

/// Where the client forwards the relay's reason for ending a relayed session, by session id.
pub(crate) type RelayNotices = std::sync::Mutex<HashMap<u64, oneshot::Sender<RelayEnd>>>;

/// What a punch needs from the client.
#[derive(Debug)]
pub(crate) struct PunchCtx {
    pub keypair: Keypair,
    pub local: SocketAddr,
    pub config: Config,
    pub events: broadcast::Sender<Event>,
    pub relay_notices: RelayNotices,
    /// Relayed sessions whose punch window closed without a direct stream, by the session id
    /// of their offer: an upgrade offer naming one moves it ([`Target::Upgrade`]).
    pub relayed: std::sync::Mutex<HashMap<u64, (PeerId, Arc<PathControl>)>>,
    /// The client's requests, for the retry loop of relayed sessions (weak: it must not keep
    /// the client alive).
    pub commands: mpsc::WeakSender<Command>,
    /// The client's registration, whose observed address a retry loop watches.
    pub status: watch::Receiver<Status>,
    /// Open sessions, for [`crate::Client::sessions`].
    pub sessions: Arc<SessionTable>,
}

impl PunchCtx {
    /// Sends an event to whoever listens (nobody is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// The relayed session `session_id` with `peer`, if it still runs.
    pub fn relayed_session(&self, session_id: u64, peer: &PeerId) -> Option<Arc<PathControl>> {
        let table = crate::lock(&self.relayed);
        table
            .get(&session_id)
            .filter(|(p, control)| p == peer && !control.is_closed())
            .map(|(_, control)| control.clone())
    }

    /// Registers a relayed session for the relay's end notice; forgets sessions that ended.
    fn relay_notice(&self, session_id: u64) -> oneshot::Receiver<RelayEnd> {
        let (tx, rx) = oneshot::channel();
        let mut notices = crate::lock(&self.relay_notices);
        notices.retain(|_, tx| !tx.is_closed());
        notices.insert(session_id, tx);
        rx
    }
}

/// Where a punch's outcome goes: the connect request's reply, or the inbound queue.
pub(crate) type Deliver = Box<dyn FnOnce(Result<Session, Error>) + Send>;

/// What a punch is for.
pub(crate) enum Target {
    /// A new session, delivered once.
    New(Deliver),
    /// A direct stream for a relayed session (an upgrade offer); `done` hears how it went
    /// (on the requesting side).
    Upgrade {
        control: Arc<PathControl>,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
}

/// After the punch window of a relayed session: the first retry of the direct punch this long
/// after, doubling up to [`UPGRADE_RETRY_MAX`] (each jittered to between half and all of it).
/// A retry costs one punch request (the rendezvous allows 20 a minute per identity) and one
/// 10 s punch window with a few dials; a path that opened is found within about a minute
/// during the first five minutes, within five minutes after that.
pub const UPGRADE_RETRY_MIN: Duration = Duration::from_secs(5);
pub const UPGRADE_RETRY_MAX: Duration = Duration::from_secs(300);

/// What a stream's task reports.
#[derive(Debug)]
enum Outcome {
    /// Preamble and KK finished.
    Authenticated(Result<Authenticated, AuthError>),
    /// The confirm was sent (initiator) or received (responder, with which kind); the
    /// stream comes back.
    Confirmed(Result<(Authenticated, Selected), AuthError>),
}

/// The end of one stream task.
#[derive(Debug)]
struct Done {
    stream: StreamId,
    outcome: Outcome,
}

/// Runs the punch described by `offer`. `started` is when the user asked (or the offer came).
/// The outcome goes to the target once: a session (direct or relayed) or the typed error. A
/// relayed session's attempt goes on afterwards, until the window closes, and moves the
/// session to the first direct stream that authenticates. After a window without one, the
/// session waits in the client's table for an upgrade offer, and its requesting side retries
/// the direct punch ([`retry_direct`]).
pub(crate) async fn run(
    ctx: Arc<PunchCtx>,
    offer: Offer,
    inbound: mpsc::Receiver<Inbound>,
    started: Instant,
    target: Target,
) {
    // Every stream, dial and task of the attempt ends with `punch`: a dial still in flight at
    // the window's end must not connect later and hold the punch port's 4-tuple (its close
    // would leave a TIME_WAIT that blocks the next punch to the same address for a minute).
    let Some(control) = punch(&ctx, &offer, inbound, started, target).await else {
        return;
    };
    debug!("no direct stream in the window; the session stays relayed");
    let control = Arc::new(control);
    {
        let mut table = crate::lock(&ctx.relayed);
        table.retain(|_, (_, c)| !c.is_closed());
        table.insert(offer.session_id, (offer.peer, control.clone()));
    }
    if offer.role == Role::Initiator {
        retry_direct(&ctx, offer.peer, offer.session_id, &control).await;
    }
}

/// The attempt itself; returns the relayed session's control when the window closed with the
/// session still relayed.
async fn punch(
    ctx: &PunchCtx,
    offer: &Offer,
    mut inbound: mpsc::Receiver<Inbound>,
    started: Instant,
    target: Target,
) -> Option<PathControl> {
    let (mut deliver, mut upgrading) = match target {
        Target::New(d) => (Some(d), None),
        Target::Upgrade { control, done } => (None, Some((control, done))),
    };
    let mut give = |result: Result<Session, Error>| {
        if let Some(d) = deliver.take() {
            d(result);
        }
    };
    let config = &ctx.config;
    let expect = Arc::new(AuthContext {
        role: offer.role,
        keypair: ctx.keypair.clone(),
        peer: offer.peer,
        session_id: offer.session_id,
    });
    let mut attempt = Attempt::with_local(
        Schedule {
            start: now() + offer.dial_delay,
            window: config.punch_window,
            retry_interval: config.retry_interval,
            auth_timeout: config.auth_timeout,
        },
        offer.role,
        [offer.peer_observed],
        offer.peer_local.iter().copied(),
    );
    let dial_moment = now() + offer.dial_delay;
    let ticket = offer.relay.clone().filter(|_| config.relay);
    if let Some(t) = &ticket {
        attempt = attempt.with_relay(dial_moment + t.after, config.rendezvous);
    }
    if !config.direct {
        attempt = attempt.relay_only();
    }
    debug!(
        delay_ms = offer.dial_delay.as_millis() as u64,
        "waiting for the dial moment"
    );

    let mut dials: JoinSet<(SocketAddr, std::io::Result<TcpStream>)> = JoinSet::new();
    let mut relay_dial: JoinSet<std::io::Result<TcpStream>> = JoinSet::new();
    // The session while it runs on the relay, waiting for a direct stream.
    let mut relayed: Option<PathControl> = None;
    let mut work: JoinSet<Done> = JoinSet::new();
    let mut tasks: HashMap<StreamId, AbortHandle> = HashMap::new();
    // Connected streams waiting for their Authenticate (with whether the listener accepted
    // them), and authenticated ones between steps.
    let mut fresh: HashMap<StreamId, (TcpStream, bool)> = HashMap::new();
    let mut held: HashMap<StreamId, Authenticated> = HashMap::new();
    let mut dialed = HashSet::new();
    loop {
        while let Some(action) = attempt.poll(now()) {
            match action {
                Action::Dial(addr) => {
                    debug!(%addr, "dial");
                    if dialed.insert(addr) {
                        ctx.emit(Event::Dial {
                            peer: offer.peer,
                            session_id: offer.session_id,
                            addr,
                        });
                    }
                    let (local, timeout) = (ctx.local, config.connect_timeout);
                    dials.spawn(async move {
                        let res = tokio::time::timeout(timeout, socket::connect_from(local, addr))
                            .await
                            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                        (addr, res)
                    });
                }
                Action::Authenticate(stream) => {
                    let Some((tcp, accepted)) = fresh.remove(&stream) else {
                        continue;
                    };
                    let expect = expect.clone();
                    let task = work.spawn(async move {
                        let res = authenticate(tcp, accepted, &expect).await;
                        Done {
                            stream,
                            outcome: Outcome::Authenticated(res),
                        }
                    });
                    tasks.insert(stream, task);
                }
                Action::DialRelay => {
                    let Some(t) = &ticket else { continue };
                    debug!(relay = %config.rendezvous, "no direct stream yet; opening the relay");
                    ctx.emit(Event::RelayDial {
                        peer: offer.peer,
                        session_id: offer.session_id,
                    });
                    let (relay, token, timeout) =
                        (config.rendezvous, t.token, config.connect_timeout);
                    relay_dial.spawn(async move {
                        tokio::time::timeout(timeout, dial_relay(relay, token))
                            .await
                            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                    });
                }
                action @ (Action::Confirm(stream) | Action::ConfirmUpgrade(stream)) => {
                    let Some(mut auth) = held.remove(&stream) else {
                        continue;
                    };
                    let (role, upgrade) = (offer.role, matches!(action, Action::ConfirmUpgrade(_)));
                    let task = work.spawn(async move {
                        let res = match role {
                            Role::Initiator => auth.confirm(upgrade).await.map(|()| Selected::Now),
                            Role::Responder => auth.await_confirm().await,
                        };
                        Done {
                            stream,
                            outcome: Outcome::Confirmed(res.map(|sel| (auth, sel))),
                        }
                    });
                    tasks.insert(stream, task);
                }
                Action::Abandon(stream) => {
                    debug!(stream, "stream abandoned");
                    fresh.remove(&stream);
                    held.remove(&stream);
                    if let Some(task) = tasks.remove(&stream) {
                        task.abort();
                    }
                }
                Action::Established(stream) => {
                    // The attempt names only a stream reported confirmed, which is held.
                    let auth = held
                        .remove(&stream)
                        .expect("the established stream is held since it was confirmed");
                    match upgrading.take() {
                        Some((control, done)) => {
                            let moved = upgrade(ctx, offer, auth, &control, started);
                            if let Some(done) = done {
                                let _ =
                                    done.send(if moved { Ok(()) } else { Err(Error::Shutdown) });
                            }
                        }
                        None => {
                            let (session, _) =
                                established(ctx, offer, auth, started, PathKind::Direct);
                            give(Ok(session));
                        }
                    }
                    return None;
                }
                Action::Relayed(stream) => {
                    let auth = held
                        .remove(&stream)
                        .expect("the relayed stream is held since it was confirmed");
                    let (session, control) =
                        established(ctx, offer, auth, started, PathKind::Relayed);
                    relayed = Some(control);
                    give(Ok(session));
                }
                Action::Upgrade(stream) => {
                    let auth = held
                        .remove(&stream)
                        .expect("the upgrade stream is held since it was confirmed");
                    if let Some(control) = relayed.take() {
                        upgrade(ctx, offer, auth, &control, started);
                    }
                    return None;
                }
                Action::Fail(gave_up) => {
                    let error = match gave_up {
                        GaveUp::AuthFailed { addr, error } => Error::AuthFailed {
                            peer: offer.peer,
                            addr,
                            source: error,
                        },
                        GaveUp::Timeout { tried } => Error::PunchTimeout {
                            peer: offer.peer,
                            elapsed: now().saturating_duration_since(started),
                            tried,
                        },
                    };
                    match upgrading.take() {
                        Some((_, Some(done))) => {
                            let _ = done.send(Err(error));
                        }
                        Some((_, None)) => {
                            debug!(error = %error, "no direct stream for the relayed session this time")
                        }
                        None => give(Err(error)),
                    }
                    return None;
                }
            }
        }
        if attempt.is_finished() {
            // Relayed, and the window closed without a direct stream.
            return relayed.take();
        }
        let wake = tokio::time::Instant::from_std(attempt.poll_timeout());
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            Some(res) = dials.join_next() => {
                let Ok((addr, res)) = res else { continue };
                match res {
                    Ok(tcp) => {
                        debug!(%addr, "dial connected");
                        let stream = attempt.on_connected(now(), addr);
                        fresh.insert(stream, (tcp, false));
                    }
                    Err(e) => {
                        debug!(%addr, error = %e, "dial failed");
                        let failure = match e.kind() {
                            std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset => Failure::Refused,
                            _ => Failure::Other,
                        };
                        attempt.on_dial_failed(now(), addr, failure, e.kind());
                    }
                }
            }
            Some(res) = relay_dial.join_next() => {
                let Ok(res) = res else { continue };
                match res {
                    Ok(tcp) => {
                        debug!("relay connection open");
                        let stream = attempt.on_relay_connected(now());
                        fresh.insert(stream, (tcp, false));
                    }
                    Err(e) => {
                        warn!(relay = %config.rendezvous, error = %e, "relay connection failed");
                        attempt.on_relay_failed(now(), e.kind());
                    }
                }
            }
            Some((tcp, from)) = inbound.recv() => {
                debug!(%from, "accepted a stream for this punch");
                let stream = attempt.on_accepted(now(), from);
                // The listener has read its preamble already.
                fresh.insert(stream, (tcp, true));
            }
            Some(res) = work.join_next() => {
                let Ok(Done { stream, outcome }) = res else { continue };
                tasks.remove(&stream);
                let addr = attempt.stream_addr(stream);
                let now = now();
                match outcome {
                    Outcome::Authenticated(Ok(auth)) => {
                        debug!(?addr, stream, "authenticated");
                        held.insert(stream, auth);
                        attempt.on_authenticated(now, stream);
                    }
                    Outcome::Authenticated(Err(e)) => {
                        if e.is_final() {
                            warn!(?addr, error = %e, "stream rejected: authentication failed");
                        } else {
                            debug!(?addr, error = %e, "stream broke during authentication");
                        }
                        attempt.on_auth_failed(now, stream, e);
                    }
                    Outcome::Confirmed(Ok((auth, selected))) => {
                        held.insert(stream, auth);
                        match selected {
                            Selected::Now => attempt.on_confirmed(now, stream),
                            Selected::Upgrade => attempt.on_upgrade_confirmed(now, stream),
                        }
                    }
                    Outcome::Confirmed(Err(e)) => {
                        debug!(?addr, error = %e, "stream not selected");
                        attempt.on_confirm_failed(now, stream, e);
                    }
                }
            }
        }
    }
}

fn established(
    ctx: &PunchCtx,
    offer: &Offer,
    auth: Authenticated,
    started: Instant,
    path: PathKind,
) -> (Session, PathControl) {
    let info = SessionInfo {
        peer: offer.peer,
        remote: auth.remote,
        observed: offer.peer_observed,
        path,
        role: offer.role,
        session_id: offer.session_id,
        elapsed: now().saturating_duration_since(started),
    };
    keepalive(&auth);
    info!(remote = %info.remote, path = %info.path, ms = info.elapsed.as_millis() as u64, "session established");
    ctx.emit(Event::Established(info.clone()));
    let yamux =
        crate::session::yamux_config(ctx.config.stream_window, ctx.config.max_streams_per_session);
    let notice = (path == PathKind::Relayed).then(|| ctx.relay_notice(offer.session_id));
    let (session, control) = Session::start(
        auth.into_secure(),
        info,
        yamux,
        ctx.config.guard.clone(),
        notice,
    );
    ctx.sessions.insert(session.probe());
    (session, control)
}

/// The requesting side of a relayed session, after its punch window: asks the rendezvous for
/// a new punch (an upgrade offer, no relay ticket) with backoff, and at once when our observed
/// address changes (a new NAT mapping may punch where the old one did not), until the session
/// moves to a direct connection or ends.
async fn retry_direct(ctx: &PunchCtx, peer: PeerId, session_id: u64, control: &PathControl) {
    let mut backoff = crate::control::Backoff::new(UPGRADE_RETRY_MIN, UPGRADE_RETRY_MAX);
    let mut status = ctx.status.clone();
    let observed = |s: &Status| match s {
        Status::Registered { observed, .. } => Some(*observed),
        _ => None,
    };
    let mut last = observed(&status.borrow_and_update());
    loop {
        let delay = backoff.next_delay(&mut rand::thread_rng());
        let wake = tokio::time::Instant::now() + delay;
        // Until the delay passes, the session ends, or our observed address changes.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                _ = control.closed() => return,
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = observed(&status.borrow_and_update());
                    if now.is_some() && now != last {
                        info!(observed = ?now, "our observed address changed; retrying the direct punch now");
                        last = now;
                        break;
                    }
                }
            }
        }
        let Some(commands) = ctx.commands.upgrade() else {
            return;
        };
        let (reply, done) = oneshot::channel();
        let asked = commands
            .send(Command::Upgrade {
                peer,
                session_id,
                reply,
            })
            .await;
        drop(commands);
        if asked.is_err() {
            return;
        }
        match done.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                debug!(error = %e, "direct punch for the relayed session failed; retrying later")
            }
            Err(_) => return,
        }
    }
}

/// Moves the relayed session to the direct stream `auth`. False if it had ended.
fn upgrade(
    ctx: &PunchCtx,
    offer: &Offer,
    auth: Authenticated,
    control: &PathControl,
    started: Instant,
) -> bool {
    keepalive(&auth);
    let remote = auth.remote;
    let state = PathState {
        kind: PathKind::Direct,
        remote,
    };
    if control.upgrade(auth.into_secure(), state) {
        let ms = now().saturating_duration_since(started).as_millis() as u64;
        info!(%remote, ms, "session moved from the relay to a direct connection");
        ctx.emit(Event::PathChanged {
            peer: offer.peer,
            session_id: offer.session_id,
            path: PathKind::Direct,
            remote,
        });
        true
    } else {
        debug!("the relayed session ended before it could move; direct stream dropped");
        false
    }
}

/// Opens a relay connection to the rendezvous and presents the ticket's token. The relay
/// answers nothing until it has paired us, so the handshake's bytes follow at once.
async fn dial_relay(relay: SocketAddr, token: [u8; RELAY_TOKEN_LEN]) -> std::io::Result<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(relay).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&punch_proto::relay::hello(&token)).await?;
    Ok(tcp)
}

/// TCP keepalive on a session's connection (backstop to yamux pings); a failure only costs the
/// backstop.
fn keepalive(auth: &Authenticated) {
    if let Err(e) = socket::keepalive(auth.get_ref(), KEEPALIVE_IDLE) {
        debug!(error = %e, "could not enable TCP keepalive");
    }
}

/// The one clock of the drivers: tokio's (which `tokio::time::pause` controls), as the `std`
/// instant the pure [`Attempt`] takes.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// TCP keepalive idle time on punched connections (backstop to yamux pings).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
