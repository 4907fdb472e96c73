//! Forwarding between local TCP connections and session streams: [`serve`] is `punch
//! listen`'s work (every stream of every inbound session becomes a connection to the local
//! service), [`splice`] also serves `punch connect --local`.
//!
//! Every inbound session costs a socket and every forwarded stream another, so [`serve`] caps
//! both ([`ListenLimits`]): sessions per peer and in total, forwards per session and in total.
//! What is over a cap is closed at once (a session dropped, a stream reset), counted, and
//! reported at most once a minute ([`crate::throttle`]). The yamux cap on open streams per
//! session ([`crate::Config::max_streams_per_session`]) stops a flood before it gets here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use punch_proto::PeerId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::client::Incoming;
use crate::lock;
use crate::session::{Session, Stream};
use crate::throttle::LogThrottle;

/// Sessions one peer may hold to us at once: a reconnect overlapping a dying session, plus a
/// spare; more from one identity is a peer multiplying its share of the caps below.
pub const DEFAULT_SESSIONS_PER_PEER: usize = 4;
/// Inbound sessions at once, all peers: a Kaspa node keeps a few dozen inbound peers.
pub const DEFAULT_SESSIONS_TOTAL: usize = 64;
/// Streams of one session forwarded at once: one Kaspa peer uses one stream; 64 leaves room
/// for a browser-like client while one peer cannot take the whole total below.
pub const DEFAULT_FORWARDS_PER_SESSION: usize = 64;
/// Forwarded streams at once, all sessions: each holds a connection to the service, and 512
/// plus the sessions' sockets stays under the common 1,024 file-descriptor soft limit even
/// where it cannot be raised.
pub const DEFAULT_FORWARDS_TOTAL: usize = 512;

/// The caps of [`serve`] (see the module doc).
#[derive(Debug, Clone)]
pub struct ListenLimits {
    /// See [`DEFAULT_SESSIONS_PER_PEER`].
    pub sessions_per_peer: usize,
    /// See [`DEFAULT_SESSIONS_TOTAL`].
    pub sessions_total: usize,
    /// See [`DEFAULT_FORWARDS_PER_SESSION`].
    pub forwards_per_session: usize,
    /// See [`DEFAULT_FORWARDS_TOTAL`].
    pub forwards_total: usize,
}

impl Default for ListenLimits {
    fn default() -> Self {
        Self {
            sessions_per_peer: DEFAULT_SESSIONS_PER_PEER,
            sessions_total: DEFAULT_SESSIONS_TOTAL,
            forwards_per_session: DEFAULT_FORWARDS_PER_SESSION,
            forwards_total: DEFAULT_FORWARDS_TOTAL,
        }
    }
}

/// What [`serve`] holds now and what it refused, for status pages and metrics.
#[derive(Debug, Default)]
pub struct ListenUsage {
    sessions: std::sync::atomic::AtomicUsize,
    forwards: std::sync::atomic::AtomicUsize,
    sessions_refused: std::sync::atomic::AtomicU64,
    streams_refused: std::sync::atomic::AtomicU64,
}

impl ListenUsage {
    /// Sessions being served now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }
    /// Streams being forwarded now.
    pub fn forwards(&self) -> usize {
        self.forwards.load(Ordering::Relaxed)
    }
    /// Sessions closed at once for a session cap, since the start.
    pub fn sessions_refused(&self) -> u64 {
        self.sessions_refused.load(Ordering::Relaxed)
    }
    /// Streams reset at once for a forward cap, since the start.
    pub fn streams_refused(&self) -> u64 {
        self.streams_refused.load(Ordering::Relaxed)
    }
}

/// Streams closed because a forward cap was reached, reported at most once an interval.
type Refusals = Arc<std::sync::Mutex<LogThrottle>>;

/// Forwards every stream of every session on `incoming` to `target`, within `limits`, until
/// the client stops. Dropping the future ends every session and forward it runs.
pub async fn serve(incoming: Incoming, target: SocketAddr, limits: ListenLimits) {
    serve_counted(incoming, target, limits, Arc::default()).await
}

/// [`serve`], counting what it holds and refuses in `usage`.
pub async fn serve_counted(
    mut incoming: Incoming,
    target: SocketAddr,
    limits: ListenLimits,
    usage: Arc<ListenUsage>,
) {
    let forwards = Arc::new(Semaphore::new(limits.forwards_total));
    let stream_refusals: Refusals = Arc::default();
    let mut session_refusals = LogThrottle::default();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            session = incoming.next() => {
                let Some(session) = session else { break };
                let peer = session.info().peer;
                let held = per_peer.get(&peer).copied().unwrap_or(0);
                if held >= limits.sessions_per_peer || sessions.len() >= limits.sessions_total {
                    usage.sessions_refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(held_back) = session_refusals.hit(Instant::now()) {
                        warn!(
                            peer = %peer.short(),
                            held,
                            total = sessions.len(),
                            held_back,
                            "too many sessions (per peer or in total); session closed"
                        );
                    }
                    continue;
                }
                info!(peer = %peer.short(), remote = %session.info().remote, "serving session");
                *per_peer.entry(peer).or_default() += 1;
                sessions.spawn(serve_session(
                    session,
                    target,
                    limits.forwards_per_session,
                    forwards.clone(),
                    stream_refusals.clone(),
                    usage.clone(),
                ));
                usage.sessions.store(sessions.len(), Ordering::Relaxed);
            }
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                usage.sessions.store(sessions.len(), Ordering::Relaxed);
                if let Ok(peer) = done {
                    if let Some(n) = per_peer.get_mut(&peer) {
                        *n -= 1;
                        if *n == 0 {
                            per_peer.remove(&peer);
                        }
                    }
                }
            }
        }
    }
}

/// Forwards every stream the peer opens on `session` to `target`, until the session ends.
async fn serve_session(
    mut session: Session,
    target: SocketAddr,
    per_session: usize,
    total: Arc<Semaphore>,
    refusals: Refusals,
    usage: Arc<ListenUsage>,
) -> PeerId {
    let peer = session.info().peer;
    let mine = Arc::new(Semaphore::new(per_session));
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            stream = session.accept_stream() => {
                let Some(stream) = stream else { break };
                let permits = mine.clone().try_acquire_owned().ok().zip(total.clone().try_acquire_owned().ok());
                let Some(permits) = permits else {
                    usage.streams_refused.fetch_add(1, Ordering::Relaxed);
                    // Dropping the stream resets it: the peer learns at once.
                    let hit = lock(&refusals).hit(Instant::now());
                    if let Some(held_back) = hit {
                        warn!(
                            peer = %peer.short(),
                            held_back,
                            "too many forwarded streams (per session or in total); stream closed"
                        );
                    }
                    continue;
                };
                let usage = usage.clone();
                usage.forwards.fetch_add(1, Ordering::Relaxed);
                streams.spawn(async move {
                    if let Err(e) = to_service(stream, target).await {
                        warn!(%target, error = %e, "forwarding failed");
                    }
                    usage.forwards.fetch_sub(1, Ordering::Relaxed);
                    drop(permits);
                });
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    info!(peer = %peer.short(), "session ended");
    // Streams still open finish their copy; the session lingers for them.
    while streams.join_next().await.is_some() {}
    peer
}

/// Bytes [`splice`] moves at once in each direction. tokio's default (8 KiB) made every piece
/// one yamux frame, one Noise message and one syscall: the CLI tunnel ran at 0.67 of the
/// session it rides on (issue 16). With 64 KiB a piece fills a Noise message; the cost is
/// 2 x 64 KiB per forwarded stream (64 MiB at the 512 forwards `punch listen` allows).
pub const SPLICE_BUFFER: usize = 64 * 1024;

/// Copies both ways until both directions end; returns the bytes (to stream, from stream).
pub async fn splice<T: AsyncRead + AsyncWrite + Unpin>(
    mut local: T,
    mut stream: Stream,
) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional_with_sizes(&mut local, &mut stream, SPLICE_BUFFER, SPLICE_BUFFER)
        .await
}

/// Connects to `target` and splices `stream` to it.
pub async fn to_service(stream: Stream, target: SocketAddr) -> std::io::Result<(u64, u64)> {
    let tcp = TcpStream::connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let res = splice(tcp, stream).await;
    debug!(%target, ?res, "forwarded stream ended");
    res
}
