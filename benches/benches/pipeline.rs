//! Pipeline micro-benchmarks: the per-frame cost of `Pipeline::process` on
//! in-memory ports (no I/O, no syscalls).
//!
//! Run: `cargo bench -p podrouter-benches --bench pipeline`
//!
//! - `forward_pod_to_pod_64B`: a 64-byte UDP frame (Ethernet 14 + IPv4 20 +
//!   UDP 8 + 22 bytes of data) from one local pod to another: Ethernet and
//!   IPv4 validation, anti-spoofing, one FIB lookup in a small Calico-shaped
//!   table (a few local /32s, the node's block, a default route to the host),
//!   MAC rewrite and TTL decrement with the incremental checksum.
//! - `forward_pod_to_pod_64B_with_10k_nat_flows`: the same frame while the
//!   shared flow table holds 10,000 flows the node's kernel NATed (none of
//!   them this one): the cost of the reply-direction lookup of the
//!   host-NAT stage once the table is not empty.
//! - `forward_64B_established_flow_N_policy_rules` (N = 0, 1000, 10000):
//!   the same frame when the destination pod is isolated for ingress by a
//!   NetworkPolicy of N rules (half pod peers, half /32 ipBlocks, each on
//!   its own port; the last one allows the sender), on a flow the policy
//!   stage already allowed and tracked: the per-packet cost of policy on
//!   an established flow. N = 0: no policy at all.
//! - `policy_check_new_connection_N_rules`: the compiled rules' decision
//!   on a new connection (what the stage adds to a flow's first packet).
//! - `forward_pod_to_pod_64B_idle_capture`: the same frame on a port an
//!   armed capture watches with a filter it does not match (two terms,
//!   one reaching into the UDP header): the per-frame cost of an idle
//!   capture (compare with `forward_pod_to_pod_64B` of the same run).
//! - `proxy_arp_reply`: a pod's broadcast ARP request for 169.254.1.1 turned
//!   into the reply in place.
//!
//! The pipeline rewrites frames in place, so every iteration first reloads
//! the original bytes into the frame (`Frame::load`, a 64- or 42-byte copy).
//! That copy is included in the reported time; it stands in for the port
//! writing a received frame into the buffer. The `BatchContext` (FIB snapshot
//! and port table) is built once, as a worker does once per batch.
//! Throughput is reported per frame (`Throughput::Elements(1)`).
use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podrouter_router::capture::{CaptureSession, CaptureSpec, Direction, Filter};
use podrouter_router::conntrack::{FlowKey, FlowTable, Packet, Record, HOST_NAT};
use podrouter_router::counters::WorkerCounters;
use podrouter_router::fib::{Fib, FibChange, NextHop};
use podrouter_router::frame::{Frame, VnetHdr};
use podrouter_router::pipeline::{BatchContext, Pipeline, PipelineConfig, Verdict};
use podrouter_router::policy::{
    Decision, DirRulesBuilder, PodRules, PolicyTable, PortRange, PortSet,
};
use podrouter_router::port::{MemPort, PortEntry, PortId, PortInfo, PortRole, PortTable};
use podrouter_router::{GATEWAY_IP, ROUTER_MAC};
use podrouter_types::Prefix;

const PODS: u8 = 8;
const HOST: PortId = PortId(PODS as u32);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);

fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 2 + i)
}

fn pod_mac(i: u8) -> [u8; 6] {
    [0x02, 0x42, 0x0a, 0xf4, 0x01, 2 + i]
}

/// Ports 0..PODS are pods, port PODS is the host; a FIB with one /32 per
/// pod, the node's /24 block unreachable otherwise, a default to the host.
fn topology() -> (PortTable, Fib) {
    let mut ports = PortTable::default();
    let mut routes = vec![
        FibChange::Insert(
            Prefix::new(Ipv4Addr::UNSPECIFIED, 0).unwrap(),
            NextHop::Host,
        ),
        FibChange::Insert(
            Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap(),
            NextHop::Unreachable,
        ),
        FibChange::Insert(
            Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24).unwrap(),
            NextHop::Node(Ipv4Addr::new(192, 168, 0, 11)),
        ),
    ];
    for i in 0..PODS {
        let id = PortId(u32::from(i));
        ports = ports.with(
            id,
            PortEntry {
                info: PortInfo {
                    name: format!("pod{i}"),
                    role: PortRole::Pod {
                        ip: pod_ip(i),
                        mac: pod_mac(i),
                    },
                    mtu: 1500,
                },
                port: Arc::new(MemPort::new()),
            },
        );
        routes.push(FibChange::Insert(
            Prefix::new(pod_ip(i), 32).unwrap(),
            NextHop::Local(id),
        ));
    }
    ports = ports.with(
        HOST,
        PortEntry {
            info: PortInfo {
                name: "podrouter0".into(),
                role: PortRole::Host {
                    mac: [0x02, 0, 0, 0, 0, 0xfe],
                },
                mtu: 1500,
            },
            port: Arc::new(MemPort::new()),
        },
    );
    let fib = Fib::new();
    fib.update(&routes);
    (ports, fib)
}

fn pipeline() -> Pipeline {
    Pipeline::new(PipelineConfig {
        router_mac: ROUTER_MAC,
        node_ip: NODE_IP,
        icmp_rate_per_sec: 1000,
        icmp_burst: 100,
        // The clock stands still here: a bucket deep enough for every
        // iteration, so `proxy_arp_reply` measures a reply (limiter
        // included), not the refusal.
        arp_rate_per_sec: PipelineConfig::DEFAULT_ARP_RATE_PER_SEC,
        arp_burst: u32::MAX,
    })
}

/// Pod 1 isolated for ingress by `rules` rules, the last allowing pod 0
/// on UDP 53; no policy at all for 0.
fn policy_table(rules: usize) -> PolicyTable {
    if rules == 0 {
        return PolicyTable::default();
    }
    let mut b = DirRulesBuilder::default();
    for i in 0..rules as u32 - 1 {
        let peer = Ipv4Addr::from(0xac10_0000 + i);
        let port = PortSet::of([PortRange {
            proto: 6,
            lo: 1000 + (i % 5000) as u16,
            hi: 1000 + (i % 5000) as u16,
        }]);
        if i % 2 == 0 {
            b.allow_peer(peer, &port);
        } else {
            b.allow_range(peer, peer, &port);
        }
    }
    b.allow_peer(
        pod_ip(0),
        &PortSet::of([PortRange {
            proto: 17,
            lo: 53,
            hi: 53,
        }]),
    );
    let mut pods = HashMap::new();
    pods.insert(
        pod_ip(1),
        PodRules {
            ingress: Some(b.build()),
            egress: None,
        },
    );
    PolicyTable::new(pods, &[NODE_IP])
}

/// One's complement checksum of an IPv4 header (for building the input).
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// 64 bytes: pod 0 -> pod 1, UDP 12345 -> 53 with 22 bytes of data.
fn udp_frame_64() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&ROUTER_MAC);
    f[6..12].copy_from_slice(&pod_mac(0));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&pod_ip(0).octets());
    ip[16..20].copy_from_slice(&pod_ip(1).octets());
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&12345u16.to_be_bytes());
    f[36..38].copy_from_slice(&53u16.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// Pod 0 asks, by broadcast, who has 169.254.1.1.
fn arp_request() -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&pod_mac(0));
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01]);
    f[22..28].copy_from_slice(&pod_mac(0));
    f[28..32].copy_from_slice(&pod_ip(0).octets());
    f[38..42].copy_from_slice(&GATEWAY_IP.octets());
    f
}

fn bench_pipeline(c: &mut Criterion) {
    let (ports, fib) = topology();
    let table = fib.load();
    let counters = WorkerCounters::default();
    let flows = FlowTable::default();
    let ctx = BatchContext::new(&table, &ports, &counters, &flows, 0);
    let mut pipeline = pipeline();
    let mut frame = Frame::new();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));

    let udp = udp_frame_64();
    frame.load(&udp, VnetHdr::default());
    assert_eq!(
        pipeline.process(&ctx, PortId(0), &mut frame),
        Verdict::Forward {
            port: PortId(1),
            tunnel: None
        },
        "the benchmark frame must be forwarded"
    );
    assert_eq!(frame.data()[22], 63, "TTL decremented");
    group.bench_function("forward_pod_to_pod_64B", |b| {
        b.iter(|| {
            frame.load(black_box(&udp), VnetHdr::default());
            black_box(pipeline.process(&ctx, black_box(PortId(0)), &mut frame))
        })
    });

    // What an armed capture that matches nothing adds to each frame of the
    // captured port: the filter's miss (no copy), then the same forwarding.
    let idle = CaptureSession::new(
        CaptureSpec {
            port: PortId(0),
            filter: Filter::parse("host 203.0.113.77 or (udp and port 4789)").unwrap(),
            drops: false,
            snaplen: 128,
        },
        1,
    );
    assert!(
        idle.copy(0, &udp, 0, Direction::In).is_none(),
        "the filter misses"
    );
    group.bench_function("forward_pod_to_pod_64B_idle_capture", |b| {
        b.iter(|| {
            frame.load(black_box(&udp), VnetHdr::default());
            let kept = idle.copy(0, frame.data(), 0, Direction::In);
            black_box(kept.is_some());
            black_box(pipeline.process(&ctx, black_box(PortId(0)), &mut frame))
        })
    });

    let busy_flows = FlowTable::default();
    for i in 0..10_000u32 {
        let pkt = Packet {
            key: FlowKey {
                src: Ipv4Addr::from(0x0af4_0000 + 100 + (i >> 10)),
                dst: Ipv4Addr::new(10, 244, 1, 1),
                sport: 1024 + (i & 0x3ff) as u16,
                dport: 80,
                proto: 6,
            },
            tcp_flags: 0x02,
        };
        assert_eq!(busy_flows.record(&pkt, HOST_NAT, 0), Record::Inserted);
    }
    let busy_ctx = BatchContext::new(&table, &ports, &counters, &busy_flows, 0);
    frame.load(&udp, VnetHdr::default());
    assert_eq!(
        pipeline.process(&busy_ctx, PortId(0), &mut frame),
        Verdict::Forward {
            port: PortId(1),
            tunnel: None
        },
        "the benchmark frame is no reply of a NATed flow"
    );
    group.bench_function("forward_pod_to_pod_64B_with_10k_nat_flows", |b| {
        b.iter(|| {
            frame.load(black_box(&udp), VnetHdr::default());
            black_box(pipeline.process(&busy_ctx, black_box(PortId(0)), &mut frame))
        })
    });

    for rules in [0usize, 1_000, 10_000] {
        let policy = policy_table(rules);
        let flows = FlowTable::default();
        let pctx = BatchContext::new(&table, &ports, &counters, &flows, 0).with_policy(&policy);
        frame.load(&udp, VnetHdr::default());
        assert_eq!(
            pipeline.process(&pctx, PortId(0), &mut frame),
            Verdict::Forward {
                port: PortId(1),
                tunnel: None
            },
            "the policy allows the benchmark flow"
        );
        assert_eq!(flows.len(), usize::from(rules > 0), "tracked once isolated");
        group.bench_function(
            format!("forward_64B_established_flow_{rules}_policy_rules"),
            |b| {
                b.iter(|| {
                    frame.load(black_box(&udp), VnetHdr::default());
                    black_box(pipeline.process(&pctx, black_box(PortId(0)), &mut frame))
                })
            },
        );
        if rules > 0 {
            assert_eq!(policy.check(pod_ip(0), pod_ip(1), 17, 53), Decision::Allow);
            assert_eq!(
                policy.check(pod_ip(2), pod_ip(1), 17, 53),
                Decision::DenyIngress
            );
            group.bench_function(format!("policy_check_new_connection_{rules}_rules"), |b| {
                b.iter(|| {
                    policy.check(
                        black_box(pod_ip(0)),
                        black_box(pod_ip(1)),
                        17,
                        black_box(53),
                    )
                })
            });
        }
    }

    let arp = arp_request();
    frame.load(&arp, VnetHdr::default());
    assert_eq!(
        pipeline.process(&ctx, PortId(0), &mut frame),
        Verdict::Forward {
            port: PortId(0),
            tunnel: None
        },
        "the benchmark ARP request must be answered"
    );
    assert_eq!(&frame.data()[22..28], &ROUTER_MAC);
    group.bench_function("proxy_arp_reply", |b| {
        b.iter(|| {
            frame.load(black_box(&arp), VnetHdr::default());
            black_box(pipeline.process(&ctx, black_box(PortId(0)), &mut frame))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
