//! The podrouterd API: versioned request/response types and a blocking
//! client. Shared by podrouterctl, the CNI plugin and the daemon.
//!
//! Wire format (version 1): a Unix stream socket carrying one JSON object
//! per line. Each request line gets exactly one response line, in order; a
//! connection may carry any number of requests.
//!
//! ```text
//! -> {"version":1,"method":"attach","params":{"id":"pod1","netns":"/run/netns/pod1"}}
//! <- {"version":1,"result":{"pod":{"id":"pod1","ip":"10.244.0.2",...}}}
//! -> {"version":1,"method":"detach","params":{"id":"nope"}}
//! <- {"version":1,"error":{"code":"not_found","message":"no pod with id nope"}}
//! ```
//!
//! Invariants: a response carries either `result` or `error`, never both; a
//! request whose `version` the daemon does not speak gets
//! `unsupported_version`; unknown fields are rejected, not ignored.
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod ifname;
pub mod pending;

pub use ifname::{check_ifname, InvalidIfname, MAX_IFNAME_LEN};

/// The protocol version this crate speaks.
pub const API_VERSION: u32 = 1;

/// Where podrouterd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/podrouter/podrouter.sock";

/// Longest request or response line accepted (bytes): a whole cluster's
/// Services and EndpointSlices in one `service apply` (10,000 of each are
/// about 5 MB of YAML, more as a JSON string) and their `service list`.
/// A connection's buffer grows only as its line arrives; with at most
/// 512 connections that bounds what clients can make the daemon hold.
pub const MAX_LINE: usize = 16 << 20;

/// One request line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub call: Call,
}

/// What is asked, with its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Call {
    /// Daemon and node summary.
    Status,
    /// Every attached pod.
    ListPods,
    /// Create a pod's interface in its netns and start forwarding for it.
    Attach(AttachParams),
    /// Remove a pod's interface and forget it.
    Detach(DetachParams),
    /// The FIB as the workers see it.
    Routes,
    /// Data-plane counters, summed over workers, and per port.
    Counters,
    /// BGP neighbours: state, timers, prefix counts, last error.
    BgpPeers,
    /// The BGP RIB: every path per prefix, best first.
    BgpRib(BgpRibParams),
    /// Re-read the daemon's config file and apply what may change at
    /// runtime (`pod_cidrs`, `log_level`); all or nothing.
    Reload,
    /// Add or replace NetworkPolicy objects (YAML or JSON text, `---`
    /// separated); all or nothing.
    PolicyApply(TextParams),
    /// Remove one NetworkPolicy.
    PolicyDelete(PolicyRef),
    /// Every NetworkPolicy and the local pods it selects.
    PolicyList,
    /// One local pod's effective rules, resolved to addresses and ports.
    PolicyShow(PolicyShowParams),
    /// Set or remove a local pod's labels (and named ports).
    PodLabel(PodLabelParams),
    /// Set or remove a namespace's labels.
    NamespaceLabel(NamespaceLabelParams),
    /// Add or replace pods of other nodes (YAML or JSON text).
    EndpointApply(TextParams),
    /// Forget a pod of another node.
    EndpointDelete(EndpointRef),
    /// Every pod policy knows: local ones and other nodes'.
    EndpointList,
    /// Add or replace Service and EndpointSlice objects for the built-in
    /// load balancer (YAML or JSON text, `---` separated, or a `List`);
    /// all or nothing.
    ServiceApply(TextParams),
    /// Remove a Service and its EndpointSlices.
    ServiceDelete(ServiceRef),
    /// Every Service with its ports, backends and counters.
    ServiceList,
    /// Start a live packet capture: the response line ([`Reply::Capture`])
    /// is followed on the same connection by a pcapng stream that ends when
    /// the capture stops (count, duration, or the client closes its
    /// writing side); see [`CaptureParams`].
    Capture(CaptureParams),
    /// Trace the next frames of a pod through the pipeline: the response
    /// line ([`Reply::Trace`]) is followed by one [`TraceEvent`] line per
    /// traced frame and a last [`TraceEvent::Done`].
    Trace(TraceParams),
    /// Sent by `podrouterd --takeover`: hand this daemon's data plane over.
    /// The response ([`Reply::Takeover`]) is followed on the same
    /// connection by the descriptors it lists (`SCM_RIGHTS`); see
    /// podrouterd's `takeover` module for the whole exchange.
    Takeover(TakeoverParams),
}

/// Who asks for a takeover and what it expects to be handed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeoverParams {
    /// The takeover exchange's version; both sides must speak the same.
    pub protocol: u32,
    /// The state directory format version the new daemon reads.
    pub state_version: u32,
    /// The new daemon's version (for the logs).
    pub daemon_version: String,
    /// The new daemon's pid.
    pub pid: u32,
    /// The config keys the handed descriptors depend on, as the new
    /// daemon has them (key -> value text); they must equal the running
    /// daemon's.
    pub config: BTreeMap<String, String>,
}

/// What the running daemon hands over, in the order its descriptors
/// follow the response: the state directory's lock file, the API
/// listener, the host port's TAP, the uplink's socket if `uplink`, then
/// each pod's TAP in `pods` order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TakeoverOffer {
    /// The old daemon's pid.
    pub pid: u32,
    pub daemon_version: String,
    pub uplink: bool,
    pub pods: Vec<TakeoverPod>,
}

impl TakeoverOffer {
    /// How many descriptors follow the offer.
    pub fn fd_count(&self) -> usize {
        3 + usize::from(self.uplink) + self.pods.len()
    }
}

/// One pod whose TAP is handed over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TakeoverPod {
    pub id: String,
    pub netns: String,
    pub ifname: String,
}

/// What to capture. Exactly one of `pod`, `port` and `uplink` names the
/// port whose received and sent frames are captured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureParams {
    /// A local pod: attach id, address or `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// A port by its name (`podrouterctl counters` lists them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The uplink (IPIP or VXLAN tunnel port).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uplink: bool,
    /// Filter expression (host, net, port, proto, and/or/not); empty: all.
    #[serde(default)]
    pub filter: String,
    /// Stop after this many frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// Include frames the router dropped, with their reason as a comment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drops: bool,
    /// Bytes kept of each frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<u32>,
}

/// What to trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceParams {
    /// A local pod: attach id, address or `namespace/name`.
    pub pod: String,
    /// Frames to trace.
    pub count: u32,
    #[serde(default)]
    pub filter: String,
    /// Give up after this many seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
}

/// The port a capture or trace is armed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TapInfo {
    pub port: String,
    pub port_id: u32,
    pub filter: String,
}

/// One line of a trace stream after its response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceEvent {
    /// One traced frame: its stages, one per line, for a person.
    Frame { number: u32, text: String },
    /// The trace stopped: frames traced, and frames matched that could not
    /// be recorded (ring full).
    Done { traced: u32, lost: u64, why: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

/// A Service as the built-in load balancer holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `None`: headless, nothing balanced.
    pub cluster_ip: Option<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` timeout; 0: no affinity.
    pub affinity_secs: u32,
    pub ports: Vec<ServicePortInfo>,
}

/// One ClusterIP port and its ready backends, with their counters since
/// the daemon started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePortInfo {
    pub name: String,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
    pub port: u16,
    /// Packets translated to a backend.
    pub packets: u64,
    /// New flows given a backend.
    pub flows: u64,
    /// New flows refused for want of a ready backend.
    pub rejected: u64,
    pub backends: Vec<ServiceBackendInfo>,
    /// Flows cut because their backend left the port (removed from the
    /// EndpointSlices or no longer ready). Absent from older daemons.
    #[serde(default)]
    pub cut: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceBackendInfo {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub packets: u64,
    pub flows: u64,
}

/// A document given as text (a file's contents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextParams {
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyShowParams {
    /// A local pod: its attach id, its address, or `namespace/name`.
    pub pod: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodLabelParams {
    /// The pod's attach id, address or `namespace/name`.
    pub pod: String,
    /// Labels to set (added or overwritten).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// If given, the pod's named ports are replaced by these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NamedPortSpec>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceLabelParams {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRef {
    pub ip: Ipv4Addr,
}

/// Who a pod is, for network policy: Kubernetes' namespace, name, labels
/// and the named ports of its containers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NamedPortSpec>,
}

/// A container port with a name (`containerPort` + `name` + `protocol`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPortSpec {
    pub name: String,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub port: u16,
}

pub fn default_protocol() -> String {
    "TCP".to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpRibParams {
    /// Only prefixes inside this one (`10.244.0.0/16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// At most this many rows (default 1000, at most 3000), so a full
    /// table fits a response line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    /// Caller's name for the attachment; 1-255 characters of
    /// `[A-Za-z0-9._:-]`. The CNI plugin uses `cni:<containerid>:<ifname>`.
    pub id: String,
    /// Path of the pod's network namespace (`/run/netns/x`, `/proc/PID/ns/net`).
    pub netns: String,
    /// Interface name inside the pod.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// Address to give the pod; allocated from the node's pod CIDRs if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Interface MTU; the node's configured MTU if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The pod's Kubernetes identity for network policy; without it the
    /// pod is `default/<id>` with no labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PodIdentity>,
}

pub fn default_ifname() -> String {
    "eth0".to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachParams {
    pub id: String,
    /// Where the interface would be if the daemon does not know the id (an
    /// ADD cut short by a crash): with both `netns` and `ifname` given, a
    /// podrouter TAP of that name there is removed and the call succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn ok(reply: Reply) -> Self {
        Response {
            version: API_VERSION,
            result: Some(reply),
            error: None,
        }
    }

    pub fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        Response {
            version: API_VERSION,
            result: None,
            error: Some(ApiError {
                code,
                message: message.into(),
            }),
        }
    }
}

/// A successful result; the variant matches the call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(StatusInfo),
    Pods(Vec<PodInfo>),
    Pod(PodInfo),
    Detached {
        id: String,
    },
    Routes(Vec<RouteInfo>),
    Counters(CountersInfo),
    BgpPeers(Vec<BgpPeerInfo>),
    BgpRib(BgpRibInfo),
    Reloaded(ReloadInfo),
    /// `namespace/name` of every policy applied.
    PolicyApplied(Vec<String>),
    PolicyDeleted(PolicyRef),
    Policies(Vec<PolicyInfo>),
    PodPolicy(PodPolicyInfo),
    /// A pod's or namespace's labels after the change.
    Labels(BTreeMap<String, String>),
    /// Addresses of the endpoints applied or deleted.
    EndpointsChanged(Vec<Ipv4Addr>),
    Endpoints(Vec<EndpointInfo>),
    /// What `service apply` applied (`service NS/NAME`,
    /// `endpointslice NS/NAME`).
    ServicesApplied(Vec<String>),
    ServiceDeleted(ServiceRef),
    Services(Vec<ServiceInfo>),
    /// A capture started; the pcapng stream follows.
    Capture(TapInfo),
    /// A trace started; [`TraceEvent`] lines follow.
    Trace(TapInfo),
    /// A takeover started: the descriptors listed follow.
    Takeover(TakeoverOffer),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub namespace: String,
    pub name: String,
    /// The pod selector, `key=value,...` (`{}` selects every pod of the
    /// namespace).
    pub pod_selector: String,
    /// `Ingress`, `Egress`.
    pub policy_types: Vec<String>,
    pub ingress_rules: usize,
    pub egress_rules: usize,
    /// Local pods (attach ids) the policy selects now.
    pub selects: Vec<String>,
    /// The object as it was applied.
    pub source: serde_json::Value,
}

/// One local pod's effective policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodPolicyInfo {
    pub id: String,
    pub ip: Ipv4Addr,
    pub identity: PodIdentity,
    /// `namespace/name` of the policies selecting it, per direction.
    pub ingress_policies: Vec<String>,
    pub egress_policies: Vec<String>,
    /// `None`: not isolated in that direction (everything allowed).
    pub ingress: Option<DirectionInfo>,
    pub egress: Option<DirectionInfo>,
}

/// What one direction allows: peers by address, then address ranges.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionInfo {
    pub peers: Vec<PeerPorts>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerPorts {
    /// An address, or a range `first-last`.
    pub peer: String,
    /// `any`, or `tcp/80,udp/1000-1010`.
    pub ports: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub ip: Ipv4Addr,
    /// `local` (a pod of this node, its attach id in `id`) or the node
    /// the endpoint file named.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub identity: PodIdentity,
}

/// What a configuration reload applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadInfo {
    /// The config file that was read.
    pub config: String,
    /// The node's pod CIDRs now.
    pub pod_cidrs: Vec<String>,
    /// Blocks added (announced over BGP, addresses allocatable).
    pub added: Vec<String>,
    /// Blocks removed (withdrawn over BGP).
    pub removed: Vec<String>,
    /// Other keys applied (`log_level`).
    pub changed: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// Machine-readable error classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not valid JSON or misses or misuses a field.
    BadRequest,
    /// The request's `version` is not one the daemon speaks.
    UnsupportedVersion,
    /// No such pod.
    NotFound,
    /// A pod with that id, or an interface with that name, exists already.
    AlreadyExists,
    /// The address is taken, outside the pod CIDRs, or none is free.
    AddressUnavailable,
    /// The network namespace path does not exist or is not a netns.
    NetnsNotFound,
    /// Something failed inside the daemon (netlink, TAP, state file).
    Internal,
    /// A config reload was refused (the file has errors, changes a key
    /// that needs a restart, or removes a block pods still use); the
    /// running configuration is unchanged.
    ReloadRefused,
    /// The daemon serves as many connections as it allows; try again.
    Busy,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidrs: Vec<String>,
    pub daemon_version: String,
    pub api_version: u32,
    pub backend: String,
    pub encap: String,
    /// The tunnel to other nodes: `ipip` or `vxlan`.
    #[serde(default)]
    pub tunnel: String,
    /// The VXLAN uplink's UDP port, VNI and this node's VTEP MAC (absent
    /// without a VXLAN uplink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanInfo>,
    pub workers: usize,
    pub pods: usize,
    pub routes: usize,
    pub free_addresses: u64,
    pub uptime_secs: u64,
    /// Each pod port and how its backend drives it. Absent from daemons
    /// older than this field.
    #[serde(default)]
    pub ports: Vec<PortStatusInfo>,
    /// Path MTUs learned towards other nodes from the underlay's ICMP
    /// "fragmentation needed" (outer MTU per node; only nodes whose path
    /// is narrower than the uplink, until they expire). Absent when there
    /// are none, and from daemons older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_mtus: Vec<PathMtuInfo>,
    /// The API server's connections and what it refused (absent from
    /// daemons older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiServerInfo>,
    /// The IPIP uplink's path for whole TCP segments (absent without an
    /// IPIP uplink, and from daemons older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_gso: Option<IpipGsoInfo>,
    /// The afxdp backend's UMEM memory (absent with the TAP backend and
    /// from daemons older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp_umem: Option<UmemInfo>,
}

/// Whether the IPIP uplink sends a pod's TCP GSO segments whole (through
/// its TAP and tcx program) and what went that way since the start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpipGsoInfo {
    /// The path is set up; `false` when the config turned it off or the
    /// kernel refused it (the daemon's log says why).
    pub enabled: bool,
    /// The TAP, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The tcx program's id, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prog_id: Option<u32>,
    /// GSO frames written whole and their inner bytes.
    pub frames: u64,
    pub bytes: u64,
    /// Writes the kernel refused (those frames were cut in userspace).
    pub errors: u64,
}

/// UMEM memory the AF_XDP sockets use (pinned by the kernel while
/// registered): one receive UMEM per pod port (and per `uplink_xdp`
/// queue), one transmit UMEM per worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UmemInfo {
    pub rx_umems: u64,
    pub rx_bytes: u64,
    pub tx_umems: u64,
    pub tx_bytes: u64,
    /// Chunks each idle pod port holds of its worker's receive pool: the
    /// standing share (`afxdp_rx_chunks`) times the chunks a frame of the
    /// pods' MTU takes (1, or 3 at MTU 9000 on multi-buffer ports).
    pub rx_chunks_per_port: u32,
}

/// The API server's figures since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiServerInfo {
    /// Connections open now.
    pub connections: u64,
    /// Most connections served at once; more are refused.
    pub max_connections: u64,
    pub accepted: u64,
    /// Connections refused because `max_connections` were open.
    pub refused_busy: u64,
    pub requests: u64,
    /// Connections closed because a request did not arrive whole within
    /// the request deadline (nothing sent, half a request, a trickle).
    pub request_timeouts: u64,
    /// Requests longer than the size limit.
    pub oversized: u64,
    /// Requests that were not valid JSON, had the wrong version or shape,
    /// or ended mid-line.
    pub bad_requests: u64,
    /// Responses the client did not read within the deadline.
    pub write_timeouts: u64,
}

/// A path MTU learned towards another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathMtuInfo {
    /// The node's underlay address.
    pub node: Ipv4Addr,
    /// The largest outer packet that reaches it unfragmented.
    pub mtu: u16,
}

/// How one pod's port is driven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatusInfo {
    pub port: u32,
    pub name: String,
    /// `tap` or `afxdp`.
    pub backend: String,
    /// For `afxdp`: `copy` or `zero-copy`, then `driver` or `generic`
    /// (where the XDP program runs), e.g. `copy, driver`; then
    /// `multi-buffer` when a frame spans several UMEM chunks (pod MTU above
    /// 3826), e.g. `copy, driver, multi-buffer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<String>,
    /// For `afxdp`: the id of the attached XDP program (`ip link` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_prog_id: Option<u32>,
    /// For `afxdp`: the node-end interface the AF_XDP sockets are bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_ifname: Option<String>,
}

/// A node's VXLAN tunnel, as `podrouterctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanInfo {
    /// UDP destination port (4789 Calico, 8472 Flannel).
    pub port: u16,
    pub vni: u32,
    /// This node's VTEP MAC: what other nodes put into the inner
    /// destination (Flannel's `VtepMAC`, the neighbour entry peers need).
    pub vtep_mac: String,
    /// The underlay interface carrying the tc redirect.
    pub uplink: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    pub id: String,
    pub netns: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    /// The pod interface's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: u16,
    /// The router's port number for the pod.
    pub port: u32,
    /// The worker polling the pod's port.
    pub worker: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub prefix: String,
    /// `local`, `host`, `node` or `unreachable`.
    pub next_hop: String,
    /// Port name for `local` routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Node address for `node` routes (the first of `vias` for an ECMP
    /// route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
    /// Every node address of a `node` route, sorted: one, or several for
    /// an ECMP (multipath) route, over which flows are spread. Absent for
    /// other routes and from daemons older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vias: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CountersInfo {
    pub workers: usize,
    pub rx: u64,
    pub tx: u64,
    pub sleeps: u64,
    /// Frames read back from the host port in the round that wrote to it
    /// (the node's answer inside the write). Zero from daemons older than
    /// this field.
    #[serde(default)]
    pub host_inline: u64,
    /// Times busy polling backed off because the scheduler took a
    /// worker's CPU, and long gaps in a spin that were no preemption.
    /// Zero from daemons older than these fields.
    #[serde(default)]
    pub busy_poll_backoffs: u64,
    #[serde(default)]
    pub busy_poll_stalls: u64,
    pub arp_replies: u64,
    pub icmp_sent: u64,
    pub icmp_rate_limited: u64,
    /// Drops by reason name; every reason is present, zero or not.
    pub drops: BTreeMap<String, u64>,
    pub ports: Vec<PortCountersInfo>,
    /// The flow table (flows the node's kernel NATed). Zero from daemons
    /// older than this field.
    #[serde(default)]
    pub flows: FlowCountersInfo,
    /// Per worker, in worker order: nanoseconds spent in rounds that
    /// received frames. Empty from daemons older than this field.
    #[serde(default)]
    pub worker_busy_ns: Vec<u64>,
    /// Per worker, in worker order: nanoseconds of wall time busy polling
    /// kept it polling instead of sleeping. Empty from daemons older than
    /// this field.
    #[serde(default)]
    pub worker_spin_ns: Vec<u64>,
    /// Attach calls handled (`Call::Attach`), with their latency.
    #[serde(default)]
    pub attach: OpStatsInfo,
    /// Detach calls handled (`Call::Detach`), with their latency.
    #[serde(default)]
    pub detach: OpStatsInfo,
    /// Tunnel (IPIP or VXLAN) traffic per peer node: every node some route
    /// has gone via since the start, in the order they first appeared.
    /// Empty from daemons older than this field.
    #[serde(default)]
    pub tunnels: Vec<TunnelCountersInfo>,
}

/// Tunnel traffic with one peer node. A frame counts once however many
/// segments a GSO frame makes on the wire; bytes are the inner IPv4
/// packet's (what the tunnel carries, without the outer headers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelCountersInfo {
    /// The node's underlay address, or `other` for the nodes beyond the
    /// data plane's per-node slots (1023), counted together.
    pub node: String,
    /// Frames decapsulated from the node (outer headers checked, before
    /// the inner packet's checks).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames handed to the tunnel for the node.
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// How many calls of one kind the daemon handled, and how long they took
/// (a histogram in Prometheus's form).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpStatsInfo {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls answered with an error.
    pub failed: u64,
    /// Sum of every call's latency, in seconds.
    pub seconds_sum: f64,
    /// (upper bound in seconds, calls that took at most that long),
    /// cumulative, in increasing order, finite bounds only: the implicit
    /// `+Inf` bucket is `ok + failed`.
    pub buckets: Vec<(f64, u64)>,
}

/// The shared flow table's numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowCountersInfo {
    /// Slots of the table (`[dataplane] flow_table_size`, rounded up to a
    /// power of two).
    pub capacity: u64,
    /// Slots in use now (after a sweep of expired entries).
    pub entries: u64,
    /// Flows entered since the start.
    pub inserted: u64,
    /// New flows refused because their bucket was full of live flows.
    pub full: u64,
    /// Entries freed after their timeout.
    pub expired: u64,
    /// Reply packets (and ICMP errors about them) sent to the host port
    /// instead of straight to a pod.
    pub steered_to_host: u64,
    /// New connections network policy checked and allowed (then tracked).
    #[serde(default)]
    pub policy_allowed: u64,
    /// Entries removed before their timeout because what they stood for
    /// went away (a Service of the built-in load balancer, or a backend of
    /// it: each flow has two entries). Absent from older daemons.
    #[serde(default)]
    pub purged: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortCountersInfo {
    pub port: u32,
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    /// Connections to this pod refused by its NetworkPolicy ingress rules.
    #[serde(default)]
    pub policy_denied_ingress: u64,
    /// Connections from this pod refused by its egress rules.
    #[serde(default)]
    pub policy_denied_egress: u64,
    /// AF_XDP ports only: what the kernel and the port dropped outside the
    /// pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xsk: Option<XskCountersInfo>,
    /// `rx_packets` by worker (index = worker id): with several workers,
    /// how a multi-queue port's receive work spread over them.
    #[serde(default)]
    pub rx_packets_per_worker: Vec<u64>,
}

/// Drops around an AF_XDP port's sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XskCountersInfo {
    /// Frames the kernel dropped before the receive ring: larger than a
    /// UMEM chunk, or no room (`XDP_STATISTICS` `rx_dropped`).
    pub rx_dropped: u64,
    /// Frames dropped because the receive ring was full.
    pub rx_ring_full: u64,
    /// Frames dropped because the fill ring was empty.
    pub rx_fill_empty: u64,
    /// Frames the port could not queue for transmit.
    pub tx_dropped: u64,
    /// Frames the port dropped on receive: longer than its MTU, or a chain
    /// of descriptors (a frame over several UMEM chunks) that was broken.
    #[serde(default)]
    pub rx_invalid: u64,
}

/// One BGP neighbour, like a line of `birdc show protocols all`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgpPeerInfo {
    pub address: Ipv4Addr,
    pub asn: u32,
    /// `ibgp` or `ebgp`.
    pub kind: String,
    /// RFC 4271 state: Idle, Connect, Active, OpenSent, OpenConfirm,
    /// Established.
    pub state: String,
    /// Seconds in this state.
    pub since_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
    /// Negotiated hold time (Established only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    pub passive: bool,
    /// A TCP MD5 key is configured.
    pub md5: bool,
    /// Prefixes in the peer's Adj-RIB-In.
    pub prefixes_received: usize,
    /// Of those, the ones the import filter lets into the FIB.
    pub prefixes_accepted: usize,
    /// Kept stale while the peer restarts (graceful restart helper).
    pub prefixes_stale: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<u32>,
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    /// UPDATEs (or parts) handled as withdraws (RFC 7606, loops, bad next hops).
    pub treat_as_withdraw: u64,
    /// How many times the session reached Established.
    pub established_count: u64,
    /// Negotiated capabilities (Established only).
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Milliseconds from this session's Established to the last FIB batch
    /// BGP published since (any peer's routes), measured by the daemon:
    /// once a table is in, its convergence time without a poller's
    /// resolution. None when nothing was published since Established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_to_last_install_ms: Option<f64>,
    /// Milliseconds from this session's Established to the moment the
    /// node's kernel held every learned-block route BGP decided so far
    /// (the `bgp-kernel` thread finished the last batch handed to it),
    /// measured by the daemon. Without kernel routes (no uplink) the same
    /// as `established_to_last_install_ms`. None while the kernel is
    /// behind the FIB, or when nothing was installed since Established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_to_kernel_synced_ms: Option<f64>,
    /// When this session last reached Established, milliseconds since the
    /// Unix epoch by the daemon's clock (to set beside another daemon's
    /// own timestamp, e.g. BIRD's `show protocols`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_unix_ms: Option<f64>,
}

/// The BGP RIB, like `birdc show route`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BgpRibInfo {
    /// Learned prefixes in the RIB.
    pub prefixes: usize,
    /// Learned paths (a prefix has one per peer that sent it).
    pub paths: usize,
    /// Prefixes BGP installed in the FIB.
    pub installed: usize,
    /// `routes` stopped at the limit.
    pub truncated: bool,
    pub routes: Vec<BgpRouteInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgpRouteInfo {
    pub prefix: String,
    pub next_hop: Ipv4Addr,
    /// The peer's address, or `local` for our own blocks.
    pub from: String,
    pub as_path: String,
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub med: Option<u32>,
    /// The best path for the prefix.
    pub best: bool,
    /// Equal to the best up to the tie-breakers (ECMP candidate).
    pub multipath: bool,
    /// This path's next hop is in the FIB.
    pub installed: bool,
    /// Kept from before the peer's restart (graceful restart).
    pub stale: bool,
    pub ebgp: bool,
    /// Why the prefix is kept out of the FIB, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered: Option<String>,
}

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (daemon not running, wrong path,
    /// permissions).
    #[error("cannot connect to podrouterd at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    /// The connection broke mid-request.
    #[error("talking to podrouterd: {0}")]
    Io(#[from] io::Error),
    /// The daemon answered something this client does not understand.
    #[error("podrouterd sent a malformed response: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("podrouterd: {0}")]
    Api(#[from] ApiError),
}

/// A blocking connection to podrouterd.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects with a timeout on every read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, call: Call) -> Result<Reply, ClientError> {
        let req = Request {
            version: API_VERSION,
            call,
        };
        let mut line =
            serde_json::to_string(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let resp = read_line(&mut self.reader)?
            .ok_or_else(|| ClientError::Protocol("connection closed before a response".into()))?;
        let resp: Response =
            serde_json::from_str(&resp).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match (resp.result, resp.error) {
            (_, Some(e)) => Err(ClientError::Api(e)),
            (Some(r), None) => Ok(r),
            (None, None) => Err(ClientError::Protocol(
                "response has neither result nor error".into(),
            )),
        }
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes; `None` at a
/// clean end of stream.
pub fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = io::Read::take(r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        let why = if buf.len() > MAX_LINE {
            "line longer than the 64 MiB limit"
        } else {
            "stream ended in the middle of a line"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    buf.pop();
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_vias_are_backwards_compatible() {
        // A daemon without `vias` (or a non-node route) still parses.
        let old: RouteInfo = serde_json::from_str(
            r#"{"prefix":"10.244.2.0/26","next_hop":"node","port":"ipip@eth0","via":"10.0.0.2"}"#,
        )
        .unwrap();
        assert!(old.vias.is_empty());
        let host = RouteInfo {
            prefix: "0.0.0.0/0".into(),
            next_hop: "host".into(),
            port: Some("podrouter0".into()),
            via: None,
            vias: vec![],
        };
        assert_eq!(
            serde_json::to_string(&host).unwrap(),
            r#"{"prefix":"0.0.0.0/0","next_hop":"host","port":"podrouter0"}"#
        );
        // An ECMP route: `via` is the first of `vias`.
        let a: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let b: Ipv4Addr = "10.0.0.3".parse().unwrap();
        let ecmp = RouteInfo {
            prefix: "10.250.0.0/24".into(),
            next_hop: "node".into(),
            port: Some("ipip@eth0".into()),
            via: Some(a),
            vias: vec![a, b],
        };
        let s = serde_json::to_string(&ecmp).unwrap();
        assert!(
            s.ends_with(r#""via":"10.0.0.2","vias":["10.0.0.2","10.0.0.3"]}"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<RouteInfo>(&s).unwrap(), ecmp);
    }

    #[test]
    fn request_wire_format_is_stable() {
        let req = Request {
            version: 1,
            call: Call::Attach(AttachParams {
                id: "pod1".into(),
                netns: "/run/netns/pod1".into(),
                ifname: "eth0".into(),
                ip: None,
                mtu: Some(1480),
                identity: None,
            }),
        };
        let s = serde_json::to_string(&req).unwrap();
        assert_eq!(
            s,
            r#"{"version":1,"method":"attach","params":{"id":"pod1","netns":"/run/netns/pod1","ifname":"eth0","mtu":1480}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), req);
        let status: Request = serde_json::from_str(r#"{"version":1,"method":"status"}"#).unwrap();
        assert_eq!(status.call, Call::Status);
        let reload = Request {
            version: 1,
            call: Call::Reload,
        };
        let s = serde_json::to_string(&reload).unwrap();
        assert_eq!(s, r#"{"version":1,"method":"reload"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), reload);
        let defaulted: Request = serde_json::from_str(
            r#"{"version":1,"method":"attach","params":{"id":"a","netns":"/x"}}"#,
        )
        .unwrap();
        match defaulted.call {
            Call::Attach(p) => assert_eq!(p.ifname, "eth0"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_requests_are_rejected() {
        for bad in [
            r#"{"version":1,"method":"reboot"}"#,
            r#"{"version":1,"method":"attach","params":{"id":"a"}}"#,
            r#"{"version":1,"method":"detach","params":{"id":"a","extra":1}}"#,
            r#"{"method":"status"}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_response_format() {
        let r = Response::err(ErrorCode::NotFound, "no pod with id x");
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"version":1,"error":{"code":"not_found","message":"no pod with id x"}}"#
        );
        assert_eq!(
            ErrorCode::AddressUnavailable.to_string(),
            "address_unavailable"
        );
        assert_eq!(ErrorCode::ReloadRefused.to_string(), "reload_refused");
        let ok = Response::ok(Reply::Reloaded(ReloadInfo {
            config: "/etc/podrouter.toml".into(),
            pod_cidrs: vec!["10.244.1.0/26".into(), "10.244.9.0/26".into()],
            added: vec!["10.244.9.0/26".into()],
            removed: vec![],
            changed: vec![],
        }));
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"version":1,"result":{"reloaded":{"config":"/etc/podrouter.toml","pod_cidrs":["10.244.1.0/26","10.244.9.0/26"],"added":["10.244.9.0/26"],"removed":[],"changed":[]}}}"#
        );
    }

    #[test]
    fn line_reader_limits() {
        let mut ok = io::Cursor::new(b"abc\ndef\n".to_vec());
        assert_eq!(read_line(&mut ok).unwrap().as_deref(), Some("abc"));
        assert_eq!(read_line(&mut ok).unwrap().as_deref(), Some("def"));
        assert_eq!(read_line(&mut ok).unwrap(), None);
        let mut cut = io::Cursor::new(b"abc".to_vec());
        assert!(read_line(&mut cut).is_err());
        let mut long = io::Cursor::new(vec![b'x'; MAX_LINE + 10]);
        assert!(read_line(&mut long).is_err());
    }
}
