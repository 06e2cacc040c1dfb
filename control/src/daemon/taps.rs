//! What the capture and trace streams ([`crate::tap_stream`]) need from the
//! daemon: the taps, the worker count, the port table, and the port a
//! request names.
use std::sync::Arc;

use arc_swap::ArcSwap;
use podrouter_router::capture::Taps;
use podrouter_router::port::{PortId, PortTable};

use super::Daemon;

/// A port to tap, found by what the operator named.
pub struct TapPort {
    pub id: PortId,
    pub name: String,
}

impl Daemon {
    /// The taps every worker checks.
    pub fn taps(&self) -> &Arc<Taps> {
        &self.taps
    }

    /// How many workers run (one capture ring each).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The port table the workers read (port names for trace output).
    pub fn port_table(&self) -> &Arc<ArcSwap<PortTable>> {
        &self.ports
    }

    /// The port of a local pod (attach id or address), of a port by its
    /// name, or the uplink: exactly one of them. The error is for the
    /// operator.
    pub fn tap_port(
        &self,
        pod: Option<&str>,
        port: Option<&str>,
        uplink: bool,
    ) -> Result<TapPort, String> {
        let table = self.ports.load();
        let named = |id: PortId| TapPort {
            id,
            name: table
                .get(id)
                .map_or_else(String::new, |e| e.info.name.clone()),
        };
        match (pod, port, uplink) {
            (Some(pod), None, false) => {
                let found = self.pods.get(pod).or_else(|| {
                    let ip = pod.parse::<std::net::Ipv4Addr>().ok()?;
                    self.pods.values().find(|p| p.record.ip == ip)
                });
                found
                    .map(|p| named(p.port))
                    .ok_or_else(|| format!("no local pod with id or address {pod}"))
            }
            (None, Some(name), false) => table
                .iter()
                .find(|(_, e)| e.info.name == name)
                .map(|(id, _)| named(id))
                .ok_or_else(|| format!("no port named {name} (podrouterctl counters lists them)")),
            (None, None, true) => table
                .uplink_port()
                .map(named)
                .ok_or_else(|| "this node has no uplink".to_string()),
            _ => Err("name exactly one of a pod, a port or the uplink".to_string()),
        }
    }
}
