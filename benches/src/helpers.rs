//! The harness's own traffic tools. The harness runs them as
//! `ip netns exec NS podrouter-bench __helper KIND key=value...` inside a
//! pod's (or the node's) namespace; each prints one JSON object on stdout.
//!
//! - `gen`: the packet generator. An AF_PACKET socket on the pod's
//!   interface sends one UDP frame over and over with `sendmmsg` and
//!   `PACKET_QDISC_BYPASS`, as fast as the kernel takes them.
//! - `flood`: the hostile pod of the flood scenario. Three AF_PACKET
//!   senders on the pod's interface take turns, paced to a total rate:
//!   ARP requests for the gateway, UDP to a free address of the pod block
//!   and UDP with TTL 1 to another pod (the work a router answers with
//!   proxy ARP, host unreachable and time exceeded).
//! - `echo` / `rr`: a UDP echo server and a client that sends requests at a
//!   fixed rate and records each round trip in nanoseconds.
//! - `accept` / `conn`: a TCP server that answers each connection with one
//!   byte and closes it, and a client that opens connections one after
//!   the other for a while (connect, read to the end, close with a RST so
//!   no TIME_WAIT is left on either side and ports are reused at once),
//!   counting them and timing each.
//! - `cni`: runs a CNI plugin's ADD for a list of pod namespaces, then DEL
//!   for all of them, from a pool of threads, timing each invocation.
//! - `xskfwd`: the bare-XSK ceiling probe. podrouter's own AF_XDP port
//!   (`podrouter_router::afxdp`) on two node-side veths, forwarding every
//!   frame from one to the other with only its MACs rewritten: the same
//!   sockets, rings and copies as podrouterd's afxdp backend, without the
//!   pipeline, the FIB or the worker. Runs until killed.
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::sys;
use crate::util::{Error, Res};

/// The router MAC (Calico's `ee:ee:ee:ee:ee:ee`), the pods' next hop in
/// both data planes.
pub const GATEWAY_MAC: [u8; 6] = [0xee; 6];
/// UDP port of the echo server.
pub const ECHO_PORT: u16 = 7777;
/// UDP destination port of generated traffic (discard).
pub const GEN_PORT: u16 = 9;
/// TCP port of the connection server (a Service's usual port).
pub const CONN_PORT: u16 = 80;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: &[String]) -> Res<Args> {
        let mut m = HashMap::new();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| Error::msg(format!("helper argument {a:?} is not key=value")))?;
            m.insert(k.to_string(), v.to_string());
        }
        Ok(Args(m))
    }

    fn get(&self, k: &str) -> Res<&str> {
        self.0
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| Error::msg(format!("helper argument {k}= missing")))
    }

    fn num<T: std::str::FromStr>(&self, k: &str) -> Res<T> {
        self.get(k)?
            .parse()
            .map_err(|_| Error::msg(format!("helper argument {k}= is not a number")))
    }

    fn opt_num<T: std::str::FromStr>(&self, k: &str) -> Res<Option<T>> {
        match self.0.get(k) {
            None => Ok(None),
            Some(_) => self.num(k).map(Some),
        }
    }
}

/// Entry point of `podrouter-bench __helper KIND ARGS...`.
pub fn main(kind: &str, args: &[String]) -> Res<()> {
    let a = Args::parse(args)?;
    if let Some(cpu) = a.opt_num::<usize>("cpu")? {
        sys::pin_to_cpu(cpu).map_err(|e| Error::msg(format!("pin to cpu {cpu}: {e}")))?;
    }
    let v = match kind {
        "gen" => gen(&a)?,
        "flood" => flood(&a)?,
        "echo" => echo(&a)?,
        "rr" => rr(&a)?,
        "accept" => accept(&a)?,
        "conn" => conn(&a)?,
        "cni" => cni(&a)?,
        "xskfwd" => xskfwd(&a)?,
        _ => return Err(Error::msg(format!("unknown helper {kind}"))),
    };
    let mut o = io::stdout().lock();
    writeln!(o, "{v}")?;
    Ok(())
}

/// Forwards between AF_XDP ports on `a=` and `b=` (node-side veths in
/// this namespace), rewriting the destination MAC to `amac=` / `bmac=`
/// (the pod behind each) and the source to the gateway's; `mtu=` is the
/// veths' MTU. Polls, sleeping
/// 50 µs when a round moved nothing.
fn xskfwd(a: &Args) -> Res<serde_json::Value> {
    use podrouter_router::afxdp::{AfXdpConfig, AfXdpPort, XdpModeRequest};
    use podrouter_router::frame::Frame;
    use podrouter_router::port::Port;
    let mtu: u16 = a.num("mtu")?;
    let open = |ifname: &str| {
        AfXdpPort::open(&AfXdpConfig {
            ifname: ifname.to_string(),
            mtu,
            tx_queues: 1,
            mode: XdpModeRequest::Auto,
            rx_chunks: podrouter_router::afxdp::DEFAULT_RX_CHUNKS,
            rx_worker: 0,
        })
        .map_err(|e| Error::msg(format!("xskfwd: {ifname}: {e}")))
    };
    let ports = [open(a.get("a")?)?, open(a.get("b")?)?];
    let macs = [parse_mac(a.get("amac")?)?, parse_mac(a.get("bmac")?)?];
    let mut queues = [ports[0].tx_queue(), ports[1].tx_queue()];
    let mut frames: Vec<Frame> = (0..64).map(|_| Frame::new()).collect();
    eprintln!("xskfwd: forwarding ({})", ports[0].mode());
    loop {
        let mut moved = 0;
        for from in 0..2 {
            let to = 1 - from;
            let n = ports[from].recv(&mut frames)?;
            for f in &mut frames[..n] {
                let d = f.data_mut();
                if d.len() >= 12 {
                    d[..6].copy_from_slice(&macs[to]);
                    d[6..12].copy_from_slice(&GATEWAY_MAC);
                }
                let _ = ports[to].push(&mut queues[to], f, None);
            }
            if n > 0 {
                let _ = ports[to].flush(&mut queues[to]);
            }
            moved += n;
        }
        if moved == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn parse_mac(s: &str) -> Res<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(Error::msg(format!("bad MAC {s:?}")));
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| Error::msg(format!("bad MAC {s:?}")))?;
    }
    Ok(mac)
}

fn ip_checksum(hdr: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in hdr.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + UDP frame of `size` bytes on the wire, counting the
/// 4-byte FCS that veth and TAP do not carry (RFC 2544 sizes: a "64-byte
/// frame" is 60 bytes handed to the device, a 46-byte IP packet).
pub fn udp_frame(
    size: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<u8> {
    let len = size.saturating_sub(4).max(14 + 20 + 8);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&9999u16.to_be_bytes());
    udp[2..4].copy_from_slice(&GEN_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    // UDP checksum 0: none (allowed for IPv4).
    f
}

fn gen(a: &Args) -> Res<serde_json::Value> {
    let ifname = a.get("if")?;
    let src: Ipv4Addr = a.num("src")?;
    let dst: Ipv4Addr = a.num("dst")?;
    let size: usize = a.num("size")?;
    let secs: f64 = a.num("secs")?;
    let sys_dir = format!("/sys/class/net/{ifname}");
    let mac = parse_mac(&fs::read_to_string(format!("{sys_dir}/address"))?)?;
    let ifindex: u32 = fs::read_to_string(format!("{sys_dir}/ifindex"))?
        .trim()
        .parse()
        .map_err(|_| Error::msg("bad ifindex"))?;
    let frame = udp_frame(size, mac, GATEWAY_MAC, src, dst);
    let mut s = sys::PacketSender::open(ifindex, &frame, 64)
        .map_err(|e| Error::msg(format!("AF_PACKET socket on {ifname}: {e}")))?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    // `dropped`: frames the device refused (its queue or the backlog was
    // full). sendmmsg stops at the first refused frame: a short count or an
    // error means exactly one frame of the batch was dropped.
    let (mut sent, mut calls, mut dropped, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let batch = s.batch();
    let mut last_err = String::new();
    loop {
        match s.send_batch() {
            Ok(n) => {
                sent += n as u64;
                if n < batch {
                    dropped += 1;
                }
            }
            Err(e) => {
                dropped += 1;
                errors += 1;
                if e.kind() != io::ErrorKind::WouldBlock && e.raw_os_error() != Some(libc::ENOBUFS)
                {
                    last_err = e.to_string();
                    if errors > 1000 && sent == 0 {
                        return Err(Error::msg(format!("sendmmsg on {ifname}: {e}")));
                    }
                }
            }
        }
        calls += 1;
        if calls % 4 == 0 && Instant::now() >= end {
            break;
        }
    }
    let el = start.elapsed().as_secs_f64();
    Ok(json!({
        "sent": sent,
        "dropped": dropped,
        "offered": sent + dropped,
        "secs": el,
        "errors": errors,
        "last_error": last_err,
        "batch": s.batch(),
        "frame_bytes": frame.len(),
    }))
}

/// A broadcast ARP request from `mac` / `src` for `target`.
pub fn arp_request(mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// See the module documentation: `if=`, `src=` (the pod's address),
/// `victim=` (TTL-1 target), `free=` (an unassigned address), `pps=`
/// (total), `secs=`.
fn flood(a: &Args) -> Res<serde_json::Value> {
    let ifname = a.get("if")?;
    let src: Ipv4Addr = a.num("src")?;
    let victim: Ipv4Addr = a.num("victim")?;
    let free: Ipv4Addr = a.num("free")?;
    let pps: f64 = a.num("pps")?;
    let secs: f64 = a.num("secs")?;
    let sys_dir = format!("/sys/class/net/{ifname}");
    let mac = parse_mac(&fs::read_to_string(format!("{sys_dir}/address"))?)?;
    let ifindex: u32 = fs::read_to_string(format!("{sys_dir}/ifindex"))?
        .trim()
        .parse()
        .map_err(|_| Error::msg("bad ifindex"))?;
    let mut ttl1 = udp_frame(64, mac, GATEWAY_MAC, src, victim);
    ttl1[14 + 8] = 1;
    ttl1[14 + 10..14 + 12].fill(0);
    let c = ip_checksum(&ttl1[14..34]);
    ttl1[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let frames = [
        arp_request(mac, src, Ipv4Addr::new(169, 254, 1, 1)),
        udp_frame(64, mac, GATEWAY_MAC, src, free),
        ttl1,
    ];
    const BATCH: usize = 16;
    let mut senders = Vec::new();
    for f in &frames {
        senders.push(
            sys::PacketSender::open(ifindex, f, BATCH)
                .map_err(|e| Error::msg(format!("AF_PACKET socket on {ifname}: {e}")))?,
        );
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    // `offered`: frames tried; `refused`: those the device did not take
    // (its queue was full). Pacing counts what was offered, so a full
    // queue does not turn the loop into a spin.
    let (mut sent, mut refused, mut offered) = ([0u64; 3], 0u64, 0u64);
    while Instant::now() < end {
        for (i, s) in senders.iter_mut().enumerate() {
            offered += BATCH as u64;
            match s.send_batch() {
                Ok(n) => {
                    sent[i] += n as u64;
                    refused += (BATCH - n) as u64;
                }
                Err(_) => refused += BATCH as u64,
            }
        }
        // Paced: the next round leaves when the total is due.
        let due = start + Duration::from_secs_f64(offered as f64 / pps.max(1.0));
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
    let el = start.elapsed().as_secs_f64();
    Ok(json!({
        "arp": sent[0], "free": sent[1], "ttl1": sent[2], "refused": refused,
        "secs": el, "offered_pps": offered as f64 / el.max(1e-9),
        "sent_pps": sent.iter().sum::<u64>() as f64 / el.max(1e-9),
    }))
}

fn echo(a: &Args) -> Res<serde_json::Value> {
    let secs: f64 = a.num("secs")?;
    let sock = UdpSocket::bind(("0.0.0.0", ECHO_PORT))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = [0u8; 2048];
    let mut n = 0u64;
    while Instant::now() < end {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                let _ = sock.send_to(&buf[..len], from);
                n += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(json!({ "echoed": n }))
}

fn rr(a: &Args) -> Res<serde_json::Value> {
    let dst: Ipv4Addr = a.num("dst")?;
    let rate: f64 = a.num("rate")?;
    let count: u64 = a.num("count")?;
    let sock = UdpSocket::bind(("0.0.0.0", 0))?;
    sock.connect(SocketAddr::from((dst, ECHO_PORT)))?;
    let timeout = Duration::from_millis(200);
    sock.set_read_timeout(Some(timeout))?;
    // Wait for the echo server (up to 5 s): the first answered probe.
    let probe_end = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    loop {
        sock.send(&u64::MAX.to_be_bytes())?;
        if sock.recv(&mut buf).is_ok() {
            break;
        }
        if Instant::now() > probe_end {
            return Err(Error::msg(format!("no echo from {dst}:{ECHO_PORT}")));
        }
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut rtts: Vec<u64> = Vec::with_capacity(count as usize);
    let mut lost = 0u64;
    let start = Instant::now();
    let mut req = [0u8; 32];
    for seq in 0..count {
        let due = start + period.mul_f64(seq as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        req[..8].copy_from_slice(&seq.to_be_bytes());
        let t0 = Instant::now();
        sock.send(&req)?;
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 8 && buf[..8] == seq.to_be_bytes() => {
                    rtts.push(t0.elapsed().as_nanos() as u64);
                    break;
                }
                Ok(_) => {
                    if t0.elapsed() > timeout {
                        lost += 1;
                        break;
                    }
                }
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    Ok(json!({ "rtt_ns": rtts, "lost": lost, "secs": start.elapsed().as_secs_f64() }))
}

/// Serves [`CONN_PORT`] until `secs` passed (checked after each
/// connection; the harness stops it by pid when done): one byte, then the
/// server closes (the client's RST ends the connection: no TIME_WAIT).
fn accept(a: &Args) -> Res<serde_json::Value> {
    let secs: f64 = a.num("secs")?;
    let listener = TcpListener::bind(("0.0.0.0", CONN_PORT))?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        let (mut s, _) = listener.accept()?;
        let _ = s.write_all(b"k");
        n += 1;
    }
    Ok(json!({ "accepted": n }))
}

/// Opens connections to `dst`:[`CONN_PORT`] one after the other for
/// `secs` (after waiting up to 5 s for a first answer): connect (1 s
/// timeout), read to the end, close with a RST. Reports how many completed, how
/// many failed and each completed one's time from connect to end of
/// stream.
fn conn(a: &Args) -> Res<serde_json::Value> {
    let dst: Ipv4Addr = a.num("dst")?;
    let secs: f64 = a.num("secs")?;
    let addr = SocketAddr::from((dst, CONN_PORT));
    let timeout = Duration::from_secs(1);
    let once = || -> io::Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        sys::abortive_close_on_drop(&s)?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 16];
        let mut got = 0;
        loop {
            match io::Read::read(&mut s, &mut buf)? {
                0 if got > 0 => return Ok(()),
                0 => return Err(io::Error::other("closed without an answer")),
                n => got += n,
            }
        }
    };
    let probe_end = Instant::now() + Duration::from_secs(5);
    while let Err(e) = once() {
        if Instant::now() > probe_end {
            return Err(Error::msg(format!("no answer from {addr}: {e}")));
        }
    }
    let mut conn_ns: Vec<u64> = Vec::new();
    let mut failed = 0u64;
    let mut first_error = None;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t0 = Instant::now();
        match once() {
            Ok(()) => conn_ns.push(t0.elapsed().as_nanos() as u64),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Ok(json!({
        "connections": conn_ns.len(), "failed": failed, "first_error": first_error,
        "secs": start.elapsed().as_secs_f64(), "conn_ns": conn_ns,
    }))
}

/// One CNI invocation, timed.
fn cni_call(
    plugin: &str,
    conf: &[u8],
    cmd: &str,
    id: &str,
    netns: &str,
    cni_path: &str,
) -> (f64, Result<(), String>) {
    let t0 = Instant::now();
    let r = Command::new(plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut i) = c.stdin.take() {
                i.write_all(conf)?;
            }
            c.wait_with_output()
        });
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let res = match r {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd} {id}: exit {}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd} {id}: cannot run {plugin}: {e}")),
    };
    (ms, res)
}

fn cni(a: &Args) -> Res<serde_json::Value> {
    let plugin = a.get("plugin")?.to_string();
    let conf = fs::read(a.get("conf")?)?;
    let cni_path = a.get("cni_path")?.to_string();
    let prefix = a.get("id")?.to_string();
    let netns: Vec<String> = a.get("netns")?.split(',').map(str::to_string).collect();
    let parallel: usize = a.num::<usize>("parallel")?.max(1);
    // Pods attached before the measured ones and detached after them, not
    // timed: the load the measured calls run beside.
    let held: Vec<String> =
        a.0.get("held")
            .map(|h| h.split(',').map(str::to_string).collect())
            .unwrap_or_default();
    let hold = |verb: &str| -> Res<()> {
        let next = AtomicUsize::new(0);
        let first_error = Mutex::new(None::<String>);
        std::thread::scope(|s| {
            for _ in 0..HOLD_PARALLEL.min(held.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= held.len() {
                        break;
                    }
                    let id = format!("{prefix}-held-{i}");
                    let path = format!("/run/netns/{}", held[i]);
                    if let (_, Err(e)) = cni_call(&plugin, &conf, verb, &id, &path, &cni_path) {
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(Error::msg(format!("{verb} of a held pod: {e}"))),
            None => Ok(()),
        }
    };
    hold("ADD")?;
    let mut out = serde_json::Map::new();
    for verb in ["ADD", "DEL"] {
        let next = AtomicUsize::new(0);
        let times = Mutex::new(vec![0.0f64; netns.len()]);
        let errors = Mutex::new(Vec::<String>::new());
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..parallel.min(netns.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= netns.len() {
                        break;
                    }
                    let id = format!("{prefix}-{i}");
                    let path = format!("/run/netns/{}", netns[i]);
                    let (ms, r) = cni_call(&plugin, &conf, verb, &id, &path, &cni_path);
                    times.lock().unwrap_or_else(|e| e.into_inner())[i] = ms;
                    if let Err(e) = r {
                        errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                    }
                });
            }
        });
        let wall = t0.elapsed().as_secs_f64();
        let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
        out.insert(
            verb.to_lowercase(),
            json!({
                "ms": times.into_inner().unwrap_or_else(|e| e.into_inner()),
                "wall_secs": wall,
                "failures": errors.len(),
                "first_error": errors.first(),
            }),
        );
    }
    hold("DEL")?;
    Ok(serde_json::Value::Object(out))
}

/// How many held pods are attached (and detached) at a time.
const HOLD_PARALLEL: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_and_checksum() {
        let f = udp_frame(
            64,
            [2, 0, 0, 0, 0, 1],
            GATEWAY_MAC,
            Ipv4Addr::new(10, 244, 0, 1),
            Ipv4Addr::new(10, 244, 0, 2),
        );
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &GATEWAY_MAC);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        // A header with its checksum in place sums to zero.
        assert_eq!(ip_checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26);
        assert_eq!(
            udp_frame(
                1500,
                [0; 6],
                [0; 6],
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::LOCALHOST
            )
            .len(),
            1496
        );
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("ee:ee:ee:ee:ee:ee\n").unwrap(), GATEWAY_MAC);
        assert!(parse_mac("ee:ee").is_err());
    }
}
