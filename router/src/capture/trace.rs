//! The pipeline trace: for the next N frames received on one port that
//! match a filter, each stage's decision, recorded as values
//! ([`TraceStep`]) by [`process_traced`] and turned into text by the
//! control side.
//!
//! [`process_traced`] runs the frame through the ordinary
//! [`Pipeline::process`] and reads each stage's decision around it, from
//! the same snapshots the pipeline used: the tunnel headers and the IPv4
//! header as received, the longest FIB entry for the destination, then the
//! verdict (egress port and tunnel endpoint, or the drop reason) and the
//! rewritten frame (TTL, destination MAC, or the ICMP error built in its
//! place). So tracing changes nothing on the forwarding path: not one
//! instruction of `process` (instrumenting the stages themselves changed
//! how the compiler inlined them into it).
//!
//! Invariants: a worker claims a frame ([`TraceSession::claim`]) before
//! tracing it, so no more than N frames are traced over all workers;
//! recording a step never allocates (each record's step list was reserved
//! when the trace was armed; steps past its capacity are counted in
//! `truncated`).
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Filter, Ring};
use crate::counters::DropReason;
use crate::fib::{FibTable, NextHop, Prefix};
use crate::frame::Frame;
use crate::pipeline::{BatchContext, Pipeline, Verdict};
use crate::port::{PortId, PortRole, Tunnel};
use crate::wire::ETHERNET_HEADER_LEN;

/// Records per worker ring of a trace.
const TRACE_RING_RECORDS: usize = 64;
/// Steps kept per traced frame.
pub const MAX_STEPS: usize = 24;
/// Leading bytes of a traced frame kept (as received).
pub const TRACE_HEAD: usize = 96;

/// One decision of one pipeline stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceStep {
    /// The outer headers of a tunnel frame were checked and stripped; it
    /// came from this node.
    Decapsulated {
        tunnel: &'static str,
        node: Ipv4Addr,
    },
    /// An ARP frame, handed to proxy ARP.
    Arp,
    /// The IPv4 header after validation.
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ttl: u8,
        total_len: u16,
        dont_frag: bool,
        /// TCP/UDP ports, or ICMP type and code.
        l4: Option<(u16, u16)>,
    },
    /// The FIB entry the destination matched (longest prefix) and what it
    /// points to; `None`: no entry.
    FibEntry(Option<(Prefix, NextHop)>),
    /// The egress the route resolved to: port, tunnel endpoint.
    Egress {
        port: PortId,
        tunnel: Option<Ipv4Addr>,
    },
    /// The network policy stage let the packet through.
    PolicyAllowed,
    /// TTL and MACs rewritten.
    Rewritten { ttl: u8, dst_mac: [u8; 6] },
    /// A stage refused the frame.
    Dropped(DropReason),
    /// A stage refused the packet and the pipeline answered the sender
    /// with this ICMP error, built in the frame's place.
    IcmpError { ty: u8, code: u8 },
    /// The frame leaves on `port` (`tunnel`: for the uplink, the node it
    /// is encapsulated to).
    Forward {
        port: PortId,
        tunnel: Option<Ipv4Addr>,
    },
}

/// One traced frame.
#[derive(Debug)]
pub struct TraceRecord {
    /// Monotonic time of the worker's round.
    pub ts_ns: u64,
    pub worker: usize,
    pub ingress: PortId,
    /// Length of the frame as received.
    pub len: u32,
    /// Its first [`TRACE_HEAD`] bytes as received.
    pub head: Vec<u8>,
    pub steps: Vec<TraceStep>,
    /// Steps that did not fit in `steps`.
    pub truncated: u32,
}

impl TraceRecord {
    /// Records a step (no allocation: `steps` has its capacity).
    #[inline]
    pub fn step(&mut self, s: TraceStep) {
        if self.steps.len() < self.steps.capacity() {
            self.steps.push(s);
        } else {
            self.truncated += 1;
        }
    }
}

/// An armed trace.
pub struct TraceSession {
    /// The port whose received frames are traced.
    pub port: PortId,
    pub filter: Filter,
    /// Frames still to trace.
    remaining: AtomicU32,
    rings: Box<[Ring<TraceRecord>]>,
}

impl TraceSession {
    /// A trace of the next `count` matching frames on `port`.
    pub fn new(port: PortId, filter: Filter, count: u32, workers: usize) -> TraceSession {
        let rings = (0..workers.max(1))
            .map(|_| {
                Ring::new(TRACE_RING_RECORDS, || TraceRecord {
                    ts_ns: 0,
                    worker: 0,
                    ingress: port,
                    len: 0,
                    head: Vec::with_capacity(TRACE_HEAD),
                    steps: Vec::with_capacity(MAX_STEPS),
                    truncated: 0,
                })
            })
            .collect();
        TraceSession {
            port,
            filter,
            remaining: AtomicU32::new(count),
            rings,
        }
    }

    /// Frames still to be traced.
    pub fn remaining(&self) -> u32 {
        self.remaining.load(Ordering::Relaxed)
    }

    /// The rings, one per worker, for the reader.
    pub fn rings(&self) -> &[Ring<TraceRecord>] {
        &self.rings
    }

    /// A record for a frame received on `ingress`, if it is to be traced:
    /// the right port, the filter matches and the count is not used up.
    #[inline]
    pub fn claim(
        &self,
        worker: usize,
        ingress: PortId,
        frame: &[u8],
        ts_ns: u64,
    ) -> Option<Box<TraceRecord>> {
        if ingress != self.port || !self.filter.matches(frame) {
            return None;
        }
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        let mut r = self.rings.get(worker)?.take()?;
        r.ts_ns = ts_ns;
        r.worker = worker;
        r.ingress = ingress;
        r.len = frame.len() as u32;
        r.head.clear();
        r.head
            .extend_from_slice(&frame[..frame.len().min(TRACE_HEAD)]);
        r.steps.clear();
        r.truncated = 0;
        Some(r)
    }

    /// Hands a finished record to the reader.
    pub fn commit(&self, worker: usize, r: Box<TraceRecord>) {
        if let Some(ring) = self.rings.get(worker) {
            ring.commit(r);
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn addr(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(a.into())
}

/// The IPv4 header at the start of `ip`, as a trace shows it.
fn ipv4_step(ip: &[u8]) -> Option<TraceStep> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let proto = *ip.get(9)?;
    let frag = be16(ip, 6)?;
    let first_fragment = frag & 0x1fff == 0;
    let l4 = match proto {
        6 | 17 if first_fragment => be16(ip, ihl).zip(be16(ip, ihl + 2)),
        1 if first_fragment => Some((u16::from(*ip.get(ihl)?), u16::from(*ip.get(ihl + 1)?))),
        _ => None,
    };
    Some(TraceStep::Ipv4 {
        src: addr(ip, 12)?,
        dst: addr(ip, 16)?,
        proto,
        ttl: *ip.get(8)?,
        total_len: be16(ip, 2)?,
        dont_frag: frag & 0x4000 != 0,
        l4,
    })
}

/// The longest FIB prefix holding `dst` and its next hop (one probe per
/// prefix length: the trace's slow path).
fn longest_match(fib: &FibTable, dst: Ipv4Addr) -> Option<(Prefix, NextHop)> {
    (0..=32u8).rev().find_map(|len| {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let prefix = Prefix::new(Ipv4Addr::from(u32::from(dst) & mask), len).ok()?;
        Some((prefix, fib.get(prefix)?))
    })
}

/// The tunnel a frame came through and the node that sent it.
type TunnelFrom = Option<(&'static str, Ipv4Addr)>;

/// The IPv4 packet inside a frame received on a port of `role`: past the
/// tunnel's outer headers on the uplink (with the sending node), else past
/// Ethernet; `None` for what is not IPv4 (ARP) or too short.
fn inner_ipv4<'f>(role: &PortRole, f: &'f [u8]) -> Option<(&'f [u8], TunnelFrom)> {
    let outer = f.get(ETHERNET_HEADER_LEN..)?;
    let ethertype = be16(f, 12)?;
    match role {
        PortRole::Uplink {
            tunnel: Tunnel::Ipip,
            ..
        } if ethertype == 0x0800 && outer.get(9) == Some(&4) => {
            let ihl = usize::from(outer.first()? & 0x0f) * 4;
            Some((outer.get(ihl..)?, Some(("ipip", addr(outer, 12)?))))
        }
        PortRole::Uplink {
            tunnel: Tunnel::Vxlan(_),
            ..
        } if ethertype == 0x0800 && outer.get(9) == Some(&17) => {
            let ihl = usize::from(outer.first()? & 0x0f) * 4;
            // UDP 8, VXLAN 8, then the inner Ethernet frame.
            let inner = outer.get(ihl + 16..)?;
            (be16(inner, 12)? == 0x0800).then_some(())?;
            Some((
                inner.get(ETHERNET_HEADER_LEN..)?,
                Some(("vxlan", addr(outer, 12)?)),
            ))
        }
        _ if ethertype == 0x0800 => Some((outer, None)),
        _ => None,
    }
}

/// Runs `frame` through `pipeline` like [`Pipeline::process`] (which it
/// calls), recording in `trace` what each stage decided.
pub fn process_traced(
    pipeline: &mut Pipeline,
    ctx: &BatchContext<'_>,
    ingress: PortId,
    frame: &mut Frame,
    trace: &mut TraceRecord,
) -> Verdict {
    let role = ctx.ports.get(ingress).map(|e| e.info.role);
    let before = role.as_ref().and_then(|r| inner_ipv4(r, frame.data()));
    let mut sent_src = None;
    match &before {
        None if be16(frame.data(), 12) == Some(0x0806) => trace.step(TraceStep::Arp),
        None => {}
        Some((ip, tunnel)) => {
            if let Some((tunnel, node)) = *tunnel {
                trace.step(TraceStep::Decapsulated { tunnel, node });
            }
            if let Some(step) = ipv4_step(ip) {
                if let TraceStep::Ipv4 { src, dst, .. } = step {
                    sent_src = Some(src);
                    trace.step(step);
                    trace.step(TraceStep::FibEntry(longest_match(ctx.fib, dst)));
                }
            }
        }
    }
    let verdict = pipeline.process(ctx, ingress, frame);
    match verdict {
        Verdict::Drop(reason) => trace.step(TraceStep::Dropped(reason)),
        Verdict::Forward { port, tunnel } => {
            let d = frame.data();
            let after = d.get(ETHERNET_HEADER_LEN..).and_then(ipv4_step);
            match (sent_src, after) {
                // The pipeline answered with an ICMP error it built from
                // the node's address in the frame's place.
                (
                    Some(src),
                    Some(TraceStep::Ipv4 {
                        src: now,
                        proto: 1,
                        l4: Some((ty, code)),
                        ..
                    }),
                ) if now != src && matches!(ty, 3 | 11) => {
                    trace.step(TraceStep::IcmpError {
                        ty: ty as u8,
                        code: code as u8,
                    });
                }
                (Some(_), Some(TraceStep::Ipv4 { ttl, .. })) => {
                    trace.step(TraceStep::Egress { port, tunnel });
                    trace.step(TraceStep::PolicyAllowed);
                    trace.step(TraceStep::Rewritten {
                        ttl,
                        dst_mac: d[..6].try_into().unwrap_or_default(),
                    });
                }
                _ => {}
            }
            trace.step(TraceStep::Forward { port, tunnel });
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_count_frames_are_claimed() {
        let s = TraceSession::new(PortId(2), Filter::All, 2, 2);
        assert!(s.claim(0, PortId(3), &[0; 60], 0).is_none(), "other port");
        let a = s.claim(0, PortId(2), &[0; 60], 0).unwrap();
        let mut b = s.claim(1, PortId(2), &[1; 200], 5).unwrap();
        assert!(
            s.claim(1, PortId(2), &[0; 60], 0).is_none(),
            "count used up"
        );
        assert_eq!(s.remaining(), 0);
        assert_eq!((b.len, b.head.len(), b.worker), (200, TRACE_HEAD, 1));
        for _ in 0..MAX_STEPS + 2 {
            b.step(TraceStep::Arp);
        }
        assert_eq!((b.steps.len(), b.truncated), (MAX_STEPS, 2));
        s.commit(0, a);
        s.commit(1, b);
        assert!(s.rings()[0].next().is_some());
        assert!(s.rings()[1].next().is_some());
    }
}
