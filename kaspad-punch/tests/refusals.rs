//! kaspad flags that would break punch are refused at start, before kaspad opens anything,
//! with a message naming the flag: `--maxinpeers=0` (no P2P listener for inbound punches),
//! `--connect` (kaspad refuses it beside the `--addpeer` slots punch dials through), and an
//! IPv6 `--listen` (aliases would arrive as ::ffff:127.a.b.c).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use punch_tests::{bin_path, unique_temp_dir};

/// Runs kaspad-punch with punch on and `extra`; returns (success, stderr).
fn start(extra: &[&str]) -> (bool, String) {
    let dir = unique_temp_dir("kaspad-punch-refusals");
    let out = Command::new(bin_path("kaspad-punch"))
        .arg("--simnet")
        .arg(format!("--appdir={}", dir.join("app").display()))
        .args(["--nodnsseed", "--disable-upnp", "--yes"])
        // Nothing listens there: these runs must end before punch ever connects.
        .args(["--punch-rendezvous", "127.0.0.1:9"])
        .args([
            "--punch-rendezvous-key",
            "finorsu4gcmotpfda2gbspxaskpnde2nrnzgwk64ek6ki2dq6qqa",
        ])
        .arg("--punch-key-file")
        .arg(dir.join("k.key"))
        .args(extra)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flags_that_break_punch_are_refused_naming_the_flag() {
    for (extra, flag) in [
        (&["--maxinpeers=0"][..], "--maxinpeers"),
        (&["--connect=192.0.2.1:16111"][..], "--connect"),
        (&["--listen=[::]:16111"][..], "--listen"),
        (&["--listen=[::1]:16111"][..], "--listen"),
    ] {
        let (ok, err) = start(extra);
        assert!(!ok, "{extra:?} was accepted");
        assert!(
            err.contains(flag),
            "{extra:?}: the message does not name {flag}: {err}"
        );
    }
}
