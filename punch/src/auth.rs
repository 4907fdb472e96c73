//! Authentication of a punched stream, and choosing one winner among several.
//!
//! A punch can yield several TCP streams between the same two peers (a simultaneous open, a
//! SYN that reached a listener, a LAN address and a public one). Every stream runs:
//!
//! ```text
//! both ends          PREAMBLE = "PNCH" | session id (u64 BE)     (12 bytes, in clear)
//! initiator -> resp  Noise KK message 1  (framed: u16 length + bytes; same write as PREAMBLE)
//! resp -> initiator  Noise KK message 2
//! initiator -> resp  transport message CONFIRM   (only on the stream it picks)
//!                    or UPGRADE (a direct stream for a session that started relayed)
//! ```
//!
//! A relayed stream is the same after the relay's HELLO ([`punch_proto::relay`]): the relay
//! copies the two ends' bytes, so both write and read the preamble themselves. Where the other
//! preamble is expected the relay may instead write its REFUSAL, which ends the stream with
//! [`AuthError::Relay`].
//!
//! Each end writes its preamble first on a stream it dialed, and reads the other's first on a
//! stream its listener accepted (the preamble tells the listener which punch the stream
//! belongs to). Roles come from the rendezvous, never from who dialed: TCP simultaneous open
//! has no client. The KK prologue binds the session id, so a stream from another (stale)
//! session or a stranger without the expected key fails. The initiator takes the first stream
//! that authenticates and sends CONFIRM on it; the responder takes the stream on which CONFIRM
//! arrives. All others are dropped.

use std::net::SocketAddr;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use punch_proto::frame::{FrameCodec, FrameError};
use punch_proto::noise::{Handshake, NoiseError, Transport};
use punch_proto::{Keypair, PeerId, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use crate::secure::SecureStream;

/// Magic at the start of the preamble: a stream that does not start with it is not ours.
pub const PREAMBLE_MAGIC: [u8; 4] = *b"PNCH";
pub const PREAMBLE_LEN: usize = 12;
/// Plaintext of the initiator's selection message.
pub const CONFIRM: &[u8] = b"punch/selected";
/// Plaintext of the initiator's selection of a direct stream for a session already running on
/// the relay: the responder must start that session on the relay first, then move.
pub const UPGRADE: &[u8] = b"punch/upgrade";

/// Which selection message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// [`CONFIRM`]: the session starts on this stream.
    Now,
    /// [`UPGRADE`]: the session, started on the relay, moves to this stream.
    Upgrade,
}
/// KK handshake messages are 48 and 48 bytes; anything above this is not a handshake.
const MAX_HANDSHAKE_FRAME: usize = 256;

/// Why a stream did not authenticate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a punch stream (bad preamble)")]
    Preamble,
    #[error("stream belongs to session {found}, expected {expected}")]
    StaleSession { expected: u64, found: u64 },
    #[error("peer failed authentication: {0}")]
    Noise(#[from] NoiseError),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("stream closed during authentication")]
    Closed,
    #[error("peer did not confirm this stream")]
    NotConfirmed,
    #[error("relay refused: {0}")]
    Relay(punch_proto::relay::Refusal),
}

impl AuthError {
    /// Whether retrying the same address is pointless (a wrong key stays wrong).
    pub fn is_final(&self) -> bool {
        matches!(self, AuthError::Noise(_) | AuthError::StaleSession { .. })
    }

    /// The kind of failure, without its details (for summaries such as
    /// [`crate::attempt::Tried`]).
    pub fn kind(&self) -> AuthErrorKind {
        match self {
            AuthError::Io(e) => AuthErrorKind::Io(e.kind()),
            AuthError::Preamble => AuthErrorKind::Preamble,
            AuthError::StaleSession { .. } => AuthErrorKind::StaleSession,
            AuthError::Noise(_) => AuthErrorKind::Noise,
            AuthError::Frame(_) => AuthErrorKind::Frame,
            AuthError::Closed => AuthErrorKind::Closed,
            AuthError::NotConfirmed => AuthErrorKind::NotConfirmed,
            AuthError::Relay(r) => AuthErrorKind::Relay(*r),
        }
    }
}

/// [`AuthError`] without its details: copyable and comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthErrorKind {
    #[error("i/o: {0}")]
    Io(std::io::ErrorKind),
    #[error("not a punch stream (bad preamble)")]
    Preamble,
    #[error("stream belongs to another session")]
    StaleSession,
    #[error("peer failed authentication")]
    Noise,
    #[error("framing error")]
    Frame,
    #[error("stream closed during authentication")]
    Closed,
    #[error("peer did not confirm this stream")]
    NotConfirmed,
    #[error("relay refused: {0}")]
    Relay(punch_proto::relay::Refusal),
}

pub fn preamble(session_id: u64) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..4].copy_from_slice(&PREAMBLE_MAGIC);
    p[4..].copy_from_slice(&session_id.to_be_bytes());
    p
}

/// Reads the other end's preamble and returns its session id.
pub async fn read_preamble(stream: &mut TcpStream) -> Result<u64, AuthError> {
    let mut p = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut p).await?;
    parse_preamble(&p)
}

pub fn parse_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<u64, AuthError> {
    if let Some(refusal) = punch_proto::relay::parse_refusal(p) {
        return Err(AuthError::Relay(refusal));
    }
    if p[..4] != PREAMBLE_MAGIC {
        return Err(AuthError::Preamble);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&p[4..]);
    Ok(u64::from_be_bytes(id))
}

/// A stream whose far end proved it holds the expected key.
#[derive(Debug)]
pub struct Authenticated {
    framed: Framed<TcpStream, FrameCodec>,
    transport: Transport,
    pub remote: SocketAddr,
}

/// What one end knows about the punch it is authenticating.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub role: Role,
    pub keypair: Keypair,
    pub peer: PeerId,
    pub session_id: u64,
}

/// Runs preamble and Noise KK on `stream`. `preamble_read` is true for a stream our listener
/// accepted (it has already read and routed the other end's preamble).
pub async fn authenticate(
    mut stream: TcpStream,
    preamble_read: bool,
    expect: &AuthContext,
) -> Result<Authenticated, AuthError> {
    let remote = stream.peer_addr()?;
    let mut hs = Handshake::peer(
        expect.role,
        &expect.keypair,
        &expect.peer,
        expect.session_id,
    )?;
    // Our preamble, and for the initiator message 1 right behind it: one write, so the
    // handshake costs no extra one-way trip waiting for the other preamble.
    let mut first = preamble(expect.session_id).to_vec();
    if expect.role == Role::Initiator {
        let m1 = hs.write(&[])?;
        first.extend_from_slice(&(m1.len() as u16).to_be_bytes());
        first.extend_from_slice(&m1);
    }
    stream.write_all(&first).await?;
    if !preamble_read {
        let found = read_preamble(&mut stream).await?;
        if found != expect.session_id {
            return Err(AuthError::StaleSession {
                expected: expect.session_id,
                found,
            });
        }
    }
    let mut framed = Framed::new(stream, FrameCodec::new(MAX_HANDSHAKE_FRAME));
    match expect.role {
        Role::Initiator => {
            let m2 = framed.next().await.ok_or(AuthError::Closed)??;
            hs.read(&m2)?;
        }
        Role::Responder => {
            let m1 = framed.next().await.ok_or(AuthError::Closed)??;
            hs.read(&m1)?;
            framed.send(hs.write(&[])?).await?;
        }
    }
    Ok(Authenticated {
        framed,
        transport: hs.into_transport()?,
        remote,
    })
}

impl Authenticated {
    /// Initiator: picks this stream by sending CONFIRM (or, `upgrade`, UPGRADE) on it.
    pub async fn confirm(&mut self, upgrade: bool) -> Result<(), AuthError> {
        let mut msg = Vec::new();
        let plain = if upgrade { UPGRADE } else { CONFIRM };
        self.transport.encrypt(plain, &mut msg)?;
        self.framed.send(&msg[..]).await?;
        Ok(())
    }

    /// Responder: waits until the initiator picks this stream, and says how.
    pub async fn await_confirm(&mut self) -> Result<Selected, AuthError> {
        // The confirm message is a full data frame away from the handshake limit.
        *self.framed.codec_mut() = FrameCodec::new(punch_proto::frame::MAX_DATA_FRAME);
        let frame = self.framed.next().await.ok_or(AuthError::Closed)??;
        let mut plain = Vec::new();
        self.transport.decrypt(&frame, &mut plain)?;
        match &plain[..] {
            CONFIRM => Ok(Selected::Now),
            UPGRADE => Ok(Selected::Upgrade),
            _ => Err(AuthError::NotConfirmed),
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        self.framed.get_ref()
    }

    /// The encrypted byte stream, keeping bytes already read past the handshake.
    pub fn into_secure(self) -> SecureStream<TcpStream> {
        let FramedParts { io, read_buf, .. } = self.framed.into_parts();
        SecureStream::new(io, self.transport, BytesMut::from(&read_buf[..]))
    }
}
