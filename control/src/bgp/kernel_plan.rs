//! Which node kernel routes the learned blocks need (`[bgp]
//! kernel_routes`).
//!
//! `per-block`: every learned block gets its own kernel route (protocol
//! 77), into the host port when every next hop is encapsulated, else via
//! the directly routed nodes.
//!
//! `per-pool` (the default): a block whose next hops are all encapsulated is reached by
//! the host through the router anyway (its kernel route would only say
//! "dev host port"), so one kernel route per import pool into the host
//! port ([`KernelPlan::covering_routes`]) gives the host the same
//! reachability; the router's FIB holds the detail. A block the kernel
//! must route itself (encap `never`, a cross-subnet block on the node's
//! own subnet, an ECMP set with a directly routed member) keeps its own
//! route, which is more specific and wins. An address of the pool that
//! no peer announced reaches the router from the host instead of
//! following the host's default route (out of the node, as with
//! per-block).
//!
//! The router's FIB gets each covering pool as an `Unreachable` entry
//! ([`KernelPlan::fib_entries`]), below the learned blocks (more
//! specific): what the host sends to an address of the pool that no
//! block covers, and what a pod sends there, is refused by the router
//! with an ICMP unreachable (counted as `no_route`) instead of going
//! round the host port and being dropped as `hairpin` (pods see the
//! error; the host's kernel discards it, its source being the node's
//! own address). A learned route to the
//! pool's exact prefix takes the entry's place while it is installed and
//! gives it back when it goes ([`KernelPlan::fib_change`]).
//!
//! Invariants: a pool gets a covering route only if the import policy
//! could ever install something inside it and it touches nothing the node
//! has: not the default route, not link-local, loopback or multicast, not
//! one of the node's addresses or their subnets, not equal to, inside or
//! around a static `[[routes]]` prefix. Otherwise that pool stays
//! per-block ([`KernelPlan::refused`] says why, logged once at start).
//! [`KernelPlan::own_route`] is the one test for "this block needs its
//! own kernel route", used by the `bgp-kernel` thread and the stale sweep.
//!
//! A learned prefix equal to a pool that must be routed by the kernel
//! (directly routed) needs a route with the pool's exact destination. The
//! covering routes therefore carry their own metric,
//! [`COVERING_METRIC`], and learned blocks the kernel's default 0: in
//! the kernel two routes to one prefix with different metrics are two
//! routes (the lower metric wins), so installing the learned route
//! (`replace` matches destination and metric) never replaces the pool's,
//! deleting it (it names its gateway) never deletes the pool's, and
//! removing the pool's route (it names its metric) leaves the learned one.
use std::net::Ipv4Addr;

use podrouter_router::encap::EncapPolicy;
use podrouter_router::fib::{FibChange, NextHop};
use podrouter_types::Prefix;

use crate::config::KernelRoutesMode;
use crate::kernel_job::{KernelJob, Vias};
use crate::netlink::{Ipv4Route, Scope};

use super::speaker::{import_refusal, SpeakerConfig};

/// The metric of the pools' covering routes (`ip route ... metric
/// 1024`): above the learned blocks' 0, so a learned route to a pool's
/// exact prefix is a separate route that wins over the pool's.
pub const COVERING_METRIC: u32 = 1024;

/// The kernel-route plan of one daemon run (fixed at start: the mode and
/// the pools need a restart to change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPlan {
    policy: EncapPolicy,
    /// Pools with a covering route (empty in `per-block` mode).
    covering: Vec<Prefix>,
    /// Pools that stay per-block in `per-pool` mode, with why.
    refused: Vec<(Prefix, &'static str)>,
}

impl KernelPlan {
    /// The plan for `mode` with the speaker's pools and import policy.
    pub fn new(mode: KernelRoutesMode, policy: EncapPolicy, scfg: &SpeakerConfig) -> KernelPlan {
        let mut plan = KernelPlan {
            policy,
            covering: Vec::new(),
            refused: Vec::new(),
        };
        if mode == KernelRoutesMode::PerBlock {
            return plan;
        }
        for pool in &scfg.import_pools {
            match pool_refusal(scfg, pool) {
                Some(why) => plan.refused.push((*pool, why)),
                None => plan.covering.push(*pool),
            }
        }
        plan
    }

    /// The pools with a covering route.
    pub fn covering(&self) -> &[Prefix] {
        &self.covering
    }

    /// The pools `per-pool` could not cover, with why.
    pub fn refused(&self) -> &[(Prefix, &'static str)] {
        &self.refused
    }

    /// Whether the learned block `p`, routed via `vias`, needs a kernel
    /// route of its own: always in `per-block` mode; in `per-pool` mode
    /// unless a covering pool holds it and every next hop is
    /// encapsulated (the route would go into the host port anyway).
    pub fn own_route(&self, p: &Prefix, vias: &[Ipv4Addr]) -> bool {
        let through_router = !vias.is_empty() && vias.iter().all(|v| self.policy.encap_to(*v));
        !(through_router && self.covering.iter().any(|pool| inside(p, pool)))
    }

    /// The kernel change `j` needs under this plan, if any: the new route
    /// if the block needs its own; else the removal of the old own route
    /// it had (it became covered, or was withdrawn); else nothing.
    pub fn kernel_job(&self, j: &KernelJob) -> Option<KernelJob> {
        let (p, new, old) = j;
        let own = |v: &&Vias| self.own_route(p, v);
        match (new.as_ref().filter(own), old.as_ref().filter(own)) {
            (Some(_), _) => Some(j.clone()),
            (None, Some(o)) => Some((*p, None, Some(o.clone()))),
            (None, None) => None,
        }
    }

    /// The FIB entries of the covering pools (each `Unreachable`), but for
    /// pools a learned route already holds (`learned`: the routes restored
    /// at start).
    pub fn fib_entries(&self, learned: &[Prefix]) -> Vec<FibChange> {
        self.covering
            .iter()
            .filter(|pool| !learned.contains(pool))
            .map(|pool| FibChange::Insert(*pool, NextHop::Unreachable))
            .collect()
    }

    /// A learned route's FIB change under this plan: the removal of a
    /// learned route to a covering pool's exact prefix puts the pool's
    /// `Unreachable` entry back; anything else is unchanged.
    pub fn fib_change(&self, c: FibChange) -> FibChange {
        match c {
            FibChange::Remove(p) if self.covering.contains(&p) => {
                FibChange::Insert(p, NextHop::Unreachable)
            }
            FibChange::InsertMultipath(p, v) if v.is_empty() && self.covering.contains(&p) => {
                FibChange::Insert(p, NextHop::Unreachable)
            }
            c => c,
        }
    }

    /// The covering routes: each pool into the host port (index
    /// `host_index`), scope link, as a learned block's route into the
    /// router is, with [`COVERING_METRIC`].
    pub fn covering_routes(&self, host_index: u32) -> Vec<Ipv4Route> {
        self.covering
            .iter()
            .map(|pool| Ipv4Route {
                dst: pool.addr(),
                prefix_len: pool.len(),
                gateway: None,
                oif: host_index,
                scope: Scope::Link,
                onlink: false,
                multipath: Vec::new(),
                metric: COVERING_METRIC,
            })
            .collect()
    }
}

/// Why `pool` may not get a covering route, if so: the import policy's
/// checks that apply to a pool as a whole (the pool itself must be
/// importable but for the node's own blocks, which keep their own more
/// specific routes), and static routes around, inside or equal to it.
fn pool_refusal(scfg: &SpeakerConfig, pool: &Prefix) -> Option<&'static str> {
    // Our own blocks usually lie inside the pool (the default pools are
    // pod_cidrs widened to /16): their routes are more specific.
    let as_pool = SpeakerConfig {
        local_routes: Vec::new(),
        static_routes: Vec::new(),
        import_pools: vec![*pool],
        ..scfg.clone()
    };
    if let Some(why) = import_refusal(&as_pool, pool) {
        return Some(why);
    }
    if scfg
        .static_routes
        .iter()
        .any(|s| s.contains(pool.addr()) || pool.contains(s.addr()))
    {
        return Some("a static [[routes]] prefix overlaps it");
    }
    None
}

/// Whether `inner` lies inside (or is) `outer`.
fn inside(inner: &Prefix, outer: &Prefix) -> bool {
    outer.contains(inner.addr()) && inner.len() >= outer.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrouter_router::encap::EncapMode;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn scfg(pools: &[&str]) -> SpeakerConfig {
        SpeakerConfig {
            local_as: 64512,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            next_hop: Ipv4Addr::new(10, 0, 0, 1),
            peers: Vec::new(),
            local_routes: vec![p("10.244.1.0/26")],
            static_routes: vec![p("10.99.0.0/24")],
            import_pools: pools.iter().map(|s| p(s)).collect(),
            node_networks: vec![p("10.0.0.1/32"), p("10.0.0.0/24")],
        }
    }

    fn policy(mode: EncapMode) -> EncapPolicy {
        EncapPolicy {
            mode,
            subnet: Some(p("10.0.0.0/24")),
        }
    }

    #[test]
    fn per_block_gives_every_block_its_route() {
        let plan = KernelPlan::new(
            KernelRoutesMode::PerBlock,
            policy(EncapMode::Always),
            &scfg(&["10.244.0.0/16"]),
        );
        assert!(plan.covering().is_empty());
        assert!(plan.covering_routes(7).is_empty());
        assert!(plan.own_route(&p("10.244.2.0/26"), &[Ipv4Addr::new(10, 9, 0, 2)]));
    }

    #[test]
    fn per_pool_covers_tunnelled_blocks_only() {
        let plan = KernelPlan::new(
            KernelRoutesMode::PerPool,
            policy(EncapMode::CrossSubnet),
            &scfg(&["10.244.0.0/16"]),
        );
        assert_eq!(plan.covering(), &[p("10.244.0.0/16")]);
        let far = Ipv4Addr::new(10, 9, 0, 2);
        let near = Ipv4Addr::new(10, 0, 0, 2);
        // Another subnet: encapsulated, through the router: covered.
        assert!(!plan.own_route(&p("10.244.2.0/26"), &[far]));
        // The node's own subnet: the kernel routes it itself.
        assert!(plan.own_route(&p("10.244.3.0/26"), &[near]));
        // ECMP with one direct member: the kernel's multipath route.
        assert!(plan.own_route(&p("10.244.4.0/26"), &[near, far]));
        // Outside every covering pool.
        assert!(plan.own_route(&p("10.245.0.0/26"), &[far]));
        // The pool itself as a learned prefix is covered by its route.
        assert!(!plan.own_route(&p("10.244.0.0/16"), &[far]));
        let r = plan.covering_routes(7);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].dst, r[0].prefix_len),
            (Ipv4Addr::new(10, 244, 0, 0), 16)
        );
        assert_eq!((r[0].oif, r[0].scope, r[0].gateway), (7, Scope::Link, None));
        // Encap never: nothing goes through the router.
        let never = KernelPlan::new(
            KernelRoutesMode::PerPool,
            policy(EncapMode::Never),
            &scfg(&["10.244.0.0/16"]),
        );
        assert!(never.own_route(&p("10.244.2.0/26"), &[far]));
    }

    /// The covering pools are `Unreachable` in the FIB (but for one a
    /// restored learned route holds), and a learned route to a pool's
    /// exact prefix gives the entry back when it goes.
    #[test]
    fn covering_pools_are_unreachable_in_the_fib_until_learned() {
        let plan = KernelPlan::new(
            KernelRoutesMode::PerPool,
            policy(EncapMode::Always),
            &scfg(&["10.244.0.0/16", "10.246.0.0/16"]),
        );
        let pool = p("10.244.0.0/16");
        assert_eq!(
            plan.fib_entries(&[p("10.246.0.0/16")]),
            vec![FibChange::Insert(pool, NextHop::Unreachable)]
        );
        assert_eq!(
            plan.fib_change(FibChange::Remove(pool)),
            FibChange::Insert(pool, NextHop::Unreachable)
        );
        assert_eq!(
            plan.fib_change(FibChange::InsertMultipath(pool, Vec::new())),
            FibChange::Insert(pool, NextHop::Unreachable)
        );
        // The learned route itself, and other prefixes, pass unchanged.
        let via = NextHop::Node(Ipv4Addr::new(10, 9, 0, 2));
        let learned = FibChange::Insert(pool, via);
        assert_eq!(plan.fib_change(learned.clone()), learned);
        let block = FibChange::Remove(p("10.244.2.0/26"));
        assert_eq!(plan.fib_change(block.clone()), block);
        // per-block: no FIB entries, nothing rewritten.
        let per_block = KernelPlan::new(
            KernelRoutesMode::PerBlock,
            policy(EncapMode::Always),
            &scfg(&["10.244.0.0/16"]),
        );
        assert!(per_block.fib_entries(&[]).is_empty());
        assert_eq!(
            per_block.fib_change(FibChange::Remove(pool)),
            FibChange::Remove(pool)
        );
    }

    #[test]
    fn per_pool_refuses_pools_that_touch_the_node() {
        let plan = KernelPlan::new(
            KernelRoutesMode::PerPool,
            policy(EncapMode::Always),
            &scfg(&[
                "0.0.0.0/0",
                "10.0.0.0/8",
                "169.254.0.0/16",
                "10.99.0.0/16",
                "10.99.0.0/25",
                "10.244.0.0/16",
            ]),
        );
        assert_eq!(plan.covering(), &[p("10.244.0.0/16")]);
        let refused: Vec<Prefix> = plan.refused().iter().map(|(p, _)| *p).collect();
        assert_eq!(
            refused,
            vec![
                p("0.0.0.0/0"),
                p("10.0.0.0/8"),
                p("169.254.0.0/16"),
                p("10.99.0.0/16"),
                p("10.99.0.0/25")
            ]
        );
        // Every refusal says why.
        assert!(plan.refused().iter().all(|(_, why)| !why.is_empty()));
        // A block inside a refused pool keeps its own route.
        assert!(plan.own_route(&p("10.10.0.0/26"), &[Ipv4Addr::new(10, 9, 0, 2)]));
    }

    /// A learned prefix equal to a pool, routed directly (root only): in
    /// a scratch namespace the pool's covering route and the learned route
    /// live side by side (the learned one wins), withdrawing the learned
    /// route leaves the pool's, and removing the pool's leaves the learned.
    #[test]
    fn a_learned_prefix_equal_to_a_pool_keeps_both_routes() {
        if !podrouter_testkit::privileged("a_learned_prefix_equal_to_a_pool_keeps_both_routes") {
            return;
        }
        use crate::kernel_job::Vias;
        use crate::netlink::{Netlink, RTPROT_PODROUTER};
        use crate::netns::RunIn;
        use crate::uplink_setup::{KernelRoutes, UplinkState};
        use podrouter_router::uplink::Uplink;
        use std::sync::Arc;

        let ns = podrouter_testkit::Netns::new("kp");
        ns.veth_pair("podrouter0", "x0");
        ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "podrouter0"]);
        ns.run(|| {
            let plan = KernelPlan::new(
                KernelRoutesMode::PerPool,
                policy(EncapMode::CrossSubnet),
                &scfg(&["10.244.0.0/16"]),
            );
            let near = Ipv4Addr::new(10, 0, 0, 2);
            let pool = p("10.244.0.0/16");
            // The pool as a learned prefix via a node on our subnet: the
            // kernel must route it itself.
            assert!(plan.own_route(&pool, &[near]));
            let port = Arc::new(Uplink::open(Ipv4Addr::new(10, 0, 0, 1), 1500).unwrap());
            let state = UplinkState::for_test(port.clone(), policy(EncapMode::CrossSubnet));
            let mut routes = KernelRoutes::new("podrouter0", state);
            let host = Netlink::open()
                .unwrap()
                .link_index("podrouter0")
                .unwrap()
                .unwrap();
            let ours = || -> Vec<String> {
                let mut v: Vec<String> = Netlink::open()
                    .unwrap()
                    .routes_v4()
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.protocol == RTPROT_PODROUTER)
                    .map(|r| r.route.to_string())
                    .collect();
                v.sort();
                v
            };
            let covering = format!("10.244.0.0/16 dev #{host} scope link metric {COVERING_METRIC}");
            let learned = format!("10.244.0.0/16 via 10.0.0.2 dev #{host}");
            let learn = (pool, Vias::new(&[near]), None);
            let withdraw = (pool, None, Vias::new(&[near]));
            routes.set_routes(&plan.covering_routes(0), true).unwrap();
            let apply = |routes: &mut KernelRoutes, j: &KernelJob| {
                let job = plan
                    .kernel_job(j)
                    .expect("the pool-equal prefix needs its route");
                assert!(routes.apply(&[job]).is_empty());
            };
            apply(&mut routes, &learn);
            assert_eq!(ours(), vec![covering.clone(), learned.clone()]);
            // The learned route wins for the host's traffic.
            let got = ns_route_get("10.244.7.7");
            assert!(got.contains("via 10.0.0.2"), "{got}");
            // Withdrawn: the pool's route is still there and used.
            apply(&mut routes, &withdraw);
            assert_eq!(ours(), vec![covering.clone()]);
            let got = ns_route_get("10.244.7.7");
            assert!(
                got.contains("dev podrouter0") && !got.contains("via"),
                "{got}"
            );
            // Learned again, then the pool's route goes (a non-graceful
            // stop): the learned route stays.
            apply(&mut routes, &learn);
            routes.set_routes(&plan.covering_routes(0), false).unwrap();
            assert_eq!(ours(), vec![learned.clone()]);
            apply(&mut routes, &withdraw);
            assert!(ours().is_empty());
        });
    }

    /// `ip route get ADDR` in the calling thread's namespace.
    fn ns_route_get(addr: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["route", "get", addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
