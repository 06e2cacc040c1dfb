//! Anti-spoofing and ARP hygiene: what a pod must not be able to do.
use std::time::Duration;

use podrouter_e2e::*;

const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn spoofed_source_is_dropped_and_counted() {
    if !require(
        "spoofed_source_is_dropped_and_counted",
        &["ping", "tcpdump"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    // Resolve the gateway with the pod's real address first.
    assert!(ping_until_reply(&a.ns, &b.ip, SETTLE));
    let spoof = "10.244.0.50";
    a.exec(&["ip", "addr", "add", &format!("{spoof}/32"), "dev", "eth0"])
        .expect_ok();
    let before = node.counters();
    let cap = Capture::start(&b.ns, "eth0", &format!("ip src host {spoof}"));
    let p = ping(
        &a.ns,
        &b.ip,
        &["-c", "3", "-i", "0.2", "-W", "1", "-I", spoof],
    );
    let wire = cap.stop();
    let after = node.counters();
    assert_eq!(p.transmitted, 3, "{}", p.text);
    assert_eq!(p.received, 0, "spoofed pings got answers:\n{}", p.text);
    assert!(
        !wire.contains(spoof),
        "a packet with the spoofed source reached pod-b:\n{wire}"
    );
    assert!(
        delta(&before, &after, "/drops/spoofed_source") >= 3,
        "spoofed_source not counted: {after:#}"
    );
    // The pod's own address still works.
    assert_ping(&a.ns, &b.ip, 2, 63);
}

#[test]
fn gratuitous_arp_is_counted_not_answered_nor_forwarded() {
    if !require(
        "gratuitous_arp_is_counted_not_answered_nor_forwarded",
        &["arping", "tcpdump"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    let before = node.counters();
    let cap = Capture::start(&b.ns, "eth0", &format!("arp host {}", a.ip));
    let out = a.exec(&["arping", "-U", "-c", "2", "-w", "3", "-I", "eth0", &a.ip]);
    let wire = cap.stop();
    let after = node.counters();
    assert!(
        out.text().contains("Sent 2 probes"),
        "arping did not send: {out}"
    );
    assert!(
        out.text().contains("Received 0 response"),
        "the router answered a gratuitous ARP: {out}"
    );
    assert!(
        !wire.contains(&a.ip),
        "pod-a's gratuitous ARP was forwarded to pod-b:\n{wire}"
    );
    assert!(
        delta(&before, &after, "/drops/arp_gratuitous") >= 2,
        "arp_gratuitous not counted: {after:#}"
    );
    assert_eq!(delta(&before, &after, "/arp_replies"), 0, "{after:#}");
}

#[test]
fn arp_from_wrong_source_is_counted_not_answered() {
    if !require(
        "arp_from_wrong_source_is_counted_not_answered",
        &["arping", "tcpdump"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    let other = "10.244.0.60";
    // arping binds its sender address, so it must be on the interface.
    a.exec(&["ip", "addr", "add", &format!("{other}/32"), "dev", "eth0"])
        .expect_ok();
    let before = node.counters();
    let cap = Capture::start(&b.ns, "eth0", &format!("arp host {other}"));
    let out = a.exec(&[
        "arping", "-c", "2", "-w", "3", "-s", other, "-I", "eth0", &b.ip,
    ]);
    let wire = cap.stop();
    let after = node.counters();
    assert!(
        !wire.contains(other),
        "ARP with a foreign sender reached pod-b:\n{wire}"
    );
    assert!(
        out.text().contains("Sent 2 probes"),
        "arping did not send: {out}"
    );
    assert!(
        out.text().contains("Received 0 response"),
        "the router answered ARP from a sender address that is not the pod's: {out}"
    );
    assert!(
        delta(&before, &after, "/drops/arp_wrong_source") >= 2,
        "arp_wrong_source not counted: {after:#}"
    );
    // The same request from the pod's own address is answered.
    let ok = a.exec(&[
        "arping", "-c", "1", "-w", "3", "-s", &a.ip, "-I", "eth0", &b.ip,
    ]);
    assert!(
        ok.text().contains(&ROUTER_MAC.to_uppercase()),
        "ARP from the pod's own address was not answered: {ok}"
    );
}
