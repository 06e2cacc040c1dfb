//! Path MTU between nodes (issue 15, item 8): node 0 on subnet 0, node 1
//! on subnet 1, a kernel router between them whose link to subnet 1 (and
//! that whole subnet) has MTU 1400, pods at the tunnel's default MTU
//! (1480 with IPIP, 1450 with VXLAN, both for a 1500-byte underlay),
//! encap `always`. Node 0's outer packets to node 1 no longer fit the
//! router's next link: before podrouter learned path MTUs, a DF ping of
//! the pod MTU got neither a reply nor "frag needed" and TCP hung. Now the
//! router's ICMP teaches node 0 the path MTU to node 1, and pods get frag
//! needed with 1400 minus the tunnel overhead; TCP moves data within
//! seconds; packets without DF are fragmented and cross; the learned entry
//! expires as the kernel's does (`net.ipv4.route.mtu_expires`, 4 s on
//! node 0 here) and is learned again.
use std::time::Duration;

use podrouter_e2e::multinode::*;
use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(10);
const TOOLS: &[&str] = &["ping", "iperf3", "ss", "sysctl", "timeout"];
const NARROW: &str = "1400";
const EXPIRY_SECS: u64 = 4;

/// Subnet 1 and the router's link to it at MTU 1400; node 0 keeps learned
/// path MTUs for [`EXPIRY_SECS`].
fn narrow_subnet_1(u: &Underlay<'_>) {
    let rt = u.router.expect("two subnets have a router");
    rt.exec(&["ip", "link", "set", "r1", "mtu", NARROW])
        .expect_ok();
    u.underlay
        .exec(&["ip", "link", "set", "rt1", "mtu", NARROW])
        .expect_ok();
    for n in u.nodes.iter().filter(|n| n.subnet == 1) {
        let port = format!("n{}", n.index);
        u.underlay
            .exec(&["ip", "link", "set", &port, "mtu", NARROW])
            .expect_ok();
        n.ns.exec(&["ip", "link", "set", "eth0", "mtu", NARROW])
            .expect_ok();
    }
    u.nodes[0]
        .ns
        .exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.route.mtu_expires={EXPIRY_SECS}"),
        ])
        .expect_ok();
}

/// Bytes iperf3 moved from `client` to `server` in `secs` seconds (0 if
/// it hung or failed: it is killed after `secs + 10`).
fn tcp_bytes(client: &Pod, server: &Pod, secs: u32) -> u64 {
    let _srv = spawn_in(
        &server.ns,
        "iperf3 server",
        &["iperf3", "-s", "-1", "-B", &server.ip],
        None,
    );
    let listening = wait_until(Duration::from_secs(5), || {
        run_in(&server.ns, &["ss", "-ltnH", "sport = :5201"])
            .stdout
            .contains("5201")
    });
    assert!(listening, "iperf3 server in {} never listened", server.id);
    let (t, limit) = (secs.to_string(), (secs + 10).to_string());
    let out = run_in(
        &client.ns,
        &[
            "timeout", &limit, "iperf3", "-c", &server.ip, "-t", &t, "-J",
        ],
    );
    let v: Value = match serde_json::from_str(&out.stdout) {
        Ok(v) => v,
        Err(_) => {
            say(&format!("iperf3 printed no JSON: {}", out.text()));
            return 0;
        }
    };
    v.pointer("/end/sum_received/bytes")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The log lines of node 0 saying it learned the path MTU to node 1.
fn learned_lines(c: &Cluster) -> usize {
    let line = format!("path MTU to node {} is {NARROW}", c.nodes[1].ip);
    c.nodes[0].daemon_log().matches(&line).count()
}

/// Pings `b` from `a` with DF and `size` bytes of payload until ping
/// reports "frag needed" (or the kernel's "message too long" once it
/// learned it from that) with `mtu`; the first packet may be lost while
/// node 0 learns. Returns ping's last output.
fn frag_needed_with(a: &Pod, b: &Pod, size: u32, mtu: u32) -> Result<String, String> {
    let (s, want, want_local) = (
        size.to_string(),
        format!("mtu = {mtu}"),
        format!("mtu={mtu}"),
    );
    let mut last = String::new();
    for _ in 0..8 {
        let p = ping(&a.ns, &b.ip, &["-c", "1", "-W", "1", "-M", "do", "-s", &s]);
        if p.text.contains(&want) || p.text.contains(&want_local) {
            return Ok(p.text);
        }
        last = p.text;
    }
    Err(last)
}

fn narrow_path(dataplane: &str, kind: &str, pod_mtu: u32, overhead: u32) {
    let test = format!("pmtu_narrow_link_{kind}");
    if !require(&test, TOOLS) {
        return;
    }
    let mut c = Cluster::start_prepared("always", &[0, 1], dataplane, &narrow_subnet_1);
    let a = c.nodes[0].add_pod("a", &[]);
    let b = c.nodes[1].add_pod("b", &[]);
    assert!(settle(&a.ns, &b.ip, SETTLE), "small pings never crossed");
    let inner = 1400 - overhead;

    // 1. DF at the pod MTU: frag needed with the path MTU less the tunnel.
    let text = frag_needed_with(&a, &b, pod_mtu - 28, inner).unwrap_or_else(|last| {
        panic!("{kind}: a {pod_mtu}-byte DF ping never got frag needed with mtu {inner}:\n{last}")
    });
    say(&format!("{kind}: {}", text.trim()));
    assert!(learned_lines(&c) >= 1, "node 0 did not log the path MTU");
    let status = c.nodes[0].ctl(&["status"]);
    let learned = status["path_mtus"].as_array().cloned().unwrap_or_default();
    assert!(
        learned
            .iter()
            .any(|p| p["node"] == c.nodes[1].ip.as_str() && p["mtu"] == 1400),
        "status does not show path MTU 1400 to node 1: {status:#}"
    );
    let counters = c.nodes[0].counters();
    assert!(
        num(&counters, "/drops/path_mtu_exceeded") >= 1,
        "{counters:#}"
    );
    // What fits the path crosses with DF.
    let fits = (inner - 28).to_string();
    let p = ping(
        &a.ns,
        &b.ip,
        &["-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", &fits],
    );
    assert_eq!(
        p.received, 2,
        "{kind}: DF pings that fit were lost:\n{}",
        p.text
    );

    // 2. TCP from a fresh connection (its MSS starts from the pod MTU):
    // data moves within seconds.
    let bytes = tcp_bytes(&a, &b, 3);
    say(&format!("{kind}: iperf3 a->b moved {bytes} bytes in 3 s"));
    assert!(
        bytes > 1_000_000,
        "{kind}: TCP across the narrow link moved only {bytes} bytes"
    );

    // 3. Without DF: fragmented (inner fragments for VXLAN, the node's
    // kernel fragments the outer IPIP packet), the replies come back.
    let p = ping(
        &a.ns,
        &b.ip,
        &[
            "-c", "2", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "2000",
        ],
    );
    assert_eq!(p.received, 2, "{kind}: fragmented pings lost:\n{}", p.text);

    // 4. The entry expires as the kernel's does, and is learned again by
    // the next packet that does not fit (the pod forgets its own cache).
    let expired = format!("path MTU to node {} expired", c.nodes[1].ip);
    assert!(
        wait_until(Duration::from_secs(EXPIRY_SECS + 4), || c.nodes[0]
            .daemon_log()
            .contains(&expired)),
        "{kind}: the learned path MTU never expired"
    );
    run_in(&a.ns, &["ip", "route", "flush", "cache"]).expect_ok();
    frag_needed_with(&a, &b, pod_mtu - 28, inner)
        .unwrap_or_else(|last| panic!("{kind}: not learned again after expiry:\n{last}"));
    assert!(
        learned_lines(&c) >= 2,
        "{kind}: expected a second 'path MTU' line after expiry:\n{}",
        c.nodes[0].daemon_log()
    );
}

#[test]
fn pmtu_narrow_link_ipip() {
    narrow_path("", "ipip", 1480, 20);
}

#[test]
fn pmtu_narrow_link_vxlan() {
    narrow_path("tunnel = \"vxlan\"\n", "vxlan", 1450, 50);
}
