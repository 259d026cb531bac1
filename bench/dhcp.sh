#!/usr/bin/env bash
# DHCP benchmark: Slipway vs ISC Kea (memfile, leases persisted) on the same /16 pool,
# measured with perfdhcp full DORA the way shared/notes/bench-method.md describes: two
# namespaces joined by a veth pair, server pinned to CPU 1, perfdhcp on CPU 0, a fresh server
# and an empty lease store per run, Kea and Slipway alternating, RUNS runs each, median
# [min-max]. Scenarios: fresh clients (-R 60000) and repeat clients (-R 10000), each over
# the broadcast path (perfdhcp -B -l c0) and the relay path (perfdhcp -l RELAY SERVER, a
# second address on c0 acting as giaddr), at every rate of RATES.
#
# Reported per run: completed DORA/s (ACKs received / DURATION), drops % of DISCOVER-OFFER and
# REQUEST-ACK, average delay of both, and the server's peak RSS (VmHWM) at the end of the
# run, and its CPU time (user + system, all threads, whole life) per completed DORA. Raw
# perfdhcp output and a results.txt (one line per run, with the idle % seen before
# it) are kept in OUT.
# Every packet stays inside the two namespaces this script creates; lease stores live under
# STATE_BASE (default /var/tmp: a real disk, so fsync costs what it costs).
# Needs root, perfdhcp and kea-dhcp4 (Debian: kea-admin, kea-dhcp4-server), iproute2.
#
#   sudo bench/dhcp.sh                         # full matrix, markdown table on stdout
#   RUNS=1 RATES=24000 SCENARIOS=fresh-bcast SERVERS=slipway bench/dhcp.sh
#   SLIPWAY_BIN=/path/to/other/slipway bench/dhcp.sh   # measure another build
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
RATES=${RATES:-"12000 18000 24000 30000"}
SCENARIOS=${SCENARIOS:-"fresh-bcast repeat-bcast fresh-relay repeat-relay"}
SERVERS=${SERVERS:-"kea slipway"}
STATE_BASE=${STATE_BASE:-/var/tmp}
IDLE_MIN=${IDLE_MIN:-85}
OUT=${OUT:-target/bench-dhcp}
# perfdhcp's default multi-thread mode, squeezed onto one CPU, tops out near 14000 DORA/s
# here and drops replies in its own socket (UdpRcvbufErrors in its namespace) whatever the
# server; single-thread mode on the same CPU reaches ~27000/s. Both servers get the same.
PERFDHCP_THREADS=${PERFDHCP_THREADS:-single}
SRV=slwb-dh-srv-$$
CLI=slwb-dh-cli-$$
SRV_ADDR=10.77.0.1
CLI_ADDR=10.77.0.2
RELAY_ADDR=10.77.0.3

for t in perfdhcp kea-dhcp4 ip taskset ss; do
  command -v "$t" >/dev/null || { echo "bench/dhcp.sh: $t is missing" >&2; exit 1; }
done

WORK=$(mktemp -d "$STATE_BASE/slwb-dhcp.XXXXXX")
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -9 "$SERVER_PID" 2>/dev/null || true; fi
  for ns in "$SRV" "$CLI"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ -z "${SLIPWAY_BIN:-}" ]; then
  cargo build --release --quiet
  SLIPWAY_BIN=$PWD/target/release/slipway
fi
mkdir -p "$OUT"

ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link add s0 type veth peer name c0 netns "$CLI"
ip -n "$SRV" addr add "$SRV_ADDR/16" dev s0
ip -n "$CLI" addr add "$CLI_ADDR/16" dev c0
ip -n "$CLI" addr add "$RELAY_ADDR/16" dev c0
for ns in "$SRV" "$CLI"; do
  ip -n "$ns" link set lo up
done
ip -n "$SRV" link set s0 up
ip -n "$CLI" link set c0 up

cat >"$WORK/slipway.yaml" <<EOF
cluster: {name: bench, domain: bench.lan, kubernetes_version: 1.31.4}
bootstrapper: {interface: s0, address: $SRV_ADDR}
network:
  subnet: 10.77.0.0/16
  gateway: 10.77.0.254
  dhcp: {pool: {start: 10.77.1.0, end: 10.77.254.254}, unknown_machines: enroll-worker, lease_time: 1h}
os: {profile: flatcar, version: 4081.2.0}
nodes:
  - {mac: 52:54:00:00:00:01, hostname: cp-1, ip: 10.77.0.11, role: control-plane}
EOF

kea_config() { # $1: state dir
  cat <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["s0"]},
  "lease-database": {"type": "memfile", "persist": true, "name": "$1/kea-leases4.csv"},
  "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
  "subnet4": [{"id": 1, "subnet": "10.77.0.0/16",
    "pools": [{"pool": "10.77.1.0 - 10.77.254.254"}],
    "option-data": [{"name": "routers", "data": "10.77.0.254"},
                    {"name": "domain-name-servers", "data": "$SRV_ADDR"},
                    {"name": "domain-name", "data": "bench.lan"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
               "output_options": [{"output": "$1/kea.log"}]}]
}}
EOF
}

# Idle % of the whole machine over one second.
idle_pct() {
  local a b
  read -r -a a < <(head -1 /proc/stat)
  sleep 1
  read -r -a b < <(head -1 /proc/stat)
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(( 100 * ((b[4] - a[4]) + (b[5] - a[5])) / (total > 0 ? total : 1) ))
}

# Waits (at most 60 s) for the machine to be IDLE_MIN % idle; prints the idle % seen.
wait_idle() {
  local idle i
  for i in $(seq 1 60); do
    idle=$(idle_pct)
    if [ "$idle" -ge "$IDLE_MIN" ]; then echo "$idle"; return; fi
  done
  echo "$idle"
}

start_server() { # $1: slipway|kea, $2: state dir; sets SERVER_PID
  local i
  case $1 in
    slipway)
      ip netns exec "$SRV" taskset -c 1 "$SLIPWAY_BIN" serve -c "$WORK/slipway.yaml" \
        --state-dir "$2/state" --disable dns --disable tftp --disable registry --http-listen 127.0.0.1:0 \
        >"$2/server.log" 2>&1 &
      ;;
    kea)
      kea_config "$2" >"$2/kea.json"
      KEA_PIDFILE_DIR=$2 KEA_LOCKFILE_DIR=$2 \
        ip netns exec "$SRV" taskset -c 1 kea-dhcp4 -c "$2/kea.json" >"$2/server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for i in $(seq 1 100); do
    if ip netns exec "$SRV" ss -ulnH 'sport = :67' | grep -q .; then sleep 0.3; return; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench/dhcp.sh: $1 did not start:" >&2
  cat "$2/server.log" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# One run; prints "rate do_drop ra_drop do_delay ra_delay rss_mb idle cpu_us_per_dora".
run_one() { # $1 server, $2 scenario, $3 offered rate, $4 run index
  local server=$1 scenario=$2 rate=$3 dir range log idle rss ticks
  dir=$(mktemp -d "$WORK/run.XXXXXX")
  case $scenario in
    fresh-*) range=60000 ;;
    repeat-*) range=10000 ;;
  esac
  idle=$(wait_idle)
  start_server "$server" "$dir"
  log="$OUT/$server-$scenario-$rate-$4.txt"
  local path_args
  case $scenario in
    *-bcast) path_args=(-B -l c0) ;;
    *-relay) path_args=(-l "$RELAY_ADDR" "$SRV_ADDR") ;;
  esac
  # perfdhcp exits 3 when anything was dropped: that is a result, not a failure.
  ip netns exec "$CLI" taskset -c 0 perfdhcp -4 -g "$PERFDHCP_THREADS" -r "$rate" -R "$range" \
    -p "$DURATION" -W 2000000 "${path_args[@]}" >"$log" 2>&1 || true
  rss=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status" 2>/dev/null || echo "?")
  # user + system CPU time of the server (all threads) in clock ticks.
  ticks=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0)
  stop_server
  rm -rf "$dir"
  # Completed DORA/s = ACKs received / DURATION (perfdhcp's own "Rate" also divides by
  # the -W wait after the last request).
  awk -v rss="$rss" -v idle="$idle" -v dur="$DURATION" -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" '
    /Statistics for: DISCOVER-OFFER/ { phase = "do" }
    /Statistics for: REQUEST-ACK/ { phase = "ra" }
    /^received packets:/ { recv[phase] = $3 }
    /^drops ratio:/ { dp[phase] = $3 }
    /^avg delay:/ { delay[phase] = $3 }
    END {
      acks = recv["ra"] + 0
      printf "%.0f %s %s %s %s %s %s %s\n", acks / dur, (dp["do"] == "" ? "?" : dp["do"]), \
        (dp["ra"] == "" ? "?" : dp["ra"]), delay["do"], delay["ra"], rss, idle, \
        (acks > 0 ? sprintf("%.1f", ticks * 1e6 / hz / acks) : "?")
    }' "$log"
}

# median [min-max] of the numbers on stdin (one decimal for values < 100).
summary() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "-"; exit }
    m = v[int((NR + 1) / 2)]
    f = (v[NR] < 100) ? "%.1f" : "%.0f"
    if (NR == 1) printf f "\n", m
    else printf f " [" f "-" f "]\n", m, v[1], v[NR] }'
}

echo "# DHCP bench $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, RUNS=$RUNS DURATION=${DURATION}s" >&2
echo "# slipway: $SLIPWAY_BIN ($(cd "$(dirname "$0")/.." && git rev-parse --short HEAD 2>/dev/null || echo '?'))" >&2
echo "# kea: $(kea-dhcp4 -V 2>/dev/null | head -1)" >&2
RESULTS="$OUT/results.txt"
: >"$RESULTS"
for scenario in $SCENARIOS; do
  for rate in $RATES; do
    for run in $(seq 1 "$RUNS"); do
      for server in $SERVERS; do
        line=$(run_one "$server" "$scenario" "$rate" "$run")
        echo "$server $scenario $rate $run $line" | tee -a "$RESULTS" >&2
      done
    done
  done
done

echo
echo "| scenario | offered/s | server | completed DORA/s | drops DO % | drops RA % | avg delay DO / RA ms | server CPU us/DORA | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|"
for scenario in $SCENARIOS; do
  for rate in $RATES; do
    for server in $SERVERS; do
      sel() { awk -v s="$server" -v c="$scenario" -v r="$rate" -v k="$1" \
        '$1 == s && $2 == c && $3 == r && $(k) != "?" { print $(k) }' "$RESULTS"; }
      printf "| %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |\n" "$scenario" "$rate" \
        "$server" "$(sel 5 | summary)" "$(sel 6 | summary)" "$(sel 7 | summary)" \
        "$(sel 8 | summary)" "$(sel 9 | summary)" "$(sel 12 | summary)" "$(sel 10 | summary)"
    done
  done
done
