//! The control thread's event loop and the API server: the API socket,
//! the stop signals (SIGTERM, SIGINT) and the reload signal (SIGHUP,
//! handled exactly like the API's `reload`, its outcome logged).
//!
//! Many clients are served at once: each accepted connection gets a
//! thread ([`conn`]) that reads and parses its requests under a deadline
//! and sends each call over a channel to this thread, which owns the
//! [`Daemon`]. It takes every call that is queued, handles them one after
//! the other in memory, makes the batch durable with one write
//! ([`crate::daemon::Daemon::commit`]: group commit) and only then answers
//! them. The slow part of a detach (removing the interface) runs back on
//! the connection's thread once the detach is answered, so the caller
//! does not wait for the kernel, removals overlap, and nothing waits on a
//! client. An attach into a namespace whose old interface is still being
//! removed is held back until that removal is done. A `capture` or `trace`
//! request hands its connection to [`crate::tap_stream`] (on this thread,
//! which arms the tap and starts the stream's own thread).
//!
//! Invariants: the socket is created owner-only (0600) and removed on a
//! clean stop (not after a takeover, [`crate::takeover`], which hands the
//! listener and its backlog to the new daemon); a second daemon on the same socket is refused rather than
//! stealing it; at most [`MAX_CONNECTIONS`] connections are open (more are
//! answered `busy` and closed); no client can delay another's call by
//! more than the calls queued before it; the daemon's state changes only
//! on this thread; no answer leaves before the batch it belongs to is
//! durable; a stop waits (bounded) for the removals in flight; what is
//! refused or timed out is counted in
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

use crate::daemon::{Daemon, InterfaceRemoval, RemovalDone, Uncommitted};

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

/// How long a stop waits for interface removals in flight (a removal
/// waits up to 5 s for its worker, then for the kernel).
const REMOVALS_AT_STOP: Duration = Duration::from_secs(6);

/// Most API connections open at once.
pub const MAX_CONNECTIONS: u64 = 512;

/// Stack of a connection's thread: it parses JSON (serde_json stops at
/// 128 levels of nesting) and does netlink; the daemon's work runs on
/// the control thread.
const CONN_STACK: usize = 512 * 1024;

/// What connection threads ask of the control thread.
pub(crate) enum ToOwner {
    /// Answer `call` (a detach's interface removal first, if it leaves one).
    Call {
        call: Call,
        reply: mpsc::SyncSender<Answer>,
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

/// What the control thread sends back for a call, in this order: at most
/// one removal (at once), then the response (once the call's batch is
/// durable). The channel holds both, so sending never blocks.
pub(crate) enum Answer {
    /// A detach's interface removal, to run once the response is written.
    Removal(InterfaceRemoval),
    /// Boxed: a response is several times a removal's size.
    Response(Box<Response>),
}

/// Room in a call's answer channel: a removal and the response.
pub(crate) const ANSWERS: usize = 2;

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
    let mut held = Held::new();
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
        use std::os::fd::AsRawFd;
        if answer_queued(daemon, &calls, &stats, &mut held, listener.as_raw_fd()) {
            // The socket and its backlog are the new daemon's.
            handed_over = true;
            break 'outer;
        }
    }
    finish_removals(daemon, &calls);
    if !handed_over {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Calls held back until an interface removal in their namespace is done
/// ([`Daemon::waits_for_removal`]), in arrival order.
type Held = Vec<(Call, mpsc::SyncSender<Answer>)>;

/// Handles every message queued on `calls` and every held call that may
/// go now (group commit: one write of the state for all the calls among
/// them), then answers the calls. True when a takeover took the node
/// (`listener` is the API socket it inherits): the caller stops serving.
fn answer_queued(
    daemon: &mut Daemon,
    calls: &mpsc::Receiver<ToOwner>,
    stats: &stats::ApiStats,
    held: &mut Held,
    listener: std::os::fd::RawFd,
) -> bool {
    let mut batch = Batch::default();
    while let Ok(msg) = calls.try_recv() {
        match msg {
            ToOwner::Call { call, reply } if daemon.waits_for_removal(&call) => {
                held.push((call, reply));
            }
            ToOwner::Call { call, reply } => batch.handle(daemon, call, reply, stats),
            ToOwner::Removed(done) => daemon.removal_done(done),
            ToOwner::Stream { call, conn } => {
                if let Err(e) = crate::tap_stream::start(call, conn, daemon) {
                    log::debug!("API client: starting a stream: {e}");
                }
            }
            ToOwner::Takeover { params, conn } => {
                // What was handled so far is made durable and answered
                // first: the new daemon starts from the state file.
                std::mem::take(&mut batch).commit_and_answer(daemon);
                if crate::takeover::give(daemon, listener, conn, params) {
                    return true;
                }
            }
        }
    }
    for (call, reply) in std::mem::take(held) {
        if daemon.waits_for_removal(&call) {
            held.push((call, reply));
        } else {
            batch.handle(daemon, call, reply, stats);
        }
    }
    batch.commit_and_answer(daemon);
    false
}

/// The calls handled since the last commit, and where their answers go.
#[derive(Default)]
struct Batch {
    calls: Vec<Uncommitted>,
    replies: Vec<mpsc::SyncSender<Answer>>,
}

impl Batch {
    fn handle(
        &mut self,
        daemon: &mut Daemon,
        call: Call,
        reply: mpsc::SyncSender<Answer>,
        stats: &stats::ApiStats,
    ) {
        let mut u = daemon.call_uncommitted(call);
        if let Some(Reply::Status(s)) = &mut u.response_mut().result {
            s.api = Some(stats.snapshot());
        }
        if let Some(removal) = u.take_removal() {
            // To the connection's thread, which runs it after the answer.
            if let Err(
                mpsc::TrySendError::Full(Answer::Removal(r))
                | mpsc::TrySendError::Disconnected(Answer::Removal(r)),
            ) = reply.try_send(Answer::Removal(removal))
            {
                // The connection's thread is gone: finish here.
                daemon.removal_done(r.run());
            }
        }
        self.calls.push(u);
        self.replies.push(reply);
    }

    /// Makes the batch durable, then lets every answer go.
    fn commit_and_answer(mut self, daemon: &mut Daemon) {
        if self.calls.is_empty() {
            return;
        }
        daemon.commit(&mut self.calls);
        for (u, reply) in self.calls.into_iter().zip(self.replies) {
            let (resp, _) = u.finish();
            // A client gone meanwhile just misses its answer.
            let _ = reply.try_send(Answer::Response(Box::new(resp)));
        }
    }
}

/// At a stop, waits (at most [`REMOVALS_AT_STOP`]) for the interface
/// removals of answered detaches to finish, so that none is cut short by
/// the exit; calls that arrive meanwhile are dropped (their clients see
/// the daemon stopping).
fn finish_removals(daemon: &mut Daemon, calls: &mpsc::Receiver<ToOwner>) {
    let deadline = std::time::Instant::now() + REMOVALS_AT_STOP;
    while daemon.removals_in_flight() > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match calls.recv_timeout(left) {
            Ok(ToOwner::Removed(done)) => daemon.removal_done(done),
            Ok(_) => {}
            Err(_) => {
                log::warn!(
                    "stopping with {} interface removal(s) unfinished",
                    daemon.removals_in_flight()
                );
                return;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use podrouter_api::{AttachParams, ErrorCode};

    use super::*;
    use crate::daemon::tests::{detach_call, TestNode};

    /// No takeover is asked for in these tests: no listener to hand over.
    const NO_TAKEOVER: std::os::fd::RawFd = -1;

    fn queue(tx: &mpsc::Sender<ToOwner>, call: Call) -> mpsc::Receiver<Answer> {
        let (reply, answer) = mpsc::sync_channel(ANSWERS);
        tx.send(ToOwner::Call { call, reply }).unwrap();
        answer
    }

    fn attach(t: &TestNode, id: &str) -> Call {
        Call::Attach(AttachParams {
            id: id.into(),
            netns: t.netns(id),
            ifname: "eth0".into(),
            ip: None,
            mtu: None,
            identity: None,
        })
    }

    fn response(answer: &mpsc::Receiver<Answer>) -> Response {
        match answer.try_recv() {
            Ok(Answer::Response(r)) => *r,
            Ok(Answer::Removal(_)) => panic!("a removal where the response was due"),
            Err(e) => panic!("no answer: {e}"),
        }
    }

    /// 20 attaches queued at once cost one write of the state, and none is
    /// answered before it; a detach's removal goes out ahead of its
    /// response. When the write fails, no attach of the batch is answered
    /// with success.
    #[test]
    fn queued_calls_are_answered_after_one_write() {
        let mut t = TestNode::new("server-batch");
        let stats = stats::ApiStats::new(MAX_CONNECTIONS);
        let (tx, calls) = mpsc::channel();
        let mut held = Held::new();
        let ids: Vec<String> = (0..20).map(|i| format!("p{i:02}")).collect();
        let answers: Vec<_> = ids.iter().map(|id| queue(&tx, attach(&t, id))).collect();
        let writes = t.d().state_writes();
        assert!(answers.iter().all(|a| a.try_recv().is_err()));
        answer_queued(t.d(), &calls, &stats, &mut held, NO_TAKEOVER);
        assert_eq!(t.d().state_writes(), writes + 1, "one write for the batch");
        assert_eq!(t.snapshot().saved, ids, "every answered pod is on disk");
        for a in &answers {
            assert_eq!(response(a).error, None);
        }

        // A detach beside an attach: the removal first, then the response.
        let det = queue(&tx, detach_call("p00"));
        let att = queue(&tx, attach(&t, "late"));
        answer_queued(t.d(), &calls, &stats, &mut held, NO_TAKEOVER);
        assert_eq!(t.d().state_writes(), writes + 2);
        let Ok(Answer::Removal(removal)) = det.try_recv() else {
            panic!("the detach's removal comes first")
        };
        assert_eq!(response(&det).error, None);
        assert_eq!(response(&att).error, None);
        let done = removal.run();
        t.d().removal_done(done);

        // A batch whose write fails: every attach is refused.
        let tmp = t.dir.join("state").join("state.json.tmp");
        std::fs::create_dir(&tmp).unwrap();
        let failing: Vec<_> = ["x", "y", "z"]
            .iter()
            .map(|id| queue(&tx, attach(&t, id)))
            .collect();
        answer_queued(t.d(), &calls, &stats, &mut held, NO_TAKEOVER);
        std::fs::remove_dir(&tmp).unwrap();
        for a in &failing {
            let e = response(a).error.expect("refused: not durable");
            assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
        }
        assert_eq!(t.snapshot().pods.len(), 20, "x, y, z undone");
    }

    /// An attach into a namespace whose detached pod's interface is still
    /// being removed waits for that removal, then goes through (a second
    /// interface of the same name there would be refused).
    #[test]
    fn an_attach_waits_for_the_removal_in_its_namespace() {
        let mut t = TestNode::new("server-held");
        let stats = stats::ApiStats::new(MAX_CONNECTIONS);
        let (tx, calls) = mpsc::channel();
        let mut held = Held::new();
        assert_eq!(t.attach("old").error, None);
        let det = queue(&tx, detach_call("old"));
        answer_queued(t.d(), &calls, &stats, &mut held, NO_TAKEOVER);
        let Ok(Answer::Removal(removal)) = det.try_recv() else {
            panic!("the detach leaves its removal")
        };
        assert_eq!(response(&det).error, None, "answered before the removal");
        assert_eq!(t.d().removals_in_flight(), 1);
        // Same namespace (TestNode names it after the id), same ifname.
        let again = queue(
            &tx,
            Call::Attach(AttachParams {
                id: "new".into(),
                netns: t.netns("old"),
                ifname: "eth0".into(),
                ip: None,
                mtu: None,
                identity: None,
            }),
        );
        let other = queue(&tx, attach(&t, "elsewhere"));
        answer_queued(t.d(), &calls, &stats, &mut held, NO_TAKEOVER);
        assert_eq!(response(&other).error, None, "other namespaces go on");
        assert!(again.try_recv().is_err(), "held while the removal runs");
        assert_eq!(held.len(), 1);
        tx.send(ToOwner::Removed(removal.run())).unwrap();
        answer_queued(t.d(), &calls, &stats, &mut held, NO_TAKEOVER);
        assert_eq!(response(&again).error, None);
        assert!(held.is_empty());
        assert_eq!(t.d().removals_in_flight(), 0);
        assert_eq!(t.snapshot().pods, vec!["elsewhere", "new"]);
    }
}
