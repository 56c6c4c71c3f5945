//! RED metrics from every span, before sampling: the OpenTelemetry semantic-convention duration
//! histograms per service (`http.server.request.duration`, `http.client.request.duration`,
//! `rpc.server.duration`, `rpc.client.duration`) and the service graph ([`graph`]).
//!
//! The plugin stage hands over each span once, as it leaves the chain: a span a plugin drops
//! is recorded with the edits made before it (so an enricher placed ahead of the samplers,
//! the route normalizer, supplies `http.route`), every other span after the last plugin.
//! Readers take a [`Snapshot`]: `/metrics` ([`prometheus`]), the OTLP exporter ([`otlp`]) and
//! `tracer top` (through `/requests`).
pub mod graph;
pub mod otlp;
pub mod prometheus;
pub mod view;

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, Weak},
};

use rustc_hash::FxHashMap;

use crate::{
    metrics::{Counter, Gauge, Registry},
    semconv,
    span::{KeyValue, Resource, Span, SpanKind, Value, clock_ns},
};
use graph::Graph;

/// Series one service may hold across its instruments before new attribute sets go to the
/// overflow series (the OpenTelemetry SDK's default cardinality limit).
pub const DEFAULT_SERIES_LIMIT: usize = 2000;
/// A series (and a service) with no request for this long is forgotten.
pub const IDLE_NS: u64 = 10 * 60 * 1_000_000_000;
/// How often recording looks for idle series, so memory stays bounded with no reader.
const SWEEP_NS: u64 = 60 * 1_000_000_000;
/// The attribute the overflow series carries (OpenTelemetry metrics SDK specification).
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// `http.*.request.duration` boundaries in seconds (HTTP semantic conventions).
pub const HTTP_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// `rpc.*.duration` boundaries in milliseconds (the SDK's default, which the RPC conventions
/// up to v1.37 use with their `ms` unit).
pub const RPC_BOUNDS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// The four duration histograms, one per kind of call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instrument {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
}

impl Instrument {
    pub const ALL: [Instrument; 4] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http.server.request.duration",
            Instrument::HttpClient => "http.client.request.duration",
            Instrument::RpcServer => "rpc.server.duration",
            Instrument::RpcClient => "rpc.client.duration",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Instrument::HttpServer => "Duration of HTTP server requests.",
            Instrument::HttpClient => "Duration of HTTP client requests.",
            Instrument::RpcServer => "Measures the duration of inbound RPC.",
            Instrument::RpcClient => "Measures the duration of outbound RPC.",
        }
    }

    /// UCUM unit, as OTLP carries it.
    pub fn unit(self) -> &'static str {
        if self.is_rpc() { "ms" } else { "s" }
    }

    pub fn bounds(self) -> &'static [f64] {
        if self.is_rpc() {
            RPC_BOUNDS
        } else {
            HTTP_BOUNDS
        }
    }

    pub fn is_rpc(self) -> bool {
        matches!(self, Instrument::RpcServer | Instrument::RpcClient)
    }

    pub fn is_server(self) -> bool {
        matches!(self, Instrument::HttpServer | Instrument::RpcServer)
    }

    /// The span attributes this instrument keeps, in the order they are exported. Nothing
    /// unbounded: the route (set by a plugin) and never the raw path.
    fn keys(self) -> &'static [&'static str] {
        use semconv::*;
        match self {
            Instrument::HttpServer => &[
                HTTP_REQUEST_METHOD,
                URL_SCHEME,
                HTTP_ROUTE,
                HTTP_RESPONSE_STATUS_CODE,
                ERROR_TYPE,
                NETWORK_PROTOCOL_VERSION,
            ],
            Instrument::HttpClient => &[
                HTTP_REQUEST_METHOD,
                SERVER_ADDRESS,
                SERVER_PORT,
                URL_SCHEME,
                HTTP_RESPONSE_STATUS_CODE,
                ERROR_TYPE,
                NETWORK_PROTOCOL_VERSION,
            ],
            Instrument::RpcServer => &[
                RPC_SYSTEM,
                RPC_SERVICE,
                RPC_METHOD,
                RPC_GRPC_STATUS_CODE,
                ERROR_TYPE,
                NETWORK_PROTOCOL_VERSION,
            ],
            Instrument::RpcClient => &[
                RPC_SYSTEM,
                RPC_SERVICE,
                RPC_METHOD,
                RPC_GRPC_STATUS_CODE,
                ERROR_TYPE,
                SERVER_ADDRESS,
                SERVER_PORT,
                NETWORK_PROTOCOL_VERSION,
            ],
        }
    }

    /// Which histogram a span belongs to: gRPC calls get the RPC ones only. None for the
    /// tracer's own spans.
    fn of(span: &Span) -> Option<Self> {
        let rpc = span.attr(semconv::RPC_SYSTEM).is_some();
        Some(match (span.kind, rpc) {
            (SpanKind::Server, false) => Instrument::HttpServer,
            (SpanKind::Client, false) => Instrument::HttpClient,
            (SpanKind::Server, true) => Instrument::RpcServer,
            (SpanKind::Client, true) => Instrument::RpcClient,
            (SpanKind::Internal, _) => return None,
        })
    }

    /// The span's duration in this instrument's unit.
    fn value(self, span: &Span) -> f64 {
        let s = duration_s(span);
        if self.is_rpc() { s * 1e3 } else { s }
    }
}

pub fn duration_s(span: &Span) -> f64 {
    span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9
}

/// An attribute value of a point: what spans carry, hashable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    Str(Box<str>),
    Int(i64),
    Bool(bool),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Str(s) => f.write_str(s),
            Label::Int(i) => write!(f, "{i}"),
            Label::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl From<&Value> for Label {
    fn from(v: &Value) -> Self {
        match v {
            Value::Str(s) => Label::Str(s.as_str().into()),
            Value::Int(i) => Label::Int(*i),
            Value::Bool(b) => Label::Bool(*b),
            Value::Float(x) => Label::Str(x.to_string().into()),
        }
    }
}

pub type Attributes = Arc<[(&'static str, Label)]>;

/// Explicit-bucket histogram state: `buckets[i]` counts values in `(bounds[i-1], bounds[i]]`,
/// the last one those above every bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub buckets: Vec<u64>,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            buckets: vec![0; bounds.len() + 1],
        }
    }

    pub fn record(&mut self, v: f64, bounds: &[f64]) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.buckets[bounds.partition_point(|&b| b < v)] += 1;
    }
}

/// One attribute set of one instrument.
#[derive(Clone, Debug)]
pub struct Series {
    pub instrument: Instrument,
    pub attributes: Attributes,
    pub start_unix_ns: u64,
    pub last_unix_ns: u64,
    pub hist: Histogram,
}

/// The series of one service: a resource of the spans less what differs per process
/// (`process.*`), so the workers of one server add up.
struct Service {
    attributes: Arc<[KeyValue]>,
    /// By [`series_key`]; the overflow series under [`overflow_key`].
    series: FxHashMap<Box<str>, Series>,
    /// Series other than the overflow ones.
    bounded: usize,
    last_unix_ns: u64,
}

/// The series' identity: the instrument, then each kept attribute's type and value.
fn series_key(buf: &mut String, inst: Instrument, span: &Span) {
    buf.clear();
    buf.push(char::from(b'0' + inst as u8));
    for k in inst.keys() {
        match span.attr(k) {
            None => buf.push('\u{1e}'),
            Some(Value::Str(s)) => {
                buf.push('s');
                buf.push_str(s);
            }
            Some(v) => {
                let _ = write!(buf, "o{v}");
            }
        }
        buf.push('\u{1f}');
    }
}

fn overflow_key(inst: Instrument) -> String {
    format!("{}overflow", inst as u8)
}

fn attributes(inst: Instrument, span: &Span) -> Attributes {
    inst.keys()
        .iter()
        .filter_map(|k| span.attr(k).map(|v| (*k, Label::from(v))))
        .collect()
}

/// The resource a service's metrics are exported under.
fn service_attributes(r: &Resource) -> Arc<[KeyValue]> {
    r.attributes
        .iter()
        .filter(|a| !a.key.starts_with("process."))
        .cloned()
        .collect()
}

fn service_key(attrs: &[KeyValue]) -> Arc<str> {
    let mut k = String::new();
    for a in attrs {
        let _ = write!(k, "{}={}\u{1f}", a.key, a.value);
    }
    k.into()
}

/// What the recorder counts about itself (`tracer_span_metrics_*`).
pub struct SpanMetricsCounters {
    pub overflowed: Counter,
    pub series: Gauge,
    pub services: Gauge,
}

impl SpanMetricsCounters {
    fn new(reg: &Registry) -> Self {
        SpanMetricsCounters {
            overflowed: reg.counter(
                "span_metrics_overflowed_points",
                "Requests recorded into a service's overflow series (otel.metric.overflow=true) because it reached --metrics-series-limit",
            ),
            series: reg.gauge(
                "span_metrics_series",
                "Series the request metrics hold, over all services",
            ),
            services: reg.gauge(
                "span_metrics_services",
                "Services the request metrics hold",
            ),
        }
    }
}

struct State {
    services: FxHashMap<Arc<str>, Service>,
    /// The service of a span resource, by address; checked against the resource itself.
    by_resource: FxHashMap<usize, (Weak<Resource>, Arc<str>)>,
    graph: Graph,
    key: String,
    swept_ns: u64,
}

/// The request metrics: recorded by the plugin stage, read by `/metrics`, `/requests` and the
/// OTLP metrics exporter. One lock, taken once per batch by the recorder.
pub struct SpanMetrics {
    state: Mutex<State>,
    series_limit: usize,
    counters: SpanMetricsCounters,
}

/// Everything at one instant, for one reader.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub unix_ns: u64,
    pub services: Vec<ServicePoints>,
    pub edges: Vec<graph::Edge>,
}

#[derive(Clone, Debug)]
pub struct ServicePoints {
    pub key: Arc<str>,
    pub attributes: Arc<[KeyValue]>,
    /// With their keys, for readers that keep state per series (delta temporality).
    pub series: Vec<(Box<str>, Series)>,
}

impl ServicePoints {
    pub fn service_name(&self) -> &str {
        self.attributes
            .iter()
            .find(|a| a.key == semconv::SERVICE_NAME)
            .and_then(|a| match &a.value {
                Value::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or("unknown_service")
    }
}

impl SpanMetrics {
    pub fn new(series_limit: usize, reg: &Registry) -> Self {
        SpanMetrics {
            state: Mutex::new(State {
                services: FxHashMap::default(),
                by_resource: FxHashMap::default(),
                graph: Graph::new(reg),
                key: String::new(),
                swept_ns: 0,
            }),
            series_limit,
            counters: SpanMetricsCounters::new(reg),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records each span once: its duration in its instrument, and its side of a graph edge.
    pub fn record(&self, spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        let now = clock_ns(libc::CLOCK_REALTIME);
        let st = &mut *self.lock();
        let mut last: Option<(*const Resource, Arc<str>)> = None;
        for sp in spans {
            let Some(inst) = Instrument::of(sp) else {
                continue;
            };
            let ptr = Arc::as_ptr(&sp.resource);
            let service = match &last {
                Some((p, k)) if *p == ptr => k.clone(),
                _ => {
                    let k = st.service_of(&sp.resource);
                    last = Some((ptr, k.clone()));
                    k
                }
            };
            st.graph.record(sp, now);
            self.record_one(st, &service, inst, sp, now);
        }
        st.graph.expire(now);
        if now.saturating_sub(st.swept_ns) >= SWEEP_NS {
            self.sweep(st, now);
        }
        self.counters.services.set(st.services.len() as i64);
    }

    fn record_one(
        &self,
        st: &mut State,
        service: &Arc<str>,
        inst: Instrument,
        sp: &Span,
        now: u64,
    ) {
        let State { services, key, .. } = st;
        let Some(svc) = services.get_mut(service) else {
            return;
        };
        svc.last_unix_ns = now;
        series_key(key, inst, sp);
        let v = inst.value(sp);
        if let Some(s) = svc.series.get_mut(key.as_str()) {
            s.hist.record(v, inst.bounds());
            s.last_unix_ns = now;
            return;
        }
        let (k, attributes) = if svc.bounded < self.series_limit {
            svc.bounded += 1;
            self.counters.series.inc();
            (key.as_str().into(), attributes(inst, sp))
        } else {
            self.counters.overflowed.inc();
            let ok = overflow_key(inst);
            if let Some(s) = svc.series.get_mut(ok.as_str()) {
                s.hist.record(v, inst.bounds());
                s.last_unix_ns = now;
                return;
            }
            self.counters.series.inc();
            let attrs: Attributes = Arc::new([(OVERFLOW_ATTRIBUTE, Label::Bool(true))]);
            (ok.into_boxed_str(), attrs)
        };
        let mut hist = Histogram::new(inst.bounds());
        hist.record(v, inst.bounds());
        svc.series.insert(
            k,
            Series {
                instrument: inst,
                attributes,
                start_unix_ns: now,
                last_unix_ns: now,
                hist,
            },
        );
    }

    /// Forgets idle series, services and edges, and the resources of processes gone.
    fn sweep(&self, st: &mut State, now: u64) {
        st.swept_ns = now;
        let idle = |t: u64| now.saturating_sub(t) > IDLE_NS;
        st.services.retain(|_, svc| {
            let before = svc.series.len();
            svc.series.retain(|_, s| !idle(s.last_unix_ns));
            svc.bounded = svc
                .series
                .values()
                .filter(|s| s.attributes.first().map(|a| a.0) != Some(OVERFLOW_ATTRIBUTE))
                .count();
            self.counters
                .series
                .dec_by((before - svc.series.len()) as i64);
            !svc.series.is_empty() || !idle(svc.last_unix_ns)
        });
        st.by_resource.retain(|_, (w, _)| w.strong_count() > 0);
        st.graph.sweep(now, IDLE_NS);
    }

    /// A copy of every series and edge, after letting out the graph's expired halves.
    pub fn snapshot(&self) -> Snapshot {
        let now = clock_ns(libc::CLOCK_REALTIME);
        let st = &mut *self.lock();
        st.graph.expire(now);
        if now.saturating_sub(st.swept_ns) >= SWEEP_NS {
            self.sweep(st, now);
        }
        let mut services: Vec<ServicePoints> = st
            .services
            .iter()
            .filter(|(_, s)| !s.series.is_empty())
            .map(|(k, s)| {
                let mut series: Vec<(Box<str>, Series)> = s
                    .series
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                series.sort_by(|a, b| a.0.cmp(&b.0));
                ServicePoints {
                    key: k.clone(),
                    attributes: s.attributes.clone(),
                    series,
                }
            })
            .collect();
        services.sort_by(|a, b| a.key.cmp(&b.key));
        Snapshot {
            unix_ns: now,
            services,
            edges: st.graph.edges(),
        }
    }
}

impl State {
    fn service_of(&mut self, r: &Arc<Resource>) -> Arc<str> {
        let ptr = Arc::as_ptr(r) as usize;
        if let Some((w, k)) = self.by_resource.get(&ptr)
            && w.upgrade().is_some_and(|live| Arc::ptr_eq(&live, r))
        {
            return k.clone();
        }
        let attributes = service_attributes(r);
        let key = service_key(&attributes);
        self.by_resource
            .insert(ptr, (Arc::downgrade(r), key.clone()));
        self.services.entry(key.clone()).or_insert_with(|| Service {
            attributes,
            series: FxHashMap::default(),
            bounded: 0,
            last_unix_ns: 0,
        });
        key
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::span::{Status, kv};

    pub fn resource(pid: u32, service: &str) -> Arc<Resource> {
        Arc::new(Resource {
            pid,
            service_name: service.into(),
            attributes: vec![
                kv(semconv::SERVICE_NAME, Value::Str(service.into())),
                kv(semconv::PROCESS_PID, Value::Int(pid.into())),
                kv(semconv::HOST_NAME, Value::Str("node-1".into())),
            ],
        })
    }

    pub fn server(res: &Arc<Resource>, status: i64, ms: u64, route: Option<&str>) -> Span {
        let mut attributes = vec![
            kv(semconv::HTTP_REQUEST_METHOD, Value::Str("GET".into())),
            kv(semconv::URL_SCHEME, Value::Str("http".into())),
            kv(semconv::URL_PATH, Value::Str(format!("/raw/{ms}/{status}"))),
            kv(semconv::HTTP_RESPONSE_STATUS_CODE, Value::Int(status)),
            kv(semconv::NETWORK_PROTOCOL_VERSION, Value::Str("1.1".into())),
        ];
        if let Some(r) = route {
            attributes.push(kv(semconv::HTTP_ROUTE, Value::Str(r.into())));
        }
        let status = if status >= 500 {
            attributes.push(kv(semconv::ERROR_TYPE, Value::Str(status.to_string())));
            Status::Error(status.to_string())
        } else {
            Status::Unset
        };
        Span {
            trace_id: [1; 16],
            span_id: rand::random(),
            parent_span_id: None,
            flags: 1,
            trace_state: None,
            kind: SpanKind::Server,
            name: "GET".into(),
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_000_000_000 + ms * 1_000_000,
            status,
            attributes,
            resource: res.clone(),
        }
    }

    fn points(s: &Snapshot, service: &str) -> Vec<Series> {
        s.services
            .iter()
            .filter(|p| p.service_name() == service)
            .flat_map(|p| p.series.iter().map(|(_, s)| s.clone()))
            .collect()
    }

    fn label<'a>(s: &'a Series, k: &str) -> Option<&'a Label> {
        s.attributes.iter().find(|a| a.0 == k).map(|a| &a.1)
    }

    #[test]
    fn each_status_and_route_is_a_series_and_workers_of_one_service_add_up() {
        let m = SpanMetrics::new(DEFAULT_SERIES_LIMIT, &Registry::default());
        let (w1, w2) = (resource(10, "nginx"), resource(11, "nginx"));
        let mut spans = Vec::new();
        for i in 0..30 {
            let r = if i % 2 == 0 { &w1 } else { &w2 };
            spans.push(server(
                r,
                [200, 404, 500][i % 3],
                2 + i as u64,
                Some("/users/{id}"),
            ));
        }
        m.record(&spans);
        let snap = m.snapshot();
        assert_eq!(
            snap.services.len(),
            1,
            "process.pid is not part of a service"
        );
        assert_eq!((m.counters.services.get(), m.counters.series.get()), (1, 3));
        assert!(
            !snap.services[0]
                .attributes
                .iter()
                .any(|a| a.key.starts_with("process."))
        );
        let pts = points(&snap, "nginx");
        assert_eq!(pts.len(), 3);
        for p in &pts {
            assert_eq!(p.instrument, Instrument::HttpServer);
            assert_eq!(p.hist.count, 10);
            assert_eq!(p.hist.buckets.iter().sum::<u64>(), 10);
            assert_eq!(
                label(p, semconv::HTTP_ROUTE),
                Some(&Label::Str("/users/{id}".into()))
            );
            assert!(label(p, semconv::URL_PATH).is_none(), "never the raw path");
            let code = label(p, semconv::HTTP_RESPONSE_STATUS_CODE);
            let err = label(p, semconv::ERROR_TYPE);
            assert_eq!(err.is_some(), code == Some(&Label::Int(500)));
        }
        let total: f64 = pts.iter().map(|p| p.hist.sum).sum();
        let want: f64 = spans.iter().map(duration_s).sum();
        assert!((total - want).abs() < 1e-9, "{total} {want}");
    }

    #[test]
    fn buckets_follow_the_bounds_upper_inclusive() {
        let mut h = Histogram::new(HTTP_BOUNDS);
        for v in [0.0, 0.005, 0.0051, 10.0, 11.0] {
            h.record(v, HTTP_BOUNDS);
        }
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[HTTP_BOUNDS.len() - 1], 1);
        assert_eq!(h.buckets[HTTP_BOUNDS.len()], 1);
        assert_eq!((h.min, h.max, h.count), (0.0, 11.0, 5));
    }

    #[test]
    fn past_the_limit_new_attribute_sets_go_to_one_overflow_series_counted() {
        let reg = Registry::default();
        let m = SpanMetrics::new(5, &reg);
        let r = resource(1, "py");
        let spans: Vec<Span> = (0..1000)
            .map(|i| server(&r, 200, 1, Some(&format!("/r{i}"))))
            .collect();
        m.record(&spans);
        let pts = points(&m.snapshot(), "py");
        assert_eq!(pts.len(), 6);
        let over: Vec<&Series> = pts
            .iter()
            .filter(|p| label(p, OVERFLOW_ATTRIBUTE) == Some(&Label::Bool(true)))
            .collect();
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].attributes.len(), 1);
        assert_eq!(over[0].hist.count, 995);
        assert_eq!(m.counters.overflowed.get(), 995);
        assert_eq!(pts.iter().map(|p| p.hist.count).sum::<u64>(), 1000);
        // A set seen before the limit still has its own series.
        m.record(&[server(&r, 200, 1, Some("/r0"))]);
        assert_eq!(m.counters.overflowed.get(), 995);
    }

    #[test]
    fn the_tracers_own_spans_are_not_requests() {
        let m = SpanMetrics::new(10, &Registry::default());
        let mut s = server(&resource(1, "tracer"), 200, 1, None);
        s.kind = SpanKind::Internal;
        m.record(&[s]);
        assert!(m.snapshot().services.is_empty());
    }
}
