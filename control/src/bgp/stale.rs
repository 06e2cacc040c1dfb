//! Kernel routes for learned blocks that a previous run of podrouterd left
//! in the node's routing table, and when they go (RFC 4724 4.1, our side
//! of our own restart).
//!
//! With an IPIP uplink the `bgp-kernel` thread gives every learned block a
//! kernel route (protocol 77). A graceful stop keeps them, as the peers
//! keep our routes; a crash leaves them too. At start, before any session
//! comes up, [`scan`] lists the protocol-77 routes that are not this
//! node's own (nothing inside or around a `pod_cidrs` block: pods' /32s
//! and the blocks' routes to the host port; no static `[[routes]]` prefix;
//! no default route): those are the stale learned blocks. They stay while
//! the peers re-send their routes; a re-learned block's route is simply
//! replaced by the `bgp-kernel` thread. The rest are deleted once
//! [`StaleKernelRoutes::due`]: every peer configured with graceful
//! restart has sent End-of-RIB since our start, or the deferral bound
//! (`[bgp] restart_time`) has passed.
//!
//! Invariants: only routes found by the start-time scan are ever deleted
//! here, each by its exact identity (destination, gateway, output
//! interface, protocol 77), and only if BGP has not installed the prefix
//! again by the time of the sweep and it has not become one of our own
//! blocks (a reload meanwhile); the sweep happens once.
use std::io;
use std::time::{Duration, Instant};

use podrouter_router::fib::Prefix;

use crate::netlink::{errno, Ipv4Route, Netlink, RouteEntry, RTPROT_PODROUTER};

/// The learned-block routes found at start, and what the sweep waits for.
#[derive(Debug)]
pub struct StaleKernelRoutes {
    routes: Vec<Ipv4Route>,
    /// Per peer (speaker index): still waiting for its End-of-RIB.
    waiting: Vec<bool>,
    /// How many peers' End-of-RIB were awaited at all.
    awaited: usize,
    deadline: Instant,
}

/// The prefix of a kernel route.
pub fn prefix_of(r: &Ipv4Route) -> Option<Prefix> {
    Prefix::new(r.dst, r.prefix_len).ok()
}

/// The stale learned-block routes in a dump of the main table: protocol
/// 77, not the default route, not overlapping `own` (pod_cidrs) and not
/// exactly one of `statics`.
pub fn select(entries: &[RouteEntry], own: &[Prefix], statics: &[Prefix]) -> Vec<Ipv4Route> {
    entries
        .iter()
        .filter(|e| e.protocol == RTPROT_PODROUTER)
        .filter_map(|e| prefix_of(&e.route).map(|p| (p, e.route)))
        .filter(|(p, _)| p.len() > 0)
        .filter(|(p, _)| {
            !own.iter()
                .any(|c| c.contains(p.addr()) || p.contains(c.addr()))
        })
        .filter(|(p, _)| !statics.contains(p))
        .map(|(_, r)| r)
        .collect()
}

/// Reads the node's main table and [`select`]s the stale routes.
pub fn scan(own: &[Prefix], statics: &[Prefix]) -> io::Result<Vec<Ipv4Route>> {
    let mut nl = Netlink::open()?;
    Ok(select(&nl.routes_v4()?, own, statics))
}

impl StaleKernelRoutes {
    /// `gr_peers[i]`: peer `i` has graceful restart configured (we wait for
    /// its End-of-RIB). `bound`: the longest we keep the routes.
    pub fn new(
        routes: Vec<Ipv4Route>,
        gr_peers: &[bool],
        now: Instant,
        bound: Duration,
    ) -> StaleKernelRoutes {
        StaleKernelRoutes {
            routes,
            awaited: gr_peers.iter().filter(|g| **g).count(),
            waiting: gr_peers.to_vec(),
            deadline: now + bound,
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Peer `peer` has sent End-of-RIB.
    pub fn note_eor(&mut self, peer: usize) {
        if let Some(w) = self.waiting.get_mut(peer) {
            *w = false;
        }
    }

    /// Whether some peer's End-of-RIB is still awaited.
    pub fn waiting_for(&self) -> usize {
        self.waiting.iter().filter(|w| **w).count()
    }

    /// Why the sweep is due (for the log), if it is.
    pub fn reason(&self, now: Instant) -> Option<&'static str> {
        if self.awaited == 0 {
            Some("no peer has graceful restart configured")
        } else if self.waiting_for() == 0 {
            Some("every graceful-restart peer sent End-of-RIB")
        } else if now >= self.deadline {
            Some("the restart time passed before every End-of-RIB")
        } else {
            None
        }
    }

    /// Time to sweep: no End-of-RIB awaited any more, or the bound passed.
    pub fn due(&self, now: Instant) -> bool {
        self.waiting_for() == 0 || now >= self.deadline
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The routes to delete now: those whose prefix BGP has not installed
    /// again (`installed(prefix)` false).
    pub fn sweep(self, installed: impl Fn(&Prefix) -> bool) -> Vec<Ipv4Route> {
        self.routes
            .into_iter()
            .filter(|r| prefix_of(r).is_none_or(|p| !installed(&p)))
            .collect()
    }
}

/// Deletes the given routes (protocol 77, exact match); a route already
/// gone is fine. Returns how many were deleted and the failures.
pub fn delete(routes: &[Ipv4Route]) -> (usize, Vec<String>) {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => return (0, vec![format!("netlink: {e}")]),
    };
    let mut done = 0;
    let mut failed = Vec::new();
    for r in routes {
        match nl.route_delete(r) {
            Ok(()) => done += 1,
            Err(e) if errno(&e) == Some(libc::ESRCH) => {}
            Err(e) => failed.push(format!("{r}: {e}")),
        }
    }
    (done, failed)
}

/// A route text for logs: `10.244.2.0/26 via 10.0.0.2` or `... dev #3`.
pub fn describe(r: &Ipv4Route) -> String {
    match r.gateway {
        Some(g) => format!("{}/{} via {g}", r.dst, r.prefix_len),
        None => format!("{}/{} dev #{}", r.dst, r.prefix_len, r.oif),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Scope;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn entry(dst: &str, proto: u8, gw: Option<&str>) -> RouteEntry {
        let pr = p(dst);
        RouteEntry {
            route: Ipv4Route {
                dst: pr.addr(),
                prefix_len: pr.len(),
                gateway: gw.map(|g| g.parse().unwrap()),
                oif: 7,
                scope: if gw.is_some() {
                    Scope::Universe
                } else {
                    Scope::Link
                },
                onlink: false,
            },
            protocol: proto,
        }
    }

    #[test]
    fn only_learned_blocks_are_stale() {
        let dump = vec![
            entry("10.244.2.0/26", 77, None),             // learned, encap
            entry("10.244.3.0/26", 77, Some("10.0.0.3")), // learned, direct
            entry("10.244.1.0/26", 77, None),             // our block
            entry("10.244.1.5/32", 77, None),             // our pod
            entry("10.22.0.0/26", 77, Some("10.0.0.9")),  // static
            entry("0.0.0.0/0", 77, Some("10.0.0.254")),   // never ours
            entry("10.244.4.0/26", 12, Some("10.0.0.4")), // BIRD's, not ours
            entry("10.0.0.0/24", 2, None),                // kernel
        ];
        let got = select(&dump, &[p("10.244.1.0/26")], &[p("10.22.0.0/26")]);
        let got: Vec<String> = got.iter().map(describe).collect();
        assert_eq!(
            got,
            vec!["10.244.2.0/26 dev #7", "10.244.3.0/26 via 10.0.0.3"]
        );
    }

    #[test]
    fn sweep_waits_for_every_gr_peer_or_the_bound() {
        let t = Instant::now();
        let routes = select(
            &[
                entry("10.244.2.0/26", 77, None),
                entry("10.244.3.0/26", 77, None),
            ],
            &[],
            &[],
        );
        let mut s = StaleKernelRoutes::new(
            routes.clone(),
            &[true, false, true],
            t,
            Duration::from_secs(30),
        );
        assert_eq!(s.len(), 2);
        assert!(!s.due(t));
        assert_eq!(s.reason(t), None);
        s.note_eor(0);
        assert!(!s.due(t + Duration::from_secs(29)));
        assert_eq!(s.waiting_for(), 1);
        s.note_eor(2);
        assert!(s.due(t));
        assert_eq!(
            s.reason(t),
            Some("every graceful-restart peer sent End-of-RIB")
        );
        let gone = s.sweep(|q| *q == p("10.244.2.0/26"));
        assert_eq!(
            gone.iter().map(describe).collect::<Vec<_>>(),
            vec!["10.244.3.0/26 dev #7"]
        );
        // The bound alone is enough; no GR peer at all: due at once.
        let s = StaleKernelRoutes::new(routes.clone(), &[true], t, Duration::from_secs(30));
        assert!(s.due(t + Duration::from_secs(30)));
        assert!(s
            .reason(t + Duration::from_secs(30))
            .unwrap()
            .contains("restart time passed"));
        let s = StaleKernelRoutes::new(routes, &[false, false], t, Duration::from_secs(30));
        assert!(s.due(t));
        assert!(s.reason(t).unwrap().contains("no peer"));
        // An index out of range is ignored, not a panic.
        let mut s = StaleKernelRoutes::new(vec![], &[], t, Duration::ZERO);
        s.note_eor(9);
        assert!(s.is_empty());
    }
}
