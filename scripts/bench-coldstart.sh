#!/usr/bin/env bash
# Cold-start benchmark: first request to a revision at zero through `ebb local up` (host
# processes), minus the app's own start time. Usage: scripts/bench-coldstart.sh [--wakes 20]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ebb -p e2e -p bench --bins
exec target/release/ebb-bench coldstart "$@"
