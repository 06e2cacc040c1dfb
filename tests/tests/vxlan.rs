//! VXLAN between nodes (`[dataplane] tunnel = "vxlan"`): two podrouter
//! nodes in each encap mode (ping, iperf3 both ways, the wire as tcpdump
//! sees it on the underlay), path MTU (uplink MTU - 50), the receive
//! checks' counted drops, and interop with the kernel's own VXLAN devices
//! wired by hand the way Flannel (`flannel.1`, VNI 1, UDP 8472) and Calico
//! (`vxlan.calico`, VNI 4096, UDP 4789) wire a node.
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use podrouter_e2e::multinode::*;
use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(10);
const TOOLS: &[&str] = &["ping", "iperf3", "tcpdump", "ss", "sysctl", "bridge"];

/// Calico's profile is the default; Flannel's is spelled out.
const FLANNEL: &str = "tunnel = \"vxlan\"\nvxlan_port = 8472\nvxlan_vni = 1\n";
const CALICO: &str = "tunnel = \"vxlan\"\n";

/// VTEP MAC podrouter derives for a node address (`0e:70` + the address).
fn vtep_mac(ip: &str) -> String {
    let o = ip.parse::<Ipv4Addr>().expect("IPv4").octets();
    format!("0e:70:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Pings `b` from `a` while capturing on `bridge`; asserts VXLAN to `port`
/// carrying `vni` between the two nodes is on the wire iff `encap`, and
/// the pods' own addresses either inside it or plainly routed.
fn assert_wire(c: &Cluster, a: &Pod, b: &Pod, port: u16, vni: u32, encap: bool) {
    let filter = format!("udp port {port} or icmp");
    let cap = Capture::start(c.underlay.name(), "br0", &filter);
    let p = ping(&a.ns, &b.ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert_eq!(p.received, 2, "ping during capture:\n{}", p.text);
    let text = cap.stop();
    let (n0, n1) = (&c.nodes[0].ip, &c.nodes[1].ip);
    let outer = text
        .lines()
        .filter(|l| l.contains(&format!(".{port}: ")) && (l.contains(n0) || l.contains(n1)))
        .count();
    let request = format!("{} > {}: ICMP echo request", a.ip, b.ip);
    let reply = format!("{} > {}: ICMP echo reply", b.ip, a.ip);
    assert!(
        text.contains(&request) && text.contains(&reply),
        "the pods' own addresses are not on the wire ({}):\n{text}",
        c.encap
    );
    if encap {
        assert!(
            outer >= 4,
            "expected VXLAN on UDP {port} ({}):\n{text}",
            c.encap
        );
        // tcpdump names UDP 4789 VXLAN ("vni N") and 8472 OTV ("instance
        // N"): the same 24 bits.
        let vni_text = if port == 4789 {
            format!("vni {vni}")
        } else {
            format!("instance {vni}")
        };
        assert!(
            text.contains(&vni_text),
            "no {vni_text} on the wire:\n{text}"
        );
        assert!(
            text.contains(&format!("{n0}.")) && text.contains(&format!("{n1}.")),
            "outer addresses are not the nodes':\n{text}"
        );
    } else {
        assert_eq!(outer, 0, "no VXLAN expected ({}):\n{text}", c.encap);
    }
    say(&format!(
        "wire {}: {} -> {}: {outer} packets on UDP {port}",
        c.encap, a.id, b.id
    ));
}

fn two_nodes(encap: &str, profile: &str, port: u16, vni: u32) {
    let test = format!("vxlan_two_nodes_{encap}_{port}");
    if !require(&test, TOOLS) {
        return;
    }
    let mut c = Cluster::start_with(encap, &[0, 0], profile);
    let a = c.nodes[0].add_pod("a", &[]);
    let b = c.nodes[1].add_pod("b", &[]);
    assert!(settle(&a.ns, &b.ip, SETTLE), "{encap}: a never reached b");
    assert!(settle(&b.ns, &a.ip, SETTLE), "{encap}: b never reached a");
    assert_ping(&a.ns, &b.ip, 2, 62);
    // The node itself reaches the other node's pod (its kernel route into
    // the router, then the tunnel or the other node directly).
    assert!(
        settle(c.nodes[0].ns.name(), &b.ip, SETTLE),
        "{encap}: node 0 cannot reach pod b"
    );
    // The pod MTU defaults to the uplink's minus 50.
    assert_eq!(
        a.exec(&["cat", "/sys/class/net/eth0/mtu"]).stdout.trim(),
        "1450"
    );
    let status = c.nodes[0].ctl(&["status"]);
    assert_eq!(status["tunnel"], "vxlan", "{status:#}");
    assert_eq!(status["vxlan"]["port"], u64::from(port), "{status:#}");
    assert_eq!(status["vxlan"]["vni"], u64::from(vni), "{status:#}");
    assert_eq!(
        status["vxlan"]["vtep_mac"],
        vtep_mac(&c.nodes[0].ip),
        "{status:#}"
    );
    let wire_encap = encap == "always";
    assert_wire(&c, &a, &b, port, vni, wire_encap);
    assert_tunnel_counts_after_ping(&c, (0, 1), &a, &b, wire_encap);
    let ab = iperf3_gbps(&a, &b);
    let ba = iperf3_gbps(&b, &a);
    say(&format!(
        "vxlan {encap} UDP {port}: iperf3 a->b {ab:.2} Gbit/s, b->a {ba:.2} Gbit/s"
    ));
    let counters = c.nodes[0].counters();
    let uplink = counters["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "vxlan@eth0"))
        .unwrap_or_else(|| panic!("no uplink port in {counters:#}"));
    let tx = num(uplink, "/tx_packets");
    assert_eq!(tx > 0, wire_encap, "uplink tx {tx} in mode {encap}");
}

#[test]
fn vxlan_two_nodes_always_calico_profile() {
    two_nodes("always", CALICO, 4789, 4096);
}

#[test]
fn vxlan_two_nodes_always_flannel_profile() {
    two_nodes("always", FLANNEL, 8472, 1);
}

#[test]
fn vxlan_two_nodes_cross_subnet() {
    two_nodes("cross-subnet", CALICO, 4789, 4096);
}

#[test]
fn vxlan_two_nodes_never() {
    two_nodes("never", CALICO, 4789, 4096);
}

/// A pod with MTU 1500 over a 1500-byte underlay: DF too big gets "frag
/// needed" with 1500 - 50; what fits crosses; what has no DF is
/// fragmented and crosses.
#[test]
fn vxlan_path_mtu_is_uplink_minus_50() {
    if !require("vxlan_path_mtu_is_uplink_minus_50", &["ping"]) {
        return;
    }
    let mut c = Cluster::start_with("always", &[0, 0], CALICO);
    let a = c.nodes[0].add_pod("big-mtu", &["--mtu", "1500"]);
    let b = c.nodes[1].add_pod("b", &[]);
    assert!(settle(&a.ns, &b.ip, SETTLE), "never reached pod b");
    let p = ping(
        &a.ns,
        &b.ip,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1472"],
    );
    assert!(
        p.text.contains("mtu = 1450") || p.text.contains("mtu=1450"),
        "no frag needed with mtu 1450:\n{}",
        p.text
    );
    let p = ping(
        &a.ns,
        &b.ip,
        &["-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1422"],
    );
    assert_eq!(p.received, 2, "1450-byte DF pings lost:\n{}", p.text);
    // Without DF, 1500 bytes from the big pod: the uplink fragments the
    // inner packet (never the outer one) and the reply comes back.
    let p = ping(
        &a.ns,
        &b.ip,
        &[
            "-c", "2", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "1472",
        ],
    );
    assert_eq!(p.received, 2, "fragmented pings lost:\n{}", p.text);
    let counters = c.nodes[0].counters();
    assert!(num(&counters, "/drops/frag_needed") >= 1, "{counters:#}");
}

/// Sends `payload` as one UDP datagram from `src` (an address of
/// `netns`) to `dst:port`, as another node could.
fn send_udp(netns: &str, src: &str, dst: &str, port: u16, payload: &[u8]) {
    let path = format!("/run/netns/{netns}");
    podrouter_control::netns::run_in_netns(Path::new(&path), || {
        let s = UdpSocket::bind((src, 0))?;
        s.send_to(payload, (dst, port)).map(drop)
    })
    .expect("enter netns")
    .expect("send UDP");
}

/// A VXLAN payload: header with `vni`, inner Ethernet to `mac`, `ip`.
fn vxlan_payload(vni: u32, mac: &str, ip: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut p = vec![0x08, 0, 0, 0, v[1], v[2], v[3], 0];
    for b in mac.split(':') {
        p.push(u8::from_str_radix(b, 16).expect("MAC"));
    }
    p.extend_from_slice(&[0x0e, 0x70, 1, 2, 3, 4, 0x08, 0x00]);
    p.extend_from_slice(ip);
    p
}

/// VXLAN that must be dropped at node B, each counted under its reason,
/// never delivered, while forwarding goes on.
#[test]
fn vxlan_drops_are_counted_and_never_delivered() {
    if !require(
        "vxlan_drops_are_counted_and_never_delivered",
        &["ping", "tcpdump"],
    ) {
        return;
    }
    let mut c = Cluster::start_with("always", &[0, 0], CALICO);
    let a = c.nodes[0].add_pod("a", &[]);
    let b = c.nodes[1].add_pod("b", &[]);
    assert!(settle(&a.ns, &b.ip, SETTLE), "never reached pod b");
    let (ip_a, ip_b) = (c.nodes[0].ip.clone(), c.nodes[1].ip.clone());
    let stranger = "192.168.57.99";
    c.nodes[0]
        .ns
        .exec(&[
            "ip",
            "addr",
            "add",
            &format!("{stranger}/24"),
            "dev",
            "eth0",
        ])
        .expect_ok();
    let mac_b = vtep_mac(&ip_b);
    let echo = icmp_echo(b"podrouter-vxlan");
    let inner = ipv4_packet(&a.ip, &b.ip, 1, &echo);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "vxlan_unknown_node",
            stranger,
            vxlan_payload(4096, &mac_b, &inner),
        ),
        ("vxlan_wrong_vni", &ip_a, vxlan_payload(1, &mac_b, &inner)),
        (
            "vxlan_not_our_mac",
            &ip_a,
            vxlan_payload(4096, "0e:70:01:01:01:01", &inner),
        ),
        (
            "vxlan_not_our_mac",
            &ip_a,
            vxlan_payload(4096, "ff:ff:ff:ff:ff:ff", &inner),
        ),
        (
            "vxlan_malformed",
            &ip_a,
            vec![0x08, 0, 0, 0, 0, 0x10, 0, 0, 1, 2],
        ),
        ("vxlan_malformed", &ip_a, vec![0x08, 0, 0]),
        (
            "vxlan_not_local",
            &ip_a,
            vxlan_payload(4096, &mac_b, &ipv4_packet(&a.ip, "10.99.0.1", 1, &echo)),
        ),
    ];
    let cap = Capture::start(&b.ns, "eth0", "icmp");
    for (reason, src, payload) in &cases {
        let before = c.nodes[1].counters();
        for _ in 0..3 {
            send_udp(c.nodes[0].ns.name(), src, &ip_b, 4789, payload);
        }
        let ptr = format!("/drops/{reason}");
        let moved = wait_until(Duration::from_secs(5), || {
            delta(&before, &c.nodes[1].counters(), &ptr) >= 3
        });
        assert!(
            moved,
            "{reason} did not count 3 drops: {:#}",
            c.nodes[1].counters()
        );
        assert_ping(&a.ns, &b.ip, 1, 62);
    }
    let text = cap.stop();
    assert!(
        !text.contains("id 4660"),
        "an injected echo (id 0x1234) reached pod b:\n{text}"
    );
    // The genuine article from node A's address is delivered.
    let cap = Capture::start(&b.ns, "eth0", "icmp");
    send_udp(
        c.nodes[0].ns.name(),
        &ip_a,
        &ip_b,
        4789,
        &vxlan_payload(4096, &mac_b, &inner),
    );
    let text = cap.stop();
    assert!(
        text.contains("id 4660"),
        "a valid injected VXLAN packet did not reach pod b:\n{text}"
    );
}

/// One kernel VXLAN profile: device name, VNI, port and the address the
/// kernel node routes the podrouter node's block via (Flannel: the
/// block's network address; Calico: the peer's tunnel address, here the
/// block's first address).
struct KernelProfile {
    dev: &'static str,
    vni: u32,
    port: u16,
    gateway: &'static str,
}

/// A podrouter node (node 0, block 10.244.0.0/26) and a kernel node
/// (192.168.57.12, block 10.244.0.64/26) wired by hand: its VXLAN device
/// carries the block's first address, a route to our block via `gateway`
/// onlink, a permanent neighbour entry for `gateway` to our VTEP MAC and
/// an FDB entry sending that MAC to our address. Our `[[routes]]` entry
/// carries the device's (random) MAC as `vtep_mac`. Ping and iperf3 both
/// ways between a pod and the kernel node's address.
fn kernel_interop(p: KernelProfile) {
    let test = format!("vxlan_interop_{}", p.dev);
    if !require(&test, TOOLS) {
        return;
    }
    let kmac = "2a:7e:11:22:33:44";
    let kip = node_ip(0, 1);
    let kaddr = "10.244.0.65";
    let profile = format!(
        "tunnel = \"vxlan\"\nvxlan_port = {}\nvxlan_vni = {}\n\n[[routes]]\nprefix = \
         \"{}\"\nvia = \"{kip}\"\nvtep_mac = \"{kmac}\"\n",
        p.port,
        p.vni,
        node_cidr(1)
    );
    let mut c = Cluster::start_with("always", &[0], &profile);
    let our_ip = c.nodes[0].ip.clone();
    let our_mac = c.nodes[0].ctl(&["status"])["vxlan"]["vtep_mac"]
        .as_str()
        .expect("vtep_mac in status")
        .to_string();
    assert_eq!(our_mac, vtep_mac(&our_ip));
    let k = Netns::new("knode");
    run(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        k.name(),
        "type",
        "veth",
        "peer",
        "name",
        "kn",
        "netns",
        c.underlay.name(),
    ])
    .expect_ok();
    c.underlay
        .exec(&["ip", "link", "set", "kn", "master", "br0", "up"])
        .expect_ok();
    let (dev, vni, port) = (p.dev, p.vni.to_string(), p.port.to_string());
    let script = format!(
        "set -e
         ip addr add {kip}/24 dev eth0; ip link set eth0 up; ip link set lo up
         ip link add {dev} type vxlan id {vni} dstport {port} local {kip} dev eth0 nolearning
         ip link set {dev} address {kmac} mtu 1450 up
         ip addr add {kaddr}/32 dev {dev}
         ip route add 10.244.0.0/26 via {gw} dev {dev} onlink
         ip neigh add {gw} lladdr {our_mac} dev {dev} nud permanent
         bridge fdb append {our_mac} dev {dev} dst {our_ip}",
        gw = p.gateway
    );
    k.sh(&script).expect_ok();
    let a = c.nodes[0].add_pod("a", &[]);
    assert!(
        settle(&a.ns, kaddr, SETTLE),
        "{dev}: pod never reached the kernel node"
    );
    assert_ping(&a.ns, kaddr, 2, 63);
    let p_back = ping(k.name(), &a.ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert_eq!(p_back.received, 2, "kernel node -> pod:\n{}", p_back.text);
    // iperf3 both ways: the kernel node as server, then the pod.
    let knode = Pod {
        id: dev.to_string(),
        ns: k.name().to_string(),
        ip: kaddr.to_string(),
        ..a.clone()
    };
    let to_kernel = iperf3_gbps(&a, &knode);
    let from_kernel = iperf3_gbps(&knode, &a);
    say(&format!(
        "vxlan interop {dev} (VNI {vni}, UDP {port}): pod -> kernel {to_kernel:.2} Gbit/s, \
         kernel -> pod {from_kernel:.2} Gbit/s"
    ));
    let counters = c.nodes[0].counters();
    for r in [
        "vxlan_malformed",
        "vxlan_unknown_node",
        "vxlan_wrong_vni",
        "vxlan_not_our_mac",
    ] {
        assert_eq!(
            num(&counters, &format!("/drops/{r}")),
            0,
            "{r}: {counters:#}"
        );
    }
}

#[test]
fn vxlan_interop_with_kernel_flannel_wiring() {
    kernel_interop(KernelProfile {
        dev: "flannel.1",
        vni: 1,
        port: 8472,
        gateway: "10.244.0.0",
    });
}

#[test]
fn vxlan_interop_with_kernel_calico_wiring() {
    kernel_interop(KernelProfile {
        dev: "vxlan.calico",
        vni: 4096,
        port: 4789,
        gateway: "10.244.0.1",
    });
}
