//! The BGP-4 wire format: framing, decoding and encoding of OPEN, UPDATE,
//! NOTIFICATION, KEEPALIVE and ROUTE-REFRESH (RFC 4271, 2918, 4760, 4724,
//! 6793), with RFC 7606's revised error handling for UPDATE.
//!
//! # Shape
//!
//! Every decoder takes a borrowed byte slice from an untrusted peer and
//! returns either a [`Message`] or the [`Notification`] the session must
//! send before closing: the error *is* the NOTIFICATION (code, subcode and
//! data as RFC 4271 section 6 prescribes), so a caller cannot forget to
//! tell the peer why. Decoders never panic, never index without a length
//! check (all reads go through [`Reader`]) and never allocate more than a
//! small multiple of the input (a message is at most 4096 bytes).
//!
//! UPDATE errors that RFC 7606 downgrades do not fail the decode: the
//! [`Update`] comes back with `treat_as_withdraw` set (its announced
//! prefixes must be handled as withdrawn) or with the broken optional
//! attribute discarded (`discarded`). Only errors that leave the NLRI
//! unlocatable (bad lengths, bad MP_REACH/MP_UNREACH, bad prefixes) or that
//! RFC 7606 keeps fatal reset the session.
//!
//! Encoders produce exactly the bytes the decoders accept (round-trip
//! tested) and are used for what we send: our OPEN, our own blocks,
//! KEEPALIVE, NOTIFICATION, ROUTE-REFRESH and End-of-RIB.
//!
//! Extended messages (RFC 8654) are not negotiated, so 4096 bytes is the
//! maximum in both directions. Extended optional parameters (RFC 9072) are
//! decoded; we never need them to encode.
use std::fmt;
use std::net::Ipv4Addr;

use podrouter_types::Prefix;

/// Length of the fixed header (marker, length, type).
pub const HEADER_LEN: usize = 19;
/// Largest message without RFC 8654.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The 2-octet AS number a 4-octet speaker uses in place of a large AS
/// (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// AFI and SAFI of IPv4 unicast.
pub const AFI_IPV4: u16 = 1;
pub const SAFI_UNICAST: u8 = 1;

/// Message types.
pub const MSG_OPEN: u8 = 1;
pub const MSG_UPDATE: u8 = 2;
pub const MSG_NOTIFICATION: u8 = 3;
pub const MSG_KEEPALIVE: u8 = 4;
pub const MSG_ROUTE_REFRESH: u8 = 5;

/// NOTIFICATION error codes and the subcodes we use (RFC 4271 4.5, RFC
/// 4486, RFC 7313).
pub mod err {
    pub const HEADER: u8 = 1;
    pub const HEADER_NOT_SYNC: u8 = 1;
    pub const HEADER_BAD_LENGTH: u8 = 2;
    pub const HEADER_BAD_TYPE: u8 = 3;
    pub const OPEN: u8 = 2;
    pub const OPEN_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_ID: u8 = 3;
    pub const OPEN_UNSUPPORTED_PARAM: u8 = 4;
    pub const OPEN_HOLD_TIME: u8 = 6;
    pub const OPEN_UNSUPPORTED_CAP: u8 = 7;
    pub const UPDATE: u8 = 3;
    pub const UPDATE_MALFORMED_ATTR_LIST: u8 = 1;
    pub const UPDATE_UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    pub const UPDATE_INVALID_NETWORK: u8 = 10;
    pub const UPDATE_MALFORMED_AS_PATH: u8 = 11;
    pub const HOLD_TIMER: u8 = 4;
    pub const FSM: u8 = 5;
    pub const FSM_OPENSENT: u8 = 1;
    pub const FSM_OPENCONFIRM: u8 = 2;
    pub const FSM_ESTABLISHED: u8 = 3;
    pub const CEASE: u8 = 6;
    pub const CEASE_MAX_PREFIXES: u8 = 1;
    pub const CEASE_ADMIN_SHUTDOWN: u8 = 2;
    pub const CEASE_PEER_DECONFIGURED: u8 = 3;
    pub const CEASE_ADMIN_RESET: u8 = 4;
    pub const CEASE_CONNECTION_REJECTED: u8 = 5;
    pub const CEASE_COLLISION: u8 = 7;
    pub const ROUTE_REFRESH: u8 = 7;
    pub const ROUTE_REFRESH_BAD_LENGTH: u8 = 1;
}

/// Path attribute type codes.
pub mod attr {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MED: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH: u8 = 14;
    pub const MP_UNREACH: u8 = 15;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// Attribute flag bits.
pub const FLAG_OPTIONAL: u8 = 0x80;
pub const FLAG_TRANSITIVE: u8 = 0x40;
pub const FLAG_PARTIAL: u8 = 0x20;
pub const FLAG_EXTENDED: u8 = 0x10;

/// Capability codes.
pub mod cap {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// A NOTIFICATION: what we send when a peer's message is wrong, and what a
/// peer sends us before it closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Notification {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// Cease with an RFC 8203 shutdown communication (at most 255 bytes).
    pub fn cease(subcode: u8, message: &str) -> Notification {
        let mut m = message.as_bytes();
        while m.len() > 255 {
            // Cut on a character boundary.
            let mut n = 255;
            while !message.is_char_boundary(n) {
                n -= 1;
            }
            m = &m[..n];
        }
        let mut data = Vec::with_capacity(m.len() + 1);
        if !m.is_empty() && matches!(subcode, err::CEASE_ADMIN_SHUTDOWN | err::CEASE_ADMIN_RESET) {
            data.push(m.len() as u8);
            data.extend_from_slice(m);
        }
        Notification::new(err::CEASE, subcode, data)
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self.code {
            err::HEADER => "message header error",
            err::OPEN => "OPEN message error",
            err::UPDATE => "UPDATE message error",
            err::HOLD_TIMER => "hold timer expired",
            err::FSM => "finite state machine error",
            err::CEASE => "cease",
            err::ROUTE_REFRESH => "ROUTE-REFRESH message error",
            _ => "unknown error",
        };
        let sub = match (self.code, self.subcode) {
            (err::HEADER, 1) => "connection not synchronized",
            (err::HEADER, 2) => "bad message length",
            (err::HEADER, 3) => "bad message type",
            (err::OPEN, 1) => "unsupported version number",
            (err::OPEN, 2) => "bad peer AS",
            (err::OPEN, 3) => "bad BGP identifier",
            (err::OPEN, 4) => "unsupported optional parameter",
            (err::OPEN, 6) => "unacceptable hold time",
            (err::OPEN, 7) => "unsupported capability",
            (err::UPDATE, 1) => "malformed attribute list",
            (err::UPDATE, 2) => "unrecognized well-known attribute",
            (err::UPDATE, 3) => "missing well-known attribute",
            (err::UPDATE, 4) => "attribute flags error",
            (err::UPDATE, 5) => "attribute length error",
            (err::UPDATE, 6) => "invalid ORIGIN attribute",
            (err::UPDATE, 8) => "invalid NEXT_HOP attribute",
            (err::UPDATE, 9) => "optional attribute error",
            (err::UPDATE, 10) => "invalid network field",
            (err::UPDATE, 11) => "malformed AS_PATH",
            (err::CEASE, 1) => "maximum number of prefixes reached",
            (err::CEASE, 2) => "administrative shutdown",
            (err::CEASE, 3) => "peer de-configured",
            (err::CEASE, 4) => "administrative reset",
            (err::CEASE, 5) => "connection rejected",
            (err::CEASE, 6) => "other configuration change",
            (err::CEASE, 7) => "connection collision resolution",
            (err::CEASE, 8) => "out of resources",
            (err::CEASE, 9) => "hard reset",
            (err::ROUTE_REFRESH, 1) => "invalid message length",
            _ => "",
        };
        write!(f, "{code}")?;
        if !sub.is_empty() {
            write!(f, ": {sub}")?;
        } else if self.subcode != 0 {
            write!(f, " (subcode {})", self.subcode)?;
        }
        // RFC 8203/9003 shutdown communication.
        if self.code == err::CEASE
            && matches!(
                self.subcode,
                err::CEASE_ADMIN_SHUTDOWN | err::CEASE_ADMIN_RESET
            )
        {
            if let Some((&n, rest)) = self.data.split_first() {
                if let Some(text) = rest.get(..n as usize) {
                    if let Ok(s) = std::str::from_utf8(text) {
                        write!(f, " \"{}\"", s.escape_debug())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    /// Boxed: an UPDATE is much larger than the other messages.
    Update(Box<Update>),
    Notification(Notification),
    Keepalive,
    RouteRefresh {
        afi: u16,
        safi: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet "My Autonomous System" field (AS_TRANS for large ASes).
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub caps: Vec<Capability>,
    /// Optional parameters other than capabilities (type, value), kept so
    /// the session can refuse them with the right NOTIFICATION.
    pub other_params: Vec<(u8, Vec<u8>)>,
}

impl Open {
    /// The sender's AS: the 4-octet capability if present, else `my_as`.
    pub fn asn(&self) -> u32 {
        self.caps
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(self.my_as.into())
    }
    pub fn four_octet_as(&self) -> bool {
        self.caps
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }
    pub fn route_refresh(&self) -> bool {
        self.caps
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }
    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.caps.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }
    /// Whether IPv4 unicast is among the sender's address families. A
    /// speaker that sends no multiprotocol capability at all speaks IPv4
    /// unicast only (RFC 4760 section 8).
    pub fn ipv4_unicast(&self) -> bool {
        let mut any_mp = false;
        for c in &self.caps {
            if let Capability::Multiprotocol { afi, safi } = c {
                any_mp = true;
                if (*afi, *safi) == (AFI_IPV4, SAFI_UNICAST) {
                    return true;
                }
            }
        }
        !any_mp
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    Multiprotocol { afi: u16, safi: u8 },
    RouteRefresh,
    GracefulRestart(GracefulRestart),
    FourOctetAs(u32),
    Other { code: u8, value: Vec<u8> },
}

/// The graceful restart capability (RFC 4724 section 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted.
    pub restarting: bool,
    /// Seconds the sender asks its peers to keep its routes.
    pub restart_time: u16,
    /// Address families whose routes it wants kept, with the F bit
    /// (forwarding state preserved).
    pub families: Vec<(u16, u8, bool)>,
}

impl GracefulRestart {
    /// The F bit for IPv4 unicast, if the family is listed.
    pub fn ipv4_forwarding(&self) -> Option<bool> {
        self.families
            .iter()
            .find(|(a, s, _)| (*a, *s) == (AFI_IPV4, SAFI_UNICAST))
            .map(|(_, _, f)| *f)
    }
}

/// ORIGIN values, in preference order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Igp => "IGP",
            Origin::Egp => "EGP",
            Origin::Incomplete => "incomplete",
        })
    }
}

pub const SEG_AS_SET: u8 = 1;
pub const SEG_AS_SEQUENCE: u8 = 2;
pub const SEG_CONFED_SEQUENCE: u8 = 3;
pub const SEG_CONFED_SET: u8 = 4;

/// One AS_PATH segment, ASNs always held as 4 octets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    pub kind: u8,
    pub asns: Vec<u32>,
}

/// The path attributes of one UPDATE, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathAttrs {
    pub origin: Option<Origin>,
    pub as_path: Option<Vec<Segment>>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Attributes we do not interpret: (flags, type, value).
    pub other: Vec<(u8, u8, Vec<u8>)>,
}

impl PathAttrs {
    /// AS path length for best-path selection: a sequence counts its
    /// members, a set counts one, confederation segments nothing
    /// (RFC 4271 9.1.2.2, RFC 5065).
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .flatten()
            .map(|s| match s.kind {
                SEG_AS_SEQUENCE => s.asns.len(),
                SEG_AS_SET => 1,
                _ => 0,
            })
            .sum()
    }
    /// The AS the route came from: first AS of the first sequence.
    pub fn neighbor_as(&self) -> Option<u32> {
        self.as_path
            .iter()
            .flatten()
            .find(|s| s.kind == SEG_AS_SEQUENCE)
            .and_then(|s| s.asns.first().copied())
    }
    pub fn contains_as(&self, asn: u32) -> bool {
        self.as_path.iter().flatten().any(|s| s.asns.contains(&asn))
    }
    /// The AS path as text, BIRD style: `64513 64514 {1 2}`.
    pub fn as_path_text(&self) -> String {
        let mut out = Vec::new();
        for s in self.as_path.iter().flatten() {
            let asns: Vec<String> = s.asns.iter().map(|a| a.to_string()).collect();
            match s.kind {
                SEG_AS_SEQUENCE => out.push(asns.join(" ")),
                SEG_AS_SET => out.push(format!("{{{}}}", asns.join(" "))),
                SEG_CONFED_SEQUENCE => out.push(format!("({})", asns.join(" "))),
                _ => out.push(format!("[{}]", asns.join(" "))),
            }
        }
        out.join(" ")
    }
}

/// MP_REACH_NLRI for IPv4 unicast (other families are ignored whole: we
/// never negotiate them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    pub next_hop: Ipv4Addr,
    pub nlri: Vec<Prefix>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<Prefix>,
    /// Path attributes (None when the UPDATE has none, e.g. a pure
    /// withdraw or the End-of-RIB marker).
    pub attrs: Option<PathAttrs>,
    pub nlri: Vec<Prefix>,
    pub mp_reach: Option<MpReach>,
    /// IPv4 unicast prefixes withdrawn through MP_UNREACH_NLRI.
    pub mp_unreach: Option<Vec<Prefix>>,
    /// Families other than IPv4 unicast seen in MP attributes (ignored).
    pub other_families: Vec<(u16, u8)>,
    /// RFC 7606 treat-as-withdraw: why the announced prefixes of this
    /// UPDATE must be handled as withdrawn.
    pub treat_as_withdraw: Option<String>,
    /// RFC 7606 attribute discard: attribute types dropped as malformed.
    pub discarded: Vec<u8>,
}

impl Update {
    /// The IPv4 unicast End-of-RIB marker (RFC 4724 section 2): an UPDATE
    /// with nothing in it, or an MP_UNREACH for IPv4 unicast with no
    /// prefixes and no other attribute.
    pub fn is_end_of_rib(&self) -> bool {
        let empty_classic = self.withdrawn.is_empty() && self.nlri.is_empty();
        match (&self.attrs, &self.mp_unreach) {
            (None, None) => empty_classic && self.mp_reach.is_none(),
            (Some(a), Some(w)) => {
                empty_classic
                    && w.is_empty()
                    && self.mp_reach.is_none()
                    && *a == PathAttrs::default()
                    && self.other_families.is_empty()
            }
            _ => false,
        }
    }
    /// Every prefix this UPDATE announces (classic and MP).
    pub fn announced(&self) -> impl Iterator<Item = &Prefix> {
        self.nlri
            .iter()
            .chain(self.mp_reach.iter().flat_map(|m| m.nlri.iter()))
    }
    /// Every prefix this UPDATE withdraws (classic and MP).
    pub fn withdrawn_all(&self) -> impl Iterator<Item = &Prefix> {
        self.withdrawn
            .iter()
            .chain(self.mp_unreach.iter().flatten())
    }
}

/// What the decoder needs to know about the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// Both sides announced the 4-octet AS capability: AS_PATH carries
    /// 4-octet ASNs and AS4_PATH is not used.
    pub four_octet_as: bool,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            four_octet_as: true,
        }
    }
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn ipv4(&mut self) -> Option<Ipv4Addr> {
        self.u32().map(Ipv4Addr::from)
    }
}

/// Checks the header at the start of `buf`. Returns the whole message's
/// length once `buf` holds all of it, `Ok(None)` while more bytes are
/// needed, or the NOTIFICATION for a broken header.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, Notification> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16] != [0xff; 16] {
        return Err(Notification::new(err::HEADER, err::HEADER_NOT_SYNC, []));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]);
    let ty = buf[18];
    let bad_len = || Notification::new(err::HEADER, err::HEADER_BAD_LENGTH, len.to_be_bytes());
    let l = len as usize;
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&l) {
        return Err(bad_len());
    }
    let ok = match ty {
        MSG_OPEN => l >= 29,
        MSG_UPDATE => l >= 23,
        MSG_NOTIFICATION => l >= 21,
        MSG_KEEPALIVE => l == HEADER_LEN,
        // RFC 7313 wants its own error for a bad ROUTE-REFRESH length;
        // the decoder reports it.
        MSG_ROUTE_REFRESH => true,
        _ => return Err(Notification::new(err::HEADER, err::HEADER_BAD_TYPE, [ty])),
    };
    if !ok {
        return Err(bad_len());
    }
    Ok((buf.len() >= l).then_some(l))
}

/// Decodes one whole message (header included), as [`frame`] delimited it.
pub fn decode(msg: &[u8], ctx: Ctx) -> Result<Message, Notification> {
    let len = match frame(msg)? {
        Some(l) if l == msg.len() => l,
        _ => {
            let field = if msg.len() >= 18 {
                [msg[16], msg[17]]
            } else {
                [0, 0]
            };
            return Err(Notification::new(
                err::HEADER,
                err::HEADER_BAD_LENGTH,
                field,
            ));
        }
    };
    let body = &msg[HEADER_LEN..len];
    match msg[18] {
        MSG_OPEN => decode_open(body).map(Message::Open),
        MSG_UPDATE => decode_update(body, ctx).map(|u| Message::Update(Box::new(u))),
        MSG_NOTIFICATION => Ok(Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        })),
        MSG_KEEPALIVE => Ok(Message::Keepalive),
        MSG_ROUTE_REFRESH => {
            if body.len() != 4 {
                return Err(Notification::new(
                    err::ROUTE_REFRESH,
                    err::ROUTE_REFRESH_BAD_LENGTH,
                    msg,
                ));
            }
            Ok(Message::RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            })
        }
        _ => unreachable!("frame() accepts only known types"),
    }
}

fn open_err(subcode: u8) -> Notification {
    Notification::new(err::OPEN, subcode, [])
}

/// Decodes an OPEN body. Semantic checks (version, AS, hold time,
/// identifier) are the session's: it knows what it expects.
pub fn decode_open(body: &[u8]) -> Result<Open, Notification> {
    let mut r = Reader::new(body);
    let bad = || open_err(0);
    let version = r.u8().ok_or_else(bad)?;
    let my_as = r.u16().ok_or_else(bad)?;
    let hold_time = r.u16().ok_or_else(bad)?;
    let router_id = r.ipv4().ok_or_else(bad)?;
    let mut opt_len = r.u8().ok_or_else(bad)? as usize;
    // RFC 9072: extended optional parameters length.
    let extended = opt_len == 255 && r.buf.first() == Some(&255);
    if extended {
        r.u8();
        opt_len = r.u16().ok_or_else(bad)? as usize;
    }
    if opt_len != r.remaining() {
        return Err(bad());
    }
    let mut params = Reader::new(r.take(opt_len).ok_or_else(bad)?);
    let mut caps = Vec::new();
    let mut other_params = Vec::new();
    while !params.is_empty() {
        let ty = params.u8().ok_or_else(bad)?;
        let len = if extended {
            params.u16().ok_or_else(bad)? as usize
        } else {
            params.u8().ok_or_else(bad)? as usize
        };
        let value = params.take(len).ok_or_else(bad)?;
        if ty != 2 {
            other_params.push((ty, value.to_vec()));
            continue;
        }
        let mut c = Reader::new(value);
        while !c.is_empty() {
            let code = c.u8().ok_or_else(bad)?;
            let clen = c.u8().ok_or_else(bad)? as usize;
            let v = c.take(clen).ok_or_else(bad)?;
            caps.push(decode_capability(code, v).ok_or_else(bad)?);
        }
    }
    Ok(Open {
        version,
        my_as,
        hold_time,
        router_id,
        caps,
        other_params,
    })
}

fn decode_capability(code: u8, v: &[u8]) -> Option<Capability> {
    let mut r = Reader::new(v);
    Some(match code {
        cap::MULTIPROTOCOL => {
            if v.len() != 4 {
                return None;
            }
            let afi = r.u16()?;
            r.u8()?;
            Capability::Multiprotocol { afi, safi: r.u8()? }
        }
        cap::ROUTE_REFRESH if v.is_empty() => Capability::RouteRefresh,
        cap::FOUR_OCTET_AS => {
            if v.len() != 4 {
                return None;
            }
            Capability::FourOctetAs(r.u32()?)
        }
        cap::GRACEFUL_RESTART => {
            if v.len() < 2 || (v.len() - 2) % 4 != 0 {
                return None;
            }
            let fw = r.u16()?;
            let mut families = Vec::new();
            while !r.is_empty() {
                let afi = r.u16()?;
                let safi = r.u8()?;
                let flags = r.u8()?;
                families.push((afi, safi, flags & 0x80 != 0));
            }
            Capability::GracefulRestart(GracefulRestart {
                restarting: fw & 0x8000 != 0,
                restart_time: fw & 0x0fff,
                families,
            })
        }
        _ => Capability::Other {
            code,
            value: v.to_vec(),
        },
    })
}

/// Reads `len` bytes of prefixes (withdrawn routes, NLRI). Any error here
/// leaves the rest of the message unparseable, so it resets the session.
fn decode_prefixes(buf: &[u8], out: &mut Vec<Prefix>) -> Result<(), Notification> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let len = r.u8().unwrap_or(0);
        if len > 32 {
            return Err(Notification::new(
                err::UPDATE,
                err::UPDATE_INVALID_NETWORK,
                [],
            ));
        }
        let n = (len as usize).div_ceil(8);
        let bytes = r
            .take(n)
            .ok_or_else(|| Notification::new(err::UPDATE, err::UPDATE_INVALID_NETWORK, []))?;
        let mut a = [0u8; 4];
        a[..n].copy_from_slice(bytes);
        // Trailing bits past the length are irrelevant (RFC 4271 4.3):
        // clear them rather than refuse.
        out.push(Prefix::truncating(Ipv4Addr::from(a), len));
    }
    Ok(())
}

fn malformed_list() -> Notification {
    Notification::new(err::UPDATE, err::UPDATE_MALFORMED_ATTR_LIST, [])
}

/// Expected (optional, transitive) flag bits of the attributes we know.
fn expected_flags(ty: u8) -> Option<u8> {
    use attr::*;
    Some(match ty {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => FLAG_TRANSITIVE,
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH | MP_UNREACH => FLAG_OPTIONAL,
        AGGREGATOR | COMMUNITIES | AS4_PATH | AS4_AGGREGATOR => FLAG_OPTIONAL | FLAG_TRANSITIVE,
        _ => return None,
    })
}

/// What RFC 7606 says to do with a malformed instance of an attribute.
#[derive(PartialEq, Eq)]
enum OnError {
    TreatAsWithdraw,
    Discard,
    Reset,
}

fn on_error(ty: u8) -> OnError {
    use attr::*;
    match ty {
        MP_REACH | MP_UNREACH => OnError::Reset,
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => OnError::Discard,
        _ => OnError::TreatAsWithdraw,
    }
}

/// Decodes an UPDATE body with RFC 7606 error handling.
pub fn decode_update(body: &[u8], ctx: Ctx) -> Result<Update, Notification> {
    let mut r = Reader::new(body);
    let wlen = r.u16().ok_or_else(malformed_list)? as usize;
    let wbuf = r.take(wlen).ok_or_else(malformed_list)?;
    let alen = r.u16().ok_or_else(malformed_list)? as usize;
    let abuf = r.take(alen).ok_or_else(malformed_list)?;
    let nbuf = r.buf;
    let mut u = Update::default();
    decode_prefixes(wbuf, &mut u.withdrawn)?;
    decode_prefixes(nbuf, &mut u.nlri)?;
    if alen == 0 {
        if !u.nlri.is_empty() {
            u.treat_as_withdraw = Some("NLRI without path attributes".into());
        }
        return Ok(u);
    }
    let mut a = PathAttrs::default();
    let mut seen = [false; 256];
    let mut as4_path: Option<Vec<Segment>> = None;
    let mut as4_aggregator: Option<(u32, Ipv4Addr)> = None;
    let mut r = Reader::new(abuf);
    let withdraw = |u: &mut Update, why: String| {
        if u.treat_as_withdraw.is_none() {
            u.treat_as_withdraw = Some(why);
        }
    };
    while !r.is_empty() {
        let (Some(flags), Some(ty)) = (r.u8(), r.u8()) else {
            // A lone byte: the attribute list is cut; the NLRI is still
            // located by the lengths, so treat-as-withdraw (RFC 7606 4).
            withdraw(&mut u, "truncated attribute header".into());
            break;
        };
        let len = if flags & FLAG_EXTENDED != 0 {
            r.u16().map(usize::from)
        } else {
            r.u8().map(usize::from)
        };
        let Some(value) = len.and_then(|l| r.take(l)) else {
            if matches!(ty, attr::MP_REACH | attr::MP_UNREACH) {
                return Err(Notification::new(
                    err::UPDATE,
                    err::UPDATE_MALFORMED_ATTR_LIST,
                    [],
                ));
            }
            withdraw(
                &mut u,
                format!("attribute {ty} overruns the attribute list"),
            );
            break;
        };
        if seen[ty as usize] {
            // RFC 7606 3(g): duplicates are discarded, except MP ones.
            if matches!(ty, attr::MP_REACH | attr::MP_UNREACH) {
                return Err(malformed_list());
            }
            continue;
        }
        seen[ty as usize] = true;
        let Some(expect) = expected_flags(ty) else {
            if flags & FLAG_OPTIONAL == 0 {
                // An unrecognized well-known attribute stays fatal.
                let mut data = vec![flags, ty];
                if flags & FLAG_EXTENDED != 0 {
                    data.extend_from_slice(&(value.len() as u16).to_be_bytes());
                } else {
                    data.push(value.len() as u8);
                }
                data.extend_from_slice(value);
                return Err(Notification::new(
                    err::UPDATE,
                    err::UPDATE_UNRECOGNIZED_WELL_KNOWN,
                    data,
                ));
            }
            a.other.push((flags, ty, value.to_vec()));
            continue;
        };
        let flags_ok = flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) == expect;
        let result = if flags_ok {
            decode_attr(
                ty,
                value,
                ctx,
                &mut a,
                &mut u,
                &mut as4_path,
                &mut as4_aggregator,
            )
        } else {
            Err(format!("attribute {ty} has flags {flags:#04x}"))
        };
        if let Err(why) = result {
            match on_error(ty) {
                OnError::Reset => return Err(malformed_list()),
                OnError::Discard => u.discarded.push(ty),
                OnError::TreatAsWithdraw => withdraw(&mut u, why),
            }
        }
    }
    // RFC 6793 4.2.3: rebuild the path from AS_PATH and AS4_PATH.
    if !ctx.four_octet_as {
        if let (Some(p), Some(p4)) = (&a.as_path, as4_path) {
            a.as_path = Some(merge_as4_path(p, p4));
        }
        if let (Some((asn, _)), Some(agg4)) = (a.aggregator, as4_aggregator) {
            if asn == u32::from(AS_TRANS) {
                a.aggregator = Some(agg4);
            }
        }
    }
    let announces = !u.nlri.is_empty() || u.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
    if announces {
        let missing = [
            (a.origin.is_none(), "ORIGIN"),
            (a.as_path.is_none(), "AS_PATH"),
            (!u.nlri.is_empty() && a.next_hop.is_none(), "NEXT_HOP"),
        ];
        if let Some((_, name)) = missing.iter().find(|(m, _)| *m) {
            withdraw(&mut u, format!("missing well-known attribute {name}"));
        }
    }
    u.attrs = Some(a);
    Ok(u)
}

fn decode_attr(
    ty: u8,
    v: &[u8],
    ctx: Ctx,
    a: &mut PathAttrs,
    u: &mut Update,
    as4_path: &mut Option<Vec<Segment>>,
    as4_agg: &mut Option<(u32, Ipv4Addr)>,
) -> Result<(), String> {
    let len_err = || format!("attribute {ty} has bad length {}", v.len());
    let mut r = Reader::new(v);
    match ty {
        attr::ORIGIN => {
            a.origin = Some(match v {
                [0] => Origin::Igp,
                [1] => Origin::Egp,
                [2] => Origin::Incomplete,
                [x] => return Err(format!("invalid ORIGIN {x}")),
                _ => return Err(len_err()),
            })
        }
        attr::AS_PATH => {
            let width = if ctx.four_octet_as { 4 } else { 2 };
            a.as_path = Some(decode_as_path(v, width).ok_or("malformed AS_PATH")?);
        }
        attr::AS4_PATH => {
            // Only meaningful from a 2-octet speaker; ignored otherwise
            // (RFC 6793 4.1). Confederation segments are not allowed.
            let p = decode_as_path(v, 4).ok_or("malformed AS4_PATH")?;
            if p.iter().any(|s| s.kind > SEG_AS_SEQUENCE) {
                return Err("AS4_PATH with confederation segments".into());
            }
            if !ctx.four_octet_as {
                *as4_path = Some(p);
            }
        }
        attr::NEXT_HOP => {
            if v.len() != 4 {
                return Err(len_err());
            }
            a.next_hop = r.ipv4();
        }
        attr::MED | attr::LOCAL_PREF => {
            if v.len() != 4 {
                return Err(len_err());
            }
            let x = r.u32();
            if ty == attr::MED {
                a.med = x;
            } else {
                a.local_pref = x;
            }
        }
        attr::ATOMIC_AGGREGATE => {
            if !v.is_empty() {
                return Err(len_err());
            }
            a.atomic_aggregate = true;
        }
        attr::AGGREGATOR => {
            let asn = match (v.len(), ctx.four_octet_as) {
                (8, true) => r.u32(),
                (6, false) => r.u16().map(u32::from),
                _ => return Err(len_err()),
            };
            a.aggregator = asn.zip(r.ipv4());
        }
        attr::AS4_AGGREGATOR => {
            if v.len() != 8 {
                return Err(len_err());
            }
            *as4_agg = r.u32().zip(r.ipv4());
        }
        attr::COMMUNITIES => {
            if v.len() % 4 != 0 {
                return Err(len_err());
            }
            while let Some(c) = r.u32() {
                a.communities.push(c);
            }
        }
        attr::ORIGINATOR_ID => {
            if v.len() != 4 {
                return Err(len_err());
            }
            a.originator_id = r.ipv4();
        }
        attr::CLUSTER_LIST => {
            if v.len() % 4 != 0 {
                return Err(len_err());
            }
            while let Some(c) = r.ipv4() {
                a.cluster_list.push(c);
            }
        }
        attr::MP_REACH => {
            let afi = r.u16().ok_or("short MP_REACH_NLRI")?;
            let safi = r.u8().ok_or("short MP_REACH_NLRI")?;
            let nhl = r.u8().ok_or("short MP_REACH_NLRI")? as usize;
            let nh = r.take(nhl).ok_or("short MP_REACH_NLRI")?;
            r.u8().ok_or("short MP_REACH_NLRI")?; // reserved
            if (afi, safi) != (AFI_IPV4, SAFI_UNICAST) {
                u.other_families.push((afi, safi));
                return Ok(());
            }
            if nh.len() != 4 {
                return Err("MP_REACH_NLRI IPv4 next hop is not 4 bytes".into());
            }
            let mut nlri = Vec::new();
            decode_prefixes(r.buf, &mut nlri).map_err(|_| "bad MP_REACH_NLRI prefixes")?;
            u.mp_reach = Some(MpReach {
                next_hop: Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]),
                nlri,
            });
        }
        attr::MP_UNREACH => {
            let afi = r.u16().ok_or("short MP_UNREACH_NLRI")?;
            let safi = r.u8().ok_or("short MP_UNREACH_NLRI")?;
            if (afi, safi) != (AFI_IPV4, SAFI_UNICAST) {
                u.other_families.push((afi, safi));
                return Ok(());
            }
            let mut w = Vec::new();
            decode_prefixes(r.buf, &mut w).map_err(|_| "bad MP_UNREACH_NLRI prefixes")?;
            u.mp_unreach = Some(w);
        }
        _ => unreachable!("expected_flags() lists only these"),
    }
    Ok(())
}

fn decode_as_path(v: &[u8], width: usize) -> Option<Vec<Segment>> {
    let mut r = Reader::new(v);
    let mut out = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let n = r.u8()? as usize;
        if !(SEG_AS_SET..=SEG_CONFED_SET).contains(&kind) || n == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(n);
        for _ in 0..n {
            asns.push(if width == 4 {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            });
        }
        out.push(Segment { kind, asns });
    }
    Some(out)
}

/// RFC 6793 4.2.3: keep the leading AS_PATH entries the AS4_PATH lacks,
/// then the AS4_PATH. If the AS4_PATH is longer, it is ignored.
fn merge_as4_path(path: &[Segment], as4: Vec<Segment>) -> Vec<Segment> {
    let count = |p: &[Segment]| -> usize {
        p.iter()
            .map(|s| {
                if s.kind == SEG_AS_SET {
                    1
                } else {
                    s.asns.len()
                }
            })
            .sum()
    };
    let (n, n4) = (count(path), count(&as4));
    if n4 > n {
        return path.to_vec();
    }
    let mut keep = n - n4;
    let mut out = Vec::new();
    for s in path {
        if keep == 0 {
            break;
        }
        let c = if s.kind == SEG_AS_SET {
            1
        } else {
            s.asns.len()
        };
        if c <= keep {
            out.push(s.clone());
            keep -= c;
        } else {
            out.push(Segment {
                kind: s.kind,
                asns: s.asns[..keep].to_vec(),
            });
            keep = 0;
        }
    }
    out.extend(as4);
    out
}

// ---------------------------------------------------------------------------
// Encoding

fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + body.len());
    m.extend_from_slice(&[0xff; 16]);
    m.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

pub fn encode_keepalive() -> Vec<u8> {
    message(MSG_KEEPALIVE, &[])
}

pub fn encode_notification(n: &Notification) -> Vec<u8> {
    let mut b = vec![n.code, n.subcode];
    // Keep the message within 4096 bytes whatever data we echo back.
    let room = MAX_MESSAGE_LEN - HEADER_LEN - 2;
    b.extend_from_slice(&n.data[..n.data.len().min(room)]);
    message(MSG_NOTIFICATION, &b)
}

pub fn encode_route_refresh(afi: u16, safi: u8) -> Vec<u8> {
    let a = afi.to_be_bytes();
    message(MSG_ROUTE_REFRESH, &[a[0], a[1], 0, safi])
}

fn encode_capability(c: &Capability, out: &mut Vec<u8>) {
    match c {
        Capability::Multiprotocol { afi, safi } => {
            out.extend_from_slice(&[cap::MULTIPROTOCOL, 4]);
            out.extend_from_slice(&afi.to_be_bytes());
            out.extend_from_slice(&[0, *safi]);
        }
        Capability::RouteRefresh => out.extend_from_slice(&[cap::ROUTE_REFRESH, 0]),
        Capability::FourOctetAs(a) => {
            out.extend_from_slice(&[cap::FOUR_OCTET_AS, 4]);
            out.extend_from_slice(&a.to_be_bytes());
        }
        Capability::GracefulRestart(g) => {
            out.extend_from_slice(&[cap::GRACEFUL_RESTART, (2 + 4 * g.families.len()) as u8]);
            let fw = (g.restart_time & 0x0fff) | if g.restarting { 0x8000 } else { 0 };
            out.extend_from_slice(&fw.to_be_bytes());
            for (afi, safi, f) in &g.families {
                out.extend_from_slice(&afi.to_be_bytes());
                out.extend_from_slice(&[*safi, if *f { 0x80 } else { 0 }]);
            }
        }
        Capability::Other { code, value } => {
            out.extend_from_slice(&[*code, value.len() as u8]);
            out.extend_from_slice(value);
        }
    }
}

/// Encodes an OPEN, one capability per optional parameter (the form every
/// implementation accepts).
pub fn encode_open(o: &Open) -> Vec<u8> {
    let mut params = Vec::new();
    for c in &o.caps {
        let mut v = Vec::new();
        encode_capability(c, &mut v);
        params.push(2);
        params.push(v.len() as u8);
        params.extend_from_slice(&v);
    }
    for (ty, v) in &o.other_params {
        params.push(*ty);
        params.push(v.len() as u8);
        params.extend_from_slice(v);
    }
    let mut b = vec![o.version];
    b.extend_from_slice(&o.my_as.to_be_bytes());
    b.extend_from_slice(&o.hold_time.to_be_bytes());
    b.extend_from_slice(&o.router_id.octets());
    b.push(params.len() as u8);
    b.extend_from_slice(&params);
    message(MSG_OPEN, &b)
}

fn encode_prefix(p: &Prefix, out: &mut Vec<u8>) {
    let n = (p.len() as usize).div_ceil(8);
    out.push(p.len());
    out.extend_from_slice(&p.addr().octets()[..n]);
}

fn push_attr(out: &mut Vec<u8>, flags: u8, ty: u8, v: &[u8]) {
    if v.len() > 255 {
        out.extend_from_slice(&[flags | FLAG_EXTENDED, ty]);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, ty, v.len() as u8]);
    }
    out.extend_from_slice(v);
}

fn encode_as_path(path: &[Segment], four: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for s in path {
        for chunk in s.asns.chunks(255) {
            v.push(s.kind);
            v.push(chunk.len() as u8);
            for a in chunk {
                if four {
                    v.extend_from_slice(&a.to_be_bytes());
                } else {
                    let two = u16::try_from(*a).unwrap_or(AS_TRANS);
                    v.extend_from_slice(&two.to_be_bytes());
                }
            }
        }
    }
    v
}

/// Encodes the path attributes we send (ORIGIN, AS_PATH, NEXT_HOP, MED,
/// LOCAL_PREF, COMMUNITIES; AS4_PATH towards a 2-octet speaker when the
/// path holds a large AS).
pub fn encode_attrs(a: &PathAttrs, ctx: Ctx) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(o) = a.origin {
        push_attr(&mut out, FLAG_TRANSITIVE, attr::ORIGIN, &[o as u8]);
    }
    let path = a.as_path.as_deref().unwrap_or(&[]);
    push_attr(
        &mut out,
        FLAG_TRANSITIVE,
        attr::AS_PATH,
        &encode_as_path(path, ctx.four_octet_as),
    );
    if let Some(nh) = a.next_hop {
        push_attr(&mut out, FLAG_TRANSITIVE, attr::NEXT_HOP, &nh.octets());
    }
    if let Some(m) = a.med {
        push_attr(&mut out, FLAG_OPTIONAL, attr::MED, &m.to_be_bytes());
    }
    if let Some(l) = a.local_pref {
        push_attr(
            &mut out,
            FLAG_TRANSITIVE,
            attr::LOCAL_PREF,
            &l.to_be_bytes(),
        );
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        push_attr(
            &mut out,
            FLAG_OPTIONAL | FLAG_TRANSITIVE,
            attr::COMMUNITIES,
            &v,
        );
    }
    if !ctx.four_octet_as && path.iter().flat_map(|s| &s.asns).any(|a| *a > 0xffff) {
        push_attr(
            &mut out,
            FLAG_OPTIONAL | FLAG_TRANSITIVE,
            attr::AS4_PATH,
            &encode_as_path(path, true),
        );
    }
    out
}

/// Encodes UPDATE messages announcing `nlri` with `attrs` and withdrawing
/// `withdrawn`, split so that each fits in 4096 bytes.
pub fn encode_updates(
    withdrawn: &[Prefix],
    attrs: Option<&PathAttrs>,
    nlri: &[Prefix],
    ctx: Ctx,
) -> Vec<Vec<u8>> {
    let room = MAX_MESSAGE_LEN - HEADER_LEN - 4;
    let mut out = Vec::new();
    let mut w = Vec::new();
    for p in withdrawn {
        if w.len() + 5 > room {
            out.push(update_message(&w, &[], &[]));
            w.clear();
        }
        encode_prefix(p, &mut w);
    }
    if !w.is_empty() {
        out.push(update_message(&w, &[], &[]));
    }
    if let Some(a) = attrs {
        let ab = encode_attrs(a, ctx);
        let mut n = Vec::new();
        for p in nlri {
            if ab.len() + n.len() + 5 > room {
                out.push(update_message(&[], &ab, &n));
                n.clear();
            }
            encode_prefix(p, &mut n);
        }
        if !n.is_empty() {
            out.push(update_message(&[], &ab, &n));
        }
    }
    out
}

fn update_message(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + withdrawn.len() + attrs.len() + nlri.len());
    b.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    message(MSG_UPDATE, &b)
}

/// The IPv4 unicast End-of-RIB marker: an empty UPDATE.
pub fn encode_end_of_rib() -> Vec<u8> {
    update_message(&[], &[], &[])
}

/// Hex dump helper for logs and tests: `ff ff 00 13 04`.
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const FOUR: Ctx = Ctx {
        four_octet_as: true,
    };
    const TWO: Ctx = Ctx {
        four_octet_as: false,
    };

    #[test]
    fn keepalive_golden_bytes() {
        let k = encode_keepalive();
        assert_eq!(k, unhex("ffffffffffffffffffffffffffffffff 0013 04"));
        assert_eq!(frame(&k).unwrap(), Some(19));
        assert_eq!(decode(&k, FOUR).unwrap(), Message::Keepalive);
    }

    #[test]
    fn open_golden_bytes_both_ways() {
        let o = Open {
            version: 4,
            my_as: 64512,
            hold_time: 90,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            caps: vec![
                Capability::Multiprotocol { afi: 1, safi: 1 },
                Capability::RouteRefresh,
                Capability::FourOctetAs(64512),
                Capability::GracefulRestart(GracefulRestart {
                    restarting: true,
                    restart_time: 120,
                    families: vec![(1, 1, true)],
                }),
            ],
            other_params: vec![],
        };
        let bytes = encode_open(&o);
        let want = unhex(
            "ffffffffffffffffffffffffffffffff 003b 01
             04 fc00 005a 0a000001 1e
             02 06 01 04 0001 00 01
             02 02 02 00
             02 06 41 04 0000fc00
             02 08 40 06 8078 0001 01 80",
        );
        assert_eq!(bytes, want, "\n{}\n{}", hex(&bytes), hex(&want));
        let d = decode(&bytes, FOUR).unwrap();
        assert_eq!(d, Message::Open(o.clone()));
        if let Message::Open(d) = d {
            assert_eq!(d.asn(), 64512);
            assert!(d.ipv4_unicast() && d.route_refresh() && d.four_octet_as());
            assert_eq!(d.graceful_restart().unwrap().ipv4_forwarding(), Some(true));
        }
    }

    /// An OPEN laid out like BIRD 2's: all capabilities in one optional
    /// parameter, with capabilities we do not know (enhanced route
    /// refresh, long-lived GR, hostname).
    #[test]
    fn decodes_bird_style_open_with_unknown_capabilities() {
        let m = unhex(
            "ffffffffffffffffffffffffffffffff 003d 01 04 fc00 00f0 0ac80001 20
             02 1e 01 04 0001 0001 02 00 40 02 0078 41 04 0000fc00 46 00 47 00
             49 0a 05 62 69 72 64 31 00 00 00 00",
        );
        // Fix up the length to the bytes we wrote.
        let mut m = m;
        let l = m.len() as u16;
        m[16..18].copy_from_slice(&l.to_be_bytes());
        m[28] = (m.len() - 29) as u8;
        m[30] = (m.len() - 31) as u8;
        let Message::Open(o) = decode(&m, FOUR).unwrap() else {
            panic!()
        };
        assert_eq!(o.asn(), 64512);
        assert_eq!(o.hold_time, 240);
        assert!(o.ipv4_unicast() && o.route_refresh());
        assert_eq!(o.graceful_restart().unwrap().restart_time, 120);
        assert!(o
            .caps
            .iter()
            .any(|c| matches!(c, Capability::Other { code: 73, .. })));
    }

    #[test]
    fn update_round_trips_in_both_as_widths() {
        let attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![Segment {
                kind: SEG_AS_SEQUENCE,
                asns: vec![64512, 4_200_000_000],
            }]),
            next_hop: Some(Ipv4Addr::new(192, 168, 1, 1)),
            med: Some(5),
            local_pref: Some(100),
            communities: vec![0xfc00_0001],
            ..Default::default()
        };
        let nlri = vec![p("10.244.1.0/26"), p("10.0.0.0/8"), p("0.0.0.0/0")];
        for ctx in [FOUR, TWO] {
            let msgs = encode_updates(&[p("10.9.0.0/16")], Some(&attrs), &nlri, ctx);
            assert_eq!(msgs.len(), 2);
            let Message::Update(w) = decode(&msgs[0], ctx).unwrap() else {
                panic!()
            };
            assert_eq!(w.withdrawn, vec![p("10.9.0.0/16")]);
            assert!(w.attrs.is_none());
            let Message::Update(u) = decode(&msgs[1], ctx).unwrap() else {
                panic!()
            };
            assert_eq!(u.nlri, nlri);
            assert_eq!(u.attrs.as_ref().unwrap(), &attrs, "{ctx:?}");
            assert!(u.treat_as_withdraw.is_none());
            assert_eq!(u.attrs.unwrap().as_path_len(), 2);
        }
    }

    #[test]
    fn end_of_rib_both_forms() {
        let Message::Update(u) = decode(&encode_end_of_rib(), FOUR).unwrap() else {
            panic!()
        };
        assert!(u.is_end_of_rib());
        // MP_UNREACH_NLRI for 1/1 with nothing in it.
        let m = update_message(&[], &[0x80, 15, 3, 0, 1, 1], &[]);
        let Message::Update(u) = decode(&m, FOUR).unwrap() else {
            panic!()
        };
        assert!(u.is_end_of_rib());
        let m = update_message(&[24, 10, 0, 0], &[], &[]);
        let Message::Update(u) = decode(&m, FOUR).unwrap() else {
            panic!()
        };
        assert!(!u.is_end_of_rib());
    }

    #[test]
    fn mp_reach_ipv4_unicast_is_decoded() {
        let mut a = vec![0x40, 1, 1, 0, 0x40, 2, 0];
        // afi 1, safi 1, next hop length 4, 10.0.0.2, reserved, 10.244.2.0/24
        a.extend_from_slice(&[0x80, 14, 13, 0, 1, 1, 4, 10, 0, 0, 2, 0, 24, 10, 244, 2]);
        let m = update_message(&[], &a, &[]);
        let Message::Update(u) = decode(&m, FOUR).unwrap() else {
            panic!()
        };
        let mp = u.mp_reach.clone().unwrap();
        assert_eq!(mp.next_hop, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(mp.nlri, vec![p("10.244.2.0/24")]);
        assert_eq!(u.announced().count(), 1);
        assert!(u.treat_as_withdraw.is_none());
    }

    fn header(len: u16, ty: u8) -> Vec<u8> {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&len.to_be_bytes());
        m.push(ty);
        m
    }

    #[test]
    fn header_errors_get_the_right_notification() {
        let mut bad_marker = encode_keepalive();
        bad_marker[3] = 0;
        assert_eq!(frame(&bad_marker).unwrap_err(), Notification::new(1, 1, []));
        assert_eq!(
            frame(&header(18, 4)).unwrap_err(),
            Notification::new(1, 2, [0, 18])
        );
        assert_eq!(
            frame(&header(5000, 2)).unwrap_err(),
            Notification::new(1, 2, 5000u16.to_be_bytes())
        );
        assert_eq!(
            frame(&header(20, 4)).unwrap_err(),
            Notification::new(1, 2, [0, 20])
        );
        assert_eq!(
            frame(&header(28, 1)).unwrap_err(),
            Notification::new(1, 2, [0, 28])
        );
        assert_eq!(
            frame(&header(19, 9)).unwrap_err(),
            Notification::new(1, 3, [9])
        );
        assert_eq!(frame(&header(100, 2)).unwrap(), None);
        let mut rr = header(24, 5);
        rr.extend_from_slice(&[0, 1, 0, 1, 0]);
        assert_eq!(decode(&rr, FOUR).unwrap_err().code, err::ROUTE_REFRESH);
        let ok = encode_route_refresh(1, 1);
        assert_eq!(
            decode(&ok, FOUR).unwrap(),
            Message::RouteRefresh { afi: 1, safi: 1 }
        );
    }

    #[test]
    fn update_length_errors_reset_the_session() {
        // Withdrawn length past the end.
        let e = decode_update(&[0, 10, 0], FOUR).unwrap_err();
        assert_eq!((e.code, e.subcode), (3, 1));
        // Attribute length past the end.
        let e = decode_update(&[0, 0, 0, 9, 0x40], FOUR).unwrap_err();
        assert_eq!((e.code, e.subcode), (3, 1));
        // Prefix length 33.
        let e = decode_update(&[0, 0, 0, 0, 33, 1, 2, 3, 4, 5], FOUR).unwrap_err();
        assert_eq!((e.code, e.subcode), (3, 10));
        // Prefix cut short.
        let e = decode_update(&[0, 0, 0, 0, 24, 10], FOUR).unwrap_err();
        assert_eq!((e.code, e.subcode), (3, 10));
        // Duplicate MP_UNREACH.
        let a = [0x80, 15, 3, 0, 1, 1, 0x80, 15, 3, 0, 1, 1];
        let mut b = vec![0, 0, 0, a.len() as u8];
        b.extend_from_slice(&a);
        assert_eq!(decode_update(&b, FOUR).unwrap_err().subcode, 1);
    }

    fn upd(attrs: &[u8], nlri: &[u8]) -> Update {
        let mut b = vec![0, 0];
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(attrs);
        b.extend_from_slice(nlri);
        decode_update(&b, FOUR).unwrap()
    }

    const NLRI: [u8; 4] = [24, 10, 1, 2];
    const GOOD: [u8; 14] = [0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 10, 0, 0, 1];

    #[test]
    fn rfc7606_treat_as_withdraw_cases() {
        assert!(upd(&GOOD, &NLRI).treat_as_withdraw.is_none());
        // Bad ORIGIN value.
        let mut a = GOOD;
        a[3] = 7;
        assert!(upd(&a, &NLRI).treat_as_withdraw.is_some());
        // ORIGIN with optional flag.
        let mut a = GOOD;
        a[0] = 0xc0;
        assert!(upd(&a, &NLRI).treat_as_withdraw.is_some());
        // Missing NEXT_HOP.
        assert!(upd(&GOOD[..7], &NLRI).treat_as_withdraw.is_some());
        // Malformed AS_PATH (segment count past the end).
        let a = [0x40, 1, 1, 0, 0x40, 2, 2, 2, 3, 0x40, 3, 4, 10, 0, 0, 1];
        assert!(upd(&a, &NLRI).treat_as_withdraw.is_some());
        // Attribute length overrunning the list.
        let mut a = GOOD.to_vec();
        a.extend_from_slice(&[0x80, 4, 9, 0]);
        assert!(upd(&a, &NLRI).treat_as_withdraw.is_some());
        // NLRI without attributes.
        assert!(upd(&[], &NLRI).treat_as_withdraw.is_some());
        // A broken AGGREGATOR is only discarded.
        let mut a = GOOD.to_vec();
        a.extend_from_slice(&[0xc0, 7, 3, 1, 2, 3]);
        let u = upd(&a, &NLRI);
        assert!(u.treat_as_withdraw.is_none());
        assert_eq!(u.discarded, vec![attr::AGGREGATOR]);
        // Duplicate ORIGIN: the second is dropped.
        let mut a = GOOD.to_vec();
        a.extend_from_slice(&[0x40, 1, 1, 2]);
        let u = upd(&a, &NLRI);
        assert_eq!(u.attrs.unwrap().origin, Some(Origin::Igp));
        // Unknown optional attribute: kept raw.
        let mut a = GOOD.to_vec();
        a.extend_from_slice(&[0xc0, 99, 1, 42]);
        assert_eq!(
            upd(&a, &NLRI).attrs.unwrap().other,
            vec![(0xc0, 99, vec![42])]
        );
    }

    #[test]
    fn unrecognized_well_known_attribute_is_fatal() {
        let mut a = GOOD.to_vec();
        a.extend_from_slice(&[0x40, 99, 1, 42]);
        let mut b = vec![0, 0, 0, a.len() as u8];
        b.extend_from_slice(&a);
        let e = decode_update(&b, FOUR).unwrap_err();
        assert_eq!((e.code, e.subcode), (3, 2));
        assert_eq!(e.data, vec![0x40, 99, 1, 42]);
    }

    #[test]
    fn as4_path_is_merged_for_two_octet_speakers() {
        // AS_PATH 64512 23456 23456, AS4_PATH 4200000000 4200000001.
        let mut a = vec![0x40, 1, 1, 0];
        a.extend_from_slice(&[0x40, 2, 8, 2, 3, 0xfc, 0x00, 0x5b, 0xa0, 0x5b, 0xa0]);
        a.extend_from_slice(&[0x40, 3, 4, 10, 0, 0, 1]);
        a.extend_from_slice(&[0xc0, 17, 10, 2, 2]);
        a.extend_from_slice(&4_200_000_000u32.to_be_bytes());
        a.extend_from_slice(&4_200_000_001u32.to_be_bytes());
        let mut b = vec![0, 0, 0, a.len() as u8];
        b.extend_from_slice(&a);
        b.extend_from_slice(&NLRI);
        let u = decode_update(&b, TWO).unwrap();
        let path = u.attrs.unwrap().as_path.unwrap();
        assert_eq!(path[0].asns, vec![64512]);
        assert_eq!(path[1].asns, vec![4_200_000_000, 4_200_000_001]);
    }

    #[test]
    fn open_errors() {
        // Optional parameter length inconsistent.
        let mut o = encode_open(&Open {
            version: 4,
            my_as: 1,
            hold_time: 3,
            router_id: Ipv4Addr::new(1, 1, 1, 1),
            caps: vec![Capability::RouteRefresh],
            other_params: vec![],
        });
        o[28] += 1;
        assert_eq!(decode_open(&o[19..]).unwrap_err().code, err::OPEN);
        // Bad multiprotocol capability length.
        let body = [4, 0, 1, 0, 3, 1, 1, 1, 1, 5, 2, 3, 1, 1, 0];
        assert_eq!(decode_open(&body).unwrap_err().code, err::OPEN);
    }

    #[test]
    fn notification_text() {
        let n = Notification::cease(err::CEASE_ADMIN_SHUTDOWN, "maintenance");
        assert_eq!(
            n.to_string(),
            "cease: administrative shutdown \"maintenance\""
        );
        let bytes = encode_notification(&n);
        assert_eq!(decode(&bytes, FOUR).unwrap(), Message::Notification(n));
        assert_eq!(
            Notification::new(4, 0, []).to_string(),
            "hold timer expired"
        );
    }

    #[test]
    fn big_announcements_are_split_under_4096_bytes() {
        let attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            next_hop: Some(Ipv4Addr::new(1, 2, 3, 4)),
            ..Default::default()
        };
        let nlri: Vec<Prefix> = (0..5000u32)
            .map(|i| Prefix::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap())
            .collect();
        let msgs = encode_updates(&nlri, Some(&attrs), &nlri, FOUR);
        let mut got = Vec::new();
        let mut gone = Vec::new();
        for m in &msgs {
            assert!(m.len() <= MAX_MESSAGE_LEN);
            let Message::Update(u) = decode(m, FOUR).unwrap() else {
                panic!()
            };
            got.extend(u.nlri);
            gone.extend(u.withdrawn);
        }
        assert_eq!(got, nlri);
        assert_eq!(gone, nlri);
    }

    /// Cheap fuzzing for the normal test suite: random and mutated
    /// messages must decode or fail, never panic; whatever decodes
    /// re-encodes (for the message kinds we encode) and decodes again.
    #[test]
    fn random_and_mutated_input_never_panics() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(0x8697);
        let attrs = PathAttrs {
            origin: Some(Origin::Egp),
            as_path: Some(vec![Segment {
                kind: SEG_AS_SEQUENCE,
                asns: vec![1, 2, 3],
            }]),
            next_hop: Some(Ipv4Addr::new(1, 2, 3, 4)),
            med: Some(1),
            local_pref: Some(2),
            communities: vec![3],
            ..Default::default()
        };
        let mut seeds = encode_updates(
            &[p("10.1.0.0/16")],
            Some(&attrs),
            &[p("10.2.0.0/24"), p("10.3.3.0/26")],
            FOUR,
        );
        seeds.push(encode_open(&Open {
            version: 4,
            my_as: 1,
            hold_time: 3,
            router_id: Ipv4Addr::new(1, 1, 1, 1),
            caps: vec![
                Capability::RouteRefresh,
                Capability::FourOctetAs(7),
                Capability::GracefulRestart(GracefulRestart {
                    restarting: false,
                    restart_time: 9,
                    families: vec![(1, 1, false)],
                }),
            ],
            other_params: vec![],
        }));
        seeds.push(encode_notification(&Notification::new(
            6,
            2,
            [3, b'a', b'b', b'c'],
        )));
        seeds.push(encode_route_refresh(1, 1));
        seeds.push(encode_keepalive());
        for i in 0..200_000u32 {
            let mut m = seeds[i as usize % seeds.len()].clone();
            match rng.gen_range(0..4) {
                0 => {
                    for _ in 0..rng.gen_range(1..4) {
                        let j = rng.gen_range(HEADER_LEN.min(m.len() - 1)..m.len());
                        m[j] = rng.gen();
                    }
                }
                1 => {
                    let j = rng.gen_range(HEADER_LEN..=m.len());
                    m.truncate(j);
                    let l = m.len() as u16;
                    m[16..18].copy_from_slice(&l.to_be_bytes());
                }
                2 => {
                    let extra = rng.gen_range(1..40);
                    for _ in 0..extra {
                        m.push(rng.gen());
                    }
                    let l = m.len() as u16;
                    m[16..18].copy_from_slice(&l.to_be_bytes());
                }
                _ => {
                    let n = rng.gen_range(0..64);
                    m = (0..n).map(|_| rng.gen()).collect();
                    if rng.gen_bool(0.5) && m.len() >= HEADER_LEN {
                        m[..16].fill(0xff);
                        let l = m.len() as u16;
                        m[16..18].copy_from_slice(&l.to_be_bytes());
                        m[18] = rng.gen_range(1..6);
                    }
                }
            }
            for ctx in [FOUR, TWO] {
                let _ = frame(&m);
                if let Ok(Message::Update(u)) = decode(&m, ctx) {
                    if let Some(a) = &u.attrs {
                        let again = encode_updates(&u.withdrawn, Some(a), &u.nlri, ctx);
                        for x in again {
                            decode(&x, ctx).expect("our own encoding decodes");
                        }
                    }
                }
            }
        }
    }
}
