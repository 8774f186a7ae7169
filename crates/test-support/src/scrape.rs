//! Reading a `/metrics` scrape in tests: one sample's value, and the whole
//! text checked by `promtool check metrics` (Debian's `prometheus`
//! package, installed by `scripts/test.sh` and CI).

use std::io::Write;
use std::process::{Command, Stdio};

/// The value of the sample `series` (its name and labels exactly as
/// written, e.g. `edgemesh_tcp_connections_opened_total{service="default/web",port="80"}`),
/// or `None` when the scrape has no such series.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

/// Panics, with promtool's complaints and the text, unless `promtool check
/// metrics` accepts `text` (the classic text format) without a problem.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    child.stdin.take().expect("piped").write_all(text.as_bytes()).expect("promtool reads the scrape");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- the scrape:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
