//! The messages between the tunnel's two sides: the handles and stream tasks ask the swarm
//! task for dials ([`Command`]); the swarm task tells the stream side of each new connection
//! ([`Connected`]), on which it runs the hello. Both sides depend on this module, neither on
//! the other.

use libp2p::{PeerId, swarm::ConnectionId};
use tokio::sync::oneshot;

/// Requests from the handles and stream tasks to the swarm task.
pub(crate) enum Command {
    /// Connect to a peer (known addresses and every relay); replies when connected or failed.
    Connect { peer: PeerId, reply: oneshot::Sender<Result<(), String>> },
    /// Close every connection to a peer.
    Disconnect { peer: PeerId },
    /// Close one connection (tests: break the direct path).
    #[cfg(test)]
    Close { connection: ConnectionId },
}

/// A connection the swarm task saw established: the stream side sends our hello on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connected {
    pub peer: PeerId,
    pub connection: ConnectionId,
}
