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

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
cargo xtask check
python3 scripts/check-chart.py 2> >(grep -v 'found symbolic link' >&2)
