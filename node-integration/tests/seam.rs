//! The tonic seam: Kaspa's own gRPC service definition (kaspa-p2p-lib's generated `P2p`
//! server and client) served over punched streams with `serve_with_incoming` and dialed with
//! `connect_with_connector`, with the tuned HTTP/2 sizes and with hyper's defaults.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kaspa_p2p_lib::pb::kaspad_message::Payload;
use kaspa_p2p_lib::pb::p2p_client::P2pClient;
use kaspa_p2p_lib::pb::p2p_server::{P2p, P2pServer};
use kaspa_p2p_lib::pb::{KaspadMessage, RejectMessage};
use punch::Session;
use punch_node::seam::{Acceptor, Connector, H2Sizes, RemoteAddr};
use tonic::{Request, Response, Status, Streaming};

const MAX_MESSAGE: usize = 64 << 20;

/// Echoes every message back, and records the remote address tonic reports.
#[derive(Clone, Default)]
struct Echo {
    remotes: Arc<Mutex<Vec<Option<SocketAddr>>>>,
}

#[tonic::async_trait]
impl P2p for Echo {
    type MessageStreamStream =
        Pin<Box<dyn Stream<Item = Result<KaspadMessage, Status>> + Send + 'static>>;

    async fn message_stream(
        &self,
        request: Request<Streaming<KaspadMessage>>,
    ) -> Result<Response<Self::MessageStreamStream>, Status> {
        let remote = request.remote_addr();
        self.remotes.lock().unwrap().push(remote);
        if remote.is_none() {
            // What kaspa-p2p-lib's handler does.
            return Err(Status::invalid_argument("no remote address"));
        }
        Ok(Response::new(Box::pin(request.into_inner())))
    }
}

fn message(len: usize) -> KaspadMessage {
    KaspadMessage {
        payload: Some(Payload::Reject(RejectMessage {
            reason: "k".repeat(len),
        })),
        request_id: 0,
        response_id: 0,
    }
}

async fn sessions() -> (Session, Session, punch::Client, punch::Client) {
    let server = common::rendezvous().await;
    let a = common::Peer::mainnet(&server, false).await;
    let mut b = common::Peer::mainnet(&server, true).await;
    let (sa, sb) = tokio::join!(a.client.connect(b.client.id()), async {
        b.incoming.next().await.unwrap()
    });
    (sa.unwrap(), sb, a.client, b.client)
}

async fn echo_round_trip(sizes: H2Sizes, lens: &[usize]) {
    let (client_side, server_side, a, _b) = sessions().await;
    let echo = Echo::default();
    let (mut acceptor, incoming) = Acceptor::new(RemoteAddr::Alias);
    acceptor.add(server_side).unwrap();
    let svc = P2pServer::new(echo.clone()).max_decoding_message_size(MAX_MESSAGE);
    let server = tokio::spawn(
        sizes
            .server()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );

    let channel = sizes
        .endpoint()
        .connect_with_connector(Connector::new(client_side.opener()))
        .await
        .unwrap();
    let mut client = P2pClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let outgoing: Vec<KaspadMessage> = lens.iter().map(|&n| message(n)).collect();
    let mut replies = client
        .message_stream(futures::stream::iter(outgoing))
        .await
        .unwrap()
        .into_inner();
    for &n in lens {
        let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match reply.payload {
            Some(Payload::Reject(r)) => assert_eq!(r.reason.len(), n),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    let remotes = echo.remotes.lock().unwrap().clone();
    assert_eq!(
        remotes,
        vec![Some(SocketAddr::from((
            acceptor.alias_of(&a.id()).unwrap(),
            0
        )))],
        "the service sees the peer's alias as remote address"
    );
    server.abort();
    drop(acceptor);
}

#[tokio::test]
async fn seam_tuned_sizes_carry_small_and_32_mib_messages() {
    echo_round_trip(H2Sizes::TUNED, &[10, 1 << 20, 32 << 20, 100]).await;
}

#[tokio::test]
async fn seam_hyper_default_sizes_carry_32_mib_messages_too() {
    echo_round_trip(H2Sizes::HYPER_DEFAULT, &[10, 32 << 20, 100]).await;
}
