//! Human-readable one-line-per-span output (the default) and JSON lines for scripts.
use std::{collections::HashMap, io::Write};

use serde_json::{Map, Value as Json, json};

use crate::{
    semconv,
    span::{Span, SpanKind, Status, Value, hex},
};

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
        "trace_state": sp.trace_state,
        "kind": sp.kind.as_str(),
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
    line(sp, 0)
}

/// One span's line, `depth` levels below its trace's first span on the terminal: children
/// are indented under their parent and name neither trace nor parent (the tree shows them).
fn line(sp: &Span, depth: usize) -> String {
    let secs = sp.start_unix_ns / 1_000_000_000;
    let ms = (sp.start_unix_ns / 1_000_000) % 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let get = |k: &str| sp.attr(k).map(|v| v.to_string());
    let dur = fmt_duration(sp.end_unix_ns.saturating_sub(sp.start_unix_ns));
    let err = if matches!(sp.status, Status::Error(_)) {
        " ERROR"
    } else {
        ""
    };
    if sp.kind == SpanKind::Internal {
        // The tracer's own work: what it did, not a request.
        return format!(
            "{h:02}:{m:02}:{s:02}.{ms:03} INTERNAL {svc}[{pid}] {name}: {what} {dur}{err}",
            svc = sp.resource.service_name,
            pid = sp.resource.pid,
            name = sp.name,
            what = get("tracer.reload.changes").unwrap_or_default(),
        );
    }
    let target = match (get(semconv::URL_PATH), get(semconv::URL_QUERY)) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p,
        _ => "-".into(),
    };
    let status = get(semconv::HTTP_RESPONSE_STATUS_CODE)
        .or_else(|| get(semconv::ERROR_TYPE))
        .unwrap_or_else(|| "-".into());
    let peer = match (
        get(semconv::NETWORK_PEER_ADDRESS),
        get(semconv::NETWORK_PEER_PORT),
    ) {
        (Some(a), Some(p)) => format!(" peer={a}:{p}"),
        _ => String::new(),
    };
    let ids = if depth == 0 {
        let parent = sp
            .parent_span_id
            .map(|p| format!(" parent={}", hex(&p)))
            .unwrap_or_default();
        format!(" trace={}{parent}", hex(&sp.trace_id))
    } else {
        String::new()
    };
    let indent = match depth {
        0 => String::new(),
        d => format!("{}└─ ", "   ".repeat(d - 1)),
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{ms:03} {indent}{kind} {svc}[{pid}] {method} {target} -> {status} {dur}{err}{peer}{ids}",
        kind = sp.kind.as_str(),
        svc = sp.resource.service_name,
        pid = sp.resource.pid,
        method = get(semconv::HTTP_REQUEST_METHOD_ORIGINAL)
            .or_else(|| get(semconv::HTTP_REQUEST_METHOD))
            .unwrap_or_default(),
    )
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
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
        // The joiner sends a trace's spans together, parents first: a span whose parent was
        // printed just before it in this batch goes under it.
        let mut depth: HashMap<[u8; 8], usize> = HashMap::new();
        for sp in spans {
            match self.format {
                Format::Text => {
                    let d = sp
                        .parent_span_id
                        .and_then(|p| depth.get(&p))
                        .map_or(0, |d| d + 1);
                    depth.insert(sp.span_id, d);
                    writeln!(self.out, "{}", line(sp, d))?
                }
                Format::Json => writeln!(self.out, "{}", to_json(sp))?,
            }
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        span::{Resource, kv},
        testing::SharedBuf,
    };

    fn span(name: &str, id: u8, parent: Option<u8>, kind: SpanKind) -> Span {
        Span {
            trace_id: [0xab; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            flags: 1,
            trace_state: None,
            kind,
            name: name.into(),
            start_unix_ns: 3_723_004_000_000,
            end_unix_ns: 3_723_006_500_000,
            status: Status::Unset,
            attributes: vec![
                kv("http.request.method", Value::Str("GET".into())),
                kv("url.path", Value::Str(format!("/{name}"))),
                kv("http.response.status_code", Value::Int(200)),
            ],
            resource: Arc::new(Resource {
                pid: u32::from(id),
                service_name: name.into(),
                attributes: vec![],
            }),
        }
    }

    #[test]
    fn a_trace_prints_as_a_tree() {
        let out = SharedBuf::default();
        let mut p = Printer {
            format: Format::Text,
            out: Box::new(out.clone()),
        };
        p.write(&[
            span("curl", 1, None, SpanKind::Client),
            span("front", 2, Some(1), SpanKind::Server),
            span("call", 3, Some(2), SpanKind::Client),
            span("back", 4, Some(3), SpanKind::Server),
            span("other", 5, Some(9), SpanKind::Server),
        ])
        .unwrap();
        let text = String::from_utf8(out.bytes()).unwrap();
        let trace = "abababababababababababababababab";
        assert_eq!(
            text,
            format!(
                "01:02:03.004 CLIENT curl[1] GET /curl -> 200 2.50ms trace={trace}\n\
                 01:02:03.004 └─ SERVER front[2] GET /front -> 200 2.50ms\n\
                 01:02:03.004    └─ CLIENT call[3] GET /call -> 200 2.50ms\n\
                 01:02:03.004       └─ SERVER back[4] GET /back -> 200 2.50ms\n\
                 01:02:03.004 SERVER other[5] GET /other -> 200 2.50ms trace={trace} parent=0909090909090909\n"
            )
        );
    }
}
