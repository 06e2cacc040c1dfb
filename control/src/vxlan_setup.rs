//! The daemon's side of the VXLAN uplink (`[dataplane] tunnel = "vxlan"`):
//! the TAP the data plane sends and receives VXLAN through, the node
//! settings that TAP needs, and the tc redirect that brings this node's
//! VXLAN packets to it ([`crate::tc`]).
//!
//! - **TAP** [`TAP_NAME`] in the node namespace, made by
//!   `VxlanPort::create` (gone with the daemon), MTU of the underlay
//!   interface, up, with `accept_local=1` and `rp_filter=0`: the frames
//!   podrouterd writes come from the node's own address, which the
//!   kernel otherwise drops as martian; no IPv6 on it (its router
//!   solicitations would come back to us as non-VXLAN frames). One
//!   receive queue per worker (`[dataplane] workers`), flows steered over
//!   them by the kernel (`podrouter_router::mq`).
//!   `ip_forward=1` is set by the
//!   uplink setup for every tunnel.
//! - **Receive redirect**: `clsact` on the underlay interface (kept if it
//!   was there) and the filter of [`crate::tc`] to the TAP.
//!   [`VxlanSetup::teardown`] removes the filter, and the qdisc if this
//!   daemon added it.
//! - **VTEP MACs**: ours is `vtep_mac(node_ip)`; a peer's is the one its
//!   `[[routes]]` entry gives, else derived from its address likewise.
use std::net::Ipv4Addr;
use std::sync::Arc;

use podrouter_router::vxlan::{vtep_mac, VxlanParams};
use podrouter_router::vxlan_port::VxlanPort;

use crate::config::Config;
use crate::netlink::{LinkInfo, Netlink};

/// The uplink TAP's name in the node namespace.
pub const TAP_NAME: &str = "podrouter-vx";

/// What the daemon undoes at shutdown.
#[derive(Debug)]
pub struct VxlanSetup {
    /// The underlay interface carrying the filter.
    pub uplink_index: u32,
    pub uplink_name: String,
    /// Whether this daemon added the clsact qdisc (then it removes it).
    pub added_qdisc: bool,
}

impl VxlanSetup {
    /// Removes the redirect (and the qdisc if ours); logs what fails.
    pub fn teardown(&self) {
        let mut nl = match Netlink::open() {
            Ok(n) => n,
            Err(e) => {
                log::warn!(
                    "vxlan: cannot remove the tc redirect on {}: {e}",
                    self.uplink_name
                );
                return;
            }
        };
        if let Err(e) = nl.vxlan_filter_del(self.uplink_index) {
            log::warn!("vxlan: {e}");
        }
        if self.added_qdisc {
            if let Err(e) = nl.clsact_del(self.uplink_index) {
                log::warn!("vxlan: {e}");
            }
        }
        log::info!("vxlan: removed the tc redirect on {}", self.uplink_name);
    }
}

/// The tunnel parameters of this node.
pub fn params(cfg: &Config, node_ip: Ipv4Addr) -> VxlanParams {
    VxlanParams {
        port: cfg.dataplane.vxlan_port,
        vni: cfg.dataplane.vxlan_vni,
        mac: vtep_mac(node_ip),
    }
}

fn sysctl(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("cannot write {value} to {path}: {e}"))
}

/// Makes the TAP and the redirect on `link` (the underlay interface).
pub fn open(
    cfg: &Config,
    node_ip: Ipv4Addr,
    link: &LinkInfo,
) -> Result<(Arc<VxlanPort>, VxlanSetup), String> {
    let params = params(cfg, node_ip);
    let link_mtu = u16::try_from(link.mtu).unwrap_or(u16::MAX);
    let port = VxlanPort::create(TAP_NAME, node_ip, params, link_mtu, cfg.dataplane.workers)
        .map_err(|e| e.to_string())?;
    port.set_peer_macs(
        cfg.routes
            .iter()
            .filter_map(|r| r.vtep_mac.map(|m| (r.via, m)))
            .collect(),
    );
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let tap = nl
        .link_get(TAP_NAME)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("TAP {TAP_NAME} vanished"))?;
    nl.link_set_mtu(tap.index, link.mtu)
        .map_err(|e| e.to_string())?;
    let conf = format!("/proc/sys/net/ipv4/conf/{TAP_NAME}");
    sysctl(&format!("{conf}/accept_local"), "1")?;
    sysctl(&format!("{conf}/rp_filter"), "0")?;
    // The kernel's own IPv6 chatter (router solicitations, MLD) would only
    // come back out of the TAP as frames that are not VXLAN.
    let _ = sysctl(
        &format!("/proc/sys/net/ipv6/conf/{TAP_NAME}/disable_ipv6"),
        "1",
    );
    if let Ok(all) = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter") {
        if all.trim() == "1" {
            log::warn!(
                "net.ipv4.conf.all.rp_filter=1 (strict) overrides {TAP_NAME}'s 0: the node's \
                 kernel may drop what podrouterd sends through VXLAN; set it to 0 or 2"
            );
        }
    }
    nl.link_set_up(tap.index).map_err(|e| e.to_string())?;
    let added_qdisc = nl.clsact_add(link.index).map_err(|e| e.to_string())?;
    let setup = VxlanSetup {
        uplink_index: link.index,
        uplink_name: link.name.clone(),
        added_qdisc,
    };
    if let Err(e) = nl.vxlan_filter_add(link.index, node_ip, params.port, tap.index) {
        setup.teardown();
        return Err(e.to_string());
    }
    log::info!(
        "vxlan: VNI {} UDP {} from {node_ip}, VTEP MAC {}, TAP {TAP_NAME}; tc redirect on {}{}",
        params.vni,
        params.port,
        crate::netlink::fmt_mac(&params.mac),
        link.name,
        if added_qdisc { " (clsact added)" } else { "" }
    );
    Ok((Arc::new(port), setup))
}
