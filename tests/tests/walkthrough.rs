//! The README's operator walkthrough, run as written: the shell block after
//! `<!-- walkthrough -->` in README.md, with this build's binaries first on `PATH` (the README
//! has the reader put `target/release` there). It starts a rendezvous from a configuration
//! file with `--metrics`, two `punch` peers on loopback, fetches the rendezvous's metrics page
//! through the punched tunnel, and asks both peers for their status; the test checks what the
//! README says it prints.
//!
//! It uses the README's fixed loopback ports (7717, 9717, 9718, 9000), which no other test
//! binds on the host's loopback (the NAT lab's 9000 is inside its namespaces).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use punch_tests::{bin_path, unique_temp_dir};

/// The walkthrough takes about a second; this bounds a hang (a wait loop in the block is
/// bounded too, at 10 s each).
const HANG: Duration = Duration::from_secs(60);

fn walkthrough_block() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(readme).unwrap();
    let (_, after) = text
        .split_once("<!-- walkthrough -->")
        .expect("README.md marks its walkthrough block");
    let body = after
        .split_once("```sh\n")
        .expect("a sh block follows the marker")
        .1;
    body.split_once("\n```")
        .expect("the block ends")
        .0
        .to_owned()
}

#[test]
fn the_readme_operator_walkthrough_works_as_written() {
    let script = walkthrough_block();
    let bin_dir = bin_path("rendezvous").parent().unwrap().to_owned();
    assert!(bin_path("punch").is_file());
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The block works in `mktemp -d`; pointing TMPDIR at a directory of the test's own lets a
    // failure show the peers' logs.
    let tmp = Scratch::new();
    let child = Command::new("timeout")
        .arg(HANG.as_secs().to_string())
        .args(["bash", "-c", &script])
        .env("PATH", path)
        .env("TMPDIR", &tmp.0)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "walkthrough failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        logs(&tmp.0)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let find = |want: &str| {
        lines
            .iter()
            .position(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no line with {want:?} in:\n{stdout}\n{stderr}"))
    };
    // In the order the README says.
    let order = [
        find("listen = \"127.0.0.1:7717\""),
        find("rendezvous_registered_peers 0"),
        find("rendezvous_registered_peers 2"),
        find("sessions    1"),
        find("\"path\": \"direct\""),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}\n{stdout}");
    assert!(
        stdout.contains("punch_sessions_open{path=\"direct\"} 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("punch_time_to_session_seconds_count{path=\"direct\"} 1"),
        "{stdout}"
    );
}

/// Every `.out` and `.log` file the block wrote (it works in one directory under `root`).
fn logs(root: &Path) -> String {
    let mut text = String::new();
    let dirs = std::fs::read_dir(root).into_iter().flatten().flatten();
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("out" | "log")))
            .collect();
        files.sort();
        for file in files {
            let body = std::fs::read_to_string(&file).unwrap_or_default();
            text.push_str(&format!("--- {}\n{body}\n", file.display()));
        }
    }
    text
}

/// A directory of this test's own, removed when the test ends.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        Self(unique_temp_dir("punch-walkthrough"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
