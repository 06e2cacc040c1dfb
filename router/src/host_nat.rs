//! The pipeline stage for flows the node's kernel NATed (kube-proxy's
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
use crate::conntrack::{self, Dir, Record, HOST_NAT};
use crate::fib::NextHop;
use crate::pipeline::BatchContext;

/// Records host-port packets from local pods; says whether a packet
/// towards a local pod (`next_hop`) must go to the host port instead.
/// `ip` is the validated IPv4 packet.
#[inline]
pub fn to_host(
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
