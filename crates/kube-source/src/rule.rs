//! Istio DestinationRules (`networking.istio.io/v1alpha3`), the CRD EdgeMesh
//! reads load-balancing strategies from. Optional: a cluster without the CRD
//! answers `404` (without the RBAC rule, `403`), and the source then checks
//! again slowly without counting it as an outage (see `source`).
//!
//! v1alpha3 because that is the version EdgeMesh's CRD defines and every
//! Istio release still serves; Istio serves the same objects as v1beta1 and
//! v1, so rules written in any version are listed.

use std::borrow::Cow;

use edgemesh_core::Object;
use edgemesh_k8s::ConvertError;
use edgemesh_k8s::convert;
use edgemesh_k8s::schema::{Document, Located, Metadata};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::NamespaceResourceScope;
use serde::{Deserialize, Serialize};

/// A DestinationRule as listed: metadata and the whole `spec`, read by
/// `edgemesh_k8s` (which reports the fields without effect here).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DestinationRule {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

pub const GROUP: &str = "networking.istio.io";
pub const VERSION: &str = "v1alpha3";

impl kube::Resource for DestinationRule {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "DestinationRule".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "destinationrules".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A DestinationRule into the shared model.
pub fn destination_rule(r: &DestinationRule) -> Result<Option<Object>, ConvertError> {
    let located = |value: String| Located { value, line: 0 };
    let m = &r.metadata;
    let doc = Document {
        api_version: Some(located(format!("{GROUP}/{VERSION}"))),
        kind: Some(located("DestinationRule".into())),
        metadata: Some(Metadata {
            name: m.name.clone().map(located),
            namespace: m.namespace.clone().map(located),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            ..Metadata::default()
        }),
        rule_spec: Some(r.spec.clone()),
        ..Document::default()
    };
    convert::object(doc)
}
