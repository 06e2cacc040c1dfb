//! A scripted peer (python3, raw BGP over TCP) against podrouterd: a
//! passive session it opens reaches Established; an UPDATE with a broken
//! ORIGIN is treated as withdraw (RFC 7606) without dropping the session;
//! a message with a broken marker gets NOTIFICATION 1/1 and a close; a
//! connection from an address that is not a configured peer is closed
//! before a byte is read; the daemon keeps running throughout.
use std::time::Duration;

use podrouter_e2e::bgp::*;
use podrouter_e2e::*;

const NODE: &str = "10.205.0.1";
const PEER: &str = "10.205.0.2";
const STRANGER: &str = "10.205.0.9";

const SCRIPT: &str = r#"
import socket, struct, sys, time
node, peer, stranger = sys.argv[1], sys.argv[2], sys.argv[3]

def msg(t, body):
    return b"\xff" * 16 + struct.pack(">HB", 19 + len(body), t) + body

def recv_msg(s):
    h = b""
    while len(h) < 19:
        c = s.recv(19 - len(h))
        if not c:
            return None
        h += c
    n, t = struct.unpack(">HB", h[16:19])
    b = b""
    while len(b) < n - 19:
        c = s.recv(n - 19 - len(b))
        if not c:
            return None
        b += c
    return t, b

# A stranger is closed at once.
s = socket.socket()
s.bind((stranger, 0))
s.settimeout(3)
s.connect((node, 179))
print("stranger:", "closed" if s.recv(100) == b"" else "open")
s.close()

s = socket.socket()
s.bind((peer, 0))
s.settimeout(5)
s.connect((node, 179))
caps = bytes([2, 6, 65, 4]) + struct.pack(">I", 64513) + bytes([2, 6, 1, 4, 0, 1, 0, 1])
s.sendall(msg(1, struct.pack(">BHH4sB", 4, 64513, 30, socket.inet_aton(peer), len(caps)) + caps))
t, _ = recv_msg(s); assert t == 1, t          # their OPEN
t, _ = recv_msg(s); assert t == 4, t          # KEEPALIVE
s.sendall(msg(4, b""))
got_eor = False
while not got_eor:                            # their UPDATEs, then End-of-RIB
    t, b = recv_msg(s)
    if t == 2 and b == b"\x00\x00\x00\x00":
        got_eor = True
print("established")

def update(origin):
    attrs = bytes([0x40, 1, 1, origin, 0x40, 2, 6, 2, 1]) + struct.pack(">I", 64513) \
          + bytes([0x40, 3, 4]) + socket.inet_aton(peer)
    return msg(2, struct.pack(">HH", 0, len(attrs)) + attrs + bytes([26, 10, 244, 7, 0]))

s.sendall(update(0))
time.sleep(1)
print("announced")
sys.stdout.flush()
input()                                       # the test checks the FIB
s.sendall(update(9))                          # invalid ORIGIN: treat-as-withdraw
time.sleep(1)
print("bad origin sent")
sys.stdout.flush()
input()                                       # the test checks the FIB
s.sendall(b"\xfe" + b"\xff" * 15 + struct.pack(">HB", 19, 4))
while True:
    r = recv_msg(s)
    if r is None:
        print("closed without notification")
        break
    t, b = r
    if t == 3:
        print("notification %d/%d" % (b[0], b[1]))
        break
"#;

#[test]
fn bgp_malformed_input_gets_notifications_and_never_crashes() {
    if !require(
        "bgp_malformed_input_gets_notifications_and_never_crashes",
        &["python3"],
    ) {
        return;
    }
    let peer_ns = Netns::new("fake");
    let bgp = bgp_section(
        NODE_AS,
        "graceful_restart = false",
        &[PeerCfg::new(PEER, 64513).with("passive = true")],
    );
    let node = start_bgp_node(NODE, "10.244.1.0/26", &bgp);
    let _log = LogOnPanic(node.log.clone());
    link_to_peer(&node, NODE, &peer_ns, PEER);
    peer_ns
        .exec(&[
            "ip",
            "addr",
            "add",
            &format!("{STRANGER}/24"),
            "dev",
            "eth0",
        ])
        .expect_ok();
    assert_eq!(peer_state(&node, PEER), "Active", "passive peers wait");

    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            peer_ns.name(),
            "python3",
            "-u",
            "-c",
            SCRIPT,
            NODE,
            PEER,
        ])
        .arg(STRANGER)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::{BufRead, Write};
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(next(), "stranger: closed");
    assert_eq!(next(), "established");
    assert_eq!(next(), "announced");
    assert!(wait_fib(
        &node,
        "10.244.7.0/26",
        Some(PEER),
        Duration::from_secs(3)
    ));
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(next(), "bad origin sent");
    assert!(
        wait_fib(&node, "10.244.7.0/26", None, Duration::from_secs(3)),
        "treat-as-withdraw did not remove the route"
    );
    let p = &peers(&node)[0];
    assert_eq!(p["state"], "Established", "session must survive: {p:#}");
    assert_eq!(p["treat_as_withdraw"], 1);
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(next(), "notification 1/1");
    let _ = child.wait();
    let p = &peers(&node)[0];
    assert_ne!(p["state"], "Established");
    assert!(
        p["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("connection not synchronized"),
        "{p:#}"
    );
    // Still serving.
    node.ctl(&["status"]);
}
