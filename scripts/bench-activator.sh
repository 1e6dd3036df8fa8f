#!/usr/bin/env bash
# Activator benchmark: the gateway as one hop against nginx, memory per request held at zero,
# and instance-ready to first-response time. Usage: scripts/bench-activator.sh [options]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
fi
# 10,000 held requests need 10,000 client sockets and as many in the gateway.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then ulimit -n "$(ulimit -Hn)"; fi
cargo build --release -q -p bench
exec target/release/ebb-bench activator "$@"
