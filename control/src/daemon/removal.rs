//! A detached pod's interface removal, the one slow step of a detach
//! (the kernel takes ~20 ms to unregister a device; waiting for the
//! worker to let go of the port is another round), split out so that it
//! runs on the API connection's thread while the control thread serves
//! other calls: removals of concurrent detaches overlap instead of
//! queueing behind each other.
//!
//! Invariant: by the time an [`InterfaceRemoval`] exists, the pod is
//! already out of the FIB, the host routes and the state file, and its
//! worker has been asked to let go of its port; what remains is its
//! interface, its address and its port's entry in the port table (no
//! route leads there). [`InterfaceRemoval::run`] waits for the worker,
//! then removes the interface; only then does
//! [`super::Daemon::removal_done`] free the address and the port id, so
//! neither is handed to a new pod while the old one may still be in use.
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podrouter_router::port::PortId;
use podrouter_router::worker::PortRelease;

use crate::nodenet::NodeNet;
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
    /// How long the detach's earlier steps took, for the log.
    steps: String,
    /// When the detach call arrived (for the detach latency histogram).
    called: Instant,
}

/// A removal that has run: what the control thread still has to free.
#[derive(Debug)]
pub struct RemovalDone {
    pub id: String,
    pub ip: Ipv4Addr,
    /// The port, for the control thread to drop from the port table.
    pub port: PortId,
    /// The detach's earlier steps and how long the removal took.
    pub steps: String,
    pub removal: Duration,
    /// From the detach call's arrival to the end of the removal.
    pub since_call: Duration,
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
            record,
            port,
            release,
            net,
            steps,
            called: Instant::now(),
        }
    }

    /// The same removal, timed from `called` (the detach call's arrival).
    pub fn since(self, called: Instant) -> InterfaceRemoval {
        InterfaceRemoval { called, ..self }
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
        if let Err(e) = self.net.delete_pod_interface(&r.netns, &r.ifname) {
            log::warn!("pod {}: removing {}: {e}", r.id, r.ifname);
        }
        RemovalDone {
            id: r.id,
            ip: r.ip,
            port: self.port,
            steps: self.steps,
            removal: start.elapsed(),
            since_call: self.called.elapsed(),
        }
    }
}
