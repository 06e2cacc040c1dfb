//! The node's network side as the daemon sees it: pod interfaces, the
//! host port and the node's routes to the host port. [`NodeNet`] is every
//! such call the daemon makes; [`KernelNet`] does them for real (through
//! [`crate::podnet`], in the pod's and the node's namespaces), and tests
//! give the daemon a fake that records state and fails on demand, so its
//! all-or-nothing handlers are checked without root.
//!
//! Invariant: each method either does all of what it says or nothing (the
//! contract `podnet` keeps); deletions succeed when the thing is already
//! gone.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use podrouter_router::afxdp::{AfXdpConfig, AfXdpPort, XdpModeRequest};
use podrouter_router::port::Port;
use podrouter_types::Prefix;

use crate::config::{Backend, Config, XdpMode};
use crate::podnet::{self, PodInterfaceSpec, PodNetError};

/// A pod's port as the backend made it.
pub struct PodPort {
    pub port: Arc<dyn Port>,
    /// The same port as an AF_XDP port (afxdp backend), for its mode and
    /// counters.
    pub xdp: Option<Arc<AfXdpPort>>,
    /// The worker that must poll the port (an AF_XDP port's receive socket
    /// is in that worker's receive pool); `None`: any.
    pub worker: Option<usize>,
}

impl PodPort {
    /// A port of no particular backend (TAP, or a test's).
    pub fn plain(port: Arc<dyn Port>) -> PodPort {
        PodPort {
            port,
            xdp: None,
            worker: None,
        }
    }

    fn afxdp(port: AfXdpPort, worker: usize) -> PodPort {
        let x = Arc::new(port);
        PodPort {
            port: x.clone(),
            xdp: Some(x),
            worker: Some(worker),
        }
    }
}

/// What the daemon asks of the node's network. `Send + Sync`: a pod
/// interface's removal runs on the API connection's thread, off the
/// control thread (see [`crate::daemon::InterfaceRemoval`]).
pub trait NodeNet: Send + Sync {
    /// Creates (or re-opens, if it exists) the host port `name`.
    fn host_port(&self, name: &str, mac: [u8; 6], mtu: u16) -> Result<Arc<dyn Port>, PodNetError>;
    /// Creates a pod's interface, configured, as [`podnet::create_pod_interface`]
    /// (or [`podnet::create_pod_veth`] for the afxdp backend), and its port.
    fn create_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError>;
    /// Re-opens a pod's existing interface (after a restart), the one
    /// `spec` describes, and its port.
    fn attach_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError>;
    /// Deletes a pod's interface; success if it or its namespace is gone.
    fn delete_pod_interface(&self, netns: &Path, ifname: &str) -> Result<(), PodNetError>;
    /// The MAC of `ifname` in `netns`; `None` if there is no such
    /// interface.
    fn interface_mac(&self, netns: &Path, ifname: &str) -> Result<Option<[u8; 6]>, PodNetError>;
    /// Adds (or replaces) the node's route `prefix dev host_port`.
    fn host_route_add(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError>;
    /// Removes that route; success if it is not there.
    fn host_route_del(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError>;
    /// Keeps the namespace at `netns` alive, and a path naming it, until
    /// the returned hold drops, so that an interface removal that runs
    /// later still reaches it even if the runtime has deleted the
    /// namespace's file meanwhile. `None`: nothing to hold (use `netns`).
    fn hold_netns(&self, _netns: &Path) -> Option<NetnsHold> {
        None
    }
}

/// An open network namespace (see [`NodeNet::hold_netns`]).
pub struct NetnsHold {
    /// Names the namespace while `_fd` is open (`/proc/self/fd/N`).
    pub path: PathBuf,
    _fd: OwnedFd,
}

/// The real node: TAPs or veth pairs with AF_XDP ports, netlink and
/// network namespaces.
pub struct KernelNet {
    backend: Backend,
    /// Transmit sockets per AF_XDP port: one per worker.
    workers: u32,
    xdp_mode: XdpModeRequest,
    rx_chunks: u32,
}

/// The data plane's attach request for the config's `xdp_mode`.
pub fn xdp_mode_request(m: XdpMode) -> XdpModeRequest {
    match m {
        XdpMode::Auto => XdpModeRequest::Auto,
        XdpMode::Driver => XdpModeRequest::Driver,
        XdpMode::Generic => XdpModeRequest::Generic,
    }
}

impl KernelNet {
    /// The node as `cfg`'s `[dataplane]` wants its pods.
    pub fn for_config(cfg: &Config) -> KernelNet {
        KernelNet {
            backend: cfg.dataplane.backend,
            workers: cfg.dataplane.workers as u32,
            xdp_mode: xdp_mode_request(cfg.dataplane.xdp_mode),
            rx_chunks: cfg.dataplane.afxdp_rx_chunks,
        }
    }

    /// The AF_XDP port settings for the node end of `spec`'s veth.
    fn afxdp_config(&self, spec: &PodInterfaceSpec) -> AfXdpConfig {
        AfXdpConfig {
            ifname: podnet::node_veth_name(spec.ip),
            mtu: spec.mtu,
            tx_queues: self.workers,
            mode: self.xdp_mode,
            rx_chunks: self.rx_chunks,
            rx_worker: spec.worker,
        }
    }
}

impl NodeNet for KernelNet {
    fn host_port(&self, name: &str, mac: [u8; 6], mtu: u16) -> Result<Arc<dyn Port>, PodNetError> {
        Ok(Arc::new(podnet::create_or_attach_host_port(
            name,
            mac,
            mtu,
            self.workers as usize,
        )?))
    }

    fn create_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError> {
        match self.backend {
            Backend::Tap => Ok(PodPort::plain(Arc::new(
                podnet::create_pod_interface_with_queues(spec, self.workers as usize)?,
            ))),
            Backend::Afxdp => {
                let xcfg = self.afxdp_config(spec);
                podnet::create_pod_veth(spec, &xcfg.ifname, xcfg.tx_queues + 1)?;
                match podnet::open_afxdp_port(&xcfg) {
                    Ok(x) => Ok(PodPort::afxdp(x, spec.worker)),
                    Err(e) => {
                        if let Err(d) = podnet::delete_pod_interface(&spec.netns, &spec.ifname) {
                            log::warn!("rollback: cannot delete {}: {d}", spec.ifname);
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    fn attach_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError> {
        match self.backend {
            Backend::Tap => Ok(PodPort::plain(Arc::new(
                podnet::attach_pod_interface_with_queues(
                    &spec.netns,
                    &spec.ifname,
                    self.workers as usize,
                )?,
            ))),
            Backend::Afxdp => Ok(PodPort::afxdp(
                podnet::open_afxdp_port(&self.afxdp_config(spec))?,
                spec.worker,
            )),
        }
    }

    fn delete_pod_interface(&self, netns: &Path, ifname: &str) -> Result<(), PodNetError> {
        podnet::delete_pod_interface(netns, ifname)
    }

    fn interface_mac(&self, netns: &Path, ifname: &str) -> Result<Option<[u8; 6]>, PodNetError> {
        let link = crate::netns::run_in_netns(netns, || {
            crate::netlink::Netlink::open().and_then(|mut nl| nl.link_get(ifname))
        })
        .and_then(|r| r)
        .map_err(|e| {
            PodNetError::Other(format!("looking for {ifname} in {}: {e}", netns.display()))
        })?;
        Ok(link.and_then(|l| l.mac))
    }

    fn host_route_add(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError> {
        podnet::host_route_add(prefix, host_port)
    }

    fn host_route_del(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError> {
        podnet::host_route_del(prefix, host_port)
    }

    fn hold_netns(&self, netns: &Path) -> Option<NetnsHold> {
        let fd = crate::netns::open_netns(netns).ok()?;
        Some(NetnsHold {
            path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            _fd: fd,
        })
    }
}

/// A node in memory for tests: what exists, and a failure injected at the
/// k-th call (counting every call, from 0).
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use podrouter_router::frame::Frame;
    use podrouter_router::port::{Port, TxQueue};
    use podrouter_types::Prefix;

    use super::{NodeNet, PodPort};
    use crate::podnet::{PodInterfaceSpec, PodNetError};

    /// What the fake node holds.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct NetState {
        pub host_ports: BTreeSet<String>,
        /// (netns, ifname) -> MAC.
        pub interfaces: BTreeMap<(PathBuf, String), [u8; 6]>,
        /// (prefix, host port).
        pub routes: BTreeSet<(Prefix, String)>,
    }

    #[derive(Default)]
    struct Inner {
        state: NetState,
        calls: usize,
        fail_at: Option<usize>,
    }

    /// Cheap to clone: clones share one node, so a test keeps one to look
    /// at what the daemon left.
    #[derive(Clone, Default)]
    pub struct FakeNet(Arc<Mutex<Inner>>);

    impl FakeNet {
        pub fn state(&self) -> NetState {
            self.0.lock().unwrap().state.clone()
        }

        /// Calls made so far.
        pub fn calls(&self) -> usize {
            self.0.lock().unwrap().calls
        }

        /// Makes the call numbered `k` (see [`FakeNet::calls`]) fail.
        pub fn fail_at(&self, k: Option<usize>) {
            self.0.lock().unwrap().fail_at = k;
        }

        /// Counts a call; runs `f` on the state unless this call is the
        /// one to fail.
        fn step<T>(
            &self,
            what: &str,
            f: impl FnOnce(&mut NetState) -> Result<T, PodNetError>,
        ) -> Result<T, PodNetError> {
            let mut g = self.0.lock().unwrap();
            let k = g.calls;
            g.calls += 1;
            if g.fail_at == Some(k) {
                return Err(PodNetError::Other(format!("injected failure: {what}")));
            }
            f(&mut g.state)
        }
    }

    /// A port that never receives; sends vanish.
    pub struct FakePort {
        /// Never written: its other end is kept so it never reads EOF.
        idle: (UnixStream, UnixStream),
    }

    impl FakePort {
        pub fn shared() -> Arc<dyn Port> {
            Arc::new(FakePort {
                idle: UnixStream::pair().expect("socketpair"),
            })
        }
    }

    impl Port for FakePort {
        fn recv(&self, _frames: &mut [Frame]) -> io::Result<usize> {
            Ok(0)
        }
        fn push(
            &self,
            _queue: &mut TxQueue,
            _frame: &Frame,
            _tunnel: Option<std::net::Ipv4Addr>,
        ) -> io::Result<()> {
            Ok(())
        }
        fn readiness_fd(&self) -> Option<RawFd> {
            Some(self.idle.0.as_raw_fd())
        }
    }

    fn key(netns: &Path, ifname: &str) -> (PathBuf, String) {
        (netns.to_path_buf(), ifname.to_string())
    }

    impl NodeNet for FakeNet {
        fn host_port(
            &self,
            name: &str,
            _mac: [u8; 6],
            _mtu: u16,
        ) -> Result<Arc<dyn Port>, PodNetError> {
            self.step("host port", |s| {
                s.host_ports.insert(name.to_string());
                Ok(FakePort::shared())
            })
        }

        fn create_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError> {
            self.step("create pod interface", |s| {
                let k = key(&spec.netns, &spec.ifname);
                if s.interfaces.contains_key(&k) {
                    return Err(PodNetError::InterfaceExists {
                        netns: spec.netns.display().to_string(),
                        ifname: spec.ifname.clone(),
                    });
                }
                s.interfaces.insert(k, spec.mac);
                Ok(PodPort::plain(FakePort::shared()))
            })
        }

        fn attach_pod_interface(&self, spec: &PodInterfaceSpec) -> Result<PodPort, PodNetError> {
            self.step("attach pod interface", |s| {
                if !s.interfaces.contains_key(&key(&spec.netns, &spec.ifname)) {
                    return Err(PodNetError::InterfaceNotFound {
                        netns: spec.netns.display().to_string(),
                        ifname: spec.ifname.clone(),
                    });
                }
                Ok(PodPort::plain(FakePort::shared()))
            })
        }

        fn delete_pod_interface(&self, netns: &Path, ifname: &str) -> Result<(), PodNetError> {
            self.step("delete pod interface", |s| {
                s.interfaces.remove(&key(netns, ifname));
                Ok(())
            })
        }

        fn interface_mac(
            &self,
            netns: &Path,
            ifname: &str,
        ) -> Result<Option<[u8; 6]>, PodNetError> {
            self.step("look up interface", |s| {
                Ok(s.interfaces.get(&key(netns, ifname)).copied())
            })
        }

        fn host_route_add(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError> {
            self.step("add host route", |s| {
                s.routes.insert((prefix, host_port.to_string()));
                Ok(())
            })
        }

        fn host_route_del(&self, prefix: Prefix, host_port: &str) -> Result<(), PodNetError> {
            self.step("delete host route", |s| {
                s.routes.remove(&(prefix, host_port.to_string()));
                Ok(())
            })
        }
    }
}
