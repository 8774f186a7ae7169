//! The HTTP front's Prometheus series, in the agent's `edgemesh_` registry:
//! `edgemesh_http_requests_total{service,port,code}`,
//! `edgemesh_http_request_duration_seconds{service,port}`,
//! `edgemesh_http_connections_active{service,port}` and
//! `edgemesh_http_limit_hits_total{limit}`.
//!
//! The `service` label is the one the proxy gave the port's pool (bounded by
//! `metrics.maxServices` through the proxy's `BoundedLabels`), so both
//! layers name a service alike and share its `other` fold. A client
//! connection resolves its port's handles once; a request then costs a few
//! atomic additions.

use std::sync::Arc;

use edgemesh_metrics::{Counter, Family, Gauge, Histogram, OTHER, Registry, Unit};
use hyper::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use super::limits::{LimitHits, LimitLabel};

/// Upper bounds of the request duration histogram: 1 ms (a local endpoint)
/// to a minute (long polls; streams go past it).
const DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

/// A service port's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServicePort {
    pub service: Arc<str>,
    pub port: u16,
}

/// A request's series: its port and the class of its status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: Arc<str>,
    pub port: u16,
    pub code: CodeClass,
}

/// The class of a response status (the `code` label): `1xx` .. `5xx`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CodeClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl CodeClass {
    const ALL: [CodeClass; 5] = [
        CodeClass::Informational,
        CodeClass::Success,
        CodeClass::Redirection,
        CodeClass::ClientError,
        CodeClass::ServerError,
    ];

    /// Statuses past 599 (which no endpoint should send) count as `5xx`.
    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            ..200 => CodeClass::Informational,
            200..300 => CodeClass::Success,
            300..400 => CodeClass::Redirection,
            400..500 => CodeClass::ClientError,
            _ => CodeClass::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        ["1xx", "2xx", "3xx", "4xx", "5xx"][self as usize]
    }
}

impl EncodeLabelValue for CodeClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Every family of the front.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<ServicePort>,
    active: Family<ServicePort, Gauge>,
    /// Hits of each limit (counted and logged).
    pub limits: LimitHits,
}

impl HttpMetrics {
    /// Registers the front's series into `registry` (the agent's
    /// `edgemesh_` registry).
    pub fn register(registry: &mut Registry) -> Self {
        let limit_hits = Family::<LimitLabel, Counter>::default();
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            active: Family::default(),
            limits: LimitHits::new(&limit_hits),
        };
        let http = registry.sub_registry_with_prefix("http");
        http.register(
            "requests",
            "Requests to HTTP service ports answered, by status class (errors the agent answered included)",
            m.requests.clone(),
        );
        http.register_with_unit(
            "request_duration",
            "Time from a request's head to the end of its response body",
            Unit::Seconds,
            m.duration.clone(),
        );
        http.register("connections_active", "Client connections to HTTP service ports open now", m.active.clone());
        http.register("limit_hits", "Clients that hit a limit of the http section, by limit", limit_hits);
        m
    }

    /// Registered nowhere.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Removes the series of `service`'s `port` (its last listener went);
    /// `other`'s stay: other services count into them.
    pub fn remove_port(&self, service: &Arc<str>, port: u16) {
        if &**service == OTHER {
            return;
        }
        let labels = ServicePort { service: service.clone(), port };
        for code in CodeClass::ALL {
            self.requests.remove(&RequestLabels { service: service.clone(), port, code });
        }
        self.duration.remove(&labels);
        self.active.remove(&labels);
    }

    /// The handles of one service port, for one client connection.
    pub fn port(&self, service: Arc<str>, port: u16) -> PortHandles {
        let labels = ServicePort { service, port };
        PortHandles {
            requests: CodeClass::ALL.map(|code| {
                self.requests.get_or_create_owned(&RequestLabels { service: labels.service.clone(), port, code })
            }),
            duration: self.duration.get_or_create_owned(&labels),
            active: self.active.get_or_create_owned(&labels),
        }
    }
}

/// What one client connection counts into.
#[derive(Debug)]
pub struct PortHandles {
    /// Indexed by [`CodeClass`].
    requests: [Counter; 5],
    pub duration: Histogram,
    pub active: Gauge,
}

impl PortHandles {
    pub fn answered(&self, status: StatusCode) {
        self.requests[CodeClass::of(status) as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn a_removed_port_loses_its_series_but_other_keeps_them() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        for service in ["shop/web", OTHER] {
            let handles = metrics.port(Arc::from(service), 80);
            handles.answered(StatusCode::OK);
            handles.duration.observe(0.01);
        }
        let text = scrape(&registry);
        assert!(text.contains("http_requests_total{service=\"shop/web\",port=\"80\",code=\"2xx\"} 1"), "{text}");
        metrics.remove_port(&Arc::from("shop/web"), 80);
        metrics.remove_port(&Arc::from(OTHER), 80);
        let text = scrape(&registry);
        assert!(!text.contains("shop/web"), "{text}");
        assert!(text.contains("http_requests_total{service=\"other\",port=\"80\",code=\"2xx\"} 1"), "{text}");
    }

    #[test]
    fn statuses_fall_in_their_class() {
        let class = |code| CodeClass::of(StatusCode::from_u16(code).unwrap()).as_str();
        assert_eq!(class(101), "1xx");
        assert_eq!(class(200), "2xx");
        assert_eq!(class(304), "3xx");
        assert_eq!(class(431), "4xx");
        assert_eq!(class(504), "5xx");
        assert_eq!(class(999), "5xx");
        for (code, i) in CodeClass::ALL.iter().zip(0..) {
            assert_eq!(*code as usize, i, "requests[] is indexed by the discriminant");
        }
    }
}
