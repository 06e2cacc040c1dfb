//! Compiling policies into the data plane's lookup tables
//! ([`podrouter_router::policy`]): selectors resolve to the addresses of
//! the pods they select now, `ipBlock`s to address intervals, ports
//! (numbers, ranges, names) to port sets.
//!
//! Invariants: for every local pod, direction, peer address, protocol and
//! port, the compiled table answers exactly what [`super::eval::allows`]
//! answers for the same cluster and policies (the property tests below
//! check it on random clusters). The compiled form is a function of the
//! inputs only, so it is rebuilt whole on any change (a policy, a label,
//! a pod or an endpoint): cost O(rules x known pods) on the control thread,
//! never on a worker.
use std::collections::HashMap;
use std::net::Ipv4Addr;

use podrouter_router::policy::{
    DirRules, DirRulesBuilder, PodRules, PolicyTable, PortRange, PortSet,
};

use super::eval::Direction;
use super::model::{peer_selects, policy_selects, Cluster, Endpoint, Peer, Policy, PortRef, Rule};

/// The port set of `rule`'s numeric ports (and whole protocols), and
/// whether it also names ports.
fn numeric_ports(rule: &Rule) -> (PortSet, bool) {
    if rule.ports.is_empty() {
        return (PortSet::any(), false);
    }
    let mut named = false;
    let set = PortSet::of(rule.ports.iter().filter_map(|p| {
        let proto = p.protocol.number();
        match (&p.port, p.end_port) {
            (None, _) => Some(PortRange {
                proto,
                lo: 0,
                hi: u16::MAX,
            }),
            (Some(PortRef::Number(n)), end) => Some(PortRange {
                proto,
                lo: *n,
                hi: end.unwrap_or(*n),
            }),
            (Some(PortRef::Name(_)), _) => {
                named = true;
                None
            }
        }
    }));
    (set, named)
}

/// The ports `rule`'s names refer to on `dest`.
fn named_ports(rule: &Rule, dest: &Endpoint) -> PortSet {
    PortSet::of(rule.ports.iter().filter_map(|p| match &p.port {
        Some(PortRef::Name(name)) => dest.named_port(name, p.protocol).map(|n| PortRange {
            proto: p.protocol.number(),
            lo: n,
            hi: n,
        }),
        _ => None,
    }))
}

/// Adds an `ipBlock` (its CIDR minus its excepts) with `ports`.
fn allow_block(b: &mut DirRulesBuilder, block: &super::model::IpBlock, ports: &PortSet) {
    let mut excepts: Vec<(u32, u32)> = block.except.iter().map(|e| (e.first(), e.last())).collect();
    excepts.sort_unstable();
    let mut next = u64::from(block.cidr.first());
    let last = u64::from(block.cidr.last());
    for (f, l) in excepts {
        let (f, l) = (u64::from(f), u64::from(l));
        if f > next {
            b.allow_range(
                Ipv4Addr::from(next as u32),
                Ipv4Addr::from((f - 1) as u32),
                ports,
            );
        }
        next = next.max(l + 1);
    }
    if next <= last {
        b.allow_range(
            Ipv4Addr::from(next as u32),
            Ipv4Addr::from(last as u32),
            ports,
        );
    }
}

/// Does `peer` cover `ep` for a named port's resolution?
fn peer_covers(cluster: &Cluster, policy: &Policy, rule: &Rule, ep: &Endpoint) -> bool {
    rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_selects(cluster, &policy.namespace, p, ep))
}

/// `pod`'s compiled rules in `dir`, or `None` if no policy isolates it.
pub fn compile_direction(
    cluster: &Cluster,
    policies: &[Policy],
    pod: &Endpoint,
    dir: Direction,
) -> Option<DirRules> {
    let mut b = DirRulesBuilder::default();
    let mut isolated = false;
    for policy in policies {
        let (typed, rules) = match dir {
            Direction::Ingress => (policy.isolates_ingress, &policy.ingress),
            Direction::Egress => (policy.isolates_egress, &policy.egress),
        };
        if !typed || !policy_selects(policy, pod) {
            continue;
        }
        isolated = true;
        for rule in rules {
            let (mut ports, named) = numeric_ports(rule);
            if named && dir == Direction::Ingress {
                // Names are the selected pod's own ports.
                ports = ports.union(&named_ports(rule, pod));
            }
            if !ports.is_empty() {
                if rule.peers.is_empty() {
                    b.allow_range(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &ports);
                }
                for peer in &rule.peers {
                    match peer {
                        Peer::IpBlock(block) => allow_block(&mut b, block, &ports),
                        Peer::Pods { .. } => {
                            for ep in &cluster.endpoints {
                                if peer_selects(cluster, &policy.namespace, peer, ep) {
                                    b.allow_peer(ep.ip, &ports);
                                }
                            }
                        }
                    }
                }
            }
            if named && dir == Direction::Egress {
                // Names are each destination's: only known pods have them.
                for ep in &cluster.endpoints {
                    if peer_covers(cluster, policy, rule, ep) {
                        b.allow_peer(ep.ip, &named_ports(rule, ep));
                    }
                }
            }
        }
    }
    isolated.then(|| b.build())
}

/// The table for this node: `local` are the pods whose rules this node
/// enforces (every other endpoint is a peer only).
pub fn compile(
    cluster: &Cluster,
    policies: &[Policy],
    local: &[Ipv4Addr],
    node_addrs: &[Ipv4Addr],
) -> PolicyTable {
    let mut pods = HashMap::new();
    for &ip in local {
        let Some(ep) = cluster.endpoint(ip) else {
            continue;
        };
        let rules = PodRules {
            ingress: compile_direction(cluster, policies, ep, Direction::Ingress),
            egress: compile_direction(cluster, policies, ep, Direction::Egress),
        };
        pods.insert(ip, rules);
    }
    PolicyTable::new(pods, node_addrs)
}

#[cfg(test)]
mod tests {
    use super::super::eval::{self, connection_allowed};
    use super::super::model::*;
    use super::super::parse::parse_policies;
    use super::*;
    use podrouter_router::policy::{Decision, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
    use rand::rngs::SmallRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn ep(ip: &str, ns: &str, name: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![],
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// x/a, x/b, y/a, y/b; namespaces x (team=blue), y (team=red).
    fn cluster() -> Cluster {
        let mut c = Cluster {
            endpoints: vec![
                ep("10.0.0.1", "x", "a", &[("app", "a")]),
                ep("10.0.0.2", "x", "b", &[("app", "b")]),
                ep("10.0.1.1", "y", "a", &[("app", "a")]),
                ep("10.0.1.2", "y", "b", &[("app", "b")]),
            ],
            ..Cluster::default()
        };
        c.endpoints[1].ports = vec![NamedPort {
            name: "web".into(),
            protocol: Protocol::Tcp,
            port: 81,
        }];
        c.namespaces.insert(
            "x".into(),
            [("team".to_string(), "blue".to_string())].into(),
        );
        c.namespaces
            .insert("y".into(), [("team".to_string(), "red".to_string())].into());
        c
    }

    fn policies(spec_yaml: &[&str]) -> Vec<Policy> {
        let text: Vec<String> = spec_yaml
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: x}}\nspec: {s}\n")
            })
            .collect();
        parse_policies(&text.join("---\n")).unwrap()
    }

    /// Both the reference and the compiled table, must agree; returns it.
    fn check(c: &Cluster, ps: &[Policy], src: &str, dst: &str, proto: u8, port: u16) -> bool {
        let local: Vec<_> = c.endpoints.iter().map(|e| e.ip).collect();
        let want = connection_allowed(c, ps, &[], ip(src), ip(dst), proto, port);
        let t = compile(c, ps, &local, &[]);
        let got = t.check(ip(src), ip(dst), proto, port) == Decision::Allow;
        assert_eq!(got, want, "{src} -> {dst} {proto}/{port}");
        want
    }

    #[test]
    fn default_deny_and_allow_same_namespace() {
        let c = cluster();
        let deny = policies(&["{podSelector: {}}"]);
        assert!(!check(&c, &deny, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(!check(&c, &deny, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        // y is not selected by a policy in x.
        assert!(check(&c, &deny, "10.0.0.1", "10.0.1.1", PROTO_TCP, 80));
        let same = policies(&["{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}"]);
        assert!(check(&c, &same, "10.0.0.2", "10.0.0.1", PROTO_UDP, 53));
        assert!(check(&c, &same, "10.0.0.2", "10.0.0.1", PROTO_ICMP, 0));
        assert!(!check(&c, &same, "10.0.1.2", "10.0.0.1", PROTO_TCP, 80));
    }

    #[test]
    fn and_within_a_peer_or_across_peers() {
        let c = cluster();
        let and = policies(&["{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: red}}, podSelector: {matchLabels: {app: b}}}]}]}"]);
        assert!(check(&c, &and, "10.0.1.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(!check(&c, &and, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(!check(&c, &and, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        let or = policies(&["{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: red}}}, {podSelector: {matchLabels: {app: b}}}]}]}"]);
        assert!(check(&c, &or, "10.0.1.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(check(&c, &or, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(check(&c, &or, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        // x/b is not selected by the policy: open.
        assert!(check(&c, &or, "10.9.9.9", "10.0.0.2", PROTO_TCP, 80));
        assert!(!check(&c, &or, "10.9.9.9", "10.0.0.1", PROTO_TCP, 80));
    }

    #[test]
    fn expressions_select() {
        let c = cluster();
        for (expr, from_b_allowed, from_a_allowed) in [
            ("{key: app, operator: In, values: [b, c]}", true, false),
            ("{key: app, operator: NotIn, values: [b]}", false, true),
            ("{key: app, operator: Exists}", true, true),
            ("{key: app, operator: DoesNotExist}", false, false),
            ("{key: tier, operator: NotIn, values: [x]}", true, true),
        ] {
            let ps = policies(&[&format!("{{podSelector: {{}}, ingress: [{{from: [{{podSelector: {{matchExpressions: [{expr}]}}}}]}}]}}")]);
            assert_eq!(
                check(&c, &ps, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80),
                from_b_allowed,
                "{expr}"
            );
            assert_eq!(
                check(&c, &ps, "10.0.0.1", "10.0.0.2", PROTO_TCP, 80),
                from_a_allowed,
                "{expr}"
            );
        }
        // The namespace name label.
        let ps = policies(&["{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}"]);
        assert!(check(&c, &ps, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(!check(&c, &ps, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
    }

    #[test]
    fn ip_block_except_ports_ranges_and_names() {
        let c = cluster();
        let ps = policies(&["{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}], ports: [{port: 80}, {protocol: UDP, port: 1000, endPort: 1010}, {port: web}]}]}"]);
        assert!(check(&c, &ps, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(!check(&c, &ps, "10.0.1.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(check(&c, &ps, "10.0.200.2", "10.0.0.1", PROTO_UDP, 1005));
        assert!(!check(&c, &ps, "10.0.200.2", "10.0.0.1", PROTO_UDP, 1011));
        assert!(!check(&c, &ps, "10.0.200.2", "10.0.0.1", PROTO_TCP, 1005));
        assert!(!check(&c, &ps, "10.0.200.2", "10.0.0.1", PROTO_SCTP, 80));
        assert!(!check(&c, &ps, "10.0.200.2", "10.0.0.1", PROTO_ICMP, 0));
        // "web" is x/b's 81; x/a has no such port.
        assert!(check(&c, &ps, "10.0.0.1", "10.0.0.2", PROTO_TCP, 81));
        assert!(!check(&c, &ps, "10.0.0.2", "10.0.0.1", PROTO_TCP, 81));
        // Egress to a named port: the destination's.
        let eg = policies(&["{podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], egress: [{ports: [{port: web}]}]}"]);
        assert!(check(&c, &eg, "10.0.0.1", "10.0.0.2", PROTO_TCP, 81));
        assert!(!check(&c, &eg, "10.0.0.1", "10.0.1.2", PROTO_TCP, 81));
        assert!(!check(&c, &eg, "10.0.0.1", "8.8.8.8", PROTO_TCP, 81));
    }

    #[test]
    fn policies_add_up_and_both_ends_count() {
        let c = cluster();
        let ps = policies(&[
            "{podSelector: {matchLabels: {app: a}}, ingress: [{ports: [{port: 80}]}]}",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{ports: [{port: 81}]}]}",
            "{podSelector: {matchLabels: {app: b}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]}",
        ]);
        assert!(check(&c, &ps, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(check(&c, &ps, "10.0.1.1", "10.0.0.1", PROTO_TCP, 81));
        assert!(!check(&c, &ps, "10.0.1.1", "10.0.0.1", PROTO_TCP, 82));
        assert!(check(&c, &ps, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        // b's egress refuses 81 although a's ingress allows it.
        assert!(!check(&c, &ps, "10.0.0.2", "10.0.0.1", PROTO_TCP, 81));
        assert!(!check(&c, &ps, "10.0.0.2", "10.0.1.1", PROTO_TCP, 80));
        // The node is always let through.
        let local: Vec<_> = c.endpoints.iter().map(|e| e.ip).collect();
        let t = compile(&c, &ps, &local, &[ip("192.168.0.1")]);
        assert_eq!(
            t.check(ip("192.168.0.1"), ip("10.0.0.1"), PROTO_TCP, 9),
            Decision::Allow
        );
        assert_eq!(
            t.check(ip("10.0.0.2"), ip("192.168.0.1"), PROTO_TCP, 9),
            Decision::Allow
        );
        assert!(eval::isolated(&ps, &c.endpoints[0], Direction::Ingress));
        assert!(!eval::isolated(&ps, &c.endpoints[0], Direction::Egress));
    }

    // ---- property test: random clusters and policies -----------------

    const NS: [&str; 3] = ["x", "y", "z"];
    const KEYS: [&str; 2] = ["app", "tier"];
    const VALS: [&str; 3] = ["a", "b", "c"];

    fn rand_selector(rng: &mut SmallRng) -> String {
        let mut parts = Vec::new();
        if rng.gen_bool(0.5) {
            parts.push(format!(
                "matchLabels: {{{}: {}}}",
                KEYS.choose(rng).unwrap(),
                VALS.choose(rng).unwrap()
            ));
        }
        if rng.gen_bool(0.4) {
            let k = KEYS.choose(rng).unwrap();
            let e = match rng.gen_range(0..4) {
                0 => format!(
                    "{{key: {k}, operator: In, values: [{}]}}",
                    VALS.choose(rng).unwrap()
                ),
                1 => format!(
                    "{{key: {k}, operator: NotIn, values: [{}, {}]}}",
                    VALS.choose(rng).unwrap(),
                    VALS.choose(rng).unwrap()
                ),
                2 => format!("{{key: {k}, operator: Exists}}"),
                _ => format!("{{key: {k}, operator: DoesNotExist}}"),
            };
            parts.push(format!("matchExpressions: [{e}]"));
        }
        format!("{{{}}}", parts.join(", "))
    }

    fn rand_peer(rng: &mut SmallRng) -> String {
        match rng.gen_range(0..4) {
            0 => format!("{{podSelector: {}}}", rand_selector(rng)),
            1 => format!("{{namespaceSelector: {}}}", rand_selector(rng)),
            2 => format!(
                "{{podSelector: {}, namespaceSelector: {}}}",
                rand_selector(rng),
                rand_selector(rng)
            ),
            _ => {
                let len = rng.gen_range(20..=30);
                let base = 0x0a00_0000u32 & !host_mask(len);
                let cidr = Cidr {
                    addr: Ipv4Addr::from(base | (rng.gen::<u32>() & 0xff_ffff & !host_mask(len))),
                    len,
                };
                let except = if rng.gen_bool(0.5) {
                    let el = rng.gen_range(len + 1..=32);
                    let e = cidr.first() | (rng.gen::<u32>() & host_mask(len) & !host_mask(el));
                    format!(", except: [{}/{el}]", Ipv4Addr::from(e))
                } else {
                    String::new()
                };
                format!("{{ipBlock: {{cidr: {cidr}{except}}}}}")
            }
        }
    }

    fn rand_port(rng: &mut SmallRng) -> String {
        let proto = ["TCP", "UDP", "SCTP"].choose(rng).unwrap();
        match rng.gen_range(0..4) {
            0 => format!("{{protocol: {proto}}}"),
            1 => format!("{{protocol: {proto}, port: {}}}", rng.gen_range(79..83)),
            2 => {
                let p = rng.gen_range(78..82);
                format!(
                    "{{protocol: {proto}, port: {p}, endPort: {}}}",
                    p + rng.gen_range(0..3)
                )
            }
            _ => format!(
                "{{protocol: {proto}, port: {}}}",
                ["web", "dns", "nope"].choose(rng).unwrap()
            ),
        }
    }

    fn rand_rules(rng: &mut SmallRng, peers_field: &str) -> String {
        let rules: Vec<String> = (0..rng.gen_range(0..3))
            .map(|_| {
                let mut parts = Vec::new();
                if rng.gen_bool(0.7) {
                    let peers: Vec<String> =
                        (0..rng.gen_range(1..3)).map(|_| rand_peer(rng)).collect();
                    parts.push(format!("{peers_field}: [{}]", peers.join(", ")));
                }
                if rng.gen_bool(0.6) {
                    let ports: Vec<String> =
                        (0..rng.gen_range(1..3)).map(|_| rand_port(rng)).collect();
                    parts.push(format!("ports: [{}]", ports.join(", ")));
                }
                format!("{{{}}}", parts.join(", "))
            })
            .collect();
        format!("[{}]", rules.join(", "))
    }

    fn rand_cluster(rng: &mut SmallRng) -> Cluster {
        let mut c = Cluster::default();
        for (i, ns) in NS.iter().enumerate() {
            if rng.gen_bool(0.6) {
                c.namespaces.insert(
                    ns.to_string(),
                    [(
                        KEYS.choose(rng).unwrap().to_string(),
                        VALS.choose(rng).unwrap().to_string(),
                    )]
                    .into(),
                );
            }
            for j in 0..3u8 {
                let mut labels = Labels::new();
                for k in KEYS {
                    if rng.gen_bool(0.6) {
                        labels.insert(k.to_string(), VALS.choose(rng).unwrap().to_string());
                    }
                }
                let mut ports = Vec::new();
                if rng.gen_bool(0.5) {
                    ports.push(NamedPort {
                        name: "web".into(),
                        protocol: Protocol::Tcp,
                        port: rng.gen_range(79..83),
                    });
                }
                if rng.gen_bool(0.3) {
                    ports.push(NamedPort {
                        name: "dns".into(),
                        protocol: Protocol::Udp,
                        port: 80,
                    });
                }
                c.endpoints.push(Endpoint {
                    ip: Ipv4Addr::new(10, i as u8, rng.gen_range(0..2), 1 + j),
                    namespace: ns.to_string(),
                    name: format!("p{j}"),
                    labels,
                    ports,
                });
            }
        }
        // No two endpoints on one address.
        c.endpoints.sort_by_key(|e| e.ip);
        c.endpoints.dedup_by_key(|e| e.ip);
        c
    }

    #[test]
    fn compiled_tables_agree_with_the_reference() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut allowed = 0u32;
        let mut denied = 0u32;
        for round in 0..300 {
            let c = rand_cluster(&mut rng);
            let docs: Vec<String> = (0..rng.gen_range(1..5))
                .map(|i| {
                    let types = match rng.gen_range(0..4) {
                        0 => "",
                        1 => "policyTypes: [Ingress], ",
                        2 => "policyTypes: [Egress], ",
                        _ => "policyTypes: [Ingress, Egress], ",
                    };
                    format!(
                        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: r{i}, namespace: {}}}\nspec: {{podSelector: {}, {types}ingress: {}, egress: {}}}\n",
                        NS.choose(&mut rng).unwrap(),
                        rand_selector(&mut rng),
                        rand_rules(&mut rng, "from"),
                        rand_rules(&mut rng, "to"),
                    )
                })
                .collect();
            let ps = parse_policies(&docs.join("---\n"))
                .unwrap_or_else(|e| panic!("{e}\n{}", docs.join("---\n")));
            // Half the pods local, the rest on "other nodes".
            let local: Vec<_> = c
                .endpoints
                .iter()
                .filter(|_| rng.gen_bool(0.5))
                .map(|e| e.ip)
                .collect();
            let t = compile(&c, &ps, &local, &[]);
            let mut addrs: Vec<Ipv4Addr> = c.endpoints.iter().map(|e| e.ip).collect();
            addrs.extend([
                ip("10.0.0.200"),
                ip("10.1.1.77"),
                ip("10.2.0.1"),
                ip("192.168.1.1"),
            ]);
            for &s in &addrs {
                for &d in &addrs {
                    for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP] {
                        for port in 78..84 {
                            let got = t.check(s, d, proto, port);
                            // The reference, for local ends only.
                            let ends =
                                |a: Ipv4Addr| c.endpoint(a).filter(|e| local.contains(&e.ip));
                            let eg = ends(s).is_none_or(|e| {
                                eval::allows(&c, &ps, e, Direction::Egress, d, proto, port)
                            });
                            let ing = ends(d).is_none_or(|e| {
                                eval::allows(&c, &ps, e, Direction::Ingress, s, proto, port)
                            });
                            let want = if !eg {
                                Decision::DenyEgress
                            } else if !ing {
                                Decision::DenyIngress
                            } else {
                                Decision::Allow
                            };
                            assert_eq!(
                                got,
                                want,
                                "round {round}: {s} -> {d} {proto}/{port}\n{}",
                                docs.join("---\n")
                            );
                            if want == Decision::Allow {
                                allowed += 1
                            } else {
                                denied += 1
                            }
                        }
                    }
                }
            }
        }
        // The generator exercises both outcomes.
        assert!(
            allowed > 10_000 && denied > 10_000,
            "{allowed} allowed, {denied} denied"
        );
    }
}
