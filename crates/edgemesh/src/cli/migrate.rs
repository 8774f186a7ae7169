//! `edgemesh migrate --from-edgemesh FILE`: translates a KubeEdge EdgeMesh
//! (v1.17) agent config into this agent's config.
//!
//! The input is what operators have: the `edgemesh-agent-cfg` ConfigMap as
//! applied (one or more YAML documents; the config is the string under
//! `data["edgemesh-agent.yaml"]`), or that config alone. The output, on
//! stdout, is our config YAML in which every key says where it came from
//! (`# from modules.edgeTunnel.enable`), followed, as comments, by what has
//! no counterpart here and why; the same list goes to stderr, one
//! `file:line: key: why` per item. Keys EdgeMesh v1.17 does not know are
//! reported the same way, never dropped silently.
//!
//! The translation is of EdgeMesh's *effective* settings: a key it left
//! out counts with EdgeMesh's default (so a bare default config, whose PSK
//! and node-local DNS are on without being written, still says so), marked
//! `(EdgeMesh default)`. The output is meant for our DaemonSet in node mode
//! (deploy/kubernetes): the node name and the API address are on its command
//! line, not in the config. It is checked by this agent's own parser and
//! validation before it is printed.
//!
//! Decisions (README, "Coming from EdgeMesh"): EdgeMesh's tunnel port,
//! device name and PSK are not carried over as they are, since both agents
//! run on a node during a switch and must not take each other's port or
//! device, and the two tunnels never talk to each other.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::config::Config;

/// Flags of `edgemesh migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// EdgeMesh agent config to translate: the edgemesh-agent-cfg ConfigMap (as applied with
    /// kubectl) or the edgemesh-agent.yaml it carries.
    #[arg(long, value_name = "FILE")]
    pub from_edgemesh: PathBuf,

    /// Our PSK file's path inside the agent's pod, when EdgeMesh's PSK is on (a new key in our
    /// format, see the README); without it the output has tunnel.pskFile commented out.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
}

/// Runs `edgemesh migrate`: 0 with the config on stdout, 1 with the error.
pub fn run(args: &MigrateArgs) -> ExitCode {
    let options = Options { psk_file: args.psk_file.clone() };
    match migrate_file(&args.from_edgemesh, &options) {
        Ok(m) => {
            print!("{}", m.render());
            for note in &m.untranslated {
                eprintln!("{}", note.located(&args.from_edgemesh));
            }
            eprintln!(
                "translated {} setting(s) from {}; {} item(s) without a counterpart (listed above and at the end of the output)",
                m.settings.iter().filter(|s| !s.commented).count(),
                args.from_edgemesh.display(),
                m.untranslated.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Choices the input cannot make.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `tunnel.pskFile` to write when EdgeMesh's PSK is on.
    pub psk_file: Option<PathBuf>,
}

/// Input that cannot be translated: where and why.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}{message}", file.display(), line.map(|l| format!("{l}: ")).unwrap_or_else(|| " ".into()))]
pub struct MigrateError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// One key of our config in the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Dotted key of our config (`dns.listen`).
    pub key: String,
    /// Its value, as YAML (a scalar or a flow sequence).
    pub value: String,
    /// Where it came from and anything the operator must know.
    pub comment: String,
    /// Written commented out: a suggestion that needs something the input
    /// does not give (a peer ID, a key file).
    pub commented: bool,
}

/// An EdgeMesh key (or default) with no counterpart, or not carried over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Dotted EdgeMesh key (`modules.edgeTunnel.listenPort`).
    pub key: String,
    /// Line in the input file, when the key is written there.
    pub line: Option<usize>,
    pub why: String,
}

impl Note {
    fn located(&self, file: &Path) -> String {
        match self.line {
            Some(line) => format!("{}:{line}: {}: {}", file.display(), self.key, self.why),
            None => format!("{}: {} (not written; EdgeMesh's default): {}", file.display(), self.key, self.why),
        }
    }
}

/// The result: our settings and what did not carry over.
#[derive(Clone, Debug, Default)]
pub struct Migration {
    /// What was read: the file, and the ConfigMap if it was one.
    pub origin: String,
    pub settings: Vec<Setting>,
    pub untranslated: Vec<Note>,
}

impl Migration {
    /// The setting for our `key`, if any.
    pub fn setting(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// The note about EdgeMesh's `key`, if any.
    pub fn note(&self, key: &str) -> Option<&Note> {
        self.untranslated.iter().find(|n| n.key == key)
    }

    /// Our config file: the settings grouped by section, each with its
    /// comment, then what has no counterpart.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# edgemesh agent config translated by `edgemesh migrate --from-edgemesh` from");
        let _ = writeln!(out, "# {}.", self.origin);
        out.push_str(
            "# \"(EdgeMesh default)\": the key was not written and EdgeMesh v1.17's default is what it ran with.\n\
             # nodeName and the API address are not here: the DaemonSet gives them (NODE_NAME, --kube-api).\n\
             # Keys: the README's \"Configuration reference\"; check with `edgemesh check-config FILE`.\n",
        );
        // Top-level keys first, then each section once, in order of first use.
        let head = |s: &Setting| s.key.split_once('.').map_or("", |(h, _)| h).to_owned();
        let mut heads = vec![String::new()];
        for s in &self.settings {
            if !heads.contains(&head(s)) {
                heads.push(head(s));
            }
        }
        for h in &heads {
            let mut open = false;
            for s in self.settings.iter().filter(|s| head(s) == *h) {
                let leaf = s.key.split_once('.').map_or(s.key.as_str(), |(_, l)| l);
                let indent = if h.is_empty() { "" } else { "  " };
                if !h.is_empty() && !open {
                    let _ = writeln!(out, "{h}:");
                    open = true;
                }
                let hash = if s.commented { "# " } else { "" };
                let _ = writeln!(out, "{indent}{hash}{leaf}: {}  # {}", s.value, s.comment);
            }
        }
        if !self.untranslated.is_empty() {
            out.push_str("\n# Not carried over (EdgeMesh key: why):\n");
            for n in &self.untranslated {
                let place = n.line.map(|l| format!(" (line {l})")).unwrap_or_else(|| " (EdgeMesh default)".into());
                let _ = writeln!(out, "# - {}{place}: {}", n.key, n.why);
            }
        }
        out
    }
}

/// Reads `file` and translates it.
pub fn migrate_file(file: &Path, options: &Options) -> Result<Migration, MigrateError> {
    let text = std::fs::read_to_string(file).map_err(|e| MigrateError {
        file: file.to_owned(),
        line: None,
        message: format!("cannot read the EdgeMesh config: {e}"),
    })?;
    migrate_text(file, &text, options)
}

/// Translates the text of `file` (see the module docs for what it may hold).
pub fn migrate_text(file: &Path, text: &str, options: &Options) -> Result<Migration, MigrateError> {
    let err = |line: Option<usize>, message: String| MigrateError { file: file.to_owned(), line, message };
    let input = locate_config(text).map_err(|(line, message)| err(line, message))?;
    let config: Value = if input.text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(&input.text).map_err(|e| {
            let (line, message) = yaml_error(&e);
            err(line.map(|l| input.line_of(l)).or(input.start), format!("{}{message}", input.what))
        })?
    };
    if !config.is_object() && !config.is_null() {
        return Err(err(input.start, format!("{}is not a mapping of EdgeMesh agent settings", input.what)));
    }
    let origin = match &input.config_map {
        Some(name) => format!("{}, ConfigMap {name}, data[\"edgemesh-agent.yaml\"]", file.display()),
        None => file.display().to_string(),
    };
    let mut t = Translator { config: &config, input: &input, file, out: Migration { origin, ..Default::default() } };
    t.translate(options)?;
    let m = t.out;
    // What we print must start an agent: the same parser and checks.
    let rendered = m.render();
    let mut ours = Config::parse_yaml(&rendered)
        .map_err(|p| err(None, format!("internal error: the translated config does not parse ({p}):\n{rendered}")))?;
    ours.node_name = "migrate-check".into();
    ours.validate().map_err(|e| err(None, format!("internal error: the translated config is invalid: {e}")))?;
    Ok(m)
}

/// The EdgeMesh config inside the input, and how its lines map to the file's.
struct Located {
    text: String,
    /// File line of the config text's first line, when known.
    start: Option<usize>,
    /// Prefix for messages about the config text (where it sits).
    what: String,
    /// `namespace/name` of the ConfigMap it came from.
    config_map: Option<String>,
}

impl Located {
    /// The file line of line `n` (1-based) of the config text.
    fn line_of(&self, n: usize) -> usize {
        self.start.map_or(n, |s| s + n - 1)
    }
}

/// Splits `text` into YAML documents with the file line each starts on.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push((i + 2, String::new()));
        } else if let Some((_, doc)) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

/// Finds the agent config: a ConfigMap's `data["edgemesh-agent.yaml"]`,
/// or the whole document when it is a bare config.
fn locate_config(text: &str) -> Result<Located, (Option<usize>, String)> {
    const KEY: &str = "edgemesh-agent.yaml";
    let docs = documents(text);
    if docs.is_empty() {
        return Err((
            None,
            "no YAML document: expected the edgemesh-agent-cfg ConfigMap or its edgemesh-agent.yaml".into(),
        ));
    }
    let mut parsed = Vec::new();
    for (start, doc) in &docs {
        let value: Value = serde_saphyr::from_str(doc).map_err(|e| {
            let (line, message) = yaml_error(&e);
            (Some(line.map_or(*start, |l| start + l - 1)), message)
        })?;
        parsed.push((*start, doc, value));
    }
    let config_maps: Vec<_> = parsed.iter().filter(|(_, _, v)| v["kind"] == "ConfigMap").collect();
    if config_maps.is_empty() {
        let [(start, doc, _)] = parsed.as_slice() else {
            return Err((
                Some(docs[1].0),
                "several YAML documents and no ConfigMap among them: give one config".into(),
            ));
        };
        return Ok(Located { text: (*doc).clone(), start: Some(*start), what: String::new(), config_map: None });
    }
    let with_config: Vec<_> = config_maps.iter().filter(|(_, _, v)| v["data"].get(KEY).is_some()).collect();
    let [(start, doc, cm)] = with_config.as_slice() else {
        let (start, _, _) = config_maps[0];
        let message = if with_config.is_empty() {
            format!("no ConfigMap here has data[\"{KEY}\"] (EdgeMesh's is edgemesh-agent-cfg)")
        } else {
            format!("{} ConfigMaps have data[\"{KEY}\"]: give one", with_config.len())
        };
        return Err((Some(*start), message));
    };
    let name = format!(
        "{}/{}",
        cm["metadata"]["namespace"].as_str().unwrap_or("default"),
        cm["metadata"]["name"].as_str().unwrap_or("?")
    );
    let Some(config) = cm["data"][KEY].as_str() else {
        let line = key_line_in(doc, &format!("{KEY}:")).map(|l| start + l - 1);
        return Err((line, format!("data[\"{KEY}\"] of ConfigMap {name} is not a string")));
    };
    // A block scalar (`|`, `|-`) starts on the line after its key: lines map
    // one to one. Other styles: lines are counted within the string.
    let key_line = key_line_in(doc, &format!("{KEY}:"));
    let block = key_line.and_then(|l| doc.lines().nth(l - 1)).is_some_and(|l| {
        let rest = l.trim_start().trim_start_matches(KEY).trim_start_matches(':').trim();
        rest.starts_with('|')
    });
    let first = key_line.filter(|_| block).map(|l| start + l);
    let what = match first {
        Some(_) => format!("data[\"{KEY}\"]: "),
        None => format!("data[\"{KEY}\"] (lines counted within it): "),
    };
    Ok(Located { text: config.to_owned(), start: first, what, config_map: Some(name) })
}

/// 1-based line of the first line whose trimmed text starts with `prefix`.
fn key_line_in(text: &str, prefix: &str) -> Option<usize> {
    text.lines().position(|l| l.trim_start().starts_with(prefix)).map(|i| i + 1)
}

/// Line and message of a serde-saphyr error.
fn yaml_error(e: &serde_saphyr::Error) -> (Option<usize>, String) {
    let p = crate::config::YamlProblem::of(e);
    (p.line, p.message)
}

/// Every EdgeMesh v1.17 agent key (`pkg/apis/config/v1alpha1/types.go`):
/// anything else in the input is reported as unknown.
const KNOWN: &[&str] = &[
    "apiVersion",
    "kind",
    "kubeAPIConfig.master",
    "kubeAPIConfig.contentType",
    "kubeAPIConfig.qps",
    "kubeAPIConfig.burst",
    "kubeAPIConfig.kubeConfig",
    "kubeAPIConfig.mode",
    "kubeAPIConfig.metaServer.server",
    "kubeAPIConfig.metaServer.security.requireAuthorization",
    "kubeAPIConfig.metaServer.security.insecureSkipTLSVerify",
    "kubeAPIConfig.metaServer.security.tlsCaFile",
    "kubeAPIConfig.metaServer.security.tlsCertFile",
    "kubeAPIConfig.metaServer.security.tlsPrivateKeyFile",
    "kubeAPIConfig.deleteKubeConfig",
    "commonConfig.bridgeDeviceName",
    "commonConfig.bridgeDeviceIP",
    "commonConfig.pprofConfig.enableProfiling",
    "commonConfig.pprofConfig.profilingAddress",
    "commonConfig.pprofConfig.profilingPort",
    "modules.edgeDNS.enable",
    "modules.edgeDNS.kubeAPIConfig",
    "modules.edgeDNS.listenInterface",
    "modules.edgeDNS.listenPort",
    "modules.edgeDNS.cacheDNS.enable",
    "modules.edgeDNS.cacheDNS.autoDetect",
    "modules.edgeDNS.cacheDNS.upstreamServers",
    "modules.edgeDNS.cacheDNS.cacheTTL",
    "modules.edgeProxy.enable",
    "modules.edgeProxy.listenInterface",
    "modules.edgeProxy.socks5Proxy.enable",
    "modules.edgeProxy.socks5Proxy.listenPort",
    "modules.edgeProxy.socks5Proxy.nodeName",
    "modules.edgeProxy.socks5Proxy.namespace",
    "modules.edgeProxy.loadBalancer.caller",
    "modules.edgeProxy.loadBalancer.nodeName",
    "modules.edgeProxy.loadBalancer.consistentHash.partitionCount",
    "modules.edgeProxy.loadBalancer.consistentHash.replicationFactor",
    "modules.edgeProxy.loadBalancer.consistentHash.load",
    "modules.edgeProxy.serviceFilterMode",
    "modules.edgeTunnel.enable",
    "modules.edgeTunnel.mode",
    "modules.edgeTunnel.nodeName",
    "modules.edgeTunnel.listenPort",
    "modules.edgeTunnel.transport",
    "modules.edgeTunnel.rendezvous",
    "modules.edgeTunnel.relayNodes",
    "modules.edgeTunnel.enableIpfsLog",
    "modules.edgeTunnel.maxCandidates",
    "modules.edgeTunnel.heartbeatPeriod",
    "modules.edgeTunnel.finderPeriod",
    "modules.edgeTunnel.psk.enable",
    "modules.edgeTunnel.psk.path",
    "modules.edgeTunnel.tunnelLimitConfig.enable",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelBaseStreamIn",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelBaseStreamOut",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelPeerBaseStreamIn",
    "modules.edgeTunnel.tunnelLimitConfig.tunnelPeerBaseStreamOut",
    "modules.edgeTunnel.configPath",
    "modules.edgeTunnel.listenInterfaces",
    "modules.edgeTunnel.extraFilteredInterfaces",
    "modules.edgeTunnel.metricConfig.enable",
    "modules.edgeTunnel.metricConfig.port",
    "modules.edgeCNI.enable",
    "modules.edgeCNI.encapsulationIP",
    "modules.edgeCNI.tunMode",
    "modules.edgeCNI.meshCIDRConfig.cloudCIDR",
    "modules.edgeCNI.meshCIDRConfig.edgeCIDR",
];

/// EdgeMesh v1.17's defaults (`pkg/apis/config/defaults`, `v1alpha1/default.go`).
const EM_BRIDGE_IP: &str = "169.254.96.16";
const EM_BRIDGE_DEVICE: &str = "edgemesh0";
const EM_DNS_PORT: u64 = 53;
const EM_TUNNEL_PORT: u64 = 20006;
const EM_SOCKS_PORT: u64 = 10800;
const EM_PSK_PATH: &str = "/etc/edgemesh/psk";
const EM_METASERVER: &str = "http://127.0.0.1:10550";

struct Translator<'a> {
    config: &'a Value,
    input: &'a Located,
    file: &'a Path,
    out: Migration,
}

impl Translator<'_> {
    /// The value at dotted `path`, if written (and not null).
    fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self.config, |v, k| v.get(k)).filter(|v| !v.is_null())
    }

    /// File line of the key at dotted `path`, if written.
    fn line(&self, path: &str) -> Option<usize> {
        self.get_raw(path)?;
        crate::cli::check_config::key_line(&self.input.text, path).map(|(l, _)| self.input.line_of(l))
    }

    /// Like [`Self::get`], null values included (for unknown-key reports).
    fn get_raw(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self.config, |v, k| v.get(k))
    }

    fn error(&self, path: &str, message: String) -> MigrateError {
        MigrateError { file: self.file.to_owned(), line: self.line(path), message: format!("{path}: {message}") }
    }

    fn bool(&self, path: &str, default: bool) -> Result<(bool, bool), MigrateError> {
        match self.get(path) {
            None => Ok((default, false)),
            Some(Value::Bool(b)) => Ok((*b, true)),
            Some(other) => Err(self.error(path, format!("expected true or false, found {other}"))),
        }
    }

    fn uint(&self, path: &str, default: u64, max: u64) -> Result<(u64, bool), MigrateError> {
        match self.get(path) {
            None => Ok((default, false)),
            Some(Value::Number(n)) => match n.as_u64().filter(|n| *n <= max) {
                Some(n) => Ok((n, true)),
                None => Err(self.error(path, format!("expected a whole number from 0 to {max}, found {n}"))),
            },
            Some(other) => Err(self.error(path, format!("expected a number, found {other}"))),
        }
    }

    fn string(&self, path: &str) -> Result<Option<String>, MigrateError> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(path, format!("expected a string, found {other}"))),
        }
    }

    fn set(&mut self, key: &str, value: impl Into<String>, comment: impl Into<String>) {
        self.out.settings.push(Setting {
            key: key.into(),
            value: value.into(),
            comment: comment.into(),
            commented: false,
        });
    }

    fn suggest(&mut self, key: &str, value: impl Into<String>, comment: impl Into<String>) {
        self.out.settings.push(Setting {
            key: key.into(),
            value: value.into(),
            comment: comment.into(),
            commented: true,
        });
    }

    /// A note about `path`: with its line when written.
    fn note(&mut self, path: &str, why: impl Into<String>) {
        let line = self.line(path);
        self.out.untranslated.push(Note { key: path.into(), line, why: why.into() });
    }

    /// Notes `path` only when the input writes it (a setting that needs no
    /// word when left at its default).
    fn note_if_set(&mut self, path: &str, why: &str) {
        if self.get(path).is_some() {
            self.note(path, why);
        }
    }

    /// `from <key>`, marked as EdgeMesh's default when not written.
    fn from(&self, path: &str) -> String {
        if self.get(path).is_some() { format!("from {path}") } else { format!("from {path} (EdgeMesh default)") }
    }

    fn translate(&mut self, options: &Options) -> Result<(), MigrateError> {
        self.unknown_keys();
        self.kube()?;
        self.dns()?;
        self.proxy()?;
        self.tunnel(options)?;
        self.cni();
        Ok(())
    }

    /// Reports every key of the input that EdgeMesh v1.17 does not have.
    fn unknown_keys(&mut self) {
        let mut paths = Vec::new();
        leaf_paths(self.config, String::new(), &mut paths);
        let known: BTreeSet<&str> = KNOWN.iter().copied().collect();
        for path in paths {
            let is_known = known.iter().any(|k| path == *k || path.starts_with(&format!("{k}.")))
                || known.iter().any(|k| k.starts_with(&format!("{path}."))); // an empty section
            if !is_known {
                self.note(&path, "not an EdgeMesh v1.17 agent key (a typo, or another version's): ignored");
            }
        }
    }

    fn kube(&mut self) -> Result<(), MigrateError> {
        self.set(
            "source",
            "kube",
            "from kubeAPIConfig: EdgeMesh reads Services from the API (edge nodes: edgecore's metaServer, which the \
             DaemonSet names with --kube-api; cloud nodes: the pod's service account)",
        );
        if let Some(master) = self.string("kubeAPIConfig.master")? {
            self.set("kube.api", yaml_str(&master), "from kubeAPIConfig.master");
        }
        if let Some(kubeconfig) = self.string("kubeAPIConfig.kubeConfig")? {
            self.set("kube.kubeconfig", yaml_str(&kubeconfig), "from kubeAPIConfig.kubeConfig");
        }
        if let Some(server) = self.string("kubeAPIConfig.metaServer.server")?
            && server != EM_METASERVER
        {
            self.note(
                "kubeAPIConfig.metaServer.server",
                format!("per node type, not in the shared config: give edge nodes --kube-api {server} on the DaemonSet's command line"),
            );
        }
        let why_security = "metaServer over TLS with client certificates: not with kube.api (plain HTTP); write a kubeconfig \
                            with the server, CA and client certificate and set kube.kubeconfig";
        for key in ["requireAuthorization", "insecureSkipTLSVerify", "tlsCaFile", "tlsCertFile", "tlsPrivateKeyFile"] {
            self.note_if_set(&format!("kubeAPIConfig.metaServer.security.{key}"), why_security);
        }
        self.note_if_set(
            "kubeAPIConfig.contentType",
            "the agent speaks JSON to the API, which metaServer requires anyway",
        );
        for key in ["qps", "burst"] {
            self.note_if_set(
                &format!("kubeAPIConfig.{key}"),
                "no client-side rate limit: the agent lists once and then watches (a handful of requests per outage)",
            );
        }
        self.note_if_set("kubeAPIConfig.mode", "derived by EdgeMesh itself; here the DaemonSet's --kube-api decides");
        self.note_if_set(
            "kubeAPIConfig.deleteKubeConfig",
            "the agent never writes a kubeconfig, so there is nothing to delete",
        );
        Ok(())
    }

    fn dns(&mut self) -> Result<(), MigrateError> {
        let ip_text = self.string("commonConfig.bridgeDeviceIP")?.unwrap_or_else(|| EM_BRIDGE_IP.into());
        let ip: IpAddr = ip_text
            .parse()
            .map_err(|_| self.error("commonConfig.bridgeDeviceIP", format!("{ip_text:?} is not an IP address")))?;
        let (port, _) = self.uint("modules.edgeDNS.listenPort", EM_DNS_PORT, u64::from(u16::MAX))?;
        let (enabled, _) = self.bool("modules.edgeDNS.enable", true)?;
        let listen = SocketAddr::new(ip, u16::try_from(port).expect("checked against u16::MAX"));
        let mut comment = format!(
            "{} and {}: the node-local DNS address kubelet's clusterDNS points at",
            self.from("commonConfig.bridgeDeviceIP"),
            self.from("modules.edgeDNS.listenPort")
        );
        if !enabled {
            comment
                .push_str(" (modules.edgeDNS.enable is false: nothing pointed at EdgeMesh's DNS; ours serves anyway)");
        }
        comment.push_str(
            "; while EdgeMesh still runs on the node, EdgeMesh holds it: use e.g. 169.254.96.17:53 until it is removed \
             (README, \"Coming from EdgeMesh\")",
        );
        self.set("dns.listen", listen.to_string(), comment);
        let (cache, _) = self.bool("modules.edgeDNS.cacheDNS.enable", false)?;
        match self.get("modules.edgeDNS.cacheDNS.upstreamServers") {
            None => {}
            Some(Value::Array(servers)) => {
                let mut upstreams = Vec::new();
                for s in servers {
                    let text = s.as_str().map(str::to_owned).unwrap_or_else(|| s.to_string());
                    let addr = text
                        .parse::<SocketAddr>()
                        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| {
                            self.error(
                                "modules.edgeDNS.cacheDNS.upstreamServers",
                                format!("{text:?} is not an IP address (or address:port)"),
                            )
                        })?;
                    upstreams.push(addr.to_string());
                }
                if !upstreams.is_empty() {
                    let mut comment = "from modules.edgeDNS.cacheDNS.upstreamServers: names outside the cluster \
                                       domain go there"
                        .to_owned();
                    if !cache {
                        comment.push_str(" (cacheDNS was off in EdgeMesh, which then used the node's resolv.conf)");
                    }
                    self.set("dns.upstreams", format!("[{}]", upstreams.join(", ")), comment);
                }
            }
            Some(other) => {
                return Err(self.error(
                    "modules.edgeDNS.cacheDNS.upstreamServers",
                    format!("expected a list of addresses, found {other}"),
                ));
            }
        }
        self.note_if_set(
            "modules.edgeDNS.cacheDNS.enable",
            "forwarded answers are always cached here (dns.cacheSize), honouring their TTLs",
        );
        self.note_if_set(
            "modules.edgeDNS.cacheDNS.autoDetect",
            "cluster names are answered from the agent's own view of the API, so there is no cluster DNS to detect; \
             other names go to dns.upstreams (default: the node's resolv.conf)",
        );
        self.note_if_set(
            "modules.edgeDNS.cacheDNS.cacheTTL",
            "forwarded answers keep their own TTLs; service answers use dns.serviceTtl (5 s)",
        );
        for key in ["modules.edgeDNS.listenInterface", "modules.edgeDNS.kubeAPIConfig"] {
            self.note_if_set(key, "set by EdgeMesh itself (\"do not allow users to configure manually\")");
        }
        let device = self.string("commonConfig.bridgeDeviceName")?.unwrap_or_else(|| EM_BRIDGE_DEVICE.into());
        self.note(
            "commonConfig.bridgeDeviceName",
            format!(
                "{device} stays EdgeMesh's: ours is edge0 (intercept.vipDevice), since both devices exist while both \
                 agents run, and the agent replaces a port-less bridge of its own name at start"
            ),
        );
        if self.get("commonConfig.pprofConfig").is_some() {
            self.note(
                "commonConfig.pprofConfig",
                "no pprof endpoint; the admin endpoint (127.0.0.1:15020) serves /metrics, /config and /services",
            );
        }
        Ok(())
    }

    fn proxy(&mut self) -> Result<(), MigrateError> {
        let (enabled, _) = self.bool("modules.edgeProxy.enable", false)?;
        if enabled {
            self.set(
                "intercept.mode",
                "nftables",
                "from modules.edgeProxy.enable: connections to cluster IPs are intercepted (EdgeMesh: iptables; \
                 here one nftables table, inet edgemesh, and the device edge0)",
            );
        } else {
            self.set(
                "intercept.mode",
                "none",
                format!(
                    "{}: EdgeMesh did not proxy here; ours still serves each service on a VIP",
                    self.from("modules.edgeProxy.enable")
                ),
            );
        }
        match self.string("modules.edgeProxy.serviceFilterMode")?.as_deref() {
            None | Some("FilterIfLabelExists") => {}
            Some("FilterIfLabelDoesNotExists") => self.note(
                "modules.edgeProxy.serviceFilterMode",
                "FilterIfLabelDoesNotExists (proxy only the labelled services) has no counterpart: the agent serves \
                 every Service but those labelled service.edgemesh.kubeedge.io/service-proxy-name (EdgeMesh's default, \
                 FilterIfLabelExists)",
            ),
            Some(other) => {
                return Err(self.error(
                    "modules.edgeProxy.serviceFilterMode",
                    format!(
                        "unknown mode {other:?} (EdgeMesh knows FilterIfLabelExists and FilterIfLabelDoesNotExists)"
                    ),
                ));
            }
        }
        let (socks, _) = self.bool("modules.edgeProxy.socks5Proxy.enable", false)?;
        let (socks_port, socks_port_set) =
            self.uint("modules.edgeProxy.socks5Proxy.listenPort", EM_SOCKS_PORT, u64::from(u16::MAX))?;
        if socks {
            self.set("socks.enabled", "true", "from modules.edgeProxy.socks5Proxy.enable");
            let ip = self.string("commonConfig.bridgeDeviceIP")?.unwrap_or_else(|| EM_BRIDGE_IP.into());
            self.set(
                "socks.listen",
                format!("{ip}:{socks_port}"),
                format!(
                    "{} on {}",
                    self.from("modules.edgeProxy.socks5Proxy.listenPort"),
                    self.from("commonConfig.bridgeDeviceIP")
                ),
            );
            self.suggest(
                "socks.allowedPorts",
                "[22]",
                "not in EdgeMesh, whose SOCKS5 proxy reached every port of a node's host: here only the listed ones \
                 (on every node that is reached)",
            );
        } else if socks_port_set {
            self.note("modules.edgeProxy.socks5Proxy.listenPort", "the SOCKS5 proxy is off");
        }
        for key in ["nodeName", "namespace"] {
            self.note_if_set(
                &format!("modules.edgeProxy.socks5Proxy.{key}"),
                "set by EdgeMesh itself (\"do not allow users to configure manually\")",
            );
        }
        for key in [
            "modules.edgeProxy.listenInterface",
            "modules.edgeProxy.loadBalancer.caller",
            "modules.edgeProxy.loadBalancer.nodeName",
        ] {
            self.note_if_set(key, "set by EdgeMesh itself (\"do not allow users to configure manually\")");
        }
        for key in ["partitionCount", "replicationFactor", "load"] {
            self.note_if_set(
                &format!("modules.edgeProxy.loadBalancer.consistentHash.{key}"),
                "the ConsistentHash ring is fixed (160 virtual nodes per endpoint, no load bound); the strategy itself \
                 is chosen per service (edgemesh.io/lb-strategy, or an Istio DestinationRule as with EdgeMesh)",
            );
        }
        Ok(())
    }

    fn tunnel(&mut self, options: &Options) -> Result<(), MigrateError> {
        let (enabled, _) = self.bool("modules.edgeTunnel.enable", false)?;
        self.set("tunnel.enabled", if enabled { "true" } else { "false" }, self.from("modules.edgeTunnel.enable"));
        if !enabled {
            return Ok(());
        }
        self.set(
            "tunnel.mdns",
            "true",
            "from modules.edgeTunnel: EdgeMesh finds peers on the LAN with mDNS (and its DHT, which has no counterpart: \
             peers are bound to Nodes by their edgemesh.io/peer-id annotation)",
        );
        let (port, port_set) = self.uint("modules.edgeTunnel.listenPort", EM_TUNNEL_PORT, u64::from(u16::MAX))?;
        let listen_note = if port == EM_TUNNEL_PORT {
            format!(
                "{port} is EdgeMesh's; ours listens on {} by default so both run on a node during a switch: open that \
                 port where {port} was open (relays, port forwards)",
                edgemesh_tunnel::DEFAULT_PORT
            )
        } else {
            format!(
                "not carried over while EdgeMesh holds {port}: ours listens on {}; after EdgeMesh is removed, \
                 tunnel.listen: [/ip4/0.0.0.0/tcp/{port}] takes it over",
                edgemesh_tunnel::DEFAULT_PORT
            )
        };
        if port_set {
            self.note("modules.edgeTunnel.listenPort", listen_note);
        } else {
            self.out.untranslated.push(Note {
                key: "modules.edgeTunnel.listenPort".into(),
                line: None,
                why: listen_note,
            });
        }
        match self.string("modules.edgeTunnel.transport")?.as_deref() {
            None | Some("tcp") => {}
            Some("quic") => self.note(
                "modules.edgeTunnel.transport",
                "QUIC is a build option here (cargo build --features quic; then the default listen adds it); TCP is \
                 always on",
            ),
            Some(other) => self.note(
                "modules.edgeTunnel.transport",
                format!("{other:?} has no counterpart: the tunnel speaks TCP (and QUIC in a quic build)"),
            ),
        }
        let tunnel_port = edgemesh_tunnel::DEFAULT_PORT;
        if let Some(relays) = self.get("modules.edgeTunnel.relayNodes") {
            let Value::Array(relays) = relays else {
                return Err(self.error("modules.edgeTunnel.relayNodes", format!("expected a list, found {relays}")));
            };
            let mut addrs = Vec::new();
            for (i, relay) in relays.iter().enumerate() {
                let node = relay.get("nodeName").and_then(Value::as_str).ok_or_else(|| {
                    self.error("modules.edgeTunnel.relayNodes", format!("item {} has no nodeName", i + 1))
                })?;
                let advertised = relay.get("advertiseAddress").and_then(Value::as_array).cloned().unwrap_or_default();
                for a in &advertised {
                    let text = a.as_str().map(str::to_owned).unwrap_or_else(|| a.to_string());
                    let ip: IpAddr = text.parse().map_err(|_| {
                        self.error(
                            "modules.edgeTunnel.relayNodes",
                            format!("advertiseAddress {text:?} of relay {node} is not an IP address"),
                        )
                    })?;
                    let family = if ip.is_ipv4() { "ip4" } else { "ip6" };
                    addrs.push(format!("/{family}/{ip}/tcp/{tunnel_port}/p2p/<peer ID of {node}>"));
                }
                if advertised.is_empty() {
                    addrs.push(format!("/ip4/<address of {node}>/tcp/{tunnel_port}/p2p/<peer ID of {node}>"));
                }
            }
            if !addrs.is_empty() {
                self.suggest(
                    "tunnel.relays",
                    format!("[{}]", addrs.join(", ")),
                    "from modules.edgeTunnel.relayNodes: a relay is named by address and peer ID (`edgemesh id` on it, \
                     or its Node's edgemesh.io/peer-id annotation); the relay nodes run deploy/kubernetes/relay \
                     (tunnel.relayServer)",
                );
            }
        }
        let (psk, _) = self.bool("modules.edgeTunnel.psk.enable", true)?;
        if psk {
            let em_path = self.string("modules.edgeTunnel.psk.path")?.unwrap_or_else(|| EM_PSK_PATH.into());
            let comment = format!(
                "{}: a private network, with a new key in our format (/key/swarm/psk/1.0.0/, base16) from a Secret \
                 mounted read-only (mode 0400); EdgeMesh's key at {em_path} is not reused: EdgeMesh hashes that file \
                 into its own network's key, and the two tunnels never talk to each other",
                self.from("modules.edgeTunnel.psk.enable")
            );
            match &options.psk_file {
                Some(path) => self.set("tunnel.pskFile", yaml_str(&path.display().to_string()), comment),
                None => self.suggest("tunnel.pskFile", "/etc/edgemesh/psk/swarm.key", comment),
            }
        } else {
            self.note_if_set("modules.edgeTunnel.psk.path", "the PSK is off");
        }
        let (ipfs_log, _) = self.bool("modules.edgeTunnel.enableIpfsLog", false)?;
        if ipfs_log {
            self.set("logLevel", "info,libp2p=debug", "from modules.edgeTunnel.enableIpfsLog");
        }
        self.note_if_set(
            "modules.edgeTunnel.rendezvous",
            "no DHT rendezvous: a node's peer ID comes from its Node's edgemesh.io/peer-id annotation (or tunnel.peers)",
        );
        for key in ["maxCandidates", "heartbeatPeriod", "finderPeriod"] {
            self.note_if_set(
                &format!("modules.edgeTunnel.{key}"),
                "relay discovery tuning: relays are named explicitly (tunnel.relays) and their reservations renewed \
                 by the tunnel",
            );
        }
        self.limits()?;
        self.note_if_set(
            "modules.edgeTunnel.listenInterfaces",
            "listening is by address, not interface: tunnel.listen: [/ip4/<the interface's address>/tcp/20007]",
        );
        self.note_if_set(
            "modules.edgeTunnel.extraFilteredInterfaces",
            "listening is by address, not interface: list the addresses to listen on in tunnel.listen",
        );
        if self.get("modules.edgeTunnel.metricConfig").is_some() {
            self.note(
                "modules.edgeTunnel.metricConfig",
                "metrics are always on, on the admin endpoint: http://127.0.0.1:15020/metrics (admin.listen)",
            );
        }
        for key in ["mode", "nodeName", "configPath"] {
            self.note_if_set(
                &format!("modules.edgeTunnel.{key}"),
                "set by EdgeMesh itself (\"do not allow users to configure manually\")",
            );
        }
        Ok(())
    }

    /// `tunnelLimitConfig`: EdgeMesh's libp2p resource limits, where ours
    /// has the same limit.
    fn limits(&mut self) -> Result<(), MigrateError> {
        const BASE: &str = "modules.edgeTunnel.tunnelLimitConfig";
        let max = edgemesh_tunnel::MAX_STREAMS_PER_CONNECTION as u64;
        let pairs = [
            ("tunnelBaseStreamIn", "tunnel.maxInboundStreams", u64::from(u32::MAX)),
            ("tunnelPeerBaseStreamIn", "tunnel.maxInboundStreamsPerPeer", u64::from(u32::MAX)),
            ("tunnelPeerBaseStreamOut", "tunnel.maxStreamsPerConnection", max),
        ];
        for (em, ours, limit) in pairs {
            let path = format!("{BASE}.{em}");
            let (n, set) = self.uint(&path, 0, u64::MAX)?;
            if !set {
                continue;
            }
            if n == 0 || n > limit {
                self.note(&path, format!("{n} is outside what {ours} accepts (1 to {limit}); its default stays"));
            } else {
                self.set(ours, n.to_string(), format!("from {path}"));
            }
        }
        self.note_if_set(
            &format!("{BASE}.tunnelBaseStreamOut"),
            "no total of outbound streams: bounded by proxy.maxConnections (from the open-files limit)",
        );
        let (limits_on, set) = self.bool(&format!("{BASE}.enable"), true)?;
        if set && !limits_on {
            self.note(
                &format!("{BASE}.enable"),
                "stream limits are always on (an unlimited peer could exhaust descriptors)",
            );
        }
        Ok(())
    }

    fn cni(&mut self) {
        if self.get_raw("modules.edgeCNI").is_some() {
            let on = self.get("modules.edgeCNI.enable").and_then(Value::as_bool).unwrap_or(false);
            let why = if on {
                "EdgeCNI (a pod network across edge and cloud) has no counterpart: the agent carries service traffic \
                 only; keep a CNI for pod-to-pod traffic"
            } else {
                "off here; EdgeCNI has no counterpart (the agent carries service traffic, not a pod network)"
            };
            self.note("modules.edgeCNI", why);
        }
    }
}

/// Dotted paths of every leaf (and empty mapping) of `v`; sequences are
/// leaves.
fn leaf_paths(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(child, path, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix),
        _ => {}
    }
}

/// `s` as a YAML scalar: plain when that reads back as the same string.
fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c))
        && !s.starts_with(['-', ':'])
        && !s.contains(": ");
    if plain { s.to_owned() } else { serde_json::Value::String(s.to_owned()).to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_starting_lines() {
        let docs = documents("# head\na: 1\n---\nb: 2\n--- \n\n---\nc: 3\n");
        assert_eq!(docs.iter().map(|(l, _)| *l).collect::<Vec<_>>(), [1, 4, 8]);
    }

    #[test]
    fn plain_strings_stay_plain() {
        assert_eq!(yaml_str("http://10.0.0.1:6443"), "http://10.0.0.1:6443");
        assert_eq!(yaml_str("/etc/kube config"), "\"/etc/kube config\"");
        assert_eq!(yaml_str("- x"), "\"- x\"");
    }
}
