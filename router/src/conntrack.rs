//! The connection tracker: one bounded, lock-free table of flows shared by
//! every worker and the control thread. It remembers the flows the
//! node's kernel NATed (kube-proxy's Services, NodePorts, masquerade: see
//! the pipeline's host-NAT stage) so their replies can be sent back
//! through the node, and the connections network policy allowed
//! ([`POLICY_ALLOWED`], set by the pipeline's policy stage on insert or
//! with [`FlowTable::mark`] on a host-NAT entry), so their packets in
//! both directions pass without a rule check. One flow has one entry
//! whatever set its flags.
//!
//! A flow is keyed by its 5-tuple ([`FlowKey`]): addresses, protocol and
//! the TCP/UDP/SCTP ports, or the identifier of an ICMP echo (request:
//! `sport` = id, reply: `dport` = id, so a reply's key is the request's
//! reversed). Both directions hash to the same bucket (the key is stored
//! with its endpoints in a canonical order plus a bit saying which way the
//! flow's first packet went), so one lookup answers "is this packet part
//! of a known flow, and in which direction".
//!
//! Why one shared table and not one per worker: the two directions of a
//! flow arrive on different ports (the host port and a pod port or the
//! uplink), and with `[dataplane] workers` > 1 those ports may belong to
//! different workers; no routing rule in the data plane can keep them on
//! one worker without moving ports between workers per flow. So the table
//! is shared and lock-free instead: a fixed array of slots (rounded up to
//! a power of two, [`DEFAULT_CAPACITY`] unless configured), grouped in
//! buckets of [`BUCKET`] slots; a flow lives in the bucket its hash picks,
//! in any free slot of it. A slot is a `meta` word (life, generation, state
//! bits and a 32-bit tag from the key's hash), kept with its bucket's
//! other seven in one cache line, and apart from it the two canonical key
//! words, the time the flow was last seen and the address translation the
//! built-in Service load balancer gave it ([`Nat`]; its session-affinity
//! entries use the pseudo protocol [`PROTO_AFFINITY`] and carry their own
//! timeout).
//!
//! Invariants and their cost:
//! - Readers never wait: a lookup reads the bucket's eight `meta` words
//!   (one cache line: all a miss costs) and only for a live slot with the
//!   key's tag reads the key, checked like a seqlock (meta, key, fence,
//!   meta again: the life and generation bits must not have changed). A slot is
//!   claimed with one compare-and-swap of its `meta` word (EMPTY or
//!   expired -> CLAIMED with the generation bumped), written, then
//!   published (LIVE) with a release store; state changes are CAS loops on
//!   `meta` that give up when the slot was reused. No allocation after
//!   [`FlowTable::new`].
//! - Bounded: a bucket with no free or expired slot refuses the new flow
//!   ([`Record::Full`], counted by the caller as `flows_full`); nothing
//!   is evicted that is still alive.
//! - Time comes in from the caller, in milliseconds of the process-wide
//!   clock ([`crate::clock`]); the table reads no clock. An entry expires
//!   `timeout(protocol, state)` after it was last seen ([`Timeouts`], the
//!   kernel's nf_conntrack defaults). Expired entries are invisible to
//!   lookups at once and their slots are reused by inserts into the same
//!   bucket or freed by [`FlowTable::sweep`] (the control thread, once a
//!   second); `len()` counts slots in use until then.
//! - The table's own counters (slots in use, entries expired) are shared
//!   atomics written only when a flow is inserted or freed, never per
//!   packet; the per-packet counts (inserted, full, steered) are the
//!   workers' own counters.
//! - "Last seen" is refreshed at most once a second per flow (or on a state
//!   change), so a busy flow does not make its cache line bounce between
//!   workers on every packet.
//! - Races that are accepted: two workers inserting the same new flow at
//!   the same moment may create two entries (the later one is never found
//!   and expires); a packet refreshing an entry in the very millisecond
//!   the sweep frees it loses the entry (as if it had expired). The
//!   host-NAT stage inserts only from the host port's worker and the
//!   Service load balancer only from the client pod's port (one worker's),
//!   so the first cannot happen there.
//!
//! The table lives in podrouterd's memory only: after a restart a flow is
//! recorded again from its next packet in the original direction (TCP
//! picked up mid-stream).
//!
//! What is not tracked: IP fragments (no ports past the first; the caller
//! gets `None` from [`parse`]), protocols other than TCP, UDP, SCTP and
//! ICMP echo, IPv6.
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Slots of the table when the configuration does not say (10 MiB). A
/// flow may only live in the 8 slots of its bucket, so a table stays
/// clear of refusals up to about a quarter of its slots in flows (65,536
/// here); at half full about 1% of new flows find their bucket full.
pub const DEFAULT_CAPACITY: usize = 262_144;
/// Smallest and largest table (slots).
pub const MIN_CAPACITY: usize = BUCKET;
pub const MAX_CAPACITY: usize = 1 << 24;
/// Slots per bucket: a flow may live in any of them.
pub const BUCKET: usize = 8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// A flow's 5-tuple as one packet carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FlowKey {
    /// The key of the other direction.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// The stored form: endpoints in canonical order (the smaller
    /// (address, port) first) as two words, and whether this key is the
    /// reverse of that order.
    #[inline]
    fn canonical(&self) -> (u64, u64, bool) {
        let s = (u32::from(self.src), self.sport);
        let d = (u32::from(self.dst), self.dport);
        let (lo, hi, swapped) = if s <= d { (s, d, false) } else { (d, s, true) };
        let addrs = (u64::from(lo.0) << 32) | u64::from(hi.0);
        // Bit 0 set: a stored key word is never 0 (an empty slot's).
        let ports =
            (u64::from(lo.1) << 48) | (u64::from(hi.1) << 32) | (u64::from(self.proto) << 24) | 1;
        (addrs, ports, swapped)
    }
}

/// What the tracker reads from one packet: its key and, for TCP, its
/// flags (0 otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    pub tcp_flags: u8,
}

/// The key of an IPv4 packet (`ip`: a validated header, the slice ending
/// where the packet does), or `None` if it is not tracked: a fragment, a
/// protocol other than TCP/UDP/SCTP/ICMP echo, or too short for its ports.
#[inline]
pub fn parse(ip: &[u8]) -> Option<Packet> {
    if ip.len() < 20 || is_fragment(ip) {
        return None;
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let l4 = ip.get(hl..)?;
    let key = l4_key(addr(ip, 12), addr(ip, 16), proto, l4)?;
    let tcp_flags = if proto == PROTO_TCP { *l4.get(13)? } else { 0 };
    Some(Packet { key, tcp_flags })
}

/// For an ICMP error (destination unreachable, source quench, time
/// exceeded, parameter problem), the key of the packet it quotes, as that
/// packet travelled; `None` for anything else or a quote too short to
/// tell.
#[inline]
pub fn parse_icmp_error_quote(ip: &[u8]) -> Option<FlowKey> {
    if ip.len() < 20 || ip[9] != PROTO_ICMP || is_fragment(ip) {
        return None;
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let icmp = ip.get(hl..)?;
    if !matches!(icmp.first()?, 3 | 4 | 11 | 12) {
        return None;
    }
    let inner = icmp.get(8..)?;
    if inner.len() < 20 || inner[0] >> 4 != 4 {
        return None;
    }
    // Only a first fragment (or a whole packet) carries the ports.
    if u16::from_be_bytes([inner[6], inner[7]]) & 0x1fff != 0 {
        return None;
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    l4_key(
        addr(inner, 12),
        addr(inner, 16),
        inner[9],
        inner.get(ihl..)?,
    )
}

#[inline]
fn is_fragment(ip: &[u8]) -> bool {
    u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
}

#[inline]
fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

#[inline]
fn l4_key(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Option<FlowKey> {
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let p = l4.get(..4)?;
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }
        PROTO_ICMP => {
            let p = l4.get(..6)?;
            let id = u16::from_be_bytes([p[4], p[5]]);
            match p[0] {
                ICMP_ECHO_REQUEST => (id, 0),
                ICMP_ECHO_REPLY => (0, id),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(FlowKey {
        src,
        dst,
        sport,
        dport,
        proto,
    })
}

/// The key of a flow's first packet from its stored canonical words
/// ([`FlowKey::canonical`]) and whether that packet went from the
/// canonical second endpoint to the first.
fn original_key(addrs: u64, ports: u64, swapped: bool) -> FlowKey {
    let lo = (Ipv4Addr::from((addrs >> 32) as u32), (ports >> 48) as u16);
    let hi = (Ipv4Addr::from(addrs as u32), (ports >> 32) as u16);
    let ((src, sport), (dst, dport)) = if swapped { (hi, lo) } else { (lo, hi) };
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: (ports >> 24) as u8,
    }
}

/// Idle timeouts, in seconds; the defaults are the Linux kernel's
/// nf_conntrack defaults (`net.netfilter.nf_conntrack_*_timeout*`). SCTP
/// is tracked by ports only, with UDP's unreplied timeout and the
/// kernel's SCTP established timeout once replied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    /// A TCP flow picked up in the middle (first packet not a SYN) that
    /// has seen no reply yet (the kernel's "unacknowledged").
    pub tcp_unreplied: u32,
    /// One side sent FIN.
    pub tcp_fin_wait: u32,
    /// Both sides sent FIN.
    pub tcp_time_wait: u32,
    /// After a RST.
    pub tcp_close: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub sctp_replied: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_unreplied: 300,
            tcp_fin_wait: 120,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp_unreplied: 30,
            udp_replied: 120,
            sctp_replied: 210,
            icmp: 30,
        }
    }
}

/// Which way a packet goes relative to its flow's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Original,
    Reply,
}

/// TCP states as far as timeouts need them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    TimeWait = 5,
    Close = 6,
}

impl TcpState {
    fn from_bits(b: u64) -> TcpState {
        match b {
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinWait,
            5 => TcpState::TimeWait,
            6 => TcpState::Close,
            _ => TcpState::None,
        }
    }
}

// The `meta` word of a slot:
//   bits 0-1   life (EMPTY, CLAIMED, LIVE)
//   bits 2-4   TCP state
//   bit  5     a reply was seen
//   bit  6     the flow's first packet went from the canonical second
//              endpoint to the first
//   bit  7     HOST_NAT: the node's kernel NATed the flow
//   bits 8-9   a FIN was seen from the original / reply side
//   bits 10-15 free: network policy's (verdict, rule generation, ...)
//   bits 16-31 generation, bumped on every claim
//   bits 32-63 tag: the high half of the key's hash, so a lookup only
//              reads the key of slots whose tag matches
const LIFE_MASK: u64 = 0b11;
const EMPTY: u64 = 0;
const CLAIMED: u64 = 1;
const LIVE: u64 = 2;
const TCP_SHIFT: u32 = 2;
const TCP_MASK: u64 = 0b111 << TCP_SHIFT;
const SEEN_REPLY: u64 = 1 << 5;
const ORIG_SWAPPED: u64 = 1 << 6;
/// Entry flag: the flow came out of the node's kernel with a local pod's
/// source address (the kernel NATed or routed it); its replies go back
/// through the host port.
pub const HOST_NAT: u64 = 1 << 7;
const FIN_ORIG: u64 = 1 << 8;
const FIN_REPLY: u64 = 1 << 9;
/// Bits network policy may use for its own per-entry state.
pub const POLICY_BITS: u64 = 0b11_1111 << 10;
/// Entry flag: network policy allowed this flow's first packet (or
/// picked it up established); both directions pass without a rule check.
pub const POLICY_ALLOWED: u64 = 1 << 10;
const GEN_SHIFT: u32 = 16;
const GEN_MASK: u64 = 0xffff << GEN_SHIFT;
const TAG_MASK: u64 = 0xffff_ffff << 32;
/// What must not change between the two reads of a seqlock check (the tag
/// only changes with a claim, which bumps the generation).
const IDENTITY: u64 = LIFE_MASK | GEN_MASK;
/// Flags the caller may set on insert.
const CALLER_FLAGS: u64 = HOST_NAT | POLICY_BITS;

/// "Last seen" is rewritten at most this often (ms) without a state change.
const SEEN_GRANULARITY_MS: u64 = 1000;

/// The `meta` words of one bucket: one cache line, all a miss reads.
#[repr(align(64))]
#[derive(Default)]
struct Metas([AtomicU64; BUCKET]);

/// The key, "last seen" and address translation of one slot (the four
/// words fill the 32 bytes the alignment gives a slot anyway).
#[repr(align(32))]
#[derive(Default)]
struct Entry {
    addrs: AtomicU64,
    ports: AtomicU64,
    seen_ms: AtomicU64,
    /// A [`Nat`] word, written with the key before the slot is published.
    nat: AtomicU64,
}

/// Pseudo protocol of session-affinity entries (253: RFC 3692's "use for
/// experimentation", never the key of a packet [`parse`] reads): the key
/// is (client, ClusterIP, 0, service port), the entry's [`Nat::Affinity`]
/// names the backend and its own timeout.
pub const PROTO_AFFINITY: u8 = 253;

/// The address translation an entry carries (the built-in Service load
/// balancer's; `None` for every other entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    None,
    /// Packets of the original direction go to `addr`:`port` instead of
    /// their destination (the entry is keyed by the pre-DNAT tuple).
    Dnat(Ipv4Addr, u16),
    /// Packets of the reply direction come from `addr`:`port` instead of
    /// their source (the entry is keyed by the post-DNAT tuple).
    UnDnat(Ipv4Addr, u16),
    /// A client's backend for a service port (a [`PROTO_AFFINITY`]
    /// entry), kept `secs` after the client's last new flow.
    Affinity {
        backend: Ipv4Addr,
        secs: u32,
    },
}

const NAT_KIND_SHIFT: u32 = 62;
const NAT_DNAT: u64 = 1;
const NAT_UNDNAT: u64 = 2;
const NAT_AFFINITY: u64 = 3;
const NAT_SECS_MASK: u64 = (1 << 30) - 1;

impl Nat {
    /// The stored word: kind in bits 62-63, address in bits 0-31, port
    /// (or the affinity timeout, 30 bits) from bit 32.
    fn encode(self) -> u64 {
        let w = |kind: u64, addr: Ipv4Addr, hi: u64| {
            (kind << NAT_KIND_SHIFT) | (hi << 32) | u64::from(u32::from(addr))
        };
        match self {
            Nat::None => 0,
            Nat::Dnat(a, p) => w(NAT_DNAT, a, u64::from(p)),
            Nat::UnDnat(a, p) => w(NAT_UNDNAT, a, u64::from(p)),
            Nat::Affinity { backend, secs } => {
                w(NAT_AFFINITY, backend, u64::from(secs).min(NAT_SECS_MASK))
            }
        }
    }

    fn decode(w: u64) -> Nat {
        let addr = Ipv4Addr::from(w as u32);
        let hi = (w >> 32) & NAT_SECS_MASK;
        match w >> NAT_KIND_SHIFT {
            NAT_DNAT => Nat::Dnat(addr, hi as u16),
            NAT_UNDNAT => Nat::UnDnat(addr, hi as u16),
            NAT_AFFINITY => Nat::Affinity {
                backend: addr,
                secs: hi as u32,
            },
            _ => Nat::None,
        }
    }
}

/// A live entry a lookup found: where, what its `meta` said then, and the
/// packet's direction in its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    slot: u32,
    meta: u64,
    nat: u64,
    pub dir: Dir,
}

impl Hit {
    /// The node's kernel NATed this flow: replies go to the host port.
    pub fn host_nat(&self) -> bool {
        self.meta & HOST_NAT != 0
    }

    pub fn tcp_state(&self) -> TcpState {
        TcpState::from_bits((self.meta & TCP_MASK) >> TCP_SHIFT)
    }

    pub fn seen_reply(&self) -> bool {
        self.meta & SEEN_REPLY != 0
    }

    /// Network policy allowed this flow ([`POLICY_ALLOWED`]).
    pub fn policy_allowed(&self) -> bool {
        self.meta & POLICY_ALLOWED != 0
    }

    /// The address translation the entry carries.
    #[inline]
    pub fn nat(&self) -> Nat {
        Nat::decode(self.nat)
    }
}

/// What [`FlowTable::record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// A new entry.
    Inserted,
    /// The flow was known; this packet went in `Dir`.
    Existing(Dir),
    /// The flow's bucket is full of live flows: not recorded.
    Full,
}

/// The shared flow table (see the module header).
pub struct FlowTable {
    metas: Box<[Metas]>,
    entries: Box<[Entry]>,
    bucket_mask: usize,
    /// Random per table, so nobody can aim flows at one bucket from
    /// outside.
    seed: u64,
    timeouts: Timeouts,
    /// Slots in use (LIVE or CLAIMED, expired ones included until reused
    /// or swept).
    used: CachePadded<AtomicUsize>,
    /// Entries freed because they expired (sweep or reuse).
    expired: CachePadded<AtomicU64>,
    /// Entries removed by [`FlowTable::purge`].
    purged: CachePadded<AtomicU64>,
}

impl fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTable")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable::new(DEFAULT_CAPACITY, Timeouts::default())
    }
}

#[inline]
fn mix(x: u64) -> u64 {
    let p = u128::from(x) * 0x9e37_79b9_7f4a_7c15u128;
    (p as u64) ^ ((p >> 64) as u64)
}

impl FlowTable {
    /// A table of `capacity` slots (rounded up to a power of two, clamped
    /// to [`MIN_CAPACITY`]..=[`MAX_CAPACITY`]).
    pub fn new(capacity: usize, timeouts: Timeouts) -> FlowTable {
        let n = capacity
            .clamp(MIN_CAPACITY, MAX_CAPACITY)
            .next_power_of_two();
        FlowTable {
            metas: (0..n / BUCKET).map(|_| Metas::default()).collect(),
            entries: (0..n).map(|_| Entry::default()).collect(),
            bucket_mask: n / BUCKET - 1,
            seed: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
            timeouts,
            used: CachePadded::new(AtomicUsize::new(0)),
            expired: CachePadded::new(AtomicU64::new(0)),
            purged: CachePadded::new(AtomicU64::new(0)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Slots in use, expired entries included until they are reused or
    /// swept.
    #[inline]
    pub fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// No entry at all: the fast path's one check before any lookup.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries freed after they expired, since the start.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The bucket of a canonical key and the tag its slot carries.
    #[inline]
    fn bucket(&self, addrs: u64, ports: u64) -> (usize, u64) {
        let h = mix(mix(addrs ^ self.seed) ^ ports);
        ((h as usize) & self.bucket_mask, h & TAG_MASK)
    }

    #[inline]
    fn meta(&self, slot: usize) -> &AtomicU64 {
        &self.metas[slot / BUCKET].0[slot % BUCKET]
    }

    /// How long (ms) an entry with `meta` of protocol `proto` lives
    /// after it was last seen.
    fn timeout_ms(&self, proto: u8, meta: u64) -> u64 {
        let t = &self.timeouts;
        let replied = meta & SEEN_REPLY != 0;
        let secs = match proto {
            PROTO_TCP => match TcpState::from_bits((meta & TCP_MASK) >> TCP_SHIFT) {
                TcpState::SynSent => t.tcp_syn_sent,
                TcpState::SynRecv => t.tcp_syn_recv,
                TcpState::Established if replied => t.tcp_established,
                TcpState::Established | TcpState::None => t.tcp_unreplied,
                TcpState::FinWait => t.tcp_fin_wait,
                TcpState::TimeWait => t.tcp_time_wait,
                TcpState::Close => t.tcp_close,
            },
            PROTO_UDP if replied => t.udp_replied,
            PROTO_SCTP if replied => t.sctp_replied,
            PROTO_UDP | PROTO_SCTP => t.udp_unreplied,
            _ => t.icmp,
        };
        u64::from(secs) * 1000
    }

    fn is_expired(&self, e: &Entry, meta: u64, ports: u64, now_ms: u64) -> bool {
        let proto = ((ports >> 24) & 0xff) as u8;
        let seen = e.seen_ms.load(Ordering::Relaxed);
        let timeout = if proto == PROTO_AFFINITY {
            ((e.nat.load(Ordering::Relaxed) >> 32) & NAT_SECS_MASK) * 1000
        } else {
            self.timeout_ms(proto, meta)
        };
        now_ms.saturating_sub(seen) > timeout
    }

    /// Finds the live, unexpired entry of `key`'s flow.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now_ms: u64) -> Option<Hit> {
        let (addrs, ports, swapped) = key.canonical();
        let (b, tag) = self.bucket(addrs, ports);
        for (k, meta) in self.metas[b].0.iter().enumerate() {
            let m1 = meta.load(Ordering::Acquire);
            if m1 & LIFE_MASK != LIVE || m1 & TAG_MASK != tag {
                continue;
            }
            let i = b * BUCKET + k;
            let e = &self.entries[i];
            let (a, p, nat) = (
                e.addrs.load(Ordering::Relaxed),
                e.ports.load(Ordering::Relaxed),
                e.nat.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            let m2 = meta.load(Ordering::Relaxed);
            if (m1 ^ m2) & IDENTITY != 0 || a != addrs || p != ports {
                continue;
            }
            if self.is_expired(e, m2, p, now_ms) {
                continue;
            }
            let dir = if (m2 & ORIG_SWAPPED != 0) == swapped {
                Dir::Original
            } else {
                Dir::Reply
            };
            return Some(Hit {
                slot: i as u32,
                meta: m2,
                nat,
                dir,
            });
        }
        None
    }

    /// Notes a packet of a flow [`lookup`](Self::lookup) found: TCP state,
    /// reply seen, last seen. Gives up quietly if the slot was reused
    /// meanwhile.
    #[inline]
    pub fn note(&self, hit: &Hit, tcp_flags: u8, proto: u8, now_ms: u64) {
        let (meta, e) = (
            self.meta(hit.slot as usize),
            &self.entries[hit.slot as usize],
        );
        let mut cur = hit.meta;
        for _ in 0..4 {
            let next = step(cur, hit.dir, proto, tcp_flags);
            if next == cur {
                let seen = e.seen_ms.load(Ordering::Relaxed);
                if now_ms >= seen + SEEN_GRANULARITY_MS {
                    e.seen_ms.store(now_ms, Ordering::Relaxed);
                }
                return;
            }
            match meta.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    e.seen_ms.store(now_ms, Ordering::Relaxed);
                    return;
                }
                Err(actual) if (actual ^ hit.meta) & IDENTITY == 0 => cur = actual,
                Err(_) => return,
            }
        }
    }

    /// Sets caller flags (`HOST_NAT`, `POLICY_*`) on the entry `hit`
    /// found; returns false if the slot was reused meanwhile.
    pub fn mark(&self, hit: &Hit, flags: u64) -> bool {
        let meta = self.meta(hit.slot as usize);
        let mut cur = hit.meta;
        loop {
            let next = cur | (flags & CALLER_FLAGS);
            if next == cur {
                return true;
            }
            match meta.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) if (actual ^ hit.meta) & IDENTITY == 0 => cur = actual,
                Err(_) => return false,
            }
        }
    }

    /// Records a packet: notes it on its flow's entry, or inserts a new
    /// entry (with `flags`, e.g. [`HOST_NAT`]) whose original direction
    /// is this packet's.
    pub fn record(&self, pkt: &Packet, flags: u64, now_ms: u64) -> Record {
        self.record_nat(pkt, flags, Nat::None, now_ms)
    }

    /// [`record`](Self::record), and a new entry carries `nat` (an
    /// existing one keeps its own).
    pub fn record_nat(&self, pkt: &Packet, flags: u64, nat: Nat, now_ms: u64) -> Record {
        let key = &pkt.key;
        if let Some(hit) = self.lookup(key, now_ms) {
            self.note(&hit, pkt.tcp_flags, key.proto, now_ms);
            return Record::Existing(hit.dir);
        }
        let (addrs, ports, swapped) = key.canonical();
        let (b, tag) = self.bucket(addrs, ports);
        // Two tries: a claim can lose a race for the slot it picked.
        for _ in 0..2 {
            let Some((i, old)) = self.free_slot(b, now_ms) else {
                return Record::Full;
            };
            let (meta, e) = (self.meta(i), &self.entries[i]);
            let generation = (old.wrapping_add(1 << GEN_SHIFT)) & GEN_MASK;
            if meta
                .compare_exchange(
                    old,
                    CLAIMED | generation | tag,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            if old & LIFE_MASK == LIVE {
                // An expired entry's slot, reused: it stays in use.
                self.expired.fetch_add(1, Ordering::Relaxed);
            } else {
                self.used.fetch_add(1, Ordering::Relaxed);
            }
            fence(Ordering::Release);
            e.addrs.store(addrs, Ordering::Relaxed);
            e.ports.store(ports, Ordering::Relaxed);
            e.seen_ms.store(now_ms, Ordering::Relaxed);
            e.nat.store(nat.encode(), Ordering::Relaxed);
            let first = (flags & CALLER_FLAGS) | if swapped { ORIG_SWAPPED } else { 0 };
            let state = step(first, Dir::Original, key.proto, pkt.tcp_flags);
            meta.store(
                LIVE | generation | tag | (state & !(IDENTITY | TAG_MASK)),
                Ordering::Release,
            );
            return Record::Inserted;
        }
        Record::Full
    }

    /// A slot of bucket `b` that is empty or holds an expired entry, and
    /// its `meta` word as read.
    fn free_slot(&self, b: usize, now_ms: u64) -> Option<(usize, u64)> {
        for (k, meta) in self.metas[b].0.iter().enumerate() {
            let i = b * BUCKET + k;
            let m = meta.load(Ordering::Acquire);
            let e = &self.entries[i];
            match m & LIFE_MASK {
                EMPTY => return Some((i, m)),
                LIVE if self.is_expired(e, m, e.ports.load(Ordering::Relaxed), now_ms) => {
                    return Some((i, m))
                }
                _ => {}
            }
        }
        None
    }

    /// Removes the entry `hit` found, unless the slot changed meanwhile;
    /// says whether it did.
    pub fn remove(&self, hit: &Hit) -> bool {
        let meta = self.meta(hit.slot as usize);
        let mut cur = hit.meta;
        loop {
            match meta.compare_exchange(
                cur,
                EMPTY | (cur & GEN_MASK),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.used.fetch_sub(1, Ordering::Relaxed);
                    return true;
                }
                // Only its state bits changed: still the same entry.
                Err(actual) if (actual ^ hit.meta) & IDENTITY == 0 => cur = actual,
                Err(_) => return false,
            }
        }
    }

    /// Removes every live entry (expired or not) for which `doomed`
    /// returns true, given the entry's key as its flow's first packet
    /// carried it and its translation; returns how many went. For the
    /// control thread when what an entry stands for went away (a Service
    /// or a backend of the built-in load balancer): one pass over the
    /// slots, like [`sweep`](Self::sweep), reading a slot's key only when
    /// it is live and carries a translation. An entry whose slot is
    /// reused during the pass is left alone (the seqlock check fails);
    /// a packet of a removed flow finds no entry and starts a new one.
    pub fn purge(&self, mut doomed: impl FnMut(&FlowKey, Nat) -> bool) -> usize {
        if self.is_empty() {
            return 0;
        }
        let mut removed = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let meta = self.meta(i);
            let m = meta.load(Ordering::Acquire);
            if m & LIFE_MASK != LIVE {
                continue;
            }
            let nat_word = e.nat.load(Ordering::Relaxed);
            if nat_word == 0 {
                continue;
            }
            let (addrs, ports) = (
                e.addrs.load(Ordering::Relaxed),
                e.ports.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            if (meta.load(Ordering::Relaxed) ^ m) & IDENTITY != 0 {
                continue;
            }
            let key = original_key(addrs, ports, m & ORIG_SWAPPED != 0);
            if !doomed(&key, Nat::decode(nat_word)) {
                continue;
            }
            let hit = Hit {
                slot: i as u32,
                meta: m,
                nat: nat_word,
                dir: Dir::Original,
            };
            if self.remove(&hit) {
                removed += 1;
            }
        }
        self.purged.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    /// Entries removed by [`purge`](Self::purge) since the start.
    pub fn purged(&self) -> u64 {
        self.purged.load(Ordering::Relaxed)
    }

    /// Frees every expired entry; returns how many. Any thread may call
    /// it (podrouterd's control thread does, once a second): it costs one
    /// pass over the slots and writes only the ones it frees.
    pub fn sweep(&self, now_ms: u64) -> usize {
        if self.is_empty() {
            return 0;
        }
        let mut freed = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let meta = self.meta(i);
            let m = meta.load(Ordering::Acquire);
            if m & LIFE_MASK != LIVE
                || !self.is_expired(e, m, e.ports.load(Ordering::Relaxed), now_ms)
            {
                continue;
            }
            if meta
                .compare_exchange(
                    m,
                    EMPTY | (m & GEN_MASK),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.used.fetch_sub(1, Ordering::Relaxed);
                freed += 1;
            }
        }
        self.expired.fetch_add(freed as u64, Ordering::Relaxed);
        freed
    }
}

/// The state bits after a packet in `dir` with `tcp_flags` (a simplified
/// version of the kernel's TCP window-less tracking: SYN, SYN+ACK, ACK
/// open the connection, FINs from both sides or a RST close it, a SYN on
/// a closed entry opens it again).
fn step(meta: u64, dir: Dir, proto: u8, tcp_flags: u8) -> u64 {
    let mut m = meta;
    if dir == Dir::Reply {
        m |= SEEN_REPLY;
    }
    if proto != PROTO_TCP {
        return m;
    }
    let state = TcpState::from_bits((m & TCP_MASK) >> TCP_SHIFT);
    let set = |m: u64, s: TcpState| (m & !TCP_MASK) | ((s as u64) << TCP_SHIFT);
    if tcp_flags & TCP_RST != 0 {
        return set(m, TcpState::Close);
    }
    let syn = tcp_flags & TCP_SYN != 0;
    let ack = tcp_flags & TCP_ACK != 0;
    m = match (dir, state) {
        (Dir::Original, TcpState::None | TcpState::TimeWait | TcpState::Close) if syn && !ack => {
            // A new connection (or the port reused after a close).
            set(m & !(FIN_ORIG | FIN_REPLY | SEEN_REPLY), TcpState::SynSent)
        }
        (Dir::Original, TcpState::None) => set(m, TcpState::Established),
        (Dir::Reply, TcpState::SynSent) if syn && ack => set(m, TcpState::SynRecv),
        (Dir::Original, TcpState::SynRecv) if ack && !syn => set(m, TcpState::Established),
        _ => m,
    };
    if tcp_flags & TCP_FIN != 0 {
        m |= if dir == Dir::Original {
            FIN_ORIG
        } else {
            FIN_REPLY
        };
        let both = m & (FIN_ORIG | FIN_REPLY) == FIN_ORIG | FIN_REPLY;
        m = set(
            m,
            if both {
                TcpState::TimeWait
            } else {
                TcpState::FinWait
            },
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const C: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);

    fn tcp(sport: u16, flags: u8) -> Packet {
        Packet {
            key: FlowKey {
                src: C,
                dst: B,
                sport,
                dport: 80,
                proto: PROTO_TCP,
            },
            tcp_flags: flags,
        }
    }

    fn reply(p: &Packet, flags: u8) -> Packet {
        Packet {
            key: p.key.reversed(),
            tcp_flags: flags,
        }
    }

    fn udp(sport: u16) -> Packet {
        Packet {
            key: FlowKey {
                src: C,
                dst: B,
                sport,
                dport: 53,
                proto: PROTO_UDP,
            },
            tcp_flags: 0,
        }
    }

    #[test]
    fn both_directions_find_the_entry() {
        let t = FlowTable::new(1024, Timeouts::default());
        assert!(t.is_empty());
        let p = tcp(40000, TCP_SYN);
        assert_eq!(t.record(&p, HOST_NAT, 1000), Record::Inserted);
        assert_eq!(t.len(), 1);
        let hit = t.lookup(&p.key, 1000).unwrap();
        assert_eq!(hit.dir, Dir::Original);
        assert!(hit.host_nat());
        assert_eq!(hit.tcp_state(), TcpState::SynSent);
        let hit = t.lookup(&p.key.reversed(), 1000).unwrap();
        assert_eq!(hit.dir, Dir::Reply);
        // Another port, another protocol, other addresses: not the flow.
        assert!(t.lookup(&tcp(40001, 0).key, 1000).is_none());
        let mut k = p.key;
        k.proto = PROTO_UDP;
        assert!(t.lookup(&k, 1000).is_none());
        k = p.key;
        k.dst = Ipv4Addr::new(10, 244, 0, 4);
        assert!(t.lookup(&k, 1000).is_none());
        // Recording it again is the same entry.
        assert_eq!(
            t.record(&p, HOST_NAT, 1000),
            Record::Existing(Dir::Original)
        );
        assert_eq!(
            t.record(&reply(&p, TCP_SYN | TCP_ACK), 0, 1000),
            Record::Existing(Dir::Reply)
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn entries_whose_first_packet_went_the_other_way() {
        // The canonical order puts B first only if it is smaller: check
        // that direction is right either way round.
        let t = FlowTable::new(64, Timeouts::default());
        let p = reply(&tcp(40000, 0), TCP_SYN);
        t.record(&p, 0, 0);
        assert_eq!(t.lookup(&p.key, 0).unwrap().dir, Dir::Original);
        assert_eq!(t.lookup(&p.key.reversed(), 0).unwrap().dir, Dir::Reply);
    }

    #[test]
    fn tcp_state_follows_the_flags() {
        let t = FlowTable::new(64, Timeouts::default());
        let p = tcp(40000, TCP_SYN);
        let state = |now| t.lookup(&p.key, now).map(|h| h.tcp_state());
        let mut now = 0;
        let mut send = |pkt: Packet, ms: u64| {
            now += ms;
            t.record(&pkt, HOST_NAT, now);
            now
        };
        send(p, 0);
        assert_eq!(state(0), Some(TcpState::SynSent));
        send(reply(&p, TCP_SYN | TCP_ACK), 10);
        assert_eq!(state(10), Some(TcpState::SynRecv));
        let n = send(tcp(40000, TCP_ACK), 10);
        assert_eq!(state(n), Some(TcpState::Established));
        // Established lives 5 days.
        assert_eq!(state(n + 400_000_000), Some(TcpState::Established));
        let n = send(tcp(40000, TCP_FIN | TCP_ACK), 10);
        assert_eq!(state(n), Some(TcpState::FinWait));
        let n = send(reply(&p, TCP_FIN | TCP_ACK), 10);
        assert_eq!(state(n), Some(TcpState::TimeWait));
        // Time wait: 120 s.
        assert_eq!(state(n + 119_000), Some(TcpState::TimeWait));
        assert_eq!(state(n + 121_000), None);
        // A new SYN on the same ports opens it again.
        let n = send(tcp(40000, TCP_SYN), 10);
        assert_eq!(state(n), Some(TcpState::SynSent));
        assert!(!t.lookup(&p.key, n).unwrap().seen_reply());
        // RST: closed, gone 10 s later.
        let n = send(reply(&p, TCP_RST), 10);
        assert_eq!(state(n), Some(TcpState::Close));
        assert_eq!(state(n + 9_000), Some(TcpState::Close));
        assert_eq!(state(n + 11_000), None);
    }

    #[test]
    fn timeouts_like_the_kernel() {
        let t = FlowTable::new(64, Timeouts::default());
        // SYN never answered: 120 s.
        let syn = tcp(1, TCP_SYN);
        t.record(&syn, 0, 0);
        assert!(t.lookup(&syn.key, 119_999).is_some());
        assert!(t.lookup(&syn.key, 120_001).is_none());
        // Picked up midstream without a reply: 300 s.
        let mid = tcp(2, TCP_ACK);
        t.record(&mid, 0, 0);
        assert_eq!(
            t.lookup(&mid.key, 0).unwrap().tcp_state(),
            TcpState::Established
        );
        assert!(t.lookup(&mid.key, 299_000).is_some());
        assert!(t.lookup(&mid.key, 301_000).is_none());
        // UDP: 30 s unreplied, 120 s once a reply was seen.
        let u = udp(3);
        t.record(&u, 0, 0);
        assert!(t.lookup(&u.key, 29_000).is_some());
        assert!(t.lookup(&u.key, 31_000).is_none());
        let u = udp(4);
        t.record(&u, 0, 0);
        t.record(&reply(&u, 0), 0, 1_000);
        assert!(t.lookup(&u.key, 120_000).is_some());
        assert!(t.lookup(&u.key, 122_000).is_none());
        // Traffic keeps it alive (refreshed at 1 s granularity).
        let u = udp(5);
        t.record(&u, 0, 0);
        for s in 1..100 {
            t.record(&u, 0, s * 20_000);
        }
        assert!(t.lookup(&u.key, 99 * 20_000 + 29_000).is_some());
    }

    #[test]
    fn bounded_buckets_refuse_then_reuse_expired_slots() {
        let t = FlowTable::new(MIN_CAPACITY, Timeouts::default());
        assert_eq!(t.capacity(), BUCKET);
        for i in 0..BUCKET as u16 {
            assert_eq!(t.record(&udp(i), 0, 0), Record::Inserted);
        }
        assert_eq!(t.len(), BUCKET);
        assert_eq!(t.record(&udp(999), 0, 0), Record::Full);
        // Once they expired, their slots take new flows.
        assert_eq!(t.record(&udp(999), 0, 31_000), Record::Inserted);
        assert_eq!(t.expired(), 1);
        assert_eq!(t.len(), BUCKET);
        // The sweep frees the rest.
        assert_eq!(t.sweep(31_000), BUCKET - 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expired(), BUCKET as u64);
        assert!(t.lookup(&udp(999).key, 31_000).is_some());
        assert_eq!(t.sweep(62_000), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn entries_carry_their_translation_and_affinity_its_timeout() {
        let t = FlowTable::new(64, Timeouts::default());
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let p = udp(5353);
        let nat = Nat::Dnat(vip, 53);
        assert_eq!(t.record_nat(&p, 0, nat, 0), Record::Inserted);
        assert_eq!(t.lookup(&p.key, 0).unwrap().nat(), nat);
        // An existing entry keeps its translation.
        t.record_nat(&p, 0, Nat::UnDnat(B, 1), 0);
        assert_eq!(t.lookup(&p.key.reversed(), 0).unwrap().nat(), nat);
        assert_eq!(t.lookup(&udp(1).key, 0), None);
        assert_eq!(t.record(&udp(1), 0, 0), Record::Inserted);
        assert_eq!(t.lookup(&udp(1).key, 0).unwrap().nat(), Nat::None);
        // An affinity entry lives its own timeout, not UDP's.
        let aff = Packet {
            key: FlowKey {
                src: C,
                dst: vip,
                sport: 0,
                dport: 53,
                proto: PROTO_AFFINITY,
            },
            tcp_flags: 0,
        };
        let a = Nat::Affinity {
            backend: B,
            secs: 3 * 3600,
        };
        assert_eq!(t.record_nat(&aff, 0, a, 0), Record::Inserted);
        assert_eq!(t.lookup(&aff.key, 10_000_000).unwrap().nat(), a);
        assert!(t.lookup(&aff.key, 3 * 3_600_000 + 1).is_none());
        for n in [
            Nat::None,
            Nat::UnDnat(Ipv4Addr::new(255, 255, 255, 255), 65535),
            Nat::Affinity {
                backend: C,
                secs: 86_400,
            },
        ] {
            assert_eq!(Nat::decode(n.encode()), n);
        }
    }

    #[test]
    fn removed_entries_are_gone() {
        let t = FlowTable::new(64, Timeouts::default());
        let p = tcp(40000, TCP_SYN);
        t.record(&p, HOST_NAT, 0);
        let hit = t.lookup(&p.key, 0).unwrap();
        // A state change in between does not make it another entry.
        t.record(&reply(&p, TCP_SYN | TCP_ACK), 0, 0);
        assert!(t.remove(&hit));
        assert!(t.lookup(&p.key, 0).is_none());
        assert!(t.is_empty());
        // The slot was reused meanwhile: nothing to remove.
        t.record(&p, HOST_NAT, 0);
        assert!(!t.remove(&hit));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn capacity_is_rounded_and_clamped() {
        assert_eq!(FlowTable::new(0, Timeouts::default()).capacity(), BUCKET);
        assert_eq!(FlowTable::new(1000, Timeouts::default()).capacity(), 1024);
        assert_eq!(
            FlowTable::default().capacity(),
            DEFAULT_CAPACITY.next_power_of_two()
        );
    }

    #[test]
    fn a_large_table_holds_many_flows() {
        // A quarter full, 8-slot buckets: (nearly) no refusals.
        let t = FlowTable::new(1 << 14, Timeouts::default());
        let mut full = 0;
        let flows = 1u32 << 12;
        for i in 0..flows {
            let p = Packet {
                key: FlowKey {
                    src: Ipv4Addr::from(0x0af4_0000 + (i >> 8)),
                    dst: Ipv4Addr::new(10, 244, 1, 1),
                    sport: 1024 + (i & 0xff) as u16,
                    dport: 80,
                    proto: PROTO_TCP,
                },
                tcp_flags: TCP_SYN,
            };
            match t.record(&p, HOST_NAT, 0) {
                Record::Inserted => assert!(t.lookup(&p.key.reversed(), 0).is_some()),
                Record::Full => full += 1,
                r => panic!("{r:?}"),
            }
        }
        assert!(full * 1000 <= flows, "{full} of {flows} refused");
        assert_eq!(t.len() as u32, flows - full);
    }

    #[test]
    fn packets_parse_into_keys() {
        let mut ip = vec![0u8; 20 + 20];
        ip[0] = 0x45;
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&C.octets());
        ip[16..20].copy_from_slice(&B.octets());
        ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&80u16.to_be_bytes());
        ip[33] = TCP_SYN | TCP_ACK;
        assert_eq!(parse(&ip), Some(tcp(40000, TCP_SYN | TCP_ACK)));
        // Truncated TCP header, a fragment, an unknown protocol: None.
        assert_eq!(parse(&ip[..30]), None);
        let mut frag = ip.clone();
        frag[6] = 0x20;
        assert_eq!(parse(&frag), None);
        let mut gre = ip.clone();
        gre[9] = 47;
        assert_eq!(parse(&gre), None);
        // ICMP echo: request and reply are one flow's two directions.
        let mut echo = ip[..28].to_vec();
        echo[9] = PROTO_ICMP;
        echo[20] = 8;
        echo[24..26].copy_from_slice(&7u16.to_be_bytes());
        let req = parse(&echo).unwrap().key;
        echo[12..16].copy_from_slice(&B.octets());
        echo[16..20].copy_from_slice(&C.octets());
        echo[20] = 0;
        assert_eq!(parse(&echo).unwrap().key, req.reversed());
        echo[20] = 3;
        assert_eq!(parse(&echo), None);
    }

    #[test]
    fn icmp_errors_name_the_quoted_flow() {
        // Port unreachable from B about C's UDP packet to it.
        let mut quoted = vec![0u8; 28];
        quoted[0] = 0x45;
        quoted[9] = PROTO_UDP;
        quoted[12..16].copy_from_slice(&C.octets());
        quoted[16..20].copy_from_slice(&B.octets());
        quoted[20..22].copy_from_slice(&5353u16.to_be_bytes());
        quoted[22..24].copy_from_slice(&53u16.to_be_bytes());
        let mut ip = vec![0u8; 28];
        ip[0] = 0x45;
        ip[9] = PROTO_ICMP;
        ip[12..16].copy_from_slice(&B.octets());
        ip[16..20].copy_from_slice(&C.octets());
        ip[20] = 3;
        ip[21] = 3;
        ip.extend_from_slice(&quoted);
        assert_eq!(parse_icmp_error_quote(&ip), Some(udp(5353).key));
        assert_eq!(parse(&ip), None, "an error is no flow of its own");
        // Too short a quote, or not an error.
        assert_eq!(parse_icmp_error_quote(&ip[..28 + 22]), None);
        ip[20] = 0;
        assert_eq!(parse_icmp_error_quote(&ip), None);
    }

    #[test]
    fn workers_share_the_table() {
        // One thread inserts (the host port's worker), others look up the
        // reverse direction and note packets, the sweep runs alongside:
        // every entry inserted is found, nothing panics or is torn.
        let t = Arc::new(FlowTable::new(1 << 12, Timeouts::default()));
        let n = 1500u16;
        let inserter = {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    assert_eq!(t.record(&tcp(i, TCP_SYN), HOST_NAT, 0), Record::Inserted);
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut found = 0;
                    while found < n {
                        found = 0;
                        for i in 0..n {
                            let r = reply(&tcp(i, 0), TCP_SYN | TCP_ACK);
                            if let Some(h) = t.lookup(&r.key, 0) {
                                assert_eq!(h.dir, Dir::Reply);
                                assert!(h.host_nat());
                                t.note(&h, r.tcp_flags, PROTO_TCP, 0);
                                found += 1;
                            }
                        }
                        t.sweep(0);
                    }
                })
            })
            .collect();
        inserter.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(t.len(), usize::from(n));
        assert_eq!(
            t.lookup(&tcp(7, 0).key, 0).unwrap().tcp_state(),
            TcpState::SynRecv
        );
    }

    #[test]
    fn purge_removes_what_the_caller_dooms_with_the_key_as_first_sent() {
        let t = FlowTable::new(1024, Timeouts::default());
        let backend = Ipv4Addr::new(10, 244, 9, 9);
        // Both canonical orders of the first packet, a translated entry
        // each; and an entry without a translation, never offered.
        let up = udp(40000);
        let mut down = udp(40001);
        down.key = down.key.reversed();
        for p in [&up, &down] {
            assert_eq!(
                t.record_nat(p, 0, Nat::Dnat(backend, 5353), 1),
                Record::Inserted
            );
        }
        assert_eq!(t.record(&udp(40002), 0, 1), Record::Inserted);
        let mut offered = Vec::new();
        let removed = t.purge(|k, nat| {
            offered.push((*k, nat));
            k.sport == 40000
        });
        assert_eq!(removed, 1);
        assert_eq!(t.purged(), 1);
        offered.sort_by_key(|(k, _)| (k.sport, k.dport));
        assert_eq!(
            offered,
            [
                (down.key, Nat::Dnat(backend, 5353)),
                (up.key, Nat::Dnat(backend, 5353))
            ]
        );
        assert!(t.lookup(&up.key, 1).is_none());
        assert!(t.lookup(&down.key, 1).is_some());
        assert!(t.lookup(&udp(40002).key, 1).is_some());
        assert_eq!(t.len(), 2);
        assert_eq!(t.purge(|_, _| true), 1);
        assert_eq!(t.len(), 1);
    }
}
