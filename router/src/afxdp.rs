//! AF_XDP ports: the node end of a pod's veth pair, driven through AF_XDP
//! sockets (XSK) instead of the kernel's stack.
//!
//! Memory: one receive pool and one transmit pool per worker, each a UMEM
//! shared by that worker's sockets through `XDP_SHARED_UMEM`, each socket
//! with its own fill and completion rings. A port's receive socket joins
//! the receive pool of the worker that polls it ([`rx_pool`]: arenas of
//! [`rx_pool::ARENA_MIN_CHUNKS`] chunks, one more whenever the pods'
//! standing shares fill one; a port holds its standing share
//! [`AfXdpConfig::rx_chunks`] when idle and up to [`rx_pool::RX_BURST`]
//! while busy, each counted in frames: times the chunks its largest frame
//! takes on a multi-buffer port); every transmit socket draws from its
//! worker's transmit UMEM ([`tx_pool`]: one per worker,
//! [`tx_pool::WORKER_TX_CHUNKS`] chunks). So a pod costs its standing share of an arena, whatever the
//! number of workers, and a worker costs one transmit pool whatever the
//! number of pods. [`umem_use`] sums what is mapped, for `podrouterctl
//! status`. The uplink's receive sockets ([`XskRx`], `uplink_xdp`) keep a
//! UMEM of their own per queue.
//!
//! Opening a port ([`AfXdpPort::open`]) sets up, on the node end:
//! - the receive socket, bound to queue 0 (where every frame the pod sends
//!   arrives: the pod end has one transmit queue), in an arena of its
//!   worker's receive pool, its fill ring holding its standing share;
//! - an XSKMAP with that socket at key 0 and the XDP program of
//!   [`crate::bpf::xsk_redirect_program`] attached as a BPF link, in driver
//!   mode if the interface supports it (or as configured), else generic.
//!
//! Receive ([`Port::recv`], the owning worker only): frames are copied out
//! of the RX ring's chunks into the worker's frames and the chunks go back
//! on the fill ring up to the port's target, the rest to the arena's free
//! list (or more are taken from it: [`rx_pool`]); one fill-ring wakeup per
//! batch if the kernel asked for it (`need_wakeup`). The receive socket's descriptor is the
//! readiness fd: epoll reports it when the RX ring gets frames, so an idle
//! port costs nothing.
//!
//! Transmit: a port's receive side is polled by the one worker that owns
//! the port, but any worker may send to it. Each worker gets its own
//! transmit socket per port (in its [`TxQueue`], made on first use, on the
//! worker's thread) bound to a queue of its own (1, 2, ...; the node end
//! has one queue per worker plus queue 0), and that socket joins the
//! *sending* worker's transmit UMEM, not the UMEM of the port's owner: its
//! chunks come from the sending worker's free list and go back to it from
//! its completion ring, which only that worker reads. A plain frame is
//! copied into a free chunk and described on the TX ring; a frame with an
//! offload request (partial checksum, TCP segmentation, from a TAP port)
//! goes through a [`TxRing`] that completes or cuts it in software first.
//! Flush publishes the ring and kicks the kernel (`sendto`) while it asks
//! for it; completed chunks return to the worker's free list as the
//! completion ring hands them back.
//!
//! Invariants: a port's sockets span several UMEMs (an arena of its
//! worker's receive pool, one transmit UMEM per worker that sends to it);
//! every ring is touched by one thread (the receive side by the owning
//! worker, under an uncontended mutex per batch, plus the arena's mutex
//! when a batch moves the port off its target; a transmit socket by the
//! worker that made it); a chunk is owned by exactly one of: a ring, the
//! kernel, a free list or the frame being copied; nothing allocates, locks
//! (beyond those mutexes, per batch) or logs per frame; a frame is never
//! truncated: on receive a frame larger than the port's MTU is dropped and
//! counted (by the kernel, `XDP_STATISTICS`, when it does not fit one
//! chunk of a single-buffer port; by the port, `rx_invalid`, otherwise:
//! see [`AfXdpPort::stats`]), on transmit one with an offload request is
//! cut into pieces that fit, any other too large is dropped and counted.
//!
//! Pod MTUs above one chunk ([`MAX_CHUNK_MTU`], up to [`MAX_POD_MTU`]):
//! the port is *multi-buffer* ([`Layout`]): its program is loaded with
//! `BPF_F_XDP_HAS_FRAGS` (without it veth refuses a peer MTU above about
//! 3500 in driver mode), its sockets bind with `XDP_USE_SG` on UMEMs of
//! their own kind, a received frame arrives as a chain of descriptors
//! gathered into one frame, and a transmitted one goes out as a chain
//! ([`chain`], [`rx_pool`], [`tx_pool`]). Ports at or below one chunk are
//! exactly as before. Dropping the port detaches the program (the
//! link's descriptor closes first) and closes the sockets; a podrouterd
//! killed outright leaves no program behind either, since a BPF link lives
//! only as long as its descriptor.
mod chain;
mod rx_pool;
mod tx_pool;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::bpf::{self, XDP_PROG_NAME};
use crate::frame::{Frame, VnetHdr, MAX_FRAME_LEN};
use crate::port::{foreign_queue, Port, TxQueue};
use crate::sys;
use crate::sys::bpf::{XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};
use crate::sys::xsk::{self, Ring, RingKind, UmemArea, UmemRange, XdpDesc};
use crate::txring::{TxRing, TxSink};
use crate::wire::ETHERNET_HEADER_LEN;

/// Entries of the uplink's receive sockets' fill and RX rings, and their
/// chunks ([`crate::xdp_uplink`]).
pub const RX_RING: u32 = 1024;
/// A pod port's standing receive share when the configuration names none:
/// frames' worth of chunks of its worker's receive pool it keeps on its
/// fill ring when idle (it draws up to [`rx_pool::RX_BURST`] frames' worth
/// while busy; a frame is one chunk unless the port is multi-buffer).
pub const DEFAULT_RX_CHUNKS: u32 = 128;
pub use rx_pool::{ARENA_MIN_CHUNKS, RX_BURST};
/// The standing shares a port may be given (a power of two in this range).
pub const RX_CHUNKS_RANGE: std::ops::RangeInclusive<u32> = 64..=4096;
/// Entries of a transmit socket's TX and completion rings, and the most
/// chunks of its worker's pool it may hold.
pub const TX_RING: u32 = 256;
/// Slots of a transmit socket's software-offload ring.
const OFFLOAD_SLOTS: usize = 64;
/// Bytes the kernel leaves in front of a received frame in copy mode
/// (`XDP_PACKET_HEADROOM`).
pub const XDP_HEADROOM: u32 = 256;
/// `sendto` kicks per flush while the kernel still has TX entries (copy
/// mode sends a bounded batch per call).
const MAX_KICKS: u32 = TX_RING / 16 + 2;

/// How the XDP program is to be attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpModeRequest {
    /// Driver (native) mode if the interface has it, else generic.
    #[default]
    Auto,
    Driver,
    Generic,
}

/// Where the XDP program runs: in the driver, or in the kernel's generic
/// (skb) path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    Driver,
    Generic,
}

/// What a port got: attach mode, whether the sockets are zero-copy, and
/// whether a frame may span several chunks (multi-buffer, [`Layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpMode {
    pub attach: XdpAttach,
    pub zerocopy: bool,
    pub multi_buffer: bool,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let copy = if self.zerocopy { "zero-copy" } else { "copy" };
        let attach = match self.attach {
            XdpAttach::Driver => "driver",
            XdpAttach::Generic => "generic",
        };
        write!(f, "{copy}, {attach}")?;
        if self.multi_buffer {
            write!(f, ", multi-buffer")?;
        }
        Ok(())
    }
}

/// Kernel and port drop counters of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfXdpStats {
    /// Frames the kernel dropped before our RX ring: too large for a
    /// chunk, or no room (`rx_dropped`).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Frames dropped because the fill ring was empty.
    pub rx_fill_empty: u64,
    /// Frames that could not be queued for transmit (no free chunk, ring
    /// full, kernel refused).
    pub tx_dropped: u64,
    /// Frames the port dropped on receive: longer than its MTU, or a chain
    /// of descriptors that was broken.
    pub rx_invalid: u64,
}

/// What [`AfXdpPort::open`] needs.
#[derive(Clone, Debug)]
pub struct AfXdpConfig {
    /// The node end of the veth pair, in the calling thread's namespace.
    pub ifname: String,
    /// Largest IPv4 packet on the link.
    pub mtu: u16,
    /// Transmit sockets the port can have (one per worker); the interface
    /// needs this many queues plus one.
    pub tx_queues: u32,
    pub mode: XdpModeRequest,
    /// The standing receive share: chunks of the worker's receive pool on
    /// the port's fill ring when idle, per chunk its largest frame takes
    /// (one, or three at MTU 9000 on a multi-buffer port) (a power of two
    /// in [`RX_CHUNKS_RANGE`]; [`DEFAULT_RX_CHUNKS`] unless configured).
    pub rx_chunks: u32,
    /// The worker that will poll the port: its receive socket joins that
    /// worker's receive pool ([`rx_pool`]).
    pub rx_worker: usize,
}

/// UMEM memory mapped by the AF_XDP backend in this process (pinned by the
/// kernel while a socket has it registered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UmemFigures {
    /// Receive UMEMs (the workers' receive arenas, one per uplink queue)
    /// and their bytes.
    pub rx_umems: u64,
    pub rx_bytes: u64,
    /// Transmit UMEMs (one per worker and chunk size) and their bytes.
    pub tx_umems: u64,
    pub tx_bytes: u64,
}

static RX_UMEMS: AtomicU64 = AtomicU64::new(0);
static RX_UMEM_BYTES: AtomicU64 = AtomicU64::new(0);
static TX_UMEMS: AtomicU64 = AtomicU64::new(0);
static TX_UMEM_BYTES: AtomicU64 = AtomicU64::new(0);

/// What the AF_XDP backend has mapped for UMEMs right now.
pub fn umem_use() -> UmemFigures {
    UmemFigures {
        rx_umems: RX_UMEMS.load(Ordering::Relaxed),
        rx_bytes: RX_UMEM_BYTES.load(Ordering::Relaxed),
        tx_umems: TX_UMEMS.load(Ordering::Relaxed),
        tx_bytes: TX_UMEM_BYTES.load(Ordering::Relaxed),
    }
}

/// One UMEM area counted in [`umem_use`] for as long as this lives.
struct UmemUse {
    bytes: u64,
    counters: (&'static AtomicU64, &'static AtomicU64),
}

impl UmemUse {
    fn counted(area: &UmemArea, counters: (&'static AtomicU64, &'static AtomicU64)) -> UmemUse {
        let bytes = u64::from(area.chunks()) * u64::from(area.chunk_size());
        counters.0.fetch_add(1, Ordering::Relaxed);
        counters.1.fetch_add(bytes, Ordering::Relaxed);
        UmemUse { bytes, counters }
    }

    fn rx(area: &UmemArea) -> UmemUse {
        UmemUse::counted(area, (&RX_UMEMS, &RX_UMEM_BYTES))
    }

    fn tx(area: &UmemArea) -> UmemUse {
        UmemUse::counted(area, (&TX_UMEMS, &TX_UMEM_BYTES))
    }
}

impl Drop for UmemUse {
    fn drop(&mut self) {
        self.counters.0.fetch_sub(1, Ordering::Relaxed);
        self.counters.1.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Tests that open AF_XDP sockets take this: some compare the
/// process-wide [`umem_use`] figures before and after.
#[cfg(test)]
pub(crate) static UMEM_TESTS: Mutex<()> = Mutex::new(());

/// Checks a configured receive share.
pub fn check_rx_chunks(n: u32) -> Result<(), String> {
    if n.is_power_of_two() && RX_CHUNKS_RANGE.contains(&n) {
        Ok(())
    } else {
        Err(format!(
            "{n} is not a power of two in {}..={}",
            RX_CHUNKS_RANGE.start(),
            RX_CHUNKS_RANGE.end()
        ))
    }
}

/// Chunk size for a link MTU: the frame and the kernel's headroom must fit.
pub fn chunk_size_for(mtu: u16) -> Option<u32> {
    let need = u32::from(mtu) + ETHERNET_HEADER_LEN as u32 + XDP_HEADROOM;
    [2048, 4096].into_iter().find(|&c| need <= c)
}

/// Largest MTU one UMEM chunk carries (4 KiB, less the kernel's headroom
/// and the Ethernet header): the uplink's limit, and a pod port's without
/// multi-buffer.
pub const MAX_CHUNK_MTU: u16 = (4096 - XDP_HEADROOM as usize - ETHERNET_HEADER_LEN) as u16;

/// Largest pod MTU the backend carries: above [`MAX_CHUNK_MTU`] a frame
/// spans several chunks (multi-buffer, three 4 KiB chunks at 9000).
pub const MAX_POD_MTU: u16 = 9000;

/// How a pod port's frames sit in UMEM chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub chunk_size: u32,
    /// A frame may span several chunks (`XDP_USE_SG`, a program loaded
    /// with `BPF_F_XDP_HAS_FRAGS`).
    pub multi_buffer: bool,
}

/// The layout of a pod port of MTU `mtu`: one chunk per frame while one
/// holds it, else 4 KiB chunks chained; `None` above [`MAX_POD_MTU`].
pub fn layout_for(mtu: u16) -> Option<Layout> {
    match chunk_size_for(mtu) {
        Some(chunk_size) => Some(Layout {
            chunk_size,
            multi_buffer: false,
        }),
        None if mtu <= MAX_POD_MTU => Some(Layout {
            chunk_size: 4096,
            multi_buffer: true,
        }),
        None => None,
    }
}

/// Chunks an idle pod port of MTU `mtu` holds for a standing share of
/// `rx_chunks` (one per frame on a single-chunk port, as many as its
/// largest frame takes on a multi-buffer one: 384 for 128 at MTU 9000).
pub fn standing_chunks(mtu: u16, rx_chunks: u32) -> u32 {
    match layout_for(mtu) {
        Some(l) => {
            rx_pool::Shares::new(l, usize::from(mtu) + ETHERNET_HEADER_LEN, rx_chunks).standing
        }
        None => rx_chunks,
    }
}

struct RxSide {
    rx: Ring<XdpDesc>,
    fill: Ring<u64>,
    range: UmemRange,
}

/// A socket receiving from one queue of an interface: it registers the
/// UMEM `area` and owns all its chunks (a power of two of them), all on
/// the fill ring or in the kernel's hands. Used by the uplink
/// ([`crate::xdp_uplink`]); pod ports use [`rx_pool`].
pub(crate) struct XskRx {
    side: Mutex<RxSide>,
    sock: OwnedFd,
    zerocopy: bool,
    _use: UmemUse,
}

impl XskRx {
    /// Opens the socket, registers `area` with it, fills the fill ring and
    /// binds it to `queue` of interface `ifindex` (`need_wakeup`;
    /// zero-copy if the driver can). `name` is for errors.
    pub(crate) fn open(area: &UmemArea, ifindex: u32, queue: u32, name: &str) -> io::Result<XskRx> {
        let sock = xsk::xsk_socket().map_err(|e| context(e, "cannot open an AF_XDP socket"))?;
        area.register(sock.as_fd())
            .map_err(|e| context(e, "cannot register the UMEM"))?;
        let fd = sock.as_fd();
        let chunks = area.chunks();
        // The socket never transmits: its completion ring stays empty. The
        // fill ring has twice the entries of the chunks: the kernel
        // publishes how far it consumed it only when it flushes, after the
        // RX descriptors of the same frames, so a ring exactly as large
        // could look full for a moment and refuse a chunk we got back.
        xsk::set_ring_size(fd, RingKind::Fill, 2 * chunks)?;
        xsk::set_ring_size(fd, RingKind::Completion, 1)?;
        xsk::set_ring_size(fd, RingKind::Rx, chunks)?;
        let mut fill: Ring<u64> = Ring::map(fd, RingKind::Fill, 2 * chunks)?;
        let rx: Ring<XdpDesc> = Ring::map(fd, RingKind::Rx, chunks)?;
        let range = area.range(0, chunks)?;
        for addr in range.chunk_addrs() {
            fill.push(addr);
        }
        fill.submit();
        let zerocopy = bind_owner(&sock, ifindex, queue).map_err(|e| {
            context(
                e,
                format!("cannot bind an AF_XDP socket to {name} queue {queue}"),
            )
        })?;
        Ok(XskRx {
            side: Mutex::new(RxSide { rx, fill, range }),
            sock,
            zerocopy,
            _use: UmemUse::rx(area),
        })
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub(crate) fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Copies what the RX ring holds (up to `frames.len()`) into `frames`
    /// and gives every chunk straight back to the fill ring; returns how
    /// many frames were filled. One fill-ring wakeup per batch if the
    /// kernel asked for it; no syscall otherwise.
    pub(crate) fn recv(&self, frames: &mut [Frame]) -> usize {
        let mut guard = lock(&self.side);
        let RxSide { rx, fill, range } = &mut *guard;
        let mut n = 0;
        while n < frames.len() {
            let Some(desc) = rx.pop() else {
                break;
            };
            if let Some(bytes) = range.read(desc.addr, desc.len as usize) {
                if bytes.len() <= MAX_FRAME_LEN {
                    frames[n].load(bytes, VnetHdr::default());
                    n += 1;
                }
            }
            // The ring holds twice as many entries as there are chunks, so
            // the chunk always fits back.
            fill.push(range.chunk_of(desc.addr));
        }
        if n > 0 || fill.unsubmitted() > 0 {
            rx.release();
            fill.submit();
            if fill.needs_wakeup() {
                let _ = xsk::wake_rx(self.sock.as_fd());
            }
        }
        n
    }

    /// The kernel's drop counters of this socket (a `getsockopt`).
    pub(crate) fn add_stats(&self, s: &mut AfXdpStats) {
        if let Ok(k) = xsk::statistics(self.sock.as_fd()) {
            s.rx_dropped += k.rx_dropped;
            s.rx_ring_full += k.rx_ring_full;
            s.rx_fill_empty += k.rx_fill_ring_empty_descs;
        }
    }
}

/// One pod's node-end interface driven through AF_XDP.
pub struct AfXdpPort {
    // Drop order matters: the link (detaching the program) goes first.
    link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    prog_id: u32,
    mtu: u16,
    /// The receive socket, in its worker's receive pool.
    rx: rx_pool::PoolRx,
    /// How frames sit in the port's chunks.
    layout: Layout,
    /// Which transmit queues (1-based queue `i + 1`) are taken.
    tx_taken: Arc<Mutex<Vec<bool>>>,
    tx_dropped: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent across a panic (rings
    // and flags), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn context(e: io::Error, what: impl fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// How long a bind waits for a queue that a socket of an earlier
/// podrouterd still holds. When a process dies, its sockets close at once
/// but the kernel detaches their buffer pool from the queue in deferred
/// work, and until then a new bind gets `EBUSY`: a daemon restarted right
/// after `kill -9` would otherwise fail to start.
const QUEUE_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Runs `bind` until it succeeds, fails with anything but `EBUSY`, or
/// [`QUEUE_RELEASE_WAIT`] has passed.
fn bind_once_released(mut bind: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let deadline = Instant::now() + QUEUE_RELEASE_WAIT;
    loop {
        match bind() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

/// Binds `sock` to `queue` of `ifindex` on a worker's shared UMEM `area`:
/// through the first of `members` that is still bound (a joining socket
/// takes that one's flags, copy mode and `need_wakeup`, and may set none;
/// a member whose device is gone answers `EBADF` and the next is tried),
/// else by registering `area` on `sock`, which then binds as the UMEM's
/// owner in copy mode with `need_wakeup`, and multi-buffer
/// (`XDP_USE_SG`) if `multi_buffer`. `what` names the socket in errors,
/// `umem` the UMEM.
fn bind_shared_umem(
    sock: &OwnedFd,
    area: &UmemArea,
    members: impl IntoIterator<Item = Arc<OwnedFd>>,
    (ifindex, queue): (u32, u32),
    what: impl Fn() -> String,
    umem: &str,
    multi_buffer: bool,
) -> io::Result<()> {
    for member in members {
        match bind_once_released(|| {
            xsk::bind(sock.as_fd(), ifindex, queue, 0, Some(member.as_fd()))
        }) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) => return Err(context(e, what())),
        }
    }
    area.register(sock.as_fd())
        .map_err(|e| context(e, format!("cannot register {umem}")))?;
    let mut flags = xsk::BIND_NEED_WAKEUP | xsk::BIND_COPY;
    if multi_buffer {
        flags |= xsk::BIND_SG;
    }
    bind_once_released(|| xsk::bind(sock.as_fd(), ifindex, queue, flags, None))
        .map_err(|e| context(e, what()))
}

/// Binds the UMEM owner `fd` to `queue` with `need_wakeup`, zero-copy if
/// the driver can, else copy mode; returns whether it is zero-copy.
fn bind_owner(fd: &OwnedFd, ifindex: u32, queue: u32) -> io::Result<bool> {
    let flags = xsk::BIND_NEED_WAKEUP;
    let bind =
        |mode| bind_once_released(|| xsk::bind(fd.as_fd(), ifindex, queue, flags | mode, None));
    match bind(xsk::BIND_ZEROCOPY) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) =>
        {
            bind(xsk::BIND_COPY)?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

impl AfXdpPort {
    /// Sets up the port on interface `cfg.ifname` (see the module
    /// documentation). Fails with `ResourceBusy` if the interface already
    /// has an XDP program (see [`AfXdpPort::open`]'s callers for replacing
    /// one podrouterd left).
    pub fn open(cfg: &AfXdpConfig) -> io::Result<AfXdpPort> {
        let name = &cfg.ifname;
        let ifindex = sys::if_nametoindex(name)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))
        })?;
        let layout = layout_for(cfg.mtu).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "MTU {} is above the AF_XDP backend's {MAX_POD_MTU}",
                    cfg.mtu
                ),
            )
        })?;
        let tx_queues = cfg.tx_queues.max(1);
        check_rx_chunks(cfg.rx_chunks).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("receive chunks: {e}"))
        })?;
        let max_frame = usize::from(cfg.mtu) + ETHERNET_HEADER_LEN;
        let rx = rx_pool::open(
            cfg.rx_worker,
            (ifindex, 0),
            layout,
            max_frame,
            cfg.rx_chunks,
            name,
        )?;
        // The receive pools bind in copy mode (see [`rx_pool`]).
        let zerocopy = false;

        let map = sys::bpf::xskmap_create("podrouter_xsks", 1)
            .map_err(|e| context(e, "cannot create the XSKMAP"))?;
        sys::bpf::xskmap_set(map.as_fd(), 0, rx.fd())
            .map_err(|e| context(e, "cannot put the socket in the XSKMAP"))?;
        let insns = bpf::xsk_redirect_program(map.as_raw_fd());
        let prog = if layout.multi_buffer {
            sys::bpf::xdp_frags_prog_load(XDP_PROG_NAME, &insns, bpf::LICENSE)
        } else {
            sys::bpf::xdp_prog_load(XDP_PROG_NAME, &insns, bpf::LICENSE)
        }
        .map_err(|e| context(e, "cannot load the XDP program"))?;
        let prog_id = sys::bpf::prog_id(prog.as_fd())?;
        let (link, attach) = attach(&prog, ifindex, cfg.mode)
            .map_err(|e| context(e, format!("cannot attach the XDP program to {name}")))?;
        Ok(AfXdpPort {
            link,
            _prog: prog,
            _map: map,
            ifname: name.clone(),
            ifindex,
            mode: XdpMode {
                attach,
                zerocopy,
                multi_buffer: layout.multi_buffer,
            },
            prog_id,
            mtu: cfg.mtu,
            rx,
            layout,
            tx_taken: Arc::new(Mutex::new(vec![false; tx_queues as usize])),
            tx_dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Attach mode and copy mode this port got.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Id of the attached XDP program (as `ip link` shows it).
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// The kernel's drop counters for the receive socket and the frames
    /// the port dropped on transmit. Makes a `getsockopt`: for the control
    /// plane, not the fast path.
    pub fn stats(&self) -> AfXdpStats {
        let mut s = AfXdpStats {
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
            ..Default::default()
        };
        self.rx.add_stats(&mut s);
        s
    }

    /// A transmit socket on a free queue of the port, on this worker's
    /// transmit UMEM.
    fn open_tx(&self) -> io::Result<TxState> {
        let slot = {
            let mut taken = lock(&self.tx_taken);
            let i = taken.iter().position(|t| !t).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "every transmit queue of the port is taken (more workers than configured)",
                )
            })?;
            taken[i] = true;
            i
        };
        let guard = SlotGuard {
            taken: self.tx_taken.clone(),
            slot,
        };
        let queue = slot as u32 + 1;
        let sock = tx_pool::open(self.ifindex, queue, self.layout, &self.ifname)?;
        let slot_size = usize::from(self.mtu) + ETHERNET_HEADER_LEN;
        // A single-buffer port takes what one chunk holds (as before); a
        // multi-buffer one what its MTU allows.
        let frame_max = if self.layout.multi_buffer {
            slot_size.min(sock.frame_max())
        } else {
            sock.frame_max()
        };
        Ok(TxState {
            xsk: XskTx {
                sock,
                frame_max,
                dropped: self.tx_dropped.clone(),
            },
            offload: TxRing::new(OFFLOAD_SLOTS, slot_size, ETHERNET_HEADER_LEN),
            _slot: guard,
        })
    }
}

/// Attaches `prog` in the requested mode; `Auto` tries driver mode first.
pub(crate) fn attach(
    prog: &OwnedFd,
    ifindex: u32,
    mode: XdpModeRequest,
) -> io::Result<(OwnedFd, XdpAttach)> {
    let busy = |e: io::Error| {
        if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("the interface already has an XDP program ({e})"),
            )
        } else {
            e
        }
    };
    let drv = || sys::bpf::xdp_link_create(prog.as_fd(), ifindex, XDP_FLAGS_DRV_MODE);
    let skb = || sys::bpf::xdp_link_create(prog.as_fd(), ifindex, XDP_FLAGS_SKB_MODE);
    match mode {
        XdpModeRequest::Driver => drv().map(|l| (l, XdpAttach::Driver)).map_err(busy),
        XdpModeRequest::Generic => skb().map(|l| (l, XdpAttach::Generic)).map_err(busy),
        XdpModeRequest::Auto => match drv() {
            Ok(l) => Ok((l, XdpAttach::Driver)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST)) => {
                Err(busy(e))
            }
            Err(_) => skb().map(|l| (l, XdpAttach::Generic)).map_err(busy),
        },
    }
}

impl fmt::Debug for AfXdpPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfXdpPort")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .field("prog_id", &self.prog_id)
            .field("link", &self.link)
            .finish()
    }
}

/// Frees a transmit queue slot when its socket state goes.
struct SlotGuard {
    taken: Arc<Mutex<Vec<bool>>>,
    slot: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.taken).get_mut(self.slot) {
            *t = false;
        }
    }
}

/// One worker's transmit socket for one port.
struct XskTx {
    sock: tx_pool::PoolSocket,
    /// Largest frame the port sends (one chunk, or its MTU's frame on a
    /// multi-buffer port).
    frame_max: usize,
    dropped: Arc<AtomicU64>,
}

impl XskTx {
    /// Publishes the TX ring and kicks the kernel while it wants it.
    fn kick(&mut self) -> io::Result<()> {
        self.sock.tx.submit();
        let mut result = Ok(());
        for _ in 0..MAX_KICKS {
            if !self.sock.tx.needs_wakeup() {
                break;
            }
            match xsk::kick_tx(self.sock.fd()) {
                Ok(()) => break,
                // More left than one call sends, or the completion ring is
                // full: take completions back and go on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {
                    self.sock.reclaim();
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.sock.reclaim();
                    result = Err(e);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.sock.reclaim();
        result
    }

    /// Copies one frame into a free chunk of the worker's pool and queues
    /// it on the TX ring.
    fn queue(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() > self.frame_max {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame larger than the port takes",
            ));
        }
        if !self.sock.has_room(data.len()) {
            self.sock.reclaim();
        }
        let mut r = self.sock.queue(data);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            // Full: push out what is queued and take back what went.
            let _ = self.kick();
            r = self.sock.queue(data);
        }
        if r.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl TxSink for XskTx {
    fn send<'a>(&mut self, pkts: impl Iterator<Item = (&'a [u8], Ipv4Addr)>) -> io::Result<usize> {
        let mut n = 0;
        for (pkt, _) in pkts {
            match self.queue(pkt) {
                Ok(()) => n += 1,
                Err(e) if n == 0 => {
                    // `queue` counted it; the ring counts what it drops
                    // itself, so take ours back to count it once.
                    self.dropped.fetch_sub(1, Ordering::Relaxed);
                    return Err(e);
                }
                Err(_) => {
                    self.dropped.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        Ok(n)
    }

    fn wait(&mut self) {
        let _ = self.kick();
    }
}

/// What a worker's [`TxQueue`] for an AF_XDP port holds.
struct TxState {
    xsk: XskTx,
    /// Frames with offload requests, completed or cut in software.
    offload: TxRing,
    _slot: SlotGuard,
}

impl TxState {
    fn flush(&mut self) -> io::Result<()> {
        let r = if self.offload.queued() > 0 {
            self.offload.flush(&mut self.xsk)
        } else {
            Ok(())
        };
        let dropped = self.offload.take_dropped();
        if dropped > 0 {
            self.xsk.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        let k = self.xsk.kick();
        r.and(k)
    }
}

/// A transmit queue whose socket could not be made: every frame is
/// refused with the reason.
struct TxUnavailable(io::ErrorKind, String);

impl Port for AfXdpPort {
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
        Ok(self.rx.recv(frames))
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.rx.fd().as_raw_fd())
    }

    /// This worker's transmit socket (see the module documentation).
    fn tx_queue(&self) -> TxQueue {
        match self.open_tx() {
            Ok(s) => TxQueue::new(s),
            Err(e) => {
                log::warn!("{}: no transmit socket for this worker: {e}", self.ifname);
                TxQueue::new(TxUnavailable(e.kind(), e.to_string()))
            }
        }
    }

    fn push(&self, queue: &mut TxQueue, frame: &Frame, _: Option<Ipv4Addr>) -> io::Result<()> {
        let Some(st) = queue.state::<TxState>() else {
            return Err(match queue.state::<TxUnavailable>() {
                Some(TxUnavailable(kind, why)) => io::Error::new(*kind, why.clone()),
                None => foreign_queue(),
            });
        };
        let d = frame.data();
        let plain = frame.vnet == VnetHdr::default();
        if plain && st.offload.queued() == 0 && d.len() <= st.xsk.frame_max {
            return st.xsk.queue(d);
        }
        // Offloads (or a frame queued behind one, to keep the order).
        if d.len() < ETHERNET_HEADER_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "runt frame"));
        }
        let mut eth = [0u8; ETHERNET_HEADER_LEN];
        eth.copy_from_slice(&d[..ETHERNET_HEADER_LEN]);
        let write_header = |pkt: &mut [u8], _: Ipv4Addr| {
            pkt[..ETHERNET_HEADER_LEN].copy_from_slice(&eth);
        };
        let TxState { xsk, offload, .. } = st;
        let r = offload.push(
            &d[ETHERNET_HEADER_LEN..],
            frame.vnet,
            Ipv4Addr::UNSPECIFIED,
            &write_header,
            xsk,
        );
        let dropped = offload.take_dropped();
        if dropped > 0 {
            xsk.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        r
    }

    fn flush(&self, queue: &mut TxQueue) -> io::Result<()> {
        match queue.state::<TxState>() {
            Some(st) => st.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrouter_testkit::{in_private_netns, privileged};
    use std::net::UdpSocket;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn standing_chunks_count_frames() {
        assert_eq!(standing_chunks(1500, 128), 128);
        assert_eq!(standing_chunks(3826, 256), 256);
        assert_eq!(standing_chunks(3827, 128), 256);
        assert_eq!(standing_chunks(9000, 128), 384);
        assert_eq!(standing_chunks(9000, 64), 192);
    }

    #[test]
    fn chunk_sizes_follow_the_mtu() {
        assert_eq!(chunk_size_for(1500), Some(2048));
        assert_eq!(chunk_size_for(1778), Some(2048));
        assert_eq!(chunk_size_for(1779), Some(4096));
        assert_eq!(chunk_size_for(MAX_CHUNK_MTU), Some(4096));
        assert_eq!(chunk_size_for(MAX_CHUNK_MTU + 1), None);
        let single = |chunk_size| {
            Some(Layout {
                chunk_size,
                multi_buffer: false,
            })
        };
        assert_eq!(layout_for(1500), single(2048));
        assert_eq!(layout_for(MAX_CHUNK_MTU), single(4096));
        let multi = Some(Layout {
            chunk_size: 4096,
            multi_buffer: true,
        });
        assert_eq!(layout_for(MAX_CHUNK_MTU + 1), multi);
        assert_eq!(layout_for(MAX_POD_MTU), multi);
        assert_eq!(layout_for(MAX_POD_MTU + 1), None);
    }

    #[test]
    fn mode_reads_as_status_shows_it() {
        let m = XdpMode {
            attach: XdpAttach::Driver,
            zerocopy: false,
            multi_buffer: false,
        };
        assert_eq!(m.to_string(), "copy, driver");
        let m = XdpMode {
            multi_buffer: true,
            ..m
        };
        assert_eq!(m.to_string(), "copy, driver, multi-buffer");
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

    /// Whether `f` is an IPv4 UDP frame.
    fn is_udp(f: &Frame) -> bool {
        f.data().len() > 42 && f.data()[12..14] == [0x08, 0x00] && f.data()[23] == 17
    }

    /// Receives until `want` UDP frames came (the kernel's own IPv6 and
    /// ARP frames come too) or two seconds passed; returns how many frames.
    fn recv_some(port: &AfXdpPort, frames: &mut [Frame], want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut n = 0;
        while frames[..n].iter().filter(|f| is_udp(f)).count() < want
            && n < frames.len()
            && Instant::now() < deadline
        {
            n += port.recv(&mut frames[n..]).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    }

    /// A veth pair whose node end is an AF_XDP port: the kernel's UDP
    /// datagrams from the other end arrive through the XSK, a reply sent
    /// through the port's transmit socket reaches the kernel's socket, and
    /// dropping the port detaches the program. Both attach modes.
    #[test]
    fn veth_frames_both_ways_in_both_modes() {
        if !privileged("veth_frames_both_ways_in_both_modes") {
            return;
        }
        let _one = lock(&UMEM_TESTS);
        for mode in [XdpModeRequest::Driver, XdpModeRequest::Generic] {
            in_private_netns(|| exchange(mode));
        }
    }

    fn exchange(mode: XdpModeRequest) {
        pair("pxa", "pxb", 0);
        let port = AfXdpPort::open(&AfXdpConfig {
            ifname: "pxa".into(),
            mtu: 1500,
            tx_queues: 2,
            mode,
            rx_chunks: DEFAULT_RX_CHUNKS,
            rx_worker: 0,
        })
        .unwrap();
        let want = match mode {
            XdpModeRequest::Generic => XdpAttach::Generic,
            _ => XdpAttach::Driver,
        };
        assert_eq!(port.mode().attach, want);
        let shown = ip(&["-d", "link", "show", "pxa"]);
        assert!(
            shown.contains(&format!("id {}", port.prog_id())) && shown.contains(XDP_PROG_NAME),
            "{shown}"
        );
        // A second program on the same interface is refused, not stacked.
        let e = AfXdpPort::open(&AfXdpConfig {
            ifname: "pxa".into(),
            mtu: 1500,
            tx_queues: 1,
            mode,
            rx_chunks: DEFAULT_RX_CHUNKS,
            rx_worker: 0,
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");

        let sock = UdpSocket::bind("10.9.0.2:4000").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for i in 0..5u8 {
            sock.send_to(&[i; 32], "10.9.0.1:5000").unwrap();
        }
        let mut frames: Vec<Frame> = (0..64).map(|_| Frame::new()).collect();
        let n = recv_some(&port, &mut frames, 5);
        let udp: Vec<&Frame> = frames[..n].iter().filter(|f| is_udp(f)).collect();
        assert_eq!(udp.len(), 5, "datagrams through the XSK ({n} frames)");
        let d = udp[0].data();
        assert_eq!(d[..6], [2, 0, 0, 0, 0, 0x0a]);
        assert_eq!(d[42..74], [0u8; 32]);

        // Reply with the addresses and ports swapped (the IPv4 checksum is
        // unchanged; UDP checksum 0 means none), through a worker's queue.
        let mut reply = d.to_vec();
        reply.copy_within(6..12, 0);
        reply[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x0a]);
        let (src, dst) = (d[26..30].to_vec(), d[30..34].to_vec());
        reply[26..30].copy_from_slice(&dst);
        reply[30..34].copy_from_slice(&src);
        let (sp, dp) = (d[34..36].to_vec(), d[36..38].to_vec());
        reply[34..36].copy_from_slice(&dp);
        reply[36..38].copy_from_slice(&sp);
        reply[40..42].fill(0);
        reply[42] = 0x77;
        let mut q = port.tx_queue();
        for _ in 0..3 {
            port.push(&mut q, &Frame::from_bytes(&reply), None).unwrap();
        }
        port.flush(&mut q).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let (len, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!((len, from.to_string().as_str()), (32, "10.9.0.1:5000"));
            assert_eq!(buf[0], 0x77);
        }
        // Several rings' worth in batches of nearly a ring (as many as the
        // receiving socket's buffer takes): the indices wrap, every chunk
        // is reclaimed from the completion ring and used again, none lost.
        let burst = 250;
        for _ in 0..4 {
            for _ in 0..burst {
                port.push(&mut q, &Frame::from_bytes(&reply), None).unwrap();
            }
            port.flush(&mut q).unwrap();
            let mut got = 0;
            while got < burst && sock.recv_from(&mut buf).is_ok() {
                got += 1;
            }
            assert_eq!(got, burst);
        }
        assert_eq!(port.stats().tx_dropped, 0);

        drop(q);
        drop(port);
        let shown = ip(&["-d", "link", "show", "pxa"]);
        assert!(!shown.contains(XDP_PROG_NAME), "program left: {shown}");
        ip(&["link", "del", "pxa"]);
    }

    /// A veth pair `a`/`b` (`a` with three queues), `b` addressed
    /// `10.9.{n}.2/24` with a neighbour entry for `10.9.{n}.1` at `a`.
    fn pair(a: &str, b: &str, n: u8) {
        ip(&[
            "link",
            "add",
            a,
            "numtxqueues",
            "3",
            "numrxqueues",
            "3",
            "type",
            "veth",
            "peer",
            "name",
            b,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        ]);
        let mac_a = format!("02:00:00:00:{n:02x}:0a");
        ip(&["link", "set", a, "address", &mac_a, "up"]);
        ip(&[
            "link",
            "set",
            b,
            "address",
            &format!("02:00:00:00:{n:02x}:0b"),
            "up",
        ]);
        ip(&["addr", "add", &format!("10.9.{n}.2/24"), "dev", b]);
        ip(&[
            "neigh",
            "add",
            &format!("10.9.{n}.1"),
            "lladdr",
            &mac_a,
            "dev",
            b,
        ]);
    }

    /// A UDP datagram from 10.9.{n}.1:5000 to 10.9.{n}.2:4000, `byte`
    /// repeated as its payload, as an Ethernet frame (UDP checksum 0).
    fn datagram(n: u8, byte: u8) -> Frame {
        let mut f = vec![0u8; 14 + 20 + 8 + 16];
        f[..6].copy_from_slice(&[2, 0, 0, 0, n, 0x0b]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, n, 0x0a]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip4 = &mut f[14..34];
        ip4[0] = 0x45;
        ip4[2..4].copy_from_slice(&44u16.to_be_bytes());
        ip4[8] = 64;
        ip4[9] = 17;
        ip4[12..16].copy_from_slice(&[10, 9, n, 1]);
        ip4[16..20].copy_from_slice(&[10, 9, n, 2]);
        let mut sum: u32 = ip4
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let sum = !(sum as u16);
        ip4[10..12].copy_from_slice(&sum.to_be_bytes());
        f[34..36].copy_from_slice(&5000u16.to_be_bytes());
        f[36..38].copy_from_slice(&4000u16.to_be_bytes());
        f[38..40].copy_from_slice(&24u16.to_be_bytes());
        f[42..].fill(byte);
        Frame::from_bytes(&f)
    }

    /// A UDP datagram of `payload` bytes (each `byte`) from 10.9.{n}.1:5000
    /// to 10.9.{n}.2:4000 as an Ethernet frame, the reverse of what
    /// [`pair`]'s kernel end sends (UDP checksum 0).
    fn big_datagram(n: u8, payload: usize, byte: u8) -> Frame {
        let mut f = datagram(n, byte).data().to_vec();
        f.truncate(42);
        f.resize(42 + payload, byte);
        let ip_len = (20 + 8 + payload) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[24..26].fill(0);
        let sum = {
            let mut sum: u32 = f[14..34]
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            !(sum as u16)
        };
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        Frame::from_bytes(&f)
    }

    /// A multi-buffer port (MTU 9000): veth keeps driver mode with its
    /// peer at MTU 9000 (the program is loaded with
    /// `BPF_F_XDP_HAS_FRAGS`), 8000-byte datagrams from the kernel arrive
    /// whole through chains of descriptors, 8000-byte replies sent as
    /// chains reach the kernel's socket whole, rings' worth of them reuse
    /// every chunk; a port whose MTU is smaller than its veth's drops (and
    /// counts) what is longer, whole.
    #[test]
    fn jumbo_frames_cross_a_multi_buffer_port() {
        if !privileged("jumbo_frames_cross_a_multi_buffer_port") {
            return;
        }
        let _one = lock(&UMEM_TESTS);
        in_private_netns(jumbo_exchange);
    }

    fn jumbo_exchange() {
        pair("pxj1", "pxk1", 1);
        pair("pxj2", "pxk2", 2);
        for dev in ["pxj1", "pxk1", "pxj2", "pxk2"] {
            ip(&["link", "set", dev, "mtu", "9000"]);
        }
        let open = |name: &str, mtu| {
            AfXdpPort::open(&AfXdpConfig {
                ifname: name.into(),
                mtu,
                tx_queues: 1,
                mode: XdpModeRequest::Auto,
                rx_chunks: DEFAULT_RX_CHUNKS,
                rx_worker: 7101,
            })
            .unwrap()
        };
        let port = open("pxj1", 9000);
        // Its share counts frames of three chunks: 128 frames standing,
        // in an arena of 4096 frames' worth (12288 chunks, 48 MiB).
        assert_eq!(port.rx.held(), 3 * DEFAULT_RX_CHUNKS);
        assert_eq!(
            rx_pool::arena_of(&port.rx),
            (
                3 * ARENA_MIN_CHUNKS as usize - 3 * DEFAULT_RX_CHUNKS as usize,
                1
            )
        );
        assert_eq!(
            port.mode().attach,
            XdpAttach::Driver,
            "veth keeps driver mode with a frags-aware program"
        );
        let sock = UdpSocket::bind("10.9.1.2:4000").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut frames: Vec<Frame> = (0..64).map(|_| Frame::new()).collect();
        let mut q = port.tx_queue();
        let mut buf = vec![0u8; 9000];
        for round in 0..40u8 {
            // In: the kernel's 8000-byte datagram, one frame of 8042 bytes.
            sock.send_to(&vec![round; 8000], "10.9.1.1:5000").unwrap();
            let n = recv_some(&port, &mut frames, 1);
            let udp: Vec<&Frame> = frames[..n].iter().filter(|f| is_udp(f)).collect();
            assert_eq!(
                udp.len(),
                1,
                "round {round}: {n} frames, {:?}",
                port.stats()
            );
            let d = udp[0].data();
            assert_eq!(d.len(), 14 + 20 + 8 + 8000);
            assert!(d[42..].iter().all(|&b| b == round), "round {round}");
            // Out: 8000 bytes back, as a chain of three descriptors.
            port.push(&mut q, &big_datagram(1, 8000, round ^ 0xff), None)
                .unwrap();
            port.flush(&mut q).unwrap();
            let (len, _) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: no reply ({e}): {:?}", port.stats()));
            assert_eq!(len, 8000, "round {round}");
            assert!(buf[..len].iter().all(|&b| b == round ^ 0xff));
        }
        // Bursts of 10 (as many as the kernel socket's buffer takes), 300
        // chunks in all, more than a socket's 256: every chunk comes back
        // from the completion ring and is used again.
        for burst in 0..10u8 {
            for i in 0..10u8 {
                port.push(&mut q, &big_datagram(1, 8000, burst * 10 + i), None)
                    .unwrap();
            }
            port.flush(&mut q).unwrap();
            for i in 0..10u8 {
                let (len, _) = sock.recv_from(&mut buf).unwrap();
                assert_eq!((len, buf[0]), (8000, burst * 10 + i));
            }
        }
        let st = port.stats();
        assert_eq!(
            (st.tx_dropped, st.rx_invalid, st.rx_dropped),
            (0, 0, 0),
            "{st:?}"
        );
        // A packet longer than the port's MTU (no DF) is cut into IPv4
        // fragments that fit, never truncated: the kernel reassembles it.
        port.push(&mut q, &big_datagram(1, 8980, 3), None).unwrap();
        port.flush(&mut q).unwrap();
        let (len, _) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(len, 8980);
        assert_eq!(port.stats().tx_dropped, 0);

        // Port MTU 5000 on a veth of 9000: an 8000-byte datagram arrives
        // as a chain longer than the port takes, dropped whole and
        // counted once; a 4000-byte one (a chain of two) passes.
        let small = open("pxj2", 5000);
        let sock2 = UdpSocket::bind("10.9.2.2:4000").unwrap();
        sock2.send_to(&[1u8; 8000], "10.9.2.1:5000").unwrap();
        sock2.send_to(&[2u8; 4000], "10.9.2.1:5000").unwrap();
        let n = recv_some(&small, &mut frames, 1);
        let udp: Vec<&Frame> = frames[..n].iter().filter(|f| is_udp(f)).collect();
        assert_eq!(udp.len(), 1, "{n} frames");
        assert_eq!(udp[0].data().len(), 14 + 20 + 8 + 4000);
        assert_eq!(small.stats().rx_invalid, 1, "{:?}", small.stats());
        drop(q);
        drop((port, small));
        ip(&["link", "del", "pxj1"]);
        ip(&["link", "del", "pxj2"]);
    }

    /// A chain goes on the TX ring whole or not at all: with room for two
    /// descriptors left, a frame of three chunks is refused and the ring,
    /// the socket's share and the pool are as they were; one of two
    /// chunks still fits.
    #[test]
    fn a_chain_goes_on_the_transmit_ring_whole_or_not_at_all() {
        if !privileged("a_chain_goes_on_the_transmit_ring_whole_or_not_at_all") {
            return;
        }
        let _one = lock(&UMEM_TESTS);
        in_private_netns(|| {
            pair("pxt1", "pxu1", 1);
            ip(&["link", "set", "pxt1", "mtu", "9000"]);
            ip(&["link", "set", "pxu1", "mtu", "9000"]);
            let layout = layout_for(9000).unwrap();
            assert!(layout.multi_buffer);
            let ifindex = sys::if_nametoindex("pxt1").unwrap().unwrap();
            let mut s = tx_pool::open(ifindex, 1, layout, "pxt1").unwrap();
            let small = [0u8; 60];
            for _ in 0..TX_RING - 2 {
                s.queue(&small).unwrap();
            }
            let free = tx_pool::free_chunks(layout).unwrap();
            assert_eq!(s.unsubmitted(), TX_RING - 2);
            let e = s.queue(&[0u8; 9014]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            assert_eq!(s.unsubmitted(), TX_RING - 2, "no part of the chain queued");
            assert_eq!(tx_pool::free_chunks(layout), Some(free), "no chunk taken");
            s.queue(&[0u8; 5000]).unwrap();
            assert_eq!(s.unsubmitted(), TX_RING);
            assert_eq!(tx_pool::free_chunks(layout), Some(free - 2));
            // Larger than copy mode's longest chain: refused outright.
            let e = s.queue(&vec![0u8; 4096 * 18 + 1]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            drop(s);
            assert_eq!(
                tx_pool::free_chunks(layout),
                Some(tx_pool::WORKER_TX_CHUNKS as usize)
            );
            ip(&["link", "del", "pxt1"]);
        });
    }

    /// Ports opened on one thread: each maps its receive share only, and
    /// every transmit socket of the thread (the worker) shares one
    /// transmit UMEM, which outlives the port whose socket registered it
    /// (its veth deleted): a later port joins through another member or
    /// registers it again, and every chunk comes back.
    #[test]
    fn ports_share_their_workers_transmit_umem() {
        if !privileged("ports_share_their_workers_transmit_umem") {
            return;
        }
        let _one = lock(&UMEM_TESTS);
        in_private_netns(share_one_pool);
    }

    fn share_one_pool() {
        let open = |name: &str, rx_chunks| {
            AfXdpPort::open(&AfXdpConfig {
                ifname: name.into(),
                mtu: 1500,
                tx_queues: 2,
                mode: XdpModeRequest::Auto,
                rx_chunks,
                rx_worker: 0,
            })
            .unwrap()
        };
        let before = umem_use();
        let (pool_bytes, _) = tx_pool::this_thread();
        assert_eq!(pool_bytes, 0, "a fresh thread has no transmit pool");
        pair("pxa1", "pxb1", 1);
        pair("pxa2", "pxb2", 2);
        pair("pxa3", "pxb3", 3);
        let p1 = open("pxa1", 256);
        let p2 = open("pxa2", 512);
        let grown = umem_use();
        assert_eq!(grown.rx_umems - before.rx_umems, 1, "one receive arena");
        assert_eq!(
            grown.rx_bytes - before.rx_bytes,
            u64::from(ARENA_MIN_CHUNKS) * 2048
        );
        assert_eq!(
            grown.tx_bytes, before.tx_bytes,
            "no transmit memory per port"
        );

        let send = |port: &AfXdpPort, q: &mut TxQueue, n: u8, count: usize| {
            let sock = UdpSocket::bind(format!("10.9.{n}.2:4000")).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            for i in 0..count {
                port.push(q, &datagram(n, i as u8), None).unwrap();
            }
            port.flush(q).unwrap();
            let mut buf = [0u8; 64];
            for i in 0..count {
                let (len, _) = sock.recv_from(&mut buf).unwrap();
                assert_eq!((len, buf[0]), (16, i as u8));
            }
        };
        let mut q1 = p1.tx_queue();
        let mut q2 = p2.tx_queue();
        let (pool_bytes, members) = tx_pool::this_thread();
        assert_eq!(pool_bytes, u64::from(tx_pool::WORKER_TX_CHUNKS) * 2048);
        assert_eq!(members, 2, "both transmit sockets on the one pool");
        assert_eq!(umem_use().tx_umems - before.tx_umems, 1);
        send(&p1, &mut q1, 1, 100);
        send(&p2, &mut q2, 2, 100);

        // The first port (whose socket registered the pool) goes, veth
        // and all; its queue is still held, as a worker does until it
        // sees the next port table.
        drop(p1);
        ip(&["link", "del", "pxa1"]);
        let p3 = open("pxa3", 256);
        let mut q3 = p3.tx_queue();
        send(&p3, &mut q3, 3, 200);
        send(&p2, &mut q2, 2, 200);
        let (pool_bytes, members) = tx_pool::this_thread();
        assert_eq!(pool_bytes, u64::from(tx_pool::WORKER_TX_CHUNKS) * 2048);
        assert_eq!(members, 3);
        drop((q1, q2, q3));
        // Every chunk is back once the sockets are closed.
        assert_eq!(
            tx_pool::free_chunks(Layout {
                chunk_size: 2048,
                multi_buffer: false
            }),
            Some(tx_pool::WORKER_TX_CHUNKS as usize)
        );
        drop((p2, p3));
        let after = umem_use();
        assert_eq!(after.rx_umems, before.rx_umems);
        assert_eq!(after.rx_bytes, before.rx_bytes);
    }

    /// Sends `count` datagrams from the kernel's end `10.9.{n}.2` to
    /// `10.9.{n}.1` (the port's end) and receives them through `port` in
    /// batches of 64; returns how many UDP frames came.
    fn burst_in(port: &AfXdpPort, n: u8, count: usize) -> usize {
        let sock = UdpSocket::bind(format!("10.9.{n}.2:0")).unwrap();
        for i in 0..count {
            sock.send_to(&[i as u8; 18], format!("10.9.{n}.1:5000"))
                .unwrap();
        }
        let mut frames: Vec<Frame> = (0..64).map(|_| Frame::new()).collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = 0;
        while got < count && Instant::now() < deadline {
            let k = port.recv(&mut frames).unwrap();
            got += frames[..k].iter().filter(|f| is_udp(f)).count();
            if k == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        got
    }

    /// Pod ports of one worker share one receive arena, another worker's
    /// port gets another; an idle port holds its standing share, a busy
    /// one draws more from the arena; a port whose veth was deleted under
    /// it gives all its chunks back when it closes, and the arena goes with
    /// its last port.
    #[test]
    fn pod_ports_receive_in_their_workers_arena() {
        if !privileged("pod_ports_receive_in_their_workers_arena") {
            return;
        }
        let _one = lock(&UMEM_TESTS);
        in_private_netns(share_receive_arena);
    }

    fn share_receive_arena() {
        let open = |name: &str, rx_worker| {
            AfXdpPort::open(&AfXdpConfig {
                ifname: name.into(),
                mtu: 1500,
                tx_queues: 1,
                mode: XdpModeRequest::Auto,
                rx_chunks: 64,
                rx_worker,
            })
            .unwrap()
        };
        // Worker numbers no other test uses: the pools are process-wide.
        let (w_a, w_b) = (7001, 7002);
        let before = umem_use();
        for n in 1..=4 {
            pair(&format!("pxa{n}"), &format!("pxb{n}"), n);
        }
        let p1 = open("pxa1", w_a);
        let p2 = open("pxa2", w_a);
        let p3 = open("pxa3", w_b);
        let grown = umem_use();
        assert_eq!(grown.rx_umems - before.rx_umems, 2, "one arena per worker");
        assert_eq!(
            grown.rx_bytes - before.rx_bytes,
            2 * u64::from(ARENA_MIN_CHUNKS) * 2048
        );
        assert!(rx_pool::same_arena(&p1.rx, &p2.rx));
        assert!(!rx_pool::same_arena(&p1.rx, &p3.rx));
        let arena = ARENA_MIN_CHUNKS as usize;
        assert_eq!(rx_pool::arena_of(&p1.rx), (arena - 2 * 64, 2));
        assert_eq!((p1.rx.held(), p2.rx.held()), (64, 64));

        // Busy: full batches raise the port's target, it draws from the
        // arena, and a burst larger than the standing share gets through.
        assert_eq!(burst_in(&p1, 1, 48), 48);
        assert!(p1.rx.held() > 64, "held {}", p1.rx.held());
        assert_eq!(burst_in(&p1, 1, 600), 600);
        assert_eq!(p1.stats().rx_fill_empty, 0, "{:?}", p1.stats());
        assert_eq!(burst_in(&p3, 3, 20), 20);
        // A quiet second (fewer frames than a busy port gets) lowers it
        // again: then the chunks received go back to the arena instead of
        // the fill ring.
        let busy = p1.rx.held();
        std::thread::sleep(Duration::from_millis(1100));
        for _ in 0..80 {
            assert_eq!(burst_in(&p1, 1, 1), 1);
        }
        assert!(p1.rx.held() < busy, "{} then {}", busy, p1.rx.held());
        let (free, _) = rx_pool::arena_of(&p1.rx);
        assert_eq!(free, arena - p1.rx.held() as usize - 64);

        // p2's veth goes under it: the next port joins through p1, and
        // p2's chunks come back when it closes.
        ip(&["link", "del", "pxa2"]);
        let p4 = open("pxa4", w_a);
        assert!(rx_pool::same_arena(&p1.rx, &p4.rx));
        assert_eq!(burst_in(&p4, 4, 20), 20);
        drop(p2);
        let (free, members) = rx_pool::arena_of(&p1.rx);
        assert_eq!(members, 2);
        assert_eq!(free, arena - p1.rx.held() as usize - p4.rx.held() as usize);
        drop((p1, p3, p4));
        let after = umem_use();
        assert_eq!(
            after.rx_umems, before.rx_umems,
            "arenas go with their ports"
        );
        assert_eq!(after.rx_bytes, before.rx_bytes);
    }
}
