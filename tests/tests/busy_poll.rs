//! Busy polling, the workers' scheduler slice and their real-time class
//! (`[dataplane] busy_poll_us`, `worker_slice_us`, `worker_rt_priority`):
//! a node with them set forwards as any other, its worker takes the slice
//! or the SCHED_FIFO priority it was given, and once traffic stops the
//! worker still goes to sleep, so an idle node costs no CPU.
use std::time::Duration;

use podrouter_e2e::*;

/// CPU time (user + system) of the daemon's thread `name`, in clock ticks.
fn thread_ticks(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the command's closing parenthesis: state is field
        // 3, utime 14 and stime 15 of the whole line.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
    }
    None
}

/// `se.slice` of the daemon's thread `name` (ns), where the kernel shows it.
fn thread_slice(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let sched = std::fs::read_to_string(dir.join("sched")).ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        return line.split(':').nth(1)?.trim().parse().ok();
    }
    None
}

/// (policy, rt_priority) of the daemon's thread `name`: fields 41 and 40
/// of its `/proc/<tid>/stat`.
fn thread_policy(pid: u32, name: &str) -> Option<(u64, u64)> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Field 3 (state) is the first after the closing parenthesis.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        return Some((f.get(38)?.parse().ok()?, f.get(37)?.parse().ok()?));
    }
    None
}

#[test]
fn a_real_time_worker_forwards_and_sleeps_when_idle() {
    let test = "a_real_time_worker_forwards_and_sleeps_when_idle";
    if !require(test, &["ping"]) {
        return;
    }
    let mut node = Node::start(NodeConfig {
        log_level: "info".into(),
        dataplane_extra: "worker_rt_priority = 3\n".into(),
        ..NodeConfig::default()
    });
    let a = node.add_pod("rt-a", &[]);
    let b = node.add_pod("rt-b", &[]);
    let pid = node.daemon_pid().expect("daemon pid");

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
    // idle as any other (one clock tick is 10 ms; allow 3 in 2 s).
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
        "{test}: an idle real-time worker used {} ticks in 2 s",
        t1 - t0
    );
}

#[test]
fn a_busy_polling_worker_forwards_and_sleeps_when_idle() {
    let test = "a_busy_polling_worker_forwards_and_sleeps_when_idle";
    if !require(test, &["ping"]) {
        return;
    }
    let mut node = Node::start(NodeConfig {
        log_level: "info".into(),
        dataplane_extra: "busy_poll_us = 500\nworker_slice_us = 200\n".into(),
        ..NodeConfig::default()
    });
    let a = node.add_pod("bp-a", &[]);
    let b = node.add_pod("bp-b", &[]);
    let pid = node.daemon_pid().expect("daemon pid");

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
    // nothing. One clock tick is 10 ms; allow 3 (1.5% of a CPU).
    std::thread::sleep(Duration::from_millis(200));
    let idle_before = node.counters();
    let t0 = thread_ticks(pid, "podrouter-w0").expect("worker thread");
    std::thread::sleep(Duration::from_secs(2));
    let t1 = thread_ticks(pid, "podrouter-w0").expect("worker thread");
    let idle_after = node.counters();
    say(&format!(
        "{test}: worker CPU over 2 s idle: {} ticks",
        t1 - t0
    ));
    assert!(
        t1 - t0 <= 3,
        "{test}: an idle busy-polling worker used {} ticks in 2 s",
        t1 - t0
    );
    // The pods' own kernels still send now and then (neighbour probes
    // after the pings): each such frame is one wake-up and a short spin.
    say(&format!(
        "{test}: worker wake-ups over the idle 2 s: {}",
        delta(&idle_before, &idle_after, "/sleeps")
    ));
}
