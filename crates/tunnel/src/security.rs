//! The security upgrades offered on TCP and relayed connections: TLS 1.3 first (AES-GCM, a
//! third of Noise's ChaCha20-Poly1305 cost), Noise as the fallback that agents before TLS
//! speak. multistream-select picks the first one both sides support, so old and new agents
//! keep connecting.

use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt, future::BoxFuture};
use libp2p::{
    PeerId,
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    noise,
};

use crate::{coalesce::Coalesce, tls};

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
}

/// The upgrades offered, in order of preference.
#[derive(Clone)]
pub(crate) struct Security {
    /// None: Noise only (as agents before TLS).
    tls: Option<tls::Config>,
    noise: noise::Config,
}

impl Security {
    pub(crate) fn new(tls: Option<tls::Config>, noise: noise::Config) -> Security {
        Security { tls, noise }
    }
}

const NOISE: &str = "/noise";

impl UpgradeInfo for Security {
    type Info = &'static str;
    type InfoIter = std::iter::Chain<std::option::IntoIter<&'static str>, std::iter::Once<&'static str>>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.tls.as_ref().map(|_| tls::PROTOCOL).into_iter().chain(std::iter::once(NOISE))
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
        match self.tls {
            Some(tls) if info == tls::PROTOCOL => tls
                .upgrade_inbound(socket, info)
                .map_ok(|(peer, s)| (peer, Secured::Left(Coalesce::new(s))))
                .err_into()
                .boxed(),
            _ => self
                .noise
                .upgrade_inbound(socket, NOISE)
                .map_ok(|(peer, s)| (peer, Secured::Right(s)))
                .err_into()
                .boxed(),
        }
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
        match self.tls {
            Some(tls) if info == tls::PROTOCOL => tls
                .upgrade_outbound(socket, info)
                .map_ok(|(peer, s)| (peer, Secured::Left(Coalesce::new(s))))
                .err_into()
                .boxed(),
            _ => self
                .noise
                .upgrade_outbound(socket, NOISE)
                .map_ok(|(peer, s)| (peer, Secured::Right(s)))
                .err_into()
                .boxed(),
        }
    }
}
