//! More than one worker (`[dataplane] workers = 2`) between two nodes:
//! the receive side of the VXLAN uplink's TAP, of the host port
//! (`encap = "never"`: the node's kernel hands the other node's traffic
//! to it) and of a sending pod's own TAP is read by both workers, a flow stays on one of them (a UDP
//! sequence crosses in order while iperf3 loads both), and what each
//! worker received shows in `podrouterctl counters`
//! (`rx_packets_per_worker`, and the text table).
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use podrouter_e2e::multinode::*;
use podrouter_e2e::*;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(10);
const TOOLS: &[&str] = &["ping", "iperf3", "ss"];
/// Connections of the iperf3 run: enough that the kernel's per-flow
/// choice between two queues cannot put them all on one but once in
/// tens of thousands of runs (each flow lands on either with even odds).
const STREAMS: &str = "16";
/// Datagrams of the ordered UDP flow.
const SEQUENCE: u32 = 20_000;

/// The per-worker receive counts of port `name` in a node's counters.
#[track_caller]
fn rx_per_worker(counters: &Value, name: &str) -> Vec<u64> {
    let port = counters["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no port {name} in {counters:#}"));
    port["rx_packets_per_worker"]
        .as_array()
        .unwrap_or_else(|| panic!("no rx_packets_per_worker on {name}: {port:#}"))
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect()
}

/// iperf3 from `a` to `b` with [`STREAMS`] connections for 2 s, started
/// in the background: (server, client).
fn iperf3_background(a: &Pod, b: &Pod) -> (Bg, Bg) {
    let server = spawn_in(
        &b.ns,
        "iperf3 server",
        &["iperf3", "-s", "-1", "-B", &b.ip],
        None,
    );
    let listening = wait_until(Duration::from_secs(5), || {
        run_in(&b.ns, &["ss", "-ltnH", "sport = :5201"])
            .stdout
            .contains("5201")
    });
    assert!(listening, "iperf3 server in {} never listened", b.id);
    let client = spawn_in(
        &a.ns,
        "iperf3 client",
        &["iperf3", "-c", &b.ip, "-t", "2", "-P", STREAMS],
        None,
    );
    (server, client)
}

/// Sends [`SEQUENCE`] numbered datagrams from `a` to `b` on one flow
/// (paced, read as they come) and returns (received, out of order): every
/// datagram that arrives after a higher number than its own was reordered
/// somewhere on the way.
fn udp_sequence(a: &Pod, b: &Pod) -> (u32, u32) {
    let in_ns = |pod: &Pod, bind: String| {
        podrouter_control::netns::run_in_netns(Path::new(&pod.netns_path), move || {
            UdpSocket::bind(bind)
        })
        .expect("enter the pod's namespace")
        .expect("bind a UDP socket")
    };
    let rx = in_ns(b, format!("{}:7811", b.ip));
    let tx = in_ns(a, format!("{}:0", a.ip));
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let (mut received, mut reordered, mut highest) = (0u32, 0u32, None::<u32>);
        let mut buf = [0u8; 128];
        let end = Instant::now() + Duration::from_secs(20);
        let mut quiet = 0;
        while Instant::now() < end {
            match rx.recv(&mut buf) {
                Ok(n) if n >= 4 => {
                    quiet = 0;
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    received += 1;
                    match highest {
                        Some(h) if seq < h => reordered += 1,
                        _ => highest = Some(seq),
                    }
                    if seq == SEQUENCE - 1 {
                        break;
                    }
                }
                Ok(_) => {}
                // Quiet for 2 s (after the start, or after the flow): over.
                Err(_) => {
                    quiet += 1;
                    if quiet == 4 {
                        break;
                    }
                }
            }
        }
        (received, reordered)
    });
    let dst = format!("{}:7811", b.ip);
    for seq in 0..SEQUENCE {
        let mut d = [0u8; 64];
        d[..4].copy_from_slice(&seq.to_be_bytes());
        // A full socket buffer drops on the sending side: a loss, not a
        // reordering; keep going.
        let _ = tx.send_to(&d, &dst);
        if seq % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    reader.join().expect("UDP reader")
}

/// Where the receive side that must spread is: a port of the receiving
/// node (what carries a->b traffic into it), or the sending pod's own port
/// on node 0 (a multi-queue pod TAP).
enum Watched {
    Receiver(&'static str),
    SendingPod,
}

/// Two nodes with two workers each, pod a on node 0 sending to pod b on
/// node 1; `watched` is the port whose receive side must spread.
fn spread(test: &str, encap: &str, dataplane: &str, watched: Watched) {
    if !require(test, TOOLS) {
        return;
    }
    let mut c = Cluster::start_with(encap, &[0, 0], &format!("{dataplane}workers = 2\n"));
    let a = c.nodes[0].add_pod("a", &[]);
    let b = c.nodes[1].add_pod("b", &[]);
    assert!(settle(&a.ns, &b.ip, SETTLE), "{test}: a never reached b");
    assert!(settle(&b.ns, &a.ip, SETTLE), "{test}: b never reached a");
    let (node, port) = match watched {
        Watched::Receiver(port) => (1, port.to_string()),
        Watched::SendingPod => (0, format!("eth0@{}", a.id)),
    };
    let port = port.as_str();
    let per_worker = || rx_per_worker(&c.nodes[node].counters(), port);
    let before = per_worker();
    assert_eq!(before.len(), 2, "two workers: {before:?}");

    // iperf3 alone: its connections spread over both workers' queues.
    let (mut server, mut client) = iperf3_background(&a, &b);
    let done = wait_timeout(&mut client.child, Duration::from_secs(30));
    assert!(
        done.is_some_and(|s| s.success()),
        "{test}: iperf3 failed or did not finish: {done:?}"
    );
    server.stop_with("TERM", Duration::from_secs(5));
    let after = per_worker();
    let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = got.iter().sum();
    say(&format!(
        "{test}: {port} on node {node} received by worker during iperf3 -P {STREAMS}: {got:?}"
    ));
    // Each flow lands on either queue with even odds: a worker with
    // under 5% of the frames means the flows were not spread.
    assert!(
        got.iter().all(|&n| n * 20 >= total),
        "{test}: iperf3's {STREAMS} connections were not spread over the workers on {port}: \
         {got:?}"
    );

    // iperf3 again, and meanwhile one UDP flow, which must stay in order.
    let (mut server, mut client) = iperf3_background(&a, &b);
    let (received, reordered) = udp_sequence(&a, &b);
    let done = wait_timeout(&mut client.child, Duration::from_secs(30));
    assert!(
        done.is_some_and(|s| s.success()),
        "{test}: iperf3 failed or did not finish: {done:?}"
    );
    server.stop_with("TERM", Duration::from_secs(5));
    say(&format!(
        "{test}: UDP sequence: {received} of {SEQUENCE} received, {reordered} out of order"
    ));
    assert!(
        received >= 1000,
        "{test}: only {received} of {SEQUENCE} datagrams arrived"
    );
    assert_eq!(reordered, 0, "{test}: a flow was reordered");

    // The text table shows the same split.
    let text = podrouterctl(&c.nodes[node].socket, false, &["counters"]).stdout;
    assert!(
        text.contains("RX PKTS BY WORKER") && text.lines().any(|l| l.contains(port)),
        "{test}: no per-worker table:\n{text}"
    );

    if node == 0 {
        // A detach takes the pod's queues back from both workers, then
        // removes its interface.
        let out = podrouterctl(&c.nodes[0].socket, false, &["detach", &a.id]);
        assert!(out.ok(), "{test}: detach failed: {out}");
        let gone = wait_until(Duration::from_secs(5), || {
            !a.exec(&["ip", "link", "show", "eth0"]).ok()
        });
        assert!(
            gone,
            "{test}: pod a's interface is still there after the detach"
        );
        let log = c.nodes[0].daemon_log();
        assert!(
            !log.contains("did not release"),
            "{test}: a worker kept the detached pod's queue:\n{log}"
        );
    }
}

#[test]
fn two_workers_share_the_vxlan_uplinks_receive_side() {
    spread(
        "two_workers_share_the_vxlan_uplinks_receive_side",
        "always",
        "tunnel = \"vxlan\"\n",
        Watched::Receiver("vxlan@eth0"),
    );
}

#[test]
fn two_workers_share_the_host_ports_receive_side() {
    spread(
        "two_workers_share_the_host_ports_receive_side",
        "never",
        "",
        Watched::Receiver("podrouter0"),
    );
}

/// A pod's TAP is multi-queue with two workers: one pod's connections are
/// read by both workers of its node (the sending side spreads too), each
/// flow by one, in order.
#[test]
fn two_workers_share_one_pods_sending_side() {
    spread(
        "two_workers_share_one_pods_sending_side",
        "always",
        "tunnel = \"vxlan\"\n",
        Watched::SendingPod,
    );
}
