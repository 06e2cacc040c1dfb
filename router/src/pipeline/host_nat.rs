//! Stage 5a, host NAT (called by [`route`](super::route) between the FIB
//! lookup and the egress): flows the node's kernel NATed (kube-proxy's
//! Services in any mode, NodePorts, masquerade): their replies must cross
//! the node's stack again, or its conntrack never translates them back.
//!
//! A packet from the host port whose source is a pod of this node
//! (`NextHop::Local` in the FIB) can only exist because the node's kernel
//! NATed or routed it: its flow is recorded in the shared
//! [`FlowTable`](crate::conntrack::FlowTable) with
//! [`HOST_NAT`](crate::conntrack::HOST_NAT). A packet towards a local pod,
//! from a pod port or decapsulated from the uplink, that belongs to the
//! reply direction of such a flow goes to the host port instead (and so
//! does an ICMP error quoting a packet of such a flow); the node's kernel
//! un-NATs it and hands it back through the host port, where it is
//! forwarded to the pod like any packet from the node. A TCP SYN from a
//! pod in the original direction of such a flow (the pod reuses the
//! tuple to talk to the backend directly) removes the entry.
//!
//! Cost: on the host port, one FIB lookup of the source per packet; on
//! every other port, one relaxed load (is the table empty?) until a flow
//! is recorded, then one bucket lookup per packet to a local pod and per
//! TCP SYN.
//! Counted: `flows_inserted`, `flows_full`, `flows_steered`.
use super::BatchContext;
use crate::conntrack::{self, Dir, Record, HOST_NAT};
use crate::fib::NextHop;

/// Records host-port packets from local pods; says whether a packet
/// towards a local pod (`next_hop`) must go to the host port instead.
/// `ip` is the validated IPv4 packet.
///
/// The common case, a packet from a pod port while the flow table is
/// empty, is decided here inline (one relaxed load); the rest is out of
/// line, so the forwarding path pays no call for it.
#[inline(always)]
pub(super) fn to_host(
    ctx: &BatchContext<'_>,
    ingress_is_host: bool,
    next_hop: Option<NextHop>,
    ip: &[u8],
) -> bool {
    if !ingress_is_host && ctx.flows.is_empty() {
        return false;
    }
    to_host_slow(ctx, ingress_is_host, next_hop, ip)
}

#[inline(never)]
fn to_host_slow(
    ctx: &BatchContext<'_>,
    ingress_is_host: bool,
    next_hop: Option<NextHop>,
    ip: &[u8],
) -> bool {
    let now_ms = ctx.now_ns / 1_000_000;
    if ingress_is_host {
        if let Some(NextHop::Local(_)) = ctx.fib.lookup(source(ip)) {
            if let Some(pkt) = conntrack::parse(ip) {
                match ctx.flows.record(&pkt, HOST_NAT, now_ms) {
                    Record::Inserted => ctx.counters.flows_inserted.incr(),
                    Record::Full => ctx.counters.flows_full.incr(),
                    Record::Existing(_) => {}
                }
            }
        }
        return false;
    }
    if ctx.flows.is_empty() {
        return false;
    }
    let to_local_pod = matches!(next_hop, Some(NextHop::Local(_)));
    let syn = is_tcp_syn(ip);
    if !to_local_pod && !syn {
        return false;
    }
    let steer = match conntrack::parse(ip) {
        Some(pkt) => match ctx.flows.lookup(&pkt.key, now_ms) {
            Some(hit) if hit.dir == Dir::Reply && hit.host_nat() && to_local_pod => {
                ctx.flows.note(&hit, pkt.tcp_flags, pkt.key.proto, now_ms);
                true
            }
            // A pod opens a connection on the very tuple a NATed flow
            // left behind (same source port to the same backend, while
            // the entry lives): the pod talks to it directly now, so the
            // replies must no longer go to the node.
            Some(hit) if hit.dir == Dir::Original && hit.host_nat() && syn => {
                ctx.flows.remove(&hit);
                false
            }
            _ => false,
        },
        // An ICMP error about a packet the pod sent in such a flow.
        None if to_local_pod => conntrack::parse_icmp_error_quote(ip)
            .and_then(|quoted| ctx.flows.lookup(&quoted, now_ms))
            .is_some_and(|hit| hit.dir == Dir::Original && hit.host_nat()),
        None => false,
    };
    if steer {
        ctx.counters.flows_steered.incr();
    }
    steer
}

/// A TCP SYN without ACK (the first packet of a connection).
#[inline]
fn is_tcp_syn(ip: &[u8]) -> bool {
    let hl = usize::from(ip[0] & 0x0f) * 4;
    ip[9] == conntrack::PROTO_TCP
        && ip
            .get(hl + 13)
            .is_some_and(|f| f & (conntrack::TCP_SYN | conntrack::TCP_ACK) == conntrack::TCP_SYN)
}

#[inline]
fn source(ip: &[u8]) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

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
        assert_eq!(v, fwd(POD_A));
        assert!(env.flows.is_empty());
        // A's packet to a ClusterIP, DNATed by the node to B, comes back
        // from the host port with A's source: recorded, forwarded to B.
        let (v, _) = env.run(HOST, &from_host(A_IP, B_IP, 63));
        assert_eq!(v, fwd(POD_B));
        assert_eq!(env.counters.flows_inserted.get(), 1);
        assert_eq!(env.flows.len(), 1);
        // The node's own packets (not a pod's source) are not recorded.
        let (v, _) = env.run(HOST, &from_host(NODE_IP, B_IP, 64));
        assert_eq!(v, fwd(POD_B));
        assert_eq!(env.flows.len(), 1);
        // B's reply goes to the host port (its conntrack un-NATs it), with
        // the host port's MAC and no TTL lost.
        let (v, f) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 53)),
        );
        assert_eq!(v, fwd(HOST));
        assert_eq!(&f.data()[0..6], &HOST_MAC);
        assert_eq!(f.data()[14 + 8], 64);
        assert_eq!(env.counters.flows_steered.get(), 1);
        // Unrelated: another source port, another pod, the other direction.
        let (v, _) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 54)),
        );
        assert_eq!(v, fwd(POD_A));
        let (v, _) = env.run(
            POD_C,
            &eth(ROUTER_MAC, C_MAC, ETHERTYPE_IPV4, &dns_reply(C_IP, 53)),
        );
        assert_eq!(v, fwd(POD_A));
        let (v, _) = env.run(POD_A, &from_a(B_IP, 64, DF, 60));
        assert_eq!(v, fwd(POD_B));
        assert_eq!(env.counters.flows_steered.get(), 1);
        // Unreplied UDP expires after 30 s... but this one saw a reply: 120 s.
        env.now_ns += 100 * 1_000_000_000;
        let (v, _) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 53)),
        );
        assert_eq!(v, fwd(HOST));
        env.now_ns += 121 * 1_000_000_000;
        let (v, _) = env.run(
            POD_B,
            &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &dns_reply(B_IP, 53)),
        );
        assert_eq!(v, fwd(POD_A), "expired");
    }

    #[test]
    fn tunnelled_replies_of_nated_flows_go_to_the_node() {
        let mut env = uplink_env(EncapMode::Always);
        // A's packet DNATed to a pod on another node: recorded, tunnelled.
        let (v, _) = env.run(HOST, &from_host(A_IP, REMOTE_IP, 63));
        assert_eq!(v, tunnel_to(OTHER_NODE));
        assert_eq!(env.counters.flows_inserted.get(), 1);
        // The remote pod's reply, decapsulated: to the host port, the one
        // exception to "decapsulated traffic goes to a local pod".
        let (v, f) = env.run(
            UPLINK,
            &ipip_in(OTHER_NODE, NODE_IP, &dns_reply(REMOTE_IP, 53)),
        );
        assert_eq!(v, fwd(HOST));
        assert_eq!(&f.data()[0..6], &HOST_MAC);
        let ip = check_ipv4(&f.data()[14..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE_IP, A_IP));
        // Another flow from that pod still goes straight to A; to the node
        // itself it is still refused.
        let (v, _) = env.run(
            UPLINK,
            &ipip_in(OTHER_NODE, NODE_IP, &dns_reply(REMOTE_IP, 99)),
        );
        assert_eq!(v, fwd(POD_A));
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
        assert_eq!(v, fwd(POD_B));
        // B's port unreachable quoting A's packet.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&original[..28]);
        let err = ipv4(B_IP, A_IP, 1, 64, 0, &[], &icmp);
        let (v, _) = env.run(POD_B, &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &err));
        assert_eq!(v, fwd(HOST));
        // Quoting a packet of no recorded flow: straight to A.
        let other = ipv4(A_IP, B_IP, 17, 63, DF, &[], &dns_reply(A_IP, 7)[20..]);
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&other[..28]);
        let err = ipv4(B_IP, A_IP, 1, 64, 0, &[], &icmp);
        let (v, _) = env.run(POD_B, &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &err));
        assert_eq!(v, fwd(POD_A));
        assert_eq!(env.counters.flows_steered.get(), 1);
    }

    /// A TCP segment (20-byte header, no options) with `flags`.
    fn tcp_segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        ipv4(src, dst, 6, 64, DF, &[], &t)
    }

    #[test]
    fn a_pod_reusing_a_nated_tuple_directly_gets_its_replies() {
        const SYN: u8 = 0x02;
        const SYN_ACK: u8 = 0x12;
        let mut env = uplink_env(EncapMode::Always);
        for (backend, via, out) in [
            (B_IP, POD_B, fwd(POD_B)),
            (REMOTE_IP, UPLINK, tunnel_to(OTHER_NODE)),
        ] {
            // A's connection to a ClusterIP, DNATed by the node to the
            // backend: recorded; the backend's SYN-ACK goes to the node.
            let syn = tcp_segment(A_IP, backend, 40000, 80, SYN);
            let (v, _) = env.run(HOST, &eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &syn));
            assert_eq!(v, out);
            let syn_ack = tcp_segment(backend, A_IP, 80, 40000, SYN_ACK);
            let reply = |env: &mut Env| match via {
                UPLINK => env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &syn_ack)).0,
                _ => {
                    env.run(POD_B, &eth(ROUTER_MAC, B_MAC, ETHERTYPE_IPV4, &syn_ack))
                        .0
                }
            };
            assert_eq!(reply(&mut env), fwd(HOST), "{backend}");
            // Later A opens a connection to the backend itself from the
            // same port: the entry goes, the replies go straight to A.
            let (v, _) = env.run(POD_A, &eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &syn));
            assert_eq!(v, out);
            assert!(env.flows.is_empty(), "{backend}");
            assert_eq!(reply(&mut env), fwd(POD_A), "{backend}");
        }
    }
}
