//! The control thread's event loop and the API server: the API socket,
//! the stop signals (SIGTERM, SIGINT) and the reload signal (SIGHUP,
//! handled exactly like the API's `reload`, its outcome logged).
//!
//! Many clients are served at once: each accepted connection gets a
//! thread ([`conn`]) that reads and parses its requests under a deadline
//! and sends each call over a channel to this thread, which owns the
//! [`Daemon`] and answers calls one at a time. The slow part of a detach
//! (removing the interface) runs back on the connection's thread, so
//! detaches overlap and nothing waits on a client. A `capture` or `trace`
//! request hands its connection to [`crate::tap_stream`] (on this thread,
//! which arms the tap and starts the stream's own thread).
//!
//! Invariants: the socket is created owner-only (0600) and removed on a
//! clean stop (not after a takeover, [`crate::takeover`], which hands the
//! listener and its backlog to the new daemon); a second daemon on the same socket is refused rather than
//! stealing it; at most [`MAX_CONNECTIONS`] connections are open (more are
//! answered `busy` and closed); no client can delay another's call by
//! more than the calls queued before it; the daemon's state changes only
//! on this thread; what is refused or timed out is counted in
//! [`stats::ApiStats`], which `status` reports.
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use podrouter_api::{Call, ErrorCode, Reply, Response};

use crate::daemon::{Daemon, InterfaceRemoval, RemovalDone};

mod conn;
pub mod request;
mod stats;

pub use conn::{REQUEST_DEADLINE, WRITE_DEADLINE};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const RELOAD: Token = Token(2);
const CALLS: Token = Token(3);

/// How often the daemon's housekeeping runs when nothing else happens.
const TICK: Duration = Duration::from_secs(1);

/// Most API connections open at once.
pub const MAX_CONNECTIONS: u64 = 512;

/// Stack of a connection's thread: it parses JSON (serde_json stops at
/// 128 levels of nesting) and does netlink; the daemon's work runs on
/// the control thread.
const CONN_STACK: usize = 512 * 1024;

/// What connection threads ask of the control thread.
pub(crate) enum ToOwner {
    /// Answer `call`; the reply may leave an interface removal to run.
    Call {
        call: Call,
        reply: mpsc::SyncSender<(Response, Option<InterfaceRemoval>)>,
    },
    /// A detach's interface removal has run: free what it held.
    Removed(RemovalDone),
    /// A capture or trace: arm it and stream on `conn`.
    Stream { call: Call, conn: StdUnixStream },
    /// `podrouterd --takeover` asks for everything ([`crate::takeover`]).
    Takeover {
        params: podrouter_api::TakeoverParams,
        conn: StdUnixStream,
    },
}

/// A connection thread's way to the control thread.
#[derive(Clone)]
pub(crate) struct Owner {
    tx: mpsc::Sender<ToOwner>,
    waker: Arc<Waker>,
}

impl Owner {
    fn send(&self, msg: ToOwner) -> io::Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| io::Error::other("podrouterd is stopping"))?;
        self.waker.wake()
    }
}

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
    let mut listener = match daemon.take_api_listener() {
        // Taken over with the rest: the same socket, its backlog included.
        Some(fd) => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            UnixListener::from_std(l)
        }
        None => bind(&path)?,
    };
    let mut handed_over = false;
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
    let (tx, calls) = mpsc::channel();
    let owner = Owner {
        tx,
        waker: Arc::new(Waker::new(poll.registry(), CALLS)?),
    };
    let stats = Arc::new(stats::ApiStats::new(MAX_CONNECTIONS));
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
                LISTENER => accept_all(&listener, &owner, &stats),
                _ => {}
            }
        }
        // Whatever woke us, answer every call that is waiting.
        while let Ok(msg) = calls.try_recv() {
            match msg {
                ToOwner::Call { call, reply } => {
                    let (mut resp, removal) = daemon.handle_call(call);
                    if let Some(Reply::Status(s)) = &mut resp.result {
                        s.api = Some(stats.snapshot());
                    }
                    if let Err(mpsc::SendError((_, Some(removal)))) = reply.send((resp, removal)) {
                        // The connection's thread is gone: finish here.
                        daemon.removal_done(removal.run());
                    }
                }
                ToOwner::Removed(done) => daemon.removal_done(done),
                ToOwner::Stream { call, conn } => {
                    if let Err(e) = crate::tap_stream::start(call, conn, daemon) {
                        log::debug!("API client: starting a stream: {e}");
                    }
                }
                ToOwner::Takeover { params, conn } => {
                    use std::os::fd::AsRawFd;
                    if crate::takeover::give(daemon, listener.as_raw_fd(), conn, params) {
                        // The socket and its backlog are the new daemon's.
                        handed_over = true;
                        break 'outer;
                    }
                }
            }
        }
    }
    if !handed_over {
        let _ = std::fs::remove_file(&path);
    }
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

fn accept_all(listener: &UnixListener, owner: &Owner, stats: &Arc<stats::ApiStats>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => start_connection(stream, owner, stats),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                log::warn!("API accept: {e}");
                return;
            }
        }
    }
}

/// Gives an accepted connection its thread, or refuses it when
/// [`MAX_CONNECTIONS`] are open.
fn start_connection(stream: UnixStream, owner: &Owner, stats: &Arc<stats::ApiStats>) {
    // mio hands out non-blocking streams; the connection's thread serves
    // it blocking with deadlines (the fd changes owner, no copy).
    let mut stream = StdUnixStream::from(std::os::fd::OwnedFd::from(stream));
    let Some(open) = stats.admit() else {
        let resp = Response::err(
            ErrorCode::Busy,
            format!("podrouterd serves {MAX_CONNECTIONS} connections at once; try again"),
        );
        // Non-blocking, best effort: a short line fits the socket buffer.
        if let Ok(mut line) = serde_json::to_vec(&resp) {
            line.push(b'\n');
            let _ = stream.write(&line);
        }
        return;
    };
    let (owner, stats) = (owner.clone(), stats.clone());
    let spawned = std::thread::Builder::new()
        .name("podrouter-api".into())
        .stack_size(CONN_STACK)
        .spawn(move || conn::serve(stream, owner, stats, open));
    if let Err(e) = spawned {
        log::warn!("API: cannot start a connection thread: {e}");
    }
}
