//! Human-readable one-line-per-span output (the default) and JSON lines for scripts.
use std::io::Write;

use serde_json::{Map, Value as Json, json};

use crate::span::{Span, SpanKind, Status, Value, hex};

fn json_value(v: &Value) -> Json {
    match v {
        Value::Str(s) => Json::String(s.clone()),
        Value::Int(i) => json!(i),
        Value::Float(x) => json!(x),
        Value::Bool(b) => json!(b),
    }
}

/// One span as a JSON object (also the shape the end-to-end tests read).
pub fn to_json(sp: &Span) -> Json {
    let attrs: Map<String, Json> = sp
        .attributes
        .iter()
        .map(|a| (a.key.to_string(), json_value(&a.value)))
        .collect();
    let resource: Map<String, Json> = sp
        .resource
        .attributes
        .iter()
        .map(|a| (a.key.to_string(), json_value(&a.value)))
        .collect();
    json!({
        "trace_id": hex(&sp.trace_id),
        "span_id": hex(&sp.span_id),
        "parent_span_id": sp.parent_span_id.map(|p| hex(&p)),
        "kind": match sp.kind { SpanKind::Server => "SERVER", SpanKind::Client => "CLIENT" },
        "name": sp.name,
        "start_unix_nano": sp.start_unix_ns,
        "end_unix_nano": sp.end_unix_ns,
        "duration_ns": sp.end_unix_ns.saturating_sub(sp.start_unix_ns),
        "status": match &sp.status { Status::Unset => json!({"code": "UNSET"}), Status::Error(m) => json!({"code": "ERROR", "message": m}) },
        "attributes": attrs,
        "resource": resource,
    })
}

fn fmt_duration(ns: u64) -> String {
    match ns {
        0..=999_999 => format!("{:.0}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

/// `HH:MM:SS.mmm SERVER python3[4242] GET /a?b=REDACTED -> 200 1.23ms peer=127.0.0.1:5555 trace=...`
pub fn to_line(sp: &Span) -> String {
    let secs = sp.start_unix_ns / 1_000_000_000;
    let ms = (sp.start_unix_ns / 1_000_000) % 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let get = |k: &str| sp.attr(k).map(|v| v.to_string());
    let target = match (get("url.path"), get("url.query")) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p,
        _ => "-".into(),
    };
    let status = get("http.response.status_code")
        .or_else(|| get("error.type"))
        .unwrap_or_else(|| "-".into());
    let peer = match (get("network.peer.address"), get("network.peer.port")) {
        (Some(a), Some(p)) => format!(" peer={a}:{p}"),
        _ => String::new(),
    };
    let parent = sp
        .parent_span_id
        .map(|p| format!(" parent={}", hex(&p)))
        .unwrap_or_default();
    format!(
        "{h:02}:{m:02}:{s:02}.{ms:03} {kind} {svc}[{pid}] {method} {target} -> {status} {dur}{err}{peer} trace={trace}{parent}",
        kind = match sp.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        },
        svc = sp.resource.service_name,
        pid = sp.resource.pid,
        method = get("http.request.method_original")
            .or_else(|| get("http.request.method"))
            .unwrap_or_default(),
        dur = fmt_duration(sp.end_unix_ns.saturating_sub(sp.start_unix_ns)),
        err = if matches!(sp.status, Status::Error(_)) {
            " ERROR"
        } else {
            ""
        },
        trace = hex(&sp.trace_id),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One readable line per span.
    Text,
    /// One JSON object per line.
    Json,
}

/// Writes spans to a stream (stdout by default).
pub struct Printer {
    pub format: Format,
    pub out: Box<dyn Write + Send>,
}

impl Printer {
    pub fn write(&mut self, spans: &[Span]) -> std::io::Result<()> {
        for sp in spans {
            match self.format {
                Format::Text => writeln!(self.out, "{}", to_line(sp))?,
                Format::Json => writeln!(self.out, "{}", to_json(sp))?,
            }
        }
        self.out.flush()
    }
}
