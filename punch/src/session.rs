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
//!
//! Moving to another path: a session that started relayed moves to a direct connection as
//! soon as one authenticates for it ([`PathControl::upgrade`]), under yamux, so open streams
//! carry on. Each direction moves on its own: the writer flushes what it queued on the old
//! path, writes the authenticated path-end marker there ([`crate::secure`]) and writes
//! everything after it on the new path; the reader reads the old path up to the marker and
//! then the new one, whose bytes wait in its socket until then. TCP delivers each path in
//! order and the marker is the last byte of the old one, so no byte is lost, doubled or
//! reordered, and the two ends need not switch at the same moment. Why not "new streams go
//! direct, old ones drain on the relay": a Kaspa peer connection is one stream that lasts for
//! days, so it would stay relayed for its whole life. A relay that cuts the old path before
//! the marker ends the session with an error (nothing is silently lost). Once both markers
//! have passed, the old connection is closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::StreamExt;
use punch_proto::message::RelayEnd;
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
/// The most data one write of a [`Stream`] hands to yamux, so one yamux frame (12-byte header
/// and this much data) is one Noise message of the punched stream, not four and a 92-byte
/// remainder. tokio-yamux copies each write into a buffer of its own, and the peer's yamux
/// reads whole frames into one growing buffer: at this size both stay under glibc's mmap
/// threshold (128 KiB), so they come from the heap and are reused. At the 256 KiB frames a
/// large write used to make, each was mapped, zero-filled by page faults and unmapped again,
/// a third of a bulk stream's CPU (issue 16's profile).
pub const MAX_WRITE: usize = punch_proto::noise::MAX_PLAINTEXT_LEN - crate::guard::HEADER_LEN;
/// A vectored write of a [`Stream`] whose first slice is shorter than this is joined into one
/// yamux frame (up to this size). HTTP/2 (tonic) writes a 9-byte frame header and then its
/// payload as separate slices; written one by one, each became a yamux frame of its own, with
/// its own trip through yamux's session task. Larger writes gain nothing from joining.
const JOIN_BELOW: usize = 16 * 1024;
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
/// How long a relayed session whose connection ended waits for the relay's reason (it delays
/// [`Session::closed`] that long when a peer simply closed). The relay writes the reason to the
/// control connection before it closes the relayed one, from the same host along the same
/// path, so it arrives within a few milliseconds of the close.
const RELAY_REASON_WAIT: Duration = Duration::from_millis(500);
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
    /// Plaintext bytes (yamux frames) written to and read from the peer, over every path.
    bytes_sent: u64,
    bytes_received: u64,
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

/// The socket side of the session: every plaintext byte passes the guard, over whichever
/// path carries the session now (see "Moving to another path" in the module doc).
struct Tracked {
    /// The path written to, and read from once the previous path has ended.
    current: SecureStream<TcpStream>,
    /// The previous path while the session moves off it.
    old: Option<OldPath>,
    /// New paths from the punch driver ([`PathControl::upgrade`]).
    upgrades: mpsc::Receiver<SecureStream<TcpStream>>,
    /// The punch driver is gone: no path will come.
    no_more_paths: bool,
    shared: SharedGuard,
}

/// A path being left: read until the peer's end marker, ours written after the last byte.
struct OldPath {
    stream: SecureStream<TcpStream>,
    wrote_end: bool,
    read_done: bool,
}

impl Tracked {
    /// Takes a new path if one came and no move is in progress.
    fn poll_upgrade(&mut self, cx: &mut Context<'_>) {
        if self.old.is_some() {
            return;
        }
        if self.no_more_paths {
            return;
        }
        match self.upgrades.poll_recv(cx) {
            Poll::Ready(Some(next)) => {
                let previous = std::mem::replace(&mut self.current, next);
                debug!("moving the session to a new path");
                self.old = Some(OldPath {
                    // The peer may have moved first: then its part of the old path is read.
                    read_done: previous.peer_ended_path(),
                    stream: previous,
                    wrote_end: false,
                });
            }
            Poll::Ready(None) => self.no_more_paths = true,
            Poll::Pending => {}
        }
    }

    /// Ends our writing on the old path: what was queued, then the marker. Ready when done
    /// (or when there is no old path); drops the old path once both directions ended on it.
    fn poll_finish_old(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(old) = self.old.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if !old.wrote_end {
            std::task::ready!(old.stream.poll_end_path(cx))?;
            old.wrote_end = true;
        }
        self.close_old_if_done();
        Poll::Ready(Ok(()))
    }

    /// Drops the old path (closing its connection) once it ended both ways.
    fn close_old_if_done(&mut self) {
        if self
            .old
            .as_ref()
            .is_some_and(|o| o.wrote_end && o.read_done)
        {
            debug!("the old path ended both ways; closed");
            self.old = None;
        }
    }

    /// Reads from the old path until its end marker, then from the current one.
    fn poll_read_paths(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(old) = self.old.as_mut().filter(|o| !o.read_done) {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut old.stream).poll_read(cx, buf))?;
            if buf.filled().len() > before || !old.stream.peer_ended_path() {
                // Data, or the old path's plain end of stream (it broke): yamux sees it.
                return Poll::Ready(Ok(()));
            }
            old.read_done = true;
            self.close_old_if_done();
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.current).poll_read(cx, buf))?;
        if buf.filled().len() == before
            && self.current.peer_ended_path()
            && !self.no_more_paths
            && self.old.is_none()
        {
            // The peer moved to the next path before we have it: the rest of its bytes are
            // there. `poll_upgrade` registered this task for its arrival.
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
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
        let this = &mut *self;
        this.poll_upgrade(cx);
        // Our marker goes out even while yamux has nothing to write; pending is fine here
        // (the write side waits for it too).
        if let Poll::Ready(Err(e)) = this.poll_finish_old(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        std::task::ready!(this.poll_read_paths(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let mut shared = lock(&this.shared);
            shared.bytes_received += new.len() as u64;
            if let Err(v) = shared.guard.on_read_at(new, now()) {
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
        let this = &mut *self;
        this.poll_upgrade(cx);
        let res = match this.poll_finish_old(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.current).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        let mut shared = lock(&this.shared);
        match &res {
            Poll::Ready(Ok(n)) => {
                shared.bytes_sent += *n as u64;
                shared.guard.on_written(&buf[..*n], now())
            }
            Poll::Pending => shared.guard.on_write_blocked(now()),
            Poll::Ready(Err(_)) => {}
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.poll_upgrade(cx);
        let res = match this.poll_finish_old(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.current).poll_flush(cx),
            other => other,
        };
        let mut shared = lock(&this.shared);
        match &res {
            Poll::Ready(Ok(())) => shared.guard.on_written(&[], now()),
            Poll::Pending => shared.guard.on_write_blocked(now()),
            Poll::Ready(Err(_)) => {}
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_finish_old(cx))?;
        Pin::new(&mut this.current).poll_shutdown(cx)
    }
}

/// How a session reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathKind {
    /// A punched (or directly dialed) TCP connection.
    Direct,
    /// Through the rendezvous's relay, which sees only ciphertext.
    Relayed,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        })
    }
}

/// The path a session uses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathState {
    pub kind: PathKind,
    /// The far end of the TCP connection: the peer (direct) or the relay.
    pub remote: SocketAddr,
}

/// The punch driver's side of a session: moves it to a new path, and tells it why the relay
/// ended it.
#[derive(Debug)]
pub(crate) struct PathControl {
    upgrades: mpsc::Sender<SecureStream<TcpStream>>,
    path: watch::Sender<PathState>,
}

impl PathControl {
    /// Whether the session has ended (nothing more can move it).
    pub fn is_closed(&self) -> bool {
        self.upgrades.is_closed()
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        self.upgrades.closed().await
    }

    /// Moves the session to `next` (a direct stream authenticated for the same punch). The
    /// byte stream continues on it without loss (see the module doc). False if the session
    /// has ended or a move is already queued.
    pub fn upgrade(&self, next: SecureStream<TcpStream>, state: PathState) -> bool {
        if self.upgrades.try_send(next).is_err() {
            return false;
        }
        self.path.send_replace(state);
        true
    }
}

/// What is known about an established session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: PeerId,
    /// The address the stream is connected to: the peer's (direct), or the relay's.
    pub remote: SocketAddr,
    /// The peer's address as the rendezvous observed it (the offer's `peer_observed`: its
    /// NAT's public mapping), for direct and relayed sessions alike: what to count or deny
    /// per IP, since `remote` is the relay's address for a relayed session.
    pub observed: SocketAddr,
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
    path: watch::Receiver<PathState>,
    _handles: Handles,
    started: Instant,
}

/// A session's traffic and round-trip time now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Plaintext bytes (yamux frames, headers included) written to the peer, every path.
    pub bytes_sent: u64,
    /// Plaintext bytes read from the peer, every path.
    pub bytes_received: u64,
    /// Round trip of the last keepalive ping (yamux pings every [`YAMUX_KEEPALIVE`]); `None`
    /// before the first answer.
    pub rtt: Option<Duration>,
}

/// What a status page shows of one open session ([`crate::Client::sessions`]).
#[derive(Debug, Clone)]
pub struct SessionStatus {
    /// As established (its `path` and `remote` are those it started on).
    pub info: SessionInfo,
    /// The path it uses now.
    pub path: PathState,
    /// Since it was established.
    pub age: Duration,
    pub traffic: Traffic,
}

/// Reads a session's state without keeping it open (the session table's entry).
#[derive(Clone)]
pub(crate) struct Probe {
    info: SessionInfo,
    started: Instant,
    path: watch::Receiver<PathState>,
    ended: watch::Receiver<Option<Arc<SessionError>>>,
    /// Strong, so the final byte counts can still be read when the ended session is retired
    /// from the table (the guard's memory lives that much longer: until the next look).
    shared: SharedGuard,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("session_id", &self.info.session_id)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// The session now, or `None` once it has ended.
    pub fn status(&self, now: Instant) -> Option<SessionStatus> {
        if self.has_ended() {
            return None;
        }
        Some(SessionStatus {
            info: self.info.clone(),
            path: *self.path.borrow(),
            age: now.saturating_duration_since(self.started),
            traffic: self.traffic(),
        })
    }

    fn has_ended(&self) -> bool {
        self.ended.has_changed().is_err()
    }

    fn traffic(&self) -> Traffic {
        let s = lock(&self.shared);
        Traffic {
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            rtt: s.guard.rtt(),
        }
    }
}

/// The client's open sessions, for status pages: entries are probes (they keep nothing open)
/// and are forgotten once their session has ended.
#[derive(Debug, Default)]
pub(crate) struct SessionTable(std::sync::Mutex<Table>);

#[derive(Debug, Default)]
struct Table {
    open: Vec<Probe>,
    /// Bytes of the sessions that ended (sent, received).
    retired: (u64, u64),
}

impl Table {
    fn retire_ended(&mut self) {
        let retired = &mut self.retired;
        self.open.retain(|p| {
            if !p.has_ended() {
                return true;
            }
            let t = p.traffic();
            retired.0 += t.bytes_sent;
            retired.1 += t.bytes_received;
            false
        });
    }
}

impl SessionTable {
    pub fn insert(&self, probe: Probe) {
        let mut table = lock(&self.0);
        table.retire_ended();
        table.open.push(probe);
    }

    /// Every session still open, oldest first.
    pub fn snapshot(&self, now: Instant) -> Vec<SessionStatus> {
        let mut table = lock(&self.0);
        table.retire_ended();
        table.open.iter().filter_map(|p| p.status(now)).collect()
    }

    /// Bytes sent and received by every session since the client started (ended ones too).
    pub fn bytes_total(&self) -> (u64, u64) {
        let mut table = lock(&self.0);
        table.retire_ended();
        let (mut sent, mut received) = table.retired;
        for p in &table.open {
            let t = p.traffic();
            sent += t.bytes_sent;
            received += t.bytes_received;
        }
        (sent, received)
    }
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

/// After a relayed session's connection ended: the relay's reason, if it sends one within
/// [`RELAY_REASON_WAIT`] (the relay writes it to the control connection just before it
/// closes the relayed one, so it may arrive a little later).
async fn relay_reason(
    path: &watch::Receiver<PathState>,
    notice: Option<oneshot::Receiver<RelayEnd>>,
) -> Option<SessionError> {
    let notice = notice?;
    if path.borrow().kind != PathKind::Relayed {
        return None;
    }
    match tokio::time::timeout(RELAY_REASON_WAIT, notice).await {
        Ok(Ok(reason)) => Some(SessionError::RelayEnded(reason)),
        _ => None,
    }
}

/// Logs (rate-limited, process-wide) why a session was ended.
fn log_end(reason: &SessionError) {
    if let Some(held_back) = lock(&END_LOG).hit(now()) {
        warn!(%reason, held_back, "session ended");
    }
}

impl Session {
    /// Starts yamux over `secure`. `relay_end` is where the client forwards the relay's
    /// reason for ending a relayed session. The returned [`PathControl`] moves the session
    /// to another path.
    pub(crate) fn start(
        secure: SecureStream<TcpStream>,
        info: SessionInfo,
        config: YamuxConfig,
        limits: GuardLimits,
        relay_end: Option<oneshot::Receiver<RelayEnd>>,
    ) -> (Self, PathControl) {
        let shared: SharedGuard = Arc::new(std::sync::Mutex::new(Shared {
            guard: Guard::new(limits, config.max_stream_count, now()),
            paused_reader: None,
            bytes_sent: 0,
            bytes_received: 0,
        }));
        let (upgrades_tx, upgrades) = mpsc::channel(1);
        let (path_tx, path) = watch::channel(PathState {
            kind: info.path,
            remote: info.remote,
        });
        let tracked = Tracked {
            current: secure,
            old: None,
            upgrades,
            no_more_paths: false,
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
        let path_now = path.clone();
        let driver = async move {
            let mut relay_end = relay_end;
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
                                    break relay_reason(&path_now, relay_end.take()).await;
                                }
                            }
                        }
                        None => break relay_reason(&path_now, relay_end.take()).await,
                    },
                    reason = async { relay_end.as_mut().expect("guarded").await }, if relay_end.is_some() => {
                        relay_end = None;
                        if let Ok(reason) = reason {
                            if path_now.borrow().kind == PathKind::Relayed {
                                break Some(SessionError::RelayEnded(reason));
                            }
                            debug!(%reason, "the relay ended a path the session had left");
                        }
                    }
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
        let session = Self {
            info,
            control,
            incoming,
            ended,
            path,
            _handles: handles,
            started: now(),
        };
        let control = PathControl {
            upgrades: upgrades_tx,
            path: path_tx,
        };
        (session, control)
    }

    /// The path the session uses now (it starts on [`SessionInfo::path`] and may move from
    /// the relay to a direct connection).
    pub fn path(&self) -> PathState {
        *self.path.borrow()
    }

    /// Follows the session's path: `changed()` resolves when it moves.
    pub fn path_updates(&self) -> watch::Receiver<PathState> {
        self.path.clone()
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Its traffic and round-trip time now.
    pub fn traffic(&self) -> Traffic {
        let s = lock(&self._handles.guard);
        Traffic {
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            rtt: s.guard.rtt(),
        }
    }

    /// A reader of its state for the client's session table.
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            info: self.info.clone(),
            started: self.started,
            path: self.path.clone(),
            ended: self.ended.clone(),
            shared: self._handles.guard.clone(),
        }
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
    /// Where small slices of a vectored write are joined (at most [`JOIN_BELOW`] bytes).
    joined: Vec<u8>,
}

impl Stream {
    fn new(inner: StreamHandle, handles: Handles) -> Self {
        Self {
            inner,
            parked_reader: None,
            handles,
            joined: Vec::new(),
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
        let buf = &buf[..buf.len().min(MAX_WRITE)];
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

    /// Small slices go out as one yamux frame (see [`JOIN_BELOW`]). What was written is a
    /// prefix of the slices' concatenation, as the trait requires.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut slices = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = slices.next() else {
            return Poll::Ready(Ok(0));
        };
        if first.len() >= JOIN_BELOW || bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
            return self.poll_write(cx, first);
        }
        let mut joined = std::mem::take(&mut self.joined);
        joined.clear();
        for b in bufs {
            let room = JOIN_BELOW - joined.len();
            if room == 0 {
                break;
            }
            joined.extend_from_slice(&b[..b.len().min(room)]);
        }
        let res = self.as_mut().poll_write(cx, &joined);
        self.joined = joined;
        res
    }

    fn is_write_vectored(&self) -> bool {
        true
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
    use crate::auth::{authenticate, AuthContext, Authenticated};
    use punch_proto::Keypair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Bounds a wait that must end, so a bug fails the test instead of hanging it.
    const HANG: Duration = Duration::from_secs(20);

    type Keys = (Keypair, Keypair);

    /// Two authenticated ends of one loopback connection (initiator with key a, responder b).
    async fn authed(keys: &Keys, session_id: u64) -> (Authenticated, Authenticated) {
        let (ka, kb) = keys;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (a, (b, _)) = (a.unwrap(), b.unwrap());
        let expect = |role, keypair: &Keypair, peer: &Keypair| AuthContext {
            role,
            keypair: keypair.clone(),
            peer: peer.public(),
            session_id,
        };
        let (ea, eb) = (
            expect(Role::Initiator, ka, kb),
            expect(Role::Responder, kb, ka),
        );
        let (a, b) = tokio::join!(authenticate(a, false, &ea), authenticate(b, false, &eb));
        (a.unwrap(), b.unwrap())
    }

    fn start(auth: Authenticated, role: Role, peer: &Keypair) -> (Session, PathControl) {
        let info = SessionInfo {
            peer: peer.public(),
            remote: auth.remote,
            observed: auth.remote,
            path: PathKind::Relayed,
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
            None,
        )
    }

    /// Two ends of an authenticated session over loopback, with their path controls.
    async fn pair_with_paths() -> (Keys, (Session, PathControl), (Session, PathControl)) {
        let keys = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
        let (a, b) = authed(&keys, 5).await;
        let sa = start(a, Role::Initiator, &keys.1);
        let sb = start(b, Role::Responder, &keys.0);
        (keys, sa, sb)
    }

    async fn pair() -> (Session, Session) {
        let (_, (a, _), (b, _)) = pair_with_paths().await;
        (a, b)
    }

    /// A byte pattern no two offsets of which repeat within 251 bytes, so a lost, doubled
    /// or reordered chunk shows.
    fn pattern(offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((offset + i) % 251) as u8)
            .collect()
    }

    /// Streams `total` bytes of the pattern in `chunk`-sized writes, pausing between them.
    async fn send_pattern(stream: &mut Stream, total: u64, chunk: usize) {
        let mut sent = 0u64;
        while sent < total {
            let n = chunk.min((total - sent) as usize);
            stream.write_all(&pattern(sent, n)).await.unwrap();
            sent += n as u64;
            tokio::task::yield_now().await;
        }
        stream.shutdown().await.unwrap();
    }

    async fn check_pattern(stream: &mut Stream, total: u64) {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert_eq!(buf[..n], pattern(got, n)[..], "at offset {got}");
            got += n as u64;
        }
        assert_eq!(got, total);
    }

    #[tokio::test]
    async fn a_session_moves_to_a_new_path_without_losing_or_reordering_a_byte() {
        const TOTAL: u64 = 48 * 1024 * 1024;
        let (keys, (a, a_path), (mut b, b_path)) = pair_with_paths().await;
        // Streams in both directions keep moving data while the session moves.
        let mut up = a.open_stream().await.unwrap();
        up.write_all(b"x").await.unwrap();
        let mut up_far = tokio::time::timeout(HANG, b.accept_stream())
            .await
            .unwrap()
            .unwrap();
        let mut one = [0u8; 1];
        up_far.read_exact(&mut one).await.unwrap();
        let mut down = b.open_stream().await.unwrap();
        down.write_all(b"y").await.unwrap();
        let mut a = a;
        let mut down_far = tokio::time::timeout(HANG, a.accept_stream())
            .await
            .unwrap()
            .unwrap();
        down_far.read_exact(&mut one).await.unwrap();
        let sending = tokio::spawn(async move {
            tokio::join!(
                send_pattern(&mut up, TOTAL, 7_777),
                send_pattern(&mut down, TOTAL, 100_003)
            );
        });
        let checking = tokio::spawn(async move {
            tokio::join!(
                check_pattern(&mut up_far, TOTAL),
                check_pattern(&mut down_far, TOTAL)
            );
        });
        // The new path: its own connection and handshake. The two ends switch at different
        // moments, as they do after a punch (the initiator first).
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (na, nb) = authed(&keys, 6).await;
        let (ra, rb) = (na.remote, nb.remote);
        let direct = |remote| PathState {
            kind: PathKind::Direct,
            remote,
        };
        assert!(a_path.upgrade(na.into_secure(), direct(ra)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(b_path.upgrade(nb.into_secure(), direct(rb)));
        assert_eq!(a.path().kind, PathKind::Direct);
        assert_eq!(b.path(), direct(rb));
        tokio::time::timeout(HANG, sending).await.unwrap().unwrap();
        tokio::time::timeout(HANG, checking).await.unwrap().unwrap();
        // The session still works, on the new path only.
        let mut s = a.open_stream().await.unwrap();
        s.write_all(b"after").await.unwrap();
        s.shutdown().await.unwrap();
        let mut far = tokio::time::timeout(HANG, b.accept_stream())
            .await
            .unwrap()
            .unwrap();
        let mut buf = Vec::new();
        far.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"after");
        assert!(!a.is_closed() && !b.is_closed());
    }

    /// Small slices of a vectored write are joined, large ones go alone, and each write's
    /// count is a prefix of the concatenation: the far end reads exactly those bytes.
    #[tokio::test]
    async fn vectored_writes_arrive_as_the_concatenated_prefix() {
        let (a, mut b) = pair().await;
        let mut near = a.open_stream().await.unwrap();
        let big = vec![3u8; JOIN_BELOW + 10];
        let writes: [&[&[u8]]; 4] = [
            &[b"header...", &[1u8; 1024], b"tail"],
            &[b"", b"only"],
            &[&big, b"after big"],
            &[&[7u8; JOIN_BELOW - 3], b"crosses the join limit"],
        ];
        let mut expected = Vec::new();
        let mut counts = Vec::new();
        for slices in writes {
            let bufs: Vec<io::IoSlice<'_>> = slices.iter().map(|s| io::IoSlice::new(s)).collect();
            let n = near.write_vectored(&bufs).await.unwrap();
            assert!(n > 0);
            let all = slices.concat();
            expected.extend_from_slice(&all[..n]);
            counts.push(n);
        }
        // Joined in one frame; a lone slice; a large slice alone; joined up to the limit.
        assert_eq!(counts, [9 + 1024 + 4, 4, JOIN_BELOW + 10, JOIN_BELOW]);
        assert_eq!(near.write_vectored(&[]).await.unwrap(), 0);
        near.shutdown().await.unwrap();
        let mut far = tokio::time::timeout(HANG, b.accept_stream())
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(HANG, far.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expected);
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
