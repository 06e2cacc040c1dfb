//! Raw IPv4 sockets for the IPIP uplink: one `socket(AF_INET, SOCK_RAW,
//! proto)` with `IP_HDRINCL`, batched receive (`recvmmsg`) and send
//! (`sendmmsg`), and a bounded wait for writability; and the receive-only
//! ICMP socket, filtered in the kernel to "fragmentation needed", through
//! which the path MTU towards other nodes is learned (`crate::pmtu`).
//!
//! Invariants: descriptors are non-blocking and close-on-exec; batch
//! functions build their `mmsghdr`/`iovec`/`sockaddr_in` arrays on the
//! stack (at most [`MAX_BATCH`] entries per call), never allocate, and
//! return the raw OS error so callers can match `WouldBlock` cheaply.
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::retry;

/// Most messages one [`recv_batch`] or [`send_batch`] call moves.
pub const MAX_BATCH: usize = 64;

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is a plain C struct; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from(addr).to_be();
    sa
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is one int living on the stack for the whole
    // call, and its exact size is passed; `fd` is open for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a non-blocking raw IPv4 socket for IP protocol `protocol` with
/// `IP_HDRINCL` (sent packets carry their own IPv4 header; received ones
/// always do). Needs `CAP_NET_RAW` in the calling thread's namespace, which
/// the socket stays bound to.
pub fn raw_ipv4_socket(protocol: u8) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers and returns a new descriptor
    // or -1; no memory is shared with the kernel.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot open a raw IPv4 socket for protocol {protocol} (CAP_NET_RAW?): {e}"),
        ));
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd.as_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL, 1)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot set IP_HDRINCL: {e}")))?;
    Ok(fd)
}

/// Binds a raw socket to a local address: it then receives only packets
/// addressed to `addr`.
pub fn bind_ipv4(fd: BorrowedFd<'_>, addr: Ipv4Addr) -> io::Result<()> {
    let sa = sockaddr_in(addr);
    // SAFETY: `sa` is a valid sockaddr_in on the stack for the whole call
    // and its exact size is passed; bind only reads it.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot bind the raw socket to {addr}: {e}"),
        ));
    }
    Ok(())
}

/// Sets the socket's receive and send buffers to `bytes` each, past
/// `rmem_max`/`wmem_max` when privileged (`SO_*BUFFORCE`), else as far as
/// the limits allow. Best effort: errors are ignored.
pub fn set_socket_buffers(fd: BorrowedFd<'_>, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, v).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, v);
        }
    }
}

/// Receives up to [`MAX_BATCH`] datagrams in one `recvmmsg`, each into the
/// next buffer `bufs` yields, and stores their lengths in `lens`. Returns
/// how many were received; `WouldBlock` when none is waiting. A datagram
/// longer than its buffer is truncated (its length is then the buffer's).
pub fn recv_batch<'a>(
    fd: BorrowedFd<'_>,
    bufs: impl Iterator<Item = &'a mut [u8]>,
    lens: &mut [usize],
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid iovec and mmsghdr (null pointers, zero
    // lengths).
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    let mut n = 0;
    for buf in bufs.take(MAX_BATCH.min(lens.len())) {
        iov[n] = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: each of the first `n` mmsghdrs points at one iovec of `iov`,
    // which describes a distinct buffer exclusively borrowed (`&'a mut`)
    // for longer than this call, with its exact length; the kernel writes
    // at most that much into each and fills `msg_len`. No names or control
    // buffers are passed (null, zero length). `msgs` and `iov` outlive the
    // call; MSG_DONTWAIT makes it non-blocking; the timeout is null.
    let got = retry(|| unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    })? as usize;
    for (len, m) in lens.iter_mut().zip(msgs.iter()).take(got) {
        *len = m.msg_len as usize;
    }
    Ok(got)
}

/// Sends up to [`MAX_BATCH`] IPv4 packets (each with its own header, for
/// an `IP_HDRINCL` socket) in one `sendmmsg`; each goes to the address
/// paired with it, which the kernel routes on. Returns how many the kernel
/// took, in order; the first one refused, if any, fails the *next* call
/// with its error (`sendmmsg` semantics), or this one if it was first.
pub fn send_batch<'a>(
    fd: BorrowedFd<'_>,
    pkts: impl Iterator<Item = (&'a [u8], Ipv4Addr)>,
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid iovec, mmsghdr and sockaddr_in.
    let mut iov: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_in; MAX_BATCH] = unsafe { mem::zeroed() };
    let mut n = 0;
    for (pkt, dst) in pkts.take(MAX_BATCH) {
        iov[n] = libc::iovec {
            iov_base: pkt.as_ptr() as *mut libc::c_void,
            iov_len: pkt.len(),
        };
        names[n] = sockaddr_in(dst);
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    for ((m, v), name) in msgs
        .iter_mut()
        .zip(iov.iter_mut())
        .zip(names.iter_mut())
        .take(n)
    {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
        m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }
    // SAFETY: each of the first `n` mmsghdrs points at one iovec describing
    // a packet borrowed for longer than this call (sendmmsg only reads it;
    // the `*mut` cast is what iovec requires) and at one sockaddr_in of
    // `names`; all three arrays outlive the call. MSG_DONTWAIT makes it
    // non-blocking.
    let sent = retry(|| unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    })?;
    Ok(sent as usize)
}

/// Waits up to `timeout_ms` for `fd` to become writable; true if it did.
pub fn wait_writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, exclusively borrowed for the call.
    let r = retry(|| unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(r > 0 && p.revents & libc::POLLOUT != 0)
}

/// Waits up to `timeout_ms` for `fd` to become readable; true if it did.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, exclusively borrowed for the call.
    let r = retry(|| unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(r > 0 && p.revents & libc::POLLIN != 0)
}

/// A classic BPF program for a raw ICMP socket (data starts at the IPv4
/// header) that keeps only "destination unreachable, fragmentation
/// needed" (type 3, code 4) and drops everything else in the kernel.
const FRAG_NEEDED_FILTER: [libc::sock_filter; 7] = [
    // x = 4 * (ip[0] & 0xf): the IPv4 header length.
    bpf_insn(0xb1, 0, 0, 0),
    // a = ip[x + 0]: the ICMP type.
    bpf_insn(0x50, 0, 0, 0),
    // type 3? else drop.
    bpf_insn(0x15, 0, 3, 3),
    // a = ip[x + 1]: the ICMP code.
    bpf_insn(0x50, 0, 0, 1),
    // code 4? else drop.
    bpf_insn(0x15, 0, 1, 4),
    bpf_insn(0x06, 0, 0, 0xffff),
    bpf_insn(0x06, 0, 0, 0),
];

const fn bpf_insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Opens a non-blocking raw ICMP socket that receives only ICMP
/// "fragmentation needed" messages addressed to this namespace (a filter
/// in the kernel drops every other ICMP message before it is queued).
/// Receive only; needs `CAP_NET_RAW`.
pub fn icmp_frag_needed_socket() -> io::Result<OwnedFd> {
    let fd = raw_ipv4_socket(libc::IPPROTO_ICMP as u8)?;
    let prog = libc::sock_fprog {
        len: FRAG_NEEDED_FILTER.len() as u16,
        filter: FRAG_NEEDED_FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` and the filter array it points to (a constant) live
    // for the whole call; the kernel copies the program and never writes
    // through the pointer. The exact size of `prog` is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot attach the frag-needed filter: {e}"),
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two IPIP packets to 127.0.0.1 through loopback come back in one
    /// batch, headers included, in a private namespace.
    #[test]
    fn raw_ipip_round_trip_on_loopback() {
        if !podrouter_testkit::Needs::new("raw_ipip_round_trip_on_loopback")
            .root()
            .commands(&["ip"])
            .met()
        {
            return;
        }
        podrouter_testkit::in_private_netns(|| {
            let lo = Ipv4Addr::LOCALHOST;
            let fd = raw_ipv4_socket(4).unwrap();
            bind_ipv4(fd.as_fd(), lo).unwrap();
            set_socket_buffers(fd.as_fd(), 1 << 20);
            let mut a = [0u8; 48];
            a[0] = 0x45;
            a[2..4].copy_from_slice(&48u16.to_be_bytes());
            a[8] = 64;
            a[9] = 4;
            a[12..16].copy_from_slice(&lo.octets());
            a[16..20].copy_from_slice(&lo.octets());
            a[20] = 0x45;
            let mut b = a;
            b[47] = 0xab;
            let sent = send_batch(fd.as_fd(), [(&a[..], lo), (&b[..], lo)].into_iter()).unwrap();
            assert_eq!(sent, 2);
            let mut bufs = [[0u8; 128]; 3];
            let mut lens = [0usize; 3];
            let mut got = 0;
            for _ in 0..100 {
                match recv_batch(fd.as_fd(), bufs.iter_mut().map(|b| &mut b[..]), &mut lens) {
                    Ok(n) => {
                        got = n;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got, 2);
            assert_eq!(lens[..2], [48, 48]);
            assert_eq!(bufs[0][9], 4);
            assert_eq!(bufs[1][47], 0xab);
            let e =
                recv_batch(fd.as_fd(), bufs.iter_mut().map(|b| &mut b[..]), &mut lens).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            assert!(wait_writable(fd.as_fd(), 0).unwrap());
        });
    }
}
