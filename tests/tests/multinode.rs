//! Many nodes: IPIP in userspace between node namespaces, each running its
//! own podrouterd, over an underlay of bridges (see `multinode.rs` in the
//! helpers for the topology). Per encap mode: ping (with the expected TTL)
//! and iperf3 TCP between every pair of pods, tcpdump on the underlay
//! showing protocol 4 exactly when the mode says so with the inner
//! addresses unchanged; tracepath and path MTU across the router; the IPIP
//! drop counters.
use std::path::Path;
use std::time::Duration;

use podrouter_e2e::multinode::*;
use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(10);
const TOOLS: &[&str] = &["ping", "iperf3", "tcpdump", "ss", "sysctl"];

fn all_pods(c: &mut Cluster, per_node: usize) -> Vec<(usize, Pod)> {
    let mut pods = Vec::new();
    for n in c.nodes.iter_mut() {
        for k in 0..per_node {
            let id = format!("n{}p{}", n.index, k + 1);
            pods.push((n.index, n.add_pod(&id, &[])));
        }
    }
    pods
}

/// Ping between every ordered pair of pods, each reply with the TTL the
/// topology implies.
fn ping_every_pair(c: &Cluster, pods: &[(usize, Pod)]) {
    for (i, a) in pods {
        for (j, b) in pods {
            if a.id == b.id {
                continue;
            }
            assert!(
                settle(&a.ns, &b.ip, SETTLE),
                "{} never reached {} ({})",
                a.id,
                b.id,
                c.encap
            );
            // One retry absorbs a stray loss on a busy 2-core machine; a
            // real fault fails both.
            let ttl = c.reply_ttl(*i, *j);
            let p = ping(&a.ns, &b.ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
            if p.received < 2 {
                say(&format!("retrying {} -> {}: {}", a.id, b.id, p.text));
                assert_ping(&a.ns, &b.ip, 2, ttl);
            } else {
                assert!(
                    p.ttls.iter().all(|t| *t == ttl),
                    "{} -> {} ({}): expected ttl={ttl}:\n{}",
                    a.id,
                    b.id,
                    c.encap,
                    p.text
                );
            }
        }
    }
}

/// iperf3 (1 s) between every unordered pair of pods, the first of the
/// pair as client; prints the rates.
fn iperf3_every_pair(c: &Cluster, pods: &[(usize, Pod)]) {
    let mut line = format!("iperf3 Gbit/s, encap {}:", c.encap);
    for (x, (_, a)) in pods.iter().enumerate() {
        for (_, b) in &pods[x + 1..] {
            let g = iperf3_gbps(a, b);
            line += &format!(" {}->{} {g:.2};", a.id, b.id);
        }
    }
    say(&line);
}

/// Pings `b` from `a` while capturing IPIP and ICMP on `bridge` of the
/// underlay; asserts protocol 4 is on the wire iff `encap`, carrying (or
/// otherwise plainly showing) the pods' own addresses, with the outer
/// addresses of the two nodes.
fn assert_wire(c: &Cluster, bridge: &str, a: &Pod, b: &Pod, nodes: (&str, &str), encap: bool) {
    let cap = Capture::start(c.underlay.name(), bridge, "ip proto 4 or icmp");
    let p = ping(&a.ns, &b.ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert_eq!(p.received, 2, "ping during capture:\n{}", p.text);
    let text = cap.stop();
    let ipip = text.matches("proto IPIP (4)").count();
    let request = format!("{} > {}: ICMP echo request", a.ip, b.ip);
    let reply = format!("{} > {}: ICMP echo reply", b.ip, a.ip);
    assert!(
        text.contains(&request) && text.contains(&reply),
        "the pods' own addresses are not on the wire ({}):\n{text}",
        c.encap
    );
    if encap {
        assert!(
            ipip >= 4,
            "expected IPIP for {} -> {} ({}):\n{text}",
            a.id,
            b.id,
            c.encap
        );
        assert!(
            text.contains(&format!("{} > {}: IP ", nodes.0, nodes.1))
                && text.contains(&format!("{} > {}: IP ", nodes.1, nodes.0)),
            "outer addresses are not the nodes':\n{text}"
        );
    } else {
        assert_eq!(
            ipip, 0,
            "no IPIP expected for {} -> {} ({}):\n{text}",
            a.id, b.id, c.encap
        );
    }
    say(&format!(
        "wire {}: {} -> {} on {bridge}: {ipip} IPIP packets",
        c.encap, a.id, b.id
    ));
}

fn two_nodes(encap: &str) {
    let test = format!("two_nodes_{encap}");
    if !require(&test, TOOLS) {
        return;
    }
    let mut c = Cluster::start(encap, &[0, 0]);
    let pods = all_pods(&mut c, 2);
    ping_every_pair(&c, &pods);
    // The node itself reaches the other node's pods too (through its
    // kernel route: into the tunnel, or via the other node).
    assert!(
        settle(c.nodes[0].ns.name(), &pods[2].1.ip, SETTLE),
        "node 0 cannot reach a pod of node 1 ({encap})"
    );
    // And a pod reaches the other node's own address (through its node's
    // kernel, which forwards).
    assert!(
        settle(&pods[0].1.ns, &c.nodes[1].ip, SETTLE),
        "a pod of node 0 cannot reach node 1 ({encap})"
    );
    let (a, b) = (&pods[0].1, &pods[2].1);
    let wire_encap = encap == "always";
    assert_wire(
        &c,
        "br0",
        a,
        b,
        (&c.nodes[0].ip, &c.nodes[1].ip),
        wire_encap,
    );
    assert_tunnel_counts_after_ping(&c, (0, 1), a, b, wire_encap);
    iperf3_every_pair(&c, &pods);
    // The uplink carried the tunnelled traffic, or nothing.
    let counters = c.nodes[0].counters();
    let uplink = counters["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "ipip@eth0"))
        .unwrap_or_else(|| panic!("no uplink port in {counters:#}"));
    let tx = num(uplink, "/tx_packets");
    assert_eq!(tx > 0, wire_encap, "uplink tx {tx} in mode {encap}");
}

#[test]
fn two_nodes_always() {
    two_nodes("always");
}

#[test]
fn two_nodes_cross_subnet() {
    two_nodes("cross-subnet");
}

#[test]
fn two_nodes_never() {
    two_nodes("never");
}

/// A counter of the calling namespace's `/proc/net/snmp` or
/// `/proc/net/netstat` (`table` "Ip", "IpExt", ...), read in `ns`.
fn proc_net_counter(ns: &str, file: &str, table: &str, name: &str) -> u64 {
    let text = run(&["ip", "netns", "exec", ns, "cat", file]).stdout;
    let prefix = format!("{table}:");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    let (names, values) = match rows.as_slice() {
        [n, v, ..] => (n.split_whitespace(), v.split_whitespace()),
        _ => panic!("no {table} in {file} of {ns}:\n{text}"),
    };
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {table} {name} in {file} of {ns}"))
}

/// IPIP over an underlay whose receiving kernels merge TCP segments with
/// GRO before the raw socket reads them, as a NIC's GRO does (a veth does
/// it with `gro` on, for packets from a peer without TSO or a socket's
/// own with `rx-udp-gro-forwarding` on, in threaded NAPI so that packets
/// wait to be merged): the uplink
/// reads IPIP packets of many segments whose TCP checksum field holds the
/// pseudo-header sum, and hands each to the pod as one GSO frame. Before,
/// such a packet was a plain frame longer than the pod's MTU, refused with
/// frag needed: TCP stalled. iperf3 both ways; the kernels did merge
/// (more segments than IP packets received); nothing refused as too big.
#[test]
fn two_nodes_always_over_an_underlay_with_gro() {
    let test = "two_nodes_always_over_an_underlay_with_gro";
    if !require(test, &["ping", "iperf3", "ethtool"]) {
        return;
    }
    let gro_on = |u: &Underlay<'_>| {
        for n in u.nodes {
            // A veth GROs forwarded packets only from a peer without TSO
            // (the bridge's port towards the node).
            u.underlay
                .exec(&["ethtool", "-K", &format!("n{}", n.index), "tso", "off"])
                .expect_ok();
            n.ns.exec(&[
                "ethtool",
                "-K",
                "eth0",
                "gro",
                "on",
                "rx-udp-gro-forwarding",
                "on",
            ])
            .expect_ok();
            n.ns.exec(&["sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"])
                .expect_ok();
        }
    };
    let mut c = Cluster::start_prepared("always", &[0, 0], "", &gro_on);
    let a = c.nodes[0].add_pod("n0p1", &[]);
    let b = c.nodes[1].add_pod("n1p1", &[]);
    assert!(
        settle(&a.ns, &b.ip, SETTLE),
        "{} never reached {}",
        a.id,
        b.id
    );
    let there = iperf3_gbps(&a, &b);
    let back = iperf3_gbps(&b, &a);
    say(&format!(
        "iperf3 over an underlay with GRO: {there:.2} Gbit/s there, {back:.2} back"
    ));
    for n in &c.nodes {
        let k = n.counters();
        for reason in ["frag_needed", "too_big"] {
            assert_eq!(
                num(&k, &format!("/drops/{reason}")),
                0,
                "node {} refused merged packets: {}",
                n.index,
                k["drops"]
            );
        }
    }
    // A veth drops what its NAPI thread has no room for, so a loaded
    // machine sees retransmits: the rate only has to show TCP flowing
    // (main's stalled at 0.00).
    assert!(
        there > 0.02 && back > 0.02,
        "TCP over IPIP with GRO on the underlay: {there:.2} / {back:.2} Gbit/s"
    );
    for n in &c.nodes {
        let ns = n.ns.name();
        let packets = proc_net_counter(ns, "/proc/net/snmp", "Ip", "InReceives");
        let segments = proc_net_counter(ns, "/proc/net/netstat", "IpExt", "InNoECTPkts");
        say(&format!(
            "node {}: {packets} IP packets received carrying {segments} segments",
            n.index
        ));
        // Without GRO every packet is one segment, so 5% more segments
        // than packets is merging, whatever the share of pure ACKs (never
        // merged) among what this node received (35-90% more here).
        assert!(
            20 * segments > 21 * packets,
            "node {}'s kernel merged nothing ({packets} packets, {segments} segments): \
             the test does not test what it should",
            n.index
        );
    }
}

/// Nodes 0 and 1 share subnet 0; node 2 is on subnet 1 behind the kernel
/// router.
fn three_nodes(encap: &str) {
    let test = format!("three_nodes_{encap}");
    if !require(&test, TOOLS) {
        return;
    }
    let mut c = Cluster::start(encap, &[0, 0, 1]);
    let pods = all_pods(&mut c, 2);
    ping_every_pair(&c, &pods);
    let (a, b, z) = (&pods[0].1, &pods[2].1, &pods[4].1);
    let (ip0, ip1, ip2) = (
        c.nodes[0].ip.clone(),
        c.nodes[1].ip.clone(),
        c.nodes[2].ip.clone(),
    );
    assert_wire(&c, "br0", a, b, (&ip0, &ip1), c.encapsulated(0, 1));
    assert_wire(&c, "br1", a, z, (&ip0, &ip2), c.encapsulated(0, 2));
    iperf3_every_pair(&c, &pods);
}

#[test]
fn three_nodes_always() {
    three_nodes("always");
}

#[test]
fn three_nodes_cross_subnet() {
    three_nodes("cross-subnet");
}

#[test]
fn three_nodes_never() {
    three_nodes("never");
}

/// From a pod on node A whose MTU (1500) is above the tunnel's path MTU
/// (1480) to a pod on node C, across the kernel router: tracepath shows
/// both routers and the path MTU; DF too big gets "frag needed" with 1480;
/// without DF the router fragments and the reply comes back; TTL exceeded
/// and host unreachable from node C come back through the tunnel.
#[test]
fn tracepath_and_path_mtu_across_subnets() {
    if !require(
        "tracepath_and_path_mtu_across_subnets",
        &["ping", "tracepath"],
    ) {
        return;
    }
    let mut c = Cluster::start("cross-subnet", &[0, 0, 1]);
    let a = c.nodes[0].add_pod("big-mtu", &["--mtu", "1500"]);
    let z = c.nodes[2].add_pod("far", &[]);
    assert!(settle(&a.ns, &z.ip, SETTLE), "never reached the far pod");
    let out = a.exec(&["tracepath", "-n", "-m", "5", &z.ip]);
    let text = out.text();
    assert!(
        text.contains(&format!(" 1:  {}", c.nodes[0].ip)),
        "hop 1 is not node A:\n{text}"
    );
    assert!(
        text.contains(&format!(" 2:  {}", c.nodes[2].ip)),
        "hop 2 is not node C:\n{text}"
    );
    assert!(text.contains("pmtu 1480"), "no path MTU 1480:\n{text}");
    assert!(
        text.contains("Resume: pmtu 1480 hops 3 back 3"),
        "unexpected summary:\n{text}"
    );
    say(&format!("tracepath {} -> {}:\n{text}", a.ip, z.ip));

    // DF too big: the kernel now knows the path MTU, ping says so.
    let p = ping(
        &a.ns,
        &z.ip,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1472"],
    );
    assert!(
        p.text.contains("mtu = 1480") || p.text.contains("mtu=1480"),
        "no frag needed with mtu 1480:\n{}",
        p.text
    );
    // No DF, 3000 bytes: fragmented by the router (and by pod C's kernel
    // on the way back), reassembled by the pods.
    let p = ping(
        &a.ns,
        &z.ip,
        &[
            "-c", "2", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "3000",
        ],
    );
    assert_eq!(p.received, 2, "fragmented pings lost:\n{}", p.text);
    // TTL 2 dies on node C's router, whose error comes back tunnelled.
    let p = ping(&a.ns, &z.ip, &["-c", "1", "-W", "2", "-t", "2"]);
    assert!(
        p.text.contains(&format!(
            "From {} icmp_seq=1 Time to live exceeded",
            c.nodes[2].ip
        )),
        "no time exceeded from node C:\n{}",
        p.text
    );
    // A free address of node C's block: host unreachable from node C.
    let free = "10.244.0.190";
    let p = ping(&a.ns, free, &["-c", "1", "-W", "2"]);
    assert!(
        p.text.contains(&format!(
            "From {} icmp_seq=1 Destination Host Unreachable",
            c.nodes[2].ip
        )),
        "no host unreachable from node C:\n{}",
        p.text
    );
    let counters = c.nodes[0].counters();
    assert!(num(&counters, "/drops/frag_needed") >= 1, "{counters:#}");
    let far = c.nodes[2].counters();
    assert!(num(&far, "/drops/ipip_not_local") >= 1, "{far:#}");
    assert!(num(&far, "/drops/ttl_exceeded") >= 1, "{far:#}");
}

/// Injects one IPv4 packet from inside `netns` (as that node could).
fn inject(netns: &str, packet: &[u8]) {
    let path = format!("/run/netns/{netns}");
    podrouter_control::netns::run_in_netns(Path::new(&path), || {
        podrouter_router::uplink::send_raw_ipv4(packet)
    })
    .expect("enter netns")
    .expect("send raw packet");
}

/// IPIP that must be dropped at node B, each counted under its reason,
/// while forwarding goes on.
#[test]
fn ipip_drops_are_counted_and_forwarding_continues() {
    if !require("ipip_drops_are_counted_and_forwarding_continues", &["ping"]) {
        return;
    }
    let mut c = Cluster::start("always", &[0, 0]);
    let a = c.nodes[0].add_pod("a", &[]);
    let b = c.nodes[1].add_pod("b", &[]);
    assert!(settle(&a.ns, &b.ip, SETTLE), "never reached pod b");
    let (ip_a, ip_b) = (c.nodes[0].ip.clone(), c.nodes[1].ip.clone());
    let stranger = "192.168.57.99";
    let echo = icmp_echo(b"podrouter");
    let inner_ok = ipv4_packet(&a.ip, &b.ip, 1, &echo);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Outer source is not a node with a route via it.
        (
            "ipip_unknown_node",
            ipv4_packet(stranger, &ip_b, 4, &inner_ok),
        ),
        // Inner destination is not a pod of node B.
        (
            "ipip_not_local",
            ipv4_packet(&ip_a, &ip_b, 4, &ipv4_packet(&a.ip, "10.99.0.1", 1, &echo)),
        ),
        // A known node forging the inner source: one of node B's own pods,
        // an address of no block of node A.
        (
            "tunnel_spoofed_source",
            ipv4_packet(&ip_a, &ip_b, 4, &ipv4_packet(&b.ip, &b.ip, 1, &echo)),
        ),
        (
            "tunnel_spoofed_source",
            ipv4_packet(&ip_a, &ip_b, 4, &ipv4_packet("10.99.0.1", &b.ip, 1, &echo)),
        ),
        // Truncated: no room for an inner header.
        (
            "ipip_malformed",
            ipv4_packet(&ip_a, &ip_b, 4, &[0x45, 0, 0]),
        ),
        // Inner header claims more than there is.
        (
            "ipip_malformed",
            ipv4_packet(&ip_a, &ip_b, 4, &inner_ok[..30]),
        ),
    ];
    for (reason, packet) in &cases {
        let before = c.nodes[1].counters();
        for _ in 0..3 {
            inject(c.nodes[0].ns.name(), packet);
        }
        let ptr = format!("/drops/{reason}");
        let moved = wait_until(Duration::from_secs(5), || {
            delta(&before, &c.nodes[1].counters(), &ptr) >= 3
        });
        assert!(moved, "{reason} did not count 3 drops");
        // The router keeps forwarding.
        assert_ping(&a.ns, &b.ip, 1, 62);
    }
    // The genuine article from node A goes through (pod b answers it: the
    // reply is an echo reply to pod a, which arrives there tunnelled).
    let before = c.nodes[1].counters();
    inject(
        c.nodes[0].ns.name(),
        &ipv4_packet(&ip_a, &ip_b, 4, &inner_ok),
    );
    let forwarded = wait_until(Duration::from_secs(5), || {
        delta(&before, &c.nodes[1].counters(), "/tx") >= 2
    });
    assert!(forwarded, "a valid injected IPIP packet was not forwarded");
}
