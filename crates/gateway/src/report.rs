//! What the gateway serves and every object's status, as the admin
//! endpoint's `/gateway` shows it (and `edgemesh status gateway` prints):
//! the Gateway API's conditions spelled as the API spells them, plus the
//! listening sockets and what could not be read or translated.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::compile::{Compiled, Condition};
use crate::objects::GatewayInputs;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayReport {
    /// The GatewayClass this gateway serves.
    pub class: String,
    /// The snapshot generation the report was compiled from.
    pub generation: u64,
    pub ports: Vec<PortReport>,
    pub gateways: Vec<GatewayObjectReport>,
    pub routes: Vec<RouteReport>,
    /// Objects left out because they do not fit their schema.
    pub unreadable: Vec<Unreadable>,
    /// What EdgeMesh's Istio objects use that is not translated.
    pub refused: Vec<String>,
    /// Where translated Istio routes behave unlike Istio's.
    pub notes: Vec<String>,
}

/// One port listeners are served on.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortReport {
    pub port: u16,
    /// `namespace/name` of the Gateway that names it first.
    pub gateway: String,
    /// Where it listens, once bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listening: Option<SocketAddr>,
    /// Why it could not be bound (tried again every few seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayObjectReport {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub conditions: Vec<ConditionReport>,
    pub listeners: Vec<ListenerReport>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerReport {
    pub name: String,
    /// The route kinds it takes.
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: usize,
    pub conditions: Vec<ConditionReport>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteReport {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub parents: Vec<ParentReport>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReport {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    pub conditions: Vec<ConditionReport>,
}

/// A condition as the Gateway API writes it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionReport {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreadable {
    /// `Kind namespace/name`.
    pub object: String,
    pub reason: String,
}

impl GatewayReport {
    /// The report of `compiled` (from `inputs`), with each port's socket
    /// (`bound`) or why it is not bound (`failed`).
    pub fn new(
        class: &str,
        generation: u64,
        compiled: &Compiled,
        inputs: &GatewayInputs,
        bound: &BTreeMap<u16, SocketAddr>,
        failed: &BTreeMap<u16, String>,
    ) -> Self {
        let ports = compiled
            .ports
            .iter()
            .map(|(port, gateway)| PortReport {
                port: *port,
                gateway: format!("{}/{}", gateway.namespace, gateway.name),
                listening: bound.get(port).copied(),
                error: failed.get(port).cloned(),
            })
            .collect();
        let gateways = compiled
            .gateways
            .iter()
            .map(|(gateway, status)| {
                let listeners: Vec<ListenerReport> = status
                    .listeners
                    .iter()
                    .map(|l| {
                        let mut conditions = conditions(&l.conditions);
                        if let Some(why) = l.port.and_then(|p| failed.get(&p)) {
                            unbound(&mut conditions, why);
                        }
                        ListenerReport {
                            name: l.name.clone(),
                            supported_kinds: l.supported_kinds.clone(),
                            attached_routes: l.attached_routes,
                            conditions,
                        }
                    })
                    .collect();
                let mut conditions = conditions(&status.conditions);
                // Served only where a listener's port is bound.
                if !listeners.iter().any(programmed)
                    && let Some(why) = status.listeners.iter().find_map(|l| failed.get(&l.port?))
                {
                    unbound(&mut conditions, why);
                }
                GatewayObjectReport {
                    kind: gateway.kind,
                    namespace: gateway.namespace.clone(),
                    name: gateway.name.clone(),
                    conditions,
                    listeners,
                }
            })
            .collect();
        let routes = compiled
            .routes
            .iter()
            .map(|(route, parents)| RouteReport {
                kind: route.kind,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                parents: parents
                    .iter()
                    .map(|p| ParentReport {
                        gateway: format!("{}/{}", p.parent.namespace, p.parent.name),
                        section_name: p.section.clone(),
                        conditions: conditions(&p.conditions),
                    })
                    .collect(),
            })
            .collect();
        GatewayReport {
            class: class.to_owned(),
            generation,
            ports,
            gateways,
            routes,
            unreadable: inputs
                .unreadable
                .iter()
                .map(|(object, reason)| Unreadable { object: object.to_string(), reason: reason.clone() })
                .collect(),
            refused: inputs.refused.clone(),
            notes: inputs.notes.clone(),
        }
    }
}

fn programmed(listener: &ListenerReport) -> bool {
    listener.conditions.iter().any(|c| c.kind == "Programmed" && c.status == "True")
}

/// A `Programmed: True` condition in `list` turned `False` (reason
/// `Pending`: the agent tries the bind again) naming `why` the port cannot
/// be bound.
fn unbound(list: &mut [ConditionReport], why: &str) {
    for c in list.iter_mut().filter(|c| c.kind == "Programmed" && c.status == "True") {
        c.status = "False";
        c.reason = "Pending";
        c.message = format!("{why}; tried again every few seconds");
    }
}

fn conditions(list: &[Condition]) -> Vec<ConditionReport> {
    list.iter()
        .map(|c| ConditionReport {
            kind: c.kind,
            status: if c.status { "True" } else { "False" },
            reason: c.reason,
            message: c.message.clone(),
            observed_generation: c.observed_generation,
        })
        .collect()
}
