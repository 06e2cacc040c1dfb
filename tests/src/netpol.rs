//! Network policy end-to-end helpers: echo servers in pods, concurrent
//! reachability probes from inside pods, a long-lived connection, and the
//! reachability matrix of the Kubernetes network policy test tools
//! (namespaces x, y, z with pods a, b, c).
//!
//! Everything runs python3 inside the pods' namespaces: a server that
//! echoes on TCP and UDP ports 80 and 81, and a prober that tries every
//! target at once (one process per source pod, 1 s per attempt, a UDP
//! probe retried once) and prints one line per target. Traffic stays
//! between the test's own pods.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::{run_in, spawn_in, Bg};

const SERVER: &str = r#"
import socket, threading
def serve(c):
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
def tcp(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p))
    s.listen(128)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", p))
    while True:
        d, a = s.recvfrom(4096)
        s.sendto(d, a)
for p in (53, 80, 81):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
    threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

const PROBE: &str = r#"
import socket, sys, threading
res = {}
def probe(t):
    proto, ip, port = t.split(":")
    ok = False
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, int(port)), timeout=1.5)
            s.settimeout(1.5)
            s.sendall(b"ping")
            ok = s.recv(16) == b"ping"
            s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1.0)
            for _ in range(2):
                s.sendto(b"ping", (ip, int(port)))
                try:
                    d, _ = s.recvfrom(16)
                    ok = d == b"ping"
                    break
                except socket.timeout:
                    pass
    except OSError:
        ok = False
    res[t] = ok
ts = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[1:]]
for t in ts: t.start()
for t in ts: t.join()
for t in sys.argv[1:]:
    print(t, "ok" if res.get(t) else "fail")
"#;

/// A long-lived TCP connection: one message every 100 ms for `secs`
/// seconds, each echoed; prints how many came back and exits 0 only if
/// all did.
const HOLD: &str = r#"
import socket, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((ip, port), timeout=2)
s.settimeout(2)
print("connected", flush=True)
n = sent = 0
end = time.time() + secs
while time.time() < end:
    s.sendall(b"x"); sent += 1
    if s.recv(16) == b"x":
        n += 1
    time.sleep(0.1)
print(n, "of", sent, flush=True)
sys.exit(0 if n == sent and n > 0 else 1)
"#;

/// Starts the echo server in `ns` and waits until it listens.
pub fn start_server(ns: &str, log: &Path) -> Bg {
    let bg = spawn_in(
        ns,
        "echo-server",
        &["python3", "-u", "-c", SERVER],
        Some(log),
    );
    let ready = crate::wait_until(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(log).is_ok_and(|s| s.contains("ready"))
    });
    assert!(ready, "echo server in {ns} did not start");
    bg
}

/// Probes every `proto:ip:port` target from inside `ns` at once.
pub fn probe(ns: &str, targets: &[String]) -> BTreeMap<String, bool> {
    let mut args = vec!["python3", "-c", PROBE];
    args.extend(targets.iter().map(String::as_str));
    let out = run_in(ns, &args);
    assert!(out.ok(), "prober failed: {out}");
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, r)| (t.to_string(), r == "ok"))
        .collect()
}

/// Starts a connection held open for `secs` seconds; wait for "connected"
/// in `log`.
pub fn hold_connection(ns: &str, ip: &str, port: u16, secs: u32, log: &Path) -> Bg {
    let p = port.to_string();
    let s = secs.to_string();
    spawn_in(
        ns,
        "hold",
        &["python3", "-u", "-c", HOLD, ip, &p, &s],
        Some(log),
    )
}

/// A pod of the matrix.
#[derive(Clone, Debug)]
pub struct MatrixPod {
    /// `x/a`.
    pub name: String,
    pub ns: String,
    pub ip: String,
}

/// One cell per (source, destination, protocol/port).
pub type Matrix = BTreeMap<(String, String, String), bool>;

pub const PROBES: [(&str, u16); 4] = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];

/// Probes every pod from every pod, on every [`PROBES`] port. Sources
/// run in parallel.
pub fn measure(pods: &[MatrixPod]) -> Matrix {
    let targets: Vec<String> = pods
        .iter()
        .flat_map(|d| PROBES.iter().map(move |(p, n)| format!("{p}:{}:{n}", d.ip)))
        .collect();
    let results: Vec<(String, BTreeMap<String, bool>)> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .map(|src| {
                let t = &targets;
                s.spawn(move || (src.name.clone(), probe(&src.ns, t)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut m = Matrix::new();
    for (src, r) in results {
        for d in pods {
            for (p, n) in PROBES {
                let ok = r
                    .get(&format!("{p}:{}:{n}", d.ip))
                    .copied()
                    .unwrap_or(false);
                m.insert((src.clone(), d.name.clone(), format!("{p}/{n}")), ok);
            }
        }
    }
    m
}

/// Probes again, up to `rounds` times and one source at a time, the cells
/// where `want` allows and `got` measured a refusal, and writes what they
/// answer into `got`; returns how many cells a re-probe turned to allowed.
///
/// A probe that should pass can fail for reasons that are not policy: 324
/// probes start at once and a UDP reply may miss its second second on a
/// loaded machine. A refusal is only believed when it repeats. The other
/// kind of difference, a cell that answered where the policy refuses, is
/// never re-probed: an answer cannot come from load, so it always counts.
pub fn reprobe_refusals(
    pods: &[MatrixPod],
    want: &Matrix,
    got: &mut Matrix,
    rounds: usize,
) -> usize {
    let mut turned = 0;
    for _ in 0..rounds {
        let mut by_source: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((src, dst, port), ok) in got.iter() {
            if *ok
                || !want
                    .get(&(src.clone(), dst.clone(), port.clone()))
                    .copied()
                    .unwrap_or(false)
            {
                continue;
            }
            let d = pods.iter().find(|p| &p.name == dst).expect("a matrix pod");
            let (proto, n) = port.split_once('/').expect("proto/port");
            by_source
                .entry(src.as_str())
                .or_default()
                .push(format!("{proto}:{}:{n}", d.ip));
        }
        if by_source.is_empty() {
            break;
        }
        let mut answers = Vec::new();
        for (src, targets) in by_source {
            let s = pods.iter().find(|p| p.name == src).expect("a matrix pod");
            for (target, ok) in probe(&s.ns, &targets) {
                let mut parts = target.splitn(3, ':');
                let (proto, ip, n) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                let d = pods.iter().find(|p| p.ip == ip).expect("a matrix pod");
                answers.push((
                    (src.to_string(), d.name.clone(), format!("{proto}/{n}")),
                    ok,
                ));
            }
        }
        for (cell, ok) in answers {
            if ok {
                turned += 1;
                got.insert(cell, true);
            }
        }
    }
    turned
}

/// The expected matrix from a rule `allowed(src, dst, "tcp/80")`; a pod
/// always reaches itself (never through the router).
pub fn expect(pods: &[MatrixPod], allowed: impl Fn(&str, &str, &str) -> bool) -> Matrix {
    let mut m = Matrix::new();
    for s in pods {
        for d in pods {
            for (p, n) in PROBES {
                let port = format!("{p}/{n}");
                let ok = s.name == d.name || allowed(&s.name, &d.name, &port);
                m.insert((s.name.clone(), d.name.clone(), port), ok);
            }
        }
    }
    m
}

/// The differences between two matrices, as a truth table for people
/// (`.` allowed, `X` refused; wrong cells in brackets), or `None`.
pub fn compare(pods: &[MatrixPod], want: &Matrix, got: &Matrix) -> Option<String> {
    if want == got {
        return None;
    }
    let mut out = String::new();
    for (p, n) in PROBES {
        let port = format!("{p}/{n}");
        let _ = writeln!(out, "{port}: rows from, columns to; [x] = wrong");
        let _ = write!(out, "       ");
        for d in pods {
            let _ = write!(out, "{:>5}", d.name);
        }
        out.push('\n');
        for s in pods {
            let _ = write!(out, "{:>5}  ", s.name);
            for d in pods {
                let k = (s.name.clone(), d.name.clone(), port.clone());
                let g = got[&k];
                let c = if g { "." } else { "X" };
                if g == want[&k] {
                    let _ = write!(out, "{c:>5}");
                } else {
                    let _ = write!(out, "{:>5}", format!("[{c}]"));
                }
            }
            out.push('\n');
        }
    }
    Some(out)
}
