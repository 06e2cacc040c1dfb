//! `podrouterctl capture` and `trace`: requests whose answer is a stream.
//! The daemon answers with one response line, then a pcapng stream
//! (capture) or trace event lines; this module copies the stream out and
//! says at the end what was captured and what was lost.
//!
//! Stopping: the daemon stops by itself (count, duration); Ctrl-C (SIGINT)
//! or SIGTERM here closes our writing side, which tells the daemon to
//! finish: it writes its last records and the statistics, then closes, so
//! the file is complete either way.
use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use podrouter_api::{
    read_line, Call, CaptureParams, Reply, Request, Response, TapInfo, TraceEvent, TraceParams,
    API_VERSION,
};

/// How often a waiting read looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Capture a port's frames to a pcapng file.
#[derive(clap::Args)]
pub struct CaptureArgs {
    /// A local pod: attach id or address.
    #[arg(long, group = "what")]
    pod: Option<String>,
    /// A port by name (`podrouterctl counters` lists them).
    #[arg(long, group = "what")]
    port: Option<String>,
    /// The uplink (IPIP or VXLAN tunnel port).
    #[arg(long, group = "what")]
    uplink: bool,
    /// Filter: host, net, port, proto (tcp udp icmp ipip vxlan arp) with
    /// and/or/not and parentheses; tunnels' inner headers count too.
    #[arg(long, default_value = "")]
    filter: String,
    /// Stop after this many frames.
    #[arg(long, short = 'c')]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Include frames the router dropped, with their reason as a comment.
    #[arg(long)]
    drops: bool,
    /// Bytes kept of each frame.
    #[arg(long)]
    snaplen: Option<u32>,
    /// The pcapng file to write; `-` streams to standard output
    /// (`| tshark -r -`).
    #[arg(short = 'w', long = "write")]
    write: PathBuf,
}

/// Trace a pod's next frames through the pipeline.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// A local pod: attach id or address.
    #[arg(long)]
    pod: String,
    /// Frames to trace.
    #[arg(long, short = 'c', default_value_t = 1)]
    count: u32,
    /// Only frames matching this filter (as capture's).
    #[arg(long, default_value = "")]
    filter: String,
    /// Give up after this many seconds (the daemon's default: 60).
    #[arg(long)]
    duration: Option<f64>,
}

/// Sets the returned flag on SIGINT or SIGTERM.
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// Connects, sends `call`, reads the response line; what follows on the
/// reader is the stream.
fn open(socket: &Path, call: Call) -> Result<(BufReader<UnixStream>, TapInfo), (ExitCode, String)> {
    let unreachable = |e: io::Error| (ExitCode::from(3), format!("{}: {e}", socket.display()));
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    let mut line = serde_json::to_string(&Request {
        version: API_VERSION,
        call,
    })
    .map_err(|e| (ExitCode::from(2), e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    stream.set_read_timeout(Some(POLL)).map_err(unreachable)?;
    let mut reader = BufReader::new(stream);
    let resp = loop {
        match read_line(&mut reader) {
            Ok(Some(l)) => break l,
            Ok(None) => return Err((ExitCode::from(3), "the daemon closed the connection".into())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(unreachable(e)),
        }
    };
    let resp: Response = serde_json::from_str(&resp)
        .map_err(|e| (ExitCode::from(3), format!("bad response: {e}")))?;
    match (resp.result, resp.error) {
        (_, Some(e)) => Err((ExitCode::from(1), format!("{}: {}", e.code, e.message))),
        (Some(Reply::Capture(i) | Reply::Trace(i)), None) => Ok((reader, i)),
        _ => Err((ExitCode::from(3), "unexpected response".into())),
    }
}

/// Reads from the stream into `buf`; `Ok(0)` at its end. On a stop
/// signal, closes our writing side once (the daemon then finishes).
fn read_some(
    reader: &mut BufReader<UnixStream>,
    buf: &mut [u8],
    stop: &AtomicBool,
    closed: &mut bool,
) -> io::Result<usize> {
    loop {
        if stop.load(Ordering::Relaxed) && !*closed {
            *closed = true;
            let _ = reader.get_ref().shutdown(std::net::Shutdown::Write);
        }
        match reader.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            r => return r,
        }
    }
}

pub fn capture(socket: &Path, a: CaptureArgs) -> ExitCode {
    let call = Call::Capture(CaptureParams {
        pod: a.pod,
        port: a.port,
        uplink: a.uplink,
        filter: a.filter,
        count: a.count,
        duration_secs: a.duration,
        drops: a.drops,
        snaplen: a.snaplen,
    });
    let mut out: Box<dyn Write> = if a.write.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        match File::create(&a.write) {
            Ok(f) => Box::new(io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("podrouterctl: {}: {e}", a.write.display());
                return ExitCode::from(2);
            }
        }
    };
    let stop = stop_flag();
    let (mut reader, info) = match open(socket, call) {
        Ok(x) => x,
        Err((code, msg)) => {
            eprintln!("podrouterctl: {msg}");
            return code;
        }
    };
    eprintln!(
        "podrouterctl: capturing on {} (port {})",
        info.port, info.port_id
    );
    let mut blocks = Blocks::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    loop {
        let n = match read_some(&mut reader, &mut buf, &stop, &mut closed) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                eprintln!("podrouterctl: reading the capture: {e}");
                return ExitCode::from(3);
            }
        };
        blocks.feed(&buf[..n]);
        if let Err(e) = out.write_all(&buf[..n]).and_then(|()| out.flush()) {
            // A reader such as `head` went away: stop the capture.
            if e.kind() != ErrorKind::BrokenPipe {
                eprintln!("podrouterctl: writing {}: {e}", a.write.display());
            }
            return ExitCode::from(1);
        }
    }
    match blocks.end {
        Some(end) => {
            eprintln!(
                "podrouterctl: {} frames captured, {} lost (ring full); {}",
                blocks.packets, end.lost, end.comment
            );
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "podrouterctl: the capture ended without its statistics ({} frames)",
                blocks.packets
            );
            ExitCode::from(1)
        }
    }
}

/// What the daemon's closing interface statistics block says.
struct End {
    lost: u64,
    comment: String,
}

/// Follows the pcapng block framing of the stream: counts packet blocks
/// and reads the closing statistics block.
#[derive(Default)]
struct Blocks {
    pending: Vec<u8>,
    big_endian: bool,
    packets: u64,
    end: Option<End>,
}

impl Blocks {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while self.pending.len() - at >= 12 {
            let b = &self.pending[at..];
            if b[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
                self.big_endian = b[8..12] == [0x1a, 0x2b, 0x3c, 0x4d];
            }
            let len = self.u32(&b[4..8]) as usize;
            if len < 12 {
                // Not pcapng framing: stop counting, keep copying.
                self.pending.clear();
                return;
            }
            if b.len() < len {
                break;
            }
            match self.u32(&b[..4]) {
                6 => self.packets += 1,
                5 => self.end = Some(self.statistics(&b[..len])),
                _ => {}
            }
            at += len;
        }
        self.pending.drain(..at);
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn statistics(&self, block: &[u8]) -> End {
        let mut end = End {
            lost: 0,
            comment: String::new(),
        };
        let u16_at = |b: &[u8]| {
            let b = [b[0], b[1]];
            if self.big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        // type, length, interface id, timestamp (high, low); options up to
        // the trailing length.
        let mut at = 20;
        while at + 4 <= block.len().saturating_sub(4) {
            let code = u16_at(&block[at..]);
            let len = usize::from(u16_at(&block[at + 2..]));
            let Some(value) = block.get(at + 4..at + 4 + len) else {
                break;
            };
            match (code, len) {
                (0, _) => break,
                (1, _) => end.comment = String::from_utf8_lossy(value).into_owned(),
                (5, 8) => {
                    // isb_ifdrop, in the section's byte order.
                    let v: [u8; 8] = value.try_into().unwrap_or_default();
                    end.lost = if self.big_endian {
                        u64::from_be_bytes(v)
                    } else {
                        u64::from_le_bytes(v)
                    };
                }
                _ => {}
            }
            at += 4 + len.div_ceil(4) * 4;
        }
        end
    }
}

pub fn trace(socket: &Path, a: TraceArgs, json: bool) -> ExitCode {
    let call = Call::Trace(TraceParams {
        pod: a.pod,
        count: a.count,
        filter: a.filter,
        duration_secs: a.duration,
    });
    let stop = stop_flag();
    let (mut reader, info) = match open(socket, call) {
        Ok(x) => x,
        Err((code, msg)) => {
            eprintln!("podrouterctl: {msg}");
            return code;
        }
    };
    eprintln!(
        "podrouterctl: tracing {} frame(s) received on {} (port {})",
        a.count, info.port, info.port_id
    );
    let mut line = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = match read_some(&mut reader, &mut buf, &stop, &mut closed) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                eprintln!("podrouterctl: reading the trace: {e}");
                return ExitCode::from(3);
            }
        };
        line.extend_from_slice(&buf[..n]);
        while let Some(i) = line.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = line.drain(..=i).collect();
            let event = serde_json::from_slice::<TraceEvent>(&l);
            if json {
                print!("{}", String::from_utf8_lossy(&l));
            }
            match event {
                Ok(TraceEvent::Frame { .. }) if json => {}
                Ok(TraceEvent::Frame { number, text }) => print!("frame {number}: {text}"),
                Ok(TraceEvent::Done { traced, lost, why }) => {
                    if !json {
                        println!("{traced} frame(s) traced, {lost} lost; stopped: {why}");
                    }
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("podrouterctl: bad trace line: {e}");
                    return ExitCode::from(3);
                }
            }
        }
        let _ = io::stdout().flush();
    }
    eprintln!("podrouterctl: the trace ended without its summary");
    ExitCode::from(1)
}
