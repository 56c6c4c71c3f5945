//! OTLP export over gRPC or HTTP/protobuf. One request carries one ResourceSpans per traced
//! process (the SDK exporter would send one request per resource: ~2x the CPU per span).
use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue as PbKeyValue, any_value},
    resource::v1::Resource as PbResource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span as PbSpan, Status as PbStatus, span::SpanKind as PbKind,
        status::StatusCode,
    },
};
use prost::Message;

use crate::span::{KeyValue, Resource, Span, SpanKind, Status, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// Full URL: for HTTP it includes `/v1/traces`.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid OTLP endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("invalid OTLP header {0:?}")]
    Header(String),
    /// Worth trying again (endpoint down, overloaded, timed out).
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

impl ExportError {
    pub fn retryable(&self) -> bool {
        matches!(self, ExportError::Retryable(_))
    }
}

fn pb_value(v: &Value) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Value::Str(s) => any_value::Value::StringValue(s.clone()),
            Value::Int(i) => any_value::Value::IntValue(*i),
            Value::Float(x) => any_value::Value::DoubleValue(*x),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
        }),
    }
}

fn pb_value_owned(v: Value) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Value::Str(s) => any_value::Value::StringValue(s),
            Value::Int(i) => any_value::Value::IntValue(i),
            Value::Float(x) => any_value::Value::DoubleValue(x),
            Value::Bool(b) => any_value::Value::BoolValue(b),
        }),
    }
}

/// Resource attributes are shared by many spans: copied once per request.
fn pb_attrs(attrs: &[KeyValue]) -> Vec<PbKeyValue> {
    attrs
        .iter()
        .map(|a| PbKeyValue {
            key: a.key.to_string(),
            value: Some(pb_value(&a.value)),
            ..Default::default()
        })
        .collect()
}

/// Span attributes are moved, not copied: the batch is not needed after conversion.
fn pb_attrs_owned(attrs: Vec<KeyValue>) -> Vec<PbKeyValue> {
    attrs
        .into_iter()
        .map(|a| PbKeyValue {
            key: a.key.into_owned(),
            value: Some(pb_value_owned(a.value)),
            ..Default::default()
        })
        .collect()
}

fn pb_span(sp: Span) -> PbSpan {
    PbSpan {
        trace_id: sp.trace_id.to_vec(),
        span_id: sp.span_id.to_vec(),
        parent_span_id: sp.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        // Low byte: W3C trace flags; bit 8: the sampled-flag is known (OTLP SpanFlags).
        flags: sp.flags as u32 | 0x100,
        name: sp.name,
        kind: match sp.kind {
            SpanKind::Server => PbKind::Server,
            SpanKind::Client => PbKind::Client,
        } as i32,
        start_time_unix_nano: sp.start_unix_ns,
        end_time_unix_nano: sp.end_unix_ns,
        attributes: pb_attrs_owned(sp.attributes),
        status: Some(match sp.status {
            Status::Unset => PbStatus::default(),
            Status::Error(m) => PbStatus {
                message: m,
                code: StatusCode::Error as i32,
            },
        }),
        ..Default::default()
    }
}

/// Groups spans by the process they came from: one ResourceSpans each.
pub fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut by_resource: HashMap<*const Resource, (Arc<Resource>, Vec<PbSpan>)> = HashMap::new();
    let mut order = Vec::new();
    for sp in spans {
        let key = Arc::as_ptr(&sp.resource);
        by_resource
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                (sp.resource.clone(), Vec::new())
            })
            .1
            .push(pb_span(sp));
    }
    let resource_spans = order
        .into_iter()
        .filter_map(|k| by_resource.remove(&k))
        .map(|(res, spans)| ResourceSpans {
            resource: Some(PbResource {
                attributes: pb_attrs(&res.attributes),
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

/// The gRPC method OTLP receivers serve.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends an already-encoded ExportTraceServiceRequest: each batch is encoded once, and a retry
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
                let endpoint = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| bad_endpoint(e.to_string()))?
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout);
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key =
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|_| ExportError::Header(k.clone()))?;
                    metadata.insert(key, v.parse().map_err(|_| ExportError::Header(k.clone()))?);
                }
                Ok(OtlpClient::Grpc {
                    channel: endpoint.connect_lazy(),
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
                let client = reqwest::Client::builder()
                    .timeout(cfg.timeout)
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
    pub fn encode(&self, req: &ExportTraceServiceRequest) -> Bytes {
        let raw = req.encode_to_vec();
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
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
                let result = match grpc.ready().await {
                    Ok(()) => grpc
                        .unary::<_, (), _>(request, path, RawCodec)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                };
                result.map_err(|status| {
                    use tonic::Code::*;
                    let msg = format!(
                        "OTLP/gRPC export failed: {}: {}",
                        status.code(),
                        status.message()
                    );
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
                        "OTLP/HTTP export to {url} failed: {e}"
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::kv;

    fn span(res: &Arc<Resource>, name: &str) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            flags: 1,
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
        let req = request(vec![span(&a, "GET"), span(&b, "POST"), span(&a, "PUT")]);
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
}
