//! Counters read around a measurement: interface statistics in a pod,
//! `/proc/stat` per CPU, `/proc/<pid>/stat` of the daemons.
use std::fs;
use std::time::{Duration, Instant};

use crate::util::{self, run, Error, Res};
use crate::{bail, sys};

/// Packet and byte counters of one interface.
#[derive(Clone, Copy, Debug, Default)]
pub struct IfStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// `ip -n NS -s -j link show dev IF`.
pub fn if_stats(ns: &str, ifname: &str) -> Res<IfStats> {
    let out = run(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let s = &v[0]["stats64"];
    let n = |a: &str, b: &str| s[a][b].as_u64().unwrap_or(0);
    if s.is_null() {
        bail!("no stats64 for {ifname} in {ns}: {out}");
    }
    Ok(IfStats {
        rx_packets: n("rx", "packets"),
        rx_bytes: n("rx", "bytes"),
        rx_dropped: n("rx", "dropped"),
        tx_packets: n("tx", "packets"),
        tx_dropped: n("tx", "dropped"),
    })
}

/// One CPU's line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait
    }

    fn minus(&self, o: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(o.user),
            nice: self.nice.saturating_sub(o.nice),
            system: self.system.saturating_sub(o.system),
            idle: self.idle.saturating_sub(o.idle),
            iowait: self.iowait.saturating_sub(o.iowait),
            irq: self.irq.saturating_sub(o.irq),
            softirq: self.softirq.saturating_sub(o.softirq),
            steal: self.steal.saturating_sub(o.steal),
        }
    }
}

/// `/proc/stat`: the `cpu` total line and each `cpuN` line.
#[derive(Clone, Debug, Default)]
pub struct ProcStat {
    pub all: CpuTimes,
    pub cpus: Vec<CpuTimes>,
}

pub fn proc_stat() -> Res<ProcStat> {
    let s = fs::read_to_string("/proc/stat")?;
    let mut ps = ProcStat::default();
    for line in s.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        if !name.starts_with("cpu") {
            continue;
        }
        let v: Vec<u64> = it.map(|x| x.parse().unwrap_or(0)).collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        let t = CpuTimes {
            user: g(0),
            nice: g(1),
            system: g(2),
            idle: g(3),
            iowait: g(4),
            irq: g(5),
            softirq: g(6),
            steal: g(7),
        };
        if name == "cpu" {
            ps.all = t;
        } else {
            ps.cpus.push(t);
        }
    }
    Ok(ps)
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn proc_ticks(pid: u32) -> Res<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| Error::msg(format!("/proc/{pid}/stat: {e}")))?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Error::msg("bad /proc/pid/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let g = |i: usize| -> u64 { f.get(i - 3).and_then(|x| x.parse().ok()).unwrap_or(0) };
    Ok(g(14) + g(15))
}

/// A point in time: counters to subtract.
#[derive(Clone, Debug)]
pub struct Snap {
    pub at: Instant,
    pub rx: IfStats,
    pub stat: ProcStat,
    pub daemon_ticks: u64,
}

pub fn snap(ns: &str, ifname: &str, daemons: &[u32]) -> Res<Snap> {
    let rx = if_stats(ns, ifname)?;
    let stat = proc_stat()?;
    let mut daemon_ticks = 0;
    for p in daemons {
        daemon_ticks += proc_ticks(*p)?;
    }
    Ok(Snap {
        at: Instant::now(),
        rx,
        stat,
        daemon_ticks,
    })
}

/// What happened between two snapshots.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Delta {
    pub secs: f64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// CPU seconds of the podrouterd processes (0 for the kernel).
    pub daemon_cpu_s: f64,
    /// Softirq CPU seconds over all CPUs.
    pub softirq_s: f64,
    /// Busy (non-idle) seconds of the data-plane CPU.
    pub dp_core_busy_s: f64,
    /// Busy seconds over all CPUs.
    pub all_busy_s: f64,
}

pub fn delta(a: &Snap, b: &Snap, dp_cpu: usize) -> Delta {
    let hz = sys::clk_tck() as f64;
    let all = b.stat.all.minus(&a.stat.all);
    let dp = match (a.stat.cpus.get(dp_cpu), b.stat.cpus.get(dp_cpu)) {
        (Some(x), Some(y)) => y.minus(x),
        _ => CpuTimes::default(),
    };
    Delta {
        secs: b.at.duration_since(a.at).as_secs_f64(),
        rx_packets: b.rx.rx_packets.saturating_sub(a.rx.rx_packets),
        rx_bytes: b.rx.rx_bytes.saturating_sub(a.rx.rx_bytes),
        daemon_cpu_s: b.daemon_ticks.saturating_sub(a.daemon_ticks) as f64 / hz,
        softirq_s: all.softirq as f64 / hz,
        dp_core_busy_s: dp.busy() as f64 / hz,
        all_busy_s: all.busy() as f64 / hz,
    }
}

/// Waits (up to `max_wait`) until the machine is quiet: less than
/// `threshold` of all CPU time busy over half a second. Returns the busy
/// fraction last seen (so a run on a busy machine can say so).
pub fn quiesce(threshold: f64, max_wait: Duration) -> Res<f64> {
    let end = Instant::now() + max_wait;
    loop {
        let a = proc_stat()?.all;
        util::sleep(Duration::from_millis(500))?;
        let b = proc_stat()?.all;
        let d = b.minus(&a);
        let busy = if d.total() == 0 {
            0.0
        } else {
            d.busy() as f64 / d.total() as f64
        };
        if busy < threshold || Instant::now() >= end {
            return Ok(busy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_counters() {
        let t = proc_ticks(std::process::id()).unwrap();
        let s = proc_stat().unwrap();
        assert!(!s.cpus.is_empty());
        assert!(s.all.total() >= s.cpus[0].total());
        let _ = t;
    }
}
