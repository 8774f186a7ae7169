//! The edge gateway's objects (issue #17): the Gateway API's kinds and
//! Istio's `Gateway` and `VirtualService` (EdgeMesh's gateway objects),
//! watched only when the gateway runs (`KubeSourceConfig::routing`). Each
//! is an optional CRD, like DestinationRules: a cluster without it answers
//! `404` (without the RBAC rule, `403`), logged once, asked again slowly,
//! never an outage of the source.
//!
//! Objects are read as `DynamicObject`s and kept whole ([`RoutingObject`]:
//! the gateway parses them with its own schema and reports their problems
//! as their status).
//!
//! [`RoutingObject`]: edgemesh_core::RoutingObject

use edgemesh_core::{Object, RoutingKind};
use edgemesh_k8s::ConvertError;
use edgemesh_k8s::convert;
use edgemesh_k8s::schema::Document;
use kube::api::{ApiResource, DynamicObject};

/// The version each kind is listed at: the newest the Gateway API's
/// standard (v1) or experimental (v1alpha2) channel serves, and the
/// version EdgeMesh's Istio CRDs define (v1alpha3; Istio serves the same
/// objects at every version).
pub fn version(kind: RoutingKind) -> &'static str {
    match kind {
        RoutingKind::Gateway | RoutingKind::HttpRoute | RoutingKind::GrpcRoute => "v1",
        RoutingKind::ReferenceGrant => "v1beta1",
        RoutingKind::TlsRoute | RoutingKind::TcpRoute => "v1alpha2",
        RoutingKind::IstioGateway | RoutingKind::VirtualService => "v1alpha3",
    }
}

/// The resource's plural name in its URL.
pub fn plural(kind: RoutingKind) -> &'static str {
    match kind {
        RoutingKind::Gateway | RoutingKind::IstioGateway => "gateways",
        RoutingKind::HttpRoute => "httproutes",
        RoutingKind::GrpcRoute => "grpcroutes",
        RoutingKind::TlsRoute => "tlsroutes",
        RoutingKind::TcpRoute => "tcproutes",
        RoutingKind::ReferenceGrant => "referencegrants",
        RoutingKind::VirtualService => "virtualservices",
    }
}

/// What the dynamic API client needs to list and watch `kind`.
pub fn api_resource(kind: RoutingKind) -> ApiResource {
    let (group, version) = (kind.group(), version(kind));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.kind().into(),
        plural: plural(kind).into(),
    }
}

/// A listed object into the shared model (its `status` is dropped).
pub fn routing_object(kind: RoutingKind, object: &DynamicObject) -> Result<Option<Object>, ConvertError> {
    let api_version = format!("{}/{}", kind.group(), version(kind));
    let doc = Document {
        routing_spec: Some(object.data.get("spec").cloned().unwrap_or(serde_json::Value::Null)),
        ..crate::convert::header(kind.kind(), &api_version, &object.metadata)
    };
    convert::object(doc)
}
