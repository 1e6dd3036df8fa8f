#!/usr/bin/env bash
# Kubernetes mode's controller at scale against the fake API server: N Services (default 5,000)
# to Ready, controller CPU and RSS, API requests per Service, CPU at rest.
# Usage: scripts/bench-controller.sh [--services N] [--max-seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ebb-kubernetes -p bench
exec target/release/ebb-bench controller "$@"
