#!/usr/bin/env bash
# The project's test command (README "Tests"; .ci/run calls exactly this).
#
# 1. scripts/setup.sh installs what the tests need when it can (iptables for the NAT lab).
# 2. Builds the workspace binaries: the end-to-end tests run the real `rendezvous` and `punch`.
# 3. Runs every test of the workspace with cargo-nextest when installed (else cargo test).
#    Tests that need network namespaces print a loud SKIPPED line when they lack the rights.
# 4. fmt and clippy, as CI demands.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "test.sh: cargo-nextest not found, using cargo test"
    cargo test --workspace --no-fail-fast "$@"
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
echo "test.sh: all tests passed"
