//! The built-in Service load balancer's table: what the data plane reads to
//! turn a packet to a ClusterIP into one to a backend pod (issue 17 part 2).
//!
//! # What it owns
//!
//! [`ServiceTable`] is an immutable snapshot: per ClusterIP (one hash
//! probe), its frontends (port and protocol, a short list scanned
//! linearly), each with its ready backends (address and target port), the
//! [`Maglev`] table that picks one per flow, its draining backends
//! (terminating but serving: they keep their flows, get no new one), and
//! the `ClientIP` session affinity timeout if any. [`cut_stale_flows`]
//! removes from the flow table the flows a new snapshot no longer serves. [`Services`] publishes snapshots the way
//! [`crate::policy::Policies`] does: one `ArcSwap`, a worker loads it once
//! per batch and never blocks, the control thread builds the next table
//! aside and swaps it in. The control plane (`control/src/service/`)
//! parses Service and EndpointSlice objects and hands the result to
//! [`ServiceTable::insert`]; this module knows nothing about Kubernetes.
//!
//! # Counters
//!
//! Per service port and per backend, packets and new flows (and, per
//! service port, flows refused for want of a ready backend), as relaxed
//! atomic adds on counters shared between snapshots: the control side
//! hands the same [`SvcCounters`]/[`BackendCounters`] to the next table
//! for the same service port and backend, so a table swap loses no count.
//! They are shared by the workers (a client pod's port belongs to one
//! worker, so in practice one writer per flow); each sits on its own cache
//! line.
//!
//! # Invariants
//!
//! - A published table is never mutated (apart from its counters).
//! - A frontend's `maglev` was built from its `backends` in that order; a
//!   frontend with no backend has an empty Maglev table and is rejected
//!   (TCP reset, ICMP port unreachable).
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;

use crate::conntrack::{FlowTable, Nat, PROTO_AFFINITY};
use crate::fib::KeyHash;
use crate::maglev::{Maglev, MaglevError};

/// Counters of one service port (frontend).
#[derive(Debug, Default)]
pub struct SvcCounters {
    /// Packets of the original direction DNATed to a backend.
    pub packets: CachePadded<AtomicU64>,
    /// New flows given a backend.
    pub flows: CachePadded<AtomicU64>,
    /// New flows refused for want of a ready backend (reset / port
    /// unreachable sent or not, rate limits apply).
    pub rejected: CachePadded<AtomicU64>,
    /// Flows cut because their backend left the port (removed from its
    /// EndpointSlices or no longer ready): their entries removed, by
    /// [`cut_stale_flows`] when the table changed or by the data path
    /// on the flow's next packet, whichever came first.
    pub cut: CachePadded<AtomicU64>,
}

/// Counters of one backend of one service port.
#[derive(Debug, Default)]
pub struct BackendCounters {
    pub packets: CachePadded<AtomicU64>,
    pub flows: CachePadded<AtomicU64>,
}

#[inline]
fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One backend of a service port: where its flows go.
#[derive(Clone, Debug)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub counters: Arc<BackendCounters>,
}

/// A service port as the control plane describes it.
#[derive(Clone, Debug)]
pub struct FrontendSpec {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    /// Ready backends, in a stable order (the Maglev table depends on it).
    pub backends: Vec<Backend>,
    /// Backends that take no new flow but keep the ones they have
    /// (terminating endpoints still serving: a pod shutting down
    /// gracefully).
    pub draining: Vec<Backend>,
    /// `sessionAffinity: ClientIP`: seconds a client keeps its backend
    /// after its last new flow; 0: no affinity.
    pub affinity_secs: u32,
    pub counters: Arc<SvcCounters>,
}

/// One service port in the snapshot.
#[derive(Debug)]
pub struct Frontend {
    pub port: u16,
    pub proto: u8,
    backends: Box<[Backend]>,
    draining: Box<[Backend]>,
    maglev: Maglev,
    affinity_secs: u32,
    counters: Arc<SvcCounters>,
}

impl Frontend {
    /// The backend for a new flow whose hash is `flow_hash`; `None` if
    /// there is no ready backend.
    #[inline]
    pub fn pick(&self, flow_hash: u32) -> Option<&Backend> {
        self.maglev.pick(flow_hash).map(|i| &self.backends[i])
    }

    /// The backend at address `addr` (session affinity), if still ready.
    #[inline]
    pub fn backend_at(&self, addr: Ipv4Addr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// The backend at `addr`:`port` (an existing flow), if it still
    /// serves: ready or draining.
    #[inline]
    pub fn backend(&self, addr: Ipv4Addr, port: u16) -> Option<&Backend> {
        self.backends
            .iter()
            .chain(self.draining.iter())
            .find(|b| b.addr == addr && b.port == port)
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Backends that keep their flows but take no new one.
    pub fn draining(&self) -> &[Backend] {
        &self.draining
    }

    pub fn affinity_secs(&self) -> u32 {
        self.affinity_secs
    }

    pub fn counters(&self) -> &SvcCounters {
        &self.counters
    }

    /// Counts a packet of the original direction to `backend` (if it is
    /// still one of ours), and a new flow when `new`.
    #[inline]
    pub fn count(&self, backend: Option<&Backend>, new: bool) {
        bump(&self.counters.packets);
        if new {
            bump(&self.counters.flows);
        }
        if let Some(b) = backend {
            bump(&b.counters.packets);
            if new {
                bump(&b.counters.flows);
            }
        }
    }

    #[inline]
    pub fn count_rejected(&self) {
        bump(&self.counters.rejected);
    }

    #[inline]
    pub fn count_cut(&self) {
        bump(&self.counters.cut);
    }
}

/// Every service port of the node, by ClusterIP.
#[derive(Debug, Default)]
pub struct ServiceTable {
    by_vip: HashMap<u32, Vec<Frontend>, KeyHash>,
    generation: u64,
}

impl ServiceTable {
    pub fn new() -> ServiceTable {
        ServiceTable::default()
    }

    /// Adds (or replaces) one service port, building its Maglev table of
    /// `maglev_size` entries (a prime, e.g.
    /// [`crate::maglev::DEFAULT_SIZE`]).
    pub fn insert(&mut self, spec: FrontendSpec, maglev_size: usize) -> Result<(), MaglevError> {
        let keys: Vec<u64> = spec
            .backends
            .iter()
            .map(|b| (u64::from(u32::from(b.addr)) << 16) | u64::from(b.port))
            .collect();
        let maglev = Maglev::new(&keys, maglev_size)?;
        let list = self.by_vip.entry(u32::from(spec.vip)).or_default();
        list.retain(|f| (f.port, f.proto) != (spec.port, spec.proto));
        list.push(Frontend {
            port: spec.port,
            proto: spec.proto,
            backends: spec.backends.into_boxed_slice(),
            draining: spec.draining.into_boxed_slice(),
            maglev,
            affinity_secs: spec.affinity_secs,
            counters: spec.counters,
        });
        Ok(())
    }

    /// No service at all: the fast path's one check.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }

    /// Whether `addr` is a ClusterIP of some service.
    #[inline]
    pub fn is_vip(&self, addr: Ipv4Addr) -> bool {
        self.by_vip.contains_key(&u32::from(addr))
    }

    /// The service port `vip`:`port`/`proto`, if any.
    #[inline]
    pub fn frontend(&self, vip: Ipv4Addr, port: u16, proto: u8) -> Option<&Frontend> {
        self.by_vip
            .get(&u32::from(vip))?
            .iter()
            .find(|f| f.port == port && f.proto == proto)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Service ports in the table.
    pub fn len(&self) -> usize {
        self.by_vip.values().map(Vec::len).sum()
    }
}

/// The published service table (see the module header).
pub struct Services {
    current: ArcSwap<ServiceTable>,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            current: ArcSwap::from_pointee(ServiceTable::default()),
        }
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.current.load();
        f.debug_struct("Services")
            .field("ports", &t.len())
            .field("generation", &t.generation)
            .finish()
    }
}

impl Services {
    pub fn new() -> Services {
        Services::default()
    }

    /// The current snapshot (cheap; once per batch).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<ServiceTable>> {
        self.current.load()
    }

    /// Publishes `table` (its generation set to the previous one's + 1).
    /// Single writer: the control thread.
    pub fn publish(&self, mut table: ServiceTable) {
        table.generation = self.current.load().generation + 1;
        self.current.store(Arc::new(table));
    }
}

/// Removes from `flows` the entries of the built-in balancer's flows
/// that `table` (just published) no longer serves: a flow whose service
/// port is gone (its Service deleted, the port removed) or whose backend
/// left the port, and a client's session affinity to a ClusterIP that is
/// gone. Both entries of a flow go (the client's, carrying
/// [`Nat::Dnat`], and the translated one, carrying [`Nat::UnDnat`]), so
/// the flow's next packet is a new flow: balanced again among the
/// backends left (a TCP segment that is no SYN then gets a reset from the
/// new backend, the one the client sees coming from the ClusterIP), or
/// refused if there is none. Returns the flows cut (client entries), each
/// counted in its service port's `cut` when the port remains.
///
/// The control thread's, after each publication: one pass over the flow
/// table. A worker still holding the previous snapshot may give a flow
/// the removed backend during the pass; the data path cuts such a flow
/// on its next packet (see `pipeline::service`).
pub fn cut_stale_flows(flows: &FlowTable, table: &ServiceTable) -> usize {
    let mut cut = 0;
    flows.purge(|key, nat| match nat {
        // key: the client's packet to the ClusterIP.
        Nat::Dnat(to, to_port) => {
            let stale = match table.frontend(key.dst, key.dport, key.proto) {
                Some(fe) if fe.backend(to, to_port).is_some() => false,
                Some(fe) => {
                    fe.count_cut();
                    true
                }
                None => true,
            };
            cut += usize::from(stale);
            stale
        }
        // key: the client's packet as translated to the backend.
        Nat::UnDnat(vip, vport) => table
            .frontend(vip, vport, key.proto)
            .is_none_or(|fe| fe.backend(key.dst, key.dport).is_none()),
        // key: (client, ClusterIP, 0, service port); its backend is
        // checked on the client's next new flow.
        Nat::Affinity { .. } => key.proto == PROTO_AFFINITY && !table.is_vip(key.dst),
        Nat::None => false,
    });
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::DEFAULT_SIZE;

    fn backend(last: u8, port: u16) -> Backend {
        Backend {
            addr: Ipv4Addr::new(10, 244, 1, last),
            port,
            counters: Arc::default(),
        }
    }

    #[test]
    fn frontends_are_found_by_vip_port_and_protocol() {
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let mut t = ServiceTable::new();
        assert!(t.is_empty());
        for (proto, port) in [(17u8, 53u16), (6, 53)] {
            t.insert(
                FrontendSpec {
                    vip,
                    port,
                    proto,
                    backends: vec![backend(2, 5353), backend(3, 5353)],
                    draining: vec![backend(4, 5353)],
                    affinity_secs: 0,
                    counters: Arc::default(),
                },
                DEFAULT_SIZE,
            )
            .unwrap();
        }
        assert!(t.is_vip(vip));
        assert!(!t.is_vip(Ipv4Addr::new(10, 96, 0, 11)));
        assert_eq!(t.len(), 2);
        let f = t.frontend(vip, 53, 17).unwrap();
        assert_eq!(f.backends().len(), 2);
        assert!(t.frontend(vip, 54, 17).is_none());
        assert!(t.frontend(vip, 53, 132).is_none());
        let b = f.pick(12345).unwrap();
        assert_eq!(b.port, 5353);
        assert_eq!(f.backend_at(b.addr).unwrap().addr, b.addr);
        // A draining backend keeps its flows but gets no new one.
        let d = Ipv4Addr::new(10, 244, 1, 4);
        assert!(f.backend(d, 5353).is_some());
        assert!(f.backend_at(d).is_none());
        assert!((0..1000).all(|h| f.pick(h).unwrap().addr != d));
        f.count(Some(b), true);
        f.count(Some(b), false);
        assert_eq!(f.counters().packets.load(Ordering::Relaxed), 2);
        assert_eq!(f.counters().flows.load(Ordering::Relaxed), 1);
        assert_eq!(b.counters.packets.load(Ordering::Relaxed), 2);
        // Replacing a port with no backends: nothing to pick.
        t.insert(
            FrontendSpec {
                vip,
                port: 53,
                proto: 17,
                backends: vec![],
                draining: vec![],
                affinity_secs: 0,
                counters: Arc::default(),
            },
            DEFAULT_SIZE,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.frontend(vip, 53, 17).unwrap().pick(1).is_none());
        let s = Services::new();
        s.publish(t);
        assert_eq!(s.load().generation(), 1);
    }
}
