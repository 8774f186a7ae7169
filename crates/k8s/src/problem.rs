//! What is wrong with an object: the rule it breaks ([`Problem`]), and
//! which object and where ([`ConvertError`]).

use thiserror::Error;

/// An object the agent cannot use: which one, where, and why.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{object}: {problem}")]
pub struct ConvertError {
    /// The 1-based line in the file of the offending field (or, failing
    /// that, of the object's start); 0 for objects not read from a file.
    pub line: usize,
    /// Kind and, when known, `namespace/name` of the object.
    pub object: String,
    pub problem: Problem,
}

/// A rule an object breaks. `field` is a path such as `spec.ports[1].port`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("the document has no `kind`")]
    MissingKind,
    #[error("`apiVersion` is missing (expected {expected:?})")]
    MissingApiVersion { expected: &'static str },
    #[error("`metadata.name` is missing")]
    MissingName,
    #[error("{field} is required")]
    MissingField { field: String },
    #[error("{field} {value:?} is not a valid {rule}: {why}")]
    InvalidName { field: String, value: String, rule: &'static str, why: &'static str },
    #[error("{field} {value} is out of range (1-65535)")]
    PortOutOfRange { field: String, value: i64 },
    #[error(
        "{field} {value:?} is not a valid port name: {why} (a targetPort is a number 1-65535 or a container port name)"
    )]
    InvalidPortName { field: String, value: String, why: &'static str },
    #[error("{field}: port name {name:?} is used more than once")]
    DuplicatePortName { field: String, name: String },
    #[error("{field}: port {port}/{protocol} is listed more than once")]
    DuplicatePort { field: String, port: u16, protocol: &'static str },
    #[error("{field} has no name; every port must be named when there is more than one")]
    UnnamedPort { field: String },
    #[error("{field} {value:?} is not a valid IP address")]
    BadIp { field: String, value: String },
    #[error("{field} {value:?} is not a valid CIDR (an address and a prefix length, such as 10.244.1.0/24)")]
    BadCidr { field: String, value: String },
    #[error("{field} {value:?} is not an {family} address, as addressType says")]
    WrongFamily { field: String, value: String, family: &'static str },
    #[error("{field}: unknown protocol {value:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol { field: String, value: String },
    #[error("spec.type {value:?} is unknown (expected ClusterIP, NodePort, LoadBalancer or ExternalName)")]
    UnknownServiceType { value: String },
    #[error("addressType {value:?} is unknown (expected IPv4, IPv6 or FQDN)")]
    UnknownAddressType { value: String },
    #[error("spec.clusterIPs[0] {ips:?} does not match spec.clusterIP {ip:?}")]
    ClusterIpMismatch { ip: String, ips: String },
    #[error("spec.clusterIPs: \"None\" (headless) cannot be combined with addresses")]
    HeadlessWithIps,
    #[error("the `kubernetes.io/service-name` label is missing, so the EndpointSlice cannot be linked to its Service")]
    MissingServiceName,
    #[error("{field} has no addresses")]
    NoAddresses { field: String },
    #[error("{field} {value:?} is unknown (expected {expected})")]
    UnknownValue { field: String, value: String, expected: &'static str },
    #[error("{field} {value} is out of range ({min}-{max})")]
    OutOfRange { field: String, value: i64, min: i64, max: i64 },
    #[error("spec.ipFamilies lists {family} twice")]
    DuplicateIpFamily { family: String },
    #[error("spec.ipFamilies has {count} entries; a service has at most two (one per family)")]
    TooManyIpFamilies { count: usize },
    #[error("spec.ipFamilyPolicy SingleStack allows one entry in spec.ipFamilies, not {count}")]
    SingleStackWithTwoFamilies { count: usize },
}
