#!/usr/bin/env bash
# The project's test command (README "Tests"; .ci/run calls exactly this).
#
# 1. scripts/setup.sh installs what the tests need when it can (iptables for the NAT lab).
# 2. Builds the workspace binaries: the end-to-end tests run the real `rendezvous` and `punch`.
# 3. Runs every test of the workspace with cargo-nextest when installed (else cargo test).
#    Tests that need network namespaces print a loud SKIPPED line when they lack the rights.
# 4. Prints the NAT-lab matrix and writes it to tests/natlab/RESULTS.md.
# 5. fmt and clippy, as CI demands.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# All targets, not only the binaries: the tests' dev-dependencies enable features (tokio's
# test-util) that the binaries then share, so nextest and clippy reuse this build instead of
# compiling tokio and everything above it (kaspad included) a second time.
cargo build --workspace --all-targets

# NAT-lab cases write their outcomes here; natlab_report turns them into the matrix.
export NATLAB_RESULTS="${NATLAB_RESULTS:-$PWD/target/natlab-results}"
rm -rf "$NATLAB_RESULTS"

status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
    echo "test.sh: cargo-nextest not found, using cargo test"
    cargo test --workspace --no-fail-fast "$@" || status=$?
fi

if [ -d "$NATLAB_RESULTS" ]; then
    # The binary built above, run directly: `cargo run -p punch-tests` would resolve features
    # for that one package and recompile shared dependencies (1.7 minutes on a fresh machine).
    "${CARGO_TARGET_DIR:-$PWD/target}/debug/natlab_report" "$NATLAB_RESULTS" tests/natlab/RESULTS.md
else
    echo "test.sh: no NAT-lab results (the lab tests were skipped: see their SKIPPED lines)"
fi
if [ "$status" -ne 0 ]; then
    echo "test.sh: TESTS FAILED (exit $status)"
    exit "$status"
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
echo "test.sh: all tests passed"
