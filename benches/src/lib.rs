//! `podrouter-bench`: the benchmark harness. Run as root, it builds network
//! namespace topologies, drives traffic through podrouter (TAP backend) and
//! through the kernel doing the same job the way Calico does (veth pairs, /32
//! routes, proxy_arp, permanent neighbour entries) in the same invocation,
//! measures both, tears everything down (also on Ctrl-C, SIGTERM or a
//! failure) and prints a markdown table (JSON with `--json`), with SVG plots
//! and a log in the output directory. It also times BGP convergence,
//! podrouterd against BIRD 2 learning the same table ([`bgp`]). See the
//! README's "Benchmarks".
//!
//! `unsafe` lives only in [`sys`].
#![deny(unsafe_code)]

pub mod bgp;
pub mod flood;
pub mod helpers;
pub mod measure;
pub mod report;
pub mod scenarios;
pub mod soak;
#[allow(unsafe_code)]
pub mod sys;
pub mod taps;
pub mod topo;
pub mod util;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use report::{Machine, Report};
use scenarios::{Ctx, Params, Scenario};
use topo::PlaneOpts;
use util::{Error, Progress, Res};

/// Benchmark podrouter against the kernel (Calico-style) in network
/// namespaces it creates and removes. Needs root.
#[derive(Parser, Debug)]
#[command(name = "podrouter-bench", version)]
struct Cli {
    /// A short run (about a minute: one run per figure, 1 s each, the
    /// smallest topologies) that checks the harness still works; CI runs it.
    #[arg(long)]
    smoke: bool,
    /// Print the report as JSON instead of markdown.
    #[arg(long)]
    json: bool,
    /// Directory for report.md, report.json, the SVG plots and the log.
    #[arg(long, default_value = "target/podrouter-bench")]
    out: PathBuf,
    /// Where podrouterd, podrouterctl and podrouter-cni are (default: the
    /// directory of this binary, i.e. the same cargo target directory).
    #[arg(long, env = "PODROUTER_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Where Debian's reference CNI plugins (ptp, host-local) are.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_plugin_dir: PathBuf,
    /// podrouterd's data-plane backend (`dataplane.backend`).
    #[arg(long, default_value = "tap")]
    backend: String,
    /// Two-node tunnel pairs (IPIP, VXLAN) receive through XDP on the uplink
    /// (`dataplane.uplink_xdp = true`).
    #[arg(long)]
    uplink_xdp: bool,
    /// The afxdp backend's receive chunks per pod port
    /// (`dataplane.afxdp_rx_chunks`; podrouterd's default if absent).
    #[arg(long)]
    afxdp_rx_chunks: Option<u32>,
    /// Microseconds podrouterd's workers keep polling after the last frame
    /// (`dataplane.busy_poll_us`; podrouterd's default if absent, and then
    /// not written, so an older podrouterd from --bin-dir still starts).
    #[arg(long)]
    busy_poll_us: Option<u32>,
    /// How far podrouterd's busy-polling window grows with steady traffic
    /// (`dataplane.busy_poll_max_us`; podrouterd's default if absent, and
    /// then not written, so an older podrouterd from --bin-dir still
    /// starts; 0 keeps the window fixed).
    #[arg(long)]
    busy_poll_max_us: Option<u32>,
    /// podrouterd's workers' scheduler slice in microseconds
    /// (`dataplane.worker_slice_us`; not written if absent).
    #[arg(long)]
    worker_slice_us: Option<u32>,
    /// podrouterd's workers' SCHED_FIFO priority
    /// (`dataplane.worker_rt_priority`; not written if absent).
    #[arg(long)]
    worker_rt_priority: Option<u32>,
    /// The kernel plane as Calico leaves a node: each pod's packets are
    /// forwarded on the CPU that sent them (no RPS). By default the kernel
    /// plane's host-side veths steer their receive to the data-plane CPU,
    /// so both planes forward on the same CPU; inline, the kernel keeps a
    /// lone flow on the pods' CPU and wakes no other CPU, which favours it
    /// in the latency and one-at-a-time connection rows.
    #[arg(long)]
    kernel_inline: bool,
    /// The guest's halt polling for the run (nanoseconds an idle CPU polls
    /// before it halts; the haltpoll cpuidle driver of a KVM guest, 0-
    /// 10000000): a CPU that halts at once wakes slowly, which every hop
    /// between the pods' CPU and the data-plane CPU pays. The machine's
    /// own value is put back when the harness ends.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    guest_halt_poll_ns: Option<u64>,
    /// With --guest-halt-poll-ns: keep the polling window at that limit
    /// (`guest_halt_poll_allow_shrink` N for the run). By default the
    /// governor halves it after every idle period longer than the limit,
    /// so with gaps between requests it rarely covers the waits inside
    /// one. The machine's own setting is put back when the harness ends.
    #[arg(long, requires = "guest_halt_poll_ns")]
    guest_halt_poll_fixed: bool,
    /// The pods' MTU in the one-node topologies, podrouterd's
    /// (`dataplane.mtu`), the kernel's and the bare-XSK probe's alike
    /// (default 1500). Two-node rows keep theirs (set by the underlay).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1500..=9000))]
    pod_mtu: Option<u16>,
    /// Runs per figure (at least 3 unless --smoke).
    #[arg(long)]
    repeats: Option<usize>,
    /// Seconds of each packet-rate and iperf3 measurement.
    #[arg(long)]
    secs: Option<f64>,
    /// Pods in the scale scenario.
    #[arg(long)]
    scale_pods: Option<usize>,
    /// Pods in the CNI scenario (and `--cni-parallel` at a time).
    #[arg(long)]
    cni_pods: Option<usize>,
    #[arg(long)]
    cni_parallel: Option<usize>,
    /// Extra CNI rows with this many pods already attached (comma-separated;
    /// default 100,1000, 4 with --smoke; 0 for none).
    #[arg(long, value_delimiter = ',')]
    cni_held: Option<Vec<usize>>,
    /// Services loaded in each round of the Services scenario, the
    /// measured one included (comma-separated; default 1,1000,10000).
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<u32>>,
    /// Routes GoBGP sends in the BGP convergence scenario (default 100000,
    /// 2000 with --smoke).
    #[arg(long)]
    bgp_routes: Option<usize>,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Two-node comparisons to run (comma-separated names: never, always,
    /// cross-subnet, vxlan-always, vxlan-always-1500, always-1500,
    /// never-1500); default: all of them (a few with --smoke).
    #[arg(long, value_delimiter = ',')]
    pairs: Vec<String>,
    /// podrouterd's `dataplane.workers` in every topology; workers after
    /// the first are pinned to the machine's other CPUs (on 2 CPUs: the
    /// generator's), and the kernel plane's RPS spreads over the same
    /// CPUs. Rows are labelled "workers N" when N is not 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Same-node and two-node rows without the UDP packet rates (TCP,
    /// CPU per GB and latency only): a quicker look at throughput.
    #[arg(long)]
    no_packet_rates: bool,
    /// Same-node and two-node rows with the request/response latency only
    /// (no packet rates, no TCP): the quickest look at the tail.
    #[arg(long)]
    latency_only: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Instead of the comparison: a soak of this many minutes (TCP between
    /// two pods, pings beside it, podrouterd's RSS sampled; soak.md).
    #[arg(long, value_name = "MINUTES", conflicts_with_all = ["smoke", "only", "json"])]
    soak: Option<f64>,
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__helper") {
        let kind = args.get(2).cloned().unwrap_or_default();
        return match helpers::main(&kind, &args[3.min(args.len())..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("podrouter-bench helper {kind}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.interrupted => {
            eprintln!("\npodrouter-bench: interrupted; everything it created has been removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\npodrouter-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// The CPUs this process may run on (`Cpus_allowed_list`).
fn allowed_cpus() -> Vec<usize> {
    let s = read("/proc/self/status");
    let list = s
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    cpus.push(a);
                }
            }
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

fn first_line_of(args: &[&str]) -> String {
    util::run_t(args, Duration::from_secs(10))
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The haltpoll cpuidle driver's limit: how long an idle CPU of a KVM
/// guest polls before it halts.
const GUEST_HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// Whether the haltpoll governor shrinks its polling window after an idle
/// period longer than `guest_halt_poll_ns` (Y, the default) or keeps it (N).
const GUEST_HALT_POLL_ALLOW_SHRINK: &str =
    "/sys/module/haltpoll/parameters/guest_halt_poll_allow_shrink";

/// A kernel parameter file set for the run: the machine's own value goes
/// back when this drops (the harness's end, also on Ctrl-C, SIGTERM or a
/// failure; not if it is killed outright).
struct ParamOverride {
    path: &'static str,
    original: String,
}

impl ParamOverride {
    /// Writes `value` to `path`; `flag` names the option in errors.
    fn set(path: &'static str, value: &str, flag: &str) -> Res<ParamOverride> {
        let original = fs::read_to_string(path).map_err(|e| {
            Error::msg(format!(
                "{flag}: cannot read {path} ({e}): it needs the haltpoll cpuidle driver of a KVM guest"
            ))
        })?;
        let original = original.trim().to_string();
        fs::write(path, value)
            .map_err(|e| Error::msg(format!("{flag}: cannot write {value} to {path}: {e}")))?;
        util::log(&format!(
            "{path} set to {value} for the run (the machine's {original} goes back at the end)"
        ));
        Ok(ParamOverride { path, original })
    }
}

impl Drop for ParamOverride {
    fn drop(&mut self) {
        if let Err(e) = fs::write(self.path, &self.original) {
            eprintln!(
                "podrouter-bench: could not put {} back to {}: {e}",
                self.path, self.original
            );
        }
    }
}

/// `--guest-halt-poll-ns` (and `--guest-halt-poll-fixed`) in force; each
/// parameter goes back to the machine's value when this drops.
struct HaltPollSetting {
    set: u64,
    limit: ParamOverride,
    /// `guest_halt_poll_allow_shrink` N, with `--guest-halt-poll-fixed`.
    fixed_window: Option<ParamOverride>,
}

impl HaltPollSetting {
    fn apply(ns: u64, fixed: bool) -> Res<HaltPollSetting> {
        let limit =
            ParamOverride::set(GUEST_HALT_POLL_NS, &ns.to_string(), "--guest-halt-poll-ns")?;
        // On an error `limit` drops here and puts the machine's value back.
        let fixed_window = fixed
            .then(|| {
                ParamOverride::set(GUEST_HALT_POLL_ALLOW_SHRINK, "N", "--guest-halt-poll-fixed")
            })
            .transpose()?;
        Ok(HaltPollSetting {
            set: ns,
            limit,
            fixed_window,
        })
    }

    fn describe(&self) -> String {
        let fixed = match &self.fixed_window {
            Some(w) => format!(
                "; --guest-halt-poll-fixed: the window kept at that limit \
                 (guest_halt_poll_allow_shrink N; the machine's {} put back after)",
                w.original
            ),
            None => String::new(),
        };
        format!(
            "--guest-halt-poll-ns {}: idle CPUs polled up to {} µs before halting during the run \
             (the machine's own guest_halt_poll_ns, {}, put back after){fixed}",
            self.set,
            self.set as f64 / 1e3,
            self.limit.original
        )
    }
}

/// How long this machine takes to wake a sleeping thread on another CPU:
/// two threads, pinned to `a` and `b`, pass one byte back and forth over a
/// socket pair, each blocked in `read` until the other writes. The median
/// round trip of `round_trips` (two wake-ups each), measured in threads of
/// their own so the caller's CPU affinity stays as it is.
fn wake_up_round_trip(a: usize, b: usize, round_trips: usize) -> io::Result<Duration> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;
    let measure = || -> io::Result<Duration> {
        let (mut here, mut there) = UnixStream::pair()?;
        let echo = std::thread::spawn(move || -> io::Result<()> {
            sys::pin_to_cpu(b)?;
            let mut byte = [0u8; 1];
            loop {
                if there.read(&mut byte)? == 0 {
                    return Ok(());
                }
                there.write_all(&byte)?;
            }
        });
        sys::pin_to_cpu(a)?;
        let mut byte = [0u8; 1];
        let mut rtts = Vec::with_capacity(round_trips);
        for _ in 0..round_trips.max(1) {
            let t0 = Instant::now();
            here.write_all(&byte)?;
            here.read_exact(&mut byte)?;
            rtts.push(t0.elapsed());
        }
        drop(here);
        echo.join()
            .map_err(|_| io::Error::other("the echo thread panicked"))??;
        rtts.sort();
        Ok(rtts[rtts.len() / 2])
    };
    std::thread::scope(|s| s.spawn(measure).join())
        .map_err(|_| io::Error::other("the wake-up probe panicked"))?
}

/// The report's `wake-ups` line: [`wake_up_round_trip`] between the
/// data-plane CPU `a` and the pods' CPU `b`, and how the CPUs idle. Every
/// hop of a packet between the two that finds the other side asleep pays
/// one such wake-up; on a virtual machine whose idle CPUs halt at once it
/// is tens of microseconds.
fn cross_cpu_wake_up(a: usize, b: usize) -> String {
    const ROUND_TRIPS: usize = 2000;
    let idle = {
        let driver = read("/sys/devices/system/cpu/cpuidle/current_driver");
        let poll = read(GUEST_HALT_POLL_NS);
        let window = match read(GUEST_HALT_POLL_ALLOW_SHRINK).trim() {
            "N" => " (window fixed: guest_halt_poll_allow_shrink N)",
            _ => "",
        };
        match (driver.trim(), poll.trim()) {
            ("", _) => String::new(),
            (d, "") => format!("; cpuidle driver {d}"),
            (d, p) => format!("; cpuidle driver {d}, guest_halt_poll_ns {p}{window}"),
        }
    };
    match wake_up_round_trip(a, b, ROUND_TRIPS) {
        Ok(rtt) => format!(
            "a thread asleep on CPU {b} woken from CPU {a} and back: {:.1} µs round trip (median of {ROUND_TRIPS}){idle}",
            rtt.as_secs_f64() * 1e6
        ),
        Err(e) => format!("cross-CPU wake-up not measured: {e}{idle}"),
    }
}

/// The machine the run is on; `pods_cpu` and `dp_cpu` are where the pods and
/// the data plane run (the same CPU on a one-CPU machine).
fn machine(bin_dir: &Path, cpus: usize, pods_cpu: usize, dp_cpu: usize) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let mut virt = if util::have_command("systemd-detect-virt") {
        first_line_of(&["systemd-detect-virt"])
    } else {
        String::new()
    };
    if (virt.is_empty() || virt == "none") && cpuinfo.contains(" hypervisor") {
        virt = "virtual machine".into();
    }
    if virt == "none" {
        virt.clear();
    } else if !virt.is_empty() && virt != "virtual machine" {
        virt = format!("virtual machine: {virt}");
    }
    let d = bin_dir.join("podrouterd");
    Machine {
        cpu_model,
        cpus,
        memory_gib: mem_kb / 1024.0 / 1024.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        os,
        podrouterd: first_line_of(&[&d.to_string_lossy(), "--version"]),
        iperf3: first_line_of(&["iperf3", "--version"]),
        virtualization: virt,
        source: source_tree(),
        wake_up: if pods_cpu == dp_cpu {
            String::new()
        } else {
            cross_cpu_wake_up(dp_cpu, pods_cpu)
        },
    }
}

/// `git <commit>[ + uncommitted changes]` of the workspace this harness was
/// built from, when that checkout is still there.
fn source_tree() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join(".git").exists() || !util::have_command("git") {
        return String::new();
    }
    let r = root.to_string_lossy();
    let commit = first_line_of(&["git", "-C", &r, "rev-parse", "--short", "HEAD"]);
    if commit.is_empty() || commit.contains(' ') {
        return String::new();
    }
    let dirty = util::run_t(
        &[
            "git",
            "-C",
            &r,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
        Duration::from_secs(10),
    )
    .map(|o| !o.stdout.trim().is_empty())
    .unwrap_or(false);
    format!(
        "built from git {commit}{}",
        if dirty { " + uncommitted changes" } else { "" }
    )
}

fn date_utc() -> String {
    first_line_of(&["date", "-u", "+%Y-%m-%d %H:%M"])
}

fn preflight(bin_dir: &Path) -> Res<()> {
    let mut why = Vec::new();
    if !util::is_root() {
        why.push("run it as root (it creates network namespaces and TAP devices)".to_string());
    }
    for tool in ["ip", "iperf3", "ping", "bridge", "sh", "sysctl"] {
        if !util::have_command(tool) {
            why.push(format!(
                "`{tool}` not found (scripts/install-deps.sh installs it)"
            ));
        }
    }
    for b in ["podrouterd"] {
        if !bin_dir.join(b).is_file() {
            why.push(format!(
                "{} not found: build with `cargo build --release --workspace --bins` or pass --bin-dir",
                bin_dir.join(b).display()
            ));
        }
    }
    if !why.is_empty() {
        return Err(Error::msg(format!("cannot run:\n  {}", why.join("\n  "))));
    }
    Ok(())
}

/// Refuses a `--pod-mtu` the backend cannot carry, before any topology is
/// made (podrouterd would refuse it at start too, less plainly).
fn check_pod_mtu(backend: &str, mtu: u16) -> Res<()> {
    let max = podrouter_router::afxdp::MAX_POD_MTU;
    if backend == "afxdp" && mtu > max {
        return Err(Error::msg(format!(
            "--pod-mtu {mtu}: the afxdp backend carries pod MTUs up to {max}"
        )));
    }
    Ok(())
}

/// Runs everything; `Ok(false)` when some figure failed for a reason other
/// than a known missing feature.
fn run(cli: &Cli) -> Res<bool> {
    let self_exe = std::env::current_exe()?;
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => self_exe
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    preflight(&bin_dir)?;
    util::install_signal_handlers()?;
    fs::create_dir_all(&cli.out)
        .map_err(|e| Error::msg(format!("cannot create {}: {e}", cli.out.display())))?;
    let out_dir = fs::canonicalize(&cli.out)?;
    util::open_log(&out_dir.join("podrouter-bench.log"))?;
    util::sweep_stale_namespaces();
    let halt_poll = cli
        .guest_halt_poll_ns
        .map(|ns| HaltPollSetting::apply(ns, cli.guest_halt_poll_fixed))
        .transpose()?;

    if let Some(minutes) = cli.soak {
        if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
            return Err(Error::msg("--soak takes minutes between 0 and 1440"));
        }
        let cpus = allowed_cpus();
        let opts = PlaneOpts {
            bin_dir: bin_dir.clone(),
            backend: cli.backend.clone(),
            dp_cpu: *cpus.get(1).unwrap_or(&cpus[0]),
            dp_cpu_node2: *cpus.get(1).unwrap_or(&cpus[0]),
            mtu: 1500,
            workers: 1,
            spare_cpus: Vec::new(),
            uplink_xdp: cli.uplink_xdp,
            afxdp_rx_chunks: cli.afxdp_rx_chunks,
            busy_poll_us: cli.busy_poll_us,
            busy_poll_max_us: cli.busy_poll_max_us,
            worker_slice_us: cli.worker_slice_us,
            worker_rt_priority: cli.worker_rt_priority,
            kernel_inline: cli.kernel_inline,
        };
        return soak::run(&opts, cpus[0], minutes, &out_dir);
    }

    let mut p = if cli.smoke {
        Params::smoke()
    } else {
        Params::full()
    };
    p.inline_kernel_rows = !cli.kernel_inline;
    if let Some(r) = cli.repeats {
        if r < 3 && !cli.smoke {
            return Err(Error::msg(
                "--repeats must be at least 3 (medians and spreads need them); use --smoke for a quick check",
            ));
        }
        p.repeats = r.max(1);
    }
    if let Some(s) = cli.secs {
        p.secs = s.max(0.2);
    }
    if let Some(n) = cli.scale_pods {
        p.scale_pods = n.clamp(2, 1000);
    }
    if let Some(n) = cli.cni_pods {
        p.cni_pods = n.clamp(1, 1000);
    }
    if let Some(n) = cli.cni_parallel {
        p.cni_parallel = n.max(1);
    }
    if let Some(n) = &cli.services {
        p.service_counts = n.iter().map(|&n| n.max(1)).collect();
    }
    if let Some(h) = &cli.cni_held {
        p.cni_held = h.iter().filter(|&&n| n > 0).map(|&n| n.min(1000)).collect();
    }
    if let Some(n) = cli.bgp_routes {
        if n == 0 || n > bgp::MAX_ROUTES {
            return Err(Error::msg(format!(
                "--bgp-routes must be between 1 and {} (the table is the /26 blocks of the pool 8.0.0.0/6)",
                bgp::MAX_ROUTES
            )));
        }
        p.bgp_routes = n;
    }
    if cli.no_packet_rates || cli.latency_only {
        p.sizes.clear();
        p.two_node_sizes.clear();
    }
    if cli.latency_only {
        p.streams.clear();
    }
    if !cli.pairs.is_empty() {
        let all = scenarios::TwoNodePair::ALL;
        let mut chosen = Vec::new();
        for name in &cli.pairs {
            match all.iter().find(|p| p.name() == *name) {
                Some(p) => chosen.push(*p),
                None => {
                    let names: Vec<String> = all.iter().map(|p| p.name()).collect();
                    return Err(Error::msg(format!(
                        "--pairs: no two-node comparison {name:?} (there are: {})",
                        names.join(", ")
                    )));
                }
            }
        }
        p.two_node_pairs = chosen;
    }
    let scen: Vec<Scenario> = if cli.only.is_empty() {
        vec![
            Scenario::SameNode,
            Scenario::TwoNode,
            Scenario::Cni,
            Scenario::Scale,
            Scenario::BgpConvergence,
            Scenario::Services,
            Scenario::Policy,
            Scenario::Flood,
            Scenario::Taps,
        ]
    } else {
        let mut s = cli.only.clone();
        // Same node first: the scale rows compare against its 2-pod figure.
        s.sort_by_key(|x| *x as u8);
        s.dedup();
        s
    };

    let pod_mtu = cli.pod_mtu.unwrap_or(1500);
    check_pod_mtu(&cli.backend, pod_mtu)?;
    let cpus = allowed_cpus();
    let gen_cpu = cpus[0];
    let dp_cpu = *cpus.get(1).unwrap_or(&cpus[0]);
    let dp_cpu_node2 = *cpus.get(2).unwrap_or(&dp_cpu);
    let mut pinning = Vec::new();
    if cpus.len() >= 2 {
        pinning.push(format!(
            "traffic generator, iperf3 client and server, latency client and echo server on CPU {gen_cpu}; \
             podrouterd's worker (`dataplane.cores = [{dp_cpu}]`) on CPU {dp_cpu}; {kernel}; podrouterd's own \
             threads (control, API) on the CPUs but the workers' (podrouterd does that itself since 779b276), the \
             harness and the CNI plugins unpinned",
            kernel = if cli.kernel_inline {
                format!(
                    "the kernel's forwarding inline on the sending CPU, as Calico leaves a node \
                     (--kernel-inline: no RPS; a pod's packets are forwarded on CPU {gen_cpu} with the pods)"
                )
            } else {
                format!("the kernel's forwarding (RPS of the host-side veths to CPU {dp_cpu}) on CPU {dp_cpu}")
            }
        ));
    } else {
        pinning.push(format!(
            "only one CPU ({gen_cpu}): the generator and the data plane had to share it, \
             so every figure understates what either could do alone"
        ));
    }
    if cli.workers > 1 {
        pinning.push(format!(
            "--workers {}: podrouterd's workers on CPU {dp_cpu} then the other CPUs in order \
             ({} allowed; workers beyond them unpinned), so they share CPU {gen_cpu} with the \
             traffic generator and iperf3; the kernel plane's RPS spreads over the same CPUs",
            cli.workers,
            cpus.len()
        ));
    }
    if scen.contains(&Scenario::TwoNode) {
        if dp_cpu_node2 == dp_cpu {
            pinning.push(format!(
                "two nodes: both nodes' data planes had to share CPU {dp_cpu} (a CPU per node needs 3 CPUs)"
            ));
        } else {
            pinning.push(format!(
                "two nodes: node 1's data plane on CPU {dp_cpu}, node 2's on CPU {dp_cpu_node2}"
            ));
        }
    }
    if let Some(h) = &halt_poll {
        pinning.push(h.describe());
    }
    let mach = machine(&bin_dir, cpus.len(), gen_cpu, dp_cpu);
    let command = {
        let a: Vec<String> = std::env::args().collect();
        let mut c = String::new();
        if std::env::var_os("SUDO_USER").is_some() {
            c.push_str("sudo ");
        }
        c.push_str(&util::show(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        c
    };
    let total = scenarios::planned_steps(&p, &scen);
    let mut ctx = Ctx {
        p: p.clone(),
        opts: PlaneOpts {
            bin_dir: bin_dir.clone(),
            backend: cli.backend.clone(),
            dp_cpu,
            dp_cpu_node2,
            mtu: pod_mtu,
            workers: usize::from(cli.workers),
            spare_cpus: cpus.iter().copied().filter(|&c| c != dp_cpu).collect(),
            uplink_xdp: cli.uplink_xdp,
            afxdp_rx_chunks: cli.afxdp_rx_chunks,
            busy_poll_us: cli.busy_poll_us,
            busy_poll_max_us: cli.busy_poll_max_us,
            worker_slice_us: cli.worker_slice_us,
            worker_rt_priority: cli.worker_rt_priority,
            kernel_inline: cli.kernel_inline,
        },
        gen_cpu,
        self_exe,
        cni_dir: cli.cni_plugin_dir.clone(),
        out_dir: out_dir.clone(),
        progress: Progress::new(total, cli.quiet),
        rows: Vec::new(),
        runs: Vec::new(),
        notes: Vec::new(),
        failures: Vec::new(),
        plots: Vec::new(),
        two_pod_64: [None, None],
        rate_plot: Vec::new(),
        cdf_plot: Vec::new(),
        busy: Vec::new(),
    };
    let what_ran: Vec<&str> = scen
        .iter()
        .map(|s| match s {
            Scenario::SameNode => "same-node",
            Scenario::Scale => "scale",
            Scenario::TwoNode => "two-node",
            Scenario::Cni => "cni",
            Scenario::BgpConvergence => "bgp-convergence",
            Scenario::Services => "services",
            Scenario::Policy => "policy",
            Scenario::Flood => "flood",
            Scenario::Taps => "taps",
        })
        .collect();
    eprintln!(
        "podrouter-bench{}: scenarios {}; {} run(s) per figure, {} s per traffic run, sizes {:?} B, \
         scale {} pods, CNI {} pods ({} in parallel), BGP {} routes; output in {}",
        if p.smoke { " --smoke" } else { "" },
        what_ran.join(", "),
        p.repeats,
        p.secs,
        p.sizes,
        p.scale_pods,
        p.cni_pods,
        p.cni_parallel,
        p.bgp_routes,
        out_dir.display()
    );
    eprintln!("machine: {}", mach.describe());
    if !mach.wake_up.is_empty() {
        eprintln!("wake-ups: {}", mach.wake_up);
    }
    for l in &pinning {
        eprintln!("pinning: {l}");
    }

    let date = date_utc();
    for s in &scen {
        let r = match s {
            Scenario::SameNode => scenarios::same_node(&mut ctx),
            Scenario::Scale => scenarios::scale(&mut ctx),
            Scenario::TwoNode => scenarios::two_node(&mut ctx),
            Scenario::Cni => scenarios::cni(&mut ctx),
            Scenario::BgpConvergence => bgp::bgp_convergence(&mut ctx),
            Scenario::Services => scenarios::services(&mut ctx),
            Scenario::Policy => scenarios::policy(&mut ctx),
            Scenario::Flood => flood::flood(&mut ctx),
            Scenario::Taps => taps::taps(&mut ctx),
        };
        if let Err(e) = r {
            ctx.progress.finish();
            return Err(e);
        }
    }
    ctx.progress.finish();

    // Plots.
    if !ctx.rate_plot.is_empty() {
        let groups: Vec<String> = p.sizes.iter().map(|s| format!("{s} B frames")).collect();
        let series: Vec<(&str, Vec<report::Cell>)> = ctx
            .rate_plot
            .iter()
            .map(|(n, c)| (n.as_str(), c.clone()))
            .collect();
        let svg = report::bars_svg(
            "Same node, pod to pod: UDP packet rate (median, min-max)",
            "Mpps",
            &groups,
            &series,
        );
        fs::write(out_dir.join("packet-rate.svg"), svg)?;
        ctx.plots.push("packet-rate.svg".into());
    }
    if !ctx.cdf_plot.is_empty() {
        let series: Vec<(&str, Vec<f64>)> = ctx
            .cdf_plot
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        let svg = report::cdf_svg(
            &format!(
                "Same node: UDP request/response latency CDF ({} /s, all runs)",
                p.rr_rate
            ),
            &series,
        );
        fs::write(out_dir.join("latency-cdf.svg"), svg)?;
        ctx.plots.push("latency-cdf.svg".into());
    }

    let mut method = Vec::new();
    let traffic = [
        Scenario::SameNode,
        Scenario::TwoNode,
        Scenario::Scale,
        Scenario::Services,
        Scenario::Policy,
        Scenario::Flood,
        Scenario::Taps,
    ];
    if scen.iter().any(|s| traffic.contains(s)) {
        method.extend([
            "kernel data plane: Calico's wiring: a veth pair per pod (host side `caliN` with MAC \
             ee:ee:ee:ee:ee:ee, proxy_arp=1, rp_filter=1, a /32 route and a permanent neighbour entry \
             for the pod; pod side `eth0` with the /32, `169.254.1.1 dev eth0 scope link`, default \
             via it and a permanent neighbour entry for it); podrouter: the same pod addressing on a \
             TAP attached through podrouterd's API"
                .to_string(),
            "packet rate: the harness's AF_PACKET generator (sendmmsg of 64-frame batches, \
             PACKET_QDISC_BYPASS) sends one UDP flow from pod A's eth0 to pod B; frame sizes count the \
             4-byte FCS that veth and TAP do not carry (a 64 B frame is a 46 B IP packet); received \
             packets are pod B's eth0 rx_packets over the measured window, after a warm-up; the rate \
             the generator offered is in report.json (and a note appears if it was not well above the \
             received rate)"
                .to_string(),
            "TCP: iperf3 client in pod A, server in pod B, receiver's figure".to_string(),
            format!(
                "latency: the harness's UDP request/response client sends {} requests/s for {} s \
                 (32-byte requests, 200 ms timeout) to its echo server in pod B; percentiles from an \
                 HdrHistogram per run",
                p.rr_rate, p.rr_secs
            ),
            "CPU: podrouterd's utime+stime from /proc/<pid>/stat (all threads, including softirq work \
             that ran in them); the kernel's softirq time summed over all CPUs from /proc/stat; the \
             data-plane CPU's non-idle time from /proc/stat; all tick-based (USER_HZ)"
                .to_string(),
        ]);
    }
    if scen.contains(&Scenario::Cni) {
        method.push(format!(
            "CNI: a driver in the node namespace runs the plugin as a runtime does (env + stdin) \
                 for ADD of every pod, then DEL of every pod, timing each invocation from fork to \
                 exit; podrouter-cni (TAP and address from podrouterd) against Debian's ptp + \
                 host-local (veth, addresses in host-local files), {} pods; the rows \"already \
                 attached\" first attach that many other pods (20 at a time, not timed) and detach \
                 them after",
            p.cni_pods
        ));
    }
    if scen.contains(&Scenario::TwoNode) {
        method.push(format!(
            "two nodes: every underlay link has MTU {u} and every pod MTU {pm}, so 1500-byte \
             frames fit IPIP (+20) and VXLAN (+50) alike (rows marked \"underlay MTU {su}\": \
             links of {su} and pods of 1480 for IPIP, 1450 for VXLAN in both planes, 1500 \
             routed directly); one subnet = node namespaces joined \
             by a veth pair (192.168.100.1/24, .2/24); two subnets = node 1 in 192.168.101.0/24 \
             and node 2 in 192.168.102.0/24 joined by a router namespace (the kernel forwarding \
             between two veth pairs, .254 in each subnet, no pod routes); kernel plain routing \
             = a route to the other node's block via its address (Calico's IPIP \"never\"); \
             kernel VXLAN = Flannel's wiring (`flannel.1`, VNI 1, port 8472, static FDB and \
             neighbour entries, device MTU {v}), the kernel's only tunnel here (no IPIP module); \
             podrouter = `uplink`, `encap` and `tunnel` in podrouterd's config (VXLAN: Calico's \
             profile, VNI 4096, UDP 4789) with a static route to the other block (\"cross-subnet\" encapsulates because the other node is outside the \
             uplink's subnet); the router's forwarding is kernel softirq in both planes, so the \
             softirq row of the kernel plane includes it and podrouterd's process row does not",
            u = topo::UNDERLAY_MTU,
            su = topo::SMALL_UNDERLAY_MTU,
            pm = topo::TWO_NODE_POD_MTU,
            v = topo::VXLAN_MTU,
        ));
    }
    if scen.contains(&Scenario::Policy) {
        method.push(
            "network policy: two pods on one node, both selected by one NetworkPolicy (ingress) \
             whose N rules each allow one /32 outside the pod network on one TCP port, and a last \
             rule that allows the measured client pod (so the matching rule is the last one); the \
             kernel plane gets the same rules as one iptables chain jumped to from FORWARD for \
             every packet out of a pod interface (`-o cali+`), Calico-style: conntrack \
             RELATED,ESTABLISHED accepted first, then the N rules, then the client, then DROP \
             (iptables-restore); 0 rules: no policy and no chain in either plane. Packet rate: \
             the generator above (one UDP flow, established after its first packet); connections: \
             the Services scenario's TCP client and server, one connection at a time"
                .to_string(),
        );
    }
    if scen.contains(&Scenario::Flood) {
        method.push(format!(
            "flood: three pods on one node in each plane; the latency client above from pod 0 to \
             an echo server in pod 1, once on a quiet node and once while pod 2 sends {:.0} \
             frames/s in all from three AF_PACKET sockets in turn (the `flood` helper, paced, on \
             the generator's CPU): broadcast ARP requests for 169.254.1.1, UDP to a free address \
             of the pod block (10.244.3.250) and UDP with TTL 1 to pod 1; the frames each plane \
             answered or dropped are in report.json",
            p.flood_pps
        ));
    }
    if scen.contains(&Scenario::Services) {
        method.push(format!(
            "Services: one node with a client pod and two backend pods, and in the node's kernel \
             the nat rules kube-proxy's iptables mode writes for ClusterIP {} (UDP {} and TCP {}, \
             each DNAT to either backend with `-m statistic --mode random --probability 0.5`, \
             masquerade for non-pod sources and hairpins) loaded with iptables-restore, and \
             ip_forward=1; both planes get the same rules. Latency: the request/response client \
             above, to the ClusterIP (one UDP flow per run, so one backend per run, answered by \
             echo servers in both). Connections: the harness's TCP client opens connections to \
             the ClusterIP one after the other for {} s (connect, read the server's one byte to \
             the end of stream, close with a RST after the server's FIN, so no TIME_WAIT \
             is left and ports are reused at once), servers in both backends; for \
             reference the same client to one backend's own address. The built-in balancer's \
             rows: podrouterd with the same Service given through `service apply` and no \
             iptables rule, against the kernel with kube-proxy's rules, alternated. Rounds \
             with {} Services: the measured one and N-1 others of one TCP port and two \
             endpoints each (in kube-proxy's shape: KUBE-SVC-* chains with statistic jumps, \
             KUBE-SEP-* chains with DNAT and the hairpin mark; in one `service apply` for the \
             built-in plane); kube-proxy orders KUBE-SERVICES by Go map iteration, random at \
             every sync, so the measured Service's rules sit halfway down the chain. A new \
             connection's first packet walks the chain up to its rule (kernel plane, and \
             podrouter's trip through the node); in the kernel plane a connection to a pod's \
             own address walks all of it, podrouter's pod-to-pod path never meets the node's \
             nat table",
            topo::CLUSTER_IP,
            helpers::ECHO_PORT,
            helpers::CONN_PORT,
            p.secs,
            p.service_counts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if scen.contains(&Scenario::BgpConvergence) {
        method.push(format!(
            "BGP convergence: GoBGP (AS 64513) first learns {n} /26 blocks of the pool \
             8.0.0.0/6 from a source BIRD; then podrouterd (`kernel_routes = \"per-pool\"`), \
             podrouterd with per-block kernel routes, BIRD 2 with a kernel protocol exporting \
             what it learns (as Calico's BIRD) and BIRD 2 with its RIB only (all AS 64512, eBGP \
             to the sender, on one bridge) take turns as the receiver, each started fresh per \
             run. Installed means the host and the pods can reach every learned block: \
             podrouterd, in its FIB and, in the node kernel, the pool's one route into the \
             router (every block here is tunnelled, so the kernel needs no route per block; \
             the per-block rows wait for a kernel route per block as well); BIRD, in its RIB \
             and, through the kernel protocol, a kernel route per block (the kernel is a \
             Calico node's data plane); the RIB-only rows compare podrouterd's FIB with \
             BIRD's RIB. The clock starts at the \
             receiver's own Established timestamp (podrouterd's API `bgp_peers` \
             `established_unix_ms`, BIRD's `show protocols` time) and stops at the first \
             poll that sees the table in: every 2 ms the harness asks the receiver for its \
             count over one control socket connection kept open (`bgp_rib` with limit 0: \
             `installed`; BIRD's `show protocols all up`: imported), then reads the kernel's \
             route count of the receiver's namespace (`/proc/PID/net/fib_triestat`, every \
             2 ms or twice a read's cost) the same way for both, and tells learned routes \
             from the receiver's own with one route dump at the end. The rounds run once \
             with GoBGP sending and once with the source BIRD sending (its own sessions to \
             the receivers); each sender's row is its CPU time over the same interval: when \
             it is about the elapsed time, the sender bounds the figure",
            n = p.bgp_routes
        ));
    }
    let mut notes = std::mem::take(&mut ctx.notes);
    notes.dedup();
    let busy_runs = ctx.busy.iter().filter(|b| **b >= scenarios::BUSY).count();
    if busy_runs > 0 {
        notes.insert(
            0,
            format!(
                "{busy_runs} of {} measured runs started while other processes kept the \
                 machine more than {:.0}% busy (up to {:.0}%) after waiting for it to calm \
                 down: those figures are disturbed (per-run detail in report.json and the log)",
                ctx.busy.len(),
                scenarios::BUSY * 100.0,
                ctx.busy.iter().fold(0.0f64, |a, b| a.max(*b)) * 100.0
            ),
        );
    }
    let ok = ctx.failures.is_empty();
    if !ok {
        notes.push(format!(
            "{} measurement(s) failed (see podrouter-bench.log): {}",
            ctx.failures.len(),
            ctx.failures
                .iter()
                .map(|f| f.lines().next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let rep = Report {
        command,
        date_utc: date,
        smoke: p.smoke,
        repeats: p.repeats,
        machine: mach,
        pinning,
        method,
        notes,
        rows: std::mem::take(&mut ctx.rows),
        runs: std::mem::take(&mut ctx.runs),
        plots: ctx.plots.clone(),
        out_dir: cli.out.display().to_string(),
        total_secs: ctx.progress.elapsed().as_secs_f64(),
    };
    let md = rep.markdown();
    let js = serde_json::to_string_pretty(&rep)?;
    fs::write(out_dir.join("report.md"), &md)?;
    fs::write(out_dir.join("report.json"), &js)?;
    if cli.json {
        println!("{js}");
    } else {
        println!("{md}");
    }
    eprintln!(
        "podrouter-bench: wrote {}/report.md, report.json{} and podrouter-bench.log",
        out_dir.display(),
        if rep.plots.is_empty() {
            ""
        } else {
            ", the SVG plots"
        }
    );
    if p.smoke {
        eprintln!(
            "smoke run: ran {} ({} rows, {} failed measurement(s))",
            what_ran.join(", "),
            rep.rows.len(),
            ctx.failures.len()
        );
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wake_up_probe_measures_a_round_trip_and_leaves_the_callers_cpus_alone() {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            eprintln!("skipped: one CPU allowed ({cpus:?}), no cross-CPU wake-up to measure");
            return;
        }
        let before = read("/proc/thread-self/status");
        let affinity = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .map(str::to_string)
        };
        let rtt = wake_up_round_trip(cpus[1], cpus[0], 50).expect("probe");
        assert!(
            rtt > Duration::ZERO && rtt < Duration::from_secs(1),
            "round trip {rtt:?}"
        );
        assert_eq!(
            affinity(&read("/proc/thread-self/status")),
            affinity(&before),
            "the probe pinned the calling thread"
        );
        let line = cross_cpu_wake_up(cpus[1], cpus[0]);
        assert!(line.contains("µs round trip"), "{line}");
    }
}
