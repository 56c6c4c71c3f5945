//! `tracer`: request traces for services nobody has to touch.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tracer_user::{
    check,
    conntrack::{ConnTable, TableOptions},
    export::{self, BatchConfig, Exporters, Format, OtlpClient, Printer, Sink},
    metrics::Metrics,
    pipeline::{self, Live, Recorder},
    probes::{ProbeOptions, Probes, ensure_tracefs},
    process::{Processes, parse_resource_attributes},
    span::{Clock, SpanOptions},
};

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "eBPF tracer: OpenTelemetry spans for the HTTP traffic of unmodified programs",
    long_about = "Watches socket syscalls with eBPF tracepoints, decodes HTTP/1.x and turns each request into an \
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
    /// Attach the probes and trace until Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// Check that this host can run the tracer, and say what to fix if not.
    Check,
    /// Decode a recording made with `run --record` and print its spans (no root needed).
    Replay {
        /// The recording.
        file: PathBuf,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Args)]
struct OutputArgs {
    /// How spans are printed on stdout: `text` (one readable line per span) or `json` (JSON lines).
    /// Printing is the default when no OTLP endpoint is set; with one, --output prints as well.
    #[arg(long, value_enum)]
    output: Option<Format>,
    /// Keep query-string values in url.query/url.full (by default each value reads REDACTED).
    #[arg(long)]
    keep_query_values: bool,
    /// Also trace OTLP trace exports (POST .../v1/traces) that a traced collector receives.
    /// Off by default: each exported batch would otherwise cause another span, forever.
    #[arg(long)]
    trace_otlp_exports: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Trace only these processes (repeatable). Default: every process on the host.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace only spans whose server port or peer port is one of these (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Trace only processes with this command name (as in /proc/PID/comm, at most 15 characters).
    #[arg(long)]
    comm: Option<String>,
    /// Payload bytes copied per syscall: enough for the request line and headers.
    /// Bodies are never needed (framing uses byte counts). 64 to 8192.
    #[arg(long, default_value_t = tracer_common::DEFAULT_CAPTURE, value_parser = clap::value_parser!(u32).range(64..=8192))]
    capture_size: u32,
    /// Kernel ring-buffer size in MiB (a power of two). Larger absorbs longer bursts.
    #[arg(long, default_value_t = 16)]
    ring_buffer_mib: u32,
    /// OTLP endpoint (base URL like OTEL_EXPORTER_OTLP_ENDPOINT: HTTP adds /v1/traces).
    /// Overrides OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP protocol: `grpc` or `http/protobuf` (default, as in the OTel specification).
    /// Overrides OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
    /// Also write every raw kernel record to this file (for bug reports and test fixtures).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Log the counters every N seconds (0: only at exit and on SIGUSR1).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    stats_interval: u64,
    #[command(flatten)]
    out: OutputArgs,
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
        Command::Replay { file, out } => replay(file, out),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(args)),
    }
}

fn table(out: &OutputArgs, ports: Vec<u16>, metrics: Arc<Metrics>) -> ConnTable {
    let extra = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .map(|s| parse_resource_attributes(&s))
        .unwrap_or_default();
    let opts = TableOptions {
        spans: SpanOptions {
            keep_query_values: out.keep_query_values,
        },
        ports,
        trace_otlp_exports: out.trace_otlp_exports,
    };
    ConnTable::new(
        Processes::new("/proc", extra),
        "/proc",
        Clock::now(),
        opts,
        metrics,
    )
}

fn replay(file: PathBuf, out: OutputArgs) -> anyhow::Result<()> {
    let f =
        std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let (records, truncated) = pipeline::read_recording(f)?;
    if truncated {
        tracing::warn!(
            "{} ends with a partial record (cut short while recording): ignored it",
            file.display()
        );
    }
    let metrics = Arc::new(Metrics::default());
    let mut t = table(&out, vec![], metrics.clone());
    let spans = pipeline::replay(&records, &mut t, &metrics);
    let mut p = Printer {
        format: out.output.unwrap_or(Format::Text),
        out: Box::new(std::io::stdout()),
    };
    p.write(&spans)?;
    tracing::info!("counters: {}", metrics.summary());
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let otlp = export::otlp_config(
        args.otlp_endpoint.as_deref(),
        args.otlp_protocol.as_deref(),
        &env,
    )?;
    let batch = BatchConfig::from_env(&env)?;
    let mut sinks = Vec::new();
    if otlp.is_none() || args.out.output.is_some() {
        sinks.push(Sink::Print(Printer {
            format: args.out.output.unwrap_or(Format::Text),
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
    if !args.ring_buffer_mib.is_power_of_two() {
        bail!(
            "--ring-buffer-mib must be a power of two (got {})",
            args.ring_buffer_mib
        );
    }

    if ensure_tracefs()? {
        tracing::info!(
            "tracefs was not mounted: mounted it at {}",
            tracer_user::probes::TRACEFS
        );
    }
    let probe_opts = ProbeOptions {
        capture_size: args.capture_size,
        pids: args.pids.clone(),
        comm: args.comm.clone(),
        ring_bytes: args.ring_buffer_mib * 1024 * 1024,
        ..Default::default()
    };
    let mut probes = Probes::attach(&probe_opts)
        .context("cannot attach the probes (`tracer check` says why)")?;
    let ring = probes.take_ring()?;
    // After attaching: every connection is either in this snapshot or seen being set up.
    let snapshot = tracer_user::process::socket_snapshot(std::path::Path::new("/proc"));
    tracing::debug!(
        "{} TCP sockets were open when the probes attached",
        snapshot.len()
    );
    tracing::info!(
        "tracing HTTP/1.x (capture {} bytes per syscall{}{}{})",
        args.capture_size,
        if args.pids.is_empty() {
            String::new()
        } else {
            format!(", pids {:?}", args.pids)
        },
        args.comm
            .as_ref()
            .map(|c| format!(", comm {c}"))
            .unwrap_or_default(),
        if args.ports.is_empty() {
            String::new()
        } else {
            format!(", ports {:?}", args.ports)
        },
    );

    let metrics = Arc::new(Metrics::default());
    let recorder = match &args.record {
        Some(p) => Some(Recorder(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )))),
        None => None,
    };
    let exporters = Exporters::spawn(sinks, batch, metrics.clone());
    let mut t = table(&args.out, args.ports.clone(), metrics.clone());
    t.set_preexisting(snapshot);
    let stats_every = (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval));
    spawn_usr1_summary(metrics.clone())?;
    pipeline::run(
        Live { probes, ring },
        t,
        &exporters,
        metrics.clone(),
        recorder,
        stats_every,
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

/// `kill -USR1 <pid>` logs the counters without stopping anything.
fn spawn_usr1_summary(metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            tracing::info!("counters: {}", metrics.summary());
        }
    });
    Ok(())
}
