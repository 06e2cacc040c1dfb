//! Parsing Service (`v1`) and EndpointSlice (`discovery.k8s.io/v1`)
//! objects from what `kubectl get -o yaml` prints: YAML or JSON, one or
//! more `---`-separated documents, each one of them or a `List` of them.
//!
//! Invariants: a document is turned into a valid [`Object`] or refused
//! with the path of the offending field (`document 2:
//! items[0].spec.ports[1].port: ...`); a file with any refused document
//! yields nothing. What `kubectl` prints and this node does not act on is
//! accepted and ignored where it changes nothing for ClusterIP traffic
//! (`status`, `metadata` other than name, namespace and the service-name
//! label, NodePorts and load-balancer fields, which the node's kube-proxy
//! keeps); an unknown field is refused, so nobody believes something is in
//! force that is not.
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::policy::model::Protocol;
use crate::policy::parse::{array, dns_name, err, join, object, only_fields, string, Res};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default and largest `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_SECS: u32 = 10_800;
pub const MAX_AFFINITY_SECS: u32 = 86_400;

/// One service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for a service's only, unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A Service as the load balancer needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `None` for a headless service (`clusterIP: None`) or one without
    /// an address yet: nothing to balance.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: its timeout; 0 without.
    pub affinity_secs: u32,
    /// `internalTrafficPolicy: Local`: only the endpoints on this node
    /// (their `nodeName`) are backends.
    pub node_local: bool,
    /// The object as applied.
    pub source: Value,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<Ipv4Addr>,
    /// `conditions.ready` (absent: ready, as Kubernetes reads it).
    pub ready: bool,
    /// `conditions.serving`: ready or not, it still answers (a terminating
    /// pod draining its connections); absent: as `ready`, as Kubernetes
    /// reads it.
    pub serving: bool,
    /// `nodeName`: the node the endpoint runs on, if given.
    pub node_name: Option<String>,
}

/// One port of a slice: the backends' port for the service port of the
/// same name and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// An EndpointSlice as the load balancer needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub namespace: String,
    pub name: String,
    /// Its Service's name (the `kubernetes.io/service-name` label).
    pub service: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<SlicePort>,
    pub source: Value,
}

/// One parsed document (or `List` item).
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Service),
    Slice(Slice),
}

impl Object {
    /// `service NS/NAME` or `endpointslice NS/NAME`.
    pub fn describe(&self) -> String {
        match self {
            Object::Service(s) => format!("service {}/{}", s.namespace, s.name),
            Object::Slice(s) => format!("endpointslice {}/{}", s.namespace, s.name),
        }
    }
}

/// Parses every Service and EndpointSlice of `text` (YAML or JSON); the
/// error names the document and the field.
pub fn parse_objects(text: &str) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = Value::deserialize(doc)
            .map_err(|e| format!("document {document}: not valid YAML or JSON: {e}"))?;
        let wrap = |(path, msg): (String, String)| {
            if path.is_empty() {
                format!("document {document}: {msg}")
            } else {
                format!("document {document}: {path}: {msg}")
            }
        };
        match &value {
            Value::Null => continue,
            Value::Object(m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = m
                    .get("items")
                    .and_then(Value::as_array)
                    .ok_or_else(|| wrap(("items".into(), "a List needs an items array".into())))?;
                for (j, item) in items.iter().enumerate() {
                    out.push(object_of(item, &format!("items[{j}]")).map_err(wrap)?);
                }
            }
            _ => out.push(object_of(&value, "").map_err(wrap)?),
        }
    }
    Ok(out)
}

fn object_of(v: &Value, path: &str) -> Res<Object> {
    let m = object(v, path)?;
    let kind = m
        .get("kind")
        .map_or(Ok(""), |v| string(v, &join(path, "kind")))?;
    let api = m
        .get("apiVersion")
        .map_or(Ok(""), |v| string(v, &join(path, "apiVersion")))?;
    match (kind, api) {
        ("Service", "v1") => service(m, v, path).map(Object::Service),
        ("EndpointSlice", "discovery.k8s.io/v1") => slice(m, v, path).map(Object::Slice),
        ("Service", _) | ("EndpointSlice", _) => err(
            &join(path, "apiVersion"),
            format!("{api:?} is not v1 (Service) or discovery.k8s.io/v1 (EndpointSlice)"),
        ),
        _ => err(
            &join(path, "kind"),
            format!("{kind:?} is not Service or EndpointSlice"),
        ),
    }
}

/// `metadata`: name, namespace (default `default`) and labels.
fn metadata<'a>(m: &'a Map<String, Value>, path: &str) -> Res<(String, String, Option<&'a Value>)> {
    let mpath = join(path, "metadata");
    let meta = object(m.get("metadata").unwrap_or(&Value::Null), &mpath)?;
    let name = string(
        meta.get("name").unwrap_or(&Value::Null),
        &join(&mpath, "name"),
    )?;
    dns_name(name, &join(&mpath, "name"), true)?;
    let namespace = match meta.get("namespace") {
        None => "default",
        Some(v) => string(v, &join(&mpath, "namespace"))?,
    };
    dns_name(namespace, &join(&mpath, "namespace"), false)?;
    Ok((name.to_string(), namespace.to_string(), meta.get("labels")))
}

fn protocol(m: &Map<String, Value>, path: &str) -> Res<Protocol> {
    match m.get("protocol") {
        None | Some(Value::Null) => Ok(Protocol::Tcp),
        Some(p) => {
            let pp = join(path, "protocol");
            let s = string(p, &pp)?;
            Protocol::parse(s)
                .map_or_else(|| err(&pp, format!("{s:?} is not TCP, UDP or SCTP")), Ok)
        }
    }
}

fn port_number(v: Option<&Value>, path: &str) -> Res<u16> {
    match v.and_then(Value::as_u64) {
        Some(n @ 1..=65535) => Ok(n as u16),
        _ => err(
            path,
            format!(
                "{} is not a port number (1-65535)",
                v.map_or("nothing".to_string(), Value::to_string)
            ),
        ),
    }
}

fn port_name(m: &Map<String, Value>, path: &str) -> Res<String> {
    match m.get("name") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(v) => Ok(string(v, &join(path, "name"))?.to_string()),
    }
}

fn service(m: &Map<String, Value>, source: &Value, path: &str) -> Res<Service> {
    only_fields(
        m,
        path,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    let (name, namespace, _) = metadata(m, path)?;
    let spath = join(path, "spec");
    let spec = object(m.get("spec").unwrap_or(&Value::Null), &spath)?;
    only_fields(
        spec,
        &spath,
        &[
            "clusterIP",
            "clusterIPs",
            "ports",
            "selector",
            "sessionAffinity",
            "sessionAffinityConfig",
            "type",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
            "externalTrafficPolicy",
            "externalIPs",
            "externalName",
            "healthCheckNodePort",
            "loadBalancerIP",
            "loadBalancerClass",
            "loadBalancerSourceRanges",
            "allocateLoadBalancerNodePorts",
            "publishNotReadyAddresses",
            "trafficDistribution",
        ],
    )?;
    let ip_path = join(&spath, "clusterIP");
    let cluster_ip = match spec.get("clusterIP") {
        None | Some(Value::Null) => None,
        Some(v) => match string(v, &ip_path)? {
            "None" | "" => None,
            s => Some(s.parse::<Ipv4Addr>().map_or_else(
                |_| err(&ip_path, format!("{s:?} is not an IPv4 address")),
                Ok,
            )?),
        },
    };
    let ppath = join(&spath, "ports");
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in array(spec.get("ports").unwrap_or(&Value::Null), &ppath)?
        .iter()
        .enumerate()
    {
        let path = format!("{ppath}[{i}]");
        let pm = object(p, &path)?;
        only_fields(
            pm,
            &path,
            &[
                "name",
                "protocol",
                "port",
                "targetPort",
                "nodePort",
                "appProtocol",
            ],
        )?;
        let sp = ServicePort {
            name: port_name(pm, &path)?,
            protocol: protocol(pm, &path)?,
            port: port_number(pm.get("port"), &join(&path, "port"))?,
        };
        if ports
            .iter()
            .any(|q| (q.port, q.protocol) == (sp.port, sp.protocol) || q.name == sp.name)
        {
            return err(
                &path,
                format!(
                    "port {} {} or name {:?} given twice",
                    sp.port, sp.protocol, sp.name
                ),
            );
        }
        ports.push(sp);
    }
    let affinity = match spec.get("sessionAffinity") {
        None | Some(Value::Null) => "None",
        Some(v) => string(v, &join(&spath, "sessionAffinity"))?,
    };
    let affinity_secs = match affinity {
        "None" => 0,
        "ClientIP" => {
            let cpath = join(&spath, "sessionAffinityConfig.clientIP.timeoutSeconds");
            match spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"))
            {
                None | Some(Value::Null) => DEFAULT_AFFINITY_SECS,
                Some(v) => match v.as_u64() {
                    Some(n @ 1..=86_400) => n as u32,
                    _ => return err(&cpath, format!("{v} is not 1-{MAX_AFFINITY_SECS}")),
                },
            }
        }
        other => {
            return err(
                &join(&spath, "sessionAffinity"),
                format!("{other:?} is not None or ClientIP"),
            )
        }
    };
    // The node's kube-proxy keeps NodePorts and external traffic, so
    // `externalTrafficPolicy` is its business; `trafficDistribution` and
    // the slices' `hints` are accepted and ignored (every ready backend
    // is a candidate, as with no hint).
    let node_local = match spec.get("internalTrafficPolicy") {
        None | Some(Value::Null) => false,
        Some(v) => match string(v, &join(&spath, "internalTrafficPolicy"))? {
            "Cluster" => false,
            "Local" => true,
            other => {
                return err(
                    &join(&spath, "internalTrafficPolicy"),
                    format!("{other:?} is not Cluster or Local"),
                )
            }
        },
    };
    Ok(Service {
        namespace,
        name,
        cluster_ip,
        ports,
        affinity_secs,
        node_local,
        source: source.clone(),
    })
}

fn slice(m: &Map<String, Value>, source: &Value, path: &str) -> Res<Slice> {
    only_fields(
        m,
        path,
        &[
            "apiVersion",
            "kind",
            "metadata",
            "addressType",
            "endpoints",
            "ports",
        ],
    )?;
    let (name, namespace, labels) = metadata(m, path)?;
    let lpath = join(path, "metadata.labels");
    let service = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .and_then(Value::as_str)
        .map_or_else(
            || err(&lpath, format!("needs the {SERVICE_NAME_LABEL} label")),
            Ok,
        )?;
    dns_name(service, &format!("{lpath}[{SERVICE_NAME_LABEL}]"), true)?;
    let apath = join(path, "addressType");
    match m
        .get("addressType")
        .map(|v| string(v, &apath))
        .transpose()?
    {
        Some("IPv4") => {}
        other => {
            return err(
                &apath,
                format!(
                    "{:?} is not IPv4 (this node balances IPv4 only)",
                    other.unwrap_or("")
                ),
            )
        }
    }
    let epath = join(path, "endpoints");
    let mut endpoints = Vec::new();
    for (i, e) in array(m.get("endpoints").unwrap_or(&Value::Null), &epath)?
        .iter()
        .enumerate()
    {
        let path = format!("{epath}[{i}]");
        let em = object(e, &path)?;
        only_fields(
            em,
            &path,
            &[
                "addresses",
                "conditions",
                "hostname",
                "nodeName",
                "targetRef",
                "zone",
                "hints",
                "deprecatedTopology",
            ],
        )?;
        let apath = join(&path, "addresses");
        let mut addresses = Vec::new();
        for (j, a) in array(em.get("addresses").unwrap_or(&Value::Null), &apath)?
            .iter()
            .enumerate()
        {
            let p = format!("{apath}[{j}]");
            let s = string(a, &p)?;
            addresses.push(
                s.parse::<Ipv4Addr>()
                    .map_or_else(|_| err(&p, format!("{s:?} is not an IPv4 address")), Ok)?,
            );
        }
        if addresses.is_empty() {
            return err(&apath, "needs at least one address");
        }
        let cpath = join(&path, "conditions");
        let (ready, serving) = match em.get("conditions") {
            None | Some(Value::Null) => (true, true),
            Some(c) => {
                let cm = object(c, &cpath)?;
                only_fields(cm, &cpath, &["ready", "serving", "terminating"])?;
                let flag = |name: &str, absent: bool| match cm.get(name) {
                    None | Some(Value::Null) => Ok(absent),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(v) => err(&join(&cpath, name), format!("{v} is not a boolean")),
                };
                let ready = flag("ready", true)?;
                (ready, flag("serving", ready)?)
            }
        };
        let node_name = match em.get("nodeName") {
            None | Some(Value::Null) => None,
            Some(v) => Some(string(v, &join(&path, "nodeName"))?.to_string()),
        };
        endpoints.push(Endpoint {
            addresses,
            ready,
            serving,
            node_name,
        });
    }
    let ppath = join(path, "ports");
    let mut ports = Vec::new();
    for (i, p) in array(m.get("ports").unwrap_or(&Value::Null), &ppath)?
        .iter()
        .enumerate()
    {
        let path = format!("{ppath}[{i}]");
        let pm = object(p, &path)?;
        only_fields(pm, &path, &["name", "protocol", "port", "appProtocol"])?;
        ports.push(SlicePort {
            name: port_name(pm, &path)?,
            protocol: protocol(pm, &path)?,
            port: port_number(pm.get("port"), &join(&path, "port"))?,
        });
    }
    Ok(Slice {
        namespace,
        name,
        service: service.to_string(),
        endpoints,
        ports,
        source: source.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubectl get svc,endpointslices -o yaml` prints for a DNS
    /// service (trimmed of nothing that matters).
    pub(crate) const DNS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: kube-dns
    namespace: kube-system
    labels: {k8s-app: kube-dns}
    resourceVersion: "123"
    uid: 5f0c
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10]
    internalTrafficPolicy: Cluster
    externalTrafficPolicy: Local
    trafficDistribution: PreferClose
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
    selector: {k8s-app: kube-dns}
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
    type: ClusterIP
  status: {loadBalancer: {}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: kube-dns-abcde
    namespace: kube-system
    labels: {kubernetes.io/service-name: kube-dns}
  addressType: IPv4
  endpoints:
  - addresses: [10.244.1.5]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-a
    zone: zone-a
    hints: {forZones: [{name: zone-a}]}
    targetRef: {kind: Pod, name: coredns-1, namespace: kube-system}
  - addresses: [10.244.2.5]
    conditions: {ready: false}
  - addresses: [10.244.2.6]
    conditions: {ready: false, serving: true, terminating: true}
  ports:
  - {name: dns, port: 5353, protocol: UDP}
  - {name: dns-tcp, port: 5353, protocol: TCP}
"#;

    #[test]
    fn what_kubectl_prints_parses() {
        let objs = parse_objects(DNS).unwrap();
        assert_eq!(objs.len(), 2);
        let Object::Service(s) = &objs[0] else {
            panic!()
        };
        assert_eq!(
            (s.namespace.as_str(), s.name.as_str(), s.cluster_ip),
            (
                "kube-system",
                "kube-dns",
                Some(Ipv4Addr::new(10, 96, 0, 10))
            )
        );
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[1].protocol, Protocol::Tcp);
        assert_eq!(s.affinity_secs, 600);
        let Object::Slice(e) = &objs[1] else { panic!() };
        assert_eq!(e.service, "kube-dns");
        assert!(e.endpoints[0].ready && !e.endpoints[1].ready);
        assert!(e.endpoints[0].serving && !e.endpoints[1].serving);
        assert!(!e.endpoints[2].ready && e.endpoints[2].serving);
        assert_eq!(e.endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(e.endpoints[1].node_name, None);
        assert!(!s.node_local);
        assert_eq!(e.ports[0].port, 5353);
        // JSON and `---` separated documents too.
        let json = serde_json::to_string(&objs_source(&objs)[0]).unwrap();
        let two = format!(
            "{json}\n---\n{}",
            serde_yaml_ng::to_string(&objs_source(&objs)[1]).unwrap()
        );
        assert_eq!(parse_objects(&two).unwrap(), objs);
    }

    fn objs_source(o: &[Object]) -> Vec<Value> {
        o.iter()
            .map(|o| match o {
                Object::Service(s) => s.source.clone(),
                Object::Slice(s) => s.source.clone(),
            })
            .collect()
    }

    #[test]
    fn bad_fields_are_refused_with_their_path() {
        let cases = [
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.300}",
                "document 1: spec.clusterIP: \"10.96.0.300\" is not an IPv4 address",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0}]}",
                "document 1: spec.ports[0].port: 0 is not a port number (1-65535)",
            ),
            (
                "---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {sessionAffinity: Sticky}",
                "document 2: spec.sessionAffinity: \"Sticky\" is not None or ClientIP",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {internalTrafficPolicy: Node}",
                "document 1: spec.internalTrafficPolicy: \"Node\" is not Cluster or Local",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {bogus: 1}",
                "document 1: spec.bogus: unknown or unsupported field",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: IPv4",
                "document 1: metadata.labels: needs the kubernetes.io/service-name label",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a, labels: {kubernetes.io/service-name: s}}\naddressType: IPv6",
                "document 1: addressType: \"IPv6\" is not IPv4",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: maybe}}]",
                "document 1: endpoints[0].conditions.ready: \"maybe\" is not a boolean",
            ),
            (
                "kind: List\nitems: [{apiVersion: v1, kind: Pod}]",
                "document 1: items[0].kind: \"Pod\" is not Service or EndpointSlice",
            ),
            ("{", "document 1: not valid YAML or JSON"),
        ];
        for (text, want) in cases {
            let got = parse_objects(text).unwrap_err();
            assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}");
        }
    }
}
