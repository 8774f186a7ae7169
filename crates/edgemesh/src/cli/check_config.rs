//! `edgemesh check-config FILE`: checks a config file and the manifests
//! directory it names the way the agent would read them (the config's
//! parser and `Config::validate`, the manifests source's parser and its
//! Kubernetes validation), without binding anything or touching the system.
//! Every problem is printed as `file:line:column: why`, one per line, then
//! a summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Deserialize;

use crate::config::{Config, ConfigError, SourceKind};
use crate::host::SystemHost;

/// Flags of `edgemesh check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The agent's YAML config file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// One problem: where (file, and line and column when known) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// What was checked and what is wrong.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// The manifests directory checked, if the source is `manifests` and
    /// the config says where it is.
    pub manifests_dir: Option<PathBuf>,
    pub manifest_files: usize,
    pub objects: usize,
}

/// Runs `edgemesh check-config`: exit 0 when clean, 1 with problems.
pub fn run(args: &CheckConfigArgs) -> ExitCode {
    let report = check(&args.file);
    for p in &report.problems {
        println!("{p}");
    }
    let checked = match &report.manifests_dir {
        Some(dir) => format!(
            "{} and {} ({} manifest file{}, {} objects)",
            args.file.display(),
            dir.display(),
            report.manifest_files,
            if report.manifest_files == 1 { "" } else { "s" },
            report.objects
        ),
        None => args.file.display().to_string(),
    };
    match report.problems.len() {
        0 => {
            println!("checked {checked}: no problems");
            ExitCode::SUCCESS
        }
        1 => {
            println!("checked {checked}: 1 problem");
            ExitCode::FAILURE
        }
        n => {
            println!("checked {checked}: {n} problems");
            ExitCode::FAILURE
        }
    }
}

/// Checks `file` and its manifests directory; every problem found, not
/// only the first.
pub fn check(file: &Path) -> Report {
    let mut report = Report::default();
    let at = |line: Option<(usize, usize)>, message: String| Problem {
        file: file.to_owned(),
        line: line.map(|l| l.0),
        column: line.map(|l| l.1),
        message,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            report.problems.push(at(None, format!("cannot read the config file: {e}")));
            return report;
        }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let manifests = match Config::parse_yaml(&text) {
        Ok(mut config) => {
            config.anchor_paths(base);
            config.complete(&SystemHost::default());
            if let Err(ConfigError::Invalid(problems)) = config.validate() {
                report
                    .problems
                    .extend(problems.into_iter().map(|p| at(leading_key(&p).and_then(|k| key_line(&text, k)), p)));
            }
            (config.source == SourceKind::Manifests).then_some(config.manifests.dir)
        }
        Err(e) => {
            // The location is in the problem's own fields, not twice.
            let message = match e.message.split_once(": ") {
                Some((place, why)) if place.starts_with("line ") && e.line.is_some() => why.to_owned(),
                _ => e.message,
            };
            report.problems.push(Problem { file: file.to_owned(), line: e.line, column: e.column, message });
            // Check the manifests anyway, if the directory can be told.
            lenient_manifests_dir(&text).map(|dir| base.join(dir))
        }
    };
    if let Some(dir) = manifests {
        check_manifests(&dir, &mut report, |message| at(key_line(&text, "manifests.dir"), message));
        report.manifests_dir = Some(dir);
    }
    report
}

/// Every manifest file in `dir`, parsed and validated as the manifests
/// source does; `dir_problem` places a problem with the directory itself.
fn check_manifests(dir: &Path, report: &mut Report, dir_problem: impl Fn(String) -> Problem) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            report.problems.push(dir_problem(format!("manifests.dir {}: {e}", dir.display())));
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(edgemesh_manifests::is_manifest_file))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in files {
        report.manifest_files += 1;
        let problem =
            |line: Option<usize>, message: String| Problem { file: file.clone(), line, column: None, message };
        let text = match std::fs::read(&file).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                report.problems.push(problem(None, format!("file is not UTF-8: {e}")));
                continue;
            }
            Err(e) => {
                report.problems.push(problem(None, format!("cannot read file: {e}")));
                continue;
            }
        };
        match edgemesh_manifests::parse_manifest(&text) {
            Ok(objects) => report.objects += objects.len(),
            Err(e) => report.problems.push(problem(Some(e.line()), e.reason())),
        }
    }
}

/// `manifests.dir` of a config that does not parse as a whole (an unknown
/// key elsewhere, a wrong type), so its manifests are still checked.
fn lenient_manifests_dir(text: &str) -> Option<PathBuf> {
    #[derive(Deserialize)]
    struct Lenient {
        source: Option<SourceKind>,
        manifests: Option<LenientManifests>,
    }
    #[derive(Deserialize)]
    struct LenientManifests {
        dir: Option<PathBuf>,
    }
    let lenient: Lenient = serde_saphyr::from_str(text).ok()?;
    if lenient.source.unwrap_or_default() != SourceKind::Manifests {
        return None;
    }
    Some(lenient.manifests.and_then(|m| m.dir).unwrap_or_else(|| Config::default().manifests.dir))
}

/// The key a validation problem starts with (`dns.upstreamTimeout must
/// be ...` -> `dns.upstreamTimeout`), if it starts with one.
fn leading_key(problem: &str) -> Option<&str> {
    let word = problem.split_whitespace().next()?.trim_end_matches(':');
    let is_key = word.starts_with(|c: char| c.is_ascii_lowercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
    is_key.then_some(word)
}

/// Line and column (1-based) of the dotted key `path` in block YAML text:
/// each segment found as `segment:` indented under the one before.
pub(crate) fn key_line(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let (mut from, mut parent_indent, mut found) = (0, None::<usize>, None);
    for segment in path.split('.') {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') || body.starts_with("---") {
                continue;
            }
            let indent = line.len() - body.len();
            if parent_indent.is_some_and(|p| indent <= p) {
                break; // past the parent's block
            }
            if body.strip_prefix(segment).is_some_and(|rest| rest.trim_start().starts_with(':')) {
                hit = Some((i, indent));
                break;
            }
        }
        let (i, indent) = hit?;
        (from, parent_indent, found) = (i + 1, Some(indent), Some((i + 1, indent + 1)));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_under_their_parents() {
        let text =
            "nodeName: a\n# dns:\nproxy:\n  connectTimeout: 0s\ndns:\n  listen: 127.0.0.1:53\n  upstreamTimeout: 0s\n";
        assert_eq!(key_line(text, "dns.upstreamTimeout"), Some((7, 3)));
        assert_eq!(key_line(text, "proxy.connectTimeout"), Some((4, 3)));
        assert_eq!(key_line(text, "nodeName"), Some((1, 1)));
        assert_eq!(key_line(text, "dns.connectTimeout"), None, "not under dns");
        assert_eq!(key_line(text, "vipCidr"), None);
    }

    #[test]
    fn problems_name_their_key_first() {
        assert_eq!(leading_key("dns.upstreamTimeout must be greater than zero"), Some("dns.upstreamTimeout"));
        assert_eq!(leading_key("tunnel.peers: empty node name"), Some("tunnel.peers"));
        assert_eq!(leading_key("vipCidr 10.0.0.0/31 is too small"), Some("vipCidr"));
        assert_eq!(leading_key("Cannot do that"), None);
    }
}
