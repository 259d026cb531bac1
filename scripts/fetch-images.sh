#!/usr/bin/env bash
# Fills images/ (see images/README.md) on a machine with internet access, for the versions
# in a cluster description: every image of its `images:` list as an OCI archive under oci/
# (for `slipway images import`), the OS boot files (on Flatcar with GPU nodes, the NVIDIA
# driver extension), kubeadm/kubelet/kubectl and the CNI plugins (sha256-checked) and the
# iPXE binaries. Copy the directory to an air-gapped bootstrapper afterwards.
#
#   scripts/fetch-images.sh [-c cluster-desc.yaml] [-o images] [--arch amd64] [--dry-run]
#
# Needs: slipway (to read the description; $SLIPWAY, PATH or target/), python3, curl,
# sha256sum, skopeo; bsdtar for Ubuntu. --dry-run prints each command instead of running it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

config=cluster-desc.yaml
out=images
arch=amd64
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    -c|--config) config=$2; shift 2 ;;
    -o|--out) out=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "fetch-images.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$arch" in amd64|arm64) ;; *) echo "fetch-images.sh: --arch is amd64 or arm64" >&2; exit 2 ;; esac

slipway=${SLIPWAY:-}
if [ -z "$slipway" ]; then
  for c in slipway "$root/target/release/slipway" "$root/target/debug/slipway"; do
    if command -v "$c" >/dev/null 2>&1; then slipway=$c; break; fi
  done
fi
[ -n "$slipway" ] || { echo "fetch-images.sh: slipway not found (build it or set SLIPWAY)" >&2; exit 1; }

# Prints or runs a command.
run() {
  if [ "$dry" = 1 ]; then echo "$*"; else "$@"; fi
}

# Downloads $1 to $2 unless already there (partial downloads go to a .part file first).
fetch() {
  local url=$1 dest=$2
  if [ "$dry" = 1 ]; then echo "curl -fL -o $dest $url"; return; fi
  [ -s "$dest" ] && return
  mkdir -p "$(dirname "$dest")"
  curl -fL --retry 3 -o "$dest.part" "$url"
  mv "$dest.part" "$dest"
}

# Downloads $1 to $2 and checks it against the .sha256 file published next to it.
fetch_checked() {
  local url=$1 dest=$2
  fetch "$url.sha256" "$dest.sha256"
  fetch "$url" "$dest"
  if [ "$dry" = 1 ]; then echo "sha256sum -c ($dest against $dest.sha256)"; return; fi
  echo "$(cut -d' ' -f1 <"$dest.sha256")  $dest" | sha256sum -c --quiet - \
    || { rm -f "$dest"; echo "fetch-images.sh: checksum mismatch for $url" >&2; exit 1; }
}

plan=$("$slipway" plan -c "$config" -o json)
field() { python3 -c "import json,sys; p=json.load(sys.stdin); print($1)" <<<"$plan"; }
profile=$(field 'p["os"]["profile"]')
version=$(field 'p["os"]["version"]')
channel=$(field 'p["os"].get("channel") or "stable"')
k8s=$(field 'p["cluster"]["kubernetes_version"].lstrip("v")')
cni=$(field 'p["assets"]["cni_plugins_version"].lstrip("v")')
driver=$(field 'p["os"]["nvidia_driver"]')
sysext=$(field 'p["assets"].get("nvidia_drivers_sysext") or ""')
gpu=$(field 'int(any(n["gpu"] == "nvidia" for n in p["nodes"]))')
mapfile -t images < <(field '"\n".join(p["images"])')

[ "$dry" = 1 ] || mkdir -p "$out/oci"

# Container images: one OCI archive each, named after the reference, which it records.
for ref in "${images[@]}"; do
  [ -n "$ref" ] || continue
  full=$ref
  first=${ref%%/*}
  if [ "$first" = "$ref" ] || { [[ $first != *.* ]] && [[ $first != *:* ]] && [ "$first" != localhost ]; }; then
    full=docker.io/$ref
  fi
  file=$(echo "$full" | tr '/:@' '___').tar
  dest=$out/oci/$file
  if [ "$dry" = 0 ] && [ -s "$dest" ]; then continue; fi
  run skopeo --override-os linux --override-arch "$arch" copy "docker://$full" "oci-archive:$dest:$full"
done

# OS boot files.
case "$profile" in
  flatcar)
    base="https://$channel.release.flatcar-linux.net/$arch-usr/$version"
    dir="$out/os/flatcar/$channel/$arch-usr/$version"
    for f in flatcar_production_pxe.vmlinuz flatcar_production_pxe_image.cpio.gz \
             flatcar_production_image.bin.bz2 flatcar_production_image.bin.bz2.sig; do
      fetch "$base/$f" "$dir/$f"
    done
    # GPU nodes: the release's prebuilt NVIDIA driver extension (Flatcar 4344.0.0 and later;
    # the plan has none for older releases, whose nodes build the driver online). The .sig
    # is Flatcar's image signature, for `gpg --verify` with Flatcar's image signing key.
    if [ "$gpu" = 1 ] && [ -n "$sysext" ] && [ "$arch" = amd64 ]; then
      for f in "flatcar-nvidia-drivers-$driver.raw" "flatcar-nvidia-drivers-$driver.raw.sig"; do
        fetch "$base/$f" "$dir/$f"
      done
    elif [ "$gpu" = 1 ]; then
      echo "fetch-images.sh: Flatcar $version ($arch) has no prebuilt NVIDIA driver extension (amd64 has one from 4344.0.0 on): GPU nodes will build the driver from the internet" >&2
    fi
    ;;
  ubuntu)
    base="https://releases.ubuntu.com/$version"
    dir="$out/os/ubuntu/$version/$arch"
    fetch "$base/SHA256SUMS" "$dir/SHA256SUMS"
    if [ "$dry" = 1 ]; then
      echo "curl -fL -o $dir/<live-server ISO listed in SHA256SUMS> $base/<iso>"
      echo "bsdtar -xf <iso> casper/vmlinuz casper/initrd"
    else
      iso=$(grep -o "ubuntu-[0-9.]*-live-server-$arch.iso" "$dir/SHA256SUMS" | head -1)
      fetch "$base/$iso" "$dir/$iso"
      (cd "$dir" && grep " \*\?$iso\$" SHA256SUMS | sha256sum -c --quiet -)
      bsdtar -xf "$dir/$iso" -C "$dir" --strip-components 1 casper/vmlinuz casper/initrd
    fi
    ;;
esac

# Kubernetes binaries, each checked against its published .sha256.
for b in kubeadm kubelet kubectl; do
  fetch_checked "https://dl.k8s.io/release/v$k8s/bin/linux/$arch/$b" "$out/kubernetes/v$k8s/$arch/$b"
done
[ "$dry" = 1 ] || chmod 0755 "$out/kubernetes/v$k8s/$arch/"kube*

# CNI reference plugins (bridge, host-local, portmap, loopback) for flannel, checked against
# the .sha256 published with the release.
fetch_checked "https://github.com/containernetworking/plugins/releases/download/v$cni/cni-plugins-linux-$arch-v$cni.tgz" \
  "$out/cni/v$cni/cni-plugins-linux-$arch-v$cni.tgz"

# iPXE first-stage binaries (boot.ipxe.org publishes current builds, no checksums).
fetch https://boot.ipxe.org/undionly.kpxe "$out/ipxe/undionly.kpxe"
fetch https://boot.ipxe.org/ipxe.efi "$out/ipxe/ipxe.efi"
fetch https://boot.ipxe.org/x86_64-efi/snponly.efi "$out/ipxe/snponly.efi"
fetch https://boot.ipxe.org/arm64-efi/ipxe.efi "$out/ipxe/arm64/ipxe.efi"

if [ "$dry" = 0 ]; then
  echo "fetch-images.sh: $out is filled; on the bootstrapper run: slipway images import $out/oci"
fi
