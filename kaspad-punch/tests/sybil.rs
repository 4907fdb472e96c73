//! Sybils against a real `kaspad-punch`'s inbound slots, on loopback with the real
//! `rendezvous`: 20 fresh identities from one IP (127.0.0.9) punch to the node at once with
//! the real `punch connect`. At most the per-IP cap (2) get a session, those carry no Kaspa
//! connection and are closed after the idle timeout, and an honest private node (another
//! kaspad-punch, from another IP, finding the victim by discovery) still connects.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use punch_proto::Keypair;
use punch_tests::{bin_path, unique_temp_dir, RendezvousProcess};

const SYBILS: usize = 20;
const SYBIL_IP: &str = "127.0.0.9";
const PER_IP_CAP: usize = 2;
const IDLE_SECS: u64 = 4;

/// Children killed and waited for on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kaspad_punch(dir: &Path, name: &str, rv: &RendezvousProcess, rpc: u16, extra: &[&str]) -> Child {
    let log = File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(bin_path("kaspad-punch"))
        .arg("--simnet")
        .arg(format!(
            "--appdir={}",
            dir.join(format!("{name}-app")).display()
        ))
        .args(["--nodnsseed", "--disable-upnp", "--yes"])
        .arg(format!("--rpclisten=127.0.0.1:{rpc}"))
        .arg(format!("--listen=127.0.0.1:{}", free_port()))
        .args(["--punch-rendezvous", &rv.addr().to_string()])
        .args(["--punch-rendezvous-key", &rv.identity().to_string()])
        .arg("--punch-key-file")
        .arg(dir.join(format!("{name}.key")))
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits for `what` to hold, polling; Err with the last state after `within`.
fn wait(within: Duration, mut what: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match what() {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > within => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Node ids `kaspa-peers` lists as connected to the node whose RPC is on `rpc`.
fn connected(rpc: u16) -> Result<(String, Vec<String>), String> {
    let out = Command::new(bin_path("kaspa-peers"))
        .args(["--rpc", &format!("127.0.0.1:{rpc}"), "--timeout-secs", "5"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "kaspa-peers: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (own, peers) = common::parse_peers(&text)?;
    Ok((own, peers.into_iter().map(|p| p.id).collect()))
}

#[test]
fn sybils_from_one_ip_get_at_most_the_cap_and_an_honest_node_still_connects() {
    let dir = unique_temp_dir("kaspad-punch-sybil");
    let rv = RendezvousProcess::spawn(&[]);
    let mut procs = Procs(Vec::new());
    let victim_rpc = free_port();
    let idle = IDLE_SECS.to_string();
    procs.0.push(kaspad_punch(
        &dir,
        "victim",
        &rv,
        victim_rpc,
        &["--punch-outpeers", "0", "--punch-inbound-idle-secs", &idle],
    ));
    let victim_log = dir.join("victim.log");
    // The key file is written by the node at start; wait for its registration first.
    wait(Duration::from_secs(60), || {
        read(&victim_log)
            .contains("registered with the rendezvous")
            .then_some(())
            .ok_or_else(|| format!("victim not registered: {}", read(&victim_log)))
    })
    .unwrap();
    let victim_id = Keypair::load_or_generate(&dir.join("victim.key"))
        .unwrap()
        .0
        .public();

    // The Sybils: fresh keys, one source IP, all at once; each holds its stream open.
    let mut sybils = Procs(Vec::new());
    let started = Instant::now();
    for i in 0..SYBILS {
        let log = File::create(dir.join(format!("sybil{i}.log"))).unwrap();
        sybils.0.push(
            Command::new(bin_path("punch"))
                .arg("connect")
                .arg(victim_id.to_string())
                .args(["--rendezvous", &rv.addr().to_string()])
                .args(["--rendezvous-key", &rv.identity().to_string()])
                .arg("--key-file")
                .arg(dir.join(format!("sybil{i}.key")))
                .args(["--bind", &format!("{SYBIL_IP}:0")])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
    }
    // Every Sybil's punch is decided (session refused or held) within a few seconds.
    let accepted = |log: &str| {
        log.lines()
            .filter(|l| l.contains("punched peer connected") && l.contains(SYBIL_IP))
            .count()
    };
    wait(Duration::from_secs(20), || {
        let log = read(&victim_log);
        let refused = log.matches("inbound session refused").count();
        let held_back: usize = log
            .lines()
            .filter(|l| l.contains("inbound session refused"))
            .filter_map(|l| {
                l.split("held_back=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        let decided = accepted(&log) + refused + held_back;
        (decided >= SYBILS || accepted(&log) >= PER_IP_CAP)
            .then_some(())
            .ok_or(format!("{decided} of {SYBILS} decided"))
    })
    .unwrap();
    // Let every punch land, then count: never more than the cap from the one IP.
    std::thread::sleep(Duration::from_secs(2));
    let log = read(&victim_log);
    let got_in = accepted(&log);
    assert!(
        (1..=PER_IP_CAP).contains(&got_in),
        "{got_in} Sybil sessions accepted (cap {PER_IP_CAP}):\n{log}"
    );
    assert!(
        log.contains("inbound session refused") && log.contains("from 127.0.0.9 already"),
        "no per-IP refusal logged:\n{log}"
    );
    // The operator sees the same in the victim's status: refusals by the per-IP cap, and
    // never more than the cap held from one IP.
    let out = Command::new(bin_path("punch"))
        .args(["status", "--json", "--key-file"])
        .arg(dir.join("victim.key"))
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "victim status: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let inbound = &doc["inbound"];
    assert!(
        inbound["refused"]["per_ip"].as_u64().unwrap_or(0) >= 1
            && inbound["most_from_one_ip"].as_u64().unwrap_or(99) <= PER_IP_CAP as u64
            && doc["caps"]["inbound_per_ip"]["max"] == PER_IP_CAP,
        "victim status: {doc:#}"
    );
    // The ones that got in carry no Kaspa connection: closed after the idle timeout, and the
    // Sybils' `punch connect` ends with its session.
    wait(Duration::from_secs(IDLE_SECS * 2 + 10), || {
        let running = sybils
            .0
            .iter_mut()
            .map(|c| c.try_wait())
            .filter(|w| matches!(w, Ok(None)))
            .count();
        (running == 0)
            .then_some(())
            .ok_or(format!("{running} Sybil sessions still open"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", read(&victim_log)));
    eprintln!(
        "{SYBILS} Sybils from {SYBIL_IP}: {got_in} got in, all closed {:?} after they started",
        started.elapsed()
    );
    assert!(
        read(&victim_log).contains("idle inbound punched session closed"),
        "no idle eviction logged"
    );

    // An honest private node (another source IP: 127.0.0.1) finds the victim by discovery
    // and connects; it does not accept punches, so it dials every peer it picks.
    let honest_rpc = free_port();
    let honest_started = Instant::now();
    procs.0.push(kaspad_punch(
        &dir,
        "honest",
        &rv,
        honest_rpc,
        &["--punch-no-accept"],
    ));
    let honest_log = dir.join("honest.log");
    let mut last = String::new();
    wait(Duration::from_secs(90), || {
        let (victim_node, victim_peers) = connected(victim_rpc)?;
        let (honest_node, honest_peers) = connected(honest_rpc)?;
        last =
            format!("victim {victim_node} {victim_peers:?}, honest {honest_node} {honest_peers:?}");
        (victim_peers.contains(&honest_node) && honest_peers.contains(&victim_node))
            .then_some(())
            .ok_or_else(|| last.clone())
    })
    .unwrap_or_else(|e| {
        panic!(
            "honest node not connected: {e}\nvictim:\n{}\nhonest:\n{}",
            read(&victim_log),
            read(&honest_log)
        )
    });
    eprintln!(
        "the honest node connected {:?} after its start",
        honest_started.elapsed()
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
