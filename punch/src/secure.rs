//! A Noise-encrypted byte stream: the authenticated punched TCP stream that yamux runs over.
//!
//! Wire format: a sequence of frames, each a 2-byte big-endian length and one Noise transport
//! message (ciphertext + 16-byte tag) carrying up to [`MAX_PLAINTEXT_LEN`] bytes. A frame that
//! does not decrypt (tampering, a stale or foreign stream) is an error that ends the stream.
//!
//! A frame with an empty plaintext (only the tag) is the **path end** marker: the sender
//! writes nothing more on this connection, and every byte it wrote before the marker has
//! arrived. Data frames are never empty, so the marker cannot be confused with data, and it
//! is authenticated like data, so a relay in the middle cannot forge it (it can only cut the
//! connection, which is an error, not an end). The session moves its byte stream from one
//! path to the next at the marker ([`crate::session`]). A reader that reaches it sees end of
//! stream and [`SecureStream::peer_ended_path`] is true; nothing after it is read.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use punch_proto::frame::{FrameCodec, HEADER_LEN, MAX_DATA_FRAME};
use punch_proto::noise::{Transport, MAX_PLAINTEXT_LEN, TAG_LEN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read from the socket in chunks of up to this size: several full frames per system call.
/// Also the most plaintext one write accepts (then encrypted into one batch of frames).
const READ_CHUNK: usize = 128 * 1024;

/// An encrypted stream over `S`.
///
/// Copies: the socket is read straight into `read_raw`; a frame decrypts straight into the
/// reader's buffer when it has room for it (else into `plain`, then copied out); a write is
/// encrypted into `write_buf`, which keeps its size, so no byte is zeroed or reallocated per
/// frame once it has grown.
pub struct SecureStream<S> {
    inner: S,
    transport: Transport,
    codec: FrameCodec,
    /// Ciphertext read from `inner`, not yet decrypted.
    read_raw: BytesMut,
    /// Decrypted plaintext not yet handed to the reader (a frame larger than its buffer).
    plain: Vec<u8>,
    plain_pos: usize,
    plain_len: usize,
    /// Encrypted frames not yet written to `inner`: `write_buf[write_pos..write_end]`. Its
    /// length is its high-water mark, not the queued amount.
    write_buf: Vec<u8>,
    write_pos: usize,
    write_end: usize,
    read_eof: bool,
    /// The peer's path-end marker was read.
    peer_ended: bool,
    /// Our path-end marker was queued.
    ended: bool,
}

impl<S> std::fmt::Debug for SecureStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("remote", &self.transport.remote())
            .finish_non_exhaustive()
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> SecureStream<S> {
    /// Wraps `inner`; `leftover` holds bytes already read past the handshake.
    pub fn new(inner: S, transport: Transport, leftover: BytesMut) -> Self {
        Self {
            inner,
            transport,
            codec: FrameCodec::new(MAX_DATA_FRAME),
            read_raw: leftover,
            plain: Vec::new(),
            plain_pos: 0,
            plain_len: 0,
            write_buf: Vec::new(),
            write_pos: 0,
            write_end: 0,
            read_eof: false,
            peer_ended: false,
            ended: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the peer ended this path with the marker (see the module doc) and what it sent
    /// before has been read in full.
    pub fn peer_ended_path(&self) -> bool {
        self.peer_ended && self.plain_pos >= self.plain_len
    }

    /// Writes everything queued, then our path-end marker, and flushes. Nothing may be
    /// written after it. Idempotent once it returns ready.
    pub fn poll_end_path(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            ready!(self.poll_flush_buf(cx))?;
            self.push_frame(&[])?;
            self.ended = true;
        }
        ready!(self.poll_flush_buf(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Encrypts one frame of at most [`MAX_PLAINTEXT_LEN`] bytes into the write buffer.
    fn push_frame(&mut self, chunk: &[u8]) -> io::Result<()> {
        let at = self.write_end;
        let end = at + HEADER_LEN + chunk.len() + TAG_LEN;
        if self.write_buf.len() < end {
            self.write_buf.resize(end, 0);
        }
        let n = self
            .transport
            .encrypt_into(chunk, &mut self.write_buf[at + HEADER_LEN..end])
            .map_err(invalid)?;
        self.write_buf[at..at + HEADER_LEN].copy_from_slice(&(n as u16).to_be_bytes());
        self.write_end = at + HEADER_LEN + n;
        Ok(())
    }

    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.write_pos < self.write_end {
            let n = ready!(Pin::new(&mut self.inner)
                .poll_write(cx, &self.write_buf[self.write_pos..self.write_end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_pos += n;
        }
        self.write_pos = 0;
        self.write_end = 0;
        Poll::Ready(Ok(()))
    }

    /// Decrypts the whole frames in `read_raw` straight into `buf` while they fit. A frame
    /// that does not fit stays buffered once something went to `buf`, and is decrypted into
    /// `plain` otherwise. Stops at the path-end marker. Whether anything went to `buf`.
    fn decrypt_buffered(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        let mut wrote = false;
        while let Some(len) = self.codec.frame_len(&self.read_raw).map_err(invalid)? {
            if self.read_raw.len() < HEADER_LEN + len || (wrote && buf.remaining() < len) {
                break;
            }
            let frame = &self.read_raw[HEADER_LEN..HEADER_LEN + len];
            let n = if buf.remaining() >= len {
                let out = buf.initialize_unfilled_to(len);
                let n = self.transport.decrypt_into(frame, out).map_err(invalid)?;
                buf.advance(n);
                n
            } else {
                if self.plain.len() < len {
                    self.plain.resize(len, 0);
                }
                let n = self
                    .transport
                    .decrypt_into(frame, &mut self.plain)
                    .map_err(invalid)?;
                self.plain_pos = 0;
                self.plain_len = n;
                n
            };
            self.read_raw.advance(HEADER_LEN + len);
            if n == 0 {
                self.peer_ended = true;
                break;
            }
            if self.plain_len > 0 {
                break;
            }
            wrote = true;
        }
        Ok(wrote)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for SecureStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain_len {
                let n = buf.remaining().min(this.plain_len - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain_len {
                    this.plain_pos = 0;
                    this.plain_len = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_ended {
                // End of this path's stream: what came before the marker was handed out in
                // full; the peer writes nothing after it, and nothing after it is read.
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.decrypt_buffered(buf)? {
                return Poll::Ready(Ok(()));
            }
            if this.plain_len > 0 || this.peer_ended {
                continue;
            }
            if this.read_eof {
                return if this.read_raw.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a frame",
                    )))
                };
            }
            // Read into what is left of the buffer while a whole frame fits there; then make
            // room for a batch, which reclaims the space of the frames already decrypted
            // (moving at most one partial frame to the front).
            if this.read_raw.capacity() - this.read_raw.len() < HEADER_LEN + MAX_DATA_FRAME {
                this.read_raw.reserve(READ_CHUNK);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.read_raw
            ))?;
            if n == 0 {
                this.read_eof = true;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SecureStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the path-end marker",
            )));
        }
        // Backpressure: at most one batch of encrypted frames is buffered.
        ready!(this.poll_flush_buf(cx))?;
        let take = buf.len().min(READ_CHUNK);
        for chunk in buf[..take].chunks(MAX_PLAINTEXT_LEN) {
            this.push_frame(chunk)?;
        }
        // Start writing; the data is accepted even if the socket is full right now.
        let _ = this.poll_flush_buf(cx)?;
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punch_proto::noise::Handshake;
    use punch_proto::{Keypair, Role};
    use std::future::poll_fn;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Two ends of one in-memory connection after a KK handshake.
    fn pair() -> (SecureStream<DuplexStream>, SecureStream<DuplexStream>) {
        let (ka, kb) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
        let mut i = Handshake::peer(Role::Initiator, &ka, &kb.public(), 1).unwrap();
        let mut r = Handshake::peer(Role::Responder, &kb, &ka.public(), 1).unwrap();
        r.read(&i.write(&[]).unwrap()).unwrap();
        i.read(&r.write(&[]).unwrap()).unwrap();
        let (a, b) = duplex(256 * 1024);
        (
            SecureStream::new(a, i.into_transport().unwrap(), BytesMut::new()),
            SecureStream::new(b, r.into_transport().unwrap(), BytesMut::new()),
        )
    }

    /// Reads until the path end with reads of at most `size` bytes.
    async fn read_all(r: &mut SecureStream<DuplexStream>, size: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; size];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// Frames decrypt straight into large read buffers and through `plain` into small ones:
    /// the bytes, their order and the end marker come out the same either way.
    #[tokio::test]
    async fn any_read_size_sees_every_byte_then_the_path_end() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for read_size in [
            1,
            100,
            MAX_PLAINTEXT_LEN - 1,
            MAX_PLAINTEXT_LEN + 16,
            300_000,
        ] {
            let (mut w, mut r) = pair();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                // Writes of odd sizes: full frames, short frames and batches of several.
                for chunk in sent.chunks(90_001) {
                    w.write_all(chunk).await.unwrap();
                }
                poll_fn(|cx| w.poll_end_path(cx)).await.unwrap();
                w
            });
            let got = read_all(&mut r, read_size).await;
            assert!(got == data, "read size {read_size}: bytes differ");
            assert!(r.peer_ended_path());
            let mut w = writer.await.unwrap();
            assert!(w.write(b"late").await.is_err(), "nothing after the marker");
        }
    }

    #[tokio::test]
    async fn a_tampered_frame_is_an_error() {
        let (mut w, r) = pair();
        w.write_all(b"hello").await.unwrap();
        w.flush().await.unwrap();
        // Flip one ciphertext bit on the way: read the frame off the wire, alter, forward.
        let (mut inner, transport) = (r.inner, r.transport);
        let mut wire = vec![0u8; HEADER_LEN + 5 + TAG_LEN];
        inner.read_exact(&mut wire).await.unwrap();
        wire[HEADER_LEN] ^= 1;
        let mut r = SecureStream::new(inner, transport, BytesMut::from(&wire[..]));
        let err = r.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
