//! Test kit of the pipeline's stage tests: a node with three pods, the
//! host port and (in [`uplink_env`]) an uplink; frame builders; and the
//! checks of an ICMP error. Every stage's tests use it.
#![allow(unused_imports)]

pub(super) use super::*;
pub(super) use crate::conntrack::FlowTable;
pub(super) use crate::counters::{DropReason, WorkerCounters};
pub(super) use crate::encap::{EncapMode, EncapPolicy};
pub(super) use crate::fib::{Fib, FibChange, NextHop, Prefix};
pub(super) use crate::frame::{Frame, VnetHdr};
pub(super) use crate::port::{MemPort, PortEntry, PortId, PortInfo, PortRole, PortTable, Tunnel};
pub(super) use crate::wire::{
    check_ipv4, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded, IpProtocol,
    Ipv4Packet, ETHERTYPE_ARP, ETHERTYPE_IPV4,
};
pub(super) use rand::{Rng, SeedableRng};
pub(super) use smoltcp::phy::ChecksumCapabilities;
pub(super) use std::net::Ipv4Addr;
pub(super) use std::sync::Arc;

/// Copies 6 bytes at `at` out as a MAC.
pub(super) fn mac_at(b: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

pub(super) const ROUTER_MAC: [u8; 6] = crate::ROUTER_MAC;

pub(super) const POD_A: PortId = PortId(0);

pub(super) const POD_B: PortId = PortId(1);

pub(super) const HOST: PortId = PortId(2);

/// A pod behind a small MTU (1000).
pub(super) const POD_C: PortId = PortId(3);

pub(super) const MISSING: PortId = PortId(7);

pub(super) const A_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

pub(super) const B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

pub(super) const C_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);

/// Routed to a port that no longer exists.
pub(super) const STALE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 9);

/// In our block, unassigned: NextHop::Unreachable.
pub(super) const UNASSIGNED_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 77);

/// Another node's pod.
pub(super) const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);

pub(super) const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);

pub(super) const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 11);

pub(super) const HOSTNET_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

/// Nothing routes it (the test FIB has no default route).
pub(super) const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

pub(super) const GW: Ipv4Addr = crate::GATEWAY_IP;

pub(super) const A_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x02];

pub(super) const B_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x03];

pub(super) const C_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x04];

pub(super) const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];

pub(super) const DF: u16 = 0x4000;

pub(super) const MF: u16 = 0x2000;

/// Forwarded out of a pod or host port.
pub(super) fn fwd(port: PortId) -> Verdict {
    Verdict::Forward { port, tunnel: None }
}

/// Forwarded to the uplink, for `node`.
pub(super) fn tunnel_to(node: Ipv4Addr) -> Verdict {
    Verdict::Forward {
        port: UPLINK,
        tunnel: Some(node),
    }
}

pub(super) fn cfg(rate: u32, burst: u32) -> PipelineConfig {
    PipelineConfig {
        router_mac: ROUTER_MAC,
        node_ip: NODE_IP,
        icmp_rate_per_sec: rate,
        icmp_burst: burst,
        arp_rate_per_sec: PipelineConfig::DEFAULT_ARP_RATE_PER_SEC,
        arp_burst: PipelineConfig::DEFAULT_ARP_BURST,
    }
}

pub(super) fn entry(name: &str, role: PortRole, mtu: u16) -> PortEntry {
    PortEntry {
        info: PortInfo {
            name: name.into(),
            role,
            mtu,
        },
        port: Arc::new(MemPort::new()),
    }
}

pub(super) fn prefix(a: Ipv4Addr, len: u8) -> Prefix {
    Prefix::new(a, len).unwrap()
}

pub(super) struct Env {
    pub(super) ports: PortTable,
    pub(super) fib: Fib,
    pub(super) counters: WorkerCounters,
    pub(super) flows: FlowTable,
    /// Network policy (empty: nobody isolated).
    pub(super) policy: crate::policy::PolicyTable,
    /// The built-in load balancer's services (empty: none).
    pub(super) services: crate::service::ServiceTable,
    /// Path MTUs learned towards other nodes (empty: none).
    pub(super) path_mtus: crate::pmtu::PathMtuSnapshot,
    pub(super) pipeline: Pipeline,
    pub(super) now_ns: u64,
}

impl Env {
    pub(super) fn new() -> Env {
        Env::with_cfg(cfg(1000, 100))
    }

    pub(super) fn with_cfg(cfg: PipelineConfig) -> Env {
        let ports = PortTable::default()
            .with(
                POD_A,
                entry(
                    "a",
                    PortRole::Pod {
                        ip: A_IP,
                        mac: A_MAC,
                    },
                    1500,
                ),
            )
            .with(
                POD_B,
                entry(
                    "b",
                    PortRole::Pod {
                        ip: B_IP,
                        mac: B_MAC,
                    },
                    1500,
                ),
            )
            .with(
                HOST,
                entry("podrouter0", PortRole::Host { mac: HOST_MAC }, 1500),
            )
            .with(
                POD_C,
                entry(
                    "c",
                    PortRole::Pod {
                        ip: C_IP,
                        mac: C_MAC,
                    },
                    1000,
                ),
            );
        let fib = Fib::new();
        fib.update(&[
            FibChange::Insert(prefix(A_IP, 32), NextHop::Local(POD_A)),
            FibChange::Insert(prefix(B_IP, 32), NextHop::Local(POD_B)),
            FibChange::Insert(prefix(C_IP, 32), NextHop::Local(POD_C)),
            FibChange::Insert(prefix(STALE_IP, 32), NextHop::Local(PortId(9))),
            FibChange::Insert(
                prefix(Ipv4Addr::new(10, 244, 1, 0), 24),
                NextHop::Unreachable,
            ),
            FibChange::Insert(
                prefix(Ipv4Addr::new(10, 244, 2, 0), 24),
                NextHop::Node(OTHER_NODE),
            ),
            FibChange::Insert(prefix(Ipv4Addr::new(192, 168, 0, 0), 16), NextHop::Host),
            FibChange::Insert(prefix(Ipv4Addr::new(10, 96, 0, 0), 12), NextHop::Host),
        ]);
        Env {
            ports,
            fib,
            counters: WorkerCounters::default(),
            flows: FlowTable::new(1024, Default::default()),
            policy: Default::default(),
            services: Default::default(),
            path_mtus: Default::default(),
            pipeline: Pipeline::new(cfg),
            now_ns: 1_000_000_000,
        }
    }

    pub(super) fn process(&mut self, ingress: PortId, frame: &mut Frame) -> Verdict {
        let table = self.fib.load();
        let ctx = BatchContext::new(
            &table,
            &self.ports,
            &self.counters,
            &self.flows,
            self.now_ns,
        )
        .with_policy(&self.policy)
        .with_services(&self.services)
        .with_path_mtus(&self.path_mtus);
        self.pipeline.process(&ctx, ingress, frame)
    }

    pub(super) fn run(&mut self, ingress: PortId, bytes: &[u8]) -> (Verdict, Frame) {
        let mut f = Frame::from_bytes(bytes);
        let v = self.process(ingress, &mut f);
        (v, f)
    }
}

/// An IPv4 packet with identification 0x4242 and a valid checksum.
pub(super) fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    flags_frag: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let hl = 20 + options.len();
    let mut v = vec![0u8; hl + payload.len()];
    v[0] = 0x40 | (hl / 4) as u8;
    let total = v.len() as u16;
    v[2..4].copy_from_slice(&total.to_be_bytes());
    v[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    v[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    v[8] = ttl;
    v[9] = proto;
    v[12..16].copy_from_slice(&src.octets());
    v[16..20].copy_from_slice(&dst.octets());
    v[20..hl].copy_from_slice(options);
    v[hl..].copy_from_slice(payload);
    Ipv4Packet::new_unchecked(&mut v[..]).fill_checksum();
    v
}

/// A UDP datagram of `len` bytes (header included; checksum 0).
pub(super) fn udp(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| i as u8).collect();
    v[0..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x35]);
    v[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    v[6..8].fill(0);
    v
}

pub(super) fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + payload.len());
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A UDP packet of `ip_len` bytes of IP from pod A (its MAC, to the
/// router's MAC).
pub(super) fn from_a(dst: Ipv4Addr, ttl: u8, flags: u16, ip_len: usize) -> Vec<u8> {
    let ip = ipv4(A_IP, dst, 17, ttl, flags, &[], &udp(ip_len - 20));
    eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip)
}

pub(super) fn from_host(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let ip = ipv4(src, dst, 17, ttl, DF, &[], &udp(40));
    eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &ip)
}

pub(super) fn arp(
    eth_dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut a = vec![0x00, 0x01, 0x08, 0x00, 0x06, 0x04];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    eth(eth_dst, sha, ETHERTYPE_ARP, &a)
}

/// Checks every header of an ICMP error the router built and that it
/// quotes `original` (an IP packet) as RFC 1812 asks.
#[allow(clippy::too_many_arguments)]
pub(super) fn assert_icmp_error(
    out: &Frame,
    to_mac: [u8; 6],
    to_ip: Ipv4Addr,
    ty: u8,
    code: u8,
    mtu: u16,
    original: &[u8],
) {
    let d = out.data();
    assert_eq!(&d[0..6], &to_mac, "eth dst");
    assert_eq!(&d[6..12], &ROUTER_MAC, "eth src");
    assert_eq!(&d[12..14], &[0x08, 0x00]);
    let ip = check_ipv4(&d[14..]).expect("valid IP header and checksum");
    assert_eq!(ip.header_len(), 20);
    assert_eq!(usize::from(ip.total_len()), d.len() - 14);
    assert!(usize::from(ip.total_len()) <= MAX_ICMP_ERROR_LEN);
    assert_eq!(ip.src_addr(), NODE_IP);
    assert_eq!(ip.dst_addr(), to_ip);
    assert_eq!(ip.hop_limit(), 64);
    assert_eq!(ip.next_header(), IpProtocol::Icmp);
    assert!(!ip.dont_frag() && !ip.more_frags() && ip.frag_offset() == 0);
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(), "ICMP checksum");
    assert_eq!(u8::from(icmp.msg_type()), ty);
    assert_eq!(icmp.msg_code(), code);
    let raw = icmp.into_inner();
    assert_eq!(&raw[4..6], &[0, 0]);
    assert_eq!(&raw[6..8], &mtu.to_be_bytes());
    let want = original.len().min(548);
    assert_eq!(&raw[8..], &original[..want], "quoted original");
}

pub(super) fn ip_part(frame_bytes: &[u8]) -> &[u8] {
    &frame_bytes[14..]
}

/// The pod asks for its gateway: the exact reply.
pub(super) const GW_ARP_REPLY: [u8; 42] = [
    0x02, 0x42, 0x0a, 0xf4, 0x01, 0x02, // eth dst: pod A
    0xee, 0xee, 0xee, 0xee, 0xee, 0xee, // eth src: router
    0x08, 0x06, // ARP
    0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet, IPv4, 6, 4
    0x00, 0x02, // reply
    0xee, 0xee, 0xee, 0xee, 0xee, 0xee, // sender MAC: router
    0xa9, 0xfe, 0x01, 0x01, // sender IP 169.254.1.1
    0x02, 0x42, 0x0a, 0xf4, 0x01, 0x02, // target MAC: pod A
    0x0a, 0xf4, 0x01, 0x02, // target IP 10.244.1.2
];

pub(super) fn with_ip_byte(frame: &[u8], i: usize, val: u8, fix_checksum: bool) -> Vec<u8> {
    let mut b = frame.to_vec();
    b[14 + i] = val;
    if fix_checksum {
        let hl = usize::from(b[14] & 0xf) * 4;
        let end = (14 + hl.max(20)).min(b.len());
        Ipv4Packet::new_unchecked(&mut b[14..end]).fill_checksum();
    }
    b
}

pub(super) const UPLINK: PortId = PortId(4);

/// A node outside 192.168.0.0/24 and a block it owns.
pub(super) const FAR_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);

pub(super) const FAR_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 7);

/// The test node with an uplink (path MTU 1480) in `mode`, subnet
/// 192.168.0.0/24, and a block 10.244.3.0/24 on FAR_NODE.
pub(super) fn uplink_env(mode: EncapMode) -> Env {
    let mut env = Env::new();
    let policy = EncapPolicy {
        mode,
        subnet: Some(prefix(Ipv4Addr::new(192, 168, 0, 0), 24)),
    };
    env.ports = env.ports.with(
        UPLINK,
        entry(
            "uplink",
            PortRole::Uplink {
                local: NODE_IP,
                policy,
                tunnel: Tunnel::Ipip,
            },
            1480,
        ),
    );
    env.fib.update(&[FibChange::Insert(
        prefix(Ipv4Addr::new(10, 244, 3, 0), 24),
        NextHop::Node(FAR_NODE),
    )]);
    env
}

/// An IPIP frame as the uplink presents it: `outer_src` -> `outer_dst`
/// carrying `inner`.
pub(super) fn ipip_in(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let outer = ipv4(outer_src, outer_dst, 4, 64, 0, &[], inner);
    eth(ROUTER_MAC, [0; 6], ETHERTYPE_IPV4, &outer)
}

pub(super) fn remote_udp(dst: Ipv4Addr, ttl: u8, len: usize) -> Vec<u8> {
    ipv4(REMOTE_IP, dst, 17, ttl, DF, &[], &udp(len - 20))
}

/// A block on both OTHER_NODE (inside the uplink's subnet) and
/// FAR_NODE (outside it): an ECMP group.
pub(super) const ECMP_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 0);

pub(super) const ECMP_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 9);

pub(super) fn ecmp_env(mode: EncapMode) -> Env {
    let env = uplink_env(mode);
    env.fib.update(&[FibChange::InsertMultipath(
        prefix(ECMP_BLOCK, 24),
        vec![FAR_NODE, OTHER_NODE],
    )]);
    assert!(matches!(
        env.fib.load().lookup(ECMP_POD),
        Some(NextHop::Nodes(_))
    ));
    env
}

/// A UDP packet from pod A to `dst` from source port `sport`.
pub(super) fn udp_from_a(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut u = udp(60);
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    eth(
        ROUTER_MAC,
        A_MAC,
        ETHERTYPE_IPV4,
        &ipv4(A_IP, dst, 17, 64, DF, &[], &u),
    )
}

/// A TCP/IPv4 GSO frame from pod A: `payload` bytes cut at `mss`.
pub(super) fn gso_from_a(dst: Ipv4Addr, mss: u16, payload: usize, gso_type: u8) -> Frame {
    let mut tcp = vec![0u8; 32 + payload];
    tcp[12] = 0x80; // 32-byte header
    tcp[13] = 0x10;
    let ip = ipv4(A_IP, dst, 6, 64, DF, &[], &tcp);
    let mut f = Frame::from_bytes(&eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
    f.vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type,
        hdr_len: 66,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
    };
    f
}
