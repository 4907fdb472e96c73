//! Self-tests of the NAT lab (`punch_tests::natlab`) with plain TCP probes, no punch binaries:
//! each router kind maps, filters and answers as documented in `natlab/README.md`, the
//! delay and loss parameters take effect, and nothing is left behind.
//!
//! Needs root (network namespaces, iptables): without it every test prints a SKIPPED line to
//! stderr and passes. `bash scripts/setup.sh` installs iptables.

use punch_tests::natlab::{
    skip_without_net_admin, sweep_leftovers, ConnectOpts, ConnectOutcome, Lab, LinkParams,
    RouterKind, Side, Topology,
};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use RouterKind::*;

/// Port probe servers listen on.
const SERVICE: u16 = 7000;
/// Fixed local port peer A dials from (so port preservation is visible).
const PORT_A: u16 = 40001;
/// Fixed local port peer B dials from.
const PORT_B: u16 = 40002;

/// Builds a lab, or prints a SKIPPED line and returns `None` when this machine cannot.
fn lab(name: &str, topology: Topology, link: LinkParams) -> Option<Lab> {
    if skip_without_net_admin(name) {
        return None;
    }
    let started = Instant::now();
    let lab = Lab::build(name, topology, link).expect("building lab");
    eprintln!("{name}: lab {topology} built in {:?}", started.elapsed());
    Some(lab)
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn from_port(lab: &Lab, side: Side, port: u16) -> ConnectOpts {
    ConnectOpts {
        bind: Some(sa(lab.peer_lan_ip(side), port)),
        ..ConnectOpts::default()
    }
}

/// A dial expected to be dropped: short, since a working path answers in milliseconds.
fn probe_opts() -> ConnectOpts {
    ConnectOpts {
        timeout: Duration::from_millis(1500),
        ..ConnectOpts::default()
    }
}

/// Dials and insists on a connection; returns the address the far end saw.
fn observed(lab: &Lab, ns: &str, target: SocketAddr, opts: ConnectOpts) -> SocketAddr {
    let outcome = lab.tcp_connect(ns, target, opts).expect("probe");
    match outcome.observed() {
        Some(addr) => addr,
        None => panic!(
            "{}: dial {target} from {ns} gave {outcome:?}\n{}",
            lab.name(),
            lab.dump_logs()
        ),
    }
}

fn connect_ms(outcome: &ConnectOutcome) -> f64 {
    match outcome {
        ConnectOutcome::Connected { elapsed, .. } => elapsed.as_secs_f64() * 1000.0,
        other => panic!("expected a connection, got {other:?}"),
    }
}

#[test]
fn home_eim_keeps_the_port_for_every_destination_and_filters() {
    let Some(lab) = lab(
        "home_eim",
        Topology::Pair(HomeEim, Public),
        LinkParams::default(),
    ) else {
        return;
    };
    let rv = lab
        .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
        .unwrap();
    let b = lab
        .tcp_server(&lab.peer_ns(Side::B), sa(lab.peer_lan_ip(Side::B), SERVICE))
        .unwrap();
    let wan = sa(lab.peer_public_ip(Side::A), PORT_A);
    let pa = lab.peer_ns(Side::A);
    assert_eq!(
        observed(&lab, &pa, rv, from_port(&lab, Side::A, PORT_A)),
        wan
    );
    assert_eq!(
        observed(&lab, &pa, b, from_port(&lab, Side::A, PORT_A)),
        wan
    );
    // The mapping exists now, but only for the endpoints A talked to: a new source is dropped.
    let unsolicited = lab
        .tcp_connect(&lab.rendezvous_ns(), wan, probe_opts())
        .unwrap();
    assert!(
        matches!(unsolicited, ConnectOutcome::TimedOut { .. }),
        "{unsolicited:?}"
    );
}

#[test]
fn symmetric_gives_each_destination_its_own_port() {
    let Some(lab) = lab(
        "symmetric",
        Topology::Pair(Symmetric, Public),
        LinkParams::default(),
    ) else {
        return;
    };
    let rv = lab
        .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
        .unwrap();
    let b = lab
        .tcp_server(&lab.peer_ns(Side::B), sa(lab.peer_lan_ip(Side::B), SERVICE))
        .unwrap();
    let pa = lab.peer_ns(Side::A);
    let to_rv = observed(&lab, &pa, rv, from_port(&lab, Side::A, PORT_A));
    let to_b = observed(&lab, &pa, b, from_port(&lab, Side::A, PORT_A));
    eprintln!("symmetric: same local port seen as {to_rv} and {to_b}");
    assert_eq!(to_rv.ip(), lab.peer_public_ip(Side::A));
    assert_eq!(to_b.ip(), lab.peer_public_ip(Side::A));
    // Random ports: equal by chance about once in 30 000 runs.
    assert_ne!(to_rv.port(), to_b.port());
}

#[test]
fn double_nat_keeps_the_port_through_both_nats() {
    let Some(lab) = lab(
        "double_nat",
        Topology::Pair(DoubleNat, Public),
        LinkParams::default(),
    ) else {
        return;
    };
    let rv = lab
        .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
        .unwrap();
    let b = lab
        .tcp_server(&lab.peer_ns(Side::B), sa(lab.peer_lan_ip(Side::B), SERVICE))
        .unwrap();
    let wan = sa(lab.peer_public_ip(Side::A), PORT_A);
    let pa = lab.peer_ns(Side::A);
    assert_eq!(
        observed(&lab, &pa, rv, from_port(&lab, Side::A, PORT_A)),
        wan
    );
    assert_eq!(
        observed(&lab, &pa, b, from_port(&lab, Side::A, PORT_A)),
        wan
    );
}

#[test]
fn unsolicited_syns_are_dropped_silently() {
    for (name, a, b) in [
        ("drop_home_fw", HomeEim, FirewallOnly),
        ("drop_sym_dnat", Symmetric, DoubleNat),
    ] {
        let Some(lab) = lab(name, Topology::Pair(a, b), LinkParams::default()) else {
            return;
        };
        for side in Side::BOTH {
            // A listening peer: only the router can be what keeps the SYN out.
            lab.tcp_server(&lab.peer_ns(side), sa("0.0.0.0".parse().unwrap(), SERVICE))
                .unwrap();
            let target = sa(lab.peer_public_ip(side), SERVICE);
            let out = lab
                .tcp_connect(&lab.rendezvous_ns(), target, probe_opts())
                .unwrap();
            assert!(
                matches!(out, ConnectOutcome::TimedOut { .. }),
                "{name} side {side:?}: unsolicited SYN to {target} gave {out:?}"
            );
        }
        // Outbound still works, and a FirewallOnly peer is seen with its own address and port.
        let rv = lab
            .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
            .unwrap();
        let seen = observed(
            &lab,
            &lab.peer_ns(Side::B),
            rv,
            from_port(&lab, Side::B, PORT_B),
        );
        assert_eq!(seen.ip(), lab.peer_public_ip(Side::B));
        if b == FirewallOnly {
            assert_eq!(seen, sa(lab.peer_lan_ip(Side::B), PORT_B));
        }
    }
}

#[test]
fn home_eim_rst_refuses_unsolicited_syns_quickly() {
    let Some(lab) = lab(
        "home_rst",
        Topology::Pair(HomeEimRst, HomeEim),
        LinkParams::default(),
    ) else {
        return;
    };
    let target = sa(lab.peer_public_ip(Side::A), SERVICE);
    let out = lab
        .tcp_connect(&lab.rendezvous_ns(), target, probe_opts())
        .unwrap();
    match out {
        ConnectOutcome::Refused { elapsed } => assert!(elapsed < Duration::from_millis(500)),
        other => panic!("expected a RST from {target}, got {other:?}"),
    }
    // Same mapping behaviour as HomeEim for outbound traffic.
    let rv = lab
        .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
        .unwrap();
    let seen = observed(
        &lab,
        &lab.peer_ns(Side::A),
        rv,
        from_port(&lab, Side::A, PORT_A),
    );
    assert_eq!(seen, sa(lab.peer_public_ip(Side::A), PORT_A));
}

#[test]
fn public_peer_is_reachable_inbound() {
    let Some(lab) = lab(
        "public",
        Topology::Pair(Public, HomeEim),
        LinkParams::default(),
    ) else {
        return;
    };
    let a = lab
        .tcp_server(&lab.peer_ns(Side::A), sa(lab.peer_lan_ip(Side::A), SERVICE))
        .unwrap();
    let seen = observed(&lab, &lab.rendezvous_ns(), a, ConnectOpts::default());
    assert_eq!(seen.ip(), lab.rendezvous_ip());
    let seen = observed(
        &lab,
        &lab.peer_ns(Side::B),
        a,
        from_port(&lab, Side::B, PORT_B),
    );
    assert_eq!(seen, sa(lab.peer_public_ip(Side::B), PORT_B));
}

#[test]
fn same_router_peers_reach_each_other_by_lan_address() {
    let Some(lab) = lab("same_router", Topology::SameRouter, LinkParams::default()) else {
        return;
    };
    let b = lab
        .tcp_server(&lab.peer_ns(Side::B), sa(lab.peer_lan_ip(Side::B), SERVICE))
        .unwrap();
    let seen = observed(
        &lab,
        &lab.peer_ns(Side::A),
        b,
        from_port(&lab, Side::A, PORT_A),
    );
    assert_eq!(
        seen,
        sa(lab.peer_lan_ip(Side::A), PORT_A),
        "no NAT inside the LAN"
    );
    let rv = lab
        .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
        .unwrap();
    let seen_a = observed(
        &lab,
        &lab.peer_ns(Side::A),
        rv,
        from_port(&lab, Side::A, PORT_A),
    );
    let seen_b = observed(
        &lab,
        &lab.peer_ns(Side::B),
        rv,
        from_port(&lab, Side::B, PORT_B),
    );
    assert_eq!(seen_a, sa(lab.peer_public_ip(Side::A), PORT_A));
    assert_eq!(seen_b, sa(lab.peer_public_ip(Side::B), PORT_B));
    assert_eq!(seen_a.ip(), seen_b.ip());
}

#[test]
fn delay_applies_to_each_wan_link_both_ways() {
    const DELAY_MS: u32 = 50;
    let topo = Topology::Pair(Public, Public);
    let Some(slow) = lab("delay_50", topo, LinkParams::delay(DELAY_MS)) else {
        return;
    };
    let rv = slow
        .tcp_server(&slow.rendezvous_ns(), sa(slow.rendezvous_ip(), SERVICE))
        .unwrap();
    let b = slow
        .tcp_server(
            &slow.peer_ns(Side::B),
            sa(slow.peer_lan_ip(Side::B), SERVICE),
        )
        .unwrap();
    let pa = slow.peer_ns(Side::A);
    let d = f64::from(DELAY_MS);
    // A -> rendezvous crosses one delayed link: the handshake RTT is 2 delays.
    let to_rv = connect_ms(&slow.tcp_connect(&pa, rv, ConnectOpts::default()).unwrap());
    // A -> B crosses two: 4 delays.
    let to_b = connect_ms(&slow.tcp_connect(&pa, b, ConnectOpts::default()).unwrap());
    eprintln!("delay {DELAY_MS} ms: connect to rendezvous {to_rv:.1} ms, to peer {to_b:.1} ms");
    assert!(
        (2.0 * d * 0.95..2.0 * d + 500.0).contains(&to_rv),
        "{to_rv}"
    );
    assert!((4.0 * d * 0.95..4.0 * d + 500.0).contains(&to_b), "{to_b}");
    drop(slow);

    let Some(fast) = lab("delay_0", topo, LinkParams::default()) else {
        return;
    };
    let rv = fast
        .tcp_server(&fast.rendezvous_ns(), sa(fast.rendezvous_ip(), SERVICE))
        .unwrap();
    let to_rv = connect_ms(
        &fast
            .tcp_connect(&fast.peer_ns(Side::A), rv, ConnectOpts::default())
            .unwrap(),
    );
    eprintln!("no delay: connect to rendezvous {to_rv:.1} ms");
    assert!(to_rv < 50.0, "{to_rv}");
}

#[test]
fn full_loss_blackholes_the_wan_link() {
    let link = LinkParams {
        delay_ms: 0,
        loss_percent: 100.0,
        delay_ms_b: None,
    };
    let Some(lab) = lab("loss_100", Topology::Pair(Public, Public), link) else {
        return;
    };
    let rv = lab
        .tcp_server(&lab.rendezvous_ns(), sa(lab.rendezvous_ip(), SERVICE))
        .unwrap();
    let out = lab
        .tcp_connect(&lab.peer_ns(Side::A), rv, probe_opts())
        .unwrap();
    assert!(matches!(out, ConnectOutcome::TimedOut { .. }), "{out:?}");
}

/// Both peers dial each other's WAN address from the port the other dials: TCP simultaneous
/// open through two conntrack NATs. B starts `stagger` after A, so A's first SYN meets B's
/// router before B's mapping exists: dropped (HomeEim: B's SYN must then get through A's
/// mapping) or answered with a RST (HomeEimRst: A must re-dial).
fn simultaneous_open(name: &str, kind: RouterKind, stagger: Duration) {
    let Some(lab) = lab(name, Topology::Pair(kind, kind), LinkParams::delay(20)) else {
        return;
    };
    // Redial at once after a RST (as punch does): a RST leaves the dialer's own conntrack entry
    // in CLOSE until its next SYN, and the other side's SYN arriving then is reset too. With a
    // pause between redials the entry sits in CLOSE for the pause each cycle and both sides can
    // lock into refusing each other (seen: 1 run in 12 with 50 ms pauses). Each attempt waits
    // 5 s, past the kernel's SYN retransmits at 1 s and 3 s, so a slow start of B on a loaded
    // machine does not turn A's silently dropped first SYN into a second attempt.
    let opts = |side: Side, port: u16| ConnectOpts {
        attempts: 40,
        timeout: Duration::from_secs(5),
        retry_gap: Duration::ZERO,
        ..from_port(&lab, side, port)
    };
    let (oa, ob) = (opts(Side::A, PORT_A), opts(Side::B, PORT_B));
    let ta = sa(lab.peer_public_ip(Side::B), PORT_B);
    let tb = sa(lab.peer_public_ip(Side::A), PORT_A);
    let a = lab
        .tcp_connect_start(&lab.peer_ns(Side::A), ta, oa)
        .expect("starting A");
    std::thread::sleep(stagger);
    let b = lab
        .tcp_connect_start(&lab.peer_ns(Side::B), tb, ob)
        .expect("starting B");
    let (ra, rb) = (
        lab.connect_outcome(a, oa).expect("A's outcome"),
        lab.connect_outcome(b, ob).expect("B's outcome"),
    );
    eprintln!("{name}: A {ra:?}\n{name}: B {rb:?}");
    let hi = |side: Side, port: u16| format!("hi {}", sa(lab.peer_lan_ip(side), port));
    for (outcome, expect) in [(&ra, hi(Side::B, PORT_B)), (&rb, hi(Side::A, PORT_A))] {
        match outcome {
            ConnectOutcome::Connected { reply, .. } => assert_eq!(*reply, expect),
            other => panic!("{name}: {other:?}\n{}", lab.dump_logs()),
        }
    }
    // A's first SYN met B's router before B's mapping existed.
    let ConnectOutcome::Connected { attempt, .. } = ra else {
        unreachable!("checked above")
    };
    // With RST routers A's first SYN is usually refused (the RST itself is checked by the
    // home_eim_rst test), but not always: when starting A's process takes longer than the
    // stagger, the SYNs cross in flight and A connects at once. A dropping router must never
    // cost A an attempt.
    if kind != HomeEimRst {
        assert_eq!(
            attempt, 1,
            "a silently dropped SYN must not fail A's connect"
        );
    }
}

#[test]
fn simultaneous_open_through_two_home_eim_nats() {
    simultaneous_open("simopen_eim", HomeEim, Duration::from_millis(300));
}

/// Ignored in the default run: about 1 run in 10 on a loaded machine both probes lock into
/// refusing each other (the prober has no listener on its port, so a SYN arriving between a
/// refused socket and the next one is reset by the host itself). RST routers on both sides are
/// covered with the real client by the matrix's `rst_rst` cases. Run with `--ignored`.
#[test]
#[ignore = "flaky under load; covered by natlab_matrix rst_rst"]
fn simultaneous_open_through_two_rst_nats_with_retries() {
    simultaneous_open("simopen_rst", HomeEimRst, Duration::from_millis(300));
}

#[test]
fn drop_kills_processes_and_removes_namespaces() {
    let topo = Topology::Pair(DoubleNat, Symmetric);
    let Some(mut lab) = lab("teardown", topo, LinkParams::delay(5)) else {
        return;
    };
    let mut sleeper = Command::new("sleep");
    sleeper.arg("300");
    let id = lab
        .spawn("sleeper", &lab.peer_ns(Side::A), &sleeper)
        .unwrap();
    assert!(lab.try_wait(id).unwrap().is_none());
    let prefix = lab.prefix().to_string();
    let names = lab.namespaces().to_vec();
    let dir = lab.case_dir().to_path_buf();
    assert_eq!(names.len(), 7, "{names:?}"); // inet rv, ea ha pa (double NAT), eb pb
    for n in &names {
        assert!(std::path::Path::new("/run/netns").join(n).exists(), "{n}");
    }
    lab.teardown();
    lab.teardown(); // idempotent
    drop(lab);
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let left: Vec<&String> = left.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!dir.exists(), "log dir {dir:?} not removed");
}

#[test]
fn sweep_removes_namespaces_of_dead_processes_only() {
    if skip_without_net_admin("sweep") {
        return;
    }
    // No process has pid >= pid_max, so this creator is certainly dead.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    let dead = format!("nlab-{}-0-sweeptest", pid_max.trim());
    let alive = format!("nlab-{}-999-sweeptest", std::process::id());
    for n in [&dead, &alive] {
        let ok = Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let removed = sweep_leftovers();
    let exists = |n: &str| std::path::Path::new("/run/netns").join(n).exists();
    let alive_kept = exists(&alive);
    for n in [&alive, &dead] {
        if exists(n) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
    assert!(removed.contains(&dead), "{removed:?}");
    assert!(alive_kept, "a live process's namespace was swept");
}
