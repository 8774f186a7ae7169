//! `kubernetes.io/tls` Secrets, for the edge gateway's HTTPS listeners
//! (their `certificateRefs`): listed and watched (field selector
//! `type=kubernetes.io/tls`) only when the gateway runs, and kept in
//! memory only: private keys never go to the persistent cache, so a
//! gateway restarted while the API is unreachable serves its HTTP routes
//! from the cache and its HTTPS listeners once the API answers again (or
//! from `gateway.certificates` files, which work offline).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::JitteredBackoff;

/// The Secret type TLS certificates come in.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// A Secret's `tls.crt` and `tls.key` (PEM), and its `ca.crt` when it
/// has one (the CAs of client certificates, for listeners that check them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPair {
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Option<Vec<u8>>,
}

/// Each Secret by namespace and name: its pair, or what is wrong with it.
type SecretMap = HashMap<(String, String), Result<TlsPair, String>>;

/// The TLS Secrets seen so far, by namespace and name; clones share them.
#[derive(Clone)]
pub struct TlsSecrets {
    map: Arc<RwLock<SecretMap>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for TlsSecrets {
    fn default() -> Self {
        Self { map: Arc::default(), changes: Arc::new(watch::Sender::new(0)) }
    }
}

impl TlsSecrets {
    /// Secret `namespace/name`'s certificate and key, or why there is none.
    pub fn get(&self, namespace: &str, name: &str) -> Result<TlsPair, String> {
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(&(namespace.to_owned(), name.to_owned())) {
            Some(Ok(pair)) => Ok(pair.clone()),
            Some(Err(why)) => Err(format!("Secret {namespace}/{name}: {why}")),
            None => Err(format!("Secret {namespace}/{name}: no such {TLS_SECRET_TYPE} Secret")),
        }
    }

    /// Moves on whenever a Secret is added, changed or removed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn set(&self, secret: &Secret) {
        let (key, value) = (key_of(secret), pair_of(secret));
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(&key) != Some(&value) {
            map.insert(key, value);
            drop(map);
            self.changed();
        }
    }

    fn remove(&self, secret: &Secret) {
        let removed =
            self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key_of(secret)).is_some();
        if removed {
            self.changed();
        }
    }

    /// A full listing: what it does not name is gone.
    fn replace(&self, listed: SecretMap) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *map != listed {
            *map = listed;
            drop(map);
            self.changed();
        }
    }

    /// Lists and watches the TLS Secrets through `client` until `shutdown`.
    pub async fn run(self, client: Client, shutdown: CancellationToken) {
        let api: Api<Secret> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("type={TLS_SECRET_TYPE}"));
        let mut stream = watch_stream(api, config)
            .backoff(JitteredBackoff::new(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60)))
            .boxed();
        let mut listing: Option<SecretMap> = None;
        let mut failing = false;
        loop {
            let event = tokio::select! {
                event = stream.next() => match event { Some(e) => e, None => return },
                () = shutdown.cancelled() => return,
            };
            match event {
                Ok(Event::Init) => listing = Some(HashMap::new()),
                Ok(Event::InitApply(secret)) => {
                    if let Some(listing) = listing.as_mut() {
                        listing.insert(key_of(&secret), pair_of(&secret));
                    }
                }
                Ok(Event::InitDone) => {
                    failing = false;
                    self.replace(listing.take().unwrap_or_default());
                }
                Ok(Event::Apply(secret)) => self.set(&secret),
                Ok(Event::Delete(secret)) => self.remove(&secret),
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "cannot watch kubernetes.io/tls Secrets (the gateway's ClusterRole needs list/watch on secrets); HTTPS listeners keep the certificates they have");
                    }
                }
            }
        }
    }
}

/// A Secret's namespace and name.
fn key_of(secret: &Secret) -> (String, String) {
    (secret.namespace().unwrap_or_else(|| "default".into()), secret.name_any())
}

/// The Secret's `tls.crt` and `tls.key`, or what is wrong with it.
fn pair_of(secret: &Secret) -> Result<TlsPair, String> {
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return Err(format!("type {:?} is not {TLS_SECRET_TYPE}", secret.type_.as_deref().unwrap_or("")));
    }
    let data = secret.data.as_ref();
    let field = |name: &str| {
        data.and_then(|d| d.get(name))
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("has no {name}"))
    };
    Ok(TlsPair { chain: field("tls.crt")?, key: field("tls.key")?, ca: field("ca.crt").ok() })
}
