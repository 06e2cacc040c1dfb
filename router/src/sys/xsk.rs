//! AF_XDP sockets (XSK): the UMEM area, the socket calls that register and
//! bind it, and the four single-producer/single-consumer rings the kernel
//! shares with us through `mmap` (fill, completion, RX, TX).
//!
//! Invariants:
//! - A [`Ring`] is used by one thread at a time (it is `Send`, not `Sync`):
//!   the producer side publishes with a release store of the producer
//!   index after writing the entries; the consumer side reads entries only
//!   after an acquire load of the producer index and hands them back with a
//!   release store of the consumer index (the protocol of
//!   `Documentation/networking/af_xdp.rst`). Indices are masked, so no
//!   access leaves the mapped ring.
//! - A [`UmemArea`] is page-aligned anonymous memory registered with
//!   `XDP_UMEM_REG`; it is carved into disjoint [`UmemRange`]s, each owned
//!   by one socket's state or by one worker's transmit or receive pool
//!   (which lends its chunks to its sockets, keeping who holds which; a
//!   receive socket reads through a view of its pool's whole area, but
//!   only at the chunks its RX ring handed it), so no two owners touch the
//!   same chunk. A range
//!   only hands out slices of the chunks its owner received from the
//!   kernel (RX) or is about to give it (TX), bounds-checked.
//! - Nothing here allocates after set-up; the per-batch calls (`kick_tx`,
//!   `wake_rx`) are one syscall each and return the raw OS error.
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub use libc::{xdp_desc as XdpDesc, xdp_statistics as XdpStatistics};

/// `XDP_RING_NEED_WAKEUP` in a ring's flags word.
pub const RING_NEED_WAKEUP: u32 = libc::XDP_RING_NEED_WAKEUP;

/// Bind flags (`sockaddr_xdp.sxdp_flags`).
pub const BIND_COPY: u16 = libc::XDP_COPY;
pub const BIND_ZEROCOPY: u16 = libc::XDP_ZEROCOPY;
pub const BIND_NEED_WAKEUP: u16 = libc::XDP_USE_NEED_WAKEUP;
pub const BIND_SHARED_UMEM: u16 = libc::XDP_SHARED_UMEM;
/// Multi-buffer (`XDP_USE_SG`): a frame may span several chunks. Set by a
/// UMEM's first socket; the sockets joining it inherit it.
pub const BIND_SG: u16 = libc::XDP_USE_SG;

/// `XDP_PKT_CONTD` in a descriptor's `options`: the frame goes on in the
/// next descriptor (clear on a frame's last one).
pub const PKT_CONTD: u32 = libc::XDP_PKT_CONTD;

/// Anonymous, page-aligned memory mapped for the life of the value.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Mapping is a plain address range; who may touch which bytes is
// governed by the types built on it (Ring, UmemRange), not by the mapping.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself exposes no access to the bytes.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing borrows
        // the range any more (its users hold an Arc or own the Mapping).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Opens an AF_XDP socket (close-on-exec).
pub fn xsk_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; a non-negative result is a new
    // descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: BorrowedFd<'_>, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the size passed; the kernel only
    // reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (val as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, opt: libc::c_int, val: &mut T) -> io::Result<()> {
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is an exclusively borrowed T of `len` bytes; the kernel
    // writes at most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (val as *mut T).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The memory frames live in, shared with the kernel once registered.
#[derive(Clone)]
pub struct UmemArea {
    map: Arc<Mapping>,
    chunk_size: u32,
}

impl UmemArea {
    /// Maps `chunks * chunk_size` bytes (page-aligned, populated).
    /// `chunk_size` must be a power of two between 2048 and the page size.
    pub fn new(chunks: u32, chunk_size: u32) -> io::Result<UmemArea> {
        if !chunk_size.is_power_of_two() || !(2048..=4096).contains(&chunk_size) || chunks == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "UMEM chunks must be 2048 or 4096 bytes, at least one",
            ));
        }
        let len = chunks as usize * chunk_size as usize;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(UmemArea {
            map: Arc::new(Mapping {
                ptr: ptr.cast(),
                len,
            }),
            chunk_size,
        })
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn chunks(&self) -> u32 {
        (self.map.len / self.chunk_size as usize) as u32
    }

    /// Registers the area with socket `fd` (`XDP_UMEM_REG`), no headroom.
    pub fn register(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: xdp_umem_reg is a plain C struct; all-zero is valid.
        let mut reg: libc::xdp_umem_reg = unsafe { mem::zeroed() };
        reg.addr = self.map.ptr as u64;
        reg.len = self.map.len as u64;
        reg.chunk_size = self.chunk_size;
        reg.headroom = 0;
        // The kernel pins the pages; the Arc keeps them mapped as long as
        // any range (hence any socket state) lives, and sockets are closed
        // before their state drops its range.
        setsockopt(fd, libc::XDP_UMEM_REG, &reg)
    }

    /// The chunks `first..first + count` as one owner's range. The caller
    /// (the port) hands each chunk to at most one live range.
    pub fn range(&self, first: u32, count: u32) -> io::Result<UmemRange> {
        if first
            .checked_add(count)
            .is_none_or(|end| end > self.chunks())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "UMEM range beyond the area",
            ));
        }
        Ok(UmemRange {
            area: self.clone(),
            start: u64::from(first) * u64::from(self.chunk_size),
            end: u64::from(first + count) * u64::from(self.chunk_size),
        })
    }
}

/// Chunks of a [`UmemArea`] owned by one socket's state: addresses are
/// offsets into the area, as the rings carry them.
pub struct UmemRange {
    area: UmemArea,
    start: u64,
    end: u64,
}

impl UmemRange {
    /// Chunk start addresses of this range, in order.
    pub fn chunk_addrs(&self) -> impl Iterator<Item = u64> + '_ {
        (self.start..self.end).step_by(self.area.chunk_size as usize)
    }

    /// Start of the chunk holding `addr`.
    pub fn chunk_of(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.area.chunk_size) - 1)
    }

    fn check(&self, addr: u64, len: usize) -> Option<usize> {
        let chunk = self.chunk_of(addr);
        let end = addr.checked_add(len as u64)?;
        (chunk >= self.start && chunk < self.end && end <= chunk + u64::from(self.area.chunk_size))
            .then_some(addr as usize)
    }

    /// The `len` bytes at `addr` of a chunk the kernel handed us (an RX
    /// descriptor); `None` if they are not inside one chunk of this range.
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let at = self.check(addr, len)?;
        // SAFETY: [at, at+len) lies inside one chunk of this range (checked)
        // and thus inside the mapping, which the Arc keeps alive. The chunk
        // was published to us by the RX ring (acquire-loaded producer), so
        // the kernel is done writing it and will not touch it again until
        // we put it back on the fill ring, which needs `&mut self` on the
        // ring after this borrow ends.
        Some(unsafe { std::slice::from_raw_parts(self.area.map.ptr.add(at), len) })
    }

    /// The `len` bytes at `addr` of a chunk we own and are about to put on
    /// the TX ring; `None` if they are not inside one chunk of this range.
    pub fn write(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let at = self.check(addr, len)?;
        // SAFETY: inside one chunk of this range and of the live mapping
        // (checked, Arc). The chunk is on our free list (not on any ring),
        // so the kernel does not access it, and `&mut self` makes this the
        // only borrow of the range.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.map.ptr.add(at), len) })
    }
}

/// Which of a socket's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    Rx,
    Tx,
    Fill,
    Completion,
}

impl RingKind {
    fn sockopt(self) -> libc::c_int {
        match self {
            RingKind::Rx => libc::XDP_RX_RING,
            RingKind::Tx => libc::XDP_TX_RING,
            RingKind::Fill => libc::XDP_UMEM_FILL_RING,
            RingKind::Completion => libc::XDP_UMEM_COMPLETION_RING,
        }
    }

    fn pgoff(self) -> libc::off_t {
        match self {
            RingKind::Rx => libc::XDP_PGOFF_RX_RING,
            RingKind::Tx => libc::XDP_PGOFF_TX_RING,
            RingKind::Fill => libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t,
            RingKind::Completion => libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
        }
    }
}

/// Sets the number of entries (a power of two) of one of `fd`'s rings.
pub fn set_ring_size(fd: BorrowedFd<'_>, kind: RingKind, entries: u32) -> io::Result<()> {
    setsockopt(fd, kind.sockopt(), &entries)
}

/// Binds `fd` to queue `queue` of interface `ifindex`. With
/// `shared_umem`, the socket uses the UMEM registered on that socket.
pub fn bind(
    fd: BorrowedFd<'_>,
    ifindex: u32,
    queue: u32,
    flags: u16,
    shared_umem: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    // SAFETY: sockaddr_xdp is a plain C struct; all-zero is valid.
    let mut sa: libc::sockaddr_xdp = unsafe { mem::zeroed() };
    sa.sxdp_family = libc::AF_XDP as u16;
    sa.sxdp_ifindex = ifindex;
    sa.sxdp_queue_id = queue;
    sa.sxdp_flags = flags;
    if let Some(s) = shared_umem {
        sa.sxdp_flags |= BIND_SHARED_UMEM;
        sa.sxdp_shared_umem_fd = s.as_raw_fd() as u32;
    }
    // SAFETY: `sa` is a live sockaddr_xdp of the size passed; bind only
    // reads it.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_xdp).cast(),
            mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the bound socket got zero-copy (`XDP_OPTIONS`).
pub fn is_zerocopy(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut o = libc::xdp_options { flags: 0 };
    getsockopt(fd, libc::XDP_OPTIONS, &mut o)?;
    Ok(o.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
}

/// The kernel's drop counters for the socket (`XDP_STATISTICS`).
pub fn statistics(fd: BorrowedFd<'_>) -> io::Result<XdpStatistics> {
    // SAFETY: xdp_statistics is plain u64 counters; all-zero is valid.
    let mut s: XdpStatistics = unsafe { mem::zeroed() };
    getsockopt(fd, libc::XDP_STATISTICS, &mut s)?;
    Ok(s)
}

/// Asks the kernel to process the TX ring (`sendto` with no data). In copy
/// mode one call sends a bounded number of frames and fails with `EAGAIN`
/// when more are left.
pub fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: no buffer and no address are passed.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tells the kernel the fill ring has entries again (`recvfrom` with no
/// buffer), for when it asked for a wakeup.
pub fn wake_rx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: no buffer and no address are passed.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Entries a ring can hold: UMEM addresses (fill, completion) or frame
/// descriptors (RX, TX).
pub trait RingEntry: Copy + sealed::Sealed {}
impl RingEntry for u64 {}
impl RingEntry for XdpDesc {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for u64 {}
    impl Sealed for super::XdpDesc {}
}

/// One mapped ring of a socket. Producer rings (fill, TX) are written with
/// [`Ring::push`] and published with [`Ring::submit`]; consumer rings (RX,
/// completion) are read with [`Ring::pop`] and released with
/// [`Ring::release`].
pub struct Ring<T: RingEntry> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    mask: u32,
    size: u32,
    /// Our view of the producer index (ahead of the shared one on a
    /// producer ring until `submit`).
    prod: u32,
    /// Our view of the consumer index (ahead of the shared one on a
    /// consumer ring until `release`).
    cons: u32,
}

// SAFETY: the ring's memory is a mapping owned by the value; the raw
// pointers point into it. Moving the ring to another thread moves that
// ownership; the kernel side synchronises through the atomics.
unsafe impl<T: RingEntry> Send for Ring<T> {}

impl<T: RingEntry> Ring<T> {
    /// Maps ring `kind` of socket `fd`, whose size was set to `size`
    /// entries with [`set_ring_size`].
    pub fn map(fd: BorrowedFd<'_>, kind: RingKind, size: u32) -> io::Result<Ring<T>> {
        if !size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring size must be a power of two",
            ));
        }
        // SAFETY: xdp_mmap_offsets is plain u64 offsets; all-zero is valid.
        let mut off: libc::xdp_mmap_offsets = unsafe { mem::zeroed() };
        getsockopt(fd, libc::XDP_MMAP_OFFSETS, &mut off)?;
        let o = match kind {
            RingKind::Rx => off.rx,
            RingKind::Tx => off.tx,
            RingKind::Fill => off.fr,
            RingKind::Completion => off.cr,
        };
        let len = o.desc as usize + size as usize * mem::size_of::<T>();
        // SAFETY: maps the socket's ring at the page offset the kernel
        // defines for it; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                kind.pgoff(),
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        let map = Mapping { ptr: base, len };
        // SAFETY: the offsets come from the kernel for this ring and lie
        // inside the `len` bytes mapped (desc + size entries is the end);
        // producer, consumer and flags are u32 words the kernel aligns.
        let (producer, consumer, flags, entries) = unsafe {
            (
                base.add(o.producer as usize).cast::<AtomicU32>(),
                base.add(o.consumer as usize).cast::<AtomicU32>(),
                base.add(o.flags as usize).cast::<AtomicU32>(),
                base.add(o.desc as usize).cast::<T>(),
            )
        };
        let mut ring = Ring {
            _map: map,
            producer,
            consumer,
            flags,
            entries,
            mask: size - 1,
            size,
            prod: 0,
            cons: 0,
        };
        ring.prod = ring.shared_producer().load(Ordering::Acquire);
        ring.cons = ring.shared_consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    fn shared_producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping (see `map`), aligned u32.
        unsafe { &*self.producer }
    }

    fn shared_consumer(&self) -> &AtomicU32 {
        // SAFETY: as for the producer.
        unsafe { &*self.consumer }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether the kernel asked for a wakeup (`XDP_RING_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: points into our live mapping, aligned u32.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & RING_NEED_WAKEUP != 0
    }

    // --- producer side (fill, TX) ---

    /// Free entries on a producer ring (refreshes the consumer index when
    /// fewer than `want` look free).
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.prod.wrapping_sub(self.cons);
        if free >= want {
            return free;
        }
        self.cons = self.shared_consumer().load(Ordering::Acquire);
        self.size - self.prod.wrapping_sub(self.cons)
    }

    /// Writes one entry (not visible to the kernel until [`Ring::submit`]);
    /// false if the ring is full.
    pub fn push(&mut self, v: T) -> bool {
        if self.free(1) == 0 {
            return false;
        }
        let i = (self.prod & self.mask) as usize;
        // SAFETY: i <= mask < size, inside the mapped entry array; the entry
        // is free (between the consumer and producer indices the kernel
        // owns nothing of it).
        unsafe { self.entries.add(i).write(v) };
        self.prod = self.prod.wrapping_add(1);
        true
    }

    /// Entries pushed and not yet submitted.
    pub fn unsubmitted(&self) -> u32 {
        self.prod
            .wrapping_sub(self.shared_producer().load(Ordering::Relaxed))
    }

    /// Publishes the pushed entries to the kernel.
    pub fn submit(&mut self) {
        self.shared_producer().store(self.prod, Ordering::Release);
    }

    // --- consumer side (RX, completion) ---

    /// Takes the next entry the kernel produced, if any (not handed back
    /// until [`Ring::release`]).
    pub fn pop(&mut self) -> Option<T> {
        if self.cons == self.prod {
            self.prod = self.shared_producer().load(Ordering::Acquire);
            if self.cons == self.prod {
                return None;
            }
        }
        let i = (self.cons & self.mask) as usize;
        // SAFETY: i <= mask < size, inside the mapped entry array; the
        // entry is between the consumer index and the acquire-loaded
        // producer index, so the kernel finished writing it.
        let v = unsafe { self.entries.add(i).read() };
        self.cons = self.cons.wrapping_add(1);
        Some(v)
    }

    /// Hands the popped entries back to the kernel.
    pub fn release(&mut self) {
        self.shared_consumer().store(self.cons, Ordering::Release);
    }
}
