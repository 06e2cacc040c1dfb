//! Pods at MTU 9000 on the afxdp backend: a frame spans three 4 KiB UMEM
//! chunks (multi-buffer AF_XDP), gathered into one frame on receive and
//! sent as a chain of descriptors. Two pods exchange 8000-byte pings with
//! DF set (no fragmentation anywhere) and a TCP stream whose segments are
//! MTU-sized; the ports stay in driver mode, count no broken chain, and
//! their kernel sockets drop nothing (`rx_dropped`, `rx_ring_full`).
//! Always runs the afxdp backend, whatever `PODROUTER_BACKEND` says.
use std::time::Duration;

use podrouter_e2e::multinode::iperf3_gbps;
use podrouter_e2e::*;

const MTU: u16 = 9000;

/// The AF_XDP counters of every pod port.
fn xsk_counters(node: &Node) -> Vec<Value> {
    let counters = node.counters();
    counters["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["xsk"].is_object())
        .map(|p| p["xsk"].clone())
        .collect()
}

#[test]
fn jumbo_pods_exchange_8000_byte_pings_and_tcp() {
    if !require(
        "jumbo_pods_exchange_8000_byte_pings_and_tcp",
        &["ping", "iperf3", "ss"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig {
        backend: "afxdp".into(),
        mtu: Some(MTU),
        ..NodeConfig::default()
    });
    let a = node.add_pod("jumbo-a", &[]);
    let b = node.add_pod("jumbo-b", &[]);
    assert_eq!(a.info["mtu"], MTU);
    let link = a.exec(&["ip", "-j", "link", "show", "eth0"]);
    assert!(link.stdout.contains("\"mtu\":9000"), "{link}");
    let status = node.ctl(&["status"]);
    let ports = status["ports"].as_array().expect("ports in status");
    assert_eq!(ports.len(), 2, "{status:#}");
    for p in ports {
        assert_eq!(
            p["xdp_mode"], "copy, driver, multi-buffer",
            "a multi-buffer port keeps driver mode: {p:#}"
        );
    }
    // The standing share counts frames: 128 of three chunks each.
    assert_eq!(
        num(&status["afxdp_umem"], "/rx_chunks_per_port"),
        3 * 128,
        "{status:#}"
    );
    assert!(ping_until_reply(&a.ns, &b.ip, Duration::from_secs(5)));

    // 8000 bytes of data + 28 of headers, DF: one 8042-byte frame each
    // way, three chunks.
    let p = ping(
        &a.ns,
        &b.ip,
        &["-c", "5", "-i", "0.2", "-W", "2", "-M", "do", "-s", "8000"],
    );
    assert_eq!(
        (p.transmitted, p.received),
        (5, 5),
        "8000-byte pings with DF between MTU-9000 pods:\n{}",
        p.text
    );
    // One byte over the pod's MTU is refused by the pod's own stack, not
    // by us: the MTU the router gave the pod is the one it carries.
    let over = ping(
        &a.ns,
        &b.ip,
        &["-c", "1", "-W", "1", "-M", "do", "-s", "8973"],
    );
    assert_eq!(over.received, 0, "{}", over.text);

    let gbps = iperf3_gbps(&a, &b);
    say(&format!(
        "TCP between two afxdp pods at MTU {MTU}: {gbps:.2} Gbit/s"
    ));
    assert!(gbps > 0.0);

    // No chain was broken or longer than the MTU, nothing failed to go
    // out, and the kernel dropped nothing on receive. A 9000-byte frame
    // needs three chunks on the fill ring at once (else the kernel drops
    // it whole and counts `rx_dropped`); a port's shares count frames, so
    // a busy one holds 1024 frames' worth (3072 chunks, an RX ring of
    // 4096), more than one stream can have in flight: the sender's
    // unacknowledged data stays under its send buffer (`tcp_wmem`, 4 MiB
    // at most by default), about 470 segments of 8948 bytes. With the
    // shares counted in chunks (341 frames busy) this stream counted
    // 57-130 `rx_dropped` on a loaded machine.
    for x in xsk_counters(&node) {
        say(&format!("xsk counters after the stream: {x}"));
        assert_eq!(num(&x, "/rx_invalid"), 0, "{x:#}");
        assert_eq!(num(&x, "/tx_dropped"), 0, "{x:#}");
        assert_eq!(num(&x, "/rx_dropped"), 0, "{x:#}");
        assert_eq!(num(&x, "/rx_ring_full"), 0, "{x:#}");
    }
}
