//! ICMP errors the router generates: destination unreachable, time
//! exceeded, fragmentation needed, and their rate limit. Each is checked in
//! ping's output (what a user sees) and in a capture on the pod's interface
//! (type and code on the wire), and in the drop counters.
use std::time::Duration;

use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn unassigned_pod_address_gets_host_unreachable() {
    if !require(
        "unassigned_pod_address_gets_host_unreachable",
        &["ping", "tcpdump"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    assert!(
        ping_until_reply(&a.ns, NODE_IP, SETTLE),
        "pod not forwarding at all"
    );
    let before = node.counters();
    let cap = Capture::start(&a.ns, "eth0", "icmp");
    let p = ping(&a.ns, "10.244.0.200", &["-c", "2", "-i", "0.3", "-W", "1"]);
    let wire = cap.stop();
    let after = node.counters();
    assert_eq!(p.received, 0, "{}", p.text);
    assert!(
        p.text.contains(&format!(
            "From {NODE_IP} icmp_seq=1 Destination Host Unreachable"
        )),
        "ping did not report host unreachable from the node IP:\n{}",
        p.text
    );
    let want = format!("{NODE_IP} > {}: ICMP host 10.244.0.200 unreachable", a.ip);
    assert!(
        wire.contains(&want),
        "capture lacks `{want}` (type 3 code 1):\n{wire}"
    );
    assert!(
        delta(&before, &after, "/drops/no_route") >= 2,
        "no_route not counted: {after:#}"
    );
    assert!(
        delta(&before, &after, "/icmp_sent") >= 2,
        "icmp_sent not counted: {after:#}"
    );
}

#[test]
fn ttl_1_gets_time_exceeded() {
    if !require(
        "ttl_1_gets_time_exceeded",
        &["ping", "tcpdump", "tracepath"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let before = node.counters();
    let cap = Capture::start(&a.ns, "eth0", "icmp");
    let p = ping(&a.ns, &b.ip, &["-c", "1", "-t", "1", "-W", "1"]);
    let wire = cap.stop();
    let after = node.counters();
    assert!(
        p.text
            .contains(&format!("From {NODE_IP} icmp_seq=1 Time to live exceeded")),
        "ping -t 1 did not report time exceeded from the node IP:\n{}",
        p.text
    );
    let want = format!("{NODE_IP} > {}: ICMP time exceeded in-transit", a.ip);
    assert!(
        wire.contains(&want),
        "capture lacks `{want}` (type 11 code 0):\n{wire}"
    );
    assert!(
        delta(&before, &after, "/drops/ttl_exceeded") >= 1,
        "{after:#}"
    );
    assert!(delta(&before, &after, "/icmp_sent") >= 1, "{after:#}");

    // tracepath sees the router as hop 1 and the other pod as hop 2.
    let t = a.exec(&["tracepath", "-n", "-m", "4", &b.ip]);
    let text = t.text();
    let hop1 = text
        .lines()
        .any(|l| l.trim_start().starts_with("1:") && l.contains(NODE_IP));
    let hop2 = text
        .lines()
        .any(|l| l.trim_start().starts_with("2:") && l.contains(&b.ip) && l.contains("reached"));
    assert!(
        hop1 && hop2,
        "tracepath: expected hop 1 = {NODE_IP}, hop 2 = {} reached:\n{text}",
        b.ip
    );
}

#[test]
fn df_packet_over_egress_mtu_gets_frag_needed() {
    if !require(
        "df_packet_over_egress_mtu_gets_frag_needed",
        &["ping", "tcpdump"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let jumbo = jumbo_mtu().to_string();
    let a = node.add_pod("jumbo", &["--mtu", &jumbo]);
    let b = node.add_pod("small", &[]);
    assert_eq!(b.info["mtu"], 1480);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    // Fits: 1400 + 28 <= 1480.
    let ok = ping(
        &a.ns,
        &b.ip,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "1400"],
    );
    assert_eq!(
        ok.received, 1,
        "a DF packet that fits must pass:\n{}",
        ok.text
    );
    let before = node.counters();
    let cap = Capture::start(&a.ns, "eth0", "icmp");
    let p = ping(
        &a.ns,
        &b.ip,
        &["-c", "1", "-W", "2", "-M", "do", "-s", "2000"],
    );
    let wire = cap.stop();
    let after = node.counters();
    assert_eq!(p.received, 0, "{}", p.text);
    assert!(
        p.text.contains(&format!(
            "From {NODE_IP} icmp_seq=1 Frag needed and DF set (mtu = 1480)"
        )),
        "ping did not report frag needed with mtu 1480 from the node IP:\n{}",
        p.text
    );
    let want = format!(
        "{NODE_IP} > {}: ICMP {} unreachable - need to frag (mtu 1480)",
        a.ip, b.ip
    );
    assert!(
        wire.contains(&want),
        "capture lacks `{want}` (type 3 code 4):\n{wire}"
    );
    assert!(
        delta(&before, &after, "/drops/frag_needed") >= 1,
        "{after:#}"
    );
    assert!(delta(&before, &after, "/icmp_sent") >= 1, "{after:#}");
}

/// Number in ping's `+N errors`.
fn ping_errors(text: &str) -> u64 {
    text.split(", ")
        .find_map(|part| {
            part.strip_prefix('+')
                .and_then(|r| r.strip_suffix(" errors"))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn icmp_errors_are_rate_limited() {
    if !require("icmp_errors_are_rate_limited", &["ping"]) {
        return;
    }
    let cfg = NodeConfig {
        icmp_rate: Some(1),
        icmp_burst: Some(2),
        ..NodeConfig::default()
    };
    let mut node = Node::start(cfg);
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let before = node.counters();
    // 100 TTL-1 packets in about a second: burst 2 + 1/s lets a few through.
    let p = ping(
        &a.ns,
        &b.ip,
        &["-c", "100", "-i", "0.01", "-t", "1", "-W", "1", "-q"],
    );
    let after = node.counters();
    let sent = delta(&before, &after, "/icmp_sent");
    let limited = delta(&before, &after, "/icmp_rate_limited");
    let ttl = delta(&before, &after, "/drops/ttl_exceeded");
    say(&format!(
        "rate limit: ttl_exceeded {ttl}, icmp_sent {sent}, icmp_rate_limited {limited}"
    ));
    assert_eq!(p.transmitted, 100, "{}", p.text);
    assert!(
        ttl >= 100,
        "every TTL-1 packet must be counted as ttl_exceeded: {ttl}\n{after:#}"
    );
    assert!(
        (1..=10).contains(&sent),
        "icmp_rate=1 burst=2 must let 1..=10 errors out, sent {sent}"
    );
    assert!(
        limited >= 80,
        "icmp_rate_limited must count the suppressed errors: {limited}"
    );
    let errors = ping_errors(&p.text);
    assert!(
        (1..=10).contains(&errors),
        "the pod must have received only a few time-exceeded errors, got {errors}:\n{}",
        p.text
    );
}

#[test]
fn parses_ping_error_count() {
    assert_eq!(
        ping_errors("100 packets transmitted, 0 received, +3 errors, 100% packet loss"),
        3
    );
    assert_eq!(
        ping_errors("2 packets transmitted, 2 received, 0% packet loss"),
        0
    );
}
