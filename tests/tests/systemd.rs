//! Running podrouterd as a systemd service: `systemd-analyze verify`
//! accepts deploy/systemd/podrouterd.service, and podrouterd's READY=1
//! reaches `$NOTIFY_SOCKET` only once its pods are restored and its API
//! answers, STOPPING=1 when it stops.
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podrouter_e2e::*;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/podrouterd.service")
}

fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_unit_is_a_notify_service_with_the_capabilities_it_needs() {
    let text = fs::read_to_string(unit_path()).expect("read the unit");
    assert_eq!(unit_values(&text, "Type"), ["notify"]);
    assert_eq!(unit_values(&text, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&text, "NoNewPrivileges"), ["yes"]);
    assert_eq!(unit_values(&text, "DeviceAllow"), ["/dev/net/tun rw"]);
    let caps = unit_values(&text, "CapabilityBoundingSet").join(" ");
    for cap in ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF", "CAP_NET_RAW"] {
        assert!(caps.split(' ').any(|c| c == cap), "no {cap} in {caps}");
    }
    let families = unit_values(&text, "RestrictAddressFamilies").join(" ");
    for f in ["AF_NETLINK", "AF_XDP", "AF_UNIX", "AF_INET"] {
        assert!(families.split(' ').any(|x| x == f), "no {f} in {families}");
    }
    // /proc/sys must stay writable (ip_forward, the VXLAN TAP's sysctls).
    assert!(unit_values(&text, "ProtectKernelTunables").is_empty());
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !require(
        "systemd_analyze_verify_accepts_the_unit",
        &["systemd-analyze"],
    ) {
        return;
    }
    // verify checks that ExecStart exists: point it at the built binary.
    let dir = TempDir::new("unit");
    let text = fs::read_to_string(unit_path()).expect("read the unit");
    let daemon = bin("podrouterd");
    let text = text.replace("/usr/local/bin/podrouterd", &daemon.to_string_lossy());
    let unit = dir.join("podrouterd.service");
    fs::write(&unit, text).unwrap();
    let out = run_env(
        &["systemd-analyze", "verify", &unit.to_string_lossy()],
        &[("SYSTEMD_LOG_LEVEL", "notice")],
    );
    assert!(out.ok(), "systemd-analyze verify refused the unit: {out}");
    // Unknown keys and misplaced options are only warnings: none allowed.
    assert!(
        out.stderr.trim().is_empty() && out.stdout.trim().is_empty(),
        "systemd-analyze verify complained: {out}"
    );
}

/// Reads one datagram, waiting up to `timeout`.
fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn ready_is_sent_only_after_pods_and_routes_are_restored() {
    if !require("ready_is_sent_only_after_pods_and_routes_are_restored", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("notify-a", &[]);
    let b = node.add_pod("notify-b", &[]);
    let status = node.stop_daemon("TERM");
    assert_eq!(status.code(), Some(0), "SIGTERM exit status: {status}");

    let notify = node.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).expect("bind the notify socket");
    let d = bin("podrouterd");
    let env = format!("NOTIFY_SOCKET={}", notify.display());
    let log = node.dir.join("notify-podrouterd.log");
    let _log = LogOnPanic(log.clone());
    let mut daemon = node.ns.spawn(
        "podrouterd",
        &[
            "env",
            &env,
            &d.to_string_lossy(),
            "--config",
            &node.config.to_string_lossy(),
        ],
        Some(&log),
    );

    let ready = recv(&sock, Duration::from_secs(20)).expect("no READY=1 within 20 s");
    // The moment READY=1 arrives, everything restored must already be
    // there: the API answers with both pods, the node routes their /32s.
    let pods = node.ctl(&["pods"]);
    let routes = node.ns.exec(&["ip", "route", "show"]).expect_ok().stdout;
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "first datagram is not READY=1: {ready:?}"
    );
    assert!(
        ready.contains("STATUS=serving, 2 pod(s)"),
        "READY=1 sent before the pods were restored: {ready:?}"
    );
    let ids: Vec<_> = pods
        .as_array()
        .expect("pods list")
        .iter()
        .map(|p| p["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids, ["notify-a", "notify-b"], "pods at READY=1: {pods:#}");
    for p in [&a, &b] {
        assert!(
            routes.lines().any(|l| l.starts_with(&format!("{} ", p.ip))),
            "no route to {} when READY=1 arrived:\n{routes}",
            p.ip
        );
    }
    // Exactly one READY=1, then STOPPING=1 on a clean stop.
    assert_eq!(recv(&sock, Duration::from_millis(300)), None);
    let status = daemon
        .stop_with("TERM", Duration::from_secs(10))
        .expect("podrouterd ignored SIGTERM");
    assert_eq!(status.code(), Some(0));
    let stopping = recv(&sock, Duration::from_secs(2)).expect("no STOPPING=1");
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "not STOPPING=1: {stopping:?}"
    );
}
