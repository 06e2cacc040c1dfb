//! Kubernetes Services through podrouter with kube-proxy's iptables rules
//! in the node's kernel: two nodes over IPIP, a client pod and a backend on
//! node 0, a backend on node 1, each backend serving TCP on port 80 and a
//! UDP request/response service on port 53 (as the cluster DNS does). On
//! node 0, the nat table kube-proxy's iptables mode writes: the ClusterIP
//! 10.96.0.10 DNATed to either backend at random (`-m statistic --mode
//! random --probability 0.5`), a NodePort for the node's own addresses,
//! masquerade for traffic from outside the cluster CIDR and hairpins.
//!
//! Proves: TCP and UDP to the ClusterIP from the client pod reach both
//! backends (the one on the same node and the one behind the tunnel), the
//! backends see the client's own address (DNAT only), and the flow table
//! counted the NATed flows and the replies it steered to the host port;
//! the NodePort works from the node's own address to both backends.
//! Without the steering (the router before issue 17) every connection
//! through the ClusterIP times out: the backend's reply goes pod to pod and
//! never meets the node's conntrack.
use std::time::Duration;

use podrouter_e2e::multinode::*;
use podrouter_e2e::*;

const CLUSTER_IP: &str = "10.96.0.10";
const NODE_PORT: u16 = 30080;
const SETTLE: Duration = Duration::from_secs(10);

/// A backend: TCP on port 80 answers each connection with one line
/// `NAME PEER-ADDRESS`; UDP on port 53 answers each datagram the same way.
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 53))
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(("%s %s\n" % (name, peer[0])).encode(), peer)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 80))
t.listen(128)
while True:
    c, peer = t.accept()
    try:
        c.sendall(("%s %s\n" % (name, peer[0])).encode())
    finally:
        c.close()
"#;

/// A client: `PROTO HOST PORT WANT MAX_TRIES MAX_FAILS`. Asks (one new
/// connection or one new socket per try, so each is a new flow the node's
/// NAT balances) until WANT distinct backends answered, MAX_TRIES tries or
/// MAX_FAILS failures; prints one JSON object: answers per reply line,
/// tries, failures and the first error.
const CLIENT: &str = r#"
import json, socket, sys
proto, host, port, want, tries, fails = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
answers, n, failed, first_error = {}, 0, 0, None
while n < tries and failed < fails and len(answers) < want:
    n += 1
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            line = s.makefile().readline().strip()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(b"q", (host, port))
            line = s.recvfrom(2048)[0].decode().strip()
        s.close()
        if not line:
            raise OSError("empty answer")
        answers[line] = answers.get(line, 0) + 1
    except OSError as e:
        failed += 1
        first_error = first_error or repr(e)
print(json.dumps({"answers": answers, "tries": n, "failures": failed, "first_error": first_error}))
"#;

/// kube-proxy's iptables-mode nat rules (as `iptables-save` shows them)
/// for one Service with a TCP port 80 (NodePort `NODE_PORT`) and a UDP
/// port 53, `backends` its ready endpoints.
fn kube_proxy_rules(backends: &[&str]) -> String {
    let mut r = String::from(
        "*nat\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n\
         :KUBE-SVC-HTTP - [0:0]\n\
         :KUBE-EXT-HTTP - [0:0]\n\
         :KUBE-SVC-DNS - [0:0]\n",
    );
    for i in 0..backends.len() {
        r += &format!(":KUBE-SEP-HTTP{i} - [0:0]\n:KUBE-SEP-DNS{i} - [0:0]\n");
    }
    r += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
          -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
          -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
          -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
          -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
          -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
          -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n";
    r += &format!(
        "-A KUBE-SERVICES -d {CLUSTER_IP}/32 -p tcp -m comment --comment \"default/svc:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-HTTP\n\
         -A KUBE-SERVICES -d {CLUSTER_IP}/32 -p udp -m comment --comment \"default/svc:dns cluster IP\" -m udp --dport 53 -j KUBE-SVC-DNS\n\
         -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-NODEPORTS -p tcp -m comment --comment \"default/svc:http\" -m tcp --dport {NODE_PORT} -j KUBE-EXT-HTTP\n\
         -A KUBE-EXT-HTTP -m comment --comment \"masquerade traffic for default/svc:http external destinations\" -j KUBE-MARK-MASQ\n\
         -A KUBE-EXT-HTTP -j KUBE-SVC-HTTP\n\
         -A KUBE-SVC-HTTP ! -s 10.244.0.0/16 -d {CLUSTER_IP}/32 -p tcp -m comment --comment \"default/svc:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
         -A KUBE-SVC-DNS ! -s 10.244.0.0/16 -d {CLUSTER_IP}/32 -p udp -m comment --comment \"default/svc:dns cluster IP\" -m udp --dport 53 -j KUBE-MARK-MASQ\n"
    );
    // As kube-proxy spreads n endpoints: 1/n, then 1/(n-1) of the rest, ...
    for (i, b) in backends.iter().enumerate() {
        let left = backends.len() - i;
        let pick = if left > 1 {
            format!(
                "-m statistic --mode random --probability {:.11} ",
                1.0 / left as f64
            )
        } else {
            String::new()
        };
        for (svc, proto, port) in [("HTTP", "tcp", 80), ("DNS", "udp", 53)] {
            r += &format!(
                "-A KUBE-SVC-{svc} -m comment --comment \"default/svc -> {b}:{port}\" {pick}-j KUBE-SEP-{svc}{i}\n\
                 -A KUBE-SEP-{svc}{i} -s {b}/32 -m comment --comment \"default/svc\" -j KUBE-MARK-MASQ\n\
                 -A KUBE-SEP-{svc}{i} -p {proto} -m comment --comment \"default/svc\" -m {proto} -j DNAT --to-destination {b}:{port}\n"
            );
        }
    }
    r + "COMMIT\n"
}

/// What [`CLIENT`] printed.
struct Asked {
    answers: Vec<(String, u64)>,
    json: Value,
}

impl Asked {
    /// How many answers came from the backend called `name`.
    fn from(&self, name: &str) -> u64 {
        self.answers
            .iter()
            .filter(|(l, _)| l.split(' ').next() == Some(name))
            .map(|(_, n)| n)
            .sum()
    }

    fn peers(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|(l, _)| l.split(' ').nth(1).map(str::to_string))
            .collect()
    }
}

/// Runs [`CLIENT`] in `ns` until `want` backends answered (at most 40
/// tries, stopping after 6 failures).
fn ask(ns: &str, proto: &str, host: &str, port: u16, want: u32) -> Asked {
    let (port, want) = (port.to_string(), want.to_string());
    let out = run_in(
        ns,
        &[
            "python3", "-c", CLIENT, proto, host, &port, &want, "40", "6",
        ],
    );
    assert!(out.ok(), "client failed: {out}");
    let json: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {out}"));
    let answers = json["answers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Asked { answers, json }
}

/// Starts [`SERVER`] in each backend (named after its pod id), waits until
/// it listens and the client reaches it, and checks that each answers
/// directly with the client's address. The servers live as long as the
/// returned handles.
fn serve(client: &Pod, backends: &[&Pod]) -> Vec<Bg> {
    let servers: Vec<Bg> = backends
        .iter()
        .map(|pod| {
            spawn_in(
                &pod.ns,
                &format!("server {}", pod.id),
                &["python3", "-c", SERVER, &pod.id],
                None,
            )
        })
        .collect();
    for pod in backends {
        let listening = wait_until(Duration::from_secs(10), || {
            let t = pod.exec(&["ss", "-ltnH", "sport = :80"]).stdout;
            let u = pod.exec(&["ss", "-lunH", "sport = :53"]).stdout;
            t.contains(":80") && u.contains(":53")
        });
        assert!(listening, "the server in {} never listened", pod.id);
        assert!(
            settle(&client.ns, &pod.ip, SETTLE),
            "client never reached {} ({})",
            pod.id,
            pod.ip
        );
    }
    // Directly, both backends answer with the client's address.
    for pod in backends {
        let a = ask(&client.ns, "tcp", &pod.ip, 80, 1);
        assert_eq!(a.from(&pod.id), 1, "{} directly: {}", pod.id, a.json);
    }
    servers
}

const TOOLS: &[&str] = &[
    "ping",
    "ss",
    "python3",
    "iptables-restore",
    "iptables-save",
    "tc",
];

#[test]
fn cluster_ip_and_node_port_with_kube_proxy_rules() {
    if require("cluster_ip_and_node_port_with_kube_proxy_rules", TOOLS) {
        services_through_the_node(1);
    }
}

/// The same with two workers per node: the host port, the uplink and the
/// pods are spread over them (each new port goes to the worker with the
/// fewest: host port 0, uplink 1, client 0, local backend 1), so a flow is
/// recorded by one worker and its replies steered by the other.
#[test]
fn cluster_ip_with_two_workers() {
    if require("cluster_ip_with_two_workers", TOOLS) {
        services_through_the_node(2);
    }
}

fn services_through_the_node(workers: usize) {
    let mut c = Cluster::start_with("always", &[0, 0], &format!("workers = {workers}\n"));
    let client = c.nodes[0].add_pod("client", &[]);
    let b0 = c.nodes[0].add_pod("b0", &[]);
    let b1 = c.nodes[1].add_pod("b1", &[]);
    if workers == 2 {
        assert_eq!(
            (client.info["worker"].as_u64(), b0.info["worker"].as_u64()),
            (Some(0), Some(1)),
            "the pods are not on the workers this test means to cross: {} {}",
            client.info,
            b0.info
        );
    }
    let _servers = serve(&client, &[&b0, &b1]);

    let node0 = &c.nodes[0];
    let rules_file = TempDir::new("kube-proxy");
    let rules = rules_file.join("rules");
    std::fs::write(&rules, kube_proxy_rules(&[&b0.ip, &b1.ip])).expect("write rules");
    node0
        .ns
        .exec(&["iptables-restore", "--noflush", &rules.to_string_lossy()])
        .expect_ok();
    node0.ns.exec(&["iptables-save", "-t", "nat"]).expect_ok();
    let before = node0.counters();

    // TCP and UDP through the ClusterIP, from the client pod: both
    // backends, and each sees the client's own address (DNAT only).
    for proto in ["tcp", "udp"] {
        let port = if proto == "tcp" { 80 } else { 53 };
        let a = ask(&client.ns, proto, CLUSTER_IP, port, 2);
        say(&format!("{proto} to {CLUSTER_IP}:{port}: {}", a.json));
        for b in ["b0", "b1"] {
            assert!(
                a.from(b) > 0,
                "{proto} through the ClusterIP never reached {b}: {}\n{}",
                a.json,
                node0.ns.exec(&["iptables-save", "-c", "-t", "nat"]).stdout
            );
        }
        assert!(
            a.peers().iter().all(|p| *p == client.ip),
            "{proto}: a backend saw another source than the client {}: {}",
            client.ip,
            a.json
        );
    }
    let after = node0.counters();
    let inserted = delta(&before, &after, "/flows/inserted");
    let steered = delta(&before, &after, "/flows/steered_to_host");
    say(&format!(
        "node 0 flow table: {inserted} flows inserted, {steered} packets steered to the host port: {}",
        after["flows"]
    ));
    assert!(inserted >= 4, "flows NATed by the node: {}", after["flows"]);
    assert!(steered >= 4, "replies steered: {}", after["flows"]);
    assert_eq!(num(&after, "/flows/full"), 0, "{}", after["flows"]);
    // What the node's NAT sends back out of podrouter0 is read in the
    // round that wrote to it (one worker: it reads the host port's only
    // queue; with two, the kernel picks the queue).
    let inline = delta(&before, &after, "/host_inline");
    say(&format!(
        "node 0: {inline} frames read back from the host port inline"
    ));
    if workers == 1 {
        assert!(inline >= 4, "no frame read back inline: {after}");
    }
    // The host port has no qdisc in the way (the kernel gave it pfifo_fast).
    let qdisc = node0.ns.exec(&["tc", "qdisc", "show", "dev", "podrouter0"]);
    assert!(
        qdisc.stdout.contains("qdisc noqueue "),
        "podrouter0's qdisc: {}",
        qdisc.stdout
    );

    // The NodePort from the node's own address: masqueraded by the node,
    // both backends.
    let a = ask(node0.ns.name(), "tcp", &node0.ip, NODE_PORT, 2);
    say(&format!("tcp to {}:{NODE_PORT}: {}", node0.ip, a.json));
    for b in ["b0", "b1"] {
        assert!(a.from(b) > 0, "the NodePort never reached {b}: {}", a.json);
    }
}

/// The Service as `kubectl get -o yaml` would print it (and its
/// EndpointSlice), for the built-in load balancer: `affinity` adds
/// `sessionAffinity: ClientIP`; `ready` says whether the endpoints are.
fn service_yaml(backends: &[&str], affinity: bool, ready: bool) -> String {
    let affinity = if affinity {
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n"
    } else {
        "  sessionAffinity: None\n"
    };
    let endpoints: String = backends
        .iter()
        .map(|b| format!("  - addresses: [{b}]\n    conditions: {{ready: {ready}}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: default}}\nspec:\n  \
         clusterIP: {CLUSTER_IP}\n  type: ClusterIP\n  ports:\n  \
         - {{name: http, port: 80, protocol: TCP, targetPort: 80}}\n  \
         - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}\n{affinity}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-x1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\n\
         endpoints:\n{endpoints}ports:\n- {{name: http, port: 80, protocol: TCP}}\n\
         - {{name: dns, port: 53, protocol: UDP}}\n"
    )
}

/// One connected socket per protocol to the ClusterIP; prints the name of
/// the error each got (`ok` if it got an answer).
const REFUSED: &str = r#"
import socket, sys
host = sys.argv[1]
for proto, port in (("tcp", 80), ("udp", 53)):
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            s.makefile().readline()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.connect((host, port))
            s.send(b"q")
            s.recv(2048)
        print(proto, "ok")
    except OSError as e:
        print(proto, type(e).__name__)
"#;

/// The built-in load balancer (issue 17 part 2) and no iptables rule at
/// all: TCP and UDP through the ClusterIP reach the backend on the node
/// and the one behind the tunnel, with the client's own address; ClientIP
/// affinity keeps one client on one backend; without a ready backend TCP
/// is reset and UDP gets port unreachable; after `service delete` the
/// ClusterIP is no longer answered.
#[test]
fn cluster_ip_with_the_built_in_balancer() {
    if !require("cluster_ip_with_the_built_in_balancer", TOOLS) {
        return;
    }
    let mut c = Cluster::start("always", &[0, 0]);
    let client = c.nodes[0].add_pod("client", &[]);
    let b0 = c.nodes[0].add_pod("b0", &[]);
    let b1 = c.nodes[1].add_pod("b1", &[]);
    let _servers = serve(&client, &[&b0, &b1]);
    let node0 = &c.nodes[0];
    let nat = node0.ns.exec(&["iptables-save", "-t", "nat"]).stdout;
    assert!(
        !nat.contains("DNAT"),
        "node 0 has NAT rules of its own:\n{nat}"
    );
    let dir = TempDir::new("lb");
    let apply = |yaml: String| {
        let f = dir.join("svc.yaml");
        std::fs::write(&f, yaml).expect("write service");
        node0.ctl(&["service", "apply", "-f", &f.to_string_lossy()])
    };
    let applied = apply(service_yaml(&[&b0.ip, &b1.ip], false, true));
    say(&format!("applied: {applied}"));
    let before = node0.counters();

    for proto in ["tcp", "udp"] {
        let port = if proto == "tcp" { 80 } else { 53 };
        let a = ask(&client.ns, proto, CLUSTER_IP, port, 2);
        say(&format!("{proto} to {CLUSTER_IP}:{port}: {}", a.json));
        for b in ["b0", "b1"] {
            assert!(
                a.from(b) > 0,
                "{proto} through the built-in balancer never reached {b}: {}\n{}",
                a.json,
                node0.ctl_out(&["service", "list"]).text()
            );
        }
        assert_eq!(a.json["failures"], 0, "{proto}: {}", a.json);
        assert!(
            a.peers().iter().all(|p| *p == client.ip),
            "{proto}: a backend saw another source than the client {}: {}",
            client.ip,
            a.json
        );
    }
    let after = node0.counters();
    assert_eq!(
        delta(&before, &after, "/flows/steered_to_host"),
        0,
        "the node's kernel took part: {}",
        after["flows"]
    );
    let list = node0.ctl(&["service", "list"]);
    say(&format!("service list: {list}"));
    for port in list[0]["ports"].as_array().expect("ports") {
        let backends = port["backends"].as_array().expect("backends");
        assert_eq!(backends.len(), 2, "{port}");
        for b in backends {
            assert!(num(b, "/flows") > 0 && num(b, "/packets") > 0, "{port}");
        }
    }

    // ClientIP affinity: 20 new connections, one backend.
    apply(service_yaml(&[&b0.ip, &b1.ip], true, true));
    let a = ask(&client.ns, "tcp", CLUSTER_IP, 80, 2);
    say(&format!("tcp with ClientIP affinity: {}", a.json));
    assert_eq!(a.answers.len(), 1, "affinity not honoured: {}", a.json);
    assert_eq!(a.json["tries"], 40, "{}", a.json);

    // No ready backend: refused at once, as kube-proxy does.
    apply(service_yaml(&[&b0.ip, &b1.ip], false, false));
    let out = run_in(&client.ns, &["python3", "-c", REFUSED, CLUSTER_IP]);
    assert!(out.ok(), "{out}");
    assert_eq!(
        out.stdout.trim(),
        "tcp ConnectionRefusedError\nudp ConnectionRefusedError",
        "{out}"
    );
    let refused = node0.counters();
    assert!(
        num(&refused, "/drops/service_no_backend") >= 2,
        "{}",
        refused["drops"]
    );

    // Deleted: the ClusterIP is nobody's.
    node0.ctl(&["service", "delete", "default/svc"]);
    assert_eq!(node0.ctl(&["service", "list"]), serde_json::json!([]));
    let out = run_in(&client.ns, &["python3", "-c", REFUSED, CLUSTER_IP]);
    assert!(
        !out.stdout.contains("ok") && !out.stdout.contains("ConnectionRefused"),
        "the deleted service still answers: {out}"
    );
}

/// The Service of [`the_built_in_balancer_follows_its_backends`]: TCP 80
/// and UDP 53 as above, and UDP 54 to port 5454 where no backend
/// listens; `endpoints` are (address, nodeName); `spec_extra` is added to
/// the spec (one `  key: value` line).
fn lb_yaml(endpoints: &[(&str, &str)], spec_extra: &str) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(ip, node)| format!("- addresses: [{ip}]\n  nodeName: {node}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: default}}\nspec:\n  \
         clusterIP: {CLUSTER_IP}\n  ports:\n  \
         - {{name: http, port: 80, protocol: TCP, targetPort: 80}}\n  \
         - {{name: dns, port: 53, protocol: UDP, targetPort: 53}}\n  \
         - {{name: nolisten, port: 54, protocol: UDP, targetPort: 5454}}\n{spec_extra}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-x1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: svc}}\naddressType: IPv4\n\
         endpoints:\n{endpoints}ports:\n- {{name: http, port: 80, protocol: TCP}}\n\
         - {{name: dns, port: 53, protocol: UDP}}\n- {{name: nolisten, port: 5454, protocol: UDP}}\n"
    )
}

/// `HOST PORT N`: N connected UDP sockets to HOST:PORT, each sends one
/// datagram and waits for an answer; prints one line each: `ok` or the
/// name of the error.
const UDP_TRIES: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((host, port))
    try:
        s.send(b"q")
        s.recv(2048)
        print("ok")
    except OSError as e:
        print(type(e).__name__)
    s.close()
"#;

/// `HOST SPORT`: one datagram to HOST:53 from source port SPORT (the same
/// flow every run); prints the name of the backend that answered.
const UDP_FROM_PORT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.settimeout(2)
s.connect((sys.argv[1], 53))
s.send(b"q")
print(s.recv(2048).decode().split()[0])
"#;

/// The built-in load balancer as its backends change (issue 17 part 2,
/// no iptables rule): a backend's ICMP port unreachable reaches the
/// client translated back to the ClusterIP, so its socket gets
/// `ECONNREFUSED` (from the backend on the same node and from the one
/// behind the tunnel); a UDP flow whose backend leaves the EndpointSlice
/// moves to the backend left at its next datagram, counted as cut; a
/// deleted Service's flows leave the flow table; `internalTrafficPolicy:
/// Local` balances to this node's endpoints only and refuses when it has
/// none.
#[test]
fn the_built_in_balancer_follows_its_backends() {
    if !require("the_built_in_balancer_follows_its_backends", TOOLS) {
        return;
    }
    let mut c = Cluster::start("always", &[0, 0]);
    let client = c.nodes[0].add_pod("client", &[]);
    let b0 = c.nodes[0].add_pod("b0", &[]);
    let b1 = c.nodes[1].add_pod("b1", &[]);
    let _servers = serve(&client, &[&b0, &b1]);
    let node0 = &c.nodes[0];
    let dir = TempDir::new("lb-follow");
    let apply = |yaml: String| {
        let f = dir.join("svc.yaml");
        std::fs::write(&f, yaml).expect("write service");
        node0.ctl(&["service", "apply", "-f", &f.to_string_lossy()])
    };
    let port_info = |protocol: &str, port: u64| -> Value {
        let list = node0.ctl(&["service", "list"]);
        list[0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["protocol"] == protocol && p["port"] == port)
            .cloned()
            .unwrap_or_else(|| panic!("no {protocol} {port} in {list}"))
    };
    let (e0, e1) = ((b0.ip.as_str(), "node0"), (b1.ip.as_str(), "node1"));

    // ICMP port unreachable from the backend, each backend in turn.
    for (only, name) in [(e0, "b0, same node"), (e1, "b1, behind the tunnel")] {
        apply(lb_yaml(&[only], ""));
        let out = run_in(
            &client.ns,
            &["python3", "-c", UDP_TRIES, CLUSTER_IP, "54", "3"],
        );
        say(&format!(
            "UDP to {CLUSTER_IP}:54 via {name}: {}",
            out.stdout.trim()
        ));
        assert_eq!(
            out.stdout.trim(),
            "ConnectionRefusedError\nConnectionRefusedError\nConnectionRefusedError",
            "the backend's port unreachable did not reach the client's socket ({name}): {out}"
        );
    }

    // A UDP flow whose backend leaves: its next datagram goes to the one
    // left (not the one it had, which still serves).
    apply(lb_yaml(&[e0, e1], ""));
    let ask_from = || {
        let out = run_in(
            &client.ns,
            &["python3", "-c", UDP_FROM_PORT, CLUSTER_IP, "40053"],
        );
        assert!(out.ok(), "{out}");
        out.stdout.trim().to_string()
    };
    let first = ask_from();
    assert_eq!(ask_from(), first, "the same flow, the same backend");
    let left = if first == "b0" { e1 } else { e0 };
    apply(lb_yaml(&[left], ""));
    let second = ask_from();
    say(&format!(
        "UDP flow: {first}, then after {first} left: {second}"
    ));
    assert_ne!(second, first, "the flow kept its removed backend");
    let dns = port_info("UDP", 53);
    assert!(num(&dns, "/cut") >= 1, "the cut is not counted: {dns}");

    // The Service deleted: its flows leave the flow table.
    let before = node0.counters();
    node0.ctl(&["service", "delete", "default/svc"]);
    let after = node0.counters();
    say(&format!("after delete: {}", after["flows"]));
    assert!(
        delta(&before, &after, "/flows/purged") >= 2,
        "the deleted service's flow stayed: {} -> {}",
        before["flows"],
        after["flows"]
    );

    // internalTrafficPolicy: Local: this node's endpoint only ...
    apply(lb_yaml(&[e0, e1], "  internalTrafficPolicy: Local\n"));
    let a = ask(&client.ns, "tcp", CLUSTER_IP, 80, 2);
    say(&format!("tcp with internalTrafficPolicy Local: {}", a.json));
    assert!(
        a.from("b0") > 0 && a.from("b1") == 0,
        "not only the local endpoint: {}",
        a.json
    );
    // ... and none: refused, as kube-proxy does.
    apply(lb_yaml(&[e1], "  internalTrafficPolicy: Local\n"));
    let out = run_in(&client.ns, &["python3", "-c", REFUSED, CLUSTER_IP]);
    assert_eq!(
        out.stdout.trim(),
        "tcp ConnectionRefusedError\nudp ConnectionRefusedError",
        "{out}"
    );
}

/// 10,000 Services in one `service apply`, as a controller's first sync of
/// a big cluster sends them (about 5 MB of YAML): answered within seconds,
/// every one listed with its backends, and the one with a real backend
/// balances TCP and UDP. Before, the call was refused (the API's 1 MiB
/// line limit) and, split in pieces, each compilation took seconds (every
/// Service scanned every EndpointSlice).
#[test]
fn ten_thousand_services_in_one_apply() {
    if !require("ten_thousand_services_in_one_apply", TOOLS) {
        return;
    }
    const OTHERS: u32 = 9_999;
    let mut c = Cluster::start("never", &[0]);
    let client = c.nodes[0].add_pod("client", &[]);
    let b0 = c.nodes[0].add_pod("b0", &[]);
    let _servers = serve(&client, &[&b0]);
    let node0 = &c.nodes[0];
    let mut yaml = service_yaml(&[&b0.ip], false, true);
    for i in 0..OTHERS {
        let vip = std::net::Ipv4Addr::from(0x0a60_1000 + i);
        let ep = 0x0af5_0000 + 2 * i;
        let (a, b) = (
            std::net::Ipv4Addr::from(ep),
            std::net::Ipv4Addr::from(ep + 1),
        );
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: other}}\n\
             spec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s{i}-1, namespace: other, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [{a}]}}, {{addresses: [{b}]}}]\n\
             ports: [{{name: http, port: 8080, protocol: TCP}}]\n"
        ));
    }
    let dir = TempDir::new("many");
    let f = dir.join("many.yaml");
    std::fs::write(&f, &yaml).expect("write services");
    let started = std::time::Instant::now();
    let applied = node0.ctl(&["service", "apply", "-f", &f.to_string_lossy()]);
    let took = started.elapsed();
    say(&format!(
        "{} bytes of YAML, {} objects applied in {took:?}",
        yaml.len(),
        applied.as_array().map_or(0, Vec::len)
    ));
    assert_eq!(
        applied.as_array().map(Vec::len),
        Some(2 * (OTHERS as usize + 1))
    );
    assert!(
        took < Duration::from_secs(15),
        "service apply of {} Services took {took:?}",
        OTHERS + 1
    );
    let list = node0.ctl(&["service", "list"]);
    let list = list.as_array().expect("service list");
    assert_eq!(list.len(), OTHERS as usize + 1);
    for s in list {
        let ports = s["ports"].as_array().expect("ports");
        let want = if s["namespace"] == "other" { 2 } else { 1 };
        assert!(!ports.is_empty(), "{s}");
        for p in ports {
            assert_eq!(p["backends"].as_array().map(Vec::len), Some(want), "{s}");
        }
    }
    for (proto, port) in [("tcp", 80), ("udp", 53)] {
        let a = ask(&client.ns, proto, CLUSTER_IP, port, 1);
        assert!(
            a.from("b0") > 0 && a.json["failures"] == 0,
            "{proto} to {CLUSTER_IP}:{port} among 10,000 Services: {}",
            a.json
        );
    }
}
