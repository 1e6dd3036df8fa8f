#!/usr/bin/env bash
# Local mode's Kubernetes API: kubectl and the ebb CLI applying and listing 1,000 Services, then
# list and watch latency with 10,000 objects. Usage: scripts/bench-api.sh [--services N] [--objects N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubectl >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
}
cargo build --release -q -p ebb -p bench
exec target/release/ebb-bench api "$@"
