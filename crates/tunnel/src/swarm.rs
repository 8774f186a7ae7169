//! Building the swarm: transports (TCP, QUIC, DNS, relayed), TLS or Noise (with the PSK proof when
//! there is a key), the muxer, and the behaviours (relay client and server, DCUtR, identify, ping, AutoNAT, mDNS,
//! UPnP port mapping, the edgemesh streams).

use std::{
    collections::HashSet,
    num::{NonZeroU32, NonZeroUsize},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, Swarm, Transport, allow_block_list, autonat,
    core::{muxing::StreamMuxerBox, transport::Boxed, upgrade::Version},
    dcutr, identify,
    identity::Keypair,
    mdns,
    multiaddr::Protocol,
    noise, ping, relay,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
    tcp, upnp,
};
use tokio::sync::mpsc;

use crate::{RelayLimits, TunnelError, liveness::LivenessPolicy, psk::Psk, punch, security::Security, streams, tls};

pub(crate) const PROTOCOL_VERSION: &str = "/edgemesh/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// `tunnel.allowedPeers`: first, so that a peer not on the list is refused before any
    /// other behaviour sees its connection.
    allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    upnp: Toggle<upnp::tokio::Behaviour>,
    punch: punch::Behaviour,
    pub(crate) streams: streams::Behaviour,
}

pub(crate) struct Built {
    pub swarm: Swarm<Behaviour>,
    pub inbound: mpsc::UnboundedReceiver<streams::Inbound>,
    pub control: streams::Control,
}

type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

fn relay_config(l: &RelayLimits) -> relay::Config {
    let n = |v: u32| NonZeroU32::new(v).expect("non-zero");
    relay::Config {
        max_reservations: l.max_reservations,
        max_reservations_per_peer: l.max_reservations_per_peer,
        reservation_duration: l.reservation_duration,
        reservation_rate_limiters: Vec::new(),
        max_circuits: l.max_circuits,
        max_circuits_per_peer: l.max_circuits_per_peer,
        max_circuit_duration: l.max_circuit_duration,
        max_circuit_bytes: l.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    }
    .reservation_rate_per_peer(n(30), Duration::from_secs(30))
    .reservation_rate_per_ip(n(30), Duration::from_secs(15))
    .circuit_src_per_peer(n(120), Duration::from_secs(5))
    .circuit_src_per_ip(n(120), Duration::from_secs(2))
}

pub(crate) struct SwarmParams<'a> {
    pub key: &'a Keypair,
    /// The private network's key: every connection (direct, to a relay, relayed) proves it.
    pub psk: Option<Psk>,
    pub quic: bool,
    pub max_streams: usize,
    pub relay_server: Option<&'a RelayLimits>,
    pub mdns: bool,
    /// Ask the router for a port mapping (UPnP IGD).
    pub upnp: bool,
    pub idle_timeout: Duration,
    /// Offer TLS before Noise.
    pub tls: bool,
    pub liveness: LivenessPolicy,
    pub tcp_user_timeout: Duration,
    /// The TTL of a hole punch dial's first SYN (0: no priming; see `punch`).
    pub punch_ttl: u8,
    /// The only peers connections are kept with (`None`: any).
    pub allowed_peers: Option<HashSet<PeerId>>,
}

pub(crate) fn build(p: SwarmParams<'_>) -> Result<Built, TunnelError> {
    let key = p.key;
    let local = key.public().to_peer_id();
    let noise = noise::Config::new(key).map_err(|e| TunnelError::Config(format!("noise: {e}")))?;
    let tls = match p.tls {
        true => Some(tls::Config::new(key).map_err(|e| TunnelError::Config(format!("TLS: {e}")))?),
        false => None,
    };
    let security = match p.psk {
        Some(psk) => Security::new(tls, noise).with_psk(psk, local),
        None => Security::new(tls, noise),
    };
    let yamux = crate::muxer::Config::new(p.max_streams);

    let user_timeout = p.tcp_user_timeout;
    let marks = punch::Marks::new(p.punch_ttl);
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true).listen_backlog(1024));
    let tcp_base = punch::Primed::new(tcp, marks.clone()).map(move |stream: tcp::tokio::TcpStream, _| {
        dead_path_timeouts(&stream.0, user_timeout);
        stream
    });
    let tcp = secured(tcp_base, &security, &yamux);
    let direct = if p.quic { with_quic(tcp, key, p.max_streams, &p.liveness) } else { tcp };
    // /dns4, /dns6 and /dnsaddr addresses (bootstrap peers and relays by name).
    let direct: BoxedTransport = if std::path::Path::new("/etc/resolv.conf").exists() {
        libp2p::dns::tokio::Transport::system(direct)
            .map_err(|e| TunnelError::Config(format!("cannot read the system DNS configuration: {e}")))?
            .boxed()
    } else {
        tracing::warn!("no /etc/resolv.conf: /dns addresses will not resolve");
        direct
    };
    let (relay_transport, relay_client) = relay::client::new(local);
    let relayed = secured(relay_transport, &security, &yamux);
    let transport = relayed
        .or_transport(direct)
        .map(|either, _| match either {
            futures::future::Either::Left(o) | futures::future::Either::Right(o) => o,
        })
        .boxed();

    let mdns = if p.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), local)
                .map_err(|e| TunnelError::Config(format!("mDNS: {e}")))?,
        )
    } else {
        None
    };
    let (streams, control, inbound) = streams::Behaviour::new(p.max_streams, p.liveness);
    let allowed = p.allowed_peers.map(|peers| {
        let mut list = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
        for peer in peers {
            list.allow_peer(peer);
        }
        list
    });
    let behaviour = Behaviour {
        allowed: allowed.into(),
        relay_client,
        relay_server: p.relay_server.map(|l| relay::Behaviour::new(local, relay_config(l))).into(),
        dcutr: dcutr::Behaviour::new(local),
        identify: identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                .with_agent_version(format!("edgemesh/{}", env!("CARGO_PKG_VERSION")))
                .with_interval(Duration::from_secs(300))
                // No address book of its own: it would add every address a peer announces,
                // loopback included, to dials (the relay reservations'), which then reach
                // our own listener. The swarm task keeps the dialable ones.
                .with_cache_size(0),
        ),
        // Pings only report; the swarm task closes the connections that stop answering (see
        // `liveness`). A ping answered later than the liveness timeout is of no use.
        ping: ping::Behaviour::new(
            ping::Config::new().with_interval(p.liveness.interval).with_timeout(p.liveness.timeout),
        ),
        autonat: autonat::Behaviour::new(local, autonat::Config::default()),
        mdns: mdns.into(),
        // Searches for the router at once (SSDP, up to 10 s); maps the private IPv4 listen
        // addresses' ports.
        upnp: p.upnp.then(upnp::tokio::Behaviour::default).into(),
        punch: punch::Behaviour::new(marks),
        streams,
    };
    let config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(p.idle_timeout)
        // One round trip less per proxied connection: the header rides with the protocol
        // proposal (we always propose exactly one protocol).
        .with_substream_upgrade_protocol_override(Version::V1Lazy)
        .with_max_negotiating_inbound_streams(1024)
        .with_notify_handler_buffer_size(NonZeroUsize::new(256).expect("256 > 0"))
        .with_per_connection_event_buffer_size(64);
    let swarm = Swarm::new(transport, behaviour, local, config);
    Ok(Built { swarm, inbound, control })
}

/// A raw transport (TCP or relayed circuits) upgraded the one way every edgemesh connection is:
/// the security choice (TLS or Noise, then the PSK proof if there is a key), then the muxer.
fn secured<T>(raw: T, security: &Security, yamux: &crate::muxer::Config) -> BoxedTransport
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    raw.upgrade(Version::V1Lazy)
        .authenticate(security.clone())
        .multiplex(yamux.clone())
        .timeout(Duration::from_secs(20))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed()
}

/// A tunnel TCP socket (dialled or accepted) gives up on a dead path by itself:
/// `TCP_USER_TIMEOUT` bounds how long sent bytes may stay unacknowledged, and keepalive probes
/// find a dead path while nothing is sent. Without them the kernel retransmits for about 15
/// minutes, and the connection stays open (and preferred) all that time.
fn dead_path_timeouts(stream: &tokio::net::TcpStream, user_timeout: Duration) {
    let socket = socket2::SockRef::from(stream);
    let keepalive =
        socket2::TcpKeepalive::new().with_time(user_timeout).with_interval(Duration::from_secs(1)).with_retries(3);
    let set = socket
        .set_tcp_user_timeout(Some(user_timeout))
        .and_then(|()| socket.set_tcp_keepalive(&keepalive))
        .and_then(|()| socket.set_keepalive(true));
    if let Err(e) = set {
        tracing::warn!(error = %e, "cannot set TCP_USER_TIMEOUT and keepalive on a tunnel socket: a dead path \
            is found by the pings only");
    }
}

/// TCP or QUIC, whichever the dialled address names.
#[cfg(feature = "quic")]
fn with_quic(tcp: BoxedTransport, key: &Keypair, max_streams: usize, liveness: &LivenessPolicy) -> BoxedTransport {
    use libp2p::quic;
    let mut qc = quic::Config::new(key);
    qc.max_concurrent_stream_limit = u32::try_from(max_streams.saturating_add(256)).unwrap_or(u32::MAX);
    // QUIC's own dead-path detection, at the pace of the pings.
    qc.keep_alive_interval = liveness.interval;
    qc.max_idle_timeout = u32::try_from(liveness.timeout.as_millis()).unwrap_or(u32::MAX);
    let quic = quic::tokio::Transport::new(qc).map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    tcp.or_transport(quic)
        .map(|either, _| match either {
            futures::future::Either::Left(o) | futures::future::Either::Right(o) => o,
        })
        .boxed()
}

/// Built without QUIC: `quic` is never set (see `Tunnel::start`), so this is TCP alone.
#[cfg(not(feature = "quic"))]
fn with_quic(tcp: BoxedTransport, _: &Keypair, _: usize, _: &LivenessPolicy) -> BoxedTransport {
    tcp
}

pub(crate) fn default_listen(quic: bool) -> Vec<Multiaddr> {
    let port = crate::DEFAULT_PORT;
    let mut out: Vec<Multiaddr> = vec![
        format!("/ip4/0.0.0.0/tcp/{port}").parse().expect("valid"),
        format!("/ip6/::/tcp/{port}").parse().expect("valid"),
    ];
    if quic {
        out.push(format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse().expect("valid"));
        out.push(format!("/ip6/::/udp/{port}/quic-v1").parse().expect("valid"));
    }
    out
}

pub(crate) fn is_quic(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

pub(crate) fn is_ipv6(a: &Multiaddr) -> bool {
    matches!(a.iter().next(), Some(Protocol::Ip6(_)))
}
