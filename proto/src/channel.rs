//! An encrypted control channel: Noise XK over length-prefixed frames over any async stream.
//!
//! [`client_handshake`] and [`server_handshake`] run the three handshake messages (see
//! [`crate::noise`]); the registration rides in message 3. After that every frame is one
//! Noise transport message carrying one encoded control message. `recv` is cancel-safe, so a
//! driver can `select!` on it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Framed;

use crate::frame::{FrameCodec, FrameError, HEADER_LEN};
use crate::identity::{Keypair, PeerId};
use crate::message::{DecodeError, Register};
use crate::noise::{Handshake, NoiseError, Transport};

/// Size of XK message 1 (ephemeral key + empty encrypted payload); anything else is refused
/// before any Diffie-Hellman work.
pub const XK_MESSAGE1_LEN: usize = 48;

/// Why a control channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("noise: {0}")]
    Noise(#[from] NoiseError),
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("handshake message {index} has {len} bytes, expected {expected}")]
    HandshakeLength {
        index: u8,
        len: usize,
        expected: usize,
    },
    #[error("connection closed by the other side")]
    Closed,
}

/// A Noise-encrypted, framed channel.
///
/// After the handshake it holds no buffer while idle: a registered peer of the rendezvous
/// sends a message every few seconds, and the server holds one channel per peer, so fixed
/// read and write buffers (a codec's 8 KiB each) would be most of its memory per peer. `read`
/// holds at most the frame being received (capped by [`FrameCodec::control`]) and is freed
/// once empty; `buf` holds one encrypted message while it is written.
#[derive(Debug)]
pub struct Channel<S> {
    io: S,
    codec: FrameCodec,
    transport: Transport,
    /// Bytes received and not yet taken as frames.
    read: Vec<u8>,
    buf: Vec<u8>,
}

/// The first read of a frame asks for this much: a whole control message usually fits, so it
/// takes one system call.
const FIRST_READ: usize = 256;
/// A write buffer larger than this is not kept between messages.
const KEEP_WRITE_BUF: usize = 1024;

async fn next_frame<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
) -> Result<bytes::Bytes, ChannelError> {
    match framed.next().await {
        Some(frame) => Ok(frame?),
        None => Err(ChannelError::Closed),
    }
}

/// Runs the client side of the control handshake, registering with `register`.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    local: &Keypair,
    server: &PeerId,
    register: &Register,
) -> Result<Channel<S>, ChannelError> {
    let mut framed = Framed::new(stream, FrameCodec::control());
    let mut hs = Handshake::control_client(local, server)?;
    framed.send(hs.write(&[])?).await?;
    let m2 = next_frame(&mut framed).await?;
    hs.read(&m2)?;
    framed.send(hs.write(&register.encode())?).await?;
    Ok(Channel::after_handshake(framed, hs.into_transport()?))
}

/// What the server learns from a completed handshake.
#[derive(Debug)]
pub struct Accepted<S> {
    pub channel: Channel<S>,
    pub peer: PeerId,
    pub register: Register,
    /// Time from sending message 2 to receiving message 3: one round trip, the first RTT sample.
    pub rtt: Duration,
}

/// Runs the server side of the control handshake.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    local: &Keypair,
) -> Result<Accepted<S>, ChannelError> {
    let mut framed = Framed::new(stream, FrameCodec::control());
    let mut hs = Handshake::control_server(local)?;
    let m1 = next_frame(&mut framed).await?;
    if m1.len() != XK_MESSAGE1_LEN {
        return Err(ChannelError::HandshakeLength {
            index: 1,
            len: m1.len(),
            expected: XK_MESSAGE1_LEN,
        });
    }
    hs.read(&m1)?;
    framed.send(hs.write(&[])?).await?;
    // tokio's clock, like every driver's (`tokio::time::pause` controls it in tests).
    let sent = tokio::time::Instant::now();
    let m3 = next_frame(&mut framed).await?;
    let rtt = sent.elapsed();
    let payload = hs.read(&m3)?;
    let register = Register::decode(&payload)?;
    let transport = hs.into_transport()?;
    Ok(Accepted {
        peer: transport.remote(),
        channel: Channel::after_handshake(framed, transport),
        register,
        rtt,
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// Leaves the handshake's codec buffers behind, keeping what was read past message 3.
    fn after_handshake(framed: Framed<S, FrameCodec>, transport: Transport) -> Self {
        let parts = framed.into_parts();
        Channel {
            io: parts.io,
            codec: parts.codec,
            transport,
            read: parts.read_buf.to_vec(),
            buf: Vec::new(),
        }
    }

    /// Encrypts and sends one message.
    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), ChannelError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER_LEN]);
        self.transport.encrypt(plaintext, &mut self.buf)?;
        let len = self.buf.len() - HEADER_LEN;
        if len > self.codec.max() {
            return Err(FrameError::Oversized {
                len,
                max: self.codec.max(),
            }
            .into());
        }
        self.buf[..HEADER_LEN].copy_from_slice(&(len as u16).to_be_bytes());
        self.io.write_all(&self.buf).await.map_err(FrameError::Io)?;
        self.io.flush().await.map_err(FrameError::Io)?;
        if self.buf.capacity() > KEEP_WRITE_BUF {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Receives and decrypts one message. Cancel-safe: its only wait is a read whose bytes,
    /// once read, are kept in `self` before anything else can happen.
    pub async fn recv(&mut self) -> Result<Vec<u8>, ChannelError> {
        loop {
            // The header is checked (empty, oversized) before any of the body is read.
            let len = self.codec.frame_len(&self.read)?;
            if let Some(len) = len.filter(|&len| self.read.len() >= HEADER_LEN + len) {
                let mut out = Vec::with_capacity(len);
                let res = self
                    .transport
                    .decrypt(&self.read[HEADER_LEN..HEADER_LEN + len], &mut out);
                self.read.drain(..HEADER_LEN + len);
                if self.read.is_empty() {
                    self.read = Vec::new();
                }
                res?;
                return Ok(out);
            }
            // Room for the rest of this frame, or a first read.
            let want = len.map_or(FIRST_READ, |len| HEADER_LEN + len);
            self.read.reserve(want.saturating_sub(self.read.len()));
            let n = self
                .io
                .read_buf(&mut self.read)
                .await
                .map_err(FrameError::Io)?;
            if n == 0 {
                return Err(ChannelError::Closed);
            }
        }
    }

    /// The authenticated identity of the other side.
    pub fn remote(&self) -> PeerId {
        self.transport.remote()
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::PROTOCOL_VERSION;

    #[tokio::test]
    async fn handshake_over_duplex() {
        let server = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let reg = Register {
            version: PROTOCOL_VERSION,
            local_addrs: vec![],
            accept_inbound: true,
            allow: vec![],
            network: String::new(),
            probe: false,
        };
        let server_pub = server.public();
        let client_task =
            tokio::spawn(async move { client_handshake(a, &client, &server_pub, &reg).await });
        let mut acc = server_handshake(b, &server).await.unwrap();
        let mut c = client_task.await.unwrap().unwrap();
        assert!(acc.register.accept_inbound);
        c.send(b"hi").await.unwrap();
        assert_eq!(acc.channel.recv().await.unwrap(), b"hi");
        acc.channel.send(b"yo").await.unwrap();
        assert_eq!(c.recv().await.unwrap(), b"yo");
        assert_eq!(c.remote(), server.public());
        assert_eq!(acc.peer, acc.channel.remote());
    }

    #[tokio::test]
    async fn wrong_pinned_key_fails_on_server_side_too() {
        let server = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        let wrong = Keypair::generate().unwrap().public();
        let (a, b) = tokio::io::duplex(1 << 16);
        let reg = Register {
            version: PROTOCOL_VERSION,
            local_addrs: vec![],
            accept_inbound: false,
            allow: vec![],
            network: String::new(),
            probe: false,
        };
        let client_task =
            tokio::spawn(async move { client_handshake(a, &client, &wrong, &reg).await });
        let res = server_handshake(b, &server).await;
        assert!(matches!(
            res,
            Err(ChannelError::Noise(NoiseError::Crypto(_)))
        ));
        drop(res);
        assert!(client_task.await.unwrap().is_err());
    }
}
