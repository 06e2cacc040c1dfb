//! Kernel routes for learned blocks that a previous run of podrouterd left
//! in the node's routing table, and when they go (RFC 4724 4.1, our side
//! of our own restart).
//!
//! With an IPIP uplink the `bgp-kernel` thread gives every learned block a
//! kernel route (protocol 77); with `kernel_routes = "per-pool"` only the
//! blocks the kernel routes itself, and each import pool a covering route
//! ([`super::kernel_plan`]: a route into the host port to a pool of this
//! run's plan, whatever its metric, is never listed as stale here; a
//! learned route via a node to the pool's exact prefix is, as is a
//! covering route the plan no longer has). A graceful stop
//! keeps them, as the peers keep our routes; a crash leaves them too. At start, before any session
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

use podrouter_types::Prefix;

use super::kernel_plan::COVERING_METRIC;
use crate::netlink::{errno, Ipv4Route, Netlink, RouteEntry, RouteOp, RTPROT_PODROUTER};

/// The learned-block routes found at start (`T`: the kernel route, an
/// [`Ipv4Route`] in the daemon), and what the sweep waits for.
#[derive(Debug)]
pub struct StaleKernelRoutes<T> {
    routes: Vec<(Prefix, T)>,
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

/// The stale learned-block routes among (protocol, prefix, route) rows of
/// the main table: protocol 77, not the default route, not overlapping
/// `own` (pod_cidrs) and not exactly one of `statics`.
pub fn select<T>(
    rows: impl IntoIterator<Item = (u8, Prefix, T)>,
    own: &[Prefix],
    statics: &[Prefix],
) -> Vec<(Prefix, T)> {
    rows.into_iter()
        .filter(|(proto, _, _)| *proto == RTPROT_PODROUTER)
        .filter(|(_, p, _)| p.len() > 0)
        .filter(|(_, p, _)| {
            !own.iter()
                .any(|c| c.contains(p.addr()) || p.contains(c.addr()))
        })
        .filter(|(_, p, _)| !statics.contains(p))
        .map(|(_, p, r)| (p, r))
        .collect()
}

/// Reads the node's main table and [`select`]s the stale routes; a route
/// to one of this run's `covering` pools that names no gateway is that
/// pool's covering route (with [`COVERING_METRIC`], or 0 from a build
/// before the metric), not stale; one via a node is a learned route.
pub fn scan(
    own: &[Prefix],
    statics: &[Prefix],
    covering: &[Prefix],
) -> io::Result<Vec<(Prefix, Ipv4Route)>> {
    let mut nl = Netlink::open()?;
    Ok(select_entries(nl.routes_v4()?, own, statics, covering))
}

/// [`scan`] on a table already read.
fn select_entries(
    table: Vec<RouteEntry>,
    own: &[Prefix],
    statics: &[Prefix],
    covering: &[Prefix],
) -> Vec<(Prefix, Ipv4Route)> {
    let rows = table.into_iter().filter_map(|e: RouteEntry| {
        let p = prefix_of(&e.route)?;
        let ours = covering.contains(&p) && is_covering_shape(&e.route);
        (!ours).then_some((e.protocol, p, e.route))
    });
    select(rows, own, statics)
}

/// A route into a device with no gateway, as a covering route is.
fn is_covering_shape(r: &Ipv4Route) -> bool {
    r.gateway.is_none() && r.multipath.is_empty() && (r.metric == COVERING_METRIC || r.metric == 0)
}

impl<T> StaleKernelRoutes<T> {
    /// `gr_peers[i]`: peer `i` has graceful restart configured (we wait for
    /// its End-of-RIB). `bound`: the longest we keep the routes.
    pub fn new(
        routes: Vec<(Prefix, T)>,
        gr_peers: &[bool],
        now: Instant,
        bound: Duration,
    ) -> StaleKernelRoutes<T> {
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

    /// How many peers' End-of-RIB are still awaited.
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

    /// The routes to delete now: those whose prefix is not to be kept
    /// (`keep(prefix)` false: BGP has not installed it again, it is not
    /// one of our blocks).
    pub fn sweep(self, keep: impl Fn(&Prefix) -> bool) -> Vec<T> {
        self.routes
            .into_iter()
            .filter(|(p, _)| !keep(p))
            .map(|(_, r)| r)
            .collect()
    }
}

/// Deletes the given routes (protocol 77, exact match); a route already
/// gone is fine. Returns how many were deleted and the failures. In
/// batches ([`Netlink::route_batch`]): a restart after a crash can leave
/// a full table of stale routes, and one request and ACK per route held
/// the BGP thread for seconds at 100,000 of them.
pub fn delete(routes: &[Ipv4Route]) -> (usize, Vec<String>) {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => return (0, vec![format!("netlink: {e}")]),
    };
    let ops: Vec<RouteOp> = routes.iter().cloned().map(RouteOp::Delete).collect();
    let mut done = 0;
    let mut failed = Vec::new();
    for (r, result) in routes.iter().zip(nl.route_batch(&ops)) {
        match result {
            Ok(()) => done += 1,
            Err(e) if errno(&e) == Some(libc::ESRCH) => {}
            Err(e) => failed.push(format!("{r}: {e}")),
        }
    }
    (done, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn row(proto: u8, dst: &'static str) -> (u8, Prefix, &'static str) {
        (proto, p(dst), dst)
    }

    #[test]
    fn only_learned_blocks_are_stale() {
        let dump = vec![
            row(77, "10.244.2.0/26"), // learned (encap or direct)
            row(77, "10.244.3.0/26"), // learned
            row(77, "10.244.1.0/26"), // our block
            row(77, "10.244.1.5/32"), // our pod
            row(77, "10.244.0.0/16"), // around our block
            row(77, "10.22.0.0/26"),  // static
            row(77, "0.0.0.0/0"),     // never ours to sweep
            row(12, "10.244.4.0/26"), // BIRD's, not ours
            row(2, "10.0.0.0/24"),    // kernel
        ];
        let got = select(dump, &[p("10.244.1.0/26")], &[p("10.22.0.0/26")]);
        let got: Vec<&str> = got.into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, vec!["10.244.2.0/26", "10.244.3.0/26"]);
    }

    /// A pool's covering route (this build's metric, or 0 from a build
    /// before it) is not stale; a learned route to the pool's exact
    /// prefix via a node is, and so is a covering route of a pool this
    /// run does not cover.
    #[test]
    fn covering_routes_are_not_stale_but_a_learned_pool_equal_route_is() {
        use crate::netlink::Scope;
        let route = |dst: &str, gateway: Option<[u8; 4]>, metric: u32| {
            let pf = p(dst);
            RouteEntry {
                route: Ipv4Route {
                    dst: pf.addr(),
                    prefix_len: pf.len(),
                    gateway: gateway.map(std::net::Ipv4Addr::from),
                    oif: 3,
                    scope: if gateway.is_some() {
                        Scope::Universe
                    } else {
                        Scope::Link
                    },
                    onlink: false,
                    multipath: Vec::new(),
                    metric,
                },
                protocol: RTPROT_PODROUTER,
            }
        };
        let table = vec![
            route("10.244.0.0/16", None, COVERING_METRIC),
            route("10.244.0.0/16", None, 0),
            route("10.244.0.0/16", Some([10, 0, 0, 2]), 0),
            route("10.245.0.0/16", None, COVERING_METRIC),
            route("10.244.2.0/26", None, 0),
        ];
        let got: Vec<String> = select_entries(table, &[], &[], &[p("10.244.0.0/16")])
            .into_iter()
            .map(|(_, r)| r.to_string())
            .collect();
        assert_eq!(
            got,
            vec![
                "10.244.0.0/16 via 10.0.0.2 dev #3",
                "10.245.0.0/16 dev #3 scope link metric 1024",
                "10.244.2.0/26 dev #3 scope link",
            ]
        );
    }

    #[test]
    fn sweep_waits_for_every_gr_peer_or_the_bound() {
        let t = Instant::now();
        let routes = select(
            vec![row(77, "10.244.2.0/26"), row(77, "10.244.3.0/26")],
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
        assert_eq!(gone, vec!["10.244.3.0/26"]);
        // The bound alone is enough; no GR peer at all: due at once.
        let s = StaleKernelRoutes::new(routes.clone(), &[true], t, Duration::from_secs(30));
        assert!(!s.due(t + Duration::from_secs(29)));
        assert!(s.due(t + Duration::from_secs(30)));
        assert!(s
            .reason(t + Duration::from_secs(30))
            .unwrap()
            .contains("restart time passed"));
        let s = StaleKernelRoutes::new(routes, &[false, false], t, Duration::from_secs(30));
        assert!(s.due(t));
        assert!(s.reason(t).unwrap().contains("no peer"));
        // An index out of range is ignored, not a panic.
        let mut s: StaleKernelRoutes<()> = StaleKernelRoutes::new(vec![], &[], t, Duration::ZERO);
        s.note_eor(9);
        assert!(s.is_empty());
    }
}
