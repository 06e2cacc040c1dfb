//! The ADD result, one model written in the shape of the version asked
//! for, and read back (prevResult, IPAM results) from any supported one.
//!
//! | version      | ips entries carry    | interfaces carry | routes carry |
//! |--------------|----------------------|------------------|--------------|
//! | 0.3.x, 0.4.0 | version, address, gateway, interface | name, mac, sandbox | dst, gw |
//! | 1.0.0        | address, gateway, interface | name, mac, sandbox | dst, gw |
//! | 1.1.0        | address, gateway, interface | + mtu, socketPath, pciID | + mtu, advmss, priority, table, scope |
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;
use serde_json::Value;

use crate::error::{CniError, CniResult, Code};
use crate::netconf::{Dns, Version};

/// The router's address every pod routes through.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub sandbox: Option<String>,
    pub socket_path: Option<String>,
    pub pci_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// CIDR notation, `10.244.0.2/32`.
    pub address: String,
    pub gateway: Option<String>,
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length, if it parses.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub dst: String,
    pub gw: Option<String>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

/// An ADD result, version-independent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl AddResult {
    /// What podrouter sets up for one pod: the interface, its /32 with the
    /// router as gateway, and the default route through the router.
    pub fn for_pod(
        base: Option<AddResult>,
        ifname: &str,
        mac: &str,
        mtu: u16,
        sandbox: &str,
        ip: Ipv4Addr,
        dns: Dns,
    ) -> AddResult {
        let mut r = base.unwrap_or_default();
        let index = r.interfaces.len();
        r.interfaces.push(Interface {
            name: ifname.to_string(),
            mac: Some(mac.to_string()),
            mtu: Some(u32::from(mtu)),
            sandbox: Some(sandbox.to_string()),
            ..Interface::default()
        });
        r.ips.push(IpConfig {
            address: format!("{ip}/32"),
            gateway: Some(GATEWAY.to_string()),
            interface: Some(index),
        });
        r.routes.push(Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(GATEWAY.to_string()),
            ..Route::default()
        });
        if dns != Dns::default() {
            r.dns = dns;
        }
        r
    }

    /// The result as JSON in the shape of `version`.
    pub fn to_json(&self, version: Version) -> String {
        let v11 = version >= Version::V1_1_0;
        let wire = Wire {
            cni_version: version.as_str(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| WireInterface {
                    name: &i.name,
                    mac: i.mac.as_deref(),
                    mtu: i.mtu.filter(|_| v11),
                    sandbox: i.sandbox.as_deref().filter(|s| !s.is_empty()),
                    socket_path: i.socket_path.as_deref().filter(|_| v11),
                    pci_id: i.pci_id.as_deref().filter(|_| v11),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| WireIp {
                    version: version.ips_have_version().then(|| match ip.ip() {
                        Some(IpAddr::V6(_)) => "6",
                        _ => "4",
                    }),
                    address: &ip.address,
                    gateway: ip.gateway.as_deref(),
                    interface: ip.interface,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| WireRoute {
                    dst: &r.dst,
                    gw: r.gw.as_deref(),
                    mtu: r.mtu.filter(|_| v11),
                    advmss: r.advmss.filter(|_| v11),
                    priority: r.priority.filter(|_| v11),
                    table: r.table.filter(|_| v11),
                    scope: r.scope.filter(|_| v11),
                })
                .collect(),
            dns: &self.dns,
        };
        serde_json::to_string(&wire).expect("result serializes")
    }

    /// Reads a result of any supported version (a prevResult, or a
    /// delegated IPAM plugin's abbreviated result). `what` names it in
    /// errors.
    pub fn from_value(v: &Value, what: &str) -> CniResult<AddResult> {
        let bad = |details: String| {
            CniError::new(Code::Decode, format!("failed to decode {what}"), details)
        };
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("{what} is not a JSON object")))?;
        let str_field =
            |o: &serde_json::Map<String, Value>, k: &str| -> CniResult<Option<String>> {
                match o.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => Err(bad(format!("\"{k}\" must be a string, got {other}"))),
                }
            };
        let uint_field = |o: &serde_json::Map<String, Value>, k: &str| -> CniResult<Option<u64>> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("\"{k}\" must be a whole number, got {v}"))),
            }
        };
        let list = |k: &str| -> CniResult<Vec<serde_json::Map<String, Value>>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|e| {
                        e.as_object()
                            .cloned()
                            .ok_or_else(|| bad(format!("\"{k}\" entries must be objects, got {e}")))
                    })
                    .collect(),
                Some(other) => Err(bad(format!("\"{k}\" must be a list, got {other}"))),
            }
        };
        let u32_of = |x: Option<u64>| x.and_then(|n| u32::try_from(n).ok());
        let mut r = AddResult::default();
        for o in list("interfaces")? {
            r.interfaces.push(Interface {
                name: str_field(&o, "name")?
                    .ok_or_else(|| bad("an interface has no \"name\"".into()))?,
                mac: str_field(&o, "mac")?,
                mtu: u32_of(uint_field(&o, "mtu")?),
                sandbox: str_field(&o, "sandbox")?,
                socket_path: str_field(&o, "socketPath")?,
                pci_id: str_field(&o, "pciID")?,
            });
        }
        for o in list("ips")? {
            let address = str_field(&o, "address")?
                .ok_or_else(|| bad("an \"ips\" entry has no \"address\"".into()))?;
            let ip = IpConfig {
                address,
                gateway: str_field(&o, "gateway")?,
                interface: uint_field(&o, "interface")?.map(|n| n as usize),
            };
            if ip.ip().is_none() || !ip.address.contains('/') {
                return Err(bad(format!(
                    "\"ips\" address {:?} is not an address in CIDR notation",
                    ip.address
                )));
            }
            r.ips.push(ip);
        }
        for o in list("routes")? {
            r.routes.push(Route {
                dst: str_field(&o, "dst")?.ok_or_else(|| bad("a route has no \"dst\"".into()))?,
                gw: str_field(&o, "gw")?,
                mtu: u32_of(uint_field(&o, "mtu")?),
                advmss: u32_of(uint_field(&o, "advmss")?),
                priority: u32_of(uint_field(&o, "priority")?),
                table: u32_of(uint_field(&o, "table")?),
                scope: u32_of(uint_field(&o, "scope")?),
            });
        }
        if let Some(d) = obj.get("dns").filter(|d| !d.is_null()) {
            r.dns = serde_json::from_value(d.clone()).map_err(|e| bad(format!("\"dns\": {e}")))?;
        }
        Ok(r)
    }

    /// The first IPv4 address, with its entry.
    pub fn first_ipv4(&self) -> Option<(Ipv4Addr, &IpConfig)> {
        self.ips.iter().find_map(|c| match c.ip()? {
            IpAddr::V4(a) => Some((a, c)),
            IpAddr::V6(_) => None,
        })
    }

    /// The interface named `ifname` in `sandbox`, with its index.
    pub fn find_interface(
        &self,
        ifname: &str,
        sandbox: Option<&str>,
    ) -> Option<(usize, &Interface)> {
        self.interfaces.iter().enumerate().find(|(_, i)| {
            i.name == ifname
                && match (sandbox, i.sandbox.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    interfaces: Vec<WireInterface<'a>>,
    ips: Vec<WireIp<'a>>,
    routes: Vec<WireRoute<'a>>,
    dns: &'a Dns,
}

#[derive(Serialize)]
struct WireInterface<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
    #[serde(rename = "socketPath", skip_serializing_if = "Option::is_none")]
    socket_path: Option<&'a str>,
    #[serde(rename = "pciID", skip_serializing_if = "Option::is_none")]
    pci_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireIp<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
}

#[derive(Serialize)]
struct WireRoute<'a> {
    dst: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advmss: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<u32>,
}

/// VERSION's answer.
pub fn version_json(cni_version: &str) -> String {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": crate::netconf::SUPPORTED.map(|v| v.as_str()),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> AddResult {
        AddResult::for_pod(
            None,
            "eth0",
            "0a:58:0a:f4:00:02",
            1480,
            "/run/netns/p1",
            Ipv4Addr::new(10, 244, 0, 2),
            Dns::default(),
        )
    }

    #[test]
    fn golden_0_3_0_and_0_3_1_and_0_4_0() {
        let want = |v: &str| {
            format!(
                r#"{{"cniVersion":"{v}","interfaces":[{{"name":"eth0","mac":"0a:58:0a:f4:00:02","sandbox":"/run/netns/p1"}}],"ips":[{{"version":"4","address":"10.244.0.2/32","gateway":"169.254.1.1","interface":0}}],"routes":[{{"dst":"0.0.0.0/0","gw":"169.254.1.1"}}],"dns":{{}}}}"#
            )
        };
        assert_eq!(pod().to_json(Version::V0_3_0), want("0.3.0"));
        assert_eq!(pod().to_json(Version::V0_3_1), want("0.3.1"));
        assert_eq!(pod().to_json(Version::V0_4_0), want("0.4.0"));
    }

    #[test]
    fn golden_1_0_0() {
        assert_eq!(
            pod().to_json(Version::V1_0_0),
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"0a:58:0a:f4:00:02","sandbox":"/run/netns/p1"}],"ips":[{"address":"10.244.0.2/32","gateway":"169.254.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],"dns":{}}"#
        );
    }

    #[test]
    fn golden_1_1_0() {
        assert_eq!(
            pod().to_json(Version::V1_1_0),
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"0a:58:0a:f4:00:02","mtu":1480,"sandbox":"/run/netns/p1"}],"ips":[{"address":"10.244.0.2/32","gateway":"169.254.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],"dns":{}}"#
        );
    }

    #[test]
    fn every_version_reads_back_the_same() {
        for v in crate::netconf::SUPPORTED {
            let json: Value = serde_json::from_str(&pod().to_json(v)).unwrap();
            let mut back = AddResult::from_value(&json, "prevResult").unwrap();
            if v < Version::V1_1_0 {
                back.interfaces[0].mtu = Some(1480);
            }
            assert_eq!(back, pod(), "{}", v.as_str());
        }
    }

    #[test]
    fn chained_result_appends_with_the_right_index() {
        let prev: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"lo","sandbox":"/run/netns/p1"}],
                "ips":[{"address":"127.0.0.1/8","interface":0}],"dns":{"nameservers":["10.0.0.10"]}}"#,
        )
        .unwrap();
        let base = AddResult::from_value(&prev, "prevResult").unwrap();
        let r = AddResult::for_pod(
            Some(base),
            "eth0",
            "m",
            1480,
            "/run/netns/p1",
            Ipv4Addr::new(10, 244, 0, 3),
            Dns::default(),
        );
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.ips[1].interface, Some(1));
        assert_eq!(
            r.dns.nameservers.as_deref(),
            Some(&["10.0.0.10".to_string()][..])
        );
        assert_eq!(
            r.find_interface("eth0", Some("/run/netns/p1")).unwrap().0,
            1
        );
        assert_eq!(r.first_ipv4().unwrap().0, Ipv4Addr::new(127, 0, 0, 1));
    }

    #[test]
    fn ipam_results_of_each_version_parse() {
        // host-local's abbreviated results: no interfaces, no interface index.
        for s in [
            r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.244.0.9/24","gateway":"10.244.0.1"}],"dns":{}}"#,
            r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.244.0.9/24"}],"routes":[{"dst":"0.0.0.0/0"}]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.0.9/24","gateway":"10.244.0.1"}]}"#,
            r#"{"cniVersion":"1.1.0","ips":[{"address":"fd00::9/64"},{"address":"10.244.0.9/24"}],"routes":[{"dst":"0.0.0.0/0","scope":0}]}"#,
        ] {
            let v: Value = serde_json::from_str(s).unwrap();
            let r = AddResult::from_value(&v, "IPAM result").unwrap();
            assert_eq!(
                r.first_ipv4().unwrap().0,
                Ipv4Addr::new(10, 244, 0, 9),
                "{s}"
            );
        }
    }

    #[test]
    fn malformed_results_are_decode_errors() {
        for s in [
            r#"[]"#,
            r#"{"ips":[{"gateway":"1.2.3.4"}]}"#,
            r#"{"ips":[{"address":"10.0.0.1"}]}"#,
            r#"{"ips":[{"address":"banana/3"}]}"#,
            r#"{"ips":"x"}"#,
            r#"{"interfaces":[{"mac":"x"}]}"#,
            r#"{"routes":[{"gw":"1.1.1.1"}]}"#,
        ] {
            let v: Value = serde_json::from_str(s).unwrap();
            assert_eq!(
                AddResult::from_value(&v, "prevResult").unwrap_err().code,
                6,
                "{s}"
            );
        }
    }

    #[test]
    fn ipv6_entries_say_version_6_in_old_shapes() {
        let mut r = pod();
        r.ips.push(IpConfig {
            address: "fd00::2/128".into(),
            gateway: None,
            interface: Some(0),
        });
        let v: Value = serde_json::from_str(&r.to_json(Version::V0_4_0)).unwrap();
        assert_eq!(v["ips"][1]["version"], "6");
    }

    #[test]
    fn version_answer() {
        assert_eq!(
            version_json("1.1.0"),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
    }
}
