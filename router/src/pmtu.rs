//! Path MTU towards other nodes, learned from the underlay's ICMP
//! "fragmentation needed", so a link narrower than the uplink's between
//! two nodes is no black hole.
//!
//! # How it is learned
//!
//! A router on the underlay that cannot forward one of our outer packets
//! (DF set, too big for its next link) answers the node with ICMP type 3
//! code 4, quoting our outer header and carrying its next-hop MTU. The
//! node's kernel learns it for the IPIP raw socket (its PMTU cache; later
//! too-big DF sends fail with `EMSGSIZE` and a local frag-needed), but
//! not for VXLAN, whose outer packets it only forwards from our TAP. One
//! receive-only raw ICMP socket, filtered in the kernel to type 3 code 4
//! ([`crate::sys::icmp_frag_needed_socket`]), sees both: the router's
//! message and the kernel's local one. [`PmtuLearner`] accepts a message
//! only if the quoted packet is ours ([`OuterMatch`]: from `node_ip`,
//! protocol 4 for IPIP, UDP to the VXLAN port for VXLAN) and its MTU is
//! below the uplink's link MTU; MTUs below [`MIN_PMTU`] are raised to it
//! (the kernel's `min_pmtu`), so a forged message cannot shrink the path
//! further than the kernel's would.
//!
//! # Expiry
//!
//! As the kernel's: an entry lives `net.ipv4.route.mtu_expires` seconds
//! (read at start, 600 by default) after the last message that confirmed
//! or lowered it; then it is removed and the full link MTU is tried
//! again, so a path that grew back is used again.
//!
//! # Who reads it
//!
//! [`PathMtus`] holds an immutable [`PathMtuSnapshot`] (node -> outer
//! path MTU, sorted) swapped whole by the learner thread, the only writer. A worker loads it
//! once per batch; the pipeline looks a node up only for frames to the
//! tunnel, and only when the snapshot is not empty, so a node whose paths
//! are all wide pays one length check. The pipeline answers DF packets
//! that no longer fit with ICMP frag needed carrying the path MTU minus
//! the tunnel overhead ([`PathMtuSnapshot::inner_mtu`]); the VXLAN port
//! fragments packets without DF to it.
//!
//! Invariants: the snapshot is bounded ([`MAX_ENTRIES`] nodes; messages
//! beyond are ignored and counted); nothing here trusts a received byte;
//! the thread only reads its socket and swaps the snapshot.
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;

use crate::sys;
use crate::wire::IPV4_HEADER_LEN;

/// The smallest path MTU accepted (the kernel's `net.ipv4.route.min_pmtu`
/// default): lower values in an ICMP message are raised to it.
pub const MIN_PMTU: u16 = 552;

/// Most nodes with a learned path MTU at once.
pub const MAX_ENTRIES: usize = 4096;

/// The kernel's default `net.ipv4.route.mtu_expires`, in seconds.
pub const DEFAULT_EXPIRY_SECS: u64 = 600;

/// How often the learner thread wakes up to expire entries and check for
/// stop, in milliseconds.
const TICK_MS: i32 = 200;

const ICMP_DEST_UNREACHABLE: u8 = 3;
const CODE_FRAG_NEEDED: u8 = 4;
const IPPROTO_UDP: u8 = 17;

/// What our outer packets look like, so a quoted packet can be told apart
/// from anyone else's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OuterKind {
    /// IPIP: IP protocol 4.
    Ipip,
    /// VXLAN: UDP to this destination port.
    Vxlan { port: u16 },
}

impl OuterKind {
    /// Bytes the tunnel adds in front of an inner IPv4 packet on the path:
    /// the outer IPv4 header (IPIP), or outer IPv4, UDP, VXLAN and the
    /// inner Ethernet header (VXLAN).
    pub fn overhead(self) -> u16 {
        match self {
            OuterKind::Ipip => IPV4_HEADER_LEN as u16,
            OuterKind::Vxlan { .. } => crate::vxlan::MTU_OVERHEAD,
        }
    }
}

/// Which ICMP messages are about our outer packets.
#[derive(Clone, Copy, Debug)]
pub struct OuterMatch {
    /// The node's address: the source of every outer packet.
    pub node_ip: Ipv4Addr,
    pub kind: OuterKind,
    /// The uplink's MTU: a path MTU at or above it is no news.
    pub link_mtu: u16,
}

/// A path MTU an ICMP message reports for one of our outer packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragNeeded {
    /// The node the quoted packet was going to.
    pub node: Ipv4Addr,
    /// The next-hop MTU the message carries (at least [`MIN_PMTU`]).
    pub mtu: u16,
    /// Who sent the message (a router on the underlay, or this node).
    pub from: Ipv4Addr,
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Reads an ICMP "fragmentation needed" about one of our outer packets out
/// of `ip` (a whole IPv4 packet as a raw socket returns it). `None` for
/// anything else: another type, a truncated or malformed message, a quoted
/// packet that is not ours, no MTU (pre-RFC 1191 routers send 0), or an
/// MTU at or above the link MTU.
pub fn parse_frag_needed(ip: &[u8], m: &OuterMatch) -> Option<FragNeeded> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HEADER_LEN || ip.len() < ihl + 8 {
        return None;
    }
    let from = addr(&ip[12..16]);
    let icmp = &ip[ihl..];
    if icmp[0] != ICMP_DEST_UNREACHABLE || icmp[1] != CODE_FRAG_NEEDED {
        return None;
    }
    let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
    // The quoted header, and the 8 bytes after it every router quotes.
    let quoted = &icmp[8..];
    let qihl = usize::from(*quoted.first()? & 0x0f) * 4;
    if quoted[0] >> 4 != 4 || qihl < IPV4_HEADER_LEN || quoted.len() < qihl + 8 {
        return None;
    }
    if addr(&quoted[12..16]) != m.node_ip {
        return None;
    }
    let ours = match m.kind {
        OuterKind::Ipip => quoted[9] == crate::wire::IPPROTO_IPIP,
        OuterKind::Vxlan { port } => {
            quoted[9] == IPPROTO_UDP
                && u16::from_be_bytes([quoted[qihl + 2], quoted[qihl + 3]]) == port
        }
    };
    if !ours || mtu == 0 || mtu >= m.link_mtu {
        return None;
    }
    Some(FragNeeded {
        node: addr(&quoted[16..20]),
        mtu: mtu.max(MIN_PMTU),
        from,
    })
}

/// The learned path MTUs as the data plane sees them: outer path MTU per
/// node, sorted by address. Immutable; see [`PathMtus`].
#[derive(Debug, Default)]
pub struct PathMtuSnapshot {
    entries: Box<[(u32, u16)]>,
    kind: Option<OuterKind>,
}

impl PathMtuSnapshot {
    /// A snapshot of `entries` (node, outer path MTU) for a `kind`
    /// tunnel; a node given twice keeps its smallest MTU.
    pub fn new(kind: OuterKind, entries: &[(Ipv4Addr, u16)]) -> PathMtuSnapshot {
        let mut v: Vec<(u32, u16)> = entries.iter().map(|&(n, m)| (u32::from(n), m)).collect();
        v.sort_unstable();
        v.dedup_by_key(|e| e.0);
        PathMtuSnapshot {
            entries: v.into(),
            kind: Some(kind),
        }
    }

    /// The outer path MTU learned for `node`, if any.
    #[inline]
    pub fn outer_mtu(&self, node: Ipv4Addr) -> Option<u16> {
        if self.entries.is_empty() {
            return None;
        }
        let key = u32::from(node);
        self.entries
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// The largest inner packet that fits the path to `node`, if a path
    /// MTU was learned for it: the outer path MTU minus the tunnel's
    /// overhead.
    #[inline]
    pub fn inner_mtu(&self, node: Ipv4Addr) -> Option<u16> {
        let kind = self.kind?;
        let outer = self.outer_mtu(node)?;
        Some(outer.saturating_sub(kind.overhead()))
    }

    /// Every entry: node and outer path MTU.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, u16)> + '_ {
        self.entries.iter().map(|&(n, m)| (Ipv4Addr::from(n), m))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The published path MTUs and what the learner counted. One writer (the
/// learner thread), any number of readers.
#[derive(Debug, Default)]
pub struct PathMtus {
    current: ArcSwap<PathMtuSnapshot>,
    /// Messages that set or lowered a node's path MTU.
    pub learned: AtomicU64,
    /// Messages that confirmed a known path MTU (expiry renewed).
    pub confirmed: AtomicU64,
    /// Entries removed because they expired.
    pub expired: AtomicU64,
    /// Messages about our packets not taken: a higher MTU than known, or
    /// the table full.
    pub ignored: AtomicU64,
}

impl PathMtus {
    pub fn new() -> PathMtus {
        PathMtus::default()
    }

    /// The current snapshot (a worker loads it once per batch).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<PathMtuSnapshot>> {
        self.current.load()
    }

    /// The current snapshot, owned.
    pub fn snapshot(&self) -> Arc<PathMtuSnapshot> {
        self.current.load_full()
    }

    fn publish(&self, s: PathMtuSnapshot) {
        self.current.store(Arc::new(s));
    }
}

/// The learner's state: every learned entry with its expiry. Pure (time
/// is passed in); [`PmtuWatcher`] drives it from the socket.
pub struct PmtuLearner {
    m: OuterMatch,
    expiry_ns: u64,
    /// node -> (outer path MTU, expires at).
    entries: BTreeMap<Ipv4Addr, (u16, u64)>,
    shared: Arc<PathMtus>,
}

impl PmtuLearner {
    /// A learner for outer packets matching `m`, whose entries live
    /// `expiry_secs`, publishing into `shared`.
    pub fn new(m: OuterMatch, expiry_secs: u64, shared: Arc<PathMtus>) -> PmtuLearner {
        PmtuLearner {
            m,
            expiry_ns: expiry_secs.max(1).saturating_mul(1_000_000_000),
            entries: BTreeMap::new(),
            shared,
        }
    }

    /// Takes one received ICMP packet at `now_ns`; returns what it taught
    /// (the snapshot is published when it changed).
    pub fn on_icmp(&mut self, ip: &[u8], now_ns: u64) -> Option<FragNeeded> {
        let msg = parse_frag_needed(ip, &self.m)?;
        let expires = now_ns.saturating_add(self.expiry_ns);
        let full = self.entries.len() >= MAX_ENTRIES;
        match self.entries.get_mut(&msg.node) {
            Some((mtu, _)) if msg.mtu > *mtu => {
                // A stale or forged message: a smaller MTU is known; the
                // larger one comes back by expiry only.
                self.shared.ignored.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some((mtu, exp)) if msg.mtu == *mtu => {
                *exp = expires;
                self.shared.confirmed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(e) => {
                *e = (msg.mtu, expires);
                self.shared.learned.fetch_add(1, Ordering::Relaxed);
                self.publish();
                Some(msg)
            }
            None if full => {
                self.shared.ignored.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                self.entries.insert(msg.node, (msg.mtu, expires));
                self.shared.learned.fetch_add(1, Ordering::Relaxed);
                self.publish();
                Some(msg)
            }
        }
    }

    /// Removes entries that expired by `now_ns`; returns the nodes.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Ipv4Addr> {
        let gone: Vec<Ipv4Addr> = self
            .entries
            .iter()
            .filter(|(_, &(_, exp))| exp <= now_ns)
            .map(|(&n, _)| n)
            .collect();
        if !gone.is_empty() {
            for n in &gone {
                self.entries.remove(n);
            }
            self.shared
                .expired
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
            self.publish();
        }
        gone
    }

    fn publish(&self) {
        let entries: Vec<(Ipv4Addr, u16)> = self
            .entries
            .iter()
            .map(|(&n, &(mtu, _))| (n, mtu))
            .collect();
        self.shared
            .publish(PathMtuSnapshot::new(self.m.kind, &entries));
    }
}

/// The kernel's `net.ipv4.route.mtu_expires` in the calling thread's
/// namespace, in seconds ([`DEFAULT_EXPIRY_SECS`] if unreadable).
pub fn kernel_expiry_secs() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/route/mtu_expires")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_EXPIRY_SECS)
}

/// The thread that reads the ICMP socket and drives a [`PmtuLearner`].
/// Dropping it stops the thread (within [`TICK_MS`]) and joins it.
pub struct PmtuWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PmtuWatcher {
    /// Opens the ICMP socket in the calling thread's namespace and starts
    /// the thread.
    pub fn spawn(learner: PmtuLearner) -> io::Result<PmtuWatcher> {
        let fd = sys::icmp_frag_needed_socket()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("podrouter-pmtu".into())
            .spawn({
                let stop = stop.clone();
                move || watch(fd, learner, &stop)
            })?;
        Ok(PmtuWatcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PmtuWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(fd: OwnedFd, mut learner: PmtuLearner, stop: &AtomicBool) {
    let mut buf = vec![0u8; 2048];
    let mut lens = [0usize; 1];
    while !stop.load(Ordering::Relaxed) {
        match sys::wait_readable(fd.as_fd(), TICK_MS) {
            Ok(_) => {}
            Err(e) => {
                log::warn!("path MTU: waiting on the ICMP socket failed, learning stops: {e}");
                return;
            }
        }
        loop {
            match sys::recv_batch(fd.as_fd(), std::iter::once(&mut buf[..]), &mut lens) {
                Ok(1) => {
                    let now = crate::clock::now_ns();
                    if let Some(m) = learner.on_icmp(&buf[..lens[0]], now) {
                        log::info!(
                            "path MTU to node {} is {} (ICMP from {}): larger DF packets to it get frag needed",
                            m.node,
                            m.mtu,
                            m.from
                        );
                    }
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("path MTU: reading the ICMP socket failed: {e}");
                    break;
                }
            }
        }
        for node in learner.expire(crate::clock::now_ns()) {
            log::info!("path MTU to node {node} expired: the link MTU is tried again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
    const NODE_C: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 3);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 254);

    fn ipip() -> OuterMatch {
        OuterMatch {
            node_ip: NODE_A,
            kind: OuterKind::Ipip,
            link_mtu: 1500,
        }
    }

    fn ip_header(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, total: u16) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[6] = 0x40;
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
        h
    }

    /// An ICMP frag needed from `from` with `mtu`, quoting `quoted` (an
    /// IPv4 header plus 8 bytes).
    fn frag_needed(from: Ipv4Addr, ty: u8, code: u8, mtu: u16, quoted: &[u8]) -> Vec<u8> {
        let mut p = ip_header(1, from, NODE_A, (20 + 8 + quoted.len()) as u16);
        p.extend_from_slice(&[ty, code, 0, 0, 0, 0]);
        p.extend_from_slice(&mtu.to_be_bytes());
        p.extend_from_slice(quoted);
        p
    }

    fn quoted_ipip(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut q = ip_header(4, src, dst, 1500);
        q.extend_from_slice(&[0x45, 0, 5, 0xc8, 0, 0, 0x40, 0]);
        q
    }

    fn quoted_udp(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let mut q = ip_header(17, NODE_A, dst, 1500);
        q.extend_from_slice(&[0x9c, 0x40]);
        q.extend_from_slice(&dport.to_be_bytes());
        q.extend_from_slice(&[5, 0xc8, 0, 0]);
        q
    }

    #[test]
    fn parses_only_frag_needed_about_our_outer_packets() {
        let m = ipip();
        let ok = frag_needed(ROUTER, 3, 4, 1400, &quoted_ipip(NODE_A, NODE_B));
        assert_eq!(
            parse_frag_needed(&ok, &m),
            Some(FragNeeded {
                node: NODE_B,
                mtu: 1400,
                from: ROUTER
            })
        );
        // Another code or type.
        let port = frag_needed(ROUTER, 3, 3, 1400, &quoted_ipip(NODE_A, NODE_B));
        assert_eq!(parse_frag_needed(&port, &m), None);
        let ttl = frag_needed(ROUTER, 11, 0, 1400, &quoted_ipip(NODE_A, NODE_B));
        assert_eq!(parse_frag_needed(&ttl, &m), None);
        // Not from this node, not IPIP, no MTU, not smaller than the link.
        let other = frag_needed(ROUTER, 3, 4, 1400, &quoted_ipip(NODE_C, NODE_B));
        assert_eq!(parse_frag_needed(&other, &m), None);
        let udp = frag_needed(ROUTER, 3, 4, 1400, &quoted_udp(NODE_B, 4789));
        assert_eq!(parse_frag_needed(&udp, &m), None);
        let zero = frag_needed(ROUTER, 3, 4, 0, &quoted_ipip(NODE_A, NODE_B));
        assert_eq!(parse_frag_needed(&zero, &m), None);
        let wide = frag_needed(ROUTER, 3, 4, 1500, &quoted_ipip(NODE_A, NODE_B));
        assert_eq!(parse_frag_needed(&wide, &m), None);
        // A tiny MTU is raised to the kernel's floor.
        let tiny = frag_needed(ROUTER, 3, 4, 68, &quoted_ipip(NODE_A, NODE_B));
        assert_eq!(parse_frag_needed(&tiny, &m).unwrap().mtu, MIN_PMTU);
        // Every truncation is refused, never a panic.
        for n in 0..ok.len() {
            assert_eq!(parse_frag_needed(&ok[..n], &m), None, "truncated at {n}");
        }
        // VXLAN: UDP to our port only.
        let vx = OuterMatch {
            kind: OuterKind::Vxlan { port: 4789 },
            ..m
        };
        assert_eq!(parse_frag_needed(&udp, &vx).unwrap().node, NODE_B);
        let other_port = frag_needed(ROUTER, 3, 4, 1400, &quoted_udp(NODE_B, 53));
        assert_eq!(parse_frag_needed(&other_port, &vx), None);
        assert_eq!(parse_frag_needed(&ok, &vx), None);
    }

    #[test]
    fn learns_lowers_ignores_higher_and_expires() {
        let shared = Arc::new(PathMtus::new());
        let mut l = PmtuLearner::new(ipip(), 10, shared.clone());
        let s = 1_000_000_000u64;
        assert!(shared.load().is_empty());
        assert_eq!(shared.load().inner_mtu(NODE_B), None);
        let msg = |mtu| frag_needed(ROUTER, 3, 4, mtu, &quoted_ipip(NODE_A, NODE_B));

        assert!(l.on_icmp(&msg(1400), 0).is_some());
        assert_eq!(shared.load().outer_mtu(NODE_B), Some(1400));
        assert_eq!(shared.load().inner_mtu(NODE_B), Some(1380));
        assert_eq!(shared.load().inner_mtu(NODE_C), None);
        // Higher: ignored (only expiry brings a larger MTU back).
        assert!(l.on_icmp(&msg(1450), s).is_none());
        assert_eq!(shared.load().outer_mtu(NODE_B), Some(1400));
        // Same at 5 s: renews the expiry to 15 s.
        assert!(l.on_icmp(&msg(1400), 5 * s).is_none());
        // Lower: taken.
        assert!(l.on_icmp(&msg(1300), 5 * s).is_some());
        assert_eq!(shared.load().outer_mtu(NODE_B), Some(1300));
        assert!(l.expire(14 * s).is_empty());
        assert_eq!(l.expire(15 * s), vec![NODE_B]);
        assert!(shared.load().is_empty());
        assert_eq!(shared.learned.load(Ordering::Relaxed), 2);
        assert_eq!(shared.confirmed.load(Ordering::Relaxed), 1);
        assert_eq!(shared.ignored.load(Ordering::Relaxed), 1);
        assert_eq!(shared.expired.load(Ordering::Relaxed), 1);
        // Learned again after expiry.
        assert!(l.on_icmp(&msg(1400), 16 * s).is_some());
        assert_eq!(shared.load().len(), 1);
    }

    #[test]
    fn vxlan_overhead_is_fifty() {
        let shared = Arc::new(PathMtus::new());
        let m = OuterMatch {
            kind: OuterKind::Vxlan { port: 4789 },
            ..ipip()
        };
        let mut l = PmtuLearner::new(m, 600, shared.clone());
        let udp = frag_needed(ROUTER, 3, 4, 1400, &quoted_udp(NODE_B, 4789));
        assert!(l.on_icmp(&udp, 0).is_some());
        assert_eq!(shared.load().inner_mtu(NODE_B), Some(1350));
    }

    #[test]
    fn the_table_is_bounded() {
        let shared = Arc::new(PathMtus::new());
        let mut l = PmtuLearner::new(ipip(), 600, shared.clone());
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let node = Ipv4Addr::from(0x0a00_0000 + i);
            let p = frag_needed(ROUTER, 3, 4, 1400, &quoted_ipip(NODE_A, node));
            l.on_icmp(&p, 0);
        }
        assert_eq!(shared.load().len(), MAX_ENTRIES);
        assert_eq!(shared.ignored.load(Ordering::Relaxed), 10);
    }
}
