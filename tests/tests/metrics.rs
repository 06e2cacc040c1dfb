//! `[metrics] listen`: a real Prometheus (Debian's package), started in the
//! node namespace with a config this test writes, scrapes podrouterd every
//! second; after known traffic its HTTP API must report the counters the
//! CLI reports, and `promtool check metrics` must accept a scrape.
use std::fs;
use std::time::Duration;

use podrouter_e2e::*;

const METRICS: &str = "127.0.0.1:9091";
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Time for Prometheus to start and to take a scrape that reflects the
/// traffic (scrape interval 1 s).
const SCRAPED: Duration = Duration::from_secs(30);

/// Asks Prometheus (in `ns`) for an instant query; the value of its one
/// series, `None` while it has none.
fn prom_query(ns: &str, query: &str) -> Option<u64> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let out = run_in(
        ns,
        &[
            "curl",
            "-sf",
            "-G",
            "--data-urlencode",
            &format!("query={query}"),
            &url,
        ],
    );
    if !out.ok() {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    assert_eq!(v["status"], "success", "Prometheus refused {query}: {v:#}");
    let result = v["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{query} matched several series: {v:#}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Waits until Prometheus reports `want()` (read fresh each time from the
/// CLI) for `query`, and returns it; panics with both figures if it never
/// does.
#[track_caller]
fn wait_prom_equals(ns: &str, query: &str, mut want: impl FnMut() -> u64) -> u64 {
    let mut last = (None, 0);
    let ok = wait_until(SCRAPED, || {
        let w = want();
        last = (prom_query(ns, query), w);
        last.0 == Some(w)
    });
    assert!(
        ok,
        "Prometheus says {:?} for {query}, podrouterctl counters says {}",
        last.0, last.1
    );
    last.1
}

fn port_field(node: &Node, pod: &str, field: &str) -> u64 {
    let c = node.counters();
    c["ports"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&format!("@{pod}")))
            })
        })
        .and_then(|p| p[field].as_u64())
        .unwrap_or_else(|| panic!("no port of {pod} in {c:#}"))
}

#[test]
fn prometheus_scrapes_the_counters_after_known_traffic() {
    if !require(
        "prometheus_scrapes_the_counters_after_known_traffic",
        &["ping", "curl", "prometheus", "promtool"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig {
        metrics: Some(METRICS.into()),
        ..NodeConfig::default()
    });
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert!(
        ping_until_reply(&a.ns, &b.ip, Duration::from_secs(5)),
        "pods do not reach each other"
    );

    let prom_dir = node.dir.join("prometheus");
    fs::create_dir_all(prom_dir.join("tsdb")).expect("prometheus dir");
    let prom_cfg = prom_dir.join("prometheus.yml");
    fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: podrouter\n    static_configs:\n\
             \x20     - targets: ['{METRICS}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let cfg_arg = format!("--config.file={}", prom_cfg.display());
    let tsdb_arg = format!("--storage.tsdb.path={}", prom_dir.join("tsdb").display());
    let listen_arg = format!("--web.listen-address={PROMETHEUS}");
    // Declared after the node, so it is stopped (by pid) before the
    // node's namespace goes.
    let _prometheus = node.ns.spawn(
        "prometheus",
        &["prometheus", &cfg_arg, &tsdb_arg, &listen_arg],
        Some(&prom_dir.join("prometheus.log")),
    );
    let up = wait_until(SCRAPED, || {
        prom_query(&node.name, "up{job=\"podrouter\"}") == Some(1)
    });
    assert!(
        up,
        "Prometheus never scraped podrouterd; its log:\n{}",
        fs::read_to_string(prom_dir.join("prometheus.log")).unwrap_or_default()
    );

    // Known traffic: N echo requests from a to b, and N pings to an
    // unassigned pod address, each exactly one no_route drop.
    const N: u64 = 25;
    let n = N.to_string();
    let no_route = "podrouter_drop_count_total{reason=\"no_route\",direction=\"ingress\"}";
    let b_rx = "podrouter_port_received_packets_total{kind=\"pod\",name=\"pod-b\"}";
    let drops_before = wait_prom_equals(&node.name, no_route, || {
        num(&node.counters(), "/drops/no_route")
    });
    let b_rx_before = wait_prom_equals(&node.name, b_rx, || {
        port_field(&node, "pod-b", "rx_packets")
    });

    let p = ping(&a.ns, &b.ip, &["-c", &n, "-i", "0.02", "-W", "2"]);
    assert_eq!(p.received as u64, N, "{}", p.text);
    let lost = ping(&a.ns, "10.244.0.250", &["-c", &n, "-i", "0.02", "-W", "1"]);
    assert_eq!(lost.received, 0, "{}", lost.text);

    let drops_after = wait_prom_equals(&node.name, no_route, || {
        num(&node.counters(), "/drops/no_route")
    });
    assert_eq!(
        drops_after - drops_before,
        N,
        "Prometheus saw {} no_route drops for {N} pings to nowhere",
        drops_after - drops_before
    );
    let b_rx_after = wait_prom_equals(&node.name, b_rx, || {
        port_field(&node, "pod-b", "rx_packets")
    });
    // pod-b sent N echo replies; its kernel may add an ARP request or two.
    let seen = b_rx_after - b_rx_before;
    assert!(
        (N..=N + 3).contains(&seen),
        "Prometheus saw {seen} frames from pod-b for {N} echo replies"
    );
    assert_eq!(prom_query(&node.name, "podrouter_pods"), Some(2));
    // The two attaches, counted and timed; a refused one counted apart.
    let refused = node.ctl_out(&["attach", "pod-a", "--netns", &a.netns_path]);
    assert!(
        !refused.ok(),
        "a second attach of pod-a succeeded: {refused}"
    );
    let attach_ok = "podrouter_pod_attach_total{result=\"ok\"}";
    let attach_err = "podrouter_pod_attach_total{result=\"error\"}";
    let failed = wait_prom_equals(&node.name, attach_err, || {
        num(&node.counters(), "/attach/failed")
    });
    assert_eq!(failed, 1);
    assert_eq!(prom_query(&node.name, attach_ok), Some(2));
    assert_eq!(
        prom_query(&node.name, "podrouter_pod_attach_duration_seconds_count"),
        Some(3)
    );
    // Each attach took less than 5 s and more than nothing.
    assert_eq!(
        prom_query(
            &node.name,
            "podrouter_pod_attach_duration_seconds_bucket{le=\"5\"}"
        ),
        Some(3)
    );
    assert_eq!(
        prom_query(
            &node.name,
            "podrouter_pod_attach_duration_seconds_sum > bool 0"
        ),
        Some(1)
    );
    // The worker did work, and less than it has been alive.
    assert_eq!(
        prom_query(
            &node.name,
            "podrouter_worker_busy_seconds_total{worker=\"0\"} > bool 0"
        ),
        Some(1)
    );
    assert_eq!(
        prom_query(
            &node.name,
            "sum(podrouter_worker_busy_seconds_total) < bool scalar(podrouter_uptime_seconds) + 1"
        ),
        Some(1)
    );

    // The exposition passes Prometheus's own linter.
    let scrape = run_in(
        &node.name,
        &["curl", "-sf", &format!("http://{METRICS}/metrics")],
    );
    assert!(scrape.ok(), "{scrape}");
    for family in [
        "podrouter_port_sent_bytes_total{kind=\"pod\",name=\"pod-a\"}",
        "podrouter_port_received_bytes_total{kind=\"host\",name=",
        "podrouter_fib_routes ",
        "podrouter_flow_table_capacity ",
    ] {
        assert!(
            scrape.stdout.contains(family),
            "no {family} in the scrape:\n{}",
            scrape.stdout
        );
    }
    let file = node.dir.join("scrape.txt");
    fs::write(&file, &scrape.stdout).expect("write scrape");
    let lint = run(&[
        "sh",
        "-c",
        &format!("promtool check metrics < {}", file.display()),
    ]);
    assert!(
        lint.ok() && lint.stdout.trim().is_empty() && lint.stderr.trim().is_empty(),
        "promtool check metrics found problems: {lint}"
    );
}
