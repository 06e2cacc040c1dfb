//! podrouter-cni driven exactly as a runtime drives it (environment and
//! stdin, the real binary) against a real podrouterd in a network
//! namespace. Tests that need root follow the test kit's rule: without it
//! they print SKIP and return, under PODROUTER_E2E_REQUIRE=1 they fail.
mod common;

use std::collections::HashSet;
use std::path::Path;

use common::*;
use podrouter_api::{AttachParams, Call};
use podrouter_testkit::{privileged, Needs};
use serde_json::Value;

/// The links left in `ns` once detached pods' interfaces are gone: a DEL
/// is answered before its interface's removal finishes, so this waits for
/// them (up to 5 s).
fn links_after_removals(ns: &Netns) -> Vec<String> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let links = ns.links();
        if links.is_empty() || std::time::Instant::now() > end {
            return links;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn env0(command: &'static str) -> CniEnv {
    CniEnv {
        command,
        ..CniEnv::default()
    }
}

// ---------------------------------------------------------------- no root

#[test]
fn version_lists_every_supported_version() {
    let out = plugin(&env0("VERSION"), r#"{"cniVersion":"1.0.0"}"#);
    out.ok();
    assert_eq!(out.json()["cniVersion"], "1.0.0");
    assert_eq!(
        out.json()["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let out = plugin(&env0("VERSION"), "");
    assert_eq!(out.json()["cniVersion"], "1.1.0");
}

#[test]
fn bad_input_gets_the_spec_codes() {
    let dir = TempDir::new("bad");
    let sock = dir.path().join("nothing.sock");
    let conf = |v: &str, extra: &str| {
        format!(
            r#"{{"cniVersion":"{v}","name":"podnet","type":"podrouter-cni","router_socket":"{}","pending_dir":"{}"{extra}}}"#,
            sock.display(),
            dir.path().join("pending").display()
        )
    };
    let add = attach_env("ADD", "ctr1", "/proc/self/ns/net", "eth0");

    // Missing and invalid environment variables: 4, naming them.
    let v = plugin(&env0(""), &conf("1.1.0", "")).err(4);
    assert!(v["details"].as_str().unwrap().contains("CNI_COMMAND"));
    let v = plugin(&env0("ADD"), &conf("1.1.0", "")).err(4);
    let d = v["details"].as_str().unwrap();
    assert!(
        d.contains("CNI_CONTAINERID") && d.contains("CNI_NETNS") && d.contains("CNI_IFNAME"),
        "{d}"
    );
    let v = plugin(&env0("BOGUS"), &conf("1.1.0", "")).err(4);
    assert!(v["details"].as_str().unwrap().contains("BOGUS"));
    let mut bad_if = add.clone();
    bad_if.ifname = Some("eth/0".into());
    plugin(&bad_if, &conf("1.1.0", "")).err(4);
    let mut bad_id = add.clone();
    bad_id.container_id = Some("_x".into());
    plugin(&bad_id, &conf("1.1.0", "")).err(4);

    // Malformed JSON: 6.
    let v = plugin(&add, "{\"cniVersion\":").err(6);
    assert!(v["details"].as_str().unwrap().contains("not valid JSON"));
    plugin(&add, "").err(6);
    // Unknown cniVersion: 1, listing what is supported.
    let v = plugin(&add, &conf("0.2.0", "")).err(1);
    assert!(v["details"].as_str().unwrap().contains("1.1.0"));
    plugin(&add, &conf("2.0.0", "")).err(1);
    // Wrong type: 7.
    let v = plugin(&add, &conf("1.1.0", "").replace("podrouter-cni", "bridge")).err(7);
    assert!(v["details"].as_str().unwrap().contains("bridge"));
    // Unsupported field: 2, with key and value.
    let v = plugin(&add, &conf("1.1.0", r#","bridge":"cni0""#)).err(2);
    assert!(v["details"]
        .as_str()
        .unwrap()
        .contains(r#""bridge": "cni0""#));
    // Invalid values: 7.
    plugin(&add, &conf("1.1.0", r#","mtu":9"#)).err(7);
    // The netns does not exist: 3.
    let gone = attach_env("ADD", "ctr1", "/run/netns/prcni-does-not-exist", "eth0");
    plugin(&gone, &conf("1.1.0", "")).err(3);
    // The router is not reachable: ADD 11, STATUS 50, GC 11.
    let v = plugin(&add, &conf("1.1.0", "")).err(11);
    assert!(v["details"].as_str().unwrap().contains("nothing.sock"));
    assert_eq!(v["cniVersion"], "1.1.0");
    plugin(&env0("STATUS"), &conf("1.1.0", "")).err(50);
    plugin(
        &env0("GC"),
        &conf("1.1.0", r#","cni.dev/valid-attachments":[]"#),
    )
    .err(11);
    // Errors are labelled with the version asked for.
    assert_eq!(
        plugin(&add, &conf("0.4.0", "")).err(11)["cniVersion"],
        "0.4.0"
    );
    // CHECK without prevResult: 7.
    plugin(
        &attach_env("CHECK", "ctr1", "/proc/self/ns/net", "eth0"),
        &conf("1.1.0", ""),
    )
    .err(7);
}

// ---------------------------------------------------------------- root

#[test]
fn add_check_del_lifecycle() {
    if !privileged("add_check_del_lifecycle") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.81.0.0/24", "192.168.81.1");
    let pod = Netns::new("p");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.1.0", "");

    let add = attach_env("ADD", "ctr1", &pod.path(), "eth0");
    let out = plugin(&add, &conf);
    out.ok();
    let r = out.json();
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], pod.path());
    assert_eq!(r["interfaces"][0]["mtu"], 1480);
    let mac = r["interfaces"][0]["mac"].as_str().unwrap().to_string();
    let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("10.81.0.") && addr.ends_with("/32"),
        "{addr}"
    );
    assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert!(r["ips"][0].get("version").is_none());
    assert_eq!(
        r["routes"],
        serde_json::json!([{"dst":"0.0.0.0/0","gw":"169.254.1.1"}])
    );
    assert_eq!(r["dns"], serde_json::json!({}));

    // The pod has exactly what the result says.
    assert_eq!(pod.addrs("eth0"), vec![addr.clone()]);
    let routes = pod.ip(&["-4", "route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0") && routes.contains("scope link"),
        "{routes}"
    );
    let link: Value =
        serde_json::from_str(&pod.ip(&["-j", "link", "show", "dev", "eth0"])).unwrap();
    assert_eq!(link[0]["address"], mac.as_str());
    assert_eq!(link[0]["mtu"], 1480);
    let pods = node.pods();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, "cni:ctr1:eth0");
    assert_eq!(node.status().free_addresses, free0 - 1);

    // CHECK with the ADD's result passes.
    let prev = out.stdout.clone();
    let check = attach_env("CHECK", "ctr1", &pod.path(), "eth0");
    plugin(&check, &with_prev(&conf, &prev)).ok();
    assert_eq!(plugin(&check, &with_prev(&conf, &prev)).stdout, "");

    // A second ADD of the same attachment fails clearly, with no second address.
    let v = plugin(&add, &conf).err(101);
    assert!(v["details"].as_str().unwrap().contains("already"), "{v}");
    assert_eq!(pod.addrs("eth0"), vec![addr.clone()]);
    assert_eq!(node.status().free_addresses, free0 - 1);

    // CHECK notices what breaks: a missing route, a wrong prevResult address.
    pod.ip(&["route", "del", "default"]);
    let v = plugin(&check, &with_prev(&conf, &prev)).err(103);
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("default via 169.254.1.1"),
        "{v}"
    );
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    plugin(&check, &with_prev(&conf, &prev)).ok();
    let wrong = prev.replace(&addr, "10.81.0.250/32");
    plugin(&check, &with_prev(&conf, &wrong)).err(103);

    // DEL, twice; everything is gone and the address is back.
    let del = attach_env("DEL", "ctr1", &pod.path(), "eth0");
    assert_eq!(plugin(&del, &with_prev(&conf, &prev)).ok(), "");
    plugin(&del, &with_prev(&conf, &prev)).ok();
    plugin(&del, &conf).ok();
    let left = links_after_removals(&pod);
    assert!(left.is_empty(), "{left:?}");
    assert!(node.pods().is_empty());
    assert_eq!(node.status().free_addresses, free0);
    // CHECK after DEL fails.
    plugin(&check, &with_prev(&conf, &prev)).err(103);
}

#[test]
fn results_are_written_in_the_version_asked_for() {
    if !privileged("results_are_written_in_the_version_asked_for") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.82.0.0/24", "192.168.82.1");
    let pod = Netns::new("p");
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let conf = node.conf(v, "");
        let out = plugin(&attach_env("ADD", "ctrv", &pod.path(), "eth0"), &conf);
        out.ok();
        let r = out.json();
        assert_eq!(r["cniVersion"], v);
        let keys: HashSet<&str> = r["ips"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut want: HashSet<&str> = ["address", "gateway", "interface"].into();
        if v < "1.0.0" {
            want.insert("version");
            assert_eq!(r["ips"][0]["version"], "4");
        }
        assert_eq!(keys, want, "{v}");
        assert_eq!(r["interfaces"][0].get("mtu").is_some(), v == "1.1.0", "{v}");
        // CHECK and DEL take the prevResult in the same version.
        let prev = out.stdout.clone();
        plugin(
            &attach_env("CHECK", "ctrv", &pod.path(), "eth0"),
            &with_prev(&conf, &prev),
        )
        .ok();
        plugin(
            &attach_env("DEL", "ctrv", &pod.path(), "eth0"),
            &with_prev(&conf, &prev),
        )
        .ok();
        assert!(node.pods().is_empty());
    }
}

#[test]
fn del_succeeds_when_the_netns_is_gone() {
    if !privileged("del_succeeds_when_the_netns_is_gone") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.83.0.0/24", "192.168.83.1");
    let mut pod = Netns::new("p");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.0.0", "");
    let path = pod.path();
    plugin(&attach_env("ADD", "ctrg", &path, "eth0"), &conf).ok();
    pod.delete();
    assert!(!Path::new(&path).exists());
    plugin(&attach_env("DEL", "ctrg", &path, "eth0"), &conf).ok();
    plugin(&attach_env("DEL", "ctrg", &path, "eth0"), &conf).ok();
    // DEL without CNI_NETNS at all is fine too.
    let mut no_ns = attach_env("DEL", "ctrg", &path, "eth0");
    no_ns.netns = None;
    plugin(&no_ns, &conf).ok();
    assert!(node.pods().is_empty());
    assert_eq!(node.status().free_addresses, free0);
}

#[test]
fn del_with_the_router_down_is_finished_when_it_is_back() {
    if !privileged("del_with_the_router_down_is_finished_when_it_is_back") {
        return;
    }
    let _s = serial();
    let mut node = Node::start("10.84.0.0/24", "192.168.84.1");
    let pod = Netns::new("p");
    let pod2 = Netns::new("p");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.1.0", "");
    let out = plugin(&attach_env("ADD", "ctrd", &pod.path(), "eth0"), &conf);
    out.ok();
    let prev = out.stdout.clone();
    node.stop();

    let del = attach_env("DEL", "ctrd", &pod.path(), "eth0");
    plugin(&del, &with_prev(&conf, &prev)).ok();
    plugin(&del, &with_prev(&conf, &prev)).ok();
    let entry = node.pending_dir.join("cni:ctrd:eth0");
    let p: Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
    assert_eq!(p["version"], 1);
    assert_eq!(p["id"], "cni:ctrd:eth0");
    assert_eq!(p["netns"], pod.path());
    assert_eq!(p["ifname"], "eth0");
    assert_eq!(p["ip"], prev_ip(&prev));
    assert_eq!(p["network"], "podnet");

    node.spawn();
    // Whoever reaches the daemon next finishes the detach (the daemon
    // itself at start, once it processes the directory; this plugin on its
    // next call in any case).
    plugin(&attach_env("ADD", "ctrd2", &pod2.path(), "eth0"), &conf).ok();
    let ids: Vec<String> = node.pods().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec!["cni:ctrd2:eth0".to_string()]);
    assert!(!entry.exists(), "pending entry left behind");
    let left = links_after_removals(&pod);
    assert!(left.is_empty(), "{left:?}");
    plugin(&attach_env("DEL", "ctrd2", &pod2.path(), "eth0"), &conf).ok();
    assert_eq!(node.status().free_addresses, free0);
}

fn prev_ip(prev: &str) -> String {
    let v: Value = serde_json::from_str(prev).unwrap();
    v["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn daemon_processes_pending_detaches_at_start() {
    if !privileged("daemon_processes_pending_detaches_at_start") {
        return;
    }
    let _s = serial();
    let mut node = Node::start("10.85.0.0/24", "192.168.85.1");
    let pod = Netns::new("p");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.1.0", "");
    plugin(&attach_env("ADD", "ctrs", &pod.path(), "eth0"), &conf).ok();
    node.stop();
    plugin(&attach_env("DEL", "ctrs", &pod.path(), "eth0"), &conf).ok();
    node.spawn();
    assert!(node.pods().is_empty(), "{:?}", node.pods());
    assert_eq!(node.status().free_addresses, free0);
    assert_eq!(links_after_removals(&pod), Vec::<String>::new());
    assert!(!node.pending_dir.join("cni:ctrs:eth0").exists());
}

#[test]
fn a_stale_pending_entry_never_removes_a_newer_attachment() {
    if !privileged("a_stale_pending_entry_never_removes_a_newer_attachment") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.86.0.0/24", "192.168.86.1");
    let pod = Netns::new("p");
    let conf = node.conf("1.1.0", "");
    plugin(&attach_env("ADD", "ctrx", &pod.path(), "eth0"), &conf).ok();
    // An entry left by a DEL of an older attachment with the same id in
    // another netns (as after a container restart).
    std::fs::create_dir_all(&node.pending_dir).unwrap();
    std::fs::write(
        node.pending_dir.join("cni:ctrx:eth0"),
        r#"{"version":1,"id":"cni:ctrx:eth0","netns":"/run/netns/old-one","ifname":"eth0","network":"podnet","written_unix":1}"#,
    )
    .unwrap();
    let other = Netns::new("p");
    plugin(&attach_env("ADD", "ctry", &other.path(), "eth0"), &conf).ok();
    assert_eq!(
        node.pods().len(),
        2,
        "the stale entry removed a live attachment"
    );
    assert!(!node.pending_dir.join("cni:ctrx:eth0").exists());
    for (c, ns) in [("ctrx", &pod), ("ctry", &other)] {
        plugin(&attach_env("DEL", c, &ns.path(), "eth0"), &conf).ok();
    }
}

#[test]
fn add_into_an_existing_interface_fails_without_leaking() {
    if !privileged("add_into_an_existing_interface_fails_without_leaking") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.87.0.0/24", "192.168.87.1");
    let pod = Netns::new("p");
    let free0 = node.status().free_addresses;
    pod.ip(&["tuntap", "add", "dev", "eth0", "mode", "tap"]);
    let v = plugin(
        &attach_env("ADD", "ctre", &pod.path(), "eth0"),
        &node.conf("1.1.0", ""),
    )
    .err(101);
    assert!(v["details"].as_str().unwrap().contains("eth0"), "{v}");
    assert!(node.pods().is_empty());
    assert_eq!(node.status().free_addresses, free0);
    assert_eq!(
        pod.links(),
        vec!["eth0".to_string()],
        "someone else's interface must stay"
    );
    assert!(pod.addrs("eth0").is_empty());
}

#[test]
fn a_closed_stdout_undoes_the_add() {
    if !privileged("a_closed_stdout_undoes_the_add") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.88.0.0/24", "192.168.88.1");
    let pod = Netns::new("p");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.1.0", "");
    // The runtime dies before reading the result: stdout is a pipe with no
    // reader, so writing the result fails (EPIPE) and ADD must undo itself.
    let mut child = std::process::Command::new(PLUGIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "ctrp")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        i.write_all(conf.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("undoing"), "{err}");
    assert!(node.pods().is_empty());
    assert_eq!(links_after_removals(&pod), Vec::<String>::new());
    assert_eq!(node.status().free_addresses, free0);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "the plugin's panic hook is in debug builds only"
)]
fn a_panic_after_attach_undoes_it_and_prints_a_cni_error() {
    if !privileged("a_panic_after_attach_undoes_it_and_prints_a_cni_error") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.79.0.0/24", "192.168.79.1");
    let pod = Netns::new("p");
    let free0 = node.status().free_addresses;
    let mut add = attach_env("ADD", "ctrpanic", &pod.path(), "eth0");
    add.extra
        .insert("PODROUTER_CNI_TEST_PANIC".into(), "1".into());
    let out = plugin(&add, &node.conf("0.4.0", ""));
    let v = out.err(110);
    assert_eq!(v["cniVersion"], "0.4.0");
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("PODROUTER_CNI_TEST_PANIC"),
        "{v}"
    );
    assert!(out.stderr.contains("undoing"), "{}", out.stderr);
    assert!(node.pods().is_empty());
    assert_eq!(links_after_removals(&pod), Vec::<String>::new());
    assert_eq!(node.status().free_addresses, free0);
}

#[test]
fn gc_removes_exactly_the_unlisted_attachments() {
    if !privileged("gc_removes_exactly_the_unlisted_attachments") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.89.0.0/24", "192.168.89.1");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.1.0", "");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("p")).collect();
    for (i, ns) in pods.iter().enumerate() {
        plugin(
            &attach_env("ADD", &format!("gc{i}"), &ns.path(), "eth0"),
            &conf,
        )
        .ok();
    }
    // An attachment made by someone else (podrouterctl): never touched.
    let manual = Netns::new("m");
    node.client()
        .call(Call::Attach(AttachParams {
            id: "manual".into(),
            netns: manual.path(),
            ifname: "eth0".into(),
            ip: None,
            mtu: None,
            identity: None,
        }))
        .unwrap();

    // Without the list, GC refuses rather than removing everything.
    plugin(&env0("GC"), &conf).err(7);
    assert_eq!(node.pods().len(), 4);

    let gc_conf = node.conf(
        "1.1.0",
        r#""cni.dev/valid-attachments":[{"containerID":"gc0","ifname":"eth0"},{"containerID":"gc2","ifname":"eth9"}]"#,
    );
    let out = plugin(&env0("GC"), &gc_conf);
    assert_eq!(out.ok(), "");
    let mut ids: Vec<String> = node.pods().into_iter().map(|p| p.id).collect();
    ids.sort();
    assert_eq!(ids, vec!["cni:gc0:eth0".to_string(), "manual".to_string()]);
    assert!(links_after_removals(&pods[1]).is_empty());
    assert!(links_after_removals(&pods[2]).is_empty());
    assert_eq!(pods[0].links(), vec!["eth0".to_string()]);
    assert_eq!(node.status().free_addresses, free0 - 2);
    // Idempotent.
    plugin(&env0("GC"), &gc_conf).ok();
    assert_eq!(node.pods().len(), 2);
    plugin(
        &env0("GC"),
        &node.conf("1.1.0", r#""cni.dev/valid-attachments":[]"#),
    )
    .ok();
    let ids: Vec<String> = node.pods().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec!["manual".to_string()]);
}

#[test]
fn status_reports_an_exhausted_pool() {
    if !privileged("status_reports_an_exhausted_pool") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.90.0.0/30", "192.168.90.1");
    let conf = node.conf("1.1.0", "");
    plugin(&env0("STATUS"), &conf).ok();
    let free = node.status().free_addresses;
    assert!(free >= 1);
    let pods: Vec<Netns> = (0..free).map(|_| Netns::new("p")).collect();
    for (i, ns) in pods.iter().enumerate() {
        plugin(
            &attach_env("ADD", &format!("st{i}"), &ns.path(), "eth0"),
            &conf,
        )
        .ok();
    }
    let v = plugin(&env0("STATUS"), &conf).err(50);
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("no free pod address"),
        "{v}"
    );
    let extra = Netns::new("p");
    plugin(&attach_env("ADD", "stx", &extra.path(), "eth0"), &conf).err(102);
    assert_eq!(links_after_removals(&extra), Vec::<String>::new());
    plugin(&attach_env("DEL", "st0", &pods[0].path(), "eth0"), &conf).ok();
    plugin(&env0("STATUS"), &conf).ok();
}

#[test]
fn fifty_concurrent_adds_then_dels_leak_nothing() {
    if !privileged("fifty_concurrent_adds_then_dels_leak_nothing") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.91.0.0/24", "192.168.91.1");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.1.0", "");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("c")).collect();
    let results: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                s.spawn(move || {
                    plugin(
                        &attach_env("ADD", &format!("cc{i}"), &ns.path(), "eth0"),
                        conf,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        r.ok();
        let a = r.json()["ips"][0]["address"].as_str().unwrap().to_string();
        assert_eq!(pods[i].addrs("eth0"), vec![a.clone()]);
        assert!(addrs.insert(a), "address handed out twice");
    }
    assert_eq!(node.pods().len(), 50);
    assert_eq!(node.status().free_addresses, free0 - 50);

    let dels: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                let prev = results[i].stdout.clone();
                s.spawn(move || {
                    plugin(
                        &attach_env("DEL", &format!("cc{i}"), &ns.path(), "eth0"),
                        &with_prev(conf, &prev),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for d in &dels {
        d.ok();
    }
    assert!(node.pods().is_empty());
    assert_eq!(node.status().free_addresses, free0);
    for ns in &pods {
        let left = links_after_removals(ns);
        assert!(left.is_empty(), "{}: {left:?}", ns.name());
    }
    let state = std::fs::read_to_string(node.state_dir.join("state.json")).unwrap_or_default();
    assert!(
        !state.contains("cni:"),
        "state file still lists pods: {state}"
    );
    assert!(
        !node.pending_dir.exists()
            || std::fs::read_dir(&node.pending_dir)
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn two_pods_ping_each_other_and_the_node() {
    if !privileged("two_pods_ping_each_other_and_the_node") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.92.0.0/24", "192.168.92.1");
    let conf = node.conf("1.1.0", "");
    let a = Netns::new("a");
    let b = Netns::new("b");
    let ra = plugin(&attach_env("ADD", "pinga", &a.path(), "eth0"), &conf);
    let rb = plugin(&attach_env("ADD", "pingb", &b.path(), "eth0"), &conf);
    let (ipa, ipb) = (prev_ip(ra.ok()), prev_ip(rb.ok()));
    assert!(ping(&a, &ipb), "pod a cannot reach pod b\n{}", node.log());
    assert!(ping(&b, &ipa), "pod b cannot reach pod a");
    assert!(ping(&a, &node.node_ip), "pod a cannot reach the node");
    // The router answers ARP for the gateway with its fixed MAC (it need
    // not answer ICMP for 169.254.1.1, as in Calico).
    for ns in [&a, &b] {
        let neigh = ns.ip(&["neigh", "show", "169.254.1.1"]);
        assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "{neigh}");
    }
    plugin(&attach_env("DEL", "pinga", &a.path(), "eth0"), &conf).ok();
    plugin(&attach_env("DEL", "pingb", &b.path(), "eth0"), &conf).ok();
}

#[test]
fn delegated_ipam_host_local() {
    // containernetworking-plugins (scripts/install-deps.sh) has host-local.
    if !Needs::new("delegated_ipam_host_local")
        .privileged()
        .commands(&["/usr/lib/cni/host-local"])
        .met()
    {
        return;
    }
    let _s = serial();
    let node = Node::start("10.93.0.0/24", "192.168.93.1");
    let data = TempDir::new("hl");
    let free0 = node.status().free_addresses;
    // Debian's host-local (plugins 1.1.1) speaks up to 1.0.0.
    let ipam = |range: &str| {
        format!(
            r#""ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{range}"}}]]}}"#,
            data.path().display()
        )
    };
    let conf = node.conf("1.0.0", &ipam("10.93.0.64/26"));
    let reserved = |ip: &str| data.path().join("podnet").join(ip).exists();
    let pod = Netns::new("p");

    let out = plugin(&attach_env("ADD", "hl1", &pod.path(), "eth0"), &conf);
    out.ok();
    let ip = prev_ip(&out.stdout);
    assert_eq!(
        ip, "10.93.0.66",
        "host-local hands out the range's second address first"
    );
    assert!(reserved(&ip));
    assert_eq!(pod.addrs("eth0"), vec![format!("{ip}/32")]);
    assert_eq!(node.pods()[0].ip.to_string(), ip);
    assert_eq!(node.status().free_addresses, free0 - 1);

    // A duplicate ADD fails before asking host-local (whose undo would
    // release the live attachment's address).
    plugin(&attach_env("ADD", "hl1", &pod.path(), "eth0"), &conf).err(101);
    assert!(reserved(&ip));

    // CHECK delegates too.
    plugin(
        &attach_env("CHECK", "hl1", &pod.path(), "eth0"),
        &with_prev(&conf, &out.stdout),
    )
    .ok();

    // An address the router refuses (outside its pod_cidrs): the ADD fails
    // and host-local's reservation is released.
    let outside = node.conf("1.0.0", &ipam("10.94.0.0/24"));
    let pod2 = Netns::new("p");
    plugin(&attach_env("ADD", "hl2", &pod2.path(), "eth0"), &outside).err(102);
    assert!(!reserved("10.94.0.2"), "failed ADD leaked the IPAM address");
    assert_eq!(links_after_removals(&pod2), Vec::<String>::new());

    // An IPAM plugin that is not there: 7, naming CNI_PATH.
    let missing = node.conf("1.0.0", r#""ipam":{"type":"no-such-ipam"}"#);
    let v = plugin(&attach_env("ADD", "hl3", &pod2.path(), "eth0"), &missing).err(7);
    assert!(
        v["details"].as_str().unwrap().contains("/usr/lib/cni"),
        "{v}"
    );

    // DEL releases both.
    plugin(
        &attach_env("DEL", "hl1", &pod.path(), "eth0"),
        &with_prev(&conf, &out.stdout),
    )
    .ok();
    assert!(!reserved(&ip));
    plugin(&attach_env("DEL", "hl1", &pod.path(), "eth0"), &conf).ok();
    assert!(node.pods().is_empty());
    assert_eq!(node.status().free_addresses, free0);
}

/// Daemon side of issue 3 (kill -9 during a burst of ADDs): every ADD that
/// reported success survives the restart with its address, every ADD that
/// failed is cleaned up by the runtime's DEL, and GC leaves nothing else.
#[test]
fn kill_9_during_a_burst_of_adds_then_restart_and_gc() {
    if !privileged("kill_9_during_a_burst_of_adds_then_restart_and_gc") {
        return;
    }
    let _s = serial();
    let mut node = Node::start("10.95.0.0/24", "192.168.95.1");
    let free0 = node.status().free_addresses;
    let conf = node.conf("1.1.0", "");
    let pods: Vec<Netns> = (0..40).map(|_| Netns::new("k")).collect();
    let results: Vec<Out> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                s.spawn(move || {
                    plugin(
                        &attach_env("ADD", &format!("k{i}"), &ns.path(), "eth0"),
                        conf,
                    )
                })
            })
            .collect();
        // Crash the daemon once some ADDs are through (read from the state
        // file: an API call would queue behind the ADDs).
        let state = node.state_dir.join("state.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::read_to_string(&state).map_or(0, |s| s.matches("cni:k").count()) < 8
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        node.kill9();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<usize> = (0..pods.len())
        .filter(|i| results[*i].status == 0)
        .collect();
    let failed: Vec<usize> = (0..pods.len())
        .filter(|i| results[*i].status != 0)
        .collect();
    for i in &failed {
        let v = results[*i].json();
        assert!(
            [11, 100].contains(&v["code"].as_u64().unwrap()),
            "unexpected error for k{i}: {v}"
        );
    }
    eprintln!("{} ADDs succeeded, {} failed", ok.len(), failed.len());
    node.spawn();
    // The runtime DELs every ADD that failed.
    for i in &failed {
        plugin(
            &attach_env("DEL", &format!("k{i}"), &pods[*i].path(), "eth0"),
            &conf,
        )
        .ok();
    }
    let valid: Vec<Value> = ok
        .iter()
        .map(|i| serde_json::json!({"containerID": format!("k{i}"), "ifname": "eth0"}))
        .collect();
    let gc = node.conf(
        "1.1.0",
        &format!(r#""cni.dev/valid-attachments":{}"#, Value::Array(valid)),
    );
    plugin(
        &CniEnv {
            command: "GC",
            ..CniEnv::default()
        },
        &gc,
    )
    .ok();

    let live = node.pods();
    let mut ids: Vec<String> = live.iter().map(|p| p.id.clone()).collect();
    ids.sort();
    let mut want: Vec<String> = ok.iter().map(|i| format!("cni:k{i}:eth0")).collect();
    want.sort();
    assert_eq!(ids, want);
    let mut seen = HashSet::new();
    for i in &ok {
        let ip = prev_ip(&results[*i].stdout);
        let pod = live
            .iter()
            .find(|p| p.id == format!("cni:k{i}:eth0"))
            .unwrap();
        assert_eq!(
            pod.ip.to_string(),
            ip,
            "k{i} changed address across the crash"
        );
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
        assert_eq!(pods[*i].addrs("eth0"), vec![format!("{ip}/32")]);
    }
    // Checked last, so the checks above report too.
    let leaked: Vec<String> = failed
        .iter()
        .filter(|i| !links_after_removals(&pods[**i]).is_empty())
        .map(|i| format!("k{i}"))
        .collect();
    assert_eq!(node.status().free_addresses, free0 - ok.len() as u64);
    for i in &ok {
        plugin(
            &attach_env("DEL", &format!("k{i}"), &pods[*i].path(), "eth0"),
            &conf,
        )
        .ok();
    }
    assert!(node.pods().is_empty());
    assert_eq!(node.status().free_addresses, free0);
    assert!(
        leaked.is_empty(),
        "failed ADDs left interfaces after their DEL: {leaked:?}"
    );
}

#[test]
fn kubernetes_identity_reaches_the_daemon() {
    if !privileged("kubernetes_identity_reaches_the_daemon") {
        return;
    }
    let _s = serial();
    let node = Node::start("10.82.0.0/24", "192.168.82.1");
    let pod = Netns::new("p");
    // kubelet's CNI_ARGS, labels and a named port in runtimeConfig.
    let conf = node.conf(
        "1.1.0",
        r#""runtimeConfig":{"labels":{"app":"web","tier":"front"},"ports":[{"name":"http","port":8080}]}"#,
    );
    let mut add = attach_env("ADD", "ctr-k8s", &pod.path(), "eth0");
    add.extra.insert(
        "CNI_ARGS".into(),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=ctr-k8s".into(),
    );
    plugin(&add, &conf).ok();
    let eps = match node.client().call(Call::EndpointList).unwrap() {
        podrouter_api::Reply::Endpoints(e) => e,
        r => panic!("unexpected {r:?}"),
    };
    assert_eq!(eps.len(), 1, "{eps:?}");
    let i = &eps[0].identity;
    assert_eq!((i.namespace.as_str(), i.name.as_str()), ("shop", "web-0"));
    assert_eq!(i.labels["app"], "web");
    assert_eq!(i.labels["tier"], "front");
    assert_eq!(
        (
            i.ports[0].name.as_str(),
            i.ports[0].protocol.as_str(),
            i.ports[0].port
        ),
        ("http", "TCP", 8080)
    );

    // Labels in a shape the plugin does not read: refused as an invalid
    // configuration before anything is taken.
    let pod2 = Netns::new("p");
    let free = node.status().free_addresses;
    let bad = node.conf("1.1.0", r#""args":{"labels":"app=web"}"#);
    let out = plugin(&attach_env("ADD", "ctr-bad", &pod2.path(), "eth0"), &bad);
    let e = out.err(7);
    assert!(
        e["details"].as_str().unwrap().contains("args.labels"),
        "{e}"
    );
    assert_eq!(node.pods().len(), 1);
    assert_eq!(node.status().free_addresses, free);
    plugin(&attach_env("DEL", "ctr-k8s", &pod.path(), "eth0"), &conf).ok();
}
