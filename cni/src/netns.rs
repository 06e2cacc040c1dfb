//! What a pod's network namespace holds, as CHECK sees it: read with
//! `nsenter --net=NETNS ip -j ...` (util-linux and iproute2, present on
//! every node), so the plugin needs no privileges or code of its own to
//! enter namespaces, and checks the pod's view independently of what the
//! daemon believes.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::error::{CniError, CniResult, Code};
use crate::result::GATEWAY;

/// Where to look for `nsenter` and `ip` when PATH does not have them
/// (runtimes may run plugins with a minimal environment).
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .chain(FALLBACK_DIRS.iter().copied())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs `ip -j ARGS` inside the network namespace at `netns`; returns the
/// parsed JSON, or `None` if ip reports the object does not exist.
fn ip_json(netns: &str, args: &[&str]) -> CniResult<Option<Value>> {
    let missing = |tool: &str| {
        CniError::new(
            Code::Io,
            format!("CHECK needs {tool}"),
            format!(
                "{tool} is not installed (looked in PATH and {}); install util-linux and iproute2",
                FALLBACK_DIRS.join(", ")
            ),
        )
    };
    let nsenter = find_tool("nsenter").ok_or_else(|| missing("nsenter"))?;
    let ip = find_tool("ip").ok_or_else(|| missing("ip"))?;
    let out = Command::new(nsenter)
        .arg(format!("--net={netns}"))
        .arg(&ip)
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| CniError::new(Code::Io, "CHECK cannot run nsenter", e.to_string()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("does not exist") {
            return Ok(None);
        }
        return Err(CniError::new(
            Code::Io,
            "CHECK cannot inspect the network namespace",
            format!(
                "nsenter --net={netns} ip -j {}: {}",
                args.join(" "),
                stderr.trim()
            ),
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(|e| CniError::new(Code::Decode, "CHECK cannot read ip's output", e.to_string()))
}

/// What CHECK expects of the pod's interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub ifname: String,
    pub ips: Vec<(Ipv4Addr, u8)>,
    pub mac: Option<String>,
    pub mtu: Option<u16>,
    /// Whether prevResult lists the default route via the gateway (a later
    /// chained plugin may have replaced it).
    pub default_route: bool,
}

/// Reads the namespace and returns every way it differs from `want`.
pub fn check(netns: &str, want: &Expect) -> CniResult<Vec<String>> {
    let link = ip_json(netns, &["addr", "show", "dev", &want.ifname])?;
    let routes = ip_json(netns, &["-4", "route", "show"])?.unwrap_or(Value::Array(Vec::new()));
    Ok(evaluate(want, link.as_ref(), &routes))
}

/// The comparison itself, on `ip -j addr show dev X` and `ip -j -4 route
/// show` output (pure, for tests).
pub fn evaluate(want: &Expect, link: Option<&Value>, routes: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(l) = link.and_then(|v| v.as_array()).and_then(|a| a.first()) else {
        problems.push(format!("interface {} does not exist", want.ifname));
        return problems;
    };
    let flags: Vec<&str> = l["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !flags.contains(&"UP") {
        problems.push(format!("interface {} is down", want.ifname));
    }
    if !flags.contains(&"LOWER_UP") {
        problems.push(format!(
            "interface {} has no carrier: podrouterd does not hold its port",
            want.ifname
        ));
    }
    if let Some(mac) = &want.mac {
        let have = l["address"].as_str().unwrap_or("");
        if !have.eq_ignore_ascii_case(mac) {
            problems.push(format!(
                "interface {} has MAC {have}, expected {mac}",
                want.ifname
            ));
        }
    }
    if let Some(mtu) = want.mtu {
        if l["mtu"].as_u64() != Some(u64::from(mtu)) {
            problems.push(format!(
                "interface {} has MTU {}, expected {mtu}",
                want.ifname, l["mtu"]
            ));
        }
    }
    let addrs: Vec<(String, u64)> = l["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["family"] == "inet")
                .filter_map(|i| Some((i["local"].as_str()?.to_string(), i["prefixlen"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    for (ip, len) in &want.ips {
        if !addrs
            .iter()
            .any(|(a, l)| a == &ip.to_string() && *l == u64::from(*len))
        {
            problems.push(format!(
                "address {ip}/{len} is missing from {}",
                want.ifname
            ));
        }
    }
    let routes = routes.as_array().cloned().unwrap_or_default();
    let gw = GATEWAY.to_string();
    let on_dev = |r: &Value| r["dev"].as_str() == Some(want.ifname.as_str());
    if !routes
        .iter()
        .any(|r| r["dst"] == gw && on_dev(r) && r["scope"] == "link" && r.get("gateway").is_none())
    {
        problems.push(format!(
            "route {gw} dev {} scope link is missing",
            want.ifname
        ));
    }
    if want.default_route
        && !routes
            .iter()
            .any(|r| r["dst"] == "default" && on_dev(r) && r["gateway"] == gw)
    {
        problems.push(format!(
            "route default via {gw} dev {} is missing",
            want.ifname
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> Expect {
        Expect {
            ifname: "eth0".into(),
            ips: vec![(Ipv4Addr::new(10, 244, 0, 2), 32)],
            mac: Some("0a:58:0a:f4:00:02".into()),
            mtu: Some(1480),
            default_route: true,
        }
    }

    const LINK: &str = r#"[{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1480,"address":"0a:58:0a:f4:00:02","addr_info":[{"family":"inet","local":"10.244.0.2","prefixlen":32,"scope":"global"}]}]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"169.254.1.1","dev":"eth0","flags":["onlink"]},{"dst":"169.254.1.1","dev":"eth0","scope":"link","flags":[]}]"#;

    fn eval(link: &str, routes: &str) -> Vec<String> {
        let l: Value = serde_json::from_str(link).unwrap();
        evaluate(&want(), Some(&l), &serde_json::from_str(routes).unwrap())
    }

    #[test]
    fn a_good_pod_passes() {
        assert!(eval(LINK, ROUTES).is_empty(), "{:?}", eval(LINK, ROUTES));
    }

    #[test]
    fn each_difference_is_named() {
        let p = eval(&LINK.replace("\"LOWER_UP\"", "\"NO-CARRIER\""), ROUTES);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("podrouterd does not hold its port"));
        assert!(eval(&LINK.replace("10.244.0.2", "10.244.0.3"), ROUTES)[0]
            .contains("10.244.0.2/32 is missing"));
        assert!(eval(&LINK.replace("\"mtu\":1480", "\"mtu\":1500"), ROUTES)[0].contains("MTU"));
        assert!(eval(
            &LINK.replace("0a:58:0a:f4:00:02", "aa:aa:aa:aa:aa:aa"),
            ROUTES
        )[0]
        .contains("MAC"));
        assert!(eval(&LINK.replace("\"UP\",", ""), ROUTES)[0].contains("is down"));
        let no_default = r#"[{"dst":"169.254.1.1","dev":"eth0","scope":"link"}]"#;
        assert!(eval(LINK, no_default)[0].contains("default via"));
        let no_link = r#"[{"dst":"default","gateway":"169.254.1.1","dev":"eth0"}]"#;
        assert!(eval(LINK, no_link)[0].contains("scope link"));
        let other_dev = ROUTES.replace("\"eth0\"", "\"eth1\"");
        assert_eq!(eval(LINK, &other_dev).len(), 2);
        let r = evaluate(&want(), None, &Value::Null);
        assert_eq!(r, vec!["interface eth0 does not exist".to_string()]);
    }

    #[test]
    fn a_replaced_default_route_is_allowed_when_prev_result_lacks_it() {
        let mut w = want();
        w.default_route = false;
        let l: Value = serde_json::from_str(LINK).unwrap();
        let only_link: Value =
            serde_json::from_str(r#"[{"dst":"169.254.1.1","dev":"eth0","scope":"link"}]"#).unwrap();
        assert!(evaluate(&w, Some(&l), &only_link).is_empty());
    }
}
