#!/usr/bin/env bash
# Runs every test of the workspace, as CI does. Usage: scripts/test.sh
#
# Needs a Rust toolchain and Python 3 with pip (for kubernetes-validate, which checks the
# Kubernetes objects Ebb builds against Kubernetes' own schemas, strictly, and helm-python-sdk,
# which renders and lints the Helm chart offline).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
# Helm's SDK for Python renders and lints the chart offline (no helm binary, no cluster).
if ! python3 -c 'import helm_python' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check helm-python-sdk
fi
# The workload test fails instead of skipping when the validator is missing.
export EBB_REQUIRE_KUBE_VALIDATE=1

# Tests that need what this machine may lack are #[ignore]d, so the runner counts them as
# skipped; they run here, after the rest, where their requirement is met (EBB_REQUIRE_PODMAN=1,
# as CI sets, makes a missing podman a failure instead of a skip).
podman_works() { podman --version >/dev/null 2>&1; }
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast || status=$?
  if podman_works || [ "${EBB_REQUIRE_PODMAN:-}" = 1 ]; then
    cargo nextest run -p e2e --run-ignored only -E 'binary(podman)' --no-fail-fast || status=$?
  else
    echo "SKIPPED: e2e/tests/podman.rs (podman is not installed)"
  fi
  if [ -n "${EBB_E2E_KUBECONFIG:-}" ]; then
    cargo nextest run -p e2e --run-ignored only -E 'binary(cluster)' --no-fail-fast || status=$?
  else
    echo "SKIPPED: e2e/tests/cluster.rs (EBB_E2E_KUBECONFIG names no cluster)"
  fi
else
  cargo test --workspace --no-fail-fast || status=$?
  echo "SKIPPED: the podman and real-cluster suites (install cargo-nextest to run them here)"
fi
[ "$status" = 0 ] || exit "$status"
cargo xtask check
python3 scripts/check-chart.py 2> >(grep -v 'found symbolic link' >&2)
