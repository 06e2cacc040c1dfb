//! The API's views of the BGP speaker: `podrouterctl bgp peers` (one row
//! per neighbour, like `birdc show protocols all`) and `podrouterctl bgp
//! rib` (like `birdc show route`). Built from the speaker's read-only
//! accessors, so the speaker itself knows nothing of the API's types.
//!
//! Invariant: read-only; a view never changes the speaker.
use std::time::Instant;

use podrouter_api::{BgpPeerInfo, BgpRibInfo, BgpRouteInfo};
use podrouter_types::Prefix;

use super::rib;
use super::session::State;
use super::speaker::Speaker;

/// One row per configured neighbour, in configuration order (peers a
/// reload removed are left out, peers it added come last); `md5[i]` says
/// whether neighbour `i` has a TCP MD5 key.
pub fn peers(speaker: &Speaker, now: Instant, md5: &[bool]) -> Vec<BgpPeerInfo> {
    speaker
        .sessions()
        .iter()
        .enumerate()
        .filter(|(i, _)| !speaker.is_retired(*i))
        .map(|(i, s)| {
            let c = &s.cfg;
            let neg = s.negotiated();
            let established = s.state() == State::Established;
            let accepted = s
                .adj_in()
                .filter(|(p, _, _)| speaker.filtered(p).is_none())
                .count();
            let mut caps = Vec::new();
            if let Some(n) = neg.filter(|_| established) {
                caps.push("ipv4-unicast".to_string());
                if n.ctx.four_octet_as {
                    caps.push("4-octet-as".into());
                }
                if n.route_refresh {
                    caps.push("route-refresh".into());
                }
                if n.gr {
                    caps.push("graceful-restart".into());
                }
            }
            BgpPeerInfo {
                address: c.peer,
                asn: c.peer_as,
                kind: if c.ibgp() { "ibgp" } else { "ebgp" }.into(),
                state: s.state().name().into(),
                since_secs: now.saturating_duration_since(s.state_since()).as_secs(),
                router_id: neg.filter(|_| established).map(|n| n.peer_router_id),
                hold_time: neg.filter(|_| established).map(|n| n.hold_time),
                passive: c.passive,
                md5: md5.get(i).copied().unwrap_or(false),
                prefixes_received: s.prefixes(),
                prefixes_accepted: accepted,
                prefixes_stale: s.stale_prefixes(),
                max_prefixes: c.max_prefixes,
                messages_in: s.stats.messages_in,
                messages_out: s.stats.messages_out,
                updates_in: s.stats.updates_in,
                updates_out: s.stats.updates_out,
                treat_as_withdraw: s.stats.treat_as_withdraw,
                established_count: s.stats.established_count,
                capabilities: caps,
                last_error: s.stats.last_error.clone(),
                // The driver fills it in (it knows the FIB's publications).
                established_to_last_install_ms: None,
                established_to_kernel_synced_ms: None,
                established_unix_ms: None,
            }
        })
        .collect()
}

/// The RIB as `podrouterctl bgp rib` shows it: our own blocks, then
/// every learned path, sorted by prefix, best first; at most `limit`
/// rows, only those inside `within` if given. With `limit` 0 (the
/// counts only, what a convergence poll asks many times a second) no
/// prefix is listed or sorted: O(1) on the BGP thread.
pub fn rib(speaker: &Speaker, within: Option<Prefix>, limit: usize) -> BgpRibInfo {
    let inside = |p: &Prefix| within.is_none_or(|w| w.contains(p.addr()) && p.len() >= w.len());
    let mut prefixes: Vec<Prefix> = if limit == 0 {
        Vec::new()
    } else {
        speaker.rib().prefixes().copied().filter(inside).collect()
    };
    prefixes.sort();
    let total_paths = speaker.rib().path_count();
    let mut routes = Vec::new();
    // Nothing listed with limit 0: truncated if there was anything to list
    // (stops at the first such prefix).
    let mut truncated = limit == 0 && speaker.rib().prefixes().any(&inside);
    for p in speaker.cfg.local_routes.iter().filter(|p| inside(p)) {
        routes.push(BgpRouteInfo {
            prefix: p.to_string(),
            next_hop: speaker.cfg.next_hop,
            from: "local".into(),
            as_path: String::new(),
            origin: "IGP".into(),
            local_pref: None,
            med: None,
            best: true,
            multipath: false,
            installed: false,
            stale: false,
            ebgp: false,
            filtered: None,
        });
    }
    'outer: for p in &prefixes {
        let Some(sel) = speaker.rib().select(p) else {
            continue;
        };
        let mut paths = speaker.rib().paths(p).to_vec();
        paths.sort_by(|a, b| rib::compare(a, b, true));
        if let Some(i) = paths.iter().position(|x| x.peer == sel.best.peer) {
            let b = paths.remove(i);
            paths.insert(0, b);
        }
        let filtered = speaker.filtered(p);
        let installed = speaker.installed_next_hops(p);
        for path in paths {
            if routes.len() >= limit {
                truncated = true;
                break 'outer;
            }
            let best = path.peer == sel.best.peer;
            let multipath = sel.multipath.iter().any(|m| m.peer == path.peer);
            let stale = speaker
                .peer_index(path.peer)
                .is_some_and(|i| speaker.session(i).is_stale(p));
            routes.push(BgpRouteInfo {
                prefix: p.to_string(),
                next_hop: path.next_hop,
                from: path.peer.to_string(),
                as_path: path.attrs.as_path_text(),
                origin: path
                    .attrs
                    .origin
                    .map_or_else(|| "?".into(), |o| o.to_string()),
                local_pref: Some(path.local_pref),
                med: path.attrs.med,
                best,
                multipath: !best && multipath,
                installed: (best || multipath) && installed.contains(&path.next_hop),
                stale,
                ebgp: path.ebgp,
                filtered: filtered.map(str::to_string),
            });
        }
    }
    BgpRibInfo {
        prefixes: speaker.rib().len(),
        paths: total_paths,
        installed: speaker.installed(),
        truncated,
        routes,
    }
}
