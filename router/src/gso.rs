//! Software offloads for ports that have none (the raw-socket uplink): what
//! a NIC or the kernel's GSO layer would do to a frame a TAP handed us.
//!
//! - [`complete_checksum`]: fill in a partial L4 checksum (virtio-net
//!   `NEEDS_CSUM`: sum from `csum_start` to the end, store the complement
//!   at `csum_start + csum_offset`), as Linux's `skb_checksum_help` does.
//! - [`TcpSegments`]: cut a TCP/IPv4 GSO super-segment at `gso_size`
//!   (Linux's `tcp_gso_segment`): each segment gets the IP header with its
//!   own total length, identification (+1 per segment) and checksum, and
//!   the TCP header with its own sequence number and checksum; FIN and PSH
//!   stay only on the last segment, CWR only on the first.
//! - [`Fragments`]: IPv4 fragmentation (RFC 791): every fragment's data
//!   is a multiple of 8 bytes but the last; the first keeps all options,
//!   later ones only those with the "copied" flag; offsets and MF compose
//!   with a packet that was already a fragment.
//!
//! Both splitters are views over the original packet: `new` validates it
//! (untrusted input, no panics), `count` says how many pieces, and
//! `write(i, out)` builds piece `i` into a caller's buffer. Nothing here
//! allocates, so a port writes each piece straight into its send ring.
use crate::wire::field::{ipv4, tcp};
use crate::wire::{ones_complement_sum, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN};

/// Most pieces one packet may be cut into (a 64 KiB segment at an MSS of
/// 64 bytes); more is refused so a forged `gso_size` cannot make us emit
/// thousands of packets.
pub const MAX_PIECES: usize = 1024;

const IPPROTO_TCP: u8 = 6;
const TCP_HEADER_LEN: usize = 20;
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// Why a packet could not be offloaded in software.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// Headers inconsistent with the packet or the offload request
    /// (truncated, bad IHL or data offset, checksum field out of bounds).
    Malformed,
    /// Not something this module segments (not TCP, already a fragment,
    /// DF set where fragmentation is needed, MTU too small).
    Unsupported,
    /// It would take more than [`MAX_PIECES`] pieces.
    TooManyPieces,
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The TCP pseudo-header for an IPv4 packet whose source and destination
/// are `addrs` (8 bytes) and whose TCP segment is `tcp_len` bytes.
#[inline]
fn tcp_pseudo_header(addrs: &[u8], tcp_len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(addrs);
    p[9] = IPPROTO_TCP;
    p[10..12].copy_from_slice(&tcp_len.to_be_bytes());
    p
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Adds two folded one's complement sums with end-around carry.
#[inline]
fn add_sums(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Recomputes the IPv4 header checksum over the first `hl` bytes.
fn fill_ip_checksum(ip: &mut [u8], hl: usize) {
    put16(ip, ipv4::CHECKSUM.start, 0);
    let sum = ones_complement_sum(&ip[..hl]);
    put16(ip, ipv4::CHECKSUM.start, !sum);
}

/// The header length and total length of the IPv4 packet at the start of
/// `pkt`, checked against each other and against `pkt`.
fn ip_lengths(pkt: &[u8]) -> Result<(usize, usize), OffloadError> {
    if pkt.len() < IPV4_HEADER_LEN || pkt[ipv4::VER_IHL] >> 4 != 4 {
        return Err(OffloadError::Malformed);
    }
    let hl = usize::from(pkt[ipv4::VER_IHL] & 0x0f) * 4;
    let total = usize::from(be16(pkt, ipv4::LENGTH.start));
    if hl < IPV4_HEADER_LEN || total < hl || total > pkt.len() {
        return Err(OffloadError::Malformed);
    }
    Ok((hl, total))
}

/// Completes a partial checksum in the IPv4 packet `pkt`: `csum_start` and
/// `csum_offset` count from the start of `pkt`. The field must hold the
/// pseudo-header sum (as a NEEDS_CSUM sender leaves it). A result of 0 is
/// stored as 0xffff (the same value in one's complement, and what UDP needs).
pub fn complete_checksum(
    pkt: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), OffloadError> {
    let field = csum_start
        .checked_add(csum_offset)
        .ok_or(OffloadError::Malformed)?;
    if csum_start < 20 || field + 2 > pkt.len() || field < csum_start {
        return Err(OffloadError::Malformed);
    }
    let sum = ones_complement_sum(&pkt[csum_start..]);
    let c = !sum;
    put16(pkt, field, if c == 0 { 0xffff } else { c });
    Ok(())
}

/// A TCP/IPv4 super-segment seen as `count()` segments of at most `mss`
/// payload bytes each.
#[derive(Clone, Copy, Debug)]
pub struct TcpSegments<'a> {
    pkt: &'a [u8],
    hl: usize,
    thl: usize,
    mss: usize,
    payload: usize,
    count: usize,
}

impl<'a> TcpSegments<'a> {
    /// Validates the TCP/IPv4 packet at the start of `pkt` (bytes after its
    /// total length are ignored) for cutting at `mss` payload bytes.
    pub fn new(pkt: &'a [u8], mss: usize) -> Result<TcpSegments<'a>, OffloadError> {
        let (hl, total) = ip_lengths(pkt)?;
        let pkt = &pkt[..total];
        if pkt[ipv4::PROTOCOL] != IPPROTO_TCP
            || be16(pkt, ipv4::FLAGS_FRAG.start) & (IP_MF | IP_OFFSET_MASK) != 0
        {
            return Err(OffloadError::Unsupported);
        }
        if total < hl + TCP_HEADER_LEN {
            return Err(OffloadError::Malformed);
        }
        let thl = usize::from(pkt[hl + tcp::DATA_OFF] >> 4) * 4;
        if thl < TCP_HEADER_LEN || hl + thl > total || mss == 0 {
            return Err(OffloadError::Malformed);
        }
        let payload = total - hl - thl;
        let count = payload.div_ceil(mss).max(1);
        if count > MAX_PIECES {
            return Err(OffloadError::TooManyPieces);
        }
        Ok(TcpSegments {
            pkt,
            hl,
            thl,
            mss,
            payload,
            count,
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Length of the IP + TCP headers every segment carries.
    pub fn header_len(&self) -> usize {
        self.hl + self.thl
    }

    /// Length of segment `i` (IP header included); 0 if there is none.
    pub fn len(&self, i: usize) -> usize {
        if i >= self.count {
            return 0;
        }
        let start = i * self.mss;
        self.header_len() + (self.payload - start).min(self.mss)
    }

    /// Whether the original carried no payload (then there is one segment:
    /// the packet itself, checksummed).
    pub fn is_empty(&self) -> bool {
        self.payload == 0
    }

    /// Builds segment `i` into `out` and returns its length; 0 (and `out`
    /// untouched) if there is no segment `i` or `out` is too short.
    pub fn write(&self, i: usize, out: &mut [u8]) -> usize {
        let n = self.len(i);
        if n == 0 || out.len() < n {
            return 0;
        }
        let (hl, h) = (self.hl, self.header_len());
        let start = i * self.mss;
        let out = &mut out[..n];
        out[..h].copy_from_slice(&self.pkt[..h]);
        out[h..].copy_from_slice(&self.pkt[h + start..h + start + (n - h)]);
        // IP: length, identification, checksum.
        put16(out, ipv4::LENGTH.start, n as u16);
        let ident = be16(self.pkt, ipv4::IDENT.start).wrapping_add(i as u16);
        put16(out, ipv4::IDENT.start, ident);
        fill_ip_checksum(out, hl);
        // TCP: sequence number, flags, checksum.
        let seq = be32(self.pkt, hl + tcp::SEQ_NUM.start);
        let seq_at = hl + tcp::SEQ_NUM.start..hl + tcp::SEQ_NUM.end;
        out[seq_at].copy_from_slice(&seq.wrapping_add(start as u32).to_be_bytes());
        if i + 1 < self.count {
            out[hl + tcp::FLAGS] &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            out[hl + tcp::FLAGS] &= !TCP_CWR;
        }
        put16(out, hl + tcp::CHECKSUM.start, 0);
        let pseudo = tcp_pseudo_header(&out[ipv4::ADDRS], (n - hl) as u16);
        let sum = add_sums(
            ones_complement_sum(&pseudo),
            ones_complement_sum(&out[hl..]),
        );
        put16(out, hl + tcp::CHECKSUM.start, !sum);
        n
    }
}

/// The options of an IPv4 header that go into every fragment (those whose
/// type has the "copied" bit), padded to a multiple of 4 bytes with EOL.
#[derive(Clone, Copy, Debug)]
struct CopiedOptions {
    bytes: [u8; 40],
    len: usize,
}

impl CopiedOptions {
    fn of(opts: &[u8]) -> Result<CopiedOptions, OffloadError> {
        let mut c = CopiedOptions {
            bytes: [0; 40],
            len: 0,
        };
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => break,  // end of option list
                1 => i += 1, // no-operation: not copied
                t => {
                    let l = usize::from(*opts.get(i + 1).ok_or(OffloadError::Malformed)?);
                    if l < 2 || i + l > opts.len() {
                        return Err(OffloadError::Malformed);
                    }
                    if t & 0x80 != 0 {
                        c.bytes[c.len..c.len + l].copy_from_slice(&opts[i..i + l]);
                        c.len += l;
                    }
                    i += l;
                }
            }
        }
        c.len = c.len.div_ceil(4) * 4;
        Ok(c)
    }
}

/// An IPv4 packet seen as `count()` fragments of at most `mtu` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Fragments<'a> {
    pkt: &'a [u8],
    hl: usize,
    copied: CopiedOptions,
    /// Data bytes per fragment (a multiple of 8).
    step: usize,
    data: usize,
    count: usize,
    /// Offset (in 8-byte units) and MF of the packet being fragmented.
    base_offset: u16,
    base_mf: bool,
}

impl<'a> Fragments<'a> {
    /// Validates the IPv4 packet at the start of `pkt` (bytes after its
    /// total length are ignored) for fragmenting to `mtu`. Refuses packets
    /// with DF set ([`OffloadError::Unsupported`]; the sender must be told
    /// with ICMP instead) and MTUs that leave less than 8 data bytes.
    pub fn new(pkt: &'a [u8], mtu: usize) -> Result<Fragments<'a>, OffloadError> {
        let (hl, total) = ip_lengths(pkt)?;
        let pkt = &pkt[..total];
        let flags = be16(pkt, ipv4::FLAGS_FRAG.start);
        if flags & IP_DF != 0 || mtu < hl + 8 {
            return Err(OffloadError::Unsupported);
        }
        let copied = CopiedOptions::of(&pkt[IPV4_HEADER_LEN..hl])?;
        let data = total - hl;
        let step = (mtu - hl) & !7;
        let count = data.div_ceil(step).max(1);
        if count > MAX_PIECES {
            return Err(OffloadError::TooManyPieces);
        }
        let base_offset = flags & IP_OFFSET_MASK;
        if usize::from(base_offset) + (count - 1) * step / 8 > usize::from(IP_OFFSET_MASK) {
            return Err(OffloadError::Malformed);
        }
        Ok(Fragments {
            pkt,
            hl,
            copied,
            step,
            data,
            count,
            base_offset,
            base_mf: flags & IP_MF != 0,
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    fn header_len(&self, i: usize) -> usize {
        if i == 0 {
            self.hl
        } else {
            IPV4_HEADER_LEN + self.copied.len
        }
    }

    /// Length of fragment `i` (header included); 0 if there is none.
    pub fn len(&self, i: usize) -> usize {
        if i >= self.count {
            return 0;
        }
        self.header_len(i) + (self.data - i * self.step).min(self.step)
    }

    /// Whether the packet had no data at all.
    pub fn is_empty(&self) -> bool {
        self.data == 0
    }

    /// Builds fragment `i` into `out` and returns its length; 0 (and `out`
    /// untouched) if there is no fragment `i` or `out` is too short.
    pub fn write(&self, i: usize, out: &mut [u8]) -> usize {
        let n = self.len(i);
        if n == 0 || out.len() < n {
            return 0;
        }
        let h = self.header_len(i);
        let start = i * self.step;
        let out = &mut out[..n];
        if i == 0 {
            out[..h].copy_from_slice(&self.pkt[..h]);
        } else {
            out[..IPV4_HEADER_LEN].copy_from_slice(&self.pkt[..IPV4_HEADER_LEN]);
            out[IPV4_HEADER_LEN..h].copy_from_slice(&self.copied.bytes[..h - IPV4_HEADER_LEN]);
            out[ipv4::VER_IHL] = 0x40 | (h / 4) as u8;
        }
        out[h..].copy_from_slice(&self.pkt[self.hl + start..self.hl + start + (n - h)]);
        put16(out, ipv4::LENGTH.start, n as u16);
        let last = i + 1 == self.count;
        let mf = if !last || self.base_mf { IP_MF } else { 0 };
        let frag = mf | (self.base_offset + (start / 8) as u16);
        put16(out, ipv4::FLAGS_FRAG.start, frag);
        fill_ip_checksum(out, h);
        n
    }
}

/// Where the outer IPv4 header, the inner one and the TCP header of an
/// IPIP frame as the uplink presents it start (Ethernet, then no options
/// on either IPv4 header).
const OUTER: usize = ETHERNET_HEADER_LEN;
const INNER: usize = OUTER + IPV4_HEADER_LEN;
const IPIP_TCP_OFF: usize = INNER + IPV4_HEADER_LEN;
/// Version 4, 5 words: an IPv4 header without options.
const IPV4_NO_OPTIONS: u8 = 0x45;
const IPPROTO_IPIP: u8 = 4;
const TCP_ACK: u8 = 0x10;

/// What [`coalesce_tcp`] tracks about the frame it is growing.
struct Coalescing {
    thl: usize,
    mss: usize,
    payload: usize,
    next_seq: u32,
    merged: usize,
    psh: bool,
    closed: bool,
}

/// The TCP header length and payload length of an IPIP frame (Ethernet +
/// outer + inner IPv4 without options + TCP) that may take part in
/// coalescing: no fragments, total lengths exact, flags ACK or ACK|PSH.
fn ipip_tcp_shape(d: &[u8]) -> Option<(usize, usize)> {
    ipip_tcp_shape_flags(d, TCP_ACK | TCP_PSH)
}

/// [`ipip_tcp_shape`] with ACK plus any of `allowed` as the flags.
fn ipip_tcp_shape_flags(d: &[u8], allowed: u8) -> Option<(usize, usize)> {
    if d.len() < IPIP_TCP_OFF + TCP_HEADER_LEN
        || d[OUTER + ipv4::VER_IHL] != IPV4_NO_OPTIONS
        || d[OUTER + ipv4::PROTOCOL] != IPPROTO_IPIP
        || d[INNER + ipv4::VER_IHL] != IPV4_NO_OPTIONS
    {
        return None;
    }
    let (outer, inner) = (&d[OUTER..], &d[INNER..]);
    let fragment = |ip: &[u8]| be16(ip, ipv4::FLAGS_FRAG.start) & (IP_MF | IP_OFFSET_MASK) != 0;
    if fragment(outer) || inner[ipv4::PROTOCOL] != IPPROTO_TCP || fragment(inner) {
        return None;
    }
    let total = usize::from(be16(outer, ipv4::LENGTH.start));
    if total != d.len() - OUTER
        || usize::from(be16(inner, ipv4::LENGTH.start)) != total - IPV4_HEADER_LEN
    {
        return None;
    }
    let thl = usize::from(d[IPIP_TCP_OFF + tcp::DATA_OFF] >> 4) * 4;
    let flags = d[IPIP_TCP_OFF + tcp::FLAGS];
    if thl < TCP_HEADER_LEN
        || IPIP_TCP_OFF + thl > d.len()
        || flags & TCP_ACK == 0
        || flags & !(allowed | TCP_ACK) != 0
    {
        return None;
    }
    Some((thl, d.len() - IPIP_TCP_OFF - thl))
}

/// Whether the TCP checksum of the inner packet of an IPIP frame verifies.
fn ipip_tcp_checksum_ok(d: &[u8]) -> bool {
    let addrs = &d[INNER + ipv4::ADDRS.start..INNER + ipv4::ADDRS.end];
    let pseudo = tcp_pseudo_header(addrs, (d.len() - IPIP_TCP_OFF) as u16);
    add_sums(
        ones_complement_sum(&pseudo),
        ones_complement_sum(&d[IPIP_TCP_OFF..]),
    ) == 0xffff
}

/// Receive-side coalescing (GRO) of TCP segments carried in IPIP, for the
/// uplink: in the first `n` frames (each Ethernet + a whole outer IPv4
/// packet), runs of consecutive segments of one TCP flow are merged into
/// the first of the run, which becomes a GSO super-segment (`vnet`:
/// TCPv4, `gso_size` = the run's first payload size, partial checksum),
/// as Linux's GRO would build it; a pod's TAP takes it whole, so the pod's
/// stack sees one 64 KiB segment instead of ~45. Returns how many frames
/// remain; they are `frames[..returned]`, in the original order (absorbed
/// frames' buffers move to the end).
///
/// A segment joins a run only if: same outer and inner addresses, TOS,
/// TTL, DF, ports, ACK number, window, data offset and TCP options; the
/// run's flags are ACK and the segment's ACK or ACK|PSH (PSH ends the run);
/// its sequence number follows the run's; its payload is no larger than
/// the run's MSS (a smaller one ends the run); neither header has IP
/// options or is a fragment; and its TCP checksum verifies (the merged
/// frame's partial checksum is trusted by the receiver, so every piece is
/// checked here). The merged outer and inner packets stay within 65535
/// bytes. Anything else passes through untouched.
///
/// A packet the receiving kernel's GRO already merged (on a NIC, or a
/// veth with GRO on; `ipip_gro_receive` is built into every kernel, with
/// or without the `ipip` module) becomes a GSO frame by itself, as does a
/// TCP packet longer than `link_mtu` (reassembled outer fragments); see
/// [`adopt_kernel_merged`]. Neither is merged with anything else.
pub fn coalesce_ipip_tcp(frames: &mut [crate::frame::Frame], n: usize, link_mtu: usize) -> usize {
    coalesce_tcp::<Ipip>(frames, n, |frame| adopt_kernel_merged(frame, link_mtu))
}

/// What differs between the tunnels whose TCP segments [`coalesce_tcp`]
/// merges. Every frame starts with the outer Ethernet header; the outer
/// IPv4 header follows at [`OUTER`].
trait TunnelTcp {
    /// Where the inner IPv4 header starts.
    const INNER: usize;
    /// Where the inner TCP header starts.
    const TCP: usize;
    /// Bytes between the outer and the inner IPv4 header that two
    /// segments of one run must share (beyond the outer addresses).
    const SAME_TUNNEL: &'static [std::ops::Range<usize>];
    /// The virtio GSO type of a merged frame.
    const GSO_TYPE: u8;
    /// The TCP header length and payload length of a frame that may take
    /// part in coalescing (flags ACK or ACK|PSH), or `None`.
    fn shape(d: &[u8]) -> Option<(usize, usize)>;
    /// Whether the inner TCP checksum may be trusted for a merged frame.
    fn checksum_ok(d: &[u8]) -> bool;
    /// Fixes the tunnel's own headers between the outer and inner IPv4
    /// headers once the frame has grown to its final length.
    fn finish_tunnel(d: &mut [u8]);
}

/// IPIP: outer IPv4, inner IPv4, TCP.
struct Ipip;

impl TunnelTcp for Ipip {
    const INNER: usize = INNER;
    const TCP: usize = IPIP_TCP_OFF;
    const SAME_TUNNEL: &'static [std::ops::Range<usize>] = &[];
    const GSO_TYPE: u8 = crate::frame::VnetHdr::GSO_TCPV4;
    fn shape(d: &[u8]) -> Option<(usize, usize)> {
        ipip_tcp_shape(d)
    }
    fn checksum_ok(d: &[u8]) -> bool {
        ipip_tcp_checksum_ok(d)
    }
    fn finish_tunnel(_: &mut [u8]) {}
}

/// Merges runs of consecutive TCP segments of one flow in `frames[..n]`
/// (see [`coalesce_ipip_tcp`] and [`coalesce_vxlan_tcp`]); `adopt` may
/// take a frame as it is (a run the kernel merged already), which then
/// merges with nothing.
fn coalesce_tcp<L: TunnelTcp>(
    frames: &mut [crate::frame::Frame],
    n: usize,
    mut adopt: impl FnMut(&mut crate::frame::Frame) -> bool,
) -> usize {
    let n = n.min(frames.len());
    let mut out = 0;
    let mut i = 0;
    while i < n {
        frames.swap(out, i);
        let head = out;
        out += 1;
        i += 1;
        if adopt(&mut frames[head]) {
            continue;
        }
        let d = frames[head].data();
        let Some((thl, payload)) = L::shape(d) else {
            continue;
        };
        if payload == 0 || d[L::TCP + tcp::FLAGS] != TCP_ACK || !L::checksum_ok(d) {
            continue;
        }
        let mut st = Coalescing {
            thl,
            mss: payload,
            payload,
            next_seq: be32(d, L::TCP + tcp::SEQ_NUM.start).wrapping_add(payload as u32),
            merged: 1,
            psh: false,
            closed: false,
        };
        while i < n && !st.closed {
            let (a, b) = frames.split_at_mut(i);
            if !try_absorb::<L>(&mut a[head], &mut st, &b[0]) {
                break;
            }
            i += 1;
        }
        if st.merged > 1 {
            finish_coalesced::<L>(&mut frames[head], &st);
        }
    }
    out
}

/// Appends `p`'s payload to `head` if `p` continues the run (see
/// [`coalesce_ipip_tcp`]).
fn try_absorb<L: TunnelTcp>(
    head: &mut crate::frame::Frame,
    st: &mut Coalescing,
    p: &crate::frame::Frame,
) -> bool {
    let pd = p.data();
    let Some((thl, payload)) = L::shape(pd) else {
        return false;
    };
    let hd = head.data();
    let (inner, t) = (L::INNER, L::TCP);
    let at = |base: usize, f: std::ops::Range<usize>| base + f.start..base + f.end;
    let df = |d: &[u8]| d[inner + ipv4::FLAGS] & (IP_DF >> 8) as u8;
    let same = thl == st.thl
        && hd[at(OUTER, ipv4::ADDRS)] == pd[at(OUTER, ipv4::ADDRS)]
        && L::SAME_TUNNEL.iter().all(|r| hd[r.clone()] == pd[r.clone()])
        && hd[inner + ipv4::TOS] == pd[inner + ipv4::TOS]
        && hd[inner + ipv4::TTL] == pd[inner + ipv4::TTL]
        && df(hd) == df(pd)
        && hd[at(inner, ipv4::ADDRS)] == pd[at(inner, ipv4::ADDRS)]
        && hd[at(t, tcp::PORTS)] == pd[at(t, tcp::PORTS)]
        // ACK number and data offset
        && hd[t + tcp::ACK_NUM.start..=t + tcp::DATA_OFF] == pd[t + tcp::ACK_NUM.start..=t + tcp::DATA_OFF]
        && hd[at(t, tcp::WINDOW)] == pd[at(t, tcp::WINDOW)]
        // urgent pointer and options
        && hd[t + tcp::URGENT.start..t + thl] == pd[t + tcp::URGENT.start..t + thl];
    if !same
        || be32(pd, t + tcp::SEQ_NUM.start) != st.next_seq
        || payload == 0
        || payload > st.mss
        || t - OUTER + thl + st.payload + payload > usize::from(u16::MAX)
        || head.tailroom() < payload
        || !L::checksum_ok(pd)
    {
        return false;
    }
    let end = head.len();
    if !head.resize(end + payload) {
        return false;
    }
    head.data_mut()[end..].copy_from_slice(&pd[t + thl..]);
    st.payload += payload;
    st.next_seq = st.next_seq.wrapping_add(payload as u32);
    st.merged += 1;
    if pd[t + tcp::FLAGS] & TCP_PSH != 0 {
        st.psh = true;
        st.closed = true;
    }
    if payload < st.mss {
        st.closed = true;
    }
    true
}

/// Makes an IPIP TCP frame that is already a run of segments a GSO
/// super-segment with a partial checksum, as it is: one the kernel's GRO
/// merged, whose TCP checksum field holds the pseudo-header sum (what
/// `tcp4_gro_complete` leaves; the kernel verified every segment's
/// checksum while merging, and a single segment keeps its full checksum),
/// or one longer than `link_mtu` (the largest outer packet the link
/// carries: reassembled outer fragments) whose full checksum verifies,
/// which is then replaced by that sum. Flags may be ACK with PSH, FIN and
/// ECE (GRO keeps the last segment's); SYN, RST and URG are never merged.
/// `gso_size` is what the link could carry per segment (`link_mtu` less
/// both IPv4 headers and the TCP header), at most the payload: the
/// segments' own size is not in the packet, and the pipeline lowers it to
/// the egress port's MTU. Anything else is left untouched. Returns
/// whether the frame became a GSO frame.
pub fn adopt_kernel_merged(frame: &mut crate::frame::Frame, link_mtu: usize) -> bool {
    use crate::frame::VnetHdr;
    const ALLOWED: u8 = TCP_PSH | TCP_FIN | TCP_ECE;
    let d = frame.data();
    let Some((thl, payload)) = ipip_tcp_shape_flags(d, ALLOWED) else {
        return false;
    };
    if payload == 0 {
        return false;
    }
    let tcp_len = thl + payload;
    let addrs = &d[INNER + ipv4::ADDRS.start..INNER + ipv4::ADDRS.end];
    let partial = ones_complement_sum(&tcp_pseudo_header(addrs, tcp_len as u16));
    let field = IPIP_TCP_OFF + tcp::CHECKSUM.start;
    if be16(d, field) != partial {
        if d.len() <= OUTER + link_mtu || !ipip_tcp_checksum_ok(d) {
            return false;
        }
        put16(frame.data_mut(), field, partial);
    }
    let gso_size = link_mtu
        .saturating_sub(2 * IPV4_HEADER_LEN + thl)
        .clamp(1, payload);
    frame.vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_TCPV4,
        hdr_len: (IPIP_TCP_OFF + thl) as u16,
        gso_size: gso_size as u16,
        csum_start: IPIP_TCP_OFF as u16,
        csum_offset: tcp::CHECKSUM.start as u16,
    };
    true
}

/// Fixes the headers of a coalesced frame (both IPv4 lengths and
/// checksums, the tunnel's own headers, PSH, the inner TCP checksum
/// partial) and marks it a GSO super-segment of `L::GSO_TYPE`.
fn finish_coalesced<L: TunnelTcp>(head: &mut crate::frame::Frame, st: &Coalescing) {
    use crate::frame::VnetHdr;
    let (inner, t) = (L::INNER, L::TCP);
    let tcp_len = st.thl + st.payload;
    let d = head.data_mut();
    let outer_len = d.len() - OUTER;
    put16(&mut d[OUTER..], ipv4::LENGTH.start, outer_len as u16);
    fill_ip_checksum(&mut d[OUTER..], IPV4_HEADER_LEN);
    L::finish_tunnel(d);
    put16(
        &mut d[inner..],
        ipv4::LENGTH.start,
        (IPV4_HEADER_LEN + tcp_len) as u16,
    );
    fill_ip_checksum(&mut d[inner..], IPV4_HEADER_LEN);
    if st.psh {
        d[t + tcp::FLAGS] |= TCP_PSH;
    }
    let addrs = &d[inner + ipv4::ADDRS.start..inner + ipv4::ADDRS.end];
    let pseudo = tcp_pseudo_header(addrs, tcp_len as u16);
    put16(d, t + tcp::CHECKSUM.start, ones_complement_sum(&pseudo));
    head.vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: L::GSO_TYPE,
        hdr_len: (t + st.thl) as u16,
        gso_size: st.mss as u16,
        csum_start: t as u16,
        csum_offset: tcp::CHECKSUM.start as u16,
    };
}

const IPPROTO_UDP: u8 = 17;
/// Where the checksum field sits in a UDP header.
const UDP_CHECKSUM_AT: usize = 6;

/// Offsets in a VXLAN frame as the uplink hands it over (outer Ethernet
/// first; outer and inner IPv4 without options): outer IPv4, UDP, the
/// VXLAN header, inner Ethernet, inner IPv4, inner TCP.
const VX_OUTER: usize = ETHERNET_HEADER_LEN;
const VX_UDP: usize = VX_OUTER + IPV4_HEADER_LEN;
const VX_HDR: usize = VX_UDP + 8;
const VX_INNER_ETH: usize = VX_HDR + 8;
const VX_INNER: usize = VX_INNER_ETH + ETHERNET_HEADER_LEN;
const VX_TCP: usize = VX_INNER + IPV4_HEADER_LEN;

/// The TCP header length and payload length of a VXLAN frame that may
/// take part in coalescing: outer IPv4 without options, UDP, inner
/// Ethernet carrying IPv4 without options and TCP, neither IPv4 packet a
/// fragment, every length exact (no padding), flags ACK or ACK|PSH.
fn vxlan_tcp_shape(d: &[u8]) -> Option<(usize, usize)> {
    if d.len() < VX_TCP + TCP_HEADER_LEN
        || d[VX_OUTER + ipv4::VER_IHL] != IPV4_NO_OPTIONS
        || d[VX_OUTER + ipv4::PROTOCOL] != IPPROTO_UDP
        || d[VX_INNER_ETH + 12..VX_INNER_ETH + 14] != [0x08, 0x00]
        || d[VX_INNER + ipv4::VER_IHL] != IPV4_NO_OPTIONS
        || d[VX_INNER + ipv4::PROTOCOL] != IPPROTO_TCP
    {
        return None;
    }
    let fragment = |ip: &[u8]| be16(ip, ipv4::FLAGS_FRAG.start) & (IP_MF | IP_OFFSET_MASK) != 0;
    if fragment(&d[VX_OUTER..]) || fragment(&d[VX_INNER..]) {
        return None;
    }
    let total = d.len() - VX_OUTER;
    if usize::from(be16(d, VX_OUTER + ipv4::LENGTH.start)) != total
        || usize::from(be16(d, VX_UDP + 4)) != total - IPV4_HEADER_LEN
        || usize::from(be16(d, VX_INNER + ipv4::LENGTH.start)) != d.len() - VX_INNER
    {
        return None;
    }
    let thl = usize::from(d[VX_TCP + tcp::DATA_OFF] >> 4) * 4;
    let flags = d[VX_TCP + tcp::FLAGS];
    if thl < TCP_HEADER_LEN
        || VX_TCP + thl > d.len()
        || flags & TCP_ACK == 0
        || flags & !(TCP_ACK | TCP_PSH) != 0
    {
        return None;
    }
    Some((thl, d.len() - VX_TCP - thl))
}

/// Whether the inner TCP checksum of a VXLAN frame may be trusted for a
/// merged frame: partial (the field holds the pseudo-header sum, see
/// [`mark_partial_checksum`]) or full and verifying.
fn vxlan_tcp_checksum_ok(d: &[u8]) -> bool {
    let addrs = &d[VX_INNER + ipv4::ADDRS.start..VX_INNER + ipv4::ADDRS.end];
    let pseudo = ones_complement_sum(&tcp_pseudo_header(addrs, (d.len() - VX_TCP) as u16));
    be16(d, VX_TCP + tcp::CHECKSUM.start) == pseudo
        || add_sums(pseudo, ones_complement_sum(&d[VX_TCP..])) == 0xffff
}

/// Receive-side coalescing of TCP segments carried in VXLAN, for the
/// uplink's AF_XDP receive: [`coalesce_ipip_tcp`] for frames shaped as
/// the VXLAN TAP hands them over (outer Ethernet, IPv4, UDP, VXLAN, inner
/// Ethernet, IPv4, TCP). A segment joins a run on the same conditions,
/// plus the same outer UDP ports, VXLAN header and inner Ethernet header;
/// its checksum must verify or be partial (what a sending kernel leaves
/// on a veth underlay, which the kernel itself would trust there). The
/// merged frame is a UDP-tunnel GSO frame as the TAP would have handed it
/// over (`GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4`, partial inner checksum, outer
/// UDP checksum 0: none, allowed over IPv4, and nothing reads it), so the
/// pipeline's VXLAN decapsulation takes it unchanged. A frame that merges
/// with nothing is left as it was. Returns how many frames remain, in
/// order, as `frames[..returned]`.
pub fn coalesce_vxlan_tcp(frames: &mut [crate::frame::Frame], n: usize) -> usize {
    coalesce_tcp::<Vxlan>(frames, n, |_| false)
}

/// VXLAN: outer IPv4, UDP, VXLAN header, inner Ethernet, inner IPv4, TCP.
struct Vxlan;

impl TunnelTcp for Vxlan {
    const INNER: usize = VX_INNER;
    const TCP: usize = VX_TCP;
    /// The outer UDP ports, then the VXLAN header and the inner Ethernet
    /// header.
    const SAME_TUNNEL: &'static [std::ops::Range<usize>] = &[VX_UDP..VX_UDP + 4, VX_HDR..VX_INNER];
    const GSO_TYPE: u8 = crate::vxlan::GSO_UDP_TUNNEL_IPV4 | crate::frame::VnetHdr::GSO_TCPV4;
    fn shape(d: &[u8]) -> Option<(usize, usize)> {
        vxlan_tcp_shape(d)
    }
    fn checksum_ok(d: &[u8]) -> bool {
        vxlan_tcp_checksum_ok(d)
    }
    /// The UDP length, and no outer UDP checksum.
    fn finish_tunnel(d: &mut [u8]) {
        let udp_len = d.len() - VX_UDP;
        put16(d, VX_UDP + 4, udp_len as u16);
        put16(d, VX_UDP + UDP_CHECKSUM_AT, 0);
    }
}

/// Gives a frame that arrived with no checksum state (an AF_XDP socket's)
/// the state a sending kernel left in it: if the TCP or UDP packet in the
/// IPv4 packet at `l3` (whole, not a fragment, lengths consistent) has a
/// checksum field holding exactly its pseudo-header sum, that field is a
/// partial checksum the sender's kernel left for an offload (a veth
/// underlay keeps `CHECKSUM_PARTIAL` on the wire), and the frame becomes
/// a partial-checksum frame (`NEEDS_CSUM`, `csum_start` at the L4 header
/// counted from the frame's start), which the receiving pod's kernel
/// trusts and a software path completes. Returns whether it did.
///
/// Anything else is left as it is: a full checksum is verified by
/// whoever receives it (the pod's kernel drops and counts a wrong one). A
/// full checksum that happens to equal the pseudo-header sum is taken as
/// partial and completed to the same value, so the test is never wrong
/// for an intact packet; a corrupt packet whose field happens to equal
/// its pseudo-header sum (1 in 65536 of corrupt ones) is delivered, as
/// the kernel on a veth would.
pub fn mark_partial_checksum(frame: &mut crate::frame::Frame, l3: usize) -> bool {
    use crate::frame::VnetHdr;
    let d = frame.data();
    let Some(ip) = d.get(l3..) else {
        return false;
    };
    let Ok((hl, total)) = ip_lengths(ip) else {
        return false;
    };
    if be16(ip, ipv4::FLAGS_FRAG.start) & (IP_MF | IP_OFFSET_MASK) != 0 {
        return false;
    }
    let field = match ip[ipv4::PROTOCOL] {
        IPPROTO_TCP => tcp::CHECKSUM.start,
        IPPROTO_UDP => UDP_CHECKSUM_AT,
        _ => return false,
    };
    let l4_len = total - hl;
    if l4_len < field + 2 {
        return false;
    }
    let mut pseudo = tcp_pseudo_header(&ip[ipv4::ADDRS], l4_len as u16);
    pseudo[9] = ip[ipv4::PROTOCOL];
    if be16(ip, hl + field) != ones_complement_sum(&pseudo) {
        return false;
    }
    frame.vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: (l3 + hl) as u16,
        csum_offset: field as u16,
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket, TcpSeqNumber, UdpPacket};
    use std::net::Ipv4Addr;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 66);

    /// A TCP/IPv4 packet with `opts` IP options, timestamps in TCP, the
    /// given flags and payload, id 0x1000, DF, seq 0xfffff000 (wraps), and
    /// the checksum field holding only the pseudo-header sum (partial).
    fn tcp_packet(ip_opts: &[u8], flags: u8, payload: &[u8]) -> Vec<u8> {
        let hl = 20 + ip_opts.len();
        let thl = 32;
        let total = hl + thl + payload.len();
        let mut v = vec![0u8; total];
        v[0] = 0x40 | (hl / 4) as u8;
        put16(&mut v, 2, total as u16);
        put16(&mut v, 4, 0x1000);
        put16(&mut v, 6, IP_DF);
        v[8] = 64;
        v[9] = IPPROTO_TCP;
        v[12..16].copy_from_slice(&SRC.octets());
        v[16..20].copy_from_slice(&DST.octets());
        v[20..hl].copy_from_slice(ip_opts);
        fill_ip_checksum(&mut v, hl);
        let t = &mut v[hl..];
        put16(t, 0, 40000);
        put16(t, 2, 5201);
        t[4..8].copy_from_slice(&0xffff_f000u32.to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = ((thl / 4) as u8) << 4;
        t[13] = flags;
        put16(t, 14, 502);
        // NOP NOP timestamps
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        t[thl..].copy_from_slice(payload);
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&SRC.octets());
        pseudo[4..8].copy_from_slice(&DST.octets());
        pseudo[9] = IPPROTO_TCP;
        put16(&mut pseudo, 10, (thl + payload.len()) as u16);
        let partial = ones_complement_sum(&pseudo);
        put16(&mut v, hl + 16, partial);
        v
    }

    fn verify_tcp(seg: &[u8]) -> TcpPacket<&[u8]> {
        let ip = Ipv4Packet::new_checked(seg).expect("ip");
        assert!(ip.verify_checksum(), "IP checksum");
        assert_eq!(usize::from(ip.total_len()), seg.len());
        assert_eq!(ip.next_header(), IpProtocol::Tcp);
        let hl = usize::from(ip.header_len());
        let tcp = TcpPacket::new_checked(&seg[hl..]).expect("tcp");
        assert!(
            tcp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)),
            "TCP checksum"
        );
        tcp
    }

    #[test]
    fn segments_golden() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let flags = TCP_FIN | TCP_PSH | TCP_CWR | 0x10; // + ACK
        let orig = tcp_packet(&[], flags, &payload);
        let segs = TcpSegments::new(&orig, 1448).unwrap();
        assert_eq!(segs.count(), 3);
        assert_eq!(segs.header_len(), 52);
        let mut out = vec![0u8; 1600];
        let mut joined = Vec::new();
        for i in 0..3 {
            let n = segs.write(i, &mut out);
            assert_eq!(n, segs.len(i));
            assert_eq!(n, 52 + [1448, 1448, 104][i]);
            let seg = &out[..n];
            let ip = Ipv4Packet::new_checked(seg).unwrap();
            assert_eq!(ip.ident(), 0x1000 + i as u16);
            assert!(ip.dont_frag());
            assert_eq!(ip.hop_limit(), 64);
            let tcp = verify_tcp(seg);
            assert_eq!(
                tcp.seq_number(),
                TcpSeqNumber(0xffff_f000u32.wrapping_add(1448 * i as u32) as i32)
            );
            assert_eq!(tcp.ack_number(), TcpSeqNumber(7));
            assert!(tcp.ack());
            assert_eq!(tcp.fin(), i == 2, "FIN only on the last");
            assert_eq!(tcp.psh(), i == 2, "PSH only on the last");
            assert_eq!(tcp.cwr(), i == 0, "CWR only on the first");
            assert_eq!(tcp.header_len(), 32);
            assert_eq!(&seg[20 + 20..52], &orig[40..52], "TCP options kept");
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload, "segments concatenate to the original");
        // Piece 3 does not exist; a short buffer is refused untouched.
        assert_eq!(segs.write(3, &mut out), 0);
        let mut small = [0xaau8; 100];
        assert_eq!(segs.write(0, &mut small), 0);
        assert!(small.iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn segments_with_ip_options_and_exact_multiples() {
        let payload: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        // Router alert (copied), 4 bytes.
        let orig = tcp_packet(&[0x94, 4, 0, 0], 0x18, &payload);
        let segs = TcpSegments::new(&orig, 500).unwrap();
        assert_eq!(segs.count(), 4);
        let mut out = vec![0u8; 600];
        let mut joined = Vec::new();
        for i in 0..4 {
            let n = segs.write(i, &mut out);
            assert_eq!(n, 24 + 32 + 500);
            let tcp = verify_tcp(&out[..n]);
            assert_eq!(&out[20..24], &[0x94, 4, 0, 0]);
            assert_eq!(tcp.psh(), i == 3);
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn a_small_packet_is_one_checksummed_segment() {
        for payload in [&b""[..], b"hello"] {
            let orig = tcp_packet(&[], 0x18, payload);
            let segs = TcpSegments::new(&orig, 1448).unwrap();
            assert_eq!(segs.count(), 1);
            assert_eq!(segs.is_empty(), payload.is_empty());
            let mut out = vec![0u8; 200];
            let n = segs.write(0, &mut out);
            assert_eq!(n, orig.len());
            let tcp = verify_tcp(&out[..n]);
            assert!(tcp.psh());
            assert_eq!(tcp.payload(), payload);
        }
    }

    #[test]
    fn segmenting_refuses_bad_input() {
        let orig = tcp_packet(&[], 0x10, &[0; 100]);
        assert_eq!(
            TcpSegments::new(&orig, 0).unwrap_err(),
            OffloadError::Malformed
        );
        assert_eq!(
            TcpSegments::new(&orig[..30], 10).unwrap_err(),
            OffloadError::Malformed
        );
        let mut udp = orig.clone();
        udp[9] = 17;
        assert_eq!(
            TcpSegments::new(&udp, 10).unwrap_err(),
            OffloadError::Unsupported
        );
        let mut frag = orig.clone();
        put16(&mut frag, 6, IP_MF);
        assert_eq!(
            TcpSegments::new(&frag, 10).unwrap_err(),
            OffloadError::Unsupported
        );
        let mut doff = orig.clone();
        doff[20 + 12] = 0xf0; // 60-byte TCP header in a 152-byte packet is fine...
        assert!(TcpSegments::new(&doff, 10).is_ok());
        doff[20 + 12] = 0x40; // ...a 16-byte one is not
        assert_eq!(
            TcpSegments::new(&doff, 10).unwrap_err(),
            OffloadError::Malformed
        );
        let big = tcp_packet(&[], 0x10, &vec![0; 60_000]);
        assert_eq!(
            TcpSegments::new(&big, 8).unwrap_err(),
            OffloadError::TooManyPieces
        );
    }

    fn udp_packet(ip_opts: &[u8], flags: u16, len: usize) -> Vec<u8> {
        let hl = 20 + ip_opts.len();
        let total = hl + 8 + len;
        let mut v = vec![0u8; total];
        v[0] = 0x40 | (hl / 4) as u8;
        put16(&mut v, 2, total as u16);
        put16(&mut v, 4, 0x4242);
        put16(&mut v, 6, flags);
        v[8] = 64;
        v[9] = 17;
        v[12..16].copy_from_slice(&SRC.octets());
        v[16..20].copy_from_slice(&DST.octets());
        v[20..hl].copy_from_slice(ip_opts);
        fill_ip_checksum(&mut v, hl);
        put16(&mut v, hl, 1234);
        put16(&mut v, hl + 2, 53);
        put16(&mut v, hl + 4, (8 + len) as u16);
        for (i, b) in v[hl + 8..].iter_mut().enumerate() {
            *b = (i * 13) as u8;
        }
        v
    }

    #[test]
    fn partial_checksum_is_completed() {
        let mut p = udp_packet(&[], 0, 333);
        // Pseudo-header sum in the field, as a NEEDS_CSUM sender leaves it.
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&p[12..20]);
        pseudo[9] = 17;
        put16(&mut pseudo, 10, 341);
        let partial = ones_complement_sum(&pseudo);
        put16(&mut p, 26, partial);
        complete_checksum(&mut p, 20, 6).unwrap();
        let udp = UdpPacket::new_checked(&p[20..]).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)));
        // TCP the same way.
        let mut t = tcp_packet(&[], 0x18, b"abcdefg");
        complete_checksum(&mut t, 20, 16).unwrap();
        verify_tcp(&t);
        // Out of bounds.
        let n = t.len();
        assert_eq!(
            complete_checksum(&mut t, n - 1, 0).unwrap_err(),
            OffloadError::Malformed
        );
        assert_eq!(
            complete_checksum(&mut t, 10, 0).unwrap_err(),
            OffloadError::Malformed
        );
        assert_eq!(
            complete_checksum(&mut t, 20, usize::MAX).unwrap_err(),
            OffloadError::Malformed
        );
    }

    /// Reassembles fragments by offset and checks every header.
    fn reassemble(frags: &[Vec<u8>], orig: &[u8]) -> Vec<u8> {
        let ohl = usize::from(orig[0] & 0xf) * 4;
        let mut data = vec![None; orig.len() - ohl];
        for (i, f) in frags.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), f.len());
            assert_eq!(ip.ident(), 0x4242);
            assert_eq!(ip.src_addr(), SRC);
            assert!(!ip.dont_frag());
            let last = i + 1 == frags.len();
            assert_eq!(ip.more_frags(), !last, "MF on all but the last");
            let hl = usize::from(ip.header_len());
            if !last {
                assert_eq!((f.len() - hl) % 8, 0, "data a multiple of 8");
            }
            let off = usize::from(ip.frag_offset());
            for (j, b) in f[hl..].iter().enumerate() {
                assert!(data[off + j].is_none(), "overlap at {}", off + j);
                data[off + j] = Some(*b);
            }
        }
        data.into_iter().map(|b| b.expect("hole")).collect()
    }

    #[test]
    fn fragments_golden() {
        let orig = udp_packet(&[], 0, 3000);
        let fr = Fragments::new(&orig, 1480).unwrap();
        // 1460 data bytes per fragment: 3008 = 1456 + 1456 + 96.
        assert_eq!(fr.count(), 3);
        let frags: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                let mut out = vec![0u8; 1500];
                let n = fr.write(i, &mut out);
                assert_eq!(n, fr.len(i));
                out.truncate(n);
                out
            })
            .collect();
        assert_eq!(
            frags.iter().map(Vec::len).collect::<Vec<_>>(),
            [1476, 1476, 116]
        );
        assert!(frags.iter().all(|f| f.len() <= 1480));
        assert_eq!(be16(&frags[1], 6), IP_MF | 182);
        assert_eq!(be16(&frags[2], 6), 364);
        assert_eq!(reassemble(&frags, &orig), orig[20..]);
    }

    #[test]
    fn fragment_options_only_copied_ones_repeat() {
        // Record route (7, not copied, 7 bytes) + NOP + router alert (0x94,
        // copied, 4 bytes): 12 bytes of options.
        let opts = [7, 7, 4, 0, 0, 0, 0, 1, 0x94, 4, 0, 0];
        let orig = udp_packet(&opts, 0, 1000);
        let fr = Fragments::new(&orig, 600).unwrap();
        let mut out = vec![0u8; 600];
        let n0 = fr.write(0, &mut out);
        assert_eq!(&out[20..32], &opts);
        assert_eq!(out[0], 0x48);
        let f0 = out[..n0].to_vec();
        let n1 = fr.write(1, &mut out);
        assert_eq!(out[0], 0x46, "20 + 4 bytes of copied options");
        assert_eq!(&out[20..24], &[0x94, 4, 0, 0]);
        let f1 = out[..n1].to_vec();
        assert_eq!(fr.count(), 2);
        assert_eq!(reassemble(&[f0, f1], &orig), orig[32..]);
    }

    #[test]
    fn fragmenting_a_fragment_keeps_its_offset_and_mf() {
        // The middle fragment of something larger: offset 100 (800 bytes), MF.
        let orig = udp_packet(&[], IP_MF | 100, 1992);
        let fr = Fragments::new(&orig, 1000).unwrap();
        let mut out = vec![0u8; 1000];
        let mut offs = Vec::new();
        for i in 0..fr.count() {
            let n = fr.write(i, &mut out);
            let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
            assert!(ip.more_frags(), "the original had MF: every piece keeps it");
            offs.push(ip.frag_offset());
        }
        assert_eq!(offs, [800, 800 + 976, 800 + 2 * 976]);
    }

    #[test]
    fn fragmenting_refuses_df_small_mtu_and_bad_options() {
        let df = udp_packet(&[], IP_DF, 2000);
        assert_eq!(
            Fragments::new(&df, 1000).unwrap_err(),
            OffloadError::Unsupported
        );
        let p = udp_packet(&[], 0, 2000);
        assert_eq!(
            Fragments::new(&p, 27).unwrap_err(),
            OffloadError::Unsupported
        );
        let big = udp_packet(&[], 0, 20_000);
        assert_eq!(
            Fragments::new(&big, 28).unwrap_err(),
            OffloadError::TooManyPieces
        );
        let bad = udp_packet(&[0x94, 9, 0, 0], 0, 100);
        assert_eq!(
            Fragments::new(&bad, 60).unwrap_err(),
            OffloadError::Malformed
        );
    }

    /// The uplink's link MTU in the coalescing tests: above every packet
    /// they make unless they mean to exceed it.
    const TEST_LINK_MTU: usize = 9000;

    /// The segments of `orig` (cut at `mss`) as the uplink receives them:
    /// Ethernet + outer IPv4 (10.0.0.1 -> 10.0.0.2) + segment.
    fn ipip_segments(orig: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let segs = TcpSegments::new(orig, mss).unwrap();
        (0..segs.count())
            .map(|i| {
                let mut v = vec![0u8; 14 + 20];
                let mut seg = vec![0u8; segs.len(i)];
                segs.write(i, &mut seg);
                v.extend_from_slice(&seg);
                let total = (20 + seg.len()) as u16;
                crate::wire::write_ipip_header(
                    &mut v[14..],
                    total,
                    0,
                    0,
                    true,
                    Ipv4Addr::new(10, 0, 0, 1),
                    Ipv4Addr::new(10, 0, 0, 2),
                );
                v
            })
            .collect()
    }

    fn frames_of(pkts: &[Vec<u8>]) -> Vec<crate::frame::Frame> {
        pkts.iter()
            .map(|p| crate::frame::Frame::from_bytes(p))
            .collect()
    }

    /// Splits a coalesced frame again with the segmenter and checks it
    /// gives back exactly the segments it was made of.
    fn resegment(f: &crate::frame::Frame) -> Vec<Vec<u8>> {
        use crate::frame::VnetHdr;
        assert_eq!(f.vnet.gso_type, VnetHdr::GSO_TCPV4);
        assert_eq!(f.vnet.flags, VnetHdr::F_NEEDS_CSUM);
        let d = f.data();
        let outer = Ipv4Packet::new_checked(&d[14..]).unwrap();
        assert!(outer.verify_checksum());
        assert_eq!(usize::from(outer.total_len()), d.len() - 14);
        let mut inner = d[34..].to_vec();
        let start = usize::from(f.vnet.csum_start) - 34;
        complete_checksum(&mut inner, start, usize::from(f.vnet.csum_offset)).unwrap();
        verify_tcp(&inner);
        let segs = TcpSegments::new(&inner, usize::from(f.vnet.gso_size)).unwrap();
        (0..segs.count())
            .map(|i| {
                let mut v = vec![0u8; segs.len(i)];
                segs.write(i, &mut v);
                v
            })
            .collect()
    }

    #[test]
    fn coalescing_round_trips_segments() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let orig = tcp_packet(&[], 0x18, &payload); // ACK|PSH
        let pkts = ipip_segments(&orig, 1428);
        assert_eq!(pkts.len(), 8);
        let mut frames = frames_of(&pkts);
        let n = coalesce_ipip_tcp(&mut frames, pkts.len(), TEST_LINK_MTU);
        assert_eq!(n, 1, "one run");
        let back = resegment(&frames[0]);
        let want: Vec<Vec<u8>> = pkts.iter().map(|p| p[34..].to_vec()).collect();
        assert_eq!(back, want, "re-segmenting gives the received segments");
        // The merged TCP payload is the original's.
        let d = frames[0].data();
        assert_eq!(&d[34 + 20 + 32..], &payload[..]);
    }

    #[test]
    fn coalescing_stops_where_it_must() {
        let payload: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        let orig = tcp_packet(&[], 0x10, &payload);
        let base = ipip_segments(&orig, 1000); // 6 segments
                                               // A corrupted segment, a segment of another flow, a gap.
        let mut bad_sum = base.clone();
        bad_sum[2][34 + 52 + 5] ^= 1;
        let mut other_flow = base.clone();
        {
            // Another source port, checksum kept right.
            let p = &mut other_flow[3];
            let old = be16(p, 34 + 20);
            put16(p, 34 + 20, old ^ 0x0100);
            let sum = crate::wire::checksum_update(be16(p, 34 + 36), old, old ^ 0x0100);
            put16(p, 34 + 36, sum);
        }
        let mut gap = base.clone();
        gap.remove(2);
        let cases: [(&str, Vec<Vec<u8>>, usize); 3] = [
            ("bad checksum", bad_sum, 3),  // [0,1] [2] [3,4,5]
            ("other flow", other_flow, 3), // [0,1,2] [3] [4,5]
            ("gap", gap, 2),               // [0,1] [3,4,5]
        ];
        for (what, pkts, want) in cases {
            let mut frames = frames_of(&pkts);
            let n = coalesce_ipip_tcp(&mut frames, pkts.len(), TEST_LINK_MTU);
            assert_eq!(n, want, "{what}");
            // Nothing lost or reordered: the frames' payloads, segmented
            // back where merged, are the input's.
            let mut got = Vec::new();
            for f in &frames[..n] {
                if f.vnet.is_gso() {
                    got.extend(resegment(f));
                } else {
                    got.push(f.data()[34..].to_vec());
                }
            }
            let want: Vec<Vec<u8>> = pkts.iter().map(|p| p[34..].to_vec()).collect();
            assert_eq!(got, want, "{what}");
        }
        // Not TCP-in-IPIP, or a lone segment: untouched.
        let mut frames = frames_of(&base[..1]);
        assert_eq!(coalesce_ipip_tcp(&mut frames, 1, TEST_LINK_MTU), 1);
        assert!(!frames[0].vnet.is_gso());
        assert_eq!(frames[0].data(), &base[0][..]);
        let junk = vec![vec![0u8; 60], vec![1u8; 3]];
        let mut frames = frames_of(&junk);
        assert_eq!(coalesce_ipip_tcp(&mut frames, 2, TEST_LINK_MTU), 2);
        assert_eq!(frames[1].data(), &junk[1][..]);
    }

    /// `pkt` as the uplink receives it whole: Ethernet + outer IPv4.
    fn ipip_whole(pkt: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 14 + 20];
        v.extend_from_slice(pkt);
        crate::wire::write_ipip_header(
            &mut v[14..],
            (20 + pkt.len()) as u16,
            0,
            0,
            true,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        v
    }

    #[test]
    fn packets_the_kernel_merged_become_gso_frames() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 13 + 1) as u8).collect();
        // As the kernel's GRO leaves it: the pseudo-header sum in the TCP
        // checksum field (tcp_packet writes just that), PSH and FIN of the
        // last segment kept.
        let merged = tcp_packet(&[], 0x19, &payload);
        let mut frames = frames_of(&[ipip_whole(&merged)]);
        assert_eq!(coalesce_ipip_tcp(&mut frames, 1, 1500), 1);
        let f = &frames[0];
        assert!(f.vnet.is_gso(), "adopted as a GSO frame");
        assert_eq!(f.vnet.gso_size, 1500 - 40 - 32, "what the link carries");
        assert_eq!(f.data()[34..], merged[..], "bytes untouched");
        let segs = resegment(f);
        assert_eq!(segs.len(), 10_000usize.div_ceil(1428));
        let mut joined = Vec::new();
        for s in &segs {
            joined.extend_from_slice(verify_tcp(s).payload());
        }
        assert_eq!(joined, payload);

        // Reassembled fragments carry a full checksum: verified, then
        // replaced by the pseudo-header sum.
        let mut full = merged.clone();
        complete_checksum(&mut full, 20, 16).unwrap();
        let mut frames = frames_of(&[ipip_whole(&full)]);
        assert_eq!(coalesce_ipip_tcp(&mut frames, 1, 1500), 1);
        assert!(frames[0].vnet.is_gso());
        assert_eq!(frames[0].data()[34..], merged[..]);

        // Merged, but shorter than the link could carry (GRO merges what
        // one poll brought): adopted too, gso_size at most the payload.
        let short = tcp_packet(&[], 0x10, &payload[..3000]);
        let mut frames = frames_of(&[ipip_whole(&short)]);
        assert_eq!(coalesce_ipip_tcp(&mut frames, 1, 9000), 1);
        assert!(frames[0].vnet.is_gso());
        assert_eq!(frames[0].vnet.gso_size, 3000);

        // A bad checksum, SYN, UDP, or a whole segment the link carried:
        // left alone (the pod's stack or the normal path decides).
        let mut bad = full.clone();
        bad[100] ^= 1;
        let mut syn = merged.clone();
        syn[20 + 13] |= 0x02;
        let udp = udp_packet(&[], 0, 3000);
        for (what, pkt, link) in [
            ("bad checksum", &bad, 1500),
            ("syn", &syn, 1500),
            ("udp", &udp, 1500),
            ("a segment that fits the link", &full, 10_100),
        ] {
            let mut frames = frames_of(&[ipip_whole(pkt)]);
            assert_eq!(coalesce_ipip_tcp(&mut frames, 1, link), 1, "{what}");
            assert!(!frames[0].vnet.is_gso(), "{what}");
            assert_eq!(frames[0].data()[34..], pkt[..], "{what}");
        }

        // Between ordinary segments, in order, merged with neither.
        let small = tcp_packet(&[], 0x10, &payload[..3000]);
        let mut pkts = ipip_segments(&small, 1000);
        pkts.insert(1, ipip_whole(&merged));
        let mut frames = frames_of(&pkts);
        assert_eq!(coalesce_ipip_tcp(&mut frames, pkts.len(), 1500), 3);
        assert_eq!(frames[1].data()[34..], merged[..]);
        assert!(!frames[0].vnet.is_gso(), "a lone segment stays as it is");
        assert!(frames[2].vnet.is_gso(), "the last two merged");
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let seeds = [
            tcp_packet(&[], 0x18, &[1; 3000]),
            udp_packet(&[0x94, 4, 0, 0], 0, 2000),
        ];
        let mut out = vec![0u8; 2000];
        for _ in 0..3000 {
            let mut b = seeds[rng.gen_range(0..2)].clone();
            for _ in 0..rng.gen_range(0..4) {
                let j = rng.gen_range(0..60);
                b[j] = rng.gen();
            }
            if rng.gen_bool(0.3) {
                b.truncate(rng.gen_range(0..b.len()));
            }
            if let Ok(s) = TcpSegments::new(&b, rng.gen_range(1..2000)) {
                for i in 0..s.count().min(8) {
                    s.write(i, &mut out);
                }
            }
            if let Ok(f) = Fragments::new(&b, rng.gen_range(0..2000)) {
                for i in 0..f.count().min(8) {
                    f.write(i, &mut out);
                }
            }
            let mut c = b.clone();
            let n = c.len();
            let _ = complete_checksum(&mut c, rng.gen_range(0..n + 2), rng.gen_range(0..40));
        }
        // Coalescing mutated IPIP segments.
        let orig = tcp_packet(&[], 0x10, &[5; 5000]);
        let segs = ipip_segments(&orig, 1000);
        for _ in 0..2000 {
            let mut pkts = segs.clone();
            for _ in 0..rng.gen_range(0..4) {
                let k = rng.gen_range(0..pkts.len());
                let j = rng.gen_range(0..90);
                pkts[k][j] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                let k = rng.gen_range(0..pkts.len());
                let l = rng.gen_range(0..pkts[k].len());
                pkts[k].truncate(l);
            }
            let mut frames = frames_of(&pkts);
            let n = coalesce_ipip_tcp(&mut frames, pkts.len(), TEST_LINK_MTU);
            assert!(n >= 1 && n <= pkts.len());
            for f in &frames[..n] {
                if f.vnet.is_gso() {
                    // Whatever was merged re-segments into valid segments.
                    resegment(f);
                }
            }
        }
    }

    /// A partial TCP or UDP checksum behind 64 bytes of outer headers is
    /// recognised and marked; the completed (full) checksum, a fragment,
    /// a wrong checksum and a truncated packet are left alone.
    #[test]
    fn partial_checksums_are_told_from_full_ones() {
        use crate::frame::{Frame, VnetHdr};
        let l3 = 64;
        let behind = |pkt: &[u8]| {
            let mut b = vec![0xaa; l3];
            b.extend_from_slice(pkt);
            Frame::from_bytes(&b)
        };
        let partial = tcp_packet(&[], TCP_ACK, &[7; 300]);
        let mut f = behind(&partial);
        assert!(mark_partial_checksum(&mut f, l3));
        assert_eq!(f.vnet.flags, VnetHdr::F_NEEDS_CSUM);
        assert_eq!(f.vnet.gso_type, VnetHdr::GSO_NONE);
        assert_eq!(
            (f.vnet.csum_start, f.vnet.csum_offset),
            ((l3 + 20) as u16, 16)
        );
        // Completing it as the mark says gives the full checksum, which
        // is not taken for a partial one.
        let mut full = partial.clone();
        complete_checksum(&mut full, 20, 16).unwrap();
        verify_tcp(&full);
        let mut f = behind(&full);
        assert!(!mark_partial_checksum(&mut f, l3));
        assert_eq!(f.vnet, VnetHdr::default());
        // With IP options the L4 header moves.
        let mut f = behind(&tcp_packet(&[1, 1, 1, 0], TCP_ACK | TCP_PSH, &[1; 10]));
        assert!(mark_partial_checksum(&mut f, l3));
        assert_eq!(f.vnet.csum_start, (l3 + 24) as u16);
        // Wrong, fragment, truncated, not TCP/UDP: untouched.
        let mut wrong = full.clone();
        wrong[40] ^= 1;
        let mut frag = partial.clone();
        put16(&mut frag, 6, 0x2000);
        fill_ip_checksum(&mut frag, 20);
        let mut icmp = partial.clone();
        icmp[9] = 1;
        for pkt in [&wrong[..], &frag, &partial[..30], &icmp] {
            let mut f = behind(pkt);
            assert!(!mark_partial_checksum(&mut f, l3));
            assert_eq!(f.vnet, VnetHdr::default());
        }
        // UDP: the field at offset 6 holding the pseudo-header sum.
        let mut udp = vec![0u8; 20 + 8 + 32];
        udp[0] = 0x45;
        put16(&mut udp, 2, 60);
        udp[9] = IPPROTO_UDP;
        udp[12..16].copy_from_slice(&SRC.octets());
        udp[16..20].copy_from_slice(&DST.octets());
        put16(&mut udp, 24, 40);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&udp[12..20]);
        pseudo[9] = IPPROTO_UDP;
        put16(&mut pseudo, 10, 40);
        put16(&mut udp, 26, ones_complement_sum(&pseudo));
        let mut f = behind(&udp);
        assert!(mark_partial_checksum(&mut f, l3));
        assert_eq!(f.vnet.csum_offset, 6);
    }

    /// A VXLAN frame as the uplink hands it over around `inner` (an IPv4
    /// packet), from 192.168.0.2 to 192.168.0.1, UDP 40000 to 4789, VNI
    /// 4096, inner Ethernet to ee:ee:ee:ee:ee:ee.
    fn vxlan_frame(inner: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + 8 + 14 + inner.len();
        let mut v = vec![0u8; 14 + total];
        v[12..14].copy_from_slice(&[8, 0]);
        v[14] = 0x45;
        put16(&mut v, 16, total as u16);
        put16(&mut v, 20, IP_DF);
        v[22] = 64;
        v[23] = IPPROTO_UDP;
        v[26..30].copy_from_slice(&[192, 168, 0, 2]);
        v[30..34].copy_from_slice(&[192, 168, 0, 1]);
        fill_ip_checksum(&mut v[14..], 20);
        put16(&mut v, 34, 40000);
        put16(&mut v, 36, 4789);
        put16(&mut v, 38, (total - 20) as u16);
        v[42] = 0x08;
        v[46..49].copy_from_slice(&[0, 0x10, 0]);
        v[50..56].copy_from_slice(&[0xee; 6]);
        v[56..62].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        v[62..64].copy_from_slice(&[8, 0]);
        v[64..].copy_from_slice(inner);
        v
    }

    /// Consecutive VXLAN segments of one flow with partial checksums (as
    /// a sending kernel on a veth leaves them) merge into one UDP-tunnel
    /// GSO frame that VXLAN decapsulation takes and that cuts back into
    /// the same segments with full checksums; another flow's segment and
    /// one with a wrong full checksum stay apart.
    #[test]
    fn vxlan_segments_coalesce_into_a_tunnel_gso_frame() {
        use crate::frame::{Frame, VnetHdr};
        use crate::vxlan::{TunnelVnetHdr, GSO_UDP_TUNNEL_IPV4, INNER_IP_OFFSET, OUTER_UDP_OFFSET};
        let inner = |i: u32, flags: u8| {
            let mut p = tcp_packet(&[], flags, &[i as u8; 1000]);
            let seq = 0xffff_f000u32.wrapping_add(i * 1000);
            p[24..28].copy_from_slice(&seq.to_be_bytes());
            p
        };
        let originals: Vec<Vec<u8>> = (0..4)
            .map(|i| inner(i, if i == 3 { TCP_ACK | TCP_PSH } else { TCP_ACK }))
            .collect();
        let mut other_flow = inner(4, TCP_ACK);
        put16(&mut other_flow, 20, 40001);
        // Partial checksums depend on the addresses and length only.
        let mut frames: Vec<Frame> = originals
            .iter()
            .chain([&other_flow])
            .map(|p| Frame::from_bytes(&vxlan_frame(p)))
            .collect();
        let n = coalesce_vxlan_tcp(&mut frames, 5);
        assert_eq!(n, 2);
        let f = &frames[0];
        let d = f.data();
        assert_eq!(d.len(), 64 + 20 + 32 + 4000);
        assert_eq!(
            f.vnet,
            VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: GSO_UDP_TUNNEL_IPV4 | VnetHdr::GSO_TCPV4,
                hdr_len: 84 + 32,
                gso_size: 1000,
                csum_start: 84,
                csum_offset: 16,
            }
        );
        assert_eq!(
            ones_complement_sum(&d[14..34]),
            0xffff,
            "outer IPv4 checksum"
        );
        assert_eq!(usize::from(be16(d, 16)), d.len() - 14);
        assert_eq!(usize::from(be16(d, 38)), d.len() - 34, "UDP length");
        assert_eq!(be16(d, 40), 0, "outer UDP checksum: none");
        assert_eq!(d[84 + 13], TCP_ACK | TCP_PSH);
        // The pipeline's view: the offload request mapped to the inner
        // frame, then cut as a pod's TAP (or a software path) would.
        let mapped = TunnelVnetHdr {
            base: f.vnet,
            outer_th_offset: OUTER_UDP_OFFSET as u16,
            inner_nh_offset: INNER_IP_OFFSET as u16,
        }
        .decap()
        .expect("decapsulation takes it");
        assert_eq!((mapped.csum_start, mapped.hdr_len), (34, 66));
        let segs = TcpSegments::new(&d[64..], 1000).unwrap();
        assert_eq!(segs.count(), 4);
        let mut out = vec![0u8; 2048];
        for (i, orig) in originals.iter().enumerate() {
            let len = segs.write(i, &mut out);
            let tcp = verify_tcp(&out[..len]);
            assert_eq!(tcp.payload(), &orig[52..], "segment {i}");
        }
        assert_eq!(frames[1].data(), &vxlan_frame(&other_flow)[..]);

        // A wrong full checksum (neither partial nor verifying) ends the
        // run before it.
        let mut bad = inner(1, TCP_ACK);
        bad[36] ^= 0x55;
        let mut frames: Vec<Frame> = [inner(0, TCP_ACK), bad, inner(2, TCP_ACK)]
            .iter()
            .map(|p| Frame::from_bytes(&vxlan_frame(p)))
            .collect();
        assert_eq!(coalesce_vxlan_tcp(&mut frames, 3), 3);
        assert!(frames.iter().all(|f| f.vnet == VnetHdr::default()));
    }
}
