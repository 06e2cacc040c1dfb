//! The afxdp backend's memory with two workers: the pods' receive sockets
//! share their worker's receive arena (one UMEM of 4096 chunks per worker
//! while the pods' standing shares fit in it), and transmit chunks come
//! from one UMEM per worker shared by all the worker's transmit sockets,
//! whatever the number of pods and whichever worker sends to them. Before
//! this every pod port had a receive UMEM of its own (1024 chunks, 2 MiB).
//! `podrouterctl status` shows the figures; the daemon's anonymous
//! resident memory (where the UMEMs live) grows by two receive arenas and
//! two transmit pools, not by a receive UMEM per pod.
//! Always runs the afxdp backend, whatever `PODROUTER_BACKEND` says.
use std::fs;
use std::time::Duration;

use podrouter_e2e::*;

const PODS: usize = 24;
/// The standing receive share (router's `DEFAULT_RX_CHUNKS`).
const RX_CHUNKS: u64 = 128;
/// Chunks of a receive arena (router's `ARENA_MIN_CHUNKS`).
const ARENA_CHUNKS: u64 = 4096;
/// Each pod port's receive UMEM before (`afxdp_rx_chunks` = 1024).
const OLD_RX_CHUNKS_PER_POD: u64 = 1024;
const CHUNK: u64 = 2048;
/// Chunks of a worker's transmit UMEM (router's `WORKER_TX_CHUNKS`).
const WORKER_TX_CHUNKS: u64 = 1024;
/// Chunks each worker's transmit socket had per pod before.
const OLD_TX_CHUNKS_PER_POD_AND_WORKER: u64 = 256;

/// `RssAnon` of process `pid`, in bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no RssAnon in {status}"));
    kib * 1024
}

#[test]
fn pods_share_their_workers_receive_arena_and_transmit_pool() {
    if !require(
        "pods_share_their_workers_receive_arena_and_transmit_pool",
        &["ping"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig {
        backend: "afxdp".into(),
        workers: 2,
        log_level: "info".into(),
        ..NodeConfig::default()
    });
    let pid = node.daemon_pid().expect("daemon pid");
    let status = node.ctl(&["status"]);
    let umem = &status["afxdp_umem"];
    assert_eq!(num(umem, "/rx_umems"), 0, "{status:#}");
    assert_eq!(num(umem, "/tx_umems"), 0, "{status:#}");
    assert_eq!(num(umem, "/rx_chunks_per_port"), RX_CHUNKS, "{status:#}");
    let rss_before = rss_anon(pid);

    let pods: Vec<Pod> = (0..PODS)
        .map(|i| node.add_pod(&format!("umem-{i}"), &[]))
        .collect();
    // Every pod hears from the first two pods, which the daemon put on
    // different workers (each new port goes to the least loaded one):
    // every port gets a transmit socket on both workers.
    for sender in &pods[..2] {
        for p in &pods[2..] {
            assert!(
                ping_until_reply(&sender.ns, &p.ip, Duration::from_secs(5)),
                "{} cannot reach {}",
                sender.id,
                p.id
            );
        }
    }
    assert!(ping_until_reply(
        &pods[0].ns,
        &pods[1].ip,
        Duration::from_secs(5)
    ));
    assert!(ping_until_reply(
        &pods[1].ns,
        &pods[0].ip,
        Duration::from_secs(5)
    ));

    let status = node.ctl(&["status"]);
    let umem = &status["afxdp_umem"];
    let arena = ARENA_CHUNKS * CHUNK;
    let pool = WORKER_TX_CHUNKS * CHUNK;
    assert_eq!(
        num(umem, "/rx_umems"),
        2,
        "one receive arena per worker: {status:#}"
    );
    assert_eq!(num(umem, "/rx_bytes"), 2 * arena, "{status:#}");
    assert_eq!(
        num(umem, "/tx_umems"),
        2,
        "one transmit UMEM per worker: {status:#}"
    );
    assert_eq!(num(umem, "/tx_bytes"), 2 * pool, "{status:#}");

    // What the process really holds: the UMEMs are populated anonymous
    // memory. The old layouts had a receive UMEM per pod (and before that
    // a transmit range per pod and worker too).
    let grown = rss_anon(pid).saturating_sub(rss_before);
    let new_layout = 2 * arena + 2 * pool;
    let old_rx_layout = PODS as u64 * OLD_RX_CHUNKS_PER_POD * CHUNK + 2 * pool;
    let older_layout =
        PODS as u64 * (OLD_RX_CHUNKS_PER_POD + 2 * OLD_TX_CHUNKS_PER_POD_AND_WORKER) * CHUNK;
    say(&format!(
        "RssAnon grew by {:.1} MiB for {PODS} pods (UMEMs now {:.1} MiB; \
         a receive UMEM per pod {:.1} MiB; and a transmit range per pod {:.1} MiB)",
        grown as f64 / 1048576.0,
        new_layout as f64 / 1048576.0,
        old_rx_layout as f64 / 1048576.0,
        older_layout as f64 / 1048576.0
    ));
    assert!(
        grown >= 2 * arena,
        "the receive arenas are not resident: grew by {grown}"
    );
    // Everything else a pod costs the daemon is far below the 2 MiB per
    // pod its own receive UMEM took.
    let slack = PODS as u64 * 256 * 1024;
    assert!(
        grown <= new_layout + slack,
        "grew by {grown} bytes, more than {new_layout} + {slack}: a receive UMEM per pod?"
    );
    assert!(new_layout + slack < old_rx_layout);

    let text = node.ctl_table(&["status"]).expect_ok().stdout;
    assert!(
        text.contains("umem receive") && text.contains("umem transmit"),
        "{text}"
    );

    // The pods still forward after all that (their standing shares and
    // bursts come from the shared arenas).
    assert!(ping_until_reply(
        &pods[PODS - 1].ns,
        &pods[2].ip,
        Duration::from_secs(5)
    ));
    // Pods going away keep the arenas while any pod of the worker is left,
    // and the last one takes its worker's arena with it.
    for p in &pods[2..] {
        node.ctl(&["detach", &p.id]);
    }
    let status = node.ctl(&["status"]);
    assert_eq!(num(&status["afxdp_umem"], "/rx_umems"), 2, "{status:#}");
    for p in &pods[..2] {
        node.ctl(&["detach", &p.id]);
    }
    let gone = wait_until(Duration::from_secs(10), || {
        num(&node.ctl(&["status"])["afxdp_umem"], "/rx_umems") == 0
    });
    assert!(gone, "{:#}", node.ctl(&["status"]));
}
