//! The `tracer` subcommands behind the argument parsing in `main.rs`: [`run`] (the daemon),
//! [`replay`], [`plugins`] (`list` through the [`admin_client`], `check`).
pub mod admin_client;
pub mod plugins;
pub mod replay;
pub mod run;
pub mod top;

use std::{
    io::{ErrorKind, Write},
    net::SocketAddr,
    path::PathBuf,
};

use crate::{
    config::ConfigError,
    conntrack::{ConnTable, TableOptions},
    export::ExportError,
    metadata::k8s::PodCache,
    metrics::Registry,
    plugins::{PluginError, check::CheckError},
    probes::ProbeError,
    process::{Processes, parse_resource_attributes},
    span::Clock,
};

/// Why a subcommand failed. The subsystems' own errors pass through unchanged; the rest say
/// what the command was doing.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot attach the probes (`tracer check` says why)")]
    Attach(#[source] ProbeError),
    #[error("cannot listen on {addr} for the admin endpoint (--admin-addr; `off` disables it)")]
    AdminListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no tracer answers on {addr}: is it running, with this --admin-addr?")]
    AdminUnreachable {
        addr: String,
        source: reqwest::Error,
    },
    /// The daemon understood and said no (nothing to roll back, no canary...).
    #[error("{message}")]
    AdminRefused { message: String },
    #[error("unexpected answer from {addr}: {status}")]
    AdminAnswer {
        addr: String,
        status: reqwest::StatusCode,
        /// Set when a 200 answer is not the JSON expected.
        source: Option<serde_json::Error>,
    },
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A write to stdout, where a reader that went away (`tracer plugins check ... | head`) is
/// no failure: the output just ends there, quietly.
fn stdout_ok(written: std::io::Result<()>) -> Result<(), CliError> {
    match written {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(CliError::Stdout),
    }
}

/// Prints `text` on stdout (see [`stdout_ok`]).
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    stdout_ok(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// The processes of this host from /proc, with the daemon's OTEL_RESOURCE_ATTRIBUTES.
fn processes() -> Processes {
    let extra = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .map(|s| parse_resource_attributes(&s))
        .unwrap_or_default();
    Processes::new("/proc", extra)
}

/// The connection table of this host: its [`processes`], with pod metadata when there is a
/// pod cache.
fn conn_table(opts: TableOptions, pods: Option<PodCache>, reg: &Registry) -> ConnTable {
    let mut procs = processes();
    if let Some(p) = pods {
        procs = procs.with_pods(p);
    }
    ConnTable::new(procs, "/proc", Clock::now(), opts, reg)
}
