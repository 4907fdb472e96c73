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

use bytes::BytesMut;
use punch_proto::frame::{FrameCodec, HEADER_LEN, MAX_DATA_FRAME};
use punch_proto::noise::{Transport, MAX_PLAINTEXT_LEN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::Decoder;

/// Read from the socket in chunks of this size: several full frames per system call.
const READ_CHUNK: usize = 128 * 1024;

/// An encrypted stream over `S`.
pub struct SecureStream<S> {
    inner: S,
    transport: Transport,
    codec: FrameCodec,
    /// Ciphertext read from `inner`, not yet decrypted.
    read_raw: BytesMut,
    /// Decrypted plaintext not yet handed to the reader.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Encrypted frames not yet written to `inner`.
    write_buf: Vec<u8>,
    write_pos: usize,
    read_eof: bool,
    /// The peer's path-end marker was read.
    peer_ended: bool,
    /// Our path-end marker was queued.
    ended: bool,
    /// Socket reads land here first (no uninitialised memory without `unsafe`).
    scratch: Vec<u8>,
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
            write_buf: Vec::new(),
            write_pos: 0,
            read_eof: false,
            peer_ended: false,
            ended: false,
            scratch: vec![0; READ_CHUNK],
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the peer ended this path with the marker (see the module doc) and what it sent
    /// before has been read in full.
    pub fn peer_ended_path(&self) -> bool {
        self.peer_ended && self.plain_pos >= self.plain.len()
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
        let at = self.write_buf.len();
        self.write_buf.extend_from_slice(&[0; HEADER_LEN]);
        self.transport
            .encrypt(chunk, &mut self.write_buf)
            .map_err(invalid)?;
        let len = (self.write_buf.len() - at - HEADER_LEN) as u16;
        self.write_buf[at..at + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.write_pos < self.write_buf.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.write_buf[self.write_pos..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_pos += n;
        }
        self.write_buf.clear();
        self.write_pos = 0;
        Poll::Ready(Ok(()))
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
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.peer_ended {
                // End of this path's stream: what came before the marker was handed out in
                // full; the peer writes nothing after it, and nothing after it is read.
                return Poll::Ready(Ok(()));
            }
            // Decrypt as many whole frames as are buffered (bounded by the buffer).
            this.plain.clear();
            this.plain_pos = 0;
            while let Some(frame) = this.codec.decode(&mut this.read_raw).map_err(invalid)? {
                let before = this.plain.len();
                this.transport
                    .decrypt(&frame, &mut this.plain)
                    .map_err(invalid)?;
                if this.plain.len() == before {
                    this.peer_ended = true;
                    break;
                }
                if this.plain.len() >= READ_CHUNK {
                    break;
                }
            }
            if !this.plain.is_empty() || this.peer_ended {
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
            let n = {
                let mut rb = ReadBuf::new(&mut this.scratch);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                rb.filled().len()
            };
            if n == 0 {
                this.read_eof = true;
            } else {
                this.read_raw.extend_from_slice(&this.scratch[..n]);
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
