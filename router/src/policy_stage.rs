//! The pipeline's network-policy stage: connection tracking first, then
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

use crate::conntrack::{self, Record, POLICY_ALLOWED, PROTO_TCP, TCP_SYN};
use crate::counters::DropReason;
use crate::fib::NextHop;
use crate::pipeline::BatchContext;
use crate::policy::Decision;

/// Decides whether the validated IPv4 packet `ip` may pass.
#[inline]
pub fn admit(ctx: &BatchContext<'_>, ip: &[u8]) -> Result<(), DropReason> {
    let table = ctx.policy;
    if table.is_empty() {
        return Ok(());
    }
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
    let (reason, pod) = match ctx.policy.check(src, dst, proto, port) {
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
