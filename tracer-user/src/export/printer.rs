//! Human-readable one-line-per-span output (the default) and JSON lines for scripts, and those
//! JSON lines read back (`tracer plugins check --spans`).
use std::{collections::HashMap, io::Write, sync::Arc};

use serde_json::{Map, Value as Json, json};

use crate::{
    semconv,
    span::{KeyValue, Resource, Span, SpanKind, Status, Value, hex, kv},
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

/// Why a line of JSON is not a span as [`to_json`] writes it.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct JsonLineError {
    /// 1-based.
    pub line: usize,
    pub why: String,
}

/// The spans of JSON lines as `tracer run --output json` prints them, one per line (blank
/// lines skipped); the same span (trace and span id) twice is refused. Spans with the same
/// resource share it. `duration_ns` is ignored (it is
/// `end_unix_nano - start_unix_nano`); `parent_span_id`, `trace_state`, `status`, `attributes`
/// and `resource` may be left out; the trace flags read sampled.
pub fn from_json_lines(text: &str) -> Result<Vec<Span>, JsonLineError> {
    let mut resources: Vec<Arc<Resource>> = Vec::new();
    let mut spans = Vec::new();
    let mut lines: HashMap<([u8; 16], [u8; 8]), usize> = HashMap::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let err = |why: String| JsonLineError { line: i + 1, why };
        let v: Json = serde_json::from_str(l).map_err(|e| err(format!("not JSON: {e}")))?;
        let mut sp = from_json(&v).map_err(err)?;
        if let Some(first) = lines.insert((sp.trace_id, sp.span_id), i + 1) {
            return Err(err(format!(
                "the span of line {first} again (trace_id and span_id): give each span its own span_id"
            )));
        }
        match resources.iter().find(|r| **r == sp.resource) {
            Some(r) => sp.resource = r.clone(),
            None => resources.push(sp.resource.clone()),
        }
        spans.push(sp);
    }
    Ok(spans)
}

/// The inverse of [`to_json`]; Err names the field.
fn from_json(v: &Json) -> Result<Span, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let bad = |k: &str, want: &str| format!("{k}: expected {want}");
    let text = |k: &str| {
        get(k)
            .map(|v| v.as_str().ok_or_else(|| bad(k, "a string")))
            .transpose()
    };
    let required = |k: &str| get(k).ok_or_else(|| format!("{k}: missing"));
    let nanos = |k: &str| {
        required(k)?
            .as_u64()
            .ok_or_else(|| bad(k, "nanoseconds (an unsigned integer)"))
    };
    fn id<const N: usize>(k: &str, hex: Option<&str>) -> Result<Option<[u8; N]>, String> {
        hex.map(|h| unhex(h).ok_or_else(|| format!("{k}: expected {} hex digits", 2 * N)))
            .transpose()
    }
    let kind = match required("kind")?.as_str() {
        Some("SERVER") => SpanKind::Server,
        Some("CLIENT") => SpanKind::Client,
        Some("INTERNAL") => SpanKind::Internal,
        _ => return Err(bad("kind", "\"SERVER\", \"CLIENT\" or \"INTERNAL\"")),
    };
    let status = match get("status").map(|s| (s["code"].as_str(), &s["message"])) {
        None | Some((Some("UNSET"), _)) => Status::Unset,
        Some((Some("ERROR"), m)) => Status::Error(m.as_str().unwrap_or_default().to_owned()),
        Some(_) => {
            return Err(bad(
                "status",
                "{\"code\": \"UNSET\"} or {\"code\": \"ERROR\", \"message\": \"...\"}",
            ));
        }
    };
    let resource_attributes = attributes_of("resource", get("resource"))?;
    let res_attr = |k: &str| {
        resource_attributes
            .iter()
            .find(|a| a.key == k)
            .map(|a| &a.value)
    };
    let resource = Resource {
        pid: match res_attr(semconv::PROCESS_PID) {
            Some(Value::Int(p)) => {
                u32::try_from(*p).map_err(|_| bad("resource: process.pid", "a pid"))?
            }
            _ => 0,
        },
        service_name: match res_attr(semconv::SERVICE_NAME) {
            Some(Value::Str(s)) => s.clone(),
            _ => "unknown_service".into(),
        },
        attributes: resource_attributes,
    };
    let (start_unix_ns, end_unix_ns) = (nanos("start_unix_nano")?, nanos("end_unix_nano")?);
    if end_unix_ns < start_unix_ns {
        return Err("end_unix_nano: before start_unix_nano".into());
    }
    Ok(Span {
        trace_id: id("trace_id", text("trace_id")?)?.ok_or("trace_id: missing")?,
        span_id: id("span_id", text("span_id")?)?.ok_or("span_id: missing")?,
        parent_span_id: id("parent_span_id", text("parent_span_id")?)?,
        flags: 1,
        trace_state: text("trace_state")?.map(str::to_owned),
        kind,
        name: text("name")?.ok_or("name: missing")?.to_owned(),
        start_unix_ns,
        end_unix_ns,
        status,
        attributes: attributes_of("attributes", get("attributes"))?,
        resource: Arc::new(resource),
    })
}

/// The attributes of a JSON object of scalars (`field` names it in errors).
fn attributes_of(field: &str, v: Option<&Json>) -> Result<Vec<KeyValue>, String> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{field}: expected an object of attributes"))?;
    obj.iter()
        .map(|(k, v)| {
            let value = match v {
                Json::String(s) => Value::Str(s.clone()),
                Json::Bool(b) => Value::Bool(*b),
                Json::Number(n) => match n.as_i64() {
                    Some(i) => Value::Int(i),
                    None => Value::Float(
                        n.as_f64()
                            .ok_or_else(|| format!("{field}: {k}: out of range"))?,
                    ),
                },
                _ => {
                    return Err(format!(
                        "{field}: {k}: expected a string, number or boolean"
                    ));
                }
            };
            Ok(kv(k.clone(), value))
        })
        .collect()
}

/// `N` bytes from `2 * N` hex digits, the inverse of [`hex`].
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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

    #[test]
    fn json_lines_read_back_into_the_spans_they_print() {
        let mut spans = crate::plugins::samples();
        spans[1].parent_span_id = Some([7; 8]);
        spans[1].trace_state = Some("vendor=x".into());
        spans[2]
            .attributes
            .push(kv("sampling.ratio", Value::Float(0.25)));
        spans[2].attributes.push(kv("cached", Value::Bool(true)));
        let text: String = spans
            .iter()
            .map(|s| format!("{}\n\n", to_json(s)))
            .collect();
        let back = from_json_lines(&text).unwrap();
        // JSON objects have no order: the attributes come back sorted by key.
        let sorted = |s: &Span| {
            let mut s = s.clone();
            s.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            let mut r = (*s.resource).clone();
            r.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            s.resource = Arc::new(r);
            s
        };
        assert_eq!(
            back,
            spans.iter().map(sorted).collect::<Vec<_>>(),
            "the spans of one process share their resource"
        );
        assert!(Arc::ptr_eq(&back[0].resource, &back[3].resource));
        assert_eq!(back[0].resource.pid, 4242);
        assert_eq!(back[0].resource.service_name, "checkout");
    }

    #[test]
    fn a_line_that_is_not_a_span_is_named_with_what_is_wrong() {
        let good = to_json(&crate::plugins::samples()[0]);
        let with = |k: &str, v: Json| {
            let mut g = good.clone();
            g[k] = v;
            g.to_string()
        };
        let minimal = r#"{"trace_id":"0123456789abcdef0123456789abcdef","span_id":"0123456789abcdef","kind":"CLIENT","name":"GET","start_unix_nano":1,"end_unix_nano":2}"#;
        let s = from_json_lines(minimal).unwrap().remove(0);
        assert_eq!((s.status, s.attributes.len()), (Status::Unset, 0));
        assert_eq!(s.resource.service_name, "unknown_service");
        for (line, want) in [
            ("{\"trace_id\": ".to_string(), "not JSON: "),
            ("[1]".into(), "not a JSON object"),
            (
                with("trace_id", json!("abc")),
                "trace_id: expected 32 hex digits",
            ),
            (with("span_id", Json::Null), "span_id: missing"),
            (
                with("kind", json!("PRODUCER")),
                "kind: expected \"SERVER\", \"CLIENT\" or \"INTERNAL\"",
            ),
            (with("name", json!(3)), "name: expected a string"),
            (
                with("start_unix_nano", json!(-1)),
                "start_unix_nano: expected nanoseconds",
            ),
            (
                with("end_unix_nano", json!(0)),
                "end_unix_nano: before start_unix_nano",
            ),
            (
                with("status", json!({"code": "OK"})),
                "status: expected {\"code\": \"UNSET\"}",
            ),
            (
                with("attributes", json!({"a": [1]})),
                "attributes: a: expected a string, number or boolean",
            ),
            (
                with("resource", json!(1)),
                "resource: expected an object of attributes",
            ),
            (good.to_string(), "the span of line 1 again"),
        ] {
            let text = format!("{good}\n{line}\n");
            let e = from_json_lines(&text).unwrap_err();
            assert_eq!(e.line, 2, "{line}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("line 2: {want}")), "{line}: {msg}");
        }
    }
}
