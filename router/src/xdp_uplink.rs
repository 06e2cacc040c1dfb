//! The tunnel uplink's receive through XDP (`[dataplane] uplink_xdp`): an
//! XDP program on the underlay interface hands this node's tunnel traffic
//! (IPIP, or VXLAN on its UDP port) to AF_XDP sockets and passes
//! everything else to the kernel, so the node's own traffic (SSH, the
//! API, BGP, ARP) never leaves the host's stack.
//!
//! [`XdpUplink`] wraps the raw-socket [`Uplink`](crate::uplink::Uplink),
//! the [`VxlanPort`](crate::vxlan_port::VxlanPort) (or any tunnel port:
//! `inner`) and keeps its transmit path (`tx_queue`, `push`, `flush` go to
//! `inner`) and its other receive queues ([`Port::rx_queues`]). Receive:
//!
//! - one AF_XDP socket per receive queue of the interface (queue 0, 1, ...
//!   as far as the kernel binds them, at most [`MAX_QUEUES`]), each with
//!   its own UMEM of [`RX_RING`] chunks, all in one XSKMAP at their queue's
//!   index;
//! - the program of [`crate::bpf::uplink_program`]: IPIP (protocol 4), or
//!   UDP to the VXLAN port, addressed to the node, whole, IPv4 without
//!   options, no longer than a chunk, goes to the socket of its queue (or
//!   on to the kernel if that queue has none); anything else goes on
//!   (`XDP_PASS`);
//! - what the program passes and is still tunnel traffic for us
//!   (fragments, options, frames too long for a chunk, queues beyond
//!   [`MAX_QUEUES`]) reaches the inner port as before (the raw socket;
//!   VXLAN's tc redirect into its TAP), so [`Port::recv`] takes the
//!   sockets' frames first and then whatever the inner port has. The
//!   inner port is nearly always empty, so while the sockets deliver it is
//!   read only every [`INNER_EVERY`]th receive (a syscall that would find
//!   nothing, saved on the others), and always before a receive returns
//!   nothing: the worker drops the port from its ready set only then, so
//!   no frame waits behind an edge it consumed.
//!
//! Frames from the sockets are turned into what the inner port hands the
//! pipeline:
//!
//! - IPIP, as the raw socket: the outer Ethernet header rewritten (router
//!   MAC as destination, source zero), trimmed to the outer IPv4 length
//!   (the wire pads short frames), then consecutive TCP segments of a flow
//!   coalesced ([`gso::coalesce_ipip_tcp`]);
//! - VXLAN, as the TAP: the whole frame, outer Ethernet first, trimmed to
//!   the outer IPv4 length, with the inner checksum state the TAP's
//!   offload header would have carried. The bytes say it: an inner TCP or
//!   UDP checksum field that holds exactly its pseudo-header sum is a
//!   partial checksum the sending kernel left (a veth underlay does), and
//!   the frame is marked `NEEDS_CSUM` ([`gso::mark_partial_checksum`]);
//!   any other checksum is full, and the pod's kernel verifies it (and
//!   drops and counts a wrong one). Consecutive TCP segments of a flow
//!   are then coalesced into a UDP-tunnel GSO frame as the TAP would have
//!   handed over after the kernel's GRO ([`gso::coalesce_vxlan_tcp`]).
//!
//! The pipeline checks and strips the outer headers as for the inner
//! port (the known-node, VNI, VTEP MAC and inner-source checks included).
//!
//! Readiness: one epoll descriptor (nested in the worker's) watches every
//! socket and the inner port, so an idle uplink costs nothing.
//!
//! Invariants: the program never drops (every path ends in a redirect
//! whose fallback is `XDP_PASS`, or `XDP_PASS`); dropping the port
//! detaches it (the BPF link's descriptor closes first) and a killed
//! podrouterd leaves none (the link lives only as long as its
//! descriptor); one receive batch takes one uncontended lock per socket
//! and no syscall beyond a fill-ring wakeup the kernel asked for and the
//! inner port's receive.
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};

use crate::afxdp::{
    attach, chunk_size_for, context, AfXdpStats, XdpMode, XdpModeRequest, XskRx, MAX_CHUNK_MTU,
    RX_RING,
};
use crate::bpf::{self, UplinkTunnel, XDP_PROG_NAME};
use crate::frame::Frame;
use crate::gso;
use crate::port::{Port, TxQueue};
use crate::sys;
use crate::sys::xsk::UmemArea;
use crate::vxlan::INNER_IP_OFFSET;
use crate::wire::{field, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN};

/// While the sockets deliver, the inner port is read on one receive in
/// this many (and always when they deliver nothing).
pub const INNER_EVERY: u32 = 8;

/// Most receive queues of the uplink given a socket; tunnel traffic on a
/// queue beyond them takes the kernel's path (the raw socket).
pub const MAX_QUEUES: u32 = 16;

/// What [`XdpUplink::open`] needs.
#[derive(Clone, Debug)]
pub struct XdpUplinkConfig {
    /// The underlay interface, in the calling thread's namespace.
    pub ifname: String,
    /// The node's address: only tunnel traffic addressed to it is taken.
    pub local: Ipv4Addr,
    /// Which tunnel's packets the program takes (VXLAN: its UDP port).
    pub tunnel: UplinkTunnel,
    /// The interface's MTU (largest outer IPv4 packet).
    pub link_mtu: u16,
    pub mode: XdpModeRequest,
}

/// The uplink with its receive through XDP. See the module documentation.
pub struct XdpUplink {
    // Drop order matters: the link (detaching the program) goes first.
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    ifname: String,
    mode: XdpMode,
    prog_id: u32,
    queues: Vec<XskRx>,
    inner: Arc<dyn Port>,
    /// Watches every socket and the inner port (the readiness fd).
    ready: Poll,
    tunnel: UplinkTunnel,
    /// The underlay's MTU, which bounds what receive coalescing takes as
    /// one packet ([`gso::coalesce_ipip_tcp`]).
    link_mtu: usize,
    /// Receives since the inner port was last read ([`INNER_EVERY`]). One
    /// worker receives from the port, so relaxed ordering is enough.
    since_inner: AtomicU32,
}

impl fmt::Debug for XdpUplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpUplink")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .field("prog_id", &self.prog_id)
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl XdpUplink {
    /// Sets up the sockets and attaches the program on `cfg.ifname`,
    /// around `inner` (the tunnel port that transmits, and receives what
    /// the program passes). Fails with `ResourceBusy` if the interface
    /// already has an XDP program (the caller replaces one a previous
    /// podrouterd left, never another's).
    pub fn open(cfg: &XdpUplinkConfig, inner: Arc<dyn Port>) -> io::Result<XdpUplink> {
        let name = &cfg.ifname;
        let ifindex = sys::if_nametoindex(name)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))
        })?;
        let chunk = chunk_size_for(cfg.link_mtu).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "uplink MTU {} is above what uplink_xdp takes ({MAX_CHUNK_MTU}: one UMEM chunk per frame)",
                    cfg.link_mtu
                ),
            )
        })?;
        let mut queues = Vec::new();
        let mut zerocopy = true;
        for queue in 0..MAX_QUEUES {
            let area =
                UmemArea::new(RX_RING, chunk).map_err(|e| context(e, "cannot map the UMEM"))?;
            match XskRx::open(&area, ifindex, queue, name) {
                Ok(rx) => {
                    zerocopy &= rx.zerocopy();
                    queues.push(rx);
                }
                // Past the interface's last queue.
                Err(e) if queue > 0 && e.kind() == io::ErrorKind::InvalidInput => break,
                Err(e) => return Err(e),
            }
        }
        let map = sys::bpf::xskmap_create("podrouter_upl", queues.len() as u32)
            .map_err(|e| context(e, "cannot create the XSKMAP"))?;
        for (q, rx) in queues.iter().enumerate() {
            sys::bpf::xskmap_set(map.as_fd(), q as u32, rx.fd())
                .map_err(|e| context(e, "cannot put a socket in the XSKMAP"))?;
        }
        let max_frame = cfg.link_mtu + ETHERNET_HEADER_LEN as u16;
        let insns = bpf::uplink_program(map.as_raw_fd(), cfg.local, max_frame, cfg.tunnel);
        let prog = sys::bpf::xdp_prog_load(XDP_PROG_NAME, &insns, bpf::LICENSE)
            .map_err(|e| context(e, "cannot load the uplink's XDP program"))?;
        let prog_id = sys::bpf::prog_id(prog.as_fd())?;
        let ready = Poll::new()?;
        for (i, rx) in queues.iter().enumerate() {
            let fd = rx.fd().as_raw_fd();
            ready
                .registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)?;
        }
        if let Some(fd) = inner.readiness_fd() {
            ready.registry().register(
                &mut SourceFd(&fd),
                Token(usize::MAX - 1),
                Interest::READABLE,
            )?;
        }
        let (link, attach) = attach(&prog, ifindex, cfg.mode)
            .map_err(|e| context(e, format!("cannot attach the XDP program to {name}")))?;
        Ok(XdpUplink {
            _link: link,
            _prog: prog,
            _map: map,
            ifname: name.clone(),
            mode: XdpMode {
                attach,
                zerocopy,
                multi_buffer: false,
            },
            prog_id,
            queues,
            inner,
            ready,
            tunnel: cfg.tunnel,
            link_mtu: usize::from(cfg.link_mtu),
            since_inner: AtomicU32::new(0),
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Attach mode and copy mode the uplink got.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Id of the attached XDP program (as `ip link` shows it).
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// The tunnel whose packets the program takes.
    pub fn tunnel(&self) -> UplinkTunnel {
        self.tunnel
    }

    /// Receive queues with a socket.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The kernel's drop counters of every socket (`getsockopt`s: for the
    /// control plane).
    pub fn stats(&self) -> AfXdpStats {
        let mut s = AfXdpStats::default();
        for q in &self.queues {
            q.add_stats(&mut s);
        }
        s
    }
}

/// Makes a frame from a socket look like one from the raw socket: router
/// MAC as destination, source zero, IPv4 (the program checked it), the
/// length of the outer IPv4 packet (no Ethernet padding). A frame whose
/// length field is wrong is left as it is: the pipeline drops it.
fn as_raw_socket_frame(f: &mut Frame) {
    let d = f.data_mut();
    if d.len() < ETHERNET_HEADER_LEN + IPV4_HEADER_LEN {
        return;
    }
    d[field::ethernet::DESTINATION].copy_from_slice(&crate::ROUTER_MAC);
    d[field::ethernet::SOURCE].fill(0);
    d[field::ethernet::ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_len = usize::from(u16::from_be_bytes([
        d[ETHERNET_HEADER_LEN + 2],
        d[ETHERNET_HEADER_LEN + 3],
    ]));
    let len = ETHERNET_HEADER_LEN + ip_len;
    if ip_len >= IPV4_HEADER_LEN && len < d.len() {
        f.set_len(len);
    }
}

/// Makes a VXLAN frame from a socket look like one from the VXLAN TAP:
/// no Ethernet padding past the outer IPv4 length, and the inner
/// checksum's state in the offload header where the bytes show a partial
/// one ([`gso::mark_partial_checksum`] on an inner IPv4 packet). A frame
/// whose lengths are wrong is left as it is: the pipeline drops it.
fn as_tap_frame(f: &mut Frame) {
    let d = f.data();
    if d.len() < INNER_IP_OFFSET {
        return;
    }
    let ip_len = usize::from(u16::from_be_bytes([
        d[ETHERNET_HEADER_LEN + 2],
        d[ETHERNET_HEADER_LEN + 3],
    ]));
    let len = ETHERNET_HEADER_LEN + ip_len;
    if len < INNER_IP_OFFSET || len > d.len() {
        return;
    }
    let inner_ipv4 = d[INNER_IP_OFFSET - 2..INNER_IP_OFFSET] == ETHERTYPE_IPV4.to_be_bytes();
    f.set_len(len);
    if inner_ipv4 {
        gso::mark_partial_checksum(f, INNER_IP_OFFSET);
    }
}

impl Port for XdpUplink {
    /// The sockets' frames first (made to look like the raw socket's or
    /// the TAP's, TCP segments coalesced), then the inner port's, up to
    /// `frames.len()`: the inner port is read when the sockets gave
    /// nothing and on every [`INNER_EVERY`]th receive. An error of the
    /// inner port after frames were received is deferred.
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
        let mut n = 0;
        for q in &self.queues {
            if n == frames.len() {
                break;
            }
            n += q.recv(&mut frames[n..]);
        }
        let n = match self.tunnel {
            UplinkTunnel::Ipip => {
                for f in &mut frames[..n] {
                    as_raw_socket_frame(f);
                }
                gso::coalesce_ipip_tcp(frames, n, self.link_mtu)
            }
            UplinkTunnel::Vxlan { .. } => {
                for f in &mut frames[..n] {
                    as_tap_frame(f);
                }
                gso::coalesce_vxlan_tcp(frames, n)
            }
        };
        let since = self.since_inner.load(Ordering::Relaxed).saturating_add(1);
        if n == frames.len() || (n > 0 && since < INNER_EVERY) {
            self.since_inner.store(since, Ordering::Relaxed);
            return Ok(n);
        }
        self.since_inner.store(0, Ordering::Relaxed);
        match self.inner.recv(&mut frames[n..]) {
            Ok(m) => Ok(n + m),
            Err(_) if n > 0 => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.ready.as_raw_fd())
    }

    /// The inner port's other receive queues (the VXLAN TAP's, one per
    /// worker): what the program passes may land there.
    fn rx_queues(&self) -> Vec<Arc<dyn Port>> {
        self.inner.rx_queues()
    }

    fn tx_queue(&self) -> TxQueue {
        self.inner.tx_queue()
    }

    fn push(&self, queue: &mut TxQueue, frame: &Frame, tunnel: Option<Ipv4Addr>) -> io::Result<()> {
        self.inner.push(queue, frame, tunnel)
    }

    fn flush(&self, queue: &mut TxQueue) -> io::Result<()> {
        self.inner.flush(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::MemPort;
    use podrouter_testkit::{in_private_netns, Netns};
    use std::net::UdpSocket;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn frames_look_like_the_raw_sockets() {
        // Ethernet (to the NIC) + IPIP of 40 bytes + 6 bytes of padding.
        let mut b = vec![0x11u8; 6];
        b.extend_from_slice(&[0x22; 6]);
        b.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[9] = 4;
        b.extend_from_slice(&ip);
        b.extend_from_slice(&[0; 6]);
        let mut f = Frame::from_bytes(&b);
        as_raw_socket_frame(&mut f);
        assert_eq!(f.len(), 14 + 40);
        assert_eq!(f.data()[..6], crate::ROUTER_MAC);
        assert_eq!(f.data()[6..12], [0; 6]);
        assert_eq!(f.data()[14..], ip[..]);
        // A length field beyond the frame changes nothing but the header.
        let mut bad = b.clone();
        bad[16..18].copy_from_slice(&900u16.to_be_bytes());
        let mut f = Frame::from_bytes(&bad);
        as_raw_socket_frame(&mut f);
        assert_eq!(f.len(), bad.len());
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A few lines of python3 in the peer: `count` IPIP packets (the
    /// kernel writes the outer header) carrying a 28-byte inner packet
    /// to `dst`, and one UDP datagram to `dst` port 7000.
    fn peer_sends_ipip(peer: &Netns, dst: &str, count: u32) {
        python(
            peer,
            &format!(
                "import socket\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)\n\
                 inner = bytes([0x45,0,0,28, 0,0,0x40,0, 64,17,0,0, 10,244,0,66, 10,244,0,2]) + bytes(8)\n\
                 for i in range({count}):\n    s.sendto(inner, ('{dst}', 0))\n\
                 u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 u.sendto(b'host', ('{dst}', 7000))\n"
            ),
        );
    }

    /// Length of the inner IPv4 packet [`peer_sends_vxlan`] sends.
    const VXLAN_INNER_IP: usize = 20 + 20 + 100;

    /// python3 in the peer: `count` VXLAN datagrams to `dst` port 4789
    /// (VNI 4096), each an inner Ethernet frame with TCP/IPv4 of 100
    /// payload bytes whose TCP checksum is partial (the pseudo-header
    /// sum) in even ones and full in odd ones; one datagram to port 4790
    /// (VXLAN's shape, another port) and one to port 7000.
    fn peer_sends_vxlan(peer: &Netns, dst: &str, count: u32) {
        python(
            peer,
            &format!(
                "import socket, struct\n\
                 def fold(b):\n\
                 \x20   if len(b) % 2: b += bytes(1)\n\
                 \x20   s = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n\
                 \x20   while s >> 16: s = (s & 0xffff) + (s >> 16)\n\
                 \x20   return s\n\
                 src, dst = bytes([10,244,0,66]), bytes([10,244,0,2])\n\
                 tcp = struct.pack('!HHIIBBHHH', 40000, 5201, 1, 1, 0x50, 0x10, 500, 0, 0) + bytes(range(100))\n\
                 pseudo = src + dst + struct.pack('!BBH', 0, 6, len(tcp))\n\
                 partial = fold(pseudo)\n\
                 full = 0xffff - fold(pseudo + tcp)\n\
                 ip = struct.pack('!BBHHHBBH', 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0) + src + dst\n\
                 ip = ip[:10] + struct.pack('!H', 0xffff - fold(ip)) + ip[12:]\n\
                 eth = bytes([0xee,0xee,0xee,0xee,0xee,0xee, 2,0,0,0,0,1, 8,0])\n\
                 vx = bytes([8,0,0,0, 0,0x10,0,0])\n\
                 u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 for i in range({count}):\n\
                 \x20   c = partial if i % 2 == 0 else full\n\
                 \x20   t = tcp[:16] + struct.pack('!H', c) + tcp[18:]\n\
                 \x20   u.sendto(vx + eth + ip + t, ('{dst}', 4789))\n\
                 u.sendto(vx + eth + ip + tcp, ('{dst}', 4790))\n\
                 u.sendto(b'host', ('{dst}', 7000))\n"
            ),
        );
    }

    fn python(peer: &Netns, script: &str) {
        let out = peer
            .command("python3")
            .args(["-c", script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An uplink veth whose node end has the program: IPIP (or VXLAN to
    /// its port) addressed to the node arrives through the sockets as the
    /// inner port would hand it over, while ping and UDP to the node's
    /// address (VXLAN's shape to another port too) still reach the
    /// kernel. Dropping the port detaches the program. Both attach modes,
    /// both tunnels.
    #[test]
    fn tunnel_traffic_to_the_socket_the_rest_to_the_host() {
        if !podrouter_testkit::Needs::new("tunnel_traffic_to_the_socket_the_rest_to_the_host")
            .privileged()
            .commands(&["ip", "ping", "python3"])
            .met()
        {
            return;
        }
        let _one = crate::afxdp::UMEM_TESTS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for mode in [XdpModeRequest::Driver, XdpModeRequest::Generic] {
            for tunnel in [UplinkTunnel::Ipip, UplinkTunnel::Vxlan { port: 4789 }] {
                let peer = Netns::new("xupl");
                in_private_netns(|| exchange(&peer, mode, tunnel));
            }
        }
    }

    fn exchange(peer: &Netns, mode: XdpModeRequest, tunnel: UplinkTunnel) {
        ip(&[
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul1",
            "netns",
            peer.name(),
        ]);
        ip(&["addr", "add", "10.9.2.1/24", "dev", "ul0"]);
        ip(&["link", "set", "ul0", "up"]);
        peer.ip(&["addr", "add", "10.9.2.2/24", "dev", "ul1"]);
        peer.ip(&["link", "set", "ul1", "up"]);
        let inner: Arc<dyn Port> = Arc::new(MemPort::new());
        let port = XdpUplink::open(
            &XdpUplinkConfig {
                ifname: "ul0".into(),
                local: Ipv4Addr::new(10, 9, 2, 1),
                tunnel,
                link_mtu: 1500,
                mode,
            },
            inner,
        )
        .unwrap();
        assert!(port.queues() >= 1);
        let shown = ip(&["-d", "link", "show", "ul0"]);
        assert!(
            shown.contains(&format!("id {}", port.prog_id())) && shown.contains(XDP_PROG_NAME),
            "{shown}"
        );
        let host = UdpSocket::bind("10.9.2.1:7000").unwrap();
        host.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let other_port = UdpSocket::bind("10.9.2.1:4790").unwrap();
        other_port
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();

        let ping = peer
            .command("ping")
            .args(["-c", "2", "-i", "0.2", "-W", "2", "10.9.2.1"])
            .output()
            .unwrap();
        assert!(
            ping.status.success(),
            "ping to the node through the program: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
        match tunnel {
            UplinkTunnel::Ipip => peer_sends_ipip(peer, "10.9.2.1", 5),
            UplinkTunnel::Vxlan { .. } => peer_sends_vxlan(peer, "10.9.2.1", 6),
        }
        let mut buf = [0u8; 256];
        let (len, _) = host.recv_from(&mut buf).expect("UDP to the host passed");
        assert_eq!(&buf[..len], b"host");

        let want = match tunnel {
            UplinkTunnel::Ipip => 5,
            UplinkTunnel::Vxlan { .. } => 6,
        };
        let mut frames: Vec<Frame> = (0..8).map(|_| Frame::new()).collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            let n = port.recv(&mut frames).unwrap();
            got.extend(frames[..n].iter().map(|f| (f.data().to_vec(), f.vnet)));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got.len(), want, "tunnel traffic through the sockets");
        match tunnel {
            UplinkTunnel::Ipip => {
                for (d, _) in &got {
                    assert_eq!(d.len(), 14 + 20 + 28);
                    assert_eq!(d[..6], crate::ROUTER_MAC);
                    assert_eq!(d[14 + 9], 4, "outer protocol IPIP");
                    assert_eq!(d[14 + 16..14 + 20], [10, 9, 2, 1]);
                    assert_eq!(d[34 + 16..34 + 20], [10, 244, 0, 2], "inner destination");
                }
            }
            UplinkTunnel::Vxlan { .. } => {
                let (mut partial, mut full) = (0, 0);
                for (d, vnet) in &got {
                    assert_eq!(d.len(), INNER_IP_OFFSET + VXLAN_INNER_IP);
                    assert_eq!(d[14 + 9], 17, "outer protocol UDP");
                    assert_eq!(d[14 + 16..14 + 20], [10, 9, 2, 1]);
                    assert_eq!(d[36..38], 4789u16.to_be_bytes());
                    assert_eq!(d[46..50], [0, 0x10, 0, 0], "VNI 4096");
                    assert_eq!(
                        d[INNER_IP_OFFSET + 16..INNER_IP_OFFSET + 20],
                        [10, 244, 0, 2]
                    );
                    if vnet.flags == crate::frame::VnetHdr::F_NEEDS_CSUM {
                        assert_eq!(vnet.csum_start as usize, INNER_IP_OFFSET + 20);
                        assert_eq!(vnet.csum_offset, 16);
                        partial += 1;
                    } else {
                        assert_eq!(*vnet, crate::frame::VnetHdr::default());
                        full += 1;
                    }
                }
                assert_eq!((partial, full), (3, 3), "partial checksums told apart");
                let (len, _) = other_port
                    .recv_from(&mut buf)
                    .expect("UDP to another port passed");
                assert_eq!(len, 8 + 14 + VXLAN_INNER_IP);
            }
        }
        assert_eq!(port.stats().rx_dropped, 0);

        drop(port);
        let shown = ip(&["-d", "link", "show", "ul0"]);
        assert!(!shown.contains(XDP_PROG_NAME), "program left: {shown}");
        ip(&["link", "del", "ul0"]);
    }
}
