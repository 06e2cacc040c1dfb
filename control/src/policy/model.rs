//! The policy model: NetworkPolicy objects as parsed (`networking.k8s.io/v1`,
//! only what this node enforces), and the identities they select: pods
//! (local or on other nodes) and namespaces with their labels.
//!
//! Invariants: a [`Policy`] is valid by construction (the parser refuses
//! anything else): CIDRs are IPv4 with `except` inside them, ports are
//! 1-65535 with `end_port >= port`, `In`/`NotIn` carry values and
//! `Exists`/`DoesNotExist` none. Labels are plain string maps. The
//! selector semantics here ([`LabelSelector::matches`]) are the one place
//! both the reference evaluator and the compiler use.
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries with its own name (Kubernetes sets
/// it since 1.21), so `namespaceSelector` can pick a namespace by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => podrouter_router::policy::PROTO_TCP,
            Protocol::Udp => podrouter_router::policy::PROTO_UDP,
            Protocol::Sctp => podrouter_router::policy::PROTO_SCTP,
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A port a pod's container declares under a name (`containerPort` with
/// `name`), which a policy may refer to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod as policy sees it: on this node or another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
}

impl Endpoint {
    /// The port a name refers to for `protocol`, if the pod declares it.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// `matchLabels` and `matchExpressions`, ANDed; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator {
                    Operator::In => v.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => v.is_some(),
                    Operator::DoesNotExist => v.is_none(),
                }
            })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        if parts.is_empty() {
            f.write_str("{}")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// An IPv4 prefix, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn first(&self) -> u32 {
        u32::from(self.addr)
    }
    pub fn last(&self) -> u32 {
        self.first() | host_mask(self.len)
    }
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let a = u32::from(a);
        self.first() <= a && a <= self.last()
    }
}

pub fn host_mask(len: u8) -> u32 {
    if len >= 32 {
        0
    } else {
        u32::MAX >> len
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
}

impl IpBlock {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.cidr.contains(a) && !self.except.iter().any(|e| e.contains(a))
    }
}

/// One element of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` (at least one is set):
    /// without a namespace selector, pods of the policy's namespace;
    /// without a pod selector, every pod of the selected namespaces.
    Pods {
        pods: Option<LabelSelector>,
        namespaces: Option<LabelSelector>,
    },
    IpBlock(IpBlock),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// One element of `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
    /// Only with a numeric `port`: the range `port..=end_port`.
    pub end_port: Option<u16>,
}

/// One ingress or egress rule: peers (empty: every peer) and ports
/// (empty: every port and protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy as parsed. `ingress` applies when `isolates_ingress`,
/// `egress` when `isolates_egress` (`policyTypes`, or its default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// The document as it was given (JSON), kept for persistence and
    /// `policy list`.
    pub source: serde_json::Value,
}

impl Policy {
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// What policies are evaluated against: every known pod (this node's and
/// others'), namespace labels, and the node's own addresses.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub endpoints: Vec<Endpoint>,
    /// Labels set on namespaces (the name label is implied, see
    /// [`Cluster::namespace_labels`]).
    pub namespaces: BTreeMap<String, Labels>,
}

impl Cluster {
    /// A namespace's labels, with [`NAMESPACE_NAME_LABEL`] always set to
    /// its name.
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
        l
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.ip == ip)
    }
}

/// Does `peer` (of a policy in namespace `policy_ns`) select `ep`?
pub fn peer_selects(cluster: &Cluster, policy_ns: &str, peer: &Peer, ep: &Endpoint) -> bool {
    match peer {
        Peer::Pods { pods, namespaces } => {
            let ns_ok = match namespaces {
                None => ep.namespace == policy_ns,
                Some(sel) => sel.matches(&cluster.namespace_labels(&ep.namespace)),
            };
            ns_ok && pods.as_ref().is_none_or(|s| s.matches(&ep.labels))
        }
        Peer::IpBlock(b) => b.contains(ep.ip),
    }
}

/// Does `policy` select `ep` (same namespace, pod selector matches)?
pub fn policy_selects(policy: &Policy, ep: &Endpoint) -> bool {
    ep.namespace == policy.namespace && policy.pod_selector.matches(&ep.labels)
}
