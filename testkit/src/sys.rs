//! Every system call of the kit that needs `unsafe`: the effective uid, a
//! private network namespace for the calling thread, signals by pid and
//! the monotonic clock as other processes read it.
use std::io;

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Moves the calling thread (only) into a new, empty network namespace. It
/// lives while a thread, socket or descriptor refers to it; processes this
/// thread spawns afterwards start in it.
pub fn unshare_netns() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches no caller memory; with
    // CLONE_NEWNET it only changes the calling thread's namespace set.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("unshare(CLONE_NEWNET) failed: {e}"),
        ));
    }
    Ok(())
}

/// Sends SIGKILL to `pid` (only ever a process inside a namespace the
/// caller created). True if the signal was delivered.
pub fn kill(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) takes plain integers; a positive pid names exactly one
    // process, and no memory of ours is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) == 0 }
}

/// `CLOCK_MONOTONIC` now, in seconds: the clock every process on the
/// machine shares (Python's `time.monotonic()`), which `Instant` does not
/// expose.
pub fn monotonic_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which outlives
    // the call; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
