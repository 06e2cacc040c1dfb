//! Parsing NetworkPolicy objects (`networking.k8s.io/v1`) from what
//! `kubectl apply -f` takes: YAML or JSON, one or more `---`-separated
//! documents, each a NetworkPolicy or a `List` of them.
//!
//! Invariants: a document is either turned into a valid [`Policy`] or
//! refused with the path of the offending field
//! (`document 2: spec.ingress[0].from[1].ipBlock.except[0]: ...`); a
//! file with any refused document yields no policy at all. Fields this
//! node does not enforce are refused, not ignored (an IPv6 `cidr`, an
//! unknown field of `spec`), so nobody believes a rule is in force that
//! is not. `metadata` fields other than `name` and `namespace` and a
//! `status` are accepted and ignored, as they carry no rule.
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::model::{
    host_mask, Cidr, IpBlock, LabelSelector, Operator, Peer, Policy, PolicyPort, PortRef, Protocol,
    Requirement, Rule,
};

pub const API_VERSION: &str = "networking.k8s.io/v1";
pub const KIND: &str = "NetworkPolicy";

/// Why a policy document was refused: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based document number in the file.
    pub document: usize,
    /// Field path (`spec.ingress[0].ports[1].endPort`); empty for the
    /// document as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "document {}: {}", self.document, self.message)
        } else {
            write!(
                f,
                "document {}: {}: {}",
                self.document, self.path, self.message
            )
        }
    }
}

impl std::error::Error for PolicyError {}

pub(crate) type Res<T> = Result<T, (String, String)>;

pub(crate) fn err<T>(path: &str, msg: impl Into<String>) -> Res<T> {
    Err((path.to_string(), msg.into()))
}

pub(crate) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Parses every NetworkPolicy in `text` (YAML or JSON).
pub fn parse_policies(text: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = Value::deserialize(doc).map_err(|e| PolicyError {
            document,
            path: String::new(),
            message: format!("not valid YAML or JSON: {e}"),
        })?;
        let wrap = |(path, message): (String, String)| PolicyError {
            document,
            path,
            message,
        };
        match &value {
            // An empty document (a trailing `---`).
            Value::Null => continue,
            Value::Object(m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = m
                    .get("items")
                    .and_then(Value::as_array)
                    .ok_or_else(|| wrap(("items".into(), "a List needs an items array".into())))?;
                for (j, item) in items.iter().enumerate() {
                    out.push(policy(item, &format!("items[{j}]")).map_err(wrap)?);
                }
            }
            _ => out.push(policy(&value, "").map_err(wrap)?),
        }
    }
    Ok(out)
}

pub(crate) fn object<'a>(v: &'a Value, path: &str) -> Res<&'a Map<String, Value>> {
    v.as_object()
        .map_or_else(|| err(path, "must be an object"), Ok)
}

pub(crate) fn only_fields(m: &Map<String, Value>, path: &str, allowed: &[&str]) -> Res<()> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return err(
                &join(path, k),
                format!(
                    "unknown or unsupported field (allowed here: {})",
                    allowed.join(", ")
                ),
            );
        }
    }
    Ok(())
}

pub(crate) fn string<'a>(v: &'a Value, path: &str) -> Res<&'a str> {
    v.as_str().map_or_else(|| err(path, "must be a string"), Ok)
}

pub(crate) fn array<'a>(v: &'a Value, path: &str) -> Res<&'a [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        // `from:` with nothing after it is YAML null: the same as absent.
        Value::Null => Ok(&[]),
        _ => err(path, "must be a list"),
    }
}

/// A DNS-1123 label (namespace) or subdomain (name), as Kubernetes checks.
pub(crate) fn dns_name(s: &str, path: &str, subdomain: bool) -> Res<()> {
    let max = if subdomain { 253 } else { 63 };
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (subdomain && b == b'.')
        })
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        err(
            path,
            format!(
                "{s:?} is not a valid name (lower-case letters, digits, '-'{}, at most {max})",
                if subdomain { ", '.'" } else { "" }
            ),
        )
    }
}

fn policy(v: &Value, path: &str) -> Res<Policy> {
    let m = object(v, path)?;
    only_fields(
        m,
        path,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    let api = m
        .get("apiVersion")
        .map_or(Ok(""), |v| string(v, &join(path, "apiVersion")))?;
    if api != API_VERSION {
        return err(
            &join(path, "apiVersion"),
            format!("{api:?} is not {API_VERSION}"),
        );
    }
    let kind = m
        .get("kind")
        .map_or(Ok(""), |v| string(v, &join(path, "kind")))?;
    if kind != KIND {
        return err(&join(path, "kind"), format!("{kind:?} is not {KIND}"));
    }
    let mpath = join(path, "metadata");
    let meta = object(m.get("metadata").unwrap_or(&Value::Null), &mpath)?;
    let name = string(
        meta.get("name").unwrap_or(&Value::Null),
        &join(&mpath, "name"),
    )?;
    dns_name(name, &join(&mpath, "name"), true)?;
    let namespace = match meta.get("namespace") {
        None => "default",
        Some(v) => string(v, &join(&mpath, "namespace"))?,
    };
    dns_name(namespace, &join(&mpath, "namespace"), false)?;

    let spath = join(path, "spec");
    let spec = object(m.get("spec").unwrap_or(&Value::Null), &spath)?;
    only_fields(
        spec,
        &spath,
        &["podSelector", "policyTypes", "ingress", "egress"],
    )?;
    let pod_selector = match spec.get("podSelector") {
        None | Some(Value::Null) => LabelSelector::default(),
        Some(v) => selector(v, &join(&spath, "podSelector"))?,
    };
    let ingress = rules(spec.get("ingress"), &join(&spath, "ingress"), "from")?;
    let egress = rules(spec.get("egress"), &join(&spath, "egress"), "to")?;
    // policyTypes: as given, or Ingress plus Egress if egress rules exist
    // (the API server's default).
    let (isolates_ingress, isolates_egress) = match spec.get("policyTypes") {
        None | Some(Value::Null) => (true, spec.get("egress").is_some_and(|e| !e.is_null())),
        Some(v) => {
            let tpath = join(&spath, "policyTypes");
            let mut t = (false, false);
            for (i, x) in array(v, &tpath)?.iter().enumerate() {
                let p = format!("{tpath}[{i}]");
                match string(x, &p)? {
                    "Ingress" => t.0 = true,
                    "Egress" => t.1 = true,
                    other => return err(&p, format!("{other:?} is not Ingress or Egress")),
                }
            }
            if t == (false, false) {
                return err(&tpath, "must name Ingress, Egress or both");
            }
            t
        }
    };
    Ok(Policy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod_selector,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
        source: v.clone(),
    })
}

fn rules(v: Option<&Value>, path: &str, peers_field: &str) -> Res<Vec<Rule>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, r) in array(v, path)?.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let m = match r {
            Value::Null => {
                out.push(Rule::default());
                continue;
            }
            _ => object(r, &rpath)?,
        };
        only_fields(m, &rpath, &[peers_field, "ports"])?;
        let mut rule = Rule::default();
        if let Some(p) = m.get(peers_field) {
            let ppath = join(&rpath, peers_field);
            for (j, x) in array(p, &ppath)?.iter().enumerate() {
                rule.peers.push(peer(x, &format!("{ppath}[{j}]"))?);
            }
        }
        if let Some(p) = m.get("ports") {
            let ppath = join(&rpath, "ports");
            for (j, x) in array(p, &ppath)?.iter().enumerate() {
                rule.ports.push(port(x, &format!("{ppath}[{j}]"))?);
            }
        }
        out.push(rule);
    }
    Ok(out)
}

fn peer(v: &Value, path: &str) -> Res<Peer> {
    let m = object(v, path)?;
    only_fields(m, path, &["podSelector", "namespaceSelector", "ipBlock"])?;
    let sel = |k: &str| -> Res<Option<LabelSelector>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => selector(v, &join(path, k)).map(Some),
        }
    };
    let pods = sel("podSelector")?;
    let namespaces = sel("namespaceSelector")?;
    match m.get("ipBlock") {
        Some(b) if !b.is_null() => {
            if pods.is_some() || namespaces.is_some() {
                return err(
                    &join(path, "ipBlock"),
                    "may not be combined with podSelector or namespaceSelector in one peer",
                );
            }
            Ok(Peer::IpBlock(ip_block(b, &join(path, "ipBlock"))?))
        }
        _ if pods.is_none() && namespaces.is_none() => err(
            path,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ),
        _ => Ok(Peer::Pods { pods, namespaces }),
    }
}

fn cidr(s: &str, path: &str) -> Res<Cidr> {
    let Some((a, l)) = s.split_once('/') else {
        return err(path, format!("{s:?} is not a CIDR (a.b.c.d/len)"));
    };
    if a.contains(':') {
        return err(
            path,
            format!("{s:?}: IPv6 is not supported (podrouter is IPv4 only)"),
        );
    }
    let addr: Ipv4Addr = a.parse().map_or_else(
        |_| err(path, format!("{s:?}: {a:?} is not an IPv4 address")),
        Ok,
    )?;
    let len: u8 = match l.parse() {
        Ok(n) if n <= 32 => n,
        _ => return err(path, format!("{s:?}: prefix length must be 0-32")),
    };
    if u32::from(addr) & host_mask(len) != 0 {
        // Kubernetes accepts host bits and masks them; so do we.
        let masked = Ipv4Addr::from(u32::from(addr) & !host_mask(len));
        return Ok(Cidr { addr: masked, len });
    }
    Ok(Cidr { addr, len })
}

fn ip_block(v: &Value, path: &str) -> Res<IpBlock> {
    let m = object(v, path)?;
    only_fields(m, path, &["cidr", "except"])?;
    let cpath = join(path, "cidr");
    let c = cidr(
        string(m.get("cidr").unwrap_or(&Value::Null), &cpath)?,
        &cpath,
    )?;
    let mut except = Vec::new();
    if let Some(e) = m.get("except") {
        let epath = join(path, "except");
        for (i, x) in array(e, &epath)?.iter().enumerate() {
            let p = format!("{epath}[{i}]");
            let e = cidr(string(x, &p)?, &p)?;
            if e.len <= c.len || !c.contains(e.addr) {
                return err(&p, format!("{e} must be strictly inside cidr {c}"));
            }
            except.push(e);
        }
    }
    Ok(IpBlock { cidr: c, except })
}

fn port(v: &Value, path: &str) -> Res<PolicyPort> {
    let m = object(v, path)?;
    only_fields(m, path, &["protocol", "port", "endPort"])?;
    let protocol = match m.get("protocol") {
        None | Some(Value::Null) => Protocol::Tcp,
        Some(p) => {
            let pp = join(path, "protocol");
            let s = string(p, &pp)?;
            Protocol::parse(s)
                .map_or_else(|| err(&pp, format!("{s:?} is not TCP, UDP or SCTP")), Ok)?
        }
    };
    let number = |v: &Value, p: &str| -> Res<u16> {
        match v.as_u64() {
            Some(n @ 1..=65535) => Ok(n as u16),
            _ => err(p, format!("{v} is not a port number (1-65535)")),
        }
    };
    let pp = join(path, "port");
    let port = match m.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            // Kubernetes: an IANA service name, at most 15 characters of
            // lower-case letters, digits and '-', with a letter.
            let ok = !s.is_empty()
                && s.len() <= 15
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && s.bytes().any(|b| b.is_ascii_lowercase())
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--");
            if !ok {
                return err(&pp, format!("{s:?} is not a valid port name"));
            }
            Some(PortRef::Name(s.clone()))
        }
        Some(n) => Some(PortRef::Number(number(n, &pp)?)),
    };
    let end_port = match m.get("endPort") {
        None | Some(Value::Null) => None,
        Some(e) => {
            let ep = join(path, "endPort");
            let end = number(e, &ep)?;
            match port {
                Some(PortRef::Number(p)) if end >= p => Some(end),
                Some(PortRef::Number(p)) => return err(&ep, format!("{end} is below port {p}")),
                _ => return err(&ep, "needs a numeric port"),
            }
        }
    };
    Ok(PolicyPort {
        protocol,
        port,
        end_port,
    })
}

fn selector(v: &Value, path: &str) -> Res<LabelSelector> {
    let m = object(v, path)?;
    only_fields(m, path, &["matchLabels", "matchExpressions"])?;
    let mut s = LabelSelector::default();
    if let Some(l) = m.get("matchLabels") {
        let lpath = join(path, "matchLabels");
        s.match_labels = labels(l, &lpath)?;
    }
    if let Some(e) = m.get("matchExpressions") {
        let epath = join(path, "matchExpressions");
        for (i, x) in array(e, &epath)?.iter().enumerate() {
            let p = format!("{epath}[{i}]");
            let r = object(x, &p)?;
            only_fields(r, &p, &["key", "operator", "values"])?;
            let key = string(r.get("key").unwrap_or(&Value::Null), &join(&p, "key"))?;
            label_key(key, &join(&p, "key"))?;
            let op_path = join(&p, "operator");
            let operator = match string(r.get("operator").unwrap_or(&Value::Null), &op_path)? {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                o => {
                    return err(
                        &op_path,
                        format!("{o:?} is not In, NotIn, Exists or DoesNotExist"),
                    )
                }
            };
            let vpath = join(&p, "values");
            let mut values = Vec::new();
            if let Some(vs) = r.get("values") {
                for (j, x) in array(vs, &vpath)?.iter().enumerate() {
                    values.push(scalar(x, &format!("{vpath}[{j}]"))?);
                }
            }
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return err(&vpath, "In and NotIn need at least one value")
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return err(&vpath, "Exists and DoesNotExist take no values")
                }
                _ => {}
            }
            s.match_expressions.push(Requirement {
                key: key.to_string(),
                operator,
                values,
            });
        }
    }
    Ok(s)
}

/// A label value as YAML may write it (`version: 2`, `enabled: true`):
/// Kubernetes wants strings; we accept scalars and use their text.
fn scalar(v: &Value, path: &str) -> Res<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => err(path, "must be a string"),
    }
}

fn labels(v: &Value, path: &str) -> Res<BTreeMap<String, String>> {
    let m = match v {
        Value::Null => return Ok(BTreeMap::new()),
        _ => object(v, path)?,
    };
    let mut out = BTreeMap::new();
    for (k, x) in m {
        let p = join(path, k);
        label_key(k, &p)?;
        out.insert(k.clone(), scalar(x, &p)?);
    }
    Ok(out)
}

/// A label key: optional `prefix/` then a name of at most 63 characters.
pub fn label_key(k: &str, path: &str) -> Res<()> {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    let ok = !name.is_empty()
        && name.len() <= 63
        && k.len() <= 317
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        err(path, format!("{k:?} is not a valid label key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
      endPort: 6000
---
{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"deny","namespace":"x"},"spec":{"podSelector":{}}}
---
"#;

    #[test]
    fn the_kubernetes_example_and_a_json_document() {
        let ps = parse_policies(EXAMPLE).unwrap();
        assert_eq!(ps.len(), 2);
        let p = &ps[0];
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("default", "test-network-policy")
        );
        assert!(p.isolates_ingress && p.isolates_egress);
        assert_eq!(p.pod_selector.match_labels["role"], "db");
        assert_eq!(p.ingress[0].peers.len(), 3);
        assert!(matches!(&p.ingress[0].peers[0], Peer::IpBlock(b) if b.except.len() == 1));
        assert!(matches!(
            &p.ingress[0].peers[1],
            Peer::Pods {
                pods: None,
                namespaces: Some(_)
            }
        ));
        assert_eq!(p.egress[0].ports[0].end_port, Some(6000));
        let d = &ps[1];
        assert_eq!(d.namespace, "x");
        assert!(d.isolates_ingress && !d.isolates_egress);
        assert!(d.ingress.is_empty());
    }

    #[test]
    fn policy_types_default_like_the_api_server() {
        let doc = |spec: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
            )
        };
        let p = &parse_policies(&doc("{podSelector: {}, egress: [{}]}")).unwrap()[0];
        assert!(p.isolates_ingress && p.isolates_egress);
        assert_eq!(p.namespace, "default");
        let p = &parse_policies(&doc("{podSelector: {}, policyTypes: [Egress]}")).unwrap()[0];
        assert!(!p.isolates_ingress && p.isolates_egress);
        assert!(p.egress.is_empty(), "no egress rule: deny all egress");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            ("spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
             "document 1: spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 must be strictly inside cidr 10.0.0.0/8"),
            ("spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 70}]}]}",
             "document 1: spec.ingress[0].ports[0].endPort: 70 is below port 80"),
            ("spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}",
             "document 1: spec.ingress[0].ports[0].endPort: needs a numeric port"),
            ("spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
             "document 1: spec.ingress[0].ports[0].protocol: \"ICMP\" is not TCP, UDP or SCTP"),
            ("spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
             "document 1: spec.ingress[0].ports[0].port: 70000 is not a port number (1-65535)"),
            ("spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
             "document 1: spec.podSelector.matchExpressions[0].values: In and NotIn need at least one value"),
            ("spec: {podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}",
             "document 1: spec.podSelector.matchExpressions[0].values: Exists and DoesNotExist take no values"),
            ("spec: {podSelector: {matchExpressions: [{key: a, operator: Like, values: [x]}]}}",
             "document 1: spec.podSelector.matchExpressions[0].operator: \"Like\" is not In, NotIn, Exists or DoesNotExist"),
            ("spec: {podSelector: {}, egress: [{to: [{}]}]}",
             "document 1: spec.egress[0].to[0]: a peer needs podSelector, namespaceSelector or ipBlock"),
            ("spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
             "document 1: spec.egress[0].to[0].ipBlock: may not be combined with podSelector or namespaceSelector in one peer"),
            ("spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 'fd00::/8'}}]}]}",
             "document 1: spec.egress[0].to[0].ipBlock.cidr: \"fd00::/8\": IPv6 is not supported (podrouter is IPv4 only)"),
            ("spec: {podSelector: {}, ingress: [{from: [], frm: []}]}",
             "document 1: spec.ingress[0].frm: unknown or unsupported field (allowed here: from, ports)"),
            ("spec: {podSelector: {}, policyTypes: [Sideways]}",
             "document 1: spec.policyTypes[0]: \"Sideways\" is not Ingress or Egress"),
        ];
        for (spec, want) in cases {
            let text = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\n{spec}\n"
            );
            assert_eq!(
                parse_policies(&text).unwrap_err().to_string(),
                want,
                "{spec}"
            );
        }
        let bad_kind = "apiVersion: networking.k8s.io/v1\nkind: Pod\nmetadata: {name: p}\n";
        assert_eq!(
            parse_policies(bad_kind).unwrap_err().to_string(),
            "document 1: kind: \"Pod\" is not NetworkPolicy"
        );
        let bad_name = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {}\n";
        assert!(parse_policies(bad_name)
            .unwrap_err()
            .to_string()
            .starts_with("document 1: metadata.name: \"Bad_Name\" is not a valid name"));
        // The second document is bad: the whole file is refused.
        let two = format!("{EXAMPLE}\n---\napiVersion: v1\n");
        assert!(parse_policies(&two)
            .unwrap_err()
            .to_string()
            .starts_with("document 4: apiVersion"));
        assert!(parse_policies("a: [")
            .unwrap_err()
            .to_string()
            .starts_with("document 1: not valid YAML"));
    }

    #[test]
    fn a_list_of_policies() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
          {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"a"},"spec":{}},
          {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"b"},"spec":{"podSelector":{"matchLabels":{"v":2}}}}]}"#;
        let ps = parse_policies(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].pod_selector.match_labels["v"], "2");
        let bad = text.replace("\"b\"", "\"B\"");
        assert!(parse_policies(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("document 1: items[1].metadata.name"));
    }
}
