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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::config::Config;

mod input;
mod translate;

use input::{locate_config, yaml_error};
use translate::Translator;

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
