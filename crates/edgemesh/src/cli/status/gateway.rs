//! `edgemesh status gateway`: the edge gateway's ports, Gateways,
//! listeners and routes with their conditions (the admin endpoint's
//! `/gateway`).

use serde::{Deserialize, Serialize};

use super::table::Table;

/// `/gateway`, as much of it as the tables show; JSON and YAML output
/// print it whole.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDoc {
    pub class: String,
    pub generation: u64,
    #[serde(default)]
    pub ports: Vec<PortDoc>,
    #[serde(default)]
    pub gateways: Vec<GatewayObjectDoc>,
    #[serde(default)]
    pub routes: Vec<RouteDoc>,
    #[serde(default)]
    pub unreadable: Vec<UnreadableDoc>,
    #[serde(default)]
    pub refused: Vec<String>,
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDoc {
    pub port: u16,
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayObjectDoc {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub conditions: Vec<ConditionDoc>,
    #[serde(default)]
    pub listeners: Vec<ListenerDoc>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerDoc {
    pub name: String,
    pub attached_routes: usize,
    #[serde(default)]
    pub conditions: Vec<ConditionDoc>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDoc {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub parents: Vec<ParentDoc>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentDoc {
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default)]
    pub conditions: Vec<ConditionDoc>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct UnreadableDoc {
    pub object: String,
    pub reason: String,
}

impl GatewayDoc {
    pub fn render(&self) -> String {
        let mut out = format!("Gateway class {} (generation {})\n\n", self.class, self.generation);
        let mut ports = Table::new(&["PORT", "GATEWAY", "LISTENING"]);
        for p in &self.ports {
            let listening = match (&p.listening, &p.error) {
                (Some(addr), _) => addr.clone(),
                (None, Some(error)) => format!("not bound: {error}"),
                (None, None) => "-".into(),
            };
            ports.row(vec![p.port.to_string(), p.gateway.clone(), listening]);
        }
        out += &ports.render();
        let mut gateways = Table::new(&["GATEWAY", "LISTENER", "ACCEPTED", "PROGRAMMED", "ROUTES", "PROBLEM"]);
        for g in &self.gateways {
            let name = format!("{}/{}", g.namespace, g.name);
            gateways.row(vec![
                name.clone(),
                "-".into(),
                status_of(&g.conditions, "Accepted"),
                status_of(&g.conditions, "Programmed"),
                "-".into(),
                problem(&g.conditions),
            ]);
            for l in &g.listeners {
                gateways.row(vec![
                    name.clone(),
                    l.name.clone(),
                    status_of(&l.conditions, "Accepted"),
                    status_of(&l.conditions, "Programmed"),
                    l.attached_routes.to_string(),
                    problem(&l.conditions),
                ]);
            }
        }
        out += "\n";
        out += &gateways.render();
        let mut routes = Table::new(&["ROUTE", "PARENT", "ACCEPTED", "RESOLVED-REFS", "PROBLEM"]);
        for r in &self.routes {
            for p in &r.parents {
                let parent = match &p.section_name {
                    Some(section) => format!("{}/{section}", p.gateway),
                    None => p.gateway.clone(),
                };
                routes.row(vec![
                    format!("{} {}/{}", r.kind, r.namespace, r.name),
                    parent,
                    status_of(&p.conditions, "Accepted"),
                    status_of(&p.conditions, "ResolvedRefs"),
                    problem(&p.conditions),
                ]);
            }
        }
        out += "\n";
        out += &routes.render();
        for u in &self.unreadable {
            out += &format!("\nleft out: {}: {}", u.object, u.reason);
        }
        for r in &self.refused {
            out += &format!("\nnot translated: {r}");
        }
        for n in &self.notes {
            out += &format!("\nnote: {n}");
        }
        if !(self.unreadable.is_empty() && self.refused.is_empty() && self.notes.is_empty()) {
            out.push('\n');
        }
        out
    }
}

fn status_of(conditions: &[ConditionDoc], kind: &str) -> String {
    conditions.iter().find(|c| c.kind == kind).map_or_else(|| "-".into(), |c| c.status.clone())
}

/// The first condition that is not as it should be: `reason: message`.
fn problem(conditions: &[ConditionDoc]) -> String {
    // Conflicted is the one condition whose True is the problem.
    let bad = |c: &&ConditionDoc| if c.kind == "Conflicted" { c.status == "True" } else { c.status == "False" };
    conditions.iter().find(bad).map_or_else(String::new, |c| format!("{}: {}", c.reason, c.message))
}
