//! Stage 6, rewrite: the last checks before a routed packet leaves (TTL,
//! the egress MTU) and the rewrite itself: Ethernet destination and source,
//! TTL - 1 with an incremental checksum update.
//!
//! TTL: the node's kernel and the router are one hop together (as in
//! Calico), so only traffic between pods (here or on other nodes) loses a
//! TTL here. MTU: to the tunnel, DF packets (GSO frames: each segment) must
//! fit the uplink's MTU and the path MTU learned for the node (less the
//! tunnel's overhead) or get ICMP fragmentation needed, others are
//! fragmented by the uplink; to a pod or the host, GSO frames pass (the
//! receiving stack cuts them; a TCP `gso_size` larger than the port's MTU
//! allows is lowered to fit) and others must fit, or get fragmentation
//! needed (DF) or are dropped (`too_big`).
//!
//! Invariants: a frame is rewritten only when every check passed, so a
//! refused frame is still the validated packet the ICMP stage quotes; the
//! offload metadata is kept (header sizes do not change).
use super::route::Egress;
use super::validate::Ipv4Facts;
use super::{Fault, IcmpError, PipelineConfig};
use crate::counters::DropReason;
use crate::frame::{Frame, VnetHdr};
use crate::gso::TcpSegments;
use crate::wire::{self, field, ETHERNET_HEADER_LEN};

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

/// Lowers the `gso_size` of a TCP GSO frame whose segments would not fit
/// `mtu` to the largest that does. A frame the uplink took whole from the
/// kernel's GRO carries only what the underlay link could carry per
/// segment ([`crate::gso::adopt_kernel_merged`]); a pod's kernel would
/// take it as it is, but a stack that forwards it (the node's, behind the
/// host port) cuts it at `gso_size` and would refuse it.
fn fit_gso_size(frame: &mut Frame, mtu: u16) {
    let Some(seg) = tcp_segment_len(frame) else {
        return;
    };
    let (mtu, size) = (usize::from(mtu), usize::from(frame.vnet.gso_size));
    if seg > mtu {
        let headers = seg - size;
        if let Some(fits) = mtu.checked_sub(headers).filter(|&s| s > 0) {
            frame.vnet.gso_size = fits as u16;
        }
    }
}

/// Checks TTL and MTU for `egress` and rewrites the frame for it.
#[inline(always)]
pub(super) fn rewrite(
    cfg: &PipelineConfig,
    egress: &Egress<'_>,
    pkt: &Ipv4Facts,
    frame: &mut Frame,
) -> Result<(), Fault> {
    let decrement = !pkt.from_host && !egress.is_host();
    if decrement && pkt.ttl <= 1 {
        return Err(Fault::Icmp(
            IcmpError::TTL_EXCEEDED,
            DropReason::TtlExceeded,
        ));
    }

    let mtu = egress.mtu;
    if egress.tunnel.is_some() {
        // The uplink cuts GSO frames at gso_size and fragments what has
        // no DF; what has DF must fit as it is (per segment), on the
        // path as learned (egress.mtu) as well as on the uplink.
        let len = if frame.vnet.is_gso() {
            match tcp_segment_len(frame) {
                Some(seg) => seg,
                None => return Err(Fault::Drop(DropReason::GsoUnsupported)),
            }
        } else {
            pkt.total_len
        };
        if len > usize::from(mtu) && pkt.dont_frag {
            let reason = if len > usize::from(egress.entry.info.mtu) {
                DropReason::FragNeeded
            } else {
                DropReason::PathMtuExceeded
            };
            return Err(Fault::Icmp(IcmpError::frag_needed(mtu), reason));
        }
    } else if frame.vnet.is_gso() {
        // GSO super-segments are cut at gso_size by the receiving stack,
        // at most at what this port carries.
        fit_gso_size(frame, mtu);
    } else if pkt.total_len > usize::from(mtu) {
        return Err(if pkt.dont_frag {
            Fault::Icmp(IcmpError::frag_needed(mtu), DropReason::FragNeeded)
        } else {
            Fault::Drop(DropReason::TooBig)
        });
    }

    let d = frame.data_mut();
    d[field::ethernet::DESTINATION].copy_from_slice(&egress.mac());
    d[field::ethernet::SOURCE].copy_from_slice(&cfg.router_mac);
    if decrement {
        // TTL >= 2 was checked above, so this cannot refuse.
        wire::decrement_ttl(&mut d[ETHERNET_HEADER_LEN..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

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
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_B));
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
        assert_eq!(v, fwd(HOST));
        assert_eq!(&f.data()[0..6], &HOST_MAC);
        assert_eq!(&f.data()[6..12], &ROUTER_MAC);
        assert_eq!(&f.data()[14..], ip_part(&input), "IP packet untouched");
        // Service range goes to the host as well; TTL 1 is no obstacle.
        let (v, f) = env.run(POD_A, &from_a(Ipv4Addr::new(10, 96, 0, 10), 1, DF, 60));
        assert_eq!(v, fwd(HOST));
        assert_eq!(f.data()[14 + 8], 1);
    }

    #[test]
    fn host_to_pod_keeps_ttl_and_any_source() {
        let mut env = Env::new();
        for src in [NODE_IP, INTERNET_IP] {
            let input = from_host(src, A_IP, 1);
            let (v, f) = env.run(HOST, &input);
            assert_eq!(v, fwd(POD_A));
            assert_eq!(&f.data()[0..6], &A_MAC);
            assert_eq!(&f.data()[6..12], &ROUTER_MAC);
            assert_eq!(&f.data()[14..], ip_part(&input));
        }
    }

    #[test]
    fn ttl_one_sends_time_exceeded() {
        let mut env = Env::new();
        for ttl in [1, 0] {
            let input = from_a(B_IP, ttl, DF, 120);
            let (v, f) = env.run(POD_A, &input);
            assert_eq!(v, fwd(POD_A));
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
        assert_eq!(v, fwd(POD_B));
        assert_eq!(f.data()[14 + 8], 1);
        // An echo request (not an error) with TTL 1 gets its time exceeded.
        let echo = [8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
        let ip = ipv4(A_IP, B_IP, 1, 1, DF, &[], &echo);
        let (v, f) = env.run(POD_A, &eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 11, 0, 0, &ip);
    }

    #[test]
    fn df_too_big_sends_frag_needed() {
        let mut env = Env::new();
        let input = from_a(C_IP, 64, DF, 1001);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 4, 1000, ip_part(&input));
        assert_eq!(env.counters.drops(DropReason::FragNeeded), 1);
        // Exactly the MTU fits.
        let (v, _) = env.run(POD_A, &from_a(C_IP, 64, DF, 1000));
        assert_eq!(v, fwd(POD_C));
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
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_C));
        assert_eq!(f.vnet, vnet);
        assert_eq!(f.len(), input.len());
        assert_eq!(check_ipv4(&f.data()[14..]).unwrap().hop_limit(), 63);
    }

    /// A TCP GSO frame whose segments would not fit the pod's MTU (one
    /// the uplink took from the kernel's GRO carries the link's size) is
    /// cut at what the port carries: gso_size lowered, nothing else.
    #[test]
    fn gso_size_is_lowered_to_the_egress_mtu() {
        let mut env = Env::new();
        let mut f = gso_from_a(C_IP, 8928, 30_000, VnetHdr::GSO_TCPV4);
        let input = f.data().to_vec();
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_C));
        assert_eq!(f.vnet.gso_size, 1000 - 20 - 32);
        assert_eq!(f.len(), input.len());
        let mut f = gso_from_a(C_IP, 900, 30_000, VnetHdr::GSO_TCPV4);
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_C));
        assert_eq!(f.vnet.gso_size, 900, "a size that fits is kept");
    }

    #[test]
    fn tunnel_mtu_frag_needed_or_fragment() {
        let mut env = uplink_env(EncapMode::Always);
        // Exactly the path MTU fits.
        let (v, _) = env.run(POD_A, &from_a(REMOTE_IP, 64, DF, 1480));
        assert_eq!(v, tunnel_to(OTHER_NODE));
        // One more byte with DF: frag needed, MTU 1480, back to the pod.
        let input = from_a(REMOTE_IP, 64, DF, 1481);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 4, 1480, ip_part(&input));
        assert_eq!(env.counters.drops(DropReason::FragNeeded), 1);
        // Without DF the uplink fragments it.
        let (v, f) = env.run(POD_A, &from_a(REMOTE_IP, 64, 0, 1500));
        assert_eq!(v, tunnel_to(OTHER_NODE));
        assert_eq!(f.len(), 14 + 1500);
    }

    /// A path MTU learned for FAR_NODE (outer 1400, so 1380 inside IPIP)
    /// lowers the bound for that node only; DF packets between the two get
    /// frag needed with 1380 (`path_mtu_exceeded`), GSO frames per
    /// segment; without DF they go on (the uplink side fragments).
    #[test]
    fn learned_path_mtu_lowers_the_tunnel_mtu_per_node() {
        use crate::pmtu::{OuterKind, PathMtuSnapshot};
        let mut env = uplink_env(EncapMode::Always);
        env.path_mtus = PathMtuSnapshot::new(OuterKind::Ipip, &[(FAR_NODE, 1400)]);
        let (v, _) = env.run(POD_A, &from_a(FAR_POD, 64, DF, 1380));
        assert_eq!(v, tunnel_to(FAR_NODE));
        let input = from_a(FAR_POD, 64, DF, 1381);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 4, 1380, ip_part(&input));
        assert_eq!(env.counters.drops(DropReason::PathMtuExceeded), 1);
        // Too big for the uplink itself: still frag_needed, with the
        // smaller (learned) MTU.
        let (_, f) = env.run(POD_A, &from_a(FAR_POD, 64, DF, 1500));
        assert_eq!(&f.data()[14 + 26..14 + 28], &1380u16.to_be_bytes());
        assert_eq!(env.counters.drops(DropReason::FragNeeded), 1);
        // Another node's path is untouched.
        let (v, _) = env.run(POD_A, &from_a(REMOTE_IP, 64, DF, 1480));
        assert_eq!(v, tunnel_to(OTHER_NODE));
        // No DF: forwarded for the uplink to fragment.
        let (v, _) = env.run(POD_A, &from_a(FAR_POD, 64, 0, 1480));
        assert_eq!(v, tunnel_to(FAR_NODE));
        // GSO: 20 + 32 + 1328 = 1380 fits, 1329 does not.
        let mut f = gso_from_a(FAR_POD, 1328, 30_000, VnetHdr::GSO_TCPV4);
        assert_eq!(env.process(POD_A, &mut f), tunnel_to(FAR_NODE));
        let mut f = gso_from_a(FAR_POD, 1329, 30_000, VnetHdr::GSO_TCPV4);
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_A));
        assert_eq!(&f.data()[14 + 26..14 + 28], &1380u16.to_be_bytes());
        assert_eq!(env.counters.drops(DropReason::PathMtuExceeded), 2);
        // VXLAN's overhead is 50: outer 1400 is 1350 inside.
        env.path_mtus = PathMtuSnapshot::new(OuterKind::Vxlan { port: 4789 }, &[(FAR_NODE, 1400)]);
        let (_, f) = env.run(POD_A, &from_a(FAR_POD, 64, DF, 1400));
        assert_eq!(&f.data()[14 + 26..14 + 28], &1350u16.to_be_bytes());
    }

    #[test]
    fn gso_to_the_tunnel_is_checked_per_segment() {
        let mut env = uplink_env(EncapMode::Always);
        // 20 + 32 + 1428 = 1480: fits.
        let mut f = gso_from_a(REMOTE_IP, 1428, 30_000, VnetHdr::GSO_TCPV4);
        let vnet = f.vnet;
        assert_eq!(env.process(POD_A, &mut f), tunnel_to(OTHER_NODE));
        assert_eq!(f.vnet, vnet, "offload request kept for the uplink");
        assert_eq!(f.data()[14 + 8], 63);
        // 20 + 32 + 1448 = 1500 with DF: frag needed 1480.
        let mut f = gso_from_a(REMOTE_IP, 1448, 30_000, VnetHdr::GSO_TCPV4);
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_A));
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
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_B));
    }
}
