//! podrouterd and GoBGP (what Calico VPP embeds) over eBGP: Established,
//! each learns the other's /26, a pod behind podrouterd pings a pod-like
//! address in GoBGP's block (routed directly; the return route copied by
//! hand from what gobgpd learned, since gobgpd has no FIB integration),
//! withdraws both ways and cut the pod off, a killed or frozen gobgpd's
//! routes leave the FIB within the hold time.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const NODE: &str = "10.201.0.1";
const PEER: &str = "10.201.0.2";
const PEER_AS: u32 = 64513;
const OUR_BLOCK: &str = "10.244.1.0/26";
const GOBGP_BLOCK: &str = "10.244.3.0/26";
const UP: Duration = Duration::from_secs(20);

#[test]
fn bgp_gobgp_ebgp_learn_withdraw_and_peer_death() {
    if !require(
        "bgp_gobgp_ebgp_learn_withdraw_and_peer_death",
        &["gobgpd", "gobgp", "ping"],
    ) {
        return;
    }
    let bgp = bgp_section(
        NODE_AS,
        "graceful_restart = false",
        &[PeerCfg::new(PEER, PEER_AS)],
    );
    let (peer_ns, mut node) = node_and_peer("gobgp", NODE, OUR_BLOCK, PEER, &bgp);
    let _log = LogOnPanic(node.log.clone());
    let pod = node.add_pod("gobgp-pod", &[]);
    let target = add_pod_like(&peer_ns, GOBGP_BLOCK);
    let mut g = Gobgp::start(&peer_ns, PEER, PEER_AS, NODE, NODE_AS);
    g.cli(&["global", "rib", "add", GOBGP_BLOCK, "-a", "ipv4"])
        .expect_ok();

    wait_established(&node, PEER, UP);
    assert!(wait_until(Duration::from_secs(10), || g.established(NODE)));
    assert!(
        wait_fib(&node, GOBGP_BLOCK, Some(PEER), Duration::from_secs(10)),
        "podrouterd did not install GoBGP's block: {}",
        node.ctl_table(&["bgp", "rib"])
    );
    assert!(
        wait_until(Duration::from_secs(10), || g
            .route_next_hop(OUR_BLOCK)
            .as_deref()
            == Some(NODE)),
        "GoBGP did not learn our block: {}",
        g.cli(&["global", "rib", "-a", "ipv4"])
    );
    say(&format!(
        "gobgp neighbor:\n{}\npodrouterctl bgp peers:\n{}",
        g.cli(&["neighbor"]).stdout,
        node.ctl_table(&["bgp", "peers"]).stdout
    ));
    let p = &peers(&node)[0];
    assert_eq!(p["kind"], "ebgp");
    // The daemon's own convergence timing: Established to the FIB batch
    // that installed GoBGP's block, within the session's life so far.
    let ms = p["established_to_last_install_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no established_to_last_install_ms: {p}"));
    let alive_ms = (p["since_secs"].as_u64().unwrap() + 1) as f64 * 1e3;
    assert!((0.0..alive_ms).contains(&ms), "{ms} ms, {p}");
    // The node kernel's routes follow the FIB batch: once the kernel
    // thread has caught up, its figure is no earlier than the FIB's.
    assert!(
        wait_until(Duration::from_secs(10), || peers(&node)[0]
            ["established_to_kernel_synced_ms"]
            .is_f64()),
        "the kernel routes never caught up: {p}"
    );
    let p = &peers(&node)[0];
    let fib_ms = p["established_to_last_install_ms"].as_f64().unwrap();
    let kernel_ms = p["established_to_kernel_synced_ms"].as_f64().unwrap();
    assert!(
        (fib_ms..alive_ms + 10e3).contains(&kernel_ms),
        "kernel {kernel_ms} ms before the FIB {fib_ms} ms: {p}"
    );
    // Established by the daemon's wall clock: within the session's life.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3;
    let est_ms = p["established_unix_ms"].as_f64().unwrap();
    let up_ms = (p["since_secs"].as_u64().unwrap() + 2) as f64 * 1e3;
    assert!(
        (now_ms - up_ms..=now_ms).contains(&est_ms),
        "established_unix_ms {est_ms} not within {up_ms} ms before {now_ms}: {p}"
    );
    let rib = node.ctl(&["bgp", "rib"]);
    let r = rib["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == GOBGP_BLOCK)
        .cloned()
        .unwrap();
    assert_eq!(r["as_path"], PEER_AS.to_string());

    // The pod pings GoBGP's pod-like address. gobgpd has no FIB
    // integration (no zebra here), so the return route is added by hand,
    // with the next hop gobgpd learned for our block.
    let learned = g.route_next_hop(OUR_BLOCK).expect("GoBGP lost our block");
    peer_ns
        .exec(&["ip", "route", "add", OUR_BLOCK, "via", &learned])
        .expect_ok();
    assert_pod_reaches(&node, &pod, GOBGP_BLOCK, PEER, &target);

    // Withdraw on GoBGP's side: the pod is cut off until it is back.
    g.cli(&["global", "rib", "del", GOBGP_BLOCK, "-a", "ipv4"])
        .expect_ok();
    assert!(wait_fib(&node, GOBGP_BLOCK, None, Duration::from_secs(5)));
    assert_pod_cut_off(&node, &pod, GOBGP_BLOCK, &target);
    g.cli(&["global", "rib", "add", GOBGP_BLOCK, "-a", "ipv4"])
        .expect_ok();
    assert!(wait_fib(
        &node,
        GOBGP_BLOCK,
        Some(PEER),
        Duration::from_secs(5)
    ));
    assert_pod_reaches(&node, &pod, GOBGP_BLOCK, PEER, &target);

    // Frozen gobgpd: the hold timer withdraws.
    let pid = g.bg.as_ref().unwrap().pid();
    signal(pid, "STOP");
    let gone = time_until(Duration::from_secs(u64::from(HOLD) + 3), || {
        fib_via(&node, GOBGP_BLOCK).is_none()
    });
    signal(pid, "CONT");
    let gone = gone.expect("frozen gobgpd's route outlived the hold time");
    say(&format!(
        "frozen gobgpd: route withdrawn after {gone:?} (hold {HOLD} s)"
    ));
    assert!(gone <= Duration::from_secs(u64::from(HOLD) + 1));

    // Killed gobgpd.
    wait_established(&node, PEER, UP);
    assert!(wait_fib(
        &node,
        GOBGP_BLOCK,
        Some(PEER),
        Duration::from_secs(10)
    ));
    let mut bg = g.bg.take().unwrap();
    signal(bg.pid(), "KILL");
    let _ = bg.child.wait();
    let gone = time_until(Duration::from_secs(u64::from(HOLD) + 3), || {
        fib_via(&node, GOBGP_BLOCK).is_none()
    })
    .expect("killed gobgpd's route outlived the hold time");
    say(&format!("killed gobgpd: route withdrawn after {gone:?}"));
    assert_pod_cut_off(&node, &pod, GOBGP_BLOCK, &target);

    // Our withdraw: GoBGP back, podrouterd stops, GoBGP drops our block.
    let g = Gobgp::start(&peer_ns, PEER, PEER_AS, NODE, NODE_AS);
    wait_established(&node, PEER, UP);
    assert!(wait_until(Duration::from_secs(10), || g
        .route_next_hop(OUR_BLOCK)
        .is_some()));
    node.stop_daemon("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || g
            .route_next_hop(OUR_BLOCK)
            .is_none()),
        "GoBGP kept our block after our Cease"
    );
    node.start_daemon();
}
