//! Ports: where frames come from and go to, behind one batched interface,
//! and the port table the workers and the pipeline read.
//!
//! Invariants: only the worker that owns a port calls [`Port::recv`] on it;
//! any worker may call [`Port::send`] (implementations are thread-safe for
//! sending). The table is an immutable snapshot, replaced as a whole.
use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use crate::encap::EncapPolicy;
use crate::frame::{Frame, VnetHdr};

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
    /// The tunnel to other nodes (IPIP from `local`, the node's address).
    /// Frames sent to it carry the next-hop node's address as their
    /// Ethernet destination ([`crate::uplink::tunnel_mac`]); frames from it
    /// are whole outer IPv4 packets behind an Ethernet header. `policy`
    /// says which nodes are reached through it and which directly.
    Uplink {
        local: Ipv4Addr,
        policy: EncapPolicy,
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
pub trait Port: Send + Sync {
    /// Receives up to `frames.len()` frames into the given buffers; returns
    /// how many were filled (0 when nothing is waiting).
    fn recv(&self, frames: &mut [Frame]) -> io::Result<usize>;

    /// Sends (or queues, until [`Port::flush`]) one frame.
    fn send(&self, frame: &Frame) -> io::Result<()>;

    /// Pushes out frames queued by [`Port::send`]. Called once per batch.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// A file descriptor that becomes readable when frames arrive, for
    /// sleeping workers; `None` if the port must be polled.
    fn readiness_fd(&self) -> Option<RawFd>;
}

/// A port and its facts, as the table holds them.
pub struct PortEntry {
    pub info: PortInfo,
    pub port: Arc<dyn Port>,
}

/// Immutable snapshot of all ports, indexed by [`PortId`].
#[derive(Clone, Default)]
pub struct PortTable {
    entries: Vec<Option<Arc<PortEntry>>>,
    host: Option<PortId>,
    uplink: Option<PortId>,
}

impl PortTable {
    pub fn get(&self, id: PortId) -> Option<&PortEntry> {
        self.entries.get(id.0 as usize).and_then(|e| e.as_deref())
    }

    /// A copy of this table with `entry` at `id`.
    pub fn with(&self, id: PortId, entry: PortEntry) -> PortTable {
        let mut t = self.clone();
        let i = id.0 as usize;
        if t.entries.len() <= i {
            t.entries.resize(i + 1, None);
        }
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

    fn send(&self, frame: &Frame) -> io::Result<()> {
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
        assert_eq!(t1.host_port(), Some(id));
        assert_eq!(t1.free_id(), Some(PortId(1)));
        let t2 = t1.without(id);
        assert!(t2.get(id).is_none());
        assert_eq!(t2.host_port(), None);
        assert_eq!(t2.free_id(), Some(PortId(0)));
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
        p.send(&frames[0]).unwrap();
        assert_eq!(p.recv(&mut frames).unwrap(), 1);
        assert_eq!(p.recv(&mut frames).unwrap(), 0);
        assert_eq!(p.take_sent()[0].1, vec![1, 2, 3]);
    }
}
