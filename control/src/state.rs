//! The persisted state of a node: its pods (and through them, their ports
//! and addresses), in `state_dir/state.json`.
//!
//! Invariants: the file on disk is always a complete, parseable state
//! (written to a temporary file, synced, then renamed over the old one); a
//! file that cannot be parsed is an error, never silently replaced.
//!
//! One daemon per state directory: [`StateStore::open`] takes an exclusive
//! `flock` on `state_dir/lock` (holding our pid, for the message a second
//! daemon prints) and keeps it for the store's life; the kernel drops it
//! when the process ends, so a crash leaves no stale lock. A takeover
//! hands the locked open file itself to the new daemon
//! ([`StateStore::adopt`]), so the lock never lapses between the two.
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The state file's format version (a takeover needs both daemons to
/// read the same).
pub const STATE_VERSION: u32 = 1;

/// One attached pod as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    pub id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub mtu: u16,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    pods: Vec<PodRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory or file cannot be read or written.
    #[error("state {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The state file exists but is not a podrouter state this version reads.
    #[error("state file {path} is unreadable ({why}); move it aside to start empty, or fix it")]
    Corrupt { path: PathBuf, why: String },
    /// Another process holds the state directory's lock.
    #[error("another podrouterd, pid {pid}, holds {}", dir.display())]
    Locked { pid: String, dir: PathBuf },
}

impl StateError {
    /// The same error again (`io::Error` is not `Clone`: its kind and
    /// text are kept), for every call of a batch that one write failed.
    pub fn duplicate(&self) -> StateError {
        match self {
            StateError::Io { path, source } => StateError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            StateError::Corrupt { path, why } => StateError::Corrupt {
                path: path.clone(),
                why: why.clone(),
            },
            StateError::Locked { pid, dir } => StateError::Locked {
                pid: pid.clone(),
                dir: dir.clone(),
            },
        }
    }
}

/// Reads and writes the state file.
pub struct StateStore {
    dir: PathBuf,
    file: PathBuf,
    /// The open lock file: the `flock` lives as long as this does.
    lock: fs::File,
    /// Successful [`StateStore::save`]s so far (how many writes a batch
    /// of calls cost).
    writes: AtomicU64,
}

/// The lock file in the state directory.
const LOCK_FILE: &str = "lock";

impl StateStore {
    /// Opens (creating, mode 0700) the state directory and locks it
    /// (refused with [`StateError::Locked`] while another store holds it).
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        let io_err = |source| StateError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        let lock = Self::lock(dir)?;
        Ok(StateStore {
            dir: dir.to_owned(),
            file: dir.join("state.json"),
            lock,
            writes: AtomicU64::new(0),
        })
    }

    /// Opens the state directory with the lock another podrouterd handed
    /// over (`--takeover`): `lock` must be an open file of
    /// `dir/lock` on which the lock is held (the same open file the old
    /// daemon locked, so the lock never lapses). Writes our pid in it.
    pub fn adopt(dir: &Path, lock: fs::File) -> Result<StateStore, StateError> {
        use std::os::fd::AsFd;
        use std::os::unix::fs::{FileExt, MetadataExt};
        let path = dir.join(LOCK_FILE);
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let ours = fs::metadata(&path).map_err(io_err)?;
        let handed = lock.metadata().map_err(io_err)?;
        if (ours.dev(), ours.ino()) != (handed.dev(), handed.ino()) {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the lock handed over is not this state directory's",
            )));
        }
        // Taking it again through the same open file succeeds at once
        // exactly when that open file holds it.
        if !crate::sys::try_lock_exclusive(lock.as_fd()).map_err(io_err)? {
            return Err(io_err(io::Error::other("the lock handed over is not held")));
        }
        lock.set_len(0).map_err(io_err)?;
        // At offset 0 whatever the shared file offset is.
        lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
            .map_err(io_err)?;
        Ok(StateStore {
            dir: dir.to_owned(),
            file: dir.join("state.json"),
            lock,
            writes: AtomicU64::new(0),
        })
    }

    /// The open lock file (handed over by a takeover).
    pub fn lock_file(&self) -> &fs::File {
        &self.lock
    }

    /// Takes the directory's lock without waiting and writes our pid in
    /// the lock file (only once we hold it).
    fn lock(dir: &Path) -> Result<fs::File, StateError> {
        /// How long a busy lock is retried before it counts as held.
        const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);
        let path = dir.join(LOCK_FILE);
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        use std::os::fd::AsFd;
        // A lock that is busy for a moment is not yet another podrouterd:
        // a predecessor may be exiting (a restart), and a child process
        // forked by another thread of this process holds a copy of every
        // descriptor (and so of a lock we just released) until it execs.
        // Wait briefly before calling it taken.
        let give_up = std::time::Instant::now() + LOCK_PATIENCE;
        let mut locked = crate::sys::try_lock_exclusive(f.as_fd()).map_err(io_err)?;
        while !locked && std::time::Instant::now() < give_up {
            std::thread::sleep(std::time::Duration::from_millis(10));
            locked = crate::sys::try_lock_exclusive(f.as_fd()).map_err(io_err)?;
        }
        if !locked {
            let pid = fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into());
            return Err(StateError::Locked {
                pid,
                dir: dir.to_owned(),
            });
        }
        f.set_len(0).map_err(io_err)?;
        writeln!(f, "{}", std::process::id()).map_err(io_err)?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The persisted pods; empty if no state was ever written.
    pub fn load(&self) -> Result<Vec<PodRecord>, StateError> {
        let text = match fs::read_to_string(&self.file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.file.clone(),
                    source,
                })
            }
        };
        let corrupt = |why: String| StateError::Corrupt {
            path: self.file.clone(),
            why,
        };
        let state: StateFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!(
                "version {} is not {STATE_VERSION}",
                state.version
            )));
        }
        Ok(state.pods)
    }

    /// Replaces the persisted pods atomically.
    pub fn save(&self, pods: &[PodRecord]) -> Result<(), StateError> {
        let tmp = self.dir.join("state.json.tmp");
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let body = serde_json::to_vec_pretty(&StateFile {
            version: STATE_VERSION,
            pods: pods.to_vec(),
        })
        .map_err(|e| io_err(&tmp)(io::Error::other(e)))?;
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.file).map_err(io_err(&self.file))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many times the state was written since this store was opened.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use podrouter_testkit::TempDir;

    #[test]
    fn round_trip_and_empty_start() {
        let tmp = TempDir::new("state");
        let d = tmp.join("state");
        let s = StateStore::open(&d).unwrap();
        assert!(s.load().unwrap().is_empty());
        let pods = vec![PodRecord {
            id: "p1".into(),
            netns: "/run/netns/p1".into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 244, 0, 2),
            mac: [0x0a, 0x58, 10, 244, 0, 2],
            mtu: 1480,
        }];
        s.save(&pods).unwrap();
        drop(s);
        assert_eq!(StateStore::open(&d).unwrap().load().unwrap(), pods);
        assert!(!d.join("state.json.tmp").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let tmp = TempDir::new("state");
        let d = tmp.join("state");
        let s = StateStore::open(&d).unwrap();
        fs::write(s.path(), "{\"version\":1,\"pods\":[{\"id\":").unwrap();
        let e = s.load().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("move it aside"));
        fs::write(s.path(), "{\"version\":9,\"pods\":[]}").unwrap();
        assert!(matches!(s.load(), Err(StateError::Corrupt { .. })));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused_until_the_first_goes() {
        let tmp = TempDir::new("state");
        let d = tmp.join("state");
        let first = StateStore::open(&d).unwrap();
        let e = StateStore::open(&d)
            .err()
            .expect("second open must be refused");
        let text = e.to_string();
        assert!(matches!(e, StateError::Locked { .. }), "{text}");
        assert_eq!(
            text,
            format!(
                "another podrouterd, pid {}, holds {}",
                std::process::id(),
                d.display()
            )
        );
        drop(first);
        assert!(StateStore::open(&d).is_ok());
    }
}
