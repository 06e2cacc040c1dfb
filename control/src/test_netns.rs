//! Test support (compiled only for `cargo test`): a scratch network
//! namespace for the privileged unit tests of this crate (netlink, pod and
//! uplink plumbing). Made with `ip netns add` under a name unique to the
//! process and the call, deleted on drop, also when the test panics.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

pub struct TestNetns {
    pub name: String,
    pub path: PathBuf,
}

impl TestNetns {
    /// A new, empty namespace; `role` shows in its name (`prtest-PID-N-role`).
    pub fn new(role: &str) -> TestNetns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("prtest-{}-{n}-{role}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        let path = PathBuf::from(format!("/run/netns/{name}"));
        TestNetns { name, path }
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip -n {} {args:?}", self.name);
    }

    /// `ip -n NS -j ARGS`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} -j {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A veth pair `a`/`b` inside the namespace, both up (this machine
    /// has no dummy module).
    pub fn veth_pair(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", b, "up"]);
        self.ip(&["link", "set", a, "up"]);
    }

    /// Runs `f` on a thread inside the namespace, as if it were the node's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        crate::netns::run_in_netns(&self.path, f).unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
