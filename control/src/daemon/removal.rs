//! A detached pod's interface removal, the one slow step of a detach
//! (the kernel takes ~20 ms to unregister a device), split out so that it
//! runs on the API connection's thread while the control thread serves
//! other calls: removals of concurrent detaches overlap instead of
//! queueing behind each other.
//!
//! Invariant: by the time an [`InterfaceRemoval`] exists, the pod is
//! already out of the data plane, the host routes and the state file;
//! only its interface and its address remain. The address is freed by
//! [`super::Daemon::removal_done`] once [`InterfaceRemoval::run`] has
//! returned, so it is never handed out while the old interface exists.
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::nodenet::NodeNet;
use crate::state::PodRecord;

/// The interface of a pod that has just been detached, still to remove.
#[must_use = "the pod's address stays taken until the removal has run"]
pub struct InterfaceRemoval {
    record: PodRecord,
    net: Arc<dyn NodeNet>,
    /// How long the detach's earlier steps took, for the log.
    steps: String,
}

/// A removal that has run: what the control thread still has to free.
#[derive(Debug)]
pub struct RemovalDone {
    pub id: String,
    pub ip: Ipv4Addr,
    /// The detach's earlier steps and how long the removal took.
    pub steps: String,
    pub removal: Duration,
}

impl InterfaceRemoval {
    pub(super) fn new(record: PodRecord, net: Arc<dyn NodeNet>, steps: String) -> InterfaceRemoval {
        InterfaceRemoval { record, net, steps }
    }

    /// Removes the interface (blocking; any thread). A failure is logged:
    /// the pod is detached either way, and what is left is an orphan the
    /// runtime's next DEL (with netns and ifname) removes.
    pub fn run(self) -> RemovalDone {
        let r = self.record;
        let start = Instant::now();
        if let Err(e) = self.net.delete_pod_interface(&r.netns, &r.ifname) {
            log::warn!("pod {}: removing {}: {e}", r.id, r.ifname);
        }
        RemovalDone {
            id: r.id,
            ip: r.ip,
            steps: self.steps,
            removal: start.elapsed(),
        }
    }
}
