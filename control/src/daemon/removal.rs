//! A detached pod's interface removal, the one slow step of a detach
//! (the kernel takes ~15-20 ms to unregister a device; waiting for the
//! worker to let go of the port is another round), split out so that it
//! runs on the API connection's thread, after the detach has been
//! answered, while the control thread serves other calls: the caller
//! does not wait for the kernel, and removals of concurrent detaches
//! overlap instead of queueing behind each other.
//!
//! Invariants: by the time an [`InterfaceRemoval`] exists, the pod is
//! already out of the FIB and the host routes (and, once its batch is
//! committed, out of the state file), and its worker has been asked to
//! let go of its port; what remains is its interface, its address and
//! its port's entry in the port table (no route leads there).
//! [`InterfaceRemoval::run`] waits for the worker, then removes the
//! interface; only then does [`super::Daemon::removal_done`] free the
//! address and the port id, so neither is handed to a new pod while the
//! old one may still be in use. While a removal is in flight in a
//! namespace ([`InFlight`]), an attach into that namespace waits for it
//! ([`super::Daemon::waits_for_removal`]: the server holds the call back)
//! and a detach of an unknown id there leaves the interface to it.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podrouter_router::port::PortId;
use podrouter_router::worker::PortRelease;

use podrouter_api::Call;

use super::{netns_id, Daemon, NetnsId};
use crate::nodenet::{NetnsHold, NodeNet};
use crate::state::PodRecord;

/// The interface of a pod that has just been detached, still to remove.
#[must_use = "the pod's address stays taken until the removal has run"]
pub struct InterfaceRemoval {
    record: PodRecord,
    /// The pod's port, still in the port table (no route leads to it).
    port: PortId,
    /// Its worker letting go of it.
    release: Option<PortRelease>,
    net: Arc<dyn NodeNet>,
    /// The namespace the interface is in (its identity when detached).
    netns: Option<NetnsId>,
    /// That namespace, held open from the detach on: the runtime may
    /// delete its file as soon as the detach is answered.
    hold: Option<NetnsHold>,
    /// How long the detach's earlier steps took, for the log.
    steps: String,
}

/// A removal that has run: what the control thread still has to free.
#[derive(Debug)]
pub struct RemovalDone {
    pub id: String,
    pub ip: Ipv4Addr,
    /// The port, for the control thread to drop from the port table.
    pub port: PortId,
    /// The namespace the interface was in, no longer busy.
    pub netns: Option<NetnsId>,
    /// The detach's earlier steps and how long the removal took.
    pub steps: String,
    pub removal: Duration,
}

impl InterfaceRemoval {
    pub(super) fn new(
        record: PodRecord,
        port: PortId,
        release: Option<PortRelease>,
        net: Arc<dyn NodeNet>,
        steps: String,
    ) -> InterfaceRemoval {
        InterfaceRemoval {
            netns: netns_id(&record.netns),
            hold: net.hold_netns(&record.netns),
            record,
            port,
            release,
            net,
            steps,
        }
    }

    /// Removes the interface (blocking; any thread). A failure is logged:
    /// the pod is detached either way, and what is left is an orphan the
    /// runtime's next DEL (with netns and ifname) removes.
    pub fn run(self) -> RemovalDone {
        let r = self.record;
        let start = Instant::now();
        // The worker first lets go of the port (its next round), then the
        // interface goes.
        super::wait_port_release(&r.id, self.release);
        let netns = self
            .hold
            .as_ref()
            .map_or(r.netns.as_path(), |h| h.path.as_path());
        if let Err(e) = self.net.delete_pod_interface(netns, &r.ifname) {
            log::warn!(
                "pod {}: removing {} in {}: {e}",
                r.id,
                r.ifname,
                r.netns.display()
            );
        }
        drop(self.hold);
        RemovalDone {
            id: r.id,
            ip: r.ip,
            port: self.port,
            netns: self.netns,
            steps: self.steps,
            removal: start.elapsed(),
        }
    }
}

/// The interface removals handed out and not yet done: their namespaces
/// and the addresses they still hold.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    by_netns: BTreeMap<Option<NetnsId>, usize>,
    ips: BTreeSet<Ipv4Addr>,
}

impl InFlight {
    pub(super) fn add(&mut self, r: &InterfaceRemoval) {
        *self.by_netns.entry(r.netns).or_default() += 1;
        self.ips.insert(r.record.ip);
    }

    pub(super) fn done(&mut self, d: &RemovalDone) {
        if self.ips.remove(&d.ip) {
            if let Some(n) = self.by_netns.get_mut(&d.netns) {
                *n -= 1;
                if *n == 0 {
                    self.by_netns.remove(&d.netns);
                }
            }
        }
    }

    /// Removals in flight (each holds one address).
    pub(super) fn len(&self) -> usize {
        self.ips.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// Whether an interface is being removed from the namespace at `path`.
    pub(super) fn in_netns(&self, path: &Path) -> bool {
        // No stat while nothing is in flight (the common case).
        !self.by_netns.is_empty()
            && netns_id(path).is_some_and(|id| self.by_netns.contains_key(&Some(id)))
    }
}

impl Daemon {
    /// Whether `call` must wait until an interface removal in flight is
    /// done, because what it needs is still held by a detached pod: an
    /// attach into the namespace that pod's interface is still being
    /// removed from (the new interface could clash with it), for the
    /// address that pod held, or for any address while none other is
    /// free; or a reload (it checks which blocks hold pods' addresses).
    /// The server holds such a call back and hands it over again after
    /// the next [`Daemon::removal_done`], so the caller sees what it would
    /// have seen had the detach waited for its removal.
    pub fn waits_for_removal(&self, call: &Call) -> bool {
        if self.removing.is_empty() {
            return false;
        }
        let p = match call {
            Call::Attach(p) => p,
            Call::Reload => return true,
            _ => return false,
        };
        let address_held = match p.ip {
            Some(ip) => self.removing.ips.contains(&ip),
            None => self.ipam.free() == 0,
        };
        address_held || self.removing.in_netns(Path::new(&p.netns))
    }

    /// Interface removals handed out whose outcome has not come back.
    pub fn removals_in_flight(&self) -> usize {
        self.removing.len()
    }
}
