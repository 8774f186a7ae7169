//! TLS termination on `HTTPS` listeners: where certificates come from, how
//! one is chosen per handshake, and the server settings.
//!
//! - [`CertificateStore`]: `(namespace, name)` of a Secret to its PEM
//!   certificate chain and key. The agent implements it over its
//!   `kubernetes.io/tls` Secrets; [`FileCertificates`] reads PEM files
//!   named in the config (standalone mode).
//! - [`parse`]: PEM to a rustls `CertifiedKey`, checking that the key is
//!   the certificate's; done at compile time, so a bad certificate is a
//!   listener condition, never a failed handshake.
//! - [`SniCertificates`]: a port's certificates by listener hostname; the
//!   most specific hostname that covers the client's SNI wins, and a
//!   listener without hostname is the default (no SNI, or no other match).
//! - [`client_verifier`]: a listener's `frontendValidation` CAs (a Secret's
//!   `ca.crt`) as the check of client certificates, which the port's
//!   `ServerConfig` reads from the current compile at each handshake.
//! - [`server_config`]: one rustls `ServerConfig` per bound port (TLS 1.2
//!   and 1.3, ring), whose resolver reads the port's certificates from the
//!   current [`Compiled`] at each handshake. A compile that rotates a
//!   certificate applies to the next handshake; sessions already open keep
//!   theirs; the listener is never rebound. (A client resuming a session
//!   from before a rotation, by ticket or session ID, continues with the
//!   certificate of that session, as with any TLS server; its next full
//!   handshake gets the new one.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;

use crate::Compiled;
use crate::hostname::{Hostname, request_host};

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A Secret's certificate chain and private key, PEM-encoded (the
/// `tls.crt` and `tls.key` of a `kubernetes.io/tls` Secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificatePem {
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
    /// The Secret's `ca.crt`, when it has one: the CAs client
    /// certificates must chain to on a listener that validates them.
    pub ca: Option<Vec<u8>>,
}

/// Where listeners' `certificateRefs` are looked up.
pub trait CertificateStore: Send + Sync {
    /// The certificate of Secret `namespace/name`, or why there is none
    /// (the listener's `InvalidCertificateRef` message).
    fn certificate(&self, namespace: &str, name: &str) -> Result<CertificatePem, String>;
}

/// No certificates at all (the HTTP-only [`crate::compile()`]).
pub struct NoCertificates;

impl CertificateStore for NoCertificates {
    fn certificate(&self, namespace: &str, name: &str) -> Result<CertificatePem, String> {
        Err(format!("Secret {namespace}/{name}: this gateway has no certificate source configured"))
    }
}

/// One Secret served from files (standalone mode), as the config names it:
/// `{namespace: shop, name: shop-tls, certFile: /etc/edgemesh/tls/shop.crt, keyFile: /etc/edgemesh/tls/shop.key}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateFile {
    /// Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    /// PEM: the certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the Secret's `ca.crt` (client certificates' CAs), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// Secrets as PEM files, read at each compile (so a file rewritten in
/// place is picked up by the next compile; [`FileCertificates::stamp`]
/// tells the caller when to compile again).
#[derive(Clone, Debug, Default)]
pub struct FileCertificates {
    files: BTreeMap<(String, String), CertificateFile>,
}

impl FileCertificates {
    pub fn new(files: impl IntoIterator<Item = CertificateFile>) -> Self {
        Self { files: files.into_iter().map(|f| ((f.namespace.clone(), f.name.clone()), f)).collect() }
    }

    /// A value that changes when any named file changes (modification
    /// time, length, or existence): poll it and compile again when it does.
    pub fn stamp(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for file in self.files.values() {
            for path in [&file.cert_file, &file.key_file].into_iter().chain(&file.ca_file) {
                match std::fs::metadata(path) {
                    Ok(m) => (m.modified().ok(), m.len()).hash(&mut hasher),
                    Err(e) => e.kind().hash(&mut hasher),
                }
            }
        }
        hasher.finish()
    }
}

impl CertificateStore for FileCertificates {
    fn certificate(&self, namespace: &str, name: &str) -> Result<CertificatePem, String> {
        let file = self.files.get(&(namespace.to_owned(), name.to_owned())).ok_or_else(|| {
            format!("Secret {namespace}/{name}: no such certificate in the config (gateway.certificates)")
        })?;
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("Secret {namespace}/{name}: {}: {e}", path.display()))
        };
        let ca = file.ca_file.as_ref().map(read).transpose()?;
        Ok(CertificatePem { chain: read(&file.cert_file)?, key: read(&file.key_file)?, ca })
    }
}

/// The ring provider with the gateway's protocol versions.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM chain and key as a rustls key, or why they cannot be served.
pub fn parse(pem: &CertificatePem, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate PEM holds no CERTIFICATE block".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| format!("the private key is not PEM: {e}"))?;
    // Also parses the leaf certificate and compares its public key with
    // the private key's: a mismatch or an unreadable certificate would
    // fail every handshake.
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the key cannot be used with the certificate: {e}"))?;
    Ok(Arc::new(key))
}

/// One port's certificates, by listener hostname.
#[derive(Clone, Debug, Default)]
pub struct SniCertificates {
    /// Most specific hostname first.
    entries: Vec<SniEntry>,
}

#[derive(Clone, Debug)]
struct SniEntry {
    host: Hostname,
    /// The TLS context a session chosen by `host` was made for: the
    /// listener (`namespace/gateway/listener`), or the Istio server its
    /// listeners were translated from.
    listener: Arc<str>,
    key: Arc<CertifiedKey>,
}

impl SniCertificates {
    /// Adds listener `listener`'s certificate for `host`.
    pub fn push(&mut self, host: Hostname, listener: Arc<str>, key: Arc<CertifiedKey>) {
        self.entries.push(SniEntry { host, listener, key });
        self.entries.sort_by(|a, b| b.host.specificity(&a.host));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most specific entry covering `name` (`None`: no SNI), else the
    /// listener without hostname.
    fn entry(&self, name: Option<&str>) -> Option<&SniEntry> {
        let host = name.map(request_host);
        let covers = |h: &Hostname| match (&host, h) {
            (_, Hostname::Any) => true,
            (Some(name), h) => h.matches(name),
            (None, _) => false,
        };
        self.entries.iter().find(|e| covers(&e.host))
    }

    /// The certificate for a ClientHello naming `sni` (or none): the most
    /// specific listener hostname covering it, else the listener without
    /// hostname.
    pub fn choose(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        self.entry(sni).map(|e| &e.key)
    }

    /// The listener that serves `name` on this port, chosen as a
    /// certificate is (`namespace/gateway/listener`, or the Istio server).
    pub fn listener(&self, name: &str) -> Option<&str> {
        self.entry(Some(name)).map(|e| &*e.listener)
    }

    /// Whether a request for `host`, over a TLS session whose ClientHello
    /// named `sni`, is misdirected (answered 421, RFC 9110 section
    /// 15.5.20): the listener the SNI chose is not the one `host` belongs
    /// to, or either has none here (a listener removed since the
    /// handshake). A client that reuses a session for another name
    /// (HTTP/2 connection coalescing under a certificate with several or
    /// wildcard names, or a Host header that differs from the SNI) must
    /// open a new connection for it, so that it is routed, and its client
    /// certificate checked, by the listener the name belongs to.
    pub fn misdirected(&self, sni: &str, host: &str) -> bool {
        // (The common case, a request for the session's own name: one lookup.)
        if sni == host {
            return self.listener(host).is_none();
        }
        match (self.listener(sni), self.listener(host)) {
            (Some(session), Some(request)) => session != request,
            _ => true,
        }
    }
}

/// Chooses a certificate per handshake from the current compile.
struct Resolver {
    routes: Arc<ArcSwap<Compiled>>,
    port: u16,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gateway certificates of port {}", self.port)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let compiled = self.routes.load();
        let chosen = compiled.tls.get(&self.port).and_then(|c| c.choose(hello.server_name())).cloned();
        if chosen.is_none() {
            tracing::debug!(port = self.port, sni = ?hello.server_name(), "no certificate for the client's name");
        }
        chosen
    }
}

/// The TLS settings of listener port `port` (its configured port, the
/// key of [`Compiled::tls`]): TLS 1.3 and 1.2, ring, ALPN `h2` and
/// `http/1.1`, certificates from `routes` at each handshake.
pub fn server_config(routes: Arc<ArcSwap<Compiled>>, port: u16) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_client_cert_verifier(Arc::new(ClientValidation { routes: routes.clone(), port }))
        .with_cert_resolver(Arc::new(Resolver { routes, port }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CAs of a listener's `frontendValidation` (PEM `ca.crt`s) as a
/// client certificate verifier, or why they cannot be used.
pub fn client_verifier(cas: &[Vec<u8>], provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for pem in cas {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("ca.crt is not PEM: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca.crt holds a certificate that cannot be a trust anchor: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err("ca.crt holds no CERTIFICATE block".to_owned());
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("the CAs cannot check client certificates: {e}"))
}

/// Client certificates of a port, as the current compile says: asked for
/// and required when the port's listeners validate them
/// ([`Compiled::client_auth`]), not asked for otherwise. Read at each
/// handshake, like the certificates, so a compile changes it without a
/// rebind. (The hint list of acceptable CAs is left empty: clients then
/// offer the certificate they have.)
struct ClientValidation {
    routes: Arc<ArcSwap<Compiled>>,
    port: u16,
}

impl std::fmt::Debug for ClientValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gateway client certificate validation of port {}", self.port)
    }
}

impl ClientValidation {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.routes
            .load()
            .client_auth
            .get(&self.port)
            .cloned()
            .ok_or_else(|| rustls::Error::General("this listener no longer validates client certificates".to_owned()))
    }
}

impl ClientCertVerifier for ClientValidation {
    fn offer_client_auth(&self) -> bool {
        self.routes.load().client_auth.contains_key(&self.port)
    }

    fn client_auth_mandatory(&self) -> bool {
        self.offer_client_auth()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
