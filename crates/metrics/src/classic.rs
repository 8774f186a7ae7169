//! The classic Prometheus text format (0.0.4), made from prometheus-client's
//! OpenMetrics output, for scrapers and tools that do not speak OpenMetrics
//! (`curl | promtool check metrics`, older Prometheus servers, most ad hoc
//! scripts).
//!
//! The two formats differ, for what the agent registers, only in metadata:
//! OpenMetrics names a counter family without `_total` and an info family
//! without `_info`, has `# UNIT` lines, the `info` type and a closing
//! `# EOF`. Samples are written the same way in both.

use std::fmt::Write as _;

/// Rewrites OpenMetrics text into the classic text format.
pub(crate) fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The family the last `# TYPE` line opened, and the suffix its samples add.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Held until the TYPE line says whether the name needs a suffix.
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            if let Some((help_name, help)) = pending_help.take()
                && help_name == name
            {
                let _ = writeln!(out, "# HELP {name}{suffix} {help}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_infos_take_their_sample_names_and_openmetrics_only_lines_go() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2\n\
                  # HELP a_build The build.\n# TYPE a_build info\na_build_info{version=\"1\"} 1\n\
                  # HELP a_latency_seconds Latency.\n# TYPE a_latency_seconds histogram\n# UNIT a_latency_seconds seconds\n\
                  a_latency_seconds_sum 0.5\na_latency_seconds_count 1\na_latency_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n\
             # HELP a_build_info The build.\n# TYPE a_build_info gauge\na_build_info{version=\"1\"} 1\n\
             # HELP a_latency_seconds Latency.\n# TYPE a_latency_seconds histogram\n\
             a_latency_seconds_sum 0.5\na_latency_seconds_count 1\na_latency_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
