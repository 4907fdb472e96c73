//! Errors of the punch client, saying whose fault it was and what was tried.
//!
//! - [`Error`]: what [`crate::Client::connect`] and friends return.
//! - [`RendezvousError`]: why the rendezvous is unreachable (our network or configuration,
//!   the rendezvous breaking the protocol, or it going silent). `Clone` (its sources are
//!   shared), because one loss fails every pending request and is also reported as status.
//! - [`SessionError`]: a yamux session failing under an established punch.
//! - [`crate::auth::AuthError`]: why one punched stream did not authenticate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use punch_proto::channel::ChannelError;
use punch_proto::message::{DecodeError, ErrorCode, NetworkNameError, ServerMsg};
use punch_proto::PeerId;

use crate::attempt::Tried;
use crate::auth::AuthError;

/// Why a connect, or the client, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No registered control connection to the rendezvous right now.
    #[error("rendezvous {addr} unreachable: {source}")]
    RendezvousUnreachable {
        addr: SocketAddr,
        #[source]
        source: RendezvousError,
    },
    /// The rendezvous has no registration for the peer.
    #[error("peer {peer} is offline (not registered at the rendezvous)")]
    PeerOffline { peer: PeerId },
    /// The peer is registered but does not take inbound punches.
    #[error("peer {peer} does not accept inbound punches")]
    PeerRefuses { peer: PeerId },
    /// The peer takes inbound punches only from the peers its allow-list names, and not from
    /// us (refused by the rendezvous; the peer was not told).
    #[error("peer {peer} does not accept punches from us (not on its allow-list)")]
    NotAllowed { peer: PeerId },
    /// The peer registered another network than our `network` (refused by the rendezvous;
    /// the peer was not told): a mismatch of configurations, nobody's misbehaviour.
    #[error("peer {peer} is not on our network {network} (refused by the rendezvous)")]
    WrongNetwork { peer: PeerId, network: String },
    /// The peer is on our own deny list ([`crate::Config::deny`]): nothing was sent.
    #[error("peer {peer} is on our deny list; not contacted")]
    Denied { peer: PeerId },
    /// Our configuration: [`crate::Client::discover`] needs [`crate::Config::network`].
    #[error("discover needs a network in the configuration (Config::network)")]
    NoNetwork,
    /// Our configuration: [`crate::Config::network`] is not a valid network name.
    #[error("invalid network name {network:?}: {source}")]
    InvalidNetwork {
        network: String,
        #[source]
        source: NetworkNameError,
    },
    #[error("rate limited by the rendezvous{}", retry_hint(*retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// Another refusal from the rendezvous (`detail` is the rendezvous's own text).
    #[error("rendezvous refused the request ({code:?}): {detail}")]
    Rendezvous { code: ErrorCode, detail: String },
    /// The rendezvous did not answer a request in time.
    #[error("rendezvous did not answer within {0:?}")]
    RequestTimeout(Duration),
    /// No stream reached the peer within the punch window (the network's fault, or the peer
    /// is not dialing).
    #[error(
        "punch to {peer} timed out after {elapsed:?}; tried {}",
        describe(tried)
    )]
    PunchTimeout {
        peer: PeerId,
        elapsed: Duration,
        tried: Vec<Tried>,
    },
    /// Streams reached someone, but not the holder of the expected key (or one from another
    /// session): the far end's fault, or a lying rendezvous.
    #[error("authentication of {peer} failed at {addr}: {source}")]
    AuthFailed {
        peer: PeerId,
        addr: SocketAddr,
        #[source]
        source: AuthError,
    },
    /// The established session failed.
    #[error("session error: {0}")]
    Session(#[from] SessionError),
    #[error("the punch client has shut down")]
    Shutdown,
    /// Local I/O (binding the punch port).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A short, stable name of the kind of failure (a metrics label, a log field).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::RendezvousUnreachable { .. } => "rendezvous_unreachable",
            Error::PeerOffline { .. } => "peer_offline",
            Error::PeerRefuses { .. } => "peer_refuses",
            Error::NotAllowed { .. } => "not_allowed",
            Error::WrongNetwork { .. } => "wrong_network",
            Error::Denied { .. } => "denied",
            Error::NoNetwork => "no_network",
            Error::InvalidNetwork { .. } => "invalid_network",
            Error::RateLimited { .. } => "rate_limited",
            Error::Rendezvous { .. } => "rendezvous_refused",
            Error::RequestTimeout(_) => "request_timeout",
            Error::PunchTimeout { .. } => "punch_timeout",
            Error::AuthFailed { .. } => "auth_failed",
            Error::Session(_) => "session",
            Error::Shutdown => "shutdown",
            Error::Io(_) => "io",
        }
    }
}

/// Why the rendezvous is unreachable or was lost.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RendezvousError {
    /// A request came while the client was (re)connecting.
    #[error("not registered (reconnecting)")]
    Reconnecting,
    /// Not registered within the time the caller waited; `last` is the latest failure.
    #[error("not registered after {waited:?}{}", last.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotRegistered {
        waited: Duration,
        last: Option<Box<RendezvousError>>,
    },
    /// TCP connect from the punch port failed.
    #[error("connect: {0}")]
    Connect(#[source] Arc<std::io::Error>),
    /// Local socket error on the control connection.
    #[error("i/o: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// TCP connect from the punch port plus the Noise handshake did not finish in time
    /// (network, address, or a rendezvous that does not answer).
    #[error("connect and handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The Noise handshake failed: most often our configured rendezvous key is wrong.
    #[error("handshake failed (wrong --rendezvous-key?): {0}")]
    Handshake(#[source] Arc<ChannelError>),
    /// The rendezvous did not answer the registration in time.
    #[error("no registration reply")]
    NoRegistrationReply,
    /// The channel failed while waiting for the registration reply.
    #[error("registration: {0}")]
    Registration(#[source] Arc<ChannelError>),
    /// The rendezvous refused our registration (`detail` is its own text).
    #[error("registration refused ({code:?}): {detail}")]
    RegistrationRefused { code: ErrorCode, detail: String },
    /// The rendezvous broke the protocol: a message we cannot decode.
    #[error("malformed message from rendezvous: {0}")]
    Malformed(#[source] Arc<DecodeError>),
    /// The rendezvous broke the protocol: a message out of place.
    #[error("unexpected message {0:?}")]
    Unexpected(Box<ServerMsg>),
    /// The rendezvous reported an error for the whole connection (`detail` is its text).
    #[error("rendezvous error ({code:?}): {detail}")]
    Server { code: ErrorCode, detail: String },
    /// Writing to the control connection failed.
    #[error("write failed: {0}")]
    Write(#[source] Arc<ChannelError>),
    /// A control message could not be written in time: the rendezvous is not reading.
    #[error("write timed out after {0:?}: rendezvous is not reading")]
    WriteTimeout(Duration),
    /// The control connection broke or was closed.
    #[error("connection lost: {0}")]
    Lost(#[source] Arc<ChannelError>),
    /// Nothing heard from the rendezvous for several ping intervals.
    #[error("rendezvous went silent")]
    Silent,
    /// The rendezvous is going away (shutting down, most often to restart): we reconnect at a
    /// random moment within `reconnect_within`, as it asked. Nobody's fault.
    #[error("rendezvous is going away (restarting); reconnecting within {reconnect_within:?}")]
    GoingAway { reconnect_within: Duration },
}

/// Why a yamux session or stream operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Opening a stream failed: the session has ended, or the peer refused more streams.
    #[error("could not open a stream: {0}")]
    Open(#[source] tokio_yamux::error::Error),
    /// The peer's fault: it broke yamux in a way that would cost us memory (sent beyond the
    /// window we granted, acknowledged a ping we never sent, opened too many streams).
    #[error("peer broke the yamux protocol: {0}")]
    PeerViolation(#[from] crate::guard::Violation),
    /// The peer's fault: our writes made no progress for this long (it stopped reading).
    #[error("peer stopped reading: no write progress for {0:?}")]
    PeerNotReading(Duration),
    /// Our fault (the local application): the session's unread budget stayed full, nothing
    /// read, for `stalled`; reading had stopped, so the session was ended.
    #[error("local reader stalled: {unread} bytes unread for {stalled:?}")]
    ReaderStalled { stalled: Duration, unread: u64 },
    /// The relay's decision: it ended the relayed session (a limit of the relay's, or its
    /// shutdown) and told both peers why.
    #[error("relay ended the session: {0}")]
    RelayEnded(punch_proto::message::RelayEnd),
}

impl From<crate::guard::Verdict> for SessionError {
    fn from(v: crate::guard::Verdict) -> Self {
        match v {
            crate::guard::Verdict::PeerNotReading { stalled } => Self::PeerNotReading(stalled),
            crate::guard::Verdict::ReaderStalled { stalled, unread } => {
                Self::ReaderStalled { stalled, unread }
            }
        }
    }
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
                t.last_error
                    .map_or_else(|| "none".to_string(), |e| e.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
