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
    assert!(!pod_addr(&a).ok(), "restored pod-a kept eth0 after detach");
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
