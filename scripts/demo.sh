#!/usr/bin/env bash
# podrouter demo (README "Demo"):
#
#   sudo bash scripts/demo.sh           # build, run, show, tear down
#   sudo bash scripts/demo.sh --hold    # ... and keep it up until Ctrl-C
#
# Builds the release binaries, makes a node network namespace holding the
# node address 192.168.200.1, starts podrouterd in it, attaches three pod
# namespaces with podrouterctl, pings pod to pod (TTL 63: one router hop),
# pod to node and node to pod (TTL 64: the host path), and shows each pod's
# addresses, routes and neighbours and the router's pods, routes and
# counters. Everything it creates is removed on exit, Ctrl-C included.
# Exits non-zero if a ping fails.
set -euo pipefail

HOLD=0
for arg in "$@"; do
    case "$arg" in
    --hold) HOLD=1 ;;
    -h | --help)
        sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--hold]" >&2
        exit 2
        ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "the demo creates network namespaces and TAP devices: run it as root (sudo bash scripts/demo.sh)" >&2
    exit 1
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

NODE_IP=192.168.200.1
TAG="prdemo$$"
NODE="$TAG-node"
PODS=(pod-a pod-b pod-c)
DIR=""
DPID=""
CREATED_NS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
        kill -TERM "$DPID"
        for _ in $(seq 50); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$DPID" 2>/dev/null && kill -KILL "$DPID"
        wait "$DPID" 2>/dev/null
    fi
    # Pods first, the node (with podrouter0) last.
    local i
    for ((i = ${#CREATED_NS[@]} - 1; i >= 0; i--)); do
        ip netns del "${CREATED_NS[$i]}" 2>/dev/null
    done
    [ -n "$DIR" ] && rm -rf "$DIR"
    pr_restore_target_owner
    echo
    echo "demo: cleaned up (namespaces, daemon, temp files)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B="" N=""; fi
hdr() { printf '\n%s=== %s ===%s\n' "$B" "$*" "$N"; }
# Shows a command, then runs it.
show() { printf '\n$ %s\n' "$*"; "$@"; }

hdr "dependencies and build"
bash scripts/install-deps.sh
pr_setup_cargo
cargo build --release
BIN="$PWD/target/release"
CTL=("$BIN/podrouterctl" --socket)

DIR=$(mktemp -d /tmp/podrouter-demo.XXXXXX)
SOCK="$DIR/podrouter.sock"
CTL+=("$SOCK")

hdr "node namespace $NODE with node IP $NODE_IP"
ip netns add "$NODE"
CREATED_NS+=("$NODE")
ip -n "$NODE" link set lo up
ip -n "$NODE" addr add "$NODE_IP/32" dev lo

cat >"$DIR/podrouter.toml" <<EOF
node_name = "demo-node"
node_ip = "$NODE_IP"
pod_cidrs = ["10.244.0.0/24"]
api_socket = "$SOCK"
state_dir = "$DIR/state"
log_level = "info"

[dataplane]
backend = "tap"
workers = 1
EOF
echo "config ($DIR/podrouter.toml):"
sed 's/^/    /' "$DIR/podrouter.toml"

hdr "starting podrouterd"
ip netns exec "$NODE" "$BIN/podrouterd" --config "$DIR/podrouter.toml" 2>"$DIR/podrouterd.log" &
DPID=$!
for _ in $(seq 100); do
    "${CTL[@]}" status >/dev/null 2>&1 && break
    if ! kill -0 "$DPID" 2>/dev/null; then
        echo "podrouterd exited; its log:" >&2
        cat "$DIR/podrouterd.log" >&2
        exit 1
    fi
    sleep 0.2
done
show "${CTL[@]}" status

hdr "attaching three pods"
declare -A NS IP
for p in "${PODS[@]}"; do
    NS[$p]="$TAG-$p"
    ip netns add "${NS[$p]}"
    CREATED_NS+=("${NS[$p]}")
    ip -n "${NS[$p]}" link set lo up
    show "${CTL[@]}" attach "$p" --netns "/run/netns/${NS[$p]}"
    # The pod's address from the JSON list (compacted, one object a line).
    IP[$p]=$("${CTL[@]}" --json pods | tr -d ' \n' | tr '{' '\n' |
        grep "\"id\":\"$p\"" | sed -n 's/.*"ip":"\([0-9.]*\)".*/\1/p')
    if [ -z "${IP[$p]}" ]; then
        echo "podrouterctl pods does not list $p" >&2
        exit 1
    fi
done

hdr "inside the pods: addresses and routes"
for p in "${PODS[@]}"; do
    echo
    echo "--- $p (netns ${NS[$p]}, ${IP[$p]}) ---"
    ip -n "${NS[$p]}" addr show dev eth0
    ip -n "${NS[$p]}" route
done

FAILS=()
# try DESC NETNS DST: pings and records a failure.
try_ping() {
    local desc=$1 ns=$2 dst=$3
    printf '\n# %s\n$ ip netns exec %s ping -c 3 -i 0.2 %s\n' "$desc" "$ns" "$dst"
    if ! ip netns exec "$ns" ping -c 3 -i 0.2 -W 2 "$dst"; then
        FAILS+=("$desc")
    fi
}

hdr "pings: pod to pod (ttl=63, one router hop)"
try_ping "pod-a -> pod-b" "${NS[pod-a]}" "${IP[pod-b]}"
try_ping "pod-b -> pod-c" "${NS[pod-b]}" "${IP[pod-c]}"
try_ping "pod-c -> pod-a" "${NS[pod-c]}" "${IP[pod-a]}"

hdr "pings: pod to node and node to pod (ttl=64, host path)"
try_ping "pod-a -> node $NODE_IP" "${NS[pod-a]}" "$NODE_IP"
try_ping "node -> pod-c" "$NODE" "${IP[pod-c]}"

hdr "neighbours in the pods (the router answered ARP for 169.254.1.1)"
for p in "${PODS[@]}"; do
    echo "--- $p ---"
    ip -n "${NS[$p]}" neigh
done

hdr "the node: host port and routes to the pods"
show ip -n "$NODE" -br link show podrouter0
show ip -n "$NODE" route

hdr "podrouterctl"
show "${CTL[@]}" pods
show "${CTL[@]}" routes
show "${CTL[@]}" counters

if [ "$HOLD" -eq 1 ]; then
    hdr "holding: try these in another shell, Ctrl-C here to tear down"
    echo "  ip netns exec ${NS[pod-a]} ping ${IP[pod-b]}"
    echo "  ${CTL[*]} counters"
    echo "  tail -f $DIR/podrouterd.log"
    while kill -0 "$DPID" 2>/dev/null; do sleep 1; done
fi

hdr "result"
if [ "${#FAILS[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${FAILS[@]}"
    echo "podrouterd log:"
    sed 's/^/    /' "$DIR/podrouterd.log"
    exit 1
fi
echo "all 5 pings answered"
