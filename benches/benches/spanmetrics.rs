//! Request-metrics cost per span: our recorder (two services, a mix of statuses and routes,
//! the service graph included) against the OpenTelemetry SDK's histogram recording the same
//! attributes into one meter provider, the SDK's best case (a provider has one resource, so
//! the SDK would need one per service).
//! `cargo bench -p tracer-benches --bench spanmetrics`
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry::{KeyValue as OtelKeyValue, metrics::MeterProvider as _};
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
use tracer_user::{
    metrics::Registry,
    semconv,
    span::{Resource, Span, SpanKind, Status, Value, kv},
    spanmetrics::{DEFAULT_SERIES_LIMIT, HTTP_BOUNDS, SpanMetrics},
};

const BATCH: usize = 64;

fn resource(pid: u32, name: &str) -> Arc<Resource> {
    Arc::new(Resource {
        pid,
        service_name: name.into(),
        attributes: vec![
            kv(semconv::SERVICE_NAME, Value::Str(name.into())),
            kv(semconv::PROCESS_PID, Value::Int(pid.into())),
            kv(semconv::HOST_NAME, Value::Str("node-1".into())),
        ],
    })
}

/// Server spans as the builder and the route normalizer leave them.
fn spans() -> Vec<Span> {
    let res = [resource(10, "nginx"), resource(20, "api")];
    (0..BATCH)
        .map(|i| {
            let status = [200, 200, 200, 404, 500][i % 5];
            let mut attributes = vec![
                kv(semconv::HTTP_REQUEST_METHOD, Value::Str("GET".into())),
                kv(semconv::URL_PATH, Value::Str(format!("/users/{i}"))),
                kv(semconv::URL_SCHEME, Value::Str("http".into())),
                kv(semconv::HTTP_RESPONSE_STATUS_CODE, Value::Int(status)),
                kv(semconv::NETWORK_PROTOCOL_VERSION, Value::Str("1.1".into())),
                kv(semconv::CLIENT_ADDRESS, Value::Str("10.0.0.7".into())),
                kv(semconv::USER_AGENT_ORIGINAL, Value::Str("wrk".into())),
                kv(
                    semconv::HTTP_ROUTE,
                    Value::Str(["/users/{id}", "/orders/{id}"][i % 2].into()),
                ),
            ];
            if status == 500 {
                attributes.push(kv(semconv::ERROR_TYPE, Value::Str("500".into())));
            }
            Span {
                trace_id: [i as u8; 16],
                span_id: [i as u8 + 1; 8],
                parent_span_id: None,
                flags: 1,
                trace_state: None,
                kind: SpanKind::Server,
                name: "GET".into(),
                start_unix_ns: 1_000_000,
                end_unix_ns: 1_000_000 + (i as u64 + 1) * 700_000,
                status: if status == 500 {
                    Status::Error("500".into())
                } else {
                    Status::Unset
                },
                attributes,
                resource: res[i % 2].clone(),
            }
        })
        .collect()
}

fn record(c: &mut Criterion) {
    let input = spans();
    let mut g = c.benchmark_group("spanmetrics");
    g.throughput(Throughput::Elements(BATCH as u64));
    let ours = SpanMetrics::new(DEFAULT_SERIES_LIMIT, &Registry::default());
    g.bench_function("tracer/64", |b| b.iter(|| ours.record(&input)));

    let provider = SdkMeterProvider::builder()
        .with_reader(ManualReader::builder().build())
        .build();
    let hist = provider
        .meter("bench")
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_boundaries(HTTP_BOUNDS.to_vec())
        .build();
    const KEYS: [&str; 7] = [
        semconv::SERVICE_NAME,
        semconv::HTTP_REQUEST_METHOD,
        semconv::URL_SCHEME,
        semconv::HTTP_ROUTE,
        semconv::HTTP_RESPONSE_STATUS_CODE,
        semconv::ERROR_TYPE,
        semconv::NETWORK_PROTOCOL_VERSION,
    ];
    g.bench_function("otel-sdk/64", |b| {
        b.iter(|| {
            for s in &input {
                // The attributes the SDK needs, from the span's (the service's name among
                // them: one provider holds every service here).
                let attrs: Vec<OtelKeyValue> = KEYS
                    .iter()
                    .filter_map(|k| {
                        let v = if *k == semconv::SERVICE_NAME {
                            Value::Str(s.resource.service_name.clone())
                        } else {
                            s.attr(k)?.clone()
                        };
                        Some(match v {
                            Value::Int(i) => OtelKeyValue::new(*k, i),
                            other => OtelKeyValue::new(*k, other.to_string()),
                        })
                    })
                    .collect();
                let d = (s.end_unix_ns - s.start_unix_ns) as f64 / 1e9;
                hist.record(d, &attrs);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
