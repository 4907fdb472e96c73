//! Issue 12, finding 7: the registry filled by Sybils, against the real `rendezvous` binary.
//!
//! Before, 10,000 identities from 313 addresses filled `max_peers` in 8.7 s and honest peers
//! got `ServerFull`. Now registrations are capped per source (IPv4 address / IPv6 /64) and per
//! network (IPv4 /24 / IPv6 /48), and the server checks its file-descriptor limit at start:
//!
//! - 60 Sybils from four addresses of one /24, then 15 from an address of another /24, against
//!   small caps (per network 20, per source 12, max peers 40): exactly the caps register,
//!   the rest get the typed `NetworkFull`, the refusals appear as summary lines, and an honest
//!   pair from two other /24s registers, punches and echoes data.
//! - The same flood with the network cap lifted fills `max_peers` and the honest peer gets
//!   `ServerFull`: the attack the cap stops is real.
//! - The binary raises its soft fd limit to the hard limit, and refuses to start (naming
//!   `--max-peers` and `--ignore-fd-limit`) when the hard limit cannot hold `--max-peers`.
#![allow(clippy::unwrap_used)]

mod sybil_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use punch::Allow;
use punch_proto::message::ErrorCode;
use punch_proto::Keypair;
use punch_tests::{bin_path, default_register, unique_temp_dir, RendezvousProcess, TestClient};
use sybil_common::*;

/// Four addresses of one /24, 15 Sybils each.
const NET_A: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
const PER_ADDRESS: usize = 15;
/// The caps of the test (defaults: 32 per source, 256 per network, 10,000 peers).
const PER_NETWORK: usize = 20;
const PER_SOURCE: usize = 12;
const MAX_PEERS: usize = 40;

/// Registers `n` fresh identities from `ip`; returns the registered clients (held open) and
/// the codes of the refusals.
async fn register_many(
    rv: &RendezvousProcess,
    ip: &str,
    n: usize,
) -> (Vec<TestClient>, Vec<ErrorCode>) {
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let res = raw_from(rv, ip, &default_register()).await;
        match refusal_code(&res) {
            Some(code) => refused.push(code),
            None => ok.push(res.unwrap_or_else(|e| panic!("registration from {ip} failed: {e:#}"))),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cannot_fill_the_registry_and_honest_peers_still_punch() {
    let rv = RendezvousProcess::spawn(&[
        "--max-peers",
        &MAX_PEERS.to_string(),
        "--max-registrations-per-network",
        &PER_NETWORK.to_string(),
        "--max-registrations-per-source",
        &PER_SOURCE.to_string(),
        "--refusal-log-interval-secs",
        "1",
    ]);
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for ip in NET_A {
        let (ok, no) = register_many(&rv, ip, PER_ADDRESS).await;
        held.extend(ok);
        refused.extend(no);
    }
    eprintln!(
        "network A: {} of {} Sybils registered in {:?}",
        held.len(),
        NET_A.len() * PER_ADDRESS,
        started.elapsed()
    );
    assert_eq!(held.len(), PER_NETWORK);
    assert_eq!(refused.len(), NET_A.len() * PER_ADDRESS - PER_NETWORK);
    assert!(
        refused.iter().all(|c| *c == ErrorCode::NetworkFull),
        "{refused:?}"
    );

    // One address of another /24: its own cap applies.
    let (ok, no) = register_many(&rv, "127.0.3.1", PER_ADDRESS).await;
    eprintln!(
        "one address of network B: {} of {PER_ADDRESS} registered",
        ok.len()
    );
    assert_eq!(ok.len(), PER_SOURCE);
    assert!(
        no.iter().all(|c| *c == ErrorCode::NetworkFull) && no.len() == PER_ADDRESS - PER_SOURCE
    );
    held.extend(ok);

    // The registry still has room (32 of 40): an honest pair from two other /24s registers,
    // punches and moves data, while every Sybil stays registered.
    let target = punch_client(
        &rv,
        "127.0.1.1",
        Keypair::generate().unwrap(),
        Some(Allow::Any),
    )
    .await;
    let bob = punch_client(&rv, "127.0.2.1", Keypair::generate().unwrap(), None).await;
    assert_eq!(honest_punches(&bob, target.id(), 2).await, 2);
    for s in &mut held {
        s.ping().await.unwrap();
    }

    // The refusals are summarised, not logged one by one.
    let want = (refused.len() + no.len()) as u64;
    let deadline = Instant::now() + SUMMARY_WAIT;
    while summed_after(&rv.log_text(), "registrations refused: ") < want
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = rv.log_text();
    assert_eq!(summed_after(&log, "registrations refused: "), want, "{log}");
    assert!(
        !log.contains("registration refused"),
        "a line per refusal:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_network_cap_the_same_flood_locks_honest_peers_out() {
    let rv = RendezvousProcess::spawn(&[
        "--max-peers",
        &MAX_PEERS.to_string(),
        "--max-registrations-per-network",
        "100000",
    ]);
    let mut held = Vec::new();
    for ip in NET_A {
        held.extend(register_many(&rv, ip, PER_ADDRESS).await.0);
    }
    assert_eq!(held.len(), MAX_PEERS, "the flood fills max_peers");
    let honest = raw_from(&rv, "127.0.1.1", &default_register()).await;
    assert_eq!(refusal_code(&honest), Some(ErrorCode::ServerFull));
}

/// Runs the binary under `sh` with the given `ulimit` settings and `args`; returns its exit
/// status (None: still running after `wait`, then killed), its stderr and its soft limit.
/// Unless `may_raise`, it runs without CAP_SYS_RESOURCE (`setpriv`), so, even started by
/// root, it cannot lift its hard limit: the position of a server run by a plain user.
fn run_limited(
    ulimit: &str,
    args: &[&str],
    wait: Duration,
    may_raise: bool,
) -> (Option<std::process::ExitStatus>, String, u64) {
    let dir = unique_temp_dir("punch-fd-limit");
    let log = dir.join("stderr");
    let exec = if may_raise {
        "exec"
    } else {
        "exec setpriv --bounding-set=-sys_resource --inh-caps=-sys_resource"
    };
    let script = format!(
        "{ulimit} || exit 99; {exec} \"$0\" --listen 127.0.0.1:0 --key-file {} \"$@\" 2>{}",
        dir.join("key").display(),
        log.display()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(bin_path("rendezvous"))
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + wait;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Read the soft limit while it runs.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, stderr, soft)
}

/// This process's hard limit on open files.
fn hard_fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn the_fd_limit_is_raised_and_checked_against_max_peers() {
    // 1,000 peers + 512 waiting + 512 handshakes + 64 spare need 2,088 descriptors.
    let hard = hard_fd_limit().min(4096);
    assert!(
        hard >= 2100,
        "this machine's hard fd limit ({hard}) is too low for the test"
    );
    let limits = format!("ulimit -Sn 512 && ulimit -Hn {hard}");
    // A soft limit of 512 below the hard one: raised, and then 1,000 peers fit.
    let (status, stderr, soft) = run_limited(
        &limits,
        &["--max-peers", "1000"],
        Duration::from_secs(2),
        false,
    );
    assert!(status.is_none(), "exited: {status:?}\n{stderr}");
    assert_eq!(soft, hard, "{stderr}");
    // A hard limit that cannot hold --max-peers: refused at start, naming the flags.
    let (status, stderr, _) = run_limited(
        &limits,
        &["--max-peers", "10000"],
        Duration::from_secs(10),
        false,
    );
    assert!(
        matches!(status, Some(s) if !s.success()),
        "{status:?}\n{stderr}"
    );
    assert!(
        stderr.contains("--max-peers 10000") && stderr.contains("--ignore-fd-limit"),
        "{stderr}"
    );
    // ...unless told to start anyway, with a warning.
    let (status, stderr, _) = run_limited(
        &limits,
        &["--max-peers", "10000", "--ignore-fd-limit"],
        Duration::from_secs(2),
        false,
    );
    assert!(status.is_none(), "exited: {status:?}\n{stderr}");
    assert!(stderr.contains("starting anyway"), "{stderr}");
    // A server that may lift its hard limit (CAP_SYS_RESOURCE: root, unless a container
    // dropped it) lifts both limits to what --max-peers needs (10,000 + 512 + 512 + 64).
    if may_raise_hard_limit() {
        let (status, stderr, soft) = run_limited(
            &limits,
            &["--max-peers", "10000", "--relay", "off"],
            Duration::from_secs(2),
            true,
        );
        assert!(status.is_none(), "exited: {status:?}\n{stderr}");
        assert_eq!(soft, 11_088, "{stderr}");
    } else {
        println!(
            "SKIPPED: lifting the hard limit needs CAP_SYS_RESOURCE, which this process lacks"
        );
    }
}

/// Whether this process holds CAP_SYS_RESOURCE (bit 24 of `CapEff`), which children started
/// without `setpriv` inherit.
fn may_raise_hard_limit() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}
