#!/usr/bin/env bash
# The project's main job (README "Quick start"): installs what the build needs (scripts/setup.sh:
# protoc for Kaspa's .proto files, iptables for the NAT mode), then runs the punch demo: a
# rendezvous and two Kaspa P2P nodes (the real kaspa-p2p-lib handler) punch to each other and
# run Kaspa's handshake. Exits 0 only when both nodes reached Ready. Extra arguments go to the
# demo (`scripts/demo.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec cargo run --release -p punch-demo --bin punch-demo -- "$@"
