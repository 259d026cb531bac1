#!/usr/bin/env bash
# HTTP file-serving benchmark: Slipway's /assets/ vs nginx (1 worker, sendfile on) serving the
# same 300 MiB file over loopback, the way shared/notes/bench-method.md describes: server
# pinned to CPU 1, clients on CPU 0, a fresh server per run, runs alternating between the two
# servers, 3 runs each, median [min-max]. Scenarios: one curl (five downloads in a row),
# 20 curls at once (aggregate), and `wrk -t1 -c4 -d10s`. Also the server's CPU time per GB
# sent, the sturdier figure on a shared machine. MB = 10^6 bytes.
# Everything runs on the loopback of a namespace this script creates. Needs root and the
# Debian packages nginx, curl, wrk, iproute2.
#
#   sudo bench/http.sh            # prints a markdown table for docs/benchmarks.md
#   RUNS=1 WRK_SECS=5 bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
WRK_SECS=${WRK_SECS:-10}
SIZE_MIB=${SIZE_MIB:-300}
CLIENTS=${CLIENTS:-20}
NS=slwb-http-$$
WORK=$(mktemp -d)
PORT=8080

for t in nginx curl wrk ip taskset; do
  command -v "$t" >/dev/null || { echo "bench/http.sh: $t is missing" >&2; exit 1; }
done

cleanup() {
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --quiet
BIN=$PWD/target/release/slipway

ip netns add "$NS"
ip -n "$NS" link set lo up

mkdir -p "$WORK/images/os" "$WORK/state" "$WORK/nginx"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/images/os/big.img"
BYTES=$((SIZE_MIB * 1024 * 1024))
cat "$WORK/images/os/big.img" >/dev/null # into the page cache for both servers

cat >"$WORK/cluster-desc.yaml" <<EOF
cluster:
  name: bench
  domain: bench.test
  kubernetes_version: "1.31.4"
bootstrapper:
  interface: lo
  address: 10.20.0.2
network:
  subnet: 10.20.0.0/24
  gateway: 10.20.0.1
  dhcp:
    mode: "off"
os:
  profile: flatcar
  version: "4081.2.0"
nodes:
  - mac: 52:54:00:00:00:11
    hostname: cp-1
    ip: 10.20.0.11
    role: control-plane
EOF

# Same URL path for both: /assets/os/big.img.
mkdir -p "$WORK/www/assets"
ln -s "$WORK/images/os" "$WORK/www/assets/os"
cat >"$WORK/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$PORT;
    root $WORK/www;
  }
}
EOF

URL=http://127.0.0.1:$PORT/assets/os/big.img

# Idle share of all CPUs over one second, in percent.
idle_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(( (b[4] - a[4] + b[5] - a[5]) * 100 / (total > 0 ? total : 1) ))
}

wait_idle() {
  local p
  for _ in $(seq 1 20); do
    p=$(idle_pct)
    [ "$p" -ge 85 ] && return 0
  done
  echo "bench/http.sh: machine only ${p}% idle; measuring anyway" >&2
}

start_server() {
  case $1 in
    slipway)
      rm -rf "$WORK/state"; mkdir -p "$WORK/state"
      ip netns exec "$NS" taskset -c 1 "$BIN" serve -c "$WORK/cluster-desc.yaml" \
        --state-dir "$WORK/state" --images-dir "$WORK/images" --disable dhcp --disable dns --disable tftp --disable registry \
        --http-listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
      ;;
    nginx)
      ip netns exec "$NS" taskset -c 1 nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx.conf" >"$WORK/server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if ip netns exec "$NS" curl -sf -o /dev/null -r 0-0 "$URL"; then return 0; fi
    sleep 0.1
  done
  echo "bench/http.sh: $1 did not answer" >&2
  cat "$WORK/server.log" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# CPU ticks (user + system) of the server process and its children (nginx's worker).
ticks() {
  local sum=0 p
  for p in "$SERVER_PID" $(pgrep -P "$SERVER_PID" || true); do
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$sum"
}
HZ=$(getconf CLK_TCK)

now_ns() { date +%s%N; }

# MB/s of five sequential downloads by one curl process each.
one_client() {
  local t0 t1 i
  t0=$(now_ns)
  for i in 1 2 3 4 5; do
    ip netns exec "$NS" taskset -c 0 curl -sf -o /dev/null "$URL"
  done
  t1=$(now_ns)
  echo $((5 * BYTES * 1000 / (t1 - t0)))
}

# Aggregate MB/s of $CLIENTS downloads at once.
many_clients() {
  local t0 t1 i pids=()
  t0=$(now_ns)
  for i in $(seq 1 "$CLIENTS"); do
    ip netns exec "$NS" taskset -c 0 curl -sf -o /dev/null "$URL" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  t1=$(now_ns)
  echo $((CLIENTS * BYTES * 1000 / (t1 - t0)))
}

# MB/s reported by wrk (which prints binary units).
wrk_run() {
  ip netns exec "$NS" taskset -c 0 wrk -t1 -c4 -d"${WRK_SECS}s" "$URL" >"$WORK/wrk.out" 2>&1
  awk '/Transfer\/sec/ {v = $2; m = 1
    if (v ~ /GB$/) m = 1073741824; else if (v ~ /MB$/) m = 1048576; else if (v ~ /KB$/) m = 1024
    sub(/[KMG]?B$/, "", v); printf "%d", v * m / 1e6}' "$WORK/wrk.out"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A ONE MANY WRK CPU
for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then order="nginx slipway"; else order="slipway nginx"; fi
  for s in $order; do
    wait_idle
    start_server "$s"
    c0=$(ticks)
    one=$(one_client)
    many=$(many_clients)
    c1=$(ticks)
    w=$(wrk_run)
    stop_server
    # CPU ms per GB over the curl scenarios (5 + CLIENTS downloads).
    cpu=$(( (c1 - c0) * 1000 / HZ * 1000000000 / ((5 + CLIENTS) * BYTES) ))
    ONE[$s]+="$one "
    MANY[$s]+="$many "
    WRK[$s]+="$w "
    CPU[$s]+="$cpu "
    echo "run $r $s: x1 ${one} MB/s, x${CLIENTS} ${many} MB/s, wrk ${w} MB/s, ${cpu} ms CPU/GB (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# median [min-max] of a list of integers.
summary() {
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = int((v[NR / 2] + v[NR / 2 + 1]) / 2);
    printf "%d [%d-%d]", m, v[1], v[NR] }'
}

echo
echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo
echo "| server | curl x1 MB/s | curl x$CLIENTS MB/s (total) | \`wrk -t1 -c4 -d${WRK_SECS}s\` MB/s | server CPU ms/GB (curl) |"
echo "|---|---|---|---|---|"
for s in nginx slipway; do
  echo "| $s | $(summary "${ONE[$s]}") | $(summary "${MANY[$s]}") | $(summary "${WRK[$s]}") | $(summary "${CPU[$s]}") |"
done
