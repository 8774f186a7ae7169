//! The two crates that need a little unsafe code (edgemesh-ebpf, and this
//! one's binary) cannot inherit `[workspace.lints]`, whose
//! `unsafe_code = "forbid"` no item can relax, so they carry a copy of it
//! with `deny` instead. This keeps the copies equal to the workspace's
//! table in everything else, and every other crate on the workspace's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `name = "level"` lines of the tables `<prefix>.rust` and
/// `<prefix>.clippy` of a Cargo.toml, keyed `rust::name` / `clippy::name`.
fn lint_levels(manifest: &Path, prefix: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut table = None;
    let mut levels = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.strip_prefix(prefix).and_then(|t| t.strip_prefix('.')).map(str::to_owned);
            continue;
        }
        let Some(tool) = &table else { continue };
        if let Some((name, level)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            levels.insert(format!("{tool}::{}", name.trim()), level.trim().trim_matches('"').to_owned());
        }
    }
    levels
}

/// The crates with their own copy of the table.
const COPIES: [&str; 2] = ["ebpf", "edgemesh"];

#[test]
fn crates_that_need_unsafe_copy_the_workspace_lints_with_unsafe_code_denied() {
    let workspace = lint_levels(&repo().join("Cargo.toml"), "workspace.lints");
    assert_eq!(workspace.get("rust::unsafe_code").map(String::as_str), Some("forbid"));
    assert!(workspace.keys().any(|k| k.starts_with("clippy::")), "{workspace:?}");
    let mut expected = workspace.clone();
    expected.insert("rust::unsafe_code".into(), "deny".into());
    for krate in COPIES {
        let manifest = repo().join("crates").join(krate).join("Cargo.toml");
        assert_eq!(
            lint_levels(&manifest, "lints"),
            expected,
            "{}: [lints] differs from [workspace.lints]",
            manifest.display()
        );
    }
}

#[test]
fn every_other_crate_takes_the_workspace_lints() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        if COPIES.iter().any(|c| dir.ends_with(c)) {
            continue;
        }
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            text.contains("\n[lints]\nworkspace = true\n"),
            "{} does not take [workspace.lints]",
            manifest.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} crates found");
}
