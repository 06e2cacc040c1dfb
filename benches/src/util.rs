//! Plumbing shared by the harness: errors, the Ctrl-C flag, running commands
//! with timeouts, background processes and network namespaces that clean up
//! after themselves, the progress line and a log of everything run. Unique
//! names, the namespace delete and stale sweep, temporary directories and
//! the command lookup are `podrouter-testkit`'s, shared with the tests.
use std::fmt;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::sys;

pub use podrouter_testkit::{have_command, is_root, TempDir};

// ---------------------------------------------------------------------------
// Errors

/// Why a step of the harness failed; `interrupted` when Ctrl-C (SIGINT) or
/// SIGTERM arrived.
#[derive(Debug)]
pub struct Error {
    pub msg: String,
    pub interrupted: bool,
}

pub type Res<T> = Result<T, Error>;

impl Error {
    pub fn msg(m: impl Into<String>) -> Error {
        Error {
            msg: m.into(),
            interrupted: false,
        }
    }

    pub fn interrupted() -> Error {
        Error {
            msg: "interrupted".into(),
            interrupted: true,
        }
    }

    /// Prefixes the message with what was being done.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            msg: format!("{what}: {}", self.msg),
            interrupted: self.interrupted,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::msg(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::msg(format!("JSON: {e}"))
    }
}

/// `return Err(Error::msg(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::util::Error::msg(format!($($t)*))) };
}

// ---------------------------------------------------------------------------
// Interruption

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Makes SIGINT, SIGTERM and SIGHUP set the interrupt flag instead of
/// killing the harness, so that every guard gets to clean up.
pub fn install_signal_handlers() -> Res<()> {
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag()))
            .map_err(|e| Error::msg(format!("cannot install signal handler: {e}")))?;
    }
    Ok(())
}

pub fn is_interrupted() -> bool {
    flag().load(Ordering::Relaxed)
}

/// `Err(interrupted)` once a signal arrived.
pub fn check() -> Res<()> {
    if is_interrupted() {
        Err(Error::interrupted())
    } else {
        Ok(())
    }
}

/// Sleeps, waking every 50 ms to notice an interrupt.
pub fn sleep(d: Duration) -> Res<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------
// Log

fn log_file() -> &'static Mutex<Option<fs::File>> {
    static LOG: OnceLock<Mutex<Option<fs::File>>> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(None))
}

/// Sends every later [`log`] line to `path`.
pub fn open_log(path: &Path) -> Res<()> {
    let f = fs::File::create(path)
        .map_err(|e| Error::msg(format!("cannot create {}: {e}", path.display())))?;
    *log_file().lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    Ok(())
}

/// Appends a line to the run's log file (commands, their output, notes).
pub fn log(line: &str) {
    if let Some(f) = log_file()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        let _ = writeln!(f, "{line}");
    }
}

// ---------------------------------------------------------------------------
// Commands

/// Shell-quotes a command for logs and messages.
pub fn show(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;&|<>".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                (*a).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> Option<JoinHandle<String>> {
    r.map(|mut r| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
}

/// A process this harness started. Dropping it sends SIGTERM to its pid,
/// then SIGKILL if it is still there after three seconds.
pub struct Proc {
    pub name: String,
    child: Child,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

impl Proc {
    /// Starts `args` with stdin from `stdin_data` (or nothing), stdout and
    /// stderr captured (or sent to `log_to`).
    pub fn spawn(name: &str, args: &[&str], log_to: Option<&Path>) -> Res<Proc> {
        Proc::spawn_full(name, args, log_to, None, &[])
    }

    pub fn spawn_full(
        name: &str,
        args: &[&str],
        log_to: Option<&Path>,
        stdin_data: Option<&[u8]>,
        env: &[(&str, &str)],
    ) -> Res<Proc> {
        check()?;
        log(&format!("$ {} &", show(args)));
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(if stdin_data.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        match log_to {
            Some(p) => {
                let f = fs::File::create(p)?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::msg(format!("cannot run {}: {e}", show(args))))?;
        if let (Some(data), Some(mut sin)) = (stdin_data, child.stdin.take()) {
            // Small inputs (CNI configs): fits the pipe, no deadlock.
            let _ = sin.write_all(data);
        }
        let out = reader(child.stdout.take());
        let err = reader(child.stderr.take());
        Ok(Proc {
            name: name.to_string(),
            child,
            out,
            err,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the exit, then returns what it printed.
    /// On timeout or interrupt the process is stopped (SIGTERM, SIGKILL).
    pub fn wait(mut self, timeout: Duration) -> Res<Out> {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            check()?;
            if Instant::now() >= end {
                self.stop();
                bail!("{} did not finish within {:?}", self.name, timeout);
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        log(&format!(
            "[{} exited {status}]\n{}{}",
            self.name,
            truncate(&stdout, 4000),
            truncate(&stderr, 4000)
        ));
        Ok(Out {
            status,
            stdout,
            stderr,
        })
    }

    /// SIGTERM, then SIGKILL after three seconds; reaps the process.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        sys::kill(self.pid(), libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        log(&format!(
            "{} (pid {}) ignored SIGTERM; killing it",
            self.name,
            self.pid()
        ));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = n;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// Runs a command to completion (at most `timeout`).
pub fn run_t(args: &[&str], timeout: Duration) -> Res<Out> {
    Proc::spawn(args[0], args, None)?.wait(timeout)
}

/// Runs a command (at most 60 s) that must succeed; returns its stdout.
pub fn run(args: &[&str]) -> Res<String> {
    let out = run_t(args, Duration::from_secs(60))?;
    if !out.ok() {
        bail!(
            "`{}` failed ({}): {}{}",
            show(args),
            out.status,
            out.stderr.trim(),
            if out.stderr.trim().is_empty() {
                out.stdout.trim()
            } else {
                ""
            }
        );
    }
    Ok(out.stdout)
}

/// Runs `ip -batch -` (optionally `-n NS`) on the given lines.
pub fn ip_batch(netns: Option<&str>, lines: &str) -> Res<()> {
    let mut args = vec!["ip"];
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let p = Proc::spawn_full("ip -batch", &args, None, Some(lines.as_bytes()), &[])?;
    let out = p.wait(Duration::from_secs(300))?;
    if !out.ok() {
        bail!(
            "`{}` failed: {}\n(input began: {})",
            show(&args),
            out.stderr.trim(),
            truncate(lines, 300)
        );
    }
    Ok(())
}

/// Runs a shell script inside network namespace `ns`.
pub fn ns_sh(ns: &str, script: &str) -> Res<String> {
    run(&["ip", "netns", "exec", ns, "sh", "-c", script])
}

// ---------------------------------------------------------------------------
// Network namespaces

/// The prefix of every name the harness gives (network namespaces, and
/// after `podrouter-bench-`, temporary directories): `prb<pid>-`.
const PREFIX: &str = "prb";

/// A new unique tag for one topology: `prb<pid>-<n>`.
pub fn unique_tag() -> String {
    podrouter_testkit::unique(PREFIX)
}

/// Network namespaces created (in one batch) by this harness; on drop, any
/// process still inside them (only ever one this harness started) is killed
/// by pid and the namespaces are deleted, in reverse order of creation.
pub struct NetnsGroup {
    names: Vec<String>,
}

impl NetnsGroup {
    /// Creates the namespaces and brings up their loopback.
    pub fn create(names: Vec<String>) -> Res<NetnsGroup> {
        check()?;
        let mut g = NetnsGroup { names: Vec::new() };
        // Create in chunks so that a failure leaves a group that knows
        // exactly what exists.
        for chunk in names.chunks(200) {
            let lines: String = chunk.iter().map(|n| format!("netns add {n}\n")).collect();
            let r = ip_batch(None, &lines);
            for n in chunk {
                if Path::new("/run/netns").join(n).exists() {
                    g.names.push(n.clone());
                }
            }
            r?;
        }
        for n in &g.names {
            check()?;
            run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(g)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Drop for NetnsGroup {
    fn drop(&mut self) {
        delete_namespaces(&self.names);
        self.names.clear();
    }
}

/// Deletes namespaces (killing, by pid, what still runs inside), noting
/// kills in the log and failures on stderr.
fn delete_namespaces(names: &[String]) {
    for n in podrouter_testkit::netns::delete_namespaces(names, &log) {
        eprintln!("warning: could not delete netns {n}");
    }
}

/// Deletes namespaces `prb<pid>-*` left by an earlier harness run that died
/// without cleaning up (its `<pid>` no longer exists).
pub fn sweep_stale_namespaces() {
    let stale = podrouter_testkit::netns::stale_namespaces(PREFIX);
    if !stale.is_empty() {
        eprintln!(
            "removing {} network namespaces left by an earlier podrouter-bench run ({}...)",
            stale.len(),
            stale[0]
        );
        delete_namespaces(&stale);
    }
}

/// The run's temporary directory for topology `tag`:
/// `podrouter-bench-<tag>` under the system temp dir, removed on drop.
pub fn temp_dir(tag: &str) -> Res<TempDir> {
    Ok(TempDir::create(
        std::env::temp_dir().join(format!("podrouter-bench-{tag}")),
    )?)
}

// ---------------------------------------------------------------------------
// Progress

/// One status line on stderr: `[ 12/40  1m05s] what is running`. Rewritten
/// in place on a terminal, one line per step otherwise.
pub struct Progress {
    total: usize,
    done: usize,
    start: Instant,
    tty: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(total: usize, quiet: bool) -> Progress {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
            tty: io::stderr().is_terminal(),
            quiet,
        }
    }

    /// Starts the next step.
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        self.total = self.total.max(self.done);
        log(&format!("== step {}/{}: {what}", self.done, self.total));
        if self.quiet {
            return;
        }
        let t = self.start.elapsed().as_secs();
        let w = self.total.to_string().len();
        let bar_w = 20;
        let filled = bar_w * (self.done - 1) / self.total.max(1);
        let bar: String = "#".repeat(filled) + &".".repeat(bar_w - filled);
        let line = format!(
            "[{bar}] {:>w$}/{} {:>2}m{:02}s  {what}",
            self.done,
            self.total,
            t / 60,
            t % 60
        );
        let mut e = io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    /// Shows `msg` on the status line without counting a step (terminal
    /// only; logged either way).
    pub fn sub(&self, msg: &str) {
        log(msg);
        if self.tty && !self.quiet {
            let t = self.start.elapsed().as_secs();
            let mut e = io::stderr().lock();
            let _ = write!(e, "\r\x1b[K[{:>2}m{:02}s] {msg}", t / 60, t % 60);
            let _ = e.flush();
        }
    }

    /// Prints a message on its own line (keeping the status line intact).
    pub fn note(&self, msg: &str) {
        log(msg);
        let mut e = io::stderr().lock();
        if self.tty && !self.quiet {
            let _ = write!(e, "\r\x1b[K");
        }
        let _ = writeln!(e, "{msg}");
    }

    /// Ends the status line.
    pub fn finish(&self) {
        if self.tty && !self.quiet {
            let t = self.start.elapsed().as_secs();
            let _ = writeln!(
                io::stderr(),
                "\r\x1b[Kdone: {} steps in {}m{:02}s",
                self.done,
                t / 60,
                t % 60
            );
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

// ---------------------------------------------------------------------------
// Statistics

/// Median, minimum and maximum of a non-empty sample.
pub fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

/// The `q` quantile (0..=1) of a sample, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_quantiles() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summary(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
    }

    #[test]
    fn quoting() {
        assert_eq!(show(&["ip", "a b", "x'y"]), "ip 'a b' 'x'\\''y'");
    }
}
