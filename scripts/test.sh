#!/usr/bin/env bash
# podrouter's test command (README "Running the tests"; CI runs it through
# .ci/run). As root it runs everything, including the end-to-end tests in
# network namespaces, and refuses to let any of them skip:
#
#   sudo bash scripts/test.sh
#
# Steps: install missing system packages, cargo fmt --check, clippy with
# warnings denied, release build of the binaries, cargo test --release for the
# whole workspace, the end-to-end tests again on the afxdp backend, the demo
# (scripts/demo.sh, as root), a criterion smoke run of the benchmarks, a short
# fuzz run of the BGP codec and the pipeline, the benchmark harness's smoke
# mode and a one-minute soak. Every step runs even if an earlier one failed
# (except tests and the demo after a failed build); a summary follows, and
# the exit status is non-zero if anything failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# shellcheck source=scripts/common.sh
. scripts/common.sh
trap pr_restore_target_owner EXIT

START=$(date +%s)
SUMMARY=()
FAILED=0
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/podrouter-test.XXXXXX")

# step NAME CMD...: runs CMD, records PASS/FAIL and the time it took.
# STEP_DESC, if set, is shown instead of CMD.
step() {
    local name=$1
    shift
    local desc=${STEP_DESC:-$*}
    echo
    echo "==> $name: $desc"
    local t0 rc
    t0=$(date +%s)
    "$@"
    rc=$?
    local dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        SUMMARY+=("$(printf 'ok      %-8s %4ss  %s' "$name" "$dt" "$desc")")
    else
        SUMMARY+=("$(printf 'FAILED  %-8s %4ss  %s (exit %s)' "$name" "$dt" "$desc" "$rc")")
        FAILED=1
    fi
    return $rc
}

skip_step() {
    SUMMARY+=("$(printf 'skipped %-8s        %s' "$1" "$2")")
}

if ! step deps bash scripts/install-deps.sh; then
    echo "cannot install the dependencies; stopping" >&2
    exit 1
fi
pr_setup_cargo || exit 1
for comp in fmt clippy; do
    if ! cargo "$comp" --version >/dev/null 2>&1; then
        echo "error: cargo $comp is missing: rustup component add ${comp/fmt/rustfmt}" >&2
        exit 1
    fi
done

if [ "$(id -u)" -eq 0 ]; then
    # Every privileged test (end-to-end, CNI and podman, the privileged
    # unit tests) must run, not skip: install-deps installed what they need.
    export PODROUTER_E2E_REQUIRE=1
else
    echo "note: not root: the end-to-end tests will print SKIP and not run (use sudo)" >&2
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Limits (seconds) for the steps that run code that could hang.
TEST_TIMEOUT=${PODROUTER_TEST_TIMEOUT:-1200}
BENCH_TIMEOUT=${PODROUTER_BENCH_TIMEOUT:-900}
DEMO_TIMEOUT=${PODROUTER_DEMO_TIMEOUT:-300}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings

# The e2e tests run target/release/podrouterd and podrouterctl: build them
# first, from the same sources the tests are built from.
BUILD_OK=0
if step build cargo build --release --workspace --bins; then
    BUILD_OK=1
    TESTLOG="$LOGDIR/cargo-test.log"
    # A hung test must fail the run, not stall CI: timeout signals its whole
    # process group (cargo and the test binaries) after the limit.
    run_tests() {
        timeout -k 30 "$TEST_TIMEOUT" cargo test --release --workspace --no-fail-fast 2>&1 | tee "$TESTLOG"
        local rc=${PIPESTATUS[0]}
        [ "$rc" -eq 124 ] && echo "cargo test did not finish within ${TEST_TIMEOUT}s" >&2
        return "$rc"
    }
    STEP_DESC="cargo test --release --workspace --no-fail-fast" step test run_tests
    # The end-to-end tests that attach pods, again on the afxdp backend
    # (pods on veth pairs driven through AF_XDP; the helpers read
    # PODROUTER_BACKEND): everything above the port must behave the same.
    AFXDP_TESTS=(-p podrouter-e2e -p podrouter-cni --test forwarding --test icmp --test security
        --test restart --test pods --test cli --test daemon --test multinode --test reload
        --test services --test uninstall --test uplink_xdp --test plugin --test podman)
    TESTLOG_AFXDP="$LOGDIR/cargo-test-afxdp.log"
    run_afxdp_tests() {
        PODROUTER_BACKEND=afxdp timeout -k 30 "$TEST_TIMEOUT" \
            cargo test --release --no-fail-fast "${AFXDP_TESTS[@]}" 2>&1 | tee "$TESTLOG_AFXDP"
        local rc=${PIPESTATUS[0]}
        [ "$rc" -eq 124 ] && echo "cargo test (afxdp) did not finish within ${TEST_TIMEOUT}s" >&2
        return "$rc"
    }
    if [ "$(id -u)" -eq 0 ]; then
        STEP_DESC="PODROUTER_BACKEND=afxdp cargo test --release ${AFXDP_TESTS[*]}" \
            step afxdp run_afxdp_tests
    else
        skip_step afxdp "the afxdp end-to-end pass needs root"
    fi
else
    skip_step test "the release build failed"
fi

# The README's first command (issue 18) must work: the two-node demo exits 0
# when every step that ran passed. Its namespaces and temp dir carry our
# tag, so a demo that failed, hung or was killed is checked for leftovers.
DEMO_TAG="prdemo-ci$$"
run_demo() {
    PODROUTER_DEMO_TAG=$DEMO_TAG timeout -k 30 "$DEMO_TIMEOUT" bash scripts/demo.sh 2>&1 | tee "$LOGDIR/demo.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "scripts/demo.sh did not finish within ${DEMO_TIMEOUT}s" >&2
    # Anything left is a failure; remove it (processes in its namespaces by
    # pid, then the namespaces and the temp dir).
    local ns pid left=()
    for ns in $(ip netns list | awk '{print $1}' | grep "^$DEMO_TAG-"); do
        left+=("netns $ns")
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            left+=("pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))")
            kill -KILL "$pid" 2>/dev/null
        done
        ip netns del "$ns"
    done
    for pid in $(pgrep -f -- "/tmp/$DEMO_TAG\."); do
        left+=("pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))")
        kill -KILL "$pid" 2>/dev/null
    done
    for d in /tmp/"$DEMO_TAG".*; do
        [ -e "$d" ] && left+=("dir $d") && rm -rf "$d"
    done
    if [ "${#left[@]}" -gt 0 ]; then
        echo "scripts/demo.sh left these behind (now removed):" >&2
        printf '  %s\n' "${left[@]}" >&2
        [ "$rc" -eq 0 ] && rc=1
    fi
    return "$rc"
}
if [ "$(id -u)" -ne 0 ]; then
    skip_step demo "scripts/demo.sh needs root"
elif [ "$BUILD_OK" -eq 1 ]; then
    STEP_DESC="scripts/demo.sh (two nodes, BGP, pods across the tunnel, a Service)" step demo run_demo
else
    skip_step demo "the release build failed"
fi

STEP_DESC="cargo bench -p podrouter-benches -- --test" \
    step bench timeout -k 30 "$BENCH_TIMEOUT" cargo bench -p podrouter-benches -- --test

# The BGP message decoder and session (issue 5) and the data-plane
# pipeline (issue 15) under libFuzzer: a short run of each cargo-fuzz
# target on the stable toolchain.
FUZZ_SECS=${PODROUTER_FUZZ_SECS:-30}
STEP_DESC="scripts/fuzz.sh $FUZZ_SECS (cargo fuzz: bgp_decode, bgp_session, pipeline, api_request)" \
    step fuzz timeout -k 30 "$BENCH_TIMEOUT" bash scripts/fuzz.sh "$FUZZ_SECS"

# The benchmark harness (issue 6) in its short mode: it builds both data
# planes' topologies and measures once, so a broken scenario fails CI.
if [ "$(id -u)" -eq 0 ] && [ -x target/release/podrouter-bench ]; then
    step harness timeout -k 30 "$BENCH_TIMEOUT" target/release/podrouter-bench --smoke --quiet --out target/podrouter-bench-smoke
else
    skip_step harness "podrouter-bench --smoke needs root and the release build"
fi

# A one-minute soak (issue 15): TCP between two pods with pings beside it;
# fails if podrouterd exits, TCP stalls, pings are lost or its RSS grows.
if [ "$(id -u)" -eq 0 ] && [ -x target/release/podrouter-bench ]; then
    SOAK_MIN=${PODROUTER_SOAK_MINUTES:-1}
    step soak timeout -k 30 "$BENCH_TIMEOUT" target/release/podrouter-bench --soak "$SOAK_MIN" --quiet --out target/podrouter-bench-soak
else
    skip_step soak "podrouter-bench --soak needs root and the release build"
fi

# Totals over every test binary of the workspace (libtest's result lines).
PASSED=0 FAILEDN=0 IGNORED=0 SKIPPED=0
for log in "${TESTLOG:-}" "${TESTLOG_AFXDP:-}"; do
    [ -n "$log" ] && [ -f "$log" ] || continue
    while read -r p f i; do
        PASSED=$((PASSED + p)) FAILEDN=$((FAILEDN + f)) IGNORED=$((IGNORED + i))
    done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log")
    S=$(grep -c '^SKIP ' "$log" || true)
    SKIPPED=$((SKIPPED + S))
    if [ "$S" -gt 0 ]; then
        echo
        echo "skipped end-to-end tests in $(basename "$log") (they count as passed in libtest's totals):"
        grep '^SKIP ' "$log" | sed 's/^/  /'
    fi
done

echo
echo "==================== summary ===================="
printf '%s\n' "${SUMMARY[@]}"
echo "total time: $(($(date +%s) - START))s; logs in $LOGDIR"
if [ -n "${TESTLOG:-}" ]; then
    # Skipped tests pass in libtest; count them apart.
    echo "tests: $((PASSED - SKIPPED)) passed, $FAILEDN failed, $SKIPPED skipped"
fi
if [ "$FAILED" -ne 0 ]; then
    echo "RESULT: FAILED"
    exit 1
fi
echo "RESULT: ok"
