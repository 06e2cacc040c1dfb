//! Taps on the data plane: live packet capture (and, in [`trace`], the
//! pipeline trace) armed by the control thread, filled by the workers,
//! drained by the thread that streams them to the operator.
//!
//! Cost when off: a worker reads one relaxed atomic ([`Taps::armed`]) per
//! polling round; nothing else of this module runs. When a capture is armed,
//! the worker loads the session once per round and, for each frame received
//! on or sent to the captured port that matches the [`Filter`], copies at
//! most `snaplen` bytes into a record taken from its own [`Ring`]. Rings are
//! bounded and lock-free (two `crossbeam` array queues of records allocated
//! when the capture is armed: free and filled): a worker never allocates,
//! blocks or waits for the reader; when the reader falls behind, the frame
//! is not kept and the ring's `lost` counter says so.
//!
//! Invariants: at most one capture and one trace are armed at a time; a
//! session stays alive (its rings too) while any worker still holds it
//! after it was disarmed, so a late record is never written to freed
//! memory; records go back to the free queue after the reader wrote them.
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;

use crate::counters::DropReason;
use crate::port::PortId;

pub mod filter;
pub mod trace;

pub use filter::{Filter, FilterError};
pub use trace::{TraceRecord, TraceSession, TraceStep};

/// Records per worker ring.
pub const RING_RECORDS: usize = 512;
/// Bytes of each frame kept unless asked otherwise (a jumbo frame).
pub const DEFAULT_SNAPLEN: usize = 9216;
/// Most bytes of a frame a capture may keep (a GSO frame can be 64 KiB).
pub const MAX_SNAPLEN: usize = 65_535;

const CAPTURE_BIT: u8 = 1;
const TRACE_BIT: u8 = 2;

/// Which way a captured frame went through the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received from the port (before the pipeline touched it).
    In,
    /// Sent to the port (after rewriting).
    Out,
}

/// A bounded, lock-free single-producer ring of preallocated records: the
/// producer (one worker) takes from `free` and puts into `filled`; the
/// consumer does the reverse.
pub struct Ring<R> {
    free: ArrayQueue<Box<R>>,
    filled: ArrayQueue<Box<R>>,
    /// Frames the producer could not keep (no free record).
    lost: AtomicU64,
}

impl<R> Ring<R> {
    /// A ring of `records` records made by `make` (on the arming thread).
    pub fn new(records: usize, make: impl Fn() -> R) -> Ring<R> {
        let free = ArrayQueue::new(records.max(1));
        for _ in 0..records.max(1) {
            // Cannot fail: the queue has room for exactly this many.
            let _ = free.push(Box::new(make()));
        }
        Ring {
            free,
            filled: ArrayQueue::new(records.max(1)),
            lost: AtomicU64::new(0),
        }
    }

    /// A free record for the producer to fill, or `None` (counted as lost)
    /// when the consumer has not given any back.
    #[inline]
    pub fn take(&self) -> Option<Box<R>> {
        let r = self.free.pop();
        if r.is_none() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Hands a filled record to the consumer.
    #[inline]
    pub fn commit(&self, r: Box<R>) {
        // Both queues together hold every record, so `filled` has room.
        if let Err(r) = self.filled.push(r) {
            self.lost.fetch_add(1, Ordering::Relaxed);
            let _ = self.free.push(r);
        }
    }

    /// Returns a record unused (the producer's) or written (the consumer's).
    #[inline]
    pub fn give_back(&self, r: Box<R>) {
        let _ = self.free.push(r);
    }

    /// The next filled record, oldest first (consumer).
    pub fn next(&self) -> Option<Box<R>> {
        self.filled.pop()
    }

    /// Frames lost so far because the ring was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// One captured frame.
#[derive(Debug)]
pub struct Record {
    /// Monotonic time of the worker's polling round ([`crate::clock`]).
    pub ts_ns: u64,
    /// Length of the frame on the wire; `data` may be shorter (snaplen).
    pub orig_len: u32,
    pub direction: Direction,
    /// Set when the router dropped the frame (`--drops`).
    pub drop: Option<DropReason>,
    /// The first `snaplen` bytes (capacity reserved when armed).
    pub data: Vec<u8>,
}

/// What to capture.
#[derive(Clone, Debug)]
pub struct CaptureSpec {
    /// The port whose received and sent frames are captured.
    pub port: PortId,
    pub filter: Filter,
    /// Also keep frames received on the port that the router dropped, with
    /// their reason; otherwise those are left out.
    pub drops: bool,
    /// Bytes kept of each frame (1 to [`MAX_SNAPLEN`]).
    pub snaplen: usize,
}

/// An armed capture: the spec and one ring per worker.
pub struct CaptureSession {
    pub spec: CaptureSpec,
    rings: Box<[Ring<Record>]>,
}

impl CaptureSession {
    /// A session for `workers` workers (its rings are allocated here).
    pub fn new(mut spec: CaptureSpec, workers: usize) -> CaptureSession {
        spec.snaplen = spec.snaplen.clamp(1, MAX_SNAPLEN);
        let snaplen = spec.snaplen;
        let rings = (0..workers.max(1))
            .map(|_| {
                Ring::new(RING_RECORDS, || Record {
                    ts_ns: 0,
                    orig_len: 0,
                    direction: Direction::In,
                    drop: None,
                    data: Vec::with_capacity(snaplen),
                })
            })
            .collect();
        CaptureSession { spec, rings }
    }

    /// The rings, one per worker, for the reader.
    pub fn rings(&self) -> &[Ring<Record>] {
        &self.rings
    }

    /// Frames lost on every ring so far.
    pub fn lost(&self) -> u64 {
        self.rings.iter().map(Ring::lost).sum()
    }

    /// Copies `frame` into a record of `worker`'s ring if it matches the
    /// filter; the caller commits or gives it back. No allocation: the
    /// record's buffer was reserved with `snaplen` bytes.
    #[inline]
    pub fn copy(
        &self,
        worker: usize,
        frame: &[u8],
        ts_ns: u64,
        direction: Direction,
    ) -> Option<Box<Record>> {
        if !self.spec.filter.matches(frame) {
            return None;
        }
        let mut r = self.rings.get(worker)?.take()?;
        r.ts_ns = ts_ns;
        r.orig_len = frame.len() as u32;
        r.direction = direction;
        r.drop = None;
        r.data.clear();
        r.data
            .extend_from_slice(&frame[..frame.len().min(self.spec.snaplen)]);
        Some(r)
    }

    /// Hands a record to the reader.
    #[inline]
    pub fn commit(&self, worker: usize, r: Box<Record>) {
        if let Some(ring) = self.rings.get(worker) {
            ring.commit(r);
        }
    }

    /// Returns a record that is not to be kept.
    #[inline]
    pub fn give_back(&self, worker: usize, r: Box<Record>) {
        if let Some(ring) = self.rings.get(worker) {
            ring.give_back(r);
        }
    }
}

/// Why a capture or trace could not be armed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    #[error("a capture is already running on this node; stop it first")]
    CaptureBusy,
    #[error("a trace is already running on this node; stop it first")]
    TraceBusy,
}

/// The taps every worker checks: the armed capture and trace, if any.
#[derive(Default)]
pub struct Taps {
    /// Bit set of what is armed: the one thing a worker reads per round
    /// when nothing is.
    armed: AtomicU8,
    capture: ArcSwapOption<CaptureSession>,
    trace: ArcSwapOption<TraceSession>,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps")
            .field("armed", &self.armed.load(Ordering::Relaxed))
            .finish()
    }
}

/// What a worker loaded for one polling round.
#[derive(Default)]
pub struct Armed {
    pub capture: Option<Arc<CaptureSession>>,
    pub trace: Option<Arc<TraceSession>>,
}

impl Taps {
    pub fn new() -> Taps {
        Taps::default()
    }

    /// Whether anything is armed (one relaxed load; workers call this once
    /// per round and load the sessions only when it is true).
    #[inline(always)]
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed) != 0
    }

    /// The armed sessions (a worker's slow path, once per round).
    pub fn load(&self) -> Armed {
        Armed {
            capture: self.capture.load_full(),
            trace: self.trace.load_full(),
        }
    }

    /// Arms a capture unless one is armed.
    pub fn arm_capture(&self, s: Arc<CaptureSession>) -> Result<(), ArmError> {
        let prev = self.capture.compare_and_swap(&None::<Arc<_>>, Some(s));
        if prev.is_some() {
            return Err(ArmError::CaptureBusy);
        }
        self.armed.fetch_or(CAPTURE_BIT, Ordering::Relaxed);
        Ok(())
    }

    /// Disarms `s` if it is the armed capture. Workers may still be
    /// filling its rings until their round ends.
    pub fn disarm_capture(&self, s: &Arc<CaptureSession>) {
        let prev = self.capture.compare_and_swap(s, None);
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, s)) {
            self.armed.fetch_and(!CAPTURE_BIT, Ordering::Relaxed);
        }
    }

    /// Arms a trace unless one is armed.
    pub fn arm_trace(&self, s: Arc<TraceSession>) -> Result<(), ArmError> {
        let prev = self.trace.compare_and_swap(&None::<Arc<_>>, Some(s));
        if prev.is_some() {
            return Err(ArmError::TraceBusy);
        }
        self.armed.fetch_or(TRACE_BIT, Ordering::Relaxed);
        Ok(())
    }

    /// Disarms `s` if it is the armed trace.
    pub fn disarm_trace(&self, s: &Arc<TraceSession>) {
        let prev = self.trace.compare_and_swap(s, None);
        if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, s)) {
            self.armed.fetch_and(!TRACE_BIT, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(filter: &str) -> CaptureSpec {
        CaptureSpec {
            port: PortId(1),
            filter: Filter::parse(filter).unwrap(),
            drops: false,
            snaplen: 4,
        }
    }

    #[test]
    fn a_full_ring_counts_what_it_could_not_keep() {
        let s = CaptureSession::new(spec(""), 2);
        let mut kept = Vec::new();
        for i in 0..RING_RECORDS + 3 {
            if let Some(r) = s.copy(1, &[i as u8; 10], 7, Direction::In) {
                kept.push(r);
            }
        }
        assert_eq!(kept.len(), RING_RECORDS);
        assert_eq!(s.lost(), 3);
        for r in kept {
            assert_eq!((r.data.len(), r.orig_len, r.ts_ns), (4, 10, 7), "snaplen");
            s.commit(1, r);
        }
        assert!(s.rings()[0].next().is_none(), "worker 0 wrote nothing");
        let first = s.rings()[1].next().unwrap();
        assert_eq!(first.data, [0; 4], "oldest first");
        s.rings()[1].give_back(first);
        assert!(
            s.copy(1, &[1; 10], 8, Direction::Out).is_some(),
            "room again"
        );
        assert!(
            s.copy(9, &[1; 10], 8, Direction::Out).is_none(),
            "no such worker"
        );
    }

    #[test]
    fn the_filter_decides_what_is_copied() {
        let s = CaptureSession::new(spec("arp"), 1);
        assert!(s.copy(0, &[0; 60], 0, Direction::In).is_none());
        assert_eq!(s.lost(), 0, "not matching is not lost");
    }

    #[test]
    fn one_capture_at_a_time_and_armed_follows_it() {
        let taps = Taps::new();
        assert!(!taps.armed());
        let a = Arc::new(CaptureSession::new(spec(""), 1));
        let b = Arc::new(CaptureSession::new(spec(""), 1));
        taps.arm_capture(a.clone()).unwrap();
        assert!(taps.armed());
        assert_eq!(taps.arm_capture(b.clone()), Err(ArmError::CaptureBusy));
        taps.disarm_capture(&b);
        assert!(taps.armed(), "b was never armed");
        assert!(Arc::ptr_eq(taps.load().capture.as_ref().unwrap(), &a));
        taps.disarm_capture(&a);
        assert!(!taps.armed());
        assert!(taps.load().capture.is_none());
        taps.arm_capture(b).unwrap();
        assert!(taps.armed());
    }
}
