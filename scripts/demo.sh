#!/usr/bin/env bash
# One-command demo of Slipway on one Linux machine (Debian, as root): installs what it needs,
# builds Slipway, creates a private LAN in network namespaces, starts Slipway with a
# three-node description (one GPU node) and PXE-boots three QEMU machines through it (SeaBIOS
# + iPXE, OVMF PXE, OVMF HTTP boot). Watch them at http://127.0.0.1:${PORT:-8080}/.
# Ctrl-C stops everything and removes the namespaces. What is simulated: see tests/demo.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8080}

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (network namespaces, tap devices, QEMU)" >&2
  exit 1
fi

PACKAGES=(curl iproute2 busybox-static qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf radvd cpio)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "demo.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  extra=()
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
    # qemu-system-x86 needs the distribution's qemu-utils (an image may carry a newer one).
    qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    missing=("${missing[@]/#qemu-utils/}")
    extra=(--allow-downgrades "qemu-utils=$qv")
  fi
  apt-get install -y -qq --no-install-recommends "${extra[@]}" ${missing[@]} >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo.sh: needs Rust's cargo (https://rustup.rs)" >&2
  exit 1
fi

echo "demo.sh: building (release)"
bin=$(cargo test --release --locked --test demo --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "demo.sh: build failed (run: cargo test --release --test demo --no-run)" >&2; exit 1; }
export SLIPWAY_DEMO_PORT=$PORT
exec "$bin" --ignored --exact demo --nocapture
