//! The swarm task: the one task that drives the libp2p swarm. It dials, discovers, reserves
//! relay slots and reverses connections, records connections, paths and reservations in the
//! [`PeerTable`], and reports each new connection to the stream side ([`Connected`]); the
//! handles reach it with [`Command`]s.
//!
//! Its parts own their state and are driven by this task with its events, lent what they
//! dial with ([`Dial`]) for one call; none imports the task: `relays` (the slots reserved on
//! relays), `bootstrap` (the connections kept to bootstrap peers), `reachability` (AutoNAT,
//! port mapping: whether relay slots are needed), `addresses` (the peers' dialable
//! addresses), `connect` (reaching a node for the handles), [`heal`] (liveness, failover
//! and re-upgrading) and `counting` (the metrics of dials, hole punches and relay service).

mod addresses;
mod backoff;
mod bootstrap;
mod connect;
mod counting;
mod heal;
mod lan;
mod reachability;
mod relays;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use edgemesh_core::LogLimiter;
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list, autonat,
    core::transport::{ListenerId, TransportError},
    dcutr, identify, mdns,
    multiaddr::Protocol,
    relay,
    swarm::{
        ConnectionDenied, DialError, ListenError, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::{
    addresses::Addresses,
    bootstrap::Bootstrap,
    connect::{Connects, Dial},
    counting::Counting,
    heal::Heal,
    lan::LanDials,
    relays::Relays,
};
use crate::{
    messages::{Command, Connected},
    metrics::{Refusal, TunnelMetrics},
    peer_table::PeerTable,
    psk, security,
    settings::Settings,
    streams::{Control, is_relayed},
    swarm::{Behaviour, BehaviourEvent},
};

/// Lends the swarm task's dialing parts to its `connect` and `heal` parts for one call.
macro_rules! dial {
    ($task:expr) => {
        Dial {
            swarm: &mut $task.swarm,
            addresses: &$task.addresses,
            relays: &$task.relays,
            control: &$task.control,
            bootstrap: &$task.bootstrap,
        }
    };
}

pub(crate) struct Task {
    settings: Arc<Settings>,
    /// The peers' state this task records (connections, paths, reservations).
    peers: Arc<PeerTable>,
    /// The connections as the streams behaviour sees them (liveness, direct or relayed).
    control: Control,
    stop: CancellationToken,
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// New connections, to the stream side (which sends our hello on each).
    connected: mpsc::UnboundedSender<Connected>,
    /// Our listen addresses (not relayed), for `Tunnel::listen_addrs`.
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
    relays: Relays,
    bootstrap: Bootstrap,
    /// Dialable addresses learnt from mDNS, identify and the configuration.
    addresses: Addresses,
    /// The handles waiting to reach a peer (`Command::Connect`) and the dials for them.
    connects: Connects,
    /// Peers that reached us through a relay and whose advertised addresses we have not
    /// dialled yet (see [`Task::dial_back`]).
    dial_back: HashSet<PeerId>,
    reachability: reachability::Reachability,
    heal: Heal,
    counting: Counting,
    /// Dials of peers mDNS found, retried when they fail.
    lan: LanDials,
    /// One log line per interval for failed security negotiations with a PSK.
    negotiation_log: LogLimiter,
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        settings: Arc<Settings>,
        peers: Arc<PeerTable>,
        control: Control,
        swarm: Swarm<Behaviour>,
        commands: mpsc::UnboundedReceiver<Command>,
        connected: mpsc::UnboundedSender<Connected>,
        listen_addrs: watch::Sender<Vec<Multiaddr>>,
        relays: &[Multiaddr],
        bootstrap: &[Multiaddr],
        metrics: Arc<TunnelMetrics>,
        stop: CancellationToken,
    ) -> Task {
        let relays = Relays::new(relays);
        let bootstrap = Bootstrap::new(bootstrap);
        let addresses = Addresses::new(settings.local_peer, settings.quic);
        let mut t = Task {
            settings,
            peers,
            control,
            stop,
            swarm,
            commands,
            connected,
            listen_addrs,
            relays,
            bootstrap,
            addresses,
            connects: Connects::default(),
            dial_back: HashSet::new(),
            reachability: Default::default(),
            heal: Heal::default(),
            counting: Counting::new(metrics),
            lan: LanDials::default(),
            negotiation_log: LogLimiter::default(),
        };
        for (peer, addr) in t.relays.known() {
            t.addresses.learn(peer, addr);
            t.swarm.behaviour_mut().streams.set_keep_alive(peer, true);
        }
        for (peer, addr) in t.bootstrap.known() {
            t.addresses.learn(peer, addr);
        }
        t
    }

    /// Connection reversal, as go-libp2p does before hole punching: a peer that reached us
    /// through a relay may itself be reachable, so we dial the addresses it advertises (once per
    /// relayed connection, if we have no direct one). Without this, DCUtR's attempt to reach a
    /// reachable peer can fail: our half of the simultaneous open, dialling in the listener
    /// role, may reach the peer's listening socket before the peer's own dial exists; both sides
    /// then act as listener and the attempt hangs until the upgrade times out (20 s), about one
    /// attempt in three between namespaces. A fresh local port keeps this dial apart from
    /// DCUtR's, which reuses the listening port.
    fn dial_back(&mut self, peer: PeerId, advertised: Vec<Multiaddr>) {
        if self.control.connections(&peer).iter().any(|(_, relayed)| !relayed) {
            return;
        }
        let addrs: Vec<Multiaddr> =
            advertised.into_iter().filter(|a| !is_relayed(a) && self.addresses.dialable(a) && is_routable(a)).collect();
        if addrs.is_empty() {
            return;
        }
        tracing::debug!(%peer, addresses = ?addrs, "dialling back a peer that reached us through a relay");
        let opts =
            DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Always).allocate_new_port().build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial back");
        }
    }

    /// Drives the swarm until each of `listeners` reported its addresses, for at most `wait`;
    /// the reason if one of them closed instead.
    pub(crate) async fn await_listeners(
        &mut self,
        mut listeners: HashSet<ListenerId>,
        wait: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + wait;
        while !listeners.is_empty() {
            let Ok(event) = tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await else { break };
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    listeners.remove(listener_id);
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } if listeners.contains(listener_id) => {
                    return Err(format!("{reason:?}"));
                }
                _ => {}
            }
            self.on_event(event);
        }
        Ok(())
    }

    pub(crate) async fn run(mut self) {
        let stop = self.stop.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.connects.stop();
        tracing::debug!("tunnel swarm task stopped");
    }

    fn on_tick(&mut self) {
        self.heal.tick(dial!(self), &self.peers, &self.settings);
        let now = Instant::now();
        self.relays.tick(&mut self.swarm, now);
        self.bootstrap.tick(&mut self.swarm, now);
        self.lan.tick(&mut self.swarm, &self.addresses, now);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect { peer, reply } => self.connects.request(peer, reply, dial!(self)),
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            #[cfg(test)]
            Command::Close { connection } => {
                self.swarm.close_connection(connection);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.counting.record(&event);
        match event {
            SwarmEvent::Dialing { peer_id: Some(peer), connection_id } => {
                self.counting.dialing(peer, connection_id, &self.control, &self.peers);
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                let addr = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed();
                if endpoint.is_dialer() {
                    self.counting.dialed(peer_id, connection_id, true, &self.peers);
                    self.lan.done(connection_id);
                }
                tracing::debug!(peer = %peer_id, %addr, relayed, n = num_established, "connection established");
                if endpoint.is_dialer() && !relayed {
                    self.addresses.learn(peer_id, addr.clone());
                }
                if relayed && !endpoint.is_dialer() {
                    self.dial_back.insert(peer_id);
                }
                if self.bootstrap.established(peer_id, connection_id) {
                    self.swarm.behaviour_mut().streams.set_keep_alive(peer_id, true);
                    self.peers.keep_open(peer_id);
                }
                let relay = relayed.then(|| relay_of(&endpoint)).flatten();
                self.peers.connection_established(peer_id, connection_id, addr, relayed, relay);
                self.heal.path_changed(peer_id, &self.control, &self.peers);
                // The stream side is gone only when the tunnel stops.
                let _ = self.connected.send(Connected { peer: peer_id, connection: connection_id });
                self.connects.established(peer_id, connection_id, dial!(self));
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                tracing::debug!(peer = %peer_id, remaining = num_established, cause = ?cause, "connection closed");
                self.peers.connection_closed(peer_id, connection_id);
                self.heal.path_changed(peer_id, &self.control, &self.peers);
                if num_established == 0 {
                    self.dial_back.remove(&peer_id);
                    self.bootstrap.closed(peer_id);
                }
            }
            SwarmEvent::IncomingConnectionError { peer_id, error: ListenError::Denied { cause }, .. } => {
                self.denied(peer_id, &cause);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error: ListenError::Transport(TransportError::Other(e)),
                ..
            } => self.handshake_failed(&send_back_addr, None, &e),
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                if let DialError::Transport(errors) = &error {
                    for (addr, e) in errors {
                        if let TransportError::Other(e) = e {
                            self.handshake_failed(addr, peer_id, e);
                        }
                    }
                }
                // Our own dials of peers tunnel.allowedPeers does not list (found by mDNS,
                // say) are denied too: not a refusal of anyone, so only logged here.
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
                self.bootstrap.dial_failed(connection_id, &error);
                self.lan.failed(connection_id, Instant::now());
                if let Some(peer) = peer_id {
                    self.counting.dialed(peer, connection_id, false, &self.peers);
                    self.connects.dial_failed(peer, connection_id, error.to_string(), dial!(self));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "tunnel listening");
                if !is_relayed(&address) {
                    self.listen_addrs.send_if_modified(|l| {
                        let new = !l.contains(&address);
                        if new {
                            l.push(address.clone());
                        }
                        new
                    });
                    if self.settings.relay_server {
                        // A relay server must know its external addresses to accept
                        // reservations; its listen addresses are what clients dial.
                        self.swarm.add_external_address(address);
                    }
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.send_if_modified(|l| {
                    let before = l.len();
                    l.retain(|a| a != &address);
                    l.len() != before
                });
                if self.settings.relay_server {
                    self.swarm.remove_external_address(&address);
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => self.listener_closed(listener_id, reason.err()),
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::debug!(?listener_id, %error, "listener error");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            _ => {}
        }
    }

    /// An inbound connection refused as it was established: counted, and logged (once per peer
    /// and interval), when `tunnel.allowedPeers` does not list the peer.
    fn denied(&self, peer: Option<PeerId>, cause: &ConnectionDenied) {
        if cause.downcast_ref::<allow_block_list::NotAllowed>().is_none() {
            return;
        }
        self.peers.metrics().peer_refused(Refusal::NotAllowed);
        match peer {
            Some(peer) if self.peers.should_warn(peer, "not-allowed") => {
                tracing::warn!(%peer, "refusing a peer that tunnel.allowedPeers does not list: connection closed");
            }
            _ => tracing::debug!(?peer, "refused a peer tunnel.allowedPeers does not list"),
        }
    }

    /// A connection that failed before the muxer. A peer whose PSK proof did not match is
    /// counted, and logged once per interval (a prober may knock many times); with a PSK, a
    /// failed negotiation of the security protocol is logged too (a member of the fleet
    /// without the key, or still on pnet).
    fn handshake_failed(&self, addr: &Multiaddr, peer: Option<PeerId>, error: &std::io::Error) {
        if psk::is_refusal(error) {
            if self.peers.metrics().psk_refused() {
                tracing::warn!(%addr, ?peer, "the peer does not have this network's PSK: connection closed");
            } else {
                tracing::debug!(%addr, ?peer, "the peer does not have this network's PSK: connection closed");
            }
        } else if self.settings.psk && security::is_negotiation_failure(error) {
            if self.negotiation_log.allow() {
                tracing::warn!(%addr, ?peer, %error, "the peer speaks none of this network's PSK protocols: it \
                    has no PSK, or it is an agent before the PSK proof (libp2p pnet); upgrade every node of a PSK \
                    network together");
            } else {
                tracing::debug!(%addr, ?peer, %error, "the peer speaks none of this network's PSK protocols");
            }
        }
    }

    /// A listener closed: if it held a relay slot, the peers waiting for a relay may be
    /// stranded.
    fn listener_closed(&mut self, listener_id: ListenerId, error: Option<std::io::Error>) {
        if self.relays.listener_gone(listener_id, error, &self.peers) {
            self.connects.relay_gone(dial!(self));
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match &ev {
            BehaviourEvent::Identify(e) => self.counting.record(e),
            BehaviourEvent::Ping(e) => self.counting.record(e),
            BehaviourEvent::Dcutr(e) => self.counting.record(e),
            BehaviourEvent::RelayServer(e) => {
                self.counting.record(e);
                self.counting.relay_server(e);
            }
            _ => {}
        }
        match ev {
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => self.relays.accepted(relay_peer_id, renewal, &mut self.swarm, &self.peers),
            BehaviourEvent::RelayClient(e) => tracing::debug!(event = ?e, "relay client"),
            BehaviourEvent::RelayServer(e) => tracing::debug!(event = ?e, "relay server"),
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punching succeeded: direct connection"),
                Err(e) if self.control.connections(&remote_peer_id).iter().any(|(_, relayed)| !relayed) => {
                    tracing::debug!(peer = %remote_peer_id, error = %e, "hole punching failed (connected directly anyway)")
                }
                Err(e) => tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed: staying relayed"),
            },
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // A peer's loopback and link-local addresses lead to it only from its own host
                // (which the address it sees us at tells): elsewhere a dial to its 127.0.0.1
                // reaches our own listener.
                let same_host = !is_routable(&info.observed_addr);
                for a in &info.listen_addrs {
                    if !is_relayed(a) && (same_host || is_routable(a)) {
                        self.addresses.learn(peer_id, a.clone());
                    }
                }
                if self.dial_back.remove(&peer_id) {
                    self.dial_back(peer_id, info.listen_addrs);
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(event) => heal::on_ping(&self.control, &self.peers, event),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "AutoNAT status changed");
                self.reachability.on_autonat_public(new.is_public());
                self.relays.set_reserve(!self.reachability.public(), &mut self.swarm, &self.peers);
            }
            BehaviourEvent::Autonat(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let mut peers = HashSet::new();
                for (peer, addr) in list {
                    self.addresses.learn(peer, addr);
                    peers.insert(peer);
                }
                // Connect to LAN peers so each side learns the other's node name.
                for peer in peers {
                    self.lan.dial(&mut self.swarm, &self.addresses, peer);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Upnp(e) => {
                self.reachability.on_upnp(e);
                self.relays.set_reserve(!self.reachability.public(), &mut self.swarm, &self.peers);
            }
            BehaviourEvent::Streams(e) | BehaviourEvent::Punch(e) => match e {},
            BehaviourEvent::Allowed(e) => match e {},
        }
    }
}

/// The relay a relayed connection runs through: the `/p2p/<relay>` before `/p2p-circuit` in
/// the address we dialled, or in the local address of a circuit we accepted.
fn relay_of(endpoint: &libp2p::core::ConnectedPoint) -> Option<PeerId> {
    let addr = match endpoint {
        libp2p::core::ConnectedPoint::Dialer { address, .. } => address,
        libp2p::core::ConnectedPoint::Listener { local_addr, .. } => local_addr,
    };
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// Whether `a` can lead to another host: not loopback, link-local or unspecified.
fn is_routable(a: &Multiaddr) -> bool {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified()),
        Some(Protocol::Ip6(ip)) => !(ip.is_loopback() || ip.is_unicast_link_local() || ip.is_unspecified()),
        _ => true,
    }
}
