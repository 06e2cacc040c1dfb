//! `podrouterctl capture` and `trace` on a live node: what they write is
//! read back by tshark (a capture of a ping, a filtered capture, dropped
//! frames with their reason, `-w -` into a pipe, a port chosen by name, the
//! uplink of a two-node cluster) and a trace of one ping names the stages
//! and the egress port.
use std::fs;
use std::path::Path;
use std::time::Duration;

use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(5);
/// How long a capture or trace client may take to finish.
const FINISH: Duration = Duration::from_secs(15);

/// Starts `podrouterctl ARGS` in the background (output to `log`) and
/// waits until it says the tap is armed.
fn start_ctl(node: &Node, log: &Path, args: &[&str]) -> Bg {
    let ctl = bin("podrouterctl");
    let socket = node.socket.to_string_lossy().into_owned();
    let mut full = vec![ctl.to_str().unwrap(), "--socket", &socket];
    full.extend_from_slice(args);
    let bg = Bg::spawn("podrouterctl", &full, Some(log));
    let armed = wait_until(SETTLE, || {
        let l = fs::read_to_string(log).unwrap_or_default();
        l.contains("capturing on") || l.contains("tracing")
    });
    assert!(
        armed,
        "podrouterctl never armed its tap:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
    bg
}

/// Waits for a background client to exit by itself; its output.
#[track_caller]
fn finish(mut bg: Bg, log: &Path) -> String {
    let status = wait_timeout(&mut bg.child, FINISH);
    let out = fs::read_to_string(log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("podrouterctl did not stop by itself:\n{out}"));
    assert!(status.success(), "podrouterctl failed ({status}):\n{out}");
    out
}

/// `tshark -r FILE -T fields -e ...`, one line per frame.
fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<String> {
    let f = file.to_string_lossy();
    let mut args = vec!["tshark", "-r", &f, "-T", "fields", "-E", "separator=,"];
    for field in fields {
        args.extend(["-e", field]);
    }
    let out = run(&args).expect_ok();
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn capture_of_a_ping_between_pods_reads_back_in_tshark() {
    if !require(
        "capture_of_a_ping_between_pods_reads_back_in_tshark",
        &["ping", "tshark"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));

    // Both directions of pod-a's port: its requests in, the replies out.
    let file = node.dir.join("ping.pcapng");
    let log = node.dir.join("capture.log");
    let f = file.to_string_lossy().into_owned();
    let bg = start_ctl(
        &node,
        &log,
        &[
            "capture", "--pod", &a.id, "--filter", "icmp", "--count", "4", "-w", &f,
        ],
    );
    let p = ping(&a.ns, &b.ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert_eq!(p.received, 2, "{}", p.text);
    let out = finish(bg, &log);
    assert!(out.contains("4 frames captured, 0 lost"), "{out}");
    let frames = tshark_fields(&file, &["ip.src", "ip.dst", "icmp.type", "frame.len"]);
    let (req, rep) = (
        format!("{},{},8,", a.ip, b.ip),
        format!("{},{},0,", b.ip, a.ip),
    );
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert_eq!(
        frames.iter().filter(|l| l.starts_with(&req)).count(),
        2,
        "{frames:?}"
    );
    assert_eq!(
        frames.iter().filter(|l| l.starts_with(&rep)).count(),
        2,
        "{frames:?}"
    );
    // 98 bytes: Ethernet + IPv4 + ICMP with ping's 56 data bytes.
    assert!(frames.iter().all(|l| l.ends_with(",98")), "{frames:?}");

    // -w - into a pipe: tshark reads the stream as it comes.
    let text = node.dir.join("pipe.txt");
    let err = node.dir.join("pipe.err");
    let script = format!(
        "{} --socket {} capture --pod {} --filter 'icmp and src host {}' --count 2 -w - 2>{} \
         | tshark -r - -T fields -E separator=, -e ip.src -e ip.dst -e icmp.type > {}",
        bin("podrouterctl").display(),
        node.socket.display(),
        a.id,
        a.ip,
        err.display(),
        text.display()
    );
    let mut bg = Bg::spawn("capture | tshark", &["sh", "-c", &script], None);
    assert!(wait_until(SETTLE, || fs::read_to_string(&err)
        .unwrap_or_default()
        .contains("capturing on")));
    let p = ping(&a.ns, &b.ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert_eq!(p.received, 2, "{}", p.text);
    let status = wait_timeout(&mut bg.child, FINISH).expect("the pipe ends with the capture");
    assert!(
        status.success(),
        "{}",
        fs::read_to_string(&err).unwrap_or_default()
    );
    let piped = fs::read_to_string(&text).unwrap();
    assert_eq!(
        piped.lines().collect::<Vec<_>>(),
        vec![format!("{},{},8", a.ip, b.ip); 2],
        "{piped}"
    );

    // No count, no duration: Ctrl-C ends it cleanly (statistics written)
    // and disarms the tap, so the next capture is not refused as busy.
    let bg = start_ctl(&node, &log, &["capture", "--pod", &a.id, "-w", &f]);
    assert!(signal(bg.pid(), "INT"));
    let out = finish(bg, &log);
    assert!(
        out.contains("stopped: the client closed the stream"),
        "{out}"
    );
    let bg = start_ctl(
        &node,
        &log,
        &["capture", "--pod", &a.id, "--duration", "0.5", "-w", &f],
    );
    finish(bg, &log);

    // A filter that does not parse is refused with its position.
    let bad = node.ctl_table(&[
        "capture",
        "--pod",
        &a.id,
        "--filter",
        "icmp andd host 1.2.3.4",
        "-w",
        &f,
    ]);
    assert_eq!(bad.code(), 1, "{bad}");
    assert!(bad.stderr.contains("at character 6"), "{bad}");
    // And the node forwards as before once the captures are over.
    assert_ping(&a.ns, &b.ip, 2, 63);
}

#[test]
fn a_filtered_capture_keeps_only_what_matches() {
    if !require(
        "a_filtered_capture_keeps_only_what_matches",
        &["ping", "tshark"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    let c = node.add_pod("pod-c", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    assert!(ping_until_reply(&a.ns, &c.ip, SETTLE));

    let file = node.dir.join("filtered.pcapng");
    let log = node.dir.join("capture.log");
    let f = file.to_string_lossy().into_owned();
    let filter = format!("icmp and dst host {} and not src host {}", c.ip, b.ip);
    let bg = start_ctl(
        &node,
        &log,
        &[
            "capture",
            "--pod",
            &a.id,
            "--filter",
            &filter,
            "--duration",
            "3",
            "-w",
            &f,
        ],
    );
    for dst in [&b.ip, &c.ip] {
        let p = ping(&a.ns, dst, &["-c", "3", "-i", "0.2", "-W", "2"]);
        assert_eq!(p.received, 3, "{}", p.text);
    }
    let out = finish(bg, &log);
    assert!(out.contains("duration over"), "{out}");
    let frames = tshark_fields(&file, &["ip.src", "ip.dst", "icmp.type"]);
    assert_eq!(
        frames,
        vec![format!("{},{},8", a.ip, c.ip); 3],
        "only a's requests to c"
    );
}

#[test]
fn a_drops_capture_shows_a_spoofed_packet_with_its_reason() {
    if !require(
        "a_drops_capture_shows_a_spoofed_packet_with_its_reason",
        &["ping", "tshark"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let spoof = "10.244.0.50";
    a.exec(&["ip", "addr", "add", &format!("{spoof}/32"), "dev", "eth0"])
        .expect_ok();

    // Without --drops the dropped frame is left out; with it, it is there
    // with its reason.
    for drops in [false, true] {
        let file = node.dir.join(&format!("drops-{drops}.pcapng"));
        let log = node.dir.join(&format!("drops-{drops}.log"));
        let f = file.to_string_lossy().into_owned();
        let filter = format!("src host {spoof}");
        let mut args = vec![
            "capture",
            "--pod",
            &a.id,
            "--filter",
            &filter,
            "--duration",
            "2",
            "-w",
            &f,
        ];
        if drops {
            args.push("--drops");
        }
        let bg = start_ctl(&node, &log, &args);
        let p = ping(&a.ns, &b.ip, &["-c", "1", "-W", "1", "-I", spoof]);
        assert_eq!(p.received, 0, "{}", p.text);
        finish(bg, &log);
        let frames = tshark_fields(&file, &["ip.src", "ip.dst", "frame.comment"]);
        if drops {
            assert_eq!(
                frames,
                vec![format!("{spoof},{},dropped: spoofed_source", b.ip)]
            );
        } else {
            assert!(frames.is_empty(), "{frames:?}");
        }
    }
}

#[test]
fn a_trace_of_one_ping_shows_the_stages_and_the_egress_port() {
    if !require(
        "a_trace_of_one_ping_shows_the_stages_and_the_egress_port",
        &["ping"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let b_port = node
        .ctl(&["pods"])
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == "pod-b").cloned())
        .expect("pod-b listed");
    let log = node.dir.join("trace.log");
    let bg = start_ctl(
        &node,
        &log,
        &["trace", "--pod", &a.id, "--count", "1", "--filter", "icmp"],
    );
    let p = ping(&a.ns, &b.ip, &["-c", "1", "-W", "2"]);
    assert_eq!(p.received, 1, "{}", p.text);
    let out = finish(bg, &log);
    say(&format!("the trace:\n{out}"));
    for stage in [
        format!("ipv4       {} -> {} icmp type 8 code 0 ttl 64", a.ip, b.ip),
        format!("fib        {}/32 -> local pod on ", b.ip),
        "route      egress ".to_string(),
        "policy     allowed".to_string(),
        "rewrite    ttl 63".to_string(),
        "verdict    forward to ".to_string(),
        "1 frame(s) traced, 0 lost".to_string(),
    ] {
        assert!(
            out.contains(&stage),
            "no {stage:?} in the trace:\n{out}\npod-b: {b_port:#}"
        );
    }
    let verdict = out.lines().find(|l| l.contains("verdict")).unwrap();
    let port = b_port["port"].as_u64().expect("pod-b's port id");
    assert!(
        verdict.ends_with(&format!("(port {port})")),
        "{verdict}\npod-b: {b_port:#}"
    );
}

/// The names of a node's ports (`podrouterctl --json counters`).
fn port_names(counters: &serde_json::Value) -> Vec<String> {
    counters["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_capture_by_port_name_on_the_host_port_shows_a_ping_to_the_node() {
    if !require(
        "a_capture_by_port_name_on_the_host_port_shows_a_ping_to_the_node",
        &["ping", "tshark"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let node_ip = node.cfg.node_ip.clone();
    assert!(ping_until_reply(&a.ns, &node_ip, SETTLE));
    // The host port is the one port that is neither a pod's nor a tunnel's.
    let names = port_names(&podrouterctl_json(&node.socket, &["counters"]));
    let host: Vec<&String> = names.iter().filter(|n| !n.contains('@')).collect();
    assert_eq!(host.len(), 1, "expected one host port among {names:?}");
    let host = host[0].clone();

    let file = node.dir.join("host.pcapng");
    let log = node.dir.join("capture-host.log");
    let f = file.to_string_lossy().into_owned();
    let bg = start_ctl(
        &node,
        &log,
        &[
            "capture", "--port", &host, "--filter", "icmp", "--count", "4", "-w", &f,
        ],
    );
    let p = ping(&a.ns, &node_ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert_eq!(p.received, 2, "{}", p.text);
    let out = finish(bg, &log);
    assert!(out.contains(&format!("capturing on {host}")), "{out}");
    assert!(out.contains("4 frames captured, 0 lost"), "{out}");
    // The requests leave the router towards the node, the replies come back
    // from it: both directions of the host port.
    let frames = tshark_fields(&file, &["ip.src", "ip.dst", "icmp.type"]);
    let req = format!("{},{node_ip},8", a.ip);
    let rep = format!("{node_ip},{},0", a.ip);
    assert_eq!(
        frames.iter().filter(|l| **l == req).count(),
        2,
        "{frames:?}"
    );
    assert_eq!(
        frames.iter().filter(|l| **l == rep).count(),
        2,
        "{frames:?}"
    );

    // A port that does not exist is refused with the hint, and nothing runs.
    let out = podrouterctl(
        &node.socket,
        false,
        &["capture", "--port", "no-such-port", "-w", "/dev/null"],
    );
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("no port named no-such-port"), "{out}");
}

#[test]
fn a_capture_on_the_uplink_shows_the_tunnelled_ping() {
    if !require(
        "a_capture_on_the_uplink_shows_the_tunnelled_ping",
        &["ping", "tshark"],
    ) {
        return;
    }
    let mut c = podrouter_e2e::multinode::Cluster::start("always", &[0, 0]);
    let a = c.nodes[0].add_pod("cap-a", &[]);
    let b = c.nodes[1].add_pod("cap-b", &[]);
    assert!(podrouter_e2e::multinode::settle(&a.ns, &b.ip, SETTLE));

    let dir = TempDir::new("capup");
    let file = dir.join("uplink.pcapng");
    let log = dir.join("capture-uplink.log");
    let f = file.to_string_lossy().into_owned();
    let socket = c.nodes[0].socket.to_string_lossy().into_owned();
    let ctl = bin("podrouterctl");
    let mut bg = Bg::spawn(
        "podrouterctl",
        &[
            ctl.to_str().unwrap(),
            "--socket",
            &socket,
            "capture",
            "--uplink",
            "--count",
            "4",
            "-w",
            &f,
        ],
        Some(&log),
    );
    assert!(wait_until(SETTLE, || fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("capturing on")));
    let p = ping(&a.ns, &b.ip, &["-c", "2", "-i", "0.2", "-W", "2"]);
    assert_eq!(p.received, 2, "{}", p.text);
    let status = wait_timeout(&mut bg.child, FINISH);
    let out = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains("capturing on ipip@"), "{out}");
    // Sent: recorded before encapsulation (README); received: with the
    // outer IPIP header, so tshark lists both IPv4 layers (outer first).
    let frames = tshark_fields(&file, &["ip.src", "ip.dst", "ip.proto", "icmp.type"]);
    let (n0, n1) = (&c.nodes[0].ip, &c.nodes[1].ip);
    let sent = format!("{},{},1,8", a.ip, b.ip);
    let received = format!("{n1},{},{n0},{},4,1,0", b.ip, a.ip);
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert_eq!(
        frames.iter().filter(|l| **l == sent).count(),
        2,
        "{frames:?}"
    );
    assert_eq!(
        frames.iter().filter(|l| **l == received).count(),
        2,
        "{frames:?}"
    );
}
