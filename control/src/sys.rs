//! Every system call of the control plane that needs `unsafe`: entering and
//! identifying network namespaces, locking the state directory, TCP MD5
//! and non-blocking connects for BGP, the one ethtool setting the
//! afxdp backend's pod veths need, passing descriptors over a unix
//! socket (`SCM_RIGHTS`) for a takeover, and a background thread's lower
//! priority.
//!
//! Invariants: this is the only module of the control crate allowed to use
//! `unsafe` (`lib.rs` denies it elsewhere); every `unsafe` block carries a
//! `// SAFETY:` comment. Functions take borrowed descriptors, so the
//! caller's ownership keeps them open for the call, and return the raw OS
//! error (callers add context).
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What kind of file a namespace path turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    /// A network namespace (nsfs file of type `CLONE_NEWNET`).
    Net,
    /// A namespace of another type (mount, pid, user, ...).
    OtherNamespace,
    /// Not a namespace file at all (e.g. a stale file under /run/netns whose
    /// bind mount is gone).
    NotNamespace,
}

/// Tells whether `fd` refers to a network namespace.
pub fn ns_kind(fd: BorrowedFd<'_>) -> io::Result<NsKind> {
    // SAFETY: `statfs` is a plain C struct; all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { mem::zeroed() };
    // SAFETY: fstatfs writes one `struct statfs` into `st`, which is
    // exclusively borrowed for the call; `fd` is open for the call.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's integer type differs between architectures; compare as u64.
    if st.f_type as u64 != libc::NSFS_MAGIC as u64 {
        return Ok(NsKind::NotNamespace);
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the namespace
    // type (a CLONE_NEW* flag) as the ioctl's result; no memory is passed.
    let t = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if t < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if t == libc::CLONE_NEWNET {
        NsKind::Net
    } else {
        NsKind::OtherNamespace
    })
}

/// Moves the calling thread (only) into the network namespace `fd` refers
/// to. Sockets the thread creates afterwards belong to that namespace.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag word and touches no caller
    // memory; with CLONE_NEWNET it changes only the calling thread's network
    // namespace, which the callers (netns.rs) confine to a dedicated thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Longest TCP MD5 key the kernel takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const TCP_MD5_MAX_KEY: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>` (libc does not define it).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; TCP_MD5_MAX_KEY],
}

fn sockaddr_in(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Sets (or, with an empty key, removes) the RFC 2385 TCP MD5 key for
/// segments to and from `peer` on a socket: on a listener before the peer
/// connects, on a connecting socket before `connect`.
pub fn tcp_md5_set(fd: BorrowedFd<'_>, peer: std::net::Ipv4Addr, key: &[u8]) -> io::Result<()> {
    if key.len() > TCP_MD5_MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 keys are at most 80 bytes",
        ));
    }
    // SAFETY: TcpMd5Sig is plain old data (integers and byte arrays); all
    // zero bytes are a valid value.
    let mut sig: TcpMd5Sig = unsafe { mem::zeroed() };
    let sin = sockaddr_in(std::net::SocketAddrV4::new(peer, 0));
    // SAFETY: sockaddr_storage is larger than and suitably aligned for
    // sockaddr_in; we write exactly one sockaddr_in at its start.
    unsafe {
        std::ptr::write(
            &mut sig.addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in,
            sin,
        )
    };
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: setsockopt reads `size_of::<TcpMd5Sig>()` bytes from `sig`,
    // which lives for the call; `fd` is open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Has the socket acknowledge what it received at once, including an
/// acknowledgement the kernel was delaying (`TCP_QUICKACK`). Not sticky:
/// the kernel may go back to delayed ACKs, so a receiver sets it after
/// each read.
pub fn tcp_quickack(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from `on`, which lives for the
    // call; `fd` is open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &on as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a non-blocking TCP connect to `peer`, from `local` if given, with
/// an MD5 key if given (set before the SYN, as RFC 2385 needs). The
/// connect completes in the background: wait for writability, then check
/// `take_error()`.
pub fn tcp_connect_start(
    peer: std::net::SocketAddrV4,
    local: Option<std::net::Ipv4Addr>,
    md5: Option<&[u8]>,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    // SAFETY: socket takes plain integers and returns a new descriptor or -1.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(key) = md5 {
        tcp_md5_set(fd.as_fd(), *peer.ip(), key)?;
    }
    if let Some(l) = local {
        let sin = sockaddr_in(std::net::SocketAddrV4::new(l, 0));
        // SAFETY: bind reads one sockaddr_in from `sin`, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sin = sockaddr_in(peer);
    // SAFETY: connect reads one sockaddr_in from `sin`, alive for the call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(std::net::TcpStream::from(fd))
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` when taken, `Ok(false)` when
/// another open file description holds the lock. Released when every
/// descriptor of this open file is closed (or the process ends).
pub fn try_lock_exclusive(file: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock reads only the descriptor number; `file` is borrowed,
    // so the descriptor stays open for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `ETHTOOL_STXCSUM`: set transmit checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns transmit checksum offload of interface `name` (in the calling
/// thread's namespace) on or off (`ethtool -K NAME tx on|off`). Off, the
/// stack fills in every checksum before the frame leaves, which a receiver
/// that gets the bare frame (an AF_XDP socket on the veth's other end)
/// needs; TCP segmentation offload goes with it.
pub fn set_tx_checksum_offload(name: &str, on: bool) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    // SAFETY: ifreq is a plain C struct; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name (the length was
    // checked, the rest is zero) and the ethtool_value `ifru_data` points
    // to, which lives across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `kill(pid, SIGTERM)`: asks process `pid` to stop.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Most descriptors one `SCM_RIGHTS` message carries (the kernel's
/// `SCM_MAX_FD` is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 250;

/// Control buffer for [`MAX_FDS_PER_MESSAGE`] descriptors, aligned for
/// `struct cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 1024]);

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((fds * mem::size_of::<libc::c_int>()) as u32) as usize }
}

/// Sends `data` (at least one byte) with the descriptors `fds` (at most
/// [`MAX_FDS_PER_MESSAGE`]) attached, on the unix stream socket `sock`:
/// the receiver gets its own descriptors for the same open files.
/// Returns how many bytes of `data` went out (the descriptors go with
/// the first byte). `fds` are descriptor numbers the caller keeps open
/// for the call (one that is not open fails the call with `EBADF`).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[std::os::fd::RawFd],
) -> io::Result<usize> {
    if data.is_empty() || fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "one to MAX_FDS_PER_MESSAGE descriptors with at least one byte",
        ));
    }
    let mut cbuf = CmsgBuf([0; 1024]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space = cmsg_space(fds.len());
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` (<= 1024) zeroed, aligned
        // bytes, so CMSG_FIRSTHDR returns a pointer to a header inside
        // `cbuf`, and CMSG_DATA to room for `fds.len()` ints after it
        // (CMSG_SPACE counted them); `cbuf` outlives the writes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of_val(fds) as u32) as _;
            let out = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(out.add(i), *fd);
            }
        }
    }
    loop {
        // SAFETY: `msg` points to `iov` (reading `data`, alive for the
        // call) and to `cbuf`; sendmsg reads them only during the call and
        // `sock` is open for it. The descriptor numbers in the control
        // message are only read by the kernel, which checks each.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives bytes into `buf` from the unix stream socket `sock`, and the
/// descriptors that came with them into `fds` (owned, close-on-exec).
/// Returns the bytes read (0: the peer closed). An error if the kernel
/// had to drop descriptors (more than [`MAX_FDS_PER_MESSAGE`] in one
/// message).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> io::Result<usize> {
    use std::os::fd::FromRawFd;
    let mut cbuf = CmsgBuf([0; 1024]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS_PER_MESSAGE) as _;
    let n = loop {
        // SAFETY: `msg` points to `iov` (writing into `buf`, exclusively
        // borrowed) and to `cbuf` (msg_controllen <= its 1024 bytes);
        // both outlive the call, and `sock` is open for it.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: recvmsg filled `msg.msg_controllen` bytes of `cbuf` with
    // well-formed control messages; CMSG_FIRSTHDR/CMSG_NXTHDR walk only
    // inside that length. An SCM_RIGHTS message's data holds
    // (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors the kernel just
    // installed in this process, which nothing else owns: each is wrapped
    // in an OwnedFd exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..bytes / mem::size_of::<libc::c_int>() {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "descriptors were dropped: more than one message can carry",
        ));
    }
    Ok(n)
}

/// Lowers the calling thread's scheduling priority by `by` nice levels
/// (at most to 19). Linux keeps a nice value per thread, and
/// `setpriority(PRIO_PROCESS, 0)` is the calling thread's: background
/// threads (the BGP kernel-route and saved-routes writers) then yield the
/// CPU to the ones that decide and forward when both want it.
pub fn lower_thread_priority(by: i32) -> io::Result<()> {
    // SAFETY: getpriority takes integers and touches no memory of ours; it
    // fails only for an invalid `which`/`who`, and these are valid.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let target = now.saturating_add(by).min(19);
    // SAFETY: as above; lowering one's own priority needs no privilege.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    /// Only the calling thread's nice value changes.
    #[test]
    fn lowering_priority_is_per_thread() {
        let nice_of = |who: &str| -> i64 {
            let stat = std::fs::read_to_string(format!("/proc/thread-self/{who}")).unwrap();
            // Field 19 (nice), counted after the command's closing ")".
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split_whitespace().nth(16).unwrap().parse().unwrap()
        };
        let before = nice_of("stat");
        let inner = std::thread::spawn(move || {
            lower_thread_priority(3).unwrap();
            nice_of("stat")
        })
        .join()
        .unwrap();
        assert_eq!(inner, (before + 3).min(19));
        assert_eq!(nice_of("stat"), before);
    }

    #[test]
    fn namespace_files_are_recognised() {
        let net = File::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns_kind(net.as_fd()).unwrap(), NsKind::Net);
        let uts = File::open("/proc/self/ns/uts").unwrap();
        assert_eq!(ns_kind(uts.as_fd()).unwrap(), NsKind::OtherNamespace);
        let plain = File::open("/proc/self/status").unwrap();
        assert_eq!(ns_kind(plain.as_fd()).unwrap(), NsKind::NotNamespace);
    }

    /// Descriptors sent are received in order, for the same open files,
    /// across several messages, and the bytes around them arrive whole.
    #[test]
    fn descriptors_pass_over_a_unix_socket() {
        use std::io::{Read, Seek, Write};
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let dir = podrouter_testkit::TempDir::new("scm-rights");
        let files: Vec<File> = (0..300)
            .map(|i| {
                let p = dir.join(&format!("f{i}"));
                std::fs::write(&p, format!("file {i}")).unwrap();
                File::open(&p).unwrap()
            })
            .collect();
        let raw: Vec<std::os::fd::RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let sender = std::thread::scope(|s| {
            let h = s.spawn(|| {
                (&a).write_all(b"head\n").unwrap();
                for chunk in raw.chunks(MAX_FDS_PER_MESSAGE) {
                    assert_eq!(send_with_fds(a.as_fd(), b".", chunk).unwrap(), 1);
                }
            });
            let mut got = Vec::new();
            let mut bytes = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < 300 {
                let n = recv_with_fds(b.as_fd(), &mut buf, &mut got).unwrap();
                assert!(n > 0);
                bytes.extend_from_slice(&buf[..n]);
            }
            h.join().unwrap();
            (got, bytes)
        });
        let (got, bytes) = sender;
        assert_eq!(bytes, b"head\n..");
        for (i, fd) in got.into_iter().enumerate() {
            let mut f = File::from(fd);
            f.rewind().unwrap();
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            assert_eq!(text, format!("file {i}"));
        }
    }
}
