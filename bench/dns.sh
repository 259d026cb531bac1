#!/usr/bin/env bash
# DNS benchmark: Slipway vs unbound serving the same 1000 A records, measured with dnsperf
# the way shared/notes/bench-method.md describes: two namespaces joined by a veth pair,
# server pinned to CPU 1, dnsperf on CPU 0, a fresh server per run, runs alternating
# between the two servers, 3 runs each, median [min-max]; throughput with
# `-c 4 -q 100 -l 10`, latency from `-v` at a fixed `-Q 20000`.
# Every packet stays inside the two namespaces this script creates. Needs root and the
# Debian packages dnsperf, unbound, dnsutils, iproute2.
#
#   sudo bench/dns.sh            # prints a markdown table for docs/benchmarks.md
#   RUNS=1 DURATION=5 bench/dns.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
NODES=1000
SRV=slwb-dns-srv-$$
LOAD=slwb-dns-load-$$
ADDR=10.20.0.2
WORK=$(mktemp -d)

for t in dnsperf unbound dig ip taskset; do
  command -v "$t" >/dev/null || { echo "bench/dns.sh: $t is missing" >&2; exit 1; }
done

cleanup() {
  for ns in "$SRV" "$LOAD"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --quiet
BIN=$PWD/target/release/slipway

ip netns add "$SRV"
ip netns add "$LOAD"
ip -n "$SRV" link add eth0 type veth peer name eth0 netns "$LOAD"
ip -n "$SRV" addr add "$ADDR/22" dev eth0
ip -n "$LOAD" addr add 10.20.0.50/22 dev eth0
for ns in "$SRV" "$LOAD"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done

# The same zone for both: node-0001..node-1000 at 10.20.0.10 onwards, domain bench.test.
{
  cat <<EOF
cluster:
  name: bench
  domain: bench.test
  kubernetes_version: "1.31.4"
bootstrapper:
  interface: eth0
  address: $ADDR
network:
  subnet: 10.20.0.0/22
  gateway: 10.20.0.1
  dhcp:
    mode: "off"
os:
  profile: flatcar
  version: "4081.2.0"
nodes:
EOF
  for i in $(seq 1 $NODES); do
    n=$((i + 9))
    role=worker
    [ "$i" -le 3 ] && role=control-plane
    printf '  - mac: 52:54:00:00:%02x:%02x\n    hostname: node-%04d\n    ip: 10.20.%d.%d\n    role: %s\n' \
      $((i / 256)) $((i % 256)) "$i" $((n / 256)) $((n % 256)) "$role"
  done
} >"$WORK/cluster-desc.yaml"

{
  cat <<EOF
server:
  interface: $ADDR
  port: 53
  num-threads: 1
  do-daemonize: no
  chroot: ""
  username: ""
  pidfile: ""
  directory: "$WORK"
  use-syslog: no
  logfile: ""
  verbosity: 0
  module-config: "iterator"
  access-control: 0.0.0.0/0 allow
  local-zone: "." refuse
  local-zone: "bench.test." static
EOF
  for i in $(seq 1 $NODES); do
    n=$((i + 9))
    printf '  local-data: "node-%04d.bench.test. 60 IN A 10.20.%d.%d"\n' "$i" $((n / 256)) $((n % 256))
  done
} >"$WORK/unbound.conf"

for i in $(seq 1 $NODES); do printf 'node-%04d.bench.test A\n' "$i"; done >"$WORK/queries"

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
  for _ in $(seq 1 30); do
    p=$(idle_pct)
    [ "$p" -ge 85 ] && return 0
  done
  echo "bench/dns.sh: machine only ${p}% idle; measuring anyway" >&2
}

start_server() {
  case $1 in
    slipway)
      mkdir -p "$WORK/state"
      ip netns exec "$SRV" taskset -c 1 "$BIN" serve -c "$WORK/cluster-desc.yaml" \
        --state-dir "$WORK/state" --images-dir "$WORK" --disable dhcp \
        --http-listen 127.0.0.1:0 >"$WORK/server.log" 2>&1 &
      ;;
    unbound)
      ip netns exec "$SRV" taskset -c 1 unbound -d -c "$WORK/unbound.conf" >"$WORK/server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if [ "$(ip netns exec "$LOAD" dig +short +time=1 +tries=1 "@$ADDR" node-0500.bench.test A 2>/dev/null)" = "10.20.1.253" ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench/dns.sh: $1 did not answer" >&2
  cat "$WORK/server.log" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# CPU time (user + system, in clock ticks) the server has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
HZ=$(getconf CLK_TCK)

# "qps ns-of-server-CPU-per-query" of one throughput run. CPU per query is the sturdier
# figure on a shared machine: it does not drop when another process takes the load CPU.
throughput() {
  local t0 t1
  t0=$(ticks)
  ip netns exec "$LOAD" taskset -c 0 dnsperf -s "$ADDR" -p 53 -d "$WORK/queries" \
    -c 4 -q 100 -l "$DURATION" >"$WORK/perf.out" 2>&1
  t1=$(ticks)
  awk -v t=$((t1 - t0)) -v hz="$HZ" '/Queries completed:/ {done = $3}
    /Queries per second:/ {qps = $4}
    END {printf "%d %d", qps, (done > 0 ? t * 1e9 / hz / done : 0)}' "$WORK/perf.out"
}

# "p50 p99" in microseconds from a fixed-rate verbose run.
latency() {
  ip netns exec "$LOAD" taskset -c 0 dnsperf -s "$ADDR" -p 53 -d "$WORK/queries" \
    -c 4 -q 100 -l "$DURATION" -Q 20000 -v >"$WORK/lat.out" 2>&1
  awk '$1 == ">" && $2 == "NOERROR" {print $NF}' "$WORK/lat.out" | sort -g >"$WORK/lat.sorted"
  local n
  n=$(wc -l <"$WORK/lat.sorted")
  [ "$n" -gt 0 ] || { echo "0 0"; return; }
  local p50 p99
  p50=$(sed -n "$(( (n * 50 + 99) / 100 ))p" "$WORK/lat.sorted")
  p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$WORK/lat.sorted")
  awk -v a="$p50" -v b="$p99" 'BEGIN {printf "%d %d", a * 1e6, b * 1e6}'
}

declare -A QPS CPU P50 P99
for r in $(seq 1 "$RUNS"); do
  # Alternate which server goes first.
  if [ $((r % 2)) -eq 1 ]; then order="unbound slipway"; else order="slipway unbound"; fi
  for s in $order; do
    wait_idle
    start_server "$s"
    read -r q cpu <<<"$(throughput)"
    stop_server
    wait_idle
    start_server "$s"
    read -r l50 l99 <<<"$(latency)"
    stop_server
    QPS[$s]+="$q "
    CPU[$s]+="$cpu "
    P50[$s]+="$l50 "
    P99[$s]+="$l99 "
    echo "run $r $s: ${q} q/s, ${cpu} ns CPU/query, p50 ${l50} us, p99 ${l99} us" >&2
  done
done

# median [min-max] of a list of integers.
summary() {
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = int((v[NR / 2] + v[NR / 2 + 1]) / 2);
    printf "%d [%d-%d]", m, v[1], v[NR] }'
}

echo
echo "| server | q/s (\`-c 4 -q 100 -l $DURATION\`) | server CPU ns/query | p50 us (\`-Q 20000\`) | p99 us (\`-Q 20000\`) |"
echo "|---|---|---|---|---|"
for s in unbound slipway; do
  echo "| $s | $(summary "${QPS[$s]}") | $(summary "${CPU[$s]}") | $(summary "${P50[$s]}") | $(summary "${P99[$s]}") |"
done
