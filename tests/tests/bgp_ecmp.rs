//! ECMP end to end: podrouterd node A (encap always, one pod) learns the
//! same prefix from two BIRD 2 speakers B and C on its underlay segment.
//! A installs both next hops (`podrouterctl routes` shows them), spreads
//! the pod's UDP flows over IPIP to B and to C (counted on the wire with
//! tcpdump: B and C cannot decapsulate, this kernel has no ipip module, so
//! nothing answers), keeps each flow on one of them, and once C's BIRD is
//! killed sends everything to B.
use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const A: &str = "10.205.0.1";
const B: &str = "10.205.0.2";
const C: &str = "10.205.0.3";
const A_BLOCK: &str = "10.244.1.0/26";
const ECMP_BLOCK: &str = "10.250.0.0/24";
const TARGET: &str = "10.250.0.1";
const UP: Duration = Duration::from_secs(30);
/// Distinct source ports (flows) per round.
const FLOWS: u16 = 48;

/// The tools this test needs beyond the daemon (see [`require`]).
fn runnable(test: &str) -> bool {
    require(test, &["bird", "birdc", "tcpdump"])
}

/// The node route for `prefix` in `podrouterctl routes --json`: its `via`
/// and `vias` (empty if the daemon shows none).
fn node_route(node: &Node, prefix: &str) -> Option<(String, Vec<String>)> {
    let routes = node.ctl(&["routes"]);
    routes.as_array()?.iter().find_map(|r| {
        (r["prefix"] == prefix && r["next_hop"] == "node").then(|| {
            let via = r["via"].as_str().unwrap_or_default().to_string();
            let vias = r["vias"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (via, vias)
        })
    })
}

/// Sends one UDP datagram to TARGET:9 from each source port in `ports`,
/// from inside the pod's namespace (twice, 1 ms apart, so a lost first
/// one does not lose the flow).
fn send_flows(pod: &Pod, ports: std::ops::Range<u16>) {
    let path = Path::new(&pod.netns_path).to_path_buf();
    podrouter_control::netns::run_in_netns(&path, move || {
        for round in 0..2 {
            for port in ports.clone() {
                let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind in the pod");
                s.send_to(&[round], (TARGET, 9)).expect("send in the pod");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .expect("enter the pod's namespace");
}

/// Sends warm-up datagrams from the pod until the router forwards them
/// (the pod has resolved its gateway and the path works), so the counted
/// rounds measure spreading, not start-up.
fn warm_up(node: &Node, pod: &Pod) {
    let ok = wait_until(Duration::from_secs(10), || {
        let before = num(&node.counters(), "/tx");
        send_flows(pod, 30000..30002);
        wait_until(Duration::from_secs(1), || {
            num(&node.counters(), "/tx") >= before + 2
        })
    });
    assert!(
        ok,
        "the pod's warm-up datagrams were never forwarded: {:#}\npod: {}\n{}",
        node.counters(),
        pod.exec(&["ip", "-s", "link"]),
        pod.exec(&["ip", "neigh"])
    );
}

/// From `tcpdump -n -v` text of IPIP packets: source port of each inner
/// UDP datagram to TARGET -> the outer destinations it was sent to.
fn flows_by_node(text: &str) -> BTreeMap<u16, BTreeSet<String>> {
    let mut out: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    let mut outer_dst: Option<String> = None;
    let to_target = format!(" > {TARGET}.9:");
    for line in text.lines().map(str::trim) {
        // "10.205.0.1 > 10.205.0.2: IP (tos ...proto UDP (17)...)"
        if let Some(rest) = line.strip_prefix(&format!("{A} > ")) {
            if let Some((dst, tail)) = rest.split_once(": ") {
                if tail.starts_with("IP ") {
                    outer_dst = Some(dst.to_string());
                    continue;
                }
            }
        }
        // "10.244.1.2.40001 > 10.250.0.1.9: UDP, length 1"
        if let (Some(dst), Some(i)) = (&outer_dst, line.find(&to_target)) {
            let src = &line[..i];
            if let Some(port) = src.rsplit('.').next().and_then(|p| p.parse().ok()) {
                out.entry(port).or_default().insert(dst.clone());
            }
            outer_dst = None;
        }
    }
    out
}

/// Runs `send` while capturing IPIP on A's underlay interface; returns the
/// flows seen per outer destination.
fn capture_flows(node: &Node, send: impl FnOnce()) -> BTreeMap<u16, BTreeSet<String>> {
    let cap = Capture::start(node.ns.name(), "eth0", "ip proto 4");
    send();
    let text = cap.stop();
    let flows = flows_by_node(&text);
    say(&format!(
        "captured {} IPIP flows: {}",
        flows.len(),
        count_by_node(&flows)
            .iter()
            .map(|(n, c)| format!("{c} to {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    flows
}

fn count_by_node(flows: &BTreeMap<u16, BTreeSet<String>>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for nodes in flows.values() {
        for n in nodes {
            *c.entry(n.clone()).or_insert(0) += 1;
        }
    }
    c
}

/// A (with `encap`) and the BIRD speakers B and C on one segment, both
/// announcing ECMP_BLOCK, and A's route for it via both. Fields drop in
/// order: the speakers, then A, then the namespaces.
struct World {
    _bird_b: Bird,
    bird_c: Bird,
    node: Node,
    b_ns: Netns,
    c_ns: Netns,
    _sw: Switch,
}

fn world(encap: &str) -> World {
    let mut sw = Switch::new();
    let mut node = start_plain_node(A, A_BLOCK);
    sw.plug(&node.ns, "eth0", &format!("{A}/24"));
    set_encap(&node, encap);
    // The ECMP block is outside A's default import pool (10.244.0.0/16).
    let bgp = bgp_section(
        NODE_AS,
        "graceful_restart = false\nimport_pools = [\"10.244.0.0/16\", \"10.250.0.0/16\"]",
        &[PeerCfg::new(B, NODE_AS), PeerCfg::new(C, NODE_AS)],
    );
    enable_bgp(&mut node, &bgp, Some("eth0"));
    let (b_ns, c_ns) = (Netns::new("ecmpb"), Netns::new("ecmpc"));
    sw.plug(&b_ns, "eth0", &format!("{B}/24"));
    sw.plug(&c_ns, "eth0", &format!("{C}/24"));
    let bird_b = Bird::start(&b_ns, &bird_conf(B, NODE_AS, ECMP_BLOCK, A, NODE_AS, ""));
    let bird_c = Bird::start(&c_ns, &bird_conf(C, NODE_AS, ECMP_BLOCK, A, NODE_AS, ""));
    wait_established(&node, B, UP);
    wait_established(&node, C, UP);
    // Both next hops are installed: one ECMP route.
    let both = vec![B.to_string(), C.to_string()];
    assert!(
        wait_until(Duration::from_secs(10), || node_route(&node, ECMP_BLOCK)
            .is_some_and(|(_, vias)| vias == both)),
        "{ECMP_BLOCK} not via both {B} and {C}: {:?}\n{}",
        node_route(&node, ECMP_BLOCK),
        node.ctl_table(&["bgp", "rib"])
    );
    World {
        _bird_b: bird_b,
        bird_c,
        node,
        b_ns,
        c_ns,
        _sw: sw,
    }
}

/// Waits until C's death leaves A's route via B only (within the hold
/// time); returns how long it took.
fn wait_only_b(node: &Node) -> Duration {
    let gone = time_until(Duration::from_secs(u64::from(HOLD) + 3), || {
        node_route(node, ECMP_BLOCK).is_some_and(|(via, vias)| via == B && vias == [B])
    })
    .unwrap_or_else(|| {
        panic!(
            "{C} still a next hop after its BIRD died: {:?}\n{}",
            node_route(node, ECMP_BLOCK),
            node.ctl_table(&["bgp", "rib"])
        )
    });
    say(&format!(
        "killed BIRD on {C}: route via {B} only after {gone:?}"
    ));
    gone
}

#[test]
fn bgp_ecmp_spreads_flows_over_two_bird_next_hops() {
    if !runnable("bgp_ecmp_spreads_flows_over_two_bird_next_hops") {
        return;
    }
    let mut w = world("always");
    let _log = LogOnPanic(w.node.log.clone());
    let node = &mut w.node;
    let table = node.ctl_table(&["routes"]).expect_ok().stdout;
    say(&format!("podrouterctl routes:\n{table}"));
    assert!(table.contains(&format!("{B},{C}")), "{table}");
    let rib = node.ctl_table(&["bgp", "rib"]).expect_ok().stdout;
    say(&format!("podrouterctl bgp rib:\n{rib}"));
    assert!(
        rib.lines()
            .any(|l| l.trim_start().starts_with("*>") && l.contains(ECMP_BLOCK))
            && rib
                .lines()
                .any(|l| l.trim_start().starts_with("=>") && l.contains(ECMP_BLOCK)),
        "bgp rib does not show both paths installed:\n{rib}"
    );
    // The node's kernel sends the block into the router (encap always):
    // through the pool's route (per-pool, the default) or the block's
    // own (per-block); either way a protocol-77 route into the host port.
    let kroute = node.exec(&["ip", "route", "get", TARGET]).expect_ok();
    assert!(
        kroute.stdout.contains("dev podrouter0") && !kroute.stdout.contains(" via "),
        "the host's route to {TARGET}: {kroute}"
    );
    let ours = node
        .exec(&["ip", "route", "show", "proto", "77"])
        .expect_ok();
    assert!(
        ours.stdout.lines().any(|l| (l.starts_with("10.250.0.0/16 ")
            || l.starts_with(&format!("{ECMP_BLOCK} ")))
            && l.contains("dev podrouter0")),
        "no protocol-77 route for {ECMP_BLOCK} into the host port: {ours}"
    );

    // The pod's flows spread over B and C, each flow on one node.
    let pod = node.add_pod("ecmp-a", &[]);
    warm_up(node, &pod);
    let flows = capture_flows(node, || send_flows(&pod, 40000..40000 + FLOWS));
    let counts = count_by_node(&flows);
    assert!(
        flows.len() >= usize::from(FLOWS) * 9 / 10,
        "only {} of {FLOWS} flows seen on the wire: {counts:?}",
        flows.len()
    );
    for (port, nodes) in &flows {
        assert_eq!(nodes.len(), 1, "flow from port {port} went to {nodes:?}");
    }
    for n in [B, C] {
        let c = counts.get(n).copied().unwrap_or(0);
        assert!(
            c >= 4,
            "only {c} of {} flows to {n}: {counts:?}",
            flows.len()
        );
    }
    let before = node.counters();

    // C's BIRD dies: only B is left, within the hold time.
    w.bird_c.kill();
    let node = &w.node;
    wait_only_b(node);
    let flows = capture_flows(node, || send_flows(&pod, 41000..41000 + FLOWS));
    let counts = count_by_node(&flows);
    assert!(
        flows.len() >= usize::from(FLOWS) * 9 / 10,
        "only {} of {FLOWS} flows seen after the withdraw: {counts:?}",
        flows.len()
    );
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        vec![B.to_string()],
        "traffic still goes to {C}: {counts:?}"
    );
    // Nothing was dropped for want of a route or an uplink meanwhile.
    let after = node.counters();
    for reason in ["no_route", "no_uplink"] {
        let p = format!("/drops/{reason}");
        assert_eq!(delta(&before, &after, &p), 0, "{reason} drops");
    }
}

/// From `tcpdump -n -v` text of plain UDP to TARGET: the source ports.
fn udp_source_ports(text: &str) -> BTreeSet<u16> {
    let to_target = format!(" > {TARGET}.9:");
    text.lines()
        .filter_map(|l| {
            let i = l.find(&to_target)?;
            l[..i].trim().rsplit('.').next()?.parse().ok()
        })
        .collect()
}

/// Directly routed (encap never): the node kernel's route for the block is
/// a multipath route over B and C (podrouterd hands the pod's packets to
/// it through the host port), which spreads the pod's flows over both with
/// the L4 hash policy; once C's BIRD dies it is a plain route via B.
#[test]
fn bgp_ecmp_directly_routed_gets_a_kernel_multipath_route() {
    if !runnable("bgp_ecmp_directly_routed_gets_a_kernel_multipath_route") {
        return;
    }
    let mut w = world("never");
    let _log = LogOnPanic(w.node.log.clone());
    let kernel_route = |node: &Node| {
        node.exec(&["ip", "route", "show", ECMP_BLOCK, "proto", "77"])
            .expect_ok()
            .stdout
    };
    let multipath = |r: &str| {
        r.contains(&format!("nexthop via {B} ")) && r.contains(&format!("nexthop via {C} "))
    };
    assert!(
        wait_until(Duration::from_secs(5), || multipath(&kernel_route(&w.node))),
        "no kernel multipath route: {}",
        kernel_route(&w.node)
    );
    say(&format!("kernel route: {}", kernel_route(&w.node).trim()));
    let table = w.node.ctl_table(&["routes"]).expect_ok().stdout;
    assert!(
        table.contains(&format!("{B},{C} (podrouter0)")),
        "routes table: {table}"
    );
    // Hash flows on ports in the node kernel too (default: addresses).
    w.node
        .exec(&["sysctl", "-w", "net.ipv4.fib_multipath_hash_policy=1"])
        .expect_ok();
    let pod = w.node.add_pod("ecmp-d", &[]);
    warm_up(&w.node, &pod);
    let filter = format!("udp and dst host {TARGET}");
    let cap_b = Capture::start(w.b_ns.name(), "eth0", &filter);
    let cap_c = Capture::start(w.c_ns.name(), "eth0", &filter);
    send_flows(&pod, 42000..42000 + FLOWS);
    let (at_b, at_c) = (
        udp_source_ports(&cap_b.stop()),
        udp_source_ports(&cap_c.stop()),
    );
    say(&format!(
        "directly routed: {} flows reached {B}, {} reached {C}",
        at_b.len(),
        at_c.len()
    ));
    assert!(
        at_b.len() + at_c.len() >= usize::from(FLOWS) * 9 / 10,
        "only {} + {} of {FLOWS} flows arrived",
        at_b.len(),
        at_c.len()
    );
    assert!(
        at_b.intersection(&at_c).next().is_none(),
        "flows split across nodes"
    );
    assert!(
        !at_b.is_empty() && !at_c.is_empty(),
        "the kernel did not spread: {} to {B}, {} to {C}",
        at_b.len(),
        at_c.len()
    );
    // C goes away: the kernel route becomes a plain route via B.
    w.bird_c.kill();
    wait_only_b(&w.node);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = kernel_route(&w.node);
            r.contains(&format!("via {B} ")) && !r.contains("nexthop")
        }),
        "kernel route not via {B} alone: {}",
        kernel_route(&w.node)
    );
}
