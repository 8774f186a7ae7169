//! A UDP session to an endpoint on another node: its datagrams ride one
//! datagram session of the tunnel (see [`crate::remote`]).

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::SessionEnds;
use crate::error::ProxyError;
use crate::pool::Targets;
use crate::remote::{RemoteDatagrams, RemoteFuture};

/// A session to an endpoint on another node: opens the tunnel's datagram
/// session, then relays queued datagrams out and replies back until idle.
/// A failed open ejects the endpoint.
pub(super) async fn relay_remote(
    open: RemoteFuture<RemoteDatagrams>,
    node: Arc<str>,
    mut queued: mpsc::Receiver<Vec<u8>>,
    (targets, client_ip): (Arc<Targets>, IpAddr),
    e: SessionEnds,
) {
    let timeout = e.shared.reach.timeout();
    let opened = match tokio::time::timeout(timeout, open).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => return e.fail(ProxyError::remote(&node, e.backend, err)),
        Err(_) => return e.fail(ProxyError::RemoteTimedOut { node: node.to_string(), addr: e.backend, timeout }),
    };
    e.pool.connected(&targets, client_ip, e.backend);
    let RemoteDatagrams { to_remote, mut from_remote } = opened;
    loop {
        tokio::select! {
            datagram = queued.recv() => {
                let Some(datagram) = datagram else { break };
                let len = datagram.len() as u64;
                match to_remote.try_send(datagram) {
                    Ok(()) => {
                        e.pool.metrics.udp().sent.inc_by(len);
                    }
                    Err(_) => e.dropped(),
                }
            }
            reply = from_remote.recv() => {
                let Some(reply) = reply else {
                    tracing::debug!(service = %e.pool.service, backend = %e.backend, %node, "tunnel UDP session ended by the remote side");
                    break;
                };
                e.touch();
                e.reply(&reply);
            }
            () = tokio::time::sleep_until(e.deadline()) => {
                if e.expired() {
                    tracing::trace!(service = %e.pool.service, client = %e.client, "UDP session idle; closing");
                    break;
                }
            }
        }
    }
    e.end();
}

impl SessionEnds {
    /// The session could not be opened: eject the endpoint, say why, end.
    fn fail(&self, error: ProxyError) {
        self.pool.failed(self.backend);
        self.pool.report(&error);
        self.end();
    }
}
