//! An authenticated peer abusing yamux against the real `punch listen` (hostile-peers findings
//! 2 and 6), on loopback with the real `rendezvous`.
//!
//! The attacker is allowed (`--allow`), so it gets a real punched, Noise-authenticated stream;
//! then it speaks raw yamux frames over it and never reads:
//! - a ping flood: before the guard, every ping's answer was queued (1.5 GB in 20 s);
//! - 16 MiB data frames on one stream, beyond the window the listener granted: before, they
//!   sat unchecked in the stream's channel (255 MB against a 16 MiB window);
//! - many streams, each within its window, to a service that stops reading: before, each held
//!   a full window (40 streams, 640 MB).
//!
//! Each test measures the listener's resident memory during the attack, checks that the
//! listener ended the session with the typed reason in its log, and that an honest peer
//! punches and echoes data through the same listener meanwhile.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punch::auth::{authenticate, AuthContext};
use punch::guard::encode_header;
use punch::secure::SecureStream;
use punch::{Client, Session};
use punch_proto::message::Register;
use punch_proto::{Keypair, Role};
use punch_tests::{
    default_register, echo_once, init_tracing, punch_client, rss_kib, ListenProcess,
    RendezvousProcess, TestClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds every wait that must end: loopback punches take milliseconds.
const HANG: Duration = Duration::from_secs(20);
/// The listener's `--session-stall-secs` in these tests (20 s by default).
const STALL_SECS: u64 = 3;
/// How long an attack may run at most: the stall limit plus the check interval, with room.
const ATTACK_MAX: Duration = Duration::from_secs(STALL_SECS + 12);
/// Resident memory the listener may gain during an attack: its unread budget (32 MiB), one
/// 16 MiB frame being decoded, and allocator slack. Before the guard each attack cost hundreds
/// of megabytes.
const RSS_GROWTH_MAX_KIB: u64 = 80 * 1024;

const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const PING: u8 = 2;
const SYN: u16 = 1;

/// A service that echoes connections whose first byte is `E` and, for any other, reads
/// nothing more and holds the connection: the honest peer gets echoes, the attacker's streams
/// meet a reader that stopped.
async fn service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if tcp.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first[0] == b'E' {
                    if tcp.write_all(&first).await.is_err() {
                        return;
                    }
                    let (mut rd, mut wr) = tcp.split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                } else {
                    // Hold it unread until the peer goes away.
                    tokio::time::sleep(HANG * 3).await;
                }
            });
        }
    });
    addr
}

/// The attacker's side of a real punch to the listener: registered with the rendezvous from
/// 127.0.0.2, asks for the listener, dials it and authenticates with the offer's role. Returns
/// the raw encrypted stream (yamux is ours to speak) and the attacker's yamux role.
async fn punched_raw(
    rv: &RendezvousProcess,
    keypair: &Keypair,
    listener: &ListenProcess,
) -> (SecureStream<TcpStream>, Role) {
    let register = Register {
        accept_inbound: false,
        ..default_register()
    };
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let control = socket.connect(rv.addr()).await.unwrap();
    let mut raw = TestClient::handshake(control, &rv.identity(), keypair.clone(), &register)
        .await
        .unwrap();
    let offer = raw.request_offer(listener.id).await.unwrap();
    let expect = AuthContext {
        role: offer.role,
        keypair: keypair.clone(),
        peer: listener.id,
        session_id: offer.session_id,
    };
    // The listener starts its attempt at the dial moment; until then our preamble would not
    // be routed, so dial a little after it and retry within its punch window.
    tokio::time::sleep(offer.dial_delay + Duration::from_millis(50)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stream = TcpStream::connect(offer.peer_observed).await.unwrap();
        match authenticate(stream, false, &expect).await {
            Ok(mut auth) => {
                match offer.role {
                    Role::Initiator => auth.confirm(false).await.unwrap(),
                    Role::Responder => {
                        auth.await_confirm().await.unwrap();
                    }
                }
                drop(raw);
                return (auth.into_secure(), offer.role);
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("attacker: authentication failed ({e}), retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the attacker could not authenticate: {e}"),
        }
    }
}

/// Runs `attack` (a writer that never reads) until it fails (the listener closed the
/// connection) or [`ATTACK_MAX`]; samples the listener's memory meanwhile. Returns the most it
/// grew (KiB) and how long the attack ran before the listener cut it off (`None`: never).
async fn run_attack(
    listener: &ListenProcess,
    attack: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) -> (u64, Option<Duration>) {
    let base = rss_kib(listener.pid());
    let start = Instant::now();
    let task = tokio::spawn(attack);
    let mut most = 0;
    let cut = loop {
        most = most.max(rss_kib(listener.pid()).saturating_sub(base));
        if task.is_finished() {
            break Some(start.elapsed());
        }
        if start.elapsed() > ATTACK_MAX {
            task.abort();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (most, cut)
}

fn stream_id(role: Role, n: u32) -> u32 {
    // yamux: the client (Noise initiator) opens odd ids, the server even ones.
    match role {
        Role::Initiator => 2 * n + 1,
        Role::Responder => 2 * n + 2,
    }
}

/// What each test shares: the rendezvous, a listener allowing the attacker and an honest peer,
/// and the honest peer's session.
struct Scene {
    rv: RendezvousProcess,
    listener: ListenProcess,
    attacker: Keypair,
    honest: Session,
    _honest_client: Client,
}

async fn scene(extra: &[&str]) -> Scene {
    init_tracing();
    let rv = RendezvousProcess::spawn(&[]);
    let attacker = Keypair::generate().unwrap();
    let honest_key = Keypair::generate().unwrap();
    let stall = STALL_SECS.to_string();
    let mut args = vec!["--session-stall-secs", &stall];
    args.extend_from_slice(extra);
    let listener = ListenProcess::spawn(
        &rv,
        service().await,
        &[attacker.public(), honest_key.public()],
        &args,
    );
    let honest_client = punch_client(&rv, honest_key).await;
    let honest = honest_client.connect(listener.id).await.unwrap();
    echo_once(&honest, b"Ebefore the attack\n").await;
    Scene {
        rv,
        listener,
        attacker,
        honest,
        _honest_client: honest_client,
    }
}

/// The attack is over: the listener says why it ended the session, and the honest session
/// still echoes.
async fn after(scene: &Scene, growth_kib: u64, cut: Option<Duration>, reason: &str) {
    let log = scene.listener.log_text();
    eprintln!("listener grew {growth_kib} KiB; cut off after {cut:?}");
    assert!(
        growth_kib < RSS_GROWTH_MAX_KIB,
        "the listener grew {growth_kib} KiB during the attack; log:\n{log}"
    );
    assert!(
        cut.is_some(),
        "the listener never closed the attacker's session; log:\n{log}"
    );
    assert!(
        log.contains(reason),
        "no `{reason}` in the listener's log:\n{log}"
    );
    echo_once(&scene.honest, b"Eduring and after the attack\n").await;
    let _ = &scene.rv;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_peer_that_does_not_read_is_bounded_and_cut_off() {
    let scene = scene(&[]).await;
    let (mut raw, _role) = punched_raw(&scene.rv, &scene.attacker, &scene.listener).await;
    // 1,024 pings per write; ids that count up, as yamux's own would.
    let attack = async move {
        let mut id = 0u32;
        let mut chunk = Vec::with_capacity(1024 * 12);
        loop {
            chunk.clear();
            for _ in 0..1024 {
                id = id.wrapping_add(1);
                chunk.extend_from_slice(&encode_header(PING, SYN, 0, id));
            }
            raw.write_all(&chunk).await?;
        }
    };
    let (growth, cut) = run_attack(&scene.listener, attack).await;
    after(&scene, growth, cut, "peer stopped reading").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_beyond_the_granted_window_ends_the_session_before_it_is_buffered() {
    let scene = scene(&[]).await;
    let (mut raw, role) = punched_raw(&scene.rv, &scene.attacker, &scene.listener).await;
    let id = stream_id(role, 0);
    let attack = async move {
        raw.write_all(&encode_header(WINDOW_UPDATE, SYN, id, 0))
            .await?;
        // Let the listener accept the stream and grant its 16 MiB window.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = vec![0xAB; 16 * 1024 * 1024];
        for _ in 0..20 {
            raw.write_all(&encode_header(DATA, 0, id, body.len() as u32))
                .await?;
            raw.write_all(&body).await?;
        }
        // Sent all 320 MiB without being cut off: wait (for the bound).
        std::future::pending::<()>().await;
        Ok(())
    };
    let (growth, cut) = run_attack(&scene.listener, attack).await;
    after(&scene, growth, cut, "bytes of window left").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_to_a_service_that_stops_reading_hold_one_budget_not_a_window_each() {
    let scene = scene(&[]).await;
    let (mut raw, role) = punched_raw(&scene.rv, &scene.attacker, &scene.listener).await;
    const STREAMS: u32 = 40;
    let attack = async move {
        for n in 0..STREAMS {
            raw.write_all(&encode_header(WINDOW_UPDATE, SYN, stream_id(role, n), 0))
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Round robin, 2 MiB frames, each stream within its 16 MiB window: 640 MiB in all.
        let body = vec![0xAB; 2 * 1024 * 1024];
        for _ in 0..8 {
            for n in 0..STREAMS {
                raw.write_all(&encode_header(
                    DATA,
                    0,
                    stream_id(role, n),
                    body.len() as u32,
                ))
                .await?;
                raw.write_all(&body).await?;
            }
        }
        std::future::pending::<()>().await;
        Ok(())
    };
    let (growth, cut) = run_attack(&scene.listener, attack).await;
    after(&scene, growth, cut, "local reader stalled").await;
}
