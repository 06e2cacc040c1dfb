//! The daemon's built-in load balancer calls: the store
//! ([`crate::service`]) on one side, the data plane's published
//! [`Services`](podrouter_router::service::Services) snapshot on the
//! other.
//!
//! Invariants: after every call that changes the store, the table is
//! recompiled and published (one atomic swap; workers never wait), then
//! the flows it no longer serves are cut: those of a deleted Service or
//! port and those whose backend left (removed or no longer ready), TCP
//! and UDP alike (see
//! [`cut_stale_flows`](podrouter_router::service::cut_stale_flows)).
//! New flows see the change at once; a flow whose backend stays keeps
//! it.
use podrouter_api::{Call, Reply};

use super::{CallResult, Daemon};

impl Daemon {
    /// Recompiles the service table and publishes it to the workers.
    pub(super) fn publish_services(&mut self) {
        let table = self.service_store.compile();
        self.services.publish(table);
        let cut = podrouter_router::service::cut_stale_flows(&self.flows, &self.services.load());
        if cut > 0 {
            log::info!("service: {cut} flows cut (their service or backend is gone)");
        }
    }

    /// One of the service calls.
    pub(super) fn service_call(&mut self, call: Call) -> CallResult {
        let reply = match call {
            Call::ServiceApply(p) => {
                let applied = self.service_store.apply(&p.text)?;
                log::info!("service: applied {}", applied.join(", "));
                Reply::ServicesApplied(applied)
            }
            Call::ServiceDelete(r) => {
                self.service_store.delete(&r.namespace, &r.name)?;
                log::info!("service: deleted {}/{}", r.namespace, r.name);
                Reply::ServiceDeleted(r)
            }
            Call::ServiceList => return Ok(Reply::Services(self.service_store.list())),
            other => unreachable!("not a service call: {other:?}"),
        };
        self.publish_services();
        Ok(reply)
    }
}
