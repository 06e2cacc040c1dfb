//! Counts and latency histograms of the daemon's pod lifecycle calls
//! (attach, detach), kept by the control thread and reported with the
//! counters (`podrouterctl counters`, `/metrics`).
//!
//! Invariants: only the control thread records (no atomics needed); the
//! buckets are fixed at [`BOUNDS_SECS`], so a report is cumulative counts
//! over the same bounds every time, as Prometheus histograms require.
use std::time::Duration;

use podrouter_api::OpStatsInfo;

/// Upper bounds of the latency buckets, in seconds: attaches take
/// milliseconds (TAP, addresses, routes in a namespace), a slow node tens
/// to hundreds.
pub const BOUNDS_SECS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// One kind of call.
#[derive(Debug, Default)]
pub struct OpStats {
    ok: u64,
    failed: u64,
    seconds_sum: f64,
    /// Calls per bucket (not cumulative), index as in [`BOUNDS_SECS`].
    in_bucket: [u64; BOUNDS_SECS.len()],
}

impl OpStats {
    /// Records one call that took `took` and succeeded or not.
    pub fn record(&mut self, took: Duration, ok: bool) {
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        let secs = took.as_secs_f64();
        self.seconds_sum += secs;
        if let Some(i) = BOUNDS_SECS.iter().position(|b| secs <= *b) {
            self.in_bucket[i] += 1;
        }
    }

    /// The API's form: cumulative buckets.
    pub fn info(&self) -> OpStatsInfo {
        let mut total = 0;
        OpStatsInfo {
            ok: self.ok,
            failed: self.failed,
            seconds_sum: self.seconds_sum,
            buckets: BOUNDS_SECS
                .iter()
                .zip(self.in_bucket)
                .map(|(b, n)| {
                    total += n;
                    (*b, total)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_slow_calls_only_reach_inf() {
        let mut s = OpStats::default();
        s.record(Duration::from_micros(500), true);
        s.record(Duration::from_millis(3), true);
        s.record(Duration::from_millis(10), false);
        s.record(Duration::from_secs(9), true);
        let i = s.info();
        assert_eq!((i.ok, i.failed), (3, 1));
        assert!((i.seconds_sum - 9.0135).abs() < 1e-9, "{}", i.seconds_sum);
        let at = |b: f64| i.buckets.iter().find(|x| x.0 == b).unwrap().1;
        assert_eq!(at(0.001), 1);
        assert_eq!(at(0.0025), 1);
        assert_eq!(at(0.005), 2);
        assert_eq!(at(0.01), 3, "a bound is inclusive");
        assert_eq!(at(5.0), 3, "9 s is only in +Inf (ok + failed = 4)");
        assert!(i
            .buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
