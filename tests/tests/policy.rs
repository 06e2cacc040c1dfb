//! Network policy through the real daemon and CLI: applying, listing,
//! showing and deleting NetworkPolicy files, labels and endpoints, what
//! survives a restart, and refusals that change nothing.
use std::fs;

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
