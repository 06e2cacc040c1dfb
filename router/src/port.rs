//! Ports: where frames come from and go to, behind one batched interface,
//! and the port table the workers and the pipeline read.
//!
//! Invariants: only the worker that owns a port calls [`Port::recv`] on it
//! (a multi-queue port's other queues, [`Port::rx_queues`], are ports of
//! their own, each owned by one other worker);
//! every worker transmits through a [`TxQueue`] of its own per egress port
//! (DPDK l3fwd's `tx_mbufs[port]` per lcore), so transmitting takes no lock
//! and allocates nothing once the queue exists. The table is an immutable
//! snapshot, replaced as a whole; each entry carries a generation that
//! changes whenever a port is put at an id, so a worker knows when its
//! queue for that id belongs to a port that is gone.
use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::encap::EncapPolicy;
use crate::frame::{Frame, VnetHdr};
use crate::vxlan::VxlanParams;

/// The encapsulation an uplink speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// IPv4 in IPv4 (RFC 2003) over a raw socket ([`crate::uplink`]).
    Ipip,
    /// VXLAN (RFC 7348) through a TAP ([`crate::vxlan_port`]).
    Vxlan(VxlanParams),
}

/// Index of a port in the [`PortTable`]. Stable for the port's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

/// Most ports a node can have (per-worker counters are sized by it).
pub const MAX_PORTS: usize = 4096;

/// What sits behind a port; decides how the pipeline treats its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// A pod with one /32 address and the MAC of its interface.
    Pod { ip: Ipv4Addr, mac: [u8; 6] },
    /// The node's own network stack (TAP `podrouter0`), reached at `mac`.
    Host { mac: [u8; 6] },
    /// The tunnel to other nodes (from `local`, the node's address).
    /// Frames are pushed to it with the next-hop node as the `tunnel`
    /// argument of [`Port::push`] (the pipeline's
    /// `Verdict::Forward { tunnel }`); frames from it are whole outer
    /// packets: IPIP behind an Ethernet header, or VXLAN with its own outer
    /// Ethernet header (`tunnel` says which). `policy` says which nodes are
    /// reached through it and which directly.
    Uplink {
        local: Ipv4Addr,
        policy: EncapPolicy,
        tunnel: Tunnel,
    },
}

/// Static facts about a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Interface name as the operator sees it (e.g. `eth0@pod1`).
    pub name: String,
    pub role: PortRole,
    /// Largest IPv4 packet (without Ethernet header) the port carries.
    pub mtu: u16,
}

/// A source and sink of frames.
///
/// # Implementing a port
///
/// Receiving: [`Port::recv`] fills the worker's frame buffers, each an
/// Ethernet frame (a tunnel port puts what it received behind an Ethernet
/// header addressed to the router, as the IPIP uplink does) with its
/// offload request in [`Frame::vnet`]; it stops when nothing is waiting and
/// never blocks. [`Port::readiness_fd`] names a descriptor epoll can watch
/// (edge-triggered), or `None` to be polled.
///
/// Transmitting happens in three steps, all on the worker's thread:
///
/// 1. [`Port::tx_queue`] makes the worker's queue for this port, once (it
///    may allocate: a send ring, a socket, ...). Put whatever per-worker
///    state the port needs in it ([`TxQueue::new`]), or nothing
///    ([`TxQueue::direct`]) if the port sends in `push`.
/// 2. [`Port::push`] is called per frame the pipeline forwards to the
///    port, with the worker's queue and the next hop beyond the port
///    (`tunnel`: the node at the far end of a tunnel, `None` for pods and
///    the host). It copies or sends the frame (the buffer is reused after
///    the call) and must not allocate, lock or log. Get the state back
///    with [`TxQueue::state`]. A port with a bounded queue flushes early
///    when it is full.
/// 3. [`Port::flush`] is called once per batch for each port pushed to in
///    it, and must leave the queue empty (what cannot be sent is dropped
///    and counted by the port, and reported as an error).
///
/// A tunnel port that encapsulates while copying (IPIP, VXLAN over a
/// socket) can keep a [`crate::txring::TxRing`] in its queue: it does the
/// copy, the software offloads (checksum, TCP segmentation,
/// fragmentation), the early flush and the drop counting, and calls the
/// port back to write each outer header and to send a batch.
pub trait Port: Send + Sync {
    /// Receives up to `frames.len()` frames into the given buffers; returns
    /// how many were filled (0 when nothing is waiting).
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize>;

    /// A file descriptor that becomes readable when frames arrive, for
    /// sleeping workers; `None` if the port must be polled.
    fn readiness_fd(&self) -> Option<RawFd>;

    /// Whether a [`recv`](Port::recv) that returned fewer frames than it
    /// was given (but some) left nothing to read: it stopped because the
    /// device had no more. The worker then waits for the port's next
    /// readiness edge instead of receiving once more only to find it
    /// empty, one syscall less per wake-up. False by default: a port may
    /// merge or filter what it read, returning few frames with more
    /// waiting.
    fn short_recv_drains(&self) -> bool {
        false
    }

    /// One worker's transmit queue for this port. Called once per worker
    /// and port (again only if another port takes the id); may allocate.
    fn tx_queue(&self) -> TxQueue {
        TxQueue::direct()
    }

    /// Sends, or queues in `queue` until [`Port::flush`], one frame;
    /// `tunnel` is the next hop at the far end of a tunnel port (see the
    /// trait documentation). `queue` was made by this port's
    /// [`Port::tx_queue`].
    fn push(&self, queue: &mut TxQueue, frame: &Frame, tunnel: Option<Ipv4Addr>) -> io::Result<()>;

    /// Sends what [`Port::push`] queued in `queue`, leaving it empty.
    /// Called once per batch.
    fn flush(&self, _queue: &mut TxQueue) -> io::Result<()> {
        Ok(())
    }

    /// The port's other receive queues (a multi-queue TAP's other
    /// descriptors, [`crate::mq`]), each a port whose `recv` and
    /// `readiness_fd` serve that queue: the daemon gives each to another
    /// worker under the port's id, so one port's receive work spreads
    /// over the workers while the kernel keeps each flow on one queue.
    /// Frames *to* the port still go through the port itself (a queue's
    /// `push` refuses). None by default.
    fn rx_queues(&self) -> Vec<Arc<dyn Port>> {
        Vec::new()
    }
}

/// One more receive queue of a multi-queue device ([`Port::rx_queues`]):
/// its descriptor, read the way the device's port reads its own.
pub struct RxQueue {
    fd: OwnedFd,
    read: fn(BorrowedFd<'_>, &mut [Frame]) -> io::Result<usize>,
}

impl RxQueue {
    /// A queue read by `read` (the port's own receive function: one batch,
    /// stopping at `EAGAIN`).
    pub fn new(fd: OwnedFd, read: fn(BorrowedFd<'_>, &mut [Frame]) -> io::Result<usize>) -> Self {
        RxQueue { fd, read }
    }
}

impl std::fmt::Debug for RxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxQueue")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl Port for RxQueue {
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
        (self.read)(self.fd.as_fd(), frames)
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn push(&self, _: &mut TxQueue, _: &Frame, _: Option<Ipv4Addr>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a receive queue does not transmit: frames go through its port",
        ))
    }
}

/// One worker's transmit state for one port, made by [`Port::tx_queue`] and
/// handed back to that port's [`Port::push`] and [`Port::flush`]. Owned by
/// one worker, so the port reaches its state without a lock.
pub struct TxQueue(Box<dyn Any + Send>);

impl TxQueue {
    /// A queue with no state, for ports that send in `push` (no
    /// allocation).
    pub fn direct() -> TxQueue {
        TxQueue(Box::new(()))
    }

    /// A queue holding the port's per-worker state.
    pub fn new<T: Any + Send>(state: T) -> TxQueue {
        TxQueue(Box::new(state))
    }

    /// The state a port put in, if it is a `T` (it is, unless the queue was
    /// made by another port: then the port refuses the frame).
    #[inline]
    pub fn state<T: Any>(&mut self) -> Option<&mut T> {
        self.0.downcast_mut()
    }
}

/// The error a port returns for a queue it did not make.
pub fn foreign_queue() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "transmit queue made by another port",
    )
}

/// A port and its facts, as the table holds them.
pub struct PortEntry {
    pub info: PortInfo,
    pub port: Arc<dyn Port>,
}

/// Generations handed out to table entries (0 is never one).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Immutable snapshot of all ports, indexed by [`PortId`].
#[derive(Clone, Default)]
pub struct PortTable {
    entries: Vec<Option<Arc<PortEntry>>>,
    /// Per id: changes whenever a port is put there (unique per process).
    generations: Vec<u64>,
    host: Option<PortId>,
    uplink: Option<PortId>,
}

impl PortTable {
    #[inline]
    pub fn get(&self, id: PortId) -> Option<&PortEntry> {
        self.entries.get(id.0 as usize).and_then(|e| e.as_deref())
    }

    /// The port at `id` and its generation: the same number for as long as
    /// this port stays at that id in any later snapshot, a different one
    /// for any other port put there. 0 if there is no port.
    #[inline]
    pub fn get_with_generation(&self, id: PortId) -> Option<(&PortEntry, u64)> {
        let i = id.0 as usize;
        let e = self.entries.get(i)?.as_deref()?;
        Some((e, self.generations[i]))
    }

    /// The generation of the port at `id` (see
    /// [`PortTable::get_with_generation`]); 0 if there is none.
    pub fn generation(&self, id: PortId) -> u64 {
        match self.entries.get(id.0 as usize) {
            Some(Some(_)) => self.generations[id.0 as usize],
            _ => 0,
        }
    }

    /// A copy of this table with `entry` at `id`.
    pub fn with(&self, id: PortId, entry: PortEntry) -> PortTable {
        let mut t = self.clone();
        let i = id.0 as usize;
        if t.entries.len() <= i {
            t.entries.resize(i + 1, None);
            t.generations.resize(i + 1, 0);
        }
        t.generations[i] = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        if matches!(entry.info.role, PortRole::Host { .. }) {
            t.host = Some(id);
        } else if t.host == Some(id) {
            t.host = None;
        }
        if matches!(entry.info.role, PortRole::Uplink { .. }) {
            t.uplink = Some(id);
        } else if t.uplink == Some(id) {
            t.uplink = None;
        }
        t.entries[i] = Some(Arc::new(entry));
        t
    }

    /// The host port (`podrouter0`), if one is attached.
    pub fn host_port(&self) -> Option<PortId> {
        self.host
    }

    /// The uplink (IPIP to other nodes), if one is attached.
    pub fn uplink_port(&self) -> Option<PortId> {
        self.uplink
    }

    /// A copy of this table without `id`.
    pub fn without(&self, id: PortId) -> PortTable {
        let mut t = self.clone();
        if let Some(e) = t.entries.get_mut(id.0 as usize) {
            *e = None;
            t.generations[id.0 as usize] = 0;
        }
        if t.host == Some(id) {
            t.host = None;
        }
        if t.uplink == Some(id) {
            t.uplink = None;
        }
        t
    }

    /// The lowest id not in use, if below [`MAX_PORTS`].
    pub fn free_id(&self) -> Option<PortId> {
        let i = self
            .entries
            .iter()
            .position(|e| e.is_none())
            .unwrap_or(self.entries.len());
        (i < MAX_PORTS).then_some(PortId(i as u32))
    }

    pub fn iter(&self) -> impl Iterator<Item = (PortId, &PortEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_deref().map(|e| (PortId(i as u32), e)))
    }
}

/// An in-memory port for tests and benchmarks: frames injected into `rx`
/// are received; sent frames are kept in `tx`.
#[derive(Default)]
pub struct MemPort {
    rx: Mutex<VecDeque<(VnetHdr, Vec<u8>)>>,
    tx: Mutex<Vec<(VnetHdr, Vec<u8>)>>,
}

impl MemPort {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame to be received.
    pub fn inject(&self, data: &[u8]) {
        self.inject_with(VnetHdr::default(), data);
    }

    pub fn inject_with(&self, vnet: VnetHdr, data: &[u8]) {
        lock(&self.rx).push_back((vnet, data.to_vec()));
    }

    /// Takes every frame sent so far.
    pub fn take_sent(&self) -> Vec<(VnetHdr, Vec<u8>)> {
        std::mem::take(&mut *lock(&self.tx))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this test-only lock leaves plain data behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Port for MemPort {
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize> {
        let mut rx = lock(&self.rx);
        let mut n = 0;
        while n < frames.len() {
            let Some((vnet, data)) = rx.pop_front() else {
                break;
            };
            frames[n].load(&data, vnet);
            n += 1;
        }
        Ok(n)
    }

    /// Keeps the frame (tests: with no tunnel; the next hop is not kept).
    fn push(&self, _: &mut TxQueue, frame: &Frame, _: Option<Ipv4Addr>) -> io::Result<()> {
        lock(&self.tx).push((frame.vnet, frame.data().to_vec()));
        Ok(())
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_snapshots_are_independent() {
        let p: Arc<dyn Port> = Arc::new(MemPort::new());
        let info = PortInfo {
            name: "a".into(),
            role: PortRole::Host { mac: [2; 6] },
            mtu: 1500,
        };
        let t0 = PortTable::default();
        let id = t0.free_id().unwrap();
        let t1 = t0.with(
            id,
            PortEntry {
                info: info.clone(),
                port: p.clone(),
            },
        );
        assert!(t0.get(id).is_none());
        assert_eq!(t1.get(id).unwrap().info, info);
        let g1 = t1.generation(id);
        assert_ne!(g1, 0);
        assert_eq!(t1.get_with_generation(id).unwrap().1, g1);
        assert_eq!(t1.clone().generation(id), g1, "copies keep it");
        assert_eq!(t0.generation(id), 0);
        assert_eq!(t1.host_port(), Some(id));
        assert_eq!(t1.free_id(), Some(PortId(1)));
        let t2 = t1.without(id);
        assert!(t2.get(id).is_none());
        assert_eq!(t2.host_port(), None);
        assert_eq!(t2.free_id(), Some(PortId(0)));
        assert_eq!(t2.generation(id), 0);
        let t3 = t2.with(
            id,
            PortEntry {
                info: info.clone(),
                port: p.clone(),
            },
        );
        assert_ne!(t3.generation(id), g1, "another port at the same id");
        let mut q = TxQueue::new(5u32);
        assert_eq!(q.state::<u32>(), Some(&mut 5));
        assert!(q.state::<u64>().is_none());
        assert_eq!(t1.iter().count(), 1);
    }

    #[test]
    fn mem_port_round_trip() {
        let p = MemPort::new();
        p.inject(&[1, 2, 3]);
        p.inject(&[4]);
        let mut frames = vec![Frame::new()];
        assert_eq!(p.recv(&mut frames).unwrap(), 1);
        assert_eq!(frames[0].data(), &[1, 2, 3]);
        let mut q = p.tx_queue();
        p.push(&mut q, &frames[0], None).unwrap();
        p.flush(&mut q).unwrap();
        assert_eq!(p.recv(&mut frames).unwrap(), 1);
        assert_eq!(p.recv(&mut frames).unwrap(), 0);
        assert_eq!(p.take_sent()[0].1, vec![1, 2, 3]);
    }
}
