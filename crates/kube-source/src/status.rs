//! Writing the edge gateway's status back to its objects (Gateways and
//! routes): read the object's current `status`, merge this gateway's
//! part over it (`edgemesh_gateway::status::merge`: other controllers'
//! entries and unchanged conditions' times kept), and patch the `status`
//! subresource only when that changes it, naming the resourceVersion read,
//! so a concurrent writer's change is not overwritten (a conflict is
//! retried at the next write).

use edgemesh_core::RoutingKind;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use crate::routing::api_resource;

/// Writes status through the source's client (see [`crate::KubeSource::status_writer`]).
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
}

/// What one write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The object's status changed.
    Changed,
    /// It already said this: nothing was sent.
    Unchanged,
    /// No such object (deleted since, or not a Gateway API object).
    Gone,
}

impl StatusWriter {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// Merges `desired` (this gateway's status of the object) over the
    /// object's status with `merge(existing, desired, now)` (`now` in
    /// RFC 3339), and writes it if that differs.
    pub async fn write(
        &self,
        kind: RoutingKind,
        namespace: &str,
        name: &str,
        desired: &Value,
        merge: impl Fn(&Value, &Value, &str) -> Value,
    ) -> Result<Written, kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &api_resource(kind));
        let object = match api.get_status(name).await {
            Ok(object) => object,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Written::Gone),
            Err(e) => return Err(e),
        };
        let existing = object.data.get("status").cloned().unwrap_or_else(|| json!({}));
        let now = k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default();
        let merged = merge(&existing, desired, &now.to_string());
        if merged == existing {
            return Ok(Written::Unchanged);
        }
        let patch = json!({
            "metadata": {"resourceVersion": object.metadata.resource_version},
            "status": merged,
        });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(Written::Changed)
    }
}
