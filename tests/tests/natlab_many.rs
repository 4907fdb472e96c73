//! The NAT lab with more than two peers ([`Lab::build_peers`]): four peers, each behind its own
//! router (home, home answering with RSTs, carrier-grade, firewall only), the way a test of
//! four Kaspa nodes needs them.
//!
//! One test checks the lab itself with plain TCP probes (each peer reaches the public host with
//! the address and port the address plan says, delayed on its own link; unsolicited SYNs are
//! dropped or refused per router; nothing is left after drop), the other runs the real
//! `rendezvous` and `punch` binaries: every peer listens, and every pair punches a direct
//! session that carries data both ways.
//!
//! Needs root (network namespaces, iptables): without it every test prints a SKIPPED line to
//! stderr and passes.

use punch_tests::natlab::{
    helper_bin, punch_cmd, skip_without_net_admin, start_rendezvous, wait_connected, wait_moved,
    ConnectOpts, ConnectOutcome, Expect, Lab, LinkParams, Peer, ProcId, RouterKind, UPGRADE_BOUND,
};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use RouterKind::*;

/// The four sites of the coming four-node test, peer 0 first.
const KINDS: [RouterKind; 4] = [HomeEim, HomeEimRst, DoubleNat, FirewallOnly];
/// Port probe servers and echo services listen on.
const SERVICE: u16 = 7000;
/// Peer `i` dials the public host from local port `BASE_PORT + i` (port preservation shows).
const BASE_PORT: u16 = 40000;
/// Registration and process start inside a namespace: local, a few seconds at most.
const STARTUP: Duration = Duration::from_secs(15);

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Names of the existing namespaces starting with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Drops the lab and checks that `ip netns list` shows none of its namespaces any more.
fn drop_and_check_clean(lab: Lab) {
    let prefix = lab.prefix().to_string();
    drop(lab);
    let left = namespaces_with(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn four_sites_map_filter_delay_and_clean_up() {
    let name = "many_lab";
    if skip_without_net_admin(name) {
        return;
    }
    let delay_ms = 20;
    let lab = Lab::build_peers(name, &KINDS, LinkParams::delay(delay_ms)).expect("building lab");
    assert_eq!(lab.peer_count(), 4);
    assert_eq!(
        lab.topology().to_string(),
        "home-eim/home-eim-rst/double-nat/firewall-only"
    );
    // inet, rv, four edge routers, DoubleNat's home router, four peers.
    let names = namespaces_with(lab.prefix());
    assert_eq!(names.len(), 11, "{names:?}");

    let rv = lab
        .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
        .unwrap();
    for peer in lab.peers() {
        let i = peer.index();
        let ns = lab.peer_ns(peer);
        // A listening peer, so that only its router can keep an unsolicited SYN out.
        lab.tcp_server(&ns, sa(lab.peer_lan_ip(peer), SERVICE))
            .unwrap();
        let port = BASE_PORT + i as u16;
        let opts = ConnectOpts {
            bind: Some(sa(lab.peer_lan_ip(peer), port)),
            ..ConnectOpts::default()
        };
        let out = lab.tcp_connect(&ns, rv, opts).unwrap();
        // Every kind here keeps the port (MASQUERADE, twice for DoubleNat, or no NAT).
        assert_eq!(
            out.observed(),
            Some(sa(lab.peer_public_ip(peer), port)),
            "{peer} ({}): {out:?}\n{}",
            KINDS[i],
            lab.dump_logs()
        );
        // The handshake crosses this peer's delayed link twice, the rendezvous link never.
        let ConnectOutcome::Connected { elapsed, .. } = out else {
            unreachable!("observed() is Some only for a connection");
        };
        let rtt = Duration::from_millis(2 * u64::from(delay_ms));
        assert!(
            elapsed >= rtt && elapsed < rtt * 10,
            "{peer}: connect took {elapsed:?}"
        );

        let target = sa(lab.peer_public_ip(peer), SERVICE);
        let unsolicited = lab
            .tcp_connect(
                &lab.rendezvous_ns(),
                target,
                ConnectOpts {
                    timeout: Duration::from_millis(1500),
                    ..ConnectOpts::default()
                },
            )
            .unwrap();
        let as_expected = match KINDS[i] {
            HomeEimRst => matches!(unsolicited, ConnectOutcome::Refused { .. }),
            _ => matches!(unsolicited, ConnectOutcome::TimedOut { .. }),
        };
        assert!(
            as_expected,
            "{peer} ({}): unsolicited SYN to {target} gave {unsolicited:?}",
            KINDS[i]
        );
    }
    // The carrier NAT is in front: peer 2's traffic leaves with its edge's WAN address, and
    // the FirewallOnly peer has a public address of its own in its /28.
    assert_eq!(
        lab.peer_public_ip(2),
        "203.0.113.30".parse::<IpAddr>().unwrap()
    );
    assert_eq!(lab.peer_lan_ip(2), "192.168.3.2".parse::<IpAddr>().unwrap());
    assert_eq!(
        lab.peer_public_ip(3),
        "198.51.100.50".parse::<IpAddr>().unwrap()
    );
    drop_and_check_clean(lab);
}

/// One `punch connect` from peer `from` to peer `to`, exposing the tunnel at `local`.
struct Dial {
    from: Peer,
    to: Peer,
    local: SocketAddr,
    proc: ProcId,
}

#[test]
fn four_sites_punch_every_pair() {
    let name = "many_punch";
    if skip_without_net_admin(name) {
        return;
    }
    let lab = Lab::build_peers(name, &KINDS, LinkParams::default()).expect("building lab");
    let rendezvous = start_rendezvous(&lab).expect("starting the rendezvous");

    // Every peer serves an echo through `punch listen --allow-any`.
    let mut ids = Vec::new();
    for peer in lab.peers() {
        let ns = lab.peer_ns(peer);
        let service = format!("127.0.0.1:{SERVICE}");
        let mut echo = Command::new(helper_bin("natlab_tcp").unwrap());
        echo.args(["echo", &service, "--max-secs", "120"]);
        let echo = lab
            .spawn(&format!("echo-{}", peer.index()), &ns, &echo)
            .unwrap();
        lab.wait_stdout_line(echo, STARTUP, |l| l.starts_with("listening "))
            .unwrap();
        let args = ["listen", "--forward", &service, "--allow-any"];
        let listen = punch_cmd(
            &lab,
            &args,
            &format!("listen{}.key", peer.index()),
            &rendezvous.1,
        );
        let listen = lab
            .spawn(&format!("listen-{}", peer.index()), &ns, &listen)
            .unwrap();
        let line = lab
            .wait_stdout_line(listen, STARTUP, |l| l.starts_with("listening as "))
            .unwrap_or_else(|e| panic!("{peer} listen: {e}\n{}", lab.dump_logs()));
        ids.push(line.split_whitespace().nth(2).unwrap().to_string());
    }

    // Every pair at once, the lower index dialing; each dialer has its own identity.
    let started = Instant::now();
    let mut dials = Vec::new();
    for from in lab.peers() {
        for to in lab.peers().filter(|to| *to > from) {
            let (i, j) = (from.index(), to.index());
            let local: SocketAddr = format!("127.0.0.1:{}", 9000 + 10 * i + j).parse().unwrap();
            let args = ["connect", &ids[j], "--local", &local.to_string()];
            let cmd = punch_cmd(&lab, &args, &format!("dial{i}{j}.key"), &rendezvous.1);
            let proc = lab
                .spawn(&format!("connect-{i}-{j}"), &lab.peer_ns(from), &cmd)
                .unwrap();
            dials.push(Dial {
                from,
                to,
                local,
                proc,
            });
        }
    }
    assert_eq!(dials.len(), 6);

    for dial in &dials {
        let what = format!(
            "{} ({}) -> {} ({})",
            dial.from,
            KINDS[dial.from.index()],
            dial.to,
            KINDS[dial.to.index()]
        );
        let fail = |e: &dyn std::fmt::Display| -> ! {
            panic!("{what}: {e}\n{}", lab.dump_logs());
        };
        // No symmetric NAT among the four: every pair must end up direct.
        let Some((path, ms, remote)) =
            wait_connected(&lab, dial.proc, Expect::Direct).unwrap_or_else(|e| fail(&e))
        else {
            fail(&"punch connect exited without a session");
        };
        match path.as_str() {
            "direct" => {
                // The dialer sees the other peer at its public address.
                let remote: SocketAddr = remote.parse().unwrap_or_else(|e| fail(&e));
                assert_eq!(remote.ip(), lab.peer_public_ip(dial.to), "{what}");
            }
            "relayed" => {
                let moved = wait_moved(&lab, dial.proc, UPGRADE_BOUND).unwrap_or_else(|e| fail(&e));
                if moved.is_none() {
                    fail(&"relayed session did not move to a direct path");
                }
            }
            other => fail(&format!("unknown path {other:?}")),
        }
        eprintln!("{name}: {what}: {path} after {ms} ms");
        lab.wait_stdout_line(dial.proc, STARTUP, |l| l.starts_with("local "))
            .unwrap_or_else(|e| fail(&e));
        // A line through the tunnel comes back from the echo behind the other peer.
        let opts = ConnectOpts {
            timeout: Duration::from_secs(5),
            ..ConnectOpts::default()
        };
        match lab.tcp_connect(&lab.peer_ns(dial.from), dial.local, opts) {
            Ok(ConnectOutcome::Connected { local, reply, .. }) => {
                assert_eq!(reply, format!("hi {local}"), "{what}");
            }
            other => fail(&format!("tunnel probe: {other:?}")),
        }
    }
    eprintln!("{name}: six pairs direct in {:?}", started.elapsed());
    drop_and_check_clean(lab);
}
