//! A real Prometheus server (Debian's `prometheus`) inside a namespace made
//! for the test, scraping agents every second, and its HTTP API
//! (`/api/v1/query`) asked from inside that namespace; `promtool check
//! metrics` on an agent's exposition.
//!
//! The namespace has no default route, so Prometheus reaches nothing but the
//! test's own addresses, and its port cannot collide with a Prometheus of
//! the host (a stray system server on 9090 lives in another namespace).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::eventually_every;
use super::netns::Netns;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
/// Where Prometheus listens inside its namespace (nothing else runs there).
const LISTEN: &str = "127.0.0.1:9090";

/// Panics with what to install unless `prometheus` and `promtool` exist.
pub fn require_prometheus() {
    for tool in [PROMETHEUS, PROMTOOL] {
        assert!(Path::new(tool).exists(), "{tool} is missing: apt-get install prometheus (.ci/run does)");
    }
}

/// One sample of a query's answer: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// Prometheus scraping `targets` (job `edgemesh`) every second; killed on
/// drop, its storage and config removed with it, its log printed when the
/// test fails.
pub struct Prometheus {
    child: Option<Child>,
    ns: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it in `ns` and waits (up to 60 s) until it is ready.
    pub fn start(ns: &Netns, targets: &[&str]) -> Prometheus {
        require_prometheus();
        let dir = tempfile::tempdir().unwrap();
        let targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: edgemesh\n    static_configs:\n      - targets: [{targets}]\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let child = ns
            .cmd(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{PROMETHEUS}: {e}"));
        let mut prometheus = Prometheus { child: Some(child), ns: ns.name.clone(), dir };
        eventually_every(Duration::from_millis(200), Duration::from_secs(60), "Prometheus to be ready", || {
            if let Some(status) = prometheus.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("prometheus exited with {status}; log:\n{}", prometheus.log());
            }
            prometheus.get(&["/-/ready"]).map(|_| ())
        });
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `curl -G` on the HTTP API from inside the namespace: the body of a
    /// 2xx answer, or None.
    fn get(&self, path_and_args: &[&str]) -> Option<String> {
        let url = format!("http://{LISTEN}{}", path_and_args[0]);
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sfG", "--max-time", "5", &url])
            .args(&path_and_args[1..])
            .output()
            .expect("curl is installed");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An instant query (`/api/v1/query`): its samples (a vector answer).
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let arg = format!("query={promql}");
        let body = self
            .get(&["/api/v1/query", "--data-urlencode", &arg])
            .unwrap_or_else(|| panic!("Prometheus answers the query {promql}; log:\n{}", self.log()));
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{promql}: {e}: {body}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        let result = answer["data"]["result"].as_array().unwrap_or_else(|| panic!("{promql}: no vector: {answer}"));
        result
            .iter()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// The value of a query that answers one sample, or None (no sample).
    pub fn value(&self, promql: &str) -> Option<f64> {
        let samples = self.query(promql);
        assert!(samples.len() <= 1, "{promql} answers more than one sample: {samples:?}");
        samples.first().map(|s| s.value)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // `ip netns exec` execs prometheus: this is its pid.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}
