//! The pending-detach file: a DEL the CNI plugin could not deliver,
//! left for whoever next reaches podrouterd (the daemon at start, the
//! plugin on its next call). The plugin writes these files, both sides
//! read them; this module is the one definition of the format and of
//! which pod an entry may remove.
//!
//! Directory: `<state_dir>/pending-detach` ([`PENDING_DETACH_DIR`]; the
//! plugin's `pending_dir` must name it). File name: the attachment id
//! (`cni:<containerid>:<ifname>`). Names starting with '.' are a writer's
//! temporary files ([`temp_name`], renamed into place when complete) and
//! are never read. Content (version 1): one JSON object,
//!
//! ```json
//! {"version":1,"id":"cni:ctr1:eth0","netns":"/run/netns/p1","ifname":"eth0",
//!  "ip":"10.244.0.7","network":"podnet","written_unix":1700000000}
//! ```
//!
//! `netns` and `ip` are absent when the DEL did not know them.
//!
//! Invariant: an entry may remove a pod only if [`PendingDetach::matches`]
//! it: same id, and the same netns and address where the entry knows
//! them, so a stale file never removes a newer attachment that reused the
//! id.
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::PodInfo;

/// The directory under the daemon's `state_dir` holding the entries.
pub const PENDING_DETACH_DIR: &str = "pending-detach";

/// The format version writers put in `version`.
pub const FORMAT_VERSION: u32 = 1;

/// One pending detach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDetach {
    #[serde(default = "format_version")]
    pub version: u32,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The CNI network the DEL was for.
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub written_unix: u64,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

impl PendingDetach {
    /// An entry written now.
    pub fn new(
        id: &str,
        netns: Option<&str>,
        ifname: &str,
        ip: Option<Ipv4Addr>,
        network: &str,
    ) -> Self {
        PendingDetach {
            version: FORMAT_VERSION,
            id: id.to_string(),
            netns: netns.map(str::to_string),
            ifname: ifname.to_string(),
            ip,
            network: network.to_string(),
            written_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Parses a file's content.
    pub fn parse(bytes: &[u8]) -> Result<PendingDetach, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether this entry may remove `pod` (see the module's invariant).
    pub fn matches(&self, pod: &PodInfo) -> bool {
        pod.id == self.id
            && self.netns.as_deref().is_none_or(|n| n == pod.netns)
            && self.ip.is_none_or(|ip| ip == pod.ip)
    }
}

/// Whether a file named `name` in the directory is an entry (and not a
/// writer's temporary file).
pub fn is_entry(name: &str) -> bool {
    !name.starts_with('.')
}

/// The temporary name a writer (process `pid`) uses for entry `id`
/// before renaming it into place.
pub fn temp_name(id: &str, pid: u32) -> String {
    format!(".{id}.tmp.{pid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str, netns: &str, ip: [u8; 4]) -> PodInfo {
        PodInfo {
            id: id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::from(ip),
            mac: "0a:58:0a:f4:00:02".into(),
            mtu: 1480,
            port: 1,
            worker: 0,
        }
    }

    #[test]
    fn file_format_is_stable() {
        let mut p = PendingDetach::new(
            "cni:c1:eth0",
            Some("/run/netns/p1"),
            "eth0",
            Some(Ipv4Addr::new(10, 244, 0, 7)),
            "podnet",
        );
        p.written_unix = 1_700_000_000;
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"version":1,"id":"cni:c1:eth0","netns":"/run/netns/p1","ifname":"eth0","ip":"10.244.0.7","network":"podnet","written_unix":1700000000}"#
        );
        let bare = PendingDetach::parse(
            br#"{"version":1,"id":"cni:c1:eth0","ifname":"eth0","network":"n","written_unix":1}"#,
        )
        .unwrap();
        assert_eq!((bare.netns, bare.ip), (None, None));
        let minimal = PendingDetach::parse(br#"{"id":"a","ifname":"eth0"}"#).unwrap();
        assert_eq!(minimal.version, FORMAT_VERSION);
        assert!(PendingDetach::parse(br#"{"id":"a"}"#).is_err());
        assert!(is_entry("cni:c1:eth0") && !is_entry(&temp_name("cni:c1:eth0", 7)));
        assert_eq!(temp_name("x", 7), ".x.tmp.7");
    }

    #[test]
    fn stale_entries_never_match_a_newer_attachment() {
        let e = PendingDetach::new(
            "cni:c1:eth0",
            Some("/run/netns/old"),
            "eth0",
            Some(Ipv4Addr::new(10, 244, 0, 7)),
            "n",
        );
        assert!(e.matches(&pod("cni:c1:eth0", "/run/netns/old", [10, 244, 0, 7])));
        assert!(!e.matches(&pod("cni:c1:eth0", "/run/netns/new", [10, 244, 0, 7])));
        assert!(!e.matches(&pod("cni:c1:eth0", "/run/netns/old", [10, 244, 0, 8])));
        assert!(!e.matches(&pod("cni:c2:eth0", "/run/netns/old", [10, 244, 0, 7])));
        let loose = PendingDetach::new("cni:c1:eth0", None, "eth0", None, "n");
        assert!(loose.matches(&pod("cni:c1:eth0", "/anything", [1, 2, 3, 4])));
    }
}
