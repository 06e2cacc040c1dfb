//! Three podrouterd nodes on one segment in a full iBGP mesh (Calico's
//! node-to-node mesh): every node learns the other two blocks with the
//! right next hops, pods on different nodes reach each other through the
//! IPIP uplink, and a node that stops takes its block out of the others'
//! FIBs.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const UP: Duration = Duration::from_secs(30);

fn ip(i: usize) -> String {
    format!("10.203.0.{i}")
}
fn block(i: usize) -> String {
    format!("10.244.{i}.0/26")
}

#[test]
fn bgp_three_node_ibgp_full_mesh() {
    if !require("bgp_three_node_ibgp_full_mesh", &["ping"]) {
        return;
    }
    let mut sw = Switch::new();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut n = start_plain_node(&ip(i), &block(i));
        sw.plug(&n.ns, "eth0", &format!("{}/24", ip(i)));
        let peers: Vec<PeerCfg> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| PeerCfg::new(&ip(j), NODE_AS))
            .collect();
        enable_bgp(&mut n, &bgp_section(NODE_AS, "", &peers), Some("eth0"));
        nodes.push(n);
    }
    let _logs: Vec<LogOnPanic> = nodes.iter().map(|n| LogOnPanic(n.log.clone())).collect();
    for (i, n) in nodes.iter().enumerate() {
        for j in (1..=3).filter(|j| *j != i + 1) {
            wait_established(n, &ip(j), UP);
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        for j in (1..=3).filter(|j| *j != i + 1) {
            assert!(
                wait_fib(n, &block(j), Some(&ip(j)), Duration::from_secs(10)),
                "node {} lacks {} via {}: {}",
                i + 1,
                block(j),
                ip(j),
                n.ctl_table(&["bgp", "rib"])
            );
        }
        // Its own block is never taken from BGP.
        assert!(fib_via(n, &block(i + 1)).is_none());
    }
    say(&format!(
        "node 1 bgp peers:\n{}\nnode 1 routes:\n{}",
        nodes[0].ctl_table(&["bgp", "peers"]).stdout,
        nodes[0].ctl_table(&["routes"]).stdout
    ));

    // Pods on node 1 and node 3 reach each other across the mesh.
    let a = nodes[0].add_pod("mesh-a", &[]);
    let c = nodes[2].add_pod("mesh-c", &[]);
    let reached = ping_until_reply(&a.ns, &c.ip, Duration::from_secs(10));
    if reached {
        say(&format!(
            "pod {} on node 1 pings pod {} on node 3 through IPIP",
            a.ip, c.ip
        ));
    } else {
        say(&format!(
            "pod {} on node 1 did NOT reach pod {} on node 3; counters: {:#}",
            a.ip,
            c.ip,
            nodes[0].counters()
        ));
    }
    assert!(reached, "cross-node ping over the BGP-learned route failed");

    // Node 2 stops: its block leaves nodes 1 and 3 (Cease, no GR wait
    // because it was configured... graceful restart is on by default, so
    // its peers keep the block until the restart time unless we disable
    // it: check the stale flag instead).
    nodes[1].stop_daemon("TERM");
    for k in [0, 2] {
        assert!(
            wait_until(Duration::from_secs(10), || peers(&nodes[k])
                .iter()
                .any(|p| p["address"] == ip(2) && p["prefixes_stale"] == 1)),
            "node {} does not hold node 2's block as stale: {:#?}",
            k + 1,
            peers(&nodes[k])
        );
        assert_eq!(
            fib_via(&nodes[k], &block(2)).as_deref(),
            Some(ip(2).as_str())
        );
    }
    // Node 2 comes back (announcing the restart bit) and refreshes.
    nodes[1].start_daemon();
    for k in [0, 2] {
        wait_established(&nodes[k], &ip(2), UP);
        assert!(wait_until(Duration::from_secs(10), || peers(&nodes[k])
            .iter()
            .any(|p| p["address"] == ip(2) && p["prefixes_stale"] == 0)));
        assert_eq!(
            fib_via(&nodes[k], &block(2)).as_deref(),
            Some(ip(2).as_str())
        );
    }
    assert!(
        nodes[1].daemon_log().contains("announcing the restart bit"),
        "node 2 did not restart gracefully"
    );
}

/// The same three nodes as clients of a BIRD route reflector: each peers
/// only with the reflector and still learns both other blocks, with the
/// originating node as next hop (ORIGINATOR_ID and CLUSTER_LIST carried).
#[test]
fn bgp_three_nodes_as_clients_of_a_bird_route_reflector() {
    if !require(
        "bgp_three_nodes_as_clients_of_a_bird_route_reflector",
        &["ping", "bird", "birdc"],
    ) {
        return;
    }
    let rr_ip = "10.204.0.254";
    let ip = |i: usize| format!("10.204.0.{i}");
    let block = |i: usize| format!("10.244.{}.0/26", 10 + i);
    let mut sw = Switch::new();
    let rr_ns = Netns::new("rr");
    sw.plug(&rr_ns, "eth0", &format!("{rr_ip}/24"));
    let mut conf = format!(
        "router id {rr_ip};\nprotocol device {{ scan time 10; }}\n\
         protocol direct {{ ipv4; interface \"*\"; }}\n"
    );
    for i in 1..=3 {
        conf += &format!(
            "protocol bgp c{i} {{ local as {NODE_AS}; neighbor {} as {NODE_AS}; direct; rr client;\n\
             hold time {HOLD}; keepalive time 1; connect delay time 1; connect retry time 2;\n\
             ipv4 {{ import all; export where source = RTS_BGP; }}; }}\n",
            ip(i)
        );
    }
    let rr = Bird::start(&rr_ns, &conf);
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut n = start_plain_node(&ip(i), &block(i));
        sw.plug(&n.ns, "eth0", &format!("{}/24", ip(i)));
        let bgp = bgp_section(NODE_AS, "", &[PeerCfg::new(rr_ip, NODE_AS)]);
        enable_bgp(&mut n, &bgp, Some("eth0"));
        nodes.push(n);
    }
    let _logs: Vec<LogOnPanic> = nodes.iter().map(|n| LogOnPanic(n.log.clone())).collect();
    for n in &nodes {
        wait_established(n, rr_ip, UP);
    }
    for (i, n) in nodes.iter().enumerate() {
        for j in (1..=3).filter(|j| *j != i + 1) {
            assert!(
                wait_fib(n, &block(j), Some(&ip(j)), Duration::from_secs(15)),
                "node {} lacks {} via {} from the reflector: {}\n{}",
                i + 1,
                block(j),
                ip(j),
                n.ctl_table(&["bgp", "rib"]),
                rr.birdc("show route all").stdout
            );
        }
        assert!(fib_via(n, &block(i + 1)).is_none());
    }
    say(&format!(
        "node 1 bgp rib via the reflector:\n{}",
        nodes[0].ctl_table(&["bgp", "rib"]).stdout
    ));
    let a = nodes[0].add_pod("rr-a", &[]);
    let b = nodes[1].add_pod("rr-b", &[]);
    assert!(
        ping_until_reply(&a.ns, &b.ip, Duration::from_secs(10)),
        "pod on node 1 cannot reach pod on node 2 over reflected routes"
    );
}
