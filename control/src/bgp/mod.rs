//! podrouterd's BGP-4 speaker: it announces this node's pod blocks with the
//! node IP as next hop, learns other nodes' (and upstream routers') blocks,
//! selects best paths (with ECMP across equal paths) and installs them in
//! the FIB.
//!
//! # Layers
//!
//! - [`wire`]: our own codec for the five message types. We chose our own
//!   over `netgauze-bgp-pkt` / `zettabgp` because what we need is small
//!   (IPv4 unicast, a dozen attributes), because RFC 7606 needs the
//!   decoder to report *how* an UPDATE is broken (treat-as-withdraw vs
//!   attribute discard vs session reset), which those crates' error types
//!   do not carry, and to keep the 2-core build lean (netgauze pulls in
//!   nom, serde derives over hundreds of types, strum...). It is tested
//!   with golden bytes both ways, round trips, every error class, a
//!   200,000-case mutation test in the normal suite, and a cargo-fuzz
//!   target (`control/fuzz`).
//! - [`session`]: one neighbour's RFC 4271 state machine as a pure core:
//!   inputs are plain values (connected, bytes, closed, stop), time is
//!   passed in, outputs are values (connect, send, close, route changed);
//!   the byte streams real BIRD 2, GoBGP and FRR sent us in interop
//!   sessions (`testdata/*.hex`, captured with tcpdump) are replayed
//!   through it in unit tests.
//!   Collision detection, hold/keepalive/connect-retry/idle-hold timers
//!   with backoff, capabilities (4-octet AS, MP IPv4 unicast, route
//!   refresh, graceful restart), max-prefix, the Adj-RIB-In.
//! - [`rib`]: best-path selection across peers, ECMP set (installed as one
//!   FIB next-hop group of the set's distinct next hops).
//! - [`speaker`]: the sessions + RIB + import policy + FIB diff, still
//!   without I/O, so whole multi-peer scenarios replay in unit tests.
//! - [`views`]: the API's peer and RIB views, built from the speaker's
//!   read-only accessors.
//! - [`kernel_plan`]: which learned blocks need a node kernel route of
//!   their own (`[bgp] kernel_routes`: every block, or per import pool a
//!   covering route into the host port plus the directly routed blocks).
//! - [`stale`]: the learned-block kernel routes a previous run left
//!   behind, and when they go (our own graceful restart, below).
//! - [`saved`]: the learned routes kept in the state directory for the
//!   next start.
//! - [`driver`]: the only part with sockets and a clock.
//!
//! # Threading: a dedicated BGP thread
//!
//! The speaker runs on its own thread with its own mio loop (listener, one
//! socket per connection, a waker for commands), not inside the control
//! thread's loop. The control thread serves API clients one at a time with
//! blocking I/O and 5 s timeouts, and pod attach does netlink and netns
//! work: either can hold the loop for longer than a short hold time's
//! keepalive interval (1 s with hold 3 s), and a 100,000-route initial
//! table must not make `podrouterctl` or the CNI plugin wait. The thread
//! writes the FIB directly: [`podrouter_router::fib::Fib::update`]
//! serialises writers and publishes each batch atomically, and BGP only
//! ever touches the prefixes it learned (the import policy, see
//! [`speaker`], keeps it inside `import_pools` and off the node's own
//! blocks, pods' /32s, the node's addresses and subnets, the default route
//! and static routes), so the two writers never fight over a prefix. The control
//! thread asks for peer and RIB views over a channel (answer within 2 s).
//! No change to `server.rs` was needed.
//!
//! # What we announce
//!
//! Each `pod_cidrs` block, ORIGIN IGP, NEXT_HOP the node IP; AS_PATH empty
//! and LOCAL_PREF 100 to iBGP peers, AS_PATH [our AS] to eBGP peers. We
//! never re-advertise learned routes (a node is not a transit router, as
//! in Calico's node-to-node mesh), so iBGP needs a full mesh or a route
//! reflector.
//!
//! # Reload: our blocks change at runtime
//!
//! `podrouterctl reload` / SIGHUP (`crate::reload`, `Daemon::reload`)
//! may add and remove `pod_cidrs` blocks. The daemon sets up (or tears
//! down) IPAM, the FIB's Unreachable entry and the kernel route first,
//! then hands the whole new list to the BGP thread
//! ([`BgpHandle::set_local_routes`], answered within 2 s). The speaker
//! re-runs the import filter for learned prefixes overlapping a changed
//! block, and each session diffs its list: on an Established session it
//! sends UPDATEs withdrawing the removed blocks and announcing the added
//! ones (classic IPv4 NLRI and withdrawn-routes fields, with the same
//! attributes as the initial announcement: that is what the session
//! sends for IPv4 unicast whether or not MP IPv4 unicast was negotiated,
//! RFC 4760 allows both, and every peer we test with accepts it); a
//! session not yet Established announces the new list at its next OPEN
//! exchange. No session is reset.
//!
//! Peers change by reload too ([`BgpHandle::set_peers`],
//! [`speaker::Speaker::set_peers`]): an entry not running is started as a
//! new session, a running one missing from the new list is stopped (Cease,
//! its routes leave the RIB and FIB) and retired, an unchanged one is not
//! touched. Peers are indexed by position (mio tokens, the stale sweep's
//! End-of-RIB list), so a removed peer keeps its slot, retired, and an
//! added one takes a new slot at the end. Every other `[bgp]` key is
//! fixed at start (a reload that changes one is refused).
//!
//! # Our own graceful restart (RFC 4724 restarting speaker)
//!
//! - Stop: SIGTERM with `graceful_restart` closes every session without
//!   a NOTIFICATION (helpers keep our blocks for `restart_time`), writes
//!   `state_dir/bgp-restart` with the time, and leaves the FIB and the
//!   learned blocks' kernel routes alone, the pools' covering routes
//!   included (the peers keep our routes; we keep theirs). A non-graceful
//!   stop withdraws both, and then the covering routes.
//! - Start: a marker younger than `restart_time` sets the R bit and the
//!   F bit for IPv4 unicast in our OPEN. Before any session starts,
//!   [`stale::scan`] lists the protocol-77 kernel routes that are not our
//!   own (pods' /32s, our blocks, static `[[routes]]`, the pools'
//!   covering routes of `per-pool`, the default): the
//!   learned blocks of the last run, now stale. They stay while peers
//!   re-send their routes; a block learned again gets its route replaced
//!   in place by the `bgp-kernel` thread (no flap). Once every peer with
//!   graceful restart configured has sent End-of-RIB since our start, or
//!   `restart_time` has passed (the deferral timer of RFC 4724 4.1), the
//!   BGP thread deletes the stale routes whose prefix BGP has not
//!   installed again, by exact identity. Every start does this (also
//!   after a crash, which leaves the same routes); without any GR peer the
//!   sweep happens at once.
//! - What we do not defer: RFC 4724 4.1 has a restarting speaker defer
//!   its route selection and its own UPDATEs and End-of-RIB until the
//!   peers' End-of-RIBs are in. Our Adj-RIB-Out is only our own blocks,
//!   which depend on no learned route, so we send them and our End-of-RIB
//!   as soon as each session is Established (so helpers can drop our
//!   stale routes at once); learned routes are installed as they come,
//!   since each is the peer's current route. The only selection outcome
//!   that must wait for the End-of-RIBs is "this block is gone", and that
//!   is the stale sweep above.
//! - The FIB across the restart: the learned routes BGP installed are
//!   saved in `state_dir/bgp-routes` ([`saved`], a `bgp-save` thread,
//!   at most every 200 ms, and at the stop), and a start puts them back
//!   in the FIB ([`restore_saved`]) before the pods' ports forward their
//!   first packet, so tunnelled traffic to learned blocks resumes with the
//!   data plane instead of waiting for the peers' re-announcements. The
//!   speaker adopts them as installed (a re-announcement the same way
//!   changes nothing); at the same sweep as the stale kernel routes the
//!   ones no peer announced again leave the FIB and the kernel. After a
//!   crash the file is at most 200 ms old (or ten times the last write
//!   of a full table); what it misses comes back from the peers.
pub(crate) mod driver;
pub mod kernel_plan;
pub mod prefix_hash;
pub mod rib;
pub mod saved;
pub mod session;
pub mod speaker;
pub mod stale;
pub mod views;
pub mod wire;

pub use driver::BgpHandle;

/// Puts the learned routes the last run saved ([`saved`]) back in the FIB,
/// those the import policy still accepts, before the first packet; returns
/// them for [`BgpHandle::start`], which has the speaker adopt them. Nothing
/// without a `[bgp]` section.
pub fn restore_saved(
    cfg: &Config,
    fib: &podrouter_router::fib::Fib,
) -> Vec<(Prefix, crate::kernel_job::Vias)> {
    let Some(mut scfg) = speaker_config(cfg, false) else {
        return Vec::new();
    };
    let routes = saved::load(&cfg.state_dir);
    if routes.is_empty() {
        return routes;
    }
    scfg.node_networks = node_networks(scfg.next_hop);
    let total = routes.len();
    let routes: Vec<_> = routes
        .into_iter()
        .filter(|(p, _)| speaker::import_refusal(&scfg, p).is_none())
        .collect();
    let changes: Vec<_> = routes
        .iter()
        .map(|(p, vias)| speaker::fib_change(*p, vias))
        .collect();
    let t = std::time::Instant::now();
    fib.update(&changes);
    log::info!(
        "bgp: {} learned route(s) of the last run restored to the FIB in {:?} ({} refused by          the import policy now); kept until the peers' End-of-RIB",
        routes.len(),
        t.elapsed(),
        total - routes.len()
    );
    routes
}

/// Most RIB rows one API response carries (about 250 bytes each in JSON,
/// well under the API's 1 MiB line limit).
pub const RIB_ROWS_MAX: usize = 3000;

use std::net::Ipv4Addr;
use std::time::Duration;

use podrouter_types::Prefix;

use crate::config::Config;
use session::SessionConfig;
use speaker::{PeerSpec, SpeakerConfig};

/// The speaker configuration for a daemon config with a `[bgp]` section.
/// `restarting` sets the graceful restart R bit (we restarted recently).
pub fn speaker_config(cfg: &Config, restarting: bool) -> Option<SpeakerConfig> {
    let bgp = cfg.bgp.as_ref()?;
    let next_hop = cfg.node_ip?;
    let router_id = bgp.router_id.unwrap_or(next_hop);
    let peers = bgp
        .peers
        .iter()
        .map(|p| PeerSpec {
            session: SessionConfig {
                peer: p.address,
                peer_as: p.asn,
                local_as: bgp.asn,
                router_id,
                next_hop,
                hold_time: p.hold_time.unwrap_or(bgp.hold_time),
                connect_retry: Duration::from_secs(bgp.connect_retry.max(1)),
                passive: p.passive,
                graceful_restart: p.graceful_restart.unwrap_or(bgp.graceful_restart),
                restart_time: bgp.restart_time,
                restarting,
                max_prefixes: p.max_prefixes,
            },
            password: p.password.clone(),
        })
        .collect();
    Some(SpeakerConfig {
        local_as: bgp.asn,
        router_id,
        next_hop,
        peers,
        local_routes: cfg.pod_cidrs.clone(),
        static_routes: cfg.routes.iter().map(|r| r.prefix).collect(),
        import_pools: import_pools(cfg),
        node_networks: next_hop_network(next_hop),
    })
}

/// The prefix length the default import pools widen `pod_cidrs` to.
pub const DEFAULT_POOL_LEN: u8 = 16;

/// The pools learned prefixes must lie in: `[bgp] import_pools` if set,
/// else each `pod_cidrs` block widened to its /16 (kept as is when it is
/// already wider), duplicates removed. Nodes of one cluster are usually
/// given blocks of one pool, e.g. 10.244.N.0/24 out of 10.244.0.0/16.
pub fn import_pools(cfg: &Config) -> Vec<Prefix> {
    if let Some(pools) = cfg.bgp.as_ref().and_then(|b| b.import_pools.clone()) {
        return pools;
    }
    let mut pools: Vec<Prefix> = cfg
        .pod_cidrs
        .iter()
        .map(|c| Prefix::truncating(c.addr(), c.len().min(DEFAULT_POOL_LEN)))
        .collect();
    pools.sort();
    pools.dedup();
    pools
}

fn next_hop_network(node_ip: Ipv4Addr) -> Vec<Prefix> {
    vec![Prefix::host(node_ip)]
}

/// The node's own addresses and the subnets they are on (uplink subnet
/// included), as the kernel has them now: no learned prefix may cover or
/// overlap one. Read once at the BGP thread's start; `node_ip` is always
/// part of it (also when listing fails).
pub fn node_networks(node_ip: Ipv4Addr) -> Vec<Prefix> {
    let mut nets = next_hop_network(node_ip);
    match crate::netlink::Netlink::open().and_then(|mut nl| nl.addrs_v4()) {
        Ok(addrs) => {
            for a in addrs {
                nets.push(Prefix::host(a.ip));
                nets.push(Prefix::truncating(a.ip, a.prefix_len.min(32)));
            }
        }
        Err(e) => log::warn!(
            "bgp: cannot list the node's addresses ({e}); the import policy protects only {node_ip}"
        ),
    }
    nets.sort();
    nets.dedup();
    nets
}

/// Where the speaker listens and connects from.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub listen: std::net::SocketAddrV4,
    /// Source address of our connections (the node IP).
    pub local: Option<Ipv4Addr>,
    /// Remote port per peer (same order as the peers).
    pub peer_ports: Vec<u16>,
}

impl Endpoints {
    pub fn from_config(cfg: &Config) -> Option<Endpoints> {
        let bgp = cfg.bgp.as_ref()?;
        Some(Endpoints {
            listen: std::net::SocketAddrV4::new(
                bgp.listen_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
                bgp.port,
            ),
            local: cfg.node_ip,
            peer_ports: bgp
                .peers
                .iter()
                .map(|p| p.port.unwrap_or(bgp.port))
                .collect(),
        })
    }
}
