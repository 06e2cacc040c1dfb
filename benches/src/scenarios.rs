//! The scenarios. Each builds its podrouter and kernel topologies, runs
//! every measurement on both, run by run alternating the data planes (so
//! drift and background load hit both alike), and turns the runs into
//! report rows.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::bail;
use crate::measure::{self, Delta};
use crate::report::{Cell, Row};
use crate::topo::{self, PlaneOpts, Topology, TwoNodeMode, Underlay};
use crate::util::{self, Error, Proc, Progress, Res};

/// How long and how often (full run or `--smoke`).
#[derive(Clone, Debug)]
pub struct Params {
    pub smoke: bool,
    pub repeats: usize,
    /// Measured seconds of one packet-rate or iperf3 run.
    pub secs: f64,
    /// Seconds of traffic before the measurement window opens.
    pub warmup: f64,
    pub sizes: Vec<usize>,
    pub two_node_sizes: Vec<usize>,
    pub streams: Vec<usize>,
    /// Requests per second and seconds of a latency run.
    pub rr_rate: f64,
    pub rr_secs: f64,
    pub scale_pods: usize,
    pub scale_idle_secs: f64,
    pub cni_pods: usize,
    pub cni_parallel: usize,
    /// For extra CNI rows: pods already attached while the measured ones
    /// come and go.
    pub cni_held: Vec<usize>,
    /// Services loaded in each round of the Services scenario (see
    /// [`SERVICE_COUNTS`]).
    pub service_counts: Vec<u32>,
    /// The podrouter/kernel pairs of the two-node scenario.
    pub two_node_pairs: Vec<TwoNodePair>,
    /// Routes of the BGP convergence scenario.
    pub bgp_routes: usize,
    /// Frames per second the flooding pod of the flood scenario sends.
    pub flood_pps: f64,
    /// The Services scenario also measures the built-in balancer against
    /// the kernel without RPS, as Calico leaves a node (not needed when
    /// every kernel row already is: `--kernel-inline`).
    pub inline_kernel_rows: bool,
}

/// One comparison of the two-node scenario: podrouterd in `encap` mode
/// with `tunnel` against the kernel in `kernel` mode, both over
/// `underlay` with links of `underlay_mtu`.
#[derive(Clone, Copy, Debug)]
pub struct TwoNodePair {
    pub encap: &'static str,
    pub tunnel: &'static str,
    pub kernel: TwoNodeMode,
    pub underlay: Underlay,
    pub underlay_mtu: u16,
}

impl TwoNodePair {
    const NEVER: TwoNodePair = TwoNodePair {
        encap: "never",
        tunnel: "ipip",
        kernel: TwoNodeMode::KernelPlain,
        underlay: Underlay::Flat,
        underlay_mtu: topo::UNDERLAY_MTU,
    };
    const ALWAYS: TwoNodePair = TwoNodePair {
        encap: "always",
        tunnel: "ipip",
        kernel: TwoNodeMode::KernelVxlan,
        underlay: Underlay::Flat,
        underlay_mtu: topo::UNDERLAY_MTU,
    };
    /// Calico's cross-subnet (IPIP only between subnets) on a routed
    /// underlay; the kernel's tunnel across it is VXLAN (no IPIP module).
    const CROSS_SUBNET: TwoNodePair = TwoNodePair {
        encap: "cross-subnet",
        tunnel: "ipip",
        kernel: TwoNodeMode::KernelVxlan,
        underlay: Underlay::Routed,
        underlay_mtu: topo::UNDERLAY_MTU,
    };
    /// podrouter's VXLAN against the kernel's, tunnel for tunnel.
    const VXLAN_ALWAYS: TwoNodePair = TwoNodePair {
        encap: "always",
        tunnel: "vxlan",
        kernel: TwoNodeMode::KernelVxlan,
        underlay: Underlay::Flat,
        underlay_mtu: topo::UNDERLAY_MTU,
    };
    const VXLAN_ALWAYS_1500: TwoNodePair = TwoNodePair {
        underlay_mtu: topo::SMALL_UNDERLAY_MTU,
        ..TwoNodePair::VXLAN_ALWAYS
    };
    const ALWAYS_1500: TwoNodePair = TwoNodePair {
        underlay_mtu: topo::SMALL_UNDERLAY_MTU,
        ..TwoNodePair::ALWAYS
    };
    const NEVER_1500: TwoNodePair = TwoNodePair {
        underlay_mtu: topo::SMALL_UNDERLAY_MTU,
        ..TwoNodePair::NEVER
    };

    /// Every pair a full run measures.
    pub const ALL: [TwoNodePair; 7] = [
        TwoNodePair::NEVER,
        TwoNodePair::ALWAYS,
        TwoNodePair::CROSS_SUBNET,
        TwoNodePair::VXLAN_ALWAYS,
        TwoNodePair::VXLAN_ALWAYS_1500,
        TwoNodePair::ALWAYS_1500,
        TwoNodePair::NEVER_1500,
    ];

    /// The name `--pairs` selects it by: `[vxlan-]ENCAP[-1500]`.
    pub fn name(&self) -> String {
        let mut n = String::new();
        if self.tunnel != "ipip" {
            n = format!("{}-", self.tunnel);
        }
        n += self.encap;
        if self.underlay_mtu != topo::UNDERLAY_MTU {
            n += &format!("-{}", self.underlay_mtu);
        }
        n
    }

    /// The pods' MTU on both planes (the smaller if they differ).
    pub fn pod_mtu(&self) -> u16 {
        topo::two_node_pod_mtu(self.podrouter(), self.underlay_mtu)
            .min(topo::two_node_pod_mtu(self.kernel, self.underlay_mtu))
    }

    /// `sizes` split into the frame sizes that fit the pods' MTU and those
    /// that do not (a frame size counts Ethernet and FCS: 18 bytes).
    pub fn sizes_that_fit(&self, sizes: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let mtu = usize::from(self.pod_mtu());
        sizes.iter().partition(|&&s| s <= mtu + 18)
    }

    /// The podrouter side's topology mode.
    pub fn podrouter(&self) -> TwoNodeMode {
        TwoNodeMode::Podrouter {
            encap: self.encap,
            tunnel: self.tunnel,
        }
    }

    /// The scenario column of its rows.
    pub fn scenario(&self) -> String {
        let tunnel = self.tunnel.to_uppercase();
        let mtu = if self.underlay_mtu == topo::UNDERLAY_MTU {
            String::new()
        } else {
            format!(", underlay MTU {}", self.underlay_mtu)
        };
        match (self.underlay, self.kernel) {
            (Underlay::Flat, TwoNodeMode::KernelPlain) => format!(
                "two nodes, one subnet{mtu}: podrouter encap {} vs kernel plain routing",
                self.encap
            ),
            (Underlay::Flat, _) => format!(
                "two nodes, one subnet{mtu}: podrouter encap {} ({tunnel}) vs kernel VXLAN",
                self.encap
            ),
            (Underlay::Routed, _) => format!(
                "two nodes, two subnets across a router{mtu}: podrouter encap {} ({tunnel}) vs \
                 kernel VXLAN (the kernel's tunnel: no IPIP module)",
                self.encap
            ),
        }
    }
}

impl Params {
    pub fn full() -> Params {
        Params {
            smoke: false,
            repeats: 3,
            secs: 5.0,
            warmup: 1.0,
            sizes: vec![64, 512, 1500],
            two_node_sizes: vec![64, 512, 1500],
            streams: vec![1, 4],
            rr_rate: 1000.0,
            rr_secs: 10.0,
            scale_pods: 1000,
            scale_idle_secs: 10.0,
            cni_pods: 100,
            cni_parallel: 20,
            cni_held: vec![100, 1000],
            service_counts: SERVICE_COUNTS.to_vec(),
            two_node_pairs: TwoNodePair::ALL.to_vec(),
            bgp_routes: 100_000,
            flood_pps: 200_000.0,
            inline_kernel_rows: true,
        }
    }

    pub fn smoke() -> Params {
        Params {
            smoke: true,
            repeats: 1,
            secs: 1.0,
            warmup: 0.3,
            sizes: vec![64],
            two_node_sizes: vec![64],
            streams: vec![1],
            rr_rate: 500.0,
            rr_secs: 0.5,
            scale_pods: 10,
            scale_idle_secs: 1.0,
            cni_pods: 6,
            cni_parallel: 3,
            cni_held: vec![4],
            // The "among many" path once; the 10,000 round (about 40 s)
            // is for full runs (the e2e suite applies 10,000 Services).
            service_counts: vec![1, 1000],
            // The flat underlay with plain routing, the routed one with
            // both tunnels, and podrouter's VXLAN: every two-node code path
            // once.
            two_node_pairs: vec![
                TwoNodePair::NEVER,
                TwoNodePair::CROSS_SUBNET,
                TwoNodePair::VXLAN_ALWAYS_1500,
            ],
            bgp_routes: 2_000,
            flood_pps: 50_000.0,
            inline_kernel_rows: true,
        }
    }
}

/// Which scenarios run.
/// (Declared in the order they run.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Two pods on one node: packet rate, TCP, latency, CPU.
    SameNode,
    /// One pod on each of two nodes, per encapsulation mode.
    TwoNode,
    /// CNI ADD/DEL latency: podrouter-cni against ptp + host-local.
    Cni,
    /// Many idle pods: CPU at rest, packet rate between two of them.
    Scale,
    /// BGP: Established to N routes installed, podrouterd against BIRD 2.
    BgpConvergence,
    /// A ClusterIP through kube-proxy's iptables rules: latency and new
    /// TCP connections per second.
    Services,
    /// NetworkPolicy with 0, 1,000 and 10,000 rules selecting the measured
    /// pods: podrouter's compiled rules against the same rules as iptables
    /// chains on the pod interfaces.
    Policy,
    /// Latency between two pods while a third floods ARP, UDP to free
    /// addresses and TTL-1 packets.
    Flood,
    /// Forwarding with /metrics scraped every second and an idle capture
    /// armed, against the same podrouterd unwatched ([`crate::taps`]).
    Taps,
}

/// Everything a scenario needs, and what it produced.
pub struct Ctx {
    pub p: Params,
    pub opts: PlaneOpts,
    pub gen_cpu: usize,
    pub self_exe: PathBuf,
    pub cni_dir: PathBuf,
    pub out_dir: PathBuf,
    pub progress: Progress,
    pub rows: Vec<Row>,
    pub runs: Vec<Value>,
    pub notes: Vec<String>,
    /// Errors that mean the harness (or a data plane) broke.
    pub failures: Vec<String>,
    pub plots: Vec<String>,
    /// Median 64 B Mpps with two pods, per plane (for the scale ratio).
    pub two_pod_64: [Option<f64>; 2],
    /// (label, Mpps cells per size) of the same-node run, for the plot.
    pub rate_plot: Vec<(String, Vec<Cell>)>,
    /// (label, RTT samples in µs, all runs) for the latency CDF.
    pub cdf_plot: Vec<(String, Vec<f64>)>,
    /// Busy fraction of the machine just before each measured run.
    pub busy: Vec<f64>,
}

/// Background load above which a run is reported as disturbed.
pub const BUSY: f64 = 0.15;

/// A data plane under test, or why it could not be built.
pub(crate) type Slot = Result<Topology, String>;

pub(crate) const PR: usize = 0;
pub(crate) const K: usize = 1;

impl Ctx {
    fn busy_note(&mut self, what: &str, busy: f64) {
        self.busy.push(busy);
        if busy >= BUSY {
            util::log(&format!(
                "{what}: the machine was {:.0}% busy with other work just before this run",
                busy * 100.0
            ));
        }
    }

    pub(crate) fn fail(&mut self, what: &str, e: &Error) {
        let m = format!("{what}: {}", e.msg);
        self.progress.note(&format!("warning: {m}"));
        self.failures.push(m);
    }

    fn helper_args(&self, ns: &str, kind: &str) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            ns.into(),
            self.self_exe.to_string_lossy().into_owned(),
            "__helper".into(),
            kind.into(),
        ]
    }
}

pub(crate) fn spawn_helper(ctx: &Ctx, ns: &str, kind: &str, args: &[String]) -> Res<Proc> {
    let mut a = ctx.helper_args(ns, kind);
    a.extend_from_slice(args);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    Proc::spawn(&format!("helper {kind}"), &refs, None)
}

pub(crate) fn helper_json(p: Proc, timeout: Duration) -> Res<Value> {
    let name = p.name.clone();
    let out = p.wait(timeout)?;
    if !out.ok() {
        bail!("{name} failed ({}): {}", out.status, out.stderr.trim());
    }
    serde_json::from_str(out.stdout.trim())
        .map_err(|e| Error::msg(format!("{name} printed no JSON ({e}): {}", out.stdout)))
}

pub(crate) fn quiesce(ctx: &mut Ctx, what: &str) -> Res<f64> {
    // --smoke's figures only show the harness works: wait less for calm.
    let busy = measure::quiesce(0.10, Duration::from_secs(if ctx.p.smoke { 1 } else { 5 }))?;
    ctx.busy_note(what, busy);
    Ok(busy)
}

/// Pings until one reply (up to ~5 s): the pods can talk.
fn reachable(src: &topo::Pod, dst: std::net::Ipv4Addr) -> Res<bool> {
    for _ in 0..5 {
        util::check()?;
        let out = util::run_t(
            &[
                "ip",
                "netns",
                "exec",
                &src.ns,
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                &dst.to_string(),
            ],
            Duration::from_secs(5),
        )?;
        if out.ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`check_slot`] for a data plane that must work: a built topology whose
/// pods cannot talk is a failure of the run.
pub(crate) fn checked(ctx: &mut Ctx, slot: Slot, what: &str) -> Res<Slot> {
    let built = slot.is_ok();
    let slot = check_slot(slot, "")?;
    if let (true, Err(e)) = (built, &slot) {
        ctx.progress.note(&format!("warning: {what}: {e}"));
        ctx.failures.push(format!("{what}: {e}"));
    }
    Ok(slot)
}

fn check_slot(slot: Slot, prefix_missing: &str) -> Res<Slot> {
    let Ok(t) = slot else { return Ok(slot) };
    if t.pods.len() < 2 {
        return Ok(Ok(t));
    }
    let (a, b) = (&t.pods[0], &t.pods[t.pods.len() - 1]);
    if reachable(a, b.ip)? {
        Ok(Ok(t))
    } else {
        let why = format!(
            "{prefix_missing}pod {} cannot reach pod {} through {}{}",
            a.ip,
            b.ip,
            t.label,
            t.drops_hint()
        );
        Ok(Err(why))
    }
}

pub(crate) fn build(ctx: &mut Ctx, what: &str, f: impl FnOnce(&Ctx) -> Res<Topology>) -> Res<Slot> {
    ctx.progress.step(what);
    match f(ctx) {
        Ok(t) => Ok(Ok(t)),
        Err(e) if e.interrupted => Err(e),
        Err(e) if e.msg.contains("not available in this build") => {
            // A podrouterd without the requested backend: a missing
            // feature, not a broken harness.
            let why = format!(
                "not available (podrouterd has no {} backend yet): {}",
                ctx.opts.backend,
                first_line(&e.msg)
            );
            ctx.notes.push(format!("{what}: {why}"));
            Ok(Err(why))
        }
        Err(e) => {
            ctx.fail(what, &e);
            Ok(Err(e.msg))
        }
    }
}

// ---------------------------------------------------------------------------
// One measurement each

/// One packet-rate run.
#[derive(Clone, Debug)]
pub(crate) struct RateRun {
    pub(crate) mpps: f64,
    offered_mpps: f64,
    plane_cpu_per_mpkt: f64,
    core_per_mpkt: f64,
}

pub(crate) fn udp_rate(ctx: &mut Ctx, t: &Topology, size: usize, what: &str) -> Res<RateRun> {
    let (src, dst) = (&t.pods[0], &t.pods[t.pods.len() - 1]);
    let busy = quiesce(ctx, what)?;
    let total = ctx.p.warmup + ctx.p.secs + 0.5;
    let g = spawn_helper(
        ctx,
        &src.ns,
        "gen",
        &[
            format!("if={}", src.ifname),
            format!("src={}", src.ip),
            format!("dst={}", dst.ip),
            format!("size={size}"),
            format!("secs={total}"),
            format!("cpu={}", ctx.gen_cpu),
        ],
    )?;
    util::sleep(Duration::from_secs_f64(ctx.p.warmup))?;
    let pids = t.daemon_pids();
    let a = measure::snap(&dst.ns, &dst.ifname, &pids)?;
    util::sleep(Duration::from_secs_f64(ctx.p.secs))?;
    let b = measure::snap(&dst.ns, &dst.ifname, &pids)?;
    let gen = helper_json(g, Duration::from_secs_f64(total + 30.0))?;
    let d = measure::delta(&a, &b, ctx.opts.dp_cpu);
    let sent = gen["sent"].as_f64().unwrap_or(0.0);
    let offered = gen["offered"].as_f64().unwrap_or(sent);
    let gsecs = gen["secs"].as_f64().unwrap_or(1.0).max(1e-9);
    if d.rx_packets == 0 {
        bail!(
            "no packets reached {} ({} frames sent){}",
            dst.ip,
            sent,
            t.diagnose()
        );
    }
    let mpkt = d.rx_packets as f64 / 1e6;
    let plane_cpu = if t.is_podrouter() {
        d.daemon_cpu_s
    } else {
        d.softirq_s
    };
    let r = RateRun {
        mpps: mpkt / d.secs,
        offered_mpps: offered / gsecs / 1e6,
        plane_cpu_per_mpkt: plane_cpu / mpkt,
        core_per_mpkt: d.dp_core_busy_s / mpkt,
    };
    ctx.runs.push(json!({
        "what": what, "plane": t.label, "kind": "udp_rate", "frame_bytes": size,
        "mpps": r.mpps, "offered_mpps": r.offered_mpps, "generator": gen,
        "plane_cpu_s_per_mpkt": r.plane_cpu_per_mpkt, "dp_core_s_per_mpkt": r.core_per_mpkt,
        "counters": d, "busy_before": busy,
    }));
    if r.offered_mpps < r.mpps * 1.05 {
        ctx.notes.push(format!(
            "{what}: the generator offered only {:.3} Mpps for {:.3} Mpps received: this figure may be the generator's limit",
            r.offered_mpps, r.mpps
        ));
    }
    Ok(r)
}

#[derive(Clone, Debug)]
struct TcpRun {
    gbps: f64,
    plane_cpu_per_gb: f64,
}

fn tcp(ctx: &mut Ctx, t: &Topology, streams: usize, what: &str) -> Res<TcpRun> {
    let (src, dst) = (&t.pods[0], &t.pods[t.pods.len() - 1]);
    let busy = quiesce(ctx, what)?;
    let cpu = ctx.gen_cpu.to_string();
    let secs = format!("{}", ctx.p.secs.ceil().max(1.0) as u64);
    let dip = dst.ip.to_string();
    let mut tries = 0;
    loop {
        tries += 1;
        let server = Proc::spawn(
            "iperf3 server",
            &[
                "ip", "netns", "exec", &dst.ns, "iperf3", "-s", "-1", "-A", &cpu, "-B", &dip,
            ],
            None,
        )?;
        util::sleep(Duration::from_millis(300))?;
        let pids = t.daemon_pids();
        let xsk_a = t.xsk_drops()?;
        let a = measure::snap(&dst.ns, &dst.ifname, &pids)?;
        let client = Proc::spawn(
            "iperf3 client",
            &[
                "ip",
                "netns",
                "exec",
                &src.ns,
                "iperf3",
                "-c",
                &dip,
                "-t",
                &secs,
                "-P",
                &streams.to_string(),
                "-A",
                &cpu,
                "-J",
                "--connect-timeout",
                "2000",
            ],
            None,
        )?;
        let out = client.wait(Duration::from_secs_f64(ctx.p.secs + 60.0))?;
        let b = measure::snap(&dst.ns, &dst.ifname, &pids)?;
        let xsk_b = t.xsk_drops()?;
        drop(server);
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        if !out.ok() || v.get("error").is_some() {
            let err = v["error"].as_str().unwrap_or(out.stderr.trim()).to_string();
            if tries < 4 && err.contains("connect") {
                continue;
            }
            bail!("iperf3 failed: {err}{}", t.diagnose());
        }
        let d: Delta = measure::delta(&a, &b, ctx.opts.dp_cpu);
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| Error::msg("iperf3 JSON has no end.sum_received"))?;
        let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        let plane_cpu = if t.is_podrouter() {
            d.daemon_cpu_s
        } else {
            d.softirq_s
        };
        let r = TcpRun {
            gbps: bps / 1e9,
            plane_cpu_per_gb: if bytes > 0.0 {
                plane_cpu / (bytes / 1e9)
            } else {
                f64::NAN
            },
        };
        ctx.runs.push(json!({
            "what": what, "plane": t.label, "kind": "tcp", "streams": streams,
            "gbps": r.gbps, "bytes": bytes, "plane_cpu_s_per_gb": r.plane_cpu_per_gb,
            "retransmits": v["end"]["sum_sent"]["retransmits"], "counters": d, "busy_before": busy,
            // The kernel's drops at the AF_XDP pod ports over the run
            // (`XDP_STATISTICS`; zeros for TAP ports and the kernel).
            "xsk_rx_dropped": xsk_b[0].saturating_sub(xsk_a[0]),
            "xsk_rx_ring_full": xsk_b[1].saturating_sub(xsk_a[1]),
            "xsk_rx_fill_empty": xsk_b[2].saturating_sub(xsk_a[2]),
            // What the generator itself cost: iperf3's own CPU use, client
            // (host) and server (remote), in percent of one CPU.
            "iperf3_cpu_percent": v["end"]["cpu_utilization_percent"],
        }));
        return Ok(r);
    }
}

/// One latency run from the first pod to the last: the round trips in ns.
fn rr(ctx: &mut Ctx, t: &Topology, what: &str) -> Res<Vec<u64>> {
    let dst = &t.pods[t.pods.len() - 1];
    rr_to(ctx, t, &[dst], dst.ip, what)
}

/// One latency run from the first pod to `dst`, answered by echo servers
/// in `servers`: the round trips in ns.
fn rr_to(
    ctx: &mut Ctx,
    t: &Topology,
    servers: &[&topo::Pod],
    dst: std::net::Ipv4Addr,
    what: &str,
) -> Res<Vec<u64>> {
    let busy = quiesce(ctx, what)?;
    rr_measure(ctx, t, servers, dst, what, busy)
}

/// [`rr_to`] without waiting for a calm machine first (`busy`: how busy
/// it was when the caller looked).
pub(crate) fn rr_measure(
    ctx: &mut Ctx,
    t: &Topology,
    servers: &[&topo::Pod],
    dst: std::net::Ipv4Addr,
    what: &str,
    busy: f64,
) -> Res<Vec<u64>> {
    let src = &t.pods[0];
    let count = (ctx.p.rr_rate * ctx.p.rr_secs).round() as u64;
    let mut echo = Vec::new();
    for s in servers {
        echo.push(spawn_helper(
            ctx,
            &s.ns,
            "echo",
            &[
                format!("secs={}", ctx.p.rr_secs + 30.0),
                format!("cpu={}", ctx.gen_cpu),
            ],
        )?);
    }
    let work_before = worker_work(t);
    let client = spawn_helper(
        ctx,
        &src.ns,
        "rr",
        &[
            format!("dst={dst}"),
            format!("rate={}", ctx.p.rr_rate),
            format!("count={count}"),
            format!("cpu={}", ctx.gen_cpu),
        ],
    )?;
    let v = helper_json(client, Duration::from_secs_f64(ctx.p.rr_secs * 3.0 + 60.0))?;
    drop(echo);
    let rtts: Vec<u64> = v["rtt_ns"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let lost = v["lost"].as_u64().unwrap_or(0);
    if rtts.is_empty() {
        bail!("no request was answered ({lost} lost)");
    }
    // Each request crosses the worker twice; without busy polling it
    // sleeps after each crossing (about 2 per request).
    let per_request = work_before
        .zip(worker_work(t))
        .map(|(a, b)| b.since(&a).per(count));
    let h = hist(&rtts);
    ctx.runs.push(json!({
        "what": what, "plane": t.label, "kind": "rr", "requests": count, "answered": rtts.len(),
        "lost": lost, "p50_us": h.value_at_quantile(0.5) as f64 / 1e3,
        "p99_us": h.value_at_quantile(0.99) as f64 / 1e3,
        "p999_us": h.value_at_quantile(0.999) as f64 / 1e3,
        "max_us": h.max() as f64 / 1e3, "busy_before": busy,
    }));
    WorkPer::add_fields(ctx.runs.last_mut(), per_request, "request");
    if let Some(w) = per_request {
        util::log(&format!(
            "{what}: {} answered, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs; per request podrouterd's \
             workers {}",
            rtts.len(),
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            h.max() as f64 / 1e3,
            w.describe(),
        ));
    }
    if lost > 0 {
        ctx.notes.push(format!(
            "{what}: {lost} of {count} requests unanswered within 200 ms"
        ));
    }
    Ok(rtts)
}

/// One connection-rate run.
struct ConnRun {
    per_sec: f64,
    /// Each completed connection, connect to the server's close, in ns.
    conn_ns: Vec<u64>,
}

/// One connection-rate run from the first pod to `dst` (TCP port
/// [`helpers::CONN_PORT`]), served by `servers`: new connections one at a
/// time for the run's seconds.
fn conn_rate(
    ctx: &mut Ctx,
    t: &Topology,
    servers: &[&topo::Pod],
    dst: std::net::Ipv4Addr,
    what: &str,
) -> Res<ConnRun> {
    let src = &t.pods[0];
    let busy = quiesce(ctx, what)?;
    let mut accept = Vec::new();
    for s in servers {
        accept.push(spawn_helper(
            ctx,
            &s.ns,
            "accept",
            &[
                format!("secs={}", ctx.p.secs + 40.0),
                format!("cpu={}", ctx.gen_cpu),
            ],
        )?);
    }
    let work_before = worker_work(t);
    let client = spawn_helper(
        ctx,
        &src.ns,
        "conn",
        &[
            format!("dst={dst}"),
            format!("secs={}", ctx.p.secs),
            format!("cpu={}", ctx.gen_cpu),
        ],
    )?;
    let v = helper_json(client, Duration::from_secs_f64(ctx.p.secs + 60.0))?;
    drop(accept);
    let conn_ns: Vec<u64> = v["conn_ns"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let failed = v["failed"].as_u64().unwrap_or(0);
    let secs = v["secs"].as_f64().unwrap_or(0.0).max(1e-9);
    if conn_ns.is_empty() {
        bail!(
            "no connection to {dst} completed ({failed} failed: {}){}",
            v["first_error"],
            t.diagnose()
        );
    }
    let h = hist(&conn_ns);
    let r = ConnRun {
        per_sec: conn_ns.len() as f64 / secs,
        conn_ns,
    };
    // Per connection: how often podrouterd's workers went to sleep in
    // epoll (each sleep is a wake-up the next packet waits for), how many
    // frames crossed them (failed connections' included, few) and how
    // long they worked (their rounds that received, the TAP writes that
    // run the receiving pod's stack included).
    let per_conn = work_before
        .zip(worker_work(t))
        .map(|(a, b)| b.since(&a).per(r.conn_ns.len() as u64));
    if let Some(w) = per_conn {
        util::log(&format!(
            "{what}: {} connections, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs; per connection podrouterd's workers {}",
            r.conn_ns.len(),
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            w.describe(),
        ));
    }
    ctx.runs.push(json!({
        "what": what, "plane": t.label, "kind": "tcp_connections", "completed": r.conn_ns.len(),
        "failed": failed, "first_error": v["first_error"], "per_sec": r.per_sec,
        "p50_us": h.value_at_quantile(0.5) as f64 / 1e3,
        "p99_us": h.value_at_quantile(0.99) as f64 / 1e3,
        "p999_us": h.value_at_quantile(0.999) as f64 / 1e3,
        "max_us": h.max() as f64 / 1e3, "busy_before": busy,
    }));
    WorkPer::add_fields(ctx.runs.last_mut(), per_conn, "connection");
    if failed > 0 {
        ctx.notes.push(format!(
            "{what}: {failed} connection(s) failed (1 s timeout): {}",
            v["first_error"]
        ));
    }
    Ok(r)
}

/// What all podrouterd workers of a topology had done, summed over
/// workers and daemons: sleeps in epoll, frames received, time in rounds
/// that received.
#[derive(Clone, Copy, Debug, Default)]
struct WorkerWork {
    sleeps: u64,
    frames: u64,
    busy_ns: u64,
    /// The worker threads' time waiting on a run queue (woken or
    /// preempted, not yet running: `/proc/PID/task/TID/schedstat`).
    run_delay_ns: u64,
    /// How often the scheduler took the CPU from a worker that still
    /// wanted it (`nonvoluntary_ctxt_switches`).
    preempted: u64,
    /// Times the workers' busy polling backed off (a preemption while
    /// spinning).
    spin_backoffs: u64,
    /// Wall time busy polling kept the workers polling without work.
    spin_ns: u64,
}

/// [`WorkerWork`] between two snapshots, per request or connection.
#[derive(Clone, Copy, Debug)]
struct WorkPer {
    sleeps: f64,
    frames: f64,
    busy_us: f64,
    run_delay_us: f64,
    preempted: f64,
    spin_us: f64,
    /// Busy polling's back-offs in the whole run (not per unit: they are
    /// few).
    spin_backoffs_in_run: u64,
}

impl WorkPer {
    /// Adds the six figures to a run's record as
    /// `worker_{sleeps,frames,busy_us,run_queue_us,preempted,spin_us}_per_{unit}`,
    /// and `worker_busy_poll_backoffs` for the whole run (null for the
    /// kernel's plane, which has no workers).
    fn add_fields(run: Option<&mut Value>, per: Option<WorkPer>, unit: &str) {
        let Some(Value::Object(record)) = run else {
            return;
        };
        let names = [
            "sleeps",
            "frames",
            "busy_us",
            "run_queue_us",
            "preempted",
            "spin_us",
        ];
        let values = per.map(|w| {
            [
                w.sleeps,
                w.frames,
                w.busy_us,
                w.run_delay_us,
                w.preempted,
                w.spin_us,
            ]
        });
        for (i, name) in names.iter().enumerate() {
            record.insert(
                format!("worker_{name}_per_{unit}"),
                json!(values.map(|v| v[i])),
            );
        }
        record.insert(
            "worker_busy_poll_backoffs".into(),
            json!(per.map(|w| w.spin_backoffs_in_run)),
        );
    }

    /// What the workers did per request or connection, for the log.
    fn describe(&self) -> String {
        format!(
            "slept {:.2} times, forwarded {:.2} frames, worked {:.1} µs, spun {:.1} µs without work, waited {:.1} µs \
             on the run queue and were preempted {:.3} times; busy polling backed off {} times in the run",
            self.sleeps,
            self.frames,
            self.busy_us,
            self.spin_us,
            self.run_delay_us,
            self.preempted,
            self.spin_backoffs_in_run
        )
    }
}

impl WorkerWork {
    fn since(&self, before: &WorkerWork) -> WorkerWork {
        WorkerWork {
            sleeps: self.sleeps.saturating_sub(before.sleeps),
            frames: self.frames.saturating_sub(before.frames),
            busy_ns: self.busy_ns.saturating_sub(before.busy_ns),
            run_delay_ns: self.run_delay_ns.saturating_sub(before.run_delay_ns),
            preempted: self.preempted.saturating_sub(before.preempted),
            spin_backoffs: self.spin_backoffs.saturating_sub(before.spin_backoffs),
            spin_ns: self.spin_ns.saturating_sub(before.spin_ns),
        }
    }

    fn per(&self, n: u64) -> WorkPer {
        let n = n.max(1) as f64;
        WorkPer {
            sleeps: self.sleeps as f64 / n,
            frames: self.frames as f64 / n,
            busy_us: self.busy_ns as f64 / 1e3 / n,
            run_delay_us: self.run_delay_ns as f64 / 1e3 / n,
            preempted: self.preempted as f64 / n,
            spin_us: self.spin_ns as f64 / 1e3 / n,
            spin_backoffs_in_run: self.spin_backoffs,
        }
    }
}

/// The work of all podrouterd workers of a topology (`None` for the
/// kernel's, or if a daemon does not answer).
fn worker_work(t: &Topology) -> Option<WorkerWork> {
    if t.daemons.is_empty() {
        return None;
    }
    t.daemons.iter().try_fold(WorkerWork::default(), |sum, d| {
        match d.call(podrouter_api::Call::Counters) {
            Ok(podrouter_api::Reply::Counters(c)) => {
                let (run_delay_ns, preempted) = worker_threads_sched(d.pid());
                Some(WorkerWork {
                    sleeps: sum.sleeps + c.sleeps,
                    frames: sum.frames + c.rx,
                    busy_ns: sum.busy_ns + c.worker_busy_ns.iter().sum::<u64>(),
                    run_delay_ns: sum.run_delay_ns + run_delay_ns,
                    preempted: sum.preempted + preempted,
                    spin_backoffs: sum.spin_backoffs + c.busy_poll_backoffs,
                    spin_ns: sum.spin_ns + c.worker_spin_ns.iter().sum::<u64>(),
                })
            }
            _ => None,
        }
    })
}

/// The run-queue wait (ns) and involuntary context switches of a
/// podrouterd's worker threads (`podrouter-w*`), summed; zeros where
/// `/proc` does not tell.
fn worker_threads_sched(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let mut sum = (0, 0);
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("podrouter-w") {
            continue;
        }
        // schedstat: time on the CPU, time waiting on a run queue,
        // timeslices (ns, ns, count).
        let sched = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        sum.0 += sched
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        sum.1 += status
            .lines()
            .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sum
}

pub(crate) fn hist(ns: &[u64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    for v in ns {
        h.saturating_record((*v).max(1));
    }
    h
}

// ---------------------------------------------------------------------------
// Running both planes

/// Runs `f` `repeats` times on each available plane, alternating planes
/// within each repeat. Returns per plane the successful results or, if
/// none, why.
/// One successful run of a measurement.
pub(crate) struct Run<T> {
    v: T,
    /// It started while other processes kept the machine busy.
    disturbed: bool,
}

impl<T> Run<T> {
    pub(crate) fn new(v: T, disturbed: bool) -> Run<T> {
        Run { v, disturbed }
    }
}

/// One plane's runs of a figure, or why it has none.
pub(crate) type PlaneRuns<T> = Result<Vec<Run<T>>, String>;

pub(crate) fn both<T>(
    ctx: &mut Ctx,
    planes: &[&Slot; 2],
    what: &str,
    mut f: impl FnMut(&mut Ctx, &Topology, &str) -> Res<T>,
) -> Res<[Result<Vec<Run<T>>, String>; 2]> {
    let mut out: [Result<Vec<Run<T>>, String>; 2] = [Ok(Vec::new()), Ok(Vec::new())];
    let mut errs: [Option<String>; 2] = [None, None];
    for rep in 1..=ctx.p.repeats {
        for (i, slot) in planes.iter().enumerate() {
            let Ok(t) = slot else { continue };
            let desc = format!("{what} · {} · run {rep}/{}", t.label, ctx.p.repeats);
            ctx.progress.step(&desc);
            let n0 = ctx.busy.len();
            match f(ctx, t, &desc) {
                Ok(v) => {
                    let disturbed = ctx.busy[n0..].iter().any(|b| *b >= BUSY);
                    if let Ok(vs) = &mut out[i] {
                        vs.push(Run { v, disturbed });
                    }
                }
                Err(e) if e.interrupted => return Err(e),
                Err(e) => {
                    ctx.fail(&desc, &e);
                    errs[i].get_or_insert(e.msg);
                }
            }
        }
    }
    for i in 0..2 {
        match planes[i] {
            Err(why) => out[i] = Err(why.clone()),
            Ok(_) => {
                if matches!(&out[i], Ok(v) if v.is_empty()) {
                    out[i] = Err(errs[i].take().unwrap_or_else(|| "no run".into()));
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn cell<T>(r: &Result<Vec<Run<T>>, String>, f: impl Fn(&T) -> f64) -> Cell {
    match r {
        Ok(v) => Cell::from_runs(
            v.iter().map(|r| f(&r.v)).collect(),
            v.iter().filter(|r| r.disturbed).count(),
        ),
        Err(why) => Cell::missing(first_line(why)),
    }
}

pub(crate) fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("").trim();
    if l.len() > 160 {
        let mut i = 160;
        while !l.is_char_boundary(i) {
            i -= 1;
        }
        format!("{}…", &l[..i])
    } else {
        l.to_string()
    }
}

/// Packet rate, TCP and latency rows for one pair of planes.
fn traffic_rows(
    ctx: &mut Ctx,
    planes: [&Slot; 2],
    scenario: &str,
    sizes: &[usize],
    plot: bool,
) -> Res<()> {
    let mut rate_cells: [Vec<Cell>; 2] = [Vec::new(), Vec::new()];
    for &size in sizes {
        let what = format!("{scenario} · UDP {size} B");
        let r = both(ctx, &planes, &what, |c, t, d| udp_rate(c, t, size, d))?;
        let cells = [cell(&r[PR], |x| x.mpps), cell(&r[K], |x| x.mpps)];
        if size == 64 && scenario.starts_with("same node") {
            ctx.two_pod_64 = [cells[PR].median(), cells[K].median()];
        }
        rate_cells[PR].push(cells[PR].clone());
        rate_cells[K].push(cells[K].clone());
        let [cp, ck] = cells;
        ctx.rows.push(Row::new(
            scenario,
            &format!("UDP {size} B frames"),
            "Mpps",
            "higher",
            cp,
            ck,
        ));
        if size == 64 {
            ctx.rows.push(Row::new(
                scenario,
                "CPU per Mpkt at 64 B: podrouterd process / kernel softirq",
                "CPU s",
                "lower",
                cell(&r[PR], |x| x.plane_cpu_per_mpkt),
                cell(&r[K], |x| x.plane_cpu_per_mpkt),
            ));
            ctx.rows.push(Row::new(
                scenario,
                &format!(
                    "CPU per Mpkt at 64 B: data-plane CPU {} busy",
                    ctx.opts.dp_cpu
                ),
                "CPU s",
                "lower",
                cell(&r[PR], |x| x.core_per_mpkt),
                cell(&r[K], |x| x.core_per_mpkt),
            ));
        }
    }
    if plot && !sizes.is_empty() {
        let labels: Vec<String> = planes
            .iter()
            .map(|s| match s {
                Ok(t) => t.label.clone(),
                Err(_) => "n/a".into(),
            })
            .collect();
        ctx.rate_plot = vec![
            (labels[PR].clone(), rate_cells[PR].clone()),
            (labels[K].clone(), rate_cells[K].clone()),
        ];
    }
    for &n in &ctx.p.streams.clone() {
        let what = format!(
            "{scenario} · TCP {n} stream{}",
            if n == 1 { "" } else { "s" }
        );
        let r = both(ctx, &planes, &what, |c, t, d| tcp(c, t, n, d))?;
        ctx.rows.push(Row::new(
            scenario,
            &format!("TCP, {n} stream{} (iperf3)", if n == 1 { "" } else { "s" }),
            "Gbit/s",
            "higher",
            cell(&r[PR], |x| x.gbps),
            cell(&r[K], |x| x.gbps),
        ));
        if n == 1 {
            ctx.rows.push(Row::new(
                scenario,
                "CPU per GB at TCP 1 stream: podrouterd process / kernel softirq",
                "CPU s",
                "lower",
                cell(&r[PR], |x| x.plane_cpu_per_gb),
                cell(&r[K], |x| x.plane_cpu_per_gb),
            ));
        }
    }
    let r = latency_rows(ctx, planes, scenario, "")?;
    if plot {
        for (i, s) in planes.iter().enumerate() {
            if let (Ok(t), Ok(runs)) = (s, &r[i]) {
                let all: Vec<f64> = runs
                    .iter()
                    .flat_map(|r| r.v.iter())
                    .map(|v| *v as f64 / 1e3)
                    .collect();
                ctx.cdf_plot.push((t.label.clone(), all));
            }
        }
    }
    Ok(())
}

/// UDP request/response latency rows (p50, p99, p99.9) of `planes`,
/// measured alternating; `vs` ends the rows' measures ("" against the
/// scenario's own kernel plane). Returns the runs, for the plot.
fn latency_rows(
    ctx: &mut Ctx,
    planes: [&Slot; 2],
    scenario: &str,
    vs: &str,
) -> Res<[PlaneRuns<Vec<u64>>; 2]> {
    let what = format!(
        "{scenario} · UDP request/response at {} /s{vs}",
        ctx.p.rr_rate
    );
    let r = both(ctx, &planes, &what, rr)?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
        let f = |v: &Vec<u64>| hist(v).value_at_quantile(q) as f64 / 1e3;
        ctx.rows.push(Row::new(
            scenario,
            &format!("request/response latency {name}{vs}"),
            "µs",
            "lower",
            cell(&r[PR], f),
            cell(&r[K], f),
        ));
    }
    Ok(r)
}

/// How the rows against a kernel plane without RPS end their measure.
const VS_INLINE_KERNEL: &str =
    ", vs the kernel without RPS (forwarding on the pods' CPU, as Calico leaves a node)";

/// Latency rows of podrouter (`pr`) against the scenario's kernel plane
/// built again without RPS (`inline`, from [`PlaneOpts::kernel_inline`]):
/// a lone request through the kernel then never leaves the pods' CPU,
/// while podrouter's worker, on its own CPU, is crossed both ways. Every
/// run that does not measure that kernel alone (`--kernel-inline`)
/// carries these rows next to the steered kernel's.
fn inline_kernel_latency_rows(ctx: &mut Ctx, scenario: &str, pr: &Slot, inline: Slot) -> Res<()> {
    if let Ok(t) = &inline {
        ctx.notes.extend(t.notes.iter().cloned());
    }
    // The rows carry the runs; only the scenario's own planes are plotted.
    let _runs = latency_rows(ctx, [pr, &inline], scenario, VS_INLINE_KERNEL)?;
    drop(inline);
    Ok(())
}

/// The plane options of the kernel without RPS.
fn inline_opts(opts: &PlaneOpts) -> PlaneOpts {
    PlaneOpts {
        kernel_inline: true,
        ..opts.clone()
    }
}

// ---------------------------------------------------------------------------
// Scenarios

/// ", workers N" for rows measured with `--workers N` (N > 1), else
/// nothing: the rows of a default run keep their names.
fn workers_label(opts: &topo::PlaneOpts) -> String {
    if opts.workers > 1 {
        format!(", workers {}", opts.workers)
    } else {
        String::new()
    }
}

pub fn same_node(ctx: &mut Ctx) -> Res<()> {
    let opts = ctx.opts.clone();
    let pr = build(ctx, "same node: podrouterd with 2 pods", |_| {
        topo::podrouter_same_node(&opts, 2, |_| {})
    })?;
    let pr = checked(ctx, pr, "same node podrouter")?;
    let k = build(ctx, "same node: kernel (Calico-style) with 2 pods", |_| {
        topo::kernel_same_node(&opts, 2, |_| {})
    })?;
    let k = checked(ctx, k, "same node kernel")?;
    for t in [&pr, &k].into_iter().flatten() {
        ctx.notes.extend(t.notes.iter().cloned());
    }
    let sizes = ctx.p.sizes.clone();
    let scenario = format!("same node, 2 pods{}", workers_label(&ctx.opts));
    traffic_rows(ctx, [&pr, &k], &scenario, &sizes, true)?;
    drop(k);
    if ctx.p.inline_kernel_rows {
        let inline = inline_opts(&opts);
        let k = build(ctx, "same node: kernel without RPS with 2 pods", |_| {
            topo::kernel_same_node(&inline, 2, |_| {})
        })?;
        let k = checked(ctx, k, "same node kernel without RPS")?;
        inline_kernel_latency_rows(ctx, &scenario, &pr, k)?;
    }
    ctx.progress.step("same node: tearing down");
    drop(pr);
    if ctx.opts.backend == "afxdp" {
        bare_xsk_rows(ctx)?;
    }
    Ok(())
}

/// The bare-XSK ceiling (afxdp runs): 64 B frames through podrouter's
/// AF_XDP port on the same kind of veths with no pipeline, and
/// podrouterd's 64 B rate as a fraction of it.
fn bare_xsk_rows(ctx: &mut Ctx) -> Res<()> {
    let scenario = "same node, 2 pods";
    let opts = ctx.opts.clone();
    let exe = ctx.self_exe.clone();
    let slot = build(ctx, "same node: bare XSK forwarder with 2 pods", |_| {
        topo::xsk_bare_same_node(&opts, &exe)
    })?;
    let slot = checked(ctx, slot, "bare XSK forwarder")?;
    let cell = match &slot {
        Err(why) => Cell::missing(first_line(why)),
        Ok(t) => {
            let (mut v, mut disturbed, mut err) = (Vec::new(), 0, None);
            for rep in 1..=ctx.p.repeats {
                let desc = format!(
                    "{scenario} · UDP 64 B · {} · run {rep}/{}",
                    t.label, ctx.p.repeats
                );
                ctx.progress.step(&desc);
                let n0 = ctx.busy.len();
                match udp_rate(ctx, t, 64, &desc) {
                    Ok(r) => {
                        v.push(r.mpps);
                        disturbed += usize::from(ctx.busy[n0..].iter().any(|b| *b >= BUSY));
                    }
                    Err(e) if e.interrupted => return Err(e),
                    Err(e) => {
                        ctx.fail(&desc, &e);
                        err.get_or_insert(e.msg);
                    }
                }
            }
            if v.is_empty() {
                Cell::missing(first_line(&err.unwrap_or_default()))
            } else {
                Cell::from_runs(v, disturbed)
            }
        }
    };
    let ratio = match (ctx.two_pod_64[PR], cell.median()) {
        (Some(p), Some(b)) if b > 0.0 => Cell::from_runs(vec![p / b], 0),
        _ => Cell::missing("not available (a 64 B figure is missing)"),
    };
    let na = || Cell::missing("not available (an AF_XDP probe): no kernel counterpart");
    ctx.rows.push(Row::new(
        scenario,
        "UDP 64 B frames, bare XSK forwarder (podrouter's AF_XDP port, no pipeline): the ceiling",
        "Mpps",
        "higher",
        cell,
        na(),
    ));
    ctx.rows.push(Row::new(
        scenario,
        "podrouterd (afxdp) 64 B rate / the bare XSK ceiling (goal >= 0.9)",
        "ratio",
        "higher",
        ratio,
        na(),
    ));
    ctx.progress
        .step("same node: tearing down the bare XSK forwarder");
    drop(slot);
    Ok(())
}

pub fn scale(ctx: &mut Ctx) -> Res<()> {
    let n = ctx.p.scale_pods;
    let scenario = format!("scale, {n} idle pods");
    let mut idle: [Cell; 2] = [Cell::missing("not run"), Cell::missing("not run")];
    let mut rate: [Cell; 2] = [Cell::missing("not run"), Cell::missing("not run")];
    for plane in [PR, K] {
        let opts = ctx.opts.clone();
        let what = if plane == PR {
            format!("scale: attaching {n} pods to podrouterd")
        } else {
            format!("scale: {n} Calico-style kernel pods")
        };
        let t0 = Instant::now();
        let slot = {
            let prog = &ctx.progress;
            prog.sub(&format!("{what}: building"));
            let built = build_scale(&opts, plane, n, prog);
            ctx.progress.step(&what);
            match built {
                Ok(t) => Ok(t),
                Err(e) if e.interrupted => return Err(e),
                Err(e) => {
                    ctx.fail(&what, &e);
                    Err(e.msg)
                }
            }
        };
        let slot = checked(ctx, slot, &what)?;
        let Ok(t) = &slot else {
            let why = slot.err().unwrap_or_default();
            idle[plane] = Cell::missing(first_line(&why));
            rate[plane] = Cell::missing(first_line(&why));
            continue;
        };
        let build_secs = t0.elapsed().as_secs_f64();
        ctx.notes.push(format!(
            "scale: {} with {n} pods built in {build_secs:.1} s",
            t.label
        ));
        // Idle CPU.
        let what_idle = format!(
            "scale: {} CPU over {} s with {n} idle pods",
            t.label, ctx.p.scale_idle_secs
        );
        ctx.progress.step(&what_idle);
        let mut idle_disturbed = false;
        let r: Res<f64> = (|| {
            idle_disturbed = quiesce(ctx, &what_idle)? >= BUSY;
            let pids = t.daemon_pids();
            let dst = &t.pods[0];
            let a = measure::snap(&dst.ns, &dst.ifname, &pids)?;
            util::sleep(Duration::from_secs_f64(ctx.p.scale_idle_secs))?;
            let b = measure::snap(&dst.ns, &dst.ifname, &pids)?;
            let d = measure::delta(&a, &b, ctx.opts.dp_cpu);
            let cpu = if t.is_podrouter() {
                d.daemon_cpu_s
            } else {
                d.softirq_s
            };
            ctx.runs
                .push(json!({"what": what_idle, "plane": t.label, "kind": "idle", "counters": d}));
            Ok(cpu / d.secs * 100.0)
        })();
        match r {
            Ok(v) => idle[plane] = Cell::from_runs(vec![v], usize::from(idle_disturbed)),
            Err(e) if e.interrupted => return Err(e),
            Err(e) => {
                ctx.fail(&what_idle, &e);
                idle[plane] = Cell::missing(first_line(&e.msg));
            }
        }
        // Rate between the first and the last pod.
        let mut v = Vec::new();
        let mut disturbed = 0;
        let mut err = None;
        for rep in 1..=ctx.p.repeats {
            let desc = format!(
                "scale · UDP 64 B between 2 of {n} pods · {} · run {rep}/{}",
                t.label, ctx.p.repeats
            );
            ctx.progress.step(&desc);
            let n0 = ctx.busy.len();
            match udp_rate(ctx, t, 64, &desc) {
                Ok(r) => {
                    v.push(r.mpps);
                    disturbed += usize::from(ctx.busy[n0..].iter().any(|b| *b >= BUSY));
                }
                Err(e) if e.interrupted => return Err(e),
                Err(e) => {
                    ctx.fail(&desc, &e);
                    err.get_or_insert(e.msg);
                }
            }
        }
        rate[plane] = if v.is_empty() {
            Cell::missing(first_line(&err.unwrap_or_default()))
        } else {
            Cell::from_runs(v, disturbed)
        };
        ctx.progress
            .step(&format!("scale: tearing down {}", t.label));
        drop(slot);
        // Namespace teardown finishes in the background: let it, so it
        // does not disturb the next measurement.
        measure::quiesce(0.10, Duration::from_secs(if ctx.p.smoke { 2 } else { 60 }))?;
    }
    let [ip, ik] = idle;
    ctx.rows.push(Row::new(
        &scenario,
        &format!(
            "CPU while idle ({} s): podrouterd process / kernel softirq",
            ctx.p.scale_idle_secs
        ),
        "% of one CPU",
        "lower",
        ip,
        ik,
    ));
    let rel = |c: &Cell, base: Option<f64>| match (c.median(), base) {
        (Some(_), Some(b)) if b > 0.0 => match c {
            Cell::Measured {
                samples, disturbed, ..
            } => Cell::from_runs(samples.iter().map(|x| x / b).collect(), *disturbed),
            Cell::Missing { reason } => Cell::missing(reason.clone()),
        },
        (None, _) => c.clone(),
        _ => Cell::missing("not available (no 2-pod figure: the same-node scenario did not run)"),
    };
    let rel_p = rel(&rate[PR], ctx.two_pod_64[PR]);
    let rel_k = rel(&rate[K], ctx.two_pod_64[K]);
    let [rp, rk] = rate;
    ctx.rows.push(Row::new(
        &scenario,
        &format!("UDP 64 B frames between 2 of {n} pods"),
        "Mpps",
        "higher",
        rp,
        rk,
    ));
    ctx.rows.push(Row::new(
        &scenario,
        "that rate / the 2-pod rate",
        "×",
        "higher",
        rel_p,
        rel_k,
    ));
    Ok(())
}

fn build_scale(opts: &PlaneOpts, plane: usize, n: usize, prog: &Progress) -> Res<Topology> {
    let every = (n / 10).max(1);
    let tick = |i: usize| {
        if i % every == 0 {
            prog.sub(&format!("scale: {i}/{n} pods attached"));
        }
    };
    if plane == PR {
        topo::podrouter_same_node(opts, n, tick)
    } else {
        topo::kernel_same_node(opts, n, tick)
    }
}

/// How many Services the Services scenario loads in each round by
/// default (`--services`): the
/// measured one alone, then among 999 and 9,999 others (kube-proxy's
/// iptables mode walks one rule per Service port for a connection's first
/// packet; the built-in balancer looks the ClusterIP up in a hash table).
pub const SERVICE_COUNTS: [u32; 3] = [1, 1_000, 10_000];

/// Services: a client pod and two backend pods on one node, kube-proxy's
/// iptables rules for a ClusterIP in the node's kernel; podrouter (replies
/// steered back through the node by the flow table) against the kernel
/// (Calico's wiring) with the same rules; once per [`SERVICE_COUNTS`].
pub fn services(ctx: &mut Ctx) -> Res<()> {
    for n in ctx.p.service_counts.clone() {
        services_among(ctx, n.saturating_sub(1))?;
    }
    Ok(())
}

/// One round of [`services`]: the measured Service among `others` more.
fn services_among(ctx: &mut Ctx, others: u32) -> Res<()> {
    let opts = ctx.opts.clone();
    let ports = [
        ("udp", crate::helpers::ECHO_PORT),
        ("tcp", crate::helpers::CONN_PORT),
    ];
    let with_service = |mut t: Topology| -> Res<Topology> {
        let backends = [t.pods[1].ip, t.pods[2].ip];
        t.add_kube_proxy_service(&ports, &backends, others)?;
        Ok(t)
    };
    let among = if others == 0 {
        String::new()
    } else {
        format!(" among {} Services", others + 1)
    };
    let pr = build(
        ctx,
        &format!("services{among}: podrouterd with a client, 2 backends and kube-proxy's rules"),
        |_| with_service(topo::podrouter_same_node(&opts, 3, |_| {})?),
    )?;
    let pr = checked(ctx, pr, "services podrouter")?;
    // A kernel plane (`which`, for the log) with the same rules.
    let kernel = |ctx: &mut Ctx, opts: &PlaneOpts, which: &str| -> Res<Slot> {
        let k = build(
            ctx,
            &format!("services{among}: {which} with a client, 2 backends and kube-proxy's rules"),
            |_| with_service(topo::kernel_same_node(opts, 3, |_| {})?),
        )?;
        checked(ctx, k, &format!("services {which}"))
    };
    let k = kernel(ctx, &opts, "kernel (Calico-style)")?;
    for t in [&pr, &k].into_iter().flatten() {
        ctx.notes.extend(t.notes.iter().cloned());
    }
    let scenario = if others == 0 {
        format!(
            "Services: ClusterIP {} with kube-proxy's iptables rules, client and 2 backends on one node",
            topo::CLUSTER_IP
        )
    } else {
        format!(
            "Services: ClusterIP {}{among} (kube-proxy's iptables rules: its rule halfway down \
             KUBE-SERVICES), client and 2 backends on one node",
            topo::CLUSTER_IP
        )
    };
    balancer_rows(
        ctx,
        &scenario,
        [&pr, &k],
        "",
        RowEnds {
            latency: "",
            conns: " (one client, one at a time)",
            time: "",
        },
    )?;
    // The same rules through the kernel without RPS, as Calico leaves a
    // node: kept for the built-in balancer's comparison with it too.
    let inline = if ctx.p.inline_kernel_rows {
        let k = kernel(ctx, &inline_opts(&opts), "kernel without RPS")?;
        if let Ok(t) = &k {
            ctx.notes.extend(t.notes.iter().cloned());
        }
        balancer_rows(
            ctx,
            &scenario,
            [&pr, &k],
            "vs the kernel without RPS",
            RowEnds {
                latency: VS_INLINE_KERNEL,
                conns: VS_INLINE_KERNEL,
                time: VS_INLINE_KERNEL,
            },
        )?;
        Some(k)
    } else {
        None
    };
    let planes = [&pr, &k];
    // The same client to one backend's own address: what the data plane
    // does without the Service, for reference.
    let what = format!("{scenario} · new TCP connections to a backend directly");
    let r = both(ctx, &planes, &what, |c, t, d| {
        conn_rate(c, t, &[&t.pods[1]], t.pods[1].ip, d)
    })?;
    ctx.rows.push(Row::new(
        &scenario,
        "for reference: new TCP connections per second to a backend's own address (no Service)",
        "conn/s",
        "higher",
        cell(&r[PR], |x| x.per_sec),
        cell(&r[K], |x| x.per_sec),
    ));
    if let Ok(t) = &pr {
        if let Ok(podrouter_api::Reply::Counters(c)) =
            t.daemons[0].call(podrouter_api::Call::Counters)
        {
            ctx.notes.push(format!(
                "services: podrouterd's flow table after the runs: {} flows of the node's NAT \
                 recorded, {} reply packets steered to the host port, {} refused (table full), {} \
                 entries live; drops: {}",
                c.flows.inserted,
                c.flows.steered_to_host,
                c.flows.full,
                c.flows.entries,
                t.daemons[0].drops()
            ));
        }
    }
    drop(pr);
    builtin_balancer_rows(ctx, &scenario, &ports, &k, inline.as_ref(), others)?;
    ctx.progress.step(&format!("services{among}: tearing down"));
    drop(k);
    drop(inline);
    Ok(())
}

/// The built-in load balancer's rows of the Services scenario: the same
/// client, backends and ClusterIP in podrouterd with `service apply` and
/// no iptables rule, against the kernel with kube-proxy's rules (`k`,
/// measured again, alternating, so each ratio comes from one run), and
/// against the same rules in the kernel without RPS (`inline`, when the
/// run carries those rows).
fn builtin_balancer_rows(
    ctx: &mut Ctx,
    scenario: &str,
    ports: &[(&str, u16)],
    k: &Slot,
    inline: Option<&Slot>,
    others: u32,
) -> Res<()> {
    let opts = ctx.opts.clone();
    let lb = build(
        ctx,
        &format!(
            "services: podrouterd with a client, 2 backends and its built-in balancer, {} Services",
            others + 1
        ),
        |_| {
            let mut t = topo::podrouter_same_node(&opts, 3, |_| {})?;
            let backends = [t.pods[1].ip, t.pods[2].ip];
            t.add_builtin_service(ports, &backends, others)?;
            Ok(t)
        },
    )?;
    let lb = checked(ctx, lb, "services built-in balancer")?;
    if let Ok(t) = &lb {
        ctx.notes.extend(t.notes.iter().cloned());
    }
    balancer_rows(
        ctx,
        scenario,
        [&lb, k],
        "built-in balancer",
        RowEnds {
            latency: ", podrouterd's built-in balancer vs kube-proxy's rules in the kernel",
            conns: ", podrouterd's built-in balancer vs kube-proxy's rules in the kernel",
            time: ", built-in balancer vs kernel",
        },
    )?;
    if others == 0 {
        wire_rows(ctx, scenario, &lb)?;
    }
    if let Some(inline) = inline {
        let vs =
            ", podrouterd's built-in balancer vs kube-proxy's rules in the kernel without RPS \
                  (forwarding on the pods' CPU, as Calico leaves a node)";
        balancer_rows(
            ctx,
            scenario,
            [&lb, inline],
            "built-in balancer vs the kernel without RPS",
            RowEnds {
                latency: vs,
                conns: vs,
                time: ", built-in balancer vs the kernel without RPS",
            },
        )?;
    }
    if let Ok(t) = &lb {
        if let Ok(podrouter_api::Reply::Services(s)) =
            t.daemons[0].call(podrouter_api::Call::ServiceList)
        {
            let per_backend: Vec<String> = s
                .iter()
                .filter(|s| s.cluster_ip == Some(topo::CLUSTER_IP))
                .flat_map(|s| &s.ports)
                .flat_map(|p| {
                    p.backends.iter().map(move |b| {
                        format!("{}/{} -> {}: {} flows", p.port, p.protocol, b.ip, b.flows)
                    })
                })
                .collect();
            ctx.notes.push(format!(
                "services: podrouterd's built-in balancer after the runs: {}; drops: {}",
                per_backend.join(", "),
                t.daemons[0].drops()
            ));
        }
    }
    drop(lb);
    Ok(())
}

/// How the rows of one Services comparison end their measures: the UDP
/// latency rows, the connection-rate row and the connection-time row.
struct RowEnds<'a> {
    latency: &'a str,
    conns: &'a str,
    time: &'a str,
}

/// The rows of one Services comparison: UDP request/response latency
/// (p50, p99, p99.9) and new TCP connections (per second, time p50) to
/// the ClusterIP, `planes[0]` (podrouterd) against `planes[1]` (a kernel
/// with kube-proxy's rules), alternating. `step` names the runs in the
/// log ("" for the scenario's main comparison), `ends` ends the rows'
/// measures.
fn balancer_rows(
    ctx: &mut Ctx,
    scenario: &str,
    planes: [&Slot; 2],
    step: &str,
    ends: RowEnds,
) -> Res<()> {
    let step = if step.is_empty() {
        String::new()
    } else {
        format!(" · {step}")
    };
    let what = format!(
        "{scenario}{step} · UDP request/response at {} /s",
        ctx.p.rr_rate
    );
    let r = both(ctx, &planes, &what, |c, t, d| {
        rr_to(c, t, &[&t.pods[1], &t.pods[2]], topo::CLUSTER_IP, d)
    })?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
        let f = |v: &Vec<u64>| hist(v).value_at_quantile(q) as f64 / 1e3;
        ctx.rows.push(Row::new(
            scenario,
            &format!(
                "request/response latency {name} (UDP to the ClusterIP){}",
                ends.latency
            ),
            "µs",
            "lower",
            cell(&r[PR], f),
            cell(&r[K], f),
        ));
    }
    let what = format!("{scenario}{step} · new TCP connections");
    let r = both(ctx, &planes, &what, |c, t, d| {
        conn_rate(c, t, &[&t.pods[1], &t.pods[2]], topo::CLUSTER_IP, d)
    })?;
    ctx.rows.push(Row::new(
        scenario,
        &format!(
            "new TCP connections per second to the ClusterIP{}",
            ends.conns
        ),
        "conn/s",
        "higher",
        cell(&r[PR], |x| x.per_sec),
        cell(&r[K], |x| x.per_sec),
    ));
    let p50 = |x: &ConnRun| hist(&x.conn_ns).value_at_quantile(0.5) as f64 / 1e3;
    ctx.rows.push(Row::new(
        scenario,
        &format!(
            "TCP connection time p50 (connect to the server's close){}",
            ends.time
        ),
        "µs",
        "lower",
        cell(&r[PR], p50),
        cell(&r[K], p50),
    ));
    Ok(())
}

/// The reference row of the Services scenario: the built-in balancer's
/// connections to the ClusterIP (`lb`) against the same client and server
/// on a bare veth pair with the kernel plane's CPU path
/// ([`topo::bare_wire`]), alternating: how close a connection through
/// podrouter comes to one through no router at all.
fn wire_rows(ctx: &mut Ctx, scenario: &str, lb: &Slot) -> Res<()> {
    let opts = ctx.opts.clone();
    let wire = build(
        ctx,
        "services: two pods on a bare veth pair (no router)",
        |_| topo::bare_wire(&opts),
    )?;
    let wire = checked(ctx, wire, "bare veth pair")?;
    if let Ok(t) = &wire {
        ctx.notes.extend(t.notes.iter().cloned());
    }
    let what = format!("{scenario} · built-in balancer and a bare veth pair · new TCP connections");
    let r = both(ctx, &[lb, &wire], &what, |c, t, d| {
        if t.is_podrouter() {
            conn_rate(c, t, &[&t.pods[1], &t.pods[2]], topo::CLUSTER_IP, d)
        } else {
            conn_rate(c, t, &[&t.pods[1]], t.pods[1].ip, d)
        }
    })?;
    ctx.rows.push(Row::new(
        scenario,
        if ctx.opts.kernel_inline {
            "for reference: new TCP connections per second, podrouterd's built-in balancer to the ClusterIP vs two pods on a bare veth pair (no router, no NAT; everything on the pods' CPU, as the kernel plane)"
        } else {
            "for reference: new TCP connections per second, podrouterd's built-in balancer to the ClusterIP vs two pods on a bare veth pair (no router, no NAT; receive steered to the data-plane CPU as in the kernel plane)"
        },
        "conn/s",
        "higher",
        cell(&r[PR], |x| x.per_sec),
        cell(&r[K], |x| x.per_sec),
    ));
    Ok(())
}

/// Rule counts of the policy scenario.
pub const POLICY_RULES: [usize; 3] = [0, 1_000, 10_000];

pub fn policy(ctx: &mut Ctx) -> Res<()> {
    let opts = ctx.opts.clone();
    for rules in POLICY_RULES {
        let pr = build(
            ctx,
            &format!("policy: podrouterd, 2 pods, {rules} rules"),
            |_| {
                let t = topo::podrouter_same_node(&opts, 2, |_| {})?;
                t.add_podrouter_policy(rules)?;
                Ok(t)
            },
        )?;
        let pr = checked(ctx, pr, "policy podrouter")?;
        let k = build(
            ctx,
            &format!("policy: kernel (Calico-style), 2 pods, {rules} rules in iptables"),
            |_| {
                let mut t = topo::kernel_same_node(&opts, 2, |_| {})?;
                t.add_iptables_policy(rules)?;
                Ok(t)
            },
        )?;
        let k = checked(ctx, k, "policy kernel")?;
        for t in [&pr, &k].into_iter().flatten() {
            ctx.notes.extend(t.notes.iter().cloned());
        }
        let scenario = format!("network policy: {rules} ingress rules selecting the measured pods");
        let planes = [&pr, &k];
        let what = format!("{scenario} · UDP 64 B");
        let r = both(ctx, &planes, &what, |c, t, d| udp_rate(c, t, 64, d))?;
        ctx.rows.push(Row::new(
            &scenario,
            "UDP 64 B frames, one one-way flow (podrouter tracks it from its first packet; the kernel's conntrack keeps it NEW without a reply, so every packet walks the chain)",
            "Mpps",
            "higher",
            cell(&r[PR], |x| x.mpps),
            cell(&r[K], |x| x.mpps),
        ));
        let what = format!("{scenario} · new TCP connections");
        let r = both(ctx, &planes, &what, |c, t, d| {
            conn_rate(c, t, &[&t.pods[1]], t.pods[1].ip, d)
        })?;
        ctx.rows.push(Row::new(
            &scenario,
            "new TCP connections per second (one client, one at a time)",
            "conn/s",
            "higher",
            cell(&r[PR], |x| x.per_sec),
            cell(&r[K], |x| x.per_sec),
        ));
        if let Ok(t) = &pr {
            if let Ok(podrouter_api::Reply::Counters(c)) =
                t.daemons[0].call(podrouter_api::Call::Counters)
            {
                ctx.notes.push(format!(
                    "policy, {rules} rules: podrouterd allowed {} new connections by policy, drops: {}",
                    c.flows.policy_allowed,
                    t.daemons[0].drops()
                ));
            }
        }
        ctx.progress
            .step(&format!("policy, {rules} rules: tearing down"));
        drop(pr);
        drop(k);
    }
    Ok(())
}

pub fn two_node(ctx: &mut Ctx) -> Res<()> {
    for pair in ctx.p.two_node_pairs.clone() {
        let scenario = format!("{}{}", pair.scenario(), workers_label(&ctx.opts));
        let o = ctx.opts.clone();
        let pr = build(ctx, &format!("{scenario}: podrouter nodes"), |_| {
            topo::two_node(&o, pair.podrouter(), pair.underlay, pair.underlay_mtu)
        })?;
        // A podrouter two-node topology that does not forward means the
        // IPIP uplink (issue 4) is not there yet: a missing row, not a
        // broken harness.
        let pr = match pr {
            Ok(t) => check_slot(Ok(t), "not available (issue 4): ")?,
            Err(e) if e.starts_with("not available") => Err(e),
            Err(e) => Err(format!("not available (issue 4): {}", first_line(&e))),
        };
        if pr.is_err() {
            // Do not count it as a harness failure.
            ctx.failures
                .retain(|f| !f.starts_with(&format!("{scenario}: podrouter nodes")));
        }
        let pr = verify_two_node(ctx, pr, &pair, &scenario)?;
        let k = build(ctx, &format!("{scenario}: kernel nodes"), |_| {
            topo::two_node(&o, pair.kernel, pair.underlay, pair.underlay_mtu)
        })?;
        let k = checked(ctx, k, &scenario)?;
        let k = verify_two_node(ctx, k, &pair, &scenario)?;
        for t in [&pr, &k].into_iter().flatten() {
            ctx.notes.extend(t.notes.iter().cloned());
        }
        if let Err(e) = &pr {
            ctx.notes.push(format!("{scenario}: podrouter {e}"));
        }
        // A frame size counts Ethernet (14) and FCS (4): what does not fit
        // the pods' MTU (a tunnel's path MTU on a small underlay) is no row.
        let (sizes, skipped) = pair.sizes_that_fit(&ctx.p.two_node_sizes);
        let pod_mtu = pair.pod_mtu();
        for s in skipped {
            ctx.notes.push(format!(
                "{scenario}: no UDP {s} B row: that frame does not fit the pods' MTU {pod_mtu}"
            ));
        }
        traffic_rows(ctx, [&pr, &k], &scenario, &sizes, false)?;
        drop(k);
        if ctx.p.inline_kernel_rows {
            let inline = inline_opts(&o);
            let k = build(
                ctx,
                &format!("{scenario}: kernel nodes without RPS"),
                |_| topo::two_node(&inline, pair.kernel, pair.underlay, pair.underlay_mtu),
            )?;
            let k = checked(ctx, k, &format!("{scenario} without RPS"))?;
            let k = verify_two_node(ctx, k, &pair, &scenario)?;
            inline_kernel_latency_rows(ctx, &scenario, &pr, k)?;
        }
        ctx.progress.step(&format!("{scenario}: tearing down"));
        drop(pr);
    }
    Ok(())
}

/// Checks that a working two-node topology is what its row says: a packet
/// of the pod MTU with DF crosses from pod to pod (the pod MTU leaves room
/// for the tunnel), and podrouterd's uplink carried it exactly when
/// `encap` says it should. A topology that fails is a failure
/// of the run.
fn verify_two_node(ctx: &mut Ctx, slot: Slot, pair: &TwoNodePair, scenario: &str) -> Res<Slot> {
    let Ok(t) = slot else { return Ok(slot) };
    let (a, b) = (&t.pods[0], &t.pods[1]);
    let pod_mtu = pair.pod_mtu();
    let icmp_len = (pod_mtu - 28).to_string();
    let port = format!("{}@u1", pair.tunnel);
    let mut crossed = false;
    for _ in 0..3 {
        let out = util::run_t(
            &[
                "ip",
                "netns",
                "exec",
                &a.ns,
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                "-M",
                "do",
                "-s",
                &icmp_len,
                &b.ip.to_string(),
            ],
            Duration::from_secs(5),
        )?;
        if out.ok() {
            crossed = true;
            break;
        }
    }
    let mut why = None;
    if !crossed {
        why = Some(format!(
            "a {pod_mtu}-byte packet with DF from pod {} does not reach pod {} through {}{}",
            a.ip,
            b.ip,
            t.label,
            t.drops_hint()
        ));
    } else if let Some(d) = t.daemons.first() {
        let tx = d.port_tx(&port)?;
        let encap = pair.encap != "never";
        match tx {
            Some(n) if encap && n == 0 => {
                why = Some(format!(
                    "{}: nothing left node 1 through its uplink {port}",
                    t.label
                ))
            }
            Some(n) if !encap && n > 0 => {
                why = Some(format!(
                    "{}: {n} packets left node 1 through its uplink {port}",
                    t.label
                ))
            }
            None => why = Some(format!("{}: node 1 has no port {port}", t.label)),
            Some(n) => ctx.notes.push(format!(
                "{scenario}: checked before measuring: a {pod_mtu}-byte packet with DF crosses \
                 from pod to pod, and {}",
                if encap {
                    format!("node 1's uplink ({port}) sent {n} packet(s) (encapsulated)")
                } else {
                    format!("node 1's uplink ({port}) sent none (routed directly)")
                }
            )),
        }
    }
    match why {
        None => Ok(Ok(t)),
        Some(w) => {
            ctx.progress.note(&format!("warning: {scenario}: {w}"));
            ctx.failures.push(format!("{scenario}: {w}"));
            Ok(Err(w))
        }
    }
}

pub fn cni(ctx: &mut Ctx) -> Res<()> {
    let n = ctx.p.cni_pods;
    let par = ctx.p.cni_parallel;
    let held_all = ctx.p.cni_held.clone();
    let held_max = held_all.iter().copied().max().unwrap_or(0);
    let ptp = ctx.cni_dir.join("ptp");
    let hl = ctx.cni_dir.join("host-local");
    let ours = ctx.opts.bin_dir.join("podrouter-cni");
    let opts = ctx.opts.clone();
    let pr: Slot = if ours.is_file() {
        build(
            ctx,
            &format!("CNI: podrouterd node with {} pod namespaces", n + held_max),
            |_| topo::cni_node(&opts, n + held_max, true),
        )?
    } else {
        ctx.progress.step("CNI: podrouter-cni");
        let why = format!(
            "{} not found (cargo build --release -p podrouter-cni)",
            ours.display()
        );
        ctx.failures.push(why.clone());
        Err(why)
    };
    let k: Slot = if ptp.is_file() && hl.is_file() {
        build(
            ctx,
            &format!("CNI: node with {} pod namespaces for ptp", n + held_max),
            |_| topo::cni_node(&opts, n + held_max, false),
        )?
    } else {
        ctx.progress.step("CNI: ptp + host-local");
        let why = format!(
            "{} or {} not found (apt-get install containernetworking-plugins)",
            ptp.display(),
            hl.display()
        );
        ctx.notes.push(format!("CNI baseline skipped: {why}"));
        Err(why)
    };
    // Configurations, written into each topology's directory.
    let mut confs: [Option<(PathBuf, PathBuf, PathBuf)>; 2] = [None, None];
    if let Ok(t) = &pr {
        let d = &t.daemons[0];
        let conf = t.dir().join("podnet.conf");
        std::fs::write(
            &conf,
            json!({
                "cniVersion": "1.1.0", "name": "benchnet", "type": "podrouter-cni",
                "router_socket": d.socket, "mtu": ctx.opts.mtu,
                "pending_dir": d.state_dir.join("pending-detach"),
            })
            .to_string(),
        )?;
        confs[PR] = Some((ours.clone(), conf, ctx.opts.bin_dir.clone()));
    }
    if let Ok(t) = &k {
        let conf = t.dir().join("ptp.conf");
        std::fs::write(
            &conf,
            json!({
                "cniVersion": "1.0.0", "name": "benchptp", "type": "ptp", "ipMasq": false,
                "mtu": ctx.opts.mtu,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.245.0.0/{}", topo::cni_prefix_len(n + held_max))}]],
                         "dataDir": t.dir().join("host-local")},
            })
            .to_string(),
        )?;
        confs[K] = Some((ptp.clone(), conf, ctx.cni_dir.clone()));
    }
    let planes = [&pr, &k];
    let mut runs = Vec::new();
    for held in std::iter::once(0).chain(held_all) {
        let beside = match held {
            0 => String::new(),
            h => format!(", {h} already attached"),
        };
        runs.push((1, held, format!("{n} pods one at a time{beside}")));
        runs.push((par, held, format!("{n} pods, {par} in parallel{beside}")));
    }
    for (parallel, held, label) in runs {
        let scenario = format!("CNI, {label}");
        let mut run_no = 0;
        let r = both(ctx, &planes, &scenario, |c, t, desc| {
            run_no += 1;
            let i = if t.is_podrouter() { PR } else { K };
            let (plugin, conf, cni_path) =
                confs[i].clone().ok_or_else(|| Error::msg("no config"))?;
            cni_run(
                c,
                t,
                &plugin,
                &conf,
                &cni_path,
                (parallel, held),
                &format!("r{run_no}p{parallel}h{held}"),
                desc,
            )
        })?;
        for (verb, q, name) in [
            ("add", 0.5, "ADD p50"),
            ("add", 0.99, "ADD p99"),
            ("del", 0.5, "DEL p50"),
            ("del", 0.99, "DEL p99"),
        ] {
            let f = |x: &(Vec<f64>, Vec<f64>)| {
                util::quantile(if verb == "add" { &x.0 } else { &x.1 }, q)
            };
            ctx.rows.push(Row::new(
                &scenario,
                name,
                "ms",
                "lower",
                cell(&r[PR], f),
                cell(&r[K], f),
            ));
        }
    }
    ctx.progress.step("CNI: tearing down");
    drop(pr);
    drop(k);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cni_run(
    ctx: &mut Ctx,
    t: &Topology,
    plugin: &Path,
    conf: &Path,
    cni_path: &Path,
    (parallel, held): (usize, usize),
    id: &str,
    what: &str,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let busy = quiesce(ctx, what)?;
    // The first cni_pods namespaces are measured, the next `held` hold
    // pods attached beside them.
    let n = ctx.p.cni_pods;
    let netns: Vec<&str> = t.pods.iter().map(|p| p.ns.as_str()).collect();
    let mut args = vec![
        format!("plugin={}", plugin.display()),
        format!("conf={}", conf.display()),
        format!("cni_path={}", cni_path.display()),
        format!("id=bench-{id}"),
        format!("netns={}", netns[..n].join(",")),
        format!("parallel={parallel}"),
    ];
    if held > 0 {
        args.push(format!("held={}", netns[n..n + held].join(",")));
    }
    let p = spawn_helper(ctx, &t.nodes[0], "cni", &args)?;
    let v = helper_json(p, Duration::from_secs(600))?;
    let ms = |verb: &str| -> Vec<f64> {
        v[verb]["ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (add, del) = (ms("add"), ms("del"));
    ctx.runs.push(
        json!({"what": what, "plane": t.label, "kind": "cni", "parallel": parallel, "held": held,
        "add_ms": add, "del_ms": del, "add_wall_secs": v["add"]["wall_secs"],
        "del_wall_secs": v["del"]["wall_secs"], "busy_before": busy}),
    );
    for verb in ["add", "del"] {
        let f = v[verb]["failures"].as_u64().unwrap_or(0);
        if f > 0 {
            bail!(
                "{f} {} failed; first: {}{}",
                verb.to_uppercase(),
                v[verb]["first_error"].as_str().unwrap_or("?"),
                t.diagnose()
            );
        }
    }
    Ok((add, del))
}

/// How many progress steps the chosen scenarios take (for the bar).
pub fn planned_steps(p: &Params, sc: &[Scenario]) -> usize {
    let r = p.repeats;
    let traffic = |sizes: usize| 2 * r * (sizes + p.streams.len() + 1);
    // The latency rows against the kernel without RPS: its build and runs.
    let inline_latency = if p.inline_kernel_rows { 1 + 2 * r } else { 0 };
    let mut n = 0;
    for s in sc {
        n += match s {
            Scenario::SameNode => 2 + traffic(p.sizes.len()) + inline_latency + 1,
            Scenario::Scale => 2 * (1 + 1 + r + 1),
            Scenario::TwoNode => p
                .two_node_pairs
                .iter()
                .map(|pair| {
                    2 + traffic(pair.sizes_that_fit(&p.two_node_sizes).0.len()) + inline_latency + 1
                })
                .sum(),
            Scenario::Cni => 2 + 2 * 2 * r * (1 + p.cni_held.len()) + 1,
            Scenario::BgpConvergence => crate::bgp::planned_steps(p),
            // + the built-in balancer: its build, latency and connections
            // on it and the kernel; + the kernel without RPS: its build,
            // latency and connections against both podrouter planes.
            Scenario::Services => {
                let inline = if p.inline_kernel_rows {
                    1 + 2 * 2 * 2 * r
                } else {
                    0
                };
                p.service_counts.len() * (2 + 2 * 3 * r + 1 + 1 + 2 * 2 * r + inline)
            }
            Scenario::Policy => POLICY_RULES.len() * (2 + 2 * 2 * r + 1),
            Scenario::Flood => 2 + 2 * 2 * r + 1,
            Scenario::Taps => crate::taps::planned_steps(r),
        };
    }
    n
}
