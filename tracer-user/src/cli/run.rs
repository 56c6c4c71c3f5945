//! `tracer run`: the daemon. Starts the exporters, the plugin host and the admin endpoint,
//! attaches the probes, then runs the pipeline until SIGINT or SIGTERM and flushes what is
//! left. SIGHUP and `POST /reload` go to the [`Reloader`]; SIGUSR1 logs the counters.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{CliError, conn_table, processes};
use crate::{
    admin::{self, ReloadRequest},
    changes::Trigger,
    config::{self, RunOptions},
    export::{
        self, BatchConfig, Env, Exporters, Format, OtlpClient, Printer, Sink,
        metrics::MetricsExporter,
    },
    metadata::k8s::{self, PodCache},
    metrics::{Health, Registry},
    pipeline::{self, Downstream, Live, Recorder, reader::ReaderMetrics},
    plugins::{self, PluginHost},
    probes::{self, Probes},
    process,
    reload::{self, ReloadMetrics, Reloader},
    spanmetrics::SpanMetrics,
    tls,
};

/// How long the exporters get at exit to deliver what is queued.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// Pods the cache holds at most (one node's worth, with room to spare).
const MAX_PODS: usize = 20_000;

/// Runs the daemon with `flags` over the settings in the `config` file.
pub async fn run(config: Option<PathBuf>, flags: RunOptions) -> Result<(), CliError> {
    let opts = config::effective(config.as_deref(), &flags)?;
    let env = |k: &str| std::env::var(k).ok();
    let (sinks, batch) = sinks(&opts, &env)?;
    // `tracer run | head`: once the reader is gone, a daemon that only prints is done.
    let only_prints = sinks.iter().all(|s| matches!(s, Sink::Print(_)));
    let registry = Registry::default();
    let health = Arc::new(Health::new(&registry));
    let plugins = Arc::new(PluginHost::new(opts.plugins(), &registry)?);
    plugins
        .export_unsampled
        .store(opts.export_unsampled, std::sync::atomic::Ordering::Relaxed);
    // Whatever counts is built before the admin endpoint answers: /metrics has every metric
    // from its first scrape, while the probes are still attaching.
    let exporters = Exporters::spawn(sinks, batch, &registry, health.clone());
    // Reloads are spans of the tracer's own service, beside the spans they change.
    let own = processes().resource(std::process::id(), "tracer");
    plugins
        .changes
        .export_to(exporters.submitter(), own.clone());
    let requests = Arc::new(SpanMetrics::new(opts.metrics_series_limit(), &registry));
    let metrics_export = match export::metrics::metrics_config(
        opts.otlp_endpoint.as_deref(),
        opts.otlp_protocol.as_deref(),
        &env,
    )? {
        Some(cfg) => {
            tracing::info!(
                "exporting request metrics over OTLP ({:?}, {:?}) to {} every {:?}",
                cfg.otlp.protocol,
                cfg.temporality,
                cfg.otlp.endpoint,
                cfg.interval
            );
            Some(MetricsExporter::spawn(
                &cfg,
                requests.clone(),
                &own.attributes,
                &registry,
            )?)
        }
        None => None,
    };
    plugins
        .changes
        .set_effective(reload::effective(&opts, &opts, config.as_deref()));
    start_plugins(&plugins).await;
    let mut t = conn_table(
        opts.table_options(),
        pod_cache(&opts.k8s_label).await,
        &registry,
    );
    let reader_metrics = ReaderMetrics::new(&registry);
    let reload_metrics = ReloadMetrics::new(&registry);
    let tls_metrics = tls::TlsMetrics::new(&registry);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    if let Some(addr) = opts.admin_addr()? {
        let listener = admin::bind(addr)
            .await
            .map_err(|source| CliError::AdminListen { addr, source })?;
        tracing::info!(
            "admin endpoint on http://{addr} (/healthz /readyz /metrics /plugins, POST /reload)"
        );
        tokio::spawn(admin::serve(
            listener,
            admin::State {
                registry: registry.clone(),
                health: health.clone(),
                plugins: plugins.clone(),
                requests: requests.clone(),
                reload: reload_tx.clone(),
                token: opts
                    .admin_token_file
                    .as_deref()
                    .and_then(admin::Token::read),
            },
        ));
    }

    if probes::ensure_tracefs()? {
        tracing::info!("tracefs was not mounted: mounted it at {}", probes::TRACEFS);
    }
    let probe_opts = opts.probe_options();
    let mut probes = Probes::attach_inert(&probe_opts).map_err(CliError::Attach)?;
    let ring = probes.take_ring("EVENTS")?;
    let code_ring = probes.take_ring("CODE_EVENTS")?;
    // Attached but inert: every connection is either in this snapshot or seen from its start
    // once the probes are configured.
    let snapshot = process::socket_snapshot(std::path::Path::new("/proc"));
    let seeded = probes.seed_preexisting(&snapshot)?;
    probes.configure(&probe_opts)?;
    tracing::info!("kernel hooks: {}", probes.hooks().describe());
    let tls_ready = probes.tls().is_ok();
    let probes = Arc::new(Mutex::new(probes));
    if tls_ready {
        tls::Tracker::new(Arc::downgrade(&probes), "/proc".into(), tls_metrics)
            .spawn(code_ring)
            .map_err(CliError::Io)?;
    }
    tracing::debug!(
        "{} TCP sockets were open when the probes attached ({seeded} handed to the probes)",
        snapshot.len()
    );
    tracing::info!("{}", what_is_traced(&opts));
    let stdout_closed = exporters.stdout_closed();

    let recorder = match &opts.record {
        Some(p) => Some(Recorder(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|source| CliError::Create {
                path: p.clone(),
                source,
            })?,
        )))),
        None => None,
    };
    t.set_preexisting(snapshot);
    let stats_every = opts
        .stats_interval
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    spawn_signal_handlers(registry.clone(), reload_tx)?;
    let (control_tx, control_rx) = mpsc::channel(1);
    let reloader = Reloader {
        config,
        flags,
        started: opts.clone(),
        current: opts,
        control: control_tx,
        plugins: plugins.clone(),
        metrics: reload_metrics,
    };
    tokio::spawn(reloader.run(reload_rx));
    let live = Live {
        probes,
        ring,
        control: control_rx,
        recorder,
        stats_every,
        metrics: reader_metrics,
    };
    pipeline::run(
        live,
        t,
        Downstream {
            plugins,
            requests,
            export: exporters.submitter(),
        },
        registry.clone(),
        health,
        async {
            tokio::select! {
                () = shutdown_signal() => {}
                () = stdout_closed, if only_prints => {}
            }
        },
    )
    .await?;
    tracing::info!("detached; flushing spans");
    exporters.shutdown(SHUTDOWN_DEADLINE).await;
    if let Some(m) = metrics_export {
        m.shutdown(SHUTDOWN_DEADLINE).await;
    }
    tracing::info!("counters: {}", registry.summary());
    Ok(())
}

/// Where spans go: the terminal unless an OTLP endpoint is set (both with `--output`), and
/// the queues' settings. Must be called inside a tokio runtime (the gRPC channel).
fn sinks(opts: &RunOptions, env: Env) -> Result<(Vec<Sink>, BatchConfig), CliError> {
    let otlp = export::otlp_config(
        opts.otlp_endpoint.as_deref(),
        opts.otlp_protocol.as_deref(),
        env,
    )?;
    let batch = BatchConfig {
        max_queue_bytes: opts.export_queue_bytes(),
        ..BatchConfig::from_env(env)?
    };
    let mut sinks = Vec::new();
    if otlp.is_none() || opts.output.is_some() {
        sinks.push(Sink::Print(Printer {
            format: opts.output.unwrap_or(Format::Text),
            out: Box::new(std::io::stdout()),
        }));
    }
    if let Some(cfg) = &otlp {
        tracing::info!(
            "exporting spans over OTLP ({:?}) to {}",
            cfg.protocol,
            cfg.endpoint
        );
        sinks.push(Sink::Otlp(OtlpClient::new(cfg)?));
    }
    Ok((sinks, batch))
}

/// Loads the plugin directory (when it exists) and watches it.
async fn start_plugins(plugins: &Arc<PluginHost>) {
    if let Some(dir) = &plugins.settings.dir {
        if dir.is_dir() {
            plugins::reload(plugins.clone(), Some(Trigger::start)).await;
        } else {
            tracing::info!(
                "no plugin directory at {} (--plugins-dir): every span is exported; a plugin dropped there later is loaded",
                dir.display()
            );
        }
        tokio::spawn(plugins::watch(plugins.clone(), plugins::WATCH_INTERVAL));
    }
}

/// The start-up line that says what is traced.
fn what_is_traced(opts: &RunOptions) -> String {
    format!(
        "tracing HTTP/1.x and HTTP/2 (capture {} bytes per syscall{}{}{})",
        opts.capture_size(),
        if opts.pid.is_empty() {
            String::new()
        } else {
            format!(", pids {:?}", opts.pid)
        },
        opts.comm
            .as_ref()
            .map(|c| format!(", comm {c}"))
            .unwrap_or_default(),
        if opts.port.is_empty() {
            String::new()
        } else {
            format!(", ports {:?}", opts.port)
        },
    )
}

/// In Kubernetes (NODE_NAME set by the DaemonSet), watches this node's pods; elsewhere nothing.
async fn pod_cache(labels: &[String]) -> Option<PodCache> {
    let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())?;
    match k8s::client_from_environment().await {
        Ok(Some(client)) => {
            tracing::info!("watching the pods of node {node} for k8s.* attributes");
            Some(PodCache::spawn(client, node, labels.to_vec(), MAX_PODS))
        }
        Ok(None) => {
            tracing::warn!(
                "NODE_NAME={node} but no in-cluster service account or kubeconfig: spans get no pod metadata"
            );
            None
        }
        Err(e) => {
            tracing::warn!("cannot reach the Kubernetes API ({e}): spans get no pod metadata");
            None
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `kill -USR1` logs the counters; `kill -HUP` re-reads the config file.
fn spawn_signal_handlers(
    registry: Registry,
    reload: mpsc::Sender<ReloadRequest>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = usr1.recv() => tracing::info!("counters: {}", registry.summary()),
                Some(()) = hup.recv() => {
                    // The outcome is logged by the reload loop.
                    let (reply, _rx) = oneshot::channel();
                    let req = ReloadRequest { trigger: Trigger::sighup, reply };
                    let _ = reload.send(req).await;
                }
                else => break,
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env_of;

    #[tokio::test]
    async fn spans_are_printed_unless_exported_and_with_output_both() {
        let kinds = |opts: &RunOptions, env: &dyn Fn(&str) -> Option<String>| {
            let (sinks, _) = sinks(opts, env).unwrap();
            sinks
                .iter()
                .map(|s| match s {
                    Sink::Print(_) => "print",
                    Sink::Otlp(_) => "otlp",
                })
                .collect::<Vec<_>>()
        };
        let none = env_of(&[]);
        let otlp = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        let plain = RunOptions::default();
        let output = RunOptions {
            output: Some(Format::Json),
            ..Default::default()
        };
        assert_eq!(kinds(&plain, &none), ["print"]);
        assert_eq!(kinds(&plain, &otlp), ["otlp"]);
        assert_eq!(kinds(&output, &otlp), ["print", "otlp"]);
        let queue = RunOptions {
            export_queue_mib: Some(8),
            ..Default::default()
        };
        assert_eq!(sinks(&queue, &none).unwrap().1.max_queue_bytes, 8 << 20);
        let bad = env_of(&[("OTEL_BSP_SCHEDULE_DELAY", "soon")]);
        assert!(matches!(
            sinks(&plain, &bad),
            Err(CliError::Export(export::ExportError::Millis { .. }))
        ));
    }

    #[test]
    fn the_start_line_names_the_filters() {
        assert_eq!(
            what_is_traced(&RunOptions::default()),
            format!(
                "tracing HTTP/1.x and HTTP/2 (capture {} bytes per syscall)",
                tracer_common::DEFAULT_CAPTURE
            )
        );
        let o = RunOptions {
            pid: vec![1, 2],
            comm: Some("nginx".into()),
            port: vec![80],
            capture_size: Some(512),
            ..Default::default()
        };
        assert_eq!(
            what_is_traced(&o),
            "tracing HTTP/1.x and HTTP/2 (capture 512 bytes per syscall, pids [1, 2], comm nginx, ports [80])"
        );
    }
}
