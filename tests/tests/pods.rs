//! Attaching and detaching pods: what the pod's namespace looks like, what
//! the daemon lists, what it refuses.
use podrouter_e2e::*;

/// `ip -j addr show dev IF` in a pod, parsed (the one interface object).
#[track_caller]
fn link_json(pod: &Pod, ifname: &str) -> Value {
    let out = pod
        .exec(&["ip", "-j", "addr", "show", "dev", ifname])
        .expect_ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v[0].clone()
}

#[track_caller]
fn assert_pod_interface(pod: &Pod, ifname: &str, ip: &str, mtu: u64) {
    let l = link_json(pod, ifname);
    assert_eq!(l["ifname"], ifname, "{l:#}");
    assert_eq!(l["mtu"], mtu, "interface MTU: {l:#}");
    assert_eq!(
        l["address"], pod.info["mac"],
        "interface MAC must be the one attach reported: {l:#}"
    );
    let flags: Vec<&str> = l["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(flags.contains(&"UP"), "interface not up: {l:#}");
    // No qdisc between the pod's stack and the router (a veth's default;
    // a TAP came up with pfifo_fast, which never holds a frame there).
    assert_eq!(l["qdisc"], "noqueue", "interface qdisc: {l:#}");
    assert!(
        flags.contains(&"LOWER_UP"),
        "no carrier (router not holding the TAP): {l:#}"
    );
    let inet: Vec<&Value> = l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(inet.len(), 1, "exactly one IPv4 address expected: {l:#}");
    assert_eq!(inet[0]["local"], ip, "{l:#}");
    assert_eq!(inet[0]["prefixlen"], 32, "pod address must be a /32: {l:#}");

    let out = pod.exec(&["ip", "-j", "route", "show"]).expect_ok();
    let routes: Value = serde_json::from_str(&out.stdout).unwrap();
    let routes = routes.as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == GATEWAY_IP && r["dev"] == ifname && r["scope"] == "link"),
        "missing `{GATEWAY_IP} dev {ifname} scope link`: {out}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == GATEWAY_IP && r["dev"] == ifname),
        "missing `default via {GATEWAY_IP} dev {ifname}`: {out}"
    );
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[track_caller]
fn route_for<'a>(routes: &'a Value, prefix: &str) -> Option<&'a Value> {
    routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == prefix)
}

#[test]
fn attach_sets_address_routes_and_mtu() {
    if !require("attach_sets_address_routes_and_mtu", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert_eq!(a.ip, "10.244.0.1", "first usable address of {POD_CIDR}");
    assert_eq!(b.ip, "10.244.0.2", "next free address");
    for p in [&a, &b] {
        let i = &p.info;
        assert_eq!(i["ifname"], "eth0", "{i:#}");
        assert_eq!(i["mtu"], 1480, "default pod MTU: {i:#}");
        assert_eq!(i["netns"], p.netns_path.as_str(), "{i:#}");
        assert!(i["mac"].as_str().is_some_and(is_mac), "mac: {i:#}");
        assert_ne!(
            i["mac"], ROUTER_MAC,
            "the pod must not get the router's MAC: {i:#}"
        );
        assert!(i["port"].is_u64() && i["worker"].is_u64(), "{i:#}");
        assert_pod_interface(p, "eth0", &p.ip, 1480);
    }
    assert_ne!(a.info["port"], b.info["port"], "two pods share a port");
    // A persistent TAP with a virtio-net header (offloads), as the design
    // says; with afxdp, a veth whose node end has our XDP program.
    let want: &[&str] = if backend() == "afxdp" {
        &["veth"]
    } else {
        &["tun type tap", "vnet_hdr on", "persist on"]
    };
    for p in [&a, &b] {
        let d = p.exec(&["ip", "-d", "link", "show", "eth0"]).expect_ok();
        for want in want {
            assert!(d.stdout.contains(want), "pod interface lacks `{want}`: {d}");
        }
    }
    if backend() == "afxdp" {
        let status = node.ctl(&["status"]);
        for port in status["ports"].as_array().expect("ports") {
            let end = port["xdp_ifname"].as_str().expect("node end");
            let d = node.ns.exec(&["ip", "-d", "link", "show", end]).expect_ok();
            assert!(
                d.stdout.contains("podrouter_xsk"),
                "{end} has no XDP program: {d}"
            );
        }
    }

    let pods = node.ctl(&["pods"]);
    let listed: Vec<(String, String)> = pods
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(listed.contains(&("pod-a".into(), a.ip.clone())), "{pods:#}");
    assert!(listed.contains(&("pod-b".into(), b.ip.clone())), "{pods:#}");
    assert_eq!(listed.len(), 2, "{pods:#}");

    let routes = node.ctl(&["routes"]);
    for p in [&a, &b] {
        let r = route_for(&routes, &format!("{}/32", p.ip))
            .unwrap_or_else(|| panic!("no /32 route for {}: {routes:#}", p.ip));
        assert_eq!(r["next_hop"], "local", "{r:#}");
    }
    let status = node.ctl(&["status"]);
    assert_eq!(status["pods"], 2, "{status:#}");
}

#[test]
fn attach_with_explicit_ip_ifname_and_mtu() {
    if !require("attach_with_explicit_ip_ifname_and_mtu", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let jumbo = jumbo_mtu();
    let mtu = jumbo.to_string();
    let p = node.add_pod(
        "big",
        &["--ip", "10.244.0.100", "--ifname", "net1", "--mtu", &mtu],
    );
    assert_eq!(p.ip, "10.244.0.100");
    assert_eq!(p.info["ifname"], "net1");
    assert_eq!(p.info["mtu"], jumbo);
    assert_pod_interface(&p, "net1", "10.244.0.100", jumbo.into());
    let none = p.exec(&["ip", "link", "show", "eth0"]);
    assert!(
        !none.ok(),
        "no eth0 should exist when net1 was asked for: {none}"
    );
    if backend() == "afxdp" {
        // Above the backend's largest MTU (9000): refused plainly.
        let ns = Netns::new("pod");
        let out = node.ctl_out(&["attach", "huge", "--netns", &ns.path(), "--mtu", "9001"]);
        assert!(
            !out.ok() && out.text().contains("above the afxdp backend's"),
            "{out}"
        );
    }
    // Automatic allocation skips the address that was taken by hand.
    let q = node.add_pod("auto", &[]);
    assert_eq!(q.ip, "10.244.0.1");
    assert_pod_interface(&q, "eth0", "10.244.0.1", 1480);
}

#[test]
fn small_block_allocates_usable_addresses_then_refuses() {
    if !require("small_block_allocates_usable_addresses_then_refuses", &[]) {
        return;
    }
    let cfg = NodeConfig {
        pod_cidrs: vec!["10.244.7.0/30".into()],
        ..NodeConfig::default()
    };
    let mut node = Node::start(cfg);
    assert_eq!(
        node.ctl(&["status"])["free_addresses"],
        2,
        "a /30 has two usable addresses"
    );
    let a = node.add_pod("a", &[]);
    let b = node.add_pod("b", &[]);
    assert_eq!((a.ip.as_str(), b.ip.as_str()), ("10.244.7.1", "10.244.7.2"));
    assert_eq!(node.ctl(&["status"])["free_addresses"], 0);
    let c = node.empty_pod_ns();
    let out = node.ctl_out(&["attach", "c", "--netns", &c.netns_path]);
    assert_eq!(
        out.code(),
        1,
        "attach with the block exhausted must be refused: {out}"
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "refusal without a message: {out}"
    );
    let links = c.exec(&["ip", "-o", "link", "show"]).expect_ok();
    assert_eq!(
        links.stdout.lines().count(),
        1,
        "refused attach left an interface behind: {links}"
    );
}

#[test]
fn detach_removes_interface_and_route() {
    if !require("detach_removes_interface_and_route", &["ping"]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(
        &b.ns,
        &a.ip,
        std::time::Duration::from_secs(5)
    ));

    let v = node.ctl(&["detach", "pod-a"]);
    assert_eq!(v["id"], "pod-a", "{v:#}");
    // The interface's removal finishes just after the answer.
    assert!(
        wait_until(std::time::Duration::from_secs(2), || !a
            .exec(&["ip", "link", "show", "eth0"])
            .ok()),
        "eth0 still exists in the detached pod"
    );
    let pods = node.ctl(&["pods"]);
    assert!(
        pods.as_array().unwrap().iter().all(|p| p["id"] != "pod-a"),
        "detached pod still listed: {pods:#}"
    );
    let routes = node.ctl(&["routes"]);
    assert!(
        route_for(&routes, "10.244.0.1/32").is_none(),
        "route of the detached pod remains: {routes:#}"
    );
    let p = ping(&b.ns, &a.ip, &["-c", "1", "-W", "1"]);
    assert_eq!(p.received, 0, "detached pod still answers:\n{}", p.text);
    assert_eq!(node.ctl(&["status"])["pods"], 1);

    // The id and the namespace can be attached again.
    let again = node.ctl(&["attach", "pod-a", "--netns", &a.netns_path]);
    assert_eq!(again["id"], "pod-a");
    let ip = again["ip"].as_str().unwrap();
    assert!(
        ping_until_reply(&b.ns, ip, std::time::Duration::from_secs(5)),
        "re-attached pod unreachable"
    );
}

#[test]
fn refusals_exit_1_and_change_nothing() {
    if !require("refusals_exit_1_and_change_nothing", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let spare = node.empty_pod_ns();
    let node_netns = node.ns.path();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "duplicate id",
            vec!["attach", "pod-a", "--netns", &spare.netns_path],
        ),
        (
            "address outside pod_cidrs",
            vec![
                "attach",
                "x1",
                "--netns",
                &spare.netns_path,
                "--ip",
                "10.99.0.1",
            ],
        ),
        (
            "address taken",
            vec!["attach", "x2", "--netns", &spare.netns_path, "--ip", &a.ip],
        ),
        (
            "network address",
            vec![
                "attach",
                "x3",
                "--netns",
                &spare.netns_path,
                "--ip",
                "10.244.0.0",
            ],
        ),
        (
            "broadcast address",
            vec![
                "attach",
                "x4",
                "--netns",
                &spare.netns_path,
                "--ip",
                "10.244.0.255",
            ],
        ),
        (
            "no such netns",
            vec![
                "attach",
                "x5",
                "--netns",
                "/run/netns/podrouter-e2e-does-not-exist",
            ],
        ),
        (
            "the node's own netns (would move a pod TAP into the node)",
            vec!["attach", "x6", "--netns", &node_netns],
        ),
        ("detach unknown id", vec!["detach", "nobody"]),
    ];
    for (what, args) in cases {
        let out = node.ctl_out(&args);
        assert_eq!(
            out.code(),
            1,
            "{what}: daemon must refuse with exit 1: {out}"
        );
        assert!(
            !out.stderr.trim().is_empty(),
            "{what}: refusal without a message: {out}"
        );
    }
    let links = spare.exec(&["ip", "-o", "link", "show"]).expect_ok();
    assert_eq!(
        links.stdout.lines().count(),
        1,
        "a refused attach left an interface: {links}"
    );
    let pods = node.ctl(&["pods"]);
    assert_eq!(pods.as_array().unwrap().len(), 1, "{pods:#}");
    assert_pod_interface(&a, "eth0", &a.ip, 1480);
}
