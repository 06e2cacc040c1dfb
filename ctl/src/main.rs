//! podrouterctl: the operator's CLI over podrouterd's API socket. Tables
//! for people, `--json` for scripts.
//!
//! Exit status: 0 done, 1 the daemon refused, 2 usage, 3 cannot reach the
//! daemon.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use podrouter_api::{
    AttachParams, BgpRibParams, Call, Client, ClientError, DetachParams, EndpointRef,
    NamedPortSpec, NamespaceLabelParams, PodIdentity, PodLabelParams, PolicyRef, PolicyShowParams,
    Reply, TextParams, DEFAULT_SOCKET,
};

use crate::table::Table;

mod service;
mod table;
mod tap;

/// Operate a podrouter node.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// podrouterd's API socket.
    #[arg(long, short, env = "PODROUTER_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the daemon.
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node and daemon summary.
    Status,
    /// List attached pods.
    #[command(alias = "list")]
    Pods,
    /// Give a pod's network namespace an interface and start forwarding.
    Attach {
        /// Name of the attachment (e.g. the container id).
        id: String,
        /// The pod's network namespace (/run/netns/NAME or /proc/PID/ns/net).
        #[arg(long)]
        netns: String,
        /// Interface name inside the pod.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Address to use instead of the next free one.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Interface MTU instead of the node's.
        #[arg(long)]
        mtu: Option<u16>,
        /// The pod's Kubernetes namespace, for network policy.
        #[arg(long)]
        namespace: Option<String>,
        /// The pod's Kubernetes name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A named container port, NAME=PORT or NAME=PROTOCOL/PORT
        /// (repeatable).
        #[arg(long = "port", value_parser = parse_named_port)]
        ports: Vec<NamedPortSpec>,
    },
    /// Remove a pod's interface and release its address.
    Detach { id: String },
    /// Show the FIB.
    Routes,
    /// Show data-plane counters and per-port counters.
    Counters,
    /// Make podrouterd re-read its config file (like SIGHUP): pod_cidrs
    /// and log_level change at runtime; anything else is refused.
    Reload,
    /// BGP: neighbours and routes.
    Bgp {
        #[command(subcommand)]
        command: BgpCommand,
    },
    /// Kubernetes NetworkPolicy objects.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A local pod's identity for network policy.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// A namespace's labels for network policy.
    Namespace {
        #[command(subcommand)]
        command: NamespaceCommand,
    },
    /// Pods of other nodes, for network policy.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Services for the built-in load balancer (ClusterIPs balanced in
    /// the data plane; opt-in).
    Service {
        #[command(subcommand)]
        command: service::ServiceCommand,
    },
    /// Capture a pod's, a port's or the uplink's frames (both directions)
    /// to a pcapng file, or to standard output with `-w -`.
    Capture(tap::CaptureArgs),
    /// Show each pipeline stage's decision for a pod's next frames.
    Trace(tap::TraceArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Add or replace the NetworkPolicy objects of a YAML or JSON file
    /// (`---` separated; `-` reads standard input); all or nothing.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Remove a policy, NAMESPACE/NAME.
    Delete { policy: String },
    /// Every policy and the local pods it selects.
    List,
    /// A local pod's effective rules (id, address or NAMESPACE/NAME).
    Show { pod: String },
}

#[derive(Subcommand)]
enum PodCommand {
    /// Set labels (KEY=VALUE) or remove them (KEY-) on a local pod.
    Label {
        /// Attach id, address or NAMESPACE/NAME.
        pod: String,
        #[arg(required = true)]
        labels: Vec<String>,
        /// Replace the pod's named ports: NAME=PORT or NAME=PROTOCOL/PORT
        /// (repeatable).
        #[arg(long = "port", value_parser = parse_named_port)]
        ports: Vec<NamedPortSpec>,
    },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Set labels (KEY=VALUE) or remove them (KEY-) on a namespace.
    Label {
        namespace: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Add or replace pods of other nodes from a YAML or JSON file: a list
    /// of {ip, node, namespace, name, labels, ports}.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Forget a pod of another node.
    Delete { ip: Ipv4Addr },
    /// Every pod policy knows about.
    List,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_named_port(s: &str) -> Result<NamedPortSpec, String> {
    let err = || format!("{s:?} is not NAME=PORT or NAME=PROTOCOL/PORT");
    let (name, rest) = s.split_once('=').ok_or_else(err)?;
    let (protocol, port) = match rest.split_once('/') {
        Some((p, n)) => (p.to_ascii_uppercase(), n),
        None => ("TCP".to_string(), rest),
    };
    Ok(NamedPortSpec {
        name: name.to_string(),
        protocol,
        port: port.parse().map_err(|_| err())?,
    })
}

/// `k=v` sets, `k-` removes (kubectl's syntax).
fn label_changes(
    args: &[String],
) -> Result<(std::collections::BTreeMap<String, String>, Vec<String>), String> {
    let mut set = std::collections::BTreeMap::new();
    let mut remove = Vec::new();
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = a.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            return Err(format!("{a:?} is neither KEY=VALUE nor KEY-"));
        }
    }
    Ok((set, remove))
}

fn read_file(path: &PathBuf) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("reading standard input: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Turns the policy, pod, namespace and endpoint commands into calls.
fn policy_call(command: Command) -> Result<Call, String> {
    Ok(match command {
        Command::Policy { command } => match command {
            PolicyCommand::Apply { file } => Call::PolicyApply(TextParams {
                text: read_file(&file)?,
            }),
            PolicyCommand::Delete { policy } => {
                let (namespace, name) = policy
                    .split_once('/')
                    .ok_or_else(|| format!("{policy:?} is not NAMESPACE/NAME"))?;
                Call::PolicyDelete(PolicyRef {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            PolicyCommand::List => Call::PolicyList,
            PolicyCommand::Show { pod } => Call::PolicyShow(PolicyShowParams { pod }),
        },
        Command::Pod {
            command: PodCommand::Label { pod, labels, ports },
        } => {
            let (set, remove) = label_changes(&labels)?;
            Call::PodLabel(PodLabelParams {
                pod,
                set,
                remove,
                ports: (!ports.is_empty()).then_some(ports),
            })
        }
        Command::Namespace {
            command: NamespaceCommand::Label { namespace, labels },
        } => {
            let (set, remove) = label_changes(&labels)?;
            Call::NamespaceLabel(NamespaceLabelParams {
                namespace,
                set,
                remove,
            })
        }
        Command::Endpoint { command } => match command {
            EndpointCommand::Apply { file } => Call::EndpointApply(TextParams {
                text: read_file(&file)?,
            }),
            EndpointCommand::Delete { ip } => Call::EndpointDelete(EndpointRef { ip }),
            EndpointCommand::List => Call::EndpointList,
        },
        _ => unreachable!("only policy commands come here"),
    })
}

#[derive(Subcommand)]
enum BgpCommand {
    /// Neighbours: state, time in state, prefixes, last error.
    #[command(alias = "protocols")]
    Peers,
    /// The RIB: every path per prefix, best first.
    #[command(alias = "route")]
    Rib {
        /// Only prefixes inside this one.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let call = match args.command {
        Command::Status => Call::Status,
        Command::Pods => Call::ListPods,
        Command::Attach {
            id,
            netns,
            ifname,
            ip,
            mtu,
            namespace,
            name,
            labels,
            ports,
        } => {
            let identity =
                (namespace.is_some() || name.is_some() || !labels.is_empty() || !ports.is_empty())
                    .then(|| PodIdentity {
                        namespace: namespace.unwrap_or_else(|| "default".into()),
                        name: name.unwrap_or_else(|| id.clone()),
                        labels: labels.into_iter().collect(),
                        ports,
                    });
            Call::Attach(AttachParams {
                id,
                netns,
                ifname,
                ip,
                mtu,
                identity,
            })
        }
        Command::Detach { id } => Call::Detach(DetachParams {
            id,
            netns: None,
            ifname: None,
        }),
        Command::Routes => Call::Routes,
        Command::Counters => Call::Counters,
        Command::Reload => Call::Reload,
        Command::Bgp { command } => match command {
            BgpCommand::Peers => Call::BgpPeers,
            BgpCommand::Rib { prefix, limit } => Call::BgpRib(BgpRibParams {
                prefix,
                limit: Some(limit),
            }),
        },
        Command::Capture(a) => return tap::capture(&args.socket, a),
        Command::Trace(a) => return tap::trace(&args.socket, a, args.json),
        c @ (Command::Policy { .. }
        | Command::Pod { .. }
        | Command::Namespace { .. }
        | Command::Endpoint { .. }) => match policy_call(c) {
            Ok(call) => call,
            Err(e) => {
                eprintln!("podrouterctl: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Service { command } => match service::call(command) {
            Ok(call) => call,
            Err(e) => {
                eprintln!("podrouterctl: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let reply = Client::connect(&args.socket, Duration::from_secs(args.timeout))
        .and_then(|mut c| c.call(call));
    match reply {
        Ok(r) => {
            if args.json {
                println!("{}", json(&r));
            } else {
                print!("{}", text(&r));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podrouterctl: {e}");
            match e {
                ClientError::Api(_) => ExitCode::from(1),
                _ => ExitCode::from(3),
            }
        }
    }
}

fn json(r: &Reply) -> String {
    let v = match r {
        Reply::Status(s) => serde_json::to_value(s),
        Reply::Pods(p) => serde_json::to_value(p),
        Reply::Pod(p) => serde_json::to_value(p),
        Reply::Detached { id } => Ok(serde_json::json!({ "id": id })),
        Reply::Routes(r) => serde_json::to_value(r),
        Reply::Counters(c) => serde_json::to_value(c),
        Reply::BgpPeers(p) => serde_json::to_value(p),
        Reply::BgpRib(r) => serde_json::to_value(r),
        Reply::Reloaded(r) => serde_json::to_value(r),
        Reply::PolicyApplied(p) => serde_json::to_value(p),
        Reply::PolicyDeleted(p) => serde_json::to_value(p),
        Reply::Policies(p) => serde_json::to_value(p),
        Reply::PodPolicy(p) => serde_json::to_value(p),
        Reply::Labels(l) => serde_json::to_value(l),
        Reply::EndpointsChanged(e) => serde_json::to_value(e),
        Reply::Endpoints(e) => serde_json::to_value(e),
        Reply::ServicesApplied(s) => serde_json::to_value(s),
        Reply::ServiceDeleted(s) => serde_json::to_value(s),
        Reply::Services(s) => serde_json::to_value(s),
        Reply::Capture(i) | Reply::Trace(i) => serde_json::to_value(i),
        Reply::Takeover(o) => serde_json::to_value(o),
    };
    v.and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn text(r: &Reply) -> String {
    match r {
        Reply::Status(s) => {
            let mut t = Table::new(&["FIELD", "VALUE"]);
            t.row([String::from("node"), s.node_name.clone()]);
            t.row(["node ip".into(), s.node_ip.to_string()]);
            t.row(["pod cidrs".into(), s.pod_cidrs.join(", ")]);
            t.row(["backend".into(), s.backend.clone()]);
            t.row(["encap".into(), s.encap.clone()]);
            t.row(["tunnel".into(), s.tunnel.clone()]);
            if let Some(v) = &s.vxlan {
                t.row(["vxlan port".into(), v.port.to_string()]);
                t.row(["vxlan vni".into(), v.vni.to_string()]);
                t.row(["vtep mac".into(), v.vtep_mac.clone()]);
                t.row(["vxlan uplink".into(), v.uplink.clone()]);
            }
            if let Some(g) = &s.ipip_gso {
                let text = match &g.tap {
                    Some(tap) if g.enabled => format!(
                        "on via {tap} (prog {}): {} frames, {} bytes, {} refused",
                        g.prog_id.unwrap_or(0),
                        g.frames,
                        g.bytes,
                        g.errors
                    ),
                    _ => "off (segments cut in userspace)".to_string(),
                };
                t.row(["ipip gso".into(), text]);
            }
            if !s.path_mtus.is_empty() {
                let learned: Vec<String> = s
                    .path_mtus
                    .iter()
                    .map(|p| format!("{} {}", p.node, p.mtu))
                    .collect();
                t.row(["path mtu".into(), learned.join(", ")]);
            }
            t.row(["workers".into(), s.workers.to_string()]);
            t.row(["pods".into(), s.pods.to_string()]);
            t.row(["routes".into(), s.routes.to_string()]);
            t.row(["free addresses".into(), s.free_addresses.to_string()]);
            t.row(["uptime".into(), format!("{}s", s.uptime_secs)]);
            if let Some(u) = &s.afxdp_umem {
                let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
                t.row([
                    "umem receive".into(),
                    format!(
                        "{} in {} UMEMs ({} chunks standing per pod port)",
                        mib(u.rx_bytes),
                        u.rx_umems,
                        u.rx_chunks_per_port
                    ),
                ]);
                t.row([
                    "umem transmit".into(),
                    format!(
                        "{} in {} UMEM{} (one per worker)",
                        mib(u.tx_bytes),
                        u.tx_umems,
                        if u.tx_umems == 1 { "" } else { "s" }
                    ),
                ]);
            }
            if let Some(a) = &s.api {
                t.row([
                    "api connections".into(),
                    format!("{} open (at most {})", a.connections, a.max_connections),
                ]);
                t.row([
                    "api refused".into(),
                    format!(
                        "{} busy, {} timed out, {} oversized, {} bad, {} unread",
                        a.refused_busy,
                        a.request_timeouts,
                        a.oversized,
                        a.bad_requests,
                        a.write_timeouts
                    ),
                ]);
            }
            t.row([
                "version".into(),
                format!("{} (API {})", s.daemon_version, s.api_version),
            ]);
            let mut out = t.render();
            if !s.ports.is_empty() {
                let mut p = Table::new(&[
                    "PORT", "NAME", "BACKEND", "XDP MODE", "XDP PROG", "NODE END",
                ]);
                for port in &s.ports {
                    let dash = || "-".to_string();
                    p.row([
                        port.port.to_string(),
                        port.name.clone(),
                        port.backend.clone(),
                        port.xdp_mode.clone().unwrap_or_else(dash),
                        port.xdp_prog_id.map_or_else(dash, |i| i.to_string()),
                        port.xdp_ifname.clone().unwrap_or_else(dash),
                    ]);
                }
                out.push('\n');
                out.push_str(&p.render());
            }
            out
        }
        Reply::Pods(pods) => {
            let mut t = Table::new(&[
                "ID", "IP", "IFNAME", "MAC", "MTU", "PORT", "WORKER", "NETNS",
            ]);
            for p in pods {
                t.row([
                    p.id.clone(),
                    p.ip.to_string(),
                    p.ifname.clone(),
                    p.mac.clone(),
                    p.mtu.to_string(),
                    p.port.to_string(),
                    p.worker.to_string(),
                    p.netns.clone(),
                ]);
            }
            t.render()
        }
        Reply::Pod(p) => format!(
            "attached {} as {} {}/32 (mac {}, mtu {}, port {}) in {}\n",
            p.id, p.ifname, p.ip, p.mac, p.mtu, p.port, p.netns
        ),
        Reply::Detached { id } => format!("detached {id}\n"),
        Reply::PolicyApplied(names) => names.iter().map(|n| format!("applied {n}\n")).collect(),
        Reply::PolicyDeleted(p) => format!("deleted {}/{}\n", p.namespace, p.name),
        Reply::Policies(ps) => {
            let mut t = Table::new(&[
                "NAMESPACE",
                "NAME",
                "POD SELECTOR",
                "TYPES",
                "INGRESS",
                "EGRESS",
                "SELECTS",
            ]);
            for p in ps {
                t.row([
                    p.namespace.clone(),
                    p.name.clone(),
                    p.pod_selector.clone(),
                    p.policy_types.join(","),
                    p.ingress_rules.to_string(),
                    p.egress_rules.to_string(),
                    p.selects.join(","),
                ]);
            }
            t.render()
        }
        Reply::PodPolicy(p) => {
            let labels: Vec<String> = p
                .identity
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut out = format!(
                "pod {} {} {}/{} labels {}\n",
                p.id,
                p.ip,
                p.identity.namespace,
                p.identity.name,
                if labels.is_empty() {
                    "(none)".to_string()
                } else {
                    labels.join(",")
                }
            );
            for (dir, names, rules) in [
                ("ingress", &p.ingress_policies, &p.ingress),
                ("egress", &p.egress_policies, &p.egress),
            ] {
                match rules {
                    None => out.push_str(&format!("{dir}: not isolated (everything allowed)\n")),
                    Some(r) => {
                        out.push_str(&format!("{dir}: isolated by {}\n", names.join(", ")));
                        if r.peers.is_empty() {
                            out.push_str("  nothing allowed\n");
                        }
                        let mut t = Table::new(&["  PEER", "PORTS"]);
                        for pp in &r.peers {
                            t.row([format!("  {}", pp.peer), pp.ports.clone()]);
                        }
                        out.push_str(&t.render());
                    }
                }
            }
            out
        }
        Reply::Labels(l) => {
            let labels: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "labels: {}\n",
                if labels.is_empty() {
                    "(none)".into()
                } else {
                    labels.join(",")
                }
            )
        }
        Reply::EndpointsChanged(ips) => ips.iter().map(|ip| format!("endpoint {ip}\n")).collect(),
        Reply::ServicesApplied(names) => names.iter().map(|n| format!("applied {n}\n")).collect(),
        Reply::ServiceDeleted(s) => format!("deleted service {}/{}\n", s.namespace, s.name),
        Reply::Services(s) => service::table(s),
        Reply::Capture(i) | Reply::Trace(i) => format!("tap on {} (port {})\n", i.port, i.port_id),
        Reply::Takeover(o) => format!("takeover offered by pid {}\n", o.pid),
        Reply::Endpoints(eps) => {
            let mut t = Table::new(&["IP", "NODE", "NAMESPACE", "NAME", "LABELS", "PORTS"]);
            for e in eps {
                t.row([
                    e.ip.to_string(),
                    e.node.clone(),
                    e.identity.namespace.clone(),
                    e.identity.name.clone(),
                    e.identity
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    e.identity
                        .ports
                        .iter()
                        .map(|p| format!("{}={}/{}", p.name, p.protocol, p.port))
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
            }
            t.render()
        }
        Reply::Reloaded(r) => {
            let mut lines = vec![format!("reloaded {}", r.config)];
            if r.added.is_empty() && r.removed.is_empty() && r.changed.is_empty() {
                lines.push("no change".into());
            }
            if !r.added.is_empty() {
                lines.push(format!("added pod CIDRs: {}", r.added.join(", ")));
            }
            if !r.removed.is_empty() {
                lines.push(format!("removed pod CIDRs: {}", r.removed.join(", ")));
            }
            if !r.changed.is_empty() {
                lines.push(format!("changed: {}", r.changed.join(", ")));
            }
            lines.push(format!("pod CIDRs: {}", r.pod_cidrs.join(", ")));
            lines.join("\n") + "\n"
        }
        Reply::Routes(routes) => {
            let mut t = Table::new(&["PREFIX", "NEXT HOP", "VIA"]);
            for r in routes {
                // Routes to other nodes have both: "192.168.57.12 (ipip@eth0)";
                // ECMP routes list every node: "192.168.57.12,192.168.57.13 (..)".
                let nodes = if r.vias.len() > 1 {
                    Some(
                        r.vias
                            .iter()
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                } else {
                    r.via.map(|v| v.to_string())
                };
                let via = match (nodes, &r.port) {
                    (Some(v), Some(p)) => format!("{v} ({p})"),
                    (Some(v), None) => v,
                    (None, Some(p)) => p.clone(),
                    (None, None) => "-".into(),
                };
                t.row([r.prefix.clone(), r.next_hop.clone(), via]);
            }
            t.render()
        }
        Reply::Counters(c) => {
            let mut t = Table::new(&["COUNTER", "VALUE"]);
            t.row(["workers".into(), c.workers.to_string()]);
            for (k, v) in [
                ("rx", c.rx),
                ("tx", c.tx),
                ("sleeps", c.sleeps),
                ("host_inline", c.host_inline),
                ("busy_poll_backoffs", c.busy_poll_backoffs),
                ("busy_poll_stalls", c.busy_poll_stalls),
                (
                    "busy_poll_spin_ms",
                    c.worker_spin_ns.iter().sum::<u64>() / 1_000_000,
                ),
                ("arp_replies", c.arp_replies),
                ("icmp_sent", c.icmp_sent),
                ("icmp_rate_limited", c.icmp_rate_limited),
                ("flows capacity", c.flows.capacity),
                ("flows entries", c.flows.entries),
                ("flows inserted", c.flows.inserted),
                ("flows full", c.flows.full),
                ("flows expired", c.flows.expired),
                ("flows steered_to_host", c.flows.steered_to_host),
                ("policy allowed", c.flows.policy_allowed),
                ("flows purged", c.flows.purged),
            ] {
                t.row([k.to_string(), v.to_string()]);
            }
            for (k, v) in c.drops.iter().filter(|(_, v)| **v > 0) {
                t.row([format!("drop {k}"), v.to_string()]);
            }
            let mut p = Table::new(&[
                "PORT",
                "NAME",
                "RX PKTS",
                "RX BYTES",
                "TX PKTS",
                "TX BYTES",
                "DROPS",
                "DENIED IN",
                "DENIED OUT",
            ]);
            for x in &c.ports {
                p.row([
                    x.port.to_string(),
                    x.name.clone(),
                    x.rx_packets.to_string(),
                    x.rx_bytes.to_string(),
                    x.tx_packets.to_string(),
                    x.tx_bytes.to_string(),
                    x.drops.to_string(),
                    x.policy_denied_ingress.to_string(),
                    x.policy_denied_egress.to_string(),
                ]);
            }
            let mut out = vec![t.render(), p.render()];
            if c.workers > 1 {
                // How each port's receive work spread over the workers.
                let mut w = Table::new(&["PORT", "NAME", "RX PKTS BY WORKER"]);
                for x in &c.ports {
                    let by: Vec<String> =
                        x.rx_packets_per_worker.iter().map(u64::to_string).collect();
                    w.row([x.port.to_string(), x.name.clone(), by.join(" / ")]);
                }
                out.push(w.render());
            }
            if !c.tunnels.is_empty() {
                let mut n =
                    Table::new(&["TUNNEL PEER", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES"]);
                for x in &c.tunnels {
                    n.row([
                        x.node.clone(),
                        x.rx_packets.to_string(),
                        x.rx_bytes.to_string(),
                        x.tx_packets.to_string(),
                        x.tx_bytes.to_string(),
                    ]);
                }
                out.push(n.render());
            }
            out.join("\n")
        }
        Reply::BgpPeers(peers) => {
            let mut t = Table::new(&[
                "PEER",
                "AS",
                "TYPE",
                "STATE",
                "SINCE",
                "ROUTER ID",
                "HOLD",
                "RECEIVED",
                "ACCEPTED",
                "STALE",
                "LAST ERROR",
            ]);
            for p in peers {
                t.row([
                    p.address.to_string(),
                    p.asn.to_string(),
                    p.kind.clone(),
                    p.state.clone(),
                    duration_text(p.since_secs),
                    p.router_id.map_or_else(|| "-".into(), |r| r.to_string()),
                    p.hold_time.map_or_else(|| "-".into(), |h| format!("{h}s")),
                    p.prefixes_received.to_string(),
                    p.prefixes_accepted.to_string(),
                    p.prefixes_stale.to_string(),
                    p.last_error.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            t.render()
        }
        Reply::BgpRib(rib) => {
            let mut t = Table::new(&[
                "", "PREFIX", "NEXT HOP", "FROM", "AS PATH", "LOCPRF", "MED", "ORIGIN", "NOTE",
            ]);
            for r in &rib.routes {
                let flag = match (r.best, r.multipath, r.installed) {
                    (true, _, true) => "*>",
                    (true, _, false) => "*",
                    (false, true, true) => "=>",
                    (false, true, false) => "=",
                    _ => "",
                };
                let mut note = Vec::new();
                if r.stale {
                    note.push("stale".to_string());
                }
                if let Some(f) = &r.filtered {
                    note.push(format!("not installed: {f}"));
                }
                t.row([
                    flag.to_string(),
                    r.prefix.clone(),
                    r.next_hop.to_string(),
                    r.from.clone(),
                    if r.as_path.is_empty() {
                        "-".into()
                    } else {
                        r.as_path.clone()
                    },
                    r.local_pref.map_or_else(|| "-".into(), |l| l.to_string()),
                    r.med.map_or_else(|| "-".into(), |m| m.to_string()),
                    r.origin.clone(),
                    note.join(", "),
                ]);
            }
            format!(
                "{}{} prefixes, {} paths, {} installed in the FIB{}\n\
                 (*> best and installed, * best, => equal-cost multipath and installed \
                 (ECMP), = equal-cost multipath)\n",
                t.render(),
                rib.prefixes,
                rib.paths,
                rib.installed,
                if rib.truncated {
                    "; list truncated (--limit)"
                } else {
                    ""
                }
            )
        }
    }
}

/// `3d04h`, `2h05m`, `4m07s`, `9s`.
fn duration_text(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}
