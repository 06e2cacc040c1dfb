//! Stage 1, validate: the Ethernet header of every frame (addressed to the
//! router? ARP or IPv4?) and, for IPv4, the header, source and destination
//! of the packet, before anything reads further into it.
//!
//! Invariants: reads only what a length check covered; an accepted IPv4
//! frame ends where its packet does (Ethernet padding stripped), has a
//! valid header and checksum, a source that is neither a bogon nor, from a
//! pod, another address than the pod's own, and a unicast destination.
use std::net::Ipv4Addr;

use crate::counters::DropReason;
use crate::frame::Frame;
use crate::port::PortRole;
use crate::wire::{self, field, Ipv4Error, ETHERNET_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4};

const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// The I/G bit of a MAC's first octet: set for group (multicast) addresses,
/// IPv4's 01:00:5e:.. and IPv6's 33:33:.. alike.
const MAC_GROUP_BIT: u8 = 0x01;

/// What an Ethernet frame addressed to the router carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EtherKind {
    Arp,
    /// `broadcast`: sent to the broadcast MAC.
    Ipv4 {
        broadcast: bool,
    },
}

/// Checks the Ethernet header: addressed to `router_mac` or broadcast, and
/// ARP or IPv4.
#[inline(always)]
pub(super) fn ethernet(router_mac: &[u8; 6], data: &[u8]) -> Result<EtherKind, DropReason> {
    if data.len() < ETHERNET_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let dst = &data[field::ethernet::DESTINATION];
    let broadcast = dst == BROADCAST_MAC;
    if dst != router_mac && !broadcast {
        return Err(if dst[0] & MAC_GROUP_BIT != 0 {
            DropReason::Multicast
        } else {
            DropReason::NotForRouter
        });
    }
    let t = &data[field::ethernet::ETHERTYPE];
    match u16::from_be_bytes([t[0], t[1]]) {
        ETHERTYPE_ARP => Ok(EtherKind::Arp),
        ETHERTYPE_IPV4 => Ok(EtherKind::Ipv4 { broadcast }),
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

/// What validation learned about an IPv4 packet, for the later stages.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ipv4Facts {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub dont_frag: bool,
    /// The packet's total length (the frame is Ethernet + this).
    pub total_len: usize,
    /// It came from the host port (the node's own stack).
    pub from_host: bool,
}

/// The drop reason a frame whose IPv4 header [`wire::check_ipv4`] refused
/// is counted under.
fn ipv4_drop_reason(e: Ipv4Error) -> DropReason {
    match e {
        Ipv4Error::Truncated => DropReason::Truncated,
        Ipv4Error::BadHeader => DropReason::BadIpHeader,
        Ipv4Error::BadChecksum => DropReason::BadIpChecksum,
    }
}

/// Source addresses no packet may carry: 0.0.0.0/8 ("this network"),
/// 127.0.0.0/8 (loopback), 224.0.0.0/4 (multicast), 255.255.255.255.
pub(super) fn is_bad_source(a: Ipv4Addr) -> bool {
    a.octets()[0] == 0 || a.is_loopback() || a.is_multicast() || a.is_broadcast()
}

/// Validates the IPv4 packet of an Ethernet frame received on a port of
/// `role` (`eth_broadcast`: sent to the broadcast MAC) and strips any
/// Ethernet padding.
#[inline(always)]
pub(super) fn ipv4(
    frame: &mut Frame,
    role: &PortRole,
    eth_broadcast: bool,
) -> Result<Ipv4Facts, DropReason> {
    let ip = wire::check_ipv4(&frame.data()[ETHERNET_HEADER_LEN..]).map_err(ipv4_drop_reason)?;
    let facts = Ipv4Facts {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        ttl: ip.hop_limit(),
        dont_frag: ip.dont_frag(),
        total_len: usize::from(ip.total_len()),
        from_host: matches!(role, PortRole::Host { .. }),
    };
    // Strip Ethernet padding: the frame ends where the packet does.
    frame.set_len(ETHERNET_HEADER_LEN + facts.total_len);

    if is_bad_source(facts.src) {
        return Err(DropReason::BadSource);
    }
    if facts.dst.is_multicast() || facts.dst.is_broadcast() || eth_broadcast {
        return Err(DropReason::Multicast);
    }
    // Anti-spoofing (Calico's RPF check): a pod sends as itself. The host
    // may send from any address; another node's router is a hop like a
    // pod's, its packets were checked there.
    if let PortRole::Pod { ip, .. } = *role {
        if facts.src != ip {
            return Err(DropReason::SpoofedSource);
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

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
        assert_eq!(v, fwd(POD_B));
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
            assert_eq!(v, fwd(POD_B), "flags {flags:#x}");
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
    fn ethernet_padding_is_stripped() {
        let mut env = Env::new();
        let ip = ipv4(A_IP, B_IP, 17, 64, DF, &[], &udp(8));
        let mut b = eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip);
        b.resize(60, 0xaa);
        let (v, f) = env.run(POD_A, &b);
        assert_eq!(v, fwd(POD_B));
        assert_eq!(f.len(), 14 + 28);
        assert_eq!(&f.data()[14 + 20..], &ip[20..]);
    }
}
