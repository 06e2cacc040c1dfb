//! Every system call of the data plane that needs `unsafe`: the TUN/TAP
//! ioctls, vectored reads and writes of `[virtio_net_hdr][frame]`, interface
//! name lookup, CPU affinity, the uplink's raw IPv4 socket (`raw`), the
//! `bpf()` calls that load and attach podrouter's XDP program (`bpf`) and
//! AF_XDP sockets with their UMEM and rings (`xsk`).
//!
//! Invariants:
//! - This is the only module of the router crate allowed to use `unsafe`
//!   (`lib.rs` denies it everywhere else); every `unsafe` block carries a
//!   `// SAFETY:` comment saying why it is sound.
//! - Functions take borrowed file descriptors ([`BorrowedFd`]), so the
//!   caller's ownership keeps the descriptor open for the whole call.
//! - Errors are the raw OS error (`io::Error::last_os_error()`, which does not
//!   allocate) so the fast path can match `ErrorKind::WouldBlock` cheaply;
//!   only the slow set-up paths add context. Interrupted calls (`EINTR`) are
//!   retried here.
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name the kernel accepts, without the trailing NUL.
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

pub mod bpf;
mod raw;
mod tunnel_tap;
pub mod xsk;
pub use raw::{
    bind_ipv4, icmp_frag_needed_socket, raw_ipv4_socket, recv_batch, send_batch,
    set_socket_buffers, wait_readable, wait_writable, MAX_BATCH,
};
pub use tunnel_tap::{
    read_with_header, tun_hwaddr, tun_set_steering_ebpf, write_parts, IFF_MULTI_QUEUE,
    TUN_F_UDP_TUNNEL_GSO, TUN_F_UDP_TUNNEL_GSO_CSUM,
};

/// Huge-page size this kernel's transparent huge pages use on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the 2 MiB-aligned part of `buf` with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`), so random reads
/// across a large table (the FIB's DIR-24-8 index) miss the TLB less.
/// Call it before the pages are first written. Only advice: returns
/// whether the kernel took it (it refuses when THP is `never`), and a
/// buffer smaller than one aligned huge page is left alone (`false`).
pub fn advise_huge_pages<T>(buf: &mut [T]) -> bool {
    let start = buf.as_mut_ptr() as usize;
    let end = start + mem::size_of_val(buf);
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end / HUGE_PAGE * HUGE_PAGE;
    if last <= first {
        return false;
    }
    // SAFETY: [first, last) lies inside `buf`, memory this process owns
    // and holds exclusively (`&mut`) for the call; MADV_HUGEPAGE changes
    // only how the kernel backs those pages, never their contents.
    let r = unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_HUGEPAGE,
        )
    };
    r == 0
}

/// Asks the CPU to start loading the cache line holding `item` (x86-64
/// `prefetcht0`; nothing elsewhere), so a batch can have many cache misses
/// in flight at once: a prefetch retires at once, where a load waits.
#[inline(always)]
pub fn prefetch<T>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults, reads nothing
    // into the program and writes nothing; `item` is a live reference.
    // (The intrinsic is an `unsafe fn` before Rust 1.87.)
    #[allow(unused_unsafe)]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((item as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

/// Path of the TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// `TUNSETIFF` flags of every TAP podrouter makes or attaches to: Ethernet
/// frames, no packet-information prefix, a `virtio_net_hdr` before each
/// frame.
pub const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// `TUNSETOFFLOAD` flags: the kernel may hand us (and accepts from us)
/// frames with partial checksums and TCP segmentation offload (IPv4, IPv6,
/// ECN), so a pod's TCP socket sends 64 KiB GSO super-segments.
pub const TAP_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// `IFF_PERSIST` as `TUNGETIFF` reports it.
pub const IFF_PERSIST: libc::c_int = libc::IFF_PERSIST;

/// `IFF_TUN_EXCL`: make `TUNSETIFF` fail with `EBUSY` if a device of that
/// name already exists instead of attaching to it.
pub const IFF_TUN_EXCL: libc::c_int = libc::IFF_TUN_EXCL;

/// Size of the virtio-net header we exchange with the kernel.
pub const VNET_HDR_SIZE: libc::c_int = 10;

/// Retries `f` while it fails with `EINTR`; maps `-1` to the OS error.
fn retry<T: Copy + PartialOrd + Default>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let r = f();
        if r >= T::default() {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Checks that `name` fits an `ifreq` (1-15 bytes, no NUL), which the
/// unsafe code below relies on. Not the naming rule: callers check names
/// with `podrouter_api::check_ifname` first, and the kernel refuses
/// anything else.
fn check_ifreq_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}: 1-{MAX_IFNAME_LEN} bytes without NUL"),
        ));
    }
    Ok(())
}

/// An all-zero `ifreq` carrying `name`.
fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    check_ifreq_name(name)?;
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of
    // integers, sockaddrs and a pointer); all-zero bytes are a valid value
    // of every member.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    // check_ifreq_name guarantees len <= IFNAMSIZ - 1, so the NUL terminator
    // left by zeroing survives.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Opens the TUN/TAP clone device, non-blocking and close-on-exec. The
/// descriptor is tied to the calling thread's network namespace: devices it
/// creates or attaches to live there.
pub fn open_tun() -> io::Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK) // std adds O_CLOEXEC
        .open(TUN_PATH)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {TUN_PATH} (tun module loaded? CAP_NET_ADMIN?): {e}"),
            )
        })?;
    Ok(f.into())
}

/// `TUNSETIFF`: creates the device `name` with `flags` or attaches `fd` to
/// the existing device (unless `flags` has [`IFF_TUN_EXCL`]). Returns the
/// device's name as the kernel reports it. Errors are the raw OS error.
pub fn tun_set_iff(fd: BorrowedFd<'_>, name: &str, flags: libc::c_int) -> io::Result<String> {
    let mut ifr = ifreq_named(name)?;
    // Flags travel in the 16-bit ifr_flags; IFF_TUN_EXCL (0x8000) is the sign
    // bit there, which is how the kernel reads it too.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a
    // valid, exclusively borrowed ifreq that outlives the call, and `fd` is
    // an open descriptor for the whole call.
    retry(|| unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    })?;
    Ok(ifreq_name(&ifr))
}

/// `TUNGETIFF`: the attached device's current name (it follows renames and
/// moves to other namespaces) and its `IFF_*` tun flags (including
/// [`IFF_PERSIST`]).
pub fn tun_get_iff(fd: BorrowedFd<'_>) -> io::Result<(String, libc::c_int)> {
    // SAFETY: all-zero bytes are a valid `ifreq` (see ifreq_named).
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    // SAFETY: TUNGETIFF writes one `struct ifreq` into the pointed-to
    // buffer, which is valid and exclusively borrowed for the call.
    retry(|| unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    })?;
    // SAFETY: TUNGETIFF stored the flags in `ifru_flags`; reading a c_short
    // out of a union of plain integers is valid for any bit pattern.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags } as u16 as libc::c_int;
    Ok((ifreq_name(&ifr), flags))
}

/// `TUNSETVNETHDRSZ`: the size of the header before each frame.
pub fn tun_set_vnet_hdr_sz(fd: BorrowedFd<'_>, size: libc::c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points to a live local for the duration of the call.
    retry(|| unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &size as *const libc::c_int,
        )
    })?;
    Ok(())
}

/// `TUNSETOFFLOAD`: which offloads (`TUN_F_*`) the device may use towards
/// us. Takes the flags by value, not through a pointer.
pub fn tun_set_offload(fd: BorrowedFd<'_>, offloads: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
    // passed to the kernel.
    retry(|| unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// `TUNSETPERSIST`: whether the device outlives the last descriptor
/// attached to it.
pub fn tun_set_persist(fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed
    // to the kernel.
    retry(|| unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETPERSIST,
            persist as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// Writes one frame after its virtio-net header (one `writev`). Returns the
/// total byte count written, header included.
#[inline]
pub fn write_vnet_frame(fd: BorrowedFd<'_>, hdr: &[u8; 10], data: &[u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        },
    ];
    // SAFETY: both iovecs describe memory borrowed for the whole call with
    // their exact lengths; writev only reads through them (the `*mut` cast is
    // what `struct iovec` requires) and `fd` stays open for the call.
    let n =
        retry(|| unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) })?;
    Ok(n as usize)
}

/// Index of interface `name` in the calling thread's network namespace;
/// `None` if there is no such interface.
pub fn if_nametoindex(name: &str) -> io::Result<Option<u32>> {
    check_ifreq_name(name)?;
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string that lives across the
    // call; if_nametoindex only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx != 0 {
        return Ok(Some(idx));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

/// Pins the calling thread to CPU `core` (for the workers).
pub fn pin_current_thread_to_core(core: usize) -> io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot pin to core {core}: beyond CPU_SETSIZE"),
        ));
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `core` < CPU_SETSIZE was checked above, so CPU_SET stays
    // inside `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pid 0 means the calling thread; the pointer and size describe
    // `set`, which lives across the call and is only read.
    let r = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot pin thread to core {core}: {e}"),
        ));
    }
    Ok(())
}

/// Lets the calling thread (and the threads it spawns from now on) run
/// on `cores` only (podrouterd's own threads, kept off the workers'
/// cores).
pub fn set_current_thread_cores(cores: &[usize]) -> io::Result<()> {
    if cores.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty set of cores",
        ));
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    for &core in cores {
        if core >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("core {core} is beyond CPU_SETSIZE"),
            ));
        }
        // SAFETY: `core` < CPU_SETSIZE was checked above, so CPU_SET stays
        // inside `set`.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    // SAFETY: pid 0 means the calling thread; the pointer and size describe
    // `set`, which lives across the call and is only read.
    let r = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How often the scheduler has taken the CPU from the calling thread while
/// it could still run (involuntary context switches, `ru_nivcsw`).
pub fn current_thread_involuntary_switches() -> io::Result<u64> {
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: RUSAGE_THREAD reports the calling thread; the kernel writes
    // one rusage into `usage`, which is exclusively borrowed.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(usage.ru_nivcsw).unwrap_or(0))
}

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER1, 56 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Lets another runnable task of this CPU's run queue go first
/// (`sched_yield`); returns at once when there is none.
pub fn yield_current_thread() {
    // SAFETY: sched_yield takes no arguments and touches no memory; it
    // cannot fail on Linux.
    unsafe {
        libc::sched_yield();
    }
}

/// Asks the scheduler for a time slice of `slice` for the calling thread,
/// which stays SCHED_OTHER at its nice value (`sched_setattr` with
/// `sched_runtime`, Linux 6.12's EEVDF custom slice; the kernel clamps it
/// to 0.1..100 ms). A thread with a shorter slice than the running one
/// preempts it when it wakes instead of waiting for the next tick.
pub fn set_current_thread_slice(slice: std::time::Duration) -> io::Result<()> {
    // SAFETY: getpriority only reads its arguments; errno tells a nice of
    // -1 from an error, and it was cleared first.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let attr = SchedAttr {
        size: mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        nice,
        runtime: slice.as_nanos().min(u128::from(u64::MAX)) as u64,
        ..SchedAttr::default()
    };
    // SAFETY: pid 0 is the calling thread; the pointer is to a live,
    // initialised sched_attr whose size field says how much the kernel may
    // read; flags 0.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the calling thread SCHED_FIFO at `priority` (1..=99). A woken
/// real-time thread preempts any SCHED_OTHER task running on its CPU at
/// once (a kernel thread at its next preemption point) instead of waiting
/// for that task's slice to end. Needs CAP_SYS_NICE (or an RLIMIT_RTPRIO).
pub fn set_current_thread_fifo(priority: u32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority.min(99) as i32,
    };
    // SAFETY: pid 0 is the calling thread (Linux applies the policy per
    // thread); the pointer is to a live, initialised sched_param.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's scheduling policy and real-time priority.
pub fn current_thread_policy() -> io::Result<(i32, i32)> {
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; both calls only write into
    // `param`, which is exclusively borrowed.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::sched_getparam(0, &mut param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((policy, param.sched_priority))
}

/// The CPUs the calling thread may run on.
pub fn current_thread_cores() -> io::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most
    // size_of::<cpu_set_t>() bytes into `set`, which is exclusively borrowed.
    let r = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: i < CPU_SETSIZE, so CPU_ISSET reads inside `set`.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_an_ifreq() {
        assert!(check_ifreq_name("eth0").is_ok());
        assert!(check_ifreq_name("123456789012345").is_ok());
        assert!(check_ifreq_name("1234567890123456").is_err());
        assert!(check_ifreq_name("").is_err());
        assert!(check_ifreq_name("a\0b").is_err());
    }

    #[test]
    fn ifreq_name_round_trips() {
        let ifr = ifreq_named("podrouter0").unwrap();
        assert_eq!(ifreq_name(&ifr), "podrouter0");
        assert_eq!(ifr.ifr_name[libc::IFNAMSIZ - 1], 0);
    }

    #[test]
    fn loopback_has_an_index_and_missing_names_do_not() {
        assert!(if_nametoindex("lo").unwrap().is_some());
        assert_eq!(if_nametoindex("prt-nonexist0").unwrap(), None);
    }

    #[test]
    fn pinning_to_an_allowed_core_works() {
        let cores = current_thread_cores().unwrap();
        assert!(!cores.is_empty());
        std::thread::spawn(move || {
            pin_current_thread_to_core(cores[0]).unwrap();
            assert_eq!(current_thread_cores().unwrap(), vec![cores[0]]);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread_to_core(1 << 20).is_err());
    }

    #[test]
    fn a_thread_becomes_real_time_when_asked() {
        std::thread::spawn(|| {
            assert_eq!(
                current_thread_policy().unwrap().0,
                libc::SCHED_OTHER,
                "a new thread starts SCHED_OTHER"
            );
            match set_current_thread_fifo(7) {
                Ok(()) => assert_eq!(current_thread_policy().unwrap(), (libc::SCHED_FIFO, 7)),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    eprintln!("skipped: SCHED_FIFO needs CAP_SYS_NICE ({e})")
                }
                Err(e) => panic!("sched_setscheduler: {e}"),
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for() {
        let slice_of_this_thread = || {
            std::fs::read_to_string("/proc/thread-self/sched")
                .ok()?
                .lines()
                .find(|l| l.starts_with("se.slice"))?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<u64>()
                .ok()
        };
        // Custom slices came with Linux 6.12; older kernels take the call
        // and keep their own slice.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = v.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let minor: u32 = v.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let honoured = (major, minor) >= (6, 12);
        std::thread::spawn(move || {
            let before = slice_of_this_thread();
            set_current_thread_slice(std::time::Duration::from_micros(200)).unwrap();
            if let Some(after) = slice_of_this_thread() {
                if honoured {
                    assert_eq!(after, 200_000, "before: {before:?}");
                }
                eprintln!("se.slice {before:?} -> {after}");
            }
        })
        .join()
        .unwrap();
    }
}
