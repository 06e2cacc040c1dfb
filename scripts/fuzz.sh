#!/usr/bin/env bash
# Runs the cargo-fuzz targets (control/fuzz: the BGP codec and session,
# the data-plane pipeline, the API request parser) for a short while each:
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
#
# scripts/test.sh runs it as its "fuzz" step. It installs cargo-fuzz from
# crates.io if it is missing and builds the targets on the stable toolchain
# without a sanitizer (`-s none`: the code under test is safe Rust, so
# libFuzzer's coverage guidance is what matters; no nightly needed). Each
# target starts from seeds cut out of the real BIRD, GoBGP and FRR byte
# streams in control/src/bgp/testdata (the API target from the request
# lines podrouterctl and podrouter-cni send) plus what earlier runs kept in
# control/fuzz/corpus. A crash, panic or timeout fails the run; libFuzzer
# leaves the input that caused it in control/fuzz/artifacts/<target>/.
set -euo pipefail

SECS=${1:-30}
case $SECS in '' | *[!0-9]*)
    echo "fuzz.sh: seconds must be a whole number, not '$SECS'" >&2
    exit 2
    ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
pr_setup_cargo

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# Seeds: one file per BGP message of each captured stream (hex, '#' comments).
python3 - control/src/bgp/testdata control/fuzz/corpus <<'PY'
import pathlib, sys
src, corpus = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for target in ("bgp_decode", "bgp_session"):
    (corpus / target).mkdir(parents=True, exist_ok=True)
for hexfile in sorted(src.glob("*.hex")):
    text = "".join(l.split("#")[0].strip() for l in hexfile.read_text().splitlines())
    stream = bytes.fromhex(text)
    # The whole stream seeds the session target, each message the decoder.
    (corpus / "bgp_session" / f"seed-{hexfile.stem}").write_bytes(stream)
    i = n = 0
    while i + 19 <= len(stream):
        length = int.from_bytes(stream[i + 16:i + 18], "big")
        if length < 19 or i + length > len(stream):
            break
        (corpus / "bgp_decode" / f"seed-{hexfile.stem}-{n}").write_bytes(stream[i:i + length])
        i, n = i + length, n + 1
    print(f"fuzz.sh: {hexfile.name}: {n} messages as seeds")
PY

# Seeds of the pipeline target: the frames of the pod captures in
# control/fuzz/seeds/pipeline (tcpdump on a pod's eth0 under podrouterd:
# ARP, pings to pods, the node, unassigned and unrouted addresses, TTL 1,
# fragments, IPv6, UDP, TCP with 64 KiB segments), moved onto the fuzz
# target's addresses and fed in on every port role: what the pod sent from
# pod A (TCP with the offload request a TAP gives it), what the router sent
# from the host port, the pod's packets to pods behind other nodes, and as
# a remote pod's through IPIP and VXLAN from a known node.
python3 - control/fuzz/seeds/pipeline control/fuzz/corpus/pipeline <<'PY'
import pathlib, struct, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
ROUTER, HOST_MAC, A_MAC = b"\xee" * 6, bytes([2, 0, 0, 0, 0, 0xfe]), bytes([2, 0x42, 10, 244, 1, 2])
VTEP = bytes([0x0e, 0x70, 192, 168, 0, 10])
NODE, OTHER_NODE = bytes([192, 168, 0, 10]), bytes([192, 168, 0, 11])
# Capture addresses -> the fuzz target's (pod A, pod B, node, unassigned).
ADDRS = {bytes([10, 244, 0, 1]): bytes([10, 244, 1, 2]), bytes([10, 244, 0, 2]): bytes([10, 244, 1, 3]),
         bytes([192, 168, 200, 1]): NODE, bytes([10, 244, 0, 77]): bytes([10, 244, 1, 77])}
REMOTE_POD = bytes([10, 244, 2, 5])  # behind OTHER_NODE

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return struct.pack("!H", ~s & 0xFFFF)

def fix_ip(ip):
    hl = (ip[0] & 15) * 4
    ip[10:12] = b"\0\0"
    ip[10:12] = csum(bytes(ip[:hl]))
    return ip

def remap_ip(ip, src=None):
    ip = bytearray(ip)
    ip[12:16] = src or ADDRS.get(bytes(ip[12:16]), ip[12:16])
    ip[16:20] = ADDRS.get(bytes(ip[16:20]), ip[16:20])
    return fix_ip(ip)

def outer_ip(proto, payload):
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, OTHER_NODE, NODE))
    return bytes(fix_ip(h)) + payload

def vnet(flags=0, gso=0, hdr_len=0, gso_size=0, start=0, off=0):
    return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, start, off)

def seed(name, tunnel, ingress, v, frame):
    (out / f"seed-{name}").write_bytes(bytes([tunnel | ingress << 1]) + v + frame)

n = 0
for pcap in sorted(src.glob("*.pcap")):
    data = pcap.read_bytes()
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    i = 24
    while i + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[i + 8:i + 12])[0]
        f = bytearray(data[i + 16:i + 16 + incl])
        i += 16 + incl
        if len(f) < 14:
            continue
        from_pod = f[6:12] != ROUTER
        f[0:12] = (ROUTER + A_MAC) if from_pod else (ROUTER + HOST_MAC)
        et = f[12:14]
        v = vnet()
        if et == b"\x08\x06" and len(f) >= 42:  # ARP: sender and target addresses
            for at in (28, 38):
                f[at:at + 4] = ADDRS.get(bytes(f[at:at + 4]), f[at:at + 4])
            if from_pod:
                f[22:28] = A_MAC
        elif et == b"\x08\x00" and len(f) >= 34:
            f[14:] = remap_ip(f[14:])
            hl = (f[14] & 15) * 4
            if f[23] == 6 and from_pod:  # TCP: the TAP's offload request
                th = (f[14 + hl + 12] >> 4) * 4
                big = len(f) > 1514
                v = vnet(1, 1 if big else 0, 14 + hl + th, 1400 if big else 0, 14 + hl, 16)
        name = f"{pcap.stem}-{n}"
        seed(name, 0, 0 if from_pod else 2, v, bytes(f))
        if from_pod and et == b"\x08\x00" and len(f) >= 34:
            # The same to pods behind other nodes: one across the uplink's
            # subnet (encapsulated, cut into segments or fragments), one
            # of a block two nodes share (ECMP).
            for tag, dst in (("far", bytes([10, 244, 3, 7])), ("ecmp", bytes([10, 244, 5, 9]))):
                g = bytearray(f)
                g[30:34] = dst
                g[14:] = fix_ip(g[14:])
                seed(f"{name}-{tag}", 0, 0, v, bytes(g))
            inner = bytes(remap_ip(f[14:], REMOTE_POD))
            seed(name + "-ipip", 0, 3, v, ROUTER + bytes(6) + b"\x08\x00" + outer_ip(4, inner))
            vx = struct.pack("!BxxxI", 0x08, 1 << 8)
            inner_eth = VTEP + bytes([0x0e, 0x70, 9, 9, 9, 9]) + b"\x08\x00" + inner
            udp = struct.pack("!HHHH", 40000, 8472, 8 + len(vx) + len(inner_eth), 0) + vx + inner_eth
            seed(name + "-vxlan", 1, 3, vnet(), bytes([2, 0, 0, 0, 0, 0x77, 2, 0, 0, 0, 0, 0x78]) + b"\x08\x00" + outer_ip(17, udp))
        n += 1
print(f"fuzz.sh: {n} captured frames as pipeline seeds")
PY

# Seeds for the API parser: request lines as podrouterctl and podrouter-cni
# send them (one per file), a pipelined pair, and a few that must be refused.
api=control/fuzz/corpus/api_request
mkdir -p "$api"
n=0
while IFS= read -r line; do
    printf '%s\n' "$line" >"$api/seed-$n"
    n=$((n + 1))
done <<'SEEDS'
{"version":1,"method":"status"}
{"version":1,"method":"list_pods"}
{"version":1,"method":"attach","params":{"id":"pod1","netns":"/run/netns/pod1","ifname":"eth0","mtu":1480}}
{"version":1,"method":"attach","params":{"id":"c0ffee","netns":"/var/run/netns/cni-1","ifname":"eth0","ip":"10.244.0.7","identity":{"namespace":"default","name":"web","labels":{"app":"web"},"ports":[{"name":"http","protocol":"TCP","port":80}]}}}
{"version":1,"method":"detach","params":{"id":"pod1"}}
{"version":1,"method":"detach","params":{"id":"c0ffee","netns":"/var/run/netns/cni-1","ifname":"eth0"}}
{"version":1,"method":"routes"}
{"version":1,"method":"counters"}
{"version":1,"method":"bgp_peers"}
{"version":1,"method":"bgp_rib","params":{"prefix":"10.244.0.0/16","limit":100}}
{"version":1,"method":"reload"}
{"version":1,"method":"policy_apply","params":{"text":"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\nspec: {podSelector: {}}"}}
{"version":1,"method":"policy_delete","params":{"namespace":"default","name":"deny"}}
{"version":1,"method":"policy_list"}
{"version":1,"method":"policy_show","params":{"pod":"pod1"}}
{"version":1,"method":"pod_label","params":{"pod":"pod1","set":{"app":"db"},"remove":["tier"]}}
{"version":1,"method":"namespace_label","params":{"namespace":"default","set":{"team":"a"}}}
{"version":1,"method":"endpoint_apply","params":{"text":"ip: 10.0.0.9\nnamespace: ext\nname: db"}}
{"version":1,"method":"endpoint_delete","params":{"ip":"10.0.0.9"}}
{"version":1,"method":"endpoint_list"}
{"version":2,"method":"status"}
{"method":"status"}
{"version":1,"method":"attach","params":{"id":"x","netns":"/n","bogus":1}}
SEEDS
printf '%s\n%s\n' '{"version":1,"method":"status"}' '{"version":1,"method":"counters"}' \
    >"$api/seed-pipelined"
echo "fuzz.sh: $n API request lines as seeds"

cd control/fuzz
cargo fuzz build -s none
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in bgp_decode bgp_session pipeline api_request; do
    echo "fuzz.sh: $target for ${SECS}s"
    # -timeout: one input taking over 10 s counts as a hang (a failure).
    status=0
    cargo fuzz run -s none "$target" -- -max_total_time="$SECS" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer's progress lines are trimmed; its verdict and stats are kept.
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|thread|panicked|Test unit written)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz.sh: $target FAILED (exit $status); reproduce with:" >&2
        echo "  cd control/fuzz && cargo fuzz run -s none $target artifacts/$target/<file>" >&2
        exit 1
    fi
done
echo "fuzz.sh: no crash, panic, hang or frame out of the wrong port"
