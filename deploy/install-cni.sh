#!/bin/sh
# Installs podrouter-cni and its network configuration on a node, as the
# init container of deploy/kubernetes/podrouter.yaml runs it (and as anyone
# may by hand). It does what calico-node's install-cni does, for podrouter:
#
#  - the plugin binary is copied next to the destination under a temporary
#    name, then renamed over the old one: a runtime that execs it at that
#    moment sees the old file or the new one, never a half-written one;
#  - the conflist is written the same way, under its own name only
#    (CNI_CONF_NAME, 10-podrouter.conflist): other plugins' files in the
#    configuration directory are never written, renamed or removed;
#  - an unchanged file is left alone (its mtime too), so a restart of the
#    pod does not make the runtime reload anything.
#
# Environment (defaults are the DaemonSet's mount points):
#   CNI_BIN_SRC     directory holding podrouter-cni     (/opt/podrouter/bin)
#   CNI_BIN_DIR     where runtimes look for plugins     (/host/opt/cni/bin)
#   CNI_NET_DIR     where runtimes read configurations  (/host/etc/cni/net.d)
#   CNI_CONF_NAME   the conflist's file name            (10-podrouter.conflist)
#   CNI_NETWORK_CONFIG_FILE  the conflist to install    (/etc/podrouter/cni.conflist)
# Exit status: 0 installed (or already current), 1 on any error (message on
# stderr), nothing left half-done.
set -eu

CNI_BIN_SRC=${CNI_BIN_SRC:-/opt/podrouter/bin}
CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
CNI_CONF_NAME=${CNI_CONF_NAME:-10-podrouter.conflist}
CNI_NETWORK_CONFIG_FILE=${CNI_NETWORK_CONFIG_FILE:-/etc/podrouter/cni.conflist}

die() {
    echo "install-cni: $*" >&2
    exit 1
}

case "$CNI_CONF_NAME" in
*/* | .* | "") die "CNI_CONF_NAME must be a plain file name, not '$CNI_CONF_NAME'" ;;
*.conflist) ;;
*) die "CNI_CONF_NAME must end in .conflist, not '$CNI_CONF_NAME'" ;;
esac
[ -x "$CNI_BIN_SRC/podrouter-cni" ] || die "no executable $CNI_BIN_SRC/podrouter-cni"
[ -f "$CNI_NETWORK_CONFIG_FILE" ] || die "no network configuration $CNI_NETWORK_CONFIG_FILE"
# The configuration must be a conflist for podrouter-cni: refusing a broken
# one here beats a node whose runtime cannot start any pod.
grep -q '"plugins"' "$CNI_NETWORK_CONFIG_FILE" ||
    die "$CNI_NETWORK_CONFIG_FILE is not a conflist (no \"plugins\" list)"
grep -q '"type"[[:space:]]*:[[:space:]]*"podrouter-cni"' "$CNI_NETWORK_CONFIG_FILE" ||
    die "$CNI_NETWORK_CONFIG_FILE has no plugin of type podrouter-cni"

# install SRC DIR NAME MODE: atomic replace of DIR/NAME by SRC's content.
install_file() {
    src=$1 dir=$2 name=$3 mode=$4
    mkdir -p "$dir" || die "cannot create $dir"
    if [ -f "$dir/$name" ] && cmp -s "$src" "$dir/$name"; then
        echo "install-cni: $dir/$name is current"
        return 0
    fi
    tmp="$dir/.$name.podrouter-tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    cp "$src" "$tmp" || die "cannot write $tmp"
    chmod "$mode" "$tmp" || die "cannot chmod $tmp"
    mv -f "$tmp" "$dir/$name" || die "cannot rename $tmp to $dir/$name"
    trap - EXIT
    echo "install-cni: installed $dir/$name"
}

install_file "$CNI_BIN_SRC/podrouter-cni" "$CNI_BIN_DIR" podrouter-cni 0755
install_file "$CNI_NETWORK_CONFIG_FILE" "$CNI_NET_DIR" "$CNI_CONF_NAME" 0644
