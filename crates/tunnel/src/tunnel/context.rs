//! What the handles and the stream tasks work with. It owns no state of its own: the peers'
//! state is the [`PeerTable`]'s, the connections' the streams behaviour's ([`Control`]), the
//! inbound stream counts [`InboundStreams`]', and dials are asked of the swarm task with a
//! [`Command`].

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::inbound_limits::InboundStreams;
use crate::{Directory, messages::Command, peer_table::PeerTable, settings::Settings, streams::Control};

pub(crate) struct Context {
    pub settings: Arc<Settings>,
    pub peers: Arc<PeerTable>,
    pub control: Control,
    pub directory: Arc<dyn Directory>,
    /// The inbound proxy streams held open, against their limits.
    pub inbound: Arc<InboundStreams>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub stop: CancellationToken,
}
