#!/usr/bin/env bash
# Benchmarks (issue 16): each figure against a baseline measured in the same run (raw TCP, the
# direct session, the old fixed dial margin), never an absolute target. Release builds; run on
# a quiet machine (no build or fuzzer beside it). Ends with one table of every `BENCH` line the
# measurements printed (measurement, punch, baseline in the same run, ratio); BENCHMARKS.md
# holds this machine's table.
#
#   scripts/bench.sh [ROUNDS]          (default 3; CAPACITY_PEERS=N for the capacity run,
#                                       default 100000)
#
# 1. Throughput on loopback (`punch/examples/throughput/`): one punched stream against raw TCP,
#    against snow + tokio-yamux without punch and against the one-core seal rate; 16 streams
#    against one; the CLI tunnel against the stream; a relayed stream against the direct one;
#    1 KiB request/response against TCP. Then tonic over a punched stream against tonic over
#    TCP (`tests/examples/tonic_bench.rs`): bidi messages/s, unary p50 and p99.
# 2. Time to a session on loopback (`punch/examples/time_to_session.rs`): the measured dial
#    moment against the old fixed 50 ms margin.
# 3. Rendezvous capacity (`tests/tests/capacity.rs`): CAPACITY_PEERS registered peers, memory
#    per peer, registrations/s, and a punch among them (raises the open-files limit: root).
# 4. The relay's cost to the rendezvous (`tests/tests/relay_cost.rs`).
# 5. NAT lab (root only, else SKIPPED): relayed against direct through the tunnel
#    (`tests/tests/relay_bench.rs`), and the time to a session at 50 ms RTT between the peers,
#    clean and with 5% loss (`tests/tests/natlab_time_to_session.rs`).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}

bash scripts/setup.sh
cargo build --release -p punch --example throughput --example time_to_session
cargo build --release -p punch-tests --example tonic_bench
cargo build --release -p punch -p punch-rendezvous -p punch-natlab -p punch-tests --bins
target="${CARGO_TARGET_DIR:-$PWD/target}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run_ignored() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --release -p punch-tests --test "$1" --run-ignored only --no-capture
    else
        cargo test --release -p punch-tests --test "$1" -- --ignored --nocapture --test-threads 1
    fi
}

echo "== 1. loopback: stream, tunnel and relayed stream (512 MiB, 16 MiB window, $rounds rounds)"
"$target/release/examples/throughput" 512 16 "$rounds" tunnel relay | tee -a "$log"

echo "== 1b. tonic over a punched stream against tonic over TCP ($rounds rounds)"
"$target/release/examples/tonic_bench" "$rounds" | tee -a "$log"

echo "== 2. loopback: time to a session"
"$target/release/examples/time_to_session" 50 | tee -a "$log"

echo "== 3. rendezvous capacity (${CAPACITY_PEERS:-100000} peers)"
run_ignored capacity 2>&1 | grep -E '^capacity:|^BENCH|FAIL|panicked' | tee -a "$log"

echo "== 4. the relay's cost to the rendezvous (loopback)"
run_ignored relay_cost 2>&1 | grep -E '^relay:|^BENCH|FAIL|panicked' | tee -a "$log"

echo "== 5. NAT lab: relayed against direct through the tunnel"
run_ignored relay_bench 2>&1 | grep -E '^lab |^BENCH|SKIPPED|FAIL|panicked' | tee -a "$log"
run_ignored natlab_time_to_session 2>&1 | grep -E '^lab |^BENCH|SKIPPED|FAIL|panicked' | tee -a "$log"

echo
echo "| measurement | punch | baseline (same run) | ratio |"
echo "| --- | --- | --- | --- |"
grep '^BENCH' "$log" | awk -F '\t' '{ printf "| %s | %s | %s | %s |\n", $2, $3, $4, $5 }'
