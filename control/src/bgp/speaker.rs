//! The speaker: every configured neighbour's [`Session`], the [`Rib`] they
//! feed, the import filter, and the FIB changes that follow from best-path
//! changes. Still no sockets and no clock: the driver (`super::driver`)
//! turns socket events into [`Speaker::input`] calls and carries out
//! [`Speaker::take_io`]; tests call it directly.
//!
//! # Import policy
//!
//! A learned prefix is installed in the FIB (and the node's kernel) only
//! if it lies inside one of the cluster's pod address pools
//! (`import_pools`) and touches nothing the node already has. Refused, in
//! this order ([`Speaker::filtered`] names the first that applies):
//! the default route (the node's default stays with the host); anything
//! covering or overlapping 169.254.0.0/16 (the pods' gateway lives there),
//! loopback 127.0.0.0/8 or multicast 224.0.0.0/4; anything covering or
//! overlapping one of the node's addresses or the subnets they are on
//! (`node_networks`: the uplink subnet, read at start), so a peer can
//! never move the node's connected routes or its peer's address into the
//! tunnel; anything overlapping this node's pod CIDRs (our own blocks are
//! ours: local pods and Unreachable); anything equal to or inside a
//! static route (static wins, and is never shadowed); anything outside
//! every import pool. Refused routes stay in the RIB, shown with the
//! reason (`podrouterctl bgp rib`) and left out of a peer's accepted
//! count (`podrouterctl bgp peers`).
//!
//! # FIB sync
//!
//! Route events mark prefixes dirty; [`Speaker::take_fib_changes`] runs the
//! decision for each dirty prefix and compares the next hops of its
//! multipath set (distinct, sorted: [`Rib::next_hops`]) with what it
//! installed before, producing one batch of inserts and removes for
//! [`podrouter_router::fib::Fib::update`]: one next hop is a plain
//! `NextHop::Node` route, several an ECMP group
//! (`FibChange::InsertMultipath`). The driver calls it when a FIB
//! batch is due (at once after a quiet spell, spaced by a multiple of the
//! last batch's cost during a burst), so a burst of UPDATEs becomes a few
//! large FIB publications.
use super::prefix_hash::{PrefixMap, PrefixSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use podrouter_router::fib::{FibChange, NextHop};
use podrouter_types::Prefix;

use super::rib::Rib;
use super::session::{Input, Output, RouteEvent, Session, SessionConfig, State};

/// One configured neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub session: SessionConfig,
    /// TCP MD5 key (RFC 2385), if any.
    pub password: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub next_hop: Ipv4Addr,
    pub peers: Vec<PeerSpec>,
    /// Our blocks, announced to every peer.
    pub local_routes: Vec<Prefix>,
    /// Static routes (never overridden by BGP).
    pub static_routes: Vec<Prefix>,
    /// Learned prefixes must lie inside one of these.
    pub import_pools: Vec<Prefix>,
    /// The node's addresses (/32) and the subnets they are on: no learned
    /// prefix may cover or overlap one.
    pub node_networks: Vec<Prefix>,
}

/// Address ranges no learned route may touch, with the reason shown.
fn reserved() -> [(Prefix, &'static str); 3] {
    let net = |a, b, len| Prefix::truncating(Ipv4Addr::new(a, b, 0, 0), len);
    [
        (
            net(169, 254, 16),
            "covers or overlaps link-local 169.254.0.0/16",
        ),
        (net(127, 0, 8), "covers or overlaps loopback 127.0.0.0/8"),
        (net(224, 0, 4), "covers or overlaps multicast 224.0.0.0/4"),
    ]
}

/// Why the import policy (module header) keeps a learned prefix out of
/// the FIB, if it does.
pub fn import_refusal(cfg: &SpeakerConfig, p: &Prefix) -> Option<&'static str> {
    if p.len() == 0 {
        return Some("default route stays with the host");
    }
    if let Some((_, why)) = reserved().into_iter().find(|(r, _)| overlaps(r, p)) {
        return Some(why);
    }
    if cfg.node_networks.iter().any(|n| overlaps(n, p)) {
        return Some("covers or overlaps this node's addresses or their subnets");
    }
    if cfg.local_routes.iter().any(|c| overlaps(c, p)) {
        return Some("overlaps this node's pod_cidrs");
    }
    if cfg.static_routes.iter().any(|s| inside(p, s)) {
        return Some("a static route has this prefix");
    }
    if !cfg.import_pools.iter().any(|pool| inside(p, pool)) {
        return Some("outside [bgp] import_pools");
    }
    None
}

/// Whether two prefixes share an address (one contains the other).
fn overlaps(a: &Prefix, b: &Prefix) -> bool {
    a.contains(b.addr()) || b.contains(a.addr())
}

/// Whether `inner` lies inside (or is) `outer`.
fn inside(inner: &Prefix, outer: &Prefix) -> bool {
    outer.contains(inner.addr()) && inner.len() >= outer.len()
}

pub use crate::kernel_job::{KernelJob, Vias};

/// How a learned route reaches the FIB: the one place that builds the
/// FIB's next hop for another node's block.
pub fn fib_next_hop(node: Ipv4Addr) -> NextHop {
    NextHop::Node(node)
}

/// The FIB change that routes `p` via `vias` (sorted, distinct): a plain
/// route for one node, an ECMP group for several, a removal for none.
pub fn fib_change(p: Prefix, vias: &[Ipv4Addr]) -> FibChange {
    match vias {
        [] => FibChange::Remove(p),
        [one] => FibChange::Insert(p, fib_next_hop(*one)),
        many => FibChange::InsertMultipath(p, many.to_vec()),
    }
}

pub struct Speaker {
    /// `cfg.peers[i]` configures `sessions[i]`, live or retired.
    pub cfg: SpeakerConfig,
    sessions: Vec<Session>,
    /// `retired[i]`: peer `i` was removed by a reload. Its slot stays (the
    /// driver's tokens and the stale sweep index peers by position), its
    /// session is stopped and holds no route; nothing addresses it again.
    retired: Vec<bool>,
    rib: Rib,
    dirty: PrefixSet,
    /// What BGP installed per prefix: its next hops, sorted, distinct.
    installed: PrefixMap<Vias>,
    /// Changes for the node's kernel routes: (prefix, new via, old via).
    kernel_jobs: Vec<KernelJob>,
    io: Vec<(usize, Output)>,
    state_changes: Vec<(usize, State)>,
}

impl Speaker {
    pub fn new(cfg: SpeakerConfig, now: Instant) -> Speaker {
        let sessions = cfg
            .peers
            .iter()
            .map(|p| Session::new(p.session.clone(), cfg.local_routes.clone(), now))
            .collect();
        Speaker {
            retired: vec![false; cfg.peers.len()],
            cfg,
            sessions,
            rib: Rib::new(),
            dirty: PrefixSet::default(),
            installed: PrefixMap::default(),
            kernel_jobs: Vec::new(),
            io: Vec::new(),
            state_changes: Vec::new(),
        }
    }

    pub fn peer_count(&self) -> usize {
        self.sessions.len()
    }

    /// The live peer with this address.
    pub fn peer_index(&self, addr: Ipv4Addr) -> Option<usize> {
        (0..self.sessions.len()).find(|i| !self.retired[*i] && self.sessions[*i].cfg.peer == addr)
    }

    /// The indexes of the peers not retired.
    fn live(&self) -> Vec<usize> {
        (0..self.sessions.len())
            .filter(|i| !self.retired[*i])
            .collect()
    }

    /// Whether peer `i` was removed by a reload.
    pub fn is_retired(&self, i: usize) -> bool {
        self.retired[i]
    }

    /// Replaces the configured peers (a reload): a live peer whose spec is
    /// not in `peers` exactly is stopped with a Cease (its routes leave
    /// the RIB) and retired; a spec not configured yet gets a new session,
    /// started at once. A peer whose spec is unchanged is not touched, so
    /// its session stays Established. A changed spec (same address, other
    /// AS, key, timers...) is a removal plus an addition. Returns the
    /// indexes (added, retired).
    pub fn set_peers(&mut self, now: Instant, peers: Vec<PeerSpec>) -> (Vec<usize>, Vec<usize>) {
        let mut gone = Vec::new();
        for i in 0..self.sessions.len() {
            if !self.retired[i] && !peers.contains(&self.cfg.peers[i]) {
                self.input(
                    now,
                    i,
                    Input::Stop {
                        reason: "peer removed from the configuration".into(),
                        graceful: false,
                    },
                );
                self.retired[i] = true;
                gone.push(i);
            }
        }
        let mut added = Vec::new();
        for spec in peers {
            let known =
                (0..self.sessions.len()).any(|i| !self.retired[i] && self.cfg.peers[i] == spec);
            if known {
                continue;
            }
            let i = self.sessions.len();
            self.sessions.push(Session::new(
                spec.session.clone(),
                self.cfg.local_routes.clone(),
                now,
            ));
            self.cfg.peers.push(spec);
            self.retired.push(false);
            self.input(now, i, Input::Start);
            added.push(i);
        }
        (added, gone)
    }

    pub fn session(&self, i: usize) -> &Session {
        &self.sessions[i]
    }

    pub fn start_all(&mut self, now: Instant) {
        for i in self.live() {
            self.input(now, i, Input::Start);
        }
    }

    pub fn stop_all(&mut self, now: Instant, reason: &str, graceful: bool) {
        for i in 0..self.sessions.len() {
            self.input(
                now,
                i,
                Input::Stop {
                    reason: reason.to_string(),
                    graceful,
                },
            );
        }
    }

    pub fn input(&mut self, now: Instant, peer: usize, input: Input<'_>) {
        let out = self.sessions[peer].handle(now, input);
        self.absorb(peer, out);
    }

    /// Replaces this node's own blocks (a configuration reload): every
    /// session announces the added ones and withdraws the removed ones
    /// (at once if Established, else at its next OPEN exchange), and
    /// learned prefixes overlapping a changed block are re-run through the
    /// import filter (a learned route inside a block that became ours
    /// leaves the FIB; one inside a block we gave up may enter it).
    pub fn set_local_routes(&mut self, now: Instant, routes: Vec<Prefix>) {
        let old = std::mem::replace(&mut self.cfg.local_routes, routes.clone());
        let changed: Vec<Prefix> = old
            .iter()
            .filter(|p| !routes.contains(p))
            .chain(routes.iter().filter(|p| !old.contains(p)))
            .copied()
            .collect();
        if changed.is_empty() {
            return;
        }
        let overlaps = |p: &Prefix| {
            changed
                .iter()
                .any(|c| c.contains(p.addr()) || p.contains(c.addr()))
        };
        let touched: Vec<Prefix> = self
            .rib
            .prefixes()
            .filter(|p| overlaps(p))
            .copied()
            .collect();
        self.dirty.extend(touched);
        for i in self.live() {
            let out = self.sessions[i].set_local_routes(now, routes.clone());
            self.absorb(i, out);
        }
    }

    /// Whether BGP has `p` in the FIB now.
    pub fn is_installed(&self, p: &Prefix) -> bool {
        self.installed.contains_key(p)
    }

    /// The nodes BGP routes `p` via in the FIB now, if it has `p`.
    pub fn installed_vias(&self, p: &Prefix) -> Option<&Vias> {
        self.installed.get(p)
    }

    /// Fires expired timers of every session.
    pub fn poll(&mut self, now: Instant) {
        for i in 0..self.sessions.len() {
            if self.sessions[i].next_deadline().is_some_and(|d| d <= now) {
                let out = self.sessions[i].poll(now);
                self.absorb(i, out);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions.iter().filter_map(|s| s.next_deadline()).min()
    }

    fn absorb(&mut self, peer: usize, out: Vec<Output>) {
        let addr = self.sessions[peer].cfg.peer;
        for o in out {
            match o {
                Output::Route(RouteEvent::Upsert(p, path)) => {
                    self.rib.upsert(p, path);
                    self.dirty.insert(p);
                }
                Output::Route(RouteEvent::Remove(p)) => {
                    self.rib.remove(p, addr);
                    self.dirty.insert(p);
                }
                Output::State(s) => self.state_changes.push((peer, s)),
                io => self.io.push((peer, io)),
            }
        }
    }

    /// Socket work for the driver, in order.
    pub fn take_io(&mut self) -> Vec<(usize, Output)> {
        std::mem::take(&mut self.io)
    }

    /// State changes since the last call (for logs and tests).
    pub fn take_state_changes(&mut self) -> Vec<(usize, State)> {
        std::mem::take(&mut self.state_changes)
    }

    /// Why a learned prefix is kept out of the FIB, if it is (the import
    /// policy, module header).
    pub fn filtered(&self, p: &Prefix) -> Option<&'static str> {
        import_refusal(&self.cfg, p)
    }

    /// Takes routes saved by the previous run (`super::saved`, already
    /// in the FIB) as installed: a peer re-announcing one the same way
    /// changes nothing, one announced otherwise is replaced, and
    /// [`Speaker::recheck`] at the restart's sweep removes those nobody
    /// announced again. Their kernel routes are (re)placed too, in case
    /// the kernel lost them. Routes the import policy refuses now are
    /// skipped; returns the prefixes taken.
    pub fn adopt(&mut self, routes: Vec<(Prefix, Vias)>) -> Vec<Prefix> {
        let mut taken = Vec::with_capacity(routes.len());
        for (p, vias) in routes {
            if self.filtered(&p).is_some() || self.installed.contains_key(&p) {
                continue;
            }
            self.kernel_jobs.push((p, Some(vias.clone()), None));
            self.installed.insert(p, vias);
            taken.push(p);
        }
        taken
    }

    /// Runs the decision again for these prefixes at the next
    /// [`Speaker::take_fib_changes`] (adopted routes at the restart's
    /// sweep: those with no path in the RIB leave the FIB).
    pub fn recheck(&mut self, prefixes: impl IntoIterator<Item = Prefix>) {
        self.dirty.extend(prefixes);
    }

    /// The FIB batch that brings the FIB in line with the RIB's best paths
    /// (each prefix via the distinct next hops of its multipath set).
    pub fn take_fib_changes(&mut self) -> Vec<FibChange> {
        use std::collections::hash_map::Entry;
        // Drained, not replaced: the set keeps its capacity, so the next
        // burst's batches do not grow a fresh table from nothing each.
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut changes = Vec::with_capacity(dirty.len());
        self.kernel_jobs.reserve(dirty.len());
        let mut want = Vec::new();
        for p in dirty.drain() {
            want.clear();
            if import_refusal(&self.cfg, &p).is_none() {
                self.rib.next_hops(&p, &mut want);
            }
            // One lookup of the installed map per prefix.
            match self.installed.entry(p) {
                Entry::Occupied(mut e) => {
                    if e.get()[..] == want[..] {
                        continue;
                    }
                    changes.push(fib_change(p, &want));
                    let job = match Vias::new(&want) {
                        Some(v) => (p, Some(v.clone()), Some(e.insert(v))),
                        None => (p, None, Some(e.remove())),
                    };
                    self.kernel_jobs.push(job);
                }
                Entry::Vacant(e) => {
                    let Some(v) = Vias::new(&want) else {
                        continue;
                    };
                    changes.push(fib_change(p, &want));
                    e.insert(v.clone());
                    self.kernel_jobs.push((p, Some(v), None));
                }
            }
        }
        self.dirty = dirty;
        changes
    }

    /// Whether decisions are waiting for [`Speaker::take_fib_changes`].
    pub fn fib_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Kernel route changes that go with the FIB changes taken so far.
    pub fn take_kernel_jobs(&mut self) -> Vec<KernelJob> {
        std::mem::take(&mut self.kernel_jobs)
    }

    /// Prefixes currently installed in the FIB by BGP.
    pub fn installed(&self) -> usize {
        self.installed.len()
    }

    /// The next hops BGP installed for `p` (sorted; empty if none).
    pub fn installed_next_hops(&self, p: &Prefix) -> &[Ipv4Addr] {
        self.installed.get(p).map_or(&[], |v| v)
    }

    /// FIB removals for every route BGP installed (on shutdown).
    pub fn withdraw_all_from_fib(&mut self) -> Vec<FibChange> {
        let mut changes = Vec::new();
        for (p, vias) in self.installed.drain() {
            self.kernel_jobs.push((p, None, Some(vias)));
            changes.push(FibChange::Remove(p));
        }
        changes
    }

    /// Every neighbour's session, in configuration order.
    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    /// The learned paths.
    pub fn rib(&self) -> &Rib {
        &self.rib
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::session::{ConnId, SessionConfig};
    use crate::bgp::views;
    use crate::bgp::wire::{
        self, Capability, Ctx, Message, Open, Origin, PathAttrs, Segment, SEG_AS_SEQUENCE,
    };
    use std::time::Duration;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn spec(addr: &str, asn: u32) -> PeerSpec {
        PeerSpec {
            session: SessionConfig {
                peer: ip(addr),
                peer_as: asn,
                local_as: 64512,
                router_id: ip("10.0.0.1"),
                next_hop: ip("10.0.0.1"),
                hold_time: 9,
                connect_retry: Duration::from_secs(5),
                passive: false,
                graceful_restart: false,
                restart_time: 120,
                restarting: false,
                max_prefixes: None,
            },
            password: None,
        }
    }

    fn speaker() -> Speaker {
        Speaker::new(
            SpeakerConfig {
                local_as: 64512,
                router_id: ip("10.0.0.1"),
                next_hop: ip("10.0.0.1"),
                peers: vec![spec("10.0.0.2", 64512), spec("10.0.0.3", 64512)],
                local_routes: vec![p("10.244.1.0/26")],
                static_routes: vec![p("10.99.0.0/16")],
                import_pools: vec![p("10.244.0.0/16"), p("10.250.0.0/16"), p("10.99.0.0/16")],
                node_networks: vec![p("10.0.0.1/32"), p("10.0.0.0/24")],
            },
            Instant::now(),
        )
    }

    fn up(s: &mut Speaker, t: Instant, i: usize, id: &str) {
        s.input(t, i, Input::Start);
        s.input(t, i, Input::Connected(ConnId::Outbound));
        let open = wire::encode_open(&Open {
            version: 4,
            my_as: 64512,
            hold_time: 9,
            router_id: ip(id),
            caps: vec![Capability::FourOctetAs(64512)],
            other_params: vec![],
        });
        s.input(t, i, Input::Data(ConnId::Outbound, &open));
        s.input(
            t,
            i,
            Input::Data(ConnId::Outbound, &wire::encode_keepalive()),
        );
        assert_eq!(s.session(i).state(), State::Established);
        s.take_io();
    }

    fn announce(s: &mut Speaker, t: Instant, i: usize, nh: &str, lp: u32, prefixes: &[&str]) {
        let attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            next_hop: Some(ip(nh)),
            local_pref: Some(lp),
            ..Default::default()
        };
        let nlri: Vec<Prefix> = prefixes.iter().map(|x| p(x)).collect();
        for m in wire::encode_updates(&[], Some(&attrs), &nlri, Ctx::default()) {
            s.input(t, i, Input::Data(ConnId::Outbound, &m));
        }
    }

    #[test]
    fn best_paths_drive_fib_changes_and_filters_apply() {
        let t = Instant::now();
        let mut s = speaker();
        up(&mut s, t, 0, "10.0.0.2");
        up(&mut s, t, 1, "10.0.0.3");
        announce(
            &mut s,
            t,
            0,
            "10.0.0.2",
            100,
            &[
                "10.244.2.0/26",
                "0.0.0.0/0",
                "10.244.1.0/27",
                "10.99.0.0/16",
            ],
        );
        let mut ch = s.take_fib_changes();
        ch.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            ch,
            vec![FibChange::Insert(
                p("10.244.2.0/26"),
                NextHop::Node(ip("10.0.0.2"))
            )]
        );
        // A better path from the other peer moves the next hop.
        announce(&mut s, t, 1, "10.0.0.3", 200, &["10.244.2.0/26"]);
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Insert(
                p("10.244.2.0/26"),
                NextHop::Node(ip("10.0.0.3"))
            )]
        );
        // The better peer goes away (TCP closed, no GR): back to the first.
        s.input(t, 1, Input::Closed(ConnId::Outbound, "gone".into()));
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Insert(
                p("10.244.2.0/26"),
                NextHop::Node(ip("10.0.0.2"))
            )]
        );
        let rib = views::rib(&s, None, 100);
        assert_eq!(rib.prefixes, 4);
        let default = rib.routes.iter().find(|r| r.prefix == "0.0.0.0/0").unwrap();
        assert!(default.filtered.is_some() && !default.installed);
        let block = rib
            .routes
            .iter()
            .find(|r| r.prefix == "10.244.2.0/26")
            .unwrap();
        assert!(block.best && block.installed);
        assert_eq!(rib.routes[0].from, "local");
        // Hold timer expiry withdraws everything.
        s.poll(t + Duration::from_secs(10));
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Remove(p("10.244.2.0/26"))]
        );
        let info = views::peers(&s, t, &[]);
        assert_eq!(info[0].state, "Idle");
        assert!(info[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("hold timer"));
        // Our OPEN and announcements went out on connect.
        let io = s.take_io();
        assert!(io.iter().any(|(_, o)| matches!(o, Output::Close(_))));
    }

    #[test]
    fn equal_paths_make_one_ecmp_group_in_the_fib() {
        let t = Instant::now();
        let block = p("10.250.0.0/24");
        let both = vec![ip("10.0.0.2"), ip("10.0.0.3")];
        // Whichever peer announces first, the group is the same (sorted).
        for order in [[0, 1], [1, 0]] {
            let mut s = speaker();
            up(&mut s, t, 0, "10.0.0.2");
            up(&mut s, t, 1, "10.0.0.3");
            let nh = |i: usize| ["10.0.0.2", "10.0.0.3"][i];
            announce(&mut s, t, order[0], nh(order[0]), 100, &["10.250.0.0/24"]);
            assert_eq!(
                s.take_fib_changes(),
                vec![FibChange::Insert(block, NextHop::Node(ip(nh(order[0]))))]
            );
            announce(&mut s, t, order[1], nh(order[1]), 100, &["10.250.0.0/24"]);
            assert_eq!(
                s.take_fib_changes(),
                vec![FibChange::InsertMultipath(block, both.clone())],
                "order {order:?}"
            );
            assert_eq!(s.installed_next_hops(&block), &both[..]);
            let jobs = s.take_kernel_jobs();
            assert_eq!(
                jobs.last(),
                Some(&(block, Vias::new(&both), Vias::new(&[ip(nh(order[0]))])))
            );
            // The same paths again: no change.
            announce(&mut s, t, 0, "10.0.0.2", 100, &["10.250.0.0/24"]);
            assert!(s.take_fib_changes().is_empty());
            // Both paths are installed; the non-best one shows as multipath.
            let rib = views::rib(&s, None, 100);
            let rows: Vec<_> = rib
                .routes
                .iter()
                .filter(|r| r.prefix == "10.250.0.0/24")
                .collect();
            assert_eq!(rows.len(), 2);
            assert!(rows.iter().all(|r| r.installed), "{rows:#?}");
            assert!(rows[0].best && !rows[1].best && rows[1].multipath);
            // A worse path is not part of the group (nor installed).
            announce(&mut s, t, 1, "10.0.0.3", 50, &["10.250.0.0/24"]);
            assert_eq!(
                s.take_fib_changes(),
                vec![FibChange::Insert(block, NextHop::Node(ip("10.0.0.2")))]
            );
            let rib = views::rib(&s, None, 100);
            let worse = rib.routes.iter().find(|r| r.from == "10.0.0.3").unwrap();
            assert!(!worse.installed && !worse.multipath);
            announce(&mut s, t, 1, "10.0.0.3", 100, &["10.250.0.0/24"]);
            assert_eq!(
                s.take_fib_changes(),
                vec![FibChange::InsertMultipath(block, both.clone())]
            );
            // One peer withdraws (its session ends): a single next hop.
            s.input(t, 1, Input::Closed(ConnId::Outbound, "gone".into()));
            assert_eq!(
                s.take_fib_changes(),
                vec![FibChange::Insert(block, NextHop::Node(ip("10.0.0.2")))]
            );
            assert_eq!(s.installed_next_hops(&block), &[ip("10.0.0.2")]);
            s.take_kernel_jobs();
            let all = s.withdraw_all_from_fib();
            assert_eq!(all, vec![FibChange::Remove(block)]);
            assert_eq!(
                s.take_kernel_jobs(),
                vec![(block, None, Vias::new(&[ip("10.0.0.2")]))]
            );
        }
        // Two peers announcing the same next hop: one node, no group.
        let mut s = speaker();
        up(&mut s, t, 0, "10.0.0.2");
        up(&mut s, t, 1, "10.0.0.3");
        announce(&mut s, t, 0, "10.0.0.9", 100, &["10.250.0.0/24"]);
        announce(&mut s, t, 1, "10.0.0.9", 100, &["10.250.0.0/24"]);
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Insert(block, NextHop::Node(ip("10.0.0.9")))]
        );
    }

    #[test]
    fn announcements_reach_the_wire() {
        let t = Instant::now();
        let mut s = speaker();
        s.input(t, 0, Input::Start);
        s.input(t, 0, Input::Connected(ConnId::Outbound));
        let open = wire::encode_open(&Open {
            version: 4,
            my_as: 64512,
            hold_time: 9,
            router_id: ip("10.0.0.2"),
            caps: vec![],
            other_params: vec![],
        });
        s.input(t, 0, Input::Data(ConnId::Outbound, &open));
        s.input(
            t,
            0,
            Input::Data(ConnId::Outbound, &wire::encode_keepalive()),
        );
        let sent: Vec<Message> = s
            .take_io()
            .into_iter()
            .filter_map(|(_, o)| match o {
                Output::Send(_, b) => Some(
                    wire::decode(
                        &b,
                        Ctx {
                            four_octet_as: false,
                        },
                    )
                    .unwrap(),
                ),
                _ => None,
            })
            .collect();
        assert!(sent.iter().any(|m| matches!(m, Message::Update(u)
            if u.nlri == vec![p("10.244.1.0/26")]
            && u.attrs.as_ref().unwrap().as_path == Some(vec![]))));
        let _ = Segment {
            kind: SEG_AS_SEQUENCE,
            asns: vec![],
        };
    }

    #[test]
    fn reloaded_blocks_reach_every_peer_and_the_import_filter() {
        let t = Instant::now();
        let mut s = speaker();
        up(&mut s, t, 0, "10.0.0.2");
        announce(&mut s, t, 0, "10.0.0.2", 100, &["10.244.9.0/26"]);
        assert_eq!(s.take_fib_changes().len(), 1);
        // Peer 1 is not up: it gets the new set at its OPEN exchange.
        s.set_local_routes(t, vec![p("10.244.1.0/26"), p("10.244.9.0/24")]);
        // The learned /26 now lies inside our own block: out of the FIB.
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Remove(p("10.244.9.0/26"))]
        );
        assert!(s.filtered(&p("10.244.9.0/26")).is_some());
        let sent: Vec<(usize, Message)> = s
            .take_io()
            .into_iter()
            .filter_map(|(i, o)| match o {
                Output::Send(_, b) => Some((i, wire::decode(&b, Ctx::default()).unwrap())),
                _ => None,
            })
            .collect();
        assert!(
            matches!(&sent[..], [(0, Message::Update(u))] if u.nlri == vec![p("10.244.9.0/24")]),
            "{sent:?}"
        );
        // Giving the block up again lets the learned route back in and
        // withdraws ours.
        s.set_local_routes(t, vec![p("10.244.1.0/26")]);
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Insert(
                p("10.244.9.0/26"),
                NextHop::Node(ip("10.0.0.2"))
            )]
        );
        let sent: Vec<Message> = s
            .take_io()
            .into_iter()
            .filter_map(|(_, o)| match o {
                Output::Send(_, b) => Some(wire::decode(&b, Ctx::default()).unwrap()),
                _ => None,
            })
            .collect();
        assert!(
            matches!(&sent[..], [Message::Update(u)] if u.withdrawn == vec![p("10.244.9.0/24")]),
            "{sent:?}"
        );
        assert_eq!(views::rib(&s, None, 10).routes[0].prefix, "10.244.1.0/26");
    }

    /// A reload's peers: the unchanged peer's session is not touched, the
    /// removed one is stopped with a Cease and its routes leave the FIB,
    /// the added one starts connecting; an edited entry restarts only
    /// that peer.
    #[test]
    fn set_peers_touches_only_the_changed_peers() {
        let t = Instant::now();
        let mut s = speaker();
        up(&mut s, t, 0, "10.0.0.2");
        up(&mut s, t, 1, "10.0.0.3");
        announce(&mut s, t, 1, "10.0.0.3", 100, &["10.244.3.0/26"]);
        assert_eq!(s.take_fib_changes().len(), 1);
        let kept = s.session(0).stats.established_count;
        // Peer 10.0.0.3 goes, 10.0.0.4 comes.
        let (added, gone) = s.set_peers(t, vec![spec("10.0.0.2", 64512), spec("10.0.0.4", 64513)]);
        assert_eq!((added, gone), (vec![2], vec![1]));
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Remove(p("10.244.3.0/26"))]
        );
        let io = s.take_io();
        assert!(
            io.iter().any(|(i, o)| *i == 1
                && matches!(o, Output::Send(_, b)
                if matches!(wire::decode(b, Ctx::default()), Ok(Message::Notification(_))))),
            "{io:?}"
        );
        assert!(io
            .iter()
            .any(|(i, o)| *i == 2 && matches!(o, Output::Connect)));
        assert!(!io.iter().any(|(i, _)| *i == 0), "{io:?}");
        assert_eq!(s.session(0).state(), State::Established);
        assert_eq!(s.session(0).stats.established_count, kept);
        assert_eq!(s.peer_index(ip("10.0.0.3")), None);
        assert_eq!(s.peer_index(ip("10.0.0.4")), Some(2));
        let rows = views::peers(&s, t, &[]);
        let addrs: Vec<Ipv4Addr> = rows.iter().map(|r| r.address).collect();
        assert_eq!(addrs, vec![ip("10.0.0.2"), ip("10.0.0.4")]);
        // The same list again: nothing happens.
        assert_eq!(
            s.set_peers(t, vec![spec("10.0.0.2", 64512), spec("10.0.0.4", 64513)]),
            (vec![], vec![])
        );
        // An edited entry (new hold time) restarts that session only.
        let mut edited = spec("10.0.0.4", 64513);
        edited.session.hold_time = 30;
        assert_eq!(
            s.set_peers(t, vec![spec("10.0.0.2", 64512), edited]),
            (vec![3], vec![2])
        );
        assert_eq!(s.peer_index(ip("10.0.0.4")), Some(3));
        assert_eq!(s.session(0).state(), State::Established);
    }

    /// Saved routes adopted at start: re-announced the same way they
    /// change nothing, announced otherwise they move, and the sweep
    /// removes those nobody announced; refused ones are not adopted.
    #[test]
    fn adopted_routes_stay_until_the_sweep_unless_announced() {
        let t = Instant::now();
        let mut s = speaker();
        let via = |a: &str| Vias::new(&[ip(a)]).unwrap();
        let taken = s.adopt(vec![
            (p("10.244.2.0/26"), via("10.0.0.2")),
            (p("10.244.3.0/26"), via("10.0.0.2")),
            (p("10.244.4.0/26"), via("10.0.0.2")),
            (p("10.244.1.0/26"), via("10.0.0.2")), // our own block: refused
        ]);
        assert_eq!(taken.len(), 3);
        assert_eq!(s.take_kernel_jobs().len(), 3);
        up(&mut s, t, 0, "10.0.0.2");
        up(&mut s, t, 1, "10.0.0.3");
        announce(&mut s, t, 0, "10.0.0.2", 100, &["10.244.2.0/26"]);
        announce(&mut s, t, 1, "10.0.0.3", 100, &["10.244.3.0/26"]);
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Insert(
                p("10.244.3.0/26"),
                NextHop::Node(ip("10.0.0.3"))
            )]
        );
        s.recheck(taken);
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Remove(p("10.244.4.0/26"))]
        );
        assert_eq!(s.installed(), 2);
    }

    /// Every class the import policy refuses, each with its reason; only
    /// another node's block inside the pools reaches the FIB.
    #[test]
    fn import_policy_refuses_what_the_node_owns_and_what_is_outside_the_pools() {
        let t = Instant::now();
        let mut s = speaker();
        up(&mut s, t, 0, "10.0.0.2");
        let cases = [
            ("0.0.0.0/0", "default route"),
            ("169.254.1.1/32", "link-local"),
            ("169.0.0.0/8", "link-local"),
            ("127.0.0.1/32", "loopback"),
            ("224.0.0.0/4", "multicast"),
            ("239.1.2.3/32", "multicast"),
            ("10.0.0.1/32", "this node's addresses"),
            ("10.0.0.2/32", "this node's addresses"),
            ("10.0.0.0/24", "this node's addresses"),
            ("10.0.0.0/25", "this node's addresses"),
            ("10.0.0.0/8", "this node's addresses"),
            ("10.244.1.0/26", "pod_cidrs"),
            ("10.244.1.0/27", "pod_cidrs"),
            ("10.244.1.5/32", "pod_cidrs"),
            ("10.244.0.0/16", "pod_cidrs"),
            ("10.99.0.0/16", "static route"),
            ("10.99.3.0/24", "static route"),
            ("192.168.7.0/24", "import_pools"),
            ("10.245.0.0/24", "import_pools"),
        ];
        let mut all: Vec<&str> = cases.iter().map(|(x, _)| *x).collect();
        all.push("10.244.2.0/26");
        announce(&mut s, t, 0, "10.0.0.2", 100, &all);
        for (prefix, why) in cases {
            let got = s.filtered(&p(prefix));
            assert!(
                got.is_some_and(|g| g.contains(why)),
                "{prefix}: {got:?}, want {why:?}"
            );
        }
        assert_eq!(s.filtered(&p("10.244.2.0/26")), None);
        assert_eq!(
            s.take_fib_changes(),
            vec![FibChange::Insert(
                p("10.244.2.0/26"),
                NextHop::Node(ip("10.0.0.2"))
            )]
        );
        let jobs = s.take_kernel_jobs();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        // Shown and counted: the RIB marks each refused route with its
        // reason, the peer's accepted count leaves them out.
        let rib = views::rib(&s, None, 100);
        let refused = rib.routes.iter().filter(|r| r.filtered.is_some()).count();
        assert_eq!(refused, cases.len());
        let peer = &views::peers(&s, t, &[])[0];
        assert_eq!(peer.prefixes_received, cases.len() + 1);
        assert_eq!(peer.prefixes_accepted, 1);
    }

    /// Without `[bgp] import_pools` the pools are `pod_cidrs` widened to
    /// /16; with it, exactly what the operator declared.
    #[test]
    fn default_import_pools_widen_pod_cidrs() {
        let cfg = crate::config::Config::parse(
            "node_ip = \"10.0.0.1\"\npod_cidrs = [\"10.244.1.0/26\", \"10.244.9.0/24\", \"172.16.0.0/12\"]\n\
             [bgp]\nasn = 64512\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            crate::bgp::import_pools(&cfg),
            vec![p("10.244.0.0/16"), p("172.16.0.0/12")]
        );
        let cfg = crate::config::Config::parse(
            "node_ip = \"10.0.0.1\"\npod_cidrs = [\"10.244.1.0/26\"]\n\
             [bgp]\nasn = 64512\nimport_pools = [\"10.0.0.0/8\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(crate::bgp::import_pools(&cfg), vec![p("10.0.0.0/8")]);
    }
}
