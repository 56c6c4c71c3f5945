//! The OTLP metrics exporter: every OTEL_METRIC_EXPORT_INTERVAL the request metrics go out as
//! one ExportMetricsServiceRequest, with the trace exporter's retries; once more at shutdown.
use std::{sync::Arc, time::Duration};

use prost::Message;
use tokio::sync::oneshot;

use super::{
    Env, ExportError, OtlpClient, OtlpConfig, Signal, deliver, millis, signal_config,
    warn_throttled,
};
use crate::{
    metrics::{Counter, Registry},
    span::KeyValue,
    spanmetrics::{
        SpanMetrics,
        otlp::{Encoder, Temporality},
    },
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub otlp: OtlpConfig,
    pub interval: Duration,
    pub timeout: Duration,
    pub temporality: Temporality,
}

/// The metrics exporter's settings; None when there is no endpoint or OTEL_METRICS_EXPORTER
/// says `none` (or `prometheus`: `/metrics` serves them anyway).
pub fn metrics_config(
    endpoint_flag: Option<&str>,
    protocol_flag: Option<&str>,
    env: Env,
) -> Result<Option<MetricsConfig>, ExportError> {
    match env("OTEL_METRICS_EXPORTER").as_deref().map(str::trim) {
        None | Some("" | "otlp") => {}
        Some("none" | "prometheus") => return Ok(None),
        Some(other) => {
            return Err(ExportError::Exporter {
                var: "OTEL_METRICS_EXPORTER".into(),
                value: other.into(),
            });
        }
    }
    let Some(otlp) = signal_config(Signal::Metrics, endpoint_flag, protocol_flag, env)? else {
        return Ok(None);
    };
    let var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
    let temporality = match env(var).filter(|v| !v.trim().is_empty()) {
        None => Temporality::Cumulative,
        Some(v) => Temporality::parse(v.trim()).ok_or_else(|| ExportError::Temporality {
            var: var.into(),
            value: v,
        })?,
    };
    let interval =
        millis(env, &["OTEL_METRIC_EXPORT_INTERVAL"])?.unwrap_or(Duration::from_secs(60));
    if interval.is_zero() {
        return Err(ExportError::Count {
            var: "OTEL_METRIC_EXPORT_INTERVAL".into(),
            value: "0".into(),
        });
    }
    Ok(Some(MetricsConfig {
        otlp,
        interval,
        timeout: millis(env, &["OTEL_METRIC_EXPORT_TIMEOUT"])?.unwrap_or(Duration::from_secs(30)),
        temporality,
    }))
}

struct ExportCounters {
    points: Counter,
    failed: Counter,
}

/// The running exporter; [`MetricsExporter::shutdown`] sends what was recorded since the last
/// export.
pub struct MetricsExporter {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsExporter {
    /// Starts the export task (inside a tokio runtime); `own` is the tracer's resource, under
    /// which the service graph goes.
    pub fn spawn(
        cfg: &MetricsConfig,
        metrics: Arc<SpanMetrics>,
        own: &[KeyValue],
        reg: &Registry,
    ) -> Result<Self, ExportError> {
        let client = OtlpClient::new(&cfg.otlp)?;
        let counters = ExportCounters {
            points: reg.counter(
                "metric_points_exported",
                "Request-metric data points the OTLP metrics exporter delivered",
            ),
            failed: reg.counter(
                "metric_exports_failed",
                "OTLP metrics exports that failed for good (their increments go out with the next delta, or the next cumulative export)",
            ),
        };
        let mut enc = Encoder::new(cfg.temporality, own);
        let (stop, mut stopped) = oneshot::channel();
        let (every, budget) = (cfg.interval, cfg.timeout);
        let task = tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.tick().await;
            loop {
                let last = tokio::select! {
                    _ = t.tick() => false,
                    _ = &mut stopped => true,
                };
                export_once(&client, &metrics, &mut enc, budget, &counters).await;
                if last {
                    break;
                }
            }
        });
        Ok(MetricsExporter { stop, task })
    }

    /// One last export, waited for up to `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            tracing::warn!("gave up on the last metrics export after {deadline:?}");
        }
    }
}

async fn export_once(
    client: &OtlpClient,
    metrics: &SpanMetrics,
    enc: &mut Encoder,
    budget: Duration,
    counters: &ExportCounters,
) {
    let snap = metrics.snapshot();
    enc.forget_gone(&snap);
    let encoded = enc.encode(&snap);
    if encoded.points == 0 {
        return;
    }
    let body = client.body(encoded.request.encode_to_vec());
    match deliver(client, body, budget).await {
        Ok(()) => {
            counters.points.inc_by(encoded.points as u64);
            enc.delivered(encoded);
        }
        Err(e) => {
            counters.failed.inc();
            warn_throttled(&format!("metrics export failed: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env_of;

    #[test]
    fn metrics_follow_the_generic_endpoint_unless_their_own_variables_say_otherwise() {
        let e = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        let c = metrics_config(None, None, &e).unwrap().unwrap();
        assert_eq!(c.otlp.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(
            (c.interval, c.temporality),
            (Duration::from_secs(60), Temporality::Cumulative)
        );
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
        ]);
        let c = metrics_config(None, None, &e).unwrap().unwrap();
        assert_eq!(c.otlp.endpoint, "http://m:4317");
        assert_eq!(c.otlp.protocol, super::super::Protocol::Grpc);
        assert_eq!(
            (c.interval, c.temporality),
            (Duration::from_millis(1500), Temporality::Delta)
        );
    }

    #[test]
    fn none_turns_metrics_export_off_and_nonsense_is_refused() {
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        assert_eq!(metrics_config(None, None, &e).unwrap(), None);
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "sometimes",
            ),
        ]);
        let err = metrics_config(None, None, &e).unwrap_err().to_string();
        assert!(err.contains("cumulative, delta or lowmemory"), "{err}");
        let e = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "x"),
            ("OTEL_METRICS_EXPORTER", "zipkin"),
        ]);
        assert!(metrics_config(None, None, &e).is_err());
        assert_eq!(metrics_config(None, None, &env_of(&[])).unwrap(), None);
    }
}
