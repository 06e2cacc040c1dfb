//! DELs that could not reach podrouterd, left for later.
//!
//! A DEL must succeed even when the router is down, without leaking the
//! address. So it leaves one file per attachment in the pending directory
//! (`/var/lib/podrouter/pending-detach/` by default, netconf key
//! `pending_dir`), and whoever next reaches the daemon finishes the job:
//! podrouterd when it starts (before it serves its socket), and this plugin
//! on every later ADD, DEL or GC that reaches the daemon (which covers a DEL
//! that raced the daemon's start).
//!
//! File format (version 1): the file name is the attachment id
//! (`cni:<containerid>:<ifname>`, characters `[A-Za-z0-9._:-]`); names
//! starting with '.' are temporary files of a writer in progress and must
//! be ignored. Content: one JSON object,
//!
//! ```json
//! {"version":1,"id":"cni:ctr1:eth0","netns":"/run/netns/p1","ifname":"eth0",
//!  "ip":"10.244.0.7","network":"podnet","written_unix":1700000000}
//! ```
//!
//! `netns` and `ip` are absent when the DEL did not know them. The
//! processor detaches `id` only if the daemon's pod of that id still has
//! the same netns and ip (where given), so a stale file can never remove a
//! newer attachment that reused the id; if the daemon has no pod of that id
//! and `netns` still exists, it removes a podrouter TAP named `ifname`
//! there (DetachParams with netns+ifname). Then it deletes the file. Files
//! are written to `.<id>.tmp.<pid>` and renamed, so a reader never sees a
//! partial one.
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use podrouter_api::PodInfo;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, CniResult, Code};
use crate::log;
use crate::router::{Router, RouterError};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDetach {
    pub version: u32,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    pub network: String,
    pub written_unix: u64,
}

impl PendingDetach {
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

    /// Whether this entry may remove `pod` (same id, and the same netns and
    /// address where the entry knows them).
    pub fn matches(&self, pod: &PodInfo) -> bool {
        pod.id == self.id
            && self.netns.as_deref().is_none_or(|n| n == pod.netns)
            && self.ip.is_none_or(|ip| ip == pod.ip)
    }
}

/// Writes (atomically) the entry for `p` into `dir`, creating it (0700).
pub fn write(dir: &Path, p: &PendingDetach) -> CniResult<PathBuf> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        CniError::new(
            Code::Io,
            "cannot record the pending detach",
            format!(
                "podrouterd is down and {what} {} failed ({e}); the DEL cannot be completed \
                 now: start podrouterd, or make \"pending_dir\" writable, and retry",
                path.display()
            ),
        )
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("creating", dir, e))?;
    let path = dir.join(&p.id);
    let tmp = dir.join(format!(".{}.tmp.{}", p.id, std::process::id()));
    let body = serde_json::to_vec(p).expect("pending entry serializes");
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(io("writing", &path, e));
    }
    Ok(path)
}

/// Every complete entry file in `dir` (none if it does not exist).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Finishes every pending detach in `dir` through `router`; keeps the
/// entries it could not finish. `pods` is the daemon's current list (fetched
/// here if `None`). Returns how many were finished.
pub fn process(dir: &Path, router: &mut Router, pods: Option<&[PodInfo]>) -> usize {
    let files = list(dir);
    if files.is_empty() {
        return 0;
    }
    let fetched;
    let pods = match pods {
        Some(p) => p,
        None => match router.pods() {
            Ok(p) => {
                fetched = p;
                &fetched[..]
            }
            Err(e) => {
                log::warn(&format!(
                    "pending detaches left for later: {}",
                    e.to_cni("list").details
                ));
                return 0;
            }
        },
    };
    let mut done = 0;
    for f in files {
        let entry = match fs::read(&f)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<PendingDetach>(&b).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(e) => {
                log::warn(&format!(
                    "ignoring pending-detach file {}: {e}",
                    f.display()
                ));
                continue;
            }
        };
        let result = match pods.iter().find(|p| p.id == entry.id) {
            Some(pod) if entry.matches(pod) => {
                router.detach(&entry.id, Some(&pod.netns), Some(&pod.ifname))
            }
            // The id was reused by a newer attachment: the old one is gone.
            Some(_) => Ok(false),
            None => {
                let netns = entry.netns.as_deref().filter(|n| Path::new(n).exists());
                router.detach(&entry.id, netns, netns.map(|_| entry.ifname.as_str()))
            }
        };
        match result {
            Ok(_)
            | Err(RouterError::Refused {
                code: podrouter_api::ErrorCode::NetnsNotFound,
                ..
            }) => {
                let _ = fs::remove_file(&f);
                log::info(&format!("pending detach of {} done", entry.id));
                done += 1;
            }
            Err(e) => {
                log::warn(&format!(
                    "pending detach of {} left for later: {}",
                    entry.id,
                    e.to_cni("detach").details
                ));
                if e.is_down() {
                    break;
                }
            }
        }
    }
    done
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
        let bare: PendingDetach = serde_json::from_str(
            r#"{"version":1,"id":"cni:c1:eth0","ifname":"eth0","network":"n","written_unix":1}"#,
        )
        .unwrap();
        assert_eq!((bare.netns, bare.ip), (None, None));
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

    #[test]
    fn write_is_atomic_and_listed() {
        let dir = std::env::temp_dir().join(format!("prcni-pending-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let p = PendingDetach::new("cni:c1:eth0", None, "eth0", None, "n");
        let path = write(&dir, &p).unwrap();
        assert_eq!(path, dir.join("cni:c1:eth0"));
        fs::write(dir.join(".cni:c2:eth0.tmp.1"), "partial").unwrap();
        assert_eq!(list(&dir), vec![path.clone()]);
        let back: PendingDetach = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, p);
        // Twice is fine (a DEL retried while the router is still down).
        write(&dir, &p).unwrap();
        assert_eq!(list(&dir).len(), 1);
        fs::remove_dir_all(&dir).unwrap();
        assert!(list(&dir).is_empty());
    }

    #[test]
    fn unwritable_dir_is_an_io_error() {
        let p = PendingDetach::new("cni:c1:eth0", None, "eth0", None, "n");
        let e = write(Path::new("/proc/podrouter-cni-test"), &p).unwrap_err();
        assert_eq!(e.code, 5);
    }
}
