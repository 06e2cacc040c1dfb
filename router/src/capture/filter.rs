//! The capture and trace filter language: parsed once when a capture or
//! trace is armed (on the control thread), matched per frame only while
//! one is armed.
//!
//! Grammar (tcpdump's words, a subset):
//!
//! ```text
//! expr    := and ( ("or" | "||") and )*
//! and     := not ( ("and" | "&&") not )*
//! not     := ("not" | "!") not | primary
//! primary := "(" expr ")"
//!          | ["src" | "dst"] "host" ADDRESS
//!          | ["src" | "dst"] "net" ADDRESS/LEN
//!          | ["src" | "dst"] "port" NUMBER
//!          | ["proto"] ("tcp" | "udp" | "icmp" | "ipip" | "vxlan" | "arp")
//! ```
//!
//! Tunnels: a frame's headers are its outer IPv4 header and, for IPIP
//! (protocol 4) and VXLAN (UDP to port 4789), the inner one; `host`, `net`,
//! `port` and `tcp`/`udp`/`icmp` hold when the outer or the inner headers
//! satisfy them, so `host 10.244.1.2` finds a pod's packets inside the
//! tunnel too. `ipip` and `vxlan` name the encapsulation itself. ARP's
//! sender and target addresses count as its source and destination.
//!
//! Invariants: parsing rejects bad input with the 1-based character
//! position of the problem and never panics (nesting is bounded);
//! [`Filter::matches`] reads only within the frame's bytes, allocates
//! nothing and never panics on any input.
use std::net::Ipv4Addr;

/// The UDP port VXLAN frames are recognised by (IANA's, Calico's).
pub const VXLAN_PORT: u16 = 4789;

/// Deepest nesting of parentheses and `not` accepted.
const MAX_DEPTH: usize = 64;

/// Most terms in one filter (bounds the depth of the parsed tree, which is
/// matched and dropped recursively).
const MAX_TERMS: usize = 256;

/// Which address or port of a header a term looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Either,
    Src,
    Dst,
}

/// What `proto` (or a bare protocol word) selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Ipip,
    Vxlan,
    Arp,
}

/// A parsed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// The empty filter: every frame.
    All,
    Host(Side, Ipv4Addr),
    /// Network address (already masked) and mask.
    Net(Side, u32, u32),
    Port(Side, u16),
    Proto(Proto),
    Not(Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

/// A filter that does not parse: what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad filter at character {pos}: {what}")]
pub struct FilterError {
    /// 1-based character position in the filter text.
    pub pos: usize,
    pub what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Open,
    Close,
    Not,
    And,
    Or,
    Word(&'a str),
}

fn tokenize(text: &str) -> Result<Vec<(usize, Tok<'_>)>, FilterError> {
    let mut toks = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        let pos = text[..i].chars().count() + 1;
        let word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_' | '-' | ':');
        if c.is_whitespace() {
            chars.next();
        } else if c == '(' || c == ')' || c == '!' {
            chars.next();
            let t = match c {
                '(' => Tok::Open,
                ')' => Tok::Close,
                _ => Tok::Not,
            };
            toks.push((pos, t));
        } else if c == '&' || c == '|' {
            chars.next();
            if chars.next_if(|&(_, d)| d == c).is_none() {
                return Err(FilterError {
                    pos,
                    what: format!("expected {c}{c}"),
                });
            }
            toks.push((pos, if c == '&' { Tok::And } else { Tok::Or }));
        } else if word(c) {
            let mut end = i;
            while let Some((j, d)) = chars.next_if(|&(_, d)| word(d)) {
                end = j + d.len_utf8();
            }
            let w = &text[i..end];
            let t = match w {
                "and" => Tok::And,
                "or" => Tok::Or,
                "not" => Tok::Not,
                _ => Tok::Word(w),
            };
            toks.push((pos, t));
        } else {
            return Err(FilterError {
                pos,
                what: format!("unexpected character {c:?}"),
            });
        }
    }
    Ok(toks)
}

struct Parser<'a> {
    toks: Vec<(usize, Tok<'a>)>,
    next: usize,
    /// Position just past the text, for "ended too early" errors.
    end: usize,
    terms: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.next).map(|&(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.next).map_or(self.end, |&(p, _)| p)
    }

    fn error(&self, what: impl Into<String>) -> FilterError {
        FilterError {
            pos: self.pos(),
            what: what.into(),
        }
    }

    fn bump(&mut self) -> Option<Tok<'a>> {
        let t = self.peek();
        self.next += 1;
        t
    }

    fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut f = self.and(depth)?;
        while self.peek() == Some(Tok::Or) {
            self.bump();
            f = Filter::Or(Box::new(f), Box::new(self.and(depth)?));
        }
        Ok(f)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut f = self.not(depth)?;
        while self.peek() == Some(Tok::And) {
            self.bump();
            f = Filter::And(Box::new(f), Box::new(self.not(depth)?));
        }
        Ok(f)
    }

    fn not(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH}")));
        }
        match self.peek() {
            Some(Tok::Not) => {
                self.bump();
                Ok(Filter::Not(Box::new(self.not(depth + 1)?)))
            }
            Some(Tok::Open) => {
                self.bump();
                let f = self.or(depth + 1)?;
                if self.bump() != Some(Tok::Close) {
                    self.next -= 1;
                    return Err(self.error("expected )"));
                }
                Ok(f)
            }
            _ => self.term(),
        }
    }

    fn word(&mut self, what: &str) -> Result<&'a str, FilterError> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                self.bump();
                Ok(w)
            }
            _ => Err(self.error(format!("expected {what}"))),
        }
    }

    fn term(&mut self) -> Result<Filter, FilterError> {
        let start = self.pos();
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(self.error(format!("more than {MAX_TERMS} terms")));
        }
        let first = self.word("host, net, port, proto or a protocol")?;
        let (side, keyword) = match first {
            "src" => (Side::Src, self.word("host, net or port after src")?),
            "dst" => (Side::Dst, self.word("host, net or port after dst")?),
            w => (Side::Either, w),
        };
        let at = self.pos();
        let bad = |what: String| FilterError { pos: at, what };
        match keyword {
            "host" => {
                let a = self.word("an IPv4 address after host")?;
                let ip = a
                    .parse()
                    .map_err(|_| bad(format!("{a:?} is not an IPv4 address")))?;
                Ok(Filter::Host(side, ip))
            }
            "net" => {
                let a = self.word("ADDRESS/LEN after net")?;
                let (ip, len) = a
                    .split_once('/')
                    .and_then(|(ip, len)| Some((ip.parse::<Ipv4Addr>().ok()?, len.parse::<u32>().ok()?)))
                    .filter(|&(_, len)| len <= 32)
                    .ok_or_else(|| bad(format!("{a:?} is not ADDRESS/LEN (LEN 0 to 32)")))?;
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Ok(Filter::Net(side, u32::from(ip) & mask, mask))
            }
            "port" => {
                let p = self.word("a port number after port")?;
                let port = p
                    .parse()
                    .map_err(|_| bad(format!("{p:?} is not a port number (0 to 65535)")))?;
                Ok(Filter::Port(side, port))
            }
            _ if side != Side::Either => Err(FilterError {
                pos: start,
                what: "src and dst go with host, net or port".into(),
            }),
            "proto" => {
                let p = self.word("tcp, udp, icmp, ipip, vxlan or arp after proto")?;
                proto(p)
                    .map(Filter::Proto)
                    .ok_or_else(|| bad(format!("unknown protocol {p:?} (tcp, udp, icmp, ipip, vxlan, arp)")))
            }
            w => proto(w).map(Filter::Proto).ok_or_else(|| FilterError {
                pos: start,
                what: format!("unknown word {w:?} (host, net, port, proto, src, dst, tcp, udp, icmp, ipip, vxlan, arp)"),
            }),
        }
    }
}

fn proto(w: &str) -> Option<Proto> {
    Some(match w {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        "ipip" => Proto::Ipip,
        "vxlan" => Proto::Vxlan,
        "arp" => Proto::Arp,
        _ => return None,
    })
}

impl Filter {
    /// Parses a filter; empty (or blank) text is [`Filter::All`].
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let toks = tokenize(text)?;
        if toks.is_empty() {
            return Ok(Filter::All);
        }
        let mut p = Parser {
            toks,
            next: 0,
            end: text.chars().count() + 1,
            terms: 0,
        };
        let f = p.or(0)?;
        if p.next < p.toks.len() {
            return Err(p.error("expected and, or or the end of the filter"));
        }
        Ok(f)
    }

    /// Whether an Ethernet frame matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if *self == Filter::All {
            return true;
        }
        self.eval(&Headers::parse(frame))
    }

    fn eval(&self, h: &Headers) -> bool {
        match self {
            Filter::All => true,
            Filter::Host(side, ip) => {
                let ip = u32::from(*ip);
                h.any(|l| side.pick(l.src, l.dst, |a| a == ip))
            }
            Filter::Net(side, net, mask) => {
                h.any(|l| side.pick(l.src, l.dst, |a| a & mask == *net))
            }
            Filter::Port(side, port) => h.any(|l| {
                l.ports
                    .is_some_and(|(s, d)| side.pick(s, d, |p| p == *port))
            }),
            Filter::Proto(Proto::Ipip) => h.ipip,
            Filter::Proto(Proto::Vxlan) => h.vxlan,
            Filter::Proto(Proto::Arp) => h.arp,
            Filter::Proto(p) => {
                let n = match p {
                    Proto::Tcp => 6,
                    Proto::Udp => 17,
                    _ => 1,
                };
                h.any(|l| l.proto == Some(n))
            }
            Filter::Not(f) => !f.eval(h),
            Filter::And(a, b) => a.eval(h) && b.eval(h),
            Filter::Or(a, b) => a.eval(h) || b.eval(h),
        }
    }
}

impl Side {
    fn pick<T: Copy>(self, src: T, dst: T, f: impl Fn(T) -> bool) -> bool {
        match self {
            Side::Either => f(src) || f(dst),
            Side::Src => f(src),
            Side::Dst => f(dst),
        }
    }
}

/// One set of addresses (an IPv4 header, or ARP's sender and target).
#[derive(Clone, Copy, Default)]
struct Layer {
    src: u32,
    dst: u32,
    /// IPv4 protocol; `None` for ARP.
    proto: Option<u8>,
    /// TCP or UDP ports of a first fragment.
    ports: Option<(u16, u16)>,
}

/// The outer and (for a tunnel) inner headers of a frame.
#[derive(Default)]
struct Headers {
    layers: [Layer; 2],
    count: usize,
    arp: bool,
    ipip: bool,
    vxlan: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Headers {
    fn any(&self, f: impl Fn(&Layer) -> bool) -> bool {
        self.layers[..self.count].iter().any(f)
    }

    fn push(&mut self, l: Layer) {
        if self.count < self.layers.len() {
            self.layers[self.count] = l;
            self.count += 1;
        }
    }

    fn parse(frame: &[u8]) -> Headers {
        let mut h = Headers::default();
        h.ethernet(frame, true);
        h
    }

    /// An Ethernet frame; `outer`: tunnels inside it are followed.
    fn ethernet(&mut self, f: &[u8], outer: bool) {
        match be16(f, 12) {
            Some(0x0806) => {
                if let (Some(spa), Some(tpa)) = (be32(f, 28), be32(f, 38)) {
                    self.arp = true;
                    self.push(Layer {
                        src: spa,
                        dst: tpa,
                        ..Layer::default()
                    });
                }
            }
            Some(0x0800) => self.ipv4(f.get(14..).unwrap_or_default(), outer),
            _ => {}
        }
    }

    fn ipv4(&mut self, p: &[u8], outer: bool) {
        let (Some(&vihl), Some(&proto), Some(src), Some(dst), Some(frag)) =
            (p.first(), p.get(9), be32(p, 12), be32(p, 16), be16(p, 6))
        else {
            return;
        };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return;
        }
        let l4 = p.get(ihl..).unwrap_or_default();
        let first_fragment = frag & 0x1fff == 0;
        let ports = (first_fragment && (proto == 6 || proto == 17))
            .then(|| Some((be16(l4, 0)?, be16(l4, 2)?)))
            .flatten();
        self.push(Layer {
            src,
            dst,
            proto: Some(proto),
            ports,
        });
        if !outer || !first_fragment {
            return;
        }
        if proto == 4 {
            self.ipip = true;
            self.ipv4(l4, false);
        } else if proto == 17 && ports.is_some_and(|(_, d)| d == VXLAN_PORT) {
            self.vxlan = true;
            self.ethernet(l4.get(16..).unwrap_or_default(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xee; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&[0, 0, 0, 0]);
        u.extend_from_slice(payload);
        u
    }

    const A: [u8; 4] = [10, 244, 1, 2];
    const B: [u8; 4] = [10, 244, 2, 3];
    const NODE1: [u8; 4] = [192, 168, 0, 1];
    const NODE2: [u8; 4] = [192, 168, 0, 2];

    fn ping() -> Vec<u8> {
        eth(0x0800, &ipv4(A, B, 1, &[8, 0, 0, 0, 0, 1, 0, 1]))
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = udp(sport, dport, &[0; 12]);
        t.truncate(20);
        eth(0x0800, &ipv4(A, B, 6, &t))
    }

    fn m(filter: &str, frame: &[u8]) -> bool {
        Filter::parse(filter).unwrap().matches(frame)
    }

    #[test]
    fn terms_match_what_they_name() {
        let p = ping();
        assert!(m("", &p));
        assert!(m("icmp", &p));
        assert!(m("proto icmp", &p));
        assert!(!m("tcp", &p));
        assert!(m("host 10.244.1.2", &p));
        assert!(m("src host 10.244.1.2", &p));
        assert!(!m("dst host 10.244.1.2", &p));
        assert!(m("dst net 10.244.2.0/24", &p));
        assert!(!m("src net 10.244.2.0/24", &p));
        assert!(m("net 0.0.0.0/0", &p));
        assert!(!m("port 80", &p));
        let t = tcp(40000, 80);
        assert!(m("tcp and port 80", &t));
        assert!(m("dst port 80", &t));
        assert!(!m("src port 80", &t));
        assert!(m("tcp && !udp", &t));
        assert!(m("udp || (tcp and not port 22)", &t));
        assert!(!m("not (tcp or icmp)", &t));
        let arp = eth(
            0x0806,
            &[
                0, 1, 8, 0, 6, 4, 0, 1, 2, 2, 2, 2, 2, 2, 10, 244, 1, 2, 0, 0, 0, 0, 0, 0, 169,
                254, 1, 1,
            ],
        );
        assert!(m(
            "arp and src host 10.244.1.2 and dst host 169.254.1.1",
            &arp
        ));
        assert!(!m("icmp", &arp));
    }

    #[test]
    fn terms_see_inside_ipip_and_vxlan() {
        let inner = ipv4(A, B, 1, &[8, 0, 0, 0, 0, 1, 0, 1]);
        let ipip = eth(0x0800, &ipv4(NODE1, NODE2, 4, &inner));
        assert!(m(
            "ipip and host 10.244.2.3 and icmp and host 192.168.0.1",
            &ipip
        ));
        assert!(!m("vxlan", &ipip));
        let mut vx = vec![8, 0, 0, 0, 0, 0x10, 0, 0];
        vx.extend(eth(0x0800, &inner));
        let vxlan = eth(0x0800, &ipv4(NODE1, NODE2, 17, &udp(5000, VXLAN_PORT, &vx)));
        assert!(m("vxlan and udp and icmp and dst host 10.244.2.3", &vxlan));
        assert!(!m("ipip", &vxlan));
    }

    #[test]
    fn truncated_or_random_frames_never_panic() {
        let f = Filter::parse("host 1.2.3.4 or port 9 or ipip or vxlan or arp or icmp").unwrap();
        let mut frames = vec![ping(), tcp(1, 2)];
        let inner = ipv4(A, B, 17, &udp(1, 2, &[]));
        frames.push(eth(0x0800, &ipv4(NODE1, NODE2, 4, &inner)));
        for full in frames {
            for n in 0..=full.len() {
                f.matches(&full[..n]);
            }
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let frame: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            f.matches(&frame);
        }
    }

    #[test]
    fn bad_filters_say_where() {
        let e = |s: &str| Filter::parse(s).unwrap_err();
        assert_eq!(e("host").pos, 5);
        assert_eq!(e("host 10.0.0.300").pos, 6);
        assert_eq!(e("icmp and").pos, 9);
        assert_eq!(e("icmp tcp").pos, 6);
        assert_eq!(e("(icmp").pos, 6);
        assert_eq!(e("icmp)").pos, 5);
        assert_eq!(e("net 10.0.0.0/33").pos, 5);
        assert_eq!(e("port 70000").pos, 6);
        assert_eq!(e("icmp & tcp").pos, 6);
        assert_eq!(e("src tcp").pos, 1);
        assert_eq!(e("proto gre").pos, 7);
        assert_eq!(e("hots 1.2.3.4").pos, 1);
        assert_eq!(e("icmp $").pos, 6);
        assert!(e("hots 1.2.3.4").to_string().contains("character 1"));
        let deep = "(".repeat(10_000) + "icmp" + &")".repeat(10_000);
        assert!(e(&deep).what.contains("nested"));
        let nots = "not ".repeat(10_000) + "icmp";
        assert!(e(&nots).what.contains("nested"));
        let long = vec!["icmp"; 10_000].join(" or ");
        assert!(e(&long).what.contains("terms"));
    }
}
