//! The process-wide monotonic time base. Workers stamp each batch with
//! it and the control thread sweeps shared tables with it, so times one
//! thread stores (a flow's "last seen") compare with another's.
//!
//! Invariants: [`now_ns`] never goes backwards; zero is the first call in
//! the process. Read once per batch by the worker, never by the pipeline.
use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Milliseconds of the same clock.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}
