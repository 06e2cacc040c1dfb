//! No gap after a restart (issue 16 item 4): two podrouterd nodes in an
//! iBGP pair with an IPIP uplink; a pod on node A sends a UDP probe every
//! millisecond to a pod on node B (a learned block, tunnelled) and to
//! another pod on node A, across SIGTERM + start and across kill -9 +
//! start of node A's podrouterd. The restarted daemon puts the learned
//! routes it saved (`state_dir/bgp-routes`) back in the FIB before its
//! first packet, so traffic to node B resumes with traffic to local pods,
//! not a second later when node B re-announces. The longest run of lost
//! probes is printed for each destination and each kind of restart.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::probe::probe_across;
use podrouter_e2e::*;

const UP: Duration = Duration::from_secs(20);
/// Probe stream length (ms, one probe each).
const STREAM_MS: u32 = 7000;
/// When node A's daemon is stopped, after the sender's 200th probe.
const STOP_AFTER: Duration = Duration::from_millis(800);
/// Most lost in a row (ms of probes) the test accepts. The goal is under
/// 100 ms (77-81 ms measured here at load average 15); the bound leaves
/// room for a loaded CI machine, where the daemon's own restart is what
/// takes longer. Without the restored routes the learned block's gap was
/// the peer's re-announcement, about a second.
const MAX_GAP_MS: u64 = 250;

fn ip(i: usize) -> String {
    format!("10.210.0.{i}")
}
fn block(i: usize) -> String {
    format!("10.244.{}.0/26", 40 + i)
}

#[test]
fn restart_gap_for_local_and_learned_traffic() {
    if !require("restart_gap_for_local_and_learned_traffic", &["python3"]) {
        return;
    }
    let mut sw = Switch::new();
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut n = start_plain_node(&ip(i), &block(i));
        sw.plug(&n.ns, "eth0", &format!("{}/24", ip(i)));
        let other = 3 - i;
        let peers = [PeerCfg::new(&ip(other), NODE_AS)];
        enable_bgp(&mut n, &bgp_section(NODE_AS, "", &peers), Some("eth0"));
        nodes.push(n);
    }
    let _logs: Vec<LogOnPanic> = nodes.iter().map(|n| LogOnPanic(n.log.clone())).collect();
    for (k, n) in nodes.iter().enumerate() {
        let other = 2 - k;
        wait_established(n, &ip(other), UP);
        assert!(wait_fib(n, &block(other), Some(&ip(other)), UP));
    }
    let (a, b) = nodes.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let a1 = a.add_pod("gap-a1", &[]);
    let a2 = a.add_pod("gap-a2", &[]);
    let b1 = b.add_pod("gap-b1", &[]);
    assert!(ping_until_reply(&a1.ns, &b1.ip, UP), "a1 cannot reach b1");
    assert!(ping_until_reply(&a1.ns, &a2.ip, UP), "a1 cannot reach a2");
    // The saver has written the learned block by now.
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            a.dir.join("state").join("bgp-routes")
        )
        .is_ok_and(|t| t.contains(&block(2)))),
        "node A did not save its learned route"
    );

    let mut report = Vec::new();
    for sig in ["TERM", "KILL"] {
        let (seen, _) = probe_across(&a1, &[&b1, &a2], STREAM_MS, STOP_AFTER, || {
            a.stop_daemon(sig);
            a.start_daemon();
        });
        for (dst, s) in ["pod on node B (learned block)", "pod on node A (local)"]
            .iter()
            .zip(&seen)
        {
            let line = format!(
                "SIG{sig} + start: to {dst}: {} of {STREAM_MS} probes, longest loss {} ms \
                 (after probe {}; first {}, last {})",
                s.count, s.gap, s.at, s.first, s.last
            );
            say(&line);
            report.push(line.clone());
            assert!(
                s.last >= i64::from(STREAM_MS) - 50,
                "traffic did not resume: {line}"
            );
        }
        let log = a.daemon_log();
        assert!(
            log.contains("learned route(s) of the last run restored to the FIB"),
            "node A restored nothing after SIG{sig}: {log}"
        );
        assert!(wait_fib(a, &block(2), Some(&ip(2)), UP));
        // Node B's End-of-RIB ends the wait; its block was announced again.
        assert!(
            wait_until(Duration::from_secs(10), || a
                .daemon_log()
                .contains("1 of 1 restored route(s) announced again, 0 removed")),
            "no sweep of the restored routes: {}",
            a.daemon_log()
        );
        // The gap to the learned block is no longer than the local one
        // plus a little: the route was there before BGP came back.
        assert!(
            seen[0].gap <= seen[1].gap + 50,
            "learned-block traffic waited for BGP: {report:#?}"
        );
        assert!(seen.iter().all(|s| s.gap <= MAX_GAP_MS), "{report:#?}");
        assert!(
            seen[1].gap > 0,
            "no loss at all: the restart missed the stream? {report:#?}"
        );
    }
}
