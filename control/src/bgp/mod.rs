//! podrouterd's BGP-4 speaker: it announces this node's pod blocks with the
//! node IP as next hop, learns other nodes' (and upstream routers') blocks,
//! selects best paths and installs them in the FIB.
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
//! - [`rib`]: best-path selection across peers, ECMP set.
//! - [`speaker`]: the sessions + RIB + import filter + FIB diff, still
//!   without I/O, so whole multi-peer scenarios replay in unit tests.
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
//! ever touches the prefixes it learned (the import filter keeps it off
//! the node's own blocks, pods' /32s, the default route and static
//! routes), so the two writers never fight over a prefix. The control
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
mod driver;
pub mod rib;
pub mod session;
pub mod speaker;
pub mod stale;
pub mod wire;

pub use driver::BgpHandle;

/// Most RIB rows one API response carries (about 250 bytes each in JSON,
/// well under the API's 1 MiB line limit).
pub const RIB_ROWS_MAX: usize = 3000;

use std::net::Ipv4Addr;
use std::time::Duration;

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
    })
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
