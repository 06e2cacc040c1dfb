//! Many nodes for the end-to-end tests: an underlay of bridges in its own
//! namespace, node namespaces each running its own `podrouterd`, and an
//! optional kernel router namespace joining two underlay subnets.
//!
//! ```text
//!            underlay netns                       router netns (optional)
//!   node0 eth0 ---+                          +--- rt0 192.168.57.254/24
//!   node1 eth0 ---+-- br0 192.168.57.0/24 ---+        (ip_forward=1)
//!                                            +--- rt1 192.168.58.254/24
//!   node2 eth0 ------ br1 192.168.58.0/24 ---+
//! ```
//!
//! Node `i` on subnet `s` has address `192.168.(57+s).(11+i)` on `eth0`, a
//! default route through the kernel router (when there is one), the pod
//! block `10.244.0.(64*i)/26` and a static `[[routes]]` entry for every
//! other node's block. The kernel router also learns every block (as a
//! top-of-rack router peering with the nodes would), so direct routing
//! (`encap = "never"`) works across subnets too.
//!
//! Everything is torn down on drop: daemons (SIGTERM by pid), pod
//! namespaces, node namespaces, the router and the underlay, the temporary
//! directory; if the test is panicking, each node's log and counters are
//! printed first.
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    attach_new_pod, bin, podrouterctl, podrouterctl_json, run, say, spawn_in, wait_until, Bg,
    InNetns, Netns, Out, Pod, TempDir, Value,
};

/// Address of node `i` on underlay subnet `s`.
pub fn node_ip(subnet: usize, i: usize) -> String {
    format!("192.168.{}.{}", 57 + subnet, 11 + i)
}

/// Pod block of node `i`.
pub fn node_cidr(i: usize) -> String {
    format!("10.244.0.{}/26", 64 * i)
}

/// The kernel router's address on subnet `s`.
pub fn router_ip(subnet: usize) -> String {
    format!("192.168.{}.254", 57 + subnet)
}

/// One node of a [`Cluster`].
pub struct ClusterNode {
    pub index: usize,
    pub subnet: usize,
    pub ip: String,
    pub cidr: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    daemon: Option<Bg>,
    pods: Vec<(Netns, Pod)>,
    /// Dropped after the pods.
    pub ns: Netns,
}

impl ClusterNode {
    /// `podrouterctl --socket S --json ARGS`.
    pub fn ctl_out(&self, args: &[&str]) -> Out {
        podrouterctl(&self.socket, true, args)
    }

    /// `podrouterctl --json ARGS`, which must succeed and print JSON.
    #[track_caller]
    pub fn ctl(&self, args: &[&str]) -> Value {
        podrouterctl_json(&self.socket, args)
    }

    #[track_caller]
    pub fn counters(&self) -> Value {
        self.ctl(&["counters"])
    }

    /// Creates a pod namespace and attaches it (see [`attach_new_pod`]).
    #[track_caller]
    pub fn add_pod(&mut self, id: &str, extra: &[&str]) -> Pod {
        let (ns, pod) = attach_new_pod(&self.socket, id, extra);
        self.pods.push((ns, pod.clone()));
        pod
    }

    /// Stops the node's podrouterd with `sig` (`TERM`, `KILL`), starts it
    /// again with the same config and waits for its API (its log is
    /// replaced: the earlier one is printed first).
    #[track_caller]
    pub fn restart(&mut self, sig: &str) {
        self.stop(sig);
        say(&format!(
            "--- log of node {} before SIG{sig} ---\n{}",
            self.index,
            self.daemon_log()
        ));
        let d = bin("podrouterd");
        let d = d.to_string_lossy();
        let c = self.config.to_string_lossy().into_owned();
        self.daemon = Some(spawn_in(
            self.ns.name(),
            "podrouterd",
            &[&d, "--config", &c],
            Some(&self.log),
        ));
        let up = wait_until(Duration::from_secs(20), || {
            self.socket.exists() && self.ctl_out(&["status"]).ok()
        });
        assert!(
            up,
            "podrouterd of node {} did not come back:\n{}",
            self.index,
            self.daemon_log()
        );
    }

    /// Stops the node's podrouterd with `sig` and waits for its exit.
    #[track_caller]
    pub fn stop(&mut self, sig: &str) {
        if let Some(mut bg) = self.daemon.take() {
            assert!(
                bg.stop_with(sig, Duration::from_secs(10)).is_some(),
                "podrouterd of node {} ignored SIG{sig}",
                self.index
            );
        }
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn dump(&self) {
        let counters = if self.daemon.is_some() {
            self.ctl_out(&["counters"]).text()
        } else {
            String::new()
        };
        let routes = run(&["ip", "-n", self.ns.name(), "route"]).text();
        say(&format!(
            "===== node {} ({}) =====\n{}\n--- counters ---\n{counters}\n--- kernel routes \
             ---\n{routes}--- podrouterd log ---\n{}===== end of node {} =====",
            self.index,
            self.ip,
            fs::read_to_string(&self.config).unwrap_or_default(),
            self.daemon_log(),
            self.index
        ));
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        if let Some(mut bg) = self.daemon.take() {
            if bg.stop_with("TERM", Duration::from_secs(10)).is_none() {
                say(&format!(
                    "podrouterd of node {} ignored SIGTERM",
                    self.index
                ));
            }
        }
        self.pods.clear();
    }
}

/// What [`Cluster::start_prepared`] shows its `prepare` step: the
/// namespaces before the daemons start. The node on subnet `s` is linked
/// to the underlay by `n<i>` (underlay side) and `eth0` (node side); the
/// router's link to subnet `s` is `r<s>` (router side) and `rt<s>`
/// (underlay side).
pub struct Underlay<'a> {
    pub underlay: &'a Netns,
    pub router: Option<&'a Netns>,
    pub nodes: &'a [ClusterNode],
}

/// Nodes on an underlay, each with its own daemon.
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    /// The kernel router between the subnets, if more than one is used.
    pub router: Option<Netns>,
    pub underlay: Netns,
    pub encap: String,
    _dir: TempDir,
}

impl Cluster {
    /// Starts one node per entry of `subnets` (the node's underlay subnet:
    /// 0 or 1) with `encap` ("always", "cross-subnet", "never"), and waits
    /// for every daemon's API.
    pub fn start(encap: &str, subnets: &[usize]) -> Cluster {
        Cluster::start_with(encap, subnets, "")
    }

    /// [`Cluster::start`] with more `[dataplane]` lines for every node
    /// (`"workers = 2\n"`).
    pub fn start_with(encap: &str, subnets: &[usize], dataplane: &str) -> Cluster {
        Cluster::start_prepared(encap, subnets, dataplane, &|_| {})
    }

    /// [`Cluster::start_with`], calling `prepare` once the namespaces and
    /// links exist and before any daemon starts (to narrow a link, set a
    /// sysctl in a node).
    pub fn start_prepared(
        encap: &str,
        subnets: &[usize],
        dataplane: &str,
        prepare: &dyn Fn(&Underlay<'_>),
    ) -> Cluster {
        let dir = TempDir::new("cluster");
        let underlay = Netns::new("ul");
        let used: Vec<usize> = {
            let mut v = subnets.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        };
        for s in &used {
            let br = format!("br{s}");
            underlay
                .exec(&["ip", "link", "add", &br, "type", "bridge"])
                .expect_ok();
            underlay.exec(&["ip", "link", "set", &br, "up"]).expect_ok();
        }
        let router = (used.len() > 1).then(|| {
            let rt = Netns::new("rt");
            for s in &used {
                let (inner, outer) = (format!("r{s}"), format!("rt{s}"));
                veth(&rt, &inner, &underlay, &outer, &format!("br{s}"));
                rt.exec(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", router_ip(*s)),
                    "dev",
                    &inner,
                ])
                .expect_ok();
                rt.exec(&["ip", "link", "set", &inner, "up"]).expect_ok();
            }
            rt.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
                .expect_ok();
            for (i, s) in subnets.iter().enumerate() {
                rt.exec(&["ip", "route", "add", &node_cidr(i), "via", &node_ip(*s, i)])
                    .expect_ok();
            }
            rt
        });
        let mut nodes = Vec::new();
        for (i, &s) in subnets.iter().enumerate() {
            let ns = Netns::new("node");
            let ip = node_ip(s, i);
            veth(&ns, "eth0", &underlay, &format!("n{i}"), &format!("br{s}"));
            ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])
                .expect_ok();
            ns.exec(&["ip", "link", "set", "eth0", "up"]).expect_ok();
            if router.is_some() {
                ns.exec(&["ip", "route", "add", "default", "via", &router_ip(s)])
                    .expect_ok();
            }
            let ndir = dir.join(&format!("node{i}"));
            fs::create_dir_all(&ndir).expect("mkdir node dir");
            let mut toml = format!(
                "node_name = \"node{i}\"\nnode_ip = \"{ip}\"\npod_cidrs = [\"{}\"]\n\
                 api_socket = \"{}\"\nstate_dir = \"{}\"\nlog_level = \"debug\"\n\n\
                 [dataplane]\nbackend = \"{}\"\nuplink = \"eth0\"\nencap = \"{encap}\"\n{dataplane}",
                node_cidr(i),
                ndir.join("api.sock").display(),
                ndir.join("state").display(),
                crate::backend(),
            );
            for (j, &t) in subnets.iter().enumerate().filter(|(j, _)| *j != i) {
                toml += &format!(
                    "\n[[routes]]\nprefix = \"{}\"\nvia = \"{}\"\n",
                    node_cidr(j),
                    node_ip(t, j)
                );
            }
            let config = ndir.join("podrouter.toml");
            fs::write(&config, toml).expect("write config");
            nodes.push(ClusterNode {
                index: i,
                subnet: s,
                ip,
                cidr: node_cidr(i),
                socket: ndir.join("api.sock"),
                log: ndir.join("podrouterd.log"),
                config,
                daemon: None,
                pods: Vec::new(),
                ns,
            });
        }
        prepare(&Underlay {
            underlay: &underlay,
            router: router.as_ref(),
            nodes: &nodes,
        });
        for n in &mut nodes {
            let d = bin("podrouterd");
            let d = d.to_string_lossy();
            let c = n.config.to_string_lossy().into_owned();
            n.daemon = Some(spawn_in(
                n.ns.name(),
                "podrouterd",
                &[&d, "--config", &c],
                Some(&n.log),
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &mut nodes {
            loop {
                if let Some(Ok(Some(st))) = n.daemon.as_mut().map(|b| b.child.try_wait()) {
                    panic!(
                        "podrouterd of node {} exited with {st}:\n{}",
                        n.index,
                        n.daemon_log()
                    );
                }
                if n.socket.exists() && n.ctl_out(&["status"]).ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "podrouterd of node {} did not answer:\n{}",
                    n.index,
                    n.daemon_log()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
        Cluster {
            nodes,
            router,
            underlay,
            encap: encap.to_string(),
            _dir: dir,
        }
    }

    /// Whether traffic from node `i` to node `j` is encapsulated in this
    /// cluster's mode.
    pub fn encapsulated(&self, i: usize, j: usize) -> bool {
        match self.encap.as_str() {
            "always" => true,
            "never" => false,
            _ => self.nodes[i].subnet != self.nodes[j].subnet,
        }
    }

    /// The TTL a pod on node `j` replies with, as seen by a pod on node
    /// `i`: one router hop on each podrouter (63 on one node, 62 across
    /// two), plus the kernel router when packets cross it unencapsulated.
    pub fn reply_ttl(&self, i: usize, j: usize) -> u32 {
        if i == j {
            63
        } else if !self.encapsulated(i, j) && self.nodes[i].subnet != self.nodes[j].subnet {
            61
        } else {
            62
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes (daemons, pods, namespaces) first, then the router, then
        // the underlay (field order does the rest).
        self.nodes.clear();
        self.router.take();
    }
}

/// A veth pair: `a_name` in `a`, `b_name` in `b` enslaved to `bridge`,
/// both up.
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str, bridge: &str) {
    run(&[
        "ip",
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])
    .expect_ok();
    b.exec(&["ip", "link", "set", b_name, "master", bridge, "up"])
        .expect_ok();
}

/// Pings until a reply comes back (up to `timeout`).
pub fn settle(ns: &str, dst: &str, timeout: Duration) -> bool {
    wait_until(timeout, || {
        crate::ping(ns, dst, &["-c", "1", "-W", "1"]).received == 1
    })
}

/// An IPv4 packet (20-byte header, TTL 64, DF, valid checksum).
pub fn ipv4_packet(src: &str, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    let parse = |s: &str| -> [u8; 4] {
        s.parse::<std::net::Ipv4Addr>()
            .expect("IPv4 address")
            .octets()
    };
    let total = 20 + payload.len();
    let mut v = vec![0u8; total];
    v[0] = 0x45;
    v[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    v[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    v[6] = 0x40;
    v[8] = 64;
    v[9] = proto;
    v[12..16].copy_from_slice(&parse(src));
    v[16..20].copy_from_slice(&parse(dst));
    let mut sum: u32 = v[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    v[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    v[20..].copy_from_slice(payload);
    v
}

/// An ICMP echo request (8 bytes of header and `data`), checksummed.
pub fn icmp_echo(data: &[u8]) -> Vec<u8> {
    let mut v = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    v.extend_from_slice(data);
    let mut sum: u32 = v
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    v[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    v
}

/// Runs `iperf3 -c` from `client` to `server` for one second and returns
/// the receiver's rate in Gbit/s, asserting it worked.
#[track_caller]
pub fn iperf3_gbps(client: &Pod, server: &Pod) -> f64 {
    let _srv = spawn_in(
        &server.ns,
        "iperf3 server",
        &["iperf3", "-s", "-1", "-B", &server.ip],
        None,
    );
    let listening = wait_until(Duration::from_secs(5), || {
        run(&[
            "ip",
            "netns",
            "exec",
            &server.ns,
            "ss",
            "-ltnH",
            "sport = :5201",
        ])
        .stdout
        .contains("5201")
    });
    assert!(listening, "iperf3 server in {} never listened", server.id);
    let out = run(&[
        "ip", "netns", "exec", &client.ns, "iperf3", "-c", &server.ip, "-t", "1", "-J",
    ]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 {} -> {}: no JSON ({e}): {out}",
            client.id, server.id
        )
    });
    assert!(
        v.get("error").is_none(),
        "iperf3 {} -> {} failed: {}",
        client.id,
        server.id,
        v["error"]
    );
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    assert!(
        bps > 0.0,
        "iperf3 {} -> {}: nothing received: {v:#}",
        client.id,
        server.id
    );
    bps / 1e9
}

/// `(rx packets, rx bytes, tx packets, tx bytes)` of the tunnel counters
/// a node's `counters` (JSON) has for peer node `peer` (underlay
/// address); zeros if it lists no such peer.
#[track_caller]
pub fn tunnel_counts(counters: &Value, peer: &str) -> [u64; 4] {
    let list = counters["tunnels"].as_array().cloned().unwrap_or_default();
    match list.iter().find(|t| t["node"] == peer) {
        Some(t) => [
            crate::num(t, "/rx_packets"),
            crate::num(t, "/rx_bytes"),
            crate::num(t, "/tx_packets"),
            crate::num(t, "/tx_bytes"),
        ],
        None => [0; 4],
    }
}

/// Pings `b` (a pod of node `j`) from `a` (a pod of node `i`) `n` times
/// with 56-byte payloads (84-byte IPv4 packets) once routes have settled,
/// and checks the per-peer tunnel counters on both nodes: node `i` sent
/// exactly the `n` requests to node `j` and received its `n` replies
/// (node `j` the other way round) when they `encap`, and nothing moved
/// through the tunnel otherwise. Nothing else may cross between the two
/// nodes meanwhile.
#[track_caller]
pub fn assert_tunnel_counts_after_ping(
    c: &Cluster,
    (i, j): (usize, usize),
    a: &Pod,
    b: &Pod,
    encap: bool,
) {
    let n: u64 = 5;
    let (ni, nj) = (&c.nodes[i], &c.nodes[j]);
    let before = (
        tunnel_counts(&ni.counters(), &nj.ip),
        tunnel_counts(&nj.counters(), &ni.ip),
    );
    let count = n.to_string();
    let p = crate::ping(
        &a.ns,
        &b.ip,
        &["-c", &count, "-i", "0.2", "-s", "56", "-W", "2"],
    );
    assert_eq!(
        u64::from(p.received),
        n,
        "ping {} -> {}:\n{}",
        a.id,
        b.id,
        p.text
    );
    let after = (
        tunnel_counts(&ni.counters(), &nj.ip),
        tunnel_counts(&nj.counters(), &ni.ip),
    );
    let grew = |b: [u64; 4], a: [u64; 4]| -> [u64; 4] { std::array::from_fn(|k| a[k] - b[k]) };
    let (on_i, on_j) = (grew(before.0, after.0), grew(before.1, after.1));
    let want = if encap {
        [n, 84 * n, n, 84 * n]
    } else {
        [0; 4]
    };
    assert_eq!(
        on_i, want,
        "node {i} tunnel counters for {} (rx pkts, rx bytes, tx pkts, tx bytes), encap {encap}",
        nj.ip
    );
    assert_eq!(
        on_j, want,
        "node {j} tunnel counters for {} (rx pkts, rx bytes, tx pkts, tx bytes), encap {encap}",
        ni.ip
    );
    // The table for people lists the peer with the same figures.
    let table = podrouterctl(&ni.socket, false, &["counters"]).stdout;
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(nj.ip.as_str()))
        .unwrap_or_else(|| panic!("no tunnel row for {} in:\n{table}", nj.ip));
    let cells: Vec<u64> = row
        .split_whitespace()
        .skip(1)
        .map(|c| c.parse().expect("a number"))
        .collect();
    assert_eq!(
        cells, after.0,
        "tunnel row of `podrouterctl counters`:\n{table}"
    );
    crate::say(&format!(
        "tunnel counters {} <-> {} after {n} pings: {on_i:?} (encap {encap})",
        ni.ip, nj.ip
    ));
}
