//! `tracer`: request traces for services nobody has to touch. This file parses the command
//! line; the subcommands are in the library (`tracer_user::cli`).
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracer_user::{
    check, cli,
    config::{self, RunOptions},
    export::Format,
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
    /// Live view of the running tracer's requests: per service (or route) the rate, error
    /// share and p50/p99 of the last interval, hottest first (asks GET /requests).
    /// Keys: r shows or hides routes, q quits.
    Top {
        #[arg(long, value_name = "HOST:PORT", default_value = config::DEFAULT_ADMIN_ADDR)]
        admin_addr: String,
        /// Refresh every this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
        /// One line per route (http.route, or rpc.service/rpc.method) from the start.
        #[arg(long)]
        routes: bool,
        /// Print the table once (after one interval) as text, instead of the live view.
        #[arg(long)]
        once: bool,
    },
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
    /// Go back: stop NAME's canary if one runs, else return to the version NAME ran before
    /// (POST /plugins/NAME/rollback). The withdrawn file stays out until it changes.
    Rollback {
        /// The plugin, as its file is named without `.wasm` (e.g. `20-redactor`).
        name: String,
        #[arg(long, value_name = "HOST:PORT", default_value = config::DEFAULT_ADMIN_ADDR)]
        admin_addr: String,
    },
    /// Give NAME's canary all traffic: `NAME.canary.wasm` (and `.toml`) are renamed over
    /// `NAME.wasm`; the old version stays available to `rollback` (POST /plugins/NAME/promote).
    Promote {
        name: String,
        #[arg(long, value_name = "HOST:PORT", default_value = config::DEFAULT_ADMIN_ADDR)]
        admin_addr: String,
    },
    /// Validate a plugin (contract, config, self-test) and show what it does to sample spans.
    /// Needs no daemon and no root.
    Check {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Its config (the .toml that would sit beside it in the plugin directory). Without
        /// one, a plugin that needs a config says what; shipped plugins have a
        /// NAME.example.toml beside them.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Run it on these spans instead of the built-in samples: JSON lines as
        /// `tracer run --output json` prints them, one span per line.
        #[arg(long, value_name = "FILE")]
        spans: Option<PathBuf>,
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

/// `tracer plugins rollback|promote NAME`: the daemon's answer on stdout.
fn plugin_action(addr: &str, name: &str, action: &str) -> anyhow::Result<()> {
    let msg = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(cli::admin_client::post(
            addr,
            &format!("/plugins/{name}/{action}"),
        ))?;
    cli::print(&msg)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    match args.command {
        Command::Check => {
            if !check::report(&check::run_checks()) {
                std::process::exit(1);
            }
        }
        Command::Replay(cmd) => cli::replay::replay(
            &cmd.file,
            cmd.output.unwrap_or(Format::Text),
            cmd.keep_query_values,
            Box::new(std::io::stdout()),
        )?,
        Command::Plugins(PluginsCmd::List { admin_addr, json }) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cli::plugins::list(&admin_addr, json))?
        }
        Command::Plugins(PluginsCmd::Rollback { name, admin_addr }) => {
            plugin_action(&admin_addr, &name, "rollback")?
        }
        Command::Plugins(PluginsCmd::Promote { name, admin_addr }) => {
            plugin_action(&admin_addr, &name, "promote")?
        }
        Command::Plugins(PluginsCmd::Check {
            file,
            config,
            spans,
        }) => {
            if !cli::plugins::check(&file, config.as_deref(), spans.as_deref())? {
                std::process::exit(1);
            }
        }
        Command::Top {
            admin_addr,
            interval,
            routes,
            once,
        } => {
            anyhow::ensure!(
                interval.is_finite() && interval >= 0.1,
                "--interval must be at least 0.1 seconds"
            );
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cli::top::top(
                    &admin_addr,
                    std::time::Duration::from_secs_f64(interval),
                    routes,
                    once,
                ))?
        }
        Command::Run(cmd) => {
            let RunCmd { config, opts } = *cmd;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(cli::run::run(config, opts))?
        }
    }
    Ok(())
}
