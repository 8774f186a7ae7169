//! libp2p's TLS 1.3 handshake (`/tls/1.0.0`) with our choice of cipher and crypto provider.
//!
//! libp2p-tls fixes its rustls configuration: the aws-lc provider and ChaCha20-Poly1305 as
//! the first choice, which costs the tunnel most of its CPU (ChaCha20-Poly1305 seals and opens
//! at about a third of AES-GCM's speed on CPUs with AES instructions, see `benches/cipher.rs`).
//! Here the wire format is the same (the certificate and its libp2p extension come from
//! `libp2p::tls::certificate`, so stock libp2p-tls peers interoperate) but the provider is ring
//! (as for kube) and AES-GCM comes first when the CPU has AES instructions. The server picks
//! the cipher by its own order, so a stock client that prefers ChaCha20 still gets AES-GCM.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use futures::{AsyncRead, AsyncWrite, FutureExt, future::BoxFuture};
use futures_rustls::TlsStream;
use libp2p::{
    PeerId,
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    identity::Keypair,
    tls::certificate,
};
use rustls::{
    CommonState, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ClientHello, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

/// The libp2p TLS protocol name negotiated by multistream-select.
pub(crate) const PROTOCOL: &str = "/tls/1.0.0";
/// ALPN value required by the libp2p TLS specification.
const ALPN: &[u8] = b"libp2p";

/// Why a TLS upgrade failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("the peer's certificate carries no valid libp2p identity: {0}")]
    Certificate(#[from] certificate::ParseError),
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("cannot export keying material from the TLS session: {0}")]
    Exporter(rustls::Error),
}

/// The TLS security upgrade (one certificate for this identity, reused for every connection).
#[derive(Clone)]
pub(crate) struct Config {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Config {
    pub(crate) fn new(key: &Keypair) -> Result<Config, String> {
        let (cert, private_key) = certificate::generate(key).map_err(|e| format!("certificate: {e}"))?;
        let provider = Arc::new(provider());
        let verifier = Arc::new(PeerCertVerifier);
        let versions = &[&rustls::version::TLS13];
        // The libp2p extension is critical, which webpki's checks in `with_single_cert` refuse:
        // hand rustls the certified key directly.
        let signer = ring::sign::any_ecdsa_type(&private_key).map_err(|e| format!("certificate key: {e}"))?;
        let ours = Arc::new(OurCert(Arc::new(CertifiedKey::new(vec![cert], signer))));
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(ours.clone());
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.ignore_client_order = true;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(ours);
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Config { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// This node's certificate, presented as server and as client.
#[derive(Debug)]
struct OurCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OurCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for OurCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// ring's TLS 1.3 suites, AES-128-GCM first when the CPU has AES instructions (TLS 1.3's mandatory
/// suite, 10 rounds to AES-256's 14: see `benches/cipher.rs`; AES-256-GCM is still offered),
/// ChaCha20-Poly1305 first otherwise (much faster than AES in software, e.g. on a Raspberry Pi).
fn provider() -> CryptoProvider {
    let mut p = ring::default_provider();
    // Stable sorts: the other suites keep ring's order.
    p.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    if !aes_in_hardware() {
        p.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    }
    p
}

pub(crate) fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[allow(unreachable_code)]
    false
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, TlsError>>;

    fn upgrade_inbound(self, socket: C, _: &'static str) -> Self::Future {
        async move {
            let stream =
                futures_rustls::TlsAcceptor::from(self.server).accept(socket).await.map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, TlsError>>;

    fn upgrade_outbound(self, socket: C, _: &'static str) -> Self::Future {
        async move {
            // The specification forbids SNI: an IP address as the name sends none.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1)?;
            // The swarm compares this with the peer ID it dialed and drops the connection on a
            // mismatch (as with Noise).
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// 32 bytes of keying material exported from this session under `label` (RFC 8446 §7.5): the
/// same on both ends of this connection, and on no other connection.
pub(crate) fn exporter<C>(stream: &TlsStream<C>, label: &[u8]) -> Result<[u8; 32], TlsError> {
    let out = [0u8; 32];
    match stream {
        TlsStream::Client(s) => s.get_ref().1.export_keying_material(out, label, None),
        TlsStream::Server(s) => s.get_ref().1.export_keying_material(out, label, None),
    }
    .map_err(TlsError::Exporter)
}

/// The peer ID in the certificate the handshake already verified.
fn peer_of(state: &CommonState) -> Result<PeerId, TlsError> {
    match state.peer_certificates() {
        Some([cert]) => Ok(certificate::parse(cert)?.peer_id()),
        _ => Err(TlsError::NoCertificate),
    }
}

/// Accepts exactly one self-signed certificate whose libp2p extension is signed by the peer's
/// identity key, and checks the handshake signature against the certificate's key. There is no
/// certificate authority: the identity is the peer ID, which the swarm (dialer) and the hello
/// (both sides) check.
#[derive(Debug)]
struct PeerCertVerifier;

fn verify_chain(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General("libp2p TLS takes exactly one certificate".into()));
    }
    certificate::parse(end_entity).map_err(|e| rustls::Error::General(format!("libp2p certificate: {e}")))?;
    Ok(())
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    certificate::parse(cert)
        .map_err(|e| rustls::Error::General(format!("libp2p certificate: {e}")))?
        .verify_signature(dss.scheme, message, dss.signature())
        .map_err(|e| rustls::Error::General(format!("handshake signature: {e}")))?;
    Ok(HandshakeSignatureValid::assertion())
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("libp2p TLS is TLS 1.3 only".into()))
}

/// The certificate key types libp2p peers use (P-256 in practice).
const SCHEMES: [SignatureScheme; 3] =
    [SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ECDSA_NISTP384_SHA384, SignatureScheme::ED25519];

impl ServerCertVerifier for PeerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for PeerCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}
