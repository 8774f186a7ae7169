//! The proxy's Prometheus metrics, per service and port (issue #14).
//!
//! [`ProxyMetrics`] owns the families, registered once into the agent's
//! `edgemesh_` registry. The listener reconciler resolves a service port's
//! label set once, when it makes the port's pool, and the pool keeps the
//! resulting handles ([`PortMetrics`]); a connection or a datagram then
//! costs a few atomic additions on handles it already has, never a lookup.
//!
//! The `service` label goes through [`BoundedLabels`] (`metrics.maxServices`):
//! services past the cap share the `other` series. When a service port goes
//! away its series are removed (unless they are `other`'s, which other
//! services still count into), and when the service's last listener goes its
//! label is released, so a churning cluster does not grow the scrape.
//! Connections still open on a removed port count into handles no longer
//! exported.

use std::sync::{Arc, LazyLock};

use edgemesh_core::{Protocol, ServiceKey};
use edgemesh_metrics::{BoundedLabels, Counter, Family, Gauge, Histogram, OTHER, Registry, Unit};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::connection::Cut;
use crate::error::ProxyError;

/// Upper bounds of the connect latency histogram: 0.5 ms (loopback) to 10 s
/// (a slow tunnel dial through a relay).
const CONNECT_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds of the connection duration histogram: 10 ms (one request)
/// to an hour (streams, tunnels of their own).
const DURATION_BUCKETS: [f64; 13] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0];

/// A service port's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServicePort {
    /// `namespace/name`, or `other` past `metrics.maxServices`.
    pub service: Arc<str>,
    pub port: u16,
}

/// A failed connection's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedConnection {
    pub service: Arc<str>,
    pub port: u16,
    pub reason: FailReason,
}

/// Why an accepted connection was not forwarded (the `reason` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FailReason {
    /// The last endpoint tried refused (here or, through the tunnel, on its
    /// node) or could not be reached from this node (no route).
    Refused,
    /// The last endpoint tried did not accept within `proxy.connectTimeout`.
    Timeout,
    /// The service port has no ready endpoint (of the connection's family).
    NoEndpoints,
    /// The last endpoint tried was on another node, and the tunnel to it
    /// failed or timed out.
    Tunnel,
    /// Over `proxy.maxConnections`, or out of kernel resources to register
    /// the connection.
    Limit,
}

impl FailReason {
    const ALL: [FailReason; 5] =
        [FailReason::Refused, FailReason::Timeout, FailReason::NoEndpoints, FailReason::Tunnel, FailReason::Limit];

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Refused => "refused",
            FailReason::Timeout => "timeout",
            FailReason::NoEndpoints => "no_endpoints",
            FailReason::Tunnel => "tunnel",
            FailReason::Limit => "limit",
        }
    }

    /// The reason a connection that failed with `error` is counted under.
    pub fn of(error: &ProxyError) -> Self {
        match error {
            ProxyError::AllBackendsFailed { last, .. } => Self::of(last),
            ProxyError::Refused { .. } | ProxyError::Connect { .. } | ProxyError::RemoteRefused { .. } => {
                FailReason::Refused
            }
            ProxyError::TimedOut { .. } => FailReason::Timeout,
            ProxyError::Remote { .. } | ProxyError::RemoteTimedOut { .. } => FailReason::Tunnel,
            ProxyError::NoBackends { .. } | ProxyError::NoBackendsInFamily { .. } => FailReason::NoEndpoints,
            // A listener's error and a UDP one: no TCP connection fails with
            // them; counted as resource limits should that change.
            ProxyError::OverLimit { .. }
            | ProxyError::ServiceOverLimit { .. }
            | ProxyError::UdpSessionLimit { .. }
            | ProxyError::Bind { .. } => FailReason::Limit,
        }
    }
}

impl EncodeLabelValue for FailReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// A connection the proxy cut at a lifetime bound (the `timeout` label:
/// `idle` or `max_duration`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CutConnection {
    service: Arc<str>,
    port: u16,
    timeout: Cut,
}

impl Cut {
    const ALL: [Cut; 2] = [Cut::Idle, Cut::MaxDuration];

    fn as_str(self) -> &'static str {
        match self {
            Cut::Idle => "idle",
            Cut::MaxDuration => "max_duration",
        }
    }
}

impl EncodeLabelValue for Cut {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Every family of the proxy, and the bound on the `service` label.
#[derive(Debug)]
pub struct ProxyMetrics {
    services: Arc<BoundedLabels>,
    tcp_opened: Family<ServicePort, Counter>,
    tcp_active: Family<ServicePort, Gauge>,
    tcp_failed: Family<FailedConnection, Counter>,
    tcp_cut: Family<CutConnection, Counter>,
    tcp_sent: Family<ServicePort, Counter>,
    tcp_received: Family<ServicePort, Counter>,
    tcp_connect: HistogramFamily<ServicePort>,
    tcp_duration: HistogramFamily<ServicePort>,
    ejections: Family<ServicePort, Counter>,
    udp_opened: Family<ServicePort, Counter>,
    udp_active: Family<ServicePort, Gauge>,
    udp_sent: Family<ServicePort, Counter>,
    udp_received: Family<ServicePort, Counter>,
    udp_dropped: Family<ServicePort, Counter>,
    udp_evicted: Family<ServicePort, Counter>,
    /// Intercepted connections whose original destination is no service port.
    pub(crate) unrouted: Counter,
}

impl ProxyMetrics {
    /// Registers the proxy's metrics into `registry` (the agent's
    /// `edgemesh_` registry), with at most `max_services` distinct
    /// `service` labels.
    pub fn register(registry: &mut Registry, max_services: usize) -> Self {
        let m = Self {
            services: BoundedLabels::new("service", max_services, registry),
            tcp_opened: Family::default(),
            tcp_active: Family::default(),
            tcp_failed: Family::default(),
            tcp_cut: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_connect: Family::new_with_constructor(|| Histogram::new(CONNECT_BUCKETS)),
            tcp_duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            ejections: Family::default(),
            udp_opened: Family::default(),
            udp_active: Family::default(),
            udp_sent: Family::default(),
            udp_received: Family::default(),
            udp_dropped: Family::default(),
            udp_evicted: Family::default(),
            unrouted: Counter::default(),
        };
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected by passive health (a failed connect, an ICMP refusal, a failed tunnel open)",
            m.ejections.clone(),
        );
        let tcp = registry.sub_registry_with_prefix("tcp");
        tcp.register("connections_opened", "TCP connections accepted for the service port", m.tcp_opened.clone());
        tcp.register("connections_active", "TCP connections being connected or forwarded", m.tcp_active.clone());
        tcp.register("connections_failed", "Accepted TCP connections not forwarded, by reason", m.tcp_failed.clone());
        tcp.register(
            "connections_timed_out",
            "Forwarded TCP connections closed at proxy.idleTimeout (idle) or proxy.maxConnectionDuration (max_duration)",
            m.tcp_cut.clone(),
        );
        let tcp_bytes = [
            ("sent", "Bytes forwarded from clients to endpoints", &m.tcp_sent),
            ("received", "Bytes forwarded from endpoints to clients", &m.tcp_received),
        ];
        for (name, help, family) in tcp_bytes {
            tcp.register_with_unit(name, help, Unit::Bytes, family.clone());
        }
        let durations = [
            (
                "connect_duration",
                "Time to connect to an endpoint, retries included, of connections that were forwarded",
                &m.tcp_connect,
            ),
            ("connection_duration", "Lifetime of forwarded TCP connections, from accept to close", &m.tcp_duration),
        ];
        for (name, help, family) in durations {
            tcp.register_with_unit(name, help, Unit::Seconds, family.clone());
        }
        let udp = registry.sub_registry_with_prefix("udp");
        udp.register("sessions_opened", "UDP sessions (one per client address) opened", m.udp_opened.clone());
        udp.register("sessions_active", "UDP sessions open now", m.udp_active.clone());
        let udp_bytes = [
            ("sent", "Datagram bytes sent from clients to endpoints", &m.udp_sent),
            ("received", "Datagram bytes relayed from endpoints to clients", &m.udp_received),
        ];
        for (name, help, family) in udp_bytes {
            udp.register_with_unit(name, help, Unit::Bytes, family.clone());
        }
        udp.register(
            "dropped_datagrams",
            "Datagrams dropped: no endpoint, session limit, full buffers",
            m.udp_dropped.clone(),
        );
        udp.register(
            "sessions_evicted",
            "UDP sessions closed to make room for a new client at proxy.maxUdpSessions (the port's longest-idle)",
            m.udp_evicted.clone(),
        );
        registry.sub_registry_with_prefix("proxy").register(
            "unrouted_connections",
            "Intercepted TCP connections whose original destination is no service port (reset)",
            m.unrouted.clone(),
        );
        m
    }

    /// Registered nowhere: for a proxy built without the agent's registry.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default(), usize::MAX)
    }

    /// The `service` label of `key`: itself, or `other` past the cap. Asked
    /// when a service gets its first listener; its pools keep the answer.
    pub(crate) fn service_label(&self, key: &ServiceKey) -> Arc<str> {
        self.services.label(&key.to_string())
    }

    /// `key` has no listener left: its label slot is free for another.
    pub(crate) fn release_service(&self, key: &ServiceKey) {
        self.services.release(&key.to_string());
    }

    /// The handles of one service port (`protocol`'s, plus the ejections
    /// both protocols share).
    pub(crate) fn port(&self, service: Arc<str>, port: u16, protocol: Protocol) -> PortMetrics {
        let labels = ServicePort { service, port };
        let (mut tcp, mut udp) = (None, None);
        match protocol {
            Protocol::Udp => {
                udp = Some(Box::new(UdpPort {
                    opened: self.udp_opened.get_or_create_owned(&labels),
                    active: self.udp_active.get_or_create_owned(&labels),
                    sent: self.udp_sent.get_or_create_owned(&labels),
                    received: self.udp_received.get_or_create_owned(&labels),
                    dropped: self.udp_dropped.get_or_create_owned(&labels),
                    evicted: self.udp_evicted.get_or_create_owned(&labels),
                }))
            }
            _ => {
                let failed = FailReason::ALL.map(|reason| {
                    self.tcp_failed.get_or_create_owned(&FailedConnection {
                        service: labels.service.clone(),
                        port,
                        reason,
                    })
                });
                let cut = Cut::ALL.map(|timeout| {
                    self.tcp_cut.get_or_create_owned(&CutConnection { service: labels.service.clone(), port, timeout })
                });
                tcp = Some(Box::new(TcpPort {
                    opened: self.tcp_opened.get_or_create_owned(&labels),
                    active: self.tcp_active.get_or_create_owned(&labels),
                    failed,
                    cut,
                    bytes: [self.tcp_sent.get_or_create_owned(&labels), self.tcp_received.get_or_create_owned(&labels)],
                    connect: self.tcp_connect.get_or_create_owned(&labels),
                    duration: self.tcp_duration.get_or_create_owned(&labels),
                }))
            }
        }
        let ejections = self.ejections.get_or_create_owned(&labels);
        PortMetrics { service: labels.service, ejections, tcp, udp }
    }

    /// Removes the series of `service`'s `port` for `protocol` (and the
    /// shared ejections when `port_gone`: no protocol serves the port any
    /// more). `other`'s series stay: other services count into them.
    pub(crate) fn remove_port(&self, service: &Arc<str>, port: u16, protocol: Protocol, port_gone: bool) {
        if &**service == OTHER {
            return;
        }
        let labels = ServicePort { service: service.clone(), port };
        match protocol {
            Protocol::Udp => {
                for family in
                    [&self.udp_opened, &self.udp_sent, &self.udp_received, &self.udp_dropped, &self.udp_evicted]
                {
                    family.remove(&labels);
                }
                self.udp_active.remove(&labels);
            }
            _ => {
                for family in [&self.tcp_opened, &self.tcp_sent, &self.tcp_received] {
                    family.remove(&labels);
                }
                self.tcp_active.remove(&labels);
                self.tcp_connect.remove(&labels);
                self.tcp_duration.remove(&labels);
                for reason in FailReason::ALL {
                    self.tcp_failed.remove(&FailedConnection { service: service.clone(), port, reason });
                }
                for timeout in Cut::ALL {
                    self.tcp_cut.remove(&CutConnection { service: service.clone(), port, timeout });
                }
            }
        }
        if port_gone {
            self.ejections.remove(&labels);
        }
    }
}

/// A TCP service port's handles.
#[derive(Debug)]
pub(crate) struct TcpPort {
    pub(crate) opened: Counter,
    pub(crate) active: Gauge,
    /// Indexed by [`FailReason`] (in [`FailReason::ALL`]'s order).
    failed: [Counter; 5],
    /// Indexed by [`Cut`] (in [`Cut::ALL`]'s order).
    cut: [Counter; 2],
    /// Bytes sent (client to endpoint) and received (endpoint to client).
    pub(crate) bytes: [Counter; 2],
    pub(crate) connect: Histogram,
    pub(crate) duration: Histogram,
}

impl TcpPort {
    pub(crate) fn failed(&self, reason: FailReason) -> &Counter {
        &self.failed[reason as usize]
    }

    pub(crate) fn cut(&self, cut: Cut) -> &Counter {
        &self.cut[cut as usize]
    }

    fn detached() -> Self {
        Self {
            opened: Counter::default(),
            active: Gauge::default(),
            failed: Default::default(),
            cut: Default::default(),
            bytes: Default::default(),
            connect: Histogram::new(CONNECT_BUCKETS),
            duration: Histogram::new(DURATION_BUCKETS),
        }
    }
}

/// A UDP service port's handles.
#[derive(Debug, Default)]
pub(crate) struct UdpPort {
    pub(crate) opened: Counter,
    pub(crate) active: Gauge,
    pub(crate) sent: Counter,
    pub(crate) received: Counter,
    pub(crate) dropped: Counter,
    /// Sessions closed at `proxy.maxUdpSessions` to make room for a new client.
    pub(crate) evicted: Counter,
}

/// Counts that go nowhere, for a pool made without the proxy's metrics
/// (unit tests) or asked for the other protocol's handles.
static DETACHED_TCP: LazyLock<TcpPort> = LazyLock::new(TcpPort::detached);
static DETACHED_UDP: LazyLock<UdpPort> = LazyLock::new(UdpPort::default);

/// What one pool (service port and family) counts into; the pools of both
/// families of a port share the series.
#[derive(Debug)]
pub struct PortMetrics {
    /// The `service` label the port was given (kept for the service's other
    /// ports and for removal).
    pub(crate) service: Arc<str>,
    pub(crate) ejections: Counter,
    tcp: Option<Box<TcpPort>>,
    udp: Option<Box<UdpPort>>,
}

impl PortMetrics {
    /// Handles that no registry reads.
    pub fn detached() -> Self {
        Self { service: Arc::from(""), ejections: Counter::default(), tcp: None, udp: None }
    }

    pub(crate) fn tcp(&self) -> &TcpPort {
        self.tcp.as_deref().unwrap_or(&DETACHED_TCP)
    }

    pub(crate) fn udp(&self) -> &UdpPort {
        self.udp.as_deref().unwrap_or(&DETACHED_UDP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_reason_an_operator_expects() {
        let addr = "10.0.0.7:80".parse().unwrap();
        let timeout = std::time::Duration::from_secs(2);
        let refused = ProxyError::Refused { addr };
        let all = |last| ProxyError::AllBackendsFailed {
            service: ServiceKey::new("a", "b"),
            port: 80,
            tried: 2,
            last: Box::new(last),
        };
        assert_eq!(FailReason::of(&all(refused)), FailReason::Refused);
        assert_eq!(FailReason::of(&all(ProxyError::TimedOut { addr, timeout })), FailReason::Timeout);
        let tunnel = ProxyError::RemoteTimedOut { node: "b".into(), addr, timeout };
        assert_eq!(FailReason::of(&all(tunnel)), FailReason::Tunnel);
        let remote_refused = ProxyError::remote("b", addr, std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(FailReason::of(&remote_refused), FailReason::Refused, "the tunnel worked; the pod refused");
        let lost = ProxyError::remote("b", addr, std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(FailReason::of(&lost), FailReason::Tunnel);
        let none = ProxyError::NoBackends { service: ServiceKey::new("a", "b"), port: 80 };
        assert_eq!(FailReason::of(&none), FailReason::NoEndpoints);
        assert_eq!(FailReason::of(&ProxyError::OverLimit { addr, max: 1 }), FailReason::Limit);
        for (reason, i) in FailReason::ALL.iter().zip(0..) {
            assert_eq!(*reason as usize, i, "failed[] is indexed by the discriminant");
        }
    }
}
