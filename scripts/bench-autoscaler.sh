#!/usr/bin/env bash
# Autoscaler benchmark: one decision tick over 10,000 revisions, intake of one stat per
# revision per second, poke-to-decision latency. Usage: scripts/bench-autoscaler.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p bench
exec target/release/ebb-bench autoscaler "$@"
