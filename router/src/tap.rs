//! TAP ports: a pod's (or the host's) Ethernet interface whose other end is
//! a file descriptor in podrouterd.
//!
//! A [`TapPort`] owns one descriptor on `/dev/net/tun` attached to one TAP
//! device. Every TAP it makes or attaches to has `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, a 10-byte `virtio_net_hdr` and the offloads `TUN_F_CSUM |
//! TSO4 | TSO6 | TSO_ECN`, so frames in both directions may be up to 64 KiB
//! GSO super-segments with partial checksums; the header travels in
//! [`Frame::vnet`].
//!
//! Invariants:
//! - The descriptor is non-blocking; [`Port::recv`] stops at `EAGAIN` and
//!   [`TapPort::send`] (what [`Port::push`] does: a TAP has no batched
//!   write, so its transmit queue holds nothing) returns `EAGAIN`
//!   (`WouldBlock`) to the worker, which counts it. Neither allocates,
//!   locks or logs.
//! - The device is bound to the network namespace the TAP was created in
//!   until it is moved; the descriptor keeps working after the device moves
//!   to another namespace or is renamed ([`TapPort::name`] follows).
//! - Devices made by [`TapPort::create`] are persistent: they survive a
//!   podrouterd restart and are re-opened with [`TapPort::attach`]. Dropping
//!   a port closes the descriptor only; to remove the device, call
//!   `set_persist(false)` before dropping it (or delete it over netlink).
//! - A single-queue TAP accepts one descriptor at a time: `attach` fails
//!   with `EBUSY` while another process (or port) holds it.
//! - A multi-queue TAP ([`TapPort::create_multi_queue`], the host port)
//!   has one descriptor per worker: the port's own, which every worker
//!   writes to, and [`Port::rx_queues`], each read by another worker, the
//!   kernel steering each flow to one of them ([`crate::mq`]).
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use std::sync::Arc;

use crate::frame::{Frame, VnetHdr, VNET_HDR_LEN};
use crate::port::{Port, RxQueue, TxQueue};
use crate::sys;

/// One TAP device, seen through its `/dev/net/tun` descriptor.
#[derive(Debug)]
pub struct TapPort {
    fd: OwnedFd,
    /// A multi-queue TAP's other queues ([`Port::rx_queues`]).
    queues: Vec<Arc<RxQueue>>,
}

fn with_context(e: io::Error, what: impl FnOnce() -> String) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", what()))
}

impl TapPort {
    /// Creates a new persistent TAP `name` in the calling thread's network
    /// namespace, with podrouter's flags and offloads. Fails with
    /// `AlreadyExists` if any device of that name exists there.
    pub fn create(name: &str) -> io::Result<TapPort> {
        TapPort::create_with(name, sys::TAP_FLAGS)
    }

    /// [`TapPort::create`], multi-queue: `queues` descriptors (one per
    /// worker), flows steered over them ([`crate::mq`]).
    pub fn create_multi_queue(name: &str, queues: usize) -> io::Result<TapPort> {
        let flags = sys::TAP_FLAGS | sys::IFF_MULTI_QUEUE;
        let mut port = TapPort::create_with(name, flags)?;
        port.add_queues(name, flags, queues);
        Ok(port)
    }

    /// [`TapPort::attach`] to a multi-queue TAP, with `queues` descriptors.
    /// `InvalidInput` if it is a single-queue TAP.
    pub fn attach_multi_queue(name: &str, queues: usize) -> io::Result<TapPort> {
        let flags = sys::TAP_FLAGS | sys::IFF_MULTI_QUEUE;
        let mut port = TapPort::attach_with(name, flags)?;
        port.add_queues(name, flags, queues);
        Ok(port)
    }

    fn add_queues(&mut self, name: &str, flags: libc::c_int, queues: usize) {
        self.queues = crate::mq::attach_extra_queues(
            self.fd.as_fd(),
            name,
            flags,
            queues,
            configure,
            read_frames,
        )
        .into_iter()
        .map(Arc::new)
        .collect();
    }

    fn create_with(name: &str, flags: libc::c_int) -> io::Result<TapPort> {
        let fd = sys::open_tun()?;
        sys::tun_set_iff(fd.as_fd(), name, flags | sys::IFF_TUN_EXCL).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "cannot create TAP {name}: a network device of that name already exists"
                    ),
                )
            } else {
                with_context(e, || format!("cannot create TAP {name} (TUNSETIFF)"))
            }
        })?;
        let port = TapPort {
            fd,
            queues: Vec::new(),
        };
        // Until TUNSETPERSIST the device dies with `fd`, so an early return
        // below leaves nothing behind.
        port.configure()
            .map_err(|e| with_context(e, || format!("cannot configure new TAP {name}")))?;
        port.set_persist(true)?;
        Ok(port)
    }

    /// Re-opens the existing persistent TAP `name` in the calling thread's
    /// network namespace (after a podrouterd restart) and re-applies the
    /// header size and offloads. `NotFound` if there is no such device;
    /// an error if it is not a TAP with our flags or is held by another
    /// descriptor.
    pub fn attach(name: &str) -> io::Result<TapPort> {
        TapPort::attach_with(name, sys::TAP_FLAGS)
    }

    fn attach_with(name: &str, flags: libc::c_int) -> io::Result<TapPort> {
        let kind = if flags & sys::IFF_MULTI_QUEUE != 0 {
            "multi-queue"
        } else {
            "single-queue"
        };
        // TUNSETIFF without IFF_TUN_EXCL would create a missing device, so
        // check first (a device appearing between the check and the ioctl
        // would be created non-persistent and vanish with the descriptor).
        if sys::if_nametoindex(name)?.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot attach to TAP {name}: no such interface"),
            ));
        }
        let fd = sys::open_tun()?;
        sys::tun_set_iff(fd.as_fd(), name, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("cannot attach to TAP {name}: another descriptor holds it"),
            ),
            Some(libc::EINVAL) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot attach to {name}: not a {kind} TAP device ({e})"),
            ),
            _ => with_context(e, || format!("cannot attach to TAP {name} (TUNSETIFF)")),
        })?;
        let port = TapPort {
            fd,
            queues: Vec::new(),
        };
        port.configure()
            .map_err(|e| with_context(e, || format!("cannot configure TAP {name}")))?;
        Ok(port)
    }

    /// Takes over a descriptor another podrouterd had open on a TAP (passed
    /// over a unix socket, see podrouterd's `--takeover`): the same open
    /// file, so its header size, offloads, non-blocking mode and the frames
    /// queued on it are kept. Fails unless it is attached to a TAP with
    /// podrouter's flags named `expected` (the name it has now).
    pub fn adopt(fd: OwnedFd, expected: &str) -> io::Result<TapPort> {
        let (name, flags) = sys::tun_get_iff(fd.as_fd())
            .map_err(|e| with_context(e, || format!("handed-over descriptor for {expected}")))?;
        if flags & sys::TAP_FLAGS != sys::TAP_FLAGS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "handed-over descriptor for {expected} is not a TAP with podrouter's flags"
                ),
            ));
        }
        if name != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("handed-over descriptor for {expected} is attached to {name}"),
            ));
        }
        // One descriptor: a takeover hands over single-queue TAPs only.
        Ok(TapPort {
            fd,
            queues: Vec::new(),
        })
    }

    fn configure(&self) -> io::Result<()> {
        configure(self.fd.as_fd())
    }

    /// Makes the device outlive this descriptor (`true`) or die with the
    /// last descriptor attached to it (`false`).
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        sys::tun_set_persist(self.fd.as_fd(), persist)
            .map_err(|e| with_context(e, || format!("cannot set persist={persist} on TAP")))
    }

    /// Whether the device is persistent.
    pub fn is_persistent(&self) -> io::Result<bool> {
        Ok(sys::tun_get_iff(self.fd.as_fd())?.1 & sys::IFF_PERSIST != 0)
    }

    /// The device's current name, as the kernel reports it: it follows
    /// renames, including the one done when a pod interface moves into its
    /// pod's namespace. Fails (`EBADFD`) once the device has been deleted.
    pub fn name(&self) -> io::Result<String> {
        Ok(sys::tun_get_iff(self.fd.as_fd())?.0)
    }

    /// One `writev` of the frame's virtio-net header and the frame. `EAGAIN`
    /// and every other error go back to the caller unchanged (`EIO` while
    /// the device is down).
    pub fn send(&self, frame: &Frame) -> io::Result<()> {
        let hdr = frame.vnet.to_bytes();
        let n = sys::write_vnet_frame(self.fd.as_fd(), &hdr, frame.data())?;
        if n != VNET_HDR_LEN + frame.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }
}

impl AsFd for TapPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TapPort {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Podrouter's header size and offloads on one TAP descriptor.
fn configure(fd: BorrowedFd<'_>) -> io::Result<()> {
    sys::tun_set_vnet_hdr_sz(fd, sys::VNET_HDR_SIZE)?;
    sys::tun_set_offload(fd, sys::TAP_OFFLOADS)
}

/// One `readv` per frame: the virtio-net header into [`Frame::vnet`], the
/// frame after the headroom. Stops at `EAGAIN`. An error after some
/// frames were read is deferred (the next call sees it again if it
/// persists), so received frames are never lost.
fn read_frames(fd: BorrowedFd<'_>, frames: &mut [Frame]) -> io::Result<usize> {
    read_frames_with::<VNET_HDR_LEN>(fd, frames, VnetHdr::from_bytes)
}

/// Up to `frames.len()` frames from a TAP whose offload header is `H`
/// bytes (read by `parse`), one `readv` each, as the kernel queued them.
/// Stops at `EAGAIN`; an error after some frames is deferred to the next
/// call.
pub(crate) fn read_frames_with<const H: usize>(
    fd: BorrowedFd<'_>,
    frames: &mut [Frame],
    parse: fn(&[u8; H]) -> VnetHdr,
) -> io::Result<usize> {
    let mut n = 0;
    while n < frames.len() {
        let frame = &mut frames[n];
        let mut hdr = [0u8; H];
        match sys::read_with_header(fd, &mut hdr, frame.rx_buffer()) {
            Ok(len) if len > H => {
                frame.set_len(len - H);
                frame.vnet = parse(&hdr);
                n += 1;
            }
            // A read of 0 means "nothing more" (not expected on a TAP);
            // a header without a frame is not a frame.
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
        }
    }
    Ok(n)
}

impl Port for TapPort {
    /// [`read_frames`] on the port's own descriptor.
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
        read_frames(self.fd.as_fd(), frames)
    }

    fn rx_queues(&self) -> Vec<Arc<dyn Port>> {
        self.queues
            .iter()
            .map(|q| q.clone() as Arc<dyn Port>)
            .collect()
    }

    /// Sends the frame now ([`TapPort::send`]); `tunnel` means nothing to
    /// a TAP.
    fn push(&self, _: &mut TxQueue, frame: &Frame, _: Option<Ipv4Addr>) -> io::Result<()> {
        self.send(frame)
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    /// [`read_frames`] stops short at `EAGAIN` (or at an error it defers,
    /// which the receive at the port's next edge sees again).
    fn short_recv_drains(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrouter_testkit::netns::enter_private_netns;
    use podrouter_testkit::{in_private_netns, privileged};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Runs `ip ARGS` (in the calling thread's namespace) and returns stdout.
    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn create_attach_and_persist() {
        if !privileged("create_attach_and_persist") {
            return;
        }
        in_private_netns(|| {
            let tap = TapPort::create("prtt0").unwrap();
            assert_eq!(tap.name().unwrap(), "prtt0");
            assert!(tap.is_persistent().unwrap());
            let e = TapPort::create("prtt0").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            let e = TapPort::create("lo").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            // A second descriptor cannot attach while we hold it.
            let e = TapPort::attach("prtt0").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");
            // Not a TAP.
            let e = TapPort::attach("lo").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            drop(tap);
            // Persistent: still there and re-attachable (retrying while a
            // child forked by another test thread still holds a copy of the
            // descriptor, until it execs).
            let deadline = Instant::now() + Duration::from_secs(3);
            let tap = loop {
                match TapPort::attach("prtt0") {
                    Err(e)
                        if e.kind() == io::ErrorKind::ResourceBusy && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    r => break r.unwrap(),
                }
            };
            let s = ip(&["-d", "-j", "link", "show", "prtt0"]);
            for want in [
                "\"type\":\"tap\"",
                "\"pi\":false",
                "\"vnet_hdr\":true",
                "\"multi_queue\":false",
                "\"persist\":true",
            ] {
                assert!(s.contains(want), "{want} not in {s}");
            }
            ip(&["link", "set", "prtt0", "name", "prtt1"]);
            assert_eq!(tap.name().unwrap(), "prtt1");
            tap.set_persist(false).unwrap();
            assert!(!tap.is_persistent().unwrap());
            drop(tap);
            // Gone once the last reference to the descriptor is (see above).
            let deadline = Instant::now() + Duration::from_secs(3);
            while sys::if_nametoindex("prtt1").unwrap().is_some() {
                assert!(Instant::now() < deadline, "non-persistent TAP not deleted");
                std::thread::sleep(Duration::from_millis(10));
            }
            let e = TapPort::attach("prtt1").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        });
    }

    #[test]
    fn tap_exchanges_frames_with_the_kernel() {
        if !privileged("tap_exchanges_frames_with_the_kernel") {
            return;
        }
        in_private_netns(|| {
            let tap = TapPort::create("prtd0").unwrap();
            tap.set_persist(false).unwrap();
            let mut frames: Vec<Frame> = (0..4).map(|_| Frame::new()).collect();
            assert_eq!(tap.recv(&mut frames).unwrap(), 0);
            assert_eq!(tap.readiness_fd(), Some(tap.as_raw_fd()));
            // Down: the kernel refuses frames with EIO.
            let e = tap.send(&Frame::from_bytes(&[0xff; 60])).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");

            ip(&["link", "set", "prtd0", "address", "02:00:00:00:00:01", "up"]);
            ip(&["addr", "add", "10.9.0.1/24", "dev", "prtd0"]);
            // The kernel ARPs for 10.9.0.2 when we send it a datagram.
            let udp = std::net::UdpSocket::bind("10.9.0.1:0").unwrap();
            udp.send_to(b"x", "10.9.0.2:9").unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let arp = loop {
                let n = tap.recv(&mut frames).unwrap();
                if let Some(f) = frames[..n]
                    .iter()
                    .find(|f| f.len() >= 42 && f.data()[12..14] == [0x08, 0x06])
                {
                    break f.data().to_vec();
                }
                assert!(Instant::now() < deadline, "no ARP request seen");
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!(&arp[0..6], &[0xff; 6]);
            assert_eq!(&arp[6..12], &[2, 0, 0, 0, 0, 1]);
            assert_eq!(&arp[38..42], &[10, 9, 0, 2]);

            // Answer it: 10.9.0.2 is at 02:00:00:00:00:02.
            let peer = [2u8, 0, 0, 0, 0, 2];
            let mut reply = Vec::new();
            reply.extend_from_slice(&arp[6..12]);
            reply.extend_from_slice(&peer);
            reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
            reply.extend_from_slice(&peer);
            reply.extend_from_slice(&[10, 9, 0, 2]);
            reply.extend_from_slice(&arp[6..12]);
            reply.extend_from_slice(&[10, 9, 0, 1]);
            tap.send(&Frame::from_bytes(&reply)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let s = ip(&["neigh", "show", "10.9.0.2", "dev", "prtd0"]);
                if s.contains("02:00:00:00:00:02") {
                    break;
                }
                assert!(Instant::now() < deadline, "neighbour not learnt: {s}");
                std::thread::sleep(Duration::from_millis(10));
            }
            // The queued datagram now leaves, with a partial checksum for us
            // to finish (checksum offload is on).
            let deadline = Instant::now() + Duration::from_secs(5);
            let vnet = loop {
                let n = tap.recv(&mut frames).unwrap();
                if let Some(f) = frames[..n]
                    .iter()
                    .find(|f| f.len() > 23 && f.data()[12..14] == [8, 0] && f.data()[23] == 17)
                {
                    break f.vnet;
                }
                assert!(Instant::now() < deadline, "no UDP datagram seen");
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!(vnet.flags & VnetHdr::F_NEEDS_CSUM, VnetHdr::F_NEEDS_CSUM);
            assert_eq!(vnet.csum_start, 14 + 20);
            assert_eq!(vnet.csum_offset, 6);
        });
    }

    fn setup_peer(name: &str, ip_addr: &str, mac: &str) -> TapPort {
        let tap = TapPort::create(name).unwrap();
        tap.set_persist(false).unwrap();
        ip(&["link", "set", name, "address", mac, "up"]);
        ip(&["addr", "add", ip_addr, "dev", name]);
        tap
    }

    /// Two namespaces joined by two TAPs and a verbatim frame copier (what
    /// the router does, minus the routing): a TCP transfer between them must
    /// work, and the copier must see GSO super-segments.
    #[test]
    fn tcp_gso_segments_cross_a_tap_pair() {
        if !privileged("tcp_gso_segments_cross_a_tap_pair") {
            return;
        }
        const BYTES: usize = 8 << 20;
        let (tx_a, rx_a) = mpsc::channel::<TapPort>();
        let (tx_b, rx_b) = mpsc::channel::<TapPort>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let done = AtomicBool::new(false);
        // Every wait below is bounded, so a failure fails the test instead
        // of hanging it.
        let limit = Duration::from_secs(60);
        let (max_len, gso_frames, received) = std::thread::scope(|s| {
            let receiver = s.spawn(move || -> io::Result<usize> {
                enter_private_netns()?;
                let tap = setup_peer("prtb0", "10.9.1.2/24", "02:00:00:00:01:02");
                // Listen before the sender may connect.
                let l = TcpListener::bind("10.9.1.2:5001")?;
                l.set_nonblocking(true)?;
                let _ = tx_b.send(tap);
                let deadline = Instant::now() + limit;
                let mut c = loop {
                    match l.accept() {
                        Ok((c, _)) => break c,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if Instant::now() > deadline {
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "no connection",
                                ));
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => return Err(e),
                    }
                };
                c.set_nonblocking(false)?;
                c.set_read_timeout(Some(limit))?;
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0;
                loop {
                    let n = c.read(&mut buf)?;
                    if n == 0 {
                        return Ok(total);
                    }
                    total += n;
                }
            });
            let sender = s.spawn(move || -> io::Result<()> {
                enter_private_netns()?;
                let _ = tx_a.send(setup_peer("prta0", "10.9.1.1/24", "02:00:00:00:01:01"));
                go_rx
                    .recv_timeout(limit)
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no go"))?;
                let mut c = TcpStream::connect_timeout(
                    &"10.9.1.2:5001".parse().unwrap(),
                    Duration::from_secs(10),
                )?;
                c.set_write_timeout(Some(limit))?;
                let chunk = vec![0x5au8; 1 << 20];
                for _ in 0..BYTES / chunk.len() {
                    c.write_all(&chunk)?;
                }
                Ok(())
            });
            let a = rx_a.recv_timeout(limit).expect("TAP a");
            let b = rx_b.recv_timeout(limit).expect("TAP b");
            go_tx.send(()).unwrap();
            let done = &done;
            let copier = s.spawn(move || {
                let mut frames: Vec<Frame> = (0..32).map(|_| Frame::new()).collect();
                let (mut max_len, mut gso) = (0usize, 0usize);
                let deadline = Instant::now() + limit;
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let mut idle = true;
                    for (from, to) in [(&a, &b), (&b, &a)] {
                        let n = from.recv(&mut frames).unwrap_or(0);
                        for f in &frames[..n] {
                            idle = false;
                            max_len = max_len.max(f.len());
                            gso += usize::from(f.vnet.is_gso());
                            // A full queue drops, as the router would.
                            let _ = to.send(f);
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                (max_len, gso)
            });
            let sent = sender.join().unwrap();
            let received = receiver.join().unwrap();
            done.store(true, Ordering::Relaxed);
            let (max_len, gso) = copier.join().unwrap();
            sent.expect("sender");
            (max_len, gso, received.expect("receiver"))
        });
        assert_eq!(received, BYTES);
        eprintln!("largest frame {max_len} bytes, {gso_frames} GSO frames");
        assert!(gso_frames > 0, "no GSO frame crossed the TAPs");
        assert!(max_len > 1514, "largest frame only {max_len} bytes");
    }
}
