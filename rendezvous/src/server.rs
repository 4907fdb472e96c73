//! The rendezvous server: accept loop, one driver task per control connection.
//!
//! Per connection: the per-IP connection limit is checked at accept, and then the connection
//! costs only its socket until its complete message 1 arrives (within the first-message
//! timeout). Only then does the [`HandshakeGate`] decide whether it may take a handshake slot
//! (per-source rate, per-prefix share, evicting the oldest of the largest holder when full);
//! an evicted handshake is cancelled through its token. The Noise XK handshake must finish
//! within the handshake timeout of accept; then the peer is registered with the address the
//! server *observed* and the driver loops over (outbound messages queued by the registry,
//! inbound client messages, ping timer, idle deadline) until either side ends it.
//! Every way an admitted connection ends is logged once, with the reason, in the connection's
//! span; refusals before admission (rate, per-IP, evicted, silent) are counted by the
//! [`RefusalLog`] and logged as one summary per interval.
//!
//! A connection whose first bytes are "PR" instead of message 1's length is a relay
//! connection, served by `relay` (in `server/relay.rs`): it never takes a handshake slot.
//! Shutdown ends relayed sessions first, so their `RelayEnded` goes out over the control
//! connections, which close after, each with a `GoingAway` telling its peer to come back at a
//! random moment within the reconnect window ([`Config::reconnect_window`]: the peers
//! registered, spread at `reconnect_rate`), so that a restart is not a thundering herd.
//!
//! A second listener, the NAT check port (`server/nat_check.rs`, named to clients in
//! `Registered`), takes connections through the same admission and handshake and answers a
//! client's probe with the address it saw, then closes.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use punch_proto::channel::{server_handshake, Accepted, Channel, ChannelError};
use punch_proto::message::{ClientMsg, DecodeError, ErrorCode, ErrorReply, Registered, ServerMsg};
use punch_proto::PeerId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

mod admission;
mod nat_check;
mod relay;
mod stats;

use stats::Counters;
pub use stats::ServerStats;

use crate::config::Config;
use crate::first_message::{read_first_message, Rewound};
use crate::gate::{GateLimits, HandshakeGate, Prefix};
use crate::limiter::ByteBucket;
use crate::refusal_log::{Reason, RefusalLog};
use crate::registry::{clock_us, Action, ConnId, Limits, Registry};
use crate::relay::{attach_tickets, PairId, RelayLimits, RelayTable};
use admission::{admit, admit_handshake, admit_waiting, HandshakeSlot, IpSlot};
use nat_check::Listener;

/// A write to a client that takes longer than this means the client is not reading: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for relayed sessions to end (and queue `RelayEnded` for their
/// peers) before it closes the control connections that carry the message.
const RELAY_SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// How often shutdown looks whether the relayed sessions have ended.
const RELAY_SHUTDOWN_POLL: Duration = Duration::from_millis(10);
/// How long shutdown waits for connection tasks to say goodbye before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often idle rate-limit state is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);
/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A connection's stream once its first bytes were read.
type Conn = Rewound<TcpStream>;

#[derive(Debug)]
enum Outbound {
    /// Boxed: the queue's first block (32 slots) is allocated with the queue, one per
    /// registered peer, so a slot is a pointer, not a whole offer.
    Msg(Box<ServerMsg>),
    Close(&'static str),
}

#[derive(Debug)]
struct State {
    registry: Registry,
    conns: HashMap<ConnId, mpsc::Sender<Outbound>>,
    per_ip: HashMap<Prefix, usize>,
    next_conn: ConnId,
    gate: HandshakeGate,
    /// Connections waiting for message 1 (the same fair eviction, no rate), by handshake id;
    /// their cancel tokens are in `pending` too.
    waiting: HandshakeGate,
    /// Cancels each admitted, pending handshake (for eviction), by handshake id.
    pending: HashMap<u64, (CancellationToken, Prefix)>,
    next_handshake: u64,
    refusals: RefusalLog,
    relay: RelayTable,
    /// The held first side of each waiting pair, to hand its partner to.
    relay_waiters: HashMap<PairId, tokio::sync::oneshot::Sender<relay::Joined>>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    /// The NAT check listener's bound port, announced in `Registered`.
    nat_check_port: Option<u16>,
    state: Mutex<State>,
    counters: Counters,
    /// The relay's server-wide byte budget (`relay_rate_total`).
    relay_total: Mutex<ByteBucket>,
    /// Set once shutdown begins: the window each peer is told to reconnect within.
    going_away: OnceLock<Duration>,
    /// Where the server's clock starts ([`crate::registry::clock_us`]).
    epoch: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still consistent enough to serve.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out registry actions. A connection whose queue is full is not reading: its
    /// sender is dropped, which ends its driver.
    fn dispatch(state: &mut State, actions: Vec<Action>) {
        for action in actions {
            let (conn, out) = match action {
                Action::Send { conn, msg } => (conn, Outbound::Msg(Box::new(msg))),
                Action::Close { conn, reason } => (conn, Outbound::Close(reason)),
            };
            if let Some(tx) = state.conns.get(&conn) {
                if tx.try_send(out).is_err() {
                    warn!(conn, "client queue full or gone; dropping the connection");
                    state.conns.remove(&conn);
                }
            }
        }
    }
}

/// A running rendezvous server. Dropping it shuts the server down.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    nat_check_addr: Option<SocketAddr>,
    identity: PeerId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds `config.listen` (and `config.nat_check`, when set) and serves in a background
    /// task.
    pub async fn spawn(config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let check = match config.nat_check {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let nat_check_addr = check.as_ref().map(TcpListener::local_addr).transpose()?;
        let identity = config.keypair.public();
        let shutdown = CancellationToken::new();
        let shared = new_shared(config, nat_check_addr.map(|a| a.port()));
        let task = tokio::spawn(run(listener, check, shared.clone(), shutdown.clone()));
        Ok(Server {
            local_addr,
            nat_check_addr,
            identity,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The NAT check listener's bound address, when there is one.
    pub fn nat_check_addr(&self) -> Option<SocketAddr> {
        self.nat_check_addr
    }

    /// The server's identity, which clients pin.
    pub fn identity(&self) -> PeerId {
        self.identity
    }

    pub fn stats(&self) -> ServerStats {
        stats::snapshot(&self.shared)
    }

    /// Reads the counters on demand, independently of `self` (a metrics scrape).
    pub fn stats_reader(&self) -> impl Fn() -> ServerStats + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || stats::snapshot(&shared)
    }

    /// Stops accepting, closes every connection and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn new_shared(config: Config, nat_check_port: Option<u16>) -> Arc<Shared> {
    let limits = Limits {
        max_peers: config.max_peers,
        max_registrations_per_source: config.max_registrations_per_source,
        max_registrations_per_network: config.max_registrations_per_network,
        punch_requests_per_minute: config.punch_requests_per_minute,
        punch_requests_per_source_per_minute: config.punch_requests_per_source_per_minute,
        punch_requests_per_network_per_minute: config.punch_requests_per_network_per_minute,
        offers_per_target_per_source_per_minute: config.offers_per_target_per_source_per_minute,
        offers_per_target_per_network_per_minute: config.offers_per_target_per_network_per_minute,
        max_rate_keys: config.max_rate_keys,
        dial_margin: config.dial_margin,
        discover_max: config.discover_max,
    };
    let gate = HandshakeGate::new(GateLimits {
        max_pending: config.max_handshakes,
        max_pending_per_prefix: config.max_pending_handshakes_per_prefix,
        per_source_per_minute: Some(config.handshakes_per_source_per_minute),
    });
    let waiting = HandshakeGate::new(GateLimits {
        max_pending: config.max_waiting_connections,
        // The per-IP connection limit already applies to every connection.
        max_pending_per_prefix: usize::MAX,
        per_source_per_minute: None,
    });
    let relay = RelayTable::new(RelayLimits {
        max_pending: config.relay_max_pending,
        pair_timeout: config.relay_pair_timeout,
        max_sessions: config.relay_max_sessions,
        max_sessions_per_peer: config.relay_max_sessions_per_peer,
        max_sessions_per_source: config.relay_max_sessions_per_source,
        after_min: config.relay_after_min,
    });
    // The server's clock (pongs and offers' dial moments) counts from here.
    let epoch = Instant::now();
    let total_burst = (config.relay_rate_total / 8).max(relay::RELAY_BUFFER as u64);
    let relay_total = ByteBucket::new(config.relay_rate_total, total_burst, Instant::now());
    Arc::new(Shared {
        relay_total: Mutex::new(relay_total),
        going_away: OnceLock::new(),
        state: Mutex::new(State {
            registry: Registry::new(limits, rand::random()).with_clock(epoch),
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            next_conn: 1,
            gate,
            waiting,
            pending: HashMap::new(),
            next_handshake: 1,
            refusals: RefusalLog::new(
                config.refusal_log_interval,
                config.failure_log_lines_per_interval,
                Instant::now(),
            ),
            relay,
            relay_waiters: HashMap::new(),
        }),
        counters: Counters::default(),
        config,
        nat_check_port,
        epoch,
    })
}

/// Accepts on the NAT check listener, if there is one.
async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One accepted connection (of either listener): admitted and given a task, or refused.
async fn accepted(
    res: io::Result<(TcpStream, SocketAddr)>,
    listener: Listener,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    (conns_stop, relay_stop): (&CancellationToken, &CancellationToken),
) {
    let (stream, addr) = match res {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, ?listener, "accept failed");
            tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            return;
        }
    };
    if let Some(slot) = admit(shared, addr) {
        // In accept order, so the oldest waiting connections really are the oldest.
        let waiting = admit_waiting(shared, addr);
        let span = match listener {
            Listener::Main => info_span!("conn", %addr, peer = tracing::field::Empty),
            Listener::NatCheck => info_span!("nat_check", %addr, peer = tracing::field::Empty),
        };
        let tokens = (conns_stop.clone(), relay_stop.clone());
        tasks.spawn(
            handle_conn(
                stream,
                addr,
                listener,
                shared.clone(),
                slot,
                waiting,
                tokens,
            )
            .instrument(span),
        );
    }
}

async fn run(
    listener: TcpListener,
    check: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // Shutdown in two steps: relayed sessions end first (telling their peers why, through
    // the control connections), then the control connections.
    let relay_stop = CancellationToken::new();
    let conns_stop = CancellationToken::new();
    let stops = (&conns_stop, &relay_stop);
    let mut tasks = JoinSet::new();
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let mut summary = tokio::time::interval(shared.config.refusal_log_interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            res = listener.accept() => {
                accepted(res, Listener::Main, &shared, &mut tasks, stops).await;
            }
            res = accept_on(check.as_ref()) => {
                accepted(res, Listener::NatCheck, &shared, &mut tasks, stops).await;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = prune.tick() => {
                let mut state = shared.lock();
                let now = Instant::now();
                state.registry.prune(now);
                state.gate.prune(now);
                state.waiting.prune(now);
                state.relay.prune(now);
            }
            _ = summary.tick() => {
                let s = shared.lock().refusals.summary(Instant::now());
                if let Some(s) = s {
                    warn!("{s}");
                }
            }
        }
    }
    // Closed at once: a peer that comes back while we shut down is refused and backs off,
    // instead of waiting in the accept backlog for a reset when the process exits.
    drop(listener);
    let registered = shared.lock().registry.len();
    let window = shared.config.reconnect_window(registered);
    let _ = shared.going_away.set(window);
    info!(
        connections = tasks.len(),
        registered,
        reconnect_window_ms = window.as_millis() as u64,
        "shutting down"
    );
    relay_stop.cancel();
    let relays_ended = async {
        while shared.counters.relay_active.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(RELAY_SHUTDOWN_POLL).await;
        }
    };
    let _ = tokio::time::timeout(RELAY_SHUTDOWN_GRACE, relays_ended).await;
    conns_stop.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tasks.abort_all();
    }
    let s = stats::snapshot(&shared);
    let told = s.going_away;
    info!(
        told,
        registered,
        reconnect_window_ms = window.as_millis() as u64,
        accepted = s.accepted,
        rejected_ip_limit = s.rejected_ip_limit,
        rejected_rate = s.rejected_rate,
        evicted = s.evicted,
        silent = s.silent,
        handshake_failed = s.handshake_failed,
        network_full = s.network_full,
        "shut down: told {told} of {registered} peers to reconnect within {window:?}"
    );
}

async fn handle_conn(
    mut stream: TcpStream,
    addr: SocketAddr,
    listener: Listener,
    shared: Arc<Shared>,
    slot: IpSlot,
    (wait_slot, dropped): (HandshakeSlot, CancellationToken),
    (shutdown, relay_stop): (CancellationToken, CancellationToken),
) {
    let _ = stream.set_nodelay(true);
    let config = &shared.config;
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let first_deadline =
        tokio::time::Instant::now() + config.first_message_timeout.min(config.handshake_timeout);
    let head = tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = dropped.cancelled() => {
            debug!("closed: waiting for message 1, dropped for a newer connection");
            return;
        }
        res = tokio::time::timeout_at(first_deadline, read_first_message(&mut stream)) => match res {
            Err(_) => {
                shared.counters.silent.fetch_add(1, Ordering::Relaxed);
                shared.counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                shared.lock().refusals.record(Reason::Silent, Prefix::of(addr.ip()));
                debug!("closed: no message 1 in time");
                return;
            }
            Ok(Err(e)) => {
                shared.counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "closed: read failed before message 1");
                return;
            }
            Ok(Ok(head)) => head,
        },
    };
    // The NAT check port serves no relay: a relay hello there fails the handshake below.
    if listener == Listener::Main && relay::is_relay(&head) {
        let waiting = (wait_slot, dropped);
        // Boxed, like the handshake below: a future's size is that of its largest state, and
        // the task of every registered peer would carry these for its whole life.
        Box::pin(relay::serve(
            stream,
            head,
            addr,
            shared,
            slot,
            waiting,
            first_deadline,
            relay_stop,
        ))
        .await;
        return;
    }
    drop(wait_slot);
    let Some((permit, evict)) = admit_handshake(&shared, addr) else {
        return;
    };
    let handshake = Box::pin(server_handshake(
        Rewound::new(head, stream),
        &config.keypair,
    ));
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => {
            info!("closed: server shutting down during the handshake");
            return;
        }
        _ = evict.cancelled() => {
            shared.counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
            debug!("closed: pending handshake evicted for a newer one");
            return;
        }
        res = tokio::time::timeout_at(deadline, handshake) => match res {
            Err(_) => {
                shared.counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                shared.counters.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                if shared.lock().refusals.may_log_failure() {
                    info!(timeout = ?config.handshake_timeout, "closed: handshake timed out");
                }
                return;
            }
            Ok(Err(e)) => {
                shared.counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                shared.counters.handshake_errors.fetch_add(1, Ordering::Relaxed);
                if shared.lock().refusals.may_log_failure() {
                    info!(error = %e, "closed: handshake failed");
                }
                return;
            }
            Ok(Ok(accepted)) => accepted,
        },
    };
    drop(permit);
    shared
        .counters
        .handshakes_ok
        .fetch_add(1, Ordering::Relaxed);
    let peer = accepted.peer;
    tracing::Span::current().record("peer", peer.short().as_str());
    if nat_check::is_nat_check(listener, &accepted.register) {
        let register = &accepted.register;
        Box::pin(nat_check::serve(
            accepted.channel,
            &shared,
            peer,
            addr,
            listener,
            register,
        ))
        .await;
        return;
    }
    let Accepted {
        mut channel,
        register,
        rtt,
        ..
    } = accepted;

    let (tx, rx) = mpsc::channel(config.outbound_queue);
    let registered = {
        let mut state = shared.lock();
        let conn = state.next_conn;
        state.next_conn += 1;
        match state.registry.register(conn, peer, addr, &register, rtt) {
            Ok(actions) => {
                state.conns.insert(conn, tx);
                Shared::dispatch(&mut state, actions);
                Ok(conn)
            }
            Err(code) => {
                let reason = match code {
                    ErrorCode::NetworkFull => Some(Reason::NetworkFull),
                    ErrorCode::ServerFull => Some(Reason::ServerFull),
                    _ => None,
                };
                if let Some(reason) = reason {
                    state.refusals.record(reason, Prefix::of(addr.ip()));
                }
                Err(code)
            }
        }
    };
    let conn = match registered {
        Ok(conn) => conn,
        Err(code) => {
            let detail = match code {
                ErrorCode::NetworkFull => format!(
                    "registration refused: your address (or IPv6 /64) or network (IPv4 /24, \
                     IPv6 /48) already holds its {} or {} registrations",
                    config.max_registrations_per_source, config.max_registrations_per_network
                ),
                code => format!("registration refused: {code:?}"),
            };
            let reply = ServerMsg::Error(ErrorReply {
                request_id: 0,
                code,
                detail,
                retry_after: None,
            });
            let _ = tokio::time::timeout(WRITE_TIMEOUT, channel.send(&reply.encode())).await;
            // Counted in the refusal summary; a flood of them must not write a line each.
            debug!(?code, "closed: registration refused");
            return;
        }
    };
    info!(
        local_addrs = register.local_addrs.len(),
        accept_inbound = register.accept_inbound,
        network = register.network.as_str(),
        rtt_ms = rtt.as_millis() as u64,
        "registered"
    );
    // The registry holds what it needs of the registration; the connection keeps none of it.
    drop(register);
    let reason = drive(&mut channel, &shared, peer, addr, conn, rx, &shutdown).await;
    {
        let mut state = shared.lock();
        state.registry.unregister(&peer, conn);
        state.conns.remove(&conn);
    }
    match reason {
        Ok(reason) => info!(reason, "closed"),
        Err(error) => {
            shared
                .counters
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            warn!(reason = %error, "closed: protocol error");
        }
    }
}

/// A punch request: the registry decides (budgets, allow-list, offers to both peers); offers of
/// a new punch get relay tickets, and those of an upgrade (a punch to move the relayed session
/// `upgrade` to a direct connection) name the session instead: that punch must go direct.
fn punch_request(
    shared: &Shared,
    conn: ConnId,
    peer: PeerId,
    observed: SocketAddr,
    request_id: u64,
    target: PeerId,
    upgrade: Option<u64>,
) {
    let mut guard = shared.lock();
    let state = &mut *guard;
    // Nothing else can fill the queues while the state lock is held, so the capacities the
    // registry sees still hold when dispatching.
    let conns = &state.conns;
    let now = Instant::now();
    let mut actions = state
        .registry
        .connect(now, conn, peer, request_id, target, |c| {
            conns.get(&c).is_some_and(|tx| tx.capacity() > 0)
        });
    match upgrade {
        Some(session) => {
            for action in &mut actions {
                if let Action::Send {
                    msg: ServerMsg::Offer(o),
                    ..
                } = action
                {
                    o.upgrade = Some(session);
                }
            }
        }
        None if shared.config.relay => {
            let registry = &state.registry;
            attach_tickets(&mut state.relay, now, &mut actions, rand::random, |p| {
                registry.srtt(p)
            });
        }
        None => {}
    }
    if let Some(reason) = refusal_reason(&actions) {
        state.refusals.record(reason, Prefix::of(observed.ip()));
    } else {
        log_punch(state, &actions, target, upgrade);
    }
    Shared::dispatch(state, actions);
}

/// One info line per punch request (in the requester's span): the offers sent, or why it was
/// refused. Refusals that go to the summary (rate limits, allow-lists) are not passed here;
/// the others share the failure lines' budget, so a requester naming offline peers in a loop
/// cannot flood the log.
fn log_punch(state: &mut State, actions: &[Action], target: PeerId, upgrade: Option<u64>) {
    let offer = actions.iter().find_map(|a| match a {
        Action::Send {
            msg: ServerMsg::Offer(o),
            ..
        } => Some(o),
        _ => None,
    });
    match (offer, actions) {
        (Some(o), _) => info!(
            target = %target.short(),
            session = o.session_id,
            relay = o.relay.is_some(),
            upgrade = upgrade.is_some(),
            "punch: offers sent"
        ),
        (
            None,
            [Action::Send {
                msg: ServerMsg::Error(e),
                ..
            }],
        ) if state.refusals.may_log_failure() => {
            info!(target = %target.short(), code = ?e.code, "punch refused");
        }
        _ => {}
    }
}

/// A `Discover`: the registry samples the asker's network (charging the request budgets); a
/// rate-limited one is counted in the refusal summary like a punch request.
fn discover_request(
    shared: &Shared,
    conn: ConnId,
    peer: PeerId,
    observed: SocketAddr,
    request_id: u64,
    max: u32,
) {
    let mut guard = shared.lock();
    let state = &mut *guard;
    let actions = state
        .registry
        .discover(Instant::now(), conn, peer, request_id, max);
    if let Some(reason) = refusal_reason(&actions) {
        state.refusals.record(reason, Prefix::of(observed.ip()));
    }
    Shared::dispatch(state, actions);
}

/// The refusal-summary reason of a punch request's answer, if it is one the summary counts
/// (budgets and allow-lists: what a Sybil flood makes by the thousand).
fn refusal_reason(actions: &[Action]) -> Option<Reason> {
    match actions {
        [Action::Send {
            msg: ServerMsg::Error(e),
            ..
        }] => match e.code {
            ErrorCode::RateLimited => Some(Reason::RequestRate),
            ErrorCode::NotAllowed => Some(Reason::NotAllowed),
            _ => None,
        },
        _ => None,
    }
}

/// Why a registered connection was dropped for the client's misbehaviour.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    /// The client broke the protocol: a frame that is not valid framing or Noise.
    #[error(transparent)]
    Channel(ChannelError),
    /// The client broke the protocol: a message that does not decode.
    #[error("malformed message: {0}")]
    Malformed(#[source] DecodeError),
    /// The client broke the protocol: a message a registered client must not send.
    #[error("unexpected message {0:?}")]
    Unexpected(Box<ClientMsg>),
    /// Writing to the client failed (its connection broke).
    #[error("write failed: {0}")]
    Write(#[source] ChannelError),
    /// The client does not read what we send.
    #[error("write timed out: client is not reading")]
    WriteTimeout,
}

/// Sends one message, bounded by [`WRITE_TIMEOUT`].
async fn send(channel: &mut Channel<Conn>, msg: ServerMsg) -> Result<(), ConnError> {
    match tokio::time::timeout(WRITE_TIMEOUT, channel.send(&msg.encode())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ConnError::Write(e)),
        Err(_) => Err(ConnError::WriteTimeout),
    }
}

/// The registered connection's loop. Returns why it ended: `Ok` for orderly reasons, `Err` for
/// a client that broke the protocol or stopped reading.
async fn drive(
    channel: &mut Channel<Conn>,
    shared: &Shared,
    peer: PeerId,
    observed: SocketAddr,
    conn: ConnId,
    mut rx: mpsc::Receiver<Outbound>,
    shutdown: &CancellationToken,
) -> Result<&'static str, ConnError> {
    let config = &shared.config;
    send(
        channel,
        ServerMsg::Registered(Registered {
            observed,
            ping_interval: config.ping_interval,
            nat_check_port: shared.nat_check_port,
        }),
    )
    .await?;

    let start = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(start + config.ping_interval, config.ping_interval);
    let mut last_heard = start;
    let mut outstanding: Option<(u64, Instant)> = None;
    loop {
        let idle_deadline = last_heard + config.idle_timeout;
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Goodbyes already queued (a relayed session's RelayEnded) go out first; the
                // queue is bounded and each send by its write timeout.
                while let Ok(Outbound::Msg(msg)) = rx.try_recv() {
                    send(channel, *msg).await?;
                }
                let reconnect_within = shared.going_away.get().copied().unwrap_or_default();
                send(channel, ServerMsg::GoingAway { reconnect_within }).await?;
                shared.counters.going_away.fetch_add(1, Ordering::Relaxed);
                return Ok("server shutting down");
            }
            _ = tokio::time::sleep_until(idle_deadline) => return Ok("idle timeout"),
            out = rx.recv() => match out {
                Some(Outbound::Msg(msg)) => {
                    if let ServerMsg::Offer(o) = &*msg {
                        debug!(session = o.session_id, peer = %o.peer.short(), role = ?o.role,
                              dial_delay_ms = o.dial_delay.as_millis() as u64,
                              relay_after_ms = o.relay.as_ref().map(|t| t.after.as_millis() as u64),
                              "offer");
                    }
                    send(channel, *msg).await?;
                }
                Some(Outbound::Close(reason)) => return Ok(reason),
                None => return Ok("dropped: not reading its messages"),
            },
            _ = ping.tick() => {
                let nonce = rand::random();
                outstanding = Some((nonce, Instant::now()));
                send(channel, ServerMsg::Ping { nonce }).await?;
            }
            frame = channel.recv() => {
                let bytes = match frame {
                    Ok(bytes) => bytes,
                    Err(ChannelError::Closed) => return Ok("client disconnected"),
                    Err(e) => return Err(ConnError::Channel(e)),
                };
                last_heard = tokio::time::Instant::now();
                match ClientMsg::decode(&bytes).map_err(ConnError::Malformed)? {
                    ClientMsg::Ping { nonce } => {
                        shared.counters.pings.fetch_add(1, Ordering::Relaxed);
                        let server_time_us = Some(clock_us(shared.epoch, Instant::now()));
                        send(channel, ServerMsg::Pong { nonce, server_time_us }).await?
                    }
                    ClientMsg::Pong { nonce } => {
                        if let Some((expected, sent)) = outstanding {
                            if expected == nonce {
                                outstanding = None;
                                shared.lock().registry.rtt_sample(&peer, conn, sent.elapsed());
                            }
                        }
                    }
                    ClientMsg::Connect { request_id, peer: target } => {
                        shared.counters.requests_connect.fetch_add(1, Ordering::Relaxed);
                        debug!(request_id, target = %target.short(), "punch request");
                        punch_request(shared, conn, peer, observed, request_id, target, None);
                    }
                    ClientMsg::Upgrade { request_id, peer: target, session_id } => {
                        shared.counters.requests_upgrade.fetch_add(1, Ordering::Relaxed);
                        debug!(request_id, target = %target.short(), session = session_id, "punch request for a relayed session");
                        punch_request(shared, conn, peer, observed, request_id, target, Some(session_id));
                    }
                    ClientMsg::Discover { request_id, max } => {
                        shared.counters.requests_discover.fetch_add(1, Ordering::Relaxed);
                        debug!(request_id, max, "discover");
                        discover_request(shared, conn, peer, observed, request_id, max);
                    }
                    other => return Err(ConnError::Unexpected(Box::new(other))),
                }
            }
        }
    }
}
