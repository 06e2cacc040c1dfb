//! Upgrade without losing a packet (issue 16 item 5): two podrouterd nodes
//! in an iBGP pair with an IPIP uplink; a pod on node A sends a UDP probe
//! every millisecond to a pod on node B (a learned block, tunnelled) and
//! to another pod on node A while `podrouterd --takeover` takes node A's
//! data plane over. The old daemon pauses its workers and hands its TAPs,
//! uplink socket, state lock and API listener over; frames sent meanwhile
//! wait in the TAPs' queues, so every probe arrives. Then: the old daemon
//! has exited, the new one alone holds the TAPs, the API answers, the pods
//! still forward and BGP is back. Before that, two refused takeovers (a
//! config that differs in what is handed over, and no daemon on the
//! socket) change nothing. The afxdp backend's sockets cannot be handed
//! over: there the test checks the refusal and that the old daemon
//! carries on.
use std::path::Path;
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::probe::probe_across;
use podrouter_e2e::takeover::taps_held;
use podrouter_e2e::*;

const UP: Duration = Duration::from_secs(20);
/// Probe stream length (ms, one probe to each destination each).
const STREAM_MS: u32 = 4000;
/// When the takeover starts, after the sender's 200th probe.
const TAKE_OVER_AFTER: Duration = Duration::from_millis(800);

fn ip(i: usize) -> String {
    format!("10.211.0.{i}")
}
fn block(i: usize) -> String {
    format!("10.244.{}.0/26", 50 + i)
}

#[test]
fn takeover_under_a_probe_stream_loses_no_packet() {
    if !require(
        "takeover_under_a_probe_stream_loses_no_packet",
        &["python3"],
    ) {
        return;
    }
    let mut sw = Switch::new();
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut n = start_plain_node(&ip(i), &block(i));
        sw.plug(&n.ns, "eth0", &format!("{}/24", ip(i)));
        let peers = [PeerCfg::new(&ip(3 - i), NODE_AS)];
        enable_bgp(&mut n, &bgp_section(NODE_AS, "", &peers), Some("eth0"));
        nodes.push(n);
    }
    let _logs: Vec<LogOnPanic> = nodes.iter().map(|n| LogOnPanic(n.log.clone())).collect();
    for (k, n) in nodes.iter().enumerate() {
        wait_established(n, &ip(2 - k), UP);
        assert!(wait_fib(n, &block(2 - k), Some(&ip(2 - k)), UP));
    }
    let (a, b) = nodes.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let a1 = a.add_pod("to-a1", &[]);
    let a2 = a.add_pod("to-a2", &[]);
    let b1 = b.add_pod("to-b1", &[]);
    assert!(ping_until_reply(&a1.ns, &b1.ip, UP), "a1 cannot reach b1");
    assert!(ping_until_reply(&a1.ns, &a2.ip, UP), "a1 cannot reach a2");
    let old_pid = a.daemon_pid().expect("node A's daemon");

    // Refused: a config that differs in what would be handed over.
    let text = std::fs::read_to_string(&a.config).expect("read config");
    let other = a.dir.join("other-host-port.toml");
    std::fs::write(
        &other,
        text.replacen(
            "[dataplane]\n",
            "[dataplane]\nhost_port = \"prother0\"\n",
            1,
        ),
    )
    .expect("write config");
    let out = a.run_takeover(&other);
    assert_eq!(out.code(), 1, "{out}");
    // With afxdp the backend is the first reason named.
    let why = if backend() == "afxdp" {
        "afxdp"
    } else {
        "dataplane.host_port"
    };
    assert!(
        out.stderr.contains("refused") && out.stderr.contains(why),
        "{out}"
    );
    // Refused: nobody answers on the socket.
    let lone = a.dir.join("no-daemon.toml");
    std::fs::write(
        &lone,
        text.replace(
            &a.socket.display().to_string(),
            &a.dir.join("nobody.sock").display().to_string(),
        ),
    )
    .expect("write config");
    let out = a.run_takeover(&lone);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("no podrouterd answers"), "{out}");
    assert_eq!(a.daemon_pid(), Some(old_pid));
    assert!(a.ctl_out(&["status"]).ok(), "status after the refusals");
    assert!(
        ping_until_reply(&a1.ns, &a2.ip, UP),
        "a1 -> a2 after refusals"
    );

    if backend() == "afxdp" {
        // The AF_XDP sockets cannot be handed over: refused, nothing lost.
        let out = a.run_takeover(&a.config);
        assert_eq!(out.code(), 1, "{out}");
        assert!(
            out.stderr.contains("refused") && out.stderr.contains("afxdp"),
            "{out}"
        );
        assert!(a.ctl_out(&["status"]).ok());
        assert!(
            ping_until_reply(&a1.ns, &b1.ip, UP),
            "a1 -> b1 after refusal"
        );
        say("takeover with the afxdp backend: refused as documented, the old daemon carries on");
        return;
    }

    // The IPIP GSO TAP is not handed over: each daemon makes its own
    // (`podrouter-ip`, then `podrouter-ip2` while the old one holds it).
    let (gso_before, held_before) = split_gso_tap(taps_held(old_pid));
    assert_eq!(
        held_before.len(),
        3,
        "host port and two pods: {held_before:?}"
    );
    assert_eq!(gso_before, ["podrouter-ip"]);
    let mut taken = None;
    let (seen, send_failures) = probe_across(&a1, &[&b1, &a2], STREAM_MS, TAKE_OVER_AFTER, || {
        taken = Some(a.take_over_daemon())
    });
    let taken = taken.expect("the takeover ran");
    let paused = taken
        .old_log
        .lines()
        .find(|l| l.contains("handed over to pid"))
        .unwrap_or("(no handover line in the old log)")
        .to_string();
    let mut report = vec![format!(
        "takeover: old pid {} exited {} {:.0} ms after the new one started; {paused}",
        taken.old_pid,
        taken.old_status,
        taken.took.as_secs_f64() * 1e3
    )];
    for (dst, s) in ["pod on node B (learned block)", "pod on node A (local)"]
        .iter()
        .zip(&seen)
    {
        report.push(format!(
            "takeover: to {dst}: {} of {STREAM_MS} probes (first {}, last {}), longest loss {} ms",
            s.count, s.first, s.last, s.gap
        ));
    }
    for line in &report {
        say(line);
    }
    assert!(
        taken
            .old_log
            .contains(&format!("handed over to pid {}", taken.new_pid)),
        "{}",
        taken.old_log
    );
    assert!(
        a.daemon_log()
            .contains(&format!("took over from pid {}", taken.old_pid)),
        "{}",
        a.daemon_log()
    );
    assert!(taken.old_status.success(), "{report:#?}");
    assert_eq!(send_failures, 0, "{report:#?}");
    for s in &seen {
        assert_eq!(
            (s.count, s.first, s.last, s.gap),
            (u64::from(STREAM_MS), 0, i64::from(STREAM_MS) - 1, 0),
            "probes were lost: {report:#?}"
        );
    }
    // The old process is gone; the new one alone holds the same TAPs.
    assert!(!Path::new(&format!("/proc/{}", taken.old_pid)).exists());
    let (gso_after, held_after) = split_gso_tap(taps_held(taken.new_pid));
    assert_eq!(held_after, held_before);
    assert_eq!(
        gso_after,
        ["podrouter-ip2"],
        "the new daemon's own IPIP GSO TAP"
    );
    assert_eq!(a.ctl(&["status"])["ipip_gso"]["tap"], "podrouter-ip2");
    assert_eq!(a.ctl(&["status"])["pods"], 2);
    assert!(
        ping_until_reply(&a1.ns, &b1.ip, UP),
        "a1 -> b1 after takeover"
    );
    assert!(
        ping_until_reply(&a1.ns, &a2.ip, UP),
        "a1 -> a2 after takeover"
    );
    // BGP restarted gracefully: Established again, node B's block kept.
    wait_established(a, &ip(2), UP);
    assert!(wait_fib(a, &block(2), Some(&ip(2)), UP));
    wait_established(b, &ip(1), UP);
    assert!(wait_fib(b, &block(1), Some(&ip(1)), UP));
}

/// (the IPIP GSO TAPs, the others) among the TAP names a daemon holds.
fn split_gso_tap(names: Vec<String>) -> (Vec<String>, Vec<String>) {
    names
        .into_iter()
        .partition(|n| n.starts_with("podrouter-ip"))
}
