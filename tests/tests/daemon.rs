//! podrouterd as a process: bad configs, signals, embedded defaults.
use std::fs;
use std::time::Duration;

use podrouter_e2e::*;

/// Runs `podrouterd --config FILE` on a file that must be refused. As root it
/// runs inside a throwaway netns, so a config wrongly accepted cannot touch
/// the host's network.
fn run_bad_config(dir: &TempDir, name: &str, text: &str) -> Out {
    let file = dir.join(name);
    fs::write(&file, text).unwrap();
    let d = bin("podrouterd");
    let (d, f) = (d.to_string_lossy(), file.to_string_lossy());
    if is_root() {
        let ns = Netns::new("badcfg");
        ns.exec(&["timeout", "10", &d, "--config", &f])
    } else {
        run(&["timeout", "10", &d, "--config", &f])
    }
}

#[test]
fn bad_config_names_key_and_line_and_exits_2() {
    if !require_binaries("bad_config_names_key_and_line_and_exits_2") {
        return;
    }
    let dir = TempDir::new("badcfg");
    // Keep a wrongly accepted config away from the real socket and state.
    let head = format!(
        "api_socket = \"{}\"\nstate_dir = \"{}\"\n",
        dir.join("s.sock").display(),
        dir.join("state").display()
    );
    // (body, key the message must name, line it must name; head is 2 lines)
    let cases: &[(&str, &str, usize)] = &[
        ("node_name = \"n\"\n[dataplane]\nmtu = 70000\n", "mtu", 5),
        ("node_name = \"n\"\n\nnode_nmae = \"x\"\n", "node_nmae", 5),
        ("node_ip = \"10.0.0.300\"\n", "node_ip", 3),
        ("pod_cidrs = [\"10.244.0.1/24\"]\n", "pod_cidrs", 3),
        ("[dataplane]\nworkers = 2\ncores = [0]\n", "cores", 5),
        ("[dataplane]\nencap = \"sometimes\"\n", "encap", 4),
        ("log_level = \"chatty\"\n", "log_level", 3),
    ];
    for (i, (body, key, line)) in cases.iter().enumerate() {
        let out = run_bad_config(&dir, &format!("bad{i}.toml"), &format!("{head}{body}"));
        assert_eq!(out.code(), 2, "config\n{head}{body}must exit 2: {out}");
        assert!(
            out.stderr.contains(key),
            "stderr must name the key `{key}`: {out}"
        );
        assert!(
            out.stderr.contains(&format!("line {line}")),
            "stderr must name line {line}: {out}"
        );
    }
    // A missing file is a bad config too, named in the message.
    let d = bin("podrouterd");
    let missing = dir.join("does-not-exist.toml");
    let out = run(&[
        "timeout",
        "10",
        &d.to_string_lossy(),
        "--config",
        &missing.to_string_lossy(),
    ]);
    assert_eq!(out.code(), 2, "missing config file must exit 2: {out}");
    assert!(
        out.stderr.contains("does-not-exist.toml"),
        "stderr must name the file: {out}"
    );
}

#[test]
fn sigterm_and_sigint_exit_cleanly() {
    if !require("sigterm_and_sigint_exit_cleanly", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let status = node.stop_daemon("TERM");
    assert_eq!(status.code(), Some(0), "exit status on SIGTERM: {status}");
    assert!(
        !node.daemon_log().trim().is_empty(),
        "podrouterd logged nothing to stderr"
    );
    node.start_daemon();
    let status = node.stop_daemon("INT");
    assert_eq!(status.code(), Some(0), "exit status on SIGINT: {status}");
}

/// Removes the default directories if this test created them on the host
/// (they are only mount points for private tmpfs mounts), once the daemon is
/// gone.
struct RmdirCreated(std::path::PathBuf);

impl Drop for RmdirCreated {
    fn drop(&mut self) {
        if let Ok(list) = fs::read_to_string(&self.0) {
            for d in list.lines() {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

#[test]
fn runs_on_embedded_defaults_without_config() {
    let name = "runs_on_embedded_defaults_without_config";
    if !require(
        name,
        &["unshare", "nsenter", "sh", "mount", "stat", "sleep"],
    ) {
        return;
    }
    let dir = TempDir::new("defaults");
    let created = dir.join("created");
    let _rmdir = RmdirCreated(created.clone());
    let node = Netns::new("dflt");
    let pod = Netns::new("pod");
    // The daemon gets a private mount namespace with tmpfs over the default
    // socket and state directories, so the defaults are used for real
    // without touching the host's /run/podrouter or /var/lib/podrouter.
    let script = format!(
        "set -e; for d in /run/podrouter /var/lib/podrouter; do \
           if [ ! -d $d ]; then mkdir -p $d; echo $d >> {c}; fi; \
           mount -t tmpfs -o mode=0755 podrouter-e2e $d; done; exec {d}",
        c = created.display(),
        d = bin("podrouterd").display()
    );
    let log = dir.join("podrouterd.log");
    let _log_guard = LogOnPanic(log.clone());
    let mut daemon = node.spawn(
        "podrouterd (defaults)",
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
        Some(&log),
    );
    let pid = daemon.pid().to_string();
    let show_log = || fs::read_to_string(&log).unwrap_or_default();
    let ctl = |args: &[&str]| -> Out {
        let c = bin("podrouterctl");
        let c = c.to_string_lossy();
        let mut full = vec![
            "nsenter",
            "-t",
            &pid,
            "-m",
            "-n",
            "env",
            "-u",
            "PODROUTER_SOCKET",
        ];
        full.push(&c);
        full.push("--json");
        full.extend_from_slice(args);
        run(&full)
    };
    let ready = wait_until(Duration::from_secs(20), || {
        if let Ok(Some(s)) = daemon.child.try_wait() {
            panic!("podrouterd exited with {s}; log:\n{}", show_log());
        }
        ctl(&["status"]).ok()
    });
    assert!(
        ready,
        "podrouterd (defaults) never answered; log:\n{}",
        show_log()
    );

    let status: Value = serde_json::from_str(&ctl(&["status"]).expect_ok().stdout).unwrap();
    assert_eq!(
        status["pod_cidrs"],
        serde_json::json!(["10.244.0.0/24"]),
        "{status:#}"
    );
    assert_eq!(status["backend"], "tap", "embedded default: {status:#}");
    assert_eq!(status["api_version"], 1, "{status:#}");
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        status["node_name"],
        host.trim(),
        "default node_name is the host name"
    );

    let sock = run(&[
        "nsenter",
        "-t",
        &pid,
        "-m",
        "stat",
        "-c",
        "%F %a %U",
        "/run/podrouter/podrouter.sock",
    ]);
    assert_eq!(
        sock.stdout.trim(),
        "socket 600 root",
        "default API socket /run/podrouter/podrouter.sock, root-owned, mode 0600: {sock}"
    );
    let hp = node.exec(&["ip", "link", "show", "podrouter0"]);
    assert!(
        hp.ok(),
        "host port podrouter0 missing in the node netns: {hp}"
    );

    // Attach by /proc/PID/ns/net, the other netns path form.
    let sleeper = pod.spawn("sleep", &["sleep", "120"], None);
    let path = format!("/proc/{}/ns/net", sleeper.pid());
    // `ip netns exec` joins the namespace after it starts: wait until the
    // process is really in it, or we would attach to the host's namespace.
    let in_pod = wait_until(Duration::from_secs(5), || {
        let ino = |p: &str| fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        matches!((ino(&path), ino(&pod.path())), (Ok(a), Ok(b)) if a == b)
    });
    assert!(in_pod, "sleep never entered {}", pod.name());
    let info: Value =
        serde_json::from_str(&ctl(&["attach", "p1", "--netns", &path]).expect_ok().stdout).unwrap();
    assert_eq!(
        info["ip"], "10.244.0.1",
        "first usable address of the default block: {info:#}"
    );
    let addr = pod
        .exec(&["ip", "-j", "addr", "show", "dev", "eth0"])
        .expect_ok();
    assert!(addr.stdout.contains("\"local\":\"10.244.0.1\""), "{addr}");
    let state = run(&[
        "nsenter",
        "-t",
        &pid,
        "-m",
        "sh",
        "-c",
        "find /var/lib/podrouter -type f | head",
    ]);
    assert!(
        !state.stdout.trim().is_empty(),
        "no state persisted under the default /var/lib/podrouter: {state}"
    );

    let st = daemon.stop_with("TERM", Duration::from_secs(10));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "SIGTERM exit; log:\n{}",
        show_log()
    );
    drop(sleeper);
}
