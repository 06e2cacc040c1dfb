//! Busy polling, the workers' scheduler slice and their real-time class
//! (`[dataplane] busy_poll_us`, `worker_slice_us`, `worker_rt_priority`):
//! a node with them set forwards as any other, its worker takes the slice
//! or the SCHED_FIFO priority it was given, and once traffic stops the
//! worker still goes to sleep, so an idle node costs no CPU; steady
//! traffic grows the window (`busy_poll_max_us`) so the worker stays awake
//! between its packets.
use std::time::Duration;

use podrouter_e2e::*;

/// The file `file` of the daemon's thread `name` (`/proc/<pid>/task/<tid>/file`).
fn thread_file(pid: u32, name: &str, file: &str) -> Option<String> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() == name {
            return std::fs::read_to_string(dir.join(file)).ok();
        }
    }
    None
}

/// The fields of the daemon's thread `name`'s `stat` after the command's
/// closing parenthesis: index 0 is the state, field 3 of the whole line.
fn thread_stat(pid: u32, name: &str) -> Option<Vec<String>> {
    let stat = thread_file(pid, name, "stat")?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system) of the daemon's thread `name`, in clock
/// ticks: fields 14 and 15 of its `stat`.
fn thread_ticks(pid: u32, name: &str) -> Option<u64> {
    let f = thread_stat(pid, name)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `se.slice` of the daemon's thread `name` (ns), where the kernel shows it.
fn thread_slice(pid: u32, name: &str) -> Option<u64> {
    let sched = thread_file(pid, name, "sched")?;
    let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

/// (policy, rt_priority) of the daemon's thread `name`: fields 41 and 40
/// of its `stat`.
fn thread_policy(pid: u32, name: &str) -> Option<(u64, u64)> {
    let f = thread_stat(pid, name)?;
    Some((f.get(38)?.parse().ok()?, f.get(37)?.parse().ok()?))
}

/// A node with `dataplane_extra` in its `[dataplane]` section and two
/// pods named `{prefix}-a` and `{prefix}-b`, with the daemon's pid; `None`
/// (the reason printed) where ping is missing.
fn node_with_two_pods(
    test: &str,
    dataplane_extra: &str,
    prefix: &str,
) -> Option<(Node, Pod, Pod, u32)> {
    if !require(test, &["ping"]) {
        return None;
    }
    let mut node = Node::start(NodeConfig {
        log_level: "info".into(),
        dataplane_extra: dataplane_extra.into(),
        ..NodeConfig::default()
    });
    let a = node.add_pod(&format!("{prefix}-a"), &[]);
    let b = node.add_pod(&format!("{prefix}-b"), &[]);
    let pid = node.daemon_pid().expect("daemon pid");
    Some((node, a, b, pid))
}

/// The worker's CPU over 2 s once traffic stopped (after 200 ms of
/// grace), in clock ticks, printed; `what` names the worker in the
/// failure. One tick is 10 ms: more than 3 (1.5% of a CPU) fails.
fn assert_idle_worker_sleeps(test: &str, pid: u32, what: &str) {
    std::thread::sleep(Duration::from_millis(200));
    let t0 = thread_ticks(pid, "podrouter-w0").expect("worker thread");
    std::thread::sleep(Duration::from_secs(2));
    let t1 = thread_ticks(pid, "podrouter-w0").expect("worker thread");
    say(&format!(
        "{test}: worker CPU over 2 s idle: {} ticks",
        t1 - t0
    ));
    assert!(
        t1 - t0 <= 3,
        "{test}: an idle {what} worker used {} ticks in 2 s",
        t1 - t0
    );
}

#[test]
fn a_real_time_worker_forwards_and_sleeps_when_idle() {
    let test = "a_real_time_worker_forwards_and_sleeps_when_idle";
    let Some((node, a, b, pid)) = node_with_two_pods(test, "worker_rt_priority = 3\n", "rt") else {
        return;
    };

    let p = ping(&a.ns, &b.ip, &["-c", "100", "-i", "0.005", "-W", "1"]);
    assert_eq!(p.received, 100, "{test}: {p:?}");

    let log = node.daemon_log();
    assert!(
        log.contains("worker 0: SCHED_FIFO priority 3"),
        "{test}: the worker did not become SCHED_FIFO:\n{log}"
    );
    let policy = thread_policy(pid, "podrouter-w0").expect("worker thread");
    // SCHED_FIFO is policy 1.
    assert_eq!(policy, (1, 3), "{test}: worker (policy, rt_priority)");
    // Only the worker: the daemon's other threads stay SCHED_OTHER (0).
    let main = thread_policy(pid, "podrouterd").expect("main thread");
    assert_eq!(main.0, 0, "{test}: main thread (policy, rt_priority)");

    // A real-time worker that spun would hold its CPU: it must sleep when
    // idle as any other.
    assert_idle_worker_sleeps(test, pid, "real-time");
}

#[test]
fn a_busy_polling_worker_forwards_and_sleeps_when_idle() {
    let test = "a_busy_polling_worker_forwards_and_sleeps_when_idle";
    let Some((node, a, b, pid)) =
        node_with_two_pods(test, "busy_poll_us = 500\nworker_slice_us = 200\n", "bp")
    else {
        return;
    };

    // Forwarding works, with replies inside the busy-poll window.
    let before = node.counters();
    let p = ping(&a.ns, &b.ip, &["-c", "200", "-i", "0.002", "-W", "1"]);
    assert_eq!(p.received, 200, "{test}: {p:?}");
    let after = node.counters();
    let sleeps = delta(&before, &after, "/sleeps");
    // Without busy polling a worker sleeps after each of the 400
    // crossings; with it, the reply finds it awake (unless the machine is
    // so busy that the worker was preempted and backed off).
    say(&format!(
        "{test}: 200 pings 2 ms apart, worker sleeps: {sleeps} (without busy polling about 2 per ping)"
    ));

    // The slice asked for, where the kernel shows it (Linux 6.12+ honours it).
    let log = node.daemon_log();
    assert!(
        log.contains("worker 0: scheduler slice 200 µs"),
        "{test}: the worker did not set its slice:\n{log}"
    );
    if let Some(slice) = thread_slice(pid, "podrouter-w0") {
        say(&format!("{test}: worker se.slice {slice} ns"));
        assert!(
            slice == 200_000 || slice > 1_000_000,
            "{test}: worker slice {slice} ns, asked for 200 µs"
        );
    }

    // Idle: the worker sleeps after its window, so 2 s cost (next to)
    // nothing.
    let idle_before = node.counters();
    assert_idle_worker_sleeps(test, pid, "busy-polling");
    let idle_after = node.counters();
    // The pods' own kernels still send now and then (neighbour probes
    // after the pings): each such frame is one wake-up and a short spin.
    say(&format!(
        "{test}: worker wake-ups over the 2.2 s after the pings: {}",
        delta(&idle_before, &idle_after, "/sleeps")
    ));
}

/// A spinning worker gives way to work that wants its core: with a busy
/// loop on the worker's core and a window longer than a scheduler slice,
/// the scheduler preempts the spin, the worker backs off (counted in
/// `busy_poll_backoffs`) and every ping is still forwarded.
#[test]
fn a_busy_polling_worker_backs_off_when_its_core_is_wanted() {
    let test = "a_busy_polling_worker_backs_off_when_its_core_is_wanted";
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !Needs::new(test)
        .unless(
            cpus >= 2,
            format!("needs 2 CPUs (the worker's own core), has {cpus}"),
        )
        .commands(&["taskset"])
        .met()
    {
        return;
    }
    let core = cpus - 1;
    let Some((node, a, b, _pid)) = node_with_two_pods(
        test,
        &format!("busy_poll_us = 5000\ncores = [{core}]\n"),
        "bo",
    ) else {
        return;
    };

    let before = node.counters();
    let mut hog = std::process::Command::new("taskset")
        .args(["-c", &core.to_string(), "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("start the busy loop");
    let p = ping(&a.ns, &b.ip, &["-c", "100", "-i", "0.01", "-W", "1"]);
    let _ = hog.kill();
    let _ = hog.wait();
    let after = node.counters();
    let backoffs = delta(&before, &after, "/busy_poll_backoffs");
    let stalls = delta(&before, &after, "/busy_poll_stalls");
    say(&format!(
        "{test}: 100 pings 10 ms apart with a busy loop on core {core}: {} answered, \
         busy polling backed off {backoffs} times, {stalls} stalls",
        p.received
    ));
    assert_eq!(p.received, 100, "{test}: {p:?}");
    assert!(
        backoffs >= 1,
        "{test}: a worker spinning 5 ms at a time next to a busy loop never backed off: {after}"
    );
}

/// Sleeps and spin time (ms) of a node's worker over 300 pings 1 ms
/// apart, all answered; `None` (the reason printed) where ping is missing.
fn sleeps_and_spin_over_steady_pings(
    test: &str,
    dataplane_extra: &str,
    prefix: &str,
) -> Option<(u64, u64)> {
    let (node, a, b, pid) = node_with_two_pods(test, dataplane_extra, prefix)?;
    // Warm up the pods' neighbour entries first.
    let p = ping(&a.ns, &b.ip, &["-c", "3", "-i", "0.2", "-W", "1"]);
    assert_eq!(p.received, 3, "{test}: {p:?}");
    let before = node.counters();
    let p = ping(&a.ns, &b.ip, &["-c", "300", "-i", "0.001", "-W", "1"]);
    let after = node.counters();
    assert_eq!(p.received, 300, "{test} ({dataplane_extra:?}): {p:?}");
    let sleeps = delta(&before, &after, "/sleeps");
    let spin_ms = delta(&before, &after, "/worker_spin_ns/0") / 1_000_000;
    let backoffs = delta(&before, &after, "/busy_poll_backoffs");
    say(&format!(
        "{test}: [dataplane] {:?}: 300 pings 1 ms apart: worker slept {sleeps} times, \
         spun {spin_ms} ms, backed off {backoffs} times",
        dataplane_extra.trim()
    ));
    // Once the traffic stops, the grown window ends too.
    assert_idle_worker_sleeps(test, pid, prefix);
    Some((sleeps, spin_ms))
}

/// Steady traffic grows the busy-polling window (`busy_poll_max_us`,
/// default 2 ms): pings 1 ms apart find the worker awake, where a fixed
/// 100 µs window (`busy_poll_max_us = 0`) sleeps in every gap between a
/// reply and the next request; the time spent spinning is counted
/// (`worker_spin_ns`); an idle worker still sleeps.
#[test]
fn the_busy_polling_window_grows_with_steady_traffic() {
    let test = "the_busy_polling_window_grows_with_steady_traffic";
    let Some((fixed_sleeps, fixed_spin)) =
        sleeps_and_spin_over_steady_pings(test, "busy_poll_max_us = 0\n", "bpfixed")
    else {
        return;
    };
    let Some((grown_sleeps, grown_spin)) = sleeps_and_spin_over_steady_pings(test, "", "bpgrow")
    else {
        return;
    };
    // A fixed window sleeps at least once per ping (the gap before the
    // next request is ~900 µs).
    assert!(
        fixed_sleeps >= 270,
        "{test}: a fixed 100 µs window slept only {fixed_sleeps} times in 300 pings 1 ms apart"
    );
    // The grown window bridges the gaps: sleeps only while it learns them
    // and after a preemption's back-off.
    assert!(
        grown_sleeps * 2 < fixed_sleeps,
        "{test}: the grown window slept {grown_sleeps} times, the fixed one {fixed_sleeps}"
    );
    assert!(
        grown_spin > fixed_spin && grown_spin >= 50,
        "{test}: spin time {grown_spin} ms with the grown window, {fixed_spin} ms with the fixed one"
    );
}
