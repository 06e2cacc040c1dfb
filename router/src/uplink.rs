//! The uplink: IPIP (IPv4-in-IPv4, RFC 2003) to and from other nodes over
//! one raw IPv4 socket, in userspace (this kernel has no `ipip` module, and
//! podrouter must not need one).
//!
//! # The port
//!
//! [`Uplink`] is a [`Port`] over `socket(AF_INET, SOCK_RAW, 4)` with
//! `IP_HDRINCL`, non-blocking, bound to the node's address so the kernel
//! hands it only IPIP packets addressed to this node. The kernel routes the
//! outer packets over the underlay by its own table, so the uplink works
//! on whatever interface leads to the other node; the interface named by
//! the `uplink` config key only gives the subnet (cross-subnet mode) and
//! the MTU that bounds the path.
//!
//! - **Receive**: one `recvmmsg` per up to 64 packets. Each packet is a
//!   whole outer IPv4 packet; it is put behind an Ethernet header (router
//!   MAC as destination, so the pipeline takes it; ethertype IPv4; source
//!   all zeros: nothing reads it, the outer header names the sending node)
//!   so every frame the pipeline and [`gso::coalesce_ipip_tcp`] see has
//!   the same layout. The pipeline checks and strips the outer header
//!   (`PortRole::Uplink`).
//! - **Send**: the pipeline forwards a frame to the uplink with the
//!   next-hop node in its verdict, which the worker passes to
//!   [`Port::push`] as `tunnel`. Each worker has its own send ring for the
//!   uplink ([`TxRing`], in the worker's [`TxQueue`]); `push` copies the
//!   inner packet into it, writing the outer header in front of it (TTL
//!   64, TOS and DF copied from the inner packet, identification 0 so the
//!   kernel picks one, as it does for every `IP_HDRINCL` packet).
//!   [`Port::flush`] sends the ring with `sendmmsg` (64 packets per call).
//! - **Receive coalescing**: consecutive TCP segments of one flow in a
//!   received batch are merged into one GSO frame (checksums verified
//!   first), which the pipeline decapsulates and a pod's TAP takes whole,
//!   as the kernel's GRO would ([`gso::coalesce_ipip_tcp`]). Where the
//!   underlay interface does GRO (a NIC's default), the node's kernel has
//!   merged them already (`ipip_gro_receive` is built into every kernel,
//!   the `ipip` module or not): the socket then gets one packet of many
//!   segments (up to 64 KiB) whose TCP checksum field holds the
//!   pseudo-header sum, which becomes a GSO frame as it is
//!   ([`gso::adopt_kernel_merged`]); the kernel verified every segment's
//!   checksum while merging.
//! - **Software offloads**: a raw socket has none, so what a pod's TAP
//!   handed us is finished during that one copy ([`TxRing::push`]):
//!   a partial checksum (`NEEDS_CSUM`) is completed; a TCP GSO
//!   super-segment is cut at `gso_size`; a packet (or segment) larger than
//!   the path MTU without DF is fragmented. (Packets with DF that do not
//!   fit never get here: the pipeline answers them with ICMP fragmentation
//!   needed.)
//!
//! - **64 KiB segments whole** ([`crate::ipip_gso`], when the daemon
//!   could set it up: [`Uplink::with_gso`]): a TCP GSO frame whose
//!   segments fit the path and carry DF is not cut here but written whole
//!   into the IPIP GSO TAP, whose program sends it out of the uplink
//!   interface as one IPIP GSO packet. The ring is flushed first, so a
//!   flow's earlier packets leave first (both paths hand the packet to
//!   the uplink's transmit synchronously, in the calling thread). A write
//!   the kernel refuses falls back to the ring, so nothing is lost.
//!
//! Whether a next hop is reached through the tunnel or directly is
//! [`crate::encap::EncapPolicy`]'s decision, made by the pipeline.
//!
//! # Invariants
//!
//! - Send rings are per worker (in the worker's [`TxQueue`] for this
//!   port), so `push` and `flush` take no lock and never allocate once a
//!   worker has its ring; a worker flushes what it queued before its next
//!   receive. A full ring is flushed early. `flush` always empties the
//!   ring: what the kernel would not take after a bounded wait (3 x 1 ms
//!   for `EAGAIN`) or refused (`EMSGSIZE`, unreachable) is dropped,
//!   counted in [`Uplink::tx_dropped`], and reported as an error.
//! - Every outer packet is at most the uplink's link MTU; a frame that
//!   cannot be sent that way is refused (`InvalidData`), never truncated.
//! - Nothing here trusts a frame: malformed headers or offload requests are
//!   errors, not panics.
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::frame::Frame;
use crate::gso;
use crate::ipip_gso::IpipGso;
use crate::port::{foreign_queue, Port, TxQueue};
use crate::sys;
use crate::txring::{TxRing, TxSink};
use crate::wire::{
    self, field, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_IPIP, IPV4_HEADER_LEN,
};

/// Socket buffer asked for in each direction (bursts of 64 KiB GSO frames
/// turn into ~45 packets each).
const SOCKET_BUFFER: usize = 8 << 20;

/// Send ring memory per worker, at most; the ring holds between
/// [`MIN_SLOTS`] and [`MAX_SLOTS`] packets of the link MTU.
const RING_BYTES: usize = 4 << 20;
const MIN_SLOTS: usize = 16;
const MAX_SLOTS: usize = 256;

/// DF in the flags byte of an IPv4 header ([`field::ipv4::FLAGS`]).
const IP_DF_BYTE: u8 = 0x40;

/// How long one `EAGAIN` wait of a flush lasts.
const FLUSH_WAIT_MS: i32 = 1;

/// Smallest link MTU accepted: an IPv4 minimum (68) plus the outer header.
pub const MIN_LINK_MTU: u16 = 68 + IPV4_HEADER_LEN as u16;

/// The IPIP uplink port. See the module documentation.
#[derive(Debug)]
pub struct Uplink {
    fd: OwnedFd,
    local: Ipv4Addr,
    /// Largest outer packet, header included.
    link_mtu: usize,
    tx_dropped: AtomicU64,
    /// The IPIP GSO TAP, when set up ([`Uplink::with_gso`]).
    gso: Option<IpipGso>,
}

impl Uplink {
    /// Opens the raw socket in the calling thread's network namespace,
    /// bound to `local` (the node's address, which must be configured on
    /// one of its interfaces). `link_mtu` is the underlay MTU: the largest
    /// outer packet sent (at most 65535).
    pub fn open(local: Ipv4Addr, link_mtu: u16) -> io::Result<Uplink> {
        if link_mtu < MIN_LINK_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("uplink MTU {link_mtu} is below {MIN_LINK_MTU}"),
            ));
        }
        let fd = sys::raw_ipv4_socket(IPPROTO_IPIP)?;
        sys::bind_ipv4(fd.as_fd(), local)?;
        sys::set_socket_buffers(fd.as_fd(), SOCKET_BUFFER);
        Ok(Uplink {
            fd,
            local,
            link_mtu: usize::from(link_mtu),
            tx_dropped: AtomicU64::new(0),
            gso: None,
        })
    }

    /// Takes over the raw socket another podrouterd had open (passed over
    /// a unix socket, see podrouterd's `--takeover`), with the packets
    /// queued on it; `local` and `link_mtu` as for [`Uplink::open`].
    pub fn adopt(fd: OwnedFd, local: Ipv4Addr, link_mtu: u16) -> io::Result<Uplink> {
        if link_mtu < MIN_LINK_MTU {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("uplink MTU {link_mtu} is below {MIN_LINK_MTU}"),
            ));
        }
        Ok(Uplink {
            fd,
            local,
            link_mtu: usize::from(link_mtu),
            tx_dropped: AtomicU64::new(0),
            gso: None,
        })
    }

    /// Sends TCP GSO frames that fit the path whole through `gso` (see
    /// the module documentation).
    pub fn with_gso(mut self, gso: IpipGso) -> Uplink {
        self.gso = Some(gso);
        self
    }

    /// The IPIP GSO path, if this uplink has one.
    pub fn gso(&self) -> Option<&IpipGso> {
        self.gso.as_ref()
    }

    /// The node address outer packets come from and go to.
    pub fn local(&self) -> Ipv4Addr {
        self.local
    }

    /// The largest outer packet (the underlay MTU).
    pub fn link_mtu(&self) -> u16 {
        self.link_mtu as u16
    }

    /// The largest inner packet sent without fragmenting: the link MTU
    /// minus the outer header. This is the port's MTU in the port table.
    pub fn path_mtu(&self) -> u16 {
        (self.link_mtu - IPV4_HEADER_LEN) as u16
    }

    /// Outer packets dropped at send (kernel refused or stayed full).
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped.load(Ordering::Relaxed)
    }

    /// Adds what `ring` dropped to [`Uplink::tx_dropped`].
    fn count_drops(&self, ring: &mut TxRing) {
        let dropped = ring.take_dropped();
        if dropped > 0 {
            self.tx_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The raw socket as a [`TxRing`]'s sink.
struct RawSocketSink<'a>(BorrowedFd<'a>);

impl TxSink for RawSocketSink<'_> {
    fn send<'a>(&mut self, pkts: impl Iterator<Item = (&'a [u8], Ipv4Addr)>) -> io::Result<usize> {
        sys::send_batch(self.0, pkts)
    }

    fn wait(&mut self) {
        let _ = sys::wait_writable(self.0, FLUSH_WAIT_MS);
    }
}

impl Port for Uplink {
    /// Up to 64 packets per `recvmmsg`, each placed after a 14-byte
    /// Ethernet header (see the module documentation), then consecutive TCP
    /// segments of a flow coalesced into GSO frames
    /// ([`gso::coalesce_ipip_tcp`]). Stops at `EAGAIN`; an error after some
    /// packets were received is deferred.
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
        let mut lens = [0usize; sys::MAX_BATCH];
        let mut n = 0;
        while n < frames.len() {
            let want = (frames.len() - n).min(sys::MAX_BATCH);
            let bufs = frames[n..n + want]
                .iter_mut()
                .map(|f| &mut f.rx_buffer()[ETHERNET_HEADER_LEN..]);
            let got = match sys::recv_batch(self.fd.as_fd(), bufs, &mut lens[..want]) {
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            };
            for (f, &len) in frames[n..n + got].iter_mut().zip(&lens) {
                f.set_len(ETHERNET_HEADER_LEN + len);
                let d = f.data_mut();
                d[field::ethernet::DESTINATION].copy_from_slice(&crate::ROUTER_MAC);
                d[field::ethernet::SOURCE].fill(0);
                d[field::ethernet::ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            }
            n += got;
            if got < want {
                break;
            }
        }
        Ok(gso::coalesce_ipip_tcp(frames, n, self.link_mtu))
    }

    /// This worker's send ring: room for [`RING_BYTES`] of outer packets
    /// of the link MTU.
    fn tx_queue(&self) -> TxQueue {
        let slots = (RING_BYTES / self.link_mtu).clamp(MIN_SLOTS, MAX_SLOTS);
        TxQueue::new(TxRing::new(slots, self.link_mtu, IPV4_HEADER_LEN))
    }

    /// Queues the frame's inner packet in this worker's ring, encapsulated
    /// for the node `tunnel` names, cut into segments or fragments as
    /// needed. Flushes early when the ring is full.
    fn push(&self, queue: &mut TxQueue, frame: &Frame, tunnel: Option<Ipv4Addr>) -> io::Result<()> {
        let ring = queue.state::<TxRing>().ok_or_else(foreign_queue)?;
        let dst = tunnel.ok_or_else(|| invalid("no tunnel endpoint for the uplink"))?;
        let d = frame.data();
        if d.len() < ETHERNET_HEADER_LEN + IPV4_HEADER_LEN {
            return Err(invalid("frame too short for IPv4"));
        }
        let local = self.local;
        let ip = &d[ETHERNET_HEADER_LEN..];
        if let Some(gso) = &self.gso {
            if IpipGso::takes(&frame.vnet, ip)
                && IpipGso::segments_fit(&frame.vnet, ip, self.path_mtu())
            {
                // What the ring could not send is counted there (and
                // reported after this frame went).
                let mut flushed = Ok(());
                if ring.queued() > 0 {
                    flushed = ring.flush(&mut RawSocketSink(self.fd.as_fd()));
                    self.count_drops(ring);
                }
                if gso.send(local, dst, &frame.vnet, ip).is_ok() {
                    return flushed;
                }
                // Counted by the GSO path; the ring takes it instead.
            }
        }
        let write_header = |pkt: &mut [u8], dst: Ipv4Addr| {
            let inner = &pkt[IPV4_HEADER_LEN..];
            let tos = inner[field::ipv4::TOS];
            let df = inner[field::ipv4::FLAGS] & IP_DF_BYTE != 0;
            let len = pkt.len() as u16;
            wire::write_ipip_header(pkt, len, 0, tos, df, local, dst);
        };
        let mut sink = RawSocketSink(self.fd.as_fd());
        let r = ring.push(ip, frame.vnet, dst, &write_header, &mut sink);
        self.count_drops(ring);
        r
    }

    fn flush(&self, queue: &mut TxQueue) -> io::Result<()> {
        let ring = queue.state::<TxRing>().ok_or_else(foreign_queue)?;
        let r = ring.flush(&mut RawSocketSink(self.fd.as_fd()));
        self.count_drops(ring);
        r
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

/// Sends one complete IPv4 packet (its own header included) from a fresh
/// raw socket in the calling thread's namespace, to the packet's
/// destination address. For tests and diagnostics (injecting IPIP as
/// another node would); needs `CAP_NET_RAW`.
pub fn send_raw_ipv4(packet: &[u8]) -> io::Result<()> {
    if packet.len() < IPV4_HEADER_LEN {
        return Err(invalid("shorter than an IPv4 header"));
    }
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let fd = sys::raw_ipv4_socket(packet[9])?;
    match sys::send_batch(fd.as_fd(), std::iter::once((packet, dst)))? {
        1 => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::VnetHdr;
    use crate::wire::check_ipv4;
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, UdpPacket};
    use std::time::Duration;

    const NODE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 66);

    /// An Ethernet frame to the uplink carrying `ip`.
    fn to_node(ip: &[u8], vnet: VnetHdr) -> Frame {
        let mut v = vec![0u8; 6];
        v.extend_from_slice(&crate::ROUTER_MAC);
        v.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        v.extend_from_slice(ip);
        let mut f = Frame::from_bytes(&v);
        f.vnet = vnet;
        f
    }

    fn ip_header(proto: u8, flags: u16, total: usize) -> Vec<u8> {
        let mut v = vec![0u8; total];
        v[0] = 0x45;
        v[1] = 0xb8; // DSCP 46: the outer header copies it
        v[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        v[4..6].copy_from_slice(&7u16.to_be_bytes());
        v[6..8].copy_from_slice(&flags.to_be_bytes());
        v[8] = 63;
        v[9] = proto;
        v[12..16].copy_from_slice(&POD_A.octets());
        v[16..20].copy_from_slice(&POD_B.octets());
        Ipv4Packet::new_unchecked(&mut v[..20]).fill_checksum();
        v
    }

    fn pseudo_sum(proto: u8, len: usize) -> u16 {
        let mut ps = [0u8; 12];
        ps[..4].copy_from_slice(&POD_A.octets());
        ps[4..8].copy_from_slice(&POD_B.octets());
        ps[9] = proto;
        ps[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        wire::ones_complement_sum(&ps)
    }

    /// Receives every outer packet waiting on `rx` (as frames).
    fn drain(rx: &Uplink, want: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut frames: Vec<Frame> = (0..32).map(|_| Frame::new()).collect();
        for _ in 0..200 {
            let n = rx.recv(&mut frames).unwrap();
            out.extend(frames[..n].iter().map(|f| f.data().to_vec()));
            if out.len() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    }

    /// Two uplinks on loopback (127.0.0.1 and .2) in a private namespace:
    /// a plain packet, a UDP packet with a partial checksum, a 3-segment
    /// TCP GSO frame, and a non-DF datagram too big for the link (MTU 1000)
    /// all arrive as IPIP with correct headers and checksums.
    #[test]
    fn encapsulates_segments_and_fragments_over_loopback() {
        if !podrouter_testkit::Needs::new("encapsulates_segments_and_fragments_over_loopback")
            .root()
            .commands(&["ip"])
            .met()
        {
            return;
        }
        podrouter_testkit::in_private_netns(|| {
            let tx = Uplink::open(NODE_A, 1000).unwrap();
            let rx = Uplink::open(NODE_B, 1000).unwrap();
            assert_eq!(tx.path_mtu(), 980);
            let mut q = tx.tx_queue();

            // 1. A small ICMP-ish packet with DF.
            let mut plain = ip_header(1, 0x4000, 60);
            plain[20] = 8;
            tx.push(&mut q, &to_node(&plain, VnetHdr::default()), Some(NODE_B))
                .unwrap();
            // 2. UDP with a partial checksum.
            let mut udp = ip_header(17, 0, 20 + 8 + 100);
            udp[24..26].copy_from_slice(&108u16.to_be_bytes());
            udp[26..28].copy_from_slice(&pseudo_sum(17, 108).to_be_bytes());
            let csum = VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..VnetHdr::default()
            };
            tx.push(&mut q, &to_node(&udp, csum), Some(NODE_B)).unwrap();
            // 3. TCP GSO: 2000 bytes at MSS 900 -> 3 segments of <= 940.
            let mut tcp = ip_header(6, 0x4000, 20 + 20 + 2000);
            tcp[32] = 0x50;
            tcp[33] = 0x18;
            for (i, b) in tcp[40..].iter_mut().enumerate() {
                *b = i as u8;
            }
            let gso = VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: VnetHdr::GSO_TCPV4,
                hdr_len: 54,
                gso_size: 900,
                csum_start: 34,
                csum_offset: 16,
            };
            tx.push(&mut q, &to_node(&tcp, gso), Some(NODE_B)).unwrap();
            // 4. 2000 bytes of UDP without DF: fragmented to fit 980.
            let big = ip_header(17, 0, 2000);
            tx.push(&mut q, &to_node(&big, VnetHdr::default()), Some(NODE_B))
                .unwrap();
            tx.flush(&mut q).unwrap();

            // The three TCP segments come back coalesced into one frame.
            let got = drain(&rx, 1 + 1 + 1 + 3);
            assert_eq!(got.len(), 6, "1 + 1 + 3 segments (coalesced) + 3 fragments");
            let mut tcp_payload = Vec::new();
            let mut frag_bytes = 0;
            for (k, f) in got.iter().enumerate() {
                assert_eq!(&f[0..6], &crate::ROUTER_MAC);
                assert_eq!(&f[6..14], &[0, 0, 0, 0, 0, 0, 0x08, 0x00]);
                let outer = check_ipv4(&f[14..]).expect("outer header valid");
                assert!(k == 2 || f.len() - 14 <= 1000, "outer fits the link MTU");
                assert_eq!(outer.next_header(), smoltcp::wire::IpProtocol::from(4));
                assert_eq!((outer.src_addr(), outer.dst_addr()), (NODE_A, NODE_B));
                assert_eq!(outer.hop_limit(), 64);
                assert_eq!(outer.dscp(), 46);
                let inner = check_ipv4(outer.payload()).expect("inner header valid");
                assert_eq!(outer.dont_frag(), inner.dont_frag(), "DF copied");
                assert_eq!((inner.src_addr(), inner.dst_addr()), (POD_A, POD_B));
                let (a, b) = (IpAddress::Ipv4(POD_A), IpAddress::Ipv4(POD_B));
                match k {
                    0 => assert_eq!(outer.payload(), &plain[..]),
                    1 => {
                        let u = UdpPacket::new_checked(inner.payload()).unwrap();
                        assert!(u.verify_checksum(&a, &b), "UDP checksum completed");
                    }
                    2 => {
                        // Sent as 3 segments of <= 900 bytes, each checked
                        // on arrival, merged back into one GSO frame whose
                        // checksum is partial.
                        assert_eq!(f.len(), 14 + 20 + 20 + 20 + 2000);
                        let mut ip = inner.into_inner().to_vec();
                        gso::complete_checksum(&mut ip, 20, 16).unwrap();
                        let t = TcpPacket::new_checked(&ip[20..]).unwrap();
                        assert!(t.verify_checksum(&a, &b), "TCP checksum");
                        assert!(t.psh());
                        tcp_payload.extend_from_slice(t.payload());
                    }
                    _ => {
                        assert!(!inner.dont_frag());
                        assert_eq!(inner.more_frags(), k != 5);
                        frag_bytes += inner.payload().len();
                    }
                }
            }
            assert_eq!(tcp_payload, tcp[40..]);
            assert_eq!(frag_bytes, 2000 - 20);
            assert_eq!(tx.tx_dropped(), 0);

            // Malformed offload requests are refused, not sent.
            let bad = VnetHdr {
                gso_type: VnetHdr::GSO_UDP,
                gso_size: 100,
                ..VnetHdr::default()
            };
            assert!(tx.push(&mut q, &to_node(&big, bad), Some(NODE_B)).is_err());
            assert!(tx
                .push(
                    &mut q,
                    &to_node(&plain[..10], VnetHdr::default()),
                    Some(NODE_B)
                )
                .is_err());
            tx.flush(&mut q).unwrap();
        });
    }
}
