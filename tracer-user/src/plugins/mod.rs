//! WebAssembly plugins between the span builder and the exporters: they drop spans (sampling)
//! and set, remove or rename (enrichment, redaction).
//!
//! Reload is shadow-load -> validate -> swap: a new file is compiled and instantiated off the
//! hot path, must meet the contract, accept its config and answer a self-test batch sanely;
//! then the whole chain is replaced with one atomic pointer swap. Each batch loads the chain
//! once, so it is processed by exactly one version; the old chain is dropped when the batch
//! holding it ends. A bad file is refused with the reason and the last good version stays.
pub mod abi;
pub mod chain;
pub mod check;
pub mod dir;
pub mod runtime;
pub mod stats;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use abi::SUPPORTED;
pub use chain::{CHAIN_ATTRIBUTE, Chain, Loaded, OnFailure};
use prometheus_client::metrics::family::Family;
pub use runtime::{CallError, DEFAULT_CALL_TIMEOUT, DEFAULT_MEMORY_MIB, Limits};
use runtime::{Instance, Runtime};
use stats::{Families, PluginStats};

use crate::{
    metrics::{Counter, Gauge, Registry},
    semconv,
    span::{Resource, Span, SpanKind, Status, Value, kv},
};

/// Where the daemon looks for plugins unless told otherwise.
pub const DEFAULT_DIR: &str = "/etc/tracer/plugins";
/// How often the daemon looks at the plugin directory ([`watch`]).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How an operator overrules the refusal of a file others could change.
const ALLOW_WRITABLE: &str = "(or start the tracer with --plugins-allow-writable)";

/// Why a plugin file is not loaded. The message is what an operator reads in the log, on
/// `/plugins` and from `tracer plugins check`: it names the file or the rule and what to do.
/// Causes are part of the message rather than a `source`, since reports show only the message.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot start the WebAssembly runtime: {0:#}")]
    Runtime(wasmtime::Error),
    #[error("cannot read the plugin directory {}: {error}", dir.display())]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Still being written: looked at again at the next scan.
    #[error("{} changed while it was read: tried again at the next scan", path.display())]
    Changing { path: PathBuf },
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(
        "{} is writable by {writers} (mode {mode:o}): refused; run `chmod go-w {}` {ALLOW_WRITABLE}",
        path.display(),
        path.display()
    )]
    Writable {
        path: PathBuf,
        /// `everyone` or `its group`.
        writers: &'static str,
        mode: u32,
    },
    #[error(
        "{} is owned by uid {uid}, who could change it: refused; run `chown root {}` {ALLOW_WRITABLE}",
        path.display(),
        path.display()
    )]
    Owner { path: PathBuf, uid: u32 },
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    #[error("its config's [tracer] table: {0} (on-failure = \"pass\" or \"drop\")")]
    HostSettings(String),
    #[error(
        "a core WebAssembly module, not a component: build it with `cargo xtask build-plugins` \
         (it wraps the module with wit-component for the contract the plugin was built against)"
    )]
    CoreModule,
    #[error("not a valid component (truncated or corrupt?): {0:#}")]
    Corrupt(wasmtime::Error),
    #[error(
        "built for another contract version ({found}); this tracer implements {SUPPORTED}: \
         rebuild the plugin with the SDK that matches this tracer"
    )]
    OtherContract { found: String },
    #[error(
        "does not implement the plugin contract, {SUPPORTED} (its interfaces: {interfaces}); a plugin exports \
         tracer:plugin/plugin and imports only tracer:plugin/host"
    )]
    NotAPlugin {
        /// Comma-separated, or `none`.
        interfaces: String,
    },
    #[error("cannot be linked against the tracer's host interface: {0:#}")]
    Link(wasmtime::Error),
    #[error("does not export the plugin interface as its contract version says: {0:#}")]
    Exports(wasmtime::Error),
    /// `init` answered with an error: the plugin's own words about its config.
    #[error("init refused the config: {0}")]
    ConfigRefused(String),
    /// Instantiation or `init` did not return (deadline, memory cap, trap).
    #[error("init {0}")]
    Init(CallError),
    #[error("self-test batch: {0}")]
    SelfTest(CallError),
}

/// How plugins run; set once at start.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The watched directory; None runs no plugins.
    pub dir: Option<PathBuf>,
    pub limits: Limits,
    /// A failed call drops its batch instead of letting it through unchanged.
    pub fail_closed: bool,
    /// Failed calls within a minute that take a plugin out of the chain.
    pub max_failures: u32,
    /// Accept plugin files that users other than root can write.
    pub allow_writable: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dir: None,
            limits: Limits::default(),
            fail_closed: false,
            max_failures: 5,
            allow_writable: false,
        }
    }
}

/// What the last attempt to load a file gave.
#[derive(Clone, Debug)]
enum FileState {
    Active,
    Rejected(String),
    /// Failed too often while running; stays out until its content changes.
    Quarantined(String),
}

#[derive(Clone, Debug)]
struct FileRecord {
    hash: String,
    state: FileState,
}

/// The outcome of one reload, for logs and the admin endpoint.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub unloaded: Vec<String>,
    /// Plugin names (the directory for a failed scan) and why they were refused.
    pub rejected: Vec<(String, PluginError)>,
    /// Files still being written: looked at again at the next scan.
    pub pending: Vec<String>,
    /// The chain version now running, if this reload swapped it.
    pub swapped_to: Option<u64>,
    /// Time from the last plugin validated to the new chain active.
    pub swap_time: Option<Duration>,
}

impl ReloadReport {
    pub fn summary(&self, chain: &Chain) -> String {
        let mut parts = vec![match self.swapped_to {
            Some(v) => format!(
                "plugin chain v{v}: [{}]",
                if chain.is_empty() { "" } else { chain.label() }
            ),
            None => format!("plugin chain unchanged (v{})", chain.version),
        }];
        if !self.loaded.is_empty() {
            parts.push(format!("loaded {}", self.loaded.join(", ")));
        }
        if !self.unloaded.is_empty() {
            parts.push(format!("unloaded {}", self.unloaded.join(", ")));
        }
        for (n, why) in &self.rejected {
            parts.push(format!("REJECTED {n}: {why}"));
        }
        if !self.pending.is_empty() {
            parts.push(format!("still being written: {}", self.pending.join(", ")));
        }
        parts.join("; ")
    }
}

/// The plugin host: the runtime, the current chain and the bookkeeping around reloads.
pub struct PluginHost {
    runtime: Runtime,
    pub settings: Settings,
    chain: ArcSwap<Chain>,
    next_version: AtomicU64,
    stats: Mutex<HashMap<String, Arc<PluginStats>>>,
    files: Mutex<BTreeMap<String, FileRecord>>,
    last_error: Mutex<Option<String>>,
    /// One reload at a time (watcher, SIGHUP and the admin endpoint may race).
    reloading: Mutex<()>,
    families: Families,
    pub metrics: HostMetrics,
}

/// What the host counts, and gauges of the chain and the files it runs.
#[derive(Debug)]
pub struct HostMetrics {
    pub spans_dropped: Counter,
    pub spans_failed: Counter,
    pub reloads: Counter,
    pub reload_failures: Counter,
    chain_version: Gauge,
    active: Family<[(&'static str, String); 2], Gauge>,
    not_running: Family<[(&'static str, String); 2], Gauge>,
}

impl HostMetrics {
    fn new(reg: &Registry) -> Self {
        let active = Family::default();
        reg.register(
            "plugin_active",
            "1 for each plugin in the running chain",
            active.clone(),
        );
        let not_running = Family::default();
        reg.register(
            "plugin_not_running",
            "1 for each plugin file that is refused or taken out of the chain",
            not_running.clone(),
        );
        HostMetrics {
            spans_dropped: reg.counter("spans_plugin_dropped", "Spans plugins dropped (sampling decisions)"),
            spans_failed: reg.counter("spans_plugin_failed", "Spans dropped because a plugin whose failure policy is drop failed on them or is quarantined (on-failure = \"drop\", or --plugins-fail-closed)"),
            reloads: reg.counter("plugin_reloads", "Plugin chain swaps"),
            reload_failures: reg.counter("plugin_reload_failures", "Plugin files refused (not wasm, wrong contract, failed init or self-test, unsafe permissions)"),
            chain_version: reg.gauge("plugin_chain_version", "Version of the running plugin chain (increases at every swap)"),
            active,
            not_running,
        }
    }
}

impl PluginHost {
    pub fn new(settings: Settings, reg: &Registry) -> Result<Self, PluginError> {
        Ok(Self {
            runtime: Runtime::new().map_err(PluginError::Runtime)?,
            settings,
            chain: ArcSwap::from_pointee(Chain::new(0, Vec::new())),
            next_version: AtomicU64::new(1),
            stats: Mutex::default(),
            files: Mutex::default(),
            last_error: Mutex::default(),
            reloading: Mutex::default(),
            families: Families::register(reg),
            metrics: HostMetrics::new(reg),
        })
    }

    /// The chain new batches get.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.load_full()
    }

    /// Runs a batch through the current chain (loaded once: one version per batch).
    pub fn process(&self, spans: &mut Vec<Span>) {
        let chain = self.chain.load();
        if chain.is_empty() || spans.is_empty() {
            return;
        }
        let r = chain.process(spans);
        self.metrics.spans_dropped.inc_by(r.dropped);
        self.metrics.spans_failed.inc_by(r.failed_closed);
        if r.quarantined {
            drop(chain);
            self.remove_quarantined();
        }
    }

    fn stats_for(&self, name: &str) -> Arc<PluginStats> {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(name.to_owned())
            .or_insert_with(|| Arc::new(self.families.stats(name)))
            .clone()
    }

    /// What the host takes from a plugin's config: its `[tracer]` table (`on-failure`), which
    /// the plugin never sees. None: the config does not say.
    fn host_settings(&self, config: &str) -> Result<(Option<OnFailure>, String), PluginError> {
        // Not TOML, or no [tracer] table: the plugin's own business, handed over as it is.
        let Ok(mut table) = config.parse::<toml::Table>() else {
            return Ok((None, config.to_owned()));
        };
        let Some(host) = table.remove("tracer") else {
            return Ok((None, config.to_owned()));
        };
        let bad = |why: &str| PluginError::HostSettings(why.to_owned());
        let host = host.as_table().ok_or_else(|| bad("not a table"))?;
        let mut on_failure = None;
        for (k, v) in host {
            match (k.as_str(), v.as_str()) {
                ("on-failure", Some("pass")) => on_failure = Some(OnFailure::Pass),
                ("on-failure", Some("drop")) => on_failure = Some(OnFailure::Drop),
                ("on-failure", _) => return Err(bad(&format!("on-failure = {v}"))),
                _ => return Err(bad(&format!("unknown key {k:?}"))),
            }
        }
        let rest = toml::to_string(&table).map_err(|e| bad(&e.to_string()))?;
        Ok((on_failure, rest))
    }

    /// Compiles, instantiates and validates a plugin: the contract, `init(config)`, and a
    /// self-test batch of sample spans in a throwaway instance. Then starts the live instance.
    pub fn load(
        &self,
        name: &str,
        file: &Path,
        wasm: &[u8],
        config: &str,
    ) -> Result<Arc<Loaded>, PluginError> {
        let pre = self.runtime.compile_cached(wasm)?;
        let (configured, plugin_config) = self.host_settings(config)?;
        let name: Arc<str> = name.into();
        let limits = &self.settings.limits;
        let start = |stats: Arc<PluginStats>, self_test: bool| {
            Instance::start(&pre, name.clone(), stats, limits, &plugin_config, self_test)
        };
        // Counted nowhere: the self-test is not the plugin's work.
        let test_stats = Arc::new(Families::default().stats(&name));
        let (inst, interest) = start(test_stats.clone(), true)?;
        // The operator's word, then the plugin's, then the tracer's default.
        let on_failure =
            configured
                .or(interest.on_failure)
                .unwrap_or(if self.settings.fail_closed {
                    OnFailure::Drop
                } else {
                    OnFailure::Pass
                });
        let probe = Loaded::new(
            name.clone(),
            file.to_owned(),
            String::new(),
            plugin_config.clone(),
            pre.clone(),
            limits.clone(),
            test_stats,
            inst,
            interest,
            1,
            on_failure,
        );
        let mut sample = samples();
        probe.run(&mut sample).map_err(PluginError::SelfTest)?;
        let stats = self.stats_for(&name);
        let (inst, interest) = start(stats.clone(), false)?;
        Ok(Arc::new(Loaded::new(
            name,
            file.to_owned(),
            content_hash(wasm, config),
            // What a restarted instance's init gets: the plugin's part only.
            plugin_config.clone(),
            pre,
            limits.clone(),
            stats,
            inst,
            interest,
            self.settings.max_failures,
            on_failure,
        )))
    }

    /// Publishes a new chain; returns its version.
    pub fn install(&self, plugins: Vec<Arc<Loaded>>) -> u64 {
        let v = self.next_version.fetch_add(1, Relaxed);
        self.chain.store(Arc::new(Chain::new(v, plugins)));
        self.publish();
        v
    }

    /// Sets the gauges of the chain and the files from what runs now.
    fn publish(&self) {
        let m = &self.metrics;
        let chain = self.chain.load_full();
        m.chain_version.set(chain.version as i64);
        m.active.clear();
        for p in &chain.plugins {
            m.active
                .get_or_create(&[("plugin", p.name.to_string()), ("hash", p.hash.clone())])
                .set(1);
        }
        let files = self.files.lock().map(|f| f.clone()).unwrap_or_default();
        m.not_running.clear();
        for (n, r) in files {
            let state = match r.state {
                FileState::Active => continue,
                FileState::Rejected(_) => "rejected",
                FileState::Quarantined(_) => "quarantined",
            };
            m.not_running
                .get_or_create(&[("plugin", n), ("state", state.to_string())])
                .set(1);
        }
    }

    fn remove_quarantined(&self) {
        let _g = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.chain.load_full();
        // A plugin that drops on failure stays in the chain while quarantined, dropping every
        // batch: taking it out would let spans through unprocessed (a redactor's, unredacted).
        let (bad, good): (Vec<_>, Vec<_>) = cur
            .plugins
            .iter()
            .cloned()
            .partition(|p| p.is_quarantined() && p.on_failure == OnFailure::Pass);
        for p in cur
            .plugins
            .iter()
            .filter(|p| p.is_quarantined() && p.on_failure == OnFailure::Drop)
        {
            tracing::error!(
                "plugin {} failed repeatedly: it stays in the chain and every batch is dropped \
                 (on-failure = drop) until its file or config changes",
                p.name
            );
        }
        if bad.is_empty() {
            return;
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for p in &bad {
            let why = p
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            files.insert(
                p.name.to_string(),
                FileRecord {
                    hash: p.hash.clone(),
                    state: FileState::Quarantined(why),
                },
            );
        }
        drop(files);
        let v = self.install(good);
        tracing::error!(
            "plugin chain v{v}: took out {} after repeated failures",
            bad.iter().map(|p| p.id()).collect::<Vec<_>>().join(", ")
        );
    }

    /// Re-reads the plugin directory and swaps in what changed. Unchanged files keep their
    /// running instance; a file that fails keeps the last good version of that plugin.
    pub fn reload_dir(&self) -> ReloadReport {
        let _g = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = ReloadReport::default();
        let Some(dir) = self.settings.dir.clone() else {
            return report;
        };
        let entries = match dir::scan(&dir) {
            Ok(e) => e,
            Err(error) => {
                let why = PluginError::Dir {
                    dir: dir.clone(),
                    error,
                };
                self.note_failure(&why.to_string());
                report.rejected.push((dir.display().to_string(), why));
                return report;
            }
        };
        let current = self.chain.load_full();
        let by_name: HashMap<&str, &Arc<Loaded>> =
            current.plugins.iter().map(|p| (&*p.name, p)).collect();
        let mut next = Vec::new();
        let mut last_validated = None;
        for e in &entries {
            let old = by_name.get(e.name.as_str()).copied();
            match self.load_entry(e, old) {
                Ok(Some(p)) => {
                    if old.is_none_or(|o| !Arc::ptr_eq(o, &p)) {
                        report.loaded.push(p.id());
                        last_validated = Some(Instant::now());
                    }
                    next.push(p);
                }
                Ok(None) => {}
                Err(Outcome::Pending) => {
                    report.pending.push(e.name.clone());
                    next.extend(old.cloned());
                }
                Err(Outcome::Rejected(why)) => {
                    report.rejected.push((e.name.clone(), why));
                    next.extend(old.cloned());
                }
                Err(Outcome::Unchanged) => next.extend(old.cloned()),
            }
        }
        for p in &current.plugins {
            if !entries.iter().any(|e| *e.name == *p.name) {
                report.unloaded.push(p.id());
            }
        }
        {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.retain(|n, _| entries.iter().any(|e| &e.name == n));
        }
        let same = next.len() == current.plugins.len()
            && next
                .iter()
                .zip(&current.plugins)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            let v = self.install(next);
            report.swapped_to = Some(v);
            report.swap_time = last_validated.map(|t| t.elapsed());
            self.metrics.reloads.inc();
        }
        self.publish();
        report
    }

    /// Loads one directory entry unless its content is what already runs (or was already
    /// refused). Ok(None): quarantined and unchanged, so it stays out.
    fn load_entry(
        &self,
        e: &dir::Entry,
        old: Option<&Arc<Loaded>>,
    ) -> Result<Option<Arc<Loaded>>, Outcome> {
        let allow = self.settings.allow_writable;
        let read = |p: &Path| {
            dir::read_settled(p, allow).map_err(|err| match err {
                PluginError::Changing { .. } => Outcome::Pending,
                why => Outcome::Rejected(why),
            })
        };
        let wasm = read(&e.wasm);
        let config = match &e.config {
            Some(c) => read(c).and_then(|b| {
                String::from_utf8(b)
                    .map_err(|_| Outcome::Rejected(PluginError::NotUtf8 { path: c.clone() }))
            }),
            None => Ok(String::new()),
        };
        let (wasm, config) = match (wasm, config) {
            (Ok(w), Ok(c)) => (w, c),
            (Err(o), _) | (_, Err(o)) => {
                if let Outcome::Rejected(why) = &o {
                    self.refused(&e.name, String::new(), why);
                }
                return Err(o);
            }
        };
        let hash = content_hash(&wasm, &config);
        if let Some(o) = old
            && o.hash == hash
        {
            return Ok(Some(o.clone()));
        }
        let prev = self.files.lock().ok().and_then(|f| f.get(&e.name).cloned());
        if let Some(r) = prev
            && r.hash == hash
        {
            match r.state {
                FileState::Quarantined(_) => return Ok(None),
                FileState::Rejected(_) => return Err(Outcome::Unchanged),
                FileState::Active => {}
            }
        }
        match self.load(&e.name, &e.wasm, &wasm, &config) {
            Ok(p) => {
                self.record(&e.name, hash, FileState::Active);
                Ok(Some(p))
            }
            Err(why) => {
                self.refused(&e.name, hash, &why);
                Err(Outcome::Rejected(why))
            }
        }
    }

    fn record(&self, name: &str, hash: String, state: FileState) {
        if let Ok(mut f) = self.files.lock() {
            f.insert(name.to_owned(), FileRecord { hash, state });
        }
        self.publish();
    }

    fn refused(&self, name: &str, hash: String, why: &PluginError) {
        self.record(name, hash, FileState::Rejected(why.to_string()));
        self.note_failure(&format!("{name}: {why}"));
    }

    fn note_failure(&self, why: &str) {
        self.metrics.reload_failures.inc();
        tracing::warn!("plugin refused, the last good version stays: {why}");
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(why.to_owned());
        }
    }

    /// What `GET /plugins` serves and `tracer plugins list` prints.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let chain = self.chain.load_full();
        let files = self.files.lock().map(|f| f.clone()).unwrap_or_default();
        let plugins: Vec<_> = chain
            .plugins
            .iter()
            .map(|p| {
                let (attrs, res, name) = p.interest();
                let counters: serde_json::Map<_, _> = p
                    .stats
                    .snapshot()
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), json!(v)))
                    .collect();
                json!({
                    "name": &*p.name,
                    "hash": p.hash,
                    "contract": p.contract,
                    "on_failure": match p.on_failure {
                        OnFailure::Pass => "pass",
                        OnFailure::Drop => "drop",
                    },
                    "file": p.file.display().to_string(),
                    "state": "active",
                    "loaded_at_unix": p.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    "interest": {"attributes": attrs, "resource_attributes": res, "span_name": name},
                    "counters": counters,
                    "call_seconds": p.stats.call_seconds.get(),
                    "last_error": p.last_error.lock().ok().and_then(|e| e.clone()),
                })
            })
            .collect();
        let others: Vec<_> = files
            .iter()
            .filter_map(|(n, r)| match &r.state {
                FileState::Active => None,
                FileState::Rejected(why) => {
                    Some(json!({"name": n, "state": "rejected", "error": why}))
                }
                FileState::Quarantined(why) => {
                    Some(json!({"name": n, "state": "quarantined", "error": why}))
                }
            })
            .collect();
        json!({
            "directory": self.settings.dir.as_ref().map(|d| d.display().to_string()),
            "chain": {"version": chain.version, "label": chain.label()},
            "plugins": plugins,
            "not_running": others,
            "reloads": self.metrics.reloads.get(),
            "reload_failures": self.metrics.reload_failures.get(),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
            "limits": {
                "call_timeout_ms": self.settings.limits.call_timeout.as_millis() as u64,
                "memory_mib": self.settings.limits.memory_bytes >> 20,
                "fail_closed": self.settings.fail_closed,
            },
        })
    }
}

enum Outcome {
    Pending,
    Rejected(PluginError),
    /// The same content was refused before: not retried until it changes.
    Unchanged,
}

/// 12 hex digits of SHA-256 over the module and its config: the version a span records.
pub fn content_hash(wasm: &[u8], config: &str) -> String {
    let mut h = Sha256::new();
    h.update(wasm);
    h.update([0]);
    h.update(config.as_bytes());
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Spans a plugin is validated on (and `tracer plugins check` shows): an HTTP server request
/// with ids in its path, a failing client call, a gRPC call and a slow request.
pub fn samples() -> Vec<Span> {
    let res = Arc::new(Resource {
        pid: 4242,
        service_name: "checkout".into(),
        attributes: vec![
            kv(semconv::SERVICE_NAME, Value::Str("checkout".into())),
            kv(semconv::PROCESS_PID, Value::Int(4242)),
            kv(semconv::HOST_NAME, Value::Str("node-1".into())),
        ],
    });
    let t0 = 1_700_000_000_000_000_000u64;
    let s = |i: u8, kind, name: &str, dur_ms: u64, status, attrs: Vec<(&str, Value)>| Span {
        trace_id: [i.wrapping_mul(37); 16],
        span_id: [i; 8],
        parent_span_id: None,
        flags: 1,
        trace_state: None,
        kind,
        name: name.into(),
        start_unix_ns: t0,
        end_unix_ns: t0 + dur_ms * 1_000_000,
        status,
        attributes: attrs
            .into_iter()
            .map(|(k, v)| kv(k.to_owned(), v))
            .collect(),
        resource: res.clone(),
    };
    let str = |v: &str| Value::Str(v.into());
    vec![
        s(
            1,
            SpanKind::Server,
            "GET",
            3,
            Status::Unset,
            vec![
                (semconv::HTTP_REQUEST_METHOD, str("GET")),
                (
                    semconv::URL_PATH,
                    str("/users/123/orders/9f8e7d6c-1a2b-4c3d-8e9f-0a1b2c3d4e5f"),
                ),
                (semconv::URL_QUERY, str("token=REDACTED&page=REDACTED")),
                (semconv::URL_SCHEME, str("http")),
                (semconv::HTTP_RESPONSE_STATUS_CODE, Value::Int(200)),
                (semconv::SERVER_ADDRESS, str("checkout")),
                (semconv::SERVER_PORT, Value::Int(8080)),
                (semconv::NETWORK_PEER_ADDRESS, str("10.0.0.7")),
                (semconv::USER_AGENT_ORIGINAL, str("curl/8.5.0")),
            ],
        ),
        s(
            2,
            SpanKind::Client,
            "POST",
            40,
            Status::Error("503".into()),
            vec![
                (semconv::HTTP_REQUEST_METHOD, str("POST")),
                (
                    semconv::URL_FULL,
                    str("http://payments:9000/api/charge?key=REDACTED"),
                ),
                (semconv::HTTP_RESPONSE_STATUS_CODE, Value::Int(503)),
                (semconv::SERVER_ADDRESS, str("payments")),
                (semconv::SERVER_PORT, Value::Int(9000)),
                (semconv::ERROR_TYPE, str("503")),
            ],
        ),
        s(
            3,
            SpanKind::Server,
            "shop.Cart/Add",
            1,
            Status::Unset,
            vec![
                (semconv::RPC_SYSTEM, str("grpc")),
                (semconv::RPC_SERVICE, str("shop.Cart")),
                (semconv::RPC_METHOD, str("Add")),
                (semconv::RPC_GRPC_STATUS_CODE, Value::Int(0)),
                (semconv::URL_PATH, str("/shop.Cart/Add")),
            ],
        ),
        s(
            4,
            SpanKind::Server,
            "GET",
            2500,
            Status::Unset,
            vec![
                (semconv::HTTP_REQUEST_METHOD, str("GET")),
                (semconv::URL_PATH, str("/reports/2024/0xdeadbeef01")),
                (semconv::HTTP_RESPONSE_STATUS_CODE, Value::Int(200)),
            ],
        ),
    ]
}

/// Watches the plugin directory: a change is loaded once the directory has looked the same for
/// one whole interval, so a file being copied in is not read half-written.
pub async fn watch(host: Arc<PluginHost>, every: Duration) {
    let Some(dir) = host.settings.dir.clone() else {
        return;
    };
    let mut applied = dir::fingerprint(&dir);
    let mut last = applied.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = dir.clone();
        let now = tokio::task::spawn_blocking(move || dir::fingerprint(&d))
            .await
            .unwrap_or_default();
        if now != applied && now == last {
            let (r, _) = reload(host.clone()).await;
            if r.pending.is_empty() {
                applied = now.clone();
            }
        }
        last = now;
    }
}

/// Reloads the directory off the async threads (compiling takes milliseconds per plugin) and
/// logs one line: info when all went well, warn when a file was refused.
pub async fn reload(host: Arc<PluginHost>) -> (ReloadReport, String) {
    let (r, msg) = tokio::task::spawn_blocking(move || {
        let r = host.reload_dir();
        let msg = r.summary(&host.chain());
        (r, msg)
    })
    .await
    .unwrap_or_else(|e| {
        (
            ReloadReport::default(),
            format!("plugin reload failed: {e}"),
        )
    });
    if r.rejected.is_empty() {
        tracing::info!("{msg}");
    } else {
        tracing::warn!("{msg}");
    }
    if let Some(t) = r.swap_time {
        tracing::debug!("plugin validated to active in {t:?}");
    }
    (r, msg)
}
