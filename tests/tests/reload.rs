//! Configuration reload (`podrouterctl reload`, SIGHUP) with podrouterd
//! peered with BIRD 2: a pod CIDR added to the file is announced on the
//! running session and pods can be attached in it; removing it while a
//! pod holds an address there is refused naming the pod; once the pod is
//! gone the block is withdrawn (BIRD drops it, the first block stays); a
//! block BIRD itself announces is refused as another node's; a
//! broken file or a key that needs a restart is refused with the reason
//! and changes nothing; SIGHUP does what `reload` does.
use std::fs;
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const NODE: &str = "10.201.0.1";
const PEER: &str = "10.201.0.2";
const OUR_BLOCK: &str = "10.244.1.0/26";
const NEW_BLOCK: &str = "10.244.9.0/26";
const BIRD_BLOCK: &str = "10.244.2.0/26";
const UP: Duration = Duration::from_secs(20);

fn set_cidrs(node: &Node, cidrs: &[&str]) {
    let text = fs::read_to_string(&node.config).expect("read config");
    let line = text
        .lines()
        .find(|l| l.starts_with("pod_cidrs ="))
        .expect("pod_cidrs line")
        .to_string();
    let list: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    let text = text.replacen(&line, &format!("pod_cidrs = [{}]", list.join(", ")), 1);
    fs::write(&node.config, text).expect("write config");
}

fn status_cidrs(node: &Node) -> Vec<String> {
    node.ctl(&["status"])["pod_cidrs"]
        .as_array()
        .expect("pod_cidrs")
        .iter()
        .map(|c| c.as_str().unwrap_or_default().to_string())
        .collect()
}

fn kernel_route(node: &Node, prefix: &str) -> String {
    node.exec(&["ip", "route", "show", "exact", prefix])
        .expect_ok()
        .stdout
        .trim()
        .to_string()
}

fn fib_next_hop(node: &Node, prefix: &str) -> Option<String> {
    node.ctl(&["routes"]).as_array()?.iter().find_map(|r| {
        (r["prefix"] == prefix).then(|| r["next_hop"].as_str().unwrap_or_default().to_string())
    })
}

#[test]
fn reload_adds_and_removes_pod_cidrs_announced_to_bird() {
    if !require(
        "reload_adds_and_removes_pod_cidrs_announced_to_bird",
        &["bird", "birdc", "ping"],
    ) {
        return;
    }
    let peer_ns = Netns::new("bird");
    let bgp = bgp_section(NODE_AS, "", &[PeerCfg::new(PEER, NODE_AS)]);
    let mut node = start_bgp_node(NODE, OUR_BLOCK, &bgp);
    let _log = LogOnPanic(node.log.clone());
    link_to_peer(&node, NODE, &peer_ns, PEER);
    let bird = Bird::start(
        &peer_ns,
        &bird_conf(PEER, NODE_AS, BIRD_BLOCK, NODE, NODE_AS, ""),
    );
    wait_established(&node, PEER, UP);
    assert!(
        wait_until(Duration::from_secs(10), || bird.has_route(OUR_BLOCK, NODE)),
        "BIRD did not learn our block: {}",
        bird.birdc("show route all")
    );
    assert!(!bird.has_route(NEW_BLOCK, NODE));

    // 1. Add a block: announced on the running session.
    set_cidrs(&node, &[OUR_BLOCK, NEW_BLOCK]);
    let r = node.ctl(&["reload"]);
    assert_eq!(r["added"], serde_json::json!([NEW_BLOCK]), "{r:#}");
    assert_eq!(r["removed"], serde_json::json!([]), "{r:#}");
    assert!(
        wait_until(Duration::from_secs(10), || bird.has_route(NEW_BLOCK, NODE)),
        "BIRD did not learn the reloaded block: {}",
        bird.birdc("show route all")
    );
    say(&format!(
        "after reload, birdc show route:\n{}",
        bird.birdc("show route").stdout
    ));
    assert!(bird.has_route(OUR_BLOCK, NODE));
    let p = &peers(&node)[0];
    assert_eq!(p["established_count"], 1, "session was reset: {p:#}");
    assert_eq!(status_cidrs(&node), vec![OUR_BLOCK, NEW_BLOCK]);
    assert_eq!(
        fib_next_hop(&node, NEW_BLOCK).as_deref(),
        Some("unreachable")
    );
    let k = kernel_route(&node, NEW_BLOCK);
    assert!(
        k.contains("dev podrouter0") && k.contains("proto 77"),
        "node kernel route for the new block: {k:?}"
    );

    // A block BIRD announces is another node's: refused, naming the peer.
    assert!(wait_fib(
        &node,
        BIRD_BLOCK,
        Some(PEER),
        Duration::from_secs(10)
    ));
    set_cidrs(&node, &[OUR_BLOCK, NEW_BLOCK, BIRD_BLOCK]);
    let o = node.ctl_out(&["reload"]);
    assert_eq!(o.code(), 1, "{o}");
    assert!(
        o.stderr.contains(&format!(
            "{BIRD_BLOCK} is announced to this node by BGP peer {PEER}"
        )),
        "{o}"
    );
    assert_eq!(status_cidrs(&node), vec![OUR_BLOCK, NEW_BLOCK]);
    assert_eq!(fib_via(&node, BIRD_BLOCK).as_deref(), Some(PEER));
    set_cidrs(&node, &[OUR_BLOCK, NEW_BLOCK]);

    // 2. A pod in the new block, reachable from the node.
    let pod = node.add_pod("pod-new", &["--ip", "10.244.9.5"]);
    assert_eq!(pod.ip, "10.244.9.5");
    assert!(
        ping_until_reply(node.ns.name(), &pod.ip, Duration::from_secs(10)),
        "node cannot reach the pod in the new block"
    );

    // 3. Removing the block while the pod lives: refused, naming it.
    set_cidrs(&node, &[OUR_BLOCK]);
    let o = node.ctl_out(&["reload"]);
    assert_eq!(o.code(), 1, "{o}");
    assert!(
        o.stderr.contains("pod-new") && o.stderr.contains(NEW_BLOCK),
        "refusal does not name the pod and block: {o}"
    );
    assert!(o.stderr.contains("reload_refused"), "{o}");
    assert_eq!(status_cidrs(&node), vec![OUR_BLOCK, NEW_BLOCK]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(bird.has_route(NEW_BLOCK, NODE), "withdrawn despite refusal");
    assert!(ping_until_reply(
        node.ns.name(),
        &pod.ip,
        Duration::from_secs(5)
    ));

    // 4. A broken file: refused with file, line and key; nothing changes.
    let good = fs::read_to_string(&node.config).unwrap();
    fs::write(
        &node.config,
        good.replacen("pod_cidrs = [", "pod_cidrs = [\"10.244.7.1/26\", ", 1),
    )
    .unwrap();
    let o = node.ctl_out(&["reload"]);
    assert_eq!(o.code(), 1, "{o}");
    assert!(
        o.stderr.contains("line 4") && o.stderr.contains("key `pod_cidrs`"),
        "{o}"
    );
    assert!(o.stderr.contains(&node.config.display().to_string()), "{o}");
    // A key that needs a restart, even with a runtime change beside it.
    fs::write(
        &node.config,
        good.replacen("workers = 1", "workers = 1\nmtu = 1400", 1)
            .replacen(&format!(", \"{NEW_BLOCK}\""), "", 1),
    )
    .unwrap();
    let o = node.ctl_out(&["reload"]);
    assert_eq!(o.code(), 1, "{o}");
    assert!(
        o.stderr
            .contains("restart podrouterd to change [dataplane] mtu"),
        "{o}"
    );
    assert_eq!(status_cidrs(&node), vec![OUR_BLOCK, NEW_BLOCK]);
    assert!(node.ctl_out(&["status"]).ok(), "daemon stopped serving");
    assert!(bird.has_route(NEW_BLOCK, NODE));
    fs::write(&node.config, &good).unwrap();

    // 5. The pod goes; the block can go: BIRD drops it, keeps the first.
    node.ctl(&["detach", "pod-new"]);
    set_cidrs(&node, &[OUR_BLOCK]);
    let r = node.ctl(&["reload"]);
    assert_eq!(r["removed"], serde_json::json!([NEW_BLOCK]), "{r:#}");
    assert!(
        wait_until(Duration::from_secs(10), || !bird.has_route(NEW_BLOCK, NODE)),
        "BIRD kept the removed block: {}",
        bird.birdc("show route all")
    );
    assert!(bird.has_route(OUR_BLOCK, NODE), "first block withdrawn too");
    assert_eq!(status_cidrs(&node), vec![OUR_BLOCK]);
    assert_eq!(fib_next_hop(&node, NEW_BLOCK), None);
    assert_eq!(kernel_route(&node, NEW_BLOCK), "");
    let empty = node.empty_pod_ns();
    let o = node.ctl_out(&[
        "attach",
        "late",
        "--netns",
        &empty.netns_path,
        "--ip",
        "10.244.9.6",
    ]);
    assert_eq!(
        o.code(),
        1,
        "address in a removed block was handed out: {o}"
    );
    // Nothing to do: a no-op reload.
    let r = node.ctl(&["reload"]);
    assert_eq!(r["added"], serde_json::json!([]));
    assert_eq!(r["removed"], serde_json::json!([]));
    let t = node.ctl_table(&["reload"]).expect_ok();
    assert!(
        t.stdout.contains("no change") && t.stdout.contains(&format!("pod CIDRs: {OUR_BLOCK}")),
        "{t}"
    );

    // 6. SIGHUP works like reload.
    set_cidrs(&node, &[OUR_BLOCK, NEW_BLOCK]);
    let pid = node.daemon_pid().expect("daemon runs");
    assert!(signal(pid, "HUP"));
    assert!(
        wait_until(Duration::from_secs(10), || bird.has_route(NEW_BLOCK, NODE)),
        "SIGHUP did not reload: {}",
        node.daemon_log()
    );
    assert_eq!(status_cidrs(&node), vec![OUR_BLOCK, NEW_BLOCK]);
    let log = node.daemon_log();
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(
        log.contains(&format!("added: {NEW_BLOCK}; removed: none")),
        "reload outcome not logged:\n{log}"
    );
    assert!(
        log.contains("cannot remove a pod CIDR with pods in it"),
        "{log}"
    );
    // A broken file on SIGHUP: logged, daemon keeps running unchanged.
    fs::write(&node.config, "pod_cidrs = [\n").unwrap();
    assert!(signal(pid, "HUP"));
    assert!(
        wait_until(Duration::from_secs(5), || node
            .daemon_log()
            .contains("reload refused, running configuration unchanged")),
        "{}",
        node.daemon_log()
    );
    assert_eq!(status_cidrs(&node), vec![OUR_BLOCK, NEW_BLOCK]);
    assert_eq!(peers(&node)[0]["established_count"], 1);
    fs::write(&node.config, &good).unwrap();
    let _ = node.add_pod("pod-after", &[]);
}
