//! A punched session: yamux over the authenticated, encrypted stream.
//!
//! The Noise initiator is the yamux client and the responder the yamux server, as the
//! rendezvous assigned. One driver task polls the yamux session (all its I/O happens there)
//! and hands inbound streams to [`Session::accept_stream`]. It runs while the [`Session`], an
//! [`Opener`] or a [`Stream`] of it is held. When the last of them is dropped the driver is
//! told at once (a drop guard closes a oneshot channel), lingers until nothing was written for
//! [`LINGER_IDLE`] (at most [`LINGER_MAX`]) so that the last writes reach the peer, and then
//! closes the TCP connection. It also ends when the peer closes the connection or it breaks;
//! [`Session::closed`] resolves then.
//!
//! The driver is the one task here not owned by an abort-on-drop handle, on purpose: aborting
//! it with the last handle would cut frames still queued in yamux. Its lifetime is bounded
//! instead: by the connection, and by [`LINGER_MAX`] after the last handle is gone.
//!
//! Window sizes: tokio-yamux 0.3.20 starts every stream at a 256 KiB window and only grows it
//! up to `max_stream_window_size`, so a stream moves at most `window / RTT`. The default
//! [`DEFAULT_STREAM_WINDOW`] of 16 MiB allows ~330 MB/s per stream at 50 ms RTT and ~80 MB/s
//! at 200 ms, above what the Noise cipher does on one core here (~0.5-1 GB/s on loopback, where
//! the RTT is tiny). The cost is memory only when a reader falls behind: at most one window of
//! unread data per stream.
//!
//! The write-only stall: tokio-yamux processes window updates for a stream only while that
//! stream is polled for reading. A stream that is only written stops for good once its window
//! is used up. [`Stream`] fixes it: when a write would block, it polls the read side with an
//! empty buffer, which processes pending frames (window updates) without consuming data.
//! Known limit, left alone: after the *remote* half-closes a stream, tokio-yamux stops
//! processing that stream's frames entirely, so we can send at most one more window (16 MiB)
//! on it. Protocols that half-close then stream large replies need a full-duplex close.
//!
//! A hostile peer: between yamux and the encrypted stream sits [`crate::guard::Guard`], fed
//! every plaintext byte in both directions. It enforces the receive window yamux only checks
//! when the application reads, stops reading the socket while too many replies are owed (a
//! ping flood from a peer that does not read) or too many bytes are unread (back-pressure to
//! the peer, per session), and ends a session whose writes or reads stay stuck, with a typed
//! [`SessionError`] ([`Session::end_reason`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::StreamExt;
use punch_proto::{PeerId, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_yamux::{Config as YamuxConfig, Control, StreamHandle};
use tracing::{debug, warn, Instrument};

use crate::error::{Error, SessionError};
use crate::guard::{Guard, GuardLimits};
use crate::lock;
use crate::secure::SecureStream;
use crate::throttle::LogThrottle;

/// Per-stream receive window (see the module doc).
pub const DEFAULT_STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// yamux pings this often: keeps NAT mappings of the punched connection alive (home routers
/// forget idle TCP mappings after minutes, some after 5 minutes) and detects a dead path.
pub const YAMUX_KEEPALIVE: Duration = Duration::from_secs(15);
/// Inbound streams waiting for [`Session::accept_stream`]; more are reset.
pub const ACCEPT_BACKLOG: usize = 256;
/// After the last handle is dropped, the connection closes once nothing was written for this
/// long: queued frames are gone to the kernel by then (a write burst flushes in microseconds
/// to milliseconds; a window stalled longer than this is given up).
pub const LINGER_IDLE: Duration = Duration::from_millis(500);
/// Upper bound of the linger, however busy the connection is.
pub const LINGER_MAX: Duration = Duration::from_secs(30);
/// How often the driver asks the guard whether a stall has lasted too long: the stall limits
/// are tens of seconds, so a second of slack is nothing.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// Sessions ended for misbehaviour are logged at most once per this interval (process-wide):
/// a peer that gets itself cut off again and again must not flood the log.
const END_LOG_INTERVAL: Duration = Duration::from_secs(10);

static END_LOG: std::sync::LazyLock<std::sync::Mutex<LogThrottle>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(LogThrottle::new(END_LOG_INTERVAL)));

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Shared by the session handle, its openers and its streams. Dropping the last one drops the
/// sender, which wakes the driver.
#[derive(Debug)]
struct HandleState {
    _released: oneshot::Sender<()>,
    guard: SharedGuard,
}

type Handles = Arc<HandleState>;

/// The guard and the waker of a socket read it paused, shared by the socket side (polled in
/// the driver task) and the streams (polled by the application), which lift pauses.
struct Shared {
    guard: Guard,
    paused_reader: Option<Waker>,
}

type SharedGuard = Arc<std::sync::Mutex<Shared>>;

/// Wakes the paused socket read when `lifted`.
fn wake_if(shared: &mut Shared, lifted: bool) {
    if lifted {
        if let Some(w) = shared.paused_reader.take() {
            w.wake();
        }
    }
}

/// The socket side of the session: every plaintext byte passes the guard.
struct Tracked {
    inner: SecureStream<TcpStream>,
    shared: SharedGuard,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        {
            let mut shared = lock(&self.shared);
            if !shared.guard.may_read(now()) {
                if shared.paused_reader.is_none() {
                    debug!(
                        unread = shared.guard.unread(),
                        replies_owed = shared.guard.pending_replies(),
                        "reading paused"
                    );
                }
                shared.paused_reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            shared.paused_reader = None;
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if let Err(v) = lock(&self.shared).guard.on_read(new) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, v)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        let mut shared = lock(&self.shared);
        match &res {
            Poll::Ready(Ok(n)) => shared.guard.on_written(&buf[..*n], now()),
            Poll::Pending => shared.guard.on_write_blocked(now()),
            Poll::Ready(Err(_)) => {}
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        let mut shared = lock(&self.shared);
        match &res {
            Poll::Ready(Ok(())) => shared.guard.on_written(&[], now()),
            Poll::Pending => shared.guard.on_write_blocked(now()),
            Poll::Ready(Err(_)) => {}
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a session reaches its peer. One kind today; a relayed path (through a relay when the
/// punch fails) will be the second, hence `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathKind {
    /// A punched (or directly dialed) TCP connection.
    Direct,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
        })
    }
}

/// What is known about an established session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: PeerId,
    pub remote: SocketAddr,
    pub path: PathKind,
    pub role: Role,
    pub session_id: u64,
    /// From the connect request (or, inbound, the offer) to the authenticated stream.
    pub elapsed: Duration,
}

/// yamux configuration for a given window and cap on open streams (see
/// [`crate::config::DEFAULT_MAX_STREAMS_PER_SESSION`]).
pub fn yamux_config(window: u32, max_streams: usize) -> YamuxConfig {
    YamuxConfig {
        max_stream_window_size: window.max(tokio_yamux::config::INITIAL_STREAM_WINDOW),
        max_stream_count: max_streams.max(1),
        keepalive_interval: YAMUX_KEEPALIVE,
        ..YamuxConfig::default()
    }
}

/// An established, authenticated, multiplexed session with one peer.
#[derive(Debug)]
pub struct Session {
    info: SessionInfo,
    control: Opener,
    incoming: mpsc::Receiver<Stream>,
    /// Its sender lives in the driver task: it sends why the session ended (when that was a
    /// decision, not the peer closing) and is dropped (closing the channel) when it ends.
    ended: watch::Receiver<Option<Arc<SessionError>>>,
    _handles: Handles,
}

/// Opens streams on a session; cloneable.
#[derive(Clone)]
pub struct Opener(Control, Handles);

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opener")
    }
}

impl Opener {
    pub async fn open_stream(&self) -> Result<Stream, Error> {
        let handle = self
            .0
            .clone()
            .open_stream()
            .await
            .map_err(SessionError::Open)?;
        Ok(Stream::new(handle, self.1.clone()))
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("unread", &self.guard.unread())
            .finish_non_exhaustive()
    }
}

/// Logs (rate-limited, process-wide) why a session was ended.
fn log_end(reason: &SessionError) {
    if let Some(held_back) = lock(&END_LOG).hit(now()) {
        warn!(%reason, held_back, "session ended");
    }
}

impl Session {
    pub(crate) fn start(
        secure: SecureStream<TcpStream>,
        info: SessionInfo,
        config: YamuxConfig,
        limits: GuardLimits,
    ) -> Self {
        let shared: SharedGuard = Arc::new(std::sync::Mutex::new(Shared {
            guard: Guard::new(limits, config.max_stream_count, now()),
            paused_reader: None,
        }));
        let tracked = Tracked {
            inner: secure,
            shared: shared.clone(),
        };
        let mut session = match info.role {
            Role::Initiator => tokio_yamux::Session::new_client(tracked, config),
            Role::Responder => tokio_yamux::Session::new_server(tracked, config),
        };
        let (released_tx, released) = oneshot::channel();
        let handles: Handles = Arc::new(HandleState {
            _released: released_tx,
            guard: shared.clone(),
        });
        let control = Opener(session.control(), handles.clone());
        let (tx, incoming) = mpsc::channel(ACCEPT_BACKLOG);
        let (ended_tx, ended) = watch::channel(None);
        let span = tracing::info_span!("session", peer = %info.peer.short(), remote = %info.remote);
        let watch = Arc::downgrade(&handles);
        let driver = async move {
            let mut released = released;
            let mut released_at: Option<Instant> = None;
            let mut check = tokio::time::interval(STALL_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let reason: Option<SessionError> = loop {
                // After the release: close once writes have been idle LINGER_IDLE, or at
                // LINGER_MAX. Re-armed whenever it fires early because something was written.
                let close_at = released_at.map(|at| {
                    let last = lock(&shared).guard.last_write();
                    (last + LINGER_IDLE).max(at).min(at + LINGER_MAX)
                });
                let wake = tokio::time::Instant::from_std(close_at.unwrap_or_else(now));
                tokio::select! {
                    next = session.next() => match next {
                        Some(Ok(handle)) => match watch.upgrade() {
                            Some(h) => {
                                if tx.try_send(Stream::new(handle, h)).is_err() {
                                    warn!("inbound stream backlog full; stream reset");
                                }
                            }
                            None => {
                                lock(&shared).guard.on_released(handle.id());
                                debug!("inbound stream after the session was dropped; reset");
                            }
                        },
                        Some(Err(e)) => {
                            let violation = lock(&shared).guard.violation();
                            match violation {
                                Some(v) => break Some(SessionError::PeerViolation(v)),
                                None => {
                                    debug!(error = ?e, "session ended");
                                    break None;
                                }
                            }
                        }
                        None => break None,
                    },
                    _ = &mut released, if released_at.is_none() => {
                        released_at = Some(now());
                    }
                    _ = check.tick() => {
                        let verdict = lock(&shared).guard.verdict(now());
                        if let Some(v) = verdict {
                            break Some(v.into());
                        }
                    }
                    _ = tokio::time::sleep_until(wake), if close_at.is_some() => {
                        let at = now();
                        let last = lock(&shared).guard.last_write();
                        let since = released_at.map_or(Duration::ZERO, |r| at.duration_since(r));
                        if at.duration_since(last) >= LINGER_IDLE || since >= LINGER_MAX {
                            debug!("all handles dropped and writes flushed; closing");
                            break None;
                        }
                    }
                }
            };
            if let Some(reason) = reason {
                log_end(&reason);
                let _ = ended_tx.send(Some(Arc::new(reason)));
            }
            drop(session);
            debug!("session closed");
        };
        // Not kept: see the module doc (bounded by the connection and by LINGER_MAX).
        drop(tokio::spawn(driver.instrument(span)));
        Self {
            info,
            control,
            incoming,
            ended,
            _handles: handles,
        }
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Opens a new stream to the peer.
    pub async fn open_stream(&self) -> Result<Stream, Error> {
        self.control.open_stream().await
    }

    /// A handle that opens streams, usable while another task accepts.
    pub fn opener(&self) -> Opener {
        self.control.clone()
    }

    /// The next stream the peer opened; `None` once the session has ended.
    pub async fn accept_stream(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Whether the session has ended (the peer closed the connection or it broke).
    pub fn is_closed(&self) -> bool {
        self.ended.has_changed().is_err()
    }

    /// Resolves when the session has ended: the peer closed the connection, it broke, or its
    /// keepalive failed. Independent of `self`, so it can wait beside work using the session.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.clone();
        async move { while ended.changed().await.is_ok() {} }
    }

    /// Why we ended the session, when we did: the peer broke the protocol, stopped reading,
    /// or the application stopped reading. `None` while it runs and when it ended otherwise
    /// (the peer closed it, the connection broke, yamux's keepalive failed).
    pub fn end_reason(&self) -> Option<Arc<SessionError>> {
        self.ended.borrow().clone()
    }
}

/// One multiplexed stream. Reading and writing work independently (see the module doc).
#[derive(Debug)]
pub struct Stream {
    inner: StreamHandle,
    /// Waker of a reader parked in `poll_read`, so a blocked writer that polls the read side
    /// (and so takes over the frame-channel wakeup) can hand the wakeup back.
    parked_reader: Option<Waker>,
    handles: Handles,
}

impl Stream {
    fn new(inner: StreamHandle, handles: Handles) -> Self {
        Self {
            inner,
            parked_reader: None,
            handles,
        }
    }

    /// How many bytes we may send before the peer grants more (yamux flow control). Starts at
    /// 256 KiB and grows up to the peer's configured window as the peer reads.
    pub fn send_window(&self) -> u32 {
        self.inner.send_window()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut shared = lock(&self.handles.guard);
        let lifted = shared.guard.on_released(self.inner.id());
        wake_if(&mut shared, lifted);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.parked_reader = match res {
            Poll::Pending => Some(cx.waker().clone()),
            Poll::Ready(_) => None,
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            let mut shared = lock(&self.handles.guard);
            let lifted = shared.guard.on_delivered(self.inner.id(), n);
            wake_if(&mut shared, lifted);
        }
        res
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => {
                // Process pending frames (window updates) without consuming data; this also
                // registers our waker for new frames. Then try once more.
                let mut empty = ReadBuf::new(&mut []);
                let _ = Pin::new(&mut self.inner).poll_read(cx, &mut empty);
                if let Some(reader) = &self.parked_reader {
                    if !reader.will_wake(cx.waker()) {
                        // Another task reads: let it re-register; its reads process window
                        // updates, which wake this writer.
                        reader.wake_by_ref();
                    }
                }
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{authenticate, AuthContext};
    use punch_proto::Keypair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Bounds a wait that must end, so a bug fails the test instead of hanging it.
    const HANG: Duration = Duration::from_secs(20);

    /// Two ends of an authenticated session over loopback.
    async fn pair() -> (Session, Session) {
        let (ka, kb) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (a, (b, _)) = (a.unwrap(), b.unwrap());
        let expect = |role, keypair: &Keypair, peer: &Keypair| AuthContext {
            role,
            keypair: keypair.clone(),
            peer: peer.public(),
            session_id: 5,
        };
        let (ea, eb) = (
            expect(Role::Initiator, &ka, &kb),
            expect(Role::Responder, &kb, &ka),
        );
        let (a, b) = tokio::join!(authenticate(a, false, &ea), authenticate(b, false, &eb));
        let start = |auth: crate::auth::Authenticated, role, peer: &Keypair| {
            let info = SessionInfo {
                peer: peer.public(),
                remote: auth.remote,
                path: PathKind::Direct,
                role,
                session_id: 5,
                elapsed: Duration::ZERO,
            };
            Session::start(
                auth.into_secure(),
                info,
                yamux_config(
                    DEFAULT_STREAM_WINDOW,
                    crate::config::DEFAULT_MAX_STREAMS_PER_SESSION,
                ),
                GuardLimits::default(),
            )
        };
        (
            start(a.unwrap(), Role::Initiator, &kb),
            start(b.unwrap(), Role::Responder, &ka),
        )
    }

    #[tokio::test]
    async fn closed_resolves_when_the_peer_drops_its_session() {
        let (a, b) = pair().await;
        assert!(!a.is_closed());
        let closed = a.closed();
        drop(b);
        tokio::time::timeout(HANG, closed).await.unwrap();
        assert!(a.is_closed());
        assert!(
            a.open_stream().await.is_err(),
            "no streams on an ended session"
        );
    }

    #[tokio::test]
    async fn a_stream_keeps_the_session_and_its_last_write_arrives() {
        let (a, mut b) = pair().await;
        let mut stream = a.open_stream().await.unwrap();
        let a_closed = a.closed();
        drop(a);
        // The stream still works without the session handle.
        stream.write_all(b"last words").await.unwrap();
        let mut got = tokio::time::timeout(HANG, b.accept_stream())
            .await
            .unwrap()
            .unwrap();
        drop(stream);
        // The last handle is gone: the driver flushes, closes, and both ends see it.
        tokio::time::timeout(HANG, a_closed).await.unwrap();
        let mut buf = Vec::new();
        got.read_to_end(&mut buf).await.unwrap_or_default();
        assert_eq!(buf, b"last words");
        tokio::time::timeout(HANG, b.closed()).await.unwrap();
        assert!(b.accept_stream().await.is_none());
    }
}
