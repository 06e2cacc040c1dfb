//! Network policy in the control plane: the store of NetworkPolicy
//! objects and of the identities they select (local pods' namespace,
//! name, labels and named ports; namespaces' labels; pods of other nodes),
//! its persistence, and the compilation that feeds the data plane's
//! [`podrouter_router::policy::Policies`] snapshot.
//!
//! - [`model`]: the types; [`parse`]: NetworkPolicy YAML/JSON with
//!   field-path errors; [`eval`]: the plain reference semantics;
//!   [`compile`]: the lookup tables the workers read.
//!
//! Invariants: every change is all or nothing: it is applied to a copy,
//! the copy is written to `state_dir/policy.json` (temporary file,
//! fsync, rename), and only then replaces the store, so a refused or
//! unsaved change leaves both the store and the file as they were. The
//! caller (the daemon) recompiles and publishes after every change that
//! returns `Ok`, and after pods come and go.
pub mod compile;
pub mod eval;
pub mod model;
pub mod parse;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use podrouter_api::{
    DirectionInfo, EndpointInfo, ErrorCode, NamedPortSpec, NamespaceLabelParams, PeerPorts,
    PodIdentity, PodLabelParams, PodPolicyInfo, PolicyInfo,
};
use podrouter_router::policy::{DirRules, PolicyTable};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::eval::Direction;
use self::model::{Cluster, Endpoint, Labels, NamedPort, Policy, Protocol};

const FILE_VERSION: u32 = 1;
const FILE_NAME: &str = "policy.json";

/// Why a policy, label or endpoint call was refused (the store is then
/// unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Malformed or unsupported input; the message says where.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// `policy.json` could not be written.
    #[error("saving policy state: {0}")]
    NotSaved(String),
}

impl StoreError {
    /// The wire's error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Invalid(_) => ErrorCode::BadRequest,
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::NotSaved(_) => ErrorCode::Internal,
        }
    }
}

type CallError = StoreError;

fn bad(msg: impl Into<String>) -> CallError {
    StoreError::Invalid(msg.into())
}

/// A pod of another node, as `endpoint apply` gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteEndpoint {
    ip: Ipv4Addr,
    node: String,
    #[serde(flatten)]
    identity: PodIdentity,
}

/// The persisted form.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    /// Each policy as it was applied.
    policies: Vec<Value>,
    namespaces: BTreeMap<String, Labels>,
    /// Local pods' identities by attach id.
    pods: BTreeMap<String, PodIdentity>,
    endpoints: Vec<RemoteEndpoint>,
}

#[derive(Clone, Debug, Default)]
struct Data {
    policies: BTreeMap<(String, String), Policy>,
    namespaces: BTreeMap<String, Labels>,
    identities: BTreeMap<String, PodIdentity>,
    remote: BTreeMap<Ipv4Addr, RemoteEndpoint>,
}

/// Policies and identities, persisted in the state directory.
#[derive(Debug)]
pub struct PolicyStore {
    data: Data,
    dir: Option<PathBuf>,
}

/// A local pod as the daemon knows it: attach id and address.
pub type LocalPod<'a> = (&'a str, Ipv4Addr);

impl PolicyStore {
    /// A store that persists nothing (tests).
    pub fn in_memory() -> PolicyStore {
        PolicyStore {
            data: Data::default(),
            dir: None,
        }
    }

    /// Loads `dir/policy.json` (an absent file is an empty store; one
    /// that does not parse is an error, never silently replaced).
    pub fn open(dir: &Path) -> Result<PolicyStore, String> {
        let path = dir.join(FILE_NAME);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(PolicyStore {
                    data: Data::default(),
                    dir: Some(dir.to_owned()),
                })
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let corrupt = |why: String| {
            format!(
                "{} is unreadable ({why}); move it aside to start without policies, or fix it",
                path.display()
            )
        };
        let f: PolicyFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if f.version != FILE_VERSION {
            return Err(corrupt(format!(
                "version {} is not {FILE_VERSION}",
                f.version
            )));
        }
        let mut data = Data {
            namespaces: f.namespaces,
            identities: f.pods,
            ..Data::default()
        };
        for (i, v) in f.policies.iter().enumerate() {
            let text = serde_json::to_string(v).map_err(|e| corrupt(e.to_string()))?;
            for p in
                parse::parse_policies(&text).map_err(|e| corrupt(format!("policy {i}: {e}")))?
            {
                data.policies.insert(p.key(), p);
            }
        }
        for e in f.endpoints {
            data.remote.insert(e.ip, e);
        }
        Ok(PolicyStore {
            data,
            dir: Some(dir.to_owned()),
        })
    }

    fn save(&self, data: &Data) -> Result<(), CallError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let file = PolicyFile {
            version: FILE_VERSION,
            policies: data.policies.values().map(|p| p.source.clone()).collect(),
            namespaces: data.namespaces.clone(),
            pods: data.identities.clone(),
            endpoints: data.remote.values().cloned().collect(),
        };
        let internal = StoreError::NotSaved;
        let body = serde_json::to_vec_pretty(&file).map_err(|e| internal(e.to_string()))?;
        crate::durable::replace_file(dir, FILE_NAME, &body).map_err(|e| internal(e.to_string()))
    }

    /// Applies `change` to a copy, saves it, then keeps it.
    fn change<T>(
        &mut self,
        change: impl FnOnce(&mut Data) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let mut next = self.data.clone();
        let out = change(&mut next)?;
        self.save(&next)?;
        self.data = next;
        Ok(out)
    }

    pub fn policy_count(&self) -> usize {
        self.data.policies.len()
    }

    /// `policy apply`: every policy of `text`, or none.
    pub fn apply_policies(&mut self, text: &str) -> Result<Vec<String>, CallError> {
        let parsed = parse::parse_policies(text).map_err(|e| bad(e.to_string()))?;
        if parsed.is_empty() {
            return Err(bad("no NetworkPolicy in the input"));
        }
        self.change(|d| {
            Ok(parsed
                .into_iter()
                .map(|p| {
                    let name = format!("{}/{}", p.namespace, p.name);
                    d.policies.insert(p.key(), p);
                    name
                })
                .collect())
        })
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), CallError> {
        self.change(|d| {
            d.policies
                .remove(&(namespace.to_string(), name.to_string()))
                .map(|_| ())
                .ok_or_else(|| StoreError::NotFound(format!("no NetworkPolicy {namespace}/{name}")))
        })
    }

    /// A local pod's identity (`default/<id>` without labels if it was
    /// attached without one).
    fn identity(&self, id: &str) -> PodIdentity {
        self.data
            .identities
            .get(id)
            .cloned()
            .unwrap_or_else(|| PodIdentity {
                namespace: "default".into(),
                name: id.into(),
                ..PodIdentity::default()
            })
    }

    /// Records a pod's identity (validated); `None` forgets any.
    #[cfg(test)]
    pub fn set_identity(
        &mut self,
        id: &str,
        identity: Option<PodIdentity>,
    ) -> Result<(), CallError> {
        self.set_identities(&[(id.to_string(), identity)])
    }

    /// Records pods' identities (validated; `None` forgets one), in order,
    /// with one write (none if nothing changes): all of them or, on an error,
    /// none. For the identities of a batch of attaches and detaches.
    pub fn set_identities(
        &mut self,
        changes: &[(String, Option<PodIdentity>)],
    ) -> Result<(), CallError> {
        for i in changes.iter().filter_map(|(_, i)| i.as_ref()) {
            validate_identity(i)?;
        }
        let mut next = self.data.identities.clone();
        for (id, identity) in changes {
            match identity {
                Some(i) => next.insert(id.clone(), i.clone()),
                None => next.remove(id),
            };
        }
        if next == self.data.identities {
            return Ok(());
        }
        self.change(|d| {
            d.identities = next;
            Ok(())
        })
    }

    /// `pod label`: the pod's labels after the change.
    pub fn label_pod(
        &mut self,
        local: &[LocalPod],
        p: &PodLabelParams,
    ) -> Result<BTreeMap<String, String>, CallError> {
        let id = self.find_local(local, &p.pod)?.0.to_string();
        let mut identity = self.identity(&id);
        relabel(&mut identity.labels, &p.set, &p.remove)?;
        if let Some(ports) = &p.ports {
            identity.ports = ports.clone();
        }
        validate_identity(&identity)?;
        let labels = identity.labels.clone();
        self.change(|d| {
            d.identities.insert(id, identity);
            Ok(labels)
        })
    }

    /// `namespace label`: the namespace's labels after the change.
    pub fn label_namespace(
        &mut self,
        p: &NamespaceLabelParams,
    ) -> Result<BTreeMap<String, String>, CallError> {
        parse_name(&p.namespace, false).map_err(|e| bad(format!("namespace: {e}")))?;
        let mut labels = self
            .data
            .namespaces
            .get(&p.namespace)
            .cloned()
            .unwrap_or_default();
        relabel(&mut labels, &p.set, &p.remove)?;
        self.change(|d| {
            if labels.is_empty() {
                d.namespaces.remove(&p.namespace);
            } else {
                d.namespaces.insert(p.namespace.clone(), labels.clone());
            }
            Ok(labels)
        })
    }

    /// `endpoint apply`: pods of other nodes, added or replaced by address.
    pub fn apply_endpoints(
        &mut self,
        local: &[LocalPod],
        text: &str,
    ) -> Result<Vec<Ipv4Addr>, CallError> {
        let eps = parse_endpoints(text).map_err(bad)?;
        for e in &eps {
            if let Some((id, _)) = local.iter().find(|(_, ip)| *ip == e.ip) {
                return Err(bad(format!(
                    "{} is local pod {id}: label it with `podrouterctl pod label`",
                    e.ip
                )));
            }
        }
        self.change(|d| {
            Ok(eps
                .into_iter()
                .map(|e| {
                    let ip = e.ip;
                    d.remote.insert(ip, e);
                    ip
                })
                .collect())
        })
    }

    pub fn delete_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), CallError> {
        self.change(|d| {
            d.remote
                .remove(&ip)
                .map(|_| ())
                .ok_or_else(|| StoreError::NotFound(format!("no endpoint {ip}")))
        })
    }

    /// Every endpoint: local pods first, then other nodes'.
    pub fn list_endpoints(&self, local: &[LocalPod]) -> Vec<EndpointInfo> {
        let mut out: Vec<EndpointInfo> = local
            .iter()
            .map(|&(id, ip)| EndpointInfo {
                ip,
                node: "local".into(),
                id: Some(id.to_string()),
                identity: self.identity(id),
            })
            .collect();
        out.extend(self.data.remote.values().map(|e| EndpointInfo {
            ip: e.ip,
            node: e.node.clone(),
            id: None,
            identity: e.identity.clone(),
        }));
        out
    }

    /// The cluster as policy sees it: local pods and other nodes'.
    fn cluster(&self, local: &[LocalPod]) -> Cluster {
        let mut endpoints: Vec<Endpoint> = local
            .iter()
            .map(|&(id, ip)| endpoint(ip, &self.identity(id)))
            .collect();
        endpoints.extend(
            self.data
                .remote
                .values()
                .filter(|e| !local.iter().any(|(_, ip)| *ip == e.ip))
                .map(|e| endpoint(e.ip, &e.identity)),
        );
        Cluster {
            endpoints,
            namespaces: self.data.namespaces.clone(),
        }
    }

    fn policies(&self) -> Vec<Policy> {
        self.data.policies.values().cloned().collect()
    }

    /// The data plane's table for this node's pods.
    pub fn compile(&self, local: &[LocalPod], node_addrs: &[Ipv4Addr]) -> PolicyTable {
        let ips: Vec<Ipv4Addr> = local.iter().map(|(_, ip)| *ip).collect();
        compile::compile(&self.cluster(local), &self.policies(), &ips, node_addrs)
    }

    pub fn list(&self, local: &[LocalPod]) -> Vec<PolicyInfo> {
        let cluster = self.cluster(local);
        self.data
            .policies
            .values()
            .map(|p| {
                let mut types = Vec::new();
                if p.isolates_ingress {
                    types.push("Ingress".to_string());
                }
                if p.isolates_egress {
                    types.push("Egress".to_string());
                }
                PolicyInfo {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    pod_selector: p.pod_selector.to_string(),
                    policy_types: types,
                    ingress_rules: p.ingress.len(),
                    egress_rules: p.egress.len(),
                    selects: local
                        .iter()
                        .filter(|(_, ip)| {
                            cluster
                                .endpoint(*ip)
                                .is_some_and(|e| model::policy_selects(p, e))
                        })
                        .map(|(id, _)| id.to_string())
                        .collect(),
                    source: p.source.clone(),
                }
            })
            .collect()
    }

    /// A local pod by attach id, address or `namespace/name`.
    fn find_local<'a>(
        &self,
        local: &'a [LocalPod<'a>],
        pod: &str,
    ) -> Result<LocalPod<'a>, CallError> {
        let ip: Option<Ipv4Addr> = pod.parse().ok();
        local
            .iter()
            .find(|(id, a)| *id == pod || Some(*a) == ip)
            .or_else(|| {
                local.iter().find(|(id, _)| {
                    let i = self.identity(id);
                    format!("{}/{}", i.namespace, i.name) == pod
                })
            })
            .copied()
            .ok_or_else(|| StoreError::NotFound(format!("no local pod {pod}")))
    }

    /// `policy show`: one local pod's effective rules.
    pub fn show(
        &self,
        local: &[LocalPod],
        node_addrs: &[Ipv4Addr],
        pod: &str,
    ) -> Result<PodPolicyInfo, CallError> {
        let (id, ip) = self.find_local(local, pod)?;
        let cluster = self.cluster(local);
        let policies = self.policies();
        let ep = cluster.endpoint(ip).expect("local pods are in the cluster");
        let names = |dir| {
            policies
                .iter()
                .filter(|p| {
                    model::policy_selects(p, ep)
                        && match dir {
                            Direction::Ingress => p.isolates_ingress,
                            Direction::Egress => p.isolates_egress,
                        }
                })
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect()
        };
        let info = |dir| {
            compile::compile_direction(&cluster, &policies, ep, dir)
                .map(|r| direction_info(&r, node_addrs))
        };
        Ok(PodPolicyInfo {
            id: id.to_string(),
            ip,
            identity: self.identity(id),
            ingress_policies: names(Direction::Ingress),
            egress_policies: names(Direction::Egress),
            ingress: info(Direction::Ingress),
            egress: info(Direction::Egress),
        })
    }
}

fn direction_info(r: &DirRules, node_addrs: &[Ipv4Addr]) -> DirectionInfo {
    let (exact, ranges) = r.describe();
    let mut peers: Vec<PeerPorts> = node_addrs
        .iter()
        .map(|a| PeerPorts {
            peer: format!("{a} (this node)"),
            ports: "any".into(),
        })
        .collect();
    peers.extend(exact.into_iter().map(|(a, ports)| PeerPorts {
        peer: a.to_string(),
        ports,
    }));
    peers.extend(ranges.into_iter().map(|(f, l, ports)| PeerPorts {
        peer: if f == l {
            f.to_string()
        } else {
            format!("{f}-{l}")
        },
        ports,
    }));
    DirectionInfo { peers }
}

fn endpoint(ip: Ipv4Addr, i: &PodIdentity) -> Endpoint {
    Endpoint {
        ip,
        namespace: i.namespace.clone(),
        name: i.name.clone(),
        labels: i.labels.clone(),
        // Validated when stored.
        ports: i
            .ports
            .iter()
            .filter_map(|p| {
                Protocol::parse(&p.protocol).map(|protocol| NamedPort {
                    name: p.name.clone(),
                    protocol,
                    port: p.port,
                })
            })
            .collect(),
    }
}

fn relabel(
    labels: &mut BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<(), CallError> {
    for k in remove {
        labels.remove(k);
    }
    for (k, v) in set {
        labels.insert(k.clone(), v.clone());
    }
    validate_labels(labels)
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), CallError> {
    for (k, v) in labels {
        parse::label_key(k, k).map_err(|(_, m)| bad(m))?;
        let ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && (v.is_empty()
                || (v.as_bytes()[0].is_ascii_alphanumeric()
                    && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()));
        if !ok {
            return Err(bad(format!("label {k}: {v:?} is not a valid label value")));
        }
    }
    Ok(())
}

fn parse_name(s: &str, subdomain: bool) -> Result<(), String> {
    parse::dns_name(s, "", subdomain).map_err(|(_, m)| m)
}

/// Checks an identity given at attach, by label or in an endpoint file.
pub fn validate_identity(i: &PodIdentity) -> Result<(), CallError> {
    parse_name(&i.namespace, false).map_err(|e| bad(format!("namespace: {e}")))?;
    if i.name.is_empty() || i.name.len() > 253 {
        return Err(bad("name: must be 1-253 characters"));
    }
    validate_labels(&i.labels)?;
    for p in &i.ports {
        validate_named_port(p)?;
    }
    Ok(())
}

fn validate_named_port(p: &NamedPortSpec) -> Result<(), CallError> {
    if Protocol::parse(&p.protocol).is_none() {
        return Err(bad(format!(
            "port {}: protocol {:?} is not TCP, UDP or SCTP",
            p.name, p.protocol
        )));
    }
    if p.port == 0 {
        return Err(bad(format!("port {}: 0 is not a port", p.name)));
    }
    let n = &p.name;
    if n.is_empty()
        || n.len() > 15
        || !n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad(format!(
            "port name {n:?}: 1-15 lower-case letters, digits, '-'"
        )));
    }
    Ok(())
}

/// An endpoint file: YAML or JSON documents, each one endpoint or a list.
fn parse_endpoints(text: &str) -> Result<Vec<RemoteEndpoint>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        let items = match v {
            Value::Null => continue,
            Value::Array(a) => a,
            other => vec![other],
        };
        for (j, item) in items.into_iter().enumerate() {
            let e: RemoteEndpoint = serde_json::from_value(item)
                .map_err(|e| format!("document {} endpoint {}: {e}", i + 1, j + 1))?;
            validate_identity(&e.identity)
                .map_err(|m| format!("document {} endpoint {} ({}): {m}", i + 1, j + 1, e.ip))?;
            if e.node.is_empty() {
                return Err(format!(
                    "document {} endpoint {}: node must not be empty",
                    i + 1,
                    j + 1
                ));
            }
            out.push(e);
        }
    }
    if out.is_empty() {
        return Err("no endpoint in the input".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrouter_router::policy::{Decision, PROTO_TCP};

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("podrouter-policy-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    const DENY_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
    const ALLOW_BLUE: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: blue, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}\n";

    fn ident(ns: &str, name: &str, labels: &[(&str, &str)]) -> PodIdentity {
        PodIdentity {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![],
        }
    }

    #[test]
    fn store_survives_a_restart_and_refusals_change_nothing() {
        let d = tempdir("persist");
        let a: Ipv4Addr = "10.244.0.2".parse().unwrap();
        let b: Ipv4Addr = "10.244.0.3".parse().unwrap();
        let remote: Ipv4Addr = "10.244.1.2".parse().unwrap();
        let local = [("pa", a), ("pb", b)];
        let mut s = PolicyStore::open(&d).unwrap();
        s.set_identity("pa", Some(ident("x", "a", &[("app", "a")])))
            .unwrap();
        s.set_identity("pb", Some(ident("y", "b", &[]))).unwrap();
        assert_eq!(
            s.apply_policies(&format!("{DENY_X}---\n{ALLOW_BLUE}"))
                .unwrap(),
            vec!["x/deny", "x/blue"]
        );
        let t = s.compile(&local, &[]);
        assert_eq!(t.check(b, a, PROTO_TCP, 80), Decision::DenyIngress);
        s.label_namespace(&NamespaceLabelParams {
            namespace: "y".into(),
            set: [("team".to_string(), "blue".to_string())].into(),
            remove: vec![],
        })
        .unwrap();
        assert_eq!(
            s.compile(&local, &[]).check(b, a, PROTO_TCP, 80),
            Decision::Allow
        );
        s.apply_endpoints(
            &local,
            "- {ip: 10.244.1.2, node: n2, namespace: z, name: c, labels: {app: c}}\n",
        )
        .unwrap();
        assert_eq!(
            s.compile(&local, &[]).check(remote, a, PROTO_TCP, 80),
            Decision::DenyIngress
        );

        // Refused: a bad policy in a file of good ones, an endpoint on a
        // local address, a bad label. Nothing changes.
        let before = fs::read_to_string(d.join(FILE_NAME)).unwrap();
        let bad_file = format!("{DENY_X}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: new}}\nspec: {{podSelector: {{}}, ingress: [{{ports: [{{port: 0}}]}}]}}\n");
        let e = s.apply_policies(&bad_file).unwrap_err();
        assert!(
            e.to_string()
                .contains("document 2: spec.ingress[0].ports[0].port"),
            "{e:?}"
        );
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(s
            .apply_endpoints(&local, "{ip: 10.244.0.2, node: n2, namespace: z, name: c}")
            .is_err());
        assert!(s
            .label_pod(
                &local,
                &PodLabelParams {
                    pod: "pa".into(),
                    set: [("app".to_string(), "-bad-".to_string())].into(),
                    remove: vec![],
                    ports: None,
                }
            )
            .is_err());
        assert_eq!(fs::read_to_string(d.join(FILE_NAME)).unwrap(), before);
        assert_eq!(s.policy_count(), 2);

        // A restart reads back the same.
        let s2 = PolicyStore::open(&d).unwrap();
        assert_eq!(s2.policy_count(), 2);
        let t = s2.compile(&local, &[]);
        assert_eq!(t.check(b, a, PROTO_TCP, 80), Decision::Allow);
        assert_eq!(t.check(remote, a, PROTO_TCP, 80), Decision::DenyIngress);
        let shown = s2.show(&local, &[], "x/a").unwrap();
        assert_eq!(shown.ingress_policies, vec!["x/blue", "x/deny"]);
        assert!(shown.egress.is_none());
        assert_eq!(shown.ingress.unwrap().peers[0].peer, "10.244.0.3");
        assert_eq!(s2.list(&local)[0].selects, vec!["pa"]);
        assert_eq!(s2.list_endpoints(&local).len(), 3);

        let mut s2 = s2;
        s2.delete_policy("x", "deny").unwrap();
        assert_eq!(
            s2.delete_policy("x", "deny").unwrap_err().code(),
            ErrorCode::NotFound
        );
        assert_eq!(PolicyStore::open(&d).unwrap().policy_count(), 1);
        fs::write(d.join(FILE_NAME), "{").unwrap();
        assert!(PolicyStore::open(&d).unwrap_err().contains("unreadable"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn pods_are_found_and_labelled() {
        let mut s = PolicyStore::in_memory();
        let a: Ipv4Addr = "10.244.0.2".parse().unwrap();
        let local = [("cni:abc:eth0", a)];
        // No identity: default/<id>.
        let shown = s.show(&local, &[], "10.244.0.2").unwrap();
        assert_eq!(shown.identity.namespace, "default");
        assert!(shown.ingress.is_none() && shown.egress.is_none());
        let labels = s
            .label_pod(
                &local,
                &PodLabelParams {
                    pod: "cni:abc:eth0".into(),
                    set: [("app".to_string(), "web".to_string())].into(),
                    remove: vec![],
                    ports: Some(vec![NamedPortSpec {
                        name: "http".into(),
                        protocol: "TCP".into(),
                        port: 8080,
                    }]),
                },
            )
            .unwrap();
        assert_eq!(labels["app"], "web");
        assert!(s.show(&local, &[], "default/cni:abc:eth0").is_ok());
        assert_eq!(
            s.show(&local, &[], "nope").unwrap_err().code(),
            ErrorCode::NotFound
        );
        let bad_port = PodIdentity {
            ports: vec![NamedPortSpec {
                name: "x".into(),
                protocol: "ICMP".into(),
                port: 1,
            }],
            ..ident("x", "a", &[])
        };
        assert!(s.set_identity("p", Some(bad_port)).is_err());
    }
}
