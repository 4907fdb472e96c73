//! The punch client: one control connection to the rendezvous, one listener, many punches.
//!
//! [`Client::start`] binds the shared punch port (listener first, so the port is fixed), then a
//! driver task connects to the rendezvous *from that port*, registers, answers pings, and
//! reconnects with backoff (re-registering) whenever the connection is lost. The public API is
//! a cloneable handle sending commands to the driver:
//!
//! ```text
//! Client::connect(peer) --Connect--> driver --ConnectRequest--> rendezvous
//!                                    driver <--Offer / Error---
//!                                    driver spawns driver::run --> Session (or typed error)
//! ```
//!
//! Offers for punches other peers requested end up on [`Incoming`]. The listener reads the
//! 12-byte preamble of each accepted stream and routes it to the punch with that session id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use punch_proto::channel::{client_handshake, Channel};
use punch_proto::message::{
    ClientMsg, ErrorCode, ErrorReply, Offer, Register, ServerMsg, PROTOCOL_VERSION,
};
use punch_proto::{PeerId, Role};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::auth::read_preamble;
use crate::config::Config;
use crate::driver::{self, Inbound, PunchCtx};
use crate::error::{Error, RendezvousError};
use crate::session::{Session, SessionInfo};
use crate::socket;

/// How long an accepted stream may take to send its preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// An accepted stream may arrive a little before the offer it belongs to (the peer's SYN can
/// beat the rendezvous's message): it waits this long for the punch to appear.
const ROUTE_WAIT: Duration = Duration::from_secs(2);
const ROUTE_POLL: Duration = Duration::from_millis(20);
/// The rendezvous is considered gone after this many of its ping intervals without a word.
const MISSED_PINGS: u32 = 3;
/// Sessions punched to us waiting for the application to take them.
const INCOMING_BACKLOG: usize = 32;

/// Where the client stands with the rendezvous.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Status {
    Connecting,
    Registered {
        /// Our address as the rendezvous sees it (the NAT's mapping of the punch port).
        observed: SocketAddr,
        /// Our local address of the control connection.
        local: SocketAddr,
    },
    Disconnected {
        reason: RendezvousError,
    },
}

/// Milestones of the client and its punches, as they happen ([`Client::events`]): for
/// progress displays, timelines and status pages. A receiver that falls more than
/// [`EVENT_BUFFER`] events behind misses the oldest (`RecvError::Lagged`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// Registered with the rendezvous, which sees us at `observed`.
    Registered {
        observed: SocketAddr,
        local: SocketAddr,
    },
    /// The control connection was lost or could not be made; the client keeps retrying.
    Disconnected { reason: RendezvousError },
    /// We asked the rendezvous to punch to `peer`.
    Requested { peer: PeerId },
    /// An offer arrived: for our request, or for another peer's punch to us
    /// (`inbound`). Both sides dial `dial_delay` after it.
    Offer {
        peer: PeerId,
        session_id: u64,
        role: Role,
        inbound: bool,
        observed: SocketAddr,
        locals: usize,
        dial_delay: Duration,
    },
    /// The first dial of a punch to one candidate address (redials are not reported).
    Dial {
        peer: PeerId,
        session_id: u64,
        addr: SocketAddr,
    },
    /// A punch produced an authenticated session.
    Established(SessionInfo),
    /// A punch ended without a session.
    Failed {
        peer: PeerId,
        session_id: u64,
        error: String,
    },
}

/// Events kept for slow receivers of [`Client::events`].
pub const EVENT_BUFFER: usize = 256;

#[derive(Debug)]
enum Command {
    Connect {
        peer: PeerId,
        reply: oneshot::Sender<Result<Session, Error>>,
    },
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<Inbound>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Handle to a running client. Dropping every clone stops the client; established sessions
/// live on until dropped.
#[derive(Debug, Clone)]
pub struct Client {
    cmd: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    local: SocketAddr,
    rendezvous: SocketAddr,
    id: PeerId,
    events: broadcast::Sender<Event>,
    _tasks: Arc<AbortOnDrop>,
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

#[derive(Debug)]
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Client {
    /// Binds the punch port and starts registering with the rendezvous in the background.
    pub async fn start(config: Config) -> Result<(Client, Incoming), Error> {
        let listener = socket::listen(config.bind)?;
        let local = listener.local_addr()?;
        let id = config.keypair.public();
        let rendezvous = config.rendezvous;
        let routes: Routes = Arc::default();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (status_tx, status) = watch::channel(Status::Connecting);
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_BACKLOG);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let span = info_span!("punch-client", id = %id.short(), port = local.port());
        let accept = tokio::spawn(
            accept_loop(listener, routes.clone(), config.max_pending_inbound)
                .instrument(span.clone()),
        );
        let driver = Driver {
            ctx: Arc::new(PunchCtx {
                keypair: config.keypair.clone(),
                local,
                config,
                events: events.clone(),
            }),
            routes,
            cmd_rx,
            status_tx,
            incoming_tx,
            pending: HashMap::new(),
            next_request: 1,
        };
        let driver = tokio::spawn(driver.run().instrument(span));
        Ok((
            Client {
                cmd: cmd_tx,
                status,
                local,
                rendezvous,
                id,
                events,
                _tasks: Arc::new(AbortOnDrop(vec![accept, driver])),
            },
            Incoming(incoming_rx),
        ))
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
}

async fn accept_loop(listener: TcpListener, routes: Routes, max_pending: usize) {
    let limit = Arc::new(Semaphore::new(max_pending));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => {
                let (stream, from) = match res {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn!(%from, "too many unidentified inbound streams; closed");
                    continue;
                };
                let routes = routes.clone();
                tasks.spawn(async move {
                    route(stream, from, routes).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

async fn route(mut stream: TcpStream, from: SocketAddr, routes: Routes) {
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
    let deadline = Instant::now() + ROUTE_WAIT;
    while Instant::now() < deadline {
        let tx = lock(&routes).get(&session).cloned();
        if let Some(tx) = tx {
            let _ = tx.send((stream, from)).await;
            return;
        }
        tokio::time::sleep(ROUTE_POLL).await;
    }
    info!(%from, session, "inbound stream closed: no punch with this session id");
}

#[derive(Debug)]
struct PendingRequest {
    peer: PeerId,
    reply: oneshot::Sender<Result<Session, Error>>,
    started: Instant,
}

struct Driver {
    ctx: Arc<PunchCtx>,
    routes: Routes,
    cmd_rx: mpsc::Receiver<Command>,
    status_tx: watch::Sender<Status>,
    incoming_tx: mpsc::Sender<Session>,
    pending: HashMap<u64, PendingRequest>,
    next_request: u64,
}

/// A registered control connection.
struct Conn {
    channel: Channel<TcpStream>,
    last_heard: tokio::time::Instant,
    silence_limit: Duration,
}

async fn recv(conn: &mut Option<Conn>) -> Result<Vec<u8>, punch_proto::channel::ChannelError> {
    match conn {
        Some(c) => c.channel.recv().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn unreachable(&self, source: RendezvousError) -> Error {
        Error::RendezvousUnreachable {
            addr: self.ctx.config.rendezvous,
            source,
        }
    }

    async fn run(mut self) {
        let config = self.ctx.config.clone();
        let mut conn: Option<Conn> = None;
        let mut backoff = config.reconnect_min;
        let mut retry_at = tokio::time::Instant::now();
        let mut punches: JoinSet<u64> = JoinSet::new();
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        loop {
            let silence_deadline = conn
                .as_ref()
                .map(|c| c.last_heard + c.silence_limit)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    None => break,
                    Some(Command::Connect { peer, reply }) => {
                        let Some(c) = conn.as_mut() else {
                            let _ = reply.send(Err(self.unreachable(RendezvousError::Reconnecting)));
                            continue;
                        };
                        let request_id = self.next_request;
                        self.next_request += 1;
                        let msg = ClientMsg::Connect { request_id, peer };
                        if let Err(e) = c.channel.send(&msg.encode()).await {
                            let e = RendezvousError::Write(Arc::new(e));
                            let _ = reply.send(Err(self.unreachable(e.clone())));
                            self.lost(&mut conn, &mut retry_at, &mut backoff, e);
                            continue;
                        }
                        info!(peer = %peer.short(), request_id, "punch requested");
                        self.ctx.emit(Event::Requested { peer });
                        self.pending.insert(request_id, PendingRequest { peer, reply, started: Instant::now() });
                    }
                },
                _ = tokio::time::sleep_until(retry_at), if conn.is_none() => {
                    match self.register().await {
                        Ok(c) => {
                            conn = Some(c);
                            backoff = config.reconnect_min;
                        }
                        Err(reason) => {
                            warn!(rendezvous = %config.rendezvous, %reason, retry_in_ms = backoff.as_millis() as u64, "rendezvous unreachable");
                            self.ctx.emit(Event::Disconnected { reason: reason.clone() });
                            self.status_tx.send_replace(Status::Disconnected { reason });
                            retry_at = tokio::time::Instant::now() + jitter(backoff);
                            backoff = (backoff * 2).min(config.reconnect_max);
                        }
                    }
                }
                _ = tokio::time::sleep_until(silence_deadline), if conn.is_some() => {
                    self.lost(&mut conn, &mut retry_at, &mut backoff, RendezvousError::Silent);
                }
                msg = recv(&mut conn) => match msg {
                    Ok(bytes) => {
                        if let Some(c) = conn.as_mut() {
                            c.last_heard = tokio::time::Instant::now();
                        }
                        match ServerMsg::decode(&bytes) {
                            Ok(msg) => {
                                if let Err(reason) = self.handle(msg, &mut conn, &mut punches).await {
                                    self.lost(&mut conn, &mut retry_at, &mut backoff, reason);
                                }
                            }
                            Err(e) => self.lost(&mut conn, &mut retry_at, &mut backoff, RendezvousError::Malformed(Arc::new(e))),
                        }
                    }
                    Err(e) => self.lost(&mut conn, &mut retry_at, &mut backoff, RendezvousError::Lost(Arc::new(e))),
                },
                Some(done) = punches.join_next(), if !punches.is_empty() => {
                    if let Ok(session_id) = done {
                        lock(&self.routes).remove(&session_id);
                    }
                }
                _ = sweep.tick() => self.expire_requests(config.request_timeout),
            }
        }
    }

    /// Connects from the punch port, runs the handshake with the registration, and waits for
    /// the server's `Registered`.
    async fn register(&self) -> Result<Conn, RendezvousError> {
        let config = &self.ctx.config;
        self.status_tx.send_replace(Status::Connecting);
        let timeout = config.auth_timeout;
        let stream = tokio::time::timeout(
            timeout,
            socket::connect_from(self.ctx.local, config.rendezvous),
        )
        .await
        .map_err(|_| RendezvousError::ConnectTimeout(timeout))?
        .map_err(|e| RendezvousError::Connect(Arc::new(e)))?;
        let local = stream
            .local_addr()
            .map_err(|e| RendezvousError::Io(Arc::new(e)))?;
        let register = Register {
            version: PROTOCOL_VERSION,
            local_addrs: vec![local],
            accept_inbound: config.accept_inbound,
        };
        let handshake =
            client_handshake(stream, &self.ctx.keypair, &config.rendezvous_key, &register);
        let mut channel = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| RendezvousError::HandshakeTimeout)?
            .map_err(|e| RendezvousError::Handshake(Arc::new(e)))?;
        let first = tokio::time::timeout(timeout, channel.recv())
            .await
            .map_err(|_| RendezvousError::NoRegistrationReply)?
            .map_err(|e| RendezvousError::Registration(Arc::new(e)))?;
        match ServerMsg::decode(&first).map_err(|e| RendezvousError::Malformed(Arc::new(e)))? {
            ServerMsg::Registered(r) => {
                info!(observed = %r.observed, %local, "registered with the rendezvous");
                self.ctx.emit(Event::Registered {
                    observed: r.observed,
                    local,
                });
                self.status_tx.send_replace(Status::Registered {
                    observed: r.observed,
                    local,
                });
                Ok(Conn {
                    channel,
                    last_heard: tokio::time::Instant::now(),
                    silence_limit: r.ping_interval.max(Duration::from_millis(100)) * MISSED_PINGS,
                })
            }
            ServerMsg::Error(e) => Err(RendezvousError::RegistrationRefused {
                code: e.code,
                detail: e.detail,
            }),
            other => Err(RendezvousError::Unexpected(Box::new(other))),
        }
    }

    fn lost(
        &mut self,
        conn: &mut Option<Conn>,
        retry_at: &mut tokio::time::Instant,
        backoff: &mut Duration,
        reason: RendezvousError,
    ) {
        warn!(%reason, "lost the rendezvous; reconnecting");
        self.ctx.emit(Event::Disconnected {
            reason: reason.clone(),
        });
        *conn = None;
        *retry_at = tokio::time::Instant::now() + jitter(self.ctx.config.reconnect_min);
        *backoff = self.ctx.config.reconnect_min;
        self.status_tx.send_replace(Status::Disconnected {
            reason: reason.clone(),
        });
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(Error::RendezvousUnreachable {
                addr: self.ctx.config.rendezvous,
                source: reason.clone(),
            }));
        }
    }

    fn expire_requests(&mut self, timeout: Duration) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.started.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(Error::RequestTimeout(timeout)));
            }
        }
    }

    async fn handle(
        &mut self,
        msg: ServerMsg,
        conn: &mut Option<Conn>,
        punches: &mut JoinSet<u64>,
    ) -> Result<(), RendezvousError> {
        match msg {
            ServerMsg::Ping { nonce } => {
                if let Some(c) = conn.as_mut() {
                    c.channel
                        .send(&ClientMsg::Pong { nonce }.encode())
                        .await
                        .map_err(|e| RendezvousError::Write(Arc::new(e)))?;
                }
            }
            ServerMsg::Offer(offer) => self.start_punch(offer, punches),
            ServerMsg::Error(e) => self.refused(e)?,
            other => debug!(?other, "ignored message"),
        }
        Ok(())
    }

    fn refused(&mut self, e: ErrorReply) -> Result<(), RendezvousError> {
        let Some(p) = self.pending.remove(&e.request_id) else {
            if e.request_id == 0 {
                return Err(RendezvousError::Server {
                    code: e.code,
                    detail: e.detail,
                });
            }
            debug!(request_id = e.request_id, "error for an expired request");
            return Ok(());
        };
        let err = match e.code {
            ErrorCode::PeerOffline => Error::PeerOffline { peer: p.peer },
            ErrorCode::PeerRefuses => Error::PeerRefuses { peer: p.peer },
            ErrorCode::RateLimited => Error::RateLimited {
                retry_after: e.retry_after,
            },
            code => Error::Rendezvous {
                code,
                detail: e.detail,
            },
        };
        info!(peer = %p.peer.short(), error = %err, "punch refused by the rendezvous");
        let _ = p.reply.send(Err(err));
        Ok(())
    }

    fn start_punch(&mut self, offer: Offer, punches: &mut JoinSet<u64>) {
        let inbound = offer.request_id == 0;
        let (reply, started) = if inbound {
            if !self.ctx.config.accept_inbound {
                warn!(peer = %offer.peer.short(), "offer for an inbound punch, but inbound is off; ignored");
                return;
            }
            (None, Instant::now())
        } else {
            match self.pending.remove(&offer.request_id) {
                Some(p) if p.peer == offer.peer => (Some(p.reply), p.started),
                _ => {
                    debug!(
                        request_id = offer.request_id,
                        "offer for an unknown or expired request; ignored"
                    );
                    return;
                }
            }
        };
        let (tx, rx) = mpsc::channel(8);
        lock(&self.routes).insert(offer.session_id, tx);
        let span = info_span!("punch", session = offer.session_id, peer = %offer.peer.short(), role = ?offer.role);
        info!(parent: &span, observed = %offer.peer_observed, locals = offer.peer_local.len(), delay_ms = offer.dial_delay.as_millis() as u64, "offer received");
        self.ctx.emit(Event::Offer {
            peer: offer.peer,
            session_id: offer.session_id,
            role: offer.role,
            inbound,
            observed: offer.peer_observed,
            locals: offer.peer_local.len(),
            dial_delay: offer.dial_delay,
        });
        let ctx = self.ctx.clone();
        let incoming = self.incoming_tx.clone();
        let session_id = offer.session_id;
        let peer = offer.peer;
        punches.spawn(
            async move {
                let result = driver::run(ctx.clone(), offer, rx, started).await;
                if let Err(e) = &result {
                    warn!(error = %e, "punch failed");
                    ctx.emit(Event::Failed {
                        peer,
                        session_id,
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
                session_id
            }
            .instrument(span),
        );
    }
}

/// Between half and all of `d`, so that many clients do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    d / 2 + d.mul_f64(rand::random::<f64>() / 2.0)
}
