//! The rendezvous's relay against the real binary on loopback: offers carry tickets, the two
//! relay connections of a punch are spliced both ways (bytes written right after HELLO
//! included, half-close kept), every limit refuses with its typed REFUSAL or ends the session
//! with `RelayEnded` on both control connections, rates hold by back-pressure, malformed or
//! stalled hellos are closed without disturbing a relayed pair, and `--relay off` relays
//! nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use punch_proto::message::{RelayEnd, RELAY_TOKEN_LEN};
use punch_proto::relay::Refusal;
use punch_tests::relay::{
    connect_from, count_for, expect_closed, flood, open_relay, read_n, read_refusal, Punch,
};
use punch_tests::{RendezvousProcess, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on anything that must happen on loopback (a refusal, spliced bytes, a close).
const T: Duration = Duration::from_secs(5);

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("an IP address"))
}

/// Sends `data` one way and checks it arrives intact.
async fn across(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) {
    let (w, r) = tokio::join!(from.write_all(data), read_n(to, data.len(), T));
    w.expect("writing through the relay");
    assert_eq!(r.expect("reading through the relay"), data);
}

#[tokio::test]
async fn a_relayed_pair_is_spliced_both_ways() {
    let rv = RendezvousProcess::spawn(&[]);
    let p = Punch::new(&rv).await.expect("a punch");
    let [ta, tb] = p.tickets().expect("both offers carry a ticket");
    assert_ne!(ta.token, tb.token);
    // Loopback SRTTs are near zero: the floor of 20 ms.
    assert_eq!(ta.after, Duration::from_millis(20));
    assert_eq!(ta.after, tb.after);

    // Each writes its hello and its first bytes at once, as the client does: whichever came
    // first was held with its early bytes unread, the other brought them along.
    let mut a = open_relay(rv.addr(), None, &ta.token, b"early bytes of A")
        .await
        .unwrap();
    let mut b = open_relay(rv.addr(), None, &tb.token, b"early bytes of B")
        .await
        .unwrap();
    assert_eq!(read_n(&mut b, 16, T).await.unwrap(), b"early bytes of A");
    assert_eq!(read_n(&mut a, 16, T).await.unwrap(), b"early bytes of B");

    // A megabyte each way at once.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    let back: Vec<u8> = big.iter().rev().copied().collect();
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let (w1, w2, r1, r2) = tokio::join!(
        aw.write_all(&big),
        bw.write_all(&back),
        read_exact_half(&mut br, big.len()),
        read_exact_half(&mut ar, back.len()),
    );
    w1.unwrap();
    w2.unwrap();
    assert!(r1 == big, "A's megabyte arrived intact");
    assert!(r2 == back, "B's megabyte arrived intact");

    // Half-close: A's end of stream reaches B, and B can still send to A.
    aw.shutdown().await.unwrap();
    let mut one = [0u8; 1];
    let eof = tokio::time::timeout(T, br.read(&mut one)).await.unwrap();
    assert_eq!(eof.unwrap(), 0, "B sees A's end of stream");
    bw.write_all(b"after A closed").await.unwrap();
    let mut got = [0u8; 14];
    tokio::time::timeout(T, ar.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"after A closed");
    bw.shutdown().await.unwrap();
    let eof = tokio::time::timeout(T, ar.read(&mut one)).await.unwrap();
    assert_eq!(eof.unwrap(), 0, "A sees B's end of stream");

    // One line at the start and one at the end, with the session id.
    let session = p.offer_a.session_id.to_string();
    let deadline = Instant::now() + T;
    loop {
        let log = rv.log_text();
        let ended = log
            .lines()
            .any(|l| l.contains("relay session ended") && l.contains(&session));
        if ended {
            assert!(log
                .lines()
                .any(|l| l.contains("relay session started") && l.contains(&session)));
            assert!(log.contains("both sides closed"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no end line in:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_exact_half(r: &mut tokio::net::tcp::OwnedReadHalf, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(T, r.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    buf
}

#[tokio::test]
async fn unknown_and_used_tokens_are_refused() {
    let rv = RendezvousProcess::spawn(&[]);
    let p = Punch::new(&rv).await.unwrap();
    let (mut a, mut b) = p.relay(&rv).await.unwrap();
    across(&mut a, &mut b, b"spliced").await;
    let [ta, _] = p.tickets().unwrap();
    let mut again = open_relay(rv.addr(), None, &ta.token, b"").await.unwrap();
    assert_eq!(
        read_refusal(&mut again, T).await.unwrap(),
        Refusal::UnknownToken,
        "a token works once"
    );
    expect_closed(&mut again, T, 0).await.unwrap();
    let mut never = open_relay(rv.addr(), None, &[0x42; RELAY_TOKEN_LEN], b"")
        .await
        .unwrap();
    assert_eq!(
        read_refusal(&mut never, T).await.unwrap(),
        Refusal::UnknownToken
    );
    // The session was not disturbed.
    across(&mut b, &mut a, b"still spliced").await;
}

#[tokio::test]
async fn the_total_session_limit_refuses_with_full() {
    let rv = RendezvousProcess::spawn(&["--relay-max-sessions", "1"]);
    let p1 = Punch::new(&rv).await.unwrap();
    let (mut a, mut b) = p1.relay(&rv).await.unwrap();
    across(&mut a, &mut b, b"first session").await;
    let p2 = Punch::new(&rv).await.unwrap();
    let [t, _] = p2.tickets().unwrap();
    let mut c = open_relay(rv.addr(), None, &t.token, b"").await.unwrap();
    assert_eq!(read_refusal(&mut c, T).await.unwrap(), Refusal::Full);
    // Once the first session ends (noticed at once, but asynchronously), a new punch's
    // pair gets the slot: retried a bounded number of times while the relay is still Full.
    drop((a, b));
    let full = punch_proto::relay::refusal(Refusal::Full);
    for attempt in 0.. {
        assert!(attempt < 50, "no session after the first ended");
        let p = Punch::new(&rv).await.unwrap();
        let (mut x, mut y) = p.relay(&rv).await.unwrap();
        // 12 bytes, as long as a refusal: x reads either them or its refusal.
        y.write_all(b"hello world!").await.unwrap();
        let got = read_n(&mut x, 12, T).await.unwrap();
        if got == full {
            continue;
        }
        assert_eq!(got, b"hello world!");
        break;
    }
}

#[tokio::test]
async fn the_per_peer_limit_refuses_with_peer_limit_and_drops_the_pair() {
    let rv = RendezvousProcess::spawn(&["--relay-max-sessions-per-peer", "1"]);
    let p1 = Punch::new(&rv).await.unwrap();
    let (mut a, mut b) = p1.relay(&rv).await.unwrap();
    across(&mut a, &mut b, b"first session").await;
    // The same requester punches to a third peer: it is over its share.
    let c = TestClient::connect(rv.addr(), &rv.identity())
        .await
        .unwrap();
    let mut p2 = Punch::between(p1.a, c).await.unwrap();
    p2.a.ping().await.unwrap();
    let [t_a, t_c] = p2.tickets().unwrap();
    let mut ra = open_relay(rv.addr(), None, &t_a.token, b"").await.unwrap();
    assert_eq!(read_refusal(&mut ra, T).await.unwrap(), Refusal::PeerLimit);
    let mut rc = open_relay(rv.addr(), None, &t_c.token, b"").await.unwrap();
    assert_eq!(
        read_refusal(&mut rc, T).await.unwrap(),
        Refusal::UnknownToken,
        "a refused pair is dropped whole: its other token starts nothing"
    );
    across(&mut b, &mut a, b"first session still spliced").await;
}

#[tokio::test]
async fn the_per_source_limit_refuses_with_source_limit() {
    let rv = RendezvousProcess::spawn(&["--relay-max-sessions-per-source", "1"]);
    let p1 = Punch::new(&rv).await.unwrap();
    let [t1a, t1b] = p1.tickets().unwrap();
    // Both sides of the first session from 127.0.0.2: it counts once there.
    let mut a = open_relay(rv.addr(), ip("127.0.0.2"), &t1a.token, b"")
        .await
        .unwrap();
    let mut b = open_relay(rv.addr(), ip("127.0.0.2"), &t1b.token, b"")
        .await
        .unwrap();
    across(&mut a, &mut b, b"first session").await;

    // A first side from 127.0.0.2 is refused.
    let p2 = Punch::new(&rv).await.unwrap();
    let [t2a, _] = p2.tickets().unwrap();
    let mut c = open_relay(rv.addr(), ip("127.0.0.2"), &t2a.token, b"")
        .await
        .unwrap();
    assert_eq!(read_refusal(&mut c, T).await.unwrap(), Refusal::SourceLimit);

    // (A second side over its source's limit: `tests/tests/relay_held.rs`, which can see
    // when the first side is held.)
    across(&mut b, &mut a, b"first session still spliced").await;
}

#[tokio::test]
async fn a_side_whose_partner_never_comes_is_refused_peer_absent() {
    let rv = RendezvousProcess::spawn(&["--relay-pair-timeout-secs", "1"]);
    let p = Punch::new(&rv).await.unwrap();
    let [ta, tb] = p.tickets().unwrap();
    let start = Instant::now();
    let mut a = open_relay(rv.addr(), None, &ta.token, b"preamble")
        .await
        .unwrap();
    assert_eq!(read_refusal(&mut a, T).await.unwrap(), Refusal::PeerAbsent);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "held until the pair timeout, not refused early: {waited:?}"
    );
    expect_closed(&mut a, T, 0).await.unwrap();
    // The partner's token expired with the pair.
    let mut b = open_relay(rv.addr(), None, &tb.token, b"").await.unwrap();
    assert_eq!(
        read_refusal(&mut b, T).await.unwrap(),
        Refusal::UnknownToken
    );
}

#[tokio::test]
async fn the_byte_limit_ends_the_session_and_tells_both_peers() {
    let rv = RendezvousProcess::spawn(&["--relay-max-bytes", "100000"]);
    let mut p = Punch::new(&rv).await.unwrap();
    let (mut a, mut b) = p.relay(&rv).await.unwrap();
    across(&mut a, &mut b, &[1u8; 1000]).await;
    across(&mut b, &mut a, &[2u8; 1000]).await;
    let data = vec![3u8; 300_000];
    let (w, ended, closed) = tokio::join!(
        a.write_all(&data),
        p.relay_ended(T),
        expect_closed(&mut b, T, 100_000)
    );
    // The write may fail once the relay closed A's connection.
    let _ = w;
    assert_eq!(ended.unwrap(), [RelayEnd::Bytes, RelayEnd::Bytes]);
    assert_eq!(
        closed.unwrap(),
        98_000,
        "exactly the limit crossed the relay, both directions together"
    );
    expect_closed(&mut a, T, usize::MAX).await.unwrap();
}

#[tokio::test]
async fn an_idle_session_is_ended_and_both_peers_are_told() {
    let rv = RendezvousProcess::spawn(&["--relay-idle-secs", "1"]);
    let mut p = Punch::new(&rv).await.unwrap();
    let (mut a, mut b) = p.relay(&rv).await.unwrap();
    across(&mut a, &mut b, b"one message, then silence").await;
    let start = Instant::now();
    assert_eq!(
        p.relay_ended(T).await.unwrap(),
        [RelayEnd::Idle, RelayEnd::Idle]
    );
    assert!(start.elapsed() >= Duration::from_millis(900));
    expect_closed(&mut a, T, 0).await.unwrap();
    expect_closed(&mut b, T, 0).await.unwrap();
}

#[tokio::test]
async fn a_write_stuck_for_the_idle_limit_ends_the_session_as_idle() {
    let rv = RendezvousProcess::spawn(&["--relay-idle-secs", "1"]);
    let mut p = Punch::new(&rv).await.unwrap();
    let (a, _b) = p.relay(&rv).await.unwrap();
    // A floods, B never reads: once the socket buffers are full the relay's write toward B
    // is stuck, and nothing else moves.
    let (_ar, mut aw) = a.into_split();
    let (_, ended) = tokio::join!(flood(&mut aw, T), p.relay_ended(T));
    assert_eq!(ended.unwrap(), [RelayEnd::Idle, RelayEnd::Idle]);
}

#[tokio::test]
async fn the_duration_limit_ends_a_busy_session() {
    let rv = RendezvousProcess::spawn(&["--relay-max-duration-secs", "1"]);
    let mut p = Punch::new(&rv).await.unwrap();
    let (a, mut b) = p.relay(&rv).await.unwrap();
    let start = Instant::now();
    let (_ar, mut aw) = a.into_split();
    // Bytes keep moving (never idle) until the session's time is up.
    let (_, ended, closed) = tokio::join!(
        flood(&mut aw, T),
        p.relay_ended(T),
        expect_closed(&mut b, T, usize::MAX)
    );
    assert_eq!(ended.unwrap(), [RelayEnd::Duration, RelayEnd::Duration]);
    assert!(closed.unwrap() > 0, "bytes moved until the end");
    assert!(start.elapsed() >= Duration::from_millis(900));
}

/// Per-session rate for the rate tests: 2 MiB/s.
const RATE: u64 = 2 << 20;
/// How long the rate tests measure.
const MEASURE: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_flooding_pair_is_held_to_its_rate_and_an_honest_pair_keeps_its_own() {
    let rate = RATE.to_string();
    let rv = RendezvousProcess::spawn(&["--relay-rate-per-session", &rate]);
    let honest = Punch::new(&rv).await.unwrap();
    let flooder = Punch::new(&rv).await.unwrap();
    let (ha, hb) = honest.relay(&rv).await.unwrap();
    let (fa, fb) = flooder.relay(&rv).await.unwrap();
    let (_har, mut haw) = ha.into_split();
    let (mut hbr, _hbw) = hb.into_split();
    let (mut far, mut faw) = fa.into_split();
    let (mut fbr, mut fbw) = fb.into_split();
    // The flooder writes both ways as fast as it can, the honest pair one way, all at once;
    // writers stop a little after the readers so the readers never run dry.
    let push = MEASURE + Duration::from_secs(1);
    let (_, _, _, honest_got, flood_ab, flood_ba) = tokio::join!(
        flood(&mut haw, push),
        flood(&mut faw, push),
        flood(&mut fbw, push),
        count_for(&mut hbr, MEASURE),
        count_for(&mut fbr, MEASURE),
        count_for(&mut far, MEASURE),
    );
    let rate_of = |(bytes, secs): (u64, f64)| bytes as f64 / secs / RATE as f64;
    let honest = rate_of(honest_got.unwrap());
    let ab = rate_of(flood_ab.unwrap());
    let ba = rate_of(flood_ba.unwrap());
    eprintln!("relative to the per-session rate: honest {honest:.3}, flooder {ab:.3} / {ba:.3}");
    assert!(
        (0.8..=1.2).contains(&honest),
        "the honest pair gets its rate: {honest:.3}"
    );
    for r in [ab, ba] {
        assert!(
            (0.8..=1.2).contains(&r),
            "the flooder is held to its rate: {r:.3}"
        );
    }
}

#[tokio::test]
async fn the_total_rate_holds_all_sessions_together() {
    let rate = RATE.to_string();
    let rv = RendezvousProcess::spawn(&["--relay-rate-total", &rate]);
    let p1 = Punch::new(&rv).await.unwrap();
    let p2 = Punch::new(&rv).await.unwrap();
    let (a1, b1) = p1.relay(&rv).await.unwrap();
    let (a2, b2) = p2.relay(&rv).await.unwrap();
    let (_r, mut w1) = a1.into_split();
    let (mut r1, _w) = b1.into_split();
    let (_r2, mut w2) = a2.into_split();
    let (mut r2, _w2) = b2.into_split();
    let push = MEASURE + Duration::from_secs(1);
    let (_, _, got1, got2) = tokio::join!(
        flood(&mut w1, push),
        flood(&mut w2, push),
        count_for(&mut r1, MEASURE),
        count_for(&mut r2, MEASURE),
    );
    let (b1, s1) = got1.unwrap();
    let (b2, s2) = got2.unwrap();
    let total = (b1 as f64 / s1 + b2 as f64 / s2) / RATE as f64;
    eprintln!("two floods together, relative to the total rate: {total:.3}");
    assert!(
        (0.8..=1.2).contains(&total),
        "the server-wide bucket holds both: {total:.3}"
    );
}

#[tokio::test]
async fn garbage_and_stalled_hellos_are_closed_without_disturbing_a_relayed_pair() {
    let rv = RendezvousProcess::spawn(&["--first-message-timeout-secs", "1"]);
    let p = Punch::new(&rv).await.unwrap();
    let (mut a, mut b) = p.relay(&rv).await.unwrap();
    across(&mut a, &mut b, b"before").await;

    // "PR" and then not a hello.
    let mut garbage = connect_from(rv.addr(), None).await.unwrap();
    garbage
        .write_all(b"PRXX0123456789abcdefgarbage")
        .await
        .unwrap();
    // A wrong magic in fewer bytes than a hello: closed at once, not at the timeout.
    let mut short = connect_from(rv.addr(), None).await.unwrap();
    short.write_all(b"PRL!").await.unwrap();
    // Half a hello, then nothing.
    let mut stalled = connect_from(rv.addr(), None).await.unwrap();
    stalled.write_all(b"PRLY01234").await.unwrap();
    let start = Instant::now();

    across(&mut b, &mut a, b"meanwhile").await;
    assert_eq!(expect_closed(&mut garbage, T, 0).await.unwrap(), 0);
    assert_eq!(expect_closed(&mut short, T, 0).await.unwrap(), 0);
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "a wrong magic is not waited on"
    );
    assert_eq!(expect_closed(&mut stalled, T, 0).await.unwrap(), 0);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the stalled hello had its first-message timeout"
    );
    across(&mut a, &mut b, b"after").await;
    across(&mut b, &mut a, b"and back").await;
}

#[tokio::test]
async fn relay_off_issues_no_tickets_and_refuses_hellos() {
    let rv = RendezvousProcess::spawn(&["--relay", "off"]);
    let p = Punch::new(&rv).await.unwrap();
    assert!(p.offer_a.relay.is_none() && p.offer_b.relay.is_none());
    let mut c = open_relay(rv.addr(), None, &[7; RELAY_TOKEN_LEN], b"")
        .await
        .unwrap();
    assert_eq!(
        read_refusal(&mut c, T).await.unwrap(),
        Refusal::UnknownToken
    );
}

#[tokio::test]
async fn offers_go_without_tickets_when_the_pending_table_is_full() {
    let rv = RendezvousProcess::spawn(&["--relay-max-pending", "1"]);
    let p1 = Punch::new(&rv).await.unwrap();
    assert!(p1.tickets().is_ok());
    let p2 = Punch::new(&rv).await.unwrap();
    assert!(p2.offer_a.relay.is_none() && p2.offer_b.relay.is_none());
    // Once the first pair is used it is no longer pending: tickets again.
    let (mut a, mut b) = p1.relay(&rv).await.unwrap();
    across(&mut a, &mut b, b"used").await;
    let p3 = Punch::new(&rv).await.unwrap();
    assert!(p3.tickets().is_ok());
}
