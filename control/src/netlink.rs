//! A small synchronous rtnetlink client: links, IPv4 addresses and IPv4
//! routes in the main table, one request at a time, or many route changes
//! per `sendmsg` with [`Netlink::route_batch`].
//!
//! A [`Netlink`] socket belongs to the network namespace of the thread that
//! opened it (see [`crate::netns::run_in_netns`] to open one elsewhere) and
//! keeps acting there whichever thread uses it later.
//!
//! Invariants:
//! - Every change is sent with `NLM_F_ACK` and returns only once the kernel
//!   has acknowledged it; a refusal becomes an `io::Error` whose message
//!   names the operation and the interface (index and, when it still exists,
//!   name) and carries the kernel's extended-ack text when it gives one.
//!   The errno stays reachable through [`errno`].
//! - Routes podrouter installs carry the protocol [`RTPROT_PODROUTER`] (77)
//!   so operators (`ip route show proto 77`) and podrouter itself can tell
//!   them from everyone else's; [`Netlink::route_delete`] only removes routes
//!   of that protocol.
//! - Replies are matched by sequence number; stray messages are skipped.
//! - A batch reports one result per operation, in order: a refused route
//!   never stops the rest of its batch.
//!
//! Messages are built with netlink-packet-route's types, except the parsing
//! of extended-ack attributes in error replies, which netlink-packet-core
//! 0.7 leaves as raw bytes (done by hand in [`ext_ack_message`]).
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    LinkXdp, XdpAttached,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Routing protocol number podrouter's routes carry (`ip route ... proto
/// 77`). Unassigned in iproute2's `rt_protos` (Calico's Felix uses 80, BIRD
/// 12); add `77 podrouter` to `/etc/iproute2/rt_protos.d/podrouter.conf` to
/// see it by name.
pub const RTPROT_PODROUTER: u8 = 77;

/// `NLM_F_CAPPED`: the error reply carries only the request's header.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: the error reply carries extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: extended-ack attribute holding a text message.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDRLEN: usize = 16;

/// The kernel refused a request.
#[derive(Debug)]
pub struct NetlinkError {
    /// What was asked, for whom (e.g. "set MTU 1500 on link 7 (eth0)").
    pub op: String,
    /// The positive errno the kernel answered with.
    pub errno: i32,
    /// The kernel's extended-ack message, if it sent one.
    pub kernel_msg: Option<String>,
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "netlink: {}: {}",
            self.op,
            io::Error::from_raw_os_error(self.errno)
        )?;
        if let Some(m) = &self.kernel_msg {
            write!(f, " (kernel: {m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NetlinkError {}

/// The errno behind `e`, whether it is a raw OS error or a [`NetlinkError`].
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<NetlinkError>())
            .map(|n| n.errno)
    })
}

/// A failure inside one request/response exchange, before it gets context.
pub(crate) enum TxError {
    Kernel { errno: i32, msg: Option<String> },
    Io(io::Error),
}

impl TxError {
    pub(crate) fn with_op(self, op: String) -> io::Error {
        match self {
            TxError::Kernel { errno, msg } => io::Error::new(
                io::Error::from_raw_os_error(errno).kind(),
                NetlinkError {
                    op,
                    errno,
                    kernel_msg: msg,
                },
            ),
            TxError::Io(e) => io::Error::new(e.kind(), format!("netlink: {op}: {e}")),
        }
    }

    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            TxError::Kernel { errno, .. } => Some(*errno),
            TxError::Io(e) => e.raw_os_error(),
        }
    }
}

/// One network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The hardware address, when it is a 6-byte Ethernet address.
    pub mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The XDP program attached, if any.
    pub xdp: Option<XdpAttachment>,
}

/// An XDP program on a link, as `IFLA_XDP` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    pub prog_id: u32,
    pub mode: XdpAttachMode,
}

/// Where an attached XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    Driver,
    Generic,
    /// Offloaded to hardware, or several programs.
    Other,
}

/// An IPv4 address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// Route scope, as `ip route ... scope X` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Reached through a gateway (or anywhere): `scope global`.
    Universe,
    /// Directly on the link: `scope link`.
    Link,
    /// This host: `scope host`.
    Host,
    Other(u8),
}

impl From<Scope> for RouteScope {
    fn from(s: Scope) -> RouteScope {
        match s {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
            Scope::Other(v) => RouteScope::from(v),
        }
    }
}

impl From<RouteScope> for Scope {
    fn from(s: RouteScope) -> Scope {
        match s {
            RouteScope::Universe => Scope::Universe,
            RouteScope::Link => Scope::Link,
            RouteScope::Host => Scope::Host,
            other => Scope::Other(u8::from(other)),
        }
    }
}

/// A unicast IPv4 route in the main table: one next hop (`gateway`
/// and/or `oif`), or several gateways of equal weight (`multipath`,
/// `ip route ... nexthop via A nexthop via B`; then `gateway` is None).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index (0: none, only valid with a gateway).
    pub oif: u32,
    pub scope: Scope,
    /// `onlink`: the gateway is on `oif` even without a covering route.
    pub onlink: bool,
    /// Gateways of a multipath route (RTA_MULTIPATH); empty otherwise.
    pub multipath: Vec<Ipv4Addr>,
    /// `metric` (RTA_PRIORITY): routes to the same prefix with different
    /// metrics are distinct routes, the lowest wins. 0 is the kernel's
    /// default, and on a delete it matches any metric.
    pub metric: u32,
}

impl fmt::Display for Ipv4Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix_len)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        for g in &self.multipath {
            write!(f, " nexthop via {g}")?;
        }
        if self.oif != 0 {
            write!(f, " dev #{}", self.oif)?;
        }
        if self.scope == Scope::Link {
            write!(f, " scope link")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// A route read back from the main table, with its protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub route: Ipv4Route,
    pub protocol: u8,
}

/// One change of a [`Netlink::route_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteOp {
    /// `ip route replace ROUTE proto 77`.
    Replace(Ipv4Route),
    /// `ip route del ROUTE proto 77` (see [`Netlink::route_delete`]).
    Delete(Ipv4Route),
}

impl RouteOp {
    pub fn route(&self) -> &Ipv4Route {
        match self {
            RouteOp::Replace(r) | RouteOp::Delete(r) => r,
        }
    }

    fn describe(&self) -> String {
        match self {
            RouteOp::Replace(r) => format!("replace route {r}"),
            RouteOp::Delete(r) => format!("delete route {r}"),
        }
    }
}

/// Route messages per `sendmsg` in [`Netlink::route_batch`]. Each gets an
/// ACK of its own in our receive queue before we read any; 64 keeps those
/// (about 1 KiB of socket memory each) well inside the default 208 KiB
/// receive buffer, so none is dropped.
const BATCH_MSGS: usize = 64;

/// A synchronous rtnetlink socket in one network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.sock.as_raw_fd())
            .field("seq", &self.seq)
            .finish()
    }
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("netlink: {what}: {e}"))
}

/// Text of the `NLMSGERR_ATTR_MSG` attribute in an error reply's payload
/// (after the errno): the request's header (whole request unless
/// `NLM_F_CAPPED`), then attributes if `NLM_F_ACK_TLVS`.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSG_HDRLEN {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize;
        len.checked_add(3)? & !3
    };
    let mut attrs = payload.get(skip..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attrs[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// The XDP program attached to a link, from its `IFLA_XDP` attribute.
fn xdp_attachment(attrs: &[LinkXdp]) -> Option<XdpAttachment> {
    let mut mode = None;
    let mut prog_id = None;
    for a in attrs {
        match a {
            LinkXdp::Attached(XdpAttached::None) => return None,
            LinkXdp::Attached(XdpAttached::Driver) => mode = Some(XdpAttachMode::Driver),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some(XdpAttachMode::Generic),
            LinkXdp::Attached(_) => mode = Some(XdpAttachMode::Other),
            LinkXdp::ProgId(id) => prog_id = Some(*id),
            _ => {}
        }
    }
    Some(XdpAttachment {
        prog_id: prog_id?,
        mode: mode?,
    })
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut l = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
        xdp: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Xdp(x) => l.xdp = xdp_attachment(x),
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(b) => l.mac = b.as_slice().try_into().ok(),
            _ => {}
        }
    }
    l
}

fn route_message(r: &Ipv4Route, protocol: u8, delete: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = r.prefix_len;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(protocol);
    m.header.kind = RouteType::Unicast;
    // On delete, scope "nowhere" is the kernel's wildcard.
    m.header.scope = if delete {
        RouteScope::NoWhere
    } else {
        r.scope.into()
    };
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    if r.prefix_len > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(r.dst)));
    }
    if let Some(g) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
    }
    if r.oif != 0 {
        m.attributes.push(RouteAttribute::Oif(r.oif));
    }
    if !r.multipath.is_empty() {
        let hops = r
            .multipath
            .iter()
            .map(|g| {
                let mut nh = RouteNextHop::default();
                nh.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::Inet(*g)));
                nh
            })
            .collect();
        m.attributes.push(RouteAttribute::MultiPath(hops));
    }
    if r.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(r.metric));
    }
    m
}

fn route_entry(m: &RouteMessage) -> Option<RouteEntry> {
    if m.header.address_family != AddressFamily::Inet || m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut r = Ipv4Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: m.header.destination_prefix_length,
        gateway: None,
        oif: 0,
        scope: m.header.scope.into(),
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        multipath: Vec::new(),
        metric: 0,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
            RouteAttribute::Oif(i) => r.oif = *i,
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => r.metric = *p,
            RouteAttribute::MultiPath(hops) => r.multipath.extend(hops.iter().flat_map(|h| {
                h.attributes.iter().filter_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                    _ => None,
                })
            })),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then_some(RouteEntry {
        route: r,
        protocol: u8::from(m.header.protocol),
    })
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| ctx(e, "open socket"))?;
        sock.bind_auto().map_err(|e| ctx(e, "bind socket"))?;
        // Error replies: only the request's header back, plus the kernel's
        // explanation. Both are best effort (old kernels lack them).
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        Ok(Netlink { sock, seq: 0 })
    }

    /// Sends one request and collects the replies up to the ACK (or, for a
    /// dump, `NLMSG_DONE`).
    pub(crate) fn transact(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, TxError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock
            .send_to(&buf, &SocketAddr::new(0, 0), 0)
            .map_err(TxError::Io)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(TxError::Io)?;
            let mut off = 0;
            while data.len() - off >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
                if len < NLMSG_HDRLEN || len > data.len() - off {
                    return Err(TxError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("truncated reply message (length {len})"),
                    )));
                }
                let raw = &data[off..off + len];
                off += (len + 3) & !3;
                let seq_of = u32::from_ne_bytes(raw[8..12].try_into().unwrap());
                if seq_of != seq {
                    continue; // a leftover of an earlier, abandoned request
                }
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map_err(|e| {
                    TxError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("cannot parse reply: {e}"),
                    ))
                })?;
                match m.payload {
                    NetlinkPayload::InnerMessage(i) => out.push(i),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(TxError::Kernel {
                                errno: code.get().abs(),
                                msg: ext_ack_message(m.header.flags, &e.header),
                            }),
                        };
                    }
                    NetlinkPayload::Done(d) => {
                        return if d.code == 0 {
                            Ok(out)
                        } else {
                            Err(TxError::Kernel {
                                errno: d.code.abs(),
                                msg: None,
                            })
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// A request that must be acknowledged; errors get `op` as context.
    pub(crate) fn ack(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> io::Result<()> {
        self.transact(msg, NLM_F_ACK | flags)
            .map(drop)
            .map_err(|e| e.with_op(op()))
    }

    /// A change to link `index`; errors name the link (and its name, if it
    /// still has one).
    fn link_change(&mut self, msg: LinkMessage, what: &str) -> io::Result<()> {
        let index = msg.header.index;
        match self.transact(RouteNetlinkMessage::NewLink(msg), NLM_F_ACK) {
            Ok(_) => Ok(()),
            Err(e) => {
                let name = match self.link_by_index(index) {
                    Ok(Some(l)) => format!(" ({})", l.name),
                    _ => String::new(),
                };
                Err(e.with_op(format!("{what} on link {index}{name}")))
            }
        }
    }

    fn get_link(
        &mut self,
        msg: LinkMessage,
        op: impl FnOnce() -> String,
    ) -> io::Result<Option<LinkInfo>> {
        match self.transact(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_info(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e.with_op(op())),
        }
    }

    /// The interface called `name`, if there is one.
    pub fn link_get(&mut self, name: &str) -> io::Result<Option<LinkInfo>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m, || format!("look up link {name}"))
    }

    /// The interface with index `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<LinkInfo>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(m, || format!("look up link {index}"))
    }

    /// Index of the interface called `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link_get(name)?.map(|l| l.index))
    }

    /// Every interface in this namespace.
    pub fn links(&mut self) -> io::Result<Vec<LinkInfo>> {
        let replies = self
            .transact(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| e.with_op("list links".into()))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_info(l)),
                _ => None,
            })
            .collect())
    }

    fn link_msg(index: u32) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m
    }

    /// `ip link set dev INDEX up`.
    pub fn link_set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Self::link_msg(index);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.link_change(m, "set up")
    }

    /// `ip link set dev INDEX down`.
    pub fn link_set_down(&mut self, index: u32) -> io::Result<()> {
        let mut m = Self::link_msg(index);
        m.header.change_mask = LinkFlags::Up;
        self.link_change(m, "set down")
    }

    /// `ip link set dev INDEX mtu MTU`.
    pub fn link_set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut m = Self::link_msg(index);
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.link_change(m, &format!("set MTU {mtu}"))
    }

    /// `ip link set dev INDEX address MAC`.
    pub fn link_set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = Self::link_msg(index);
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.link_change(m, &format!("set MAC {}", fmt_mac(&mac)))
    }

    /// `ip link add NAME address MAC mtu MTU type veth peer name PEER
    /// netns PEER_NS numtxqueues Q numrxqueues Q`: a veth pair made in the
    /// calling thread's namespace with its peer placed directly in
    /// `peer_ns` (nothing moves afterwards). `EEXIST` if either name is
    /// taken in its namespace.
    pub fn veth_add(
        &mut self,
        name: &str,
        mac: [u8; 6],
        mtu: u32,
        peer_name: &str,
        peer_ns: std::os::fd::BorrowedFd<'_>,
        peer_queues: u32,
    ) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.into()));
        peer.attributes.push(LinkAttribute::Mtu(mtu));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        peer.attributes
            .push(LinkAttribute::NumTxQueues(peer_queues));
        peer.attributes
            .push(LinkAttribute::NumRxQueues(peer_queues));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::NumTxQueues(1));
        m.attributes.push(LinkAttribute::NumRxQueues(1));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Veth),
            NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("create veth {name} (peer {peer_name})"),
        )
    }

    /// Detaches the XDP program attached to link `index` through netlink
    /// (not one held by a BPF link: the kernel refuses that with `EBUSY`).
    pub fn link_xdp_detach(&mut self, index: u32, mode: XdpAttachMode) -> io::Result<()> {
        let mut m = Self::link_msg(index);
        let flags = match mode {
            XdpAttachMode::Generic => 1 << 1,
            XdpAttachMode::Driver => 1 << 2,
            XdpAttachMode::Other => 0,
        };
        m.attributes.push(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(flags),
        ]));
        self.link_change(m, "detach its XDP program")
    }

    /// `ip link del dev INDEX`.
    pub fn link_delete(&mut self, index: u32) -> io::Result<()> {
        let m = Self::link_msg(index);
        let name = match self.link_by_index(index) {
            Ok(Some(l)) => format!(" ({})", l.name),
            _ => String::new(),
        };
        self.ack(RouteNetlinkMessage::DelLink(m), 0, || {
            format!("delete link {index}{name}")
        })
    }

    /// `ip addr add IP/PREFIX_LEN dev INDEX` (fails with `EEXIST` if present).
    pub fn addr_add(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix_len;
        m.header.scope = AddressScope::Universe;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add address {ip}/{prefix_len} to link {index}"),
        )
    }

    /// Every IPv4 address in this namespace.
    pub fn addrs_v4(&mut self) -> io::Result<Vec<AddrInfo>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self
            .transact(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)
            .map_err(|e| e.with_op("list addresses".into()))?;
        let mut out = Vec::new();
        for r in &replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.family != AddressFamily::Inet {
                continue;
            }
            let mut ip = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(v)) => ip = Some(*v),
                    AddressAttribute::Address(IpAddr::V4(v)) if ip.is_none() => ip = Some(*v),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(AddrInfo {
                    index: a.header.index,
                    ip,
                    prefix_len: a.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// `ip route replace ROUTE proto 77` in the main table.
    pub fn route_replace(&mut self, route: &Ipv4Route) -> io::Result<()> {
        let m = route_message(route, RTPROT_PODROUTER, false);
        self.ack(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("replace route {route}"),
        )
    }

    /// `ip route del ROUTE proto 77` in the main table: removes the route
    /// to `dst/prefix_len` only if podrouter installed it (and, when given,
    /// only with that gateway and output interface). `ESRCH` if there is
    /// none.
    pub fn route_delete(&mut self, route: &Ipv4Route) -> io::Result<()> {
        let m = route_message(route, RTPROT_PODROUTER, true);
        self.ack(RouteNetlinkMessage::DelRoute(m), 0, || {
            format!("delete route {route}")
        })
    }

    /// Applies many route changes with few system calls: up to
    /// [`BATCH_MSGS`] messages per `sendmsg`, the last of them asking for
    /// an ACK, then the answers (that ACK and any error), matched by
    /// sequence number. Returns one result per op, in order; a refused op
    /// does not stop the others (the kernel goes on with the next message
    /// of a batch after an error). A socket failure fails the ops whose
    /// answers it lost and goes on with the next chunk.
    pub fn route_batch(&mut self, ops: &[RouteOp]) -> Vec<io::Result<()>> {
        let mut results: Vec<io::Result<()>> = Vec::with_capacity(ops.len());
        let mut buf = Vec::new();
        for chunk in ops.chunks(BATCH_MSGS) {
            buf.clear();
            let first = self.seq.wrapping_add(1);
            for op in chunk {
                self.seq = self.seq.wrapping_add(1);
                let (msg, flags) = match op {
                    RouteOp::Replace(r) => (
                        RouteNetlinkMessage::NewRoute(route_message(r, RTPROT_PODROUTER, false)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ),
                    RouteOp::Delete(r) => (
                        RouteNetlinkMessage::DelRoute(route_message(r, RTPROT_PODROUTER, true)),
                        0,
                    ),
                };
                // Only the chunk's last message asks for an ACK: the
                // kernel answers a failed message whether asked or not,
                // in order, so once the last one's answer is in, every
                // message without an answer succeeded (one reply to read
                // per chunk instead of one per route).
                let ack = if self.seq == first.wrapping_add(chunk.len() as u32 - 1) {
                    NLM_F_ACK
                } else {
                    0
                };
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST | ack | flags;
                header.sequence_number = self.seq;
                let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
                req.finalize();
                let at = buf.len();
                buf.resize(at + ((req.buffer_len() + 3) & !3), 0);
                req.serialize(&mut buf[at..]);
            }
            let mut answers: Vec<Option<Result<(), TxError>>> =
                (0..chunk.len()).map(|_| None).collect();
            let outcome = self
                .sock
                .send_to(&buf, &SocketAddr::new(0, 0), 0)
                .map(drop)
                .and_then(|()| self.collect_acks(first, &mut answers));
            for (op, answer) in chunk.iter().zip(answers) {
                results.push(match (answer, &outcome) {
                    (Some(Ok(())), _) => Ok(()),
                    (Some(Err(e)), _) => Err(e.with_op(op.describe())),
                    (None, Err(e)) => Err(io::Error::new(
                        e.kind(),
                        format!("netlink: {}: {e}", op.describe()),
                    )),
                    (None, Ok(())) => Err(io::Error::other(format!(
                        "netlink: {}: no answer from the kernel",
                        op.describe()
                    ))),
                });
            }
        }
        results
    }

    /// Reads the answers for the sequence numbers `first..first +
    /// answers.len()` into `answers` until the last one has its ACK (or
    /// its error); the others, which asked for no ACK, get an answer only
    /// if they failed, so those still without one then succeeded.
    fn collect_acks(
        &mut self,
        first: u32,
        answers: &mut [Option<Result<(), TxError>>],
    ) -> io::Result<()> {
        while answers.last().is_some_and(Option::is_none) {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while data.len() - off >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
                if len < NLMSG_HDRLEN || len > data.len() - off {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("truncated reply message (length {len})"),
                    ));
                }
                let raw = &data[off..off + len];
                off += (len + 3) & !3;
                let seq = u32::from_ne_bytes(raw[8..12].try_into().unwrap());
                let i = seq.wrapping_sub(first) as usize;
                let Some(slot) = answers.get_mut(i).filter(|a| a.is_none()) else {
                    continue; // not ours, or a duplicate
                };
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("cannot parse reply: {e}"),
                    )
                })?;
                if let NetlinkPayload::Error(e) = m.payload {
                    *slot = Some(match e.code {
                        None => Ok(()),
                        Some(code) => Err(TxError::Kernel {
                            errno: code.get().abs(),
                            msg: ext_ack_message(m.header.flags, &e.header),
                        }),
                    });
                }
            }
        }
        for a in answers.iter_mut().filter(|a| a.is_none()) {
            *a = Some(Ok(()));
        }
        Ok(())
    }

    /// Every unicast IPv4 route in the main table.
    pub fn routes_v4(&mut self) -> io::Result<Vec<RouteEntry>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self
            .transact(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)
            .map_err(|e| e.with_op("list routes".into()))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => route_entry(m),
                _ => None,
            })
            .collect())
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::RunIn;

    #[test]
    fn ext_ack_text_is_found_after_a_capped_header() {
        let mut p = vec![0u8; NLMSG_HDRLEN];
        let text = b"Device not found\0";
        let len = (4 + text.len()) as u16;
        p.extend_from_slice(&len.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
        assert_eq!(
            ext_ack_message(flags, &p).as_deref(),
            Some("Device not found")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &p), None);
        assert_eq!(ext_ack_message(flags, &p[..10]), None);
    }

    #[test]
    fn errno_is_recovered_from_context_errors() {
        let e = TxError::Kernel {
            errno: libc::EEXIST,
            msg: None,
        }
        .with_op("add address 10.0.0.1/32 to link 3".into());
        assert_eq!(errno(&e), Some(libc::EEXIST));
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("link 3"), "{e}");
        assert_eq!(
            errno(&io::Error::from_raw_os_error(libc::ENODEV)),
            Some(libc::ENODEV)
        );
    }

    #[test]
    fn route_display_reads_like_ip_route() {
        let r = Ipv4Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
            oif: 4,
            scope: Scope::Universe,
            onlink: true,
            multipath: Vec::new(),
            metric: 0,
        };
        assert_eq!(r.to_string(), "0.0.0.0/0 via 169.254.1.1 dev #4 onlink");
        let m = Ipv4Route {
            dst: Ipv4Addr::new(10, 250, 0, 0),
            prefix_len: 24,
            gateway: None,
            oif: 0,
            scope: Scope::Universe,
            onlink: false,
            multipath: vec![Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 3)],
            metric: 0,
        };
        assert_eq!(
            m.to_string(),
            "10.250.0.0/24 nexthop via 10.9.0.2 nexthop via 10.9.0.3"
        );
        // The message carries RTA_MULTIPATH and parses back to the same.
        let msg = route_message(&m, RTPROT_PODROUTER, false);
        assert!(msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::MultiPath(h) if h.len() == 2)));
        assert_eq!(route_entry(&msg).unwrap().route, m);
        // A metric is written as RTA_PRIORITY and read back.
        let c = Ipv4Route {
            scope: Scope::Link,
            oif: 3,
            multipath: Vec::new(),
            metric: 1024,
            ..m
        };
        assert_eq!(c.to_string(), "10.250.0.0/24 dev #3 scope link metric 1024");
        let msg = route_message(&c, RTPROT_PODROUTER, false);
        assert!(msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Priority(1024))));
        assert_eq!(route_entry(&msg).unwrap().route, c);
    }

    /// A scratch namespace with a link `d0` holding 10.9.0.1/24. Root only.
    fn scratch() -> podrouter_testkit::Netns {
        let ns = podrouter_testkit::Netns::new("nl");
        ns.veth_pair("d0", "d1");
        ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "d0"]);
        ns
    }

    fn route(dst: [u8; 4], len: u8, gateway: Option<[u8; 4]>, multipath: &[[u8; 4]]) -> Ipv4Route {
        Ipv4Route {
            dst: Ipv4Addr::from(dst),
            prefix_len: len,
            gateway: gateway.map(Ipv4Addr::from),
            oif: 0,
            scope: Scope::Universe,
            onlink: false,
            multipath: multipath.iter().map(|g| Ipv4Addr::from(*g)).collect(),
            metric: 0,
        }
    }

    /// Several chunks of route changes in one batch, with refusals in the
    /// middle: each op gets its own result, the others still apply, and
    /// multipath routes read back with every gateway.
    #[test]
    fn route_batch_reports_each_op_and_goes_on_after_refusals() {
        if !podrouter_testkit::privileged("route_batch_reports_each_op_and_goes_on_after_refusals")
        {
            return;
        }
        let ns = scratch();
        ns.run(|| {
            let mut nl = Netlink::open().unwrap();
            let mut ops: Vec<RouteOp> = (0..150u8)
                .map(|i| RouteOp::Replace(route([10, 100, i, 0], 24, Some([10, 9, 0, 2]), &[])))
                .collect();
            // Unreachable gateway: refused (ENETUNREACH) at 10 and 100.
            ops[10] = RouteOp::Replace(route([10, 101, 0, 0], 24, Some([10, 77, 0, 1]), &[]));
            ops[100] = RouteOp::Replace(route([10, 101, 1, 0], 24, Some([10, 77, 0, 1]), &[]));
            ops.push(RouteOp::Replace(route(
                [10, 250, 0, 0],
                24,
                None,
                &[[10, 9, 0, 2], [10, 9, 0, 3]],
            )));
            // Deleting what is not there: ESRCH, reported, not fatal.
            ops.push(RouteOp::Delete(route([10, 102, 0, 0], 24, None, &[])));
            let results = nl.route_batch(&ops);
            assert_eq!(results.len(), ops.len());
            for (i, r) in results.iter().enumerate() {
                match i {
                    10 | 100 => {
                        let e = r.as_ref().unwrap_err();
                        assert_eq!(errno(e), Some(libc::ENETUNREACH), "{e}");
                        assert!(e.to_string().contains("via 10.77.0.1"), "{e}");
                    }
                    151 => assert_eq!(errno(r.as_ref().unwrap_err()), Some(libc::ESRCH)),
                    _ => assert!(r.is_ok(), "op {i}: {r:?}"),
                }
            }
            let ours: Vec<RouteEntry> = nl
                .routes_v4()
                .unwrap()
                .into_iter()
                .filter(|r| r.protocol == RTPROT_PODROUTER)
                .collect();
            assert_eq!(ours.len(), 149, "148 single + 1 multipath");
            let mp = ours
                .iter()
                .find(|r| r.route.dst == Ipv4Addr::new(10, 250, 0, 0))
                .unwrap();
            assert_eq!(
                mp.route.multipath,
                vec![Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 3)]
            );
            // Delete them all in one batch, the multipath one by its set.
            let dels: Vec<RouteOp> = ours
                .iter()
                .map(|r| RouteOp::Delete(r.route.clone()))
                .collect();
            assert!(nl.route_batch(&dels).iter().all(Result::is_ok));
            assert!(nl
                .routes_v4()
                .unwrap()
                .iter()
                .all(|r| r.protocol != RTPROT_PODROUTER));
            // An empty batch does nothing.
            assert!(nl.route_batch(&[]).is_empty());
        });
    }

    /// Reads this namespace over netlink; works unprivileged.
    #[test]
    fn loopback_is_listed() {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.link_get("lo").unwrap().expect("lo");
        assert_eq!(nl.link_index("lo").unwrap(), Some(lo.index));
        assert_eq!(nl.link_by_index(lo.index).unwrap().unwrap().name, "lo");
        assert!(nl.links().unwrap().iter().any(|l| l.name == "lo"));
        assert_eq!(nl.link_index("prt-nonexist0").unwrap(), None);
        nl.addrs_v4().unwrap();
        nl.routes_v4().unwrap();
    }

    /// A change refused by the kernel names what was asked (root: an
    /// unprivileged request fails with EPERM before the link is looked up).
    #[test]
    fn a_refused_change_names_the_request() {
        if !podrouter_testkit::Needs::new("a_refused_change_names_the_request")
            .root()
            .met()
        {
            return;
        }
        let mut nl = Netlink::open().unwrap();
        let e = nl.link_set_mtu(0x7fff_fff0, 1500).unwrap_err();
        assert_eq!(errno(&e), Some(libc::ENODEV), "{e}");
        assert!(e.to_string().contains("set MTU 1500 on link"), "{e}");
    }
}
