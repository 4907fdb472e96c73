//! Dial amplification through claimed local addresses, against the real `rendezvous` on
//! loopback (127/8 is all local on Linux, so each peer binds its own 127.0.0.x and the server
//! sees distinct public IPs).
//!
//! The attacker is a raw protocol client claiming ten private addresses (IPv6 ULA, which the
//! victim, bound to IPv4, cannot even send a packet to) and asks to punch to the victim, a real
//! `punch::Client`. What the victim is told to dial is the real server's decision, read from
//! the victim's `Event::Offer` and `Event::Dial`:
//! - from another public IP (127.0.0.2 vs the victim's 127.0.0.3): no local address at all;
//! - from the victim's own public IP: at most `MAX_LOCAL_CANDIDATES` of the ten;
//! - meanwhile an honest peer punches to the victim and gets a session.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use punch::event::Event;
use punch::{Client, Config, Incoming};
use punch_proto::message::{ClientMsg, Register, ServerMsg, PROTOCOL_VERSION};
use punch_proto::{Keypair, PeerId};
use punch_rendezvous::registry::MAX_LOCAL_CANDIDATES;
use punch_tests::{init_tracing, RendezvousProcess, TestClient};
use tokio::net::TcpSocket;
use tokio::sync::broadcast;

/// Bounds every wait that must end: loopback punches take milliseconds, and a punch that
/// cannot succeed ends after the victim's 2 s window.
const HANG: Duration = Duration::from_secs(20);
/// Private addresses the attacker claims: more than twice the cap.
const CLAIMED: u16 = 10;

async fn client(
    rv: &RendezvousProcess,
    bind: &str,
) -> (Client, Incoming, broadcast::Receiver<Event>) {
    let mut config = Config::new(rv.addr(), rv.identity(), Keypair::generate().unwrap());
    config.bind = bind.parse().unwrap();
    config.punch_window = Duration::from_secs(2);
    let (client, incoming) = Client::start(config).await.unwrap();
    let events = client.events();
    client.wait_registered(HANG).await.unwrap();
    (client, incoming, events)
}

/// A raw client from `ip` claiming [`CLAIMED`] private local addresses.
async fn attacker(rv: &RendezvousProcess, ip: &str) -> TestClient {
    let register = Register {
        version: PROTOCOL_VERSION,
        local_addrs: (1..=CLAIMED)
            .map(|i| SocketAddr::new(format!("fd00:dead::{i}").parse().unwrap(), 22))
            .collect(),
        accept_inbound: false,
        allow: vec![],
        network: String::new(),
        probe: false,
    };
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(rv.addr()).await.unwrap();
    let raw = TestClient::handshake(
        stream,
        &rv.identity(),
        Keypair::generate().unwrap(),
        &register,
    )
    .await
    .unwrap();
    assert_eq!(raw.registered().observed.ip().to_string(), ip);
    raw
}

/// What the victim did for the attacker's punch: the local addresses its offer carried and
/// the distinct addresses it dialed, once that punch has ended.
async fn victim_side(events: &mut broadcast::Receiver<Event>, attacker: PeerId) -> (usize, usize) {
    let mut session = None;
    let mut locals = None;
    let mut dialed = HashSet::new();
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the attacker's punch ended in time")
            .unwrap();
        match event {
            Event::Offer {
                peer,
                session_id,
                locals: n,
                inbound: true,
                ..
            } if peer == attacker => {
                session = Some(session_id);
                locals = Some(n);
            }
            Event::Dial {
                session_id, addr, ..
            } if Some(session_id) == session => {
                dialed.insert(addr);
            }
            Event::Failed { session_id, .. } if Some(session_id) == session => {
                return (locals.unwrap(), dialed.len());
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_local_addresses_reach_only_a_peer_behind_the_same_ip_and_are_capped() {
    init_tracing();
    let rv = RendezvousProcess::spawn(&[]);
    let (victim, mut incoming, mut events) = client(&rv, "127.0.0.3:0").await;

    // (a) Another public IP: the offers carry no local address, either way.
    let mut far = attacker(&rv, "127.0.0.2").await;
    far.send(&ClientMsg::Connect {
        request_id: 1,
        peer: victim.id(),
    })
    .await
    .unwrap();
    let ServerMsg::Offer(offer) = far.recv_skip_pings(HANG).await.unwrap() else {
        panic!("expected the attacker's offer");
    };
    assert!(offer.peer_local.is_empty(), "{:?}", offer.peer_local);
    let (locals, dialed) = victim_side(&mut events, far.id()).await;
    assert_eq!(
        locals, 0,
        "claimed local addresses passed across public IPs"
    );
    assert_eq!(
        dialed, 1,
        "the victim dialed only the attacker's observed address"
    );

    // (c) An honest peer punches to the victim meanwhile (the attacker's offer was the
    // victim's last one; this one is the honest peer's).
    let (honest, _, _) = client(&rv, "127.0.0.1:0").await;
    let session = tokio::time::timeout(HANG, honest.connect(victim.id()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.info().peer, victim.id());
    let accepted = tokio::time::timeout(HANG, incoming.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.info().peer, honest.id());

    // (b) The victim's own public IP: four of the ten claims reach it.
    let mut near = attacker(&rv, "127.0.0.3").await;
    near.send(&ClientMsg::Connect {
        request_id: 1,
        peer: victim.id(),
    })
    .await
    .unwrap();
    let ServerMsg::Offer(offer) = near.recv_skip_pings(HANG).await.unwrap() else {
        panic!("expected the attacker's offer");
    };
    assert_eq!(offer.peer_local.len(), 1, "the victim's own local address");
    let (locals, dialed) = victim_side(&mut events, near.id()).await;
    assert_eq!(locals, MAX_LOCAL_CANDIDATES);
    assert!(
        dialed <= 1 + MAX_LOCAL_CANDIDATES,
        "{dialed} addresses dialed"
    );

    // The honest session outlived both attacks.
    assert!(!session.is_closed() && !accepted.is_closed());
    honest.shutdown().await;
    victim.shutdown().await;
}
