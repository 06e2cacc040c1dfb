//! The VXLAN uplink port: VXLAN-in-UDP frames to and from other nodes
//! through one TAP in the node's namespace, so 64 KiB TCP segments cross
//! the underlay whole, one `writev` or `readv` each, and the node's kernel
//! does the routing, the segmentation (on the wire or not at all, when the
//! underlay is a veth) and the GRO.
//!
//! # How frames move
//!
//! - **Send, GSO frames**: [`Port::push`] gets an inner Ethernet frame
//!   and the next-hop node (the pipeline's `Verdict::Forward { tunnel }`).
//!   A TCP GSO frame is written at once, in one `writev`: a 24-byte
//!   `virtio_net_hdr_v1_hash_tunnel`
//!   ([`TunnelVnetHdr::encap`]: a TCPv4 GSO request becomes
//!   `UDP_TUNNEL_IPV4 | TCPV4` with the tunnel offsets), the 50 outer bytes
//!   ([`OuterHeaders`]: to the TAP's own MAC, node to node, UDP to the
//!   VXLAN port, the VNI), the inner Ethernet header rewritten to the
//!   peer's VTEP MAC from ours, and the inner packet straight from the
//!   frame buffer: no copy in userspace. The node's kernel receives the
//!   frame on the TAP (it needs `accept_local=1`, `rp_filter=0` there:
//!   the source is its own address, see `control::vxlan_setup`) and routes
//!   it over the underlay; it cuts the segment only if the next link
//!   needs it.
//! - **Send, everything else** (ACKs, small packets): copied into the
//!   worker's [`TxRing`] behind the 36 bytes of outer IPv4, UDP and VXLAN
//!   and the inner Ethernet header, and sent per batch with `sendmmsg` on
//!   a send-only raw socket (`IPPROTO_RAW`, our own IPv4 header), so small
//!   packets cost a fraction of a syscall each, as on the IPIP uplink.
//!   The ring completes partial checksums and fragments an inner packet
//!   without DF that does not fit the path. A GSO frame first flushes the
//!   ring, so the two paths never reorder a flow.
//! - **Receive**: a tc filter on the underlay interface redirects UDP to
//!   the VXLAN port (and this node's address) to the TAP's egress, so the
//!   kernel's GRO'd packets arrive whole. [`Port::recv`] reads them with
//!   their offload header (the base part goes to [`Frame::vnet`], tunnel
//!   GSO type included; the tunnel offsets are fixed for the IPv4 headers
//!   the filter admits) and hands them to the pipeline as they are: its
//!   decapsulation stage checks and strips the outer headers
//!   (`pipeline` `vxlan_decap`).
//! - **Queues**: the TAP is multi-queue, one queue per worker
//!   ([`crate::mq`]): the kernel steers each redirected packet by its
//!   outer addresses and UDP source port (which the sender derives from
//!   the inner flow), so every worker decapsulates a share of the flows
//!   and each flow stays on one worker, in order. Frames are written
//!   through the first descriptor, by every worker.
//!
//! # Peers' VTEP MACs
//!
//! A peer's inner destination is [`vtep_mac`] of its address unless the
//! table set by [`VxlanPort::set_peer_macs`] (routes' `vtep_mac`) names
//! another; the table is an immutable snapshot swapped whole.
//!
//! # Too big for the path
//!
//! The pipeline answers DF packets that do not fit the path (link MTU -
//! 50, or the path MTU learned for the node minus 50, [`crate::pmtu`])
//! with ICMP fragmentation needed. A packet without DF that does not fit
//! is fragmented by the ring (inner fragments, each in its own VXLAN
//! packet, as the IPIP uplink does) to the same bound, so no VXLAN packet
//! is ever an outer fragment: the receive classifier only takes whole
//! ones, and the kernel peers never need to reassemble. Outer packets
//! carry DF, so a narrower link on the underlay answers with ICMP frag
//! needed (which teaches the path MTU) instead of fragmenting them into
//! pieces the far node's classifier would not take.
//!
//! Invariants: the descriptor is non-blocking; `recv` stops at `EAGAIN`,
//! `send` returns the kernel's error (the worker counts it); nothing per
//! frame allocates, locks or logs; a frame that cannot be encapsulated
//! (GSO other than TCPv4, over 65535 bytes of outer IPv4) is refused with
//! `InvalidData`. The TAP is not persistent: it goes with the descriptor.
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::frame::Frame;
use crate::pipeline::flow_hash;
use crate::pmtu::PathMtus;
use crate::port::{foreign_queue, Port, RxQueue, TxQueue};
use crate::sys;
use crate::tap::read_frames_with;
use crate::txring::{TxRing, TxSink};
use crate::vxlan::{
    source_port, vtep_mac, OuterHeaders, TunnelVnetHdr, VxlanParams, OUTER_LEN, TUNNEL_VNET_HDR_LEN,
};
use crate::wire::{ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN};

/// Peers whose VTEP MAC is not the derived one, sorted by address.
pub type PeerMacs = Vec<(Ipv4Addr, [u8; 6])>;

/// The VXLAN uplink. See the module documentation.
pub struct VxlanPort {
    fd: OwnedFd,
    name: String,
    local: Ipv4Addr,
    params: VxlanParams,
    /// The TAP's own MAC: the outer destination, so the kernel takes the
    /// frames as addressed to it.
    tap_mac: [u8; 6],
    peers: ArcSwap<PeerMacs>,
    /// The underlay MTU: the ring's slot size.
    link_mtu: usize,
    /// Send-only raw socket (`IPPROTO_RAW`) for the ring's batches.
    raw: OwnedFd,
    /// IPv4 identification of the next outer packet written to the TAP.
    ident: AtomicU32,
    /// Packets the ring could not send.
    tx_dropped: AtomicU64,
    /// Path MTUs learned towards other nodes ([`crate::pmtu`]), once the
    /// daemon has set them: packets without DF are fragmented to fit.
    path_mtus: OnceLock<Arc<PathMtus>>,
    /// The TAP's other receive queues ([`Port::rx_queues`]).
    queues: Vec<Arc<RxQueue>>,
}

/// Socket buffer for the ring's raw socket.
const SOCKET_BUFFER: usize = 4 << 20;
/// The ring: slots of the link MTU, within these bounds.
const RING_BYTES: usize = 2 << 20;
const MIN_SLOTS: usize = 16;
const MAX_SLOTS: usize = 256;
/// Where the inner Ethernet header starts in a ring slot: after the outer
/// IPv4, UDP and VXLAN headers (a raw IP socket takes no Ethernet header).
const RING_INNER_ETH: usize = OUTER_LEN - ETHERNET_HEADER_LEN;
/// Bytes in front of a ring slot's inner IPv4 packet.
const RING_HEADER: usize = RING_INNER_ETH + ETHERNET_HEADER_LEN;
/// One `EAGAIN` wait of a flush, in milliseconds.
const FLUSH_WAIT_MS: i32 = 1;

/// The ring's batched send: `sendmmsg` on the raw socket.
struct RawSink<'a>(BorrowedFd<'a>);

impl TxSink for RawSink<'_> {
    fn send<'a>(&mut self, pkts: impl Iterator<Item = (&'a [u8], Ipv4Addr)>) -> io::Result<usize> {
        sys::send_batch(self.0, pkts)
    }

    fn wait(&mut self) {
        let _ = sys::wait_writable(self.0, FLUSH_WAIT_MS);
    }
}

impl std::fmt::Debug for VxlanPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VxlanPort")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("params", &self.params)
            .finish()
    }
}

impl VxlanPort {
    /// Creates the TAP `name` (not persistent: it goes with the port) in
    /// the calling thread's network namespace, with the UDP-tunnel
    /// offloads and the 24-byte header, and `queues` receive queues (one
    /// per worker; see the module documentation). `local` is the node's
    /// address, `link_mtu` the underlay's MTU. The device is left down;
    /// the caller configures and raises it.
    pub fn create(
        name: &str,
        local: Ipv4Addr,
        params: VxlanParams,
        link_mtu: u16,
        queues: usize,
    ) -> io::Result<VxlanPort> {
        if link_mtu < 68 + crate::vxlan::MTU_OVERHEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("underlay MTU {link_mtu} leaves no room for VXLAN"),
            ));
        }
        let fd = sys::open_tun()?;
        let flags = sys::TAP_FLAGS | sys::IFF_MULTI_QUEUE;
        sys::tun_set_iff(fd.as_fd(), name, flags | sys::IFF_TUN_EXCL).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create TAP {name} for VXLAN: {e}"))
        })?;
        configure(fd.as_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "TAP {name}: the kernel refused UDP tunnel offloads (TUN_F_UDP_TUNNEL_GSO \
                     needs Linux 6.17 or later): {e}"
                ),
            )
        })?;
        let tap_mac = sys::tun_hwaddr(fd.as_fd())?;
        let raw = sys::raw_ipv4_socket(libc::IPPROTO_RAW as u8)?;
        sys::set_socket_buffers(raw.as_fd(), SOCKET_BUFFER);
        let queues = crate::mq::attach_extra_queues(
            fd.as_fd(),
            name,
            flags,
            queues,
            configure,
            read_packets,
        )
        .into_iter()
        .map(Arc::new)
        .collect();
        Ok(VxlanPort {
            fd,
            name: name.to_string(),
            local,
            params,
            tap_mac,
            link_mtu: usize::from(link_mtu),
            raw,
            peers: ArcSwap::from_pointee(Vec::new()),
            ident: AtomicU32::new(0),
            tx_dropped: AtomicU64::new(0),
            path_mtus: OnceLock::new(),
            queues,
        })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn params(&self) -> VxlanParams {
        self.params
    }

    /// Replaces the table of peers whose VTEP MAC is not [`vtep_mac`] of
    /// their address.
    pub fn set_peer_macs(&self, mut peers: PeerMacs) {
        peers.sort_by_key(|(ip, _)| *ip);
        peers.dedup_by_key(|(ip, _)| *ip);
        self.peers.store(Arc::new(peers));
    }

    /// The path MTUs this port fragments to (set once, by the daemon; a
    /// second call is ignored).
    pub fn set_path_mtus(&self, path_mtus: Arc<PathMtus>) {
        let _ = self.path_mtus.set(path_mtus);
    }

    /// The largest inner packet the ring may send to `node` for an inner
    /// packet `ip`: the learned path MTU minus 50 when one is known and
    /// the packet is big enough to care and has no DF (DF packets that do
    /// not fit were answered by the pipeline), else everything a slot
    /// holds.
    fn ring_limit(&self, node: Ipv4Addr, ip: &[u8]) -> usize {
        const SMALLEST: usize = (crate::pmtu::MIN_PMTU - crate::vxlan::MTU_OVERHEAD) as usize;
        let df = ip.get(6).is_some_and(|f| f & 0x40 != 0);
        if ip.len() <= SMALLEST || df {
            return usize::MAX;
        }
        self.path_mtus
            .get()
            .and_then(|p| p.load().inner_mtu(node))
            .map_or(usize::MAX, usize::from)
    }

    /// The inner destination MAC for frames to `node`.
    pub fn peer_mac(&self, node: Ipv4Addr) -> [u8; 6] {
        let peers = self.peers.load();
        match peers.binary_search_by_key(&node, |(ip, _)| *ip) {
            Ok(i) => peers[i].1,
            Err(_) => vtep_mac(node),
        }
    }
}

impl VxlanPort {
    /// Packets the ring could not send (the kernel refused or stayed
    /// full).
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped.load(Ordering::Relaxed)
    }

    fn count_drops(&self, ring: &mut TxRing) {
        let dropped = ring.take_dropped();
        if dropped > 0 {
            self.tx_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Fills a ring slot's 50 header bytes in front of its inner IPv4
    /// packet: outer IPv4 (identification 0: the kernel picks one), UDP,
    /// VXLAN, inner Ethernet to `node`'s VTEP MAC. The UDP source port is
    /// the inner flow's, as on the TAP path.
    fn ring_header(&self, pkt: &mut [u8], node: Ipv4Addr) {
        let (head, ip) = pkt.split_at_mut(RING_HEADER);
        let outer = OuterHeaders {
            dst_mac: self.tap_mac,
            src_mac: self.params.mac,
            src: self.local,
            dst: node,
            ident: 0,
            tos: ip.get(1).copied().unwrap_or(0),
            src_port: source_port(flow_hash(ip)),
            dst_port: self.params.port,
            vni: self.params.vni,
        };
        // A slot is at most the link MTU, so the lengths always fit.
        outer.write_from_ip(head, ETHERNET_HEADER_LEN + ip.len());
        let eth = &mut head[RING_INNER_ETH..];
        eth[0..6].copy_from_slice(&self.peer_mac(node));
        eth[6..12].copy_from_slice(&self.params.mac);
        eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    }

    /// Writes one VXLAN packet carrying `ip` to `node` into the TAP.
    fn write_tap(&self, node: Ipv4Addr, vnet: &TunnelVnetHdr, ip: &[u8]) -> io::Result<()> {
        let outer = OuterHeaders {
            dst_mac: self.tap_mac,
            src_mac: self.params.mac,
            src: self.local,
            dst: node,
            ident: self.ident.fetch_add(1, Ordering::Relaxed) as u16,
            tos: ip[1],
            src_port: source_port(flow_hash(ip)),
            dst_port: self.params.port,
            vni: self.params.vni,
        };
        let mut head = [0u8; OUTER_LEN + ETHERNET_HEADER_LEN];
        if !outer.write(&mut head, ETHERNET_HEADER_LEN + ip.len()) {
            return Err(invalid("too big for one VXLAN packet"));
        }
        head[OUTER_LEN..OUTER_LEN + 6].copy_from_slice(&self.peer_mac(node));
        head[OUTER_LEN + 6..OUTER_LEN + 12].copy_from_slice(&self.params.mac);
        head[OUTER_LEN + 12..].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let hdr = vnet.to_bytes();
        let want = hdr.len() + head.len() + ip.len();
        let n = sys::write_parts(self.fd.as_fd(), &[&hdr, &head, ip])?;
        if n != want {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }
}

/// The UDP-tunnel header size and offloads on one descriptor of the TAP.
fn configure(fd: BorrowedFd<'_>) -> io::Result<()> {
    sys::tun_set_vnet_hdr_sz(fd, TUNNEL_VNET_HDR_LEN as libc::c_int)?;
    sys::tun_set_offload(
        fd,
        sys::TAP_OFFLOADS | sys::TUN_F_UDP_TUNNEL_GSO | sys::TUN_F_UDP_TUNNEL_GSO_CSUM,
    )
}

/// One `readv` per packet, as the kernel queued it (GRO'd: up to 64 KiB),
/// with the tunnel offload header.
fn read_packets(fd: BorrowedFd<'_>, frames: &mut [Frame]) -> io::Result<usize> {
    read_frames_with::<TUNNEL_VNET_HDR_LEN>(fd, frames, |h| TunnelVnetHdr::from_bytes(h).base)
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Port for VxlanPort {
    /// [`read_packets`] on the first queue.
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
        read_packets(self.fd.as_fd(), frames)
    }

    fn rx_queues(&self) -> Vec<Arc<dyn Port>> {
        self.queues
            .iter()
            .map(|q| q.clone() as Arc<dyn Port>)
            .collect()
    }

    fn tx_queue(&self) -> TxQueue {
        let slots = (RING_BYTES / self.link_mtu).clamp(MIN_SLOTS, MAX_SLOTS);
        TxQueue::new(TxRing::new(slots, self.link_mtu, RING_HEADER))
    }

    /// A TCP GSO frame: flushes the ring (order within a flow), then one
    /// `writev` to the TAP: offload header, outer headers to `tunnel` (the
    /// next-hop node), rewritten inner Ethernet header, the inner packet
    /// from the frame buffer. Anything else: into the ring (see the module
    /// documentation).
    fn push(&self, queue: &mut TxQueue, frame: &Frame, tunnel: Option<Ipv4Addr>) -> io::Result<()> {
        let ring = queue.state::<TxRing>().ok_or_else(foreign_queue)?;
        let node = tunnel.ok_or_else(|| invalid("no tunnel endpoint for the VXLAN uplink"))?;
        let d = frame.data();
        if d.len() < ETHERNET_HEADER_LEN + IPV4_HEADER_LEN {
            return Err(invalid("frame too short for IPv4"));
        }
        let ip = &d[ETHERNET_HEADER_LEN..];
        let mut sink = RawSink(self.raw.as_fd());
        if !frame.vnet.is_gso() {
            let write_header = |pkt: &mut [u8], dst: Ipv4Addr| self.ring_header(pkt, dst);
            let limit = self.ring_limit(node, ip);
            let r = ring.push_limited(ip, frame.vnet, node, limit, &write_header, &mut sink);
            self.count_drops(ring);
            return r;
        }
        if ring.queued() > 0 {
            let r = ring.flush(&mut sink);
            self.count_drops(ring);
            r?;
        }
        let vnet = TunnelVnetHdr::encap(&frame.vnet)
            .ok_or_else(|| invalid("offload request VXLAN cannot carry"))?;
        self.write_tap(node, &vnet, ip)
    }

    fn flush(&self, queue: &mut TxQueue) -> io::Result<()> {
        let ring = queue.state::<TxRing>().ok_or_else(foreign_queue)?;
        let r = ring.flush(&mut RawSink(self.raw.as_fd()));
        self.count_drops(ring);
        r
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}
