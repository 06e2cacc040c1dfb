//! A small stderr logger: `2026-11-22T04:20:02.123Z INFO  podrouterd: message`.
//!
//! Invariants: one `write` per record so lines from threads never interleave.
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger; the level comes from `PODROUTER_LOG` if set, else
/// from the argument.
pub fn init(level: log::LevelFilter) {
    let level = std::env::var("PODROUTER_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Changes the level at runtime (a config reload); `PODROUTER_LOG`, if
/// set, still wins. Returns the level in force.
pub fn set_level(level: log::LevelFilter) -> log::LevelFilter {
    let level = std::env::var("PODROUTER_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    log::set_max_level(level);
    level
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // netlink-packet-route warns on every dump that this kernel sends
        // attributes newer than it knows; that is expected, not actionable.
        if m.target().starts_with("netlink_packet") {
            return m.level() <= log::Level::Error;
        }
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "{} {:<5} {}: {}\n",
            timestamp(),
            r.level(),
            r.target(),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// UTC time as RFC 3339 with milliseconds, without a date library.
fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
