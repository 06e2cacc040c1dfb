//! A change of the node kernel's route for a learned block, as plain
//! values: the BGP speaker produces them (pure, no I/O) and
//! `uplink_setup::KernelRoutes` applies them over netlink. Living here,
//! neither imports the other.
//!
//! Invariant: a [`Vias`] is never empty; its nodes are sorted and distinct.
use std::net::Ipv4Addr;
use std::sync::Arc;

use podrouter_types::Prefix;

/// The next-hop nodes of one learned route: sorted, distinct, non-empty.
/// One node (the common case) takes no heap; several share one
/// allocation between clones (the speaker's bookkeeping and the kernel
/// job of the same change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vias {
    One(Ipv4Addr),
    Many(Arc<[Ipv4Addr]>),
}

impl Vias {
    /// The nodes of `nodes` (sorted, distinct); `None` if it is empty.
    pub fn new(nodes: &[Ipv4Addr]) -> Option<Vias> {
        match nodes {
            [] => None,
            [one] => Some(Vias::One(*one)),
            many => Some(Vias::Many(Arc::from(many))),
        }
    }
}

impl std::ops::Deref for Vias {
    type Target = [Ipv4Addr];
    fn deref(&self) -> &[Ipv4Addr] {
        match self {
            Vias::One(a) => std::slice::from_ref(a),
            Vias::Many(v) => v,
        }
    }
}

/// One kernel route change for a learned block: the prefix, the nodes it
/// goes via now (None: remove the route) and the ones it went via before
/// (None: it had none).
pub type KernelJob = (Prefix, Option<Vias>, Option<Vias>);

/// The nodes a job's route goes via: the new ones, else the old ones.
pub fn job_vias(j: &KernelJob) -> &[Ipv4Addr] {
    j.1.as_deref().or(j.2.as_deref()).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vias_and_job_vias() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(Vias::new(&[]), None);
        assert_eq!(Vias::new(&[a]), Some(Vias::One(a)));
        assert_eq!(&*Vias::new(&[a, b]).unwrap(), &[a, b]);
        let p: Prefix = "10.250.0.0/24".parse().unwrap();
        assert_eq!(job_vias(&(p, Vias::new(&[b]), Vias::new(&[a]))), &[b]);
        assert_eq!(job_vias(&(p, None, Vias::new(&[a, b]))), &[a, b]);
        assert!(job_vias(&(p, None, None)).is_empty());
    }
}
