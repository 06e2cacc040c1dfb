//! Running code inside another network namespace without moving the
//! caller.
//!
//! A network namespace is per thread: [`run_in_netns`] runs a closure on a
//! dedicated scoped thread that has entered the namespace, so the caller's
//! thread (the control loop) never changes namespace, and nothing that
//! thread creates (sockets, TAP descriptors) depends on where the closure
//! ran. Netlink sockets and TAP descriptors opened inside the closure stay
//! bound to the namespace they were opened in and may be returned and used
//! from any thread.
//!
//! Invariants: the namespace file is opened and checked (it must be an nsfs
//! file of type network) before the thread starts; errors name the path.
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::sys::{self, NsKind};

/// Opens the network namespace file `netns` (e.g. `/run/netns/pod1` or
/// `/proc/PID/ns/net`) and checks that it is one. Errors: `NotFound` if the
/// path does not exist, `InvalidInput` if it is not a network namespace.
pub fn open_netns(netns: &Path) -> io::Result<OwnedFd> {
    let file = File::open(netns).map_err(|e| {
        let msg = if e.kind() == io::ErrorKind::NotFound {
            format!("network namespace {} does not exist", netns.display())
        } else {
            format!("cannot open network namespace {}: {e}", netns.display())
        };
        io::Error::new(e.kind(), msg)
    })?;
    let fd = OwnedFd::from(file);
    let kind = sys::ns_kind(fd.as_fd()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot inspect namespace file {}: {e}", netns.display()),
        )
    })?;
    match kind {
        NsKind::Net => Ok(fd),
        NsKind::OtherNamespace => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a namespace, but not a network namespace",
                netns.display()
            ),
        )),
        NsKind::NotNamespace => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a network namespace (not an nsfs file; stale or unmounted?)",
                netns.display()
            ),
        )),
    }
}

/// Runs `f` on a dedicated thread that has entered the network namespace at
/// `netns`, and returns its result. The calling thread never changes
/// namespace. A panic in `f` is resumed in the caller.
pub fn run_in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let fd = open_netns(netns)?;
    run_in_netns_fd(fd.as_fd(), &netns.display().to_string(), f)
}

/// Like [`run_in_netns`] for a namespace already opened with
/// [`open_netns`]; `label` names it in errors.
pub fn run_in_netns_fd<T: Send>(
    netns: BorrowedFd<'_>,
    label: &str,
    f: impl FnOnce() -> T + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("podrouter-netns".into())
            .spawn_scoped(s, move || {
                sys::setns_net(netns).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot enter network namespace {label}: {e}"),
                    )
                })?;
                Ok(f())
            })
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start a thread for network namespace {label}: {e}"),
                )
            })?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Test support: runs code inside a test kit namespace as if it were the
/// node's (on a thread of its own, through [`run_in_netns`]).
#[cfg(test)]
pub(crate) trait RunIn {
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T;
}

#[cfg(test)]
impl RunIn for podrouter_testkit::Netns {
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in_netns(Path::new(&self.path()), f).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn inode(p: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn own_namespace_via_proc_works_and_caller_stays() {
        if !podrouter_testkit::Needs::new("own_namespace_via_proc_works_and_caller_stays")
            .root()
            .met()
        {
            return;
        }
        let before = inode("/proc/thread-self/ns/net");
        let inside = run_in_netns(Path::new("/proc/self/ns/net"), || {
            inode("/proc/thread-self/ns/net")
        })
        .unwrap();
        assert_eq!(inside, before);
        assert_eq!(inode("/proc/thread-self/ns/net"), before);
    }

    #[test]
    fn missing_and_wrong_files_give_clear_errors() {
        let e = run_in_netns(Path::new("/run/netns/prtest-does-not-exist"), || ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(e.to_string().contains("prtest-does-not-exist"), "{e}");

        let e = run_in_netns(Path::new("/proc/self/status"), || ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a network namespace"), "{e}");

        let e = run_in_netns(Path::new("/proc/self/ns/uts"), || ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a network namespace"), "{e}");
    }

    #[test]
    fn panics_propagate() {
        if !podrouter_testkit::Needs::new("panics_propagate")
            .root()
            .met()
        {
            return;
        }
        let r = std::panic::catch_unwind(|| {
            let _ = run_in_netns(Path::new("/proc/self/ns/net"), || panic!("boom"));
        });
        assert!(r.is_err());
    }
}
