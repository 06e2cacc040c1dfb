//! Same-node forwarding, the host path, proxy ARP and TCP throughput.
use std::time::Duration;

use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn pod_to_pod_ping_both_ways_one_hop() {
    if !require("pod_to_pod_ping_both_ways_one_hop", &["ping"]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(
        ping_until_reply(&a.ns, &b.ip, SETTLE),
        "pod-a never reached pod-b"
    );
    let before = node.counters();
    // 64 -> 63: exactly one router hop each way.
    assert_ping(&a.ns, &b.ip, 3, 63);
    assert_ping(&b.ns, &a.ip, 3, 63);
    let after = node.counters();
    assert!(
        delta(&before, &after, "/rx") >= 12,
        "rx counter did not count the pings: {after:#}"
    );
    assert!(
        delta(&before, &after, "/tx") >= 12,
        "tx counter did not count the pings: {after:#}"
    );
}

/// Two workers: pods spread over both, and every pod reaches every other,
/// so each worker transmits to ports the other receives from (with afxdp:
/// a transmit socket per worker on each node end).
#[test]
fn two_workers_forward_between_each_others_pods() {
    if !require("two_workers_forward_between_each_others_pods", &["ping"]) {
        return;
    }
    let mut node = Node::start(NodeConfig {
        workers: 2,
        ..NodeConfig::default()
    });
    let pods: Vec<Pod> = (0..4)
        .map(|i| node.add_pod(&format!("w{i}"), &[]))
        .collect();
    let workers: std::collections::BTreeSet<u64> = pods
        .iter()
        .map(|p| p.info["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "pods not spread over both workers");
    for a in &pods {
        for b in &pods {
            if a.id != b.id {
                assert!(
                    ping_until_reply(&a.ns, &b.ip, SETTLE),
                    "{} -> {}",
                    a.id,
                    b.id
                );
                assert_ping(&a.ns, &b.ip, 2, 63);
            }
        }
    }
}

#[test]
fn pod_to_node_and_node_to_pod() {
    if !require("pod_to_node_and_node_to_pod", &["ping"]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    assert!(
        ping_until_reply(&a.ns, NODE_IP, SETTLE),
        "pod never reached the node"
    );
    // The host path does not decrement TTL (as in Calico).
    assert_ping(&a.ns, NODE_IP, 3, 64);
    assert!(
        ping_until_reply(node.ns.name(), &a.ip, SETTLE),
        "node never reached the pod"
    );
    assert_ping(node.ns.name(), &a.ip, 3, 64);
    let hp = node
        .exec(&["ip", "-d", "link", "show", "podrouter0"])
        .expect_ok();
    assert!(
        hp.stdout.contains("tun type tap"),
        "host port is not a TAP: {hp}"
    );
    // The node routes the pod through the host port.
    let r = node.exec(&["ip", "route", "get", &a.ip]).expect_ok();
    assert!(
        r.stdout.contains("dev podrouter0"),
        "node's route to the pod is not via podrouter0: {r}"
    );
}

#[test]
fn proxy_arp_answers_every_address_with_router_mac() {
    if !require(
        "proxy_arp_answers_every_address_with_router_mac",
        &["ping", "arping"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let out = a
        .exec(&["ip", "-j", "neigh", "show", "dev", "eth0"])
        .expect_ok();
    let neigh: Value = serde_json::from_str(&out.stdout).unwrap();
    let gw = neigh
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == GATEWAY_IP)
        .unwrap_or_else(|| panic!("no neighbour entry for {GATEWAY_IP}: {out}"));
    assert_eq!(
        gw["lladdr"], ROUTER_MAC,
        "gateway resolved to the wrong MAC: {out}"
    );

    let before = node.counters();
    // Another pod, an unassigned pod address, the node, something outside.
    let targets = [b.ip.as_str(), "10.244.0.77", NODE_IP, "10.99.0.1"];
    for t in targets {
        let out = a.exec(&["arping", "-c", "2", "-w", "4", "-I", "eth0", t]);
        let text = out.text();
        let want = format!("reply from {t} [{}]", ROUTER_MAC.to_uppercase());
        assert!(text.contains(&want), "arping {t}: expected `{want}`: {out}");
        assert!(!text.contains("Received 0 response"), "{out}");
    }
    let after = node.counters();
    assert!(
        delta(&before, &after, "/arp_replies") >= targets.len() as u64,
        "arp_replies did not count the replies: {after:#}"
    );
}

fn iperf3(client: &Pod, server: &Pod, extra: &[&str]) -> Value {
    let srv = spawn_in(
        &server.ns,
        "iperf3 server",
        &["iperf3", "-s", "-1", "-B", &server.ip],
        None,
    );
    let listening = wait_until(SETTLE, || {
        server
            .exec(&["ss", "-ltnH", "sport = :5201"])
            .stdout
            .contains("5201")
    });
    assert!(listening, "iperf3 server did not start");
    let mut args = vec!["iperf3", "-c", &server.ip, "-t", "2", "-J"];
    args.extend_from_slice(extra);
    let out = client.exec(&args);
    drop(srv);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J gave no JSON ({e}): {out}"));
    assert!(
        v.get("error").is_none(),
        "iperf3 reported an error: {}",
        v["error"]
    );
    assert!(out.ok(), "{out}");
    v
}

#[test]
fn iperf3_tcp_between_pods() {
    if !require("iperf3_tcp_between_pods", &["ping", "iperf3", "ss"]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    for (what, extra) in [("a -> b", &[][..]), ("b -> a (reverse)", &["-R"][..])] {
        let v = iperf3(&a, &b, extra);
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let retr = &v["end"]["sum_sent"]["retransmits"];
        say(&format!(
            "iperf3 {what}: {:.2} Gbit/s, retransmits {retr}",
            bps / 1e9
        ));
        assert!(bps > 0.0, "iperf3 {what}: no throughput: {v:#}");
        if let Some(min) = std::env::var("PODROUTER_E2E_MIN_GBPS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        {
            assert!(
                bps / 1e9 >= min,
                "iperf3 {what}: {:.2} Gbit/s < PODROUTER_E2E_MIN_GBPS={min}",
                bps / 1e9
            );
        }
    }
}

/// TAP offloads: a pod's TCP sends segments far bigger than the MTU (TSO),
/// and the router hands them to the other pod's TAP without segmenting, so
/// the receiving pod sees IP packets larger than its MTU. The afxdp backend
/// has no offloads (copy-mode AF_XDP on veth): there every packet the pod
/// sees fits its MTU.
#[test]
fn tcp_segments_cross_the_router_unsegmented() {
    if !require(
        "tcp_segments_cross_the_router_unsegmented",
        &["ping", "iperf3", "ss", "tcpdump"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    // Frames above the MTU (1480 + 14) for afxdp; far above it for TAP.
    let filter = if backend() == "afxdp" {
        "tcp and greater 1495"
    } else {
        "tcp and greater 3000"
    };
    let cap = Capture::start_with(&b.ns, "eth0", filter, &["-s", "96", "-c", "20"]);
    iperf3(&a, &b, &[]);
    let text = cap.stop();
    let big: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("proto TCP"))
        .filter_map(|l| l.rsplit("length ").next())
        .filter_map(|s| s.trim_end_matches(')').trim().parse().ok())
        .filter(|n| *n > 1480)
        .collect();
    if backend() == "afxdp" {
        assert!(
            big.is_empty(),
            "afxdp: pod-b received TCP packets larger than its 1480 MTU: {big:?}\n{text}"
        );
        return;
    }
    assert!(
        !big.is_empty(),
        "pod-b received no TCP packet larger than the 1480 MTU: TSO/GSO segments were split or offloads are off\n{text}"
    );
    say(&format!(
        "largest TCP packet seen by pod-b: {} bytes",
        big.iter().max().unwrap()
    ));
}
