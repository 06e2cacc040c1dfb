//! podrouterctl: the operator's CLI over podrouterd's API socket. Tables
//! for people, `--json` for scripts.
//!
//! Exit status: 0 done, 1 the daemon refused, 2 usage, 3 cannot reach the
//! daemon.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use podrouter_api::{AttachParams, Call, Client, ClientError, DetachParams, Reply, DEFAULT_SOCKET};
use podrouter_control::table::Table;

/// Operate a podrouter node.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// podrouterd's API socket.
    #[arg(long, short, env = "PODROUTER_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the daemon.
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node and daemon summary.
    Status,
    /// List attached pods.
    #[command(alias = "list")]
    Pods,
    /// Give a pod's network namespace an interface and start forwarding.
    Attach {
        /// Name of the attachment (e.g. the container id).
        id: String,
        /// The pod's network namespace (/run/netns/NAME or /proc/PID/ns/net).
        #[arg(long)]
        netns: String,
        /// Interface name inside the pod.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Address to use instead of the next free one.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Interface MTU instead of the node's.
        #[arg(long)]
        mtu: Option<u16>,
    },
    /// Remove a pod's interface and release its address.
    Detach { id: String },
    /// Show the FIB.
    Routes,
    /// Show data-plane counters and per-port counters.
    Counters,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let call = match args.command {
        Command::Status => Call::Status,
        Command::Pods => Call::ListPods,
        Command::Attach {
            id,
            netns,
            ifname,
            ip,
            mtu,
        } => Call::Attach(AttachParams {
            id,
            netns,
            ifname,
            ip,
            mtu,
        }),
        Command::Detach { id } => Call::Detach(DetachParams {
            id,
            netns: None,
            ifname: None,
        }),
        Command::Routes => Call::Routes,
        Command::Counters => Call::Counters,
    };
    let reply = Client::connect(&args.socket, Duration::from_secs(args.timeout))
        .and_then(|mut c| c.call(call));
    match reply {
        Ok(r) => {
            if args.json {
                println!("{}", json(&r));
            } else {
                print!("{}", text(&r));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podrouterctl: {e}");
            match e {
                ClientError::Api(_) => ExitCode::from(1),
                _ => ExitCode::from(3),
            }
        }
    }
}

fn json(r: &Reply) -> String {
    let v = match r {
        Reply::Status(s) => serde_json::to_value(s),
        Reply::Pods(p) => serde_json::to_value(p),
        Reply::Pod(p) => serde_json::to_value(p),
        Reply::Detached { id } => Ok(serde_json::json!({ "id": id })),
        Reply::Routes(r) => serde_json::to_value(r),
        Reply::Counters(c) => serde_json::to_value(c),
    };
    v.and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn text(r: &Reply) -> String {
    match r {
        Reply::Status(s) => {
            let mut t = Table::new(&["FIELD", "VALUE"]);
            t.row([String::from("node"), s.node_name.clone()]);
            t.row(["node ip".into(), s.node_ip.to_string()]);
            t.row(["pod cidrs".into(), s.pod_cidrs.join(", ")]);
            t.row(["backend".into(), s.backend.clone()]);
            t.row(["encap".into(), s.encap.clone()]);
            t.row(["workers".into(), s.workers.to_string()]);
            t.row(["pods".into(), s.pods.to_string()]);
            t.row(["routes".into(), s.routes.to_string()]);
            t.row(["free addresses".into(), s.free_addresses.to_string()]);
            t.row(["uptime".into(), format!("{}s", s.uptime_secs)]);
            t.row([
                "version".into(),
                format!("{} (API {})", s.daemon_version, s.api_version),
            ]);
            t.render()
        }
        Reply::Pods(pods) => {
            let mut t = Table::new(&[
                "ID", "IP", "IFNAME", "MAC", "MTU", "PORT", "WORKER", "NETNS",
            ]);
            for p in pods {
                t.row([
                    p.id.clone(),
                    p.ip.to_string(),
                    p.ifname.clone(),
                    p.mac.clone(),
                    p.mtu.to_string(),
                    p.port.to_string(),
                    p.worker.to_string(),
                    p.netns.clone(),
                ]);
            }
            t.render()
        }
        Reply::Pod(p) => format!(
            "attached {} as {} {}/32 (mac {}, mtu {}, port {}) in {}\n",
            p.id, p.ifname, p.ip, p.mac, p.mtu, p.port, p.netns
        ),
        Reply::Detached { id } => format!("detached {id}\n"),
        Reply::Routes(routes) => {
            let mut t = Table::new(&["PREFIX", "NEXT HOP", "VIA"]);
            for r in routes {
                let via = r
                    .port
                    .clone()
                    .or_else(|| r.via.map(|v| v.to_string()))
                    .unwrap_or_else(|| "-".into());
                t.row([r.prefix.clone(), r.next_hop.clone(), via]);
            }
            t.render()
        }
        Reply::Counters(c) => {
            let mut t = Table::new(&["COUNTER", "VALUE"]);
            t.row(["workers".into(), c.workers.to_string()]);
            for (k, v) in [
                ("rx", c.rx),
                ("tx", c.tx),
                ("sleeps", c.sleeps),
                ("arp_replies", c.arp_replies),
                ("icmp_sent", c.icmp_sent),
                ("icmp_rate_limited", c.icmp_rate_limited),
            ] {
                t.row([k.to_string(), v.to_string()]);
            }
            for (k, v) in c.drops.iter().filter(|(_, v)| **v > 0) {
                t.row([format!("drop {k}"), v.to_string()]);
            }
            let mut p = Table::new(&[
                "PORT", "NAME", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES", "DROPS",
            ]);
            for x in &c.ports {
                p.row([
                    x.port.to_string(),
                    x.name.clone(),
                    x.rx_packets.to_string(),
                    x.rx_bytes.to_string(),
                    x.tx_packets.to_string(),
                    x.tx_bytes.to_string(),
                    x.drops.to_string(),
                ]);
            }
            format!("{}\n{}", t.render(), p.render())
        }
    }
}
