//! Every system call of the control plane that needs `unsafe`: entering and
//! identifying network namespaces.
//!
//! Invariants: this is the only module of the control crate allowed to use
//! `unsafe` (`lib.rs` denies it elsewhere); every `unsafe` block carries a
//! `// SAFETY:` comment. Functions take borrowed descriptors, so the
//! caller's ownership keeps them open for the call, and return the raw OS
//! error (callers add context).
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What kind of file a namespace path turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsKind {
    /// A network namespace (nsfs file of type `CLONE_NEWNET`).
    Net,
    /// A namespace of another type (mount, pid, user, ...).
    OtherNamespace,
    /// Not a namespace file at all (e.g. a stale file under /run/netns whose
    /// bind mount is gone).
    NotNamespace,
}

/// Tells whether `fd` refers to a network namespace.
pub fn ns_kind(fd: BorrowedFd<'_>) -> io::Result<NsKind> {
    // SAFETY: `statfs` is a plain C struct; all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { mem::zeroed() };
    // SAFETY: fstatfs writes one `struct statfs` into `st`, which is
    // exclusively borrowed for the call; `fd` is open for the call.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's integer type differs between architectures; compare as u64.
    if st.f_type as u64 != libc::NSFS_MAGIC as u64 {
        return Ok(NsKind::NotNamespace);
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the namespace
    // type (a CLONE_NEW* flag) as the ioctl's result; no memory is passed.
    let t = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if t < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if t == libc::CLONE_NEWNET {
        NsKind::Net
    } else {
        NsKind::OtherNamespace
    })
}

/// Moves the calling thread (only) into the network namespace `fd` refers
/// to. Sockets the thread creates afterwards belong to that namespace.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag word and touches no caller
    // memory; with CLONE_NEWNET it changes only the calling thread's network
    // namespace, which the callers (netns.rs) confine to a dedicated thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn namespace_files_are_recognised() {
        let net = File::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns_kind(net.as_fd()).unwrap(), NsKind::Net);
        let uts = File::open("/proc/self/ns/uts").unwrap();
        assert_eq!(ns_kind(uts.as_fd()).unwrap(), NsKind::OtherNamespace);
        let plain = File::open("/proc/self/status").unwrap();
        assert_eq!(ns_kind(plain.as_fd()).unwrap(), NsKind::NotNamespace);
    }
}
