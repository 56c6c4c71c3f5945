//! `tracer`: request traces for services nobody has to touch.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::sync::{mpsc, oneshot};
use tracer_user::{
    admin::{self, ReloadRequest},
    check,
    config::{self, RunOptions},
    conntrack::{ConnTable, TableOptions},
    export::{self, BatchConfig, Exporters, Format, OtlpClient, Printer, Sink},
    metadata::k8s::{self, PodCache},
    metrics::Metrics,
    pipeline::{self, Live, Recorder},
    plugins::{self, PluginHost},
    probes::{Probes, ensure_tracefs},
    process::{Processes, parse_resource_attributes},
    reload::Reloader,
    span::Clock,
};

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "eBPF tracer: OpenTelemetry spans for the HTTP traffic of unmodified programs",
    long_about = "Watches socket syscalls with eBPF tracepoints, decodes HTTP/1.x and HTTP/2 (h2c, gRPC) and turns each request into an \
                  OpenTelemetry span. Spans are printed on the terminal unless an OTLP endpoint is set \
                  (--otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT). Needs root (CAP_BPF + CAP_PERFMON)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter for the daemon's own messages (stderr), e.g. `info`, `debug`, `tracer_user=trace`.
    #[arg(long, global = true, env = "TRACER_LOG", default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the probes and trace until Ctrl-C or SIGTERM. SIGHUP re-reads --config.
    Run(Box<RunCmd>),
    /// Check that this host can run the tracer, and say what to fix if not.
    Check,
    /// Decode a recording made with `run --record` and print its spans (no root needed).
    Replay(ReplayCmd),
    /// WebAssembly plugins: what a running tracer has loaded, or check a file before deploying it.
    #[command(subcommand)]
    Plugins(PluginsCmd),
}

#[derive(Subcommand)]
enum PluginsCmd {
    /// Show the running tracer's plugin chain, per-plugin counters and refused files
    /// (asks its admin endpoint: GET /plugins).
    List {
        /// The running tracer's --admin-addr.
        #[arg(long, value_name = "HOST:PORT", default_value = config::DEFAULT_ADMIN_ADDR)]
        admin_addr: String,
        /// Print the endpoint's JSON as is.
        #[arg(long)]
        json: bool,
    },
    /// Validate a plugin (contract, config, self-test) and show what it does to sample spans.
    /// Needs no daemon and no root.
    Check {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Its config (the .toml that would sit beside it in the plugin directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunCmd {
    /// Settings file (YAML or TOML) with the same names as these flags, e.g. `port: [8080]`.
    /// Flags given on the command line win. SIGHUP or POST /reload re-reads it; an invalid
    /// file is rejected with the reason and the running settings stay.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    opts: RunOptions,
}

#[derive(Args)]
struct ReplayCmd {
    /// The recording.
    file: PathBuf,
    /// `text` (one readable line per span) or `json` (JSON lines).
    #[arg(long, value_enum)]
    output: Option<Format>,
    /// Keep query-string values (by default each value reads REDACTED).
    #[arg(long)]
    keep_query_values: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check => {
            if !check::report(&check::run_checks()) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Replay(cmd) => replay(cmd),
        Command::Plugins(PluginsCmd::List { admin_addr, json }) => plugins_list(&admin_addr, json),
        Command::Plugins(PluginsCmd::Check { file, config }) => {
            plugins_check(&file, config.as_deref())
        }
        Command::Run(cmd) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(*cmd)),
    }
}

fn table(opts: TableOptions, pods: Option<PodCache>, metrics: Arc<Metrics>) -> ConnTable {
    let extra = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .map(|s| parse_resource_attributes(&s))
        .unwrap_or_default();
    let mut procs = Processes::new("/proc", extra);
    if let Some(p) = pods {
        procs = procs.with_pods(p);
    }
    ConnTable::new(procs, "/proc", Clock::now(), opts, metrics)
}

/// In Kubernetes (NODE_NAME set by the DaemonSet), watches this node's pods; elsewhere nothing.
async fn pod_cache(labels: &[String]) -> Option<PodCache> {
    let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())?;
    match k8s::client_from_environment().await {
        Ok(Some(client)) => {
            tracing::info!("watching the pods of node {node} for k8s.* attributes");
            Some(PodCache::spawn(client, node, labels.to_vec(), 20_000))
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

fn replay(cmd: ReplayCmd) -> anyhow::Result<()> {
    let f = std::fs::File::open(&cmd.file)
        .with_context(|| format!("cannot open {}", cmd.file.display()))?;
    let (records, truncated) = pipeline::read_recording(f)?;
    if truncated {
        tracing::warn!(
            "{} ends with a partial record (cut short while recording): ignored it",
            cmd.file.display()
        );
    }
    let metrics = Arc::new(Metrics::default());
    let opts = RunOptions {
        keep_query_values: cmd.keep_query_values,
        ..Default::default()
    };
    let mut t = table(opts.table_options(), None, metrics.clone());
    let spans = pipeline::replay(&records, &mut t, &metrics);
    let mut p = Printer {
        format: cmd.output.unwrap_or(Format::Text),
        out: Box::new(std::io::stdout()),
    };
    p.write(&spans)?;
    tracing::info!("counters: {}", metrics.summary());
    Ok(())
}

fn plugins_list(addr: &str, raw: bool) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).with_context(|| {
        format!("no tracer answers on {addr}: is it running, with this --admin-addr?")
    })?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        sock,
        "GET /plugins HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    sock.read_to_string(&mut resp)?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if raw {
        print!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(body).with_context(|| {
        format!(
            "unexpected answer from {addr}: {}",
            resp.lines().next().unwrap_or("")
        )
    })?;
    let dir = v["directory"].as_str().unwrap_or("(plugins off)");
    println!("plugin directory: {dir}");
    println!(
        "chain v{}: {}",
        v["chain"]["version"],
        v["chain"]["label"]
            .as_str()
            .filter(|l| !l.is_empty())
            .unwrap_or("(empty: spans pass unchanged)")
    );
    let empty = Vec::new();
    let plugins = v["plugins"].as_array().unwrap_or(&empty);
    if !plugins.is_empty() {
        println!(
            "{:<24} {:<12} {:>9} {:>10} {:>9} {:>9} {:>8} {:>9}",
            "PLUGIN", "HASH", "CALLS", "SPANS IN", "DROPPED", "EDITED", "FAILED", "TIME"
        );
    }
    for p in plugins {
        let c = &p["counters"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let failed = n("traps_total")
            + n("timeouts_total")
            + n("memory_exceeded_total")
            + n("invalid_results_total");
        println!(
            "{:<24} {:<12} {:>9} {:>10} {:>9} {:>9} {:>8} {:>8.3}s",
            p["name"].as_str().unwrap_or("?"),
            p["hash"].as_str().unwrap_or("?"),
            n("calls_total"),
            n("spans_in_total"),
            n("spans_dropped_total"),
            n("spans_edited_total"),
            failed,
            p["call_seconds"].as_f64().unwrap_or(0.0),
        );
        if let Some(e) = p["last_error"].as_str() {
            println!("    last error: {e}");
        }
    }
    for p in v["not_running"].as_array().unwrap_or(&empty) {
        println!(
            "{} is {}: {}",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?").to_uppercase(),
            p["error"].as_str().unwrap_or("")
        );
    }
    println!(
        "reloads: {}, refused files: {}",
        v["reloads"], v["reload_failures"]
    );
    Ok(())
}

fn plugins_check(file: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let report = plugins::check::check(file, config)?;
    print!("{report}");
    if report.verdict.is_err() {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(cmd: RunCmd) -> anyhow::Result<()> {
    let opts = config::effective(cmd.config.as_deref(), &cmd.opts)?;
    let env = |k: &str| std::env::var(k).ok();
    let otlp = export::otlp_config(
        opts.otlp_endpoint.as_deref(),
        opts.otlp_protocol.as_deref(),
        &env,
    )?;
    let batch = BatchConfig {
        max_queue_bytes: opts.export_queue_bytes(),
        ..BatchConfig::from_env(&env)?
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
    let metrics = Arc::new(Metrics::default());
    let plugins = Arc::new(PluginHost::new(opts.plugins())?);
    if let Some(dir) = &plugins.settings.dir {
        if dir.is_dir() {
            plugins::reload(plugins.clone()).await;
        } else {
            tracing::info!(
                "no plugin directory at {} (--plugins-dir): every span is exported; a plugin dropped there later is loaded",
                dir.display()
            );
        }
        tokio::spawn(plugins::watch(plugins.clone(), plugins::WATCH_INTERVAL));
    }
    let (reload_tx, reload_rx) = mpsc::channel(4);
    if let Some(addr) = opts.admin_addr()? {
        let listener = admin::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} for the admin endpoint (--admin-addr; `off` disables it)"
            )
        })?;
        tracing::info!(
            "admin endpoint on http://{addr} (/healthz /readyz /metrics /plugins, POST /reload)"
        );
        tokio::spawn(admin::serve(
            listener,
            metrics.clone(),
            plugins.clone(),
            reload_tx.clone(),
        ));
    }

    if ensure_tracefs()? {
        tracing::info!(
            "tracefs was not mounted: mounted it at {}",
            tracer_user::probes::TRACEFS
        );
    }
    let probe_opts = opts.probe_options();
    let mut probes = Probes::attach_inert(&probe_opts)
        .context("cannot attach the probes (`tracer check` says why)")?;
    let ring = probes.take_ring()?;
    // Attached but inert: every connection is either in this snapshot or seen from its start
    // once the probes are configured.
    let snapshot = tracer_user::process::socket_snapshot(std::path::Path::new("/proc"));
    let seeded = probes.seed_preexisting(&snapshot)?;
    probes.configure(&probe_opts)?;
    tracing::info!("kernel hooks: {}", probes.hooks().describe());
    tracing::debug!(
        "{} TCP sockets were open when the probes attached ({seeded} handed to the probes)",
        snapshot.len()
    );
    tracing::info!(
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
    );

    let recorder = match &opts.record {
        Some(p) => Some(Recorder(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )))),
        None => None,
    };
    let exporters = Exporters::spawn(sinks, batch, metrics.clone());
    let mut t = table(
        opts.table_options(),
        pod_cache(&opts.k8s_label).await,
        metrics.clone(),
    );
    t.set_preexisting(snapshot);
    let stats_every = opts
        .stats_interval
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    spawn_signal_handlers(metrics.clone(), reload_tx)?;
    let (control_tx, control_rx) = mpsc::channel(1);
    let reloader = Reloader {
        config: cmd.config,
        flags: cmd.opts,
        current: opts,
        control: control_tx,
        plugins: plugins.clone(),
        metrics: metrics.clone(),
    };
    tokio::spawn(reloader.run(reload_rx));
    let live = Live {
        probes,
        ring,
        control: control_rx,
        recorder,
        stats_every,
    };
    pipeline::run(
        live,
        t,
        plugins.clone(),
        exporters.submitter(),
        metrics.clone(),
        shutdown_signal(),
    )
    .await?;
    tracing::info!("detached; flushing spans");
    exporters.shutdown(Duration::from_secs(10)).await;
    tracing::info!("counters: {}", metrics.summary());
    Ok(())
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
    metrics: Arc<Metrics>,
    reload: mpsc::Sender<ReloadRequest>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = usr1.recv() => tracing::info!("counters: {}", metrics.summary()),
                Some(()) = hup.recv() => {
                    // The outcome is logged by the reload loop.
                    let (tx, _rx) = oneshot::channel();
                    let _ = reload.send(tx).await;
                }
                else => break,
            }
        }
    });
    Ok(())
}
