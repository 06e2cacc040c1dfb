//! Stage 7, ICMP errors: a stage that refuses a validated packet with an
//! error to send ([`super::Fault::Icmp`]: net or host unreachable, time
//! exceeded, fragmentation needed) gets it built here, in the same buffer,
//! under a per-worker token bucket.
//!
//! Invariants (RFC 1812 4.3.2): never an error about an ICMP error, a
//! non-first fragment or a bogon source; at most 576 bytes, quoting as much
//! of the original as fits; source the node's address, TTL 64, a fresh
//! identification. An error about a packet from the uplink is routed back
//! by [`super::route::route_back`]; any other goes out of the port the
//! packet came in on, to its sender's MAC. The original drop reason and
//! `icmp_sent` are counted here; a refusal by the rate limiter counts
//! `icmp_rate_limited` and returns the drop.
use super::validate::is_bad_source;
use super::{route, BatchContext, IcmpError, Pipeline, Verdict};
use crate::counters::DropReason;
use crate::frame::{Frame, VnetHdr};
use crate::port::PortId;
use crate::wire::{
    field, Icmpv4Packet, IpProtocol, Ipv4Packet, DEFAULT_TTL, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4,
    ICMPV4_HEADER_LEN, IPV4_HEADER_LEN,
};

/// Largest ICMP error datagram (IP header included) the router sends:
/// RFC 1812 section 4.3.2.3.
pub const MAX_ICMP_ERROR_LEN: usize = 576;

/// ICMP types that are errors (RFC 1122 3.2.2: never answer them with an
/// error): destination unreachable, source quench, redirect, time exceeded,
/// parameter problem.
fn is_icmp_error_type(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A token bucket counted in nano-tokens so integer arithmetic refills it
/// exactly: `rate` tokens per second is `rate` nano-tokens per nanosecond.
#[derive(Clone, Debug)]
pub(super) struct TokenBucket {
    nano_tokens: u64,
    capacity: u64,
    rate_per_sec: u64,
    last_ns: u64,
}

impl TokenBucket {
    /// Starts full.
    pub(super) fn new(rate_per_sec: u32, burst: u32) -> Self {
        let capacity = u64::from(burst) * NANOS_PER_SEC;
        TokenBucket {
            nano_tokens: capacity,
            capacity,
            rate_per_sec: u64::from(rate_per_sec),
            last_ns: 0,
        }
    }

    /// Refills for the time since the last call and takes one token if
    /// there is one. Time going backwards refills nothing.
    pub(super) fn take(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.nano_tokens = self
            .nano_tokens
            .saturating_add(elapsed.saturating_mul(self.rate_per_sec))
            .min(self.capacity);
        if self.nano_tokens >= NANOS_PER_SEC {
            self.nano_tokens -= NANOS_PER_SEC;
            true
        } else {
            false
        }
    }
}

impl Pipeline {
    /// Turns the frame (a validated Ethernet + IPv4 packet, padding
    /// stripped, source checked) into an ICMP error back to its sender, in
    /// place, or returns `Drop(reason)` when no error may be sent.
    pub(super) fn icmp_error(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        frame: &mut Frame,
        err: IcmpError,
        reason: DropReason,
    ) -> Verdict {
        let data = frame.data();
        let orig = Ipv4Packet::new_unchecked(&data[ETHERNET_HEADER_LEN..]);
        let hl = usize::from(orig.header_len());
        // Only the first fragment carries the headers the sender can match.
        if orig.frag_offset() != 0 {
            return Verdict::Drop(reason);
        }
        // Never an error about an error (nor about an ICMP packet too short
        // to tell).
        if orig.next_header() == IpProtocol::Icmp {
            match data.get(ETHERNET_HEADER_LEN + hl) {
                Some(&t) if !is_icmp_error_type(t) => {}
                _ => return Verdict::Drop(reason),
            }
        }
        if is_bad_source(orig.src_addr()) {
            return Verdict::Drop(reason);
        }
        let orig_src = orig.src_addr();
        // An error about a packet from another node goes back the way the
        // router would route any packet to its source (through the tunnel,
        // normally); anything else goes back out of the port it came in on.
        let (out, out_mac, tunnel) = if ctx.is_uplink(ingress) {
            match route::route_back(ctx, self.cfg.node_ip, orig_src) {
                Some(e) => (e.port, e.mac(), e.tunnel),
                None => return Verdict::Drop(reason),
            }
        } else {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&data[field::ethernet::SOURCE]);
            (ingress, mac, None)
        };
        if !self.icmp_bucket.take(ctx.now_ns) {
            ctx.counters.icmp_rate_limited.incr();
            return Verdict::Drop(reason);
        }

        const ICMP_OFF: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
        const QUOTE_OFF: usize = ICMP_OFF + ICMPV4_HEADER_LEN;
        // As much of the original as fits in 576 bytes; that is always at
        // least its header (<= 60 bytes) plus 8 bytes of payload.
        let quote_len = (data.len() - ETHERNET_HEADER_LEN)
            .min(MAX_ICMP_ERROR_LEN - IPV4_HEADER_LEN - ICMPV4_HEADER_LEN);
        let new_len = QUOTE_OFF + quote_len;
        // Grow first (short originals) so the overlapping copy fits; the
        // frame can always take 576 bytes + Ethernet.
        if new_len > frame.len() && !frame.resize(new_len) {
            return Verdict::Drop(reason);
        }
        frame.data_mut().copy_within(
            ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + quote_len,
            QUOTE_OFF,
        );
        frame.resize(new_len);
        let ident = self.next_ident();

        let d = frame.data_mut();
        d[field::ethernet::DESTINATION].copy_from_slice(&out_mac);
        d[field::ethernet::SOURCE].copy_from_slice(&self.cfg.router_mac);
        d[field::ethernet::ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

        let mut ip = Ipv4Packet::new_unchecked(&mut d[ETHERNET_HEADER_LEN..ICMP_OFF]);
        ip.set_version(4);
        ip.set_header_len(IPV4_HEADER_LEN as u8);
        ip.set_dscp(0);
        ip.set_ecn(0);
        ip.set_total_len((new_len - ETHERNET_HEADER_LEN) as u16);
        ip.set_ident(ident);
        ip.clear_flags();
        ip.set_frag_offset(0);
        ip.set_hop_limit(DEFAULT_TTL);
        ip.set_next_header(IpProtocol::Icmp);
        ip.set_src_addr(self.cfg.node_ip);
        ip.set_dst_addr(orig_src);
        ip.fill_checksum();

        let icmp = &mut d[ICMP_OFF..];
        icmp[field::icmp::TYPE] = err.ty;
        icmp[field::icmp::CODE] = err.code;
        icmp[field::icmp::CHECKSUM].fill(0);
        icmp[field::icmp::UNUSED].fill(0);
        icmp[field::icmp::NEXT_HOP_MTU].copy_from_slice(&err.mtu.to_be_bytes());
        Icmpv4Packet::new_unchecked(icmp).fill_checksum();

        frame.vnet = VnetHdr::default();
        ctx.counters.drop(reason);
        ctx.counters.icmp_sent.incr();
        Verdict::Forward { port: out, tunnel }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

    #[test]
    fn no_route_sends_net_unreachable() {
        let mut env = Env::new();
        let input = from_a(INTERNET_IP, 64, DF, 100);
        let mut f = Frame::from_bytes(&input);
        f.vnet.flags = VnetHdr::F_NEEDS_CSUM;
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 0, 0, ip_part(&input));
        assert_eq!(f.vnet, VnetHdr::default());
        assert_eq!(env.counters.drops(DropReason::NoRoute), 1);
        assert_eq!(env.counters.icmp_sent.get(), 1);
        // smoltcp agrees it is a well-formed unreachable quoting our packet.
        let ip = check_ipv4(&f.data()[14..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap() {
            Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            } => {
                assert_eq!(reason, Icmpv4DstUnreachable::NetUnreachable);
                assert_eq!(header.src_addr, A_IP);
                assert_eq!(header.dst_addr, INTERNET_IP);
                assert_eq!(data, &input[34..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn large_original_is_quoted_up_to_576_bytes() {
        let mut env = Env::new();
        let input = from_a(INTERNET_IP, 64, DF, 1400);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, fwd(POD_A));
        assert_eq!(f.len(), 14 + 576);
        assert_icmp_error(&f, A_MAC, A_IP, 3, 0, 0, ip_part(&input));
        // A tiny original (less than 8 bytes of payload) is quoted whole.
        let ip = ipv4(A_IP, INTERNET_IP, 17, 64, 0, &[], &[1, 2, 3]);
        let (v, f) = env.run(POD_A, &eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip));
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 0, 0, &ip);
        assert_eq!(f.len(), 14 + 20 + 8 + 23);
    }

    #[test]
    fn unreachable_sends_host_unreachable() {
        let mut env = Env::new();
        let input = from_a(UNASSIGNED_IP, 64, DF, 80);
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, fwd(POD_A));
        assert_icmp_error(&f, A_MAC, A_IP, 3, 1, 0, ip_part(&input));
        assert_eq!(env.counters.drops(DropReason::NoRoute), 1);
        // From the host port, the error goes back to the host.
        let input = from_host(NODE_IP, UNASSIGNED_IP, 64);
        let (v, f) = env.run(HOST, &input);
        assert_eq!(v, fwd(HOST));
        assert_icmp_error(&f, HOST_MAC, NODE_IP, 3, 1, 0, ip_part(&input));
    }

    #[test]
    fn no_icmp_error_about_errors_or_later_fragments() {
        let mut env = Env::new();
        // An ICMP port unreachable quoting something, TTL 1.
        for ty in [3u8, 4, 5, 11, 12] {
            let mut err = vec![ty, 0, 0, 0, 0, 0, 0, 0];
            err.extend_from_slice(&ipv4(B_IP, A_IP, 17, 64, 0, &[], &udp(8)));
            let ip = ipv4(A_IP, B_IP, 1, 1, 0, &[], &err);
            let b = eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip);
            let (v, f) = env.run(POD_A, &b);
            assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded), "type {ty}");
            assert_eq!(f.data(), &b[..]);
        }
        // ICMP with no bytes to tell its type.
        let ip = ipv4(A_IP, B_IP, 1, 1, 0, &[], &[]);
        let b = eth(ROUTER_MAC, A_MAC, ETHERTYPE_IPV4, &ip);
        assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(DropReason::TtlExceeded));
        // A non-first fragment.
        let b = from_a(B_IP, 1, 185, 100);
        assert_eq!(env.run(POD_A, &b).0, Verdict::Drop(DropReason::TtlExceeded));
        // A first fragment does get one.
        let b = from_a(B_IP, 1, MF, 100);
        assert_eq!(env.run(POD_A, &b).0, fwd(POD_A));
        assert_eq!(env.counters.icmp_sent.get(), 1);
        assert_eq!(env.counters.icmp_rate_limited.get(), 0);
    }

    #[test]
    fn icmp_errors_are_rate_limited() {
        let mut env = Env::with_cfg(cfg(10, 2));
        let input = from_a(INTERNET_IP, 64, DF, 60);
        assert_eq!(env.run(POD_A, &input).0, fwd(POD_A));
        assert_eq!(env.run(POD_A, &input).0, fwd(POD_A));
        let (v, f) = env.run(POD_A, &input);
        assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
        assert_eq!(f.data(), &input[..], "refused frame is left alone");
        assert_eq!(env.counters.icmp_rate_limited.get(), 1);
        assert_eq!(env.counters.icmp_sent.get(), 2);
        // The pipeline counted the two it answered; the worker counts the
        // refused one from the verdict.
        assert_eq!(env.counters.drops(DropReason::NoRoute), 2);
        // 10/s: half a token after 50 ms, one after 100 ms.
        env.now_ns += 50_000_000;
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        env.now_ns += 50_000_000;
        assert_eq!(env.run(POD_A, &input).0, fwd(POD_A));
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        // A long pause refills to the burst, no more.
        env.now_ns += 3_600 * 1_000_000_000;
        assert_eq!(env.run(POD_A, &input).0, fwd(POD_A));
        assert_eq!(env.run(POD_A, &input).0, fwd(POD_A));
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        // Time going backwards refills nothing.
        env.now_ns -= 10_000_000_000;
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        assert_eq!(env.counters.icmp_rate_limited.get(), 5);
        assert_eq!(env.counters.icmp_sent.get(), 5);
    }

    #[test]
    fn icmp_errors_get_fresh_identifications() {
        let mut env = Env::new();
        let input = from_a(INTERNET_IP, 64, DF, 60);
        let (_, f1) = env.run(POD_A, &input);
        let (_, f2) = env.run(POD_A, &input);
        let id1 = check_ipv4(&f1.data()[14..]).unwrap().ident();
        let id2 = check_ipv4(&f2.data()[14..]).unwrap().ident();
        assert_ne!(id1, id2);
    }

    #[test]
    fn zero_burst_sends_no_icmp() {
        let mut env = Env::with_cfg(cfg(1000, 0));
        let input = from_a(INTERNET_IP, 64, DF, 60);
        assert_eq!(env.run(POD_A, &input).0, Verdict::Drop(DropReason::NoRoute));
        assert_eq!(env.counters.icmp_rate_limited.get(), 1);
    }

    #[test]
    fn icmp_errors_about_tunnelled_packets_follow_a_group_back() {
        // The sender's block is an ECMP group: the error goes to a member.
        let mut env = ecmp_env(EncapMode::Always);
        let inner = ipv4(ECMP_POD, A_IP, 17, 1, DF, &[], &udp(80));
        let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
        assert!(
            v == tunnel_to(OTHER_NODE) || v == tunnel_to(FAR_NODE),
            "{v:?}"
        );
        assert_icmp_error(&f, ROUTER_MAC, ECMP_POD, 11, 0, 0, &inner);
    }

    #[test]
    fn icmp_errors_for_tunnelled_packets_go_back_through_the_tunnel() {
        for mode in [EncapMode::Always, EncapMode::Never] {
            let mut env = uplink_env(mode);
            // TTL 1 on arrival: time exceeded from this node to the sender.
            let inner = remote_udp(A_IP, 1, 100);
            let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
            let (out, mac) = match mode {
                EncapMode::Never => (fwd(HOST), HOST_MAC),
                _ => (tunnel_to(OTHER_NODE), ROUTER_MAC),
            };
            assert_eq!(v, out, "{mode:?}");
            assert_icmp_error(&f, mac, REMOTE_IP, 11, 0, 0, &inner);
            // An unassigned address of our block: host unreachable.
            let inner = remote_udp(UNASSIGNED_IP, 9, 100);
            let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
            assert_eq!(v, out);
            assert_icmp_error(&f, mac, REMOTE_IP, 3, 1, 0, &inner);
            assert_eq!(env.counters.drops(DropReason::IpipNotLocal), 1);
            assert_eq!(env.counters.drops(DropReason::TtlExceeded), 1);
            assert_eq!(env.counters.icmp_sent.get(), 2);
        }
        // Too big for the pod's port with DF (pod C: MTU 1000).
        let mut env = uplink_env(EncapMode::Always);
        let inner = remote_udp(C_IP, 30, 1200);
        let (v, f) = env.run(UPLINK, &ipip_in(OTHER_NODE, NODE_IP, &inner));
        assert_eq!(v, tunnel_to(OTHER_NODE));
        assert_icmp_error(&f, ROUTER_MAC, REMOTE_IP, 3, 4, 1000, &inner);
    }
}
