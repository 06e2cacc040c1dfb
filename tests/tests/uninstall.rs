//! `podrouterd --uninstall` leaves the node namespace exactly as it was
//! before podrouterd first started: `ip -d link` (with XDP state), `ip
//! addr`, `ip route` (all tables, v4 and v6), `ip rule`, tc qdiscs and the
//! uplink's filters are compared whole, after a node that ran with pods,
//! the VXLAN tunnel and a BGP-learned route in the kernel. Twice: with
//! podrouterd running (uninstall stops it) and after it was killed
//! (uninstall works from the state directory and from names and marks).
use std::fs;
use std::path::Path;
use std::time::Duration;

use podrouter_e2e::bgp::{bgp_section, enable_bgp, link, start_plain_node, PeerCfg, NODE_AS};
use podrouter_e2e::*;

const A_IP: &str = "10.207.0.1";
const B_IP: &str = "10.207.0.2";
const A_BLOCK: &str = "10.244.71.0/26";
const B_BLOCK: &str = "10.244.72.0/26";
/// The import pool of both blocks: with per-pool kernel routes (the
/// default) B's tunnelled block reaches A's kernel as this pool's route.
const POOL: &str = "10.244.0.0/16";
const UPLINK: &str = "up0";

/// Everything of the node namespace podrouter could change, as text.
fn dump(ns: &Netns) -> Vec<(String, String)> {
    let cmds: [&[&str]; 9] = [
        &["ip", "-d", "link", "show"],
        &["ip", "addr", "show"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "rule", "show"],
        &["ip", "-6", "rule", "show"],
        &["tc", "qdisc", "show"],
        &["tc", "filter", "show", "dev", UPLINK, "ingress"],
        &["tc", "filter", "show", "dev", UPLINK, "egress"],
    ];
    cmds.iter()
        .map(|c| {
            let out = ns.exec(c);
            // No qdisc: tc says so on stderr; that is a state too.
            (c.join(" "), format!("{}{}", out.stdout, out.stderr))
        })
        .collect()
}

#[track_caller]
fn assert_same(before: &[(String, String)], after: &[(String, String)], when: &str) {
    for ((cmd, b), (_, a)) in before.iter().zip(after) {
        assert_eq!(
            a, b,
            "{when}: `{cmd}` differs from before podrouterd\n--- before\n{b}\n--- after\n{a}"
        );
    }
}

struct NodeA<'a> {
    ns: &'a Netns,
    config: &'a Path,
    socket: &'a Path,
    log: &'a Path,
}

impl NodeA<'_> {
    fn start(&self) -> Bg {
        let d = bin("podrouterd");
        let bg = self.ns.spawn(
            "podrouterd",
            &[
                &d.to_string_lossy(),
                "--config",
                &self.config.to_string_lossy(),
            ],
            Some(self.log),
        );
        let up = wait_until(Duration::from_secs(20), || {
            podrouterctl(self.socket, true, &["status"]).ok()
        });
        assert!(up, "podrouterd A did not come up:\n{}", self.log_text());
        bg
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log).unwrap_or_default()
    }

    /// Waits until B's block is a BGP route in A's FIB and its pool's
    /// route (protocol 77) is in A's kernel.
    fn wait_bgp_route(&self) {
        let ok = wait_until(Duration::from_secs(30), || {
            podrouterctl(self.socket, true, &["routes"])
                .stdout
                .contains(&format!("\"{B_BLOCK}\""))
                && self
                    .ns
                    .exec(&["ip", "route", "show", "proto", "77"])
                    .stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("{POOL} ")))
        });
        assert!(
            ok,
            "B's block never reached A's kernel: {}\n{}",
            self.ns.exec(&["ip", "route"]),
            self.log_text()
        );
    }

    /// What podrouter must have put on the node for the test to mean
    /// anything.
    fn assert_installed(&self) {
        let links = self.ns.exec(&["ip", "link", "show"]).stdout;
        for l in ["podrouter0", "podrouter-vx"] {
            assert!(links.contains(&format!(": {l}:")), "no {l}:\n{links}");
        }
        let filters = self
            .ns
            .exec(&["tc", "filter", "show", "dev", UPLINK, "ingress"])
            .stdout;
        assert!(
            filters.contains("pref 49200"),
            "no VXLAN redirect:\n{filters}"
        );
    }

    fn uninstall(&self) -> Out {
        let d = bin("podrouterd");
        self.ns.exec(&[
            &d.to_string_lossy(),
            "--config",
            &self.config.to_string_lossy(),
            "--uninstall",
        ])
    }
}

#[test]
fn uninstall_restores_the_node_exactly() {
    if !require("uninstall_restores_the_node_exactly", &["tc"]) {
        return;
    }
    // B: a podrouterd announcing its block to A over BGP.
    let mut b = start_plain_node(B_IP, B_BLOCK);
    let a_ns = Netns::new("node");
    link(
        &a_ns,
        UPLINK,
        &format!("{A_IP}/24"),
        &b.ns,
        "eth0",
        &format!("{B_IP}/24"),
    );
    enable_bgp(
        &mut b,
        &bgp_section(NODE_AS, "", &[PeerCfg::new(A_IP, NODE_AS)]),
        Some("eth0"),
    );
    // The baseline once the kernel has settled the new link (IPv6 duplicate
    // address detection ends the `tentative` state).
    assert!(wait_until(Duration::from_secs(10), || !a_ns
        .exec(&["ip", "addr", "show"])
        .stdout
        .contains("tentative")));
    let before = dump(&a_ns);

    let dir = TempDir::new("uninstall");
    let cfg = NodeConfig {
        node_ip: A_IP.into(),
        pod_cidrs: vec![A_BLOCK.into()],
        ..NodeConfig::default()
    };
    let text = cfg.toml(a_ns.name(), dir.path()).replacen(
        "[dataplane]\n",
        &format!("[dataplane]\ntunnel = \"vxlan\"\nuplink = \"{UPLINK}\"\n"),
        1,
    ) + &bgp_section(NODE_AS, "", &[PeerCfg::new(B_IP, NODE_AS)]);
    let config = dir.join("podrouter.toml");
    fs::write(&config, text).unwrap();
    let (socket, log) = (dir.join("api.sock"), dir.join("podrouterd.log"));
    let a = NodeA {
        ns: &a_ns,
        config: &config,
        socket: &socket,
        log: &log,
    };
    let _log = LogOnPanic(log.clone());

    // 1. podrouterd running, with pods, the tunnel and a BGP route.
    let mut daemon = a.start();
    let (p1_ns, p1) = attach_new_pod(&socket, "u1", &[]);
    let (p2_ns, p2) = attach_new_pod(&socket, "u2", &[]);
    a.wait_bgp_route();
    a.assert_installed();
    let out = a.uninstall();
    assert!(out.ok(), "uninstall failed: {out}");
    let exited = daemon.stop_with("TERM", Duration::from_secs(1));
    assert!(
        exited.is_some_and(|s| s.code() == Some(0)),
        "uninstall did not stop podrouterd cleanly: {exited:?}"
    );
    for want in [
        "stopped podrouterd (pid ".to_string(),
        format!("removed pod u1: interface eth0 in {}", p1.netns_path),
        format!("removed pod u2: interface eth0 in {}", p2.netns_path),
        format!("removed route {POOL}"),
        format!("removed route {A_BLOCK} dev podrouter0"),
        "removed link podrouter0".to_string(),
        format!("removed state directory {}", dir.join("state").display()),
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(&want)),
            "uninstall did not report `{want}`:\n{out}"
        );
    }
    say(&format!(
        "uninstall with podrouterd running:\n{}",
        out.stdout
    ));
    assert_same(&before, &dump(&a_ns), "after uninstall of a running node");
    for (ns, pod) in [(&p1_ns, &p1), (&p2_ns, &p2)] {
        let links = ns.exec(&["ip", "link", "show"]).stdout;
        assert!(!links.contains("eth0"), "{} kept eth0:\n{links}", pod.id);
    }
    assert!(!dir.join("state").exists() && !socket.exists());

    // 2. podrouterd killed: the tc redirect stays behind, nobody answers
    // on the socket; uninstall works from the state directory and names.
    let mut daemon = a.start();
    let (_p3_ns, p3) = attach_new_pod(&socket, "u3", &[]);
    a.wait_bgp_route();
    a.assert_installed();
    daemon.stop_with("KILL", Duration::from_secs(5));
    let out = a.uninstall();
    assert!(out.ok(), "uninstall after a crash failed: {out}");
    for want in [
        format!("removed pod u3: interface eth0 in {}", p3.netns_path),
        format!("removed route {POOL}"),
        format!("removed tc filter ingress pref 49200 on {UPLINK}"),
        format!("removed qdisc clsact on {UPLINK}"),
        "removed link podrouter0".to_string(),
        format!("removed API socket {}", socket.display()),
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(&want)),
            "uninstall did not report `{want}`:\n{out}"
        );
    }
    assert!(!out.stdout.contains("stopped podrouterd"), "{out}");
    assert_same(&before, &dump(&a_ns), "after uninstall of a killed node");

    // 3. Nothing left: a second uninstall removes nothing and succeeds.
    let out = a.uninstall();
    assert!(out.ok(), "{out}");
    assert_eq!(
        out.stdout.trim(),
        "nothing of podrouter's was left on this node"
    );
    assert_same(&before, &dump(&a_ns), "after a second uninstall");
}
