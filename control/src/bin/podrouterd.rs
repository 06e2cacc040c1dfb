//! podrouterd: the node daemon. Runs in the foreground, logs to stderr,
//! stops cleanly on SIGTERM/SIGINT, re-reads its config on SIGHUP.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use podrouter_control::config::Config;
use podrouter_control::daemon::Daemon;
use podrouter_control::{logger, metrics, own_cores, sd_notify, server, takeover};

/// podrouter's node daemon: a polled userspace router for pod networks.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file; embedded defaults if absent.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Remove everything podrouter put on this node (pod interfaces, its
    /// routes, links, tc filters, state and API socket), stopping a
    /// running podrouterd first; prints what was removed.
    #[arg(long)]
    uninstall: bool,
    /// Take over from the podrouterd running with the same config (an
    /// upgrade): it hands over its TAPs, sockets and API listener and
    /// exits; frames that arrive meanwhile wait in the TAPs' queues. If it
    /// refuses or the takeover fails, it carries on and this exits 1.
    #[arg(long, conflicts_with = "uninstall")]
    takeover: bool,
}

/// How long `--uninstall` waits for a running podrouterd to stop.
const UNINSTALL_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("podrouterd: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if args.uninstall {
        logger::init(log::LevelFilter::Warn);
        let report = podrouter_control::uninstall::uninstall(&cfg, UNINSTALL_STOP_TIMEOUT);
        for line in &report.removed {
            println!("{line}");
        }
        if report.removed.is_empty() {
            println!("nothing of podrouter's was left on this node");
        }
        for line in &report.failed {
            eprintln!("podrouterd: uninstall: {line}");
        }
        return if report.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    logger::init(cfg.log_level.filter());
    log::info!("podrouterd {} starting", env!("CARGO_PKG_VERSION"));
    // Before any other thread starts: they inherit the main thread's CPUs.
    own_cores::keep_off_worker_cores(&cfg.dataplane.cores);
    let metrics_args = cfg.metrics.as_ref().map(|m| {
        let (api, host) = (cfg.api_socket.clone(), cfg.dataplane.host_port.clone());
        (m.listen, api, host)
    });
    let mut daemon = if args.takeover {
        let d = match takeover::take_over(cfg, args.config.clone()) {
            Ok(d) => d,
            Err(e) => {
                log::error!("takeover: {e}");
                return ExitCode::from(1);
            }
        };
        // The old daemon is exiting and lets go of the metrics port.
        if let Some((listen, api, host)) = metrics_args {
            if let Err(e) = spawn_metrics_when_free(listen, api, host) {
                log::error!("cannot serve metrics on {listen}: {e}");
            }
        }
        d
    } else {
        if let Some((listen, api, host)) = metrics_args {
            if let Err(e) = metrics::spawn(listen, api, host) {
                log::error!("cannot serve metrics on {listen}: {e}");
                return ExitCode::from(1);
            }
        }
        match Daemon::start(cfg, args.config.clone()) {
            Ok(d) => d,
            Err(e) => {
                log::error!("cannot start: {e}");
                return ExitCode::from(e.exit_code());
            }
        }
    };
    // READY=1 only now: pods, routes and BGP are restored, the workers
    // run and the API socket accepts (what `Type=notify` waits for).
    let served = server::serve_then(&mut daemon, |d| sd_notify::ready(d.pod_count()));
    sd_notify::stopping();
    let code = match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    };
    // Returns without freeing the daemon (its workers still forward):
    // main returns at once and the process exits.
    let code = daemon.shutdown_and_exit(code);
    log::info!("exiting");
    code
}

/// [`metrics::spawn`], retried while the address is in use (by the daemon
/// we took over from, until it has exited), for at most 5 s.
fn spawn_metrics_when_free(
    listen: std::net::SocketAddr,
    api: PathBuf,
    host: String,
) -> std::io::Result<()> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match metrics::spawn(listen, api.clone(), host.clone()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}
