//! Istio DestinationRules (`networking.istio.io` v1alpha3, v1beta1, v1), as
//! EdgeMesh read them: a service's load-balancing strategy from
//! `trafficPolicy.loadBalancer`. Every other field is reported (logged
//! with the rule's name), never silently dropped.
//!
//! The service is the one `spec.host` names: `name` (in the rule's
//! namespace), `name.namespace`, or `name.namespace.svc.<cluster domain>`;
//! without a host, the rule's own name (EdgeMesh matched rules to services
//! by name alone).

use edgemesh_core::LbStrategy;
use edgemesh_core::object::DestinationRuleObject;
use serde_json::Value;

use super::{Cx, NameRule, meta};
use crate::problem::{ConvertError, Problem};
use crate::schema::Document;
use crate::validate;

/// The `apiVersion`s of a DestinationRule: Istio serves the same objects
/// under each.
pub const API_VERSIONS: [&str; 3] =
    ["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"];

pub(super) fn destination_rule(doc: Document, mut cx: Cx) -> Result<DestinationRuleObject, ConvertError> {
    let meta = meta(doc.metadata, NameRule::Dns1123Subdomain, &mut cx)?;
    let spec = doc.rule_spec.unwrap_or(Value::Null);
    let mut ignored = Vec::new();
    let (service_namespace, service_name) = match spec.get("host") {
        None | Some(Value::Null) => (meta.namespace.clone(), meta.name.clone()),
        Some(Value::String(host)) => service_of(host, &meta.namespace).map_err(|why| {
            cx.err(Problem::UnknownValue { field: "spec.host".into(), value: host.clone(), expected: why })
        })?,
        Some(other) => {
            return Err(cx.err(Problem::UnknownValue {
                field: "spec.host".into(),
                value: other.to_string(),
                expected: "a service name",
            }));
        }
    };
    unsupported(&spec, "spec", &["host", "trafficPolicy"], &mut ignored);
    let policy = spec.get("trafficPolicy").unwrap_or(&Value::Null);
    unsupported(policy, "spec.trafficPolicy", &["loadBalancer"], &mut ignored);
    let lb = policy.get("loadBalancer").unwrap_or(&Value::Null);
    unsupported(lb, "spec.trafficPolicy.loadBalancer", &["simple", "consistentHash"], &mut ignored);
    let (strategy, hash_key) = match (lb.get("simple"), lb.get("consistentHash")) {
        (Some(_), Some(_)) => {
            return Err(cx.err(Problem::UnknownValue {
                field: "spec.trafficPolicy.loadBalancer".into(),
                value: "simple and consistentHash".into(),
                expected: "one of simple and consistentHash",
            }));
        }
        (Some(simple), None) => (simple_strategy(simple, &cx, &mut ignored)?, None),
        (None, Some(hash)) => (Some(LbStrategy::ConsistentHash), Some(hash_key(hash, &cx, &mut ignored)?)),
        (None, None) => (None, None),
    };
    if !ignored.is_empty() {
        tracing::warn!(
            line = cx.line,
            object = %cx.object,
            service = %format!("{service_namespace}/{service_name}"),
            ignored = %ignored.join("; "),
            "DestinationRule fields without effect here (only the load-balancing strategy is read)"
        );
    }
    Ok(DestinationRuleObject { meta, service_namespace, service_name, strategy, hash_key })
}

/// `simple`: the strategy (None: the default's).
fn simple_strategy(v: &Value, cx: &Cx, ignored: &mut Vec<String>) -> Result<Option<LbStrategy>, ConvertError> {
    let field = "spec.trafficPolicy.loadBalancer.simple";
    match v.as_str() {
        Some("ROUND_ROBIN") => Ok(Some(LbStrategy::RoundRobin)),
        Some("RANDOM") => Ok(Some(LbStrategy::Random)),
        Some("LEAST_REQUEST" | "LEAST_CONN") => Ok(Some(LbStrategy::LeastRequest)),
        Some("UNSPECIFIED") => Ok(None),
        Some("PASSTHROUGH") => {
            ignored.push(format!("{field} PASSTHROUGH (the agent always balances over the service's endpoints)"));
            Ok(None)
        }
        _ => Err(cx.err(Problem::UnknownValue {
            field: field.into(),
            value: v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            expected: "ROUND_ROBIN, RANDOM, LEAST_REQUEST, LEAST_CONN, PASSTHROUGH or UNSPECIFIED",
        })),
    }
}

/// `consistentHash`: its key in the `edgemesh.io/hash-key` syntax.
fn hash_key(v: &Value, cx: &Cx, ignored: &mut Vec<String>) -> Result<String, ConvertError> {
    let base = "spec.trafficPolicy.loadBalancer.consistentHash";
    unsupported(v, base, &["httpHeaderName", "httpCookie", "useSourceIp"], ignored);
    let bad = |field: &str, value: &Value, expected: &'static str| {
        cx.err(Problem::UnknownValue { field: format!("{base}.{field}"), value: value.to_string(), expected })
    };
    let key = if let Some(header) = v.get("httpHeaderName") {
        let name = header.as_str().ok_or_else(|| bad("httpHeaderName", header, "a header name"))?;
        format!("header:{name}")
    } else if let Some(cookie) = v.get("httpCookie") {
        unsupported(cookie, &format!("{base}.httpCookie"), &["name"], ignored);
        let name = cookie
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("httpCookie.name", cookie, "a cookie name"))?;
        format!("cookie:{name}")
    } else {
        match v.get("useSourceIp") {
            None | Some(Value::Bool(true)) => {}
            Some(other) => {
                ignored.push(format!("{base}.useSourceIp {other} (the source IP is the key without another)"))
            }
        }
        "source-ip".to_owned()
    };
    // The same rules as the annotation's.
    key.parse::<edgemesh_core::service::HashKey>()
        .map_err(|_| bad("httpHeaderName", v, "an HTTP header or cookie name (a token)"))?;
    Ok(key)
}

/// Notes every key of the mapping `v` other than `known`, as `path.key`.
fn unsupported(v: &Value, path: &str, known: &[&str], out: &mut Vec<String>) {
    if let Value::Object(map) = v {
        out.extend(map.keys().filter(|k| !known.contains(&k.as_str())).map(|k| format!("{path}.{k}")));
    }
}

/// The service `host` names, as (namespace, name).
fn service_of(host: &str, namespace: &str) -> Result<(String, String), &'static str> {
    const EXPECTED: &str = "a service: name, name.namespace or name.namespace.svc.<cluster domain>";
    let host = host.trim_end_matches('.');
    if host.contains('*') {
        return Err("one service (wildcard hosts are not supported)");
    }
    let parts: Vec<&str> = host.split('.').collect();
    let (ns, name) = match parts.as_slice() {
        [name] => (namespace, *name),
        [name, ns] => (*ns, *name),
        [name, ns, "svc", ..] => (*ns, *name),
        _ => return Err(EXPECTED),
    };
    if validate::dns1035_label(name).is_err() || validate::dns1123_label(ns).is_err() {
        return Err(EXPECTED);
    }
    Ok((ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_services_as_istio_reads_them() {
        let ok = |host: &str| service_of(host, "shop").map(|(ns, n)| format!("{ns}/{n}"));
        assert_eq!(ok("web"), Ok("shop/web".into()), "a short name is in the rule's namespace");
        assert_eq!(ok("web.other"), Ok("other/web".into()));
        assert_eq!(ok("web.other.svc"), Ok("other/web".into()));
        assert_eq!(ok("web.other.svc.cluster.local"), Ok("other/web".into()));
        assert_eq!(ok("web.other.svc.cluster.local."), Ok("other/web".into()));
        assert!(ok("*.other.svc.cluster.local").is_err());
        assert!(ok("example.com.au").is_err());
        assert!(ok("Web").is_err());
    }
}
