//! A second podrouter interface in a pod's namespace (`attach --netns` of
//! a namespace that already holds a pod, another id, `--ifname eth1`; what
//! a runtime does through the CNI plugin with another CNI_IFNAME). It
//! used to be accepted, took over the first pod's routes and, once
//! detached, left the first pod cut off. podrouter gives a pod one
//! interface: the second attach is refused with a clear error, whatever
//! path names the namespace, and the first pod never notices.
use podrouter_e2e::*;

/// `ip -4 route` in a pod, one line per route.
fn routes(pod: &Pod) -> String {
    pod.exec(&["ip", "-4", "route"]).expect_ok().stdout
}

#[test]
fn second_interface_in_a_pods_namespace_is_refused_and_the_pod_keeps_working() {
    if !require(
        "second_interface_in_a_pods_namespace_is_refused_and_the_pod_keeps_working",
        &["ping"],
    ) {
        return;
    }
    let mut node = Node::start(NodeConfig::default());
    let a = node.add_pod("pod-a", &[]);
    let b = node.add_pod("pod-b", &[]);
    assert_ping(&a.ns, &b.ip, 5, 63);
    let routes_before = routes(&a);

    // The same namespace under its own path and under another one.
    let alias = a.netns_path.replacen("/run/", "/var/run/", 1);
    assert_ne!(alias, a.netns_path);
    for path in [&a.netns_path, &alias] {
        let out = node.ctl_out(&["attach", "pod-a2", "--netns", path, "--ifname", "eth1"]);
        assert!(
            !out.ok(),
            "a second interface in {path} was accepted: {out}"
        );
        assert!(
            out.stderr.contains("already holds pod pod-a"),
            "the refusal names the pod already there: {out}"
        );
        assert!(
            !a.exec(&["ip", "link", "show", "eth1"]).ok(),
            "a refused attach left eth1 behind"
        );
        assert_eq!(routes(&a), routes_before, "the pod's routes changed");
        assert_ping(&a.ns, &b.ip, 5, 63);
    }
    // Its detach has nothing to remove, and the first pod keeps working.
    let out = node.ctl_out(&["detach", "pod-a2"]);
    assert!(!out.ok(), "detach of an id never attached: {out}");
    assert_eq!(routes(&a), routes_before);
    assert_ping(&a.ns, &b.ip, 5, 63);
    assert_eq!(node.ctl(&["status"])["pods"], 2);

    // Once the first pod is detached, the namespace may take a new one.
    node.ctl(&["detach", "pod-a"]);
    node.ctl(&[
        "attach",
        "pod-a2",
        "--netns",
        &a.netns_path,
        "--ifname",
        "eth1",
    ]);
    assert!(a.exec(&["ip", "link", "show", "eth1"]).ok());
    assert_ping(&a.ns, &b.ip, 3, 63);
}
