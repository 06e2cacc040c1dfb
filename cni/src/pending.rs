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
//! The file format, its directory and which pod an entry may remove are
//! the daemon's contract too: [`podrouter_api::pending`]. Files are
//! written to a temporary name and renamed, so a reader never sees a
//! partial one. Processing: an entry that matches the daemon's pod of its
//! id detaches it; one whose id now belongs to another attachment is
//! dropped; with no pod of that id and its netns still there, a podrouter
//! TAP named `ifname` there is removed (DetachParams with netns+ifname).
//! Then the file is deleted.
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use podrouter_api::PodInfo;

use crate::error::{CniError, CniResult, Code};
use crate::log;
use crate::router::{Router, RouterError};

pub use podrouter_api::pending::PendingDetach;
use podrouter_api::pending::{is_entry, temp_name};

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
    let tmp = dir.join(temp_name(&p.id, std::process::id()));
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
        .filter(|e| is_entry(&e.file_name().to_string_lossy()))
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
            .and_then(|b| PendingDetach::parse(&b).map_err(|e| e.to_string()))
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

    #[test]
    fn write_is_atomic_and_listed() {
        let dir = std::env::temp_dir().join(format!("prcni-pending-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let p = PendingDetach::new("cni:c1:eth0", None, "eth0", None, "n");
        let path = write(&dir, &p).unwrap();
        assert_eq!(path, dir.join("cni:c1:eth0"));
        fs::write(dir.join(".cni:c2:eth0.tmp.1"), "partial").unwrap();
        assert_eq!(list(&dir), vec![path.clone()]);
        let back = PendingDetach::parse(&fs::read(&path).unwrap()).unwrap();
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
