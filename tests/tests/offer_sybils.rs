//! Issue 12, finding 3: Sybils cutting a target off, against the real `rendezvous` binary.
//!
//! Before, the offer budget was per target and shared by every requester: 60 fresh identities
//! from 2 addresses kept it empty and 0 of 5 honest punches got through, and every granted
//! offer made the victim punch toward the attacker for 10 s. Now:
//!
//! - A target with an allow-list (sent in its registration): 60 Sybils from two addresses
//!   send 180 requests; every one is refused `NotAllowed` by the server, the target hears of
//!   none (no offer, no refusal event), the refusals appear as summary lines (not a line
//!   each), and an allowed peer from the Sybils' own /24 punches and echoes data 5 times of 5.
//! - A target serving anyone: the Sybils' requests spend only their own network's budget
//!   (per target and source, per target and network); past it they are refused
//!   `RateLimited`, another address of their /24 shares their spent budget, and an honest
//!   peer from another /24 punches and echoes 5 times of 5.
//! - Request limits per source and per network, whatever the identities: 60 Sybils scanning
//!   get only their network's requests answered; an honest peer elsewhere still punches.
#![allow(clippy::unwrap_used)]

mod sybil_common;

use std::time::{Duration, Instant};

use punch::{Allow, Event};
use punch_proto::message::ErrorCode;
use punch_proto::Keypair;
use punch_tests::RendezvousProcess;
use sybil_common::*;

/// Sybil identities, the two addresses (one /24) they come from, and requests each sends.
const SYBILS: usize = 60;
const SYBIL_SOURCES: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
const REQUESTS_EACH: u64 = 3;
/// Honest punches that must all get through (the measurement: 0 of 5 before).
const HONEST_PUNCHES: usize = 5;
/// The target's address: a /24 of its own.
const TARGET_IP: &str = "127.0.2.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybils_off_the_allow_list_never_reach_the_target_nor_its_budget() {
    let rv = RendezvousProcess::spawn(&["--refusal-log-interval-secs", "1"]);
    let alice = Keypair::generate().unwrap();
    let target = punch_client(
        &rv,
        TARGET_IP,
        Keypair::generate().unwrap(),
        Some(only(&[alice.public()])),
    )
    .await;
    let mut events = target.events();

    let mut sybils = sybils(&rv, &SYBIL_SOURCES, SYBILS).await;
    let started = Instant::now();
    let answers = flood(&mut sybils, target.id(), REQUESTS_EACH).await;
    eprintln!(
        "allow-listed target: {} Sybil requests in {:?}: {answers:?}",
        SYBILS as u64 * REQUESTS_EACH,
        started.elapsed()
    );
    let total = SYBILS * REQUESTS_EACH as usize;
    assert_eq!(answers.offers, 0);
    assert_eq!(answers.count(ErrorCode::NotAllowed), total, "{answers:?}");

    // The allowed peer comes from the Sybils' own /24 (another address): the allow-list alone
    // protects the target, and the Sybils spent no budget of that network.
    let alice = punch_client(&rv, "127.0.0.4", alice, None).await;
    let ok = honest_punches(&alice, target.id(), HONEST_PUNCHES).await;
    eprintln!("allow-listed target: {ok} of {HONEST_PUNCHES} honest punches got through");
    assert_eq!(ok, HONEST_PUNCHES);

    // The target heard of no Sybil: its only offers are Alice's.
    let mut inbound_from_strangers = 0;
    let mut inbound_from_alice = 0;
    while let Ok(ev) = events.try_recv() {
        match ev {
            Event::Offer {
                peer,
                inbound: true,
                ..
            } if peer == alice.id() => inbound_from_alice += 1,
            Event::Offer { inbound: true, .. } | Event::InboundRefused { .. } => {
                inbound_from_strangers += 1
            }
            _ => {}
        }
    }
    assert_eq!(
        (inbound_from_strangers, inbound_from_alice),
        (0, HONEST_PUNCHES)
    );

    // The server logged the refusals as summaries, not one line each.
    let (refused, lines) =
        wait_summed(&rv, " (not on the target's allow-list)", total as u64).await;
    assert_eq!(refused, total as u64, "{}", rv.log_text());
    assert!(lines <= 10, "{lines} summary lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybils_spend_only_their_own_networks_budget_for_a_public_target() {
    // Small budgets, so the test is quick; the defaults are 20 per source and 60 per network.
    let (per_source, per_network) = (5u32, 8u32);
    let rv = RendezvousProcess::spawn(&[
        "--offers-per-target-per-source-per-minute",
        &per_source.to_string(),
        "--offers-per-target-per-network-per-minute",
        &per_network.to_string(),
        "--refusal-log-interval-secs",
        "1",
    ]);
    let target = punch_client(
        &rv,
        TARGET_IP,
        Keypair::generate().unwrap(),
        Some(Allow::Any),
    )
    .await;

    let mut sybils = sybils(&rv, &SYBIL_SOURCES, SYBILS).await;
    let started = Instant::now();
    let answers = flood(&mut sybils, target.id(), REQUESTS_EACH).await;
    let elapsed = started.elapsed();
    eprintln!("public target: Sybil requests in {elapsed:?}: {answers:?}");
    // The network's budget (8 at once, refilling 8 a minute) and no more: two sources of 5
    // each cannot add up to more than their /24 gets.
    let refill = (elapsed.as_secs_f64() * f64::from(per_network) / 60.0).ceil() as usize;
    assert!(
        (per_network as usize..=per_network as usize + refill).contains(&answers.offers),
        "{answers:?}"
    );
    let total = SYBILS * REQUESTS_EACH as usize;
    assert_eq!(
        answers.count(ErrorCode::RateLimited),
        total - answers.offers
    );

    // Another address of the Sybils' /24 shares their spent network budget...
    let mut neighbour = sybils_from(&rv, "127.0.0.9").await;
    let a = flood(std::slice::from_mut(&mut neighbour), target.id(), 1).await;
    assert_eq!(a.count(ErrorCode::RateLimited), 1, "{a:?}");
    // ...but an honest peer of another /24 has its own, and punches every time.
    let bob = punch_client(&rv, "127.0.1.1", Keypair::generate().unwrap(), None).await;
    let ok = honest_punches(&bob, target.id(), HONEST_PUNCHES).await;
    eprintln!("public target: {ok} of {HONEST_PUNCHES} honest punches got through");
    assert_eq!(ok, HONEST_PUNCHES);

    // Every refusal is counted in the summaries (which come once a second).
    let want = (total - answers.offers + 1) as u64;
    let deadline = Instant::now() + SUMMARY_WAIT;
    while summed_after(&rv.log_text(), "punch requests refused: ") < want
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = rv.log_text();
    assert_eq!(
        summed_after(&log, "punch requests refused: "),
        want,
        "{log}"
    );
}

async fn sybils_from(rv: &RendezvousProcess, ip: &str) -> punch_tests::TestClient {
    raw_from(rv, ip, &punch_tests::default_register())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_limited_per_source_and_network_not_only_per_identity() {
    let (per_source, per_network) = (10u32, 15u32);
    let rv = RendezvousProcess::spawn(&[
        "--punch-requests-per-source-per-minute",
        &per_source.to_string(),
        "--punch-requests-per-network-per-minute",
        &per_network.to_string(),
    ]);
    let target = punch_client(
        &rv,
        TARGET_IP,
        Keypair::generate().unwrap(),
        Some(Allow::Any),
    )
    .await;
    // 60 fresh identities, one request each for an identity that is not registered (a scan):
    // the per-identity limit (20 a minute) never applies, the per-source and network ones do.
    let mut sybils = sybils(&rv, &SYBIL_SOURCES, SYBILS).await;
    let nobody = Keypair::generate().unwrap().public();
    let started = Instant::now();
    let answers = flood(&mut sybils, nobody, 1).await;
    let elapsed = started.elapsed();
    eprintln!("scan: {SYBILS} requests in {elapsed:?}: {answers:?}");
    let answered = answers.count(ErrorCode::PeerOffline);
    let refill = (elapsed.as_secs_f64() * f64::from(per_network) / 60.0).ceil() as usize;
    assert!(
        (per_network as usize..=per_network as usize + refill).contains(&answered),
        "{answers:?}"
    );
    assert_eq!(answers.count(ErrorCode::RateLimited), SYBILS - answered);

    let bob = punch_client(&rv, "127.0.1.1", Keypair::generate().unwrap(), None).await;
    assert_eq!(honest_punches(&bob, target.id(), 2).await, 2);
    // Bounded in time: nothing above waited for a timeout.
    assert!(started.elapsed() < Duration::from_secs(60));
}
