//! Stage 2, ARP: proxy ARP. A pod's only neighbour is the router, so
//! every request from a pod (for any address but its own) is answered with
//! the router MAC; the host port is answered only for addresses the router
//! routes away from it; the uplink has no ARP.
//!
//! Invariants: the reply is built in the request's buffer, exactly one
//! Ethernet + ARP packet (padding dropped), no offload metadata, and goes
//! back out of the port the request came in on; requests that are
//! malformed, not requests, gratuitous, or from a pod for another address
//! than its own are counted drops. A pod port gets at most
//! `arp_rate_per_sec` replies (token bucket per port, depth `arp_burst`);
//! the rest is the drop `arp_rate_limited`, so a flood of requests costs a
//! validation each, not a reply each. The host port (the node's own stack)
//! is not limited.
use std::net::Ipv4Addr;

use super::{BatchContext, Pipeline, Verdict};
use crate::counters::DropReason;
use crate::fib::NextHop;
use crate::frame::{Frame, VnetHdr};
use crate::port::{PortId, PortRole};
use crate::wire::{
    field, ArpHardware, ArpOperation, ArpPacket, EthernetProtocol, ARP_IPV4_LEN,
    ETHERNET_HEADER_LEN,
};

/// Copies 6 bytes out as a MAC (callers have checked the length).
#[inline]
fn mac(b: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    m
}

/// Copies 4 bytes out as an IPv4 address (callers have checked the length).
#[inline]
fn ipv4_at(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl Pipeline {
    /// Proxy ARP: answers requests in place with the router's MAC.
    pub(super) fn arp(
        &mut self,
        ctx: &BatchContext<'_>,
        ingress: PortId,
        role: &PortRole,
        frame: &mut Frame,
    ) -> Verdict {
        let data = frame.data();
        let Ok(arp) = ArpPacket::new_checked(&data[ETHERNET_HEADER_LEN..]) else {
            return Verdict::Drop(DropReason::ArpMalformed);
        };
        if arp.hardware_type() != ArpHardware::Ethernet
            || arp.protocol_type() != EthernetProtocol::Ipv4
            || arp.hardware_len() != 6
            || arp.protocol_len() != 4
        {
            return Verdict::Drop(DropReason::ArpMalformed);
        }
        if arp.operation() != ArpOperation::Request {
            return Verdict::Drop(DropReason::ArpNotRequest);
        }
        let requester_mac = mac(arp.source_hardware_addr());
        let sender_ip = ipv4_at(arp.source_protocol_addr());
        let target_ip = ipv4_at(arp.target_protocol_addr());
        if sender_ip.is_unspecified() || target_ip == sender_ip {
            return Verdict::Drop(DropReason::ArpGratuitous);
        }
        match *role {
            // Proxy ARP for everything: the pod's only neighbour is us.
            PortRole::Pod { ip, .. } => {
                if sender_ip != ip {
                    return Verdict::Drop(DropReason::ArpWrongSource);
                }
                let bucket = self.arp_buckets.get_mut(ingress.0 as usize);
                if !bucket.is_some_and(|b| b.take(ctx.now_ns)) {
                    return Verdict::Drop(DropReason::ArpRateLimited);
                }
            }
            // The host asks only for what we route away from it.
            PortRole::Host { .. } => match ctx.fib.lookup(target_ip) {
                None | Some(NextHop::Host) => {
                    return Verdict::Drop(DropReason::ArpNotAnswered);
                }
                Some(
                    NextHop::Local(_) | NextHop::Node(_) | NextHop::Nodes(_) | NextHop::Unreachable,
                ) => {}
            },
            // The uplink has no ARP (its frames are always IPv4).
            PortRole::Uplink { .. } => return Verdict::Drop(DropReason::ArpNotAnswered),
        }

        // Drop any Ethernet padding: the reply is exactly one ARP packet.
        frame.set_len(ETHERNET_HEADER_LEN + ARP_IPV4_LEN);
        let d = frame.data_mut();
        d[field::ethernet::DESTINATION].copy_from_slice(&requester_mac);
        d[field::ethernet::SOURCE].copy_from_slice(&self.cfg.router_mac);
        let mut reply = ArpPacket::new_unchecked(&mut d[ETHERNET_HEADER_LEN..]);
        reply.set_operation(ArpOperation::Reply);
        reply.set_source_hardware_addr(&self.cfg.router_mac);
        reply.set_source_protocol_addr(&target_ip.octets());
        reply.set_target_hardware_addr(&requester_mac);
        reply.set_target_protocol_addr(&sender_ip.octets());
        frame.vnet = VnetHdr::default();
        ctx.counters.arp_replies.incr();
        Verdict::Forward {
            port: ingress,
            tunnel: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

    #[test]
    fn proxy_arp_replies_are_rate_limited_per_pod_port() {
        let mut env = Env::new();
        let burst = PipelineConfig::DEFAULT_ARP_BURST;
        let rate = PipelineConfig::DEFAULT_ARP_RATE_PER_SEC;
        let req_a = arp([0xff; 6], 1, A_MAC, A_IP, GW);
        for i in 0..burst {
            assert_eq!(env.run(POD_A, &req_a).0, fwd(POD_A), "request {i}");
        }
        let limited = Verdict::Drop(DropReason::ArpRateLimited);
        for _ in 0..50 {
            assert_eq!(env.run(POD_A, &req_a).0, limited);
        }
        assert_eq!(env.counters.arp_replies.get(), u64::from(burst));
        // Another pod and the host are not slowed by pod A's flood.
        let req_b = arp([0xff; 6], 1, B_MAC, B_IP, GW);
        assert_eq!(env.run(POD_B, &req_b).0, fwd(POD_B));
        for _ in 0..2 * burst {
            let req = arp([0xff; 6], 1, HOST_MAC, NODE_IP, A_IP);
            assert_eq!(env.run(HOST, &req).0, fwd(HOST));
        }
        // Pod A gets one token back per 1/rate seconds.
        env.now_ns += 1_000_000_000 / u64::from(rate);
        assert_eq!(env.run(POD_A, &req_a).0, fwd(POD_A));
        assert_eq!(env.run(POD_A, &req_a).0, limited);
        // And the whole burst after a quiet second.
        env.now_ns += 1_000_000_000;
        for _ in 0..burst {
            assert_eq!(env.run(POD_A, &req_a).0, fwd(POD_A));
        }
        assert_eq!(env.run(POD_A, &req_a).0, limited);
    }

    #[test]
    fn proxy_arp_for_gateway_exact_reply() {
        let mut env = Env::new();
        let mut req = arp([0xff; 6], 1, A_MAC, A_IP, GW);
        req.resize(60, 0x5a); // minimum-size frame with padding
        let mut f = Frame::from_bytes(&req);
        f.vnet.gso_type = VnetHdr::GSO_UDP;
        assert_eq!(env.process(POD_A, &mut f), fwd(POD_A));
        assert_eq!(f.data(), &GW_ARP_REPLY);
        assert_eq!(f.vnet, VnetHdr::default());
        assert_eq!(env.counters.arp_replies.get(), 1);
    }

    #[test]
    fn proxy_arp_for_any_address_exact_reply() {
        let mut env = Env::new();
        // Unicast refresh (to the router's MAC) for another pod's address
        // and for something off the node.
        for (target, n) in [(B_IP, 1), (INTERNET_IP, 2)] {
            let (v, f) = env.run(POD_A, &arp(ROUTER_MAC, 1, A_MAC, A_IP, target));
            assert_eq!(v, fwd(POD_A));
            let mut want = GW_ARP_REPLY;
            want[28..32].copy_from_slice(&target.octets());
            assert_eq!(f.data(), &want);
            assert_eq!(env.counters.arp_replies.get(), n);
        }
    }

    #[test]
    fn arp_that_is_not_answered() {
        let mut env = Env::new();
        let cases = [
            // Pod A claiming B's address.
            (
                POD_A,
                arp([0xff; 6], 1, A_MAC, B_IP, GW),
                DropReason::ArpWrongSource,
            ),
            // Gratuitous: target == sender.
            (
                POD_A,
                arp([0xff; 6], 1, A_MAC, A_IP, A_IP),
                DropReason::ArpGratuitous,
            ),
            // Probe: sender 0.0.0.0.
            (
                POD_A,
                arp([0xff; 6], 1, A_MAC, Ipv4Addr::UNSPECIFIED, A_IP),
                DropReason::ArpGratuitous,
            ),
            // A reply.
            (
                POD_A,
                arp(ROUTER_MAC, 2, A_MAC, A_IP, GW),
                DropReason::ArpNotRequest,
            ),
            // Host port: the host's own network and unrouted addresses.
            (
                HOST,
                arp([0xff; 6], 1, HOST_MAC, NODE_IP, HOSTNET_IP),
                DropReason::ArpNotAnswered,
            ),
            (
                HOST,
                arp([0xff; 6], 1, HOST_MAC, NODE_IP, INTERNET_IP),
                DropReason::ArpNotAnswered,
            ),
        ];
        for (port, bytes, reason) in cases {
            let (v, f) = env.run(port, &bytes);
            assert_eq!(v, Verdict::Drop(reason), "{bytes:02x?}");
            assert_eq!(f.data(), &bytes[..], "dropped frames are not rewritten");
        }
        assert_eq!(env.counters.arp_replies.get(), 0);
    }

    #[test]
    fn malformed_arp() {
        let mut env = Env::new();
        let good = arp([0xff; 6], 1, A_MAC, A_IP, GW);
        let mut cases = vec![good[..41].to_vec(), good[..14].to_vec()];
        for (i, val) in [(15, 6u8), (17, 0xdd), (18, 8), (19, 16)] {
            let mut b = good.clone();
            b[i] = val; // hw type 6, proto 0x08dd, hlen 8, plen 16
            cases.push(b);
        }
        for b in cases {
            assert_eq!(
                env.run(POD_A, &b).0,
                Verdict::Drop(DropReason::ArpMalformed),
                "{b:02x?}"
            );
        }
    }

    #[test]
    fn host_port_arp_for_routed_addresses() {
        let mut env = Env::new();
        for target in [A_IP, REMOTE_IP, UNASSIGNED_IP] {
            let (v, f) = env.run(HOST, &arp([0xff; 6], 1, HOST_MAC, NODE_IP, target));
            assert_eq!(v, fwd(HOST), "{target}");
            let d = f.data();
            assert_eq!(&d[0..6], &HOST_MAC);
            assert_eq!(&d[6..12], &ROUTER_MAC);
            assert_eq!(&d[20..22], &[0, 2]);
            assert_eq!(&d[22..28], &ROUTER_MAC);
            assert_eq!(&d[28..32], &target.octets());
            assert_eq!(&d[32..38], &HOST_MAC);
            assert_eq!(&d[38..42], &NODE_IP.octets());
        }
        assert_eq!(env.counters.arp_replies.get(), 3);
    }
}
