//! podrouter-cni: a CNI plugin; run by container runtimes with CNI_* in
//! the environment and the network configuration on stdin.
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Mutex;

use podrouter_cni::error::{CniError, Code};
use podrouter_cni::netconf::{sniff_version, Version};
use podrouter_cni::plugin::{self, Invocation};

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

const HELP: &str = "podrouter-cni: the CNI plugin (spec 0.3.0-1.1.0) of podrouter.
It is run by a container runtime, not by hand: CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH in the environment, the network
configuration as JSON on stdin, e.g.
  {\"cniVersion\":\"1.1.0\",\"name\":\"podnet\",\"type\":\"podrouter-cni\",
   \"router_socket\":\"/run/podrouter/podrouter.sock\",\"mtu\":1480}
Install it in /opt/cni/bin (or another directory on the runtime's CNI path).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args
        .iter()
        .skip(1)
        .any(|a| a == "-h" || a == "--help" || a == "--version")
    {
        println!("{HELP}\nversion {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        let _ = writeln!(
            std::io::stderr(),
            "podrouter-cni: internal error (a bug): {msg}"
        );
        if let Ok(mut m) = PANIC_MESSAGE.lock() {
            *m = Some(msg);
        }
    }));
    let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    // Without a CNI_COMMAND nobody is feeding stdin (a person at a
    // terminal): report the missing variable instead of waiting.
    if vars.get("CNI_COMMAND").is_some_and(|c| !c.is_empty()) {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            let err = CniError::new(
                Code::Io,
                "cannot read the network configuration",
                format!("stdin: {e}"),
            );
            println!("{}", err.to_json(Version::LATEST.as_str()));
            return ExitCode::from(err.exit_status());
        }
    }
    let exe_name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let inv = Invocation {
        vars,
        stdin,
        exe_name,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        plugin::run(&inv, &mut std::io::stdout().lock())
    }));
    match outcome {
        Ok(status) => ExitCode::from(status),
        Err(_) => {
            let msg = PANIC_MESSAGE
                .lock()
                .ok()
                .and_then(|m| m.clone())
                .unwrap_or_else(|| "unknown panic".into());
            let err = CniError::new(
                Code::Internal,
                "podrouter-cni failed internally",
                format!("{msg}; anything it had set up was undone; please report this bug"),
            );
            let label = sniff_version(&inv.stdin).unwrap_or(Version::LATEST);
            println!("{}", err.to_json(label.as_str()));
            ExitCode::from(err.exit_status())
        }
    }
}
