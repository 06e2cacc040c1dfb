//! Helpers for driving podrouter-cni the way a runtime does, against a
//! real podrouterd running in a network namespace these tests create.
//!
//! Privileged (root) tests call the test kit's [`privileged`] first (run,
//! or SKIP, or fail under `PODROUTER_E2E_REQUIRE=1`). Every netns, daemon
//! and directory made here is removed on drop, and only processes started
//! here are signalled (by pid). Namespaces, temporary directories and
//! unique names are the kit's.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use podrouter_api::{Call, Client, PodInfo, Reply, StatusInfo};
pub use podrouter_testkit::{Netns, TempDir};
use serde_json::Value;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_podrouter-cni");

static SERIAL: Mutex<()> = Mutex::new(());

/// Privileged tests run one at a time: each brings up its own daemon, and
/// the machine has few cores.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

pub fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the podrouterd binary is: `PODROUTER_BIN_DIR`, else the target
/// directory this test was built in (its profile, then release, then
/// debug).
pub fn daemon_bin() -> PathBuf {
    if let Ok(d) = std::env::var("PODROUTER_BIN_DIR") {
        return Path::new(&d).join("podrouterd");
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let target = profile_dir.parent().unwrap().to_owned();
    let candidates = [
        profile_dir.join("podrouterd"),
        target.join("release/podrouterd"),
        target.join("debug/podrouterd"),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "podrouterd not found (looked at {}); build it with `cargo build -p podrouter-control` \
         or set PODROUTER_BIN_DIR",
        candidates.map(|c| c.display().to_string()).join(", ")
    );
}

/// A node: its namespace (node IP on lo) and a podrouterd serving it.
pub struct Node {
    pub ns: Netns,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pending_dir: PathBuf,
    pub config: PathBuf,
    pub node_ip: String,
    pub child: Option<Child>,
}

impl Node {
    /// Starts podrouterd for `pod_cidr` with node IP `node_ip`.
    pub fn start(pod_cidr: &str, node_ip: &str) -> Node {
        let ns = Netns::new("n");
        ns.ip(&["addr", "add", &format!("{node_ip}/32"), "dev", "lo"]);
        let dir = TempDir::new("node");
        let socket = dir.path().join("api.sock");
        let state_dir = dir.path().join("state");
        let config = dir.path().join("podrouterd.toml");
        std::fs::write(
            &config,
            format!(
                "node_name = \"{}\"\nnode_ip = \"{node_ip}\"\npod_cidrs = [\"{pod_cidr}\"]\n\
                 api_socket = \"{}\"\nstate_dir = \"{}\"\n\n[dataplane]\nbackend = \"{}\"\n",
                ns.name(),
                socket.display(),
                state_dir.display(),
                // scripts/test.sh runs these tests once per backend.
                std::env::var("PODROUTER_BACKEND").unwrap_or_else(|_| "tap".into()),
            ),
        )
        .unwrap();
        let mut node = Node {
            pending_dir: state_dir.join("pending-detach"),
            ns,
            dir,
            socket,
            state_dir,
            config,
            node_ip: node_ip.to_string(),
            child: None,
        };
        node.spawn();
        node
    }

    /// Starts the daemon (again) and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("podrouterd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(daemon_bin())
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting podrouterd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect(&self.socket, Duration::from_secs(5)) {
                if c.call(Call::Status).is_ok() {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("podrouterd exited with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "podrouterd did not answer within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("podrouterd.log")).unwrap_or_default()
    }

    fn signal(&mut self, sig: &str) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs the daemon, so this pid is podrouterd.
            let _ = sh("kill", &[sig, &c.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGTERM, and wait for it to exit.
    pub fn stop(&mut self) {
        self.signal("-TERM");
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(30)).expect("connect to podrouterd")
    }

    pub fn status(&self) -> StatusInfo {
        match self.client().call(Call::Status).expect("status") {
            Reply::Status(s) => s,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn pods(&self) -> Vec<PodInfo> {
        match self.client().call(Call::ListPods).expect("list pods") {
            Reply::Pods(p) => p,
            r => panic!("unexpected {r:?}"),
        }
    }

    /// A network configuration for this node, with extra keys spliced in
    /// (`"k":v,...` or empty).
    pub fn conf(&self, version: &str, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "," };
        format!(
            r#"{{"cniVersion":"{version}","name":"podnet","type":"podrouter-cni","router_socket":"{}","mtu":1480,"pending_dir":"{}"{sep}{extra}}}"#,
            self.socket.display(),
            self.pending_dir.display()
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- podrouterd log ---\n{}", self.log());
        }
    }
}

/// What one plugin run gave.
#[derive(Debug)]
pub struct Out {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.status, 0,
            "plugin failed: {}\n{}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a CNI error with `code` (stdout JSON and exit status).
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(
            self.status, 0,
            "expected error {code}, got success: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{}\n{}", self.stdout, self.stderr);
        for k in ["cniVersion", "msg", "details"] {
            assert!(v[k].is_string(), "error lacks {k}: {}", self.stdout);
        }
        assert_eq!(self.status as u64, code.min(255), "exit status");
        v
    }
}

/// The environment of one call, as a runtime sets it.
#[derive(Clone, Default)]
pub struct CniEnv {
    pub command: &'static str,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub path: Option<String>,
    pub extra: HashMap<String, String>,
}

pub fn attach_env(command: &'static str, cid: &str, netns: &str, ifname: &str) -> CniEnv {
    CniEnv {
        command,
        container_id: Some(cid.into()),
        netns: Some(netns.into()),
        ifname: Some(ifname.into()),
        path: Some("/usr/lib/cni:/opt/cni/bin".into()),
        extra: HashMap::new(),
    }
}

/// Runs the plugin binary with a clean environment plus `call`, `stdin`
/// on its standard input.
pub fn plugin(call: &CniEnv, stdin: &str) -> Out {
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !call.command.is_empty() {
        cmd.env("CNI_COMMAND", call.command);
    }
    for (k, v) in [
        ("CNI_CONTAINERID", &call.container_id),
        ("CNI_NETNS", &call.netns),
        ("CNI_IFNAME", &call.ifname),
        ("CNI_PATH", &call.path),
    ] {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.envs(&call.extra);
    let mut child = cmd.spawn().expect("run podrouter-cni");
    let mut stdin_pipe = child.stdin.take().unwrap();
    let input = stdin.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin_pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Out {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The conf with `prevResult` set (for CHECK and DEL).
pub fn with_prev(conf: &str, prev: &str) -> String {
    let mut v: Value = serde_json::from_str(conf).unwrap();
    v["prevResult"] = serde_json::from_str(prev).unwrap();
    v.to_string()
}

/// `ping -c 1` from inside `ns` to `dst`; true if answered.
pub fn ping(ns: &Netns, dst: &str) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "2", dst])
        .output()
        .is_ok_and(|o| o.status.success())
}
