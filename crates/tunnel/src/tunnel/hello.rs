//! The hello exchange on every new connection: each side claims its node name, and the other
//! accepts the claim only if its [`Directory`](crate::Directory) binds that name to the
//! peer's ID; a peer claiming another node's name is cut off.

use std::{io, sync::Arc, time::Duration};

use libp2p::{PeerId, Stream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::timeout,
};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use super::context::Context;
use crate::{
    messages::{Command, Connected},
    metrics::Refusal,
    peer_table::Claim,
    streams::{HELLO, Inbound},
    wire::{self, HEADER_TIMEOUT, Hello, HelloStatus},
};

/// How long a hello naming an unknown node waits for the directory's first full view (less
/// than the peer's [`HEADER_TIMEOUT`] for our reply).
const DIRECTORY_WAIT: Duration = if cfg!(test) { Duration::from_secs(1) } else { Duration::from_secs(5) };

/// Sends our hello on a new connection and records the peer's verdict.
pub(super) fn spawn_hello(ctx: Arc<Context>, connected: Connected) {
    let Connected { peer, connection: conn } = connected;
    tokio::spawn(async move {
        let keep_open = ctx.peers.is_kept_open(peer);
        let result: io::Result<(HelloStatus, Compat<Stream>)> = async {
            let rx = ctx
                .control
                .open_on(conn, HELLO)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?;
            let stream = timeout(HEADER_TIMEOUT, rx)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "opening the hello stream timed out"))?
                .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))??;
            let mut s = stream.compat();
            let hello = Hello {
                node: ctx.settings.node_name.clone(),
                agent: format!("edgemesh/{}", env!("CARGO_PKG_VERSION")),
                keep_open,
            };
            let exchange = async {
                s.write_all(&wire::encode_hello(&hello)).await?;
                s.flush().await?;
                s.read_u8().await
            };
            let status = timeout(HEADER_TIMEOUT, exchange)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no hello reply"))??;
            let status = HelloStatus::from_u8(status)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown hello reply"))?;
            Ok((status, s))
        }
        .await;
        let mut stream = match result {
            Ok((HelloStatus::Accepted, s)) => {
                tracing::debug!(%peer, "the peer accepted our node name");
                ctx.peers.set_ours(peer, Claim::Accepted(String::new()), true);
                s
            }
            Ok((status, s)) => {
                // Our relays do not know our name, and say so: expected.
                if !ctx.settings.relay_peers.contains(&peer) && ctx.peers.should_warn(peer, "refused-us") {
                    tracing::warn!(%peer, node = %ctx.settings.node_name, reason = status.describe(), "the peer refuses this node's name claim");
                }
                ctx.peers.set_ours(peer, Claim::Refused(status.describe().into()), true);
                s
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "hello failed");
                let reason = if e.kind() == io::ErrorKind::Unsupported {
                    "the peer does not speak the edgemesh hello".to_owned()
                } else {
                    format!("hello failed: {e}")
                };
                if ctx.control.connections(&peer).iter().any(|(c, _)| *c == conn) {
                    ctx.peers.set_ours(peer, Claim::Refused(reason), false);
                }
                return;
            }
        };
        if keep_open {
            // Hold the stream (and so the connection) until the peer or the connection ends it.
            let mut one = [0u8; 1];
            tokio::select! {
                _ = stream.read(&mut one) => {}
                _ = ctx.stop.cancelled() => {}
            }
        } else {
            let _ = stream.shutdown().await;
        }
    });
}

/// The verdict on `peer`'s claim to be node `node`. Just after the agent started, a name bound
/// to nothing may not be loaded yet: then wait (bounded, well within the peer's wait for our
/// reply) for the directory's first full view and judge again.
async fn judge(ctx: &Context, peer: PeerId, node: &str) -> HelloStatus {
    let verdict = || match ctx.directory.peer_of(node) {
        Some(p) if p == peer => HelloStatus::Accepted,
        Some(_) => HelloStatus::PeerMismatch,
        None => HelloStatus::UnknownNode,
    };
    match verdict() {
        HelloStatus::UnknownNode => match timeout(DIRECTORY_WAIT, ctx.directory.ready()).await {
            Ok(()) => verdict(),
            Err(_) => HelloStatus::UnknownNode,
        },
        known => known,
    }
}

pub(super) async fn serve_hello(ctx: Arc<Context>, s: Inbound) {
    let peer = s.peer;
    let mut stream = s.stream.compat();
    let (status, claimed) = match timeout(HEADER_TIMEOUT, wire::read_hello(&mut stream)).await {
        Ok(Ok(hello)) => (judge(&ctx, peer, &hello.node).await, Some(hello)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "malformed hello");
            (HelloStatus::Malformed, None)
        }
        Err(_) => (HelloStatus::Malformed, None),
    };
    // A relay keeps serving peers it does not know (they only use the relay), and we keep
    // our relays; a peer claiming another node's name is always cut off.
    let keep = status == HelloStatus::Accepted
        || (status == HelloStatus::UnknownNode
            && (ctx.settings.relay_server || ctx.settings.relay_peers.contains(&peer)));
    let hold = keep && claimed.as_ref().is_some_and(|h| h.keep_open);
    let _ = timeout(HEADER_TIMEOUT, async {
        stream.write_u8(status as u8).await?;
        stream.flush().await?;
        if !hold {
            stream.shutdown().await?;
        }
        Ok::<_, io::Error>(())
    })
    .await;
    let node = claimed.as_ref().map(|h| h.node.clone()).unwrap_or_default();
    if status == HelloStatus::Accepted {
        let agent = claimed.as_ref().map(|h| h.agent.clone()).unwrap_or_default();
        let first = ctx.peers.their_claim(peer) != Some(Claim::Accepted(node.clone()));
        if first {
            tracing::info!(%peer, node = %node, agent = %agent, "peer identified");
        }
        ctx.peers.set_theirs(peer, Claim::Accepted(node.clone()));
    } else {
        ctx.peers.set_theirs(peer, Claim::Refused(status.describe().into()));
        if keep {
            tracing::debug!(%peer, claimed = %node, "peer not in the directory (kept: relay)");
        }
    }
    if hold {
        // The opener keeps this connection (bootstrap peer, relay): hold the stream open so
        // that neither side lets the connection idle out.
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                r = stream.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                _ = ctx.stop.cancelled() => break,
            }
        }
        return;
    }
    if keep {
        return;
    }
    ctx.peers.metrics().peer_refused(match status {
        HelloStatus::PeerMismatch => Refusal::PeerMismatch,
        HelloStatus::UnknownNode => Refusal::UnknownNode,
        _ => Refusal::Malformed,
    });
    if ctx.peers.should_warn(peer, "refused") {
        let why = match status {
            HelloStatus::PeerMismatch => "the node name is bound to another peer ID",
            HelloStatus::UnknownNode => "no peer ID is bound to the node name",
            _ => "malformed hello",
        };
        tracing::warn!(%peer, claimed_node = %node, reason = why, "refusing peer: closing its connections");
    }
    // Let the reply reach the peer before closing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = ctx.commands.send(Command::Disconnect { peer });
}
