//! The reference evaluator: Kubernetes NetworkPolicy semantics written as
//! plainly as possible, one connection at a time, straight from the
//! parsed policies. Nothing in the data plane runs it; the property tests
//! compare the compiled tables ([`super::compile`]) against it, and it is
//! the executable statement of the semantics the README's table lists:
//!
//! - a pod is isolated for a direction iff some policy with that policy
//!   type selects it; a non-isolated direction allows everything;
//! - an isolated direction allows a connection iff some rule of some
//!   selecting policy allows it (policies and rules add up);
//! - a rule allows it iff one of its peers matches (no peers: any) and
//!   one of its ports matches (no ports: any port and protocol);
//! - a connection needs the source's egress and the destination's
//!   ingress; the node's own addresses are always allowed.
use std::net::Ipv4Addr;

use super::model::{peer_selects, policy_selects, Cluster, Endpoint, Peer, Policy, PortRef, Rule};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// Is `pod` isolated in `dir`?
pub fn isolated(policies: &[Policy], pod: &Endpoint, dir: Direction) -> bool {
    policies.iter().any(|p| applies(p, pod, dir))
}

fn applies(p: &Policy, pod: &Endpoint, dir: Direction) -> bool {
    let typed = match dir {
        Direction::Ingress => p.isolates_ingress,
        Direction::Egress => p.isolates_egress,
    };
    typed && policy_selects(p, pod)
}

/// Does `pod`'s `dir` side allow a new connection with `peer`, to
/// destination port `port` of protocol `proto` (IP protocol number)?
pub fn allows(
    cluster: &Cluster,
    policies: &[Policy],
    pod: &Endpoint,
    dir: Direction,
    peer: Ipv4Addr,
    proto: u8,
    port: u16,
) -> bool {
    let mut selected = policies.iter().filter(|p| applies(p, pod, dir)).peekable();
    if selected.peek().is_none() {
        return true;
    }
    selected.any(|p| {
        let rules = match dir {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        rules
            .iter()
            .any(|r| rule_allows(cluster, p, r, pod, dir, peer, proto, port))
    })
}

#[allow(clippy::too_many_arguments)]
fn rule_allows(
    cluster: &Cluster,
    policy: &Policy,
    rule: &Rule,
    pod: &Endpoint,
    dir: Direction,
    peer: Ipv4Addr,
    proto: u8,
    port: u16,
) -> bool {
    let peer_ep = cluster.endpoint(peer);
    let peer_ok = rule.peers.is_empty()
        || rule.peers.iter().any(|sel| match (sel, peer_ep) {
            (Peer::IpBlock(b), _) => b.contains(peer),
            (Peer::Pods { .. }, Some(ep)) => peer_selects(cluster, &policy.namespace, sel, ep),
            (Peer::Pods { .. }, None) => false,
        });
    // Named ports are the destination's: the pod itself for ingress, the
    // peer for egress.
    let dest = match dir {
        Direction::Ingress => Some(pod),
        Direction::Egress => peer_ep,
    };
    let port_ok = rule.ports.is_empty()
        || rule.ports.iter().any(|p| {
            p.protocol.number() == proto
                && match (&p.port, p.end_port) {
                    (None, _) => true,
                    (Some(PortRef::Number(n)), None) => port == *n,
                    (Some(PortRef::Number(n)), Some(e)) => *n <= port && port <= e,
                    (Some(PortRef::Name(name)), _) => {
                        dest.and_then(|d| d.named_port(name, p.protocol)) == Some(port)
                    }
                }
        });
    peer_ok && port_ok
}

/// May `src` open a connection to `dst`? Each end's rules apply where it
/// is a known pod; addresses in `node_addrs` are always allowed.
#[allow(clippy::too_many_arguments)]
pub fn connection_allowed(
    cluster: &Cluster,
    policies: &[Policy],
    node_addrs: &[Ipv4Addr],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    port: u16,
) -> bool {
    let egress_ok = node_addrs.contains(&dst)
        || cluster
            .endpoint(src)
            .is_none_or(|s| allows(cluster, policies, s, Direction::Egress, dst, proto, port));
    let ingress_ok = node_addrs.contains(&src)
        || cluster
            .endpoint(dst)
            .is_none_or(|d| allows(cluster, policies, d, Direction::Ingress, src, proto, port));
    egress_ok && ingress_ok
}
