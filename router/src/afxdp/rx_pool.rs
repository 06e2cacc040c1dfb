//! The pod ports' receive side in one worker's UMEM: the receive sockets
//! of every pod port a worker polls share that worker's receive arenas
//! (`XDP_SHARED_UMEM`), each socket with its own fill and RX rings.
//!
//! Layout. A worker's receive pool (one per worker and chunk size, in a
//! process-wide registry) is a list of arenas: [`UmemArea`]s of at least
//! [`ARENA_MIN_CHUNKS`] chunks, each registered with the kernel as one
//! UMEM. A port joins the first arena with room for its standing share
//! plus the arena's burst reserve ([`RX_BURST`] chunks), else a new arena
//! is mapped for it: memory follows the pod count, one arena per
//! `(arena - reserve) / standing` pods (24 pods per 8 MiB arena with the
//! default 128-chunk share and 2 KiB chunks). An arena is unmapped when its
//! last port goes (the registry keeps only a weak reference).
//!
//! Watermarks. A port holds its standing share ([`super::AfXdpConfig::rx_chunks`])
//! on its fill ring when idle. After every receive batch the worker puts the
//! batch's chunks back on the port's fill ring up to the port's target: the
//! standing share, raised to the burst size ([`RX_BURST`], or the standing
//! share if larger) while batches come in large ([`BUSY_BATCH`] frames or
//! more, or the worker's whole batch), lowered again when they come in
//! small ([`IDLE_BATCH`] or fewer, [`IDLE_STREAK`] batches in a row).
//! Chunks already on the fill ring stay there (the kernel never hands
//! them back): a port that was busy gives its surplus back as the frames
//! that use it up arrive.
//! Below the target it takes more from the arena's free list; above it the
//! surplus goes back there. In the steady state (a batch's chunks go
//! straight back) the arena is not touched at all.
//!
//! Invariants:
//! - Every chunk of an arena is free (on the arena's free list) or owned by
//!   exactly one member socket (`owner`, by the socket's token): on its
//!   fill ring, in the kernel's hands or being copied out of after its RX
//!   descriptor. A port only ever puts chunks of its own arena on its fill
//!   ring (the kernel would refuse others: they are another UMEM).
//! - The arena's free list is touched under the arena's mutex: by the
//!   worker polling the port (only when a batch moves the port off its
//!   target) and by the control thread when a port opens or closes. The
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
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use super::{bind_once_released, context, lock, AfXdpStats, UmemUse};
use crate::frame::{Frame, VnetHdr, MAX_FRAME_LEN};
use crate::sys::xsk::{self, Ring, RingKind, UmemArea, UmemRange, XdpDesc};

/// Most chunks a busy port holds (unless its standing share is larger):
/// the size of its fill and RX rings, and each arena's burst reserve.
pub const RX_BURST: u32 = 1024;
/// Chunks of an arena at least (8 MiB of 2 KiB chunks).
pub const ARENA_MIN_CHUNKS: u32 = 4096;
/// A batch of this many frames or more (or a full batch) raises the
/// port's target to its burst size.
const BUSY_BATCH: u32 = 16;
/// A batch of this many frames or fewer counts as small ...
const IDLE_BATCH: u32 = 4;
/// ... and this many small batches in a row lower the target to the
/// standing share (a busy port's last, short batch of a round must not).
const IDLE_STREAK: u32 = 64;

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

/// One worker's receive arenas for one chunk size.
struct Pool {
    worker: usize,
    chunk_size: u32,
    arenas: Vec<Weak<Mutex<Arena>>>,
}

static POOLS: Mutex<Vec<Pool>> = Mutex::new(Vec::new());

/// An arena of `worker`'s pool with room for `standing` chunks beyond its
/// burst reserve, mapping a new one if none has.
fn arena_for(worker: usize, chunk_size: u32, standing: u32) -> io::Result<Arc<Mutex<Arena>>> {
    let mut pools = lock(&POOLS);
    pools.retain_mut(|p| {
        p.arenas.retain(|a| a.strong_count() > 0);
        !p.arenas.is_empty()
    });
    let at = match pools
        .iter()
        .position(|p| p.worker == worker && p.chunk_size == chunk_size)
    {
        Some(i) => i,
        None => {
            pools.push(Pool {
                worker,
                chunk_size,
                arenas: Vec::new(),
            });
            pools.len() - 1
        }
    };
    let pool = &mut pools[at];
    for a in pool.arenas.iter().filter_map(Weak::upgrade) {
        let room = lock(&a).free.len() as u64;
        if room >= u64::from(standing) + u64::from(RX_BURST) {
            return Ok(a);
        }
    }
    let chunks = ARENA_MIN_CHUNKS.max(2 * standing.max(RX_BURST));
    let a = Arc::new(Mutex::new(Arena::new(chunks, chunk_size)?));
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
    /// What the port tries to hold: `standing` or `burst`.
    target: u32,
    /// Small batches in a row.
    small: u32,
    standing: u32,
    burst: u32,
    /// Chunks of the batch being received (capacity: the RX ring's size).
    spare: Vec<u64>,
}

/// A pod port's receive socket in its worker's receive pool (see the
/// module documentation).
pub(super) struct PoolRx {
    // Field order matters: the rings and the socket go before the lease
    // gives the socket's chunks back.
    side: Mutex<Side>,
    sock: Arc<OwnedFd>,
    lease: Lease,
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
/// `worker`'s pool, with `standing` chunks on its fill ring.
pub(super) fn open(
    worker: usize,
    ifindex: u32,
    queue: u32,
    chunk_size: u32,
    standing: u32,
    name: &str,
) -> io::Result<PoolRx> {
    let sock = xsk::xsk_socket().map_err(|e| context(e, "cannot open an AF_XDP socket"))?;
    let fd = sock.as_fd();
    let burst = standing.max(RX_BURST);
    // Its own fill ring (it is on its own device); it never transmits, so
    // its completion ring stays empty.
    xsk::set_ring_size(fd, RingKind::Fill, burst)?;
    xsk::set_ring_size(fd, RingKind::Completion, 1)?;
    xsk::set_ring_size(fd, RingKind::Rx, burst)?;
    let mut fill: Ring<u64> = Ring::map(fd, RingKind::Fill, burst)?;
    let rx: Ring<XdpDesc> = Ring::map(fd, RingKind::Rx, burst)?;
    let what = || format!("cannot bind an AF_XDP socket to {name} queue {queue}");
    let arena = arena_for(worker, chunk_size, standing)?;
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
    let mut joined = false;
    for member in a.members.iter().filter_map(|m| m.sock.upgrade()) {
        // A socket sharing the UMEM takes the flags of the one it joins
        // through; it may set none.
        match bind_once_released(|| {
            xsk::bind(sock.as_fd(), ifindex, queue, 0, Some(member.as_fd()))
        }) {
            Ok(()) => {
                joined = true;
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) => return Err(context(e, what())),
        }
    }
    if !joined {
        a.area
            .register(sock.as_fd())
            .map_err(|e| context(e, "cannot register a worker's receive UMEM"))?;
        let flags = xsk::BIND_NEED_WAKEUP | xsk::BIND_COPY;
        bind_once_released(|| xsk::bind(sock.as_fd(), ifindex, queue, flags, None))
            .map_err(|e| context(e, what()))?;
    }
    let sock = Arc::new(sock);
    a.members.push(Member {
        sock: Arc::downgrade(&sock),
        ifindex,
        queue,
    });
    let token = a.next_token;
    a.next_token = a.next_token.wrapping_add(1).max(1);
    let mut held = 0;
    while held < standing {
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
            target: standing,
            small: 0,
            standing,
            burst,
            spare: Vec::with_capacity(burst as usize),
        }),
        sock,
        lease: Lease { arena, token },
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
        while n < frames.len() {
            let Some(desc) = s.rx.pop() else {
                break;
            };
            popped += 1;
            if let Some(bytes) = s.view.read(desc.addr, desc.len as usize) {
                if bytes.len() <= MAX_FRAME_LEN {
                    frames[n].load(bytes, VnetHdr::default());
                    n += 1;
                }
            }
            // At most one RX ring's worth per batch: within capacity.
            s.spare.push(s.view.chunk_of(desc.addr));
        }
        if popped == 0 {
            return 0;
        }
        s.rx.release();
        s.held = s.held.saturating_sub(popped);
        if popped >= BUSY_BATCH || popped as usize == frames.len() {
            s.target = s.burst;
            s.small = 0;
        } else if popped <= IDLE_BATCH {
            s.small = s.small.saturating_add(1);
            if s.small >= IDLE_STREAK {
                s.target = s.standing;
            }
        } else {
            s.small = 0;
        }
        while s.held < s.target {
            let Some(addr) = s.spare.pop() else {
                break;
            };
            s.fill.push(addr);
            s.held += 1;
        }
        if s.held < s.target || !s.spare.is_empty() {
            let token = self.lease.token;
            let mut arena = lock(&self.lease.arena);
            for addr in s.spare.drain(..) {
                arena.give_back(token, addr);
            }
            while s.held < s.target {
                let Some(addr) = arena.take(token) else {
                    break;
                };
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
