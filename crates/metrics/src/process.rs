//! The process's own metrics, read from `/proc` at scrape time, under the
//! names every Prometheus client library uses.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads` and `process_start_time_seconds`.
#[derive(Debug)]
pub struct ProcessCollector {
    start_time: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let start_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Self { start_time }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = ProcStat::read();
        if let Some(stat) = &stat {
            let cpu = ConstCounter::new(stat.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?)?;
            gauge(&mut encoder, "process_resident_memory", "Resident memory size", Some(Unit::Bytes), stat.rss_bytes)?;
            gauge(&mut encoder, "process_virtual_memory", "Virtual memory size", Some(Unit::Bytes), stat.vsize_bytes)?;
            gauge(&mut encoder, "process_threads", "Number of OS threads", None, stat.threads)?;
        }
        if let Some(fds) = open_fds() {
            gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", None, fds)?;
        }
        if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                crate::gauge_value(limit),
            )?;
        }
        let start = ConstGauge::new(self.start_time);
        start.encode(encoder.encode_descriptor(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)
}

/// The fields of `/proc/self/stat` the collector reports.
struct ProcStat {
    cpu_seconds: f64,
    threads: i64,
    vsize_bytes: i64,
    rss_bytes: i64,
}

impl ProcStat {
    fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name is in parentheses and may hold spaces: fields
        // are counted after its closing one (field 3, `state`, is first).
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = crate::gauge_value(rustix::param::page_size());
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            vsize_bytes: field(23)?,
            rss_bytes: field(24)?.saturating_mul(page),
        })
    }
}

fn open_fds() -> Option<i64> {
    Some(crate::gauge_value(std::fs::read_dir("/proc/self/fd").ok()?.count()))
}

/// `edgemesh_build_info{version}` = 1.
pub(crate) fn register_build_info(registry: &mut Registry, version: &str) {
    let info = Info::new(vec![("version".to_owned(), version.to_owned())]);
    registry.register("build", "The agent's build", info);
}
