//! The BGP convergence scenario (issue 5's benchmark): the time from a BGP
//! session reaching Established to N learned routes installed, podrouterd
//! (in its FIB) against BIRD 2 (in its RIB), both learning the same table
//! from the same GoBGP peer in the same run.
//!
//! This module owns that scenario's lab and its rows:
//!
//! - **Lab**: five network namespaces on one bridge (10.210.0.0/24, in a
//!   switch namespace): the receiver node for podrouterd (.1, AS 64512),
//!   one for BIRD (.2, AS 64512), GoBGP (.3, AS 64513) and a "source" BIRD
//!   (.4, AS 65000) holding N static /24s from 11.0.0.0 up. GoBGP learns
//!   the table from the source before any measured session exists (`gobgp
//!   mrt inject` 3.10 drops the tail of large dumps, so the table comes over
//!   BGP), and serves it to both receivers over eBGP.
//! - **Rounds**: the receivers take turns, so they never compete for CPUs:
//!   per repeat podrouterd, then BIRD, each started fresh (podrouterd with
//!   an empty state directory). Every 2 ms ([`POLL`]) the harness asks the
//!   receiver for its session state (API `bgp_peers`, BIRD's `show
//!   protocols`) and, once Established, for its count (API `bgp_rib` with
//!   limit 0: `installed`; BIRD's `show route protocol up count`: BGP
//!   routes only), over their control sockets directly ([`BirdCtl`],
//!   `podrouter_api::Client`), not by starting `podrouterctl`/`birdc`
//!   (5-10 ms each here). The clock starts at the first poll that sees
//!   Established and stops at the first that sees N routes.
//!
//! Dropping the lab stops its daemons (by pid), then deletes its
//! namespaces and its temporary directory.
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::bail;
use crate::report::{Cell, Row};
use crate::scenarios::{first_line, quiesce, Ctx, Params, BUSY};
use crate::util::{self, ip_batch, NetnsGroup, Proc, Res, TempDir};

/// How often the receiver is asked for its state and count: well under
/// the figure measured (hundreds of ms for 100,000 routes). The asking is
/// cheap on both sides: podrouterd's API over its socket (no process
/// started; a `bgp rib` with limit 0 costs the BGP thread O(1)), BIRD's
/// control socket kept open (what `birdc` speaks).
const POLL: Duration = Duration::from_millis(2);
/// The receivers' AS (as Calico's default node AS).
const RECEIVER_AS: u32 = 64512;
const GOBGP_AS: u32 = 64513;
const SOURCE_AS: u32 = 65000;
/// The lab's members: namespace suffix and address on the bridge.
const MEMBERS: [(&str, Ipv4Addr); 4] = [
    ("node", Ipv4Addr::new(10, 210, 0, 1)),
    ("bird", Ipv4Addr::new(10, 210, 0, 2)),
    ("gobgp", Ipv4Addr::new(10, 210, 0, 3)),
    ("src", Ipv4Addr::new(10, 210, 0, 4)),
];
const NODE: usize = 0;
const BIRD: usize = 1;
const GOBGP: usize = 2;
const SRC: usize = 3;
/// External tools and the Debian package that has each.
const TOOLS: [(&str, &str); 4] = [
    ("bird", "bird2"),
    ("birdc", "bird2"),
    ("gobgpd", "gobgpd"),
    ("gobgp", "gobgpd"),
];

/// Progress steps of the scenario.
pub fn planned_steps(p: &Params) -> usize {
    1 + 2 * p.repeats + 1
}

/// The address of route `i` of the table: /24s from 11.0.0.0 up.
fn route(i: usize) -> Ipv4Addr {
    Ipv4Addr::from((11u32 << 24) + ((i as u32) << 8))
}

/// The most routes the table can hold (11.0.0.0 up to 126.255.255.0/24,
/// staying out of 127/8).
pub const MAX_ROUTES: usize = (127 - 11) << 16;

/// Everything the scenario built; fields drop in declaration order.
struct Lab {
    gobgpd: Option<Proc>,
    source: Option<Proc>,
    ns: NetnsGroup,
    dir: TempDir,
}

impl Lab {
    fn ns(&self, member: usize) -> &str {
        &self.ns.names()[member + 1]
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn gobgp(&self, args: &[&str]) -> Res<util::Out> {
        let mut a = vec![
            "ip",
            "netns",
            "exec",
            self.ns(GOBGP),
            "gobgp",
            "-u",
            "127.0.0.1",
            "-p",
            "50051",
        ];
        a.extend_from_slice(args);
        util::run_t(&a, Duration::from_secs(10))
    }
}

fn log_tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The source BIRD's configuration: `n` static routes exported to GoBGP.
fn source_conf(n: usize) -> String {
    let mut s = format!(
        "router id {src};\n\
         protocol device {{ scan time 10; }}\n\
         protocol direct {{ ipv4; interface \"eth0\"; }}\n\
         protocol static bulk {{\n  ipv4;\n",
        src = MEMBERS[SRC].1
    );
    for i in 0..n {
        let _ = writeln!(s, "  route {}/24 blackhole;", route(i));
    }
    let _ = write!(
        s,
        "}}\n\
         protocol bgp feed {{ local as {SOURCE_AS}; neighbor {} as {GOBGP_AS};\n  \
         connect delay time 1; ipv4 {{ import none; export where proto = \"bulk\"; }}; }}\n",
        MEMBERS[GOBGP].1
    );
    s
}

fn gobgp_conf() -> String {
    let mut s = format!(
        "[global.config]\n  as = {GOBGP_AS}\n  router-id = \"{}\"\n",
        MEMBERS[GOBGP].1
    );
    for (addr, asn) in [
        (MEMBERS[SRC].1, SOURCE_AS),
        (MEMBERS[NODE].1, RECEIVER_AS),
        (MEMBERS[BIRD].1, RECEIVER_AS),
    ] {
        // Short timers: a receiver that comes back for its next round is
        // accepted at once instead of after GoBGP's 30 s idle hold.
        let _ = write!(
            s,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    \
             peer-as = {asn}\n  [neighbors.timers.config]\n    connect-retry = 1\n    \
             idle-hold-time-after-reset = 1\n  [[neighbors.afi-safis]]\n    \
             [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n"
        );
    }
    s
}

/// The receiver's config. The bulk routes (11.0.0.0/24 up to
/// 126.255.255.0/24) lie outside the default import pools (`pod_cidrs`
/// widened to /16), so it declares them: 0.0.0.0/1.
fn podrouterd_conf(lab: &Lab) -> String {
    format!(
        "# written by podrouter-bench\n\
         node_name = \"bench-bgp\"\n\
         node_ip = \"{node}\"\n\
         pod_cidrs = [\"10.244.1.0/26\"]\n\
         api_socket = \"{}\"\n\
         state_dir = \"{}\"\n\
         log_level = \"warn\"\n\
         \n\
         [dataplane]\n\
         host_port = \"prbench0\"\n\
         \n\
         [bgp]\n\
         asn = {RECEIVER_AS}\n\
         connect_retry = 1\n\
         graceful_restart = false\n\
         import_pools = [\"0.0.0.0/1\"]\n\
         \n\
         [[bgp.peers]]\n\
         address = \"{gobgp}\"\n\
         asn = {GOBGP_AS}\n",
        lab.path("api.sock").display(),
        lab.path("state").display(),
        node = MEMBERS[NODE].1,
        gobgp = MEMBERS[GOBGP].1,
    )
}

fn bird_conf() -> String {
    format!(
        "router id {bird};\n\
         protocol device {{ scan time 10; }}\n\
         protocol direct {{ ipv4; interface \"eth0\"; }}\n\
         protocol bgp up {{ local as {RECEIVER_AS}; neighbor {gobgp} as {GOBGP_AS};\n  \
         connect delay time 1; ipv4 {{ import all; export none; }}; }}\n",
        bird = MEMBERS[BIRD].1,
        gobgp = MEMBERS[GOBGP].1,
    )
}

/// Builds the lab and waits until GoBGP holds all `n` routes; returns it
/// with the seconds that took.
fn build_lab(n: usize) -> Res<(Lab, f64)> {
    let tag = util::unique_tag();
    let dir = util::temp_dir(&tag)?;
    let mut names = vec![format!("{tag}-sw")];
    names.extend(MEMBERS.iter().map(|(m, _)| format!("{tag}-{m}")));
    let ns = NetnsGroup::create(names)?;
    let mut lab = Lab {
        gobgpd: None,
        source: None,
        ns,
        dir,
    };
    let sw = lab.ns.names()[0].clone();
    let mut lines = String::from("link add br0 type bridge\nlink set br0 up\n");
    for (i, _) in MEMBERS.iter().enumerate() {
        let _ = writeln!(
            lines,
            "link add p{i} type veth peer name eth0 netns {}\nlink set p{i} master br0 up",
            lab.ns(i)
        );
    }
    ip_batch(Some(&sw), &lines)?;
    for (i, (_, addr)) in MEMBERS.iter().enumerate() {
        ip_batch(
            Some(lab.ns(i)),
            &format!("addr add {addr}/24 dev eth0\nlink set eth0 up\n"),
        )?;
    }
    fs::write(lab.path("src.conf"), source_conf(n))?;
    fs::write(lab.path("gobgp.toml"), gobgp_conf())?;
    fs::write(lab.path("bird.conf"), bird_conf())?;
    fs::write(lab.path("podrouter.toml"), podrouterd_conf(&lab))?;

    let conf = lab.path("gobgp.toml");
    lab.gobgpd = Some(Proc::spawn(
        "gobgpd",
        &[
            "ip",
            "netns",
            "exec",
            lab.ns(GOBGP),
            "gobgpd",
            "-f",
            &conf.to_string_lossy(),
            "-t",
            "toml",
            "--api-hosts",
            "127.0.0.1:50051",
        ],
        Some(&lab.path("gobgpd.log")),
    )?);
    let end = Instant::now() + Duration::from_secs(20);
    while !lab.gobgp(&["global"])?.ok() {
        if Instant::now() > end {
            bail!(
                "gobgpd did not answer within 20 s:\n{}",
                log_tail(&lab.path("gobgpd.log"))
            );
        }
        util::sleep(Duration::from_millis(100))?;
    }
    let t0 = Instant::now();
    let (src_conf, src_ctl, src_pid) = (
        lab.path("src.conf"),
        lab.path("src.ctl"),
        lab.path("src.pid"),
    );
    lab.source = Some(Proc::spawn(
        "source bird",
        &[
            "ip",
            "netns",
            "exec",
            lab.ns(SRC),
            "bird",
            "-f",
            "-c",
            &src_conf.to_string_lossy(),
            "-s",
            &src_ctl.to_string_lossy(),
            "-P",
            &src_pid.to_string_lossy(),
        ],
        Some(&lab.path("src.log")),
    )?);
    let limit = Duration::from_secs(120 + (n / 1000) as u64);
    let mut have = 0;
    loop {
        // While gobgpd takes in a large table (a million routes) its API
        // can take longer than the call's 10 s: not yet, ask again.
        match lab.gobgp(&["global", "rib", "summary", "-a", "ipv4"]) {
            Ok(out) => {
                if let Some(d) = destinations(&out.stdout) {
                    have = d;
                }
            }
            Err(e) if e.interrupted => return Err(e),
            Err(_) => {}
        }
        if have >= n {
            break;
        }
        if let Some(p) = lab.source.as_mut() {
            if !p.running() {
                bail!(
                    "the source BIRD exited:\n{}",
                    log_tail(&lab.path("src.log"))
                );
            }
        }
        if t0.elapsed() > limit {
            bail!(
                "GoBGP holds only {have} of {n} routes after {} s (source BIRD log:\n{})",
                limit.as_secs(),
                log_tail(&lab.path("src.log"))
            );
        }
        util::sleep(Duration::from_millis(200))?;
    }
    Ok((lab, t0.elapsed().as_secs_f64()))
}

/// `Destination: N` of `gobgp global rib summary`.
fn destinations(s: &str) -> Option<usize> {
    let rest = &s[s.find("Destination:")? + "Destination:".len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The number of `birdc show route ... count` ("N of M routes for K
/// networks in table master4").
fn bird_count(s: &str) -> Option<usize> {
    s.lines()
        .find(|l| l.contains(" of ") && l.contains("routes"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A connection to BIRD's control socket, speaking what `birdc` speaks:
/// a command line out, reply lines `CODE-text` (more follow) or `CODE
/// text` (last of that code) or ` text` (continuation) back, until code
/// 0000 (done) or an 8xxx/9xxx error.
struct BirdCtl {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl BirdCtl {
    fn connect(path: &str) -> Option<BirdCtl> {
        let s = std::os::unix::net::UnixStream::connect(path).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut c = BirdCtl {
            writer: s.try_clone().ok()?,
            reader: std::io::BufReader::new(s),
        };
        // The greeting: "0001 BIRD 2.x ready."
        c.reply()?;
        Some(c)
    }

    /// The reply's text lines (codes stripped), or None on an error.
    fn reply(&mut self) -> Option<String> {
        use std::io::BufRead;
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let b = line.as_bytes();
            let coded = b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit);
            if coded {
                text.push_str(&line[5..]);
                if b[4] == b' ' {
                    match &line[..4] {
                        "0000" | "0001" => return Some(text),
                        c if c.starts_with('8') || c.starts_with('9') => return None,
                        // The last line of a code that is not the end:
                        // "0014 N of M routes" is followed by "0000".
                        _ => {}
                    }
                }
            } else {
                text.push_str(line.strip_prefix(' ').unwrap_or(&line));
            }
        }
    }

    fn ask(&mut self, cmd: &str) -> Option<String> {
        use std::io::Write;
        self.writer.write_all(format!("{cmd}\n").as_bytes()).ok()?;
        self.reply()
    }
}

/// Which receiver a round measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    Podrouterd,
    Bird,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Podrouterd => "podrouterd",
            Receiver::Bird => "BIRD",
        }
    }
}

/// One round's result.
struct Round {
    /// Established to all routes in.
    secs: f64,
    /// CPU time the receiver's threads ran meanwhile (load-independent,
    /// unlike `secs` on a shared machine).
    cpu_secs: f64,
    /// Peak resident memory of the receiver (VmHWM), MiB, once all
    /// routes are in.
    peak_rss_mib: f64,
    /// Start of the process to Established.
    to_established: f64,
}

/// CPU time all threads of `pid` have run, in ns (the first field of each
/// `/proc/PID/task/TID/schedstat`, nanosecond resolution); 0 if unreadable.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Peak resident set size of `pid` (`VmHWM` in `/proc/PID/status`), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Starts `who` fresh, times Established to `n` routes, stops it.
fn round(ctx: &Ctx, lab: &Lab, who: Receiver, n: usize, rep: usize) -> Res<Round> {
    let bin = &ctx.opts.bin_dir;
    let log = lab.path(&format!("{}-{rep}.log", who.name().to_lowercase()));
    let sock = lab.path("api.sock").to_string_lossy().into_owned();
    let bird_ctl = lab.path("bird.ctl").to_string_lossy().into_owned();
    let mut proc = match who {
        Receiver::Podrouterd => {
            let _ = fs::remove_dir_all(lab.path("state"));
            let _ = fs::remove_file(lab.path("api.sock"));
            let d = bin.join("podrouterd");
            let conf = lab.path("podrouter.toml");
            Proc::spawn(
                "podrouterd",
                &[
                    "ip",
                    "netns",
                    "exec",
                    lab.ns(NODE),
                    &d.to_string_lossy(),
                    "--config",
                    &conf.to_string_lossy(),
                ],
                Some(&log),
            )?
        }
        Receiver::Bird => {
            let _ = fs::remove_file(lab.path("bird.ctl"));
            let conf = lab.path("bird.conf");
            let pid = lab.path("bird.pid");
            Proc::spawn(
                "bird",
                &[
                    "ip",
                    "netns",
                    "exec",
                    lab.ns(BIRD),
                    "bird",
                    "-f",
                    "-c",
                    &conf.to_string_lossy(),
                    "-s",
                    &bird_ctl,
                    "-P",
                    &pid.to_string_lossy(),
                ],
                Some(&log),
            )?
        }
    };
    let api = |call: podrouter_api::Call| -> Option<podrouter_api::Reply> {
        podrouter_api::Client::connect(Path::new(&sock), Duration::from_secs(5))
            .ok()?
            .call(call)
            .ok()
    };
    let mut bird: Option<BirdCtl> = None;
    let mut ask_bird = |cmd: &str| -> String {
        if bird.is_none() {
            bird = BirdCtl::connect(&bird_ctl);
        }
        match bird.as_mut().and_then(|b| b.ask(cmd)) {
            Some(t) => t,
            None => {
                bird = None;
                String::new()
            }
        }
    };
    let t0 = Instant::now();
    let limit = Duration::from_secs(60 + (n / 1000) as u64);
    let mut est: Option<Instant> = None;
    let mut cpu_at_est = 0;
    let mut have = 0;
    let mut tick = t0;
    loop {
        if !proc.running() {
            bail!(
                "{} exited during the round:\n{}",
                who.name(),
                log_tail(&log)
            );
        }
        match (who, est) {
            (Receiver::Podrouterd, None) => {
                if let Some(podrouter_api::Reply::BgpPeers(peers)) =
                    api(podrouter_api::Call::BgpPeers)
                {
                    if peers.iter().any(|p| p.state == "Established") {
                        est = Some(Instant::now());
                        cpu_at_est = cpu_ns(proc.pid());
                    }
                }
            }
            (Receiver::Bird, None) => {
                if ask_bird("show protocols").contains("Established") {
                    est = Some(Instant::now());
                    cpu_at_est = cpu_ns(proc.pid());
                }
            }
            (Receiver::Podrouterd, Some(_)) => {
                let call = podrouter_api::Call::BgpRib(podrouter_api::BgpRibParams {
                    prefix: None,
                    limit: Some(0),
                });
                if let Some(podrouter_api::Reply::BgpRib(r)) = api(call) {
                    have = r.installed;
                }
            }
            (Receiver::Bird, Some(_)) => {
                if let Some(c) = bird_count(&ask_bird("show route protocol up count")) {
                    have = c;
                }
            }
        }
        if let (Some(e), true) = (est, have >= n) {
            let now = Instant::now();
            let cpu = cpu_ns(proc.pid()).saturating_sub(cpu_at_est);
            return Ok(Round {
                peak_rss_mib: peak_rss_mib(proc.pid()),
                cpu_secs: cpu as f64 / 1e9,
                secs: now.duration_since(e).as_secs_f64(),
                to_established: e.duration_since(t0).as_secs_f64(),
            });
        }
        if t0.elapsed() > limit {
            bail!(
                "{} {} within {} s ({have} of {n} routes):\n{}",
                who.name(),
                if est.is_some() {
                    "did not install every route"
                } else {
                    "did not reach Established"
                },
                limit.as_secs(),
                log_tail(&log)
            );
        }
        tick += POLL;
        let now = Instant::now();
        if tick > now {
            util::sleep(tick - now)?;
        } else {
            tick = now;
        }
    }
    // `proc` is stopped (SIGTERM by pid) when it goes out of scope.
}

/// The scenario: rows "Established to N routes installed" (s) and
/// "routes per second", podrouterd against BIRD.
pub fn bgp_convergence(ctx: &mut Ctx) -> Res<()> {
    let n = ctx.p.bgp_routes;
    let scenario = format!("BGP convergence, {n} routes from a GoBGP peer: podrouterd vs BIRD 2");
    ctx.progress.step(&format!(
        "BGP: GoBGP learning {n} routes from a source BIRD"
    ));
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| !util::have_command(t))
        .map(|(t, pkg)| format!("`{t}` ({pkg})"))
        .collect();
    let mut why: Option<String> = None;
    if !missing.is_empty() {
        why = Some(format!(
            "not available: {} not installed (scripts/install-deps.sh installs them)",
            missing.join(", ")
        ));
    }
    for b in ["podrouterd", "podrouterctl"] {
        if why.is_none() && !ctx.opts.bin_dir.join(b).is_file() {
            let m = format!(
                "{} not found (cargo build --release --workspace --bins)",
                ctx.opts.bin_dir.join(b).display()
            );
            ctx.failures.push(format!("{scenario}: {m}"));
            why = Some(m);
        }
    }
    let lab = match why {
        Some(w) => Err(w),
        None => match build_lab(n) {
            Ok((lab, secs)) => {
                ctx.notes.push(format!(
                    "{scenario}: GoBGP learned the {n} routes from the source BIRD in {secs:.1} s, \
                     before any measured session"
                ));
                Ok(lab)
            }
            Err(e) if e.interrupted => return Err(e),
            Err(e) => {
                ctx.fail(&format!("{scenario}: building the lab"), &e);
                Err(e.msg)
            }
        },
    };
    let mut secs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut rss: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut disturbed = [0usize; 2];
    let mut errs: [Option<String>; 2] = [None, None];
    if let Ok(lab) = &lab {
        for rep in 1..=ctx.p.repeats {
            for (i, who) in [Receiver::Podrouterd, Receiver::Bird]
                .into_iter()
                .enumerate()
            {
                let desc = format!("{scenario} · {} · run {rep}/{}", who.name(), ctx.p.repeats);
                ctx.progress.step(&desc);
                let busy = quiesce(ctx, &desc)?;
                match round(ctx, lab, who, n, rep) {
                    Ok(r) => {
                        ctx.runs.push(json!({
                            "what": desc, "plane": who.name(), "kind": "bgp_convergence",
                            "routes": n, "secs": r.secs, "to_established_secs": r.to_established,
                            "cpu_secs": r.cpu_secs, "peak_rss_mib": r.peak_rss_mib,
                            "busy_before": busy,
                        }));
                        secs[i].push(r.secs);
                        cpu[i].push(r.cpu_secs);
                        rss[i].push(r.peak_rss_mib);
                        disturbed[i] += usize::from(busy >= BUSY);
                    }
                    Err(e) if e.interrupted => return Err(e),
                    Err(e) => {
                        ctx.fail(&desc, &e);
                        errs[i].get_or_insert(e.msg);
                    }
                }
            }
        }
    }
    let cells = |of: &[Vec<f64>; 2], f: &dyn Fn(f64) -> f64| -> [Cell; 2] {
        [0, 1].map(|i| match &lab {
            Err(why) => Cell::missing(first_line(why)),
            Ok(_) if of[i].is_empty() => Cell::missing(first_line(
                errs[i].as_deref().unwrap_or("no successful run"),
            )),
            Ok(_) => Cell::from_runs(of[i].iter().map(|s| f(*s)).collect(), disturbed[i]),
        })
    };
    let [ps, bs] = cells(&secs, &|s| s);
    let [pr, br] = cells(&secs, &|s| n as f64 / s);
    let [pc, bc] = cells(&cpu, &|s| s);
    let [pm, bm] = cells(&rss, &|s| s);
    ctx.rows.push(
        Row::new(
            &scenario,
            &format!("Established to {n} routes installed (podrouterd: FIB; BIRD: RIB)"),
            "s",
            "lower",
            ps,
            bs,
        )
        .baseline("BIRD 2"),
    );
    ctx.rows.push(
        Row::new(
            &scenario,
            "routes installed per second",
            "routes/s",
            "higher",
            pr,
            br,
        )
        .baseline("BIRD 2"),
    );
    ctx.rows.push(
        Row::new(
            &scenario,
            &format!("CPU time of the receiver, Established to {n} routes installed (all threads)"),
            "s",
            "lower",
            pc,
            bc,
        )
        .baseline("BIRD 2"),
    );
    ctx.rows.push(
        Row::new(
            &scenario,
            &format!("peak resident memory of the receiver with {n} routes (VmHWM)"),
            "MiB",
            "lower",
            pm,
            bm,
        )
        .baseline("BIRD 2"),
    );
    if let Err(w) = &lab {
        if w.starts_with("not available") {
            ctx.notes.push(format!("{scenario}: {w}"));
        }
    }
    ctx.progress.step("BGP: tearing down");
    drop(lab);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_configs() {
        assert_eq!(route(0), Ipv4Addr::new(11, 0, 0, 0));
        assert_eq!(route(256), Ipv4Addr::new(11, 1, 0, 0));
        assert_eq!(route(99_999), Ipv4Addr::new(12, 134, 159, 0));
        assert_eq!(route(MAX_ROUTES - 1), Ipv4Addr::new(126, 255, 255, 0));
        let c = source_conf(3);
        assert_eq!(c.matches("blackhole;").count(), 3);
        assert!(c.contains("route 11.0.2.0/24 blackhole;"));
        assert!(gobgp_conf().contains("neighbor-address = \"10.210.0.1\""));
        assert!(bird_conf().contains("neighbor 10.210.0.3 as 64513"));
    }

    #[test]
    fn parses_counts() {
        assert_eq!(
            destinations("Table ipv4-unicast\nDestination: 100000, Path: 100000\n"),
            Some(100_000)
        );
        assert_eq!(destinations("Table ipv4-unicast\n"), None);
        assert_eq!(
            bird_count(
                "BIRD 2.0.12 ready.\n2000 of 2000 routes for 2000 networks in table master4\n"
            ),
            Some(2000)
        );
        assert_eq!(bird_count("BIRD 2.0.12 ready.\n"), None);
    }
}
