//! The per-frame pipeline: turns one received frame into a [`Verdict`],
//! rewriting it in place on the way (proxy-ARP replies, MAC rewrite and TTL
//! decrement for forwarding, ICMP errors built in the same buffer).
//!
//! Invariants: [`Pipeline::process`] does no I/O, no allocation, takes no
//! lock, logs nothing and reads no clock (time comes in
//! [`BatchContext::now_ns`]). Every received byte is untrusted: views are
//! built only after a length check. A forwarded frame keeps its offload
//! metadata (`frame.vnet`): header sizes never change on that path, so
//! `csum_start` and friends stay right. A frame the pipeline answers itself
//! (ARP reply, ICMP error) leaves on the port it came in on, with no offload
//! metadata, except an ICMP error about a packet that came through the
//! uplink: that one is routed to its destination like any packet (back
//! through the tunnel to the sender's node, normally).
//!
//! Other nodes (`NextHop::Node`, or `NextHop::Nodes` for an ECMP group:
//! one member is picked per flow, see [`flow_hash`]): the uplink's
//! [`EncapPolicy`](crate::uplink::EncapPolicy) (in its `PortRole::Uplink`)
//! says per node whether the frame goes to the uplink, its Ethernet
//! destination set to [`tunnel_mac`] of the node (the uplink encapsulates,
//! segments and fragments while copying it out), or to the host port for
//! the node's kernel to route directly. To the tunnel, DF
//! packets (GSO frames: each segment) must fit the uplink's MTU (link MTU -
//! 20) or get ICMP fragmentation needed; others are fragmented by the
//! uplink. From the uplink, frames are decapsulated only if addressed to
//! this node by a known node (a `via` of the FIB snapshot), and the inner
//! packet may only go to a local pod: every other case is a counted drop
//! (`ipip_*`), and an unassigned address of our blocks gets ICMP host
//! unreachable. TTL: a pod-to-pod hop on each router, as in Calico (64 ->
//! 62 across two nodes, encapsulated or not).
//!
//! ECMP: a group member is chosen by a hash of the flow (addresses,
//! protocol, and TCP/UDP/SCTP ports or the ICMP echo identifier), so one
//! flow always takes one member and never reorders while different flows
//! spread; fragments and truncated L4 headers hash on the addresses and
//! protocol alone, so every fragment of a datagram takes the same member.
//! Each member gets its own encapsulation decision. The node's own traffic
//! (from the host port) only goes to members reached through the tunnel:
//! the node's kernel routes to directly reached members itself.
//!
//! Counting convention: the worker counts the reason of every
//! [`Verdict::Drop`]. When a drop turns into an ICMP error (the verdict is
//! then a `Forward`), the pipeline counts the original reason and
//! `icmp_sent` itself; when the rate limiter refuses the error it counts
//! `icmp_rate_limited` and returns the `Drop`.
use std::net::Ipv4Addr;

use crate::conntrack::FlowTable;
use crate::counters::{DropReason, WorkerCounters};
use crate::fib::{FibTable, GroupId, NextHop};
use crate::frame::{Frame, VnetHdr};
use crate::gso::TcpSegments;
use crate::port::{PortEntry, PortId, PortRole, PortTable};
use crate::uplink::tunnel_mac;
use crate::wire::{
    self, ArpHardware, ArpOperation, ArpPacket, EthernetProtocol, Icmpv4Packet, IpProtocol,
    Ipv4Packet, ARP_IPV4_LEN, DEFAULT_TTL, ETHERNET_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4,
    ICMPV4_HEADER_LEN, IPPROTO_IPIP, IPV4_HEADER_LEN,
};

/// Node-wide settings the pipeline needs.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// MAC the router uses on every port (ee:ee:ee:ee:ee:ee).
    pub router_mac: [u8; 6],
    /// The pods' gateway, 169.254.1.1.
    pub gateway_ip: Ipv4Addr,
    /// Source address of ICMP errors the router generates.
    pub node_ip: Ipv4Addr,
    /// ICMP errors per second per worker (token bucket rate). 0: no refill.
    pub icmp_rate_per_sec: u32,
    /// ICMP token bucket depth. 0: no ICMP errors at all.
    pub icmp_burst: u32,
}

/// What the worker should do with a frame after [`Pipeline::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame out of this port.
    Forward(PortId),
    /// Drop it; the worker counts the reason.
    Drop(DropReason),
}

/// Everything a batch reads, loaded once per batch.
pub struct BatchContext<'a> {
    pub fib: &'a FibTable,
    pub ports: &'a PortTable,
    pub counters: &'a WorkerCounters,
    /// The flow table every worker shares (see [`crate::host_nat`]).
    pub flows: &'a FlowTable,
    /// The network policy snapshot of the batch (see
    /// [`crate::policy_stage`]).
    pub policy: &'a crate::policy::PolicyTable,
    /// Monotonic time in nanoseconds ([`crate::clock`]: the ICMP rate
    /// limiter, flow timeouts).
    pub now_ns: u64,
}

/// Largest ICMP error datagram (IP header included) the router sends:
/// RFC 1812 section 4.3.2.3.
pub const MAX_ICMP_ERROR_LEN: usize = 576;

const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// The I/G bit of a MAC's first octet: set for group (multicast) addresses,
/// IPv4's 01:00:5e:.. and IPv6's 33:33:.. alike.
const MAC_GROUP_BIT: u8 = 0x01;

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const CODE_NET_UNREACHABLE: u8 = 0;
const CODE_HOST_UNREACHABLE: u8 = 1;
const CODE_FRAG_NEEDED: u8 = 4;
const CODE_TTL_EXCEEDED: u8 = 0;

/// ICMP types that are errors (RFC 1122 3.2.2: never answer them with an
/// error): destination unreachable, source quench, redirect, time exceeded,
/// parameter problem.
fn is_icmp_error_type(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// One ICMP error to build: type, code and the 16-bit next-hop MTU field
/// (0 unless "fragmentation needed").
#[derive(Clone, Copy, Debug)]
struct IcmpError {
    ty: u8,
    code: u8,
    mtu: u16,
}

impl IcmpError {
    const NET_UNREACHABLE: IcmpError = IcmpError {
        ty: ICMP_DEST_UNREACHABLE,
        code: CODE_NET_UNREACHABLE,
        mtu: 0,
    };
    const HOST_UNREACHABLE: IcmpError = IcmpError {
        ty: ICMP_DEST_UNREACHABLE,
        code: CODE_HOST_UNREACHABLE,
        mtu: 0,
    };
    const TTL_EXCEEDED: IcmpError = IcmpError {
        ty: ICMP_TIME_EXCEEDED,
        code: CODE_TTL_EXCEEDED,
        mtu: 0,
    };
    fn frag_needed(mtu: u16) -> IcmpError {
        IcmpError {
            ty: ICMP_DEST_UNREACHABLE,
            code: CODE_FRAG_NEEDED,
            mtu,
        }
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A token bucket counted in nano-tokens so integer arithmetic refills it
/// exactly: `rate` tokens per second is `rate` nano-tokens per nanosecond.
#[derive(Clone, Debug)]
struct TokenBucket {
    nano_tokens: u64,
    capacity: u64,
    rate_per_sec: u64,
    last_ns: u64,
}

impl TokenBucket {
    /// Starts full.
    fn new(rate_per_sec: u32, burst: u32) -> Self {
        let capacity = u64::from(burst) * NANOS_PER_SEC;
        TokenBucket {
            nano_tokens: capacity,
            capacity,
            rate_per_sec: u64::from(rate_per_sec),
            last_ns: 0,
        }
    }

    /// Refills for the time since the last call and takes one token if
    /// there is one. Time going backwards refills nothing.
    fn take(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.nano_tokens = self
            .nano_tokens
            .saturating_add(elapsed.saturating_mul(self.rate_per_sec))
            .min(self.capacity);
        if self.nano_tokens >= NANOS_PER_SEC {
            self.nano_tokens -= NANOS_PER_SEC;
            true
        } else {
            false
        }
    }
}

/// One worker's pipeline: configuration plus the little state frames share
/// (ICMP rate limiter, IP identification counter).
pub struct Pipeline {
    cfg: PipelineConfig,
    icmp_bucket: TokenBucket,
    /// Identification of the last IPv4 packet this pipeline originated.
    ip_ident: u16,
}

/// Copies 6 bytes at `at` out as a MAC (callers have checked the length).
#[inline]
fn mac_at(b: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    m
}

/// Copies 4 bytes out as an IPv4 address (callers have checked the length).
#[inline]
fn ipv4_at(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Source addresses no packet may carry: 0.0.0.0/8 ("this network"),
/// 127.0.0.0/8 (loopback), 224.0.0.0/4 (multicast), 255.255.255.255.
fn is_bad_source(a: Ipv4Addr) -> bool {
    a.octets()[0] == 0 || a.is_loopback() || a.is_multicast() || a.is_broadcast()
}

/// The Ethernet destination for frames out of a port of this role (the
/// uplink's depends on the node: see [`tunnel_mac`]).
fn role_mac(role: &PortRole) -> [u8; 6] {
    match *role {
        PortRole::Pod { mac, .. } | PortRole::Host { mac } => mac,
        PortRole::Uplink { .. } => [0; 6],
    }
}

/// The host port as the egress for a frame from `ingress`.
fn host_egress<'t>(
    ctx: &BatchContext<'t>,
    ingress: PortId,
    ingress_is_host: bool,
) -> Result<(PortId, &'t PortEntry), DropReason> {
    let host = ctx.ports.host_port().ok_or(DropReason::NoPort)?;
    if ingress_is_host || host == ingress {
        return Err(DropReason::Hairpin);
    }
    Ok((host, ctx.ports.get(host).ok_or(DropReason::NoPort)?))
}

/// The egress for a frame to a block owned by `node`: the uplink (with
/// the node as tunnel endpoint) when the uplink's policy encapsulates for
/// it, else the host port, whose kernel routes it to the node directly.
fn node_egress<'t>(
    ctx: &BatchContext<'t>,
    ingress: PortId,
    ingress_is_host: bool,
    node: Ipv4Addr,
) -> Result<(PortId, &'t PortEntry, Option<Ipv4Addr>), DropReason> {
    let id = ctx.ports.uplink_port().ok_or(DropReason::NoUplink)?;
    let entry = ctx.ports.get(id).ok_or(DropReason::NoUplink)?;
    let PortRole::Uplink { policy, .. } = entry.info.role else {
        return Err(DropReason::NoUplink);
    };
    if policy.encap_to(node) {
        if id == ingress {
            return Err(DropReason::Hairpin);
        }
        Ok((id, entry, Some(node)))
    } else {
        let (id, entry) = host_egress(ctx, ingress, ingress_is_host)?;
        Ok((id, entry, None))
    }
}

const FLOW_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// Mixes 64 bits into 64 (a folded 64x64->128 multiply).
#[inline]
fn mix(x: u64) -> u64 {
    let p = u128::from(x) * u128::from(FLOW_MUL);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The flow hash that picks an ECMP member for the IPv4 packet `ip` (a
/// validated header; the slice ends where the packet does): source,
/// destination and protocol, plus the ports for TCP, UDP, UDP-Lite and
/// SCTP or the identifier of an ICMP echo. Fragments and packets too short
/// for their L4 fields hash without them. Reads nothing beyond `ip`.
#[inline]
pub fn flow_hash(ip: &[u8]) -> u32 {
    if ip.len() < IPV4_HEADER_LEN {
        return 0;
    }
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let proto = ip[9];
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = if fragment {
        0
    } else {
        match proto {
            6 | 17 | 132 | 136 => ip
                .get(hl..hl + 4)
                .map_or(0, |p| u32::from_be_bytes([p[0], p[1], p[2], p[3]])),
            1 => match ip.get(hl..hl + 6) {
                Some(p) if p[0] == 0 || p[0] == 8 => u32::from(u16::from_be_bytes([p[4], p[5]])),
                _ => 0,
            },
            _ => 0,
        }
    };
    flow_hash_of(src, dst, proto, l4)
}

#[inline]
fn flow_hash_of(src: u32, dst: u32, proto: u8, l4: u32) -> u32 {
    let h = mix(
        mix((u64::from(src) << 32) | u64::from(dst)) ^ (u64::from(proto) << 32 | u64::from(l4))
    );
    (h >> 32) as u32
}

/// The index in a group of `n` members for flow hash `hash`.
#[inline]
fn member_index(hash: u32, n: usize) -> usize {
    ((u64::from(hash) * n as u64) >> 32) as usize
}

/// The member of group `g` a flow with `hash` takes; `None` if the
/// snapshot has no such group. From the host port (`ingress_is_host`),
/// the first member at or after that one which the uplink encapsulates
/// for, if any (the node's kernel reaches the others directly).
fn group_member(
    ctx: &BatchContext<'_>,
    g: GroupId,
    hash: u32,
    ingress_is_host: bool,
) -> Option<Ipv4Addr> {
    let members = ctx.fib.group(g);
    if members.is_empty() {
        return None;
    }
    let n = members.len();
    let start = member_index(hash, n);
    if ingress_is_host {
        let policy = ctx
            .ports
            .uplink_port()
            .and_then(|id| ctx.ports.get(id))
            .and_then(|e| match e.info.role {
                PortRole::Uplink { policy, .. } => Some(policy),
                _ => None,
            });
        if let Some(policy) = policy {
            if let Some(i) = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| policy.encap_to(members[i]))
            {
                return Some(members[i]);
            }
        }
    }
    Some(members[start])
}

/// Where a packet the router originates for `dst` goes (for ICMP errors
/// about packets from the uplink): the port and the Ethernet destination,
/// by the FIB, as [`node_egress`] would route it; `None` if nowhere.
fn route_back(ctx: &BatchContext<'_>, src: Ipv4Addr, dst: Ipv4Addr) -> Option<(PortId, [u8; 6])> {
    let via_host = || {
        let host = ctx.ports.host_port()?;
        Some((host, role_mac(&ctx.ports.get(host)?.info.role)))
    };
    let nh = match ctx.fib.lookup(dst)? {
        NextHop::Nodes(g) => {
            let hash = flow_hash_of(u32::from(src), u32::from(dst), 1, 0);
            NextHop::Node(group_member(ctx, g, hash, false)?)
        }
        nh => nh,
    };
    match nh {
        NextHop::Local(port) => Some((port, role_mac(&ctx.ports.get(port)?.info.role))),
        NextHop::Host => via_host(),
        NextHop::Nodes(_) => None,
        NextHop::Node(node) => {
            let id = ctx.ports.uplink_port()?;
            match ctx.ports.get(id)?.info.role {
                PortRole::Uplink { policy, .. } if policy.encap_to(node) => {
                    Some((id, tunnel_mac(node)))
                }
                PortRole::Uplink { .. } => via_host(),
                _ => None,
            }
        }
        NextHop::Unreachable => None,
    }
}

/// Checks and strips the outer header of an IPIP frame from the uplink
/// (which answers for `local`): protocol 4, no fragment, addressed to us,
/// from a known node (a `via` of the current FIB), with a valid inner
/// IPv4 header.
fn decapsulate(
    ctx: &BatchContext<'_>,
    local: Ipv4Addr,
    frame: &mut Frame,
) -> Result<(), DropReason> {
    let data = frame.data();
    if data.len() < ETHERNET_HEADER_LEN {
        return Err(DropReason::IpipMalformed);
    }
    let outer =
        wire::check_ipv4(&data[ETHERNET_HEADER_LEN..]).map_err(|_| DropReason::IpipMalformed)?;
    if outer.next_header() != IpProtocol::from(IPPROTO_IPIP)
        || outer.more_frags()
        || outer.frag_offset() != 0
    {
        return Err(DropReason::IpipMalformed);
    }
    if outer.dst_addr() != local {
        return Err(DropReason::IpipNotForNode);
    }
    if !ctx.fib.is_node(outer.src_addr()) {
        return Err(DropReason::IpipUnknownNode);
    }
    wire::ipip_decap(frame).map_err(|_| DropReason::IpipMalformed)?;
    wire::check_ipv4(&frame.data()[ETHERNET_HEADER_LEN..])
        .map_err(|_| DropReason::IpipMalformed)?;
    Ok(())
}

/// IP + TCP headers plus `gso_size`: the largest packet a TCP GSO frame
/// is cut into; `None` if the frame is not TCP/IPv4 GSO the uplink can
/// segment.
fn tcp_segment_len(frame: &Frame) -> Option<usize> {
    if frame.vnet.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_TCPV4 {
        return None;
    }
    let ip = frame.data().get(ETHERNET_HEADER_LEN..)?;
    let segs = TcpSegments::new(ip, usize::from(frame.vnet.gso_size)).ok()?;
    Some(segs.header_len() + usize::from(frame.vnet.gso_size))
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Pipeline {
        Pipeline {
            icmp_bucket: TokenBucket::new(cfg.icmp_rate_per_sec, cfg.icmp_burst),
            cfg,
            ip_ident: 0,
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The next IPv4 identification for a packet this pipeline originates.
    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    /// Classifies and rewrites one frame received on `ingress`.
    pub fn process(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        frame: &mut Frame,
    ) -> Verdict {
        let Some(entry) = ctx.ports.get(ingress) else {
            return Verdict::Drop(DropReason::NoPort);
        };
        let role = entry.info.role;
        let data = frame.data();
        if data.len() < ETHERNET_HEADER_LEN {
            return Verdict::Drop(DropReason::Truncated);
        }
        let dst_mac = mac_at(data, 0);
        let eth_broadcast = dst_mac == BROADCAST_MAC;
        if dst_mac != self.cfg.router_mac && !eth_broadcast {
            return Verdict::Drop(if dst_mac[0] & MAC_GROUP_BIT != 0 {
                DropReason::Multicast
            } else {
                DropReason::NotForRouter
            });
        }
        match u16::from_be_bytes([data[12], data[13]]) {
            ETHERTYPE_ARP => self.arp(ctx, ingress, &role, frame),
            ETHERTYPE_IPV4 => self.ipv4(ctx, ingress, &role, eth_broadcast, frame),
            _ => Verdict::Drop(DropReason::UnsupportedEthertype),
        }
    }

    /// Proxy ARP: answers requests in place with the router's MAC.
    fn arp(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        role: &PortRole,
        frame: &mut Frame,
    ) -> Verdict {
        let data = frame.data();
        let Ok(arp) = ArpPacket::new_checked(&data[ETHERNET_HEADER_LEN..]) else {
            return Verdict::Drop(DropReason::ArpMalformed);
        };
        if arp.hardware_type() != ArpHardware::Ethernet
            || arp.protocol_type() != EthernetProtocol::Ipv4
            || arp.hardware_len() != 6
            || arp.protocol_len() != 4
        {
            return Verdict::Drop(DropReason::ArpMalformed);
        }
        if arp.operation() != ArpOperation::Request {
            return Verdict::Drop(DropReason::ArpNotRequest);
        }
        let requester_mac = mac_at(arp.source_hardware_addr(), 0);
        let sender_ip = ipv4_at(arp.source_protocol_addr());
        let target_ip = ipv4_at(arp.target_protocol_addr());
        if sender_ip.is_unspecified() || target_ip == sender_ip {
            return Verdict::Drop(DropReason::ArpGratuitous);
        }
        match *role {
            // Proxy ARP for everything: the pod's only neighbour is us.
            PortRole::Pod { ip, .. } => {
                if sender_ip != ip {
                    return Verdict::Drop(DropReason::ArpWrongSource);
                }
            }
            // The host asks only for what we route away from it.
            PortRole::Host { .. } => match ctx.fib.lookup(target_ip) {
                None | Some(NextHop::Host) => {
                    return Verdict::Drop(DropReason::ArpNotAnswered);
                }
                Some(
                    NextHop::Local(_) | NextHop::Node(_) | NextHop::Nodes(_) | NextHop::Unreachable,
                ) => {}
            },
            // The uplink has no ARP (its frames are always IPv4).
            PortRole::Uplink { .. } => return Verdict::Drop(DropReason::ArpNotAnswered),
        }

        // Drop any Ethernet padding: the reply is exactly one ARP packet.
        frame.set_len(ETHERNET_HEADER_LEN + ARP_IPV4_LEN);
        let d = frame.data_mut();
        d[0..6].copy_from_slice(&requester_mac);
        d[6..12].copy_from_slice(&self.cfg.router_mac);
        let mut reply = ArpPacket::new_unchecked(&mut d[ETHERNET_HEADER_LEN..]);
        reply.set_operation(ArpOperation::Reply);
        reply.set_source_hardware_addr(&self.cfg.router_mac);
        reply.set_source_protocol_addr(&target_ip.octets());
        reply.set_target_hardware_addr(&requester_mac);
        reply.set_target_protocol_addr(&sender_ip.octets());
        frame.vnet = VnetHdr::default();
        ctx.counters.arp_replies.incr();
        Verdict::Forward(ingress)
    }

    /// IPv4: validate (and decapsulate, from the uplink), check the
    /// source, route, rewrite.
    fn ipv4(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        role: &PortRole,
        eth_broadcast: bool,
        frame: &mut Frame,
    ) -> Verdict {
        let from_uplink = matches!(role, PortRole::Uplink { .. });
        if let PortRole::Uplink { local, .. } = *role {
            if let Err(reason) = decapsulate(ctx, local, frame) {
                return Verdict::Drop(reason);
            }
        }
        let ip = match wire::check_ipv4(&frame.data()[ETHERNET_HEADER_LEN..]) {
            Ok(ip) => ip,
            Err(e) => return Verdict::Drop(e.drop_reason()),
        };
        let total_len = usize::from(ip.total_len());
        let src = ip.src_addr();
        let dst = ip.dst_addr();
        let ttl = ip.hop_limit();
        let dont_frag = ip.dont_frag();
        // Strip Ethernet padding: the frame ends where the packet does.
        frame.set_len(ETHERNET_HEADER_LEN + total_len);

        if is_bad_source(src) {
            return Verdict::Drop(DropReason::BadSource);
        }
        if dst.is_multicast() || dst.is_broadcast() || eth_broadcast {
            return Verdict::Drop(DropReason::Multicast);
        }
        let ingress_is_host = match *role {
            PortRole::Pod { ip, .. } => {
                // Anti-spoofing (Calico's RPF check): a pod sends as itself.
                if src != ip {
                    return Verdict::Drop(DropReason::SpoofedSource);
                }
                false
            }
            PortRole::Host { .. } => true,
            // Another node's router: a hop like a pod's.
            PortRole::Uplink { .. } => false,
        };

        let mut next_hop = ctx.fib.lookup(dst);
        if let Some(NextHop::Nodes(g)) = next_hop {
            let ip_bytes = &frame.data()[ETHERNET_HEADER_LEN..];
            // An empty group (not of this snapshot) routes nowhere.
            next_hop =
                group_member(ctx, g, flow_hash(ip_bytes), ingress_is_host).map(NextHop::Node);
        }
        // Replies of flows the node's kernel NATed go back through it.
        let steered = crate::host_nat::to_host(
            ctx,
            ingress_is_host,
            next_hop,
            &frame.data()[ETHERNET_HEADER_LEN..],
        );
        if steered {
            next_hop = Some(NextHop::Host);
        }
        // What came through the tunnel goes to a local pod or nowhere (or,
        // steered, to the node): the router is not a transit for other
        // nodes (Calico's IPIP neither).
        if from_uplink && !steered && !matches!(next_hop, Some(NextHop::Local(_))) {
            return match next_hop {
                Some(NextHop::Unreachable) => self.icmp_error(
                    ctx,
                    ingress,
                    frame,
                    IcmpError::HOST_UNREACHABLE,
                    DropReason::IpipNotLocal,
                ),
                _ => Verdict::Drop(DropReason::IpipNotLocal),
            };
        }
        // `tunnel`: the node an uplink-bound frame is for.
        let (egress, egress_entry, tunnel) = match next_hop {
            None => {
                return self.icmp_error(
                    ctx,
                    ingress,
                    frame,
                    IcmpError::NET_UNREACHABLE,
                    DropReason::NoRoute,
                )
            }
            Some(NextHop::Unreachable) => {
                return self.icmp_error(
                    ctx,
                    ingress,
                    frame,
                    IcmpError::HOST_UNREACHABLE,
                    DropReason::NoRoute,
                )
            }
            Some(NextHop::Local(port)) => {
                if port == ingress {
                    return Verdict::Drop(DropReason::Hairpin);
                }
                match ctx.ports.get(port) {
                    Some(e) => (port, e, None),
                    None => return Verdict::Drop(DropReason::NoPort),
                }
            }
            Some(NextHop::Host) => match host_egress(ctx, ingress, ingress_is_host) {
                Ok((id, e)) => (id, e, None),
                Err(reason) => return Verdict::Drop(reason),
            },
            Some(NextHop::Node(node)) => match node_egress(ctx, ingress, ingress_is_host, node) {
                Ok(x) => x,
                Err(reason) => return Verdict::Drop(reason),
            },
            // Resolved to one member above.
            Some(NextHop::Nodes(_)) => return Verdict::Drop(DropReason::NoRoute),
        };
        // Network policy: tracked flows pass, new ones meet the rules.
        if let Err(reason) = crate::policy_stage::admit(ctx, &frame.data()[ETHERNET_HEADER_LEN..]) {
            return Verdict::Drop(reason);
        }
        let egress_is_host = matches!(egress_entry.info.role, PortRole::Host { .. });

        // The node's kernel and the router are one hop together (as in
        // Calico): only traffic between pods (here or on other nodes) loses
        // a TTL here.
        let decrement = !ingress_is_host && !egress_is_host;
        if decrement && ttl <= 1 {
            return self.icmp_error(
                ctx,
                ingress,
                frame,
                IcmpError::TTL_EXCEEDED,
                DropReason::TtlExceeded,
            );
        }

        let mtu = egress_entry.info.mtu;
        if tunnel.is_some() {
            // The uplink cuts GSO frames at gso_size and fragments what
            // has no DF; what has DF must fit as it is (per segment).
            let too_big = if frame.vnet.is_gso() {
                match tcp_segment_len(frame) {
                    Some(seg) => seg > usize::from(mtu),
                    None => return Verdict::Drop(DropReason::GsoUnsupported),
                }
            } else {
                total_len > usize::from(mtu)
            };
            if too_big && dont_frag {
                return self.icmp_error(
                    ctx,
                    ingress,
                    frame,
                    IcmpError::frag_needed(mtu),
                    DropReason::FragNeeded,
                );
            }
        } else if !frame.vnet.is_gso() && total_len > usize::from(mtu) {
            // GSO super-segments are cut at gso_size by the receiving stack.
            return if dont_frag {
                self.icmp_error(
                    ctx,
                    ingress,
                    frame,
                    IcmpError::frag_needed(mtu),
                    DropReason::FragNeeded,
                )
            } else {
                Verdict::Drop(DropReason::TooBig)
            };
        }

        let d = frame.data_mut();
        match tunnel {
            Some(node) => d[0..6].copy_from_slice(&tunnel_mac(node)),
            None => d[0..6].copy_from_slice(&role_mac(&egress_entry.info.role)),
        }
        d[6..12].copy_from_slice(&self.cfg.router_mac);
        if decrement {
            // TTL >= 2 was checked above, so this cannot refuse.
            wire::decrement_ttl(&mut d[ETHERNET_HEADER_LEN..]);
        }
        Verdict::Forward(egress)
    }

    /// Turns the frame (a validated Ethernet + IPv4 packet, padding
    /// stripped, source checked) into an ICMP error back to its sender, in
    /// place, or returns `Drop(reason)` when no error may be sent.
    fn icmp_error(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        frame: &mut Frame,
        err: IcmpError,
        reason: DropReason,
    ) -> Verdict {
        let data = frame.data();
        let orig = Ipv4Packet::new_unchecked(&data[ETHERNET_HEADER_LEN..]);
        let hl = usize::from(orig.header_len());
        // Only the first fragment carries the headers the sender can match.
        if orig.frag_offset() != 0 {
            return Verdict::Drop(reason);
        }
        // Never an error about an error (nor about an ICMP packet too short
        // to tell).
        if orig.next_header() == IpProtocol::Icmp {
            match data.get(ETHERNET_HEADER_LEN + hl) {
                Some(&t) if !is_icmp_error_type(t) => {}
                _ => return Verdict::Drop(reason),
            }
        }
        if is_bad_source(orig.src_addr()) {
            return Verdict::Drop(reason);
        }
        let orig_src = orig.src_addr();
        // An error about a packet from another node goes back the way the
        // router would route any packet to its source (through the tunnel,
        // normally); anything else goes back out of the port it came in on.
        let from_uplink = matches!(
            ctx.ports.get(ingress).map(|e| e.info.role),
            Some(PortRole::Uplink { .. })
        );
        let (out, out_mac) = if from_uplink {
            match route_back(ctx, self.cfg.node_ip, orig_src) {
                Some(r) => r,
                None => return Verdict::Drop(reason),
            }
        } else {
            (ingress, mac_at(data, 6))
        };
        if !self.icmp_bucket.take(ctx.now_ns) {
            ctx.counters.icmp_rate_limited.incr();
            return Verdict::Drop(reason);
        }

        const ICMP_OFF: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
        const QUOTE_OFF: usize = ICMP_OFF + ICMPV4_HEADER_LEN;
        // As much of the original as fits in 576 bytes; that is always at
        // least its header (<= 60 bytes) plus 8 bytes of payload.
        let quote_len = (data.len() - ETHERNET_HEADER_LEN)
            .min(MAX_ICMP_ERROR_LEN - IPV4_HEADER_LEN - ICMPV4_HEADER_LEN);
        let new_len = QUOTE_OFF + quote_len;
        // Grow first (short originals) so the overlapping copy fits; the
        // frame can always take 576 bytes + Ethernet.
        if new_len > frame.len() && !frame.resize(new_len) {
            return Verdict::Drop(reason);
        }
        frame.data_mut().copy_within(
            ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + quote_len,
            QUOTE_OFF,
        );
        frame.resize(new_len);
        let ident = self.next_ident();

        let d = frame.data_mut();
        d[0..6].copy_from_slice(&out_mac);
        d[6..12].copy_from_slice(&self.cfg.router_mac);
        d[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

        let mut ip = Ipv4Packet::new_unchecked(&mut d[ETHERNET_HEADER_LEN..ICMP_OFF]);
        ip.set_version(4);
        ip.set_header_len(IPV4_HEADER_LEN as u8);
        ip.set_dscp(0);
        ip.set_ecn(0);
        ip.set_total_len((new_len - ETHERNET_HEADER_LEN) as u16);
        ip.set_ident(ident);
        ip.clear_flags();
        ip.set_frag_offset(0);
        ip.set_hop_limit(DEFAULT_TTL);
        ip.set_next_header(IpProtocol::Icmp);
        ip.set_src_addr(self.cfg.node_ip);
        ip.set_dst_addr(orig_src);
        ip.fill_checksum();

        let icmp = &mut d[ICMP_OFF..];
        icmp[0] = err.ty;
        icmp[1] = err.code;
        icmp[2..6].fill(0);
        icmp[6..8].copy_from_slice(&err.mtu.to_be_bytes());
        Icmpv4Packet::new_unchecked(icmp).fill_checksum();

        frame.vnet = VnetHdr::default();
        ctx.counters.drop(reason);
        ctx.counters.icmp_sent.incr();
        Verdict::Forward(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::{Fib, FibChange, Prefix};
    use crate::port::{MemPort, PortEntry, PortInfo};
    use crate::uplink::{EncapMode, EncapPolicy};
    use crate::wire::{check_ipv4, Icmpv4DstUnreachable, Icmpv4Repr, Icmpv4TimeExceeded};
    use rand::{Rng, SeedableRng};
    use smoltcp::phy::ChecksumCapabilities;
    use std::sync::Arc;

    const ROUTER_MAC: [u8; 6] = crate::ROUTER_MAC;
    const POD_A: PortId = PortId(0);
    const POD_B: PortId = PortId(1);
    const HOST: PortId = PortId(2);
    /// A pod behind a small MTU (1000).
    const POD_C: PortId = PortId(3);
    const MISSING: PortId = PortId(7);
    const A_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
    const C_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
    /// Routed to a port that no longer exists.
    const STALE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 9);
    /// In our block, unassigned: NextHop::Unreachable.
    const UNASSIGNED_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 77);
    /// Another node's pod.
    const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
    const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
    const OTHER_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 11);
    const HOSTNET_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
    /// Nothing routes it (the test FIB has no default route).
    const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
    const GW: Ipv4Addr = crate::GATEWAY_IP;
    const A_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x02];
    const B_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x03];
    const C_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x04];
    const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
    const DF: u16 = 0x4000;
    const MF: u16 = 0x2000;

    fn cfg(rate: u32, burst: u32) -> PipelineConfig {
        PipelineConfig {
            router_mac: ROUTER_MAC,
            gateway_ip: GW,
            node_ip: NODE_IP,
            icmp_rate_per_sec: rate,
            icmp_burst: burst,
        }
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

    fn prefix(a: Ipv4Addr, len: u8) -> Prefix {
        Prefix::new(a, len).unwrap()
    }

    struct Env {
        ports: PortTable,
        fib: Fib,
        counters: WorkerCounters,
        flows: FlowTable,
        policy: crate::policy::PolicyTable,
        pipeline: Pipeline,
        now_ns: u64,
    }

    impl Env {
        fn new() -> Env {
            Env::with_cfg(cfg(1000, 100))
        }

        fn with_cfg(cfg: PipelineConfig) -> Env {
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
                pipeline: Pipeline::new(cfg),
                now_ns: 1_000_000_000,
            }
        }

        fn process(&mut self, ingress: PortId, frame: &mut Frame) -> Verdict {
            let table = self.fib.load();
            let ctx = BatchContext {
                fib: &table,
                ports: &self.ports,
                counters: &self.counters,
                flows: &self.flows,
                policy: &self.policy,
                now_ns: self.now_ns,
            };
            self.pipeline.process(&ctx, ingress, frame)
        }

        fn run(&mut self, ingress: PortId, bytes: &[u8]) -> (Verdict, Frame) {
            let mut f = Frame::from_bytes(bytes);
            let v = self.process(ingress, &mut f);
            (v, f)
        }
    }

    /// An IPv4 packet with identification 0x4242 and a valid checksum.
    fn ipv4(
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
    fn udp(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| i as u8).collect();
        v[0..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        v[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        v[6..8].fill(0);
        v
    }

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(14 + payload.len());
        v.extend_from_slice(&dst);
        v.extend_from_slice(&src);
        v.extend_from_slice(&ethertype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// A UDP packet of `ip_len` bytes of IP from pod A (its MAC, to the
    /// router's MAC).
    fn from_a(dst: Ipv4Addr, ttl: u8, flags: u16, ip_len: usize) -> Vec<u8> {
        let ip = ipv4(A_IP, dst, 17, ttl, flags, &[], &udp(ip_len - 20));
        eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip)
    }

    fn from_host(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
        let ip = ipv4(src, dst, 17, ttl, DF, &[], &udp(40));
        eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &ip)
    }

    fn arp(eth_dst: [u8; 6], op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
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
    fn assert_icmp_error(
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

    fn ip_part(frame_bytes: &[u8]) -> &[u8] {
        &frame_bytes[14..]
    }

    #[test]
    fn pod_to_pod_forwards_with_rewritten_macs_and_ttl() {
        let mut env = Env::new();
        let input = from_a(B_IP, 64, DF, 100);
        let mut f = Frame::from_bytes(&input);
        let vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        f.vnet = vnet;
        assert_eq!(env.process(POD_A, &mut f), Verdict::Forward(POD_B));
        let d = f.data();
        assert_eq!(&d[0..6], &B_MAC);
        assert_eq!(&d[6..12], &ROUTER_MAC);
        let ip = check_ipv4(&d[14..]).expect("checksum still valid");
        assert_eq!(ip.hop_limit(), 63);
        // Only TTL and checksum changed.
        let (a, b) = (&input[14..], &d[14..]);
        assert_eq!(a.len(), b.len());
        for i in (0..a.len()).filter(|i| !matches!(i, 8 | 10 | 11)) {
            assert_eq!(a[i], b[i], "byte {i}");
        }
        assert_eq!(f.vnet, vnet, "offload metadata kept");
        assert_eq!(env.counters.icmp_sent.get(), 0);
    }

    #[test]
    fn pod_to_host_keeps_ttl() {
        let mut env = Env::new();
        let input = from_a(NODE_IP, 64, DF, 60);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, Verdict::Forward(HOST));
        assert_eq!(&f.data()[0..6], &HOST_MAC);
        assert_eq!(&f.data()[6..12], &ROUTER_MAC);
        assert_eq!(&f.data()[14..], ip_part(&input), "IP packet untouched");
        // Service range goes to the host as well; TTL 1 is no obstacle.
        let (v, f) = env.run(POD_A, &from_a(Ipv4Addr::new(10, 96, 0, 10), 1, DF, 60));
        assert_eq!(v, Verdict::Forward(HOST));
        assert_eq!(f.data()[14 + 8], 1);
    }

    #[test]
    fn host_to_pod_keeps_ttl_and_any_source() {
        let mut env = Env::new();
        for src in [NODE_IP, INTERNET_IP] {
            let input = from_host(src, A_IP, 1);
            let (v, f) = env.run(HOST, &input);
            assert_eq!(v, Verdict::Forward(POD_A));
            assert_eq!(&f.data()[0..6], &A_MAC);
            assert_eq!(&f.data()[6..12], &ROUTER_MAC);
            assert_eq!(&f.data()[14..], ip_part(&input));
        }
    }

    /// The pod asks for its gateway: the exact reply.
    const GW_ARP_REPLY: [u8; 42] = [
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

    #[test]
    fn proxy_arp_for_gateway_exact_reply() {
        let mut env = Env::new();
        let mut req = arp([0xff; 6], 1, A_MAC, A_IP, GW);
        req.resize(60, 0x5a); // minimum-size frame with padding
        let mut f = Frame::from_bytes(&req);
        f.vnet.gso_type = VnetHdr::GSO_UDP;
        assert_eq!(env.process(POD_A, &mut f), Verdict::Forward(POD_A));
        assert_eq!(f.data(), &GW_ARP_REPLY);
        assert_eq!(f.vnet, VnetHdr::default());
        assert_eq!(env.counters.arp_replies.get(), 1);
    }

    #[test]
    fn proxy_arp_for_any_address_exact_reply() {
        let mut env = Env::new();
        // Unicast refresh (to the router's MAC) for another pod's address
        // and for something off the node.
        for (target, n) in [(B_IP, 1), (INTERNET_IP, 2)] {
            let (v, f) = env.run(POD_A, &arp(ROUTER_MAC, 1, A_MAC, A_IP, target));
            assert_eq!(v, Verdict::Forward(POD_A));
            let mut want = GW_ARP_REPLY;
            want[28..32].copy_from_slice(&target.octets());
            assert_eq!(f.data(), &want);
            assert_eq!(env.counters.arp_replies.get(), n);
        }
    }

    #[test]
    fn arp_that_is_not_answered() {
        let mut env = Env::new();
        let cases = [
            // Pod A claiming B's address.
            (
                POD_A,
                arp([0xff; 6], 1, A_MAC, B_IP, GW),
                DropReason::ArpWrongSource,
            ),
            // Gratuitous: target == sender.
            (
                POD_A,
                arp([0xff; 6], 1, A_MAC, A_IP, A_IP),
                DropReason::ArpGratuitous,
            ),
            // Probe: sender 0.0.0.0.
            (
                POD_A,
                arp([0xff; 6], 1, A_MAC, Ipv4Addr::UNSPECIFIED, A_IP),
                DropReason::ArpGratuitous,
            ),
            // A reply.
            (
                POD_A,
                arp(ROUTER_MAC, 2, A_MAC, A_IP, GW),
                DropReason::ArpNotRequest,
            ),
            // Host port: the host's own network and unrouted addresses.
            (
                HOST,
                arp([0xff; 6], 1, HOST_MAC, NODE_IP, HOSTNET_IP),
                DropReason::ArpNotAnswered,
            ),
            (
                HOST,
                arp([0xff; 6], 1, HOST_MAC, NODE_IP, INTERNET_IP),
                DropReason::ArpNotAnswered,
            ),
        ];
        for (port, bytes, reason) in cases {
            let (v, f) = env.run(port, &bytes);
            assert_eq!(v, Verdict::Drop(reason), "{bytes:02x?}");
            assert_eq!(f.data(), &bytes[..], "dropped frames are not rewritten");
        }
        assert_eq!(env.counters.arp_replies.get(), 0);
    }

    #[test]
    fn malformed_arp() {
        let mut env = Env::new();
        let good = arp([0xff; 6], 1, A_MAC, A_IP, GW);
        let mut cases = vec![good[..41].to_vec(), good[..14].to_vec()];
        for (i, val) in [(15, 6u8), (17, 0xdd), (18, 8), (19, 16)] {
            let mut b = good.clone();
            b[i] = val; // hw type 6, proto 0x08dd, hlen 8, plen 16
            cases.push(b);
        }
        for b in cases {
            assert_eq!(
                env.run(POD_A, &b).0,
                Verdict::Drop(DropReason::ArpMalformed),
                "{b:02x?}"
            );
        }
    }

    #[test]
    fn host_port_arp_for_routed_addresses() {
        let mut env = Env::new();
        for target in [A_IP, REMOTE_IP, UNASSIGNED_IP] {
            let (v, f) = env.run(HOST, &arp([0xff; 6], 1, HOST_MAC, NODE_IP, target));
            assert_eq!(v, Verdict::Forward(HOST), "{target}");
            let d = f.data();
            assert_eq!(&d[0..6], &HOST_MAC);
            assert_eq!(&d[6..12], &ROUTER_MAC);
            assert_eq!(&d[20..22], &[0, 2]);
            assert_eq!(&d[22..28], &ROUTER_MAC);
            assert_eq!(&d[28..32], &target.octets());
            assert_eq!(&d[32..38], &HOST_MAC);
            assert_eq!(&d[38..42], &NODE_IP.octets());
        }
        assert_eq!(env.counters.arp_replies.get(), 3);
    }

    #[test]
    fn spoofed_source_is_dropped() {
        let mut env = Env::new();
        let ip = ipv4(B_IP, C_IP, 17, 64, DF, &[], &udp(20));
        let (v, _) = env.run(POD_A, &eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
        assert_eq!(v, Verdict::Drop(DropReason::SpoofedSource));
    }

    #[test]
    fn bad_sources_are_dropped() {
        let mut env = Env::new();
        for src in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(0, 1, 2, 3),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::BROADCAST,
        ] {
            let (v, _) = env.run(HOST, &from_host(src, A_IP, 64));
            assert_eq!(v, Verdict::Drop(DropReason::BadSource), "{src}");
            // And no ICMP error even when there is no route.
            let (v, _) = env.run(HOST, &from_host(src, INTERNET_IP, 64));
            assert_eq!(v, Verdict::Drop(DropReason::BadSource), "{src}");
        }
        assert_eq!(env.counters.icmp_sent.get(), 0);
    }

    #[test]
    fn truncated_frames() {
        let mut env = Env::new();
        let full = from_a(B_IP, 64, DF, 60);
        for len in [0, 13, 20, 33] {
            assert_eq!(
                env.run(POD_A, &full[..len]).0,
                Verdict::Drop(DropReason::Truncated),
                "len {len}"
            );
        }
        // 14 bytes: Ethernet header only, IPv4 ethertype.
        assert_eq!(
            env.run(POD_A, &full[..14]).0,
            Verdict::Drop(DropReason::Truncated)
        );
    }

    fn with_ip_byte(frame: &[u8], i: usize, val: u8, fix_checksum: bool) -> Vec<u8> {
        let mut b = frame.to_vec();
        b[14 + i] = val;
        if fix_checksum {
            let hl = usize::from(b[14] & 0xf) * 4;
            let end = (14 + hl.max(20)).min(b.len());
            Ipv4Packet::new_unchecked(&mut b[14..end]).fill_checksum();
        }
        b
    }

    #[test]
    fn bad_ip_headers() {
        let mut env = Env::new();
        let good = from_a(B_IP, 64, DF, 60);
        let cases = [
            (with_ip_byte(&good, 0, 0x44, true), DropReason::BadIpHeader), // IHL 4
            (with_ip_byte(&good, 0, 0x40, false), DropReason::BadIpHeader), // IHL 0
            (with_ip_byte(&good, 0, 0x65, true), DropReason::BadIpHeader), // version 6
            (with_ip_byte(&good, 3, 19, true), DropReason::BadIpHeader),   // total < header
            (with_ip_byte(&good, 3, 61, true), DropReason::BadIpHeader),   // total > frame
            (with_ip_byte(&good, 2, 1, true), DropReason::BadIpHeader),    // 316 > frame
            (
                with_ip_byte(&good, 11, good[25] ^ 0x40, false),
                DropReason::BadIpChecksum,
            ),
            (with_ip_byte(&good, 8, 63, false), DropReason::BadIpChecksum),
        ];
        for (b, reason) in cases {
            assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(reason), "{b:02x?}");
        }
        // IHL beyond total length.
        let b = with_ip_byte(&good, 0, 0x4f, false);
        let b = with_ip_byte(&b, 3, 40, false);
        assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(DropReason::BadIpHeader));
    }

    #[test]
    fn ip_options_are_forwarded_intact() {
        let mut env = Env::new();
        // Record route (7, len 7, ptr 4) + 4 bytes of slots + EOL: 8 bytes.
        let opts = [7, 7, 4, 0, 0, 0, 0, 0];
        let ip = ipv4(A_IP, B_IP, 17, 64, DF, &opts, &udp(30));
        let (v, f) = env.run(POD_A, &eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
        assert_eq!(v, Verdict::Forward(POD_B));
        let out = check_ipv4(&f.data()[14..]).unwrap();
        assert_eq!(out.header_len(), 28);
        assert_eq!(out.hop_limit(), 63);
        assert_eq!(&f.data()[14 + 20..14 + 28], &opts);
        assert_eq!(&f.data()[14 + 28..], &ip[28..]);
    }

    #[test]
    fn fragments_are_forwarded() {
        let mut env = Env::new();
        for flags in [MF, MF | 185, 370, DF] {
            let input = from_a(B_IP, 64, flags, 100);
            let (v, f) = env.run(POD_A, &input);
            assert_eq!(v, Verdict::Forward(POD_B), "flags {flags:#x}");
            let out = check_ipv4(&f.data()[14..]).unwrap();
            assert_eq!(out.hop_limit(), 63);
            assert_eq!(&f.data()[14 + 6..14 + 8], &flags.to_be_bytes());
        }
    }

    #[test]
    fn unsupported_ethertypes() {
        let mut env = Env::new();
        let ip = from_a(B_IP, 64, DF, 60);
        for ethertype in [0x86dd_u16, 0x8100, 0x88a8, 0x0000] {
            let b = eth(ROUTER_MAC, A_MAC, ethertype, &ip[14..]);
            assert_eq!(
                env.run(POD_A, &b).0,
                Verdict::Drop(DropReason::UnsupportedEthertype),
                "{ethertype:#x}"
            );
        }
    }

    #[test]
    fn broadcast_multicast_and_foreign_frames() {
        let mut env = Env::new();
        let unicast = from_a(B_IP, 64, DF, 60);
        // Ethernet broadcast carrying unicast IP.
        let mut b = unicast.clone();
        b[0..6].fill(0xff);
        assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(DropReason::Multicast));
        // IPv4 and IPv6 multicast MACs (pods send IPv6 router solicitations
        // and MLD reports to 33:33:.. all the time).
        for group in [
            [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
            [0x33, 0x33, 0, 0, 0, 0x16],
        ] {
            b[0..6].copy_from_slice(&group);
            assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(DropReason::Multicast));
        }
        // Somebody else's MAC.
        b[0..6].copy_from_slice(&B_MAC);
        assert_eq!(
            env.run(POD_A, &b).0,
            Verdict::Drop(DropReason::NotForRouter)
        );
        // IP multicast and limited broadcast to the router's MAC.
        for dst in [Ipv4Addr::new(224, 0, 0, 251), Ipv4Addr::BROADCAST] {
            assert_eq!(
                env.run(POD_A, &from_a(dst, 64, DF, 60)).0,
                Verdict::Drop(DropReason::Multicast),
                "{dst}"
            );
        }
        assert_eq!(env.counters.icmp_sent.get(), 0);
    }

    #[test]
    fn no_route_sends_net_unreachable() {
        let mut env = Env::new();
        let input = from_a(INTERNET_IP, 64, DF, 100);
        let mut f = Frame::from_bytes(&input);
        f.vnet.flags = VnetHdr::F_NEEDS_CSUM;
        assert_eq!(env.process(POD_A, &mut f), Verdict::Forward(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 0, 0, ip_part(&input));
        assert_eq!(f.vnet, VnetHdr::default());
        assert_eq!(env.counters.drops(DropReason::NoRoute), 1);
        assert_eq!(env.counters.icmp_sent.get(), 1);
        // smoltcp agrees it is a well-formed unreachable quoting our packet.
        let ip = check_ipv4(&f.data()[14..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap() {
            Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            } => {
                assert_eq!(reason, Icmpv4DstUnreachable::NetUnreachable);
                assert_eq!(header.src_addr, A_IP);
                assert_eq!(header.dst_addr, INTERNET_IP);
                assert_eq!(data, &input[34..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn large_original_is_quoted_up_to_576_bytes() {
        let mut env = Env::new();
        let input = from_a(INTERNET_IP, 64, DF, 1400);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, Verdict::Forward(POD_A));
        assert_eq!(f.len(), 14 + 576);
        assert_icmp_error(&f, A_MAC, A_IP, 3, 0, 0, ip_part(&input));
        // A tiny original (less than 8 bytes of payload) is quoted whole.
        let ip = ipv4(A_IP, INTERNET_IP, 17, 64, 0, &[], &[1, 2, 3]);
        let (v, f) = env.run(POD_A, &eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
        assert_eq!(v, Verdict::Forward(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 0, 0, &ip);
        assert_eq!(f.len(), 14 + 20 + 8 + 23);
    }

    #[test]
    fn unreachable_sends_host_unreachable() {
        let mut env = Env::new();
        let input = from_a(UNASSIGNED_IP, 64, DF, 80);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, Verdict::Forward(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 1, 0, ip_part(&input));
        assert_eq!(env.counters.drops(DropReason::NoRoute), 1);
        // From the host port, the error goes back to the host.
        let input = from_host(NODE_IP, UNASSIGNED_IP, 64);
        let (v, f) = env.run(HOST, &input);
        assert_eq!(v, Verdict::Forward(HOST));
        assert_icmp_error(&f, HOST_MAC, NODE_IP, 3, 1, 0, ip_part(&input));
    }

    #[test]
    fn ttl_one_sends_time_exceeded() {
        let mut env = Env::new();
        for ttl in [1, 0] {
            let input = from_a(B_IP, ttl, DF, 120);
            let (v, f) = env.run(POD_A, &input);
            assert_eq!(v, Verdict::Forward(POD_A));
            assert_icmp_error(&f, A_MAC, A_IP, 11, 0, 0, ip_part(&input));
            let ip = check_ipv4(&f.data()[14..]).unwrap();
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
            assert!(matches!(
                repr,
                Icmpv4Repr::TimeExceeded {
                    reason: Icmpv4TimeExceeded::TtlExpired,
                    ..
                }
            ));
        }
        assert_eq!(env.counters.drops(DropReason::TtlExceeded), 2);
        // TTL 2 still goes through, leaving with 1.
        let (v, f) = env.run(POD_A, &from_a(B_IP, 2, DF, 120));
        assert_eq!(v, Verdict::Forward(POD_B));
        assert_eq!(f.data()[14 + 8], 1);
        // An echo request (not an error) with TTL 1 gets its time exceeded.
        let echo = [8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
        let ip = ipv4(A_IP, B_IP, 1, 1, DF, &[], &echo);
        let (v, f) = env.run(POD_A, &eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
        assert_eq!(v, Verdict::Forward(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 11, 0, 0, &ip);
    }

    #[test]
    fn no_icmp_error_about_errors_or_later_fragments() {
        let mut env = Env::new();
        // An ICMP port unreachable quoting something, TTL 1.
        for ty in [3u8, 4, 5, 11, 12] {
            let mut err = vec![ty, 0, 0, 0, 0, 0, 0, 0];
            err.extend_from_slice(&ipv4(B_IP, A_IP, 17, 64, 0, &[], &udp(8)));
            let ip = ipv4(A_IP, B_IP, 1, 1, 0, &[], &err);
            let b = eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip);
            let (v, f) = env.run(POD_A, &b);
            assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded), "type {ty}");
            assert_eq!(f.data(), &b[..]);
        }
        // ICMP with no bytes to tell its type.
        let ip = ipv4(A_IP, B_IP, 1, 1, 0, &[], &[]);
        let b = eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip);
        assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(DropReason::TtlExceeded));
        // A non-first fragment.
        let b = from_a(B_IP, 1, 185, 100);
        assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(DropReason::TtlExceeded));
        // A first fragment does get one.
        let b = from_a(B_IP, 1, MF, 100);
        assert_eq!(env.run(POD_A, &b).0, Verdict::Forward(POD_A));
        assert_eq!(env.counters.icmp_sent.get(), 1);
        assert_eq!(env.counters.icmp_rate_limited.get(), 0);
    }

    #[test]
    fn df_too_big_sends_frag_needed() {
        let mut env = Env::new();
        let input = from_a(C_IP, 64, DF, 1001);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, Verdict::Forward(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 4, 1000, ip_part(&input));
        assert_eq!(env.counters.drops(DropReason::FragNeeded), 1);
        // Exactly the MTU fits.
        let (v, _) = env.run(POD_A, &from_a(C_IP, 64, DF, 1000));
        assert_eq!(v, Verdict::Forward(POD_C));
    }

    #[test]
    fn non_df_too_big_is_dropped() {
        let mut env = Env::new();
        let (v, _) = env.run(POD_A, &from_a(C_IP, 64, 0, 1001));
        assert_eq!(v, Verdict::Drop(DropReason::TooBig));
        assert_eq!(env.counters.icmp_sent.get(), 0);
    }

    #[test]
    fn gso_frame_larger_than_mtu_is_forwarded() {
        let mut env = Env::new();
        let input = from_a(C_IP, 64, DF, 9000);
        let mut f = Frame::from_bytes(&input);
        let vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_UDP,
            hdr_len: 42,
            gso_size: 958,
            csum_start: 34,
            csum_offset: 6,
        };
        f.vnet = vnet;
        assert_eq!(env.process(POD_A, &mut f), Verdict::Forward(POD_C));
        assert_eq!(f.vnet, vnet);
        assert_eq!(f.len(), input.len());
        assert_eq!(check_ipv4(&f.data()[14..]).unwrap().hop_limit(), 63);
    }

    #[test]
    fn icmp_errors_are_rate_limited() {
        let mut env = Env::with_cfg(cfg(10, 2));
        let input = from_a(INTERNET_IP, 64, DF, 60);
        assert_eq!(env.run(POD_A, &input).0, Verdict::Forward(POD_A));
        assert_eq!(env.run(POD_A, &input).0, Verdict::Forward(POD_A));
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
        assert_eq!(f.data(), &input[..], "refused frame is left alone");
        assert_eq!(env.counters.icmp_rate_limited.get(), 1);
        assert_eq!(env.counters.icmp_sent.get(), 2);
        // The pipeline counted the two it answered; the worker counts the
        // refused one from the verdict.
        assert_eq!(env.counters.drops(DropReason::NoRoute), 2);
        // 10/s: half a token after 50 ms, one after 100 ms.
        env.now_ns += 50_000_000;
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        env.now_ns += 50_000_000;
        assert_eq!(env.run(POD_A, &input).0, Verdict::Forward(POD_A));
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        // A long pause refills to the burst, no more.
        env.now_ns += 3_600 * 1_000_000_000;
        assert_eq!(env.run(POD_A, &input).0, Verdict::Forward(POD_A));
        assert_eq!(env.run(POD_A, &input).0, Verdict::Forward(POD_A));
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        // Time going backwards refills nothing.
        env.now_ns -= 10_000_000_000;
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        assert_eq!(env.counters.icmp_rate_limited.get(), 5);
        assert_eq!(env.counters.icmp_sent.get(), 5);
    }

    #[test]
    fn icmp_errors_get_fresh_identifications() {
        let mut env = Env::new();
        let input = from_a(INTERNET_IP, 64, DF, 60);
        let (_, f1) = env.run(POD_A, &input);
        let (_, f2) = env.run(POD_A, &input);
        let id1 = check_ipv4(&f1.data()[14..]).unwrap().ident();
        let id2 = check_ipv4(&f2.data()[14..]).unwrap().ident();
        assert_ne!(id1, id2);
    }

    #[test]
    fn zero_burst_sends_no_icmp() {
        let mut env = Env::with_cfg(cfg(1000, 0));
        let input = from_a(INTERNET_IP, 64, DF, 60);
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        assert_eq!(env.counters.icmp_rate_limited.get(), 1);
    }

    #[test]
    fn hairpin_is_dropped() {
        let mut env = Env::new();
        // A pod sending to itself through the router.
        let (v, _) = env.run(POD_A, &from_a(A_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::Hairpin));
        // The host sending to the host's networks.
        let (v, _) = env.run(HOST, &from_host(NODE_IP, HOSTNET_IP, 64));
        assert_eq!(v, Verdict::Drop(DropReason::Hairpin));
    }

    #[test]
    fn other_node_needs_an_uplink() {
        let mut env = Env::new();
        let (v, _) = env.run(POD_A, &from_a(REMOTE_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::NoUplink));
    }

    const UPLINK: PortId = PortId(4);
    /// A node outside 192.168.0.0/24 and a block it owns.
    const FAR_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
    const FAR_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 7);

    /// The test node with an uplink (path MTU 1480) in `mode`, subnet
    /// 192.168.0.0/24, and a block 10.244.3.0/24 on FAR_NODE.
    fn uplink_env(mode: EncapMode) -> Env {
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
    fn ipip_in(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
        let outer = ipv4(outer_src, outer_dst, 4, 64, 0, &[], inner);
        eth(ROUTER_MAC, tunnel_mac(outer_src), ETHERTYPE_IPV4, &outer)
    }

    fn remote_udp(dst: Ipv4Addr, ttl: u8, len: usize) -> Vec<u8> {
        ipv4(REMOTE_IP, dst, 17, ttl, DF, &[], &udp(len - 20))
    }

    #[test]
    fn to_other_nodes_per_encap_mode() {
        use EncapMode::*;
        // (mode, destination, egress, TTL after, Ethernet destination)
        let cases = [
            (Always, REMOTE_IP, UPLINK, 63, tunnel_mac(OTHER_NODE)),
            (Always, FAR_POD, UPLINK, 63, tunnel_mac(FAR_NODE)),
            (CrossSubnet, REMOTE_IP, HOST, 64, HOST_MAC),
            (CrossSubnet, FAR_POD, UPLINK, 63, tunnel_mac(FAR_NODE)),
            (Never, REMOTE_IP, HOST, 64, HOST_MAC),
            (Never, FAR_POD, HOST, 64, HOST_MAC),
        ];
        for (mode, dst, out, ttl, mac) in cases {
            let mut env = uplink_env(mode);
            let input = from_a(dst, 64, DF, 100);
            let (v, f) = env.run(POD_A, &input);
            assert_eq!(v, Verdict::Forward(out), "{mode:?} {dst}");
            let d = f.data();
            assert_eq!(&d[0..6], &mac, "{mode:?} {dst}");
            assert_eq!(&d[6..12], &ROUTER_MAC);
            let ip = check_ipv4(&d[14..]).unwrap();
            assert_eq!(ip.hop_limit(), ttl, "{mode:?} {dst}");
            assert_eq!(
                (ip.src_addr(), ip.dst_addr()),
                (A_IP, dst),
                "inner unchanged"
            );
            assert_eq!(&d[14 + 20..], &input[14 + 20..]);
        }
    }

    /// A block on both OTHER_NODE (inside the uplink's subnet) and
    /// FAR_NODE (outside it): an ECMP group.
    const ECMP_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 0);
    const ECMP_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 9);

    fn ecmp_env(mode: EncapMode) -> Env {
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
    fn udp_from_a(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
        let mut u = udp(60);
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        eth(
            ROUTER_MAC,
            A_MAC,
            ETHERTYPE_IPV4,
            &ipv4(A_IP, dst, 17, 64, DF, &[], &u),
        )
    }

    #[test]
    fn ecmp_spreads_flows_and_keeps_each_flow_on_one_member() {
        let mut env = ecmp_env(EncapMode::Always);
        let mut seen = std::collections::HashMap::new();
        for sport in 1000..1064u16 {
            let (v, f) = env.run(POD_A, &udp_from_a(ECMP_POD, sport));
            assert_eq!(v, Verdict::Forward(UPLINK));
            let mac = mac_at(f.data(), 0);
            assert!(
                mac == tunnel_mac(OTHER_NODE) || mac == tunnel_mac(FAR_NODE),
                "{mac:?}"
            );
            seen.insert(sport, mac);
            // The same flow again (and again) takes the same member.
            for _ in 0..3 {
                let (_, f) = env.run(POD_A, &udp_from_a(ECMP_POD, sport));
                assert_eq!(mac_at(f.data(), 0), mac, "flow {sport} moved");
            }
        }
        let to_other = seen
            .values()
            .filter(|m| **m == tunnel_mac(OTHER_NODE))
            .count();
        assert!(
            (8..=56).contains(&to_other),
            "64 flows, {to_other} to one member"
        );
        // Both nodes of the group are known: IPIP from either is accepted.
        let inner = remote_udp(A_IP, 30, 100);
        for n in [OTHER_NODE, FAR_NODE] {
            let (v, _) = env.run(UPLINK, &ipip_in(n, NODE_IP, &inner));
            assert_eq!(v, Verdict::Forward(POD_A), "IPIP from member {n}");
        }
    }

    #[test]
    fn ecmp_member_encap_policy_applies_per_member() {
        // Cross-subnet: OTHER_NODE is routed directly (host port, TTL kept
        // for the node's kernel to decrement), FAR_NODE tunnelled.
        let mut env = ecmp_env(EncapMode::CrossSubnet);
        let (mut direct, mut tunnelled) = (0, 0);
        for sport in 2000..2064u16 {
            let (v, f) = env.run(POD_A, &udp_from_a(ECMP_POD, sport));
            let d = f.data();
            let ttl = check_ipv4(&d[14..]).unwrap().hop_limit();
            match v {
                Verdict::Forward(HOST) => {
                    assert_eq!(mac_at(d, 0), HOST_MAC);
                    assert_eq!(ttl, 64);
                    direct += 1;
                }
                Verdict::Forward(UPLINK) => {
                    assert_eq!(mac_at(d, 0), tunnel_mac(FAR_NODE));
                    assert_eq!(ttl, 63);
                    tunnelled += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            direct > 0 && tunnelled > 0,
            "{direct} direct, {tunnelled} tunnelled"
        );
        // The node's own traffic only goes to the tunnelled member.
        for sport in 3000..3032u16 {
            let mut u = udp(40);
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            let ip = ipv4(NODE_IP, ECMP_POD, 17, 64, DF, &[], &u);
            let (v, f) = env.run(HOST, &eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &ip));
            assert_eq!(v, Verdict::Forward(UPLINK));
            assert_eq!(mac_at(f.data(), 0), tunnel_mac(FAR_NODE));
        }
        // Never: every member via the host port.
        let mut env = ecmp_env(EncapMode::Never);
        for sport in 4000..4032u16 {
            let (v, _) = env.run(POD_A, &udp_from_a(ECMP_POD, sport));
            assert_eq!(v, Verdict::Forward(HOST));
        }
    }

    #[test]
    fn icmp_errors_about_tunnelled_packets_follow_a_group_back() {
        // The sender's block is an ECMP group: the error goes to a member.
        let mut env = ecmp_env(EncapMode::Always);
        let inner = ipv4(ECMP_POD, A_IP, 17, 1, DF, &[], &udp(80));
        let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
        assert_eq!(v, Verdict::Forward(UPLINK));
        let mac = mac_at(f.data(), 0);
        assert!(mac == tunnel_mac(OTHER_NODE) || mac == tunnel_mac(FAR_NODE));
        assert_icmp_error(&f, mac, ECMP_POD, 11, 0, 0, &inner);
    }

    #[test]
    fn flow_hash_reads_only_what_is_there() {
        let u = {
            let mut u = udp(60);
            u[0..2].copy_from_slice(&5555u16.to_be_bytes());
            u
        };
        let full = ipv4(A_IP, B_IP, 17, 64, 0, &[], &u);
        let other_port = {
            let mut u = u.clone();
            u[0..2].copy_from_slice(&5556u16.to_be_bytes());
            ipv4(A_IP, B_IP, 17, 64, 0, &[], &u)
        };
        let addrs_only = flow_hash_of(u32::from(A_IP), u32::from(B_IP), 17, 0);
        assert_ne!(flow_hash(&full), addrs_only);
        assert_ne!(flow_hash(&full), flow_hash(&other_port));
        // Truncated L4 (3 bytes of UDP): addresses and protocol only.
        assert_eq!(flow_hash(&full[..23]), addrs_only);
        // Fragments (MF, or an offset) ignore the ports.
        let frag = ipv4(A_IP, B_IP, 17, 64, MF, &[], &u);
        assert_eq!(flow_hash(&frag), addrs_only);
        let later = ipv4(A_IP, B_IP, 17, 64, 3, &[], &u);
        assert_eq!(flow_hash(&later), addrs_only);
        // A header length pointing past the slice, and short slices.
        let mut long_hl = full.clone();
        long_hl[0] = 0x4f;
        assert_eq!(flow_hash(&long_hl[..40]), addrs_only);
        assert_eq!(flow_hash(&full[..10]), 0);
        // ICMP echo: the identifier counts; other ICMP types do not.
        let echo = |ty: u8, id: u16| {
            let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 1];
            m[4..6].copy_from_slice(&id.to_be_bytes());
            ipv4(A_IP, B_IP, 1, 64, 0, &[], &m)
        };
        assert_ne!(flow_hash(&echo(8, 1)), flow_hash(&echo(8, 2)));
        assert_eq!(flow_hash(&echo(8, 7)), flow_hash(&echo(0, 7)));
        assert_eq!(
            flow_hash(&echo(3, 1)),
            flow_hash_of(u32::from(A_IP), u32::from(B_IP), 1, 0)
        );
    }

    #[test]
    fn host_to_other_nodes() {
        // The node's own traffic to a remote pod: tunnelled, TTL kept.
        let mut env = uplink_env(EncapMode::Always);
        let (v, f) = env.run(HOST, &from_host(NODE_IP, REMOTE_IP, 64));
        assert_eq!(v, Verdict::Forward(UPLINK));
        assert_eq!(&f.data()[0..6], &tunnel_mac(OTHER_NODE));
        assert_eq!(f.data()[14 + 8], 64);
        // Routed directly, the node's kernel should never hand it to us.
        let mut env = uplink_env(EncapMode::Never);
        let (v, _) = env.run(HOST, &from_host(NODE_IP, REMOTE_IP, 64));
        assert_eq!(v, Verdict::Drop(DropReason::Hairpin));
    }

    #[test]
    fn tunnel_mtu_frag_needed_or_fragment() {
        let mut env = uplink_env(EncapMode::Always);
        // Exactly the path MTU fits.
        let (v, _) = env.run(POD_A, &from_a(REMOTE_IP, 64, DF, 1480));
        assert_eq!(v, Verdict::Forward(UPLINK));
        // One more byte with DF: frag needed, MTU 1480, back to the pod.
        let input = from_a(REMOTE_IP, 64, DF, 1481);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, Verdict::Forward(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 4, 1480, ip_part(&input));
        assert_eq!(env.counters.drops(DropReason::FragNeeded), 1);
        // Without DF the uplink fragments it.
        let (v, f) = env.run(POD_A, &from_a(REMOTE_IP, 64, 0, 1500));
        assert_eq!(v, Verdict::Forward(UPLINK));
        assert_eq!(f.len(), 14 + 1500);
    }

    /// A TCP/IPv4 GSO frame from pod A: `payload` bytes cut at `mss`.
    fn gso_from_a(dst: Ipv4Addr, mss: u16, payload: usize, gso_type: u8) -> Frame {
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

    #[test]
    fn gso_to_the_tunnel_is_checked_per_segment() {
        let mut env = uplink_env(EncapMode::Always);
        // 20 + 32 + 1428 = 1480: fits.
        let mut f = gso_from_a(REMOTE_IP, 1428, 30_000, VnetHdr::GSO_TCPV4);
        let vnet = f.vnet;
        assert_eq!(env.process(POD_A, &mut f), Verdict::Forward(UPLINK));
        assert_eq!(f.vnet, vnet, "offload request kept for the uplink");
        assert_eq!(f.data()[14 + 8], 63);
        // 20 + 32 + 1448 = 1500 with DF: frag needed 1480.
        let mut f = gso_from_a(REMOTE_IP, 1448, 30_000, VnetHdr::GSO_TCPV4);
        assert_eq!(env.process(POD_A, &mut f), Verdict::Forward(POD_A));
        let ip = check_ipv4(&f.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), A_IP);
        assert_eq!(&f.data()[14 + 20..14 + 22], &[3, 4]);
        assert_eq!(&f.data()[14 + 26..14 + 28], &1480u16.to_be_bytes());
        assert_eq!(f.vnet, VnetHdr::default());
        // UDP GSO (or anything but TCPv4) cannot be cut by the uplink.
        let mut f = gso_from_a(REMOTE_IP, 1000, 3000, VnetHdr::GSO_UDP);
        assert_eq!(
            env.process(POD_A, &mut f),
            Verdict::Drop(DropReason::GsoUnsupported)
        );
        // To a local pod, GSO frames pass whole as before.
        let mut f = gso_from_a(B_IP, 1448, 30_000, VnetHdr::GSO_TCPV4);
        assert_eq!(env.process(POD_A, &mut f), Verdict::Forward(POD_B));
    }

    #[test]
    fn decapsulates_to_a_local_pod() {
        let mut env = uplink_env(EncapMode::Always);
        let inner = remote_udp(A_IP, 63, 200);
        let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
        assert_eq!(v, Verdict::Forward(POD_A));
        let d = f.data();
        assert_eq!(d.len(), 14 + 200, "outer header gone");
        assert_eq!(&d[0..6], &A_MAC);
        assert_eq!(&d[6..12], &ROUTER_MAC);
        assert_eq!(&d[12..14], &[8, 0]);
        let ip = check_ipv4(&d[14..]).unwrap();
        assert_eq!(ip.hop_limit(), 62, "one hop on this node");
        assert_eq!(&d[14 + 20..], &inner[20..]);
        // Options on the outer header are fine too.
        let outer = ipv4(OTHER_NODE, NODE_IP, 4, 64, 0, &[1, 1, 1, 0], &inner);
        let b = eth(ROUTER_MAC, [0; 6], ETHERTYPE_IPV4, &outer);
        assert_eq!(env.run(UPLINK, &b).0, Verdict::Forward(POD_A));
    }

    #[test]
    fn ipip_drops_are_counted() {
        let mut env = uplink_env(EncapMode::Always);
        let good = remote_udp(A_IP, 63, 60);
        let stranger = Ipv4Addr::new(192, 168, 0, 99);
        let mut not_ipip = ipip_in(OTHER_NODE, NODE_IP, &good);
        not_ipip[14 + 9] = 41;
        let mut fragment = ipip_in(OTHER_NODE, NODE_IP, &good);
        fragment[14 + 6] = 0x20;
        for b in [&mut not_ipip, &mut fragment] {
            Ipv4Packet::new_unchecked(&mut b[14..34]).fill_checksum();
        }
        let mut bad_inner = good.clone();
        bad_inner[10] ^= 0xff; // inner checksum
        let cases = [
            (
                ipip_in(stranger, NODE_IP, &good),
                DropReason::IpipUnknownNode,
            ),
            (
                ipip_in(OTHER_NODE, stranger, &good),
                DropReason::IpipNotForNode,
            ),
            (
                ipip_in(OTHER_NODE, NODE_IP, &good[..12]),
                DropReason::IpipMalformed,
            ),
            (
                ipip_in(OTHER_NODE, NODE_IP, &bad_inner),
                DropReason::IpipMalformed,
            ),
            (
                ipip_in(OTHER_NODE, NODE_IP, &good)[..30].to_vec(),
                DropReason::IpipMalformed,
            ),
            (not_ipip, DropReason::IpipMalformed),
            (fragment, DropReason::IpipMalformed),
            // Not for a pod here: the outside world, another node's block,
            // this node's own address.
            (
                ipip_in(OTHER_NODE, NODE_IP, &remote_udp(INTERNET_IP, 63, 60)),
                DropReason::IpipNotLocal,
            ),
            (
                ipip_in(OTHER_NODE, NODE_IP, &remote_udp(FAR_POD, 63, 60)),
                DropReason::IpipNotLocal,
            ),
            (
                ipip_in(OTHER_NODE, NODE_IP, &remote_udp(NODE_IP, 63, 60)),
                DropReason::IpipNotLocal,
            ),
            (
                ipip_in(
                    OTHER_NODE,
                    NODE_IP,
                    &ipv4(Ipv4Addr::BROADCAST, A_IP, 17, 9, 0, &[], &udp(8)),
                ),
                DropReason::BadSource,
            ),
        ];
        for (b, reason) in cases {
            let (v, _) = env.run(UPLINK, &b);
            assert_eq!(v, Verdict::Drop(reason), "{b:02x?}");
        }
        assert_eq!(env.counters.icmp_sent.get(), 0);
        // And the next good one still goes through.
        let (v, _) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &good));
        assert_eq!(v, Verdict::Forward(POD_A));
    }

    #[test]
    fn icmp_errors_for_tunnelled_packets_go_back_through_the_tunnel() {
        for mode in [EncapMode::Always, EncapMode::Never] {
            let mut env = uplink_env(mode);
            // TTL 1 on arrival: time exceeded from this node to the sender.
            let inner = remote_udp(A_IP, 1, 100);
            let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
            let (out, mac) = match mode {
                EncapMode::Never => (HOST, HOST_MAC),
                _ => (UPLINK, tunnel_mac(OTHER_NODE)),
            };
            assert_eq!(v, Verdict::Forward(out), "{mode:?}");
            assert_icmp_error(&f, mac, REMOTE_IP, 11, 0, 0, &inner);
            // An unassigned address of our block: host unreachable.
            let inner = remote_udp(UNASSIGNED_IP, 9, 100);
            let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
            assert_eq!(v, Verdict::Forward(out));
            assert_icmp_error(&f, mac, REMOTE_IP, 3, 1, 0, &inner);
            assert_eq!(env.counters.drops(DropReason::IpipNotLocal), 1);
            assert_eq!(env.counters.drops(DropReason::TtlExceeded), 1);
            assert_eq!(env.counters.icmp_sent.get(), 2);
        }
        // Too big for the pod's port with DF (pod C: MTU 1000).
        let mut env = uplink_env(EncapMode::Always);
        let inner = remote_udp(C_IP, 30, 1200);
        let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
        assert_eq!(v, Verdict::Forward(UPLINK));
        assert_icmp_error(&f, tunnel_mac(OTHER_NODE), REMOTE_IP, 3, 4, 1000, &inner);
    }

    #[test]
    fn random_and_mutated_ipip_never_panics() {
        let mut env = uplink_env(EncapMode::CrossSubnet);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x1b1b);
        let seeds: Vec<Vec<u8>> = vec![
            ipip_in(OTHER_NODE, NODE_IP, &remote_udp(A_IP, 64, 200)),
            ipip_in(FAR_NODE, NODE_IP, &remote_udp(UNASSIGNED_IP, 2, 100)),
            ipip_in(OTHER_NODE, NODE_IP, &remote_udp(A_IP, 1, 1400)),
            ipip_in(FAR_NODE, NODE_IP, &remote_udp(C_IP, 9, 1200)),
        ];
        let mut forwarded = 0;
        for i in 0..5_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..rng.gen_range(0..4) {
                let j = rng.gen_range(0..b.len().min(80));
                b[j] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                b.truncate(rng.gen_range(0..=b.len()));
            }
            let mut f = Frame::from_bytes(&b);
            env.now_ns += 1_000;
            if let Verdict::Forward(out) = env.process(UPLINK, &mut f) {
                forwarded += 1;
                let d = f.data();
                let ip = check_ipv4(&d[14..]).expect("forwarded IP is valid");
                assert_eq!(usize::from(ip.total_len()), d.len() - 14);
                if out == UPLINK {
                    // Only ICMP errors go back into the tunnel.
                    assert_eq!(ip.next_header(), IpProtocol::Icmp);
                    assert_eq!(ip.src_addr(), NODE_IP);
                }
            }
        }
        assert!(forwarded > 100, "the mutations left some valid frames");
    }

    #[test]
    fn missing_ports() {
        let mut env = Env::new();
        // Unknown ingress.
        let (v, _) = env.run(MISSING, &from_a(B_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::NoPort));
        // Route to a port that went away.
        let (v, _) = env.run(POD_A, &from_a(STALE_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::NoPort));
        // Host route without a host port.
        env.ports = env.ports.without(HOST);
        let (v, _) = env.run(POD_A, &from_a(NODE_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::NoPort));
    }

    #[test]
    fn ethernet_padding_is_stripped() {
        let mut env = Env::new();
        let ip = ipv4(A_IP, B_IP, 17, 64, DF, &[], &udp(8));
        let mut b = eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip);
        b.resize(60, 0xaa);
        let (v, f) = env.run(POD_A, &b);
        assert_eq!(v, Verdict::Forward(POD_B));
        assert_eq!(f.len(), 14 + 28);
        assert_eq!(&f.data()[14 + 20..], &ip[20..]);
    }

    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut env = Env::with_cfg(cfg(1_000_000, 1_000_000));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x9e37_79b9);
        let echo = [8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
        let seeds: Vec<Vec<u8>> = vec![
            from_a(B_IP, 64, DF, 100),
            from_a(INTERNET_IP, 64, DF, 700),
            from_a(C_IP, 1, DF, 1200),
            from_a(B_IP, 1, MF, 60),
            from_host(NODE_IP, A_IP, 64),
            eth(
                ROUTER_MAC,
                A_MAC,
                ETHERTYPE_IPV4,
                &ipv4(
                    A_IP,
                    UNASSIGNED_IP,
                    1,
                    64,
                    0,
                    &[7, 7, 4, 0, 0, 0, 0, 0],
                    &echo,
                ),
            ),
            arp([0xff; 6], 1, A_MAC, A_IP, GW),
            arp([0xff; 6], 1, HOST_MAC, NODE_IP, B_IP),
        ];
        let ingresses = [POD_A, POD_B, HOST, POD_C, MISSING];
        let mut forwarded = 0;
        for i in 0..5_000 {
            let mut b = if i % 10 == 0 {
                let n = rng.gen_range(0..200);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                seeds[rng.gen_range(0..seeds.len())].clone()
            };
            for _ in 0..rng.gen_range(0..4) {
                if b.is_empty() {
                    break;
                }
                let j = rng.gen_range(0..b.len().min(64));
                b[j] = rng.gen();
            }
            match rng.gen_range(0..4) {
                0 => b.truncate(rng.gen_range(0..=b.len())),
                1 => b.resize(b.len() + rng.gen_range(0..40), rng.gen()),
                _ => {}
            }
            let mut f = Frame::from_bytes(&b);
            if rng.gen_bool(0.1) {
                f.vnet.gso_type = VnetHdr::GSO_TCPV4;
            }
            let ingress = ingresses[rng.gen_range(0..ingresses.len())];
            env.now_ns += 1_000;
            match env.process(ingress, &mut f) {
                Verdict::Forward(out) => {
                    forwarded += 1;
                    assert!(env.ports.get(out).is_some());
                    let d = f.data();
                    assert_eq!(&d[6..12], &ROUTER_MAC);
                    if d[12..14] == [0x08, 0x00] {
                        let ip = check_ipv4(&d[14..]).expect("forwarded IP is valid");
                        assert_eq!(usize::from(ip.total_len()), d.len() - 14);
                    } else {
                        assert_eq!(d.len(), 42, "ARP reply");
                        assert_eq!(out, ingress);
                    }
                }
                Verdict::Drop(_) => {}
            }
        }
        assert!(forwarded > 100, "the mutations left some valid frames");
    }

    /// The reply direction of a flow the node's kernel NATed: a UDP
    /// packet from `src` (port 53) to pod A (port 12345, [`udp`]'s).
    fn dns_reply(src: Ipv4Addr, sport: u16) -> Vec<u8> {
        let mut u = udp(40);
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&12345u16.to_be_bytes());
        ipv4(src, A_IP, 17, 64, DF, &[], &u)
    }

    #[test]
    fn replies_of_flows_the_node_nated_go_back_to_the_node() {
        let mut env = uplink_env(EncapMode::Always);
        // Nothing recorded: B's packet to A goes straight to A.
        let (v, _) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 53)),
        );
        assert_eq!(v, Verdict::Forward(POD_A));
        assert!(env.flows.is_empty());
        // A's packet to a ClusterIP, DNATed by the node to B, comes back
        // from the host port with A's source: recorded, forwarded to B.
        let (v, _) = env.run(HOST, &from_host(A_IP, B_IP, 63));
        assert_eq!(v, Verdict::Forward(POD_B));
        assert_eq!(env.counters.flows_inserted.get(), 1);
        assert_eq!(env.flows.len(), 1);
        // The node's own packets (not a pod's source) are not recorded.
        let (v, _) = env.run(HOST, &from_host(NODE_IP, B_IP, 64));
        assert_eq!(v, Verdict::Forward(POD_B));
        assert_eq!(env.flows.len(), 1);
        // B's reply goes to the host port (its conntrack un-NATs it), with
        // the host port's MAC and no TTL lost.
        let (v, f) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 53)),
        );
        assert_eq!(v, Verdict::Forward(HOST));
        assert_eq!(&f.data()[0..6], &HOST_MAC);
        assert_eq!(f.data()[14 + 8], 64);
        assert_eq!(env.counters.flows_steered.get(), 1);
        // Unrelated: another source port, another pod, the other direction.
        let (v, _) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 54)),
        );
        assert_eq!(v, Verdict::Forward(POD_A));
        let (v, _) = env.run(
            POD_C,
            &eth(ROUTER_MAC, C_MAC, ETHERTYPE_IPV4, &dns_reply(C_IP, 53)),
        );
        assert_eq!(v, Verdict::Forward(POD_A));
        let (v, _) = env.run(POD_A, &from_a(B_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Forward(POD_B));
        assert_eq!(env.counters.flows_steered.get(), 1);
        // Unreplied UDP expires after 30 s... but this one saw a reply: 120 s.
        env.now_ns += 100 * 1_000_000_000;
        let (v, _) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 53)),
        );
        assert_eq!(v, Verdict::Forward(HOST));
        env.now_ns += 121 * 1_000_000_000;
        let (v, _) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 53)),
        );
        assert_eq!(v, Verdict::Forward(POD_A), "expired");
    }

    #[test]
    fn tunnelled_replies_of_nated_flows_go_to_the_node() {
        let mut env = uplink_env(EncapMode::Always);
        // A's packet DNATed to a pod on another node: recorded, tunnelled.
        let (v, _) = env.run(HOST, &from_host(A_IP, REMOTE_IP, 63));
        assert_eq!(v, Verdict::Forward(UPLINK));
        assert_eq!(env.counters.flows_inserted.get(), 1);
        // The remote pod's reply, decapsulated: to the host port, the one
        // exception to "decapsulated traffic goes to a local pod".
        let (v, f) = env.run(
            UPLINK,
            &ipip_in(OTHER_NODE, NODE_IP, &dns_reply(REMOTE_IP, 53)),
        );
        assert_eq!(v, Verdict::Forward(HOST));
        assert_eq!(&f.data()[0..6], &HOST_MAC);
        let ip = check_ipv4(&f.data()[14..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE_IP, A_IP));
        // Another flow from that pod still goes straight to A; to the node
        // itself it is still refused.
        let (v, _) = env.run(
            UPLINK,
            &ipip_in(OTHER_NODE, NODE_IP, &dns_reply(REMOTE_IP, 99)),
        );
        assert_eq!(v, Verdict::Forward(POD_A));
        let (v, _) = env.run(
            UPLINK,
            &ipip_in(OTHER_NODE, NODE_IP, &remote_udp(NODE_IP, 63, 60)),
        );
        assert_eq!(v, Verdict::Drop(DropReason::IpipNotLocal));
        assert_eq!(env.counters.flows_steered.get(), 1);
    }

    #[test]
    fn icmp_errors_about_nated_flows_go_to_the_node() {
        let mut env = Env::new();
        let original = ipv4(A_IP, B_IP, 17, 63, DF, &[], &udp(40));
        let (v, _) = env.run(HOST, &eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &original));
        assert_eq!(v, Verdict::Forward(POD_B));
        // B's port unreachable quoting A's packet.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&original[..28]);
        let err = ipv4(B_IP, A_IP, 1, 64, 0, &[], &icmp);
        let (v, _) = env.run(POD_B, &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &err));
        assert_eq!(v, Verdict::Forward(HOST));
        // Quoting a packet of no recorded flow: straight to A.
        let other = ipv4(A_IP, B_IP, 17, 63, DF, &[], &dns_reply(A_IP, 7)[20..]);
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&other[..28]);
        let err = ipv4(B_IP, A_IP, 1, 64, 0, &[], &icmp);
        let (v, _) = env.run(POD_B, &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &err));
        assert_eq!(v, Verdict::Forward(POD_A));
        assert_eq!(env.counters.flows_steered.get(), 1);
    }

    // ---- network policy (crate::policy_stage) ------------------------

    /// B isolated for ingress (only A may open UDP 53 to it); C isolated
    /// for egress with no rule (may open nothing).
    fn policy_b_from_a_dns_c_nothing() -> crate::policy::PolicyTable {
        use crate::policy::*;
        let mut ingress = DirRulesBuilder::default();
        let dns = PortRange {
            proto: PROTO_UDP,
            lo: 53,
            hi: 53,
        };
        ingress.allow_peer(A_IP, &PortSet::of([dns]));
        let mut pods = std::collections::HashMap::new();
        pods.insert(
            B_IP,
            PodRules {
                ingress: Some(ingress.build()),
                egress: None,
            },
        );
        pods.insert(
            C_IP,
            PodRules {
                ingress: None,
                egress: Some(DirRulesBuilder::default().build()),
            },
        );
        PolicyTable::new(pods, &[NODE_IP])
    }

    /// An IPv4 packet with a UDP header (`tcp_flags` None) or a TCP
    /// header with those flags.
    fn l4_packet(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        tcp_flags: Option<u8>,
    ) -> Vec<u8> {
        let mut l4 = vec![0u8; if tcp_flags.is_some() { 20 } else { 8 }];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        let proto = match tcp_flags {
            Some(f) => {
                l4[12] = 5 << 4;
                l4[13] = f;
                6
            }
            None => {
                l4[4..6].copy_from_slice(&8u16.to_be_bytes());
                17
            }
        };
        ipv4(src, dst, proto, 64, DF, &[], &l4)
    }

    fn from_pod(mac: [u8; 6], ip: &[u8]) -> Vec<u8> {
        eth(ROUTER_MAC, mac, ETHERTYPE_IPV4, ip)
    }

    #[test]
    fn policy_checks_new_connections_and_lets_their_replies_pass() {
        let mut env = Env::new();
        env.policy = policy_b_from_a_dns_c_nothing();
        // A -> B UDP 53: allowed, tracked.
        let q = l4_packet(A_IP, B_IP, 5000, 53, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q)).0,
            Verdict::Forward(POD_B)
        );
        assert_eq!(env.counters.policy_allowed.get(), 1);
        assert_eq!(env.flows.len(), 1);
        // B's reply passes as a reply, not as a new connection.
        let r = l4_packet(B_IP, A_IP, 53, 5000, None);
        assert_eq!(
            env.run(POD_B, &from_pod(B_MAC, &r)).0,
            Verdict::Forward(POD_A)
        );
        assert_eq!(env.counters.policy_allowed.get(), 1);
        // Another port to B: refused by B's ingress, counted on B's port.
        let q54 = l4_packet(A_IP, B_IP, 5000, 54, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q54)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
        assert_eq!(env.counters.port(POD_B).policy_denied_ingress.get(), 1);
        // C may open nothing: refused by its egress, counted on C's port;
        // ICMP echo too.
        let c = l4_packet(C_IP, A_IP, 5000, 80, None);
        assert_eq!(
            env.run(POD_C, &from_pod(C_MAC, &c)).0,
            Verdict::Drop(DropReason::PolicyDeniedEgress)
        );
        let mut echo = vec![8, 0, 0, 0, 0, 7, 0, 1];
        echo.extend_from_slice(&[0; 8]);
        let ping = ipv4(C_IP, A_IP, 1, 64, 0, &[], &echo);
        assert_eq!(
            env.run(POD_C, &from_pod(C_MAC, &ping)).0,
            Verdict::Drop(DropReason::PolicyDeniedEgress)
        );
        assert_eq!(env.counters.port(POD_C).policy_denied_egress.get(), 2);
        // ... but C may reach its node, and the node may reach B.
        let to_node = l4_packet(C_IP, NODE_IP, 5000, 80, None);
        assert_eq!(
            env.run(POD_C, &from_pod(C_MAC, &to_node)).0,
            Verdict::Forward(HOST)
        );
        let from_node = l4_packet(NODE_IP, B_IP, 5000, 22, None);
        assert_eq!(
            env.run(HOST, &eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &from_node))
                .0,
            Verdict::Forward(POD_B)
        );
        // Neither end isolated: not looked at, not tracked.
        let before = env.flows.len();
        let free = l4_packet(A_IP, HOSTNET_IP, 1, 2, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &free)).0,
            Verdict::Forward(HOST)
        );
        assert_eq!(env.flows.len(), before);
    }

    #[test]
    fn policy_passes_icmp_errors_of_allowed_flows_and_picks_up_established_tcp() {
        let mut env = Env::new();
        env.policy = policy_b_from_a_dns_c_nothing();
        let q = l4_packet(A_IP, B_IP, 5000, 53, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q)).0,
            Verdict::Forward(POD_B)
        );
        // B's port unreachable about A's query: related, passes.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&q[..28]);
        let err = ipv4(B_IP, A_IP, 1, 64, 0, &[], &icmp);
        assert_eq!(
            env.run(POD_B, &from_pod(B_MAC, &err)).0,
            Verdict::Forward(POD_A)
        );
        // An error quoting a flow never allowed (C's) is judged on its own:
        // C may send nothing.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&l4_packet(A_IP, C_IP, 1, 2, None)[..28]);
        let err = ipv4(C_IP, A_IP, 1, 64, 0, &[], &icmp);
        assert_eq!(
            env.run(POD_C, &from_pod(C_MAC, &err)).0,
            Verdict::Drop(DropReason::PolicyDeniedEgress)
        );
        // TCP to B: a SYN is a new connection and refused; an ACK of a
        // connection older than the policy is picked up and passes, and
        // so does its reply.
        let syn = l4_packet(A_IP, B_IP, 6000, 80, Some(0x02));
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &syn)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
        let ack = l4_packet(A_IP, B_IP, 6001, 80, Some(0x10));
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &ack)).0,
            Verdict::Forward(POD_B)
        );
        let back = l4_packet(B_IP, A_IP, 80, 6001, Some(0x10));
        assert_eq!(
            env.run(POD_B, &from_pod(B_MAC, &back)).0,
            Verdict::Forward(POD_A)
        );
    }

    #[test]
    fn a_policy_change_spares_established_flows() {
        let mut env = Env::new();
        env.policy = policy_b_from_a_dns_c_nothing();
        let q = l4_packet(A_IP, B_IP, 5000, 53, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q)).0,
            Verdict::Forward(POD_B)
        );
        // B now allows nothing: the flow goes on, a new one is refused.
        let mut pods = std::collections::HashMap::new();
        pods.insert(
            B_IP,
            crate::policy::PodRules {
                ingress: Some(crate::policy::DirRulesBuilder::default().build()),
                egress: None,
            },
        );
        env.policy = crate::policy::PolicyTable::new(pods, &[NODE_IP]);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q)).0,
            Verdict::Forward(POD_B)
        );
        let q2 = l4_packet(A_IP, B_IP, 5001, 53, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q2)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
        // Once the flow expires (UDP replied: 120 s; unreplied: 30 s), it
        // is a new connection again.
        env.now_ns += 31 * 1_000_000_000;
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
    }
}
