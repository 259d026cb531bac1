#!/usr/bin/env bash
# Registry benchmark: Slipway's registry vs Debian's docker-registry (distribution 2.8) in the
# same run, the way shared/notes/bench-method.md describes: server pinned to CPU 1, clients on
# CPU 0, a fresh server process per run, runs alternating between the two, median [min-max]
# of RUNS. Scenarios, on an image of 5 x 20 MiB gzip layers (random data):
#   - skopeo copy docker://... dir:...  x1 and x20 at once (aggregate MB/s)
#   - raw blob GETs with curl (the 5 layers, one after the other)
#   - a cache miss through pull-through: 20 skopeo clients ask at once for an image only the
#     upstream (a third, plain docker-registry) has; upstream blob downloads are counted in
#     its access log. The peer is docker-registry in proxy mode against the same upstream.
# Everything runs on loopback inside a network namespace this script creates. Needs root,
# skopeo, docker-registry, curl, python3, taskset. MB/s = 10^6 B/s.
#
#   sudo bench/registry.sh          # prints a markdown table for docs/benchmarks.md
#   RUNS=1 bench/registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
NS=slwb-reg-$$
WORK=$(mktemp -d)
# Client copies go to memory (2 GB per 20-client run), deleted after each scenario.
OUT=$(mktemp -d -p /dev/shm)
SLW_PORT=5000 PEER_PORT=5001 UP_PORT=5002 PROXY_PORT=5003

for t in skopeo docker-registry curl python3 taskset ip; do
  command -v "$t" >/dev/null || { echo "bench/registry.sh: $t is missing" >&2; exit 1; }
done

cleanup() {
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$OUT"
  if [ -n "${KEEP_WORK:-}" ]; then echo "work files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# SLIPWAY_BIN=... skips the release build (for trying the script out).
if [ -z "${SLIPWAY_BIN:-}" ]; then
  cargo build --release --quiet
fi
BIN=${SLIPWAY_BIN:-$PWD/target/release/slipway}
ip netns add "$NS"
ip -n "$NS" link set lo up
inns() { ip netns exec "$NS" "$@"; }

# -- The test image: an OCI layout with 5 x 20 MiB gzip layers of random bytes.
python3 - "$WORK/img" <<'EOF'
import gzip, hashlib, io, json, os, sys, tarfile
root = sys.argv[1]
os.makedirs(f"{root}/blobs/sha256")
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(f"{root}/blobs/sha256/{d}", "wb").write(b)
    return f"sha256:{d}", len(b)
layers, diffs = [], []
for i in range(5):
    data = os.urandom(20 << 20)
    t = io.BytesIO()
    with tarfile.open(fileobj=t, mode="w") as tf:
        info = tarfile.TarInfo(f"layer{i}"); info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    diffs.append("sha256:" + hashlib.sha256(t.getvalue()).hexdigest())
    d, n = put(gzip.compress(t.getvalue(), compresslevel=1))
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
cd, cn = put(cfg)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
    "layers": layers}).encode()
md, mn = put(m)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "1"}}]},
    open(f"{root}/index.json", "w"))
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
open(f"{root}/layers", "w").write("\n".join(l["digest"] for l in layers))
print(sum(l["size"] for l in layers) + cn + mn, file=open(f"{root}/bytes", "w"))
print(sum(l["size"] for l in layers), file=open(f"{root}/layer-bytes", "w"))
EOF
BYTES=$(cat "$WORK/img/bytes")
LAYER_BYTES=$(cat "$WORK/img/layer-bytes")
mapfile -t LAYERS <"$WORK/img/layers"

# -- Servers.
distribution_cfg() { # port dir [proxy-url]
  cat <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: ${4:-true}
storage:
  filesystem:
    rootdirectory: $2
http:
  addr: 127.0.0.1:$1
EOF
  [ -n "${3:-}" ] && printf 'proxy:\n  remoteurl: %s\n' "$3"
  return 0
}

wait_port() {
  for _ in $(seq 1 100); do
    inns curl -s -o /dev/null "http://127.0.0.1:$1/v2/" && return 0
    sleep 0.1
  done
  echo "bench/registry.sh: nothing answers on port $1" >&2; exit 1
}

PID=
start_peer() { # port dir [proxy-url] [access log on]
  distribution_cfg "$1" "$2" "${3:-}" "${4:-true}" >"$WORK/peer-$1.yml"
  # Not through `inns`: a backgrounded function is a subshell, and $! would be its pid.
  ip netns exec "$NS" taskset -c 1 docker-registry serve "$WORK/peer-$1.yml" >"$WORK/peer-$1.log" 2>&1 &
  PID=$!
  wait_port "$1"
}

cat >"$WORK/cluster-desc.yaml" <<EOF
cluster:
  name: bench
  domain: bench.test
  kubernetes_version: "1.31.4"
bootstrapper:
  interface: lo
  address: 127.0.0.1
network:
  subnet: 127.0.0.0/8
  gateway: 127.0.0.254
  dhcp:
    mode: "off"
os:
  profile: flatcar
  version: "4081.2.0"
nodes:
  - mac: 52:54:00:00:00:11
    hostname: cp-1
    ip: 127.0.0.11
    role: control-plane
registry:
  upstreams:
    - name: docker.io
      url: http://127.0.0.1:$UP_PORT
EOF

start_slipway() { # state-dir
  ip netns exec "$NS" taskset -c 1 "$BIN" serve -c "$WORK/cluster-desc.yaml" --state-dir "$1" \
    --http-listen 127.0.0.1:0 --registry-listen "127.0.0.1:$SLW_PORT" --disable dhcp --disable dns --disable tftp \
    --images-dir "$WORK/none" >"$WORK/slipway.log" 2>&1 &
  PID=$!
  wait_port "$SLW_PORT"
}

# Stops the last server started and makes sure its port is free again.
stop() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  for p in $SLW_PORT $PEER_PORT $PROXY_PORT; do
    if inns curl -s -o /dev/null "http://127.0.0.1:$p/v2/"; then
      echo "bench/registry.sh: port $p still answers after stopping pid $PID" >&2
      inns ss -ltnp >&2
      exit 1
    fi
  done
}

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1 / ($3 - $2) / 1e6:.0f}')"; }
TICKS=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; } # server user+system ticks
# "MB/s,CPU" for bytes t0 t1 cpu0 cpu1: CPU is the server's CPU seconds per GB sent, which
# a loaded machine disturbs less than MB/s.
measure() {
  python3 -c "print(f'{$1 / ($3 - $2) / 1e6:.0f},{($5 - $4) / $TICKS / ($1 / 1e9):.2f}')"
}

# Fills both registries with the image once (skopeo keeps the gzip layers as they are).
mkdir -p "$WORK/slw-state" "$WORK/peer-data"
start_slipway "$WORK/slw-state"
TOKEN=$(cat "$WORK/slw-state/admin.token")
inns skopeo copy -q --dest-tls-verify=false --dest-creds "x:$TOKEN" "oci:$WORK/img:1" "docker://127.0.0.1:$SLW_PORT/bench/img:1"
stop
start_peer "$PEER_PORT" "$WORK/peer-data"
inns skopeo copy -q --dest-tls-verify=false "oci:$WORK/img:1" "docker://127.0.0.1:$PEER_PORT/bench/img:1"
stop

pull1() { # port
  rm -rf "$OUT/out"
  local t0 t1 c0 c1; t0=$(now); c0=$(cpu)
  inns taskset -c 0 skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/bench/img:1" "dir:$OUT/out" \
    || touch "$WORK/failed"
  t1=$(now); c1=$(cpu); measure "$BYTES" "$t0" "$t1" "$c0" "$c1"
}
pull20() { # port
  local t0 t1 c0 c1 pids=(); t0=$(now); c0=$(cpu)
  for i in $(seq 1 20); do
    rm -rf "$OUT/out$i"
    inns taskset -c 0 skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/bench/img:1" "dir:$OUT/out$i" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || touch "$WORK/failed"; done
  t1=$(now); c1=$(cpu); measure "$((BYTES * 20))" "$t0" "$t1" "$c0" "$c1"
  rm -rf "$OUT"/out*
}
raw() { # port
  local urls=() t0 t1 c0 c1
  for l in "${LAYERS[@]}"; do urls+=("http://127.0.0.1:$1/v2/bench/img/blobs/$l" -o /dev/null); done
  t0=$(now); c0=$(cpu)
  inns taskset -c 0 curl -sf "${urls[@]}" || touch "$WORK/failed"
  t1=$(now); c1=$(cpu); measure "$LAYER_BYTES" "$t0" "$t1" "$c0" "$c1"
}

declare -A R
for run in $(seq 1 "$RUNS"); do
  for who in peer slipway; do
    if [ "$who" = peer ]; then start_peer "$PEER_PORT" "$WORK/peer-data"; port=$PEER_PORT
    else start_slipway "$WORK/slw-state"; port=$SLW_PORT; fi
    R[$who,x1]+="$(pull1 $port) "
    R[$who,x20]+="$(pull20 $port) "
    R[$who,raw]+="$(raw $port) "
    stop
    [ ! -e "$WORK/failed" ] || { echo "bench/registry.sh: a client failed ($who, run $run)" >&2; exit 1; }
  done
done
LOAD_PULLS=$(cut -d' ' -f1-3 /proc/loadavg)

# -- Cache miss through pull-through, 20 clients at once, fresh caches each run.
mkdir -p "$WORK/up-data"
start_peer "$UP_PORT" "$WORK/up-data" "" false
UP_PID=$PID
inns skopeo copy -q --dest-tls-verify=false "oci:$WORK/img:1" "docker://127.0.0.1:$UP_PORT/library/big:1"
miss20() { # port name -> "MB/s fetches"
  local before after t0 t1 pids=()
  before=$(grep -c '"GET /v2/library/big/blobs/' "$WORK/peer-$UP_PORT.log" || true)
  t0=$(now)
  for i in $(seq 1 20); do
    rm -rf "$OUT/miss$i"
    inns taskset -c 0 skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$1/$2" "dir:$OUT/miss$i" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || touch "$WORK/failed"; done
  t1=$(now)
  rm -rf "$OUT"/miss*
  after=$(grep -c '"GET /v2/library/big/blobs/' "$WORK/peer-$UP_PORT.log" || true)
  echo "$(mbps "$((BYTES * 20))" "$t0" "$t1")/$((after - before))"
}
for run in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/proxy-data" "$WORK/slw-miss"; mkdir -p "$WORK/proxy-data" "$WORK/slw-miss"
  start_peer "$PROXY_PORT" "$WORK/proxy-data" "http://127.0.0.1:$UP_PORT"
  R[peer,miss]+="$(miss20 $PROXY_PORT library/big:1) "
  stop
  [ ! -e "$WORK/failed" ] || { echo "bench/registry.sh: a client failed (cache miss via the peer proxy, run $run)" >&2; exit 1; }
  start_slipway "$WORK/slw-miss"
  R[slipway,miss]+="$(miss20 $SLW_PORT docker.io/library/big:1) "
  stop
  [ ! -e "$WORK/failed" ] || { echo "bench/registry.sh: a client failed (cache miss via Slipway, run $run)" >&2; exit 1; }
done
kill "$UP_PID" 2>/dev/null || true
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# median [min-max] of "a b c"; entries "MB/s,CPU" add the median CPU s/GB, entries
# "MB/s/fetches" list the upstream fetches of each run.
summary() {
  python3 - "$1" <<'EOF'
import sys
vals = sys.argv[1].split()
med = lambda xs: sorted(xs)[len(xs) // 2]
mbs = sorted(float(v.split("/")[0].split(",")[0]) for v in vals)
out = f"{med(mbs):.0f} [{mbs[0]:.0f}-{mbs[-1]:.0f}]"
if "," in vals[0]:
    out += f" ({med([float(v.split(',')[1]) for v in vals]):.2f} CPU s/GB)"
if "/" in vals[0]:
    out += " MB/s, upstream blob GETs " + ",".join(v.split("/")[1] for v in vals)
print(out)
EOF
}
echo "| scenario | docker-registry 2.8 | Slipway |"
echo "|---|---|---|"
echo "| skopeo pull x1 (MB/s) | $(summary "${R[peer,x1]}") | $(summary "${R[slipway,x1]}") |"
echo "| skopeo pull x20, aggregate (MB/s) | $(summary "${R[peer,x20]}") | $(summary "${R[slipway,x20]}") |"
echo "| raw blob GETs, curl (MB/s) | $(summary "${R[peer,raw]}") | $(summary "${R[slipway,raw]}") |"
echo "| cache miss, 20 clients at once (proxy vs pull-through) | $(summary "${R[peer,miss]}") | $(summary "${R[slipway,miss]}") |"
echo
echo "image: 5 x 20 MiB layers ($BYTES bytes); runs: $RUNS; load average after the pulls: $LOAD_PULLS; at the end: $LOAD_END"
