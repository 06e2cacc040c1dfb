//! Stage 3b, the built-in Service load balancer (opt-in: it does nothing
//! until the control plane publishes a service): a packet from a local pod
//! to a ClusterIP:port is translated to one of the service's ready
//! backends before routing ([`dnat`]), and the backend's replies are
//! translated back, after routing and policy, on the node of the client
//! ([`un_dnat`]); a backend on another node replies through the tunnel to
//! the client's node, which is where the flow's entries are.
//!
//! Per flow, two entries of the shared
//! [`FlowTable`](crate::conntrack::FlowTable) (as the kernel's conntrack
//! keeps two tuples): one keyed by the packet as the client sent it,
//! carrying [`Nat::Dnat`] (the backend: the next packets of the flow go
//! there whatever the backend set became), and one keyed by the packet
//! as translated (client -> backend), carrying [`Nat::UnDnat`] (the
//! ClusterIP and port the replies must come from). The second is the
//! entry network policy and its state tracking see: one flow, one entry
//! for them. Both entries see both directions' packets, so their TCP
//! state, and with it their timeouts, are the flow's.
//!
//! A new flow takes a backend by its 5-tuple's hash through the service
//! port's Maglev table, or, with `sessionAffinity: ClientIP`, the backend
//! the client's [`PROTO_AFFINITY`] entry names while that backend is
//! still ready (the entry is refreshed by each new flow and lives the
//! service's `timeoutSeconds`). A service port with no ready backend (or
//! a port the ClusterIP does not serve) is refused as kube-proxy does:
//! TCP with a reset ([`Fault::Reset`], built by [`Pipeline::tcp_reset`]),
//! anything else with ICMP port unreachable; both counted
//! (`service_no_backend`) and rate-limited like every ICMP error.
//!
//! Checksums are updated incrementally (RFC 1624): the IPv4 header's and
//! the TCP/UDP one over the pseudo-header and port; a frame with a
//! partial checksum to complete (`NEEDS_CSUM` from a TAP) has only its
//! pseudo-header sum adjusted, as the kernel's NAT does. SCTP's CRC32c
//! covers the ports, not the addresses: it is recomputed when the port
//! changes (unless its offload is requested).
//!
//! ICMP errors about a translated packet reach the client as errors
//! about the packet it sent: one from the backend or a router on the way
//! ([`un_dnat`]: the quote's destination back to the ClusterIP and port,
//! the outer source too when the backend sent it), and one this router
//! answers itself after the translation ([`undo_dnat`] before the error
//! is built: fragmentation needed towards a backend behind the tunnel).
//!
//! A flow whose backend left the service port (or whose service went
//! away) is cut: the control thread removes its entries when it publishes
//! the table ([`crate::service::cut_stale_flows`]), and a packet of such a
//! flow that still finds its entries (a worker on the previous snapshot
//! inserted them meanwhile) removes them here ([`cut`]); either way the
//! next packet is a new flow, balanced among the backends left or
//! refused, and the cut is counted per service port.
//!
//! What is not done here: traffic from the host port, the uplink (other
//! nodes' clients are balanced on their own node) or to NodePorts and
//! external IPs: the node's kube-proxy keeps those, and the host-NAT stage
//! keeps them correct. Fragments and ICMP to a ClusterIP are dropped
//! (`service_untranslatable`), but for an ICMP error a client sends
//! about a reply of a balanced flow ([`dnat_icmp_error`]: on to the
//! backend, the quote as the backend sent it).
//!
//! Cost: nothing but one branch without services; with services, one
//! hash probe per packet from a pod (is the destination a ClusterIP?),
//! two flow-table bucket reads per packet to or from a ClusterIP, and one
//! per packet to a local pod (is it a reply to translate?).
use std::net::Ipv4Addr;

use super::{BatchContext, Fault, IcmpError, Pipeline, Verdict};
use crate::conntrack::{
    self, Dir, FlowKey, Nat, Packet, Record, PROTO_AFFINITY, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use crate::counters::DropReason;
use crate::frame::{Frame, VnetHdr};
use crate::port::PortId;
use crate::service::{Backend, Frontend};
use crate::wire::{checksum_update, field, ones_complement_sum, ETHERNET_HEADER_LEN};

const ETH: usize = ETHERNET_HEADER_LEN;

#[inline]
fn addr(ip: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3])
}

/// What [`dnat`] did to a packet: its destination was `vip`:`vport`,
/// it is `backend`:`backend_port` now.
#[derive(Clone, Copy, Debug)]
pub(super) struct Translated {
    pub backend: Ipv4Addr,
    backend_port: u16,
    vip: Ipv4Addr,
    vport: u16,
}

/// Translates a packet from a local pod (`from_pod`) to a ClusterIP;
/// returns what it did, or `None` if the packet is no service's.
#[inline]
pub(super) fn dnat(
    ctx: &BatchContext<'_>,
    from_pod: bool,
    frame: &mut Frame,
) -> Result<Option<Translated>, Fault> {
    let Some(table) = ctx.services.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if !from_pod {
        return Ok(None);
    }
    let ip = &frame.data()[ETH..];
    let vip = addr(ip, 16);
    if !table.is_vip(vip) {
        return Ok(None);
    }
    let Some(pkt) = conntrack::parse(ip).filter(|p| p.key.proto != conntrack::PROTO_ICMP) else {
        return dnat_icmp_error(ctx, frame, vip);
    };
    let key = pkt.key;
    let tcp = key.proto == PROTO_TCP;
    let Some(fe) = table.frontend(vip, key.dport, key.proto) else {
        return Err(reject(tcp));
    };
    let now_ms = ctx.now_ns / 1_000_000;
    let existing = ctx
        .flows
        .lookup(&key, now_ms)
        .filter(|h| h.dir == Dir::Original)
        .and_then(|h| match h.nat() {
            Nat::Dnat(a, p) => Some((h, a, p)),
            _ => None,
        });
    // A flow whose backend left the port (a table published after the
    // control thread's cut, or while it ran): cut here, then balanced
    // again as a new flow.
    let kept = existing.and_then(|(h, a, p)| match fe.backend(a, p) {
        Some(b) => Some((h, b)),
        None => {
            cut(ctx, fe, &h, &key, a, p, now_ms);
            None
        }
    });
    let (to, to_port) = match kept {
        Some((h, b)) => {
            ctx.flows.note(&h, pkt.tcp_flags, key.proto, now_ms);
            fe.count(Some(b), false);
            (b.addr, b.port)
        }
        None => {
            let Some(b) = choose(ctx, fe, &key, ip, now_ms) else {
                fe.count_rejected();
                return Err(reject(tcp));
            };
            fe.count(Some(b), true);
            match ctx
                .flows
                .record_nat(&pkt, 0, Nat::Dnat(b.addr, b.port), now_ms)
            {
                Record::Inserted => ctx.counters.flows_inserted.incr(),
                Record::Full => ctx.counters.flows_full.incr(),
                Record::Existing(_) => {}
            }
            (b.addr, b.port)
        }
    };
    // The translated packet's entry: inserted with the flow (its reply
    // translation), or noted like any packet of it.
    let translated = Packet {
        key: FlowKey {
            dst: to,
            dport: to_port,
            ..key
        },
        tcp_flags: pkt.tcp_flags,
    };
    match ctx
        .flows
        .record_nat(&translated, 0, Nat::UnDnat(vip, key.dport), now_ms)
    {
        Record::Inserted => ctx.counters.flows_inserted.incr(),
        Record::Full => {
            // Its replies could not be translated back: refuse the flow
            // rather than let it half work.
            ctx.counters.flows_full.incr();
            return Err(Fault::Drop(DropReason::ServiceFlowsFull));
        }
        Record::Existing(_) => {}
    }
    let csum = Csum::of(frame.vnet.flags);
    rewrite_endpoint(&mut frame.data_mut()[ETH..], Side::Dst, to, to_port, csum);
    Ok(Some(Translated {
        backend: to,
        backend_port: to_port,
        vip,
        vport: key.dport,
    }))
}

/// An ICMP error from a local pod to a ClusterIP about a reply it got
/// through the balancer (port unreachable: the client closed its
/// socket): sent on to the flow's backend, the quote turned back into
/// the reply as the backend sent it. Anything else ICMP to a ClusterIP
/// (echo, an error about no balanced flow) is dropped.
#[cold]
fn dnat_icmp_error(
    ctx: &BatchContext<'_>,
    frame: &mut Frame,
    vip: Ipv4Addr,
) -> Result<Option<Translated>, Fault> {
    let untranslatable = Err(Fault::Drop(DropReason::ServiceUntranslatable));
    let ip = &frame.data()[ETH..];
    let Some(quoted) = conntrack::parse_icmp_error_quote(ip).filter(|q| q.src == vip) else {
        return untranslatable;
    };
    let Some(hit) = ctx.flows.lookup(&quoted, ctx.now_ns / 1_000_000) else {
        return untranslatable;
    };
    let Nat::Dnat(to, to_port) = hit.nat() else {
        return untranslatable;
    };
    if hit.dir != Dir::Reply {
        return untranslatable;
    }
    let partial = frame.vnet.flags & VnetHdr::F_NEEDS_CSUM != 0;
    let ip = &mut frame.data_mut()[ETH..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    set_addr(ip, 16, to);
    let icmp = &mut ip[hl..];
    rewrite_endpoint(&mut icmp[8..], Side::Src, to, to_port, Csum::Quoted);
    if !partial {
        fill_icmp_checksum(icmp);
    }
    Ok(Some(Translated {
        backend: to,
        backend_port: to_port,
        vip,
        vport: quoted.sport,
    }))
}

/// Writes the checksum of the ICMP message `icmp`.
fn fill_icmp_checksum(icmp: &mut [u8]) {
    icmp[2..4].fill(0);
    let c = !ones_complement_sum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}

/// Removes both entries of the flow `h` found (client `key` to the
/// ClusterIP, given backend `to`:`to_port`, no longer one of `fe`'s) and
/// counts it cut.
#[cold]
fn cut(
    ctx: &BatchContext<'_>,
    fe: &Frontend,
    h: &conntrack::Hit,
    key: &FlowKey,
    to: Ipv4Addr,
    to_port: u16,
    now_ms: u64,
) {
    ctx.flows.remove(h);
    let translated = FlowKey {
        dst: to,
        dport: to_port,
        ..*key
    };
    if let Some(t) = ctx.flows.lookup(&translated, now_ms) {
        ctx.flows.remove(&t);
    }
    fe.count_cut();
}

/// Puts back the ClusterIP and port [`dnat`] replaced, before the router
/// answers the packet with an ICMP error of its own (fragmentation
/// needed towards a backend behind the tunnel, TTL exceeded): the client
/// must find in the quote the packet it sent, or its socket ignores the
/// error.
#[cold]
pub(super) fn undo_dnat(frame: &mut Frame, t: &Translated) {
    let csum = Csum::of(frame.vnet.flags);
    let ip = &mut frame.data_mut()[ETH..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let port = t.backend_port.to_be_bytes();
    if addr(ip, 16) == t.backend && ip.get(hl + 2..hl + 4) == Some(&port[..]) {
        rewrite_endpoint(ip, Side::Dst, t.vip, t.vport, csum);
    }
}

/// The backend of a new flow: the client's affinity if it still holds,
/// else the Maglev pick (recorded as the client's affinity if the
/// service has it).
#[inline]
fn choose<'t>(
    ctx: &BatchContext<'_>,
    fe: &'t Frontend,
    key: &FlowKey,
    ip: &[u8],
    now_ms: u64,
) -> Option<&'t Backend> {
    let secs = fe.affinity_secs();
    if secs == 0 {
        return fe.pick(super::flow_hash(ip));
    }
    let aff = Packet {
        key: FlowKey {
            sport: 0,
            proto: PROTO_AFFINITY,
            ..*key
        },
        tcp_flags: 0,
    };
    if let Some(h) = ctx.flows.lookup(&aff.key, now_ms) {
        if let Nat::Affinity { backend, .. } = h.nat() {
            if let Some(b) = fe.backend_at(backend) {
                ctx.flows.note(&h, 0, PROTO_AFFINITY, now_ms);
                return Some(b);
            }
        }
        // Its backend is gone: the client gets a new one.
        ctx.flows.remove(&h);
    }
    // One client, one backend: hash the client alone.
    let b = fe.pick(super::route::flow_hash_of_addr(u32::from(key.src)))?;
    let nat = Nat::Affinity {
        backend: b.addr,
        secs,
    };
    if ctx.flows.record_nat(&aff, 0, nat, now_ms) == Record::Full {
        ctx.counters.flows_full.incr();
    }
    Some(b)
}

/// Refusal of a flow to a service port without a backend.
#[inline]
fn reject(tcp: bool) -> Fault {
    if tcp {
        Fault::Reset(DropReason::ServiceNoBackend)
    } else {
        Fault::Icmp(IcmpError::PORT_UNREACHABLE, DropReason::ServiceNoBackend)
    }
}

/// Translates a backend's reply to a local pod (`to_local_pod`) back to
/// the ClusterIP and port its client used.
#[inline]
pub(super) fn un_dnat(ctx: &BatchContext<'_>, to_local_pod: bool, frame: &mut Frame) {
    if !to_local_pod || ctx.services.is_none_or(|t| t.is_empty()) || ctx.flows.is_empty() {
        return;
    }
    let ip = &frame.data()[ETH..];
    let now_ms = ctx.now_ns / 1_000_000;
    let Some(pkt) = conntrack::parse(ip) else {
        un_dnat_icmp_error(ctx, frame, now_ms);
        return;
    };
    let Some(hit) = ctx.flows.lookup(&pkt.key, now_ms) else {
        return;
    };
    let Nat::UnDnat(vip, vport) = hit.nat() else {
        return;
    };
    if hit.dir != Dir::Reply {
        return;
    }
    ctx.flows.note(&hit, pkt.tcp_flags, pkt.key.proto, now_ms);
    // The client's entry sees the reply too (its timeouts follow the
    // flow's state).
    let client_view = FlowKey {
        src: vip,
        sport: vport,
        ..pkt.key
    };
    if let Some(h) = ctx.flows.lookup(&client_view, now_ms) {
        ctx.flows.note(&h, pkt.tcp_flags, pkt.key.proto, now_ms);
    }
    let csum = Csum::of(frame.vnet.flags);
    rewrite_endpoint(&mut frame.data_mut()[ETH..], Side::Src, vip, vport, csum);
}

/// An ICMP error to a local pod about a packet it sent to a backend
/// (port unreachable from the backend, fragmentation needed or time
/// exceeded from a router on the way): the quote is turned back into
/// the packet the client sent (destination the ClusterIP and port, the
/// quoted IP and transport checksums updated), so the client's socket
/// takes the error; an error the backend itself sent comes from the
/// ClusterIP (outer source and IP checksum), one from a router keeps its
/// source, as the kernel's NAT does. The ICMP checksum is recomputed
/// (ICMP errors are short and rare; a checksum the frame still asks to
/// have completed is left to that).
#[inline(never)]
fn un_dnat_icmp_error(ctx: &BatchContext<'_>, frame: &mut Frame, now_ms: u64) {
    let ip = &frame.data()[ETH..];
    let Some(quoted) = conntrack::parse_icmp_error_quote(ip) else {
        return;
    };
    let Some(hit) = ctx.flows.lookup(&quoted, now_ms) else {
        return;
    };
    let Nat::UnDnat(vip, vport) = hit.nat() else {
        return;
    };
    if hit.dir != Dir::Original {
        return;
    }
    let partial = frame.vnet.flags & VnetHdr::F_NEEDS_CSUM != 0;
    let ip = &mut frame.data_mut()[ETH..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    if addr(ip, 12) == quoted.dst {
        set_addr(ip, 12, vip);
    }
    // parse_icmp_error_quote checked the quoted header and its ports.
    let icmp = &mut ip[hl..];
    rewrite_endpoint(&mut icmp[8..], Side::Dst, vip, vport, Csum::Quoted);
    if !partial {
        fill_icmp_checksum(icmp);
    }
}

/// Sets the IPv4 address at `at` (12: source, 16: destination) of the
/// header `ip`, updating its checksum.
fn set_addr(ip: &mut [u8], at: usize, to: Ipv4Addr) {
    let mut csum = u16::from_be_bytes([ip[10], ip[11]]);
    let o = to.octets();
    for k in [0, 2] {
        let old = u16::from_be_bytes([ip[at + k], ip[at + k + 1]]);
        csum = checksum_update(csum, old, u16::from_be_bytes([o[k], o[k + 1]]));
    }
    ip[at..at + 4].copy_from_slice(&o);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// How a rewritten packet's transport checksum is kept right.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Csum {
    /// A complete checksum: updated for the addresses and port.
    Full,
    /// A checksum the frame asks to have completed (`NEEDS_CSUM` from a
    /// TAP): the field holds the pseudo-header sum, updated for the
    /// addresses only.
    Partial,
    /// The packet an ICMP error quotes (maybe cut short): the TCP/UDP
    /// checksum updated if quoted, SCTP's CRC left alone (it covers the
    /// whole packet, which is not there).
    Quoted,
}

impl Csum {
    #[inline]
    fn of(vnet_flags: u8) -> Csum {
        if vnet_flags & VnetHdr::F_NEEDS_CSUM != 0 {
            Csum::Partial
        } else {
            Csum::Full
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// Rewrites the source or destination address and port of the IPv4
/// packet `ip` (its ports known present: [`conntrack::parse`] or
/// [`conntrack::parse_icmp_error_quote`] read them), updating the
/// checksums as `csum` says.
fn rewrite_endpoint(ip: &mut [u8], side: Side, to: Ipv4Addr, port: u16, csum: Csum) {
    let partial = csum == Csum::Partial;
    let (a_off, p_off) = match side {
        Side::Src => (12, 0),
        Side::Dst => (16, 2),
    };
    let old_addr = [
        u16::from_be_bytes([ip[a_off], ip[a_off + 1]]),
        u16::from_be_bytes([ip[a_off + 2], ip[a_off + 3]]),
    ];
    let o = to.octets();
    let new_addr = [
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    ];
    set_addr(ip, a_off, to);

    let hl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let l4 = &mut ip[hl..];
    let old_port = u16::from_be_bytes([l4[p_off], l4[p_off + 1]]);
    l4[p_off..p_off + 2].copy_from_slice(&port.to_be_bytes());
    let csum_at = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        PROTO_SCTP => {
            if old_port != port && csum == Csum::Full && l4.len() >= 12 {
                let crc = crc32c_sctp(l4);
                l4[8..12].copy_from_slice(&crc.to_le_bytes());
            }
            return;
        }
        _ => return,
    };
    let Some(c) = l4.get(csum_at..csum_at + 2) else {
        return;
    };
    let c = u16::from_be_bytes([c[0], c[1]]);
    if proto == PROTO_UDP && c == 0 && !partial {
        return; // no checksum
    }
    let new = if partial {
        // The field holds the pseudo-header sum itself (not inverted),
        // which has the addresses but not the ports.
        let mut s = !c;
        for (old, new) in old_addr.iter().zip(new_addr) {
            s = checksum_update(s, *old, new);
        }
        !s
    } else {
        let mut s = c;
        for (old, new) in old_addr.iter().zip(new_addr) {
            s = checksum_update(s, *old, new);
        }
        s = checksum_update(s, old_port, port);
        if proto == PROTO_UDP && s == 0 {
            0xffff
        } else {
            s
        }
    };
    l4[csum_at..csum_at + 2].copy_from_slice(&new.to_be_bytes());
}

/// SCTP's CRC32c (RFC 4960 appendix B) over `pkt` with its checksum
/// field taken as zero; the value is stored little-endian.
fn crc32c_sctp(pkt: &[u8]) -> u32 {
    const POLY: u32 = 0x82f6_3b78;
    let mut crc = !0u32;
    for (i, &b) in pkt.iter().enumerate() {
        let b = if (8..12).contains(&i) { 0 } else { b };
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

impl Pipeline {
    /// Answers the TCP segment in `frame` (from a local pod, `ingress`)
    /// with a reset from the address and port it was sent to, built in
    /// place (RFC 9293 3.10.7.1: to a segment with ACK, seq = its ack;
    /// otherwise ack = its seq + length); rate-limited with the ICMP
    /// errors. Counts `reason` and `tcp_resets_sent`.
    pub(super) fn tcp_reset(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        frame: &mut Frame,
        reason: DropReason,
    ) -> Verdict {
        let d = frame.data();
        let ip = &d[ETH..];
        let hl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let Some(tcp) = ip.get(hl..total).filter(|t| t.len() >= 20) else {
            return Verdict::Drop(reason);
        };
        let flags = tcp[field::tcp::FLAGS];
        if flags & TCP_RST != 0 || ctx.is_uplink(ingress) {
            return Verdict::Drop(reason);
        }
        if !self.icmp_bucket.take(ctx.now_ns) {
            ctx.counters.icmp_rate_limited.incr();
            return Verdict::Drop(reason);
        }
        let doff = usize::from(tcp[field::tcp::DATA_OFF] >> 4) * 4;
        let seg_len = tcp.len().saturating_sub(doff) as u32
            + u32::from(flags & TCP_SYN != 0)
            + u32::from(flags & TCP_FIN != 0);
        let be32 = |f: std::ops::Range<usize>| {
            u32::from_be_bytes([
                tcp[f.start],
                tcp[f.start + 1],
                tcp[f.start + 2],
                tcp[f.start + 3],
            ])
        };
        let (seq, ack, out_flags) = if flags & TCP_ACK != 0 {
            (be32(field::tcp::ACK_NUM), 0, TCP_RST)
        } else {
            (
                0,
                be32(field::tcp::SEQ_NUM).wrapping_add(seg_len),
                TCP_RST | TCP_ACK,
            )
        };
        let (sport, dport) = (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        );
        let (src, dst) = (addr(ip, 12), addr(ip, 16));
        let mut client_mac = [0u8; 6];
        client_mac.copy_from_slice(&d[field::ethernet::SOURCE]);
        let ident = self.next_ident();

        const LEN: usize = ETH + 20 + 20;
        if !frame.resize(LEN) {
            return Verdict::Drop(reason);
        }
        let d = frame.data_mut();
        d[field::ethernet::DESTINATION].copy_from_slice(&client_mac);
        d[field::ethernet::SOURCE].copy_from_slice(&self.cfg.router_mac);
        let ip = &mut d[ETH..];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[4..6].copy_from_slice(&ident.to_be_bytes());
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        ip[8] = crate::wire::DEFAULT_TTL;
        ip[9] = PROTO_TCP;
        ip[10..12].fill(0);
        ip[12..16].copy_from_slice(&dst.octets());
        ip[16..20].copy_from_slice(&src.octets());
        let c = !ones_complement_sum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut ip[20..40];
        t[0..2].copy_from_slice(&dport.to_be_bytes());
        t[2..4].copy_from_slice(&sport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = out_flags;
        t[14..20].fill(0);
        let mut pseudo = [0u8; 12 + 20];
        pseudo[0..4].copy_from_slice(&dst.octets());
        pseudo[4..8].copy_from_slice(&src.octets());
        pseudo[9] = PROTO_TCP;
        pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
        pseudo[12..].copy_from_slice(t);
        let c = !ones_complement_sum(&pseudo);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        frame.vnet = VnetHdr::default();
        ctx.counters.drop(reason);
        ctx.counters.tcp_resets_sent.incr();
        Verdict::Forward {
            port: ingress,
            tunnel: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::service::{FrontendSpec, ServiceTable};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn table(backends: &[(Ipv4Addr, u16)], affinity_secs: u32) -> ServiceTable {
        table_draining(backends, &[], affinity_secs)
    }

    fn backend_list(list: &[(Ipv4Addr, u16)]) -> Vec<Backend> {
        list.iter()
            .map(|&(addr, port)| Backend {
                addr,
                port,
                counters: Arc::default(),
            })
            .collect()
    }

    /// [`table`] with `draining` backends too.
    fn table_draining(
        backends: &[(Ipv4Addr, u16)],
        draining: &[(Ipv4Addr, u16)],
        affinity_secs: u32,
    ) -> ServiceTable {
        let mut t = ServiceTable::new();
        for proto in [PROTO_UDP, PROTO_TCP, PROTO_SCTP] {
            t.insert(
                FrontendSpec {
                    vip: VIP,
                    port: 53,
                    proto,
                    backends: backend_list(backends),
                    draining: backend_list(draining),
                    affinity_secs,
                    counters: Arc::default(),
                },
                crate::maglev::DEFAULT_SIZE,
            )
            .unwrap();
        }
        t
    }

    fn l4(proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        match proto {
            PROTO_TCP => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[4..8].copy_from_slice(&1000u32.to_be_bytes());
                t[12] = 0x50;
                t[13] = flags;
                t
            }
            _ => {
                let mut u = vec![0u8; 12];
                u[0..2].copy_from_slice(&sport.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                u[4..6].copy_from_slice(&12u16.to_be_bytes());
                u
            }
        }
    }

    /// An IPv4 packet with its transport checksum filled in (SCTP: CRC32c).
    fn packet(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        sport: u16,
        dport: u16,
        flags: u8,
    ) -> Vec<u8> {
        let mut ip = ipv4(
            src,
            dst,
            proto,
            64,
            DF,
            &[],
            &l4(proto, sport, dport, flags),
        );
        fill_l4_checksum(&mut ip);
        ip
    }

    fn fill_l4_checksum(ip: &mut [u8]) {
        let proto = ip[9];
        if proto == PROTO_SCTP {
            let c = crc32c_sctp(&ip[20..]);
            ip[28..32].copy_from_slice(&c.to_le_bytes());
            return;
        }
        let at = 20 + if proto == PROTO_TCP { 16 } else { 6 };
        ip[at..at + 2].fill(0);
        let c = !l4_sum(ip);
        ip[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// The transport checksum's sum over pseudo-header and segment.
    fn l4_sum(ip: &[u8]) -> u16 {
        let mut p = ip[12..20].to_vec();
        p.extend_from_slice(&[0, ip[9]]);
        p.extend_from_slice(&((ip.len() - 20) as u16).to_be_bytes());
        p.extend_from_slice(&ip[20..]);
        ones_complement_sum(&p)
    }

    fn assert_checksums(ip: &[u8]) {
        assert!(check_ipv4(ip).is_ok(), "IP header checksum");
        match ip[9] {
            PROTO_SCTP => assert_eq!(
                u32::from_le_bytes(ip[28..32].try_into().unwrap()),
                crc32c_sctp(&ip[20..])
            ),
            _ => assert_eq!(l4_sum(ip), 0xffff, "transport checksum"),
        }
    }

    fn ends(ip: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        let p = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
        ((addr(ip, 12), p(20)), (addr(ip, 16), p(22)))
    }

    fn from_pod(env: &mut Env, port: PortId, mac: [u8; 6], ip: &[u8]) -> (Verdict, Frame) {
        env.run(port, &eth(ROUTER_MAC, mac, ETHERTYPE_IPV4, ip))
    }

    #[test]
    fn a_clusterip_flow_goes_to_one_backend_and_its_replies_come_back_from_the_clusterip() {
        for proto in [PROTO_UDP, PROTO_TCP, PROTO_SCTP] {
            let mut env = uplink_env(EncapMode::Always);
            env.services = table(&[(B_IP, 5353), (REMOTE_IP, 5353)], 0);
            let mut seen = std::collections::HashSet::new();
            for sport in 40000..40064u16 {
                let syn = packet(A_IP, VIP, proto, sport, 53, TCP_SYN);
                let (v, f) = from_pod(&mut env, POD_A, A_MAC, &syn);
                let out = &f.data()[14..];
                assert_checksums(out);
                let ((src, sp), (dst, dp)) = ends(out);
                assert_eq!((src, sp, dp), (A_IP, sport, 5353), "{proto}");
                seen.insert(dst);
                let expect = if dst == B_IP {
                    fwd(POD_B)
                } else {
                    tunnel_to(OTHER_NODE)
                };
                assert_eq!(v, expect);
                // The next packet of the flow: the same backend.
                let (_, f2) = from_pod(
                    &mut env,
                    POD_A,
                    A_MAC,
                    &packet(A_IP, VIP, proto, sport, 53, TCP_ACK),
                );
                assert_eq!(ends(&f2.data()[14..]).1 .0, dst);
                // The backend's reply comes back from the ClusterIP.
                let reply = packet(dst, A_IP, proto, 5353, sport, TCP_SYN | TCP_ACK);
                let (v, f) = if dst == B_IP {
                    from_pod(&mut env, POD_B, B_MAC, &reply)
                } else {
                    env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &reply))
                };
                assert_eq!(v, fwd(POD_A));
                let back = &f.data()[14..];
                assert_checksums(back);
                assert_eq!(ends(back), ((VIP, 53), (A_IP, sport)));
            }
            assert_eq!(seen.len(), 2, "both backends get flows");
            let t = &env.services;
            let fe = t.frontend(VIP, 53, proto).unwrap();
            assert_eq!(fe.counters().flows.load(Ordering::Relaxed), 64);
            assert_eq!(fe.counters().packets.load(Ordering::Relaxed), 128);
            let per_backend: u64 = fe
                .backends()
                .iter()
                .map(|b| b.counters.flows.load(Ordering::Relaxed))
                .sum();
            assert_eq!(per_backend, 64);
            // Direct traffic between the pods is left alone.
            let direct = packet(B_IP, A_IP, proto, 5353, 40000 + 999, 0);
            let (v, f) = from_pod(&mut env, POD_B, B_MAC, &direct);
            assert_eq!(v, fwd(POD_A));
            assert_eq!(ends(&f.data()[14..]).0, (B_IP, 5353));
        }
    }

    #[test]
    fn partial_checksums_get_only_the_pseudo_header_change() {
        let mut env = Env::new();
        env.services = table(&[(B_IP, 8053)], 0);
        let mut ip = packet(A_IP, VIP, PROTO_TCP, 40000, 53, TCP_SYN);
        // NEEDS_CSUM: the field holds the pseudo-header sum, not inverted.
        let mut p = ip[12..20].to_vec();
        p.extend_from_slice(&[0, 6, 0, 20]);
        let pseudo = ones_complement_sum(&p);
        ip[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let mut f = Frame::from_bytes(&eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
        f.vnet.flags = VnetHdr::F_NEEDS_CSUM;
        f.vnet.csum_start = 34;
        f.vnet.csum_offset = 16;
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_B));
        let out = &f.data()[14..];
        let mut p = out[12..20].to_vec();
        p.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(
            u16::from_be_bytes([out[36], out[37]]),
            ones_complement_sum(&p)
        );
        assert_eq!(ends(out).1, (B_IP, 8053));
    }

    #[test]
    fn client_ip_affinity_keeps_one_backend_until_it_times_out() {
        let mut env = uplink_env(EncapMode::Always);
        let backends: Vec<(Ipv4Addr, u16)> = (2..10)
            .map(|i| (Ipv4Addr::new(10, 244, 2, i), 53))
            .collect();
        env.services = table(&backends, 60);
        let first = |env: &mut Env, sport: u16| {
            let (_, f) = from_pod(
                env,
                POD_A,
                A_MAC,
                &packet(A_IP, VIP, PROTO_UDP, sport, 53, 0),
            );
            ends(&f.data()[14..]).1 .0
        };
        let b = first(&mut env, 1000);
        for sport in 1001..1050 {
            assert_eq!(first(&mut env, sport), b);
        }
        // 50 s later: still (each new flow refreshed it).
        env.now_ns += 50_000_000_000;
        assert_eq!(first(&mut env, 2000), b);
        // Without the affinity the flows spread.
        env.services = table(&backends, 0);
        let spread: std::collections::HashSet<_> =
            (3000..3064).map(|s| first(&mut env, s)).collect();
        assert!(spread.len() > 3, "{spread:?}");
        // The affinity's backend goes away: the client gets another.
        let rest: Vec<_> = backends.iter().copied().filter(|x| x.0 != b).collect();
        env.services = table(&rest, 60);
        let c = first(&mut env, 4000);
        assert_ne!(c, b);
        assert_eq!(first(&mut env, 4001), c);
        // Expiry: after 61 s without a new flow the client's entry is gone.
        let aff = FlowKey {
            src: A_IP,
            dst: VIP,
            sport: 0,
            dport: 53,
            proto: PROTO_AFFINITY,
        };
        let now_ms = |env: &Env| env.now_ns / 1_000_000;
        assert!(env.flows.lookup(&aff, now_ms(&env)).is_some());
        env.now_ns += 61_000_000_000;
        assert!(env.flows.lookup(&aff, now_ms(&env)).is_none());
        first(&mut env, 5000);
        assert!(env.flows.lookup(&aff, now_ms(&env)).is_some(), "made again");
    }

    #[test]
    fn mutated_packets_to_and_from_a_clusterip_never_panic() {
        let mut env = uplink_env(EncapMode::Always);
        env.services = table(&[(B_IP, 5353), (REMOTE_IP, 53)], 30);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
        let seeds: Vec<(PortId, Vec<u8>)> = [PROTO_TCP, PROTO_UDP, PROTO_SCTP]
            .into_iter()
            .flat_map(|proto| {
                [
                    (
                        POD_A,
                        eth(
                            ROUTER_MAC,
                            A_MAC,
                            ETHERTYPE_IPV4,
                            &packet(A_IP, VIP, proto, 4000, 53, TCP_SYN),
                        ),
                    ),
                    (
                        POD_B,
                        eth(
                            ROUTER_MAC,
                            B_MAC,
                            ETHERTYPE_IPV4,
                            &packet(B_IP, A_IP, proto, 5353, 4000, TCP_ACK),
                        ),
                    ),
                ]
            })
            .collect();
        for i in 0..5_000u64 {
            let (port, mut b) = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(0..4) {
                let j = rng.gen_range(14..b.len());
                b[j] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                b.truncate(rng.gen_range(14..=b.len()));
            }
            let mut f = Frame::from_bytes(&b);
            if rng.gen_bool(0.2) {
                f.vnet.flags = VnetHdr::F_NEEDS_CSUM;
            }
            env.now_ns += 1_000_000 * (i % 7);
            if let Verdict::Forward { .. } = env.process(port, &mut f) {
                let d = f.data();
                assert!(check_ipv4(&d[14..]).is_ok(), "forwarded IP is valid");
            }
        }
    }

    #[test]
    fn no_backend_is_refused_as_kube_proxy_does() {
        let mut env = Env::with_cfg(cfg(1000, 1000));
        env.services = table(&[], 0);
        // UDP: port unreachable, quoting the packet as sent.
        let udp = packet(A_IP, VIP, PROTO_UDP, 40000, 53, 0);
        let (v, f) = from_pod(&mut env, POD_A, A_MAC, &udp);
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 3, 0, &udp);
        // TCP: a reset from the ClusterIP:port, acking the SYN.
        let syn = packet(A_IP, VIP, PROTO_TCP, 40000, 53, TCP_SYN);
        let (v, f) = from_pod(&mut env, POD_A, A_MAC, &syn);
        assert_eq!(v, fwd(POD_A));
        let d = f.data();
        assert_eq!(&d[0..6], &A_MAC);
        let ip = &d[14..];
        assert_eq!(ip.len(), 40);
        assert_checksums(ip);
        assert_eq!(ends(ip), ((VIP, 53), (A_IP, 40000)));
        assert_eq!(ip[33], TCP_RST | TCP_ACK);
        assert_eq!(u32::from_be_bytes(ip[28..32].try_into().unwrap()), 1001);
        // A port the ClusterIP does not serve: the same.
        let other = packet(A_IP, VIP, PROTO_TCP, 40000, 80, TCP_ACK);
        let (v, f) = from_pod(&mut env, POD_A, A_MAC, &other);
        assert_eq!(v, fwd(POD_A));
        assert_eq!(f.data()[14 + 33], TCP_RST);
        assert_eq!(env.counters.drops(DropReason::ServiceNoBackend), 3);
        assert_eq!(env.counters.tcp_resets_sent.get(), 2);
        let fe = env.services.frontend(VIP, 53, PROTO_TCP).unwrap();
        assert_eq!(fe.counters().rejected.load(Ordering::Relaxed), 1);
        // A reset is never answered; ICMP to a ClusterIP is dropped.
        let rst = packet(A_IP, VIP, PROTO_TCP, 40000, 53, TCP_RST);
        assert_eq!(
            from_pod(&mut env, POD_A, A_MAC, &rst).0,
            Verdict::Drop(DropReason::ServiceNoBackend)
        );
        let echo = ipv4(A_IP, VIP, 1, 64, DF, &[], &[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]);
        assert_eq!(
            from_pod(&mut env, POD_A, A_MAC, &echo).0,
            Verdict::Drop(DropReason::ServiceUntranslatable)
        );
    }

    /// An ICMP error from `src` to `dst` quoting `quote`.
    fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, quote: &[u8]) -> Vec<u8> {
        let mut icmp = vec![ty, code, 0, 0, 0, 0, 0, 0];
        if code == 4 {
            icmp[6..8].copy_from_slice(&1400u16.to_be_bytes());
        }
        icmp.extend_from_slice(quote);
        let c = !ones_complement_sum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(src, dst, 1, 64, 0, &[], &icmp)
    }

    /// The outer addresses and the quote of an ICMP error, its checksums
    /// checked (the quote's IP header's too).
    fn icmp_parts(f: &Frame) -> ((Ipv4Addr, Ipv4Addr), Vec<u8>) {
        let out = &f.data()[14..];
        assert!(check_ipv4(out).is_ok(), "outer IP checksum");
        assert_eq!(out[9], 1);
        let icmp = &out[20..];
        assert_eq!(ones_complement_sum(icmp), 0xffff, "ICMP checksum");
        let inner = icmp[8..].to_vec();
        assert_eq!(
            ones_complement_sum(&inner[..20]),
            0xffff,
            "quoted IP checksum"
        );
        ((addr(out, 12), addr(out, 16)), inner)
    }

    #[test]
    fn icmp_errors_about_a_balanced_flow_reach_the_client_about_the_clusterip() {
        let mut env = uplink_env(EncapMode::Always);
        env.services = table(&[(B_IP, 5353)], 0);
        let sent = packet(A_IP, VIP, PROTO_UDP, 40000, 53, 0);
        let (v, f) = from_pod(&mut env, POD_A, A_MAC, &sent);
        assert_eq!(v, fwd(POD_B));
        let translated = f.data()[14..].to_vec();
        assert_eq!(ends(&translated).1, (B_IP, 5353));
        // The backend has nothing on the port: its port unreachable,
        // quoting all of the packet or only 8 bytes past the header,
        // comes from the ClusterIP about the packet the client sent.
        for quote_len in [translated.len(), 28] {
            let err = icmp_error(B_IP, A_IP, 3, 3, &translated[..quote_len]);
            let (v, f) = from_pod(&mut env, POD_B, B_MAC, &err);
            assert_eq!(v, fwd(POD_A));
            let ((src, dst), inner) = icmp_parts(&f);
            assert_eq!((src, dst), (VIP, A_IP));
            assert_eq!(ends(&inner), ((A_IP, 40000), (VIP, 53)));
            if quote_len == translated.len() {
                // Transport checksum and all: the client's own packet
                // (but for the TTL the router took).
                assert_checksums(&inner);
                assert_eq!(inner[20..], sent[20..]);
            }
        }
        // Fragmentation needed from a router on the way (here the node's
        // kernel, through the host port): its source stays.
        let err = icmp_error(HOSTNET_IP, A_IP, 3, 4, &translated[..28]);
        let (v, f) = env.run(HOST, &eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &err));
        assert_eq!(v, fwd(POD_A));
        let ((src, _), inner) = icmp_parts(&f);
        assert_eq!(src, HOSTNET_IP);
        assert_eq!(ends(&inner).1, (VIP, 53));
        // An error about a packet of no balanced flow is left alone.
        let direct = packet(A_IP, B_IP, PROTO_UDP, 40001, 5353, 0);
        let err = icmp_error(B_IP, A_IP, 3, 3, &direct);
        let (v, f) = from_pod(&mut env, POD_B, B_MAC, &err);
        assert_eq!(v, fwd(POD_A));
        let ((src, _), inner) = icmp_parts(&f);
        assert_eq!(src, B_IP);
        assert_eq!(inner, direct);
        // The router's own error about a translated packet (too big for
        // the tunnel to a backend on another node) quotes the packet as
        // the client sent it.
        env.services = table(&[(REMOTE_IP, 5353)], 0);
        let mut l4 = vec![0u8; 1480];
        l4[0..2].copy_from_slice(&40002u16.to_be_bytes());
        l4[2..4].copy_from_slice(&53u16.to_be_bytes());
        l4[4..6].copy_from_slice(&1480u16.to_be_bytes());
        let mut big = ipv4(A_IP, VIP, PROTO_UDP, 64, DF, &[], &l4);
        fill_l4_checksum(&mut big);
        let (v, f) = from_pod(&mut env, POD_A, A_MAC, &big);
        assert_eq!(v, fwd(POD_A));
        let raw = &f.data()[14 + 20..];
        assert_eq!((raw[0], raw[1]), (3, 4), "fragmentation needed");
        let mtu = u16::from_be_bytes([raw[6], raw[7]]);
        assert!(mtu < 1500, "{mtu}");
        assert_icmp_error(&f, A_MAC, A_IP, 3, 4, mtu, &big);
    }

    #[test]
    fn flows_of_a_backend_that_left_are_cut_and_balanced_again() {
        let mut env = uplink_env(EncapMode::Always);
        let both = [(B_IP, 5353), (REMOTE_IP, 5353)];
        env.services = table(&both, 0);
        let send = |env: &mut Env, proto: u8, sport: u16, flags: u8| {
            let (v, f) = from_pod(
                env,
                POD_A,
                A_MAC,
                &packet(A_IP, VIP, proto, sport, 53, flags),
            );
            (v, ends(&f.data()[14..]))
        };
        let translated = |b: Ipv4Addr, sport: u16| FlowKey {
            src: A_IP,
            dst: b,
            sport,
            dport: 5353,
            proto: PROTO_UDP,
        };
        let now_ms = |env: &Env| env.now_ns / 1_000_000;
        let first: Vec<(u16, Ipv4Addr)> = (1000..1032u16)
            .map(|sport| (sport, send(&mut env, PROTO_UDP, sport, 0).1 .1 .0))
            .collect();
        let on_remote = first.iter().filter(|(_, b)| *b == REMOTE_IP).count();
        assert!(on_remote > 0 && on_remote < first.len(), "{first:?}");

        // The remote backend leaves: its flows are cut when the table is
        // published, the others keep theirs.
        env.services = table(&[(B_IP, 5353)], 0);
        let cut = crate::service::cut_stale_flows(&env.flows, &env.services);
        assert_eq!(cut, on_remote);
        let fe = env.services.frontend(VIP, 53, PROTO_UDP).unwrap();
        assert_eq!(fe.counters().cut.load(Ordering::Relaxed), on_remote as u64);
        for &(sport, b) in &first {
            let entry = env.flows.lookup(&translated(b, sport), now_ms(&env));
            assert_eq!(entry.is_some(), b == B_IP, "{sport} on {b}");
            // UDP: the next packet is balanced again, to the one left.
            assert_eq!(send(&mut env, PROTO_UDP, sport, 0).1 .1, (B_IP, 5353));
        }
        // A table whose backends changed without a cut (a worker on an
        // older snapshot): the flow's next packet cuts it itself.
        env.services = table(&[(REMOTE_IP, 5353)], 0);
        let (sport, _) = first[0];
        assert_eq!(send(&mut env, PROTO_UDP, sport, 0).1 .1, (REMOTE_IP, 5353));
        let fe = env.services.frontend(VIP, 53, PROTO_UDP).unwrap();
        assert_eq!(fe.counters().cut.load(Ordering::Relaxed), 1);
        assert!(env
            .flows
            .lookup(&translated(B_IP, sport), now_ms(&env))
            .is_none());

        // TCP: an open connection whose backend goes, with no backend
        // left: its next segment is reset from the ClusterIP.
        env.services = table(&both, 0);
        send(&mut env, PROTO_TCP, 2000, TCP_SYN);
        env.services = table(&[], 0);
        crate::service::cut_stale_flows(&env.flows, &env.services);
        let fe = env.services.frontend(VIP, 53, PROTO_TCP).unwrap();
        assert_eq!(fe.counters().cut.load(Ordering::Relaxed), 1);
        let (v, ends_) = send(&mut env, PROTO_TCP, 2000, TCP_ACK);
        assert_eq!(v, fwd(POD_A));
        assert_eq!(ends_, ((VIP, 53), (A_IP, 2000)), "a reset back");

        // The Service deleted: every entry of its flows goes.
        env.services = table(&both, 0);
        for sport in 3000..3010 {
            send(&mut env, PROTO_UDP, sport, 0);
        }
        assert!(!env.flows.is_empty());
        env.services = ServiceTable::new();
        assert!(crate::service::cut_stale_flows(&env.flows, &env.services) >= 10);
        assert!(env.flows.is_empty(), "{} entries left", env.flows.len());
    }

    #[test]
    fn a_draining_backend_keeps_its_flows_and_gets_no_new_one() {
        let mut env = uplink_env(EncapMode::Always);
        env.services = table(&[(B_IP, 5353)], 0);
        let to = |env: &mut Env, sport: u16| {
            let (_, f) = from_pod(
                env,
                POD_A,
                A_MAC,
                &packet(A_IP, VIP, PROTO_TCP, sport, 53, TCP_ACK),
            );
            ends(&f.data()[14..]).1 .0
        };
        assert_eq!(to(&mut env, 1000), B_IP);
        // B terminates (still serving), REMOTE takes the new flows.
        env.services = table_draining(&[(REMOTE_IP, 5353)], &[(B_IP, 5353)], 0);
        assert_eq!(
            crate::service::cut_stale_flows(&env.flows, &env.services),
            0
        );
        assert_eq!(to(&mut env, 1000), B_IP, "its connection stays");
        assert!((1001..1020).all(|sport| to(&mut env, sport) == REMOTE_IP));
        let fe = env.services.frontend(VIP, 53, PROTO_TCP).unwrap();
        assert_eq!(fe.counters().cut.load(Ordering::Relaxed), 0);
        assert_eq!(fe.draining()[0].counters.packets.load(Ordering::Relaxed), 1);
        // B gone for good: its connection is cut.
        env.services = table(&[(REMOTE_IP, 5353)], 0);
        assert_eq!(
            crate::service::cut_stale_flows(&env.flows, &env.services),
            1
        );
    }

    #[test]
    fn a_clients_icmp_error_about_a_reply_goes_to_the_backend() {
        let mut env = uplink_env(EncapMode::Always);
        env.services = table(&[(B_IP, 5353)], 0);
        from_pod(
            &mut env,
            POD_A,
            A_MAC,
            &packet(A_IP, VIP, PROTO_UDP, 40000, 53, 0),
        );
        let (v, f) = from_pod(
            &mut env,
            POD_B,
            B_MAC,
            &packet(B_IP, A_IP, PROTO_UDP, 5353, 40000, 0),
        );
        assert_eq!(v, fwd(POD_A));
        let reply = f.data()[14..].to_vec();
        assert_eq!(ends(&reply).0, (VIP, 53));
        // The client's socket is gone: port unreachable, to the ClusterIP.
        let err = icmp_error(A_IP, VIP, 3, 3, &reply);
        let (v, f) = from_pod(&mut env, POD_A, A_MAC, &err);
        assert_eq!(v, fwd(POD_B));
        let ((src, dst), inner) = icmp_parts(&f);
        assert_eq!((src, dst), (A_IP, B_IP));
        assert_eq!(ends(&inner), ((B_IP, 5353), (A_IP, 40000)));
        assert_checksums(&inner);
        // About no balanced flow: dropped, as any other ICMP to it.
        let other = packet(VIP, A_IP, PROTO_UDP, 53, 40999, 0);
        assert_eq!(
            from_pod(&mut env, POD_A, A_MAC, &icmp_error(A_IP, VIP, 3, 3, &other)).0,
            Verdict::Drop(DropReason::ServiceUntranslatable)
        );
    }
}
