//! The kernel's per-CPU receive backlog, machine-wide: what a test that
//! counts pings exactly needs to tell its own loss from someone else's.
//!
//! A veth delivers a frame to its peer through the receiving CPU's
//! backlog (`enqueue_to_backlog`) unless the peer runs NAPI (an XDP
//! program, or GRO with a sender that qualifies). The backlog is one
//! queue per CPU for every network namespace on the machine, at most
//! `net.core.netdev_max_backlog` packets: a flood in any namespace (a
//! benchmark's 64-byte rows, another test's iperf3) fills it, and a
//! test's packets arriving meanwhile are tail-dropped by the kernel,
//! counted only in `/proc/net/softnet_stat` (second column, per CPU) and
//! as `rx_dropped` of a veth that may be gone by the time anyone looks.
//! Neither podrouterd nor its AF_XDP sockets see them.
//!
//! [`BacklogDrops::now`] takes the counters; [`BacklogDrops::note`] says
//! how many drops happened since, for an assertion's message.
use std::fs;

/// The backlog drop counter of every CPU, in `/proc/net/softnet_stat`
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BacklogDrops(Vec<u64>);

impl BacklogDrops {
    /// The counters now (empty if the file cannot be read).
    pub fn now() -> BacklogDrops {
        parse_softnet_stat(&fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default())
    }

    /// Packets the backlogs dropped since `self` was taken, all CPUs.
    pub fn since(&self) -> u64 {
        BacklogDrops::now().grown_from(self)
    }

    /// Sum over CPUs of what each counter grew from `before`.
    fn grown_from(&self, before: &BacklogDrops) -> u64 {
        self.0
            .iter()
            .zip(&before.0)
            .map(|(now, then)| now.saturating_sub(*then))
            .sum()
    }

    /// For an assertion's message: how many packets the machine's
    /// backlogs dropped since `self`, and what that means.
    pub fn note(&self) -> String {
        let n = self.since();
        if n == 0 {
            "the kernel's per-CPU receive backlogs dropped nothing meanwhile".to_string()
        } else {
            format!(
                "the kernel's per-CPU receive backlogs dropped {n} packets machine-wide \
                 meanwhile (/proc/net/softnet_stat): a flood somewhere on this machine \
                 overflowed net.core.netdev_max_backlog, and a veth hop of this test \
                 (underlay, pod) goes through it"
            )
        }
    }
}

/// The second column (hex) of each line: packets dropped because the
/// CPU's backlog was full. A malformed line counts as 0.
fn parse_softnet_stat(text: &str) -> BacklogDrops {
    BacklogDrops(
        text.lines()
            .map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .unwrap_or(0)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_dropped_column_of_each_cpu() {
        let text = "20217a76 00000000 00000041 00000000\n\
                    acdf1d0b 39ca3702 0000a223 00000000\n";
        assert_eq!(parse_softnet_stat(text), BacklogDrops(vec![0, 0x39ca_3702]));
        assert_eq!(parse_softnet_stat("x\n"), BacklogDrops(vec![0]));
    }

    #[test]
    fn counts_what_grew_on_every_cpu() {
        let before = BacklogDrops(vec![5, 100]);
        assert_eq!(BacklogDrops(vec![5, 100]).grown_from(&before), 0);
        assert_eq!(BacklogDrops(vec![7, 1100]).grown_from(&before), 1002);
        // A counter that went down (a CPU came back) adds nothing.
        assert_eq!(BacklogDrops(vec![1, 103]).grown_from(&before), 3);
    }
}
