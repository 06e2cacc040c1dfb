//! The daemon's side of a takeover ([`crate::takeover`] has the exchange
//! between the two processes): what the running daemon checks, pauses,
//! hands over and resumes, and how the new one starts on what it was
//! handed.
//!
//! Invariants: the new daemon's workers start paused and receive only
//! after [`Daemon::finish_takeover`], which the exchange calls once the
//! old daemon has paused its own workers for good and committed to exit;
//! the old daemon resumes them only if the takeover is abandoned before
//! that. So at no time do two daemons read one TAP or socket, and the
//! data plane pauses only for the last round trip of the exchange. The new daemon adopts every pod the state file
//! holds from a handed-over descriptor, or refuses to start: it never
//! opens, creates or forgets a pod interface the old daemon holds.
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use podrouter_api::{TakeoverOffer, TakeoverParams, TakeoverPod};
use podrouter_router::port::{Port, PortRole};
use podrouter_router::tap::TapPort;
use podrouter_types::Prefix;

use super::{Daemon, StartError};
use crate::config::{Backend, Config, TunnelKind};
use crate::nodenet::{KernelNet, NodeNet, PodPort};
use crate::podnet::{PodInterfaceSpec, PodNetError};
use crate::state::PodRecord;

/// Everything a takeover hands the new daemon, as received.
pub struct Handed {
    /// The state directory's lock file, locked.
    pub lock: std::fs::File,
    /// The API socket's listener.
    pub api: OwnedFd,
    /// The host port's TAP.
    pub host: OwnedFd,
    /// The IPIP uplink's raw socket, if the old daemon had an uplink.
    pub uplink: Option<OwnedFd>,
    /// Each pod's TAP.
    pub pods: Vec<(TakeoverPod, OwnedFd)>,
}

/// What [`Daemon::start_inner`] takes from a takeover besides the
/// interfaces (those come through [`AdoptedNet`]).
pub(super) struct Inherited {
    pub lock: Option<std::fs::File>,
    pub api: OwnedFd,
    pub uplink: Option<OwnedFd>,
    /// The (netns, ifname) of every pod whose TAP was handed over.
    pub pods: BTreeSet<(PathBuf, String)>,
}

impl Inherited {
    /// Why the state file's pods do not match what was handed over, if
    /// they do not: every pod must come with its TAP.
    pub fn unhanded(&self, records: &[PodRecord]) -> Option<String> {
        let missing: Vec<String> = records
            .iter()
            .filter(|r| !self.pods.contains(&(r.netns.clone(), r.ifname.clone())))
            .map(|r| r.id.clone())
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "the state file holds pod(s) whose TAP was not handed over: {}",
                missing.join(", ")
            )
        })
    }
}

/// The node's network with the TAPs a takeover handed over: the host
/// port and the pods' interfaces are the adopted descriptors (checked
/// when adopted: a TAP of the expected name), everything else is the
/// kernel's.
struct AdoptedNet {
    kernel: KernelNet,
    host: Mutex<Option<TapPort>>,
    pods: Mutex<BTreeMap<(PathBuf, String), TapPort>>,
}

impl NodeNet for AdoptedNet {
    fn host_port(&self, name: &str, mac: [u8; 6], mtu: u16) -> Result<Arc<dyn Port>, PodNetError> {
        match lock(&self.host).take() {
            Some(tap) => Ok(Arc::new(tap)),
            None => self.kernel.host_port(name, mac, mtu),
        }
    }

    fn create_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError> {
        self.kernel.create_pod_interface(spec)
    }

    fn attach_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError> {
        let key = (spec.netns.clone(), spec.ifname.clone());
        match lock(&self.pods).remove(&key) {
            Some(tap) => Ok(PodPort::plain(Arc::new(tap))),
            None => Err(PodNetError::Other(format!(
                "{} in {} was not handed over",
                spec.ifname,
                spec.netns.display()
            ))),
        }
    }

    fn delete_pod_interface(&self, netns: &Path, ifname: &str) -> Result<(), PodNetError> {
        self.kernel.delete_pod_interface(netns, ifname)
    }

    fn interface_mac(&self, netns: &Path, ifname: &str) -> Result<Option<[u8; 6]>, PodNetError> {
        self.kernel.interface_mac(netns, ifname)
    }

    fn host_route_add(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError> {
        self.kernel.host_route_add(prefix, host_port)
    }

    fn host_route_del(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError> {
        self.kernel.host_route_del(prefix, host_port)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a daemon with `cfg` cannot hand over its data plane at all.
pub fn unsupported(cfg: &Config) -> Option<String> {
    if cfg.dataplane.backend != Backend::Tap {
        return Some(format!(
            "the {} backend's sockets cannot be handed over (only the tap backend's); \
             restart podrouterd instead",
            cfg.dataplane.backend
        ));
    }
    if cfg.dataplane.tunnel != TunnelKind::Ipip {
        return Some(format!(
            "the {} uplink cannot be handed over (only the IPIP uplink); restart podrouterd \
             instead",
            cfg.dataplane.tunnel
        ));
    }
    if cfg.dataplane.uplink_xdp {
        return Some(
            "the uplink's AF_XDP sockets cannot be handed over (uplink_xdp = true); restart \
             podrouterd instead"
                .to_string(),
        );
    }
    if cfg.dataplane.workers > 1 {
        return Some(format!(
            "with {} workers the host port is a multi-queue TAP whose queues are not handed              over yet (only one worker's); restart podrouterd instead",
            cfg.dataplane.workers
        ));
    }
    None
}

impl Daemon {
    /// Starts on what a takeover handed over (see [`Daemon::start_inner`]):
    /// every TAP is checked first (a TAP of the expected name), so a
    /// refusal happens before anything on the node is touched.
    pub fn start_adopted(
        cfg: Config,
        config_path: Option<PathBuf>,
        handed: Handed,
    ) -> Result<Daemon, StartError> {
        if let Some(why) = unsupported(&cfg) {
            return Err(StartError::Takeover(why));
        }
        let host = TapPort::adopt(handed.host, &cfg.dataplane.host_port)
            .map_err(|e| StartError::Takeover(format!("host port: {e}")))?;
        let mut pods = BTreeMap::new();
        for (p, fd) in handed.pods {
            let tap = TapPort::adopt(fd, &p.ifname)
                .map_err(|e| StartError::Takeover(format!("pod {}: {e}", p.id)))?;
            pods.insert((PathBuf::from(p.netns), p.ifname), tap);
        }
        let inherited = Inherited {
            lock: Some(handed.lock),
            api: handed.api,
            uplink: handed.uplink,
            pods: pods.keys().cloned().collect(),
        };
        let net = AdoptedNet {
            kernel: KernelNet::for_config(&cfg),
            host: Mutex::new(Some(host)),
            pods: Mutex::new(pods),
        };
        Daemon::start_inner(Box::new(net), cfg, config_path, Some(inherited))
    }

    /// The new daemon's last step, once the old one has committed to exit:
    /// the workers receive (frames queued meanwhile first), pending
    /// detaches are finished and BGP starts, adopting the restored routes.
    pub fn finish_takeover(&mut self) -> Result<(), StartError> {
        for w in &self.workers {
            w.resume().map_err(|e| StartError::Worker(w.id, e))?;
        }
        self.process_pending_detaches();
        self.commit(&mut []);
        if let Some(learned) = self.deferred_bgp.take() {
            let kernel = self.uplink.clone();
            self.bgp = crate::bgp::BgpHandle::start(&self.cfg, self.fib.clone(), kernel, learned)
                .map_err(StartError::Bgp)?;
        }
        Ok(())
    }

    /// The running configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The API listener a takeover handed over, for the server (once).
    pub fn take_api_listener(&mut self) -> Option<OwnedFd> {
        self.inherited_api.take()
    }

    /// Why this daemon will not hand over to the one asking with `p`.
    pub(crate) fn takeover_refusal(&self, p: &TakeoverParams) -> Option<String> {
        if p.protocol != crate::takeover::PROTOCOL {
            return Some(format!(
                "takeover protocol {} asked, this podrouterd speaks {}",
                p.protocol,
                crate::takeover::PROTOCOL
            ));
        }
        if p.state_version != crate::state::STATE_VERSION {
            return Some(format!(
                "the new podrouterd reads state format {}, this one writes {}",
                p.state_version,
                crate::state::STATE_VERSION
            ));
        }
        if let Some(why) = unsupported(&self.cfg) {
            return Some(why);
        }
        let ours = crate::takeover::essentials(&self.cfg);
        let differ: Vec<String> = ours
            .keys()
            .chain(p.config.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| ours.get(*k) != p.config.get(*k))
            .map(|k| {
                format!(
                    "{k} ({} here, {} there)",
                    ours.get(k).map_or("missing", String::as_str),
                    p.config.get(k).map_or("missing", String::as_str)
                )
            })
            .collect();
        if !differ.is_empty() {
            return Some(format!(
                "the new podrouterd's config differs in what is handed over: {}",
                differ.join(", ")
            ));
        }
        None
    }

    /// First step of a handover: BGP stops as for a graceful restart (its
    /// learned routes saved for the new daemon, FIB and kernel routes
    /// kept). The workers keep forwarding.
    pub(crate) fn stop_bgp_for_handover(&mut self) {
        if let Some(b) = self.bgp.take() {
            b.stop_for_handover();
        }
    }

    /// Once the new daemon is ready: every worker pauses (what it received
    /// is sent on first); frames arriving from now on wait in the ports'
    /// queues for the new daemon.
    pub(crate) fn pause_workers(&mut self) -> Result<(), String> {
        for w in &self.workers {
            w.pause()
                .and_then(|p| p.wait())
                .map_err(|e| format!("worker {}: cannot pause: {e}", w.id))?;
        }
        Ok(())
    }

    /// The offer and the descriptors to send after it, in the offer's
    /// order (they stay open as long as `self`): state lock, API
    /// listener (`api`, the server's), host port, uplink, pods.
    pub(crate) fn handover_offer(&self, api: RawFd) -> Result<(TakeoverOffer, Vec<RawFd>), String> {
        let ports = self.ports.load();
        let host = ports
            .iter()
            .find(|(_, e)| matches!(e.info.role, PortRole::Host { .. }))
            .and_then(|(_, e)| e.port.readiness_fd())
            .ok_or("the host port has no descriptor")?;
        let mut fds = vec![self.store.lock_file().as_raw_fd(), api, host];
        let uplink = match &self.uplink {
            Some(u) => {
                fds.push(
                    u.port
                        .readiness_fd()
                        .ok_or("the uplink has no descriptor")?,
                );
                true
            }
            None => false,
        };
        let mut pods = Vec::with_capacity(self.pods.len());
        for (id, pod) in &self.pods {
            let fd = ports
                .get(pod.port)
                .and_then(|e| e.port.readiness_fd())
                .ok_or_else(|| format!("pod {id}: its port has no descriptor"))?;
            fds.push(fd);
            pods.push(TakeoverPod {
                id: id.clone(),
                netns: pod.record.netns.display().to_string(),
                ifname: pod.record.ifname.clone(),
            });
        }
        let offer = TakeoverOffer {
            pid: std::process::id(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            uplink,
            pods,
        };
        debug_assert_eq!(offer.fd_count(), fds.len());
        Ok((offer, fds))
    }

    /// The takeover was abandoned after [`Daemon::stop_bgp_for_handover`]:
    /// paused workers receive again (frames queued meanwhile first) and
    /// BGP starts again as after a graceful restart.
    pub(crate) fn resume_after_abandoned_handover(&mut self) {
        for w in &self.workers {
            if let Err(e) = w.resume() {
                log::error!("worker {}: cannot resume: {e}", w.id);
            }
        }
        if self.bgp.is_none() && self.cfg.bgp.is_some() {
            let learned = crate::bgp::restore_saved(&self.cfg, &self.fib);
            let kernel = self.uplink.clone();
            match crate::bgp::BgpHandle::start(&self.cfg, self.fib.clone(), kernel, learned) {
                Ok(b) => self.bgp = b,
                Err(e) => log::error!("bgp: cannot start again after the abandoned takeover: {e}"),
            }
        }
    }

    /// The new daemon has everything and this one will exit:
    /// [`Daemon::shutdown`] then leaves what it handed over alone.
    pub(crate) fn handed_over(&mut self) {
        self.handed_over = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dataplane: &str) -> Config {
        let text = format!(
            "node_name = \"t\"\npod_cidrs = [\"10.244.0.0/28\"]\n\n[dataplane]\n{dataplane}"
        );
        Config::parse(&text, "test.toml").unwrap()
    }

    /// What cannot be handed over yet is refused with its reason; a
    /// single-worker tap node with IPIP can.
    #[test]
    fn what_a_takeover_refuses() {
        assert_eq!(unsupported(&cfg("")), None);
        let why = |d: &str| unsupported(&cfg(d)).unwrap_or_default();
        assert!(
            why("workers = 2\n").contains("2 workers"),
            "{}",
            why("workers = 2\n")
        );
        assert!(why("backend = \"afxdp\"\n").contains("afxdp"));
        assert!(why("tunnel = \"vxlan\"\n").contains("vxlan"));
    }
}
