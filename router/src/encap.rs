//! The encapsulation policy: which next-hop nodes are reached through the
//! tunnel and which are routed directly by the node's kernel.
//!
//! [`EncapPolicy`] (Calico's `ipipMode`) decides per next-hop node: always,
//! never, or only when the node is outside the uplink's subnet. It travels
//! in the uplink's [`crate::port::PortRole::Uplink`], part of the port
//! table snapshot every batch loads, so the per-packet decision is one
//! mask-and-compare and no lookup, and routes from any source (static
//! config, BGP) are treated alike without carrying a mode. The control
//! plane uses the same [`EncapPolicy::encap_to`] to program the node's
//! kernel for the direct case (`<block> via <node>`), so both sides always
//! agree.
//!
//! Invariants: a pure value (`Copy`), decided per node with at most one
//! mask-and-compare; no I/O.
use std::net::Ipv4Addr;

use podrouter_types::Prefix;

/// When traffic to another node is encapsulated (Calico's IPIP modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncapMode {
    /// Every packet to another node is IPIP.
    #[default]
    Always,
    /// IPIP only to nodes outside the uplink's subnet; routed directly
    /// (through the node's kernel) to nodes inside it.
    CrossSubnet,
    /// Never IPIP: always routed directly through the node's kernel.
    Never,
}

/// The encapsulation decision for next-hop nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapPolicy {
    pub mode: EncapMode,
    /// The uplink interface's subnet (cross-subnet mode). Unknown: every
    /// node counts as outside it, so traffic is encapsulated.
    pub subnet: Option<Prefix>,
}

impl EncapPolicy {
    /// Whether packets for a block owned by `node` are IPIP-encapsulated
    /// (true) or handed to the node's kernel to route directly (false).
    #[inline]
    pub fn encap_to(&self, node: Ipv4Addr) -> bool {
        match self.mode {
            EncapMode::Always => true,
            EncapMode::Never => false,
            EncapMode::CrossSubnet => !self.subnet.is_some_and(|s| s.contains(node)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn policy_decides_per_node() {
        let a = Ipv4Addr::new(192, 168, 57, 12);
        let far = Ipv4Addr::new(192, 168, 58, 13);
        let subnet = Some(p("192.168.57.0/24"));
        let pol = |mode| EncapPolicy { mode, subnet };
        assert!(pol(EncapMode::Always).encap_to(a));
        assert!(pol(EncapMode::Always).encap_to(far));
        assert!(!pol(EncapMode::Never).encap_to(a));
        assert!(!pol(EncapMode::Never).encap_to(far));
        assert!(!pol(EncapMode::CrossSubnet).encap_to(a));
        assert!(pol(EncapMode::CrossSubnet).encap_to(far));
        let unknown = EncapPolicy {
            mode: EncapMode::CrossSubnet,
            subnet: None,
        };
        assert!(unknown.encap_to(a), "no subnet known: encapsulate");
    }
}
