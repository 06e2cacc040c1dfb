//! `podrouterd --uninstall`: takes off the node everything podrouter put
//! on it, and says what it removed.
//!
//! What podrouter owns, and how it is recognised without a running daemon:
//! - pods' interfaces: from the state file (namespace, name), deleted only
//!   when the interface there still has the pod's MAC (so a name reused by
//!   another plugin is left alone); the afxdp backend's node-side veth end
//!   goes with it (and its XDP program with the veth);
//! - node routes: every route of the main table with protocol 77
//!   ([`RTPROT_PODROUTER`]): host routes to pods and blocks, routes to
//!   other nodes, BGP-learned blocks;
//! - links by name: the host port (`[dataplane] host_port`), the VXLAN TAP
//!   [`TAP_NAME`], and node-side veth ends named by
//!   [`podnet::node_veth_name`] (`prx` + 8 hex digits);
//! - the VXLAN redirect filter at priority [`tc::FILTER_PRIO`] on the
//!   uplink, and the uplink's `clsact` qdisc once it holds no filter at all
//!   (a qdisc someone else still uses stays);
//! - the state directory's own files (state, policy, pending detaches,
//!   lock) and the directory if nothing else is in it, and the API socket.
//!
//! Invariants: a running podrouterd (the pid holding the state lock, if
//! `/proc/PID/comm` says podrouterd) is stopped first with SIGTERM and
//! waited for; if it does not stop, nothing is removed. The state lock is
//! held while removing, so no daemon starts meanwhile. Nothing else is
//! touched: the node's own addresses, routes (other protocols), links and
//! qdiscs stay. Every step is attempted; failures are collected, not fatal.
//! Not restored: `net.ipv4.ip_forward` (its value before podrouterd is not
//! known) and the VXLAN TAP's sysctls (gone with the TAP).
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::netlink::{errno, Netlink, RTPROT_PODROUTER};
use crate::nodenet::{KernelNet, NodeNet};
use crate::podnet;
use crate::state::{StateError, StateStore};
use crate::tc;
use crate::vxlan_setup::TAP_NAME;

/// What an uninstall did.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per thing removed (`removed ...`), or `stopped podrouterd
    /// (pid N)`.
    pub removed: Vec<String>,
    /// One line per thing that could not be removed or checked.
    pub failed: Vec<String>,
}

impl Report {
    fn done(&mut self, what: String) {
        log::debug!("uninstall: {what}");
        self.removed.push(what);
    }

    fn fail(&mut self, what: String) {
        log::debug!("uninstall: failed: {what}");
        self.failed.push(what);
    }
}

/// Files podrouter keeps in its state directory.
const STATE_FILES: [&str; 10] = [
    "state.json",
    "state.json.tmp",
    "policy.json",
    "policy.json.tmp",
    "services.json",
    "services.json.tmp",
    crate::bgp::saved::ROUTES_FILE,
    "bgp-routes.tmp",
    crate::bgp::driver::RESTART_MARKER,
    "lock",
];

/// Removes podrouter from the node `cfg` describes; `stop_timeout` bounds
/// the wait for a running daemon to stop.
pub fn uninstall(cfg: &Config, stop_timeout: Duration) -> Report {
    let mut report = Report::default();
    let store = if cfg.state_dir.is_dir() {
        match stop_and_lock(&cfg.state_dir, stop_timeout, &mut report) {
            Some(s) => s,
            None => return report,
        }
    } else {
        None
    };
    let records = match &store {
        Some(s) => s.load().unwrap_or_else(|e| {
            report.fail(format!(
                "cannot read the pods' state ({e}); removing by name only"
            ));
            Vec::new()
        }),
        None => Vec::new(),
    };

    let net = KernelNet::for_config(cfg);
    for r in &records {
        match net.interface_mac(&r.netns, &r.ifname) {
            Ok(Some(mac)) if mac == r.mac => match net.delete_pod_interface(&r.netns, &r.ifname) {
                Ok(()) => report.done(format!(
                    "removed pod {}: interface {} in {} ({})",
                    r.id,
                    r.ifname,
                    r.netns.display(),
                    r.ip
                )),
                Err(e) => report.fail(format!("pod {}: {e}", r.id)),
            },
            Ok(Some(_)) => report.fail(format!(
                "pod {}: {} in {} has another MAC now; not ours, left alone",
                r.id,
                r.ifname,
                r.netns.display()
            )),
            Err(e) if r.netns.exists() => report.fail(format!("pod {}: {e}", r.id)),
            // Interface or namespace gone already.
            Ok(None) | Err(_) => {}
        }
    }

    match Netlink::open() {
        Ok(mut nl) => node_side(cfg, &mut nl, &mut report),
        Err(e) => report.fail(format!("netlink: {e}")),
    }

    if cfg.api_socket.exists() {
        match fs::remove_file(&cfg.api_socket) {
            Ok(()) => report.done(format!("removed API socket {}", cfg.api_socket.display())),
            Err(e) => report.fail(format!("API socket {}: {e}", cfg.api_socket.display())),
        }
    }
    drop(store);
    remove_state_dir(&cfg.state_dir, &mut report);
    report
}

/// Stops a daemon holding the state lock, then takes the lock. `None`:
/// a daemon runs and could not be stopped (nothing may be removed).
fn stop_and_lock(
    dir: &Path,
    stop_timeout: Duration,
    report: &mut Report,
) -> Option<Option<StateStore>> {
    let deadline = Instant::now() + stop_timeout;
    let mut signalled = None;
    loop {
        match StateStore::open(dir) {
            Ok(s) => {
                if let Some(pid) = signalled {
                    report.done(format!("stopped podrouterd (pid {pid})"));
                }
                return Some(Some(s));
            }
            Err(StateError::Locked { pid, .. }) => {
                if signalled.is_none() {
                    let Some(pid) = pid.parse::<u32>().ok().filter(|p| is_podrouterd(*p)) else {
                        report.fail(format!(
                            "{} is locked by pid {pid}, which is not a podrouterd; \
                             stop it first",
                            dir.display()
                        ));
                        return None;
                    };
                    if let Err(e) = crate::sys::terminate(pid) {
                        report.fail(format!("cannot stop podrouterd (pid {pid}): {e}"));
                        return None;
                    }
                    log::info!("uninstall: asked podrouterd (pid {pid}) to stop");
                    signalled = Some(pid);
                }
                if Instant::now() > deadline {
                    report.fail(format!(
                        "podrouterd (pid {}) did not stop within {} s; nothing removed",
                        signalled.unwrap_or(0),
                        stop_timeout.as_secs()
                    ));
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                report.fail(format!("{e}; removing by name only"));
                return Some(None);
            }
        }
    }
}

fn is_podrouterd(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "podrouterd")
}

/// Routes, tc and links of the node namespace.
fn node_side(cfg: &Config, nl: &mut Netlink, report: &mut Report) {
    let links = match nl.links() {
        Ok(l) => l,
        Err(e) => {
            report.fail(format!("cannot list links: {e}"));
            Vec::new()
        }
    };
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    };
    match nl.routes_v4() {
        Ok(routes) => {
            for e in routes
                .into_iter()
                .filter(|e| e.protocol == RTPROT_PODROUTER)
            {
                let text = e.route.to_string().replace(
                    &format!("dev #{}", e.route.oif),
                    &format!("dev {}", name_of(e.route.oif)),
                );
                match nl.route_delete(&e.route) {
                    Ok(()) => report.done(format!("removed route {text} proto 77")),
                    Err(err) if errno(&err) == Some(libc::ESRCH) => {}
                    Err(err) => report.fail(format!("route {text}: {err}")),
                }
            }
        }
        Err(e) => report.fail(format!("cannot list routes: {e}")),
    }

    // The VXLAN redirect is on the uplink: the configured one, else the
    // interface holding node_ip.
    let uplink = match &cfg.dataplane.uplink {
        Some(name) => links.iter().find(|l| &l.name == name),
        None => cfg.node_ip.and_then(|ip| {
            let addrs = nl.addrs_v4().ok()?;
            let index = addrs.iter().find(|a| a.ip == ip)?.index;
            links.iter().find(|l| l.index == index)
        }),
    };
    if let Some(up) = uplink {
        match nl.vxlan_filter_remove(up.index) {
            Ok(true) => report.done(format!(
                "removed tc filter ingress pref {} on {}",
                tc::FILTER_PRIO,
                up.name
            )),
            Ok(false) => {}
            Err(e) => report.fail(format!("tc filter on {}: {e}", up.name)),
        }
        let unused = nl
            .clsact_present(up.index)
            .and_then(|present| Ok(present && !nl.clsact_has_filters(up.index)?));
        match unused {
            Ok(true) => match nl.clsact_del(up.index) {
                Ok(()) => report.done(format!(
                    "removed qdisc clsact on {} (no filter left)",
                    up.name
                )),
                Err(e) => report.fail(format!("qdisc clsact on {}: {e}", up.name)),
            },
            Ok(false) => {}
            Err(e) => report.fail(format!("qdisc clsact on {}: {e}", up.name)),
        }
    }

    for l in &links {
        let ours =
            l.name == cfg.dataplane.host_port || l.name == TAP_NAME || is_node_veth_name(&l.name);
        if !ours {
            continue;
        }
        let xdp = l
            .xdp
            .map(|x| format!(", with XDP program {}", x.prog_id))
            .unwrap_or_default();
        match nl.link_delete(l.index) {
            Ok(()) => report.done(format!("removed link {}{xdp}", l.name)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            Err(e) => report.fail(format!("link {}: {e}", l.name)),
        }
    }
}

/// Whether `name` is a node-side veth end as [`podnet::node_veth_name`]
/// makes them.
fn is_node_veth_name(name: &str) -> bool {
    let example = podnet::node_veth_name(std::net::Ipv4Addr::UNSPECIFIED);
    name.len() == example.len()
        && name.starts_with("prx")
        && name[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn remove_state_dir(dir: &Path, report: &mut Report) {
    if !dir.is_dir() {
        return;
    }
    let pending = dir.join(podrouter_api::pending::PENDING_DETACH_DIR);
    if pending.is_dir() {
        match fs::remove_dir_all(&pending) {
            Ok(()) => report.done(format!("removed {}", pending.display())),
            Err(e) => report.fail(format!("{}: {e}", pending.display())),
        }
    }
    for f in STATE_FILES {
        let p = dir.join(f);
        if p.exists() {
            match fs::remove_file(&p) {
                Ok(()) => report.done(format!("removed {}", p.display())),
                Err(e) => report.fail(format!("{}: {e}", p.display())),
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => report.done(format!("removed state directory {}", dir.display())),
        Err(e) => report.fail(format!(
            "state directory {} kept: {e} (files that are not podrouter's?)",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_veth_names_are_recognised_and_nothing_else() {
        let ours = podnet::node_veth_name("10.244.0.5".parse().unwrap());
        assert!(is_node_veth_name(&ours));
        for other in [
            "prx",
            "prx0af4000",
            "prx0af400055",
            "prxzzzzzzzz",
            "eth0",
            "veth0af40005",
        ] {
            assert!(!is_node_veth_name(other), "{other}");
        }
    }

    #[test]
    fn a_state_dir_with_foreign_files_is_kept_with_them() {
        let dir = podrouter_testkit::TempDir::new("uninstall");
        let state = dir.join("state");
        let store = StateStore::open(&state).unwrap();
        store.save(&[]).unwrap();
        drop(store);
        fs::create_dir_all(state.join("pending-detach")).unwrap();
        fs::write(state.join("pending-detach").join("x"), "{}").unwrap();
        fs::write(state.join("operator-notes.txt"), "mine").unwrap();
        let mut r = Report::default();
        remove_state_dir(&state, &mut r);
        assert!(!state.join("state.json").exists());
        assert!(!state.join("lock").exists());
        assert!(!state.join("pending-detach").exists());
        assert_eq!(
            fs::read_to_string(state.join("operator-notes.txt")).unwrap(),
            "mine"
        );
        assert_eq!(r.failed.len(), 1, "{r:?}");
        fs::remove_file(state.join("operator-notes.txt")).unwrap();
        let mut r = Report::default();
        remove_state_dir(&state, &mut r);
        assert!(!state.exists(), "{r:?}");
    }
}
