//! The built-in load balancer's commands through the real daemon and CLI:
//! `service apply` of what `kubectl get -o yaml` prints (a `List`), `service
//! list` and `delete`, a refused file that changes nothing (exit 1, the
//! field's path on stderr), usage errors (exit 2), and the services
//! surviving a restart of the daemon.
use std::fs;

use podrouter_e2e::*;

const SERVICES: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: kube-dns, namespace: kube-system, uid: 1b2c, resourceVersion: "7"}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10]
    ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
    selector: {k8s-app: kube-dns}
    sessionAffinity: None
    type: ClusterIP
  status: {loadBalancer: {}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: kube-dns-x7
    namespace: kube-system
    labels: {kubernetes.io/service-name: kube-dns}
  addressType: IPv4
  endpoints:
  - addresses: [10.244.0.7]
    conditions: {ready: true}
  - addresses: [10.244.0.8]
    conditions: {ready: false}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
"#;

#[test]
fn service_cli_and_persistence() {
    if !require("service_cli_and_persistence", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let file = node.dir.join("services.yaml");
    fs::write(&file, SERVICES).unwrap();
    let applied = node.ctl(&["service", "apply", "-f", &file.to_string_lossy()]);
    assert_eq!(
        applied,
        serde_json::json!([
            "service kube-system/kube-dns",
            "endpointslice kube-system/kube-dns-x7"
        ])
    );
    let check = |node: &Node| {
        let list = node.ctl(&["service", "list"]);
        let svc = &list[0];
        assert_eq!(svc["cluster_ip"], "10.96.0.10", "{list:#}");
        let ports = svc["ports"].as_array().expect("ports");
        assert_eq!(ports.len(), 2, "{list:#}");
        for p in ports {
            assert_eq!(
                p["backends"],
                serde_json::json!([{"ip": "10.244.0.7", "port": 53, "packets": 0, "flows": 0}]),
                "only the ready endpoint: {list:#}"
            );
        }
    };
    check(&node);
    let table = node.ctl_table(&["service", "list"]);
    assert!(
        table.stdout.contains("kube-system/kube-dns") && table.stdout.contains("10.244.0.7:53"),
        "{table}"
    );

    // A file with a bad field: refused with its path, nothing changed.
    let bad = node.dir.join("bad.yaml");
    fs::write(
        &bad,
        SERVICES.replace(
            "port: 53, protocol: UDP, targetPort",
            "port: 0, protocol: UDP, targetPort",
        ),
    )
    .unwrap();
    let out = node.ctl_out(&["service", "apply", "-f", &bad.to_string_lossy()]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(
        out.stderr
            .contains("document 1: items[0].spec.ports[0].port"),
        "{out}"
    );
    check(&node);
    let out = node.ctl_out(&["service", "delete", "kube-system/nope"]);
    assert_eq!(out.code(), 1, "{out}");
    let out = node.ctl_out(&["service", "delete", "nope"]);
    assert_eq!(out.code(), 2, "{out}");

    // A restart keeps them.
    node.stop_daemon("TERM");
    node.start_daemon();
    check(&node);
    node.ctl(&["service", "delete", "kube-system/kube-dns"]);
    assert_eq!(node.ctl(&["service", "list"]), serde_json::json!([]));
    node.stop_daemon("TERM");
    node.start_daemon();
    assert_eq!(node.ctl(&["service", "list"]), serde_json::json!([]));
}
