//! The network configuration on stdin: this plugin's keys, the protocol's
//! keys, and the checks that turn mistakes into actionable errors.
//!
//! ```json
//! {"cniVersion":"1.1.0","name":"podnet","type":"podrouter-cni",
//!  "router_socket":"/run/podrouter/podrouter.sock","mtu":1480,
//!  "pending_dir":"/var/lib/podrouter/pending-detach",
//!  "ipam":{"type":"host-local", ...}}
//! ```
use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, CniResult, Code};

/// The plugin's name, and the `type` its configuration must carry.
pub const PLUGIN_TYPE: &str = "podrouter-cni";

/// Where DELs that could not reach podrouterd leave their attachment ids.
pub const DEFAULT_PENDING_DIR: &str = "/var/lib/podrouter/pending-detach";

/// Smallest and largest interface MTU podrouterd accepts.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=65_000;

/// A CNI spec version this plugin speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version this plugin accepts, oldest first (VERSION's answer).
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

impl Version {
    pub const LATEST: Version = Version::V1_1_0;

    pub fn parse(s: &str) -> Option<Version> {
        SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Results of 0.3.x and 0.4.0 carry `"version":"4"` in each `ips` entry.
    pub fn ips_have_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// STATUS and GC, and the `mtu` of interfaces, exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    pub fn supported_list() -> String {
        SUPPORTED.map(|v| v.as_str()).join(", ")
    }
}

/// The `ipam` section; only its `type` matters to this plugin, the IPAM
/// plugin reads the rest from the same stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConf {
    pub plugin: String,
}

/// DNS settings, in the configuration and in results.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A parsed and checked network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub router_socket: PathBuf,
    pub mtu: Option<u16>,
    pub pending_dir: PathBuf,
    pub ipam: Option<IpamConf>,
    pub dns: Option<Dns>,
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC only); `None` if absent.
    pub valid_attachments: Option<BTreeSet<Attachment>>,
    /// The configuration as received, for delegated plugins.
    pub raw: Map<String, Value>,
}

/// Keys defined by the spec (or runtimes' conventions) that this plugin
/// accepts and does not act on.
const PROTOCOL_KEYS: &[&str] = &[
    "cniVersions",
    "runtimeConfig",
    "args",
    "capabilities",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
];

fn config_err(details: impl Into<String>) -> CniError {
    CniError::new(
        Code::InvalidConfig,
        "invalid network configuration",
        details,
    )
}

/// The `cniVersion` of a configuration, if it has a supported one: used to
/// label errors even when the rest cannot be parsed.
pub fn sniff_version(stdin: &[u8]) -> Option<Version> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    Version::parse(v.get("cniVersion")?.as_str()?)
}

/// Parses stdin as a JSON object (code 6 if it is not one).
pub fn parse_object(stdin: &[u8]) -> CniResult<Map<String, Value>> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            Code::Decode,
            "failed to decode network configuration",
            "stdin is empty; the runtime must pass the network configuration as JSON on stdin",
        ));
    }
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(CniError::new(
            Code::Decode,
            "failed to decode network configuration",
            format!("expected a JSON object on stdin, got {}", kind(&other)),
        )),
        Err(e) => Err(CniError::new(
            Code::Decode,
            "failed to decode network configuration",
            format!("stdin is not valid JSON: {e}"),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks `cniVersion` alone (code 1 if unsupported, 7 if absent).
pub fn parse_version(m: &Map<String, Value>) -> CniResult<Version> {
    match m.get("cniVersion") {
        None => Err(config_err(format!(
            "\"cniVersion\" is missing; set it to one of {}",
            Version::supported_list()
        ))),
        Some(Value::String(s)) => Version::parse(s).ok_or_else(|| {
            CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "cniVersion {s:?} is not supported; this plugin supports {}",
                    Version::supported_list()
                ),
            )
        }),
        Some(other) => Err(config_err(format!(
            "\"cniVersion\" must be a string such as \"1.1.0\", got {}",
            kind(other)
        ))),
    }
}

fn get_str<'a>(m: &'a Map<String, Value>, key: &str) -> CniResult<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(config_err(format!(
            "\"{key}\" must be a string, got {}",
            kind(other)
        ))),
    }
}

fn abs_path(m: &Map<String, Value>, key: &str, default: &str) -> CniResult<PathBuf> {
    let s = get_str(m, key)?.unwrap_or(default);
    if !s.starts_with('/') {
        return Err(config_err(format!(
            "\"{key}\" must be an absolute path, got {s:?}"
        )));
    }
    Ok(PathBuf::from(s))
}

/// The spec's rule for network names.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    ok.then_some(()).ok_or_else(|| {
        format!(
            "\"name\" {name:?} is not a valid network name: it must start with a letter or \
             digit, followed by letters, digits, '_', '.' or '-'"
        )
    })
}

impl NetConf {
    /// Parses and checks a configuration. `self_names` are the `type`
    /// values accepted (the plugin's name and the executable's file name).
    pub fn parse(stdin: &[u8], self_names: &[&str]) -> CniResult<NetConf> {
        let m = parse_object(stdin)?;
        let version = parse_version(&m)?;
        for (k, v) in &m {
            let known = matches!(
                k.as_str(),
                "cniVersion"
                    | "name"
                    | "type"
                    | "router_socket"
                    | "mtu"
                    | "pending_dir"
                    | "ipam"
                    | "dns"
                    | "prevResult"
                    | "ipMasq"
            ) || PROTOCOL_KEYS.contains(&k.as_str())
                // Reserved (cni.dev/...) and other namespaced keys runtimes add.
                || k.contains('/');
            if !known {
                return Err(CniError::new(
                    Code::UnsupportedField,
                    "unsupported field in network configuration",
                    format!(
                        "\"{k}\": {v} is not a podrouter-cni setting; known settings are \
                         router_socket, mtu, pending_dir, ipam and dns"
                    ),
                ));
            }
        }
        if let Some(v) = m.get("ipMasq") {
            if v != &Value::Bool(false) {
                return Err(CniError::new(
                    Code::UnsupportedField,
                    "unsupported field in network configuration",
                    format!(
                        "\"ipMasq\": {v} is not supported: podrouter routes pod addresses \
                         without NAT; remove the key or set it to false"
                    ),
                ));
            }
        }
        let name = get_str(&m, "name")?
            .ok_or_else(|| config_err("\"name\" (the network name) is missing"))?;
        check_name(name).map_err(config_err)?;
        let ty = get_str(&m, "type")?.ok_or_else(|| {
            config_err(format!("\"type\" is missing; it must be \"{PLUGIN_TYPE}\""))
        })?;
        if !self_names.contains(&ty) {
            return Err(config_err(format!(
                "\"type\" is {ty:?}, but this binary is {PLUGIN_TYPE}; the runtime ran the wrong \
                 plugin, or the configuration names the wrong one"
            )));
        }
        let router_socket = abs_path(&m, "router_socket", podrouter_api::DEFAULT_SOCKET)?;
        let pending_dir = abs_path(&m, "pending_dir", DEFAULT_PENDING_DIR)?;
        let mtu = match m.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    config_err(format!("\"mtu\" must be a whole number, got {v}"))
                })?;
                let mtu = u16::try_from(n)
                    .ok()
                    .filter(|m| MTU_RANGE.contains(m))
                    .ok_or_else(|| {
                        config_err(format!(
                            "\"mtu\" {n} is out of range {}..={}",
                            MTU_RANGE.start(),
                            MTU_RANGE.end()
                        ))
                    })?;
                Some(mtu)
            }
        };
        let ipam = match m.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) if o.is_empty() => None,
            Some(Value::Object(o)) => {
                let plugin = get_str(o, "type")?.ok_or_else(|| {
                    config_err(
                        "\"ipam\" has no \"type\"; name the IPAM plugin (e.g. \"host-local\"), \
                         or remove \"ipam\" to use podrouterd's own IPAM",
                    )
                })?;
                if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
                    return Err(config_err(format!(
                        "\"ipam\".\"type\" {plugin:?} must be a plugin file name, without '/'"
                    )));
                }
                Some(IpamConf {
                    plugin: plugin.to_string(),
                })
            }
            Some(other) => {
                return Err(config_err(format!(
                    "\"ipam\" must be an object, got {}",
                    kind(other)
                )))
            }
        };
        let dns = match m.get("dns") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Dns>(v.clone())
                    .map_err(|e| config_err(format!("\"dns\": {e}")))?,
            ),
        };
        let prev_result = match m.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(config_err(format!(
                    "\"prevResult\" must be an object, got {}",
                    kind(other)
                )))
            }
        };
        let valid_attachments = match m
            .get("cni.dev/valid-attachments")
            .or_else(|| m.get("cni.dev/attachments"))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Vec<Attachment>>(v.clone())
                    .map_err(|e| {
                        config_err(format!(
                            "\"cni.dev/valid-attachments\" must be a list of \
                             {{\"containerID\", \"ifname\"}}: {e}"
                        ))
                    })?
                    .into_iter()
                    .collect(),
            ),
        };
        Ok(NetConf {
            version,
            name: name.to_string(),
            router_socket,
            mtu,
            pending_dir,
            ipam,
            dns,
            prev_result,
            valid_attachments,
            raw: m,
        })
    }

    /// The configuration as it came, re-encoded (for delegated plugins).
    pub fn raw_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.raw).unwrap_or_default()
    }

    /// The configuration without GC's attachment list (for the DELs GC
    /// makes on behalf of stale attachments).
    pub fn raw_json_without_gc_keys(&self) -> Vec<u8> {
        let mut m = self.raw.clone();
        m.remove("cni.dev/valid-attachments");
        m.remove("cni.dev/attachments");
        serde_json::to_vec(&m).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[PLUGIN_TYPE];

    fn parse(s: &str) -> CniResult<NetConf> {
        NetConf::parse(s.as_bytes(), NAMES)
    }

    #[test]
    fn minimal_and_full_configs() {
        let c = parse(r#"{"cniVersion":"1.1.0","name":"podnet","type":"podrouter-cni"}"#).unwrap();
        assert_eq!(c.version, Version::V1_1_0);
        assert_eq!(
            c.router_socket,
            PathBuf::from("/run/podrouter/podrouter.sock")
        );
        assert_eq!(c.pending_dir, PathBuf::from(DEFAULT_PENDING_DIR));
        assert_eq!(
            (c.mtu, c.ipam.clone(), c.prev_result.clone()),
            (None, None, None)
        );

        let c = parse(
            r#"{"cniVersion":"0.3.1","name":"podnet","type":"podrouter-cni",
                "router_socket":"/tmp/x.sock","mtu":1480,"pending_dir":"/tmp/p",
                "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]]},
                "dns":{"nameservers":["10.96.0.10"]},
                "runtimeConfig":{"portMappings":[]},"args":{"cni":{}},"cniVersions":["0.3.1"],
                "disableCheck":false,"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                "prevResult":{"cniVersion":"0.3.1","ips":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.version, Version::V0_3_1);
        assert_eq!(c.mtu, Some(1480));
        assert_eq!(c.ipam.unwrap().plugin, "host-local");
        assert_eq!(c.dns.unwrap().nameservers.unwrap(), vec!["10.96.0.10"]);
        assert!(c.prev_result.is_some());
        let va = c.valid_attachments.unwrap();
        assert_eq!(va.len(), 1);
        assert_eq!(va.iter().next().unwrap().container_id, "a");
    }

    fn code_and(s: &str) -> (u32, String) {
        let e = parse(s).unwrap_err();
        (e.code, e.details)
    }

    #[test]
    fn each_mistake_has_its_code() {
        let (c, d) = code_and("{not json");
        assert_eq!(c, 6, "{d}");
        assert!(d.contains("not valid JSON"));
        assert_eq!(code_and("").0, 6);
        assert_eq!(code_and("[1]").0, 6);

        let (c, d) = code_and(r#"{"cniVersion":"0.2.0","name":"n","type":"podrouter-cni"}"#);
        assert_eq!(c, 1);
        assert!(d.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"), "{d}");
        assert_eq!(code_and(r#"{"name":"n","type":"podrouter-cni"}"#).0, 7);

        let (c, d) = code_and(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#);
        assert_eq!(c, 7);
        assert!(d.contains("\"bridge\""), "{d}");
        assert_eq!(
            code_and(r#"{"cniVersion":"1.0.0","type":"podrouter-cni"}"#).0,
            7
        );
        assert_eq!(
            code_and(r#"{"cniVersion":"1.0.0","name":"-x","type":"podrouter-cni"}"#).0,
            7
        );

        let (c, d) = code_and(
            r#"{"cniVersion":"1.0.0","name":"n","type":"podrouter-cni","router_sokcet":"/x"}"#,
        );
        assert_eq!(c, 2);
        assert!(d.contains("\"router_sokcet\": \"/x\""), "{d}");
        let (c, d) =
            code_and(r#"{"cniVersion":"1.0.0","name":"n","type":"podrouter-cni","ipMasq":true}"#);
        assert_eq!(c, 2);
        assert!(d.contains("\"ipMasq\": true"), "{d}");
        assert!(parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"podrouter-cni","ipMasq":false}"#
        )
        .is_ok());

        for bad in [
            r#""mtu":70000"#,
            r#""mtu":"1480""#,
            r#""mtu":100"#,
            r#""router_socket":"relative.sock""#,
            r#""router_socket":5"#,
            r#""ipam":{"subnet":"10.0.0.0/24"}"#,
            r#""ipam":{"type":"../x"}"#,
            r#""ipam":"host-local""#,
            r#""prevResult":[]"#,
            r#""cni.dev/valid-attachments":[{"id":"x"}]"#,
        ] {
            let s = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"podrouter-cni",{bad}}}"#);
            assert_eq!(parse(&s).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn version_sniffing_and_order() {
        assert_eq!(
            sniff_version(br#"{"cniVersion":"0.4.0"}"#),
            Some(Version::V0_4_0)
        );
        assert_eq!(sniff_version(br#"{"cniVersion":"9.9.9"}"#), None);
        assert_eq!(sniff_version(b"nope"), None);
        assert!(Version::V0_4_0.ips_have_version());
        assert!(!Version::V1_0_0.ips_have_version());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(!Version::V1_0_0.has_status_and_gc());
    }

    #[test]
    fn empty_ipam_means_builtin() {
        let c =
            parse(r#"{"cniVersion":"1.0.0","name":"n","type":"podrouter-cni","ipam":{}}"#).unwrap();
        assert_eq!(c.ipam, None);
    }

    #[test]
    fn gc_keys_are_stripped_for_delegated_dels() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","type":"podrouter-cni","cni.dev/valid-attachments":[]}"#,
        )
        .unwrap();
        let raw: Value = serde_json::from_slice(&c.raw_json_without_gc_keys()).unwrap();
        assert!(raw.get("cni.dev/valid-attachments").is_none());
        assert_eq!(raw["name"], "n");
    }
}
