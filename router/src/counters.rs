//! Per-worker counters: rx, tx, drops by named reason, ICMP and ARP events,
//! per-port packet/byte counts, and tunnel packet/byte counts per peer
//! node (indexed by the FIB's node slot, [`crate::fib::FibTable::node_slot`]).
//!
//! Invariants: each [`WorkerCounters`] has exactly one writer (its worker),
//! so increments are a relaxed load and store, never a locked instruction;
//! readers (the control thread) sum snapshots of all workers.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

use crate::fib::NODE_SLOTS;
use crate::port::{PortId, MAX_PORTS};

/// A counter written by one thread and read by any.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a plain load/store pair is enough and stays off the
        // bus lock that fetch_add would take.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn incr(&self) {
        self.add(1)
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a frame was dropped. Every drop is counted under one of these.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The snake_case name operators see in counters.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }

            /// What the reason means, for people.
            pub fn description(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $doc,)*
                }
            }
        }
    };
}

drop_reasons! {
    Truncated => "truncated", "Frame shorter than the headers it claims.";
    UnsupportedEthertype => "unsupported_ethertype", "Neither IPv4 nor ARP (IPv6, VLAN tags, ...).";
    NotForRouter => "not_for_router", "Destination MAC is neither the router's nor broadcast.";
    BadIpHeader => "bad_ip_header", "IPv4 version, IHL or total length is invalid.";
    BadIpChecksum => "bad_ip_checksum", "IPv4 header checksum does not verify.";
    BadSource => "bad_source", "Source address is zero, broadcast, multicast or loopback.";
    SpoofedSource => "spoofed_source", "A pod sent with a source address that is not its own.";
    Multicast => "multicast", "Multicast or broadcast destination (MAC or IPv4); the router does not forward them.";
    NoRoute => "no_route", "No route for the destination (ICMP unreachable sent if allowed).";
    TtlExceeded => "ttl_exceeded", "TTL ran out (ICMP time exceeded sent if allowed).";
    FragNeeded => "frag_needed", "Too big for the egress MTU with DF set (ICMP frag needed sent if allowed).";
    TooBig => "too_big", "Too big for the egress MTU without DF on a pod or host port (only the uplink fragments).";
    NoUplink => "no_uplink", "Route to another node, but no uplink is configured on this node.";
    IpipMalformed => "ipip_malformed", "IPIP from the uplink whose outer or inner IPv4 header is invalid or truncated, or that is an outer fragment or not protocol 4.";
    IpipNotForNode => "ipip_not_for_node", "IPIP whose outer destination is not this node's address.";
    IpipUnknownNode => "ipip_unknown_node", "IPIP from an address that is not a known node (no route goes via it).";
    IpipNotLocal => "ipip_not_local", "Decapsulated packet whose destination is not a pod on this node (never forwarded back out; ICMP unreachable sent for unassigned pod addresses).";
    VxlanMalformed => "vxlan_malformed", "VXLAN from the uplink that is truncated, not IPv4/UDP without options, an outer fragment, has lengths that do not add up, a bad outer checksum, no VNI flag, or offload metadata that cannot be mapped to the inner frame.";
    VxlanNotForNode => "vxlan_not_for_node", "VXLAN whose outer destination is not this node's address.";
    VxlanUnknownNode => "vxlan_unknown_node", "VXLAN from an address that is not a known node (no route goes via it).";
    VxlanWrongVni => "vxlan_wrong_vni", "VXLAN with a VNI other than this node's vxlan_vni.";
    VxlanNotOurMac => "vxlan_not_our_mac", "VXLAN whose inner Ethernet destination is not this node's VTEP MAC (broadcast and ARP included: VTEPs have static neighbours).";
    VxlanNotLocal => "vxlan_not_local", "Packet decapsulated from VXLAN whose destination is not a pod on this node (never forwarded back out; ICMP unreachable sent for unassigned pod addresses).";
    TunnelSpoofedSource => "tunnel_spoofed_source", "Decapsulated packet whose inner source is neither the sending node nor routed back to it (one of our pods, another node's block, the outside world).";
    GsoUnsupported => "gso_unsupported", "A GSO frame for the uplink that is not TCP over IPv4 or whose headers do not match its offload request.";
    GsoSegmentTooSmall => "gso_segment_too_small", "A GSO frame from a pod whose segment size (gso_size) is below 536, IPv4's default MSS: it would become hundreds of packets.";
    Hairpin => "hairpin", "The route points back out of the port the frame came in on.";
    NoPort => "no_port", "The route names a port that no longer exists.";
    ArpMalformed => "arp_malformed", "ARP that is not Ethernet/IPv4 or is truncated.";
    ArpNotRequest => "arp_not_request", "ARP reply or other operation; only requests are answered.";
    ArpGratuitous => "arp_gratuitous", "Gratuitous ARP or ARP probe (target is the sender's own or source is 0.0.0.0).";
    ArpWrongSource => "arp_wrong_source", "ARP whose sender address is not the pod's own.";
    ArpRateLimited => "arp_rate_limited", "ARP request from a pod beyond its port's reply rate (proxy ARP is rate-limited per port).";
    ArpNotAnswered => "arp_not_answered", "ARP on the host port for an address the router does not route.";
    TxError => "tx_error", "The egress port refused the frame.";
    PolicyDeniedIngress => "policy_denied_ingress", "A new connection the destination pod's NetworkPolicy ingress rules do not allow.";
    PolicyDeniedEgress => "policy_denied_egress", "A new connection the source pod's NetworkPolicy egress rules do not allow.";
    ServiceNoBackend => "service_no_backend", "A new flow to a ClusterIP port with no ready backend, or to a port the ClusterIP does not serve (built-in load balancer; TCP reset or ICMP port unreachable sent if allowed).";
    ServiceUntranslatable => "service_untranslatable", "A packet to a ClusterIP the built-in load balancer cannot translate: a fragment, ICMP, or a protocol other than TCP, UDP, SCTP.";
    ServiceFlowsFull => "service_flows_full", "A new flow to a ClusterIP refused because the flow table had no room for its reply translation.";
    PathMtuExceeded => "path_mtu_exceeded", "Fits the uplink but, with DF set, not the path MTU to the node learned from the underlay's ICMP frag needed (ICMP frag needed sent with that path MTU minus the tunnel overhead).";
}

/// Packets and bytes through one port, as seen by one worker.
#[derive(Default)]
pub struct PortCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub drops: Counter,
    /// Connections to this port's pod refused by its ingress policy.
    pub policy_denied_ingress: Counter,
    /// Connections from this port's pod refused by its egress policy.
    pub policy_denied_egress: Counter,
}

/// Tunnel traffic with one peer node, as seen by one worker: frames
/// handed to the tunnel for the node (sent) and decapsulated from it
/// (received: outer checks passed, before the inner packet's). A GSO frame
/// counts once; bytes are those of the inner IPv4 packet.
#[derive(Default)]
pub struct TunnelCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
}

/// Everything one worker counts.
pub struct WorkerCounters {
    pub rx: Counter,
    pub tx: Counter,
    /// Times the worker went to sleep waiting for readiness.
    pub sleeps: Counter,
    /// Frames read back from the host port in the round that wrote to it
    /// (what the node's stack sent out of `podrouter0` inside the write,
    /// see the worker's `chase_host`), without another epoll round.
    pub host_inline: Counter,
    /// Times busy polling stopped spinning for a while because the
    /// scheduler took the worker's CPU (see [`crate::busy_poll`]).
    pub busy_poll_backoffs: Counter,
    /// Long gaps in a spin that were no preemption (interrupt work, the
    /// host of a virtual machine): the spin went on.
    pub busy_poll_stalls: Counter,
    pub arp_replies: Counter,
    pub icmp_sent: Counter,
    /// ICMP errors suppressed by the rate limiter (the drop is still counted).
    pub icmp_rate_limited: Counter,
    /// Flows the node's kernel NATed, newly entered in the flow table.
    pub flows_inserted: Counter,
    /// Such flows the flow table had no room for (their replies go
    /// straight to the pod).
    pub flows_full: Counter,
    /// Packets of such flows' reply direction (and ICMP errors about
    /// them) sent to the host port instead of a pod.
    pub flows_steered: Counter,
    /// TCP resets the built-in load balancer sent (no ready backend).
    pub tcp_resets_sent: Counter,
    /// New connections network policy checked and allowed (then tracked).
    pub policy_allowed: Counter,
    /// Nanoseconds spent in rounds that received frames (receive, pipeline,
    /// flush), read from the batch clock twice per such round; the rest of
    /// the worker's life is idle polling and sleeping.
    pub busy_ns: Counter,
    /// Nanoseconds of wall time the worker polled on, instead of sleeping,
    /// because busy polling kept it awake (empty rounds and the polls
    /// between them; a preemption left out): the price of busy polling.
    pub spin_ns: Counter,
    drops: [Counter; DropReason::COUNT],
    ports: Box<[PortCounters]>,
    tunnels: Box<[TunnelCounters]>,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            rx: Counter::default(),
            tx: Counter::default(),
            sleeps: Counter::default(),
            host_inline: Counter::default(),
            busy_poll_backoffs: Counter::default(),
            busy_poll_stalls: Counter::default(),
            arp_replies: Counter::default(),
            icmp_sent: Counter::default(),
            icmp_rate_limited: Counter::default(),
            flows_inserted: Counter::default(),
            flows_full: Counter::default(),
            flows_steered: Counter::default(),
            tcp_resets_sent: Counter::default(),
            policy_allowed: Counter::default(),
            busy_ns: Counter::default(),
            spin_ns: Counter::default(),
            drops: std::array::from_fn(|_| Counter::default()),
            ports: (0..MAX_PORTS).map(|_| PortCounters::default()).collect(),
            tunnels: (0..NODE_SLOTS).map(|_| TunnelCounters::default()).collect(),
        }
    }
}

/// Cache-padded so two workers never share a line.
pub type SharedCounters = CachePadded<WorkerCounters>;

impl WorkerCounters {
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason as usize].incr();
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// Per-port counters; ids beyond [`MAX_PORTS`] share the last slot
    /// (the port table never hands them out).
    #[inline]
    pub fn port(&self, id: PortId) -> &PortCounters {
        &self.ports[(id.0 as usize).min(MAX_PORTS - 1)]
    }

    /// Tunnel counters of the node in FIB node slot `slot`; slots beyond
    /// [`NODE_SLOTS`] share the last one (the FIB never hands them out).
    #[inline]
    pub fn tunnel(&self, slot: u16) -> &TunnelCounters {
        &self.tunnels[usize::from(slot).min(NODE_SLOTS - 1)]
    }

    /// Zeroes a port's counters when its id is reused (control thread).
    pub fn reset_port(&self, id: PortId) {
        let p = self.port(id);
        for c in [
            &p.rx_packets,
            &p.rx_bytes,
            &p.tx_packets,
            &p.tx_bytes,
            &p.drops,
            &p.policy_denied_ingress,
            &p.policy_denied_egress,
        ] {
            c.0.store(0, Relaxed);
        }
    }
}

/// A plain-number copy of counters, summed over workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub rx: u64,
    pub tx: u64,
    pub sleeps: u64,
    pub host_inline: u64,
    pub busy_poll_backoffs: u64,
    pub busy_poll_stalls: u64,
    pub arp_replies: u64,
    pub icmp_sent: u64,
    pub icmp_rate_limited: u64,
    pub flows_inserted: u64,
    pub flows_full: u64,
    pub flows_steered: u64,
    pub tcp_resets_sent: u64,
    pub policy_allowed: u64,
    /// `(reason, count)` for every reason, in [`DropReason::ALL`] order.
    pub drops: Vec<(DropReason, u64)>,
}

/// Per-port numbers summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    pub policy_denied_ingress: u64,
    pub policy_denied_egress: u64,
}

/// One peer node's tunnel numbers summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Sums one node slot's tunnel counters over all workers.
pub fn sum_tunnel<'a>(
    workers: impl IntoIterator<Item = &'a WorkerCounters>,
    slot: u16,
) -> TunnelSnapshot {
    let mut s = TunnelSnapshot::default();
    for w in workers {
        let t = w.tunnel(slot);
        s.rx_packets += t.rx_packets.get();
        s.rx_bytes += t.rx_bytes.get();
        s.tx_packets += t.tx_packets.get();
        s.tx_bytes += t.tx_bytes.get();
    }
    s
}

/// Every peer node's tunnel numbers summed over workers, in `fib`'s slot
/// order: `(Some(node), numbers)` for each node that has had a slot, then
/// `(None, numbers)` for the shared overflow slot if anything counted
/// there. Control thread only (allocates).
pub fn sum_tunnels<'a>(
    fib: &crate::fib::FibTable,
    workers: impl IntoIterator<Item = &'a WorkerCounters> + Clone,
) -> Vec<(Option<std::net::Ipv4Addr>, TunnelSnapshot)> {
    let mut v: Vec<_> = fib
        .node_slot_addrs()
        .iter()
        .enumerate()
        .map(|(slot, &node)| (Some(node), sum_tunnel(workers.clone(), slot as u16)))
        .collect();
    let other = sum_tunnel(workers, crate::fib::NODE_SLOT_OTHER);
    if other != TunnelSnapshot::default() {
        v.push((None, other));
    }
    v
}

/// Sums the counters of all workers.
pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> CounterSnapshot {
    let mut s = CounterSnapshot {
        drops: DropReason::ALL.iter().map(|r| (*r, 0)).collect(),
        ..Default::default()
    };
    for w in workers {
        s.rx += w.rx.get();
        s.tx += w.tx.get();
        s.sleeps += w.sleeps.get();
        s.host_inline += w.host_inline.get();
        s.busy_poll_backoffs += w.busy_poll_backoffs.get();
        s.busy_poll_stalls += w.busy_poll_stalls.get();
        s.arp_replies += w.arp_replies.get();
        s.icmp_sent += w.icmp_sent.get();
        s.icmp_rate_limited += w.icmp_rate_limited.get();
        s.flows_inserted += w.flows_inserted.get();
        s.flows_full += w.flows_full.get();
        s.flows_steered += w.flows_steered.get();
        s.tcp_resets_sent += w.tcp_resets_sent.get();
        s.policy_allowed += w.policy_allowed.get();
        for (i, d) in s.drops.iter_mut().enumerate() {
            d.1 += w.drops[i].get();
        }
    }
    s
}

/// Sums one port's counters over all workers.
pub fn sum_port<'a>(
    workers: impl IntoIterator<Item = &'a WorkerCounters>,
    id: PortId,
) -> PortSnapshot {
    let mut s = PortSnapshot::default();
    for w in workers {
        let p = w.port(id);
        s.rx_packets += p.rx_packets.get();
        s.rx_bytes += p.rx_bytes.get();
        s.tx_packets += p.tx_packets.get();
        s.tx_bytes += p.tx_bytes.get();
        s.drops += p.drops.get();
        s.policy_denied_ingress += p.policy_denied_ingress.get();
        s.policy_denied_egress += p.policy_denied_egress.get();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_workers() {
        let a = WorkerCounters::default();
        let b = WorkerCounters::default();
        a.rx.add(3);
        b.rx.incr();
        a.drop(DropReason::SpoofedSource);
        b.drop(DropReason::SpoofedSource);
        b.port(PortId(7)).tx_bytes.add(100);
        let s = sum([&a, &b]);
        assert_eq!(s.rx, 4);
        let spoofed = s
            .drops
            .iter()
            .find(|(r, _)| *r == DropReason::SpoofedSource)
            .unwrap();
        assert_eq!(spoofed.1, 2);
        assert_eq!(sum_port([&a, &b], PortId(7)).tx_bytes, 100);
        b.reset_port(PortId(7));
        assert_eq!(sum_port([&a, &b], PortId(7)).tx_bytes, 0);
        a.tunnel(2).tx_packets.incr();
        b.tunnel(2).tx_bytes.add(84);
        a.tunnel(3).rx_packets.incr();
        let t = sum_tunnel([&a, &b], 2);
        assert_eq!((t.tx_packets, t.tx_bytes, t.rx_packets), (1, 84, 0));
        assert_eq!(sum_tunnel([&a, &b], 3).rx_packets, 1);
        // Out-of-range slots land in the last one, never panic.
        a.tunnel(u16::MAX).rx_bytes.add(5);
        assert_eq!(sum_tunnel([&a], (NODE_SLOTS - 1) as u16).rx_bytes, 5);
    }

    #[test]
    fn reason_names_are_unique_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
