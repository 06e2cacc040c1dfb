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
    let hits = lookup_loop(&t, &addrs);
    println!(
        "{routes} routes, {lookups} lookups, {hits} hits, {} bytes ({:.1} per route)",
        t.memory_bytes(),
        t.memory_bytes() as f64 / t.len().max(1) as f64
    );
}
