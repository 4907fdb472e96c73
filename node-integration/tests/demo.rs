//! The demo as the binary runs it (without the tracing layer): both nodes reach Ready on
//! loopback; with different network names both refuse.
#![allow(clippy::unwrap_used)]

use punch_node::demo::{run, DemoConfig, Timeline};

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
