//! What the byte-level harnesses share: fixed keys, completed handshakes, framing and a
//! runtime. Uses only punch-proto and tokio, so the workspace tests can include it by path.

use std::future::Future;
use std::sync::OnceLock;

use punch_proto::noise::{Handshake, Transport};
use punch_proto::{Keypair, Role};

/// The identities every harness uses. Fixed rather than generated: fuzzing needs no fresh
/// keys, and deriving three public keys per input would cost more than most inputs.
#[derive(Debug)]
pub struct Keys {
    /// The rendezvous server, or the responder of a punched stream.
    pub server: Keypair,
    /// The client, or the initiator of a punched stream.
    pub client: Keypair,
    /// A third identity nobody expects.
    pub stranger: Keypair,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = |b: u8| Keypair::from_secret(&[b; 32]).expect("a 32-byte secret is a key");
        Keys {
            server: key(1),
            client: key(2),
            stranger: key(3),
        }
    })
}

/// One length-prefixed frame (the wire format of `punch_proto::frame`).
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("harness frames fit in 16 bits");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A completed control (XK) handshake: (client, server) transports.
pub fn control_pair(k: &Keys) -> (Transport, Transport) {
    let mut c = Handshake::control_client(&k.client, &k.server.public()).expect("client builds");
    let mut s = Handshake::control_server(&k.server).expect("server builds");
    s.read(&c.write(&[]).expect("message 1"))
        .expect("genuine message 1");
    c.read(&s.write(&[]).expect("message 2"))
        .expect("genuine message 2");
    s.read(&c.write(&[]).expect("message 3"))
        .expect("genuine message 3");
    (
        c.into_transport().expect("client finished"),
        s.into_transport().expect("server finished"),
    )
}

/// A completed punched-stream (KK) handshake: (initiator, responder) transports.
pub fn peer_pair(k: &Keys, session_id: u64) -> (Transport, Transport) {
    let mut i = Handshake::peer(Role::Initiator, &k.client, &k.server.public(), session_id)
        .expect("initiator builds");
    let mut r = Handshake::peer(Role::Responder, &k.server, &k.client.public(), session_id)
        .expect("responder builds");
    r.read(&i.write(&[]).expect("message 1"))
        .expect("genuine message 1");
    i.read(&r.write(&[]).expect("message 2"))
        .expect("genuine message 2");
    (
        i.into_transport().expect("initiator finished"),
        r.into_transport().expect("responder finished"),
    )
}

/// Runs `fut` on this thread's current-thread runtime (built once per thread: one per input
/// would cost more than the input).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime builds");
    }
    RUNTIME.with(|rt| rt.block_on(fut))
}
