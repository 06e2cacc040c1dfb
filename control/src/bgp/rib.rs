//! The Loc-RIB: every peer's path per prefix and the best-path decision
//! (RFC 4271 9.1.2), with equal-cost paths tracked for ECMP.
//!
//! # Decision, in order
//!
//! 1. highest LOCAL_PREF (100 for paths that carry none, i.e. eBGP);
//! 2. shortest AS_PATH (a set counts one, confederation segments nothing);
//! 3. lowest ORIGIN (IGP < EGP < incomplete);
//! 4. lowest MED, compared only between paths from the same neighbouring
//!    AS (a missing MED is 0). To make the result independent of arrival
//!    order, the paths are grouped by neighbouring AS, each group's best
//!    is found with MED, then the group winners are compared without it
//!    ("deterministic MED");
//! 5. eBGP over iBGP;
//! 6. (IGP cost to the next hop: every next hop here is on-link, so equal);
//! 7. lowest BGP identifier (ORIGINATOR_ID if present);
//! 8. shortest CLUSTER_LIST;
//! 9. lowest peer address.
//!
//! Paths equal to the best through step 6 form its multipath (ECMP) set.
//! The speaker installs the set's distinct next hops, sorted by address
//! ([`Rib::next_hops`]): one is a plain FIB route, several a next-hop
//! group the data plane spreads flows over. Sorting makes the group
//! independent of arrival order and of steps 7-9, so every node with the
//! same paths installs the same group, also after a restart.
use super::prefix_hash::PrefixMap;
use std::cmp::Ordering;
use std::net::Ipv4Addr;
use std::sync::Arc;

use podrouter_types::Prefix;

use super::session::Path;

#[derive(Default)]
pub struct Rib {
    routes: PrefixMap<Paths>,
    /// Paths over all prefixes (kept as they change, so a count is O(1)).
    path_count: usize,
}

/// The outcome of the decision for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub best: Arc<Path>,
    /// Paths equal to the best through step 6, best first (includes it).
    pub multipath: Vec<Arc<Path>>,
}

/// One prefix's paths. Nearly every prefix has a single path (one peer
/// sent it), kept inline: no allocation per route for a full table. The
/// rare list is boxed so that an entry is two words, not four: the RIB's
/// table holds one per prefix (at a million prefixes its 2^21 buckets
/// take 16 MiB less).
#[allow(clippy::box_collection)] // the box is the point: see above
enum Paths {
    One(Arc<Path>),
    /// Two or more, one per peer.
    Many(Box<Vec<Arc<Path>>>),
}

impl Paths {
    fn as_slice(&self) -> &[Arc<Path>] {
        match self {
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v,
        }
    }
}

impl Rib {
    pub fn new() -> Rib {
        Rib::default()
    }

    /// Sets `peer`'s path for `prefix` (replacing its previous one).
    pub fn upsert(&mut self, prefix: Prefix, path: Arc<Path>) {
        use std::collections::hash_map::Entry;
        let paths = match self.routes.entry(prefix) {
            Entry::Vacant(e) => {
                e.insert(Paths::One(path));
                self.path_count += 1;
                return;
            }
            Entry::Occupied(e) => e.into_mut(),
        };
        match paths {
            Paths::One(p) if p.peer == path.peer => *p = path,
            Paths::One(p) => {
                *paths = Paths::Many(Box::new(vec![p.clone(), path]));
                self.path_count += 1;
            }
            Paths::Many(v) => match v.iter_mut().find(|p| p.peer == path.peer) {
                Some(slot) => *slot = path,
                None => {
                    v.push(path);
                    self.path_count += 1;
                }
            },
        }
    }

    /// Removes `peer`'s path for `prefix`.
    pub fn remove(&mut self, prefix: Prefix, peer: Ipv4Addr) {
        let Some(paths) = self.routes.get_mut(&prefix) else {
            return;
        };
        match paths {
            Paths::One(p) => {
                if p.peer == peer {
                    self.routes.remove(&prefix);
                    self.path_count -= 1;
                }
            }
            Paths::Many(v) => {
                let before = v.len();
                v.retain(|p| p.peer != peer);
                self.path_count -= before - v.len();
                match &mut v[..] {
                    [] => {
                        self.routes.remove(&prefix);
                    }
                    [one] => {
                        let one = one.clone();
                        *paths = Paths::One(one);
                    }
                    _ => {}
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Paths over all prefixes.
    pub fn path_count(&self) -> usize {
        self.path_count
    }

    pub fn paths(&self, prefix: &Prefix) -> &[Arc<Path>] {
        self.routes.get(prefix).map_or(&[], Paths::as_slice)
    }

    pub fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        self.routes.keys()
    }

    /// Runs the decision for one prefix.
    pub fn select(&self, prefix: &Prefix) -> Option<Selection> {
        select(self.paths(prefix))
    }

    /// The distinct next hops of the multipath set of `prefix`, sorted by
    /// address, into `out` (cleared first; empty if the prefix has no
    /// path). No allocation beyond `out`'s growth: what the FIB sync needs
    /// for every changed prefix.
    pub fn next_hops(&self, prefix: &Prefix, out: &mut Vec<Ipv4Addr>) {
        out.clear();
        match self.paths(prefix) {
            [] => {}
            [one] => out.push(one.next_hop),
            many => {
                let best = best_of(many).expect("non-empty");
                out.extend(
                    many.iter()
                        .filter(|p| in_multipath(p, best))
                        .map(|p| p.next_hop),
                );
                out.sort_unstable();
                out.dedup();
            }
        }
    }

    /// The best path only (no multipath set, no allocation).
    pub fn best(&self, prefix: &Prefix) -> Option<&Arc<Path>> {
        match self.paths(prefix) {
            [] => None,
            [one] => Some(one),
            many => best_of(many),
        }
    }
}

/// The decision over a set of paths for one prefix.
pub fn select(paths: &[Arc<Path>]) -> Option<Selection> {
    let first = paths.first()?;
    if paths.len() == 1 {
        return Some(Selection {
            best: first.clone(),
            multipath: vec![first.clone()],
        });
    }
    let best = best_of(paths).expect("non-empty");
    let mut multipath: Vec<Arc<Path>> = paths
        .iter()
        .filter(|p| in_multipath(p, best))
        .cloned()
        .collect();
    multipath.sort_by(|a, b| compare(a, b, true));
    Some(Selection {
        best: best.clone(),
        multipath,
    })
}

/// Whether `p` is equal to `best` through step 6 (MED compared only
/// within one neighbouring AS).
fn in_multipath(p: &Path, best: &Path) -> bool {
    let same_as = neighbor_as(p) == neighbor_as(best);
    pre_tiebreak(p, best, same_as) == Ordering::Equal
}

/// The decision's winner among `paths`.
fn best_of(paths: &[Arc<Path>]) -> Option<&Arc<Path>> {
    // Deterministic MED: best of each neighbouring AS with MED, then the
    // winners without it.
    let mut groups: Vec<(Option<u32>, &Arc<Path>)> = Vec::new();
    for p in paths {
        let nas = neighbor_as(p);
        match groups.iter_mut().find(|(a, _)| *a == nas) {
            Some((_, w)) => {
                if compare(p, w, true) == Ordering::Less {
                    *w = p;
                }
            }
            None => groups.push((nas, p)),
        }
    }
    groups
        .iter()
        .map(|(_, p)| *p)
        .min_by(|a, b| compare(a, b, false))
}

fn neighbor_as(p: &Path) -> Option<u32> {
    p.attrs.neighbor_as()
}

/// Steps 1-6: Less when `a` is preferred.
fn pre_tiebreak(a: &Path, b: &Path, with_med: bool) -> Ordering {
    b.local_pref
        .cmp(&a.local_pref)
        .then_with(|| a.attrs.as_path_len().cmp(&b.attrs.as_path_len()))
        .then_with(|| a.attrs.origin.cmp(&b.attrs.origin))
        .then_with(|| {
            if with_med {
                a.attrs.med.unwrap_or(0).cmp(&b.attrs.med.unwrap_or(0))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| b.ebgp.cmp(&a.ebgp))
}

/// The whole decision: Less when `a` is preferred.
pub fn compare(a: &Path, b: &Path, with_med: bool) -> Ordering {
    let id = |p: &Path| u32::from(p.attrs.originator_id.unwrap_or(p.peer_router_id));
    pre_tiebreak(a, b, with_med)
        .then_with(|| id(a).cmp(&id(b)))
        .then_with(|| a.attrs.cluster_list.len().cmp(&b.attrs.cluster_list.len()))
        .then_with(|| u32::from(a.peer).cmp(&u32::from(b.peer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::wire::{Origin, PathAttrs, Segment, SEG_AS_SEQUENCE};

    /// An entry of the RIB's table stays two words (see [`Paths`]).
    #[test]
    fn a_rib_entry_is_two_words() {
        assert_eq!(std::mem::size_of::<Paths>(), 16);
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[derive(Clone)]
    struct B {
        peer: &'static str,
        ebgp: bool,
        lp: u32,
        path: Vec<u32>,
        origin: Origin,
        med: Option<u32>,
        id: &'static str,
    }

    fn base(peer: &'static str) -> B {
        B {
            peer,
            ebgp: false,
            lp: 100,
            path: vec![],
            origin: Origin::Igp,
            med: None,
            id: peer,
        }
    }

    fn mk(b: &B) -> Arc<Path> {
        Arc::new(Path {
            peer: ip(b.peer),
            peer_router_id: ip(b.id),
            ebgp: b.ebgp,
            next_hop: ip(b.peer),
            local_pref: b.lp,
            attrs: Arc::new(PathAttrs {
                origin: Some(b.origin),
                as_path: Some(vec![Segment {
                    kind: SEG_AS_SEQUENCE,
                    asns: b.path.clone(),
                }]),
                med: b.med,
                ..Default::default()
            }),
        })
    }

    fn winner(bs: &[B]) -> Ipv4Addr {
        let paths: Vec<_> = bs.iter().map(mk).collect();
        let w = select(&paths).unwrap().best.peer;
        // Arrival order never matters.
        let mut rev = paths.clone();
        rev.reverse();
        assert_eq!(select(&rev).unwrap().best.peer, w);
        w
    }

    #[test]
    fn decision_steps_in_order() {
        let a = base("10.0.0.1");
        let b = base("10.0.0.2");
        assert_eq!(
            winner(&[
                a.clone(),
                B {
                    lp: 200,
                    ..b.clone()
                }
            ]),
            ip("10.0.0.2")
        );
        assert_eq!(
            winner(&[
                B {
                    path: vec![1, 2],
                    ..a.clone()
                },
                B {
                    path: vec![3],
                    ..b.clone()
                }
            ]),
            ip("10.0.0.2")
        );
        assert_eq!(
            winner(&[
                B {
                    origin: Origin::Incomplete,
                    ..a.clone()
                },
                b.clone()
            ]),
            ip("10.0.0.2")
        );
        assert_eq!(
            winner(&[
                B {
                    path: vec![7],
                    med: Some(10),
                    ..a.clone()
                },
                B {
                    path: vec![7],
                    med: Some(5),
                    ..b.clone()
                }
            ]),
            ip("10.0.0.2")
        );
        // MED from different neighbour ASes is not compared: router id decides.
        assert_eq!(
            winner(&[
                B {
                    path: vec![7],
                    med: Some(10),
                    ..a.clone()
                },
                B {
                    path: vec![8],
                    med: Some(5),
                    ..b.clone()
                }
            ]),
            ip("10.0.0.1")
        );
        assert_eq!(
            winner(&[
                a.clone(),
                B {
                    ebgp: true,
                    ..b.clone()
                }
            ]),
            ip("10.0.0.2")
        );
        assert_eq!(
            winner(&[
                B {
                    id: "9.9.9.9",
                    ..a.clone()
                },
                B {
                    id: "1.1.1.1",
                    ..b.clone()
                }
            ]),
            ip("10.0.0.2")
        );
        assert_eq!(winner(&[a.clone(), b.clone()]), ip("10.0.0.1"));
    }

    #[test]
    fn deterministic_med_is_order_independent() {
        // The classic MED cycle: A(AS1, med 10), B(AS2, med 5), C(AS1, med 0).
        let a = B {
            path: vec![1],
            med: Some(10),
            id: "3.3.3.3",
            ..base("10.0.0.1")
        };
        let b = B {
            path: vec![2],
            med: Some(5),
            id: "2.2.2.2",
            ..base("10.0.0.2")
        };
        let c = B {
            path: vec![1],
            med: Some(0),
            id: "4.4.4.4",
            ..base("10.0.0.3")
        };
        let all = [a, b, c];
        let w = winner(&all);
        for perm in [
            [0, 1, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
            [0, 2, 1],
            [1, 0, 2],
        ] {
            let v: Vec<B> = perm.iter().map(|i| all[*i].clone()).collect();
            assert_eq!(winner(&v), w);
        }
        // C beats A on MED; C vs B without MED: router id 2.2.2.2 wins.
        assert_eq!(w, ip("10.0.0.2"));
    }

    #[test]
    fn ecmp_set_and_rib_bookkeeping() {
        let mut rib = Rib::new();
        let p: Prefix = "10.244.2.0/26".parse().unwrap();
        rib.upsert(p, mk(&base("10.0.0.3")));
        rib.upsert(p, mk(&base("10.0.0.2")));
        rib.upsert(
            p,
            mk(&B {
                lp: 50,
                ..base("10.0.0.4")
            }),
        );
        let s = rib.select(&p).unwrap();
        assert_eq!(s.best.peer, ip("10.0.0.2"));
        let mp: Vec<_> = s.multipath.iter().map(|p| p.peer).collect();
        assert_eq!(mp, vec![ip("10.0.0.2"), ip("10.0.0.3")]);
        let mut nh = Vec::new();
        rib.next_hops(&p, &mut nh);
        assert_eq!(nh, vec![ip("10.0.0.2"), ip("10.0.0.3")]);
        rib.upsert(
            p,
            mk(&B {
                lp: 10,
                ..base("10.0.0.2")
            }),
        );
        assert_eq!(rib.select(&p).unwrap().best.peer, ip("10.0.0.3"));
        rib.next_hops(&p, &mut nh);
        assert_eq!(nh, vec![ip("10.0.0.3")]);
        rib.remove(p, ip("10.0.0.3"));
        rib.remove(p, ip("10.0.0.2"));
        assert_eq!(rib.select(&p).unwrap().best.peer, ip("10.0.0.4"));
        rib.remove(p, ip("10.0.0.4"));
        assert!(rib.is_empty());
        rib.next_hops(&p, &mut nh);
        assert!(nh.is_empty());
        assert!(rib.select(&p).is_none());
    }

    /// A prefix's paths move between the inline single path and the list
    /// as peers come and go; the path count follows every step.
    #[test]
    fn one_path_and_many_paths_keep_the_counts() {
        let mut rib = Rib::new();
        let p: Prefix = "10.244.2.0/26".parse().unwrap();
        let q: Prefix = "10.244.3.0/26".parse().unwrap();
        let peers = |rib: &Rib, x: &Prefix| -> Vec<Ipv4Addr> {
            rib.paths(x).iter().map(|a| a.peer).collect()
        };
        rib.upsert(p, mk(&base("10.0.0.2")));
        rib.upsert(q, mk(&base("10.0.0.2")));
        assert_eq!((rib.len(), rib.path_count()), (2, 2));
        // The same peer again replaces its path.
        rib.upsert(
            p,
            mk(&B {
                lp: 50,
                ..base("10.0.0.2")
            }),
        );
        assert_eq!(rib.path_count(), 2);
        assert_eq!(rib.best(&p).unwrap().local_pref, 50);
        rib.upsert(p, mk(&base("10.0.0.3")));
        rib.upsert(p, mk(&base("10.0.0.4")));
        assert_eq!(
            peers(&rib, &p),
            vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4")]
        );
        assert_eq!(rib.path_count(), 4);
        // A peer that has no path for the prefix changes nothing.
        rib.remove(p, ip("10.0.0.9"));
        rib.remove(q, ip("10.0.0.9"));
        assert_eq!(rib.path_count(), 4);
        rib.remove(p, ip("10.0.0.2"));
        rib.remove(p, ip("10.0.0.4"));
        assert_eq!(peers(&rib, &p), vec![ip("10.0.0.3")]);
        assert_eq!(rib.path_count(), 2);
        // Back to one path: a second peer makes it a list again.
        rib.upsert(p, mk(&base("10.0.0.5")));
        assert_eq!(peers(&rib, &p), vec![ip("10.0.0.3"), ip("10.0.0.5")]);
        rib.remove(p, ip("10.0.0.3"));
        rib.remove(p, ip("10.0.0.5"));
        rib.remove(q, ip("10.0.0.2"));
        assert!(rib.is_empty());
        assert_eq!(rib.path_count(), 0);
    }
}
