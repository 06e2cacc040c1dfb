//! Configuration reload (`podrouterctl reload`, SIGHUP): which keys may
//! change while podrouterd runs, and the plan for a new config.
//!
//! Runtime-changeable: `pod_cidrs` (blocks added and removed; a reorder
//! only changes which block IPAM allocates from first), `log_level` and
//! `[[bgp.peers]]` (a peer added gets a new session, a peer removed has
//! its session stopped, a peer whose entry changed is both; every other
//! session is left alone and stays Established).
//! Everything else is fixed at start: a reload that changes any other key
//! is refused as a whole, naming each such key ("restart podrouterd to
//! change ...").
//!
//! [`plan`] compares (pure); [`reload`] applies a plan to the daemon's
//! [`Node`] all or nothing: every refusal comes before anything changes;
//! then IPAM, then the node's kernel routes through [`NodeNet`] (the only
//! step that can fail, undone in reverse if it does), then the FIB, the
//! log level, the running config, BGP's announcements and BGP's peers. Tests drive it
//! with a fake [`NodeNet`], so every rollback is checked without root.
//!
//! Invariants: [`plan`] returns `Ok` only when the new config differs
//! from the running one in runtime-changeable keys alone; `added` and
//! `removed` are disjoint and each sorted. A [`reload`] that returns an
//! error left the config, IPAM, FIB and kernel routes as they were
//! (except [`ReloadError::BgpNotUpdated`], where only BGP lags).
//! `[[bgp.peers]]` entries compare whole: a peer is kept only when its
//! entry is unchanged (any field, e.g. a new password or hold time,
//! restarts that one session).
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use podrouter_api::{ErrorCode, ReloadInfo};
use podrouter_router::fib::{Fib, FibChange, NextHop};
use podrouter_types::Prefix;

use crate::bgp::BgpHandle;
use crate::config::{Bgp, Config, ConfigError, Dataplane};
use crate::ipam::Ipam;
use crate::nodenet::NodeNet;
use crate::podnet::PodNetError;

/// What a reload would change.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Blocks in the new config that are not running.
    pub added: Vec<Prefix>,
    /// Running blocks the new config drops.
    pub removed: Vec<Prefix>,
    /// `log_level` changes.
    pub log_level: bool,
    /// `[[bgp.peers]]` changes (entries added, removed or edited).
    pub peers: bool,
    /// The config to run once the plan is applied.
    pub new: Config,
}

impl Plan {
    /// Nothing to do (the file equals the running config, up to the order
    /// of `pod_cidrs`).
    pub fn is_noop(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && !self.log_level && !self.peers
    }
}

/// Keys a reload cannot change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedsRestart(pub Vec<String>);

impl fmt::Display for NeedsRestart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.0.join(", ");
        write!(
            f,
            "reload refused, nothing changed: {} cannot change while podrouterd runs; \
             restart podrouterd to change {keys}",
            if self.0.len() == 1 {
                "this key"
            } else {
                "these keys"
            }
        )
    }
}

impl std::error::Error for NeedsRestart {}

/// Compares the running config with a new one (already loaded and
/// checked by [`Config::load`]).
pub fn plan(old: &Config, new: Config) -> Result<Plan, NeedsRestart> {
    let fixed = fixed_changes(old, &new);
    if !fixed.is_empty() {
        return Err(NeedsRestart(fixed));
    }
    let mut added: Vec<Prefix> = new
        .pod_cidrs
        .iter()
        .filter(|c| !old.pod_cidrs.contains(c))
        .copied()
        .collect();
    let mut removed: Vec<Prefix> = old
        .pod_cidrs
        .iter()
        .filter(|c| !new.pod_cidrs.contains(c))
        .copied()
        .collect();
    added.sort();
    removed.sort();
    Ok(Plan {
        added,
        removed,
        log_level: old.log_level != new.log_level,
        peers: peer_entries(old) != peer_entries(&new),
        new,
    })
}

/// The names of every changed key that is fixed at start, in file order.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut key = |changed: bool, name: &str| {
        if changed {
            keys.push(name.to_string());
        }
    };
    key(old.node_name != new.node_name, "node_name");
    key(old.node_ip != new.node_ip, "node_ip");
    key(old.api_socket != new.api_socket, "api_socket");
    key(old.state_dir != new.state_dir, "state_dir");
    key(old.metrics != new.metrics, "[metrics] listen");
    let (a, b): (&Dataplane, &Dataplane) = (&old.dataplane, &new.dataplane);
    key(a.backend != b.backend, "[dataplane] backend");
    key(a.xdp_mode != b.xdp_mode, "[dataplane] xdp_mode");
    key(
        a.afxdp_rx_chunks != b.afxdp_rx_chunks,
        "[dataplane] afxdp_rx_chunks",
    );
    key(a.workers != b.workers, "[dataplane] workers");
    key(a.cores != b.cores, "[dataplane] cores");
    key(a.mtu != b.mtu, "[dataplane] mtu");
    key(a.host_port != b.host_port, "[dataplane] host_port");
    key(a.uplink != b.uplink, "[dataplane] uplink");
    key(a.encap != b.encap, "[dataplane] encap");
    key(a.tunnel != b.tunnel, "[dataplane] tunnel");
    key(a.uplink_xdp != b.uplink_xdp, "[dataplane] uplink_xdp");
    key(a.ipip_gso != b.ipip_gso, "[dataplane] ipip_gso");
    key(a.vxlan_port != b.vxlan_port, "[dataplane] vxlan_port");
    key(a.vxlan_vni != b.vxlan_vni, "[dataplane] vxlan_vni");
    key(a.batch_size != b.batch_size, "[dataplane] batch_size");
    key(a.busy_poll_us != b.busy_poll_us, "[dataplane] busy_poll_us");
    key(
        a.busy_poll_max_us != b.busy_poll_max_us,
        "[dataplane] busy_poll_max_us",
    );
    key(
        a.worker_slice_us != b.worker_slice_us,
        "[dataplane] worker_slice_us",
    );
    key(
        a.worker_rt_priority != b.worker_rt_priority,
        "[dataplane] worker_rt_priority",
    );
    key(a.icmp_rate != b.icmp_rate, "[dataplane] icmp_rate");
    key(a.icmp_burst != b.icmp_burst, "[dataplane] icmp_burst");
    key(
        a.flow_table_size != b.flow_table_size,
        "[dataplane] flow_table_size",
    );
    key(
        a.flow_timeouts != b.flow_timeouts,
        "[dataplane.flow_timeouts]",
    );
    key(old.routes != new.routes, "[[routes]]");
    match (&old.bgp, &new.bgp) {
        (None, None) => {}
        (Some(a), Some(b)) => bgp_changes(a, b, &mut key),
        _ => key(true, "[bgp]"),
    }
    keys
}

fn bgp_changes(a: &Bgp, b: &Bgp, key: &mut impl FnMut(bool, &str)) {
    key(a.asn != b.asn, "[bgp] asn");
    key(a.router_id != b.router_id, "[bgp] router_id");
    key(a.port != b.port, "[bgp] port");
    key(a.listen_address != b.listen_address, "[bgp] listen_address");
    key(a.hold_time != b.hold_time, "[bgp] hold_time");
    key(a.connect_retry != b.connect_retry, "[bgp] connect_retry");
    key(
        a.graceful_restart != b.graceful_restart,
        "[bgp] graceful_restart",
    );
    key(a.restart_time != b.restart_time, "[bgp] restart_time");
    key(a.import_pools != b.import_pools, "[bgp] import_pools");
    key(a.kernel_routes != b.kernel_routes, "[bgp] kernel_routes");
}

/// The `[[bgp.peers]]` entries, in file order (none without `[bgp]`).
fn peer_entries(cfg: &Config) -> &[crate::config::BgpPeer] {
    cfg.bgp.as_ref().map_or(&[], |b| &b.peers)
}

/// The removed blocks that still hold pods' addresses, with those pods'
/// ids (sorted), from (pod id, address) pairs.
pub fn pods_in(removed: &[Prefix], pods: &[(String, Ipv4Addr)]) -> Vec<(Prefix, Vec<String>)> {
    removed
        .iter()
        .filter_map(|b| {
            let mut ids: Vec<String> = pods
                .iter()
                .filter(|(_, ip)| b.contains(*ip))
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            (!ids.is_empty()).then_some((*b, ids))
        })
        .collect()
}

/// The refusal for removing blocks that still hold pods: `holders` are
/// (block, pod ids in it).
pub fn blocks_in_use(holders: &[(Prefix, Vec<String>)]) -> String {
    let parts: Vec<String> = holders
        .iter()
        .map(|(b, pods)| {
            format!(
                "{b} still holds the address of pod{} {}",
                if pods.len() == 1 { "" } else { "s" },
                pods.join(", ")
            )
        })
        .collect();
    format!(
        "reload refused, nothing changed: cannot remove a pod CIDR with pods in it: {} \
         (detach them first)",
        parts.join("; ")
    )
}

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "reload refused: podrouterd runs on its embedded defaults (started without \
         --config), there is no file to re-read"
    )]
    NoConfigFile,
    #[error("reload refused, running configuration unchanged: {0}")]
    BadConfig(ConfigError),
    #[error(transparent)]
    NeedsRestart(#[from] NeedsRestart),
    /// Removed blocks that still hold pods: (block, pod ids).
    #[error("{}", blocks_in_use(.0))]
    BlocksInUse(Vec<(Prefix, Vec<String>)>),
    #[error("reload refused, nothing changed: cannot ask the BGP speaker about {block}: {why}")]
    BgpQuery { block: Prefix, why: String },
    #[error(
        "reload refused, nothing changed: {block} is announced to this node by BGP peer {}: \
         another node owns that block",
        .peers.join(", ")
    )]
    AnnouncedByPeer { block: Prefix, peers: Vec<String> },
    #[error(
        "reload refused, nothing changed: addresses {} are in use in a block the new config \
         drops",
        addresses(.0)
    )]
    AddressesInUse(Vec<Ipv4Addr>),
    #[error(
        "reload failed and was rolled back, nothing changed: cannot route {block} to \
         {host_port} on the node: {source}"
    )]
    RouteAdd {
        block: Prefix,
        host_port: String,
        source: PodNetError,
    },
    #[error(
        "reload failed and was rolled back, nothing changed: cannot remove the node's route \
         to {block}: {source}"
    )]
    RouteDel { block: Prefix, source: PodNetError },
    #[error("the node's changes applied, but the BGP speaker did not take them: {0}")]
    BgpNotUpdated(String),
}

fn addresses(a: &[Ipv4Addr]) -> String {
    let list: Vec<String> = a.iter().map(|a| a.to_string()).collect();
    list.join(", ")
}

impl ReloadError {
    /// The wire's error class: a refusal, or an internal failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ReloadError::RouteAdd { .. }
            | ReloadError::RouteDel { .. }
            | ReloadError::BgpNotUpdated(_) => ErrorCode::Internal,
            _ => ErrorCode::ReloadRefused,
        }
    }
}

/// What a reload works on, borrowed from the daemon.
pub struct Node<'a> {
    pub cfg: &'a mut Config,
    pub ipam: &'a mut Ipam,
    pub fib: &'a Fib,
    pub net: &'a dyn NodeNet,
    pub bgp: Option<&'a BgpHandle>,
    /// (id, address) of every attached pod.
    pub pods: Vec<(String, Ipv4Addr)>,
}

/// Re-reads `path` (`None`: the daemon runs on its defaults) and applies
/// what may change at runtime, all or nothing (see the module doc).
/// Blocks added get IPAM space, the FIB's Unreachable entry and the
/// node's kernel route to the host port, and are announced over BGP;
/// blocks removed (only if no pod holds an address in them) lose all of
/// that and are withdrawn. Every outcome is logged.
pub fn reload(node: Node<'_>, path: Option<&Path>) -> Result<ReloadInfo, ReloadError> {
    let r = try_reload(node, path);
    match &r {
        Ok(info) if info.added.is_empty() && info.removed.is_empty() && info.changed.is_empty() => {
            log::info!("reload of {}: no change", info.config)
        }
        Ok(info) => log::info!(
            "reload of {}: applied; pod CIDRs now {} (added: {}; removed: {}){}",
            info.config,
            info.pod_cidrs.join(", "),
            none_if_empty(&info.added),
            none_if_empty(&info.removed),
            if info.changed.is_empty() {
                String::new()
            } else {
                format!("; also changed {}", info.changed.join(", "))
            }
        ),
        Err(e) => log::warn!("{e}"),
    }
    r
}

fn none_if_empty(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn try_reload(node: Node<'_>, path: Option<&Path>) -> Result<ReloadInfo, ReloadError> {
    let path = path.ok_or(ReloadError::NoConfigFile)?;
    let new = Config::load(path).map_err(ReloadError::BadConfig)?;
    let plan = plan(node.cfg, new)?;
    let holders = pods_in(&plan.removed, &node.pods);
    if !holders.is_empty() {
        return Err(ReloadError::BlocksInUse(holders));
    }
    // A block another node announces is not ours to take: both the
    // learned block's kernel route and ours would be the same route.
    if let Some(b) = node.bgp {
        for c in &plan.added {
            let rib = b
                .rib(Some(*c), 100)
                .map_err(|why| ReloadError::BgpQuery { block: *c, why })?;
            let text = c.to_string();
            let peers: Vec<String> = rib
                .routes
                .iter()
                .filter(|r| r.prefix == text && r.from != "local")
                .map(|r| r.from.clone())
                .collect();
            if !peers.is_empty() {
                return Err(ReloadError::AnnouncedByPeer { block: *c, peers });
            }
        }
    }
    let old_cidrs = node.cfg.pod_cidrs.clone();
    node.ipam
        .set_cidrs(&plan.new.pod_cidrs)
        .map_err(ReloadError::AddressesInUse)?;
    let host_port = node.cfg.dataplane.host_port.clone();
    if let Err(e) = change_host_routes(node.net, &host_port, &plan.added, &plan.removed) {
        let _ = node.ipam.set_cidrs(&old_cidrs);
        return Err(e);
    }
    // From here on nothing fails: the FIB, BGP and the running config.
    let mut changes: Vec<FibChange> = plan
        .added
        .iter()
        .map(|c| FibChange::Insert(*c, NextHop::Unreachable))
        .collect();
    changes.extend(plan.removed.iter().map(|c| FibChange::Remove(*c)));
    if !changes.is_empty() {
        node.fib.update(&changes);
    }
    let mut changed = Vec::new();
    if plan.log_level {
        crate::logger::set_level(plan.new.log_level.filter());
        changed.push("log_level".to_string());
    }
    *node.cfg = plan.new;
    let mut info = ReloadInfo {
        config: path.display().to_string(),
        pod_cidrs: node.cfg.pod_cidrs.iter().map(|c| c.to_string()).collect(),
        added: plan.added.iter().map(|c| c.to_string()).collect(),
        removed: plan.removed.iter().map(|c| c.to_string()).collect(),
        changed,
    };
    if !plan.added.is_empty() || !plan.removed.is_empty() {
        if let Some(b) = node.bgp {
            b.set_local_routes(node.cfg.pod_cidrs.clone())
                .map_err(ReloadError::BgpNotUpdated)?;
        }
    }
    if plan.peers {
        let mut what = "[[bgp.peers]]".to_string();
        if let Some(b) = node.bgp {
            let done = b.set_peers(node.cfg).map_err(ReloadError::BgpNotUpdated)?;
            let list = |a: &[Ipv4Addr]| {
                let v: Vec<String> = a.iter().map(|a| a.to_string()).collect();
                none_if_empty(&v)
            };
            what = format!(
                "[[bgp.peers]] (sessions started: {}; stopped: {})",
                list(&done.added),
                list(&done.removed)
            );
        }
        info.changed.push(what);
    }
    Ok(info)
}

/// The node's kernel routes to the host port: adds a route per block in
/// `added`, then removes one per block in `removed`; on the first failure
/// undoes what it did, in reverse, and returns why.
pub fn change_host_routes(
    net: &dyn NodeNet,
    host_port: &str,
    added: &[Prefix],
    removed: &[Prefix],
) -> Result<(), ReloadError> {
    let mut done_add: Vec<Prefix> = Vec::new();
    let mut done_del: Vec<Prefix> = Vec::new();
    let mut failure = None;
    for c in added {
        match net.host_route_add(*c, host_port) {
            Ok(()) => done_add.push(*c),
            Err(source) => {
                failure = Some(ReloadError::RouteAdd {
                    block: *c,
                    host_port: host_port.to_string(),
                    source,
                });
                break;
            }
        }
    }
    if failure.is_none() {
        for c in removed {
            match net.host_route_del(*c, host_port) {
                Ok(()) => done_del.push(*c),
                Err(source) => {
                    failure = Some(ReloadError::RouteDel { block: *c, source });
                    break;
                }
            }
        }
    }
    let Some(why) = failure else {
        return Ok(());
    };
    for c in done_del.iter().rev() {
        if let Err(e) = net.host_route_add(*c, host_port) {
            log::error!("reload rollback: cannot restore the node's route to {c}: {e}");
        }
    }
    for c in done_add.iter().rev() {
        if let Err(e) = net.host_route_del(*c, host_port) {
            log::error!("reload rollback: cannot remove the node's route to {c}: {e}");
        }
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
node_name = "n1"
node_ip = "10.0.0.1"
pod_cidrs = ["10.244.1.0/26"]
api_socket = "/tmp/x.sock"
state_dir = "/tmp/x"
log_level = "info"

[dataplane]
mtu = 1480

[[routes]]
prefix = "10.22.0.0/26"
via = "10.0.0.9"

[bgp]
asn = 64512
[[bgp.peers]]
address = "10.0.0.2"
asn = 64512
"#;

    fn cfg(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    fn with(from: &str, to: &str) -> Config {
        assert!(BASE.contains(from), "{from}");
        cfg(&BASE.replacen(from, to, 1))
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn pod_cidrs_and_log_level_change_at_runtime() {
        let old = cfg(BASE);
        let same = plan(&old, cfg(BASE)).unwrap();
        assert!(same.is_noop());
        let grown = with(
            r#"pod_cidrs = ["10.244.1.0/26"]"#,
            r#"pod_cidrs = ["10.244.1.0/26", "10.244.9.0/26", "10.244.5.0/26"]"#,
        );
        let pl = plan(&old, grown.clone()).unwrap();
        assert_eq!(pl.added, vec![p("10.244.5.0/26"), p("10.244.9.0/26")]);
        assert!(pl.removed.is_empty() && !pl.log_level && !pl.is_noop());
        assert_eq!(pl.new, grown);
        let swapped = with(
            r#"pod_cidrs = ["10.244.1.0/26"]"#,
            r#"pod_cidrs = ["10.244.2.0/26"]"#,
        );
        let pl = plan(&old, swapped).unwrap();
        assert_eq!(
            (pl.added, pl.removed),
            (vec![p("10.244.2.0/26")], vec![p("10.244.1.0/26")])
        );
        // A reorder is no change of blocks.
        let two = with(
            r#"pod_cidrs = ["10.244.1.0/26"]"#,
            r#"pod_cidrs = ["10.244.1.0/26", "10.244.2.0/26"]"#,
        );
        let reordered = with(
            r#"pod_cidrs = ["10.244.1.0/26"]"#,
            r#"pod_cidrs = ["10.244.2.0/26", "10.244.1.0/26"]"#,
        );
        assert!(plan(&two, reordered).unwrap().is_noop());
        let pl = plan(
            &old,
            with(r#"log_level = "info""#, r#"log_level = "debug""#),
        )
        .unwrap();
        assert!(pl.log_level && pl.added.is_empty());
    }

    #[test]
    fn bgp_peers_change_at_runtime() {
        let old = cfg(BASE);
        let more = cfg(&format!(
            "{BASE}[[bgp.peers]]\naddress = \"10.0.0.3\"\nasn = 64513\n"
        ));
        let pl = plan(&old, more.clone()).unwrap();
        assert!(pl.peers && !pl.is_noop() && pl.added.is_empty());
        let pl = plan(&more, cfg(BASE)).unwrap();
        assert!(pl.peers);
        let edited = with("address = \"10.0.0.2\"", "address = \"10.0.0.4\"");
        assert!(plan(&old, edited).unwrap().peers);
        let keyed = with(
            "address = \"10.0.0.2\"",
            "address = \"10.0.0.2\"\npassword = \"k\"",
        );
        assert!(plan(&old, keyed).unwrap().peers);
        assert!(!plan(&old, cfg(BASE)).unwrap().peers);
    }

    #[test]
    fn other_keys_need_a_restart_and_are_all_named() {
        let old = cfg(BASE);
        let cases = [
            ("node_name = \"n1\"", "node_name = \"n2\"", "node_name"),
            (
                "node_ip = \"10.0.0.1\"",
                "node_ip = \"10.0.0.3\"",
                "node_ip",
            ),
            ("mtu = 1480", "mtu = 1400", "[dataplane] mtu"),
            (
                "mtu = 1480",
                "mtu = 1480\nencap = \"never\"",
                "[dataplane] encap",
            ),
            ("via = \"10.0.0.9\"", "via = \"10.0.0.8\"", "[[routes]]"),
            (
                "asn = 64512\n[[",
                "asn = 64512\nhold_time = 30\n[[",
                "[bgp] hold_time",
            ),
            (
                "log_level = \"info\"",
                "log_level = \"info\"\n[metrics]\nlisten = \"127.0.0.1:9091\"",
                "[metrics] listen",
            ),
        ];
        for (from, to, name) in cases {
            let e = plan(&old, with(from, to)).unwrap_err();
            assert_eq!(e.0, vec![name.to_string()], "{to}");
            let text = e.to_string();
            assert!(
                text.contains(&format!("restart podrouterd to change {name}")),
                "{text}"
            );
            assert!(text.contains("nothing changed"), "{text}");
        }
        // Several at once, with a runtime-changeable one: all named, no plan.
        let many = cfg(&BASE
            .replace("mtu = 1480", "mtu = 1400\nworkers = 1\nbatch_size = 16")
            .replace(
                r#"pod_cidrs = ["10.244.1.0/26"]"#,
                r#"pod_cidrs = ["10.244.2.0/26"]"#,
            )
            .replace("node_name = \"n1\"", "node_name = \"other\""));
        let e = plan(&old, many).unwrap_err();
        assert_eq!(
            e.0,
            vec!["node_name", "[dataplane] mtu", "[dataplane] batch_size"]
        );
        assert!(e.to_string().contains("these keys"), "{e}");
        // Dropping [bgp] altogether.
        let cut = BASE.find("[bgp]").unwrap();
        let e = plan(&old, cfg(&BASE[..cut])).unwrap_err();
        assert_eq!(e.0, vec!["[bgp]"]);
    }

    #[test]
    fn removed_blocks_with_pods_are_found() {
        let pods = vec![
            ("b".to_string(), Ipv4Addr::new(10, 244, 2, 3)),
            ("a".to_string(), Ipv4Addr::new(10, 244, 2, 2)),
            ("c".to_string(), Ipv4Addr::new(10, 244, 1, 2)),
        ];
        let got = pods_in(&[p("10.244.2.0/26"), p("10.244.3.0/26")], &pods);
        assert_eq!(
            got,
            vec![(p("10.244.2.0/26"), vec!["a".into(), "b".into()])]
        );
        assert!(pods_in(&[p("10.244.3.0/26")], &pods).is_empty());
    }

    #[test]
    fn blocks_in_use_names_block_and_pods() {
        let m = blocks_in_use(&[
            (p("10.244.1.0/26"), vec!["pod-a".into()]),
            (p("10.244.2.0/26"), vec!["x".into(), "y".into()]),
        ]);
        assert!(
            m.contains("10.244.1.0/26 still holds the address of pod pod-a"),
            "{m}"
        );
        assert!(
            m.contains("10.244.2.0/26 still holds the address of pods x, y"),
            "{m}"
        );
        assert!(m.contains("nothing changed"), "{m}");
    }
}
