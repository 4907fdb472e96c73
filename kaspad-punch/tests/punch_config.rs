//! The punch flags' own layers, against the real binary: a `--punch-config` TOML file sets
//! them (here the rendezvous, the key file and `punch-log-format = "json"`, after which punch's
//! log lines on stderr are JSON objects), and a file with a key that is no punch flag, or an
//! invalid value, stops the start with a message naming the key and the file.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use punch_tests::{bin_path, unique_temp_dir};

const RENDEZVOUS_KEY: &str = "finorsu4gcmotpfda2gbspxaskpnde2nrnzgwk64ek6ki2dq6qqa";

fn kaspad_punch(dir: &Path) -> Command {
    let mut cmd = Command::new(bin_path("kaspad-punch"));
    cmd.arg("--simnet")
        .arg(format!("--appdir={}", dir.join("app").display()))
        .args(["--nodnsseed", "--disable-upnp", "--yes"])
        .env_remove("RUST_LOG");
    cmd
}

/// A `--punch-config` file with punch on (nothing listens at the rendezvous address) and `more`.
fn config(dir: &Path, more: &str) -> std::path::PathBuf {
    let path = dir.join("punch.toml");
    std::fs::write(
        &path,
        format!(
            "punch-rendezvous = \"127.0.0.1:9\"\npunch-rendezvous-key = \"{RENDEZVOUS_KEY}\"\n\
             punch_key_file = \"{}\"\n{more}",
            dir.join("k.key").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_config_file_key_or_value_kaspad_punch_cannot_take_is_refused_naming_it() {
    for (more, named) in [
        // kaspad's own flags belong in kaspad's --configfile.
        ("appdir = \"/tmp/elsewhere\"\n", "key `appdir`"),
        ("punch-max-inbound-per-ip = 0\n", "punch-max-inbound-per-ip"),
        ("punch-outpeers = \"many\"\n", "punch-outpeers"),
        ("punch-log-format = \"xml\"\n", "punch-log-format"),
    ] {
        let dir = unique_temp_dir("kaspad-punch-config");
        let file = config(&dir, more);
        let out = kaspad_punch(&dir)
            .arg("--punch-config")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let kaspad_started = dir.join("app").exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!out.status.success(), "{more:?} was accepted");
        assert!(
            err.contains(named) && err.contains("punch.toml"),
            "{more:?}: the message names neither {named} nor the file: {err}"
        );
        assert!(
            !kaspad_started,
            "{more:?}: kaspad started before the refusal"
        );
    }
}

#[test]
fn punch_flags_from_the_config_file_with_json_logs() {
    let dir = unique_temp_dir("kaspad-punch-config");
    // The environment is the file's layer too: KASPAD_PUNCH_CONFIG instead of the flag.
    let file = config(&dir, "punch-outpeers = 3\npunch-log-format = \"json\"\n");
    let mut child = kaspad_punch(&dir)
        .env("KASPAD_PUNCH_CONFIG", &file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // punch logs "punch peering" (with the flags it runs with) once its thread starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let doc = serde_json::from_str::<serde_json::Value>(&line).ok();
                let peering = doc
                    .as_ref()
                    .filter(|d| d["message"] == "punch peering" && d["level"] == "INFO");
                if let Some(d) = peering {
                    break Some(d.clone());
                }
                seen.push(line);
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let Some(doc) = found else {
        panic!(
            "no JSON \"punch peering\" line within 60 s; stderr:\n{}",
            seen.join("\n")
        );
    };
    // The file's values reached punch: three discovered peers plus no pinned one, three slots.
    assert_eq!(doc["outpeers"], 3, "{doc}");
    assert_eq!(doc["slots"], 3, "{doc}");
    // Every punch line before it was JSON too (kaspad's own lines go to stdout).
    for line in &seen {
        if line.contains("punch") {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "a punch line not in JSON: {line}"
            );
        }
    }
}

#[test]
fn print_config_shows_each_punch_value_with_its_source_and_reads_back() {
    let dir = unique_temp_dir("kaspad-punch-config");
    let file = config(&dir, "punch-outpeers = 3\n");
    let print = |args: &[&std::ffi::OsStr]| {
        let out = kaspad_punch(&dir)
            .args(args)
            .arg("--punch-print-config")
            .env("KASPAD_PUNCH_LOG_FORMAT", "json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = print(&[
        "--punch-config".as_ref(),
        file.as_os_str(),
        "--punch-max-inbound=5".as_ref(),
    ]);
    let kaspad_started = dir.join("app").exists();
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} =")))
            .unwrap_or_else(|| panic!("no {key} line in:\n{text}"))
            .to_owned()
    };
    assert!(!kaspad_started, "kaspad started to print the configuration");
    assert_eq!(
        line(&printed, "punch-rendezvous"),
        format!(
            "punch-rendezvous = \"127.0.0.1:9\"  # file {}",
            file.display()
        )
    );
    assert_eq!(
        line(&printed, "punch-outpeers"),
        format!("punch-outpeers = 3  # file {}", file.display())
    );
    assert_eq!(
        line(&printed, "punch-max-inbound"),
        "punch-max-inbound = 5  # command line"
    );
    assert_eq!(
        line(&printed, "punch-log-format"),
        "punch-log-format = \"json\"  # environment KASPAD_PUNCH_LOG_FORMAT"
    );
    assert_eq!(line(&printed, "punch-peer"), "# punch-peer = (not set)");
    assert_eq!(
        line(&printed, "punch-max-inbound-per-ip"),
        "punch-max-inbound-per-ip = 2  # default"
    );
    assert!(
        printed
            .lines()
            .all(|l| !l.contains("punch-config =") && !l.contains("print-config =")),
        "{printed}"
    );

    // The printed text is a file --punch-config takes: the same values, now all from it.
    let again = dir.join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    let reprinted = print(&["--punch-config".as_ref(), again.as_os_str()]);
    let _ = std::fs::remove_dir_all(&dir);
    for key in [
        "punch-rendezvous",
        "punch-outpeers",
        "punch-max-inbound",
        "punch-key-file",
    ] {
        let (a, b) = (line(&printed, key), line(&reprinted, key));
        assert_eq!(a.split("  #").next(), b.split("  #").next(), "{key}");
        assert!(b.ends_with(&format!("# file {}", again.display())), "{b}");
    }
}
