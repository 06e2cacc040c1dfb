//! `podrouter-testkit`: what every crate's tests share, written once.
//!
//! - [`gate`]: the one rule for tests that need root, TAP devices, a tool
//!   or a binary: they run, or fail under `PODROUTER_E2E_REQUIRE=1`, or
//!   print `SKIP <test>: <reasons>` and return. Never a silent pass.
//! - [`netns`]: scratch network namespaces (named ones with a guard that
//!   kills what runs inside and deletes them on drop; anonymous ones on a
//!   thread), and the batch delete and stale sweep the benchmark harness
//!   uses too.
//! - [`TempDir`]: a directory removed on drop.
//! - [`unique`]: names unique to the process and the call.
//!
//! It depends on no podrouter crate, so any crate may use it (as a
//! dev-dependency; `podrouter-e2e`'s helpers and the benchmark harness as a
//! normal one). Its only `unsafe` is in `sys`.
use std::sync::atomic::{AtomicU32, Ordering};

pub mod gate;
pub mod netns;
mod sys;
mod tempdir;

pub use gate::{have_command, is_root, privileged, Needs};
pub use netns::{in_private_netns, Netns};
pub use sys::monotonic_secs;
pub use tempdir::TempDir;

/// `<prefix><pid>-<n>`, with `n` counting up in this process: unique among
/// the processes running at once.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let (a, b) = (unique("x"), unique("x"));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("x{}-", std::process::id())), "{a}");
    }

    /// A named namespace: exists with its loopback up, holds a veth pair,
    /// and is gone after drop together with a process left running in it.
    #[test]
    fn netns_is_created_and_cleaned_up() {
        if !privileged("netns_is_created_and_cleaned_up") {
            return;
        }
        let ns = Netns::new("kit");
        let name = ns.name().to_string();
        assert!(
            name.starts_with(&format!("prt{}-", std::process::id())),
            "{name}"
        );
        assert!(std::path::Path::new(&ns.path()).exists());
        let lo = ns.ip_json(&["link", "show", "lo"]);
        assert!(lo.to_string().contains("\"UP\""), "{lo}");
        ns.veth_pair("kit0", "kit1");
        ns.ip(&["addr", "add", "10.9.9.1/24", "dev", "kit0"]);
        assert_eq!(ns.links().len(), 2, "{:?}", ns.links());
        assert_eq!(ns.addrs("kit0"), vec!["10.9.9.1/24".to_string()]);
        let mut sleeper = ns.command("sleep").arg("600").spawn().unwrap();
        // `ip netns exec` enters the namespace after the spawn returns; a
        // process not inside yet is invisible to the guard (and to `ip
        // netns pids`), so wait until it is in before dropping.
        let pid = sleeper.id().to_string();
        let inside = || {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", &name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .any(|p| p == pid)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !inside() {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep never entered {name}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(ns);
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
        let st = sleeper.wait().unwrap();
        assert!(!st.success(), "the leftover process was killed: {st}");
    }

    /// A panicking test still deletes its namespace.
    #[test]
    fn netns_is_deleted_when_the_test_panics() {
        if !privileged("netns_is_deleted_when_the_test_panics") {
            return;
        }
        let r = std::panic::catch_unwind(|| {
            let ns = Netns::new("kitpanic");
            panic!("{}", ns.path());
        });
        let path = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
    }

    /// A private namespace is not the caller's, and a panic inside comes
    /// back out with its message.
    #[test]
    fn private_netns_is_separate() {
        if !privileged("private_netns_is_separate") {
            return;
        }
        let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let there = in_private_netns(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
        assert_ne!(here, there);
        let r = std::panic::catch_unwind(|| in_private_netns(|| panic!("inside")));
        assert_eq!(*r.unwrap_err().downcast::<&str>().unwrap(), "inside");
    }
}
