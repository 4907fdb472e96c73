//! A punched session: yamux over the authenticated, encrypted stream.
//!
//! The Noise initiator is the yamux client and the responder the yamux server, as the
//! rendezvous assigned. One driver task polls the yamux session (all its I/O happens there)
//! and hands inbound streams to [`Session::accept_stream`]; dropping the [`Session`] aborts the
//! driver and closes the TCP connection.
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
use tokio::sync::mpsc;
use tokio_yamux::{Config as YamuxConfig, Control, StreamHandle};
use tracing::{debug, warn, Instrument};

use crate::error::Error;
use crate::secure::SecureStream;

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
/// How often the driver checks whether handles remain.
const HANDLE_CHECK: Duration = Duration::from_millis(100);

/// Shared by the session handle and its streams: the driver lingers and stops once only its
/// own reference is left.
type Handles = Arc<()>;

/// The socket side of the session, noting when it last wrote.
struct Tracked {
    inner: SecureStream<TcpStream>,
    last_write: Arc<std::sync::Mutex<Instant>>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            *self.last_write.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a session reaches its peer.
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

/// yamux configuration for a given window.
pub fn yamux_config(window: u32) -> YamuxConfig {
    YamuxConfig {
        max_stream_window_size: window.max(tokio_yamux::config::INITIAL_STREAM_WINDOW),
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
    driver: tokio::task::JoinHandle<()>,
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
            .map_err(|e| Error::Session(format!("{e:?}")))?;
        Ok(Stream::new(handle, self.1.clone()))
    }
}

impl Session {
    pub(crate) fn start(secure: SecureStream<TcpStream>, info: SessionInfo, window: u32) -> Self {
        let config = yamux_config(window);
        let last_write = Arc::new(std::sync::Mutex::new(Instant::now()));
        let tracked = Tracked {
            inner: secure,
            last_write: last_write.clone(),
        };
        let mut session = match info.role {
            Role::Initiator => tokio_yamux::Session::new_client(tracked, config),
            Role::Responder => tokio_yamux::Session::new_server(tracked, config),
        };
        let handles: Handles = Arc::new(());
        let control = Opener(session.control(), handles.clone());
        let (tx, incoming) = mpsc::channel(ACCEPT_BACKLOG);
        let span = tracing::info_span!("session", peer = %info.peer.short(), remote = %info.remote);
        let watch = Arc::downgrade(&handles);
        let driver = tokio::spawn(
            async move {
                let mut check = tokio::time::interval(HANDLE_CHECK);
                let mut released: Option<Instant> = None;
                loop {
                    tokio::select! {
                        next = session.next() => match next {
                            Some(Ok(handle)) => match watch.upgrade() {
                                Some(h) => {
                                    if tx.try_send(Stream::new(handle, h)).is_err() {
                                        warn!("inbound stream backlog full; stream reset");
                                    }
                                }
                                None => debug!("inbound stream after the session was dropped; reset"),
                            },
                            Some(Err(e)) => {
                                debug!(error = ?e, "session ended");
                                break;
                            }
                            None => break,
                        },
                        _ = check.tick() => {
                            if watch.strong_count() > 0 {
                                continue;
                            }
                            let now = Instant::now();
                            let since = *released.get_or_insert(now);
                            let idle = now.duration_since(*last_write.lock().unwrap_or_else(|e| e.into_inner()));
                            if idle >= LINGER_IDLE || now.duration_since(since) >= LINGER_MAX {
                                debug!("all handles dropped and writes flushed; closing");
                                break;
                            }
                        }
                    }
                }
                debug!("session closed");
            }
            .instrument(span),
        );
        Self {
            info,
            control,
            incoming,
            driver,
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

    /// Whether the underlying connection has ended (the peer closed it or it broke).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }
}

/// One multiplexed stream. Reading and writing work independently (see the module doc).
#[derive(Debug)]
pub struct Stream {
    inner: StreamHandle,
    /// Waker of a reader parked in `poll_read`, so a blocked writer that polls the read side
    /// (and so takes over the frame-channel wakeup) can hand the wakeup back.
    parked_reader: Option<Waker>,
    _handles: Handles,
}

impl Stream {
    fn new(inner: StreamHandle, handles: Handles) -> Self {
        Self {
            inner,
            parked_reader: None,
            _handles: handles,
        }
    }
}

impl Stream {
    /// How many bytes we may send before the peer grants more (yamux flow control). Starts at
    /// 256 KiB and grows up to the peer's configured window as the peer reads.
    pub fn send_window(&self) -> u32 {
        self.inner.send_window()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.parked_reader = match res {
            Poll::Pending => Some(cx.waker().clone()),
            Poll::Ready(_) => None,
        };
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
