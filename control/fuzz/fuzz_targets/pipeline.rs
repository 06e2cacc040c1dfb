//! Any frame with any virtio-net header into the data-plane pipeline, on
//! every port role: three pods (one behind a small MTU), the host port and
//! an uplink (IPIP or VXLAN), with routes to local pods, an unassigned
//! block, two other nodes, an ECMP group and the node's networks. It must
//! not panic or hang, and a frame may only leave where it is allowed to:
//!
//! - out of a port that exists, with the router's MAC as its source and,
//!   forwarded to another pod or the host, that port's MAC as its
//!   destination;
//! - ARP only as a reply on the port the request came in on;
//! - IPv4 with a valid header whose length is the frame's;
//! - to a pod only for that pod's address;
//! - from a pod to anywhere but back to itself only with the pod's own
//!   address as the source (no forged source leaves);
//! - from the uplink only to a local pod, or an ICMP error from this node
//!   to an address behind another node (through the tunnel, or the host
//!   port when the encapsulation policy routes that node directly);
//! - into the tunnel only for a node the FIB names for the destination
//!   (a known node), and then, encapsulated as the IPIP uplink does (its
//!   transmit ring), only outer packets within the link MTU, for that
//!   node, and for a pod's frame not many more packets than its bytes
//!   allow (a GSO frame cannot multiply on the underlay).
//!
//! Input: byte 0 picks the uplink's tunnel (bit 0: IPIP or VXLAN) and the
//! ingress port (bits 1-3, modulo the six below); bytes 1-10 are the
//! virtio-net header; the rest is the frame. scripts/fuzz.sh seeds it with
//! frames captured from pods (control/fuzz/seeds/pipeline) and the same
//! packets wrapped as IPIP and VXLAN from a known node.
#![no_main]
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use podrouter_router::conntrack::FlowTable;
use podrouter_router::counters::WorkerCounters;
use podrouter_router::encap::{EncapMode, EncapPolicy};
use podrouter_router::fib::{Fib, FibChange, NextHop, Prefix};
use podrouter_router::frame::{Frame, VnetHdr, VNET_HDR_LEN};
use podrouter_router::pipeline::{BatchContext, Pipeline, PipelineConfig, Verdict};
use podrouter_router::policy::PolicyTable;
use podrouter_router::port::{MemPort, PortEntry, PortId, PortInfo, PortRole, PortTable, Tunnel};
use podrouter_router::txring::{TxRing, TxSink};
use podrouter_router::vxlan::VxlanParams;
use podrouter_router::wire::{check_ipv4, ETHERTYPE_ARP, ETHERTYPE_IPV4};

const ROUTER_MAC: [u8; 6] = podrouter_router::ROUTER_MAC;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
/// A node in the uplink's subnet, and one outside it.
const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 11);
const FAR_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const UPLINK_MTU: u16 = 1480;

const POD_A: PortId = PortId(0);
const POD_B: PortId = PortId(1);
const HOST: PortId = PortId(2);
const POD_C: PortId = PortId(3);
const UPLINK: PortId = PortId(4);
/// No port has this id.
const NO_PORT: PortId = PortId(7);
const INGRESS: [PortId; 6] = [POD_A, POD_B, HOST, UPLINK, POD_C, NO_PORT];

/// (port, address, MAC, MTU) of the pods.
const PODS: [(PortId, Ipv4Addr, [u8; 6], u16); 3] = [
    (
        POD_A,
        Ipv4Addr::new(10, 244, 1, 2),
        [2, 0x42, 10, 244, 1, 2],
        1500,
    ),
    (
        POD_B,
        Ipv4Addr::new(10, 244, 1, 3),
        [2, 0x42, 10, 244, 1, 3],
        1500,
    ),
    (
        POD_C,
        Ipv4Addr::new(10, 244, 1, 4),
        [2, 0x42, 10, 244, 1, 4],
        1000,
    ),
];

/// Flannel's VXLAN profile, this node's VTEP MAC.
const VXLAN: VxlanParams = VxlanParams {
    port: 8472,
    vni: 1,
    mac: [0x0e, 0x70, 192, 168, 0, 10],
};

fn prefix(a: [u8; 4], len: u8) -> Prefix {
    Prefix::new(Ipv4Addr::from(a), len).expect("valid prefix")
}

fn entry(name: &str, role: PortRole, mtu: u16) -> PortEntry {
    PortEntry {
        info: PortInfo {
            name: name.into(),
            role,
            mtu,
        },
        port: Arc::new(MemPort::new()),
    }
}

fn ports(tunnel: Tunnel) -> PortTable {
    let mut t = PortTable::default()
        .with(
            HOST,
            entry("podrouter0", PortRole::Host { mac: HOST_MAC }, 1500),
        )
        .with(
            UPLINK,
            entry(
                "uplink",
                PortRole::Uplink {
                    local: NODE_IP,
                    policy: EncapPolicy {
                        mode: EncapMode::CrossSubnet,
                        subnet: Some(prefix([192, 168, 0, 0], 24)),
                    },
                    tunnel,
                },
                UPLINK_MTU,
            ),
        );
    for (id, ip, mac, mtu) in PODS {
        t = t.with(id, entry("pod", PortRole::Pod { ip, mac }, mtu));
    }
    t
}

fn fib() -> Fib {
    let fib = Fib::new();
    let mut changes: Vec<FibChange> = PODS
        .iter()
        .map(|(id, ip, _, _)| FibChange::Insert(Prefix::new(*ip, 32).unwrap(), NextHop::Local(*id)))
        .collect();
    changes.extend([
        // A pod whose port is gone.
        FibChange::Insert(prefix([10, 244, 1, 9], 32), NextHop::Local(PortId(9))),
        FibChange::Insert(prefix([10, 244, 1, 0], 24), NextHop::Unreachable),
        FibChange::Insert(prefix([10, 244, 2, 0], 24), NextHop::Node(OTHER_NODE)),
        FibChange::Insert(prefix([10, 244, 3, 0], 24), NextHop::Node(FAR_NODE)),
        FibChange::InsertMultipath(prefix([10, 244, 5, 0], 24), vec![FAR_NODE, OTHER_NODE]),
        FibChange::Insert(prefix([192, 168, 0, 0], 16), NextHop::Host),
        FibChange::Insert(prefix([10, 96, 0, 0], 12), NextHop::Host),
    ]);
    fib.update(&changes);
    fib
}

/// Takes every outer packet the IPIP uplink's ring hands over.
struct Outer {
    packets: Vec<(usize, Ipv4Addr)>,
}

impl TxSink for Outer {
    fn send<'a>(&mut self, pkts: impl Iterator<Item = (&'a [u8], Ipv4Addr)>) -> io::Result<usize> {
        let before = self.packets.len();
        self.packets.extend(pkts.map(|(p, dst)| (p.len(), dst)));
        Ok(self.packets.len() - before)
    }

    fn wait(&mut self) {}
}

fn ipv4_addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 1 + VNET_HDR_LEN {
        return;
    }
    let tunnel = if data[0] & 1 == 0 {
        Tunnel::Ipip
    } else {
        Tunnel::Vxlan(VXLAN)
    };
    let ingress = INGRESS[usize::from(data[0] >> 1) % INGRESS.len()];
    let mut vnet = [0u8; VNET_HDR_LEN];
    vnet.copy_from_slice(&data[1..1 + VNET_HDR_LEN]);
    let mut frame = Frame::from_bytes(&data[1 + VNET_HDR_LEN..]);
    frame.vnet = VnetHdr::from_bytes(&vnet);

    let ports = ports(tunnel);
    let fib = fib();
    let table = fib.load();
    let counters = WorkerCounters::default();
    let flows = FlowTable::new(64, Default::default());
    let policy = PolicyTable::default();
    let mut pipeline = Pipeline::new(PipelineConfig {
        router_mac: ROUTER_MAC,
        node_ip: NODE_IP,
        icmp_rate_per_sec: 1000,
        icmp_burst: 100,
        arp_rate_per_sec: PipelineConfig::DEFAULT_ARP_RATE_PER_SEC,
        arp_burst: PipelineConfig::DEFAULT_ARP_BURST,
    });
    let ctx =
        BatchContext::new(&table, &ports, &counters, &flows, 1_000_000_000).with_policy(&policy);
    let Verdict::Forward {
        port,
        tunnel: to_node,
    } = pipeline.process(&ctx, ingress, &mut frame)
    else {
        return;
    };

    let out = ports
        .get(port)
        .expect("forwarded out of a port that exists");
    let in_role = ports
        .get(ingress)
        .expect("a frame from no port is dropped")
        .info
        .role;
    let d = frame.data();
    assert!(d.len() >= 14, "a forwarded frame has an Ethernet header");
    assert_eq!(d[6..12], ROUTER_MAC, "the router's MAC is the source");
    assert_eq!(
        to_node.is_some(),
        port == UPLINK,
        "a tunnel endpoint for the uplink only"
    );
    // An answer on the ingress port (ARP reply, ICMP error) goes to the
    // MAC the frame came from, whatever the sender claimed; anything
    // forwarded to another pod or the host to that port's MAC.
    match out.info.role {
        PortRole::Pod { mac, .. } | PortRole::Host { mac } if port != ingress => {
            assert_eq!(d[0..6], mac, "addressed to the port's MAC")
        }
        _ => {}
    }
    let ethertype = u16::from_be_bytes([d[12], d[13]]);
    if ethertype == ETHERTYPE_ARP {
        assert_eq!(port, ingress, "ARP leaves only as a reply on its own port");
        assert_eq!(d.len(), 42, "an ARP reply");
        return;
    }
    assert_eq!(ethertype, ETHERTYPE_IPV4, "only ARP and IPv4 leave");
    let ip = check_ipv4(&d[14..]).expect("a forwarded IPv4 header is valid");
    assert_eq!(
        usize::from(ip.total_len()),
        d.len() - 14,
        "the frame ends with its packet"
    );
    let (src, dst, proto) = (ipv4_addr(&d[26..30]), ipv4_addr(&d[30..34]), d[23]);

    if let PortRole::Pod { ip, .. } = out.info.role {
        assert_eq!(dst, ip, "to a pod only for its own address");
    }
    match in_role {
        PortRole::Pod { ip, .. } if port != ingress => {
            assert_eq!(src, ip, "a pod's packets leave with its own source");
        }
        PortRole::Uplink { .. } => {
            // Or an ICMP error of this node's back towards the sender's
            // node: through the tunnel, or through the host port when the
            // encapsulation policy routes that node directly.
            let to_pod = matches!(out.info.role, PortRole::Pod { .. });
            let back_to_a_node = matches!(
                table.lookup(dst),
                Some(NextHop::Node(_)) | Some(NextHop::Nodes(_))
            );
            let icmp_back = src == NODE_IP && proto == 1 && back_to_a_node;
            assert!(
                to_pod || icmp_back,
                "from the tunnel only to a local pod ({:?}, {src} -> {dst})",
                out.info.role
            );
        }
        _ => {}
    }
    let Some(node) = to_node else { return };
    let known = match table.lookup(dst) {
        Some(NextHop::Node(n)) => n == node,
        Some(NextHop::Nodes(g)) => table.group(g).contains(&node),
        _ => false,
    };
    assert!(
        known,
        "into the tunnel only to a node the FIB names for {dst} (got {node})"
    );

    // Encapsulated as the IPIP uplink does it.
    if tunnel != Tunnel::Ipip {
        return;
    }
    let link_mtu = usize::from(UPLINK_MTU) + 20;
    let mut ring = TxRing::new(8, link_mtu, 20);
    let mut sink = Outer {
        packets: Vec::new(),
    };
    let inner = &d[14..];
    let pushed = ring.push(inner, frame.vnet, node, &|_: &mut [u8], _| {}, &mut sink);
    let _ = ring.flush(&mut sink);
    if pushed.is_err() {
        return;
    }
    for (len, to) in &sink.packets {
        assert!(
            *len <= link_mtu,
            "an outer packet of {len} B on a {link_mtu} B link"
        );
        assert_eq!(*to, node, "every piece goes to the node the verdict named");
    }
    if matches!(in_role, PortRole::Pod { .. }) {
        // Segments carry at least 536 B of payload, fragments over 1400:
        // well under one packet per 200 bytes of the pod's frame.
        let bound = inner.len() / 200 + 4;
        assert!(
            sink.packets.len() <= bound,
            "{} B from a pod became {} packets on the underlay",
            inner.len(),
            sink.packets.len()
        );
    }
});
