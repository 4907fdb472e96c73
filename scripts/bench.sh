#!/usr/bin/env bash
# Benchmarks: each prints its figures against a baseline measured in the same run (raw TCP, the
# direct session), never absolute targets. Release builds; run on a quiet machine (no build or
# fuzzer beside it).
#
#   scripts/bench.sh [ROUNDS]          (default 3)
#
# 1. One punched stream against raw TCP, the CLI tunnel against the stream, and a relayed
#    stream against the direct one, on loopback (`punch/examples/throughput.rs`; relay rates
#    lifted, so it measures the relay's own cost).
# 2. The relay's cost to the rendezvous (`tests/tests/relay_cost.rs`): CPU per relayed GiB
#    against raw loopback TCP, memory per open session, and 500 sessions moving data at the
#    default limits (CPU, memory, total rate).
# 3. Relayed against direct throughput through the real binaries in the NAT lab, on a clean
#    network and at 50 ms per link (`tests/tests/relay_bench.rs`; needs root, else it prints
#    SKIPPED).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}

bash scripts/setup.sh
cargo build --release -p punch --example throughput
cargo build --release -p punch -p punch-rendezvous -p punch-natlab -p punch-tests --bins
target="${CARGO_TARGET_DIR:-$PWD/target}"

echo "== 1. loopback: stream, tunnel and relayed stream (512 MiB, 16 MiB window, $rounds rounds)"
"$target/release/examples/throughput" 512 16 "$rounds" tunnel relay

run_ignored() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --release -p punch-tests --test "$1" --run-ignored only --no-capture
    else
        cargo test --release -p punch-tests --test "$1" -- --ignored --nocapture --test-threads 1
    fi
}

echo "== 2. the relay's cost to the rendezvous (loopback)"
run_ignored relay_cost 2>&1 | grep -E '^relay:|FAIL|panicked'

echo "== 3. NAT lab: relayed against direct through the tunnel"
run_ignored relay_bench 2>&1 | grep -E '^lab |SKIPPED|FAIL|panicked'
