//! The node daemon's state and the handlers behind every API call: pods,
//! their ports, the FIB, the host routes and the workers.
//!
//! Invariants: a pod is in `pods` exactly when its port is in the port
//! table, its /32 is in the FIB and in the host's routing table, one worker
//! receives from it, its address is taken in IPAM and it is in the state
//! file. Every handler either completes all of these or rolls back to where
//! it started. A config reload ([`Daemon::reload`]) is all or nothing too:
//! refused with the running config untouched, or applied to IPAM, the
//! FIB, the kernel and BGP before `cfg` is replaced.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use podrouter_api::{
    AttachParams, Call, CountersInfo, ErrorCode, PodInfo, PortCountersInfo, PortStatusInfo,
    ReloadInfo, Reply, Response, RouteInfo, StatusInfo, XskCountersInfo, API_VERSION,
};
use podrouter_router::afxdp::{AfXdpConfig, AfXdpPort, XdpModeRequest};
use podrouter_router::counters::{self, WorkerCounters};
use podrouter_router::fib::{Fib, FibChange, NextHop};
use podrouter_router::pipeline::PipelineConfig;
use podrouter_router::port::{Port, PortEntry, PortId, PortInfo, PortRole, PortTable};
use podrouter_router::worker::{WorkerConfig, WorkerHandle};
use podrouter_router::{GATEWAY_IP, ROUTER_MAC};
use podrouter_types::Prefix;

use crate::config::{Backend, Config, XdpMode, MTU_RANGE};
use crate::ipam::{Ipam, IpamError};
use crate::podnet::{self, PodNetError};
use crate::state::{PodRecord, StateError, StateStore};

/// Directory under `state_dir` where the CNI plugin leaves detaches it
/// could not deliver.
pub const PENDING_DETACH_DIR: &str = "pending-detach";

/// First two bytes of every pod interface MAC podrouter assigns.
pub const POD_MAC_PREFIX: [u8; 2] = [0x0a, 0x58];

/// A detach the CNI plugin left for the daemon (`pending-detach/<id>`).
#[derive(serde::Deserialize)]
struct PendingDetach {
    id: String,
    #[serde(default)]
    netns: Option<PathBuf>,
    ifname: String,
    #[serde(default)]
    ip: Option<Ipv4Addr>,
}

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
}

struct Pod {
    record: PodRecord,
    port: PortId,
    worker: usize,
    /// The pod's AF_XDP port (afxdp backend), for its mode and counters.
    xdp: Option<Arc<AfXdpPort>>,
}

/// A pod's port as the backend made it.
struct PodPort {
    port: Arc<dyn Port>,
    xdp: Option<Arc<AfXdpPort>>,
}

pub struct Daemon {
    cfg: Config,
    /// The file `cfg` came from (`None`: embedded defaults), re-read by
    /// [`Daemon::reload`].
    config_path: Option<PathBuf>,
    fib: Arc<Fib>,
    ports: Arc<ArcSwap<PortTable>>,
    workers: Vec<WorkerHandle>,
    pods: BTreeMap<String, Pod>,
    ipam: Ipam,
    store: StateStore,
    started: Instant,
    bgp: Option<crate::bgp::BgpHandle>,
    /// The IPIP uplink to other nodes, if this node has one.
    uplink: Option<crate::uplink_setup::UplinkState>,
}

type CallResult = Result<Reply, (ErrorCode, String)>;

impl Daemon {
    /// Brings the node up: workers, host port, base routes, then every pod
    /// from the state file. `config_path` is where `cfg` was read from
    /// (what a reload reads again).
    pub fn start(cfg: Config, config_path: Option<PathBuf>) -> Result<Daemon, StartError> {
        let store = StateStore::open(&cfg.state_dir)?;
        let records = store.load()?;
        let fib = Arc::new(Fib::new());
        let ports = Arc::new(ArcSwap::from_pointee(PortTable::default()));
        let pipeline = PipelineConfig {
            router_mac: ROUTER_MAC,
            node_ip: cfg.node_ip.unwrap_or(GATEWAY_IP),
            icmp_rate_per_sec: cfg.dataplane.icmp_rate,
            icmp_burst: cfg.dataplane.icmp_burst,
        };
        if cfg.node_ip.is_none() {
            log::warn!("node_ip is not set: ICMP errors will come from {GATEWAY_IP}");
        }
        let mut workers = Vec::new();
        for id in 0..cfg.dataplane.workers {
            let wc = WorkerConfig {
                id,
                core: cfg.dataplane.cores.get(id).copied(),
                batch_size: cfg.dataplane.batch_size,
                pipeline: pipeline.clone(),
            };
            workers.push(
                WorkerHandle::spawn(wc, fib.clone(), ports.clone())
                    .map_err(|e| StartError::Worker(id, e))?,
            );
        }
        let mut d = Daemon {
            ipam: Ipam::new(&cfg.pod_cidrs),
            cfg,
            config_path,
            fib,
            ports,
            workers,
            pods: BTreeMap::new(),
            store,
            started: Instant::now(),
            bgp: None,
            uplink: None,
        };
        d.start_host_port()?;
        if let Some((u, info)) = crate::uplink_setup::open(&d.cfg).map_err(StartError::Uplink)? {
            d.publish_port(info, u.port.clone())
                .map_err(|e| StartError::Uplink(format!("port table: {e}")))?;
            d.uplink = Some(u);
        }
        d.install_base_routes();
        d.restore(records);
        d.store.save(&d.records())?;
        d.process_pending_detaches();
        let kernel = d.uplink.as_ref().map(|u| crate::uplink_setup::UplinkState {
            ifname: u.ifname.clone(),
            policy: u.policy,
            port: u.port.clone(),
        });
        d.bgp =
            crate::bgp::BgpHandle::start(&d.cfg, d.fib.clone(), kernel).map_err(StartError::Bgp)?;
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
        let tap = podnet::create_or_attach_host_port(&name, HOST_PORT_MAC, mtu)
            .map_err(StartError::HostPort)?;
        let info = PortInfo {
            name: name.clone(),
            role: PortRole::Host { mac: HOST_PORT_MAC },
            mtu,
        };
        let (id, _) = self
            .publish_port(info, Arc::new(tap))
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
            if let Err(e) = podnet::host_route_add(*c, &self.cfg.dataplane.host_port) {
                log::warn!(
                    "cannot route {c} to {} on the node: {e}",
                    self.cfg.dataplane.host_port
                );
            }
        }
    }

    fn restore(&mut self, records: Vec<PodRecord>) {
        for r in records {
            if let Err(e) = self.ipam.reserve(r.ip) {
                log::warn!("pod {}: dropped from state: {e}", r.id);
                continue;
            }
            let port = match self.reopen_pod_port(&r) {
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
                    continue;
                }
            };
            let id = r.id.clone();
            match self.install(r, port) {
                Ok(()) => log::info!("pod {id}: restored"),
                Err((_, msg)) => log::warn!("pod {id}: cannot restore: {msg}"),
            }
        }
    }

    /// The backend's AF_XDP port settings for a pod's node-end veth.
    fn afxdp_config(&self, r: &PodRecord) -> AfXdpConfig {
        AfXdpConfig {
            ifname: podnet::node_veth_name(r.ip),
            mtu: r.mtu,
            tx_queues: self.workers.len() as u32,
            mode: match self.cfg.dataplane.xdp_mode {
                XdpMode::Auto => XdpModeRequest::Auto,
                XdpMode::Driver => XdpModeRequest::Driver,
                XdpMode::Generic => XdpModeRequest::Generic,
            },
        }
    }

    /// Makes a new pod's interface and its port, per the backend: a TAP,
    /// or a veth pair whose node end gets an AF_XDP port. Nothing is left
    /// behind on failure.
    fn create_pod_port(
        &self,
        spec: &podnet::PodInterfaceSpec,
        r: &PodRecord,
    ) -> Result<PodPort, PodNetError> {
        match self.cfg.dataplane.backend {
            Backend::Tap => podnet::create_pod_interface(spec).map(|t| PodPort {
                port: Arc::new(t),
                xdp: None,
            }),
            Backend::Afxdp => {
                let xcfg = self.afxdp_config(r);
                podnet::create_pod_veth(spec, &xcfg.ifname, xcfg.tx_queues + 1)?;
                match podnet::open_afxdp_port(&xcfg) {
                    Ok(x) => {
                        let x = Arc::new(x);
                        Ok(PodPort {
                            port: x.clone(),
                            xdp: Some(x),
                        })
                    }
                    Err(e) => {
                        let _ = podnet::delete_pod_interface(&spec.netns, &spec.ifname);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Re-opens a pod's existing interface and its port after a restart.
    fn reopen_pod_port(&self, r: &PodRecord) -> Result<PodPort, PodNetError> {
        match self.cfg.dataplane.backend {
            Backend::Tap => podnet::attach_pod_interface(&r.netns, &r.ifname).map(|t| PodPort {
                port: Arc::new(t),
                xdp: None,
            }),
            Backend::Afxdp => {
                let x = Arc::new(podnet::open_afxdp_port(&self.afxdp_config(r))?);
                Ok(PodPort {
                    port: x.clone(),
                    xdp: Some(x),
                })
            }
        }
    }

    fn records(&self) -> Vec<PodRecord> {
        self.pods.values().map(|p| p.record.clone()).collect()
    }

    /// Adds a port to the published table and hands it to the least loaded
    /// worker; returns its id and the worker.
    fn publish_port(
        &mut self,
        info: PortInfo,
        port: Arc<dyn Port>,
    ) -> Result<(PortId, usize), String> {
        let table = self.ports.load_full();
        let id = table
            .free_id()
            .ok_or_else(|| "the port table is full".to_string())?;
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
        let worker = self.least_loaded_worker();
        if let Err(e) = self.workers[worker].add_port(id, port) {
            self.ports.store(Arc::new(self.ports.load().without(id)));
            return Err(format!("worker {worker}: {e}"));
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
    fn install(&mut self, r: PodRecord, pod_port: PodPort) -> Result<(), (ErrorCode, String)> {
        let info = PortInfo {
            name: format!("{}@{}", r.ifname, r.id),
            role: PortRole::Pod {
                ip: r.ip,
                mac: r.mac,
            },
            mtu: r.mtu,
        };
        let (port, worker) = self
            .publish_port(info, pod_port.port)
            .map_err(|e| (ErrorCode::Internal, e))?;
        let host = Prefix::new(r.ip, 32).expect("/32");
        self.fib
            .update(&[FibChange::Insert(host, NextHop::Local(port))]);
        if let Err(e) = podnet::host_route_add(Prefix::host(r.ip), &self.cfg.dataplane.host_port) {
            self.fib.update(&[FibChange::Remove(host)]);
            let _ = self.workers[worker].remove_port(port);
            self.ports.store(Arc::new(self.ports.load().without(port)));
            return Err((ErrorCode::Internal, format!("host route to {}: {e}", r.ip)));
        }
        self.pods.insert(
            r.id.clone(),
            Pod {
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
        let pod = self.pods.remove(id)?;
        if let Err(e) = self.workers[pod.worker].remove_port(pod.port) {
            log::warn!("pod {id}: worker {}: {e}", pod.worker);
        }
        self.fib.update(&[FibChange::Remove(
            Prefix::new(pod.record.ip, 32).expect("/32"),
        )]);
        self.ports
            .store(Arc::new(self.ports.load().without(pod.port)));
        if let Err(e) =
            podnet::host_route_del(Prefix::host(pod.record.ip), &self.cfg.dataplane.host_port)
        {
            log::warn!("pod {id}: removing host route: {e}");
        }
        Some(pod.record)
    }

    /// Housekeeping between events: frees FIB snapshots readers have let go.
    pub fn tick(&mut self) {
        self.fib.reclaim();
    }

    /// Answers one API call.
    pub fn handle(&mut self, call: Call) -> Response {
        let result = match call {
            Call::Status => Ok(Reply::Status(self.status())),
            Call::ListPods => Ok(Reply::Pods(
                self.pods.values().map(|p| self.pod_info(p)).collect(),
            )),
            Call::Attach(p) => self.attach(p),
            Call::Detach(p) => self.detach(&p.id, p.netns.as_deref().zip(p.ifname.as_deref())),
            Call::Routes => Ok(Reply::Routes(self.routes())),
            Call::Counters => Ok(Reply::Counters(self.counters())),
            Call::BgpPeers => self.bgp_call(|b| b.peers().map(Reply::BgpPeers)),
            Call::Reload => self.reload().map(Reply::Reloaded),
            Call::BgpRib(p) => {
                let within = match p.prefix.as_deref().map(str::parse::<Prefix>) {
                    None => None,
                    Some(Ok(w)) => Some(w),
                    Some(Err(e)) => return Response::err(ErrorCode::BadRequest, e.to_string()),
                };
                // Keep the response well under the API's 1 MiB line limit.
                let limit = p.limit.unwrap_or(1000).min(crate::bgp::RIB_ROWS_MAX);
                self.bgp_call(|b| b.rib(within, limit).map(Reply::BgpRib))
            }
        };
        match result {
            Ok(r) => Response::ok(r),
            Err((code, msg)) => Response::err(code, msg),
        }
    }

    /// Re-reads the config file and applies what may change at runtime
    /// (see [`crate::reload`]): all or nothing. Blocks added get IPAM
    /// space, the FIB's Unreachable entry and the node's kernel route to
    /// the host port, and are announced over BGP; blocks removed (only if
    /// no pod holds an address in them) lose all of that and are
    /// withdrawn. Any refusal leaves the running configuration as it was.
    /// Every outcome is logged.
    pub fn reload(&mut self) -> Result<ReloadInfo, (ErrorCode, String)> {
        let r = self.try_reload();
        match &r {
            Ok(info)
                if info.added.is_empty() && info.removed.is_empty() && info.changed.is_empty() =>
            {
                log::info!("reload of {}: no change", info.config)
            }
            Ok(info) => log::info!(
                "reload of {}: applied; pod CIDRs now {} (added: {}; removed: {}){}",
                info.config,
                info.pod_cidrs.join(", "),
                none_if_empty(&info.added),
                none_if_empty(&info.removed),
                if info.changed.is_empty() {
                    String::new()
                } else {
                    format!("; also changed {}", info.changed.join(", "))
                }
            ),
            Err((_, msg)) => log::warn!("{msg}"),
        }
        r
    }

    fn try_reload(&mut self) -> Result<ReloadInfo, (ErrorCode, String)> {
        let refused = |m: String| (ErrorCode::ReloadRefused, m);
        let Some(path) = self.config_path.clone() else {
            return Err(refused(
                "reload refused: podrouterd runs on its embedded defaults (started without \
                 --config), there is no file to re-read"
                    .into(),
            ));
        };
        let new = Config::load(&path).map_err(|e| {
            refused(format!(
                "reload refused, running configuration unchanged: {e}"
            ))
        })?;
        let plan = crate::reload::plan(&self.cfg, new).map_err(|e| refused(e.to_string()))?;
        let pods: Vec<(String, Ipv4Addr)> = self
            .pods
            .values()
            .map(|p| (p.record.id.clone(), p.record.ip))
            .collect();
        let holders = crate::reload::pods_in(&plan.removed, &pods);
        if !holders.is_empty() {
            return Err(refused(crate::reload::blocks_in_use(&holders)));
        }
        // A block another node announces is not ours to take: both the
        // learned block's kernel route and ours would be the same route.
        if let Some(b) = &self.bgp {
            for c in &plan.added {
                let rib = b.rib(Some(*c), 100).map_err(|e| {
                    refused(format!(
                        "reload refused, nothing changed: cannot ask the BGP speaker about {c}: {e}"
                    ))
                })?;
                let text = c.to_string();
                let from: Vec<String> = rib
                    .routes
                    .iter()
                    .filter(|r| r.prefix == text && r.from != "local")
                    .map(|r| r.from.clone())
                    .collect();
                if !from.is_empty() {
                    return Err(refused(format!(
                        "reload refused, nothing changed: {c} is announced to this node by BGP \
                         peer {}: another node owns that block",
                        from.join(", ")
                    )));
                }
            }
        }
        let old_cidrs = self.cfg.pod_cidrs.clone();
        if let Err(taken) = self.ipam.set_cidrs(&plan.new.pod_cidrs) {
            let list: Vec<String> = taken.iter().map(|a| a.to_string()).collect();
            return Err(refused(format!(
                "reload refused, nothing changed: addresses {} are in use in a block the new \
                 config drops",
                list.join(", ")
            )));
        }
        // Kernel first (it can fail), undoing what was done if it does.
        let host_port = self.cfg.dataplane.host_port.clone();
        let mut added_routes: Vec<Prefix> = Vec::new();
        let mut removed_routes: Vec<Prefix> = Vec::new();
        let mut failure = None;
        for c in &plan.added {
            match podnet::host_route_add(*c, &host_port) {
                Ok(()) => added_routes.push(*c),
                Err(e) => {
                    failure = Some(format!("cannot route {c} to {host_port} on the node: {e}"));
                    break;
                }
            }
        }
        if failure.is_none() {
            for c in &plan.removed {
                match podnet::host_route_del(*c, &host_port) {
                    Ok(()) => removed_routes.push(*c),
                    Err(e) => {
                        failure = Some(format!("cannot remove the node's route to {c}: {e}"));
                        break;
                    }
                }
            }
        }
        if let Some(why) = failure {
            for c in &removed_routes {
                if let Err(e) = podnet::host_route_add(*c, &host_port) {
                    log::error!("reload rollback: cannot restore the node's route to {c}: {e}");
                }
            }
            for c in &added_routes {
                if let Err(e) = podnet::host_route_del(*c, &host_port) {
                    log::error!("reload rollback: cannot remove the node's route to {c}: {e}");
                }
            }
            let _ = self.ipam.set_cidrs(&old_cidrs);
            return Err((
                ErrorCode::Internal,
                format!("reload failed and was rolled back, nothing changed: {why}"),
            ));
        }
        // From here on nothing fails: the FIB, BGP and the running config.
        let mut changes: Vec<FibChange> = plan
            .added
            .iter()
            .map(|c| FibChange::Insert(*c, NextHop::Unreachable))
            .collect();
        changes.extend(plan.removed.iter().map(|c| FibChange::Remove(*c)));
        if !changes.is_empty() {
            self.fib.update(&changes);
        }
        let mut changed = Vec::new();
        if plan.log_level {
            crate::logger::set_level(plan.new.log_level.filter());
            changed.push("log_level".to_string());
        }
        self.cfg = plan.new;
        let info = ReloadInfo {
            config: path.display().to_string(),
            pod_cidrs: self.cidrs_text(),
            added: plan.added.iter().map(|c| c.to_string()).collect(),
            removed: plan.removed.iter().map(|c| c.to_string()).collect(),
            changed,
        };
        if !plan.added.is_empty() || !plan.removed.is_empty() {
            if let Some(b) = &self.bgp {
                b.set_local_routes(self.cfg.pod_cidrs.clone())
                    .map_err(|e| {
                        (
                            ErrorCode::Internal,
                            format!(
                                "pod CIDRs applied on the node, but the BGP speaker did not take \
                             them: {e}"
                            ),
                        )
                    })?;
            }
        }
        Ok(info)
    }

    fn bgp_call(
        &self,
        f: impl FnOnce(&crate::bgp::BgpHandle) -> Result<Reply, String>,
    ) -> CallResult {
        let b = self.bgp.as_ref().ok_or((
            ErrorCode::NotFound,
            "BGP is not configured on this node (no [bgp] section)".to_string(),
        ))?;
        f(b).map_err(|e| (ErrorCode::Internal, e))
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
            workers: self.workers.len(),
            pods: self.pods.len(),
            routes: self.fib.load().len(),
            free_addresses: self.ipam.free(),
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
                .collect(),
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
        validate_id(&p.id).map_err(|m| (ErrorCode::BadRequest, m))?;
        validate_ifname(&p.ifname).map_err(|m| (ErrorCode::BadRequest, m))?;
        if self.pods.contains_key(&p.id) {
            return Err((
                ErrorCode::AlreadyExists,
                format!("pod {} is already attached", p.id),
            ));
        }
        let netns = PathBuf::from(&p.netns);
        if !netns.is_absolute() || !netns.exists() {
            return Err((
                ErrorCode::NetnsNotFound,
                format!("network namespace {} does not exist", p.netns),
            ));
        }
        if is_own_netns(&netns) {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "{} is podrouterd's own (the node's) network namespace, not a pod's",
                    p.netns
                ),
            ));
        }
        let mtu = p.mtu.unwrap_or(self.cfg.dataplane.mtu);
        if !MTU_RANGE.contains(&mtu) {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "mtu {mtu} is out of range {}..={}",
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            ));
        }
        if self.cfg.dataplane.backend == Backend::Afxdp && mtu > podrouter_router::afxdp::MAX_MTU {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "mtu {mtu} is above the afxdp backend's {}",
                    podrouter_router::afxdp::MAX_MTU
                ),
            ));
        }
        let ip = match p.ip {
            Some(ip) => self.ipam.reserve(ip).map(|()| ip),
            None => self.ipam.allocate(),
        }
        .map_err(|e: IpamError| (ErrorCode::AddressUnavailable, e.to_string()))?;
        let record = PodRecord {
            id: p.id.clone(),
            netns,
            ifname: p.ifname.clone(),
            ip,
            mac: pod_mac(ip),
            mtu,
        };
        let spec = podnet::PodInterfaceSpec {
            netns: record.netns.clone(),
            ifname: record.ifname.clone(),
            ip,
            mtu,
            mac: record.mac,
        };
        let port = match self.create_pod_port(&spec, &record) {
            Ok(p) => p,
            Err(e) => {
                self.ipam.release(ip);
                let code = match e {
                    PodNetError::InterfaceExists { .. } => ErrorCode::AlreadyExists,
                    PodNetError::NetnsNotFound { .. } => ErrorCode::NetnsNotFound,
                    _ => ErrorCode::Internal,
                };
                return Err((code, format!("pod {}: {e}", p.id)));
            }
        };
        if let Err(e) = self.install(record.clone(), port) {
            self.discard_interface(&record);
            self.ipam.release(ip);
            return Err(e);
        }
        if let Err(e) = self.store.save(&self.records()) {
            self.uninstall(&record.id);
            self.discard_interface(&record);
            self.ipam.release(ip);
            return Err((
                ErrorCode::Internal,
                format!("pod {}: not attached: {e}", record.id),
            ));
        }
        log::info!(
            "pod {}: attached {} {}/32 in {} (port {})",
            record.id,
            record.ifname,
            ip,
            record.netns.display(),
            self.pods[&record.id].port.0
        );
        Ok(Reply::Pod(self.pod_info(&self.pods[&record.id])))
    }

    fn discard_interface(&self, r: &PodRecord) {
        if let Err(e) = podnet::delete_pod_interface(&r.netns, &r.ifname) {
            log::warn!("pod {}: removing {}: {e}", r.id, r.ifname);
        }
    }

    /// Detaches a known pod; for an unknown id with `orphan` (netns, ifname)
    /// given, removes a podrouter interface left there by an attach that
    /// was cut short (a crash between creating it and saving the state).
    fn detach(&mut self, id: &str, orphan: Option<(&str, &str)>) -> CallResult {
        let Some(record) = self.uninstall(id) else {
            let Some((netns, ifname)) = orphan else {
                return Err((ErrorCode::NotFound, format!("no pod with id {id}")));
            };
            validate_ifname(ifname).map_err(|m| (ErrorCode::BadRequest, m))?;
            return match self.delete_orphan_interface(Path::new(netns), ifname) {
                Ok(removed) => {
                    if removed {
                        log::info!("{id}: removed orphaned interface {ifname} in {netns}");
                    }
                    Ok(Reply::Detached { id: id.to_string() })
                }
                Err(e) => Err((ErrorCode::Internal, format!("{id}: {e}"))),
            };
        };
        self.discard_interface(&record);
        self.ipam.release(record.ip);
        if let Err(e) = self.store.save(&self.records()) {
            // The pod is gone from the data plane; the next save or start
            // will drop it from the file (its netns interface is gone too).
            log::error!("pod {id}: detached but the state file was not updated: {e}");
        }
        log::info!("pod {id}: detached, released {}", record.ip);
        Ok(Reply::Detached { id: id.to_string() })
    }

    /// Removes `ifname` in `netns` if it is a pod interface podrouter made
    /// (MAC 0a:58:...) and no known pod owns it. Returns whether it did.
    fn delete_orphan_interface(&self, netns: &Path, ifname: &str) -> Result<bool, String> {
        let owned = self
            .pods
            .values()
            .any(|p| p.record.netns == netns && p.record.ifname == ifname);
        if owned || !netns.exists() {
            return Ok(false);
        }
        let link = crate::netns::run_in_netns(netns, || {
            crate::netlink::Netlink::open().and_then(|mut nl| nl.link_get(ifname))
        })
        .and_then(|r| r)
        .map_err(|e| format!("looking for {ifname} in {}: {e}", netns.display()))?;
        match link {
            Some(l) if l.mac.is_some_and(|m| m[..2] == POD_MAC_PREFIX) => {
                podnet::delete_pod_interface(netns, ifname).map_err(|e| e.to_string())?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Finishes detaches the CNI plugin could not deliver while the daemon
    /// was down: one JSON file per attachment in `state_dir/pending-detach`
    /// (see cni/README.md). Each file is removed once handled; one that
    /// cannot be parsed is renamed `.bad-<name>` and kept for inspection.
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
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let pending = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<PendingDetach>(&t).map_err(|e| e.to_string()));
            let p = match pending {
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
            let matches = self.pods.get(&p.id).map(|pod| {
                p.netns.as_ref().is_none_or(|n| *n == pod.record.netns)
                    && p.ip.is_none_or(|ip| ip == pod.record.ip)
            });
            let outcome = match matches {
                Some(true) => self.detach(&p.id, None).map(|_| "detached"),
                Some(false) => Ok("id now belongs to another attachment; left alone"),
                None => match &p.netns {
                    Some(netns) => self
                        .detach(&p.id, Some((&netns.display().to_string(), &p.ifname)))
                        .map(|_| "no such pod; leftover interface removed if any"),
                    None => Ok("no such pod"),
                },
            };
            match outcome {
                Ok(what) => log::info!("pending detach {}: {what}", p.id),
                Err((_, e)) => log::warn!("pending detach {}: {e}", p.id),
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
                    },
                ))
            })
            .collect();
        CountersInfo {
            workers: self.workers.len(),
            rx: s.rx,
            tx: s.tx,
            sleeps: s.sleeps,
            arp_replies: s.arp_replies,
            icmp_sent: s.icmp_sent,
            icmp_rate_limited: s.icmp_rate_limited,
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
                        xsk: xsk.get(&id).cloned(),
                    }
                })
                .collect(),
        }
    }

    /// Stops the workers. Pod interfaces (persistent TAPs), host routes and
    /// the state file stay, so a restart picks everything up again.
    pub fn shutdown(mut self) {
        if let Some(b) = self.bgp.take() {
            b.stop();
        }
        for w in &mut self.workers {
            w.stop();
        }
        log::info!(
            "stopped; {} pod(s) kept for the next start",
            self.pods.len()
        );
    }

    pub fn api_socket(&self) -> &Path {
        &self.cfg.api_socket
    }
}

fn none_if_empty(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The MAC a pod interface gets: 0a:58 and its IPv4 address (as Kubernetes
/// bridge plugins do), so it is stable across restarts and readable.
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
fn is_own_netns(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    ok.then_some(()).ok_or_else(|| {
        format!("pod id {id:?} must be 1-255 characters of letters, digits, '.', '_', ':' or '-'")
    })
}

fn validate_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    ok.then_some(()).ok_or_else(|| {
        format!("interface name {name:?} must be 1-15 printable characters without '/' or ':'")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_id("abc-1.2_x").is_ok());
        assert!(validate_id("cni:abc123:eth0").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(256)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", "a/b", "a:b", "..", "toolonginterface", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
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
