//! `podrouter-bench --soak MINUTES`: a long run of one podrouterd that
//! looks for slow leaks and stalls. Three pods on one node: iperf3 TCP from
//! pod 0 to pod 1 for the whole run, pings from pod 2 to pod 1 beside it
//! (5 a second, one `ping` per window), and every [`SAMPLE_SECS`] podrouterd's resident memory
//! (`VmRSS`) and whether it still runs. At the end: a table over time (RSS,
//! TCP Gbit/s, pings lost) and a summary (RSS start/end/max, ping loss and
//! RTT, TCP min/median/max), written to `soak.md` and `soak.json` in the
//! output directory.
//!
//! The run fails (exit status 1) when podrouterd exits, iperf3 fails, a
//! whole TCP interval moves nothing (a stall), more than
//! [`MAX_PING_LOSS`] of the pings are lost, or RSS grows by more than
//! [`MAX_RSS_GROWTH_KB`] from the first sample to the last.
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::report::num;
use crate::topo::{self, PlaneOpts, Topology};
use crate::util::{self, Error, Proc, Res};

/// Seconds between two samples (and iperf3's interval).
pub const SAMPLE_SECS: u64 = 5;
/// Seconds between two pings.
const PING_INTERVAL: f64 = 0.2;
/// Ping loss above this fraction fails the run.
pub const MAX_PING_LOSS: f64 = 0.02;
/// RSS growth (last sample over the first) above this fails the run: the
/// daemon allocates its rings and tables up front, so steady traffic must
/// not grow it.
pub const MAX_RSS_GROWTH_KB: u64 = 16 * 1024;

/// One sample of the time series.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the traffic started (end of the window).
    pub t: f64,
    pub rss_kb: u64,
    /// iperf3's receiver-side rate over this window (None: no interval).
    pub tcp_gbps: Option<f64>,
    pub pings_sent: u64,
    pub pings_lost: u64,
}

/// What the soak measured.
#[derive(Clone, Debug, Serialize)]
pub struct Soak {
    pub minutes: f64,
    pub backend: String,
    pub samples: Vec<Sample>,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
    pub rss_max_kb: u64,
    pub pings_sent: u64,
    pub pings_lost: u64,
    pub ping_p50_ms: f64,
    pub ping_p99_ms: f64,
    pub ping_max_ms: f64,
    pub tcp_gbps_min: f64,
    pub tcp_gbps_median: f64,
    pub tcp_gbps_max: f64,
    pub tcp_gbytes: f64,
    pub tcp_retransmits: u64,
    /// podrouterd's non-zero drop counters at the end.
    pub drops: String,
    /// Why the run failed; empty when it passed.
    pub failures: Vec<String>,
    pub load_before: String,
    pub load_after: String,
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `VmRSS` of `pid` in kB, None once it is gone.
fn rss_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Replies in ping's output: (icmp_seq, rtt in ms). Duplicates count once.
fn ping_replies(out: &str) -> Vec<(u64, f64)> {
    let mut v: Vec<(u64, f64)> = out
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| {
            let seq = l.split("icmp_seq=").nth(1)?.split_whitespace().next()?;
            let ms = l.split("time=").nth(1)?.split_whitespace().next()?;
            Some((seq.parse().ok()?, ms.parse().ok()?))
        })
        .collect();
    v.sort_by_key(|r| r.0);
    v.dedup_by_key(|r| r.0);
    v
}

/// Pings ping said it sent (`N packets transmitted`).
fn ping_transmitted(out: &str) -> Option<u64> {
    out.lines()
        .find(|l| l.contains(" packets transmitted"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs the soak; `Ok(true)` when nothing failed. Prints the report.
pub fn run(opts: &PlaneOpts, gen_cpu: usize, minutes: f64, out_dir: &Path) -> Res<bool> {
    let secs = (minutes * 60.0).round().max(SAMPLE_SECS as f64) as u64;
    eprintln!(
        "podrouter-bench --soak: {secs} s of TCP between two pods with pings beside it, \
         sampled every {SAMPLE_SECS} s; output in {}",
        out_dir.display()
    );
    let t = topo::podrouter_same_node(opts, 3, |_| {})?;
    let soak = measure(&t, opts, gen_cpu, minutes, secs)?;
    drop(t);
    let md = markdown(&soak);
    fs::write(out_dir.join("soak.md"), &md)?;
    fs::write(
        out_dir.join("soak.json"),
        serde_json::to_string_pretty(&soak)?,
    )?;
    println!("{md}");
    eprintln!(
        "podrouter-bench: wrote {}/soak.md, soak.json and podrouter-bench.log",
        out_dir.display()
    );
    Ok(soak.failures.is_empty())
}

fn measure(t: &Topology, opts: &PlaneOpts, gen_cpu: usize, minutes: f64, secs: u64) -> Res<Soak> {
    let (tcp_src, dst, ping_src) = (&t.pods[0], &t.pods[1], &t.pods[2]);
    let pid = t.daemons[0].pid();
    let dip = dst.ip.to_string();
    let cpu = gen_cpu.to_string();
    let load_before = loadavg();
    let server = Proc::spawn(
        "iperf3 server",
        &[
            "ip", "netns", "exec", &dst.ns, "iperf3", "-s", "-1", "-A", &cpu, "-B", &dip,
        ],
        None,
    )?;
    util::sleep(Duration::from_millis(300))?;
    let rss0 = rss_kb(pid).ok_or_else(|| Error::msg("podrouterd exited before the soak"))?;
    let start = Instant::now();
    let client = Proc::spawn(
        "iperf3 client",
        &[
            "ip",
            "netns",
            "exec",
            &tcp_src.ns,
            "iperf3",
            "-c",
            &dip,
            "-t",
            &secs.to_string(),
            "-i",
            &SAMPLE_SECS.to_string(),
            "-A",
            &cpu,
            "-J",
            "--connect-timeout",
            "2000",
        ],
        None,
    )?;
    // One ping per window, so each window's loss is its own.
    let ping_window = || {
        Proc::spawn(
            "ping",
            &[
                "ip",
                "netns",
                "exec",
                &ping_src.ns,
                "ping",
                "-n",
                "-i",
                &PING_INTERVAL.to_string(),
                "-W",
                "1",
                "-w",
                &SAMPLE_SECS.to_string(),
                &dip,
            ],
            None,
        )
    };
    let mut ping = Some(ping_window()?);
    // Per window: (sent, replies' RTTs in ms).
    let mut pings: Vec<(u64, Vec<f64>)> = Vec::new();
    let mut failures = Vec::new();
    let mut rss = vec![rss0];
    let mut sample_t = Vec::new();
    let mut daemon_alive = true;
    let mut k = 1;
    while k * SAMPLE_SECS <= secs {
        util::sleep(
            (start + Duration::from_secs(k * SAMPLE_SECS))
                .saturating_duration_since(Instant::now()),
        )?;
        if let Some(p) = ping.take() {
            let out = p.wait(Duration::from_secs(SAMPLE_SECS + 10))?;
            let rtts = ping_replies(&out.stdout).iter().map(|r| r.1).collect();
            pings.push((ping_transmitted(&out.stdout).unwrap_or(0), rtts));
        }
        if k * SAMPLE_SECS < secs {
            ping = Some(ping_window()?);
        }
        match rss_kb(pid) {
            Some(r) => {
                rss.push(r);
                sample_t.push(start.elapsed().as_secs_f64());
            }
            None => {
                failures.push(format!(
                    "podrouterd exited after {:.0} s; log tail:\n{}",
                    start.elapsed().as_secs_f64(),
                    t.daemons[0].log_tail()
                ));
                daemon_alive = false;
                break;
            }
        }
        util::log(&format!(
            "soak: {:.0} s, podrouterd RSS {} kB",
            start.elapsed().as_secs_f64(),
            rss[rss.len() - 1]
        ));
        k += 1;
    }
    let out = client.wait(Duration::from_secs(secs + 60))?;
    drop(ping);
    drop(server);
    let drops = if daemon_alive {
        t.daemons[0].drops()
    } else {
        String::new()
    };
    let load_after = loadavg();

    // TCP: iperf3's intervals, receiver's view of each window.
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    if !out.ok() || v.get("error").is_some() {
        let err = v["error"].as_str().unwrap_or(out.stderr.trim()).to_string();
        failures.push(format!("iperf3 failed: {err}"));
    }
    let intervals: Vec<f64> = v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                .map(|b| b / 1e9)
                .collect()
        })
        .unwrap_or_default();
    if let Some(i) = intervals.iter().position(|g| *g == 0.0) {
        failures.push(format!(
            "TCP stalled: interval {} ({}-{} s) moved nothing",
            i + 1,
            i as u64 * SAMPLE_SECS,
            (i as u64 + 1) * SAMPLE_SECS
        ));
    }
    let tcp_gbytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let tcp_retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);

    let sent: u64 = pings.iter().map(|p| p.0).sum();
    let rtts: Vec<f64> = pings.iter().flat_map(|p| p.1.iter().copied()).collect();
    if sent == 0 {
        failures.push("ping sent nothing".into());
    }
    let lost = sent.saturating_sub(rtts.len() as u64);
    if sent > 0 && lost as f64 / sent as f64 > MAX_PING_LOSS {
        failures.push(format!(
            "{lost} of {sent} pings lost (more than {:.0}%)",
            MAX_PING_LOSS * 100.0
        ));
    }
    let nwin = sample_t.len().max(intervals.len());
    let samples: Vec<Sample> = (0..nwin)
        .map(|i| Sample {
            t: sample_t
                .get(i)
                .copied()
                .unwrap_or(((i + 1) as u64 * SAMPLE_SECS) as f64),
            rss_kb: rss.get(i + 1).copied().unwrap_or(0),
            tcp_gbps: intervals.get(i).copied(),
            pings_sent: pings.get(i).map_or(0, |p| p.0),
            pings_lost: pings
                .get(i)
                .map_or(0, |p| p.0.saturating_sub(p.1.len() as u64)),
        })
        .collect();
    let rss_end = *rss.last().unwrap_or(&rss0);
    let rss_max = rss.iter().copied().max().unwrap_or(rss0);
    if rss_end > rss0 + MAX_RSS_GROWTH_KB {
        failures.push(format!(
            "podrouterd's RSS grew from {rss0} kB to {rss_end} kB (more than {MAX_RSS_GROWTH_KB} kB)"
        ));
    }
    let (tcp_med, tcp_min, tcp_max) = util::summary(&intervals).unwrap_or((0.0, 0.0, 0.0));
    Ok(Soak {
        minutes,
        backend: opts.backend.clone(),
        samples,
        rss_start_kb: rss0,
        rss_end_kb: rss_end,
        rss_max_kb: rss_max,
        pings_sent: sent,
        pings_lost: lost,
        ping_p50_ms: util::quantile(&rtts, 0.5),
        ping_p99_ms: util::quantile(&rtts, 0.99),
        ping_max_ms: util::quantile(&rtts, 1.0),
        tcp_gbps_min: tcp_min,
        tcp_gbps_median: tcp_med,
        tcp_gbps_max: tcp_max,
        tcp_gbytes,
        tcp_retransmits,
        drops,
        failures,
        load_before,
        load_after,
    })
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The report: the summary, then the time series (one row per sample, or
/// per minute for runs over 3 minutes).
pub fn markdown(s: &Soak) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## Soak: {} min, podrouterd ({}) with 3 pods on one node\n",
        num(s.minutes),
        s.backend
    );
    let _ = writeln!(
        o,
        "iperf3 TCP pod 0 -> pod 1 for the whole run, ping pod 2 -> pod 1 every {PING_INTERVAL} s \
         beside it, podrouterd's VmRSS every {SAMPLE_SECS} s. Load average before: {}, after: {}.\n",
        s.load_before, s.load_after
    );
    let _ = writeln!(o, "| measure | value |\n| --- | --- |");
    let _ = writeln!(
        o,
        "| podrouterd RSS start / end / max | {} / {} / {} MB |",
        mb(s.rss_start_kb),
        mb(s.rss_end_kb),
        mb(s.rss_max_kb)
    );
    let loss = if s.pings_sent > 0 {
        100.0 * s.pings_lost as f64 / s.pings_sent as f64
    } else {
        f64::NAN
    };
    let _ = writeln!(
        o,
        "| ping loss | {} of {} ({}%) |",
        s.pings_lost,
        s.pings_sent,
        num(loss)
    );
    let _ = writeln!(
        o,
        "| ping RTT p50 / p99 / max | {} / {} / {} ms |",
        num(s.ping_p50_ms),
        num(s.ping_p99_ms),
        num(s.ping_max_ms)
    );
    let _ = writeln!(
        o,
        "| TCP per {SAMPLE_SECS} s interval, min / median / max | {} / {} / {} Gbit/s |",
        num(s.tcp_gbps_min),
        num(s.tcp_gbps_median),
        num(s.tcp_gbps_max)
    );
    let _ = writeln!(
        o,
        "| TCP total, retransmits | {} GB, {} |",
        num(s.tcp_gbytes),
        s.tcp_retransmits
    );
    let _ = writeln!(
        o,
        "| podrouterd drops at the end | {} |",
        if s.drops.is_empty() { "none" } else { &s.drops }
    );
    let _ = writeln!(
        o,
        "| verdict | {} |\n",
        if s.failures.is_empty() {
            "ok".to_string()
        } else {
            format!("FAILED: {}", s.failures.join("; ").replace('\n', " "))
        }
    );
    let per = if s.minutes > 3.0 {
        (60 / SAMPLE_SECS) as usize
    } else {
        1
    };
    let _ = writeln!(
        o,
        "| until (s) | RSS (MB) | TCP (Gbit/s) | pings lost / sent |\n| --- | --- | --- | --- |"
    );
    for chunk in s.samples.chunks(per) {
        let last = &chunk[chunk.len() - 1];
        let gbps: Vec<f64> = chunk.iter().filter_map(|x| x.tcp_gbps).collect();
        let tcp = if gbps.is_empty() {
            "-".into()
        } else {
            num(gbps.iter().sum::<f64>() / gbps.len() as f64)
        };
        let _ = writeln!(
            o,
            "| {:.0} | {} | {} | {} / {} |",
            last.t,
            mb(chunk.iter().map(|x| x.rss_kb).max().unwrap_or(0)),
            tcp,
            chunk.iter().map(|x| x.pings_lost).sum::<u64>(),
            chunk.iter().map(|x| x.pings_sent).sum::<u64>()
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_is_parsed() {
        let out = "PING 10.244.0.2 (10.244.0.2) 56(84) bytes of data.\n\
                   64 bytes from 10.244.0.2: icmp_seq=1 ttl=63 time=0.081 ms\n\
                   64 bytes from 10.244.0.2: icmp_seq=3 ttl=63 time=0.120 ms\n\
                   64 bytes from 10.244.0.2: icmp_seq=3 ttl=63 time=0.130 ms (DUP!)\n\
                   \n--- 10.244.0.2 ping statistics ---\n\
                   4 packets transmitted, 2 received, 50% packet loss, time 601ms\n";
        assert_eq!(ping_replies(out), vec![(1, 0.081), (3, 0.120)]);
        assert_eq!(ping_transmitted(out), Some(4));
        assert_eq!(
            ping_transmitted("ping: connect: Network is unreachable"),
            None
        );
    }

    #[test]
    fn long_runs_are_summarised_per_minute() {
        let samples: Vec<Sample> = (1..=24)
            .map(|i| Sample {
                t: (i * 5) as f64,
                rss_kb: 6000 + i,
                tcp_gbps: Some(10.0),
                pings_sent: 25,
                pings_lost: u64::from(i == 13),
            })
            .collect();
        let s = Soak {
            minutes: 4.0,
            backend: "tap".into(),
            samples,
            rss_start_kb: 6000,
            rss_end_kb: 6024,
            rss_max_kb: 6024,
            pings_sent: 600,
            pings_lost: 1,
            ping_p50_ms: 0.08,
            ping_p99_ms: 0.2,
            ping_max_ms: 1.0,
            tcp_gbps_min: 10.0,
            tcp_gbps_median: 10.0,
            tcp_gbps_max: 10.0,
            tcp_gbytes: 300.0,
            tcp_retransmits: 0,
            drops: String::new(),
            failures: Vec::new(),
            load_before: "1.00 1.00 1.00".into(),
            load_after: "1.00 1.00 1.00".into(),
        };
        let md = markdown(&s);
        assert!(md.contains("| 60 | 5.9 | 10.0 | 0 / 300 |"), "{md}");
        assert!(md.contains("| 120 | 5.9 | 10.0 | 1 / 300 |"), "{md}");
        assert!(!md.contains("| 65 |"), "{md}");
        assert!(md.contains("| ping loss | 1 of 600 (0.167%) |"), "{md}");
        assert!(md.contains("| verdict | ok |"), "{md}");
    }
}
