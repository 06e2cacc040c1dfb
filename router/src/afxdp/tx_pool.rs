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
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::{bind_shared_umem, context, UmemUse, TX_RING};
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
    fn new(chunk_size: u32) -> io::Result<TxPool> {
        let area = UmemArea::new(WORKER_TX_CHUNKS, chunk_size)
            .map_err(|e| context(e, "cannot map the worker's transmit UMEM"))?;
        let range = area.range(0, WORKER_TX_CHUNKS)?;
        let free = range.chunk_addrs().collect();
        Ok(TxPool {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
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
/// for `chunk_size` chunks (see the module documentation).
pub(super) struct PoolSocket {
    // Field order matters: the socket closes before the lease gives its
    // chunks back.
    sock: Arc<OwnedFd>,
    pub(super) tx: Ring<XdpDesc>,
    comp: Ring<u64>,
    outstanding: u32,
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
pub(super) fn open(
    ifindex: u32,
    queue: u32,
    chunk_size: u32,
    name: &str,
) -> io::Result<PoolSocket> {
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
        let pool = match pools.iter().position(|p| p.chunk_size == chunk_size) {
            Some(i) => &mut pools[i],
            None => {
                pools.push(TxPool::new(chunk_size)?);
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

    /// Whether one more frame may be taken now (the socket's share of the
    /// pool and its TX ring).
    pub(super) fn has_room(&mut self) -> bool {
        self.outstanding < MAX_OUTSTANDING && self.tx.free(1) > 0
    }

    /// Copies `data` into a chunk of the pool and describes it on the TX
    /// ring (not published until the next kick). `WouldBlock` when the
    /// pool or the ring is out of room, `Other` on another thread's pool.
    pub(super) fn queue(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.has_room() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let token = self.lease.token;
        let addr = with_pool(self.lease.pool, |p| p.take(token, data))
            .ok_or_else(|| io::Error::other("transmit socket used off its worker's thread"))?
            .ok_or(io::ErrorKind::WouldBlock)?;
        self.outstanding += 1;
        let pushed = self.tx.push(XdpDesc {
            addr,
            len: data.len() as u32,
            options: 0,
        });
        debug_assert!(pushed, "room was checked");
        Ok(())
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

/// Free chunks in this thread's pool for `chunk_size`.
#[cfg(test)]
pub(super) fn free_chunks(chunk_size: u32) -> Option<usize> {
    POOLS.with(|pools| {
        pools
            .borrow()
            .iter()
            .find(|p| p.chunk_size == chunk_size)
            .map(|p| p.free.len())
    })
}
