//! The learned routes BGP installed, saved in the state directory
//! (`state_dir/bgp-routes`) so that the next start has them in the FIB
//! before the first packet instead of waiting for the peers to re-send
//! them (our side of no gap after a restart).
//!
//! The `bgp-save` thread receives the same route changes as the node
//! kernel's copy (`KernelJob`s, in order) as its signal that something
//! changed, and rewrites the file atomically (temporary file, then
//! rename) from the FIB's published snapshot, at most every
//! [`MIN_INTERVAL`] (or ten times as long as the last write took, so a
//! full table costs the thread at most a tenth of a core), and once more
//! when the BGP thread ends. A crash (`kill -9`) therefore loses at most
//! the changes of the last interval; they come back from the peers as
//! after any restart.
//!
//! It keeps no copy of the routes: the BGP thread publishes each batch
//! to the FIB before it hands the batch's changes on, so the snapshot
//! holds every learned route the changes announce (a write may see a
//! later batch, never an earlier one). In the FIB the learned routes are
//! the ones to other nodes ([`NextHop::Node`], [`NextHop::Nodes`]) that
//! are not static `[[routes]]` prefixes (the import policy never installs
//! those); pods, our blocks, the default route and the pools'
//! `Unreachable` entries are not. At a million routes a map of its own
//! was about 50 MiB, and the text of the file built in memory before the
//! write about 28 MiB more; the lines now go to the file as they are made.
//!
//! At start the daemon [`load`]s the file, keeps what the import policy
//! still accepts, and puts it in the FIB (`restore` in `super`); the
//! speaker takes those routes as installed (`Speaker::adopt`), and the
//! restart's sweep (every graceful-restart peer's End-of-RIB, or
//! `restart_time`) removes the ones no peer announced again.
//!
//! File format, one route a line: `PREFIX VIA[,VIA...]`, e.g.
//! `10.244.2.0/26 10.0.0.2`. A line that does not parse is skipped and
//! counted (the file is ours, but a truncated disk must not stop a start).
//!
//! Invariant: the file lists each prefix once, sorted, with sorted,
//! distinct vias.
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use podrouter_router::fib::{Fib, FibTable, GroupId, NextHop};
use podrouter_types::Prefix;

use crate::kernel_job::{KernelJob, Vias};

/// The file's name under `state_dir`.
pub const ROUTES_FILE: &str = "bgp-routes";

/// Shortest time between two writes of the file.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// The routes in `text` and how many lines did not parse.
pub fn parse(text: &str) -> (Vec<(Prefix, Vias)>, usize) {
    let mut routes = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Some(r) => routes.push(r),
            None => bad += 1,
        }
    }
    (routes, bad)
}

fn parse_line(line: &str) -> Option<(Prefix, Vias)> {
    let mut words = line.split_whitespace();
    let prefix: Prefix = words.next()?.parse().ok()?;
    let mut vias: Vec<Ipv4Addr> = words
        .next()?
        .split(',')
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if words.next().is_some() {
        return None;
    }
    vias.sort();
    vias.dedup();
    Some((prefix, Vias::new(&vias)?))
}

/// The file's text for these routes, sorted by prefix.
#[cfg(test)]
pub fn encode<'a>(routes: impl IntoIterator<Item = (&'a Prefix, &'a Vias)>) -> String {
    let mut rows: Vec<(&Prefix, &Vias)> = routes.into_iter().collect();
    rows.sort_by_key(|(p, _)| **p);
    let mut out = String::with_capacity(rows.len() * 28);
    for (p, vias) in rows {
        push_line(&mut out, *p, vias);
    }
    out
}

/// Appends the line of one route.
fn push_line(out: &mut String, p: Prefix, vias: &[Ipv4Addr]) {
    push_ipv4(out, p.addr());
    out.push('/');
    push_u8(out, p.len());
    out.push(' ');
    for (i, v) in vias.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_ipv4(out, *v);
    }
    out.push('\n');
}

/// The learned routes of one FIB snapshot (see the module header:
/// routes to other nodes, not static prefixes), sorted by prefix, with
/// the members of the ECMP groups they name: all a write needs, so the
/// snapshot itself can go before the file is written.
pub struct Learned {
    routes: Vec<(Prefix, NextHop)>,
    groups: HashMap<GroupId, Vec<Ipv4Addr>>,
}

impl Learned {
    pub fn of(table: &FibTable, statics: &[Prefix]) -> Learned {
        let mut routes = table.routes();
        routes.retain(|(p, nh)| {
            matches!(nh, NextHop::Node(_) | NextHop::Nodes(_)) && !statics.contains(p)
        });
        let mut groups = HashMap::new();
        for (_, nh) in &routes {
            if let NextHop::Nodes(g) = nh {
                groups.entry(*g).or_insert_with(|| table.group(*g).to_vec());
            }
        }
        Learned { routes, groups }
    }

    /// The routes, each with its next hops (sorted, distinct; a route
    /// whose group is empty is left out).
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, &[Ipv4Addr])> {
        self.routes.iter().filter_map(|(p, nh)| {
            let vias: &[Ipv4Addr] = match nh {
                NextHop::Node(a) => std::slice::from_ref(a),
                NextHop::Nodes(g) => self.groups.get(g)?,
                _ => return None,
            };
            (!vias.is_empty()).then_some((*p, vias))
        })
    }

    /// Writes their lines to `out`.
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut line = String::with_capacity(64);
        for (p, vias) in self.iter() {
            line.clear();
            push_line(&mut line, p, vias);
            out.write_all(line.as_bytes())?;
        }
        Ok(())
    }
}

/// Appends `a` dotted (what `Display` writes, several times faster: a
/// full table is a million of these).
fn push_ipv4(out: &mut String, a: Ipv4Addr) {
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u8(out, o);
    }
}

fn push_u8(out: &mut String, v: u8) {
    if v >= 100 {
        out.push(char::from(b'0' + v / 100));
    }
    if v >= 10 {
        out.push(char::from(b'0' + v / 10 % 10));
    }
    out.push(char::from(b'0' + v % 10));
}

/// The routes saved under `state_dir` (none if there is no file).
pub fn load(state_dir: &Path) -> Vec<(Prefix, Vias)> {
    let path = state_dir.join(ROUTES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            log::warn!("bgp: cannot read {}: {e}", path.display());
            return Vec::new();
        }
    };
    let (routes, bad) = parse(&text);
    if bad > 0 {
        log::warn!(
            "bgp: {}: {bad} line(s) did not parse and were skipped",
            path.display()
        );
    }
    routes
}

/// Writes what `fill` writes to `path` through a temporary file and a
/// rename, so a reader (the next start) sees the old file or the new
/// one, whole.
fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<std::fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = BufWriter::with_capacity(256 * 1024, std::fs::File::create(&tmp)?);
    fill(&mut f)?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// The `bgp-save` thread's state: where the routes are (the FIB) and
/// whether they changed since the last write.
pub struct Saver {
    path: PathBuf,
    fib: Arc<Fib>,
    /// The static `[[routes]]` prefixes: in the FIB, not learned.
    statics: Vec<Prefix>,
    dirty: bool,
    interval: Duration,
}

impl Saver {
    /// Saves the learned routes of `fib` (`statics`: the static
    /// `[[routes]]` prefixes, which are not).
    pub fn new(state_dir: &Path, fib: Arc<Fib>, statics: Vec<Prefix>) -> Saver {
        Saver {
            path: state_dir.join(ROUTES_FILE),
            fib,
            statics,
            dirty: false,
            interval: MIN_INTERVAL,
        }
    }

    /// Route changes (already in the FIB) arrived.
    pub fn apply(&mut self, jobs: &[KernelJob]) {
        self.dirty |= !jobs.is_empty();
    }

    /// Writes the file if something changed since the last write.
    pub fn write(&mut self) {
        if !self.dirty {
            return;
        }
        let t = Instant::now();
        // The snapshot goes before the file is written: while it is held,
        // shards the BGP thread replaces stay allocated.
        let routes = Learned::of(&self.fib.snapshot(), &self.statics);
        match write_atomically(&self.path, |f| routes.write(f)) {
            Ok(()) => self.dirty = false,
            Err(e) => log::warn!("bgp: cannot save routes to {}: {e}", self.path.display()),
        }
        self.interval = MIN_INTERVAL.max(t.elapsed() * 10);
    }

    /// The thread's loop: changes from `rx`, a write at most every
    /// interval, a last one when the sender is gone. Each batch is shared
    /// with the `bgp-kernel` thread.
    pub fn run(mut self, rx: mpsc::Receiver<Arc<Vec<KernelJob>>>) {
        let mut last = Instant::now();
        loop {
            let wait = if self.dirty {
                self.interval.saturating_sub(last.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            match rx.recv_timeout(wait) {
                Ok(jobs) => self.apply(&jobs),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.write();
                    return;
                }
            }
            if self.dirty && last.elapsed() >= self.interval {
                self.write();
                last = Instant::now();
            }
        }
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
    fn round_trip_and_bad_lines() {
        let routes = [
            (p("10.244.3.0/26"), Vias::new(&[ip("10.0.0.3")]).unwrap()),
            (
                p("10.244.2.0/26"),
                Vias::new(&[ip("10.0.0.2"), ip("10.0.0.4")]).unwrap(),
            ),
        ];
        let text = encode(routes.iter().map(|(p, v)| (p, v)));
        assert_eq!(
            text,
            "10.244.2.0/26 10.0.0.2,10.0.0.4\n10.244.3.0/26 10.0.0.3\n"
        );
        let mut s = String::new();
        for a in ["0.0.0.0", "255.255.255.255", "1.10.100.9", "10.0.200.19"] {
            s.clear();
            push_ipv4(&mut s, a.parse().unwrap());
            assert_eq!(s, a);
        }
        let (back, bad) = parse(&text);
        assert_eq!(bad, 0);
        assert_eq!(back, vec![routes[1].clone(), routes[0].clone()]);
        let (back, bad) = parse(
            "10.244.2.0/26 10.0.0.2\nnot a route\n10.244.9.0/26\n10.244.8.0/26 10.0.0.9,x\n\
             10.244.7.0/26 10.0.0.2 extra\n10.244.6.0/26 10.0.0.5,10.0.0.5\n10.244.5.0/2",
        );
        assert_eq!(bad, 5);
        assert_eq!(
            back,
            vec![
                (p("10.244.2.0/26"), Vias::One(ip("10.0.0.2"))),
                (p("10.244.6.0/26"), Vias::One(ip("10.0.0.5"))),
            ]
        );
    }

    /// The saver writes the FIB's learned routes (to other nodes, ECMP
    /// groups with every member) and nothing else the FIB holds: pods,
    /// our blocks, the default route, Unreachable pools, static routes.
    #[test]
    fn saver_writes_the_fibs_learned_routes() {
        use podrouter_router::fib::FibChange;
        use podrouter_router::port::PortId;
        let dir = podrouter_testkit::TempDir::new("saved");
        let fib = Arc::new(Fib::new());
        fib.update(&[
            FibChange::Insert(p("0.0.0.0/0"), NextHop::Host),
            FibChange::Insert(p("10.244.1.0/26"), NextHop::Unreachable),
            FibChange::Insert(p("10.244.1.5/32"), NextHop::Local(PortId(3))),
            FibChange::Insert(p("10.244.0.0/16"), NextHop::Unreachable),
            FibChange::Insert(p("10.99.0.0/24"), NextHop::Node(ip("10.0.0.9"))),
            FibChange::Insert(p("10.244.2.0/26"), NextHop::Node(ip("10.0.0.2"))),
        ]);
        let mut s = Saver::new(dir.path(), fib.clone(), vec![p("10.99.0.0/24")]);
        s.write();
        assert!(
            load(dir.path()).is_empty(),
            "nothing changed, nothing written"
        );
        let a = Vias::new(&[ip("10.0.0.2")]);
        let b = Vias::new(&[ip("10.0.0.3")]);
        fib.update(&[
            FibChange::Insert(p("10.244.3.0/26"), NextHop::Node(ip("10.0.0.3"))),
            FibChange::Remove(p("10.244.2.0/26")),
            FibChange::InsertMultipath(p("10.244.4.0/26"), vec![ip("10.0.0.4"), ip("10.0.0.2")]),
        ]);
        s.apply(&[
            (p("10.244.3.0/26"), b.clone(), None),
            (p("10.244.2.0/26"), None, a.clone()),
        ]);
        s.write();
        assert_eq!(
            load(dir.path()),
            vec![
                (p("10.244.3.0/26"), b.unwrap()),
                (
                    p("10.244.4.0/26"),
                    Vias::new(&[ip("10.0.0.2"), ip("10.0.0.4")]).unwrap()
                ),
            ]
        );
        // The thread writes once more when its sender goes.
        let (tx, rx) = mpsc::channel();
        let saver = Saver::new(dir.path(), fib.clone(), Vec::new());
        fib.update(&[FibChange::Remove(p("10.244.4.0/26"))]);
        let t = std::thread::spawn(move || saver.run(rx));
        tx.send(Arc::new(vec![(p("10.244.4.0/26"), None, None)]))
            .unwrap();
        drop(tx);
        t.join().unwrap();
        // Without statics to leave out, the static route counts as learned.
        assert_eq!(
            load(dir.path()),
            vec![
                (p("10.99.0.0/24"), Vias::new(&[ip("10.0.0.9")]).unwrap()),
                (p("10.244.3.0/26"), Vias::new(&[ip("10.0.0.3")]).unwrap()),
            ]
        );
    }
}
