//! The Prometheus endpoint (`[metrics] listen`): a plain thread that
//! answers `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! Invariants: no worker and no data-path counter is touched here. Each
//! scrape asks the daemon through its own API socket (the calls
//! `podrouterctl counters`, `status`, `pods` and `bgp peers` make), so the
//! figures are exactly the ones the CLI shows, read from the per-worker
//! counters at scrape time; nothing is cached or counted twice. The
//! exposition is built with the `prometheus` crate in a fresh registry
//! per scrape. One connection is served at a time with short timeouts, and
//! request heads are bounded, so a client can delay scrapes but not grow
//! memory or block the daemon.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use podrouter_api::{
    BgpPeerInfo, Call, Client, CountersInfo, ErrorCode, OpStatsInfo, PodInfo, Reply, ServiceInfo,
    StatusInfo,
};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// How long a scraper may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head accepted.
const MAX_HEAD: usize = 8192;
/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// RFC 4271 session states, in order, for the one-hot state gauge.
const BGP_STATES: [&str; 6] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
];

/// Binds `listen` now (so a bad address fails the start) and serves
/// scrapes from a thread of its own until the process exits.
pub fn spawn(listen: SocketAddr, api_socket: PathBuf, host_port: String) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    log::info!("metrics on http://{listen}/metrics");
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = serve(s, &api_socket, &host_port) {
                            log::debug!("metrics client: {e}");
                        }
                    }
                    Err(e) => log::warn!("metrics accept: {e}"),
                }
            }
        })?;
    Ok(())
}

fn serve(mut s: TcpStream, api_socket: &std::path::Path, host_port: &str) -> io::Result<()> {
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let head = read_head(&mut s)?;
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut s, "405 Method Not Allowed", "text/plain", "GET only\n");
    }
    if path != "/metrics" {
        return respond(&mut s, "404 Not Found", "text/plain", "see /metrics\n");
    }
    match scrape(api_socket).map(|snap| render(&snap, host_port)) {
        Ok(body) => respond(&mut s, "200 OK", CONTENT_TYPE, &body),
        Err(e) => respond(
            &mut s,
            "503 Service Unavailable",
            "text/plain",
            &format!("podrouterd API: {e}\n"),
        ),
    }
}

/// Reads up to the blank line that ends an HTTP request head.
fn read_head(s: &mut TcpStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_HEAD {
            return Err(io::Error::other("request head too long"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(s: &mut TcpStream, status: &str, content_type: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())
}

/// What one scrape reads from the daemon.
pub struct Snapshot {
    pub status: StatusInfo,
    pub counters: CountersInfo,
    pub pods: Vec<PodInfo>,
    /// Empty when BGP is off.
    pub peers: Vec<BgpPeerInfo>,
    /// The built-in load balancer's services (empty when none).
    pub services: Vec<ServiceInfo>,
}

fn scrape(api_socket: &std::path::Path) -> Result<Snapshot, podrouter_api::ClientError> {
    let mut c = Client::connect(api_socket, CLIENT_TIMEOUT)?;
    let unexpected = || podrouter_api::ClientError::Protocol("unexpected reply".into());
    let Reply::Status(status) = c.call(Call::Status)? else {
        return Err(unexpected());
    };
    let Reply::Counters(counters) = c.call(Call::Counters)? else {
        return Err(unexpected());
    };
    let Reply::Pods(pods) = c.call(Call::ListPods)? else {
        return Err(unexpected());
    };
    let peers = match c.call(Call::BgpPeers) {
        Ok(Reply::BgpPeers(p)) => p,
        Ok(_) => return Err(unexpected()),
        Err(podrouter_api::ClientError::Api(e)) if e.code == ErrorCode::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let Reply::Services(services) = c.call(Call::ServiceList)? else {
        return Err(unexpected());
    };
    Ok(Snapshot {
        status,
        counters,
        pods,
        peers,
        services,
    })
}

/// Where a drop reason happens: every reason is decided on a frame the
/// router received, except a refusal by the egress port and a pod's own
/// egress policy.
fn drop_direction(reason: &str) -> &'static str {
    if reason == "tx_error" || reason == "policy_denied_egress" {
        "egress"
    } else {
        "ingress"
    }
}

/// Metric families of one scrape, in a registry of their own.
struct Families {
    reg: Registry,
}

impl Families {
    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.reg
            .register(Box::new(v.clone()))
            .expect("metric registered once");
        v
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name");
        self.reg
            .register(Box::new(v.clone()))
            .expect("metric registered once");
        v
    }
}

/// A counter of seconds per worker, from nanoseconds in worker order.
fn per_worker_seconds(f: &Families, name: &str, help: &str, per_worker_ns: &[u64]) {
    let v = CounterVec::new(Opts::new(name, help), &["worker"]).expect("valid metric name");
    f.reg
        .register(Box::new(v.clone()))
        .expect("metric registered once");
    for (i, ns) in per_worker_ns.iter().enumerate() {
        v.with_label_values(&[i.to_string().as_str()])
            .inc_by(*ns as f64 / 1e9);
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The exposition of one snapshot (Prometheus text format 0.0.4).
pub fn render(snap: &Snapshot, host_port: &str) -> String {
    let f = Families {
        reg: Registry::new_custom(Some("podrouter".into()), None).expect("valid prefix"),
    };
    let c = &snap.counters;

    // Per port: kind is pod, host or uplink; name is the pod id or the
    // interface name.
    let port = ["kind", "name"];
    let rx_p = f.counter(
        "port_received_packets_total",
        "Frames received on a port.",
        &port,
    );
    let rx_b = f.counter(
        "port_received_bytes_total",
        "Bytes received on a port.",
        &port,
    );
    let tx_p = f.counter(
        "port_sent_packets_total",
        "Frames sent out of a port.",
        &port,
    );
    let tx_b = f.counter("port_sent_bytes_total", "Bytes sent out of a port.", &port);
    let dr_p = f.counter(
        "port_dropped_packets_total",
        "Frames received on a port and dropped.",
        &port,
    );
    let denied = f.counter(
        "port_policy_denied_total",
        "Connections a pod's NetworkPolicy refused, by direction from the pod.",
        &["kind", "name", "direction"],
    );
    // An AF_XDP port's socket drops (the kernel's `XDP_STATISTICS` and
    // the port's own), only for ports that have AF_XDP sockets.
    let xsk = f.counter(
        "port_xsk_drops_total",
        "Frames dropped around an AF_XDP port's sockets, by counter (the kernel's rx_dropped, rx_ring_full, rx_fill_empty; the port's tx_dropped, rx_invalid).",
        &["kind", "name", "counter"],
    );
    for p in &c.ports {
        let pod = snap.pods.iter().find(|x| x.port == p.port);
        let (kind, name) = match pod {
            Some(pod) => ("pod", pod.id.as_str()),
            None if p.name == host_port => ("host", p.name.as_str()),
            None => ("uplink", p.name.as_str()),
        };
        let l = [kind, name];
        rx_p.with_label_values(&l).inc_by(p.rx_packets);
        rx_b.with_label_values(&l).inc_by(p.rx_bytes);
        tx_p.with_label_values(&l).inc_by(p.tx_packets);
        tx_b.with_label_values(&l).inc_by(p.tx_bytes);
        dr_p.with_label_values(&l).inc_by(p.drops);
        denied
            .with_label_values(&[kind, name, "ingress"])
            .inc_by(p.policy_denied_ingress);
        denied
            .with_label_values(&[kind, name, "egress"])
            .inc_by(p.policy_denied_egress);
        if let Some(x) = &p.xsk {
            for (counter, n) in [
                ("rx_dropped", x.rx_dropped),
                ("rx_ring_full", x.rx_ring_full),
                ("rx_fill_empty", x.rx_fill_empty),
                ("tx_dropped", x.tx_dropped),
                ("rx_invalid", x.rx_invalid),
            ] {
                xsk.with_label_values(&[kind, name, counter]).inc_by(n);
            }
        }
    }

    let drops = f.counter(
        "drop_count_total",
        "Frames dropped, by reason (see README) and direction.",
        &["reason", "direction"],
    );
    for (reason, n) in &c.drops {
        drops
            .with_label_values(&[reason.as_str(), drop_direction(reason)])
            .inc_by(*n);
    }

    // Per peer node of the tunnel (IPIP or VXLAN): its underlay address
    // (`other` for nodes beyond the data plane's slots), direction
    // `received` (decapsulated from it) or `sent` (handed to the tunnel
    // for it); bytes of the inner packets.
    let tunnel = ["node", "direction"];
    let tun_p = f.counter(
        "tunnel_packets_total",
        "Frames through the tunnel, by peer node and direction.",
        &tunnel,
    );
    let tun_b = f.counter(
        "tunnel_bytes_total",
        "Inner IPv4 bytes through the tunnel, by peer node and direction.",
        &tunnel,
    );
    for t in &c.tunnels {
        for (dir, packets, bytes) in [
            ("received", t.rx_packets, t.rx_bytes),
            ("sent", t.tx_packets, t.tx_bytes),
        ] {
            tun_p.with_label_values(&[&t.node, dir]).inc_by(packets);
            tun_b.with_label_values(&[&t.node, dir]).inc_by(bytes);
        }
    }

    for (name, help, v) in [
        (
            "received_packets_total",
            "Frames received, all ports.",
            c.rx,
        ),
        ("sent_packets_total", "Frames sent, all ports.", c.tx),
        (
            "worker_sleeps_total",
            "Times a worker slept waiting for readiness.",
            c.sleeps,
        ),
        (
            "host_inline_reads_total",
            "Frames read back from the host port in the worker round that wrote to it.",
            c.host_inline,
        ),
        (
            "busy_poll_backoffs_total",
            "Times busy polling stopped spinning for a while because the scheduler took a worker's CPU.",
            c.busy_poll_backoffs,
        ),
        (
            "busy_poll_stalls_total",
            "Long gaps in a worker's busy polling that were no preemption (interrupt work, a VM's host); the spin went on.",
            c.busy_poll_stalls,
        ),
        ("arp_replies_total", "ARP requests answered.", c.arp_replies),
        ("icmp_sent_total", "ICMP errors sent.", c.icmp_sent),
        (
            "icmp_rate_limited_total",
            "ICMP errors suppressed by the rate limiter.",
            c.icmp_rate_limited,
        ),
        (
            "flows_inserted_total",
            "Flows entered in the flow table.",
            c.flows.inserted,
        ),
        (
            "flows_refused_total",
            "New flows refused because their bucket was full.",
            c.flows.full,
        ),
        (
            "flows_expired_total",
            "Flow-table entries freed after their timeout.",
            c.flows.expired,
        ),
        (
            "flows_steered_packets_total",
            "Reply packets of kernel-NATed flows sent to the host port.",
            c.flows.steered_to_host,
        ),
        (
            "flows_purged_total",
            "Flow-table entries removed because their Service or backend went away.",
            c.flows.purged,
        ),
        (
            "policy_allowed_connections_total",
            "New connections network policy checked and allowed (then tracked).",
            c.flows.policy_allowed,
        ),
    ] {
        f.counter(name, help, &[])
            .with_label_values::<&str>(&[])
            .inc_by(v);
    }
    let s = &snap.status;
    for (name, help, v) in [
        ("workers", "Data-plane worker threads.", c.workers as u64),
        ("pods", "Pods attached.", s.pods as u64),
        ("fib_routes", "Routes in the FIB.", s.routes as u64),
        (
            "ipam_free_addresses",
            "Pod addresses still free.",
            s.free_addresses,
        ),
        (
            "flow_table_capacity",
            "Slots of the flow table.",
            c.flows.capacity,
        ),
        (
            "flow_table_entries",
            "Flow-table slots in use.",
            c.flows.entries,
        ),
        (
            "uptime_seconds",
            "Seconds since podrouterd started.",
            s.uptime_secs,
        ),
    ] {
        f.gauge(name, help, &[])
            .with_label_values::<&str>(&[])
            .set(gauge_value(v));
    }

    per_worker_seconds(
        &f,
        "worker_busy_seconds_total",
        "Seconds a worker spent in rounds that received frames (idle: uptime minus this).",
        &c.worker_busy_ns,
    );
    per_worker_seconds(
        &f,
        "worker_spin_seconds_total",
        "Seconds of wall time a worker polled on without work, instead of sleeping, because busy polling kept it awake (busy_poll_us, busy_poll_max_us): what busy polling costs.",
        &c.worker_spin_ns,
    );
    for (op, stats) in [("attach", &c.attach), ("detach", &c.detach)] {
        let calls = f.counter(
            &format!("pod_{op}_total"),
            &format!("Pod {op} calls handled, by result."),
            &["result"],
        );
        calls.with_label_values(&["ok"]).inc_by(stats.ok);
        calls.with_label_values(&["error"]).inc_by(stats.failed);
    }
    if let Some(a) = &s.api {
        f.gauge("api_connections", "API connections open.", &[])
            .with_label_values::<&str>(&[])
            .set(gauge_value(a.connections));
        let refused = f.counter(
            "api_refused_total",
            "API connections refused or closed and requests refused, by reason.",
            &["reason"],
        );
        for (reason, v) in [
            ("busy", a.refused_busy),
            ("request_timeout", a.request_timeouts),
            ("oversized", a.oversized),
            ("bad_request", a.bad_requests),
            ("write_timeout", a.write_timeouts),
        ] {
            refused.with_label_values(&[reason]).inc_by(v);
        }
    }

    if !snap.peers.is_empty() {
        let state = f.gauge(
            "bgp_session_state",
            "1 for the BGP session's current RFC 4271 state, 0 for the others.",
            &["peer", "state"],
        );
        let received = f.gauge(
            "bgp_prefixes_received",
            "Prefixes in the peer's Adj-RIB-In.",
            &["peer"],
        );
        let accepted = f.gauge(
            "bgp_prefixes_accepted",
            "Prefixes of the peer the import filter lets into the FIB.",
            &["peer"],
        );
        let updates = f.counter(
            "bgp_updates_received_total",
            "UPDATE messages received from the peer.",
            &["peer"],
        );
        let established = f.counter(
            "bgp_established_transitions_total",
            "Times the session reached Established.",
            &["peer"],
        );
        for p in &snap.peers {
            let peer = p.address.to_string();
            for st in BGP_STATES {
                state
                    .with_label_values(&[peer.as_str(), st])
                    .set(i64::from(p.state == st));
            }
            let l = [peer.as_str()];
            received
                .with_label_values(&l)
                .set(gauge_value(p.prefixes_received as u64));
            accepted
                .with_label_values(&l)
                .set(gauge_value(p.prefixes_accepted as u64));
            updates.with_label_values(&l).inc_by(p.updates_in);
            established
                .with_label_values(&l)
                .inc_by(p.established_count);
        }
    }

    if !snap.services.is_empty() {
        render_services(&f, &snap.services);
    }

    // Histograms whose buckets the daemon already counted: families of
    // their own, next to the registry's.
    let mut families = f.reg.gather();
    families.push(histogram(
        "podrouter_pod_attach_duration_seconds",
        "Time from an attach call's arrival to its answer.",
        &c.attach,
    ));
    families.push(histogram(
        "podrouter_pod_detach_duration_seconds",
        "Time from a detach call's arrival to its answer.",
        &c.detach,
    ));
    // Every family is registered once with valid names, so encoding cannot
    // fail; an empty body would still be a valid exposition.
    TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_default()
}

/// The built-in load balancer's families: per service port, and per
/// backend of it.
fn render_services(f: &Families, services: &[ServiceInfo]) {
    let svc = ["namespace", "service", "port", "protocol"];
    let packets = f.counter(
        "service_packets_total",
        "Packets to a ClusterIP port translated to a backend (built-in load balancer).",
        &svc,
    );
    let flows = f.counter(
        "service_flows_total",
        "New flows to a ClusterIP port given a backend.",
        &svc,
    );
    let rejected = f.counter(
        "service_rejected_flows_total",
        "New flows to a ClusterIP port refused for want of a ready backend.",
        &svc,
    );
    let cut = f.counter(
        "service_cut_flows_total",
        "Flows to a ClusterIP port cut because their backend left it.",
        &svc,
    );
    let ready = f.gauge(
        "service_ready_backends",
        "Ready backends of a ClusterIP port.",
        &svc,
    );
    let be = ["namespace", "service", "port", "protocol", "backend"];
    let be_packets = f.counter(
        "service_backend_packets_total",
        "Packets a ClusterIP port sent to one backend.",
        &be,
    );
    let be_flows = f.counter(
        "service_backend_flows_total",
        "New flows a ClusterIP port gave one backend.",
        &be,
    );
    for s in services {
        for p in &s.ports {
            let port = p.port.to_string();
            let l = [
                s.namespace.as_str(),
                s.name.as_str(),
                port.as_str(),
                p.protocol.as_str(),
            ];
            packets.with_label_values(&l).inc_by(p.packets);
            flows.with_label_values(&l).inc_by(p.flows);
            rejected.with_label_values(&l).inc_by(p.rejected);
            cut.with_label_values(&l).inc_by(p.cut);
            ready
                .with_label_values(&l)
                .set(gauge_value(p.backends.len() as u64));
            for b in &p.backends {
                let backend = format!("{}:{}", b.ip, b.port);
                let l = [l[0], l[1], l[2], l[3], backend.as_str()];
                be_packets.with_label_values(&l).inc_by(b.packets);
                be_flows.with_label_values(&l).inc_by(b.flows);
            }
        }
    }
}

/// A histogram family from counts already bucketed (cumulative, finite
/// bounds; the encoder adds `+Inf` from the total).
fn histogram(name: &str, help: &str, s: &OpStatsInfo) -> MetricFamily {
    let mut h = Histogram::default();
    h.set_sample_count(s.ok + s.failed);
    h.set_sample_sum(s.seconds_sum);
    h.set_bucket(
        s.buckets
            .iter()
            .map(|(le, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(*n);
                b
            })
            .collect(),
    );
    let mut m = Metric::from_label(Vec::<LabelPair>::new());
    m.set_histogram(h);
    let mut mf = MetricFamily::default();
    mf.set_name(name.into());
    mf.set_help(help.into());
    mf.set_field_type(MetricType::HISTOGRAM);
    mf.set_metric(vec![m]);
    mf
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrouter_api::{PortCountersInfo, TunnelCountersInfo, XskCountersInfo};

    fn snapshot() -> Snapshot {
        let status: StatusInfo = serde_json::from_value(serde_json::json!({
            "node_name": "n", "node_ip": "10.0.0.1", "pod_cidrs": ["10.244.0.0/24"],
            "daemon_version": "0", "api_version": 1, "backend": "tap", "encap": "always",
            "workers": 1, "pods": 1, "routes": 4, "free_addresses": 250, "uptime_secs": 9,
            "api": {"connections": 3, "max_connections": 512, "accepted": 40,
                    "refused_busy": 0, "requests": 50, "request_timeouts": 2,
                    "oversized": 1, "bad_requests": 0, "write_timeouts": 0}
        }))
        .unwrap();
        let port = |port: u32, name: &str, rx: u64| PortCountersInfo {
            port,
            name: name.into(),
            rx_packets: rx,
            rx_bytes: rx * 100,
            tx_packets: 1,
            tx_bytes: 2,
            drops: 3,
            ..PortCountersInfo::default()
        };
        let mut counters = CountersInfo {
            workers: 1,
            rx: 12,
            ports: vec![
                port(0, "podrouter0", 5),
                port(1, "ipip@eth0", 0),
                port(2, "eth0@web", 7),
            ],
            ..CountersInfo::default()
        };
        counters.ports[2].xsk = Some(XskCountersInfo {
            rx_dropped: 11,
            rx_fill_empty: 4,
            ..XskCountersInfo::default()
        });
        counters.worker_busy_ns = vec![1_500_000_000, 0];
        counters.worker_spin_ns = vec![250_000_000, 0];
        counters.flows.policy_allowed = 6;
        counters.flows.purged = 8;
        counters.attach = OpStatsInfo {
            ok: 3,
            failed: 1,
            seconds_sum: 0.5,
            buckets: vec![(0.01, 2), (0.1, 3), (1.0, 4)],
        };
        counters.tunnels = vec![TunnelCountersInfo {
            node: "10.0.0.2".into(),
            rx_packets: 4,
            rx_bytes: 336,
            tx_packets: 5,
            tx_bytes: 420,
        }];
        counters.drops.insert("no_route".into(), 25);
        counters.drops.insert("tx_error".into(), 1);
        let pods = vec![serde_json::from_value(serde_json::json!({
            "id": "web", "netns": "/run/netns/web", "ifname": "eth0", "ip": "10.244.0.2",
            "mac": "0a:58:0a:f4:00:02", "mtu": 1480, "port": 2, "worker": 0
        }))
        .unwrap()];
        let peers = vec![serde_json::from_value(serde_json::json!({
            "address": "10.0.0.2", "asn": 64512, "kind": "ibgp", "state": "Established",
            "since_secs": 3, "passive": false, "md5": false, "prefixes_received": 2,
            "prefixes_accepted": 1, "prefixes_stale": 0, "messages_in": 5, "messages_out": 5, "updates_in": 2,
            "updates_out": 1, "treat_as_withdraw": 0, "established_count": 1,
            "capabilities": []
        }))
        .unwrap()];
        let services = serde_json::from_value(serde_json::json!([{
            "namespace": "kube-system", "name": "dns", "cluster_ip": "10.96.0.10",
            "affinity_secs": 0, "ports": [{
                "name": "dns", "protocol": "UDP", "port": 53, "packets": 9, "flows": 4,
                "rejected": 1, "cut": 2,
                "backends": [{"ip": "10.244.1.5", "port": 5353, "packets": 9, "flows": 4}]
            }]
        }]))
        .unwrap();
        Snapshot {
            status,
            counters,
            pods,
            peers,
            services,
        }
    }

    #[test]
    fn every_figure_lands_under_its_name_and_labels() {
        let text = render(&snapshot(), "podrouter0");
        for line in [
            "# TYPE podrouter_port_received_packets_total counter",
            r#"podrouter_port_received_packets_total{kind="pod",name="web"} 7"#,
            r#"podrouter_port_received_bytes_total{kind="host",name="podrouter0"} 500"#,
            r#"podrouter_port_dropped_packets_total{kind="uplink",name="ipip@eth0"} 3"#,
            "# TYPE podrouter_port_xsk_drops_total counter",
            r#"podrouter_port_xsk_drops_total{counter="rx_dropped",kind="pod",name="web"} 11"#,
            r#"podrouter_port_xsk_drops_total{counter="rx_fill_empty",kind="pod",name="web"} 4"#,
            r#"podrouter_port_xsk_drops_total{counter="rx_ring_full",kind="pod",name="web"} 0"#,
            r#"podrouter_drop_count_total{direction="ingress",reason="no_route"} 25"#,
            r#"podrouter_drop_count_total{direction="egress",reason="tx_error"} 1"#,
            "podrouter_received_packets_total 12",
            "# TYPE podrouter_fib_routes gauge",
            "podrouter_fib_routes 4",
            "podrouter_pods 1",
            "podrouter_api_connections 3",
            r#"podrouter_api_refused_total{reason="request_timeout"} 2"#,
            r#"podrouter_api_refused_total{reason="oversized"} 1"#,
            r#"podrouter_bgp_session_state{peer="10.0.0.2",state="Established"} 1"#,
            r#"podrouter_bgp_session_state{peer="10.0.0.2",state="Idle"} 0"#,
            r#"podrouter_bgp_prefixes_accepted{peer="10.0.0.2"} 1"#,
            r#"podrouter_service_flows_total{namespace="kube-system",port="53",protocol="UDP",service="dns"} 4"#,
            r#"podrouter_service_rejected_flows_total{namespace="kube-system",port="53",protocol="UDP",service="dns"} 1"#,
            r#"podrouter_service_cut_flows_total{namespace="kube-system",port="53",protocol="UDP",service="dns"} 2"#,
            r#"podrouter_service_backend_packets_total{backend="10.244.1.5:5353",namespace="kube-system",port="53",protocol="UDP",service="dns"} 9"#,
            r#"podrouter_service_ready_backends{namespace="kube-system",port="53",protocol="UDP",service="dns"} 1"#,
            "podrouter_policy_allowed_connections_total 6",
            "podrouter_flows_purged_total 8",
            r#"podrouter_worker_busy_seconds_total{worker="0"} 1.5"#,
            r#"podrouter_worker_busy_seconds_total{worker="1"} 0"#,
            r#"podrouter_worker_spin_seconds_total{worker="0"} 0.25"#,
            r#"podrouter_pod_attach_total{result="ok"} 3"#,
            r#"podrouter_pod_attach_total{result="error"} 1"#,
            "# TYPE podrouter_pod_attach_duration_seconds histogram",
            r#"podrouter_pod_attach_duration_seconds_bucket{le="0.01"} 2"#,
            r#"podrouter_pod_attach_duration_seconds_bucket{le="1"} 4"#,
            r#"podrouter_pod_attach_duration_seconds_bucket{le="+Inf"} 4"#,
            "podrouter_pod_attach_duration_seconds_sum 0.5",
            "podrouter_pod_attach_duration_seconds_count 4",
            "podrouter_pod_detach_duration_seconds_count 0",
            "# TYPE podrouter_tunnel_packets_total counter",
            r#"podrouter_tunnel_packets_total{direction="received",node="10.0.0.2"} 4"#,
            r#"podrouter_tunnel_packets_total{direction="sent",node="10.0.0.2"} 5"#,
            r#"podrouter_tunnel_bytes_total{direction="received",node="10.0.0.2"} 336"#,
            r#"podrouter_tunnel_bytes_total{direction="sent",node="10.0.0.2"} 420"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // Only ports with AF_XDP sockets have the socket counters.
        assert!(
            !text.contains(r#"podrouter_port_xsk_drops_total{counter="rx_dropped",kind="host""#),
            "{text}"
        );
    }

    #[test]
    fn without_bgp_there_are_no_bgp_families() {
        let mut s = snapshot();
        s.peers.clear();
        assert!(!render(&s, "podrouter0").contains("bgp"));
    }
}
