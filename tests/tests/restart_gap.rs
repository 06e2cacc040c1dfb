//! No gap after a restart (issue 16 item 4): two podrouterd nodes in an
//! iBGP pair with an IPIP uplink; a pod on node A sends a UDP probe every
//! millisecond to a pod on node B (a learned block, tunnelled) and to
//! another pod on node A, across SIGTERM + start and across kill -9 +
//! start of node A's podrouterd. The restarted daemon puts the learned
//! routes it saved (`state_dir/bgp-routes`) back in the FIB before its
//! first packet, so traffic to node B resumes with traffic to local pods,
//! not a second later when node B re-announces. The longest run of lost
//! probes must stay under 100 ms for each destination and each kind of
//! restart.
//!
//! Printed for each restart: when (on the probes' clock) the signal went,
//! the old daemon was reaped and the new one answered; how late the
//! sender fell behind (a sender blocked in `sendto`: see README, "the
//! quantum"); for each destination every run of lost probes and how the
//! stream came back; the pod's link, qdisc and neighbour counters and
//! node A's drop counters.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::probe::{monotonic_secs, probe_stream};
use podrouter_e2e::*;

const UP: Duration = Duration::from_secs(20);
/// Probe stream length (ms, one probe each).
const STREAM_MS: u32 = 7000;
/// When node A's daemon is stopped, after the sender's 200th probe.
const STOP_AFTER: Duration = Duration::from_millis(800);
/// Most lost in a row (ms of probes) the test accepts: under the issue's
/// 100 ms. The gap is what lies between the old daemon's end (its
/// workers forward until the kernel ends the process) and the new one
/// re-opening the pods' TAPs (its first act after reading the state
/// file); what the pods send after that waits in the TAPs' queues.
/// Measured 31-61 ms at load average 3-6. Without the restored routes the
/// learned block's gap was the peer's re-announcement, about a second.
const MAX_GAP_MS: u64 = 100;

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
    let mut gaps = Vec::new();
    for sig in ["TERM", "KILL"] {
        let before = pod_view(&a1);
        let mut times = [0.0f64; 3];
        let stream = probe_stream(&a1, &[&b1, &a2], STREAM_MS, STOP_AFTER, || {
            times[0] = monotonic_secs();
            a.stop_daemon(sig);
            times[1] = monotonic_secs();
            a.start_daemon();
            times[2] = monotonic_secs();
        });
        let at = |t: f64| (t - stream.t0) * 1000.0;
        let line = format!(
            "SIG{sig} + start: signal at probe {:.0}, old daemon reaped at {:.0}, \
             new one answering at {:.0}; the sender was at most {} ms late (at probe {}), \
             {} send failure(s)",
            at(times[0]),
            at(times[1]),
            at(times[2]),
            stream.late_ms,
            stream.late_at,
            stream.send_failures
        );
        say(&line);
        report.push(line);
        let seen = &stream.seen;
        for (dst, s) in ["pod on node B (learned block)", "pod on node A (local)"]
            .iter()
            .zip(seen)
        {
            let line = format!(
                "SIG{sig} + start: to {dst}: {} of {STREAM_MS} probes, longest loss {} ms \
                 (after probe {}; first {}, last {}); resumed {:.0} ms late, {} in a burst; \
                 lost runs {:?}",
                s.count,
                s.gap,
                s.at,
                s.first,
                s.last,
                s.resume_late_ms(stream.t0),
                s.burst,
                s.runs
            );
            say(&line);
            report.push(line.clone());
            assert!(
                s.last >= i64::from(STREAM_MS) - 50,
                "traffic did not resume: {line}"
            );
        }
        say(&format!(
            "pod a1 before SIG{sig}:\n{before}\npod a1 after:\n{}\nnode A drops after: {}\n\
             node A's daemons around the restart:\n{}",
            pod_view(&a1),
            nonzero(&a.counters()["drops"]),
            restart_log_lines(a.dir.path())
        ));
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
        assert!(
            seen[1].gap > 0,
            "no loss at all: the restart missed the stream? {report:#?}"
        );
        gaps.extend(seen.iter().map(|s| s.gap));
    }
    // Both restarts' figures are printed before the bound is checked.
    assert!(gaps.iter().all(|g| *g < MAX_GAP_MS), "{report:#?}");
}

/// The lines of node A's last two daemon logs that tell a restart's
/// timeline (each with the logger's millisecond timestamp).
fn restart_log_lines(dir: &std::path::Path) -> String {
    let mut logs: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("podrouterd.log.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    logs.sort();
    let mut paths: Vec<_> = logs.into_iter().rev().take(1).map(|(_, p)| p).collect();
    paths.push(dir.join("podrouterd.log"));
    let marks = [
        "stop signal",
        "stopping:",
        "exiting",
        "starting",
        "re-opened",
        "forwarding again",
        "node ",
    ];
    paths
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter(|l| marks.iter().any(|m| l.contains(m)))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pod's side of its interface: link counters (drops), qdisc
/// counters and the neighbour entry for the gateway.
fn pod_view(p: &Pod) -> String {
    [
        &["ip", "-s", "link", "show", "eth0"][..],
        &["tc", "-s", "qdisc", "show", "dev", "eth0"],
        &["ip", "-s", "neigh", "show", "dev", "eth0"],
    ]
    .iter()
    .map(|args| p.exec(args).stdout)
    .collect::<Vec<_>>()
    .join("")
}

/// The entries of a counters object that are not zero, `name=value`.
fn nonzero(v: &serde_json::Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
