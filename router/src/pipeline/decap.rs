//! Stage 3, decapsulate: a frame from the uplink is a whole outer packet;
//! this checks the outer headers and strips them.
//!
//! - IPIP ([`decapsulate`]): an outer IPv4 packet behind an Ethernet
//!   header; the inner packet stays behind the same Ethernet header for
//!   [`super::validate`].
//! - VXLAN ([`vxlan_decap`]): the packet as the uplink TAP hands it over,
//!   outer Ethernet first; this runs before the Ethernet check, and leaves
//!   the inner Ethernet frame, addressed to the router, with its offload
//!   request mapped from the tunnel's.
//!
//! Invariants: only a packet addressed to this node (`local`) and sent by a
//! known node (a `via` of the FIB snapshot) is decapsulated: IPIP that is
//! protocol 4, unfragmented, with a whole inner IPv4 header; VXLAN that is
//! whole, UDP to our port, with our VNI and an inner frame for our VTEP
//! MAC. Anything else is a counted `ipip_*` or `vxlan_*` drop and leaves
//! the frame as it was. What is decapsulated may only go to a local pod
//! ([`tunnel_fault`] names the drop after the tunnel).
//!
//! Each frame decapsulated is counted under its node's tunnel counter
//! slot ([`count_received`]), which the known-node check returns.
//!
//! [`check_inner_source`] is the anti-spoofing check of both tunnels, run
//! once the inner packet is validated: the inner source must be the
//! sending node itself or an address the FIB routes back to that node,
//! else the packet is a counted `tunnel_spoofed_source` drop. It trusts
//! the outer source, which nothing in a packet can prove: only encryption
//! between nodes can.
use std::net::Ipv4Addr;

use super::{BatchContext, Fault};
use crate::counters::DropReason;
use crate::fib::{FibTable, NextHop};
use crate::frame::Frame;
use crate::port::{PortRole, Tunnel};
use crate::vxlan::{
    DecapError, OuterHeaders, TunnelVnetHdr, VxlanParams, INNER_IP_OFFSET, OUTER_LEN,
    OUTER_UDP_OFFSET,
};
use crate::wire::{self, IpProtocol, ETHERNET_HEADER_LEN, IPPROTO_IPIP};

#[inline]
/// Checks and strips the outer header of an IPIP frame from the uplink
/// (which answers for `local`): protocol 4, no fragment, addressed to us,
/// from a known node (a `via` of the current FIB), with a valid inner
/// IPv4 header. Returns the sending node (the outer source) and its
/// tunnel counter slot, for [`check_inner_source`] once the inner packet
/// is validated and for [`count_received`].
pub(super) fn decapsulate(
    ctx: &BatchContext<'_>,
    local: Ipv4Addr,
    frame: &mut Frame,
) -> Result<(Ipv4Addr, u16), DropReason> {
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
    let slot = ctx.fib.node_slot(node).ok_or(DropReason::IpipUnknownNode)?;
    wire::ipip_decap(frame).map_err(|_| DropReason::IpipMalformed)?;
    wire::check_ipv4(&frame.data()[ETHERNET_HEADER_LEN..])
        .map_err(|_| DropReason::IpipMalformed)?;
    Ok((node, slot))
}

/// Counts a frame just decapsulated from the node in tunnel counter slot
/// `slot` (its inner IPv4 packet behind an Ethernet header): one array
/// add, the slot came with the known-node check.
#[inline]
pub(super) fn count_received(ctx: &BatchContext<'_>, slot: u16, frame: &Frame) {
    let t = ctx.counters.tunnel(slot);
    t.rx_packets.incr();
    t.rx_bytes
        .add(frame.len().saturating_sub(ETHERNET_HEADER_LEN) as u64);
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

/// Checks and strips the outer headers of a VXLAN frame from the uplink
/// (which answers for `local` with `vx`): whole, IPv4/UDP to our port
/// ([`OuterHeaders::parse`], outer checksum included: tc hands us the
/// packet before IP has looked at it), addressed to this node, from a
/// known node, our VNI, an inner frame for our VTEP MAC. Then the 50 outer
/// bytes go, the offload request is mapped onto the inner frame, and the
/// inner Ethernet destination becomes `router_mac`, so the later stages
/// see a frame like any port's. On error the frame is left as it was.
/// Returns the sending node (the outer source) and its tunnel counter
/// slot, for [`check_inner_source`] and [`count_received`].
#[inline]
pub(super) fn vxlan_decap(
    ctx: &BatchContext<'_>,
    local: Ipv4Addr,
    vx: &VxlanParams,
    router_mac: &[u8; 6],
    frame: &mut Frame,
) -> Result<(Ipv4Addr, u16), DropReason> {
    let outer = OuterHeaders::parse(frame.data(), false).map_err(|e| match e {
        DecapError::Malformed
        | DecapError::BadChecksum
        | DecapError::WrongPort
        | DecapError::BadHeader => DropReason::VxlanMalformed,
    })?;
    if outer.dst_port != vx.port {
        return Err(DropReason::VxlanMalformed);
    }
    if outer.dst != local {
        return Err(DropReason::VxlanNotForNode);
    }
    let slot = ctx
        .fib
        .node_slot(outer.src)
        .ok_or(DropReason::VxlanUnknownNode)?;
    if outer.vni != vx.vni {
        return Err(DropReason::VxlanWrongVni);
    }
    if outer.inner_dst_mac != vx.mac {
        return Err(DropReason::VxlanNotOurMac);
    }
    let tunnel_vnet = TunnelVnetHdr {
        base: frame.vnet,
        outer_th_offset: OUTER_UDP_OFFSET as u16,
        inner_nh_offset: INNER_IP_OFFSET as u16,
    };
    let vnet = tunnel_vnet.decap().ok_or(DropReason::VxlanMalformed)?;
    // Outer Ethernet padding goes; parse checked that ip_len fits.
    frame.set_len(ETHERNET_HEADER_LEN + outer.ip_len);
    frame.pull_front(OUTER_LEN);
    frame.vnet = vnet;
    frame.data_mut()[0..6].copy_from_slice(router_mac);
    Ok((outer.src, slot))
}

/// A fault of the later stages for a packet that came through the tunnel
/// of `role`, named after that tunnel: the route stage says `ipip_not_local`
/// for any tunnel, which is `vxlan_not_local` for VXLAN.
#[inline]
pub(super) fn tunnel_fault(role: &PortRole, fault: Fault) -> Fault {
    let vxlan = matches!(
        role,
        PortRole::Uplink {
            tunnel: Tunnel::Vxlan(_),
            ..
        }
    );
    let rename = |r: DropReason| match r {
        DropReason::IpipNotLocal if vxlan => DropReason::VxlanNotLocal,
        r => r,
    };
    match fault {
        Fault::Drop(r) => Fault::Drop(rename(r)),
        Fault::Icmp(e, r) => Fault::Icmp(e, rename(r)),
        Fault::Reset(r) => Fault::Reset(rename(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::vxlan::{OuterHeaders, VxlanParams, OUTER_LEN};

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
    fn decapsulated_frames_count_under_their_node() {
        let mut env = uplink_env(EncapMode::Always);
        let slot = env.fib.load().node_slot(OTHER_NODE).unwrap();
        let inner = remote_udp(A_IP, 63, 200);
        for _ in 0..2 {
            let (v, _) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
            assert_eq!(v, fwd(POD_A));
        }
        // Decapsulated, then refused for its inner source: still received
        // from that node (and counted as a drop).
        let spoofed = ipv4(C_IP, A_IP, 17, 63, DF, &[], &udp(180));
        let (v, _) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &spoofed));
        assert_eq!(v, Verdict::Drop(DropReason::TunnelSpoofedSource));
        // From an unknown node: never decapsulated, not counted.
        let stranger = Ipv4Addr::new(192, 168, 0, 99);
        env.run(UPLINK, &ipip_in(stranger, NODE_IP, &inner));
        let t = env.counters.tunnel(slot);
        assert_eq!((t.rx_packets.get(), t.rx_bytes.get()), (3, 3 * 200));
        assert_eq!((t.tx_packets.get(), t.tx_bytes.get()), (0, 0));
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

    const VX: VxlanParams = VxlanParams {
        port: crate::vxlan::FLANNEL_PORT,
        vni: crate::vxlan::FLANNEL_VNI,
        mac: [0x0e, 0x70, 192, 168, 0, 10],
    };

    /// The test node with a VXLAN uplink (Flannel's profile, path MTU 1450).
    fn vxlan_env() -> Env {
        let mut env = uplink_env(EncapMode::Always);
        let policy = EncapPolicy {
            mode: EncapMode::Always,
            subnet: Some(prefix(Ipv4Addr::new(192, 168, 0, 0), 24)),
        };
        env.ports = env.ports.with(
            UPLINK,
            entry(
                "vxlan",
                PortRole::Uplink {
                    local: NODE_IP,
                    policy,
                    tunnel: Tunnel::Vxlan(VX),
                },
                1450,
            ),
        );
        env
    }

    /// A VXLAN frame as the uplink TAP hands it over: outer Ethernet,
    /// `src` -> `dst` UDP to `port`, `vni`, inner frame to `inner_mac`.
    fn vxlan_in(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        vni: u32,
        inner_mac: [u8; 6],
        inner: &[u8],
    ) -> Vec<u8> {
        let inner_eth = eth(inner_mac, [0x0e, 0x70, 9, 9, 9, 9], ETHERTYPE_IPV4, inner);
        let mut v = vec![0u8; OUTER_LEN];
        let outer = OuterHeaders {
            dst_mac: [2, 0, 0, 0, 0, 0x77],
            src_mac: [2, 0, 0, 0, 0, 0x78],
            src,
            dst,
            ident: 1,
            tos: 0,
            src_port: 40000,
            dst_port: VX.port,
            vni,
        };
        assert!(outer.write(&mut v, inner_eth.len()));
        v.extend_from_slice(&inner_eth);
        v
    }

    #[test]
    fn vxlan_from_a_known_node_reaches_the_pod() {
        let mut env = vxlan_env();
        let inner = remote_udp(A_IP, 63, 100);
        let mut f = Frame::from_bytes(&vxlan_in(OTHER_NODE, NODE_IP, VX.vni, VX.mac, &inner));
        // A GRO'd TCP-in-VXLAN request maps onto the inner frame; here the
        // datagram only has a partial checksum at the inner UDP header.
        f.vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: (OUTER_LEN + 34) as u16,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let v = env.process(UPLINK, &mut f);
        assert_eq!(v, fwd(POD_A));
        let d = f.data();
        assert_eq!(mac_at(d, 0), A_MAC);
        assert_eq!(mac_at(d, 6), ROUTER_MAC);
        assert_eq!(d.len(), 14 + inner.len());
        assert_eq!(check_ipv4(&d[14..]).unwrap().hop_limit(), 62);
        assert_eq!((f.vnet.csum_start, f.vnet.csum_offset), (34, 6));
        // Counted under the sending node: the inner packet's bytes.
        let slot = env.fib.load().node_slot(OTHER_NODE).unwrap();
        let rx = |env: &Env| {
            let t = env.counters.tunnel(slot);
            (t.rx_packets.get(), t.rx_bytes.get())
        };
        assert_eq!(rx(&env), (1, 100));
        // A wrong VNI is not decapsulated, not counted.
        let b = vxlan_in(OTHER_NODE, NODE_IP, VX.vni + 1, VX.mac, &inner);
        assert_eq!(
            env.run(UPLINK, &b).0,
            Verdict::Drop(DropReason::VxlanWrongVni)
        );
        assert_eq!(rx(&env), (1, 100));
    }

    #[test]
    fn vxlan_inner_source_must_route_back_to_the_sending_node() {
        let mut env = vxlan_env();
        let from = |src: Ipv4Addr| ipv4(src, A_IP, 17, 63, DF, &[], &udp(40));
        for src in [B_IP, FAR_POD, INTERNET_IP] {
            let b = vxlan_in(OTHER_NODE, NODE_IP, VX.vni, VX.mac, &from(src));
            let (v, _) = env.run(UPLINK, &b);
            assert_eq!(v, Verdict::Drop(DropReason::TunnelSpoofedSource), "{src}");
        }
        for src in [REMOTE_IP, OTHER_NODE] {
            let b = vxlan_in(OTHER_NODE, NODE_IP, VX.vni, VX.mac, &from(src));
            assert_eq!(env.run(UPLINK, &b).0, fwd(POD_A), "{src}");
        }
    }

    #[test]
    fn vxlan_receive_checks_drop_and_count() {
        let good = remote_udp(A_IP, 63, 100);
        let stranger = Ipv4Addr::new(192, 168, 0, 99);
        let mut no_i_flag = vxlan_in(OTHER_NODE, NODE_IP, VX.vni, VX.mac, &good);
        no_i_flag[42] = 0;
        let mut other_port = vxlan_in(OTHER_NODE, NODE_IP, VX.vni, VX.mac, &good);
        other_port[36..38].copy_from_slice(&4789u16.to_be_bytes());
        let mut v6_gso = Frame::from_bytes(&vxlan_in(OTHER_NODE, NODE_IP, VX.vni, VX.mac, &good));
        v6_gso.vnet.gso_type = crate::vxlan::GSO_UDP_TUNNEL_IPV6 | VnetHdr::GSO_TCPV4;
        v6_gso.vnet.gso_size = 1000;
        let cases: Vec<(Frame, DropReason)> = vec![
            (
                Frame::from_bytes(&vxlan_in(stranger, NODE_IP, VX.vni, VX.mac, &good)),
                DropReason::VxlanUnknownNode,
            ),
            (
                Frame::from_bytes(&vxlan_in(OTHER_NODE, NODE_IP, 4096, VX.mac, &good)),
                DropReason::VxlanWrongVni,
            ),
            (
                Frame::from_bytes(&vxlan_in(OTHER_NODE, NODE_IP, VX.vni, [0xff; 6], &good)),
                DropReason::VxlanNotOurMac,
            ),
            (
                Frame::from_bytes(&vxlan_in(OTHER_NODE, NODE_IP, VX.vni, ROUTER_MAC, &good)),
                DropReason::VxlanNotOurMac,
            ),
            (
                Frame::from_bytes(&vxlan_in(OTHER_NODE, stranger, VX.vni, VX.mac, &good)),
                DropReason::VxlanNotForNode,
            ),
            (
                Frame::from_bytes(&vxlan_in(OTHER_NODE, NODE_IP, VX.vni, VX.mac, &good)[..60]),
                DropReason::VxlanMalformed,
            ),
            (Frame::from_bytes(&no_i_flag), DropReason::VxlanMalformed),
            (Frame::from_bytes(&other_port), DropReason::VxlanMalformed),
            (v6_gso, DropReason::VxlanMalformed),
            (
                Frame::from_bytes(&vxlan_in(
                    OTHER_NODE,
                    NODE_IP,
                    VX.vni,
                    VX.mac,
                    &remote_udp(INTERNET_IP, 63, 60),
                )),
                DropReason::VxlanNotLocal,
            ),
            (
                Frame::from_bytes(&vxlan_in(
                    OTHER_NODE,
                    NODE_IP,
                    VX.vni,
                    VX.mac,
                    &remote_udp(FAR_POD, 63, 60),
                )),
                DropReason::VxlanNotLocal,
            ),
        ];
        for (k, (mut f, want)) in cases.into_iter().enumerate() {
            let mut env = vxlan_env();
            let v = env.process(UPLINK, &mut f);
            assert_eq!(v, Verdict::Drop(want), "case {k}");
        }
        // The IPIP path is not taken for VXLAN frames, nor the reverse.
        let mut env = vxlan_env();
        let (v, _) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &good));
        assert_eq!(v, Verdict::Drop(DropReason::VxlanMalformed));
    }

    #[test]
    fn to_the_vxlan_uplink_with_path_mtu_uplink_minus_50() {
        let mut env = vxlan_env();
        let (v, f) = env.run(POD_A, &from_a(REMOTE_IP, 64, DF, 1450));
        assert_eq!(v, tunnel_to(OTHER_NODE));
        assert_eq!(mac_at(f.data(), 0), ROUTER_MAC);
        let input = from_a(REMOTE_IP, 64, DF, 1451);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 4, 1450, &input[14..]);
    }

    #[test]
    fn random_and_mutated_vxlan_never_panics() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let seeds = [
            vxlan_in(
                OTHER_NODE,
                NODE_IP,
                VX.vni,
                VX.mac,
                &remote_udp(A_IP, 64, 200),
            ),
            vxlan_in(
                FAR_NODE,
                NODE_IP,
                VX.vni,
                VX.mac,
                &remote_udp(UNASSIGNED_IP, 2, 100),
            ),
        ];
        let mut env = vxlan_env();
        for _ in 0..20_000 {
            let mut b = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(0..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                b.truncate(rng.gen_range(0..=b.len()));
            }
            let mut f = Frame::from_bytes(&b);
            if rng.gen_bool(0.2) {
                f.vnet.gso_type = rng.gen();
                f.vnet.flags = rng.gen();
                f.vnet.csum_start = rng.gen();
                f.vnet.hdr_len = rng.gen();
                f.vnet.gso_size = rng.gen();
            }
            env.now_ns += 1_000;
            if let Verdict::Forward { port: out, .. } = env.process(UPLINK, &mut f) {
                assert!(out == POD_A || out == UPLINK, "{out:?}");
                if out == POD_A {
                    let d = f.data();
                    assert_eq!(mac_at(d, 0), A_MAC);
                    check_ipv4(&d[14..]).expect("forwarded IP is valid");
                }
            }
        }
    }
}
