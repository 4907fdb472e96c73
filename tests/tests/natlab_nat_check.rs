//! The NAT check in the NAT lab, with the real `rendezvous` and `punch` binaries: every router
//! kind is reported as it is built (`natlab/README.md`). The home routers (plain, answering
//! with RSTs, behind a carrier NAT) map endpoint-independently and keep the port, the
//! firewall-only peer has no NAT, and the symmetric router (`--random-fully`) is
//! endpoint-dependent. Between two symmetric peers the client says before dialing that a
//! direct punch cannot work, and the session comes up through the relay.
//!
//! Needs root (network namespaces, iptables): without it the test prints a SKIPPED line to
//! stderr and passes.

use punch_tests::natlab::{
    punch_cmd, skip_without_net_admin, start_rendezvous, wait_connected, Expect, Lab, LinkParams,
    ProcId, RouterKind,
};
use std::time::{Duration, Instant};

use RouterKind::*;

/// Peer `i` sits behind `KINDS[i]`; the two symmetric ones punch to each other.
const KINDS: [RouterKind; 6] = [
    HomeEim,
    HomeEimRst,
    DoubleNat,
    FirewallOnly,
    Symmetric,
    Symmetric,
];
/// Registration, NAT check and process start inside a namespace: local, seconds at most.
const STARTUP: Duration = Duration::from_secs(15);
/// The line `punch` prints once the NAT check answered.
const NAT_LINE: &str = "punch: NAT check: ";

/// Waits until the stderr of `proc` has a line containing `needle`; returns it.
fn wait_stderr(lab: &Lab, proc: ProcId, needle: &str) -> String {
    let deadline = Instant::now() + STARTUP;
    loop {
        let err = lab.stderr(proc).expect("reading stderr");
        if let Some(line) = err.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {STARTUP:?}\n{}",
            lab.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_router_kind_is_reported_as_built() {
    let name = "nat_check";
    if skip_without_net_admin(name) {
        return;
    }
    let lab = Lab::build_peers(name, &KINDS, LinkParams::default()).expect("building lab");
    let rendezvous = start_rendezvous(&lab).expect("starting the rendezvous");

    let mut ids = Vec::new();
    for peer in lab.peers() {
        let i = peer.index();
        let args = ["listen", "--forward", "127.0.0.1:7000", "--allow-any"];
        let cmd = punch_cmd(&lab, &args, &format!("listen{i}.key"), &rendezvous.1);
        let proc = lab
            .spawn(&format!("listen-{i}"), &lab.peer_ns(peer), &cmd)
            .unwrap();
        let line = lab
            .wait_stdout_line(proc, STARTUP, |l| l.starts_with("listening as "))
            .unwrap_or_else(|e| panic!("{peer} listen: {e}\n{}", lab.dump_logs()));
        ids.push(line.split_whitespace().nth(2).unwrap().to_string());
        // `punch` prints the check's result before it says it listens.
        let report = wait_stderr(&lab, proc, NAT_LINE);
        let report = report.split_once(NAT_LINE).unwrap().1.to_string();
        eprintln!("{name}: {peer} ({}): {report}", KINDS[i]);
        let public = lab.peer_public_ip(peer);
        let want = match KINDS[i] {
            HomeEim | HomeEimRst | DoubleNat => {
                format!("endpoint-independent mapping, port preserved (observed {public}:")
            }
            FirewallOnly => format!("no NAT (observed {public}:"),
            // A random port each time: "port preserved" only by chance (1 in 64,000).
            Symmetric => "endpoint-dependent mapping, port ".to_string(),
            other => unreachable!("{other} is not in this lab"),
        };
        assert!(report.starts_with(&want), "{peer} ({}): {report}", KINDS[i]);
        assert!(report.contains(&format!("(observed {public}:")), "{report}");
        assert!(!report.contains("check failed"), "{report}");
    }

    // Symmetric to symmetric: said before the dial, and the relay carries the session.
    let (from, to) = (4, 5);
    let args = ["connect", &ids[to], "--local", "127.0.0.1:9045"];
    let cmd = punch_cmd(&lab, &args, "dial.key", &rendezvous.1);
    let proc = lab.spawn("connect-4-5", &lab.peer_ns(from), &cmd).unwrap();
    let check = wait_stderr(&lab, proc, NAT_LINE);
    assert!(check.contains("endpoint-dependent mapping"), "{check}");
    let warning = wait_stderr(&lab, proc, "direct punch cannot work");
    assert!(warning.contains("both endpoint-dependent"), "{warning}");
    assert!(warning.contains("expecting the relay"), "{warning}");
    let connected = wait_connected(&lab, proc, Expect::Relayed)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.dump_logs()))
        .unwrap_or_else(|| panic!("punch connect exited\n{}", lab.dump_logs()));
    assert_eq!(connected.0, "relayed", "{connected:?}");
    eprintln!(
        "{name}: symmetric -> symmetric: {} after {} ms",
        connected.0, connected.1
    );
}
