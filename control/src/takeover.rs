//! `podrouterd --takeover`: a new podrouterd (an upgrade, or the same
//! binary) takes the running one's data plane over without losing a
//! packet. The two talk over the API socket; the descriptors travel with
//! `SCM_RIGHTS` ([`crate::sys::send_with_fds`]).
//!
//! The exchange, on one API connection:
//!
//! 1. new -> old: a `takeover` request ([`TakeoverParams`]: protocol and
//!    state format versions, pid, and the config keys the descriptors
//!    depend on, [`essentials`]). The old daemon refuses (an error
//!    response, nothing changed) if any differs or its backend or uplink
//!    cannot be handed over.
//! 2. old: BGP stops as for a graceful restart (learned routes saved, FIB
//!    and kernel routes kept, sessions closed without a NOTIFICATION);
//!    old -> new: the offer ([`TakeoverOffer`]), then the descriptors it
//!    lists, [`sys::MAX_FDS_PER_MESSAGE`] per one-byte message (`.`): the
//!    state directory's lock file, the API listener, the host port, the
//!    uplink's socket, every pod's TAP. The old workers keep forwarding.
//! 3. new: starts on them ([`Daemon::start_adopted`]: state, FIB with the
//!    pods and the saved learned routes, ports) with its workers paused;
//!    new -> old: `ready`.
//! 4. old: pauses its workers (each sends what it received first; frames
//!    arriving from now on wait in the TAPs' and the uplink socket's own
//!    queues); old -> new: `commit`; the old daemon leaves its event loop
//!    without accepting another connection or removing the socket, and
//!    exits. The new one resumes its workers (the queued frames first),
//!    starts BGP (a restarting speaker: peers keep our routes meanwhile)
//!    and serves the API on the same listener, so a client that connects
//!    during the takeover waits in the listener's backlog instead of being
//!    refused. The data plane pauses only for this last round trip.
//!
//! Failure: before `commit` the old daemon owns everything. If the new
//! one refuses, fails to start or closes the connection, or does not say
//! `ready` within [`READY_TIMEOUT`], the old one resumes its workers and
//! BGP and carries on; the new one exits (closing its copies). If the
//! connection ends before `commit` and the old daemon has died, the new
//! one carries on: nobody else reads. Only the old daemon's control
//! thread is held during the exchange (API calls wait).
use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podrouter_api::{
    Call, ErrorCode, Reply, Request, Response, TakeoverOffer, TakeoverParams, API_VERSION, MAX_LINE,
};

use crate::config::Config;
use crate::daemon::{Daemon, Handed, StartError};
use crate::sys;

/// The exchange's version: both daemons must speak the same.
pub const PROTOCOL: u32 = 1;

/// How long the old daemon waits for the new one's `ready` (the new one's
/// whole start: state, FIB, ports), with its data plane paused.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the new daemon waits for the offer (the old one stops BGP
/// first) and then for `commit`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one side waits to write a message.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The config keys the handed-over descriptors depend on, as text: both
/// daemons must agree on them (the rest of the new config applies as a
/// restart with a changed config would).
pub fn essentials(cfg: &Config) -> BTreeMap<String, String> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
    [
        ("state_dir", cfg.state_dir.display().to_string()),
        ("api_socket", cfg.api_socket.display().to_string()),
        ("node_ip", opt(cfg.node_ip.map(|i| i.to_string()))),
        ("dataplane.host_port", cfg.dataplane.host_port.clone()),
        ("dataplane.backend", cfg.dataplane.backend.to_string()),
        ("dataplane.tunnel", cfg.dataplane.tunnel.to_string()),
        ("dataplane.uplink", opt(cfg.dataplane.uplink.clone())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The old daemon's side, on its control thread: answers the takeover
/// request `p` that arrived on `conn`, `api` being the API listener.
/// Returns true once the new daemon has everything and this one must
/// exit (without removing the API socket); false if it carries on.
pub(crate) fn give(daemon: &mut Daemon, api: RawFd, conn: UnixStream, p: TakeoverParams) -> bool {
    log::info!(
        "takeover asked by pid {} (podrouterd {})",
        p.pid,
        p.daemon_version
    );
    if let Some(why) = daemon.takeover_refusal(&p) {
        log::warn!("takeover by pid {}: refused: {why}", p.pid);
        let _ = write_line(&conn, &Response::err(ErrorCode::BadRequest, why));
        return false;
    }
    let asked = Instant::now();
    daemon.stop_bgp_for_handover();
    match hand_over(daemon, api, &conn) {
        Ok(paused) => {
            daemon.handed_over();
            log::info!(
                "handed over to pid {} {:.1} ms after it asked (data plane paused {:.2} ms \
                 until the commit was sent); exiting",
                p.pid,
                asked.elapsed().as_secs_f64() * 1e3,
                paused.elapsed().as_secs_f64() * 1e3
            );
            true
        }
        Err(why) => {
            log::warn!("takeover by pid {} abandoned: {why}; carrying on", p.pid);
            // Best effort: the new daemon may be gone.
            let _ = write_line(&conn, &Response::err(ErrorCode::Internal, why));
            daemon.resume_after_abandoned_handover();
            false
        }
    }
}

/// Steps 2 to 4 once BGP has stopped: offer, descriptors, `ready`, pause,
/// `commit`. Returns when the workers began to pause.
fn hand_over(daemon: &mut Daemon, api: RawFd, conn: &UnixStream) -> Result<Instant, String> {
    let (offer, fds) = daemon.handover_offer(api)?;
    let failed = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| format!("{what}: {e}")
    };
    conn.set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(failed("socket"))?;
    write_line(conn, &Response::ok(Reply::Takeover(offer))).map_err(failed("sending the offer"))?;
    for chunk in fds.chunks(sys::MAX_FDS_PER_MESSAGE) {
        sys::send_with_fds(conn.as_fd(), b".", chunk).map_err(failed("sending descriptors"))?;
    }
    conn.set_read_timeout(Some(READY_TIMEOUT))
        .map_err(failed("socket"))?;
    let line = read_plain_line(conn).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("the new podrouterd did not say ready within {READY_TIMEOUT:?}")
        }
        ErrorKind::UnexpectedEof => {
            "the new podrouterd closed the connection before it was ready (see its log)".into()
        }
        _ => format!("waiting for ready: {e}"),
    })?;
    if line != "ready" {
        return Err(format!("the new podrouterd said {line:?} instead of ready"));
    }
    let paused = Instant::now();
    daemon.pause_workers()?;
    (&*conn)
        .write_all(b"commit\n")
        .map_err(failed("sending commit"))?;
    Ok(paused)
}

/// One short line from `conn` (no descriptors expected), byte by byte so
/// nothing after it is consumed.
fn read_plain_line(mut conn: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match conn.read(&mut b) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(b[0]),
            Ok(_) => return Err(io::Error::new(ErrorKind::InvalidData, "line too long")),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn write_line<T: serde::Serialize>(mut conn: &UnixStream, v: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)
}

/// Why `podrouterd --takeover` did not take over.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("no podrouterd answers on {path}: {source}")]
    NoDaemon { path: PathBuf, source: io::Error },
    #[error("the running podrouterd refused: {0}")]
    Refused(String),
    #[error("exchange with the running podrouterd failed: {0}")]
    Exchange(String),
    #[error("cannot start on what was handed over: {0}; the running podrouterd carries on")]
    Start(#[from] StartError),
    #[error("the running podrouterd (pid {pid}) abandoned the takeover and carries on: {why}")]
    Abandoned { pid: u32, why: String },
    /// After the commit: the old daemon is gone.
    #[error("taken over, but starting the workers or BGP failed: {0}")]
    Finish(StartError),
}

/// The new daemon's side: asks the podrouterd on `cfg.api_socket` to hand
/// over, starts on what it hands over and returns the running daemon
/// (workers forwarding, BGP started); the caller serves the API on the
/// listener it took over ([`Daemon::take_api_listener`]).
pub fn take_over(cfg: Config, config_path: Option<PathBuf>) -> Result<Daemon, TakeoverError> {
    let started = Instant::now();
    let path = cfg.api_socket.clone();
    let conn = UnixStream::connect(&path).map_err(|source| TakeoverError::NoDaemon {
        path: path.clone(),
        source,
    })?;
    let exchange = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| TakeoverError::Exchange(format!("{what}: {e}"))
    };
    conn.set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(exchange("socket"))?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(exchange("socket"))?;
    let request = Request {
        version: API_VERSION,
        call: Call::Takeover(TakeoverParams {
            protocol: PROTOCOL,
            state_version: crate::state::STATE_VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            config: essentials(&cfg),
        }),
    };
    write_line(&conn, &request).map_err(exchange("sending the request"))?;
    let mut rx = FdReader::new(&conn);
    let line = rx.line().map_err(exchange("reading the offer"))?;
    let resp: Response = serde_json::from_slice(&line)
        .map_err(|e| TakeoverError::Exchange(format!("unreadable offer: {e}")))?;
    let offer = match (resp.result, resp.error) {
        (Some(Reply::Takeover(o)), None) => o,
        (_, Some(e)) => return Err(TakeoverError::Refused(e.message)),
        _ => return Err(TakeoverError::Exchange("not an offer".into())),
    };
    let fds = rx
        .fds(offer.fd_count())
        .map_err(exchange("receiving the descriptors"))?;
    let handed = handed(&offer, fds);
    let received = started.elapsed();
    let mut daemon = Daemon::start_adopted(cfg, config_path, handed)?;
    let built = started.elapsed();
    (&conn)
        .write_all(b"ready\n")
        .map_err(exchange("sending ready"))?;
    match rx.line() {
        Ok(l) if l == b"commit" => {}
        Ok(l) => {
            let why = match serde_json::from_slice::<Response>(&l) {
                Ok(Response { error: Some(e), .. }) => e.message,
                _ => String::from_utf8_lossy(&l).into_owned(),
            };
            return Err(TakeoverError::Abandoned {
                pid: offer.pid,
                why,
            });
        }
        Err(e) if process_alive(offer.pid) => {
            return Err(TakeoverError::Abandoned {
                pid: offer.pid,
                why: format!("no commit: {e}"),
            })
        }
        Err(e) => log::warn!(
            "takeover: pid {} exited without a commit ({e}); nothing else reads, carrying on",
            offer.pid
        ),
    }
    daemon.finish_takeover().map_err(TakeoverError::Finish)?;
    log::info!(
        "took over from pid {} (podrouterd {}): {} pod(s); descriptors after {:.1} ms, \
         started {:.1} ms, forwarding {:.1} ms after asking",
        offer.pid,
        offer.daemon_version,
        offer.pods.len(),
        received.as_secs_f64() * 1e3,
        built.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
    );
    Ok(daemon)
}

/// The received descriptors (exactly [`TakeoverOffer::fd_count`]) by
/// what they are, in the offer's order.
fn handed(offer: &TakeoverOffer, fds: Vec<OwnedFd>) -> Handed {
    let mut it = fds.into_iter();
    let mut next = || it.next().expect("fd_count descriptors");
    let lock = std::fs::File::from(next());
    let api = next();
    let host = next();
    let uplink = offer.uplink.then(&mut next);
    let pods = offer.pods.iter().cloned().map(|p| (p, next())).collect();
    Handed {
        lock,
        api,
        host,
        uplink,
        pods,
    }
}

/// Whether process `pid` still runs (a zombie does not).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X")),
        Err(_) => false,
    }
}

/// Reads lines and descriptors from the old daemon: every read is a
/// `recvmsg`, so no descriptor is lost with the bytes it came with.
struct FdReader<'a> {
    conn: &'a UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl<'a> FdReader<'a> {
    fn new(conn: &'a UnixStream) -> FdReader<'a> {
        FdReader {
            conn,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = sys::recv_with_fds(self.conn.as_fd(), &mut chunk, &mut self.fds)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the running podrouterd closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next line, without its newline.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(ErrorKind::InvalidData, "line too long"));
            }
            self.fill()?;
        }
    }

    /// Exactly `count` descriptors, with the one-byte messages that
    /// carried them.
    fn fds(&mut self, count: usize) -> io::Result<Vec<OwnedFd>> {
        while self.fds.len() < count {
            self.fill()?;
        }
        if self.fds.len() > count {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("{} descriptors instead of {count}", self.fds.len()),
            ));
        }
        let markers = count.div_ceil(sys::MAX_FDS_PER_MESSAGE);
        if self.buf.len() < markers || self.buf[..markers].iter().any(|&b| b != b'.') {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "descriptors without their markers",
            ));
        }
        self.buf.drain(..markers);
        Ok(std::mem::take(&mut self.fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodenet::fake::FakeNet;
    use podrouter_api::AttachParams;
    use podrouter_testkit::TempDir;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// A daemon on a fake node with one pod (unprivileged).
    fn daemon(dir: &TempDir) -> Daemon {
        let text = format!(
            "node_name = \"t\"\npod_cidrs = [\"10.244.0.0/28\"]\napi_socket = \"{0}/api.sock\"\n\
             state_dir = \"{0}/state\"\n\n[dataplane]\nworkers = 1\n",
            dir.path().display()
        );
        let path = dir.join("podrouter.toml");
        std::fs::write(&path, text).unwrap();
        let cfg = Config::load(&path).unwrap();
        let mut d = Daemon::start_with(Box::new(FakeNet::default()), cfg, Some(path)).unwrap();
        let netns = dir.join("pod-netns");
        std::fs::write(&netns, "").unwrap();
        let r = d.handle(Call::Attach(AttachParams {
            id: "p1".into(),
            netns: netns.display().to_string(),
            ifname: "eth0".into(),
            ip: None,
            mtu: None,
            identity: None,
        }));
        assert_eq!(r.error, None);
        d
    }

    fn params(cfg: &Config) -> TakeoverParams {
        TakeoverParams {
            protocol: PROTOCOL,
            state_version: crate::state::STATE_VERSION,
            daemon_version: "test".into(),
            pid: 1,
            config: essentials(cfg),
        }
    }

    fn status_ok(d: &mut Daemon) -> bool {
        d.handle(Call::Status).error.is_none()
    }

    /// The old daemon's whole side against a scripted new one: offer,
    /// descriptors in order (the state lock first), ready, commit.
    #[test]
    fn the_old_daemon_hands_everything_over_and_commits() {
        let dir = TempDir::new("takeover-give");
        let mut d = daemon(&dir);
        let api = std::os::unix::net::UnixListener::bind(dir.join("api.sock")).unwrap();
        let (old_end, new_end) = UnixStream::pair().unwrap();
        let lock_ino = std::fs::metadata(dir.join("state").join("lock"))
            .unwrap()
            .ino();
        let new = std::thread::spawn(move || {
            let mut rx = FdReader::new(&new_end);
            let resp: Response = serde_json::from_slice(&rx.line().unwrap()).unwrap();
            let Some(Reply::Takeover(offer)) = resp.result else {
                panic!("not an offer: {resp:?}")
            };
            let fds = rx.fds(offer.fd_count()).unwrap();
            (&new_end).write_all(b"ready\n").unwrap();
            let commit = rx.line().unwrap();
            (offer, fds, commit)
        });
        let p = params(d.config());
        assert!(give(&mut d, api.as_raw_fd(), old_end, p));
        let (offer, fds, commit) = new.join().unwrap();
        assert_eq!(commit, b"commit");
        assert_eq!(offer.pid, std::process::id());
        assert!(!offer.uplink);
        assert_eq!(offer.pods.len(), 1);
        assert_eq!(
            (offer.pods[0].id.as_str(), offer.pods[0].ifname.as_str()),
            ("p1", "eth0")
        );
        assert_eq!(fds.len(), 4);
        let lock = std::fs::File::from(fds.into_iter().next().unwrap());
        assert_eq!(lock.metadata().unwrap().ino(), lock_ino);
        d.shutdown();
    }

    /// A new daemon that goes away after the descriptors, or one that is
    /// refused, leaves the old one running: its workers resume and it
    /// answers calls.
    #[test]
    fn an_abandoned_or_refused_takeover_leaves_the_old_daemon_running() {
        let dir = TempDir::new("takeover-abandon");
        let mut d = daemon(&dir);
        let api = std::os::unix::net::UnixListener::bind(dir.join("api.sock")).unwrap();
        let (old_end, new_end) = UnixStream::pair().unwrap();
        let new = std::thread::spawn(move || {
            let mut rx = FdReader::new(&new_end);
            let resp: Response = serde_json::from_slice(&rx.line().unwrap()).unwrap();
            let Some(Reply::Takeover(offer)) = resp.result else {
                panic!("not an offer: {resp:?}")
            };
            rx.fds(offer.fd_count()).unwrap().len()
            // Dropping the connection here: no ready.
        });
        let p = params(d.config());
        assert!(!give(&mut d, api.as_raw_fd(), old_end, p.clone()));
        assert_eq!(new.join().unwrap(), 4);
        assert!(status_ok(&mut d));

        // Refused: another host port; the new side reads the reason.
        let (old_end, new_end) = UnixStream::pair().unwrap();
        let mut other = p;
        other
            .config
            .insert("dataplane.host_port".into(), "elsewhere0".into());
        assert!(!give(&mut d, api.as_raw_fd(), old_end, other));
        let mut rx = FdReader::new(&new_end);
        let resp: Response = serde_json::from_slice(&rx.line().unwrap()).unwrap();
        let e = resp.error.expect("refused");
        assert!(
            e.message
                .contains("dataplane.host_port (podrouter0 here, elsewhere0 there)"),
            "{e:?}"
        );
        assert!(status_ok(&mut d));
        // A pod attaches after both: the workers took the port.
        let netns = dir.join("pod2-netns");
        std::fs::write(&netns, "").unwrap();
        let r = d.handle(Call::Attach(AttachParams {
            id: "p2".into(),
            netns: netns.display().to_string(),
            ifname: "eth0".into(),
            ip: None,
            mtu: None,
            identity: None,
        }));
        assert_eq!(r.error, None);
        d.shutdown();
    }

    #[test]
    fn a_running_process_is_alive_and_a_missing_one_is_not() {
        assert!(process_alive(std::process::id()));
        // Above the kernel's pid_max limit (4194304).
        assert!(!process_alive(4_194_305));
    }

    #[test]
    fn essentials_name_what_the_descriptors_depend_on() {
        let cfg = Config::default();
        let e = essentials(&cfg);
        assert_eq!(e["dataplane.backend"], "tap");
        assert_eq!(e["dataplane.tunnel"], "ipip");
        assert_eq!(e["dataplane.host_port"], cfg.dataplane.host_port);
        let mut other = cfg.clone();
        other.dataplane.host_port = "elsewhere0".into();
        assert_ne!(essentials(&other), e);
    }
}
