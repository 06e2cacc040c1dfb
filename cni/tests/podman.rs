//! A real runtime: Debian's podman (CNI backend, runc, a busybox root
//! filesystem) runs two containers on a network whose conflist uses
//! podrouter-cni; they ping each other and the node, 169.254.1.1 answers ARP
//! with ee:ee:ee:ee:ee:ee, and `podman rm -f` releases the addresses.
//!
//! Needs root and `apt-get install -y podman runc busybox-static`
//! (scripts/install-deps.sh installs them); prints SKIP without them, or
//! fails under PODROUTER_E2E_REQUIRE=1 (as CI runs it).
mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use podrouter_testkit::{unique, Needs};

struct Podman {
    dir: TempDir,
    node_ns: String,
    names: Vec<String>,
}

impl Podman {
    fn new(node: &Node, network: &str) -> Podman {
        let dir = TempDir::new("pm");
        let d = dir.path();
        for sub in ["net.d", "tmp", "root", "run", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", d.join("rootfs/bin/busybox")).unwrap();
        for applet in ["sh", "ip", "ping", "sleep", "arping", "cat"] {
            std::os::unix::fs::symlink("busybox", d.join("rootfs/bin").join(applet)).unwrap();
        }
        let plugin_dir = Path::new(PLUGIN).parent().unwrap();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\nruntime = \"runc\"\ntmp_dir = \"{d}/tmp\"\n\
                 [network]\nnetwork_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{d}/net.d\"\n",
                plugin_dir.display(),
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        // Debian's podman 4.3 carries libcni 1.1, which speaks up to 1.0.0.
        std::fs::write(
            d.join("net.d").join(format!("{network}.conflist")),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"{network}","plugins":[{{"type":"podrouter-cni","router_socket":"{}","pending_dir":"{}","mtu":1480}}]}}"#,
                node.socket.display(),
                node.pending_dir.display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            node_ns: node.ns.name().to_string(),
            names: Vec::new(),
        }
    }

    /// `podman ARGS` from inside the node's namespace (nsenter, so podman's
    /// netns mounts stay visible).
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .output()
            .expect("running podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&mut self, name: &str, network: &str) {
        let rootfs = self.dir.path().join("rootfs");
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--rootfs",
            &rootfs.display().to_string(),
            "/bin/sleep",
            "600",
        ]);
        self.names.push(name.to_string());
    }

    fn exec(&self, name: &str, cmd: &[&str]) -> std::process::Output {
        let mut a = vec!["exec", name];
        a.extend_from_slice(cmd);
        self.run(&a)
    }

    fn ipv4(&self, name: &str) -> String {
        let out = String::from_utf8_lossy(
            &self
                .exec(name, &["ip", "-4", "addr", "show", "dev", "eth0"])
                .stdout,
        )
        .into_owned();
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address in {name}: {out}"))
            .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.run(&["rm", "-f", "-t", "0", n]);
        }
    }
}

#[test]
fn podman_runs_two_containers_on_podrouter() {
    if !Needs::new("podman_runs_two_containers_on_podrouter")
        .privileged()
        .commands(&[
            "/usr/bin/podman",
            "/usr/sbin/runc",
            "/usr/bin/busybox",
            "/usr/bin/nsenter",
        ])
        .met()
    {
        return;
    }
    let _s = serial();
    let node = Node::start("10.97.0.0/24", "192.168.97.1");
    let free0 = node.status().free_addresses;
    let network = unique("net");
    let mut pm = Podman::new(&node, &network);
    let (c1, c2) = (unique("c"), unique("c"));
    pm.start(&c1, &network);
    pm.start(&c2, &network);

    let pods = node.pods();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods
        .iter()
        .all(|p| p.id.starts_with("cni:") && p.ifname == "eth0"));
    assert_eq!(node.status().free_addresses, free0 - 2);
    let (ip1, ip2) = (pm.ipv4(&c1), pm.ipv4(&c2));
    let route = String::from_utf8_lossy(&pm.exec(&c1, &["ip", "route"]).stdout).into_owned();
    assert!(
        route.contains("default via 169.254.1.1 dev eth0"),
        "{route}"
    );

    for (from, to) in [(&c1, &ip2), (&c2, &ip1), (&c1, &node.node_ip)] {
        let out = pm.exec(from, &["ping", "-c", "1", "-W", "2", to]);
        assert!(
            out.status.success(),
            "{from} cannot ping {to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let arp = pm.exec(&c2, &["arping", "-c", "1", "-I", "eth0", "169.254.1.1"]);
    let arp_out = String::from_utf8_lossy(&arp.stdout).to_lowercase();
    assert!(arp_out.contains("ee:ee:ee:ee:ee:ee"), "{arp_out}");

    // `podman rm -f` runs CNI DEL: the addresses come back.
    pm.ok(&["rm", "-f", "-t", "0", &c1, &c2]);
    pm.names.clear();
    assert!(node.pods().is_empty(), "{:?}", node.pods());
    assert_eq!(node.status().free_addresses, free0);
}
