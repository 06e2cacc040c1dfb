//! `[[bgp.peers]]` by reload: three podrouterd nodes on one segment.
//! Node 1 starts peered with node 2 only; a reload that adds node 3
//! starts that session alone (node 1 learns node 3's block) while the
//! session with node 2 stays up, not re-established; a reload that
//! removes node 2 stops that session alone (a Cease to node 2, its block
//! leaves node 1's FIB, its further connections are refused) while the
//! session with node 3 stays up.
use std::fs;
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;
use serde_json::Value;

const UP: Duration = Duration::from_secs(20);

fn ip(i: usize) -> String {
    format!("10.209.0.{i}")
}
fn block(i: usize) -> String {
    format!("10.244.{}.0/26", 20 + i)
}

fn peer_entry(i: usize) -> String {
    format!("[[bgp.peers]]\naddress = \"{}\"\nasn = {NODE_AS}\n", ip(i))
}

/// Node 1's row for peer `i`.
fn row(node: &Node, i: usize) -> Option<Value> {
    peers(node).into_iter().find(|p| p["address"] == ip(i))
}

/// (state, established_count, since_secs) of the node's session with `i`.
fn session(node: &Node, i: usize) -> (String, u64, u64) {
    let r = row(node, i).unwrap_or_else(|| panic!("no peer {}: {:#?}", ip(i), peers(node)));
    (
        r["state"].as_str().unwrap_or_default().to_string(),
        r["established_count"].as_u64().unwrap_or(0),
        r["since_secs"].as_u64().unwrap_or(0),
    )
}

#[test]
fn bgp_peers_added_and_removed_by_reload_leave_other_sessions_up() {
    if !require(
        "bgp_peers_added_and_removed_by_reload_leave_other_sessions_up",
        &[],
    ) {
        return;
    }
    let mut sw = Switch::new();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut n = start_plain_node(&ip(i), &block(i));
        sw.plug(&n.ns, "eth0", &format!("{}/24", ip(i)));
        // Node 1 peers with node 2 only; nodes 2 and 3 with node 1.
        let peer_list: Vec<PeerCfg> = if i == 1 {
            vec![PeerCfg::new(&ip(2), NODE_AS)]
        } else {
            vec![PeerCfg::new(&ip(1), NODE_AS)]
        };
        enable_bgp(&mut n, &bgp_section(NODE_AS, "", &peer_list), None);
        nodes.push(n);
    }
    let _logs: Vec<LogOnPanic> = nodes.iter().map(|n| LogOnPanic(n.log.clone())).collect();
    let n1 = &nodes[0];
    wait_established(n1, &ip(2), UP);
    assert!(wait_fib(n1, &block(2), Some(&ip(2)), UP));
    assert!(row(n1, 3).is_none());
    assert_ne!(peer_state(&nodes[2], &ip(1)), "Established");
    let (_, count2, _) = session(n1, 2);
    assert_eq!(count2, 1, "{:#?}", peers(n1));

    // Add node 3.
    let text = fs::read_to_string(&n1.config).expect("read config");
    fs::write(&n1.config, format!("{text}{}", peer_entry(3))).expect("write config");
    let r = n1.ctl(&["reload"]);
    let changed = r["changed"].to_string();
    assert!(
        changed.contains("sessions started: 10.209.0.3; stopped: none"),
        "{r:#}"
    );
    wait_established(n1, &ip(3), UP);
    assert!(
        wait_fib(n1, &block(3), Some(&ip(3)), UP),
        "node 1 did not learn node 3's block: {}",
        n1.ctl_table(&["bgp", "rib"])
    );
    let (state2, after2, _) = session(n1, 2);
    assert_eq!(
        (state2.as_str(), after2),
        ("Established", count2),
        "adding a peer touched the session with node 2: {:#?}",
        peers(n1)
    );
    // Node 2's side saw no reset either.
    let two_sees = row(&nodes[1], 1).expect("node 2 peers with node 1");
    assert_eq!(two_sees["state"], "Established");
    assert_eq!(two_sees["established_count"], 1, "{two_sees:#}");
    assert_eq!(fib_via(n1, &block(2)).as_deref(), Some(ip(2).as_str()));
    say(&format!(
        "after adding node 3, node 1 bgp peers:\n{}",
        n1.ctl_table(&["bgp", "peers"]).stdout
    ));

    // Remove node 2.
    let text = fs::read_to_string(&n1.config).expect("read config");
    assert!(text.contains(&peer_entry(2)), "{text}");
    fs::write(&n1.config, text.replacen(&peer_entry(2), "", 1)).expect("write config");
    let r = n1.ctl(&["reload"]);
    assert!(
        r["changed"]
            .to_string()
            .contains("sessions started: none; stopped: 10.209.0.2"),
        "{r:#}"
    );
    assert!(
        row(n1, 2).is_none(),
        "removed peer still listed: {:#?}",
        peers(n1)
    );
    assert!(
        wait_fib(n1, &block(2), None, Duration::from_secs(5)),
        "node 2's block stayed in node 1's FIB"
    );
    // Node 2 got a Cease and cannot come back: node 1 refuses it.
    assert!(
        wait_until(Duration::from_secs(5), || peer_state(&nodes[1], &ip(1))
            != "Established"),
        "node 2 still Established with node 1: {:#?}",
        peers(&nodes[1])
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(peer_state(&nodes[1], &ip(1)), "Established");
    assert!(wait_fib(&nodes[1], &block(1), None, Duration::from_secs(5)));
    let (state3, count3, _) = session(n1, 3);
    assert_eq!(
        (state3.as_str(), count3),
        ("Established", 1),
        "removing a peer touched the session with node 3: {:#?}",
        peers(n1)
    );
    let three_sees = row(&nodes[2], 1).expect("node 3 peers with node 1");
    assert_eq!(three_sees["established_count"], 1, "{three_sees:#}");
    assert_eq!(fib_via(n1, &block(3)).as_deref(), Some(ip(3).as_str()));
    let log = n1.daemon_log();
    assert!(
        log.contains("bgp 10.209.0.2: peer removed by a reload"),
        "{log}"
    );
}
