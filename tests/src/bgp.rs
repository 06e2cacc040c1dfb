//! Helpers for the BGP interop tests: podrouterd nodes with a `[bgp]`
//! section, veth links and a bridge between namespaces, and BIRD 2, GoBGP
//! and FRR peers started in namespaces the test owns.
//!
//! Every peer daemon runs in the foreground under a [`Bg`] guard (stopped
//! by its own pid on drop) with its files in a [`TempDir`]; namespaces are
//! [`Netns`] guards. Nothing here touches a process or namespace it did not
//! create.
//!
//! The interop tests' world ([`node_and_peer`]) is podrouterd's node and
//! the peer's node on one segment, routed directly (`encap = "never"`),
//! with a pod behind podrouterd and a pod-like address in the peer's block
//! ([`add_pod_like`]): [`assert_pod_reaches`] and [`assert_pod_cut_off`]
//! show the learned routes carrying a ping both ways, and no longer once
//! they are withdrawn.
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::*;

/// The AS of podrouter nodes in these tests.
pub const NODE_AS: u32 = 64512;
/// The hold time the tests configure (podrouterd proposes it; the
/// negotiated value is the smaller of both sides).
pub const HOLD: u16 = 3;

/// Creates a veth pair between `a` and `b` named `ifa`/`ifb` with the
/// given `addr/len` on each end, both up.
pub fn link(a: &Netns, ifa: &str, addr_a: &str, b: &Netns, ifb: &str, addr_b: &str) {
    a.exec(&[
        "ip",
        "link",
        "add",
        ifa,
        "type",
        "veth",
        "peer",
        "name",
        ifb,
        "netns",
        b.name(),
    ])
    .expect_ok();
    a.exec(&["ip", "addr", "add", addr_a, "dev", ifa])
        .expect_ok();
    a.exec(&["ip", "link", "set", ifa, "up"]).expect_ok();
    b.exec(&["ip", "addr", "add", addr_b, "dev", ifb])
        .expect_ok();
    b.exec(&["ip", "link", "set", ifb, "up"]).expect_ok();
}

/// A namespace holding a bridge, to put several nodes on one segment.
pub struct Switch {
    pub ns: Netns,
    ports: u32,
}

impl Switch {
    pub fn new() -> Switch {
        let ns = Netns::new("sw");
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])
            .expect_ok();
        ns.exec(&["ip", "link", "set", "br0", "up"]).expect_ok();
        Switch { ns, ports: 0 }
    }

    /// Connects `ns` to the bridge through its interface `ifname` with
    /// `addr/len`.
    pub fn plug(&mut self, ns: &Netns, ifname: &str, addr: &str) {
        self.ports += 1;
        let port = format!("p{}", self.ports);
        self.ns
            .exec(&[
                "ip",
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                ns.name(),
            ])
            .expect_ok();
        self.ns
            .exec(&["ip", "link", "set", &port, "master", "br0", "up"])
            .expect_ok();
        ns.exec(&["ip", "addr", "add", addr, "dev", ifname])
            .expect_ok();
        ns.exec(&["ip", "link", "set", ifname, "up"]).expect_ok();
    }
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new()
    }
}

/// One `[[bgp.peers]]` entry.
#[derive(Clone, Debug)]
pub struct PeerCfg {
    pub address: String,
    pub asn: u32,
    pub extra: String,
}

impl PeerCfg {
    pub fn new(address: &str, asn: u32) -> PeerCfg {
        PeerCfg {
            address: address.into(),
            asn,
            extra: String::new(),
        }
    }
    /// Adds raw TOML lines to the entry (`password = "x"`).
    pub fn with(mut self, line: &str) -> PeerCfg {
        self.extra.push_str(line);
        self.extra.push('\n');
        self
    }
}

/// The `[bgp]` section for a node.
pub fn bgp_section(asn: u32, extra: &str, peers: &[PeerCfg]) -> String {
    let mut s = format!("\n[bgp]\nasn = {asn}\nhold_time = {HOLD}\nconnect_retry = 1\n{extra}\n");
    for p in peers {
        s += &format!(
            "[[bgp.peers]]\naddress = \"{}\"\nasn = {}\n{}\n",
            p.address, p.asn, p.extra
        );
    }
    s
}

/// Starts a podrouterd node whose node IP is `node_ip` with `pod_cidr`
/// and the given `[bgp]` section. The node namespace is linked to others
/// by the caller (before or after: BGP retries every second).
pub fn start_bgp_node(node_ip: &str, pod_cidr: &str, bgp: &str) -> Node {
    let mut node = start_plain_node(node_ip, pod_cidr);
    enable_bgp(&mut node, bgp, None);
    node
}

/// A podrouterd node without BGP yet (see [`enable_bgp`]).
pub fn start_plain_node(node_ip: &str, pod_cidr: &str) -> Node {
    Node::start(NodeConfig {
        node_ip: node_ip.to_string(),
        pod_cidrs: vec![pod_cidr.to_string()],
        ..NodeConfig::default()
    })
}

/// Restarts the node's daemon with a `[bgp]` section (Node::start writes
/// a config without one) and, if given, `[dataplane] uplink` (which must
/// exist by then).
pub fn enable_bgp(node: &mut Node, bgp: &str, uplink: Option<&str>) {
    node.stop_daemon("TERM");
    let mut text = fs::read_to_string(&node.config).expect("read config");
    if let Some(u) = uplink {
        text = text.replacen(
            "[dataplane]\n",
            &format!("[dataplane]\nuplink = \"{u}\"\n"),
            1,
        );
    }
    text.push_str(bgp);
    fs::write(&node.config, text).expect("write config");
    node.start_daemon();
}

/// Sets `[dataplane] encap` ("always", "cross-subnet", "never") in the
/// node's config; it takes effect at the daemon's next start (as in
/// [`enable_bgp`], which restarts it).
pub fn set_encap(node: &Node, encap: &str) {
    let text = fs::read_to_string(&node.config).expect("read config");
    let text = text.replacen(
        "[dataplane]\n",
        &format!("[dataplane]\nencap = \"{encap}\"\n"),
        1,
    );
    fs::write(&node.config, text).expect("write config");
}

/// The node's underlay interface in [`node_and_peer`].
pub const UPLINK: &str = "up0";

/// The world of the interop tests: a peer namespace (tagged `tag`) and a
/// podrouterd node (`node_ip`, block `pod_cidr`) on one /24, linked by a
/// veth (`up0` in the node, `eth0` in the peer), the node running with the
/// `[bgp]` section `bgp` and routing to other nodes' blocks directly
/// (`encap = "never"`, uplink `up0`): the peers' nodes could not
/// decapsulate IPIP (this kernel has no ipip module), and direct routing
/// on one subnet is what Calico does in `never` and `cross-subnet` mode.
/// Bind it as `let (peer_ns, node) = ...` so the node (dropped first)
/// goes before the namespace its uplink leads to.
pub fn node_and_peer(
    tag: &str,
    node_ip: &str,
    pod_cidr: &str,
    peer_ip: &str,
    bgp: &str,
) -> (Netns, Node) {
    let peer_ns = Netns::new(tag);
    let mut node = start_plain_node(node_ip, pod_cidr);
    link_to_peer(&node, node_ip, &peer_ns, peer_ip);
    set_encap(&node, "never");
    enable_bgp(&mut node, bgp, Some(UPLINK));
    (peer_ns, node)
}

/// Links `node` (`up0`, `node_ip`/24) and a peer namespace (`eth0`,
/// `peer_ip`/24) with a veth pair: the one underlay of the BGP tests.
pub fn link_to_peer(node: &Node, node_ip: &str, peer_ns: &Netns, peer_ip: &str) {
    link(
        &node.ns,
        UPLINK,
        &format!("{node_ip}/24"),
        peer_ns,
        "eth0",
        &format!("{peer_ip}/24"),
    );
}

// ---------------------------------------------------------------------------
// Pods on both sides

/// The first host address of an IPv4 block ("10.244.2.0/26" ->
/// "10.244.2.1").
pub fn first_host(block: &str) -> String {
    let net: std::net::Ipv4Addr = block
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 block: {block}"));
    std::net::Ipv4Addr::from(u32::from(net) + 1).to_string()
}

/// Puts a pod-like address behind the peer's node: the first host address
/// of the block the peer announces, as a /32 on the peer namespace's
/// loopback (this kernel has no dummy interfaces), so the peer's kernel
/// answers pings to it as a pod behind that node would. Returns it.
pub fn add_pod_like(peer_ns: &Netns, block: &str) -> String {
    let addr = first_host(block);
    peer_ns
        .exec(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"])
        .expect_ok();
    addr
}

/// `ip route show PREFIX` in `ns` (empty when it has no such route).
pub fn kernel_route(ns: &Netns, prefix: &str) -> String {
    ns.exec(&["ip", "route", "show", prefix])
        .expect_ok()
        .stdout
        .trim()
        .to_string()
}

/// Waits until the kernel of `ns` routes `prefix` via `via` with a route
/// the peer daemon installed (`proto bird`, `proto bgp`: learned over
/// BGP, not added by hand) and returns that route; panics with the route
/// it has otherwise.
#[track_caller]
pub fn wait_learned_kernel_route(ns: &Netns, prefix: &str, via: &str, proto: &str) -> String {
    let want = |r: &str| {
        let r = format!("{r} ");
        r.contains(&format!("via {via} ")) && r.contains(&format!("proto {proto} "))
    };
    assert!(
        wait_until(Duration::from_secs(10), || want(&kernel_route(ns, prefix))),
        "{}: no route for {prefix} via {via} proto {proto}, has {:?}",
        ns.name(),
        kernel_route(ns, prefix)
    );
    kernel_route(ns, prefix)
}

/// Waits until the kernel of `ns` has no route for `prefix`.
#[track_caller]
pub fn wait_no_kernel_route(ns: &Netns, prefix: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || kernel_route(ns, prefix)
            .is_empty()),
        "{}: route for {prefix} still there: {:?}",
        ns.name(),
        kernel_route(ns, prefix)
    );
}

/// The TTL of the echo replies a pod behind podrouterd gets from a
/// pod-like address on a directly routed peer's node: podrouterd keeps the
/// TTL between its pods and the host port, the node's kernel forwards
/// (64 -> 63), the peer's kernel answers itself. A reply that came any
/// other way (answered on the node, or through another router) has
/// another TTL.
pub const PEER_REPLY_TTL: u32 = 63;

/// One port's counter (`tx_packets`, `rx_packets`) in `podrouterctl
/// counters`, by port name (0 if the port is not there).
pub fn port_counter(counters: &Value, port: &str, field: &str) -> u64 {
    counters["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == port))
        .and_then(|p| p[field].as_u64())
        .unwrap_or(0)
}

/// Asserts that `pod` reaches `target` (in the `block` learned from
/// `peer`) the learned way, and returns the checked pings. First the
/// route: podrouterd's FIB sends the block to `peer` through the host
/// port (routed directly), and the node's kernel has it via `peer`
/// (protocol 77, which podrouterd programs from the learned route). Then
/// it pings until a reply comes (10 s), and 3 more pings must all come
/// back with [`PEER_REPLY_TTL`] while podrouterd's host port carries them
/// both ways and its IPIP uplink sends nothing.
#[track_caller]
pub fn assert_pod_reaches(node: &Node, pod: &Pod, block: &str, peer: &str, target: &str) -> Ping {
    let routes = node.ctl(&["routes"]);
    let route = routes
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["prefix"] == block))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        route["next_hop"] == "node" && route["via"] == peer && route["port"] == "podrouter0",
        "podrouterd's route for {block} is not via {peer} on the host port: {route:#}\n{}",
        node.ctl_table(&["routes"])
    );
    let k = kernel_route(&node.ns, block);
    assert!(
        format!("{k} ").contains(&format!("via {peer} ")) && k.contains("proto 77"),
        "node kernel route for {block}: {k:?}"
    );
    assert!(
        ping_until_reply(&pod.ns, target, Duration::from_secs(10)),
        "pod {} ({}) never got a reply from {target}: {}",
        pod.id,
        pod.ip,
        ping(&pod.ns, target, &["-c", "1", "-W", "1"]).text
    );
    let uplink = format!("ipip@{UPLINK}");
    let before = node.counters();
    let p = assert_ping(&pod.ns, target, 3, PEER_REPLY_TTL);
    let after = node.counters();
    let moved = |port: &str, field: &str| {
        port_counter(&after, port, field).saturating_sub(port_counter(&before, port, field))
    };
    let (out, back) = (
        moved("podrouter0", "tx_packets"),
        moved("podrouter0", "rx_packets"),
    );
    assert!(
        out >= 3 && back >= 3,
        "the host port carried {out} packets to the node's kernel and {back} back, \
         expected the 3 echoes each way: {after:#}"
    );
    assert!(
        after["ports"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == uplink.as_str())),
        "no {uplink} port in the counters: {after:#}"
    );
    assert_eq!(moved(&uplink, "tx_packets"), 0, "IPIP sent: {after:#}");
    say(&format!(
        "pod {} -> {target} (learned {block} via {peer}; node kernel: {k}): \
         {}/{} replies, ttl {:?}; host port {out} out, {back} in",
        pod.ip, p.received, p.transmitted, p.ttls
    ));
    p
}

/// Asserts that `pod` no longer reaches `target` now that `block` is gone:
/// podrouterd's FIB lacks it (the pod's packets take the default route to
/// the node's own stack), the node's kernel route goes (podrouterd deletes
/// it), and pings get no reply, only the node kernel's ICMP unreachable.
#[track_caller]
pub fn assert_pod_cut_off(node: &Node, pod: &Pod, block: &str, target: &str) -> Ping {
    assert_eq!(fib_via(node, block), None, "{block} still in the FIB");
    wait_no_kernel_route(&node.ns, block);
    let p = ping(&pod.ns, target, &["-c", "2", "-i", "0.5", "-W", "1"]);
    assert!(
        p.transmitted == 2 && p.received == 0,
        "pod {} still reaches {target} without a route for {block}:\n{}",
        pod.ip,
        p.text
    );
    assert!(
        p.text.contains("Unreachable"),
        "no ICMP unreachable for {target}:\n{}",
        p.text
    );
    say(&format!(
        "without {block}: pod {} -> {target}: {}/{} replies; {}",
        pod.ip,
        p.received,
        p.transmitted,
        p.text
            .lines()
            .find(|l| l.contains("Unreachable"))
            .unwrap_or_default()
    ));
    p
}

/// `podrouterctl bgp peers` as JSON.
pub fn peers(node: &Node) -> Vec<Value> {
    node.ctl(&["bgp", "peers"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The state of the peer with this address.
pub fn peer_state(node: &Node, addr: &str) -> String {
    peers(node)
        .iter()
        .find(|p| p["address"] == addr)
        .and_then(|p| p["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until podrouterd reports `addr` Established.
#[track_caller]
pub fn wait_established(node: &Node, addr: &str, timeout: Duration) {
    let ok = wait_until(timeout, || peer_state(node, addr) == "Established");
    assert!(
        ok,
        "peer {addr} not Established within {timeout:?}: {:#?}\nlog:\n{}",
        peers(node),
        node.daemon_log()
    );
}

/// The FIB's next hop for a prefix (`via` of a `node` route), if any.
pub fn fib_via(node: &Node, prefix: &str) -> Option<String> {
    let routes = node.ctl(&["routes"]);
    routes.as_array()?.iter().find_map(|r| {
        (r["prefix"] == prefix && r["next_hop"] == "node")
            .then(|| r["via"].as_str().unwrap_or_default().to_string())
    })
}

/// Waits until the FIB has (`Some(via)`) or lacks (`None`) a node route.
pub fn wait_fib(node: &Node, prefix: &str, via: Option<&str>, timeout: Duration) -> bool {
    wait_until(timeout, || fib_via(node, prefix).as_deref() == via)
}

/// Time until `f` holds, polling every 50 ms, or None after `timeout`.
pub fn time_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

// ---------------------------------------------------------------------------
// BIRD 2

/// A BIRD 2 instance in a namespace.
pub struct Bird {
    pub dir: TempDir,
    pub sock: PathBuf,
    pub ns: String,
    pub bg: Option<Bg>,
    conf: PathBuf,
}

impl Bird {
    /// Writes `conf` and starts `bird -f` in `ns`; waits for its socket.
    pub fn start(ns: &Netns, conf: &str) -> Bird {
        let dir = TempDir::new("bird");
        let conf_path = dir.join("bird.conf");
        fs::write(&conf_path, conf).expect("write bird.conf");
        let mut b = Bird {
            sock: dir.join("bird.ctl"),
            conf: conf_path,
            ns: ns.name().to_string(),
            dir,
            bg: None,
        };
        b.restart();
        b
    }

    /// (Re)starts bird with the same config.
    pub fn restart(&mut self) {
        let _ = fs::remove_file(&self.sock);
        let c = self.conf.to_string_lossy().into_owned();
        let s = self.sock.to_string_lossy().into_owned();
        let pid = self.dir.join("bird.pid").to_string_lossy().into_owned();
        let log = self.dir.join("bird.out");
        self.bg = Some(spawn_in(
            &self.ns,
            "bird",
            &["bird", "-f", "-c", &c, "-s", &s, "-P", &pid],
            Some(&log),
        ));
        let ok = wait_until(Duration::from_secs(10), || {
            self.sock.exists() && self.birdc("show status").ok()
        });
        assert!(ok, "bird did not start: {}", self.log());
    }

    pub fn birdc(&self, cmd: &str) -> Out {
        let s = self.sock.to_string_lossy().into_owned();
        let mut args = vec!["birdc", "-s", &s];
        args.extend(cmd.split_whitespace());
        run(&args)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("bird.out")).unwrap_or_default()
    }

    /// Whether `show route PREFIX` shows a route via `via`.
    pub fn has_route(&self, prefix: &str, via: &str) -> bool {
        let o = self.birdc(&format!("show route for {prefix} all"));
        o.ok() && o.stdout.contains(prefix) && o.stdout.contains(via)
    }

    pub fn protocol_established(&self, name: &str) -> bool {
        let o = self.birdc(&format!("show protocols {name}"));
        o.ok() && o.stdout.contains("Established")
    }

    /// Kills bird with SIGKILL (no NOTIFICATION, TCP reset by the kernel).
    pub fn kill(&mut self) {
        if let Some(mut b) = self.bg.take() {
            signal(b.pid(), "KILL");
            let _ = b.child.wait();
        }
    }
}

/// A BIRD config for AS `asn` (router id `id`) that announces `block` and
/// peers with podrouterd at `node_ip` in AS `node_as`. Like calico-node's
/// BIRD, it installs the routes it learns over BGP in its namespace's
/// kernel (`proto bird`); its own block stays out of the kernel.
pub fn bird_conf(
    id: &str,
    asn: u32,
    block: &str,
    node_ip: &str,
    node_as: u32,
    extra: &str,
) -> String {
    let ibgp = asn == node_as;
    format!(
        "router id {id};\n\
         protocol device {{ scan time 10; }}\n\
         protocol direct {{ ipv4; interface \"*\"; }}\n\
         protocol static pods {{ ipv4; route {block} blackhole; }}\n\
         protocol kernel {{ ipv4 {{ import none; export where proto = \"node\"; }}; }}\n\
         protocol bgp node {{\n\
           local as {asn};\n\
           neighbor {node_ip} as {node_as};\n\
           {direct}\n\
           hold time {HOLD}; keepalive time 1;\n\
           connect delay time 1; connect retry time 2; error wait time 1, 5;\n\
           {extra}\n\
           ipv4 {{ import all; export where proto = \"pods\"; next hop self; }};\n\
         }}\n",
        direct = if ibgp { "direct;" } else { "" },
    )
}

// ---------------------------------------------------------------------------
// GoBGP

pub struct Gobgp {
    pub dir: TempDir,
    pub ns: String,
    pub bg: Option<Bg>,
}

impl Gobgp {
    /// Starts gobgpd (AS `asn`, router id `id`) peering with `node_ip`.
    pub fn start(ns: &Netns, id: &str, asn: u32, node_ip: &str, node_as: u32) -> Gobgp {
        let dir = TempDir::new("gobgp");
        let conf = format!(
            "[global.config]\n  as = {asn}\n  router-id = \"{id}\"\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{node_ip}\"\n    peer-as = {node_as}\n\
             \x20 [neighbors.timers.config]\n    hold-time = {HOLD}\n    keepalive-interval = 1\n    connect-retry = 1\n\
             \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n"
        );
        let path = dir.join("gobgp.toml");
        fs::write(&path, conf).expect("write gobgp.toml");
        let p = path.to_string_lossy().into_owned();
        let bg = spawn_in(
            ns.name(),
            "gobgpd",
            &[
                "gobgpd",
                "-f",
                &p,
                "-t",
                "toml",
                "--api-hosts",
                "127.0.0.1:50051",
            ],
            Some(&dir.join("gobgpd.log")),
        );
        let g = Gobgp {
            dir,
            ns: ns.name().to_string(),
            bg: Some(bg),
        };
        let ok = wait_until(Duration::from_secs(10), || g.cli(&["global"]).ok());
        assert!(ok, "gobgpd did not start: {}", g.log());
        g
    }

    pub fn cli(&self, args: &[&str]) -> Out {
        let mut full = vec!["gobgp", "-u", "127.0.0.1", "-p", "50051"];
        full.extend_from_slice(args);
        run_in(&self.ns, &full)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("gobgpd.log")).unwrap_or_default()
    }

    pub fn established(&self, node_ip: &str) -> bool {
        let o = self.cli(&["neighbor", node_ip]);
        o.ok() && o.stdout.to_lowercase().contains("bgp state = established")
    }

    /// The next hop GoBGP has for `prefix`, if it has the prefix.
    pub fn route_next_hop(&self, prefix: &str) -> Option<String> {
        let o = self.cli(&["global", "rib", "-a", "ipv4", prefix, "-j"]);
        let v: Value = serde_json::from_str(&o.stdout).ok()?;
        let paths = v.get(prefix)?.as_array()?;
        paths.iter().find_map(|p| {
            p["attrs"].as_array()?.iter().find_map(|a| {
                (a["type"] == 3).then(|| a["nexthop"].as_str().unwrap_or_default().to_string())
            })
        })
    }
}

// ---------------------------------------------------------------------------
// FRR: bgpd with zebra

pub struct Frr {
    pub dir: TempDir,
    pub ns: String,
    pub bg: Option<Bg>,
    /// zebra, which installs bgpd's best routes in the namespace's kernel
    /// (`proto bgp`); declared after `bg` so bgpd stops first.
    pub zebra: Option<Bg>,
}

impl Frr {
    /// Starts zebra and bgpd (AS `asn`) announcing `block` to `node_ip`.
    pub fn start(ns: &Netns, id: &str, asn: u32, block: &str, node_ip: &str, node_as: u32) -> Frr {
        let dir = TempDir::new("frr");
        run(&["chown", "frr:frr", &dir.path().to_string_lossy()]).expect_ok();
        let vty = dir.path().to_string_lossy().into_owned();
        let zserv = dir.join("zserv.api").to_string_lossy().into_owned();
        let zconf = dir.join("zebra.conf");
        fs::write(&zconf, "hostname frr-peer\n").expect("write zebra.conf");
        run(&["chown", "frr:frr", &zconf.to_string_lossy()]).expect_ok();
        let zconf = zconf.to_string_lossy().into_owned();
        let zpid = dir.join("zebra.pid").to_string_lossy().into_owned();
        let zebra = spawn_in(
            ns.name(),
            "zebra",
            &[
                "/usr/lib/frr/zebra",
                "-u",
                "frr",
                "-g",
                "frr",
                "-f",
                &zconf,
                "-i",
                &zpid,
                "--vty_socket",
                &vty,
                "-z",
                &zserv,
                "-P",
                "0",
            ],
            Some(&dir.join("zebra.log")),
        );
        let ok = wait_until(Duration::from_secs(15), || {
            std::path::Path::new(&zserv).exists()
        });
        assert!(
            ok,
            "zebra did not open {zserv}: {}",
            fs::read_to_string(dir.join("zebra.log")).unwrap_or_default()
        );
        let conf = format!(
            "frr defaults traditional\nhostname frr-peer\n!\nrouter bgp {asn}\n bgp router-id {id}\n\
             no bgp ebgp-requires-policy\n no bgp network import-check\n\
             neighbor {node_ip} remote-as {node_as}\n neighbor {node_ip} timers {} {HOLD}\n\
             neighbor {node_ip} timers connect 1\n\
             address-family ipv4 unicast\n  network {block}\n exit-address-family\n!\n",
            1
        );
        let path = dir.join("frr.conf");
        fs::write(&path, conf).expect("write frr.conf");
        run(&["chown", "frr:frr", &path.to_string_lossy()]).expect_ok();
        let p = path.to_string_lossy().into_owned();
        let pid = dir.join("bgpd.pid").to_string_lossy().into_owned();
        let bg = spawn_in(
            ns.name(),
            "bgpd",
            &[
                "/usr/lib/frr/bgpd",
                "-z",
                &zserv,
                "-u",
                "frr",
                "-g",
                "frr",
                "-f",
                &p,
                "-i",
                &pid,
                "--vty_socket",
                &vty,
                "-A",
                "127.0.0.1",
                "-P",
                "0",
            ],
            Some(&dir.join("bgpd.log")),
        );
        let f = Frr {
            dir,
            ns: ns.name().to_string(),
            bg: Some(bg),
            zebra: Some(zebra),
        };
        let ok = wait_until(Duration::from_secs(15), || {
            f.vtysh(&["show bgp summary"]).ok()
        });
        assert!(ok, "bgpd did not start: {}", f.log());
        f
    }

    pub fn vtysh(&self, cmds: &[&str]) -> Out {
        let vty = self.dir.path().to_string_lossy().into_owned();
        let mut full = vec!["vtysh", "--vty_socket", &vty, "-d", "bgpd"];
        for c in cmds {
            full.push("-c");
            full.push(c);
        }
        run_in(&self.ns, &full)
    }

    pub fn log(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- bgpd ---\n{}--- zebra ---\n{}",
            read("bgpd.log"),
            read("zebra.log")
        )
    }

    pub fn established(&self, node_ip: &str) -> bool {
        let o = self.vtysh(&[&format!("show bgp neighbors {node_ip} json")]);
        o.ok() && o.stdout.contains("\"bgpState\":\"Established\"")
    }

    /// The next hop bgpd has for `prefix`, if any.
    pub fn route_next_hop(&self, prefix: &str) -> Option<String> {
        let o = self.vtysh(&[&format!("show bgp ipv4 unicast {prefix} json")]);
        let v: Value = serde_json::from_str(&o.stdout).ok()?;
        v["paths"].as_array()?.iter().find_map(|p| {
            p["nexthops"]
                .as_array()?
                .first()
                .and_then(|n| n["ip"].as_str().map(str::to_string))
        })
    }
}
