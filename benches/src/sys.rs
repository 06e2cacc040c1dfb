//! Every system call of the harness that needs `unsafe`: the AF_PACKET
//! traffic generator (sendmmsg with PACKET_QDISC_BYPASS), CPU pinning, the
//! clock-tick rate, signals by pid and SO_LINGER. The rest of the crate denies unsafe
//! code.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `PACKET_QDISC_BYPASS` from `<linux/if_packet.h>` (not in every libc
/// release): frames go straight to the driver's transmit function, skipping
/// the qdisc layer.
const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} out of range"),
        ));
    }
    // SAFETY: cpu_set_t is plain data for which all-zero bytes is the empty
    // set; CPU_ZERO/CPU_SET only write inside the set (cpu was checked
    // against CPU_SETSIZE above).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `set` is a valid, exclusively borrowed cpu_set_t.
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: pid 0 is the calling thread; the pointer and size describe
    // `set`, which outlives the call.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clock ticks per second of `/proc/<pid>/stat` and `/proc/stat`
/// (`USER_HZ`, 100 on every mainstream architecture).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory side effects; it returns -1 on error.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Sends `sig` to the process `pid` (only ever a process this harness
/// started). True if the signal was delivered.
pub fn kill(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) takes plain integers; a positive pid names exactly one
    // process, never a group.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// An AF_PACKET raw socket bound to one interface that sends the same frame
/// in batches with `sendmmsg`, bypassing the qdisc layer. It receives
/// nothing (protocol 0), so it adds no per-packet cost on the receive side.
pub struct PacketSender {
    fd: OwnedFd,
    /// The frame every slot of a batch sends (heap buffer: its address is
    /// stable for the iovecs below).
    frame: Box<[u8]>,
    iov: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
}

impl PacketSender {
    /// Opens the socket on interface index `ifindex` with batches of
    /// `batch` frames, each a copy of `frame`.
    pub fn open(ifindex: u32, frame: &[u8], batch: usize) -> io::Result<PacketSender> {
        let batch = batch.clamp(1, 1024);
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt_int(&fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1)?;
        // Ask for a large send buffer; failure only costs ENOBUFS retries.
        let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);

        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: the pointer and length describe `sll`, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }

        let mut frame: Box<[u8]> = frame.into();
        let base = frame.as_mut_ptr();
        let len = frame.len();
        let mut iov: Box<[libc::iovec]> = (0..batch)
            .map(|_| libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            })
            .collect();
        let iov_base = iov.as_mut_ptr();
        let msgs: Box<[libc::mmsghdr]> = (0..batch)
            .map(|i| {
                // SAFETY: mmsghdr is plain data; all-zero is "no name, no
                // control data, no flags".
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                // SAFETY: i < batch = iov.len(), so the pointer stays inside
                // the iovec array.
                m.msg_hdr.msg_iov = unsafe { iov_base.add(i) };
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Ok(PacketSender {
            fd,
            frame,
            iov,
            msgs,
        })
    }

    /// Frames per `send_batch` call.
    pub fn batch(&self) -> usize {
        self.msgs.len()
    }

    /// One `sendmmsg` of a whole batch: the number of frames the kernel
    /// took (possibly fewer than the batch), or the error of the first.
    pub fn send_batch(&mut self) -> io::Result<usize> {
        // Keep the borrow checker aware that the buffers the pointers name
        // are still owned here.
        debug_assert_eq!(self.iov.len(), self.msgs.len());
        debug_assert!(!self.frame.is_empty());
        // SAFETY: every mmsghdr points at one iovec of `self.iov`, which
        // points at `self.frame`; all three are owned by `self`, heap
        // allocated (never moved by moving `self`) and alive for the call;
        // the kernel only reads them and writes `msg_len`.
        let n = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_LINGER` with a zero timeout on a TCP socket: its close sends a RST
/// and leaves no TIME_WAIT behind (the connection-rate client reuses its
/// ports at once).
pub fn abortive_close_on_drop(sock: &impl AsRawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is a socket the caller owns for the duration of the
    // call; the pointer and length describe `l`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
