//! Builders for objects, to keep tests and benchmarks short.
//!
//! ```
//! use edgemesh_core::build;
//! let svc = build::service("default", "web").port("http", 80, 8080).object();
//! let eps = build::slice("default", "web-abc", "web").endpoint("10.0.0.1", "node-a").port("http", 8080).object();
//! let node = build::node("node-a").peer_id("12D3KooW...").address("192.168.1.10").object();
//! ```

use std::net::IpAddr;

use crate::node::PEER_ID_ANNOTATION;
use crate::object::{
    EndpointPortSpec, EndpointSet, EndpointSpec, EndpointSubset, NodeObject, Object, ObjectKind, ObjectMeta,
    ServiceObject, ServicePortSpec,
};
use crate::service::{InternalTrafficPolicy, Protocol, SessionAffinity, TargetPort, TrafficDistribution};

/// Starts a ClusterIP service with no ports.
pub fn service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder(ServiceObject {
        meta: ObjectMeta { namespace: namespace.into(), name: name.into(), ..Default::default() },
        cluster_ips: Vec::new(),
        headless: false,
        ports: Vec::new(),
        service_type: "ClusterIP".into(),
        ..Default::default()
    })
}

pub struct ServiceBuilder(pub ServiceObject);

impl ServiceBuilder {
    /// A TCP port with a numeric target port.
    pub fn port(mut self, name: &str, port: u16, target: u16) -> Self {
        self.0.ports.push(ServicePortSpec {
            name: name.into(),
            protocol: Protocol::Tcp,
            port,
            target_port: TargetPort::Number(target),
            node_port: None,
            app_protocol: None,
        });
        self
    }

    /// A TCP port whose target is a named container port.
    pub fn named_target(mut self, name: &str, port: u16, target: &str) -> Self {
        self.0.ports.push(ServicePortSpec {
            name: name.into(),
            protocol: Protocol::Tcp,
            port,
            target_port: TargetPort::Name(target.into()),
            node_port: None,
            app_protocol: None,
        });
        self
    }

    pub fn udp_port(mut self, name: &str, port: u16, target: u16) -> Self {
        self.0.ports.push(ServicePortSpec {
            name: name.into(),
            protocol: Protocol::Udp,
            port,
            target_port: TargetPort::Number(target),
            node_port: None,
            app_protocol: None,
        });
        self
    }

    /// Sets `appProtocol` on the port added last.
    pub fn app_protocol(mut self, app_protocol: &str) -> Self {
        self.0.ports.last_mut().expect("a port to set appProtocol on").app_protocol = Some(app_protocol.into());
        self
    }

    pub fn headless(mut self) -> Self {
        self.0.headless = true;
        self
    }

    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0.meta.annotations.insert(k.into(), v.into());
        self
    }

    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.0.cluster_ips.push(ip.parse().expect("valid IP"));
        self
    }

    /// `sessionAffinity: ClientIP` with this timeout.
    pub fn client_ip_affinity(mut self, timeout_seconds: u32) -> Self {
        self.0.session_affinity = SessionAffinity::ClientIp { timeout_seconds };
        self
    }

    pub fn internal_traffic_policy(mut self, policy: InternalTrafficPolicy) -> Self {
        self.0.internal_traffic_policy = policy;
        self
    }

    pub fn traffic_distribution(mut self, d: TrafficDistribution) -> Self {
        self.0.traffic_distribution = Some(d);
        self
    }

    pub fn object(self) -> Object {
        Object::Service(self.0)
    }
}

/// Starts an EndpointSlice for `service` with no endpoints.
pub fn slice(namespace: &str, name: &str, service: &str) -> EndpointSetBuilder {
    EndpointSetBuilder(EndpointSet {
        meta: ObjectMeta { namespace: namespace.into(), name: name.into(), ..Default::default() },
        kind: ObjectKind::EndpointSlice,
        service_name: service.into(),
        subsets: vec![EndpointSubset::default()],
    })
}

pub struct EndpointSetBuilder(pub EndpointSet);

impl EndpointSetBuilder {
    fn subset(&mut self) -> &mut EndpointSubset {
        self.0.subsets.last_mut().expect("one subset")
    }

    pub fn endpoint(mut self, addr: &str, node: &str) -> Self {
        self.push(addr, node, true, None);
        self
    }

    pub fn not_ready(mut self, addr: &str, node: &str) -> Self {
        self.push(addr, node, false, None);
        self
    }

    pub fn hostname(mut self, addr: &str, node: &str, hostname: &str) -> Self {
        self.push(addr, node, true, Some(hostname));
        self
    }

    fn push(&mut self, addr: &str, node: &str, ready: bool, hostname: Option<&str>) {
        let addr: IpAddr = addr.parse().expect("valid IP");
        self.subset().endpoints.push(EndpointSpec {
            addresses: vec![addr],
            ready,
            node_name: Some(node.into()),
            hostname: hostname.map(Into::into),
        });
    }

    pub fn port(mut self, name: &str, port: u16) -> Self {
        self.subset().ports.push(EndpointPortSpec { name: name.into(), port, protocol: Protocol::Tcp });
        self
    }

    pub fn udp_port(mut self, name: &str, port: u16) -> Self {
        self.subset().ports.push(EndpointPortSpec { name: name.into(), port, protocol: Protocol::Udp });
        self
    }

    pub fn object(self) -> Object {
        Object::Endpoints(self.0)
    }
}

/// Starts a Node with no annotations, no addresses and no pod CIDRs.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(NodeObject { meta: ObjectMeta { name: name.into(), ..Default::default() }, ..Default::default() })
}

pub struct NodeBuilder(pub NodeObject);

impl NodeBuilder {
    /// The peer ID annotation, written as given (untrimmed).
    pub fn peer_id(self, peer_id: &str) -> Self {
        self.annotation(PEER_ID_ANNOTATION, peer_id)
    }

    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0.meta.annotations.insert(k.into(), v.into());
        self
    }

    pub fn address(mut self, addr: &str) -> Self {
        self.0.addresses.push(addr.parse().expect("valid IP"));
        self
    }

    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        self.0.pod_cidrs.push(cidr.parse().expect("valid CIDR"));
        self
    }

    pub fn object(self) -> Object {
        Object::Node(self.0)
    }
}
