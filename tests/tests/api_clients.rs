//! The API under slow and stalled clients: a client that sends nothing,
//! half a request, or one byte every 2 s, and 200 idle connections, must
//! not delay anyone else. 20 attaches and 20 detaches run beside them,
//! each fast, and `podrouterctl status` answers in well under a second;
//! the server closes the stalled connections at its request deadline and
//! counts them.
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use podrouter_e2e::*;

/// Parallel attaches and detaches.
const PODS: usize = 20;
/// Connections that connect and send nothing.
const IDLE: usize = 200;

/// Runs `podrouterctl ARGS` and returns how long it took; it must succeed.
fn timed_ctl(socket: &std::path::Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = podrouterctl(socket, true, args);
    let took = t.elapsed();
    assert!(
        out.ok(),
        "podrouterctl {args:?} failed after {took:?}: {out}"
    );
    took
}

#[test]
fn stalled_clients_delay_no_one() {
    if !require("stalled_clients_delay_no_one", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let socket = node.socket.clone();
    let free_before = node.ctl(&["status"])["free_addresses"].as_u64().unwrap();

    // The stalled clients, all open before the real work starts.
    let idle: Vec<UnixStream> = (0..IDLE)
        .map(|_| UnixStream::connect(&socket).expect("idle connection"))
        .collect();
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(br#"{"version":1,"meth"#).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (socket, stop) = (socket.clone(), stop.clone());
        thread::spawn(move || {
            let mut s = UnixStream::connect(&socket).unwrap();
            let req = br#"{"version":1,"method":"status"}"#;
            // One byte every 2 s until the server gives up on us.
            for b in req {
                if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_secs(2));
            }
        })
    };
    let started = Instant::now();

    // status answers at once despite them.
    let took = timed_ctl(&socket, &["status"]);
    assert!(took < Duration::from_millis(500), "status took {took:?}");
    let api = node.ctl(&["status"])["api"].clone();
    assert!(
        num(&api, "/connections") >= (IDLE + 2) as u64,
        "the stalled connections are open and counted: {api:#}"
    );

    // 20 attaches at once, a status poll beside them.
    let namespaces: Vec<Pod> = (0..PODS).map(|_| node.empty_pod_ns()).collect();
    let adds: Vec<_> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let (socket, path) = (socket.clone(), ns.netns_path.clone());
            thread::spawn(move || {
                let id = format!("slow-api-{i}");
                timed_ctl(&socket, &["attach", &id, "--netns", &path])
            })
        })
        .collect();
    let status_during = timed_ctl(&socket, &["status"]);
    let add_times: Vec<Duration> = adds.into_iter().map(|h| h.join().unwrap()).collect();
    let slowest_add = add_times.iter().max().unwrap();
    say(&format!(
        "{PODS} parallel attaches beside {IDLE} idle, 1 half and 1 trickling client: \
         slowest {slowest_add:?}; status during them {status_during:?}"
    ));
    assert!(*slowest_add < Duration::from_secs(2), "{add_times:?}");
    assert!(
        status_during < Duration::from_millis(900),
        "{status_during:?}"
    );
    assert_eq!(node.ctl(&["status"])["pods"], PODS);

    // Each attached pod has its interface; detach them all at once.
    for ns in &namespaces {
        run_in(&ns.ns, &["ip", "link", "show", "eth0"]).expect_ok();
    }
    let dels: Vec<_> = (0..PODS)
        .map(|i| {
            let socket = socket.clone();
            thread::spawn(move || timed_ctl(&socket, &["detach", &format!("slow-api-{i}")]))
        })
        .collect();
    let del_times: Vec<Duration> = dels.into_iter().map(|h| h.join().unwrap()).collect();
    say(&format!(
        "{PODS} parallel detaches: slowest {:?}",
        del_times.iter().max().unwrap()
    ));
    assert!(
        del_times.iter().all(|t| *t < Duration::from_secs(2)),
        "{del_times:?}"
    );
    // A detach answers before its interface's removal finishes; its
    // address counts as free at once (an attach that needs it waits for
    // the removal), and the interfaces go within moments.
    let s = node.ctl(&["status"]);
    assert_eq!(s["pods"], 0, "{s:#}");
    assert_eq!(s["free_addresses"], free_before, "{s:#}");
    for ns in &namespaces {
        assert!(
            wait_until(Duration::from_secs(2), || !run_in(
                &ns.ns,
                &["ip", "link", "show", "eth0"]
            )
            .ok()),
            "eth0 still in {} after detach",
            ns.ns
        );
    }

    // The server closes the stalled connections at its request deadline
    // (5 s from connecting, however slowly bytes trickle in) and counts
    // them; the half request gets an error line before the close.
    let wait = Duration::from_secs(7).saturating_sub(started.elapsed());
    thread::sleep(wait);
    let api = node.ctl(&["status"])["api"].clone();
    assert!(
        num(&api, "/request_timeouts") >= (IDLE + 2) as u64,
        "idle, half and trickling connections timed out: {api:#}"
    );
    assert!(num(&api, "/connections") <= 2, "{api:#}");
    half.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = String::new();
    half.read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains("bad_request") && answer.contains("whole"),
        "the half request is told why it was cut off: {answer:?}"
    );
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    drop(idle);
}
