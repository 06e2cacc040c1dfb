//! Pods survive a restart of podrouterd: persistent TAP devices and the
//! state under state_dir.
use std::time::Duration;

use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(5);

fn pods_by_id(node: &Node) -> Vec<(String, String, String)> {
    let v = node.ctl(&["pods"]);
    let mut pods: Vec<_> = v
        .as_array()
        .unwrap_or_else(|| panic!("pods is not a list: {v:#}"))
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["ip"].as_str().unwrap().to_string(),
                p["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pods.sort();
    pods
}

fn pod_addr(pod: &Pod) -> Out {
    pod.exec(&["ip", "-j", "addr", "show", "dev", "eth0"])
}

#[test]
fn pods_keep_interface_and_address_across_restart() {
    if !require("pods_keep_interface_and_address_across_restart", &["ping"]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    assert_ping(&a.ns, &b.ip, 2, 63);
    let listed = pods_by_id(&node);
    assert_eq!(listed.len(), 2);

    let status = node.stop_daemon("TERM");
    assert_eq!(status.code(), Some(0), "SIGTERM exit status: {status}");
    // While the daemon is down the pods keep their interface and address.
    for p in [&a, &b] {
        let out = pod_addr(p);
        assert!(
            out.ok(),
            "{} lost eth0 when podrouterd stopped: {out}",
            p.id
        );
        assert!(
            out.stdout.contains(&format!("\"local\":\"{}\"", p.ip)),
            "{} lost its address when podrouterd stopped: {out}",
            p.id
        );
    }

    node.start_daemon();
    assert_eq!(
        pods_by_id(&node),
        listed,
        "pods listed after restart differ"
    );
    for p in [&a, &b] {
        let out = pod_addr(p).expect_ok();
        assert!(
            out.stdout.contains(&format!("\"local\":\"{}\"", p.ip)),
            "{out}"
        );
        assert!(
            out.stdout.contains("LOWER_UP"),
            "router did not reopen {}'s TAP: {out}",
            p.id
        );
    }
    assert!(
        ping_until_reply(&a.ns, &b.ip, SETTLE),
        "pods cannot reach each other after restart"
    );
    assert_ping(&a.ns, &b.ip, 3, 63);
    assert_ping(&b.ns, &a.ip, 3, 63);
    assert_ping(&a.ns, NODE_IP, 2, 64);

    // Allocation state survived too: a new pod does not reuse a taken address.
    let c = node.add_pod("pod-c", &[]);
    assert!(
        c.ip != a.ip && c.ip != b.ip,
        "restarted daemon handed out a taken address {}",
        c.ip
    );
    assert!(ping_until_reply(&c.ns, &a.ip, SETTLE));
    // Detach still works on a restored pod.
    node.ctl(&["detach", "pod-a"]);
    assert!(
        wait_until(Duration::from_secs(2), || !pod_addr(&a).ok()),
        "restored pod-a kept eth0 after detach"
    );
}

/// The XDP programs on interface `ifname` of the node namespace, as
/// `ip -d link` reports them: (id, name) each.
fn xdp_programs(node: &Node, ifname: &str) -> Vec<(u64, String)> {
    let out = node
        .ns
        .exec(&["ip", "-j", "-d", "link", "show", "dev", ifname]);
    let v: Value = serde_json::from_str(&out.expect_ok().stdout).expect("ip -j link");
    let xdp = &v[0]["xdp"];
    let prog = |p: &Value| {
        (
            p["id"].as_u64().unwrap_or(0),
            p["name"].as_str().unwrap_or("").to_string(),
        )
    };
    if xdp["prog"].is_object() {
        return vec![prog(&xdp["prog"])];
    }
    xdp["attached"]
        .as_array()
        .map(|a| a.iter().map(|x| prog(&x["prog"])).collect())
        .unwrap_or_default()
}

/// For each pod port: the node-end interface and program id the daemon
/// reports (afxdp), checked against what the kernel shows: exactly one
/// program, ours.
fn check_one_program_per_port(node: &Node, pods: usize) -> Vec<(String, u64)> {
    let status = node.ctl(&["status"]);
    let ports = status["ports"].as_array().expect("status lists ports");
    assert_eq!(ports.len(), pods, "{status:#}");
    let mut seen = Vec::new();
    for p in ports {
        assert_eq!(p["backend"], "afxdp", "{p:#}");
        let mode = p["xdp_mode"].as_str().unwrap_or_default();
        assert!(
            mode.starts_with("copy, ") || mode.starts_with("zero-copy, "),
            "{p:#}"
        );
        let ifname = p["xdp_ifname"].as_str().expect("node end").to_string();
        let id = p["xdp_prog_id"].as_u64().expect("program id");
        assert_eq!(
            xdp_programs(node, &ifname),
            vec![(id, "podrouter_xsk".to_string())],
            "{ifname}: not exactly our one program"
        );
        seen.push((ifname, id));
    }
    seen
}

/// kill -9 leaves the pods in place; the restarted daemon forwards for the
/// same pods again. With afxdp, every node end has exactly one XDP program
/// before and after (a killed daemon's BPF links die with it, the new
/// daemon attaches a fresh program, never a second one), and a clean stop
/// detaches them all.
#[test]
fn kill_9_then_restart_forwards_for_the_same_pods() {
    if !require("kill_9_then_restart_forwards_for_the_same_pods", &["ping"]) {
        return;
    }
    let afxdp = backend() == "afxdp";
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let listed = pods_by_id(&node);
    let before = if afxdp {
        check_one_program_per_port(&node, 2)
    } else {
        Vec::new()
    };

    node.stop_daemon("KILL");
    for p in [&a, &b] {
        let out = pod_addr(p);
        assert!(
            out.ok() && out.stdout.contains(&p.ip),
            "{} lost eth0: {out}",
            p.id
        );
    }
    for (ifname, _) in &before {
        assert!(
            xdp_programs(&node, ifname).is_empty(),
            "{ifname}: the killed daemon's program is still attached"
        );
    }

    node.start_daemon();
    assert_eq!(pods_by_id(&node), listed, "pods after kill -9 and restart");
    assert!(
        ping_until_reply(&a.ns, &b.ip, SETTLE),
        "pods cannot reach each other after kill -9 and restart"
    );
    assert_ping(&a.ns, &b.ip, 3, 63);
    assert_ping(&b.ns, &a.ip, 3, 63);
    if afxdp {
        let after = check_one_program_per_port(&node, 2);
        let names = |v: &[(String, u64)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&after), names(&before), "same node ends");
        let status = node.stop_daemon("TERM");
        assert_eq!(status.code(), Some(0), "SIGTERM exit status: {status}");
        for (ifname, _) in &after {
            assert!(
                xdp_programs(&node, ifname).is_empty(),
                "{ifname}: program left attached after a clean stop"
            );
        }
        node.start_daemon();
    }
}

/// A restart with a config that no longer has the pods' block is refused
/// (exit 2, naming the pods) instead of forgetting them; with the block
/// back the pods are served again. A second podrouterd on the same state
/// directory names the pid holding it.
#[test]
fn restart_refuses_a_config_that_would_forget_live_pods() {
    if !require(
        "restart_refuses_a_config_that_would_forget_live_pods",
        &["ping"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let listed = pods_by_id(&node);

    // A second daemon on the same config and state directory.
    let pid = node.daemon_pid().expect("daemon runs");
    let d = bin("podrouterd");
    let config = node.config.to_string_lossy().into_owned();
    let second = node.exec(&[&d.to_string_lossy(), "--config", &config]);
    assert!(!second.ok(), "a second podrouterd started: {second}");
    assert!(
        second
            .stderr
            .contains(&format!("another podrouterd, pid {pid}, holds ")),
        "{second}"
    );
    assert_ping(&a.ns, &b.ip, 2, 63);

    node.stop_daemon("TERM");
    let original = std::fs::read_to_string(&node.config).unwrap();
    let moved = original.replace(POD_CIDR, "10.245.0.0/24");
    assert_ne!(moved, original);
    std::fs::write(&node.config, &moved).unwrap();
    let refused = node.exec(&[&d.to_string_lossy(), "--config", &config]);
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    for p in [&a, &b] {
        assert!(
            refused.stderr.contains(&format!("{} ({})", p.id, p.ip)),
            "refusal does not name {}: {refused}",
            p.id
        );
    }
    assert!(refused.stderr.contains("podrouterctl detach"), "{refused}");

    std::fs::write(&node.config, &original).unwrap();
    node.start_daemon();
    assert_eq!(
        pods_by_id(&node),
        listed,
        "pods forgotten by the refused start"
    );
    assert!(
        ping_until_reply(&a.ns, &b.ip, SETTLE),
        "pods cannot reach each other after the refused start"
    );
    assert_ping(&b.ns, &a.ip, 2, 63);
}
