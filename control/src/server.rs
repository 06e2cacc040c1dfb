//! The control thread's event loop: the API socket, the stop signals
//! (SIGTERM, SIGINT) and the reload signal (SIGHUP, handled exactly like
//! the API's `reload`, its outcome logged).
//!
//! Invariants: the socket is created owner-only (0600) and removed on a
//! clean stop; a second daemon on the same socket is refused rather than
//! stealing it; one connection is served at a time with a read/write
//! timeout, so no client can stall the loop for long; each request line
//! gets exactly one response line, except that a `capture` or `trace`
//! request hands its connection to [`crate::tap_stream`], which streams on
//! a thread of its own.
use std::io::{self, BufReader, ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use podrouter_api::{read_line, ErrorCode, Request, Response, API_VERSION};

use crate::daemon::Daemon;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const RELOAD: Token = Token(2);

/// How often the daemon's housekeeping runs when nothing else happens.
const TICK: Duration = Duration::from_secs(1);

/// How long a client may take to send a request or read its response.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another process answers on the socket path.
    #[error("another podrouterd is already listening on {0}")]
    InUse(PathBuf),
    #[error("API socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("event loop: {0}")]
    Poll(#[from] io::Error),
}

/// Serves the API until SIGTERM or SIGINT, then removes the socket.
pub fn serve(daemon: &mut Daemon) -> Result<(), ServeError> {
    serve_then(daemon, |_| {})
}

/// [`serve`], calling `ready` once the API socket accepts connections
/// (podrouterd's readiness notification to systemd).
pub fn serve_then(daemon: &mut Daemon, ready: impl FnOnce(&Daemon)) -> Result<(), ServeError> {
    let path = daemon.api_socket().to_owned();
    let mut listener = bind(&path)?;
    let mut poll = Poll::new()?;
    let (sig_read, sig_write) = std::os::unix::net::UnixStream::pair()?;
    sig_read.set_nonblocking(true)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(sig, sig_write.try_clone()?)?;
    }
    let mut sig_read = UnixStream::from_std(sig_read);
    let (hup_read, hup_write) = std::os::unix::net::UnixStream::pair()?;
    hup_read.set_nonblocking(true)?;
    hup_write.set_nonblocking(true)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, hup_write)?;
    let mut hup_read = UnixStream::from_std(hup_read);
    poll.registry()
        .register(&mut hup_read, RELOAD, Interest::READABLE)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut sig_read, SIGNALS, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    ready(daemon);
    'outer: loop {
        daemon.tick();
        if let Err(e) = poll.poll(&mut events, Some(TICK)) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => {
                    log::info!("stop signal received, shutting down");
                    break 'outer;
                }
                RELOAD => {
                    // Several SIGHUPs before we got here are one reload.
                    let mut buf = [0u8; 64];
                    while matches!(io::Read::read(&mut hup_read, &mut buf), Ok(n) if n > 0) {}
                    log::info!("SIGHUP received, reloading the configuration");
                    let _ = daemon.reload();
                }
                LISTENER => accept_all(&listener, daemon),
                _ => {}
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_owned()));
        }
        log::info!("removing stale API socket {}", path.display());
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn accept_all(listener: &UnixListener, daemon: &mut Daemon) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_connection(stream, daemon) {
                    log::debug!("API client: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                log::warn!("API accept: {e}");
                return;
            }
        }
    }
}

/// Answers every request line on one connection until it closes.
fn serve_connection(stream: UnixStream, daemon: &mut Daemon) -> io::Result<()> {
    // mio hands out non-blocking streams; serve this one blocking with
    // timeouts instead (the fd changes owner, no copy).
    let stream = StdUnixStream::from(std::os::fd::OwnedFd::from(stream));
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => {
                let resp = Response::err(ErrorCode::BadRequest, e.to_string());
                let _ = write_response(&mut writer, &resp);
                return Err(e);
            }
        };
        let call = match parse_request(&line) {
            Ok(call) => call,
            Err(resp) => {
                write_response(&mut writer, &resp)?;
                continue;
            }
        };
        if crate::tap_stream::is_stream(&call) {
            // A capture or trace takes the connection over.
            return crate::tap_stream::start(call, writer, daemon);
        }
        write_response(&mut writer, &daemon.handle(call))?;
    }
}

/// The call a request line asks for, or the error response to send.
fn parse_request(line: &str) -> Result<podrouter_api::Call, Box<Response>> {
    // Check the version before the shape, so a newer client learns what is
    // wrong even if its request has fields this daemon does not know.
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return Err(Box::new(Response::err(
                ErrorCode::BadRequest,
                format!("not JSON: {e}"),
            )))
        }
    };
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(API_VERSION) => {}
        Some(v) => {
            return Err(Box::new(Response::err(
                ErrorCode::UnsupportedVersion,
                format!("API version {v} is not supported; this daemon speaks {API_VERSION}"),
            )))
        }
        None => {
            return Err(Box::new(Response::err(
                ErrorCode::BadRequest,
                "request has no numeric \"version\"",
            )))
        }
    }
    serde_json::from_value::<Request>(value)
        .map(|req| req.call)
        .map_err(|e| {
            Box::new(Response::err(
                ErrorCode::BadRequest,
                format!("bad request: {e}"),
            ))
        })
}

fn write_response(w: &mut impl Write, resp: &Response) -> io::Result<()> {
    let mut s = serde_json::to_string(resp).map_err(io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes())
}
