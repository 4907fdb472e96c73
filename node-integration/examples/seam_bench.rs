//! Measures gRPC over punched sessions on loopback, against the raw punched stream as the
//! baseline in the same run: kaspa-p2p-lib's `P2p` service (one bidirectional stream of
//! `KaspadMessage`s) through the tonic seam with tuned and with hyper's default HTTP/2 sizes,
//! and through the loopback bridge (what an unmodified Kaspa node uses).
//!
//! `cargo run --release -p punch-node --example seam_bench [MiB]`

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kaspa_p2p_lib::pb::kaspad_message::Payload;
use kaspa_p2p_lib::pb::p2p_client::P2pClient;
use kaspa_p2p_lib::pb::p2p_server::{P2p, P2pServer};
use kaspa_p2p_lib::pb::{KaspadMessage, RejectMessage};
use punch::{Client, Config, Session};
use punch_node::bridge::{Bridge, BridgeConfig};
use punch_node::seam::{Acceptor, Connector, H2Sizes, RemoteAddr};
use punch_proto::Keypair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};

const MESSAGE: usize = 1 << 20;
const MAX_MESSAGE: usize = 64 << 20;

/// Counts what arrives; answers once, at the end, with the byte count; echoes pings (tiny).
#[derive(Clone)]
struct Sink;

#[tonic::async_trait]
impl P2p for Sink {
    type MessageStreamStream =
        Pin<Box<dyn Stream<Item = Result<KaspadMessage, Status>> + Send + 'static>>;

    async fn message_stream(
        &self,
        request: Request<Streaming<KaspadMessage>>,
    ) -> Result<Response<Self::MessageStreamStream>, Status> {
        let inbound = request.into_inner();
        let out = inbound.filter_map(|m| async move {
            match m {
                Ok(KaspadMessage {
                    payload: Some(Payload::Reject(r)),
                    ..
                }) if r.reason.len() < 64 => Some(Ok(msg(r.reason.len()))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

fn msg(len: usize) -> KaspadMessage {
    KaspadMessage {
        payload: Some(Payload::Reject(RejectMessage {
            reason: "k".repeat(len),
        })),
        request_id: 0,
        response_id: 0,
    }
}

async fn pair() -> (Session, Session, Vec<Client>) {
    let server = Box::leak(Box::new(
        punch_rendezvous::Server::spawn(punch_rendezvous::Config::new(
            "127.0.0.1:0".parse().expect("addr"),
            Keypair::generate().expect("key"),
        ))
        .await
        .expect("rendezvous"),
    ));
    let mut clients = Vec::new();
    let mut incomings = Vec::new();
    for accept in [false, true] {
        let mut c = Config::new(
            server.local_addr(),
            server.identity(),
            Keypair::generate().expect("key"),
        );
        c.bind = "127.0.0.1:0".parse().expect("addr");
        c.accept_inbound = accept;
        let (client, inc) = Client::start(c).await.expect("client");
        client
            .wait_registered(Duration::from_secs(10))
            .await
            .expect("registered");
        clients.push(client);
        incomings.push(inc);
    }
    let (a, b) = tokio::join!(clients[0].connect(clients[1].id()), incomings[1].next());
    (a.expect("punch"), b.expect("inbound"), clients)
}

/// One-way bulk through gRPC, then 200 small round trips; returns (MB/s, median RTT).
async fn grpc(mut client: P2pClient<tonic::transport::Channel>, total: usize) -> (f64, Duration) {
    let (tx, rx) = tokio::sync::mpsc::channel::<KaspadMessage>(8);
    let mut replies = client
        .message_stream(tokio_stream(rx))
        .await
        .expect("stream")
        .into_inner();
    let start = Instant::now();
    for _ in 0..total / MESSAGE {
        tx.send(msg(MESSAGE)).await.expect("send");
    }
    tx.send(msg(1)).await.expect("send");
    replies.next().await.expect("reply").expect("ok");
    let rate = total as f64 / start.elapsed().as_secs_f64() / 1e6;
    let mut rtts = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        tx.send(msg(8)).await.expect("send");
        replies.next().await.expect("reply").expect("ok");
        rtts.push(t.elapsed());
    }
    rtts.sort();
    (rate, rtts[rtts.len() / 2])
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<KaspadMessage>,
) -> impl Stream<Item = KaspadMessage> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn seam(sizes: H2Sizes, total: usize) -> (f64, Duration) {
    let (a, b, _clients) = pair().await;
    let (mut acceptor, incoming) = Acceptor::new(RemoteAddr::Alias);
    acceptor.add(b).expect("an alias for the peer");
    let svc = P2pServer::new(Sink).max_decoding_message_size(MAX_MESSAGE);
    let server = tokio::spawn(
        sizes
            .server()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    let channel = sizes
        .endpoint()
        .connect_with_connector(Connector::new(a.opener()))
        .await
        .expect("channel");
    let res = grpc(
        P2pClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
        total,
    )
    .await;
    server.abort();
    res
}

async fn bridged(total: usize) -> (f64, Duration) {
    let (a, b, _clients) = pair().await;
    // The "node": a plain tonic server on 127.0.0.1 with default sizes, like kaspa-p2p-lib.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let node: SocketAddr = listener.local_addr().expect("addr");
    let incoming = futures::stream::unfold(listener, |l| async move {
        // Like tonic's own TcpIncoming (and so kaspa-p2p-lib's server): no Nagle delay.
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    });
    let svc = P2pServer::new(Sink).max_decoding_message_size(MAX_MESSAGE);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    let bridge = Bridge::new(BridgeConfig::new(node)).expect("bridge");
    let pa = bridge.attach(a).await.expect("attach a");
    let _pb = bridge.attach(b).await.expect("attach b");
    let dial = pa.dial_addr().expect("dialer");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{dial}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let res = grpc(
        P2pClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
        total,
    )
    .await;
    server.abort();
    res
}

async fn raw(total: usize) -> f64 {
    let (a, mut b, _clients) = pair().await;
    let mut w = a.open_stream().await.expect("open");
    let reader = tokio::spawn(async move {
        let mut r = b.accept_stream().await.expect("accept");
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0;
        while n < total {
            n += r.read(&mut buf).await.expect("read");
        }
        r.write_all(b"k").await.expect("ack");
        (r, b)
    });
    let chunk = vec![7u8; MESSAGE];
    let start = Instant::now();
    for _ in 0..total / MESSAGE {
        w.write_all(&chunk).await.expect("write");
    }
    let mut ack = [0u8; 1];
    w.read_exact(&mut ack).await.expect("ack");
    let rate = total as f64 / start.elapsed().as_secs_f64() / 1e6;
    drop(reader.await);
    rate
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let total = mib << 20;
    println!("{mib} MiB one way in 1 MiB KaspadMessages, then 200 8-byte round trips; loopback");
    let base = raw(total).await;
    println!(
        "{:<44} {:>8.0} MB/s  (baseline)",
        "raw punched yamux stream", base
    );
    for (name, sizes) in [
        (
            "seam, tuned (1 MiB frames, 8/16 MiB windows)",
            H2Sizes::TUNED,
        ),
        (
            "seam, hyper defaults (16 KiB frames)",
            H2Sizes::HYPER_DEFAULT,
        ),
    ] {
        let (rate, rtt) = seam(sizes, total).await;
        println!(
            "{name:<44} {rate:>8.0} MB/s  ({:.2} of raw)  median RTT {} us",
            rate / base,
            rtt.as_micros()
        );
    }
    let (rate, rtt) = bridged(total).await;
    println!(
        "{:<44} {rate:>8.0} MB/s  ({:.2} of raw)  median RTT {} us",
        "bridge (TCP loopback both ends), defaults",
        rate / base,
        rtt.as_micros()
    );
}
