//! The anchors the punched stream is compared with, besides raw TCP: the cipher's one-core
//! seal rate (the ceiling of any encrypted stream on one core), and the same stack built
//! naively from its parts without punch (snow's transport in 2-byte length-prefixed frames,
//! tokio-yamux on top, no guard, no path moves), over loopback.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures::StreamExt;
use punch_proto::frame::{FrameCodec, MAX_DATA_FRAME};
use punch_proto::noise::{Handshake, Transport, MAX_PLAINTEXT_LEN};
use punch_proto::{Keypair, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use tokio_yamux::StreamHandle;

/// Both ends of a finished KK handshake, run in memory.
pub fn transports() -> (Transport, Transport) {
    let (ka, kb) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let mut i = Handshake::peer(Role::Initiator, &ka, &kb.public(), 1).unwrap();
    let mut r = Handshake::peer(Role::Responder, &kb, &ka.public(), 1).unwrap();
    r.read(&i.write(&[]).unwrap()).unwrap();
    i.read(&r.write(&[]).unwrap()).unwrap();
    (i.into_transport().unwrap(), r.into_transport().unwrap())
}

/// MB/s of `Transport::encrypt` sealing `total` bytes in full-size messages on this thread.
pub fn seal_rate(total: u64) -> f64 {
    let (mut t, _) = transports();
    let plain = vec![0x5Au8; MAX_PLAINTEXT_LEN];
    let mut out = Vec::with_capacity(MAX_DATA_FRAME);
    let start = Instant::now();
    let mut done = 0u64;
    while done < total {
        out.clear();
        t.encrypt(&plain, &mut out).unwrap();
        done += plain.len() as u64;
    }
    std::hint::black_box(&out);
    done as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// The naive encrypted stream: read into a buffer, decrypt each frame into a second one,
/// copy out; encrypt each write into a buffer and write it out.
struct PlainNoise {
    tcp: TcpStream,
    t: Transport,
    codec: FrameCodec,
    raw: BytesMut,
    plain: Vec<u8>,
    plain_pos: usize,
    out: Vec<u8>,
    out_pos: usize,
}

impl PlainNoise {
    fn new(tcp: TcpStream, t: Transport) -> Self {
        Self {
            tcp,
            t,
            codec: FrameCodec::new(MAX_DATA_FRAME),
            raw: BytesMut::with_capacity(256 * 1024),
            plain: Vec::new(),
            plain_pos: 0,
            out: Vec::new(),
            out_pos: 0,
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_pos..]))?;
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

fn bad(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl AsyncRead for PlainNoise {
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
            if let Some(frame) = this.codec.decode(&mut this.raw).map_err(bad)? {
                this.plain.clear();
                this.plain_pos = 0;
                this.t.decrypt(&frame, &mut this.plain).map_err(bad)?;
                continue;
            }
            this.raw.reserve(64 * 1024);
            if ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.tcp),
                cx,
                &mut this.raw
            ))? == 0
            {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for PlainNoise {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let take = buf.len().min(MAX_PLAINTEXT_LEN);
        let at = this.out.len();
        this.out.extend_from_slice(&[0, 0]);
        this.t.encrypt(&buf[..take], &mut this.out).map_err(bad)?;
        let len = (this.out.len() - at - 2) as u16;
        this.out[at..at + 2].copy_from_slice(&len.to_be_bytes());
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// A yamux stream that may be written by a task that never reads it: tokio-yamux processes
/// window updates only while a stream is polled for reading, so a blocked write polls an empty
/// read (what `punch::Stream` does).
pub struct Writer(StreamHandle);

impl AsyncRead for Writer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.0).poll_write(cx, buf) {
            Poll::Pending => {
                let _ = Pin::new(&mut self.0).poll_read(cx, &mut ReadBuf::new(&mut []));
                Pin::new(&mut self.0).poll_write(cx, buf)
            }
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A writing and a reading end of one stream of a snow + tokio-yamux session over loopback
/// TCP, with the window of a punched session. The sessions' tasks end with the process.
pub async fn plain_yamux_stream(window: u32) -> (Writer, Writer) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, (b, _)) = (a.unwrap(), b.unwrap());
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    let (ta, tb) = transports();
    let config = punch::session::yamux_config(window, 16);
    let mut client = tokio_yamux::Session::new_client(PlainNoise::new(a, ta), config);
    let mut server = tokio_yamux::Session::new_server(PlainNoise::new(b, tb), config);
    let mut control = client.control();
    tokio::spawn(async move { while client.next().await.is_some() {} });
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(Ok(s)) = server.next().await {
            let _ = tx.send(s).await;
        }
    });
    let w = control.open_stream().await.unwrap();
    (Writer(w), Writer(rx.recv().await.unwrap()))
}
