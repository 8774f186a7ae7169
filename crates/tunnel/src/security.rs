//! The security upgrades offered on TCP and relayed connections: TLS 1.3 first (AES-GCM, a
//! third of Noise's ChaCha20-Poly1305 cost), Noise as the fallback that agents before TLS
//! speak. multistream-select picks the first one both sides support, so old and new agents
//! keep connecting.
//!
//! With a pre-shared key the same two are offered under their PSK names, and each is followed
//! by the PSK proof (`psk`) before the connection is handed to the muxer.

use futures::{AsyncRead, AsyncWrite, FutureExt, future::BoxFuture};
use libp2p::{
    PeerId,
    core::upgrade::{InboundConnectionUpgrade, NegotiationError, OutboundConnectionUpgrade, UpgradeInfo},
    noise,
};

use crate::{
    coalesce::Coalesce,
    psk::{self, Binding, ProofError, Psk, Role},
    tls,
};

#[cfg(test)]
mod tests;

/// The encrypted connection either upgrade produced.
pub(crate) type Secured<C> = futures::future::Either<Coalesce<futures_rustls::TlsStream<C>>, noise::Output<C>>;

/// Why the security upgrade failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecurityError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("Noise handshake failed: {0}")]
    Noise(#[from] noise::Error),
    #[error(transparent)]
    Psk(#[from] ProofError),
}

/// The upgrades offered, in order of preference.
#[derive(Clone)]
pub(crate) struct Security {
    /// None: Noise only (as agents before TLS).
    tls: Option<tls::Config>,
    noise: noise::Config,
    /// The private network's key, proved after either handshake, and our own peer ID (the
    /// Noise proofs name both peers).
    psk: Option<(Psk, PeerId)>,
}

impl Security {
    pub(crate) fn new(tls: Option<tls::Config>, noise: noise::Config) -> Security {
        Security { tls, noise, psk: None }
    }

    /// Offers the upgrades under their PSK names, each followed by the proof of `key`.
    pub(crate) fn with_psk(self, key: Psk, local: PeerId) -> Security {
        Security { psk: Some((key, local)), ..self }
    }

    /// The names TLS and Noise are offered under.
    fn names(&self) -> (&'static str, &'static str) {
        match self.psk {
            Some(_) => (psk::TLS_PROTOCOL, psk::NOISE_PROTOCOL),
            None => (tls::PROTOCOL, NOISE),
        }
    }

    /// Runs the upgrade `info` names (TLS if it is TLS's name, Noise otherwise), then the PSK
    /// proof if there is a key.
    async fn upgrade<C>(self, socket: C, info: &'static str, role: Role) -> Result<(PeerId, Secured<C>), SecurityError>
    where
        C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tls_name, _) = self.names();
        match self.tls {
            Some(tls) if info == tls_name => {
                let (peer, mut stream) = match role {
                    Role::Dialer => tls.upgrade_outbound(socket, tls::PROTOCOL).await?,
                    Role::Listener => tls.upgrade_inbound(socket, tls::PROTOCOL).await?,
                };
                if let Some((key, _)) = &self.psk {
                    let exporter = tls::exporter(&stream, psk::EXPORTER_LABEL)?;
                    key.exchange(&mut stream, role, Binding::Tls(&exporter)).await?;
                }
                Ok((peer, Secured::Left(Coalesce::new(stream))))
            }
            _ => {
                let (peer, mut stream) = match role {
                    Role::Dialer => self.noise.upgrade_outbound(socket, NOISE).await?,
                    Role::Listener => self.noise.upgrade_inbound(socket, NOISE).await?,
                };
                if let Some((key, local)) = &self.psk {
                    let (dialer, listener) = match role {
                        Role::Dialer => (local, &peer),
                        Role::Listener => (&peer, local),
                    };
                    key.exchange(&mut stream, role, Binding::Noise { dialer, listener }).await?;
                }
                Ok((peer, Secured::Right(stream)))
            }
        }
    }
}

const NOISE: &str = "/noise";

/// Whether `error` (a connection error as the swarm reports it) is a failed protocol
/// negotiation: no protocol in common, or bytes that are not multistream-select at all. Before
/// the muxer that is the security protocol's (libp2p-core does not export the type that would
/// tell it from the muxer's, and edgemesh agents always agree on yamux); between agents, one
/// with a PSK and one without, or an agent still on pnet.
pub(crate) fn is_negotiation_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    psk::causes(error).any(|e| e.is::<NegotiationError>())
}

impl UpgradeInfo for Security {
    type Info = &'static str;
    type InfoIter = std::iter::Chain<std::option::IntoIter<&'static str>, std::iter::Once<&'static str>>;

    fn protocol_info(&self) -> Self::InfoIter {
        let (tls_name, noise_name) = self.names();
        self.tls.as_ref().map(|_| tls_name).into_iter().chain(std::iter::once(noise_name))
    }
}

impl<C> InboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, SecurityError>>;

    fn upgrade_inbound(self, socket: C, info: &'static str) -> Self::Future {
        self.upgrade(socket, info, Role::Listener).boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, SecurityError>>;

    fn upgrade_outbound(self, socket: C, info: &'static str) -> Self::Future {
        self.upgrade(socket, info, Role::Dialer).boxed()
    }
}
