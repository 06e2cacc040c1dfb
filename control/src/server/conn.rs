//! One API connection, served on its own thread: it reads request lines
//! under a whole-request deadline, parses them, has the control thread
//! (the daemon's owner) answer each call, writes the response under a
//! deadline, then runs what the answer left to it (a detach's interface
//! removal: the caller does not wait for it). A slow or silent client only ever holds its own thread.
//!
//! Invariants: a request must arrive whole within [`REQUEST_DEADLINE`]
//! of the server starting to wait for it (a trickle does not extend it),
//! and a response must be taken within [`WRITE_DEADLINE`]; otherwise the
//! connection is closed and counted. Each request line gets exactly one
//! response line, except a capture or trace, whose connection is handed
//! to the control thread to arm the tap and start its stream.
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podrouter_api::{Call, ErrorCode, Response, MAX_LINE};

use super::request::{self, FrameError, LineFramer};
use super::stats::{ApiStats, OpenConnection};
use super::{Answer, Owner, ToOwner, ANSWERS};
use crate::daemon::InterfaceRemoval;

/// How long a client may take to send one whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client may take to read one whole response.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Serves `stream` until the client closes it or breaks a rule.
pub(super) fn serve(stream: UnixStream, owner: Owner, stats: Arc<ApiStats>, _open: OpenConnection) {
    if let Err(e) = serve_requests(stream, &owner, &stats) {
        log::debug!("API client: {e}");
    }
}

fn serve_requests(mut stream: UnixStream, owner: &Owner, stats: &ApiStats) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut framer = LineFramer::new(MAX_LINE);
    loop {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let line = match read_request(&mut stream, &mut framer, deadline) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(fail) => {
                let (counter, why) = match &fail {
                    ReadFail::Timeout { partial: false } => (
                        &stats.request_timeouts,
                        "no request arrived in time".to_string(),
                    ),
                    ReadFail::Timeout { partial: true } => (
                        &stats.request_timeouts,
                        format!("the request did not arrive whole within {REQUEST_DEADLINE:?}"),
                    ),
                    ReadFail::TooLong(e) => (&stats.oversized, e.to_string()),
                    ReadFail::Truncated => (
                        &stats.bad_requests,
                        "stream ended in the middle of a request".to_string(),
                    ),
                    ReadFail::Io(e) => return Err(io::Error::new(e.kind(), e.to_string())),
                };
                ApiStats::count(counter);
                let resp = Response::err(ErrorCode::BadRequest, why.clone());
                // Best effort: the client may be gone or not reading.
                let _ = write_response(&mut stream, &resp, Instant::now() + WRITE_DEADLINE);
                return Err(io::Error::new(ErrorKind::InvalidData, why));
            }
        };
        ApiStats::count(&stats.requests);
        let (resp, removal) = match request::parse(&line) {
            Ok(call) if crate::tap_stream::is_stream(&call) => {
                // A capture or trace takes the connection over.
                return owner.send(ToOwner::Stream { call, conn: stream });
            }
            Ok(podrouter_api::Call::Takeover(params)) => {
                // So does a takeover: the descriptors go over it.
                return owner.send(ToOwner::Takeover {
                    params,
                    conn: stream,
                });
            }
            Ok(call) => serve_call(call, owner)?,
            Err(e) => {
                ApiStats::count(&stats.bad_requests);
                (Response::err(e.code, e.message), None)
            }
        };
        let written = write_response(&mut stream, &resp, Instant::now() + WRITE_DEADLINE);
        if let Some(removal) = removal {
            // After the answer, whether or not it got through: the caller
            // does not wait for the kernel, and the removal always runs.
            owner.send(ToOwner::Removed(removal.run()))?;
        }
        if let Err(e) = written {
            if e.kind() == ErrorKind::TimedOut {
                ApiStats::count(&stats.write_timeouts);
            }
            return Err(e);
        }
    }
}

/// Answers one call by the control thread (streams were handed over
/// before: see [`serve_requests`]), with the interface removal a detach
/// leaves to run once the response is written.
fn serve_call(call: Call, owner: &Owner) -> io::Result<(Response, Option<InterfaceRemoval>)> {
    let (reply_tx, reply_rx) = mpsc::sync_channel(ANSWERS);
    owner.send(ToOwner::Call {
        call,
        reply: reply_tx,
    })?;
    let mut removal = None;
    loop {
        match reply_rx.recv() {
            Ok(Answer::Removal(r)) => removal = Some(r),
            Ok(Answer::Response(resp)) => return Ok((*resp, removal)),
            Err(_) => {
                if let Some(r) = removal {
                    let _ = owner.send(ToOwner::Removed(r.run()));
                }
                return Err(io::Error::other("podrouterd is stopping"));
            }
        }
    }
}

#[derive(Debug)]
enum ReadFail {
    /// The deadline passed; `partial`: some of the request had come.
    Timeout {
        partial: bool,
    },
    TooLong(FrameError),
    /// The client closed the connection in the middle of a request.
    Truncated,
    Io(io::Error),
}

/// The next request line, or `None` if the client closed the connection
/// between requests.
fn read_request(
    stream: &mut UnixStream,
    framer: &mut LineFramer,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, ReadFail> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        if let Some(line) = framer.next_line().map_err(ReadFail::TooLong)? {
            return Ok(Some(line));
        }
        let timeout = || ReadFail::Timeout {
            partial: !framer.is_empty(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout());
        }
        stream.set_read_timeout(Some(left)).map_err(ReadFail::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) if framer.is_empty() => return Ok(None),
            Ok(0) => return Err(ReadFail::Truncated),
            Ok(n) => framer.push(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timeout())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
}

/// Writes `resp` as one line, all of it by `deadline`.
fn write_response(stream: &mut UnixStream, resp: &Response, deadline: Instant) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut rest = &line[..];
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(rest) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(ErrorKind::TimedOut.into()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    #[test]
    fn a_trickle_does_not_extend_the_request_deadline() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let trickle = thread::spawn(move || {
            for b in br#"{"version":1,"method":"status"}"# {
                if client.write_all(&[*b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(30));
            }
        });
        let mut framer = LineFramer::new(MAX_LINE);
        let start = Instant::now();
        let r = read_request(&mut server, &mut framer, start + Duration::from_millis(150));
        assert!(
            matches!(r, Err(ReadFail::Timeout { partial: true })),
            "{r:?}"
        );
        let took = start.elapsed();
        assert!(took < Duration::from_millis(400), "gave up after {took:?}");
        drop(server);
        trickle.join().unwrap();
    }

    #[test]
    fn requests_in_one_write_come_out_one_by_one_then_the_close() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"one\ntwo\n").unwrap();
        drop(client);
        let mut framer = LineFramer::new(MAX_LINE);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut next = || read_request(&mut server, &mut framer, deadline).unwrap();
        assert_eq!(next(), Some(b"one".to_vec()));
        assert_eq!(next(), Some(b"two".to_vec()));
        assert_eq!(next(), None);
    }

    #[test]
    fn a_close_in_the_middle_of_a_request_is_told_apart() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"{\"vers").unwrap();
        drop(client);
        let mut framer = LineFramer::new(MAX_LINE);
        let r = read_request(
            &mut server,
            &mut framer,
            Instant::now() + Duration::from_secs(5),
        );
        assert!(matches!(r, Err(ReadFail::Truncated)), "{r:?}");
    }
}
