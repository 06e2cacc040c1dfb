//! Scratch network namespaces. A named one ([`Netns`], `ip netns add`) is
//! called `prt<pid>-<n>-<tag>`; dropping its guard (also while a test
//! panics) kills whatever still runs inside it, by pid (only processes the
//! test started can be there), and deletes it. Namespaces whose `<pid>`
//! process is gone (killed by a timeout, say) are removed by the next
//! process that makes one. An anonymous one ([`in_private_netns`]) lives on
//! one thread and disappears with it.
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;

use serde_json::Value;

use crate::{sys, unique};

/// The prefix of every namespace [`Netns`] creates.
pub const PREFIX: &str = "prt";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates `prt<pid>-<n>-<tag>` and brings its loopback up.
    #[track_caller]
    pub fn new(tag: &str) -> Netns {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            let stale = stale_namespaces(PREFIX);
            if !stale.is_empty() {
                eprintln!(
                    "removing {} test namespaces whose process is gone: {}",
                    stale.len(),
                    stale.join(" ")
                );
                delete_noisily(&stale);
            }
        });
        let name = format!("{}-{tag}", unique(PREFIX));
        ip_ok(&["netns", "add", &name]);
        let ns = Netns {
            name,
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what `setns` and `attach --netns` take.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS`, which must succeed; returns its stdout.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ip_ok(&a)
    }

    /// `ip -n NAME -j ARGS`, parsed.
    #[track_caller]
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = self.ip(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "ip -n {} -j {args:?} printed no JSON ({e}): {out}",
                self.name
            )
        })
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments and run it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A veth pair `a`/`b` inside the namespace, both up.
    #[track_caller]
    pub fn veth_pair(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", b, "up"]);
        self.ip(&["link", "set", a, "up"]);
    }

    /// The interface names in the namespace, loopback excluded.
    #[track_caller]
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| *n != "lo")
            .map(str::to_string)
            .collect()
    }

    /// The IPv4 addresses on `dev`, as `a.b.c.d/len`.
    #[track_caller]
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        self.ip_json(&["-4", "addr", "show", "dev", dev])
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect()
    }

    /// Deletes the namespace now (what drop does; later calls do nothing).
    pub fn delete(&mut self) {
        if !self.deleted {
            self.deleted = true;
            delete_noisily(std::slice::from_ref(&self.name));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

#[track_caller]
fn ip_ok(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the named namespaces, last first, after killing (by pid) every
/// process still inside them. Callers pass only namespaces they created, so
/// those processes are theirs. `note` hears about each kill; returns the
/// names that could not be deleted.
pub fn delete_namespaces(names: &[String], note: &dyn Fn(&str)) -> Vec<String> {
    for n in names {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", n]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<u32>() {
                    note(&format!("netns {n}: killing leftover pid {pid}"));
                    sys::kill(pid);
                }
            }
        }
    }
    // One `ip -batch` per 200 names: thousands of namespaces (the benchmark
    // harness) go in seconds.
    for chunk in names.rchunks(200) {
        let lines: String = chunk
            .iter()
            .rev()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        let batch = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                if let Some(mut i) = c.stdin.take() {
                    std::io::Write::write_all(&mut i, lines.as_bytes())?;
                }
                c.wait()
            });
        if !batch.is_ok_and(|s| s.success()) {
            for n in chunk {
                let _ = Command::new("ip")
                    .args(["netns", "del", n])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    names
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .cloned()
        .collect()
}

/// [`delete_namespaces`] for the tests: notes and failures on stderr.
fn delete_noisily(names: &[String]) {
    for n in delete_namespaces(names, &|m| eprintln!("{m}")) {
        eprintln!("warning: could not delete netns {n}");
    }
}

/// Namespaces `<prefix><pid>-...` whose `<pid>` process no longer exists
/// (and is not this one), sorted: what a killed test or harness left.
pub fn stale_namespaces(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut stale: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            let Some(pid) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                return false;
            };
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
        .collect();
    stale.sort();
    stale
}

/// Runs `f` on a thread of its own inside a new, empty network namespace
/// with its loopback up; the namespace (and every TAP or veth in it) goes
/// when the thread ends and nothing else refers to it. A panic in `f` is
/// passed on unchanged.
pub fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            enter_private_netns().expect("private network namespace");
            f()
        });
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Moves the calling thread into a new, empty network namespace and brings
/// its loopback up (for tests that run several threads, each in its own).
pub fn enter_private_netns() -> std::io::Result<()> {
    sys::unshare_netns()?;
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .stdin(Stdio::null())
        .status()?;
    if !st.success() {
        return Err(std::io::Error::other(format!(
            "ip link set lo up in a private namespace: {st}"
        )));
    }
    Ok(())
}
