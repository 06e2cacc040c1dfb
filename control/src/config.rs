//! podrouterd's configuration: the TOML file, its defaults and its checks.
//!
//! Invariants: a [`Config`] that `load`/`parse` returned is valid (prefixes
//! canonical, MTU in range, one core per worker, no duplicate routes); every
//! error names the file, the line and the key.
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use podrouter_api::check_ifname;
use podrouter_types::Prefix;
use serde::Deserialize;

/// Where the data plane gets its frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// A TAP device per pod (portable; offloads on).
    #[default]
    Tap,
    /// A veth per pod whose host end is driven through AF_XDP.
    Afxdp,
}

/// Where the afxdp backend attaches its XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Driver (native) mode where the interface has it, else generic.
    #[default]
    Auto,
    /// Driver mode only (a port that cannot have it is refused).
    Driver,
    /// Generic (skb) mode.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Driver => "driver",
            XdpMode::Generic => "generic",
        })
    }
}

/// When traffic to another node is IPIP-encapsulated (Calico's modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encap {
    #[default]
    Always,
    CrossSubnet,
    Never,
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encap::Always => "always",
            Encap::CrossSubnet => "cross-subnet",
            Encap::Never => "never",
        })
    }
}

/// The encapsulation to other nodes (Calico's IPIP or VXLAN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    #[default]
    Ipip,
    Vxlan,
}

impl fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TunnelKind::Ipip => "ipip",
            TunnelKind::Vxlan => "vxlan",
        })
    }
}

/// Pod MTU when the file sets none: a 1500-byte underlay minus the tunnel.
pub const DEFAULT_MTU_IPIP: u16 = 1480;
pub const DEFAULT_MTU_VXLAN: u16 = 1450;
/// `[dataplane] busy_poll_us` unless configured: a worker keeps polling
/// for 100 µs after the last frame it received, so the next packet of an
/// exchange finds it awake (it backs off when the scheduler preempts it,
/// and an idle worker still sleeps; README "Connection rate and worker
/// wake-ups" has the idle A/B that chose it).
pub const DEFAULT_BUSY_POLL_US: u32 = 100;
/// `[dataplane] busy_poll_max_us` unless configured: while the gaps
/// between a worker's frames stay within 2 ms, its window grows to bridge
/// them (twice the longest recent gap, at most this), so steady traffic
/// of 500 packets a second or more finds it awake at every packet
/// (`podrouter_router::busy_poll`; README "Busy polling's window grows
/// with the traffic" has the A/B that chose it).
pub const DEFAULT_BUSY_POLL_MAX_US: u32 = 2000;

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Tap => "tap",
            Backend::Afxdp => "afxdp",
        })
    }
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name (BGP, logs, status). Default: the host name.
    pub node_name: String,
    /// The node's own address: source of the router's ICMP errors, BGP next
    /// hop, IPIP outer source. If unset, ICMP errors come from 169.254.1.1.
    pub node_ip: Option<Ipv4Addr>,
    /// Blocks this node hands pod addresses from.
    #[serde(deserialize_with = "de_prefixes")]
    pub pod_cidrs: Vec<Prefix>,
    /// The API socket (podrouterctl, CNI plugin).
    pub api_socket: PathBuf,
    /// Where pods, ports and addresses are persisted.
    pub state_dir: PathBuf,
    pub log_level: LogLevel,
    pub dataplane: Dataplane,
    /// Static routes to other nodes' blocks.
    pub routes: Vec<StaticRoute>,
    /// The BGP speaker (needs `node_ip`, the next hop of our blocks).
    pub bgp: Option<Bgp>,
    /// The Prometheus endpoint; off when absent.
    pub metrics: Option<Metrics>,
}

/// `[metrics]`: where `/metrics` is served (Prometheus text format).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address and port, e.g. `127.0.0.1:9091`.
    pub listen: std::net::SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    pub backend: Backend,
    /// Where the afxdp backend attaches its XDP program.
    pub xdp_mode: XdpMode,
    /// The afxdp backend's standing receive share per pod: chunks of its
    /// worker's receive pool a pod port keeps on its fill ring when idle
    /// (a power of two, 64..=4096; a busy port draws up to 1024 or this,
    /// whichever is larger). Transmit chunks are per worker, not per pod.
    pub afxdp_rx_chunks: u32,
    /// Worker threads polling ports.
    pub workers: usize,
    /// CPU core for each worker (same length as `workers`); empty: unpinned.
    pub cores: Vec<usize>,
    /// MTU of pod interfaces and of the host port.
    #[serde(deserialize_with = "de_mtu")]
    pub mtu: u16,
    /// Name of the host TAP device in the node namespace.
    pub host_port: String,
    /// The underlay interface towards other nodes: its MTU bounds the IPIP
    /// path, its subnet decides cross-subnet encapsulation. Default: the
    /// interface holding `node_ip`.
    pub uplink: Option<String>,
    /// When routes to other nodes' blocks are encapsulated.
    pub encap: Encap,
    /// The encapsulation: `ipip` (default) or `vxlan`.
    pub tunnel: TunnelKind,
    /// Receive this node's tunnel traffic through an XDP program and AF_XDP
    /// sockets on the uplink (everything else goes on to the kernel).
    /// Either backend, either tunnel (IPIP, or VXLAN on `vxlan_port`);
    /// needs `node_ip` and an `encap` other than `never`.
    pub uplink_xdp: bool,
    /// Send a pod's TCP GSO segments over IPIP whole, through the TAP
    /// `podrouter-ip` and its tcx program (`podrouter_router::ipip_gso`),
    /// instead of cutting them in userspace. On by default; where the
    /// kernel cannot (no tcx, before Linux 6.6) the uplink says why once
    /// and cuts them as before.
    pub ipip_gso: bool,
    /// VXLAN's UDP port: 4789 (Calico's `vxlan.calico`, the default) or
    /// 8472 (Flannel's `flannel.1`).
    pub vxlan_port: u16,
    /// VXLAN's VNI: 4096 (Calico, the default) or 1 (Flannel).
    pub vxlan_vni: u32,
    /// Frames taken from a port per poll.
    pub batch_size: usize,
    /// ICMP errors per second per worker.
    pub icmp_rate: u32,
    /// ICMP error burst per worker.
    pub icmp_burst: u32,
    /// Slots of the flow table all workers share (flows the node's kernel
    /// NATed; see README "Services"). Rounded up to a power of two.
    pub flow_table_size: usize,
    /// Idle timeouts of the flow table's entries (`[dataplane.flow_timeouts]`).
    pub flow_timeouts: FlowTimeouts,
    /// Microseconds a worker keeps polling, without sleeping, after the
    /// last frame it received (0..=10000; [`DEFAULT_BUSY_POLL_US`] unless
    /// configured; 0: it sleeps after two empty rounds). See README
    /// "Connection rate and worker wake-ups".
    pub busy_poll_us: u32,
    /// How far that window grows while the gaps between the worker's
    /// frames fit in this many microseconds (0..=10000;
    /// [`DEFAULT_BUSY_POLL_MAX_US`] unless configured; at or below
    /// `busy_poll_us`, e.g. 0: the window stays as configured).
    pub busy_poll_max_us: u32,
    /// The workers' scheduler time slice in microseconds (100..=100000;
    /// 0, the default: the kernel's). A worker with a slice shorter than
    /// the task running on its CPU preempts it when it wakes (Linux 6.12's
    /// EEVDF custom slices) instead of waiting up to a tick.
    pub worker_slice_us: u32,
    /// SCHED_FIFO priority of the workers (1..=99; 0: SCHED_OTHER). A woken
    /// real-time worker preempts whatever normal task runs on its CPU
    /// instead of waiting for that task's slice to end. See README
    /// "The p99.9 stall".
    pub worker_rt_priority: u32,
}

/// Idle timeouts of the flow table, in seconds; each defaults to the Linux
/// kernel's nf_conntrack value ([`podrouter_router::conntrack::Timeouts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowTimeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_unreplied: u32,
    pub tcp_fin_wait: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub sctp_replied: u32,
    pub icmp: u32,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        FlowTimeouts::from(podrouter_router::conntrack::Timeouts::default())
    }
}

impl From<podrouter_router::conntrack::Timeouts> for FlowTimeouts {
    fn from(t: podrouter_router::conntrack::Timeouts) -> Self {
        FlowTimeouts {
            tcp_syn_sent: t.tcp_syn_sent,
            tcp_syn_recv: t.tcp_syn_recv,
            tcp_established: t.tcp_established,
            tcp_unreplied: t.tcp_unreplied,
            tcp_fin_wait: t.tcp_fin_wait,
            tcp_time_wait: t.tcp_time_wait,
            tcp_close: t.tcp_close,
            udp_unreplied: t.udp_unreplied,
            udp_replied: t.udp_replied,
            sctp_replied: t.sctp_replied,
            icmp: t.icmp,
        }
    }
}

impl FlowTimeouts {
    /// The data plane's form.
    pub fn timeouts(&self) -> podrouter_router::conntrack::Timeouts {
        podrouter_router::conntrack::Timeouts {
            tcp_syn_sent: self.tcp_syn_sent,
            tcp_syn_recv: self.tcp_syn_recv,
            tcp_established: self.tcp_established,
            tcp_unreplied: self.tcp_unreplied,
            tcp_fin_wait: self.tcp_fin_wait,
            tcp_time_wait: self.tcp_time_wait,
            tcp_close: self.tcp_close,
            udp_unreplied: self.udp_unreplied,
            udp_replied: self.udp_replied,
            sctp_replied: self.sctp_replied,
            icmp: self.icmp,
        }
    }

    /// (key, value) of every timeout, for checks and messages.
    fn entries(&self) -> [(&'static str, u32); 11] {
        [
            ("tcp_syn_sent", self.tcp_syn_sent),
            ("tcp_syn_recv", self.tcp_syn_recv),
            ("tcp_established", self.tcp_established),
            ("tcp_unreplied", self.tcp_unreplied),
            ("tcp_fin_wait", self.tcp_fin_wait),
            ("tcp_time_wait", self.tcp_time_wait),
            ("tcp_close", self.tcp_close),
            ("udp_unreplied", self.udp_unreplied),
            ("udp_replied", self.udp_replied),
            ("sctp_replied", self.sctp_replied),
            ("icmp", self.icmp),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    #[serde(deserialize_with = "de_prefix")]
    pub prefix: Prefix,
    /// The node that owns the block.
    pub via: Ipv4Addr,
    /// That node's VXLAN VTEP MAC when it is not the one derived from its
    /// address (a Flannel or Calico node's `flannel.1` / `vxlan.calico`).
    #[serde(default, deserialize_with = "de_mac")]
    pub vtep_mac: Option<[u8; 6]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// Our AS (2- or 4-octet).
    pub asn: u32,
    /// BGP identifier; default: node_ip.
    #[serde(default)]
    pub router_id: Option<Ipv4Addr>,
    /// TCP port we listen on, and connect to unless a peer says otherwise.
    #[serde(default = "default_bgp_port")]
    pub port: u16,
    /// Address to listen on; default: all.
    #[serde(default)]
    pub listen_address: Option<Ipv4Addr>,
    /// Hold time we propose, seconds (0 = no keepalives, else >= 3).
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Seconds between outbound connection attempts.
    #[serde(default = "default_connect_retry")]
    pub connect_retry: u64,
    /// Graceful restart (RFC 4724), as helper and as restarting speaker.
    #[serde(default = "default_true")]
    pub graceful_restart: bool,
    /// Seconds we ask peers to keep our routes while we restart; also our
    /// bound on a restarted peer's stale routes.
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
    /// The cluster's pod address pools: the only prefixes accepted from
    /// peers (each learned prefix must lie inside one). Default: every
    /// `pod_cidrs` block widened to its /16 (see `bgp::import_pools`).
    #[serde(default, deserialize_with = "de_opt_prefixes")]
    pub import_pools: Option<Vec<Prefix>>,
    #[serde(default)]
    pub peers: Vec<BgpPeer>,
    /// How learned blocks reach the node kernel (see `bgp::kernel_plan`).
    #[serde(default)]
    pub kernel_routes: KernelRoutesMode,
}

/// `[bgp] kernel_routes`: one node kernel route per learned block, or (the
/// default) one per import pool into the host port (the router's FIB has
/// the detail) plus per-block routes only for the blocks the kernel
/// routes itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelRoutesMode {
    PerBlock,
    #[default]
    PerPool,
}

fn de_opt_prefixes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Prefix>>, D::Error> {
    de_prefixes(d).map(Some)
}

fn default_bgp_port() -> u16 {
    179
}
fn default_hold_time() -> u16 {
    90
}
fn default_connect_retry() -> u64 {
    5
}
fn default_restart_time() -> u16 {
    120
}
fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    pub address: Ipv4Addr,
    /// The peer's AS: ours for iBGP, another for eBGP.
    pub asn: u32,
    /// Only accept the peer's connections; never connect.
    #[serde(default)]
    pub passive: bool,
    /// Overrides `[bgp] hold_time` for this peer.
    #[serde(default)]
    pub hold_time: Option<u16>,
    /// TCP MD5 signature key (RFC 2385), 1-80 bytes.
    #[serde(default)]
    pub password: Option<String>,
    /// Close the session (Cease) when the peer sends more prefixes.
    #[serde(default)]
    pub max_prefixes: Option<u32>,
    /// Overrides `[bgp] graceful_restart` for this peer.
    #[serde(default)]
    pub graceful_restart: Option<bool>,
    /// The peer's TCP port; default `[bgp] port`.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: hostname(),
            node_ip: None,
            pod_cidrs: vec!["10.244.0.0/24".parse().expect("literal prefix")],
            api_socket: podrouter_api::DEFAULT_SOCKET.into(),
            state_dir: "/var/lib/podrouter".into(),
            log_level: LogLevel::Info,
            dataplane: Dataplane::default(),
            routes: Vec::new(),
            bgp: None,
            metrics: None,
        }
    }
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            backend: Backend::Tap,
            xdp_mode: XdpMode::Auto,
            afxdp_rx_chunks: podrouter_router::afxdp::DEFAULT_RX_CHUNKS,
            workers: 1,
            cores: Vec::new(),
            mtu: DEFAULT_MTU_IPIP,
            host_port: "podrouter0".into(),
            uplink: None,
            encap: Encap::Always,
            tunnel: TunnelKind::Ipip,
            uplink_xdp: false,
            ipip_gso: true,
            vxlan_port: podrouter_router::vxlan::CALICO_PORT,
            vxlan_vni: podrouter_router::vxlan::CALICO_VNI,
            batch_size: 32,
            icmp_rate: 100,
            icmp_burst: 50,
            flow_table_size: podrouter_router::conntrack::DEFAULT_CAPACITY,
            flow_timeouts: FlowTimeouts::default(),
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            busy_poll_max_us: DEFAULT_BUSY_POLL_MAX_US,
            worker_slice_us: 0,
            worker_rt_priority: 0,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

fn de_prefix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn de_mac<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
    let s = String::deserialize(d)?;
    parse_mac(&s).map(Some).map_err(serde::de::Error::custom)
}

/// `aa:bb:cc:dd:ee:ff` as a unicast MAC.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address like 0e:70:c0:a8:64:01");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!("{s} is not a unicast MAC address"));
    }
    Ok(mac)
}

fn de_prefixes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Prefix>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// Smallest and largest MTU accepted (IPv4 minimum; 64 KiB minus headers).
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=65_000;

fn de_mtu<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = u64::deserialize(d)?;
    u16::try_from(v)
        .ok()
        .filter(|m| MTU_RANGE.contains(m))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "mtu {v} is out of range {}..={}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ))
        })
}

/// A configuration error: where and what.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}", self.file)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and checks config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: file.into(),
                line,
                key: line.and_then(|l| key_on_line(text, l)),
                message: e.message().trim().to_string(),
            }
        })?;
        let sets_mtu = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("dataplane")?.get("mtu").map(drop))
            .is_some();
        if !sets_mtu && cfg.dataplane.tunnel == TunnelKind::Vxlan {
            cfg.dataplane.mtu = DEFAULT_MTU_VXLAN;
        }
        cfg.check().map_err(|(key, message)| ConfigError {
            file: file.into(),
            line: find_key_line(text, key),
            key: Some(key.to_string()),
            message,
        })?;
        Ok(cfg)
    }

    /// Cross-field checks serde cannot express. Returns the offending key.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let dp = &self.dataplane;
        if self.node_name.is_empty() {
            return Err(("node_name", "must not be empty".into()));
        }
        if self.pod_cidrs.is_empty() {
            return Err(("pod_cidrs", "at least one pod CIDR is needed".into()));
        }
        for (i, a) in self.pod_cidrs.iter().enumerate() {
            if a.len() < 8 || a.len() > 30 {
                return Err((
                    "pod_cidrs",
                    format!("{a}: pod CIDRs must be between /8 and /30"),
                ));
            }
            for b in &self.pod_cidrs[i + 1..] {
                if a.contains(b.addr()) || b.contains(a.addr()) {
                    return Err(("pod_cidrs", format!("{a} and {b} overlap")));
                }
            }
        }
        if dp.backend == Backend::Afxdp && dp.mtu > podrouter_router::afxdp::MAX_POD_MTU {
            return Err((
                "mtu",
                format!(
                    "{} is above the afxdp backend's {}",
                    dp.mtu,
                    podrouter_router::afxdp::MAX_POD_MTU
                ),
            ));
        }
        podrouter_router::afxdp::check_rx_chunks(dp.afxdp_rx_chunks)
            .map_err(|e| ("afxdp_rx_chunks", e))?;
        if dp.workers == 0 || dp.workers > 64 {
            return Err(("workers", format!("{} is out of range 1..=64", dp.workers)));
        }
        if !dp.cores.is_empty() && dp.cores.len() != dp.workers {
            return Err((
                "cores",
                format!(
                    "lists {} cores for {} workers; give one core per worker or none",
                    dp.cores.len(),
                    dp.workers
                ),
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(c) = dp.cores.iter().find(|c| **c >= cpus) {
            return Err((
                "cores",
                format!("core {c} does not exist (this machine has {cpus})"),
            ));
        }
        check_ifname(&dp.host_port).map_err(|e| ("host_port", e.to_string()))?;
        if let Some(uplink) = &dp.uplink {
            check_ifname(uplink).map_err(|e| ("uplink", e.to_string()))?;
        }
        if dp.batch_size == 0 || dp.batch_size > 256 {
            return Err((
                "batch_size",
                format!("{} is out of range 1..=256", dp.batch_size),
            ));
        }
        let max_busy_poll = podrouter_router::busy_poll::MAX_WINDOW.as_micros();
        for (key, value, zero) in [
            ("busy_poll_us", dp.busy_poll_us, "0 turns busy polling off"),
            (
                "busy_poll_max_us",
                dp.busy_poll_max_us,
                "0, or a value at or below busy_poll_us, keeps the window fixed",
            ),
        ] {
            if u128::from(value) > max_busy_poll {
                return Err((
                    key,
                    format!("{value} is out of range 0..={max_busy_poll} ({zero})"),
                ));
            }
        }
        if dp.worker_slice_us != 0 && !(100..=100_000).contains(&dp.worker_slice_us) {
            return Err((
                "worker_slice_us",
                format!(
                    "{} is out of range 100..=100000 (0 keeps the kernel's slice)",
                    dp.worker_slice_us
                ),
            ));
        }
        if dp.worker_rt_priority > 99 {
            return Err((
                "worker_rt_priority",
                format!(
                    "{} is out of range 0..=99 (0 keeps the workers SCHED_OTHER)",
                    dp.worker_rt_priority
                ),
            ));
        }
        if dp.worker_rt_priority != 0 && dp.worker_slice_us != 0 {
            return Err((
                "worker_slice_us",
                "is a SCHED_OTHER slice and means nothing to a SCHED_FIFO worker \
                 (worker_rt_priority is set): set one of the two"
                    .into(),
            ));
        }
        if dp.icmp_burst == 0 {
            return Err(("icmp_burst", "must be at least 1".into()));
        }
        if dp.uplink_xdp {
            let why = if dp.encap == Encap::Never {
                Some("has nothing to receive with encap = \"never\"")
            } else if self.node_ip.is_none() {
                Some("needs node_ip: the program takes tunnel traffic addressed to it")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(("uplink_xdp", why.into()));
            }
        }
        if dp.vxlan_port == 0 {
            return Err(("vxlan_port", "must be a UDP port, 1..=65535".into()));
        }
        if dp.vxlan_vni > podrouter_router::vxlan::MAX_VNI {
            return Err((
                "vxlan_vni",
                format!(
                    "{} does not fit VXLAN's 24 bits (0..=16777215)",
                    dp.vxlan_vni
                ),
            ));
        }
        {
            use podrouter_router::conntrack::{MAX_CAPACITY, MIN_CAPACITY};
            if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&dp.flow_table_size) {
                return Err((
                    "flow_table_size",
                    format!(
                        "{} is out of range {MIN_CAPACITY}..={MAX_CAPACITY}",
                        dp.flow_table_size
                    ),
                ));
            }
        }
        for (k, v) in dp.flow_timeouts.entries() {
            // At most 30 days; 0 would make every entry expire at once.
            if !(1..=2_592_000).contains(&v) {
                return Err((k, format!("{v} s is out of range 1..=2592000")));
            }
        }
        if let Some(bgp) = &self.bgp {
            check_bgp(self, bgp)?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            if self.routes[..i].iter().any(|o| o.prefix == r.prefix) {
                return Err(("prefix", format!("route {} is listed twice", r.prefix)));
            }
            if self
                .pod_cidrs
                .iter()
                .any(|c| c.contains(r.prefix.addr()) || r.prefix.contains(c.addr()))
            {
                return Err((
                    "prefix",
                    format!("route {} overlaps this node's pod_cidrs", r.prefix),
                ));
            }
            let clash = self.routes[..i].iter().find(|o| {
                o.via == r.via
                    && o.vtep_mac.is_some()
                    && r.vtep_mac.is_some()
                    && o.vtep_mac != r.vtep_mac
            });
            if let Some(o) = clash {
                return Err((
                    "vtep_mac",
                    format!(
                        "routes {} and {} give node {} two VTEP MACs",
                        o.prefix, r.prefix, r.via
                    ),
                ));
            }
            if Some(r.via) == self.node_ip {
                return Err((
                    "via",
                    format!(
                        "route {} goes via this node's own address {}",
                        r.prefix, r.via
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The `[bgp]` checks.
fn check_bgp(cfg: &Config, bgp: &Bgp) -> Result<(), (&'static str, String)> {
    if cfg.node_ip.is_none() {
        return Err((
            "node_ip",
            "[bgp] needs node_ip: it is the next hop of this node's blocks".into(),
        ));
    }
    if bgp.asn == 0 {
        return Err(("asn", "AS 0 is reserved".into()));
    }
    let hold_ok = |h: u16| h == 0 || h >= 3;
    if !hold_ok(bgp.hold_time) {
        return Err(("hold_time", "must be 0 or at least 3 seconds".into()));
    }
    if bgp.restart_time > 4095 {
        return Err(("restart_time", "is at most 4095 seconds".into()));
    }
    if bgp.connect_retry == 0 {
        return Err(("connect_retry", "must be at least 1 second".into()));
    }
    if bgp.router_id.is_some_and(|r| r.is_unspecified()) {
        return Err(("router_id", "0.0.0.0 is not a BGP identifier".into()));
    }
    for (i, p) in bgp.peers.iter().enumerate() {
        if bgp.peers[..i].iter().any(|o| o.address == p.address) {
            return Err(("address", format!("peer {} is listed twice", p.address)));
        }
        if p.asn == 0 {
            return Err(("asn", format!("peer {}: AS 0 is reserved", p.address)));
        }
        if Some(p.address) == cfg.node_ip {
            return Err(("address", format!("peer {} is this node", p.address)));
        }
        if p.hold_time.is_some_and(|h| !hold_ok(h)) {
            return Err((
                "hold_time",
                format!("peer {}: must be 0 or at least 3 seconds", p.address),
            ));
        }
        if p.password
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > crate::sys::TCP_MD5_MAX_KEY)
        {
            return Err((
                "password",
                format!("peer {}: TCP MD5 keys are 1-80 bytes", p.address),
            ));
        }
        if p.max_prefixes == Some(0) {
            return Err((
                "max_prefixes",
                format!("peer {}: must be at least 1", p.address),
            ));
        }
    }
    Ok(())
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key assigned on a given line (`key = value`), if any.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line - 1)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('#')).then(|| k.trim_matches('"').to_string())
}

/// First line that assigns `key`.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
node_name = "n1"
node_ip = "192.168.57.31"
pod_cidrs = ["10.244.1.0/24", "10.245.0.0/26"]
api_socket = "/tmp/p.sock"
state_dir = "/tmp/state"
log_level = "debug"

[dataplane]
backend = "tap"
workers = 1
cores = [0]
mtu = 1480
uplink = "eth0"
encap = "cross-subnet"

[[routes]]
prefix = "10.22.151.0/26"
via = "192.168.57.32"

[bgp]
asn = 64512
[[bgp.peers]]
address = "192.168.57.32"
asn = 64512
"#;

    #[test]
    fn full_config_parses() {
        let c = Config::parse(FULL, "t.toml").unwrap();
        assert_eq!(c.node_ip, Some(Ipv4Addr::new(192, 168, 57, 31)));
        assert_eq!(c.pod_cidrs.len(), 2);
        assert_eq!(c.dataplane.encap, Encap::CrossSubnet);
        assert_eq!(c.dataplane.cores, vec![0]);
        assert_eq!(c.routes[0].via, Ipv4Addr::new(192, 168, 57, 32));
        assert_eq!(c.bgp.as_ref().unwrap().peers.len(), 1);
        assert_eq!(c.bgp.unwrap().port, 179);
    }

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.pod_cidrs[0].to_string(), "10.244.0.0/24");
        assert_eq!(c.api_socket, PathBuf::from("/run/podrouter/podrouter.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/podrouter"));
        assert_eq!(c.dataplane.mtu, 1480);
        assert_eq!(c.dataplane.workers, 1);
        assert_eq!(c.dataplane.flow_table_size, 262_144);
        assert_eq!(c.dataplane.busy_poll_us, 100);
        assert_eq!(c.dataplane.busy_poll_max_us, 2000);
        let off = Config::parse("[dataplane]\nbusy_poll_us = 0\n", "t.toml").unwrap();
        assert_eq!(off.dataplane.busy_poll_us, 0, "0 turns busy polling off");
    }

    fn err(text: &str) -> ConfigError {
        Config::parse(text, "t.toml").unwrap_err()
    }

    #[test]
    fn vxlan_keys_profiles_and_mtu_default() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.dataplane.tunnel, TunnelKind::Ipip);
        assert_eq!(
            (c.dataplane.vxlan_port, c.dataplane.vxlan_vni),
            (4789, 4096)
        );
        let c = Config::parse("[dataplane]\ntunnel = \"vxlan\"\n", "t.toml").unwrap();
        assert_eq!(c.dataplane.tunnel, TunnelKind::Vxlan);
        assert_eq!(c.dataplane.mtu, 1450, "VXLAN's pod MTU default");
        let flannel = "[dataplane]\ntunnel = \"vxlan\"\nvxlan_port = 8472\nvxlan_vni = 1\nmtu = 1400\n\
                       [[routes]]\nprefix = \"10.9.0.0/24\"\nvia = \"1.2.3.4\"\nvtep_mac = \"2a:7e:11:22:33:44\"\n";
        let c = Config::parse(flannel, "t.toml").unwrap();
        assert_eq!((c.dataplane.vxlan_port, c.dataplane.vxlan_vni), (8472, 1));
        assert_eq!(c.dataplane.mtu, 1400, "an explicit mtu wins");
        assert_eq!(
            c.routes[0].vtep_mac,
            Some([0x2a, 0x7e, 0x11, 0x22, 0x33, 0x44])
        );

        let e = err("[dataplane]\ntunnel = \"gre\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("tunnel")));
        let e = err("[dataplane]\nvxlan_vni = 16777216\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("vxlan_vni")));
        let e = err("[dataplane]\nvxlan_port = 0\n");
        assert_eq!(e.key.as_deref(), Some("vxlan_port"));
        for bad in [
            "01:00:5e:00:00:01",
            "2a:7e:11:22:33",
            "2a:7e:11:22:33:44:55",
            "zz:7e:11:22:33:44",
        ] {
            let e = err(&format!(
                "[[routes]]\nprefix = \"10.9.0.0/24\"\nvia = \"1.2.3.4\"\nvtep_mac = \"{bad}\"\n"
            ));
            assert_eq!(e.key.as_deref(), Some("vtep_mac"), "{bad}: {e}");
        }
        let e = err(
            "[[routes]]\nprefix = \"10.9.0.0/24\"\nvia = \"1.2.3.4\"\nvtep_mac = \"2a:00:00:00:00:01\"\n\
             [[routes]]\nprefix = \"10.9.1.0/24\"\nvia = \"1.2.3.4\"\nvtep_mac = \"2a:00:00:00:00:02\"\n",
        );
        assert_eq!(e.key.as_deref(), Some("vtep_mac"), "{e}");
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = err("node_name = \"a\"\nnode_ip = \"10.0.0.300\"\n");
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("node_ip"));
        assert!(
            e.to_string()
                .starts_with("config t.toml line 2, key `node_ip`:"),
            "{e}"
        );

        let e = err("pod_cidrs = [\"10.244.0.1/24\"]\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("pod_cidrs")));
        assert!(e.message.contains("host bits"), "{e}");

        let e = err("[dataplane]\nmtu = 70000\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("mtu")));

        let e = err("[dataplane]\nworkers = 2\ncores = [0]\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("cores")));

        let e = err("\n\nnode_nmae = \"x\"\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err("[dataplane]\nencap = \"sometimes\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("encap")));

        let e = err("[dataplane]\nbackend = \"afxdp\"\nmtu = 9001\n");
        assert_eq!(e.key.as_deref(), Some("mtu"));
        for key in ["busy_poll_us", "busy_poll_max_us"] {
            for bad in ["10001", "1000000"] {
                let e = err(&format!("[dataplane]\n{key} = {bad}\n"));
                assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
                assert!(e.message.contains("out of range 0..=10000"), "{e}");
            }
        }
        for bad in ["1", "99", "100001"] {
            let e = err(&format!("[dataplane]\nworker_slice_us = {bad}\n"));
            assert_eq!(e.key.as_deref(), Some("worker_slice_us"), "{bad}: {e}");
            assert!(e.message.contains("out of range 100..=100000"), "{e}");
        }
        for bad in ["100", "1000"] {
            let e = err(&format!("[dataplane]\nworker_rt_priority = {bad}\n"));
            assert_eq!(e.key.as_deref(), Some("worker_rt_priority"), "{bad}: {e}");
            assert!(e.message.contains("out of range 0..=99"), "{e}");
        }
        let e = err("[dataplane]\nworker_rt_priority = 1\nworker_slice_us = 200\n");
        assert_eq!(e.key.as_deref(), Some("worker_slice_us"), "{e}");
        let e = err("[dataplane]\nbusy_poll_us = -1\n");
        assert_eq!(e.key.as_deref(), Some("busy_poll_us"), "{e}");
        let e = err("[dataplane]\nxdp_mode = \"native\"\n");
        assert_eq!(e.key.as_deref(), Some("xdp_mode"));
        for bad in ["100", "32", "8192"] {
            let e = err(&format!("[dataplane]\nafxdp_rx_chunks = {bad}\n"));
            assert_eq!(e.key.as_deref(), Some("afxdp_rx_chunks"), "{bad}: {e}");
            assert!(e.message.contains("power of two"), "{e}");
        }
        for (text, says) in [
            (
                "node_ip = \"10.0.0.1\"\n[dataplane]\nbackend = \"afxdp\"\nencap = \"never\"\nuplink_xdp = true\n",
                "never",
            ),
            ("[dataplane]\nuplink_xdp = true\n", "node_ip"),
        ] {
            let e = err(text);
            assert_eq!(e.key.as_deref(), Some("uplink_xdp"), "{text}");
            assert!(e.message.contains(says), "{text}: {e}");
        }
        let ok = Config::parse(
            "node_ip = \"10.0.0.1\"\n[dataplane]\nuplink_xdp = true\n",
            "t.toml",
        );
        assert!(ok.unwrap().dataplane.uplink_xdp);
        // VXLAN too (it was refused before uplink_xdp took VXLAN).
        let ok = Config::parse(
            "node_ip = \"10.0.0.1\"\n[dataplane]\nbackend = \"afxdp\"\ntunnel = \"vxlan\"\nuplink_xdp = true\n",
            "t.toml",
        )
        .unwrap();
        assert!(ok.dataplane.uplink_xdp && ok.dataplane.tunnel == TunnelKind::Vxlan);

        let e = err("pod_cidrs = [\"10.0.0.0/16\", \"10.0.1.0/24\"]\n");
        assert!(e.message.contains("overlap"), "{e}");

        let e = err("pod_cidrs = [\"10.244.0.0/24\"]\n[[routes]]\nprefix = \"10.244.0.0/26\"\nvia = \"1.2.3.4\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("prefix")));

        let e =
            err("node_ip = \"1.2.3.4\"\n[[routes]]\nprefix = \"10.9.0.0/26\"\nvia = \"1.2.3.4\"\n");
        assert_eq!(e.key.as_deref(), Some("via"));
        assert!(e.message.contains("own address"), "{e}");

        let e = err("[dataplane]\nmtu = 1500\nflow_table_size = 4\n");
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("flow_table_size"))
        );
        assert!(e.message.contains("out of range 8..=16777216"), "{e}");
        let c = Config::parse("[dataplane]\nflow_table_size = 1000\n", "t.toml").unwrap();
        assert_eq!(c.dataplane.flow_table_size, 1000);
        // Flow timeouts: the kernel's defaults, each settable, 0 refused.
        assert_eq!(c.dataplane.flow_timeouts.tcp_established, 432_000);
        assert_eq!(c.dataplane.flow_timeouts.udp_unreplied, 30);
        let c = Config::parse(
            "[dataplane.flow_timeouts]\ntcp_established = 3600\nudp_replied = 60\n",
            "t.toml",
        )
        .unwrap();
        let t = c.dataplane.flow_timeouts.timeouts();
        assert_eq!((t.tcp_established, t.udp_replied, t.icmp), (3600, 60, 30));
        let e = err("[dataplane.flow_timeouts]\nicmp = 0\n");
        assert_eq!(e.key.as_deref(), Some("icmp"), "{e}");
        assert!(Config::parse("[dataplane.flow_timeouts]\nbogus = 1\n", "t.toml").is_err());

        let e = err("node_name = \n");
        assert_eq!(e.line, Some(1));

        for (text, key) in [
            ("[dataplane]\nhost_port = \"pod router\"\n", "host_port"),
            (
                "[dataplane]\nhost_port = \"podrouter0123456\"\n",
                "host_port",
            ),
            ("[dataplane]\nuplink = \"a/b\"\n", "uplink"),
        ] {
            let e = err(text);
            assert_eq!(e.key.as_deref(), Some(key), "{text}");
            assert!(e.message.contains("not a valid interface name"), "{e}");
        }
    }

    #[test]
    fn bgp_options_parse_and_are_checked() {
        let c = Config::parse(
            "node_ip = \"10.0.0.1\"\n[bgp]\nasn = 4200000000\nhold_time = 3\n\
             graceful_restart = false\n[[bgp.peers]]\naddress = \"10.0.0.2\"\nasn = 64513\n\
             passive = true\npassword = \"s3cret\"\nmax_prefixes = 1000\nport = 1790\n",
            "t.toml",
        )
        .unwrap();
        let b = c.bgp.unwrap();
        assert_eq!(
            (b.asn, b.hold_time, b.restart_time),
            (4_200_000_000, 3, 120)
        );
        assert!(!b.graceful_restart);
        let p = &b.peers[0];
        assert!(p.passive);
        assert_eq!(p.password.as_deref(), Some("s3cret"));
        assert_eq!((p.max_prefixes, p.port), (Some(1000), Some(1790)));

        let e = err("[bgp]\nasn = 64512\n");
        assert_eq!(e.key.as_deref(), Some("node_ip"));
        let e = err("node_ip = \"10.0.0.1\"\n[bgp]\nasn = 64512\nhold_time = 2\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("hold_time")));
        let e = err(
            "node_ip = \"10.0.0.1\"\n[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"10.0.0.2\"\n\
             asn = 2\n[[bgp.peers]]\naddress = \"10.0.0.2\"\nasn = 3\n",
        );
        assert!(e.message.contains("twice"), "{e}");
        let e = err(&format!(
            "node_ip = \"10.0.0.1\"\n[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"10.0.0.2\"\n\
             asn = 2\npassword = \"{}\"\n",
            "x".repeat(81)
        ));
        assert_eq!(e.key.as_deref(), Some("password"));
        assert_eq!(b.kernel_routes, KernelRoutesMode::PerPool);
        let c = Config::parse(
            "node_ip = \"10.0.0.1\"\n[bgp]\nasn = 1\nkernel_routes = \"per-block\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.bgp.unwrap().kernel_routes, KernelRoutesMode::PerBlock);
        let e = err("node_ip = \"10.0.0.1\"\n[bgp]\nasn = 1\nkernel_routes = \"pool\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("kernel_routes")));
        assert!(
            e.message.contains("per-block") && e.message.contains("per-pool"),
            "{e}"
        );
    }

    #[test]
    fn unreadable_file_is_a_clear_error() {
        let e = Config::load(Path::new("/nonexistent/podrouter.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
