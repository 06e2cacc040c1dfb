//! podrouterd and FRR bgpd over eBGP: Established, each learns the other's
//! /26, withdraws both ways, a killed bgpd's routes leave the FIB within
//! the hold time.
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
    if !require("bgp_frr_ebgp_learn_withdraw_and_peer_death", &["vtysh"]) {
        return;
    }
    if !std::path::Path::new("/usr/lib/frr/bgpd").exists() {
        say("SKIP bgp_frr_ebgp_learn_withdraw_and_peer_death: /usr/lib/frr/bgpd missing (apt-get install frr)");
        assert!(std::env::var("PODROUTER_E2E_REQUIRE").as_deref() != Ok("1"));
        return;
    }
    let peer_ns = Netns::new("frr");
    let bgp = bgp_section(
        NODE_AS,
        "graceful_restart = false",
        &[PeerCfg::new(PEER, PEER_AS)],
    );
    let mut node = start_bgp_node(NODE, OUR_BLOCK, &bgp);
    let _log = LogOnPanic(node.log.clone());
    link(
        &node.ns,
        "up0",
        &format!("{NODE}/24"),
        &peer_ns,
        "eth0",
        &format!("{PEER}/24"),
    );
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

    // Withdraw on FRR's side.
    frr.vtysh(&[
        "configure terminal",
        &format!("router bgp {PEER_AS}"),
        "address-family ipv4 unicast",
        &format!("no network {FRR_BLOCK}"),
    ])
    .expect_ok();
    assert!(wait_fib(&node, FRR_BLOCK, None, Duration::from_secs(5)));
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

    // Our withdraw: podrouterd stops with a Cease; FRR drops our block.
    node.stop_daemon("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || frr
            .route_next_hop(OUR_BLOCK)
            .is_none()),
        "FRR kept our block after our Cease"
    );
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
}
