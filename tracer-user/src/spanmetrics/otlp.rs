//! The request metrics as an OTLP `ExportMetricsServiceRequest`: one ResourceMetrics per
//! service with its duration histograms, and one for the tracer itself holding the service
//! graph. Cumulative points come straight from the snapshot; delta points are the difference
//! from what the last delivered export held, so a failed export loses nothing (its increments
//! go out with the next one).
use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue as PbKeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Histogram as PbHistogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource as PbResource,
};
use rustc_hash::FxHashMap;

use super::{Histogram, Instrument, Label, Snapshot, graph};
use crate::span::{KeyValue, Value};

/// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: `cumulative` (the default), `delta`, or
/// `lowmemory` (delta for counters and histograms, which is all the tracer has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

impl Temporality {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cumulative" => Some(Temporality::Cumulative),
            "delta" | "lowmemory" => Some(Temporality::Delta),
            _ => None,
        }
    }

    fn proto(self) -> i32 {
        match self {
            Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
            Temporality::Delta => AggregationTemporality::Delta as i32,
        }
    }
}

/// What a delta point was measured from.
#[derive(Clone, Debug)]
struct Sent {
    start_unix_ns: u64,
    at_unix_ns: u64,
    count: u64,
    sum: f64,
    buckets: Vec<u64>,
}

/// Builds requests and, for delta, remembers what the delivered ones held.
pub struct Encoder {
    temporality: Temporality,
    /// The tracer's own resource: the service graph's.
    own: Arc<[KeyValue]>,
    sent: FxHashMap<String, Sent>,
}

/// A request and the state to keep once it was delivered.
pub struct Encoded {
    pub request: ExportMetricsServiceRequest,
    pub points: usize,
    sent: Vec<(String, Sent)>,
}

fn any(v: &Value) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Value::Str(s) => any_value::Value::StringValue(s.clone()),
            Value::Int(i) => any_value::Value::IntValue(*i),
            Value::Float(x) => any_value::Value::DoubleValue(*x),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
        }),
    }
}

fn pb_attrs(attrs: &[KeyValue]) -> Vec<PbKeyValue> {
    attrs
        .iter()
        .map(|a| PbKeyValue {
            key: a.key.to_string(),
            value: Some(any(&a.value)),
            ..Default::default()
        })
        .collect()
}

fn pb_labels<'a>(labels: impl Iterator<Item = (&'a str, &'a Label)>) -> Vec<PbKeyValue> {
    labels
        .map(|(k, l)| PbKeyValue {
            key: k.to_string(),
            value: Some(any(&match l {
                Label::Str(s) => Value::Str(s.to_string()),
                Label::Int(i) => Value::Int(*i),
                Label::Bool(b) => Value::Bool(*b),
            })),
            ..Default::default()
        })
        .collect()
}

fn scope(metrics: Vec<Metric>) -> ScopeMetrics {
    ScopeMetrics {
        scope: Some(InstrumentationScope {
            name: "tracer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        metrics,
        schema_url: String::new(),
    }
}

impl Encoder {
    pub fn new(temporality: Temporality, own: &[KeyValue]) -> Self {
        Encoder {
            temporality,
            own: own.into(),
            sent: FxHashMap::default(),
        }
    }

    /// The point of one histogram now; None for a delta with nothing new.
    fn point(
        &self,
        series: Cumulative<'_>,
        now: u64,
        attributes: Vec<PbKeyValue>,
        sent: &mut Vec<(String, Sent)>,
    ) -> Option<HistogramDataPoint> {
        let Cumulative {
            key,
            hist: h,
            bounds,
            start_unix_ns,
        } = series;
        let mut p = HistogramDataPoint {
            attributes,
            start_time_unix_nano: start_unix_ns,
            time_unix_nano: now,
            count: h.count,
            sum: Some(h.sum),
            bucket_counts: h.buckets.clone(),
            explicit_bounds: bounds.to_vec(),
            min: (h.count > 0).then_some(h.min),
            max: (h.count > 0).then_some(h.max),
            ..Default::default()
        };
        if self.temporality == Temporality::Delta {
            // A series forgotten and made again starts from nothing.
            let prev = self
                .sent
                .get(key)
                .filter(|s| s.start_unix_ns == start_unix_ns && s.count <= h.count);
            if let Some(prev) = prev {
                if prev.count == h.count {
                    return None;
                }
                p.start_time_unix_nano = prev.at_unix_ns;
                p.count -= prev.count;
                p.sum = Some(h.sum - prev.sum);
                for (b, was) in p.bucket_counts.iter_mut().zip(&prev.buckets) {
                    *b -= was;
                }
            }
            // Extremes of the interval are not known from two cumulative states.
            if prev.is_some() {
                p.min = None;
                p.max = None;
            }
            sent.push((
                key.to_string(),
                Sent {
                    start_unix_ns,
                    at_unix_ns: now,
                    count: h.count,
                    sum: h.sum,
                    buckets: h.buckets.clone(),
                },
            ));
        }
        Some(p)
    }

    fn histogram(
        &self,
        name: &str,
        description: &str,
        unit: &str,
        points: Vec<HistogramDataPoint>,
    ) -> Metric {
        Metric {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            data: Some(Data::Histogram(PbHistogram {
                data_points: points,
                aggregation_temporality: self.temporality.proto(),
            })),
            ..Default::default()
        }
    }

    pub fn encode(&self, snap: &Snapshot) -> Encoded {
        let now = snap.unix_ns;
        let mut sent = Vec::new();
        let mut resource_metrics = Vec::new();
        let mut points = 0;
        for svc in &snap.services {
            let mut metrics = Vec::new();
            for inst in Instrument::ALL {
                let pts: Vec<HistogramDataPoint> = svc
                    .series
                    .iter()
                    .filter(|(_, s)| s.instrument == inst)
                    .filter_map(|(k, s)| {
                        let key = series_key(&svc.key, k);
                        let attrs = pb_labels(s.attributes.iter().map(|(k, v)| (*k, v)));
                        let series = Cumulative {
                            key: &key,
                            hist: &s.hist,
                            bounds: inst.bounds(),
                            start_unix_ns: s.start_unix_ns,
                        };
                        self.point(series, now, attrs, &mut sent)
                    })
                    .collect();
                if !pts.is_empty() {
                    points += pts.len();
                    metrics.push(self.histogram(inst.name(), inst.description(), inst.unit(), pts));
                }
            }
            if !metrics.is_empty() {
                resource_metrics.push(ResourceMetrics {
                    resource: Some(PbResource {
                        attributes: pb_attrs(&svc.attributes),
                        ..Default::default()
                    }),
                    scope_metrics: vec![scope(metrics)],
                    schema_url: String::new(),
                });
            }
        }
        let graph = self.graph(&snap.edges, now, &mut sent);
        if !graph.is_empty() {
            points += graph.iter().map(data_points).sum::<usize>();
            resource_metrics.push(ResourceMetrics {
                resource: Some(PbResource {
                    attributes: pb_attrs(&self.own),
                    ..Default::default()
                }),
                scope_metrics: vec![scope(graph)],
                schema_url: String::new(),
            });
        }
        Encoded {
            request: ExportMetricsServiceRequest { resource_metrics },
            points,
            sent,
        }
    }

    fn graph(
        &self,
        edges: &[graph::Edge],
        now: u64,
        sent: &mut Vec<(String, Sent)>,
    ) -> Vec<Metric> {
        let labels = |e: &graph::Edge| -> Vec<PbKeyValue> {
            let s = |v: &str| Label::Str(v.into());
            let mut l: Vec<(&str, Label)> = if e.overflow {
                vec![(super::OVERFLOW_ATTRIBUTE, Label::Bool(true))]
            } else {
                vec![("client", s(&e.client)), ("server", s(&e.server))]
            };
            if let Some(t) = e.connection_type {
                l.push(("connection_type", s(t)));
            }
            pb_labels(l.iter().map(|(k, v)| (*k, v)))
        };
        let mut out = Vec::new();
        for &graph::EdgeCount { name, help, value } in &graph::COUNTS {
            let pts: Vec<NumberDataPoint> = edges
                .iter()
                .filter_map(|e| {
                    // A counter is a histogram's count as far as deltas go.
                    let h = Histogram {
                        count: value(e),
                        sum: 0.0,
                        min: 0.0,
                        max: 0.0,
                        buckets: Vec::new(),
                    };
                    let series = Cumulative {
                        key: &edge_key(e, name),
                        hist: &h,
                        bounds: &[],
                        start_unix_ns: e.start_unix_ns,
                    };
                    let p = self.point(series, now, labels(e), sent)?;
                    Some(NumberDataPoint {
                        attributes: p.attributes,
                        start_time_unix_nano: p.start_time_unix_nano,
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsInt(p.count as i64)),
                        ..Default::default()
                    })
                })
                .collect();
            if !pts.is_empty() {
                out.push(Metric {
                    name: name.into(),
                    description: help.into(),
                    unit: "1".into(),
                    data: Some(Data::Sum(Sum {
                        data_points: pts,
                        aggregation_temporality: self.temporality.proto(),
                        is_monotonic: true,
                    })),
                    ..Default::default()
                });
            }
        }
        for &graph::EdgeDurations {
            name,
            help,
            value: h,
        } in &graph::DURATIONS
        {
            let pts: Vec<HistogramDataPoint> = edges
                .iter()
                .filter(|e| h(e).count > 0)
                .filter_map(|e| {
                    let series = Cumulative {
                        key: &edge_key(e, name),
                        hist: h(e),
                        bounds: graph::BOUNDS,
                        start_unix_ns: e.start_unix_ns,
                    };
                    self.point(series, now, labels(e), sent)
                })
                .collect();
            if !pts.is_empty() {
                out.push(self.histogram(name, help, "s", pts));
            }
        }
        out
    }

    /// The request was delivered: later deltas start from it.
    pub fn delivered(&mut self, e: Encoded) {
        if self.temporality == Temporality::Cumulative {
            return;
        }
        self.sent.extend(e.sent);
    }

    /// Drops what is remembered of series gone from `snap` (they were swept as idle).
    pub fn forget_gone(&mut self, snap: &Snapshot) {
        if self.sent.is_empty() {
            return;
        }
        let mut live = rustc_hash::FxHashSet::default();
        for svc in &snap.services {
            for (k, _) in &svc.series {
                live.insert(series_key(&svc.key, k));
            }
        }
        for e in &snap.edges {
            let counts = graph::COUNTS.iter().map(|c| c.name);
            for name in counts.chain(graph::DURATIONS.iter().map(|d| d.name)) {
                live.insert(edge_key(e, name));
            }
        }
        self.sent.retain(|k, _| live.contains(k));
    }
}

/// A histogram as it stands, and what names it in the delta bookkeeping.
struct Cumulative<'a> {
    key: &'a str,
    hist: &'a Histogram,
    bounds: &'a [f64],
    start_unix_ns: u64,
}

fn series_key(service: &str, series: &str) -> String {
    format!("{service}\u{1d}{series}")
}

fn edge_key(e: &graph::Edge, metric: &str) -> String {
    format!(
        "graph\u{1d}{}\u{1d}{}\u{1d}{:?}\u{1d}{metric}",
        e.client, e.server, e.connection_type
    )
}

fn data_points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        _ => 0,
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

    fn hist_points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<HistogramDataPoint> {
        req.resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == name)
            .flat_map(|m| match &m.data {
                Some(Data::Histogram(h)) => h.data_points.clone(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn cumulative_points_hold_everything_and_deltas_what_is_new_since_delivery() {
        let m = SpanMetrics::new(10, &Registry::default());
        let r = resource(1, "api");
        m.record(&[server(&r, 200, 3, None), server(&r, 200, 40, None)]);
        let own = [crate::span::kv("service.name", Value::Str("tracer".into()))];
        let cum = Encoder::new(Temporality::Cumulative, &own);
        let mut delta = Encoder::new(Temporality::Delta, &own);
        let first = delta.encode(&m.snapshot());
        let p = hist_points(&first.request, "http.server.request.duration");
        assert_eq!((p.len(), p[0].count), (1, 2));
        // Not delivered: the next export carries these requests too.
        m.record(&[server(&r, 200, 3, None)]);
        let again = delta.encode(&m.snapshot());
        assert_eq!(
            hist_points(&again.request, "http.server.request.duration")[0].count,
            3
        );
        delta.delivered(again);
        let nothing = delta.encode(&m.snapshot());
        assert_eq!(nothing.points, 0);
        m.record(&[server(&r, 200, 300, None)]);
        let snap = m.snapshot();
        let d = hist_points(&delta.encode(&snap).request, "http.server.request.duration");
        assert_eq!(d[0].count, 1);
        assert!((d[0].sum.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(d[0].bucket_counts.iter().sum::<u64>(), 1);
        let c = hist_points(&cum.encode(&snap).request, "http.server.request.duration");
        assert_eq!(c[0].count, 4);
        assert_eq!(c[0].explicit_bounds, super::super::HTTP_BOUNDS);
        assert_eq!(
            c[0].bucket_counts.len(),
            super::super::HTTP_BOUNDS.len() + 1
        );
        let res = &cum.encode(&snap).request.resource_metrics[0];
        assert!(
            res.resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .all(|a| a.key != "process.pid")
        );
    }

    #[test]
    fn temporality_names_follow_the_specification() {
        assert_eq!(
            Temporality::parse("Cumulative"),
            Some(Temporality::Cumulative)
        );
        assert_eq!(Temporality::parse("delta"), Some(Temporality::Delta));
        assert_eq!(Temporality::parse("lowmemory"), Some(Temporality::Delta));
        assert_eq!(Temporality::parse("sometimes"), None);
    }
}
