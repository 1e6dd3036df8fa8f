#!/usr/bin/env bash
# Queue-proxy benchmark: a trivial app reached directly, through the queue-proxy and through
# nginx, in one run on loopback. Prints latency at a fixed rate, max throughput, the proxy's
# RSS and CPU per 1000 requests. Usage: scripts/bench-queue-proxy.sh [ebb-bench options]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
fi
cargo build --release -q -p queue-proxy -p bench
exec target/release/ebb-bench queue-proxy --queue-proxy-bin target/release/queue-proxy "$@"
