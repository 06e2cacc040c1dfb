//! FIB micro-benchmarks: longest-prefix lookups at several table sizes and
//! shapes, and update rates at 1M routes while a reader thread keeps
//! looking up (as a worker would): 1,000-change batches (`fib_update`),
//! installing the whole table and churning a tenth of it in one batch
//! (`fib_update_bulk`, routes per second of wall clock).
//!
//! Run: `cargo bench -p podrouter-benches --bench fib`
//!
//! Lookup groups: one criterion iteration is one lookup, so the time
//! criterion reports is the time per lookup. A sample times a plain loop
//! over a pre-generated array of 4M addresses (16 MiB, read in order,
//! cycled), with one `Fib::load` per sample (a worker loads once per rx
//! batch and then looks up frame by frame): no per-lookup closure call,
//! random number or snapshot load is in the figure, and the array is big
//! enough that the table lines it touches do not stay in the caches (the
//! previous version cycled 65,536 addresses, whose lines fit in this
//! machine's 32 MiB L3).
//! - `fib_lookup/random/N`: `FibTable::lookup` one address at a time, each
//!   result used before the next lookup starts only as far as the CPU's
//!   out-of-order window keeps them apart (a worker's per-frame lookup).
//! - `fib_lookup_batch/random/N`: `FibTable::lookup_batch` over 256
//!   addresses at a time (a worker's rx batch; with the DIR-24-8 index,
//!   groups of 16 addresses pipelined through stages that prefetch the
//!   /24 entries, then the chunks, then the next hops): the per-lookup
//!   cost inside a batch, not a single lookup's latency.
//! - `fib_lookup_hashed/random/1M`: the per-length hash tables with the
//!   /16 index, the lookup path tables below `Fib::INDEX_MIN_ROUTES` take,
//!   forced at 1M routes for comparison with the DIR-24-8 index.
//!
//! Memory per route is printed before each table's lookups (the snapshot's
//! own estimate, `FibTable::memory_bytes`, plus the writer's second copy
//! of the DIR-24-8 index).
//!
//! Random tables: prefix lengths drawn like a large Calico cluster's FIB,
//! 70% /32 (pods), 25% /26 (IPAM blocks of other nodes), 5% uniform in
//! /16../24 (host, service and aggregate routes), plus one default route;
//! addresses uniform over the IPv4 space, duplicates redrawn, so the table
//! holds exactly N routes. Lookup addresses: half inside a random installed
//! prefix (hits at that length or a longer one), half uniform (mostly fall
//! through the long lengths to a short route or the default).
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podrouter_router::fib::{Fib, FibChange, NextHop};
use podrouter_router::port::PortId;
use podrouter_types::Prefix;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Lookups per `lookup_batch` call: one worker rx batch.
const BATCH: usize = 256;
/// Distinct lookup addresses (cycled): 16 MiB of addresses, whose lookups
/// touch far more than the caches hold, the way real traffic over a big
/// table would.
const ADDRS: usize = 1 << 22;
/// Changes per update batch in the update benchmark.
const UPDATE_BATCH: usize = 1_000;

fn mask(len: u8) -> u32 {
    (u64::MAX << (32 - u32::from(len))) as u32
}

fn random_prefix(rng: &mut SmallRng) -> Prefix {
    let len = match rng.gen_range(0..100) {
        0..=69 => 32,
        70..=94 => 26,
        _ => rng.gen_range(16..=24),
    };
    Prefix::new(Ipv4Addr::from(rng.gen::<u32>() & mask(len)), len).unwrap()
}

fn next_hop_for(rng: &mut SmallRng, p: Prefix) -> NextHop {
    match p.len() {
        32 => NextHop::Local(PortId(rng.gen_range(0..4096))),
        26 => NextHop::Node(Ipv4Addr::from(rng.gen::<u32>())),
        _ => NextHop::Host,
    }
}

/// `n` distinct routes including a default route, as one insert batch.
fn random_routes(rng: &mut SmallRng, n: usize) -> Vec<FibChange> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let default = Prefix::new(Ipv4Addr::UNSPECIFIED, 0).unwrap();
    seen.insert(default);
    let mut out = vec![FibChange::Insert(default, NextHop::Host)];
    while out.len() < n {
        let p = random_prefix(rng);
        if seen.insert(p) {
            out.push(FibChange::Insert(p, next_hop_for(rng, p)));
        }
    }
    out
}

fn lookup_addrs(rng: &mut SmallRng, routes: &[FibChange]) -> Vec<Ipv4Addr> {
    (0..ADDRS)
        .map(|i| {
            if i % 2 == 0 {
                return Ipv4Addr::from(rng.gen::<u32>());
            }
            let FibChange::Insert(p, _) = routes[rng.gen_range(0..routes.len())] else {
                unreachable!()
            };
            Ipv4Addr::from(u32::from(p.addr()) | (rng.gen::<u32>() & !mask(p.len())))
        })
        .collect()
}

/// A Calico node: default via the host, our own /24 block unreachable, 250
/// local pods (/32s in that block), 1000 other nodes' /26 blocks.
fn pod_node_routes() -> Vec<FibChange> {
    let mut out = vec![
        FibChange::Insert("0.0.0.0/0".parse().unwrap(), NextHop::Host),
        FibChange::Insert("10.244.0.0/24".parse().unwrap(), NextHop::Unreachable),
    ];
    for i in 1..=250u8 {
        let pod = Prefix::host(Ipv4Addr::new(10, 244, 0, i));
        out.push(FibChange::Insert(pod, NextHop::Local(PortId(i.into()))));
    }
    for n in 1..=1000u32 {
        // Blocks 10.244.1.0/26, 10.244.1.64/26, ... 10.244.250.192/26.
        let block = Ipv4Addr::from(0x0af4_0100 + ((n - 1) << 6));
        let node = Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 0)) + n);
        out.push(FibChange::Insert(
            Prefix::new(block, 26).unwrap(),
            NextHop::Node(node),
        ));
    }
    out
}

/// Pod-node traffic: local pods, remote pods, unassigned addresses in our
/// block, and the outside world, in equal parts.
fn pod_node_addrs(rng: &mut SmallRng) -> Vec<Ipv4Addr> {
    (0..ADDRS)
        .map(|i| match i % 4 {
            0 => Ipv4Addr::new(10, 244, 0, rng.gen_range(1..=250)),
            1 => Ipv4Addr::from(0x0af4_0100 + rng.gen_range(0..1000 * 64)),
            2 => Ipv4Addr::new(10, 244, 0, rng.gen_range(251..=255)),
            _ => Ipv4Addr::from(rng.gen::<u32>()),
        })
        .collect()
}

fn bench_lookup_batch_on(c: &mut Criterion, id: BenchmarkId, fib: &Fib, addrs: &[Ipv4Addr]) {
    let mut g = c.benchmark_group("fib_lookup_batch");
    g.throughput(Throughput::Elements(1));
    let mut at = 0;
    let mut out = [None; BATCH];
    g.bench_function(id, |b| {
        b.iter_custom(|lookups| {
            let t = fib.load();
            let mut hits = 0;
            let mut left = lookups as usize;
            let start = Instant::now();
            while left > 0 {
                let n = left.min(BATCH).min(addrs.len() - at);
                t.lookup_batch(black_box(&addrs[at..at + n]), &mut out);
                hits += out[..n].iter().filter(|nh| nh.is_some()).count();
                left -= n;
                at = (at + n) % addrs.len();
            }
            let elapsed = start.elapsed();
            black_box(hits);
            elapsed
        })
    });
    g.finish();
}

fn bench_lookup_on(c: &mut Criterion, group: &str, id: BenchmarkId, fib: &Fib, addrs: &[Ipv4Addr]) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let mut at = 0;
    g.bench_function(id, |b| {
        b.iter_custom(|lookups| {
            let t = fib.load();
            let mut hits = 0u32;
            let start = Instant::now();
            for _ in 0..lookups {
                hits += t.lookup(black_box(addrs[at])).is_some() as u32;
                at += 1;
                if at == addrs.len() {
                    at = 0;
                }
            }
            let elapsed = start.elapsed();
            black_box(hits);
            elapsed
        })
    });
    g.finish();
}

fn fib_lookup(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(0xf1b);
    for (n, name) in [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")] {
        let routes = random_routes(&mut rng, n);
        let fib = Fib::new();
        fib.update(&routes);
        let addrs = lookup_addrs(&mut rng, &routes);
        let t = fib.load();
        // The writer keeps a second index copy of the same size.
        let total = t.memory_bytes() + t.index_bytes();
        eprintln!(
            "fib random/{name}: {} routes, {:.1} MB, {:.0} bytes per route with both DIR-24-8 \
             index copies (index: {}, {:.1} MB per copy), per length {:?}",
            t.len(),
            total as f64 / 1e6,
            total as f64 / t.len().max(1) as f64,
            t.has_index(),
            t.index_bytes() as f64 / 1e6,
            nonzero(&t.len_histogram()),
        );
        drop(t);
        bench_lookup_on(
            c,
            "fib_lookup",
            BenchmarkId::new("random", name),
            &fib,
            &addrs,
        );
        bench_lookup_batch_on(c, BenchmarkId::new("random", name), &fib, &addrs);
        if n == 1_000_000 {
            let hashed = Fib::with_index_min_routes(usize::MAX);
            hashed.update(&routes);
            bench_lookup_on(
                c,
                "fib_lookup_hashed",
                BenchmarkId::new("random", name),
                &hashed,
                &addrs,
            );
        }
    }
    let fib = Fib::new();
    fib.update(&pod_node_routes());
    let addrs = pod_node_addrs(&mut rng);
    bench_lookup_on(
        c,
        "fib_lookup",
        BenchmarkId::new("pod_node", "1252"),
        &fib,
        &addrs,
    );
}

fn nonzero(h: &[usize; 33]) -> Vec<(usize, usize)> {
    h.iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(l, &n)| (l, n))
        .collect()
}

/// A worker-like reader: load once per batch of 64 lookups, count them,
/// remember the slowest batch (a stall would show there).
struct Reader {
    stop: AtomicBool,
    lookups: AtomicU64,
    max_batch_ns: AtomicU64,
}

impl Reader {
    fn run(&self, fib: &Fib, addrs: &[Ipv4Addr]) {
        let mut at = 0;
        let mut sink = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let t = fib.load();
            for &a in &addrs[at..at + 64] {
                sink += t.lookup(black_box(a)).is_some() as u32;
            }
            drop(t);
            let ns = start.elapsed().as_nanos() as u64;
            self.max_batch_ns.fetch_max(ns, Ordering::Relaxed);
            self.lookups.fetch_add(64, Ordering::Relaxed);
            at = (at + 64) % addrs.len();
        }
        black_box(sink);
    }
    /// Lookups per second and the slowest batch over `f`.
    fn measure(&self, f: impl FnOnce()) -> (f64, u64) {
        self.max_batch_ns.store(0, Ordering::Relaxed);
        let (n0, t0) = (self.lookups.load(Ordering::Relaxed), Instant::now());
        f();
        let n = self.lookups.load(Ordering::Relaxed) - n0;
        (
            n as f64 / t0.elapsed().as_secs_f64(),
            self.max_batch_ns.load(Ordering::Relaxed),
        )
    }
}

fn fib_update(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(0x0bd);
    let routes = random_routes(&mut rng, 1_000_000);
    let fib = Fib::new();
    fib.update(&routes);
    let addrs = lookup_addrs(&mut rng, &routes);
    // Groups of fresh prefixes (not in the table): iteration 2k inserts
    // group k, iteration 2k+1 removes it, so every iteration applies
    // 1,000 real changes and the table stays at 1M..1M+1000 routes.
    let mut seen: std::collections::HashSet<Prefix> = routes
        .iter()
        .map(|c| match c {
            FibChange::Insert(p, _) | FibChange::InsertMultipath(p, _) | FibChange::Remove(p) => *p,
        })
        .collect();
    let groups: Vec<(Vec<FibChange>, Vec<FibChange>)> = (0..32)
        .map(|_| {
            let mut ins = Vec::with_capacity(UPDATE_BATCH);
            while ins.len() < UPDATE_BATCH {
                let p = random_prefix(&mut rng);
                if seen.insert(p) {
                    ins.push(FibChange::Insert(p, next_hop_for(&mut rng, p)));
                }
            }
            let rm = ins
                .iter()
                .map(|c| match c {
                    FibChange::Insert(p, _)
                    | FibChange::InsertMultipath(p, _)
                    | FibChange::Remove(p) => FibChange::Remove(*p),
                })
                .collect();
            (ins, rm)
        })
        .collect();
    let pod = Prefix::host(Ipv4Addr::new(10, 244, 0, 7));
    let pod_add = [FibChange::Insert(pod, NextHop::Local(PortId(7)))];
    let pod_del = [FibChange::Remove(pod)];

    let reader = Reader {
        stop: AtomicBool::new(false),
        lookups: AtomicU64::new(0),
        max_batch_ns: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        s.spawn(|| reader.run(&fib, &addrs));
        let (idle, idle_max) = reader.measure(|| std::thread::sleep(Duration::from_secs(1)));
        let mut g = c.benchmark_group("fib_update");
        g.throughput(Throughput::Elements(UPDATE_BATCH as u64));
        let mut k = 0;
        let (busy, busy_max) = reader.measure(|| {
            g.bench_function(BenchmarkId::new("1M_routes", "batch_1000"), |b| {
                b.iter(|| {
                    let (ins, rm) = &groups[(k / 2) % groups.len()];
                    fib.update(if k % 2 == 0 { ins } else { rm });
                    k += 1;
                })
            });
        });
        // Leave the table at 1M routes for the single-change case.
        if k % 2 == 1 {
            fib.update(&groups[(k / 2) % groups.len()].1);
        }
        g.throughput(Throughput::Elements(1));
        let mut k = 0;
        g.bench_function(BenchmarkId::new("1M_routes", "batch_1"), |b| {
            b.iter(|| {
                fib.update(if k % 2 == 0 { &pod_add } else { &pod_del });
                k += 1;
            })
        });
        g.finish();
        reader.stop.store(true, Ordering::Relaxed);
        eprintln!(
            "fib_update reader (64 lookups per load, 1M routes): \
             writer idle {:.1} M lookups/s (slowest batch {:.1} us); \
             during batch_1000 updates {:.1} M lookups/s (slowest batch {:.1} us)",
            idle / 1e6,
            idle_max as f64 / 1e3,
            busy / 1e6,
            busy_max as f64 / 1e3,
        );
    });
}

/// The prefix of an insert or removal.
fn prefix_of(c: &FibChange) -> Prefix {
    match c {
        FibChange::Insert(p, _) | FibChange::InsertMultipath(p, _) | FibChange::Remove(p) => *p,
    }
}

/// Bulk updates at 1M routes while a reader thread looks up: installing
/// the whole table in one batch (a BGP initial load; the table is emptied
/// again, untimed, between iterations), and churning a tenth of it in one
/// batch (50,000 installed routes removed and 50,000 fresh ones inserted,
/// then back). Criterion's throughput is routes per second of wall clock,
/// writer waits for readers included; the reader's rate during each is
/// printed after the group.
fn fib_update_bulk(c: &mut Criterion) {
    const CHURN: usize = 50_000;
    let mut rng = SmallRng::seed_from_u64(0xb1c);
    let routes = random_routes(&mut rng, 1_000_000);
    let addrs = lookup_addrs(&mut rng, &routes);
    let remove_all: Vec<FibChange> = routes
        .iter()
        .map(|c| FibChange::Remove(prefix_of(c)))
        .collect();
    let mut seen: std::collections::HashSet<Prefix> = routes.iter().map(prefix_of).collect();
    let mut fresh = Vec::with_capacity(CHURN);
    while fresh.len() < CHURN {
        let p = random_prefix(&mut rng);
        if seen.insert(p) {
            fresh.push(FibChange::Insert(p, next_hop_for(&mut rng, p)));
        }
    }
    // Iteration 2k: `away` (installed routes out, fresh ones in);
    // iteration 2k+1: `back`.
    let old = &routes[1..=CHURN];
    let away: Vec<FibChange> = old
        .iter()
        .map(|c| FibChange::Remove(prefix_of(c)))
        .chain(fresh.iter().cloned())
        .collect();
    let back: Vec<FibChange> = fresh
        .iter()
        .map(|c| FibChange::Remove(prefix_of(c)))
        .chain(old.iter().cloned())
        .collect();
    let fib = Fib::new();
    let reader = Reader {
        stop: AtomicBool::new(false),
        lookups: AtomicU64::new(0),
        max_batch_ns: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        s.spawn(|| reader.run(&fib, &addrs));
        let mut g = c.benchmark_group("fib_update_bulk");
        g.sample_size(10);
        g.warm_up_time(Duration::from_millis(100));
        g.throughput(Throughput::Elements(routes.len() as u64));
        // The reader's lookups while installs are timed (not while the
        // table is emptied again: an empty table's lookups are cheaper).
        let (mut install_lookups, mut install_time) = (0, Duration::ZERO);
        g.bench_function(BenchmarkId::new("1M_routes", "install"), |b| {
            b.iter_custom(|n| {
                let mut busy = Duration::ZERO;
                for _ in 0..n {
                    let (before, start) = (reader.lookups.load(Ordering::Relaxed), Instant::now());
                    fib.update(&routes);
                    busy += start.elapsed();
                    install_lookups += reader.lookups.load(Ordering::Relaxed) - before;
                    fib.update(&remove_all);
                }
                install_time += busy;
                busy
            })
        });
        let install_rate = install_lookups as f64 / install_time.as_secs_f64().max(1e-9);
        fib.update(&routes);
        g.throughput(Throughput::Elements(2 * CHURN as u64));
        let mut k = 0;
        let (churn_rate, churn_max) = reader.measure(|| {
            g.bench_function(BenchmarkId::new("1M_routes", "churn_10pct"), |b| {
                b.iter(|| {
                    fib.update(if k % 2 == 0 { &away } else { &back });
                    k += 1;
                })
            });
        });
        g.finish();
        reader.stop.store(true, Ordering::Relaxed);
        let t = fib.load();
        let total = t.memory_bytes() + t.index_bytes();
        eprintln!(
            "fib_update_bulk reader (64 lookups per load): during installs {:.1} M lookups/s, \
             during churn {:.1} M lookups/s (slowest batch {:.1} us); \
             after: {} routes, {:.0} bytes per route with both index copies",
            install_rate / 1e6,
            churn_rate / 1e6,
            churn_max as f64 / 1e3,
            t.len(),
            total as f64 / t.len().max(1) as f64,
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = fib_lookup, fib_update, fib_update_bulk
}
criterion_main!(benches);
