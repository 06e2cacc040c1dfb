//! The per-frame pipeline: turns one received frame into a [`Verdict`],
//! rewriting it in place on the way (proxy-ARP replies, MAC rewrite and TTL
//! decrement for forwarding, ICMP errors built in the same buffer).
//!
//! # Stages
//!
//! [`Pipeline::process`] runs a frame through these, each in its own file
//! with its tests beside it:
//!
//! 1. [`validate`]: the Ethernet header (for the router? ARP or IPv4?);
//!    then, for IPv4, the header, the source (bogons, a pod's anti-spoofing)
//!    and the destination (no multicast or broadcast).
//! 2. [`arp`]: proxy ARP, answered in place (a pod port's replies are
//!    rate-limited per port).
//! 3. [`decap`]: frames from the uplink: check and strip the outer IPIP
//!    header (runs before IPv4 validation, which then checks the inner
//!    packet), or the outer headers of VXLAN (before the Ethernet check:
//!    what follows them is an Ethernet frame); after IPv4 validation,
//!    [`decap::check_inner_source`] checks, for either tunnel, that the
//!    inner source routes back to the sending node. What is decapsulated
//!    is counted under the sending node's tunnel counter slot
//!    ([`decap::count_received`]); what goes to the tunnel, by the worker.
//!    Then [`service`]: a pod's packet to a ClusterIP of the built-in load
//!    balancer is translated to a backend (or refused) before routing; its
//!    replies are translated back after [`policy`].
//! 4. [`route`]: the FIB lookup, ECMP member choice and
//!    [`route::resolve_egress`], which turns a next hop into a port,
//!    Ethernet destination and tunnel endpoint for forwarding and for ICMP
//!    errors alike. Between the lookup and the egress, [`host_nat`]
//!    records flows the node's kernel NATed and sends their replies back
//!    to the node (it needs the next hop, so [`route`] calls it).
//! 5. [`policy`]: network policy, connection tracking first (the shared
//!    flow table, after the host-NAT stage recorded its flows), then the
//!    pods' compiled rules for new connections.
//! 6. [`rewrite`]: TTL and MTU checks, MAC rewrite, TTL decrement.
//! 7. [`icmp`]: a stage that fails with an ICMP error to send
//!    ([`Fault::Icmp`]) gets it built here, in the same buffer.
//!
//! The [`BatchContext`] holds what every frame of a batch reads: the FIB
//! and port table snapshots and, resolved once per batch, the host port
//! and the uplink with its encapsulation policy.
//!
//! # Invariants
//!
//! [`Pipeline::process`] does no I/O, no allocation, takes no lock, logs
//! nothing and reads no clock (time comes in [`BatchContext::now_ns`]).
//! Every received byte is untrusted: views are built only after a length
//! check. A forwarded frame keeps its offload metadata (`frame.vnet`):
//! header sizes never change on that path, so `csum_start` and friends stay
//! right. A frame the pipeline answers itself (ARP reply, ICMP error)
//! leaves on the port it came in on, with no offload metadata, except an
//! ICMP error about a packet that came through the uplink: that one is
//! routed to its destination like any packet (back through the tunnel to
//! the sender's node, normally).
//!
//! Other nodes (`NextHop::Node`, or `NextHop::Nodes` for an ECMP group:
//! one member is picked per flow, see [`flow_hash`]): the uplink's
//! [`EncapPolicy`] (in its `PortRole::Uplink`) says per node whether the
//! frame goes to the uplink, with the node as the verdict's `tunnel` (the
//! uplink encapsulates for it, segments and fragments while copying it out;
//! the frame's Ethernet destination is the router MAC, which every
//! podrouter answers to, so a port that carries Ethernet over the tunnel
//! sends it as it is), or to the host port for the node's kernel to route
//! directly. To the tunnel, DF packets (GSO frames: each segment) must fit
//! the uplink's MTU (link MTU - 20) or get ICMP fragmentation needed;
//! others are fragmented by the uplink. A path MTU learned for the node
//! from the underlay's ICMP ([`crate::pmtu`], in the batch context) lowers
//! that bound to the path MTU minus the tunnel's overhead
//! (`path_mtu_exceeded` when only the learned path is too small). From the uplink, frames are
//! decapsulated only if addressed to this node by a known node (a `via` of
//! the FIB snapshot), and the inner packet may only go to a local pod:
//! every other case is a counted drop (`ipip_*`), and an unassigned address
//! of our blocks gets ICMP host unreachable. TTL: a pod-to-pod hop on each
//! router, as in Calico (64 -> 62 across two nodes, encapsulated or not).
//!
//! Counting convention: the worker counts the reason of every
//! [`Verdict::Drop`]. When a drop turns into an ICMP error (the verdict is
//! then a `Forward`), the pipeline counts the original reason and
//! `icmp_sent` itself; when the rate limiter refuses the error it counts
//! `icmp_rate_limited` and returns the `Drop`. An ARP request the per-port
//! limiter refuses is the drop `arp_rate_limited`.
use std::net::Ipv4Addr;

use crate::conntrack::FlowTable;
use crate::counters::{DropReason, WorkerCounters};
use crate::encap::EncapPolicy;
use crate::fib::FibTable;
use crate::frame::Frame;
use crate::pmtu::PathMtuSnapshot;
use crate::port::{PortEntry, PortId, PortRole, PortTable, Tunnel};
use crate::wire::ETHERNET_HEADER_LEN;

mod arp;
mod decap;
mod host_nat;
mod icmp;
mod policy;
mod rewrite;
mod route;
mod service;
#[cfg(test)]
mod testkit;
mod validate;

pub use icmp::MAX_ICMP_ERROR_LEN;
pub use route::flow_hash;

use icmp::TokenBucket;
use validate::EtherKind;

/// Node-wide settings the pipeline needs.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// MAC the router uses on every port (ee:ee:ee:ee:ee:ee).
    pub router_mac: [u8; 6],
    /// Source address of ICMP errors the router generates.
    pub node_ip: Ipv4Addr,
    /// ICMP errors per second per worker (token bucket rate). 0: no refill.
    pub icmp_rate_per_sec: u32,
    /// ICMP token bucket depth. 0: no ICMP errors at all.
    pub icmp_burst: u32,
    /// Proxy ARP replies per second to each pod port (a token bucket per
    /// port, per worker), so one pod's ARP flood costs no more than this.
    pub arp_rate_per_sec: u32,
    /// Depth of each pod port's ARP bucket. 0: pods get no ARP replies.
    pub arp_burst: u32,
}

impl PipelineConfig {
    /// Proxy ARP replies per second per pod port unless configured: far
    /// above what a pod needs (it only ever asks for its gateway, once per
    /// neighbour-cache expiry), far below a flood.
    pub const DEFAULT_ARP_RATE_PER_SEC: u32 = 100;
    /// Default depth of the per-port ARP bucket.
    pub const DEFAULT_ARP_BURST: u32 = 100;
}

/// What the worker should do with a frame after [`Pipeline::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame out of `port`. `tunnel`: for a tunnel
    /// port (the uplink), the node at the far end the frame is for
    /// (metadata for the port, not in the frame); `None` otherwise.
    Forward {
        port: PortId,
        tunnel: Option<Ipv4Addr>,
    },
    /// Drop it; the worker counts the reason.
    Drop(DropReason),
}

/// The uplink as a batch sees it.
#[derive(Clone, Copy)]
struct UplinkRef<'a> {
    id: PortId,
    entry: &'a PortEntry,
    policy: EncapPolicy,
}

/// Everything a batch reads, loaded once per batch.
pub struct BatchContext<'a> {
    pub fib: &'a FibTable,
    pub ports: &'a PortTable,
    pub counters: &'a WorkerCounters,
    /// The flow table every worker shares (see [`host_nat`]).
    pub flows: &'a FlowTable,
    /// The network policy snapshot of the batch ([`policy`]); `None`: no
    /// policy (as an empty table).
    pub policy: Option<&'a crate::policy::PolicyTable>,
    /// The built-in load balancer's snapshot ([`service`]); `None`: no
    /// services (as an empty table).
    pub services: Option<&'a crate::service::ServiceTable>,
    /// Monotonic time in nanoseconds ([`crate::clock`]: the ICMP rate
    /// limiter, flow timeouts).
    pub now_ns: u64,
    /// The path MTUs learned towards other nodes ([`crate::pmtu`]);
    /// `None`: none learned (every path as wide as the uplink).
    path_mtus: Option<&'a PathMtuSnapshot>,
    /// The host port, if attached.
    host: Option<(PortId, &'a PortEntry)>,
    /// The uplink, if attached.
    uplink: Option<UplinkRef<'a>>,
}

impl<'a> BatchContext<'a> {
    /// The context for one batch: the snapshots, the worker's counters,
    /// the shared flow table and the time; resolves the host port and the
    /// uplink (with its policy) once for every frame of the batch.
    pub fn new(
        fib: &'a FibTable,
        ports: &'a PortTable,
        counters: &'a WorkerCounters,
        flows: &'a FlowTable,
        now_ns: u64,
    ) -> BatchContext<'a> {
        let host = ports.host_port().and_then(|id| Some((id, ports.get(id)?)));
        let uplink = ports.uplink_port().and_then(|id| {
            let entry = ports.get(id)?;
            match entry.info.role {
                PortRole::Uplink { policy, .. } => Some(UplinkRef { id, entry, policy }),
                _ => None,
            }
        });
        BatchContext {
            fib,
            ports,
            counters,
            flows,
            policy: None,
            services: None,
            path_mtus: None,
            now_ns,
            host,
            uplink,
        }
    }

    /// The same context with the batch's network policy snapshot.
    pub fn with_policy(self, policy: &'a crate::policy::PolicyTable) -> BatchContext<'a> {
        BatchContext {
            policy: Some(policy),
            ..self
        }
    }

    /// The same context with the batch's service table snapshot.
    pub fn with_services(self, services: &'a crate::service::ServiceTable) -> BatchContext<'a> {
        BatchContext {
            services: Some(services),
            ..self
        }
    }

    /// The same context with the batch's learned path MTUs.
    pub fn with_path_mtus(self, path_mtus: &'a PathMtuSnapshot) -> BatchContext<'a> {
        BatchContext {
            path_mtus: Some(path_mtus),
            ..self
        }
    }

    /// The MTU towards `node` through the tunnel whose port MTU is
    /// `port_mtu`: that, or the learned path MTU minus the tunnel's
    /// overhead when smaller.
    #[inline]
    fn tunnel_mtu(&self, port_mtu: u16, node: Ipv4Addr) -> u16 {
        match self.path_mtus.and_then(|p| p.inner_mtu(node)) {
            Some(inner) => inner.min(port_mtu),
            None => port_mtu,
        }
    }

    /// Whether `port` is the uplink.
    #[inline]
    fn is_uplink(&self, port: PortId) -> bool {
        self.uplink.is_some_and(|u| u.id == port)
    }
}

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const CODE_NET_UNREACHABLE: u8 = 0;
const CODE_HOST_UNREACHABLE: u8 = 1;
const CODE_PORT_UNREACHABLE: u8 = 3;
const CODE_FRAG_NEEDED: u8 = 4;
const CODE_TTL_EXCEEDED: u8 = 0;

/// One ICMP error to build: type, code and the 16-bit next-hop MTU field
/// (0 unless "fragmentation needed").
#[derive(Clone, Copy, Debug)]
struct IcmpError {
    ty: u8,
    code: u8,
    mtu: u16,
}

impl IcmpError {
    const NET_UNREACHABLE: IcmpError = IcmpError {
        ty: ICMP_DEST_UNREACHABLE,
        code: CODE_NET_UNREACHABLE,
        mtu: 0,
    };
    const HOST_UNREACHABLE: IcmpError = IcmpError {
        ty: ICMP_DEST_UNREACHABLE,
        code: CODE_HOST_UNREACHABLE,
        mtu: 0,
    };
    const PORT_UNREACHABLE: IcmpError = IcmpError {
        ty: ICMP_DEST_UNREACHABLE,
        code: CODE_PORT_UNREACHABLE,
        mtu: 0,
    };
    const TTL_EXCEEDED: IcmpError = IcmpError {
        ty: ICMP_TIME_EXCEEDED,
        code: CODE_TTL_EXCEEDED,
        mtu: 0,
    };
    fn frag_needed(mtu: u16) -> IcmpError {
        IcmpError {
            ty: ICMP_DEST_UNREACHABLE,
            code: CODE_FRAG_NEEDED,
            mtu,
        }
    }
}

/// Why a stage stopped a frame: a drop, or a drop answered with an ICMP
/// error to the sender (only after [`validate`] accepted the packet).
#[derive(Clone, Copy, Debug)]
enum Fault {
    Drop(DropReason),
    Icmp(IcmpError, DropReason),
    /// A drop answered with a TCP reset (a ClusterIP without backends).
    Reset(DropReason),
}

impl From<DropReason> for Fault {
    #[inline]
    fn from(r: DropReason) -> Fault {
        Fault::Drop(r)
    }
}

/// One worker's pipeline: configuration plus the little state frames share
/// (ICMP rate limiter, IP identification counter).
pub struct Pipeline {
    cfg: PipelineConfig,
    icmp_bucket: TokenBucket,
    /// One proxy-ARP bucket per port id (pod ports use theirs; made once,
    /// so a frame never allocates). A port id reused by a new pod inherits
    /// its predecessor's bucket, which refills within a second.
    arp_buckets: Box<[TokenBucket]>,
    /// Identification of the last IPv4 packet this pipeline originated.
    ip_ident: u16,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Pipeline {
        Pipeline {
            icmp_bucket: TokenBucket::new(cfg.icmp_rate_per_sec, cfg.icmp_burst),
            arp_buckets: (0..crate::port::MAX_PORTS)
                .map(|_| TokenBucket::new(cfg.arp_rate_per_sec, cfg.arp_burst))
                .collect(),
            cfg,
            ip_ident: 0,
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The next IPv4 identification for a packet this pipeline originates.
    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    /// Classifies and rewrites one frame received on `ingress`.
    pub fn process(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        frame: &mut Frame,
    ) -> Verdict {
        let Some(entry) = ctx.ports.get(ingress) else {
            return Verdict::Drop(DropReason::NoPort);
        };
        // A reference: copying the role (the uplink's carries its encap
        // policy and VXLAN settings) cost every frame.
        let role = &entry.info.role;
        // The node a VXLAN frame came from, for the inner source check.
        let mut vxlan_peer = None;
        if let PortRole::Uplink {
            local,
            tunnel: Tunnel::Vxlan(vx),
            ..
        } = *role
        {
            match decap::vxlan_decap(ctx, local, &vx, &self.cfg.router_mac, frame) {
                Ok(peer) => {
                    decap::count_received(ctx, peer.1, frame);
                    vxlan_peer = Some(peer);
                }
                Err(reason) => return Verdict::Drop(reason),
            }
        }
        match validate::ethernet(&self.cfg.router_mac, frame.data()) {
            Ok(EtherKind::Arp) => self.arp(ctx, ingress, role, frame),
            Ok(EtherKind::Ipv4 { broadcast }) => {
                match self.forward_ipv4(ctx, ingress, role, broadcast, vxlan_peer, frame) {
                    Ok(v) => v,
                    Err(Fault::Drop(reason)) => Verdict::Drop(reason),
                    Err(Fault::Icmp(err, reason)) => {
                        self.icmp_error(ctx, ingress, frame, err, reason)
                    }
                    Err(Fault::Reset(reason)) => self.tcp_reset(ctx, ingress, frame, reason),
                }
            }
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// IPv4 through the stages: decapsulate (from the uplink), validate,
    /// route, rewrite.
    #[inline(always)]
    fn forward_ipv4(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        role: &PortRole,
        eth_broadcast: bool,
        vxlan_peer: Option<(Ipv4Addr, u16)>,
        frame: &mut Frame,
    ) -> Result<Verdict, Fault> {
        let from_uplink = matches!(role, PortRole::Uplink { .. });
        let tunnel_peer = match *role {
            PortRole::Uplink {
                local,
                tunnel: Tunnel::Ipip,
                ..
            } => {
                let peer = decap::decapsulate(ctx, local, frame)?;
                decap::count_received(ctx, peer.1, frame);
                Some(peer)
            }
            _ => vxlan_peer,
        };
        let mut pkt = validate::ipv4(frame, role, eth_broadcast)?;
        if let Some((node, _)) = tunnel_peer {
            decap::check_inner_source(ctx.fib, node, pkt.src)?;
        }
        // A pod's packet to a ClusterIP goes to a backend from here on.
        let from_pod = matches!(role, PortRole::Pod { .. });
        let translated = service::dnat(ctx, from_pod, frame)?;
        if let Some(t) = translated {
            pkt.dst = t.backend;
        }
        let routed = self.route_and_rewrite(ctx, ingress, role, from_uplink, &pkt, frame);
        match (routed, translated) {
            // The client must find its own packet in the router's error.
            (Err(Fault::Icmp(e, r)), Some(t)) => {
                service::undo_dnat(frame, &t);
                Err(Fault::Icmp(e, r))
            }
            (routed, _) => routed,
        }
    }

    /// IPv4 from routing on: route, policy, replies of the built-in load
    /// balancer translated back, rewrite.
    #[inline(always)]
    fn route_and_rewrite(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        role: &PortRole,
        from_uplink: bool,
        pkt: &validate::Ipv4Facts,
        frame: &mut Frame,
    ) -> Result<Verdict, Fault> {
        let egress = route::route(ctx, ingress, from_uplink, pkt, frame)
            .map_err(|f| decap::tunnel_fault(role, f))?;
        // After routing, so the host-NAT stage inside `route` has recorded
        // (with its flag) the flows of the node's NAT before policy tracks
        // them: one flow, one entry, both flags.
        policy::admit(ctx, &frame.data()[ETHERNET_HEADER_LEN..])?;
        // After policy, which tracks the flow as the backend sees it.
        let to_pod = matches!(egress.entry.info.role, PortRole::Pod { .. });
        service::un_dnat(ctx, to_pod, frame);
        rewrite::rewrite(&self.cfg, &egress, pkt, frame)?;
        Ok(Verdict::Forward {
            port: egress.port,
            tunnel: egress.tunnel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;

    #[test]
    fn missing_ports() {
        let mut env = Env::new();
        // Unknown ingress.
        let (v, _) = env.run(MISSING, &from_a(B_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::NoPort));
        // Route to a port that went away.
        let (v, _) = env.run(POD_A, &from_a(STALE_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::NoPort));
        // Host route without a host port.
        env.ports = env.ports.without(HOST);
        let (v, _) = env.run(POD_A, &from_a(NODE_IP, 64, DF, 60));
        assert_eq!(v, Verdict::Drop(DropReason::NoPort));
    }

    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut env = Env::with_cfg(cfg(1_000_000, 1_000_000));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x9e37_79b9);
        let echo = [8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
        let seeds: Vec<Vec<u8>> = vec![
            from_a(B_IP, 64, DF, 100),
            from_a(INTERNET_IP, 64, DF, 700),
            from_a(C_IP, 1, DF, 1200),
            from_a(B_IP, 1, MF, 60),
            from_host(NODE_IP, A_IP, 64),
            eth(
                ROUTER_MAC,
                A_MAC,
                ETHERTYPE_IPV4,
                &ipv4(
                    A_IP,
                    UNASSIGNED_IP,
                    1,
                    64,
                    0,
                    &[7, 7, 4, 0, 0, 0, 0, 0],
                    &echo,
                ),
            ),
            arp([0xff; 6], 1, A_MAC, A_IP, GW),
            arp([0xff; 6], 1, HOST_MAC, NODE_IP, B_IP),
        ];
        let ingresses = [POD_A, POD_B, HOST, POD_C, MISSING];
        let mut forwarded = 0;
        for i in 0..5_000 {
            let mut b = if i % 10 == 0 {
                let n = rng.gen_range(0..200);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                seeds[rng.gen_range(0..seeds.len())].clone()
            };
            for _ in 0..rng.gen_range(0..4) {
                if b.is_empty() {
                    break;
                }
                let j = rng.gen_range(0..b.len().min(64));
                b[j] = rng.gen();
            }
            match rng.gen_range(0..4) {
                0 => b.truncate(rng.gen_range(0..=b.len())),
                1 => b.resize(b.len() + rng.gen_range(0..40), rng.gen()),
                _ => {}
            }
            let mut f = Frame::from_bytes(&b);
            if rng.gen_bool(0.1) {
                f.vnet.gso_type = VnetHdr::GSO_TCPV4;
            }
            let ingress = ingresses[rng.gen_range(0..ingresses.len())];
            env.now_ns += 1_000;
            match env.process(ingress, &mut f) {
                Verdict::Forward { port: out, tunnel } => {
                    forwarded += 1;
                    assert!(env.ports.get(out).is_some());
                    assert!(tunnel.is_none(), "no uplink in this table");
                    let d = f.data();
                    assert_eq!(&d[6..12], &ROUTER_MAC);
                    if d[12..14] == [0x08, 0x00] {
                        let ip = check_ipv4(&d[14..]).expect("forwarded IP is valid");
                        assert_eq!(usize::from(ip.total_len()), d.len() - 14);
                    } else {
                        assert_eq!(d.len(), 42, "ARP reply");
                        assert_eq!(out, ingress);
                    }
                }
                Verdict::Drop(_) => {}
            }
        }
        assert!(forwarded > 100, "the mutations left some valid frames");
    }
}
