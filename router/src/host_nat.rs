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
//! forwarded to the pod like any packet from the node.
//!
//! Cost: on the host port, one FIB lookup of the source per packet; on
//! every other port, one relaxed load (is the table empty?) until a flow
//! is recorded, then one bucket lookup per packet to a local pod.
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
    if ctx.flows.is_empty() || !matches!(next_hop, Some(NextHop::Local(_))) {
        return false;
    }
    let steer = match conntrack::parse(ip) {
        Some(pkt) => match ctx.flows.lookup(&pkt.key, now_ms) {
            Some(hit) if hit.dir == Dir::Reply && hit.host_nat() => {
                ctx.flows.note(&hit, pkt.tcp_flags, pkt.key.proto, now_ms);
                true
            }
            _ => false,
        },
        // An ICMP error about a packet the pod sent in such a flow.
        None => conntrack::parse_icmp_error_quote(ip)
            .and_then(|quoted| ctx.flows.lookup(&quoted, now_ms))
            .is_some_and(|hit| hit.dir == Dir::Original && hit.host_nat()),
    };
    if steer {
        ctx.counters.flows_steered.incr();
    }
    steer
}

#[inline]
fn source(ip: &[u8]) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])
}
