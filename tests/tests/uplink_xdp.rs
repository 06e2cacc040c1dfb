//! The uplink through XDP (`[dataplane] uplink_xdp = true`) between two
//! nodes, with IPIP and with VXLAN (Calico's 4096/4789 and Flannel's
//! 1/8472): the program is on each node's `eth0` and status shows it; the
//! pods' tunnel traffic arrives through the AF_XDP sockets (the node's IP
//! layer never sees it); the node's own ping and TCP over the same
//! interface keep working while pods use the tunnel; the pods' TCP works
//! both ways with no checksum errors in the pods (VXLAN segments from the
//! other node's kernel carry partial inner checksums); after `kill -9`
//! and a restart one program is attached, not two, and the pods forward
//! again; a clean stop leaves no program behind.
use std::time::Duration;

use podrouter_e2e::backlog::BacklogDrops;
use podrouter_e2e::multinode::*;
use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(10);
const TOOLS: &[&str] = &["ping", "iperf3", "ss"];

/// `(program id, name)` of the XDP program on a node's `eth0`, `None`
/// without one; panics if more than one is attached.
#[track_caller]
fn xdp_prog(node: &ClusterNode) -> Option<(u64, String)> {
    let out = run(&[
        "ip",
        "-n",
        node.ns.name(),
        "-d",
        "-j",
        "link",
        "show",
        "dev",
        "eth0",
    ]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    let xdp = v[0].get("xdp")?;
    let prog = |p: &Value| {
        Some((
            p["id"].as_u64()?,
            p["name"].as_str().unwrap_or_default().to_string(),
        ))
    };
    // `ip` lists every program under `attached` (and repeats a lone one
    // as `prog`).
    let all: Vec<_> = match xdp["attached"].as_array() {
        Some(a) => a.iter().filter_map(|x| prog(&x["prog"])).collect(),
        None => prog(&xdp["prog"]).into_iter().collect(),
    };
    assert!(
        all.len() <= 1,
        "more than one XDP program on node {}'s eth0: {xdp}",
        node.index
    );
    all.into_iter().next()
}

/// One counter of `/proc/net/snmp` in namespace `ns`: `group` is `Ip` or
/// `Tcp`, `name` the column.
#[track_caller]
fn snmp(ns: &str, group: &str, name: &str) -> u64 {
    let snmp = run_in(ns, &["cat", "/proc/net/snmp"]).stdout;
    let prefix = format!("{group}:");
    let mut rows = snmp.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (rows.next().unwrap_or(""), rows.next().unwrap_or(""));
    let at = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("{group}: {name} in /proc/net/snmp"));
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{group}: {name} value"))
}

/// The node namespace's `Ip: InReceives` (packets its IP layer took in).
fn ip_in_receives(node: &ClusterNode) -> u64 {
    snmp(node.ns.name(), "Ip", "InReceives")
}

/// Packets the node's uplink port (`port`: `ipip@eth0`, `vxlan@eth0`)
/// received; its AF_XDP sockets dropped none.
#[track_caller]
fn uplink_rx(node: &ClusterNode, port: &str) -> u64 {
    let counters = node.counters();
    let uplink = counters["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == port))
        .unwrap_or_else(|| panic!("no uplink port in {counters:#}"));
    assert!(uplink["xsk"].is_object(), "no AF_XDP counters: {uplink:#}");
    assert_eq!(num(uplink, "/xsk/rx_dropped"), 0, "{uplink:#}");
    num(uplink, "/rx_packets")
}

/// A node itself as an iperf3 endpoint.
fn node_endpoint(node: &ClusterNode) -> Pod {
    Pod {
        id: format!("node{}", node.index),
        ns: node.ns.name().to_string(),
        netns_path: node.ns.path(),
        ip: node.ip.clone(),
        info: Value::Null,
    }
}

#[test]
fn uplink_xdp_takes_the_tunnel_and_leaves_the_host_its_traffic() {
    let test = "uplink_xdp_takes_the_tunnel_and_leaves_the_host_its_traffic";
    if !require(test, TOOLS) {
        return;
    }
    takes_the_tunnel_and_leaves_the_host_its_traffic("", "ipip@eth0", Restarts::Check);
}

/// The same with VXLAN, Calico's profile (VNI 4096, UDP 4789): main
/// refused `uplink_xdp` with VXLAN at start.
#[test]
fn uplink_xdp_takes_vxlan_calico_profile() {
    if !require("uplink_xdp_takes_vxlan_calico_profile", TOOLS) {
        return;
    }
    takes_the_tunnel_and_leaves_the_host_its_traffic(
        "tunnel = \"vxlan\"\n",
        "vxlan@eth0",
        Restarts::Check,
    );
}

/// VXLAN with Flannel's profile (VNI 1, UDP 8472): the program takes the
/// configured port. The restart checks are the same code as Calico's and
/// are not repeated.
#[test]
fn uplink_xdp_takes_vxlan_flannel_profile() {
    if !require("uplink_xdp_takes_vxlan_flannel_profile", TOOLS) {
        return;
    }
    takes_the_tunnel_and_leaves_the_host_its_traffic(
        "tunnel = \"vxlan\"\nvxlan_port = 8472\nvxlan_vni = 1\n",
        "vxlan@eth0",
        Restarts::Skip,
    );
}

#[derive(PartialEq)]
enum Restarts {
    Check,
    Skip,
}

/// `(TcpInCsumErrors, TcpRetransSegs, TcpOutSegs)` of a pod.
fn pod_tcp(pod: &Pod) -> (u64, u64, u64) {
    (
        snmp(&pod.ns, "Tcp", "InCsumErrors"),
        snmp(&pod.ns, "Tcp", "RetransSegs"),
        snmp(&pod.ns, "Tcp", "OutSegs"),
    )
}

/// Two nodes with `uplink_xdp` and the tunnel `dataplane` names (its
/// uplink port is `port` in status): see the module documentation.
fn takes_the_tunnel_and_leaves_the_host_its_traffic(
    dataplane: &str,
    port: &str,
    restarts: Restarts,
) {
    // Pings are counted exactly: a failure says whether the kernel's
    // shared receive backlogs dropped packets meanwhile (see `backlog`).
    let backlog = BacklogDrops::now();
    let mut c = Cluster::start_with(
        "always",
        &[0, 0],
        &format!("{dataplane}uplink_xdp = true\n"),
    );
    let a = c.nodes[0].add_pod("x0p1", &[]);
    let b = c.nodes[1].add_pod("x1p1", &[]);
    let mut first_ids = Vec::new();
    for n in &c.nodes {
        let (id, name) =
            xdp_prog(n).unwrap_or_else(|| panic!("no XDP program on node {}'s eth0", n.index));
        assert_eq!(name, "podrouter_xsk");
        let status = n.ctl(&["status"]);
        let entry = status["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == port))
            .unwrap_or_else(|| panic!("status shows no uplink_xdp port {port}: {status:#}"));
        assert_eq!(entry["backend"], "afxdp", "{entry}");
        assert_eq!(entry["xdp_prog_id"].as_u64(), Some(id), "{entry}");
        first_ids.push(id);
    }
    assert!(settle(&a.ns, &b.ip, SETTLE), "x0p1 never reached x1p1");

    // The pods' tunnel traffic goes to the sockets: node 1's uplink port
    // counts every request, its IP layer sees (almost) nothing.
    let (rx0, ip0) = (uplink_rx(&c.nodes[1], port), ip_in_receives(&c.nodes[1]));
    let p = ping(&a.ns, &b.ip, &["-c", "50", "-i", "0.01", "-W", "2"]);
    assert!(
        p.received >= 45,
        "pods across the tunnel ({}):\n{}",
        backlog.note(),
        p.text
    );
    let (rx1, ip1) = (uplink_rx(&c.nodes[1], port), ip_in_receives(&c.nodes[1]));
    assert!(rx1 - rx0 >= 45, "uplink received {} of 50", rx1 - rx0);
    assert!(
        ip1 - ip0 < 25,
        "node 1's IP layer took in {} packets during 50 tunnelled pings: the tunnel did not go \
         to the AF_XDP sockets",
        ip1 - ip0
    );

    // The host keeps its own traffic while the pods use the tunnel.
    let pods_ping = {
        let (ns, ip) = (a.ns.clone(), b.ip.clone());
        std::thread::spawn(move || ping(&ns, &ip, &["-c", "30", "-i", "0.1", "-W", "2"]))
    };
    let host = ping(
        c.nodes[1].ns.name(),
        &c.nodes[0].ip,
        &["-c", "3", "-i", "0.2", "-W", "2"],
    );
    assert_eq!(
        host.received,
        3,
        "node 1 -> node 0 ({}):\n{}",
        backlog.note(),
        host.text
    );
    let (n0, n1) = (node_endpoint(&c.nodes[0]), node_endpoint(&c.nodes[1]));
    let tcp = iperf3_gbps(&n1, &n0);
    let pods = pods_ping.join().expect("pod ping thread");
    assert!(
        pods.received >= 27,
        "pods during host traffic ({}):\n{}",
        backlog.note(),
        pods.text
    );
    // The pods' TCP both ways: segments the other node's kernel cut
    // arrive with partial inner checksums, which must reach the pods as
    // such (a wrong one is a checksum error in the pod, and retransmits).
    let (before_a, before_b) = (pod_tcp(&a), pod_tcp(&b));
    let ab = iperf3_gbps(&a, &b);
    let ba = iperf3_gbps(&b, &a);
    let (after_a, after_b) = (pod_tcp(&a), pod_tcp(&b));
    let csum_errors = (after_a.0 - before_a.0) + (after_b.0 - before_b.0);
    let retrans = (after_a.1 - before_a.1) + (after_b.1 - before_b.1);
    let out = (after_a.2 - before_a.2) + (after_b.2 - before_b.2);
    say(&format!(
        "uplink_xdp {port} iperf3 Gbit/s: node1->node0 (host TCP) {tcp:.2}, x0p1->x1p1 \
         {ab:.2}, x1p1->x0p1 {ba:.2}; pods' TCP: {csum_errors} checksum errors, {retrans} \
         retransmitted of {out} segments"
    ));
    assert_eq!(csum_errors, 0, "TCP checksum errors in the pods");
    assert!(
        retrans * 20 < out,
        "retransmit storm: {retrans} of {out} segments"
    );
    if restarts == Restarts::Skip {
        return;
    }

    // kill -9: the program goes with the process's link; the restarted
    // daemon attaches one (a new one), and the pods forward again.
    c.nodes[0].restart("KILL");
    let (id, name) = xdp_prog(&c.nodes[0]).expect("program after the restart");
    assert_eq!(name, "podrouter_xsk");
    assert_ne!(id, first_ids[0], "the old program is still attached");
    assert!(settle(&a.ns, &b.ip, SETTLE), "pods after the restart");
    let p = ping(&a.ns, &b.ip, &["-c", "3", "-i", "0.2", "-W", "2"]);
    assert_eq!(
        p.received,
        3,
        "pods after the restart ({}):\n{}",
        backlog.note(),
        p.text
    );

    // A clean stop detaches the program; the node is reachable as before.
    c.nodes[0].stop("TERM");
    assert_eq!(xdp_prog(&c.nodes[0]), None, "program left after SIGTERM");
    let host = ping(
        c.nodes[1].ns.name(),
        &c.nodes[0].ip,
        &["-c", "2", "-i", "0.2", "-W", "2"],
    );
    assert_eq!(
        host.received,
        2,
        "node 0 after its daemon stopped ({}):\n{}",
        backlog.note(),
        host.text
    );
}
