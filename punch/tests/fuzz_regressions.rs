//! Replays the fuzz inputs of the punch targets (`secure_stream`: the preamble parser and the
//! encrypted stream) on stable Rust, in the normal test suite: seeds in
//! `fuzz/seeds/secure_stream/` must be accepted, inputs in `fuzz/regressions/secure_stream/`
//! must pass the target's invariants. The harness is the fuzz target's own
//! (`fuzz/src/punch_checks.rs`, included by path). `proto/tests/fuzz_regressions.rs` replays
//! the punch-proto targets.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../fuzz/src/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../../fuzz/src/input.rs"]
mod input;
#[path = "../../fuzz/src/punch_checks.rs"]
mod punch_checks;

use punch_checks::TARGETS;

fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    out.sort();
    out
}

#[test]
fn seeds_are_accepted_and_current() {
    for (target, check) in TARGETS {
        let seeds = files("seeds", target);
        assert!(!seeds.is_empty(), "no seed for {target}");
        for path in seeds {
            let data = std::fs::read(&path).unwrap();
            assert!(check(&data), "seed {} is not accepted", path.display());
        }
    }
    for (target, name, bytes) in punch_checks::seeds() {
        let path = format!(
            "{}/../fuzz/seeds/{target}/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{path}: run `cargo run --example write_seeds` in fuzz/"
        );
    }
}

#[test]
fn regressions_pass() {
    for (target, check) in TARGETS {
        for path in files("regressions", target) {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "regression {} fails", path.display());
        }
    }
}

/// The harness's invariants hold on a few inputs no fuzzer run is needed for.
#[test]
fn edge_inputs_pass() {
    let edges: [&[u8]; 4] = [&[], b"PNCH\0\0\0\0\0\0\0\x07", &[0xff; 40], &[0; 64]];
    for (target, check) in TARGETS {
        for e in edges {
            let outcome = std::panic::catch_unwind(|| check(e));
            assert!(outcome.is_ok(), "{target} fails on {e:02x?}");
        }
    }
}
