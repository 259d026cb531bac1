#!/usr/bin/env bash
# TFTP benchmark: Slipway vs tftpd-hpa, atftpd and dnsmasq serving the same files, measured
# with the atftp client the way shared/notes/bench-method.md describes: two namespaces
# joined by a veth pair, server pinned to CPU 1, clients on CPU 0, a fresh server per run,
# the server order rotating between runs, 3 runs each, median [min-max] in MB/s (10^6 B/s).
#   - one 64 MiB file, blksize 1468, windowsize 1 (lock-step) and windowsize 16;
#   - 20 concurrent transfers of a 30 MiB file, blksize 1468: aggregate MB/s.
# Every packet stays inside the two namespaces this script creates. Needs root and the
# Debian packages atftp, atftpd, dnsmasq-base, iproute2; tftpd-hpa conflicts with atftpd,
# so its binary is unpacked from the .deb (apt-get download + dpkg-deb -x) unless
# TFTPD_HPA names one.
#
#   sudo bench/tftp.sh                  # prints a markdown table for docs/benchmarks.md
#   RUNS=1 SERVERS="slipway atftpd" bench/tftp.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SERVERS=${SERVERS:-"tftpd-hpa atftpd dnsmasq slipway"}
CONCURRENT=${CONCURRENT:-20}
# Seconds to wait at most for an idle machine before each run.
IDLE_WAIT=${IDLE_WAIT:-30}
SRV=slwb-tftp-srv-$$
LOAD=slwb-tftp-load-$$
ADDR=10.20.0.2
WORK=$(mktemp -d)
ROOT=$WORK/images/ipxe

for t in atftp atftpd dnsmasq ip taskset; do
  command -v "$t" >/dev/null || { echo "bench/tftp.sh: $t is missing" >&2; exit 1; }
done

cleanup() {
  for ns in "$SRV" "$LOAD"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "bench/tftp.sh: command failed at line $LINENO" >&2' ERR

# Not `command -v in.tftpd`: atftpd's package installs a symlink of that name.
TFTPD_HPA=${TFTPD_HPA:-}
if [ -z "$TFTPD_HPA" ]; then
  (cd "$WORK" && apt-get download -q tftpd-hpa >/dev/null 2>&1) || {
    echo "bench/tftp.sh: cannot download tftpd-hpa; set TFTPD_HPA" >&2
    exit 1
  }
  dpkg-deb -x "$WORK"/tftpd-hpa_*.deb "$WORK/hpa"
  TFTPD_HPA=$WORK/hpa/usr/sbin/in.tftpd
fi

cargo build --release --quiet
BIN=$PWD/target/release/slipway

ip netns add "$SRV"
ip netns add "$LOAD"
ip -n "$SRV" link add eth0 type veth peer name eth0 netns "$LOAD"
ip -n "$SRV" addr add "$ADDR/24" dev eth0
ip -n "$LOAD" addr add 10.20.0.50/24 dev eth0
for ns in "$SRV" "$LOAD"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done

mkdir -p "$ROOT" "$WORK/state" "$WORK/out"
head -c $((64 << 20)) /dev/urandom >"$ROOT/big.img"
head -c $((30 << 20)) /dev/urandom >"$ROOT/mid.img"
cat >"$WORK/cluster-desc.yaml" <<EOF
cluster:
  name: bench
  domain: bench.test
  kubernetes_version: "1.31.4"
bootstrapper:
  interface: eth0
  address: $ADDR
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

# Idle share of all CPUs over one second, in percent.
idle_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(( (b[4] - a[4] + b[5] - a[5]) * 100 / (total > 0 ? total : 1) ))
}

wait_idle() {
  local p=0 i
  for ((i = 0; i < IDLE_WAIT; i++)); do
    p=$(idle_pct)
    [ "$p" -ge 85 ] && return 0
  done
  echo "bench/tftp.sh: machine only ${p}% idle; measuring anyway" >&2
}

start_server() {
  local run=(ip netns exec "$SRV" taskset -c 1)
  case $1 in
    slipway)
      "${run[@]}" "$BIN" serve -c "$WORK/cluster-desc.yaml" --state-dir "$WORK/state" \
        --images-dir "$WORK/images" --disable dhcp --disable dns \
        --http-listen 127.0.0.1:0 >"$WORK/server.log" 2>&1 &
      ;;
    tftpd-hpa)
      "${run[@]}" "$TFTPD_HPA" -L -u root -a "$ADDR:69" -s "$ROOT" >"$WORK/server.log" 2>&1 &
      ;;
    atftpd)
      "${run[@]}" atftpd --daemon --no-fork --user root.root --bind-address "$ADDR" \
        --port 69 --maxthread 100 --logfile /dev/null "$ROOT" >"$WORK/server.log" 2>&1 &
      ;;
    dnsmasq)
      "${run[@]}" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --user=root \
        --pid-file= --bind-interfaces --listen-address="$ADDR" --enable-tftp \
        --tftp-root="$ROOT" --tftp-max=100 --log-facility=/dev/null >"$WORK/server.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  # Ready when a download succeeds (it also puts the file in the page cache).
  for _ in $(seq 1 20); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if ip netns exec "$LOAD" timeout 10 atftp -g -r mid.img -l /dev/null \
      --option "blksize 1468" --option "windowsize 16" "$ADDR" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  echo "bench/tftp.sh: $1 did not answer" >&2
  cat "$WORK/server.log" >&2
  exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

now() { date +%s.%N; }

# CPU time (user + system, clock ticks) of the server process and its threads. tftpd-hpa
# serves each transfer in a forked child that this does not see: "n/a" for it.
ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
HZ=$(getconf CLK_TCK)

# MB/s of one 64 MiB download with windowsize $1.
single() {
  local t0 t1
  t0=$(now)
  ip netns exec "$LOAD" taskset -c 0 atftp -g -r big.img -l "$WORK/out/big" \
    --option "blksize 1468" --option "windowsize $1" "$ADDR" >/dev/null 2>&1
  t1=$(now)
  cmp -s "$WORK/out/big" "$ROOT/big.img" || { echo "bench/tftp.sh: corrupt download" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" -v n=$((64 << 20)) 'BEGIN {printf "%.1f", n / (b - a) / 1e6}'
}

# Aggregate MB/s of $CONCURRENT simultaneous 30 MiB downloads.
concurrent() {
  local t0 t1 i pids=()
  t0=$(now)
  for ((i = 0; i < CONCURRENT; i++)); do
    ip netns exec "$LOAD" taskset -c 0 atftp -g -r mid.img -l "$WORK/out/mid$i" \
      --option "blksize 1468" "$ADDR" >/dev/null 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(now)
  for ((i = 0; i < CONCURRENT; i++)); do
    cmp -s "$WORK/out/mid$i" "$ROOT/mid.img" || { echo "bench/tftp.sh: corrupt download $i" >&2; exit 1; }
  done
  rm -f "$WORK"/out/mid*
  awk -v a="$t0" -v b="$t1" -v n=$((CONCURRENT * (30 << 20))) \
    'BEGIN {printf "%.1f", n / (b - a) / 1e6}'
}

declare -A W1 W16 CONC CPU
list=($SERVERS)
for r in $(seq 1 "$RUNS"); do
  # Rotate which server goes first.
  order=("${list[@]:$(( (r - 1) % ${#list[@]} ))}" "${list[@]:0:$(( (r - 1) % ${#list[@]} ))}")
  for s in "${order[@]}"; do
    wait_idle
    load=$(cut -d' ' -f1 /proc/loadavg)
    start_server "$s"
    a=$(single 1)
    b=$(single 16)
    t0=$(ticks)
    c=$(concurrent)
    t1=$(ticks)
    stop_server
    if [ "$s" = tftpd-hpa ]; then
      cpu=n/a
    else
      # Server CPU milliseconds per MB served in the concurrent run: steadier than MB/s
      # on a shared machine, where a starved single-threaded server mostly waits to run.
      cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n=$((CONCURRENT * (30 << 20))) \
        'BEGIN {printf "%.1f", t * 1000 / hz / (n / 1e6)}')
    fi
    CPU[$s]+="$cpu "
    W1[$s]+="$a "
    W16[$s]+="$b "
    CONC[$s]+="$c "
    echo "run $r $s (load $load): windowsize 1 ${a} MB/s, windowsize 16 ${b} MB/s, ${CONCURRENT}x30 MiB ${c} MB/s (server CPU ${cpu} ms/MB)" >&2
  done
done

# median [min-max] of a list of decimals.
summary() {
  case $1 in n/a*) echo "n/a"; return ;; esac
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {
    if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2;
    printf "%.1f [%.1f-%.1f]", m, v[1], v[NR] }'
}

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| server | 64 MiB, blksize 1468, windowsize 1 | 64 MiB, blksize 1468, windowsize 16 | ${CONCURRENT} x 30 MiB concurrent, blksize 1468 (aggregate) | server CPU ms/MB (concurrent) |"
echo "|---|---|---|---|---|"
for s in "${list[@]}"; do
  echo "| $s | $(summary "${W1[$s]}") | $(summary "${W16[$s]}") | $(summary "${CONC[$s]}") | $(summary "${CPU[$s]}") |"
done
