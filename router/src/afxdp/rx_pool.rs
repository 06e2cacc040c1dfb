//! The pod ports' receive side in one worker's UMEM: the receive sockets
//! of every pod port a worker polls share that worker's receive arenas
//! (`XDP_SHARED_UMEM`), each socket with its own fill and RX rings.
//!
//! Shares are counted in frames and held in chunks ([`Shares`]). A
//! single-chunk port's frame is one chunk; a multi-buffer port's largest
//! frame takes `frame_chunks` of them (its MTU plus the Ethernet header
//! over what a chunk carries after the kernel's headroom: three 4 KiB
//! chunks at MTU 9000), and the kernel's copy-mode receive takes a frame
//! only when that many chunks are on the fill ring at once (else it drops
//! the frame whole and counts `rx_dropped`, with `rx_fill_empty` counted
//! only if the ring was empty). So every figure below that says "chunks"
//! is that many chunks *per frame* on a multi-buffer port: its standing
//! share, burst size, RX ring, arena reserve and arena minimum are
//! `frame_chunks` times a single-chunk port's (rings rounded up to a power
//! of two), and a single-chunk port's are what they always were.
//!
//! Layout. A worker's receive pool (one per worker and layout, in a
//! process-wide registry) is a list of arenas: [`UmemArea`]s of at least
//! [`ARENA_MIN_CHUNKS`] chunks per frame, each registered with the kernel
//! as one UMEM. A port joins the first arena with room for its standing
//! share plus a burst reserve ([`RX_BURST`] chunks per frame), else a new
//! arena is mapped for it: memory follows the pod count, one arena per
//! `(arena - reserve) / standing` pods (24 pods per 8 MiB arena with the
//! default 128-frame share and 2 KiB chunks; 24 per 48 MiB arena of 4 KiB
//! chunks at MTU 9000). An arena is unmapped when its last port goes (the
//! registry keeps only a weak reference).
//!
//! Watermarks. A port holds its standing share
//! ([`super::AfXdpConfig::rx_chunks`] frames' worth of chunks) on its fill
//! ring when idle. After every receive batch the worker puts the batch's
//! chunks back on the port's fill ring up to the port's target: the
//! standing share, raised to the burst size ([`RX_BURST`] frames' worth,
//! or the standing share if larger) by any large batch ([`BUSY_BATCH`]
//! frames or more, or the worker's whole batch), lowered again only when
//! the port received fewer than [`BUSY_FRAMES`] frames in a window of at
//! least [`WINDOW_NS`]. The thresholds count frames (descriptors that end
//! a frame), not descriptors. The rate decides, not the batch size: a
//! worker that outpaces a flood sees it in batches of one or two frames,
//! and a port
//! lowered to its standing share mid-flood would drop what arrives while
//! its worker is off the CPU (the fill ring runs dry), and churn between
//! the two targets (taking the arena's lock on every batch). The clock is
//! read once every [`CLOCK_EVERY`] small batches while the target is
//! raised, never on a large batch.
//! Chunks already on the fill ring stay there (the kernel never hands
//! them back): a port that was busy gives its surplus back as the frames
//! that use it up arrive.
//! Below the target it takes more from the arena's free list; above it the
//! surplus goes back there. In the steady state (a batch's chunks go
//! straight back) the arena is not touched at all.
//!
//! The RX ring has an entry per chunk of the burst (a descriptor per
//! chunk), rounded up to a power of two. The fill ring has twice the RX
//! ring's entries, at least twice the most chunks a port holds:
//! the kernel publishes how far it consumed the fill ring only when it
//! flushes, after it published the RX descriptors of the same frames, so
//! a ring exactly as large as the chunks can look full for a moment while
//! the chunks it took are already back in our hands. A chunk the fill ring
//! refuses is never lost: it goes back to the arena's free list.
//!
//! Invariants:
//! - Every chunk of an arena is free (on the arena's free list) or owned by
//!   exactly one member socket (`owner`, by the socket's token): on its
//!   fill ring, in the kernel's hands or being copied out of after its RX
//!   descriptor. A port only ever puts chunks of its own arena on its fill
//!   ring (the kernel would refuse others: they are another UMEM).
//! - The arena's free list is touched under the arena's mutex: by the
//!   worker polling the port (only when a batch leaves the port off its
//!   target, or its fill ring refused a chunk) and by the control thread when a port opens or closes. The
//!   daemon hands a pod port to the worker whose pool it joined
//!   (`AfXdpConfig::rx_worker`), so the mutex is taken by one worker only;
//!   ports never move between workers (a port is added to one worker and
//!   removed from it, see `Daemon::publish_port`).
//! - A socket's chunks come back only after its socket is closed. The
//!   kernel does not hand back what is on a fill ring when a socket
//!   closes or its device goes away (a pod's veth deleted under a live
//!   port unbinds the socket; the addresses on its fill ring are simply
//!   forgotten by the kernel): the owner tags say which they are, and the
//!   port's [`Lease`] gives them back after the socket's descriptor is
//!   closed (the release runs on close; copy mode has stopped writing
//!   into them by then).
//! - A socket joins an arena through any member still bound (`EBADF`: that
//!   member's device is gone, try the next); when none is bound the next
//!   socket registers the same pages again, a new kernel UMEM over them,
//!   and the owner tags keep the two from handing out one chunk twice.
//!   Sockets are bound in copy mode with `need_wakeup` (zero-copy is
//!   refused on veth, and sockets joining an arena take its flags).
//! - Multi-buffer ports (a pod MTU above one chunk, [`super::Layout`])
//!   have pools and arenas of their own: the kernel keeps `XDP_USE_SG`
//!   per UMEM (set by its first socket), so a port never joins an arena of
//!   the other kind. A frame spread over several descriptors is gathered
//!   into one [`Frame`] ([`super::chain::Gather`]); every descriptor's
//!   chunk goes back like a single frame's, whatever becomes of the frame,
//!   and a frame dropped on receive (longer than the port's MTU, or a
//!   broken chain) is counted in `rx_invalid`.
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::chain::{Gather, Step};
use super::{bind_shared_umem, context, lock, AfXdpStats, Layout, UmemUse, XDP_HEADROOM};
use crate::frame::Frame;
use crate::sys::xsk::{self, Ring, RingKind, UmemArea, UmemRange, XdpDesc};

/// Most frames' worth of chunks a busy port holds (unless its standing
/// share is larger): the size of a single-chunk port's RX ring (its fill
/// ring has twice as many entries), and each arena's burst reserve; times
/// [`Shares::frame_chunks`] on a multi-buffer port.
pub const RX_BURST: u32 = 1024;
/// Chunks per frame of an arena at least (8 MiB of 2 KiB chunks on a
/// single-chunk port, 48 MiB of 4 KiB chunks at MTU 9000).
pub const ARENA_MIN_CHUNKS: u32 = 4096;
/// A batch of this many frames or more (or a full batch) raises the
/// port's target to its burst size.
const BUSY_BATCH: u32 = 16;
/// A raised port that receives fewer frames than this in a window ...
const BUSY_FRAMES: u64 = 1024;
/// ... of at least this long (1 s) goes back to its standing share.
const WINDOW_NS: u64 = 1_000_000_000;
/// Small batches between two looks at the clock while the target is raised.
const CLOCK_EVERY: u32 = 32;

/// Chunks of the largest frame a port takes: 1 on a single-chunk port,
/// else its largest frame (`max_frame` bytes, Ethernet header included)
/// over what one chunk carries after the kernel's headroom, as the kernel
/// counts them (`__xsk_rcv`: chunk size less `XDP_PACKET_HEADROOM`, no
/// UMEM headroom here).
pub(super) fn frame_chunks(layout: Layout, max_frame: usize) -> u32 {
    if !layout.multi_buffer {
        return 1;
    }
    let carried = layout.chunk_size.saturating_sub(XDP_HEADROOM).max(1);
    let frame = u32::try_from(max_frame).unwrap_or(u32::MAX).max(1);
    frame.div_ceil(carried)
}

/// A port's receive sizes, in chunks and ring entries, from its standing
/// share in frames (see the module documentation). For a single-chunk
/// port (`frame_chunks` 1) they are the figures this module always used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shares {
    /// Chunks the port's largest frame takes ([`frame_chunks`]).
    pub frame_chunks: u32,
    /// Chunks on the fill ring when idle.
    pub standing: u32,
    /// Chunks a busy port holds.
    pub burst: u32,
    /// RX ring entries: one per chunk of the burst, a power of two.
    pub rx_ring: u32,
    /// Fill ring entries: twice the RX ring's.
    pub fill_ring: u32,
    /// Chunks an arena must have free beyond the standing share to take
    /// the port.
    pub reserve: u32,
    /// Chunks of an arena mapped for the port.
    pub arena: u32,
}

impl Shares {
    /// `standing_frames`: the configured share (a power of two in
    /// [`super::RX_CHUNKS_RANGE`]); `max_frame`: the port's largest frame
    /// in bytes.
    pub(super) fn new(layout: Layout, max_frame: usize, standing_frames: u32) -> Shares {
        let k = frame_chunks(layout, max_frame);
        let standing = standing_frames.saturating_mul(k);
        let burst = standing_frames.max(RX_BURST).saturating_mul(k);
        let rx_ring = burst.next_power_of_two();
        Shares {
            frame_chunks: k,
            standing,
            burst,
            rx_ring,
            fill_ring: 2 * rx_ring,
            reserve: RX_BURST * k,
            arena: (ARENA_MIN_CHUNKS * k).max(2 * burst),
        }
    }
}

struct Arena {
    area: UmemArea,
    /// The whole area, for the free list's bookkeeping.
    range: UmemRange,
    chunk_size: u32,
    free: Vec<u64>,
    /// Per chunk: the token of the socket holding it, 0 if free.
    owner: Vec<u32>,
    /// Sockets that joined (or registered) the arena, with the interface
    /// and queue each is bound to; any still bound can be joined through.
    members: Vec<Member>,
    next_token: u32,
    _use: UmemUse,
}

impl Arena {
    fn new(chunks: u32, chunk_size: u32) -> io::Result<Arena> {
        let area = UmemArea::new(chunks, chunk_size)
            .map_err(|e| context(e, "cannot map a worker's receive UMEM"))?;
        let range = area.range(0, chunks)?;
        // Handed out from the end: low addresses first.
        let mut free: Vec<u64> = range.chunk_addrs().collect();
        free.reverse();
        Ok(Arena {
            _use: UmemUse::rx(&area),
            area,
            range,
            chunk_size,
            free,
            owner: vec![0; chunks as usize],
            members: Vec::new(),
            next_token: 1,
        })
    }

    fn index(&self, addr: u64) -> Option<usize> {
        let i = (addr / u64::from(self.chunk_size)) as usize;
        (i < self.owner.len()).then_some(i)
    }

    fn take(&mut self, token: u32) -> Option<u64> {
        let addr = self.free.pop()?;
        if let Some(i) = self.index(addr) {
            self.owner[i] = token;
        }
        Some(addr)
    }

    fn give_back(&mut self, token: u32, addr: u64) {
        let chunk = self.range.chunk_of(addr);
        if let Some(i) = self.index(chunk) {
            if self.owner[i] == token {
                self.owner[i] = 0;
                self.free.push(chunk);
            }
        }
    }

    fn give_back_all(&mut self, token: u32) {
        for i in 0..self.owner.len() {
            if self.owner[i] == token {
                self.owner[i] = 0;
                self.free.push(i as u64 * u64::from(self.chunk_size));
            }
        }
    }
}

struct Member {
    sock: Weak<OwnedFd>,
    ifindex: u32,
    queue: u32,
}

/// One worker's receive arenas for one layout (chunk size, multi-buffer).
struct Pool {
    worker: usize,
    layout: Layout,
    arenas: Vec<Weak<Mutex<Arena>>>,
}

static POOLS: Mutex<Vec<Pool>> = Mutex::new(Vec::new());

/// An arena of `worker`'s pool with room for the port's standing share
/// beyond its burst reserve, mapping a new one of `shares.arena` chunks if
/// none has.
fn arena_for(worker: usize, layout: Layout, shares: &Shares) -> io::Result<Arc<Mutex<Arena>>> {
    let mut pools = lock(&POOLS);
    pools.retain_mut(|p| {
        p.arenas.retain(|a| a.strong_count() > 0);
        !p.arenas.is_empty()
    });
    let at = match pools
        .iter()
        .position(|p| p.worker == worker && p.layout == layout)
    {
        Some(i) => i,
        None => {
            pools.push(Pool {
                worker,
                layout,
                arenas: Vec::new(),
            });
            pools.len() - 1
        }
    };
    let pool = &mut pools[at];
    for a in pool.arenas.iter().filter_map(Weak::upgrade) {
        let room = lock(&a).free.len() as u64;
        if room >= u64::from(shares.standing) + u64::from(shares.reserve) {
            return Ok(a);
        }
    }
    let a = Arc::new(Mutex::new(Arena::new(shares.arena, layout.chunk_size)?));
    pool.arenas.push(Arc::downgrade(&a));
    Ok(a)
}

struct Side {
    rx: Ring<XdpDesc>,
    fill: Ring<u64>,
    /// Read view of the arena (only chunks the RX ring handed over).
    view: UmemRange,
    /// Chunks on the fill ring or in the kernel's hands.
    held: u32,
    /// How many chunks the port tries to hold.
    mark: Watermark,
    /// Chunks of the batch being received (capacity: the RX ring's
    /// entries).
    spare: Vec<u64>,
    /// The frame being gathered from chained descriptors.
    gather: Gather,
}

/// A port's target, in chunks: its standing share or its burst size (see
/// the module documentation); the thresholds that move it count frames.
struct Watermark {
    standing: u32,
    burst: u32,
    target: u32,
    /// Small batches since the clock was last read.
    small: u32,
    /// Frames received since `window_ns`.
    window_frames: u64,
    /// When the current rate window began ([`crate::clock::now_ns`]).
    window_ns: u64,
    /// How often the target changed.
    changes: u64,
}

impl Watermark {
    fn new(standing: u32, burst: u32, now_ns: u64) -> Watermark {
        Watermark {
            standing,
            burst,
            target: standing,
            small: 0,
            window_frames: 0,
            window_ns: now_ns,
            changes: 0,
        }
    }

    /// Moves the target after a batch that ended `popped` frames (`full`:
    /// the whole batch the worker asked for); `now_ns` is called at most once
    /// every [`CLOCK_EVERY`] small batches, and only while the target is
    /// raised.
    fn after_batch(&mut self, popped: u32, full: bool, now_ns: impl FnOnce() -> u64) {
        self.window_frames += u64::from(popped);
        if popped >= BUSY_BATCH || full {
            self.small = 0;
            if self.target != self.burst {
                self.target = self.burst;
                self.changes += 1;
            }
            return;
        }
        if self.target == self.standing {
            return;
        }
        self.small += 1;
        if self.small < CLOCK_EVERY {
            return;
        }
        self.small = 0;
        let now = now_ns();
        if now.saturating_sub(self.window_ns) < WINDOW_NS {
            return;
        }
        if self.window_frames < BUSY_FRAMES {
            self.target = self.standing;
            self.changes += 1;
        }
        self.window_ns = now;
        self.window_frames = 0;
    }
}

/// A pod port's receive socket in its worker's receive pool (see the
/// module documentation).
pub(super) struct PoolRx {
    // Field order matters: the rings and the socket go before the lease
    // gives the socket's chunks back.
    side: Mutex<Side>,
    sock: Arc<OwnedFd>,
    lease: Lease,
    /// Frames dropped on receive by the port itself (`rx_invalid`).
    invalid: AtomicU64,
}

struct Lease {
    arena: Arc<Mutex<Arena>>,
    token: u32,
}

impl Drop for Lease {
    fn drop(&mut self) {
        lock(&self.arena).give_back_all(self.token);
    }
}

/// Opens a receive socket on queue `queue` of `ifindex`, in an arena of
/// `worker`'s pool for `layout`, with `standing` frames' worth of chunks
/// on its fill ring ([`Shares`]); frames longer than `max_frame` bytes are
/// dropped and counted.
pub(super) fn open(
    worker: usize,
    (ifindex, queue): (u32, u32),
    layout: Layout,
    max_frame: usize,
    standing: u32,
    name: &str,
) -> io::Result<PoolRx> {
    let sock = xsk::xsk_socket().map_err(|e| context(e, "cannot open an AF_XDP socket"))?;
    let fd = sock.as_fd();
    let shares = Shares::new(layout, max_frame, standing);
    // Its own fill ring (it is on its own device), at least twice the
    // chunks it may hold (see the module documentation); it never
    // transmits, so its completion ring stays empty.
    xsk::set_ring_size(fd, RingKind::Fill, shares.fill_ring)?;
    xsk::set_ring_size(fd, RingKind::Completion, 1)?;
    xsk::set_ring_size(fd, RingKind::Rx, shares.rx_ring)?;
    let mut fill: Ring<u64> = Ring::map(fd, RingKind::Fill, shares.fill_ring)?;
    let rx: Ring<XdpDesc> = Ring::map(fd, RingKind::Rx, shares.rx_ring)?;
    let what = || format!("cannot bind an AF_XDP socket to {name} queue {queue}");
    let arena = arena_for(worker, layout, &shares)?;
    let mut a = lock(&arena);
    a.members.retain(|m| m.sock.strong_count() > 0);
    if a.members
        .iter()
        .any(|m| m.ifindex == ifindex && m.queue == queue)
    {
        // The kernel would refuse a second socket with its own fill ring
        // on one queue (EINVAL); say what it is.
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{}: {name} queue {queue} already has a receive socket",
                what()
            ),
        ));
    }
    let members: Vec<_> = a.members.iter().filter_map(|m| m.sock.upgrade()).collect();
    bind_shared_umem(
        &sock,
        &a.area,
        members,
        (ifindex, queue),
        what,
        "a worker's receive UMEM",
        layout.multi_buffer,
    )?;
    let sock = Arc::new(sock);
    a.members.push(Member {
        sock: Arc::downgrade(&sock),
        ifindex,
        queue,
    });
    let token = a.next_token;
    a.next_token = a.next_token.wrapping_add(1).max(1);
    let mut held = 0;
    // The ring is empty and larger than the standing share: every push fits.
    while held < shares.standing {
        let Some(addr) = a.take(token) else {
            break;
        };
        fill.push(addr);
        held += 1;
    }
    fill.submit();
    let view = a.area.range(0, a.area.chunks())?;
    drop(a);
    Ok(PoolRx {
        side: Mutex::new(Side {
            rx,
            fill,
            view,
            held,
            mark: Watermark::new(shares.standing, shares.burst, crate::clock::now_ns()),
            spare: Vec::with_capacity(shares.rx_ring as usize),
            gather: Gather::new(max_frame),
        }),
        sock,
        lease: Lease { arena, token },
        invalid: AtomicU64::new(0),
    })
}

impl PoolRx {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Copies what the RX ring holds (up to `frames.len()`) into `frames`,
    /// then tops the fill ring up to the port's target (see the module
    /// documentation); returns how many frames were filled. One fill-ring
    /// wakeup per batch if the kernel asked for it.
    pub(super) fn recv(&self, frames: &mut [Frame]) -> usize {
        let mut guard = lock(&self.side);
        let s = &mut *guard;
        let mut n = 0;
        let mut popped = 0u32;
        // Descriptors that end a frame: the watermark counts frames.
        let mut ended = 0u32;
        let mut invalid = 0;
        // A frame's descriptors all come before `n` moves on: a batch
        // ends between frames, or where the ring ran dry.
        while n < frames.len() {
            let Some(desc) = s.rx.pop() else {
                if s.gather.cut() {
                    invalid += 1;
                }
                break;
            };
            popped += 1;
            let bytes = s.view.read(desc.addr, desc.len as usize);
            let contd = desc.options & xsk::PKT_CONTD != 0;
            ended += u32::from(!contd);
            match s.gather.piece(bytes, contd, &mut frames[n]) {
                Step::Frame => n += 1,
                Step::Dropped => invalid += 1,
                Step::More | Step::Skipped => {}
            }
            // At most one RX ring's worth per batch (the ring is released
            // only below): within capacity.
            s.spare.push(s.view.chunk_of(desc.addr));
        }
        if invalid > 0 {
            self.invalid.fetch_add(invalid, Ordering::Relaxed);
        }
        if popped == 0 {
            return 0;
        }
        s.rx.release();
        s.held = s.held.saturating_sub(popped);
        s.mark
            .after_batch(ended, n == frames.len(), crate::clock::now_ns);
        while s.held < s.mark.target {
            let Some(&addr) = s.spare.last() else {
                break;
            };
            if !s.fill.push(addr) {
                break;
            }
            s.spare.pop();
            s.held += 1;
        }
        if !s.spare.is_empty() || (s.held < s.mark.target && s.fill.free(1) > 0) {
            let token = self.lease.token;
            let mut arena = lock(&self.lease.arena);
            for addr in s.spare.drain(..) {
                arena.give_back(token, addr);
            }
            while s.held < s.mark.target && s.fill.free(1) > 0 {
                let Some(addr) = arena.take(token) else {
                    break;
                };
                // Room checked above; the ring has one producer (us).
                s.fill.push(addr);
                s.held += 1;
            }
        }
        s.fill.submit();
        if s.fill.needs_wakeup() {
            let _ = xsk::wake_rx(self.sock.as_fd());
        }
        n
    }

    /// The kernel's drop counters of this socket (a `getsockopt`).
    pub(super) fn add_stats(&self, s: &mut AfXdpStats) {
        if let Ok(k) = xsk::statistics(self.sock.as_fd()) {
            s.rx_dropped += k.rx_dropped;
            s.rx_ring_full += k.rx_ring_full;
            s.rx_fill_empty += k.rx_fill_ring_empty_descs;
        }
        s.rx_invalid += self.invalid.load(Ordering::Relaxed);
    }

    /// Chunks this port holds now (fill ring and kernel).
    #[cfg(test)]
    pub(super) fn held(&self) -> u32 {
        lock(&self.side).held
    }
}

/// Free chunks and member sockets of the arena `rx` is in.
#[cfg(test)]
pub(super) fn arena_of(rx: &PoolRx) -> (usize, usize) {
    let a = lock(&rx.lease.arena);
    (
        a.free.len(),
        a.members
            .iter()
            .filter(|m| m.sock.strong_count() > 0)
            .count(),
    )
}

/// Whether two ports' receive sockets are in the same arena.
#[cfg(test)]
pub(super) fn same_arena(a: &PoolRx, b: &PoolRx) -> bool {
    Arc::ptr_eq(&a.lease.arena, &b.lease.arena)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// `batches` batches of `frames` frames each, `step_ns` apart on a
    /// clock starting at `*now`; returns how often the clock was read.
    fn feed(m: &mut Watermark, now: &mut u64, batches: u32, frames: u32, step_ns: u64) -> u32 {
        let mut reads = 0;
        for _ in 0..batches {
            *now += step_ns;
            let t = *now;
            m.after_batch(frames, false, || {
                reads += 1;
                t
            });
        }
        reads
    }

    #[test]
    fn a_large_batch_raises_the_target_and_a_quiet_second_lowers_it() {
        let mut now = 0;
        let mut m = Watermark::new(128, 1024, now);
        // Small batches of an idle port: no clock, no change.
        assert_eq!(feed(&mut m, &mut now, 100, 1, MS), 0);
        assert_eq!((m.target, m.changes), (128, 0));
        // One large batch raises it at once.
        feed(&mut m, &mut now, 1, BUSY_BATCH, MS);
        assert_eq!(m.target, 1024);
        m.after_batch(3, true, || unreachable!("a full batch reads no clock"));
        // A trickle (2 frames every 10 ms, 200 a second) lowers it once a
        // window of a second has passed, not before.
        feed(&mut m, &mut now, 50, 2, 10 * MS);
        assert_eq!(m.target, 1024, "half a second");
        let reads = feed(&mut m, &mut now, 150, 2, 10 * MS);
        assert_eq!(m.target, 128);
        assert_eq!(m.changes, 2);
        assert!(reads <= 150 / CLOCK_EVERY, "{reads} clock reads");
    }

    fn layout(mtu: u16) -> (Layout, usize) {
        let l = crate::afxdp::layout_for(mtu).unwrap();
        (l, usize::from(mtu) + crate::wire::ETHERNET_HEADER_LEN)
    }

    /// Chunks per frame as the kernel counts them: a chunk carries its
    /// size less the 256-byte headroom.
    #[test]
    fn frames_take_the_chunks_the_kernel_counts() {
        for mtu in [1500, 1778, 1779, 3826] {
            let (l, max) = layout(mtu);
            assert_eq!(frame_chunks(l, max), 1, "MTU {mtu} is single-chunk");
        }
        // 4 KiB chunks carry 3840 bytes: 3827 + 14 = 3841 takes two.
        let (l, max) = layout(3827);
        assert!(l.multi_buffer);
        assert_eq!(frame_chunks(l, max), 2);
        assert_eq!(frame_chunks(l, 2 * 3840), 2);
        assert_eq!(frame_chunks(l, 2 * 3840 + 1), 3);
        let (l, max) = layout(9000);
        assert_eq!((max, frame_chunks(l, max)), (9014, 3));
        assert_eq!(frame_chunks(l, 0), 1);
    }

    /// A single-chunk port's sizes are the ones this module always used;
    /// a multi-buffer port's are as many frames' worth, rings rounded up
    /// to a power of two.
    #[test]
    fn shares_count_frames_and_keep_single_chunk_ports_unchanged() {
        let (l, max) = layout(1500);
        for standing in [64, 128, 1024, 2048, 4096] {
            let burst = standing.max(RX_BURST);
            assert_eq!(
                Shares::new(l, max, standing),
                Shares {
                    frame_chunks: 1,
                    standing,
                    burst,
                    rx_ring: burst,
                    fill_ring: 2 * burst,
                    reserve: RX_BURST,
                    arena: ARENA_MIN_CHUNKS.max(2 * burst),
                },
                "standing {standing}"
            );
        }
        let (l, max) = layout(9000);
        assert_eq!(
            Shares::new(l, max, 128),
            Shares {
                frame_chunks: 3,
                standing: 384,
                burst: 3072,
                rx_ring: 4096,
                fill_ring: 8192,
                reserve: 3072,
                arena: 12_288,
            }
        );
        // As many pods per arena as a single-chunk port's: 24 at the
        // default share.
        let s = Shares::new(l, max, 128);
        assert_eq!((s.arena - s.reserve) / s.standing, 24);
        let big = Shares::new(l, max, 4096);
        assert_eq!(
            (big.standing, big.burst, big.rx_ring),
            (12_288, 12_288, 16_384)
        );
        assert_eq!(big.arena, 24_576);
        let (l, max) = layout(5000);
        let s = Shares::new(l, max, 128);
        assert_eq!(
            (s.frame_chunks, s.standing, s.rx_ring, s.arena),
            (2, 256, 2048, 8192)
        );
        // Every ring is a power of two and holds the burst, and the
        // standing share is a whole number of largest frames.
        for mtu in [1500, 3827, 5000, 7000, 9000] {
            let (l, max) = layout(mtu);
            for standing in [64, 128, 256, 4096] {
                let s = Shares::new(l, max, standing);
                assert!(s.rx_ring.is_power_of_two() && s.fill_ring.is_power_of_two());
                assert!(s.rx_ring >= s.burst && s.fill_ring >= 2 * s.burst);
                assert_eq!(s.standing % s.frame_chunks, 0);
                assert!(s.arena >= s.standing + s.reserve);
            }
        }
    }

    /// A worker faster than a flood sees it one or two frames at a time:
    /// the target stays raised (the last session's batch-size rule lowered
    /// it after 64 such batches, then churned).
    #[test]
    fn a_flood_in_small_batches_keeps_the_burst() {
        let mut now = 0;
        let mut m = Watermark::new(128, 1024, now);
        m.after_batch(32, true, || 0);
        // 0.3 Mpps in batches of 2 for 5 seconds.
        let per_batch = 2 * 1_000_000_000 / 300_000;
        feed(&mut m, &mut now, 750_000, 2, per_batch);
        assert_eq!((m.target, m.changes), (1024, 1));
        // Then a trickle: down once, and it stays down.
        feed(&mut m, &mut now, 400, 1, 10 * MS);
        assert_eq!((m.target, m.changes), (128, 2));
        feed(&mut m, &mut now, 400, 1, 10 * MS);
        assert_eq!((m.target, m.changes), (128, 2));
    }
}
