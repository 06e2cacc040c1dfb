//! Capture and trace over the API socket: a `capture` or `trace` request
//! takes its connection over. The control thread checks the request, arms
//! the tap and answers with one response line; a thread of the stream's
//! own then drains the workers' rings and writes what they hold (a pcapng
//! stream for a capture, [`TraceEvent`] lines for a trace) until the tap
//! stops.
//!
//! Invariants: the control thread never waits for a stream (arming is a
//! pointer swap; the thread owns the connection); every way a stream ends
//! (count reached, duration over, the client closed its writing side or
//! went away, a write failed) disarms the tap, so the workers go back to
//! their one check per round; frames the rings could not keep are reported
//! at the end (the pcapng interface statistics' `ifdrop`, the trace's
//! `lost`).
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use podrouter_api::{
    Call, CaptureParams, ErrorCode, Reply, Response, TapInfo, TraceEvent, TraceParams,
};
use podrouter_router::capture::{
    CaptureSession, CaptureSpec, Direction, Filter, Record, Taps, TraceRecord, TraceSession,
    TraceStep, DEFAULT_SNAPLEN, MAX_SNAPLEN,
};
use podrouter_router::clock;
use podrouter_router::fib::NextHop;
use podrouter_router::port::{PortId, PortTable};

use crate::daemon::Daemon;

/// How often a stream drains the rings (and notices its client left).
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How long a trace waits for its frames unless told otherwise.
const DEFAULT_TRACE_SECS: f64 = 60.0;
/// Longest capture or trace duration accepted (a day).
const MAX_SECS: f64 = 86_400.0;
/// Most frames one trace may ask for.
const MAX_TRACE_COUNT: u32 = 10_000;

/// Whether `call` streams (and so takes its connection over).
pub fn is_stream(call: &Call) -> bool {
    matches!(call, Call::Capture(_) | Call::Trace(_))
}

/// Arms the capture or trace `call` asks for and starts its stream on
/// `conn`, or answers with the error.
pub fn start(call: Call, mut conn: UnixStream, daemon: &Daemon) -> io::Result<()> {
    let started = match call {
        Call::Capture(p) => start_capture(p, &conn, daemon),
        Call::Trace(p) => start_trace(p, &conn, daemon),
        _ => Err(refused(ErrorCode::BadRequest, "not a stream")),
    };
    match started {
        Ok(()) => Ok(()),
        Err((code, msg)) => write_line(&mut conn, &Response::err(code, msg)),
    }
}

/// Why a stream was refused: the error response's code and message.
type Refused = (ErrorCode, String);

fn refused(code: ErrorCode, msg: impl Into<String>) -> Refused {
    (code, msg.into())
}

fn bad(msg: impl Into<String>) -> Refused {
    refused(ErrorCode::BadRequest, msg)
}

fn duration(secs: Option<f64>) -> Result<Option<Duration>, Refused> {
    match secs {
        None => Ok(None),
        Some(s) if s > 0.0 && s <= MAX_SECS => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(bad(format!(
            "duration {s} s is not within 0 (excluded) and {MAX_SECS}"
        ))),
    }
}

fn start_capture(p: CaptureParams, conn: &UnixStream, daemon: &Daemon) -> Result<(), Refused> {
    let port = daemon
        .tap_port(p.pod.as_deref(), p.port.as_deref(), p.uplink)
        .map_err(|e| refused(ErrorCode::NotFound, e))?;
    let filter = Filter::parse(&p.filter).map_err(|e| bad(e.to_string()))?;
    let snaplen = match p.snaplen {
        None => DEFAULT_SNAPLEN,
        Some(n) if n >= 1 && n as usize <= MAX_SNAPLEN => n as usize,
        Some(n) => return Err(bad(format!("snaplen {n} is not within 1..={MAX_SNAPLEN}"))),
    };
    if p.count == Some(0) {
        return Err(bad("count must be at least 1"));
    }
    let limit = Limit {
        count: p.count,
        deadline: duration(p.duration_secs)?.map(|d| Instant::now() + d),
    };
    let spec = CaptureSpec {
        port: port.id,
        filter,
        drops: p.drops,
        snaplen,
    };
    let session = Arc::new(CaptureSession::new(spec, daemon.worker_count()));
    let taps = daemon.taps().clone();
    let armed = Armed::capture(taps, session).map_err(|e| refused(ErrorCode::AlreadyExists, e))?;
    let info = TapInfo {
        port: port.name,
        port_id: port.id.0,
        filter: p.filter,
    };
    // The response line, then nothing but pcapng.
    let mut conn = clone(conn)?;
    write_line(&mut conn, &Response::ok(Reply::Capture(info.clone())))
        .map_err(|e| refused(ErrorCode::Internal, e.to_string()))?;
    log::info!("capture on {} ({}) started", info.port, info.filter);
    spawn("podrouter-capture", move || {
        let why = capture_stream(conn, &armed, &info, snaplen, limit);
        log::info!("capture on {} stopped: {why}", info.port);
    })
}

fn start_trace(p: TraceParams, conn: &UnixStream, daemon: &Daemon) -> Result<(), Refused> {
    let port = daemon
        .tap_port(Some(&p.pod), None, false)
        .map_err(|e| refused(ErrorCode::NotFound, e))?;
    let filter = Filter::parse(&p.filter).map_err(|e| bad(e.to_string()))?;
    if p.count == 0 || p.count > MAX_TRACE_COUNT {
        return Err(bad(format!("count must be within 1..={MAX_TRACE_COUNT}")));
    }
    let limit = Limit {
        count: Some(p.count.into()),
        deadline: Some(
            Instant::now()
                + duration(p.duration_secs)?.unwrap_or(Duration::from_secs_f64(DEFAULT_TRACE_SECS)),
        ),
    };
    let session = Arc::new(TraceSession::new(
        port.id,
        filter,
        p.count,
        daemon.worker_count(),
    ));
    let taps = daemon.taps().clone();
    let armed = Armed::trace(taps, session).map_err(|e| refused(ErrorCode::AlreadyExists, e))?;
    let info = TapInfo {
        port: port.name,
        port_id: port.id.0,
        filter: p.filter,
    };
    let mut conn = clone(conn)?;
    write_line(&mut conn, &Response::ok(Reply::Trace(info.clone())))
        .map_err(|e| refused(ErrorCode::Internal, e.to_string()))?;
    let ports = daemon.port_table().clone();
    spawn("podrouter-trace", move || {
        let why = trace_stream(conn, &armed, &ports, limit);
        log::info!("trace on {} stopped: {why}", info.port);
    })
}

fn clone(conn: &UnixStream) -> Result<UnixStream, Refused> {
    conn.try_clone()
        .map_err(|e| refused(ErrorCode::Internal, e.to_string()))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), Refused> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| refused(ErrorCode::Internal, format!("cannot start the stream: {e}")))
}

fn write_line(w: &mut impl Write, v: &impl serde::Serialize) -> io::Result<()> {
    let mut s = serde_json::to_string(v).map_err(io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes())
}

/// When a stream stops by itself.
#[derive(Clone, Copy)]
struct Limit {
    count: Option<u64>,
    deadline: Option<Instant>,
}

/// An armed tap, disarmed when dropped (whatever ends the stream).
enum Armed {
    Capture(Arc<Taps>, Arc<CaptureSession>),
    Trace(Arc<Taps>, Arc<TraceSession>),
}

impl Armed {
    fn capture(taps: Arc<Taps>, s: Arc<CaptureSession>) -> Result<Armed, String> {
        taps.arm_capture(s.clone()).map_err(|e| e.to_string())?;
        Ok(Armed::Capture(taps, s))
    }

    fn trace(taps: Arc<Taps>, s: Arc<TraceSession>) -> Result<Armed, String> {
        taps.arm_trace(s.clone()).map_err(|e| e.to_string())?;
        Ok(Armed::Trace(taps, s))
    }

    fn disarm(&self) {
        match self {
            Armed::Capture(t, s) => t.disarm_capture(s),
            Armed::Trace(t, s) => t.disarm_trace(s),
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Waits up to [`DRAIN_EVERY`] for the client; `Err(why)` once it closed
/// its writing side or went away (anything it sends is ignored).
fn client_still_there(conn: &mut UnixStream) -> Result<(), &'static str> {
    let mut buf = [0u8; 256];
    match conn.read(&mut buf) {
        Ok(0) => Err("the client closed the stream"),
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) =>
        {
            Ok(())
        }
        Err(_) => Err("the client went away"),
    }
}

/// Wall-clock time of a worker's monotonic timestamp.
struct WallClock {
    mono0: u64,
    wall0: Duration,
}

impl WallClock {
    fn now() -> WallClock {
        WallClock {
            mono0: clock::now_ns(),
            wall0: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    fn at(&self, mono_ns: u64) -> Duration {
        if mono_ns >= self.mono0 {
            self.wall0 + Duration::from_nanos(mono_ns - self.mono0)
        } else {
            self.wall0
                .saturating_sub(Duration::from_nanos(self.mono0 - mono_ns))
        }
    }
}

/// Takes every record the workers filled, oldest first.
fn drain(session: &CaptureSession) -> Vec<(usize, Box<Record>)> {
    let mut out = Vec::new();
    for (w, ring) in session.rings().iter().enumerate() {
        while let Some(r) = ring.next() {
            out.push((w, r));
        }
    }
    out.sort_by_key(|(_, r)| r.ts_ns);
    out
}

fn capture_stream(
    conn: UnixStream,
    armed: &Armed,
    info: &TapInfo,
    snaplen: usize,
    limit: Limit,
) -> String {
    let Armed::Capture(_, session) = armed else {
        return "not a capture".into();
    };
    let mut reader = match conn.try_clone() {
        Ok(r) => r,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = reader.set_read_timeout(Some(DRAIN_EVERY)) {
        return e.to_string();
    }
    let clock = WallClock::now();
    let mut w = match PcapNgWriter::new(BufWriter::new(conn)) {
        Ok(w) => w,
        Err(e) => return format!("writing the pcapng header: {e}"),
    };
    let idb = InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: snaplen as u32,
        options: vec![
            InterfaceDescriptionOption::IfName(info.port.clone().into()),
            InterfaceDescriptionOption::IfDescription(
                format!("podrouter port {} (filter: {})", info.port_id, info.filter).into(),
            ),
            // Nanosecond timestamps (what the EPB writer stores).
            InterfaceDescriptionOption::IfTsResol(9),
        ],
    };
    if let Err(e) = w.write_pcapng_block(idb) {
        return format!("writing the interface block: {e}");
    }
    let mut written = 0u64;
    let mut stop = None;
    let mut finishing = false;
    loop {
        let records = drain(session);
        for (worker, r) in records {
            let keep = limit.count.is_none_or(|c| written < c);
            if keep && stop.is_none() {
                match write_record(&mut w, &clock, &r) {
                    Ok(()) => written += 1,
                    Err(e) => stop = Some(format!("writing to the client: {e}")),
                }
            }
            session.rings()[worker].give_back(r);
        }
        if stop.is_none() {
            if let Err(e) = w.get_mut().flush() {
                stop = Some(format!("writing to the client: {e}"));
            }
        }
        if finishing {
            break;
        }
        if stop.is_none() {
            if limit.count.is_some_and(|c| written >= c) {
                stop = Some(format!("{written} frames captured"));
            } else if limit.deadline.is_some_and(|d| Instant::now() >= d) {
                stop = Some("duration over".into());
            } else if let Err(why) = client_still_there(&mut reader) {
                stop = Some(why.into());
            }
        }
        if stop.is_some() {
            // Frames a worker copied in the round it was disarmed in are
            // written too (up to the count), then the statistics.
            armed.disarm();
            std::thread::sleep(DRAIN_EVERY);
            finishing = true;
        }
    }
    let why = stop.unwrap_or_default();
    let lost = session.lost();
    let now = clock.at(clock::now_ns()).as_nanos() as u64;
    let isb = InterfaceStatisticsBlock {
        interface_id: 0,
        timestamp: now,
        options: vec![
            InterfaceStatisticsOption::IsbStartTime(clock.wall0.as_nanos() as u64),
            InterfaceStatisticsOption::IsbEndTime(now),
            InterfaceStatisticsOption::IsbIfDrop(lost),
            InterfaceStatisticsOption::Comment(
                format!(
                    "podrouter: {written} frames written, {lost} lost (ring full); stopped: {why}"
                )
                .into(),
            ),
        ],
    };
    let _ = w.write_pcapng_block(isb);
    let _ = w.get_mut().flush();
    if let Ok(conn) = w.into_inner().into_inner() {
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    format!("{why}; {written} frames written, {lost} lost")
}

fn write_record(
    w: &mut PcapNgWriter<BufWriter<UnixStream>>,
    clock: &WallClock,
    r: &Record,
) -> Result<(), pcap_file::PcapError> {
    // epb_flags bits 0-1: 01 inbound, 10 outbound.
    let flags = match r.direction {
        Direction::In => 1,
        Direction::Out => 2,
    };
    let mut options = vec![EnhancedPacketOption::Flags(flags)];
    if let Some(reason) = r.drop {
        options.push(EnhancedPacketOption::Comment(
            format!("dropped: {}", reason.name()).into(),
        ));
    }
    w.write_pcapng_block(EnhancedPacketBlock {
        interface_id: 0,
        timestamp: clock.at(r.ts_ns),
        original_len: r.orig_len,
        data: r.data.as_slice().into(),
        options,
    })
    .map(|_| ())
}

fn trace_stream(
    mut conn: UnixStream,
    armed: &Armed,
    ports: &ArcSwap<PortTable>,
    limit: Limit,
) -> String {
    let Armed::Trace(_, session) = armed else {
        return "not a trace".into();
    };
    let mut reader = match conn.try_clone() {
        Ok(r) => r,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = reader.set_read_timeout(Some(DRAIN_EVERY)) {
        return e.to_string();
    }
    let want = limit.count.unwrap_or(1) as u32;
    let mut traced = 0u32;
    let why = loop {
        let mut records = Vec::new();
        for (w, ring) in session.rings().iter().enumerate() {
            while let Some(r) = ring.next() {
                records.push((w, r));
            }
        }
        records.sort_by_key(|(_, r)| r.ts_ns);
        let table = ports.load();
        let mut failed = None;
        for (w, r) in records {
            traced += 1;
            let event = TraceEvent::Frame {
                number: traced,
                text: describe(&r, &table),
            };
            if let Err(e) = write_line(&mut conn, &event) {
                failed = Some(format!("writing to the client: {e}"));
            }
            session.rings()[w].give_back(r);
        }
        if let Some(f) = failed {
            break f;
        }
        if traced >= want {
            break format!("{traced} frames traced");
        }
        if limit.deadline.is_some_and(|d| Instant::now() >= d) {
            break "duration over".into();
        }
        if let Err(why) = client_still_there(&mut reader) {
            break why.into();
        }
    };
    armed.disarm();
    let lost = session.rings().iter().map(|r| r.lost()).sum();
    let _ = write_line(
        &mut conn,
        &TraceEvent::Done {
            traced,
            lost,
            why: why.clone(),
        },
    );
    why
}

fn port_name(table: &PortTable, id: PortId) -> String {
    match table.get(id) {
        Some(e) => format!("{} (port {})", e.info.name, id.0),
        None => format!("port {} (gone)", id.0),
    }
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        4 => "ipip".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => format!("proto {n}"),
    }
}

/// A traced frame for a person: one line per stage decision.
fn describe(r: &TraceRecord, table: &PortTable) -> String {
    let mut out = format!(
        "{} bytes received on {} (worker {})\n",
        r.len,
        port_name(table, r.ingress),
        r.worker
    );
    let line = |out: &mut String, stage: &str, what: String| {
        out.push_str(&format!("  {stage:<10} {what}\n"));
    };
    if r.head.len() >= 14 {
        let h = &r.head;
        line(
            &mut out,
            "ethernet",
            format!(
                "{} -> {} type 0x{:02x}{:02x}",
                mac(&h[6..12]),
                mac(&h[0..6]),
                h[12],
                h[13]
            ),
        );
    }
    for step in &r.steps {
        match *step {
            TraceStep::Decapsulated { tunnel, node } => {
                line(&mut out, "decap", format!("{tunnel} from node {node}"))
            }
            TraceStep::Arp => line(&mut out, "arp", "proxy ARP".into()),
            TraceStep::Ipv4 {
                src,
                dst,
                proto,
                ttl,
                total_len,
                dont_frag,
                l4,
            } => {
                let l4 = match (proto, l4) {
                    (1, Some((t, c))) => format!(" type {t} code {c}"),
                    (6 | 17, Some((s, d))) => format!(" ports {s} -> {d}"),
                    _ => String::new(),
                };
                let df = if dont_frag { " DF" } else { "" };
                line(
                    &mut out,
                    "ipv4",
                    format!(
                        "{src} -> {dst} {}{l4} ttl {ttl} len {total_len}{df}",
                        proto_name(proto)
                    ),
                )
            }
            TraceStep::FibEntry(None) => line(&mut out, "fib", "no route".into()),
            TraceStep::FibEntry(Some((prefix, nh))) => {
                let to = match nh {
                    NextHop::Local(p) => format!("local pod on {}", port_name(table, p)),
                    NextHop::Host => "the host".into(),
                    NextHop::Node(n) => format!("node {n}"),
                    NextHop::Nodes(_) => "ECMP group of nodes".into(),
                    NextHop::Unreachable => "unreachable".into(),
                };
                line(&mut out, "fib", format!("{prefix} -> {to}"))
            }
            TraceStep::Egress { port, tunnel } => {
                let t = tunnel.map_or(String::new(), |n| format!(", tunnel to node {n}"));
                line(
                    &mut out,
                    "route",
                    format!("egress {}{t}", port_name(table, port)),
                )
            }
            TraceStep::PolicyAllowed => line(&mut out, "policy", "allowed".into()),
            TraceStep::Rewritten { ttl, dst_mac } => line(
                &mut out,
                "rewrite",
                format!("ttl {ttl}, dst mac {}", mac(&dst_mac)),
            ),
            TraceStep::Dropped(reason) => line(&mut out, "drop", reason.name().into()),
            TraceStep::IcmpError { ty, code } => line(
                &mut out,
                "icmp",
                format!("error type {ty} code {code} to the sender"),
            ),
            TraceStep::Forward { port, tunnel } => {
                let t = tunnel.map_or(String::new(), |n| format!(" (encapsulated to node {n})"));
                line(
                    &mut out,
                    "verdict",
                    format!("forward to {}{t}", port_name(table, port)),
                )
            }
        }
    }
    if r.truncated > 0 {
        line(
            &mut out,
            "...",
            format!("{} more steps not recorded", r.truncated),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_stage_by_stage() {
        let mut r = TraceRecord {
            ts_ns: 0,
            worker: 1,
            ingress: PortId(3),
            len: 98,
            head: vec![0xee; 14],
            steps: Vec::new(),
            truncated: 0,
        };
        r.steps.push(TraceStep::Ipv4 {
            src: [10, 0, 0, 2].into(),
            dst: [10, 0, 0, 3].into(),
            proto: 1,
            ttl: 64,
            total_len: 84,
            dont_frag: true,
            l4: Some((8, 0)),
        });
        r.steps.push(TraceStep::Forward {
            port: PortId(4),
            tunnel: None,
        });
        let text = describe(&r, &PortTable::default());
        assert!(
            text.contains("98 bytes received on port 3 (gone) (worker 1)"),
            "{text}"
        );
        assert!(
            text.contains("ipv4       10.0.0.2 -> 10.0.0.3 icmp type 8 code 0 ttl 64 len 84 DF"),
            "{text}"
        );
        assert!(
            text.contains("verdict    forward to port 4 (gone)"),
            "{text}"
        );
    }
}
