//! Pod and host interface plumbing: the TAP that is a pod's `eth0` (or, for
//! the afxdp backend, the veth pair whose node end gets an AF_XDP port:
//! [`create_pod_veth`], [`open_afxdp_port`]), the host port `podrouter0`,
//! and the node routes that send pod traffic into the router.
//!
//! A pod interface is a persistent TAP created directly inside the pod's
//! namespace under its final name: the `/dev/net/tun` descriptor is opened
//! by a thread that has entered that namespace, which is where `TUNSETIFF`
//! then registers the device. It is given its MAC and MTU while down, then
//! brought up with Calico's addressing: `IP/32`, `169.254.1.1 dev IFNAME
//! scope link`, `default via 169.254.1.1 dev IFNAME` (routes with protocol
//! [`RTPROT_PODROUTER`]). The returned [`TapPort`]'s descriptor works from
//! any thread and namespace. Nothing moves between namespaces and nothing
//! is renamed: either would make the kernel wait for an RCU grace period
//! (about 20 ms per pod here, most of an attach).
//!
//! The descriptor, having been opened in the pod's namespace, holds a
//! reference to it (as one re-opened after a podrouterd restart always
//! did): a namespace whose file is removed without a detach lives on,
//! with its interface, until the pod is detached or podrouterd exits.
//!
//! Invariants:
//! - Never a half-made interface: if any step of a creation fails, the TAP
//!   is deleted over netlink in the pod's namespace, and made
//!   non-persistent and closed, so the kernel deletes it in any case once
//!   the descriptor is released.
//! - Nothing here changes the calling thread's namespace: pod-side work runs
//!   on a scoped thread ([`run_in_netns_fd`]); node-side work runs in the
//!   caller's namespace (the node's, in podrouterd).
//! - Deletion is idempotent: a missing interface or namespace is success.
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use podrouter_api::{check_ifname, InvalidIfname};
use podrouter_router::afxdp::{AfXdpConfig, AfXdpPort};
use podrouter_router::bpf::XDP_PROG_NAME;
use podrouter_router::sys::bpf;
use podrouter_router::tap::TapPort;
use podrouter_router::GATEWAY_IP;
use podrouter_types::Prefix;

use crate::netlink::{errno, fmt_mac, Ipv4Route, LinkInfo, Netlink, Scope, XdpAttachment};
use crate::netns::{open_netns, run_in_netns_fd};

pub use crate::netlink::RTPROT_PODROUTER;

/// What a pod's interface should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterfaceSpec {
    /// The pod's network namespace file, e.g. `/run/netns/pod1` or
    /// `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// Interface name inside the pod, e.g. `eth0`.
    pub ifname: String,
    /// The pod's address; configured as a /32.
    pub ip: Ipv4Addr,
    /// Largest IPv4 packet on the link (TAPs accept 68..=65521).
    pub mtu: u16,
    pub mac: [u8; 6],
    /// The worker that will poll the pod's port (the afxdp backend puts
    /// its receive socket in that worker's receive pool).
    pub worker: usize,
}

/// Why pod or host interface plumbing failed, and for whom.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// The pod's network namespace file does not exist.
    #[error("pod netns {netns} does not exist")]
    NetnsNotFound { netns: String },
    /// The path exists but is not a network namespace.
    #[error("{netns} is not a network namespace: {source}")]
    NotANetns { netns: String, source: io::Error },
    /// The namespace could not be opened or entered.
    #[error("cannot enter pod netns {netns}: {source}")]
    Netns { netns: String, source: io::Error },
    /// The pod already has an interface of the requested name.
    #[error("pod netns {netns} already has an interface named {ifname}")]
    InterfaceExists { netns: String, ifname: String },
    /// The pod has no interface of that name (to attach to).
    #[error("pod netns {netns} has no interface named {ifname}")]
    InterfaceNotFound { netns: String, ifname: String },
    /// The requested interface name breaks the interface-name rule.
    #[error(transparent)]
    InvalidName(#[from] InvalidIfname),
    /// The host port is not there (for a host route).
    #[error("host port {name} does not exist in the node namespace")]
    HostPortNotFound { name: String },
    /// Creating or re-opening a TAP device failed.
    #[error("cannot {action} TAP {tap} for {whom}: {source}")]
    Tap {
        action: &'static str,
        tap: String,
        whom: String,
        source: io::Error,
    },
    /// One configuration step (netlink request) failed.
    #[error("cannot {step} for {whom}: {source}")]
    Step {
        step: String,
        whom: String,
        source: io::Error,
    },
    /// Anything else, described by its message (for callers that wrap
    /// their own failures around this plumbing).
    #[error("{0}")]
    Other(String),
}

impl PodNetError {
    fn step(step: impl Into<String>, whom: &str, source: io::Error) -> PodNetError {
        PodNetError::Step {
            step: step.into(),
            whom: whom.to_string(),
            source,
        }
    }
}

/// Maps an error of [`open_netns`] / [`run_in_netns_fd`] for `netns`.
fn netns_error(netns: &Path, e: io::Error) -> PodNetError {
    let netns = netns.display().to_string();
    match e.kind() {
        io::ErrorKind::NotFound => PodNetError::NetnsNotFound { netns },
        io::ErrorKind::InvalidInput => PodNetError::NotANetns { netns, source: e },
        _ => PodNetError::Netns { netns, source: e },
    }
}

/// A freshly created TAP that is deleted on drop unless [`disarm`]ed.
///
/// Dropping it clears `IFF_PERSIST` and closes the descriptor, which makes
/// the kernel delete the device, but only once no other reference to the
/// open file remains (a child that another thread forked keeps one until
/// it execs). So it also deletes the device over netlink, in the calling
/// thread's namespace, if it still has the name it was created with there
/// (`TUNGETIFF`): it must be dropped in the namespace it was created in.
///
/// [`disarm`]: NewTap::disarm
struct NewTap {
    tap: Option<TapPort>,
    whom: String,
    /// The name the TAP was created with, in the current namespace.
    created_as: String,
}

impl NewTap {
    fn new(tap: TapPort, created_as: &str, whom: &str) -> NewTap {
        NewTap {
            tap: Some(tap),
            whom: whom.to_string(),
            created_as: created_as.to_string(),
        }
    }

    fn disarm(mut self) -> TapPort {
        self.tap.take().expect("NewTap disarmed twice")
    }
}

/// Deletes the link called `name` in the calling thread's namespace, if
/// there is one.
fn delete_link_named(name: &str) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    let Some(index) = nl.link_index(name)? else {
        return Ok(());
    };
    match nl.link_delete(index) {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

impl Drop for NewTap {
    fn drop(&mut self) {
        let Some(tap) = self.tap.take() else {
            return;
        };
        if let Err(e) = tap.set_persist(false) {
            log::warn!(
                "rollback for {}: cannot clear persist on the new TAP: {e}",
                self.whom
            );
        }
        let name = match tap.name() {
            Ok(n) => n,
            Err(_) => return, // already deleted
        };
        if name == self.created_as {
            if let Err(e) = delete_link_named(&name) {
                log::warn!(
                    "rollback for {}: cannot delete the new TAP {name} (it goes once its descriptor is released): {e}",
                    self.whom
                );
            }
        }
        drop(tap);
    }
}

/// A step at which tests inject a failure, to check the rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Created, MAC and MTU set, still down.
    Down,
    /// Up, before the address.
    Up,
}

/// Creates a pod's interface as described in the module doc and returns its
/// TAP (persistent, in the pod's namespace). On failure nothing is left
/// behind.
pub fn create_pod_interface(spec: &PodInterfaceSpec) -> Result<TapPort, PodNetError> {
    create_pod_interface_inner(spec, 1, None)
}

/// [`create_pod_interface`] with `queues` receive queues (one per worker):
/// a multi-queue TAP whose flows the pod's kernel spreads over them
/// ([`podrouter_router::mq`]), so one pod's connections are read by every
/// worker. One queue is a plain single-queue TAP.
pub fn create_pod_interface_with_queues(
    spec: &PodInterfaceSpec,
    queues: usize,
) -> Result<TapPort, PodNetError> {
    create_pod_interface_inner(spec, queues, None)
}

fn create_pod_interface_inner(
    spec: &PodInterfaceSpec,
    queues: usize,
    fail_at: Option<Stage>,
) -> Result<TapPort, PodNetError> {
    let whom = format!(
        "pod netns {} interface {}",
        spec.netns.display(),
        spec.ifname
    );
    check_ifname(&spec.ifname)?;
    let ns = open_netns(&spec.netns).map_err(|e| netns_error(&spec.netns, e))?;
    in_pod(ns.as_fd(), &spec.netns, || {
        create_in_pod(spec, queues, &whom, fail_at)
    })?
}

/// Runs `f` in the pod's namespace, mapping failures to enter it.
fn in_pod<T: Send>(
    ns: BorrowedFd<'_>,
    netns: &Path,
    f: impl FnOnce() -> T + Send,
) -> Result<T, PodNetError> {
    run_in_netns_fd(ns, &netns.display().to_string(), f).map_err(|e| netns_error(netns, e))
}

/// The whole creation, on a thread inside the pod's namespace: the TAP
/// (refused by the kernel if any device of that name exists there), MAC
/// and MTU while down, up, address, routes. Any failure drops the
/// [`NewTap`] here, in the pod's namespace, which deletes the device.
fn create_in_pod(
    spec: &PodInterfaceSpec,
    queues: usize,
    whom: &str,
    fail_at: Option<Stage>,
) -> Result<TapPort, PodNetError> {
    let tap = if queues > 1 {
        TapPort::create_multi_queue(&spec.ifname, queues)
    } else {
        TapPort::create(&spec.ifname)
    };
    let tap = tap.map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            PodNetError::InterfaceExists {
                netns: spec.netns.display().to_string(),
                ifname: spec.ifname.clone(),
            }
        } else {
            PodNetError::Tap {
                action: "create",
                tap: spec.ifname.clone(),
                whom: whom.to_string(),
                source: e,
            }
        }
    })?;
    let new_tap = NewTap::new(tap, &spec.ifname, whom);
    let err = |what: String| move |e: io::Error| PodNetError::step(what, whom, e);
    let mut nl = Netlink::open().map_err(err("open netlink in the pod netns".into()))?;
    let index = nl
        .link_index(&spec.ifname)
        .map_err(err("look up the new TAP".into()))?
        .ok_or_else(|| {
            err("look up the new TAP".into())(io::Error::new(
                io::ErrorKind::NotFound,
                "created TAP vanished",
            ))
        })?;
    nl.link_set_mac(index, spec.mac)
        .map_err(err(format!("set MAC {}", fmt_mac(&spec.mac))))?;
    nl.link_set_mtu(index, spec.mtu.into())
        .map_err(err(format!("set MTU {}", spec.mtu)))?;
    if fail_at == Some(Stage::Down) {
        return Err(err("injected failure".into())(io::Error::other("test")));
    }
    bring_up_addressed(&mut nl, index, spec, whom, fail_at)?;
    Ok(new_tap.disarm())
}

/// Brings pod interface `index` up with Calico's addressing: `IP/32`,
/// `169.254.1.1 dev IFNAME scope link`, `default via 169.254.1.1`. Runs
/// in the pod's namespace (`nl` was opened there).
fn bring_up_addressed(
    nl: &mut Netlink,
    index: u32,
    spec: &PodInterfaceSpec,
    whom: &str,
    fail_at: Option<Stage>,
) -> Result<(), PodNetError> {
    let err = |what: String| move |e: io::Error| PodNetError::step(what, whom, e);
    nl.link_set_up(index)
        .map_err(err("bring the interface up".into()))?;
    if fail_at == Some(Stage::Up) {
        return Err(err("injected failure".into())(io::Error::other("test")));
    }
    tap_noqueue(nl, index, whom);
    nl.addr_add(index, spec.ip, 32)
        .map_err(err(format!("add address {}/32", spec.ip)))?;
    let gateway = Ipv4Route {
        dst: GATEWAY_IP,
        prefix_len: 32,
        gateway: None,
        oif: index,
        scope: Scope::Link,
        onlink: false,
        multipath: Vec::new(),
        metric: 0,
    };
    nl.route_replace(&gateway)
        .map_err(err(format!("add route {GATEWAY_IP} scope link")))?;
    let default = Ipv4Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(GATEWAY_IP),
        oif: index,
        scope: Scope::Universe,
        onlink: false,
        multipath: Vec::new(),
        metric: 0,
    };
    nl.route_replace(&default)
        .map_err(err(format!("add default route via {GATEWAY_IP}")))?;
    Ok(())
}

/// Re-opens a pod's existing interface (after a podrouterd restart).
pub fn attach_pod_interface(netns: &Path, ifname: &str) -> Result<TapPort, PodNetError> {
    attach_pod_interface_with_queues(netns, ifname, 1)
}

/// [`attach_pod_interface`] with up to `queues` receive queues: a
/// multi-queue TAP gets `queues` (at least one), a single-queue one (made
/// while podrouterd ran one worker) keeps its one queue.
pub fn attach_pod_interface_with_queues(
    netns: &Path,
    ifname: &str,
    queues: usize,
) -> Result<TapPort, PodNetError> {
    check_ifname(ifname)?;
    let ns = open_netns(netns).map_err(|e| netns_error(netns, e))?;
    let attach = || {
        // The device's kind decides: attaching with the other kind's flags
        // fails with `InvalidInput`, then the other kind is tried.
        let single = || TapPort::attach(ifname);
        let multi = || TapPort::attach_multi_queue(ifname, queues.max(1));
        let other_kind = |e: &io::Error| e.kind() == io::ErrorKind::InvalidInput;
        let tap = if queues > 1 {
            multi().or_else(|e| if other_kind(&e) { single() } else { Err(e) })
        } else {
            single().or_else(|e| if other_kind(&e) { multi() } else { Err(e) })
        }?;
        // A pod made before pods got `noqueue` (session 11) gets it now.
        let whom = format!("pod netns {}", netns.display());
        match Netlink::open().and_then(|mut nl| Ok((nl.link_index(ifname)?, nl))) {
            Ok((Some(index), mut nl)) => tap_noqueue(&mut nl, index, &whom),
            Ok((None, _)) => {}
            Err(e) => log::warn!("{whom}: cannot check the qdisc of {ifname}: {e}"),
        }
        Ok::<_, io::Error>(tap)
    };
    in_pod(ns.as_fd(), netns, attach)?.map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PodNetError::InterfaceNotFound {
                netns: netns.display().to_string(),
                ifname: ifname.to_string(),
            }
        } else {
            PodNetError::Tap {
                action: "attach to",
                tap: ifname.to_string(),
                whom: format!("pod netns {}", netns.display()),
                source: e,
            }
        }
    })
}

/// Deletes a pod's interface. Success if it, or the whole namespace, is
/// already gone (a path that is no longer a namespace counts as gone). A
/// [`TapPort`] still open on it stops working (reads fail with `EBADFD`).
pub fn delete_pod_interface(netns: &Path, ifname: &str) -> Result<(), PodNetError> {
    check_ifname(ifname)?;
    let ns = match open_netns(netns) {
        Ok(ns) => ns,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
            ) =>
        {
            return Ok(())
        }
        Err(e) => return Err(netns_error(netns, e)),
    };
    let whom = format!("pod netns {} interface {ifname}", netns.display());
    in_pod(ns.as_fd(), netns, || -> io::Result<()> {
        let mut nl = Netlink::open()?;
        let Some(index) = nl.link_index(ifname)? else {
            return Ok(());
        };
        match nl.link_delete(index) {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => r,
        }
    })?
    .map_err(|e| PodNetError::step("delete the interface", &whom, e))
}

/// Name of the node end of the veth pair of the pod with address `ip`
/// (afxdp backend): `prx` and the address in hex, unique in the node
/// namespace and found again from the pod's record after a restart.
pub fn node_veth_name(ip: Ipv4Addr) -> String {
    format!("prx{:08x}", u32::from(ip))
}

/// A veth pair made in the pod's namespace, deleted again on drop unless
/// disarmed; it must be dropped in that namespace (deleting the pod end
/// deletes both ends).
struct NewVeth<'a> {
    name: &'a str,
    whom: &'a str,
    armed: bool,
}

impl Drop for NewVeth<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = delete_link_named(self.name) {
                log::warn!(
                    "rollback for {}: cannot delete the new veth: {e}",
                    self.whom
                );
            }
        }
    }
}

/// Creates a pod's interface for the afxdp backend: `eth0` (as `spec`
/// says, addressed and routed as a TAP pod's is) is the pod end of a veth
/// pair whose node end `node_ifname` is placed directly in the calling
/// thread's (the node's) namespace with `queues` queues (one for receive,
/// one per worker for transmit) and brought up. Transmit checksum offload
/// is turned off on the pod end: the node end's AF_XDP socket gets frames
/// exactly as they left the pod, so their checksums must be complete (TCP
/// segmentation offload goes with it). On failure nothing is left behind.
pub fn create_pod_veth(
    spec: &PodInterfaceSpec,
    node_ifname: &str,
    queues: u32,
) -> Result<(), PodNetError> {
    let whom = format!(
        "pod netns {} interface {} (veth peer {node_ifname})",
        spec.netns.display(),
        spec.ifname
    );
    check_ifname(&spec.ifname)?;
    check_ifname(node_ifname)?;
    let node_ns = open_netns(Path::new("/proc/thread-self/ns/net"))
        .map_err(|e| PodNetError::step("open the node netns", &whom, e))?;
    let ns = open_netns(&spec.netns).map_err(|e| netns_error(&spec.netns, e))?;
    let whom_ref = whom.as_str();
    in_pod(ns.as_fd(), &spec.netns, || -> Result<(), PodNetError> {
        let err = |what: String| move |e: io::Error| PodNetError::step(what, whom_ref, e);
        let mut nl = Netlink::open().map_err(err("open netlink in the pod netns".into()))?;
        nl.veth_add(
            &spec.ifname,
            spec.mac,
            spec.mtu.into(),
            node_ifname,
            node_ns.as_fd(),
            queues,
        )
        .map_err(|e| {
            if errno(&e) == Some(libc::EEXIST) {
                PodNetError::InterfaceExists {
                    netns: spec.netns.display().to_string(),
                    ifname: format!("{} (or node-side {node_ifname})", spec.ifname),
                }
            } else {
                err("create the veth pair".into())(e)
            }
        })?;
        let mut guard = NewVeth {
            name: &spec.ifname,
            whom: whom_ref,
            armed: true,
        };
        let index = nl
            .link_index(&spec.ifname)
            .map_err(err("look up the new veth".into()))?
            .ok_or_else(|| {
                err("look up the new veth".into())(io::Error::new(
                    io::ErrorKind::NotFound,
                    "created veth vanished",
                ))
            })?;
        crate::sys::set_tx_checksum_offload(&spec.ifname, false)
            .map_err(err("turn transmit checksum offload off".into()))?;
        bring_up_addressed(&mut nl, index, spec, whom_ref, None)?;
        guard.armed = false;
        Ok(())
    })??;
    let up = (|| -> io::Result<()> {
        let mut nl = Netlink::open()?;
        let index = nl.link_index(node_ifname)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "node end of the veth vanished")
        })?;
        nl.link_set_up(index)
    })();
    if let Err(e) = up {
        let _ = delete_pod_interface(&spec.netns, &spec.ifname);
        return Err(PodNetError::step("bring the node end up", &whom, e));
    }
    Ok(())
}

/// Opens the AF_XDP port on `cfg.ifname`, the node end of a pod's veth
/// pair, in the calling thread's namespace. An XDP program a previous
/// podrouterd left there (one named [`XDP_PROG_NAME`]: a pinned or
/// inherited link, or one attached through netlink) is detached first, so
/// programs never stack; any other program is left alone and the port
/// refused.
pub fn open_afxdp_port(cfg: &AfXdpConfig) -> Result<AfXdpPort, PodNetError> {
    let whom = format!("veth node end {}", cfg.ifname);
    let err = |what: &str| {
        let whom = &whom;
        let what = what.to_string();
        move |e: io::Error| PodNetError::step(what, whom, e)
    };
    let mut nl = Netlink::open().map_err(err("open netlink"))?;
    let link = nl
        .link_get(&cfg.ifname)
        .map_err(err("look up the interface"))?
        .ok_or_else(|| PodNetError::InterfaceNotFound {
            netns: "the node netns".into(),
            ifname: cfg.ifname.clone(),
        })?;
    detach_stale_xdp(&mut nl, &link).map_err(err("attach the XDP program"))?;
    AfXdpPort::open(cfg).map_err(err("set up AF_XDP"))
}

/// Detaches the XDP program a previous podrouterd left on `link` (one
/// named [`XDP_PROG_NAME`]: a pinned or inherited link, or one attached
/// through netlink), so programs never stack; any other program is left
/// alone and refused (`ResourceBusy`). Nothing attached: nothing done.
/// Used for the pods' veths and the uplink (`uplink_xdp`).
pub fn detach_stale_xdp(nl: &mut Netlink, link: &LinkInfo) -> io::Result<()> {
    let Some(x) = link.xdp else {
        return Ok(());
    };
    let name = bpf::prog_name_by_id(x.prog_id).unwrap_or_default();
    if name != XDP_PROG_NAME {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "another XDP program (id {}, {name:?}) is attached",
                x.prog_id
            ),
        ));
    }
    detach_stale_program(nl, link.index, x)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot detach a stale XDP program: {e}")))?;
    log::info!(
        "{}: replaced the XDP program (id {}) a previous podrouterd left",
        link.name,
        x.prog_id
    );
    Ok(())
}

/// Detaches program `x` from link `index`: through its BPF link if it has
/// one (found by program id), else through netlink.
fn detach_stale_program(nl: &mut Netlink, index: u32, x: XdpAttachment) -> io::Result<()> {
    for id in bpf::link_ids()? {
        let Ok(fd) = bpf::link_fd_by_id(id) else {
            continue; // gone meanwhile
        };
        if let Ok(Some(info)) = bpf::xdp_link_info(fd.as_fd()) {
            if info.prog_id == x.prog_id {
                return bpf::link_detach(fd.as_fd());
            }
        }
    }
    nl.link_xdp_detach(index, x.mode)
}

/// Creates (or, if it exists, re-opens) the host TAP `name` in the current
/// (node) namespace, sets its MAC and MTU and brings it up. A TAP created
/// here is removed again if configuring it fails; an existing one is left
/// as it was found.
///
/// With `queues` above 1 (one per worker) the TAP is multi-queue, so every
/// worker reads a share of what the node sends to its pods
/// (`podrouter_router::mq`); an existing TAP of the other kind (left by a
/// run with another worker count) is deleted and made again, taking its
/// routes with it (the daemon adds them after this). A multi-queue TAP
/// takes any number of descriptors, so a second daemon is not refused
/// here as it is with one queue.
pub fn create_or_attach_host_port(
    name: &str,
    mac: [u8; 6],
    mtu: u16,
    queues: usize,
) -> Result<TapPort, PodNetError> {
    check_ifname(name)?;
    let whom = format!("host port {name}");
    let err = |what: String| {
        let whom = &whom;
        move |e: io::Error| PodNetError::step(what, whom, e)
    };
    let mut nl = Netlink::open().map_err(err("open netlink".into()))?;
    let existing = nl
        .link_index(name)
        .map_err(err("look up the interface".into()))?;
    let tap_err = |action: &'static str| {
        let whom = &whom;
        move |e: io::Error| PodNetError::Tap {
            action,
            tap: name.to_string(),
            whom: whom.clone(),
            source: e,
        }
    };
    // A TAP we create is deleted again (by `NewTap`) if a later step
    // fails; an attached one is simply closed.
    let attach = || {
        if queues > 1 {
            TapPort::attach_multi_queue(name, queues)
        } else {
            TapPort::attach(name)
        }
    };
    let create = || {
        if queues > 1 {
            TapPort::create_multi_queue(name, queues)
        } else {
            TapPort::create(name)
        }
    };
    let attached = match existing {
        Some(index) => match attach() {
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                log::info!("{whom}: {e}; making it again with {queues} queue(s)");
                nl.link_delete(index)
                    .map_err(err("delete the TAP of the other kind".into()))?;
                None
            }
            r => Some(r.map_err(tap_err("attach to"))?),
        },
        None => None,
    };
    let held = match attached {
        Some(t) => Held::Attached(t),
        None => Held::New(NewTap::new(
            create().map_err(tap_err("create"))?,
            name,
            &whom,
        )),
    };
    let link = nl
        .link_get(name)
        .map_err(err("look up the interface".into()))?
        .ok_or_else(|| {
            err("look up the interface".into())(io::Error::new(
                io::ErrorKind::NotFound,
                "TAP vanished",
            ))
        })?;
    // Only what differs, so a restart does not disturb the node's view of
    // a port that is already right (a MAC change flushes neighbours).
    if link.mac != Some(mac) {
        nl.link_set_mac(link.index, mac)
            .map_err(err(format!("set MAC {}", fmt_mac(&mac))))?;
    }
    if link.mtu != u32::from(mtu) {
        nl.link_set_mtu(link.index, mtu.into())
            .map_err(err(format!("set MTU {mtu}")))?;
    }
    if !link.up {
        nl.link_set_up(link.index)
            .map_err(err("bring the interface up".into()))?;
    }
    tap_noqueue(&mut nl, link.index, &format!("host port {name}"));
    Ok(match held {
        Held::New(g) => g.disarm(),
        Held::Attached(t) => t,
    })
}

/// Gives a TAP (the host port, a pod's interface) the `noqueue` root
/// qdisc in place of the one the kernel attached when it came up
/// (`pfifo_fast`, or `mq` over them when multi-queue, whatever
/// `net.core.default_qdisc` says), unless someone put their own there (a
/// root qdisc with a handle other than `0:` stays). `what` names the
/// device in logs.
///
/// Why: every frame sent into a TAP (by the node: its own, and each packet
/// kube-proxy's NAT forwards, which crosses `podrouter0` twice; by a pod:
/// everything it sends) went through that qdisc's enqueue and dequeue for
/// nothing: a TAP never stops its queue (when its ring to podrouterd is
/// full it drops, counted as the device's `tx_dropped`, with or without a
/// qdisc), so the qdisc never holds a frame. With `noqueue`, as on a veth
/// (what Calico's pods get), the kernel hands the frame to the TAP
/// directly. Not fatal if it fails: the interface works either way.
fn tap_noqueue(nl: &mut Netlink, index: u32, what: &str) {
    let res = match nl.root_qdisc(index) {
        Ok(Some((kind, true))) if kind != "noqueue" => nl.root_noqueue(index).map(|()| {
            log::debug!("{what}: root qdisc {kind} replaced by noqueue");
        }),
        Ok(Some((kind, false))) if kind != "noqueue" => {
            log::info!("{what}: keeping the root qdisc {kind} someone added");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        log::warn!("{what}: cannot set the noqueue qdisc, keeping the kernel's: {e}");
    }
}

enum Held {
    New(NewTap),
    Attached(TapPort),
}

fn host_route(prefix: Prefix, oif: u32) -> Ipv4Route {
    Ipv4Route {
        dst: prefix.addr(),
        prefix_len: prefix.len(),
        gateway: None,
        oif,
        scope: Scope::Link,
        onlink: false,
        multipath: Vec::new(),
        metric: 0,
    }
}

/// Adds (or replaces) the node route `prefix dev HOST_PORT scope link
/// proto 77`, so the node's own traffic to pods enters the router.
pub fn host_route_add(prefix: Prefix, host_port_name: &str) -> Result<(), PodNetError> {
    let whom = format!("host port {host_port_name}");
    let mut nl = Netlink::open().map_err(|e| PodNetError::step("open netlink", &whom, e))?;
    let index = nl
        .link_index(host_port_name)
        .map_err(|e| PodNetError::step("look up the interface", &whom, e))?
        .ok_or_else(|| PodNetError::HostPortNotFound {
            name: host_port_name.to_string(),
        })?;
    nl.route_replace(&host_route(prefix, index))
        .map_err(|e| PodNetError::step(format!("add route {prefix}"), &whom, e))
}

/// Removes the node route added by [`host_route_add`]. Success if it is not
/// there (or the host port is gone, which takes its routes with it).
pub fn host_route_del(prefix: Prefix, host_port_name: &str) -> Result<(), PodNetError> {
    let whom = format!("host port {host_port_name}");
    let mut nl = Netlink::open().map_err(|e| PodNetError::step("open netlink", &whom, e))?;
    let Some(index) = nl
        .link_index(host_port_name)
        .map_err(|e| PodNetError::step("look up the interface", &whom, e))?
    else {
        return Ok(());
    };
    match nl.route_delete(&host_route(prefix, index)) {
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        r => r.map_err(|e| PodNetError::step(format!("delete route {prefix}"), &whom, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::RunIn;
    use podrouter_router::frame::Frame;
    use podrouter_router::port::Port;
    use podrouter_router::ROUTER_MAC;
    use podrouter_testkit::{privileged, Netns};
    use serde_json::Value;
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// The interface names in `ns`, sorted.
    fn link_names(ns: &Netns) -> Vec<String> {
        let mut v: Vec<String> = ns
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];

    /// Retries `f` while the TAP is busy. After we close our descriptor, a
    /// child process that another test thread is forking may briefly hold a
    /// copy of it (until it execs and close-on-exec drops it).
    fn retry_busy<T>(f: impl Fn() -> Result<T, PodNetError>) -> Result<T, PodNetError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match f() {
                Err(PodNetError::Tap { source, .. })
                    if source.kind() == io::ErrorKind::ResourceBusy
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                r => return r,
            }
        }
    }

    fn spec(pod: &Netns) -> PodInterfaceSpec {
        PodInterfaceSpec {
            netns: PathBuf::from(pod.path()),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            mtu: 1450,
            mac: MAC,
            worker: 0,
        }
    }

    fn assert_tap_flags(link: &Value) {
        let info = &link["linkinfo"];
        assert_eq!(info["info_kind"], "tun", "{link}");
        let data = &info["info_data"];
        assert_eq!(data["type"], "tap", "{link}");
        assert_eq!(data["pi"], false, "{link}");
        assert_eq!(data["vnet_hdr"], true, "{link}");
        assert_eq!(data["multi_queue"], false, "{link}");
        assert_eq!(data["persist"], true, "{link}");
    }

    /// The pod side looks exactly like Calico's.
    fn assert_pod_configured(pod: &Netns) {
        let link = &pod.ip_json(&["-d", "link", "show", "eth0"])[0];
        assert_eq!(link["mtu"], 1450, "{link}");
        assert_eq!(link["address"], "02:aa:bb:cc:dd:01", "{link}");
        let flags: Vec<&str> = link["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(flags.contains(&"UP"), "{link}");
        assert_eq!(link["qdisc"], "noqueue", "{link}");
        assert_tap_flags(link);

        let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        let inet: Vec<&Value> = addrs[0]["addr_info"].as_array().unwrap().iter().collect();
        assert_eq!(inet.len(), 1, "{addrs}");
        assert_eq!(inet[0]["local"], "10.244.1.2");
        assert_eq!(inet[0]["prefixlen"], 32);
        assert_eq!(inet[0]["scope"], "global");

        let routes = pod.ip_json(&["-4", "route", "show"]);
        let routes = routes.as_array().unwrap();
        assert_eq!(routes.len(), 2, "{routes:?}");
        let gw = routes.iter().find(|r| r["dst"] == "169.254.1.1").unwrap();
        assert_eq!(gw["dev"], "eth0");
        assert_eq!(gw["scope"], "link");
        assert_eq!(gw["protocol"], "77");
        assert!(gw.get("gateway").is_none(), "{gw}");
        let def = routes.iter().find(|r| r["dst"] == "default").unwrap();
        assert_eq!(def["gateway"], "169.254.1.1");
        assert_eq!(def["dev"], "eth0");
        assert_eq!(def["protocol"], "77");
        assert!(def.get("scope").is_none(), "{def}"); // global
    }

    #[test]
    fn pod_interface_lifecycle() {
        if !privileged("pod_interface_lifecycle") {
            return;
        }
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        let spec = spec(&pod);

        let tap = node.run(|| create_pod_interface(&spec)).unwrap();
        assert_eq!(tap.name().unwrap(), "eth0");
        assert_eq!(link_names(&node), ["lo"]);
        assert_eq!(link_names(&pod), ["eth0", "lo"]);
        assert_pod_configured(&pod);

        // Same name again: a clear error, and nothing new anywhere.
        let e = node.run(|| create_pod_interface(&spec)).unwrap_err();
        assert!(matches!(e, PodNetError::InterfaceExists { .. }), "{e}");
        let msg = e.to_string();
        assert_eq!(
            msg,
            format!(
                "pod netns {} already has an interface named eth0",
                pod.path()
            )
        );
        assert_eq!(link_names(&node), ["lo"]);
        assert_eq!(link_names(&pod), ["eth0", "lo"]);

        // Re-open after a "restart": busy while held, fine once released.
        let e = attach_pod_interface(Path::new(&pod.path()), "eth0").unwrap_err();
        assert!(matches!(e, PodNetError::Tap { .. }), "{e}");
        drop(tap);
        // As a pod made before pods got `noqueue` has it: the kernel's
        // default qdisc, which the re-open replaces.
        let out = pod
            .command("tc")
            .args(["qdisc", "del", "dev", "eth0", "root"])
            .output()
            .expect("run tc");
        assert!(out.status.success(), "{out:?}");
        let tap = retry_busy(|| attach_pod_interface(Path::new(&pod.path()), "eth0")).unwrap();
        assert_eq!(tap.name().unwrap(), "eth0");
        assert_pod_configured(&pod);
        let e = attach_pod_interface(Path::new(&pod.path()), "eth1").unwrap_err();
        assert!(matches!(e, PodNetError::InterfaceNotFound { .. }), "{e}");

        // Delete, idempotently; the port's descriptor goes stale.
        delete_pod_interface(Path::new(&pod.path()), "eth0").unwrap();
        assert_eq!(link_names(&pod), ["lo"]);
        delete_pod_interface(Path::new(&pod.path()), "eth0").unwrap();
        let mut frames = vec![Frame::new()];
        let e = tap.recv(&mut frames).unwrap_err();
        eprintln!("recv on a deleted pod interface: {e}");
        assert!(tap.name().is_err());

        // Missing namespaces.
        let gone = PathBuf::from(format!("/run/netns/prtest-{}-gone", std::process::id()));
        delete_pod_interface(&gone, "eth0").unwrap();
        let e = attach_pod_interface(&gone, "eth0").unwrap_err();
        assert!(matches!(e, PodNetError::NetnsNotFound { .. }), "{e}");
        let mut s2 = spec.clone();
        s2.netns = gone.clone();
        let e = node.run(|| create_pod_interface(&s2)).unwrap_err();
        assert!(matches!(e, PodNetError::NetnsNotFound { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("pod netns {} does not exist", gone.display())
        );
        // A path that is not a namespace at all.
        let mut s3 = spec.clone();
        s3.netns = "/proc/self/status".into();
        let e = node.run(|| create_pod_interface(&s3)).unwrap_err();
        assert!(matches!(e, PodNetError::NotANetns { .. }), "{e}");
        assert_eq!(link_names(&node), ["lo"]);
    }

    #[test]
    fn failures_roll_everything_back() {
        if !privileged("failures_roll_everything_back") {
            return;
        }
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        let good = spec(&pod);
        for stage in [Stage::Down, Stage::Up] {
            let e = node
                .run(|| create_pod_interface_inner(&good, 1, Some(stage)))
                .unwrap_err();
            assert!(e.to_string().contains("injected failure"), "{e}");
            assert_eq!(link_names(&node), ["lo"], "after {stage:?}");
            assert_eq!(link_names(&pod), ["lo"], "after {stage:?}");
        }
        // The kernel refuses an MTU below the minimum.
        let mut bad = good.clone();
        bad.mtu = 20;
        let e = node.run(|| create_pod_interface(&bad)).unwrap_err();
        assert!(matches!(e, PodNetError::Step { .. }), "{e}");
        eprintln!("MTU 20: {e}");
        assert!(e.to_string().contains("set MTU 20"), "{e}");
        assert_eq!(link_names(&node), ["lo"]);
        assert_eq!(link_names(&pod), ["lo"]);
        // A name the kernel would refuse.
        let mut bad = good.clone();
        bad.ifname = "a-name-far-too-long".into();
        let e = node.run(|| create_pod_interface(&bad)).unwrap_err();
        assert!(matches!(e, PodNetError::InvalidName { .. }), "{e}");
        // And after all that, the real thing still works.
        let tap = node.run(|| create_pod_interface(&good)).unwrap();
        assert_pod_configured(&pod);
        drop(tap);
    }

    fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// What the router would answer to `f`: an ARP reply for 169.254.1.1 or
    /// an ICMP echo reply.
    fn answer(f: &[u8]) -> Option<(&'static str, Vec<u8>)> {
        if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] {
            if f[38..42] != [169, 254, 1, 1] {
                return None;
            }
            let mut r = Vec::with_capacity(42);
            r.extend_from_slice(&f[6..12]);
            r.extend_from_slice(&ROUTER_MAC);
            r.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
            r.extend_from_slice(&ROUTER_MAC);
            r.extend_from_slice(&[169, 254, 1, 1]);
            r.extend_from_slice(&f[22..32]); // requester's MAC and IP
            return Some(("arp", r));
        }
        if f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let l4 = 14 + ihl;
            if f.len() < l4 + 8 || f[l4] != 8 {
                return None;
            }
            let mut r = f.to_vec();
            r[0..6].copy_from_slice(&f[6..12]);
            r[6..12].copy_from_slice(&ROUTER_MAC);
            r[26..30].copy_from_slice(&f[30..34]);
            r[30..34].copy_from_slice(&f[26..30]);
            r[l4] = 0;
            r[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
            let c = checksum(&r[l4..]);
            r[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
            return Some(("icmp", r));
        }
        None
    }

    /// The pod pings its gateway; the test plays the router on the pod's
    /// TAP: reads the ARP request, answers it, reads the echo request and
    /// answers that too.
    #[test]
    fn pod_pings_its_gateway_through_the_tap() {
        if !privileged("pod_pings_its_gateway_through_the_tap") {
            return;
        }
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        let spec = spec(&pod);
        let tap = node.run(|| create_pod_interface(&spec)).unwrap();
        let mut ping = Command::new("ip")
            .args([
                "netns",
                "exec",
                pod.name(),
                "ping",
                "-c1",
                "-W5",
                "169.254.1.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut frames: Vec<Frame> = (0..8).map(|_| Frame::new()).collect();
        let (mut arp_seen, mut echo_seen) = (None, false);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let n = tap.recv(&mut frames).unwrap();
            for f in &frames[..n] {
                let Some((kind, reply)) = answer(f.data()) else {
                    continue;
                };
                if kind == "arp" {
                    arp_seen = Some(f.data().to_vec());
                } else {
                    echo_seen = true;
                }
                tap.send(&Frame::from_bytes(&reply)).unwrap();
            }
            if let Some(st) = ping.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "ping did not finish");
            if n == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let out = ping.wait_with_output().unwrap();
        let arp = arp_seen.expect("no ARP request for 169.254.1.1 read from the TAP");
        assert_eq!(&arp[0..6], &[0xff; 6]);
        assert_eq!(&arp[6..12], &MAC);
        assert_eq!(&arp[22..28], &MAC);
        assert_eq!(&arp[28..32], &[10, 244, 1, 2]);
        assert!(echo_seen, "no echo request read from the TAP");
        assert!(
            status.success(),
            "ping failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let neigh = pod.ip_json(&["neigh", "show", "169.254.1.1", "dev", "eth0"]);
        assert_eq!(neigh[0]["lladdr"], "ee:ee:ee:ee:ee:ee", "{neigh}");
        drop(tap);
    }

    /// A host port made for two workers is a multi-queue TAP with a
    /// second queue; a restart with another worker count makes it again
    /// of the other kind.
    #[test]
    fn host_port_follows_the_worker_count() {
        if !privileged("host_port_follows_the_worker_count") {
            return;
        }
        let node = Netns::new("mqnode");
        let mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
        let multi_queue = || {
            let link = &node.ip_json(&["-d", "link", "show", "podrouter0"])[0];
            assert_eq!(link["linkinfo"]["info_data"]["persist"], true, "{link}");
            link["linkinfo"]["info_data"]["multi_queue"].clone()
        };
        for queues in [2, 1, 2] {
            let tap = retry_busy(|| {
                node.run(|| create_or_attach_host_port("podrouter0", mac, 1500, queues))
            })
            .unwrap();
            assert_eq!(multi_queue(), queues > 1, "{queues} queue(s)");
            assert_eq!(tap.rx_queues().len(), queues - 1);
            drop(tap);
        }
    }

    /// The host port gets the noqueue qdisc in place of the kernel's
    /// (single- and multi-queue), and keeps a root qdisc someone put there.
    #[test]
    fn host_port_gets_noqueue_unless_someone_set_a_qdisc() {
        if !privileged("host_port_gets_noqueue_unless_someone_set_a_qdisc") {
            return;
        }
        let node = Netns::new("qdnode");
        let mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
        let qdisc = || {
            let out = node
                .command("tc")
                .args(["qdisc", "show", "dev", "podrouter0", "root"])
                .output()
                .expect("run tc");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        for queues in [1, 2] {
            let tap = retry_busy(|| {
                node.run(|| create_or_attach_host_port("podrouter0", mac, 1500, queues))
            })
            .unwrap();
            let q = qdisc();
            assert!(q.starts_with("qdisc noqueue "), "{queues} queue(s): {q}");
            drop(tap);
        }
        let out = node
            .command("tc")
            .args([
                "qdisc",
                "replace",
                "dev",
                "podrouter0",
                "root",
                "handle",
                "1:",
            ])
            .args(["pfifo"])
            .output()
            .expect("run tc");
        assert!(out.status.success(), "{out:?}");
        let tap =
            retry_busy(|| node.run(|| create_or_attach_host_port("podrouter0", mac, 1500, 2)))
                .unwrap();
        let q = qdisc();
        assert!(q.starts_with("qdisc pfifo 1: "), "someone's qdisc: {q}");
        drop(tap);
    }

    #[test]
    fn host_port_and_host_routes() {
        if !privileged("host_port_and_host_routes") {
            return;
        }
        let node = Netns::new("node");
        let mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
        let tap = node
            .run(|| create_or_attach_host_port("podrouter0", mac, 1500, 1))
            .unwrap();
        let check = |mtu: u64| {
            let link = &node.ip_json(&["-d", "link", "show", "podrouter0"])[0];
            assert_eq!(link["mtu"], mtu, "{link}");
            assert_eq!(link["address"], "02:00:00:00:00:fe", "{link}");
            assert!(
                link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
                "{link}"
            );
            assert_tap_flags(link);
        };
        check(1500);
        // Held: a second daemon cannot take it.
        let e = node
            .run(|| create_or_attach_host_port("podrouter0", mac, 1500, 1))
            .unwrap_err();
        assert!(matches!(e, PodNetError::Tap { .. }), "{e}");
        drop(tap);
        // Restart: attached, reconfigured.
        let tap =
            retry_busy(|| node.run(|| create_or_attach_host_port("podrouter0", mac, 9000, 1)))
                .unwrap();
        check(9000);
        // The MAC can change while the port is up (TAPs allow live changes).
        drop(tap);
        let other = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfd];
        let tap =
            retry_busy(|| node.run(|| create_or_attach_host_port("podrouter0", other, 9000, 1)))
                .unwrap();
        let link = &node.ip_json(&["link", "show", "podrouter0"])[0];
        assert_eq!(link["address"], "02:00:00:00:00:fd", "{link}");
        drop(tap);
        let tap =
            retry_busy(|| node.run(|| create_or_attach_host_port("podrouter0", mac, 9000, 1)))
                .unwrap();
        check(9000);
        assert_eq!(link_names(&node), ["lo", "podrouter0"]);

        let ip = Prefix::host(Ipv4Addr::new(10, 244, 1, 2));
        let block = Prefix::truncating(Ipv4Addr::new(10, 244, 2, 7), 26);
        node.run(|| {
            host_route_add(ip, "podrouter0")?;
            host_route_add(block, "podrouter0")?;
            host_route_add(block, "podrouter0") // replace: no error
        })
        .unwrap();
        let routes = node.ip_json(&["-4", "route", "show"]);
        let routes = routes.as_array().unwrap();
        for dst in ["10.244.1.2", "10.244.2.0/26"] {
            let r = routes
                .iter()
                .find(|r| r["dst"] == dst)
                .unwrap_or_else(|| panic!("no route to {dst}: {routes:?}"));
            assert_eq!(r["dev"], "podrouter0");
            assert_eq!(r["scope"], "link");
            assert_eq!(r["protocol"], "77");
        }
        let e = node.run(|| host_route_add(ip, "nonexist0")).unwrap_err();
        assert!(matches!(e, PodNetError::HostPortNotFound { .. }), "{e}");
        node.run(|| {
            host_route_del(ip, "podrouter0")?;
            host_route_del(block, "podrouter0")?;
            host_route_del(block, "podrouter0")?; // already gone
            host_route_del(ip, "nonexist0") // no port, no route
        })
        .unwrap();
        let routes = node.ip_json(&["-4", "route", "show"]);
        assert_eq!(routes.as_array().unwrap().len(), 0, "{routes}");
        drop(tap);
    }

    /// The afxdp path: a veth pair made in place (pod end addressed, node
    /// end up), an AF_XDP port on its node end that answers the pod's ARP
    /// and ping for its gateway, a second open replacing the first port's
    /// program by name instead of stacking one, and deletion of the pair.
    #[test]
    fn pod_veth_with_an_afxdp_port() {
        if !privileged("pod_veth_with_an_afxdp_port") {
            return;
        }
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        let spec = spec(&pod);
        node.run(|| create_pod_veth(&spec, "prxtest0", 2)).unwrap();
        assert_eq!(link_names(&pod), ["eth0", "lo"]);
        assert_eq!(link_names(&node), ["lo", "prxtest0"]);
        let l = node.ip_json(&["-d", "link", "show", "dev", "prxtest0"]);
        assert_eq!(
            (
                l[0]["num_tx_queues"].as_u64(),
                l[0]["num_rx_queues"].as_u64()
            ),
            (Some(2), Some(2)),
            "{l}"
        );
        let l = pod.ip_json(&["-d", "link", "show", "dev", "eth0"]);
        assert_eq!(
            (
                l[0]["num_tx_queues"].as_u64(),
                l[0]["num_rx_queues"].as_u64()
            ),
            (Some(1), Some(1)),
            "{l}"
        );
        let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        assert_eq!(addrs[0]["addr_info"][0]["local"], "10.244.1.2", "{addrs}");
        let link = pod.ip_json(&["link", "show", "dev", "eth0"]);
        assert_eq!(link[0]["address"], "02:aa:bb:cc:dd:01", "{link}");
        let e = node
            .run(|| create_pod_veth(&spec, "prxtest1", 2))
            .unwrap_err();
        assert!(matches!(e, PodNetError::InterfaceExists { .. }), "{e}");

        let cfg = AfXdpConfig {
            ifname: "prxtest0".into(),
            mtu: spec.mtu,
            tx_queues: 1,
            mode: Default::default(),
            rx_chunks: podrouter_router::afxdp::DEFAULT_RX_CHUNKS,
            rx_worker: 0,
        };
        let progs = |ns: &Netns| {
            let v = ns.ip_json(&["-d", "link", "show", "dev", "prxtest0"]);
            v[0]["xdp"]["prog"]["id"].as_u64()
        };
        // A program of ours that something else still holds (a pinned or
        // inherited link): replaced, not stacked. One of another name:
        // left alone, the port refused.
        let attach_stale = |name: &str| {
            node.run(|| {
                let map = bpf::xskmap_create("t", 1).unwrap();
                let insns = podrouter_router::bpf::xsk_redirect_program(map.as_raw_fd());
                let prog =
                    bpf::xdp_prog_load(name, &insns, podrouter_router::bpf::LICENSE).unwrap();
                let ifindex = podrouter_router::sys::if_nametoindex("prxtest0")
                    .unwrap()
                    .unwrap();
                let link =
                    bpf::xdp_link_create(prog.as_fd(), ifindex, bpf::XDP_FLAGS_SKB_MODE).unwrap();
                (map, prog, link)
            })
        };
        let foreign = attach_stale("other_prog");
        let e = node.run(|| open_afxdp_port(&cfg)).unwrap_err();
        assert!(e.to_string().contains("another XDP program"), "{e}");
        drop(foreign);
        let stale = attach_stale(XDP_PROG_NAME);
        let stale_id = progs(&node).expect("stale program attached");
        let port = node.run(|| open_afxdp_port(&cfg)).unwrap();
        assert_ne!(u64::from(port.prog_id()), stale_id);
        assert_eq!(progs(&node), Some(u64::from(port.prog_id())));
        drop(stale);
        assert_eq!(progs(&node), Some(u64::from(port.prog_id())));

        let mut ping = Command::new("ip")
            .args([
                "netns",
                "exec",
                pod.name(),
                "ping",
                "-c1",
                "-W5",
                "169.254.1.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut frames: Vec<Frame> = (0..8).map(|_| Frame::new()).collect();
        // Sockets bind by interface index in the calling thread's
        // namespace, and a transmit queue is used on the thread that made
        // it (a worker's): the whole exchange runs in the node's.
        let (status, echo_seen) = node.run(|| {
            let mut q = port.tx_queue();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut echo_seen = false;
            let status = loop {
                let n = port.recv(&mut frames).unwrap();
                for f in &frames[..n] {
                    if let Some((kind, reply)) = answer(f.data()) {
                        echo_seen |= kind != "arp";
                        port.push(&mut q, &Frame::from_bytes(&reply), None).unwrap();
                    }
                }
                port.flush(&mut q).unwrap();
                if let Some(st) = ping.try_wait().unwrap() {
                    break st;
                }
                assert!(Instant::now() < deadline, "ping did not finish");
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            (status, echo_seen)
        });
        let out = ping.wait_with_output().unwrap();
        assert!(echo_seen, "no echo request through the XSK");
        assert!(
            status.success(),
            "ping failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        drop(port);
        assert_eq!(progs(&node), None, "program left after the port went");
        delete_pod_interface(&spec.netns, "eth0").unwrap();
        assert_eq!(link_names(&pod), ["lo"]);
        assert_eq!(link_names(&node), ["lo"]);
    }
}
