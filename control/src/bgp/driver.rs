//! The BGP thread: sockets, clock and FIB writes around the pure
//! [`Speaker`].
//!
//! One mio loop owns the listener, every peer connection (at most an
//! outbound and an inbound one per peer) and a waker for commands from the
//! control thread. Each iteration: fire timers, read what arrived (at most
//! 1 MiB per connection per iteration, so one peer's full table cannot
//! starve another's keepalives), carry out the speaker's socket work, and
//! publish the FIB changes as one batch once due: at once after a quiet
//! spell, and during a burst (a full table) no sooner than eight times the
//! last publication's cost after it (at most 100 ms) or 5 ms after the
//! input pauses, whichever comes first, because a
//! publication copies the FIB shards it touches (about the whole table
//! for a thousand scattered routes). Then, off this thread, the node
//! kernel's routes and the saved-routes file follow the published batch
//! on threads of their own. The `bgp-kernel` thread runs at the daemon's
//! priority: the node's own traffic to remote pods needs its routes, so
//! they are part of converging (at ten nice levels down, as it ran
//! before, it fell 0.07-1.6 s behind the FIB for 100,000 routes on a busy
//! machine). The `bgp-save` thread runs ten nice levels below the rest
//! (background work). `podrouterctl bgp peers` (API `bgp_peers`) reports
//! per session the time from Established to the last publication and to
//! the kernel caught up, the daemon's own convergence figures.
//!
//! Every read re-arms `TCP_QUICKACK` on the connection: a sender under
//! Nagle's algorithm (BIRD, by tcpdump) holds a burst's short last segment
//! until our ACK, and the kernel's delayed ACK made that 40 ms.
//!
//! Inbound connections from addresses that are not configured peers are
//! closed at once, before a byte is read. Sends are queued per connection
//! and flushed on writability; a peer that stops reading and lets more than
//! 4 MiB pile up is disconnected. A connection being closed gets up to
//! 200 ms to flush its last NOTIFICATION.
//!
//! Kernel routes: with an IPIP uplink, each learned block also needs a
//! route in the node's kernel (`uplink_setup::kernel_route`: into the
//! router, or via the directly routed next hops, multipath for an ECMP
//! set), so the node's own traffic to remote pods enters the router or
//! goes straight to the node. Netlink is slower than a FIB batch, so a
//! second thread, `bgp-kernel`, applies them in order from a channel: the
//! BGP loop never waits for netlink, and the FIB (what forwarding uses) is
//! never held back by the kernel's copy. It batches
//! ([`uplink_setup::KernelRoutes`]): one socket for its life, everything
//! queued so far in one go, 64 route messages per `sendmsg`; each failure
//! is logged with its prefix and counted, and never stops the rest.
//!
//! Graceful restart across our own restart: a graceful stop writes
//! `state_dir/bgp-restart` with the time and leaves the learned blocks'
//! kernel routes in place; a start that finds the marker younger than
//! `restart_time` announces the R and F bits. Every start scans the kernel
//! for learned-block routes left from before and deletes those BGP has not
//! re-learned once the peers have sent End-of-RIB ([`super::stale`]).
//!
//! Reload: [`BgpHandle::set_local_routes`] hands the speaker this node's
//! new blocks; it announces and withdraws them on every session.
//! [`BgpHandle::set_peers`] hands it the new peers: sessions start and
//! stop for the changed entries only, and the listener's TCP MD5 keys,
//! the remote ports and the stale sweep follow.
use std::collections::{HashMap, HashSet};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use podrouter_api::{BgpPeerInfo, BgpRibInfo};
use podrouter_router::fib::{Fib, FibChange};
use podrouter_types::Prefix;

use super::kernel_plan::KernelPlan;
use super::saved::Saver;
use super::session::{ConnId, Input, Output};
use super::speaker::{KernelJob, PeerSpec, Speaker, Vias};
use super::stale::{self, StaleKernelRoutes};
use super::views;
use super::{speaker_config, Endpoints};
use crate::config::Config;
use crate::sys;
use crate::uplink_setup::{KernelRoutes, UplinkState};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const READ_BUDGET: usize = 1 << 20;
const MAX_SEND_QUEUE: usize = 4 << 20;
const CLOSE_FLUSH: Duration = Duration::from_millis(200);
/// How long the control thread waits for an answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Marker of a graceful stop, under state_dir.
pub const RESTART_MARKER: &str = "bgp-restart";

enum Command {
    Peers(mpsc::Sender<Vec<BgpPeerInfo>>),
    Rib(Option<Prefix>, usize, mpsc::Sender<BgpRibInfo>),
    SetLocalRoutes(Vec<Prefix>, mpsc::Sender<()>),
    /// The peers of a reloaded config, each with its remote port.
    SetPeers(Vec<(PeerSpec, u16)>, mpsc::Sender<PeerChanges>),
    Stop {
        graceful: bool,
    },
}

/// How far the `bgp-kernel` thread got: the batches it applied and when
/// it finished the last of them. With the BGP thread's count of batches
/// sent, it tells when the kernel holds every decision handed over
/// (`established_to_kernel_synced_ms`).
#[derive(Default)]
struct KernelProgress {
    applied: u64,
    at: Option<Instant>,
}

type SharedProgress = Arc<std::sync::Mutex<KernelProgress>>;

/// The control thread's handle on the BGP thread.
pub struct BgpHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    kernel_thread: Option<JoinHandle<()>>,
    /// Set by a non-graceful stop before the `bgp-kernel` thread is
    /// joined: it then also removes the pools' covering routes.
    drop_covering: Arc<AtomicBool>,
    save_thread: Option<JoinHandle<()>>,
    marker: PathBuf,
    graceful_restart: bool,
    /// Whether this run announces the restart bit (new peers' sessions
    /// get the same setting, so an unchanged peer compares equal).
    restarting: bool,
}

/// What [`BgpHandle::set_peers`] did: the addresses of the sessions
/// started and stopped (a changed peer is in both).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

impl BgpHandle {
    /// Binds the listener and starts the BGP thread. `None` when the
    /// config has no `[bgp]` section. With an `uplink`, learned blocks
    /// also get the node kernel's routes.
    /// `restored`: the saved routes [`super::restore_saved`] put in the
    /// FIB (the speaker adopts them, the restart's sweep removes those no
    /// peer announces again).
    pub fn start(
        cfg: &Config,
        fib: Arc<Fib>,
        uplink: Option<UplinkState>,
        restored: Vec<(Prefix, Vias)>,
    ) -> io::Result<Option<BgpHandle>> {
        let Some(bgp) = cfg.bgp.as_ref() else {
            return Ok(None);
        };
        let marker = cfg.state_dir.join(RESTART_MARKER);
        let restarting = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|t| unix_now().saturating_sub(t) <= u64::from(bgp.restart_time));
        let _ = std::fs::remove_file(&marker);
        let Some(mut scfg) = speaker_config(cfg, restarting) else {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "[bgp] needs node_ip (the next hop of our blocks)",
            ));
        };
        scfg.node_networks = super::node_networks(scfg.next_hop);
        log::info!(
            "bgp: importing only prefixes inside {}; never over the node's {}",
            list_text(&scfg.import_pools),
            list_text(&scfg.node_networks)
        );
        let ends = Endpoints::from_config(cfg).expect("bgp is set");
        let plan = uplink
            .as_ref()
            .map(|u| KernelPlan::new(bgp.kernel_routes, u.policy, &scfg));
        if let Some(plan) = &plan {
            if !plan.covering().is_empty() {
                log::info!(
                    "bgp: kernel_routes = \"per-pool\": one kernel route into {} per pool ({}); \
                     per-block routes only for blocks routed directly",
                    cfg.dataplane.host_port,
                    list_text(plan.covering())
                );
            }
            for (pool, why) in plan.refused() {
                log::warn!(
                    "bgp: kernel_routes = \"per-pool\": pool {pool} gets no covering route ({why}); \
                     its blocks get per-block kernel routes"
                );
            }
        }
        // The pools' Unreachable entries, below the learned blocks (and
        // not over a restored route to a pool's exact prefix).
        if let Some(plan) = &plan {
            let learned: Vec<Prefix> = restored.iter().map(|(p, _)| *p).collect();
            let entries = plan.fib_entries(&learned);
            if !entries.is_empty() {
                fib.update(&entries);
            }
        }
        // Before any session can re-learn anything: what the last run
        // left in the kernel (the pools' covering routes are not stale).
        let statics: Vec<Prefix> = cfg.routes.iter().map(|r| r.prefix).collect();
        let covering = plan.as_ref().map_or(&[][..], |p| p.covering());
        let started = Instant::now();
        let gr: Vec<bool> = scfg
            .peers
            .iter()
            .map(|p| p.session.graceful_restart)
            .collect();
        let bound = Duration::from_secs(bgp.restart_time.into());
        let stale = match stale::scan(&cfg.pod_cidrs, &statics, covering) {
            Ok(routes) if routes.is_empty() => None,
            Ok(routes) => {
                log::info!(
                    "bgp: {} learned-block kernel route(s) from before this start kept as stale \
                     until {} peer(s) send End-of-RIB (at most {} s): {}",
                    routes.len(),
                    gr.iter().filter(|g| **g).count(),
                    bound.as_secs(),
                    routes
                        .iter()
                        .map(|(_, r)| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Some(StaleKernelRoutes::new(routes, &gr, started, bound))
            }
            Err(e) => {
                log::warn!("bgp: cannot list kernel routes for the stale scan: {e}");
                None
            }
        };
        let std_listener = std::net::TcpListener::bind(ends.listen)?;
        std_listener.set_nonblocking(true)?;
        for p in &scfg.peers {
            if let Some(key) = &p.password {
                sys::tcp_md5_set(std_listener.as_fd(), p.session.peer, key.as_bytes())?;
            }
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let kernel_progress = SharedProgress::default();
        let drop_covering = Arc::new(AtomicBool::new(false));
        let (kernel, kernel_thread) = match (uplink, plan.clone()) {
            (Some(u), Some(plan)) => {
                let (ktx, krx) = mpsc::channel::<JobBatch>();
                let host_port = cfg.dataplane.host_port.clone();
                let progress = kernel_progress.clone();
                let drop = drop_covering.clone();
                let t = std::thread::Builder::new()
                    .name("bgp-kernel".into())
                    .spawn(move || kernel_sync(krx, host_port, u, plan, &drop, &progress))?;
                (Some(ktx), Some(t))
            }
            _ => (None, None),
        };
        log::info!(
            "bgp: AS {} router id {} listening on {}, {} peer(s){}",
            scfg.local_as,
            scfg.router_id,
            ends.listen,
            scfg.peers.len(),
            if restarting {
                " (graceful restart: announcing the restart bit)"
            } else {
                ""
            }
        );
        let (save_tx, save_rx) = mpsc::channel::<JobBatch>();
        let saver = Saver::new(&cfg.state_dir, fib.clone(), statics.clone());
        let save_thread = std::thread::Builder::new()
            .name("bgp-save".into())
            .spawn(move || {
                background_priority("bgp-save");
                saver.run(save_rx)
            })?;
        let mut speaker = Speaker::new(scfg, Instant::now());
        let adopted = speaker.adopt(restored);
        let restored = (!adopted.is_empty()).then(|| {
            let rows = adopted.into_iter().map(|p| (p, p)).collect();
            StaleKernelRoutes::new(rows, &gr, started, bound)
        });
        let mut driver = Driver {
            poll,
            listener: TcpListener::from_std(std_listener),
            speaker,
            ends,
            socks: HashMap::new(),
            again: HashSet::new(),
            fib,
            kernel,
            plan,
            kernel_sent: 0,
            kernel_progress,
            save: save_tx,
            stale,
            restored,
            rx,
            buf: vec![0; 64 * 1024],
            last_publish: None,
            next_publish: Instant::now(),
            quiet_floor: Instant::now(),
            last_input: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("bgp".into())
            .spawn(move || driver.run())?;
        Ok(Some(BgpHandle {
            tx,
            waker,
            thread: Some(thread),
            kernel_thread,
            drop_covering,
            save_thread: Some(save_thread),
            marker,
            graceful_restart: bgp.graceful_restart,
            restarting,
        }))
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| "the BGP thread has stopped".to_string())?;
        let _ = self.waker.wake();
        rx.recv_timeout(QUERY_TIMEOUT)
            .map_err(|_| "the BGP thread did not answer in time".to_string())
    }

    pub fn peers(&self) -> Result<Vec<BgpPeerInfo>, String> {
        self.ask(Command::Peers)
    }

    pub fn rib(&self, within: Option<Prefix>, limit: usize) -> Result<BgpRibInfo, String> {
        self.ask(|tx| Command::Rib(within, limit, tx))
    }

    /// Replaces the node's own blocks; returns once the speaker has queued
    /// the UPDATEs for every Established session.
    pub fn set_local_routes(&self, routes: Vec<Prefix>) -> Result<(), String> {
        self.ask(|tx| Command::SetLocalRoutes(routes, tx))
    }

    /// Applies the `[[bgp.peers]]` of a reloaded `cfg` (whose other `[bgp]`
    /// keys equal the running ones, `crate::reload` checks that): starts
    /// sessions for new peers, stops removed ones, leaves the rest alone.
    pub fn set_peers(&self, cfg: &Config) -> Result<PeerChanges, String> {
        let (Some(scfg), Some(ends)) = (
            speaker_config(cfg, self.restarting),
            Endpoints::from_config(cfg),
        ) else {
            return Err("the new config has no [bgp] section or no node_ip".into());
        };
        let peers = scfg.peers.into_iter().zip(ends.peer_ports).collect();
        self.ask(|tx| Command::SetPeers(peers, tx))
    }

    /// Stops every session and the thread. With graceful restart
    /// configured the sessions close without a NOTIFICATION (peers keep
    /// our routes for the restart time) and the restart marker is written.
    pub fn stop(self) {
        let graceful = self.graceful_restart;
        self.stop_as(graceful);
    }

    /// Stops as a graceful restart whatever the config says, for a
    /// takeover: the FIB and the learned blocks' kernel routes stay, the
    /// learned routes are saved for the new daemon, and the sessions close
    /// without a NOTIFICATION (peers that negotiated graceful restart keep
    /// our routes until the new daemon's sessions are up).
    pub fn stop_for_handover(self) {
        self.stop_as(true);
    }

    fn stop_as(mut self, graceful: bool) {
        self.drop_covering.store(!graceful, Ordering::Relaxed);
        let _ = self.tx.send(Command::Stop { graceful });
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The BGP thread dropped its sender: the kernel thread finishes
        // what is queued (the removals of a non-graceful stop) and ends.
        if let Some(t) = self.kernel_thread.take() {
            let _ = t.join();
        }
        // Likewise the saver writes the routes a last time.
        if let Some(t) = self.save_thread.take() {
            let _ = t.join();
        }
        if graceful {
            if let Err(e) = std::fs::write(&self.marker, unix_now().to_string()) {
                log::warn!("bgp: cannot write {}: {e}", self.marker.display());
            }
        }
    }
}

/// The `bgp-kernel` thread: applies kernel route changes in order, every
/// batch queued so far at once.
fn kernel_sync(
    rx: mpsc::Receiver<JobBatch>,
    host_port: String,
    uplink: UplinkState,
    plan: KernelPlan,
    drop_covering: &AtomicBool,
    progress: &SharedProgress,
) {
    let mut routes = KernelRoutes::new(&host_port, uplink);
    let per_pool = !plan.covering().is_empty();
    // Before the first learned route: the host reaches every tunnelled
    // block of the pools through the router from now on. If that fails
    // (the host port not there yet), again with each batch until it works.
    let mut covering_in = !per_pool || install_covering(&mut routes, &plan);
    while let Ok(first) = rx.recv() {
        if !covering_in {
            covering_in = install_covering(&mut routes, &plan);
        }
        let mut queued = vec![first];
        while let Ok(more) = rx.try_recv() {
            queued.push(more);
        }
        let joined: Vec<KernelJob>;
        let batch: &[KernelJob] = if per_pool {
            // Only the blocks that need a route of their own.
            joined = queued
                .iter()
                .flat_map(|b| b.iter())
                .filter_map(|j| plan.kernel_job(j))
                .collect();
            joined.as_slice()
        } else if queued.len() == 1 {
            queued[0].as_slice()
        } else {
            joined = queued.iter().flat_map(|b| b.iter().cloned()).collect();
            joined.as_slice()
        };
        let failed = routes.apply(batch);
        if let Ok(mut p) = progress.lock() {
            p.applied += queued.len() as u64;
            p.at = Some(Instant::now());
        }
        // Every failure names its prefix: the first few of a batch as
        // warnings, the rest at debug level, then a count.
        for (k, (prefix, e)) in failed.iter().enumerate() {
            if k < 10 {
                log::warn!("bgp: kernel route for {prefix}: {e}");
            } else {
                log::debug!("bgp: kernel route for {prefix}: {e}");
            }
        }
        if !failed.is_empty() {
            log::warn!(
                "bgp: {} of {} kernel route changes failed{} ({} failures so far)",
                failed.len(),
                batch.len(),
                if failed.len() > 10 {
                    " (the rest logged at debug level)"
                } else {
                    ""
                },
                routes.failures
            );
        }
    }
    // The BGP thread has stopped; a non-graceful stop has just removed
    // the learned blocks' routes, and the pools' routes go with them.
    if per_pool && drop_covering.load(Ordering::Relaxed) {
        if let Err(e) = routes.set_routes(&plan.covering_routes(0), false) {
            log::warn!("bgp: removing the import pools' covering kernel routes: {e}");
        }
    }
}

/// Installs the pools' covering routes; whether that worked (a failure is
/// logged).
fn install_covering(routes: &mut KernelRoutes, plan: &KernelPlan) -> bool {
    match routes.set_routes(&plan.covering_routes(0), true) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("bgp: covering kernel routes for the import pools: {e} (trying again with the next change)");
            false
        }
    }
}

/// Nice levels the `bgp-save` thread gives up: the file only matters at
/// the next start, so under contention (a full table arriving on a busy
/// node) the BGP thread, the kernel routes and the data plane come first.
const BACKGROUND_NICE: i32 = 10;

fn background_priority(thread: &str) {
    if let Err(e) = sys::lower_thread_priority(BACKGROUND_NICE) {
        log::debug!("bgp: cannot lower the priority of {thread}: {e}");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Sock {
    stream: TcpStream,
    connecting: bool,
    out: Vec<u8>,
}

struct Driver {
    poll: Poll,
    listener: TcpListener,
    speaker: Speaker,
    ends: Endpoints,
    socks: HashMap<(usize, ConnId), Sock>,
    /// Connections with unread data left after their read budget.
    again: HashSet<(usize, ConnId)>,
    fib: Arc<Fib>,
    kernel: Option<mpsc::Sender<JobBatch>>,
    /// Which learned blocks need a kernel route of their own (None: no
    /// uplink, no kernel routes).
    plan: Option<KernelPlan>,
    /// Batches handed to the `bgp-kernel` thread so far.
    kernel_sent: u64,
    kernel_progress: SharedProgress,
    /// The `bgp-save` thread: the same changes, for `state_dir/bgp-routes`.
    save: mpsc::Sender<JobBatch>,
    /// Saved routes the speaker adopted at start, until the restart's
    /// sweep (the same End-of-RIBs and bound as `stale`).
    restored: Option<StaleKernelRoutes<Prefix>>,
    /// Learned-block kernel routes from before this start, until swept.
    stale: Option<StaleKernelRoutes<crate::netlink::Ipv4Route>>,
    rx: mpsc::Receiver<Command>,
    buf: Vec<u8>,
    /// When the last FIB batch with BGP changes was published (for the
    /// peers' `established_to_last_install_ms`, and the next batch's due
    /// time).
    last_publish: Option<Instant>,
    /// When the next batch is due (during a burst; see
    /// [`Driver::apply_fib_when_due`]).
    next_publish: Instant,
    /// When a peer's bytes were last read: once input pauses for
    /// [`QUIET_PUBLISH`], the burst is over (or stalled) and the pending
    /// decisions are published without waiting for `next_publish`.
    last_input: Instant,
    /// The soonest a pause in the input publishes: [`QUIET_FLOOR_FACTOR`]
    /// times the last publication's cost after it, so a sender that
    /// pauses often (a slow full table) still leaves the thread at least
    /// two thirds of its time for the input.
    quiet_floor: Instant,
}

/// A FIB batch is due this many times the last one's cost after it.
const PUBLISH_GAP_FACTOR: u32 = 8;
/// Stale kernel routes the sweep's log line names (and failures it logs
/// one by one); the rest are counted.
const STALE_NAMED: usize = 10;
/// The longest a decision waits for its FIB batch.
const MAX_PUBLISH_GAP: Duration = Duration::from_millis(100);
/// A pause in the input this long publishes the pending decisions at
/// once: at the end of a full table the last batch waited up to
/// [`MAX_PUBLISH_GAP`] with the BGP thread idle (a third of the interval
/// in a 100,000-route round from BIRD, `perf` timeline).
const QUIET_PUBLISH: Duration = Duration::from_millis(5);
/// A pause publishes no sooner than this many times the last
/// publication's cost after it.
const QUIET_FLOOR_FACTOR: u32 = 2;

/// One FIB batch's kernel route changes, shared by the `bgp-kernel` and
/// `bgp-save` threads (one copy for both).
type JobBatch = Arc<Vec<KernelJob>>;

fn token(peer: usize, id: ConnId) -> Token {
    Token(2 + peer * 2 + (id == ConnId::Inbound) as usize)
}

fn untoken(t: Token) -> (usize, ConnId) {
    let n = t.0 - 2;
    let id = if n % 2 == 1 {
        ConnId::Inbound
    } else {
        ConnId::Outbound
    };
    (n / 2, id)
}

impl Driver {
    fn run(&mut self) {
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut self.listener, LISTENER, Interest::READABLE)
        {
            log::error!("bgp: cannot poll the listener: {e}");
            return;
        }
        self.speaker.start_all(Instant::now());
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.speaker.poll(now);
            self.do_io();
            self.apply_fib_when_due(now);
            self.check_stale(now);
            self.check_restored(now);
            let timeout = if self.again.is_empty() {
                let next = [self.speaker.next_deadline(), self.fib_due()]
                    .into_iter()
                    .flatten()
                    .min();
                next.map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(now).min(Duration::from_secs(1))
                })
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("bgp: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {
                        if self.commands() {
                            return;
                        }
                    }
                    t => {
                        let key = untoken(t);
                        // A failed connect may show only as an error.
                        if ev.is_writable() || ev.is_error() {
                            self.writable(key);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.again.insert(key);
                        }
                    }
                }
            }
            let pending: Vec<_> = self.again.drain().collect();
            for key in pending {
                self.read(key);
                self.do_io();
            }
            self.apply_fib_when_due(Instant::now());
        }
    }

    /// Handles queued commands; true when told to stop.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            let now = Instant::now();
            match c {
                Command::Peers(tx) => {
                    let md5: Vec<bool> = self
                        .speaker
                        .cfg
                        .peers
                        .iter()
                        .map(|p| p.password.is_some())
                        .collect();
                    let mut rows = views::peers(&self.speaker, now, &md5);
                    let synced = self.kernel_synced_at();
                    for row in &mut rows {
                        let est = self
                            .speaker
                            .peer_index(row.address)
                            .and_then(|i| self.speaker.session(i).established_at());
                        let since = |at: Option<Instant>| {
                            est.zip(at)
                                .and_then(|(est, at)| at.checked_duration_since(est))
                                .map(|d| d.as_secs_f64() * 1e3)
                        };
                        row.established_to_last_install_ms = since(self.last_publish);
                        row.established_to_kernel_synced_ms = since(synced);
                        // Both clocks read together: `now` is older by
                        // the time the views took (about 20 ms at a
                        // million routes).
                        row.established_unix_ms = est.and_then(|e| {
                            let ago = Instant::now().saturating_duration_since(e);
                            let at = SystemTime::now().checked_sub(ago)?;
                            Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() * 1e3)
                        });
                    }
                    let _ = tx.send(rows);
                }
                Command::Rib(within, limit, tx) => {
                    let _ = tx.send(views::rib(&self.speaker, within, limit));
                }
                Command::SetLocalRoutes(routes, tx) => {
                    self.speaker.set_local_routes(now, routes);
                    self.do_io();
                    self.apply_fib();
                    let _ = tx.send(());
                }
                Command::SetPeers(peers, tx) => {
                    let _ = tx.send(self.set_peers(now, peers));
                }
                Command::Stop { graceful } => {
                    // Decisions not yet published go first (the saved
                    // routes follow the FIB).
                    self.apply_fib();
                    let why = if graceful {
                        "graceful restart"
                    } else {
                        "podrouterd is shutting down"
                    };
                    self.speaker.stop_all(now, why, graceful);
                    self.do_io();
                    if !graceful {
                        let changes = self.speaker.withdraw_all_from_fib();
                        let changes = self.plan_fib(changes);
                        if !changes.is_empty() {
                            self.fib.update(&changes);
                        }
                        self.send_kernel_jobs();
                    }
                    let keys: Vec<_> = self.socks.keys().copied().collect();
                    for k in keys {
                        self.close(k);
                    }
                    log::info!("bgp: stopped");
                    return true;
                }
            }
        }
        false
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    let peer = match addr {
                        SocketAddr::V4(a) => self.speaker.peer_index(*a.ip()),
                        SocketAddr::V6(a) => a
                            .ip()
                            .to_ipv4_mapped()
                            .and_then(|ip| self.speaker.peer_index(ip)),
                    };
                    let Some(peer) = peer else {
                        log::debug!("bgp: refusing connection from {addr}: not a configured peer");
                        drop(stream);
                        continue;
                    };
                    let key = (peer, ConnId::Inbound);
                    if let Some(mut old) = self.socks.remove(&key) {
                        let _ = self.poll.registry().deregister(&mut old.stream);
                    }
                    let mut stream = stream;
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token(peer, ConnId::Inbound),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("bgp: cannot poll connection from {addr}: {e}");
                        continue;
                    }
                    log::debug!("bgp: connection from {addr}");
                    self.socks.insert(
                        key,
                        Sock {
                            stream,
                            connecting: false,
                            out: Vec::new(),
                        },
                    );
                    self.speaker
                        .input(Instant::now(), peer, Input::Connected(ConnId::Inbound));
                    self.do_io();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("bgp: accept: {e}");
                    return;
                }
            }
        }
    }

    fn writable(&mut self, key: (usize, ConnId)) {
        let Some(s) = self.socks.get_mut(&key) else {
            return;
        };
        if s.connecting {
            let err = match s.stream.take_error() {
                Ok(Some(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
                Ok(None) => match s.stream.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == ErrorKind::NotConnected => return,
                    Err(e) => Some(e.to_string()),
                },
            };
            match err {
                None => {
                    s.connecting = false;
                    let _ = s.stream.set_nodelay(true);
                    self.speaker
                        .input(Instant::now(), key.0, Input::Connected(ConnId::Outbound));
                }
                Some(e) => {
                    self.drop_sock(key);
                    self.speaker
                        .input(Instant::now(), key.0, Input::ConnectFailed(e));
                }
            }
            self.do_io();
            return;
        }
        if let Err(e) = flush(s) {
            self.lost(key, e.to_string());
        }
    }

    fn read(&mut self, key: (usize, ConnId)) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(s) = self.socks.get_mut(&key) else {
                return;
            };
            if s.connecting {
                return;
            }
            match s.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.lost(key, "closed by peer".into());
                    return;
                }
                Ok(n) => {
                    // Acknowledge now rather than up to 40 ms later: a
                    // sender whose last segment of a burst is short holds
                    // it (Nagle) until our ACK; a delayed ACK stalled a
                    // BIRD sender's table for 40 ms (tcpdump).
                    let _ = sys::tcp_quickack(s.stream.as_fd());
                    let now = Instant::now();
                    self.speaker
                        .input(now, key.0, Input::Data(key.1, &self.buf[..n]));
                    // After the work: a pause is counted from here.
                    self.last_input = Instant::now();
                    self.do_io();
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.again.insert(key);
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lost(key, e.to_string());
                    return;
                }
            }
        }
    }

    /// A connection failed under us: tell the session.
    fn lost(&mut self, key: (usize, ConnId), why: String) {
        self.drop_sock(key);
        self.speaker
            .input(Instant::now(), key.0, Input::Closed(key.1, why));
        self.do_io();
    }

    fn drop_sock(&mut self, key: (usize, ConnId)) {
        if let Some(mut s) = self.socks.remove(&key) {
            let _ = self.poll.registry().deregister(&mut s.stream);
        }
        self.again.remove(&key);
    }

    /// Closes a connection after a short, bounded flush of what is queued.
    fn close(&mut self, key: (usize, ConnId)) {
        let Some(mut s) = self.socks.remove(&key) else {
            return;
        };
        self.again.remove(&key);
        let _ = self.poll.registry().deregister(&mut s.stream);
        if !s.out.is_empty() && !s.connecting {
            let std = std::net::TcpStream::from(OwnedFd::from(s.stream));
            let _ = std.set_nonblocking(false);
            let _ = std.set_write_timeout(Some(CLOSE_FLUSH));
            let _ = (&std).write_all(&s.out);
            let _ = std.shutdown(std::net::Shutdown::Both);
        } else {
            let _ = s.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Carries out the speaker's socket work until there is none.
    fn do_io(&mut self) {
        loop {
            let io = self.speaker.take_io();
            if io.is_empty() {
                return;
            }
            for (peer, o) in io {
                match o {
                    Output::Connect => self.connect(peer),
                    Output::CancelConnect => self.drop_sock((peer, ConnId::Outbound)),
                    Output::Send(id, bytes) => {
                        let key = (peer, id);
                        let Some(s) = self.socks.get_mut(&key) else {
                            continue;
                        };
                        s.out.extend_from_slice(&bytes);
                        let result = flush(s);
                        let over = s.out.len() > MAX_SEND_QUEUE;
                        match result {
                            Err(e) => self.lost(key, e.to_string()),
                            Ok(()) if over => {
                                self.lost(key, "peer is not reading (send queue full)".into())
                            }
                            Ok(()) => {}
                        }
                    }
                    Output::Close(id) => self.close((peer, id)),
                    Output::Route(_) | Output::State(_) => {}
                }
            }
        }
    }

    fn connect(&mut self, peer: usize) {
        let key = (peer, ConnId::Outbound);
        self.drop_sock(key);
        let spec = &self.speaker.cfg.peers[peer];
        let addr = SocketAddrV4::new(spec.session.peer, self.ends.peer_ports[peer]);
        let key_bytes = spec.password.as_ref().map(|p| p.as_bytes().to_vec());
        let local: Option<Ipv4Addr> = self.ends.local;
        let mut started = sys::tcp_connect_start(addr, local, key_bytes.as_deref());
        if let Err(e) = &started {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && local.is_some() {
                // The node IP is not on this host: let the kernel choose.
                started = sys::tcp_connect_start(addr, None, key_bytes.as_deref());
            }
        }
        let result = started.and_then(|std| {
            let mut stream = TcpStream::from_std(std);
            self.poll.registry().register(
                &mut stream,
                token(peer, ConnId::Outbound),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match result {
            Ok(stream) => {
                log::debug!("bgp {}: connecting", addr);
                self.socks.insert(
                    key,
                    Sock {
                        stream,
                        connecting: true,
                        out: Vec::new(),
                    },
                );
            }
            Err(e) => {
                self.speaker
                    .input(Instant::now(), peer, Input::ConnectFailed(e.to_string()));
            }
        }
    }

    /// A reload's peers: the speaker starts and stops sessions; here the
    /// listener's TCP MD5 keys, the remote ports, the sockets of stopped
    /// peers and the stale sweep (which no longer waits for them) follow.
    fn set_peers(&mut self, now: Instant, peers: Vec<(PeerSpec, u16)>) -> PeerChanges {
        let ports: HashMap<Ipv4Addr, u16> = peers
            .iter()
            .map(|(p, port)| (p.session.peer, *port))
            .collect();
        let specs = peers.into_iter().map(|(p, _)| p).collect();
        let (added, gone) = self.speaker.set_peers(now, specs);
        // Keys first removed, then set: a changed peer keeps its address.
        for &i in &gone {
            let spec = &self.speaker.cfg.peers[i];
            if spec.password.is_some() {
                // An empty key deletes the peer's key.
                if let Err(e) = sys::tcp_md5_set(self.listener.as_fd(), spec.session.peer, b"") {
                    log::warn!(
                        "bgp {}: cannot remove the TCP MD5 key: {e}",
                        spec.session.peer
                    );
                }
            }
            if let Some(st) = self.stale.as_mut() {
                st.note_eor(i);
            }
        }
        for &i in &added {
            let spec = &self.speaker.cfg.peers[i];
            let peer = spec.session.peer;
            self.ends
                .peer_ports
                .push(ports.get(&peer).copied().unwrap_or(179));
            if let Some(key) = &spec.password {
                if let Err(e) = sys::tcp_md5_set(self.listener.as_fd(), peer, key.as_bytes()) {
                    log::warn!("bgp {peer}: cannot set the TCP MD5 key on the listener: {e}");
                }
            }
        }
        // The stopped sessions' NOTIFICATIONs and closes, the new ones'
        // connects.
        self.do_io();
        for &i in &gone {
            for id in [ConnId::Outbound, ConnId::Inbound] {
                self.close((i, id));
            }
        }
        debug_assert_eq!(self.ends.peer_ports.len(), self.speaker.peer_count());
        self.apply_fib();
        let addr = |i: &usize| self.speaker.cfg.peers[*i].session.peer;
        let changes = PeerChanges {
            added: added.iter().map(addr).collect(),
            removed: gone.iter().map(addr).collect(),
        };
        for a in &changes.removed {
            log::info!("bgp {a}: peer removed by a reload, session stopped");
        }
        for a in &changes.added {
            log::info!("bgp {a}: peer added by a reload, session started");
        }
        changes
    }

    /// Notes End-of-RIBs and, once due, deletes the stale learned-block
    /// kernel routes BGP has not installed again. Runs on this thread, in
    /// order with the decisions: a prefix installed later gets its route
    /// from the `bgp-kernel` thread after this deletion.
    fn check_stale(&mut self, now: Instant) {
        let Some(st) = self.stale.as_mut() else {
            return;
        };
        for i in 0..self.speaker.peer_count() {
            if self.speaker.session(i).eor_received() {
                st.note_eor(i);
            }
        }
        let Some(why) = st.reason(now) else {
            return;
        };
        // Decisions still waiting for their FIB batch count as installed
        // for the sweep: publish them first.
        self.apply_fib();
        let Some(st) = self.stale.take() else {
            return;
        };
        let total = st.len();
        // A prefix that became one of our own blocks (a reload since the
        // start) now has our route, with the same identity: keep it.
        // In `per-pool` mode a re-learned block that the pool's route now
        // covers no longer has a route of its own: its old one goes.
        let speaker = &self.speaker;
        let plan = self.plan.as_ref();
        let gone = st.sweep(|p| {
            let relearned = match (speaker.installed_vias(p), plan) {
                (Some(v), Some(plan)) => plan.own_route(p, v),
                (Some(_), None) => true,
                (None, _) => false,
            };
            relearned || speaker.cfg.local_routes.contains(p)
        });
        let (deleted, failed) = stale::delete(&gone);
        log::info!(
            "bgp: {why}: {} of {total} stale learned-block kernel route(s) re-learned, \
             {deleted} deleted{}",
            total - gone.len(),
            if gone.is_empty() {
                String::new()
            } else {
                // The first few by name: a crash with a full table leaves
                // hundreds of thousands.
                let named = gone.len().min(STALE_NAMED);
                format!(
                    " ({}{})",
                    gone[..named]
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if gone.len() > named {
                        format!(" and {} more", gone.len() - named)
                    } else {
                        String::new()
                    }
                )
            }
        );
        let failures = failed.len();
        for f in failed.iter().take(STALE_NAMED) {
            log::warn!("bgp: deleting stale kernel route {f}");
        }
        if failures > STALE_NAMED {
            log::warn!("bgp: {failures} stale kernel route deletions failed");
        }
    }

    /// Hands the kernel route changes taken so far to the `bgp-kernel`
    /// and `bgp-save` threads (one shared copy).
    fn send_kernel_jobs(&mut self) {
        let jobs = self.speaker.take_kernel_jobs();
        if jobs.is_empty() {
            return;
        }
        let jobs = Arc::new(jobs);
        if let Some(k) = &self.kernel {
            if k.send(jobs.clone()).is_ok() {
                self.kernel_sent += 1;
            }
        }
        let _ = self.save.send(jobs);
    }

    /// When the node's kernel last caught up with every kernel route
    /// change handed over: `None` while the `bgp-kernel` thread is behind
    /// (or never applied a batch). Without kernel routes, the FIB's last
    /// publication.
    fn kernel_synced_at(&self) -> Option<Instant> {
        if self.kernel.is_none() {
            return self.last_publish;
        }
        let p = self.kernel_progress.lock().ok()?;
        (p.applied == self.kernel_sent).then_some(p.at).flatten()
    }

    /// Once due (as the stale kernel routes), runs the decision again for
    /// every adopted saved route: those no peer announced again leave the
    /// FIB (and their kernel routes go with the same batch).
    fn check_restored(&mut self, now: Instant) {
        let Some(r) = self.restored.as_mut() else {
            return;
        };
        for i in 0..self.speaker.peer_count() {
            if self.speaker.session(i).eor_received() {
                r.note_eor(i);
            }
        }
        let Some(why) = r.reason(now) else {
            return;
        };
        let r = self.restored.take().expect("checked");
        let prefixes = r.sweep(|_| false);
        let total = prefixes.len();
        self.speaker.recheck(prefixes.iter().copied());
        let gone = prefixes
            .iter()
            .filter(|p| self.speaker.rib().best(p).is_none() || self.speaker.filtered(p).is_some())
            .count();
        self.apply_fib();
        log::info!(
            "bgp: {why}: {} of {total} restored route(s) announced again, {gone} removed",
            total - gone
        );
    }

    /// When the decisions waiting for the FIB are due to be published:
    /// `None` without any, else [`PUBLISH_GAP_FACTOR`] times the last
    /// publication's cost after it, or [`QUIET_PUBLISH`] after the last
    /// input if that is sooner (but not before `quiet_floor`).
    fn fib_due(&self) -> Option<Instant> {
        self.speaker.fib_pending().then_some(
            self.next_publish
                .min((self.last_input + QUIET_PUBLISH).max(self.quiet_floor)),
        )
    }

    /// [`Driver::apply_fib`] once due ([`Driver::fib_due`]): in a burst of
    /// UPDATEs (a full table) the changes of many reads become one FIB
    /// batch. A publication copies every FIB shard the batch touches,
    /// about the whole table for a thousand scattered routes, so
    /// publishing per read made a table of N routes cost O(N^2 / 1000);
    /// spacing them by a multiple of their own cost keeps the BGP thread's
    /// time in publications at about a ninth of the burst, while a change
    /// after a quiet spell is published at once.
    fn apply_fib_when_due(&mut self, now: Instant) {
        if self.fib_due().is_some_and(|due| due > now) {
            return;
        }
        self.apply_fib();
    }

    /// The speaker's FIB changes under the kernel plan (a learned route to
    /// a covering pool's prefix gives its `Unreachable` entry back).
    fn plan_fib(&self, changes: Vec<FibChange>) -> Vec<FibChange> {
        match &self.plan {
            Some(plan) if !plan.covering().is_empty() => {
                changes.into_iter().map(|c| plan.fib_change(c)).collect()
            }
            _ => changes,
        }
    }

    /// Publishes the FIB changes of the decisions so far as one batch,
    /// then hands their kernel route changes and the saved-routes update
    /// to their threads: forwarding (the FIB) never waits for netlink or
    /// the file, and those threads do not compete with the batch for a
    /// CPU while it is built.
    fn apply_fib(&mut self) {
        let changes = self.speaker.take_fib_changes();
        let changes = self.plan_fib(changes);
        if !changes.is_empty() {
            let t = Instant::now();
            self.fib.update(&changes);
            let done = Instant::now();
            self.last_publish = Some(done);
            self.next_publish = done + ((done - t) * PUBLISH_GAP_FACTOR).min(MAX_PUBLISH_GAP);
            self.quiet_floor = done + (done - t) * QUIET_FLOOR_FACTOR;
            log::debug!(
                "bgp: FIB updated: {} changes in {:?}, {} BGP routes installed",
                changes.len(),
                done - t,
                self.speaker.installed()
            );
        }
        self.send_kernel_jobs();
    }
}

/// Writes what the connection has queued, until the socket would block.
fn flush(s: &mut Sock) -> io::Result<()> {
    if s.connecting {
        return Ok(());
    }
    let mut done = 0;
    while done < s.out.len() {
        match s.stream.write(&s.out[done..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    s.out.drain(..done);
    Ok(())
}

/// "a, b, c" (or "nothing").
fn list_text(prefixes: &[Prefix]) -> String {
    if prefixes.is_empty() {
        return "nothing".into();
    }
    prefixes
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
