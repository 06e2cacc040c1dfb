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
//!
//!   With an uplink, `net.ipv4.ip_forward=1` is set in the node namespace
//!   (logged when changed) in every mode: besides direct routing, a pod's
//!   replies to another node's own address leave through the host port
//!   and the node's kernel.
//!
//! Static `[[routes]]` go through [`install_node_routes`] at start; other
//! route sources (BGP) call [`install_node_route`] / [`remove_node_route`]
//! as their routes come and go, beside their FIB update with
//! `NextHop::Node(via)`.
//!
//! Failure policy: with `uplink` named in the config, any failure to set up
//! the uplink stops the daemon; without it, a node whose uplink cannot be
//! set up runs without one (routes to other nodes are dropped and counted
//! as `no_uplink`) and says so in the log.
use std::net::Ipv4Addr;
use std::sync::Arc;

use podrouter_router::fib::Prefix;
use podrouter_router::port::{PortInfo, PortRole};
use podrouter_router::uplink::{EncapMode, EncapPolicy, Uplink};

use crate::config::{Config, Encap};
use crate::netlink::{errno, Ipv4Route, LinkInfo, Netlink, Scope};

/// The uplink as the daemon keeps it (cheap to clone: the port is shared).
#[derive(Clone, Debug)]
pub struct UplinkState {
    /// The underlay interface.
    pub ifname: String,
    pub policy: EncapPolicy,
    pub port: Arc<Uplink>,
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
pub fn port_name(ifname: &str) -> String {
    format!("ipip@{ifname}")
}

/// Opens the uplink for `cfg`, or returns `None` when the node has none
/// (no `node_ip`, or an implicit uplink that cannot be set up: logged).
/// The caller publishes the port with the returned [`PortInfo`].
pub fn open(cfg: &Config) -> Result<Option<(UplinkState, PortInfo)>, String> {
    let explicit = cfg.dataplane.uplink.is_some();
    let Some(node_ip) = cfg.node_ip else {
        if explicit || !cfg.routes.is_empty() {
            log::warn!(
                "node_ip is not set: no uplink; traffic to other nodes' blocks is dropped (no_uplink)"
            );
        }
        return Ok(None);
    };
    match try_open(cfg, node_ip) {
        Ok(r) => Ok(Some(r)),
        Err(e) if explicit => Err(e),
        Err(e) => {
            log::warn!(
                "no uplink ({e}); traffic to other nodes' blocks is dropped (no_uplink). \
                 Set [dataplane] uplink to the underlay interface."
            );
            Ok(None)
        }
    }
}

fn try_open(cfg: &Config, node_ip: Ipv4Addr) -> Result<(UplinkState, PortInfo), String> {
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
        .map(|a| network(a.ip, a.prefix_len));
    let link_mtu = u16::try_from(link.mtu).unwrap_or(u16::MAX);
    let port = Uplink::open(node_ip, link_mtu)
        .map_err(|e| format!("cannot open the uplink on {}: {e}", link.name))?;
    let policy = EncapPolicy {
        mode: mode(cfg.dataplane.encap),
        subnet,
    };
    let path_mtu = port.path_mtu();
    log::info!(
        "uplink: IPIP from {node_ip} over {} (subnet {}, MTU {link_mtu}, tunnel path MTU \
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
    let info = PortInfo {
        name: port_name(&link.name),
        role: PortRole::Uplink {
            local: node_ip,
            policy,
        },
        mtu: path_mtu,
    };
    Ok((
        UplinkState {
            ifname: link.name,
            policy,
            port: Arc::new(port),
        },
        info,
    ))
}

fn network(ip: Ipv4Addr, len: u8) -> Prefix {
    let len = len.min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Prefix::new(Ipv4Addr::from(u32::from(ip) & mask), len).expect("masked prefix")
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

/// The kernel route for `prefix` owned by `via`: into the router (to be
/// encapsulated) or via the node (routed directly).
fn kernel_route(
    nl: &mut Netlink,
    host_port: &str,
    uplink: &UplinkState,
    prefix: Prefix,
    via: Ipv4Addr,
) -> Result<Ipv4Route, String> {
    if uplink.policy.encap_to(via) {
        let oif = nl
            .link_index(host_port)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("host port {host_port} does not exist"))?;
        Ok(Ipv4Route {
            dst: prefix.addr(),
            prefix_len: prefix.len(),
            gateway: None,
            oif,
            scope: Scope::Link,
            onlink: false,
        })
    } else {
        Ok(Ipv4Route {
            dst: prefix.addr(),
            prefix_len: prefix.len(),
            gateway: Some(via),
            oif: 0,
            scope: Scope::Universe,
            onlink: false,
        })
    }
}

/// Installs (or replaces) the kernel route for one route to another
/// node's block. Without an uplink there is nothing to route to.
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
    let route = kernel_route(&mut nl, host_port, uplink, prefix, via)?;
    nl.route_replace(&route).map_err(|e| e.to_string())
}

/// Removes the kernel route [`install_node_route`] installed (success if
/// it is not there).
pub fn remove_node_route(
    host_port: &str,
    uplink: Option<&UplinkState>,
    prefix: Prefix,
    via: Ipv4Addr,
) -> Result<(), String> {
    let Some(uplink) = uplink else {
        return Ok(());
    };
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let route = kernel_route(&mut nl, host_port, uplink, prefix, via)?;
    match nl.route_delete(&route) {
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        r => r.map_err(|e| e.to_string()),
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
/// without an uplink.
pub fn route_port(uplink: Option<&UplinkState>, host_port: &str, via: Ipv4Addr) -> Option<String> {
    let u = uplink?;
    Some(if u.policy.encap_to(via) {
        port_name(&u.ifname)
    } else {
        host_port.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_subnets() {
        assert_eq!(mode(Encap::Always), EncapMode::Always);
        assert_eq!(mode(Encap::CrossSubnet), EncapMode::CrossSubnet);
        assert_eq!(mode(Encap::Never), EncapMode::Never);
        assert_eq!(
            network(Ipv4Addr::new(192, 168, 57, 31), 24).to_string(),
            "192.168.57.0/24"
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 32).to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 0).to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn no_node_ip_means_no_uplink() {
        let cfg = Config::parse("", "t.toml").unwrap();
        assert!(open(&cfg).unwrap().is_none());
    }
}
