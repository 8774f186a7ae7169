//! The gateway's TLS handshake series, in the agent's `edgemesh_` registry
//! (beside the front's `edgemesh_gateway_http_*`):
//!
//! - `edgemesh_gateway_tls_handshakes_total{listener,result}`: every TLS
//!   handshake an HTTPS listener ended, by how it ended ([`Handshake`]);
//! - `edgemesh_gateway_tls_handshake_seconds{listener}`: how long the
//!   completed ones took, from the connection's accept to the end of the
//!   handshake (the client's round trips included).
//!
//! `listener` is `namespace/gateway:port`: a handshake belongs to a port
//! (one TLS server per port), and a failed one may have chosen no
//! listener. Values come from the configuration, never from the network;
//! a port's series go when the port does. A port resolves its handles once,
//! at bind: a handshake then costs an atomic addition or two.

use std::sync::Arc;

use edgemesh_metrics::{Counter, Family, Histogram, Registry, Unit};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// How a TLS handshake ended (the `result` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Handshake {
    /// Completed.
    Ok,
    /// No listener of the port has a certificate for the ClientHello's
    /// server name (or for none, without a listener with no hostname).
    NoCertificate,
    /// The port's listeners validate client certificates, and the client
    /// sent none, or one that does not chain to their CAs.
    ClientCertificate,
    /// The client ended the handshake with an alert: most often it does
    /// not trust the certificate served (another CA, expired, another name).
    Rejected,
    /// Not TLS (plain HTTP to an HTTPS port), or a TLS error: no shared
    /// version, cipher suite or protocol, a malformed message.
    Protocol,
    /// Not complete within the handshake timeout (10 s).
    Timeout,
    /// The client closed the connection (or reset it) before the
    /// handshake completed, without an alert (port scans, TCP health checks).
    Closed,
}

impl Handshake {
    pub const ALL: [Handshake; 7] = [
        Handshake::Ok,
        Handshake::NoCertificate,
        Handshake::ClientCertificate,
        Handshake::Rejected,
        Handshake::Protocol,
        Handshake::Timeout,
        Handshake::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::NoCertificate => "no_certificate",
            Handshake::ClientCertificate => "client_certificate",
            Handshake::Rejected => "rejected",
            Handshake::Protocol => "protocol",
            Handshake::Timeout => "timeout",
            Handshake::Closed => "closed",
        }
    }

    /// The result of a handshake that failed with `error` (tokio-rustls
    /// wraps rustls' errors in `InvalidData`).
    pub fn of_error(error: &std::io::Error) -> Handshake {
        use std::io::ErrorKind;
        if let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            return match tls {
                rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => {
                    Handshake::ClientCertificate
                }
                rustls::Error::AlertReceived(_) => Handshake::Rejected,
                _ => Handshake::Protocol,
            };
        }
        match error.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => Handshake::Closed,
            _ => Handshake::Protocol,
        }
    }
}

impl EncodeLabelValue for Handshake {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: Arc<str>,
    result: Handshake,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: Arc<str>,
}

/// Upper bounds of the handshake duration histogram: a loopback handshake
/// takes about a millisecond; a client across a slow uplink, round trips
/// of a few hundred; the timeout is 10 s.
const DURATION_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

type HistogramFamily = Family<ListenerLabel, Histogram, fn() -> Histogram>;

/// The gateway's TLS series.
#[derive(Clone, Debug)]
pub struct GatewayTlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    duration: HistogramFamily,
}

impl GatewayTlsMetrics {
    /// Registers the series into `registry` (the agent's `edgemesh_` one).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let gateway = registry.sub_registry_with_prefix("gateway");
        gateway.register(
            "tls_handshakes",
            "TLS handshakes on the gateway's HTTPS listeners, by listener port and how they ended",
            m.handshakes.clone(),
        );
        gateway.register_with_unit(
            "tls_handshake",
            "Time from a connection's accept to its completed TLS handshake",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    /// Registered nowhere.
    pub fn unregistered() -> Self {
        Self {
            handshakes: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
        }
    }

    /// The handles of `listener` (`namespace/gateway:port`).
    pub fn port(&self, listener: &str) -> PortTlsMetrics {
        let listener: Arc<str> = Arc::from(listener);
        let results = Handshake::ALL.map(|result| {
            self.handshakes.get_or_create(&HandshakeLabels { listener: listener.clone(), result }).clone()
        });
        let duration = self.duration.get_or_create(&ListenerLabel { listener: listener.clone() }).clone();
        PortTlsMetrics { listener, results, duration }
    }

    /// Removes the series of `port` (its listeners went).
    pub fn remove_port(&self, port: &PortTlsMetrics) {
        for result in Handshake::ALL {
            self.handshakes.remove(&HandshakeLabels { listener: port.listener.clone(), result });
        }
        self.duration.remove(&ListenerLabel { listener: port.listener.clone() });
    }
}

/// One port's handles.
#[derive(Clone, Debug)]
pub struct PortTlsMetrics {
    listener: Arc<str>,
    results: [Counter; Handshake::ALL.len()],
    duration: Histogram,
}

impl PortTlsMetrics {
    /// Counts a handshake that ended as `result`, which took `took` when it
    /// completed.
    pub fn record(&self, result: Handshake, took: std::time::Duration) {
        self.results[result as usize].inc();
        if result == Handshake::Ok {
            self.duration.observe(took.as_secs_f64());
        }
    }
}

/// One port's handles, made at its first TLS handshake (a port that never
/// serves HTTPS has no series), and removed with the port.
#[derive(Debug)]
pub struct PortTls {
    metrics: GatewayTlsMetrics,
    listener: String,
    handles: std::sync::OnceLock<PortTlsMetrics>,
}

impl PortTls {
    /// The series of `listener` (`namespace/gateway:port`) in `metrics`.
    pub fn new(metrics: GatewayTlsMetrics, listener: String) -> Self {
        Self { metrics, listener, handles: std::sync::OnceLock::new() }
    }

    pub fn get(&self) -> &PortTlsMetrics {
        self.handles.get_or_init(|| self.metrics.port(&self.listener))
    }

    /// Removes the port's series, if it has any.
    pub fn remove(&self) {
        if let Some(handles) = self.handles.get() {
            self.metrics.remove_port(handles);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The results' order is the handles' index.
    #[test]
    fn every_result_has_its_own_counter() {
        for (i, result) in Handshake::ALL.iter().enumerate() {
            assert_eq!(*result as usize, i, "{result:?}");
        }
        let m = GatewayTlsMetrics::unregistered();
        let port = m.port("shop/edge:443");
        port.record(Handshake::Ok, std::time::Duration::from_millis(3));
        port.record(Handshake::Closed, std::time::Duration::ZERO);
        port.record(Handshake::Closed, std::time::Duration::ZERO);
        let count =
            |result| m.handshakes.get_or_create(&HandshakeLabels { listener: "shop/edge:443".into(), result }).get();
        assert_eq!((count(Handshake::Ok), count(Handshake::Closed), count(Handshake::Protocol)), (1, 2, 0));
    }
}
