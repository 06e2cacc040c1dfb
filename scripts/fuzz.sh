#!/usr/bin/env bash
# Runs the cargo-fuzz targets (control/fuzz: the BGP codec and session, the
# API request parser) for a short while each:
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
for target in bgp_decode bgp_session api_request; do
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
echo "fuzz.sh: no crash, panic or hang"
