//! The flood scenario (issue 15): does one hostile pod slow its
//! neighbours? Three pods on one node in each data plane; the latency
//! client in pod 0 and its echo server in pod 1 measure request/response
//! latency, once on a quiet node and once while pod 2 floods what a router
//! must answer itself (the `flood` helper: ARP requests for the gateway,
//! UDP to a free address of the pod block, UDP with TTL 1 to pod 1, in
//! turn, paced to [`crate::scenarios::Params::flood_pps`] in total).
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;

use crate::report::Row;
use crate::scenarios::{
    both, build, cell, checked, helper_json, hist, quiesce, rr_measure, spawn_helper, Ctx, K, PR,
};
use crate::topo::{self, Topology};
use crate::util::{self, Res};

/// An address of the pod block that no pod has (both planes use
/// [`topo::BLOCKS`]`[0]`, pods from .1 up).
const FREE: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 250);

/// One latency run from pod 0 to pod 1, with pod 2 flooding if `flood`.
fn rr_during(ctx: &mut Ctx, t: &Topology, flood: bool, what: &str) -> Res<Vec<u64>> {
    let (victim, attacker) = (&t.pods[1], &t.pods[2]);
    let busy = quiesce(ctx, what)?;
    if !flood {
        return rr_measure(ctx, t, &[victim], victim.ip, what, busy);
    }
    let secs = ctx.p.rr_secs + 1.5;
    let f = spawn_helper(
        ctx,
        &attacker.ns,
        "flood",
        &[
            format!("if={}", attacker.ifname),
            format!("src={}", attacker.ip),
            format!("victim={}", victim.ip),
            format!("free={FREE}"),
            format!("pps={}", ctx.p.flood_pps),
            format!("secs={secs}"),
            format!("cpu={}", ctx.gen_cpu),
        ],
    )?;
    // The flood runs before and after the measured window.
    util::sleep(Duration::from_millis(500))?;
    let rtts = rr_measure(ctx, t, &[victim], victim.ip, what, busy);
    let fl = helper_json(f, Duration::from_secs_f64(secs + 30.0))?;
    let rtts = rtts?;
    let drops = t.daemons.first().map(|d| d.drops()).unwrap_or_default();
    ctx.runs.push(json!({
        "what": what, "plane": t.label, "kind": "flood", "flood": fl,
        "podrouterd_drops": drops,
    }));
    util::log(&format!("{what}: flood {fl}; podrouterd drops: {drops}"));
    let (offered, sent) = (
        fl["offered_pps"].as_f64().unwrap_or(0.0),
        fl["sent_pps"].as_f64().unwrap_or(0.0),
    );
    if sent < 0.95 * offered {
        // The pod's interface queue was full: this plane took less flood.
        ctx.notes.push(format!(
            "{what}: the flooding pod got {:.0} of {:.0} frames/s into its interface (its queue \
             was full the rest of the time)",
            sent, offered
        ));
    }
    Ok(rtts)
}

pub fn flood(ctx: &mut Ctx) -> Res<()> {
    let opts = ctx.opts.clone();
    let pr = build(ctx, "flood: podrouterd with 3 pods", |_| {
        topo::podrouter_same_node(&opts, 3, |_| {})
    })?;
    let pr = checked(ctx, pr, "flood podrouter")?;
    let k = build(ctx, "flood: kernel (Calico-style) with 3 pods", |_| {
        topo::kernel_same_node(&opts, 3, |_| {})
    })?;
    let k = checked(ctx, k, "flood kernel")?;
    let planes = [&pr, &k];
    let kpps = ctx.p.flood_pps / 1e3;
    let scenario = format!(
        "same node, 3 pods: pod 0 to pod 1 while pod 2 floods ARP, UDP to a free address and \
         TTL 1 ({kpps:.0} kpps in all)"
    );
    for (flood, label) in [(false, "quiet node"), (true, "during the flood")] {
        let what = format!("{scenario} · request/response, {label}");
        let r = both(ctx, &planes, &what, |c, t, d| rr_during(c, t, flood, d))?;
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let f = |v: &Vec<u64>| hist(v).value_at_quantile(q) as f64 / 1e3;
            ctx.rows.push(Row::new(
                &scenario,
                &format!("request/response latency {name}, {label}"),
                "µs",
                "lower",
                cell(&r[PR], f),
                cell(&r[K], f),
            ));
        }
    }
    if let Ok(t) = &pr {
        ctx.notes.push(format!(
            "flood: podrouterd's drops after both runs: {}",
            t.daemons[0].drops()
        ));
    }
    ctx.progress.step("flood: tearing down");
    drop(pr);
    drop(k);
    Ok(())
}
