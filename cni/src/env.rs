//! The CNI_* environment variables: which are required for which verb, and
//! what a valid value looks like.
use std::collections::HashMap;

use crate::error::{CniError, CniResult, Code};

/// The prefix of every attachment id this plugin gives podrouterd.
pub const ID_PREFIX: &str = "cni:";

/// Longest attachment id podrouterd accepts.
pub const MAX_ID_LEN: usize = 255;

/// The verbs of spec 1.1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The parsed environment of one invocation. Fields a verb does not need
/// are `None` even if set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    /// CNI_PATH split on ':'; empty entries dropped.
    pub path: Vec<String>,
    /// Everything the process got, passed on unchanged to delegated plugins.
    pub all: HashMap<String, String>,
}

fn env_err(details: impl Into<String>) -> CniError {
    CniError::new(
        Code::InvalidEnv,
        "invalid CNI environment variables",
        details,
    )
}

impl Env {
    /// Reads and checks the variables `command` needs. `vars` is the whole
    /// process environment.
    pub fn from_vars(vars: HashMap<String, String>) -> CniResult<Env> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let command = match get("CNI_COMMAND") {
            None => {
                return Err(env_err(
                    "CNI_COMMAND is not set; this is a CNI plugin, run by a container runtime with \
                     CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC and the network configuration on stdin",
                ))
            }
            Some(c) => Command::parse(&c).ok_or_else(|| {
                env_err(format!(
                    "CNI_COMMAND={c:?} is not a CNI verb; expected ADD, DEL, CHECK, VERSION, STATUS or GC"
                ))
            })?,
        };
        let (need_attachment, need_netns) = match command {
            Command::Add | Command::Check => (true, true),
            Command::Del => (true, false),
            Command::Version | Command::Status | Command::Gc => (false, false),
        };
        let mut env = Env {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: get("CNI_ARGS"),
            path: get("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            all: HashMap::new(),
        };
        if need_attachment {
            let mut missing = Vec::new();
            let cid = get("CNI_CONTAINERID");
            let ifname = get("CNI_IFNAME");
            let netns = get("CNI_NETNS");
            if cid.is_none() {
                missing.push("CNI_CONTAINERID");
            }
            if need_netns && netns.is_none() {
                missing.push("CNI_NETNS");
            }
            if ifname.is_none() {
                missing.push("CNI_IFNAME");
            }
            if !missing.is_empty() {
                return Err(env_err(format!(
                    "{} must be set for {}",
                    missing.join(", "),
                    command.as_str()
                )));
            }
            let (cid, ifname) = (cid.unwrap_or_default(), ifname.unwrap_or_default());
            check_container_id(&cid).map_err(|m| env_err(format!("CNI_CONTAINERID: {m}")))?;
            check_ifname(&ifname).map_err(|m| env_err(format!("CNI_IFNAME: {m}")))?;
            let id_len = attach_id(&cid, &ifname).len();
            if id_len > MAX_ID_LEN {
                return Err(env_err(format!(
                    "CNI_CONTAINERID is {} characters; with CNI_IFNAME the attachment id would be \
                     {id_len}, over podrouterd's limit of {MAX_ID_LEN}",
                    cid.len()
                )));
            }
            if let Some(ns) = &netns {
                if !ns.starts_with('/') {
                    return Err(env_err(format!(
                        "CNI_NETNS={ns:?} must be an absolute path to a network namespace \
                         (e.g. /run/netns/NAME or /proc/PID/ns/net)"
                    )));
                }
            }
            env.container_id = Some(cid);
            env.ifname = Some(ifname);
            env.netns = netns;
        }
        env.all = vars;
        Ok(env)
    }

    /// This invocation's attachment id; only for ADD, DEL and CHECK.
    pub fn attach_id(&self) -> String {
        attach_id(
            self.container_id.as_deref().unwrap_or_default(),
            self.ifname.as_deref().unwrap_or_default(),
        )
    }
}

/// `cni:<containerid>:<ifname>`.
pub fn attach_id(container_id: &str, ifname: &str) -> String {
    format!("{ID_PREFIX}{container_id}:{ifname}")
}

/// The (container id, ifname) of an attachment id this plugin made, or
/// `None` for ids made by someone else (podrouterctl, another tool).
pub fn parse_attach_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix(ID_PREFIX)?;
    // Neither a container id nor an interface name may contain ':'.
    let (cid, ifname) = rest.split_once(':')?;
    (check_container_id(cid).is_ok() && check_ifname(ifname).is_ok()).then_some((cid, ifname))
}

/// The spec's rule: an alphanumeric first character, then alphanumerics,
/// '_', '.' or '-'.
pub fn check_container_id(cid: &str) -> Result<(), String> {
    let mut chars = cid.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(format!(
            "{cid:?} is not a valid container id: it must start with a letter or digit, \
             followed by letters, digits, '_', '.' or '-'"
        ))
    }
}

/// Linux's rules for an interface name, as the spec states them (the one
/// rule podrouter applies everywhere).
pub fn check_ifname(name: &str) -> Result<(), String> {
    podrouter_api::check_ifname(name).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_needs_id_netns_ifname() {
        let e = Env::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.attach_id(), "cni:abc:eth0");
        assert_eq!(e.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);

        let err =
            Env::from_vars(vars(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(
            err.details
                .contains("CNI_CONTAINERID, CNI_NETNS must be set for ADD"),
            "{err}"
        );
    }

    #[test]
    fn del_does_not_need_netns() {
        let e = Env::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(e.netns, None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v, want) in [
            ("CNI_COMMAND", "", "CNI_COMMAND is not set"),
            ("CNI_COMMAND", "add", "not a CNI verb"),
            ("CNI_CONTAINERID", "-abc", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "a:b", "CNI_CONTAINERID"),
            ("CNI_IFNAME", "a b", "CNI_IFNAME"),
            ("CNI_IFNAME", "averyveryverylong", "CNI_IFNAME"),
            ("CNI_NETNS", "run/netns/x", "CNI_NETNS"),
        ] {
            let mut m = vars(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_NETNS", "/run/netns/p"),
                ("CNI_IFNAME", "eth0"),
            ]);
            m.insert(k.into(), v.into());
            let e = Env::from_vars(m).unwrap_err();
            assert_eq!(e.code, 4, "{k}={v}");
            assert!(e.details.contains(want), "{k}={v}: {e}");
        }
        let long = "a".repeat(250);
        let e = Env::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", &long),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert!(e.details.contains("over podrouterd's limit"), "{e}");
    }

    #[test]
    fn version_gc_status_need_nothing_else() {
        for c in ["VERSION", "GC", "STATUS"] {
            let e =
                Env::from_vars(vars(&[("CNI_COMMAND", c), ("CNI_IFNAME", "bad name")])).unwrap();
            assert_eq!(e.ifname, None);
        }
    }

    #[test]
    fn attach_ids_round_trip() {
        assert_eq!(
            parse_attach_id("cni:abc-1.2_x:eth0"),
            Some(("abc-1.2_x", "eth0"))
        );
        assert_eq!(parse_attach_id("pod1"), None);
        assert_eq!(parse_attach_id("cni:abc"), None);
        assert_eq!(parse_attach_id("cni::eth0"), None);
        assert_eq!(parse_attach_id("cni:a:b:c"), None);
    }
}
