//! Waiting for message 1 before any handshake work, and handing its bytes on afterwards.
//!
//! A freshly accepted connection holds only its socket while [`read_first_message`] waits for
//! the first frame (the `u16` length and the 48 bytes of Noise XK message 1). Reading stops
//! early on end of stream or on a length prefix that cannot be message 1: those connections
//! fail the handshake at once, with its usual error. [`Rewound`] then gives the read bytes
//! back to the handshake code in front of the rest of the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use punch_proto::channel::XK_MESSAGE1_LEN;
use punch_proto::frame::HEADER_LEN;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The bytes of a framed message 1.
const FIRST_FRAME_LEN: usize = HEADER_LEN + XK_MESSAGE1_LEN;

/// Reads until a whole framed message 1, end of stream, or a length prefix other than
/// message 1's. Returns what was read (maybe less than a frame: the handshake will say why).
pub async fn read_first_message<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; FIRST_FRAME_LEN];
    let mut got = 0;
    while got < FIRST_FRAME_LEN {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
        if got >= HEADER_LEN && usize::from(u16::from_be_bytes([buf[0], buf[1]])) != XK_MESSAGE1_LEN
        {
            break;
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Rewound<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(head: Vec<u8>, inner: S) -> Self {
        Self {
            head,
            pos: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.head.len() && buf.remaining() > 0 {
            let n = (this.head.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_one_frame_and_gives_it_back() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut sent = vec![0, 48];
        sent.extend((0..48).map(|i| i as u8));
        sent.extend_from_slice(b"rest");
        a.write_all(&sent).await.unwrap();
        drop(a);
        let head = read_first_message(&mut b).await.unwrap();
        assert_eq!(head, sent[..50]);
        let mut all = Vec::new();
        Rewound::new(head, b).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, sent);
    }

    #[tokio::test]
    async fn stops_at_a_length_that_is_not_message_1_or_at_the_end() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        // Not waiting for 65535 bytes: the prefix already shows this is not message 1.
        let head = read_first_message(&mut b).await.unwrap();
        assert!(head.starts_with(&[0xff, 0xff]));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0]).await.unwrap();
        drop(a);
        assert_eq!(read_first_message(&mut b).await.unwrap(), vec![0]);
    }
}
