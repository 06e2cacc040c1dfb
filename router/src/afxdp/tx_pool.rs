//! One worker's transmit UMEM: the chunks every transmit socket of that
//! worker (one per AF_XDP port it sends to) copies frames into.
//!
//! A [`TxPool`] lives in a thread-local of the worker's thread, one per
//! chunk size, made when the worker opens its first transmit socket and
//! kept until the thread ends. Its area is registered with the kernel
//! once per "generation": the first transmit socket registers it
//! (`XDP_UMEM_REG`) and binds with `need_wakeup` in copy mode; every later
//! socket joins it with `XDP_SHARED_UMEM` through any member socket that
//! is still bound (kernel >= 5.10 lets sockets on other devices and queues
//! share a UMEM, each with its own fill and completion rings, and takes
//! the bind flags from the socket it joins through). A member is unbound
//! when its pod's veth goes away (`EBADF` when joined through); when no
//! member is bound any more, the next socket registers the same area
//! again (a new kernel UMEM over the same pages; the chunks' owners are
//! kept here, so the two never hand out one chunk twice).
//!
//! Invariants:
//! - Only the worker's thread touches its pool (a thread-local): the free
//!   list takes no lock. A transmit socket remembers the id of the pool it
//!   joined and refuses to queue or return chunks on any other thread's
//!   pool.
//! - Every chunk is free or owned by exactly one member socket (`owner`,
//!   by the socket's token): a completion for a chunk the socket does not
//!   own is ignored, and a socket that closes gives back all it owns. The
//!   chunks are reused only after the socket is closed: copy mode copies a
//!   frame out of its chunk when it sends it, so the kernel no longer
//!   reads them (the pool always binds in copy mode).
//! - A socket holds at most [`MAX_OUTSTANDING`] chunks, so one port whose
//!   frames are slow to complete cannot take the whole pool.
//! - Pools are kept per layout (chunk size, multi-buffer): `XDP_USE_SG` is
//!   a UMEM's, set by its first socket. On a multi-buffer pool a frame
//!   larger than a chunk is copied into several chunks and described by a
//!   chain of descriptors (`XDP_PKT_CONTD` on all but the last), all or
//!   nothing: room on the ring, in the socket's share and on the free list
//!   is checked for the whole chain before its first chunk is taken, so
//!   the ring never holds part of a frame. Every chunk of a chain comes
//!   back on the completion ring on its own, as single frames' do.
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::chain::{pieces, MAX_TX_PIECES};
use super::{bind_shared_umem, context, Layout, UmemUse, TX_RING};
use crate::sys::xsk::{self, Ring, RingKind, UmemArea, UmemRange, XdpDesc};

/// Chunks of one worker's transmit UMEM (for each chunk size in use).
pub const WORKER_TX_CHUNKS: u32 = 1024;
/// Most chunks one transmit socket may hold (queued, in the kernel or
/// waiting on its completion ring).
pub const MAX_OUTSTANDING: u32 = TX_RING;

/// Ids of pools, unique in the process (0 is never used).
static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

struct TxPool {
    id: u64,
    layout: Layout,
    chunk_size: u32,
    area: UmemArea,
    /// The whole area.
    range: UmemRange,
    /// Chunk start addresses owned by nobody.
    free: Vec<u64>,
    /// Per chunk: the token of the socket holding it, 0 if free.
    owner: Vec<u32>,
    /// Sockets that joined (or registered) the area; any still bound can
    /// be joined through.
    members: Vec<Weak<OwnedFd>>,
    next_token: u32,
    _use: UmemUse,
}

thread_local! {
    static POOLS: RefCell<Vec<TxPool>> = const { RefCell::new(Vec::new()) };
}

impl TxPool {
    fn new(layout: Layout) -> io::Result<TxPool> {
        let chunk_size = layout.chunk_size;
        let area = UmemArea::new(WORKER_TX_CHUNKS, chunk_size)
            .map_err(|e| context(e, "cannot map the worker's transmit UMEM"))?;
        let range = area.range(0, WORKER_TX_CHUNKS)?;
        let free = range.chunk_addrs().collect();
        Ok(TxPool {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            layout,
            chunk_size,
            _use: UmemUse::tx(&area),
            area,
            range,
            free,
            owner: vec![0; WORKER_TX_CHUNKS as usize],
            members: Vec::new(),
            next_token: 1,
        })
    }

    fn index(&self, addr: u64) -> Option<usize> {
        let i = (addr / u64::from(self.chunk_size)) as usize;
        (i < self.owner.len()).then_some(i)
    }

    /// Takes a free chunk for socket `token` and copies `data` into it.
    fn take(&mut self, token: u32, data: &[u8]) -> Option<u64> {
        let addr = *self.free.last()?;
        let i = self.index(addr)?;
        let buf = self.range.write(addr, data.len())?;
        buf.copy_from_slice(data);
        self.free.pop();
        self.owner[i] = token;
        Some(addr)
    }

    /// Copies `data` into `addrs.len()` free chunks for socket `token`,
    /// a chunk's worth each, writing their addresses into `addrs`; all or
    /// nothing (false, nothing taken, when the free list is short).
    fn take_chain(&mut self, token: u32, data: &[u8], addrs: &mut [u64]) -> bool {
        if self.free.len() < addrs.len() {
            return false;
        }
        let chunk = self.chunk_size as usize;
        for (i, piece) in data.chunks(chunk).enumerate() {
            match self.take(token, piece) {
                Some(a) => addrs[i] = a,
                None => {
                    // Not reached (room checked, pieces fit a chunk), but
                    // never leave a chain half taken.
                    for &a in &addrs[..i] {
                        self.give_back(token, a);
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Gives back the chunk holding `addr` if socket `token` owns it.
    fn give_back(&mut self, token: u32, addr: u64) -> bool {
        let chunk = self.range.chunk_of(addr);
        match self.index(chunk) {
            Some(i) if self.owner[i] == token => {
                self.owner[i] = 0;
                self.free.push(chunk);
                true
            }
            _ => false,
        }
    }

    /// Gives back every chunk socket `token` holds (it is closed).
    fn give_back_all(&mut self, token: u32) {
        for i in 0..self.owner.len() {
            if self.owner[i] == token {
                self.owner[i] = 0;
                self.free.push(i as u64 * u64::from(self.chunk_size));
            }
        }
    }
}

/// Runs `f` on this thread's pool `id`; `None` if this thread has no such
/// pool (the socket was made on another thread).
fn with_pool<R>(id: u64, f: impl FnOnce(&mut TxPool) -> R) -> Option<R> {
    POOLS
        .try_with(|pools| {
            let mut pools = pools.borrow_mut();
            pools.iter_mut().find(|p| p.id == id).map(f)
        })
        .ok()
        .flatten()
}

/// A transmit socket bound to `queue` of `ifindex` on this worker's pool
/// for its layout (see the module documentation).
pub(super) struct PoolSocket {
    // Field order matters: the socket closes before the lease gives its
    // chunks back.
    sock: Arc<OwnedFd>,
    pub(super) tx: Ring<XdpDesc>,
    comp: Ring<u64>,
    outstanding: u32,
    layout: Layout,
    lease: Lease,
}

/// The chunks a socket holds, given back when it goes.
struct Lease {
    pool: u64,
    token: u32,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let token = self.token;
        with_pool(self.pool, |p| p.give_back_all(token));
    }
}

/// Opens a transmit socket on this thread's pool (making the pool first).
pub(super) fn open(ifindex: u32, queue: u32, layout: Layout, name: &str) -> io::Result<PoolSocket> {
    let sock = xsk::xsk_socket()?;
    let fd = sock.as_fd();
    // A socket on its own (device, queue) brings its own fill and
    // completion rings; it only transmits, so the fill ring stays empty
    // (and unmapped).
    xsk::set_ring_size(fd, RingKind::Fill, 1)?;
    xsk::set_ring_size(fd, RingKind::Completion, TX_RING)?;
    xsk::set_ring_size(fd, RingKind::Tx, TX_RING)?;
    let comp: Ring<u64> = Ring::map(fd, RingKind::Completion, TX_RING)?;
    let tx: Ring<XdpDesc> = Ring::map(fd, RingKind::Tx, TX_RING)?;
    let what = || format!("cannot bind a transmit socket to {name} queue {queue}");
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let pool = match pools.iter().position(|p| p.layout == layout) {
            Some(i) => &mut pools[i],
            None => {
                pools.push(TxPool::new(layout)?);
                pools.last_mut().expect("just pushed")
            }
        };
        pool.members.retain(|m| m.strong_count() > 0);
        let members: Vec<_> = pool.members.iter().filter_map(Weak::upgrade).collect();
        bind_shared_umem(
            &sock,
            &pool.area,
            members,
            (ifindex, queue),
            what,
            "the worker's transmit UMEM",
            layout.multi_buffer,
        )?;
        let sock = Arc::new(sock);
        pool.members.push(Arc::downgrade(&sock));
        let token = pool.next_token;
        pool.next_token = pool.next_token.wrapping_add(1).max(1);
        Ok(PoolSocket {
            sock,
            tx,
            comp,
            outstanding: 0,
            layout,
            lease: Lease {
                pool: pool.id,
                token,
            },
        })
    })
}

impl PoolSocket {
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Takes back the chunks the kernel has sent.
    pub(super) fn reclaim(&mut self) {
        let PoolSocket {
            comp,
            outstanding,
            lease,
            ..
        } = self;
        let mut any = false;
        with_pool(lease.pool, |p| {
            while let Some(addr) = comp.pop() {
                any = true;
                if p.give_back(lease.token, addr) {
                    *outstanding = outstanding.saturating_sub(1);
                }
            }
        });
        if any {
            comp.release();
        }
    }

    /// Largest frame the socket takes: one chunk, or on a multi-buffer
    /// pool as many as copy mode allows in a chain.
    pub(super) fn frame_max(&self) -> usize {
        let chunk = self.layout.chunk_size as usize;
        if self.layout.multi_buffer {
            chunk * MAX_TX_PIECES
        } else {
            chunk
        }
    }

    /// Whether a frame of `len` bytes may be taken now (the socket's share
    /// of the pool and its TX ring, for all its chunks).
    pub(super) fn has_room(&mut self, len: usize) -> bool {
        let k = pieces(len, self.layout.chunk_size as usize) as u32;
        self.outstanding + k <= MAX_OUTSTANDING && self.tx.free(k) >= k
    }

    /// Copies `data` into chunks of the pool and describes them on the TX
    /// ring (not published until the next kick): one descriptor, or a
    /// chain on a multi-buffer pool, all or nothing. `WouldBlock` when the
    /// pool or the ring is out of room, `InvalidInput` for a frame larger
    /// than [`PoolSocket::frame_max`], `Other` on another thread's pool.
    pub(super) fn queue(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() || data.len() > self.frame_max() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame empty or larger than the port's UMEM chunks take",
            ));
        }
        if !self.has_room(data.len()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let chunk = self.layout.chunk_size as usize;
        let k = pieces(data.len(), chunk);
        let token = self.lease.token;
        let mut addrs = [0u64; MAX_TX_PIECES];
        let addrs = &mut addrs[..k];
        let taken = with_pool(self.lease.pool, |p| p.take_chain(token, data, addrs))
            .ok_or_else(|| io::Error::other("transmit socket used off its worker's thread"))?;
        if !taken {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.outstanding += k as u32;
        for (i, (&addr, piece)) in addrs.iter().zip(data.chunks(chunk)).enumerate() {
            let pushed = self.tx.push(XdpDesc {
                addr,
                len: piece.len() as u32,
                options: if i + 1 < k { xsk::PKT_CONTD } else { 0 },
            });
            debug_assert!(pushed, "room was checked");
        }
        Ok(())
    }

    /// Descriptors on the TX ring not yet published to the kernel.
    #[cfg(test)]
    pub(super) fn unsubmitted(&self) -> u32 {
        self.tx.unsubmitted()
    }
}

/// This thread's transmit pools: (bytes mapped, member sockets alive).
#[cfg(test)]
pub(super) fn this_thread() -> (u64, usize) {
    POOLS.with(|pools| {
        let pools = pools.borrow();
        let bytes = pools
            .iter()
            .map(|p| u64::from(p.area.chunks()) * u64::from(p.chunk_size))
            .sum();
        let members = pools
            .iter()
            .map(|p| p.members.iter().filter(|m| m.strong_count() > 0).count())
            .sum();
        (bytes, members)
    })
}

/// Free chunks in this thread's pool for `layout`.
#[cfg(test)]
pub(super) fn free_chunks(layout: Layout) -> Option<usize> {
    POOLS.with(|pools| {
        pools
            .borrow()
            .iter()
            .find(|p| p.layout == layout)
            .map(|p| p.free.len())
    })
}
