//! The DIR-24-8 lookup index of a large FIB: longest-prefix match in one
//! or two memory reads, whatever the table's prefix lengths.
//!
//! # What it owns
//!
//! [`Dir24`] owns a leaf-pushed copy of the routes, derived from the
//! FIB's per-length hash tables (the source of truth): `top` has one
//! 8-byte entry per /24 of the address space (2^24 entries, 128 MiB,
//! backed by transparent huge pages where the kernel gives them). An entry
//! holds the /24's cells itself when they fit, else refers to a *chunk*
//! holding its 256 cells. They fit when the /24 has one cell (the longest
//! route of /0../24 covering it, or equal cells) or one *outer* cell
//! around or beside one *inner* run that is aligned, a power of two long
//! and from a route of /25../32 (a /24 holding one /32 or one /26 under a
//! shorter route: nearly every such /24 of a full or random table), with
//! hop ids below 2^21: the entry has both hop ids, both lengths, the
//! inner run's first byte and log2 size. A chunk is kept
//! compressed while its 256 cells form at most [`SMALL_RUNS`] runs of
//! equal cells (one 64-byte cache line: where runs 1..10 start, as 16-bit
//! lanes, and the runs' cells; a cell's run is how many starts are at or
//! below its address byte, counted for all lanes at once with a few
//! word-wide subtractions), else in full (256 cells, 1 KiB). So a random
//! or Internet-sized table pays a chunk only for the few /24s with two or
//! more longer routes (64 bytes each), and a lookup of the others reads
//! one line (entry) before the next hop, not two (entry, chunk): at 1M
//! random routes the 4-byte entries with a chunk per /24 holding a longer
//! route took 80-90 ns per single lookup against 34-41 ns with these
//! (criterion, same sequence, load 5-6), for 64 MiB more per copy.
//!
//! A cell is a `u32`: bits 0..25 the next-hop id (an index into `hops`,
//! where every distinct [`NextHop`] is interned), bits 25..31 the length
//! of the route it came from. Cell 0 (id 0, length 0) is the default
//! route, `hops[0]`, `None` while there is none: the /0 route is never
//! written into `top` or a chunk, so setting, replacing or removing it
//! changes one slot of `hops`, and the pages of `top` that no other
//! route covers stay untouched (zero pages the kernel never backs). A node's
//! FIB always has a default route (to the host port), which leaf-pushed
//! filled all of each copy's `top`; now a copy costs the /24s its routes
//! cover, and [`Dir24::clone`] copies only the regions of `top` written
//! so far (`touched`). The length is what makes
//! updates incremental: inserting a route of length L rewrites only the
//! cells of its range that hold a route no longer than L; removing it
//! rewrites only those that hold length L exactly, with the covering route
//! the caller found in the hash tables ([`IndexOp`]). An update edits a
//! chunk as its list of runs (split at the route's range, rewritten,
//! equal neighbours merged), never as 256 cells unless it is a full one.
//!
//! # Lookup
//!
//! A lookup reads the /24 entry. An entry holding its cells gives the hop
//! id without a branch: the inner id if the address byte is in the inner
//! run (`(byte ^ start) >> log == 0`), else the outer one (a one-cell
//! entry repeats its id in both places). A chunk entry (rare) is a branch
//! and one more line: a small
//! chunk's rank takes three subtractions and a multiply, no branch (four
//! software population counts before, the x86-64 baseline has no
//! `popcnt`, in a loop whose per-word test was often mispredicted): 38
//! instructions per lookup instead of 58 (callgrind). The entry's kind is
//! a branch: a branch-free version (reading placeholder chunks for plain
//! entries and picking by masks) took 74 instructions and ran slower on
//! this machine (the CPU's window held fewer lookups, and loads on a
//! mispredicted path still fetch the next lookups' lines). Small chunk 0
//! and full chunk 0 stay reserved placeholders.
//!
//! # Invariants
//!
//! - For every address, the cell `lookup` reaches is the longest route
//!   covering it among those applied (`insert`/`remove` in any order: the
//!   rules above only depend on the final set of routes, which `Fib`
//!   relies on when it brings its second copy up to date).
//! - A /24 whose runs fit its entry ([`plain_entry`], [`inline_entry`])
//!   has no chunk (so a chunk's cells are all equal only when their hop
//!   id is too big for an entry), and a small chunk has at most
//!   [`SMALL_RUNS`] runs; freed chunk slots are reused. Small chunk 0
//!   and full chunk 0 are placeholders no entry names.
//! - Next-hop ids are never reused while the index lives; `Fib` rebuilds
//!   an index whose interned next hops outnumber its routes well enough.
//! - A `Dir24` is mutated only while nobody else can read it (`Fib`
//!   holds the only reference).
use std::collections::HashMap;

use super::{KeyHash, NextHop};
use crate::sys::{advise_huge_pages, prefetch};

/// Runs of equal cells a compressed chunk holds (one cache line).
pub(super) const SMALL_RUNS: usize = 10;

/// Entries of `top`: one per /24.
const TOP: usize = 1 << 24;
/// `top` entries per region of the `touched` bitmap (256 KiB of `top`).
const REGION_BITS: u32 = 16;
/// Regions of `top`.
const REGIONS: usize = TOP >> REGION_BITS;

/// A cell's hop id bits and where its length starts.
const DEPTH_SHIFT: u32 = 25;
const HOP_MASK: u32 = (1 << DEPTH_SHIFT) - 1;

/// `top` entry kinds: bit 63 set, a chunk (bit 62: full, else small; the
/// low bits its index); clear, the /24's cells in the entry itself
/// (`INLINE` set: an outer cell with one inner run, else one cell).
const CHUNK: u64 = 1 << 63;
const FULL: u64 = 1 << 62;
const INLINE: u64 = 1 << 62;
const INDEX_MASK: u64 = (1 << 30) - 1;
/// Fields of an entry holding its cells: hop ids of [`ID_BITS`] bits.
const ID_BITS: u32 = 21;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
const OUTER_DEPTH_SHIFT: u32 = ID_BITS; // 6 bits, 0..=32
const INNER_ID_SHIFT: u32 = 27;
const INNER_DEPTH_SHIFT: u32 = 48; // 3 bits, length - 25
const START_SHIFT: u32 = 51; // 8 bits
const LOG_SHIFT: u32 = 59; // 3 bits, log2 of the inner run's size
/// The shortest route an inner run may come from (3 bits hold 25..=32).
const INNER_MIN_DEPTH: u32 = 25;

/// Four 16-bit lanes of 1, and their top bits.
const LANE_ONES: u64 = 0x0001_0001_0001_0001;
const LANE_HIGH: u64 = 0x8000_8000_8000_8000;
/// A lane no address byte reaches (a run the chunk does not have).
const NO_START: u64 = 0x100;

/// A /24 with at most [`SMALL_RUNS`] runs of equal cells: 16-bit lane
/// `k - 1` of `starts` (four lanes per word, lowest first) is the first
/// address byte of run `k` (runs 1..10; run 0 starts at 0), or
/// [`NO_START`] for a run the chunk does not have; `cells[k]` is the cell
/// of run `k`.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct SmallChunk {
    starts: [u64; 3],
    cells: [u32; SMALL_RUNS],
}

impl SmallChunk {
    /// The cell of address byte `i` (0..=255): its run is the number of
    /// run starts at or below `i`. Per lane, `(0x8000 | i) - start` keeps
    /// bit 15 set iff `start <= i` and never borrows from the next lane
    /// (`start <= 0x100`); the multiply adds the lanes' bits into the top
    /// lane. No population count (not in the x86-64 baseline) and no
    /// branch.
    #[inline(always)]
    fn cell(&self, i: usize) -> u32 {
        let x = ((i as u64 & 0xff) * LANE_ONES) | LANE_HIGH;
        let at_or_below = |starts: u64| (x.wrapping_sub(starts) & LANE_HIGH) >> 15;
        let lanes =
            at_or_below(self.starts[0]) + at_or_below(self.starts[1]) + at_or_below(self.starts[2]);
        let run = (lanes.wrapping_mul(LANE_ONES) >> 48) as usize;
        self.cells[run.min(SMALL_RUNS - 1)]
    }

    /// The chunk of `runs` (2..=[`SMALL_RUNS`] of them).
    fn from_runs(runs: &[Run]) -> SmallChunk {
        let mut c = SmallChunk::ZEROED;
        for (k, &(start, cell)) in runs.iter().enumerate() {
            c.cells[k] = cell;
            if k > 0 {
                let (word, shift) = ((k - 1) / 4, 16 * ((k - 1) % 4));
                c.starts[word] =
                    (c.starts[word] & !(0xffff_u64 << shift)) | (u64::from(start) << shift);
            }
        }
        c
    }

    /// Appends this chunk's runs to `out`.
    fn runs(&self, out: &mut Vec<Run>) {
        out.push((0, self.cells[0]));
        for k in 1..SMALL_RUNS {
            let start = (self.starts[(k - 1) / 4] >> (16 * ((k - 1) % 4))) as u16;
            if u64::from(start) >= NO_START {
                break;
            }
            out.push((start, self.cells[k]));
        }
    }
}

/// A /24 with more runs: one cell per address.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct FullChunk([u32; 256]);

/// A run of equal cells of one /24: its first address byte and its cell.
type Run = (u16, u32);

/// One change to the index, worked out once from the FIB's routes and
/// applied to each copy of the index in turn ([`Dir24::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IndexOp {
    /// `addr/len` now routes via this next hop.
    Set(u32, u8, NextHop),
    /// `addr/len` has no route any more; its longest covering route (with
    /// that route's length), if any.
    Clear(u32, u8, Option<(NextHop, u8)>),
}

/// The index. See the module header.
pub(super) struct Dir24 {
    top: Box<[u64; TOP]>,
    small: Vec<SmallChunk>,
    small_free: Vec<u32>,
    full: Vec<FullChunk>,
    full_free: Vec<u32>,
    /// Interned next hops: cell hop id `n` is `hops[n]`; `hops[0]` is
    /// the default route's (`None`: no default route).
    hops: Vec<Option<NextHop>>,
    /// Bit `r`: region `r` of `top` (`1 << REGION_BITS` entries) may hold
    /// a nonzero entry; the others were never written (still zero).
    touched: [u64; REGIONS / 64],
    /// Interned next hops by [`hop_key`] (the FIB's multiply hash: a bulk
    /// load interns a next hop per route, SipHash was 5% of it).
    hop_ids: HashMap<u64, u32, KeyHash>,
    /// Whether the kernel accepted the huge-page advice for `top`.
    huge: bool,
    /// Scratch run lists of updates (kept to avoid an allocation each).
    runs: Vec<Run>,
    edited: Vec<Run>,
}

#[inline(always)]
fn depth(cell: u32) -> u32 {
    cell >> DEPTH_SHIFT
}

/// A zeroed `top` table, advised to huge pages before its first write
/// (a zeroed allocation this large is fresh, untouched pages).
fn zeroed_top() -> (Box<[u64; TOP]>, bool) {
    let mut top = vec![0u64; TOP];
    let huge = advise_huge_pages(&mut top);
    let top = top
        .into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("made with TOP entries"));
    (top, huge)
}

impl Clone for Dir24 {
    /// A deep copy (the written regions of `top` and the chunks), for
    /// the second copy and when the spare copy is still held by a reader.
    fn clone(&self) -> Dir24 {
        let (mut top, huge) = zeroed_top();
        for r in 0..REGIONS {
            if self.touched[r / 64] & (1 << (r % 64)) != 0 {
                let range = r << REGION_BITS..(r + 1) << REGION_BITS;
                top[range.clone()].copy_from_slice(&self.top[range]);
            }
        }
        Dir24 {
            top,
            touched: self.touched,
            small: huge_copy(&self.small, self.small.capacity()),
            small_free: self.small_free.clone(),
            full: huge_copy(&self.full, self.full.capacity()),
            full_free: self.full_free.clone(),
            hops: self.hops.clone(),
            hop_ids: self.hop_ids.clone(),
            huge,
            runs: Vec::new(),
            edited: Vec::new(),
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
            full: vec![FullChunk::ZEROED],
            full_free: Vec::new(),
            hops: vec![None],
            touched: [0; REGIONS / 64],
            hop_ids: HashMap::with_hasher(hash),
            huge,
            runs: Vec::with_capacity(257),
            edited: Vec::with_capacity(257),
        };
        // Short routes shortest first, each overwriting its whole range;
        // then the long ones grouped by /24, each /24's chunk made once.
        routes.sort_unstable_by_key(|&(a, len, _)| {
            (len > 24, if len > 24 { a >> 8 } else { 0 }, len)
        });
        let split = routes.partition_point(|r| r.1 <= 24);
        // A chunk per /24 holding two or more long routes (one long
        // route under a uniform cover fits the entry): the arena is
        // sized once, on huge pages, before it is written (it grows by
        // `alloc` if more are needed).
        let mut chunks = 0;
        for pair in routes[split..].windows(2) {
            chunks += usize::from(pair[0].0 >> 8 == pair[1].0 >> 8);
        }
        ix.small = huge_copy(&ix.small, 1 + chunks + chunks / 4);
        for &(a, len, nh) in &routes[..split] {
            let cell = ix.cell_for(nh, len);
            if len == 0 {
                continue; // the default route: `hops[0]`, cell 0
            }
            let first = (a >> 8) as usize;
            let range = first..first + (1usize << (24 - len));
            match plain_entry(cell) {
                Some(e) => ix.fill_top(range, e),
                None => range.for_each(|x| ix.store(x, &[(0, cell)])),
            }
        }
        let mut rest = &routes[split..];
        while let Some(&(a, _, _)) = rest.first() {
            let x = (a >> 8) as usize;
            let n = rest.partition_point(|r| (r.0 >> 8) as usize == x);
            // The /24's runs, each route (shortest first) overwriting its
            // range: run edits, not 256 cells expanded and recompressed
            // per /24 (most hold one route).
            let mut runs = std::mem::take(&mut ix.runs);
            let mut edited = std::mem::take(&mut ix.edited);
            runs.clear();
            ix.runs_of(ix.top[x], &mut runs);
            for &(a, len, nh) in &rest[..n] {
                let cell = ix.cell_for(nh, len);
                let lo = (a & 0xff) as u16;
                edit_runs(&runs, lo, lo + (1 << (32 - len)), &|_| cell, &mut edited);
                std::mem::swap(&mut runs, &mut edited);
            }
            ix.store(x, &runs);
            ix.runs = runs;
            ix.edited = edited;
            rest = &rest[n..];
        }
        ix
    }

    /// The longest-prefix match for `dst`: one read of `top`, one more
    /// (one cache line) when the /24's cells do not fit its entry.
    #[inline(always)]
    pub(super) fn lookup(&self, dst: u32) -> Option<NextHop> {
        self.hop(self.hop_id(self.entry(dst), dst))
    }

    /// The entry of `dst`'s /24 (the first read of a lookup).
    #[inline(always)]
    pub(super) fn entry(&self, dst: u32) -> u64 {
        self.top[(dst >> 8) as usize]
    }

    /// The hop id of `dst`'s cell, whose /24 entry is `e`: picked from the
    /// entry without a branch (inner or outer id by a shift), or read
    /// from a chunk behind a branch that is rarely taken (module header).
    #[inline(always)]
    pub(super) fn hop_id(&self, e: u64, dst: u32) -> u32 {
        let lo = u64::from(dst & 0xff);
        if e & CHUNK == 0 {
            let start = (e >> START_SHIFT) & 0xff;
            let log = (e >> LOG_SHIFT) & 7;
            let shift = if (lo ^ start) >> log == 0 {
                INNER_ID_SHIFT
            } else {
                0
            };
            ((e >> shift) & ID_MASK) as u32
        } else if e & FULL == 0 {
            self.small[(e & INDEX_MASK) as usize].cell(lo as usize) & HOP_MASK
        } else {
            self.full[(e & INDEX_MASK) as usize].0[lo as usize] & HOP_MASK
        }
    }

    /// The next hop of a hop id (or of a cell: its length bits are masked).
    #[inline(always)]
    pub(super) fn hop(&self, id: u32) -> Option<NextHop> {
        self.hops.get((id & HOP_MASK) as usize).copied().flatten()
    }

    /// Starts loading the /24 entry of `dst` (the batch API's first pass).
    #[inline(always)]
    pub(super) fn prefetch_entry(&self, dst: u32) {
        prefetch(&self.top[(dst >> 8) as usize]);
    }

    /// Starts loading what [`Dir24::hop_id`] will read for entry `e`.
    #[inline(always)]
    pub(super) fn prefetch_cell(&self, e: u64, dst: u32) {
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

    /// Starts loading the next hop of hop id `id`.
    #[inline(always)]
    pub(super) fn prefetch_hop(&self, id: u32) {
        if let Some(h) = self.hops.get((id & HOP_MASK) as usize) {
            prefetch(h);
        }
    }

    /// Applies one change.
    pub(super) fn apply(&mut self, op: IndexOp) {
        match op {
            // The default route is `hops[0]`, never written in cells.
            IndexOp::Set(_, 0, nh) => self.hops[0] = Some(nh),
            IndexOp::Clear(_, 0, _) => self.hops[0] = None,
            IndexOp::Set(addr, len, nh) => {
                let cell = self.cell_for(nh, len);
                let len = u32::from(len);
                self.rewrite(addr, len, |c| if depth(c) <= len { cell } else { c });
            }
            IndexOp::Clear(addr, len, cover) => {
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
        }
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
        TOP * std::mem::size_of::<u64>()
            + self.small.capacity() * std::mem::size_of::<SmallChunk>()
            + self.full.capacity() * std::mem::size_of::<FullChunk>()
            + (self.small_free.capacity() + self.full_free.capacity()) * 4
            + self.hops.capacity() * std::mem::size_of::<Option<NextHop>>()
            + self.hop_ids.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + (self.runs.capacity() + self.edited.capacity()) * std::mem::size_of::<Run>()
    }

    /// The cell of a route `len` long via `nh` (for the default route,
    /// length 0, cell 0 with `hops[0]` set to `nh`).
    fn cell_for(&mut self, nh: NextHop, len: u8) -> u32 {
        if len == 0 {
            self.hops[0] = Some(nh);
            return 0;
        }
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

    /// Applies `f` to every cell of `addr/len`: plain entries directly,
    /// chunks as their runs.
    fn rewrite(&mut self, addr: u32, len: u32, f: impl Fn(u32) -> u32) {
        let first = (addr >> 8) as usize;
        if len <= 24 {
            for x in first..first + (1usize << (24 - len)) {
                let e = self.top[x];
                if e & (CHUNK | INLINE) == 0 {
                    let cell = plain_cell(e);
                    let new = f(cell);
                    if new != cell {
                        self.store(x, &[(0, new)]);
                    }
                } else {
                    self.edit(x, 0, 256, &f);
                }
            }
        } else {
            let lo = (addr & 0xff) as u16;
            self.edit(first, lo, lo + (1u16 << (32 - len)), &f);
        }
    }

    /// Applies `f` to the cells `lo..hi` of the /24 `x`, as runs.
    fn edit(&mut self, x: usize, lo: u16, hi: u16, f: &impl Fn(u32) -> u32) {
        // (An entry's cells as runs, edited, stored back in whichever
        // form fits: the same code for every kind of entry.)
        let mut runs = std::mem::take(&mut self.runs);
        let mut edited = std::mem::take(&mut self.edited);
        runs.clear();
        self.runs_of(self.top[x], &mut runs);
        edit_runs(&runs, lo, hi, f, &mut edited);
        self.store(x, &edited);
        self.runs = runs;
        self.edited = edited;
    }

    /// Appends the runs of the /24 whose entry is `e` to `out`.
    fn runs_of(&self, e: u64, out: &mut Vec<Run>) {
        if e & CHUNK == 0 {
            let outer = plain_cell(e);
            if e & INLINE == 0 {
                out.push((0, outer));
                return;
            }
            let inner = (((e >> INNER_DEPTH_SHIFT) & 7) as u32 + INNER_MIN_DEPTH) << DEPTH_SHIFT
                | ((e >> INNER_ID_SHIFT) & ID_MASK) as u32;
            let start = ((e >> START_SHIFT) & 0xff) as u16;
            let end = start + (1 << ((e >> LOG_SHIFT) & 7));
            if start > 0 {
                out.push((0, outer));
            }
            out.push((start, inner));
            if end < 256 {
                out.push((end, outer));
            }
        } else if e & FULL == 0 {
            self.small[(e & INDEX_MASK) as usize].runs(out);
        } else {
            runs_of_cells(&self.full[(e & INDEX_MASK) as usize].0, out);
        }
    }

    /// Stores `runs` as the /24 `x`: in the entry itself if they fit
    /// ([`plain_entry`], [`inline_entry`]), else a small chunk if there
    /// are few, else a full one; the chunk the /24 had is reused when of
    /// the right kind, else freed.
    fn store(&mut self, x: usize, runs: &[Run]) {
        let old = self.top[x];
        let in_entry = if runs.len() == 1 {
            plain_entry(runs[0].1)
        } else {
            inline_entry(runs)
        };
        let entry = if let Some(e) = in_entry {
            e
        } else if runs.len() <= SMALL_RUNS {
            let i = if old & (CHUNK | FULL) == CHUNK {
                (old & INDEX_MASK) as u32
            } else {
                alloc(&mut self.small, &mut self.small_free)
            };
            self.small[i as usize] = SmallChunk::from_runs(runs);
            CHUNK | u64::from(i)
        } else {
            let i = if old & (CHUNK | FULL) == CHUNK | FULL {
                (old & INDEX_MASK) as u32
            } else {
                alloc(&mut self.full, &mut self.full_free)
            };
            let cells = &mut self.full[i as usize].0;
            for (k, &(start, cell)) in runs.iter().enumerate() {
                let end = runs.get(k + 1).map_or(256, |r| usize::from(r.0));
                cells[usize::from(start)..end].fill(cell);
            }
            CHUNK | FULL | u64::from(i)
        };
        if entry != old {
            self.set_top(x, entry);
        }
        // Free the old chunk unless it was reused.
        if old & CHUNK != 0 && old != entry {
            let i = (old & INDEX_MASK) as u32;
            if old & FULL == 0 {
                self.small_free.push(i);
            } else {
                self.full_free.push(i);
            }
        }
    }

    /// Writes entry `x` of `top`, noting its region as touched.
    #[inline]
    fn set_top(&mut self, x: usize, entry: u64) {
        let r = x >> REGION_BITS;
        self.touched[r / 64] |= 1 << (r % 64);
        self.top[x] = entry;
    }

    /// Writes `entry` to the entries `range` of `top`, noting their
    /// regions as touched.
    fn fill_top(&mut self, range: std::ops::Range<usize>, entry: u64) {
        if range.is_empty() {
            return;
        }
        for r in range.start >> REGION_BITS..=(range.end - 1) >> REGION_BITS {
            self.touched[r / 64] |= 1 << (r % 64);
        }
        self.top[range].fill(entry);
    }
}

/// Appends the runs of 256 cells to `out`.
fn runs_of_cells(cells: &[u32; 256], out: &mut Vec<Run>) {
    out.push((0, cells[0]));
    for (i, pair) in cells.windows(2).enumerate() {
        if pair[0] != pair[1] {
            out.push((i as u16 + 1, pair[1]));
        }
    }
}

/// The cell of an entry holding its cells (the outer one if it has an
/// inner run).
fn plain_cell(e: u64) -> u32 {
    let depth = ((e >> OUTER_DEPTH_SHIFT) & 0x3f) as u32;
    (depth << DEPTH_SHIFT) | (e & ID_MASK) as u32
}

/// The entry of a /24 whose cells are all `cell`, if its hop id fits:
/// the inner id repeats the outer one, so a lookup picks it either way.
fn plain_entry(cell: u32) -> Option<u64> {
    let id = u64::from(cell & HOP_MASK);
    if id > ID_MASK {
        return None;
    }
    Some((u64::from(depth(cell)) << OUTER_DEPTH_SHIFT) | id | (id << INNER_ID_SHIFT))
}

/// The entry of a /24 of 2 or 3 runs that are one outer cell around (or
/// beside) one inner run, if they fit: the inner run is aligned, a power
/// of two long, from a route of /25../32, and both hop ids fit.
fn inline_entry(runs: &[Run]) -> Option<u64> {
    let end_of = |k: usize| runs.get(k + 1).map_or(256, |r| r.0);
    let candidates: &[(usize, usize)] = match runs {
        [_, _] => &[(1, 0), (0, 1)],
        [(_, a), _, (_, c)] if a == c => &[(1, 0)],
        _ => return None,
    };
    candidates.iter().find_map(|&(inner, outer)| {
        let (start, cell) = runs[inner];
        let size = end_of(inner) - start;
        let (outer, inner_depth) = (runs[outer].1, depth(cell));
        let fits = size.is_power_of_two()
            && start % size == 0
            && (INNER_MIN_DEPTH..=32).contains(&inner_depth)
            && u64::from(cell & HOP_MASK) <= ID_MASK
            && u64::from(outer & HOP_MASK) <= ID_MASK;
        fits.then(|| {
            INLINE
                | (u64::from(size.trailing_zeros()) << LOG_SHIFT)
                | (u64::from(start) << START_SHIFT)
                | (u64::from(inner_depth - INNER_MIN_DEPTH) << INNER_DEPTH_SHIFT)
                | (u64::from(cell & HOP_MASK) << INNER_ID_SHIFT)
                | (u64::from(depth(outer)) << OUTER_DEPTH_SHIFT)
                | u64::from(outer & HOP_MASK)
        })
    })
}

/// `runs` (a /24) with `f` applied to the cells `lo..hi`, into `out`:
/// each run is split where the range begins and ends, and a part equal
/// to the run before it is merged into it.
fn edit_runs(runs: &[Run], lo: u16, hi: u16, f: &impl Fn(u32) -> u32, out: &mut Vec<Run>) {
    out.clear();
    let mut push = |start: u16, cell: u32| {
        if out.last().is_none_or(|&(_, last)| last != cell) {
            out.push((start, cell));
        }
    };
    for (k, &(start, cell)) in runs.iter().enumerate() {
        let end = runs.get(k + 1).map_or(256, |r| r.0);
        if start < lo {
            push(start, cell);
        }
        if start.max(lo) < end.min(hi) {
            push(start.max(lo), f(cell));
        }
        if end > hi {
            push(start.max(hi), cell);
        }
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
    assert!(i as u64 <= INDEX_MASK, "chunk ids exhausted");
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

/// A chunk's value before it is written (and the placeholders' for ever).
trait Zeroed {
    const ZEROED: Self;
}
impl Zeroed for SmallChunk {
    const ZEROED: Self = SmallChunk {
        starts: [NO_START * LANE_ONES; 3],
        cells: [0; SMALL_RUNS],
    };
}
impl Zeroed for FullChunk {
    const ZEROED: Self = FullChunk([0; 256]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Random run lists of every length up to a full /24 round-trip
    /// through the chunk kinds: every address byte reads its run's cell,
    /// and the runs come back as they went in.
    #[test]
    fn chunks_hold_their_runs() {
        let mut rng = SmallRng::seed_from_u64(0xc4);
        let mut ix = Dir24::build(&mut [], KeyHash::default());
        for n in (1..=40).chain([255, 256]) {
            for _ in 0..20 {
                let mut starts: Vec<u16> = (1..256).collect();
                for i in 0..starts.len() {
                    let j = rng.gen_range(i..starts.len());
                    starts.swap(i, j);
                }
                starts.truncate(n - 1);
                starts.push(0);
                starts.sort_unstable();
                let runs: Vec<Run> = starts
                    .iter()
                    .enumerate()
                    .map(|(k, &s)| (s, ((k as u32 % 3 + 1) << DEPTH_SHIFT) | (k as u32 + 1)))
                    .collect();
                let x = rng.gen_range(0..TOP);
                ix.store(x, &runs);
                let e = ix.entry((x as u32) << 8);
                // (Lengths 1..3: never inline, which needs /25../32.)
                assert_eq!(e & CHUNK != 0, n > 1, "{n} runs");
                assert_eq!(e & FULL != 0, n > SMALL_RUNS, "{n} runs");
                for (k, &(start, cell)) in runs.iter().enumerate() {
                    let end = runs.get(k + 1).map_or(256, |r| r.0);
                    for i in start..end {
                        let dst = ((x as u32) << 8) | u32::from(i);
                        assert_eq!(ix.hop_id(e, dst), cell & HOP_MASK, "{n} runs, byte {i}");
                    }
                }
                let mut back = Vec::new();
                ix.runs_of(e, &mut back);
                assert_eq!(back, runs);
                ix.store(x, &[(0, 0)]);
            }
        }
        assert!(ix.small_free.len() + ix.full_free.len() > 0, "chunks freed");
        assert_eq!(ix.small[0].cell(7), 0, "placeholder untouched");
        assert_eq!(ix.full[0].0, [0; 256], "placeholder untouched");
    }

    /// A /24 of one outer cell around (or beside) one aligned run of a
    /// /25../32 route is held in its entry: lookups pick the right hop id
    /// for every byte without a chunk, the runs come back as they went
    /// in, and runs that do not fit (unaligned, three kinds of cell, a
    /// short inner route, a hop id over 21 bits) take a chunk instead.
    #[test]
    fn inline_entries_hold_their_runs() {
        let mut rng = SmallRng::seed_from_u64(0x1e);
        let mut ix = Dir24::build(&mut [], KeyHash::default());
        let cell = |depth: u32, id: u32| (depth << DEPTH_SHIFT) | id;
        for _ in 0..2000 {
            let log = rng.gen_range(0..8u32);
            let size = 1u16 << log;
            let start = rng.gen_range(0..256 / size) * size;
            let inner = cell(rng.gen_range(25..=32), rng.gen_range(1..=ID_MASK as u32));
            let outer = cell(rng.gen_range(0..=32), rng.gen_range(0..=ID_MASK as u32));
            if inner == outer {
                continue;
            }
            let mut runs = Vec::new();
            if start > 0 {
                runs.push((0, outer));
            }
            runs.push((start, inner));
            if start + size < 256 {
                runs.push((start + size, outer));
            }
            let x = rng.gen_range(0..TOP);
            ix.store(x, &runs);
            let e = ix.entry((x as u32) << 8);
            assert_eq!(e & (CHUNK | INLINE), INLINE, "{runs:?}");
            for i in 0..256u16 {
                let dst = ((x as u32) << 8) | u32::from(i);
                let want = if (start..start + size).contains(&i) {
                    inner
                } else {
                    outer
                };
                assert_eq!(ix.hop_id(e, dst), want & HOP_MASK, "{runs:?} byte {i}");
            }
            let mut back = Vec::new();
            ix.runs_of(e, &mut back);
            assert_eq!(back, runs);
            ix.store(x, &[(0, 0)]);
            assert_eq!(ix.entry((x as u32) << 8), 0);
        }
        let (a, b, c) = (cell(24, 1), cell(32, 2), cell(32, 3));
        for runs in [
            vec![(0, a), (3, b), (6, a)],           // not a power of two long
            vec![(0, a), (2, b), (4, a)],           // aligned: fits
            vec![(0, a), (3, b), (4, a)],           // 1 long at 3: fits
            vec![(0, a), (4, b), (12, a)],          // 8 long, not aligned
            vec![(0, a), (4, b), (8, c)],           // three cells
            vec![(0, a), (128, cell(24, 2))],       // inner from a /24
            vec![(0, a), (128, cell(25, 1 << 21))], // hop id too big
        ] {
            ix.store(7, &runs);
            let e = ix.entry(7 << 8);
            let fits = runs[1].0 == 2 || runs[1].0 == 3 && runs[2].0 == 4;
            assert_eq!(e & CHUNK == 0, fits, "{runs:?}");
            let mut back = Vec::new();
            ix.runs_of(e, &mut back);
            assert_eq!(back, runs);
        }
        ix.store(7, &[(0, cell(8, 1 << 22))]);
        assert_ne!(ix.entry(7 << 8) & CHUNK, 0, "a big hop id takes a chunk");
        assert_eq!(ix.hop_id(ix.entry(7 << 8), 7 << 8), 1 << 22);
    }

    /// The default route lives in `hops[0]`: setting, replacing and
    /// removing it writes no entry of `top`, a table of a default route
    /// and a few /24s touches one region, and a clone (which copies only
    /// touched regions) answers like the original.
    #[test]
    fn the_default_route_writes_no_entry() {
        let host = NextHop::Host;
        let node = NextHop::Node(std::net::Ipv4Addr::new(10, 0, 0, 2));
        let mut routes = vec![
            (0, 0, host),
            (0x0b00_0000, 24, node),
            (0x0b00_0100, 24, node),
            (0x0b00_0240, 26, node),
        ];
        let mut ix = Dir24::build(&mut routes, KeyHash::default());
        let touched = |ix: &Dir24| ix.touched.iter().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!(touched(&ix), 1);
        assert_eq!(ix.top.iter().filter(|&&e| e != 0).count(), 3);
        let check = |ix: &Dir24, default: Option<NextHop>| {
            assert_eq!(ix.lookup(0x0b00_0001), Some(node));
            assert_eq!(ix.lookup(0x0b00_01ff), Some(node));
            assert_eq!(ix.lookup(0x0b00_0241), Some(node));
            assert_eq!(ix.lookup(0x0b00_0201), default);
            assert_eq!(ix.lookup(0x0b00_0301), default);
            assert_eq!(ix.lookup(0xc0a8_0001), default);
        };
        check(&ix, Some(host));
        let copy = ix.clone();
        check(&copy, Some(host));
        ix.apply(IndexOp::Set(0, 0, NextHop::Unreachable));
        check(&ix, Some(NextHop::Unreachable));
        check(&copy, Some(host));
        // Removing a /24 under the default route leaves cell 0 (the default).
        ix.apply(IndexOp::Clear(
            0x0b00_0000,
            24,
            Some((NextHop::Unreachable, 0)),
        ));
        assert_eq!(ix.entry(0x0b00_0000), 0);
        assert_eq!(ix.lookup(0x0b00_0001), Some(NextHop::Unreachable));
        ix.apply(IndexOp::Set(0x0b00_0000, 24, node));
        ix.apply(IndexOp::Clear(0, 0, None));
        check(&ix, None);
        assert_eq!(touched(&ix), 1);
        assert_eq!(ix.top.iter().filter(|&&e| e != 0).count(), 3);
        // A route in another region marks it; the clone copies it.
        ix.apply(IndexOp::Set(0x7f00_0000, 8, node));
        assert_eq!(touched(&ix), 2);
        let copy = ix.clone();
        assert_eq!(copy.lookup(0x7f12_3456), Some(node));
        check(&copy, None);
    }

    /// Splitting and merging runs, against the same edit on 256 cells.
    #[test]
    fn editing_runs_matches_editing_cells() {
        let mut rng = SmallRng::seed_from_u64(0xed);
        for _ in 0..2000 {
            let mut cells = [0u32; 256];
            for _ in 0..rng.gen_range(0..6) {
                let (a, b) = (rng.gen_range(0..256), rng.gen_range(0..=256));
                let v = rng.gen_range(0..4);
                cells[a.min(b)..a.max(b)].fill(v);
            }
            let mut runs = Vec::new();
            runs_of_cells(&cells, &mut runs);
            let len = rng.gen_range(24..=32u32);
            let lo = if len == 24 {
                0
            } else {
                (rng.gen_range(0..256u16) >> (32 - len)) << (32 - len)
            };
            let hi = lo + (1 << (32 - len));
            let f = |c: u32| if c <= 1 { 9 } else { c };
            let mut edited = Vec::new();
            edit_runs(&runs, lo, hi, &f, &mut edited);
            for c in &mut cells[usize::from(lo)..usize::from(hi)] {
                *c = f(*c);
            }
            let mut want = Vec::new();
            runs_of_cells(&cells, &mut want);
            assert_eq!(edited, want, "{lo}..{hi} of {runs:?}");
        }
    }
}
