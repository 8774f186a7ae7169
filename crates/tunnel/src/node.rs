//! Running the swarm: dialing, discovery, relay reservations, connection reversal, and the
//! events that keep the peers' state (`tunnel::Inner`) current; `connect`: reaching a node for
//! the handles; [`heal`]: liveness, failover and re-upgrading; `reachability`: whether this
//! node needs relay slots (AutoNAT, port mapping).

mod connect;
mod heal;
mod reachability;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat,
    core::transport::ListenerId,
    dcutr, identify, mdns,
    multiaddr::Protocol,
    relay,
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    streams::is_relayed,
    swarm::{Behaviour, BehaviourEvent},
    tunnel::Inner,
};

const MAX_ADDRS_PER_PEER: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A bootstrap connection that lived at least this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);

/// Requests from the handles to the swarm task.
pub(crate) enum Command {
    /// Connect to a peer (known addresses and every relay); replies when connected or failed.
    Connect { peer: PeerId, reply: oneshot::Sender<Result<(), String>> },
    /// Close every connection to a peer.
    Disconnect { peer: PeerId },
    /// Close one connection (tests: break the direct path).
    #[cfg(test)]
    Close { connection: ConnectionId },
}

/// A relay we reserve a slot on.
struct RelaySlot {
    addr: Multiaddr,
    peer: PeerId,
    listener: Option<ListenerId>,
    /// The relay accepted the listener's reservation (none in flight): only then may the
    /// listener be removed, as libp2p's relay client panics on an answer to a reservation whose
    /// listener is gone.
    confirmed: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// A bootstrap peer we keep a connection to.
struct BootstrapSlot {
    addr: Multiaddr,
    peer: Option<PeerId>,
    dialing: Option<ConnectionId>,
    connected_since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

pub(crate) struct Task {
    pub inner: Arc<Inner>,
    pub swarm: Swarm<Behaviour>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    relays: Vec<RelaySlot>,
    bootstrap: Vec<BootstrapSlot>,
    /// Dialable addresses learnt from mDNS, identify and the configuration.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    pending_connects: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    /// The dials under way to reach peers for streams (`connect`).
    connect_dials: HashMap<PeerId, connect::Legs>,
    /// Peers that reached us through a relay and whose advertised addresses we have not
    /// dialled yet (see [`Task::dial_back`]).
    dial_back: HashSet<PeerId>,
    reserve: bool,
    reachability: reachability::Reachability,
    relay_server: bool,
    heal: heal::Heal,
}

fn next_backoff(b: Duration) -> Duration {
    (b * 2).min(BACKOFF_MAX)
}

fn peer_of_addr(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

impl Task {
    pub(crate) fn new(
        inner: Arc<Inner>,
        swarm: Swarm<Behaviour>,
        commands: mpsc::UnboundedReceiver<Command>,
        relays: &[Multiaddr],
        bootstrap: &[Multiaddr],
        relay_server: bool,
    ) -> Task {
        let relays = relays
            .iter()
            .filter_map(|a| {
                Some(RelaySlot {
                    peer: peer_of_addr(a)?,
                    addr: a.clone(),
                    listener: None,
                    confirmed: false,
                    retry_at: Some(Instant::now()),
                    backoff: BACKOFF_MIN,
                })
            })
            .collect();
        let bootstrap = bootstrap
            .iter()
            .map(|a| BootstrapSlot {
                addr: a.clone(),
                peer: peer_of_addr(a),
                dialing: None,
                connected_since: None,
                retry_at: Some(Instant::now()),
                backoff: BACKOFF_MIN,
            })
            .collect();
        let mut t = Task {
            inner,
            swarm,
            commands,
            relays,
            bootstrap,
            addresses: HashMap::new(),
            pending_connects: HashMap::new(),
            connect_dials: HashMap::new(),
            dial_back: HashSet::new(),
            reserve: true,
            reachability: Default::default(),
            relay_server,
            heal: heal::Heal::default(),
        };
        let relay_peers: Vec<PeerId> = t.relays.iter().map(|r| r.peer).collect();
        for (peer, addr) in t.relays.iter().map(|r| (r.peer, r.addr.clone())).collect::<Vec<_>>() {
            t.learn(peer, addr);
        }
        for p in relay_peers {
            t.swarm.behaviour_mut().streams.set_keep_alive(p, true);
        }
        for (peer, addr) in t.bootstrap.iter().filter_map(|b| Some((b.peer?, b.addr.clone()))).collect::<Vec<_>>() {
            t.learn(peer, addr);
        }
        t
    }

    fn learn(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        // Strip a trailing /p2p/<peer>: dial options carry the peer ID.
        let mut addr = addr;
        if let Some(Protocol::P2p(p)) = addr.iter().last() {
            if p != peer {
                return;
            }
            addr.pop();
        }
        if !self.dialable(&addr) {
            return;
        }
        let list = self.addresses.entry(peer).or_default();
        if let Some(pos) = list.iter().position(|a| a == &addr) {
            let a = list.remove(pos);
            list.insert(0, a);
        } else {
            list.insert(0, addr);
            list.truncate(MAX_ADDRS_PER_PEER);
        }
    }

    /// Whether we can dial `addr` at all: not an unspecified address, and no QUIC with a PSK.
    fn dialable(&self, addr: &Multiaddr) -> bool {
        addr.iter().all(|p| match p {
            Protocol::Ip4(ip) => !ip.is_unspecified(),
            Protocol::Ip6(ip) => !ip.is_unspecified(),
            Protocol::QuicV1 => self.inner.quic,
            _ => true,
        })
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
        if self.inner.control.connections(&peer).iter().any(|(_, relayed)| !relayed) {
            return;
        }
        let addrs: Vec<Multiaddr> =
            advertised.into_iter().filter(|a| !is_relayed(a) && self.dialable(a) && is_routable(a)).collect();
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

    /// Addresses to reach `peer` through every relay.
    fn relay_circuits(&self, peer: PeerId) -> Vec<Multiaddr> {
        let through = self.relays.iter().filter(|r| r.peer != peer);
        through.map(|r| r.addr.clone().with(Protocol::P2pCircuit).with(Protocol::P2p(peer))).collect()
    }

    pub(crate) async fn run(mut self) {
        let stop = self.inner.stop.clone();
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
        for (_, waiters) in self.pending_connects.drain() {
            for w in waiters {
                let _ = w.send(Err("tunnel stopped".into()));
            }
        }
        tracing::debug!("tunnel swarm task stopped");
    }

    fn on_tick(&mut self) {
        self.heal_tick();
        let now = Instant::now();
        for i in 0..self.relays.len() {
            let r = &mut self.relays[i];
            if !self.reserve || r.listener.is_some() || r.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            r.retry_at = None;
            let addr = r.addr.clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    tracing::debug!(relay = %r.addr, "reserving a relay slot");
                    r.listener = Some(id);
                }
                Err(e) => {
                    tracing::warn!(relay = %r.addr, error = %e, "cannot reserve a relay slot");
                    r.retry_at = Some(now + r.backoff);
                    r.backoff = next_backoff(r.backoff);
                }
            }
        }
        for i in 0..self.bootstrap.len() {
            let b = &mut self.bootstrap[i];
            if b.dialing.is_some() || b.connected_since.is_some() || b.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            b.retry_at = None;
            let opts = match b.peer {
                Some(peer) if self.swarm.is_connected(&peer) => {
                    b.connected_since = Some(now);
                    continue;
                }
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![b.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id().address(b.addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => b.dialing = Some(id),
                Err(e) => {
                    tracing::debug!(bootstrap = %b.addr, error = %e, "cannot dial bootstrap peer");
                    b.retry_at = Some(now + b.backoff);
                    b.backoff = next_backoff(b.backoff);
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect { peer, reply } => self.connect(peer, reply),
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            #[cfg(test)]
            Command::Close { connection } => {
                self.swarm.close_connection(connection);
            }
        }
    }

    fn fail_connects(&mut self, peer: PeerId, reason: String) {
        if let Some(waiters) = self.pending_connects.remove(&peer) {
            for w in waiters {
                let _ = w.send(Err(reason.clone()));
            }
        }
    }

    pub(crate) fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                let addr = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed();
                tracing::debug!(peer = %peer_id, %addr, relayed, n = num_established, "connection established");
                if endpoint.is_dialer() && !relayed {
                    self.learn(peer_id, addr.clone());
                }
                if relayed && !endpoint.is_dialer() {
                    self.dial_back.insert(peer_id);
                }
                for b in &mut self.bootstrap {
                    if b.dialing == Some(connection_id) || (b.peer == Some(peer_id) && b.connected_since.is_none()) {
                        b.dialing = None;
                        b.peer = Some(peer_id);
                        b.connected_since = Some(Instant::now());
                        self.swarm.behaviour_mut().streams.set_keep_alive(peer_id, true);
                        self.inner.keep_alive.lock().unwrap_or_else(|e| e.into_inner()).insert(peer_id);
                    }
                }
                self.inner.connection_established(peer_id, connection_id, addr, relayed);
                self.path_changed(peer_id);
                if let Some(waiters) = self.pending_connects.remove(&peer_id) {
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                }
                crate::tunnel::spawn_hello(self.inner.clone(), peer_id, connection_id);
                self.connect_established(peer_id, connection_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                tracing::debug!(peer = %peer_id, remaining = num_established, cause = ?cause, "connection closed");
                self.inner.connection_closed(peer_id, connection_id);
                self.path_changed(peer_id);
                if num_established == 0 {
                    self.dial_back.remove(&peer_id);
                    let now = Instant::now();
                    for b in &mut self.bootstrap {
                        if b.peer != Some(peer_id) {
                            continue;
                        }
                        if let Some(since) = b.connected_since.take() {
                            if now - since >= STABLE {
                                b.backoff = BACKOFF_MIN;
                            }
                            b.retry_at = Some(now + b.backoff);
                            b.backoff = next_backoff(b.backoff);
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
                let now = Instant::now();
                for b in &mut self.bootstrap {
                    if b.dialing == Some(connection_id) {
                        tracing::debug!(bootstrap = %b.addr, %error, retry_in = ?b.backoff, "cannot reach bootstrap peer");
                        b.dialing = None;
                        b.retry_at = Some(now + b.backoff);
                        b.backoff = next_backoff(b.backoff);
                    }
                }
                if let Some(peer) = peer_id {
                    self.connect_dial_failed(peer, connection_id, error.to_string());
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "tunnel listening");
                if !is_relayed(&address) {
                    self.inner.add_listen_addr(address.clone());
                    if self.relay_server {
                        // A relay server must know its external addresses to accept
                        // reservations; its listen addresses are what clients dial.
                        self.swarm.add_external_address(address);
                    }
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.inner.remove_listen_addr(&address);
                if self.relay_server {
                    self.swarm.remove_external_address(&address);
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                self.relay_listener_gone(listener_id, reason.err())
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::debug!(?listener_id, %error, "listener error");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            _ => {}
        }
    }

    fn relay_listener_gone(&mut self, listener_id: ListenerId, error: Option<std::io::Error>) {
        let reserve = self.reserve;
        if let Some(r) = self.relays.iter_mut().find(|r| r.listener == Some(listener_id)) {
            r.listener = None;
            r.confirmed = false;
            self.inner.set_reserved(r.peer, false);
            if reserve {
                tracing::warn!(relay = %r.addr, error = ?error.map(|e| e.to_string()), retry_in = ?r.backoff, "relay reservation lost");
                r.retry_at = Some(Instant::now() + r.backoff);
                r.backoff = next_backoff(r.backoff);
            }
            self.connect_relay_gone();
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay slot reserved");
                }
                for r in &mut self.relays {
                    if r.peer == relay_peer_id {
                        r.backoff = BACKOFF_MIN;
                        r.confirmed = r.listener.is_some();
                    }
                }
                self.inner.set_reserved(relay_peer_id, true);
                // Given up while the request was in flight (see `set_reserve`): release it now.
                if !self.reserve {
                    self.release_relay_slots();
                }
            }
            BehaviourEvent::RelayClient(e) => tracing::debug!(event = ?e, "relay client"),
            BehaviourEvent::RelayServer(e) => tracing::debug!(event = ?e, "relay server"),
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punching succeeded: direct connection"),
                Err(e) if self.inner.control.connections(&remote_peer_id).iter().any(|(_, relayed)| !relayed) => {
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
                        self.learn(peer_id, a.clone());
                    }
                }
                if self.dial_back.remove(&peer_id) {
                    self.dial_back(peer_id, info.listen_addrs);
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(event) => self.on_ping(event),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "AutoNAT status changed");
                self.on_autonat_public(new.is_public());
            }
            BehaviourEvent::Autonat(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let mut peers = HashSet::new();
                for (peer, addr) in list {
                    self.learn(peer, addr);
                    peers.insert(peer);
                }
                // Connect to LAN peers so each side learns the other's node name.
                for peer in peers {
                    if !self.swarm.is_connected(&peer) {
                        let opts = DialOpts::peer_id(peer)
                            .addresses(self.addresses.get(&peer).cloned().unwrap_or_default())
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        let _ = self.swarm.dial(opts);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Upnp(e) => self.on_upnp(e),
            BehaviourEvent::Streams(e) | BehaviourEvent::Punch(e) => match e {},
        }
    }
}

/// Whether `a` can lead to another host: not loopback, link-local or unspecified.
fn is_routable(a: &Multiaddr) -> bool {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified()),
        Some(Protocol::Ip6(ip)) => !(ip.is_loopback() || ip.is_unicast_link_local() || ip.is_unspecified()),
        _ => true,
    }
}
