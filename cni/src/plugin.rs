//! The verbs: what ADD, DEL, CHECK, VERSION, STATUS and GC do, in order,
//! and how each failure is undone.
//!
//! Invariants: a failed ADD leaves nothing behind (no interface, no router
//! port, no address in podrouterd or in a delegated IPAM plugin), whether it
//! fails by error, by a broken stdout or by a panic ([`AddGuard`] undoes it
//! on drop); DEL succeeds whenever the attachment is gone or will be (a
//! pending-detach entry when the router is down); nothing is printed on
//! stdout but the one result or error.
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podrouter_api::{AttachParams, ErrorCode};

use crate::env::{self, Command, Env};
use crate::error::{CniError, CniResult, Code};
use crate::gc;
use crate::ipam::Delegate;
use crate::log;
use crate::netconf::{self, NetConf, Version, PLUGIN_TYPE};
use crate::netns::{self, Expect};
use crate::pending::{self, PendingDetach};
use crate::result::{self, AddResult, GATEWAY};
use crate::router::{Router, RouterError};

/// One invocation, as the runtime made it.
pub struct Invocation {
    /// The whole process environment.
    pub vars: HashMap<String, String>,
    pub stdin: Vec<u8>,
    /// The executable's file name (accepted as `type` besides
    /// `podrouter-cni`, for installs under another name).
    pub exe_name: Option<String>,
}

/// Runs one invocation: writes the result or error JSON to `out` and
/// returns the exit status.
pub fn run(inv: &Invocation, out: &mut dyn Write) -> u8 {
    let label = netconf::sniff_version(&inv.stdin).unwrap_or(Version::LATEST);
    match dispatch(inv, out) {
        Ok(()) => 0,
        Err(e) => {
            log::error(&format!("{}: {}", e.msg, e.details));
            let _ = writeln!(out, "{}", e.to_json(label.as_str()));
            let _ = out.flush();
            e.exit_status()
        }
    }
}

fn dispatch(inv: &Invocation, out: &mut dyn Write) -> CniResult<()> {
    let env = Env::from_vars(inv.vars.clone())?;
    if env.command == Command::Version {
        return write_out(out, &result::version_json(&version_label(&inv.stdin)));
    }
    let mut names = vec![PLUGIN_TYPE];
    if let Some(n) = inv.exe_name.as_deref() {
        names.push(n);
    }
    let conf = NetConf::parse(&inv.stdin, &names)?;
    let ctx = Ctx {
        env: &env,
        conf: &conf,
        stdin: &inv.stdin,
    };
    match env.command {
        Command::Add => {
            let (json, guard) = ctx.add()?;
            write_out(out, &json)?;
            guard.disarm();
            Ok(())
        }
        Command::Del => ctx.del(),
        Command::Check => ctx.check(),
        Command::Status => ctx.status(),
        Command::Gc => ctx.gc(),
        Command::Version => unreachable!("handled above"),
    }
}

/// VERSION echoes the cniVersion it was given (if it looks like one).
fn version_label(stdin: &[u8]) -> String {
    let given = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string));
    match given {
        Some(v)
            if v.split('.').count() == 3
                && v.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            v
        }
        _ => Version::LATEST.as_str().to_string(),
    }
}

fn write_out(out: &mut dyn Write, s: &str) -> CniResult<()> {
    out.write_all(s.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| CniError::new(Code::Io, "cannot write the result to stdout", e.to_string()))
}

struct Ctx<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    stdin: &'a [u8],
}

/// Undoes a partial ADD when dropped armed: detaches from podrouterd (the
/// interface goes with it; a pending-detach entry if the router is gone)
/// and releases the delegated IPAM address.
struct AddGuard {
    armed: bool,
    socket: PathBuf,
    pending_dir: PathBuf,
    network: String,
    id: String,
    netns: String,
    ifname: String,
    ip: Option<Ipv4Addr>,
    /// The router may hold the attachment.
    attached: bool,
    /// A delegated IPAM plugin that handed out an address.
    ipam: Option<IpamUndo>,
}

/// How to run a delegated IPAM plugin's DEL after this process's borrows
/// are gone.
struct IpamUndo {
    plugin: String,
    path: Vec<String>,
    env: HashMap<String, String>,
    stdin: Vec<u8>,
}

impl AddGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AddGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.attached {
            log::warn(&format!("ADD failed: undoing the attachment {}", self.id));
            let res = Router::connect(&self.socket)
                .and_then(|mut r| r.detach(&self.id, Some(&self.netns), Some(&self.ifname)));
            match res {
                Ok(_) => {}
                Err(RouterError::Refused {
                    code: ErrorCode::NetnsNotFound,
                    ..
                }) => {}
                Err(e) => {
                    log::warn(&format!("undoing {}: {}", self.id, e.to_cni("DEL").details));
                    let p = PendingDetach::new(
                        &self.id,
                        Some(&self.netns),
                        &self.ifname,
                        self.ip,
                        &self.network,
                    );
                    if let Err(e) = pending::write(&self.pending_dir, &p) {
                        log::error(&format!("{}: {}", e.msg, e.details));
                    }
                }
            }
        }
        if let Some(u) = &self.ipam {
            log::warn(&format!(
                "ADD failed: releasing the address from IPAM plugin {}",
                u.plugin
            ));
            let d = Delegate {
                plugin: &u.plugin,
                path: &u.path,
                env: &u.env,
            };
            if let Err(e) = d.run("DEL", &[], &u.stdin) {
                log::error(&format!(
                    "releasing the IPAM address: {}: {}",
                    e.msg, e.details
                ));
            }
        }
    }
}

impl Ctx<'_> {
    fn id(&self) -> String {
        self.env.attach_id()
    }

    fn ifname(&self) -> &str {
        self.env.ifname.as_deref().unwrap_or_default()
    }

    fn delegate(&self) -> Option<Delegate<'_>> {
        self.conf.ipam.as_ref().map(|i| Delegate {
            plugin: &i.plugin,
            path: &self.env.path,
            env: &self.env.all,
        })
    }

    fn netns_must_exist(&self, verb: &str) -> CniResult<&str> {
        let netns = self.env.netns.as_deref().unwrap_or_default();
        if !Path::new(netns).exists() {
            return Err(CniError::new(
                Code::UnknownContainer,
                "the container's network namespace does not exist",
                format!("{verb}: CNI_NETNS {netns} does not exist; the container is gone"),
            ));
        }
        Ok(netns)
    }

    fn prev_result(&self) -> CniResult<Option<AddResult>> {
        self.conf
            .prev_result
            .as_ref()
            .map(|v| AddResult::from_value(v, "prevResult"))
            .transpose()
    }

    /// Finishes pending detaches, if any, on an open connection.
    fn flush_pending(&self, r: &mut Router) {
        if !pending::list(&self.conf.pending_dir).is_empty() {
            pending::process(&self.conf.pending_dir, r, None);
        }
    }

    fn add(&self) -> CniResult<(String, AddGuard)> {
        let netns = self.netns_must_exist("ADD")?.to_string();
        let prev = self.prev_result()?;
        let id = self.id();
        let socket = &self.conf.router_socket;
        let mut guard = AddGuard {
            armed: true,
            socket: socket.clone(),
            pending_dir: self.conf.pending_dir.clone(),
            network: self.conf.name.clone(),
            id: id.clone(),
            netns: netns.clone(),
            ifname: self.ifname().to_string(),
            ip: None,
            attached: false,
            ipam: None,
        };
        {
            // Reach the router before taking an address anywhere.
            let mut r = Router::connect(socket).map_err(|e| e.to_cni("ADD"))?;
            self.flush_pending(&mut r);
            if self.conf.ipam.is_some() {
                // With delegated IPAM, a duplicate ADD must fail before the
                // IPAM plugin is asked (its undo would release the existing
                // attachment's address).
                let pods = r.pods().map_err(|e| e.to_cni("ADD"))?;
                if pods.iter().any(|p| p.id == id) {
                    return Err(RouterError::Refused {
                        code: ErrorCode::AlreadyExists,
                        message: format!("pod {id} is already attached"),
                    }
                    .to_cni("ADD"));
                }
            }
        }
        let mut dns = self.conf.dns.clone().unwrap_or_default();
        let ip = match self.delegate() {
            None => None,
            Some(d) => {
                let res = d.add(self.stdin)?;
                guard.ipam = Some(IpamUndo {
                    plugin: d.plugin.to_string(),
                    path: self.env.path.clone(),
                    env: self.env.all.clone(),
                    stdin: self.stdin.to_vec(),
                });
                if res.dns != Default::default() {
                    dns = res.dns.clone();
                }
                let (ip, _) = res.first_ipv4().ok_or_else(|| {
                    CniError::new(
                        Code::InvalidConfig,
                        format!("IPAM plugin {} returned no IPv4 address", d.plugin),
                        "podrouter gives each pod one IPv4 /32: configure an IPv4 range in \"ipam\"",
                    )
                })?;
                guard.ip = Some(ip);
                Some(ip)
            }
        };
        let mut r = Router::connect(socket).map_err(|e| e.to_cni("ADD"))?;
        guard.attached = true;
        let pod = match r.attach(AttachParams {
            id: id.clone(),
            netns: netns.clone(),
            ifname: self.ifname().to_string(),
            ip,
            mtu: self.conf.mtu,
        }) {
            Ok(p) => p,
            Err(e) => {
                // Refused: the daemon changed nothing. Broken: it may have.
                guard.attached = e.is_down();
                return Err(e.to_cni("ADD"));
            }
        };
        drop(r);
        guard.ip = Some(pod.ip);
        // Test hook (debug builds only): proves a panic after the attach
        // still undoes it and still prints a CNI error.
        #[cfg(debug_assertions)]
        if self.env.all.contains_key("PODROUTER_CNI_TEST_PANIC") {
            panic!("PODROUTER_CNI_TEST_PANIC is set");
        }
        log::info(&format!(
            "ADD {id}: {} {}/32 in {netns} (port {})",
            pod.ifname, pod.ip, pod.port
        ));
        let res = AddResult::for_pod(prev, &pod.ifname, &pod.mac, pod.mtu, &netns, pod.ip, dns);
        Ok((res.to_json(self.conf.version), guard))
    }

    fn del(&self) -> CniResult<()> {
        let id = self.id();
        let given_netns = self.env.netns.as_deref();
        let live_netns = given_netns.filter(|n| Path::new(n).exists());
        // DEL is best-effort: a prevResult that cannot be read only loses
        // the address guard of a pending entry.
        let prev_ip = self.prev_result().ok().flatten().and_then(|p| {
            let idx = p.find_interface(self.ifname(), given_netns).map(|(i, _)| i);
            p.ips
                .iter()
                .filter(|c| idx.is_none() || c.interface == idx)
                .find_map(|c| match c.ip()? {
                    std::net::IpAddr::V4(a) => Some(a),
                    _ => None,
                })
        });
        let leave_pending = |why: &RouterError| -> CniResult<()> {
            let p = PendingDetach::new(&id, given_netns, self.ifname(), prev_ip, &self.conf.name);
            let path = pending::write(&self.conf.pending_dir, &p)?;
            log::warn(&format!(
                "DEL {id}: {}; recorded in {} for podrouterd to finish when it is back",
                why.to_cni("DEL").details,
                path.display()
            ));
            Ok(())
        };
        match Router::connect(&self.conf.router_socket) {
            Err(e) => leave_pending(&e)?,
            Ok(mut r) => {
                self.flush_pending(&mut r);
                match r.detach(&id, live_netns, Some(self.ifname())) {
                    Ok(true) => log::info(&format!("DEL {id}: detached")),
                    Ok(false) => log::info(&format!("DEL {id}: nothing to detach")),
                    Err(RouterError::Refused {
                        code: ErrorCode::NetnsNotFound,
                        ..
                    }) => log::info(&format!(
                        "DEL {id}: the namespace is gone, nothing to detach"
                    )),
                    Err(e) if e.is_down() => leave_pending(&e)?,
                    Err(e) => return Err(e.to_cni("DEL")),
                }
            }
        }
        if let Some(d) = self.delegate() {
            d.run("DEL", &[], self.stdin)?;
        }
        Ok(())
    }

    fn check(&self) -> CniResult<()> {
        let prev = self.prev_result()?.ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                "invalid network configuration",
                "CHECK needs \"prevResult\" (the result of the ADD) in the configuration",
            )
        })?;
        let netns = self.netns_must_exist("CHECK")?;
        let ifname = self.ifname();
        let id = self.id();
        let failed = |details: String| CniError::new(Code::CheckFailed, "CHECK failed", details);
        let (idx, iface) = prev
            .find_interface(ifname, Some(netns))
            .ok_or_else(|| failed(format!("prevResult lists no interface {ifname} in {netns}")))?;
        let want_ips: Vec<Ipv4Addr> = prev
            .ips
            .iter()
            .filter(|c| c.interface == Some(idx))
            .filter_map(|c| match c.ip()? {
                std::net::IpAddr::V4(a) => Some(a),
                _ => None,
            })
            .collect();
        if want_ips.is_empty() {
            return Err(failed(format!(
                "prevResult lists no IPv4 address on {ifname}"
            )));
        }
        let pods = Router::connect(&self.conf.router_socket)
            .and_then(|mut r| r.pods())
            .map_err(|e| e.to_cni("CHECK"))?;
        let pod = pods
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| failed(format!("podrouterd has no attachment {id}")))?;
        let mut problems = Vec::new();
        if !want_ips.contains(&pod.ip) {
            problems.push(format!(
                "podrouterd gives {id} the address {}, prevResult says {}",
                pod.ip,
                want_ips
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if pod.netns != netns || pod.ifname != ifname {
            problems.push(format!(
                "podrouterd has {id} as {} in {}, not {ifname} in {netns}",
                pod.ifname, pod.netns
            ));
        }
        if let Some(mac) = &iface.mac {
            if !mac.eq_ignore_ascii_case(&pod.mac) {
                problems.push(format!(
                    "podrouterd has MAC {} for {id}, prevResult says {mac}",
                    pod.mac
                ));
            }
        }
        if problems.is_empty() {
            let expect = Expect {
                ifname: ifname.to_string(),
                ips: vec![(pod.ip, 32)],
                mac: iface.mac.clone(),
                mtu: Some(pod.mtu),
                default_route: prev
                    .routes
                    .iter()
                    .any(|r| r.dst == "0.0.0.0/0" && r.gw.as_deref() == Some(&GATEWAY.to_string())),
            };
            // Allow a short convergence delay right after ADD.
            for attempt in 0..5 {
                problems = netns::check(netns, &expect)?;
                if problems.is_empty() {
                    break;
                }
                if attempt < 4 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if !problems.is_empty() {
            return Err(failed(problems.join("; ")));
        }
        if let Some(d) = self.delegate() {
            d.run("CHECK", &[], self.stdin)?;
        }
        Ok(())
    }

    fn status(&self) -> CniResult<()> {
        let unavailable = |details: String| {
            CniError::new(
                Code::NotAvailable,
                "podrouter-cni cannot service ADD",
                details,
            )
        };
        let s = Router::connect(&self.conf.router_socket)
            .and_then(|mut r| r.status())
            .map_err(|e| unavailable(e.to_cni("STATUS").details))?;
        if s.free_addresses == 0 {
            return Err(unavailable(format!(
                "podrouterd on node {} has no free pod address in {}; free some with DEL or GC, \
                 or add pod_cidrs",
                s.node_name,
                s.pod_cidrs.join(", ")
            )));
        }
        if let (Some(d), true) = (self.delegate(), self.conf.version.has_status_and_gc()) {
            d.run("STATUS", &[], self.stdin)?;
        }
        Ok(())
    }

    fn gc(&self) -> CniResult<()> {
        let valid = self.conf.valid_attachments.as_ref().ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                "invalid network configuration",
                "GC needs \"cni.dev/valid-attachments\"; without it every attachment would be \
                 removed, so nothing was",
            )
        })?;
        let mut errors: Vec<CniError> = Vec::new();
        let mut removed = Vec::new();
        {
            let mut r = Router::connect(&self.conf.router_socket).map_err(|e| e.to_cni("GC"))?;
            self.flush_pending(&mut r);
            let pods = r.pods().map_err(|e| e.to_cni("GC"))?;
            for p in gc::stale(&pods, valid) {
                let netns = Some(p.netns.as_str()).filter(|n| Path::new(n).exists());
                match r.detach(&p.id, netns, Some(&p.ifname)) {
                    Ok(_)
                    | Err(RouterError::Refused {
                        code: ErrorCode::NetnsNotFound,
                        ..
                    }) => {
                        log::info(&format!("GC: removed stale attachment {} ({})", p.id, p.ip));
                        removed.push(p.id.clone());
                    }
                    Err(e) => {
                        let down = e.is_down();
                        errors.push(e.to_cni("GC"));
                        if down {
                            break;
                        }
                    }
                }
            }
        }
        if let Some(d) = self.delegate() {
            // Release the stale attachments' addresses one by one (works
            // with IPAM plugins older than GC), then pass GC on.
            let stdin = self.conf.raw_json_without_gc_keys();
            for id in &removed {
                if let Some((cid, ifname)) = env::parse_attach_id(id) {
                    let over = [
                        ("CNI_CONTAINERID", Some(cid)),
                        ("CNI_IFNAME", Some(ifname)),
                        ("CNI_NETNS", None),
                    ];
                    if let Err(e) = d.run("DEL", &over, &stdin) {
                        errors.push(e);
                    }
                }
            }
            if self.conf.version.has_status_and_gc() {
                if let Err(e) = d.run("GC", &[], self.stdin) {
                    errors.push(e);
                }
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            n => Err(CniError {
                code: errors[0].code,
                msg: format!("GC: {n} errors"),
                details: errors
                    .iter()
                    .map(|e| format!("{}: {}", e.msg, e.details))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> (u8, String) {
        let inv = Invocation {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stdin: stdin.as_bytes().to_vec(),
            exe_name: None,
        };
        let mut out = Vec::new();
        let code = run(&inv, &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"podnet","type":"podrouter-cni","router_socket":"/nonexistent/podrouter.sock","pending_dir":"/proc/podrouter-cni-test/pending"}"#;

    #[test]
    fn version_echoes_and_lists() {
        let (c, out) = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(c, 0);
        assert_eq!(
            out.trim(),
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        let (c, out) = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(c, 0);
        assert!(out.starts_with(r#"{"cniVersion":"1.1.0""#), "{out}");
    }

    #[test]
    fn errors_are_json_on_stdout_with_the_code_as_status() {
        let (c, out) = run_with(&[], CONF);
        assert_eq!(c, 4);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["details"].as_str().unwrap().contains("CNI_COMMAND"));

        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/nonexistent/netns"),
            ("CNI_IFNAME", "eth0"),
        ];
        let (c, out) = run_with(&add, "{");
        assert_eq!(c, 6, "{out}");
        let (c, _) = run_with(&add, &CONF.replace("1.0.0", "0.1.0"));
        assert_eq!(c, 1);
        let (c, _) = run_with(&add, &CONF.replace("podrouter-cni", "ptp"));
        assert_eq!(c, 7);
        let (c, out) = run_with(&add, CONF);
        assert_eq!(c, 3, "{out}");
    }

    #[test]
    fn unreachable_router() {
        let base = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ];
        let with = |cmd: &'static str| {
            let mut v = base.to_vec();
            v.push(("CNI_COMMAND", cmd));
            v
        };
        let (c, out) = run_with(&with("ADD"), CONF);
        assert_eq!(c, 11, "{out}");
        assert!(
            out.contains("cannot connect to /nonexistent/podrouter.sock"),
            "{out}"
        );
        let (c, out) = run_with(&with("STATUS"), CONF);
        assert_eq!(c, 50, "{out}");
        let gc_conf = CONF.replace("}", r#","cni.dev/valid-attachments":[]}"#);
        let (c, _) = run_with(&with("GC"), &gc_conf);
        assert_eq!(c, 11);
        let (c, out) = run_with(&with("GC"), CONF);
        assert_eq!(c, 7, "{out}");
        // DEL with the router down records the detach; here the pending
        // directory cannot be created, so it must fail (I/O), not lie.
        let (c, out) = run_with(&with("DEL"), CONF);
        assert_eq!(c, 5, "{out}");
    }

    #[test]
    fn del_with_the_router_down_leaves_a_pending_entry() {
        let tmp = podrouter_testkit::TempDir::new("cni-del");
        let dir = tmp.join("pending");
        let conf = CONF.replace("/proc/podrouter-cni-test/pending", &dir.display().to_string()).replace(
            "\"router_socket\"",
            r#""prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/gone"}],"ips":[{"address":"10.244.0.9/32","interface":0}]},"router_socket""#,
        );
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/gone"),
            ("CNI_IFNAME", "eth0"),
        ];
        for _ in 0..2 {
            let (c, out) = run_with(&vars, &conf);
            assert_eq!((c, out.as_str()), (0, ""));
        }
        let files = pending::list(&dir);
        assert_eq!(files.len(), 1);
        let p: PendingDetach = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(p.id, "cni:c1:eth0");
        assert_eq!(p.ip, Some(Ipv4Addr::new(10, 244, 0, 9)));
        assert_eq!(p.netns.as_deref(), Some("/run/netns/gone"));
        assert_eq!(p.network, "podnet");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_needs_prev_result() {
        let vars = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ];
        let (c, out) = run_with(&vars, CONF);
        assert_eq!(c, 7);
        assert!(out.contains("prevResult"), "{out}");
    }

    #[test]
    fn version_labels() {
        assert_eq!(version_label(br#"{"cniVersion":"0.2.0"}"#), "0.2.0");
        assert_eq!(version_label(br#"{"cniVersion":"x; rm"}"#), "1.1.0");
        assert_eq!(version_label(b""), "1.1.0");
    }
}
