//! A fixed FIB lookup loop for instruction counting, steadier than wall
//! time on a loaded machine:
//!
//! ```sh
//! cargo build --release -p podrouter-benches --example fib_lookup_loop
//! valgrind --tool=callgrind --toggle-collect='fib_lookup_loop::lookup_loop' \
//!     target/release/examples/fib_lookup_loop 100000 100000
//! ```
//!
//! Arguments: routes (default 100,000) and lookups (default 100,000). The
//! table has the criterion `fib` bench's random shape (70% /32, 25% /26,
//! 5% /16../24, a default route); addresses are half uniform, half inside
//! an installed prefix. Callgrind's instruction count for `lookup_loop`
//! divided by the lookups is the figure.
use std::hint::black_box;
use std::net::Ipv4Addr;

use podrouter_router::fib::{Fib, FibChange, FibTable, NextHop};
use podrouter_router::port::PortId;
use podrouter_types::Prefix;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn mask(len: u8) -> u32 {
    (u64::MAX << (32 - u32::from(len))) as u32
}

#[inline(never)]
fn lookup_loop(t: &FibTable, addrs: &[Ipv4Addr]) -> u32 {
    addrs
        .iter()
        .map(|&a| t.lookup(black_box(a)).is_some() as u32)
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let routes = args
        .next()
        .map_or(Ok(100_000), |r| r)
        .expect("routes: a number");
    let lookups = args
        .next()
        .map_or(Ok(100_000), |r| r)
        .expect("lookups: a number");
    let mut rng = SmallRng::seed_from_u64(0xf1b);
    let mut seen = std::collections::HashSet::new();
    let mut prefixes = vec![Prefix::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid")];
    let mut changes = vec![FibChange::Insert(prefixes[0], NextHop::Host)];
    while changes.len() < routes {
        let len = match rng.gen_range(0..100) {
            0..=69 => 32,
            70..=94 => 26,
            _ => rng.gen_range(16..=24),
        };
        let p = Prefix::new(Ipv4Addr::from(rng.gen::<u32>() & mask(len)), len).expect("masked");
        if seen.insert(p) {
            let nh = match len {
                32 => NextHop::Local(PortId(rng.gen_range(0..4096))),
                26 => NextHop::Node(Ipv4Addr::from(rng.gen::<u32>())),
                _ => NextHop::Host,
            };
            prefixes.push(p);
            changes.push(FibChange::Insert(p, nh));
        }
    }
    let fib = Fib::new();
    fib.update(&changes);
    let addrs: Vec<Ipv4Addr> = (0..lookups)
        .map(|i| {
            if i % 2 == 0 {
                return Ipv4Addr::from(rng.gen::<u32>());
            }
            let p = prefixes[rng.gen_range(0..prefixes.len())];
            Ipv4Addr::from(u32::from(p.addr()) | (rng.gen::<u32>() & !mask(p.len())))
        })
        .collect();
    let t = fib.load();
    // Three passes each way, alternating; the fastest of each is printed
    // (the first pass over a freshly built table pays its page faults).
    let mut out = vec![None; addrs.len()];
    let (mut ns, mut batch_ns, mut hits) = (f64::MAX, f64::MAX, 0);
    for _ in 0..3 {
        let start = std::time::Instant::now();
        hits = lookup_loop(&t, &addrs);
        ns = ns.min(start.elapsed().as_nanos() as f64 / lookups.max(1) as f64);
        let start = std::time::Instant::now();
        t.lookup_batch(&addrs, &mut out);
        batch_ns = batch_ns.min(start.elapsed().as_nanos() as f64 / lookups.max(1) as f64);
    }
    assert_eq!(
        out.iter().filter(|nh| nh.is_some()).count(),
        hits as usize,
        "batch and single lookups disagree"
    );
    println!(
        "{routes} routes, {lookups} lookups, {hits} hits, {} bytes ({:.1} per route), \
         DIR-24-8 index: {}; wall clock (fastest of 3 passes): {ns:.1} ns per lookup, \
         {batch_ns:.1} ns per lookup in lookup_batch",
        t.memory_bytes(),
        t.memory_bytes() as f64 / t.len().max(1) as f64,
        t.has_index(),
    );
}
