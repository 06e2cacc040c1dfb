#!/usr/bin/env bash
# Installs what podrouter's build, tests and demo need on Debian 12, if it is
# missing. Idempotent and quiet: a second run installs nothing and prints one
# line. Needs root for apt-get (it uses sudo when run as another user).
#
#   bash scripts/install-deps.sh           # everything (scripts/test.sh)
#   bash scripts/install-deps.sh --demo    # only what scripts/demo.sh needs
set -euo pipefail

DEMO_ONLY=0
case "${1:-}" in
--demo) DEMO_ONLY=1 ;;
"") ;;
*)
    echo "usage: $0 [--demo]" >&2
    exit 2
    ;;
esac

# command -> Debian package that provides it
declare -A NEED=(
    [ip]=iproute2
    [ping]=iputils-ping
    [arping]=iputils-arping
    [tracepath]=iputils-tracepath
    [iperf3]=iperf3
    [tcpdump]=tcpdump
    # GRO on veth underlays (the harness's two-node topologies, the e2e
    # test of IPIP over an underlay with GRO), as a NIC has it.
    [ethtool]=ethtool
    [pgrep]=procps
    # kube-proxy-style rules (nft backend): the demo's Service step,
    # tests/tests/services.rs and the harness's Services scenario.
    [iptables]=iptables
    [iptables-restore]=iptables
    [curl]=curl          # the demo's Service step
    [ss]=iproute2
    [nsenter]=util-linux
    # Real BGP peers for the interop tests (none starts a service by itself).
    [bird]=bird2
    [birdc]=bird2
    [gobgpd]=gobgpd
    [gobgp]=gobgpd
    [vtysh]=frr
    [python3]=python3   # the scripted BGP peer of tests/tests/bgp_malformed.rs
    # A real Prometheus scraping /metrics (tests/tests/metrics.rs); the
    # package's own service is not used (the test starts one in a netns).
    [prometheus]=prometheus
    [promtool]=prometheus
    # `systemd-analyze verify` of deploy/systemd/podrouterd.service
    # (tests/tests/systemd.rs); nothing is started with it.
    [systemd-analyze]=systemd
    # Reads back podrouterctl capture's pcapng (tests/tests/capture.rs,
    # the demo's capture step).
    [tshark]=tshark
    [cc]=build-essential
    [make]=build-essential
    [pkg-config]=pkg-config
)

# The demo runs these and builds with cc; on a fresh machine it need not
# wait for the test suite's BGP daemons and container runtime, nor for
# build-essential's C++ compiler, make and Perl (the fuzz targets' libFuzzer
# is C++; the two binaries the demo builds only need cc to link, and no
# crate of theirs compiles C or asks pkg-config).
if [ "$DEMO_ONLY" -eq 1 ]; then
    for cmd in "${!NEED[@]}"; do
        case "$cmd" in
        ip | ss | ping | iperf3 | tcpdump | iptables | curl | python3 | tshark | cc) ;;
        *) unset "NEED[$cmd]" ;;
        esac
    done
    NEED[cc]=gcc
fi

missing=()
for cmd in "${!NEED[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
# The C library's startup files and headers, which cc links every binary
# with (build-essential brings them; gcc alone only recommends them).
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
with_recommends=()
if [ "$DEMO_ONLY" -eq 0 ]; then
    [ -x /usr/lib/frr/bgpd ] || missing+=(frr)

    # The CNI tests: Debian's reference plugins (ptp, host-local) and a real
    # runtime, podman with runc and a busybox root filesystem. podman is
    # installed with its recommended packages, as the interop recipe that was
    # proven on these machines does.
    [ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v podman >/dev/null 2>&1 || with_recommends+=(podman)
fi

if [ "${#missing[@]}" -gt 0 ] || [ "${#with_recommends[@]}" -gt 0 ]; then
    # unique, sorted package list
    mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" "${with_recommends[@]}" | sed '/^$/d' | sort -u)
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO="sudo"
        else
            echo "install-deps: need root to install: ${pkgs[*]}" >&2
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: no apt-get here; install these by hand: ${pkgs[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp)
    install() {
        # tshark's wireshark-common asks whether non-root users may
        # capture; answer no before apt-get can ask.
        echo "wireshark-common wireshark-common/install-setuid boolean false" |
            $SUDO debconf-set-selections || return
        $SUDO apt-get update -qq || return
        if [ "${#missing[@]}" -gt 0 ]; then
            $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" || return
        fi
        if [ "${#with_recommends[@]}" -gt 0 ]; then
            $SUDO apt-get install -y -qq "${with_recommends[@]}" || return
        fi
    }
    if ! install >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "install-deps: apt-get failed" >&2
        exit 1
    fi
    rm -f "$log"
else
    if [ "$DEMO_ONLY" -eq 1 ]; then
        echo "install-deps: the demo's system packages are present"
    else
        echo "install-deps: all system packages present"
    fi
fi

# Rust comes from rustup, not apt (Debian 12's rustc is older than the
# workspace's rust-version). Under sudo, whose secure_path drops
# ~/.cargo/bin, it is looked for where scripts/demo.sh and scripts/test.sh
# look (pr_setup_cargo): the invoking user's, then root's rustup install.
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if ! pr_setup_cargo 2>/dev/null; then
    cat >&2 <<'MSG'
install-deps: Rust (cargo) is missing. Install it with rustup
(https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh),
with rustfmt and clippy (rustup component add rustfmt clippy), then run this again.
MSG
    exit 1
fi
