#!/usr/bin/env bash
# podrouter demo (README "Demo"), from a root shell, with or without sudo:
#
#   bash scripts/demo.sh           # build, run, show, tear down
#   bash scripts/demo.sh --hold    # ... and keep it up until Ctrl-C
#
# Two nodes on one underlay, each a network namespace with its own
# podrouterd, find each other over BGP (iBGP, AS 64512) and install each
# other's pod block. A pod on node 1 pings and runs a short iperf3 to a pod
# on node 2 through the VXLAN tunnel while tcpdump shows the encapsulated
# packets on the underlay. A ClusterIP (10.96.0.10:80) with a backend on each
# node is reached from the pod through node 1's NAT (kube-proxy-style
# iptables DNAT), then through podrouter's built-in balancer (podrouterctl
# service apply -f). Then podrouterctl status, pods, routes and counters, a
# few counters from node 1's Prometheus endpoint, a podrouterctl capture of
# one ping read back by tshark and a podrouterctl trace of another.
# Everything is removed on exit, Ctrl-C and errors included. Exits
# non-zero if a step that ran failed, printing
# the daemons' logs.

# Functions called from traps and through wait_for look unused to shellcheck.
# shellcheck disable=SC2317
set -euo pipefail

HOLD=0
for arg in "$@"; do
    case "$arg" in
    --hold) HOLD=1 ;;
    -h | --help)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
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

# Names are unique per run (the PID), so the demo can run beside the tests
# or another demo. PODROUTER_DEMO_TAG overrides the prefix (scripts/test.sh
# uses it to check that nothing is left behind).
TAG=${PODROUTER_DEMO_TAG:-prdemo$$}
if ! [[ "$TAG" =~ ^[A-Za-z0-9_-]{1,40}$ ]]; then
    echo "PODROUTER_DEMO_TAG must be 1-40 letters, digits, - or _" >&2
    exit 2
fi
ASN=64512
NODES=(1 2)
declare -A NODE_NS NODE_IP BLOCK SOCK LOG DPID
for n in "${NODES[@]}"; do
    NODE_NS[$n]="$TAG-node-$n"
    NODE_IP[$n]="192.168.200.$n"
    BLOCK[$n]="10.244.$n.0/24"
done
# pod -> node it runs on
declare -A POD_NODE=([pod-a]=1 [web-1]=1 [pod-b]=2 [web-2]=2)
PODS=(pod-a web-1 pod-b web-2)
CLUSTER_IP=10.96.0.10
DIR=""
CREATED_NS=()
BG_PIDS=()
RESULTS=()
FAILED=0
RESULT_RC=0

# Stops a process we started, by pid: TERM, up to 10 s, then KILL.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

print_logs() {
    local n
    for n in "${NODES[@]}"; do
        if [ -z "${LOG[$n]:-}" ] || [ ! -f "${LOG[$n]}" ]; then continue; fi
        echo "--- podrouterd log, node $n (${LOG[$n]}) ---"
        sed 's/^/    /' "${LOG[$n]}"
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    set +e
    # An error (not Ctrl-C, not a failed check: those printed theirs).
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ] && [ "$FAILED" -eq 0 ]; then
        echo
        echo "demo: FAILED (exit $rc)"
        print_logs
    fi
    local pid n i
    for pid in "${BG_PIDS[@]}"; do stop_pid "$pid"; done
    for n in "${NODES[@]}"; do
        [ -n "${DPID[$n]:-}" ] && stop_pid "${DPID[$n]}"
    done
    # Pods first, the nodes (with podrouter0 and the underlay) last.
    for ((i = ${#CREATED_NS[@]} - 1; i >= 0; i--)); do
        ip netns del "${CREATED_NS[$i]}" 2>/dev/null
    done
    [ -n "$DIR" ] && rm -rf "$DIR"
    pr_restore_target_owner
    echo
    echo "demo: cleaned up (namespaces, daemons, temp files)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "demo: \"$BASH_COMMAND\" failed (line $LINENO)" >&2' ERR

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B="" N=""; fi
hdr() { printf '\n%s=== %s ===%s\n' "$B" "$*" "$N"; }
# A command as one would type it: arguments with spaces or shell
# characters in single quotes.
cmdline() {
    local a words=()
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
            words+=("$a")
        else
            words+=("'${a//\'/\'\\\'\'}'")
        fi
    done
    printf '%s' "${words[*]}"
}
# Shows a command, then runs it.
show() { printf '\n$ %s\n' "$(cmdline "$@")"; "$@"; }
# Records the outcome of a check for the summary at the end.
pass() { RESULTS+=("ok       $*"); }
fail() {
    RESULTS+=("FAILED   $*")
    FAILED=1
    printf '%sFAILED: %s%s\n' "$B" "$*" "$N"
}
# A step we cannot go on without: report, print the logs, exit 1.
die() {
    fail "$*"
    print_logs
    exit 1
}
# wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds (0) or
# the time is up (1).
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.2
    done
}
now_ms() { date +%s%3N; }
# ctl NODE ARGS...: podrouterctl against that node's daemon.
ctl() {
    local n=$1
    shift
    podrouterctl --socket "${SOCK[$n]}" "$@"
}
# show_ctl NODE ARGS...: shows and runs it.
show_ctl() {
    local n=$1
    shift
    show podrouterctl --socket "${SOCK[$n]}" "$@"
}
# JSON from stdin through a Python expression over `d` (python3 is
# installed by install-deps.sh).
pyjson() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }
# in_ns NETNS CMD...: runs CMD in that namespace.
in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}
# listening NETNS PORT: something listens on TCP PORT in NETNS.
listening() { [ -n "$(in_ns "$1" ss -Htln "sport = :$2")" ]; }
# start_bg OUT ERR CMD...: shows CMD and starts it in the background with
# its output in files; remembers its pid (in BG_PID and for the cleanup).
start_bg() {
    local out=$1 err=$2
    shift 2
    printf '\n$ %s &\n' "$(cmdline "$@")"
    "$@" >"$out" 2>"$err" &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}

# ---------------------------------------------------------------------------
hdr "1/6 dependencies and build"
show bash scripts/install-deps.sh --demo
pr_setup_cargo
show cargo build --release --bin podrouterd --bin podrouterctl
export PATH="$PWD/target/release:$PATH"
T0=$(now_ms)

DIR=$(mktemp -d "/tmp/$TAG.XXXXXX")

# ---------------------------------------------------------------------------
hdr "2/6 two nodes on one underlay, peering over BGP"
echo "node namespaces ${NODE_NS[1]} and ${NODE_NS[2]}, joined by a veth pair (the underlay):"
for n in "${NODES[@]}"; do
    CREATED_NS+=("${NODE_NS[$n]}") # first, so an interrupt cannot leak it
    ip netns add "${NODE_NS[$n]}"
    ip -n "${NODE_NS[$n]}" link set lo up
done
show ip -n "${NODE_NS[1]}" link add eth0 type veth peer name eth0 netns "${NODE_NS[2]}"
for n in "${NODES[@]}"; do
    show ip -n "${NODE_NS[$n]}" addr add "${NODE_IP[$n]}/24" dev eth0
    ip -n "${NODE_NS[$n]}" link set eth0 up
done

for n in "${NODES[@]}"; do
    other=$((3 - n))
    mkdir -p "$DIR/node-$n"
    SOCK[$n]="$DIR/node-$n/podrouter.sock"
    LOG[$n]="$DIR/node-$n/podrouterd.log"
    cat >"$DIR/node-$n/podrouter.toml" <<EOF
node_name = "node-$n"
node_ip = "${NODE_IP[$n]}"
pod_cidrs = ["${BLOCK[$n]}"]
api_socket = "${SOCK[$n]}"
state_dir = "$DIR/node-$n/state"
log_level = "info"

[dataplane]
backend = "tap"
workers = 1
uplink = "eth0"     # the underlay; other nodes' blocks go through VXLAN on it
encap = "always"
tunnel = "vxlan"    # Calico's profile: VNI 4096, UDP 4789; pod MTU 1450

[metrics]
listen = "127.0.0.1:9091"   # in the node's namespace

[bgp]
asn = $ASN
connect_retry = 1

[[bgp.peers]]
address = "${NODE_IP[$other]}"
asn = $ASN
EOF
    echo
    echo "node $n config ($DIR/node-$n/podrouter.toml):"
    sed 's/^/    /' "$DIR/node-$n/podrouter.toml"
done

for n in "${NODES[@]}"; do
    printf '\n$ %s &\n' "$(cmdline ip netns exec "${NODE_NS[$n]}" podrouterd --config "$DIR/node-$n/podrouter.toml")"
    ip netns exec "${NODE_NS[$n]}" podrouterd --config "$DIR/node-$n/podrouter.toml" 2>"${LOG[$n]}" &
    DPID[$n]=$!
done
for n in "${NODES[@]}"; do
    if ! wait_for 20 ctl "$n" status; then
        kill -0 "${DPID[$n]}" 2>/dev/null || die "podrouterd on node $n exited"
        die "podrouterd on node $n does not answer on ${SOCK[$n]} after 20 s"
    fi
done

# peer_established NODE: its session with the other node is Established.
peer_established() {
    local n=$1 other=$((3 - $1))
    [ "$(ctl "$n" --json bgp peers | pyjson "print(next((p['state'] for p in d if p['address'] == '${NODE_IP[$other]}'), ''))")" = Established ]
}
# fib_has_other_block NODE: its FIB routes the other node's block via it.
fib_has_other_block() {
    local n=$1 other=$((3 - $1))
    [ "$(ctl "$n" --json routes | pyjson "print(next((r.get('via', '') for r in d if r['prefix'] == '${BLOCK[$other]}' and r['next_hop'] == 'node'), ''))")" = "${NODE_IP[$other]}" ]
}
echo
echo "waiting (at most 30 s) for both sessions to be Established and each FIB to hold"
echo "the other's block (polling podrouterctl --json bgp peers and --json routes) ..."
t=$(now_ms)
for n in "${NODES[@]}"; do
    wait_for 30 peer_established "$n" || die "BGP: node $n's session with ${NODE_IP[$((3 - n))]} is not Established after 30 s"
done
for n in "${NODES[@]}"; do
    wait_for 10 fib_has_other_block "$n" || die "BGP: node $n's FIB lacks ${BLOCK[$((3 - n))]} via ${NODE_IP[$((3 - n))]}"
done
el=$(($(now_ms) - t))
printf 'confirmed %d.%01d s after both daemons answered\n' $((el / 1000)) $((el % 1000 / 100))
pass "BGP: both sessions Established, each FIB holds the other node's block"
show_ctl 1 bgp peers
show_ctl 1 routes
show_ctl 2 routes

# ---------------------------------------------------------------------------
hdr "3/6 pods on both nodes, across the tunnel"
declare -A POD_NS POD_IP
for p in "${PODS[@]}"; do
    n=${POD_NODE[$p]}
    POD_NS[$p]="$TAG-$p"
    CREATED_NS+=("${POD_NS[$p]}")
    ip netns add "${POD_NS[$p]}"
    ip -n "${POD_NS[$p]}" link set lo up
    show_ctl "$n" attach "$p" --netns "/run/netns/${POD_NS[$p]}"
    POD_IP[$p]=$(ctl "$n" --json pods | pyjson "print(next((p['ip'] for p in d if p['id'] == '$p'), ''))")
    [ -n "${POD_IP[$p]}" ] || die "podrouterctl pods on node $n does not list $p"
done
echo
for p in "${PODS[@]}"; do
    printf '%-6s %-11s on node %s (netns %s)\n' "$p" "${POD_IP[$p]}" "${POD_NODE[$p]}" "${POD_NS[$p]}"
done
echo
echo "inside pod-a: a /32 and a default route via the router's 169.254.1.1"
show ip -n "${POD_NS[pod-a]}" -br addr show dev eth0
show ip -n "${POD_NS[pod-a]}" route

A=${POD_NS[pod-a]}
echo
echo "ping pod-a (node 1) -> pod-b (node 2), ttl=62: two routers, node 1's and node 2's;"
echo "meanwhile tcpdump on node 1's underlay shows the VXLAN packets (UDP 4789,"
echo "VNI 4096, outer node addresses, the pods' frame inside):"
CAP_OUT="$DIR/tcpdump.out" CAP_ERR="$DIR/tcpdump.err"
# tcpdump ends after 2 packets, or after 15 s if it never sees them
# (--foreground: stay in our process group, so a signal to it reaches
# tcpdump too).
start_bg "$CAP_OUT" "$CAP_ERR" timeout --foreground 15 ip netns exec "${NODE_NS[1]}" tcpdump -c 2 -n -l -i eth0 'udp port 4789'
CAP_PID=$BG_PID
wait_for 10 grep -q "listening on" "$CAP_ERR" || {
    cat "$CAP_ERR"
    die "tcpdump did not start"
}
if show ip netns exec "$A" ping -c 3 -i 0.2 -W 2 "${POD_IP[pod-b]}"; then
    pass "ping pod-a -> pod-b across nodes"
else
    fail "ping pod-a (${POD_IP[pod-a]}) -> pod-b (${POD_IP[pod-b]}) across nodes"
fi
wait "$CAP_PID" || true
echo
echo "tcpdump (in the background above) printed:"
sed 's/^/    /' "$CAP_OUT"
if grep -q "IP ${NODE_IP[1]}\.[0-9]* > ${NODE_IP[2]}\.4789: VXLAN, flags \[I\] (0x08), vni 4096" "$CAP_OUT" &&
    grep -q "IP ${POD_IP[pod-a]} > ${POD_IP[pod-b]}: ICMP echo request" "$CAP_OUT"; then
    pass "tcpdump saw pod-a's ping VXLAN-encapsulated (VNI 4096) from node 1 to node 2"
else
    fail "tcpdump on node 1's underlay did not see pod-a's ping inside VXLAN (stderr: $(tr '\n' ' ' <"$CAP_ERR"))"
fi

echo
echo "iperf3 from pod-a to pod-b for 3 s, through the tunnel:"
start_bg "$DIR/iperf3-server.out" "$DIR/iperf3-server.err" \
    ip netns exec "${POD_NS[pod-b]}" iperf3 -s -1 -B "${POD_IP[pod-b]}"
IPERF_PID=$BG_PID
if ! wait_for 10 listening "${POD_NS[pod-b]}" 5201; then
    fail "iperf3 server in pod-b did not start: $(cat "$DIR/iperf3-server.err")"
elif show timeout --foreground 30 ip netns exec "$A" iperf3 -c "${POD_IP[pod-b]}" -t 3 --connect-timeout 3000; then
    pass "iperf3 pod-a -> pod-b across nodes"
else
    fail "iperf3 pod-a -> pod-b across nodes"
fi
stop_pid "$IPERF_PID"

# ---------------------------------------------------------------------------
hdr "4/6 a Service: ClusterIP $CLUSTER_IP:80 with a backend on each node"
for p in web-1 web-2; do
    mkdir -p "$DIR/$p"
    echo "hello from $p (${POD_IP[$p]}) on node ${POD_NODE[$p]}" >"$DIR/$p/index.html"
    start_bg "$DIR/$p.log" "$DIR/$p.log" \
        ip netns exec "${POD_NS[$p]}" python3 -m http.server 80 --bind "${POD_IP[$p]}" --directory "$DIR/$p"
done
for p in web-1 web-2; do
    wait_for 10 listening "${POD_NS[$p]}" 80 || die "the web server in $p did not start: $(cat "$DIR/$p.log")"
done
echo
echo "each backend answers pod-a directly (web-2 through the tunnel):"
BACKENDS_OK=1
for p in web-1 web-2; do
    show ip netns exec "$A" curl -sS -m 3 "http://${POD_IP[$p]}/" || BACKENDS_OK=0
done
if [ "$BACKENDS_OK" -eq 1 ]; then
    pass "pod-a reaches both backends directly"
else
    fail "pod-a cannot reach a backend directly"
fi

echo
echo "node 1's NAT, as kube-proxy's iptables mode writes it (kube-proxy balances"
echo "with --mode random; nth here so that the two requests below go one to each):"
N1=${NODE_NS[1]}
show ip netns exec "$N1" iptables -t nat -A PREROUTING -d "$CLUSTER_IP/32" -p tcp --dport 80 \
    -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination "${POD_IP[web-1]}:80"
show ip netns exec "$N1" iptables -t nat -A PREROUTING -d "$CLUSTER_IP/32" -p tcp --dport 80 \
    -j DNAT --to-destination "${POD_IP[web-2]}:80"

echo
echo "pod-a -> $CLUSTER_IP: the router hands it to node 1's kernel (no pod has that"
echo "address), which DNATs it to a backend and routes it back into the router; the"
echo "reply must pass node 1's kernel again to be translated back to $CLUSTER_IP:"
SVC_ANSWERS=()
SVC_OK=1
for i in 1 2; do
    if reply=$(show ip netns exec "$A" curl -sS -m 2 "http://$CLUSTER_IP/" 2>&1); then
        SVC_ANSWERS+=("$reply")
    else
        SVC_OK=0
    fi
    echo "$reply"
done
show ip netns exec "$N1" iptables -t nat -L PREROUTING -n -v
if [ "$SVC_OK" -eq 1 ] && printf '%s\n' "${SVC_ANSWERS[@]}" | grep -q "from web-1" &&
    printf '%s\n' "${SVC_ANSWERS[@]}" | grep -q "from web-2"; then
    steered=$(ctl 1 --json counters | pyjson "print((d.get('flows') or {}).get('steered_to_host', 0))")
    pass "Service through node 1's NAT: pod-a reached $CLUSTER_IP:80, once on each node's backend (node 1 steered $steered reply packets to its kernel: counters flows steered_to_host)"
elif [ "$SVC_OK" -eq 1 ]; then
    fail "Service through node 1's NAT: $CLUSTER_IP:80 answered, but not from both backends: ${SVC_ANSWERS[*]}"
else
    fail "Service through node 1's NAT: pod-a's connections to $CLUSTER_IP:80 failed (podrouterd must send the backends' replies back through node 1's kernel: counters flows steered_to_host)"
fi

# Packets node 1's DNAT rules have translated so far (their pkts column).
dnat_packets() {
    in_ns "$N1" iptables -t nat -L PREROUTING -n -v -x | awk '/DNAT/ { s += $1 } END { print s + 0 }'
}
steered_to_host() {
    ctl 1 --json counters | pyjson "print((d.get('flows') or {}).get('steered_to_host', 0))"
}
echo
echo "the same ClusterIP, now balanced by podrouter itself: the Service and its"
echo "EndpointSlice as 'kubectl get -o yaml' prints them, applied to node 1. A pod's"
echo "packet to $CLUSTER_IP:80 is DNATed in node 1's data plane to a backend chosen by"
echo "Maglev hashing of the connection, and never reaches node 1's kernel (its"
echo "iptables rules above stay, untouched):"
SVC_YAML="$DIR/web-service.yaml"
cat >"$SVC_YAML" <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: ClusterIP
  clusterIP: $CLUSTER_IP
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 80}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [${POD_IP[web-1]}]
  conditions: {ready: true}
- addresses: [${POD_IP[web-2]}]
  conditions: {ready: true}
ports:
- {name: http, port: 80, protocol: TCP}
EOF
echo
echo "$SVC_YAML:"
sed 's/^/    /' "$SVC_YAML"
if show_ctl 1 service apply -f "$SVC_YAML"; then
    nat_before=$(dnat_packets)
    steered_before=$(steered_to_host)
    echo
    echo "16 connections from pod-a to $CLUSTER_IP:80, each from a new source port"
    echo "(so each may hash to another backend), answers counted:"
    # shellcheck disable=SC2016 # expanded by the pod's shell
    LB_LOOP='for i in $(seq 16); do curl -sS -m 2 http://'"$CLUSTER_IP"'/; done | sort | uniq -c'
    lb_out=$(show ip netns exec "$A" sh -c "$LB_LOOP" 2>&1) || true
    echo "$lb_out"
    answered=$(printf '%s\n' "$lb_out" | awk '/hello from/ { s += $1 } END { print s + 0 }')
    nat_after=$(dnat_packets)
    steered_after=$(steered_to_host)
    show_ctl 1 service list
    echo
    echo "node 1's DNAT rules translated $((nat_after - nat_before)) packets meanwhile; its flow table steered"
    echo "$((steered_after - steered_before)) reply packets to its kernel (counters flows steered_to_host)"
    if [ "$answered" -eq 16 ] && printf '%s\n' "$lb_out" | grep -q "from web-1" &&
        printf '%s\n' "$lb_out" | grep -q "from web-2" &&
        [ "$nat_after" -eq "$nat_before" ] && [ "$steered_after" -eq "$steered_before" ]; then
        pass "Service through the built-in balancer: 16 of 16 connections to $CLUSTER_IP:80 answered, by both backends, without node 1's kernel NAT"
    else
        fail "Service through the built-in balancer: $answered of 16 connections answered ($(printf '%s' "$lb_out" | tr '\n' ' ')), node 1's DNAT rules took $((nat_after - nat_before)) packets, $((steered_after - steered_before)) steered to its kernel"
    fi
else
    fail "Service through the built-in balancer: podrouterctl service apply -f $SVC_YAML was refused"
fi

# ---------------------------------------------------------------------------
hdr "5/6 podrouterctl on node 1"
show_ctl 1 status
show_ctl 1 pods
show_ctl 1 routes
show_ctl 1 counters
echo
echo "node 1's Prometheus endpoint ([metrics] listen), a few of its counters:"
METRICS_OUT="$DIR/metrics.txt"
if show ip netns exec "${NODE_NS[1]}" curl -sf -o "$METRICS_OUT" http://127.0.0.1:9091/metrics &&
    grep -E '^podrouter_(port_(received|sent)_packets_total\{kind="pod"|drop_count_total\{.*reason="no_route"|fib_routes |bgp_session_state\{.*state="Established"|pods )' "$METRICS_OUT"; then
    pass "metrics: curl of node 1's /metrics shows the podrouter counters"
else
    fail "metrics: node 1's /metrics on 127.0.0.1:9091 did not answer with the podrouter counters"
fi

# ---------------------------------------------------------------------------
hdr "6/6 a capture and a trace of one ping"
# run_tapped NAME CMD...: starts podrouterctl capture or trace (CMD) in the
# background, waits until the daemon has armed it (its first stderr line),
# pings pod-b once from pod-a, waits for CMD to end by itself (its --count)
# and prints what it wrote to stderr. Output in $DIR/NAME.{out,err}; fails
# (returns 1) if any of that did not happen.
run_tapped() {
    local name=$1 armed=$2
    shift 2
    local out="$DIR/$name.out" err="$DIR/$name.err" pid rc=0
    start_bg "$out" "$err" timeout --foreground 20 "$@"
    pid=$BG_PID
    if ! wait_for 10 grep -q "$armed" "$err"; then
        cat "$err"
        stop_pid "$pid"
        return 1
    fi
    show ip netns exec "$A" ping -c 1 -W 2 "${POD_IP[pod-b]}" || rc=1
    wait "$pid" || rc=1
    echo
    echo "podrouterctl (in the background above) printed on stderr:"
    sed 's/^/    /' "$err"
    return "$rc"
}
PCAP="$DIR/ping.pcapng"
echo "podrouterctl capture records pod-a's port as pcapng, both directions: one ping to"
echo "pod-b is two frames, the request pod-a sent and the reply delivered to it:"
if run_tapped capture "capturing on" podrouterctl --socket "${SOCK[1]}" capture --pod pod-a \
    --filter "icmp and host ${POD_IP[pod-b]}" --count 2 -w "$PCAP"; then
    # tshark warns on stderr that it runs as root; the packets are on stdout.
    tshark_out=$(show tshark -n -r "$PCAP" 2>"$DIR/tshark.err") || true
    echo "$tshark_out"
    # tshark's arrow between the addresses is one UTF-8 character, which
    # grep's "." does not match in the C locale of a bare root shell.
    if printf '%s\n' "$tshark_out" | grep -q "${POD_IP[pod-a]} .* ${POD_IP[pod-b]} .*ICMP.*Echo (ping) request" &&
        printf '%s\n' "$tshark_out" | grep -q "${POD_IP[pod-b]} .* ${POD_IP[pod-a]} .*ICMP.*Echo (ping) reply"; then
        pass "capture: one ping pod-a -> pod-b written to a pcap by podrouterctl capture, read back by tshark"
    else
        fail "capture: tshark -r $PCAP did not show pod-a's echo request and pod-b's reply (tshark stderr: $(tr '\n' ' ' <"$DIR/tshark.err"))"
    fi
else
    fail "capture: podrouterctl capture --pod pod-a of one ping did not complete"
fi

echo
echo "podrouterctl trace shows what each pipeline stage of node 1 decided for the"
echo "next frame pod-a sends (here: routed to node 2 through the VXLAN tunnel):"
if run_tapped trace "tracing" podrouterctl --socket "${SOCK[1]}" trace --pod pod-a \
    --filter "icmp and host ${POD_IP[pod-b]}" --count 1; then
    echo "and on stdout:"
    sed 's/^/    /' "$DIR/trace.out"
    if grep -q "^frame 1:" "$DIR/trace.out" &&
        grep -q "verdict .*forward to .*encapsulated to node ${NODE_IP[2]})" "$DIR/trace.out"; then
        pass "trace: node 1's pipeline decisions for pod-a's ping, towards node 2 (${NODE_IP[2]})"
    else
        fail "trace: podrouterctl trace did not show a frame forwarded (encapsulated) to node 2"
    fi
else
    fail "trace: podrouterctl trace --pod pod-a of one ping did not complete"
fi

# ---------------------------------------------------------------------------
hdr "result"
printf '%s\n' "${RESULTS[@]}"
el=$(($(now_ms) - T0))
printf 'the demo took %d.%01d s after the build\n' $((el / 1000)) $((el % 1000 / 100))
if [ "$FAILED" -ne 0 ]; then
    echo "demo: FAILED"
    print_logs
    RESULT_RC=1
else
    echo "demo: every step passed"
fi

if [ "$HOLD" -eq 1 ]; then
    hdr "holding: try these in another shell, Ctrl-C here to tear down"
    cat <<EOF
  export PATH=$PWD/target/release:\$PATH
  ip netns exec ${POD_NS[pod-a]} ping ${POD_IP[pod-b]}
  ip netns exec ${NODE_NS[1]} tcpdump -n -i eth0 'udp port 4789'
  ip netns exec ${POD_NS[pod-a]} curl http://${POD_IP[web-2]}/
  ip netns exec ${POD_NS[pod-a]} curl -m 2 http://$CLUSTER_IP/
  ip netns exec ${NODE_NS[1]} iptables -t nat -L PREROUTING -n -v
  podrouterctl --socket ${SOCK[1]} service list
  podrouterctl --socket ${SOCK[1]} service delete default/web    # then the curl above goes through node 1's NAT
  podrouterctl --socket ${SOCK[1]} capture --pod pod-a --count 10 -w - | tshark -n -r -
  podrouterctl --socket ${SOCK[1]} capture --uplink --filter 'host ${POD_IP[pod-b]}' --count 4 -w - | tshark -n -r -
  podrouterctl --socket ${SOCK[1]} trace --pod pod-a --count 1 --filter icmp
  podrouterctl --socket ${SOCK[1]} bgp peers
  podrouterctl --socket ${SOCK[1]} bgp rib
  podrouterctl --socket ${SOCK[2]} routes
  podrouterctl --socket ${SOCK[1]} counters
  ip -n ${NODE_NS[1]} route
  tail -f ${LOG[1]} ${LOG[2]}
EOF
    trap 'exit "$RESULT_RC"' INT
    while kill -0 "${DPID[1]}" 2>/dev/null && kill -0 "${DPID[2]}" 2>/dev/null; do sleep 1; done
    echo "a podrouterd exited while holding"
    print_logs
    exit 1
fi
exit "$RESULT_RC"
