//! Forwarding between local TCP connections and session streams (used by `punch listen` and
//! `punch connect --local`).

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::session::Stream;

/// Copies both ways until both directions end; returns the bytes (to stream, from stream).
pub async fn splice<T: AsyncRead + AsyncWrite + Unpin>(
    mut local: T,
    mut stream: Stream,
) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(&mut local, &mut stream).await
}

/// Connects to `target` and splices `stream` to it.
pub async fn to_service(stream: Stream, target: SocketAddr) -> std::io::Result<(u64, u64)> {
    let tcp = TcpStream::connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let res = splice(tcp, stream).await;
    debug!(%target, ?res, "forwarded stream ended");
    res
}
