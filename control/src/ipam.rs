//! The node's address pool: /32s for pods out of `pod_cidrs`.
//!
//! Invariants: an address is handed out at most once until released; only
//! addresses inside a pod CIDR, excluding each CIDR's network and broadcast
//! address, are ever handed out. Allocation picks the lowest free address,
//! so a restart that re-reserves the persisted addresses gives the same
//! answers as before.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use podrouter_types::Prefix;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Every address in the pod CIDRs is in use.
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// The requested address is not one the pool hands out.
    #[error("{0} is not a usable address in this node's pod CIDRs ({1})")]
    NotInPool(Ipv4Addr, String),
    /// The requested address belongs to another pod.
    #[error("{0} is already in use")]
    InUse(Ipv4Addr),
}

pub struct Ipam {
    cidrs: Vec<Prefix>,
    used: BTreeSet<u32>,
}

impl Ipam {
    pub fn new(cidrs: &[Prefix]) -> Ipam {
        Ipam {
            cidrs: cidrs.to_vec(),
            used: BTreeSet::new(),
        }
    }

    fn usable(c: &Prefix) -> std::ops::RangeInclusive<u32> {
        let first = u32::from(c.addr());
        let size = 1u64 << (32 - c.len());
        let last = (first as u64 + size - 1) as u32;
        if c.len() >= 31 {
            first..=last
        } else {
            first + 1..=last - 1
        }
    }

    fn describe(&self) -> String {
        self.cidrs
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Hands out the lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        for c in &self.cidrs {
            let range = Self::usable(c);
            // Walk the used set in step with the range to find the first gap.
            let mut candidate = *range.start();
            for u in self.used.range(range.clone()) {
                if *u != candidate {
                    break;
                }
                candidate += 1;
            }
            if range.contains(&candidate) {
                self.used.insert(candidate);
                return Ok(Ipv4Addr::from(candidate));
            }
        }
        Err(IpamError::Exhausted(self.describe()))
    }

    /// Takes a specific address.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let a = u32::from(ip);
        if !self.cidrs.iter().any(|c| Self::usable(c).contains(&a)) {
            return Err(IpamError::NotInPool(ip, self.describe()));
        }
        if !self.used.insert(a) {
            return Err(IpamError::InUse(ip));
        }
        Ok(())
    }

    /// Replaces the pool's blocks (a configuration reload), in the order
    /// given (allocation tries them in this order). Refused, changing
    /// nothing, if an address in use would fall outside the new blocks:
    /// those addresses are returned.
    pub fn set_cidrs(&mut self, cidrs: &[Prefix]) -> Result<(), Vec<Ipv4Addr>> {
        let orphaned: Vec<Ipv4Addr> = self
            .used
            .iter()
            .filter(|a| !cidrs.iter().any(|c| Self::usable(c).contains(a)))
            .map(|a| Ipv4Addr::from(*a))
            .collect();
        if !orphaned.is_empty() {
            return Err(orphaned);
        }
        self.cidrs = cidrs.to_vec();
        Ok(())
    }

    /// Gives an address back; releasing a free address is a no-op.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }

    pub fn free(&self) -> u64 {
        let total: u64 = self
            .cidrs
            .iter()
            .map(|c| {
                let r = Self::usable(c);
                (*r.end() - *r.start()) as u64 + 1
            })
            .sum();
        total - self.used.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidrs: &[&str]) -> Ipam {
        Ipam::new(&cidrs.iter().map(|c| c.parse().unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn allocates_lowest_free_and_skips_network_and_broadcast() {
        let mut p = pool(&["10.244.0.0/30", "10.244.1.0/29"]);
        assert_eq!(p.free(), 2 + 6);
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 244, 1, 1));
        p.release(Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 1));
        for _ in 0..5 {
            p.allocate().unwrap();
        }
        assert!(matches!(p.allocate(), Err(IpamError::Exhausted(_))));
        assert_eq!(p.free(), 0);
    }

    #[test]
    fn blocks_can_be_added_and_removed() {
        let mut p = pool(&["10.244.0.0/30"]);
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 1));
        p.allocate().unwrap();
        assert!(p.allocate().is_err());
        let both: Vec<Prefix> = vec![
            "10.244.0.0/30".parse().unwrap(),
            "10.9.0.0/29".parse().unwrap(),
        ];
        p.set_cidrs(&both).unwrap();
        assert_eq!(p.free(), 6);
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 9, 0, 1));
        p.release(Ipv4Addr::new(10, 9, 0, 1));
        // The old block still has addresses in use; the new one has none.
        p.set_cidrs(&both[..1]).unwrap();
        assert_eq!(p.free(), 0);
        assert!(matches!(
            p.reserve(Ipv4Addr::new(10, 9, 0, 2)),
            Err(IpamError::NotInPool(..))
        ));
    }

    #[test]
    fn reserve_checks_pool_and_use() {
        let mut p = pool(&["10.244.0.0/24"]);
        assert_eq!(p.reserve(Ipv4Addr::new(10, 244, 0, 5)), Ok(()));
        assert_eq!(
            p.reserve(Ipv4Addr::new(10, 244, 0, 5)),
            Err(IpamError::InUse(Ipv4Addr::new(10, 244, 0, 5)))
        );
        for bad in [[10, 244, 0, 0], [10, 244, 0, 255], [10, 245, 0, 1]] {
            assert!(matches!(
                p.reserve(Ipv4Addr::from(bad)),
                Err(IpamError::NotInPool(..))
            ));
        }
        // A reload may not drop a block with addresses in use.
        let before = p.free();
        assert_eq!(
            p.set_cidrs(&["10.244.1.0/24".parse().unwrap()]),
            Err(vec![Ipv4Addr::new(10, 244, 0, 5)])
        );
        assert_eq!(p.free(), before);
        // Allocation steps around a reserved hole.
        for i in 1..=4 {
            assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, i));
        }
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 244, 0, 6));
    }
}
