//! Graceful restart of the real rendezvous: on SIGTERM it tells every registered peer
//! `GoingAway` with a reconnect window (registered / `--reconnect-rate`), the peers come back
//! at random moments within it, and the restarted server admits them without refusing or
//! evicting any. Measured with real `punch::Client`s spread over loopback sources (see
//! `punch_tests::restart`).
//!
//! The 10,000-peer run is ignored by default (about a minute, and most of two cores):
//! `cargo test -p punch-tests --test restart -- --ignored --nocapture`.

use std::time::Duration;

use punch_tests::restart::{measure, Layout, Report};

/// Checks what every restart must show: all peers told and back, none lost without notice,
/// nothing refused or evicted by the new server.
fn assert_clean(report: &Report) {
    let n = report.layout.clients;
    assert_eq!(report.told, n as u64, "{report}");
    assert_eq!(report.registered, n as u64, "{report}");
    assert_eq!(report.away, n, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.back.len(), n, "not all came back: {report}");
    for refusal in [
        "rejected_rate",
        "rejected_ip_limit",
        "evicted",
        "silent",
        "handshake_failed",
        "network_full",
    ] {
        assert_eq!(report.counter(refusal), 0, "{refusal}: {report}");
    }
}

#[test]
fn peers_return_spread_over_the_window_after_a_restart() {
    // 400 peers at 100 a second: a 4 s window, long enough to see the spread.
    let layout = Layout {
        clients: 400,
        per_source: 4,
        sources_per_net: 25,
    };
    let report = measure(layout, &["--reconnect-rate", "100"]);
    println!("{report}");
    assert_clean(&report);
    assert_eq!(report.window, Duration::from_secs(4), "{report}");
    // Spread, not a herd: the median comes back near the middle of the window ...
    let p50 = report.quantile(0.5);
    assert!(
        p50 >= Duration::from_secs(1) && p50 <= Duration::from_secs(3),
        "{report}"
    );
    // ... the last within the window, plus the downtime and a few backoff steps for those
    // whose moment fell into it ...
    assert!(
        report.quantile(1.0) <= report.up_after + report.window + Duration::from_secs(3),
        "{report}"
    );
    // ... and the new server never took much more than the rate asked for (uniform arrivals
    // at 100/s; a second holding twice that is a herd).
    assert!(report.peak_per_second <= 200, "{report}");
}

#[test]
#[ignore = "10,000 clients: about a minute of both cores; run with --ignored --nocapture"]
fn ten_thousand_peers_return_within_the_window() {
    let layout = Layout {
        clients: 10_000,
        per_source: 4,
        sources_per_net: 25,
    };
    let report = measure(layout, &[]);
    println!("{report}");
    assert_clean(&report);
    assert_eq!(report.window, Duration::from_secs(10), "{report}");
    assert!(
        report.quantile(1.0) <= report.up_after + report.window + Duration::from_secs(5),
        "{report}"
    );
}
