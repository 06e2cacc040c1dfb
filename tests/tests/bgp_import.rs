//! The import policy against a hostile peer: GoBGP (iBGP) announces the
//! nine prefixes of issue 15 that overlap what the node owns (a local
//! pod's /32, the node's block and a more specific of it, the default
//! route, the node's address, the underlay subnet and a more specific of
//! it, the peer's own address and 169.254.1.1/32) beside one legitimate
//! block. podrouterd refuses all nine with a reason, installs only the
//! legitimate block, leaves the node's kernel routes alone, and the node,
//! its pod and the session stay healthy.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const NODE: &str = "10.209.0.1";
const PEER: &str = "10.209.0.2";
const UNDERLAY: &str = "10.209.0.0/24";
const OUR_BLOCK: &str = "10.244.1.0/26";
const GOBGP_BLOCK: &str = "10.244.3.0/26";
const UP: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn bgp_import_policy_keeps_the_node_healthy_under_hostile_routes() {
    if !require(
        "bgp_import_policy_keeps_the_node_healthy_under_hostile_routes",
        &["gobgpd", "gobgp", "ping"],
    ) {
        return;
    }
    let bgp = bgp_section(
        NODE_AS,
        "graceful_restart = false",
        &[PeerCfg::new(PEER, NODE_AS)],
    );
    let (peer_ns, mut node) = node_and_peer("bgpimp", NODE, OUR_BLOCK, PEER, &bgp);
    let _log = LogOnPanic(node.log.clone());
    let pod = node.add_pod("bgpimp-pod", &[]);
    assert!(
        ping_until_reply(&pod.ns, NODE, SETTLE),
        "pod cannot reach the node"
    );
    let kernel_before = node.ns.exec(&["ip", "route", "show", UNDERLAY]).stdout;

    let hostile = [
        format!("{}/32", pod.ip),
        OUR_BLOCK.to_string(),
        "10.244.1.0/27".to_string(),
        "0.0.0.0/0".to_string(),
        format!("{NODE}/32"),
        UNDERLAY.to_string(),
        "10.209.0.0/25".to_string(),
        format!("{PEER}/32"),
        "169.254.1.1/32".to_string(),
    ];
    let g = Gobgp::start(&peer_ns, PEER, NODE_AS, NODE, NODE_AS);
    for p in hostile.iter().map(String::as_str).chain([GOBGP_BLOCK]) {
        g.cli(&["global", "rib", "add", p, "-a", "ipv4"])
            .expect_ok();
    }
    wait_established(&node, PEER, UP);
    assert!(
        wait_fib(&node, GOBGP_BLOCK, Some(PEER), Duration::from_secs(10)),
        "the legitimate block was not installed: {}",
        node.ctl_table(&["bgp", "rib"])
    );
    // Every hostile prefix reached the RIB and was refused with a reason.
    let all_in = || {
        let rib = node.ctl(&["bgp", "rib"]);
        let routes = rib["routes"].as_array().cloned().unwrap_or_default();
        hostile.iter().all(|h| {
            routes
                .iter()
                .any(|r| r["prefix"] == h.as_str() && r["from"] == PEER)
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), all_in),
        "not every hostile prefix reached the RIB: {}",
        node.ctl_table(&["bgp", "rib"])
    );
    let rib = node.ctl(&["bgp", "rib"]);
    for h in &hostile {
        let r = rib["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prefix"] == h.as_str() && r["from"] == PEER)
            .unwrap();
        assert!(
            r["filtered"].is_string() && r["installed"] == false,
            "{h} was not refused: {r:#}"
        );
        assert!(fib_via(&node, h).is_none(), "{h} is in the FIB via a node");
    }
    let table = node.ctl_table(&["bgp", "rib"]).stdout;
    say(&format!("podrouterctl bgp rib:\n{table}"));
    assert_eq!(
        table.matches("not installed:").count(),
        hostile.len(),
        "{table}"
    );
    let p = &peers(&node)[0];
    assert_eq!(p["prefixes_received"], hostile.len() + 1, "{p:#}");
    assert_eq!(p["prefixes_accepted"], 1, "{p:#}");

    // The node's kernel routes are as they were.
    let kernel_after = node.ns.exec(&["ip", "route", "show", UNDERLAY]).stdout;
    assert_eq!(kernel_after, kernel_before, "the underlay route changed");
    let to_peer = node.ns.exec(&["ip", "route", "get", PEER]).stdout;
    assert!(to_peer.contains(&format!("dev {UPLINK}")), "{to_peer}");
    let ours = node.ns.exec(&["ip", "route", "show", "proto", "77"]).stdout;
    for h in &hostile[3..] {
        let h = h.trim_end_matches("/32");
        assert!(
            !ours.lines().any(|l| l.split_whitespace().next() == Some(h)),
            "podrouterd put {h} in the node's kernel: {ours}"
        );
    }
    assert!(!ours.contains("default"), "{ours}");

    // Node <-> pod and node -> peer still work; the session holds past
    // its hold time.
    std::thread::sleep(Duration::from_secs(u64::from(HOLD) + 1));
    for (from, to) in [
        (node.ns.name(), pod.ip.as_str()),
        (&pod.ns, NODE),
        (node.ns.name(), PEER),
    ] {
        let p = ping(from, to, &["-c", "3", "-i", "0.2", "-W", "2"]);
        assert_eq!(p.received, 3, "ping {to} from {from}:\n{}", p.text);
    }
    assert_eq!(peers(&node)[0]["state"], "Established");
    assert!(g.established(NODE), "{}", g.cli(&["neighbor"]).stdout);
}
