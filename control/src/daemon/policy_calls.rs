//! The daemon's network-policy calls: the store ([`crate::policy`]) on one
//! side, the data plane's published [`Policies`] snapshot on the other.
//!
//! Invariants: after every call that changes policies, identities or
//! endpoints, and after every attach and detach, the snapshot is
//! recompiled from the store and the pods attached now, and published
//! (one atomic swap; workers never wait). New connections see the change
//! at once; established ones keep going through the connection tracker.
use std::net::Ipv4Addr;

use podrouter_api::{Call, Reply};

use super::{CallResult, Daemon};

impl Daemon {
    /// Attach id and address of every local pod.
    fn local_pods(&self) -> Vec<(&str, Ipv4Addr)> {
        self.pods
            .iter()
            .map(|(id, p)| (id.as_str(), p.record.ip))
            .collect()
    }

    /// The node's own addresses: always allowed to and from its pods.
    pub(super) fn node_addrs(&self) -> Vec<Ipv4Addr> {
        self.cfg.node_ip.into_iter().collect()
    }

    /// Recompiles the policy table and publishes it to the workers.
    pub(super) fn publish_policy(&self) {
        let table = self
            .policy_store
            .compile(&self.local_pods(), &self.node_addrs());
        self.policies.publish(table);
    }

    /// One of the policy, label and endpoint calls.
    pub(super) fn policy_call(&mut self, call: Call) -> CallResult {
        let local: Vec<(String, Ipv4Addr)> = self
            .local_pods()
            .into_iter()
            .map(|(id, ip)| (id.to_string(), ip))
            .collect();
        let local: Vec<(&str, Ipv4Addr)> =
            local.iter().map(|(id, ip)| (id.as_str(), *ip)).collect();
        let node_addrs = self.node_addrs();
        let store = &mut self.policy_store;
        let reply = match call {
            Call::PolicyApply(p) => {
                let names = store.apply_policies(&p.text)?;
                log::info!("policy: applied {}", names.join(", "));
                Reply::PolicyApplied(names)
            }
            Call::PolicyDelete(p) => {
                store.delete_policy(&p.namespace, &p.name)?;
                log::info!("policy: deleted {}/{}", p.namespace, p.name);
                Reply::PolicyDeleted(p)
            }
            Call::PolicyList => return Ok(Reply::Policies(store.list(&local))),
            Call::PolicyShow(p) => {
                return Ok(Reply::PodPolicy(store.show(&local, &node_addrs, &p.pod)?))
            }
            Call::PodLabel(p) => Reply::Labels(store.label_pod(&local, &p)?),
            Call::NamespaceLabel(p) => Reply::Labels(store.label_namespace(&p)?),
            Call::EndpointApply(p) => {
                Reply::EndpointsChanged(store.apply_endpoints(&local, &p.text)?)
            }
            Call::EndpointDelete(p) => {
                store.delete_endpoint(p.ip)?;
                Reply::EndpointsChanged(vec![p.ip])
            }
            Call::EndpointList => return Ok(Reply::Endpoints(store.list_endpoints(&local))),
            other => unreachable!("not a policy call: {other:?}"),
        };
        self.publish_policy();
        Ok(reply)
    }
}
