//! Network policy through the real daemon and CLI: applying, listing,
//! showing and deleting NetworkPolicy files, labels and endpoints, what
//! survives a restart, and refusals that change nothing.
use std::fs;

use podrouter_e2e::netpol;
use podrouter_e2e::*;

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-same-ns
  namespace: x
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: x
spec:
  podSelector:
    matchLabels: {app: a}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {team: blue}
    ports:
    - port: http
"#;

#[test]
fn policy_cli_and_persistence() {
    if !require("policy_cli_and_persistence", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod(
        "pod-a",
        &[
            "--namespace",
            "x",
            "--name",
            "a",
            "--label",
            "app=a",
            "--port",
            "http=TCP/80",
        ],
    );
    let b = node.add_pod("pod-b", &["--namespace", "x", "--name", "b"]);
    let c = node.add_pod("pod-c", &["--namespace", "y", "--name", "c"]);
    let file = node.dir.join("policies.yaml");
    fs::write(&file, POLICIES).unwrap();
    let f = file.to_string_lossy().into_owned();
    let applied = node.ctl(&["policy", "apply", "-f", &f]);
    assert_eq!(applied, serde_json::json!(["x/allow-same-ns", "x/web"]));

    let list = node.ctl(&["policy", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    assert_eq!(
        list[0]["selects"],
        serde_json::json!(["pod-a", "pod-b"]),
        "{list:#}"
    );
    assert_eq!(list[1]["selects"], serde_json::json!(["pod-a"]), "{list:#}");

    // a's ingress: b (same namespace, any port); y is not team=blue yet.
    let show = node.ctl(&["policy", "show", "x/a"]);
    assert_eq!(show["ip"], a.ip.as_str());
    assert!(show["egress"].is_null(), "{show:#}");
    let peers = show["ingress"]["peers"].as_array().unwrap();
    let peer = |ip: &str| {
        peers
            .iter()
            .find(|p| p["peer"] == ip)
            .map(|p| p["ports"].clone())
    };
    assert_eq!(peer(&b.ip), Some("any".into()), "{show:#}");
    assert_eq!(peer(&c.ip), None, "{show:#}");
    // Labelling y team=blue lets c in on a's named port http (TCP 80).
    let labels = node.ctl(&["namespace", "label", "y", "team=blue"]);
    assert_eq!(labels["team"], "blue");
    let show = node.ctl(&["policy", "show", &a.ip]);
    let peers = show["ingress"]["peers"].as_array().unwrap();
    assert!(
        peers
            .iter()
            .any(|p| p["peer"] == c.ip.as_str() && p["ports"] == "tcp/80"),
        "{show:#}"
    );
    // Human output names the policies.
    let table = node.ctl_table(&["policy", "show", "pod-a"]).expect_ok();
    assert!(
        table
            .stdout
            .contains("ingress: isolated by x/allow-same-ns, x/web"),
        "{table}"
    );
    assert!(table.stdout.contains("egress: not isolated"), "{table}");

    // Another node's pod.
    let eps = node.dir.join("endpoints.yaml");
    fs::write(
        &eps,
        "- {ip: 10.244.9.5, node: node-2, namespace: x, name: d, labels: {app: d}}\n",
    )
    .unwrap();
    node.ctl(&["endpoint", "apply", "-f", &eps.to_string_lossy()]);
    let show = node.ctl(&["policy", "show", "pod-b"]);
    assert!(
        show["ingress"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer"] == "10.244.9.5"),
        "{show:#}"
    );
    node.ctl(&["pod", "label", "pod-b", "app=b", "tier=web"]);
    node.ctl(&["pod", "label", "pod-b", "tier-"]);

    // Refusals: the field's path, exit 1, nothing changed.
    let bad = node.dir.join("bad.yaml");
    fs::write(
        &bad,
        format!(
            "{POLICIES}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: x}}\nspec:\n  podSelector: {{}}\n  egress:\n  - to:\n    - ipBlock: {{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}\n"
        ),
    )
    .unwrap();
    let out = node.ctl_out(&["policy", "apply", "-f", &bad.to_string_lossy()]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(
        out.stderr
            .contains("document 3: spec.egress[0].to[0].ipBlock.except[0]"),
        "{out}"
    );
    assert_eq!(node.ctl(&["policy", "list"]).as_array().unwrap().len(), 2);
    let out = node.ctl_out(&["pod", "label", "pod-b", "app=-x-"]);
    assert_eq!(out.code(), 1, "{out}");
    let out = node.ctl_out(&["policy", "delete", "x/nope"]);
    assert_eq!(out.code(), 1, "{out}");
    let out = node.ctl_out(&["policy", "delete", "nope"]);
    assert_eq!(out.code(), 2, "{out}");

    // A restart keeps policies, labels and endpoints.
    node.stop_daemon("TERM");
    node.start_daemon();
    let list = node.ctl(&["policy", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    let eps = node.ctl(&["endpoint", "list"]);
    let b_ep = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "pod-b")
        .unwrap();
    assert_eq!(
        b_ep["identity"]["labels"],
        serde_json::json!({"app": "b"}),
        "{eps:#}"
    );
    assert!(
        eps.as_array()
            .unwrap()
            .iter()
            .any(|e| e["node"] == "node-2"),
        "{eps:#}"
    );
    let show = node.ctl(&["policy", "show", "x/a"]);
    assert!(
        show["ingress"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer"] == c.ip.as_str()),
        "namespace label lost: {show:#}"
    );
    node.ctl(&["policy", "delete", "x/web"]);
    node.ctl(&["endpoint", "delete", "10.244.9.5"]);
    assert_eq!(node.ctl(&["policy", "list"]).as_array().unwrap().len(), 1);
}

fn policy_doc(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

#[track_caller]
fn apply(node: &Node, tag: &str, text: &str) {
    let file = node.dir.join(&format!("{tag}.yaml"));
    fs::write(&file, text).unwrap();
    node.ctl(&["policy", "apply", "-f", &file.to_string_lossy()]);
}

#[track_caller]
fn reach(from: &Pod, to: &Pod, proto: &str, port: u16) -> bool {
    let t = format!("{proto}:{}:{port}", to.ip);
    netpol::probe(&from.ns, std::slice::from_ref(&t))[&t]
}

fn port_counter(node: &Node, pod: &str, key: &str) -> u64 {
    let c = node.counters();
    c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(&format!("@{pod}")))
        })
        .map(|p| p[key].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no port for {pod}: {c:#}"))
}

/// Default deny, allow from the same namespace, a deleted policy, and a
/// policy applied while a connection is open, on one node.
#[test]
fn policy_enforced_on_one_node() {
    if !require("policy_enforced_on_one_node", &["python3"]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod(
        "pod-a",
        &["--namespace", "x", "--name", "a", "--label", "pod=a"],
    );
    let b = node.add_pod(
        "pod-b",
        &["--namespace", "x", "--name", "b", "--label", "pod=b"],
    );
    let c = node.add_pod(
        "pod-c",
        &["--namespace", "y", "--name", "c", "--label", "pod=c"],
    );
    let _servers: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|p| netpol::start_server(&p.ns, &node.dir.join(&format!("server-{}.log", p.id))))
        .collect();
    assert!(
        reach(&c, &a, "tcp", 80) && reach(&c, &a, "udp", 81),
        "open before any policy"
    );

    // Default deny ingress in x.
    apply(
        &node,
        "deny",
        &policy_doc("x", "default-deny", "{podSelector: {}}"),
    );
    assert!(
        !reach(&c, &a, "tcp", 80),
        "y/c reached x/a through default deny"
    );
    assert!(
        !reach(&b, &a, "udp", 80),
        "x/b reached x/a through default deny"
    );
    assert!(
        reach(&a, &c, "tcp", 80),
        "x/a's egress is not isolated, y/c's ingress neither"
    );
    assert!(reach(&a, &c, "udp", 80));
    // The node itself is always let in.
    let from_node = node.exec(&[
        "python3",
        "-c",
        "import socket; socket.create_connection(('ADDR', 80), timeout=2).close()"
            .replace("ADDR", &a.ip)
            .as_str(),
    ]);
    assert!(
        from_node.ok(),
        "the node could not reach its pod: {from_node}"
    );
    assert!(port_counter(&node, "pod-a", "policy_denied_ingress") >= 2);
    let c0 = node.counters();
    assert!(num(&c0, "/drops/policy_denied_ingress") >= 2, "{c0:#}");

    // Allow from the same namespace.
    apply(
        &node,
        "same",
        &policy_doc(
            "x",
            "allow-same-ns",
            "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
        ),
    );
    assert!(
        reach(&b, &a, "tcp", 81) && reach(&b, &a, "udp", 80),
        "same namespace refused"
    );
    assert!(!reach(&c, &a, "tcp", 80), "other namespace let in");

    // Deleted: open again.
    node.ctl(&["policy", "delete", "x/default-deny"]);
    node.ctl(&["policy", "delete", "x/allow-same-ns"]);
    assert!(reach(&c, &a, "tcp", 80), "still closed after delete");

    // A connection open when the policy arrives keeps going; a new one
    // is refused.
    let log = node.dir.join("hold.log");
    let mut hold = netpol::hold_connection(&c.ns, &a.ip, 80, 4, &log);
    assert!(
        wait_until(std::time::Duration::from_secs(5), || fs::read_to_string(
            &log
        )
        .is_ok_and(|s| s.contains("connected"))),
        "hold never connected"
    );
    apply(
        &node,
        "deny2",
        &policy_doc("x", "default-deny", "{podSelector: {}}"),
    );
    assert!(
        !reach(&c, &a, "tcp", 80),
        "a new connection passed the policy"
    );
    let status = hold.child.wait().unwrap();
    let said = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the open connection was cut: {said}");
}
