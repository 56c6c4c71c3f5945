//! The request metrics in Prometheus form, beside the tracer's own on `/metrics`, named as
//! the OpenTelemetry-to-Prometheus rules name them: `http.server.request.duration` in `s` is
//! `http_server_request_duration_seconds` (`_bucket`, `_sum`, `_count`), attribute dots become
//! underscores. One endpoint serves every service of the node, so the service's resource
//! (less `process.*`) is in labels (`service_name`, `k8s_pod_name`...) rather than in
//! `job`/`instance`, which belong to the scrape target: the tracer.
use std::fmt::Write;

use super::{Histogram, Instrument, OVERFLOW_ATTRIBUTE, Snapshot, graph};
use crate::span::KeyValue;

/// Text format 0.0.4, or OpenMetrics (counter families named without `_total`, units).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

/// A Prometheus label name for an OpenTelemetry attribute key.
pub fn label_name(key: &str) -> String {
    let mut s: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `{a="x",b="y",` without the closing brace: the caller adds `le` or closes it.
fn labels(pairs: impl Iterator<Item = (String, String)>, out: &mut String) {
    out.push('{');
    for (k, v) in pairs {
        out.push_str(&k);
        out.push_str("=\"");
        escape(&v, out);
        out.push_str("\",");
    }
}

fn resource_labels(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .map(|a| (label_name(&a.key), a.value.to_string()))
        .collect()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, unit: Option<&str>, fmt: Format) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let (Some(u), Format::OpenMetrics) = (unit, fmt) {
        let _ = writeln!(out, "# UNIT {name} {u}");
    }
}

/// The `_bucket`, `_sum` and `_count` lines of one histogram; `base` is `{labels,` open.
fn histogram(out: &mut String, name: &str, base: &str, h: &Histogram, bounds: &[f64]) {
    let mut cum = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cum += n;
        let le = bounds
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| format!("{b:?}"));
        let _ = writeln!(out, "{name}_bucket{base}le=\"{le}\"}} {cum}");
    }
    let closed = base.trim_end_matches(',');
    let closed = if closed == "{" {
        String::new()
    } else {
        format!("{closed}}}")
    };
    let _ = writeln!(out, "{name}_sum{closed} {:?}", h.sum);
    let _ = writeln!(out, "{name}_count{closed} {}", h.count);
}

/// `http.server.request.duration` + `s` -> `http_server_request_duration_seconds`.
pub fn metric_name(inst: Instrument) -> String {
    let unit = match inst.unit() {
        "s" => "seconds",
        _ => "milliseconds",
    };
    format!("{}_{unit}", label_name(inst.name()))
}

pub fn render(snap: &Snapshot, fmt: Format, out: &mut String) {
    for inst in Instrument::ALL {
        let name = metric_name(inst);
        let mut body = String::new();
        for svc in &snap.services {
            let res = resource_labels(&svc.attributes);
            for (_, s) in svc.series.iter().filter(|(_, s)| s.instrument == inst) {
                let mut base = String::new();
                let pairs = res.iter().cloned().chain(
                    s.attributes
                        .iter()
                        .map(|(k, v)| (label_name(k), v.to_string())),
                );
                labels(pairs, &mut base);
                histogram(&mut body, &name, &base, &s.hist, inst.bounds());
            }
        }
        if !body.is_empty() {
            let unit = if inst.unit() == "s" {
                "seconds"
            } else {
                "milliseconds"
            };
            family(out, &name, "histogram", inst.description(), Some(unit), fmt);
            out.push_str(&body);
        }
    }
    render_graph(&snap.edges, fmt, out);
}

fn edge_labels(e: &graph::Edge) -> String {
    let mut pairs = vec![
        ("client".to_string(), e.client.to_string()),
        ("server".to_string(), e.server.to_string()),
    ];
    if let Some(t) = e.connection_type {
        pairs.push(("connection_type".into(), t.into()));
    }
    if e.overflow {
        pairs = vec![(label_name(OVERFLOW_ATTRIBUTE), "true".into())];
    }
    let mut s = String::new();
    labels(pairs.into_iter(), &mut s);
    s
}

fn render_graph(edges: &[graph::Edge], fmt: Format, out: &mut String) {
    if edges.is_empty() {
        return;
    }
    for &graph::EdgeCount { name, help, value } in &graph::COUNTS {
        // OpenMetrics names the counter family without the sample's `_total`.
        let fam = match fmt {
            Format::Text => name,
            Format::OpenMetrics => name.trim_end_matches("_total"),
        };
        family(out, fam, "counter", help, None, fmt);
        for e in edges {
            let l = edge_labels(e);
            let _ = writeln!(out, "{name}{}}} {}", l.trim_end_matches(','), value(e));
        }
    }
    for &graph::EdgeDurations {
        name,
        help,
        value: h,
    } in &graph::DURATIONS
    {
        family(out, name, "histogram", help, Some("seconds"), fmt);
        for e in edges {
            histogram(out, name, &edge_labels(e), h(e), graph::BOUNDS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::Registry,
        spanmetrics::{
            SpanMetrics,
            tests::{resource, server},
        },
    };

    #[test]
    fn histograms_are_cumulative_with_resource_and_point_labels() {
        let m = SpanMetrics::new(10, &Registry::default());
        let r = resource(1, "shop \"eu\"");
        m.record(&[
            server(&r, 200, 3, Some("/a")),
            server(&r, 200, 30, Some("/a")),
            server(&r, 500, 3000, Some("/a")),
        ]);
        let mut text = String::new();
        render(&m.snapshot(), Format::Text, &mut text);
        let base = r#"service_name="shop \"eu\"",host_name="node-1",http_request_method="GET",url_scheme="http",http_route="/a""#;
        for line in [
            "# TYPE http_server_request_duration_seconds histogram".to_string(),
            format!(
                "http_server_request_duration_seconds_bucket{{{base},http_response_status_code=\"200\",network_protocol_version=\"1.1\",le=\"0.005\"}} 1"
            ),
            format!(
                "http_server_request_duration_seconds_bucket{{{base},http_response_status_code=\"200\",network_protocol_version=\"1.1\",le=\"0.05\"}} 2"
            ),
            format!(
                "http_server_request_duration_seconds_bucket{{{base},http_response_status_code=\"200\",network_protocol_version=\"1.1\",le=\"+Inf\"}} 2"
            ),
            format!(
                "http_server_request_duration_seconds_count{{{base},http_response_status_code=\"200\",network_protocol_version=\"1.1\"}} 2"
            ),
            format!(
                "http_server_request_duration_seconds_count{{{base},http_response_status_code=\"500\",error_type=\"500\",network_protocol_version=\"1.1\"}} 1"
            ),
            format!(
                "http_server_request_duration_seconds_sum{{{base},http_response_status_code=\"500\",error_type=\"500\",network_protocol_version=\"1.1\"}} 3.0"
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nnot in\n{text}");
        }
        assert!(!text.contains("process_pid"));
        assert!(!text.contains("url_path"));
    }

    #[test]
    fn label_names_follow_the_prometheus_rules() {
        assert_eq!(
            label_name("http.response.status_code"),
            "http_response_status_code"
        );
        assert_eq!(label_name("k8s.pod.name"), "k8s_pod_name");
        assert_eq!(label_name("9lives-x"), "_9lives_x");
        assert_eq!(
            metric_name(Instrument::RpcClient),
            "rpc_client_duration_milliseconds"
        );
    }
}
