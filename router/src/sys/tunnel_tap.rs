//! System calls of the VXLAN uplink's TAP and the multi-queue TAPs that
//! the pod TAPs do not need: the UDP-tunnel offload flags, the device's
//! own MAC, vectored reads and writes with a header of any size (the
//! 24-byte `virtio_net_hdr_v1_hash_tunnel`) and a frame in several
//! pieces, and a multi-queue TAP's steering program.
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::retry;

/// `TUN_F_UDP_TUNNEL_GSO` (Linux 6.17+): the device exchanges UDP-tunnel
/// GSO frames (`VIRTIO_NET_HDR_GSO_UDP_TUNNEL_*`).
pub const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x80;
/// `TUN_F_UDP_TUNNEL_GSO_CSUM`: ... with a partial outer UDP checksum.
pub const TUN_F_UDP_TUNNEL_GSO_CSUM: libc::c_uint = 0x100;

/// `IFF_MULTI_QUEUE`: a TAP with one queue per attached descriptor.
pub const IFF_MULTI_QUEUE: libc::c_int = libc::IFF_MULTI_QUEUE;

/// `TUNSETSTEERINGEBPF`: the socket filter program `prog` (a descriptor)
/// picks the queue of every frame the kernel sends into the multi-queue
/// TAP `fd` is attached to (the device keeps its own reference; the
/// caller may close `prog`).
pub fn tun_set_steering_ebpf(fd: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let prog_fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads one int (a program descriptor)
    // through the pointer, which points to a live local for the call;
    // `fd` and `prog` are open for the whole call.
    retry(|| unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETSTEERINGEBPF,
            &prog_fd as *const libc::c_int,
        )
    })?;
    Ok(())
}

/// Most pieces [`write_parts`] takes.
pub const MAX_PARTS: usize = 4;

/// `SIOCGIFHWADDR` on a tun descriptor: the MAC of the attached device.
pub fn tun_hwaddr(fd: BorrowedFd<'_>) -> io::Result<[u8; 6]> {
    // SAFETY: all-zero bytes are a valid `ifreq` (plain integers and
    // arrays).
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    // SAFETY: the tun driver's SIOCGIFHWADDR writes one `struct ifreq`
    // into the pointed-to buffer, valid and exclusively borrowed for the
    // call; `fd` is open for the whole call.
    retry(|| unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCGIFHWADDR,
            &mut ifr as *mut libc::ifreq,
        )
    })?;
    // SAFETY: SIOCGIFHWADDR filled `ifru_hwaddr`; a sockaddr is plain
    // bytes, valid for any bit pattern.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// Reads one frame after a header of `hdr.len()` bytes (one `readv`).
/// Returns the total byte count, header included; `WouldBlock` when
/// nothing is queued.
#[inline]
pub fn read_with_header(fd: BorrowedFd<'_>, hdr: &mut [u8], buf: &mut [u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        },
    ];
    // SAFETY: both iovecs describe memory exclusively borrowed (`&mut`)
    // for the whole call with their exact lengths; readv writes at most
    // that much into them and `fd` stays open for the call.
    let n =
        retry(|| unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) })?;
    Ok(n as usize)
}

/// Writes the concatenation of `parts` (at most [`MAX_PARTS`]) as one
/// frame (one `writev`). Returns the byte count written.
#[inline]
pub fn write_parts(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; MAX_PARTS];
    let n = parts.len().min(MAX_PARTS);
    for (v, p) in iov.iter_mut().zip(&parts[..n]) {
        v.iov_base = p.as_ptr() as *mut libc::c_void;
        v.iov_len = p.len();
    }
    // SAFETY: the first `n` iovecs describe memory borrowed for the whole
    // call with their exact lengths; writev only reads through them (the
    // `*mut` cast is what `struct iovec` requires) and `fd` stays open.
    let w = retry(|| unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), n as libc::c_int) })?;
    Ok(w as usize)
}
