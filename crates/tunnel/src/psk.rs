//! The private network's pre-shared key (`psk_file`), checked once per connection.
//!
//! libp2p's pnet encrypts every byte with XSalsa20 underneath TLS or Noise: each byte was
//! encrypted twice, which halved bulk throughput. Here the key is proved once instead, inside
//! the secured channel, before the muxer: right after the TLS or Noise handshake each side
//! sends `HMAC-SHA256(key, domain ‖ role ‖ binding)` at once, then reads the other's and
//! compares it in constant time. A peer without the key completes no connection: the
//! connection fails before yamux, so it opens no stream and gets no proxied byte.
//!
//! - **Binding.** On TLS the binding is a 32-byte exporter of this session (RFC 8446 §7.5):
//!   a proof is worth nothing on another connection, so a man in the middle cannot relay one.
//!   On Noise (libp2p-noise does not expose its handshake hash) it is the two authenticated
//!   peer IDs, dialer first: only the two endpoints see the proof (it travels encrypted), and
//!   neither can use the other's (see the role).
//! - **Role.** The dialer's and the listener's proofs differ, so a proof cannot be reflected
//!   back to its sender.
//! - **Protocol names.** With a PSK the security upgrades are offered under their own names
//!   ([`TLS_PROTOCOL`], [`NOISE_PROTOCOL`]): a node without a PSK (or an agent still on pnet)
//!   and a node with one fail in multistream-select, before any handshake.

use std::fmt;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;
use ring::hmac;

#[cfg(test)]
mod tests;

/// TLS 1.3 followed by the PSK proof (instead of `/tls/1.0.0` when a PSK is configured).
pub(crate) const TLS_PROTOCOL: &str = "/edgemesh/tls-psk/1.0.0";
/// Noise followed by the PSK proof (instead of `/noise`).
pub(crate) const NOISE_PROTOCOL: &str = "/edgemesh/noise-psk/1.0.0";
/// The TLS exporter label the binding is derived with.
pub(crate) const EXPORTER_LABEL: &[u8] = b"EXPORTER-edgemesh-psk-v1";
/// Separates these proofs from any other use of the key.
const DOMAIN: &[u8] = b"edgemesh-psk-v1";
const PROOF_LEN: usize = 32;
const HEADER: &str = "/key/swarm/psk/1.0.0/";

/// A private network's key (the 32 bytes of a go-libp2p `swarm.key`); never printed.
#[derive(Clone)]
pub(crate) struct Psk(hmac::Key);

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(..)")
    }
}

/// Which end of the connection sends a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Dialer,
    Listener,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"dialer",
            Role::Listener => b"listener",
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Listener,
            Role::Listener => Role::Dialer,
        }
    }
}

/// What a proof is bound to: the connection it is sent on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Binding<'a> {
    /// The TLS session's exporter ([`EXPORTER_LABEL`], no context).
    Tls(&'a [u8; 32]),
    /// The Noise handshake's authenticated peers.
    Noise { dialer: &'a PeerId, listener: &'a PeerId },
}

/// The peer's proof does not match: it does not hold this network's key.
#[derive(Debug, thiserror::Error)]
#[error("the peer does not have this network's PSK (its proof of the key does not match)")]
pub(crate) struct Refused;

/// Why the proof exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProofError {
    #[error("{0}")]
    Refused(#[from] Refused),
    #[error("PSK proof exchange failed (the peer closed the connection, or it holds another key): {0}")]
    Io(#[from] std::io::Error),
}

impl Psk {
    pub(crate) fn new(key: [u8; 32]) -> Psk {
        Psk(hmac::Key::new(hmac::HMAC_SHA256, &key))
    }

    /// Parses a go-libp2p `swarm.key`: `/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits, one
    /// per line.
    pub(crate) fn parse(text: &str) -> Result<Psk, String> {
        let mut lines = text.trim_start().lines().map(str::trim_end);
        match (lines.next(), lines.next(), lines.next()) {
            (Some(HEADER), Some("/base16/"), Some(hex)) => {
                let hex = hex.as_bytes();
                if hex.len() != 2 * PROOF_LEN {
                    return Err(format!("the key has {} hex digits, expected 64", hex.len()));
                }
                let mut key = [0u8; 32];
                for (byte, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
                    let digits = std::str::from_utf8(pair).ok();
                    *byte = digits
                        .and_then(|d| u8::from_str_radix(d, 16).ok())
                        .ok_or_else(|| format!("{:?} is not a hex byte", String::from_utf8_lossy(pair)))?;
                }
                Ok(Psk::new(key))
            }
            (Some(HEADER), Some(encoding), _) => Err(format!("encoding {encoding:?} is not supported (only /base16/)")),
            (Some(HEADER), ..) => Err("the encoding and key lines are missing".into()),
            _ => Err(format!("the first line is not {HEADER:?}")),
        }
    }

    fn message(role: Role, binding: Binding<'_>) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(DOMAIN);
        m.push(0);
        m.extend_from_slice(role.label());
        m.push(0);
        match binding {
            Binding::Tls(exporter) => {
                m.extend_from_slice(b"tls\0");
                m.extend_from_slice(exporter);
            }
            Binding::Noise { dialer, listener } => {
                m.extend_from_slice(b"noise\0");
                for peer in [dialer, listener] {
                    let bytes = peer.to_bytes();
                    // Peer IDs are multihashes of at most 64 bytes: the length fits a byte.
                    m.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                    m.extend_from_slice(&bytes);
                }
            }
        }
        m
    }

    /// The proof `role` sends on the connection `binding` names.
    pub(crate) fn proof(&self, role: Role, binding: Binding<'_>) -> [u8; PROOF_LEN] {
        let tag = hmac::sign(&self.0, &Psk::message(role, binding));
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks the other side's proof in constant time.
    pub(crate) fn verify(&self, theirs: Role, binding: Binding<'_>, proof: &[u8]) -> Result<(), Refused> {
        hmac::verify(&self.0, &Psk::message(theirs, binding), proof).map_err(|_| Refused)
    }

    /// Sends our proof and checks the peer's, on a freshly secured connection. Both sides write
    /// first, so neither waits for the other before sending.
    pub(crate) async fn exchange<S>(&self, io: &mut S, ours: Role, binding: Binding<'_>) -> Result<(), ProofError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        io.write_all(&self.proof(ours, binding)).await?;
        io.flush().await?;
        let mut theirs = [0u8; PROOF_LEN];
        io.read_exact(&mut theirs).await?;
        Ok(self.verify(ours.other(), binding, &theirs)?)
    }
}

/// Whether `error` (a connection error as the swarm reports it) is a failed PSK proof.
pub(crate) fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    causes(error).any(|e| e.is::<Refused>())
}

/// `error` and its causes. The transport's layers chain their causes with `source`, except
/// `io::Error`, which hides its inner error there (it is reached with `get_ref`).
pub(crate) fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => e.source(),
    })
}
