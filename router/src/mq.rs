//! Multi-queue TAPs: one descriptor (queue) per worker, so what the kernel
//! sends into one device (the VXLAN uplink's TAP, the host port) is read
//! by every worker, each flow by one.
//!
//! How: the device is made (or attached to) with `IFF_MULTI_QUEUE`; each
//! further `TUNSETIFF` with the same name and flags attaches one more
//! queue ([`attach_extra_queues`]). Before the second queue is attached,
//! [`crate::bpf::flow_steering_program`] is loaded and set as the device's
//! steering program (`TUNSETSTEERINGEBPF`): the kernel then picks each
//! frame's queue from its IPv4 addresses and TCP/UDP ports (a VXLAN
//! packet's outer source port carries its inner flow), so a flow stays on
//! one queue, one worker, in order. Without a program the tun driver
//! follows its own flow table, which moves a flow to the queue that last
//! *wrote* a packet of it: a pod's replies would pull every flow of that
//! pod onto the pod's worker, and a flow could change queue mid-stream.
//!
//! Each extra queue becomes a [`RxQueue`] port the daemon hands to
//! another worker ([`crate::port::Port::rx_queues`]); frames to the device
//! still go through the first descriptor (any descriptor may write; the
//! program does not depend on which).
//!
//! Invariants: every queue gets the device's header size and offloads; a
//! device has more than one queue only with the steering program set; if
//! the program cannot be loaded or set, no queue is added (one queue: no
//! spreading, still no reordering) and the reason is logged.
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::port::RxQueue;
use crate::sys;

/// Most queues a TAP can have (the tun driver's `MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// Attaches `total - 1` more queues to the multi-queue TAP `name` that
/// `first` is attached to (made with `flags`, which must include
/// [`sys::IFF_MULTI_QUEUE`]), each set up by `configure` (header size,
/// offloads) and read by `read`, after setting the steering program.
/// Returns the extra queues as ports; none when `total` is 1, or when
/// something failed (logged: the device keeps its one queue).
pub fn attach_extra_queues(
    first: BorrowedFd<'_>,
    name: &str,
    flags: libc::c_int,
    total: usize,
    configure: impl Fn(BorrowedFd<'_>) -> io::Result<()>,
    read: fn(BorrowedFd<'_>, &mut [crate::frame::Frame]) -> io::Result<usize>,
) -> Vec<RxQueue> {
    let total = total.min(MAX_QUEUES);
    if total <= 1 {
        return Vec::new();
    }
    if let Err(e) = steer(first) {
        log::warn!(
            "{name}: cannot set the flow steering program ({e}); one receive queue, read by one \
             worker"
        );
        return Vec::new();
    }
    let mut fds = Vec::with_capacity(total - 1);
    for _ in 1..total {
        match attach_one(name, flags, &configure) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                log::warn!(
                    "{name}: cannot attach receive queue {} of {total} ({e}); {} queue(s)",
                    fds.len() + 1,
                    fds.len() + 1
                );
                break;
            }
        }
    }
    fds.into_iter().map(|fd| RxQueue::new(fd, read)).collect()
}

fn attach_one(
    name: &str,
    flags: libc::c_int,
    configure: &impl Fn(BorrowedFd<'_>) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    let fd = sys::open_tun()?;
    sys::tun_set_iff(fd.as_fd(), name, flags & !sys::IFF_TUN_EXCL)?;
    configure(fd.as_fd())?;
    Ok(fd)
}

/// Loads the steering program and sets it on the device `fd` is attached
/// to (the device keeps it; our descriptor of the program closes here).
pub fn steer(fd: BorrowedFd<'_>) -> io::Result<()> {
    let prog = sys::bpf::socket_filter_load(
        crate::bpf::STEERING_PROG_NAME,
        &crate::bpf::flow_steering_program(),
        crate::bpf::LICENSE,
    )?;
    sys::tun_set_steering_ebpf(fd, prog.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use podrouter_testkit::{in_private_netns, privileged};
    use std::process::Command;

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn read_plain(fd: BorrowedFd<'_>, frames: &mut [Frame]) -> io::Result<usize> {
        let mut n = 0;
        while n < frames.len() {
            let mut hdr = [0u8; crate::frame::VNET_HDR_LEN];
            match sys::read_with_header(fd, &mut hdr, frames[n].rx_buffer()) {
                Ok(len) if len > hdr.len() => {
                    frames[n].set_len(len - hdr.len());
                    n += 1;
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// The kernel verifies the program and, with it, sends UDP flows the
    /// node routes into a two-queue TAP to both queues, every datagram of
    /// one flow to the same queue.
    #[test]
    fn udp_flows_spread_over_the_queues_and_each_stays_on_one() {
        if !privileged("udp_flows_spread_over_the_queues_and_each_stays_on_one") {
            return;
        }
        in_private_netns(|| {
            use crate::port::Port;
            let flags = sys::TAP_FLAGS | sys::IFF_MULTI_QUEUE;
            let first = sys::open_tun().unwrap();
            sys::tun_set_iff(first.as_fd(), "prmq0", flags | sys::IFF_TUN_EXCL).unwrap();
            let configure = |fd: BorrowedFd<'_>| sys::tun_set_vnet_hdr_sz(fd, sys::VNET_HDR_SIZE);
            configure(first.as_fd()).unwrap();
            let extra =
                attach_extra_queues(first.as_fd(), "prmq0", flags, 2, configure, read_plain);
            assert_eq!(extra.len(), 1, "second queue");
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", "10.77.0.1/24", "dev", "prmq0"]);
            ip(&["link", "set", "prmq0", "up"]);
            // A neighbour entry, so the kernel sends the datagrams (no ARP).
            ip(&[
                "neigh",
                "add",
                "10.77.0.2",
                "lladdr",
                "02:00:00:00:00:02",
                "dev",
                "prmq0",
            ]);
            let queues: [&dyn Port; 2] = [&RxQueue::new(first, read_plain), &extra[0]];
            let mut frames: Vec<Frame> = (0..64).map(|_| Frame::new()).collect();
            // Flows to 16 destination ports, then flows from 16 even
            // source ports (what connect() picks) to one port.
            let flows: Vec<(u16, u16)> = (0..16u16)
                .map(|i| (0, 40000 + i))
                .chain((0..16u16).map(|i| (41000 + 2 * i, 40100)))
                .collect();
            let mut seen = [[0usize; 2]; 2];
            for (k, &(sport, dport)) in flows.iter().enumerate() {
                let sock = std::net::UdpSocket::bind(("10.77.0.1", sport)).unwrap();
                let sport = sock.local_addr().unwrap().port();
                for _ in 0..4 {
                    sock.send_to(&[0u8; 32], ("10.77.0.2", dport)).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                let got: Vec<usize> = queues
                    .iter()
                    .map(|q| {
                        let n = q.recv(&mut frames).unwrap();
                        // IPv4 UDP of this flow only (not IPv6 or ARP chatter).
                        frames[..n]
                            .iter()
                            .filter(|f| {
                                let d = f.data();
                                d.len() >= 38
                                    && d[12..14] == [8, 0]
                                    && d[23] == 17
                                    && d[34..36] == sport.to_be_bytes()
                                    && d[36..38] == dport.to_be_bytes()
                            })
                            .count()
                    })
                    .collect();
                assert!(
                    got == [4, 0] || got == [0, 4],
                    "flow {sport} -> {dport} split over the queues: {got:?}"
                );
                seen[k / 16][usize::from(got[1] == 4)] += 1;
            }
            for (what, s) in ["by destination port", "by even source port"]
                .iter()
                .zip(seen)
            {
                assert!(
                    s[0] > 0 && s[1] > 0,
                    "16 flows {what} all on one queue: {s:?}"
                );
            }
        });
    }
}
