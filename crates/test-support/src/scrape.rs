//! Reading a scrape: the value of one series in Prometheus text output, and
//! `promtool check metrics` on the whole of it.

use std::io::Write;
use std::process::{Command, Stdio};

/// The value of the sample `name` whose labels include every pair of
/// `labels` (others may be present); `None` if there is no such series.
/// Panics if several series match, so a test names enough labels.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, sample) = line.rsplit_once(' ').unwrap_or((line, ""));
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let pairs: Vec<(&str, &str)> = series_labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|want| pairs.contains(want)) {
            assert!(found.is_none(), "several series of {name} match {labels:?} in:\n{text}");
            found = Some(sample.parse().unwrap_or_else(|_| panic!("{line}: not a number")));
        }
    }
    found
}

/// Pipes `text` (the classic text format) through `promtool check metrics`
/// and panics with its complaints if it finds any, or if promtool is not
/// installed (Debian's `prometheus` package).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let output = child.wait_with_output().expect("promtool ends");
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
