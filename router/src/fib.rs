//! The FIB: longest-prefix match from an IPv4 destination to a [`NextHop`].
//!
//! # What it owns
//!
//! [`Fib`] owns the published forwarding table. The control thread is its
//! writer: it turns RIB/IPAM decisions into batches of [`FibChange`] and calls
//! [`Fib::update`]. Workers call [`Fib::load`] once per rx batch and run
//! [`FibTable::lookup`] for every frame of the batch. A [`FibTable`] is an
//! immutable snapshot: a reader sees either all of a batch or none of it.
//!
//! # Structure
//!
//! A [`FibTable`] holds one exact-match hash table per prefix length
//! (0..=32), keyed by the prefix's address as a `u32` (host bits are zero).
//! A 33-bit mask records which lengths are non-empty. Beside them sits a
//! lookup index, `dir`: one [`DirSlot`] per /16 of the address space
//! (65,536 slots of 12 bytes, 768 KiB, in 256 chunks), holding the longest route of length
//! /0../16 that covers the whole /16, and a 16-bit mask of the lengths
//! /17../32 that hold routes inside it. `lookup` reads the destination's
//! slot, probes only the lengths its mask names, longest first (masking the
//! destination to that length), and falls back to the slot's short route;
//! the first hit is the longest match.
//!
//! A table of [`Fib::INDEX_MIN_ROUTES`] routes or more (16,384) also has a
//! DIR-24-8 index ([`dir24`]): one 8-byte entry per /24 (128 MiB of
//! address space on transparent huge pages where the kernel gives them,
//! resident only where routes other than the default are: the default
//! route is the index's next hop 0, never written into entries), which
//! holds the /24's cells itself when they are one route's or one longer
//! route's run under a shorter one, and else names a chunk of that /24's
//! 256 addresses, stored as one 64-byte cache line while it has at most
//! 10 runs of equal next hops. Its lookups are one read, or two with a chunk, however many
//! prefix lengths the table has; [`FibTable::lookup_batch`] pipelines groups of 16 addresses so
//! the reads of three groups are in flight at once. The index is derived from the hash
//! tables, which stay the truth (`get`, `routes`, groups, nodes). It
//! cannot be copied on write cheaply, so there are two copies taking
//! turns: a batch is applied to the copy no published snapshot uses any
//! more (the one the previous snapshot used, brought forward first by
//! replaying the previous batch's index changes), which is then
//! published; the writer waits (microseconds, or a scheduler tick for a
//! preempted worker) for a reader still finishing its batch on it, and
//! only if a snapshot is held longer (50 ms) duplicates the current copy
//! instead. Updates stay incremental: a route rewrites only the entries
//! of its range whose route is no longer than it (insert) or is it
//! (removal, with the covering route from the hash tables), each change
//! worked out once per batch and applied to each copy. Below half the
//! threshold the index is dropped, so a node with a few thousand routes
//! never pays for it.
//!
//! Each length table is split by hash into `2^k` shards, each an
//! `Arc<HashMap<u32, NextHop>>` (std's SwissTable) shared between
//! snapshots. `k` grows with the table so a shard holds 128..512 routes
//! (`SHARD_TARGET`; a 700k-route `/32` length has 2048 shards). An update
//! copies only what it touches (copy-on-write): the table header (33
//! slots), the shard-pointer array of each touched length, and each touched
//! shard, once per batch (`Arc::make_mut` finds the fresh copy uniquely
//! owned after the first change). Everything else stays shared with the
//! previous snapshot.
//!
//! The hash (`KeyHash`) is a seeded folded multiply written here: one
//! 64x64->128 multiply, no extra dependency, every output bit depending on
//! every key bit (keys of short prefixes have many zero low bits). The
//! shard index comes from hash bits 40..56, which SwissTable's bucket index
//! (low bits) and tag (top 7 bits) don't use. The seed is random per
//! [`Fib`], so which addresses collide can't be predicted from outside.
//!
//! # ECMP: next-hop groups
//!
//! A route to several nodes is `NextHop::Nodes(GroupId)`, so [`NextHop`]
//! stays 8 bytes and `Copy` however many members a route has. The group
//! (its sorted, distinct member addresses, two or more) lives in the
//! snapshot's group table, interned: every route to the same set shares
//! one group, refcounted by the routes using it and freed (its id reused
//! later) when the last one goes. The table is copied on write once per
//! batch that changes it; it holds one entry per distinct set, so that
//! copy is small. [`FibChange::InsertMultipath`] is how a
//! writer makes a group route; the pipeline resolves a group to one member
//! per flow ([`FibTable::group`]).
//!
//! # Why this structure
//!
//! Measured with the `fib` criterion bench (README, "FIB micro-benchmark"):
//! at 1M random routes the hash tables with the /16 index took hundreds
//! of nanoseconds per lookup (a probe per length present in the /16, each
//! a cache miss), the DIR-24-8 index a few tens. Poptrie and multibit
//! tries are smaller, but a lookup walks 4-5 dependent levels for a /32
//! where DIR-24-8 reads at most two lines, and both would need
//! copy-on-write paths for snapshots; the cost of DIR-24-8 is its fixed
//! 128 MiB per copy, which is why small tables keep the hash path.
//!
//! The hash tables themselves (below the threshold):
//! The index makes a lookup cost the lengths present *near the
//! destination* rather than in the whole table: a full table spreads its
//! routes over many lengths, but one /16 holds only a few of them, and
//! every route of /16 or shorter is answered from the slot with no probe.
//! A DIR-24-8 table (one 4-byte entry per /24, leaf-pushed 256-entry
//! blocks below) answers in one or two memory reads, but costs 64 MiB per
//! table plus 1 KiB per /24 holding a longer route: on the bench's random
//! 1M-route table (70% /32, 25% /26) that is ~900k blocks, ~0.9 GiB,
//! and per-snapshot copy-on-write of it needs chunking on top. The /16
//! index is 768 KiB, copied on write per 3 KiB chunk, and keeps the
//! hash tables as the one source of truth (`get`, `routes`, ECMP groups and
//! known nodes are unchanged).

//! A Calico node's FIB has very few distinct prefix lengths: `/32` local
//! pods, `/26` blocks of other nodes, the node's own block (Unreachable),
//! a few host routes and the default. So a lookup costs one probe per
//! *distinct length present*, usually 2-4. Updates need no prefix expansion
//! or path copying (a trie's costs), and a change to a short prefix doesn't
//! ripple into longer ones. Measured on 1M random routes (12 lengths), the
//! alternatives lost: per-length tables without shards look up as fast but
//! copy the whole `/32` table for a one-route batch (~1 ms instead of
//! ~30 us, and 1.6x slower per 1,000-change batch); flat linear-probing
//! shards without SwissTable's control bytes saved a pointer hop but looked
//! up 1.3-2x slower (mispredicted branches on misses, which most probes
//! are) and updated 8x slower. A multibit trie could beat the random
//! 12-length bench on lookups, but not the 2-4-length tables we serve, at
//! several times the code. The `fib` criterion bench measures lookups and
//! updates.
//!
//! # Invariants
//!
//! - A key at length `L` has no bits set below `L` ([`Prefix::new`] enforces
//!   it), so probing with `dst & mask(L)` finds it.
//! - Bit `L` of `present` is set iff length table `L` holds at least one
//!   route; an empty length table holds no shards.
//! - The number of shards of a length is a power of two; a key lives in the
//!   shard its hash selects.
//! - For every slot of `dir`, `short` is the longest route of length
//!   <= 16 covering its /16 (`short_len` its length, 0 when none); bit `i`
//!   of `long` is set whenever length `17 + i` holds a route inside the /16
//!   (a set bit with no such route only costs a probe; removals count in
//!   `dir_stale` and the masks are recomputed from the routes when they
//!   exceed 1,024 plus a quarter of the routes longer than /16).
//! - A published `FibTable` is never mutated. The writer mutates only its
//!   private next table, and only parts it has just copied or created.
//! - Every `Nodes(g)` route of a snapshot names a live group of that same
//!   snapshot; a group's refcount is the number of its routes; `nodes`
//!   counts a node once per route that goes via it, directly or as a group
//!   member.
//! - Every known node has a tunnel counter slot ([`FibTable::node_slot`]),
//!   given the first time a route goes via it and never changed or reused
//!   for the life of the [`Fib`] (the slot list is append-only and
//!   carried into every later snapshot), so per-worker counters indexed
//!   by it need no reset and a worker may remember a node's slot.
//! - Readers never free memory: the writer keeps each replaced snapshot
//!   until it holds the last reference, then drops it on the control thread
//!   (at the next [`Fib::update`] or [`Fib::reclaim`]).
//!
//! # Cost model
//!
//! - With the DIR-24-8 index (16,384 routes or more): `lookup` reads the
//!   /24 entry, a 64-byte chunk if the /24's cells do not fit the entry
//!   (two or more longer routes), and the interned next hop. An update additionally rewrites
//!   the index cells its routes cover, in the published-next copy and one
//!   batch later in the other. Memory: the first level's pages that
//!   routes other than the default cover (at most 128 MiB), plus 64 bytes
//!   per /24 whose cells do not fit its entry (1 KiB past 10 runs), twice.
//!
//! - `lookup`: one slot read, then at most D probes for the D lengths
//!   /17../32 the slot's mask names, longest first, stopping at the first
//!   hit; routes of /16 or shorter cost no probe. Each probe hashes the masked key,
//!   loads the shard pointer and does one SwissTable probe (a 16-byte
//!   control group, then the bucket on a tag match). No allocation, lock or
//!   atomic operation. [`Fib::load`] is one lock-free arc-swap load per
//!   batch.
//! - `update` with B changes touching S shards in T lengths: O(B) hash
//!   operations, plus copying T shard-pointer arrays (one pointer and one
//!   refcount increment per shard of that length) and S shards (at most 512
//!   routes each), plus one snapshot header. A length whose size crosses a
//!   power-of-two threshold is re-sharded at O(routes of that length),
//!   amortised O(1) per insert. The index costs, per batch, a copy of its
//!   256-pointer chunk array and of each 3 KiB chunk written, one slot write per route longer than /16 and
//!   2^(16-L) slot writes per route of length L <= 16 (65,536 for the
//!   default route); mask rebuilds are amortised O(1) per removal. A batch whose changes are all no-ops
//!   (removing an absent prefix, re-inserting an identical route) copies
//!   nothing and publishes nothing. At 1M routes: ~30 us for a one-route
//!   batch, ~1 ms for 1,000 random changes.
//! - Memory: ~22 bytes per route at 1M routes ([`FibTable::memory_bytes`]).
//!   Consecutive snapshots share every untouched shard; a replaced one lives
//!   until the last reader holding it is done and the writer next runs.
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use podrouter_types::prefix::netmask;
/// The prefix type lives in `podrouter-types` (so crates that need it do
/// not link the data plane); re-exported here because the FIB API takes it.
pub use podrouter_types::{Prefix, PrefixError};

use crate::port::PortId;

mod dir24;
use dir24::{Dir24, IndexOp};

/// Where a destination goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// A pod on this node, behind this port.
    Local(PortId),
    /// The node's own stack (host port): node IP, services, outside world.
    Host,
    /// Another node's block: forward to that node (encap per mode).
    Node(Ipv4Addr),
    /// A block reachable through several nodes (ECMP): a next-hop group of
    /// this snapshot ([`FibTable::group`]); the pipeline picks one member
    /// per flow.
    Nodes(GroupId),
    /// Known but unreachable (e.g. unassigned addresses in our own pod
    /// block): answered with ICMP host unreachable.
    Unreachable,
}

/// A next-hop group of one [`FibTable`]: an index into its group table.
/// Only meaningful with the snapshot it came from (ids of freed groups are
/// reused by later snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

/// One change in a batch applied by [`Fib::update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FibChange {
    /// Sets the route for a prefix. A [`NextHop::Nodes`] here must name a
    /// group of the table it is applied to (use `InsertMultipath` to make
    /// one); an unknown group is treated as a removal.
    Insert(Prefix, NextHop),
    /// Sets the route for a prefix to these nodes, spreading flows over
    /// them (ECMP). The list is sorted and deduplicated by the FIB: one
    /// distinct node makes a plain [`NextHop::Node`] route, none removes
    /// the route.
    InsertMultipath(Prefix, Vec<Ipv4Addr>),
    Remove(Prefix),
}

/// Routes per shard the writer aims for (shards hold 1/4 to 1x of it on
/// average, or more once a length reaches [`MAX_SHARD_BITS`]).
const SHARD_TARGET: usize = 512;
/// At most 2^16 shards per length (32M routes at the target size).
const MAX_SHARD_BITS: u32 = 16;
/// Shard index = `(hash >> SHARD_SHIFT) & shard_mask`: bits 40..56, clear
/// of SwissTable's bucket bits (low) and tag bits (top 7).
const SHARD_SHIFT: u32 = 40;

/// Seeded hash of a `u32` key: a folded 64x64->128 multiply. Every output
/// bit depends on every key bit, which matters because keys of short
/// prefixes have many zero low bits.
/// Also the hash of network policy's address maps ([`crate::policy`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHash {
    seed: u64,
}

impl Default for KeyHash {
    /// A random seed (per process and call).
    fn default() -> Self {
        KeyHash {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x0f1b_u32),
        }
    }
}

const HASH_MUL: u64 = 0x5851_f42d_4c95_7f2d;

impl KeyHash {
    #[inline]
    fn hash(self, key: u32) -> u64 {
        fold(u64::from(key) ^ self.seed)
    }
}

#[inline]
fn fold(x: u64) -> u64 {
    let p = u128::from(x) * u128::from(HASH_MUL);
    (p as u64) ^ ((p >> 64) as u64)
}

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.seed,
            acc: 0,
        }
    }
}

/// The [`Hasher`] behind [`KeyHash`]; keys are `u32`, so `write_u32` is
/// the path that matters (and gives the same value as [`KeyHash::hash`]).
pub(crate) struct KeyHasher {
    seed: u64,
    acc: u64,
}

impl Hasher for KeyHasher {
    #[inline]
    fn write_u32(&mut self, key: u32) {
        self.acc = u64::from(key);
    }
    #[inline]
    fn write_u64(&mut self, key: u64) {
        self.acc = key;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by u32 keys; correct for anything else.
        for &b in bytes {
            self.acc = fold(self.acc ^ u64::from(b));
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        fold(self.acc ^ self.seed)
    }
}

type Shard<V = NextHop> = HashMap<u32, V, KeyHash>;

/// Address bits the lookup index splits on: one [`DirSlot`] per /16.
const DIR_BITS: u32 = 16;
/// Removals of routes longer than /16 after which the index's length masks
/// are recomputed (plus a quarter of those routes, so rebuilds stay
/// amortised O(1) per removal).
const DIR_STALE_MIN: usize = 1024;

/// The index is stored in chunks of `1 << DIR_CHUNK_BITS` slots, each
/// shared between snapshots until a batch writes into it.
const DIR_CHUNK_BITS: u32 = 8;
const DIR_CHUNK_MASK: usize = (1 << DIR_CHUNK_BITS) - 1;
type DirChunk = [DirSlot; 1 << DIR_CHUNK_BITS];

/// An index with no routes: every chunk pointer shares one empty chunk
/// (the first write to a chunk copies it).
fn empty_dir() -> Arc<[Arc<DirChunk>]> {
    let empty = Arc::new([DirSlot::default(); 1 << DIR_CHUNK_BITS]);
    std::iter::repeat_n(empty, 1 << (DIR_BITS - DIR_CHUNK_BITS)).collect()
}

/// A writable index slot `i`, copying the chunk-pointer array and the
/// chunk first if they are shared with a published snapshot.
fn dir_slot_mut(dir: &mut Arc<[Arc<DirChunk>]>, i: usize) -> &mut DirSlot {
    if Arc::get_mut(dir).is_none() {
        *dir = dir.iter().cloned().collect();
    }
    let chunks = Arc::get_mut(dir).expect("chunk array was just made unique");
    &mut Arc::make_mut(&mut chunks[i >> DIR_CHUNK_BITS])[i & DIR_CHUNK_MASK]
}

/// The lookup index entry of one /16 of the address space.
#[derive(Clone, Copy, Debug, Default)]
struct DirSlot {
    /// The longest route of length 0..=16 covering the whole /16.
    short: Option<NextHop>,
    /// The length of `short` (0 when `short` is `None`).
    short_len: u8,
    /// Bit `i` set if length `17 + i` may hold a route inside this /16
    /// (never clear while one does; may stay set after the last one goes,
    /// until the next rebuild).
    long: u16,
}

/// A map from `u32` keys, split by hash into a power-of-two number of
/// shards, each shared between snapshots until a batch writes into it:
/// the routes of one prefix length ([`LenTable`]) and the known nodes.
#[derive(Clone)]
struct ShardedMap<V> {
    /// `None` iff the map is empty; else a power-of-two count.
    shards: Option<Arc<[Arc<Shard<V>>]>>,
    /// Number of shards minus one.
    shard_mask: usize,
    /// Entries (routes at this length).
    count: usize,
}

/// The routes of one prefix length.
type LenTable = ShardedMap<NextHop>;

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        ShardedMap {
            shards: None,
            shard_mask: 0,
            count: 0,
        }
    }
}

impl<V: Clone> ShardedMap<V> {
    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & self.shard_mask
    }

    /// The value of `key`, whose hash is `h`: one shard probe.
    #[inline]
    fn get(&self, key: u32, h: u64) -> Option<&V> {
        self.shards.as_ref()?[self.shard_of(h)].get(&key)
    }

    /// The writable shard of a key whose hash is `h`, made first if the
    /// map has none, copied first if shared with a published snapshot.
    fn shard_for(&mut self, h: u64, hash: KeyHash) -> &mut Shard<V> {
        let i = self.shard_of(h);
        let shards = self
            .shards
            .get_or_insert_with(|| Arc::from([Arc::new(HashMap::with_hasher(hash))]));
        shard_mut(shards, i)
    }

    /// Drops the shards of an emptied map; re-shards one that outgrew its
    /// shards or shrank well below them (hysteresis: 4x below before
    /// shrinking).
    fn rebalance(&mut self, hash: KeyHash) {
        if self.count == 0 {
            *self = ShardedMap::default();
            return;
        }
        let bits = self.shard_mask.count_ones();
        let want = shard_bits_for(self.count);
        if want <= bits && want + 2 > bits {
            return;
        }
        let n = 1usize << want;
        let cap = self.count / n + self.count / n / 4 + 1;
        let mut new: Vec<Shard<V>> = (0..n)
            .map(|_| HashMap::with_capacity_and_hasher(cap, hash))
            .collect();
        let mask = n - 1;
        for shard in self.shards.iter().flat_map(|s| s.iter()) {
            for (&key, value) in shard.iter() {
                new[(hash.hash(key) >> SHARD_SHIFT) as usize & mask].insert(key, value.clone());
            }
        }
        self.shards = Some(new.into_iter().map(Arc::new).collect());
        self.shard_mask = mask;
    }
}

/// Shard bits for `n` routes: the fewest shards of at most SHARD_TARGET.
fn shard_bits_for(n: usize) -> u32 {
    n.div_ceil(SHARD_TARGET)
        .next_power_of_two()
        .trailing_zeros()
        .min(MAX_SHARD_BITS)
}

/// A writable shard at `i`, copying the pointer array and the shard first
/// if they are shared with a published snapshot.
fn shard_mut<V: Clone>(shards: &mut Arc<[Arc<Shard<V>>]>, i: usize) -> &mut Shard<V> {
    if Arc::get_mut(shards).is_none() {
        *shards = shards.iter().cloned().collect();
    }
    let shards = Arc::get_mut(shards).expect("shard array was just made unique");
    Arc::make_mut(&mut shards[i])
}

/// An immutable table. Readers hold it for one batch.
#[derive(Clone)]
pub struct FibTable {
    /// Bit `L` set iff `lens[L]` holds routes.
    present: u64,
    hash: KeyHash,
    count: usize,
    lens: [LenTable; 33],
    /// The known nodes: every address some `NextHop::Node` route goes via,
    /// with how many routes do. Maintained by `insert`/`remove`, so it is
    /// always the set of the snapshot's own routes (the uplink accepts IPIP
    /// only from these). Sharded like a length's routes: a batch copies
    /// only the shards it changes.
    nodes: ShardedMap<KnownNode>,
    /// The tunnel counter slot of every node ever known, in slot order
    /// ([`NodeSlots`]); append-only, copied on write only by a batch that
    /// brings a node never seen before.
    node_slots: Arc<NodeSlots>,
    /// The lookup index: `1 << DIR_BITS` slots, one per /16, in chunks.
    /// A batch copies the chunk-pointer array and each chunk it writes,
    /// once.
    dir: Arc<[Arc<DirChunk>]>,
    /// Removals of routes longer than /16 since the `long` masks of `dir`
    /// were last recomputed (each may have left a stale bit).
    dir_stale: usize,
    /// The next-hop groups the snapshot's `Nodes` routes refer to, with
    /// how many routes do; a group no route uses is freed. Copied on
    /// write, once per batch that changes it.
    groups: Arc<Groups>,
    /// The DIR-24-8 lookup index ([`dir24`]), present while the table is
    /// large (see [`Fib::INDEX_MIN_ROUTES`]); lookups then use it alone.
    /// Shared with the snapshots that use the same copy; never mutated
    /// while shared.
    index: Option<Arc<Dir24>>,
}

/// Nodes that get a tunnel counter slot of their own
/// ([`crate::counters::TunnelCounters`]); later ones share
/// [`NODE_SLOT_OTHER`].
pub const NODE_SLOTS: usize = 1024;
/// The slot shared by every node beyond the first `NODE_SLOTS - 1`.
pub const NODE_SLOT_OTHER: u16 = (NODE_SLOTS - 1) as u16;

/// A known node: how many routes go via it, and its tunnel counter slot.
#[derive(Clone, Copy, Debug)]
struct KnownNode {
    routes: u32,
    slot: u16,
}

/// Tunnel counter slots: a node gets the next free one the first time a
/// route goes via it and keeps it for the life of the [`Fib`] (a node that
/// leaves and comes back counts on where it stopped), so the per-worker
/// counters never need resetting and a slot always means one node.
/// Bounded: the `NODE_SLOTS`-th node and later share [`NODE_SLOT_OTHER`].
#[derive(Clone, Debug, Default)]
struct NodeSlots {
    by_addr: HashMap<u32, u16>,
    addrs: Vec<Ipv4Addr>,
}

impl NodeSlots {
    /// The slot of `addr`, giving it the next one if it has none.
    fn slot(this: &mut Arc<NodeSlots>, addr: u32) -> u16 {
        if let Some(&slot) = this.by_addr.get(&addr) {
            return slot;
        }
        if this.addrs.len() >= usize::from(NODE_SLOT_OTHER) {
            return NODE_SLOT_OTHER;
        }
        let s = Arc::make_mut(this);
        let slot = s.addrs.len() as u16;
        s.addrs.push(Ipv4Addr::from(addr));
        s.by_addr.insert(addr, slot);
        slot
    }
}

/// One interned next-hop group: its members (sorted, distinct, at least
/// two) and how many routes use it.
#[derive(Clone, Debug)]
struct Group {
    members: Arc<[Ipv4Addr]>,
    routes: u32,
}

/// The group table: slots indexed by [`GroupId`], an index from member
/// list to id (so equal sets share one group), and freed ids to reuse.
#[derive(Clone, Debug, Default)]
struct Groups {
    slots: Vec<Option<Group>>,
    by_members: HashMap<Arc<[Ipv4Addr]>, u32>,
    free: Vec<u32>,
}

impl Groups {
    #[inline]
    fn members(&self, id: GroupId) -> &[Ipv4Addr] {
        match self.slots.get(id.0 as usize) {
            Some(Some(g)) => &g.members,
            _ => &[],
        }
    }

    /// The id of the group with exactly these (sorted, distinct) members,
    /// creating it with no routes if there is none.
    fn intern(&mut self, members: &[Ipv4Addr]) -> GroupId {
        if let Some(&id) = self.by_members.get(members) {
            return GroupId(id);
        }
        let members: Arc<[Ipv4Addr]> = Arc::from(members);
        let group = Group {
            members: members.clone(),
            routes: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(group);
                id
            }
            None => {
                self.slots.push(Some(group));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_members.insert(members, id);
        GroupId(id)
    }

    /// Frees every group no route uses (after a batch's changes).
    fn collect(&mut self) {
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|g| g.routes == 0) {
                let g = slot.take().expect("checked");
                self.by_members.remove(&g.members);
                self.free.push(id as u32);
            }
        }
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
            let last = self.slots.len() as u32;
            self.free.retain(|&f| f != last);
        }
    }

    fn len(&self) -> usize {
        self.by_members.len()
    }
}

/// Calls `f` with every node `nh` leads to (as `u32`).
fn for_each_via(groups: &Groups, nh: Option<NextHop>, mut f: impl FnMut(u32)) {
    match nh {
        Some(NextHop::Node(a)) => f(u32::from(a)),
        Some(NextHop::Nodes(g)) => groups.members(g).iter().for_each(|&a| f(u32::from(a))),
        _ => {}
    }
}

impl FibTable {
    fn empty(hash: KeyHash) -> FibTable {
        FibTable {
            present: 0,
            hash,
            count: 0,
            lens: std::array::from_fn(|_| LenTable::default()),
            nodes: ShardedMap::default(),
            node_slots: Arc::new(NodeSlots::default()),
            dir: empty_dir(),
            dir_stale: 0,
            groups: Arc::new(Groups::default()),
            index: None,
        }
    }

    /// The members of next-hop group `id` (sorted, at least two), or an
    /// empty slice if this snapshot has no such group. Never allocates or
    /// blocks.
    #[inline]
    pub fn group(&self, id: GroupId) -> &[Ipv4Addr] {
        self.groups.members(id)
    }

    /// How many distinct next-hop groups the snapshot's routes use.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The nodes a next hop leads to: one for `Node`, the members for
    /// `Nodes`, none otherwise.
    pub fn next_hop_nodes(&self, nh: NextHop) -> Vec<Ipv4Addr> {
        match nh {
            NextHop::Node(a) => vec![a],
            NextHop::Nodes(g) => self.group(g).to_vec(),
            _ => Vec::new(),
        }
    }

    /// Whether `addr` is a known node (some route goes via it). One hash
    /// probe; never allocates or blocks.
    #[inline]
    pub fn is_node(&self, addr: Ipv4Addr) -> bool {
        self.node_slot(addr).is_some()
    }

    /// The tunnel counter slot of `addr` if it is a known node (the same
    /// single hash probe as [`FibTable::is_node`]); never allocates or
    /// blocks.
    #[inline]
    pub fn node_slot(&self, addr: Ipv4Addr) -> Option<u16> {
        let key = u32::from(addr);
        self.nodes.get(key, self.hash.hash(key)).map(|n| n.slot)
    }

    /// The node of every tunnel counter slot given so far, in slot order
    /// (slot `i` is `node_slot_addrs()[i]`; known now or in the past).
    /// Nodes beyond the first `NODE_SLOTS - 1` are not in it: they count
    /// in [`NODE_SLOT_OTHER`].
    pub fn node_slot_addrs(&self) -> &[Ipv4Addr] {
        &self.node_slots.addrs
    }

    /// The known nodes, sorted.
    pub fn nodes(&self) -> Vec<Ipv4Addr> {
        let shards = self.nodes.shards.iter().flat_map(|s| s.iter());
        let mut v: Vec<Ipv4Addr> = shards
            .flat_map(|shard| shard.keys().map(|&k| Ipv4Addr::from(k)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Keeps `nodes` and the group refcounts in step with one route
    /// changing from `old` to `new`. Counts go up before they go down, so
    /// a node that stays is never dropped in between; groups left unused
    /// are freed at the end of the batch (`Groups::collect`), so an old
    /// group's members are still readable here.
    fn track_nodes(&mut self, old: Option<NextHop>, new: Option<NextHop>) {
        let via = |nh: Option<NextHop>| matches!(nh, Some(NextHop::Node(_) | NextHop::Nodes(_)));
        if old == new || (!via(old) && !via(new)) {
            return;
        }
        for (nh, up) in [(new, true), (old, false)] {
            if let Some(NextHop::Nodes(g)) = nh {
                let groups = Arc::make_mut(&mut self.groups);
                if let Some(Some(grp)) = groups.slots.get_mut(g.0 as usize) {
                    grp.routes = if up {
                        grp.routes + 1
                    } else {
                        grp.routes.saturating_sub(1)
                    };
                }
            }
        }
        // Only the shards of the nodes concerned are copied (a table with
        // hundreds of thousands of next-hop nodes would otherwise copy
        // them all in every batch that touches one).
        let hash = self.hash;
        let nodes = &mut self.nodes;
        let slots = &mut self.node_slots;
        let groups = &*self.groups;
        for_each_via(groups, new, |a| {
            let shard = nodes.shard_for(hash.hash(a), hash);
            let before = shard.len();
            shard
                .entry(a)
                .or_insert_with(|| KnownNode {
                    routes: 0,
                    slot: NodeSlots::slot(slots, a),
                })
                .routes += 1;
            let added = shard.len() - before;
            nodes.count += added;
        });
        for_each_via(groups, old, |a| {
            let h = hash.hash(a);
            if nodes.get(a, h).is_none() {
                return;
            }
            let shard = nodes.shard_for(h, hash);
            if let Some(n) = shard.get_mut(&a) {
                n.routes -= 1;
                if n.routes == 0 {
                    shard.remove(&a);
                    nodes.count -= 1;
                }
            }
        });
    }

    /// The longest-prefix match for `dst`. Never allocates or blocks.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<NextHop> {
        if let Some(ix) = &self.index {
            return ix.lookup(u32::from(dst));
        }
        self.lookup_hashed(dst)
    }

    /// Longest-prefix matches for a batch: `out[i]` is the next hop of
    /// `dsts[i]` (`out` must be at least as long). With the DIR-24-8 index
    /// the addresses go in groups of 16 through a software pipeline of
    /// four stages: prefetch the group's /24 entries; read them and
    /// prefetch the chunks they name; read the cells and prefetch their
    /// next hops; read those. Each step runs every stage on a different
    /// group (the newest group's first stage, the oldest's last), so the
    /// misses of three groups are in flight while the CPU works, instead
    /// of one group's misses per stage with the CPU waiting for the first
    /// of them. Never allocates or blocks.
    #[inline]
    pub fn lookup_batch(&self, dsts: &[Ipv4Addr], out: &mut [Option<NextHop>]) {
        const GROUP: usize = 16;
        let out = &mut out[..dsts.len()];
        let Some(ix) = &self.index else {
            for (o, &d) in out.iter_mut().zip(dsts) {
                *o = self.lookup_hashed(d);
            }
            return;
        };
        let groups = dsts.len().div_ceil(GROUP);
        let span = |g: usize| g * GROUP..dsts.len().min((g + 1) * GROUP);
        // Entries, then cells, of the groups in the middle stages, by
        // group number modulo 4.
        let mut cells = [[0u64; GROUP]; 4];
        for step in 0..groups + 3 {
            if let Some(g) = step.checked_sub(3) {
                let cells = &cells[g % 4];
                for (o, &c) in out[span(g)].iter_mut().zip(cells) {
                    *o = ix.hop(c as u32);
                }
            }
            if let Some(g) = step.checked_sub(2).filter(|&g| g < groups) {
                let cells = &mut cells[g % 4];
                for (c, &d) in cells.iter_mut().zip(&dsts[span(g)]) {
                    let id = ix.hop_id(*c, u32::from(d));
                    ix.prefetch_hop(id);
                    *c = u64::from(id);
                }
            }
            if let Some(g) = step.checked_sub(1).filter(|&g| g < groups) {
                let cells = &mut cells[g % 4];
                for (c, &d) in cells.iter_mut().zip(&dsts[span(g)]) {
                    let d = u32::from(d);
                    *c = ix.entry(d);
                    ix.prefetch_cell(*c, d);
                }
            }
            if step < groups {
                for &d in &dsts[span(step)] {
                    ix.prefetch_entry(u32::from(d));
                }
            }
        }
    }

    /// Starts the memory reads the lookups of `dsts` will make, without
    /// looking anything up: a worker calls it with the destinations of a
    /// received batch before processing its frames one by one, so their
    /// FIB reads overlap (two passes per 32 addresses: the /24 entries,
    /// then the chunks they name). Nothing to do for tables without the
    /// DIR-24-8 index, which stay in cache. Never allocates or blocks.
    #[inline]
    pub fn prefetch(&self, dsts: impl IntoIterator<Item = Ipv4Addr>) {
        let Some(ix) = &self.index else {
            return;
        };
        let mut group = [0u32; 32];
        let mut dsts = dsts.into_iter().peekable();
        while dsts.peek().is_some() {
            let mut n = 0;
            for (slot, d) in group.iter_mut().zip(dsts.by_ref()) {
                *slot = u32::from(d);
                ix.prefetch_entry(*slot);
                n += 1;
            }
            for &d in &group[..n] {
                ix.prefetch_cell(ix.entry(d), d);
            }
        }
    }

    /// Whether lookups use the DIR-24-8 index (the table is large).
    pub fn has_index(&self) -> bool {
        self.index.is_some()
    }

    /// Whether the index's first level got the huge-page advice (`None`:
    /// no index).
    pub fn index_huge_pages(&self) -> Option<bool> {
        self.index.as_ref().map(|ix| ix.huge_pages())
    }

    /// The longest-prefix match through the per-length hash tables and
    /// the /16 index (tables without the DIR-24-8 index).
    #[inline]
    fn lookup_hashed(&self, dst: Ipv4Addr) -> Option<NextHop> {
        let dst = u32::from(dst);
        let slot = self.dir_slot((dst >> DIR_BITS) as usize);
        let mut long = slot.long;
        while long != 0 {
            let i = 15 - long.leading_zeros();
            long ^= 1 << i;
            let len = DIR_BITS + 1 + i;
            if let Some(nh) = self.probe(len, dst & netmask(len)) {
                return Some(nh);
            }
        }
        slot.short
    }

    /// Index slot `i` (the /16 `i`).
    #[inline]
    fn dir_slot(&self, i: usize) -> &DirSlot {
        &self.dir[i >> DIR_CHUNK_BITS][i & DIR_CHUNK_MASK]
    }

    /// The route at exactly length `len` with address `key` (host bits
    /// clear): one hash probe.
    #[inline]
    fn probe(&self, len: u32, key: u32) -> Option<NextHop> {
        let t = &self.lens[len as usize];
        let shards = t.shards.as_ref()?;
        shards[t.shard_of(self.hash.hash(key))].get(&key).copied()
    }

    /// The longest route strictly shorter than `prefix` that covers it:
    /// a probe per length, or for a prefix longer than /16 only per length
    /// the /16 index names, then the index's short route (`dir` must be
    /// up to date: not while a batch is being applied).
    fn covering(&self, prefix: Prefix) -> Option<(NextHop, u8)> {
        let a = u32::from(prefix.addr());
        let len = u32::from(prefix.len());
        if len <= DIR_BITS {
            return (0..prefix.len())
                .rev()
                .find_map(|len| Some((self.probe(len.into(), a & netmask(len.into()))?, len)));
        }
        let slot = self.dir_slot((a >> DIR_BITS) as usize);
        // Bit `i` stands for length 17 + i: keep those shorter than `len`.
        let mut long = slot.long & ((1u16 << (len - DIR_BITS - 1)) - 1);
        while long != 0 {
            let i = 15 - long.leading_zeros();
            long ^= 1 << i;
            let l = DIR_BITS + 1 + i;
            if let Some(nh) = self.probe(l, a & netmask(l)) {
                return Some((nh, l as u8));
            }
        }
        slot.short.map(|nh| (nh, slot.short_len))
    }

    /// Brings `dir` in line with the route of `prefix` having just been
    /// set or removed. A route of length <= 16 is written into the slots
    /// it covers where no longer short route is (set), or replaced by its
    /// covering route where it was the slot's route (removed). A longer
    /// route sets its length's bit in its slot; a removal leaves the bit
    /// (a wasted probe at worst) and counts towards the next rebuild.
    fn reindex(&mut self, prefix: Prefix, route: Option<NextHop>) {
        let len = prefix.len();
        let addr = u32::from(prefix.addr());
        let first = (addr >> DIR_BITS) as usize;
        if u32::from(len) > DIR_BITS {
            if route.is_some() {
                let bit = 1u16 << (u32::from(len) - DIR_BITS - 1);
                dir_slot_mut(&mut self.dir, first).long |= bit;
            } else {
                self.dir_stale += 1;
            }
            return;
        }
        let new = match route {
            Some(nh) => Some((nh, len)),
            None => self.covering(prefix),
        };
        let span = 1usize << (DIR_BITS - u32::from(len));
        for i in first..first + span {
            let slot = dir_slot_mut(&mut self.dir, i);
            let ours = match route {
                Some(_) => slot.short.is_none() || slot.short_len <= len,
                None => slot.short.is_some() && slot.short_len == len,
            };
            if ours {
                slot.short = new.map(|(nh, _)| nh);
                slot.short_len = new.map_or(0, |(_, l)| l);
            }
        }
    }

    /// The index change that brings a copy's cells for `prefix` in line
    /// with `route`, this table's route for it (present or not).
    fn index_op(&self, prefix: Prefix, route: Option<NextHop>) -> IndexOp {
        let addr = u32::from(prefix.addr());
        match route {
            Some(nh) => IndexOp::Set(addr, prefix.len(), nh),
            None => IndexOp::Clear(addr, prefix.len(), self.covering(prefix)),
        }
    }

    /// Recomputes every slot's `long` mask from the routes, dropping the
    /// bits removals left behind.
    fn rebuild_long_masks(&mut self) {
        for i in 0..1 << DIR_BITS {
            dir_slot_mut(&mut self.dir, i).long = 0;
        }
        for len in DIR_BITS + 1..=32 {
            let bit = 1u16 << (len - DIR_BITS - 1);
            for shard in self.lens[len as usize].shards.iter().flat_map(|s| s.iter()) {
                for &key in shard.keys() {
                    dir_slot_mut(&mut self.dir, (key >> DIR_BITS) as usize).long |= bit;
                }
            }
        }
        self.dir_stale = 0;
    }

    /// The route for exactly `prefix`, if any (no longest-prefix match).
    pub fn get(&self, prefix: Prefix) -> Option<NextHop> {
        self.probe(prefix.len().into(), u32::from(prefix.addr()))
    }

    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All routes, sorted by prefix (address, then length).
    pub fn routes(&self) -> Vec<(Prefix, NextHop)> {
        let mut out = Vec::with_capacity(self.count);
        for (len, t) in self.lens.iter().enumerate() {
            for shard in t.shards.iter().flat_map(|s| s.iter()) {
                out.extend(shard.iter().map(|(&key, &nh)| {
                    let prefix = Prefix::truncating(key.into(), len as u8);
                    (prefix, nh)
                }));
            }
        }
        out.sort_unstable_by_key(|&(p, _)| p);
        out
    }

    /// Routes per prefix length (index = length), for diagnostics.
    pub fn len_histogram(&self) -> [usize; 33] {
        let mut h = [0; 33];
        for (slot, t) in h.iter_mut().zip(&self.lens) {
            *slot = t.count;
        }
        h
    }

    /// Bytes of the DIR-24-8 index copy this snapshot uses (0 without
    /// one); the writer keeps a second copy of the same size.
    pub fn index_bytes(&self) -> usize {
        self.index.as_ref().map_or(0, |ix| ix.memory_bytes())
    }

    /// An estimate of the heap bytes this snapshot references (its index
    /// copy included), counting
    /// shards shared with other snapshots in full (SwissTable layout:
    /// buckets of (key, next hop) plus one control byte each).
    pub fn memory_bytes(&self) -> usize {
        const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();
        let mut bytes = std::mem::size_of::<Self>() + self.index_bytes();
        bytes += ARC_HEADER + self.dir.len() * std::mem::size_of::<Arc<DirChunk>>();
        bytes += self.dir.len() * (ARC_HEADER + std::mem::size_of::<DirChunk>());
        // Next-hop groups: their slots, members and index entries (each
        // member list is shared by its slot and its index key).
        let g = &*self.groups;
        bytes += ARC_HEADER + g.slots.capacity() * std::mem::size_of::<Option<Group>>();
        for grp in g.slots.iter().flatten() {
            bytes += ARC_HEADER + grp.members.len() * std::mem::size_of::<Ipv4Addr>();
        }
        bytes += g.by_members.capacity() * (std::mem::size_of::<(Arc<[Ipv4Addr]>, u32)>() + 1)
            + g.free.capacity() * std::mem::size_of::<u32>();
        for shards in self.lens.iter().filter_map(|t| t.shards.as_ref()) {
            bytes += ARC_HEADER + shards.len() * std::mem::size_of::<Arc<Shard>>();
            for shard in shards.iter() {
                bytes += ARC_HEADER + std::mem::size_of::<Shard>();
                let cap = shard.capacity();
                if cap > 0 {
                    let buckets = match cap {
                        0..=3 => 4,
                        4..=7 => 8,
                        _ => (cap * 8 / 7).next_power_of_two(),
                    };
                    bytes += buckets * (std::mem::size_of::<(u32, NextHop)>() + 1) + 16;
                }
            }
        }
        bytes
    }

    /// Applies `changes` in order (a later change to the same prefix wins)
    /// to this private, unpublished table, pushing each prefix whose route
    /// changed onto `changed`, with its route after that change (the
    /// DIR-24-8 index is brought up to date by [`Fib::update`]
    /// afterwards). Returns whether anything changed.
    fn apply(
        &mut self,
        changes: &[FibChange],
        changed_prefixes: &mut Vec<(Prefix, Option<NextHop>)>,
    ) -> bool {
        let mut touched = 0u64;
        for change in changes {
            let (prefix, changed, route) = match change {
                FibChange::Insert(p, NextHop::Nodes(g)) if self.group(*g).is_empty() => {
                    (*p, self.remove(*p), None)
                }
                FibChange::Insert(p, nh) => (*p, self.insert(*p, *nh), Some(*nh)),
                FibChange::InsertMultipath(p, vias) => {
                    let changed = self.insert_multipath(*p, vias);
                    (*p, changed, self.get(*p))
                }
                FibChange::Remove(p) => (*p, self.remove(*p), None),
            };
            if changed {
                touched |= 1 << prefix.len();
                self.reindex(prefix, route);
                changed_prefixes.push((prefix, route));
            }
        }
        let long_routes: usize = self.lens[DIR_BITS as usize + 1..]
            .iter()
            .map(|t| t.count)
            .sum();
        if self.dir_stale > DIR_STALE_MIN + long_routes / 4 {
            self.rebuild_long_masks();
        }
        if self.groups.slots.iter().flatten().any(|g| g.routes == 0) {
            Arc::make_mut(&mut self.groups).collect();
        }
        let mut rest = touched;
        while rest != 0 {
            let len = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            self.rebalance(len);
        }
        if touched != 0 {
            self.nodes.rebalance(self.hash);
        }
        self.present = 0;
        self.count = 0;
        for (len, t) in self.lens.iter().enumerate() {
            if t.count > 0 {
                self.present |= 1 << len;
                self.count += t.count;
            }
        }
        touched != 0
    }

    fn insert(&mut self, prefix: Prefix, nh: NextHop) -> bool {
        let key = u32::from(prefix.addr());
        let hash = self.hash;
        let h = hash.hash(key);
        let t = &mut self.lens[usize::from(prefix.len())];
        if let Some(shards) = &t.shards {
            if shards[t.shard_of(h)].get(&key) == Some(&nh) {
                return false;
            }
        }
        let i = t.shard_of(h);
        let shards = t
            .shards
            .get_or_insert_with(|| Arc::from([Arc::new(HashMap::with_hasher(hash))]));
        let old = shard_mut(shards, i).insert(key, nh);
        if old.is_none() {
            t.count += 1;
        }
        self.track_nodes(old, Some(nh));
        true
    }

    /// `prefix` via every node of `vias` (in any order, duplicates
    /// allowed): a group route for two or more distinct nodes, a plain
    /// `Node` route for one, a removal for none.
    fn insert_multipath(&mut self, prefix: Prefix, vias: &[Ipv4Addr]) -> bool {
        let mut members = vias.to_vec();
        members.sort_unstable();
        members.dedup();
        match members[..] {
            [] => return self.remove(prefix),
            [one] => return self.insert(prefix, NextHop::Node(one)),
            _ => {}
        }
        if let Some(NextHop::Nodes(g)) = self.get(prefix) {
            if self.group(g) == &members[..] {
                return false;
            }
        }
        let g = Arc::make_mut(&mut self.groups).intern(&members);
        self.insert(prefix, NextHop::Nodes(g))
    }

    fn remove(&mut self, prefix: Prefix) -> bool {
        let key = u32::from(prefix.addr());
        let h = self.hash.hash(key);
        let t = &mut self.lens[usize::from(prefix.len())];
        let i = t.shard_of(h);
        let Some(shards) = &mut t.shards else {
            return false;
        };
        if !shards[i].contains_key(&key) {
            return false;
        }
        let old = shard_mut(shards, i).remove(&key);
        t.count -= 1;
        self.track_nodes(old, None);
        true
    }

    /// Drops an emptied length; re-shards one that outgrew its shards or
    /// shrank well below them.
    fn rebalance(&mut self, len: usize) {
        self.lens[len].rebalance(self.hash);
    }
}

impl fmt::Debug for FibTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens: Vec<(usize, usize)> = (0..=32)
            .filter(|&l| self.lens[l].count > 0)
            .map(|l| (l, self.lens[l].count))
            .collect();
        f.debug_struct("FibTable")
            .field("routes", &self.count)
            .field("per_len", &lens)
            .finish()
    }
}

/// The published FIB: one writer (control thread) swaps snapshots in;
/// any number of readers load them without blocking.
pub struct Fib {
    current: ArcSwap<FibTable>,
    /// Serialises writers; readers never touch it.
    writer: Mutex<Writer>,
    /// Routes from which lookups use the DIR-24-8 index.
    index_min_routes: usize,
}

/// The writer's private state: replaced snapshots that readers may still
/// hold (the writer drops each once it holds the last reference, so
/// readers never free), and the DIR-24-8 index's second copy.
#[derive(Default)]
struct Writer {
    retired: Vec<Arc<FibTable>>,
    /// The copy of the index the published snapshot does *not* use (the
    /// one the previous snapshot used), once no snapshot holds it any more
    /// it is brought up to date and published by the next batch: two
    /// copies take turns, so a batch writes only the cells its routes
    /// cover, never a copy of the whole index.
    spare: Option<Arc<Dir24>>,
    /// The index changes `spare` lacks: the last batch's, in the order
    /// they were applied to the copy published then.
    spare_behind: Vec<IndexOp>,
}

impl Writer {
    fn reclaim(&mut self) {
        self.retired.retain(|t| Arc::strong_count(t) > 1);
    }

    /// The spare index copy, once no snapshot but the writer's holds it:
    /// readers hold a snapshot for one batch, so this usually waits
    /// microseconds, or a scheduler tick when a reader was preempted
    /// holding one; after [`SPARE_WAIT`] (a snapshot held for longer, by
    /// the control plane say) it gives up and `None` tells the caller to
    /// copy the current index instead (~150 MB at 1M routes, tens of ms:
    /// far dearer than waiting for a preempted reader).
    fn take_spare(&mut self) -> Option<Dir24> {
        let mut spare = self.spare.take()?;
        let start = std::time::Instant::now();
        for tries in 0u32.. {
            self.reclaim();
            if Arc::get_mut(&mut spare).is_some() {
                return Arc::into_inner(spare);
            }
            if start.elapsed() > SPARE_WAIT {
                // Dropping our reference is safe: the retired snapshot
                // still holding it is freed by the writer later.
                return None;
            }
            // A reader finishes a batch in microseconds: give up the CPU
            // (to it, on a busy machine) before sleeping, whose shortest
            // wait is the timer slack, 50 us.
            if tries < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
        None
    }
}

/// How long [`Fib::update`] waits for readers to let go of the spare
/// index copy before copying the current one instead.
const SPARE_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

impl Default for Fib {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Fib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fib").field(&**self.current.load()).finish()
    }
}

impl Fib {
    /// An empty FIB (every lookup misses).
    pub fn new() -> Fib {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x0f1b_u32);
        Fib {
            current: ArcSwap::from_pointee(FibTable::empty(KeyHash { seed })),
            writer: Mutex::new(Writer::default()),
            index_min_routes: Self::INDEX_MIN_ROUTES,
        }
    }

    /// Routes from which a table gets the DIR-24-8 lookup index (and
    /// loses it again below half of this): its first level costs up to
    /// 64 MiB per copy, two copies, which a node with a few thousand routes
    /// should not pay; below this the per-length hash tables with their
    /// /16 index look up in tens of nanoseconds anyway.
    pub const INDEX_MIN_ROUTES: usize = 16_384;

    /// An empty FIB that builds the DIR-24-8 index from `min_routes`
    /// routes instead of [`Fib::INDEX_MIN_ROUTES`] (0: always), for tests
    /// and benchmarks that compare the two lookup paths.
    pub fn with_index_min_routes(min_routes: usize) -> Fib {
        Fib {
            index_min_routes: min_routes,
            ..Fib::new()
        }
    }
    /// The current snapshot (cheap; call once per batch).
    pub fn load(&self) -> arc_swap::Guard<Arc<FibTable>> {
        self.current.load()
    }
    /// The current snapshot as an owned `Arc`, for holders that keep it
    /// longer than a batch (costs an atomic increment; prefer [`Fib::load`]
    /// on the fast path).
    pub fn snapshot(&self) -> Arc<FibTable> {
        self.current.load_full()
    }
    /// Applies a batch of changes and publishes the result atomically.
    ///
    /// Changes apply in order, so a later change to the same prefix wins.
    /// Removing an absent prefix is a no-op; a batch of no-ops publishes
    /// nothing. Concurrent callers are serialised.
    pub fn update(&self, changes: &[FibChange]) {
        // A panic while building `next` leaves the published table and the
        // retired list intact, so a poisoned lock is safe to reuse.
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer.reclaim();
        let mut next = FibTable::clone(&self.current.load());
        let mut changed = Vec::new();
        if !next.apply(changes, &mut changed) {
            return;
        }
        self.update_index(&mut writer, &mut next, changed);
        let old = self.current.swap(Arc::new(next));
        // arc-swap has turned readers' borrowed loads of `old` into counted
        // references, so a count of 1 means nobody else holds it.
        if Arc::strong_count(&old) > 1 {
            writer.retired.push(old);
        }
    }

    /// Gives `next` (whose routes `changed` just changed) an up-to-date
    /// DIR-24-8 index if it is large enough, without touching the copy
    /// the published snapshot uses: the spare copy catches up with the
    /// previous batch's and this batch's prefixes (or, if a reader still
    /// holds it, the current copy is duplicated), and the current copy
    /// becomes the spare.
    fn update_index(
        &self,
        writer: &mut Writer,
        next: &mut FibTable,
        mut changed: Vec<(Prefix, Option<NextHop>)>,
    ) {
        let min = self.index_min_routes;
        let keep = match &next.index {
            Some(ix) => next.count >= min / 2 && ix.hop_count() <= 2 * next.count + 1024,
            None => false,
        };
        let Some(current) = next.index.take().filter(|_| keep) else {
            writer.spare = None;
            writer.spare_behind.clear();
            if next.count >= min && next.count > 0 {
                let mut routes: Vec<(u32, u8, NextHop)> = next
                    .routes()
                    .into_iter()
                    .map(|(p, nh)| (u32::from(p.addr()), p.len(), nh))
                    .collect();
                next.index = Some(Arc::new(Dir24::build(&mut routes, next.hash)));
            }
            return;
        };
        // The last change to each prefix (the stable sort keeps reversed
        // order among equal prefixes; dedup keeps the first).
        changed.reverse();
        changed.sort_by_key(|&(p, _)| p);
        changed.dedup_by_key(|&mut (p, _)| p);
        // Each change is worked out once, from this batch's routes, and
        // replayed on each copy in batch order (the spare gets the last
        // batch's first): a copy that applied the same changes in the same
        // order holds the same cells.
        let ops: Vec<IndexOp> = changed
            .iter()
            .map(|&(p, route)| next.index_op(p, route))
            .collect();
        let mut ix = match writer.take_spare() {
            Some(mut ix) => {
                for op in writer.spare_behind.drain(..) {
                    ix.apply(op);
                }
                ix
            }
            None => Dir24::clone(&current),
        };
        for &op in &ops {
            ix.apply(op);
        }
        next.index = Some(Arc::new(ix));
        writer.spare = Some(current);
        writer.spare_behind = ops;
    }
    /// Frees replaced snapshots no reader holds any more (also done by
    /// every [`Fib::update`]); for a control thread that updates rarely.
    pub fn reclaim(&self) {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reclaim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn ins(s: &str, nh: NextHop) -> FibChange {
        FibChange::Insert(p(s), nh)
    }
    fn rm(s: &str) -> FibChange {
        FibChange::Remove(p(s))
    }
    /// A random prefix of length `len` whose address lies in `base/base_len`.
    fn rand_prefix(rng: &mut SmallRng, base: u32, base_len: u32, len: u32) -> Prefix {
        let a = (base & netmask(base_len)) | (rng.gen::<u32>() & !netmask(base_len));
        Prefix::new((a & netmask(len)).into(), len as u8).unwrap()
    }
    fn rand_nh(rng: &mut SmallRng) -> NextHop {
        match rng.gen_range(0..4) {
            0 => NextHop::Local(PortId(rng.gen_range(0..4096))),
            1 => NextHop::Host,
            2 => NextHop::Node(Ipv4Addr::from(rng.gen::<u32>())),
            _ => NextHop::Unreachable,
        }
    }
    /// The reference: a linear scan for the longest containing prefix.
    fn naive(routes: &BTreeMap<Prefix, NextHop>, a: Ipv4Addr) -> Option<NextHop> {
        routes
            .iter()
            .filter(|(p, _)| p.contains(a))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, &nh)| nh)
    }
    /// Checks every internal invariant of a table against a model.
    fn check_against_model(t: &FibTable, model: &BTreeMap<Prefix, NextHop>) {
        assert_eq!(t.len(), model.len());
        let routes: Vec<_> = model.iter().map(|(&p, &nh)| (p, nh)).collect();
        assert_eq!(t.routes(), routes);
        for (len, lt) in t.lens.iter().enumerate() {
            assert_eq!(
                t.present >> len & 1 == 1,
                lt.count > 0,
                "present bit /{len}"
            );
            match &lt.shards {
                None => assert_eq!((lt.count, lt.shard_mask), (0, 0)),
                Some(s) => {
                    assert!(lt.count > 0, "empty length /{len} keeps shards");
                    assert!(s.len().is_power_of_two());
                    assert_eq!(s.len() - 1, lt.shard_mask);
                    assert_eq!(s.iter().map(|s| s.len()).sum::<usize>(), lt.count);
                    for (i, shard) in s.iter().enumerate() {
                        for &k in shard.keys() {
                            assert_eq!(lt.shard_of(t.hash.hash(k)), i, "key in wrong shard");
                        }
                    }
                }
            }
        }
        for (&p, &nh) in model {
            assert_eq!(t.get(p), Some(nh), "get {p}");
        }
        let mut nodes: Vec<Ipv4Addr> = model
            .values()
            .filter_map(|nh| match nh {
                NextHop::Node(a) => Some(*a),
                _ => None,
            })
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert_eq!(t.nodes(), nodes, "known nodes");
        check_index(t, model);
    }

    /// The lookup index against the model: every longer-than-/16 route has
    /// its length's bit in its slot, and a slot's short route is the
    /// longest route of length <= 16 covering it (checked on a spread of
    /// slots and on the first and last slot of every such route).
    fn check_index(t: &FibTable, model: &BTreeMap<Prefix, NextHop>) {
        let short: Vec<(Prefix, NextHop)> = model
            .iter()
            .filter(|(p, _)| u32::from(p.len()) <= DIR_BITS)
            .map(|(&p, &nh)| (p, nh))
            .collect();
        for (&p, _) in model.iter().filter(|(p, _)| u32::from(p.len()) > DIR_BITS) {
            let slot = t.dir_slot((u32::from(p.addr()) >> DIR_BITS) as usize);
            let bit = 1u16 << (u32::from(p.len()) - DIR_BITS - 1);
            assert_ne!(slot.long & bit, 0, "index lacks {p}");
        }
        let mut slots: Vec<usize> = (0..1 << DIR_BITS).step_by(97).collect();
        for (p, _) in &short {
            let first = (u32::from(p.addr()) >> DIR_BITS) as usize;
            slots.push(first);
            slots.push(first + (1 << (DIR_BITS - u32::from(p.len()))) - 1);
        }
        for i in slots {
            let a = Ipv4Addr::from((i as u32) << DIR_BITS);
            let want = short
                .iter()
                .filter(|(p, _)| p.contains(a))
                .max_by_key(|(p, _)| p.len());
            let slot = t.dir_slot(i);
            assert_eq!(
                slot.short,
                want.map(|&(_, nh)| nh),
                "short route of slot {a}"
            );
            assert_eq!(slot.short_len, want.map_or(0, |(p, _)| p.len()), "slot {a}");
        }
    }

    #[test]
    fn empty_table_misses() {
        let fib = Fib::new();
        let t = fib.load();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("1.2.3.4")), None);
        assert_eq!(t.routes(), vec![]);
        assert_eq!(t.get(p("0.0.0.0/0")), None);
    }

    #[test]
    fn calico_node_shape() {
        let fib = Fib::new();
        let node_b = NextHop::Node(ip("192.168.0.12"));
        fib.update(&[
            ins("0.0.0.0/0", NextHop::Host),
            ins("10.244.1.0/24", NextHop::Unreachable),
            ins("10.244.1.2/32", NextHop::Local(PortId(3))),
            ins("10.244.1.3/32", NextHop::Local(PortId(4))),
            ins("10.244.2.0/26", node_b),
            ins("192.168.0.0/24", NextHop::Host),
        ]);
        let t = fib.load();
        assert_eq!(t.len(), 6);
        assert_eq!(t.lookup(ip("10.244.1.2")), Some(NextHop::Local(PortId(3))));
        assert_eq!(t.lookup(ip("10.244.1.3")), Some(NextHop::Local(PortId(4))));
        assert_eq!(t.lookup(ip("10.244.1.4")), Some(NextHop::Unreachable));
        assert_eq!(t.lookup(ip("10.244.2.63")), Some(node_b));
        assert_eq!(t.lookup(ip("10.244.2.64")), Some(NextHop::Host));
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(NextHop::Host));
        assert_eq!(t.len_histogram()[32], 2);
        assert!(t.memory_bytes() > 0);
    }

    #[test]
    fn insert_replace_remove() {
        let fib = Fib::new();
        fib.update(&[ins("10.0.0.0/8", NextHop::Host)]);
        assert_eq!(fib.load().get(p("10.0.0.0/8")), Some(NextHop::Host));
        // Replace keeps the count.
        fib.update(&[ins("10.0.0.0/8", NextHop::Unreachable)]);
        let t = fib.load();
        assert_eq!(
            (t.len(), t.lookup(ip("10.1.2.3"))),
            (1, Some(NextHop::Unreachable))
        );
        // A more specific route wins; removing it falls back.
        fib.update(&[ins("10.1.0.0/16", NextHop::Host)]);
        assert_eq!(fib.load().lookup(ip("10.1.2.3")), Some(NextHop::Host));
        assert_eq!(fib.load().get(p("10.1.0.0/24")), None);
        fib.update(&[rm("10.1.0.0/16")]);
        assert_eq!(
            fib.load().lookup(ip("10.1.2.3")),
            Some(NextHop::Unreachable)
        );
        fib.update(&[rm("10.0.0.0/8")]);
        let t = fib.load();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.1.2.3")), None);
        assert_eq!(t.present, 0);
    }

    #[test]
    fn known_nodes_follow_the_routes() {
        let fib = Fib::new();
        let (n1, n2) = (ip("192.168.57.12"), ip("192.168.58.13"));
        fib.update(&[
            ins("10.244.0.64/26", NextHop::Node(n1)),
            ins("10.244.1.0/26", NextHop::Node(n1)),
            ins("10.244.0.128/26", NextHop::Node(n2)),
            ins("0.0.0.0/0", NextHop::Host),
        ]);
        let t = fib.load();
        assert!(t.is_node(n1) && t.is_node(n2));
        assert!(!t.is_node(ip("192.168.57.1")));
        assert_eq!(t.nodes(), vec![n1, n2]);
        // Re-pointing one of n1's two routes keeps n1; removing the other
        // forgets it; re-pointing n2's only route to the host forgets n2.
        fib.update(&[ins("10.244.1.0/26", NextHop::Node(n2))]);
        assert!(fib.load().is_node(n1));
        fib.update(&[rm("10.244.0.64/26")]);
        assert!(!fib.load().is_node(n1));
        assert!(fib.load().is_node(n2));
        fib.update(&[
            ins("10.244.0.128/26", NextHop::Host),
            ins("10.244.1.0/26", NextHop::Unreachable),
        ]);
        assert!(fib.load().nodes().is_empty());
        // The snapshot taken earlier still has both.
        assert_eq!(t.nodes(), vec![n1, n2]);
    }

    #[test]
    fn node_slots_are_stable_and_bounded() {
        let fib = Fib::new();
        let (n1, n2, n3) = (
            ip("192.168.57.12"),
            ip("192.168.58.13"),
            ip("192.168.59.14"),
        );
        fib.update(&[
            ins("10.244.0.64/26", NextHop::Node(n1)),
            mp("10.244.1.0/26", &[n2, n3]),
        ]);
        let t = fib.load();
        let (s1, s2, s3) = (t.node_slot(n1), t.node_slot(n2), t.node_slot(n3));
        assert!(s1.is_some() && s2.is_some() && s3.is_some());
        assert!(s1 != s2 && s2 != s3 && s1 != s3, "one slot per node");
        assert_eq!(t.node_slot(ip("192.168.57.1")), None, "not a node");
        for (n, s) in [(n1, s1), (n2, s2), (n3, s3)] {
            assert_eq!(t.node_slot_addrs()[usize::from(s.unwrap())], n);
        }
        // n1 leaves (no slot while unknown: its frames are refused) and
        // comes back to the same slot; its name stays for the counters.
        fib.update(&[rm("10.244.0.64/26")]);
        assert_eq!(fib.load().node_slot(n1), None);
        assert_eq!(fib.load().node_slot_addrs().len(), 3);
        fib.update(&[ins("10.244.2.0/26", NextHop::Node(n1))]);
        assert_eq!(fib.load().node_slot(n1), s1);
        // Beyond NODE_SLOTS - 1 nodes, the rest share the last slot.
        let many: Vec<FibChange> = (0..NODE_SLOTS as u32 + 5)
            .map(|i| {
                let block = Ipv4Addr::from(0x0a00_0000 + (i << 6));
                let node = Ipv4Addr::from(0xac10_0000 + i);
                FibChange::Insert(Prefix::new(block, 26).unwrap(), NextHop::Node(node))
            })
            .collect();
        fib.update(&many);
        let t = fib.load();
        assert_eq!(t.node_slot_addrs().len(), usize::from(NODE_SLOT_OTHER));
        let last = Ipv4Addr::from(0xac10_0000 + NODE_SLOTS as u32 + 4);
        assert_eq!(t.node_slot(last), Some(NODE_SLOT_OTHER));
        assert_eq!(t.node_slot(n1), s1, "earlier slots unchanged");
    }

    fn mp(s: &str, vias: &[Ipv4Addr]) -> FibChange {
        FibChange::InsertMultipath(p(s), vias.to_vec())
    }

    fn group_of(t: &FibTable, s: &str) -> GroupId {
        match t.get(p(s)) {
            Some(NextHop::Nodes(g)) => g,
            other => panic!("{s} is not a group route: {other:?}"),
        }
    }

    #[test]
    fn multipath_groups_are_interned_and_shared() {
        let fib = Fib::new();
        let (a, b, c) = (ip("192.168.0.1"), ip("192.168.0.2"), ip("192.168.0.3"));
        fib.update(&[
            mp("10.1.0.0/24", &[b, a]),
            mp("10.2.0.0/24", &[a, b, a]),
            mp("10.3.0.0/24", &[c, a]),
            ins("10.4.0.0/24", NextHop::Host),
        ]);
        let t = fib.load();
        let g1 = group_of(&t, "10.1.0.0/24");
        assert_eq!(group_of(&t, "10.2.0.0/24"), g1, "equal sets share a group");
        let g3 = group_of(&t, "10.3.0.0/24");
        assert_ne!(g1, g3);
        assert_eq!(t.group(g1), &[a, b], "sorted, deduplicated");
        assert_eq!(t.group(g3), &[a, c]);
        assert_eq!(t.group_count(), 2);
        assert_eq!(t.lookup(ip("10.1.0.9")), Some(NextHop::Nodes(g1)));
        assert_eq!(t.next_hop_nodes(NextHop::Nodes(g3)), vec![a, c]);
        assert!(t.is_node(a) && t.is_node(b) && t.is_node(c));
        assert!(!t.is_node(ip("192.168.0.4")));
        assert_eq!(t.nodes(), vec![a, b, c]);
        assert!(t.group(GroupId(99)).is_empty());
        // The same set again (in another order) is a no-op: nothing published.
        let before = fib.snapshot();
        fib.update(&[mp("10.1.0.0/24", &[a, b])]);
        assert!(Arc::ptr_eq(&before, &fib.snapshot()));
    }

    #[test]
    fn multipath_refcounts_drop_on_remove_and_replace() {
        let fib = Fib::new();
        let (a, b, c) = (ip("192.168.0.1"), ip("192.168.0.2"), ip("192.168.0.3"));
        fib.update(&[
            mp("10.1.0.0/24", &[a, b]),
            mp("10.2.0.0/24", &[a, b]),
            mp("10.3.0.0/24", &[a, c]),
        ]);
        let held = fib.snapshot();
        let g_ab = group_of(&held, "10.1.0.0/24");
        // One of two users goes: the group stays.
        fib.update(&[rm("10.1.0.0/24")]);
        let t = fib.load();
        assert_eq!(t.group(g_ab), &[a, b]);
        assert_eq!(t.group_count(), 2);
        assert!(t.is_node(b));
        // The last user is re-pointed to a single node: the group and b go.
        fib.update(&[ins("10.2.0.0/24", NextHop::Node(c))]);
        let t = fib.load();
        assert_eq!(t.group_count(), 1);
        assert!(t.group(g_ab).is_empty());
        assert!(!t.is_node(b));
        assert_eq!(t.nodes(), vec![a, c]);
        // A multipath insert with one distinct node is a plain route; with
        // none it removes the route.
        fib.update(&[mp("10.3.0.0/24", &[c, c])]);
        let t = fib.load();
        assert_eq!(t.get(p("10.3.0.0/24")), Some(NextHop::Node(c)));
        assert_eq!(t.group_count(), 0);
        assert_eq!(t.nodes(), vec![c]);
        fib.update(&[mp("10.3.0.0/24", &[]), rm("10.2.0.0/24")]);
        let t = fib.load();
        assert!(t.is_empty());
        assert!(t.nodes().is_empty());
        // A new group may reuse a freed id; the held snapshot keeps its own.
        fib.update(&[mp("10.9.0.0/24", &[ip("192.168.9.1"), ip("192.168.9.2")])]);
        assert_eq!(held.group(g_ab), &[a, b]);
        assert_eq!(held.nodes(), vec![a, b, c]);
        // A group id the table does not have is a removal, not a dangling
        // route.
        let g = group_of(&fib.load(), "10.9.0.0/24");
        fib.update(&[ins("10.8.0.0/24", NextHop::Nodes(GroupId(g.0 + 7)))]);
        assert_eq!(fib.load().get(p("10.8.0.0/24")), None);
        // Changing a group route's set moves its refcounts in one batch.
        fib.update(&[mp("10.9.0.0/24", &[ip("192.168.9.1"), ip("192.168.9.3")])]);
        let t = fib.load();
        assert_eq!(t.group_count(), 1);
        assert!(!t.is_node(ip("192.168.9.2")) && t.is_node(ip("192.168.9.3")));
    }

    /// Readers resolve group routes while the writer keeps changing the
    /// sets (so group ids are freed and reused for other prefixes): every
    /// `Nodes` route a reader sees names a group of its own snapshot with
    /// the members that prefix was given.
    #[test]
    fn readers_always_resolve_groups_of_their_snapshot() {
        const PREFIXES: u8 = 16;
        let pfx = |i: u8| Prefix::new(Ipv4Addr::new(10, 60, i, 0), 24).unwrap();
        // Prefix i's sets: nodes 192.168.i.x, so a member of another
        // prefix's group would show.
        let set = |i: u8, r: u8| {
            vec![
                Ipv4Addr::new(192, 168, i, r),
                Ipv4Addr::new(192, 168, i, r + 100),
            ]
        };
        let fib = Fib::new();
        let done = AtomicBool::new(false);
        let groups_seen = AtomicU64::new(0);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                while !done.load(Ordering::Acquire) {
                    let t = fib.load();
                    for i in 0..PREFIXES {
                        match t.lookup(pfx(i).addr()) {
                            Some(NextHop::Nodes(g)) => {
                                let m = t.group(g);
                                assert_eq!(m.len(), 2, "prefix {i}: group {g:?} is {m:?}");
                                assert!(m.iter().all(|a| a.octets()[2] == i), "prefix {i}: {m:?}");
                                assert!(m.iter().all(|a| t.is_node(*a)));
                                groups_seen.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {}
                            other => panic!("prefix {i}: {other:?}"),
                        }
                    }
                }
            });
            let mut rng = SmallRng::seed_from_u64(7);
            let mut round = 0u32;
            while !reader.is_finished()
                && (round < 300 || groups_seen.load(Ordering::Relaxed) < 1000)
            {
                let mut batch = Vec::new();
                for i in 0..PREFIXES {
                    match rng.gen_range(0..8u8) {
                        0 => batch.push(FibChange::Remove(pfx(i))),
                        r @ 1..=3 => batch.push(FibChange::InsertMultipath(pfx(i), set(i, r))),
                        _ => {}
                    }
                }
                fib.update(&batch);
                round += 1;
            }
            done.store(true, Ordering::Release);
        });
        assert!(groups_seen.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn later_change_in_a_batch_wins() {
        let fib = Fib::new();
        fib.update(&[ins("10.0.0.0/8", NextHop::Host), rm("10.0.0.0/8")]);
        assert!(fib.load().is_empty());
        fib.update(&[
            rm("10.0.0.0/8"),
            ins("10.0.0.0/8", NextHop::Host),
            ins("10.0.0.0/8", NextHop::Unreachable),
        ]);
        assert_eq!(
            fib.load().routes(),
            vec![(p("10.0.0.0/8"), NextHop::Unreachable)]
        );
    }

    #[test]
    fn no_op_batches_publish_nothing() {
        let fib = Fib::new();
        fib.update(&[ins("10.0.0.0/8", NextHop::Host)]);
        let before = fib.snapshot();
        fib.update(&[]);
        fib.update(&[rm("10.0.0.0/16"), rm("11.0.0.0/8")]); // absent prefixes
        fib.update(&[ins("10.0.0.0/8", NextHop::Host)]); // identical route
        assert!(Arc::ptr_eq(&before, &fib.snapshot()));
        assert_eq!(fib.load().routes(), vec![(p("10.0.0.0/8"), NextHop::Host)]);
        // Removing an absent prefix alongside a real change is still a no-op.
        fib.update(&[rm("12.0.0.0/8"), ins("13.0.0.0/8", NextHop::Host)]);
        assert_eq!(fib.load().len(), 2);
    }

    #[test]
    fn routes_are_sorted() {
        let fib = Fib::new();
        let mut rng = SmallRng::seed_from_u64(1);
        let changes: Vec<_> = (0..2000)
            .map(|_| {
                let len = rng.gen_range(0..=32);
                FibChange::Insert(rand_prefix(&mut rng, 0, 0, len), rand_nh(&mut rng))
            })
            .collect();
        fib.update(&changes);
        let routes = fib.load().routes();
        assert!(routes.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(routes.len(), fib.load().len());
        assert_eq!(
            p("10.0.0.0/8").cmp(&p("10.0.0.0/16")),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn lpm_matches_naive_reference() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut model = BTreeMap::new();
        // Nested prefixes in a small region (so most addresses have several
        // matches) plus some anywhere; lengths 0..=32.
        for _ in 0..4000 {
            let len = match rng.gen_range(0..10) {
                0..=3 => 32,
                4..=6 => 26,
                _ => rng.gen_range(0..=32),
            };
            let pf = if rng.gen_bool(0.8) {
                rand_prefix(&mut rng, 0x0af4_0000, 16, len.max(12))
            } else {
                rand_prefix(&mut rng, 0, 0, len)
            };
            model.insert(pf, rand_nh(&mut rng));
        }
        let fib = Fib::new();
        let changes: Vec<_> = model
            .iter()
            .map(|(&p, &nh)| FibChange::Insert(p, nh))
            .collect();
        fib.update(&changes);
        let t = fib.load();
        check_against_model(&t, &model);
        let keys: Vec<Prefix> = model.keys().copied().collect();
        for i in 0..6000 {
            let a = match i % 3 {
                0 => Ipv4Addr::from(rng.gen::<u32>()),
                1 => Ipv4Addr::from(0x0af4_0000 | (rng.gen::<u32>() & 0xffff)),
                _ => {
                    let pf = keys[rng.gen_range(0..keys.len())];
                    let host = rng.gen::<u32>() & !netmask(pf.len().into());
                    Ipv4Addr::from(u32::from(pf.addr()) | host)
                }
            };
            assert_eq!(t.lookup(a), naive(&model, a), "lookup {a}");
        }
    }

    /// Short routes (/0../16, nested, so removals fall back to covering
    /// ones) and long ones churned in random batches; every snapshot's
    /// lookups must equal the linear-scan reference, and enough long
    /// removals happen to force index rebuilds on the way.
    #[test]
    fn lookup_index_matches_reference_under_churn() {
        let mut rng = SmallRng::seed_from_u64(0xd12);
        let fib = Fib::new();
        let mut model: BTreeMap<Prefix, NextHop> = BTreeMap::new();
        let mut rebuilt = false;
        for round in 0..80 {
            let mut batch = Vec::new();
            for _ in 0..rng.gen_range(1..200) {
                let len = match rng.gen_range(0..10) {
                    0..=3 => rng.gen_range(0..=16),
                    4..=6 => 32,
                    _ => rng.gen_range(17..=31),
                };
                // A small region, so prefixes nest and collide.
                let pf = rand_prefix(&mut rng, 0x0a00_0000, 10, len.max(4));
                let pf = if len < 4 {
                    Prefix::new(
                        Ipv4Addr::from(u32::from(pf.addr()) & netmask(len)),
                        len as u8,
                    )
                    .unwrap()
                } else {
                    pf
                };
                if rng.gen_bool(if round < 40 { 0.3 } else { 0.7 }) {
                    // Remove an existing route (or this one, likely absent).
                    let victim = model
                        .keys()
                        .nth(rng.gen_range(0..model.len().max(1)))
                        .copied()
                        .unwrap_or(pf);
                    batch.push(FibChange::Remove(victim));
                    model.remove(&victim);
                } else {
                    let nh = rand_nh(&mut rng);
                    batch.push(FibChange::Insert(pf, nh));
                    model.insert(pf, nh);
                }
            }
            let stale_before = fib.load().dir_stale;
            fib.update(&batch);
            let t = fib.load();
            rebuilt |= t.dir_stale < stale_before;
            check_against_model(&t, &model);
            for _ in 0..500 {
                let a = if rng.gen_bool(0.8) {
                    Ipv4Addr::from(0x0a00_0000 | (rng.gen::<u32>() & 0x003f_ffff))
                } else {
                    Ipv4Addr::from(rng.gen::<u32>())
                };
                assert_eq!(t.lookup(a), naive(&model, a), "lookup {a} round {round}");
            }
        }
        assert!(rebuilt, "the index's long masks were never rebuilt");
    }

    /// Every lookup path of `t` (the one `lookup` takes, the hash tables
    /// with the /16 index, the batch API) against the reference.
    fn check_lookups(t: &FibTable, model: &BTreeMap<Prefix, NextHop>, addrs: &[Ipv4Addr]) {
        let mut batch = vec![None; addrs.len()];
        t.prefetch(addrs.iter().copied()); // a hint: must change nothing
        t.lookup_batch(addrs, &mut batch);
        for (&a, &b) in addrs.iter().zip(&batch) {
            let want = naive(model, a);
            assert_eq!(t.lookup(a), want, "lookup {a}");
            assert_eq!(t.lookup_hashed(a), want, "hashed lookup {a}");
            assert_eq!(b, want, "batch lookup {a}");
        }
    }

    /// Addresses around the model's routes: inside each, at both ends of
    /// each, just outside each, and random ones in `base/base_len`.
    fn probe_addrs(
        rng: &mut SmallRng,
        model: &BTreeMap<Prefix, NextHop>,
        base: u32,
        base_len: u32,
    ) -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        for p in model.keys().take(400) {
            let lo = u32::from(p.addr());
            let hi = lo | !netmask(p.len().into());
            let inside = lo | (rng.gen::<u32>() & !netmask(p.len().into()));
            out.extend(
                [lo, hi, inside, lo.wrapping_sub(1), hi.wrapping_add(1)].map(Ipv4Addr::from),
            );
        }
        for _ in 0..400 {
            out.push(Ipv4Addr::from(
                (base & netmask(base_len)) | (rng.gen::<u32>() & !netmask(base_len)),
            ));
        }
        out
    }

    /// Nested routes of every length in a small region, churned in random
    /// batches on a FIB that always uses the DIR-24-8 index: after each
    /// batch every lookup path equals the reference, snapshots held across
    /// batches keep answering as they did (so the writer had to copy the
    /// index instead of reusing the spare), and a /24 full of /32s goes
    /// through small and full chunks and back.
    #[test]
    fn dir24_index_matches_reference_under_churn() {
        let mut rng = SmallRng::seed_from_u64(0xd124);
        let fib = Fib::with_index_min_routes(0);
        let mut model: BTreeMap<Prefix, NextHop> = BTreeMap::new();
        let mut held: Vec<(Arc<FibTable>, BTreeMap<Prefix, NextHop>)> = Vec::new();
        for round in 0..60 {
            let mut batch = Vec::new();
            for _ in 0..rng.gen_range(1..150) {
                let len = match rng.gen_range(0..10) {
                    0..=2 => rng.gen_range(0..=24),
                    3..=5 => 32,
                    _ => rng.gen_range(25..=31),
                };
                // A /22, so most addresses have several matches; every
                // fourth round also a /24 dense with /32s.
                let pf = if round % 4 == 0 && rng.gen_bool(0.5) {
                    rand_prefix(&mut rng, 0x0a01_0200, 24, 32)
                } else {
                    rand_prefix(&mut rng, 0x0a01_0000, 22, len.max(22))
                };
                let pf = if len < 22 {
                    Prefix::new(
                        Ipv4Addr::from(u32::from(pf.addr()) & netmask(len)),
                        len as u8,
                    )
                    .unwrap()
                } else {
                    pf
                };
                if rng.gen_bool(if round < 30 { 0.3 } else { 0.6 }) && !model.is_empty() {
                    let victim = *model.keys().nth(rng.gen_range(0..model.len())).unwrap();
                    batch.push(FibChange::Remove(victim));
                    model.remove(&victim);
                } else {
                    let nh = rand_nh(&mut rng);
                    batch.push(FibChange::Insert(pf, nh));
                    model.insert(pf, nh);
                }
            }
            fib.update(&batch);
            let t = fib.load();
            assert!(t.has_index());
            check_against_model(&t, &model);
            let addrs = probe_addrs(&mut rng, &model, 0x0a01_0000, 20);
            check_lookups(&t, &model, &addrs);
            if round % 7 == 0 {
                held.push((fib.snapshot(), model.clone()));
            }
        }
        for (t, m) in &held {
            let addrs = probe_addrs(&mut rng, m, 0x0a01_0000, 20);
            check_lookups(t, m, &addrs);
        }
        // Everything removed: no route anywhere.
        let all: Vec<_> = model.keys().map(|&p| FibChange::Remove(p)).collect();
        fib.update(&all);
        let t = fib.load();
        for _ in 0..1000 {
            let a = Ipv4Addr::from(0x0a01_0000 | (rng.gen::<u32>() & 0x3ff));
            assert_eq!(t.lookup(a), None, "{a}");
        }
    }

    /// Property: whatever the table and however it got there, the
    /// DIR-24-8 index answers what the per-length hash tables answer.
    /// Per seed, random batches interleave inserts, replacements and
    /// removals of routes of every length, in a /20 (so /24s go from
    /// plain to small chunks, past 10 runs to full chunks, and back) and
    /// over the whole address space, on a FIB that always has the index
    /// and one that never does; after every batch (each published by the
    /// other index copy than the last) single and batched lookups agree
    /// at both ends of, just outside and inside every prefix the batch
    /// touched, and at random addresses.
    #[test]
    fn dir24_index_matches_hash_path_under_random_updates() {
        for seed in 0..12 {
            let mut rng = SmallRng::seed_from_u64(0xd24_0000 + seed);
            let indexed = Fib::with_index_min_routes(0);
            let hashed = Fib::with_index_min_routes(usize::MAX);
            let mut live: Vec<Prefix> = Vec::new();
            for round in 0..30 {
                let mut batch = Vec::new();
                let removing = if round % 10 < 7 { 0.3 } else { 0.7 };
                for _ in 0..rng.gen_range(1..300) {
                    if !live.is_empty() && rng.gen_bool(removing) {
                        let pf = live.swap_remove(rng.gen_range(0..live.len()));
                        batch.push(FibChange::Remove(pf));
                        continue;
                    }
                    // Not shorter than /12 (a /0 rewrites 16M entries per
                    // copy, slow in a debug build), but the default route
                    // comes and goes in seed 0.
                    let len = match rng.gen_range(0..10) {
                        0..=4 => 32,
                        5..=7 => rng.gen_range(25..32),
                        _ => rng.gen_range(12..=24),
                    };
                    let pf = if rng.gen_bool(0.8) {
                        let pf = rand_prefix(&mut rng, 0x0a01_0000, 20, len.max(20));
                        Prefix::truncating(pf.addr(), len as u8)
                    } else {
                        rand_prefix(&mut rng, 0, 0, len)
                    };
                    batch.push(FibChange::Insert(pf, rand_nh(&mut rng)));
                    live.push(pf);
                }
                if seed == 0 && round % 15 == 0 {
                    let default = p("0.0.0.0/0");
                    batch.push(if round == 15 {
                        FibChange::Remove(default)
                    } else {
                        FibChange::Insert(default, NextHop::Host)
                    });
                }
                indexed.update(&batch);
                hashed.update(&batch);
                let (ti, th) = (indexed.load(), hashed.load());
                assert!(ti.has_index() || ti.is_empty());
                assert!(!th.has_index());
                assert_eq!(ti.routes(), th.routes());
                let mut addrs = Vec::new();
                for change in &batch {
                    let (FibChange::Insert(p, _) | FibChange::Remove(p)) = change else {
                        unreachable!("not generated here")
                    };
                    let lo = u32::from(p.addr());
                    let hi = lo | !netmask(p.len().into());
                    let inside = lo | (rng.gen::<u32>() & !netmask(p.len().into()));
                    addrs.extend(
                        [lo, hi, inside, lo.wrapping_sub(1), hi.wrapping_add(1)]
                            .map(Ipv4Addr::from),
                    );
                }
                for _ in 0..500 {
                    addrs.push(Ipv4Addr::from(0x0a01_0000 | (rng.gen::<u32>() & 0xfff)));
                    addrs.push(Ipv4Addr::from(rng.gen::<u32>()));
                }
                let mut out = vec![None; addrs.len()];
                ti.lookup_batch(&addrs, &mut out);
                for (&a, &batched) in addrs.iter().zip(&out) {
                    let want = th.lookup(a);
                    assert_eq!(ti.lookup(a), want, "seed {seed} round {round}: {a}");
                    assert_eq!(batched, want, "seed {seed} round {round}: batch {a}");
                }
                live.sort_unstable();
                live.dedup();
                live.retain(|&p| ti.get(p).is_some());
            }
        }
    }

    /// The index appears at the threshold, goes below half of it, and
    /// lookups agree with the reference on both sides of each switch;
    /// a small table never pays for it.
    #[test]
    fn dir24_index_follows_the_table_size() {
        let mut rng = SmallRng::seed_from_u64(0x51e);
        let fib = Fib::with_index_min_routes(1000);
        let mut model = BTreeMap::new();
        let mut batch = vec![ins("0.0.0.0/0", NextHop::Host)];
        model.insert(p("0.0.0.0/0"), NextHop::Host);
        for _ in 0..999 {
            let len = [32, 26, 24, 16][rng.gen_range(0..4)];
            let pf = rand_prefix(&mut rng, 0x0a00_0000, 8, len);
            let nh = rand_nh(&mut rng);
            model.insert(pf, nh);
            batch.push(FibChange::Insert(pf, nh));
        }
        fib.update(&batch);
        let t = fib.load();
        assert_eq!(t.has_index(), t.len() >= 1000);
        assert!(!t.has_index() || t.index_bytes() >= 64 << 20);
        let addrs = probe_addrs(&mut rng, &model, 0x0a00_0000, 8);
        check_lookups(&t, &model, &addrs);
        while !fib.load().has_index() {
            let pf = rand_prefix(&mut rng, 0x0b00_0000, 8, 32);
            model.insert(pf, NextHop::Host);
            fib.update(&[FibChange::Insert(pf, NextHop::Host)]);
        }
        check_lookups(&fib.load(), &model, &addrs);
        // Down to 600 routes (above half): the index stays.
        let rm: Vec<_> = model
            .keys()
            .skip(600)
            .map(|&p| FibChange::Remove(p))
            .collect();
        fib.update(&rm);
        model = model.into_iter().take(600).collect();
        assert!(fib.load().has_index());
        check_lookups(&fib.load(), &model, &addrs);
        // Down to 400: it goes.
        let rm: Vec<_> = model
            .keys()
            .skip(400)
            .map(|&p| FibChange::Remove(p))
            .collect();
        fib.update(&rm);
        model = model.into_iter().take(400).collect();
        assert!(!fib.load().has_index());
        assert_eq!(fib.load().index_bytes(), 0);
        check_lookups(&fib.load(), &model, &addrs);
    }

    #[test]
    fn random_batches_match_model_through_resharding() {
        let mut rng = SmallRng::seed_from_u64(42);
        let fib = Fib::new();
        let mut model: BTreeMap<Prefix, NextHop> = BTreeMap::new();
        let mut live: Vec<Prefix> = Vec::new();
        let mut max_shards = 0;
        // Grow to ~6000 routes (the /32 length re-shards several times),
        // then shrink back to nearly nothing (it re-shards down).
        for round in 0..60 {
            let growing = round < 30;
            let mut batch = Vec::new();
            for _ in 0..rng.gen_range(1..400) {
                let remove = if growing {
                    rng.gen_bool(0.2)
                } else {
                    rng.gen_bool(0.9)
                };
                if remove && !live.is_empty() {
                    let pf = live.swap_remove(rng.gen_range(0..live.len()));
                    batch.push(FibChange::Remove(pf));
                    if rng.gen_bool(0.1) {
                        batch.push(FibChange::Remove(pf)); // twice: second is a no-op
                    }
                } else {
                    let len = [32, 32, 32, 32, 32, 26, 24, 16, 0][rng.gen_range(0..9)];
                    let pf = rand_prefix(&mut rng, 0x0a00_0000, 8, len);
                    batch.push(FibChange::Insert(pf, rand_nh(&mut rng)));
                    live.push(pf);
                }
            }
            for c in &batch {
                match *c {
                    FibChange::Insert(pf, nh) => {
                        model.insert(pf, nh);
                    }
                    FibChange::Remove(pf) => {
                        model.remove(&pf);
                    }
                    FibChange::InsertMultipath(..) => unreachable!("not generated here"),
                }
            }
            live.sort();
            live.dedup();
            live.retain(|pf| model.contains_key(pf));
            let old = fib.snapshot();
            let old_routes = old.routes();
            fib.update(&batch);
            let t = fib.load();
            check_against_model(&t, &model);
            assert_eq!(old.routes(), old_routes, "a published snapshot changed");
            max_shards = max_shards.max(t.lens[32].shard_mask + 1);
            for _ in 0..300 {
                let a = Ipv4Addr::from(0x0a00_0000 | (rng.gen::<u32>() & 0x00ff_ffff));
                assert_eq!(t.lookup(a), naive(&model, a), "lookup {a}");
            }
        }
        assert!(max_shards >= 4, "never re-sharded up: {max_shards}");
        // Keep 10 routes: the /32 length must come back down to 1-2 shards.
        let batch: Vec<_> = model
            .keys()
            .skip(10)
            .map(|&pf| FibChange::Remove(pf))
            .collect();
        fib.update(&batch);
        let keep: BTreeMap<_, _> = model.into_iter().take(10).collect();
        check_against_model(&fib.load(), &keep);
        assert!(fib.load().lens[32].shard_mask < 2, "never re-sharded down");
    }

    #[test]
    fn untouched_shards_are_shared() {
        let fib = Fib::new();
        let changes: Vec<_> = (0..10_000u32)
            .map(|i| {
                FibChange::Insert(Prefix::host(Ipv4Addr::from(0x0a00_0000 + i)), NextHop::Host)
            })
            .collect();
        fib.update(&changes);
        let old = fib.snapshot();
        fib.update(&[ins("10.0.0.5/32", NextHop::Unreachable)]);
        let new = fib.snapshot();
        let (a, b) = (
            old.lens[32].shards.as_ref().unwrap(),
            new.lens[32].shards.as_ref().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let shared = a
            .iter()
            .zip(b.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, a.len() - 1, "exactly the touched shard is copied");
        assert_eq!(old.get(p("10.0.0.5/32")), Some(NextHop::Host));
        assert_eq!(new.get(p("10.0.0.5/32")), Some(NextHop::Unreachable));
    }

    #[test]
    fn held_snapshot_is_isolated_and_freed_by_the_writer() {
        let fib = Fib::new();
        fib.update(&[ins("10.0.0.0/8", NextHop::Host)]);
        let held = fib.load();
        fib.update(&[ins("10.1.0.0/16", NextHop::Unreachable), rm("10.0.0.0/8")]);
        assert_eq!(held.lookup(ip("10.1.2.3")), Some(NextHop::Host));
        assert_eq!(
            fib.load().lookup(ip("10.1.2.3")),
            Some(NextHop::Unreachable)
        );
        let weak = Arc::downgrade(&*held);
        assert_eq!(
            fib.writer.lock().unwrap().retired.len(),
            1,
            "old snapshot retired"
        );
        drop(held);
        assert!(
            weak.upgrade().is_some(),
            "the reader's drop must not free it"
        );
        fib.reclaim();
        assert!(weak.upgrade().is_none(), "the writer frees it");
    }

    /// Readers look up both prefixes of every pair in one snapshot while the
    /// writer inserts or removes pairs together (with unrelated churn that
    /// makes the /32 length re-shard up and down). A reader seeing exactly
    /// one prefix of a pair would mean a torn batch.
    #[test]
    fn readers_never_see_a_torn_batch() {
        torn_batch_check(Fib::new());
    }

    /// The same with every table on the DIR-24-8 index: the two copies
    /// take turns under readers.
    #[test]
    fn readers_never_see_a_torn_batch_with_the_index() {
        let fib = Fib::with_index_min_routes(0);
        torn_batch_check(fib);
    }

    fn torn_batch_check(fib: Fib) {
        const PAIRS: u8 = 32;
        const READERS: usize = 2;
        let a_pfx = |i: u8| Prefix::new(Ipv4Addr::new(10, 100, i, 0), 24).unwrap();
        let a_dst = |i: u8| Ipv4Addr::new(10, 100, i, 77);
        let a_nh = |i: u8| NextHop::Node(Ipv4Addr::new(192, 168, 0, i));
        let b_pfx = |i: u8| Prefix::host(Ipv4Addr::new(10, 200, i, 7));
        let b_nh = |i: u8| NextHop::Local(PortId(i.into()));

        fib.update(&[
            ins("0.0.0.0/0", NextHop::Host),
            ins("10.0.0.0/8", NextHop::Unreachable),
        ]);
        let done = AtomicBool::new(false);
        let checks = AtomicU64::new(0);
        let seen = [AtomicU64::new(0), AtomicU64::new(0)];
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..READERS)
                .map(|_| {
                    s.spawn(|| {
                        while !done.load(Ordering::Acquire) {
                            let t = fib.load();
                            let mut on = 0;
                            for i in 0..PAIRS {
                                let a = t.lookup(a_dst(i)) == Some(a_nh(i));
                                let b = t.lookup(b_pfx(i).addr()) == Some(b_nh(i));
                                assert_eq!(a, b, "torn batch: pair {i} a={a} b={b}");
                                on += u64::from(a);
                            }
                            seen[0].fetch_add(u64::from(PAIRS) - on, Ordering::Relaxed);
                            seen[1].fetch_add(on, Ordering::Relaxed);
                            checks.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let mut rng = SmallRng::seed_from_u64(9);
            let mut present = [false; PAIRS as usize];
            let mut noise: Vec<Prefix> = Vec::new();
            let mut round = 0u32;
            // Run until the readers have checked enough snapshots, unless
            // one has died (its panic is re-raised when the scope ends).
            let alive = || readers.iter().all(|r| !r.is_finished());
            while alive() && (round < 400 || checks.load(Ordering::Relaxed) < 2000) {
                let mut batch = Vec::new();
                let mut tail = Vec::new();
                for i in 0..PAIRS {
                    if rng.gen_range(0..3) != 0 {
                        continue;
                    }
                    let on = &mut present[usize::from(i)];
                    // First half of the pair at the start of the batch, the
                    // second at the end, with churn in between.
                    if *on {
                        batch.push(FibChange::Remove(a_pfx(i)));
                        tail.push(FibChange::Remove(b_pfx(i)));
                    } else {
                        batch.push(FibChange::Insert(a_pfx(i), a_nh(i)));
                        tail.push(FibChange::Insert(b_pfx(i), b_nh(i)));
                    }
                    *on = !*on;
                }
                // Sawtooth churn: 0 -> ~6000 /32s and back every 40 rounds.
                for _ in 0..300 {
                    if round % 40 < 20 {
                        let pf = rand_prefix(&mut rng, 0x0b00_0000, 8, 32);
                        batch.push(FibChange::Insert(pf, NextHop::Host));
                        noise.push(pf);
                    } else if let Some(pf) = noise.pop() {
                        batch.push(FibChange::Remove(pf));
                    }
                }
                batch.extend(tail);
                fib.update(&batch);
                round += 1;
            }
            done.store(true, Ordering::Release);
        });
        let (off, on) = (
            seen[0].load(Ordering::Relaxed),
            seen[1].load(Ordering::Relaxed),
        );
        assert!(
            off > 0 && on > 0,
            "readers saw only one state: off={off} on={on}"
        );
    }
}
