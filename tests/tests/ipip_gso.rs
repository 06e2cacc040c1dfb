//! IPIP that carries a pod's 64 KiB TCP segments across the underlay
//! whole (`router/src/ipip_gso.rs`): two podrouter nodes on a bridge of
//! veths (MTU 1500), iperf3 between their pods.
//!
//! - over veths, which carry IPIP GSO whole, the sending node's TAP path
//!   carries the bulk of the bytes (its counters in `podrouterctl
//!   status`), and IPIP packets longer than the underlay's MTU cross the
//!   bridge (the receiving raw socket reads them whole);
//! - with IPIP segmentation off on the sending node's veth (as a NIC
//!   without IPIP TSO), the node's kernel cuts those packets into IPIP
//!   packets that fit: none longer than the MTU is on the wire, and TCP
//!   works both ways;
//! - `ipip_gso = false` turns the path off and says so.
//!
//! With the `afxdp` backend a pod's frames are never GSO (an AF_XDP
//! socket has no offloads, and veth turns off TSO towards a peer with an
//! XDP program), so the path is on but carries nothing: the tests check
//! that and that TCP works.
use std::time::Duration;

use podrouter_e2e::multinode::*;
use podrouter_e2e::*;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(10);
const TOOLS: &[&str] = &["ping", "iperf3", "tcpdump", "ss", "ethtool"];

fn gso_status(n: &ClusterNode) -> Value {
    n.ctl(&["status"])["ipip_gso"].clone()
}

/// IPIP packets on `bridge` longer than the underlay's MTU (1500) while
/// iperf3 runs from `a` to `b`; returns (rate, count).
fn iperf3_counting_big_ipip(c: &Cluster, a: &Pod, b: &Pod) -> (f64, usize) {
    let cap = Capture::start(c.underlay.name(), "br0", "ip proto 4 and greater 1515");
    let rate = iperf3_gbps(a, b);
    let text = cap.stop();
    (rate, text.matches("proto IPIP (4)").count())
}

fn two_pods(c: &mut Cluster) -> (Pod, Pod) {
    let a = c.nodes[0].add_pod("n0p1", &[]);
    let b = c.nodes[1].add_pod("n1p1", &[]);
    assert!(
        settle(&a.ns, &b.ip, SETTLE),
        "{} never reached {}",
        a.id,
        b.id
    );
    (a, b)
}

/// The TAP path carries the bulk: more than half of iperf3's bytes went
/// through node 0's TAP as whole segments, and IPIP packets longer than
/// the MTU crossed the bridge (each read whole by node 1's raw socket).
#[test]
fn tcp_segments_cross_between_nodes_whole() {
    if !require("tcp_segments_cross_between_nodes_whole", TOOLS) {
        return;
    }
    let mut c = Cluster::start("always", &[0, 0]);
    let (a, b) = two_pods(&mut c);
    let before = gso_status(&c.nodes[0]);
    assert_eq!(before["enabled"], true, "ipip_gso off on node 0: {before}");
    assert!(
        c.nodes[0].daemon_log().contains("ipip_gso: TCP segments"),
        "no log line saying the path is on"
    );
    let (rate, big) = iperf3_counting_big_ipip(&c, &a, &b);
    let after = gso_status(&c.nodes[0]);
    let frames = num(&after, "/frames") - num(&before, "/frames");
    let bytes = num(&after, "/bytes") - num(&before, "/bytes");
    say(&format!(
        "iperf3 {rate:.2} Gbit/s; node 0's TAP path: {frames} frames, {bytes} bytes \
         ({} bytes a frame); {big} IPIP packets longer than 1500 on the bridge",
        bytes / frames.max(1)
    ));
    if backend() == "afxdp" {
        assert!(rate > 0.0);
        assert_eq!(frames, 0, "afxdp pods hand over no GSO frames");
        say("afxdp backend: no GSO frames from pods, the TAP path carried nothing");
        return;
    }
    // iperf3 -t 1 moved rate * 1e9 / 8 bytes; the TAP path took most.
    let moved = rate * 1e9 / 8.0;
    assert!(
        bytes as f64 > moved / 2.0,
        "the TAP path took {bytes} of about {moved:.0} bytes"
    );
    assert!(bytes / frames.max(1) > 3000, "frames are not segments");
    assert_eq!(num(&after, "/errors"), 0);
    assert!(big > 0, "no IPIP packet longer than the MTU on the wire");
    // Back the other way too.
    let back = iperf3_gbps(&b, &a);
    assert!(back > 0.0);
    assert!(num(&gso_status(&c.nodes[1]), "/frames") > 0);
    // Nothing refused as too big on either node.
    for n in &c.nodes {
        let k = n.counters();
        for reason in ["frag_needed", "too_big", "ipip_malformed"] {
            assert_eq!(
                num(&k, &format!("/drops/{reason}")),
                0,
                "node {}: {}",
                n.index,
                k["drops"]
            );
        }
    }
}

/// With IPIP segmentation off on node 0's veth the kernel cuts the
/// segments at the right headers: no IPIP packet longer than the MTU
/// leaves, and TCP flows both ways.
#[test]
fn a_link_without_ipip_segmentation_gets_cut_packets() {
    if !require("a_link_without_ipip_segmentation_gets_cut_packets", TOOLS) {
        return;
    }
    let no_ipip_tso = |u: &Underlay<'_>| {
        u.nodes[0]
            .ns
            .exec(&["ethtool", "-K", "eth0", "tx-ipxip4-segmentation", "off"])
            .expect_ok();
    };
    let mut c = Cluster::start_prepared("always", &[0, 0], "", &no_ipip_tso);
    let (a, b) = two_pods(&mut c);
    let (rate, big) = iperf3_counting_big_ipip(&c, &a, &b);
    let s = gso_status(&c.nodes[0]);
    say(&format!(
        "iperf3 {rate:.2} Gbit/s with node 0's IPIP segmentation off; TAP path {s}; \
         {big} IPIP packets longer than 1500 on the bridge"
    ));
    assert_eq!(
        num(&s, "/frames") > 0,
        backend() != "afxdp",
        "the TAP path was used iff pods hand over GSO frames: {s}"
    );
    assert_eq!(big, 0, "node 0 sent IPIP longer than the MTU");
    assert!(rate > 0.0);
    let back = iperf3_gbps(&b, &a);
    assert!(back > 0.0);
    for n in &c.nodes {
        let k = n.counters();
        assert_eq!(num(&k, "/drops/ipip_malformed"), 0, "{}", k["drops"]);
    }
}

/// `ipip_gso = false`: no TAP, segments cut in userspace, status says off.
#[test]
fn ipip_gso_can_be_turned_off() {
    if !require("ipip_gso_can_be_turned_off", &["ping"]) {
        return;
    }
    let mut c = Cluster::start_with("always", &[0, 0], "ipip_gso = false\n");
    let (_a, _b) = two_pods(&mut c);
    let s = gso_status(&c.nodes[0]);
    assert_eq!(s["enabled"], false, "{s}");
    assert!(
        !c.nodes[0]
            .ns
            .exec(&["ip", "link"])
            .text()
            .contains("podrouter-ip"),
        "a TAP was made"
    );
    let table = podrouterctl(&c.nodes[0].socket, false, &["status"]).expect_ok();
    assert!(
        table.text().contains("off (segments cut in userspace)"),
        "{}",
        table.text()
    );
}
