//! The pod's Kubernetes identity for podrouter's network policy, from what
//! runtimes pass: `K8S_POD_NAMESPACE` and `K8S_POD_NAME` in `CNI_ARGS`
//! (kubelet's runtimes set them), and labels and named ports from the
//! network configuration's `runtimeConfig`, `args` or `args.cni` if a
//! runtime or the operator put them there.
//!
//! Invariants: no identity information at all gives `None` (the daemon
//! then treats the pod as `default/<attach id>` without labels); labels or
//! ports in a shape we do not read are an error, never silently dropped
//! (a missing label could open a pod a policy meant to close).
use std::collections::BTreeMap;

use podrouter_api::{NamedPortSpec, PodIdentity};
use serde_json::{Map, Value};

use crate::error::{CniError, CniResult, Code};

fn bad(details: String) -> CniError {
    CniError::new(
        Code::InvalidConfig,
        "invalid pod identity in the network configuration",
        details,
    )
}

/// `KEY=VALUE;KEY=VALUE` of `CNI_ARGS`.
fn cni_arg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The places labels and ports may come from, in order of precedence.
fn sources(raw: &Map<String, Value>) -> Vec<(&'static str, &Map<String, Value>)> {
    let mut out = Vec::new();
    if let Some(Value::Object(m)) = raw.get("runtimeConfig") {
        out.push(("runtimeConfig", m));
    }
    if let Some(Value::Object(a)) = raw.get("args") {
        if let Some(Value::Object(c)) = a.get("cni") {
            out.push(("args.cni", c));
        }
        out.push(("args", a));
    }
    out
}

/// Labels as an object `{k: v}` or CNI conventions' list of
/// `{"key": k, "value": v}`.
fn labels(v: &Value, at: &str) -> CniResult<BTreeMap<String, String>> {
    let text = |v: &Value, what: &str| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(bad(format!("{at}: {what} must be a string"))),
    };
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), text(v, k)?)))
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|e| {
                let k = e.get("key").and_then(Value::as_str);
                match (k, e.get("value")) {
                    (Some(k), Some(v)) => Ok((k.to_string(), text(v, k)?)),
                    _ => Err(bad(format!("{at}: each label needs key and value"))),
                }
            })
            .collect(),
        _ => Err(bad(format!(
            "{at}: must be an object or a list of {{key, value}}"
        ))),
    }
}

/// The identity to attach with, if the invocation carries any.
pub fn pod_identity(
    cni_args: Option<&str>,
    raw: &Map<String, Value>,
    container_id: &str,
) -> CniResult<Option<PodIdentity>> {
    let args = cni_args.unwrap_or_default();
    let namespace = cni_arg(args, "K8S_POD_NAMESPACE");
    let name = cni_arg(args, "K8S_POD_NAME");
    let mut found_labels = None;
    let mut found_ports = None;
    for (at, m) in sources(raw) {
        if found_labels.is_none() {
            if let Some(l) = m.get("labels") {
                found_labels = Some(labels(l, &format!("{at}.labels"))?);
            }
        }
        if found_ports.is_none() {
            if let Some(p) = m.get("ports") {
                let ports: Vec<NamedPortSpec> = serde_json::from_value(p.clone()).map_err(|e| {
                    bad(format!(
                        "{at}.ports: {e} (a list of {{name, protocol, port}})"
                    ))
                })?;
                found_ports = Some(ports);
            }
        }
    }
    if namespace.is_none() && name.is_none() && found_labels.is_none() && found_ports.is_none() {
        return Ok(None);
    }
    Ok(Some(PodIdentity {
        namespace: namespace.unwrap_or("default").to_string(),
        name: name.unwrap_or(container_id).to_string(),
        labels: found_labels.unwrap_or_default(),
        ports: found_ports.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn kubelet_args_and_labels() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc";
        let raw = obj(
            r#"{"runtimeConfig":{"labels":{"app":"web","v":2},"ports":[{"name":"http","port":8080}]}}"#,
        );
        let i = pod_identity(Some(args), &raw, "abc").unwrap().unwrap();
        assert_eq!((i.namespace.as_str(), i.name.as_str()), ("shop", "web-1"));
        assert_eq!(i.labels["app"], "web");
        assert_eq!(i.labels["v"], "2");
        assert_eq!(i.ports[0].protocol, "TCP");
        // args.cni's list form; no CNI_ARGS: default namespace, the
        // container id as name.
        let raw = obj(r#"{"args":{"cni":{"labels":[{"key":"app","value":"db"}]}}}"#);
        let i = pod_identity(None, &raw, "c1").unwrap().unwrap();
        assert_eq!((i.namespace.as_str(), i.name.as_str()), ("default", "c1"));
        assert_eq!(i.labels["app"], "db");
        // Nothing at all: no identity.
        assert_eq!(
            pod_identity(Some("IgnoreUnknown=1"), &obj("{}"), "c").unwrap(),
            None
        );
        // A shape we do not read is an error.
        assert!(pod_identity(None, &obj(r#"{"args":{"labels":"app=web"}}"#), "c").is_err());
        assert!(pod_identity(
            None,
            &obj(r#"{"runtimeConfig":{"ports":[{"name":"x"}]}}"#),
            "c"
        )
        .is_err());
    }
}
