//! `[bgp] kernel_routes = "per-pool"` end to end: two podrouterd nodes in
//! an iBGP mesh on one segment, each learning the other's block. Node 1's
//! kernel gets one route for the import pool (10.244.0.0/16, the default
//! pool of its block) into the host port instead of a route per learned
//! block, and the node itself (its host, not a pod) reaches a pod in node
//! 2's block through it: tunnelled (encap `always`), the kernel has no
//! route for the block at all, only the pool's. Routed directly (encap
//! `never`), the block still gets its own kernel route via node 2, which
//! wins over the pool's, and the host's ping follows it. A graceful stop
//! keeps the pool's route, as it keeps the learned blocks' routes.
//!
//! With GoBGP announcing a pool's exact prefix, routed directly, the
//! learned route (metric 0) sits beside the pool's covering route
//! (metric 1024) and wins; withdrawn, the pool's route is still there,
//! and the host's ping to an address of the pool that no block covers
//! is refused by the router's FIB (`no_route`, ICMP sent), not dropped
//! as `hairpin`.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const UP: Duration = Duration::from_secs(30);
const POOL: &str = "10.244.0.0/16";

fn ip(net: u8, i: usize) -> String {
    format!("10.{net}.0.{i}")
}

fn block(i: usize) -> String {
    format!("10.244.{i}.0/26")
}

/// Two nodes with `encap`, per-pool kernel routes, in an iBGP mesh on the
/// segment 10.`net`.0.0/24; waits until node 1 has node 2's block in its
/// FIB. Returns the switch (dropped last) and the nodes.
fn two_nodes(net: u8, encap: &str) -> (Switch, Vec<Node>) {
    let mut sw = Switch::new();
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut n = start_plain_node(&ip(net, i), &block(i));
        sw.plug(&n.ns, "eth0", &format!("{}/24", ip(net, i)));
        let other = 3 - i;
        let peers = [PeerCfg::new(&ip(net, other), NODE_AS)];
        set_encap(&n, encap);
        enable_bgp(
            &mut n,
            &bgp_section(NODE_AS, "kernel_routes = \"per-pool\"", &peers),
            Some("eth0"),
        );
        nodes.push(n);
    }
    wait_established(&nodes[0], &ip(net, 2), UP);
    assert!(
        wait_fib(
            &nodes[0],
            &block(2),
            Some(&ip(net, 2)),
            Duration::from_secs(10)
        ),
        "node 1 lacks {} via {}: {}",
        block(2),
        ip(net, 2),
        nodes[0].ctl_table(&["bgp", "rib"])
    );
    (sw, nodes)
}

/// Waits until `ns` has the pool's route into a device (scope link, proto
/// 77) and returns it.
#[track_caller]
fn wait_pool_route(ns: &Netns) -> String {
    let ok = |r: &str| {
        let r = format!("{r} ");
        r.contains(" dev ") && r.contains("proto 77 ") && !r.contains(" via ")
    };
    assert!(
        wait_until(Duration::from_secs(10), || ok(&kernel_route(ns, POOL))),
        "{}: no covering route for {POOL}, has {:?}",
        ns.name(),
        kernel_route(ns, POOL)
    );
    kernel_route(ns, POOL)
}

#[test]
fn bgp_per_pool_kernel_route_carries_the_hosts_traffic_to_tunnelled_blocks() {
    if !require(
        "bgp_per_pool_kernel_route_carries_the_hosts_traffic_to_tunnelled_blocks",
        &["ping"],
    ) {
        return;
    }
    let (_sw, mut nodes) = two_nodes(207, "always");
    let _logs: Vec<LogOnPanic> = nodes.iter().map(|n| LogOnPanic(n.log.clone())).collect();
    let pool = wait_pool_route(&nodes[0].ns);
    // No route of its own for the tunnelled block: the pool's is the one.
    assert_eq!(kernel_route(&nodes[0].ns, &block(2)), "");
    let pod = nodes[1].add_pod("pool-b", &[]);
    let host = nodes[0].ns.name().to_string();
    assert!(
        ping_until_reply(&host, &pod.ip, Duration::from_secs(10)),
        "node 1's host did not reach pod {} on node 2 through {pool:?}; counters: {:#}",
        pod.ip,
        nodes[0].counters()
    );
    let via = nodes[0]
        .ns
        .exec(&["ip", "route", "get", &pod.ip])
        .expect_ok()
        .stdout;
    assert!(
        pool.split_whitespace()
            .zip(pool.split_whitespace().skip(1))
            .any(|(k, dev)| k == "dev" && via.contains(&format!("dev {dev} "))),
        "the host's route to {} ({via:?}) is not the pool's ({pool:?})",
        pod.ip
    );
    say(&format!(
        "node 1: {pool}; host -> pod {} on node 2 through it",
        pod.ip
    ));
    // A graceful stop (the default) keeps the pool's route. Its device
    // may have lost its carrier by the time the route is read (the kernel
    // then adds `linkdown`): the route itself must be the same.
    nodes[0].stop_daemon("TERM");
    let kept = kernel_route(&nodes[0].ns, POOL).replace(" linkdown", "");
    assert_eq!(kept, pool.replace(" linkdown", ""));
}

#[test]
fn bgp_per_pool_keeps_per_block_kernel_routes_for_directly_routed_blocks() {
    if !require(
        "bgp_per_pool_keeps_per_block_kernel_routes_for_directly_routed_blocks",
        &["ping"],
    ) {
        return;
    }
    let (_sw, mut nodes) = two_nodes(208, "never");
    let _logs: Vec<LogOnPanic> = nodes.iter().map(|n| LogOnPanic(n.log.clone())).collect();
    wait_pool_route(&nodes[0].ns);
    // The directly routed block keeps its own, more specific route.
    let own = wait_learned_kernel_route(&nodes[0].ns, &block(2), &ip(208, 2), "77");
    let pod = nodes[1].add_pod("direct-b", &[]);
    let host = nodes[0].ns.name().to_string();
    assert!(
        ping_until_reply(&host, &pod.ip, Duration::from_secs(10)),
        "node 1's host did not reach pod {} on node 2 via {own:?}",
        pod.ip
    );
    let via = nodes[0]
        .ns
        .exec(&["ip", "route", "get", &pod.ip])
        .expect_ok()
        .stdout;
    assert!(
        via.contains(&format!("via {} ", ip(208, 2))),
        "the host's route to {} ({via:?}) is not the block's own ({own:?})",
        pod.ip
    );
    say(&format!("node 1: {own}; host -> pod {} directly", pod.ip));
    nodes[0].stop_daemon("TERM");
}

#[test]
fn bgp_per_pool_a_learned_pool_prefix_keeps_the_pools_route() {
    if !require(
        "bgp_per_pool_a_learned_pool_prefix_keeps_the_pools_route",
        &["gobgpd", "gobgp", "ping"],
    ) {
        return;
    }
    const NODE: &str = "10.209.0.1";
    const PEER: &str = "10.209.0.2";
    const PEER_AS: u32 = 64513;
    const PEER_POOL: &str = "10.250.0.0/16";
    // Per-pool is the default: no kernel_routes key.
    let bgp = bgp_section(
        NODE_AS,
        "graceful_restart = false\nimport_pools = [\"10.244.0.0/16\", \"10.250.0.0/16\"]",
        &[PeerCfg::new(PEER, PEER_AS)],
    );
    let (peer_ns, node) = node_and_peer("kpool", NODE, &block(1), PEER, &bgp);
    let _log = LogOnPanic(node.log.clone());
    let g = Gobgp::start(&peer_ns, PEER, PEER_AS, NODE, NODE_AS);
    g.cli(&["global", "rib", "add", PEER_POOL, "-a", "ipv4"])
        .expect_ok();
    wait_established(&node, PEER, UP);
    assert!(
        wait_fib(&node, PEER_POOL, Some(PEER), Duration::from_secs(10)),
        "{PEER_POOL} not learned: {}",
        node.ctl_table(&["bgp", "rib"])
    );
    let both = |text: &str| {
        let covering = text
            .lines()
            .any(|l| l.contains(" dev ") && !l.contains(" via ") && l.contains("metric 1024"));
        let learned = text
            .lines()
            .any(|l| l.contains(&format!("via {PEER} ")) && l.contains("proto 77"));
        (covering, learned)
    };
    assert!(
        wait_until(Duration::from_secs(10), || both(&kernel_route(
            &node.ns, PEER_POOL
        )) == (true, true)),
        "not both the pool's and the learned route: {:?}",
        kernel_route(&node.ns, PEER_POOL)
    );
    let get = |addr: &str| {
        node.ns
            .exec(&["ip", "route", "get", addr])
            .expect_ok()
            .stdout
    };
    assert!(
        get("10.250.9.9").contains(&format!("via {PEER} ")),
        "the learned route does not win: {}",
        get("10.250.9.9")
    );
    say(&format!(
        "node: {}",
        kernel_route(&node.ns, PEER_POOL).replace('\n', "; ")
    ));
    // Withdrawn: the learned route goes, the pool's stays.
    g.cli(&["global", "rib", "del", PEER_POOL, "-a", "ipv4"])
        .expect_ok();
    assert!(wait_fib(&node, PEER_POOL, None, Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(10), || both(&kernel_route(
            &node.ns, PEER_POOL
        )) == (true, false)),
        "after the withdrawal: {:?}",
        kernel_route(&node.ns, PEER_POOL)
    );
    // The host's traffic to an address of the pool no block covers: the
    // router refuses it by the pool's Unreachable FIB entry (`no_route`,
    // an ICMP error sent), not as `hairpin`. The host's own kernel does
    // not show that error to ping: its source is the node's address,
    // which the host holds itself (pods do see it: the interop tests'
    // `assert_pod_cut_off`).
    let before = node.counters();
    let p = ping(
        node.ns.name(),
        "10.250.9.9",
        &["-c", "2", "-i", "0.3", "-W", "1"],
    );
    let after = node.counters();
    assert_eq!(p.received, 0, "the host's ping into the pool: {}", p.text);
    assert!(
        delta(&before, &after, "/drops/no_route") >= 2
            && delta(&before, &after, "/icmp_sent") >= 2
            && delta(&before, &after, "/drops/hairpin") == 0,
        "not refused as no_route with an ICMP error: {after:#}"
    );
    say(&format!(
        "host -> 10.250.9.9 (no block): no_route +{}, icmp_sent +{}",
        delta(&before, &after, "/drops/no_route"),
        delta(&before, &after, "/icmp_sent")
    ));
}
