//! Exporters: where finished spans go. Each sink has a queue bounded by memory (and by a span
//! count if OTEL_BSP_MAX_QUEUE_SIZE is set) and its own task, so a slow or dead endpoint never
//! blocks decoding; what cannot be queued or delivered is counted by reason.
mod connect;
pub mod metrics;
pub mod otlp;
pub mod printer;
pub mod tls;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::{sync::Notify, task::JoinSet};

use crate::{
    metrics::{Counter, Health, Registry, SpanDrop, SpanDrops},
    queue::{Limits, Refused, SpanQueue},
    span::Span,
};
pub use otlp::{OtlpClient, OtlpConfig, Protocol, Signal};
pub use printer::{Format, Printer};

/// What goes wrong in the export subsystem: settings (flags and OTEL_* variables) refused at
/// start, and failed deliveries.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("{var}={value:?} is not a supported OTLP protocol: use grpc or http/protobuf")]
    Protocol { var: String, value: String },
    #[error("{var}={value:?} is not a number of milliseconds")]
    Millis { var: String, value: String },
    #[error("{var}={value:?}: supported temporalities are cumulative, delta or lowmemory")]
    Temporality { var: String, value: String },
    #[error(
        "{var}={value:?}: supported exporters are otlp, prometheus (the admin /metrics) and none"
    )]
    Exporter { var: String, value: String },
    #[error("{var}={value:?} is not a positive number")]
    Count { var: String, value: String },
    #[error("{var}={value:?}: supported compressions are gzip and none")]
    Compression { var: String, value: String },
    #[error("{var}: {entry:?} is not key=value")]
    HeaderEntry { var: String, entry: String },
    #[error("{var}: {detail}")]
    Tls { var: String, detail: String },
    #[error("{var}={value:?} is not true or false")]
    Bool { var: String, value: String },
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

/// Memory cap of each sink's queue, in MiB, unless `--export-queue-mib` says otherwise: a
/// burst of 50k typical spans fits with room to spare.
pub const DEFAULT_QUEUE_MIB: u32 = 64;

/// Queue and batching settings (the OTEL_BSP_* variables, with the specification's defaults,
/// except the queue: bounded by memory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Memory the queued spans of one sink may hold ([`crate::queue::span_bytes`]).
    pub max_queue_bytes: usize,
    /// OTEL_BSP_MAX_QUEUE_SIZE, only when it is set: a cap on the number of queued spans too.
    pub max_queue_spans: Option<usize>,
    pub delay: Duration,
    pub max_batch: usize,
    pub export_timeout: Duration,
    /// Export requests in flight at once.
    pub max_in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue_bytes: (DEFAULT_QUEUE_MIB as usize) << 20,
            max_queue_spans: None,
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

fn millis(env: Env, vars: &[&str]) -> Result<Option<Duration>, ExportError> {
    first(env, vars)
        .map(|(var, value)| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| ExportError::Millis { var, value })
        })
        .transpose()
}

fn count(env: Env, var: &str) -> Result<Option<usize>, ExportError> {
    first(env, &[var])
        .map(|(var, value)| match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ExportError::Count { var, value }),
        })
        .transpose()
}

impl BatchConfig {
    /// The OTEL_BSP_* settings over the defaults; the queue's memory cap is not one of them.
    pub fn from_env(env: Env) -> Result<Self, ExportError> {
        let d = BatchConfig::default();
        Ok(BatchConfig {
            max_queue_bytes: d.max_queue_bytes,
            max_queue_spans: count(env, "OTEL_BSP_MAX_QUEUE_SIZE")?,
            delay: millis(env, &["OTEL_BSP_SCHEDULE_DELAY"])?.unwrap_or(d.delay),
            max_batch: count(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?.unwrap_or(d.max_batch),
            export_timeout: millis(env, &["OTEL_BSP_EXPORT_TIMEOUT"])?.unwrap_or(d.export_timeout),
            max_in_flight: d.max_in_flight,
        })
    }
}

fn parse_headers(var: &str, s: &str, out: &mut Vec<(String, String)>) -> Result<(), ExportError> {
    for entry in s.split(',').filter(|e| !e.trim().is_empty()) {
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| ExportError::HeaderEntry {
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

/// Resolves the trace exporter's OTLP settings from flags and the OTEL_EXPORTER_OTLP_*
/// variables; `None` when no endpoint is configured anywhere.
pub fn otlp_config(
    endpoint_flag: Option<&str>,
    protocol_flag: Option<&str>,
    env: Env,
) -> Result<Option<OtlpConfig>, ExportError> {
    signal_config(Signal::Traces, endpoint_flag, protocol_flag, env)
}

/// The OTLP settings of one signal, with the specification's precedence (signal-specific
/// over generic, flags over both). `None` when no endpoint is configured anywhere.
pub fn signal_config(
    signal: Signal,
    endpoint_flag: Option<&str>,
    protocol_flag: Option<&str>,
    env: Env,
) -> Result<Option<OtlpConfig>, ExportError> {
    let var = |what: &str| signal.var(what);
    let vars = |what: &str| [var(what), format!("OTEL_EXPORTER_OTLP_{what}")];
    let pick = |what: &str| {
        let v = vars(what);
        first(env, &[v[0].as_str(), v[1].as_str()])
    };
    let protocol = match protocol_flag
        .map(|p| ("--otlp-protocol".to_string(), p.to_string()))
        .or_else(|| pick("PROTOCOL"))
    {
        None => Protocol::HttpProtobuf,
        Some((_, p)) if p == "grpc" => Protocol::Grpc,
        Some((_, p)) if p == "http/protobuf" => Protocol::HttpProtobuf,
        Some((var, value)) => return Err(ExportError::Protocol { var, value }),
    };
    let insecure = match pick("INSECURE") {
        None => false,
        Some((_, v)) if v.eq_ignore_ascii_case("true") => true,
        Some((_, v)) if v.eq_ignore_ascii_case("false") => false,
        Some((var, value)) => return Err(ExportError::Bool { var, value }),
    };
    // The signal-specific variable is a full URL; the generic one is a base URL to which HTTP
    // appends the signal path.
    let endpoint = if let Some(e) = endpoint_flag.filter(|e| !e.is_empty()) {
        base_to_signal(e, protocol, signal)
    } else if let Some((_, e)) = first(env, &[var("ENDPOINT").as_str()]) {
        e
    } else if let Some((_, e)) = first(env, &["OTEL_EXPORTER_OTLP_ENDPOINT"]) {
        base_to_signal(&e, protocol, signal)
    } else {
        return Ok(None);
    };
    // A gRPC endpoint may be a bare host:port: TLS unless ..._INSECURE=true says otherwise.
    let endpoint = match protocol {
        Protocol::Grpc if !endpoint.contains("://") => {
            let scheme = if insecure { "http" } else { "https" };
            format!("{scheme}://{endpoint}")
        }
        _ => endpoint,
    };
    let tls = tls::TlsFiles::from_env(pick)?;
    if !tls.is_empty() && !endpoint.starts_with("https://") {
        tracing::warn!(
            "the OTLP endpoint {endpoint} is not https: its certificate settings are not used"
        );
    }
    let mut headers = Vec::new();
    for v in vars("HEADERS").iter().rev() {
        if let Some(h) = env(v) {
            parse_headers(v, &h, &mut headers)?;
        }
    }
    let v = vars("TIMEOUT");
    let timeout = millis(env, &[v[0].as_str(), v[1].as_str()])?.unwrap_or(Duration::from_secs(10));
    let gzip = match pick("COMPRESSION") {
        None => false,
        Some((_, c)) if c == "gzip" => true,
        Some((_, c)) if c == "none" => false,
        Some((var, value)) => return Err(ExportError::Compression { var, value }),
    };
    Ok(Some(OtlpConfig {
        signal,
        protocol,
        endpoint,
        headers,
        timeout,
        gzip,
        tls,
    }))
}

fn base_to_signal(base: &str, protocol: Protocol, signal: Signal) -> String {
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}{}", base.trim_end_matches('/'), signal.http_path()),
    }
}

/// Where a queue's spans end up (built once at start-up: the size difference does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Sink {
    Print(Printer),
    Otlp(OtlpClient),
}

/// One sink's queue, and how many of the spans it accepted are settled: delivered, or
/// failed for good.
struct SinkQueue {
    spans: SpanQueue,
    settled: AtomicU64,
}

impl SinkQueue {
    fn settle(&self, n: usize) {
        self.settled.fetch_add(n as u64, Relaxed);
    }
}

/// What the exporters count, and the health their failures imply.
pub struct ExportMetrics {
    pub exported: Counter,
    /// Shared with the pipeline's stages ([`Submitter::span_drops`]).
    pub dropped: SpanDrops,
    pub health: Arc<Health>,
}

impl ExportMetrics {
    pub fn new(reg: &Registry, health: Arc<Health>) -> Self {
        ExportMetrics {
            exported: reg.counter("spans_exported", "Spans the exporter delivered"),
            dropped: SpanDrops::new(reg),
            health,
        }
    }
}

/// All configured sinks and their tasks.
pub struct Exporters {
    queues: Vec<(Arc<SinkQueue>, tokio::task::JoinHandle<()>)>,
    metrics: Arc<ExportMetrics>,
    /// Told when the reader of the printed spans has gone away (`tracer run | head`).
    stdout_closed: Arc<Notify>,
}

/// Hands spans to every sink; cheap to clone, usable from any thread, never blocks.
#[derive(Clone)]
pub struct Submitter {
    queues: Vec<Arc<SinkQueue>>,
    metrics: Arc<ExportMetrics>,
}

impl Exporters {
    /// Starts one task per sink (inside a tokio runtime).
    pub fn spawn(
        sinks: Vec<Sink>,
        batch: BatchConfig,
        reg: &Registry,
        health: Arc<Health>,
    ) -> Self {
        let metrics = Arc::new(ExportMetrics::new(reg, health));
        let stdout_closed = Arc::new(Notify::new());
        let limits = Limits {
            max_bytes: batch.max_queue_bytes,
            max_spans: batch.max_queue_spans,
        };
        let queues = sinks
            .into_iter()
            .map(|sink| {
                let q = Arc::new(SinkQueue {
                    spans: SpanQueue::new(limits),
                    settled: AtomicU64::new(0),
                });
                let task = match sink {
                    Sink::Print(p) => tokio::spawn(print_loop(
                        p,
                        q.clone(),
                        metrics.clone(),
                        stdout_closed.clone(),
                    )),
                    Sink::Otlp(c) => {
                        tokio::spawn(otlp_loop(c, q.clone(), batch.clone(), metrics.clone()))
                    }
                };
                (q, task)
            })
            .collect();
        Exporters {
            queues,
            metrics,
            stdout_closed,
        }
    }

    /// Resolves once the printed spans' reader has gone away (stdout is a closed pipe).
    pub fn stdout_closed(&self) -> impl std::future::Future<Output = ()> + use<> {
        let n = self.stdout_closed.clone();
        async move { n.notified().await }
    }

    pub fn submitter(&self) -> Submitter {
        Submitter {
            queues: self.queues.iter().map(|(q, _)| q.clone()).collect(),
            metrics: self.metrics.clone(),
        }
    }

    /// Closes the queues and waits (up to `deadline`) for what is in them to be delivered;
    /// what is still queued or in flight then is counted as dropped at shutdown.
    pub async fn shutdown(self, deadline: Duration) {
        let (queues, tasks): (Vec<_>, Vec<_>) = self.queues.into_iter().unzip();
        for q in &queues {
            q.spans.close();
        }
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("gave up flushing spans after {deadline:?}");
            for a in aborts {
                a.abort();
            }
        }
        for q in queues {
            let lost = q.spans.accepted() - q.settled.load(Relaxed);
            self.metrics.dropped.add(SpanDrop::Shutdown, lost);
        }
    }
}

impl Submitter {
    /// Queues the spans on every sink; what a queue refuses is counted, never waited for.
    pub fn submit(&self, spans: Vec<Span>) {
        let Some((last, rest)) = self.queues.split_last() else {
            return;
        };
        for q in rest {
            self.count(q.spans.push(spans.iter().cloned()));
        }
        self.count(last.spans.push(spans));
    }

    fn count(&self, r: Refused) {
        self.metrics.dropped.add(SpanDrop::ExportQueueFull, r.full);
        self.metrics.dropped.add(SpanDrop::Shutdown, r.closed);
    }

    /// The counters of spans dropped before delivery, for the stages ahead of the exporters.
    pub fn span_drops(&self) -> SpanDrops {
        self.metrics.dropped.clone()
    }
}

async fn print_loop(
    mut p: Printer,
    q: Arc<SinkQueue>,
    metrics: Arc<ExportMetrics>,
    closed: Arc<Notify>,
) {
    let mut buf = Vec::with_capacity(256);
    let mut reader_gone = false;
    while q.spans.recv_many(&mut buf, 256).await > 0 {
        let written = if reader_gone {
            Err(std::io::ErrorKind::BrokenPipe.into())
        } else {
            p.write(&buf)
        };
        match written {
            Ok(()) => {
                metrics.exported.inc_by(buf.len() as u64);
            }
            Err(e) => {
                // Counted, and the queue kept draining.
                metrics
                    .dropped
                    .add(SpanDrop::ExportFailed, buf.len() as u64);
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    warn_throttled(&format!("cannot write spans: {e}"));
                } else if !reader_gone {
                    // Piped into `head` or the like: no more printing, said once.
                    reader_gone = true;
                    tracing::info!("stdout was closed: spans are no longer printed");
                    closed.notify_one();
                }
            }
        }
        q.settle(buf.len());
        buf.clear();
    }
}

/// Batches of up to `max_batch` spans (sent once full, or `delay` after their first span),
/// up to `max_in_flight` export requests at once.
async fn otlp_loop(
    client: OtlpClient,
    q: Arc<SinkQueue>,
    cfg: BatchConfig,
    metrics: Arc<ExportMetrics>,
) {
    let mut in_flight = JoinSet::new();
    let mut open = true;
    while open {
        let mut batch = Vec::with_capacity(cfg.max_batch);
        if q.spans.recv_many(&mut batch, cfg.max_batch).await == 0 {
            break;
        }
        let deadline = tokio::time::Instant::now() + cfg.delay;
        while batch.len() < cfg.max_batch {
            let room = cfg.max_batch - batch.len();
            tokio::select! {
                n = q.spans.recv_many(&mut batch, room) => if n == 0 { open = false; break },
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
            q.clone(),
        ));
    }
    while in_flight.join_next().await.is_some() {}
}

async fn send_with_retry(
    client: OtlpClient,
    batch: Vec<Span>,
    budget: Duration,
    metrics: Arc<ExportMetrics>,
    q: Arc<SinkQueue>,
) {
    let n = batch.len() as u64;
    let body = client.encode(&batch);
    match deliver(&client, body, budget).await {
        Ok(()) => {
            metrics.exported.inc_by(n);
            metrics.health.export_failing.set(false);
        }
        Err(e) => {
            let why = if e.retryable() {
                SpanDrop::ExportFailed
            } else {
                SpanDrop::ExportRejected
            };
            metrics.dropped.add(why, n);
            metrics.health.export_failing.set(true);
            if let Ok(mut last) = metrics.health.last_export_error.lock() {
                *last = e.to_string();
            }
            warn_throttled(&format!("dropped {n} spans: {e}"));
        }
    }
    q.settle(n as usize);
}

/// Sends `body`, retrying what is worth retrying with exponential backoff and jitter
/// (100 ms doubling to 5 s) while `budget` allows.
pub(crate) async fn deliver(
    client: &OtlpClient,
    body: bytes::Bytes,
    budget: Duration,
) -> Result<(), ExportError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.export(body.clone()).await {
            Err(e) if e.retryable() && start.elapsed() + backoff < budget => {
                let jitter = Duration::from_millis(
                    rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1),
                );
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

/// Logs at most one warning every 10 s: a dead endpoint must not flood the log.
pub(crate) fn warn_throttled(msg: &str) {
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

    /// Exporters counting into a registry of their own.
    fn spawn(sinks: Vec<Sink>, batch: BatchConfig) -> Exporters {
        let reg = Registry::default();
        Exporters::spawn(sinks, batch, &reg, Arc::new(Health::new(&reg)))
    }

    /// Exporters with one OTLP sink.
    fn otlp_exporters(cfg: &OtlpConfig, batch: BatchConfig) -> Exporters {
        spawn(vec![Sink::Otlp(OtlpClient::new(cfg).unwrap())], batch)
    }
    use crate::{
        metrics::Reason,
        testing::{SharedBuf, env_of},
    };

    #[test]
    fn a_bare_grpc_endpoint_is_tls_unless_insecure() {
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let c = otlp_config(None, None, &env_of(&grpc)).unwrap().unwrap();
        assert_eq!(c.endpoint, "https://collector:4317");
        let mut insecure = grpc.to_vec();
        insecure.push(("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "true"));
        let c = otlp_config(None, None, &env_of(&insecure))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://collector:4317");
        insecure.push(("OTEL_EXPORTER_OTLP_INSECURE", "yes"));
        insecure.remove(2);
        let err = otlp_config(None, None, &env_of(&insecure)).unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_INSECURE"),
            "{err}"
        );
    }

    #[test]
    fn certificate_files_that_cannot_be_used_stop_the_start_naming_the_variable() {
        let dir = std::env::temp_dir().join(format!("tracer-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let not_pem = not_pem.to_str().unwrap();
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318");
        for (vars, names) in [
            (
                vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")],
                "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", not_pem)],
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: no PEM certificate",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", not_pem)],
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: a client certificate needs its key",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", not_pem),
                    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", not_pem),
                ],
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: ",
            ),
        ] {
            let mut env = vars.clone();
            env.push(base);
            let err = otlp_config(None, None, &env_of(&env)).unwrap_err();
            assert!(err.to_string().starts_with(names), "{vars:?}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
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
        assert_eq!(
            BatchConfig::from_env(&e),
            Err(ExportError::Millis {
                var: "OTEL_BSP_SCHEDULE_DELAY".into(),
                value: "soon".into()
            })
        );
        let e = env_of(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]);
        assert_eq!(
            BatchConfig::from_env(&e),
            Err(ExportError::Count {
                var: "OTEL_BSP_MAX_QUEUE_SIZE".into(),
                value: "0".into()
            })
        );
        let e = env_of(&[("OTEL_BSP_SCHEDULE_DELAY", "200")]);
        assert_eq!(
            BatchConfig::from_env(&e).unwrap().delay,
            Duration::from_millis(200)
        );
    }

    #[test]
    fn the_bsp_queue_size_caps_spans_only_when_set() {
        let d = BatchConfig::from_env(&env_of(&[])).unwrap();
        assert_eq!(d.max_queue_spans, None);
        assert_eq!(d.max_queue_bytes, (DEFAULT_QUEUE_MIB as usize) << 20);
        let e = env_of(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100")]);
        assert_eq!(
            BatchConfig::from_env(&e).unwrap().max_queue_spans,
            Some(100)
        );
    }

    fn span(i: u32) -> Span {
        let mut sp = crate::plugins::samples().remove(0);
        sp.span_id[..4].copy_from_slice(&i.to_be_bytes());
        sp
    }

    fn printer(out: &SharedBuf) -> Sink {
        Sink::Print(Printer {
            format: Format::Json,
            out: Box::new(out.clone()),
        })
    }

    fn dropped(m: &ExportMetrics) -> Vec<(&'static str, u64)> {
        SpanDrop::ALL
            .iter()
            .map(|r| (r.label(), m.dropped.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    // A current-thread runtime: the sinks' tasks run only when the test awaits, so what a
    // submit finds in the queue is exact.
    #[tokio::test]
    async fn every_span_is_exported_or_dropped_by_reason() {
        let out = SharedBuf::default();
        let one = crate::queue::span_bytes(&span(0));
        let batch = BatchConfig {
            max_queue_bytes: one * 10,
            ..Default::default()
        };
        let ex = spawn(vec![printer(&out)], batch);
        let metrics = ex.metrics.clone();
        let tx = ex.submitter();
        tx.submit((0..25).map(span).collect());
        assert_eq!(dropped(&metrics), [("export_queue_full", 15)]);
        ex.shutdown(Duration::from_secs(60)).await;
        assert_eq!(metrics.exported.get(), 10);
        assert_eq!(dropped(&metrics), [("export_queue_full", 15)]);
        assert_eq!(out.lines(), 10);
        // After shutdown nothing is queued, and saying so is counted too.
        tx.submit(vec![span(99)]);
        assert_eq!(
            dropped(&metrics),
            [("export_queue_full", 15), ("shutdown", 1)]
        );
    }

    /// A burst of 50k real spans (built from decoded traffic, each with a plugin chain label)
    /// fits the default queue all at once (the sink runs only when the test awaits, so nothing
    /// is delivered meanwhile): none is dropped.
    #[tokio::test]
    async fn a_burst_of_50k_spans_fits_the_default_queue() {
        const BURST: usize = 50_000;
        let records = crate::testing::traffic(1, 1);
        let reg = Registry::default();
        let mut sp = crate::pipeline::replay(&records, &mut crate::testing::table(&reg))
            .pop()
            .unwrap();
        let chain = "10-sampler@3f2a9c1e0b4d,20-route@9c1e0b4d3f2a,30-enricher@0b4d3f2a9c1e";
        sp.attributes.push(crate::span::kv(
            crate::plugins::CHAIN_ATTRIBUTE,
            crate::span::Value::Str(chain.into()),
        ));
        let size = crate::queue::span_bytes(&sp);
        let cfg = BatchConfig::default();
        assert!(
            BURST * size <= cfg.max_queue_bytes,
            "{BURST} spans of {size} bytes do not fit"
        );
        let sink = Sink::Print(Printer {
            format: Format::Text,
            out: Box::new(std::io::sink()),
        });
        let ex = spawn(vec![sink], cfg);
        let m = ex.metrics.clone();
        let tx = ex.submitter();
        for _ in 0..BURST / 250 {
            tx.submit(vec![sp.clone(); 250]);
        }
        assert_eq!(dropped(&m), []);
        ex.shutdown(Duration::from_secs(600)).await;
        assert_eq!(m.exported.get(), BURST as u64);
    }

    #[tokio::test]
    async fn each_sink_has_its_own_queue_and_a_failing_one_counts_its_failures() {
        let (good, bad) = (SharedBuf::default(), SharedBuf::failing());
        let ex = spawn(
            vec![printer(&bad), printer(&good)],
            BatchConfig {
                max_queue_spans: Some(3),
                ..Default::default()
            },
        );
        let metrics = ex.metrics.clone();
        ex.submitter().submit((0..5).map(span).collect());
        ex.shutdown(Duration::from_secs(60)).await;
        assert_eq!(metrics.exported.get(), 3);
        assert_eq!(good.lines(), 3);
        assert_eq!(
            dropped(&metrics),
            [("export_queue_full", 4), ("export_failed", 3)]
        );
    }

    #[tokio::test]
    async fn a_closed_stdout_stops_the_printing_and_says_so() {
        let ex = spawn(vec![printer(&SharedBuf::failing())], BatchConfig::default());
        let closed = ex.stdout_closed();
        let metrics = ex.metrics.clone();
        ex.submitter().submit((0..5).map(span).collect());
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the closed stdout is told");
        ex.submitter().submit((5..7).map(span).collect());
        ex.shutdown(Duration::from_secs(60)).await;
        assert_eq!(metrics.exported.get(), 0);
        assert_eq!(dropped(&metrics), [("export_failed", 7)]);
    }

    #[tokio::test]
    async fn dead_endpoint_counts_failures_and_never_blocks() {
        // Nothing listens on port 9 of localhost: every attempt is refused.
        let cfg = OtlpConfig {
            signal: Signal::Traces,
            protocol: Protocol::HttpProtobuf,
            endpoint: "http://127.0.0.1:9/v1/traces".into(),
            headers: vec![],
            timeout: Duration::from_millis(200),
            gzip: false,
            tls: Default::default(),
        };
        let batch = BatchConfig {
            max_queue_spans: Some(4),
            delay: Duration::from_millis(10),
            max_batch: 2,
            export_timeout: Duration::from_millis(300),
            max_in_flight: 1,
            ..Default::default()
        };
        let ex = otlp_exporters(&cfg, batch);
        let metrics = ex.metrics.clone();
        ex.submitter().submit((0..20).map(span).collect());
        ex.shutdown(Duration::from_secs(60)).await;
        assert_eq!(metrics.exported.get(), 0);
        assert_eq!(
            dropped(&metrics),
            [("export_queue_full", 16), ("export_failed", 4)],
            "a 4-span queue takes 4 of 20 at once; every span is accounted for"
        );
    }

    /// An OTLP/HTTP endpoint that answers a request only once `n` are open at once, so an
    /// exporter that sent one request at a time would never get an answer. Returns its port
    /// and the most requests it saw open at once.
    async fn endpoint_answering_in_groups_of(
        n: usize,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let seen = peak.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let (barrier, open, peak) = (barrier.clone(), open.clone(), peak.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: the head, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        buf.drain(..head_end + len);
                        let now = open.fetch_add(1, Relaxed) + 1;
                        peak.fetch_max(now, Relaxed);
                        barrier.wait().await;
                        open.fetch_sub(1, Relaxed);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                        if sock.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn export_requests_overlap_up_to_max_in_flight() {
        let (port, peak) = endpoint_answering_in_groups_of(4).await;
        let cfg = OtlpConfig {
            signal: Signal::Traces,
            protocol: Protocol::HttpProtobuf,
            endpoint: format!("http://127.0.0.1:{port}/v1/traces"),
            headers: vec![],
            timeout: Duration::from_secs(60),
            gzip: false,
            tls: Default::default(),
        };
        let batch = BatchConfig {
            max_batch: 1,
            max_in_flight: 4,
            export_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let ex = otlp_exporters(&cfg, batch);
        let metrics = ex.metrics.clone();
        ex.submitter().submit((0..8).map(span).collect());
        // Without overlap the first request would wait for the fourth until the deadline.
        ex.shutdown(Duration::from_secs(60)).await;
        assert_eq!(metrics.exported.get(), 8);
        assert_eq!(dropped(&metrics), [], "requests overlap");
        assert_eq!(peak.load(Relaxed), 4, "never more than max_in_flight");
    }
}
