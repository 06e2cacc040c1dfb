//! Helpers for podrouter's end-to-end tests.
//!
//! Every test builds its own little world: a node network namespace holding
//! the node's address and a `podrouterd` started inside it, pod namespaces
//! attached through `podrouterctl`, and a temporary directory for the config,
//! the API socket, the state and the daemon's log. Guards tear all of it down
//! on drop, also when the test panics, and only ever signal processes this
//! crate started, by pid.
//!
//! Tests need root, `/dev/net/tun`, iproute2 and the release binaries.
//! [`require`] checks them with `podrouter-testkit`'s one rule: a test that
//! cannot run prints `SKIP <test>: <why>` and returns, or with
//! `PODROUTER_E2E_REQUIRE=1` (set by `scripts/test.sh` as root) fails, so CI
//! can never pass by skipping. Namespaces, temporary directories and unique
//! names come from the kit too; [`InNetns`] adds the logged, time-limited
//! commands these tests run inside a namespace.
//!
//! Binaries are found in `$PODROUTER_BIN_DIR`, else next to the test
//! executable's profile directory (`target/<profile>/`): build them with
//! `cargo build --release --workspace --bins` before `cargo test --release`.
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub use podrouter_testkit::{have_command, is_root, unique, Needs, Netns, TempDir};
pub use serde_json::Value;
pub mod backlog;
pub mod bgp;
pub mod multinode;
pub mod netpol;
pub mod probe;
pub mod takeover;

/// The node address every test node gets (each node has its own netns).
pub const NODE_IP: &str = "192.168.200.1";
/// The pod block of a test node.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The gateway every pod routes through.
pub const GATEWAY_IP: &str = "169.254.1.1";
/// The MAC the router answers every ARP with.
pub const ROUTER_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// Every drop reason `podrouterctl counters` must report: all of the data
/// plane's, so a new reason can never be left out.
pub fn drop_reasons() -> Vec<&'static str> {
    podrouter_router::counters::DropReason::ALL
        .iter()
        .map(|r| r.name())
        .collect()
}

/// Longest any single helper command may run before `timeout` ends it.
const COMMAND_TIMEOUT_SECS: u32 = 60;

// ---------------------------------------------------------------------------
// Skipping, and notes past the output capture

/// Writes a line to the real stderr, past libtest's output capture, so
/// notes (and measured results) are visible in `cargo test` output even for
/// passing tests.
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// What every end-to-end test needs besides its own tools: `timeout` and
/// the daemon and CLI binaries.
fn with_binaries(needs: Needs) -> Needs {
    let absent: Vec<&str> = ["podrouterd", "podrouterctl"]
        .into_iter()
        .filter(|b| !bin_dir().join(b).is_file())
        .collect();
    needs.commands(&["timeout"]).unless(
        absent.is_empty(),
        format!(
            "{} not found in {} (build with `cargo build --release --workspace --bins`, \
             or set PODROUTER_BIN_DIR)",
            absent.join(" and "),
            bin_dir().display()
        ),
    )
}

/// Checks that this test can run: root, `/dev/net/tun`, `ip`, the daemon and
/// CLI binaries, and the given extra commands (on `PATH`, or absolute
/// paths). Prints `SKIP <test>: <why>` and returns false if not (or panics
/// under `PODROUTER_E2E_REQUIRE=1`).
#[must_use]
#[track_caller]
pub fn require(test: &str, tools: &[&str]) -> bool {
    with_binaries(Needs::new(test).privileged().commands(tools)).met()
}

/// Like [`require`] for tests that only run the binaries (no root needed).
#[must_use]
#[track_caller]
pub fn require_binaries(test: &str) -> bool {
    with_binaries(Needs::new(test)).met()
}

// ---------------------------------------------------------------------------
// Binaries

/// Where `podrouterd` and `podrouterctl` are looked for.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PODROUTER_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Full path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

// ---------------------------------------------------------------------------
// Running commands

/// What a finished command left behind.
#[derive(Debug)]
pub struct Out {
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Exit code (-1 if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// stdout followed by stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the command succeeded.
    #[track_caller]
    pub fn expect_ok(self) -> Out {
        assert!(self.ok(), "command failed: {self}");
        self
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

fn show(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion under `timeout`, logging it and its output
/// (visible when the test fails).
pub fn run(args: &[&str]) -> Out {
    run_env(args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let secs = COMMAND_TIMEOUT_SECS.to_string();
    let mut full = vec!["timeout", "-k", "5", &secs];
    full.extend_from_slice(args);
    let mut cmd = Command::new(full[0]);
    cmd.args(&full[1..]).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", show(args)));
    let out = Out {
        cmd: show(args),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ {}  [{} in {:.2}s]\n{}{}",
        out.cmd,
        out.status,
        started.elapsed().as_secs_f64(),
        out.stdout,
        out.stderr
    );
    out
}

/// Runs a command inside network namespace `ns`.
pub fn run_in(ns: &str, args: &[&str]) -> Out {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Starts a background process inside namespace `ns` (see [`InNetns::spawn`]).
pub fn spawn_in(ns: &str, name: &str, args: &[&str], log: Option<&Path>) -> Bg {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    Bg::spawn(name, &full, log)
}

/// Sends a signal to one process by pid (`kill -SIG PID`).
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            // 1 ms: a restart's measured gap includes this wait.
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            _ => return None,
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes; returns the last
/// result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A process running in the background; on drop it gets SIGTERM (by its own
/// pid), then SIGKILL if it has not exited within five seconds.
pub struct Bg {
    pub name: String,
    pub child: Child,
}

impl Bg {
    /// Spawns `args` with stdout and stderr going to `log` (or discarded).
    pub fn spawn(name: &str, args: &[&str], log: Option<&Path>) -> Bg {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]).stdin(Stdio::null());
        match log {
            Some(p) => {
                let f =
                    fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
                let f2 = f.try_clone().expect("dup log fd");
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", show(args)));
        eprintln!("started {name} (pid {}): {}", child.id(), show(args));
        Bg {
            name: name.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` and waits up to `timeout` for the exit status.
    pub fn stop_with(&mut self, sig: &str, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        signal(self.pid(), sig);
        wait_timeout(&mut self.child, timeout)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.stop_with("TERM", Duration::from_secs(5)).is_none() {
            eprintln!(
                "{} (pid {}) ignored SIGTERM; killing it",
                self.name,
                self.pid()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Prints a file (a daemon log) to stderr on drop if the test is panicking.
pub struct LogOnPanic(pub PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            let text = fs::read_to_string(&self.0).unwrap_or_else(|e| format!("(unreadable: {e})"));
            say(&format!("--- {} ---\n{text}--- end ---", self.0.display()));
        }
    }
}

// ---------------------------------------------------------------------------
// Network namespaces

/// The e2e tests' commands inside a namespace (the kit's [`Netns`]): logged,
/// under `timeout`, with the output kept for assertions.
pub trait InNetns {
    /// Runs a command inside the namespace.
    fn exec(&self, args: &[&str]) -> Out;

    /// Runs a shell script inside the namespace.
    fn sh(&self, script: &str) -> Out {
        self.exec(&["sh", "-c", script])
    }

    /// Starts a background process inside the namespace. `ip netns exec`
    /// execs the command, so the pid is the command's own.
    fn spawn(&self, name: &str, args: &[&str], log: Option<&Path>) -> Bg;
}

impl InNetns for Netns {
    fn exec(&self, args: &[&str]) -> Out {
        run_in(self.name(), args)
    }

    fn spawn(&self, name: &str, args: &[&str], log: Option<&Path>) -> Bg {
        spawn_in(self.name(), name, args, log)
    }
}

// ---------------------------------------------------------------------------
// Packet capture

/// tcpdump writing a pcap inside a namespace; [`Capture::stop`] returns the
/// decoded packets (`tcpdump -n -v -r`).
pub struct Capture {
    bg: Bg,
    file: PathBuf,
    _dir: TempDir,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` with a BPF `filter`, and waits
    /// until tcpdump says it is listening.
    pub fn start(ns: &str, ifname: &str, filter: &str) -> Capture {
        Capture::start_with(ns, ifname, filter, &[])
    }

    /// [`Capture::start`] with extra tcpdump options (`-s 128`, `-c 20`).
    pub fn start_with(ns: &str, ifname: &str, filter: &str, extra: &[&str]) -> Capture {
        let dir = TempDir::new("pcap");
        let file = dir.join("cap.pcap");
        let file_s = file.to_string_lossy().into_owned();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-Z",
                "root",
                "--immediate-mode",
                "-U",
                "-n",
            ])
            .args(extra)
            .args(["-i", ifname, "-w", &file_s, filter])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tcpdump");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let bg = Bg {
            name: format!("tcpdump in {ns}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut said = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => {
                    said.push_str(&line);
                    said.push('\n');
                }
                Err(_) => panic!("tcpdump in {ns} on {ifname} did not start listening: {said}"),
            }
        }
        Capture {
            bg,
            file,
            _dir: dir,
        }
    }

    /// Stops tcpdump (after a short grace period for packets in flight) and
    /// returns the capture as `tcpdump -n -v` text.
    pub fn stop(mut self) -> String {
        thread::sleep(Duration::from_millis(300));
        self.bg.stop_with("INT", Duration::from_secs(5));
        let f = self.file.to_string_lossy().into_owned();
        let out = run(&["tcpdump", "-n", "-v", "-r", &f]);
        assert!(out.ok(), "reading capture failed: {out}");
        out.stdout
    }
}

// ---------------------------------------------------------------------------
// Output parsers

/// What `ping` printed, parsed.
#[derive(Debug, Default, Clone)]
pub struct Ping {
    pub transmitted: u32,
    pub received: u32,
    /// `ttl=` of every reply line.
    pub ttls: Vec<u32>,
    /// Everything ping printed.
    pub text: String,
}

/// Parses iputils ping output.
pub fn parse_ping(text: &str) -> Ping {
    let mut p = Ping {
        text: text.to_string(),
        ..Ping::default()
    };
    for line in text.lines() {
        if let Some(i) = line.find("ttl=") {
            let n: String = line[i + 4..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = n.parse() {
                p.ttls.push(n);
            }
        }
        if line.contains("packets transmitted") {
            let mut it = line.split(',');
            let num = |s: Option<&str>| -> u32 {
                s.and_then(|s| s.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            p.transmitted = num(it.next());
            p.received = num(it.next());
        }
    }
    p
}

/// Pings `dst` from namespace `ns` with extra `args`, parsed.
pub fn ping(ns: &str, dst: &str, args: &[&str]) -> Ping {
    let mut full = vec!["ping", "-n"];
    full.extend_from_slice(args);
    full.push(dst);
    let out = run_in(ns, &full);
    parse_ping(&out.text())
}

/// Retries a single ping until one reply comes back (up to `timeout`); for
/// letting a freshly attached or restarted pod settle before the real check.
pub fn ping_until_reply(ns: &str, dst: &str, timeout: Duration) -> bool {
    wait_until(timeout, || {
        ping(ns, dst, &["-c", "1", "-W", "1"]).received == 1
    })
}

/// Asserts `count` echo replies all came back with TTL `ttl`.
#[track_caller]
pub fn assert_ping(ns: &str, dst: &str, count: u32, ttl: u32) -> Ping {
    let c = count.to_string();
    let p = ping(ns, dst, &["-c", &c, "-i", "0.2", "-W", "2"]);
    assert_eq!(
        (p.transmitted, p.received),
        (count, count),
        "ping {dst} from {ns}: expected {count}/{count} replies:\n{}",
        p.text
    );
    assert_eq!(
        p.ttls.len(),
        count as usize,
        "reply lines without ttl=:\n{}",
        p.text
    );
    assert!(
        p.ttls.iter().all(|t| *t == ttl),
        "ping {dst} from {ns}: expected every reply ttl={ttl}, got {:?}:\n{}",
        p.ttls,
        p.text
    );
    p
}

// ---------------------------------------------------------------------------
// Counters

/// Reads a number at a JSON pointer (`/drops/no_route`), panicking with the
/// document if it is missing.
#[track_caller]
pub fn num(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {v:#}"))
}

/// `after - before` for one counter (JSON pointer).
#[track_caller]
pub fn delta(before: &Value, after: &Value, pointer: &str) -> u64 {
    num(after, pointer).saturating_sub(num(before, pointer))
}

// ---------------------------------------------------------------------------
// The node and its daemon

/// The data-plane backend test nodes run: `$PODROUTER_BACKEND` (`tap` or
/// `afxdp`; `scripts/test.sh` runs the end-to-end tests once with each),
/// `tap` when unset.
pub fn backend() -> String {
    match std::env::var("PODROUTER_BACKEND") {
        Ok(b) if !b.is_empty() => {
            assert!(
                b == "tap" || b == "afxdp",
                "PODROUTER_BACKEND={b}: expected tap or afxdp"
            );
            b
        }
        _ => "tap".to_string(),
    }
}

/// A pod MTU well above the default that the backend carries: 9000 (on
/// afxdp a frame then spans several UMEM chunks: multi-buffer).
pub fn jumbo_mtu() -> u16 {
    9000
}

/// How a test node's `podrouterd` is configured.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `dataplane.backend`; [`backend`] by default.
    pub backend: String,
    pub node_ip: String,
    pub pod_cidrs: Vec<String>,
    pub workers: usize,
    pub mtu: Option<u16>,
    pub icmp_rate: Option<u32>,
    pub icmp_burst: Option<u32>,
    pub log_level: String,
    /// Static `[[routes]]`: (prefix, via).
    pub routes: Vec<(String, String)>,
    /// `[metrics] listen`, e.g. `127.0.0.1:9091` (in the node namespace).
    pub metrics: Option<String>,
    /// More `[dataplane]` lines, each ending in a newline.
    pub dataplane_extra: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            backend: backend(),
            node_ip: NODE_IP.to_string(),
            pod_cidrs: vec![POD_CIDR.to_string()],
            workers: 1,
            mtu: None,
            icmp_rate: None,
            icmp_burst: None,
            log_level: "debug".to_string(),
            routes: Vec::new(),
            metrics: None,
            dataplane_extra: String::new(),
        }
    }
}

impl NodeConfig {
    /// The TOML file for a node whose files live in `dir`.
    pub fn toml(&self, name: &str, dir: &Path) -> String {
        let cidrs = self
            .pod_cidrs
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!(
            "# written by podrouter-e2e\n\
             node_name = \"{name}\"\n\
             node_ip = \"{}\"\n\
             pod_cidrs = [{cidrs}]\n\
             api_socket = \"{}\"\n\
             state_dir = \"{}\"\n\
             log_level = \"{}\"\n\
             \n[dataplane]\n\
             backend = \"{}\"\n\
             workers = {}\n",
            self.node_ip,
            dir.join("api.sock").display(),
            dir.join("state").display(),
            self.log_level,
            self.backend,
            self.workers,
        );
        if let Some(m) = self.mtu {
            s += &format!("mtu = {m}\n");
        }
        if let Some(r) = self.icmp_rate {
            s += &format!("icmp_rate = {r}\n");
        }
        if let Some(b) = self.icmp_burst {
            s += &format!("icmp_burst = {b}\n");
        }
        s += &self.dataplane_extra;
        for (prefix, via) in &self.routes {
            s += &format!("\n[[routes]]\nprefix = \"{prefix}\"\nvia = \"{via}\"\n");
        }
        if let Some(listen) = &self.metrics {
            s += &format!("\n[metrics]\nlisten = \"{listen}\"\n");
        }
        s
    }
}

/// A pod attached to a [`Node`]: its namespace name and what `attach` said.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub ns: String,
    pub netns_path: String,
    pub ip: String,
    pub info: Value,
}

impl Pod {
    pub fn exec(&self, args: &[&str]) -> Out {
        run_in(&self.ns, args)
    }

    pub fn sh(&self, script: &str) -> Out {
        self.exec(&["sh", "-c", script])
    }
}

/// Runs `podrouterctl --socket SOCKET [--json] ARGS`, returning raw output.
pub fn podrouterctl(socket: &Path, json: bool, args: &[&str]) -> Out {
    let c = bin("podrouterctl");
    let c = c.to_string_lossy();
    let s = socket.to_string_lossy();
    let mut full = vec![&*c, "--socket", &*s];
    if json {
        full.push("--json");
    }
    full.extend_from_slice(args);
    run(&full)
}

/// `podrouterctl --json ARGS` against `socket`, which must exit 0 and print
/// JSON.
#[track_caller]
pub fn podrouterctl_json(socket: &Path, args: &[&str]) -> Value {
    let out = podrouterctl(socket, true, args);
    assert!(out.ok(), "podrouterctl failed: {out}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("podrouterctl printed no JSON ({e}): {out}"))
}

/// Creates a pod namespace and attaches it through the daemon at `socket`
/// with `podrouterctl attach ID --netns PATH EXTRA..`; checks the reply is a
/// PodInfo for that id. The caller keeps the namespace alive.
#[track_caller]
pub fn attach_new_pod(socket: &Path, id: &str, extra: &[&str]) -> (Netns, Pod) {
    let ns = Netns::new("pod");
    let path = ns.path();
    let mut args = vec!["attach", id, "--netns", &path];
    args.extend_from_slice(extra);
    let info = podrouterctl_json(socket, &args);
    assert_eq!(info["id"], id, "attach reply names another pod: {info:#}");
    let ip = info["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("attach reply has no ip: {info:#}"))
        .to_string();
    let pod = Pod {
        id: id.to_string(),
        ns: ns.name().to_string(),
        netns_path: path,
        ip,
        info,
    };
    (ns, pod)
}

/// A node namespace with `podrouterd` running in it, and the pods attached
/// to it. Dropping it stops the daemon (SIGTERM to its pid), deletes the pod
/// namespaces, then the node's, then the temporary directory; if the test is
/// panicking it first prints the daemon's log, counters and each pod's
/// addresses, routes and neighbours.
pub struct Node {
    pub name: String,
    pub cfg: NodeConfig,
    pub dir: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    daemon: Option<Bg>,
    starts: u32,
    pods: Vec<(Netns, Pod)>,
    /// Declared last: dropped after the pods' namespaces.
    pub ns: Netns,
}

impl Node {
    /// Creates the node namespace (node IP on `lo`), writes the config and
    /// starts `podrouterd`, waiting until its API answers.
    pub fn start(cfg: NodeConfig) -> Node {
        let ns = Netns::new("node");
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", cfg.node_ip),
            "dev",
            "lo",
        ])
        .expect_ok();
        let dir = TempDir::new("node");
        let name = ns.name().to_string();
        let config = dir.join("podrouter.toml");
        fs::write(&config, cfg.toml(&name, dir.path())).expect("write config");
        let mut node = Node {
            name,
            cfg,
            socket: dir.join("api.sock"),
            log: dir.join("podrouterd.log"),
            config,
            dir,
            daemon: None,
            starts: 0,
            pods: Vec::new(),
            ns,
        };
        node.start_daemon();
        node
    }

    /// Starts `podrouterd` (again) with the node's config and waits up to
    /// 20 s for `podrouterctl status` to succeed. Logs of earlier runs are
    /// kept in `podrouterd.log.N`.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        if self.starts > 0 && self.log.exists() {
            let _ = fs::rename(
                &self.log,
                self.dir.join(&format!("podrouterd.log.{}", self.starts)),
            );
        }
        self.starts += 1;
        let d = bin("podrouterd");
        let d = d.to_string_lossy();
        let c = self.config.to_string_lossy().into_owned();
        let bg = self
            .ns
            .spawn("podrouterd", &[&d, "--config", &c], Some(&self.log));
        self.daemon = Some(bg);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let exited = self
                .daemon
                .as_mut()
                .and_then(|b| b.child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.daemon = None;
                panic!(
                    "podrouterd exited during startup with {status}; log:\n{}",
                    self.daemon_log()
                );
            }
            if self.socket.exists() && self.ctl_out(&["status"]).ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "podrouterd did not answer on {} within 20 s; log:\n{}",
                    self.socket.display(),
                    self.daemon_log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's pid, if it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Bg::pid)
    }

    /// Sends `sig` ("TERM", "INT") to the daemon and returns its exit status
    /// (panics if it does not exit within 10 s).
    #[track_caller]
    pub fn stop_daemon(&mut self, sig: &str) -> ExitStatus {
        let mut bg = self.daemon.take().expect("daemon not running");
        match bg.stop_with(sig, Duration::from_secs(10)) {
            Some(s) => s,
            None => {
                drop(bg);
                panic!(
                    "podrouterd ignored SIG{sig} for 10 s; log:\n{}",
                    self.daemon_log()
                );
            }
        }
    }

    /// The current daemon log.
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Runs `podrouterctl --socket SOCK --json ARGS`, returning raw output.
    pub fn ctl_out(&self, args: &[&str]) -> Out {
        podrouterctl(&self.socket, true, args)
    }

    /// Runs `podrouterctl` without `--json` (the human table).
    pub fn ctl_table(&self, args: &[&str]) -> Out {
        podrouterctl(&self.socket, false, args)
    }

    /// `podrouterctl --json ARGS`, which must exit 0 and print JSON.
    #[track_caller]
    pub fn ctl(&self, args: &[&str]) -> Value {
        podrouterctl_json(&self.socket, args)
    }

    /// `podrouterctl --json counters`.
    #[track_caller]
    pub fn counters(&self) -> Value {
        self.ctl(&["counters"])
    }

    /// Creates a pod namespace and attaches it (see [`attach_new_pod`]);
    /// the namespace is deleted with the node.
    #[track_caller]
    pub fn add_pod(&mut self, id: &str, extra: &[&str]) -> Pod {
        let (ns, pod) = attach_new_pod(&self.socket, id, extra);
        self.pods.push((ns, pod.clone()));
        pod
    }

    /// Creates a pod namespace without attaching it (for refusals and for
    /// attaching by other means). It is deleted with the node.
    pub fn empty_pod_ns(&mut self) -> Pod {
        let ns = Netns::new("pod");
        let pod = Pod {
            id: String::new(),
            ns: ns.name().to_string(),
            netns_path: ns.path(),
            ip: String::new(),
            info: Value::Null,
        };
        self.pods.push((ns, pod.clone()));
        pod
    }

    /// Runs a command in the node namespace.
    pub fn exec(&self, args: &[&str]) -> Out {
        self.ns.exec(args)
    }

    fn dump(&self) {
        let mut s = format!(
            "===== node {} (config {}) =====\n{}\n",
            self.name,
            self.config.display(),
            fs::read_to_string(&self.config).unwrap_or_default()
        );
        if self.daemon.is_some() {
            let o = self.ctl_out(&["counters"]);
            s += &format!("--- counters ---\n{}{}\n", o.stdout, o.stderr);
        }
        for (_, pod) in &self.pods {
            for what in [&["addr"][..], &["route"], &["neigh"]] {
                let mut a = vec!["ip", "-n", &pod.ns];
                a.extend_from_slice(what);
                if let Ok(o) = Command::new(a[0]).args(&a[1..]).output() {
                    s += &format!(
                        "--- pod {} ({}): ip {} ---\n{}{}",
                        pod.id,
                        pod.ns,
                        what[0],
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        s += &format!(
            "--- podrouterd log ({}) ---\n{}",
            self.log.display(),
            self.daemon_log()
        );
        s += "===== end of node dump =====";
        say(&s);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        if let Some(mut bg) = self.daemon.take() {
            match bg.stop_with("TERM", Duration::from_secs(10)) {
                Some(s) if s.success() => {}
                Some(s) => say(&format!(
                    "note: podrouterd in {} exited with {s} on SIGTERM",
                    self.name
                )),
                None => say(&format!(
                    "note: podrouterd in {} ignored SIGTERM for 10 s; killing it",
                    self.name
                )),
            }
            // Bg's own drop kills it if it is still there.
        }
        // Pod namespaces go before the node's (`ns` is the last field, so it
        // drops last).
        self.pods.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_output() {
        let text = "PING 10.244.0.2 (10.244.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.244.0.2: icmp_seq=1 ttl=63 time=378 ms\n\
            64 bytes from 10.244.0.2: icmp_seq=2 ttl=63 time=0.059 ms\n\
            \n--- 10.244.0.2 ping statistics ---\n\
            2 packets transmitted, 2 received, 0% packet loss, time 1002ms\n";
        let p = parse_ping(text);
        assert_eq!((p.transmitted, p.received), (2, 2));
        assert_eq!(p.ttls, vec![63, 63]);

        let text = "From 192.168.200.1 icmp_seq=1 Destination Host Unreachable\n\
            2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1018ms\n";
        let p = parse_ping(text);
        assert_eq!((p.transmitted, p.received), (2, 0));
        assert!(p.ttls.is_empty());
    }

    #[test]
    fn config_has_the_contract_keys() {
        let cfg = NodeConfig {
            icmp_rate: Some(1),
            icmp_burst: Some(2),
            mtu: Some(1400),
            ..NodeConfig::default()
        };
        let cfg = NodeConfig {
            routes: vec![("10.245.0.0/24".into(), "192.168.200.2".into())],
            ..cfg
        };
        let t = cfg.toml("n", Path::new("/tmp/x"));
        for k in [
            "[[routes]]\nprefix = \"10.245.0.0/24\"\nvia = \"192.168.200.2\"",
            "node_name = \"n\"",
            "node_ip = \"192.168.200.1\"",
            "pod_cidrs = [\"10.244.0.0/24\"]",
            "api_socket = \"/tmp/x/api.sock\"",
            "state_dir = \"/tmp/x/state\"",
            "[dataplane]",
            "icmp_rate = 1",
            "icmp_burst = 2",
            "mtu = 1400",
        ] {
            assert!(t.contains(k), "{k} missing from\n{t}");
        }
        // Top-level keys come before the [dataplane] table.
        assert!(t.find("state_dir").unwrap() < t.find("[dataplane]").unwrap());
    }
}
