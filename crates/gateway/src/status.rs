//! The objects' `status` as the Gateway API's CRDs define it, for writing
//! back to Kubernetes: a Gateway's conditions and listeners, a route's
//! `parents` entries of this controller. Pure: the Kubernetes source does
//! the reading and writing.
//!
//! [`merge`] keeps what is not this gateway's (other controllers' entries
//! in a route's `parents`) and each condition's `lastTransitionTime` while
//! its status stays, so an unchanged status is byte-for-byte the one the
//! object has and is not written again.

use serde_json::{Value, json};

use crate::report::{ConditionReport, GatewayObjectReport, RouteReport};
use crate::schema::GROUP;

/// The `controllerName` this gateway writes in routes' `parents`.
pub const CONTROLLER: &str = "edgemesh.io/gateway-controller";

/// A Gateway's `status` (conditions, listeners), times left to [`merge`].
pub fn gateway(report: &GatewayObjectReport) -> Value {
    let listeners: Vec<Value> = report
        .listeners
        .iter()
        .map(|l| {
            let kinds: Vec<Value> = l.supported_kinds.iter().map(|k| json!({"group": GROUP, "kind": k})).collect();
            json!({
                "name": l.name,
                "supportedKinds": kinds,
                "attachedRoutes": l.attached_routes,
                "conditions": conditions(&l.conditions),
            })
        })
        .collect();
    json!({ "conditions": conditions(&report.conditions), "listeners": listeners })
}

/// A route's `status` with this gateway's `parents` entries only.
pub fn route(report: &RouteReport) -> Value {
    let parents: Vec<Value> = report
        .parents
        .iter()
        .map(|p| {
            let (namespace, name) = p.gateway.split_once('/').unwrap_or(("", &p.gateway));
            let mut parent_ref = json!({"group": GROUP, "kind": "Gateway", "namespace": namespace, "name": name});
            if let Some(section) = &p.section_name {
                parent_ref["sectionName"] = json!(section);
            }
            json!({ "parentRef": parent_ref, "controllerName": CONTROLLER, "conditions": conditions(&p.conditions) })
        })
        .collect();
    json!({ "parents": parents })
}

fn conditions(list: &[ConditionReport]) -> Vec<Value> {
    list.iter()
        .map(|c| {
            let mut condition = json!({"type": c.kind, "status": c.status, "reason": c.reason, "message": c.message});
            if let Some(generation) = c.observed_generation {
                condition["observedGeneration"] = json!(generation);
            }
            condition
        })
        .collect()
}

/// The status to write, from `desired` ([`gateway`] or [`route`]) over the
/// object's `existing` status: other controllers' route parents kept, and
/// each condition's `lastTransitionTime` kept while its status is the
/// same, else `now` (RFC 3339).
pub fn merge(existing: &Value, desired: &Value, now: &str) -> Value {
    let mut out = desired.clone();
    if let Some(parents) = out.get_mut("parents").and_then(Value::as_array_mut) {
        let old_parents = existing.get("parents").and_then(Value::as_array).cloned().unwrap_or_default();
        for parent in parents.iter_mut() {
            let old =
                old_parents.iter().find(|o| o["parentRef"] == parent["parentRef"] && o["controllerName"] == CONTROLLER);
            stamp(&mut parent["conditions"], old.map(|o| &o["conditions"]), now);
        }
        let foreign = old_parents.into_iter().filter(|o| o["controllerName"] != CONTROLLER);
        let mut all: Vec<Value> = foreign.collect();
        all.append(parents);
        *parents = all;
        return out;
    }
    stamp(&mut out["conditions"], existing.get("conditions"), now);
    if let Some(listeners) = out.get_mut("listeners").and_then(Value::as_array_mut) {
        for listener in listeners {
            let old = existing
                .get("listeners")
                .and_then(Value::as_array)
                .and_then(|ls| ls.iter().find(|l| l["name"] == listener["name"]));
            stamp(&mut listener["conditions"], old.map(|l| &l["conditions"]), now);
        }
    }
    out
}

/// Sets each condition's `lastTransitionTime`: the old one's when the old
/// condition of its type had the same status.
fn stamp(conditions: &mut Value, old: Option<&Value>, now: &str) {
    let Some(conditions) = conditions.as_array_mut() else { return };
    for condition in conditions {
        let kept = old.and_then(Value::as_array).and_then(|old| {
            old.iter()
                .find(|o| o["type"] == condition["type"] && o["status"] == condition["status"])
                .and_then(|o| o.get("lastTransitionTime").cloned())
        });
        condition["lastTransitionTime"] = kept.unwrap_or_else(|| json!(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ParentReport;

    fn condition(kind: &'static str, status: &'static str) -> ConditionReport {
        ConditionReport { kind, status, reason: "Accepted", message: String::new(), observed_generation: Some(2) }
    }

    fn shop() -> RouteReport {
        RouteReport {
            kind: "HTTPRoute",
            namespace: "edge".into(),
            name: "shop".into(),
            parents: vec![ParentReport {
                gateway: "edge/site".into(),
                section_name: Some("web".into()),
                conditions: vec![condition("Accepted", "True"), condition("ResolvedRefs", "True")],
            }],
        }
    }

    #[test]
    fn a_listeners_supported_kinds_are_the_ones_it_takes() {
        let report = GatewayObjectReport {
            kind: "Gateway",
            namespace: "edge".into(),
            name: "site".into(),
            conditions: Vec::new(),
            listeners: vec![crate::report::ListenerReport {
                name: "web".into(),
                supported_kinds: vec!["HTTPRoute", "GRPCRoute"],
                attached_routes: 1,
                conditions: Vec::new(),
            }],
        };
        assert_eq!(
            gateway(&report)["listeners"][0]["supportedKinds"],
            json!([{"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}])
        );
    }

    #[test]
    fn a_routes_other_controllers_stay_and_unchanged_conditions_keep_their_time() {
        let first = merge(&json!({}), &route(&shop()), "2026-12-07T10:00:00Z");
        let parent = &first["parents"][0];
        assert_eq!(parent["parentRef"]["sectionName"], "web");
        assert_eq!(parent["controllerName"], CONTROLLER);
        assert_eq!(parent["conditions"][0]["observedGeneration"], 2);
        assert_eq!(parent["conditions"][0]["lastTransitionTime"], "2026-12-07T10:00:00Z");

        // Someone else's entry, and a later compile with one condition changed.
        let mut existing = first.clone();
        let foreign = json!({"parentRef": {"name": "other"}, "controllerName": "example.com/gw", "conditions": []});
        existing["parents"].as_array_mut().unwrap().push(foreign.clone());
        let mut later = shop();
        later.parents[0].conditions[1] = condition("ResolvedRefs", "False");
        let second = merge(&existing, &route(&later), "2026-12-07T11:00:00Z");
        assert_eq!(second["parents"][0], foreign, "another controller's entry is kept");
        let ours = &second["parents"][1]["conditions"];
        assert_eq!(ours[0]["lastTransitionTime"], "2026-12-07T10:00:00Z", "Accepted did not change");
        assert_eq!(ours[1]["lastTransitionTime"], "2026-12-07T11:00:00Z", "ResolvedRefs did");

        // The same again: exactly what is there, so nothing to write.
        assert_eq!(merge(&second, &route(&later), "2026-12-07T12:00:00Z"), second);
    }
}
