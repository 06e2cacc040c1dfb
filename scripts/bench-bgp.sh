#!/usr/bin/env bash
# BGP convergence benchmark: time from session Established to N learned
# routes (default 100,000) installed, podrouterd (in its FIB) against BIRD 2
# (in its RIB), both learning the same table from the same GoBGP peer in the
# same run.
#
#   sudo bash scripts/bench-bgp.sh [ROUTES] [ROUNDS]
#
# Needs root, bird2, gobgpd, python3 and the release binaries
# (cargo build --release -p podrouter-control --bins; PODROUTER_BIN_DIR
# overrides target/release). Topology, all in namespaces this script creates
# and deletes: GoBGP (AS 64513, 10.210.0.3) holds the table before any
# measured session exists (it learns it from a BIRD "source" with ROUTES
# static routes, AS 65000, 10.210.0.4: `gobgp mrt inject` 3.10 drops the
# tail of large dumps); podrouterd (AS 64512,
# 10.210.0.1) and BIRD (AS 64512, 10.210.0.2) are eBGP peers of it on one
# bridge. The receivers take turns (podrouterd, then BIRD, ROUNDS times)
# so they never compete for the 2 cores; each round starts the receiver
# fresh and polls its count every 20 ms (podrouterctl bgp rib --limit 0:
# `installed`; birdc show route count). The clock starts when the receiver
# first reports Established. The last line is machine-readable:
#   bgp-bench routes=N podrouterd_s=MEDIAN bird_s=MEDIAN ratio=BIRD/PODROUTERD
set -euo pipefail

ROUTES=${1:-100000}
ROUNDS=${2:-3}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${PODROUTER_BIN_DIR:-$PWD/target/release}
for b in podrouterd podrouterctl; do
    [ -x "$BIN/$b" ] || { echo "bench-bgp: $BIN/$b missing (cargo build --release -p podrouter-control --bins)" >&2; exit 2; }
done
for c in bird birdc gobgpd gobgp python3 ip; do
    command -v "$c" >/dev/null || { echo "bench-bgp: $c missing (scripts/install-deps.sh)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-bgp: needs root (network namespaces)" >&2; exit 2; }

TAG="prbgp$$"
NS_SW="$TAG-sw" NS_G="$TAG-gobgp" NS_P="$TAG-node" NS_B="$TAG-bird" NS_S="$TAG-src"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/podrouter-bench-bgp.XXXXXX")
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for ns in "$NS_G" "$NS_P" "$NS_B" "$NS_S" "$NS_SW"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT
# Make signals exit through the EXIT trap, so nothing is left behind.
trap 'exit 130' INT TERM HUP PIPE

now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

ip netns add "$NS_SW"
ip -n "$NS_SW" link add br0 type bridge
ip -n "$NS_SW" link set br0 up
i=0
for pair in "$NS_P:10.210.0.1" "$NS_B:10.210.0.2" "$NS_G:10.210.0.3" "$NS_S:10.210.0.4"; do
    ns=${pair%%:*} addr=${pair#*:}
    i=$((i + 1))
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$NS_SW" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$NS_SW" link set "p$i" master br0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
done

# The table: ROUTES /24s from 11.0.0.0 up, static in the source BIRD.
python3 - "$ROUTES" "$DIR/src.conf" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
lines = ["router id 10.210.0.4;", "protocol device { scan time 10; }",
         "protocol direct { ipv4; interface \"eth0\"; }", "protocol static bulk {", "  ipv4;"]
for i in range(n):
    a = (11 << 24) + (i << 8)
    lines.append(f"  route {a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.0/24 blackhole;")
lines += ["}", "protocol bgp feed { local as 65000; neighbor 10.210.0.3 as 64513;",
          "  ipv4 { import none; export where proto = \"bulk\"; }; }"]
open(path, "w").write("\n".join(lines) + "\n")
PY
cat >"$DIR/gobgp.toml" <<EOF
[global.config]
  as = 64513
  router-id = "10.210.0.3"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.210.0.4"
    peer-as = 65000
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.210.0.1"
    peer-as = 64512
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.210.0.2"
    peer-as = 64512
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
EOF
ip netns exec "$NS_G" gobgpd -f "$DIR/gobgp.toml" -t toml --api-hosts 127.0.0.1:50051 >"$DIR/gobgpd.log" 2>&1 &
PIDS+=($!)
disown $!
gob() { ip netns exec "$NS_G" gobgp -u 127.0.0.1 -p 50051 "$@"; }
for _ in $(seq 100); do gob global >/dev/null 2>&1 && break; sleep 0.1; done
t0=$(now)
ip netns exec "$NS_S" bird -f -c "$DIR/src.conf" -s "$DIR/src.ctl" -P "$DIR/src.pid" >"$DIR/src.log" 2>&1 &
PIDS+=($!)
disown $!
have=0
for _ in $(seq 1200); do
    have=$(gob global rib summary -a ipv4 | grep -o 'Destination: [0-9]*' | grep -o '[0-9]*' || echo 0)
    [ "$have" -ge "$ROUTES" ] && break
    sleep 0.1
done
[ "$have" -ge "$ROUTES" ] || { echo "bench-bgp: GoBGP holds only $have routes" >&2; cat "$DIR/src.log" >&2; exit 1; }
echo "bench-bgp: GoBGP holds $have routes (loaded in $(sub "$(now)" "$t0") s)"

cat >"$DIR/podrouter.toml" <<EOF
node_name = "bench"
node_ip = "10.210.0.1"
pod_cidrs = ["10.244.1.0/26"]
api_socket = "$DIR/api.sock"
state_dir = "$DIR/state"
log_level = "info"
[dataplane]
host_port = "prbench0"
[bgp]
asn = 64512
connect_retry = 1
graceful_restart = false
[[bgp.peers]]
address = "10.210.0.3"
asn = 64513
EOF
cat >"$DIR/bird.conf" <<EOF
router id 10.210.0.2;
protocol device { scan time 10; }
protocol direct { ipv4; interface "eth0"; }
protocol bgp up { local as 64512; neighbor 10.210.0.3 as 64513;
  connect delay time 1; ipv4 { import all; export none; }; }
EOF

ctl() { "$BIN/podrouterctl" --socket "$DIR/api.sock" --json "$@"; }

round_podrouterd() {
    rm -rf "$DIR/state" "$DIR/api.sock"
    ip netns exec "$NS_P" "$BIN/podrouterd" --config "$DIR/podrouter.toml" >>"$DIR/podrouterd.log" 2>&1 &
    local pid=$! t_est="" t_done="" n=0
    PIDS+=("$pid")
    local deadline=$(($(date +%s) + 120))
    while [ "$(date +%s)" -lt $deadline ]; do
        if [ -z "$t_est" ]; then
            if ctl bgp peers 2>/dev/null | grep -q '"state": "Established"'; then t_est=$(now); fi
        fi
        if [ -n "$t_est" ]; then
            n=$( (ctl bgp rib --limit 0 2>/dev/null || true) | awk -F': ' '/"installed"/ {gsub(/,/, "", $2); print $2; exit}')
            n=${n:-0}
            if [ "$n" -ge "$ROUTES" ]; then t_done=$(now); break; fi
        fi
        sleep 0.02
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    [ -n "$t_done" ] || { echo "bench-bgp: podrouterd installed only $n routes" >&2; tail -20 "$DIR/podrouterd.log" >&2; exit 1; }
    sub "$t_done" "$t_est"
}

round_bird() {
    rm -f "$DIR/bird.ctl"
    ip netns exec "$NS_B" bird -f -c "$DIR/bird.conf" -s "$DIR/bird.ctl" -P "$DIR/bird.pid" >>"$DIR/bird.log" 2>&1 &
    local pid=$! t_est="" t_done="" n=0
    PIDS+=("$pid")
    local deadline=$(($(date +%s) + 120))
    while [ "$(date +%s)" -lt $deadline ]; do
        if [ -z "$t_est" ]; then
            if birdc -s "$DIR/bird.ctl" show protocols up 2>/dev/null | grep -q Established; then t_est=$(now); fi
        fi
        if [ -n "$t_est" ]; then
            n=$( (birdc -s "$DIR/bird.ctl" show route count 2>/dev/null || true) | awk '/ of .* routes/ {print $1; exit}')
            n=${n:-0}
            # BIRD also counts its direct route.
            if [ "$n" -ge "$ROUTES" ]; then t_done=$(now); break; fi
        fi
        sleep 0.02
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    [ -n "$t_done" ] || { echo "bench-bgp: BIRD learned only $n routes" >&2; exit 1; }
    sub "$t_done" "$t_est"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
P=() B=()
for r in $(seq "$ROUNDS"); do
    p=$(round_podrouterd); P+=("$p")
    sleep 1
    b=$(round_bird); B+=("$b")
    sleep 1
    printf 'bench-bgp: round %d: podrouterd %.3f s, BIRD %.3f s\n' "$r" "$p" "$b"
done
pm=$(printf '%s\n' "${P[@]}" | median)
bm=$(printf '%s\n' "${B[@]}" | median)
ratio=$(awk -v a="$bm" -v b="$pm" 'BEGIN { printf "%.2f", a / b }')
echo "bench-bgp: Established -> $ROUTES routes installed, median of $ROUNDS: podrouterd $pm s (FIB), BIRD $bm s (RIB); BIRD/podrouterd = $ratio"
echo "bgp-bench routes=$ROUTES podrouterd_s=$pm bird_s=$bm ratio=$ratio"
