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
//!   MAC as destination, [`tunnel_mac`] of the outer source as source,
//!   ethertype IPv4) so the pipeline reads it like any frame. The pipeline
//!   checks and strips the outer header (`PortRole::Uplink`).
//! - **Send**: the pipeline forwards a frame to the uplink with the
//!   next-hop node's address as the Ethernet destination ([`tunnel_mac`]),
//!   the way a Linux NBMA tunnel's link-layer address is the remote
//!   endpoint. [`Port::send`] copies the inner packet into a send ring,
//!   writing the outer header in front of it (TTL 64, TOS and DF copied
//!   from the inner packet, identification 0 so the kernel picks one, as
//!   it does for every `IP_HDRINCL` packet). [`Port::flush`] sends the
//!   ring with `sendmmsg` (64 packets per call).
//! - **Receive coalescing**: consecutive TCP segments of one flow in a
//!   received batch are merged into one GSO frame (checksums verified
//!   first), which the pipeline decapsulates and a pod's TAP takes whole,
//!   as the kernel's GRO would ([`gso::coalesce_ipip_tcp`]).
//! - **Software offloads**: a raw socket has none, so what a pod's TAP
//!   handed us is finished here, during that one copy ([`crate::gso`]):
//!   a partial checksum (`NEEDS_CSUM`) is completed; a TCP GSO
//!   super-segment is cut at `gso_size`; a packet (or segment) larger than
//!   the path MTU without DF is fragmented. (Packets with DF that do not
//!   fit never get here: the pipeline answers them with ICMP fragmentation
//!   needed.)
//!
//! # Encapsulate or route directly
//!
//! [`EncapPolicy`] (Calico's `ipipMode`) decides per next-hop node: always,
//! never, or only when the node is outside the uplink's subnet. It travels
//! in the uplink's [`crate::port::PortRole::Uplink`], part of the port
//! table snapshot every batch loads, so the per-packet decision is one
//! mask-and-compare and no lookup, and routes from any source (static
//! config, BGP) are treated alike without carrying a mode. The control
//! plane uses the same [`EncapPolicy::encap_to`] to program the node's
//! kernel for the direct case (`<block> via <node>`), so both sides always
//! agree.
//!
//! # Invariants
//!
//! - Send rings are per thread (a worker's own, in a thread-local), so
//!   `send` and `flush` take no lock and never allocate once a worker has
//!   its ring; a worker flushes what it queued before its next receive.
//!   A full ring is flushed early. `flush` always empties the ring: what
//!   the kernel would not take after a bounded wait (3 x 1 ms for
//!   `EAGAIN`) or refused (`EMSGSIZE`, unreachable) is dropped, counted in
//!   [`Uplink::tx_dropped`], and reported as an error.
//! - Every outer packet is at most the uplink's link MTU; a frame that
//!   cannot be sent that way is refused (`InvalidData`), never truncated.
//! - Nothing here trusts a frame: malformed headers or offload requests are
//!   errors, not panics.
use std::cell::RefCell;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fib::Prefix;
use crate::frame::{Frame, VnetHdr};
use crate::gso::{self, Fragments, OffloadError, TcpSegments};
use crate::port::Port;
use crate::sys;
use crate::wire::{self, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_IPIP, IPV4_HEADER_LEN};

/// When traffic to another node is encapsulated (Calico's IPIP modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncapMode {
    /// Every packet to another node is IPIP.
    #[default]
    Always,
    /// IPIP only to nodes outside the uplink's subnet; routed directly
    /// (through the node's kernel) to nodes inside it.
    CrossSubnet,
    /// Never IPIP: always routed directly through the node's kernel.
    Never,
}

/// The encapsulation decision for next-hop nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapPolicy {
    pub mode: EncapMode,
    /// The uplink interface's subnet (cross-subnet mode). Unknown: every
    /// node counts as outside it, so traffic is encapsulated.
    pub subnet: Option<Prefix>,
}

impl EncapPolicy {
    /// Whether packets for a block owned by `node` are IPIP-encapsulated
    /// (true) or handed to the node's kernel to route directly (false).
    #[inline]
    pub fn encap_to(&self, node: Ipv4Addr) -> bool {
        match self.mode {
            EncapMode::Always => true,
            EncapMode::Never => false,
            EncapMode::CrossSubnet => !self.subnet.is_some_and(|s| s.contains(node)),
        }
    }
}

/// The link-layer address of a node on the uplink: its IPv4 address in the
/// first four bytes (as a Linux IPIP tunnel's neighbours have it), then
/// zeros.
#[inline]
pub fn tunnel_mac(node: Ipv4Addr) -> [u8; 6] {
    let o = node.octets();
    [o[0], o[1], o[2], o[3], 0, 0]
}

/// The node a [`tunnel_mac`] names.
#[inline]
pub fn tunnel_node(mac: &[u8; 6]) -> Ipv4Addr {
    Ipv4Addr::new(mac[0], mac[1], mac[2], mac[3])
}

/// Socket buffer asked for in each direction (bursts of 64 KiB GSO frames
/// turn into ~45 packets each).
const SOCKET_BUFFER: usize = 8 << 20;

/// Send ring memory per worker, at most; the ring holds between
/// [`MIN_SLOTS`] and [`MAX_SLOTS`] packets of the link MTU.
const RING_BYTES: usize = 4 << 20;
const MIN_SLOTS: usize = 16;
const MAX_SLOTS: usize = 256;

/// `EAGAIN` waits per flush before the rest is dropped.
const FLUSH_WAITS: u32 = 3;
const FLUSH_WAIT_MS: i32 = 1;

/// Smallest link MTU accepted: an IPv4 minimum (68) plus the outer header.
pub const MIN_LINK_MTU: u16 = 68 + IPV4_HEADER_LEN as u16;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The IPIP uplink port. See the module documentation.
#[derive(Debug)]
pub struct Uplink {
    fd: OwnedFd,
    local: Ipv4Addr,
    /// Largest outer packet, header included.
    link_mtu: usize,
    /// Tells this uplink's per-thread send rings from another's.
    id: u64,
    tx_dropped: AtomicU64,
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
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tx_dropped: AtomicU64::new(0),
        })
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

    fn with_ring<T>(&self, f: impl FnOnce(&mut TxRing) -> io::Result<T>) -> io::Result<T> {
        RINGS.with(|cell| {
            let Ok(mut rings) = cell.try_borrow_mut() else {
                return Err(io::Error::other("uplink send ring re-entered"));
            };
            let i = match rings.iter().position(|r| r.owner == self.id) {
                Some(i) => i,
                None => {
                    rings.push(TxRing::new(self.id, self.link_mtu));
                    rings.len() - 1
                }
            };
            f(&mut rings[i])
        })
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        // Other threads' rings for this uplink stay until they exit (they
        // hold bytes only, no descriptor).
        let id = self.id;
        let _ = RINGS.try_with(|cell| {
            if let Ok(mut rings) = cell.try_borrow_mut() {
                rings.retain(|r| r.owner != id);
            }
        });
    }
}

thread_local! {
    /// This thread's send rings, one per uplink it has sent to.
    static RINGS: RefCell<Vec<TxRing>> = const { RefCell::new(Vec::new()) };
}

/// Outer packets waiting for `sendmmsg`, in fixed slots of the link MTU.
struct TxRing {
    owner: u64,
    slot_size: usize,
    buf: Box<[u8]>,
    lens: Box<[usize]>,
    dsts: Box<[Ipv4Addr]>,
    queued: usize,
    /// One inner packet, for completing a checksum before fragmenting.
    scratch: Box<[u8]>,
}

fn offload_error(e: OffloadError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        match e {
            OffloadError::Malformed => "malformed packet or offload request",
            OffloadError::Unsupported => "offload not supported for this packet",
            OffloadError::TooManyPieces => "packet would need too many pieces",
        },
    )
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl TxRing {
    fn new(owner: u64, link_mtu: usize) -> TxRing {
        let slots = (RING_BYTES / link_mtu).clamp(MIN_SLOTS, MAX_SLOTS);
        TxRing {
            owner,
            slot_size: link_mtu,
            buf: vec![0u8; slots * link_mtu].into_boxed_slice(),
            lens: vec![0; slots].into_boxed_slice(),
            dsts: vec![Ipv4Addr::UNSPECIFIED; slots].into_boxed_slice(),
            queued: 0,
            scratch: vec![0u8; usize::from(u16::MAX)].into_boxed_slice(),
        }
    }

    fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Index of a free slot, flushing first if the ring is full.
    fn free_slot(&mut self, up: &Uplink) -> usize {
        if self.queued == self.slots() {
            // Always empties the ring; drops were counted.
            let _ = self.flush(up);
        }
        self.queued
    }

    /// The bytes of slot `i` after the outer header.
    fn inner_mut(&mut self, i: usize) -> &mut [u8] {
        let at = i * self.slot_size;
        &mut self.buf[at + IPV4_HEADER_LEN..at + self.slot_size]
    }

    /// Puts the outer header in front of the `len`-byte inner packet in
    /// slot `i` and queues it for `dst`.
    fn commit(&mut self, i: usize, len: usize, src: Ipv4Addr, dst: Ipv4Addr) {
        let at = i * self.slot_size;
        let s = &mut self.buf[at..at + IPV4_HEADER_LEN + len];
        let tos = s[IPV4_HEADER_LEN + 1];
        let df = s[IPV4_HEADER_LEN + 6] & 0x40 != 0;
        wire::write_ipip_header(s, (IPV4_HEADER_LEN + len) as u16, 0, tos, df, src, dst);
        self.lens[i] = IPV4_HEADER_LEN + len;
        self.dsts[i] = dst;
        self.queued += 1;
    }

    /// Fragments the `len`-byte packet in `scratch` into the ring.
    fn push_fragments(&mut self, up: &Uplink, len: usize, dst: Ipv4Addr) -> io::Result<()> {
        let scratch = std::mem::take(&mut self.scratch);
        let r = (|| {
            let frags = Fragments::new(&scratch[..len], self.slot_size - IPV4_HEADER_LEN)
                .map_err(offload_error)?;
            for k in 0..frags.count() {
                let i = self.free_slot(up);
                let n = frags.write(k, self.inner_mut(i));
                if n == 0 {
                    return Err(invalid("fragment does not fit a slot"));
                }
                self.commit(i, n, up.local, dst);
            }
            Ok(())
        })();
        self.scratch = scratch;
        r
    }

    /// Queues one inner IPv4 packet (with the offload request `vnet`, whose
    /// offsets count from the start of the Ethernet frame) for `dst`.
    fn push(&mut self, up: &Uplink, inner: &[u8], vnet: VnetHdr, dst: Ipv4Addr) -> io::Result<()> {
        if inner.len() < IPV4_HEADER_LEN || inner[0] >> 4 != 4 {
            return Err(invalid("not an IPv4 packet"));
        }
        let total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
        if total < IPV4_HEADER_LEN || total > inner.len() {
            return Err(invalid("bad IPv4 total length"));
        }
        let inner = &inner[..total];
        let csum = if vnet.flags & VnetHdr::F_NEEDS_CSUM != 0 && !vnet.is_gso() {
            let start = usize::from(vnet.csum_start)
                .checked_sub(ETHERNET_HEADER_LEN)
                .ok_or_else(|| invalid("checksum start inside the Ethernet header"))?;
            Some((start, usize::from(vnet.csum_offset)))
        } else {
            None
        };
        let max_inner = self.slot_size - IPV4_HEADER_LEN;
        if vnet.is_gso() {
            if vnet.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_TCPV4 {
                return Err(invalid("GSO type other than TCPv4"));
            }
            let segs =
                TcpSegments::new(inner, usize::from(vnet.gso_size)).map_err(offload_error)?;
            for k in 0..segs.count() {
                if segs.len(k) <= max_inner {
                    let i = self.free_slot(up);
                    let n = segs.write(k, self.inner_mut(i));
                    self.commit(i, n, up.local, dst);
                } else {
                    let n = segs.write(k, &mut self.scratch);
                    self.push_fragments(up, n, dst)?;
                }
            }
            return Ok(());
        }
        if total <= max_inner {
            let i = self.free_slot(up);
            let s = &mut self.inner_mut(i)[..total];
            s.copy_from_slice(inner);
            if let Some((start, offset)) = csum {
                gso::complete_checksum(s, start, offset).map_err(offload_error)?;
            }
            self.commit(i, total, up.local, dst);
            return Ok(());
        }
        self.scratch[..total].copy_from_slice(inner);
        if let Some((start, offset)) = csum {
            gso::complete_checksum(&mut self.scratch[..total], start, offset)
                .map_err(offload_error)?;
        }
        self.push_fragments(up, total, dst)
    }

    /// Sends everything queued; always leaves the ring empty.
    fn flush(&mut self, up: &Uplink) -> io::Result<()> {
        let (mut sent, mut dropped, mut waits) = (0, 0u64, 0);
        let mut err = None;
        while sent < self.queued {
            let pkts = (sent..self.queued).map(|i| {
                let at = i * self.slot_size;
                (&self.buf[at..at + self.lens[i]], self.dsts[i])
            });
            match sys::send_batch(up.fd.as_fd(), pkts) {
                Ok(0) => {
                    dropped += (self.queued - sent) as u64;
                    break;
                }
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && waits < FLUSH_WAITS => {
                    waits += 1;
                    let _ = sys::wait_writable(up.fd.as_fd(), FLUSH_WAIT_MS);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dropped += (self.queued - sent) as u64;
                    err = Some(e);
                    break;
                }
                // The first packet of this call was refused (EMSGSIZE,
                // unreachable, ...): drop it, send the rest.
                Err(e) => {
                    sent += 1;
                    dropped += 1;
                    err = Some(e);
                }
            }
        }
        self.queued = 0;
        if dropped > 0 {
            up.tx_dropped.fetch_add(dropped, Ordering::Relaxed);
            return Err(err.unwrap_or_else(|| io::ErrorKind::WriteZero.into()));
        }
        Ok(())
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
                let src = if len >= IPV4_HEADER_LEN {
                    let o = &d[ETHERNET_HEADER_LEN + 12..ETHERNET_HEADER_LEN + 16];
                    tunnel_mac(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
                } else {
                    [0; 6]
                };
                d[0..6].copy_from_slice(&crate::ROUTER_MAC);
                d[6..12].copy_from_slice(&src);
                d[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            }
            n += got;
            if got < want {
                break;
            }
        }
        Ok(gso::coalesce_ipip_tcp(frames, n))
    }

    /// Queues the frame's inner packet, encapsulated for the node its
    /// Ethernet destination names, cut into segments or fragments as
    /// needed. Flushes early when the ring is full.
    fn send(&self, frame: &Frame) -> io::Result<()> {
        let d = frame.data();
        if d.len() < ETHERNET_HEADER_LEN + IPV4_HEADER_LEN {
            return Err(invalid("frame too short for IPv4"));
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&d[0..6]);
        let dst = tunnel_node(&mac);
        let inner = &d[ETHERNET_HEADER_LEN..];
        self.with_ring(|ring| ring.push(self, inner, frame.vnet, dst))
    }

    fn flush(&self) -> io::Result<()> {
        self.with_ring(|ring| ring.flush(self))
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
    use crate::wire::check_ipv4;
    use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, UdpPacket};
    use std::time::Duration;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn policy_decides_per_node() {
        let a = Ipv4Addr::new(192, 168, 57, 12);
        let far = Ipv4Addr::new(192, 168, 58, 13);
        let subnet = Some(p("192.168.57.0/24"));
        let pol = |mode| EncapPolicy { mode, subnet };
        assert!(pol(EncapMode::Always).encap_to(a));
        assert!(pol(EncapMode::Always).encap_to(far));
        assert!(!pol(EncapMode::Never).encap_to(a));
        assert!(!pol(EncapMode::Never).encap_to(far));
        assert!(!pol(EncapMode::CrossSubnet).encap_to(a));
        assert!(pol(EncapMode::CrossSubnet).encap_to(far));
        let unknown = EncapPolicy {
            mode: EncapMode::CrossSubnet,
            subnet: None,
        };
        assert!(unknown.encap_to(a), "no subnet known: encapsulate");
    }

    #[test]
    fn tunnel_mac_round_trips() {
        let n = Ipv4Addr::new(192, 168, 57, 32);
        assert_eq!(tunnel_mac(n), [192, 168, 57, 32, 0, 0]);
        assert_eq!(tunnel_node(&tunnel_mac(n)), n);
    }

    const NODE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 66);

    /// An Ethernet frame to the uplink for `node` carrying `ip`.
    fn to_node(node: Ipv4Addr, ip: &[u8], vnet: VnetHdr) -> Frame {
        let mut v = tunnel_mac(node).to_vec();
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

            // 1. A small ICMP-ish packet with DF.
            let mut plain = ip_header(1, 0x4000, 60);
            plain[20] = 8;
            tx.send(&to_node(NODE_B, &plain, VnetHdr::default()))
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
            tx.send(&to_node(NODE_B, &udp, csum)).unwrap();
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
            tx.send(&to_node(NODE_B, &tcp, gso)).unwrap();
            // 4. 2000 bytes of UDP without DF: fragmented to fit 980.
            let big = ip_header(17, 0, 2000);
            tx.send(&to_node(NODE_B, &big, VnetHdr::default())).unwrap();
            tx.flush().unwrap();

            // The three TCP segments come back coalesced into one frame.
            let got = drain(&rx, 1 + 1 + 1 + 3);
            assert_eq!(got.len(), 6, "1 + 1 + 3 segments (coalesced) + 3 fragments");
            let mut tcp_payload = Vec::new();
            let mut frag_bytes = 0;
            for (k, f) in got.iter().enumerate() {
                assert_eq!(&f[0..6], &crate::ROUTER_MAC);
                assert_eq!(tunnel_node(f[6..12].try_into().unwrap()), NODE_A);
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
            assert!(tx.send(&to_node(NODE_B, &big, bad)).is_err());
            assert!(tx
                .send(&to_node(NODE_B, &plain[..10], VnetHdr::default()))
                .is_err());
            tx.flush().unwrap();
        });
    }
}
