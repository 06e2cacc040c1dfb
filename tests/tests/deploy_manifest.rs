//! deploy/kubernetes/podrouter.yaml and deploy/install-cni.sh: the
//! manifest parses as Kubernetes YAML and holds together (every mount has
//! its volume, the probes and the CNI plugin use the socket podrouterd
//! serves, each node's config is one podrouterd accepts), and install-cni
//! installs the plugin and its conflist atomically without touching other
//! plugins' files. No cluster here: the checks are structural.
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use podrouter_control::config::Config;
use podrouter_e2e::TempDir;
use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn documents() -> Vec<Value> {
    let text = fs::read_to_string(repo("deploy/kubernetes/podrouter.yaml")).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .collect()
}

fn doc(kind: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    seq(v).iter().map(|x| s(x).to_string()).collect()
}

const SOCKET: &str = "/run/podrouter/podrouter.sock";

#[test]
fn the_manifest_is_a_configmap_and_a_daemonset() {
    let kinds: Vec<(String, String)> = documents()
        .iter()
        .map(|d| (s(&d["apiVersion"]).into(), s(&d["kind"]).into()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("v1".to_string(), "ConfigMap".to_string()),
            ("apps/v1".to_string(), "DaemonSet".to_string())
        ]
    );
    for d in documents() {
        assert_eq!(s(&d["metadata"]["namespace"]), "kube-system");
        assert!(!s(&d["metadata"]["name"]).is_empty());
    }
}

#[test]
fn the_daemonset_holds_together() {
    let ds = doc("DaemonSet");
    let spec = &ds["spec"];
    // The selector picks the template's own pods.
    let selector = spec["selector"]["matchLabels"].as_mapping().unwrap();
    let labels = spec["template"]["metadata"]["labels"].as_mapping().unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "selector label {k:?} not on the pods"
        );
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(s(&pod["dnsPolicy"]), "ClusterFirstWithHostNet");
    let volumes: Vec<&Value> = seq(&pod["volumes"]).iter().collect();
    let volume = |name: &str| {
        *volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    // Every mount of every container has its volume.
    let inits = seq(&pod["initContainers"]);
    let containers = seq(&pod["containers"]);
    for c in inits.iter().chain(containers) {
        for m in seq(&c["volumeMounts"]) {
            volume(s(&m["name"]));
            assert!(s(&m["mountPath"]).starts_with('/'));
        }
        assert_eq!(c["image"], containers[0]["image"], "one image for all");
    }
    let mount_of = |c: &Value, path: &str| -> String {
        let m = seq(&c["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{} does not mount {path}", s(&c["name"])));
        s(&m["name"]).to_string()
    };
    let host_path = |vol: &str| s(&volume(vol)["hostPath"]["path"]).to_string();

    // The init container installs the plugin into the host's CNI dirs, at
    // the paths its environment gives the script.
    let init = &inits[0];
    assert_eq!(strings(&init["command"]), ["/opt/podrouter/install-cni.sh"]);
    let env = |c: &Value, name: &str| -> String {
        let e = seq(&c["env"])
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"));
        s(&e["value"]).to_string()
    };
    assert_eq!(
        host_path(&mount_of(init, &env(init, "CNI_BIN_DIR"))),
        "/opt/cni/bin"
    );
    assert_eq!(
        host_path(&mount_of(init, &env(init, "CNI_NET_DIR"))),
        "/etc/cni/net.d"
    );
    assert_eq!(
        strings(&init["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );

    // podrouterd: its config per node, from the ConfigMap.
    let d = &containers[0];
    let args = strings(&d["args"]);
    assert_eq!(args, ["--config", "/etc/podrouter/$(NODE_NAME).toml"]);
    let node_name = seq(&d["env"])
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME env");
    assert_eq!(
        s(&node_name["valueFrom"]["fieldRef"]["fieldPath"]),
        "spec.nodeName"
    );
    let cfg_vol = volume(&mount_of(d, "/etc/podrouter"));
    assert_eq!(
        cfg_vol["configMap"]["name"],
        doc("ConfigMap")["metadata"]["name"]
    );
    // The host paths it needs, with their types where it matters.
    assert_eq!(host_path(&mount_of(d, "/run/podrouter")), "/run/podrouter");
    assert_eq!(
        host_path(&mount_of(d, "/var/lib/podrouter")),
        "/var/lib/podrouter"
    );
    assert_eq!(host_path(&mount_of(d, "/run/netns")), "/run/netns");
    let tun = volume(&mount_of(d, "/dev/net/tun"));
    assert_eq!(s(&tun["hostPath"]["type"]), "CharDevice");
    let sc = &d["securityContext"];
    let caps = strings(&sc["capabilities"]["add"]);
    for cap in ["NET_ADMIN", "SYS_ADMIN", "BPF", "NET_RAW"] {
        assert!(caps.iter().any(|c| c == cap), "no {cap} in {caps:?}");
    }
    // Probes ask the API socket the CNI plugin and configs use.
    for probe in ["livenessProbe", "readinessProbe"] {
        let cmd = strings(&d[probe]["exec"]["command"]);
        assert_eq!(
            cmd,
            ["/usr/local/bin/podrouterctl", "--socket", SOCKET, "status"],
            "{probe}"
        );
    }
}

#[test]
fn every_node_config_is_one_podrouterd_accepts_and_the_conflist_matches() {
    let cm = doc("ConfigMap");
    let data = cm["data"].as_mapping().expect("data");
    let mut nodes = 0;
    for (k, v) in data {
        let (name, text) = (s(k), s(v));
        if let Some(node) = name.strip_suffix(".toml") {
            let cfg = Config::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cfg.node_name, node, "{name} names another node");
            assert_eq!(cfg.api_socket, Path::new(SOCKET), "{name}");
            assert_eq!(cfg.state_dir, Path::new("/var/lib/podrouter"), "{name}");
            nodes += 1;
        }
    }
    assert!(nodes >= 1, "no node config in the ConfigMap");
    let conflist: serde_json::Value =
        serde_json::from_str(s(&data[&Value::from("cni.conflist")])).expect("conflist JSON");
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["type"], "podrouter-cni");
    assert_eq!(plugin["router_socket"], SOCKET);
    assert_eq!(plugin["pending_dir"], "/var/lib/podrouter/pending-detach");
}

// ---------------------------------------------------------------------------
// install-cni.sh

struct Dirs {
    _root: TempDir,
    src: PathBuf,
    bin: PathBuf,
    net: PathBuf,
    conf: PathBuf,
}

fn dirs() -> Dirs {
    let root = TempDir::new("install-cni");
    let d = Dirs {
        src: root.join("src"),
        bin: root.join("opt-cni-bin"),
        net: root.join("etc-cni-net.d"),
        conf: root.join("cni.conflist"),
        _root: root,
    };
    fs::create_dir_all(&d.src).unwrap();
    let plugin = d.src.join("podrouter-cni");
    fs::write(&plugin, b"\x7fELF plugin v1").unwrap();
    fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).unwrap();
    let cm = doc("ConfigMap");
    fs::write(&d.conf, s(&cm["data"]["cni.conflist"])).unwrap();
    d
}

fn install_cni(d: &Dirs, extra: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new("sh");
    cmd.arg(repo("deploy/install-cni.sh"))
        .env("CNI_BIN_SRC", &d.src)
        .env("CNI_BIN_DIR", &d.bin)
        .env("CNI_NET_DIR", &d.net)
        .env("CNI_NETWORK_CONFIG_FILE", &d.conf)
        .env_remove("CNI_CONF_NAME");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("run install-cni.sh")
}

/// (name, content, inode, mtime) of every file in `dir`, sorted.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>, u64, i64)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
                m.ino(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn install_cni_installs_its_own_files_and_nothing_else() {
    let d = dirs();
    // Other plugins' files are there before, one with a name close to ours.
    fs::create_dir_all(&d.bin).unwrap();
    fs::create_dir_all(&d.net).unwrap();
    fs::write(d.bin.join("ptp"), b"other plugin").unwrap();
    fs::write(d.net.join("05-other.conflist"), b"{\"other\":1}").unwrap();
    fs::write(d.net.join("10-podrouter.conf"), b"{\"not ours\":1}").unwrap();
    fs::write(d.net.join("10-podrouter.conflist"), b"old version").unwrap();
    let others = |l: Vec<(String, Vec<u8>, u64, i64)>| -> Vec<_> {
        l.into_iter()
            .filter(|(n, ..)| n != "podrouter-cni" && n != "10-podrouter.conflist")
            .collect()
    };
    let (bin_before, net_before) = (others(listing(&d.bin)), others(listing(&d.net)));
    let old_conf_inode = fs::metadata(d.net.join("10-podrouter.conflist"))
        .unwrap()
        .ino();

    let out = install_cni(&d, &[]);
    assert!(out.status.success(), "install-cni failed: {out:?}");
    let plugin = d.bin.join("podrouter-cni");
    assert_eq!(fs::read(&plugin).unwrap(), b"\x7fELF plugin v1");
    assert_eq!(fs::metadata(&plugin).unwrap().mode() & 0o777, 0o755);
    let conf = d.net.join("10-podrouter.conflist");
    assert_eq!(fs::read(&conf).unwrap(), fs::read(&d.conf).unwrap());
    // Replaced by a rename, not rewritten in place: a runtime reading the
    // old file meanwhile read it whole.
    assert_ne!(fs::metadata(&conf).unwrap().ino(), old_conf_inode);
    assert_eq!(others(listing(&d.bin)), bin_before, "other plugins touched");
    assert_eq!(others(listing(&d.net)), net_before, "other configs touched");
    let names: Vec<_> = listing(&d.net).into_iter().map(|x| x.0).collect();
    assert_eq!(
        names,
        [
            "05-other.conflist",
            "10-podrouter.conf",
            "10-podrouter.conflist"
        ],
        "temporary files left behind"
    );

    // A second run with nothing new changes nothing, not even mtimes.
    let (bin_all, net_all) = (listing(&d.bin), listing(&d.net));
    let out = install_cni(&d, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is current"));
    assert_eq!(listing(&d.bin), bin_all);
    assert_eq!(listing(&d.net), net_all);

    // A new plugin version replaces the old one.
    fs::write(d.src.join("podrouter-cni"), b"\x7fELF plugin v2").unwrap();
    let out = install_cni(&d, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(&plugin).unwrap(), b"\x7fELF plugin v2");
}

#[test]
fn install_cni_refuses_bad_input_and_writes_nothing() {
    let d = dirs();
    for (extra, conf) in [
        (vec![("CNI_CONF_NAME", "../escape.conflist")], None),
        (vec![("CNI_CONF_NAME", "10-podrouter.conf")], None),
        (
            vec![],
            Some("{\"cniVersion\":\"1.1.0\",\"type\":\"podrouter-cni\"}"),
        ),
        (vec![], Some("{\"plugins\":[{\"type\":\"bridge\"}]}")),
    ] {
        if let Some(c) = conf {
            fs::write(&d.conf, c).unwrap();
        }
        let out = install_cni(&d, &extra);
        assert_eq!(out.status.code(), Some(1), "{extra:?} {conf:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("install-cni: "),
            "{out:?}"
        );
        assert!(
            !d.bin.exists() && !d.net.exists(),
            "{extra:?} wrote something"
        );
    }
    // No plugin binary to install.
    let d = dirs();
    fs::remove_file(d.src.join("podrouter-cni")).unwrap();
    let out = install_cni(&d, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!d.bin.exists() && !d.net.exists());
}
