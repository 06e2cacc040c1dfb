//! `podrouterctl service`: the built-in Service load balancer's objects
//! (apply, delete, list with per-port and per-backend counters).
use std::path::PathBuf;

use clap::Subcommand;
use podrouter_api::{Call, ServiceInfo, ServiceRef, TextParams};

use crate::table::Table;

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Add or replace the Service and EndpointSlice objects of a YAML or
    /// JSON file (`---` separated or a `List`, as `kubectl get -o yaml`
    /// prints them; `-` reads standard input); all or nothing.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Remove a Service and its EndpointSlices, NAMESPACE/NAME.
    Delete { service: String },
    /// Every Service: ClusterIP ports, ready backends, counters.
    List,
}

/// The call a service command makes.
pub fn call(command: ServiceCommand) -> Result<Call, String> {
    Ok(match command {
        ServiceCommand::Apply { file } => Call::ServiceApply(TextParams {
            text: crate::read_file(&file)?,
        }),
        ServiceCommand::Delete { service } => {
            let (namespace, name) = service
                .split_once('/')
                .ok_or_else(|| format!("{service:?} is not NAMESPACE/NAME"))?;
            Call::ServiceDelete(ServiceRef {
                namespace: namespace.into(),
                name: name.into(),
            })
        }
        ServiceCommand::List => Call::ServiceList,
    })
}

/// `service list` as a table: one row per service port, then one per
/// backend under it.
pub fn table(services: &[ServiceInfo]) -> String {
    let mut t = Table::new(&[
        "SERVICE",
        "CLUSTER-IP",
        "PORT",
        "BACKEND",
        "PACKETS",
        "FLOWS",
        "REJECTED",
        "CUT",
        "AFFINITY",
    ]);
    for s in services {
        let name = format!("{}/{}", s.namespace, s.name);
        let ip = s
            .cluster_ip
            .map_or_else(|| "None".into(), |ip| ip.to_string());
        let affinity = if s.affinity_secs == 0 {
            "-".to_string()
        } else {
            format!("ClientIP {}s", s.affinity_secs)
        };
        if s.ports.is_empty() {
            t.row([name.clone(), ip.clone(), "-".into()]);
        }
        for p in &s.ports {
            let port = if p.name.is_empty() {
                format!("{}/{}", p.port, p.protocol)
            } else {
                format!("{}/{} ({})", p.port, p.protocol, p.name)
            };
            let backend = if p.backends.is_empty() {
                "(none ready)".to_string()
            } else {
                format!("{} ready", p.backends.len())
            };
            t.row([
                name.clone(),
                ip.clone(),
                port,
                backend,
                p.packets.to_string(),
                p.flows.to_string(),
                p.rejected.to_string(),
                p.cut.to_string(),
                affinity.clone(),
            ]);
            for b in &p.backends {
                t.row([
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{}:{}", b.ip, b.port),
                    b.packets.to_string(),
                    b.flows.to_string(),
                ]);
            }
        }
    }
    t.render()
}
