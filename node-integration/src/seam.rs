//! The tonic seam: any tonic gRPC server or client running directly over punched streams,
//! without TCP in between (for nodes whose networking code can take a custom transport;
//! kaspa-p2p-lib cannot, see [`crate::bridge`]).
//!
//! ```text
//! server: Session::accept_stream --> Acceptor --> Server::serve_with_incoming(PunchedIo)
//!         (connect info: TcpConnectInfo { remote_addr: the peer's address })
//! client: Endpoint::connect_with_connector(Connector) --> Opener::open_stream per connection
//! ```
//!
//! Each HTTP/2 connection is one yamux stream. tonic's request `remote_addr()` reads
//! `TcpConnectInfo` from the request extensions, and kaspa-p2p-lib's inbound handler refuses a
//! request without one, so [`PunchedIo`] reports `TcpConnectInfo` with a remote address: by
//! default the peer's alias (`127.a.b.c` from the acceptor's own alias table, see
//! [`crate::alias`]) so that per-IP rules act per peer, or the punched connection's real
//! remote address.
//!
//! HTTP/2 sizes ([`H2_MAX_FRAME`], [`H2_STREAM_WINDOW`], [`H2_CONNECTION_WINDOW`]): the
//! earlier libp2p prototype hit FRAME_SIZE_ERROR until it used 1 MiB frames, 8 MiB stream and
//! 16 MiB connection windows. Here those are the defaults ([`H2Sizes::TUNED`]), chosen so the
//! whole HTTP/2 connection window fits in one yamux stream window (punch's default is 16 MiB,
//! see `punch::session`): HTTP/2 flow control stops a sender before yamux has to, so a yamux
//! write never waits on a reader that is itself waiting for an HTTP/2 WINDOW_UPDATE.
//!
//! Measured (release build, loopback, 2 shared cores, `examples/seam_bench.rs`: 256 MiB one
//! way in 1 MiB `KaspadMessage`s through kaspa-p2p-lib's `P2p` service, then 200 small round
//! trips; raw = the same punched yamux stream without gRPC, in the same run):
//!
//! | path                                   | throughput | vs raw | median RTT |
//! |----------------------------------------|-----------:|-------:|-----------:|
//! | raw punched yamux stream               |   257 MB/s |   1.00 |          - |
//! | seam, TUNED                            |   280 MB/s |   1.09 |      74 us |
//! | seam, hyper defaults (16 KiB frames)   |   200 MB/s |   0.78 |      61 us |
//! | loopback bridge, hyper defaults        |   184 MB/s |   0.71 |      98 us |
//!
//! Both settings carried 32 MiB messages without FRAME_SIZE_ERROR (tests `seam_*`): with
//! punch's yamux that error does not occur at hyper's defaults either; the tuned sizes win on
//! throughput (fewer frames, each one yamux frame and one Noise message). Loopback has almost
//! no RTT, so it cannot show the windows' effect on long paths: a stream moves at most
//! window / RTT, i.e. 8 MiB / 100 ms = 84 MB/s with TUNED against 1 MiB / 100 ms = 10 MB/s
//! with hyper's server default. (The netem qdisc needed to add delay is not available here.)

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::Stream as FuturesStream;
use hyper_util::rt::TokioIo;
use punch::session::Opener;
use punch::{Session, SessionInfo, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Endpoint, Server, Uri};

use crate::alias::{AliasError, AliasLease, Aliases};

/// HTTP/2 maximum frame size: 1 MiB (the protocol allows 16 KiB to 16 MiB - 1). Large Kaspa
/// messages (blocks, UTXO chunks) then cross in few frames.
pub const H2_MAX_FRAME: u32 = 1 << 20;
/// HTTP/2 per-stream window: 8 MiB, half the connection window so two busy gRPC streams can
/// both make progress.
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 connection window: 16 MiB, equal to punch's default yamux stream window (see the
/// module doc for why it must not exceed it).
pub const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// Punched streams waiting for the gRPC server to take them.
pub const ACCEPT_BACKLOG: usize = 64;

/// Which remote address a [`PunchedIo`] reports to the gRPC service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoteAddr {
    /// The peer's loopback alias with port 0: per-IP rules act per punched peer.
    #[default]
    Alias,
    /// The punched TCP connection's remote address (the peer's NAT mapping).
    Punched,
}

impl RemoteAddr {
    /// The address to report for `info`'s peer, with the alias lease that backs it.
    fn of(
        self,
        info: &SessionInfo,
        aliases: &Aliases,
    ) -> Result<(SocketAddr, Option<AliasLease>), AliasError> {
        match self {
            RemoteAddr::Alias => {
                let lease = aliases.lease(info.peer)?;
                Ok((SocketAddr::from((lease.alias(), 0)), Some(lease)))
            }
            RemoteAddr::Punched => Ok((info.remote, None)),
        }
    }
}

/// A punched stream as a tonic server connection.
#[derive(Debug)]
pub struct PunchedIo {
    stream: Stream,
    remote: SocketAddr,
}

impl PunchedIo {
    pub fn new(stream: Stream, remote: SocketAddr) -> Self {
        Self { stream, remote }
    }
}

impl Connected for PunchedIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(self.remote),
        }
    }
}

impl AsyncRead for PunchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PunchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    /// Passed through: the stream joins HTTP/2's small header and payload slices into one
    /// frame (tonic unary p50 over a punched stream +31% -> +15% of TCP, issue 16).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Collects the streams peers open on any number of sessions into one incoming stream for
/// `serve_with_incoming`. Sessions are added as they are punched; each is owned by a task of
/// the acceptor, so dropping the [`Incoming`] side ends them all.
#[derive(Debug)]
pub struct Acceptor {
    tx: mpsc::Sender<PunchedIo>,
    tasks: JoinSet<()>,
    remote: RemoteAddr,
    aliases: Aliases,
}

/// The stream of punched connections for `Server::serve_with_incoming`.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<PunchedIo>,
}

impl Acceptor {
    pub fn new(remote: RemoteAddr) -> (Acceptor, Incoming) {
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        (
            Acceptor {
                tx,
                tasks: JoinSet::new(),
                remote,
                aliases: Aliases::default(),
            },
            Incoming { rx },
        )
    }

    /// Serves the streams `session`'s peer opens, until the session ends. Refused (the
    /// session is dropped) when the alias table has no alias for the peer.
    pub fn add(&mut self, mut session: Session) -> Result<(), AliasError> {
        let (remote, lease) = self.remote.of(session.info(), &self.aliases)?;
        let tx = self.tx.clone();
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(async move {
            let _lease = lease;
            while let Some(stream) = session.accept_stream().await {
                if tx.send(PunchedIo::new(stream, remote)).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// The alias reported for `peer` (with [`RemoteAddr::Alias`], once it was added).
    pub fn alias_of(&self, peer: &punch_proto::PeerId) -> Option<std::net::Ipv4Addr> {
        self.aliases.get(peer)
    }
}

impl FuturesStream for Incoming {
    type Item = io::Result<PunchedIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// A tonic connector opening one punched stream per HTTP/2 connection (tonic reconnects
/// through it after a connection breaks).
#[derive(Debug, Clone)]
pub struct Connector {
    opener: Opener,
}

impl Connector {
    pub fn new(opener: Opener) -> Self {
        Self { opener }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = punch::Error;
    type Future = BoxFuture<'static, Result<TokioIo<Stream>, punch::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let opener = self.opener.clone();
        Box::pin(async move { opener.open_stream().await.map(TokioIo::new) })
    }
}

/// HTTP/2 sizes for both ends of the seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Sizes {
    pub max_frame: Option<u32>,
    pub stream_window: Option<u32>,
    pub connection_window: Option<u32>,
}

impl H2Sizes {
    /// The sizes this module recommends (see the module doc).
    pub const TUNED: H2Sizes = H2Sizes {
        max_frame: Some(H2_MAX_FRAME),
        stream_window: Some(H2_STREAM_WINDOW),
        connection_window: Some(H2_CONNECTION_WINDOW),
    };
    /// hyper's defaults (16 KiB frames; server 1 MiB windows, client 2 / 5 MiB), for comparison.
    pub const HYPER_DEFAULT: H2Sizes = H2Sizes {
        max_frame: None,
        stream_window: None,
        connection_window: None,
    };

    /// A tonic server builder with these sizes.
    pub fn server(self) -> Server {
        Server::builder()
            .max_frame_size(self.max_frame)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
    }

    /// A tonic endpoint with these sizes. The URI only names the service (HTTP/2 `:authority`);
    /// the connector decides where bytes go.
    pub fn endpoint(self) -> Endpoint {
        Endpoint::from_static("http://punched.peer")
            .max_frame_size(self.max_frame)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
    }
}

impl Default for H2Sizes {
    fn default() -> Self {
        Self::TUNED
    }
}
