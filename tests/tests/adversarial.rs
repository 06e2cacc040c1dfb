//! The project's own adversarial suite (issue 15): a hostile pod sends
//! malformed and forged frames from a raw AF_PACKET socket on its eth0,
//! without and with `PACKET_VNET_HDR` (then each frame carries a virtio-net
//! header, bad ones included), category by category. After each category:
//!
//! - podrouterd still runs and answers its API;
//! - a ping between two other pods still gets its replies;
//! - the counters account for every frame: what the kernel took from the
//!   socket reached the attacker's port (`rx_packets`), each frame's fate
//!   shows exactly where this suite expects it (a drop under its named
//!   reason, an ARP reply, an ICMP error back, a frame to the other pod),
//!   no other drop reason moved, and over the whole node every frame
//!   received is one sent or one dropped (`rx = tx - icmp_sent + drops`).
//!
//! The frames are built here; a few lines of python3 (the AF_PACKET socket)
//! send them from inside the pod. The pods keep quiet on their own (IPv6
//! off, a permanent neighbour entry for the gateway), so every frame in a
//! window is the suite's or a reply it causes.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use podrouter_e2e::*;

/// Sends the frames of a file (each: 2-byte length, then the bytes) out of
/// an interface; with `vnet`, the socket has PACKET_VNET_HDR set and each
/// frame starts with its 10-byte virtio-net header. Prints one JSON object:
/// the indexes the kernel refused, with errno.
const SENDER: &str = r#"
import json, socket, sys, time
path, ifname, vnet = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
data = open(path, "rb").read()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
if vnet:
    s.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
s.bind((ifname, 0))
i = n = 0
refused = {}
while i < len(data):
    ln = int.from_bytes(data[i:i + 2], "big")
    frame = data[i + 2:i + 2 + ln]
    i += 2 + ln
    try:
        s.send(frame)
    except OSError as e:
        refused[n] = e.errno
    n += 1
    time.sleep(0.001)  # one frame at a time: no queue of ours overflows
print(json.dumps({"frames": n, "refused": refused}))
"#;

const ROUTER: [u8; 6] = [0xee; 6];
const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const DF: u16 = 0x4000;
const MF: u16 = 0x2000;

/// Where a frame that the kernel passed to podrouterd must end up.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    /// Dropped and counted under this reason, nothing sent.
    Drop(&'static str),
    /// Dropped under this reason and answered with an ICMP error.
    Icmp(&'static str),
    /// Answered with a proxy-ARP reply.
    ArpReply,
    /// Forwarded to the victim pod.
    ToVictim,
    /// The kernel refuses it (the socket's send fails): a virtio-net header
    /// the kernel itself rejects never reaches the TAP.
    Refused,
}

/// One frame of a category.
struct Attack {
    what: String,
    /// The virtio-net header (sent only by the PACKET_VNET_HDR categories).
    vnet: [u8; 10],
    frame: Vec<u8>,
    fate: Fate,
}

/// The addresses a category's frames use.
struct World {
    /// The attacker's own address and MAC.
    me: Ipv4Addr,
    my_mac: [u8; 6],
    /// The victim pod (receives what is forwarded).
    victim: Ipv4Addr,
    /// Another pod, whose address the attacker forges.
    other: Ipv4Addr,
}

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).expect("MAC octet");
    }
    m
}

fn csum(b: &[u8]) -> [u8; 2] {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(14 + payload.len());
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An IPv4 packet with a valid header checksum (options: a multiple of 4).
fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    flags_frag: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let hl = 20 + options.len();
    let mut v = vec![0u8; hl];
    v[0] = 0x40 | (hl / 4) as u8;
    v[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    v[4..6].copy_from_slice(&0x5151u16.to_be_bytes());
    v[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    v[8] = ttl;
    v[9] = proto;
    v[12..16].copy_from_slice(&src.octets());
    v[16..20].copy_from_slice(&dst.octets());
    v[20..hl].copy_from_slice(options);
    let c = csum(&v[..hl]);
    v[10..12].copy_from_slice(&c);
    v.extend_from_slice(payload);
    v
}

/// A UDP datagram of `len` bytes to the discard port (checksum 0: none).
fn udp(len: usize) -> Vec<u8> {
    let mut v = vec![0x5a; len.max(8)];
    v[0..2].copy_from_slice(&40000u16.to_be_bytes());
    v[2..4].copy_from_slice(&9u16.to_be_bytes());
    v[4..6].copy_from_slice(&(len.max(8) as u16).to_be_bytes());
    v[6..8].fill(0);
    v
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0x00, 0x01, 0x08, 0x00, 0x06, 0x04];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    a
}

/// Rewrites IPv4 header byte `i` of an Ethernet frame, optionally fixing
/// the checksum after.
fn with_ip_byte(mut f: Vec<u8>, i: usize, val: u8, fix: bool) -> Vec<u8> {
    f[14 + i] = val;
    if fix {
        let hl = (usize::from(f[14] & 0xf) * 4).clamp(20, f.len() - 14);
        f[24..26].fill(0);
        let c = csum(&f[14..14 + hl]);
        f[24..26].copy_from_slice(&c);
    }
    f
}

impl World {
    fn attack(&self, what: &str, frame: Vec<u8>, fate: Fate) -> Attack {
        Attack {
            what: what.to_string(),
            vnet: [0; 10],
            frame,
            fate,
        }
    }

    /// An Ethernet frame from the attacker to the router.
    fn to_router(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        eth(ROUTER, self.my_mac, ethertype, payload)
    }

    /// UDP from the attacker's own address to the victim.
    fn udp_to_victim(&self, ttl: u8, len: usize) -> Vec<u8> {
        self.to_router(
            ETH_IPV4,
            &ipv4(self.me, self.victim, 17, ttl, DF, &[], &udp(len)),
        )
    }

    fn ethernet(&self) -> Vec<Attack> {
        let ip = ipv4(self.me, self.victim, 17, 64, DF, &[], &udp(40));
        let mut vlan = vec![0x00, 0x05, 0x08, 0x00];
        vlan.extend_from_slice(&ip);
        vec![
            self.attack(
                "13-byte frame",
                self.to_router(ETH_IPV4, &[])[..13].to_vec(),
                Fate::Drop("truncated"),
            ),
            self.attack(
                "Ethernet header only",
                self.to_router(ETH_IPV4, &[]),
                Fate::Drop("truncated"),
            ),
            self.attack(
                "IPv4 type, 10 bytes of payload",
                self.to_router(ETH_IPV4, &ip[..10]),
                Fate::Drop("truncated"),
            ),
            self.attack(
                "another unicast MAC",
                eth([2, 0, 0, 0, 0, 0x99], self.my_mac, ETH_IPV4, &ip),
                Fate::Drop("not_for_router"),
            ),
            self.attack(
                "multicast MAC",
                eth([1, 0, 0x5e, 0, 0, 1], self.my_mac, ETH_IPV4, &ip),
                Fate::Drop("multicast"),
            ),
            self.attack(
                "IPv6 multicast MAC",
                eth([0x33, 0x33, 0, 0, 0, 1], self.my_mac, 0x86dd, &[0x60; 48]),
                Fate::Drop("multicast"),
            ),
            self.attack(
                "IPv4 to the broadcast MAC",
                eth([0xff; 6], self.my_mac, ETH_IPV4, &ip),
                Fate::Drop("multicast"),
            ),
            self.attack(
                "IPv6 to the router",
                self.to_router(0x86dd, &[0x60; 48]),
                Fate::Drop("unsupported_ethertype"),
            ),
            self.attack(
                "VLAN tag",
                self.to_router(0x8100, &vlan),
                Fate::Drop("unsupported_ethertype"),
            ),
            self.attack(
                "QinQ tag",
                self.to_router(0x88a8, &vlan),
                Fate::Drop("unsupported_ethertype"),
            ),
            self.attack(
                "unknown ethertype",
                self.to_router(0x88b5, &ip),
                Fate::Drop("unsupported_ethertype"),
            ),
            self.attack(
                "frame of 9000 bytes (over the MTU)",
                self.udp_to_victim(64, 9000 - 34),
                Fate::Icmp("frag_needed"),
            ),
        ]
    }

    fn arp(&self) -> Vec<Attack> {
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let good = arp(1, self.my_mac, self.me, gw);
        let mut bad_hw = good.clone();
        bad_hw[1] = 6;
        let mut bad_len = good.clone();
        bad_len[4] = 8;
        vec![
            self.attack(
                "request for the gateway",
                eth([0xff; 6], self.my_mac, ETH_ARP, &good),
                Fate::ArpReply,
            ),
            self.attack(
                "request for another pod, unicast to the router",
                self.to_router(ETH_ARP, &arp(1, self.my_mac, self.me, self.victim)),
                Fate::ArpReply,
            ),
            self.attack(
                "truncated ARP",
                self.to_router(ETH_ARP, &good[..20]),
                Fate::Drop("arp_malformed"),
            ),
            self.attack(
                "hardware type 6",
                self.to_router(ETH_ARP, &bad_hw),
                Fate::Drop("arp_malformed"),
            ),
            self.attack(
                "hardware length 8",
                self.to_router(ETH_ARP, &bad_len),
                Fate::Drop("arp_malformed"),
            ),
            self.attack(
                "ARP reply",
                self.to_router(ETH_ARP, &arp(2, self.my_mac, self.me, gw)),
                Fate::Drop("arp_not_request"),
            ),
            self.attack(
                "RARP operation",
                self.to_router(ETH_ARP, &arp(3, self.my_mac, self.me, gw)),
                Fate::Drop("arp_not_request"),
            ),
            self.attack(
                "gratuitous ARP",
                eth(
                    [0xff; 6],
                    self.my_mac,
                    ETH_ARP,
                    &arp(1, self.my_mac, self.me, self.me),
                ),
                Fate::Drop("arp_gratuitous"),
            ),
            self.attack(
                "ARP probe (sender 0.0.0.0)",
                eth(
                    [0xff; 6],
                    self.my_mac,
                    ETH_ARP,
                    &arp(1, self.my_mac, Ipv4Addr::UNSPECIFIED, gw),
                ),
                Fate::Drop("arp_gratuitous"),
            ),
            self.attack(
                "ARP from another pod's address",
                self.to_router(ETH_ARP, &arp(1, self.my_mac, self.other, gw)),
                Fate::Drop("arp_wrong_source"),
            ),
            self.attack(
                "ARP to another unicast MAC",
                eth([2, 0, 0, 0, 0, 0x99], self.my_mac, ETH_ARP, &good),
                Fate::Drop("not_for_router"),
            ),
        ]
    }

    fn ipv4(&self) -> Vec<Attack> {
        let ok = self.udp_to_victim(64, 60);
        let (me, victim, other) = (self.me, self.victim, self.other);
        let node: Ipv4Addr = NODE_IP.parse().unwrap();
        let from = |src: Ipv4Addr, dst: Ipv4Addr| {
            self.to_router(ETH_IPV4, &ipv4(src, dst, 17, 64, DF, &[], &udp(40)))
        };
        let mut padded = ok.clone();
        padded.extend_from_slice(&[0xab; 30]);
        let mut total_long = ok.clone();
        total_long[16..18].copy_from_slice(&200u16.to_be_bytes());
        let total_long = with_ip_byte(total_long, 0, 0x45, true);
        let mut total_short = ok.clone();
        total_short[16..18].copy_from_slice(&12u16.to_be_bytes());
        let total_short = with_ip_byte(total_short, 0, 0x45, true);
        // A port unreachable quoting an earlier packet: an ICMP error.
        let quoted = ipv4(victim, me, 17, 64, DF, &[], &udp(8));
        let mut unreach = vec![3, 3, 0, 0, 0, 0, 0, 0];
        unreach.extend_from_slice(&quoted);
        let c = csum(&unreach);
        unreach[2..4].copy_from_slice(&c);
        let record_route = [7, 7, 4, 0, 0, 0, 0, 0];
        vec![
            self.attack("valid UDP (control)", ok.clone(), Fate::ToVictim),
            self.attack(
                "IHL 4",
                with_ip_byte(ok.clone(), 0, 0x44, true),
                Fate::Drop("bad_ip_header"),
            ),
            self.attack(
                "IHL 15 in a 40-byte packet",
                with_ip_byte(self.udp_to_victim(64, 20), 0, 0x4f, false),
                Fate::Drop("bad_ip_header"),
            ),
            self.attack(
                "version 6 in an IPv4 frame",
                with_ip_byte(ok.clone(), 0, 0x65, true),
                Fate::Drop("bad_ip_header"),
            ),
            self.attack(
                "total length past the frame",
                total_long,
                Fate::Drop("bad_ip_header"),
            ),
            self.attack(
                "total length below the header",
                total_short,
                Fate::Drop("bad_ip_header"),
            ),
            self.attack(
                "bad header checksum",
                with_ip_byte(ok.clone(), 10, 0x12, false),
                Fate::Drop("bad_ip_checksum"),
            ),
            self.attack("Ethernet padding after the packet", padded, Fate::ToVictim),
            self.attack(
                "IP options (record route)",
                self.to_router(
                    ETH_IPV4,
                    &ipv4(me, victim, 17, 64, 0, &record_route, &udp(40)),
                ),
                Fate::ToVictim,
            ),
            self.attack(
                "first fragment",
                self.to_router(ETH_IPV4, &ipv4(me, victim, 17, 64, MF, &[], &udp(64))),
                Fate::ToVictim,
            ),
            self.attack(
                "last fragment",
                self.to_router(ETH_IPV4, &ipv4(me, victim, 17, 64, 8, &[], &[0x33; 40])),
                Fate::ToVictim,
            ),
            self.attack(
                "source 0.0.0.0",
                from(Ipv4Addr::UNSPECIFIED, victim),
                Fate::Drop("bad_source"),
            ),
            self.attack(
                "source 127.0.0.1",
                from(Ipv4Addr::LOCALHOST, victim),
                Fate::Drop("bad_source"),
            ),
            self.attack(
                "multicast source",
                from(Ipv4Addr::new(224, 0, 0, 9), victim),
                Fate::Drop("bad_source"),
            ),
            self.attack(
                "broadcast destination",
                from(me, Ipv4Addr::BROADCAST),
                Fate::Drop("multicast"),
            ),
            self.attack(
                "multicast destination",
                from(me, Ipv4Addr::new(224, 0, 0, 5)),
                Fate::Drop("multicast"),
            ),
            self.attack(
                "forged source: another pod",
                from(other, victim),
                Fate::Drop("spoofed_source"),
            ),
            self.attack(
                "forged source: the victim itself",
                from(victim, victim),
                Fate::Drop("spoofed_source"),
            ),
            self.attack(
                "forged source: the node",
                from(node, victim),
                Fate::Drop("spoofed_source"),
            ),
            self.attack(
                "forged source outside the cluster",
                from(Ipv4Addr::new(198, 51, 100, 7), victim),
                Fate::Drop("spoofed_source"),
            ),
            self.attack(
                "TTL 1",
                self.udp_to_victim(1, 60),
                Fate::Icmp("ttl_exceeded"),
            ),
            self.attack(
                "TTL 0",
                self.udp_to_victim(0, 60),
                Fate::Icmp("ttl_exceeded"),
            ),
            self.attack(
                "ICMP error with TTL 1 (no error about an error)",
                self.to_router(ETH_IPV4, &ipv4(me, victim, 1, 1, 0, &[], &unreach)),
                Fate::Drop("ttl_exceeded"),
            ),
            self.attack(
                "unassigned address of the block",
                from(me, Ipv4Addr::new(10, 244, 0, 250)),
                Fate::Icmp("no_route"),
            ),
        ]
    }

    /// Frames with a virtio-net header (the socket has PACKET_VNET_HDR).
    fn virtio(&self) -> Vec<Attack> {
        let vnet = |flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16| {
            let mut h = [0u8; 10];
            h[0] = flags;
            h[1] = gso;
            h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
            h[4..6].copy_from_slice(&gso_size.to_le_bytes());
            h[6..8].copy_from_slice(&start.to_le_bytes());
            h[8..10].copy_from_slice(&off.to_le_bytes());
            h
        };
        // A TCP segment of `payload` bytes (ACK, no options, checksum left
        // to the offload), the way a TSO frame comes out of a pod.
        let tcp = |payload: usize| {
            let mut t = vec![0u8; 20 + payload];
            t[0..2].copy_from_slice(&40001u16.to_be_bytes());
            t[2..4].copy_from_slice(&9u16.to_be_bytes());
            t[12] = 0x50;
            t[13] = 0x10;
            self.to_router(ETH_IPV4, &ipv4(self.me, self.victim, 6, 64, DF, &[], &t))
        };
        let with = |what: &str, h: [u8; 10], frame: Vec<u8>, fate: Fate| Attack {
            vnet: h,
            ..self.attack(what, frame, fate)
        };
        vec![
            with(
                "no offload (control)",
                [0; 10],
                self.udp_to_victim(64, 60),
                Fate::ToVictim,
            ),
            with(
                "checksum offload, valid",
                vnet(1, 0, 0, 0, 34, 16),
                tcp(100),
                Fate::ToVictim,
            ),
            with(
                "TSO, 64-byte segments of 30000 bytes",
                vnet(1, 1, 54, 64, 34, 16),
                tcp(30000),
                Fate::Drop("gso_segment_too_small"),
            ),
            with(
                "TSO, gso_size 0",
                vnet(1, 1, 54, 0, 34, 16),
                tcp(30000),
                Fate::Refused,
            ),
            with(
                "TSO with ECN, 1-byte segments",
                vnet(1, 0x81, 54, 1, 34, 16),
                tcp(3000),
                Fate::Drop("gso_segment_too_small"),
            ),
            with(
                "TSO of an oversize frame, valid (1400-byte segments)",
                vnet(1, 1, 54, 1400, 34, 16),
                tcp(20000),
                Fate::ToVictim,
            ),
            with(
                "checksum start past the frame",
                vnet(1, 0, 0, 0, 3000, 16),
                tcp(100),
                Fate::Refused,
            ),
            with(
                "checksum offset past the frame",
                vnet(1, 0, 0, 0, 34, 3000),
                tcp(100),
                Fate::Refused,
            ),
            with(
                "unknown GSO type 9",
                vnet(1, 9, 54, 1400, 34, 16),
                tcp(3000),
                Fate::Refused,
            ),
            // The kernel sets up the partial checksum itself.
            with(
                "TSO without the checksum flag",
                vnet(0, 1, 54, 1400, 34, 16),
                tcp(3000),
                Fate::ToVictim,
            ),
        ]
    }
}

/// The known node of the suite's node (a static route sends a block
/// through the tunnel to it) and an address of that block.
const PEER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);
const PEER_BLOCK: &str = "10.244.1.0/24";
const PEER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

impl World {
    /// IPIP packets arriving at the node from the underlay, as whole IPv4
    /// packets (outer header included).
    fn underlay(&self) -> Vec<Attack> {
        let node: Ipv4Addr = NODE_IP.parse().unwrap();
        let echo = {
            let mut e = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 0x70, 0x72];
            let c = csum(&e);
            e[2..4].copy_from_slice(&c);
            e
        };
        let ipip = |outer_src: Ipv4Addr, inner: &[u8]| ipv4(outer_src, node, 4, 64, 0, &[], inner);
        let inner = |src: Ipv4Addr, dst: Ipv4Addr, ttl: u8| ipv4(src, dst, 1, ttl, 0, &[], &echo);
        let ok = inner(PEER_POD, self.victim, 64);
        let mut bad_sum = ok.clone();
        bad_sum[10] ^= 0x5a;
        let mut long = ok.clone();
        long[2..4].copy_from_slice(&400u16.to_be_bytes());
        vec![
            self.attack(
                "from a known node (control)",
                ipip(PEER_NODE, &ok),
                Fate::ToVictim,
            ),
            self.attack(
                "from a stranger",
                ipip(Ipv4Addr::new(192, 168, 200, 77), &ok),
                Fate::Drop("ipip_unknown_node"),
            ),
            self.attack(
                "inner source: a pod of this node",
                ipip(PEER_NODE, &inner(self.other, self.victim, 64)),
                Fate::Drop("tunnel_spoofed_source"),
            ),
            self.attack(
                "inner source: outside the peer's block",
                ipip(
                    PEER_NODE,
                    &inner(Ipv4Addr::new(198, 51, 100, 7), self.victim, 64),
                ),
                Fate::Drop("tunnel_spoofed_source"),
            ),
            self.attack(
                "inner source 0.0.0.0",
                ipip(PEER_NODE, &inner(Ipv4Addr::UNSPECIFIED, self.victim, 64)),
                Fate::Drop("bad_source"),
            ),
            self.attack(
                "inner header truncated",
                ipip(PEER_NODE, &ok[..12]),
                Fate::Drop("ipip_malformed"),
            ),
            self.attack(
                "inner length past the packet",
                ipip(PEER_NODE, &long),
                Fate::Drop("ipip_malformed"),
            ),
            self.attack(
                "inner checksum wrong",
                ipip(PEER_NODE, &bad_sum),
                Fate::Drop("ipip_malformed"),
            ),
            self.attack(
                "inner multicast destination",
                ipip(PEER_NODE, &inner(PEER_POD, Ipv4Addr::new(224, 0, 0, 1), 64)),
                Fate::Drop("multicast"),
            ),
            self.attack(
                "inner destination not on this node",
                ipip(PEER_NODE, &inner(PEER_POD, Ipv4Addr::new(10, 99, 0, 1), 64)),
                Fate::Drop("ipip_not_local"),
            ),
            self.attack(
                "inner destination: a free address of this node's block",
                ipip(
                    PEER_NODE,
                    &inner(PEER_POD, Ipv4Addr::new(10, 244, 0, 250), 64),
                ),
                Fate::Icmp("ipip_not_local"),
            ),
            self.attack(
                "inner TTL 1",
                ipip(PEER_NODE, &inner(PEER_POD, self.victim, 1)),
                Fate::Icmp("ttl_exceeded"),
            ),
        ]
    }
}

/// How a category's frames get to the node.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// From the attacker pod's raw socket, with or without
    /// PACKET_VNET_HDR.
    Pod { vnet: bool },
    /// Whole IPv4 packets from a raw socket in the node's namespace, to
    /// the node's address: they arrive at the uplink as from the underlay.
    Underlay,
}

/// Sends each packet from a raw IPv4 socket in `netns`; the indexes the
/// kernel refused, with the error.
fn send_underlay(netns: &str, packets: &[&[u8]]) -> BTreeMap<usize, String> {
    let path = format!("/run/netns/{netns}");
    podrouter_control::netns::run_in_netns(std::path::Path::new(&path), || {
        let mut refused = BTreeMap::new();
        for (i, p) in packets.iter().enumerate() {
            if let Err(e) = podrouter_router::uplink::send_raw_ipv4(p) {
                refused.insert(i, e.to_string());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        refused
    })
    .expect("enter the node's namespace")
}

/// What one category did to the counters.
struct Window {
    before: Value,
    after: Value,
}

impl Window {
    fn d(&self, pointer: &str) -> u64 {
        delta(&self.before, &self.after, pointer)
    }

    fn port(&self, v: &Value, port: u64, field: &str) -> u64 {
        v["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"].as_u64() == Some(port)))
            .map(|p| num(p, &format!("/{field}")))
            .unwrap_or(0)
    }

    fn port_d(&self, port: u64, field: &str) -> u64 {
        self.port(&self.after, port, field) - self.port(&self.before, port, field)
    }

    fn drops(&self) -> BTreeMap<String, u64> {
        drop_reasons()
            .into_iter()
            .map(|r| (r.to_string(), self.d(&format!("/drops/{r}"))))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

struct Suite {
    node: Node,
    attacker: Pod,
    attacker_port: u64,
    uplink_port: u64,
    a: Pod,
    b: Pod,
    victim_port: u64,
    sender: std::path::PathBuf,
    report: String,
}

fn quiet(pod: &Pod) {
    pod.sh(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.eth0.disable_ipv6=1 && \
         ip neigh replace 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent",
    )
    .expect_ok();
}

fn tx_dropped(pod: &Pod) -> u64 {
    pod.exec(&["cat", "/sys/class/net/eth0/statistics/tx_dropped"])
        .stdout
        .trim()
        .parse()
        .unwrap_or(0)
}

impl Suite {
    fn start() -> Suite {
        let mut node = Node::start(NodeConfig {
            // ICMP errors are part of the accounting: none rate-limited.
            icmp_rate: Some(100_000),
            icmp_burst: Some(100_000),
            log_level: "info".into(),
            routes: vec![(PEER_BLOCK.into(), PEER_NODE.to_string())],
            ..NodeConfig::default()
        });
        // Where the node's packets to the peer go: a veth pair whose other
        // end has no address, so they leave without an error and go no
        // further (the peer does not exist).
        for cmd in [
            "ip link add prsink0 type veth peer name prsink1",
            "ip addr add 192.168.200.254/24 dev prsink0",
            "ip link set prsink1 up",
            "ip link set prsink0 up",
            "ip neigh replace 192.168.200.2 lladdr 02:00:00:00:00:02 dev prsink0 nud permanent",
        ] {
            node.exec(&cmd.split(' ').collect::<Vec<_>>()).expect_ok();
        }
        let attacker = node.add_pod("attacker", &[]);
        let a = node.add_pod("a", &[]);
        let b = node.add_pod("b", &[]);
        for p in [&attacker, &a, &b] {
            quiet(p);
        }
        // The node's side of the host port too (no IPv6 multicast of its
        // own in the windows).
        node.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .expect_ok();
        let sender = node.dir.join("sender.py");
        std::fs::write(&sender, SENDER).expect("write sender");
        assert!(
            ping_until_reply(&a.ns, &b.ip, Duration::from_secs(5)),
            "pods a and b never talked"
        );
        let port = |p: &Pod| p.info["port"].as_u64().expect("attach reply has a port");
        let counters = node.counters();
        let uplink_port = counters["ports"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ipip")))
            })
            .and_then(|p| p["port"].as_u64())
            .unwrap_or_else(|| panic!("no IPIP uplink port: {counters:#}"));
        Suite {
            uplink_port,
            attacker_port: port(&attacker),
            victim_port: port(&b),
            node,
            attacker,
            a,
            b,
            sender,
            report: String::new(),
        }
    }

    fn world(&self) -> World {
        World {
            me: self.attacker.ip.parse().unwrap(),
            my_mac: mac(self.attacker.info["mac"]
                .as_str()
                .expect("attach reply has a MAC")),
            victim: self.b.ip.parse().unwrap(),
            other: self.a.ip.parse().unwrap(),
        }
    }

    /// Sends one category and checks everything the module header lists.
    #[track_caller]
    fn category(&mut self, name: &str, attacks: Vec<Attack>, via: Via) {
        let before = self.node.counters();
        let dropped0 = tx_dropped(&self.attacker);
        let (refused, ingress): (BTreeMap<usize, String>, u64) = match via {
            Via::Pod { vnet } => {
                let file = self.node.dir.join(&format!("{name}.frames"));
                let mut bytes = Vec::new();
                for a in &attacks {
                    let mut f = Vec::new();
                    if vnet {
                        f.extend_from_slice(&a.vnet);
                    }
                    f.extend_from_slice(&a.frame);
                    bytes.extend_from_slice(&(f.len() as u16).to_be_bytes());
                    bytes.extend_from_slice(&f);
                }
                std::fs::write(&file, bytes).expect("write frames");
                let out = self.attacker.exec(&[
                    "python3",
                    &self.sender.to_string_lossy(),
                    &file.to_string_lossy(),
                    "eth0",
                    if vnet { "1" } else { "0" },
                ]);
                assert!(out.ok(), "{name}: the sender failed: {out}");
                let sent: Value = serde_json::from_str(out.stdout.trim())
                    .unwrap_or_else(|e| panic!("{name}: sender printed no JSON ({e}): {out}"));
                assert_eq!(
                    num(&sent, "/frames"),
                    attacks.len() as u64,
                    "{name}: {sent}"
                );
                let refused = sent["refused"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.parse().ok()?, format!("errno {v}"))))
                            .collect()
                    })
                    .unwrap_or_default();
                (refused, self.attacker_port)
            }
            Via::Underlay => {
                let packets: Vec<&[u8]> = attacks.iter().map(|a| &a.frame[..]).collect();
                (
                    send_underlay(self.node.ns.name(), &packets),
                    self.uplink_port,
                )
            }
        };
        let passed: Vec<&Attack> = attacks
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains_key(i))
            .map(|(_, a)| a)
            .collect();
        for (i, a) in attacks.iter().enumerate() {
            if a.fate == Fate::Refused {
                assert!(
                    refused.contains_key(&i),
                    "{name}: the kernel passed \"{}\", which it refuses on this kernel",
                    a.what
                );
            }
        }

        // Wait until the worker has seen every frame and what they caused
        // has settled (the counters stop moving).
        let mut last = before.clone();
        let mut window = Window {
            before: before.clone(),
            after: before.clone(),
        };
        let lost_in_tap = || match via {
            Via::Pod { .. } => tx_dropped(&self.attacker) - dropped0,
            Via::Underlay => 0,
        };
        let settled = wait_until(Duration::from_secs(10), || {
            window.after = self.node.counters();
            let arrived = window.port_d(ingress, "rx_packets") + lost_in_tap();
            let still = ["/rx", "/tx"]
                .iter()
                .all(|k| num(&window.after, k) == num(&last, k));
            last = window.after.clone();
            arrived >= passed.len() as u64 && still
        });
        let mut report = format!(
            "{name}: {} frames, {} refused by the kernel ({:?}), {} lost in the TAP queue; drops {:?}\n",
            attacks.len(),
            refused.len(),
            refused,
            lost_in_tap(),
            window.drops()
        );
        let arrived = window.port_d(ingress, "rx_packets");
        assert!(
            settled,
            "{name}: {} of {} frames reached podrouterd:\n{report}",
            arrived,
            passed.len()
        );
        assert_eq!(
            arrived + lost_in_tap(),
            passed.len() as u64,
            "{name}: the ingress port received another number of frames than the kernel passed:\n{report}"
        );

        // Every frame's fate.
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        let (mut icmp, mut arp, mut to_victim) = (0, 0, 0);
        for a in &passed {
            match a.fate {
                Fate::Drop(r) => *want.entry(r.to_string()).or_default() += 1,
                Fate::Icmp(r) => {
                    *want.entry(r.to_string()).or_default() += 1;
                    icmp += 1;
                }
                Fate::ArpReply => arp += 1,
                Fate::ToVictim => to_victim += 1,
                Fate::Refused => unreachable!("refused frames are not in `passed`"),
            }
            let _ = writeln!(report, "  {:?} <- {}", a.fate, a.what);
        }
        if lost_in_tap() == 0 {
            assert_eq!(window.drops(), want, "{name}: drops by reason:\n{report}");
            assert_eq!(
                window.d("/icmp_sent"),
                icmp,
                "{name}: ICMP errors:\n{report}"
            );
            assert_eq!(
                window.d("/arp_replies"),
                arp,
                "{name}: ARP replies:\n{report}"
            );
            assert_eq!(
                window.port_d(self.victim_port, "tx_packets"),
                to_victim,
                "{name}: frames forwarded to the victim:\n{report}"
            );
        }
        // Over the whole node: each frame received was sent on or dropped
        // (an ICMP error is a drop and a frame sent).
        let drops: u64 = window.drops().values().sum();
        assert_eq!(
            window.d("/rx") + window.d("/icmp_sent"),
            window.d("/tx") + drops,
            "{name}: rx = tx - icmp_sent + drops does not hold:\n{report}"
        );

        // Alive, answering, and forwarding for everyone else.
        let pid = self.node.daemon_pid().expect("podrouterd runs");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{name}: podrouterd died:\n{}",
            self.node.daemon_log()
        );
        assert!(
            self.node.ctl_out(&["status"]).ok(),
            "{name}: the API does not answer"
        );
        let p = ping(&self.a.ns, &self.b.ip, &["-c", "3", "-i", "0.2", "-W", "1"]);
        assert_eq!(
            p.received, 3,
            "{name}: a -> b after the attack:\n{}",
            p.text
        );
        say(&report);
        self.report += &report;
    }
}

#[test]
fn a_hostile_pod_cannot_crash_stall_or_get_past_the_router() {
    if !require(
        "a_hostile_pod_cannot_crash_stall_or_get_past_the_router",
        &["python3", "ping"],
    ) {
        return;
    }
    let mut s = Suite::start();
    let w = s.world();
    let raw = Via::Pod { vnet: false };
    let vnet = Via::Pod { vnet: true };
    s.category("ethernet", w.ethernet(), raw);
    s.category("arp", w.arp(), raw);
    s.category("ipv4", w.ipv4(), raw);
    s.category("ipv4-with-vnet-hdr", w.ipv4(), vnet);
    s.category("virtio-net-headers", w.virtio(), vnet);
    s.category("underlay-ipip", w.underlay(), Via::Underlay);
}
