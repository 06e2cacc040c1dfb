//! The daemon's side of the IPIP uplink: find the underlay interface, open
//! the raw-socket [`Uplink`] port, and program the node's kernel for routes
//! to other nodes' blocks.
//!
//! - **Interface**: `[dataplane] uplink` names it; without it, the
//!   interface holding `node_ip` is used. Its MTU bounds the outer packets
//!   (path MTU = MTU - 20); its IPv4 subnet (the address equal to
//!   `node_ip`, else its first) is what `encap = "cross-subnet"` compares
//!   next-hop nodes against. Both are read once, at start.
//! - **Decision**: one [`EncapPolicy`] for the node, carried by the uplink's
//!   port role to the data plane (see `podrouter_router::uplink`); the
//!   kernel routes below use the same [`EncapPolicy::encap_to`], so the two
//!   never disagree.
//! - **Kernel routes** (protocol 77, in the node namespace), per route to
//!   another node's block:
//!   - encapsulated: `<block> dev <host port> scope link`, so the node's
//!     own traffic to remote pods enters the router and the tunnel;
//!   - direct: `<block> via <node>`, so the node's kernel forwards what the
//!     router hands it, over the underlay (the receiving node's kernel
//!     forwards it to the host port through the pod CIDR route).
//!   - ECMP (several nodes, [`kernel_route`]): all encapsulated, the first
//!     form (the router spreads flows over the members); otherwise a route
//!     via the directly routed members only, a multipath one
//!     (`nexthop via A nexthop via B`) when there are several, so the
//!     node's kernel spreads too. Tunnelled members of a mixed group then
//!     carry only the pods' traffic, which the router spreads.
//!
//!   With an uplink, `net.ipv4.ip_forward=1` is set in the node namespace
//!   (logged when changed) in every mode: besides direct routing, a pod's
//!   replies to another node's own address leave through the host port
//!   and the node's kernel.
//!
//! Static `[[routes]]` go through [`install_node_routes`] at start (one
//! netlink exchange each); BGP's learned blocks, which can be 100,000s,
//! go through [`KernelRoutes`]: one socket kept open, the host port
//! resolved once per batch, many routes per `sendmsg`
//! ([`Netlink::route_batch`]), every failure reported with its prefix.
//!
//! Failure policy: with `uplink` named in the config, any failure to set up
//! the uplink stops the daemon; without it, a node whose uplink cannot be
//! set up runs without one (routes to other nodes are dropped and counted
//! as `no_uplink`) and says so in the log.
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use podrouter_router::bpf::UplinkTunnel;
use podrouter_router::encap::{EncapMode, EncapPolicy};
use podrouter_router::ipip_gso::{IpipGso, TAP_NAME, TAP_NAME_ALT};
use podrouter_router::pmtu::{self, OuterKind, OuterMatch, PathMtus, PmtuLearner, PmtuWatcher};
use podrouter_router::port::{Port, PortInfo, PortRole, Tunnel};
use podrouter_router::uplink::Uplink;
use podrouter_router::vxlan::MTU_OVERHEAD;
use podrouter_router::xdp_uplink::{XdpUplink, XdpUplinkConfig};
use podrouter_types::Prefix;

use crate::config::{Config, Encap, TunnelKind};
use crate::kernel_job::{job_vias, KernelJob};
use crate::netlink::{errno, Ipv4Route, LinkInfo, Netlink, NetlinkError, RouteOp, Scope};
use crate::vxlan_setup::VxlanSetup;

/// The uplink as the daemon keeps it (cheap to clone: the port is shared).
#[derive(Clone)]
pub struct UplinkState {
    /// The underlay interface.
    pub ifname: String,
    pub policy: EncapPolicy,
    pub tunnel: Tunnel,
    pub port: Arc<dyn Port>,
    /// The raw-socket IPIP uplink (the same port as `port`, or the one
    /// `xdp` wraps): its IPIP GSO path's state.
    pub ipip: Option<Arc<Uplink>>,
    /// What the VXLAN uplink set up on the node (undone at shutdown).
    pub vxlan: Option<Arc<VxlanSetup>>,
    /// The XDP receive of `uplink_xdp` (the same port as `port`): its
    /// program goes with the port.
    pub xdp: Option<Arc<XdpUplink>>,
    /// The thread learning the path MTU to other nodes from the
    /// underlay's ICMP (stops when the last clone goes); `None` if it
    /// could not start (logged: the uplink's MTU is then the only bound).
    pub pmtu: Option<Arc<PmtuWatcher>>,
    /// The path MTUs learned (what the workers read).
    pub path_mtus: Arc<PathMtus>,
}

impl std::fmt::Debug for UplinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkState")
            .field("ifname", &self.ifname)
            .field("policy", &self.policy)
            .field("tunnel", &self.tunnel)
            .finish()
    }
}

impl UplinkState {
    /// An IPIP uplink state on `podrouter0` with no tunnel TAPs, XDP or
    /// path-MTU thread: what the kernel-route tests need.
    #[cfg(test)]
    pub(crate) fn for_test(port: Arc<Uplink>, policy: EncapPolicy) -> UplinkState {
        UplinkState {
            ifname: "podrouter0".into(),
            policy,
            tunnel: Tunnel::Ipip,
            port,
            ipip: None,
            vxlan: None,
            xdp: None,
            pmtu: None,
            path_mtus: Arc::new(PathMtus::new()),
        }
    }

    /// Which tunnel this is, as the config names it.
    pub fn kind(&self) -> TunnelKind {
        match self.tunnel {
            Tunnel::Ipip => TunnelKind::Ipip,
            Tunnel::Vxlan(_) => TunnelKind::Vxlan,
        }
    }
}

/// The data plane's mode for the config's `encap`.
pub fn mode(e: Encap) -> EncapMode {
    match e {
        Encap::Always => EncapMode::Always,
        Encap::CrossSubnet => EncapMode::CrossSubnet,
        Encap::Never => EncapMode::Never,
    }
}

/// The name the uplink port has in the port table and counters.
pub fn port_name(tunnel: TunnelKind, ifname: &str) -> String {
    format!("{tunnel}@{ifname}")
}

/// Opens the uplink for `cfg`, or returns `None` when the node has none
/// (no `node_ip`, or an implicit uplink that cannot be set up: logged).
/// The caller publishes the port with the returned [`PortInfo`]. The path
/// MTUs learned towards other nodes are published into `path_mtus` (the
/// workers' copy). `adopted`: the IPIP uplink's socket handed over by a
/// takeover, used instead of a new one (then a failure is an error even
/// without an explicit `uplink`).
pub fn open(
    cfg: &Config,
    path_mtus: &Arc<PathMtus>,
    adopted: Option<OwnedFd>,
) -> Result<Option<(UplinkState, PortInfo)>, String> {
    let explicit = cfg.dataplane.uplink.is_some() || adopted.is_some();
    let Some(node_ip) = cfg.node_ip else {
        if explicit || !cfg.routes.is_empty() {
            log::warn!(
                "node_ip is not set: no uplink; traffic to other nodes' blocks is dropped (no_uplink)"
            );
        }
        return Ok(None);
    };
    match try_open(cfg, node_ip, path_mtus, adopted) {
        Ok(r) => Ok(Some(r)),
        Err(e) if explicit || cfg.dataplane.uplink_xdp => Err(e),
        Err(e) => {
            log::warn!(
                "no uplink ({e}); traffic to other nodes' blocks is dropped (no_uplink). \
                 Set [dataplane] uplink to the underlay interface."
            );
            Ok(None)
        }
    }
}

fn try_open(
    cfg: &Config,
    node_ip: Ipv4Addr,
    path_mtus: &Arc<PathMtus>,
    adopted: Option<OwnedFd>,
) -> Result<(UplinkState, PortInfo), String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let addrs = nl.addrs_v4().map_err(|e| e.to_string())?;
    let link: LinkInfo = match &cfg.dataplane.uplink {
        Some(name) => nl
            .link_get(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("uplink interface {name} does not exist"))?,
        None => {
            let index = addrs
                .iter()
                .find(|a| a.ip == node_ip)
                .map(|a| a.index)
                .ok_or_else(|| format!("node_ip {node_ip} is not on any interface"))?;
            nl.link_by_index(index)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("interface #{index} holding {node_ip} vanished"))?
        }
    };
    let on_link: Vec<_> = addrs.iter().filter(|a| a.index == link.index).collect();
    let subnet = on_link
        .iter()
        .find(|a| a.ip == node_ip)
        .or_else(|| on_link.first())
        .map(|a| Prefix::truncating(a.ip, a.prefix_len));
    let link_mtu = u16::try_from(link.mtu).unwrap_or(u16::MAX);
    let policy = EncapPolicy {
        mode: mode(cfg.dataplane.encap),
        subnet,
    };
    let tunnel_kind = cfg.dataplane.tunnel;
    let mut xdp = None;
    let mut ipip = None;
    let (port, tunnel, path_mtu, vxlan, outer): (Arc<dyn Port>, _, _, _, _) = match tunnel_kind {
        TunnelKind::Ipip => {
            let raw = match adopted {
                Some(fd) => Uplink::adopt(fd, node_ip, link_mtu),
                None => Uplink::open(node_ip, link_mtu),
            }
            .map_err(|e| format!("cannot open the uplink on {}: {e}", link.name))?;
            let path_mtu = raw.path_mtu();
            let raw = Arc::new(if cfg.dataplane.ipip_gso {
                with_ipip_gso(raw, &link, &mut nl)
            } else {
                raw
            });
            ipip = Some(raw.clone());
            let port: Arc<dyn Port> = if cfg.dataplane.uplink_xdp {
                let x = Arc::new(open_xdp(
                    cfg,
                    node_ip,
                    &link,
                    &mut nl,
                    UplinkTunnel::Ipip,
                    raw,
                )?);
                xdp = Some(x.clone());
                x
            } else {
                raw
            };
            (port, Tunnel::Ipip, path_mtu, None, OuterKind::Ipip)
        }
        TunnelKind::Vxlan => {
            if adopted.is_some() {
                return Err("a VXLAN uplink cannot be handed over".into());
            }
            if link_mtu < podrouter_router::uplink::MIN_LINK_MTU + MTU_OVERHEAD {
                return Err(format!(
                    "uplink {} MTU {link_mtu} is too small for VXLAN",
                    link.name
                ));
            }
            let (port, setup) = crate::vxlan_setup::open(cfg, node_ip, &link)
                .map_err(|e| format!("cannot open the VXLAN uplink on {}: {e}", link.name))?;
            let params = port.params();
            port.set_path_mtus(path_mtus.clone());
            let port: Arc<dyn Port> = if cfg.dataplane.uplink_xdp {
                let tunnel = UplinkTunnel::Vxlan { port: params.port };
                let x = Arc::new(open_xdp(cfg, node_ip, &link, &mut nl, tunnel, port)?);
                xdp = Some(x.clone());
                x
            } else {
                port
            };
            (
                port,
                Tunnel::Vxlan(params),
                link_mtu - MTU_OVERHEAD,
                Some(Arc::new(setup)),
                OuterKind::Vxlan { port: params.port },
            )
        }
    };
    log::info!(
        "uplink: {tunnel_kind} from {node_ip} over {} (subnet {}, MTU {link_mtu}, tunnel path MTU \
         {path_mtu}), encap {}",
        link.name,
        subnet.map_or_else(|| "unknown".to_string(), |s| s.to_string()),
        cfg.dataplane.encap
    );
    if policy.mode != EncapMode::Never && cfg.dataplane.mtu > path_mtu {
        log::warn!(
            "pod MTU {} is above the tunnel path MTU {path_mtu}: encapsulated packets with DF \
             that do not fit get ICMP fragmentation needed (set [dataplane] mtu = {path_mtu})",
            cfg.dataplane.mtu
        );
    }
    enable_forwarding();
    let pmtu = watch_path_mtu(node_ip, outer, link_mtu, path_mtus);
    let info = PortInfo {
        name: port_name(tunnel_kind, &link.name),
        role: PortRole::Uplink {
            local: node_ip,
            policy,
            tunnel,
        },
        mtu: path_mtu,
    };
    Ok((
        UplinkState {
            ifname: link.name,
            policy,
            tunnel,
            port,
            ipip,
            vxlan,
            xdp,
            pmtu,
            path_mtus: path_mtus.clone(),
        },
        info,
    ))
}

/// The raw-socket uplink `raw` with its IPIP GSO path
/// (`podrouter_router::ipip_gso`): the TAP `podrouter-ip` (or
/// `podrouter-ip2` while the other is held, by the daemon a takeover
/// replaces) with its program, raised. Where that fails the uplink goes
/// on without it (logged once, with the reason): segments are then cut
/// in userspace as before.
fn with_ipip_gso(raw: Uplink, link: &LinkInfo, nl: &mut Netlink) -> Uplink {
    let mut why = String::new();
    for name in [TAP_NAME, TAP_NAME_ALT] {
        let gso = match IpipGso::create(name, link.index) {
            Ok(g) => g,
            Err(e) => {
                why = e.to_string();
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    || e.raw_os_error() == Some(libc::EBUSY)
                {
                    continue;
                }
                break;
            }
        };
        let up = nl
            .link_get(name)
            .map_err(|e| e.to_string())
            .and_then(|l| l.ok_or_else(|| format!("{name} vanished")))
            .and_then(|l| nl.link_set_up(l.index).map_err(|e| e.to_string()));
        match up {
            Ok(()) => {
                log::info!(
                    "ipip_gso: TCP segments to other nodes leave whole through TAP {name} \
                     (tcx program id {}) out of {}",
                    gso.prog_id(),
                    link.name
                );
                return raw.with_gso(gso);
            }
            Err(e) => {
                why = format!("cannot raise {name}: {e}");
                break;
            }
        }
    }
    log::warn!(
        "ipip_gso: off ({why}); TCP segments to other nodes are cut in userspace \
         (set [dataplane] ipip_gso = false to silence this)"
    );
    raw
}

/// The uplink's XDP receive of `tunnel` around its port `inner` (the
/// raw-socket uplink, or the VXLAN TAP) (`uplink_xdp`): a program a
/// previous podrouterd left on the interface is replaced, another's
/// refused.
fn open_xdp(
    cfg: &Config,
    node_ip: Ipv4Addr,
    link: &LinkInfo,
    nl: &mut Netlink,
    tunnel: UplinkTunnel,
    inner: Arc<dyn Port>,
) -> Result<XdpUplink, String> {
    let fail = |e: std::io::Error| format!("uplink_xdp on {}: {e}", link.name);
    crate::podnet::detach_stale_xdp(nl, link).map_err(fail)?;
    let xcfg = XdpUplinkConfig {
        ifname: link.name.clone(),
        local: node_ip,
        tunnel,
        link_mtu: u16::try_from(link.mtu).unwrap_or(u16::MAX),
        mode: crate::nodenet::xdp_mode_request(cfg.dataplane.xdp_mode),
    };
    let x = XdpUplink::open(&xcfg, inner).map_err(fail)?;
    let what = match tunnel {
        UplinkTunnel::Ipip => "IPIP".to_string(),
        UplinkTunnel::Vxlan { port } => format!("VXLAN (UDP port {port})"),
    };
    log::info!(
        "uplink_xdp: {what} to {node_ip} on {} goes to {} AF_XDP socket(s) ({}, program id {}); \
         everything else to the kernel",
        link.name,
        x.queues(),
        x.mode(),
        x.prog_id()
    );
    Ok(x)
}

/// Starts learning the path MTU towards other nodes from the ICMP
/// "fragmentation needed" the underlay sends about our outer packets
/// (`podrouter_router::pmtu`); entries expire as the kernel's do
/// (`net.ipv4.route.mtu_expires`). A failure is logged, not fatal: the
/// uplink's MTU then stays the only bound, as before.
fn watch_path_mtu(
    node_ip: Ipv4Addr,
    kind: OuterKind,
    link_mtu: u16,
    path_mtus: &Arc<PathMtus>,
) -> Option<Arc<PmtuWatcher>> {
    let expiry = pmtu::kernel_expiry_secs();
    let m = OuterMatch {
        node_ip,
        kind,
        link_mtu,
    };
    match PmtuWatcher::spawn(PmtuLearner::new(m, expiry, path_mtus.clone())) {
        Ok(w) => {
            log::info!(
                "path MTU: learning from ICMP frag needed about our outer packets, entries expire after {expiry} s"
            );
            Some(Arc::new(w))
        }
        Err(e) => {
            log::warn!(
                "path MTU: cannot watch ICMP frag needed ({e}); a link narrower than the uplink between nodes will drop DF packets"
            );
            None
        }
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns IPv4 forwarding on in the daemon's (node) namespace if it is off,
/// as Calico's Felix does on every node: directly routed traffic to and
/// from other nodes goes through the node's kernel, and so does, in every
/// mode, a pod's traffic to anything that is not a pod (another node's own
/// address, the outside world), which leaves through the host port.
fn enable_forwarding() {
    match std::fs::read_to_string(IP_FORWARD) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(IP_FORWARD, "1\n") {
            Ok(()) => log::info!(
                "set net.ipv4.ip_forward=1 in the node namespace: pod traffic to other nodes \
                 (routed directly) and to non-pod addresses goes through the node's kernel"
            ),
            Err(e) => log::warn!(
                "cannot set net.ipv4.ip_forward=1 ({e}): directly routed traffic to other nodes \
                 will not flow"
            ),
        },
        Err(e) => log::warn!("cannot read {IP_FORWARD}: {e}"),
    }
}

/// The kernel route for `prefix` reached via the nodes `vias` (sorted,
/// distinct, non-empty), with the host port at index `host_index`: into
/// the router when every node is encapsulated to, else via the nodes
/// routed directly (a multipath route for several). See the module doc.
pub fn kernel_route(
    policy: &EncapPolicy,
    host_index: u32,
    prefix: Prefix,
    vias: &[Ipv4Addr],
) -> Ipv4Route {
    let direct: Vec<Ipv4Addr> = vias
        .iter()
        .copied()
        .filter(|v| !policy.encap_to(*v))
        .collect();
    let mut route = Ipv4Route {
        dst: prefix.addr(),
        prefix_len: prefix.len(),
        gateway: None,
        oif: 0,
        scope: Scope::Universe,
        onlink: false,
        multipath: Vec::new(),
        metric: 0,
    };
    match direct[..] {
        [] => {
            route.oif = host_index;
            route.scope = Scope::Link;
        }
        [one] => route.gateway = Some(one),
        _ => route.multipath = direct,
    }
    route
}

/// Whether [`kernel_route`] needs the host port's index for these nodes.
fn needs_host_port(policy: &EncapPolicy, vias: &[Ipv4Addr]) -> bool {
    vias.iter().all(|v| policy.encap_to(*v))
}

fn host_index(nl: &mut Netlink, host_port: &str) -> Result<u32, String> {
    nl.link_index(host_port)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("host port {host_port} does not exist"))
}

/// Installs (or replaces) the kernel route for one route to another
/// node's block (one netlink socket and exchange per call: for a few
/// static routes; use [`KernelRoutes`] for many). Without an uplink there
/// is nothing to route to.
pub fn install_node_route(
    host_port: &str,
    uplink: Option<&UplinkState>,
    prefix: Prefix,
    via: Ipv4Addr,
) -> Result<(), String> {
    let Some(uplink) = uplink else {
        return Ok(());
    };
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let index = if needs_host_port(&uplink.policy, &[via]) {
        host_index(&mut nl, host_port)?
    } else {
        0
    };
    let route = kernel_route(&uplink.policy, index, prefix, &[via]);
    nl.route_replace(&route).map_err(|e| e.to_string())
}

/// The kernel routes of learned blocks, applied in batches: one netlink
/// socket for the owner's life (reopened after a socket failure), the host
/// port's index looked up once per batch (and again if the kernel no
/// longer knows it), many route messages per `sendmsg`.
pub struct KernelRoutes {
    host_port: String,
    uplink: UplinkState,
    nl: Option<Netlink>,
    /// Route changes that failed, in total.
    pub failures: u64,
}

impl KernelRoutes {
    /// Opens nothing yet: the socket is opened by the first batch, in the
    /// network namespace of the thread that applies it.
    pub fn new(host_port: &str, uplink: UplinkState) -> KernelRoutes {
        KernelRoutes {
            host_port: host_port.to_string(),
            uplink,
            nl: None,
            failures: 0,
        }
    }

    /// Applies `jobs` in order and returns the ones that failed, with why
    /// (also counted in `failures`). A failure never stops the rest.
    /// Removing a route that is not there succeeds, and so does removing a
    /// route into a host port that no longer exists (it went with it).
    pub fn apply(&mut self, jobs: &[KernelJob]) -> Vec<(Prefix, String)> {
        let mut failed = Vec::new();
        let jobs: Vec<&KernelJob> = jobs
            .iter()
            .filter(|j| j.1.is_some() || j.2.is_some())
            .collect();
        if jobs.is_empty() {
            return failed;
        }
        if self.nl.is_none() {
            match Netlink::open() {
                Ok(nl) => self.nl = Some(nl),
                Err(e) => {
                    failed.extend(jobs.iter().map(|j| (j.0, e.to_string())));
                    self.failures += failed.len() as u64;
                    return failed;
                }
            }
        }
        let nl = self.nl.as_mut().expect("opened above");
        let policy = self.uplink.policy;
        let vias = job_vias;
        let op_for = |j: &KernelJob, index: u32| {
            let route = kernel_route(&policy, index, j.0, vias(j));
            match j.1 {
                Some(_) => RouteOp::Replace(route),
                None => RouteOp::Delete(route),
            }
        };
        let index = jobs
            .iter()
            .any(|j| needs_host_port(&policy, vias(j)))
            .then(|| host_index(nl, &self.host_port));
        let mut todo: Vec<&KernelJob> = Vec::with_capacity(jobs.len());
        for j in jobs {
            match &index {
                Some(Err(why)) if needs_host_port(&policy, vias(j)) => {
                    if j.1.is_some() {
                        failed.push((j.0, why.clone()));
                    }
                }
                _ => todo.push(j),
            }
        }
        let first_index = match index {
            Some(Ok(i)) => i,
            _ => 0,
        };
        let ops: Vec<RouteOp> = todo.iter().map(|j| op_for(j, first_index)).collect();
        let mut results = nl.route_batch(&ops);
        // The host port may have been recreated since we looked it up:
        // look again and retry what was refused for want of the device.
        let stale: Vec<usize> = (0..ops.len())
            .filter(|&k| {
                ops[k].route().oif != 0
                    && results[k].as_ref().err().and_then(errno) == Some(libc::ENODEV)
            })
            .collect();
        if !stale.is_empty() {
            if let Ok(fresh) = host_index(nl, &self.host_port) {
                let again: Vec<RouteOp> = stale.iter().map(|&k| op_for(todo[k], fresh)).collect();
                for (&k, r) in stale.iter().zip(nl.route_batch(&again)) {
                    results[k] = r;
                }
            }
        }
        let mut broken = false;
        for ((j, op), r) in todo.iter().zip(&ops).zip(results) {
            let gone = [libc::ESRCH, libc::ENODEV];
            match (op, r) {
                (_, Ok(())) => {}
                (RouteOp::Delete(_), Err(e)) if errno(&e).is_some_and(|n| gone.contains(&n)) => {}
                (_, Err(e)) => {
                    broken |= !e.get_ref().is_some_and(|x| x.is::<NetlinkError>());
                    failed.push((j.0, e.to_string()));
                }
            }
        }
        if broken {
            // Not a refusal: the socket itself failed. Start afresh.
            self.nl = None;
        }
        self.failures += failed.len() as u64;
        failed
    }
}

impl KernelRoutes {
    /// Installs (`install`, replacing what is there) or removes routes
    /// into the host port (their `oif` is set to its index here), such as
    /// the import pools' covering routes. A removal of a route that is not
    /// there, or whose port is gone, succeeds. Errors name each route.
    pub fn set_routes(&mut self, routes: &[Ipv4Route], install: bool) -> Result<(), String> {
        if routes.is_empty() {
            return Ok(());
        }
        if self.nl.is_none() {
            self.nl = Some(Netlink::open().map_err(|e| e.to_string())?);
        }
        let nl = self.nl.as_mut().expect("opened above");
        let index = match host_index(nl, &self.host_port) {
            Ok(i) => i,
            Err(_) if !install => return Ok(()),
            Err(e) => return Err(e),
        };
        let ops: Vec<RouteOp> = routes
            .iter()
            .map(|r| {
                let route = Ipv4Route {
                    oif: index,
                    ..r.clone()
                };
                if install {
                    RouteOp::Replace(route)
                } else {
                    RouteOp::Delete(route)
                }
            })
            .collect();
        let mut errors = Vec::new();
        for (op, r) in ops.iter().zip(nl.route_batch(&ops)) {
            let gone = [libc::ESRCH, libc::ENODEV];
            match r {
                Ok(()) => {}
                Err(e) if !install && errno(&e).is_some_and(|n| gone.contains(&n)) => {}
                Err(e) => {
                    let rt = op.route();
                    errors.push(format!("{}/{}: {e}", rt.dst, rt.prefix_len));
                }
            }
        }
        self.failures += errors.len() as u64;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join(", "))
        }
    }
}

/// Installs the kernel routes for the config's static `[[routes]]`,
/// logging (not failing on) the ones the kernel refuses.
pub fn install_node_routes(cfg: &Config, uplink: Option<&UplinkState>) {
    for r in &cfg.routes {
        let how = match uplink {
            Some(u) if u.policy.encap_to(r.via) => "ipip",
            Some(_) => "direct",
            None => continue,
        };
        match install_node_route(&cfg.dataplane.host_port, uplink, r.prefix, r.via) {
            Ok(()) => log::info!("route {} via node {} ({how})", r.prefix, r.via),
            Err(e) => log::warn!("kernel route for {} via {}: {e}", r.prefix, r.via),
        }
    }
}

/// What `podrouterctl routes` shows as the port of a route to `via`: the
/// uplink port if encapsulated, the host port if routed directly, nothing
/// without an uplink. (For an ECMP route, call it per member.)
pub fn route_port(uplink: Option<&UplinkState>, host_port: &str, via: Ipv4Addr) -> Option<String> {
    let u = uplink?;
    Some(if u.policy.encap_to(via) {
        port_name(u.kind(), &u.ifname)
    } else {
        host_port.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_job::Vias;
    use crate::netns::RunIn;

    #[test]
    fn modes_and_subnets() {
        assert_eq!(mode(Encap::Always), EncapMode::Always);
        assert_eq!(mode(Encap::CrossSubnet), EncapMode::CrossSubnet);
        assert_eq!(mode(Encap::Never), EncapMode::Never);
    }

    #[test]
    fn kernel_routes_for_single_and_ecmp_next_hops() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let block: Prefix = "10.250.0.0/24".parse().unwrap();
        let policy = |mode| EncapPolicy {
            mode,
            subnet: Some("192.168.0.0/24".parse().unwrap()),
        };
        let (near, near2, far) = (ip("192.168.0.2"), ip("192.168.0.3"), ip("192.168.1.2"));
        // Encapsulated: into the host port, however many nodes.
        for vias in [&[far][..], &[near, far], &[near, near2]] {
            let r = kernel_route(&policy(EncapMode::Always), 7, block, vias);
            assert_eq!(r.to_string(), "10.250.0.0/24 dev #7 scope link", "{vias:?}");
        }
        // Directly routed: via the node, or a multipath route.
        let r = kernel_route(&policy(EncapMode::Never), 7, block, &[near]);
        assert_eq!(r.to_string(), "10.250.0.0/24 via 192.168.0.2");
        let r = kernel_route(&policy(EncapMode::Never), 7, block, &[near, far]);
        assert_eq!(
            r.to_string(),
            "10.250.0.0/24 nexthop via 192.168.0.2 nexthop via 192.168.1.2"
        );
        // Mixed (cross-subnet): only the directly routed members.
        let cs = policy(EncapMode::CrossSubnet);
        let r = kernel_route(&cs, 7, block, &[near, near2, far]);
        assert_eq!(r.multipath, vec![near, near2]);
        let r = kernel_route(&cs, 7, block, &[near, far]);
        assert_eq!(r.gateway, Some(near));
        assert!(needs_host_port(&cs, &[far]) && !needs_host_port(&cs, &[near, far]));
    }

    /// KernelRoutes in a scratch namespace (root only): a refused route is
    /// reported with its prefix and counted while the rest are installed,
    /// ECMP sets become multipath routes, removals clean up, and a missing
    /// host port fails only the routes that need it.
    #[test]
    fn kernel_routes_batches_report_failures_per_prefix() {
        if !podrouter_testkit::privileged("kernel_routes_batches_report_failures_per_prefix") {
            return;
        }
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let pf = |s: &str| s.parse::<Prefix>().unwrap();
        let ns = podrouter_testkit::Netns::new("ku");
        ns.veth_pair("podrouter0", "x0");
        ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "podrouter0"]);
        ns.run(|| {
            let port = Arc::new(Uplink::open(ip("10.9.0.1"), 1500).unwrap());
            let state =
                |mode| UplinkState::for_test(port.clone(), EncapPolicy { mode, subnet: None });
            let ours = || -> Vec<String> {
                let mut v: Vec<String> = Netlink::open()
                    .unwrap()
                    .routes_v4()
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.protocol == crate::netlink::RTPROT_PODROUTER)
                    .map(|r| r.route.to_string())
                    .collect();
                v.sort();
                v
            };
            let (a, b) = (ip("10.9.0.2"), ip("10.9.0.3"));
            let mut direct = KernelRoutes::new("podrouter0", state(EncapMode::Never));
            let failed = direct.apply(&[
                (pf("10.250.0.0/24"), Vias::new(&[a, b]), None),
                (pf("10.251.0.0/24"), Vias::new(&[ip("10.77.0.1")]), None),
                (pf("10.252.0.0/24"), Vias::new(&[a]), None),
                (pf("10.253.0.0/24"), None, None),
            ]);
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert_eq!(failed[0].0, pf("10.251.0.0/24"));
            assert!(failed[0].1.contains("via 10.77.0.1"), "{failed:?}");
            assert_eq!(direct.failures, 1);
            assert_eq!(
                ours(),
                vec![
                    "10.250.0.0/24 nexthop via 10.9.0.2 nexthop via 10.9.0.3".to_string(),
                    "10.252.0.0/24 via 10.9.0.2 dev #2".to_string(),
                ]
                .into_iter()
                .map(|s| s.replace(" dev #2", &format!(" dev #{}", host_idx())))
                .collect::<Vec<_>>()
            );
            // Encapsulated: into the host port; removals of routes that are
            // not there succeed.
            let mut encap = KernelRoutes::new("podrouter0", state(EncapMode::Always));
            let failed = encap.apply(&[
                (pf("10.250.0.0/24"), Vias::new(&[a, b]), Vias::new(&[a, b])),
                (pf("10.252.0.0/24"), None, Vias::new(&[a])),
                (pf("10.254.0.0/24"), None, Vias::new(&[b])),
            ]);
            assert!(failed.is_empty(), "{failed:?}");
            assert_eq!(
                ours(),
                vec![format!("10.250.0.0/24 dev #{} scope link", host_idx())]
            );
            // No host port: only what needs it fails, each with its prefix.
            let mut lost = KernelRoutes::new("nope0", state(EncapMode::Always));
            let failed = lost.apply(&[
                (pf("10.1.0.0/24"), Vias::new(&[a]), None),
                (pf("10.2.0.0/24"), Vias::new(&[b]), None),
                (pf("10.250.0.0/24"), None, Vias::new(&[a, b])),
            ]);
            let names: Vec<Prefix> = failed.iter().map(|f| f.0).collect();
            assert_eq!(names, vec![pf("10.1.0.0/24"), pf("10.2.0.0/24")]);
            assert!(failed[0].1.contains("host port nope0 does not exist"));
            assert_eq!(lost.failures, 2);
        });
    }

    /// The index of `podrouter0` in the calling thread's namespace.
    fn host_idx() -> u32 {
        Netlink::open()
            .unwrap()
            .link_index("podrouter0")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn no_node_ip_means_no_uplink() {
        let cfg = Config::parse("", "t.toml").unwrap();
        assert!(open(&cfg, &Arc::new(PathMtus::new()), None)
            .unwrap()
            .is_none());
    }
}
