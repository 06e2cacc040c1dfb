//! A 1 ms UDP probe stream across a daemon event (restart, takeover): a
//! sender in one pod sends probe `i` to every destination pod at `t0 + i`
//! ms; a receiver in each destination records which probes arrived.
//! [`probe_across`] runs the event once the stream is flowing and returns
//! what each receiver saw: how many probes, the first and last, and the
//! longest run lost between two received ones. [`probe_stream`] also says
//! how the stream came back (how late the first probe after the loss
//! arrived, how many came with it in one burst: probes that had waited in
//! a queue) and how late the sender fell behind its schedule (a sender
//! blocked in `sendto` because its socket's buffer is full of packets the
//! pod's kernel holds), on the probes' clock ([`monotonic_secs`]).
use std::time::Duration;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::Pod;
pub use podrouter_testkit::monotonic_secs;

const RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", 9000))
print("listening", flush=True)
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
got = {}
while time.time() < end:
    try:
        d, _ = s.recvfrom(64)
        got.setdefault(int(d), time.monotonic())
    except socket.timeout:
        pass
    except ValueError:
        pass
seq = sorted(got)
gap, at = 0, -1
runs = []
for a, b in zip(seq, seq[1:]):
    if b - a > 1:
        runs.append((a + 1, b - a - 1))
    if b - a - 1 > gap:
        gap, at = b - a - 1, a
print(len(seq), seq[0] if seq else -1, seq[-1] if seq else -1, gap, at)
# The first probe after the longest loss: when it arrived, and how many
# of the following ones arrived within 2 ms of it (a burst: they waited
# in a queue).
resume, burst = -1, 0
if gap > 0:
    resume = at + gap + 1
    t = got[resume]
    burst = sum(1 for k in seq if k >= resume and got[k] - t < 0.002)
print("resume", resume, repr(got.get(resume, 0.0)), burst)
print("runs", " ".join("%d:%d" % r for r in runs[:8]))
"#;

const SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = int(sys.argv[1])
dsts = sys.argv[2:]
failed = 0
late, late_at = 0.0, -1
t0 = time.monotonic()
for i in range(n):
    d = t0 + i / 1000.0 - time.monotonic()
    if d > 0:
        time.sleep(d)
    elif -d > late:
        late, late_at = -d, i
    for x in dsts:
        try:
            s.sendto(str(i).encode(), (x, 9000))
        except OSError:
            failed += 1
    if i == 200:
        print("flowing", repr(t0), flush=True)
print("send failures", failed, "late", round(late * 1000), "at", late_at, flush=True)
"#;

/// What a receiver saw: probes received, first and last sequence number,
/// the longest run lost between two received ones and where it began,
/// and how the stream resumed after it.
#[derive(Debug)]
pub struct Seen {
    pub count: u64,
    pub first: i64,
    pub last: i64,
    pub gap: u64,
    pub at: i64,
    /// The first probe received after the longest loss (-1 if none) and
    /// when it arrived (`CLOCK_MONOTONIC`, seconds).
    pub resume: i64,
    pub resume_mono: f64,
    /// How many probes from `resume` on arrived within 2 ms of it: more
    /// than a few means they had waited together in a queue.
    pub burst: u64,
    /// The first runs of lost probes: (first lost, how many).
    pub runs: Vec<(i64, u64)>,
}

impl Seen {
    /// How late the first probe after the longest loss arrived (ms after
    /// it was due to be sent), given the stream's `t0`.
    pub fn resume_late_ms(&self, t0: f64) -> f64 {
        if self.resume < 0 {
            return 0.0;
        }
        (self.resume_mono - t0 - self.resume as f64 / 1000.0) * 1000.0
    }
}

fn parse_seen(out: &str) -> Seen {
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    let w: Vec<i64> = first
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(w.len(), 5, "receiver printed {out}");
    let resume: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix("resume "))
        .unwrap_or_else(|| panic!("receiver printed {out}"))
        .split_whitespace()
        .collect();
    assert_eq!(resume.len(), 3, "receiver printed {out}");
    let runs = lines
        .next()
        .and_then(|l| l.strip_prefix("runs"))
        .unwrap_or_else(|| panic!("receiver printed {out}"))
        .split_whitespace()
        .filter_map(|r| {
            let (a, n) = r.split_once(':')?;
            Some((a.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    Seen {
        count: w[0] as u64,
        first: w[1],
        last: w[2],
        gap: w[3] as u64,
        at: w[4],
        resume: resume[0].parse().expect("resume probe"),
        resume_mono: resume[1].parse().expect("resume time"),
        burst: resume[2].parse().expect("burst"),
        runs,
    }
}

/// What a stream across an event saw, on both ends (times on the
/// probes' clock, [`monotonic_secs`]).
#[derive(Debug)]
pub struct Stream {
    /// Each receiver's view, in the order of the `to` pods.
    pub seen: Vec<Seen>,
    /// `sendto` errors in the sender.
    pub send_failures: u64,
    /// The sender's worst lateness against its 1 ms schedule (ms) and the
    /// probe it was sending then: a sender blocked in `sendto` (its socket
    /// buffer full of packets held in the pod) shows here.
    pub late_ms: u64,
    pub late_at: i64,
    /// When probe 0 was due (`CLOCK_MONOTONIC`, seconds).
    pub t0: f64,
}

/// Runs a stream of `stream_ms` probes from `from` to the `to` pods and
/// runs `event` `after` the stream is flowing (its 200th probe); returns
/// what each receiver saw, in `to`'s order, and how many sends failed in
/// the sender (`sendto` errors).
pub fn probe_across(
    from: &Pod,
    to: &[&Pod],
    stream_ms: u32,
    after: Duration,
    event: impl FnOnce(),
) -> (Vec<Seen>, u64) {
    let s = probe_stream(from, to, stream_ms, after, event);
    (s.seen, s.send_failures)
}

/// [`probe_across`], with the sender's side and the stream's clock.
pub fn probe_stream(
    from: &Pod,
    to: &[&Pod],
    stream_ms: u32,
    after: Duration,
    event: impl FnOnce(),
) -> Stream {
    let listen = format!("{}", stream_ms / 1000 + 4);
    // Each receiver says when it is bound, so no probe is sent before.
    let receivers: Vec<_> = to
        .iter()
        .map(|p| {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &p.ns, "python3", "-c", RECEIVER, &listen])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a probe receiver");
            let mut out = BufReader::new(child.stdout.take().expect("piped"));
            let mut line = String::new();
            out.read_line(&mut line).expect("read a receiver");
            assert_eq!(line.trim(), "listening", "a receiver did not start");
            (child, out)
        })
        .collect();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &from.ns, "python3", "-c", SENDER])
        .arg(stream_ms.to_string())
        .args(to.iter().map(|p| p.ip.as_str()))
        .stdout(Stdio::piped());
    let mut sender = cmd.spawn().expect("spawn the probe sender");
    let mut out = BufReader::new(sender.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read the sender");
    let t0: f64 = line
        .trim()
        .strip_prefix("flowing ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the sender did not start: {line:?}"));
    std::thread::sleep(after);
    event();
    line.clear();
    out.read_line(&mut line).expect("read the sender");
    // "send failures N late MS at I"
    let w: Vec<i64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(
        line.starts_with("send failures ") && w.len() == 3,
        "the sender printed {line:?}"
    );
    let status = sender.wait().expect("wait for the sender");
    assert!(status.success(), "sender: {status}");
    let seen = receivers
        .into_iter()
        .map(|(mut child, mut out)| {
            let mut text = String::new();
            out.read_to_string(&mut text).expect("read a receiver");
            let status = child.wait().expect("wait for a receiver");
            assert!(status.success(), "receiver: {status}: {text}");
            parse_seen(&text)
        })
        .collect();
    Stream {
        seen,
        send_failures: w[0] as u64,
        late_ms: w[1] as u64,
        late_at: w[2],
        t0,
    }
}
