//! The routing objects a source delivered (whole, as JSON:
//! [`RoutingObject`]) read into this crate's schema, EdgeMesh's Istio
//! objects translated, ready for [`crate::compile`].
//!
//! An object whose JSON does not fit the schema (a port that is a string,
//! a list where a mapping belongs) is left out and reported with serde's
//! reason; every other object still compiles.

use edgemesh_core::{RoutingKind, RoutingObject};
use serde::de::DeserializeOwned;

use crate::compile::ObjectRef;
use crate::compile::Objects;
use crate::istio::{self, IstioGateway, VirtualService};
use crate::schema::{Gateway, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute, TlsRoute};

/// The objects, by kind, ready to compile, and what could not be read.
#[derive(Debug, Default)]
pub struct GatewayInputs {
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub tls_routes: Vec<TlsRoute>,
    pub tcp_routes: Vec<TcpRoute>,
    pub grants: Vec<ReferenceGrant>,
    /// Objects left out: which, and why.
    pub unreadable: Vec<(ObjectRef, String)>,
    /// What EdgeMesh's objects use that is not translated
    /// ([`istio::Translation::refused`]).
    pub refused: Vec<String>,
    /// Where translated routes behave unlike Istio's ([`istio::Translation::notes`]).
    pub notes: Vec<String>,
}

/// Reads `objects` (any order); `cluster_domain` names FQDN destination
/// hosts of VirtualServices.
pub fn read<'a>(objects: impl IntoIterator<Item = &'a RoutingObject>, cluster_domain: &str) -> GatewayInputs {
    let mut inputs = GatewayInputs::default();
    let (mut istio_gateways, mut virtual_services) = (Vec::new(), Vec::new());
    for object in objects {
        match object.kind {
            RoutingKind::Gateway => parse_into(object, &mut inputs.gateways, &mut inputs.unreadable),
            RoutingKind::HttpRoute => parse_into(object, &mut inputs.http_routes, &mut inputs.unreadable),
            RoutingKind::ReferenceGrant => parse_into(object, &mut inputs.grants, &mut inputs.unreadable),
            RoutingKind::IstioGateway => {
                parse_into::<IstioGateway>(object, &mut istio_gateways, &mut inputs.unreadable)
            }
            RoutingKind::VirtualService => {
                parse_into::<VirtualService>(object, &mut virtual_services, &mut inputs.unreadable)
            }
            RoutingKind::GrpcRoute => parse_into(object, &mut inputs.grpc_routes, &mut inputs.unreadable),
            RoutingKind::TlsRoute => parse_into(object, &mut inputs.tls_routes, &mut inputs.unreadable),
            RoutingKind::TcpRoute => parse_into(object, &mut inputs.tcp_routes, &mut inputs.unreadable),
        }
    }
    if !istio_gateways.is_empty() || !virtual_services.is_empty() {
        let translated = istio::translate(&istio_gateways, &virtual_services, cluster_domain);
        inputs.gateways.extend(translated.gateways);
        inputs.http_routes.extend(translated.routes);
        inputs.grants.extend(translated.grants);
        inputs.refused = translated.refused;
        inputs.notes = translated.notes;
    }
    inputs
}

impl GatewayInputs {
    /// The objects, as [`crate::compile_objects`] takes them.
    pub fn objects(&self) -> Objects<'_> {
        Objects {
            gateways: &self.gateways,
            http_routes: &self.http_routes,
            grpc_routes: &self.grpc_routes,
            tls_routes: &self.tls_routes,
            tcp_routes: &self.tcp_routes,
            grants: &self.grants,
        }
    }
}

fn parse_into<T: DeserializeOwned>(
    object: &RoutingObject,
    out: &mut Vec<T>,
    unreadable: &mut Vec<(ObjectRef, String)>,
) {
    let mut document = serde_json::Deserializer::from_str(&object.document);
    match serde_path_to_error::deserialize(&mut document) {
        Ok(parsed) => out.push(parsed),
        Err(e) => {
            tracing::warn!(object = %object_ref(object), error = %e, "gateway object does not fit its schema; left out");
            unreadable.push((object_ref(object), format!("does not fit the {} schema: {e}", object.kind)));
        }
    }
}

/// How the status names `object`.
pub fn object_ref(object: &RoutingObject) -> ObjectRef {
    ObjectRef { kind: object.kind.label(), namespace: object.meta.namespace.clone(), name: object.meta.name.clone() }
}

#[cfg(test)]
mod tests {
    use edgemesh_core::object::ObjectMeta;

    use super::*;

    fn object(kind: RoutingKind, name: &str, document: &str) -> RoutingObject {
        let meta = ObjectMeta { namespace: "edge".into(), name: name.into(), ..ObjectMeta::default() };
        RoutingObject { kind, meta, document: document.into() }
    }

    #[test]
    fn an_object_that_does_not_fit_is_reported_and_the_rest_is_read() {
        let good = object(
            RoutingKind::Gateway,
            "site",
            r#"{"metadata":{"name":"site","namespace":"edge"},"spec":{"gatewayClassName":"edgemesh","listeners":[{"name":"web","port":8080,"protocol":"HTTP"}]}}"#,
        );
        let bad = object(
            RoutingKind::HttpRoute,
            "broken",
            r#"{"metadata":{"name":"broken","namespace":"edge"},"spec":{"rules":"not a list"}}"#,
        );
        let inputs = read([&good, &bad], "cluster.local");
        assert_eq!(inputs.gateways.len(), 1);
        assert_eq!(inputs.gateways[0].spec.listeners[0].port, 8080);
        assert!(inputs.http_routes.is_empty());
        assert_eq!(inputs.unreadable.len(), 1);
        assert_eq!(inputs.unreadable[0].0.to_string(), "HTTPRoute edge/broken");
        assert!(inputs.unreadable[0].1.contains("spec.rules: invalid type"), "{:?}", inputs.unreadable);
    }

    #[test]
    fn istio_objects_become_gateway_api_objects() {
        let gateway = object(
            RoutingKind::IstioGateway,
            "edge-gw",
            r#"{"metadata":{"name":"edge-gw","namespace":"edge"},"spec":{"servers":[{"port":{"number":23333,"name":"http","protocol":"HTTP"},"hosts":["*"]}]}}"#,
        );
        let vs = object(
            RoutingKind::VirtualService,
            "edge-vs",
            r#"{"metadata":{"name":"edge-vs","namespace":"edge"},"spec":{"hosts":["*"],"gateways":["edge-gw"],"http":[{"match":[{"uri":{"prefix":"/"}}],"route":[{"destination":{"host":"hostname-svc","port":{"number":12345}}}]}]}}"#,
        );
        let inputs = read([&gateway, &vs], "cluster.local");
        assert_eq!(inputs.gateways.len(), 1);
        assert_eq!(inputs.gateways[0].spec.gateway_class_name, istio::ISTIO_CLASS);
        assert_eq!(inputs.http_routes.len(), 1);
        assert!(inputs.refused.is_empty(), "{:?}", inputs.refused);
    }
}
