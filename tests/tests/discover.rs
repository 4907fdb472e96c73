//! Issue 14, part 1: network-scoped registration, the peer directory (`Discover`) and the
//! client's deny list, against the real `rendezvous` binary (and the real `punch` CLI for
//! `punch discover`).
//!
//! - Peers in three networks (and none): `Discover` returns only accepting peers of the asker's
//!   own network, never the asker, never more than `max` or `--discover-max`, and different
//!   samples over repeated calls (random, not the first N); a peer that does not accept
//!   punches is never listed; an asker without a network gets `BadRequest`.
//! - A punch request across networks is refused `WrongNetwork`, the target hears nothing,
//!   and the library's typed error names the peer and our network.
//! - A `Discover` flood from one identity is cut at the per-identity request budget (typed
//!   `RateLimited` with a retry time, counted in the refusal summary) while an honest peer
//!   still discovers.
//! - The client's deny list: inbound offers from a denied identity or a denied observed IP are
//!   refused with no dial and no session; `connect` to a denied peer fails at once; an
//!   allowed punch's `SessionInfo::observed` is each peer's address as the rendezvous saw it.
#![allow(clippy::unwrap_used)]

// Shared with the Sybil tests; this one does not use every re-export.
#[allow(unused_imports)]
mod sybil_common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use punch::{Allow, Client, Config, Error, Event};
use punch_proto::message::{ClientMsg, ErrorCode, Register, ServerMsg};
use punch_proto::{Keypair, PeerId};
use punch_tests::{
    bin_path, default_register, unique_temp_dir, RendezvousProcess, TestClient, RECV_TIMEOUT,
};
use sybil_common::*;

const MAINNET: &str = "kaspa-mainnet";
const TESTNET: &str = "kaspa-testnet-10";
const SIMNET: &str = "kaspa-simnet";

fn register(network: &str, accept_inbound: bool) -> Register {
    Register {
        accept_inbound,
        network: network.into(),
        ..default_register()
    }
}

/// A raw client registered from `ip` in `network`.
async fn raw(rv: &RendezvousProcess, ip: &str, network: &str, accept: bool) -> TestClient {
    raw_from(rv, ip, &register(network, accept)).await.unwrap()
}

/// Sends a `Discover` and returns the answer (pings answered meanwhile).
async fn ask(c: &mut TestClient, request_id: u64, max: u32) -> ServerMsg {
    c.send(&ClientMsg::Discover { request_id, max })
        .await
        .unwrap();
    c.recv_skip_pings(RECV_TIMEOUT).await.unwrap()
}

/// The identities of a `Discovered` answer to `request_id`; panics on anything else.
fn discovered(msg: ServerMsg, request_id: u64) -> Vec<PeerId> {
    match msg {
        ServerMsg::Discovered {
            request_id: id,
            peers,
        } if id == request_id => peers,
        other => panic!("expected Discovered {request_id}, got {other:?}"),
    }
}

/// A registered library client bound to `ip`; accepts punches from anyone when `accept`.
async fn client(
    rv: &RendezvousProcess,
    ip: &str,
    network: Option<&str>,
    accept: bool,
    deny: punch::Denylist,
) -> (Client, punch::Incoming) {
    let mut config = Config::new(rv.addr(), rv.identity(), Keypair::generate().unwrap());
    config.bind = format!("{ip}:0").parse().unwrap();
    config.accept_inbound = accept;
    config.allow = Allow::Any;
    config.network = network.map(str::to_owned);
    config.deny = deny;
    config.punch_window = Duration::from_secs(3);
    let (client, incoming) = Client::start(config).await.unwrap();
    client.wait_registered(HANG).await.unwrap();
    (client, incoming)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_lists_only_accepting_peers_of_the_askers_network() {
    let rv = RendezvousProcess::spawn(&["--discover-max", "3"]);
    // Mainnet: the asker and five other accepting peers, two that do not accept.
    let mut asker = raw(&rv, "127.0.0.2", MAINNET, true).await;
    let mut mainnet = Vec::new();
    for _ in 0..5 {
        mainnet.push(raw(&rv, "127.0.0.3", MAINNET, true).await);
    }
    let mut closed = raw(&rv, "127.0.0.4", MAINNET, false).await;
    let _closed2 = raw(&rv, "127.0.0.4", MAINNET, false).await;
    let mut testnet = Vec::new();
    for _ in 0..3 {
        testnet.push(raw(&rv, "127.0.0.5", TESTNET, true).await);
    }
    let simnet = [
        raw(&rv, "127.0.0.6", SIMNET, true).await,
        raw(&rv, "127.0.0.6", SIMNET, true).await,
    ];
    let mut nowhere = raw(&rv, "127.0.0.7", "", true).await;
    let mainnet_ids: HashSet<PeerId> = mainnet.iter().map(TestClient::id).collect();

    // Repeated samples: three (--discover-max) of the five, different ones over the calls.
    let mut samples = HashSet::new();
    let mut seen = HashSet::new();
    for i in 1..=15 {
        let peers = discovered(ask(&mut asker, i, 10).await, i);
        assert_eq!(peers.len(), 3, "capped at --discover-max: {peers:?}");
        let set: HashSet<PeerId> = peers.iter().copied().collect();
        assert_eq!(set.len(), 3, "no identity twice: {peers:?}");
        assert!(set.is_subset(&mainnet_ids), "only accepting mainnet peers");
        assert!(!set.contains(&asker.id()), "never the asker");
        seen.extend(set.iter().copied());
        let mut sorted: Vec<PeerId> = peers;
        sorted.sort_unstable_by_key(|p| *p.as_bytes());
        samples.insert(sorted);
    }
    eprintln!(
        "15 samples of 3 of 5: {} distinct, {} peers seen",
        samples.len(),
        seen.len()
    );
    assert!(samples.len() > 1, "samples are random, not the first N");
    assert_eq!(seen, mainnet_ids, "every accepting peer turns up");
    // The asker's max below the server's.
    assert_eq!(discovered(ask(&mut asker, 20, 2).await, 20).len(), 2);
    assert!(discovered(ask(&mut asker, 21, 0).await, 21).is_empty());
    // A peer that does not accept can discover, and is never listed itself.
    let from_closed: HashSet<PeerId> = discovered(ask(&mut closed, 22, 3).await, 22)
        .into_iter()
        .collect();
    let mut accepting = mainnet_ids.clone();
    accepting.insert(asker.id());
    assert!(from_closed.len() == 3 && from_closed.is_subset(&accepting));
    // Testnet sees its own two others, never mainnet's.
    let t = discovered(ask(&mut testnet[0], 23, 16).await, 23);
    let want: HashSet<PeerId> = testnet[1..].iter().map(TestClient::id).collect();
    assert_eq!(t.into_iter().collect::<HashSet<_>>(), want);
    // No network: refused.
    match ask(&mut nowhere, 24, 16).await {
        ServerMsg::Error(e) => assert_eq!((e.code, e.request_id), (ErrorCode::BadRequest, 24)),
        other => panic!("expected BadRequest, got {other:?}"),
    }

    // The CLI: `punch discover` registers without accepting and prints one id per line.
    let dir = unique_temp_dir("punch-discover");
    let (addr, key) = (rv.addr().to_string(), rv.identity().to_string());
    let out = Command::new(bin_path("punch"))
        .args([
            "discover",
            "--rendezvous",
            addr.as_str(),
            "--rendezvous-key",
            key.as_str(),
        ])
        .arg("--key-file")
        .arg(dir.join("cli.key"))
        .args(["--network", SIMNET, "--max", "5"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{out:?}");
    let printed: HashSet<PeerId> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let want: HashSet<PeerId> = simnet.iter().map(TestClient::id).collect();
    assert_eq!(printed, want);
    // Without --network it refuses to start.
    let out = Command::new(bin_path("punch"))
        .args([
            "discover",
            "--rendezvous",
            addr.as_str(),
            "--rendezvous-key",
            key.as_str(),
        ])
        .args(["--key-file", "/nonexistent/never-created.key"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--network"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_across_networks_are_refused_and_the_target_never_hears() {
    let rv = RendezvousProcess::spawn(&[]);
    let mut main = raw(&rv, "127.0.0.2", MAINNET, true).await;
    let mut test = raw(&rv, "127.0.0.3", TESTNET, true).await;
    main.send(&ClientMsg::Connect {
        request_id: 7,
        peer: test.id(),
    })
    .await
    .unwrap();
    match main.recv_skip_pings(RECV_TIMEOUT).await.unwrap() {
        ServerMsg::Error(e) => {
            assert_eq!(
                (e.code, e.request_id),
                (ErrorCode::WrongNetwork, 7),
                "{e:?}"
            )
        }
        other => panic!("expected WrongNetwork, got {other:?}"),
    }
    // The target heard nothing of it.
    test.stay_alive(Duration::from_secs(1)).await.unwrap();
    // Either way round, and by the library, with its typed error.
    let (lib, _incoming) = client(
        &rv,
        "127.0.0.4",
        Some(MAINNET),
        false,
        punch::Denylist::new(),
    )
    .await;
    match lib.connect(test.id()).await {
        Err(Error::WrongNetwork { peer, network }) => {
            assert_eq!((peer, network.as_str()), (test.id(), MAINNET))
        }
        other => panic!("expected WrongNetwork, got {other:?}"),
    }
    test.stay_alive(Duration::from_millis(500)).await.unwrap();
    // A peer in no network may punch to (and be punched by) anyone, as before networks.
    let mut none = raw(&rv, "127.0.0.5", "", true).await;
    none.punch_offers_with(&mut test).await.unwrap();
    main.punch_offers_with(&mut none).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discover_flood_is_rate_limited_while_an_honest_peer_discovers() {
    let rv = RendezvousProcess::spawn(&[
        "--punch-requests-per-minute",
        "5",
        "--refusal-log-interval-secs",
        "1",
    ]);
    let mut listed = HashSet::new();
    let mut keep = Vec::new();
    for _ in 0..3 {
        let c = raw(&rv, "127.0.0.2", MAINNET, true).await;
        listed.insert(c.id());
        keep.push(c);
    }
    let none = punch::Denylist::new();
    let (flooder, _in1) = client(&rv, "127.0.0.3", Some(MAINNET), false, none.clone()).await;
    let (mut ok, mut limited) = (0, 0);
    let started = Instant::now();
    for _ in 0..40 {
        match flooder.discover(16).await {
            Ok(peers) => {
                assert_eq!(peers.into_iter().collect::<HashSet<_>>(), listed);
                ok += 1;
            }
            Err(Error::RateLimited { retry_after }) => {
                assert!(retry_after.is_some_and(|d| d > Duration::ZERO));
                limited += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    eprintln!(
        "40 discovers in {:?}: {ok} answered, {limited} rate limited",
        started.elapsed(),
    );
    assert_eq!(
        (ok, limited),
        (5, 35),
        "the identity's burst, then refusals"
    );
    // Its punch requests share the spent budget.
    assert!(matches!(
        flooder.connect(keep[0].id()).await,
        Err(Error::RateLimited { .. })
    ));
    // An honest peer (another identity and source) still discovers.
    let (honest, _in2) = client(&rv, "127.0.0.4", Some(MAINNET), false, none).await;
    let peers = honest.discover(16).await.unwrap();
    assert_eq!(peers.into_iter().collect::<HashSet<_>>(), listed);
    // The refusals are in the summary, not a line each.
    let deadline = Instant::now() + SUMMARY_WAIT;
    let mut refused = 0;
    while refused < 36 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = summed_after(&rv.log_text(), "punch requests refused: ");
    }
    assert_eq!(refused, 36, "35 discovers and a punch request");
    for c in &mut keep {
        c.ping().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_peers_are_refused_before_any_dial() {
    // No relay: a refused punch then fails after the requester's 3 s window.
    let rv = RendezvousProcess::spawn(&["--relay", "off"]);
    let deny = punch::Denylist::new();
    let (target, mut incoming) = client(&rv, "127.0.0.2", Some(MAINNET), true, deny.clone()).await;
    let mut events = target.events();
    let (by_id, _i1) = client(
        &rv,
        "127.0.0.3",
        Some(MAINNET),
        true,
        punch::Denylist::new(),
    )
    .await;
    let (by_ip, _i2) = client(
        &rv,
        "127.0.0.4",
        Some(MAINNET),
        false,
        punch::Denylist::new(),
    )
    .await;
    let (friend, _i3) = client(
        &rv,
        "127.0.0.5",
        Some(MAINNET),
        false,
        punch::Denylist::new(),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(600);
    deny.deny_peer(by_id.id(), until);
    deny.deny_ip("127.0.0.4".parse::<IpAddr>().unwrap(), until);

    // Outbound to a denied peer: refused at once, the peer hears nothing.
    let mut by_id_events = by_id.events();
    let t = Instant::now();
    match target.connect(by_id.id()).await {
        Err(Error::Denied { peer }) => assert_eq!(peer, by_id.id()),
        other => panic!("expected Denied, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // Inbound from a denied identity and from a denied IP: the punch fails for them (their
    // dials reach the target's listening port on loopback, but nothing there answers the
    // handshake, since the target started no punch).
    let (a, b) = tokio::join!(by_id.connect(target.id()), by_ip.connect(target.id()));
    for res in [a, b] {
        let err = res.expect_err("a denied punch cannot succeed");
        eprintln!("denied requester: {err}");
    }
    // The target refused both offers: no dial, no session.
    let mut denied = Vec::new();
    while let Ok(ev) = events.try_recv() {
        match ev {
            Event::InboundDenied { peer, observed, .. } => denied.push((peer, observed.ip())),
            Event::Offer { .. } | Event::Dial { .. } | Event::Established(_) => {
                panic!("the target acted on a denied offer: {ev:?}")
            }
            _ => {}
        }
    }
    denied.sort_unstable_by_key(|(p, _)| *p.as_bytes());
    let mut want = vec![
        (by_id.id(), "127.0.0.3".parse::<IpAddr>().unwrap()),
        (by_ip.id(), "127.0.0.4".parse().unwrap()),
    ];
    want.sort_unstable_by_key(|(p, _)| *p.as_bytes());
    assert_eq!(denied, want);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), incoming.next())
            .await
            .is_err()
    );
    // The denied peer never got an offer for our outbound request either.
    while let Ok(ev) = by_id_events.try_recv() {
        if let Event::Offer { inbound: true, .. } = ev {
            panic!("the denied peer was offered our punch: {ev:?}");
        }
    }

    // Someone else punches as usual, and both sides see each other's observed address.
    let friend_observed = friend.wait_registered(HANG).await.unwrap();
    let target_observed = target.wait_registered(HANG).await.unwrap();
    let session = friend.connect(target.id()).await.unwrap();
    assert_eq!(session.info().observed, target_observed);
    let inbound = tokio::time::timeout(HANG, incoming.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbound.info().observed, friend_observed);
    assert_eq!(inbound.info().peer, friend.id());
}
