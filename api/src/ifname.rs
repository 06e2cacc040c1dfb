//! The interface-name rule every podrouter component applies (the daemon
//! to attach requests, the CNI plugin to `CNI_IFNAME`, the config to its
//! interface keys, podnet before it opens a TAP): Linux's own
//! (`dev_valid_name`), narrowed to printable ASCII as the CNI spec asks.
//!
//! Invariant: a name that passes is 1-15 bytes (it fits `IFNAMSIZ` with
//! its NUL), is not `.` or `..`, and holds no whitespace, control
//! character, `/` or `:`.

/// Longest interface name, in bytes, without the trailing NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// A name the rule refuses; its message says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid interface name: 1-15 printable characters, not \".\" or \"..\", \
     without '/', ':' or whitespace"
)]
pub struct InvalidIfname(pub String);

/// Checks `name` against the rule (see the module doc).
pub fn check_ifname(name: &str) -> Result<(), InvalidIfname> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    ok.then_some(())
        .ok_or_else(|| InvalidIfname(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["eth0", "podrouter0", "123456789012345", "a.b-c_d@e"] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        let long = "1234567890123456";
        for bad in [
            "", ".", "..", long, "a/b", "a:b", "a b", "a\tb", "é", "a\0b",
        ] {
            let e = check_ifname(bad).unwrap_err();
            assert!(e.to_string().contains("not a valid interface name"), "{e}");
        }
    }
}
