//! Test fixtures shared by the punch and punch-node test suites: a rendezvous that lies and
//! an impostor behind the address it gives out. Not part of the server; hidden from the docs.
//!
//! They live here because both suites already depend on this crate and it needs nothing but
//! punch-proto and tokio: no extra crate, feature or dependency edge. The impostor speaks the
//! punch stream protocol from its published description (preamble, then Noise KK message 1
//! framed with a u16 length) and does not use the punch client.

use std::net::SocketAddr;
use std::time::Duration;

use punch_proto::channel::server_handshake;
use punch_proto::message::{ClientMsg, Offer, Registered, ServerMsg};
use punch_proto::noise::Handshake;
use punch_proto::{Keypair, PeerId, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A lying rendezvous: it registers the first client (under `key`) and answers its first punch
/// request with an offer sending it to `send_to`, as responder of session `session_id`, dialing
/// at once. The task keeps the control channel open until it is dropped or aborted.
#[derive(Debug)]
pub struct LyingRendezvous {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LyingRendezvous {
    pub async fn spawn(
        key: Keypair,
        send_to: SocketAddr,
        session_id: u64,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let Ok((tcp, from)) = listener.accept().await else {
                return;
            };
            let Ok(mut acc) = server_handshake(tcp, &key).await else {
                return;
            };
            let reg = ServerMsg::Registered(Registered {
                observed: from,
                ping_interval: Duration::from_secs(5),
                nat_check_port: None,
            });
            if acc.channel.send(&reg.encode()).await.is_err() {
                return;
            }
            while let Ok(bytes) = acc.channel.recv().await {
                if let Ok(ClientMsg::Connect { request_id, peer }) = ClientMsg::decode(&bytes) {
                    let offer = ServerMsg::Offer(Offer {
                        session_id,
                        request_id,
                        peer,
                        peer_observed: send_to,
                        peer_local: vec![],
                        role: Role::Responder,
                        dial_delay: Duration::ZERO,
                        dial_at_us: None,
                        relay: None,
                        upgrade: None,
                        peer_nat: punch_proto::message::NatMapping::Unknown,
                    });
                    if acc.channel.send(&offer.encode()).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// Where clients register.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LyingRendezvous {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an impostor saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImpostorReport {
    /// Streams on which it got a preamble and sent its handshake.
    pub attempts: usize,
    /// Bytes the victim sent back after the impostor's handshake, over all streams.
    pub answered: usize,
}

/// An impostor: on every stream to `listener` it echoes the preamble and plays the Noise KK
/// initiator of session `session_id` towards `victim` with its own `key` (claiming to be the
/// peer the victim expects), then counts what the victim sends back. Returns once no stream
/// came for `idle`.
pub async fn impostor(
    listener: TcpListener,
    key: Keypair,
    victim: PeerId,
    session_id: u64,
    idle: Duration,
) -> ImpostorReport {
    let mut report = ImpostorReport {
        attempts: 0,
        answered: 0,
    };
    while let Ok(Ok((mut tcp, _))) = tokio::time::timeout(idle, listener.accept()).await {
        let mut pre = [0u8; 12];
        if tcp.read_exact(&mut pre).await.is_err() || tcp.write_all(&pre).await.is_err() {
            continue;
        }
        let Ok(mut hs) = Handshake::peer(Role::Initiator, &key, &victim, session_id) else {
            continue;
        };
        let Ok(m1) = hs.write(&[]) else { continue };
        let Ok(len) = u16::try_from(m1.len()) else {
            continue;
        };
        let mut first = len.to_be_bytes().to_vec();
        first.extend_from_slice(&m1);
        if tcp.write_all(&first).await.is_err() {
            continue;
        }
        let mut rest = Vec::new();
        // A victim that hangs up reads as 0 bytes; one that stalls is cut after `idle`.
        if let Ok(Ok(n)) = tokio::time::timeout(idle, tcp.read_to_end(&mut rest)).await {
            report.answered += n;
        } else {
            report.answered += rest.len();
        }
        report.attempts += 1;
    }
    report
}
