//! The API server's figures: connections open and what was refused or
//! timed out, counted by the connection threads and shown by `status`
//! (and so by `podrouterctl status` and the metrics exporter).
//!
//! Invariant: `open` is raised by the acceptor before a connection's
//! thread starts and lowered exactly once when that thread ends
//! ([`OpenConnection`]'s drop), so it never drifts.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use podrouter_api::ApiServerInfo;

#[derive(Debug, Default)]
pub struct ApiStats {
    open: AtomicU64,
    max: u64,
    pub accepted: AtomicU64,
    pub refused_busy: AtomicU64,
    pub requests: AtomicU64,
    pub request_timeouts: AtomicU64,
    pub oversized: AtomicU64,
    pub bad_requests: AtomicU64,
    pub write_timeouts: AtomicU64,
}

/// One open connection; the count drops with it.
pub struct OpenConnection(Arc<ApiStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

impl ApiStats {
    pub fn new(max_connections: u64) -> ApiStats {
        ApiStats {
            max: max_connections,
            ..ApiStats::default()
        }
    }

    /// Counts a new connection in, or `None` (counted as refused) when
    /// `max` are open. Only the acceptor calls it, so check-then-add
    /// does not race with another admission.
    pub fn admit(self: &Arc<Self>) -> Option<OpenConnection> {
        if self.open.load(Relaxed) >= self.max {
            self.refused_busy.fetch_add(1, Relaxed);
            return None;
        }
        self.open.fetch_add(1, Relaxed);
        self.accepted.fetch_add(1, Relaxed);
        Some(OpenConnection(self.clone()))
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> ApiServerInfo {
        ApiServerInfo {
            connections: self.open.load(Relaxed),
            max_connections: self.max,
            accepted: self.accepted.load(Relaxed),
            refused_busy: self.refused_busy.load(Relaxed),
            requests: self.requests.load(Relaxed),
            request_timeouts: self.request_timeouts.load(Relaxed),
            oversized: self.oversized.load(Relaxed),
            bad_requests: self.bad_requests.load(Relaxed),
            write_timeouts: self.write_timeouts.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_stops_at_the_limit_and_reopens_when_one_closes() {
        let s = Arc::new(ApiStats::new(2));
        let a = s.admit().expect("first");
        let _b = s.admit().expect("second");
        assert!(s.admit().is_none());
        assert_eq!(s.snapshot().refused_busy, 1);
        drop(a);
        assert!(s.admit().is_some());
        let snap = s.snapshot();
        assert_eq!((snap.connections, snap.accepted), (1, 3));
    }
}
