//! Exporters: where finished spans go. Each sink has a bounded queue and its own task, so a
//! slow or dead endpoint never blocks decoding; what cannot be queued or delivered is counted.
pub mod otlp;
pub mod printer;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinSet};

use crate::{metrics::Metrics, span::Span};
pub use otlp::{OtlpClient, OtlpConfig, Protocol};
pub use printer::{Format, Printer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?} is not a supported OTLP protocol: use grpc or http/protobuf")]
    Protocol { var: String, value: String },
    #[error("{var}={value:?} is not a number of milliseconds")]
    Millis { var: String, value: String },
    #[error("{var}={value:?} is not a positive number")]
    Count { var: String, value: String },
    #[error("{var}={value:?}: supported compressions are gzip and none")]
    Compression { var: String, value: String },
    #[error("{var}: {entry:?} is not key=value")]
    Header { var: String, entry: String },
}

/// Batching settings (the OTEL_BSP_* variables, with the specification's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_queue: usize,
    pub delay: Duration,
    pub max_batch: usize,
    pub export_timeout: Duration,
    /// Export requests in flight at once.
    pub max_in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue: 2048,
            delay: Duration::from_millis(5000),
            max_batch: 512,
            export_timeout: Duration::from_millis(30000),
            max_in_flight: 4,
        }
    }
}

/// Environment lookup, injectable for tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn first(env: Env, vars: &[&str]) -> Option<(String, String)> {
    vars.iter().find_map(|v| {
        env(v)
            .filter(|s| !s.trim().is_empty())
            .map(|s| (v.to_string(), s.trim().to_string()))
    })
}

fn millis(env: Env, vars: &[&str]) -> Result<Option<Duration>, ConfigError> {
    first(env, vars)
        .map(|(var, value)| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| ConfigError::Millis { var, value })
        })
        .transpose()
}

fn count(env: Env, var: &str) -> Result<Option<usize>, ConfigError> {
    first(env, &[var])
        .map(|(var, value)| match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::Count { var, value }),
        })
        .transpose()
}

impl BatchConfig {
    pub fn from_env(env: Env) -> Result<Self, ConfigError> {
        let d = BatchConfig::default();
        Ok(BatchConfig {
            max_queue: count(env, "OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(d.max_queue),
            delay: millis(env, &["OTEL_BSP_SCHEDULE_DELAY"])?.unwrap_or(d.delay),
            max_batch: count(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?.unwrap_or(d.max_batch),
            export_timeout: millis(env, &["OTEL_BSP_EXPORT_TIMEOUT"])?.unwrap_or(d.export_timeout),
            max_in_flight: d.max_in_flight,
        })
    }
}

fn parse_headers(var: &str, s: &str, out: &mut Vec<(String, String)>) -> Result<(), ConfigError> {
    for entry in s.split(',').filter(|e| !e.trim().is_empty()) {
        let (k, v) = entry.split_once('=').ok_or_else(|| ConfigError::Header {
            var: var.into(),
            entry: entry.into(),
        })?;
        let k = k.trim().to_string();
        let v = crate::process::percent_decode(v.trim());
        out.retain(|(old, _)| !old.eq_ignore_ascii_case(&k));
        out.push((k, v));
    }
    Ok(())
}

/// Resolves the OTLP settings from flags and the OTEL_EXPORTER_OTLP_* variables, with the
/// specification's precedence (signal-specific over generic, flags over both).
/// `None` when no endpoint is configured anywhere.
pub fn otlp_config(
    endpoint_flag: Option<&str>,
    protocol_flag: Option<&str>,
    env: Env,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let protocol = match protocol_flag
        .map(|p| ("--otlp-protocol".to_string(), p.to_string()))
        .or_else(|| {
            first(
                env,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                ],
            )
        }) {
        None => Protocol::HttpProtobuf,
        Some((_, p)) if p == "grpc" => Protocol::Grpc,
        Some((_, p)) if p == "http/protobuf" => Protocol::HttpProtobuf,
        Some((var, value)) => return Err(ConfigError::Protocol { var, value }),
    };
    // The signal-specific variable is a full URL; the generic one is a base URL to which HTTP
    // appends the signal path.
    let endpoint = if let Some(e) = endpoint_flag.filter(|e| !e.is_empty()) {
        base_to_signal(e, protocol)
    } else if let Some((_, e)) = first(env, &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) {
        e
    } else if let Some((_, e)) = first(env, &["OTEL_EXPORTER_OTLP_ENDPOINT"]) {
        base_to_signal(&e, protocol)
    } else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if let Some(h) = env(var) {
            parse_headers(var, &h, &mut headers)?;
        }
    }
    let timeout = millis(
        env,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
    )?
    .unwrap_or(Duration::from_secs(10));
    let gzip = match first(
        env,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
    ) {
        None => false,
        Some((_, c)) if c == "gzip" => true,
        Some((_, c)) if c == "none" => false,
        Some((var, value)) => return Err(ConfigError::Compression { var, value }),
    };
    Ok(Some(OtlpConfig {
        protocol,
        endpoint,
        headers,
        timeout,
        gzip,
    }))
}

fn base_to_signal(base: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    }
}

/// Where a queue's spans end up (built once at start-up: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    Print(Printer),
    Otlp(OtlpClient),
}

/// The sending side of one sink's queue.
pub struct Queue {
    tx: mpsc::Sender<Span>,
    task: tokio::task::JoinHandle<()>,
}

/// All configured sinks; `submit` never blocks.
pub struct Exporters {
    queues: Vec<Queue>,
    metrics: Arc<Metrics>,
}

impl Exporters {
    pub fn spawn(sinks: Vec<Sink>, batch: BatchConfig, metrics: Arc<Metrics>) -> Self {
        let queues = sinks
            .into_iter()
            .map(|sink| {
                let (tx, rx) = mpsc::channel(batch.max_queue);
                let task = match sink {
                    Sink::Print(p) => tokio::spawn(print_loop(p, rx, metrics.clone())),
                    Sink::Otlp(c) => tokio::spawn(otlp_loop(c, rx, batch.clone(), metrics.clone())),
                };
                Queue { tx, task }
            })
            .collect();
        Exporters { queues, metrics }
    }

    pub fn submit(&self, spans: Vec<Span>) {
        let Some((last, rest)) = self.queues.split_last() else {
            return;
        };
        for q in rest {
            for sp in &spans {
                self.enqueue(q, sp.clone());
            }
        }
        for sp in spans {
            self.enqueue(last, sp);
        }
    }

    fn enqueue(&self, q: &Queue, sp: Span) {
        if q.tx.try_send(sp).is_err() {
            Metrics::add(&self.metrics.spans_queue_full_total, 1);
        }
    }

    /// Closes the queues and waits (up to `deadline`) for what is in them to be delivered.
    pub async fn shutdown(self, deadline: Duration) {
        let tasks: Vec<_> = self
            .queues
            .into_iter()
            .map(|q| {
                drop(q.tx);
                q.task
            })
            .collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("gave up flushing spans after {deadline:?}");
        }
    }
}

async fn print_loop(mut p: Printer, mut rx: mpsc::Receiver<Span>, metrics: Arc<Metrics>) {
    let mut buf = Vec::with_capacity(256);
    while rx.recv_many(&mut buf, 256).await > 0 {
        match p.write(&buf) {
            Ok(()) => Metrics::add(&metrics.spans_exported_total, buf.len() as u64),
            Err(e) => {
                // stdout closed (e.g. piped into `head`): count, keep draining.
                Metrics::add(&metrics.spans_export_failed_total, buf.len() as u64);
                warn_throttled(&format!("cannot write spans: {e}"));
            }
        }
        buf.clear();
    }
}

async fn otlp_loop(
    client: OtlpClient,
    mut rx: mpsc::Receiver<Span>,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
) {
    let mut in_flight = JoinSet::new();
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::with_capacity(cfg.max_batch);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + cfg.delay;
        while batch.len() < cfg.max_batch {
            let room = cfg.max_batch - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => if n == 0 { open = false; break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        while in_flight.len() >= cfg.max_in_flight {
            in_flight.join_next().await;
        }
        in_flight.spawn(send_with_retry(
            client.clone(),
            batch,
            cfg.export_timeout,
            metrics.clone(),
        ));
    }
    while in_flight.join_next().await.is_some() {}
}

async fn send_with_retry(
    client: OtlpClient,
    batch: Vec<Span>,
    budget: Duration,
    metrics: Arc<Metrics>,
) {
    let n = batch.len() as u64;
    let body = client.encode(&batch);
    let start = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.export(body.clone()).await {
            Ok(()) => {
                Metrics::add(&metrics.spans_exported_total, n);
                metrics.health.export_failing.store(false, Relaxed);
                return;
            }
            Err(e) if e.retryable() && start.elapsed() + backoff < budget => {
                let jitter = Duration::from_millis(
                    rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1),
                );
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                Metrics::add(&metrics.spans_export_failed_total, n);
                metrics.health.export_failing.store(true, Relaxed);
                if let Ok(mut last) = metrics.health.last_export_error.lock() {
                    *last = e.to_string();
                }
                warn_throttled(&format!("dropped {n} spans: {e}"));
                return;
            }
        }
    }
}

/// Logs at most one warning every 10 s: a dead endpoint must not flood the log.
fn warn_throttled(msg: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::span::clock_ns(libc::CLOCK_MONOTONIC) / 1_000_000_000;
    let last = LAST.load(Relaxed);
    if (last == 0 || now >= last + 10)
        && LAST
            .compare_exchange(last, now.max(1), Relaxed, Relaxed)
            .is_ok()
    {
        tracing::warn!(
            "{msg} (further export warnings in the next 10 s are not shown; see the counters)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_endpoint_means_no_otlp() {
        assert_eq!(otlp_config(None, None, &env_of(&[])).unwrap(), None);
    }

    #[test]
    fn generic_endpoint_gets_signal_path_for_http_only() {
        let e = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        let c = otlp_config(None, None, &e).unwrap().unwrap();
        assert_eq!(
            (c.protocol, c.endpoint.as_str()),
            (Protocol::HttpProtobuf, "http://collector:4318/v1/traces")
        );
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        let c = otlp_config(None, None, &e).unwrap().unwrap();
        assert_eq!(
            (c.protocol, c.endpoint.as_str()),
            (Protocol::Grpc, "http://collector:4317")
        );
    }

    #[test]
    fn signal_specific_variables_win_and_are_used_as_is() {
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "A=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]);
        let c = otlp_config(None, None, &e).unwrap().unwrap();
        assert_eq!(c.endpoint, "http://traces:9999/custom");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            c.headers,
            vec![
                ("b".to_string(), "x y".to_string()),
                ("A".to_string(), "2".to_string())
            ]
        );
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert!(c.gzip);
        // Flags beat the environment.
        let c = otlp_config(Some("http://flag:4317"), Some("grpc"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.protocol, c.endpoint.as_str()),
            (Protocol::Grpc, "http://flag:4317")
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]);
        let err = otlp_config(None, None, &e).unwrap_err();
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\""),
            "{err}"
        );
        let e = env_of(&[("OTEL_BSP_SCHEDULE_DELAY", "soon")]);
        assert!(BatchConfig::from_env(&e).is_err());
        let e = env_of(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]);
        assert!(BatchConfig::from_env(&e).is_err());
        let e = env_of(&[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
        assert_eq!(
            BatchConfig::from_env(&e).unwrap().delay,
            Duration::from_millis(200)
        );
    }

    #[tokio::test]
    async fn dead_endpoint_counts_failures_and_never_blocks() {
        // Nothing listens on port 9 of localhost: every attempt is refused.
        let cfg = OtlpConfig {
            protocol: Protocol::HttpProtobuf,
            endpoint: "http://127.0.0.1:9/v1/traces".into(),
            headers: vec![],
            timeout: Duration::from_millis(200),
            gzip: false,
        };
        let metrics = Arc::new(Metrics::default());
        let batch = BatchConfig {
            max_queue: 4,
            delay: Duration::from_millis(10),
            max_batch: 2,
            export_timeout: Duration::from_millis(300),
            max_in_flight: 1,
        };
        let ex = Exporters::spawn(
            vec![Sink::Otlp(OtlpClient::new(&cfg).unwrap())],
            batch,
            metrics.clone(),
        );
        let res = Arc::new(crate::span::Resource {
            pid: 1,
            service_name: "s".into(),
            attributes: vec![],
        });
        let sp = crate::span::Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent_span_id: None,
            flags: 1,
            kind: crate::span::SpanKind::Client,
            name: "GET".into(),
            start_unix_ns: 0,
            end_unix_ns: 1,
            status: crate::span::Status::Unset,
            attributes: vec![],
            resource: res,
        };
        ex.submit(vec![sp.clone(); 20]);
        ex.shutdown(Duration::from_secs(10)).await;
        let failed = metrics.spans_export_failed_total.load(Relaxed);
        let full = metrics.spans_queue_full_total.load(Relaxed);
        assert_eq!(metrics.spans_exported_total.load(Relaxed), 0);
        assert_eq!(failed + full, 20, "every span is accounted for");
        assert!(full > 0, "a 4-span queue cannot take 20 at once");
    }
}
