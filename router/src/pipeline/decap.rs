//! Stage 3, decapsulate: a frame from the uplink is a whole outer IPv4
//! packet behind an Ethernet header; this checks the outer header and
//! strips it, leaving the inner packet behind the same Ethernet header for
//! [`super::validate`].
//!
//! Invariants: only IPIP (protocol 4), unfragmented, addressed to this
//! node (`local`) and sent by a known node (a `via` of the FIB snapshot) is
//! decapsulated, and only when a whole inner IPv4 header follows; anything
//! else is a counted `ipip_*` drop and leaves the frame as it was.
//!
//! [`check_inner_source`] is the anti-spoofing check of every tunnel (IPIP
//! here; any other encapsulation calls the same function once its inner
//! packet is validated): the inner source must be the sending node itself
//! or an address the FIB routes back to that node, else the packet is a
//! counted `tunnel_spoofed_source` drop. It trusts the outer source, which
//! nothing in a packet can prove: only encryption between nodes can.
use std::net::Ipv4Addr;

use super::BatchContext;
use crate::counters::DropReason;
use crate::fib::{FibTable, NextHop};
use crate::frame::Frame;
use crate::wire::{self, IpProtocol, ETHERNET_HEADER_LEN, IPPROTO_IPIP};

#[inline]
/// Checks and strips the outer header of an IPIP frame from the uplink
/// (which answers for `local`): protocol 4, no fragment, addressed to us,
/// from a known node (a `via` of the current FIB), with a valid inner
/// IPv4 header. Returns the sending node (the outer source), for
/// [`check_inner_source`] once the inner packet is validated.
pub(super) fn decapsulate(
    ctx: &BatchContext<'_>,
    local: Ipv4Addr,
    frame: &mut Frame,
) -> Result<Ipv4Addr, DropReason> {
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
    let node = outer.src_addr();
    if !ctx.fib.is_node(node) {
        return Err(DropReason::IpipUnknownNode);
    }
    wire::ipip_decap(frame).map_err(|_| DropReason::IpipMalformed)?;
    wire::check_ipv4(&frame.data()[ETHERNET_HEADER_LEN..])
        .map_err(|_| DropReason::IpipMalformed)?;
    Ok(node)
}

/// Checks the source of a packet that came out of a tunnel from `node`:
/// it must be the node itself (its own traffic and its router's ICMP
/// errors) or route back to it in `fib` (`NextHop::Node(node)`, or an ECMP
/// group with `node` in it); anything else (one of our pods, another
/// node's block, the outside world) is `TunnelSpoofedSource`. One lookup,
/// no allocation.
#[inline]
pub(super) fn check_inner_source(
    fib: &FibTable,
    node: Ipv4Addr,
    inner_src: Ipv4Addr,
) -> Result<(), DropReason> {
    if inner_src == node {
        return Ok(());
    }
    let routes_back = match fib.lookup(inner_src) {
        Some(NextHop::Node(n)) => n == node,
        Some(NextHop::Nodes(group)) => fib.group(group).contains(&node),
        _ => false,
    };
    if routes_back {
        Ok(())
    } else {
        Err(DropReason::TunnelSpoofedSource)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

    #[test]
    fn decapsulates_to_a_local_pod() {
        let mut env = uplink_env(EncapMode::Always);
        let inner = remote_udp(A_IP, 63, 200);
        let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
        assert_eq!(v, fwd(POD_A));
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
        assert_eq!(env.run(UPLINK, &b).0, fwd(POD_A));
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
        assert_eq!(v, fwd(POD_A));
    }

    #[test]
    fn inner_source_must_route_back_to_the_sending_node() {
        let mut env = ecmp_env(EncapMode::Always);
        let from = |src: Ipv4Addr| ipv4(src, A_IP, 17, 63, DF, &[], &udp(40));
        // Spoofed: one of our pods, another node's block, this node, the
        // host network, the outside world, an unassigned address of ours.
        for src in [
            B_IP,
            FAR_POD,
            NODE_IP,
            HOSTNET_IP,
            INTERNET_IP,
            UNASSIGNED_IP,
        ] {
            let (v, _) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &from(src)));
            assert_eq!(v, Verdict::Drop(DropReason::TunnelSpoofedSource), "{src}");
        }
        // OTHER_NODE's block, ECMP block of both nodes, the node itself.
        for src in [REMOTE_IP, ECMP_POD, OTHER_NODE] {
            let (v, _) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &from(src)));
            assert_eq!(v, fwd(POD_A), "{src}");
        }
        // From FAR_NODE: its own block and the shared one pass, OTHER_NODE's
        // block does not.
        for src in [FAR_POD, ECMP_POD, FAR_NODE] {
            let (v, _) = env.run(UPLINK, &ipip_in(FAR_NODE, NODE_IP, &from(src)));
            assert_eq!(v, fwd(POD_A), "{src}");
        }
        let (v, _) = env.run(UPLINK, &ipip_in(FAR_NODE, NODE_IP, &from(REMOTE_IP)));
        assert_eq!(v, Verdict::Drop(DropReason::TunnelSpoofedSource));
        assert_eq!(
            env.counters.icmp_sent.get(),
            0,
            "no ICMP for a spoofed packet"
        );
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
            if let Verdict::Forward { port: out, tunnel } = env.process(UPLINK, &mut f) {
                forwarded += 1;
                let d = f.data();
                let ip = check_ipv4(&d[14..]).expect("forwarded IP is valid");
                assert_eq!(usize::from(ip.total_len()), d.len() - 14);
                assert_eq!(
                    tunnel.is_some(),
                    out == UPLINK,
                    "a tunnel endpoint iff to the uplink"
                );
                if out == UPLINK {
                    // Only ICMP errors go back into the tunnel.
                    assert_eq!(ip.next_header(), IpProtocol::Icmp);
                    assert_eq!(ip.src_addr(), NODE_IP);
                }
            }
        }
        assert!(forwarded > 100, "the mutations left some valid frames");
    }
}
