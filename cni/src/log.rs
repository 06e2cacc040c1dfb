//! Log lines on stderr, which runtimes keep (containerd and CRI-O log it,
//! podman prints it). Never stdout: that carries the CNI result.
use std::io::Write;

fn line(level: &str, msg: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "podrouter-cni[{}] {level}: {msg}",
        std::process::id()
    );
}

pub fn info(msg: &str) {
    line("info", msg);
}

pub fn warn(msg: &str) {
    line("warn", msg);
}

pub fn error(msg: &str) {
    line("error", msg);
}
