//! The pipeline's network-policy stage (after validation and the host-NAT
//! stage, before routing): connection tracking first, then
//! the pods' compiled rules ([`crate::policy`]) for new connections only.
//!
//! Which packets it looks at: those whose source or destination is a
//! local pod some policy isolates (one hash probe each in the batch's
//! [`PolicyTable`](crate::policy::PolicyTable) snapshot; an empty table,
//! the case without policies, costs one branch). For them:
//!
//! 1. A packet of a flow the shared [`FlowTable`](crate::conntrack) holds
//!    with [`POLICY_ALLOWED`]: passes, either direction (replies need no
//!    rule). An ICMP error quoting a packet of such a flow passes too
//!    (path MTU discovery, port unreachable).
//! 2. Otherwise it is a new connection: the source's egress and the
//!    destination's ingress decide; allowed, it is recorded (or the entry
//!    the host-NAT stage made is marked) so the rest of the flow takes
//!    step 1; refused, it is dropped and counted as
//!    `policy_denied_egress` / `policy_denied_ingress`, globally and on
//!    the pod's port.
//! 3. A TCP packet without SYN of an untracked flow is a connection that
//!    was established before a policy isolated either end (or whose entry
//!    the table had no room for): it is picked up as established and
//!    allowed, as the kernel's conntrack does (`nf_conntrack_tcp_loose`)
//!    and Calico with it. A new TCP connection always starts with a SYN,
//!    which step 2 judges, so this opens no way around a policy.
//!
//! A policy change therefore applies to new connections at once (the next
//! batch loads the new snapshot) and leaves established ones alone until
//! they end or time out, as Calico does.
//!
//! Cost per packet of an isolated pod: one flow-table bucket read; a new
//! connection adds the compiled check (two hash probes, two binary
//! searches) and one insert. Nothing allocates, locks or logs.
use std::net::Ipv4Addr;

use super::BatchContext;
use crate::conntrack::{self, Record, POLICY_ALLOWED, PROTO_TCP, TCP_SYN};
use crate::counters::DropReason;
use crate::fib::NextHop;
use crate::policy::Decision;

/// Decides whether the validated IPv4 packet `ip` may pass. Without
/// policies (no table, or an empty one) that is decided here inline; the
/// rest is out of line, so the forwarding path pays no call for it.
#[inline(always)]
pub fn admit(ctx: &BatchContext<'_>, ip: &[u8]) -> Result<(), DropReason> {
    match ctx.policy {
        Some(table) if !table.is_empty() => admit_with(ctx, table, ip),
        _ => Ok(()),
    }
}

#[inline(never)]
fn admit_with(
    ctx: &BatchContext<'_>,
    table: &crate::policy::PolicyTable,
    ip: &[u8],
) -> Result<(), DropReason> {
    let src = addr(ip, 12);
    let dst = addr(ip, 16);
    if table.pod(src).is_none() && table.pod(dst).is_none() {
        return Ok(());
    }
    let now_ms = ctx.now_ns / 1_000_000;
    let Some(pkt) = conntrack::parse(ip) else {
        // An ICMP error about a tracked flow is related to it.
        if let Some(quoted) = conntrack::parse_icmp_error_quote(ip) {
            if ctx
                .flows
                .lookup(&quoted, now_ms)
                .is_some_and(|h| h.policy_allowed())
            {
                return Ok(());
            }
        }
        // Untracked (fragments, other protocols, other ICMP): judged on
        // its own, without ports, so only port-less rules allow it.
        return judge(ctx, src, dst, ip[9], 0);
    };
    let hit = ctx.flows.lookup(&pkt.key, now_ms);
    if let Some(h) = &hit {
        if h.policy_allowed() {
            ctx.flows.note(h, pkt.tcp_flags, pkt.key.proto, now_ms);
            return Ok(());
        }
    }
    let port = match pkt.key.proto {
        conntrack::PROTO_ICMP => 0,
        _ => pkt.key.dport,
    };
    let picked_up = pkt.key.proto == PROTO_TCP && pkt.tcp_flags & TCP_SYN == 0;
    if !picked_up {
        judge(ctx, src, dst, pkt.key.proto, port)?;
    }
    ctx.counters.policy_allowed.incr();
    match hit {
        // The host-NAT stage's entry: one flow, one entry.
        Some(h) => {
            ctx.flows.mark(&h, POLICY_ALLOWED);
            ctx.flows.note(&h, pkt.tcp_flags, pkt.key.proto, now_ms);
        }
        None => match ctx.flows.record(&pkt, POLICY_ALLOWED, now_ms) {
            Record::Full => ctx.counters.flows_full.incr(),
            Record::Inserted => ctx.counters.flows_inserted.incr(),
            Record::Existing(_) => {}
        },
    }
    Ok(())
}

/// The compiled rules' verdict on a new connection, counted if refused.
#[inline]
fn judge(
    ctx: &BatchContext<'_>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    port: u16,
) -> Result<(), DropReason> {
    let Some(table) = ctx.policy else {
        return Ok(());
    };
    let (reason, pod) = match table.check(src, dst, proto, port) {
        Decision::Allow => return Ok(()),
        Decision::DenyEgress => (DropReason::PolicyDeniedEgress, src),
        Decision::DenyIngress => (DropReason::PolicyDeniedIngress, dst),
    };
    // The refused pod's port, for its own counter (slow path only).
    if let Some(NextHop::Local(port)) = ctx.fib.lookup(pod) {
        let c = ctx.counters.port(port);
        match reason {
            DropReason::PolicyDeniedEgress => c.policy_denied_egress.incr(),
            _ => c.policy_denied_ingress.incr(),
        }
    }
    Err(reason)
}

#[inline]
fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

    /// B isolated for ingress (only A may open UDP 53 to it); C isolated
    /// for egress with no rule (may open nothing).
    fn policy_b_from_a_dns_c_nothing() -> crate::policy::PolicyTable {
        use crate::policy::*;
        let mut ingress = DirRulesBuilder::default();
        let dns = PortRange {
            proto: PROTO_UDP,
            lo: 53,
            hi: 53,
        };
        ingress.allow_peer(A_IP, &PortSet::of([dns]));
        let mut pods = std::collections::HashMap::new();
        pods.insert(
            B_IP,
            PodRules {
                ingress: Some(ingress.build()),
                egress: None,
            },
        );
        pods.insert(
            C_IP,
            PodRules {
                ingress: None,
                egress: Some(DirRulesBuilder::default().build()),
            },
        );
        PolicyTable::new(pods, &[NODE_IP])
    }

    /// An IPv4 packet with a UDP header (`tcp_flags` None) or a TCP
    /// header with those flags.
    fn l4_packet(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        tcp_flags: Option<u8>,
    ) -> Vec<u8> {
        let mut l4 = vec![0u8; if tcp_flags.is_some() { 20 } else { 8 }];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        let proto = match tcp_flags {
            Some(f) => {
                l4[12] = 5 << 4;
                l4[13] = f;
                6
            }
            None => {
                l4[4..6].copy_from_slice(&8u16.to_be_bytes());
                17
            }
        };
        ipv4(src, dst, proto, 64, DF, &[], &l4)
    }

    fn from_pod(mac: [u8; 6], ip: &[u8]) -> Vec<u8> {
        eth(ROUTER_MAC, mac, ETHERTYPE_IPV4, ip)
    }

    #[test]
    fn policy_checks_new_connections_and_lets_their_replies_pass() {
        let mut env = Env::new();
        env.policy = policy_b_from_a_dns_c_nothing();
        // A -> B UDP 53: allowed, tracked.
        let q = l4_packet(A_IP, B_IP, 5000, 53, None);
        assert_eq!(env.run(POD_A, &from_pod(A_MAC, &q)).0, fwd(POD_B));
        assert_eq!(env.counters.policy_allowed.get(), 1);
        assert_eq!(env.flows.len(), 1);
        // B's reply passes as a reply, not as a new connection.
        let r = l4_packet(B_IP, A_IP, 53, 5000, None);
        assert_eq!(env.run(POD_B, &from_pod(B_MAC, &r)).0, fwd(POD_A));
        assert_eq!(env.counters.policy_allowed.get(), 1);
        // Another port to B: refused by B's ingress, counted on B's port.
        let q54 = l4_packet(A_IP, B_IP, 5000, 54, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q54)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
        assert_eq!(env.counters.port(POD_B).policy_denied_ingress.get(), 1);
        // C may open nothing: refused by its egress, counted on C's port;
        // ICMP echo too.
        let c = l4_packet(C_IP, A_IP, 5000, 80, None);
        assert_eq!(
            env.run(POD_C, &from_pod(C_MAC, &c)).0,
            Verdict::Drop(DropReason::PolicyDeniedEgress)
        );
        let mut echo = vec![8, 0, 0, 0, 0, 7, 0, 1];
        echo.extend_from_slice(&[0; 8]);
        let ping = ipv4(C_IP, A_IP, 1, 64, 0, &[], &echo);
        assert_eq!(
            env.run(POD_C, &from_pod(C_MAC, &ping)).0,
            Verdict::Drop(DropReason::PolicyDeniedEgress)
        );
        assert_eq!(env.counters.port(POD_C).policy_denied_egress.get(), 2);
        // ... but C may reach its node, and the node may reach B.
        let to_node = l4_packet(C_IP, NODE_IP, 5000, 80, None);
        assert_eq!(env.run(POD_C, &from_pod(C_MAC, &to_node)).0, fwd(HOST));
        let from_node = l4_packet(NODE_IP, B_IP, 5000, 22, None);
        assert_eq!(
            env.run(HOST, &eth(ROUTER_MAC, HOST_MAC, ETHERTYPE_IPV4, &from_node))
                .0,
            fwd(POD_B)
        );
        // Neither end isolated: not looked at, not tracked.
        let before = env.flows.len();
        let free = l4_packet(A_IP, HOSTNET_IP, 1, 2, None);
        assert_eq!(env.run(POD_A, &from_pod(A_MAC, &free)).0, fwd(HOST));
        assert_eq!(env.flows.len(), before);
    }

    #[test]
    fn policy_passes_icmp_errors_of_allowed_flows_and_picks_up_established_tcp() {
        let mut env = Env::new();
        env.policy = policy_b_from_a_dns_c_nothing();
        let q = l4_packet(A_IP, B_IP, 5000, 53, None);
        assert_eq!(env.run(POD_A, &from_pod(A_MAC, &q)).0, fwd(POD_B));
        // B's port unreachable about A's query: related, passes.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&q[..28]);
        let err = ipv4(B_IP, A_IP, 1, 64, 0, &[], &icmp);
        assert_eq!(env.run(POD_B, &from_pod(B_MAC, &err)).0, fwd(POD_A));
        // An error quoting a flow never allowed (C's) is judged on its own:
        // C may send nothing.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&l4_packet(A_IP, C_IP, 1, 2, None)[..28]);
        let err = ipv4(C_IP, A_IP, 1, 64, 0, &[], &icmp);
        assert_eq!(
            env.run(POD_C, &from_pod(C_MAC, &err)).0,
            Verdict::Drop(DropReason::PolicyDeniedEgress)
        );
        // TCP to B: a SYN is a new connection and refused; an ACK of a
        // connection older than the policy is picked up and passes, and
        // so does its reply.
        let syn = l4_packet(A_IP, B_IP, 6000, 80, Some(0x02));
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &syn)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
        let ack = l4_packet(A_IP, B_IP, 6001, 80, Some(0x10));
        assert_eq!(env.run(POD_A, &from_pod(A_MAC, &ack)).0, fwd(POD_B));
        let back = l4_packet(B_IP, A_IP, 80, 6001, Some(0x10));
        assert_eq!(env.run(POD_B, &from_pod(B_MAC, &back)).0, fwd(POD_A));
    }

    #[test]
    fn a_policy_change_spares_established_flows() {
        let mut env = Env::new();
        env.policy = policy_b_from_a_dns_c_nothing();
        let q = l4_packet(A_IP, B_IP, 5000, 53, None);
        assert_eq!(env.run(POD_A, &from_pod(A_MAC, &q)).0, fwd(POD_B));
        // B now allows nothing: the flow goes on, a new one is refused.
        let mut pods = std::collections::HashMap::new();
        pods.insert(
            B_IP,
            crate::policy::PodRules {
                ingress: Some(crate::policy::DirRulesBuilder::default().build()),
                egress: None,
            },
        );
        env.policy = crate::policy::PolicyTable::new(pods, &[NODE_IP]);
        assert_eq!(env.run(POD_A, &from_pod(A_MAC, &q)).0, fwd(POD_B));
        let q2 = l4_packet(A_IP, B_IP, 5001, 53, None);
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q2)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
        // Once the flow expires (UDP replied: 120 s; unreplied: 30 s), it
        // is a new connection again.
        env.now_ns += 31 * 1_000_000_000;
        assert_eq!(
            env.run(POD_A, &from_pod(A_MAC, &q)).0,
            Verdict::Drop(DropReason::PolicyDeniedIngress)
        );
    }
}
