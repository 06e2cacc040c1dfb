//! IPv4 prefixes (`a.b.c.d/len`): the key of every route, block and subnet
//! podrouter handles.
//!
//! Invariants: a [`Prefix`] always has `len <= 32` and no host bits set.
//! [`Prefix::new`] and the parser refuse anything else (a typo in a config
//! file or a request is an error, not a silently different route);
//! [`Prefix::truncating`] clears the host bits, for code that derives a
//! network from an interface address or a wire encoding that may carry
//! trailing bits.
//!
//! # Syntax
//!
//! [`Prefix`] parses `a.b.c.d/len` only. A bare address such as `10.0.0.1`
//! is rejected with [`PrefixError::Syntax`] rather than read as a `/32`:
//! a block written without its length (`10.244.1.0`) must not silently turn
//! into a host route. Use [`Prefix::host`] for a `/32` in code. The address
//! follows [`Ipv4Addr`]'s parser (no leading zeros, no spaces); the length is
//! decimal digits only.
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: Ipv4Addr,
    len: u8,
}

/// Why a prefix was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// The length is not in 0..=32.
    BadLength(u32),
    /// Host bits are set: the address, the length, and the address masked.
    HostBits(Ipv4Addr, u8, Ipv4Addr),
    /// Not of the form a.b.c.d/len.
    Syntax(String),
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixError::BadLength(len) => write!(f, "prefix length {len} is out of range 0..=32"),
            PrefixError::HostBits(addr, len, masked) => write!(
                f,
                "{addr}/{len} has host bits set (did you mean {masked}/{len}?)"
            ),
            PrefixError::Syntax(s) => write!(f, "{s:?} is not an IPv4 prefix like 10.244.0.0/24"),
        }
    }
}

impl std::error::Error for PrefixError {}

/// The network mask of a prefix length `len` in 0..=32 (0 for `/0`).
#[inline]
pub fn netmask(len: u32) -> u32 {
    debug_assert!(len <= 32);
    (u64::MAX << (32 - len)) as u32
}

impl Prefix {
    /// `addr/len`; rejects `len > 32` and addresses with host bits set.
    #[inline]
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Prefix, PrefixError> {
        if len > 32 {
            return Err(PrefixError::BadLength(len.into()));
        }
        let masked = u32::from(addr) & netmask(len.into());
        if masked != u32::from(addr) {
            return Err(PrefixError::HostBits(addr, len, masked.into()));
        }
        Ok(Prefix { addr, len })
    }

    /// The network `addr` belongs to at length `len` (host bits cleared),
    /// e.g. `10.244.2.7`, 26 -> `10.244.2.0/26`. A length above 32 counts
    /// as 32.
    #[inline]
    pub fn truncating(addr: Ipv4Addr, len: u8) -> Prefix {
        let len = len.min(32);
        Prefix {
            addr: (u32::from(addr) & netmask(len.into())).into(),
            len,
        }
    }

    /// The `/32` of one address (a pod's route).
    #[inline]
    pub fn host(addr: Ipv4Addr) -> Prefix {
        Prefix { addr, len: 32 }
    }

    #[inline]
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    #[allow(clippy::len_without_is_empty)] // a prefix length, not a size
    #[inline]
    pub fn len(&self) -> u8 {
        self.len
    }

    #[inline]
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & netmask(self.len.into()) == u32::from(self.addr)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;
    /// Parses `a.b.c.d/len`; see the module doc for what is rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u32 = len.parse().map_err(|_| syntax())?;
        let len = u8::try_from(len).map_err(|_| PrefixError::BadLength(len))?;
        Prefix::new(addr, len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn truncating_clears_host_bits() {
        let t = Prefix::truncating;
        assert_eq!(t(ip("10.244.2.7"), 26), p("10.244.2.0/26"));
        assert_eq!(t(ip("192.168.57.31"), 24), p("192.168.57.0/24"));
        assert_eq!(t(ip("10.1.2.3"), 32), p("10.1.2.3/32"));
        assert_eq!(t(ip("1.2.3.4"), 0), p("0.0.0.0/0"));
        assert_eq!(t(ip("1.2.3.4"), 40), p("1.2.3.4/32"), "above 32 is 32");
    }

    #[test]
    fn prefix_new_validates() {
        assert_eq!(
            Prefix::new(ip("10.244.0.0"), 16).unwrap().to_string(),
            "10.244.0.0/16"
        );
        assert!(Prefix::new(ip("0.0.0.0"), 0).is_ok());
        assert!(Prefix::new(ip("255.255.255.255"), 32).is_ok());
        assert_eq!(
            Prefix::new(ip("0.0.0.0"), 33),
            Err(PrefixError::BadLength(33))
        );
        assert_eq!(
            Prefix::new(ip("0.0.0.0"), 255),
            Err(PrefixError::BadLength(255))
        );
        let e = Prefix::new(ip("10.244.1.2"), 24).unwrap_err();
        assert_eq!(
            e,
            PrefixError::HostBits(ip("10.244.1.2"), 24, ip("10.244.1.0"))
        );
        assert_eq!(
            e.to_string(),
            "10.244.1.2/24 has host bits set (did you mean 10.244.1.0/24?)"
        );
        assert_eq!(
            Prefix::new(ip("1.0.0.0"), 0),
            Err(PrefixError::HostBits(ip("1.0.0.0"), 0, ip("0.0.0.0")))
        );
        assert_eq!(Prefix::host(ip("10.0.0.1")), p("10.0.0.1/32"));
    }

    #[test]
    fn prefix_parse_and_display() {
        for s in [
            "10.244.0.0/24",
            "0.0.0.0/0",
            "255.255.255.255/32",
            "10.244.1.64/26",
        ] {
            let pf = p(s);
            assert_eq!(pf.to_string(), s);
        }
        let pf = p("10.244.0.0/24");
        assert_eq!((pf.addr(), pf.len()), (ip("10.244.0.0"), 24));
        assert_eq!(p("10.0.0.0/08"), p("10.0.0.0/8"));
    }

    #[test]
    fn prefix_parse_errors() {
        let syntax = |s: &str| PrefixError::Syntax(s.to_owned());
        for s in [
            "",
            "10.0.0.1", // a bare address is not a /32
            "10.0.0.0/",
            "/24",
            "10.0.0.0/24/1",
            "10.0.0.0/+24",
            "10.0.0.0/-1",
            "10.0.0.0/ 24",
            " 10.0.0.0/24",
            "10.0.0.0/24 ",
            "10.0.0/24",
            "010.0.0.0/8",
            "10.0.0.256/32",
            "fe80::/64",
            "10.0.0.0/99999999999",
            "junk",
        ] {
            assert_eq!(s.parse::<Prefix>(), Err(syntax(s)), "{s:?}");
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(PrefixError::BadLength(33))
        );
        assert_eq!(
            "10.0.0.0/4096".parse::<Prefix>(),
            Err(PrefixError::BadLength(4096))
        );
        assert_eq!(
            "10.0.0.1/24".parse::<Prefix>(),
            Err(PrefixError::HostBits(ip("10.0.0.1"), 24, ip("10.0.0.0")))
        );
        assert_eq!(
            syntax("junk").to_string(),
            "\"junk\" is not an IPv4 prefix like 10.244.0.0/24"
        );
        assert_eq!(
            PrefixError::BadLength(33).to_string(),
            "prefix length 33 is out of range 0..=32"
        );
    }

    #[test]
    fn prefix_contains() {
        assert!(p("0.0.0.0/0").contains(ip("255.1.2.3")));
        assert!(p("10.244.1.0/26").contains(ip("10.244.1.63")));
        assert!(!p("10.244.1.0/26").contains(ip("10.244.1.64")));
        assert!(p("10.0.0.1/32").contains(ip("10.0.0.1")));
        assert!(!p("10.0.0.1/32").contains(ip("10.0.0.0")));
    }
}
