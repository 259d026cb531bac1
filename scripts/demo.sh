#!/usr/bin/env bash
# One-command demo of Slipway on one Linux machine (Debian, as root): installs what it needs
# (Debian packages; Rust with rustup when cargo is missing), builds Slipway, creates a private
# LAN in network namespaces, starts Slipway with a three-node description (one GPU node) and
# PXE-boots three QEMU machines through it (SeaBIOS + iPXE, OVMF PXE, OVMF HTTP boot). Watch
# them at http://127.0.0.1:${PORT:-8080}/. Ctrl-C stops everything and removes the
# namespaces. What is simulated: see tests/demo.rs.
#
#   scripts/demo.sh            # interactive, until Ctrl-C
#   scripts/demo.sh --check    # (or DEMO_CHECK=1) non-interactive: exits 0 once the three
#                              # nodes are `installed` and the page answers on 127.0.0.1,
#                              # non-zero on a failure or timeout; always cleans up
#
# The demo is a test binary (tests/demo.rs). Interactive runs build it with --release; the
# check builds the dev profile, which scripts/test.sh's `cargo test` has built already.
# DEMO_PROFILE=release|dev overrides.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK=${DEMO_CHECK:-0}
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$CHECK" = 1 ]; then
  PROFILE=${DEMO_PROFILE:-dev}
  # A free port unless PORT is given: CI may run next to something on 8080.
  PORT=${PORT:-0}
else
  PROFILE=${DEMO_PROFILE:-release}
  PORT=${PORT:-8080}
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (network namespaces, tap devices, QEMU)" >&2
  exit 1
fi

PACKAGES=(curl ca-certificates build-essential iproute2 busybox-static qemu-system-x86 qemu-utils
  ipxe-qemu ipxe ovmf radvd cpio)
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
  if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "demo.sh: installing Rust (rustup, stable, minimal profile) into $HOME/.cargo"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --profile minimal --default-toolchain stable
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi

profile=()
[ "$PROFILE" = release ] && profile=(--release)
echo "demo.sh: building ($PROFILE)"
# Diagnostics go to stderr as cargo prints them; stdout carries the artifact list.
if ! artifacts=$(cargo test "${profile[@]}" --locked --test demo --no-run \
  --message-format=json-render-diagnostics); then
  echo "demo.sh: build failed (see the errors above)" >&2
  exit 1
fi
bin=$(printf '%s\n' "$artifacts" | grep '"kind":\["test"\]' | grep '"name":"demo"' \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "demo.sh: no demo test binary in cargo's output" >&2; exit 1; }

export SLIPWAY_DEMO_PORT=$PORT
if [ "$CHECK" = 1 ]; then
  export SLIPWAY_DEMO_CHECK=1
  echo "demo.sh: check mode: waits until the three nodes are installed"
fi
exec "$bin" --ignored --exact demo --nocapture
