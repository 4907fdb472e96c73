//! gRPC over a punched stream against gRPC over plain loopback TCP, in the same run: tonic with
//! hyper's default HTTP/2 sizes on both, one echo service taking 1 KiB messages.
//!
//! `cargo run --release -p punch-tests --example tonic_bench -- [ROUNDS]` (default 3). Each
//! round, alternating punched and TCP: a bidirectional stream of 20,000 messages echoed back
//! (messages/s), then 2,000 sequential unary calls (p50, p99), which of the two goes first
//! alternating between rounds; TCP without Nagle, as punched connections. Prints each round and the
//! median ratios. The service uses a raw-bytes codec instead of generated protobuf code, so it
//! needs no code generation; gRPC framing and HTTP/2 are tonic's as usual.
#![allow(clippy::unwrap_used)] // a measuring tool: any failure is fatal and says where

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use punch::{Client, Config};
use punch_proto::Keypair;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status, Streaming};

const MESSAGE: usize = 1024;
const BIDI_MESSAGES: usize = 20_000;
const UNARY_CALLS: usize = 2_000;
const UNARY: &str = "/bench.Echo/Unary";
const BIDI: &str = "/bench.Echo/Bidi";

/// Messages are their bytes (no protobuf).
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

type Echoes = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

struct UnaryEcho;

impl tonic::server::UnaryService<Bytes> for UnaryEcho {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(request.into_inner())) })
    }
}

struct BidiEcho;

impl tonic::server::StreamingService<Bytes> for BidiEcho {
    type Response = Bytes;
    type ResponseStream = Echoes;
    type Future = BoxFuture<Response<Echoes>, Status>;
    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let echoes: Echoes = Box::pin(request.into_inner());
            Ok(Response::new(echoes))
        })
    }
}

/// The echo service, written the way tonic's generated servers are.
#[derive(Clone)]
struct Echo;

impl tower_service::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(match req.uri().path() {
                UNARY => grpc.unary(UnaryEcho, req).await,
                BIDI => grpc.streaming(BidiEcho, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A punched stream as a tonic server connection.
struct PunchedIo(punch::Stream);

impl Connected for PunchedIo {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: None,
            remote_addr: None,
        }
    }
}

impl AsyncRead for PunchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PunchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Opens one punched stream per HTTP/2 connection.
#[derive(Clone)]
struct Connector(punch::session::Opener);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<punch::Stream>;
    type Error = punch::Error;
    type Future = BoxFuture<TokioIo<punch::Stream>, punch::Error>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), punch::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Uri) -> Self::Future {
        let opener = self.0.clone();
        Box::pin(async move { opener.open_stream().await.map(TokioIo::new) })
    }
}

/// Messages per second of a bidirectional stream echoing `BIDI_MESSAGES` messages.
async fn bidi(channel: Channel) -> f64 {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let payload = Bytes::from(vec![0x5Au8; MESSAGE]);
    let outbound = futures::stream::iter((0..BIDI_MESSAGES).map(move |_| payload.clone()));
    let start = Instant::now();
    let response = grpc
        .streaming(
            Request::new(outbound),
            http::uri::PathAndQuery::from_static(BIDI),
            RawCodec,
        )
        .await
        .unwrap();
    let mut inbound = response.into_inner();
    let mut got = 0;
    while let Some(m) = inbound.next().await {
        assert_eq!(m.unwrap().len(), MESSAGE);
        got += 1;
    }
    assert_eq!(got, BIDI_MESSAGES);
    BIDI_MESSAGES as f64 / start.elapsed().as_secs_f64()
}

/// (p50, p99) in microseconds of `UNARY_CALLS` sequential unary calls.
async fn unary(channel: Channel) -> (f64, f64) {
    let mut grpc = tonic::client::Grpc::new(channel);
    let payload = Bytes::from(vec![0x5Au8; MESSAGE]);
    let mut times = Vec::with_capacity(UNARY_CALLS);
    for _ in 0..UNARY_CALLS {
        let start = Instant::now();
        grpc.ready().await.unwrap();
        let reply = grpc
            .unary(
                Request::new(payload.clone()),
                http::uri::PathAndQuery::from_static(UNARY),
                RawCodec,
            )
            .await
            .unwrap();
        assert_eq!(reply.into_inner().len(), MESSAGE);
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[UNARY_CALLS / 2], times[UNARY_CALLS * 99 / 100])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(3, |a| a.parse().expect("ROUNDS"));

    // gRPC over plain TCP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .serve_with_incoming(Echo, TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    // No Nagle on either side, as on punched connections.
    let tcp_endpoint = Endpoint::from_shared(format!("http://{tcp_addr}"))
        .unwrap()
        .tcp_nodelay(true);

    // gRPC over punched streams: a rendezvous and two clients in-process.
    let server = punch_rendezvous::server::Server::spawn(punch_rendezvous::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Keypair::generate().unwrap(),
    ))
    .await
    .unwrap();
    let client = |accept: bool| {
        let mut config = Config::new(
            server.local_addr(),
            server.identity(),
            Keypair::generate().unwrap(),
        );
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.accept_inbound = accept;
        Client::start(config)
    };
    let (a, _) = client(false).await.unwrap();
    let (b, mut b_in) = client(true).await.unwrap();
    a.wait_registered(Duration::from_secs(10)).await.unwrap();
    b.wait_registered(Duration::from_secs(10)).await.unwrap();
    let (sa, sb) = tokio::join!(a.connect(b.id()), b_in.next());
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let incoming = futures::stream::unfold(sb, |mut sb| async move {
        let stream = sb.accept_stream().await?;
        Some((Ok::<_, io::Error>(PunchedIo(stream)), sb))
    });
    tokio::spawn(Server::builder().serve_with_incoming(Echo, incoming));
    let punch_endpoint = Endpoint::from_static("http://punched.peer");
    let connector = Connector(sa.opener());

    let (mut bidi_ratio, mut p50_ratio, mut p99_ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let pc = punch_endpoint
            .connect_with_connector(connector.clone())
            .await
            .unwrap();
        let tc = tcp_endpoint.connect().await.unwrap();
        // Which goes first alternates between rounds.
        let (pb, tb, (p50, p99), (t50, t99)) = if round % 2 == 1 {
            let pb = bidi(pc.clone()).await;
            let tb = bidi(tc.clone()).await;
            (pb, tb, unary(pc).await, unary(tc).await)
        } else {
            let tb = bidi(tc.clone()).await;
            let pb = bidi(pc.clone()).await;
            let t = unary(tc).await;
            (pb, tb, unary(pc).await, t)
        };
        println!(
            "round {round}: bidi 1 KiB: punched {pb:.0} msg/s, TCP {tb:.0} msg/s, ratio {:.3}; \
             unary 1 KiB p50/p99: punched {p50:.0}/{p99:.0} us, TCP {t50:.0}/{t99:.0} us, \
             p50 {:+.0}%",
            pb / tb,
            (p50 / t50 - 1.0) * 100.0
        );
        bidi_ratio.push(pb / tb);
        p50_ratio.push(p50 / t50);
        p99_ratio.push(p99 / t99);
    }
    let (bidi, p50, p99) = (median(bidi_ratio), median(p50_ratio), median(p99_ratio));
    println!(
        "median of {rounds}: bidi punched/TCP {bidi:.3}; unary p50 punched/TCP {p50:.3}, p99 {p99:.3}"
    );
    println!("BENCH\ttonic bidi stream, 1 KiB messages\tpunched stream\ttonic over loopback TCP\t{bidi:.3}");
    println!(
        "BENCH\ttonic unary 1 KiB, p50 (p99 ratio {p99:.3})\tpunched stream\ttonic over loopback TCP\t{p50:.3}"
    );
    std::mem::forget((a, b, sa));
}
