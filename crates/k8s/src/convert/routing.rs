//! The edge gateway's objects (Gateway API kinds, and Istio's `Gateway` and
//! `VirtualService`: [`RoutingKind`]), kept whole as JSON. Only what every
//! object needs is checked here (its name and namespace, a `spec` that is a
//! mapping); the gateway reads the rest and reports what is wrong in it as
//! the object's status, so one bad route never costs a manifest file its
//! other objects.

use edgemesh_core::{RoutingKind, RoutingObject};
use serde_json::{Map, Value, json};

use super::{Cx, NameRule, meta};
use crate::problem::{ConvertError, Problem};
use crate::schema::Document;

/// A routing object of `kind`, written as `api_version`.
pub(super) fn routing(
    kind: RoutingKind,
    api_version: &str,
    doc: Document,
    mut cx: Cx,
) -> Result<RoutingObject, ConvertError> {
    let (generation, created) =
        doc.metadata.as_ref().map_or((None, None), |m| (m.generation, m.creation_timestamp.clone()));
    let meta = meta(doc.metadata, NameRule::Dns1123Subdomain, &mut cx)?;
    let spec = match doc.routing_spec {
        Some(spec @ Value::Object(_)) => spec,
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(other) => {
            return Err(cx.err(Problem::UnknownValue {
                field: "spec".into(),
                value: other.to_string(),
                expected: "a mapping",
            }));
        }
    };
    let mut metadata = json!({ "name": meta.name, "namespace": meta.namespace });
    if !meta.labels.is_empty() {
        metadata["labels"] = json!(meta.labels);
    }
    if let Some(generation) = generation {
        metadata["generation"] = json!(generation);
    }
    if let Some(created) = created {
        metadata["creationTimestamp"] = json!(created);
    }
    let document = json!({ "apiVersion": api_version, "kind": kind.kind(), "metadata": metadata, "spec": spec });
    Ok(RoutingObject { kind, meta, document: document.to_string() })
}
