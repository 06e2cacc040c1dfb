//! A 1 ms UDP probe stream across a daemon event (restart, takeover): a
//! sender in one pod sends probe `i` to every destination pod at `t0 + i`
//! ms; a receiver in each destination records which probes arrived.
//! [`probe_across`] runs the event once the stream is flowing and returns
//! what each receiver saw: how many probes, the first and last, and the
//! longest run lost between two received ones.
use std::time::Duration;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::Pod;

const RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", 9000))
print("listening", flush=True)
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
got = set()
while time.time() < end:
    try:
        d, _ = s.recvfrom(64)
        got.add(int(d))
    except socket.timeout:
        pass
    except ValueError:
        pass
seq = sorted(got)
gap, at = 0, -1
for a, b in zip(seq, seq[1:]):
    if b - a - 1 > gap:
        gap, at = b - a - 1, a
print(len(seq), seq[0] if seq else -1, seq[-1] if seq else -1, gap, at)
"#;

const SENDER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = int(sys.argv[1])
dsts = sys.argv[2:]
failed = 0
t0 = time.monotonic()
for i in range(n):
    d = t0 + i / 1000.0 - time.monotonic()
    if d > 0:
        time.sleep(d)
    for x in dsts:
        try:
            s.sendto(str(i).encode(), (x, 9000))
        except OSError:
            failed += 1
    if i == 200:
        print("flowing", flush=True)
print("send failures", failed, flush=True)
"#;

/// What a receiver saw: probes received, first and last sequence number,
/// the longest run lost between two received ones and where it began.
#[derive(Debug)]
pub struct Seen {
    pub count: u64,
    pub first: i64,
    pub last: i64,
    pub gap: u64,
    pub at: i64,
}

fn parse_seen(out: &str) -> Seen {
    let w: Vec<i64> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(w.len(), 5, "receiver printed {out}");
    Seen {
        count: w[0] as u64,
        first: w[1],
        last: w[2],
        gap: w[3] as u64,
        at: w[4],
    }
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
    assert_eq!(line.trim(), "flowing", "the sender did not start");
    std::thread::sleep(after);
    event();
    line.clear();
    out.read_line(&mut line).expect("read the sender");
    let failed = line
        .trim()
        .strip_prefix("send failures ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the sender printed {line:?}"));
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
    (seen, failed)
}
