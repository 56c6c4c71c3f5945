//! Run options: one struct that is both the `tracer run` flags and the `--config` file (YAML or
//! TOML, same names as the flags). Flags win over the file; SIGHUP re-reads the file and applies
//! what can change live.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::{Arg, Args, ValueEnum};
use serde::Deserialize;

use crate::{
    conntrack::TableOptions,
    export::Format,
    kernel_log::KernelLog,
    probes::{HookChoice, ProbeOptions},
    span::SpanOptions,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML for tracer: {msg}")]
    Yaml { path: PathBuf, msg: String },
    #[error("{path} is not valid TOML for tracer: {msg}")]
    Toml { path: PathBuf, msg: String },
    #[error("{path}: use a .yaml, .yml or .toml file")]
    Extension { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
}

pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";

/// Appends ` [default: VALUE]` to an option's help, as clap does for its own defaults.
fn default_in_help(arg: Arg, value: impl std::fmt::Display) -> Arg {
    let with = |h: &clap::builder::StyledStr| format!("{h} [default: {value}]");
    let long = arg.get_long_help().map(with);
    let arg = match arg.get_help().map(with) {
        Some(h) => arg.help(h),
        None => arg,
    };
    match long {
        Some(h) => arg.long_help(h),
        None => arg,
    }
}

/// How a value is spelled on the command line.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// Options of `tracer run`; every one can also be set in the `--config` file.
///
/// Unset options are `None` (not clap defaults), so that a flag left out does not override
/// the file; `--help` shows each default from the constant the code uses.
#[derive(Args, Deserialize, serde::Serialize, Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    mut_arg("capture_size", |a| default_in_help(a, tracer_common::DEFAULT_CAPTURE)),
    mut_arg("hooks", |a| default_in_help(a, value_name(HookChoice::default()))),
    mut_arg("kernel_log", |a| default_in_help(a, value_name(KernelLog::default()))),
    mut_arg("ring_buffer_mib", |a| default_in_help(a, crate::probes::DEFAULT_RING_MIB)),
    mut_arg("join_hold_ms", |a| default_in_help(a, crate::join::DEFAULT_HOLD_MS)),
    mut_arg("export_queue_mib", |a| default_in_help(a, crate::export::DEFAULT_QUEUE_MIB)),
    mut_arg("metrics_series_limit", |a| default_in_help(a, crate::spanmetrics::DEFAULT_SERIES_LIMIT)),
    mut_arg("admin_addr", |a| default_in_help(a, DEFAULT_ADMIN_ADDR)),
    mut_arg("plugins_dir", |a| default_in_help(a, crate::plugins::DEFAULT_DIR)),
    mut_arg("plugin_timeout_ms", |a| {
        default_in_help(a, crate::plugins::DEFAULT_CALL_TIMEOUT.as_millis())
    }),
    mut_arg("plugin_memory_mib", |a| default_in_help(a, crate::plugins::DEFAULT_MEMORY_MIB)),
)]
pub struct RunOptions {
    /// Trace only these processes (repeatable). Default: every process on the host.
    #[arg(long = "pid", value_name = "PID")]
    pub pid: Vec<u32>,
    /// Keep only spans whose server port or peer port is one of these (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub port: Vec<u16>,
    /// Trace only processes with this command name (as in /proc/PID/comm, at most 15 characters).
    #[arg(long)]
    pub comm: Option<String>,
    /// Payload bytes copied per syscall: enough for the request line and headers; bodies are
    /// never needed (framing uses byte counts). HTTP/2: frame headers and header blocks only,
    /// DATA payloads are skipped in the kernel. 64 to 8192
    #[arg(long, value_name = "BYTES")]
    pub capture_size: Option<u32>,
    /// Kernel hooks: `socket` (Linux 6.3+: only socket I/O runs a probe, other syscalls of the
    /// node pay nothing), `syscalls` (older kernels: every read/write of every process runs a
    /// probe), or `auto`, the socket hooks when the kernel has them
    #[arg(long, value_enum, value_name = "HOOKS", env = "TRACER_HOOKS")]
    pub hooks: Option<HookChoice>,
    /// Do not probe TLS libraries. By default every file with OpenSSL's API (libssl, node)
    /// gets uprobes on SSL_read/SSL_write, so HTTPS is traced from its plaintext
    #[arg(long)]
    pub no_tls: bool,
    /// Log the probes' own messages from this level up (aya-log): `debug` names every syscall
    /// or TLS call the probes could not follow, with its pid. `off` costs nothing
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub kernel_log: Option<KernelLog>,
    /// Write a W3C `traceparent` into outgoing HTTP/1 requests of traced processes that carry
    /// none, with the ids of the CLIENT span exported for them, so a tracer on the server's
    /// node continues the trace. Changes bytes on the wire, so off unless given. The value is
    /// a cgroup v2 directory whose processes (and its children's) are covered; `all`, or the
    /// flag alone, is the whole host. Requests that cannot be rewritten safely go unchanged
    #[arg(long, value_name = "CGROUP", num_args = 0..=1, default_missing_value = "all")]
    pub propagate: Option<String>,
    /// Kernel ring-buffer size in MiB, a power of two; larger absorbs longer bursts
    #[arg(long, value_name = "MIB")]
    pub ring_buffer_mib: Option<u32>,
    /// OTLP endpoint (a base URL like OTEL_EXPORTER_OTLP_ENDPOINT: HTTP adds /v1/traces).
    /// Overrides OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: `grpc` or `http/protobuf` (the OTel default). Overrides OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// How spans are printed on stdout: `text` (one line per span) or `json` (JSON lines).
    /// Printing is the default when no OTLP endpoint is set; with one, --output prints as well.
    #[arg(long, value_enum)]
    pub output: Option<Format>,
    /// Keep query-string values in url.query/url.full (by default each value reads REDACTED).
    #[arg(long)]
    pub keep_query_values: bool,
    /// Also trace the tracer's own OTLP exports (spans and metrics) that a traced collector
    /// receives, recognised by their sockets. Off by default: each exported batch would
    /// otherwise cause another span, forever. Other applications' exports are always traced.
    #[arg(long)]
    pub trace_own_exports: bool,
    /// How long a finished span may wait to be joined into its trace (its parent decided, the
    /// trace's first span on this node ended) before it is exported as it stands, in ms.
    /// Spans of one trace then leave together.
    #[arg(long, value_name = "MS")]
    pub join_hold_ms: Option<u64>,
    /// Export spans whose upstream trace context says "not sampled" (traceparent flags 00,
    /// b3 sampled 0). By default they are not exported (counted in spans_unsampled_total).
    #[arg(long)]
    pub export_unsampled: bool,
    /// Also write every raw kernel record to this file (for bug reports and test fixtures).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Memory for the spans waiting for export, in MiB per sink (OTLP, printer): past it new
    /// spans are dropped and counted (spans_dropped_total{reason="export_queue_full"}).
    /// OTEL_BSP_MAX_QUEUE_SIZE, when set, also caps the number of spans.
    #[arg(long, value_name = "MIB")]
    pub export_queue_mib: Option<u32>,
    /// Request metrics: the series (attribute sets) one service may hold over its duration
    /// histograms; past it, new attribute sets go to one series marked
    /// otel.metric.overflow=true (counted in span_metrics_overflowed_points_total).
    #[arg(long, value_name = "N")]
    pub metrics_series_limit: Option<usize>,
    /// Log the counters every N seconds (0: only at exit and on SIGUSR1) [default: 0]
    #[arg(long, value_name = "SECONDS")]
    pub stats_interval: Option<u64>,
    /// Admin HTTP endpoint (/healthz, /readyz, /metrics, POST /reload); `off` disables it.
    /// Binds to localhost by default: it is not meant to be reachable from the network.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_addr: Option<String>,
    /// A file holding a token (16 characters or more): a peer on the network that sends
    /// `Authorization: Bearer TOKEN` may then make the admin calls that change state (POST
    /// /reload, rollback, promote) and read /plugins and /config. Without it those answer this
    /// host only. Read at start.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// In Kubernetes: pod labels to add to spans as k8s.pod.label.<key> (repeatable).
    #[arg(long = "k8s-label", value_name = "KEY")]
    pub k8s_label: Vec<String>,
    /// WebAssembly plugins: `NN-name.wasm` files run in name order, `NN-name.toml` beside one
    /// is its config. Watched: adding, replacing or deleting a file swaps the chain live.
    /// `off` runs none.
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<String>,
    /// Deadline of one plugin call (a batch of up to 256 spans); past it the batch goes on
    /// unchanged and the timeout is counted.
    #[arg(long, value_name = "MS")]
    pub plugin_timeout_ms: Option<u64>,
    /// Memory cap of each plugin instance, in MiB.
    #[arg(long, value_name = "MIB")]
    pub plugin_memory_mib: Option<u64>,
    /// Drop a batch when a plugin fails on it (trap, timeout, bad result) instead of letting
    /// it through unchanged.
    #[arg(long)]
    pub plugins_fail_closed: bool,
    /// Load plugin files that users other than root can write (refused by default: the
    /// daemon is privileged).
    #[arg(long)]
    pub plugins_allow_writable: bool,
}

impl RunOptions {
    /// `self` (the flags) over `file`: a flag given on the command line wins; lists from the
    /// command line replace the file's; switches are on if either turns them on.
    pub fn over(self, file: RunOptions) -> RunOptions {
        fn list<T>(cli: Vec<T>, file: Vec<T>) -> Vec<T> {
            if cli.is_empty() { file } else { cli }
        }
        // No `..`: a new option does not compile until it is merged here.
        let RunOptions {
            pid,
            port,
            comm,
            capture_size,
            hooks,
            no_tls,
            kernel_log,
            propagate,
            ring_buffer_mib,
            otlp_endpoint,
            otlp_protocol,
            output,
            keep_query_values,
            trace_own_exports,
            join_hold_ms,
            export_unsampled,
            record,
            export_queue_mib,
            metrics_series_limit,
            stats_interval,
            admin_addr,
            admin_token_file,
            k8s_label,
            plugins_dir,
            plugin_timeout_ms,
            plugin_memory_mib,
            plugins_fail_closed,
            plugins_allow_writable,
        } = self;
        RunOptions {
            pid: list(pid, file.pid),
            port: list(port, file.port),
            comm: comm.or(file.comm),
            capture_size: capture_size.or(file.capture_size),
            hooks: hooks.or(file.hooks),
            no_tls: no_tls || file.no_tls,
            kernel_log: kernel_log.or(file.kernel_log),
            propagate: propagate.or(file.propagate),
            ring_buffer_mib: ring_buffer_mib.or(file.ring_buffer_mib),
            otlp_endpoint: otlp_endpoint.or(file.otlp_endpoint),
            otlp_protocol: otlp_protocol.or(file.otlp_protocol),
            output: output.or(file.output),
            keep_query_values: keep_query_values || file.keep_query_values,
            trace_own_exports: trace_own_exports || file.trace_own_exports,
            join_hold_ms: join_hold_ms.or(file.join_hold_ms),
            export_unsampled: export_unsampled || file.export_unsampled,
            record: record.or(file.record),
            export_queue_mib: export_queue_mib.or(file.export_queue_mib),
            metrics_series_limit: metrics_series_limit.or(file.metrics_series_limit),
            stats_interval: stats_interval.or(file.stats_interval),
            admin_addr: admin_addr.or(file.admin_addr),
            admin_token_file: admin_token_file.or(file.admin_token_file),
            k8s_label: list(k8s_label, file.k8s_label),
            plugins_dir: plugins_dir.or(file.plugins_dir),
            plugin_timeout_ms: plugin_timeout_ms.or(file.plugin_timeout_ms),
            plugin_memory_mib: plugin_memory_mib.or(file.plugin_memory_mib),
            plugins_fail_closed: plugins_fail_closed || file.plugins_fail_closed,
            plugins_allow_writable: plugins_allow_writable || file.plugins_allow_writable,
        }
    }

    pub fn capture_size(&self) -> u32 {
        self.capture_size.unwrap_or(tracer_common::DEFAULT_CAPTURE)
    }

    pub fn ring_buffer_mib(&self) -> u32 {
        self.ring_buffer_mib
            .unwrap_or(crate::probes::DEFAULT_RING_MIB)
    }

    pub fn join(&self) -> crate::join::JoinOptions {
        crate::join::JoinOptions {
            hold_ns: self
                .join_hold_ms
                .unwrap_or(crate::join::DEFAULT_HOLD_MS)
                .saturating_mul(1_000_000),
        }
    }

    pub fn export_queue_bytes(&self) -> usize {
        (self
            .export_queue_mib
            .unwrap_or(crate::export::DEFAULT_QUEUE_MIB) as usize)
            << 20
    }

    pub fn metrics_series_limit(&self) -> usize {
        self.metrics_series_limit
            .unwrap_or(crate::spanmetrics::DEFAULT_SERIES_LIMIT)
    }

    /// The plugin settings; no directory when plugins are switched off.
    pub fn plugins(&self) -> crate::plugins::Settings {
        let dir = match self
            .plugins_dir
            .as_deref()
            .unwrap_or(crate::plugins::DEFAULT_DIR)
        {
            "off" | "" => None,
            d => Some(PathBuf::from(d)),
        };
        let d = crate::plugins::Limits::default();
        crate::plugins::Settings {
            dir,
            limits: crate::plugins::Limits {
                call_timeout: self
                    .plugin_timeout_ms
                    .map_or(d.call_timeout, std::time::Duration::from_millis),
                memory_bytes: self
                    .plugin_memory_mib
                    .map_or(d.memory_bytes, |m| (m as usize) << 20),
                ..d
            },
            fail_closed: self.plugins_fail_closed,
            allow_writable: self.plugins_allow_writable,
            ..Default::default()
        }
    }

    /// What the connection table takes from the options (all of it can change live).
    pub fn table_options(&self) -> TableOptions {
        TableOptions {
            spans: SpanOptions {
                keep_query_values: self.keep_query_values,
            },
            ports: self.port.clone(),
            trace_own_exports: self.trace_own_exports,
            join: self.join(),
        }
    }

    /// What the probes take from the options (the hooks and the ring's size only at start).
    pub fn probe_options(&self) -> ProbeOptions {
        ProbeOptions {
            hooks: self.hooks.unwrap_or_default(),
            capture_size: self.capture_size(),
            pids: self.pid.clone(),
            comm: self.comm.clone(),
            ring_bytes: self.ring_buffer_mib() << 20,
            tls: !self.no_tls,
            kernel_log: self.kernel_log.unwrap_or_default(),
            propagate: self.propagate.as_deref().map(|c| match c {
                "all" | "" => crate::probes::cgroup2_root(),
                dir => dir.into(),
            }),
            ..Default::default()
        }
    }

    /// None when the admin endpoint is switched off.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.admin_addr.as_deref().unwrap_or(DEFAULT_ADMIN_ADDR) {
            "off" | "" => Ok(None),
            a => a.parse().map(Some).map_err(|_| {
                ConfigError::Invalid(format!(
                    "admin-addr {a:?} is not HOST:PORT (e.g. {DEFAULT_ADMIN_ADDR})"
                ))
            }),
        }
    }

    /// Checks what the types cannot: ranges, lengths, formats.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(64..=tracer_common::MAX_CAPTURE as u32).contains(&self.capture_size()) {
            return bad(format!(
                "capture-size {} is outside 64..={}",
                self.capture_size(),
                tracer_common::MAX_CAPTURE
            ));
        }
        let mib = self.ring_buffer_mib();
        if mib == 0 || !mib.is_power_of_two() {
            return bad(format!(
                "ring-buffer-mib must be a power of two (got {mib})"
            ));
        }
        if let Some(c) = self
            .comm
            .as_ref()
            .filter(|c| c.is_empty() || c.len() >= tracer_common::COMM_LEN)
        {
            return bad(format!(
                "comm {c:?} must be 1 to {} characters",
                tracer_common::COMM_LEN - 1
            ));
        }
        if let Some(p) = self
            .otlp_protocol
            .as_ref()
            .filter(|p| *p != "grpc" && *p != "http/protobuf")
        {
            return bad(format!("otlp-protocol {p:?}: use grpc or http/protobuf"));
        }
        if let Some(m) = self.export_queue_mib.filter(|m| !(1..=65_536).contains(m)) {
            return bad(format!("export-queue-mib {m} is outside 1..=65536"));
        }
        if let Some(t) = self.plugin_timeout_ms.filter(|t| !(1..=10_000).contains(t)) {
            return bad(format!("plugin-timeout-ms {t} is outside 1..=10000"));
        }
        if let Some(m) = self.plugin_memory_mib.filter(|m| !(1..=4096).contains(m)) {
            return bad(format!("plugin-memory-mib {m} is outside 1..=4096"));
        }
        self.admin_addr()?;
        Ok(())
    }

    /// Options that differ between `self` and `new` and only take effect after a restart.
    /// What runs once `self` was loaded live over the settings the daemon `started` with:
    /// the options applied live are `self`'s, those read once at start stay `started`'s
    /// (the same split as [`Self::needs_restart`]).
    pub fn in_effect(&self, started: &RunOptions) -> RunOptions {
        let RunOptions {
            pid,
            port,
            comm,
            capture_size,
            keep_query_values,
            trace_own_exports,
            join_hold_ms,
            export_unsampled,
            ..
        } = self.clone();
        RunOptions {
            pid,
            port,
            comm,
            capture_size,
            keep_query_values,
            trace_own_exports,
            join_hold_ms,
            export_unsampled,
            ..started.clone()
        }
    }

    pub fn needs_restart(&self, new: &RunOptions) -> Vec<&'static str> {
        // No `..`: a new option does not compile until it is put in one of these groups.
        let RunOptions {
            // Applied live (pipeline::Update): the probes' filters and capture size, the
            // connection table's options (with the joiner's).
            pid: _,
            port: _,
            comm: _,
            capture_size: _,
            keep_query_values: _,
            trace_own_exports: _,
            join_hold_ms: _,
            export_unsampled: _,
            // Read once at start.
            hooks,
            no_tls,
            kernel_log,
            propagate,
            otlp_endpoint,
            otlp_protocol,
            output,
            record,
            stats_interval,
            admin_addr,
            admin_token_file,
            k8s_label,
            // Read once at start, compared by what they resolve to (unset means the default).
            ring_buffer_mib: _,
            export_queue_mib: _,
            metrics_series_limit: _,
            plugins_dir: _,
            plugin_timeout_ms: _,
            plugin_memory_mib: _,
            plugins_fail_closed: _,
            plugins_allow_writable: _,
        } = self;
        [
            (*hooks != new.hooks, "hooks"),
            (*no_tls != new.no_tls, "no-tls"),
            (*kernel_log != new.kernel_log, "kernel-log"),
            (*propagate != new.propagate, "propagate"),
            (
                self.ring_buffer_mib() != new.ring_buffer_mib(),
                "ring-buffer-mib",
            ),
            (*otlp_endpoint != new.otlp_endpoint, "otlp-endpoint"),
            (*otlp_protocol != new.otlp_protocol, "otlp-protocol"),
            (*output != new.output, "output"),
            (
                self.export_queue_bytes() != new.export_queue_bytes(),
                "export-queue-mib",
            ),
            (
                self.metrics_series_limit() != new.metrics_series_limit(),
                "metrics-series-limit",
            ),
            (*record != new.record, "record"),
            (*stats_interval != new.stats_interval, "stats-interval"),
            (*admin_addr != new.admin_addr, "admin-addr"),
            (
                *admin_token_file != new.admin_token_file,
                "admin-token-file",
            ),
            (*k8s_label != new.k8s_label, "k8s-label"),
            (self.plugins() != new.plugins(), "plugins-*"),
        ]
        .into_iter()
        .filter_map(|(changed, name)| changed.then_some(name))
        .collect()
    }
}

/// The settings in force: `flags` over the config `file`, if there is one.
pub fn effective(file: Option<&Path>, flags: &RunOptions) -> Result<RunOptions, ConfigError> {
    let file = match file {
        Some(p) => read_file(p)?,
        None => RunOptions::default(),
    };
    let o = flags.clone().over(file);
    o.validate()?;
    Ok(o)
}

/// Reads a config file; the format follows the extension.
pub fn read_file(path: &Path) -> Result<RunOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_text(path, &text)
}

/// Parses and validates a config file's contents; `path` names the format (its extension) and
/// the file in errors. Public for the fuzz targets, which feed it without a file.
pub fn from_text(path: &Path, text: &str) -> Result<RunOptions, ConfigError> {
    let opts: RunOptions = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => {
            // An empty YAML document means "no settings", not an error.
            if text.trim().is_empty() {
                RunOptions::default()
            } else {
                serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                })?
            }
        }
        Some("toml") => toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?,
        _ => {
            return Err(ConfigError::Extension {
                path: path.to_path_buf(),
            });
        }
    };
    opts.validate()?;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tracer-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn yaml_and_toml_use_the_flag_names() {
        let y = read_file(&write(
            "a.yaml",
            "port: [8080, 9090]\ncomm: nginx\ncapture-size: 2048\notlp-endpoint: http://c:4317\notlp-protocol: grpc\noutput: json\nkeep-query-values: true\nadmin-addr: 0.0.0.0:9464\nexport-queue-mib: 256\n",
        ))
        .unwrap();
        assert_eq!(y.port, [8080, 9090]);
        assert_eq!((y.comm.as_deref(), y.capture_size()), (Some("nginx"), 2048));
        assert_eq!(y.output, Some(Format::Json));
        assert!(y.keep_query_values);
        assert_eq!(y.export_queue_bytes(), 256 << 20);
        let t = read_file(&write(
            "a.toml",
            "port = [8080, 9090]\ncomm = \"nginx\"\ncapture-size = 2048\n",
        ))
        .unwrap();
        assert_eq!(
            (t.port, t.comm, t.capture_size),
            (y.port, y.comm, y.capture_size)
        );
        assert_eq!(
            read_file(&write("empty.yaml", "")).unwrap(),
            RunOptions::default()
        );
    }

    #[test]
    fn unset_options_take_the_defaults_of_the_modules_that_use_them() {
        let o = RunOptions::default();
        assert_eq!(
            o.export_queue_bytes(),
            crate::export::BatchConfig::default().max_queue_bytes
        );
        assert_eq!(o.plugins().limits, crate::plugins::Limits::default());
        assert_eq!(
            o.ring_buffer_mib() << 20,
            crate::probes::ProbeOptions::default().ring_bytes
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = read_file(&write("typo.yaml", "prot: [80]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `prot`"), "{e}");
        let e = read_file(&write("type.yaml", "port: eighty\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
        let e = read_file(&write("range.toml", "capture-size = 10\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("capture-size 10"), "{e}");
        let e = read_file(&write("a.json", "{}")).unwrap_err().to_string();
        assert!(e.contains(".yaml, .yml or .toml"), "{e}");
        let e = read_file(&write("addr.yaml", "admin-addr: localhost\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = read_file(&write("queue.yaml", "export-queue-mib: 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("export-queue-mib 0"), "{e}");
        assert!(
            read_file(Path::new("/nonexistent/tracer.yaml"))
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }

    /// Every option set, none to its default.
    fn all_set() -> RunOptions {
        RunOptions {
            pid: vec![7],
            port: vec![8080],
            comm: Some("nginx".into()),
            capture_size: Some(1024),
            hooks: Some(HookChoice::Syscalls),
            no_tls: true,
            kernel_log: Some(KernelLog::Debug),
            propagate: Some("/sys/fs/cgroup/app".into()),
            ring_buffer_mib: Some(64),
            otlp_endpoint: Some("http://c:4318".into()),
            otlp_protocol: Some("grpc".into()),
            output: Some(Format::Json),
            keep_query_values: true,
            trace_own_exports: true,
            join_hold_ms: Some(10),
            export_unsampled: true,
            record: Some("/tmp/r.bin".into()),
            export_queue_mib: Some(8),
            metrics_series_limit: Some(7),
            stats_interval: Some(10),
            admin_addr: Some("127.0.0.1:1".into()),
            admin_token_file: Some("/t".into()),
            k8s_label: vec!["team".into()],
            plugins_dir: Some("/p".into()),
            plugin_timeout_ms: Some(5),
            plugin_memory_mib: Some(8),
            plugins_fail_closed: true,
            plugins_allow_writable: true,
        }
    }

    #[test]
    fn every_option_merges_from_either_side() {
        let all = all_set();
        assert_eq!(all.clone().over(RunOptions::default()), all);
        assert_eq!(RunOptions::default().over(all.clone()), all);
    }

    #[test]
    fn each_option_is_applied_live_or_named_as_needing_a_restart() {
        let base = RunOptions::default();
        let all = all_set();
        let one = |f: fn(&mut RunOptions, &RunOptions)| {
            let mut o = base.clone();
            f(&mut o, &all);
            base.needs_restart(&o)
        };
        type Set = fn(&mut RunOptions, &RunOptions);
        let live: [Set; 8] = [
            |o, a| o.pid = a.pid.clone(),
            |o, a| o.port = a.port.clone(),
            |o, a| o.comm = a.comm.clone(),
            |o, a| o.capture_size = a.capture_size,
            |o, a| o.keep_query_values = a.keep_query_values,
            |o, a| o.trace_own_exports = a.trace_own_exports,
            |o, a| o.join_hold_ms = a.join_hold_ms,
            |o, a| o.export_unsampled = a.export_unsampled,
        ];
        for (i, f) in live.into_iter().enumerate() {
            assert_eq!(one(f), Vec::<&str>::new(), "live option {i}");
        }
        let restart: [(Set, &str); 20] = [
            (|o, a| o.hooks = a.hooks, "hooks"),
            (|o, a| o.propagate = a.propagate.clone(), "propagate"),
            (|o, a| o.no_tls = a.no_tls, "no-tls"),
            (|o, a| o.kernel_log = a.kernel_log, "kernel-log"),
            (
                |o, a| o.ring_buffer_mib = a.ring_buffer_mib,
                "ring-buffer-mib",
            ),
            (
                |o, a| o.otlp_endpoint = a.otlp_endpoint.clone(),
                "otlp-endpoint",
            ),
            (
                |o, a| o.otlp_protocol = a.otlp_protocol.clone(),
                "otlp-protocol",
            ),
            (|o, a| o.output = a.output, "output"),
            (|o, a| o.record = a.record.clone(), "record"),
            (
                |o, a| o.export_queue_mib = a.export_queue_mib,
                "export-queue-mib",
            ),
            (
                |o, a| o.metrics_series_limit = a.metrics_series_limit,
                "metrics-series-limit",
            ),
            (|o, a| o.stats_interval = a.stats_interval, "stats-interval"),
            (|o, a| o.admin_addr = a.admin_addr.clone(), "admin-addr"),
            (
                |o, a| o.admin_token_file = a.admin_token_file.clone(),
                "admin-token-file",
            ),
            (|o, a| o.k8s_label = a.k8s_label.clone(), "k8s-label"),
            (|o, a| o.plugins_dir = a.plugins_dir.clone(), "plugins-*"),
            (
                |o, a| o.plugin_timeout_ms = a.plugin_timeout_ms,
                "plugins-*",
            ),
            (
                |o, a| o.plugin_memory_mib = a.plugin_memory_mib,
                "plugins-*",
            ),
            (
                |o, a| o.plugins_fail_closed = a.plugins_fail_closed,
                "plugins-*",
            ),
            (
                |o, a| o.plugins_allow_writable = a.plugins_allow_writable,
                "plugins-*",
            ),
        ];
        for (f, name) in restart {
            assert_eq!(one(f), [name]);
        }
        // Set to what the default already is: nothing changes.
        let same = RunOptions {
            ring_buffer_mib: Some(crate::probes::DEFAULT_RING_MIB),
            export_queue_mib: Some(crate::export::DEFAULT_QUEUE_MIB),
            metrics_series_limit: Some(crate::spanmetrics::DEFAULT_SERIES_LIMIT),
            plugin_timeout_ms: Some(crate::plugins::DEFAULT_CALL_TIMEOUT.as_millis() as u64),
            plugin_memory_mib: Some(crate::plugins::DEFAULT_MEMORY_MIB as u64),
            ..RunOptions::default()
        };
        assert!(base.needs_restart(&same).is_empty());
    }

    #[test]
    fn help_shows_the_defaults_the_code_uses() {
        let help = RunOptions::augment_args(clap::Command::new("run"))
            .render_long_help()
            .to_string();
        for (flag, default) in [
            ("--capture-size", tracer_common::DEFAULT_CAPTURE.to_string()),
            ("--hooks", "auto".to_string()),
            ("--kernel-log", "off".to_string()),
            (
                "--ring-buffer-mib",
                crate::probes::DEFAULT_RING_MIB.to_string(),
            ),
            ("--join-hold-ms", crate::join::DEFAULT_HOLD_MS.to_string()),
            (
                "--export-queue-mib",
                crate::export::DEFAULT_QUEUE_MIB.to_string(),
            ),
            (
                "--metrics-series-limit",
                crate::spanmetrics::DEFAULT_SERIES_LIMIT.to_string(),
            ),
            ("--admin-addr", DEFAULT_ADMIN_ADDR.to_string()),
            ("--plugins-dir", crate::plugins::DEFAULT_DIR.to_string()),
            (
                "--plugin-timeout-ms",
                crate::plugins::DEFAULT_CALL_TIMEOUT.as_millis().to_string(),
            ),
            (
                "--plugin-memory-mib",
                crate::plugins::DEFAULT_MEMORY_MIB.to_string(),
            ),
        ] {
            let (_, after) = help.split_once(flag).expect(flag);
            let entry = after.split("\n\n").next().unwrap_or_default();
            assert!(
                entry.contains(&format!("[default: {default}]")),
                "{flag}: {entry}"
            );
        }
    }

    #[test]
    fn the_effective_settings_are_the_flags_over_the_file_and_valid() {
        let file = write("eff.yaml", "port: [80]\ncomm: a\n");
        let flags = RunOptions {
            comm: Some("b".into()),
            ..Default::default()
        };
        let o = effective(Some(&file), &flags).unwrap();
        assert_eq!((&o.port[..], o.comm.as_deref()), (&[80][..], Some("b")));
        assert_eq!(effective(None, &flags).unwrap(), flags);
        let bad = RunOptions {
            capture_size: Some(10),
            ..Default::default()
        };
        let e = effective(Some(&file), &bad).unwrap_err().to_string();
        assert!(e.contains("capture-size 10"), "{e}");
        assert!(matches!(
            effective(Some(Path::new("/nonexistent/t.yaml")), &flags),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = RunOptions {
            port: vec![80],
            comm: Some("a".into()),
            capture_size: Some(1024),
            keep_query_values: true,
            ..Default::default()
        };
        let cli = RunOptions {
            comm: Some("b".into()),
            ..Default::default()
        };
        let m = cli.over(file.clone());
        assert_eq!(
            (
                &m.port[..],
                m.comm.as_deref(),
                m.capture_size(),
                m.keep_query_values
            ),
            (&[80][..], Some("b"), 1024, true)
        );
        assert_eq!(
            file.needs_restart(&RunOptions {
                otlp_endpoint: Some("x".into()),
                ..file.clone()
            }),
            ["otlp-endpoint"]
        );
        assert!(
            file.needs_restart(&RunOptions {
                port: vec![1],
                ..file.clone()
            })
            .is_empty()
        );
    }
}
