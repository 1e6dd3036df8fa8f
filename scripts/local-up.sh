#!/usr/bin/env bash
# Build Ebb and the example apps, start local mode, deploy the hello example and print its URL.
# Usage: scripts/local-up.sh [ebb local up flags...]     (Ctrl-C stops Ebb and every instance)
#
# Needs a Rust toolchain; installs cmake and pkg-config with apt-get when missing (pingora's
# build needs them).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake pkg-config >/dev/null
  else
    echo "local-up: cmake and pkg-config are needed to build Ebb (apt-get install cmake pkg-config)" >&2
    exit 1
  fi
fi

cargo build --release -p ebb -p e2e --bins
# The example apps run as host processes found on PATH.
export PATH="$PWD/target/release:$PATH"
STATE="${EBB_STATE:-${XDG_DATA_HOME:-$HOME/.local/share}/ebb}"
export EBB_STATE="$STATE"

# The hello example runs as a host program: the process runtime, unless asked otherwise
# (ebb's own default, auto, picks podman where it works).
runtime=(--runtime process)
for a in "$@"; do
  if [[ "$a" == --runtime* ]]; then runtime=(); fi
done
ebb local up "${runtime[@]}" "$@" &
EBB_PID=$!
trap 'kill -TERM "$EBB_PID" 2>/dev/null || true; wait "$EBB_PID" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 200); do
  ebb local status >/dev/null 2>&1 && break
  if ! kill -0 "$EBB_PID" 2>/dev/null; then
    echo "local-up: ebb exited at start" >&2
    exit 1
  fi
  sleep 0.05
done

ebb apply -f examples/local/hello.yaml
GATEWAY=$(sed -n 's/.*"gateway": "\(.*\)".*/\1/p' "$STATE/ebb.json")
PORT=${GATEWAY##*:}
echo
echo "curl http://hello.default.localhost:$PORT/  →  $(curl -s "http://$GATEWAY/" -H 'Host: hello.default.localhost')"
echo
echo "Ebb is running (state $STATE). In another terminal, with target/release on PATH:"
echo "  ebb get ksvc          ebb get revisions       ebb local status"
echo "  ebb service update hello --env TARGET=again   ebb logs hello -f"
echo "Or any Kubernetes client (kubectl, kn, k9s):"
echo "  export KUBECONFIG=$STATE/kubeconfig; kubectl get ksvc"
echo "hello scales to zero about 90 s after its last request (60 s window + 30 s grace) and"
echo "wakes on the next one. Ctrl-C stops Ebb and its instances."
wait "$EBB_PID"
