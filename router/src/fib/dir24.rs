//! The DIR-24-8 lookup index of a large FIB: longest-prefix match in one
//! or two memory reads, whatever the table's prefix lengths.
//!
//! # What it owns
//!
//! [`Dir24`] owns a leaf-pushed copy of the routes, derived from the
//! FIB's per-length hash tables (the source of truth): `top` has one
//! 4-byte entry per /24 of the address space (2^24 entries, 64 MiB,
//! backed by transparent huge pages where the kernel gives them). An entry
//! is either a *cell* (the longest route of length /0../24 covering the
//! whole /24) or a reference to a *chunk* holding the 256 cells of that
//! /24 because some route longer than /24 lies inside it. A chunk is kept
//! compressed while its 256 cells form at most [`SMALL_RANGES`] runs of
//! equal cells (one 64-byte cache line: a 256-bit map of where runs
//! start, and the runs' cells; a cell's run is the number of starts at or
//! before it, one population count), else in full (256 cells, 1 KiB).
//! A /24 holding one /32 or one /26 is 3 runs, so a full Internet-sized
//! or random table pays 64 bytes per /24 with long routes, not 1 KiB.
//!
//! A cell is a `u32`: bits 0..25 the next-hop id (an index into `hops`,
//! where every distinct [`NextHop`] is interned; 0 is no route), bits 25..31 the length of the route it came from. The
//! length is what makes updates incremental: inserting a route of length
//! L rewrites only the cells of its range that hold a route no longer
//! than L; removing it rewrites only those that hold length L exactly,
//! with the covering route the caller found in the hash tables.
//!
//! # Invariants
//!
//! - For every address, the cell `lookup` reaches is the longest route
//!   covering it among those applied (`insert`/`remove` in any order: the
//!   rules above only depend on the final set of routes, which `Fib`
//!   relies on when it brings its second copy up to date).
//! - A chunk's cells are never all equal (it collapses to one entry), and
//!   a small chunk has at most [`SMALL_RANGES`] runs; freed chunk slots
//!   are reused. Small chunk 0 is a placeholder no entry names (lookups
//!   of plain entries read it instead of branching).
//! - Next-hop ids are never reused while the index lives; `Fib` rebuilds
//!   an index whose interned next hops outnumber its routes well enough.
//! - A `Dir24` is mutated only while nobody else can read it (`Fib`
//!   holds the only reference).
use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{KeyHash, NextHop};
use crate::sys::{advise_huge_pages, prefetch};

/// Runs of equal cells a compressed chunk holds (one cache line).
pub(super) const SMALL_RANGES: usize = 8;

const CHUNK: u32 = 1 << 31;
const FULL: u32 = 1 << 30;
const INDEX_MASK: u32 = FULL - 1;
const DEPTH_SHIFT: u32 = 25;
const HOP_MASK: u32 = (1 << DEPTH_SHIFT) - 1;

/// A /24 with at most [`SMALL_RANGES`] runs of equal cells: bit `i` of
/// `starts` is set where a run starts (always bit 0); `cells[k]` is the
/// cell of run `k`.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct SmallChunk {
    starts: [u64; 4],
    cells: [u32; SMALL_RANGES],
}

impl SmallChunk {
    /// The cell of address byte `i`: the run holding it is the number of
    /// run starts at or before `i`, minus one.
    #[inline(always)]
    fn cell(&self, i: u32) -> u32 {
        let w = (i >> 6) as usize;
        let upto = u64::MAX >> (63 - (i & 63));
        let mut rank = (self.starts[w] & upto).count_ones();
        // Whole words before `w`, without branching on `w`.
        for (j, word) in self.starts.iter().enumerate().take(3) {
            rank += if j < w { word.count_ones() } else { 0 };
        }
        // `rank` is 0 only in the placeholder chunk, whose cell is unused.
        self.cells[rank.wrapping_sub(1) as usize & (SMALL_RANGES - 1)]
    }
}

/// A /24 with more runs: one cell per address.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct FullChunk([u32; 256]);

/// The index. See the module header.
pub(super) struct Dir24 {
    top: Vec<u32>,
    small: Vec<SmallChunk>,
    small_free: Vec<u32>,
    full: Vec<FullChunk>,
    full_free: Vec<u32>,
    /// Interned next hops: cell hop id `n` is `hops[n]`; `hops[0]` is
    /// `None` (no route).
    hops: Vec<Option<NextHop>>,
    /// Interned next hops by [`hop_key`] (the FIB's multiply hash: a bulk
    /// load interns a next hop per route, SipHash was 5% of it).
    hop_ids: HashMap<u64, u32, KeyHash>,
    /// Whether the kernel accepted the huge-page advice for `top`.
    huge: bool,
}

#[inline(always)]
fn depth(cell: u32) -> u32 {
    cell >> DEPTH_SHIFT
}

/// A zeroed `top` table, advised to huge pages before its first write
/// (a zeroed allocation this large is fresh, untouched pages).
fn zeroed_top() -> (Vec<u32>, bool) {
    let mut top = vec![0u32; 1 << 24];
    let huge = advise_huge_pages(&mut top);
    (top, huge)
}

impl Clone for Dir24 {
    /// A deep copy (64 MiB and the chunks), for when the spare copy is
    /// still held by a reader.
    fn clone(&self) -> Dir24 {
        let (mut top, huge) = zeroed_top();
        top.copy_from_slice(&self.top);
        Dir24 {
            top,
            small: huge_copy(&self.small, self.small.capacity()),
            small_free: self.small_free.clone(),
            full: huge_copy(&self.full, self.full.capacity()),
            full_free: self.full_free.clone(),
            hops: self.hops.clone(),
            hop_ids: self.hop_ids.clone(),
            huge,
        }
    }
}

impl Dir24 {
    /// An index built from `routes` (any order).
    pub(super) fn build(routes: &mut [(u32, u8, NextHop)], hash: KeyHash) -> Dir24 {
        let (top, huge) = zeroed_top();
        let mut ix = Dir24 {
            top,
            small: vec![SmallChunk::ZEROED],
            small_free: Vec::new(),
            full: Vec::new(),
            full_free: Vec::new(),
            hops: vec![None],
            hop_ids: HashMap::with_hasher(hash),
            huge,
        };
        // Short routes shortest first, each overwriting its whole range;
        // then the long ones grouped by /24, each /24's chunk made once.
        routes.sort_unstable_by_key(|&(a, len, _)| {
            (len > 24, if len > 24 { a >> 8 } else { 0 }, len)
        });
        let split = routes.partition_point(|r| r.1 <= 24);
        // One chunk per /24 holding long routes (most are small): the
        // arena is sized once, on huge pages, before it is written.
        let mut chunks = 0;
        let mut last = None;
        for &(a, _, _) in &routes[split..] {
            chunks += usize::from(last != Some(a >> 8));
            last = Some(a >> 8);
        }
        ix.small = huge_copy(&ix.small, 1 + chunks + chunks / 4);
        for &(a, len, nh) in &routes[..split] {
            let cell = ix.cell_for(nh, len);
            let first = (a >> 8) as usize;
            ix.top[first..first + (1usize << (24 - len))].fill(cell);
        }
        let mut rest = &routes[split..];
        while let Some(&(a, _, _)) = rest.first() {
            let x = (a >> 8) as usize;
            let n = rest.partition_point(|r| (r.0 >> 8) as usize == x);
            let mut cells = ix.expand(ix.top[x]);
            for &(a, len, nh) in &rest[..n] {
                let cell = ix.cell_for(nh, len);
                let lo = (a & 0xff) as usize;
                cells[lo..lo + (1usize << (32 - len))].fill(cell);
            }
            ix.store(x, &cells);
            rest = &rest[n..];
        }
        ix
    }

    /// The longest-prefix match for `dst`: one read of `top`, one more
    /// (one cache line) when the /24 holds longer routes.
    #[inline(always)]
    pub(super) fn lookup(&self, dst: Ipv4Addr) -> Option<NextHop> {
        let dst = u32::from(dst);
        self.resolve(self.top[(dst >> 8) as usize], dst)
    }

    /// The entry of `dst`'s /24 (the first read of a lookup).
    #[inline(always)]
    pub(super) fn entry(&self, dst: u32) -> u32 {
        self.top[(dst >> 8) as usize]
    }

    /// Finishes a lookup of `dst` whose /24 entry is `e`.
    #[inline(always)]
    pub(super) fn resolve(&self, e: u32, dst: u32) -> Option<NextHop> {
        self.hop(self.cell(e, dst))
    }

    /// The cell of `dst` whose /24 entry is `e` (the second read, if any).
    /// (A branch-free version, reading placeholder chunk 0 for plain
    /// entries, measured slower: the extra work per lookup left fewer
    /// lookups in flight.)
    #[inline(always)]
    pub(super) fn cell(&self, e: u32, dst: u32) -> u32 {
        if e & CHUNK == 0 {
            e
        } else if e & FULL == 0 {
            self.small[(e & INDEX_MASK) as usize].cell(dst & 0xff)
        } else {
            self.full[(e & INDEX_MASK) as usize].0[(dst & 0xff) as usize]
        }
    }

    /// The next hop of a cell.
    #[inline(always)]
    pub(super) fn hop(&self, cell: u32) -> Option<NextHop> {
        self.hops.get((cell & HOP_MASK) as usize).copied().flatten()
    }

    /// Starts loading the /24 entry of `dst` (the batch API's first pass).
    #[inline(always)]
    pub(super) fn prefetch_entry(&self, dst: u32) {
        if let Some(e) = self.top.get((dst >> 8) as usize) {
            prefetch(e);
        }
    }

    /// Starts loading what [`Dir24::cell`] will read for entry `e`.
    #[inline(always)]
    pub(super) fn prefetch_cell(&self, e: u32, dst: u32) {
        if e & CHUNK == 0 {
            return;
        }
        let i = (e & INDEX_MASK) as usize;
        if e & FULL == 0 {
            if let Some(c) = self.small.get(i) {
                prefetch(c);
            }
        } else if let Some(c) = self.full.get(i) {
            prefetch(&c.0[(dst & 0xff) as usize]);
        }
    }

    /// Starts loading the next hop of `cell`.
    #[inline(always)]
    pub(super) fn prefetch_hop(&self, cell: u32) {
        if let Some(h) = self.hops.get((cell & HOP_MASK) as usize) {
            prefetch(h);
        }
    }

    /// Sets the route of `addr/len` to `nh`.
    pub(super) fn insert(&mut self, addr: u32, len: u8, nh: NextHop) {
        let cell = self.cell_for(nh, len);
        let len = u32::from(len);
        self.rewrite(addr, len, |c| if depth(c) <= len { cell } else { c });
    }

    /// Removes the route of `addr/len`; `cover` is the longest route
    /// shorter than it that covers it (with its length), if any.
    pub(super) fn remove(&mut self, addr: u32, len: u8, cover: Option<(NextHop, u8)>) {
        let cell = cover.map_or(0, |(nh, l)| self.cell_for(nh, l));
        let len = u32::from(len);
        self.rewrite(addr, len, |c| {
            if c & HOP_MASK != 0 && depth(c) == len {
                cell
            } else {
                c
            }
        });
    }

    /// Interned next hops (grows with every distinct next hop ever set).
    pub(super) fn hop_count(&self) -> usize {
        self.hops.len() - 1
    }

    /// Whether `top` was advised to huge pages.
    pub(super) fn huge_pages(&self) -> bool {
        self.huge
    }

    /// Heap bytes held (allocated capacity, whether touched or not).
    pub(super) fn memory_bytes(&self) -> usize {
        self.top.capacity() * 4
            + self.small.capacity() * std::mem::size_of::<SmallChunk>()
            + self.full.capacity() * std::mem::size_of::<FullChunk>()
            + (self.small_free.capacity() + self.full_free.capacity()) * 4
            + self.hops.capacity() * std::mem::size_of::<Option<NextHop>>()
            + self.hop_ids.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
    }

    /// The cell of a route `len` long via `nh`.
    fn cell_for(&mut self, nh: NextHop, len: u8) -> u32 {
        let id = match self.hop_ids.get(&hop_key(nh)) {
            Some(&id) => id,
            None => {
                let id = self.hops.len() as u32;
                self.hops.push(Some(nh));
                assert!(id <= HOP_MASK, "next-hop ids exhausted");
                self.hop_ids.insert(hop_key(nh), id);
                id
            }
        };
        (u32::from(len) << DEPTH_SHIFT) | id
    }

    /// Applies `f` to every cell of `addr/len`.
    fn rewrite(&mut self, addr: u32, len: u32, f: impl Fn(u32) -> u32) {
        let first = (addr >> 8) as usize;
        if len <= 24 {
            for x in first..first + (1usize << (24 - len)) {
                let e = self.top[x];
                if e & CHUNK == 0 {
                    self.top[x] = f(e);
                } else {
                    let mut cells = self.expand(e);
                    cells.iter_mut().for_each(|c| *c = f(*c));
                    self.store(x, &cells);
                }
            }
        } else {
            let mut cells = self.expand(self.top[first]);
            let lo = (addr & 0xff) as usize;
            for c in &mut cells[lo..lo + (1usize << (32 - len))] {
                *c = f(*c);
            }
            self.store(first, &cells);
        }
    }

    /// The 256 cells of the /24 whose entry is `e`.
    fn expand(&self, e: u32) -> [u32; 256] {
        if e & CHUNK == 0 {
            [e; 256]
        } else if e & FULL == 0 {
            let c = &self.small[(e & INDEX_MASK) as usize];
            let mut cells = [0; 256];
            let mut run = 0;
            for (i, cell) in cells.iter_mut().enumerate() {
                if i > 0 && c.starts[i >> 6] >> (i & 63) & 1 == 1 {
                    run += 1;
                }
                *cell = c.cells[run];
            }
            cells
        } else {
            self.full[(e & INDEX_MASK) as usize].0
        }
    }

    /// Stores `cells` as the /24 `x`: one entry if they are all equal, a
    /// small chunk if they form few runs, else a full one; the chunk the
    /// /24 had is reused when of the right kind, else freed.
    fn store(&mut self, x: usize, cells: &[u32; 256]) {
        let old = self.top[x];
        let runs = 1 + cells.windows(2).filter(|w| w[0] != w[1]).count();
        let entry = if runs == 1 {
            cells[0]
        } else if runs <= SMALL_RANGES {
            let mut chunk = SmallChunk::default();
            let mut run = 0;
            chunk.starts[0] = 1;
            chunk.cells[0] = cells[0];
            for i in 1..256 {
                if cells[i] != cells[i - 1] {
                    run += 1;
                    chunk.starts[i >> 6] |= 1 << (i & 63);
                    chunk.cells[run] = cells[i];
                }
            }
            let i = if old & (CHUNK | FULL) == CHUNK {
                old & INDEX_MASK
            } else {
                alloc(&mut self.small, &mut self.small_free)
            };
            self.small[i as usize] = chunk;
            CHUNK | i
        } else {
            let i = if old & (CHUNK | FULL) == CHUNK | FULL {
                old & INDEX_MASK
            } else {
                alloc(&mut self.full, &mut self.full_free)
            };
            self.full[i as usize] = FullChunk(*cells);
            CHUNK | FULL | i
        };
        // Free the old chunk unless it was reused.
        if old & CHUNK != 0 && old != entry {
            let i = old & INDEX_MASK;
            if old & FULL == 0 {
                self.small_free.push(i);
            } else {
                self.full_free.push(i);
            }
        }
        self.top[x] = entry;
    }
}

/// A next hop as one distinct integer: its kind above bit 32, its value
/// below.
fn hop_key(nh: NextHop) -> u64 {
    let (kind, value) = match nh {
        NextHop::Local(port) => (1, port.0),
        NextHop::Host => (2, 0),
        NextHop::Node(a) => (3, u32::from(a)),
        NextHop::Nodes(g) => (4, g.0),
        NextHop::Unreachable => (5, 0),
    };
    (kind << 32) | u64::from(value)
}

/// A free slot of `arena` (reused, or a new one at the end, with the
/// arena's growth advised to huge pages).
fn alloc<T: Copy + Zeroed>(arena: &mut Vec<T>, free: &mut Vec<u32>) -> u32 {
    if let Some(i) = free.pop() {
        return i;
    }
    if arena.len() == arena.capacity() {
        *arena = huge_copy(arena, (arena.len() * 2).max(1024));
    }
    arena.push(T::ZEROED);
    let i = arena.len() - 1;
    assert!(i as u32 <= INDEX_MASK, "chunk ids exhausted");
    i as u32
}

/// A copy of `items` with room for `capacity`, its memory advised to huge
/// pages before the copy first touches it (a `Vec` grown by `reserve`
/// would keep the small pages of its first, touched part: random chunk
/// reads then miss the TLB on nearly every lookup).
fn huge_copy<T: Copy>(items: &[T], capacity: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(capacity.max(items.len()));
    advise_huge_pages(v.spare_capacity_mut());
    v.extend_from_slice(items);
    v
}

/// A chunk's placeholder value before it is written.
trait Zeroed {
    const ZEROED: Self;
}
impl Zeroed for SmallChunk {
    const ZEROED: Self = SmallChunk {
        starts: [0; 4],
        cells: [0; SMALL_RANGES],
    };
}
impl Zeroed for FullChunk {
    const ZEROED: Self = FullChunk([0; 256]);
}
