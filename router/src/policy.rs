//! Compiled network policy: what the data plane reads to decide whether a
//! new connection may start.
//!
//! # What it owns
//!
//! [`PolicyTable`] is an immutable snapshot of every local pod's compiled
//! rules; [`Policies`] publishes snapshots the way [`crate::fib::Fib`] does
//! (one `ArcSwap`, a reader loads once per batch and never blocks, a writer
//! builds the next table aside and swaps it in). The control plane
//! (`control/src/policy/`) parses NetworkPolicy objects, resolves their
//! selectors against the pods and namespaces it knows and hands the result
//! to [`PodRulesBuilder`]; this module knows nothing about labels or
//! selectors, only addresses, protocols and ports.
//!
//! # Structure and cost
//!
//! Per local pod address (one hash probe), per direction, either nothing
//! (the pod is not isolated in that direction: everything is allowed) or a
//! [`DirRules`]: the union of every rule of every policy selecting the pod
//! in that direction, as two lookups on the peer address:
//!
//! - `exact`: a hash map from a peer's address to a port set; selector
//!   peers (pods) resolve to these, each with the ports valid for that
//!   very peer (a named port of an egress rule resolves per destination
//!   pod).
//! - `ranges`: sorted, disjoint address intervals, each with a port set;
//!   `ipBlock` peers (CIDR minus `except`) and "any peer" rules compile to
//!   these. The elementary intervals of overlapping blocks carry the union
//!   of their port sets, so one binary search answers.
//!
//! A port set is a sorted list of disjoint `(protocol, low, high)` ranges
//! or "anything" (a rule without ports, which also allows ICMP). Port sets
//! are interned per direction. A verdict costs one hash probe for the pod,
//! one for the peer, one binary search over the intervals and one over a
//! port set: O(log n) in the number of rules, not linear.
//!
//! # Invariants
//!
//! - A published [`PolicyTable`] is never mutated.
//! - `ranges.starts` is strictly increasing and `starts[0] == 0`; interval
//!   `i` covers `starts[i]..starts[i+1]` (the last one up to 255.255.255.255).
//! - Every port set's ranges are sorted by (protocol, low), disjoint and not
//!   adjacent (merged), with `low <= high`.
//! - Connections to and from the node's own addresses are always allowed
//!   (Kubernetes: the node may reach its pods, e.g. for health probes).
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::fib::KeyHash;

/// Address-keyed maps use the FIB's seeded multiply hash: SipHash would
/// cost more than the rest of a lookup.
type AddrMap<V> = HashMap<u32, V, KeyHash>;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// A contiguous range of ports of one protocol, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub proto: u8,
    pub lo: u16,
    pub hi: u16,
}

/// The ports a rule (or the union of several) allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    /// Every protocol and port (a rule without `ports`).
    any: bool,
    ranges: Box<[PortRange]>,
}

impl PortSet {
    pub fn any() -> PortSet {
        PortSet {
            any: true,
            ranges: Box::new([]),
        }
    }

    /// The set of the given ranges, merged (empty ranges are ignored).
    pub fn of(ranges: impl IntoIterator<Item = PortRange>) -> PortSet {
        let mut v: Vec<PortRange> = ranges.into_iter().filter(|r| r.lo <= r.hi).collect();
        v.sort_unstable();
        let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(l) if l.proto == r.proto && u32::from(r.lo) <= u32::from(l.hi) + 1 => {
                    l.hi = l.hi.max(r.hi)
                }
                _ => out.push(r),
            }
        }
        PortSet {
            any: false,
            ranges: out.into_boxed_slice(),
        }
    }

    pub fn is_any(&self) -> bool {
        self.any
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.ranges
    }

    /// The union of two sets.
    pub fn union(&self, other: &PortSet) -> PortSet {
        if self.any || other.any {
            return PortSet::any();
        }
        PortSet::of(self.ranges.iter().chain(other.ranges.iter()).copied())
    }

    /// Does the set allow `proto` to `port`? `port` is ignored for
    /// protocols without ports (only "anything" allows those).
    #[inline]
    pub fn contains(&self, proto: u8, port: u16) -> bool {
        if self.any {
            return true;
        }
        // The last range starting at or before (proto, port).
        let key = (proto, port);
        let i = self.ranges.partition_point(|r| (r.proto, r.lo) <= key);
        i > 0 && {
            let r = &self.ranges[i - 1];
            r.proto == proto && port <= r.hi
        }
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("any");
        }
        if self.ranges.is_empty() {
            return f.write_str("none");
        }
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let p = match r.proto {
                PROTO_TCP => "tcp",
                PROTO_UDP => "udp",
                PROTO_SCTP => "sctp",
                _ => "proto",
            };
            if r.lo == r.hi {
                write!(f, "{p}/{}", r.lo)?;
            } else {
                write!(f, "{p}/{}-{}", r.lo, r.hi)?;
            }
        }
        Ok(())
    }
}

type SetId = u32;
/// The interned empty set: interval gaps and unknown peers.
const EMPTY_SET: SetId = 0;

/// One pod's compiled rules for one direction (see the module header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirRules {
    exact: AddrMap<SetId>,
    starts: Box<[u32]>,
    range_sets: Box<[SetId]>,
    sets: Box<[PortSet]>,
}

impl DirRules {
    /// Does the direction allow a new connection with `peer` on
    /// (`proto`, `port`)? (`port`: the destination port.)
    #[inline]
    pub fn allows(&self, peer: Ipv4Addr, proto: u8, port: u16) -> bool {
        let a = u32::from(peer);
        if let Some(&s) = self.exact.get(&a) {
            if self.sets[s as usize].contains(proto, port) {
                return true;
            }
        }
        let i = self.starts.partition_point(|&s| s <= a);
        // starts[0] == 0, so i >= 1.
        let s = self.range_sets[i - 1];
        s != EMPTY_SET && self.sets[s as usize].contains(proto, port)
    }

    /// The peers by address, for people: (peer, ports) for every exact
    /// entry, then (first, last, ports) for every non-empty interval.
    #[allow(clippy::type_complexity)]
    pub fn describe(&self) -> (Vec<(Ipv4Addr, String)>, Vec<(Ipv4Addr, Ipv4Addr, String)>) {
        let mut exact: Vec<_> = self
            .exact
            .iter()
            .map(|(&a, &s)| (Ipv4Addr::from(a), self.sets[s as usize].to_string()))
            .collect();
        exact.sort();
        let mut ranges = Vec::new();
        for (i, &s) in self.range_sets.iter().enumerate() {
            if s == EMPTY_SET {
                continue;
            }
            let last = match self.starts.get(i + 1) {
                Some(&n) => n - 1,
                None => u32::MAX,
            };
            ranges.push((
                Ipv4Addr::from(self.starts[i]),
                Ipv4Addr::from(last),
                self.sets[s as usize].to_string(),
            ));
        }
        (exact, ranges)
    }

    /// Number of exact peers and of intervals (for sizes shown to people).
    pub fn size(&self) -> (usize, usize) {
        (self.exact.len(), self.starts.len())
    }
}

/// Collects one pod's rules for one direction, then compiles them.
#[derive(Clone, Debug, Default)]
pub struct DirRulesBuilder {
    exact: HashMap<u32, PortSet>,
    /// (first, last, ports), possibly overlapping.
    blocks: Vec<(u32, u32, PortSet)>,
}

impl DirRulesBuilder {
    /// Allows `ports` with one peer address (a pod's).
    pub fn allow_peer(&mut self, peer: Ipv4Addr, ports: &PortSet) {
        if ports.is_empty() {
            return;
        }
        let e = self.exact.entry(u32::from(peer)).or_default();
        *e = e.union(ports);
    }

    /// Allows `ports` with every address from `first` to `last`.
    pub fn allow_range(&mut self, first: Ipv4Addr, last: Ipv4Addr, ports: &PortSet) {
        let (first, last) = (u32::from(first), u32::from(last));
        if first <= last && !ports.is_empty() {
            self.blocks.push((first, last, ports.clone()));
        }
    }

    pub fn build(self) -> DirRules {
        let mut interned: HashMap<PortSet, SetId> = HashMap::new();
        let mut sets = vec![PortSet::default()];
        interned.insert(PortSet::default(), EMPTY_SET);
        let mut intern = |s: PortSet| -> SetId {
            *interned.entry(s.clone()).or_insert_with(|| {
                sets.push(s);
                (sets.len() - 1) as SetId
            })
        };
        let exact = self
            .exact
            .into_iter()
            .map(|(a, s)| (a, intern(s)))
            .collect();
        // Sweep: boundaries where some block starts or ends; each
        // elementary interval gets the union of the blocks covering it.
        let mut cuts: BTreeSet<u64> = BTreeSet::new();
        cuts.insert(0);
        for &(f, l, _) in &self.blocks {
            cuts.insert(u64::from(f));
            cuts.insert(u64::from(l) + 1);
        }
        let cuts: Vec<u64> = cuts.into_iter().filter(|&c| c <= 0xffff_ffff).collect();
        let mut by_start: Vec<&(u32, u32, PortSet)> = self.blocks.iter().collect();
        by_start.sort_by_key(|b| b.0);
        let mut next_block = 0;
        let mut active: Vec<&(u32, u32, PortSet)> = Vec::new();
        let mut starts: Vec<u32> = Vec::with_capacity(cuts.len());
        let mut range_sets: Vec<SetId> = Vec::with_capacity(cuts.len());
        for &c in &cuts {
            let c32 = c as u32;
            active.retain(|b| u64::from(b.1) >= c);
            while next_block < by_start.len() && by_start[next_block].0 == c32 {
                active.push(by_start[next_block]);
                next_block += 1;
            }
            let set = active
                .iter()
                .fold(PortSet::default(), |acc, b| acc.union(&b.2));
            let id = intern(set);
            // Merge with the previous interval when the set is the same.
            if range_sets.last() == Some(&id) {
                continue;
            }
            starts.push(c32);
            range_sets.push(id);
        }
        DirRules {
            exact,
            starts: starts.into_boxed_slice(),
            range_sets: range_sets.into_boxed_slice(),
            sets: sets.into_boxed_slice(),
        }
    }
}

/// One local pod's compiled policy: `None` for a direction in which no
/// policy selects it (not isolated: everything allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRules {
    pub ingress: Option<DirRules>,
    pub egress: Option<DirRules>,
}

/// What a policy check decided about a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    DenyEgress,
    DenyIngress,
}

/// An immutable snapshot of every local pod's compiled policy.
#[derive(Clone, Debug, Default)]
pub struct PolicyTable {
    pods: AddrMap<PodRules>,
    node_addrs: HashSet<u32, KeyHash>,
    generation: u64,
}

impl PolicyTable {
    pub fn new(pods: HashMap<Ipv4Addr, PodRules>, node_addrs: &[Ipv4Addr]) -> PolicyTable {
        PolicyTable {
            pods: pods
                .into_iter()
                .filter(|(_, r)| r.ingress.is_some() || r.egress.is_some())
                .map(|(a, r)| (u32::from(a), r))
                .collect(),
            node_addrs: node_addrs.iter().map(|&a| u32::from(a)).collect(),
            generation: 0,
        }
    }

    /// No pod is isolated: the policy stage has nothing to do.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Incremented by every publish.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn pod(&self, ip: Ipv4Addr) -> Option<&PodRules> {
        self.pods.get(&u32::from(ip))
    }

    /// May a new connection from `src` to `dst` (`proto`, destination
    /// `port`) start? The source's egress rules apply if `src` is an
    /// isolated local pod, the destination's ingress rules if `dst` is one.
    #[inline]
    pub fn check(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Decision {
        if self.pods.is_empty() {
            return Decision::Allow;
        }
        let (s, d) = (u32::from(src), u32::from(dst));
        if let Some(egress) = self.pods.get(&s).and_then(|p| p.egress.as_ref()) {
            if !self.node_addrs.contains(&d) && !egress.allows(dst, proto, port) {
                return Decision::DenyEgress;
            }
        }
        if let Some(ingress) = self.pods.get(&d).and_then(|p| p.ingress.as_ref()) {
            if !self.node_addrs.contains(&s) && !ingress.allows(src, proto, port) {
                return Decision::DenyIngress;
            }
        }
        Decision::Allow
    }
}

/// The published policy: the control thread swaps snapshots in, workers
/// load one per batch without blocking.
pub struct Policies {
    current: ArcSwap<PolicyTable>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            current: ArcSwap::from_pointee(PolicyTable::default()),
        }
    }
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.current.load();
        f.debug_struct("Policies")
            .field("isolated_pods", &t.pods.len())
            .field("generation", &t.generation)
            .finish()
    }
}

impl Policies {
    pub fn new() -> Policies {
        Policies::default()
    }

    /// The current snapshot (cheap; once per batch).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<PolicyTable>> {
        self.current.load()
    }

    /// Publishes `table` (its generation set to the previous one's + 1).
    /// Single writer: the control thread.
    pub fn publish(&self, mut table: PolicyTable) {
        table.generation = self.current.load().generation + 1;
        self.current.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn tcp(lo: u16, hi: u16) -> PortRange {
        PortRange {
            proto: PROTO_TCP,
            lo,
            hi,
        }
    }
    fn udp(lo: u16, hi: u16) -> PortRange {
        PortRange {
            proto: PROTO_UDP,
            lo,
            hi,
        }
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn port_sets_merge_and_answer() {
        let s = PortSet::of([
            tcp(80, 81),
            tcp(82, 90),
            udp(53, 53),
            tcp(443, 443),
            tcp(5, 1),
        ]);
        assert_eq!(s.ranges(), &[tcp(80, 90), tcp(443, 443), udp(53, 53)]);
        assert_eq!(s.to_string(), "tcp/80-90,tcp/443,udp/53");
        for (proto, port, want) in [
            (PROTO_TCP, 79, false),
            (PROTO_TCP, 80, true),
            (PROTO_TCP, 90, true),
            (PROTO_TCP, 91, false),
            (PROTO_TCP, 443, true),
            (PROTO_UDP, 53, true),
            (PROTO_UDP, 80, false),
            (PROTO_SCTP, 80, false),
            (PROTO_ICMP, 0, false),
        ] {
            assert_eq!(s.contains(proto, port), want, "{proto}/{port}");
        }
        assert!(PortSet::any().contains(PROTO_ICMP, 0));
        assert!(PortSet::default().is_empty());
        assert!(!PortSet::default().contains(PROTO_TCP, 80));
        assert!(s.union(&PortSet::any()).is_any());
        let full = PortSet::of([tcp(0, 65535), tcp(100, 200)]);
        assert_eq!(full.ranges(), &[tcp(0, 65535)]);
    }

    #[test]
    fn exact_and_ranges_add_up() {
        let mut b = DirRulesBuilder::default();
        b.allow_peer(ip("10.0.0.5"), &PortSet::of([tcp(80, 80)]));
        b.allow_peer(ip("10.0.0.5"), &PortSet::of([udp(53, 53)]));
        // 10.1.0.0/16 except 10.1.2.0/24, TCP 443.
        let https = PortSet::of([tcp(443, 443)]);
        b.allow_range(ip("10.1.0.0"), ip("10.1.1.255"), &https);
        b.allow_range(ip("10.1.3.0"), ip("10.1.255.255"), &https);
        // 10.1.0.0/24 also on 8080 (overlap).
        b.allow_range(
            ip("10.1.0.0"),
            ip("10.1.0.255"),
            &PortSet::of([tcp(8080, 8080)]),
        );
        let r = b.build();
        assert!(r.allows(ip("10.0.0.5"), PROTO_TCP, 80));
        assert!(r.allows(ip("10.0.0.5"), PROTO_UDP, 53));
        assert!(!r.allows(ip("10.0.0.5"), PROTO_TCP, 53));
        assert!(!r.allows(ip("10.0.0.6"), PROTO_TCP, 80));
        assert!(r.allows(ip("10.1.0.7"), PROTO_TCP, 443));
        assert!(r.allows(ip("10.1.0.7"), PROTO_TCP, 8080));
        assert!(!r.allows(ip("10.1.1.7"), PROTO_TCP, 8080));
        assert!(r.allows(ip("10.1.1.7"), PROTO_TCP, 443));
        assert!(!r.allows(ip("10.1.2.7"), PROTO_TCP, 443));
        assert!(r.allows(ip("10.1.255.255"), PROTO_TCP, 443));
        assert!(!r.allows(ip("10.2.0.0"), PROTO_TCP, 443));
        assert!(!r.allows(ip("0.0.0.0"), PROTO_TCP, 443));
        assert!(!r.allows(ip("255.255.255.255"), PROTO_TCP, 443));
        let (exact, ranges) = r.describe();
        assert_eq!(exact, vec![(ip("10.0.0.5"), "tcp/80,udp/53".to_string())]);
        assert_eq!(ranges.len(), 3);
    }

    #[test]
    fn the_whole_space_and_its_edges() {
        let mut b = DirRulesBuilder::default();
        b.allow_range(ip("0.0.0.0"), ip("255.255.255.255"), &PortSet::any());
        let r = b.build();
        assert!(r.allows(ip("0.0.0.0"), PROTO_ICMP, 0));
        assert!(r.allows(ip("255.255.255.255"), PROTO_SCTP, 9));
        assert_eq!(r.size(), (0, 1));
        // No rule at all: nothing allowed.
        let r = DirRulesBuilder::default().build();
        assert!(!r.allows(ip("10.0.0.1"), PROTO_TCP, 80));
    }

    #[test]
    fn ranges_match_a_plain_scan() {
        // Random overlapping blocks: the compiled intervals answer like a
        // scan over every block.
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut b = DirRulesBuilder::default();
            let mut blocks = Vec::new();
            for _ in 0..rng.gen_range(0..20) {
                let f: u32 = rng.gen_range(0..1000);
                let l = f + rng.gen_range(0..200);
                let lo = rng.gen_range(1..100);
                let s = PortSet::of([tcp(lo, lo + rng.gen_range(0..5))]);
                b.allow_range(Ipv4Addr::from(f), Ipv4Addr::from(l), &s);
                blocks.push((f, l, s));
            }
            let r = b.build();
            for _ in 0..500 {
                let a: u32 = rng.gen_range(0..1300);
                let port = rng.gen_range(0..110);
                let want = blocks
                    .iter()
                    .any(|(f, l, s)| *f <= a && a <= *l && s.contains(PROTO_TCP, port));
                assert_eq!(r.allows(Ipv4Addr::from(a), PROTO_TCP, port), want);
            }
        }
    }

    #[test]
    fn table_checks_both_ends_and_lets_the_node_through() {
        let node = ip("192.168.0.1");
        let (a, b, c) = (ip("10.244.0.2"), ip("10.244.0.3"), ip("10.244.0.4"));
        let mut ing = DirRulesBuilder::default();
        ing.allow_peer(a, &PortSet::of([tcp(80, 80)]));
        let egress_none = DirRulesBuilder::default().build();
        let mut pods = HashMap::new();
        pods.insert(
            b,
            PodRules {
                ingress: Some(ing.build()),
                egress: None,
            },
        );
        pods.insert(
            c,
            PodRules {
                ingress: None,
                egress: Some(egress_none),
            },
        );
        let t = PolicyTable::new(pods, &[node]);
        assert_eq!(t.check(a, b, PROTO_TCP, 80), Decision::Allow);
        assert_eq!(t.check(a, b, PROTO_TCP, 81), Decision::DenyIngress);
        assert_eq!(t.check(c, b, PROTO_TCP, 80), Decision::DenyEgress);
        assert_eq!(t.check(node, b, PROTO_TCP, 81), Decision::Allow);
        assert_eq!(t.check(c, node, PROTO_UDP, 53), Decision::Allow);
        assert_eq!(t.check(a, c, PROTO_TCP, 1), Decision::Allow);
        let p = Policies::new();
        assert!(p.load().is_empty());
        p.publish(t);
        assert_eq!(p.load().generation(), 1);
        assert_eq!(p.load().check(a, b, PROTO_TCP, 81), Decision::DenyIngress);
    }
}
