//! A Gateway's listeners: which can be served, on which port, as what,
//! with which certificates, and each one's conditions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::rules::granted;
use super::{
    AllowedNamespaces, Condition, GatewayStatus, ListenerStatus, ObjectRef, Protocol, ServedListener, condition,
};
use crate::hostname::Hostname;
use crate::schema::{GROUP, Gateway, Listener, ReferenceGrant};
use crate::tls::{self, CertificateStore, SniCertificates};

/// The ports taken so far (by protocol and hostname) across Gateways, and
/// the HTTPS ports' certificates.
pub(super) struct Ports<'a> {
    taken: BTreeMap<u16, (Protocol, BTreeSet<Hostname>)>,
    certificates: &'a dyn CertificateStore,
    grants: &'a [ReferenceGrant],
    provider: Arc<CryptoProvider>,
    served_certificates: BTreeMap<u16, SniCertificates>,
    /// HTTPS ports and whether their listeners validate client
    /// certificates, with the check (one rustls config per port: all of a
    /// port's listeners validate, or none).
    client_validation: BTreeMap<u16, Option<Arc<dyn ClientCertVerifier>>>,
    /// Only HTTP listeners are served (the HTTP-only [`crate::compile()`]).
    http_only: bool,
}

/// The TLS material of an HTTPS port: certificates by hostname, and the
/// check of client certificates of the ports that validate them.
pub(super) type PortTls = (BTreeMap<u16, SniCertificates>, BTreeMap<u16, Arc<dyn ClientCertVerifier>>);

/// What is wrong with a listener: `Accepted: False` problems keep it from
/// being served; `ResolvedRefs: False` ones may not.
#[derive(Default)]
struct Problems {
    accepted: Vec<Condition>,
    refs: Vec<Condition>,
}

impl<'a> Ports<'a> {
    pub(super) fn new(certificates: &'a dyn CertificateStore, grants: &'a [ReferenceGrant], http_only: bool) -> Self {
        Self {
            http_only,
            taken: BTreeMap::new(),
            certificates,
            grants,
            provider: tls::provider(),
            served_certificates: BTreeMap::new(),
            client_validation: BTreeMap::new(),
        }
    }

    pub(super) fn into_tls(self) -> PortTls {
        let validated = self.client_validation.into_iter().filter_map(|(port, v)| Some((port, v?))).collect();
        (self.served_certificates, validated)
    }

    pub(super) fn compile_gateway(
        &mut self,
        gateway: &Gateway,
        id: &ObjectRef,
        served: &mut Vec<ServedListener>,
    ) -> GatewayStatus {
        let generation = gateway.metadata.generation;
        let mut status = GatewayStatus::default();
        let mut names = BTreeSet::new();
        let mut programmed = 0;
        for (index, l) in gateway.spec.listeners.iter().enumerate() {
            let mut problems = Problems::default();
            let mut problem = |reason: &'static str, message: String| {
                problems.accepted.push(condition("Accepted", false, reason, message, generation));
            };
            let port = u16::try_from(l.port).ok().filter(|p| *p > 0);
            let hostname = l.hostname.as_deref().map(Hostname::parse).transpose();
            let protocol = protocol(l).and_then(|p| match p {
                Protocol::Http => Ok(p),
                _ if self.http_only => Err((
                    "UnsupportedProtocol",
                    format!(
                        "listener {}: protocol {:?} is not served by this compile (HTTP only; compile_objects serves HTTPS, TLS and TCP)",
                        l.name, l.protocol
                    ),
                )),
                _ => Ok(p),
            });
            if l.name.is_empty() || !names.insert(l.name.clone()) {
                problem("Invalid", format!("listener {index}: a name, unique in the Gateway, is required"));
            } else if port.is_none() {
                problem("Invalid", format!("listener {}: port {} is out of range (1-65535)", l.name, l.port));
            } else if let Err(why) = &hostname {
                problem("Invalid", format!("listener {}: hostname: {why}", l.name));
            } else if let Err((reason, why)) = &protocol {
                problem(reason, why.clone());
            }
            let namespaces =
                match l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()).and_then(|n| n.from.as_deref()) {
                    None | Some("Same") => Some(AllowedNamespaces::Same),
                    Some("All") => Some(AllowedNamespaces::All),
                    Some(other) => {
                        problem(
                            "UnsupportedValue",
                            format!(
                                "listener {}: allowedRoutes.namespaces.from {other:?} is not supported (Same or All)",
                                l.name
                            ),
                        );
                        None
                    }
                };
            let protocol = protocol.ok();
            let kinds = protocol.map(|p| route_kinds(l, p, &mut problems.refs, generation)).unwrap_or_default();
            let (certificate, validation) = match protocol {
                Some(Protocol::Https) if problems.accepted.is_empty() => (
                    self.certificate(l, &id.namespace, &mut problems.refs, generation),
                    self.client_validation(l, &id.namespace, &mut problems.refs, generation),
                ),
                _ => (None, None),
            };
            // A listener that asks for client validation and cannot have it
            // is not served without it.
            let validation_ok = !matches!(validation, Some(None));
            let validation = validation.flatten();
            let servable =
                !kinds.is_empty() && (protocol != Some(Protocol::Https) || (certificate.is_some() && validation_ok));
            let mut conditions = problems.accepted;
            let resolved = problems.refs.is_empty();
            conditions.extend(problems.refs);
            if conditions.iter().all(|c| c.kind != "Accepted")
                && servable
                && let (Some(port), Ok(hostname), Some(namespaces), Some(protocol)) =
                    (port, hostname, namespaces, protocol)
            {
                // A TCP listener's hostname means nothing (no name on the wire).
                let hostname =
                    if protocol == Protocol::Tcp { Hostname::Any } else { hostname.unwrap_or(Hostname::Any) };
                let (taken, hosts) = self.taken.entry(port).or_insert_with(|| (protocol, BTreeSet::new()));
                if *taken != protocol {
                    conditions.push(condition(
                        "Conflicted",
                        true,
                        "ProtocolConflict",
                        format!("port {port} is served as {}", protocol_name(*taken)),
                        generation,
                    ));
                } else if !hosts.insert(hostname.clone()) {
                    conditions.push(condition(
                        "Conflicted",
                        true,
                        "HostnameConflict",
                        format!("another listener serves port {port} for hostname {hostname}"),
                        generation,
                    ));
                } else if protocol == Protocol::Https
                    && self.client_validation.get(&port).is_some_and(|served| served.is_some() != validation.is_some())
                {
                    hosts.remove(&hostname);
                    conditions.push(condition(
                        "Conflicted",
                        true,
                        "ClientValidationConflict",
                        format!(
                            "another listener on port {port} {} client certificates; a port validates them for all its listeners or for none",
                            if validation.is_some() { "does not validate" } else { "validates" }
                        ),
                        generation,
                    ));
                } else {
                    if protocol == Protocol::Https {
                        self.client_validation.entry(port).or_insert_with(|| validation.clone());
                    }
                    if let Some(key) = certificate {
                        let group = l.tls_group.as_deref().unwrap_or(&l.name);
                        let listener = Arc::from(format!("{}/{}/{group}", id.namespace, id.name));
                        self.served_certificates.entry(port).or_default().push(hostname.clone(), listener, key);
                    }
                    served.push(ServedListener {
                        gateway: id.clone(),
                        index,
                        name: l.name.clone(),
                        port,
                        protocol,
                        hostname,
                        namespaces,
                        kinds: kinds.clone(),
                        attached: 0,
                    });
                    programmed += 1;
                    conditions.push(condition("Accepted", true, "Accepted", "", generation));
                    if resolved {
                        conditions.push(condition("ResolvedRefs", true, "ResolvedRefs", "", generation));
                    }
                    conditions.push(condition("Programmed", true, "Programmed", "", generation));
                }
            }
            if !conditions.iter().any(|c| c.kind == "Programmed") {
                conditions.push(condition(
                    "Programmed",
                    false,
                    "Invalid",
                    "not served: see the other conditions",
                    generation,
                ));
            }
            status.listeners.push(ListenerStatus {
                name: l.name.clone(),
                port,
                supported_kinds: kinds,
                attached_routes: 0,
                conditions,
            });
        }
        status.conditions.push(condition("Accepted", true, "Accepted", "", generation));
        status.conditions.push(if programmed > 0 {
            condition("Programmed", true, "Programmed", format!("{programmed} listener(s) served"), generation)
        } else {
            condition("Programmed", false, "Invalid", "no listener can be served", generation)
        });
        status
    }

    /// An HTTPS listener's `tls.frontendValidation`: `None` when it asks
    /// for none; `Some(None)` when it asks and its CAs cannot be used (each
    /// problem a `ResolvedRefs: False` condition in `refs`).
    fn client_validation(
        &self,
        l: &Listener,
        gateway_namespace: &str,
        refs: &mut Vec<Condition>,
        generation: Option<i64>,
    ) -> Option<Option<Arc<dyn ClientCertVerifier>>> {
        let validation = l.tls.as_ref()?.frontend_validation.as_ref()?;
        let mut problem = |message: String| {
            refs.push(condition("ResolvedRefs", false, "InvalidCACertificateRef", message, generation));
        };
        let mut cas = Vec::new();
        for (i, r) in validation.ca_certificate_refs.iter().enumerate() {
            let at = format!("listener {}: tls.frontendValidation.caCertificateRefs[{i}]", l.name);
            let group = r.group.as_deref().unwrap_or("");
            let kind = r.kind.as_deref().unwrap_or("Secret");
            if !group.is_empty() || kind != "Secret" {
                problem(format!("{at}: {kind} (group {group:?}) is not read; name a Secret with a ca.crt"));
                continue;
            }
            let namespace = r.namespace.as_deref().unwrap_or(gateway_namespace);
            if namespace != gateway_namespace
                && !granted(self.grants, "Gateway", gateway_namespace, namespace, "Secret", &r.name)
            {
                problem(format!("{at}: Secret {namespace}/{} is in another namespace and not granted", r.name));
                continue;
            }
            match self.certificates.certificate(namespace, &r.name).map(|pem| pem.ca) {
                Ok(Some(ca)) => cas.push(ca),
                Ok(None) => problem(format!("{at}: Secret {namespace}/{} has no ca.crt", r.name)),
                Err(why) => problem(format!("{at}: {why}")),
            }
        }
        if cas.is_empty() {
            if validation.ca_certificate_refs.is_empty() {
                problem(format!("listener {}: tls.frontendValidation names no CA", l.name));
            }
            return Some(None);
        }
        match tls::client_verifier(&cas, &self.provider) {
            Ok(verifier) => Some(Some(verifier)),
            Err(why) => {
                problem(format!("listener {}: tls.frontendValidation: {why}", l.name));
                Some(None)
            }
        }
    }

    /// The first usable certificate of an HTTPS listener's
    /// `tls.certificateRefs`; each unusable one is a `ResolvedRefs: False`
    /// condition in `refs`.
    fn certificate(
        &self,
        l: &Listener,
        gateway_namespace: &str,
        refs: &mut Vec<Condition>,
        generation: Option<i64>,
    ) -> Option<Arc<CertifiedKey>> {
        let certificate_refs = l.tls.as_ref().map(|t| t.certificate_refs.as_slice()).unwrap_or_default();
        let mut problem = |reason: &'static str, message: String| {
            refs.push(condition("ResolvedRefs", false, reason, message, generation));
        };
        if certificate_refs.is_empty() {
            problem(
                "InvalidCertificateRef",
                format!("listener {}: an HTTPS listener needs tls.certificateRefs (a Secret)", l.name),
            );
            return None;
        }
        let mut chosen = None;
        for (i, r) in certificate_refs.iter().enumerate() {
            let at = format!("listener {}: tls.certificateRefs[{i}]", l.name);
            let group = r.group.as_deref().unwrap_or("");
            let kind = r.kind.as_deref().unwrap_or("Secret");
            if !group.is_empty() || kind != "Secret" {
                problem("InvalidCertificateRef", format!("{at}: {kind} (group {group:?}) is not a Secret"));
                continue;
            }
            let namespace = r.namespace.as_deref().unwrap_or(gateway_namespace);
            if namespace != gateway_namespace
                && !granted(self.grants, "Gateway", gateway_namespace, namespace, "Secret", &r.name)
            {
                problem(
                    "RefNotPermitted",
                    format!(
                        "{at}: Secret {namespace}/{} is in another namespace and no ReferenceGrant there allows Gateways from {gateway_namespace}",
                        r.name
                    ),
                );
                continue;
            }
            let key = self.certificates.certificate(namespace, &r.name).and_then(|pem| {
                tls::parse(&pem, &self.provider).map_err(|why| format!("Secret {namespace}/{}: {why}", r.name))
            });
            match key {
                Ok(key) => {
                    // The first usable one is served (one per listener).
                    chosen.get_or_insert(key);
                }
                Err(why) => problem("InvalidCertificateRef", format!("{at}: {why}")),
            }
        }
        chosen
    }
}

/// How a listener is served, or (reason, why) it cannot be.
fn protocol(l: &Listener) -> Result<Protocol, (&'static str, String)> {
    let mode = l.tls.as_ref().and_then(|t| t.mode.as_deref());
    match (l.protocol.as_str(), mode) {
        ("HTTP", _) => Ok(Protocol::Http),
        ("HTTPS", None | Some("Terminate")) => Ok(Protocol::Https),
        ("HTTPS", Some(other)) => Err((
            "UnsupportedValue",
            format!("listener {}: tls.mode {other:?} on an HTTPS listener (HTTPS terminates: Terminate)", l.name),
        )),
        ("TLS", Some("Passthrough")) => Ok(Protocol::TlsPassthrough),
        ("TLS", mode) => Err((
            "UnsupportedValue",
            format!(
                "listener {}: tls.mode {:?} on a TLS listener is not served (Passthrough is; HTTPS terminates TLS)",
                l.name,
                mode.unwrap_or("Terminate")
            ),
        )),
        ("TCP", _) => Ok(Protocol::Tcp),
        (other, _) => Err((
            "UnsupportedProtocol",
            format!("listener {}: protocol {other:?} is not served (HTTP, HTTPS, TLS and TCP are)", l.name),
        )),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Https => "HTTPS",
        Protocol::TlsPassthrough => "TLS",
        Protocol::Tcp => "TCP",
    }
}

/// The route kinds a listener takes: its `allowedRoutes.kinds` that its
/// protocol can serve, or all of those. A listed kind it cannot serve is
/// an `InvalidRouteKinds` condition in `refs`.
fn route_kinds(
    l: &Listener,
    protocol: Protocol,
    refs: &mut Vec<Condition>,
    generation: Option<i64>,
) -> Vec<&'static str> {
    let supported = protocol.route_kinds();
    let Some(listed) = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) else {
        return supported.to_vec();
    };
    let mut kinds = Vec::new();
    let mut invalid = Vec::new();
    for k in listed {
        let group = k.group.as_deref().unwrap_or(GROUP);
        match supported.iter().find(|s| **s == k.kind).filter(|_| group == GROUP) {
            Some(kind) => kinds.push(*kind),
            None => invalid.push(format!("{} ({group})", k.kind)),
        }
    }
    if !invalid.is_empty() || kinds.is_empty() {
        refs.push(condition(
            "ResolvedRefs",
            false,
            "InvalidRouteKinds",
            format!(
                "listener {}: allowedRoutes.kinds: {} cannot be served on a {} listener (it serves {})",
                l.name,
                if invalid.is_empty() { "no kind".to_owned() } else { invalid.join(", ") },
                protocol_name(protocol),
                supported.join(", ")
            ),
            generation,
        ));
    }
    kinds
}
