//! podrouterd and FRR (bgpd with zebra) over eBGP: Established, each
//! learns the other's /26, a pod behind podrouterd pings a pod-like
//! address in FRR's block over the learned routes (routed directly; zebra
//! installs ours in FRR's kernel), withdraws both ways and cut the pod off,
//! a killed bgpd's routes leave the FIB within the hold time.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const NODE: &str = "10.202.0.1";
const PEER: &str = "10.202.0.2";
const PEER_AS: u32 = 64514;
const OUR_BLOCK: &str = "10.244.1.0/26";
const FRR_BLOCK: &str = "10.244.4.0/26";
const UP: Duration = Duration::from_secs(30);

#[test]
fn bgp_frr_ebgp_learn_withdraw_and_peer_death() {
    if !require(
        "bgp_frr_ebgp_learn_withdraw_and_peer_death",
        &["vtysh", "ping", "/usr/lib/frr/bgpd", "/usr/lib/frr/zebra"],
    ) {
        return;
    }
    let bgp = bgp_section(
        NODE_AS,
        "graceful_restart = false",
        &[PeerCfg::new(PEER, PEER_AS)],
    );
    let (peer_ns, mut node) = node_and_peer("frr", NODE, OUR_BLOCK, PEER, &bgp);
    let _log = LogOnPanic(node.log.clone());
    let pod = node.add_pod("frr-pod", &[]);
    let target = add_pod_like(&peer_ns, FRR_BLOCK);
    let mut frr = Frr::start(&peer_ns, PEER, PEER_AS, FRR_BLOCK, NODE, NODE_AS);

    wait_established(&node, PEER, UP);
    assert!(wait_until(Duration::from_secs(10), || frr.established(NODE)));
    assert!(
        wait_fib(&node, FRR_BLOCK, Some(PEER), Duration::from_secs(10)),
        "podrouterd did not install FRR's block: {}",
        node.ctl_table(&["bgp", "rib"])
    );
    assert!(
        wait_until(Duration::from_secs(10), || frr
            .route_next_hop(OUR_BLOCK)
            .as_deref()
            == Some(NODE)),
        "FRR did not learn our block: {}",
        frr.vtysh(&["show bgp ipv4 unicast"])
    );
    say(&format!(
        "vtysh show bgp ipv4 unicast summary:\n{}\npodrouterctl bgp peers:\n{}",
        frr.vtysh(&["show bgp ipv4 unicast summary"]).stdout,
        node.ctl_table(&["bgp", "peers"]).stdout
    ));
    // The pod pings FRR's pod-like address; the replies take the route
    // zebra installed for our block.
    let pod_reaches_frr = || {
        let r = wait_learned_kernel_route(&peer_ns, OUR_BLOCK, NODE, "bgp");
        say(&format!("FRR's kernel route for our block: {r}"));
        assert_pod_reaches(&node, &pod, FRR_BLOCK, PEER, &target);
    };
    pod_reaches_frr();

    // Withdraw on FRR's side: the pod is cut off until it is back.
    frr.vtysh(&[
        "configure terminal",
        &format!("router bgp {PEER_AS}"),
        "address-family ipv4 unicast",
        &format!("no network {FRR_BLOCK}"),
    ])
    .expect_ok();
    assert!(wait_fib(&node, FRR_BLOCK, None, Duration::from_secs(5)));
    assert_pod_cut_off(&node, &pod, FRR_BLOCK, &target);
    frr.vtysh(&[
        "configure terminal",
        &format!("router bgp {PEER_AS}"),
        "address-family ipv4 unicast",
        &format!("network {FRR_BLOCK}"),
    ])
    .expect_ok();
    assert!(wait_fib(
        &node,
        FRR_BLOCK,
        Some(PEER),
        Duration::from_secs(5)
    ));
    pod_reaches_frr();

    // Our withdraw: podrouterd stops with a Cease; FRR drops our block,
    // and zebra its kernel route.
    node.stop_daemon("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || frr
            .route_next_hop(OUR_BLOCK)
            .is_none()),
        "FRR kept our block after our Cease"
    );
    wait_no_kernel_route(&peer_ns, OUR_BLOCK);
    node.start_daemon();
    wait_established(&node, PEER, UP);
    assert!(wait_fib(
        &node,
        FRR_BLOCK,
        Some(PEER),
        Duration::from_secs(10)
    ));

    // Killed bgpd: its route leaves the FIB within the hold time.
    let mut bg = frr.bg.take().unwrap();
    signal(bg.pid(), "KILL");
    let _ = bg.child.wait();
    let gone = time_until(Duration::from_secs(u64::from(HOLD) + 3), || {
        fib_via(&node, FRR_BLOCK).is_none()
    })
    .expect("killed bgpd's route outlived the hold time");
    say(&format!("killed bgpd: route withdrawn after {gone:?}"));
    assert_pod_cut_off(&node, &pod, FRR_BLOCK, &target);
}
