//! The pipeline trace: for the next N frames received on one port that
//! match a filter, each stage's decision, recorded as values
//! ([`TraceStep`]) by the instrumented pipeline path
//! ([`crate::pipeline::Pipeline::process_traced`]) and turned into text by
//! the control side.
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
use crate::fib::{NextHop, Prefix};
use crate::port::PortId;

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
    /// The refusal was answered with an ICMP error to the sender.
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
