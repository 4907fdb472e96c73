//! Helpers of the Sybil tests (`offer_sybils.rs`, `registry_sybils.rs`): raw Sybil clients
//! from chosen loopback sources, honest punch clients that echo, and reading the rendezvous's
//! refusal summaries. Each source is its own 127.x.y.z (127.0.0.0/8 is all local on Linux), so
//! 127.0.0.x and 127.0.1.x are different /24s, as two networks are on the internet.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use punch::{Allow, Client};
use punch_proto::message::{ClientMsg, ErrorCode, Register, ServerMsg};
use punch_proto::{Keypair, PeerId};
use punch_tests::{default_register, RegistrationRefused, RendezvousProcess, TestClient};
use tokio::net::{TcpSocket, TcpStream};

/// Bounds every wait that must end: loopback punches and answers take milliseconds.
pub const HANG: Duration = Duration::from_secs(20);
/// Bound on waiting for the server's summary lines (one a second in these tests).
pub const SUMMARY_WAIT: Duration = Duration::from_secs(5);

pub async fn connect_from(ip: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(
        ip.parse::<IpAddr>().expect("an IPv4 address"),
        0,
    ))?;
    socket.connect(server).await
}

/// A raw client with a fresh identity registering from `ip`: `Ok` registered, `Err` the
/// server's typed refusal (or any other failure).
pub async fn raw_from(
    rv: &RendezvousProcess,
    ip: &str,
    register: &Register,
) -> anyhow::Result<TestClient> {
    let stream = connect_from(ip, rv.addr()).await?;
    TestClient::handshake(stream, &rv.identity(), Keypair::generate()?, register).await
}

/// The code of a registration refusal, if that is what `res` is.
pub fn refusal_code<T>(res: &anyhow::Result<T>) -> Option<ErrorCode> {
    res.as_ref()
        .err()?
        .downcast_ref::<RegistrationRefused>()
        .map(|r| r.0.code)
}

/// `n` Sybils with fresh identities, round-robin over `sources`; all must register.
pub async fn sybils(rv: &RendezvousProcess, sources: &[&str], n: usize) -> Vec<TestClient> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ip = sources[i % sources.len()];
        let c = raw_from(rv, ip, &default_register())
            .await
            .unwrap_or_else(|e| panic!("Sybil {i} from {ip} did not register: {e:#}"));
        out.push(c);
    }
    out
}

/// What the Sybils' requests got.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Answers {
    pub offers: usize,
    pub refusals: Vec<ErrorCode>,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for c in &self.refusals {
            let name = format!("{c:?}");
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, k)) => *k += 1,
                None => counts.push((name, 1)),
            }
        }
        write!(f, "{} offers, refused {counts:?}", self.offers)
    }
}

impl Answers {
    pub fn count(&self, code: ErrorCode) -> usize {
        self.refusals.iter().filter(|c| **c == code).count()
    }
}

/// Every Sybil sends `requests` punch requests for `target` (all sent first, then every
/// answer read), answering pings meanwhile.
pub async fn flood(sybils: &mut [TestClient], target: PeerId, requests: u64) -> Answers {
    for s in sybils.iter_mut() {
        for request_id in 1..=requests {
            s.send(&ClientMsg::Connect {
                request_id,
                peer: target,
            })
            .await
            .expect("a Sybil's request was sent");
        }
    }
    let mut answers = Answers::default();
    for s in sybils.iter_mut() {
        for _ in 0..requests {
            match s
                .recv_skip_pings(HANG)
                .await
                .expect("every request is answered")
            {
                ServerMsg::Offer(_) => answers.offers += 1,
                ServerMsg::Error(e) => answers.refusals.push(e.code),
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    answers
}

pub use punch_tests::punch_client_at as punch_client;

pub use punch_tests::echo_once;

/// `from` punches to `to` `times` times, each time moving a line both ways; returns how many
/// punches succeeded (each within [`HANG`]).
pub async fn honest_punches(from: &Client, to: PeerId, times: usize) -> usize {
    let mut ok = 0;
    for i in 0..times {
        match tokio::time::timeout(HANG, from.connect(to)).await {
            Ok(Ok(session)) => {
                echo_once(&session, format!("honest line {i}\n").as_bytes()).await;
                ok += 1;
            }
            Ok(Err(e)) => eprintln!("honest punch {i} failed: {e}"),
            Err(_) => eprintln!("honest punch {i} hung"),
        }
    }
    ok
}

/// The sum over the server's refusal summaries of the count just before `tag`, and how many
/// summary lines there were.
pub fn summed(log: &str, tag: &str) -> (u64, usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused ") && l.contains("connections from"))
        .collect();
    let sum = lines
        .iter()
        .filter_map(|l| {
            let before = &l[..l.find(tag)?];
            before.rsplit([' ', ':', ',']).next()?.parse::<u64>().ok()
        })
        .sum();
    (sum, lines.len())
}

/// The sum over the server's summaries of the number right after `anchor` (for the
/// registry's part, e.g. "punch requests refused: ").
pub fn summed_after(log: &str, anchor: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(anchor)? + anchor.len()..];
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Waits until the summaries count at least `want` before `tag`; returns the sum and lines.
pub async fn wait_summed(rv: &RendezvousProcess, tag: &str, want: u64) -> (u64, usize) {
    let deadline = Instant::now() + SUMMARY_WAIT;
    loop {
        let got = summed(&rv.log_text(), tag);
        if got.0 >= want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The set of `ids`, as `punch listen --allow` builds it.
pub fn only(ids: &[PeerId]) -> Allow {
    Allow::Only(ids.iter().copied().collect::<HashSet<_>>())
}
