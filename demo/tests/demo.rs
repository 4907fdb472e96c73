//! The demo: both nodes reach Ready on loopback (in-process) and, with the rights for network
//! namespaces, in NAT mode (the `punch-demo` binary, each node behind its own home router);
//! with different network names both refuse.
#![allow(clippy::unwrap_used)]

use punch_demo::{run, DemoConfig, Timeline};

#[tokio::test]
async fn demo_reaches_ready_on_both_sides() {
    let timeline = Timeline::new();
    let report = run(DemoConfig::default(), timeline.clone()).await.unwrap();
    assert!(report.success(), "{report:?}\n{}", timeline.render());
    assert_eq!(report.mode, "loopback");
    let text = timeline.render();
    for needle in [
        "registered",
        "authenticated session",
        "Version received",
        "Verack received",
        "Ready (outbound",
        "Ready (inbound",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn demo_with_different_networks_fails() {
    let timeline = Timeline::new();
    let config = DemoConfig {
        network_b: "kaspa-testnet-10".into(),
        ..DemoConfig::default()
    };
    let report = run(config, timeline.clone()).await.unwrap();
    assert!(!report.success());
    assert!(
        report
            .rejections
            .iter()
            .any(|r| r.contains("Network mismatch")),
        "{report:?}"
    );
}

/// The `punch-demo` binary in NAT mode: each node in its own network namespace behind its
/// own home router (NAT, unsolicited inbound dropped), the rendezvous on a public host.
fn run_nat_demo(extra: &[&str]) -> Option<(bool, String)> {
    if punch_natlab::skip_without_net_admin("punch-demo --mode nat") {
        return None;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_punch-demo"))
        .args(["--mode", "nat"])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn nat_demo_reaches_ready_behind_two_home_routers() {
    let Some((ok, text)) = run_nat_demo(&[]) else {
        return;
    };
    assert!(ok, "{text}");
    for needle in [
        "mode: nat",
        // The rendezvous sees each node at its router's public address, not its LAN address.
        "B    punch: registered as",
        "(observed 203.0.113.20:",
        "(observed 203.0.113.10:",
        "punch: authenticated session, path direct to 203.0.113.20:",
        "punch: authenticated session, path direct to 203.0.113.10:",
        "kaspa: Version received",
        "kaspa: Verack received",
        "Ready (outbound, protocol 11)",
        "Ready (inbound, protocol 11)",
        "result: both nodes reached Ready over the punched session (nat mode)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn nat_demo_with_different_networks_fails() {
    let Some((ok, text)) = run_nat_demo(&["--network-b", "kaspa-testnet-10"]) else {
        return;
    };
    assert!(!ok, "{text}");
    assert!(text.contains("Network mismatch"), "{text}");
    assert!(text.contains("result: FAILED"), "{text}");
}
