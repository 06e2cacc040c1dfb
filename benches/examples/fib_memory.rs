//! Memory and bulk-update figures of the FIB at one table size, in a fresh
//! process so the resident set is the FIB's own:
//!
//! ```sh
//! cargo build --release -p podrouter-benches --example fib_memory
//! for n in 1000 100000 1000000; do target/release/examples/fib_memory $n; done
//! ```
//!
//! Argument: routes (default 1,000,000), the criterion `fib` bench's random
//! shape (70% /32, 25% /26, 5% /16../24, a default route). While a reader
//! thread looks up without pause (as a worker does, one snapshot per 64
//! lookups), it installs the table in one batch (a BGP initial load), then
//! applies bulk batches of a tenth of the table each: fresh prefixes
//! inserted, then removed again, twice (the second copy of the DIR-24-8
//! index is made by the first of them; the second pair is the steady
//! state). It prints the rates, the resident
//! set growth per route (`VmRSS` of `/proc/self/status`, after the writer
//! dropped the replaced snapshots), the FIB's own estimate
//! (`FibTable::memory_bytes`, one index copy) and how much of the process
//! is on transparent huge pages (`AnonHugePages`).
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use podrouter_router::fib::{Fib, FibChange, NextHop};
use podrouter_router::port::PortId;
use podrouter_types::Prefix;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn mask(len: u8) -> u32 {
    (u64::MAX << (32 - u32::from(len))) as u32
}

fn random_prefix(rng: &mut SmallRng) -> Prefix {
    let len = match rng.gen_range(0..100) {
        0..=69 => 32,
        70..=94 => 26,
        _ => rng.gen_range(16..=24),
    };
    Prefix::new(Ipv4Addr::from(rng.gen::<u32>() & mask(len)), len).expect("masked")
}

fn next_hop_for(rng: &mut SmallRng, p: Prefix) -> NextHop {
    match p.len() {
        32 => NextHop::Local(PortId(rng.gen_range(0..4096))),
        26 => NextHop::Node(Ipv4Addr::from(rng.gen::<u32>())),
        _ => NextHop::Host,
    }
}

/// A `kB` field of `/proc/self/status` or `smaps_rollup`, in bytes.
fn proc_kb(file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time this thread has run, in seconds (`/proc/thread-self/schedstat`,
/// nanoseconds): on a machine shared with other builds the wall clock
/// also counts the time the writer waited for a CPU.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn rss() -> u64 {
    proc_kb("/proc/self/status", "VmRSS:")
}

fn main() {
    let routes = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse::<usize>())
        .expect("routes: a number");
    let mut rng = SmallRng::seed_from_u64(0xf1b);
    let mut seen = std::collections::HashSet::new();
    let default = Prefix::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid");
    seen.insert(default);
    let mut table = vec![FibChange::Insert(default, NextHop::Host)];
    while table.len() < routes {
        let p = random_prefix(&mut rng);
        if seen.insert(p) {
            table.push(FibChange::Insert(p, next_hop_for(&mut rng, p)));
        }
    }
    let tenth = (routes / 10).max(1);
    let mut fresh = Vec::with_capacity(tenth);
    while fresh.len() < tenth {
        let p = random_prefix(&mut rng);
        if seen.insert(p) {
            fresh.push(FibChange::Insert(p, next_hop_for(&mut rng, p)));
        }
    }
    let unfresh: Vec<FibChange> = fresh
        .iter()
        .map(|c| match c {
            FibChange::Insert(p, _) | FibChange::InsertMultipath(p, _) | FibChange::Remove(p) => {
                FibChange::Remove(*p)
            }
        })
        .collect();
    let addrs: Vec<Ipv4Addr> = (0..1 << 16)
        .map(|_| Ipv4Addr::from(rng.gen::<u32>()))
        .collect();

    let fib = Fib::new();
    let stop = AtomicBool::new(false);
    let lookups = AtomicU64::new(0);
    let rss_before = rss();
    let (install, (insert, remove), (insert2, remove2)) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut at = 0;
            let mut hits = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let t = fib.load();
                for &a in &addrs[at..at + 64] {
                    hits += t.lookup(black_box(a)).is_some() as u32;
                }
                at = (at + 64) % addrs.len();
                lookups.fetch_add(64, Ordering::Relaxed);
            }
            black_box(hits);
        });
        let timed = |changes: &[FibChange]| {
            let (start, cpu) = (Instant::now(), thread_cpu());
            fib.update(changes);
            (start.elapsed().as_secs_f64(), thread_cpu() - cpu)
        };
        let install = timed(&table);
        let first = (timed(&fresh), timed(&unfresh));
        let again = (timed(&fresh), timed(&unfresh));
        stop.store(true, Ordering::Relaxed);
        (install, first, again)
    });
    fib.reclaim();
    let rss_after = rss();
    let t = fib.load();
    let grown = rss_after.saturating_sub(rss_before);
    let rate = |(wall, cpu): (f64, f64), n: usize| {
        format!(
            "{wall:.3} s wall, {cpu:.3} s writer CPU ({:.2} M routes/s wall, {:.2} M/s CPU)",
            n as f64 / wall / 1e6,
            n as f64 / cpu / 1e6
        )
    };
    println!(
        "{} routes: install {}\n  bulk insert of {tenth}: {}; bulk removal of {tenth}: {}\n  \
         again: insert {}; removal {}\n  reader did {:.1} M lookups meanwhile",
        t.len(),
        rate(install, routes),
        rate(insert, tenth),
        rate(remove, tenth),
        rate(insert2, tenth),
        rate(remove2, tenth),
        lookups.load(Ordering::Relaxed) as f64 / 1e6,
    );
    println!(
        "  RSS grew {:.1} MB ({:.0} B/route); FibTable::memory_bytes {:.1} MB ({:.0} B/route), \
         of which one DIR-24-8 index copy {:.1} MB (index: {}; two copies while it has one); \
         AnonHugePages {:.0} MB (index huge-page advice taken: {:?})",
        grown as f64 / 1e6,
        grown as f64 / t.len().max(1) as f64,
        t.memory_bytes() as f64 / 1e6,
        t.memory_bytes() as f64 / t.len().max(1) as f64,
        t.index_bytes() as f64 / 1e6,
        t.has_index(),
        proc_kb("/proc/self/smaps_rollup", "AnonHugePages:") as f64 / 1e6,
        t.index_huge_pages(),
    );
}
