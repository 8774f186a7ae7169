//! A line of a Kubernetes watch (`{"type": ..., "object": ...}`, as the API
//! server or metaServer streams it), read as each resource the source
//! watches and converted as the source converts it: an error or an object,
//! and every object accepted survives the offline cache.
#![no_main]

use edgemesh_core::Object;
use edgemesh_fuzz::assert_cacheable;
use edgemesh_k8s::ConvertError;
use edgemesh_kube::fuzzing;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_core::WatchEvent;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fn watch<K: DeserializeOwned>(line: &[u8], convert: impl Fn(&K) -> Result<Option<Object>, ConvertError>) {
    let Ok(event) = serde_json::from_slice::<WatchEvent<K>>(line) else { return };
    let (WatchEvent::Added(object) | WatchEvent::Modified(object) | WatchEvent::Deleted(object)) = event else {
        return;
    };
    if let Ok(Some(converted)) = convert(&object) {
        assert_cacheable(&converted);
    }
}

fuzz_target!(|line: &[u8]| {
    watch::<Service>(line, |svc| if fuzzing::excluded(svc) { Ok(None) } else { fuzzing::service(svc) });
    watch::<EndpointSlice>(line, fuzzing::endpoint_slice);
    watch::<Endpoints>(line, fuzzing::endpoints);
    watch::<Node>(line, fuzzing::node);
});
