//! podrouterd: the node daemon. Runs in the foreground, logs to stderr,
//! stops cleanly on SIGTERM/SIGINT, re-reads its config on SIGHUP.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use podrouter_control::config::Config;
use podrouter_control::daemon::Daemon;
use podrouter_control::{logger, metrics, sd_notify, server};

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
    if let Some(m) = &cfg.metrics {
        let (api, host) = (cfg.api_socket.clone(), cfg.dataplane.host_port.clone());
        if let Err(e) = metrics::spawn(m.listen, api, host) {
            log::error!("cannot serve metrics on {}: {e}", m.listen);
            return ExitCode::from(1);
        }
    }
    let mut daemon = match Daemon::start(cfg, args.config.clone()) {
        Ok(d) => d,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    // READY=1 only now: pods, routes and BGP are restored, the workers
    // run and the API socket accepts (what `Type=notify` waits for).
    let served = server::serve_then(&mut daemon, |d| sd_notify::ready(d.pod_count()));
    sd_notify::stopping();
    daemon.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
