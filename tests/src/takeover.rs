//! `podrouterd --takeover` on a test node: start the new daemon beside the
//! running one, wait for the old one to hand over and exit; and what a
//! process holds of the node's TAPs.
use std::fs;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::{bin, run_in, wait_timeout, InNetns, Node, Out};

/// What a takeover did.
#[derive(Debug)]
pub struct TakenOver {
    pub old_pid: u32,
    pub new_pid: u32,
    /// The old daemon's exit status.
    pub old_status: ExitStatus,
    /// From starting the new daemon until the old one had exited.
    pub took: Duration,
    /// The old daemon's log (it is kept as `podrouterd.log.N`).
    pub old_log: String,
}

impl Node {
    /// Starts `podrouterd --takeover` with the node's config beside the
    /// running daemon, waits up to 20 s for the old one to exit, then for
    /// the new one to answer `status`. The new daemon logs to the node's
    /// log; the old log is renamed `podrouterd.log.N` (the old daemon keeps
    /// writing to it until it exits).
    #[track_caller]
    pub fn take_over_daemon(&mut self) -> TakenOver {
        let mut old = self.daemon.take().expect("daemon not running");
        let old_pid = old.pid();
        let old_log_path = self.dir.join(&format!("podrouterd.log.{}", self.starts));
        fs::rename(&self.log, &old_log_path).expect("keep the old log");
        self.starts += 1;
        let d = bin("podrouterd");
        let c = self.config.to_string_lossy().into_owned();
        let t = Instant::now();
        let bg = self.ns.spawn(
            "podrouterd --takeover",
            &[&d.to_string_lossy(), "--takeover", "--config", &c],
            Some(&self.log),
        );
        let new_pid = bg.pid();
        self.daemon = Some(bg);
        let old_status = wait_timeout(&mut old.child, Duration::from_secs(20));
        let took = t.elapsed();
        let old_log = fs::read_to_string(&old_log_path).unwrap_or_default();
        let Some(old_status) = old_status else {
            panic!(
                "the old podrouterd did not exit within 20 s of the takeover\nold log:\n{old_log}\n\
                 new log:\n{}",
                self.daemon_log()
            );
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let exited = self
                .daemon
                .as_mut()
                .and_then(|b| b.child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.daemon = None;
                panic!(
                    "the new podrouterd exited with {status}\nold log:\n{old_log}\nnew log:\n{}",
                    self.daemon_log()
                );
            }
            if self.ctl_out(&["status"]).ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new podrouterd does not answer status; log:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TakenOver {
            old_pid,
            new_pid,
            old_status,
            took,
            old_log,
        }
    }

    /// Runs `podrouterd --takeover --config CONFIG` in the node's
    /// namespace to its end (a takeover expected to fail) and returns its
    /// output.
    pub fn run_takeover(&self, config: &Path) -> Out {
        let d = bin("podrouterd");
        run_in(
            self.ns.name(),
            &[
                &d.to_string_lossy(),
                "--takeover",
                "--config",
                &config.to_string_lossy(),
            ],
        )
    }
}

/// The interface names of the TAPs process `pid` holds, sorted: the
/// `iff:` line the tun driver puts in `/proc/PID/fdinfo/N` of each of its
/// descriptors, for every descriptor in `/proc/PID/fd`. (Not the link
/// `ls -l /proc/PID/fd` shows: for descriptors received from a process
/// in another mount namespace, as `ip netns exec` makes, it is not
/// `/dev/net/tun`.) Empty if the process is gone.
pub fn taps_held(pid: u32) -> Vec<String> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = fds
        .flatten()
        .filter_map(|e| {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("iff:"))
                .map(|n| n.trim().to_string())
        })
        .collect();
    names.sort();
    names
}
