#!/usr/bin/env bash
# Build Ebb's container images with podman from binaries built on this machine (static, glibc
# crt-static), packaged FROM scratch. Usage: scripts/images.sh [COMPONENT...]
#   components: controller autoscaler activator webhook queue-proxy (default: all)
# Tags: localhost/ebb/COMPONENT:0.1.0. To build from source inside a Rust image instead (needs
# registry access): podman build -f images/COMPONENT.Containerfile -t ... .
set -euo pipefail
cd "$(dirname "$0")/.."

components=("$@")
[ ${#components[@]} -eq 0 ] && components=(controller autoscaler activator webhook queue-proxy)
podman_args=(${EBB_PODMAN_GLOBAL_ARGS:---runtime runc --cgroup-manager=cgroupfs})

for c in "${components[@]}"; do
  case "$c" in
    controller) pkg=ebb-kubernetes bin=ebb-controller ;;
    autoscaler) pkg=ebb-kubernetes bin=ebb-autoscaler ;;
    activator) pkg=ebb-kubernetes bin=ebb-activator ;;
    webhook) pkg=ebb-kubernetes bin=ebb-webhook ;;
    queue-proxy) pkg=queue-proxy bin=queue-proxy ;;
    *) echo "images: unknown component $c (controller, autoscaler, activator, webhook, queue-proxy)" >&2; exit 2 ;;
  esac
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -q \
    --target x86_64-unknown-linux-gnu --target-dir target/static -p "$pkg" --bin "$bin"
  podman "${podman_args[@]}" build -q --target prebuilt -f "images/$c.Containerfile" \
    -t "localhost/ebb/$c:0.1.0" . >/dev/null
  echo "localhost/ebb/$c:0.1.0"
done
