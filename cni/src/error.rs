//! The CNI error result (`{"cniVersion","code","msg","details"}`) and the
//! codes this plugin uses.
//!
//! Codes below 100 are the spec's well-known ones; 100 and up are this
//! plugin's own (documented in the crate README). The process exits with
//! the code as its status, so a shell user sees it too.
use serde::Serialize;

/// The spec's well-known error codes, and podrouter's own (100+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// 1: the requested cniVersion is not one this plugin speaks.
    IncompatibleVersion = 1,
    /// 2: a network configuration field this plugin does not support.
    UnsupportedField = 2,
    /// 3: the container (its network namespace) is unknown or gone.
    UnknownContainer = 3,
    /// 4: a required CNI_* environment variable is missing or invalid.
    InvalidEnv = 4,
    /// 5: reading stdin, writing stdout or a file failed.
    Io = 5,
    /// 6: stdin (or a delegated plugin's output) is not decodable.
    Decode = 6,
    /// 7: the network configuration is invalid.
    InvalidConfig = 7,
    /// 11: a transient condition (podrouterd unreachable); retry later.
    TryAgainLater = 11,
    /// 50: STATUS: the plugin cannot service ADD requests.
    NotAvailable = 50,
    /// 51: STATUS: not available, and existing pods may lack connectivity.
    NotAvailableLimitedConnectivity = 51,
    /// 100: podrouterd refused or failed the request.
    Daemon = 100,
    /// 101: the pod already has this attachment or interface.
    AlreadyExists = 101,
    /// 102: no address is available (pool exhausted, or address taken).
    AddressUnavailable = 102,
    /// 103: CHECK found the attachment different from prevResult.
    CheckFailed = 103,
    /// 104: a delegated (IPAM) plugin failed without a usable error.
    Delegate = 104,
    /// 110: a bug in this plugin (it panicked); nothing was left behind.
    Internal = 110,
}

/// A CNI error: what the runtime gets on stdout, with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details} (code {code})")]
pub struct CniError {
    pub code: u32,
    /// Short, characterizes the error.
    pub msg: String,
    /// Longer: what was found and what to do about it.
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// An error a delegated plugin reported, passed on unchanged except for
    /// naming the plugin in `msg`.
    pub fn from_delegate(plugin: &str, code: u32, msg: &str, details: &str) -> Self {
        CniError {
            code: if code == 0 {
                Code::Delegate as u32
            } else {
                code
            },
            msg: format!("IPAM plugin {plugin}: {msg}"),
            details: details.to_string(),
        }
    }

    /// The spec's JSON error object for protocol version `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{},\"msg\":\"error\",\"details\":\"\"}}",
                self.code
            )
        })
    }

    /// The process exit status for this error: the code itself when it fits
    /// (never 0).
    pub fn exit_status(&self) -> u8 {
        match u8::try_from(self.code) {
            Ok(0) | Err(_) => 1,
            Ok(c) => c,
        }
    }
}

pub type CniResult<T> = Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_is_the_spec_shape() {
        let e = CniError::new(
            Code::InvalidEnv,
            "missing environment variable",
            "CNI_CONTAINERID is required for ADD",
        );
        assert_eq!(
            e.to_json("1.1.0"),
            r#"{"cniVersion":"1.1.0","code":4,"msg":"missing environment variable","details":"CNI_CONTAINERID is required for ADD"}"#
        );
        assert_eq!(e.exit_status(), 4);
        let quoted = CniError::new(Code::Decode, "bad \"json\"", "line 1\ncolumn 2");
        let v: serde_json::Value = serde_json::from_str(&quoted.to_json("0.4.0")).unwrap();
        assert_eq!(v["msg"], "bad \"json\"");
        assert_eq!(v["details"], "line 1\ncolumn 2");
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn codes_are_the_spec_numbers() {
        let all = [
            (Code::IncompatibleVersion, 1),
            (Code::UnsupportedField, 2),
            (Code::UnknownContainer, 3),
            (Code::InvalidEnv, 4),
            (Code::Io, 5),
            (Code::Decode, 6),
            (Code::InvalidConfig, 7),
            (Code::TryAgainLater, 11),
            (Code::NotAvailable, 50),
            (Code::NotAvailableLimitedConnectivity, 51),
        ];
        for (c, n) in all {
            assert_eq!(c as u32, n);
            assert_eq!(CniError::new(c, "m", "d").exit_status() as u32, n);
        }
        assert_eq!(CniError::new(Code::Internal, "m", "d").exit_status(), 110);
        let big = CniError {
            code: 300,
            msg: "m".into(),
            details: String::new(),
        };
        assert_eq!(big.exit_status(), 1);
    }

    #[test]
    fn delegate_errors_keep_their_code() {
        let e = CniError::from_delegate("host-local", 7, "bad range", "10.0.0.0/31 too small");
        assert_eq!(e.code, 7);
        assert_eq!(e.msg, "IPAM plugin host-local: bad range");
        assert_eq!(CniError::from_delegate("x", 0, "m", "d").code, 104);
    }
}
