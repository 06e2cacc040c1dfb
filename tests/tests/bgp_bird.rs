//! podrouterd and BIRD 2 (what Calico runs) over iBGP and eBGP: both reach
//! Established, each learns the other's /26 and a pod behind podrouterd
//! pings a pod-like address in BIRD's block over the learned routes
//! (routed directly; BIRD installs ours in its kernel), withdraws
//! propagate both ways and cut the pod off, a killed or frozen BIRD's
//! routes leave the FIB within the hold time, graceful restart keeps them
//! (and the pod's way) across a BIRD restart and across our own (the
//! learned blocks' kernel routes stay, and the ones BIRD stopped
//! announcing meanwhile go at its End-of-RIB), and TCP MD5 works.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const NODE: &str = "10.200.0.1";
const PEER: &str = "10.200.0.2";
const OUR_BLOCK: &str = "10.244.1.0/26";
const BIRD_BLOCK: &str = "10.244.2.0/26";
const UP: Duration = Duration::from_secs(20);

/// podrouterd's node and BIRD's on one segment (see [`node_and_peer`]),
/// a pod behind podrouterd and BIRD's pod-like address `target`. Fields
/// drop in order: the node, BIRD, then BIRD's namespace.
struct World {
    node: Node,
    bird: Bird,
    pod: Pod,
    target: String,
    peer_ns: Netns,
}

fn world(peer_as: u32, node_extra: &str, peer_extra: &str, bird_extra: &str) -> World {
    let bgp = bgp_section(
        NODE_AS,
        node_extra,
        &[PeerCfg::new(PEER, peer_as).with(peer_extra)],
    );
    let (peer_ns, mut node) = node_and_peer("bird", NODE, OUR_BLOCK, PEER, &bgp);
    let pod = node.add_pod("bird-pod", &[]);
    let target = add_pod_like(&peer_ns, BIRD_BLOCK);
    let bird = Bird::start(
        &peer_ns,
        &bird_conf(PEER, peer_as, BIRD_BLOCK, NODE, NODE_AS, bird_extra),
    );
    World {
        node,
        bird,
        pod,
        target,
        peer_ns,
    }
}

/// The pod reaches BIRD's pod-like address over the routes each side
/// learned: BIRD's block in podrouterd's FIB and node kernel, our block in
/// BIRD's namespace's kernel as BIRD installed it.
fn pod_reaches_bird(w: &World) {
    let r = wait_learned_kernel_route(&w.peer_ns, OUR_BLOCK, NODE, "bird");
    say(&format!("BIRD's kernel route for our block: {r}"));
    assert_pod_reaches(&w.node, &w.pod, BIRD_BLOCK, PEER, &w.target);
}

fn learn_both_ways(w: &World) {
    wait_established(&w.node, PEER, UP);
    assert!(
        wait_fib(&w.node, BIRD_BLOCK, Some(PEER), Duration::from_secs(10)),
        "podrouterd did not install BIRD's block: {}",
        w.node.ctl_table(&["bgp", "rib"])
    );
    assert!(
        wait_until(Duration::from_secs(10), || w
            .bird
            .has_route(OUR_BLOCK, NODE)),
        "BIRD did not learn our block: {}",
        w.bird.birdc("show route all")
    );
    assert!(w.bird.protocol_established("node"));
    let table = w.node.ctl_table(&["bgp", "peers"]).expect_ok();
    say(&format!("podrouterctl bgp peers:\n{}", table.stdout));
    let rib = w.node.ctl_table(&["bgp", "rib"]).expect_ok();
    say(&format!("podrouterctl bgp rib:\n{}", rib.stdout));
    say(&format!(
        "birdc show route:\n{}",
        w.bird.birdc("show route").stdout
    ));
    pod_reaches_bird(w);
}

#[test]
fn bgp_bird_ibgp_learn_withdraw_and_peer_death() {
    if !require(
        "bgp_bird_ibgp_learn_withdraw_and_peer_death",
        &["bird", "birdc", "ping"],
    ) {
        return;
    }
    let mut w = world(NODE_AS, "graceful_restart = false", "", "");
    let _log = LogOnPanic(w.node.log.clone());
    learn_both_ways(&w);
    let p = &peers(&w.node)[0];
    assert_eq!(p["kind"], "ibgp");
    assert_eq!(p["hold_time"], HOLD);
    assert_eq!(p["prefixes_accepted"], 1);

    // Withdraw on BIRD's side: the route, and with it the pod's way to
    // BIRD's pod-like address, goes; it comes back with the route.
    w.bird.birdc("disable pods").expect_ok();
    assert!(
        wait_fib(&w.node, BIRD_BLOCK, None, Duration::from_secs(5)),
        "withdraw from BIRD did not reach the FIB"
    );
    assert_pod_cut_off(&w.node, &w.pod, BIRD_BLOCK, &w.target);
    w.bird.birdc("enable pods").expect_ok();
    assert!(wait_fib(
        &w.node,
        BIRD_BLOCK,
        Some(PEER),
        Duration::from_secs(5)
    ));
    pod_reaches_bird(&w);

    // Freeze BIRD: no FIN, no keepalives. The hold timer must take the
    // routes out within the hold time (plus polling slack).
    let pid = w.bird.bg.as_ref().unwrap().pid();
    signal(pid, "STOP");
    let gone = time_until(Duration::from_secs(u64::from(HOLD) + 3), || {
        fib_via(&w.node, BIRD_BLOCK).is_none()
    });
    signal(pid, "CONT");
    let gone = gone.expect("frozen BIRD's route outlived the hold time");
    say(&format!(
        "frozen peer: route withdrawn after {gone:?} (hold time {HOLD} s)"
    ));
    assert!(gone <= Duration::from_secs(u64::from(HOLD) + 1), "{gone:?}");
    let p = &peers(&w.node)[0];
    assert!(
        p["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("hold timer"),
        "{p:#}"
    );

    // BIRD resumes, the session comes back, then SIGKILL: the kernel
    // resets the connection and the routes go at once.
    wait_established(&w.node, PEER, UP);
    assert!(wait_fib(
        &w.node,
        BIRD_BLOCK,
        Some(PEER),
        Duration::from_secs(10)
    ));
    w.bird.kill();
    let gone = time_until(Duration::from_secs(u64::from(HOLD) + 3), || {
        fib_via(&w.node, BIRD_BLOCK).is_none()
    })
    .expect("killed BIRD's route outlived the hold time");
    say(&format!("killed peer: route withdrawn after {gone:?}"));
    // BIRD's kernel route for our block outlives its SIGKILL: only our
    // side's withdrawal cuts the pod off.
    assert_pod_cut_off(&w.node, &w.pod, BIRD_BLOCK, &w.target);

    // Our side withdraws: BIRD back, then podrouterd stops (Cease, no
    // graceful restart configured) and BIRD drops our block.
    w.bird.restart();
    wait_established(&w.node, PEER, UP);
    assert!(wait_until(Duration::from_secs(10), || w
        .bird
        .has_route(OUR_BLOCK, NODE)));
    w.node.stop_daemon("TERM");
    assert!(
        wait_until(Duration::from_secs(5), || !w
            .bird
            .has_route(OUR_BLOCK, NODE)),
        "BIRD kept our block after our Cease"
    );
    // ... and takes it out of its kernel.
    wait_no_kernel_route(&w.peer_ns, OUR_BLOCK);
    let log = w.bird.log();
    let _ = log;
    w.node.start_daemon();
}

#[test]
fn bgp_bird_ebgp_with_md5() {
    if !require("bgp_bird_ebgp_with_md5", &["bird", "birdc", "ping"]) {
        return;
    }
    let w = world(
        64600,
        "",
        "password = \"podrouter-md5\"",
        "password \"podrouter-md5\";",
    );
    let _log = LogOnPanic(w.node.log.clone());
    learn_both_ways(&w);
    let p = &peers(&w.node)[0];
    assert_eq!(p["kind"], "ebgp");
    assert_eq!(p["md5"], true);
    // One session all along: BIRD did not drop the first one. It used to,
    // about 100 ms after Established, when our connect attempt from before
    // BIRD listened (its SYN retransmitted because TCP MD5 drops BIRD's
    // unsigned reset) reached BIRD after the session had come up on BIRD's
    // own connection ("Neighbor graceful restart detected").
    assert_eq!(p["established_count"], 1, "session flapped: {p:#}");
    // BIRD sees our AS in the path.
    let o = w.bird.birdc(&format!("show route for {OUR_BLOCK} all"));
    assert!(o.stdout.contains(&format!("BGP.as_path: {NODE_AS}")), "{o}");
}

#[test]
fn bgp_bird_md5_mismatch_never_establishes() {
    if !require(
        "bgp_bird_md5_mismatch_never_establishes",
        &["bird", "birdc", "ping"],
    ) {
        return;
    }
    let w = world(64600, "", "password = \"right\"", "password \"wrong\";");
    let _log = LogOnPanic(w.node.log.clone());
    std::thread::sleep(Duration::from_secs(5));
    assert_ne!(peer_state(&w.node, PEER), "Established");
    assert!(fib_via(&w.node, BIRD_BLOCK).is_none());
}

#[test]
fn bgp_bird_graceful_restart_keeps_routes_across_a_restart() {
    if !require(
        "bgp_bird_graceful_restart_keeps_routes_across_a_restart",
        &["bird", "birdc", "ping"],
    ) {
        return;
    }
    let mut w = world(NODE_AS, "restart_time = 30", "", "graceful restart on;");
    let _log = LogOnPanic(w.node.log.clone());
    learn_both_ways(&w);
    let p = &peers(&w.node)[0];
    assert!(
        p["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "graceful-restart"),
        "{p:#}"
    );
    // BIRD dies without a NOTIFICATION: we are its graceful restart helper.
    w.bird.kill();
    std::thread::sleep(Duration::from_secs(u64::from(HOLD) + 2));
    assert_eq!(
        fib_via(&w.node, BIRD_BLOCK).as_deref(),
        Some(PEER),
        "route not kept during the peer's restart"
    );
    let rib = w.node.ctl(&["bgp", "rib"]);
    assert!(
        rib["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["prefix"] == BIRD_BLOCK && r["stale"] == true),
        "{rib:#}"
    );
    assert_eq!(peers(&w.node)[0]["prefixes_stale"], 1);
    // The stale route still carries the pod's traffic (BIRD's kernel
    // route for our block outlives its SIGKILL).
    assert_pod_reaches(&w.node, &w.pod, BIRD_BLOCK, PEER, &w.target);
    // BIRD comes back: the route is refreshed and no longer stale.
    w.bird.restart();
    wait_established(&w.node, PEER, UP);
    assert!(
        wait_until(Duration::from_secs(10), || peers(&w.node)[0]
            ["prefixes_stale"]
            == 0),
        "stale routes not cleared after End-of-RIB: {:#?}",
        peers(&w.node)
    );
    // A BIRD started afresh does not preserve forwarding (F bit clear), so
    // its stale route may go before its UPDATE re-installs it: wait.
    assert!(
        wait_fib(&w.node, BIRD_BLOCK, Some(PEER), Duration::from_secs(10)),
        "BIRD's block not back in the FIB: {}",
        w.node.ctl_table(&["bgp", "rib"])
    );
}

/// Our own graceful restart (RFC 4724, restarting speaker): with an IPIP
/// uplink, BIRD's blocks have kernel routes (protocol 77). SIGTERM keeps
/// them; BIRD withdraws one block while we are down; after our start with
/// the restart bit, the re-announced block's route never leaves the
/// kernel and the withdrawn one's goes at BIRD's End-of-RIB, well before
/// the restart time. With `kernel_routes = "per-block"`: the blocks here
/// are tunnelled, which per-pool (the default) covers with the pool's
/// route instead (`bgp_kernel_routes.rs` has its graceful stop).
#[test]
fn bgp_bird_our_graceful_restart_keeps_learned_kernel_routes() {
    if !require(
        "bgp_bird_our_graceful_restart_keeps_learned_kernel_routes",
        &["bird", "birdc"],
    ) {
        return;
    }
    const GONE_BLOCK: &str = "10.244.3.0/26";
    const RESTART: u64 = 60;
    let peer_ns = Netns::new("bird");
    let mut node = start_plain_node(NODE, OUR_BLOCK);
    let _log = LogOnPanic(node.log.clone());
    link_to_peer(&node, NODE, &peer_ns, PEER);
    let bgp = bgp_section(
        NODE_AS,
        &format!("restart_time = {RESTART}\nkernel_routes = \"per-block\""),
        &[PeerCfg::new(PEER, NODE_AS)],
    );
    enable_bgp(&mut node, &bgp, Some("up0"));
    let conf = bird_conf(
        PEER,
        NODE_AS,
        BIRD_BLOCK,
        NODE,
        NODE_AS,
        "graceful restart on;",
    )
    .replace(
        "protocol static pods {",
        &format!("protocol static gone {{ ipv4; route {GONE_BLOCK} blackhole; }}\nprotocol static pods {{"),
    )
    .replace(
        "export where proto = \"pods\";",
        "export where proto = \"pods\" || proto = \"gone\";",
    );
    let bird = Bird::start(&peer_ns, &conf);
    let kernel = |node: &Node| {
        node.exec(&["ip", "route", "show", "proto", "77"])
            .expect_ok()
            .stdout
    };
    let has = |text: &str, prefix: &str| text.lines().any(|l| l.starts_with(prefix));
    wait_established(&node, PEER, UP);
    for b in [BIRD_BLOCK, GONE_BLOCK] {
        assert!(
            wait_fib(&node, b, Some(PEER), Duration::from_secs(10)),
            "no {b} in the FIB: {}",
            node.ctl_table(&["bgp", "rib"])
        );
        assert!(
            wait_until(Duration::from_secs(5), || has(&kernel(&node), b)),
            "no kernel route for {b}: {}",
            kernel(&node)
        );
    }
    assert!(peers(&node)[0]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "graceful-restart"));
    say(&format!(
        "kernel routes before the stop:\n{}",
        kernel(&node)
    ));

    // Graceful stop: the learned blocks' kernel routes stay.
    let status = node.stop_daemon("TERM");
    assert!(status.success(), "{status}");
    let k = kernel(&node);
    assert!(
        has(&k, BIRD_BLOCK) && has(&k, GONE_BLOCK),
        "graceful stop removed learned kernel routes: {k}"
    );
    // While we are down BIRD stops announcing one block.
    bird.birdc("disable gone").expect_ok();
    std::thread::sleep(Duration::from_secs(1));
    assert!(has(&kernel(&node), GONE_BLOCK));

    node.start_daemon();
    let started = std::time::Instant::now();
    // Until the stale one is swept, the re-learned one must never vanish.
    let mut flapped = false;
    let swept = wait_until(Duration::from_secs(20), || {
        let k = kernel(&node);
        flapped |= !has(&k, BIRD_BLOCK);
        !has(&k, GONE_BLOCK)
    });
    let log = node.daemon_log();
    assert!(
        swept,
        "the block BIRD no longer announces kept its kernel route: {}\n{log}",
        kernel(&node)
    );
    assert!(
        started.elapsed() < Duration::from_secs(RESTART / 2),
        "swept by the timer, not at End-of-RIB"
    );
    assert!(
        !flapped,
        "the re-learned block's kernel route flapped:\n{log}"
    );
    assert!(
        log.contains("announcing the restart bit"),
        "no restart bit:\n{log}"
    );
    assert!(
        log.contains("every graceful-restart peer sent End-of-RIB"),
        "sweep not triggered by End-of-RIB:\n{log}"
    );
    let k = kernel(&node);
    assert!(has(&k, BIRD_BLOCK), "{k}");
    assert_eq!(fib_via(&node, BIRD_BLOCK).as_deref(), Some(PEER));
    assert_eq!(fib_via(&node, GONE_BLOCK), None);
    // BIRD kept our block through our restart and has it now.
    assert!(bird.has_route(OUR_BLOCK, NODE));
    say(&format!("kernel routes after the restart:\n{k}"));
}
