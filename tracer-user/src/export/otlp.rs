//! OTLP export over gRPC or HTTP/protobuf. One request carries one ResourceSpans per traced
//! process (the SDK exporter would send one request per resource: ~2x the CPU per span).
use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use prost::encoding::encoded_len_varint;

use super::ExportError;
use crate::span::{KeyValue, Resource, Span, SpanKind, Status, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// What an OTLP endpoint receives: its variables (`OTEL_EXPORTER_OTLP_<SIGNAL>_*`), HTTP path
/// and gRPC method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    pub fn var(self, what: &str) -> String {
        let s = match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        };
        format!("OTEL_EXPORTER_OTLP_{s}_{what}")
    }

    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub signal: Signal,
    pub protocol: Protocol,
    /// Full URL: for HTTP it includes the signal's path (`/v1/traces`).
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    /// Used when the endpoint is https.
    pub tls: super::tls::TlsFiles,
}

// The ExportTraceServiceRequest protobuf, written straight from our spans: the messages of
// opentelemetry-proto, their fields in tag order and proto3 defaults left out, as prost
// writes them (the tests compare both byte for byte). Sizes are computed first, so the
// request is one exact-size buffer with no intermediate messages.

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

const SCOPE_NAME: &str = "tracer";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// `Status.code` STATUS_CODE_ERROR.
const STATUS_ERROR: u8 = 2;

/// Base 128, low group first. (prost's `encode_varint` goes through `BufMut` a byte at a
/// time, twice as slow here.)
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, tag: u32, wire: u32) {
    put_varint(buf, u64::from((tag << 3) | wire));
}

/// Size of a length-delimited field (tag below 16) with a body of `len` bytes.
fn len_field(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_len(buf: &mut Vec<u8>, tag: u32, len: usize) {
    put_key(buf, tag, LEN);
    put_varint(buf, len as u64);
}

/// A string field: left out when empty (the proto3 default).
fn str_field(s: &str) -> usize {
    if s.is_empty() { 0 } else { len_field(s.len()) }
}

fn put_str(buf: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        put_len(buf, tag, s.len());
        buf.extend_from_slice(s.as_bytes());
    }
}

/// AnyValue: its `value` oneof is written even when it holds a default.
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => len_field(s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + encoded_len_varint(*i as u64),
        Value::Float(_) => 9,
    }
}

fn key_value_len(a: &KeyValue) -> usize {
    str_field(&a.key) + len_field(any_value_len(&a.value))
}

fn attributes_len(attrs: &[KeyValue]) -> usize {
    attrs.iter().map(|a| len_field(key_value_len(a))).sum()
}

/// The KeyValue messages of a repeated field `tag`.
fn put_attributes(buf: &mut Vec<u8>, tag: u32, attrs: &[KeyValue]) {
    for a in attrs {
        put_len(buf, tag, key_value_len(a));
        put_str(buf, 1, &a.key);
        put_len(buf, 2, any_value_len(&a.value));
        match &a.value {
            Value::Str(s) => {
                put_len(buf, 1, s.len());
                buf.extend_from_slice(s.as_bytes());
            }
            Value::Bool(b) => {
                put_key(buf, 2, VARINT);
                buf.push(u8::from(*b));
            }
            Value::Int(i) => {
                put_key(buf, 3, VARINT);
                put_varint(buf, *i as u64);
            }
            Value::Float(x) => {
                put_key(buf, 4, FIXED64);
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

fn status_len(st: &Status) -> usize {
    match st {
        Status::Unset => 0,
        Status::Error(m) => str_field(m) + 2,
    }
}

/// Low byte: W3C trace flags; bit 8: the sampled flag is known (OTLP SpanFlags).
fn span_flags(sp: &Span) -> u32 {
    u32::from(sp.flags) | 0x100
}

fn span_len(sp: &Span) -> usize {
    let time = |t: u64| if t == 0 { 0 } else { 9 };
    len_field(16)
        + len_field(8)
        + sp.trace_state.as_deref().map_or(0, str_field)
        + sp.parent_span_id.map_or(0, |_| len_field(8))
        + str_field(&sp.name)
        + 2
        + time(sp.start_unix_ns)
        + time(sp.end_unix_ns)
        + attributes_len(&sp.attributes)
        + len_field(status_len(&sp.status))
        // flags: tag 16 takes a two-byte key.
        + 6
}

fn put_span(buf: &mut Vec<u8>, sp: &Span) {
    put_len(buf, 1, 16);
    buf.extend_from_slice(&sp.trace_id);
    put_len(buf, 2, 8);
    buf.extend_from_slice(&sp.span_id);
    if let Some(ts) = &sp.trace_state {
        put_str(buf, 3, ts);
    }
    if let Some(p) = &sp.parent_span_id {
        put_len(buf, 4, 8);
        buf.extend_from_slice(p);
    }
    put_str(buf, 5, &sp.name);
    put_key(buf, 6, VARINT);
    // SpanKind: INTERNAL 1, SERVER 2, CLIENT 3.
    buf.push(match sp.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    });
    for (tag, t) in [(7, sp.start_unix_ns), (8, sp.end_unix_ns)] {
        if t != 0 {
            put_key(buf, tag, FIXED64);
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
    put_attributes(buf, 9, &sp.attributes);
    put_len(buf, 15, status_len(&sp.status));
    if let Status::Error(m) = &sp.status {
        put_str(buf, 2, m);
        put_key(buf, 3, VARINT);
        buf.push(STATUS_ERROR);
    }
    put_key(buf, 16, FIXED32);
    buf.extend_from_slice(&span_flags(sp).to_le_bytes());
}

fn scope_len() -> usize {
    str_field(SCOPE_NAME) + str_field(SCOPE_VERSION)
}

/// The spans of one process (one ResourceSpans), each with its encoded size.
struct Group<'a> {
    resource: &'a Resource,
    spans: Vec<(&'a Span, usize)>,
    resource_len: usize,
    scope_spans_len: usize,
}

impl Group<'_> {
    fn len(&self) -> usize {
        len_field(self.resource_len) + len_field(self.scope_spans_len)
    }
}

/// The ExportTraceServiceRequest of a batch: one ResourceSpans per process, in the order
/// their first spans came, each with one ScopeSpans holding its spans in batch order.
pub fn encode_request(spans: &[Span]) -> Vec<u8> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<*const Resource, usize> = HashMap::new();
    // Consecutive spans mostly come from the same process: no lookup for those.
    let mut last: Option<(*const Resource, usize)> = None;
    for sp in spans {
        let key = Arc::as_ptr(&sp.resource);
        let g = match last {
            Some((k, g)) if k == key => g,
            _ => *index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    resource: &sp.resource,
                    spans: Vec::new(),
                    resource_len: attributes_len(&sp.resource.attributes),
                    scope_spans_len: len_field(scope_len()),
                });
                groups.len() - 1
            }),
        };
        last = Some((key, g));
        let n = span_len(sp);
        groups[g].spans.push((sp, n));
        groups[g].scope_spans_len += len_field(n);
    }
    let total = groups.iter().map(|g| len_field(g.len())).sum();
    let mut buf = Vec::with_capacity(total);
    for g in &groups {
        put_len(&mut buf, 1, g.len());
        put_len(&mut buf, 1, g.resource_len);
        put_attributes(&mut buf, 1, &g.resource.attributes);
        put_len(&mut buf, 2, g.scope_spans_len);
        put_len(&mut buf, 1, scope_len());
        put_str(&mut buf, 1, SCOPE_NAME);
        put_str(&mut buf, 2, SCOPE_VERSION);
        for &(sp, n) in &g.spans {
            put_len(&mut buf, 2, n);
            put_span(&mut buf, sp);
        }
    }
    debug_assert_eq!(buf.len(), total);
    buf
}

/// Sends an already-encoded export request: each batch is encoded once, and a retry
/// resends the same bytes. The response (partial-success details) is not needed.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// A connection to an OTLP receiver; cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub enum OtlpClient {
    Grpc {
        channel: tonic::transport::Channel,
        path: &'static str,
        metadata: tonic::metadata::MetadataMap,
        timeout: Duration,
        gzip: bool,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
}

impl OtlpClient {
    /// Must be called inside a tokio runtime (the gRPC channel starts its connection task).
    pub fn new(cfg: &OtlpConfig) -> Result<Self, ExportError> {
        let bad_endpoint = |e: String| ExportError::Endpoint(cfg.endpoint.clone(), e);
        match cfg.protocol {
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| bad_endpoint(e.to_string()))?
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout);
                if cfg.endpoint.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(cfg.tls.grpc())
                        .map_err(|e| bad_endpoint(error_chain(&e)))?;
                }
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key =
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|_| ExportError::Header(k.clone()))?;
                    metadata.insert(key, v.parse().map_err(|_| ExportError::Header(k.clone()))?);
                }
                Ok(OtlpClient::Grpc {
                    channel: endpoint
                        .connect_with_connector_lazy(super::connect::grpc_connector(cfg.timeout)),
                    path: cfg.signal.grpc_path(),
                    metadata,
                    timeout: cfg.timeout,
                    gzip: cfg.gzip,
                })
            }
            Protocol::HttpProtobuf => {
                reqwest::Url::parse(&cfg.endpoint).map_err(|e| bad_endpoint(e.to_string()))?;
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| ExportError::Header(k.clone()))?;
                    headers.insert(name, v.parse().map_err(|_| ExportError::Header(k.clone()))?);
                }
                let client = cfg
                    .tls
                    .http(
                        reqwest::Client::builder()
                            .timeout(cfg.timeout)
                            .connector_layer(super::connect::RegisterLayer),
                    )
                    .build()
                    .map_err(|e| bad_endpoint(e.to_string()))?;
                Ok(OtlpClient::Http {
                    client,
                    url: cfg.endpoint.clone(),
                    headers,
                    gzip: cfg.gzip,
                })
            }
        }
    }

    /// Encodes a batch once, in the form this client sends (gzip applied for HTTP).
    pub fn encode(&self, spans: &[Span]) -> Bytes {
        self.body(encode_request(spans))
    }

    /// An encoded request in the form this client sends.
    pub fn body(&self, raw: Vec<u8>) -> Bytes {
        match self {
            OtlpClient::Http { gzip: true, .. } => {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                // Writing to a Vec cannot fail.
                let _ = enc.write_all(&raw);
                enc.finish()
                    .map(Bytes::from)
                    .unwrap_or_else(|_| Bytes::from(raw))
            }
            _ => Bytes::from(raw),
        }
    }

    /// Sends bytes made by [`OtlpClient::encode`].
    pub async fn export(&self, body: Bytes) -> Result<(), ExportError> {
        match self {
            OtlpClient::Grpc {
                channel,
                path,
                metadata,
                timeout,
                gzip,
            } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if *gzip {
                    grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(*timeout);
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
                let result = match grpc.ready().await {
                    Ok(()) => grpc
                        .unary::<_, (), _>(request, path, RawCodec)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(tonic::Status::unavailable(error_chain(&e))),
                };
                result.map_err(|status| {
                    use tonic::Code::*;
                    let mut msg = format!(
                        "OTLP/gRPC export failed: {}: {}",
                        status.code(),
                        status.message()
                    );
                    // A connection error's cause (a certificate refused) is in the sources.
                    if let Some(src) = std::error::Error::source(&status) {
                        msg = format!("{msg}: {}", error_chain(src));
                    }
                    // The codes the OTLP specification calls retryable.
                    match status.code() {
                        Cancelled | DeadlineExceeded | ResourceExhausted | Aborted | OutOfRange
                        | Unavailable | DataLoss | Unknown => ExportError::Retryable(msg),
                        _ => ExportError::Permanent(msg),
                    }
                })
            }
            OtlpClient::Http {
                client,
                url,
                headers,
                gzip,
            } => {
                let mut rb = client
                    .post(url)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                if *gzip {
                    rb = rb.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
                match rb.body(body).send().await {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => {
                        let code = resp.status().as_u16();
                        let msg = format!("OTLP/HTTP export to {url} failed: HTTP {code}");
                        if matches!(code, 429 | 502 | 503 | 504) {
                            Err(ExportError::Retryable(msg))
                        } else {
                            Err(ExportError::Permanent(msg))
                        }
                    }
                    Err(e) => Err(ExportError::Retryable(format!(
                        "OTLP/HTTP export to {url} failed: {}",
                        error_chain(&e)
                    ))),
                }
            }
        }
    }
}

/// An error and its causes, outermost first: client errors say "error sending request" and
/// keep what went wrong (refused, a certificate not trusted) in their sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out = format!("{out}: {s}");
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, InstrumentationScope, KeyValue as PbKeyValue, any_value},
        resource::v1::Resource as PbResource,
        trace::v1::{
            ResourceSpans, ScopeSpans, Span as PbSpan, Status as PbStatus,
            span::SpanKind as PbKind, status::StatusCode,
        },
    };
    use prost::Message;

    use super::*;
    use crate::span::kv;

    /// The request as opentelemetry-proto's messages, built the way the exporter did before it
    /// wrote the protobuf itself: what [`encode_request`] must be equivalent to.
    fn reference(spans: Vec<Span>) -> ExportTraceServiceRequest {
        fn attrs(attrs: &[KeyValue]) -> Vec<PbKeyValue> {
            attrs
                .iter()
                .map(|a| PbKeyValue {
                    key: a.key.to_string(),
                    value: Some(AnyValue {
                        value: Some(match &a.value {
                            Value::Str(s) => any_value::Value::StringValue(s.clone()),
                            Value::Int(i) => any_value::Value::IntValue(*i),
                            Value::Float(x) => any_value::Value::DoubleValue(*x),
                            Value::Bool(b) => any_value::Value::BoolValue(*b),
                        }),
                    }),
                    ..Default::default()
                })
                .collect()
        }
        let mut by_resource: HashMap<*const Resource, (Arc<Resource>, Vec<PbSpan>)> =
            HashMap::new();
        let mut order = Vec::new();
        for sp in spans {
            let key = Arc::as_ptr(&sp.resource);
            let pb = PbSpan {
                trace_id: sp.trace_id.to_vec(),
                span_id: sp.span_id.to_vec(),
                parent_span_id: sp.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
                trace_state: sp.trace_state.clone().unwrap_or_default(),
                flags: sp.flags as u32 | 0x100,
                name: sp.name.clone(),
                kind: match sp.kind {
                    SpanKind::Internal => PbKind::Internal,
                    SpanKind::Server => PbKind::Server,
                    SpanKind::Client => PbKind::Client,
                } as i32,
                start_time_unix_nano: sp.start_unix_ns,
                end_time_unix_nano: sp.end_unix_ns,
                attributes: attrs(&sp.attributes),
                status: Some(match &sp.status {
                    Status::Unset => PbStatus::default(),
                    Status::Error(m) => PbStatus {
                        message: m.clone(),
                        code: StatusCode::Error as i32,
                    },
                }),
                ..Default::default()
            };
            by_resource
                .entry(key)
                .or_insert_with(|| {
                    order.push(key);
                    (sp.resource.clone(), Vec::new())
                })
                .1
                .push(pb);
        }
        let resource_spans = order
            .into_iter()
            .filter_map(|k| by_resource.remove(&k))
            .map(|(res, spans)| ResourceSpans {
                resource: Some(PbResource {
                    attributes: attrs(&res.attributes),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tracer".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }

    fn decode(spans: &[Span]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(&encode_request(spans)[..]).unwrap()
    }

    fn span(res: &Arc<Resource>, name: &str) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            flags: 1,
            trace_state: None,
            kind: SpanKind::Server,
            name: name.into(),
            start_unix_ns: 1,
            end_unix_ns: 2,
            status: Status::Error("500".into()),
            attributes: vec![kv("http.response.status_code", Value::Int(500))],
            resource: res.clone(),
        }
    }

    #[test]
    fn one_resource_spans_per_process() {
        let a = Arc::new(Resource {
            pid: 1,
            service_name: "a".into(),
            attributes: vec![kv("service.name", Value::Str("a".into()))],
        });
        let b = Arc::new(Resource {
            pid: 2,
            service_name: "b".into(),
            attributes: vec![],
        });
        let req = decode(&[span(&a, "GET"), span(&b, "POST"), span(&a, "PUT")]);
        assert_eq!(req.resource_spans.len(), 2);
        let names: Vec<_> = req.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["GET", "PUT"]);
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.kind, PbKind::Server as i32);
        assert_eq!(s.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert!(s.parent_span_id.is_empty());
        assert_eq!(
            s.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(500))
        );
    }

    /// Every kind of value and field, defaults included (empty strings, zero times, no
    /// parent, unset status), over processes that interleave: the bytes decode to the
    /// messages the opentelemetry-proto path builds, and are the bytes prost writes for them.
    #[test]
    fn encodes_what_opentelemetry_proto_would() {
        let a = Arc::new(Resource {
            pid: 1,
            service_name: "nginx".into(),
            attributes: vec![
                kv("service.name", Value::Str("nginx".into())),
                kv("process.pid", Value::Int(1)),
                kv("process.command_args", Value::Str("x".repeat(300))),
            ],
        });
        let b = Arc::new(Resource {
            pid: 2,
            service_name: String::new(),
            attributes: vec![],
        });
        let mut client = span(&b, "");
        client.kind = SpanKind::Client;
        client.parent_span_id = Some([7; 8]);
        client.flags = 0;
        client.trace_state = Some("vendor=x,other=y".into());
        client.start_unix_ns = 0;
        client.status = Status::Error(String::new());
        client.attributes = vec![
            kv("neg", Value::Int(-5)),
            kv("zero", Value::Int(0)),
            kv("big", Value::Int(i64::MAX)),
            kv("pi", Value::Float(3.25)),
            kv("zero.float", Value::Float(0.0)),
            kv("yes", Value::Bool(true)),
            kv("no", Value::Bool(false)),
            kv("empty", Value::Str(String::new())),
            kv(String::new(), Value::Str("no key".into())),
            kv("long", Value::Str("v".repeat(20_000))),
        ];
        let mut unset = span(&a, "GET");
        unset.status = Status::Unset;
        unset.end_unix_ns = 0;
        unset.attributes.clear();
        let spans = vec![
            span(&a, "GET"),
            client,
            unset,
            span(&b, "POST"),
            span(&a, "PUT"),
        ];
        let want = reference(spans.clone());
        assert_eq!(decode(&spans), want);
        assert_eq!(encode_request(&spans), want.encode_to_vec());
        assert!(encode_request(&[]).is_empty());
    }
}
