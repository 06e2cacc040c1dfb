//! The one rule for tests that need what a machine may lack (root,
//! `/dev/net/tun`, a tool, a built binary): such a test either runs, or
//! - with `PODROUTER_E2E_REQUIRE=1` (CI sets it when it runs as root) it
//!   fails, naming what is missing;
//! - otherwise it prints `SKIP <test>: <reasons>` on the process's standard
//!   output, past libtest's capture, and returns early. `scripts/test.sh`
//!   counts these lines, so a skip is never mistaken for a pass.
//!
//! A test states its needs with [`Needs`] (or [`privileged`] for the usual
//! root + TAP + `ip`) and returns when [`Needs::met`] is false.
use std::io::Write;
use std::path::Path;

pub use crate::sys::is_root;

/// The variable that turns every skip into a failure.
pub const REQUIRE_VAR: &str = "PODROUTER_E2E_REQUIRE";

/// Whether a test that cannot run must fail instead of skipping.
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Whether `cmd` is an executable file on `PATH`.
pub fn have_command(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(cmd);
            f.metadata().is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// What one test needs, and which of it is missing. Build it, then ask
/// [`Needs::met`].
#[derive(Debug)]
#[must_use = "ask `met()`: it decides whether the test runs"]
pub struct Needs {
    test: String,
    missing: Vec<String>,
}

impl Needs {
    /// Nothing needed yet; `test` names the test in the SKIP line.
    pub fn new(test: &str) -> Needs {
        Needs {
            test: test.to_string(),
            missing: Vec::new(),
        }
    }

    /// Effective uid 0.
    pub fn root(self) -> Needs {
        self.unless(
            is_root(),
            "not running as root (network namespaces and TAP devices need it)",
        )
    }

    /// `/dev/net/tun`, for TAP devices.
    pub fn tun(self) -> Needs {
        self.unless(
            Path::new("/dev/net/tun").exists(),
            "/dev/net/tun is missing",
        )
    }

    /// Root, `/dev/net/tun` and `ip`: what every namespace test needs.
    pub fn privileged(self) -> Needs {
        self.root().tun().commands(&["ip"])
    }

    /// Each command on `PATH`, or for an absolute path, that file.
    pub fn commands(mut self, cmds: &[&str]) -> Needs {
        for c in cmds {
            let there = if c.starts_with('/') {
                Path::new(c).exists()
            } else {
                have_command(c)
            };
            if !there {
                self.missing
                    .push(format!("`{c}` not found (run scripts/install-deps.sh)"));
            }
        }
        self
    }

    /// Anything else: missing, for `why`, unless `ok`.
    pub fn unless(mut self, ok: bool, why: impl Into<String>) -> Needs {
        if !ok {
            self.missing.push(why.into());
        }
        self
    }

    /// True when everything is there and the test should go on. Otherwise
    /// panics under `PODROUTER_E2E_REQUIRE=1`, or prints the SKIP line and
    /// returns false.
    #[must_use = "the test must return when this is false"]
    #[track_caller]
    pub fn met(self) -> bool {
        // Straight to the file descriptor: libtest only captures the print
        // macros, and the line must reach scripts/test.sh's log.
        self.decide(required(), &mut std::io::stdout().lock())
    }

    /// The rule itself, writing the SKIP line to `out`.
    #[track_caller]
    fn decide(self, required: bool, out: &mut dyn Write) -> bool {
        if self.missing.is_empty() {
            return true;
        }
        let why = self.missing.join("; ");
        if required {
            panic!(
                "{} cannot run: {why} ({REQUIRE_VAR}=1 forbids skipping)",
                self.test
            );
        }
        let _ = writeln!(out, "SKIP {}: {why}", self.test);
        let _ = out.flush();
        false
    }
}

/// The usual check of a privileged test: root, `/dev/net/tun` and `ip`.
#[must_use = "the test must return when this is false"]
#[track_caller]
pub fn privileged(test: &str) -> bool {
    Needs::new(test).privileged().met()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_runs_either_way() {
        let mut out = Vec::new();
        assert!(Needs::new("t").decide(false, &mut out));
        assert!(Needs::new("t").unless(true, "x").decide(true, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn something_missing_skips_when_not_required() {
        let n = Needs::new("t")
            .unless(false, "a")
            .commands(&["/nonexistent/podrouter-tool"]);
        assert_eq!(n.missing.len(), 2);
        let mut out = Vec::new();
        assert!(!n.decide(false, &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SKIP t: a; `/nonexistent/podrouter-tool` not found (run scripts/install-deps.sh)\n"
        );
    }

    #[test]
    #[should_panic(expected = "t cannot run: a (PODROUTER_E2E_REQUIRE=1 forbids skipping)")]
    fn something_missing_fails_when_required() {
        let _ = Needs::new("t")
            .unless(false, "a")
            .decide(true, &mut Vec::new());
    }

    #[test]
    fn commands_are_looked_up_on_path() {
        assert!(have_command("sh"));
        assert!(!have_command("podrouter-no-such-tool"));
        assert!(Needs::new("t").commands(&["sh", "/"]).missing.is_empty());
    }
}
