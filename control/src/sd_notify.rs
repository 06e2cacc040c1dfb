//! systemd's readiness protocol (`Type=notify`): one datagram of
//! `KEY=VALUE` lines to the unix socket named by `$NOTIFY_SOCKET`.
//!
//! Invariants: without `$NOTIFY_SOCKET` (not started by systemd, or a unit
//! of another type) every call is a silent no-op; a failure to send is
//! logged and never stops the daemon (systemd then times the start out,
//! which is the right outcome). The protocol is a single `sendto` on a
//! datagram socket, so it is written here with std rather than a crate.
//! A name starting with `@` is in the abstract namespace, as systemd
//! documents.
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd the daemon is up: pods and routes restored, workers
/// running, API socket accepting.
pub fn ready(pods: usize) {
    send_logged(&format!("READY=1\nSTATUS=serving, {pods} pod(s)\n"));
}

/// Tells systemd the daemon has begun its clean stop.
pub fn stopping() {
    send_logged("STOPPING=1\nSTATUS=stopping\n");
}

fn send_logged(state: &str) {
    match notify(state) {
        Ok(true) => log::debug!("told systemd {}", state.lines().next().unwrap_or("")),
        Ok(false) => {}
        Err(e) => log::warn!("cannot notify systemd: {e}"),
    }
}

/// Sends `state` to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is
/// unset or empty.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET).filter(|v| !v.is_empty()) else {
        return Ok(false);
    };
    let target = target
        .to_str()
        .ok_or_else(|| io::Error::other("NOTIFY_SOCKET is not UTF-8"))?;
    send_to(target, state)?;
    Ok(true)
}

/// Sends one datagram to the notification socket `target` (a path, or
/// `@name` for the abstract namespace).
pub fn send_to(target: &str, state: &str) -> io::Result<()> {
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if target.starts_with('/') => SocketAddr::from_pathname(target)?,
        None => {
            return Err(io::Error::other(format!(
                "NOTIFY_SOCKET {target:?} is neither a path nor @abstract"
            )))
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other("short datagram"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_socket_receives_the_state_as_one_datagram() {
        let dir = podrouter_testkit::TempDir::new("sdnotify");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=x\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x\n");
    }

    #[test]
    fn an_abstract_socket_receives_it_too() {
        let name = format!("podrouter-sdnotify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn a_relative_name_or_a_missing_socket_is_an_error() {
        assert!(send_to("relative", "READY=1\n").is_err());
        assert!(send_to("/nonexistent/podrouter/notify", "READY=1\n").is_err());
    }
}
