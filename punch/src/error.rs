//! Errors of the punch client, saying whose fault it was and what was tried.

use std::net::SocketAddr;
use std::time::Duration;

use punch_proto::message::ErrorCode;
use punch_proto::PeerId;

use crate::attempt::Tried;

/// Why a connect, or the client, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No registered control connection to the rendezvous right now.
    #[error("rendezvous {addr} unreachable: {reason}")]
    RendezvousUnreachable { addr: SocketAddr, reason: String },
    /// The rendezvous has no registration for the peer.
    #[error("peer {peer} is offline (not registered at the rendezvous)")]
    PeerOffline { peer: PeerId },
    /// The peer is registered but does not take inbound punches.
    #[error("peer {peer} does not accept inbound punches")]
    PeerRefuses { peer: PeerId },
    #[error("rate limited by the rendezvous{}", retry_hint(*retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// Another refusal from the rendezvous.
    #[error("rendezvous refused the request ({code:?}): {detail}")]
    Rendezvous { code: ErrorCode, detail: String },
    /// The rendezvous did not answer a request in time.
    #[error("rendezvous did not answer within {0:?}")]
    RequestTimeout(Duration),
    /// No stream reached the peer within the punch window.
    #[error(
        "punch to {peer} timed out after {elapsed:?}; tried {}",
        describe(tried)
    )]
    PunchTimeout {
        peer: PeerId,
        elapsed: Duration,
        tried: Vec<Tried>,
    },
    /// Streams reached someone, but not the holder of the expected key.
    #[error("authentication of {peer} failed at {addr}: {reason}")]
    AuthFailed {
        peer: PeerId,
        addr: SocketAddr,
        reason: String,
    },
    #[error("session error: {0}")]
    Session(String),
    #[error("the punch client has shut down")]
    Shutdown,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!("; retry in {} ms", d.as_millis()))
        .unwrap_or_default()
}

fn describe(tried: &[Tried]) -> String {
    if tried.is_empty() {
        return "no candidate addresses".into();
    }
    tried
        .iter()
        .map(|t| {
            format!(
                "{} ({} dials, last error: {})",
                t.addr,
                t.dials,
                t.last_error.as_deref().unwrap_or("none")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
