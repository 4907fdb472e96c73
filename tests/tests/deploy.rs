//! The systemd units in `deploy/` pass `systemd-analyze verify` without a single warning about
//! them. Skipped, loudly, where systemd-analyze is not installed.
//!
//! verify also checks that ExecStart's binary exists, and the units name the install path
//! (/usr/local/bin). The test verifies copies with ExecStart pointed at an existing binary:
//! the built `rendezvous`, and for kaspad-punch (not built by these tests: it pulls kaspad and
//! RocksDB) the test executable itself; the rest of each unit is verified as shipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use punch_tests::{bin_path, unique_temp_dir};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `unit` from deploy/ copied into `dir` with `/usr/local/bin/<name>` replaced by `exe`.
fn copy_unit(dir: &Path, unit: &str, name: &str, exe: &Path) -> PathBuf {
    let text = std::fs::read_to_string(deploy_dir().join(unit)).expect("reading the unit");
    let installed = format!("/usr/local/bin/{name} ");
    assert!(
        text.contains(&format!("ExecStart={installed}")),
        "{unit}: ExecStart is not {installed}..."
    );
    let path = dir.join(unit);
    let text = text.replace(&installed, &format!("{} ", exe.display()));
    std::fs::write(&path, text).expect("writing the unit copy");
    path
}

#[test]
fn systemd_units_verify_without_warnings() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("\n*** SKIPPED systemd_units_verify_without_warnings: no systemd-analyze ***\n");
        return;
    }
    let dir = unique_temp_dir("punch-deploy");
    let units = [
        copy_unit(
            &dir,
            "rendezvous.service",
            "rendezvous",
            &bin_path("rendezvous"),
        ),
        copy_unit(
            &dir,
            "kaspad-punch.service",
            "kaspad-punch",
            &std::env::current_exe().expect("the test executable"),
        ),
    ];
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("running systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Warnings about other units of the host (seen in containers) are not ours.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(dir.to_str().unwrap_or_default())
                || l.contains("rendezvous.service")
                || l.contains("kaspad-punch.service")
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}):\n{text}",
        out.status
    );
}
