//! Group commit and kill -9: podrouterd answers a batch of concurrent
//! attaches only once one write made them durable, so killing it while
//! 20 attaches run loses none that was answered with success. After the
//! restart every such pod is listed with the address it was given, its
//! interface still holds that address, and a new pod gets another one.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use podrouter_e2e::*;

/// Attaches running at once.
const PODS: usize = 20;
/// Successful answers to wait for before the kill, so that it lands
/// while the rest are in flight.
const ANSWERED_BEFORE_KILL: usize = 5;

#[test]
fn attaches_answered_before_a_kill_9_survive_it() {
    if !require("attaches_answered_before_a_kill_9_survive_it", &[]) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let socket = node.socket.clone();
    let namespaces: Vec<Pod> = (0..PODS).map(|_| node.empty_pod_ns()).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let adds: Vec<_> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let (socket, path, answered) =
                (socket.clone(), ns.netns_path.clone(), answered.clone());
            thread::spawn(move || {
                let id = format!("gc-{i}");
                let out = podrouterctl(&socket, true, &["attach", &id, "--netns", &path]);
                let ip = out
                    .ok()
                    .then(|| serde_json::from_str::<Value>(&out.stdout).ok())
                    .flatten()
                    .and_then(|v| v["ip"].as_str().map(str::to_string));
                if ip.is_some() {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                (id, ip)
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || answered.load(Ordering::SeqCst)
            >= ANSWERED_BEFORE_KILL),
        "no {ANSWERED_BEFORE_KILL} attaches answered in 20 s"
    );
    node.stop_daemon("KILL");
    let results: Vec<(String, Option<String>)> =
        adds.into_iter().map(|h| h.join().unwrap()).collect();
    let succeeded: BTreeMap<String, String> = results
        .iter()
        .filter_map(|(id, ip)| ip.clone().map(|ip| (id.clone(), ip)))
        .collect();
    say(&format!(
        "{} of {PODS} attaches answered with success before or as podrouterd was killed",
        succeeded.len()
    ));
    assert!(succeeded.len() >= ANSWERED_BEFORE_KILL);

    node.start_daemon();
    let listed: BTreeMap<String, String> = node
        .ctl(&["pods"])
        .as_array()
        .expect("pods is a list")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (id, ip) in &succeeded {
        assert_eq!(
            listed.get(id),
            Some(ip),
            "pod {id} was attached (answered {ip}) but is not back after kill -9: {listed:?}\n{}",
            node.daemon_log()
        );
    }
    // Whatever came back (answered or cut short after its write) is whole:
    // its interface holds its address.
    for (i, ns) in namespaces.iter().enumerate() {
        let Some(ip) = listed.get(&format!("gc-{i}")) else {
            continue;
        };
        let out = ns.exec(&["ip", "-j", "addr", "show", "dev", "eth0"]);
        assert!(
            out.ok() && out.stdout.contains(&format!("\"local\":\"{ip}\"")),
            "gc-{i} listed with {ip}, but its eth0: {out}"
        );
    }
    // The addresses of the restored pods are taken.
    let fresh = node.add_pod("gc-after", &[]);
    assert!(
        !listed.values().any(|ip| *ip == fresh.ip),
        "{} handed out again: {listed:?}",
        fresh.ip
    );
}

/// A detach is answered before its interface's removal finishes; an
/// attach into the same namespace right after it (20 such pairs at once)
/// waits for that removal and gets a fresh, working eth0.
#[test]
fn an_attach_right_after_a_detach_in_the_same_namespace_succeeds() {
    if !require(
        "an_attach_right_after_a_detach_in_the_same_namespace_succeeds",
        &[],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let socket = node.socket.clone();
    let pods: Vec<Pod> = (0..PODS)
        .map(|i| node.add_pod(&format!("re-{i}"), &[]))
        .collect();
    let free_before = node.ctl(&["status"])["free_addresses"].as_u64().unwrap();
    let again: Vec<_> = pods
        .iter()
        .map(|p| {
            let (socket, id, path) = (socket.clone(), p.id.clone(), p.netns_path.clone());
            thread::spawn(move || {
                let detached = podrouterctl(&socket, true, &["detach", &id]);
                let attached = podrouterctl(
                    &socket,
                    true,
                    &["attach", &format!("{id}-again"), "--netns", &path],
                );
                (detached, attached)
            })
        })
        .collect();
    for (p, h) in pods.iter().zip(again) {
        let (detached, attached) = h.join().unwrap();
        assert!(detached.ok(), "detach {}: {detached}", p.id);
        assert!(
            attached.ok(),
            "attach into {}'s namespace: {attached}",
            p.id
        );
        let v: Value = serde_json::from_str(&attached.stdout).unwrap();
        let ip = v["ip"].as_str().unwrap();
        let out = p.exec(&["ip", "-j", "addr", "show", "dev", "eth0"]);
        assert!(
            out.ok() && out.stdout.contains(&format!("\"local\":\"{ip}\"")),
            "{}'s namespace has no eth0 with {ip}: {out}",
            p.id
        );
    }
    let s = node.ctl(&["status"]);
    assert_eq!(s["pods"], PODS, "{s:#}");
    assert_eq!(s["free_addresses"], free_before, "{s:#}");
}
