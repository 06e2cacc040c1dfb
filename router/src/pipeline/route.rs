//! Stage 5, route: where a validated packet goes. The FIB lookup, the
//! ECMP member a flow takes, and [`resolve_egress`], the one place a next
//! hop becomes a port, an Ethernet destination and a tunnel endpoint, for
//! forwarded packets and the ICMP errors the router sends alike.
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
//! Invariants: reads the FIB snapshot and the batch's host port and uplink
//! only (no per-frame table walk); what came through the tunnel goes to a
//! local pod or nowhere (the router is not a transit for other nodes),
//! except the replies of flows the node NATed, which [`host_nat`] sends to
//! the host port from any port; a
//! frame never leaves by the port it came in on (`hairpin`), nor does the
//! host's own traffic go back to the host.
use std::net::Ipv4Addr;

use super::host_nat;
use super::validate::Ipv4Facts;
use super::{BatchContext, Fault, IcmpError};
use crate::counters::DropReason;
use crate::fib::{GroupId, NextHop};
use crate::frame::Frame;
use crate::port::{PortEntry, PortId, PortRole};
use crate::wire::field::{icmp, ipv4, ports};
use crate::wire::{ETHERNET_HEADER_LEN, IPV4_HEADER_LEN};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// Where a packet leaves: the port, its table entry and, through a
/// tunnel, the node at the far end.
#[derive(Clone, Copy)]
pub(super) struct Egress<'t> {
    pub port: PortId,
    pub entry: &'t PortEntry,
    pub tunnel: Option<Ipv4Addr>,
    /// The largest packet that leaves this way unfragmented: the port's
    /// MTU or, through the tunnel, the path MTU learned for the node
    /// minus the tunnel's overhead when that is smaller
    /// ([`crate::pmtu`]).
    pub mtu: u16,
}

impl Egress<'_> {
    #[inline]
    pub fn is_host(&self) -> bool {
        matches!(self.entry.info.role, PortRole::Host { .. })
    }

    /// The Ethernet destination to write.
    #[inline]
    pub fn mac(&self) -> [u8; 6] {
        role_mac(&self.entry.info.role)
    }
}

/// The Ethernet destination for frames out of a port of this role: the
/// pod's or the host's MAC; through a tunnel, the router MAC (the router
/// at the far end answers to it, as this one does).
fn role_mac(role: &PortRole) -> [u8; 6] {
    match *role {
        PortRole::Pod { mac, .. } | PortRole::Host { mac } => mac,
        PortRole::Uplink { .. } => crate::ROUTER_MAC,
    }
}

/// The host port as the egress for a packet from `ingress` (`None`: one
/// the router originates); `from_host`: the packet came from the host.
#[inline(always)]
fn host_egress<'t>(
    ctx: &BatchContext<'t>,
    ingress: Option<PortId>,
    from_host: bool,
) -> Result<Egress<'t>, DropReason> {
    let (port, entry) = ctx.host.ok_or(DropReason::NoPort)?;
    if from_host || Some(port) == ingress {
        return Err(DropReason::Hairpin);
    }
    Ok(Egress {
        port,
        entry,
        tunnel: None,
        mtu: entry.info.mtu,
    })
}

/// Where a packet for next hop `nh` leaves, for a packet from `ingress`
/// (`None`: one the router originates, which may leave by any port;
/// `from_host`: it came from the host port). A block owned by another node
/// goes to the uplink, with the node as tunnel endpoint, when the uplink's
/// policy encapsulates for it, else to the host port, whose kernel routes
/// it to the node directly. `Nodes` (resolve a member first) and
/// `Unreachable` are not egresses: `no_route`.
#[inline(always)]
pub(super) fn resolve_egress<'t>(
    ctx: &BatchContext<'t>,
    ingress: Option<PortId>,
    from_host: bool,
    nh: NextHop,
) -> Result<Egress<'t>, DropReason> {
    match nh {
        NextHop::Local(port) => {
            if Some(port) == ingress {
                return Err(DropReason::Hairpin);
            }
            let entry = ctx.ports.get(port).ok_or(DropReason::NoPort)?;
            Ok(Egress {
                port,
                entry,
                tunnel: None,
                mtu: entry.info.mtu,
            })
        }
        NextHop::Host => host_egress(ctx, ingress, from_host),
        NextHop::Node(node) => {
            let up = ctx.uplink.ok_or(DropReason::NoUplink)?;
            if !up.policy.encap_to(node) {
                return host_egress(ctx, ingress, from_host);
            }
            if Some(up.id) == ingress {
                return Err(DropReason::Hairpin);
            }
            Ok(Egress {
                port: up.id,
                entry: up.entry,
                tunnel: Some(node),
                mtu: ctx.tunnel_mtu(up.entry.info.mtu, node),
            })
        }
        NextHop::Nodes(_) | NextHop::Unreachable => Err(DropReason::NoRoute),
    }
}

/// The FIB's next hop for `dst`, an ECMP group resolved to the member the
/// flow (`hash`, computed only for a group) takes; `None` if no route or
/// an empty group.
#[inline(always)]
fn next_hop(
    ctx: &BatchContext<'_>,
    dst: Ipv4Addr,
    hash: impl FnOnce() -> u32,
    from_host: bool,
) -> Option<NextHop> {
    match ctx.fib.lookup(dst)? {
        NextHop::Nodes(g) => group_member(ctx, g, hash(), from_host).map(NextHop::Node),
        nh => Some(nh),
    }
}

/// Routes a validated packet from `ingress`: its egress, or why not (a
/// drop, or an ICMP error for no route or an unassigned address).
#[inline(always)]
pub(super) fn route<'t>(
    ctx: &BatchContext<'t>,
    ingress: PortId,
    from_uplink: bool,
    pkt: &Ipv4Facts,
    frame: &Frame,
) -> Result<Egress<'t>, Fault> {
    let ip = || flow_hash(&frame.data()[ETHERNET_HEADER_LEN..]);
    let nh = next_hop(ctx, pkt.dst, ip, pkt.from_host);
    // Replies of flows the node's kernel NATed go back through it (the one
    // way out of the tunnel that is not to a local pod).
    if host_nat::to_host(ctx, pkt.from_host, nh, &frame.data()[ETHERNET_HEADER_LEN..]) {
        return Ok(host_egress(ctx, Some(ingress), false)?);
    }
    // What came through the tunnel goes to a local pod or nowhere: the
    // router is not a transit for other nodes (Calico's IPIP neither).
    if from_uplink && !matches!(nh, Some(NextHop::Local(_))) {
        return Err(match nh {
            Some(NextHop::Unreachable) => {
                Fault::Icmp(IcmpError::HOST_UNREACHABLE, DropReason::IpipNotLocal)
            }
            _ => Fault::Drop(DropReason::IpipNotLocal),
        });
    }
    match nh {
        None => Err(Fault::Icmp(IcmpError::NET_UNREACHABLE, DropReason::NoRoute)),
        Some(NextHop::Unreachable) => Err(Fault::Icmp(
            IcmpError::HOST_UNREACHABLE,
            DropReason::NoRoute,
        )),
        Some(nh) => Ok(resolve_egress(ctx, Some(ingress), pkt.from_host, nh)?),
    }
}

/// Where a packet the router originates from `src` to `dst` goes (ICMP
/// errors about packets from the uplink): by the FIB, as any packet would
/// be routed; `None` if nowhere.
pub(super) fn route_back<'t>(
    ctx: &BatchContext<'t>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Option<Egress<'t>> {
    let hash = || flow_hash_of(u32::from(src), u32::from(dst), 1, 0);
    let nh = next_hop(ctx, dst, hash, false)?;
    resolve_egress(ctx, None, false, nh).ok()
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
    let be32 = |f: std::ops::Range<usize>| {
        u32::from_be_bytes([
            ip[f.start],
            ip[f.start + 1],
            ip[f.start + 2],
            ip[f.start + 3],
        ])
    };
    let src = be32(ipv4::SRC_ADDR);
    let dst = be32(ipv4::DST_ADDR);
    let proto = ip[ipv4::PROTOCOL];
    let ff = &ip[ipv4::FLAGS_FRAG];
    let fragment = u16::from_be_bytes([ff[0], ff[1]]) & 0x3fff != 0;
    let hl = usize::from(ip[ipv4::VER_IHL] & 0x0f) * 4;
    let l4 = if fragment {
        0
    } else {
        match proto {
            6 | 17 | 132 | 136 => ip
                .get(hl + ports::PORTS.start..hl + ports::PORTS.end)
                .map_or(0, |p| u32::from_be_bytes([p[0], p[1], p[2], p[3]])),
            1 => match ip.get(hl..hl + icmp::ECHO_IDENT.end) {
                Some(p)
                    if p[icmp::TYPE] == ICMP_ECHO_REPLY || p[icmp::TYPE] == ICMP_ECHO_REQUEST =>
                {
                    let id = &p[icmp::ECHO_IDENT];
                    u32::from(u16::from_be_bytes([id[0], id[1]]))
                }
                _ => 0,
            },
            _ => 0,
        }
    };
    flow_hash_of(src, dst, proto, l4)
}

/// The hash of a client address alone (session affinity's pick).
#[inline]
pub(super) fn flow_hash_of_addr(src: u32) -> u32 {
    flow_hash_of(src, 0, 0, 0)
}

#[inline]
pub(super) fn flow_hash_of(src: u32, dst: u32, proto: u8, l4: u32) -> u32 {
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
/// snapshot has no such group. From the host port (`from_host`), the first
/// member at or after that one which the uplink encapsulates for, if any
/// (the node's kernel reaches the others directly).
fn group_member(
    ctx: &BatchContext<'_>,
    g: GroupId,
    hash: u32,
    from_host: bool,
) -> Option<Ipv4Addr> {
    let members = ctx.fib.group(g);
    if members.is_empty() {
        return None;
    }
    let n = members.len();
    let start = member_index(hash, n);
    if from_host {
        if let Some(up) = ctx.uplink {
            if let Some(i) = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| up.policy.encap_to(members[i]))
            {
                return Some(members[i]);
            }
        }
    }
    Some(members[start])
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::flow_hash_of;

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

    #[test]
    fn to_other_nodes_per_encap_mode() {
        use EncapMode::*;
        // (mode, destination, verdict, TTL after, Ethernet destination)
        let cases = [
            (Always, REMOTE_IP, tunnel_to(OTHER_NODE), 63, ROUTER_MAC),
            (Always, FAR_POD, tunnel_to(FAR_NODE), 63, ROUTER_MAC),
            (CrossSubnet, REMOTE_IP, fwd(HOST), 64, HOST_MAC),
            (CrossSubnet, FAR_POD, tunnel_to(FAR_NODE), 63, ROUTER_MAC),
            (Never, REMOTE_IP, fwd(HOST), 64, HOST_MAC),
            (Never, FAR_POD, fwd(HOST), 64, HOST_MAC),
        ];
        for (mode, dst, want, ttl, mac) in cases {
            let mut env = uplink_env(mode);
            let input = from_a(dst, 64, DF, 100);
            let (v, f) = env.run(POD_A, &input);
            assert_eq!(v, want, "{mode:?} {dst}");
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

    #[test]
    fn ecmp_spreads_flows_and_keeps_each_flow_on_one_member() {
        let mut env = ecmp_env(EncapMode::Always);
        let mut seen = std::collections::HashMap::new();
        for sport in 1000..1064u16 {
            let (v, f) = env.run(POD_A, &udp_from_a(ECMP_POD, sport));
            assert!(
                v == tunnel_to(OTHER_NODE) || v == tunnel_to(FAR_NODE),
                "{v:?}"
            );
            assert_eq!(mac_at(f.data(), 0), ROUTER_MAC);
            seen.insert(sport, v);
            // The same flow again (and again) takes the same member.
            for _ in 0..3 {
                let (again, _) = env.run(POD_A, &udp_from_a(ECMP_POD, sport));
                assert_eq!(again, v, "flow {sport} moved");
            }
        }
        let to_other = seen
            .values()
            .filter(|v| **v == tunnel_to(OTHER_NODE))
            .count();
        assert!(
            (8..=56).contains(&to_other),
            "64 flows, {to_other} to one member"
        );
        // Both nodes of the group are known: IPIP from either is accepted
        // (from a pod of the block they share: it routes back to both).
        let inner = ipv4(ECMP_POD, A_IP, 17, 30, DF, &[], &udp(80));
        for n in [OTHER_NODE, FAR_NODE] {
            let (v, _) = env.run(UPLINK, &ipip_in(n, NODE_IP, &inner));
            assert_eq!(v, fwd(POD_A), "IPIP from member {n}");
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
                Verdict::Forward { port: HOST, .. } => {
                    assert_eq!(mac_at(d, 0), HOST_MAC);
                    assert_eq!(ttl, 64);
                    direct += 1;
                }
                Verdict::Forward {
                    port: UPLINK,
                    tunnel: Some(FAR_NODE),
                } => {
                    assert_eq!(mac_at(d, 0), ROUTER_MAC);
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
            assert_eq!(v, tunnel_to(FAR_NODE));
            assert_eq!(mac_at(f.data(), 0), ROUTER_MAC);
        }
        // Never: every member via the host port.
        let mut env = ecmp_env(EncapMode::Never);
        for sport in 4000..4032u16 {
            let (v, _) = env.run(POD_A, &udp_from_a(ECMP_POD, sport));
            assert_eq!(v, fwd(HOST));
        }
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
        assert_eq!(v, tunnel_to(OTHER_NODE));
        assert_eq!(&f.data()[0..6], &ROUTER_MAC);
        assert_eq!(f.data()[14 + 8], 64);
        // Routed directly, the node's kernel should never hand it to us.
        let mut env = uplink_env(EncapMode::Never);
        let (v, _) = env.run(HOST, &from_host(NODE_IP, REMOTE_IP, 64));
        assert_eq!(v, Verdict::Drop(DropReason::Hairpin));
    }
}
