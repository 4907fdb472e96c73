//! Replays the fuzz inputs of the punch-proto targets on stable Rust, in the normal test suite:
//! every seed in `fuzz/seeds/<target>/` must be *accepted* (it is a valid message, frame stream
//! or handshake), and every input in `fuzz/regressions/<target>/` (crashes found by
//! `scripts/fuzz.sh`, kept after the fix) must pass the target's invariants.
//!
//! The harnesses are the fuzz targets' own (`fuzz/src/proto_checks.rs`, included by path), so
//! an input means the same here as under libFuzzer.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../fuzz/src/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../../fuzz/src/input.rs"]
mod input;
#[path = "../../fuzz/src/proto_checks.rs"]
mod proto_checks;

use proto_checks::{Check, TARGETS};

/// Targets whose inputs are replayed elsewhere: `secure_stream` by
/// `punch/tests/fuzz_regressions.rs`; the state-machine targets read `arbitrary`-encoded events,
/// which only the fuzz crate can decode (`scripts/fuzz.sh` replays their regressions first).
const ELSEWHERE: &[&str] = &[
    "secure_stream",
    "registry_events",
    "attempt_events",
    "token_bucket",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted, by target; panics on a target nobody replays.
fn inputs(kind: &str) -> Vec<(Check, PathBuf)> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(kind)) else {
        return out;
    };
    for dir in dirs {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some((_, check)) = TARGETS.iter().find(|(t, _)| *t == name) else {
            assert!(
                ELSEWHERE.contains(&name.as_str()),
                "fuzz/{kind}/{name}: no such fuzz target"
            );
            continue;
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|f| (*check, f)));
    }
    out
}

#[test]
fn seeds_are_accepted() {
    let seeds = inputs("seeds");
    for (name, _) in TARGETS {
        assert!(
            seeds
                .iter()
                .any(|(_, p)| p.parent().unwrap().ends_with(name)),
            "no seed for {name}"
        );
    }
    for (check, path) in seeds {
        let data = std::fs::read(&path).unwrap();
        assert!(check(&data), "seed {} is not accepted", path.display());
    }
}

/// The committed seeds are what `fuzz/examples/write_seeds.rs` writes today: a change of an
/// input format shows up here, not as seeds that silently test less.
#[test]
fn committed_seeds_are_current() {
    for (target, name, bytes) in proto_checks::seeds() {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        let committed = std::fs::read(&path).unwrap();
        assert_eq!(
            committed,
            bytes,
            "{}: run `cargo run --example write_seeds` in fuzz/",
            path.display()
        );
    }
}

#[test]
fn regressions_pass() {
    for (check, path) in inputs("regressions") {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "regression {} fails", path.display());
    }
}

/// The harnesses' invariants hold on a few inputs no fuzzer run is needed for.
#[test]
fn edge_inputs_pass() {
    let edges: [&[u8]; 6] = [
        &[],
        &[0],
        &[0xff; 3],
        &[0xff; 300],
        &[0, 0, 1, 0, 0, 0],
        &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ];
    for (name, check) in TARGETS {
        for e in edges {
            let outcome = std::panic::catch_unwind(|| check(e));
            assert!(outcome.is_ok(), "{name} fails on {e:02x?}");
        }
    }
}
