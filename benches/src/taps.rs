//! The operability row: what watching podrouterd costs its forwarding.
//! One podrouterd with two pods and `[metrics] listen`; each repeat
//! measures the UDP 64 B rate twice, alternating: plain, then with
//! Prometheus-style scrapes of `/metrics` every second and a capture armed
//! on the sending pod's port with a filter no frame matches (every frame
//! pays the tapped loop and the filter; none is copied). The goal:
//! less than 2% change.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use podrouter_api::{Call, CaptureParams, Request, API_VERSION};

use crate::bail;
use crate::report::Row;
use crate::scenarios::{build, cell, checked, udp_rate, Ctx, RateRun, Run};
use crate::topo::{self, Topology};
use crate::util::{self, Error, Proc, Res};

/// Where the benchmarked podrouterd serves metrics (in its node netns).
const METRICS: &str = "127.0.0.1:9091";
/// A documentation address (RFC 5737): no frame of the run has it.
const NOBODY: &str = "203.0.113.77";

/// Progress steps of this scenario.
pub fn planned_steps(repeats: usize) -> usize {
    1 + 2 * repeats + 1
}

/// Scrapes `/metrics` every second from the node namespace until dropped;
/// each scrape's HTTP status goes to its log.
struct Scraper {
    /// Stopped (by its pid) when dropped.
    _proc: Proc,
    log: std::path::PathBuf,
}

impl Scraper {
    fn start(node: &str, dir: &std::path::Path) -> Res<Scraper> {
        let log = dir.join("scrapes.log");
        let script = format!(
            "while :; do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{METRICS}/metrics; sleep 1; done"
        );
        let proc = Proc::spawn(
            "metrics scraper",
            &["ip", "netns", "exec", node, "sh", "-c", &script],
            Some(&log),
        )?;
        Ok(Scraper { _proc: proc, log })
    }

    /// Scrapes that got 200 so far.
    fn ok_scrapes(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim() == "200")
            .count()
    }
}

/// Arms a capture on the pod at `ip` with a filter nothing matches; it
/// stays armed while the connection is open.
fn idle_capture(t: &Topology, ip: &str) -> Res<UnixStream> {
    let mut conn = UnixStream::connect(&t.daemons[0].socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(&Request {
        version: API_VERSION,
        call: Call::Capture(CaptureParams {
            pod: Some(ip.to_string()),
            filter: format!("host {NOBODY}"),
            ..CaptureParams::default()
        }),
    })
    .map_err(|e| Error::msg(e.to_string()))?;
    line.push('\n');
    conn.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut resp)?;
    if !resp.contains("\"result\"") {
        bail!("podrouterd refused the capture: {}", resp.trim());
    }
    Ok(conn)
}

pub fn taps(ctx: &mut Ctx) -> Res<()> {
    let opts = ctx.opts.clone();
    let slot = build(ctx, "taps: podrouterd with [metrics], 2 pods", |_| {
        topo::podrouter_same_node_with(
            &opts,
            2,
            &format!("\n[metrics]\nlisten = \"{METRICS}\"\n"),
            |_| {},
        )
    })?;
    let slot = checked(ctx, slot, "taps podrouter")?;
    let scenario = "operability: metrics scraped every 1 s + an idle capture on the sending pod (filter matching nothing)";
    let measure = "UDP 64 B frames, one flow (baseline: the same podrouterd, neither)";
    let (mut plain, mut watched): (Vec<Run<RateRun>>, Vec<Run<RateRun>>) = (Vec::new(), Vec::new());
    let mut failure = None;
    let mut scrapes = 0;
    if let Ok(t) = &slot {
        let sender = t.pods[0].ip.to_string();
        for rep in 1..=ctx.p.repeats {
            for on in [false, true] {
                let what = format!(
                    "taps · {} · run {rep}/{}",
                    if on {
                        "scraped + idle capture"
                    } else {
                        "neither"
                    },
                    ctx.p.repeats
                );
                ctx.progress.step(&what);
                let watch = if on {
                    let s = Scraper::start(&t.nodes[0], t.dir())?;
                    Some((s, idle_capture(t, &sender)?))
                } else {
                    None
                };
                let n0 = ctx.busy.len();
                let r = udp_rate(ctx, t, 64, &what);
                if let Some((s, conn)) = watch {
                    scrapes += s.ok_scrapes();
                    // Closing the connection stops the capture.
                    drop(conn);
                    drop(s);
                }
                match r {
                    Ok(v) => {
                        let run = Run::new(
                            v,
                            ctx.busy[n0..].iter().any(|b| *b >= crate::scenarios::BUSY),
                        );
                        if on {
                            watched.push(run)
                        } else {
                            plain.push(run)
                        }
                    }
                    Err(e) if e.interrupted => return Err(e),
                    Err(e) => {
                        ctx.fail(&what, &e);
                        failure.get_or_insert(e.msg);
                    }
                }
            }
        }
        ctx.notes.push(format!(
            "taps: {scrapes} scrapes of /metrics answered 200 during the watched runs; the capture matched nothing"
        ));
    }
    let result = |runs: Vec<Run<RateRun>>| match (&slot, runs.is_empty()) {
        (Err(why), _) => Err(why.clone()),
        (Ok(_), true) => Err(failure.clone().unwrap_or_else(|| "no run".into())),
        (Ok(_), false) => Ok(runs),
    };
    ctx.rows.push(
        Row::new(
            scenario,
            measure,
            "Mpps",
            "higher",
            cell(&result(watched), |x| x.mpps),
            cell(&result(plain), |x| x.mpps),
        )
        .baseline("podrouter, unwatched"),
    );
    ctx.progress.step("taps: tearing down");
    drop(slot);
    let _ = util::check();
    Ok(())
}
