//! One neighbour's BGP finite state machine (RFC 4271 section 8), as a
//! pure core: no sockets, no clock. The driver feeds it [`Input`]s (a TCP
//! connection came up or went down, bytes arrived, the operator said stop)
//! and calls [`Session::on_time`] when [`Session::next_deadline`] passes;
//! the session answers with [`Output`]s (open a connection, send these
//! bytes, close that connection, this route changed). Tests drive it with
//! hand-made or recorded byte sequences and a fake clock.
//!
//! # Connections and collisions
//!
//! A session holds at most two TCP connections to its peer at once: the
//! one we opened ([`ConnId::Outbound`]) and one the peer opened
//! ([`ConnId::Inbound`]). Each runs OpenSent -> OpenConfirm ->
//! Established on its own. When an OPEN arrives while the other connection
//! is in OpenSent or OpenConfirm, collision detection (RFC 4271 6.8) keeps
//! the connection opened by the speaker with the higher BGP identifier and
//! closes the other with Cease / connection collision resolution. A new
//! inbound connection while Established is refused with the same Cease,
//! unless the peer negotiated graceful restart: then it is the peer coming
//! back after a restart (RFC 4724 4.2), and the old connection is dropped
//! as a restart: at once if the session ran on an inbound connection too,
//! else when the new connection's OPEN arrives (until then it may be the
//! late half of a connect collision that the peer closes unused, e.g. a
//! SYN retransmitted after TCP MD5 dropped a reset). Our own connect still
//! in progress when a session comes up on the peer's connection is
//! cancelled, so that it never reaches the peer as such a second connection.
//!
//! # States reported
//!
//! Idle (stopped, or waiting out the idle-hold backoff), Connect (our TCP
//! connect is in progress), Active (waiting for the peer or for the next
//! connect retry), then the most advanced connection's state.
//!
//! # Timers
//!
//! - connect retry (configured, default 5 s): a new outbound attempt while
//!   no connection got anywhere.
//! - idle hold: after a session fails, no outbound attempt for
//!   1, 2, 4 ... 60 s (doubling with consecutive failures, reset once a
//!   session has stayed Established for 60 s); 60 s after a max-prefix
//!   Cease. Inbound connections from the peer are accepted meanwhile, so a
//!   restarted peer does not wait for our backoff.
//! - hold (negotiated, min of both sides, 0 = none; 240 s before OPEN) and
//!   keepalive (a third of hold).
//! - graceful restart: the peer's restart time while it is away, then our
//!   bound on waiting for its End-of-RIB.
//!
//! # Routes
//!
//! The session keeps the peer's Adj-RIB-In (prefix -> [`Path`]), applies
//! RFC 7606 (treat-as-withdraw, attribute discard) and the per-session
//! checks (AS loop, iBGP originator loop, next hop sanity, LOCAL_PREF only
//! from iBGP), counts prefixes against `max_prefixes`, and reports every
//! change of the Adj-RIB-In as [`RouteEvent`]s. Best-path selection across
//! peers is the [`super::rib`]'s.
//!
//! # Graceful restart (RFC 4724)
//!
//! Helper: when an Established session whose peer announced graceful
//! restart for IPv4 unicast ends without a NOTIFICATION (TCP closed or
//! reset, our hold timer expired, or the peer reconnected), its routes stay
//! (marked stale) for the peer's restart time. If the peer comes back with
//! the F bit set, stale routes are replaced by what it re-announces and
//! the rest are swept at its End-of-RIB (or after our `restart_time`
//! bound); otherwise they go at once. Speaker: we announce the capability
//! with the R bit after our own restart, and the driver closes sessions
//! without a NOTIFICATION on a graceful stop so helpers keep our routes.
//! The session records whether the peer has sent End-of-RIB since it was
//! last Established ([`Session::eor_received`]), which the driver's stale
//! kernel route sweep waits for (see `super` for the whole restart).
//!
//! # Our own routes
//!
//! Announced with End-of-RIB when a connection reaches Established and on
//! a route refresh; [`Session::set_local_routes`] (a config reload) sends
//! the difference on an Established session at once: withdrawn routes
//! for the blocks removed, NLRI for the blocks added.
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podrouter_types::Prefix;

use super::prefix_hash::PrefixMap;
use super::wire::{
    self, err, Capability, Ctx, GracefulRestart, Message, Notification, Open, Origin, PathAttrs,
    Segment, Update, AFI_IPV4, AS_TRANS, SAFI_UNICAST, SEG_AS_SEQUENCE,
};

/// Hold time before an OPEN is received (RFC 4271 suggests 4 minutes).
pub const OPEN_HOLD: Duration = Duration::from_secs(240);
/// Idle-hold backoff bounds.
pub const IDLE_HOLD_MIN: Duration = Duration::from_secs(1);
pub const IDLE_HOLD_MAX: Duration = Duration::from_secs(60);
/// A session up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Default LOCAL_PREF for paths that carry none (eBGP).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Everything a session needs to know about its peer and about us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub peer: Ipv4Addr,
    pub peer_as: u32,
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Next hop of our announcements (the node IP).
    pub next_hop: Ipv4Addr,
    /// Hold time we propose (0 or >= 3).
    pub hold_time: u16,
    pub connect_retry: Duration,
    /// Never connect; wait for the peer.
    pub passive: bool,
    pub graceful_restart: bool,
    /// Restart time we announce, and our bound on stale routes after the
    /// peer is back.
    pub restart_time: u16,
    /// We restarted recently: set the R bit and the F bit.
    pub restarting: bool,
    pub max_prefixes: Option<u32>,
}

impl SessionConfig {
    pub fn ibgp(&self) -> bool {
        self.peer_as == self.local_as
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnId {
    Outbound,
    Inbound,
}

/// The FSM states of RFC 4271.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Operator start (also at daemon start).
    Start,
    /// Operator stop: Cease with this message; `graceful` closes without a
    /// NOTIFICATION so a graceful-restart helper keeps our routes.
    Stop { reason: String, graceful: bool },
    /// A TCP connection is up: our connect finished, or the peer's was
    /// accepted.
    Connected(ConnId),
    /// Our connect attempt failed.
    ConnectFailed(String),
    /// The peer closed or reset the connection, or a socket error.
    Closed(ConnId, String),
    /// Bytes read from a connection.
    Data(ConnId, &'a [u8]),
    /// Ask the peer to send its routes again (RFC 2918).
    SendRouteRefresh,
}

/// A route received from a peer, as the RIB sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub peer: Ipv4Addr,
    pub peer_router_id: Ipv4Addr,
    pub ebgp: bool,
    pub next_hop: Ipv4Addr,
    pub local_pref: u32,
    pub attrs: Arc<PathAttrs>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    Upsert(Prefix, Arc<Path>),
    Remove(Prefix),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the peer (replacing an attempt in
    /// progress, if any).
    Connect,
    /// Abandon the connect attempt in progress.
    CancelConnect,
    Send(ConnId, Vec<u8>),
    /// Close this connection once what was sent is flushed.
    Close(ConnId),
    Route(RouteEvent),
    State(State),
}

/// Negotiated on an OPEN exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub hold_time: u16,
    pub keepalive: u16,
    pub ctx: Ctx,
    pub route_refresh: bool,
    pub peer_router_id: Ipv4Addr,
    pub peer_gr: Option<GracefulRestart>,
    /// Both sides announced graceful restart.
    pub gr: bool,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    state: State,
    buf: Vec<u8>,
    hold_deadline: Option<Instant>,
    keepalive_deadline: Option<Instant>,
    neg: Option<Negotiated>,
}

#[derive(Clone, Debug)]
struct AdjEntry {
    path: Arc<Path>,
    stale: bool,
}

/// Counters and facts for `podrouterctl bgp peers`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    pub treat_as_withdraw: u64,
    pub established_count: u64,
    pub last_error: Option<String>,
}

pub struct Session {
    pub cfg: SessionConfig,
    admin_up: bool,
    connecting: bool,
    connect_retry_at: Option<Instant>,
    idle_until: Option<Instant>,
    failures: u32,
    conns: Vec<Conn>,
    established_at: Option<Instant>,
    state_since: Instant,
    last_state: State,
    adj_in: PrefixMap<AdjEntry>,
    stale_count: usize,
    /// Helper mode: when stale routes go if nothing replaces them.
    stale_deadline: Option<Instant>,
    /// Negotiation of the last Established session (kept while down, for
    /// graceful restart and display).
    last_neg: Option<Negotiated>,
    local_routes: Vec<Prefix>,
    /// The peer sent End-of-RIB on the current (or last) Established
    /// session; cleared when a session is established.
    eor_received: bool,
    pub stats: Stats,
    out: Vec<Output>,
}

impl Session {
    pub fn new(cfg: SessionConfig, local_routes: Vec<Prefix>, now: Instant) -> Session {
        Session {
            cfg,
            admin_up: false,
            connecting: false,
            connect_retry_at: None,
            idle_until: None,
            failures: 0,
            conns: Vec::new(),
            established_at: None,
            state_since: now,
            last_state: State::Idle,
            adj_in: PrefixMap::default(),
            stale_count: 0,
            stale_deadline: None,
            last_neg: None,
            local_routes,
            eor_received: false,
            stats: Stats::default(),
            out: Vec::new(),
        }
    }

    /// Our own blocks, as announced to the peer.
    pub fn local_routes(&self) -> &[Prefix] {
        &self.local_routes
    }

    /// Whether the peer has sent End-of-RIB for IPv4 unicast since the
    /// session last reached Established.
    pub fn eor_received(&self) -> bool {
        self.eor_received
    }

    /// Replaces our own blocks (a configuration reload). On an Established
    /// session the difference goes out at once: one or more UPDATEs
    /// withdrawing the removed blocks, then UPDATEs announcing the added
    /// ones with the same attributes as the initial announcement. A
    /// session that is not Established just remembers them for its next
    /// OPEN exchange. Order and duplicates in `routes` do not matter.
    pub fn set_local_routes(&mut self, now: Instant, routes: Vec<Prefix>) -> Vec<Output> {
        let mut routes = routes;
        routes.sort();
        routes.dedup();
        let removed: Vec<Prefix> = self
            .local_routes
            .iter()
            .filter(|p| !routes.contains(p))
            .copied()
            .collect();
        let added: Vec<Prefix> = routes
            .iter()
            .filter(|p| !self.local_routes.contains(p))
            .copied()
            .collect();
        self.local_routes = routes;
        if removed.is_empty() && added.is_empty() {
            return self.finish(now);
        }
        let est: Option<(ConnId, Ctx)> = self
            .conns
            .iter()
            .find(|c| c.state == State::Established)
            .map(|c| (c.id, c.neg.as_ref().map(|n| n.ctx).unwrap_or_default()));
        if let Some((id, ctx)) = est {
            let attrs = self.our_attrs();
            let msgs = wire::encode_updates(&removed, Some(&attrs), &added, ctx);
            for m in msgs {
                self.stats.updates_out += 1;
                self.send(id, m);
            }
            log::info!(
                "bgp {}: announced {} new and withdrew {} of our blocks",
                self.cfg.peer,
                added.len(),
                removed.len()
            );
        }
        self.finish(now)
    }

    pub fn state(&self) -> State {
        if let Some(s) = self.conns.iter().map(|c| c.state).max() {
            return s;
        }
        if !self.admin_up || self.idle_until.is_some() {
            State::Idle
        } else if self.connecting {
            State::Connect
        } else {
            State::Active
        }
    }

    /// When the current session reached Established (None while it is
    /// not).
    pub fn established_at(&self) -> Option<Instant> {
        self.established_at
    }

    /// When the state last changed.
    pub fn state_since(&self) -> Instant {
        self.state_since
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.conns
            .iter()
            .find(|c| c.state == State::Established)
            .and_then(|c| c.neg.as_ref())
            .or(self.last_neg.as_ref())
    }

    pub fn prefixes(&self) -> usize {
        self.adj_in.len()
    }

    pub fn stale_prefixes(&self) -> usize {
        self.stale_count
    }

    pub fn adj_in(&self) -> impl Iterator<Item = (&Prefix, &Arc<Path>, bool)> {
        self.adj_in.iter().map(|(p, e)| (p, &e.path, e.stale))
    }

    pub fn is_stale(&self, p: &Prefix) -> bool {
        self.adj_in.get(p).is_some_and(|e| e.stale)
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, now: Instant, input: Input<'_>) -> Vec<Output> {
        match input {
            Input::Start => {
                if !self.admin_up {
                    self.admin_up = true;
                    self.idle_until = Some(now);
                }
            }
            Input::Stop { reason, graceful } => self.stop(now, &reason, graceful),
            Input::Connected(id) => self.connected(now, id),
            Input::ConnectFailed(why) => {
                if self.connecting {
                    self.connecting = false;
                    log::debug!("bgp {}: connect failed: {why}", self.cfg.peer);
                    if self.stats.last_error.is_none() {
                        self.stats.last_error = Some(format!("connect: {why}"));
                    }
                }
            }
            Input::Closed(id, why) => {
                if self.conn(id).is_some() {
                    let gr = self.conn_state(id) == State::Established;
                    self.drop_conn(now, id, false, format!("connection closed: {why}"), gr);
                }
            }
            Input::Data(id, bytes) => self.data(now, id, bytes),
            Input::SendRouteRefresh => {
                if let Some(c) = self.conns.iter().find(|c| c.state == State::Established) {
                    if c.neg.as_ref().is_some_and(|n| n.route_refresh) {
                        let id = c.id;
                        self.send(id, wire::encode_route_refresh(AFI_IPV4, SAFI_UNICAST));
                    }
                }
            }
        }
        self.on_time(now);
        self.finish(now)
    }

    /// Fires whatever timers have expired at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Output> {
        self.on_time(now);
        self.finish(now)
    }

    fn finish(&mut self, now: Instant) -> Vec<Output> {
        let s = self.state();
        if s != self.last_state {
            log::info!(
                "bgp {} (AS {}): {} -> {}",
                self.cfg.peer,
                self.cfg.peer_as,
                self.last_state.name(),
                s.name()
            );
            self.last_state = s;
            self.state_since = now;
            self.out.push(Output::State(s));
        }
        std::mem::take(&mut self.out)
    }

    /// The earliest instant at which [`Session::poll`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut add = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |d| d.min(t)));
            }
        };
        if self.admin_up {
            add(self.idle_until);
            if !self.cfg.passive && self.conns.is_empty() {
                add(self.connect_retry_at);
            }
        }
        add(self.stale_deadline);
        for c in &self.conns {
            add(c.hold_deadline);
            add(c.keepalive_deadline);
        }
        d
    }

    fn on_time(&mut self, now: Instant) {
        if self.stale_deadline.is_some_and(|t| t <= now) {
            log::info!(
                "bgp {}: graceful restart timer expired; removing {} stale routes",
                self.cfg.peer,
                self.stale_count
            );
            self.sweep_stale();
        }
        if !self.admin_up {
            return;
        }
        if self.idle_until.is_some_and(|t| t <= now) {
            self.idle_until = None;
            if !self.cfg.passive && self.conns.is_empty() {
                self.start_connect(now);
            }
        }
        if !self.cfg.passive
            && self.idle_until.is_none()
            && self.conns.is_empty()
            && self.connect_retry_at.is_some_and(|t| t <= now)
        {
            self.start_connect(now);
        }
        let mut expired = Vec::new();
        for c in &mut self.conns {
            if c.hold_deadline.is_some_and(|t| t <= now) {
                expired.push(c.id);
            } else if c.keepalive_deadline.is_some_and(|t| t <= now) {
                let k = c.neg.as_ref().map_or(0, |n| n.keepalive);
                c.keepalive_deadline = (k > 0).then(|| now + Duration::from_secs(k.into()));
                self.out.push(Output::Send(c.id, wire::encode_keepalive()));
                self.stats.messages_out += 1;
            }
        }
        for id in expired {
            let gr = self.conn_state(id) == State::Established;
            self.notify_and_drop(now, id, Notification::new(err::HOLD_TIMER, 0, []), gr);
        }
    }

    fn start_connect(&mut self, now: Instant) {
        self.connecting = true;
        self.connect_retry_at = Some(now + self.cfg.connect_retry);
        self.out.push(Output::Connect);
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.iter().find(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn conn_state(&self, id: ConnId) -> State {
        self.conn(id).map_or(State::Idle, |c| c.state)
    }

    fn send(&mut self, id: ConnId, bytes: Vec<u8>) {
        self.stats.messages_out += 1;
        self.out.push(Output::Send(id, bytes));
    }

    fn stop(&mut self, now: Instant, reason: &str, graceful: bool) {
        self.admin_up = false;
        self.idle_until = None;
        self.connect_retry_at = None;
        if self.connecting {
            self.connecting = false;
            self.out.push(Output::CancelConnect);
        }
        let ids: Vec<ConnId> = self.conns.iter().map(|c| c.id).collect();
        for id in ids {
            if graceful {
                self.drop_conn(now, id, true, "graceful stop".into(), false);
            } else {
                let n = Notification::cease(err::CEASE_ADMIN_SHUTDOWN, reason);
                self.notify_and_drop(now, id, n, false);
            }
        }
        self.sweep_stale();
        self.remove_all();
    }

    fn connected(&mut self, now: Instant, id: ConnId) {
        if id == ConnId::Outbound {
            if !self.connecting {
                // A connect we no longer want (stopped, or superseded).
                self.out.push(Output::Close(id));
                return;
            }
            self.connecting = false;
        }
        if !self.admin_up {
            let n = Notification::cease(err::CEASE_CONNECTION_REJECTED, "");
            self.send(id, wire::encode_notification(&n));
            self.out.push(Output::Close(id));
            return;
        }
        if let Some(est) = self.conns.iter().find(|c| c.state == State::Established) {
            let est_id = est.id;
            let gr = est.neg.as_ref().is_some_and(|n| n.gr);
            if gr && id == ConnId::Inbound && est_id == ConnId::Inbound {
                // RFC 4724 4.2: the peer restarted and came back on the
                // kind of connection the session used; the old one is gone.
                self.drop_conn(now, est_id, true, "peer reconnected (restart)".into(), true);
            } else if gr && id == ConnId::Inbound {
                // The session runs on our connection: this may be the peer
                // restarting, or only its own late connect of a collision
                // (e.g. a SYN retransmitted after TCP MD5 dropped a reset)
                // that it will close unused. Its OPEN decides (`open`).
            } else {
                let n = Notification::cease(err::CEASE_COLLISION, "");
                self.send(id, wire::encode_notification(&n));
                self.out.push(Output::Close(id));
                return;
            }
        }
        if self.conn(id).is_some() {
            // The peer opened a second connection of the same kind: the
            // old one is dead to it.
            self.drop_conn(now, id, true, "replaced by a new connection".into(), false);
        }
        self.conns.push(Conn {
            id,
            state: State::OpenSent,
            buf: Vec::new(),
            hold_deadline: Some(now + OPEN_HOLD),
            keepalive_deadline: None,
            neg: None,
        });
        let open = self.our_open();
        self.send(id, wire::encode_open(&open));
    }

    fn our_open(&self) -> Open {
        let c = &self.cfg;
        let mut caps = vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::RouteRefresh,
            Capability::FourOctetAs(c.local_as),
        ];
        if c.graceful_restart {
            caps.push(Capability::GracefulRestart(GracefulRestart {
                restarting: c.restarting,
                restart_time: c.restart_time.min(4095),
                families: vec![(AFI_IPV4, SAFI_UNICAST, c.restarting)],
            }));
        }
        Open {
            version: 4,
            my_as: u16::try_from(c.local_as).unwrap_or(AS_TRANS),
            hold_time: c.hold_time,
            router_id: c.router_id,
            caps,
            other_params: Vec::new(),
        }
    }

    fn data(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        let Some(c) = self.conn_mut(id) else { return };
        c.buf.extend_from_slice(bytes);
        let mut buf = std::mem::take(&mut c.buf);
        let mut off = 0;
        loop {
            let ctx = self
                .conn(id)
                .and_then(|c| c.neg.as_ref().map(|n| n.ctx))
                .unwrap_or_default();
            let msg = match wire::frame(&buf[off..]) {
                Ok(Some(len)) => {
                    let m = wire::decode(&buf[off..off + len], ctx);
                    off += len;
                    m
                }
                Ok(None) => break,
                Err(n) => Err(n),
            };
            self.stats.messages_in += 1;
            let keep_going = match msg {
                Ok(m) => self.message(now, id, m),
                Err(n) => {
                    log::warn!("bgp {}: bad message from peer: {n}", self.cfg.peer);
                    let gr = false;
                    self.notify_and_drop(now, id, n, gr);
                    false
                }
            };
            if !keep_going || self.conn(id).is_none() {
                return;
            }
        }
        buf.drain(..off);
        if let Some(c) = self.conn_mut(id) {
            c.buf = buf;
        }
    }

    /// Handles one message; false once the connection is gone.
    fn message(&mut self, now: Instant, id: ConnId, m: Message) -> bool {
        let state = self.conn_state(id);
        if let Message::Notification(n) = &m {
            log::warn!("bgp {}: peer sent NOTIFICATION: {n}", self.cfg.peer);
            self.drop_conn(now, id, false, format!("received: {n}"), false);
            return false;
        }
        // Any message shows the peer is alive.
        if let Some(c) = self.conn_mut(id) {
            if let Some(n) = &c.neg {
                c.hold_deadline =
                    (n.hold_time > 0).then(|| now + Duration::from_secs(n.hold_time.into()));
            }
        }
        match (state, m) {
            (State::OpenSent, Message::Open(o)) => self.open(now, id, o),
            (State::OpenConfirm, Message::Keepalive) => {
                self.established(now, id);
                true
            }
            (State::Established, Message::Keepalive) => true,
            (State::Established, Message::Update(u)) => {
                self.stats.updates_in += 1;
                self.update(now, id, *u)
            }
            (State::Established, Message::RouteRefresh { afi, safi }) => {
                if (afi, safi) == (AFI_IPV4, SAFI_UNICAST) {
                    log::info!("bgp {}: route refresh requested", self.cfg.peer);
                    self.announce(id);
                }
                true
            }
            (s, other) => {
                let sub = match s {
                    State::OpenSent => err::FSM_OPENSENT,
                    State::OpenConfirm => err::FSM_OPENCONFIRM,
                    _ => err::FSM_ESTABLISHED,
                };
                log::warn!(
                    "bgp {}: unexpected {} in {}",
                    self.cfg.peer,
                    msg_name(&other),
                    s.name()
                );
                self.notify_and_drop(now, id, Notification::new(err::FSM, sub, []), false);
                false
            }
        }
    }

    fn open(&mut self, now: Instant, id: ConnId, o: Open) -> bool {
        let c = self.cfg.clone();
        let refuse = |n: Notification| Some(n);
        let problem = if o.version != 4 {
            refuse(Notification::new(err::OPEN, err::OPEN_VERSION, [0, 4]))
        } else if o.asn() != c.peer_as {
            refuse(Notification::new(
                err::OPEN,
                err::OPEN_BAD_PEER_AS,
                o.my_as.to_be_bytes(),
            ))
        } else if o.hold_time == 1 || o.hold_time == 2 {
            refuse(Notification::new(err::OPEN, err::OPEN_HOLD_TIME, []))
        } else if o.router_id.is_unspecified()
            || o.router_id.is_broadcast()
            || (c.ibgp() && o.router_id == c.router_id)
        {
            refuse(Notification::new(
                err::OPEN,
                err::OPEN_BAD_ID,
                o.router_id.octets(),
            ))
        } else if let Some((ty, v)) = o.other_params.first() {
            let mut d = vec![*ty, v.len().min(255) as u8];
            d.extend_from_slice(&v[..v.len().min(255)]);
            refuse(Notification::new(err::OPEN, err::OPEN_UNSUPPORTED_PARAM, d))
        } else if !o.ipv4_unicast() {
            refuse(Notification::new(
                err::OPEN,
                err::OPEN_UNSUPPORTED_CAP,
                [1, 4, 0, 1, 0, 1],
            ))
        } else {
            None
        };
        if let Some(n) = problem {
            log::warn!("bgp {}: refusing OPEN: {n}", c.peer);
            self.notify_and_drop(now, id, n, false);
            return false;
        }
        // Collision detection (RFC 4271 6.8).
        let other = match id {
            ConnId::Outbound => ConnId::Inbound,
            ConnId::Inbound => ConnId::Outbound,
        };
        match self.conn_state(other) {
            State::OpenSent | State::OpenConfirm => {
                let local_wins = u32::from(c.router_id) > u32::from(o.router_id);
                // Keep the connection opened by the higher identifier.
                let loser = if local_wins {
                    ConnId::Inbound
                } else {
                    ConnId::Outbound
                };
                log::info!(
                    "bgp {}: connection collision; closing the {:?} connection",
                    c.peer,
                    loser
                );
                let n = Notification::new(err::CEASE, err::CEASE_COLLISION, []);
                self.notify_and_drop(now, loser, n, false);
                if loser == id {
                    return false;
                }
            }
            State::Established
                if id == ConnId::Inbound
                    && self
                        .conn(other)
                        .and_then(|e| e.neg.as_ref())
                        .is_some_and(|n| n.gr) =>
            {
                // RFC 4724 4.2: an OPEN on a new connection from a peer
                // with graceful restart: it restarted; the old session is
                // gone, its routes turn stale.
                self.drop_conn(now, other, true, "peer reconnected (restart)".into(), true);
            }
            State::Established => {
                let n = Notification::new(err::CEASE, err::CEASE_COLLISION, []);
                self.notify_and_drop(now, id, n, false);
                return false;
            }
            _ => {}
        }
        let hold = c.hold_time.min(o.hold_time);
        let keepalive = hold / 3;
        let peer_gr = o.graceful_restart().cloned();
        let neg = Negotiated {
            hold_time: hold,
            keepalive,
            ctx: Ctx {
                four_octet_as: o.four_octet_as(),
            },
            route_refresh: o.route_refresh(),
            peer_router_id: o.router_id,
            gr: c.graceful_restart && peer_gr.is_some(),
            peer_gr,
        };
        let conn = self.conn_mut(id).expect("checked by caller");
        conn.state = State::OpenConfirm;
        conn.hold_deadline = (hold > 0).then(|| now + Duration::from_secs(hold.into()));
        conn.keepalive_deadline =
            (keepalive > 0).then(|| now + Duration::from_secs(keepalive.into()));
        conn.neg = Some(neg);
        self.send(id, wire::encode_keepalive());
        true
    }

    fn established(&mut self, now: Instant, id: ConnId) {
        let conn = self.conn_mut(id).expect("caller checked");
        conn.state = State::Established;
        let neg = conn.neg.clone().expect("set in OpenConfirm");
        if self.connecting {
            // The session runs on the peer's connection: abandon our own
            // connect still in progress. Left alone, it may complete later
            // (with TCP MD5 the peer's unsigned reset to an early SYN is
            // dropped, so the kernel retransmits the SYN until the peer
            // listens), and a graceful-restart peer such as BIRD takes a
            // new connection on an Established session for our restart
            // and drops the session.
            self.connecting = false;
            self.out.push(Output::CancelConnect);
        }
        self.established_at = Some(now);
        self.eor_received = false;
        self.stats.established_count += 1;
        self.stats.last_error = None;
        // Graceful restart: what happens to routes kept from before.
        if self.stale_count > 0 {
            let keep = neg.gr
                && neg
                    .peer_gr
                    .as_ref()
                    .and_then(|g| g.ipv4_forwarding())
                    .unwrap_or(false);
            if keep {
                self.stale_deadline =
                    Some(now + Duration::from_secs(self.cfg.restart_time.max(1).into()));
            } else {
                log::info!(
                    "bgp {}: peer did not preserve forwarding state; dropping {} stale routes",
                    self.cfg.peer,
                    self.stale_count
                );
                self.sweep_stale();
            }
        }
        self.last_neg = Some(neg);
        log::info!(
            "bgp {}: session established (hold {} s)",
            self.cfg.peer,
            self.last_neg.as_ref().map_or(0, |n| n.hold_time)
        );
        self.announce(id);
    }

    /// Sends our routes, then End-of-RIB.
    fn announce(&mut self, id: ConnId) {
        let ctx = self
            .conn(id)
            .and_then(|c| c.neg.as_ref())
            .map(|n| n.ctx)
            .unwrap_or_default();
        let attrs = self.our_attrs();
        let msgs = wire::encode_updates(&[], Some(&attrs), &self.local_routes, ctx);
        for m in msgs {
            self.stats.updates_out += 1;
            self.send(id, m);
        }
        self.send(id, wire::encode_end_of_rib());
    }

    /// The attributes of our own blocks: ORIGIN IGP, NEXT_HOP the node IP;
    /// to iBGP peers an empty AS_PATH and LOCAL_PREF 100, to eBGP peers
    /// AS_PATH [our AS].
    fn our_attrs(&self) -> PathAttrs {
        let c = &self.cfg;
        PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(if c.ibgp() {
                Vec::new()
            } else {
                vec![Segment {
                    kind: SEG_AS_SEQUENCE,
                    asns: vec![c.local_as],
                }]
            }),
            next_hop: Some(c.next_hop),
            local_pref: c.ibgp().then_some(DEFAULT_LOCAL_PREF),
            ..Default::default()
        }
    }

    fn update(&mut self, now: Instant, id: ConnId, u: Update) -> bool {
        let peer = self.cfg.peer;
        if u.is_end_of_rib() {
            self.eor_received = true;
            if self.stale_count > 0 {
                log::info!(
                    "bgp {peer}: End-of-RIB; removing {} stale routes",
                    self.stale_count
                );
                self.sweep_stale();
            }
            return true;
        }
        if !u.discarded.is_empty() {
            log::debug!(
                "bgp {peer}: discarded malformed attributes {:?}",
                u.discarded
            );
        }
        for p in u.withdrawn_all() {
            self.remove(*p);
        }
        let Some(attrs) = u.attrs.as_ref() else {
            return true;
        };
        let neg = self
            .conn(id)
            .and_then(|c| c.neg.clone())
            .expect("established");
        let mut why = u.treat_as_withdraw.clone();
        let c = self.cfg.clone();
        if why.is_none() {
            if !c.ibgp() && attrs.contains_as(c.local_as) {
                why = Some(format!("AS path {} contains our AS", attrs.as_path_text()));
            } else if c.ibgp() && attrs.originator_id == Some(c.router_id) {
                why = Some("ORIGINATOR_ID is our router id".into());
            } else if c.ibgp() && attrs.cluster_list.contains(&c.router_id) {
                why = Some("CLUSTER_LIST holds our router id".into());
            }
        }
        let mut attrs = attrs.clone();
        if !c.ibgp() {
            // RFC 7606 7.5, 7.9, 7.10: these mean nothing from outside.
            attrs.local_pref = None;
            attrs.originator_id = None;
            attrs.cluster_list.clear();
        }
        let local_pref = attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
        let attrs = Arc::new(attrs);
        let groups = [
            (attrs.next_hop, &u.nlri[..]),
            (
                u.mp_reach.as_ref().map(|m| m.next_hop),
                u.mp_reach.as_ref().map_or(&[][..], |m| &m.nlri[..]),
            ),
        ];
        for (nh, prefixes) in groups {
            if prefixes.is_empty() {
                continue;
            }
            let mut reason = why.clone();
            if reason.is_none() {
                reason = match nh {
                    None => Some("no next hop".into()),
                    Some(nh) if !valid_next_hop(nh) => Some(format!("invalid next hop {nh}")),
                    Some(nh) if nh == c.next_hop => Some(format!("next hop {nh} is this node")),
                    _ => None,
                };
            }
            if let Some(r) = reason {
                self.stats.treat_as_withdraw += 1;
                log::warn!(
                    "bgp {peer}: treating {} prefixes as withdrawn: {r}",
                    prefixes.len()
                );
                for p in prefixes {
                    self.remove(*p);
                }
                continue;
            }
            let path = Arc::new(Path {
                peer,
                peer_router_id: neg.peer_router_id,
                ebgp: !c.ibgp(),
                next_hop: nh.expect("checked"),
                local_pref,
                attrs: attrs.clone(),
            });
            for p in prefixes {
                let prev = self.adj_in.insert(
                    *p,
                    AdjEntry {
                        path: path.clone(),
                        stale: false,
                    },
                );
                if prev.as_ref().is_some_and(|e| e.stale) {
                    self.stale_count -= 1;
                }
                let unchanged = prev.is_some_and(|e| e.path == path);
                if !unchanged {
                    self.out
                        .push(Output::Route(RouteEvent::Upsert(*p, path.clone())));
                }
            }
            if let Some(max) = self.cfg.max_prefixes {
                if self.adj_in.len() > max as usize {
                    log::warn!(
                        "bgp {peer}: {} prefixes exceed max_prefixes {max}; closing",
                        self.adj_in.len()
                    );
                    let mut data = vec![0, 1, 1];
                    data.extend_from_slice(&max.to_be_bytes());
                    let n = Notification::new(err::CEASE, err::CEASE_MAX_PREFIXES, data);
                    self.notify_and_drop(now, id, n, false);
                    self.idle_until = Some(now + IDLE_HOLD_MAX);
                    return false;
                }
            }
        }
        true
    }

    fn remove(&mut self, p: Prefix) {
        if let Some(e) = self.adj_in.remove(&p) {
            if e.stale {
                self.stale_count -= 1;
            }
            self.out.push(Output::Route(RouteEvent::Remove(p)));
        }
    }

    fn remove_all(&mut self) {
        for (p, _) in self.adj_in.drain() {
            self.out.push(Output::Route(RouteEvent::Remove(p)));
        }
        self.stale_count = 0;
        self.stale_deadline = None;
    }

    fn sweep_stale(&mut self) {
        if self.stale_count > 0 {
            let gone: Vec<Prefix> = self
                .adj_in
                .iter()
                .filter(|(_, e)| e.stale)
                .map(|(p, _)| *p)
                .collect();
            for p in gone {
                self.remove(p);
            }
        }
        self.stale_count = 0;
        self.stale_deadline = None;
    }

    fn notify_and_drop(&mut self, now: Instant, id: ConnId, n: Notification, gr: bool) {
        log::warn!("bgp {}: sending NOTIFICATION: {n}", self.cfg.peer);
        self.send(id, wire::encode_notification(&n));
        self.drop_conn(now, id, true, format!("sent: {n}"), gr);
    }

    /// Ends one connection. If it carried the Established session, the
    /// session is down: routes go, or stay stale for graceful restart.
    fn drop_conn(&mut self, now: Instant, id: ConnId, close: bool, why: String, gr: bool) {
        let Some(i) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let conn = self.conns.remove(i);
        if close {
            self.out.push(Output::Close(id));
        }
        if conn.state != State::Established {
            if conn.state == State::OpenConfirm || conn.state == State::OpenSent {
                self.stats.last_error = Some(why);
            }
            if self.conns.is_empty() && self.admin_up {
                self.backoff(now, false);
            }
            return;
        }
        log::warn!("bgp {}: session down: {why}", self.cfg.peer);
        self.stats.last_error = Some(why);
        let neg = conn.neg.expect("established");
        let helper = gr
            && neg.gr
            && neg
                .peer_gr
                .as_ref()
                .is_some_and(|g| g.ipv4_forwarding().is_some());
        if helper && !self.adj_in.is_empty() {
            let restart = neg.peer_gr.as_ref().map_or(0, |g| g.restart_time);
            for e in self.adj_in.values_mut() {
                e.stale = true;
            }
            self.stale_count = self.adj_in.len();
            self.stale_deadline = Some(now + Duration::from_secs(restart.into()));
            log::info!(
                "bgp {}: graceful restart helper: keeping {} routes for {} s",
                self.cfg.peer,
                self.stale_count,
                restart
            );
        } else {
            self.remove_all();
        }
        let stable = self
            .established_at
            .is_some_and(|t| now.duration_since(t) >= STABLE_AFTER);
        self.established_at = None;
        if self.admin_up {
            self.backoff(now, stable || helper);
        }
    }

    fn backoff(&mut self, now: Instant, reset: bool) {
        if reset {
            self.failures = 0;
        }
        let wait = IDLE_HOLD_MIN
            .saturating_mul(1 << self.failures.min(6))
            .min(IDLE_HOLD_MAX);
        self.failures = self.failures.saturating_add(1);
        self.idle_until = Some(now + wait);
        self.connect_retry_at = None;
    }
}

fn valid_next_hop(nh: Ipv4Addr) -> bool {
    !(nh.is_unspecified()
        || nh.is_broadcast()
        || nh.is_multicast()
        || nh.is_loopback()
        || nh.octets()[0] >= 240)
}

fn msg_name(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "OPEN",
        Message::Update(_) => "UPDATE",
        Message::Notification(_) => "NOTIFICATION",
        Message::Keepalive => "KEEPALIVE",
        Message::RouteRefresh { .. } => "ROUTE-REFRESH",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::wire::encode_updates;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    pub(crate) fn cfg(peer_as: u32) -> SessionConfig {
        SessionConfig {
            peer: ip("10.0.0.2"),
            peer_as,
            local_as: 64512,
            router_id: ip("10.0.0.1"),
            next_hop: ip("10.0.0.1"),
            hold_time: 9,
            connect_retry: Duration::from_secs(5),
            passive: false,
            graceful_restart: true,
            restart_time: 120,
            restarting: false,
            max_prefixes: None,
        }
    }

    fn peer_open(asn: u32, id: &str, hold: u16, gr: Option<bool>) -> Vec<u8> {
        let mut caps = vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::RouteRefresh,
            Capability::FourOctetAs(asn),
        ];
        if let Some(f) = gr {
            caps.push(Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                restart_time: 30,
                families: vec![(1, 1, f)],
            }));
        }
        wire::encode_open(&Open {
            version: 4,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time: hold,
            router_id: ip(id),
            caps,
            other_params: vec![],
        })
    }

    fn peer_routes(nh: &str, prefixes: &[&str], path: &[u32]) -> Vec<u8> {
        let attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![Segment {
                kind: SEG_AS_SEQUENCE,
                asns: path.to_vec(),
            }]),
            next_hop: Some(ip(nh)),
            ..Default::default()
        };
        let nlri: Vec<Prefix> = prefixes.iter().map(|s| p(s)).collect();
        encode_updates(&[], Some(&attrs), &nlri, Ctx::default()).concat()
    }

    fn sent(out: &[Output]) -> Vec<Message> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(_, b) => Some(wire::decode(b, Ctx::default()).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn routes(out: &[Output]) -> Vec<RouteEvent> {
        out.iter()
            .filter_map(|o| match o {
                Output::Route(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Drives a session to Established over an outbound connection.
    fn establish(s: &mut Session, t: Instant, gr: Option<bool>) -> Vec<Output> {
        let o = s.handle(t, Input::Start);
        assert!(o.contains(&Output::Connect), "{o:?}");
        assert_eq!(s.state(), State::Connect);
        let o = s.handle(t, Input::Connected(ConnId::Outbound));
        assert!(matches!(sent(&o)[..], [Message::Open(_)]));
        assert_eq!(s.state(), State::OpenSent);
        let o = s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_open(s.cfg.peer_as, "10.0.0.2", 30, gr),
            ),
        );
        assert!(matches!(sent(&o)[..], [Message::Keepalive]));
        assert_eq!(s.state(), State::OpenConfirm);
        let o = s.handle(t, Input::Data(ConnId::Outbound, &wire::encode_keepalive()));
        assert_eq!(s.state(), State::Established);
        o
    }

    #[test]
    fn full_fsm_and_announcements_ebgp() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![p("10.244.1.0/26")], t);
        let o = establish(&mut s, t, None);
        let msgs = sent(&o);
        let Message::Update(u) = &msgs[0] else {
            panic!("{msgs:?}")
        };
        assert_eq!(u.nlri, vec![p("10.244.1.0/26")]);
        let a = u.attrs.as_ref().unwrap();
        assert_eq!(a.next_hop, Some(ip("10.0.0.1")));
        assert_eq!(a.as_path_text(), "64512");
        assert_eq!(a.local_pref, None);
        assert!(matches!(&msgs[1], Message::Update(e) if e.is_end_of_rib()));
        assert_eq!(s.negotiated().unwrap().hold_time, 9);
        // Keepalives every 3 s; hold expiry after 9 s of silence.
        let o = s.poll(t + Duration::from_secs(3));
        assert!(matches!(sent(&o)[..], [Message::Keepalive]));
        assert_eq!(
            s.next_deadline(),
            Some(t + Duration::from_secs(6)),
            "keepalive before hold"
        );
        let o = s.handle(
            t + Duration::from_secs(4),
            Input::Data(
                ConnId::Outbound,
                &peer_routes("10.0.0.2", &["10.244.2.0/26"], &[64513]),
            ),
        );
        assert!(matches!(&routes(&o)[..], [RouteEvent::Upsert(x, _)] if *x == p("10.244.2.0/26")));
        let o = s.poll(t + Duration::from_secs(13));
        let msgs = sent(&o);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, Message::Notification(n) if n.code == err::HOLD_TIMER)),
            "{msgs:?}"
        );
        // No graceful restart negotiated: the route goes.
        assert_eq!(routes(&o), vec![RouteEvent::Remove(p("10.244.2.0/26"))]);
        assert_eq!(s.state(), State::Idle);
        assert!(o.contains(&Output::Close(ConnId::Outbound)));
        // Backoff then a new connect.
        let o = s.poll(t + Duration::from_secs(14));
        assert!(o.contains(&Output::Connect), "{o:?}");
    }

    /// Our connect is still in progress (its SYN unanswered) when the
    /// peer's own connection reaches Established: the connect is cancelled
    /// so it cannot land on the peer later as a second connection, which a
    /// graceful-restart peer (BIRD) reads as our restart.
    #[test]
    fn established_on_inbound_cancels_our_pending_connect() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![p("10.244.1.0/26")], t);
        let o = s.handle(t, Input::Start);
        assert!(o.contains(&Output::Connect), "{o:?}");
        let o = s.handle(t, Input::Connected(ConnId::Inbound));
        assert!(!o.contains(&Output::CancelConnect), "too early: {o:?}");
        s.handle(
            t,
            Input::Data(
                ConnId::Inbound,
                &peer_open(64513, "10.0.0.2", 30, Some(false)),
            ),
        );
        assert_eq!(s.state(), State::OpenConfirm);
        let o = s.handle(t, Input::Data(ConnId::Inbound, &wire::encode_keepalive()));
        assert_eq!(s.state(), State::Established);
        assert!(o.contains(&Output::CancelConnect), "{o:?}");
        // The cancelled connect is not retried while the session is up, and
        // a late completion of it is closed, never answered with an OPEN.
        let o = s.poll(t + Duration::from_secs(6));
        assert!(!o.contains(&Output::Connect), "{o:?}");
        let o = s.handle(t, Input::Connected(ConnId::Outbound));
        assert!(o.contains(&Output::Close(ConnId::Outbound)), "{o:?}");
        assert!(sent(&o).is_empty(), "{o:?}");
        assert_eq!(s.state(), State::Established);
    }

    #[test]
    fn ibgp_announcement_has_local_pref_and_empty_path() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64512), vec![p("10.244.1.0/26")], t);
        let o = establish(&mut s, t, None);
        let Message::Update(u) = &sent(&o)[0] else {
            panic!()
        };
        let a = u.attrs.as_ref().unwrap();
        assert_eq!(a.local_pref, Some(100));
        assert_eq!(a.as_path, Some(vec![]));
    }

    #[test]
    fn open_errors_get_notifications() {
        let t = Instant::now();
        let cases: Vec<(Vec<u8>, (u8, u8))> = vec![
            (peer_open(64999, "10.0.0.2", 30, None), (2, 2)),
            (peer_open(64513, "10.0.0.2", 2, None), (2, 6)),
            (peer_open(64513, "0.0.0.0", 30, None), (2, 3)),
            (wire::encode_keepalive(), (5, 1)),
        ];
        for (bytes, want) in cases {
            let mut s = Session::new(cfg(64513), vec![], t);
            s.handle(t, Input::Start);
            s.handle(t, Input::Connected(ConnId::Outbound));
            let o = s.handle(t, Input::Data(ConnId::Outbound, &bytes));
            let n = sent(&o)
                .into_iter()
                .find_map(|m| match m {
                    Message::Notification(n) => Some((n.code, n.subcode)),
                    _ => None,
                })
                .unwrap();
            assert_eq!(n, want);
            assert!(o.contains(&Output::Close(ConnId::Outbound)));
            assert!(s.stats.last_error.is_some());
        }
        // Version 3.
        let mut bad = peer_open(64513, "10.0.0.2", 30, None);
        bad[19] = 3;
        let mut s = Session::new(cfg(64513), vec![], t);
        s.handle(t, Input::Start);
        s.handle(t, Input::Connected(ConnId::Outbound));
        let o = s.handle(t, Input::Data(ConnId::Outbound, &bad));
        assert!(sent(&o).contains(&Message::Notification(Notification::new(2, 1, [0, 4]))));
    }

    #[test]
    fn byte_at_a_time_delivery_works() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![], t);
        s.handle(t, Input::Start);
        s.handle(t, Input::Connected(ConnId::Outbound));
        let mut stream = peer_open(64513, "10.0.0.2", 30, None);
        stream.extend(wire::encode_keepalive());
        stream.extend(peer_routes(
            "10.0.0.2",
            &["10.1.0.0/16", "10.2.0.0/16"],
            &[64513],
        ));
        let mut events = Vec::new();
        for b in &stream {
            events.extend(routes(&s.handle(t, Input::Data(ConnId::Outbound, &[*b]))));
        }
        assert_eq!(s.state(), State::Established);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn loops_bad_next_hops_and_treat_as_withdraw() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![], t);
        establish(&mut s, t, None);
        let o = s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_routes("10.0.0.2", &["10.9.0.0/16"], &[64513]),
            ),
        );
        assert_eq!(routes(&o).len(), 1);
        // Same prefix, now with our AS in the path: withdrawn.
        let o = s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_routes("10.0.0.2", &["10.9.0.0/16"], &[64513, 64512]),
            ),
        );
        assert_eq!(routes(&o), vec![RouteEvent::Remove(p("10.9.0.0/16"))]);
        for nh in ["0.0.0.0", "224.0.0.1", "127.0.0.1", "10.0.0.1"] {
            let o = s.handle(
                t,
                Input::Data(
                    ConnId::Outbound,
                    &peer_routes(nh, &["10.8.0.0/16"], &[64513]),
                ),
            );
            assert!(routes(&o).is_empty(), "{nh}");
        }
        assert_eq!(s.stats.treat_as_withdraw, 5);
        assert_eq!(s.state(), State::Established);
    }

    #[test]
    fn max_prefixes_closes_with_cease() {
        let t = Instant::now();
        let mut c = cfg(64513);
        c.max_prefixes = Some(2);
        let mut s = Session::new(c, vec![], t);
        establish(&mut s, t, None);
        let o = s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_routes(
                    "10.0.0.2",
                    &["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"],
                    &[64513],
                ),
            ),
        );
        let n = sent(&o)
            .into_iter()
            .find_map(|m| match m {
                Message::Notification(n) => Some(n),
                _ => None,
            })
            .unwrap();
        assert_eq!((n.code, n.subcode), (6, 1));
        assert_eq!(n.data, vec![0, 1, 1, 0, 0, 0, 2]);
        let ev = routes(&o);
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, RouteEvent::Remove(_)))
                .count(),
            3
        );
        assert_eq!(s.prefixes(), 0);
        assert_eq!(s.next_deadline(), Some(t + IDLE_HOLD_MAX));
    }

    #[test]
    fn graceful_restart_helper_keeps_then_sweeps() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![], t);
        establish(&mut s, t, Some(true));
        s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_routes("10.0.0.2", &["10.1.0.0/16", "10.2.0.0/16"], &[64513]),
            ),
        );
        // The peer's process dies: TCP closed, no NOTIFICATION.
        let o = s.handle(t, Input::Closed(ConnId::Outbound, "reset".into()));
        assert!(routes(&o).is_empty(), "routes kept: {o:?}");
        assert_eq!(s.stale_prefixes(), 2);
        // It comes back (inbound), re-announces one route, sends EoR.
        let t2 = t + Duration::from_secs(5);
        s.handle(t2, Input::Connected(ConnId::Inbound));
        s.handle(
            t2,
            Input::Data(
                ConnId::Inbound,
                &peer_open(64513, "10.0.0.2", 30, Some(true)),
            ),
        );
        s.handle(t2, Input::Data(ConnId::Inbound, &wire::encode_keepalive()));
        assert_eq!(s.state(), State::Established);
        assert_eq!(s.stale_prefixes(), 2);
        let o = s.handle(
            t2,
            Input::Data(
                ConnId::Inbound,
                &peer_routes("10.0.0.2", &["10.1.0.0/16"], &[64513]),
            ),
        );
        assert_eq!(s.stale_prefixes(), 1);
        assert!(routes(&o).is_empty(), "same path: no event");
        let o = s.handle(t2, Input::Data(ConnId::Inbound, &wire::encode_end_of_rib()));
        assert_eq!(routes(&o), vec![RouteEvent::Remove(p("10.2.0.0/16"))]);
        assert_eq!(s.prefixes(), 1);
    }

    /// With graceful restart, a connection from the peer while the session
    /// runs on ours is only a restart once it carries an OPEN: the late
    /// half of a connect collision (closed unused by the peer) must not
    /// take the session down.
    #[test]
    fn graceful_restart_inbound_connect_is_a_restart_only_with_an_open() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![], t);
        establish(&mut s, t, Some(true));
        s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_routes("10.0.0.2", &["10.1.0.0/16"], &[64513]),
            ),
        );
        // The peer's late connect, closed by it without a word.
        let o = s.handle(t, Input::Connected(ConnId::Inbound));
        assert!(
            !o.iter()
                .any(|x| matches!(x, Output::Close(ConnId::Outbound))),
            "{o:?}"
        );
        s.handle(t, Input::Closed(ConnId::Inbound, "eof".into()));
        assert_eq!(s.state(), State::Established);
        assert_eq!(s.stale_prefixes(), 0);
        assert_eq!(s.prefixes(), 1);
        // A connection that sends an OPEN is the peer after a restart: the
        // old session goes, its routes turn stale, the new one comes up.
        s.handle(t, Input::Connected(ConnId::Inbound));
        let o = s.handle(
            t,
            Input::Data(
                ConnId::Inbound,
                &peer_open(64513, "10.0.0.2", 30, Some(true)),
            ),
        );
        assert!(o.contains(&Output::Close(ConnId::Outbound)), "{o:?}");
        assert_eq!(s.stale_prefixes(), 1);
        s.handle(t, Input::Data(ConnId::Inbound, &wire::encode_keepalive()));
        assert_eq!(s.state(), State::Established);
    }

    #[test]
    fn graceful_restart_timer_expires_without_the_peer() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![], t);
        establish(&mut s, t, Some(false));
        s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_routes("10.0.0.2", &["10.1.0.0/16"], &[64513]),
            ),
        );
        s.handle(t, Input::Closed(ConnId::Outbound, "eof".into()));
        assert_eq!(s.stale_prefixes(), 1);
        let o = s.poll(t + Duration::from_secs(29));
        assert!(routes(&o).is_empty());
        let o = s.poll(t + Duration::from_secs(30));
        assert_eq!(routes(&o), vec![RouteEvent::Remove(p("10.1.0.0/16"))]);
    }

    #[test]
    fn notification_from_peer_drops_routes_even_with_gr() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![], t);
        establish(&mut s, t, Some(true));
        s.handle(
            t,
            Input::Data(
                ConnId::Outbound,
                &peer_routes("10.0.0.2", &["10.1.0.0/16"], &[64513]),
            ),
        );
        let n = wire::encode_notification(&Notification::cease(2, "bye"));
        let o = s.handle(t, Input::Data(ConnId::Outbound, &n));
        assert_eq!(routes(&o), vec![RouteEvent::Remove(p("10.1.0.0/16"))]);
        assert!(s.stats.last_error.as_deref().unwrap().contains("bye"));
    }

    #[test]
    fn collision_keeps_the_higher_identifiers_connection() {
        let t = Instant::now();
        // Our id 10.0.0.1 < peer 10.0.0.2: the peer's (inbound) wins.
        let mut s = Session::new(cfg(64513), vec![], t);
        s.handle(t, Input::Start);
        s.handle(t, Input::Connected(ConnId::Outbound));
        s.handle(t, Input::Connected(ConnId::Inbound));
        let open = peer_open(64513, "10.0.0.2", 30, None);
        // The identifier is known from the first OPEN, so the collision is
        // resolved then, with the other connection still in OpenSent.
        let mut o = s.handle(t, Input::Data(ConnId::Outbound, &open));
        o.extend(s.handle(t, Input::Data(ConnId::Inbound, &open)));
        assert!(o.contains(&Output::Close(ConnId::Outbound)), "{o:?}");
        assert!(sent(&o)
            .iter()
            .any(|m| matches!(m, Message::Notification(n) if (n.code, n.subcode) == (6, 7))));
        s.handle(t, Input::Data(ConnId::Inbound, &wire::encode_keepalive()));
        assert_eq!(s.state(), State::Established);

        // Our id higher: our outbound wins.
        let mut c = cfg(64513);
        c.router_id = ip("10.0.0.9");
        let mut s = Session::new(c, vec![], t);
        s.handle(t, Input::Start);
        s.handle(t, Input::Connected(ConnId::Outbound));
        s.handle(t, Input::Connected(ConnId::Inbound));
        let mut o = s.handle(t, Input::Data(ConnId::Outbound, &open));
        o.extend(s.handle(t, Input::Data(ConnId::Inbound, &open)));
        assert!(o.contains(&Output::Close(ConnId::Inbound)), "{o:?}");
        s.handle(t, Input::Data(ConnId::Outbound, &wire::encode_keepalive()));
        assert_eq!(s.state(), State::Established);
        // A new inbound while Established (no GR) is refused.
        let o = s.handle(t, Input::Connected(ConnId::Inbound));
        assert!(o.contains(&Output::Close(ConnId::Inbound)));
        assert_eq!(s.state(), State::Established);
    }

    #[test]
    fn passive_peers_never_connect_and_stop_sends_cease() {
        let t = Instant::now();
        let mut c = cfg(64513);
        c.passive = true;
        let mut s = Session::new(c, vec![], t);
        let o = s.handle(t, Input::Start);
        assert!(!o.contains(&Output::Connect));
        assert_eq!(s.state(), State::Active);
        assert_eq!(s.next_deadline(), None);
        s.handle(t, Input::Connected(ConnId::Inbound));
        s.handle(
            t,
            Input::Data(ConnId::Inbound, &peer_open(64513, "10.0.0.2", 30, None)),
        );
        s.handle(t, Input::Data(ConnId::Inbound, &wire::encode_keepalive()));
        assert_eq!(s.state(), State::Established);
        let o = s.handle(
            t,
            Input::Stop {
                reason: "bye".into(),
                graceful: false,
            },
        );
        assert!(sent(&o)
            .iter()
            .any(|m| matches!(m, Message::Notification(n) if (n.code, n.subcode) == (6, 2))));
        assert_eq!(s.state(), State::Idle);
    }

    #[test]
    fn backoff_doubles_on_repeated_failures() {
        let mut t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![], t);
        s.handle(t, Input::Start);
        let mut waits = Vec::new();
        for _ in 0..8 {
            s.handle(t, Input::Connected(ConnId::Outbound));
            s.handle(t, Input::Closed(ConnId::Outbound, "rst".into()));
            let d = s.next_deadline().unwrap();
            waits.push(d.duration_since(t).as_secs());
            t = d;
            let o = s.poll(t);
            assert!(o.contains(&Output::Connect));
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn route_refresh_resends_our_routes() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![p("10.244.1.0/26")], t);
        establish(&mut s, t, None);
        let o = s.handle(
            t,
            Input::Data(ConnId::Outbound, &wire::encode_route_refresh(1, 1)),
        );
        let msgs = sent(&o);
        assert!(matches!(&msgs[0], Message::Update(u) if u.nlri == vec![p("10.244.1.0/26")]));
        let o = s.handle(t, Input::SendRouteRefresh);
        assert_eq!(sent(&o), vec![Message::RouteRefresh { afi: 1, safi: 1 }]);
    }

    #[test]
    fn reloaded_blocks_are_announced_and_withdrawn_on_an_established_session() {
        let t = Instant::now();
        for peer_as in [64512, 64513] {
            let mut s = Session::new(cfg(peer_as), vec![p("10.244.1.0/26")], t);
            establish(&mut s, t, Some(true));
            let o = s.set_local_routes(t, vec![p("10.244.1.0/26"), p("10.244.9.0/26")]);
            let msgs = sent(&o);
            assert_eq!(msgs.len(), 1, "{msgs:?}");
            let Message::Update(u) = &msgs[0] else {
                panic!("{msgs:?}")
            };
            assert_eq!(u.nlri, vec![p("10.244.9.0/26")]);
            assert!(u.withdrawn.is_empty());
            let a = u.attrs.as_ref().unwrap();
            assert_eq!(a.next_hop, Some(ip("10.0.0.1")));
            assert_eq!(a.origin, Some(Origin::Igp));
            if peer_as == 64512 {
                assert_eq!(a.as_path, Some(vec![]));
                assert_eq!(a.local_pref, Some(DEFAULT_LOCAL_PREF));
            } else {
                assert_eq!(a.as_path_text(), "64512");
                assert_eq!(a.local_pref, None);
            }
            // Sent on the Established connection.
            assert!(o
                .iter()
                .all(|x| !matches!(x, Output::Send(id, _) if *id != ConnId::Outbound)));
            // Removing one and adding another: a withdraw, then an announce.
            let o = s.set_local_routes(t, vec![p("10.244.9.0/26"), p("10.244.7.0/26")]);
            let msgs = sent(&o);
            assert_eq!(msgs.len(), 2, "{msgs:?}");
            let Message::Update(w) = &msgs[0] else {
                panic!("{msgs:?}")
            };
            assert_eq!(w.withdrawn, vec![p("10.244.1.0/26")]);
            assert!(w.nlri.is_empty() && w.attrs.is_none());
            let Message::Update(a) = &msgs[1] else {
                panic!("{msgs:?}")
            };
            assert_eq!(a.nlri, vec![p("10.244.7.0/26")]);
            // The same set again: nothing on the wire.
            let o = s.set_local_routes(t, vec![p("10.244.7.0/26"), p("10.244.9.0/26")]);
            assert!(sent(&o).is_empty(), "{o:?}");
            assert_eq!(s.local_routes(), &[p("10.244.7.0/26"), p("10.244.9.0/26")]);
            assert_eq!(s.state(), State::Established);
            // A route refresh re-sends the current set, not the old one.
            let o = s.handle(
                t,
                Input::Data(ConnId::Outbound, &wire::encode_route_refresh(1, 1)),
            );
            let announced: Vec<Prefix> = sent(&o)
                .iter()
                .filter_map(|m| match m {
                    Message::Update(u) => Some(u.nlri.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(announced, vec![p("10.244.7.0/26"), p("10.244.9.0/26")]);
        }
    }

    #[test]
    fn reloaded_blocks_wait_for_the_next_session_when_not_established() {
        let t = Instant::now();
        let mut s = Session::new(cfg(64513), vec![p("10.244.1.0/26")], t);
        s.handle(t, Input::Start);
        s.handle(t, Input::Connected(ConnId::Outbound));
        assert_eq!(s.state(), State::OpenSent);
        let o = s.set_local_routes(t, vec![p("10.244.2.0/26")]);
        assert!(sent(&o).is_empty(), "{o:?}");
        s.handle(
            t,
            Input::Data(ConnId::Outbound, &peer_open(64513, "10.0.0.2", 30, None)),
        );
        let o = s.handle(t, Input::Data(ConnId::Outbound, &wire::encode_keepalive()));
        let msgs = sent(&o);
        assert!(
            matches!(&msgs[0], Message::Update(u) if u.nlri == vec![p("10.244.2.0/26")] && u.withdrawn.is_empty()),
            "{msgs:?}"
        );
        assert!(matches!(&msgs[1], Message::Update(u) if u.is_end_of_rib()));
    }

    #[test]
    fn restart_bit_is_announced_after_our_own_restart_and_eor_is_tracked() {
        let t = Instant::now();
        for restarting in [false, true] {
            let mut c = cfg(64512);
            c.restarting = restarting;
            c.restart_time = 45;
            let mut s = Session::new(c, vec![p("10.244.1.0/26")], t);
            s.handle(t, Input::Start);
            let o = s.handle(t, Input::Connected(ConnId::Outbound));
            let Message::Open(open) = &sent(&o)[0] else {
                panic!("{o:?}")
            };
            let gr = open.graceful_restart().expect("GR capability");
            assert_eq!(gr.restarting, restarting);
            assert_eq!(gr.restart_time, 45);
            assert_eq!(gr.families, vec![(AFI_IPV4, SAFI_UNICAST, restarting)]);
            // Our blocks and End-of-RIB go out on Established either way
            // (they depend on no learned route).
            s.handle(
                t,
                Input::Data(
                    ConnId::Outbound,
                    &peer_open(64512, "10.0.0.2", 30, Some(true)),
                ),
            );
            let o = s.handle(t, Input::Data(ConnId::Outbound, &wire::encode_keepalive()));
            assert!(sent(&o)
                .iter()
                .any(|m| matches!(m, Message::Update(u) if u.is_end_of_rib())));
            assert!(!s.eor_received());
            s.handle(
                t,
                Input::Data(
                    ConnId::Outbound,
                    &peer_routes("10.0.0.2", &["10.9.0.0/16"], &[]),
                ),
            );
            assert!(!s.eor_received());
            s.handle(t, Input::Data(ConnId::Outbound, &wire::encode_end_of_rib()));
            assert!(s.eor_received());
        }
        // Without graceful restart configured there is no capability.
        let mut c = cfg(64512);
        c.graceful_restart = false;
        c.restarting = true;
        let mut s = Session::new(c, vec![], t);
        s.handle(t, Input::Start);
        let o = s.handle(t, Input::Connected(ConnId::Outbound));
        let Message::Open(open) = &sent(&o)[0] else {
            panic!("{o:?}")
        };
        assert!(open.graceful_restart().is_none());
    }

    fn recorded(text: &str) -> Vec<u8> {
        let h: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| l.chars())
            .filter(|c| c.is_ascii_hexdigit())
            .collect();
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Byte streams real BIRD 2.0.12, GoBGP 3.10 and FRR 8.4 sent
    /// podrouterd (captured with tcpdump in an interop session), replayed
    /// into a session: each reaches Established without a NOTIFICATION
    /// from us and yields the peer's block with its address as next hop.
    #[test]
    fn replays_recorded_sessions_of_real_peers() {
        let cases = [
            (
                "bird",
                include_str!("testdata/bird.hex"),
                64512,
                ConnId::Inbound,
                "10.244.2.0/26",
            ),
            (
                "gobgp",
                include_str!("testdata/gobgp.hex"),
                64513,
                ConnId::Outbound,
                "10.244.3.0/26",
            ),
            (
                "frr",
                include_str!("testdata/frr.hex"),
                64514,
                ConnId::Inbound,
                "10.244.4.0/26",
            ),
        ];
        for (name, text, asn, conn, block) in cases {
            let t = Instant::now();
            let mut c = cfg(asn);
            c.peer = ip("10.250.0.2");
            c.router_id = ip("10.250.0.1");
            c.next_hop = ip("10.250.0.1");
            let mut s = Session::new(c, vec![p("10.244.1.0/26")], t);
            s.handle(t, Input::Start);
            s.handle(t, Input::Connected(conn));
            let bytes = recorded(text);
            let mut out = Vec::new();
            let mut established = false;
            // Feed it in odd-sized pieces, as TCP might.
            for chunk in bytes.chunks(37) {
                out.extend(s.handle(t, Input::Data(conn, chunk)));
                established |= s.state() == State::Established;
            }
            assert!(established, "{name}: never Established: {:?}", s.stats);
            assert!(
                !sent(&out)
                    .iter()
                    .any(|m| matches!(m, Message::Notification(_))),
                "{name}: we sent a NOTIFICATION: {out:?}"
            );
            let learned: Vec<_> = routes(&out)
                .into_iter()
                .filter_map(|r| match r {
                    RouteEvent::Upsert(p, path) => Some((p, path.next_hop)),
                    _ => None,
                })
                .collect();
            assert_eq!(learned, vec![(p(block), ip("10.250.0.2"))], "{name}");
            let neg = s.negotiated().unwrap();
            assert!(
                neg.ctx.four_octet_as && neg.route_refresh,
                "{name}: {neg:?}"
            );
        }
    }

    /// Random bytes after Established never panic and always end in a
    /// NOTIFICATION or a still-running session.
    #[test]
    fn garbage_from_an_established_peer_is_survived() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(7);
        let t = Instant::now();
        let good = peer_routes("10.0.0.2", &["10.1.0.0/16", "10.2.0.0/24"], &[64513, 7]);
        for _ in 0..3000 {
            let mut s = Session::new(cfg(64513), vec![], t);
            establish(&mut s, t, Some(true));
            let mut m = good.clone();
            for _ in 0..rng.gen_range(1..5) {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.gen();
            }
            let _ = s.handle(t, Input::Data(ConnId::Outbound, &m));
        }
    }
}
