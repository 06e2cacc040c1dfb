//! The built-in Service load balancer in the control plane (issue 17 part
//! 2, opt-in): the store of Service and EndpointSlice objects, its
//! persistence, and the compilation into the data plane's
//! [`ServiceTable`] snapshot.
//!
//! - [`parse`]: the objects, from YAML or JSON, with field-path errors.
//!
//! Invariants: every change is all or nothing: it is applied to a copy,
//! the copy is written to `state_dir/services.json` (temporary file,
//! fsync, rename), and only then replaces the store, so a refused or
//! unsaved change leaves both as they were. The caller (the daemon)
//! recompiles and publishes after every change that returns `Ok`.
//! Counters live outside the persisted data: each service port and
//! backend keeps its counters across recompilations for as long as it
//! stays in the table (lost on restart, like every counter).
//!
//! What a ClusterIP port balances to: the addresses of the ready
//! endpoints of every EndpointSlice labelled with the service's name in
//! its namespace, at the slice port of the same name and protocol as the
//! service port (Kubernetes' rule: the slice port is the resolved
//! `targetPort`); with `internalTrafficPolicy: Local`, only those whose
//! `nodeName` is this node's (none: the port is refused, as kube-proxy
//! does). Sorted and deduplicated, so the Maglev table is the same
//! whatever order the slices came in.
pub mod parse;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use podrouter_api::{ErrorCode, ServiceBackendInfo, ServiceInfo, ServicePortInfo};
use podrouter_router::maglev;
use podrouter_router::service::{
    Backend, BackendCounters, FrontendSpec, ServiceTable, SvcCounters,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::parse::{Object, Service, Slice};

const FILE_VERSION: u32 = 1;
const FILE_NAME: &str = "services.json";

/// Why a service call was refused (the store is then unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Malformed or unsupported input; the message says where.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// `services.json` could not be written.
    #[error("saving service state: {0}")]
    NotSaved(String),
}

impl ServiceError {
    /// The wire's error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Invalid(_) => ErrorCode::BadRequest,
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::NotSaved(_) => ErrorCode::Internal,
        }
    }
}

/// The persisted form: the objects as applied.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    version: u32,
    services: Vec<Value>,
    endpoint_slices: Vec<Value>,
}

type Key = (String, String);

#[derive(Clone, Debug, Default)]
struct Data {
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, Slice>,
}

/// A service port with its ClusterIP, its ready backends and its
/// draining ones (address, port).
type Resolved<'a> = (
    &'a Service,
    Ipv4Addr,
    &'a parse::ServicePort,
    Vec<(Ipv4Addr, u16)>,
    Vec<(Ipv4Addr, u16)>,
);

/// (namespace, name, protocol, port) of a service port.
type PortKey = (String, String, u8, u16);

/// Services and EndpointSlices, persisted in the state directory.
#[derive(Debug)]
pub struct ServiceStore {
    data: Data,
    dir: Option<PathBuf>,
    /// This node's name (`node_name`), for `internalTrafficPolicy: Local`.
    node_name: String,
    port_counters: HashMap<PortKey, Arc<SvcCounters>>,
    backend_counters: HashMap<(PortKey, Ipv4Addr, u16), Arc<BackendCounters>>,
}

impl ServiceStore {
    /// A store that persists nothing (tests), on the node `node_name`.
    pub fn in_memory(node_name: &str) -> ServiceStore {
        ServiceStore {
            data: Data::default(),
            dir: None,
            node_name: node_name.to_string(),
            port_counters: HashMap::new(),
            backend_counters: HashMap::new(),
        }
    }

    /// Loads `dir/services.json` (absent: an empty store; one that does
    /// not parse is an error, never silently replaced), for the node
    /// `node_name`.
    pub fn open(dir: &Path, node_name: &str) -> Result<ServiceStore, String> {
        let mut store = ServiceStore {
            dir: Some(dir.to_owned()),
            ..ServiceStore::in_memory(node_name)
        };
        let path = dir.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let corrupt = |why: String| {
            format!(
                "{} is unreadable ({why}); move it aside to start without services, or fix it",
                path.display()
            )
        };
        let f: ServiceFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if f.version != FILE_VERSION {
            return Err(corrupt(format!(
                "version {} is not {FILE_VERSION}",
                f.version
            )));
        }
        for v in f.services.iter().chain(&f.endpoint_slices) {
            let text = serde_json::to_string(v).map_err(|e| corrupt(e.to_string()))?;
            for o in parse::parse_objects(&text).map_err(corrupt)? {
                insert(&mut store.data, o);
            }
        }
        Ok(store)
    }

    fn save(&self, data: &Data) -> Result<(), ServiceError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let file = ServiceFile {
            version: FILE_VERSION,
            services: data.services.values().map(|s| s.source.clone()).collect(),
            endpoint_slices: data.slices.values().map(|s| s.source.clone()).collect(),
        };
        let internal = ServiceError::NotSaved;
        let body = serde_json::to_vec_pretty(&file).map_err(|e| internal(e.to_string()))?;
        crate::durable::replace_file(dir, FILE_NAME, &body).map_err(|e| internal(e.to_string()))
    }

    fn change<T>(
        &mut self,
        change: impl FnOnce(&mut Data) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let mut next = self.data.clone();
        let out = change(&mut next)?;
        check_cluster_ips(&next)?;
        self.save(&next)?;
        self.data = next;
        Ok(out)
    }

    /// `service apply`: every object of `text`, or none. Returns what
    /// was applied (`service NS/NAME`, `endpointslice NS/NAME`).
    pub fn apply(&mut self, text: &str) -> Result<Vec<String>, ServiceError> {
        let objs = parse::parse_objects(text).map_err(ServiceError::Invalid)?;
        if objs.is_empty() {
            return Err(ServiceError::Invalid(
                "no Service or EndpointSlice in the input".into(),
            ));
        }
        self.change(|d| {
            Ok(objs
                .into_iter()
                .map(|o| {
                    let what = o.describe();
                    insert(d, o);
                    what
                })
                .collect())
        })
    }

    /// `service delete`: the Service and the EndpointSlices labelled with
    /// its name (Kubernetes garbage-collects them with it).
    pub fn delete(&mut self, namespace: &str, name: &str) -> Result<(), ServiceError> {
        self.change(|d| {
            let key = (namespace.to_string(), name.to_string());
            d.services
                .remove(&key)
                .ok_or_else(|| ServiceError::NotFound(format!("no Service {namespace}/{name}")))?;
            d.slices
                .retain(|_, s| !(s.namespace == namespace && s.service == name));
            Ok(())
        })
    }

    pub fn service_count(&self) -> usize {
        self.data.services.len()
    }

    /// The ready backends of every service port, in a stable order.
    /// Linear in the objects: the slices are grouped by their Service
    /// once (a cluster has thousands of both).
    fn resolve(&self) -> Vec<Resolved<'_>> {
        let mut slices_of: HashMap<(&str, &str), Vec<&Slice>> = HashMap::new();
        for e in self.data.slices.values() {
            slices_of
                .entry((e.namespace.as_str(), e.service.as_str()))
                .or_default()
                .push(e);
        }
        let mut out = Vec::new();
        for s in self.data.services.values() {
            let Some(vip) = s.cluster_ip else { continue };
            let slices = slices_of
                .get(&(s.namespace.as_str(), s.name.as_str()))
                .map_or(&[][..], Vec::as_slice);
            for p in &s.ports {
                let mut backends = BTreeSet::new();
                let mut draining = BTreeSet::new();
                for e in slices {
                    let Some(sp) = e
                        .ports
                        .iter()
                        .find(|sp| sp.name == p.name && sp.protocol == p.protocol)
                    else {
                        continue;
                    };
                    let here = |ep: &&parse::Endpoint| {
                        !s.node_local || ep.node_name.as_deref() == Some(self.node_name.as_str())
                    };
                    for ep in e.endpoints.iter().filter(here) {
                        for a in &ep.addresses {
                            if ep.ready {
                                backends.insert((*a, sp.port));
                            } else if ep.serving {
                                draining.insert((*a, sp.port));
                            }
                        }
                    }
                }
                // One address ready in a slice and terminating in another
                // (a slice not yet updated) is ready.
                let draining: Vec<(Ipv4Addr, u16)> =
                    draining.difference(&backends).copied().collect();
                out.push((s, vip, p, backends.into_iter().collect(), draining));
            }
        }
        out
    }

    /// The data plane's table: every ClusterIP port with its ready
    /// backends, counters carried over from the previous table.
    pub fn compile(&mut self) -> ServiceTable {
        let mut port_counters = HashMap::new();
        let mut backend_counters = HashMap::new();
        let mut table = ServiceTable::new();
        for (s, vip, p, backends, draining) in self.resolve() {
            let pk: PortKey = (
                s.namespace.clone(),
                s.name.clone(),
                p.protocol.number(),
                p.port,
            );
            let counters = self.port_counters.get(&pk).cloned().unwrap_or_default();
            port_counters.insert(pk.clone(), counters.clone());
            let mut with_counters = |list: Vec<(Ipv4Addr, u16)>| -> Vec<Backend> {
                list.into_iter()
                    .map(|(addr, port)| {
                        let bk = (pk.clone(), addr, port);
                        let c = self.backend_counters.get(&bk).cloned().unwrap_or_default();
                        backend_counters.insert(bk, c.clone());
                        Backend {
                            addr,
                            port,
                            counters: c,
                        }
                    })
                    .collect()
            };
            let backends = with_counters(backends);
            let draining = with_counters(draining);
            let spec = FrontendSpec {
                vip,
                port: p.port,
                proto: p.protocol.number(),
                backends,
                draining,
                affinity_secs: s.affinity_secs,
                counters,
            };
            let size = maglev::size_for(spec.backends.len());
            if let Err(e) = table.insert(spec, size) {
                // Only more backends than the table holds can fail.
                log::error!(
                    "service {}/{} port {}: {e}; not balanced",
                    s.namespace,
                    s.name,
                    p.port
                );
            }
        }
        self.port_counters = port_counters;
        self.backend_counters = backend_counters;
        table
    }

    /// `service list`: every service with its ports, backends and
    /// counters.
    pub fn list(&self) -> Vec<ServiceInfo> {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        // Services come in key order, and so do their resolved ports.
        let index: HashMap<(&str, &str), usize> = self
            .data
            .services
            .keys()
            .enumerate()
            .map(|(i, (ns, name))| ((ns.as_str(), name.as_str()), i))
            .collect();
        let mut out: Vec<ServiceInfo> = self
            .data
            .services
            .values()
            .map(|s| ServiceInfo {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                cluster_ip: s.cluster_ip,
                affinity_secs: s.affinity_secs,
                ports: Vec::new(),
            })
            .collect();
        for (s, _, p, backends, _) in self.resolve() {
            let pk: PortKey = (
                s.namespace.clone(),
                s.name.clone(),
                p.protocol.number(),
                p.port,
            );
            let pc = self.port_counters.get(&pk);
            let info = ServicePortInfo {
                name: p.name.clone(),
                protocol: p.protocol.to_string(),
                port: p.port,
                packets: pc.map_or(0, |c| load(&c.packets)),
                flows: pc.map_or(0, |c| load(&c.flows)),
                rejected: pc.map_or(0, |c| load(&c.rejected)),
                cut: pc.map_or(0, |c| load(&c.cut)),
                backends: backends
                    .into_iter()
                    .map(|(addr, port)| {
                        let bc = self.backend_counters.get(&(pk.clone(), addr, port));
                        ServiceBackendInfo {
                            ip: addr,
                            port,
                            packets: bc.map_or(0, |c| load(&c.packets)),
                            flows: bc.map_or(0, |c| load(&c.flows)),
                        }
                    })
                    .collect(),
            };
            if let Some(&i) = index.get(&(s.namespace.as_str(), s.name.as_str())) {
                out[i].ports.push(info);
            }
        }
        out
    }
}

fn insert(d: &mut Data, o: Object) {
    match o {
        Object::Service(s) => {
            d.services.insert((s.namespace.clone(), s.name.clone()), s);
        }
        Object::Slice(s) => {
            d.slices.insert((s.namespace.clone(), s.name.clone()), s);
        }
    }
}

/// Two services may not claim one ClusterIP port.
fn check_cluster_ips(d: &Data) -> Result<(), ServiceError> {
    let mut seen: HashMap<(Ipv4Addr, u8, u16), &Service> = HashMap::new();
    for s in d.services.values() {
        let Some(vip) = s.cluster_ip else { continue };
        for p in &s.ports {
            if let Some(other) = seen.insert((vip, p.protocol.number(), p.port), s) {
                if (&other.namespace, &other.name) != (&s.namespace, &s.name) {
                    return Err(ServiceError::Invalid(format!(
                        "service {}/{}: {vip}:{} {} is already service {}/{}'s",
                        s.namespace, s.name, p.port, p.protocol, other.namespace, other.name
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "podrouter-svc-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    const DNS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints:
- addresses: [10.244.2.5]
- addresses: [10.244.1.5]
  conditions: {ready: true}
- addresses: [10.244.1.6]
  conditions: {ready: false}
- addresses: [10.244.1.7]
  conditions: {ready: false, serving: true, terminating: true}
ports:
- {name: dns, port: 5353, protocol: UDP}
- {name: dns-tcp, port: 5353, protocol: TCP}
"#;

    #[test]
    fn services_compile_survive_a_restart_and_refusals_change_nothing() {
        let dir = tempdir("store");
        let mut s = ServiceStore::open(&dir, "node-a").unwrap();
        assert_eq!(
            s.apply(DNS).unwrap(),
            ["service kube-system/dns", "endpointslice kube-system/dns-1"]
        );
        let t = s.compile();
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let f = t.frontend(vip, 53, 17).unwrap();
        let b: Vec<_> = f.backends().iter().map(|b| (b.addr, b.port)).collect();
        assert_eq!(
            b,
            [
                (Ipv4Addr::new(10, 244, 1, 5), 5353),
                (Ipv4Addr::new(10, 244, 2, 5), 5353)
            ],
            "ready ones only, sorted"
        );
        let d: Vec<_> = f.draining().iter().map(|b| b.addr).collect();
        assert_eq!(d, [Ipv4Addr::new(10, 244, 1, 7)], "terminating, serving");
        assert!(t.frontend(vip, 53, 6).is_some());
        // Counters carry over a recompilation.
        f.count(Some(&f.backends()[0]), true);
        let t2 = s.compile();
        assert_eq!(
            t2.frontend(vip, 53, 17)
                .unwrap()
                .counters()
                .flows
                .load(Ordering::Relaxed),
            1
        );
        let l = s.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].ports.len(), 2);
        let udp = l[0].ports.iter().find(|p| p.protocol == "UDP").unwrap();
        assert_eq!((udp.flows, udp.backends[0].flows), (1, 1));
        // Refused: bad input, a ClusterIP port already taken; nothing changes.
        let before = fs::read(dir.join(FILE_NAME)).unwrap();
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 1.2.3}";
        assert!(matches!(s.apply(bad), Err(ServiceError::Invalid(_))));
        let clash = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: kube-system}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 53, protocol: UDP}]}";
        let e = s.apply(clash).unwrap_err().to_string();
        assert!(e.contains("already service kube-system/dns's"), "{e}");
        assert_eq!(fs::read(dir.join(FILE_NAME)).unwrap(), before);
        assert_eq!(s.service_count(), 1);
        // A restart finds the same.
        let mut again = ServiceStore::open(&dir, "node-a").unwrap();
        assert_eq!(again.data.services.len(), 1);
        assert_eq!(again.data.slices.len(), 1);
        assert_eq!(again.compile().len(), 2);
        // Delete takes the slices along.
        assert!(matches!(
            again.delete("kube-system", "nope"),
            Err(ServiceError::NotFound(_))
        ));
        again.delete("kube-system", "dns").unwrap();
        assert!(again.compile().is_empty());
        assert!(ServiceStore::open(&dir, "node-a")
            .unwrap()
            .data
            .slices
            .is_empty());
        // A corrupt file is an error, not an empty store.
        fs::write(dir.join(FILE_NAME), "{").unwrap();
        assert!(ServiceStore::open(&dir, "node-a").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `n` Services of one TCP port each, with one EndpointSlice of two
    /// endpoints each, as one multi-document text (what `kubectl get
    /// svc,endpointslices -A -o yaml` of a big cluster amounts to).
    pub(crate) fn many_services(n: u32) -> String {
        let mut text = String::new();
        for i in 0..n {
            let vip = Ipv4Addr::from(0x0a60_1000 + i);
            let b = 0x0af5_0000 + 2 * i;
            let _ = write!(
                text,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: many}}\n\
                 spec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s{i}-1, namespace: many, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
                 addressType: IPv4\nendpoints: [{{addresses: [{}]}}, {{addresses: [{}]}}]\n\
                 ports: [{{name: http, port: 8080, protocol: TCP}}]\n---\n",
                Ipv4Addr::from(b),
                Ipv4Addr::from(b + 1)
            );
        }
        text
    }

    #[test]
    fn ten_thousand_services_apply_compile_and_list_in_bounded_time() {
        let n = 10_000;
        let text = many_services(n);
        let dir = tempdir("many");
        let mut s = ServiceStore::open(&dir, "node-a").unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(s.apply(&text).unwrap().len(), 2 * n as usize);
        let applied = t0.elapsed();
        let t1 = std::time::Instant::now();
        let table = s.compile();
        let compiled = t1.elapsed();
        let t2 = std::time::Instant::now();
        let list = s.list();
        let listed = t2.elapsed();
        eprintln!("{n} services: apply {applied:?}, compile {compiled:?}, list {listed:?}");
        assert_eq!(table.len(), n as usize);
        assert_eq!(list.len(), n as usize);
        assert!(list
            .iter()
            .all(|i| i.ports.len() == 1 && i.ports[0].backends.len() == 2));
        let last = Ipv4Addr::from(0x0a60_1000 + n - 1);
        let f = table.frontend(last, 80, 6).unwrap();
        assert_eq!(f.backends().len(), 2);
        assert_eq!(f.backends()[0].port, 8080);
        // Seconds at most even in a debug build on a busy machine: this
        // is the call a controller makes for a whole cluster's Services.
        let bound = std::time::Duration::from_secs(if cfg!(debug_assertions) { 60 } else { 5 });
        assert!(
            applied + compiled + listed < bound,
            "apply {applied:?} + compile {compiled:?} + list {listed:?} over {bound:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let local = |policy: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
                 spec: {{clusterIP: 10.96.0.20, internalTrafficPolicy: {policy}, \
                 ports: [{{port: 80}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}\n\
                 addressType: IPv4\nendpoints:\n\
                 - {{addresses: [10.244.1.7], nodeName: node-a}}\n\
                 - {{addresses: [10.244.2.7], nodeName: node-b}}\n\
                 - {{addresses: [10.244.3.7]}}\nports: [{{port: 8080}}]\n"
            )
        };
        let vip = Ipv4Addr::new(10, 96, 0, 20);
        let backends = |s: &mut ServiceStore| -> Vec<Ipv4Addr> {
            let t = s.compile();
            t.frontend(vip, 80, 6)
                .unwrap()
                .backends()
                .iter()
                .map(|b| b.addr)
                .collect()
        };
        let mut a = ServiceStore::in_memory("node-a");
        a.apply(&local("Cluster")).unwrap();
        assert_eq!(backends(&mut a).len(), 3);
        a.apply(&local("Local")).unwrap();
        assert_eq!(backends(&mut a), [Ipv4Addr::new(10, 244, 1, 7)]);
        // A node with no endpoint of its own: nothing to balance to (the
        // data path refuses), not the other nodes' endpoints.
        let mut c = ServiceStore::in_memory("node-c");
        c.apply(&local("Local")).unwrap();
        assert!(backends(&mut c).is_empty());
    }
}
