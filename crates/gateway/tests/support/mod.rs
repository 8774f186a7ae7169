//! Gateway API objects from a multi-document YAML file, compiled.
#![allow(dead_code)]

use std::collections::BTreeMap;

use edgemesh_gateway::schema::{Gateway, HttpRoute, ReferenceGrant};
use edgemesh_gateway::{Compiled, ServiceLookup, compile};
use serde::Deserialize;

pub mod net;

/// Services that exist: `namespace/name` and their ports.
pub struct Services(pub BTreeMap<String, Vec<u16>>);

impl ServiceLookup for Services {
    fn check(&self, namespace: &str, name: &str, port: u16) -> Result<(), String> {
        match self.0.get(&format!("{namespace}/{name}")) {
            None => Err("no such Service".to_owned()),
            Some(ports) if !ports.contains(&port) => Err(format!("has no port {port}")),
            Some(_) => Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct Kind {
    kind: String,
}

/// Compiles every object of `yaml` (a multi-document file, as
/// `kubectl apply -f` takes it), for GatewayClass `edgemesh`.
pub fn load(yaml: &str, services: &[(&str, u16)]) -> Compiled {
    // Every document as every kind (fields are optional, unknown ones
    // ignored); `kind` says which reading is the document.
    let kinds: Vec<Kind> = serde_saphyr::from_multiple(yaml).unwrap();
    let gateways: Vec<Gateway> = serde_saphyr::from_multiple(yaml).unwrap();
    let routes: Vec<HttpRoute> = serde_saphyr::from_multiple(yaml).unwrap();
    let grants: Vec<ReferenceGrant> = serde_saphyr::from_multiple(yaml).unwrap();
    let of = |want: &'static str| kinds.iter().enumerate().filter(move |(_, k)| k.kind == want).map(|(i, _)| i);
    let gateways: Vec<Gateway> = of("Gateway").map(|i| gateways[i].clone()).collect();
    let routes: Vec<HttpRoute> = of("HTTPRoute").map(|i| routes[i].clone()).collect();
    let grants: Vec<ReferenceGrant> = of("ReferenceGrant").map(|i| grants[i].clone()).collect();
    let mut known: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (service, port) in services {
        known.entry((*service).to_owned()).or_default().push(*port);
    }
    compile("edgemesh", &gateways, &routes, &grants, &Services(known))
}
