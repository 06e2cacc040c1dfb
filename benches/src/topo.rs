//! Topologies: node and pod network namespaces wired either through
//! podrouterd (TAP pods) or through the kernel the way Calico wires it
//! (veth pairs, a /32 route per pod, proxy_arp on the host side, permanent
//! neighbour entries), on one node or on two nodes joined by an underlay:
//! one veth pair (one subnet) or two veth pairs through a kernel router
//! namespace (two subnets), with jumbo-frame MTU so 1500-byte pod frames fit
//! any tunnel. Over it the kernel routes plainly or through a Flannel-style
//! VXLAN device; podrouter routes directly or through its IPIP uplink.
//!
//! A [`Topology`] owns everything it made; dropping it stops its daemons
//! (SIGTERM by pid), deletes its pod namespaces, then its node namespaces,
//! then its temporary directory.
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podrouter_api::{AttachParams, Call, Client, Reply};

use crate::bail;
use crate::util::{self, ip_batch, run, Error, NetnsGroup, Proc, Res, TempDir};

/// The node address of a single-node topology (on the node's `lo`).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
/// Underlay addresses of node 1 and node 2 in two-node topologies on one
/// subnet (/24).
pub const UNDERLAY: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 100, 1),
    Ipv4Addr::new(192, 168, 100, 2),
];
/// Underlay addresses of node 1 and node 2 on a routed underlay: each in
/// its own /24, whose `.254` is the router.
pub const ROUTED_UNDERLAY: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 101, 1),
    Ipv4Addr::new(192, 168, 102, 2),
];
/// The router's address in each node's underlay subnet.
pub const ROUTER: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 101, 254),
    Ipv4Addr::new(192, 168, 102, 254),
];
/// MTU of every underlay link (veths and the router's) in the main
/// two-node topologies: large enough that a 1500-byte pod packet fits in
/// IPIP (+20) and VXLAN (+50) alike. The others use [`SMALL_UNDERLAY_MTU`].
pub const UNDERLAY_MTU: u16 = 9000;
/// The other underlay MTU measured: the usual Ethernet one, where pods get
/// the tunnel's path MTU (1480 IPIP, 1450 VXLAN).
pub const SMALL_UNDERLAY_MTU: u16 = 1500;
/// Pod MTU of two-node topologies on a [`UNDERLAY_MTU`] underlay.
pub const TWO_NODE_POD_MTU: u16 = 1500;
/// What VXLAN costs a packet (outer IPv4, UDP, VXLAN, inner Ethernet).
pub const VXLAN_OVERHEAD: u16 = 50;
/// What IPIP costs a packet (outer IPv4).
pub const IPIP_OVERHEAD: u16 = 20;
/// MTU of the kernel's VXLAN device on the main underlay: the underlay's
/// minus VXLAN's 50 bytes, as Flannel derives it.
pub const VXLAN_MTU: u16 = UNDERLAY_MTU - VXLAN_OVERHEAD;

/// The pod MTU of a two-node mode over an underlay of `underlay_mtu`:
/// 1500 where the tunnel fits, else what the tunnel leaves.
pub fn two_node_pod_mtu(mode: TwoNodeMode, underlay_mtu: u16) -> u16 {
    let overhead = match mode {
        TwoNodeMode::Podrouter {
            tunnel: "vxlan", ..
        }
        | TwoNodeMode::KernelVxlan => VXLAN_OVERHEAD,
        TwoNodeMode::Podrouter { encap: "never", .. } | TwoNodeMode::KernelPlain => 0,
        TwoNodeMode::Podrouter { .. } => IPIP_OVERHEAD,
    };
    TWO_NODE_POD_MTU.min(underlay_mtu - overhead)
}
/// Pod blocks of node 1 and node 2 (single-node topologies use a /22 from
/// the first so 1,000 pods fit).
pub const BLOCKS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 0, 0), Ipv4Addr::new(10, 244, 4, 0)];
/// The MAC every host-side interface has (Calico's), and the router's.
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// What the notes say of a kernel plane without RPS.
const INLINE: &str = "forwarding on the sending CPU, as Calico leaves a node";

/// How the data plane is set up for one topology.
#[derive(Clone, Debug)]
pub struct PlaneOpts {
    pub bin_dir: PathBuf,
    /// podrouterd's `dataplane.backend`.
    pub backend: String,
    /// CPU of podrouterd's worker, and target of the kernel's RPS.
    pub dp_cpu: usize,
    /// The same for the second node of two-node topologies (equal to
    /// `dp_cpu` on machines with fewer than three CPUs).
    pub dp_cpu_node2: usize,
    /// Pod MTU on one node (two-node: set per encapsulation).
    pub mtu: u16,
    /// podrouterd's `dataplane.workers` (`--workers`).
    pub workers: usize,
    /// The CPUs further workers are pinned to, in order, after `dp_cpu`
    /// (the machine's other CPUs); the kernel plane's RPS spreads over
    /// the same set, so both planes get the same CPUs.
    pub spare_cpus: Vec<usize>,
    /// `dataplane.uplink_xdp` in two-node tunnel topologies (`--uplink-xdp`).
    pub uplink_xdp: bool,
    /// `dataplane.afxdp_rx_chunks` (`--afxdp-rx-chunks`), if given.
    pub afxdp_rx_chunks: Option<u32>,
    /// `dataplane.busy_poll_us` (`--busy-poll-us`), if given.
    pub busy_poll_us: Option<u32>,
    /// `dataplane.busy_poll_max_us` (`--busy-poll-max-us`), if given.
    pub busy_poll_max_us: Option<u32>,
    /// `dataplane.worker_slice_us` (`--worker-slice-us`), if given.
    pub worker_slice_us: Option<u32>,
    /// `dataplane.worker_rt_priority` (`--worker-rt-priority`), if given.
    pub worker_rt_priority: Option<u32>,
    /// The kernel plane forwards on the sending CPU, without RPS
    /// (`--kernel-inline`).
    pub kernel_inline: bool,
}

impl PlaneOpts {
    /// The CPUs of podrouterd's workers (`dataplane.cores`): `dp_cpu`,
    /// then the spare CPUs; fewer than `workers` when the machine has
    /// fewer CPUs (the rest run unpinned).
    pub fn worker_cpus(&self) -> Vec<usize> {
        let mut cpus = vec![self.dp_cpu];
        cpus.extend(self.spare_cpus.iter().filter(|&&c| c != self.dp_cpu));
        cpus.truncate(self.workers.max(1));
        cpus
    }

    /// The RPS mask of the kernel plane: the workers' CPUs, or none
    /// (`kernel_inline`).
    fn rps_mask(&self) -> String {
        if self.kernel_inline {
            return "0".into();
        }
        let mask = self
            .worker_cpus()
            .iter()
            .fold(0u64, |m, &c| m | 1u64 << c.min(63));
        format!("{mask:x}")
    }

    /// Where the kernel plane forwards `what`'s receive, for the notes.
    fn steering(&self, what: &str) -> String {
        if self.kernel_inline {
            format!("no RPS on {what} ({INLINE})")
        } else {
            format!(
                "RPS of {what} steered to CPU mask {} (podrouterd's workers' CPUs)",
                self.rps_mask()
            )
        }
    }

    /// How the workers are placed, for the notes.
    pub fn workers_text(&self) -> String {
        let cpus = self.worker_cpus();
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        let mut t = format!(
            "{} worker{} pinned to CPU {}",
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            list.join(",")
        );
        if cpus.len() < self.workers {
            t += &format!(" ({} unpinned)", self.workers - cpus.len());
        }
        t
    }

    /// Whether a two-node podrouter pair runs its uplink through XDP:
    /// asked for, and a tunnel (IPIP or VXLAN) that is encapsulated (what
    /// `uplink_xdp` takes).
    pub fn uplink_xdp_for(&self, encap: &str, tunnel: &str) -> bool {
        self.uplink_xdp && matches!(tunnel, "ipip" | "vxlan") && encap != "never"
    }
}

/// A pod: its namespace, address and interface.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ifname: String,
}

/// A running podrouterd.
pub struct Daemon {
    pub proc: Proc,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub state_dir: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn client(&self) -> Res<Client> {
        Client::connect(&self.socket, Duration::from_secs(30))
            .map_err(|e| Error::msg(e.to_string()))
    }

    pub fn call(&self, call: Call) -> Res<Reply> {
        self.client()?
            .call(call)
            .map_err(|e| Error::msg(e.to_string()))
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Packets sent through the port named `name` (`ipip@u1`, ...), if the
    /// daemon has such a port.
    pub fn port_tx(&self, name: &str) -> Res<Option<u64>> {
        match self.call(Call::Counters)? {
            Reply::Counters(c) => Ok(c
                .ports
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.tx_packets)),
            r => bail!("counters: unexpected reply {r:?}"),
        }
    }

    /// The kernel's AF_XDP drop counters summed over the daemon's pod
    /// ports, `[rx_dropped, rx_ring_full, rx_fill_empty]` (zeros without
    /// AF_XDP ports).
    pub fn xsk_drops(&self) -> Res<[u64; 3]> {
        match self.call(Call::Counters)? {
            Reply::Counters(c) => Ok(c
                .ports
                .iter()
                .filter_map(|p| p.xsk.as_ref())
                .fold([0; 3], |[d, r, f], x| {
                    [d + x.rx_dropped, r + x.rx_ring_full, f + x.rx_fill_empty]
                })),
            r => bail!("counters: unexpected reply {r:?}"),
        }
    }

    /// Non-zero drop counters, `reason=N` (for messages).
    pub fn drops(&self) -> String {
        match self.call(Call::Counters) {
            Ok(Reply::Counters(c)) => c
                .drops
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            Ok(_) => String::new(),
            Err(e) => format!("(counters: {e})"),
        }
    }
}

/// Everything one data plane under test consists of.
pub struct Topology {
    /// "podrouter (tap)", "kernel", "kernel VXLAN", ...
    pub label: String,
    pub pods: Vec<Pod>,
    /// Stopped first (declaration order is drop order).
    pub daemons: Vec<Daemon>,
    /// The namespaces where the data plane runs (nodes).
    pub nodes: Vec<String>,
    /// Interfaces whose RPS was steered (kernel) — for the record.
    pub notes: Vec<String>,
    pod_ns: Vec<NetnsGroup>,
    _node_ns: Vec<NetnsGroup>,
    _dir: TempDir,
}

impl Topology {
    pub fn is_podrouter(&self) -> bool {
        !self.daemons.is_empty()
    }

    pub fn daemon_pids(&self) -> Vec<u32> {
        self.daemons.iter().map(Daemon::pid).collect()
    }

    /// [`Daemon::xsk_drops`] summed over the daemons.
    pub fn xsk_drops(&self) -> Res<[u64; 3]> {
        let mut sum = [0; 3];
        for d in &self.daemons {
            for (s, v) in sum.iter_mut().zip(d.xsk_drops()?) {
                *s += v;
            }
        }
        Ok(sum)
    }

    /// The first daemon's drop counters as " (podrouterd drops: ...)", or
    /// nothing (for one-line failure reasons).
    pub fn drops_hint(&self) -> String {
        self.diagnose()
            .lines()
            .find(|l| l.contains("drops:"))
            .map(|l| format!(" ({})", l.trim()))
            .unwrap_or_default()
    }

    /// Explains why traffic may not have arrived: the daemons' drop counters
    /// and log tails.
    pub fn diagnose(&self) -> String {
        let mut s = String::new();
        for d in &self.daemons {
            let _ = write!(s, "\n  podrouterd drops: {}", d.drops());
            let _ = write!(s, "\n  podrouterd log tail:\n{}", d.log_tail());
        }
        s
    }
}

fn pod_ip(block: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block) + 1 + i as u32)
}

fn pod_mac(node: usize, i: usize) -> String {
    format!(
        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
        node,
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// The two nodes' data-plane CPUs: "1", "1,0" or "1 (node 1) and 2
/// (node 2)".
fn cpu_list(nodes: &[PlaneOpts; 2]) -> String {
    let [a, b] = [&nodes[0], &nodes[1]].map(|o| {
        o.worker_cpus()
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    });
    if a == b {
        a
    } else {
        format!("{a} (node 1) and {b} (node 2)")
    }
}

// ---------------------------------------------------------------------------
// podrouterd

/// Writes a config and starts podrouterd in `node`, waiting for its API.
fn start_daemon(
    opts: &PlaneOpts,
    dir: &Path,
    name: &str,
    node: &str,
    node_ip: Ipv4Addr,
    cidr: &str,
    extra_dataplane: &str,
) -> Res<Daemon> {
    let ddir = dir.join(name);
    fs::create_dir_all(&ddir)?;
    let socket = ddir.join("api.sock");
    let state_dir = ddir.join("state");
    let log = ddir.join("podrouterd.log");
    let config = ddir.join("podrouter.toml");
    let toml = format!(
        "# written by podrouter-bench\n\
         node_name = \"{name}\"\n\
         node_ip = \"{node_ip}\"\n\
         pod_cidrs = [\"{cidr}\"]\n\
         api_socket = \"{}\"\n\
         state_dir = \"{}\"\n\
         log_level = \"warn\"\n\
         \n\
         [dataplane]\n\
         backend = \"{}\"\n\
         workers = {}\n\
         cores = [{}]\n\
         mtu = {}\n\
         {}\
         {}\
         {}\
         {}\
         {}\
         {extra_dataplane}\n",
        socket.display(),
        state_dir.display(),
        opts.backend,
        opts.workers.max(1),
        opts.worker_cpus()
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        opts.mtu,
        opts.afxdp_rx_chunks
            .map(|n| format!("afxdp_rx_chunks = {n}\n"))
            .unwrap_or_default(),
        opts.busy_poll_us
            .map(|n| format!("busy_poll_us = {n}\n"))
            .unwrap_or_default(),
        opts.busy_poll_max_us
            .map(|n| format!("busy_poll_max_us = {n}\n"))
            .unwrap_or_default(),
        opts.worker_slice_us
            .map(|n| format!("worker_slice_us = {n}\n"))
            .unwrap_or_default(),
        opts.worker_rt_priority
            .map(|n| format!("worker_rt_priority = {n}\n"))
            .unwrap_or_default(),
    );
    // [[routes]] tables must come after [dataplane]'s keys: callers pass
    // them in extra_dataplane's tail.
    fs::write(&config, toml)?;
    let d = opts.bin_dir.join("podrouterd");
    let d = d.to_string_lossy();
    let c = config.to_string_lossy();
    let proc = Proc::spawn(
        "podrouterd",
        &["ip", "netns", "exec", node, &d, "--config", &c],
        Some(&log),
    )?;
    let mut daemon = Daemon {
        proc,
        socket,
        log,
        state_dir,
    };
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        util::check()?;
        if !daemon.proc.running() {
            bail!(
                "podrouterd exited at start; config {}; log:\n{}",
                config.display(),
                daemon.log_tail()
            );
        }
        if daemon.socket.exists() && daemon.call(Call::Status).is_ok() {
            return Ok(daemon);
        }
        if Instant::now() > end {
            bail!(
                "podrouterd did not answer within 20 s:\n{}",
                daemon.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Attaches every namespace of `pods` (in order) through the API.
fn attach_all(d: &Daemon, pods: &NetnsGroup, mut tick: impl FnMut(usize)) -> Res<Vec<Pod>> {
    let mut c = d.client()?;
    let mut out = Vec::with_capacity(pods.len());
    for (i, ns) in pods.names().iter().enumerate() {
        util::check()?;
        let r = c
            .call(Call::Attach(AttachParams {
                id: format!("bench-{i}"),
                netns: format!("/run/netns/{ns}"),
                ifname: "eth0".into(),
                ip: None,
                mtu: None,
                identity: None,
            }))
            .map_err(|e| Error::msg(format!("attach {ns}: {e}")))?;
        let Reply::Pod(p) = r else {
            bail!("attach {ns}: unexpected reply {r:?}");
        };
        out.push(Pod {
            ns: ns.clone(),
            ip: p.ip,
            ifname: p.ifname,
        });
        tick(i + 1);
    }
    Ok(out)
}

/// The start of every one-node topology: a unique tag, a temporary
/// directory, and the node namespace (returned with its name) holding
/// [`NODE_IP`] on `lo`.
fn single_node() -> Res<(String, TempDir, NetnsGroup, String)> {
    let tag = util::unique_tag();
    let dir = util::temp_dir(&tag)?;
    let node = NetnsGroup::create(vec![format!("{tag}-node")])?;
    let node_name = node.names()[0].clone();
    let ip = format!("{NODE_IP}/32");
    run(&["ip", "-n", &node_name, "addr", "add", &ip, "dev", "lo"])?;
    Ok((tag, dir, node, node_name))
}

/// One node running podrouterd with `npods` pods attached.
pub fn podrouter_same_node(
    opts: &PlaneOpts,
    npods: usize,
    tick: impl FnMut(usize),
) -> Res<Topology> {
    podrouter_same_node_with(opts, npods, "", tick)
}

/// [`podrouter_same_node`] with `extra_config` at the end of podrouterd's
/// config (tables such as `[metrics]`).
pub fn podrouter_same_node_with(
    opts: &PlaneOpts,
    npods: usize,
    extra_config: &str,
    tick: impl FnMut(usize),
) -> Res<Topology> {
    let (tag, dir, node, node_name) = single_node()?;
    let daemon = start_daemon(
        opts,
        dir.path(),
        "bench-node",
        &node_name,
        NODE_IP,
        &format!("{}/22", BLOCKS[0]),
        extra_config,
    )?;
    let mut topo = Topology {
        label: format!("podrouter ({})", opts.backend),
        pods: Vec::new(),
        daemons: vec![daemon],
        nodes: vec![node_name],
        notes: vec![format!(
            "podrouterd: {} (dataplane.cores), pod MTU {}",
            opts.workers_text(),
            opts.mtu
        )],
        pod_ns: Vec::new(),
        _node_ns: vec![node],
        _dir: dir,
    };
    let pods = NetnsGroup::create((0..npods).map(|i| format!("{tag}-p{i}")).collect())?;
    // Keep the group in the topology before attaching, so a failure
    // half-way still deletes every namespace.
    topo.pod_ns.push(pods);
    let pods = attach_all(&topo.daemons[0], &topo.pod_ns[0], tick)?;
    topo.pods = pods;
    Ok(topo)
}

// ---------------------------------------------------------------------------
// The kernel, Calico-style

/// Creates veth pairs `cali<i>` (node side, MAC ee:ee:ee:ee:ee:ee,
/// proxy_arp, rp_filter strict, RPS to the data-plane CPU, a /32 route and a
/// permanent neighbour entry for the pod) / `eth0` (pod side: the /32,
/// `169.254.1.1 dev eth0 scope link`, default via it, a permanent neighbour
/// entry for it) for every pod namespace.
fn kernel_pods(
    node: &str,
    node_idx: usize,
    pods: &[String],
    block: Ipv4Addr,
    mtu: u16,
    rps_mask: &str,
    mut tick: impl FnMut(usize),
) -> Res<Vec<Pod>> {
    let mut out = Vec::new();
    let mut node_lines = String::new();
    for (i, ns) in pods.iter().enumerate() {
        let ip = pod_ip(block, i);
        let mac = pod_mac(node_idx, i);
        let _ = writeln!(
            node_lines,
            "link add cali{i} address {HOST_MAC} mtu {mtu} type veth peer name eth0 address {mac} mtu {mtu} netns {ns}\n\
             link set cali{i} up\n\
             route add {ip}/32 dev cali{i} scope link\n\
             neigh replace {ip} lladdr {mac} dev cali{i} nud permanent"
        );
        out.push(Pod {
            ns: ns.clone(),
            ip,
            ifname: "eth0".into(),
        });
    }
    ip_batch(Some(node), &node_lines)?;
    util::ns_sh(
        node,
        &format!(
            "sysctl -qw net.ipv4.ip_forward=1 && \
             for d in /proc/sys/net/ipv4/conf/cali*; do echo 1 > $d/proxy_arp; echo 1 > $d/rp_filter; done && \
             for d in /proc/sys/net/ipv4/neigh/cali*; do echo 0 > $d/proxy_delay; done && \
             for q in /sys/class/net/cali*/queues/rx-0/rps_cpus; do echo {rps_mask} > $q; done"
        ),
    )?;
    for (i, p) in out.iter().enumerate() {
        util::check()?;
        ip_batch(
            Some(&p.ns),
            &format!(
                "link set eth0 up\n\
                 addr add {}/32 dev eth0\n\
                 route add 169.254.1.1 dev eth0 scope link\n\
                 route add default via 169.254.1.1 dev eth0\n\
                 neigh replace 169.254.1.1 lladdr {HOST_MAC} dev eth0 nud permanent\n",
                p.ip
            ),
        )?;
        tick(i + 1);
    }
    Ok(out)
}

/// One node whose kernel forwards between `npods` Calico-style pods.
pub fn kernel_same_node(opts: &PlaneOpts, npods: usize, tick: impl FnMut(usize)) -> Res<Topology> {
    let (tag, dir, node, node_name) = single_node()?;
    let mut topo = Topology {
        label: "kernel".into(),
        pods: Vec::new(),
        daemons: Vec::new(),
        nodes: vec![node_name.clone()],
        notes: vec![format!(
            "kernel: {}, pod MTU {}",
            opts.steering("the host-side veths"),
            opts.mtu
        )],
        pod_ns: Vec::new(),
        _node_ns: vec![node],
        _dir: dir,
    };
    topo.pod_ns.push(NetnsGroup::create(
        (0..npods).map(|i| format!("{tag}-p{i}")).collect(),
    )?);
    topo.pods = kernel_pods(
        &node_name,
        0,
        topo.pod_ns[0].names(),
        BLOCKS[0],
        opts.mtu,
        &opts.rps_mask(),
        tick,
    )?;
    Ok(topo)
}

/// Two pods joined by a bare veth pair (`eth0` in each), no node, router
/// or NAT in between: each pod's /32 and a device route to the other.
/// Each `eth0`'s receive is steered (RPS) to the data-plane CPUs, as the
/// kernel plane steers its host-side veths, so a packet crosses to that
/// CPU once and its receiver is woken from there, the same CPU path as in
/// either plane. The floor of what the pods' own stacks and wake-ups cost.
pub fn bare_wire(opts: &PlaneOpts) -> Res<Topology> {
    let tag = util::unique_tag();
    let dir = util::temp_dir(&tag)?;
    let group = NetnsGroup::create((0..2).map(|i| format!("{tag}-p{i}")).collect())?;
    let names = group.names().to_vec();
    let ips = [pod_ip(BLOCKS[0], 0), pod_ip(BLOCKS[0], 1)];
    let rps = opts.rps_mask();
    ip_batch(
        Some(&names[0]),
        &format!(
            "link add eth0 mtu {mtu} type veth peer name eth0 mtu {mtu} netns {peer}\n",
            mtu = opts.mtu,
            peer = names[1]
        ),
    )?;
    for (i, ns) in names.iter().enumerate() {
        util::check()?;
        ip_batch(
            Some(ns),
            &format!(
                "link set lo up\n\
                 link set eth0 up\n\
                 addr add {}/32 dev eth0\n\
                 route add {}/32 dev eth0 scope link\n",
                ips[i],
                ips[1 - i]
            ),
        )?;
        util::ns_sh(
            ns,
            &format!("echo {rps} > /sys/class/net/eth0/queues/rx-0/rps_cpus"),
        )?;
    }
    Ok(Topology {
        label: "bare veth pair".into(),
        pods: names
            .iter()
            .zip(ips)
            .map(|(ns, ip)| Pod {
                ns: ns.clone(),
                ip,
                ifname: "eth0".into(),
            })
            .collect(),
        daemons: Vec::new(),
        nodes: Vec::new(),
        notes: vec![format!(
            "bare veth pair: two pods on one veth pair, no router; {}",
            opts.steering("each end")
        )],
        pod_ns: vec![group],
        _node_ns: Vec::new(),
        _dir: dir,
    })
}

// ---------------------------------------------------------------------------
// The bare-XSK ceiling probe

/// Two pods on veth pairs, as podrouterd's afxdp backend makes them (pod
/// end one queue, node end two), whose node ends are driven by the
/// harness's `xskfwd` helper: podrouter's AF_XDP port forwarding with only
/// the MACs rewritten, no pipeline. What AF_XDP itself allows on this
/// machine, with podrouter's rings and copies.
pub fn xsk_bare_same_node(opts: &PlaneOpts, self_exe: &Path) -> Res<Topology> {
    let (tag, dir, node, node_name) = single_node()?;
    let mtu = opts.mtu;
    let mut topo = Topology {
        label: "bare XSK forwarder".into(),
        pods: Vec::new(),
        daemons: Vec::new(),
        nodes: vec![node_name.clone()],
        notes: vec![format!(
            "bare XSK forwarder: podrouter's AF_XDP port on both node-side veths, MAC rewrite only, pinned to CPU {}",
            opts.dp_cpu
        )],
        pod_ns: Vec::new(),
        _node_ns: vec![node],
        _dir: dir,
    };
    topo.pod_ns.push(NetnsGroup::create(
        (0..2).map(|i| format!("{tag}-p{i}")).collect(),
    )?);
    let mut node_lines = String::new();
    let mut macs = Vec::new();
    for (i, ns) in topo.pod_ns[0].names().iter().enumerate() {
        let ip = pod_ip(BLOCKS[0], i);
        let mac = pod_mac(0, i);
        let _ = writeln!(
            node_lines,
            "link add xsk{i} mtu {mtu} numtxqueues 2 numrxqueues 2 type veth peer name eth0 address {mac} mtu {mtu} numtxqueues 1 numrxqueues 1 netns {ns}\n\
             link set xsk{i} up"
        );
        topo.pods.push(Pod {
            ns: ns.clone(),
            ip,
            ifname: "eth0".into(),
        });
        macs.push(mac);
    }
    ip_batch(Some(&node_name), &node_lines)?;
    for p in &topo.pods {
        ip_batch(
            Some(&p.ns),
            &format!(
                "link set eth0 up\n\
                 addr add {}/32 dev eth0\n\
                 route add 169.254.1.1 dev eth0 scope link\n\
                 route add default via 169.254.1.1 dev eth0\n\
                 neigh replace 169.254.1.1 lladdr {HOST_MAC} dev eth0 nud permanent\n",
                p.ip
            ),
        )?;
    }
    let log = topo._dir.path().join("xskfwd.log");
    let exe = self_exe.to_string_lossy();
    let cpu = format!("cpu={}", opts.dp_cpu);
    let mtu = format!("mtu={mtu}");
    let amac = format!("amac={}", macs[0]);
    let bmac = format!("bmac={}", macs[1]);
    let proc = Proc::spawn(
        "xskfwd",
        &[
            "ip", "netns", "exec", &node_name, &exe, "__helper", "xskfwd", "a=xsk0", "b=xsk1",
            &amac, &bmac, &cpu, &mtu,
        ],
        Some(&log),
    )?;
    topo.daemons.push(Daemon {
        proc,
        socket: topo._dir.path().join("no-api.sock"),
        log: log.clone(),
        state_dir: topo._dir.path().to_path_buf(),
    });
    // Up once both programs are attached.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("forwarding")
    {
        util::check()?;
        if Instant::now() > deadline {
            bail!(
                "xskfwd did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(topo)
}

// ---------------------------------------------------------------------------
// Two nodes

/// How two nodes carry pod traffic between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoNodeMode {
    /// podrouterd `encap = "never"|"always"|"cross-subnet"`, `tunnel =
    /// "ipip"|"vxlan"`.
    Podrouter {
        encap: &'static str,
        tunnel: &'static str,
    },
    /// Kernel routing of pod blocks via the other node (Calico IPIP never).
    KernelPlain,
    /// Kernel VXLAN, Flannel-style (`flannel.1`, static FDB and neighbour).
    KernelVxlan,
}

/// What joins the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// One veth pair `u1`/`u2`: both nodes in 192.168.100.0/24.
    Flat,
    /// Node 1 in 192.168.101.0/24, node 2 in 192.168.102.0/24, joined by a
    /// router namespace that forwards between them (veth pairs `u1`/`r1`,
    /// `u2`/`r2`); the router knows no pod block.
    Routed,
}

impl Underlay {
    /// The nodes' underlay addresses.
    pub fn addrs(self) -> [Ipv4Addr; 2] {
        match self {
            Underlay::Flat => UNDERLAY,
            Underlay::Routed => ROUTED_UNDERLAY,
        }
    }
}

/// Two node namespaces joined by `underlay` (every link MTU
/// `underlay_mtu`), one pod on each (MTU [`two_node_pod_mtu`]).
pub fn two_node(
    opts: &PlaneOpts,
    mode: TwoNodeMode,
    underlay: Underlay,
    underlay_mtu: u16,
) -> Res<Topology> {
    let tag = util::unique_tag();
    let dir = util::temp_dir(&tag)?;
    let mut names = vec![format!("{tag}-n1"), format!("{tag}-n2")];
    if underlay == Underlay::Routed {
        names.push(format!("{tag}-rt"));
    }
    let nodes = NetnsGroup::create(names)?;
    let n: Vec<String> = nodes.names()[..2].to_vec();
    let cpus = [opts.dp_cpu, opts.dp_cpu_node2];
    let mtu = two_node_pod_mtu(mode, underlay_mtu);
    // Each node's data plane: its workers' CPUs, and the same set for its
    // kernel's RPS.
    let node_opts = cpus.map(|c| PlaneOpts {
        mtu,
        dp_cpu: c,
        ..opts.clone()
    });
    let vxlan_mtu = underlay_mtu - VXLAN_OVERHEAD;
    let addrs = underlay.addrs();
    let across = if underlay == Underlay::Routed {
        " across a router"
    } else {
        ""
    };
    let label = match mode {
        TwoNodeMode::Podrouter { encap, tunnel } => format!(
            "podrouter ({}, {tunnel}{}, encap {encap}{across}, underlay MTU {underlay_mtu})",
            opts.backend,
            if opts.uplink_xdp_for(encap, tunnel) {
                ", uplink_xdp"
            } else {
                ""
            }
        ),
        TwoNodeMode::KernelPlain => {
            format!("kernel, plain routing{across}, underlay MTU {underlay_mtu}")
        }
        TwoNodeMode::KernelVxlan => format!("kernel, VXLAN{across}, underlay MTU {underlay_mtu}"),
    };
    let mut topo = Topology {
        label,
        pods: Vec::new(),
        daemons: Vec::new(),
        nodes: n.clone(),
        notes: Vec::new(),
        pod_ns: Vec::new(),
        _node_ns: vec![nodes],
        _dir: dir,
    };
    match underlay {
        Underlay::Flat => ip_batch(
            Some(&n[0]),
            &format!(
                "link add u1 mtu {underlay_mtu} type veth peer name u2 mtu {underlay_mtu} netns {}\n",
                n[1]
            ),
        )?,
        Underlay::Routed => {
            let rt = topo._node_ns[0].names()[2].clone();
            let mut lines = String::new();
            for k in 0..2 {
                let _ = writeln!(
                    lines,
                    "link add r{i} mtu {underlay_mtu} type veth peer name u{i} mtu {underlay_mtu} netns {}\n\
                     addr add {}/24 dev r{i}\n\
                     link set r{i} up",
                    n[k],
                    ROUTER[k],
                    i = k + 1
                );
            }
            ip_batch(Some(&rt), &lines)?;
            // The router's forwarding runs where the data planes run: RPS
            // of the link from each node to that node's data-plane CPU.
            util::ns_sh(
                &rt,
                &format!(
                    "sysctl -qw net.ipv4.ip_forward=1 && \
                     echo {} > /sys/class/net/r1/queues/rx-0/rps_cpus && \
                     echo {} > /sys/class/net/r2/queues/rx-0/rps_cpus",
                    node_opts[0].rps_mask(),
                    node_opts[1].rps_mask()
                ),
            )?;
        }
    }
    for k in 0..2 {
        let u = format!("u{}", k + 1);
        let mut lines = format!("addr add {}/24 dev {u}\nlink set {u} up\n", addrs[k]);
        if underlay == Underlay::Routed {
            // The other node's subnet through the router.
            let o = addrs[1 - k].octets();
            let _ = writeln!(
                lines,
                "route add {}.{}.{}.0/24 via {} dev {u}",
                o[0], o[1], o[2], ROUTER[k]
            );
        }
        ip_batch(Some(&n[k]), &lines)?;
        util::ns_sh(
            &n[k],
            &format!(
                "sysctl -qw net.ipv4.ip_forward=1 && echo {} > /sys/class/net/{u}/queues/rx-0/rps_cpus",
                node_opts[k].rps_mask()
            ),
        )?;
    }
    let pods = NetnsGroup::create(vec![format!("{tag}-p1"), format!("{tag}-p2")])?;
    let pod_names = pods.names().to_vec();
    topo.pod_ns.push(pods);
    match mode {
        TwoNodeMode::Podrouter { encap, tunnel } => {
            for k in 0..2 {
                let other = 1 - k;
                let d = start_daemon(
                    &node_opts[k],
                    topo._dir.path(),
                    &format!("bench-n{}", k + 1),
                    &n[k],
                    addrs[k],
                    &format!("{}/24", BLOCKS[k]),
                    &format!(
                        "uplink = \"u{}\"\nencap = \"{encap}\"\ntunnel = \"{tunnel}\"\n{}\n[[routes]]\nprefix = \"{}/24\"\nvia = \"{}\"\n",
                        k + 1,
                        // Only when on: older podrouterds refuse the key.
                        if opts.uplink_xdp_for(encap, tunnel) {
                            "uplink_xdp = true\n"
                        } else {
                            ""
                        },
                        BLOCKS[other],
                        addrs[other]
                    ),
                )?;
                topo.daemons.push(d);
            }
            topo.notes.push(format!(
                "two nodes: podrouterd {} worker(s) per node pinned to CPU {}, pod MTU {mtu}, underlay MTU {underlay_mtu}",
                opts.workers.max(1),
                cpu_list(&node_opts)
            ));
            let mut pods = Vec::new();
            for (k, (d, pod_ns)) in topo.daemons.iter().zip(&pod_names).enumerate() {
                let mut c = d.client()?;
                let r = c
                    .call(Call::Attach(AttachParams {
                        id: "bench-0".into(),
                        netns: format!("/run/netns/{pod_ns}"),
                        ifname: "eth0".into(),
                        ip: None,
                        mtu: None,
                        identity: None,
                    }))
                    .map_err(|e| Error::msg(format!("attach on node {}: {e}", k + 1)))?;
                let Reply::Pod(p) = r else {
                    bail!("attach: unexpected reply {r:?}");
                };
                pods.push(Pod {
                    ns: pod_ns.clone(),
                    ip: p.ip,
                    ifname: p.ifname,
                });
            }
            topo.pods = pods;
        }
        TwoNodeMode::KernelPlain | TwoNodeMode::KernelVxlan => {
            for k in 0..2 {
                topo.pods.extend(kernel_pods(
                    &n[k],
                    k + 1,
                    &pod_names[k..k + 1],
                    BLOCKS[k],
                    mtu,
                    &node_opts[k].rps_mask(),
                    |_| {},
                )?);
            }
            if mode == TwoNodeMode::KernelPlain {
                if underlay == Underlay::Routed {
                    // The router would need the pod blocks (Calico's IPIP
                    // "never" across subnets needs BGP to the routers).
                    bail!("plain routing across the router is not a topology of this harness");
                }
                for k in 0..2 {
                    ip_batch(
                        Some(&n[k]),
                        &format!(
                            "route add {}/24 via {} dev u{}\n",
                            BLOCKS[1 - k],
                            addrs[1 - k],
                            k + 1
                        ),
                    )?;
                }
            } else {
                let vmac = ["02:fe:00:00:00:01", "02:fe:00:00:00:02"];
                for k in 0..2 {
                    let o = 1 - k;
                    ip_batch(
                        Some(&n[k]),
                        &format!(
                            "link add flannel.1 address {} mtu {vxlan_mtu} type vxlan id 1 local {} dev u{} dstport 8472 nolearning\n\
                             link set flannel.1 up\n\
                             addr add {}/32 dev flannel.1\n\
                             route add {}/24 via {} dev flannel.1 onlink\n\
                             neigh replace {} lladdr {} dev flannel.1 nud permanent\n",
                            vmac[k],
                            addrs[k],
                            k + 1,
                            BLOCKS[k],
                            BLOCKS[o],
                            BLOCKS[o],
                            BLOCKS[o],
                            vmac[o],
                        ),
                    )?;
                    run(&[
                        "bridge",
                        "-n",
                        &n[k],
                        "fdb",
                        "append",
                        vmac[o],
                        "dev",
                        "flannel.1",
                        "dst",
                        &addrs[o].to_string(),
                    ])?;
                }
            }
            topo.notes.push(format!(
                "two nodes (kernel): {}, pod MTU {mtu}, underlay MTU {underlay_mtu}{}",
                if opts.kernel_inline {
                    format!("no RPS on the host-side and underlay veths ({INLINE})")
                } else {
                    format!(
                        "RPS of host-side and underlay veths steered to CPU {}",
                        cpu_list(&node_opts)
                    )
                },
                if mode == TwoNodeMode::KernelVxlan {
                    format!(", flannel.1 MTU {vxlan_mtu}")
                } else {
                    String::new()
                }
            ));
        }
    }
    if underlay == Underlay::Routed {
        topo.notes.push(format!(
            "routed underlay: a router namespace forwards between 192.168.101.0/24 and \
             192.168.102.0/24 ({})",
            if opts.kernel_inline {
                format!("no RPS on its links ({INLINE})")
            } else {
                format!("RPS of its links to CPU {}", cpu_list(&node_opts))
            }
        ));
    }
    Ok(topo)
}

// ---------------------------------------------------------------------------
// Bare nodes for the CNI scenario

/// A node namespace with `npods` empty pod namespaces, and podrouterd when
/// `daemon` (for podrouter-cni); nothing else (for ptp).
/// The prefix length of a CNI node's pod block (podrouterd's and
/// host-local's) for `npods` pods: a /22, or a /21 above 1,022 pods.
pub fn cni_prefix_len(npods: usize) -> u8 {
    if npods <= 1022 {
        22
    } else {
        21
    }
}

pub fn cni_node(opts: &PlaneOpts, npods: usize, daemon: bool) -> Res<Topology> {
    let (tag, dir, node, node_name) = single_node()?;
    let mut topo = Topology {
        label: if daemon {
            "podrouter-cni"
        } else {
            "ptp + host-local"
        }
        .into(),
        pods: Vec::new(),
        daemons: Vec::new(),
        nodes: vec![node_name.clone()],
        notes: Vec::new(),
        pod_ns: Vec::new(),
        _node_ns: vec![node],
        _dir: dir,
    };
    if daemon {
        let d = start_daemon(
            opts,
            topo._dir.path(),
            "bench-cni",
            &node_name,
            NODE_IP,
            // A /22 holds 1,022 pods; more (pods already attached beside
            // the measured ones) need a /21, from the same address.
            &format!("{}/{}", BLOCKS[0], cni_prefix_len(npods)),
            "",
        )?;
        topo.daemons.push(d);
    }
    let pods = NetnsGroup::create((0..npods).map(|i| format!("{tag}-c{i}")).collect())?;
    topo.pods = pods
        .names()
        .iter()
        .map(|ns| Pod {
            ns: ns.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            ifname: "eth0".into(),
        })
        .collect();
    topo.pod_ns.push(pods);
    Ok(topo)
}

impl Topology {
    /// The temporary directory of this topology (configs, logs).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

// ---------------------------------------------------------------------------
// A Service, kube-proxy style

/// The ClusterIP of the Services scenario (a Service's usual range).
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The ClusterIP of the `i`th of the other Services loaded beside the
/// measured one (10.96.16.0 upwards: never [`CLUSTER_IP`]).
pub fn other_cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_1000 + i)
}

/// The two endpoints of the `i`th other Service: addresses of the cluster
/// CIDR (10.245.0.0/16) that no pod of the benchmark has; no traffic goes
/// to them.
fn other_endpoints(i: u32) -> [Ipv4Addr; 2] {
    let b = 0x0af5_0000 + 2 * i;
    [Ipv4Addr::from(b), Ipv4Addr::from(b + 1)]
}

/// kube-proxy's iptables-mode nat table (as `iptables-save` prints it) for
/// one Service at [`CLUSTER_IP`] with the given `(protocol, port)`s, each
/// spread over `backends` the way kube-proxy spreads endpoints (`-m
/// statistic --mode random --probability 1/n`, then 1/(n-1) of the rest,
/// ...), with its masquerade rules (sources outside the cluster CIDR,
/// hairpins), among `others` other Services of one TCP port and two
/// endpoints each ([`other_cluster_ip`]).
///
/// kube-proxy writes one `KUBE-SERVICES` rule per Service port, in the
/// order it iterates its Go map of service ports: unsorted, a different
/// order at every resync. So a Service's place in the chain is random,
/// halfway down on average: the measured Service's rules go after half
/// of the others'. Every new connection's first packet through the
/// node's nat table walks the chain to its Service's rule, and a packet
/// to no Service (pod to pod) walks all of it.
pub fn kube_proxy_rules(ports: &[(&str, u16)], backends: &[Ipv4Addr], others: u32) -> String {
    let mut r = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    for i in 0..ports.len() {
        let _ = writeln!(r, ":KUBE-SVC-{i} - [0:0]");
        for j in 0..backends.len() {
            let _ = writeln!(r, ":KUBE-SEP-{i}-{j} - [0:0]");
        }
    }
    for i in 0..others {
        let _ = writeln!(
            r,
            ":KUBE-SVC-O{i} - [0:0]\n:KUBE-SEP-O{i}-0 - [0:0]\n:KUBE-SEP-O{i}-1 - [0:0]"
        );
    }
    r.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    // KUBE-SERVICES, in chain order: half the others, the measured
    // Service, the other half.
    let mut services: Vec<String> = Vec::new();
    for i in 0..others {
        let vip = other_cluster_ip(i);
        let eps = other_endpoints(i);
        services.push(format!(
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"other/s{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-O{i}"
        ));
        let _ = writeln!(
            r,
            "-A KUBE-SVC-O{i} ! -s 10.244.0.0/16 -d {vip}/32 -p tcp -m comment --comment \"other/s{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
             -A KUBE-SVC-O{i} -m comment --comment \"other/s{i}:http -> {}:8080\" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-O{i}-0\n\
             -A KUBE-SVC-O{i} -m comment --comment \"other/s{i}:http -> {}:8080\" -j KUBE-SEP-O{i}-1",
            eps[0], eps[1]
        );
        for (j, e) in eps.iter().enumerate() {
            let _ = writeln!(
                r,
                "-A KUBE-SEP-O{i}-{j} -s {e}/32 -m comment --comment \"other/s{i}:http\" -j KUBE-MARK-MASQ\n\
                 -A KUBE-SEP-O{i}-{j} -p tcp -m comment --comment \"other/s{i}:http\" -m tcp -j DNAT --to-destination {e}:8080"
            );
        }
    }
    let mut measured = Vec::new();
    for (i, (proto, port)) in ports.iter().enumerate() {
        measured.push(format!(
            "-A KUBE-SERVICES -d {CLUSTER_IP}/32 -p {proto} -m comment --comment \"bench/svc:{port} cluster IP\" -m {proto} --dport {port} -j KUBE-SVC-{i}"
        ));
        let _ = writeln!(
            r,
            "-A KUBE-SVC-{i} ! -s 10.244.0.0/16 -d {CLUSTER_IP}/32 -p {proto} -m comment --comment \"bench/svc:{port} cluster IP\" -m {proto} --dport {port} -j KUBE-MARK-MASQ"
        );
        for (j, b) in backends.iter().enumerate() {
            let left = backends.len() - j;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.11} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                r,
                "-A KUBE-SVC-{i} -m comment --comment \"bench/svc:{port} -> {b}:{port}\" {pick}-j KUBE-SEP-{i}-{j}\n\
                 -A KUBE-SEP-{i}-{j} -s {b}/32 -m comment --comment \"bench/svc:{port}\" -j KUBE-MARK-MASQ\n\
                 -A KUBE-SEP-{i}-{j} -p {proto} -m comment --comment \"bench/svc:{port}\" -m {proto} -j DNAT --to-destination {b}:{port}"
            );
        }
    }
    let half = services.len() / 2;
    services.splice(half..half, measured);
    for l in services {
        r.push_str(&l);
        r.push('\n');
    }
    r.push_str("COMMIT\n");
    r
}

impl Topology {
    /// One NetworkPolicy selecting every pod (ingress): `rules - 1` rules
    /// each allowing one 172.16.0.0/16 address on one TCP port, then one
    /// allowing the first pod (any port). 0: no policy.
    pub fn add_podrouter_policy(&self, rules: usize) -> Res<()> {
        if rules == 0 {
            return Ok(());
        }
        let mut text = String::from(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench, namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n",
        );
        for i in 0..rules as u32 - 1 {
            let peer = Ipv4Addr::from(0xac10_0000 + i);
            let _ = writeln!(
                text,
                "  - {{from: [{{ipBlock: {{cidr: {peer}/32}}}}], ports: [{{port: {}}}]}}",
                1000 + i % 5000
            );
        }
        let _ = writeln!(
            text,
            "  - {{from: [{{ipBlock: {{cidr: {}/32}}}}]}}",
            self.pods[0].ip
        );
        match self.daemons[0].call(Call::PolicyApply(podrouter_api::TextParams { text }))? {
            Reply::PolicyApplied(_) => {}
            other => bail!("policy apply: unexpected reply {other:?}"),
        }
        Ok(())
    }

    /// The same rules for the kernel plane: one chain for every packet
    /// out of a pod interface, Calico-style (see the method text).
    pub fn add_iptables_policy(&mut self, rules: usize) -> Res<()> {
        if rules == 0 {
            return Ok(());
        }
        let node = self.nodes[0].clone();
        let mut r = String::from(
            "*filter\n:bench-tw - [0:0]\n-A FORWARD -o cali+ -j bench-tw\n\
             -A bench-tw -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        );
        for i in 0..rules as u32 - 1 {
            let peer = Ipv4Addr::from(0xac10_0000 + i);
            let _ = writeln!(
                r,
                "-A bench-tw -s {peer}/32 -p tcp -m tcp --dport {} -j ACCEPT",
                1000 + i % 5000
            );
        }
        let _ = writeln!(r, "-A bench-tw -s {}/32 -j ACCEPT", self.pods[0].ip);
        r.push_str("-A bench-tw -j DROP\nCOMMIT\n");
        let args = [
            "ip",
            "netns",
            "exec",
            &node,
            "iptables-restore",
            "--noflush",
        ];
        let out = Proc::spawn_full("iptables-restore", &args, None, Some(r.as_bytes()), &[])?
            .wait(Duration::from_secs(120))?;
        if !out.ok() {
            bail!("iptables-restore in {node} failed: {}", out.stderr.trim());
        }
        self.notes.push(format!(
            "{}: {rules} policy rules as an iptables chain on the pod interfaces",
            self.label
        ));
        Ok(())
    }

    /// Installs [`kube_proxy_rules`] in the node's nat table (with
    /// `iptables-restore`) and turns on forwarding, as a Kubernetes node
    /// has it.
    pub fn add_kube_proxy_service(
        &mut self,
        ports: &[(&str, u16)],
        backends: &[Ipv4Addr],
        others: u32,
    ) -> Res<()> {
        let node = self.nodes[0].clone();
        util::ns_sh(&node, "sysctl -qw net.ipv4.ip_forward=1")?;
        let rules = kube_proxy_rules(ports, backends, others);
        let started = Instant::now();
        // Without --noflush: the node's nat table is new and holds nothing
        // else (podrouterd writes no iptables rule). kube-proxy itself
        // restores with --noflush, which this iptables (nf_tables backend)
        // takes 80 s over for 10,000 Services against 2.5 s for a full
        // restore; the resulting rules are the same.
        let args = ["ip", "netns", "exec", &node, "iptables-restore"];
        let out = Proc::spawn_full("iptables-restore", &args, None, Some(rules.as_bytes()), &[])?
            .wait(Duration::from_secs(60))?;
        if !out.ok() {
            let head: String = rules.lines().take(40).collect::<Vec<_>>().join("\n");
            bail!(
                "iptables-restore in {node} failed: {}\n{head}",
                out.stderr.trim()
            );
        }
        self.notes.push(format!(
            "{}: kube-proxy's iptables rules (nat table, iptables-restore) for ClusterIP {CLUSTER_IP} \
             over {} backends{}, net.ipv4.ip_forward=1; loaded in {:.2} s",
            self.label,
            backends.len(),
            if others > 0 {
                format!(", its KUBE-SERVICES rules after {} of {others} other Services'", others / 2)
            } else {
                String::new()
            },
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The same Service given to podrouterd's built-in load balancer
    /// (`podrouterctl service apply`: a Service and its EndpointSlice)
    /// instead of the kernel's rules: no iptables rule at all.
    /// `others`: as many other Services (those of [`kube_proxy_rules`]),
    /// in the same `service apply`.
    pub fn add_builtin_service(
        &mut self,
        ports: &[(&str, u16)],
        backends: &[Ipv4Addr],
        others: u32,
    ) -> Res<()> {
        let mut svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: bench}}\n\
             spec:\n  clusterIP: {CLUSTER_IP}\n  ports:\n"
        );
        let mut slice = String::from(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-1\n  \
             namespace: bench\n  labels: {kubernetes.io/service-name: svc}\naddressType: IPv4\n\
             endpoints:\n",
        );
        for b in backends {
            let _ = writeln!(slice, "- addresses: [{b}]\n  conditions: {{ready: true}}");
        }
        slice += "ports:\n";
        for (proto, port) in ports {
            let proto = proto.to_uppercase();
            let _ = writeln!(
                svc,
                "  - {{name: p{port}, port: {port}, protocol: {proto}, targetPort: {port}}}"
            );
            let _ = writeln!(
                slice,
                "- {{name: p{port}, port: {port}, protocol: {proto}}}"
            );
        }
        let mut text = format!("{svc}---\n{slice}");
        for i in 0..others {
            let [a, b] = other_endpoints(i);
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: other}}\n\
                 spec: {{clusterIP: {}, ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s{i}-1, namespace: other, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
                 addressType: IPv4\nendpoints: [{{addresses: [{a}]}}, {{addresses: [{b}]}}]\n\
                 ports: [{{name: http, port: 8080, protocol: TCP}}]\n",
                other_cluster_ip(i)
            );
        }
        let started = Instant::now();
        match self.daemons[0].call(Call::ServiceApply(podrouter_api::TextParams { text }))? {
            Reply::ServicesApplied(a) if a.len() == 2 * (others as usize + 1) => {}
            other => bail!("service apply: unexpected reply {other:?}"),
        }
        let applied = started.elapsed();
        match self.daemons[0].call(Call::ServiceList)? {
            Reply::Services(l) if l.len() == others as usize + 1 => {}
            Reply::Services(l) => bail!(
                "service list: {} Services after applying {}",
                l.len(),
                others + 1
            ),
            other => bail!("service list: unexpected reply {other:?}"),
        }
        self.notes.push(format!(
            "{}: ClusterIP {CLUSTER_IP} over {} backends in podrouterd's built-in load balancer \
             (service apply{}, answered in {:.2} s), no iptables rule",
            self.label,
            backends.len(),
            if others > 0 {
                format!(" of {} Services in one call", others + 1)
            } else {
                String::new()
            },
            applied.as_secs_f64()
        ));
        Ok(())
    }
}
