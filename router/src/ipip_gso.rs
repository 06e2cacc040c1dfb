//! IPIP that carries a pod's 64 KiB TCP segments across the underlay
//! whole: a TAP in the node's namespace (`podrouter-ip`) whose tcx ingress
//! program turns each frame written into it into a correctly typed IPIP
//! GSO packet and sends it out of the uplink interface.
//!
//! # How a segment goes
//!
//! The raw-socket uplink ([`crate::uplink::Uplink`]) hands a TCP GSO frame
//! that fits the path to [`IpipGso::send`], which writes, in one `writev`:
//! a virtio header (`NEEDS_CSUM` at the inner TCP checksum, `TCPV4`, the
//! pod's `gso_size`), an Ethernet header to the TAP's own MAC, the outer
//! IPv4 header (node to node, protocol 4, TTL 64, TOS and DF of the inner
//! packet, its total length and checksum for the whole packet) and the
//! inner packet straight from the frame buffer. The TAP's kernel side
//! types it `SKB_GSO_TCPV4`: a device would cut it at the outer header.
//! The classifier ([`crate::bpf::ipip_gso_program`]) pops the outer header
//! and pushes it back with `BPF_F_ADJ_ROOM_ENCAP_L3_IPV4`, which sets the
//! inner headers, `skb->encapsulation` and `SKB_GSO_IPXIP4`; then
//! `bpf_redirect_neigh` routes the outer destination and sends the packet
//! out of the uplink with the next hop's MAC (no forwarding, no netfilter,
//! no TTL change). Where the uplink carries IPIP GSO whole (a veth), the
//! other node's raw socket reads it as one packet, as a GRO-merged one
//! (`gso::adopt_kernel_merged`); where it cannot (a NIC without IPIP TSO,
//! a veth whose peer runs XDP), the kernel's `ipip_gso_segment` cuts it
//! into IPIP packets with their own outer and inner headers.
//!
//! # Invariants
//!
//! - Only podrouterd writes to the TAP; its ingress program drops anything
//!   that is not Ethernet + IPv4 (no options) with protocol 4. Nothing is
//!   read from the TAP: what the kernel sends into it is left to the
//!   device's queue (it has no address, so that is next to nothing).
//! - The TAP is not persistent and the program is a BPF link: both go
//!   with their descriptors, so a killed podrouterd leaves neither.
//! - [`IpipGso::send`] refuses (`InvalidInput`, nothing written) a frame
//!   that is not TCPv4 GSO with its checksum at the inner TCP header, or
//!   whose outer packet would exceed 65535 bytes; the caller sends those
//!   another way. It never blocks beyond one `writev` and allocates
//!   nothing.
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::frame::{VnetHdr, VNET_HDR_LEN};
use crate::sys;
use crate::wire::{self, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN};

/// The TAP's name.
pub const TAP_NAME: &str = "podrouter-ip";
/// The name a podrouterd taking over from another uses while the other
/// still holds [`TAP_NAME`].
pub const TAP_NAME_ALT: &str = "podrouter-ip2";

/// Outer bytes written in front of the inner packet.
const HEAD_LEN: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;

/// What went through the TAP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpipGsoStats {
    /// GSO frames written.
    pub frames: u64,
    /// Inner bytes of those frames.
    pub bytes: u64,
    /// Writes the kernel refused (the frame then went the raw socket's
    /// way).
    pub errors: u64,
}

/// The TAP and its program. See the module documentation.
#[derive(Debug)]
pub struct IpipGso {
    tap: OwnedFd,
    name: String,
    tap_mac: [u8; 6],
    /// The tcx link: the program is attached while this is open.
    _link: OwnedFd,
    prog_id: u32,
    uplink_ifindex: u32,
    ident: AtomicU32,
    frames: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl IpipGso {
    /// Creates the TAP `name` (not persistent, left down: the caller
    /// raises it) in the calling thread's network namespace, loads the
    /// classifier for `uplink_ifindex` and attaches it to the TAP's
    /// ingress. Fails, leaving nothing behind, where the kernel has no
    /// tcx (before 6.6) or refuses the program.
    pub fn create(name: &str, uplink_ifindex: u32) -> io::Result<IpipGso> {
        let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        let tap = sys::open_tun()?;
        sys::tun_set_iff(tap.as_fd(), name, sys::TAP_FLAGS | sys::IFF_TUN_EXCL).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("cannot create TAP {name}: a device of that name exists"),
                )
            } else {
                ctx(&format!("cannot create TAP {name}"), e)
            }
        })?;
        sys::tun_set_vnet_hdr_sz(tap.as_fd(), sys::VNET_HDR_SIZE)?;
        sys::tun_set_offload(
            tap.as_fd(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN,
        )
        .map_err(|e| ctx(&format!("TAP {name}: offloads"), e))?;
        let tap_mac = sys::tun_hwaddr(tap.as_fd())?;
        let tap_index = sys::if_nametoindex(name)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("TAP {name} vanished"))
        })?;
        let insns = crate::bpf::ipip_gso_program(uplink_ifindex);
        let prog =
            sys::bpf::sched_cls_load(crate::bpf::IPIP_GSO_PROG_NAME, &insns, crate::bpf::LICENSE)
                .map_err(|e| ctx("loading the IPIP GSO classifier", e))?;
        let prog_id = sys::bpf::prog_id(prog.as_fd())?;
        let link = sys::bpf::tcx_ingress_link_create(prog.as_fd(), tap_index).map_err(|e| {
            ctx(
                &format!("attaching it to {name}'s tcx ingress (Linux 6.6+)"),
                e,
            )
        })?;
        Ok(IpipGso {
            tap,
            name: name.to_string(),
            tap_mac,
            _link: link,
            prog_id,
            uplink_ifindex,
            ident: AtomicU32::new(0),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The classifier's program id (as `bpftool prog` shows it).
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// The interface the packets leave by.
    pub fn uplink_ifindex(&self) -> u32 {
        self.uplink_ifindex
    }

    pub fn stats(&self) -> IpipGsoStats {
        IpipGsoStats {
            frames: self.frames.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Whether a frame with this offload header and inner packet `ip` is
    /// one [`IpipGso::send`] takes: TCPv4 GSO, checksum partial at the
    /// inner TCP header, an outer packet of at most 65535 bytes.
    pub fn takes(vnet: &VnetHdr, ip: &[u8]) -> bool {
        let hl = match ip.first() {
            Some(&b) if b >> 4 == 4 => usize::from(b & 0x0f) * 4,
            _ => return false,
        };
        vnet.gso_type & !VnetHdr::GSO_ECN == VnetHdr::GSO_TCPV4
            && vnet.gso_size > 0
            && vnet.flags & VnetHdr::F_NEEDS_CSUM != 0
            && usize::from(vnet.csum_start) == ETHERNET_HEADER_LEN + hl
            && vnet.csum_offset == 16
            && ip.len() >= hl + 20
            && ip.len() + IPV4_HEADER_LEN <= usize::from(u16::MAX)
    }

    /// Whether every segment of the TCP GSO packet `ip` (inner IP and TCP
    /// headers plus `gso_size`) fits `path_mtu` and carries DF: then the
    /// kernel may cut it with no fragmenting. (The pipeline answers DF
    /// segments that do not fit with frag needed; others go the raw
    /// socket's way, which fragments.)
    pub fn segments_fit(vnet: &VnetHdr, ip: &[u8], path_mtu: u16) -> bool {
        let Some(&b) = ip.first() else { return false };
        let hl = usize::from(b & 0x0f) * 4;
        let Some(&off) = ip.get(hl + 12) else {
            return false;
        };
        let df = ip.get(6).is_some_and(|f| f & 0x40 != 0);
        df && hl + usize::from(off >> 4) * 4 + usize::from(vnet.gso_size) <= usize::from(path_mtu)
    }

    /// Writes the TCP GSO packet `ip` (inner IPv4, with `vnet` as the
    /// pod's TAP gave it) as one IPIP GSO packet from `local` to `node`.
    /// `InvalidInput` (nothing written) if [`IpipGso::takes`] refuses it;
    /// a kernel error is counted in [`IpipGsoStats::errors`].
    pub fn send(
        &self,
        local: Ipv4Addr,
        node: Ipv4Addr,
        vnet: &VnetHdr,
        ip: &[u8],
    ) -> io::Result<()> {
        if !IpipGso::takes(vnet, ip) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a TCPv4 GSO packet the IPIP GSO path takes",
            ));
        }
        let (hdr, head) = self.headers(local, node, vnet, ip);
        let want = hdr.len() + head.len() + ip.len();
        match sys::write_parts(self.tap.as_fd(), &[&hdr, &head, ip]) {
            Ok(n) if n == want => {
                self.frames.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(ip.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(io::ErrorKind::WriteZero.into())
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The virtio header and the 34 bytes in front of the inner packet.
    fn headers(
        &self,
        local: Ipv4Addr,
        node: Ipv4Addr,
        vnet: &VnetHdr,
        ip: &[u8],
    ) -> ([u8; VNET_HDR_LEN], [u8; HEAD_LEN]) {
        let outer = IPV4_HEADER_LEN as u16;
        let hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: vnet.gso_type,
            hdr_len: vnet.hdr_len.saturating_add(outer),
            gso_size: vnet.gso_size,
            csum_start: vnet.csum_start + outer,
            csum_offset: vnet.csum_offset,
        };
        let mut head = [0u8; HEAD_LEN];
        head[0..6].copy_from_slice(&self.tap_mac);
        head[6..12].copy_from_slice(&crate::ROUTER_MAC);
        head[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let tos = ip[1];
        let df = ip[6] & 0x40 != 0;
        let id = self.ident.fetch_add(1, Ordering::Relaxed) as u16;
        let total = (IPV4_HEADER_LEN + ip.len()) as u16;
        wire::write_ipip_header(
            &mut head[ETHERNET_HEADER_LEN..],
            total,
            id,
            tos,
            df,
            local,
            node,
        );
        (hdr.to_bytes(), head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::check_ipv4;
    use podrouter_testkit::{in_private_netns, Netns};
    use smoltcp::wire::{IpAddress, TcpPacket};
    use std::process::Command;

    const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 9, 3, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 9, 3, 2);
    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 66);
    const PAYLOAD: usize = 60_000;
    /// What fits a 1500-byte underlay: 1500 - 20 (outer) - 20 - 20.
    const MSS: u16 = 1440;

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A 60,000-byte TCP GSO packet from POD_A to POD_B, checksum field
    /// holding the pseudo-header sum (as a pod's TAP hands it over).
    fn tcp_gso() -> (VnetHdr, Vec<u8>) {
        let total = 20 + 20 + PAYLOAD;
        let mut v = vec![0u8; total];
        v[0] = 0x45;
        v[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        v[6] = 0x40;
        v[8] = 64;
        v[9] = 6;
        v[12..16].copy_from_slice(&POD_A.octets());
        v[16..20].copy_from_slice(&POD_B.octets());
        let sum = !wire::ones_complement_sum(&v[..20]);
        v[10..12].copy_from_slice(&sum.to_be_bytes());
        v[20..22].copy_from_slice(&40000u16.to_be_bytes());
        v[22..24].copy_from_slice(&5201u16.to_be_bytes());
        v[24..28].copy_from_slice(&1000u32.to_be_bytes());
        v[32] = 0x50;
        v[33] = 0x18;
        v[34..36].copy_from_slice(&64000u16.to_be_bytes());
        for (i, b) in v[40..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let mut ps = [0u8; 12];
        ps[..8].copy_from_slice(&v[12..20]);
        ps[9] = 6;
        ps[10..12].copy_from_slice(&((20 + PAYLOAD) as u16).to_be_bytes());
        let partial = wire::ones_complement_sum(&ps);
        v[36..38].copy_from_slice(&partial.to_be_bytes());
        let vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: MSS,
            csum_start: 34,
            csum_offset: 16,
        };
        (vnet, v)
    }

    /// Receives IPIP in `peer` for up to 3 s (until `payload` inner TCP
    /// bytes arrived) with a raw socket bound to NODE_B, run by python3
    /// in that namespace; returns the packets, each a whole outer IPv4
    /// packet.
    fn receiver(peer: &Netns, dir: &podrouter_testkit::TempDir) -> std::process::Child {
        let out = dir.join("packets");
        let script = format!(
            "import socket, struct, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)\n\
             s.bind(('{NODE_B}', 0))\n\
             s.settimeout(0.2)\n\
             print('ready', flush=True)\n\
             f = open('{out}', 'wb')\n\
             got = 0\n\
             end = time.time() + 3\n\
             while got < {PAYLOAD} and time.time() < end:\n\
             \x20   try:\n\
             \x20       p = s.recv(70000)\n\
             \x20   except socket.timeout:\n\
             \x20       continue\n\
             \x20   f.write(struct.pack('>I', len(p)) + p)\n\
             \x20   got += len(p) - 60\n\
             f.close()\n",
            out = out.display()
        );
        let mut child = peer
            .command("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        child
    }

    fn read_packets(dir: &podrouter_testkit::TempDir) -> Vec<Vec<u8>> {
        let b = std::fs::read(dir.join("packets")).unwrap_or_default();
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= b.len() {
            let n = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            out.push(b[at + 4..at + 4 + n].to_vec());
            at += 4 + n;
        }
        out
    }

    /// Node A (this namespace) writes one 60 KB TCP GSO packet into the
    /// TAP; node B (`peer`, on a veth) reads what arrives on a raw IPIP
    /// socket. With `segment` the sending veth may not carry IPIP GSO
    /// (`tx-ipxip4-segmentation off`), so the kernel cuts it.
    fn send_one(peer: &Netns, segment: bool) -> (Vec<Vec<u8>>, IpipGsoStats) {
        ip(&[
            "link",
            "add",
            "ga0",
            "type",
            "veth",
            "peer",
            "name",
            "ga1",
            "netns",
            peer.name(),
        ]);
        ip(&["addr", "add", "10.9.3.1/24", "dev", "ga0"]);
        ip(&["link", "set", "ga0", "up"]);
        if segment {
            let out = Command::new("ethtool")
                .args(["-K", "ga0", "tx-ipxip4-segmentation", "off"])
                .output()
                .expect("ethtool");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        peer.ip(&["addr", "add", "10.9.3.2/24", "dev", "ga1"]);
        peer.ip(&["link", "set", "ga1", "up"]);
        let uplink = sys::if_nametoindex("ga0").unwrap().unwrap();
        let gso = IpipGso::create("pr-ipgso-t", uplink).expect("TAP and classifier");
        ip(&["link", "set", "pr-ipgso-t", "up"]);
        let shown = ip(&["link", "show", "pr-ipgso-t"]);
        assert!(shown.contains("UP"), "{shown}");
        // Resolve B's MAC first.
        let ping = Command::new("ping")
            .args(["-c", "1", "-W", "2", "10.9.3.2"])
            .output()
            .unwrap();
        assert!(ping.status.success(), "ping B");
        let dir = podrouter_testkit::TempDir::new("ipgso");
        let mut rx = receiver(peer, &dir);
        let (vnet, pkt) = tcp_gso();
        gso.send(NODE_A, NODE_B, &vnet, &pkt).expect("one write");
        assert!(rx.wait().unwrap().success());
        let stats = gso.stats();
        drop(gso);
        ip(&["link", "del", "ga0"]);
        (read_packets(&dir), stats)
    }

    /// Checks one received IPIP packet's headers; returns its TCP
    /// sequence number, payload, and whether its checksum was complete
    /// (else it holds the pseudo-header sum: partial).
    fn check(p: &[u8]) -> (u32, Vec<u8>, bool) {
        let outer = check_ipv4(p).expect("outer IPv4 header and checksum");
        assert_eq!(usize::from(outer.total_len()), p.len(), "outer length");
        assert_eq!(outer.next_header(), smoltcp::wire::IpProtocol::from(4));
        assert_eq!((outer.src_addr(), outer.dst_addr()), (NODE_A, NODE_B));
        assert_eq!(outer.hop_limit(), 64, "no TTL change on the way");
        assert!(outer.dont_frag());
        let inner = check_ipv4(outer.payload()).expect("inner IPv4 header and checksum");
        assert_eq!(usize::from(inner.total_len()), p.len() - 20, "inner length");
        assert_eq!((inner.src_addr(), inner.dst_addr()), (POD_A, POD_B));
        let t = TcpPacket::new_checked(inner.payload()).unwrap();
        let (a, b) = (IpAddress::Ipv4(POD_A), IpAddress::Ipv4(POD_B));
        let complete = t.verify_checksum(&a, &b);
        if !complete {
            let mut ps = [0u8; 12];
            ps[..4].copy_from_slice(&POD_A.octets());
            ps[4..8].copy_from_slice(&POD_B.octets());
            ps[9] = 6;
            ps[10..12].copy_from_slice(&(inner.payload().len() as u16).to_be_bytes());
            assert_eq!(
                t.checksum(),
                wire::ones_complement_sum(&ps),
                "TCP checksum neither complete nor the pseudo-header sum"
            );
        }
        (t.seq_number().0 as u32, t.payload().to_vec(), complete)
    }

    /// What the path takes: TCPv4 GSO with the checksum at the inner TCP
    /// header, an outer packet within 65535 bytes; segments that fit the
    /// path with DF. Everything else goes the raw socket's way.
    #[test]
    fn takes_tcp_gso_that_fits_and_nothing_else() {
        let (vnet, pkt) = tcp_gso();
        assert!(IpipGso::takes(&vnet, &pkt));
        assert!(IpipGso::segments_fit(&vnet, &pkt, 1480));
        assert!(
            !IpipGso::segments_fit(&vnet, &pkt, 1479),
            "1480-byte segments"
        );
        let mut no_df = pkt.clone();
        no_df[6] = 0;
        assert!(
            !IpipGso::segments_fit(&vnet, &no_df, 9000),
            "no DF: the ring fragments"
        );
        let ecn = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4 | VnetHdr::GSO_ECN,
            ..vnet
        };
        assert!(IpipGso::takes(&ecn, &pkt));
        for bad in [
            VnetHdr {
                gso_type: VnetHdr::GSO_UDP,
                ..vnet
            },
            VnetHdr {
                gso_type: VnetHdr::GSO_TCPV6,
                ..vnet
            },
            VnetHdr {
                gso_type: VnetHdr::GSO_NONE,
                ..vnet
            },
            VnetHdr { flags: 0, ..vnet },
            VnetHdr {
                csum_start: 14,
                ..vnet
            },
            VnetHdr {
                csum_offset: 6,
                ..vnet
            },
            VnetHdr {
                gso_size: 0,
                ..vnet
            },
        ] {
            assert!(!IpipGso::takes(&bad, &pkt), "{bad:?}");
        }
        let mut huge = pkt.clone();
        huge.resize(65_535 - 19, 0);
        assert!(!IpipGso::takes(&vnet, &huge), "outer over 65535");
        assert!(!IpipGso::takes(&vnet, &pkt[..30]), "truncated");
        assert!(!IpipGso::takes(&vnet, &[]));
        assert!(!IpipGso::segments_fit(&vnet, &pkt[..20], 9000));
    }

    /// The probe of the design: one 60 KB write arrives as ONE IPIP packet
    /// on the other node over a veth; with the veth's IPIP segmentation
    /// off it arrives as 42 IPIP packets of at most 1500 bytes, each with
    /// correct outer and inner headers (what a NIC without IPIP TSO puts
    /// on the wire), the payload whole and in order.
    #[test]
    fn one_write_crosses_whole_or_cut_at_the_right_headers() {
        if !podrouter_testkit::Needs::new("one_write_crosses_whole_or_cut_at_the_right_headers")
            .privileged()
            .commands(&["ip", "ping", "python3", "ethtool"])
            .met()
        {
            return;
        }
        let (_, original) = tcp_gso();
        for segment in [false, true] {
            let peer = Netns::new("ipgso");
            let (got, stats) = in_private_netns(|| send_one(&peer, segment));
            assert_eq!(
                stats,
                IpipGsoStats {
                    frames: 1,
                    bytes: original.len() as u64,
                    errors: 0
                }
            );
            let want = if segment {
                PAYLOAD.div_ceil(usize::from(MSS))
            } else {
                1
            };
            let lens: Vec<usize> = got.iter().map(|p| p.len()).collect();
            assert_eq!(
                got.len(),
                want,
                "packets on B (segment: {segment}): {lens:?}"
            );
            let mut payload = Vec::new();
            let mut seq = 1000u32;
            let mut complete = 0;
            for p in &got {
                assert!(segment || p.len() == 20 + original.len());
                assert!(!segment || p.len() <= 1500, "{} bytes", p.len());
                let (s, data, full) = check(p);
                complete += usize::from(full);
                assert_eq!(s, seq, "in order");
                seq = seq.wrapping_add(data.len() as u32);
                payload.extend_from_slice(&data);
            }
            assert_eq!(payload, original[40..], "payload whole");
            eprintln!(
                "segment {segment}: {} packets, {complete} with a complete TCP checksum",
                got.len()
            );
        }
    }
}
