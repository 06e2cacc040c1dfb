//! The node daemon's state and the handlers behind every API call: pods,
//! their ports, the FIB, the host routes and the workers.
//!
//! Invariants: a pod is in `pods` exactly when its port is in the port
//! table, its /32 is in the FIB and in the host's routing table, one worker
//! receives from it and its address is taken in IPAM; the state file
//! agrees once the batch of calls that changed it is committed
//! ([`commit`]: group commit, before any of them is answered). Every
//! handler either completes all of these or rolls back to where it
//! started. A config reload ([`Daemon::reload`], [`crate::reload`]) is
//! all or nothing too: refused with the running config untouched, or
//! applied to IPAM, the FIB, the kernel and BGP before `cfg` is replaced.
//!
//! The node's network (pod interfaces, the host port, host routes) is
//! reached only through [`NodeNet`]: [`KernelNet`] in podrouterd, a fake
//! in the tests below, which fail each step in turn and check that
//! nothing is left.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use podrouter_api::pending::{self, PendingDetach, PENDING_DETACH_DIR};
use podrouter_api::{
    check_ifname, AttachParams, Call, CountersInfo, ErrorCode, FlowCountersInfo, PodInfo,
    PortCountersInfo, PortStatusInfo, ReloadInfo, Reply, Response, RouteInfo, StatusInfo,
    TunnelCountersInfo, XskCountersInfo, API_VERSION,
};
use podrouter_router::afxdp::AfXdpPort;
use podrouter_router::capture::Taps;
use podrouter_router::clock;
use podrouter_router::conntrack::FlowTable;
use podrouter_router::counters::{self, WorkerCounters};
use podrouter_router::fib::{Fib, FibChange, NextHop};
use podrouter_router::pipeline::PipelineConfig;
use podrouter_router::policy::Policies;
use podrouter_router::port::{Port, PortEntry, PortId, PortInfo, PortRole, PortTable};
use podrouter_router::worker::{PortRelease, WorkerConfig, WorkerHandle};
use podrouter_router::{GATEWAY_IP, ROUTER_MAC};
use podrouter_types::Prefix;

use crate::call_error::CallError;
use crate::config::{Backend, Config, MTU_RANGE};
use crate::ipam::Ipam;
use crate::nodenet::{KernelNet, NodeNet, PodPort};
use crate::podnet::{PodInterfaceSpec, PodNetError};
use crate::policy::PolicyStore;
use crate::state::{PodRecord, StateError, StateStore};

mod commit;
mod policy_calls;
mod removal;
mod service_calls;
mod takeover;
mod taps;
mod umem;
mod uplink_xdp;

pub use commit::Uncommitted;
pub use removal::{InterfaceRemoval, RemovalDone};
pub use takeover::Handed;

/// First two bytes of every pod interface MAC podrouter assigns.
pub const POD_MAC_PREFIX: [u8; 2] = [0x0a, 0x58];

/// MAC of the host port's kernel side (locally administered).
pub const HOST_PORT_MAC: [u8; 6] = [0x02, 0x70, 0x72, 0x00, 0x00, 0x01];

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("host port: {0}")]
    HostPort(PodNetError),
    #[error("starting worker {0}: {1}")]
    Worker(usize, std::io::Error),
    #[error("uplink: {0}")]
    Uplink(String),
    #[error("bgp: {0}")]
    Bgp(std::io::Error),
    #[error("network policy state: {0}")]
    Policy(String),
    #[error("service state: {0}")]
    Service(String),
    /// The state holds live pods whose address is in no configured block
    /// (podrouterd exits 2: a configuration error, as `reload` refuses).
    #[error("{0}")]
    PodsOutsideBlocks(String),
    /// What a takeover handed over does not fit the state or the node.
    #[error("takeover: {0}")]
    Takeover(String),
}

impl StartError {
    /// podrouterd's exit status for this error: 2 for a configuration
    /// that contradicts the state, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::PodsOutsideBlocks(_) => 2,
            _ => 1,
        }
    }
}

/// The refusal to start when `records` hold pods outside every block of
/// `cidrs`, if any: a restart must not forget live pods (a reload refuses
/// the same change, [`crate::reload::blocks_in_use`]).
pub fn pods_outside_blocks(cidrs: &[Prefix], records: &[PodRecord]) -> Option<String> {
    let orphans: Vec<String> = records
        .iter()
        .filter(|r| !cidrs.iter().any(|c| c.contains(r.ip)))
        .map(|r| format!("{} ({})", r.id, r.ip))
        .collect();
    if orphans.is_empty() {
        return None;
    }
    Some(format!(
        "refusing to start: the state holds live pod{} whose address is in no pod_cidrs block: {}; \
         put their block back in pod_cidrs, start podrouterd and detach them first \
         (`podrouterctl detach ID`, or the runtime's CNI DEL), then remove the block",
        if orphans.len() == 1 { "" } else { "s" },
        orphans.join(", ")
    ))
}

/// Why a port could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the port table is full")]
    TableFull,
    #[error("worker {0}: {1}")]
    Worker(usize, std::io::Error),
}

struct Pod {
    record: PodRecord,
    port: PortId,
    worker: usize,
    /// The pod's AF_XDP port (afxdp backend), for its mode and counters.
    xdp: Option<Arc<AfXdpPort>>,
    /// Which namespace `record.netns` was when the pod was installed, to
    /// find a second attach into it without a stat per pod.
    netns_id: Option<NetnsId>,
}

pub struct Daemon {
    cfg: Config,
    /// The file `cfg` came from (`None`: embedded defaults), re-read by
    /// [`Daemon::reload`].
    config_path: Option<PathBuf>,
    fib: Arc<Fib>,
    ports: Arc<ArcSwap<PortTable>>,
    workers: Vec<WorkerHandle>,
    /// The flow table the workers share; swept here.
    flows: Arc<FlowTable>,
    pods: BTreeMap<String, Pod>,
    ipam: Ipam,
    store: StateStore,
    started: Instant,
    bgp: Option<crate::bgp::BgpHandle>,
    /// The IPIP uplink to other nodes, if this node has one.
    uplink: Option<crate::uplink_setup::UplinkState>,
    /// Pod interfaces, the host port and host routes (shared with the
    /// interface removals that run off the control thread).
    net: Arc<dyn NodeNet>,
    /// NetworkPolicy objects and pod/namespace identities (persisted).
    policy_store: PolicyStore,
    /// Their compiled form, as the workers read it.
    policies: Arc<Policies>,
    /// Service and EndpointSlice objects for the built-in load balancer
    /// (persisted).
    service_store: crate::service::ServiceStore,
    /// Their compiled form, as the workers read it.
    services: Arc<podrouter_router::service::Services>,
    /// Attach and detach calls: counts and latencies.
    attach_stats: crate::op_stats::OpStats,
    detach_stats: crate::op_stats::OpStats,
    /// Capture and trace taps the workers check ([`crate::tap_stream`]).
    taps: Arc<Taps>,
    /// Taken over from another podrouterd: its API listener, until the
    /// server takes it ([`Daemon::take_api_listener`]).
    inherited_api: Option<std::os::fd::OwnedFd>,
    /// Taken over: the restored learned routes BGP adopts once the old
    /// daemon has let go ([`Daemon::finish_takeover`]).
    deferred_bgp: Option<Vec<(Prefix, crate::kernel_job::Vias)>>,
    /// Handed over to another podrouterd: its data plane, interfaces and
    /// API socket are the new daemon's, [`Daemon::shutdown`] leaves them.
    handed_over: bool,
    /// What the calls handled since the last [`Daemon::commit`] changed
    /// and is not yet on disk or published.
    unwritten: commit::Unwritten,
    /// Detached pods' interface removals not done yet.
    removing: removal::InFlight,
}

type CallResult = Result<Reply, CallError>;

impl Daemon {
    /// Brings the node up: workers, host port, base routes, then every pod
    /// from the state file. `config_path` is where `cfg` was read from
    /// (what a reload reads again).
    pub fn start(cfg: Config, config_path: Option<PathBuf>) -> Result<Daemon, StartError> {
        Daemon::start_with(Box::new(KernelNet::for_config(&cfg)), cfg, config_path)
    }

    /// [`Daemon::start`] on the node network `net`.
    pub fn start_with(
        net: Box<dyn NodeNet>,
        cfg: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Daemon, StartError> {
        Daemon::start_inner(net, cfg, config_path, None)
    }

    /// [`Daemon::start_with`]; with `inherited` (a takeover, see
    /// [`takeover`]) the state lock, the uplink's socket and the API
    /// listener are the old daemon's, `net` hands out its TAPs, the
    /// workers start paused and BGP does not start: all of that waits for
    /// [`Daemon::finish_takeover`].
    fn start_inner(
        net: Box<dyn NodeNet>,
        cfg: Config,
        config_path: Option<PathBuf>,
        mut inherited: Option<takeover::Inherited>,
    ) -> Result<Daemon, StartError> {
        let begun = Instant::now();
        let store = match inherited.as_mut().and_then(|i| i.lock.take()) {
            Some(lock) => StateStore::adopt(&cfg.state_dir, lock)?,
            None => StateStore::open(&cfg.state_dir)?,
        };
        let records = store.load()?;
        if let Some(why) = pods_outside_blocks(&cfg.pod_cidrs, &records) {
            return Err(StartError::PodsOutsideBlocks(why));
        }
        if let Some(why) = inherited.as_ref().and_then(|i| i.unhanded(&records)) {
            return Err(StartError::Takeover(why));
        }
        // The pods' TAPs first, before anything else of the start: from
        // here on what a pod sends waits in its TAP's queue (and the TAP
        // has carrier again) instead of being dropped while no process
        // holds it; the workers read it once the pod is installed below.
        // Not for AF_XDP ports (they join a worker's receive pool) nor a
        // takeover (its TAPs come from the old daemon).
        let early = cfg.dataplane.backend == Backend::Tap && inherited.is_none();
        let reopened = early.then(|| reopen_pod_interfaces(&*net, &records));
        let policy_store = PolicyStore::open(&cfg.state_dir).map_err(StartError::Policy)?;
        let policies = Arc::new(Policies::new());
        let service_store = crate::service::ServiceStore::open(&cfg.state_dir, &cfg.node_name)
            .map_err(StartError::Service)?;
        let services = Arc::new(podrouter_router::service::Services::new());
        let fib = Arc::new(Fib::new());
        let ports = Arc::new(ArcSwap::from_pointee(PortTable::default()));
        let pipeline = PipelineConfig {
            router_mac: ROUTER_MAC,
            node_ip: cfg.node_ip.unwrap_or(GATEWAY_IP),
            icmp_rate_per_sec: cfg.dataplane.icmp_rate,
            icmp_burst: cfg.dataplane.icmp_burst,
            arp_rate_per_sec: PipelineConfig::DEFAULT_ARP_RATE_PER_SEC,
            arp_burst: PipelineConfig::DEFAULT_ARP_BURST,
        };
        if cfg.node_ip.is_none() {
            log::warn!("node_ip is not set: ICMP errors will come from {GATEWAY_IP}");
        }
        let flows = Arc::new(FlowTable::new(
            cfg.dataplane.flow_table_size,
            cfg.dataplane.flow_timeouts.timeouts(),
        ));
        let taps = Arc::new(Taps::new());
        let path_mtus = Arc::new(podrouter_router::pmtu::PathMtus::new());
        let mut workers = Vec::new();
        for id in 0..cfg.dataplane.workers {
            let wc = WorkerConfig {
                id,
                core: cfg.dataplane.cores.get(id).copied(),
                batch_size: cfg.dataplane.batch_size,
                pipeline: pipeline.clone(),
                flows: flows.clone(),
                policies: policies.clone(),
                services: services.clone(),
                taps: taps.clone(),
                path_mtus: path_mtus.clone(),
                busy_poll: std::time::Duration::from_micros(cfg.dataplane.busy_poll_us.into()),
                busy_poll_max: std::time::Duration::from_micros(
                    cfg.dataplane.busy_poll_max_us.into(),
                ),
                slice: std::time::Duration::from_micros(cfg.dataplane.worker_slice_us.into()),
                rt_priority: cfg.dataplane.worker_rt_priority,
            };
            let w = WorkerHandle::spawn(wc, fib.clone(), ports.clone())
                .map_err(|e| StartError::Worker(id, e))?;
            // Before any port. A takeover's: the old daemon still reads
            // them. A start with the TAPs re-opened early: no pod's frame
            // is forwarded before every pod, policy and Service is in
            // place (a frame to a pod not installed yet would be
            // dropped), see the resume below.
            if inherited.is_some() || early {
                w.pause()
                    .and_then(|p| p.wait())
                    .map_err(|e| StartError::Worker(id, e))?;
            }
            workers.push(w);
        }
        let mut d = Daemon {
            ipam: Ipam::new(&cfg.pod_cidrs),
            cfg,
            config_path,
            fib,
            ports,
            workers,
            flows,
            pods: BTreeMap::new(),
            store,
            started: Instant::now(),
            bgp: None,
            uplink: None,
            net: Arc::from(net),
            policy_store,
            policies,
            service_store,
            services,
            attach_stats: Default::default(),
            detach_stats: Default::default(),
            taps,
            inherited_api: None,
            deferred_bgp: None,
            handed_over: false,
            unwritten: Default::default(),
            removing: Default::default(),
        };
        d.start_host_port()?;
        let uplink_fd = inherited.as_mut().and_then(|i| i.uplink.take());
        if let Some((u, info)) =
            crate::uplink_setup::open(&d.cfg, &path_mtus, uplink_fd).map_err(StartError::Uplink)?
        {
            d.publish_port(info, u.port.clone(), None)
                .map_err(|e| StartError::Uplink(format!("port table: {e}")))?;
            d.uplink = Some(u);
        }
        d.install_base_routes();
        // Learned routes before the pods' ports forward their first packet.
        let learned = crate::bgp::restore_saved(&d.cfg, &d.fib);
        d.restore(records, reopened);
        d.store.save(&d.records())?;
        d.publish_policy();
        d.publish_services();
        if let Some(i) = inherited {
            d.inherited_api = Some(i.api);
            d.deferred_bgp = Some(learned);
        } else {
            // What the pods sent since their TAPs were re-opened waited in
            // the TAPs' queues; it goes now, to ports that are all there.
            if early {
                for w in &d.workers {
                    w.resume().map_err(|e| StartError::Worker(w.id, e))?;
                }
            }
            log::info!(
                "forwarding again {:.1} ms after the state was opened",
                ms(begun.elapsed())
            );
            d.process_pending_detaches();
            d.commit(&mut []);
            let kernel = d.uplink.clone();
            d.bgp = crate::bgp::BgpHandle::start(&d.cfg, d.fib.clone(), kernel, learned)
                .map_err(StartError::Bgp)?;
        }
        log::info!(
            "node {} up: {} worker(s), pod CIDRs {}, {} pod(s) restored, API on {}",
            d.cfg.node_name,
            d.workers.len(),
            d.cidrs_text().join(", "),
            d.pods.len(),
            d.cfg.api_socket.display()
        );
        Ok(d)
    }

    fn cidrs_text(&self) -> Vec<String> {
        self.cfg.pod_cidrs.iter().map(|c| c.to_string()).collect()
    }

    fn start_host_port(&mut self) -> Result<(), StartError> {
        let (name, mtu) = (self.cfg.dataplane.host_port.clone(), self.cfg.dataplane.mtu);
        let tap = self
            .net
            .host_port(&name, HOST_PORT_MAC, mtu)
            .map_err(StartError::HostPort)?;
        let info = PortInfo {
            name: name.clone(),
            role: PortRole::Host { mac: HOST_PORT_MAC },
            mtu,
        };
        let (id, _) = self
            .publish_port(info, tap, None)
            .map_err(|e| StartError::HostPort(PodNetError::Other(format!("port table: {e}"))))?;
        log::info!("host port {name} is port {}", id.0);
        Ok(())
    }

    /// Default to the host, our own blocks unreachable unless a pod has the
    /// address, static routes to other nodes; and the node's kernel sends
    /// our blocks to the host port.
    fn install_base_routes(&mut self) {
        let mut changes = vec![FibChange::Insert(
            Prefix::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0"),
            NextHop::Host,
        )];
        for c in &self.cfg.pod_cidrs {
            changes.push(FibChange::Insert(*c, NextHop::Unreachable));
        }
        for r in &self.cfg.routes {
            changes.push(FibChange::Insert(r.prefix, NextHop::Node(r.via)));
        }
        self.fib.update(&changes);
        crate::uplink_setup::install_node_routes(&self.cfg, self.uplink.as_ref());
        for c in &self.cfg.pod_cidrs {
            if let Err(e) = self.net.host_route_add(*c, &self.cfg.dataplane.host_port) {
                log::warn!(
                    "cannot route {c} to {} on the node: {e}",
                    self.cfg.dataplane.host_port
                );
            }
        }
    }

    /// Installs the pods of the last run: their interfaces re-opened
    /// already (`reopened`, in `records`' order: see
    /// [`reopen_pod_interfaces`]) or re-opened now, one by one.
    fn restore(
        &mut self,
        records: Vec<PodRecord>,
        reopened: Option<Vec<Result<PodPort, PodNetError>>>,
    ) {
        let mut reopened = reopened.map(Vec::into_iter);
        for r in records {
            let early = reopened.as_mut().and_then(Iterator::next);
            if let Err(e) = self.ipam.reserve(r.ip) {
                log::warn!("pod {}: dropped from state: {e}", r.id);
                continue;
            }
            let opened = match early {
                Some(opened) => opened,
                None => self
                    .net
                    .attach_pod_interface(&spec_of(&r, self.least_loaded_worker())),
            };
            let port = match opened {
                Ok(p) => p,
                Err(e) => {
                    log::warn!(
                        "pod {}: cannot re-open {} in {}: {e}; forgetting it and releasing {}",
                        r.id,
                        r.ifname,
                        r.netns.display(),
                        r.ip
                    );
                    self.ipam.release(r.ip);
                    self.forget_host_route(&r);
                    continue;
                }
            };
            let kept = r.clone();
            match self.install(r, port) {
                Ok(()) => log::info!("pod {}: restored", kept.id),
                Err(e) => {
                    log::warn!(
                        "pod {}: cannot restore: {e}; forgetting it and releasing {}",
                        kept.id,
                        kept.ip
                    );
                    self.ipam.release(kept.ip);
                    self.forget_host_route(&kept);
                }
            }
        }
    }

    /// Removes the node's route to a pod being forgotten at start (left by
    /// the previous run), best effort.
    fn forget_host_route(&self, r: &PodRecord) {
        let host = Prefix::new(r.ip, 32).expect("/32");
        if let Err(e) = self.net.host_route_del(host, &self.cfg.dataplane.host_port) {
            log::warn!("pod {}: removing the node's route to {}: {e}", r.id, r.ip);
        }
    }

    fn records(&self) -> Vec<PodRecord> {
        self.pods.values().map(|p| p.record.clone()).collect()
    }

    /// Adds a port to the published table and hands it to `worker` (the one
    /// whose receive pool an AF_XDP port joined) or else the least loaded
    /// worker; returns its id and the worker. A port with more receive
    /// queues (`Port::rx_queues`: the host port, the VXLAN uplink and a
    /// pod's TAP with `workers` > 1) gives one to each following worker,
    /// under the same id; [`Daemon::uninstall`] takes a pod's back from
    /// every worker.
    fn publish_port(
        &mut self,
        info: PortInfo,
        port: Arc<dyn Port>,
        worker: Option<usize>,
    ) -> Result<(PortId, usize), PublishError> {
        let table = self.ports.load_full();
        let id = table.free_id().ok_or(PublishError::TableFull)?;
        for w in &self.workers {
            w.counters.reset_port(id);
        }
        self.ports.store(Arc::new(table.with(
            id,
            PortEntry {
                info,
                port: port.clone(),
            },
        )));
        let worker = worker
            .filter(|w| *w < self.workers.len())
            .unwrap_or_else(|| self.least_loaded_worker());
        let queues = port.rx_queues();
        if let Err(e) = self.workers[worker].add_port(id, port) {
            self.ports.store(Arc::new(self.ports.load().without(id)));
            return Err(PublishError::Worker(worker, e));
        }
        let n = self.workers.len();
        // One queue per worker at most: a worker watches a port id once.
        for (k, q) in queues.into_iter().take(n.saturating_sub(1)).enumerate() {
            let w = (worker + 1 + k) % n;
            if let Err(e) = self.workers[w].add_rx_queue(id, q) {
                log::warn!(
                    "port {}: worker {w} cannot take receive queue {}: {e}",
                    id.0,
                    k + 1
                );
            }
        }
        Ok((id, worker))
    }

    fn least_loaded_worker(&self) -> usize {
        (0..self.workers.len())
            .min_by_key(|i| self.workers[*i].port_count())
            .unwrap_or(0)
    }

    /// Makes a pod forwardable: port, worker, FIB, host route. Rolls back
    /// on failure.
    fn install(&mut self, r: PodRecord, pod_port: PodPort) -> Result<(), CallError> {
        let info = PortInfo {
            name: format!("{}@{}", r.ifname, r.id),
            role: PortRole::Pod {
                ip: r.ip,
                mac: r.mac,
            },
            mtu: r.mtu,
        };
        let (port, worker) = self
            .publish_port(info, pod_port.port, pod_port.worker)
            .map_err(CallError::Port)?;
        let host = Prefix::new(r.ip, 32).expect("/32");
        self.fib
            .update(&[FibChange::Insert(host, NextHop::Local(port))]);
        if let Err(source) = self.net.host_route_add(host, &self.cfg.dataplane.host_port) {
            self.fib.update(&[FibChange::Remove(host)]);
            let _ = self.workers[worker].remove_port(port);
            self.ports.store(Arc::new(self.ports.load().without(port)));
            return Err(CallError::HostRoute { ip: r.ip, source });
        }
        self.pods.insert(
            r.id.clone(),
            Pod {
                netns_id: netns_id(&r.netns),
                record: r,
                port,
                worker,
                xdp: pod_port.xdp,
            },
        );
        Ok(())
    }

    /// Stops forwarding for a pod and removes its routes; the interface and
    /// the address are the caller's business.
    fn uninstall(&mut self, id: &str) -> Option<PodRecord> {
        let (record, port, release) = self.start_uninstall(id)?;
        wait_port_release(&record.id, release);
        self.forget_port(port);
        Some(record)
    }

    /// [`Daemon::uninstall`] without waiting for the pod's worker: the pod
    /// is gone from `pods`, the FIB and the host routes, its worker has
    /// been asked to let go of its port. The port stays in the port table
    /// (no route leads to it) so that its id is not handed to a new pod
    /// while a worker may still receive from it; the caller waits for the
    /// release, then [`Daemon::forget_port`].
    fn start_uninstall(&mut self, id: &str) -> Option<(PodRecord, PortId, Option<PortRelease>)> {
        let pod = self.pods.remove(id)?;
        let host = Prefix::new(pod.record.ip, 32).expect("/32");
        self.fib.update(&[FibChange::Remove(host)]);
        let mut release = match self.workers[pod.worker].start_remove_port(pod.port) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("pod {id}: worker {}: {e}", pod.worker);
                None
            }
        };
        // A multi-queue pod TAP (`workers` > 1) left a receive queue on
        // the other workers: they let go too (one holding none, at once).
        for (w, worker) in self.workers.iter_mut().enumerate() {
            if w == pod.worker {
                continue;
            }
            match worker.start_remove_rx_queue(pod.port) {
                Ok(r) => {
                    release = Some(match release.take() {
                        Some(all) => all.and(r),
                        None => r,
                    })
                }
                Err(e) => log::warn!("pod {id}: worker {w}: {e}"),
            }
        }
        if let Err(e) = self.net.host_route_del(host, &self.cfg.dataplane.host_port) {
            log::warn!("pod {id}: removing host route: {e}");
        }
        Some((pod.record, pod.port, release))
    }

    /// Drops a port no worker uses any more from the port table.
    fn forget_port(&mut self, port: PortId) {
        self.ports.store(Arc::new(self.ports.load().without(port)));
    }

    /// Housekeeping between events (at least once a second): frees FIB
    /// snapshots readers have let go and expired flows.
    pub fn tick(&mut self) {
        self.fib.reclaim();
        self.flows.sweep(clock::now_ms());
    }

    /// Answers one API call, doing all of its work here (a detach's
    /// interface removal included).
    pub fn handle(&mut self, call: Call) -> Response {
        let (response, removal) = self.handle_call(call);
        if let Some(r) = removal {
            self.removal_done(r.run());
        }
        response
    }

    /// Answers one API call, its changes durable (a batch of one: see
    /// [`Daemon::call_uncommitted`] and [`Daemon::commit`] for more),
    /// leaving a detach's interface removal (the slow part, ~20 ms of
    /// kernel work) to the caller: it must run it
    /// ([`InterfaceRemoval::run`], on any thread) before it delivers the
    /// response, then hand the outcome back to [`Daemon::removal_done`].
    pub fn handle_call(&mut self, call: Call) -> (Response, Option<InterfaceRemoval>) {
        self.call_committed(call)
    }

    /// [`Daemon::handle_call`] without the commit: the state file, the
    /// pods' identities and the compiled policy are left to
    /// [`Daemon::commit`].
    fn handle_in_memory(&mut self, call: Call) -> (Response, Option<InterfaceRemoval>) {
        // Attaches and detaches are counted at their commit.
        if let Call::Detach(p) = &call {
            let orphan = p.netns.as_deref().zip(p.ifname.as_deref());
            return match self.detach(&p.id, orphan) {
                Ok((reply, removal)) => (Response::ok(reply), removal),
                Err(e) => (e.response(), None),
            };
        }
        (self.handle_now(call), None)
    }

    fn handle_now(&mut self, call: Call) -> Response {
        let result = match call {
            Call::Status => Ok(Reply::Status(self.status())),
            Call::ListPods => Ok(Reply::Pods(
                self.pods.values().map(|p| self.pod_info(p)).collect(),
            )),
            Call::Attach(p) => self.attach(p),
            Call::Detach(p) => {
                // handle_call takes detaches; this is its inline form.
                let orphan = p.netns.as_deref().zip(p.ifname.as_deref());
                self.detach(&p.id, orphan).map(|(reply, removal)| {
                    if let Some(r) = removal {
                        self.removal_done(r.run());
                    }
                    reply
                })
            }
            Call::Routes => Ok(Reply::Routes(self.routes())),
            Call::Counters => Ok(Reply::Counters(self.counters())),
            Call::BgpPeers => self.bgp_call(|b| b.peers().map(Reply::BgpPeers)),
            Call::Reload => self.reload().map(Reply::Reloaded),
            Call::BgpRib(p) => {
                let within = match p.prefix.as_deref().map(str::parse::<Prefix>) {
                    None => None,
                    Some(Ok(w)) => Some(w),
                    Some(Err(e)) => return CallError::BadPrefix(e.to_string()).response(),
                };
                // Keep the response well under the API's 1 MiB line limit.
                let limit = p.limit.unwrap_or(1000).min(crate::bgp::RIB_ROWS_MAX);
                self.bgp_call(|b| b.rib(within, limit).map(Reply::BgpRib))
            }
            call @ (Call::PolicyApply(_)
            | Call::PolicyDelete(_)
            | Call::PolicyList
            | Call::PolicyShow(_)
            | Call::PodLabel(_)
            | Call::NamespaceLabel(_)
            | Call::EndpointApply(_)
            | Call::EndpointDelete(_)
            | Call::EndpointList) => self.policy_call(call),
            call @ (Call::ServiceApply(_) | Call::ServiceDelete(_) | Call::ServiceList) => {
                self.service_call(call)
            }
            Call::Capture(_) | Call::Trace(_) => {
                return Response::err(
                    ErrorCode::BadRequest,
                    "capture and trace stream over their own API connection (podrouterctl capture, trace)",
                )
            }
            Call::Takeover(_) => {
                return Response::err(
                    ErrorCode::BadRequest,
                    "a takeover is podrouterd --takeover's exchange on its own API connection",
                )
            }
        };
        match result {
            Ok(r) => Response::ok(r),
            Err(e) => e.response(),
        }
    }

    /// Re-reads the config file and applies what may change at runtime,
    /// all or nothing: see [`crate::reload::reload`].
    pub fn reload(&mut self) -> Result<ReloadInfo, CallError> {
        let pods = self
            .pods
            .values()
            .map(|p| (p.record.id.clone(), p.record.ip))
            .collect();
        let node = crate::reload::Node {
            cfg: &mut self.cfg,
            ipam: &mut self.ipam,
            fib: &self.fib,
            net: &*self.net,
            bgp: self.bgp.as_ref(),
            pods,
        };
        Ok(crate::reload::reload(node, self.config_path.as_deref())?)
    }

    fn bgp_call(
        &self,
        f: impl FnOnce(&crate::bgp::BgpHandle) -> Result<Reply, String>,
    ) -> CallResult {
        let b = self.bgp.as_ref().ok_or(CallError::NoBgp)?;
        f(b).map_err(CallError::Bgp)
    }

    fn status(&self) -> StatusInfo {
        StatusInfo {
            node_name: self.cfg.node_name.clone(),
            node_ip: self.cfg.node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            pod_cidrs: self.cidrs_text(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: API_VERSION,
            backend: self.cfg.dataplane.backend.to_string(),
            encap: self.cfg.dataplane.encap.to_string(),
            tunnel: self.cfg.dataplane.tunnel.to_string(),
            vxlan: self.uplink.as_ref().and_then(|u| match u.tunnel {
                podrouter_router::port::Tunnel::Vxlan(p) => Some(podrouter_api::VxlanInfo {
                    port: p.port,
                    vni: p.vni,
                    vtep_mac: mac_text(p.mac),
                    uplink: u.ifname.clone(),
                }),
                podrouter_router::port::Tunnel::Ipip => None,
            }),
            workers: self.workers.len(),
            pods: self.pods.len(),
            routes: self.fib.load().len(),
            // An address whose pod's interface removal is still in flight
            // counts as free: an attach that needs it waits for it
            // (removal::InFlight), as if the detach had.
            free_addresses: self.ipam.free() + self.removing.len() as u64,
            uptime_secs: self.started.elapsed().as_secs(),
            ports: self
                .pods
                .values()
                .map(|p| PortStatusInfo {
                    port: p.port.0,
                    name: format!("{}@{}", p.record.ifname, p.record.id),
                    backend: if p.xdp.is_some() { "afxdp" } else { "tap" }.into(),
                    xdp_mode: p.xdp.as_ref().map(|x| x.mode().to_string()),
                    xdp_prog_id: p.xdp.as_ref().map(|x| x.prog_id()),
                    xdp_ifname: p.xdp.as_ref().map(|x| x.ifname().to_string()),
                })
                .chain(self.uplink_xdp_status())
                .collect(),
            path_mtus: self
                .uplink
                .as_ref()
                .map(|u| {
                    u.path_mtus
                        .snapshot()
                        .iter()
                        .map(|(node, mtu)| podrouter_api::PathMtuInfo { node, mtu })
                        .collect()
                })
                .unwrap_or_default(),
            // Filled in by the API server, which owns these figures.
            api: None,
            ipip_gso: self.ipip_gso_status(),
            afxdp_umem: self.umem_status(),
        }
    }

    fn pod_info(&self, p: &Pod) -> PodInfo {
        let r = &p.record;
        PodInfo {
            id: r.id.clone(),
            netns: r.netns.display().to_string(),
            ifname: r.ifname.clone(),
            ip: r.ip,
            mac: mac_text(r.mac),
            mtu: r.mtu,
            port: p.port.0,
            worker: p.worker,
        }
    }

    fn attach(&mut self, p: AttachParams) -> CallResult {
        let start = Instant::now();
        validate_id(&p.id)?;
        check_ifname(&p.ifname)?;
        if let Some(i) = &p.identity {
            crate::policy::validate_identity(i).map_err(|e| CallError::Identity {
                id: p.id.clone(),
                source: e,
            })?;
        }
        if self.pods.contains_key(&p.id) {
            return Err(CallError::AlreadyAttached(p.id));
        }
        let netns = PathBuf::from(&p.netns);
        if !netns.is_absolute() || !netns.exists() {
            return Err(CallError::NetnsNotFound(p.netns));
        }
        if is_own_netns(&netns) {
            return Err(CallError::OwnNetns(p.netns));
        }
        if let Some(other) = self.pod_in_netns(&netns) {
            return Err(CallError::NetnsHasPod {
                netns: p.netns,
                pod: other.record.id.clone(),
                ifname: other.record.ifname.clone(),
            });
        }
        let mtu = p.mtu.unwrap_or(self.cfg.dataplane.mtu);
        if !MTU_RANGE.contains(&mtu) {
            return Err(CallError::MtuOutOfRange {
                mtu,
                min: *MTU_RANGE.start(),
                max: *MTU_RANGE.end(),
            });
        }
        let afxdp_max = podrouter_router::afxdp::MAX_POD_MTU;
        if self.cfg.dataplane.backend == Backend::Afxdp && mtu > afxdp_max {
            return Err(CallError::MtuAboveAfxdp {
                mtu,
                max: afxdp_max,
            });
        }
        let ip = match p.ip {
            Some(ip) => self.ipam.reserve(ip).map(|()| ip),
            None => self.ipam.allocate(),
        }?;
        let record = PodRecord {
            id: p.id.clone(),
            netns,
            ifname: p.ifname.clone(),
            ip,
            mac: pod_mac(ip),
            mtu,
        };
        let spec = spec_of(&record, self.least_loaded_worker());
        let checked = Instant::now();
        let port = match self.net.create_pod_interface(&spec) {
            Ok(p) => p,
            Err(source) => {
                self.ipam.release(ip);
                return Err(CallError::Interface { id: p.id, source });
            }
        };
        let created = Instant::now();
        if let Err(e) = self.install(record.clone(), port) {
            self.discard_interface(&record);
            self.ipam.release(ip);
            return Err(e);
        }
        let installed = Instant::now();
        // The state file, the identity and the policy follow at the commit
        // of this call's batch, before the answer leaves.
        self.unwritten.state = true;
        self.unwritten
            .identities
            .push((record.id.clone(), p.identity.clone()));
        self.unwritten.policy = true;
        log::info!(
            "pod {}: attached {} {}/32 in {} (port {}; checks and IPAM {:.2} ms, \
             interface {:.2} ms, data plane and host route {:.2} ms)",
            record.id,
            record.ifname,
            ip,
            record.netns.display(),
            self.pods[&record.id].port.0,
            ms(checked - start),
            ms(created - checked),
            ms(installed - created),
        );
        Ok(Reply::Pod(self.pod_info(&self.pods[&record.id])))
    }

    /// The pod already attached in the namespace at `netns`, if any.
    ///
    /// podrouter gives a pod one interface: its routes (`169.254.1.1 dev
    /// IF`, `default via 169.254.1.1`) are the namespace's, so a second
    /// interface would take them over and its detach would leave the first
    /// pod without any. A second attach into the namespace is refused.
    fn pod_in_netns(&self, netns: &Path) -> Option<&Pod> {
        let id = netns_id(netns)?;
        // The cached identity may be stale (a namespace deleted without a
        // detach, its inode number reused): confirm on the pod's own path.
        self.pods
            .values()
            .filter(|p| p.netns_id == Some(id))
            .find(|p| netns_id(&p.record.netns) == Some(id))
    }

    fn discard_interface(&self, r: &PodRecord) {
        if let Err(e) = self.net.delete_pod_interface(&r.netns, &r.ifname) {
            log::warn!("pod {}: removing {}: {e}", r.id, r.ifname);
        }
    }

    /// Detaches a known pod; for an unknown id with `orphan` (netns, ifname)
    /// given, removes a podrouter interface left there by an attach that
    /// was cut short (a crash between creating it and saving the state).
    ///
    /// A known pod leaves the data plane and the host routes here, the
    /// state file and the policy identities at its batch's commit; its
    /// interface's removal is returned for the caller to run (after the
    /// answer), and its address stays taken until that is done
    /// ([`Daemon::removal_done`]), so no new pod gets it while the old
    /// interface (and the afxdp backend's node-side veth named after the
    /// address) still exists.
    fn detach(
        &mut self,
        id: &str,
        orphan: Option<(&str, &str)>,
    ) -> Result<(Reply, Option<InterfaceRemoval>), CallError> {
        let start = Instant::now();
        let Some((record, port, release)) = self.start_uninstall(id) else {
            let Some((netns, ifname)) = orphan else {
                return Err(CallError::NoSuchPod(id.to_string()));
            };
            check_ifname(ifname)?;
            return match self.delete_orphan_interface(Path::new(netns), ifname) {
                Ok(removed) => {
                    if removed {
                        log::info!("{id}: removed orphaned interface {ifname} in {netns}");
                    }
                    Ok((Reply::Detached { id: id.to_string() }, None))
                }
                Err(source) => Err(CallError::Orphan {
                    id: id.to_string(),
                    source,
                }),
            };
        };
        // The state file, the identity and the policy follow at the commit
        // of this call's batch, before the answer leaves.
        self.unwritten.state = true;
        self.unwritten.identities.push((id.to_string(), None));
        self.unwritten.policy = true;
        let steps = format!("data plane and host route {:.2} ms", ms(start.elapsed()));
        let removal = InterfaceRemoval::new(record, port, release, self.net.clone(), steps);
        self.removing.add(&removal);
        Ok((Reply::Detached { id: id.to_string() }, Some(removal)))
    }

    /// Ends a detach whose interface removal has run: frees the address.
    pub fn removal_done(&mut self, done: RemovalDone) {
        self.removing.done(&done);
        self.forget_port(done.port);
        self.ipam.release(done.ip);
        log::info!(
            "pod {}: detached, released {} ({}, interface removal {:.2} ms)",
            done.id,
            done.ip,
            done.steps,
            ms(done.removal)
        );
    }

    /// Removes `ifname` in `netns` if it is a pod interface podrouter made
    /// (MAC 0a:58:...) and no known pod owns it. Returns whether it did.
    fn delete_orphan_interface(&self, netns: &Path, ifname: &str) -> Result<bool, PodNetError> {
        let owned = self
            .pods
            .values()
            .any(|p| p.record.netns == netns && p.record.ifname == ifname);
        // A detached pod's interface still being removed there is not an
        // orphan: its removal (which waits for the worker) takes it.
        if owned || !netns.exists() || self.removing.in_netns(netns) {
            return Ok(false);
        }
        match self.net.interface_mac(netns, ifname)? {
            Some(mac) if mac[..2] == POD_MAC_PREFIX => {
                self.net.delete_pod_interface(netns, ifname)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Finishes detaches the CNI plugin could not deliver while the daemon
    /// was down: one file per attachment in `state_dir/pending-detach`, in
    /// the format of [`podrouter_api::pending`]. Each file is removed once
    /// handled; one that cannot be parsed is renamed `.bad-<name>` and kept
    /// for inspection.
    fn process_pending_detaches(&mut self) {
        let dir = self.cfg.state_dir.join(PENDING_DETACH_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                log::warn!("pending detaches in {}: {e}", dir.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !pending::is_entry(&name) {
                continue;
            }
            let path = entry.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| PendingDetach::parse(&b).map_err(|e| e.to_string()));
            let p = match parsed {
                Ok(p) => p,
                Err(e) => {
                    log::warn!(
                        "pending detach {}: unreadable ({e}); kept as .bad-{name}",
                        path.display()
                    );
                    let _ = std::fs::rename(&path, dir.join(format!(".bad-{name}")));
                    continue;
                }
            };
            let matches = self
                .pods
                .get(&p.id)
                .map(|pod| p.matches(&self.pod_info(pod)));
            let outcome = match matches {
                Some(true) => self.detach(&p.id, None).map(|(_, removal)| {
                    if let Some(r) = removal {
                        self.removal_done(r.run());
                    }
                    "detached"
                }),
                Some(false) => Ok("id now belongs to another attachment; left alone"),
                None => match &p.netns {
                    Some(netns) => {
                        self.detach(&p.id, Some((netns, &p.ifname)))
                            .map(|(_, removal)| {
                                if let Some(r) = removal {
                                    self.removal_done(r.run());
                                }
                                "no such pod; leftover interface removed if any"
                            })
                    }
                    None => Ok("no such pod"),
                },
            };
            match outcome {
                Ok(what) => log::info!("pending detach {}: {what}", p.id),
                Err(e) => log::warn!("pending detach {}: {e}", p.id),
            }
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("pending detach {}: cannot remove: {e}", path.display());
            }
        }
    }

    fn routes(&self) -> Vec<RouteInfo> {
        let ports = self.ports.load();
        let table = self.fib.load();
        table
            .routes()
            .into_iter()
            .map(|(prefix, nh)| {
                let vias = table.next_hop_nodes(nh);
                let (next_hop, port, via) = match nh {
                    NextHop::Local(id) => (
                        "local",
                        Some(
                            ports
                                .get(id)
                                .map_or_else(|| format!("port{}", id.0), |e| e.info.name.clone()),
                        ),
                        None,
                    ),
                    NextHop::Host => ("host", Some(self.cfg.dataplane.host_port.clone()), None),
                    NextHop::Node(ip) => (
                        "node",
                        crate::uplink_setup::route_port(
                            self.uplink.as_ref(),
                            &self.cfg.dataplane.host_port,
                            ip,
                        ),
                        Some(ip),
                    ),
                    NextHop::Nodes(_) => {
                        // Each member's port; one name when they agree.
                        let mut names: Vec<String> = vias
                            .iter()
                            .filter_map(|ip| {
                                crate::uplink_setup::route_port(
                                    self.uplink.as_ref(),
                                    &self.cfg.dataplane.host_port,
                                    *ip,
                                )
                            })
                            .collect();
                        names.sort();
                        names.dedup();
                        let port = (!names.is_empty()).then(|| names.join("+"));
                        ("node", port, vias.first().copied())
                    }
                    NextHop::Unreachable => ("unreachable", None, None),
                };
                RouteInfo {
                    prefix: prefix.to_string(),
                    next_hop: next_hop.into(),
                    port,
                    via,
                    vias,
                }
            })
            .collect()
    }

    fn counters(&self) -> CountersInfo {
        let all: Vec<&WorkerCounters> = self.workers.iter().map(|w| &**w.counters).collect();
        let s = counters::sum(all.iter().copied());
        let ports = self.ports.load();
        let xsk: BTreeMap<PortId, XskCountersInfo> = self
            .pods
            .values()
            .filter_map(|p| {
                let s = p.xdp.as_ref()?.stats();
                Some((
                    p.port,
                    XskCountersInfo {
                        rx_dropped: s.rx_dropped,
                        rx_ring_full: s.rx_ring_full,
                        rx_fill_empty: s.rx_fill_empty,
                        tx_dropped: s.tx_dropped,
                        rx_invalid: s.rx_invalid,
                    },
                ))
            })
            .chain(self.uplink_xsk_counters())
            .collect();
        // So `entries` counts no flow that has already timed out.
        self.flows.sweep(clock::now_ms());
        CountersInfo {
            workers: self.workers.len(),
            rx: s.rx,
            tx: s.tx,
            sleeps: s.sleeps,
            host_inline: s.host_inline,
            busy_poll_backoffs: s.busy_poll_backoffs,
            busy_poll_stalls: s.busy_poll_stalls,
            arp_replies: s.arp_replies,
            icmp_sent: s.icmp_sent,
            icmp_rate_limited: s.icmp_rate_limited,
            flows: FlowCountersInfo {
                capacity: self.flows.capacity() as u64,
                entries: self.flows.len() as u64,
                inserted: s.flows_inserted,
                full: s.flows_full,
                expired: self.flows.expired(),
                steered_to_host: s.flows_steered,
                policy_allowed: s.policy_allowed,
                purged: self.flows.purged(),
            },
            drops: s
                .drops
                .iter()
                .map(|(r, n)| (r.name().to_string(), *n))
                .collect(),
            ports: ports
                .iter()
                .map(|(id, e)| {
                    let p = counters::sum_port(all.iter().copied(), id);
                    PortCountersInfo {
                        port: id.0,
                        name: e.info.name.clone(),
                        rx_packets: p.rx_packets,
                        rx_bytes: p.rx_bytes,
                        tx_packets: p.tx_packets,
                        tx_bytes: p.tx_bytes,
                        drops: p.drops,
                        policy_denied_ingress: p.policy_denied_ingress,
                        policy_denied_egress: p.policy_denied_egress,
                        xsk: xsk.get(&id).cloned(),
                        rx_packets_per_worker: all
                            .iter()
                            .map(|w| w.port(id).rx_packets.get())
                            .collect(),
                    }
                })
                .collect(),
            worker_busy_ns: all.iter().map(|w| w.busy_ns.get()).collect(),
            worker_spin_ns: all.iter().map(|w| w.spin_ns.get()).collect(),
            attach: self.attach_stats.info(),
            detach: self.detach_stats.info(),
            tunnels: counters::sum_tunnels(&self.fib.load(), all.iter().copied())
                .into_iter()
                .map(|(node, t)| TunnelCountersInfo {
                    node: node.map_or_else(|| "other".to_string(), |n| n.to_string()),
                    rx_packets: t.rx_packets,
                    rx_bytes: t.rx_bytes,
                    tx_packets: t.tx_packets,
                    tx_bytes: t.tx_bytes,
                })
                .collect(),
        }
    }

    /// Stops the workers. Pod interfaces (persistent TAPs), host routes and
    /// the state file stay, so a restart picks everything up again.
    ///
    /// The workers forward until everything else of the stop that takes
    /// time is done, and the ports are closed right after them: a pod's
    /// packets are lost from then until the next start re-opens its TAP,
    /// so nothing slow may come between (the path MTU watcher, which
    /// notices its stop only every 200 ms, once came after the ports and
    /// added up to 200 ms to every SIGTERM restart's gap).
    pub fn shutdown(mut self) {
        let t = Instant::now();
        // A batch whose write failed gets one more try.
        self.commit(&mut []);
        if let Some(b) = self.bgp.take() {
            b.stop();
        }
        // The BGP kernel thread's copy of the uplink went with it: this is
        // the last, and dropping it joins the watcher's thread.
        if let Some(u) = self.uplink.as_mut() {
            u.pmtu = None;
        }
        let forwarded = t.elapsed();
        for w in &mut self.workers {
            w.stop();
        }
        if self.handed_over {
            log::info!("stopped; {} pod(s) handed over", self.pods.len());
            return;
        }
        // The workers have let go of every port: this closes the TAPs.
        self.ports.store(Arc::new(PortTable::default()));
        log::info!(
            "stopping: forwarded for {:.1} ms (state, BGP, path MTU watcher), ports closed at {:.1} ms",
            ms(forwarded),
            ms(t.elapsed())
        );
        if let Some(setup) = self.uplink.as_ref().and_then(|u| u.vxlan.clone()) {
            setup.teardown();
        }
        log::info!(
            "stopped; {} pod(s) kept for the next start",
            self.pods.len()
        );
    }

    /// [`Daemon::shutdown`] for a process that exits right after: what
    /// must be durable is (state, BGP's saved routes and restart marker),
    /// then the process ends with the workers still forwarding, nothing
    /// joined or freed: the kernel closes the ports last. Joining the
    /// workers and freeing the daemon took up to 150 and 190 ms under load
    /// (load average 11), all of it lost for the pods. A handed-over
    /// daemon or a VXLAN uplink (torn down in process) stops as before.
    pub fn shutdown_and_exit(mut self, code: std::process::ExitCode) -> std::process::ExitCode {
        if self.handed_over || self.uplink.as_ref().is_some_and(|u| u.vxlan.is_some()) {
            self.shutdown();
            return code;
        }
        let t = Instant::now();
        self.commit(&mut []);
        if let Some(b) = self.bgp.take() {
            b.stop();
        }
        log::info!(
            "stopping: state and BGP done in {:.1} ms, {} pod(s) kept for the next start; \
             exiting with the workers forwarding",
            ms(t.elapsed()),
            self.pods.len()
        );
        std::mem::forget(self);
        code
    }

    /// Pods attached now.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn api_socket(&self) -> &Path {
        &self.cfg.api_socket
    }
}

/// Re-opens the interface of every pod in `records` (TAP backend: no
/// worker is involved), in order; [`Daemon::restore`] installs them.
fn reopen_pod_interfaces(
    net: &dyn NodeNet,
    records: &[PodRecord],
) -> Vec<Result<PodPort, PodNetError>> {
    let t = Instant::now();
    let opened: Vec<_> = records
        .iter()
        .map(|r| net.attach_pod_interface(&spec_of(r, 0)))
        .collect();
    log::info!(
        "{} pod interface(s) of the last run re-opened in {:.1} ms",
        opened.iter().filter(|o| o.is_ok()).count(),
        ms(t.elapsed())
    );
    opened
}

/// The MAC a pod interface gets: 0a:58 and its IPv4 address (as Kubernetes
/// bridge plugins do), so it is stable across restarts and readable.
/// The interface a pod's record describes.
fn spec_of(r: &PodRecord, worker: usize) -> PodInterfaceSpec {
    PodInterfaceSpec {
        netns: r.netns.clone(),
        ifname: r.ifname.clone(),
        ip: r.ip,
        mtu: r.mtu,
        mac: r.mac,
        worker,
    }
}

pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [POD_MAC_PREFIX[0], POD_MAC_PREFIX[1], o[0], o[1], o[2], o[3]]
}

pub fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Whether `path` names the network namespace this process runs in (same
/// nsfs inode), e.g. a `/proc/PID/ns/net` of a process that has not moved
/// into its pod yet. Attaching there would move a pod TAP into the node.
/// Waits until a worker has let go of a removed pod's port.
fn wait_port_release(id: &str, release: Option<PortRelease>) {
    if let Some(Err(e)) = release.map(PortRelease::wait) {
        log::warn!("pod {id}: {e}");
    }
}

/// A duration in milliseconds, for the step timings in the log.
fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A network namespace's identity: the (device, inode) its file has,
/// whichever path (a /run/netns bind mount, /proc/PID/ns/net) names it.
pub type NetnsId = (u64, u64);

fn netns_id(path: &Path) -> Option<NetnsId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn is_own_netns(path: &Path) -> bool {
    let own = netns_id(Path::new("/proc/thread-self/ns/net"));
    own.is_some() && netns_id(path) == own
}

fn validate_id(id: &str) -> Result<(), CallError> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    ok.then_some(())
        .ok_or_else(|| CallError::InvalidId(id.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nodenet::fake::{FakeNet, NetState};
    use podrouter_api::{DetachParams, ErrorCode};

    /// A daemon on a fake node, in a scratch directory: unprivileged.
    pub(crate) struct TestNode {
        pub(crate) dir: podrouter_testkit::TempDir,
        pub(crate) net: FakeNet,
        d: Option<Daemon>,
    }

    const CIDRS: &str = r#"["10.244.0.0/28", "10.244.1.0/28", "10.244.2.0/28"]"#;

    impl TestNode {
        pub(crate) fn new(name: &str) -> TestNode {
            let dir = podrouter_testkit::TempDir::new(&format!("daemon-{name}"));
            std::fs::create_dir_all(dir.join("netns")).unwrap();
            let mut t = TestNode {
                dir,
                net: FakeNet::default(),
                d: None,
            };
            t.write_config(CIDRS);
            t.start().unwrap();
            t
        }

        fn config_path(&self) -> PathBuf {
            self.dir.join("podrouter.toml")
        }

        fn write_config(&self, cidrs: &str) {
            let text = format!(
                "node_name = \"t\"\npod_cidrs = {cidrs}\napi_socket = \"{}/api.sock\"\n\
                 state_dir = \"{}/state\"\n\n[dataplane]\nworkers = 2\n",
                self.dir.path().display(),
                self.dir.path().display()
            );
            std::fs::write(self.config_path(), text).unwrap();
        }

        fn start(&mut self) -> Result<(), StartError> {
            let cfg = Config::load(&self.config_path()).unwrap();
            let d = Daemon::start_with(Box::new(self.net.clone()), cfg, Some(self.config_path()))?;
            self.d = Some(d);
            Ok(())
        }

        fn stop(&mut self) {
            if let Some(d) = self.d.take() {
                d.shutdown();
            }
        }

        pub(crate) fn d(&mut self) -> &mut Daemon {
            self.d.as_mut().expect("daemon running")
        }

        /// A pod netns: any absolute path that exists and is not ours.
        pub(crate) fn netns(&self, name: &str) -> String {
            let p = self.dir.join("netns").join(name);
            std::fs::write(&p, "").unwrap();
            p.display().to_string()
        }

        pub(crate) fn attach(&mut self, id: &str) -> Response {
            let netns = self.netns(id);
            self.d().handle(Call::Attach(AttachParams {
                id: id.into(),
                netns,
                ifname: "eth0".into(),
                ip: None,
                mtu: None,
                identity: None,
            }))
        }

        /// Everything a handler may change, to compare before and after.
        pub(crate) fn snapshot(&mut self) -> Snapshot {
            let net = self.net.state();
            let d = self.d();
            let mut ports: Vec<String> = d
                .ports
                .load()
                .iter()
                .map(|(_, e)| e.info.name.clone())
                .collect();
            ports.sort();
            Snapshot {
                net,
                pods: d.pods.keys().cloned().collect(),
                fib: d
                    .routes()
                    .into_iter()
                    .map(|r| format!("{} {} {:?}", r.prefix, r.next_hop, r.port))
                    .collect(),
                ports,
                worker_ports: d.workers.iter().map(|w| w.port_count()).sum(),
                free: d.ipam.free(),
                saved: d.store.load().unwrap().into_iter().map(|r| r.id).collect(),
                cidrs: d.cidrs_text(),
            }
        }
    }

    impl Drop for TestNode {
        fn drop(&mut self) {
            self.stop();
        }
    }

    #[derive(Debug, PartialEq)]
    pub(crate) struct Snapshot {
        pub(crate) net: NetState,
        pub(crate) pods: Vec<String>,
        fib: Vec<String>,
        ports: Vec<String>,
        worker_ports: usize,
        pub(crate) free: u64,
        pub(crate) saved: Vec<String>,
        cidrs: Vec<String>,
    }

    fn host_routes(net: &NetState) -> Vec<String> {
        net.routes.iter().map(|(p, _)| p.to_string()).collect()
    }

    fn attach_in(t: &mut TestNode, id: &str, netns: String, ifname: &str) -> Response {
        t.d().handle(Call::Attach(AttachParams {
            id: id.into(),
            netns,
            ifname: ifname.into(),
            ip: None,
            mtu: None,
            identity: None,
        }))
    }

    pub(crate) fn detach_call(id: &str) -> Call {
        Call::Detach(DetachParams {
            id: id.into(),
            netns: None,
            ifname: None,
        })
    }

    #[test]
    fn a_second_attach_into_a_pods_namespace_is_refused_and_changes_nothing() {
        let mut t = TestNode::new("second-if");
        assert_eq!(t.attach("p0").error, None);
        let before = t.snapshot();
        let same_netns = t.netns("p0");
        let e = attach_in(&mut t, "p1", same_netns.clone(), "eth1")
            .error
            .expect("refused");
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert!(
            e.message.contains("already holds pod p0 (interface eth0)"),
            "{e}"
        );
        assert_eq!(t.snapshot(), before);
        // Once p0 is gone, the namespace may take another pod.
        assert_eq!(t.d().handle(detach_call("p0")).error, None);
        assert_eq!(attach_in(&mut t, "p1", same_netns, "eth1").error, None);
    }

    #[test]
    fn a_detach_keeps_the_address_until_its_interface_removal_has_run() {
        let mut t = TestNode::new("removal");
        assert_eq!(t.attach("p0").error, None);
        let iface = |t: &TestNode| t.net.state().interfaces.len();
        let free = t.d().ipam.free();
        let (resp, removal) = t.d().handle_call(detach_call("p0"));
        assert_eq!(resp.error, None);
        let removal = removal.expect("a known pod's interface is left to the caller");
        // Out of the data plane and the state file, interface and address kept.
        assert!(t.d().pods.is_empty());
        assert!(t.d().store.load().unwrap().is_empty());
        assert_eq!((iface(&t), t.d().ipam.free()), (1, free));
        let done = removal.run();
        assert_eq!(iface(&t), 0);
        t.d().removal_done(done);
        assert_eq!(t.d().ipam.free(), free + 1);
        // An unknown id leaves nothing to run.
        let (resp, removal) = t.d().handle_call(detach_call("p0"));
        assert_eq!(resp.error.map(|e| e.code), Some(ErrorCode::NotFound));
        assert!(removal.is_none());
    }

    /// Fails the attach at each of its node-network steps in turn: each
    /// failure is an error and leaves exactly what was there before; the
    /// first step count that does not fail attaches the pod completely.
    #[test]
    fn attach_completes_or_leaves_nothing_at_every_failing_step() {
        let mut t = TestNode::new("attach");
        assert_eq!(t.attach("p0").error, None);
        let before = t.snapshot();
        let mut step = 0;
        loop {
            t.net.fail_at(Some(t.net.calls() + step));
            let r = t.attach("p1");
            t.net.fail_at(None);
            let Some(e) = r.error else { break };
            assert_eq!(e.code, ErrorCode::Internal, "step {step}: {e:?}");
            assert!(e.message.contains("injected failure"), "{e:?}");
            assert_eq!(t.snapshot(), before, "step {step} left something: {e:?}");
            step += 1;
        }
        // Creating the interface and adding the host route.
        assert_eq!(step, 2);
        let after = t.snapshot();
        assert_eq!(after.pods, vec!["p0", "p1"]);
        assert_eq!(after.saved, vec!["p0", "p1"]);
        assert_eq!(after.net.interfaces.len(), 2);
        assert_eq!(after.free, before.free - 1);
        assert_eq!(after.worker_ports, before.worker_ports + 1);
        assert!(host_routes(&after.net).contains(&"10.244.0.2/32".to_string()));
    }

    /// An attach whose state file cannot be written is undone entirely.
    #[test]
    fn attach_that_cannot_be_saved_is_rolled_back() {
        let mut t = TestNode::new("unsaved");
        let before = t.snapshot();
        // The store writes state.json.tmp first; a directory there fails it.
        let tmp = t.dir.join("state").join("state.json.tmp");
        std::fs::create_dir(&tmp).unwrap();
        let e = t.attach("p1").error.expect("refused");
        std::fs::remove_dir(&tmp).unwrap();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.starts_with("pod p1: not attached: "), "{e:?}");
        assert_eq!(t.snapshot(), before);
        assert_eq!(t.attach("p1").error, None);
    }

    /// Refusals before any step change nothing, with the right codes.
    #[test]
    fn refused_attaches_change_nothing() {
        let mut t = TestNode::new("refused");
        assert_eq!(t.attach("p1").error, None);
        let before = t.snapshot();
        let netns = t.netns("x");
        let p1_netns = t.d().pods["p1"].record.netns.display().to_string();
        let taken = Some(t.d().pods["p1"].record.ip);
        let mut call = |id: &str, netns: &str, ifname: &str, ip: Option<Ipv4Addr>| {
            t.d()
                .handle(Call::Attach(AttachParams {
                    id: id.into(),
                    netns: netns.into(),
                    ifname: ifname.into(),
                    ip,
                    mtu: None,
                    identity: None,
                }))
                .error
                .expect("refused")
                .code
        };
        assert_eq!(call("a b", &netns, "eth0", None), ErrorCode::BadRequest);
        assert_eq!(call("p2", &netns, "a/b", None), ErrorCode::BadRequest);
        assert_eq!(call("p1", &netns, "eth0", None), ErrorCode::AlreadyExists);
        assert_eq!(
            call("p2", "/nonexistent/ns", "eth0", None),
            ErrorCode::NetnsNotFound
        );
        assert_eq!(
            call("p2", "/proc/self/ns/net", "eth0", None),
            ErrorCode::BadRequest
        );
        assert_eq!(
            call("p2", &netns, "eth0", taken),
            ErrorCode::AddressUnavailable
        );
        // The fake, like the kernel, refuses a second eth0 in one netns.
        assert_eq!(
            call("p2", &p1_netns, "eth0", None),
            ErrorCode::AlreadyExists
        );
        assert_eq!(t.snapshot(), before);
    }

    /// A detach forgets the pod whatever fails on the node; what it could
    /// not remove is at most the step that failed.
    #[test]
    fn detach_forgets_the_pod_at_every_failing_step() {
        let mut t = TestNode::new("detach");
        let empty = t.snapshot();
        let mut step = 0;
        loop {
            assert_eq!(t.attach("p1").error, None);
            t.net.fail_at(Some(t.net.calls() + step));
            let r = t.d().handle(Call::Detach(DetachParams {
                id: "p1".into(),
                netns: None,
                ifname: None,
            }));
            t.net.fail_at(None);
            assert_eq!(r.error, None, "step {step}");
            let now = t.snapshot();
            let failed = now != empty;
            assert_eq!(
                Snapshot {
                    net: empty.net.clone(),
                    ..now
                },
                empty,
                "step {step}"
            );
            if !failed {
                break;
            }
            // Clean the leftover so the next round starts from empty.
            let net = t.net.state();
            for (netns, ifname) in net.interfaces.keys() {
                t.net.delete_pod_interface(netns, ifname).unwrap();
            }
            for (p, port) in &net.routes {
                if p.len() == 32 {
                    t.net.host_route_del(*p, port).unwrap();
                }
            }
            step += 1;
        }
        assert_eq!(step, 2);
    }

    /// A restart with a config that lost the block live pods are in is
    /// refused (exit 2) naming them, and forgets nothing: with the block
    /// back, the pods come back.
    #[test]
    fn restart_without_the_pods_block_is_refused_and_forgets_nothing() {
        let mut t = TestNode::new("orphans");
        assert_eq!(t.attach("p1").error, None);
        assert_eq!(t.attach("p2").error, None);
        t.stop();
        t.write_config(r#"["10.244.1.0/28", "10.244.2.0/28"]"#);
        let Err(e) = t.start() else {
            panic!("start must be refused")
        };
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.contains("p1 (10.244.0.1)") && text.contains("p2 (10.244.0.2)"),
            "{text}"
        );
        assert!(text.contains("podrouterctl detach"), "{text}");
        // Nothing was forgotten: the old blocks bring both pods back.
        t.write_config(CIDRS);
        t.start().unwrap();
        let Reply::Pods(pods) = t.d().handle(Call::ListPods).result.unwrap() else {
            panic!("not a pod list")
        };
        let ids: Vec<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["p1", "p2"]);
        // A second daemon on the same state directory is refused by name.
        let cfg = Config::load(&t.config_path()).unwrap();
        let Err(e) = Daemon::start_with(Box::new(t.net.clone()), cfg, None) else {
            panic!("second daemon must be refused")
        };
        assert!(
            e.to_string().starts_with(&format!(
                "another podrouterd, pid {}, holds ",
                std::process::id()
            )),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
    }

    /// A restart restores each pod completely or forgets it completely,
    /// whichever node-network step fails.
    #[test]
    fn restore_is_all_or_nothing_per_pod_at_every_failing_step() {
        let mut t = TestNode::new("restore");
        let total = t.snapshot().free;
        assert_eq!(t.attach("p1").error, None);
        assert_eq!(t.attach("p2").error, None);
        t.stop();
        let node = t.net.state();
        let state_file = t.dir.join("state").join("state.json");
        let saved = std::fs::read(&state_file).unwrap();
        for step in 0.. {
            // A fresh node and state file as the last run left them.
            std::fs::write(&state_file, &saved).unwrap();
            t.net = FakeNet::default();
            for (netns, ifname) in node.interfaces.keys() {
                let spec = PodInterfaceSpec {
                    netns: netns.clone(),
                    ifname: ifname.clone(),
                    ip: Ipv4Addr::UNSPECIFIED,
                    mtu: 1500,
                    mac: node.interfaces[&(netns.clone(), ifname.clone())],
                    worker: 0,
                };
                t.net.create_pod_interface(&spec).unwrap();
            }
            for (p, port) in &node.routes {
                t.net.host_route_add(*p, port).unwrap();
            }
            let base = t.net.calls();
            t.net.fail_at(Some(base + step));
            // Both pods' re-opens (first thing), the host port, 3 pod
            // CIDR routes, then each pod's host route.
            match t.start() {
                Err(e) => {
                    assert_eq!(step, 2, "{e}");
                    continue;
                }
                Ok(()) => t.net.fail_at(None),
            }
            let s = t.snapshot();
            let restored = s.pods.len();
            assert_eq!(s.saved, s.pods, "step {step}");
            assert_eq!(s.free, total - restored as u64, "step {step}");
            let pod_routes: Vec<String> = host_routes(&s.net)
                .into_iter()
                .filter(|r| r.ends_with("/32"))
                .collect();
            assert_eq!(pod_routes.len(), restored, "step {step}: {s:?}");
            let fib_local = s.fib.iter().filter(|r| r.contains(" local ")).count();
            assert_eq!(fib_local, restored, "step {step}");
            t.stop();
            // Steps 3-5 (the pod CIDRs' routes) only warn; 0, 1, 6 and 7
            // are the pods' own; 8 does not fail.
            assert_eq!(restored == 2, ![0, 1, 6, 7].contains(&step), "step {step}");
            if step == 8 {
                break;
            }
        }
    }

    /// A reload that fails at any kernel step leaves config, IPAM, FIB
    /// and host routes as they were; the next step count applies it.
    #[test]
    fn reload_is_all_or_nothing_at_every_failing_step() {
        let mut t = TestNode::new("reload");
        assert_eq!(t.attach("p1").error, None);
        let before = t.snapshot();
        t.write_config(r#"["10.244.0.0/28", "10.244.3.0/28", "10.244.4.0/28"]"#);
        let mut step = 0;
        loop {
            t.net.fail_at(Some(t.net.calls() + step));
            let r = t.d().handle(Call::Reload);
            t.net.fail_at(None);
            let Some(e) = r.error else { break };
            assert_eq!(e.code, ErrorCode::Internal, "step {step}: {e:?}");
            assert!(e.message.contains("rolled back, nothing changed"), "{e:?}");
            assert_eq!(t.snapshot(), before, "step {step}");
            step += 1;
        }
        // Two routes added, two removed.
        assert_eq!(step, 4);
        let after = t.snapshot();
        assert_eq!(
            after.cidrs,
            vec!["10.244.0.0/28", "10.244.3.0/28", "10.244.4.0/28"]
        );
        let routes = host_routes(&after.net);
        assert!(
            routes.contains(&"10.244.3.0/28".into()) && !routes.contains(&"10.244.1.0/28".into())
        );
        // A refusal (a block with a pod in it) touches nothing either.
        let before = t.snapshot();
        t.write_config(r#"["10.244.3.0/28"]"#);
        let e = t.d().handle(Call::Reload).error.expect("refused");
        assert_eq!(e.code, ErrorCode::ReloadRefused);
        assert!(
            e.message.contains("still holds the address of pod p1"),
            "{e:?}"
        );
        assert_eq!(t.snapshot(), before);
    }

    /// A pending detach left by the CNI plugin is finished at start when
    /// it matches the pod, and left alone (but consumed) when it does not.
    #[test]
    fn pending_detaches_are_finished_at_start() {
        let mut t = TestNode::new("pending");
        assert_eq!(t.attach("p1").error, None);
        assert_eq!(t.attach("p2").error, None);
        let ns = |t: &mut TestNode, id: &str| t.d().pods[id].record.netns.display().to_string();
        let (ns1, ns2) = (ns(&mut t, "p1"), ns(&mut t, "p2"));
        t.stop();
        let dir = t.dir.join("state").join(PENDING_DETACH_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |e: PendingDetach| {
            std::fs::write(dir.join(&e.id), serde_json::to_vec(&e).unwrap()).unwrap()
        };
        write(PendingDetach::new("p1", Some(&ns1), "eth0", None, "n"));
        // Same id, another netns: a newer attachment reused the id.
        write(PendingDetach::new("p2", Some(&ns1), "eth0", None, "n"));
        std::fs::write(dir.join("junk"), "not json").unwrap();
        t.start().unwrap();
        assert_eq!(t.snapshot().pods, vec!["p2"]);
        let left: Vec<PathBuf> = t.net.state().interfaces.into_keys().map(|k| k.0).collect();
        assert_eq!(left, vec![PathBuf::from(ns2)]);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, vec![".bad-junk"]);
    }

    /// A detach of an unknown id with netns and ifname removes only a
    /// podrouter interface (MAC 0a:58:...).
    #[test]
    fn orphans_are_removed_only_if_ours() {
        let mut t = TestNode::new("orphan");
        let ours = t.netns("ours");
        let theirs = t.netns("theirs");
        let make = |t: &TestNode, netns: &str, mac: [u8; 6]| {
            let spec = PodInterfaceSpec {
                netns: netns.into(),
                ifname: "eth0".into(),
                ip: Ipv4Addr::new(10, 244, 0, 9),
                mtu: 1500,
                mac,
                worker: 0,
            };
            t.net.create_pod_interface(&spec).unwrap();
        };
        make(&t, &ours, pod_mac(Ipv4Addr::new(10, 244, 0, 9)));
        make(&t, &theirs, [0x02, 0, 0, 0, 0, 1]);
        for netns in [&ours, &theirs] {
            let r = t.d().handle(Call::Detach(DetachParams {
                id: "gone".into(),
                netns: Some(netns.clone()),
                ifname: Some("eth0".into()),
            }));
            assert_eq!(r.error, None);
        }
        let left: Vec<PathBuf> = t.net.state().interfaces.into_keys().map(|k| k.0).collect();
        assert_eq!(left, vec![PathBuf::from(theirs)]);
        let e = t
            .d()
            .handle(Call::Detach(DetachParams {
                id: "gone".into(),
                netns: None,
                ifname: None,
            }))
            .error
            .unwrap();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, "no pod with id gone")
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_id("abc-1.2_x").is_ok());
        assert!(validate_id("cni:abc123:eth0").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(256)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_netns_is_recognised() {
        assert!(is_own_netns(Path::new("/proc/self/ns/net")));
        assert!(!is_own_netns(Path::new("/proc/self/ns/mnt")));
        assert!(!is_own_netns(Path::new("/nonexistent")));
    }

    #[test]
    fn pod_mac_embeds_the_address() {
        assert_eq!(
            mac_text(pod_mac(Ipv4Addr::new(10, 244, 0, 2))),
            "0a:58:0a:f4:00:02"
        );
    }
}
