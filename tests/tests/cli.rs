//! podrouterctl: `--json` documents for scripts, tables for people, exit
//! codes.
use std::time::Duration;

use podrouter_e2e::*;

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v:#}"))
        .keys()
        .map(String::as_str)
        .collect()
}

#[track_caller]
fn assert_has_keys(v: &Value, want: &[&str]) {
    let have = keys(v);
    for k in want {
        assert!(have.contains(k), "key `{k}` missing from {v:#}");
    }
}

fn static_route_node() -> NodeConfig {
    NodeConfig {
        routes: vec![("10.245.0.0/24".into(), "192.168.200.2".into())],
        ..NodeConfig::default()
    }
}

#[test]
fn json_documents_have_the_documented_fields() {
    if !require("json_documents_have_the_documented_fields", &["ping"]) {
        return;
    }
    let mut node = Node::start(static_route_node());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, Duration::from_secs(5)));

    let s = node.ctl(&["status"]);
    assert_has_keys(
        &s,
        &[
            "node_name",
            "node_ip",
            "pod_cidrs",
            "daemon_version",
            "api_version",
            "backend",
            "encap",
            "workers",
            "pods",
            "routes",
            "free_addresses",
            "uptime_secs",
        ],
    );
    assert_eq!(s["node_name"], node.name.as_str());
    assert_eq!(s["node_ip"], NODE_IP);
    assert_eq!(s["pod_cidrs"], serde_json::json!([POD_CIDR]));
    assert_eq!(s["api_version"], 1);
    assert_eq!(s["backend"], podrouter_e2e::backend().as_str());
    assert_eq!(s["workers"], 1);
    assert_eq!(s["pods"], 2);
    assert_eq!(
        s["free_addresses"], 252,
        "254 usable in a /24, 2 taken: {s:#}"
    );
    assert!(
        s["daemon_version"].as_str().is_some_and(|v| !v.is_empty()),
        "{s:#}"
    );
    assert!(s["uptime_secs"].is_u64() && s["routes"].is_u64(), "{s:#}");

    let pods = node.ctl(&["pods"]);
    assert_eq!(pods.as_array().map(Vec::len), Some(2), "{pods:#}");
    for p in pods.as_array().unwrap() {
        assert_has_keys(
            p,
            &[
                "id", "netns", "ifname", "ip", "mac", "mtu", "port", "worker",
            ],
        );
    }

    let routes = node.ctl(&["routes"]);
    let routes = routes
        .as_array()
        .unwrap_or_else(|| panic!("routes is not a list: {routes:#}"));
    for r in routes {
        assert_has_keys(r, &["prefix", "next_hop"]);
        let nh = r["next_hop"].as_str().unwrap();
        assert!(
            ["local", "host", "node", "unreachable"].contains(&nh),
            "bad next_hop: {r:#}"
        );
    }
    let find = |prefix: &str| routes.iter().find(|r| r["prefix"] == prefix);
    for p in [&a, &b] {
        let r = find(&format!("{}/32", p.ip))
            .unwrap_or_else(|| panic!("no route for {}: {routes:#?}", p.ip));
        assert_eq!(r["next_hop"], "local", "{r:#}");
        assert!(r["port"].is_string(), "local route without port: {r:#}");
    }
    let st = find("10.245.0.0/24").unwrap_or_else(|| panic!("static route missing: {routes:#?}"));
    assert_eq!(st["next_hop"], "node", "{st:#}");
    assert_eq!(st["via"], "192.168.200.2", "{st:#}");
    assert!(
        routes.iter().any(|r| r["next_hop"] == "host"),
        "no route to the host port: {routes:#?}"
    );
    let blk = find(POD_CIDR).unwrap_or_else(|| panic!("no entry for the pod block: {routes:#?}"));
    assert_eq!(
        blk["next_hop"], "unreachable",
        "unassigned pod addresses must be unreachable: {blk:#}"
    );
    assert_eq!(
        s["routes"].as_u64(),
        Some(routes.len() as u64),
        "status.routes vs routes: {s:#}"
    );

    let c = node.counters();
    assert_has_keys(
        &c,
        &[
            "workers",
            "rx",
            "tx",
            "sleeps",
            "arp_replies",
            "icmp_sent",
            "icmp_rate_limited",
            "drops",
            "ports",
            "flows",
        ],
    );
    assert_has_keys(&c["drops"], &drop_reasons());
    assert_has_keys(
        &c["flows"],
        &[
            "capacity",
            "entries",
            "inserted",
            "full",
            "expired",
            "steered_to_host",
            "policy_allowed",
        ],
    );
    assert_eq!(
        num(&c, "/flows/capacity"),
        262_144,
        "the default flow_table_size: {c:#}"
    );
    assert!(
        c["rx"].as_u64().unwrap() > 0,
        "pings were not counted: {c:#}"
    );
    let ports = c["ports"].as_array().unwrap();
    for p in ports {
        assert_has_keys(
            p,
            &[
                "port",
                "name",
                "rx_packets",
                "rx_bytes",
                "tx_packets",
                "tx_bytes",
                "drops",
                "policy_denied_ingress",
                "policy_denied_egress",
            ],
        );
    }
    for pod in [&a, &b] {
        let port = ports
            .iter()
            .find(|p| p["port"] == pod.info["port"])
            .unwrap_or_else(|| panic!("no counters for {}'s port: {c:#}", pod.id));
        assert!(
            num(port, "/rx_packets") > 0 && num(port, "/tx_packets") > 0,
            "{port:#}"
        );
        assert!(
            num(port, "/rx_bytes") > num(port, "/rx_packets"),
            "bytes not counted: {port:#}"
        );
    }
}

#[test]
fn tables_for_people() {
    if !require("tables_for_people", &[]) {
        return;
    }
    let mut node = Node::start(static_route_node());
    let a = node.add_pod("pod-a", &[]);
    let not_json = |o: &Out| {
        assert!(o.ok(), "{o}");
        assert!(
            serde_json::from_str::<Value>(&o.stdout).is_err(),
            "table output is JSON: {o}"
        );
        assert!(
            o.stdout.lines().count() >= 2,
            "expected a header and rows: {o}"
        );
    };
    let st = node.ctl_table(&["status"]);
    not_json(&st);
    assert!(
        st.stdout.contains(&node.name) && st.stdout.contains(NODE_IP),
        "{st}"
    );
    let pods = node.ctl_table(&["pods"]);
    not_json(&pods);
    assert!(
        pods.stdout
            .lines()
            .any(|l| l.contains("pod-a") && l.contains(&a.ip)),
        "no row with the pod's id and address: {pods}"
    );
    let routes = node.ctl_table(&["routes"]);
    not_json(&routes);
    assert!(
        routes
            .stdout
            .lines()
            .any(|l| l.contains(&format!("{}/32", a.ip)) && l.contains("local")),
        "no local /32 row: {routes}"
    );
    assert!(
        routes
            .stdout
            .lines()
            .any(|l| l.contains("10.245.0.0/24") && l.contains("192.168.200.2")),
        "no static route row: {routes}"
    );
    let counters = node.ctl_table(&["counters"]);
    not_json(&counters);
    let c = node.counters();
    for p in c["ports"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        assert!(
            counters.stdout.contains(name),
            "port {name} missing from the counters table: {counters}"
        );
    }
}

#[test]
fn exit_codes_and_socket_selection() {
    if !require("exit_codes_and_socket_selection", &[]) {
        return;
    }
    let node = Node::start(NodeConfig::default());
    let ctl = bin("podrouterctl");
    let ctl = ctl.to_string_lossy();
    let sock = node.socket.to_string_lossy();

    let o = run(&[
        &ctl,
        "--socket",
        "/nonexistent/podrouter-e2e.sock",
        "status",
    ]);
    assert_eq!(o.code(), 3, "unreachable daemon: {o}");
    assert!(!o.stderr.trim().is_empty(), "{o}");

    let o = run(&[&ctl, "--socket", &sock, "frobnicate"]);
    assert_eq!(o.code(), 2, "unknown command is a usage error: {o}");
    let o = run(&[&ctl, "--socket", &sock, "attach", "x"]);
    assert_eq!(o.code(), 2, "attach without --netns is a usage error: {o}");

    let o = run(&[&ctl, "--socket", &sock, "detach", "nobody"]);
    assert_eq!(o.code(), 1, "refused request: {o}");
    assert!(
        o.stderr.contains("nobody"),
        "refusal should say what was refused: {o}"
    );

    // PODROUTER_SOCKET stands in for --socket.
    let o = run_env(&[&ctl, "--json", "status"], &[("PODROUTER_SOCKET", &sock)]);
    assert!(o.ok(), "PODROUTER_SOCKET not honoured: {o}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["node_name"], node.name.as_str());
}
