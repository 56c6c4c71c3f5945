//! Span model and the builder that turns a decoded HTTP exchange into an OpenTelemetry span
//! following the stable HTTP semantic conventions.
use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    sync::Arc,
};

use crate::{
    context::{SAMPLED, TraceContext},
    decode::{
        Header, Role,
        headers::{HOST, USER_AGENT, X_FORWARDED_FOR},
        http1::{Exchange, Outcome, Request, Response, Version},
        http2::Stream,
    },
    semconv,
};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    /// Only plugins set these.
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

pub type Key = Cow<'static, str>;

/// Room for the attributes a span is built with and those added later (plugin edits, the
/// chain and config attributes), so adding them does not move the span's attributes.
pub const ATTRIBUTE_CAPACITY: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Key,
    pub value: Value,
}

pub fn kv(key: impl Into<Key>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    /// The tracer's own work (a reload), never a request it saw.
    Internal,
}

impl SpanKind {
    /// The OTLP name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Internal => "INTERNAL",
        }
    }
}

impl From<Role> for SpanKind {
    fn from(role: Role) -> Self {
        match role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error(String),
}

/// The process a span came from (an OTel resource), shared by all its spans.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub pid: u32,
    pub service_name: String,
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C trace flags (1 = sampled), from the upstream's context or the local parent's.
    pub flags: u8,
    /// W3C `tracestate` the upstream sent, carried on to the spans of its trace.
    pub trace_state: Option<String>,
    pub kind: SpanKind,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: Status,
    pub attributes: Vec<KeyValue>,
    pub resource: Arc<Resource>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| &a.value)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Per-daemon choices about what spans contain.
#[derive(Clone, Debug, Default)]
pub struct SpanOptions {
    /// Keep query-string values (they are replaced by `REDACTED` by default: they often carry
    /// tokens and personal data).
    pub keep_query_values: bool,
}

/// What the connection table knows about the socket an exchange travelled on.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    /// This process's end, when known.
    pub local: Option<SocketAddr>,
    /// The bytes were the plaintext of a TLS library's calls (`url.scheme` https).
    pub tls: bool,
}

/// Converts CLOCK_MONOTONIC (what the probes stamp) to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real as i128 - mono as i128,
        }
    }

    pub fn to_unix(self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }

    pub fn to_mono(self, unix_ns: u64) -> u64 {
        (unix_ns as i128 - self.offset_ns).max(0) as u64
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Where the host is in `host[:port]` (including `[v6]:port`), and the port.
fn split_host(authority: &str) -> (Range<usize>, Option<u16>) {
    let lead = authority.len() - authority.trim_start().len();
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        let start = lead + 1;
        return (
            start..start + h.len(),
            tail.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (lead..lead + h.len(), p.parse().ok()),
        _ => (lead..lead + a.len(), None),
    }
}

/// Where the parts of a request target are: an absolute-form target's authority, the path
/// (None: an absolute-form target without one, "/") and the query.
struct Target {
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    query: Option<Range<usize>>,
}

impl Target {
    fn parse(target: &str) -> Self {
        let (authority, path_query) = match target.split_once("://") {
            Some((scheme, rest)) => {
                let base = scheme.len() + 3;
                match rest.find('/') {
                    Some(i) => (Some(base..base + i), Some(base + i..target.len())),
                    None => (Some(base..target.len()), None),
                }
            }
            None => (None, Some(0..target.len())),
        };
        let (path, query) = match path_query {
            Some(r) => match target[r.clone()].find('?') {
                Some(q) => (Some(r.start..r.start + q), Some(r.start + q + 1..r.end)),
                None => (Some(r), None),
            },
            None => (None, None),
        };
        Target {
            authority,
            path,
            query,
        }
    }
}

/// `server.port` when the authority names none: the scheme's.
fn default_port(conn: &ConnInfo) -> u16 {
    if conn.tls { 443 } else { 80 }
}

/// The server's end of the socket: the peer of a client, this end of a server. It names the
/// server when no Host or `:authority` does (HPACK state from before the tracer started).
fn socket_server(kind: SpanKind, conn: &ConnInfo) -> Option<SocketAddr> {
    match kind {
        SpanKind::Client => conn.peer,
        _ => conn.local,
    }
}

/// What the connection table decides from before (and instead of) building a span: the
/// filters' inputs, read from the decoded request as the span would have them, and the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub kind: SpanKind,
    /// The method as sent.
    pub method: Option<&'a str>,
    /// `url.path` when the target has a path of its own.
    pub path: Option<&'a str>,
    /// `server.port`: from the target's authority, `:authority` or Host, else the socket.
    pub server_port: Option<u16>,
    /// CLOCK_MONOTONIC end of the exchange: the span's end.
    pub ts_end: u64,
}

impl<'a> Head<'a> {
    pub fn http1(ex: &'a Exchange, conn: &ConnInfo) -> Self {
        let req = &ex.request;
        Self::new(
            conn,
            ex.role.into(),
            Some(&req.method),
            Some(&req.target),
            None,
            &req.headers,
            http1_end(req, ex.response.as_ref()),
        )
    }

    pub fn h2(st: &'a Stream, conn: &ConnInfo) -> Self {
        Self::new(
            conn,
            st.role.into(),
            st.method.as_deref(),
            st.path.as_deref(),
            st.authority.as_deref(),
            &st.request_headers,
            st.ts_end,
        )
    }

    /// The same precedence as [`build_call`]: the target's authority, then `:authority`,
    /// then Host.
    fn new(
        conn: &ConnInfo,
        kind: SpanKind,
        method: Option<&'a str>,
        target: Option<&'a str>,
        authority: Option<&'a str>,
        headers: &'a [Header],
        ts_end: u64,
    ) -> Self {
        let parts = target.map(|t| (t, Target::parse(t)));
        let in_target = parts
            .as_ref()
            .and_then(|(t, p)| Some(&t[p.authority.clone()?]));
        let host = || {
            headers
                .iter()
                .find(|(k, _)| k == HOST)
                .map(|(_, v)| v.as_str())
        };
        Head {
            kind,
            method,
            path: parts.and_then(|(t, p)| Some(&t[p.path?])),
            server_port: in_target
                .or(authority)
                .or_else(host)
                .map(|a| split_host(a).1.unwrap_or(default_port(conn)))
                .or_else(|| socket_server(kind, conn).map(|e| e.port())),
            ts_end,
        }
    }
}

/// The end of an HTTP/1 exchange: its response's, or its request's when there is none.
fn http1_end(req: &Request, response: Option<&Response>) -> u64 {
    response.map_or(req.ts_end, |r| r.ts_end.max(req.ts_end))
}

/// Replaces every query value with REDACTED, keeping the keys (what the query was about).
pub fn redact_query(q: &str) -> String {
    const MASK: &str = "REDACTED";
    let mut out = String::with_capacity(q.len() + MASK.len());
    // One pass: a pair's key and its first '=' are copied, the rest of the pair is not.
    let (mut from, mut in_value) = (0, false);
    for (i, b) in q.bytes().enumerate() {
        match b {
            b'=' if !in_value => {
                out.push_str(&q[from..=i]);
                out.push_str(MASK);
                in_value = true;
            }
            b'&' if in_value => {
                from = i;
                in_value = false;
            }
            _ => {}
        }
    }
    if !in_value {
        out.push_str(&q[from..]);
    }
    out
}

fn random_id<const N: usize>(rng: &mut impl rand::Rng) -> [u8; N] {
    loop {
        let id: [u8; N] = rng.random();
        if id != [0; N] {
            return id;
        }
    }
}

/// An IP address as text; IPv4, the common case, without the formatting machinery.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

/// `s[r]`, made in place: no new allocation.
fn keep_range(mut s: String, r: Range<usize>) -> String {
    s.truncate(r.end);
    s.drain(..r.start);
    s
}

/// One request/response as the span builder needs it, whatever the protocol. Its strings
/// are the decoder's: the span keeps them instead of copies.
struct Call<'a> {
    kind: SpanKind,
    /// None when it could not be decoded (HTTP/2 headers incomplete): never guessed.
    method: Option<String>,
    /// Request target: origin-form `/p?q`, absolute-form `http://h/p?q`, or `*`.
    target: Option<String>,
    /// `:authority` (HTTP/2); HTTP/1 uses the target or the Host header.
    authority: Option<String>,
    /// The values the span keeps are taken out.
    headers: &'a mut [Header],
    version: &'static str,
    status: Option<u16>,
    req_body: u64,
    resp_body: u64,
    ts_start: u64,
    ts_end: u64,
    /// Why the exchange failed beyond its status code.
    error: Option<String>,
    notes: Vec<KeyValue>,
}

/// The value of header `name`, moved out of `headers`.
fn take(headers: &mut [Header], name: &str) -> Option<String> {
    headers
        .iter_mut()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::mem::take(v))
}

/// Builds the span for one HTTP/1.x exchange.
pub fn build(
    ex: Exchange,
    conn: &ConnInfo,
    resource: &Arc<Resource>,
    clock: Clock,
    opts: &SpanOptions,
) -> Span {
    let Exchange {
        role,
        request: mut req,
        response,
        outcome,
    } = ex;
    let mut notes = Vec::new();
    let error = match outcome {
        Outcome::Complete => None,
        Outcome::ClosedBeforeResponse => Some("connection_closed_before_response".to_string()),
        Outcome::ClosedMidResponse => Some("connection_closed_mid_response".to_string()),
        // The response was seen but its exact end was not: say so, it is not an error.
        Outcome::FramingLost => {
            notes.push(kv(
                semconv::TRACER_HTTP_RESPONSE_END_ESTIMATED,
                Value::Bool(true),
            ));
            None
        }
    };
    if req.headers_truncated || response.as_ref().is_some_and(|r| r.headers_truncated) {
        notes.push(kv(
            semconv::TRACER_HTTP_HEADERS_TRUNCATED,
            Value::Bool(true),
        ));
    }
    let ts_end = http1_end(&req, response.as_ref());
    let call = Call {
        kind: role.into(),
        method: Some(req.method),
        target: Some(req.target),
        authority: None,
        headers: &mut req.headers,
        version: match req.version {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        },
        status: response.as_ref().map(|r| r.status),
        req_body: req.body_len,
        resp_body: response.as_ref().map_or(0, |r| r.body_len),
        ts_start: req.ts_start,
        ts_end,
        error,
        notes,
    };
    build_call(call, conn, resource, clock, opts)
}

/// gRPC status codes that make a SERVER span an error (OTel gRPC conventions); for CLIENT
/// spans every code but OK does.
const GRPC_SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// Builds the span for one HTTP/2 stream (a gRPC call when its content-type says so).
pub fn build_h2(
    mut st: Stream,
    conn: &ConnInfo,
    resource: &Arc<Resource>,
    clock: Clock,
    opts: &SpanOptions,
) -> Span {
    let kind = st.role.into();
    let mut notes = Vec::new();
    if st.headers_incomplete {
        notes.push(kv(
            semconv::TRACER_HTTP_HEADERS_INCOMPLETE,
            Value::Bool(true),
        ));
    }
    let error = match (st.reset, st.closed_early) {
        // A gRPC status known despite the reset (a deadline that ran out): that status tells.
        (Some(_), _) if st.is_grpc && st.grpc_status.is_some() => None,
        (Some(_), _) => Some("stream_reset".to_string()),
        // The response (or its end) went by in bytes we could not follow: not a failure.
        (None, true) if st.framing_lost => {
            notes.push(kv(
                semconv::TRACER_HTTP_RESPONSE_END_ESTIMATED,
                Value::Bool(true),
            ));
            None
        }
        (None, true) if st.status.is_some() => Some("connection_closed_mid_response".to_string()),
        (None, true) => Some("connection_closed_before_response".to_string()),
        _ => None,
    };
    // gRPC: `/package.Service/Method`; the RPC's status comes from grpc-status, not HTTP.
    let rpc = st
        .path
        .as_deref()
        .and_then(|p| p.strip_prefix('/')?.split_once('/'))
        .filter(|_| st.is_grpc)
        .map(|(service, method)| (service.to_string(), method.to_string()));
    let call = Call {
        kind,
        method: st.method,
        target: st.path,
        authority: st.authority,
        headers: &mut st.request_headers,
        version: "2",
        status: st.status,
        req_body: st.request_body_len,
        resp_body: st.response_body_len,
        ts_start: st.ts_start,
        ts_end: st.ts_end,
        error,
        notes,
    };
    let mut span = build_call(call, conn, resource, clock, opts);
    if let Some((service, method)) = rpc {
        span.name = [&service, "/", &method].concat();
        span.attributes
            .push(kv(semconv::RPC_SYSTEM, Value::Str("grpc".into())));
        span.attributes
            .push(kv(semconv::RPC_SERVICE, Value::Str(service)));
        span.attributes
            .push(kv(semconv::RPC_METHOD, Value::Str(method)));
        if let Some(code) = st.grpc_status {
            span.attributes
                .push(kv(semconv::RPC_GRPC_STATUS_CODE, Value::Int(code as i64)));
            let failed = match kind {
                SpanKind::Server => GRPC_SERVER_ERRORS.contains(&code),
                SpanKind::Client | SpanKind::Internal => code != 0,
            };
            if failed && span.status == Status::Unset {
                span.status = Status::Error(
                    st.grpc_message
                        .unwrap_or_else(|| format!("grpc-status {code}")),
                );
                span.attributes
                    .push(kv(semconv::ERROR_TYPE, Value::Str(code.to_string())));
            }
        }
    }
    span
}

fn build_call(
    call: Call<'_>,
    conn: &ConnInfo,
    resource: &Arc<Resource>,
    clock: Clock,
    opts: &SpanOptions,
) -> Span {
    let kind = call.kind;
    let mut attrs = Vec::with_capacity(ATTRIBUTE_CAPACITY);
    // The span name is the method (the route is not known here); "HTTP" when even that is not.
    let has_method = call.method.is_some();
    let name = match call.method {
        Some(m) if KNOWN_METHODS.contains(&m.as_str()) => m,
        Some(m) => {
            attrs.push(kv(semconv::HTTP_REQUEST_METHOD_ORIGINAL, Value::Str(m)));
            "_OTHER".to_string()
        }
        None => "HTTP".to_string(),
    };
    if has_method {
        attrs.push(kv(semconv::HTTP_REQUEST_METHOD, Value::Str(name.clone())));
    }

    let has_target = call.target.is_some();
    let target = call.target.unwrap_or_default();
    let Target {
        authority: authority_in_target,
        path,
        query,
    } = Target::parse(&target);
    let query = query.map(|q| {
        if opts.keep_query_values {
            target[q].to_string()
        } else {
            redact_query(&target[q])
        }
    });
    let authority = authority_in_target
        .map(|r| target[r].to_string())
        .or(call.authority)
        .or_else(|| take(call.headers, HOST));
    let scheme = if conn.tls { "https" } else { "http" };
    let full = (kind == SpanKind::Client && has_target).then(|| {
        let authority = authority.as_deref().unwrap_or("unknown");
        let path = path.clone().map_or("/", |r| &target[r]);
        let q = query.as_deref().unwrap_or("");
        let mut full = String::with_capacity(8 + authority.len() + path.len() + q.len());
        full.push_str(scheme);
        full.push_str("://");
        full.push_str(authority);
        full.push_str(path);
        if query.is_some() {
            full.push('?');
            full.push_str(q);
        }
        full
    });
    if has_target {
        let path = match path {
            Some(r) => keep_range(target, r),
            None => "/".to_string(),
        };
        attrs.push(kv(semconv::URL_PATH, Value::Str(path)));
    }
    if let Some(q) = query {
        attrs.push(kv(semconv::URL_QUERY, Value::Str(q)));
    }
    attrs.push(kv(semconv::URL_SCHEME, Value::Str(scheme.into())));
    if let Some(a) = authority {
        let (host, port) = split_host(&a);
        attrs.push(kv(semconv::SERVER_ADDRESS, Value::Str(keep_range(a, host))));
        attrs.push(kv(
            semconv::SERVER_PORT,
            Value::Int(port.unwrap_or(default_port(conn)) as i64),
        ));
    } else if let Some(end) = socket_server(kind, conn) {
        attrs.push(kv(semconv::SERVER_ADDRESS, Value::Str(ip_text(end.ip()))));
        attrs.push(kv(semconv::SERVER_PORT, Value::Int(end.port() as i64)));
    }
    if let Some(full) = full {
        attrs.push(kv(semconv::URL_FULL, Value::Str(full)));
    }
    if let Some(peer) = conn.peer {
        let address = ip_text(peer.ip());
        // The first X-Forwarded-For hop is the original client when a proxy is in front.
        let client =
            (kind == SpanKind::Server).then(|| match take(call.headers, X_FORWARDED_FOR) {
                Some(v) => {
                    let hop = v.split(',').next().unwrap_or_default();
                    let start = hop.len() - hop.trim_start().len();
                    let end = hop.trim_end().len().max(start);
                    keep_range(v, start..end)
                }
                None => address.clone(),
            });
        attrs.push(kv(semconv::NETWORK_PEER_ADDRESS, Value::Str(address)));
        attrs.push(kv(
            semconv::NETWORK_PEER_PORT,
            Value::Int(peer.port() as i64),
        ));
        if let Some(client) = client {
            attrs.push(kv(semconv::CLIENT_ADDRESS, Value::Str(client)));
        }
    }
    attrs.push(kv(
        semconv::NETWORK_PROTOCOL_VERSION,
        Value::Str(call.version.into()),
    ));
    if let Some(ua) = take(call.headers, USER_AGENT) {
        attrs.push(kv(semconv::USER_AGENT_ORIGINAL, Value::Str(ua)));
    }
    if call.req_body > 0 {
        attrs.push(kv(
            semconv::HTTP_REQUEST_BODY_SIZE,
            Value::Int(call.req_body as i64),
        ));
    }
    let mut error_type = call.error;
    if let Some(code) = call.status {
        attrs.push(kv(
            semconv::HTTP_RESPONSE_STATUS_CODE,
            Value::Int(code as i64),
        ));
        if call.resp_body > 0 {
            attrs.push(kv(
                semconv::HTTP_RESPONSE_BODY_SIZE,
                Value::Int(call.resp_body as i64),
            ));
        }
        let failed = code >= 500 || (kind == SpanKind::Client && code >= 400);
        if failed && error_type.is_none() {
            error_type = Some(code.to_string());
        }
    }
    let mut status = Status::Unset;
    if let Some(e) = error_type {
        status = Status::Error(e.clone());
        attrs.push(kv(semconv::ERROR_TYPE, Value::Str(e)));
    }
    attrs.extend(call.notes);

    let ctx = TraceContext::from_headers(call.headers);
    let ids = ctx.as_ref().and_then(|c| c.ids);
    let mut rng = rand::rng();
    Span {
        trace_id: ids.map_or_else(|| random_id(&mut rng), |p| p.trace_id),
        span_id: random_id(&mut rng),
        parent_span_id: ids.map(|p| p.parent_id),
        flags: ctx.as_ref().map_or(SAMPLED, TraceContext::flags),
        trace_state: ctx.and_then(|c| c.state),
        kind,
        name,
        start_unix_ns: clock.to_unix(call.ts_start),
        end_unix_ns: clock.to_unix(call.ts_end),
        status,
        attributes: attrs,
        resource: resource.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(
        role: Role,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        status: Option<u16>,
    ) -> Exchange {
        Exchange {
            role,
            request: Request {
                method: method.into(),
                target: target.into(),
                version: Version::Http11,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string().into(), v.to_string()))
                    .collect(),
                headers_truncated: false,
                body_len: 0,
                ts_start: 1_000,
                ts_end: 2_000,
                seq: 0,
                tid: 1,
            },
            response: status.map(|s| Response {
                status: s,
                version: Version::Http11,
                headers: vec![],
                headers_truncated: false,
                body_len: 12,
                ts_start: 3_000,
                ts_end: 5_000,
                tid: 1,
            }),
            outcome: if status.is_some() {
                Outcome::Complete
            } else {
                Outcome::ClosedBeforeResponse
            },
        }
    }

    fn resource() -> Arc<Resource> {
        Arc::new(Resource {
            pid: 1,
            service_name: "svc".into(),
            attributes: vec![],
        })
    }

    /// A loopback connection to port 8080.
    fn conn() -> ConnInfo {
        ConnInfo {
            peer: Some("127.0.0.1:40000".parse().unwrap()),
            local: Some("127.0.0.1:8080".parse().unwrap()),
            tls: false,
        }
    }

    fn build_one(ex: &Exchange) -> Span {
        build(
            ex.clone(),
            &conn(),
            &resource(),
            Clock { offset_ns: 10 },
            &SpanOptions::default(),
        )
    }

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    #[test]
    fn server_span_attributes() {
        let ex = exchange(
            Role::Server,
            "GET",
            "/users/7?token=abc&x",
            &[("host", "example.com:8080"), ("user-agent", "curl/8")],
            Some(200),
        );
        let sp = build_one(&ex);
        assert_eq!(sp.kind, SpanKind::Server);
        assert_eq!(sp.name, "GET");
        assert_eq!(sp.attr("http.request.method"), Some(&s("GET")));
        assert_eq!(sp.attr("url.path"), Some(&s("/users/7")));
        assert_eq!(sp.attr("url.query"), Some(&s("token=REDACTED&x")));
        assert_eq!(sp.attr("server.address"), Some(&s("example.com")));
        assert_eq!(sp.attr("server.port"), Some(&Value::Int(8080)));
        assert_eq!(sp.attr("client.address"), Some(&s("127.0.0.1")));
        assert_eq!(sp.attr("network.peer.port"), Some(&Value::Int(40000)));
        assert_eq!(sp.attr("network.protocol.version"), Some(&s("1.1")));
        assert_eq!(sp.attr("user_agent.original"), Some(&s("curl/8")));
        assert_eq!(sp.attr("http.response.status_code"), Some(&Value::Int(200)));
        assert_eq!(sp.attr("url.full"), None);
        assert_eq!(sp.status, Status::Unset);
        assert_eq!((sp.start_unix_ns, sp.end_unix_ns), (1_010, 5_010));
        assert_eq!(sp.parent_span_id, None);
    }

    #[test]
    fn without_host_or_authority_the_socket_names_the_server() {
        let server = build_one(&exchange(Role::Server, "GET", "/", &[], Some(200)));
        assert_eq!(server.attr("server.address"), Some(&s("127.0.0.1")));
        assert_eq!(server.attr("server.port"), Some(&Value::Int(8080)));
        let client = build_one(&exchange(Role::Client, "GET", "/", &[], Some(200)));
        assert_eq!(client.attr("server.port"), Some(&Value::Int(40000)));
        // A Host header wins over the socket.
        let named = build_one(&exchange(
            Role::Server,
            "GET",
            "/",
            &[("host", "shop")],
            Some(200),
        ));
        assert_eq!(named.attr("server.address"), Some(&s("shop")));
        assert_eq!(named.attr("server.port"), Some(&Value::Int(80)));
    }

    #[test]
    fn tls_spans_say_https() {
        let ex = exchange(Role::Client, "GET", "/a", &[("host", "shop")], Some(200));
        let conn = ConnInfo {
            peer: Some("10.0.0.2:443".parse().unwrap()),
            local: None,
            tls: true,
        };
        let sp = build(
            ex,
            &conn,
            &resource(),
            Clock { offset_ns: 0 },
            &SpanOptions::default(),
        );
        assert_eq!(sp.attr("url.scheme"), Some(&s("https")));
        assert_eq!(sp.attr("url.full"), Some(&s("https://shop/a")));
        // No port in Host: the scheme's.
        assert_eq!(sp.attr("server.port"), Some(&Value::Int(443)));
    }

    #[test]
    fn error_status_rules_differ_by_kind() {
        let server404 = build_one(&exchange(Role::Server, "GET", "/", &[], Some(404)));
        assert_eq!(server404.status, Status::Unset);
        let client404 = build_one(&exchange(
            Role::Client,
            "GET",
            "/",
            &[("host", "a")],
            Some(404),
        ));
        assert_eq!(client404.status, Status::Error("404".into()));
        assert_eq!(client404.attr("url.full"), Some(&s("http://a/")));
        let server503 = build_one(&exchange(Role::Server, "GET", "/", &[], Some(503)));
        assert_eq!(server503.attr("error.type"), Some(&s("503")));
        let closed = build_one(&exchange(Role::Server, "POST", "/", &[], None));
        assert_eq!(
            closed.status,
            Status::Error("connection_closed_before_response".into())
        );
        assert_eq!(closed.end_unix_ns, 2_010);
    }

    #[test]
    fn honours_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sp = build_one(&exchange(
            Role::Server,
            "GET",
            "/",
            &[("traceparent", tp)],
            Some(200),
        ));
        assert_eq!(hex(&sp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            sp.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_ne!(hex(&sp.span_id), "00f067aa0ba902b7");
    }

    #[test]
    fn unusual_methods_and_targets() {
        let sp = build_one(&exchange(
            Role::Client,
            "PURGE",
            "http://cache:81/a?b=c",
            &[],
            Some(200),
        ));
        assert_eq!(sp.attr("http.request.method"), Some(&s("_OTHER")));
        assert_eq!(sp.attr("http.request.method_original"), Some(&s("PURGE")));
        assert_eq!(sp.attr("server.address"), Some(&s("cache")));
        assert_eq!(sp.attr("server.port"), Some(&Value::Int(81)));
        assert_eq!(
            sp.attr("url.full"),
            Some(&s("http://cache:81/a?b=REDACTED"))
        );
        let v6 = build_one(&exchange(
            Role::Server,
            "GET",
            "/",
            &[("host", "[::1]:9000")],
            Some(200),
        ));
        assert_eq!(v6.attr("server.address"), Some(&s("::1")));
        assert_eq!(v6.attr("server.port"), Some(&Value::Int(9000)));
    }

    #[test]
    fn query_values_are_redacted() {
        for (q, want) in [
            ("page=2", "page=REDACTED"),
            ("a&b=1&c", "a&b=REDACTED&c"),
            ("x==y&z=", "x=REDACTED&z=REDACTED"),
            ("a=&b", "a=REDACTED&b"),
            ("&&", "&&"),
            ("", ""),
            ("clé=été&ü", "clé=REDACTED&ü"),
        ] {
            assert_eq!(redact_query(q), want, "{q}");
        }
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "10.0.100.7",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    /// Client spans of absolute-form targets (a proxy's requests): the authority and the path
    /// come from the target, a missing path is `/`.
    #[test]
    fn absolute_form_targets() {
        let sp = build_one(&exchange(
            Role::Client,
            "GET",
            "http://[::1]:9000",
            &[("host", "other")],
            Some(200),
        ));
        assert_eq!(sp.attr("server.address"), Some(&s("::1")));
        assert_eq!(sp.attr("server.port"), Some(&Value::Int(9000)));
        assert_eq!(sp.attr("url.path"), Some(&s("/")));
        assert_eq!(sp.attr("url.query"), None);
        assert_eq!(sp.attr("url.full"), Some(&s("http://[::1]:9000/")));
    }

    #[test]
    fn forwarded_client_address() {
        let sp = build_one(&exchange(
            Role::Server,
            "GET",
            "/",
            &[("x-forwarded-for", "203.0.113.9, 10.1.1.1")],
            Some(200),
        ));
        assert_eq!(sp.attr("client.address"), Some(&s("203.0.113.9")));
        assert_eq!(sp.attr("network.peer.address"), Some(&s("127.0.0.1")));
    }

    fn grpc_stream(
        role: Role,
        status: Option<u32>,
        reset: Option<u32>,
    ) -> crate::decode::http2::Stream {
        crate::decode::http2::Stream {
            role,
            stream_id: 1,
            method: Some("POST".into()),
            path: Some("/pkg.Svc/Get".into()),
            authority: Some("svc:50051".into()),
            scheme: Some("http".into()),
            status: reset.is_none().then_some(200),
            request_headers: vec![("content-type".into(), "application/grpc".into())],
            grpc_status: status,
            grpc_message: None,
            is_grpc: true,
            request_body_len: 5,
            response_body_len: 7,
            ts_start: 1_000,
            ts_end: 2_000,
            reset,
            headers_incomplete: false,
            closed_early: false,
            framing_lost: false,
            response_content_length: None,
        }
    }

    fn build_grpc(st: &crate::decode::http2::Stream) -> Span {
        build_h2(
            st.clone(),
            &ConnInfo::default(),
            &resource(),
            Clock { offset_ns: 0 },
            &SpanOptions::default(),
        )
    }

    /// OTel gRPC conventions: a SERVER span is an error only for UNKNOWN, DEADLINE_EXCEEDED,
    /// UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS; a CLIENT span for every non-OK code.
    #[test]
    fn grpc_status_rules_differ_by_kind() {
        for code in 0..=16u32 {
            let server = build_grpc(&grpc_stream(Role::Server, Some(code), None));
            let client = build_grpc(&grpc_stream(Role::Client, Some(code), None));
            for sp in [&server, &client] {
                assert_eq!(sp.name, "pkg.Svc/Get");
                assert_eq!(sp.attr("rpc.system"), Some(&s("grpc")));
                assert_eq!(sp.attr("rpc.service"), Some(&s("pkg.Svc")));
                assert_eq!(sp.attr("rpc.method"), Some(&s("Get")));
                assert_eq!(
                    sp.attr("rpc.grpc.status_code"),
                    Some(&Value::Int(code as i64))
                );
            }
            let server_error = [2, 4, 12, 13, 14, 15].contains(&code);
            assert_eq!(server.status != Status::Unset, server_error, "{code}");
            assert_eq!(client.status != Status::Unset, code != 0, "{code}");
        }
    }

    /// A reset stream is an error (`stream_reset`), unless the decoder knows its gRPC status
    /// (a deadline that ran out): then the status decides, as for trailers.
    #[test]
    fn grpc_reset_streams() {
        // Closed with the response under way: an error only if its end was in sight.
        let mut st = grpc_stream(Role::Server, None, None);
        st.closed_early = true;
        let sp = build_grpc(&st);
        assert_eq!(
            sp.status,
            Status::Error("connection_closed_mid_response".into())
        );
        st.framing_lost = true;
        let sp = build_grpc(&st);
        assert_eq!(sp.status, Status::Unset);
        assert_eq!(
            sp.attr("tracer.http.response_end_estimated"),
            Some(&Value::Bool(true))
        );
        st.status = None;
        assert_eq!(build_grpc(&st).status, Status::Unset);
        st.framing_lost = false;
        let sp = build_grpc(&st);
        assert_eq!(
            sp.status,
            Status::Error("connection_closed_before_response".into())
        );

        let plain = build_grpc(&grpc_stream(Role::Client, None, Some(8)));
        assert_eq!(plain.status, Status::Error("stream_reset".into()));
        assert_eq!(plain.attr("rpc.grpc.status_code"), None);
        for role in [Role::Client, Role::Server] {
            let sp = build_grpc(&grpc_stream(role, Some(4), Some(8)));
            assert!(matches!(sp.status, Status::Error(_)), "{role:?}");
            assert_eq!(sp.attr("error.type"), Some(&s("4")));
            assert_eq!(sp.attr("rpc.grpc.status_code"), Some(&Value::Int(4)));
        }
    }

    /// What the filters read before building is what the span says.
    #[test]
    fn the_head_reads_what_the_span_would_say() {
        let port = |sp: &Span| match sp.attr(semconv::SERVER_PORT) {
            Some(Value::Int(p)) => Some(*p as u16),
            _ => None,
        };
        for (role, method, target, headers) in [
            (
                Role::Server,
                "POST",
                "/v1/traces?x=1",
                vec![("host", "c:4318")],
            ),
            (
                Role::Client,
                "GET",
                "http://a:9000/p/q",
                vec![("host", "b:1")],
            ),
            (Role::Client, "GET", "http://a", vec![]),
            (Role::Server, "GET", "/", vec![("host", "[::1]")]),
            (Role::Server, "BREW", "*", vec![]),
        ] {
            let ex = exchange(role, method, target, &headers, Some(200));
            let head = Head::http1(&ex, &conn());
            let sp = build_one(&ex);
            assert_eq!(head.kind, sp.kind, "{target}");
            assert_eq!(head.server_port, port(&sp), "{target}");
            let clock = Clock { offset_ns: 10 }; // build_one's
            assert_eq!(head.ts_end, clock.to_mono(sp.end_unix_ns), "{target}");
            let path = match sp.attr(semconv::URL_PATH) {
                Some(Value::Str(p)) if head.path.is_some() => Some(p.as_str()),
                _ => None,
            };
            assert_eq!(head.path, path, "{target}");
        }
        let ex = exchange(
            Role::Server,
            "POST",
            "/v1/traces?x=1",
            &[("host", "c:4318")],
            None,
        );
        let tls = ConnInfo {
            tls: true,
            ..Default::default()
        };
        assert_eq!(Head::http1(&ex, &tls).server_port, Some(4318));
        let no_port = exchange(Role::Client, "GET", "/a", &[("host", "shop")], Some(200));
        assert_eq!(
            Head::http1(&no_port, &tls).server_port,
            Some(443),
            "the scheme's"
        );
        assert_eq!(
            Head::http1(&ex, &ConnInfo::default()),
            Head {
                kind: SpanKind::Server,
                method: Some("POST"),
                path: Some("/v1/traces"),
                server_port: Some(4318),
                ts_end: 2_000,
            }
        );
    }
}
