#!/usr/bin/env python3
"""Probe (run as root): what an XDP program on one end of a veth pair does
to the other end's offloads, with and without multi-buffer support.

The afxdp backend attaches an XDP program to each pod veth's node end; veth
then turns TSO off on the pod end, so a pod's TCP is cut into MTU-sized
frames. Multi-buffer XDP (a program loaded with BPF_F_XDP_HAS_FRAGS, an
AF_XDP socket bound with XDP_USE_SG) is the kernel's way to carry frames
larger than a page. This probe loads the two-instruction program
`r0 = XDP_PASS; exit` without and with that flag, attaches each in driver
mode to `va` in a namespace of its own, and prints the peer `vb`'s TSO and
GSO state, its largest MTU, and whether MTU 9000 is accepted.

Seen on kernel 6.18: without a program TSO on, max MTU 65535; with either
program TSO off; max MTU 3506 without the flag, 73138 with it. So
multi-buffer does not bring TSO back; it only lets the pod's MTU (and so
its TCP segments) grow past a page.

Needs iproute2, ethtool and nsenter. Cleans up: the namespace, the pinned
programs, and the bpf filesystem mount if it made one.
"""
import ctypes
import os
import struct
import subprocess

NR_BPF = 321  # x86-64
BPF_PROG_LOAD, BPF_OBJ_PIN = 5, 6
BPF_PROG_TYPE_XDP = 6
BPF_F_XDP_HAS_FRAGS = 1 << 5
XDP_PASS = 2

libc = ctypes.CDLL(None, use_errno=True)


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def bpf(cmd, attr):
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    ret = libc.syscall(NR_BPF, cmd, buf, len(attr))
    if ret < 0:
        raise OSError(ctypes.get_errno(), "bpf(%d)" % cmd)
    return ret


def load_pass_program(prog_flags):
    # mov r0, XDP_PASS; exit
    insns = struct.pack("<BBhi", 0xB7, 0, 0, XDP_PASS) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    # prog_type, insn_cnt, insns, license; prog_flags sits at byte 44.
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_XDP, 2, ctypes.addressof(code), ctypes.addressof(license))
    struct.pack_into("<I", attr, 44, prog_flags)
    return bpf(BPF_PROG_LOAD, attr)


def pin(fd, path):
    name = ctypes.create_string_buffer(path.encode())
    attr = bytearray(128)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(name), fd)
    bpf(BPF_OBJ_PIN, attr)


def peer(ns, dev):
    k = sh("ip", "netns", "exec", ns, "ethtool", "-k", dev).stdout
    tso = next(l.split(":")[1].strip() for l in k.splitlines() if l.startswith("tcp-segmentation-offload"))
    gso = next(l.split(":")[1].strip() for l in k.splitlines() if l.startswith("generic-segmentation-offload"))
    d = sh("ip", "-n", ns, "-d", "link", "show", dev).stdout.split()
    maxmtu = d[d.index("maxmtu") + 1] if "maxmtu" in d else "?"
    jumbo = sh("ip", "-n", ns, "link", "set", "dev", dev, "mtu", "9000", check=False).returncode == 0
    sh("ip", "-n", ns, "link", "set", "dev", dev, "mtu", "1500")
    return "TSO %s, GSO %s, max MTU %s, MTU 9000 %s" % (tso, gso, maxmtu, "accepted" if jumbo else "refused")


def main():
    ns = "probe-xdpfrags-%d" % os.getpid()
    mounted = False
    if not os.path.ismount("/sys/fs/bpf"):
        sh("mount", "-t", "bpf", "bpf", "/sys/fs/bpf")
        mounted = True
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        sh("ip", "-n", ns, "link", "set", "va", "up")
        sh("ip", "-n", ns, "link", "set", "vb", "up")
        print("no program on va:           vb:", peer(ns, "vb"))
        for name, flags in (("plain", 0), ("multi-buffer", BPF_F_XDP_HAS_FRAGS)):
            fd = load_pass_program(flags)
            path = "/sys/fs/bpf/probe_xdpfrags_%d" % os.getpid()
            pin(fd, path)
            try:
                # nsenter keeps this mount namespace (and its bpf mount).
                sh("nsenter", "--net=/run/netns/" + ns, "ip", "link", "set", "dev", "va", "xdpdrv", "pinned", path)
                print("%-13s program on va: vb:" % name, peer(ns, "vb"))
                sh("ip", "-n", ns, "link", "set", "dev", "va", "xdpdrv", "off")
            finally:
                os.unlink(path)
                os.close(fd)
    finally:
        sh("ip", "netns", "del", ns, check=False)
        if mounted:
            sh("umount", "/sys/fs/bpf", check=False)


if __name__ == "__main__":
    main()
