//! VXLAN (RFC 7348) on the wire: the 8-byte VXLAN header, the 50 bytes of
//! outer headers a VXLAN uplink puts in front of an inner Ethernet frame,
//! the VTEP MAC every node has, and the translation of offload metadata
//! between an inner frame and its VXLAN-in-UDP form (the 24-byte
//! `virtio_net_hdr_v1_hash_tunnel` a TAP with `TUN_F_UDP_TUNNEL_GSO`
//! exchanges).
//!
//! Layout of what a VXLAN uplink writes and reads (IPv4 underlay, no
//! options, no VLAN):
//!
//! ```text
//!  0  outer Ethernet  (14)  dst: the uplink TAP's own MAC (the node's
//!                           kernel takes the frame and routes it)
//! 14  outer IPv4      (20)  node -> node, protocol 17, TTL 64, DF set
//! 34  UDP             (8)   src: a flow hash (ECMP on the underlay),
//!                           dst: the VXLAN port, checksum 0 (RFC 7348 5)
//! 42  VXLAN           (8)   flags 0x08 (I), VNI
//! 50  inner Ethernet  (14)  dst: the peer's VTEP MAC, src: ours
//! 64  inner IPv4 ...
//! ```
//!
//! Two wire profiles interoperate with the kernel's VXLAN devices:
//! Calico's `vxlan.calico` (VNI 4096, UDP 4789) and Flannel's `flannel.1`
//! (VNI 1, UDP 8472). Both put the receiving node's VTEP MAC into the inner
//! destination; this module only knows VNI and port, the profile is
//! configuration.
//!
//! Invariants: nothing here allocates or panics on untrusted input; views
//! over received bytes come from [`VxlanHeader::new_checked`] or
//! [`OuterHeaders::parse`], which check lengths first; the offload
//! translations refuse (rather than guess) metadata they cannot map.
use std::net::Ipv4Addr;

use crate::frame::VnetHdr;
use crate::wire::{ones_complement_sum, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN};

/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Outer Ethernet + IPv4 + UDP + VXLAN: the bytes in front of the inner
/// Ethernet frame.
pub const OUTER_LEN: usize =
    ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
/// Where the outer UDP header starts.
pub const OUTER_UDP_OFFSET: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
/// Where the inner IPv4 header starts.
pub const INNER_IP_OFFSET: usize = OUTER_LEN + ETHERNET_HEADER_LEN;
/// What VXLAN costs an inner IPv4 packet against the underlay MTU: outer
/// IPv4, UDP, VXLAN and the inner Ethernet header (the kernel's `vxlan`
/// device MTU is its lower device's minus this).
pub const MTU_OVERHEAD: u16 =
    (IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN) as u16;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Calico's profile (`vxlan.calico`).
pub const CALICO_VNI: u32 = 4096;
pub const CALICO_PORT: u16 = 4789;
/// Flannel's profile (`flannel.1`, the kernel's historic default port).
pub const FLANNEL_VNI: u32 = 1;
pub const FLANNEL_PORT: u16 = 8472;

/// The "I" flag: the VNI is valid (RFC 7348 section 5).
const FLAG_VNI_VALID: u8 = 0x08;
const IPPROTO_UDP: u8 = 17;

/// The VTEP MAC of the node at `node`: `0e:70` then the four octets of its
/// address. Locally administered (bit 1 of the first octet set), unicast
/// (bit 0 clear). Any node can compute any other node's from the address
/// alone, so nodes that learn each other by BGP need no configuration; a
/// route may carry another MAC for a node whose VTEP was made elsewhere
/// (`[[routes]] vtep_mac`).
pub fn vtep_mac(node: Ipv4Addr) -> [u8; 6] {
    let o = node.octets();
    [0x0e, 0x70, o[0], o[1], o[2], o[3]]
}

/// What a VXLAN uplink needs to know about its own tunnel, carried in its
/// port role (so the pipeline's receive checks read it with the port
/// table snapshot of the batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanParams {
    /// UDP destination port (4789 Calico, 8472 Flannel).
    pub port: u16,
    /// VNI sent and the only one accepted (4096 Calico, 1 Flannel).
    pub vni: u32,
    /// This node's VTEP MAC: the inner source we send, the only inner
    /// destination accepted.
    pub mac: [u8; 6],
}

/// A view of a VXLAN header over a byte buffer (smoltcp's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buf: T,
}

/// Why received bytes are not a VXLAN header we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VxlanError {
    /// Fewer than 8 bytes.
    Truncated,
    /// The I flag is clear: the VNI field is not valid.
    NoVni,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// A view without checks (for buffers we wrote ourselves).
    pub fn new_unchecked(buf: T) -> Self {
        VxlanHeader { buf }
    }

    /// A view over untrusted bytes: at least 8 of them, I flag set.
    /// Reserved bits are ignored, as RFC 7348 asks of receivers.
    pub fn new_checked(buf: T) -> Result<Self, VxlanError> {
        let b = buf.as_ref();
        if b.len() < VXLAN_HEADER_LEN {
            return Err(VxlanError::Truncated);
        }
        if b[0] & FLAG_VNI_VALID == 0 {
            return Err(VxlanError::NoVni);
        }
        Ok(VxlanHeader { buf })
    }

    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[0]
    }

    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([0, b[4], b[5], b[6]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    /// Writes a whole header: I flag, `vni` (masked to 24 bits), reserved
    /// bits zero.
    pub fn fill(&mut self, vni: u32) {
        let b = &mut self.buf.as_mut()[..VXLAN_HEADER_LEN];
        let v = (vni & MAX_VNI).to_be_bytes();
        b.copy_from_slice(&[FLAG_VNI_VALID, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

/// What the outer headers of one VXLAN packet say, for the send side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterHeaders {
    /// Outer Ethernet destination (the uplink TAP's MAC when sending).
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IPv4 identification.
    pub ident: u16,
    /// TOS copied from the inner packet.
    pub tos: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub vni: u32,
}

/// Why bytes from the uplink are not a VXLAN packet for us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapError {
    /// Shorter than the outer headers plus an inner Ethernet header, or
    /// lengths that do not add up, or not IPv4/UDP, or an outer fragment.
    Malformed,
    /// Outer IPv4 header checksum wrong.
    BadChecksum,
    /// Not our UDP port (the classifier should never hand us those).
    WrongPort,
    /// I flag clear or the header truncated.
    BadHeader,
}

/// The fields of a received packet's outer headers the receive checks need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedOuter {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub vni: u32,
    /// The inner Ethernet destination.
    pub inner_dst_mac: [u8; 6],
    /// Bytes of the outer IPv4 packet (its total length) after the outer
    /// Ethernet header.
    pub ip_len: usize,
}

impl OuterHeaders {
    /// Writes the 50 outer bytes into `buf[..OUTER_LEN]` for an inner
    /// Ethernet frame of `inner_len` bytes. Returns false (and writes
    /// nothing) if `buf` is too short or the packet would exceed 65535
    /// bytes of IPv4.
    pub fn write(&self, buf: &mut [u8], inner_len: usize) -> bool {
        if buf.len() < OUTER_LEN {
            return false;
        }
        if !self.write_from_ip(&mut buf[ETHERNET_HEADER_LEN..], inner_len) {
            return false;
        }
        buf[0..6].copy_from_slice(&self.dst_mac);
        buf[6..12].copy_from_slice(&self.src_mac);
        buf[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        true
    }

    /// Writes the outer IPv4, UDP and VXLAN headers (36 bytes, no outer
    /// Ethernet: for a raw IP socket) into `buf` for an inner Ethernet
    /// frame of `inner_len` bytes. Returns false (and writes nothing) if
    /// `buf` is too short or the packet would exceed 65535 bytes.
    pub fn write_from_ip(&self, buf: &mut [u8], inner_len: usize) -> bool {
        const IP_UDP_VXLAN: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
        let ip_len = IP_UDP_VXLAN + inner_len;
        if buf.len() < IP_UDP_VXLAN || ip_len > usize::from(u16::MAX) {
            return false;
        }
        let ip = &mut buf[..IPV4_HEADER_LEN];
        ip[0] = 0x45;
        ip[1] = self.tos;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
        // DF set: a router whose next link is narrower than ours answers
        // with ICMP frag needed, from which the path MTU is learned
        // (`crate::pmtu`). Outer fragments would be lost: the receive
        // classifier takes whole packets only.
        ip[6..8].copy_from_slice(&[0x40, 0]);
        ip[8] = crate::wire::DEFAULT_TTL;
        ip[9] = IPPROTO_UDP;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let sum = !ones_complement_sum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut buf[IPV4_HEADER_LEN..IPV4_HEADER_LEN + UDP_HEADER_LEN];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&((ip_len - IPV4_HEADER_LEN) as u16).to_be_bytes());
        // No UDP checksum over IPv4 (RFC 7348 section 5; Linux's default).
        udp[6..8].copy_from_slice(&[0, 0]);
        VxlanHeader::new_unchecked(&mut buf[IPV4_HEADER_LEN + UDP_HEADER_LEN..IP_UDP_VXLAN])
            .fill(self.vni);
        true
    }

    /// Reads the outer headers of an untrusted frame (outer Ethernet
    /// first). Checks: IPv4 without options... or with them refused
    /// (the u32 classifier only matches IHL 5), total length within the
    /// frame, no fragment, UDP, UDP length consistent, the VXLAN I flag,
    /// room for an inner Ethernet header. The outer IPv4 checksum is
    /// verified unless `csum_verified` (the kernel said so).
    pub fn parse(frame: &[u8], csum_verified: bool) -> Result<ReceivedOuter, DecapError> {
        if frame.len() < OUTER_LEN + ETHERNET_HEADER_LEN {
            return Err(DecapError::Malformed);
        }
        if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
            return Err(DecapError::Malformed);
        }
        let ip = &frame[ETHERNET_HEADER_LEN..];
        if ip[0] != 0x45 || ip[9] != IPPROTO_UDP {
            return Err(DecapError::Malformed);
        }
        // MF or a fragment offset: VXLAN is never reassembled here.
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return Err(DecapError::Malformed);
        }
        let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        // 36 bytes of IPv4, UDP and VXLAN plus the inner Ethernet header.
        if ip_len < OUTER_LEN || ip_len > ip.len() {
            return Err(DecapError::Malformed);
        }
        if !csum_verified && ones_complement_sum(&ip[..IPV4_HEADER_LEN]) != 0xffff {
            return Err(DecapError::BadChecksum);
        }
        let udp = &ip[IPV4_HEADER_LEN..];
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len != ip_len - IPV4_HEADER_LEN {
            return Err(DecapError::Malformed);
        }
        let vx = VxlanHeader::new_checked(&udp[UDP_HEADER_LEN..]).map_err(|e| match e {
            VxlanError::Truncated => DecapError::Malformed,
            VxlanError::NoVni => DecapError::BadHeader,
        })?;
        let mut inner_dst_mac = [0u8; 6];
        inner_dst_mac.copy_from_slice(&frame[OUTER_LEN..OUTER_LEN + 6]);
        Ok(ReceivedOuter {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            dst_port: u16::from_be_bytes([udp[2], udp[3]]),
            vni: vx.vni(),
            inner_dst_mac,
            ip_len,
        })
    }
}

/// The outer UDP source port for a flow with hash `hash`: in the kernel's
/// default ephemeral range 32768-60999, so underlay ECMP spreads flows
/// and one flow always takes one path.
pub fn source_port(hash: u32) -> u16 {
    const LOW: u32 = 32768;
    const SPAN: u32 = 61000 - LOW;
    (LOW + ((u64::from(hash) * u64::from(SPAN)) >> 32) as u32) as u16
}

/// `struct virtio_net_hdr_v1_hash_tunnel` (Linux 6.17+): the 12-byte
/// `virtio_net_hdr_v1`, 8 bytes of hash report (unused here), then the
/// offsets of the outer transport header and the inner network header.
pub const TUNNEL_VNET_HDR_LEN: usize = 24;

/// The offload header of a VXLAN-in-UDP frame on an uplink TAP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelVnetHdr {
    /// Flags, GSO type and offsets, counted from the outer Ethernet header.
    pub base: VnetHdr,
    pub outer_th_offset: u16,
    pub inner_nh_offset: u16,
}

/// `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`: the outer UDP checksum is partial.
pub const F_UDP_TUNNEL_CSUM: u8 = 0x08;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`, or-ed with the inner GSO type.
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6`.
pub const GSO_UDP_TUNNEL_IPV6: u8 = 0x40;

impl TunnelVnetHdr {
    pub fn to_bytes(&self) -> [u8; TUNNEL_VNET_HDR_LEN] {
        let mut b = [0u8; TUNNEL_VNET_HDR_LEN];
        b[..crate::frame::VNET_HDR_LEN].copy_from_slice(&self.base.to_bytes());
        // num_buffers (2) and the hash report (8) stay zero.
        b[20..22].copy_from_slice(&self.outer_th_offset.to_le_bytes());
        b[22..24].copy_from_slice(&self.inner_nh_offset.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; TUNNEL_VNET_HDR_LEN]) -> Self {
        let mut base = [0u8; crate::frame::VNET_HDR_LEN];
        base.copy_from_slice(&b[..crate::frame::VNET_HDR_LEN]);
        TunnelVnetHdr {
            base: VnetHdr::from_bytes(&base),
            outer_th_offset: u16::from_le_bytes([b[20], b[21]]),
            inner_nh_offset: u16::from_le_bytes([b[22], b[23]]),
        }
    }

    /// The header for the VXLAN form of an inner frame whose offload
    /// request is `inner` (offsets counted from the inner Ethernet
    /// header): offsets move by [`OUTER_LEN`]; a TCPv4 GSO request becomes
    /// `UDP_TUNNEL_IPV4 | TCPV4` with the tunnel offsets, so the kernel
    /// cuts the segment after routing it (outer UDP checksum stays 0).
    /// `None` for GSO types other than TCPv4.
    pub fn encap(inner: &VnetHdr) -> Option<TunnelVnetHdr> {
        let shift = OUTER_LEN as u16;
        let mut base = *inner;
        if base.flags & VnetHdr::F_NEEDS_CSUM != 0 {
            base.csum_start = base.csum_start.checked_add(shift)?;
        }
        if !inner.is_gso() {
            base.hdr_len = 0;
            base.gso_size = 0;
            return Some(TunnelVnetHdr {
                base,
                ..TunnelVnetHdr::default()
            });
        }
        if inner.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_TCPV4 {
            return None;
        }
        base.gso_type = inner.gso_type | GSO_UDP_TUNNEL_IPV4;
        base.hdr_len = base.hdr_len.checked_add(shift)?;
        Some(TunnelVnetHdr {
            base,
            outer_th_offset: OUTER_UDP_OFFSET as u16,
            inner_nh_offset: INNER_IP_OFFSET as u16,
        })
    }

    /// The offload request of the inner frame once the outer headers are
    /// stripped: the reverse of [`TunnelVnetHdr::encap`]. `None` when it
    /// cannot be mapped (an IPv6 tunnel, an inner GSO type other than
    /// TCPv4, offsets inside the outer headers).
    pub fn decap(&self) -> Option<VnetHdr> {
        let shift = OUTER_LEN as u16;
        let mut v = self.base;
        v.flags &= !F_UDP_TUNNEL_CSUM;
        if v.gso_type & GSO_UDP_TUNNEL_IPV6 != 0 {
            return None;
        }
        let tunnel_gso = v.gso_type & GSO_UDP_TUNNEL_IPV4 != 0;
        v.gso_type &= !GSO_UDP_TUNNEL_IPV4;
        if v.flags & VnetHdr::F_NEEDS_CSUM != 0 {
            if usize::from(v.csum_start) < INNER_IP_OFFSET + IPV4_HEADER_LEN {
                // A partial checksum in the outer headers: the inner one
                // is complete (the sender filled it), nothing to ask for.
                if tunnel_gso || v.is_gso() {
                    return None;
                }
                v.flags &= !VnetHdr::F_NEEDS_CSUM;
                v.csum_start = 0;
                v.csum_offset = 0;
            } else {
                v.csum_start -= shift;
            }
        }
        if v.is_gso() {
            if v.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_TCPV4 || !tunnel_gso {
                return None;
            }
            v.hdr_len = v.hdr_len.saturating_sub(shift);
        } else {
            v.hdr_len = 0;
            v.gso_size = 0;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

    #[test]
    fn vtep_mac_is_local_unicast_and_names_the_node() {
        let m = vtep_mac(NODE_A);
        assert_eq!(m, [0x0e, 0x70, 192, 168, 100, 1]);
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_ne!(vtep_mac(NODE_A), vtep_mac(NODE_B));
    }

    #[test]
    fn vxlan_header_golden_bytes_both_ways() {
        // Flannel: VNI 1. Calico: VNI 4096 (0x001000).
        let mut b = [0xffu8; 8];
        VxlanHeader::new_unchecked(&mut b[..]).fill(FLANNEL_VNI);
        assert_eq!(b, [0x08, 0, 0, 0, 0, 0, 1, 0]);
        VxlanHeader::new_unchecked(&mut b[..]).fill(CALICO_VNI);
        assert_eq!(b, [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0]);
        let h = VxlanHeader::new_checked(&b[..]).unwrap();
        assert_eq!((h.flags(), h.vni()), (0x08, 4096));
        // Reserved bits set by a sender are ignored.
        let odd = [0x0c, 0xaa, 0xbb, 0xcc, 0xab, 0xcd, 0xef, 0x99];
        assert_eq!(VxlanHeader::new_checked(&odd[..]).unwrap().vni(), 0xabcdef);
        assert_eq!(
            VxlanHeader::new_checked(&[0u8, 0, 0, 0, 0, 0, 1, 0][..]),
            Err(VxlanError::NoVni)
        );
        assert_eq!(
            VxlanHeader::new_checked(&b[..7]),
            Err(VxlanError::Truncated)
        );
    }

    fn outer() -> OuterHeaders {
        OuterHeaders {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: vtep_mac(NODE_A),
            src: NODE_A,
            dst: NODE_B,
            ident: 0x1234,
            tos: 0,
            src_port: 50000,
            dst_port: FLANNEL_PORT,
            vni: FLANNEL_VNI,
        }
    }

    /// The outer headers, byte for byte, as `tcpdump -x` shows the
    /// kernel's own VXLAN packets (with `df set`; checksum worked out by
    /// hand: 0x4500+0x0046+0x1234+0x4000+0x4011+0xc0a8+0x6401+0xc0a8+0x6402
    /// = 0x3_20de -> 0x20e1 -> !0x20e1 = 0xdf1e).
    #[test]
    fn outer_headers_golden_bytes_both_ways() {
        let mut buf = [0u8; OUTER_LEN + 14 + 20];
        let inner_len = 14 + 20;
        assert!(outer().write(&mut buf, inner_len));
        #[rustfmt::skip]
        let want: [u8; OUTER_LEN] = [
            2, 0, 0, 0, 0, 1,  0x0e, 0x70, 192, 168, 100, 1,  0x08, 0x00,
            0x45, 0x00, 0x00, 0x46, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xdf, 0x1e,
            192, 168, 100, 1,  192, 168, 100, 2,
            0xc3, 0x50, 0x21, 0x18, 0x00, 0x32, 0x00, 0x00,
            0x08, 0, 0, 0, 0, 0, 1, 0,
        ];
        assert_eq!(&buf[..OUTER_LEN], &want[..]);
        // An inner frame for node B's VTEP.
        buf[OUTER_LEN..OUTER_LEN + 6].copy_from_slice(&vtep_mac(NODE_B));
        buf[OUTER_LEN + 12..OUTER_LEN + 14].copy_from_slice(&[0x08, 0x00]);
        let got = OuterHeaders::parse(&buf, false).unwrap();
        assert_eq!(
            got,
            ReceivedOuter {
                src: NODE_A,
                dst: NODE_B,
                dst_port: FLANNEL_PORT,
                vni: FLANNEL_VNI,
                inner_dst_mac: vtep_mac(NODE_B),
                ip_len: 0x46,
            }
        );
    }

    #[test]
    fn parse_refuses_what_is_not_vxlan() {
        let mut good = [0u8; OUTER_LEN + 14 + 20];
        assert!(outer().write(&mut good, 14 + 20));
        type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Mutation, DecapError)> = vec![
            (
                Box::new(|b| b.truncate(OUTER_LEN + 13)),
                DecapError::Malformed,
            ),
            (Box::new(|b| b[12] = 0x86), DecapError::Malformed),
            (Box::new(|b| b[14] = 0x46), DecapError::Malformed),
            (Box::new(|b| b[23] = 6), DecapError::Malformed),
            (Box::new(|b| b[20] = 0x20), DecapError::Malformed), // MF
            (Box::new(|b| b[17] = 0xff), DecapError::Malformed), // total > frame
            (Box::new(|b| b[39] = 0x41), DecapError::Malformed), // UDP length
            (Box::new(|b| b[42] = 0), DecapError::BadHeader),    // no I flag
            (Box::new(|b| b[26] ^= 1), DecapError::BadChecksum),
        ];
        for (k, (mutate, want)) in cases.iter().enumerate() {
            let mut b = good.to_vec();
            mutate(&mut b);
            assert_eq!(OuterHeaders::parse(&b, false), Err(*want), "case {k}");
        }
        // Every truncation is refused without a panic.
        for n in 0..good.len() {
            let _ = OuterHeaders::parse(&good[..n], false);
        }
    }

    #[test]
    fn source_port_stays_in_the_ephemeral_range() {
        for h in [0, 1, u32::MAX / 2, u32::MAX] {
            let p = source_port(h);
            assert!((32768..61000).contains(&p), "{p}");
        }
        assert_ne!(source_port(0), source_port(u32::MAX));
    }

    /// The header the probe (`vxlan_tap_gso.py`) showed the kernel takes:
    /// flags NEEDS_CSUM, gso_type 0x21, csum_start at the inner TCP
    /// header (84), outer_th 34, inner_nh 64.
    #[test]
    fn tunnel_vnet_header_golden_bytes_both_ways() {
        let inner = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        let t = TunnelVnetHdr::encap(&inner).unwrap();
        #[rustfmt::skip]
        let want: [u8; 24] = [
            0x01, 0x21, 104, 0, 0x76, 0x05, 84, 0, 16, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0,
            34, 0, 64, 0,
        ];
        assert_eq!(t.to_bytes(), want);
        assert_eq!(TunnelVnetHdr::from_bytes(&want), t);
        assert_eq!(t.decap(), Some(inner));
        // What the receive probe read: the same, plus the outer UDP
        // checksum flag some senders set.
        let mut rx = t;
        rx.base.flags |= F_UDP_TUNNEL_CSUM;
        assert_eq!(rx.decap(), Some(inner));
    }

    #[test]
    fn tunnel_vnet_header_without_gso_and_refusals() {
        let csum = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let t = TunnelVnetHdr::encap(&csum).unwrap();
        assert_eq!(t.base.csum_start, 84);
        assert_eq!(
            (t.outer_th_offset, t.inner_nh_offset, t.base.gso_type),
            (0, 0, 0)
        );
        assert_eq!(t.decap(), Some(csum));
        assert_eq!(
            TunnelVnetHdr::encap(&VnetHdr::default()).unwrap().decap(),
            Some(VnetHdr::default())
        );
        let udp_gso = VnetHdr {
            gso_type: VnetHdr::GSO_UDP,
            gso_size: 100,
            ..VnetHdr::default()
        };
        assert_eq!(TunnelVnetHdr::encap(&udp_gso), None);
        let v6 = TunnelVnetHdr {
            base: VnetHdr {
                gso_type: GSO_UDP_TUNNEL_IPV6 | VnetHdr::GSO_TCPV4,
                gso_size: 1000,
                ..VnetHdr::default()
            },
            ..TunnelVnetHdr::default()
        };
        assert_eq!(v6.decap(), None);
        // GSO without the tunnel bit cannot be an inner request.
        let plain_gso = TunnelVnetHdr {
            base: VnetHdr {
                gso_type: VnetHdr::GSO_TCPV4,
                gso_size: 1000,
                ..VnetHdr::default()
            },
            ..TunnelVnetHdr::default()
        };
        assert_eq!(plain_gso.decap(), None);
        // A partial checksum in the outer UDP header: inner complete.
        let outer_csum = TunnelVnetHdr {
            base: VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..VnetHdr::default()
            },
            ..TunnelVnetHdr::default()
        };
        assert_eq!(outer_csum.decap(), Some(VnetHdr::default()));
    }
}
