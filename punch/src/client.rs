//! The punch client: one control connection to the rendezvous, one listener, many punches.
//!
//! [`Client::start`] binds the shared punch port (listener first, so the port is fixed), then a
//! driver task connects to the rendezvous *from that port*, registers, answers pings, and
//! reconnects with backoff (re-registering) whenever the connection is lost. Every decision
//! about the control connection is the pure [`Control`] machine's; the driver here only does
//! the I/O it asks for (connect and handshake, frames in and out, sleeping until its next
//! timeout) and spawns the punches. The public API is a cloneable handle sending commands to
//! the driver:
//!
//! ```text
//! Client::connect(peer) --Connect--> driver --ConnectRequest--> rendezvous
//!                                    driver <--Offer / Error---
//!                                    driver spawns punch::run --> Session (or typed error)
//! Client::discover(max) --Discover--> driver --Discover--> rendezvous
//!                                     driver <--Discovered / Error-- (peer ids, or typed error)
//! ```
//!
//! After each registration the driver runs the NAT check the machine asks for (a probe from
//! the punch port to the rendezvous's check port, see [`crate::nat`]); its result is
//! [`Client::nat`].
//!
//! Offers for punches other peers requested end up on [`Incoming`]. The listener reads the
//! 12-byte preamble of each accepted stream and routes it to the punch with that session id.
//! Every task (driver, listener, punches, routed streams) belongs to a `JoinSet` or an
//! abort-on-drop handle; [`Client::shutdown`] ends them all and waits.
//!
//! Time: the driver reads tokio's clock and hands `std` instants to the machine (see
//! [`crate::control`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use punch_proto::channel::{client_handshake, Channel, ChannelError};
use punch_proto::message::{Offer, ServerMsg};
use punch_proto::PeerId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth::read_preamble;
use crate::config::Config;
use crate::control::{Action, Control, ControlConfig};
use crate::driver::{self, PunchCtx};
use crate::error::{Error, RendezvousError};
pub use crate::event::{Event, Status, EVENT_BUFFER};
use crate::lock;
use crate::nat::{self, NatBehaviour, NatCheckError};
use crate::routes::Routes;
use crate::session::{Session, SessionStatus, SessionTable};
use crate::socket;

/// How long an accepted stream may take to send its preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// An accepted stream may arrive a little before the offer it belongs to (the peer's SYN can
/// beat the rendezvous's message): it waits this long for the punch to appear.
const ROUTE_WAIT: Duration = Duration::from_secs(2);
/// Sessions punched to us waiting for the application to take them.
const INCOMING_BACKLOG: usize = 32;
/// A control message that cannot be written in this time means the rendezvous is not reading:
/// the connection is dropped (and the silence timer could not fire while the write hangs).
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// After the NAT check's answer, the client waits this long for the rendezvous to close
/// first, so that the connection's TIME_WAIT stays on the server: on our side it would block
/// the next check from the punch port to the same address for a minute. The close follows
/// the answer at once; 2 s covers a slow path's round trip.
const NAT_CHECK_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The one clock of the drivers: tokio's (which `tokio::time::pause` controls), as the `std`
/// instant the pure machines take.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The reply token of a connect request.
type Reply = oneshot::Sender<Result<Session, Error>>;
/// The reply token of a discover request.
type DiscoverReply = oneshot::Sender<Result<Vec<PeerId>, Error>>;

/// What a request to the rendezvous answers to: a connect request's caller, or the retry loop
/// of a relayed session (`Ok` once the session moved to a direct connection).
#[derive(Debug)]
pub(crate) enum Token {
    Session(Reply),
    Upgrade(oneshot::Sender<Result<(), Error>>),
    Discover(DiscoverReply),
}

#[derive(Debug)]
pub(crate) enum Command {
    Connect {
        peer: PeerId,
        reply: Reply,
    },
    /// From a relayed session's retry loop: punch again to move it to direct.
    Upgrade {
        peer: PeerId,
        session_id: u64,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Discover {
        max: usize,
        reply: DiscoverReply,
    },
}

/// Handle to a running client. Dropping every clone stops the client; established sessions
/// live on until dropped.
#[derive(Debug, Clone)]
pub struct Client {
    cmd: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    nat: watch::Receiver<Option<NatBehaviour>>,
    local: SocketAddr,
    rendezvous: SocketAddr,
    id: PeerId,
    events: broadcast::Sender<Event>,
    sessions: Arc<SessionTable>,
    tasks: Arc<Tasks>,
}

/// Sessions other peers punched to us.
#[derive(Debug)]
pub struct Incoming(mpsc::Receiver<Session>);

impl Incoming {
    /// The next inbound session; `None` when the client has stopped.
    pub async fn next(&mut self) -> Option<Session> {
        self.0.recv().await
    }
}

/// The client's top-level tasks (driver and listener; each owns a `JoinSet` of its own tasks).
/// Dropped with the last [`Client`] clone: the tasks are aborted, and their `JoinSet`s with
/// them.
#[derive(Debug)]
struct Tasks {
    shutdown: CancellationToken,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in lock(&self.handles).iter() {
            t.abort();
        }
    }
}

impl Client {
    /// Binds the punch port and starts registering with the rendezvous in the background.
    /// Fails at once for a configuration it cannot register with ([`Config::validate`]).
    pub async fn start(config: Config) -> Result<(Client, Incoming), Error> {
        config.validate()?;
        let listener = socket::listen(config.bind)?;
        let local = listener.local_addr()?;
        let id = config.keypair.public();
        let rendezvous = config.rendezvous;
        let routes: Arc<Routes> = Arc::default();
        let shutdown = CancellationToken::new();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (status_tx, status) = watch::channel(Status::Connecting);
        let (nat_tx, nat) = watch::channel(None);
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_BACKLOG);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let span = info_span!("punch-client", id = %id.short(), port = local.port());
        let accept = tokio::spawn(
            accept_loop(
                listener,
                routes.clone(),
                config.max_pending_inbound,
                shutdown.clone(),
            )
            .instrument(span.clone()),
        );
        let control = Control::new(ControlConfig::from(&config), now(), rand::random());
        let sessions: Arc<SessionTable> = Arc::default();
        let driver = ControlDriver {
            ctx: Arc::new(PunchCtx {
                keypair: config.keypair.clone(),
                local,
                config,
                events: events.clone(),
                relay_notices: Default::default(),
                relayed: Default::default(),
                commands: cmd_tx.downgrade(),
                status: status.clone(),
                sessions: sessions.clone(),
            }),
            routes,
            cmd_rx,
            status_tx,
            nat_tx,
            incoming_tx,
            control,
            conn: None,
            handshake: None,
            nat_check: None,
            punches: JoinSet::new(),
            shutdown: shutdown.clone(),
        };
        let driver = tokio::spawn(driver.run().instrument(span));
        Ok((
            Client {
                cmd: cmd_tx,
                status,
                nat,
                local,
                rendezvous,
                id,
                events,
                sessions,
                tasks: Arc::new(Tasks {
                    shutdown,
                    handles: Mutex::new(vec![accept, driver]),
                }),
            },
            Incoming(incoming_rx),
        ))
    }

    /// Stops the client: ends the control connection, the listener, every punch in progress
    /// and every accepted stream still being routed, and waits until their tasks have ended.
    /// Afterwards [`Client::connect`] fails with [`Error::Shutdown`] and [`Incoming::next`]
    /// returns `None`; established sessions live on until dropped. When several clones call
    /// this at once, the first does the waiting.
    pub async fn shutdown(&self) {
        self.tasks.shutdown.cancel();
        let handles = std::mem::take(&mut *lock(&self.tasks.handles));
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Our identity.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The shared punch port's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The sessions this client punched (either way) that are still open, oldest first: peer,
    /// path now, age, traffic and round-trip time.
    pub fn sessions(&self) -> Vec<SessionStatus> {
        self.sessions.snapshot(now())
    }

    /// Bytes sent and received by all sessions since the client started (sent, received):
    /// plaintext yamux frames, every path.
    pub fn bytes_total(&self) -> (u64, u64) {
        self.sessions.bytes_total()
    }

    /// The rendezvous this client registers with.
    pub fn rendezvous(&self) -> SocketAddr {
        self.rendezvous
    }

    /// What the last NAT check said about our NAT (see [`crate::nat`]): `None` until the
    /// check after the first registration finished. Checked again after each registration.
    pub fn nat(&self) -> Option<NatBehaviour> {
        self.nat.borrow().clone()
    }

    /// Waits for the first NAT check's result, at most `timeout`; `None` if there is none by
    /// then (or the client stopped).
    pub async fn wait_nat(&self, timeout: Duration) -> Option<NatBehaviour> {
        let mut rx = self.nat.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|b| b.clone())
        });
        waited.await.ok().flatten()
    }

    /// Events from now on (see [`Event`]).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Waits until registered (returns the observed address) or `timeout` passes.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<SocketAddr, Error> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| matches!(s, Status::Registered { .. }))
                .await
                .map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(Ok(Status::Registered { observed, .. })) => Ok(observed),
            Ok(_) => Err(Error::Shutdown),
            Err(_) => Err(Error::RendezvousUnreachable {
                addr: self.rendezvous,
                source: RendezvousError::NotRegistered {
                    waited: timeout,
                    last: match self.status() {
                        Status::Disconnected { reason } => Some(Box::new(reason)),
                        _ => None,
                    },
                },
            }),
        }
    }

    /// Punches to `peer` and returns the authenticated, multiplexed session.
    pub async fn connect(&self, peer: PeerId) -> Result<Session, Error> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Connect { peer, reply })
            .await
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Asks the rendezvous for at most `max` peers of our [`Config::network`] that accept
    /// inbound punches (a random sample, at most the rendezvous's own limit, never us, none
    /// on our deny list). Waits like [`Client::connect`]'s request (its request timeout) and
    /// fails with the same typed errors ([`Error::RateLimited`] with the retry time, ...);
    /// [`Error::NoNetwork`] at once without a network. Charged by the rendezvous to the same
    /// request budget as punch requests.
    pub async fn discover(&self, max: usize) -> Result<Vec<PeerId>, Error> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Discover { max, reply })
            .await
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }
}

async fn accept_loop(
    listener: TcpListener,
    routes: Arc<Routes>,
    max_pending: usize,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(max_pending));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            res = listener.accept() => {
                let (stream, from) = match res {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn!(%from, "too many unidentified inbound streams; closed");
                    continue;
                };
                let routes = routes.clone();
                tasks.spawn(async move {
                    route(stream, from, &routes).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

async fn route(mut stream: TcpStream, from: SocketAddr, routes: &Routes) {
    let session = match tokio::time::timeout(PREAMBLE_TIMEOUT, read_preamble(&mut stream)).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            info!(%from, error = %e, "inbound stream closed: no valid preamble");
            return;
        }
        Err(_) => {
            info!(%from, "inbound stream closed: preamble timed out");
            return;
        }
    };
    match routes.wait(session, ROUTE_WAIT).await {
        Some(route) => {
            let _ = route.send((stream, from)).await;
        }
        None => info!(%from, session, "inbound stream closed: no punch with this session id"),
    }
}

/// The control connection's handshake in progress: yields the channel and its local address.
type Handshake =
    Pin<Box<dyn Future<Output = Result<(Channel<TcpStream>, SocketAddr), RendezvousError>> + Send>>;
/// The NAT check in progress: yields the address the rendezvous saw the probe at.
type NatCheck = Pin<Box<dyn Future<Output = Result<SocketAddr, NatCheckError>> + Send>>;

struct ControlDriver {
    ctx: Arc<PunchCtx>,
    routes: Arc<Routes>,
    cmd_rx: mpsc::Receiver<Command>,
    status_tx: watch::Sender<Status>,
    nat_tx: watch::Sender<Option<NatBehaviour>>,
    incoming_tx: mpsc::Sender<Session>,
    control: Control<Token>,
    /// The control connection, once its handshake is done.
    conn: Option<Channel<TcpStream>>,
    handshake: Option<Handshake>,
    nat_check: Option<NatCheck>,
    punches: JoinSet<u64>,
    shutdown: CancellationToken,
}

async fn recv(conn: &mut Option<Channel<TcpStream>>) -> Result<Vec<u8>, ChannelError> {
    match conn {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

async fn handshaking(
    h: &mut Option<Handshake>,
) -> Result<(Channel<TcpStream>, SocketAddr), RendezvousError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn nat_checking(check: &mut Option<NatCheck>) -> Result<SocketAddr, NatCheckError> {
    match check {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Connects from the punch port and runs the handshake carrying the registration.
async fn connect(
    ctx: Arc<PunchCtx>,
    control: ControlConfig,
) -> Result<(Channel<TcpStream>, SocketAddr), RendezvousError> {
    let config = &ctx.config;
    let stream = socket::connect_from(ctx.local, config.rendezvous)
        .await
        .map_err(|e| RendezvousError::Connect(Arc::new(e)))?;
    let local = stream
        .local_addr()
        .map_err(|e| RendezvousError::Io(Arc::new(e)))?;
    let register = control.register_message(local);
    let channel = client_handshake(stream, &ctx.keypair, &config.rendezvous_key, &register)
        .await
        .map_err(|e| RendezvousError::Handshake(Arc::new(e)))?;
    Ok((channel, local))
}

/// The NAT check: connects from the punch port to the rendezvous's check port `server`, runs
/// the control handshake as a probe, and returns the address the rendezvous saw it at; then
/// waits (bounded) for the server to close first. Bounded as a whole by the handshake timeout.
async fn nat_probe(ctx: Arc<PunchCtx>, server: SocketAddr) -> Result<SocketAddr, NatCheckError> {
    let timeout = ctx.config.auth_timeout;
    let channel_error = |e: ChannelError| NatCheckError::Channel {
        addr: server,
        source: Arc::new(e),
    };
    let probe = async {
        let stream =
            socket::connect_from(ctx.local, server)
                .await
                .map_err(|e| NatCheckError::Connect {
                    addr: server,
                    source: Arc::new(e),
                })?;
        let key = &ctx.config.rendezvous_key;
        let mut channel = client_handshake(stream, &ctx.keypair, key, &nat::probe_message())
            .await
            .map_err(channel_error)?;
        let frame = channel.recv().await.map_err(channel_error)?;
        match ServerMsg::decode(&frame) {
            Ok(ServerMsg::Registered(r)) => Ok((channel, r.observed)),
            Ok(ServerMsg::Error(e)) => Err(NatCheckError::Refused {
                addr: server,
                code: e.code,
                detail: e.detail,
            }),
            Ok(_) => Err(NatCheckError::Unexpected { addr: server }),
            Err(e) => Err(channel_error(ChannelError::Decode(e))),
        }
    };
    let (mut channel, observed) = tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| NatCheckError::Timeout(timeout))??;
    let _ = tokio::time::timeout(NAT_CHECK_CLOSE_WAIT, channel.recv()).await;
    Ok(observed)
}

impl ControlDriver {
    async fn run(mut self) {
        loop {
            self.carry_out().await;
            let wake = self.control.poll_timeout();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                cmd = self.cmd_rx.recv() => match cmd {
                    None => break,
                    Some(Command::Connect { peer, reply }) => self.control.connect(now(), peer, Token::Session(reply)),
                    Some(Command::Upgrade { peer, session_id, reply }) => self.control.upgrade(now(), peer, session_id, Token::Upgrade(reply)),
                    Some(Command::Discover { max, reply }) => self.control.discover(now(), max, Token::Discover(reply)),
                },
                res = handshaking(&mut self.handshake) => {
                    self.handshake = None;
                    match res {
                        Ok((channel, local)) => {
                            self.conn = Some(channel);
                            self.control.on_connected(now(), local);
                        }
                        Err(reason) => self.control.on_connect_failed(now(), reason),
                    }
                }
                res = nat_checking(&mut self.nat_check) => {
                    self.nat_check = None;
                    self.control.on_nat_checked(res);
                }
                msg = recv(&mut self.conn) => match msg {
                    Ok(bytes) => self.control.handle_frame(now(), &bytes),
                    Err(e) => {
                        self.conn = None;
                        self.control.on_lost(now(), RendezvousError::Lost(Arc::new(e)));
                    }
                },
                _ = sleep_until(wake) => self.control.handle_timeout(now()),
                Some(done) = self.punches.join_next(), if !self.punches.is_empty() => {
                    if let Ok(session_id) = done {
                        self.routes.remove(session_id);
                    }
                }
            }
        }
        self.punches.shutdown().await;
    }

    /// Carries out the machine's actions, in order, until it has none left.
    async fn carry_out(&mut self) {
        while let Some(action) = self.control.poll_action() {
            match action {
                Action::Connect => {
                    let config = self.control.config().clone();
                    self.conn = None;
                    self.nat_check = None;
                    self.handshake = Some(Box::pin(connect(self.ctx.clone(), config)));
                }
                Action::Close { reason } => {
                    debug!(%reason, "closing the control connection");
                    self.conn = None;
                    self.handshake = None;
                    self.nat_check = None;
                }
                Action::NatCheck { server } => {
                    self.nat_check = Some(Box::pin(nat_probe(self.ctx.clone(), server)));
                }
                Action::SetNat(behaviour) => {
                    self.nat_tx.send_replace(Some(behaviour));
                }
                Action::Send(msg) => {
                    let Some(channel) = self.conn.as_mut() else {
                        debug!(?msg, "no control connection; message dropped");
                        continue;
                    };
                    let sent =
                        tokio::time::timeout(CONTROL_WRITE_TIMEOUT, channel.send(&msg.encode()))
                            .await;
                    let reason = match sent {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => RendezvousError::Write(Arc::new(e)),
                        Err(_) => RendezvousError::WriteTimeout(CONTROL_WRITE_TIMEOUT),
                    };
                    self.conn = None;
                    self.control.on_lost(now(), reason);
                }
                Action::Reply { token, error } => match token {
                    Token::Session(reply) => {
                        let _ = reply.send(Err(error));
                    }
                    Token::Upgrade(reply) => {
                        let _ = reply.send(Err(error));
                    }
                    Token::Discover(reply) => {
                        let _ = reply.send(Err(error));
                    }
                },
                Action::Discovered { token, peers } => match token {
                    Token::Discover(reply) => {
                        let _ = reply.send(Ok(peers));
                    }
                    other => debug!(?other, "discover answer for another kind of request"),
                },
                Action::StartPunch {
                    offer,
                    reply,
                    started,
                } => self.start_punch(offer, reply, started),
                Action::RelayEnded { session_id, reason } => {
                    let notice = lock(&self.ctx.relay_notices).remove(&session_id);
                    match notice {
                        Some(tx) => {
                            info!(session = session_id, %reason, "the relay ended a relayed session");
                            let _ = tx.send(reason);
                        }
                        None => debug!(session = session_id, %reason, "relay end for no session"),
                    }
                }
                Action::Emit(event) => self.ctx.emit(event),
                Action::SetStatus(status) => {
                    self.status_tx.send_replace(status);
                }
            }
        }
    }

    fn start_punch(&mut self, offer: Offer, reply: Option<Token>, started: Instant) {
        let target = match (offer.upgrade, reply) {
            (Some(session), reply) => {
                let Some(control) = self.ctx.relayed_session(session, &offer.peer) else {
                    debug!(session, peer = %offer.peer.short(), "offer to move a relayed session we do not hold; ignored");
                    if let Some(Token::Upgrade(reply)) = reply {
                        let _ = reply.send(Err(Error::Shutdown));
                    }
                    return;
                };
                let done = match reply {
                    Some(Token::Upgrade(reply)) => Some(reply),
                    _ => None,
                };
                driver::Target::Upgrade { control, done }
            }
            (None, Some(Token::Session(reply))) => {
                driver::Target::New(self.deliver(&offer, Some(reply)))
            }
            (None, None) => driver::Target::New(self.deliver(&offer, None)),
            (None, Some(Token::Upgrade(reply))) => {
                warn!("an upgrade request answered with an offer for a new session; ignored");
                let _ = reply.send(Err(Error::Shutdown));
                return;
            }
            (None, Some(Token::Discover(reply))) => {
                // The machine matches offers to punch requests only; never reached.
                warn!("a discover request answered with an offer; ignored");
                let _ = reply.send(Err(Error::Shutdown));
                return;
            }
        };
        let (tx, rx) = mpsc::channel(8);
        self.routes.insert(offer.session_id, tx);
        let span = info_span!("punch", session = offer.session_id, peer = %offer.peer.short(), role = ?offer.role);
        debug!(parent: &span, observed = %offer.peer_observed, locals = offer.peer_local.len(), delay_ms = offer.dial_delay.as_millis() as u64, "offer received");
        let ctx = self.ctx.clone();
        let session_id = offer.session_id;
        self.punches.spawn(
            async move {
                driver::run(ctx, offer, rx, started, target).await;
                session_id
            }
            .instrument(span),
        );
    }

    /// Where a new session (or the punch's error) goes: the request's reply, or the inbound
    /// queue.
    fn deliver(&self, offer: &Offer, reply: Option<Reply>) -> driver::Deliver {
        let incoming = self.incoming_tx.clone();
        let session_id = offer.session_id;
        let peer = offer.peer;
        let events = self.ctx.events.clone();
        Box::new(move |result| {
            if let Err(e) = &result {
                warn!(error = %e, "punch failed");
                let _ = events.send(Event::Failed {
                    peer,
                    session_id,
                    kind: e.kind(),
                    error: e.to_string(),
                });
            }
            match (reply, result) {
                (Some(reply), result) => {
                    let _ = reply.send(result);
                }
                (None, Ok(session)) => {
                    if incoming.try_send(session).is_err() {
                        warn!("inbound session dropped: the application is not accepting");
                    }
                }
                (None, Err(_)) => {}
            }
        })
    }
}
