#!/usr/bin/env bash
# Runs Slipway's whole test suite: installs what the tests need (Debian packages as root),
# checks formatting and lints, builds the release binary, runs every test, then the
# one-command demo in its check mode (scripts/demo.sh --check).
# In CI (CI=true) tests that need root, network namespaces or QEMU must run: they fail
# instead of skipping when something they need is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use (real clients and peers). Extend as suites grow.
PACKAGES=(curl iproute2 dnsutils dnsmasq-base isc-dhcp-client isc-dhcp-relay busybox-static kea-admin openssl
  ignition cloud-init chromium ipxe tftp-hpa atftp skopeo podman containerd docker-registry python3
  qemu-system-x86 qemu-utils ipxe-qemu ovmf radvd cpio)
# npm installs playwright-core for the status-page test (Debian's nodejs and npm).
if ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # qemu-system-x86 needs the distribution's qemu-utils; an image may carry a newer one from
  # backports (netboot-facts.md): pin qemu-utils to qemu-system-x86's version.
  extra=()
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
    qv=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    missing=("${missing[@]/#qemu-utils/}")
    extra=(--allow-downgrades "qemu-utils=$qv")
  fi
  apt-get install -y -qq --no-install-recommends "${extra[@]}" ${missing[@]} >/dev/null
fi

# kubernetes-validate (PyPI) checks the rendered manifests offline.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "test.sh: installing kubernetes-validate (pip)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

# playwright-core drives Debian's Chromium for the status-page test (no browser download).
if [ ! -d tests/web/node_modules/playwright-core ]; then
  echo "test.sh: installing playwright-core (npm)"
  (cd tests/web && npm ci --no-audit --no-fund)
fi

for c in rustfmt clippy; do
  cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c"
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo build --release"
cargo build --locked --release
echo "== cargo test"
cargo test --locked --no-fail-fast --all-targets -- "$@"
# The README's first command, non-interactive: three VMs installed, page on the host. Its
# build reuses the dev-profile test binaries `cargo test` just built.
echo "== scripts/demo.sh --check"
scripts/demo.sh --check
