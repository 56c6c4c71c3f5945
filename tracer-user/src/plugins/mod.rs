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
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use abi::SUPPORTED;
pub use chain::{CHAIN_ATTRIBUTE, Canary, Chain, FAILED_ATTRIBUTE, Loaded, OnFailure, Slot};
use prometheus_client::metrics::family::Family;
pub use runtime::{CallError, DEFAULT_CALL_TIMEOUT, DEFAULT_MEMORY_MIB, Limits};
use runtime::{Instance, Runtime};
use stats::{Families, PluginStats};

use crate::{
    changes::{Change, Changes, Outcome as ChangeOutcome, Trigger},
    context::SAMPLED,
    metrics::{Counter, Gauge, Registry},
    semconv,
    span::{Resource, Span, SpanKind, Status, Value, kv},
};

/// Where the daemon looks for plugins unless told otherwise.
pub const DEFAULT_DIR: &str = "/etc/tracer/plugins";
/// How often the daemon looks at the plugin directory ([`watch`]).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// `NAME.canary.wasm` runs beside `NAME.wasm` as its canary.
pub const CANARY_SUFFIX: &str = ".canary";
/// Versions no longer running whose counters /metrics keeps serving.
const RETIRED_KEPT: usize = 16;
/// Share of traces a canary takes unless its config says `[tracer] canary = F`.
pub const DEFAULT_CANARY_FRACTION: f64 = 0.1;

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
    #[error(
        "its config's [tracer] table: {0} (on-failure = \"pass\" or \"drop\", canary = a share of traces from 0 to 1)"
    )]
    HostSettings(String),
    #[error(
        "a canary needs the stable version it runs beside: there is no {stable}.wasm (rename the file to {stable}.wasm to run it on all traffic)"
    )]
    CanaryAlone { stable: String },
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
    /// Withdrawn by `tracer plugins rollback`; stays out until its content changes.
    RolledBack(String),
}

impl FileState {
    fn label(&self) -> Option<&'static str> {
        match self {
            FileState::Active => None,
            FileState::Rejected(_) => Some("rejected"),
            FileState::Quarantined(_) => Some("quarantined"),
            FileState::RolledBack(_) => Some("rolled_back"),
        }
    }
}

#[derive(Clone, Debug)]
struct FileRecord {
    hash: String,
    state: FileState,
}

/// What the host takes from a plugin's config (its `[tracer]` table), and the rest.
struct HostSettings {
    /// None when the config does not say.
    on_failure: Option<OnFailure>,
    /// The share of traces, when this version runs as a canary.
    canary: Option<f64>,
    /// What the plugin's `init` gets.
    plugin_config: String,
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
    /// What changed, one item each, for the reload's event.
    pub fn changes(&self) -> Vec<String> {
        let mut what: Vec<String> = self.loaded.iter().map(|l| format!("loaded {l}")).collect();
        what.extend(self.unloaded.iter().map(|u| format!("unloaded {u}")));
        what.extend(
            self.rejected
                .iter()
                .map(|(n, why)| format!("refused {n}: {why}")),
        );
        what
    }

    pub fn outcome(&self) -> ChangeOutcome {
        if !self.rejected.is_empty() {
            ChangeOutcome::rejected
        } else if self.swapped_to.is_some() {
            ChangeOutcome::applied
        } else {
            ChangeOutcome::unchanged
        }
    }

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
    /// By version (`name@hash`): each version counts on its own.
    stats: Mutex<HashMap<String, Arc<PluginStats>>>,
    /// The version each plugin ran before its current one, while it worked: where a
    /// quarantine or `tracer plugins rollback` goes back to.
    previous: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Versions that stopped running, oldest first, whose counters are still served.
    retired: Mutex<VecDeque<String>>,
    files: Mutex<BTreeMap<String, FileRecord>>,
    last_error: Mutex<Option<String>>,
    /// One reload at a time (watcher, SIGHUP and the admin endpoint may race).
    reloading: Mutex<()>,
    families: Families,
    pub metrics: HostMetrics,
    /// Where every change of the chain is reported.
    pub changes: Arc<Changes>,
    /// Export spans whose upstream's context said "not sampled" (`--export-unsampled`).
    pub export_unsampled: AtomicBool,
}

/// What the host counts, and gauges of the chain and the files it runs.
#[derive(Debug)]
pub struct HostMetrics {
    pub spans_dropped: Counter,
    pub spans_unsampled: Counter,
    pub spans_failed: Counter,
    pub reloads: Counter,
    pub reload_failures: Counter,
    chain_version: Gauge,
    active: Family<[(&'static str, String); 3], Gauge>,
    not_running: Family<[(&'static str, String); 2], Gauge>,
}

impl HostMetrics {
    fn new(reg: &Registry) -> Self {
        let active = Family::default();
        reg.register(
            "plugin_active",
            "1 for each plugin version in the running chain, by role (stable or canary)",
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
            spans_unsampled: reg.counter("spans_unsampled", "Spans not exported because the upstream's trace context said not sampled (--export-unsampled keeps them); the request metrics count them"),
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
            previous: Mutex::default(),
            retired: Mutex::default(),
            files: Mutex::default(),
            last_error: Mutex::default(),
            reloading: Mutex::default(),
            families: Families::register(reg),
            metrics: HostMetrics::new(reg),
            changes: Arc::new(Changes::new(reg)),
            export_unsampled: AtomicBool::new(false),
        })
    }

    /// The chain new batches get.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.load_full()
    }

    /// Runs a batch through the current chain (loaded once: one version per batch).
    pub fn process(&self, spans: &mut Vec<Span>) {
        self.process_keeping_dropped(spans, &mut Vec::new());
    }

    /// [`PluginHost::process`], moving the spans that are not to be exported to `dropped`
    /// (as they were when dropped): those a plugin dropped, then those whose upstream said
    /// "not sampled" unless `export_unsampled`. Both are requests the metrics count.
    pub fn process_keeping_dropped(&self, spans: &mut Vec<Span>, dropped: &mut Vec<Span>) {
        self.run_chain(spans, dropped);
        if !self.export_unsampled.load(Relaxed) {
            let before = dropped.len();
            dropped.extend(spans.extract_if(.., |s| s.flags & SAMPLED == 0));
            self.metrics
                .spans_unsampled
                .inc_by((dropped.len() - before) as u64);
        }
    }

    fn run_chain(&self, spans: &mut Vec<Span>, dropped: &mut Vec<Span>) {
        let chain = self.chain.load();
        if chain.is_empty() || spans.is_empty() {
            return;
        }
        let r = chain.process(spans, dropped);
        self.metrics.spans_dropped.inc_by(r.dropped);
        self.metrics.spans_failed.inc_by(r.failed_closed);
        if r.quarantined {
            drop(chain);
            self.handle_quarantine();
        }
    }

    fn stats_for(&self, name: &str, hash: &str) -> Arc<PluginStats> {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(format!("{name}@{hash}"))
            .or_insert_with(|| Arc::new(self.families.stats(name, hash)))
            .clone()
    }

    /// What the host takes from a plugin's config: its `[tracer]` table (`on-failure`), which
    /// the plugin never sees. An unset on-failure is None: the plugin or the default decides.
    fn host_settings(&self, config: &str) -> Result<HostSettings, PluginError> {
        let mut out = HostSettings {
            on_failure: None,
            canary: None,
            plugin_config: config.to_owned(),
        };
        // Not TOML, or no [tracer] table: the plugin's own business, handed over as it is.
        let Ok(mut table) = config.parse::<toml::Table>() else {
            return Ok(out);
        };
        let Some(host) = table.remove("tracer") else {
            return Ok(out);
        };
        let bad = |why: &str| PluginError::HostSettings(why.to_owned());
        let host = host.as_table().ok_or_else(|| bad("not a table"))?;
        for (k, v) in host {
            match (k.as_str(), v.as_str()) {
                ("on-failure", Some("pass")) => out.on_failure = Some(OnFailure::Pass),
                ("on-failure", Some("drop")) => out.on_failure = Some(OnFailure::Drop),
                ("on-failure", _) => return Err(bad(&format!("on-failure = {v}"))),
                ("canary", _) => match v.as_float().or(v.as_integer().map(|i| i as f64)) {
                    Some(f) if (0.0..=1.0).contains(&f) => out.canary = Some(f),
                    _ => return Err(bad(&format!("canary = {v}"))),
                },
                _ => return Err(bad(&format!("unknown key {k:?}"))),
            }
        }
        out.plugin_config = toml::to_string(&table).map_err(|e| bad(&e.to_string()))?;
        Ok(out)
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
        let HostSettings {
            on_failure: configured,
            canary,
            plugin_config,
        } = self.host_settings(config)?;
        let hash = content_hash(wasm, config);
        let name: Arc<str> = name.into();
        let limits = &self.settings.limits;
        let start = |stats: Arc<PluginStats>, self_test: bool| {
            Instance::start(&pre, name.clone(), stats, limits, &plugin_config, self_test)
        };
        // Counted nowhere: the self-test is not the plugin's work.
        let test_stats = Arc::new(Families::default().stats(&name, &hash));
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
            // A candidate: its failure refuses it, it has no quarantine to go to.
            0,
            on_failure,
            None,
        );
        let mut sample = samples();
        probe
            .run(&mut sample, &mut Vec::new())
            .map_err(PluginError::SelfTest)?;
        let stats = self.stats_for(&name, &hash);
        let (inst, interest) = start(stats.clone(), false)?;
        Ok(Arc::new(Loaded::new(
            name,
            file.to_owned(),
            hash,
            // What a restarted instance's init gets: the plugin's part only.
            plugin_config.clone(),
            pre,
            limits.clone(),
            stats,
            inst,
            interest,
            self.settings.max_failures,
            on_failure,
            canary,
        )))
    }

    /// Publishes a chain of these plugins, each alone in its slot; returns its version.
    pub fn install(&self, plugins: Vec<Arc<Loaded>>) -> u64 {
        self.install_slots(plugins.into_iter().map(Slot::new).collect())
    }

    fn install_slots(&self, slots: Vec<Slot>) -> u64 {
        let v = self.next_version.fetch_add(1, Relaxed);
        self.chain.store(Arc::new(Chain::new(v, slots)));
        self.publish();
        self.forget_unused_stats();
        v
    }

    /// Sets the gauges of the chain and the files from what runs now.
    fn publish(&self) {
        let m = &self.metrics;
        let chain = self.chain.load_full();
        m.chain_version.set(chain.version as i64);
        m.active.clear();
        for slot in &chain.slots {
            for p in slot.versions() {
                let role = if Arc::ptr_eq(p, &slot.stable) {
                    "stable"
                } else {
                    "canary"
                };
                m.active
                    .get_or_create(&[
                        ("plugin", p.name.to_string()),
                        ("version", p.hash.clone()),
                        ("role", role.to_string()),
                    ])
                    .set(1);
            }
        }
        let files = self.files.lock().map(|f| f.clone()).unwrap_or_default();
        m.not_running.clear();
        for (n, r) in files {
            if let Some(state) = r.state.label() {
                m.not_running
                    .get_or_create(&[("plugin", n), ("state", state.to_string())])
                    .set(1);
            }
        }
    }

    /// Keeps the counters of versions that no longer run for a while (they say what a removed
    /// or quarantined version did), then forgets the oldest: /metrics stays bounded however
    /// often plugins change.
    fn forget_unused_stats(&self) {
        let chain = self.chain.load_full();
        let previous = self.previous.lock().map(|p| p.clone()).unwrap_or_default();
        let live: Vec<String> = chain
            .slots
            .iter()
            .flat_map(Slot::versions)
            .chain(previous.values())
            .map(|p| p.id())
            .collect();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|id| !live.contains(id));
        for id in stats.keys() {
            if !live.contains(id) && !retired.contains(id) {
                retired.push_back(id.clone());
            }
        }
        while retired.len() > RETIRED_KEPT {
            if let Some(st) = retired.pop_front().and_then(|id| stats.remove(&id)) {
                self.families.forget(&st);
            }
        }
    }

    /// Reports a change of the chain (a reload's, a quarantine's, a rollback's...).
    pub fn report(
        &self,
        trigger: Trigger,
        started: (SystemTime, Instant),
        what: Vec<String>,
        outcome: ChangeOutcome,
    ) {
        self.changes.record(Change {
            trigger,
            outcome,
            started: started.0,
            duration: started.1.elapsed(),
            what,
            chain: self.chain.load().label().to_owned(),
        });
    }

    /// After a plugin reached its failure limit: a canary goes (its stable version takes all
    /// traffic again), a stable version goes back to the version before it when there is
    /// one. Without one, a plugin that drops on failure stays, dropping every batch (taking it
    /// out would let spans through unprocessed: a redactor's, unredacted); one that passes
    /// on failure is taken out.
    fn handle_quarantine(&self) {
        let _g = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = (SystemTime::now(), Instant::now());
        let cur = self.chain.load_full();
        let mut what = Vec::new();
        let mut out = Vec::new();
        let mut slots = Vec::new();
        for slot in &cur.slots {
            let mut next = Slot {
                stable: slot.stable.clone(),
                canary: None,
            };
            match &slot.canary {
                Some(c) if c.plugin.is_quarantined() => {
                    what.push(format!(
                        "canary {} failed repeatedly: rolled back, {} takes all traffic",
                        c.plugin.id(),
                        slot.stable.id()
                    ));
                    out.push((
                        format!("{}{CANARY_SUFFIX}", c.plugin.name),
                        c.plugin.clone(),
                    ));
                }
                Some(c) => {
                    next.canary = Some(Canary {
                        plugin: c.plugin.clone(),
                        fraction: c.fraction,
                    })
                }
                None => {}
            }
            if slot.stable.is_quarantined() {
                let prev = self
                    .previous
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&*slot.stable.name));
                out.push((slot.stable.name.to_string(), slot.stable.clone()));
                match prev {
                    Some(p) => {
                        what.push(format!(
                            "{} failed repeatedly: rolled back to {}",
                            slot.stable.id(),
                            p.id()
                        ));
                        next.stable = p;
                    }
                    None if slot.stable.on_failure == OnFailure::Drop => {
                        what.push(format!(
                            "{} failed repeatedly and has no earlier version: it stays in the \
                             chain and every batch is dropped (on-failure = drop) until its file \
                             or config changes",
                            slot.stable.id()
                        ));
                    }
                    None => {
                        what.push(format!(
                            "{} failed repeatedly and has no earlier version: taken out of the \
                             chain until its file or config changes",
                            slot.stable.id()
                        ));
                        continue;
                    }
                }
            }
            slots.push(next);
        }
        if what.is_empty() {
            return;
        }
        {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            for (file, p) in &out {
                let why = p
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_default();
                files.insert(
                    file.clone(),
                    FileRecord {
                        hash: p.hash.clone(),
                        state: FileState::Quarantined(why),
                    },
                );
            }
        }
        let v = self.install_slots(slots);
        for w in &what {
            tracing::error!("plugin chain v{v}: {w}");
        }
        self.report(Trigger::quarantine, t0, what, ChangeOutcome::applied);
    }

    /// `tracer plugins rollback NAME`: stops the canary of `name` when one runs, otherwise
    /// goes back to the version that ran before the current one. The withdrawn file stays
    /// out until its content changes (a restart loads the directory as it is).
    pub fn rollback(&self, name: &str) -> Result<String, String> {
        let _g = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = (SystemTime::now(), Instant::now());
        let cur = self.chain.load_full();
        let i = slot_index(name, &cur)?;
        let slot = &cur.slots[i];
        let (file, withdrawn, next, msg) = match &slot.canary {
            Some(c) => (
                format!("{name}{CANARY_SUFFIX}"),
                c.plugin.clone(),
                Slot::new(slot.stable.clone()),
                format!(
                    "stopped canary {}: {} takes all traffic",
                    c.plugin.id(),
                    slot.stable.id()
                ),
            ),
            None => {
                let prev = self.previous.lock().ok().and_then(|mut p| p.remove(name));
                let Some(prev) = prev else {
                    return Err(format!(
                        "{name}: no earlier version ran since the tracer started, nothing to go \
                         back to (put the old file back in the plugin directory instead)"
                    ));
                };
                let msg = format!(
                    "rolled back {} to {}; {}.wasm stays out until it changes",
                    slot.stable.id(),
                    prev.id(),
                    name
                );
                (name.to_owned(), slot.stable.clone(), Slot::new(prev), msg)
            }
        };
        self.record(
            &file,
            withdrawn.hash.clone(),
            FileState::RolledBack(format!("withdrawn by rollback ({})", withdrawn.id())),
        );
        Ok(self.replace_slot(&cur, i, next, Trigger::rollback, t0, msg))
    }

    /// `tracer plugins promote NAME`: the canary becomes the stable version, on disk too
    /// (`NAME.canary.wasm` and its config are renamed over `NAME.wasm`'s), so a restart
    /// runs it as well. The old stable version is kept to roll back to.
    pub fn promote(&self, name: &str) -> Result<String, String> {
        let _g = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = (SystemTime::now(), Instant::now());
        let cur = self.chain.load_full();
        let i = slot_index(name, &cur)?;
        let slot = &cur.slots[i];
        let Some(c) = &slot.canary else {
            return Err(format!("{name} has no canary running: nothing to promote"));
        };
        let Some(dir) = &self.settings.dir else {
            return Err("plugins are off".into());
        };
        let path = |suffix: &str, ext: &str| dir.join(format!("{name}{suffix}.{ext}"));
        // The config first: the watcher, which waits for this lock, never sees the new module
        // with the old config.
        let canary_toml = path(CANARY_SUFFIX, "toml");
        if canary_toml.exists() {
            std::fs::rename(&canary_toml, path("", "toml"))
                .map_err(|e| format!("cannot rename {}: {e}", canary_toml.display()))?;
        }
        let canary_wasm = path(CANARY_SUFFIX, "wasm");
        std::fs::rename(&canary_wasm, path("", "wasm"))
            .map_err(|e| format!("cannot rename {}: {e}", canary_wasm.display()))?;
        if let Ok(mut p) = self.previous.lock() {
            p.insert(name.to_owned(), slot.stable.clone());
        }
        if let Ok(mut f) = self.files.lock() {
            f.remove(&format!("{name}{CANARY_SUFFIX}"));
        }
        self.record(name, c.plugin.hash.clone(), FileState::Active);
        let msg = format!(
            "promoted canary {} to all traffic (was {}); `tracer plugins rollback {name}` goes back",
            c.plugin.id(),
            slot.stable.id()
        );
        let next = Slot::new(c.plugin.clone());
        Ok(self.replace_slot(&cur, i, next, Trigger::promote, t0, msg))
    }

    /// Installs `chain` with slot `i` replaced by `next`, and reports it as `msg`.
    fn replace_slot(
        &self,
        chain: &Chain,
        i: usize,
        next: Slot,
        trigger: Trigger,
        t0: (SystemTime, Instant),
        msg: String,
    ) -> String {
        let mut slots: Vec<Slot> = chain.slots.iter().map(Slot::copy).collect();
        slots[i] = next;
        let v = self.install_slots(slots);
        tracing::warn!("plugin chain v{v}: {msg}");
        self.report(trigger, t0, vec![msg.clone()], ChangeOutcome::applied);
        msg
    }

    /// Re-reads the plugin directory and swaps in what changed. Unchanged files keep their
    /// running instance; a file that fails keeps the last good version of that plugin.
    /// `NAME.canary.wasm` runs beside `NAME.wasm` on a share of the traces.
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
        let (canaries, stables): (Vec<_>, Vec<_>) = entries
            .iter()
            .partition(|e| e.name.ends_with(CANARY_SUFFIX));
        let current = self.chain.load_full();
        let mut next = Vec::new();
        let mut last_validated = None;
        for e in &stables {
            let old = current.slot(&e.name);
            let Some(stable) = self.load_slot_part(e, &e.name, old.map(|s| &s.stable), &mut report)
            else {
                continue;
            };
            let old_stable = old.map(|s| &s.stable);
            if old_stable.is_none_or(|o| !Arc::ptr_eq(o, &stable)) {
                last_validated = Some(Instant::now());
            }
            if let Some(o) = old_stable
                && !Arc::ptr_eq(o, &stable)
                && !o.is_quarantined()
                && let Ok(mut p) = self.previous.lock()
            {
                p.insert(e.name.clone(), o.clone());
            }
            let mut slot = Slot::new(stable);
            let canary_file = format!("{}{CANARY_SUFFIX}", e.name);
            if let Some(c) = canaries.iter().find(|c| c.name == canary_file) {
                // A canary's config is its own .canary.toml, else its stable version's.
                let c = dir::Entry {
                    config: c.config.clone().or_else(|| e.config.clone()),
                    ..(*c).clone()
                };
                let old_c = old.and_then(|s| s.canary.as_ref()).map(|c| &c.plugin);
                if let Some(p) = self.load_slot_part(&c, &e.name, old_c, &mut report) {
                    if old_c.is_none_or(|o| !Arc::ptr_eq(o, &p)) {
                        last_validated = Some(Instant::now());
                    }
                    slot.canary = Some(Canary {
                        fraction: p.canary.unwrap_or(DEFAULT_CANARY_FRACTION),
                        plugin: p,
                    });
                }
            }
            next.push(slot);
        }
        for c in &canaries {
            let stable = c.name.trim_end_matches(CANARY_SUFFIX);
            if !stables.iter().any(|e| e.name == stable) {
                let why = PluginError::CanaryAlone {
                    stable: stable.to_owned(),
                };
                self.refused(&c.name, String::new(), &why);
                report.rejected.push((c.name.clone(), why));
            }
        }
        for p in current.slots.iter().flat_map(Slot::versions) {
            if !next
                .iter()
                .flat_map(Slot::versions)
                .any(|n| Arc::ptr_eq(n, p))
            {
                report.unloaded.push(p.id());
            }
        }
        {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.retain(|n, _| entries.iter().any(|e| &e.name == n));
        }
        if let Ok(mut p) = self.previous.lock() {
            p.retain(|n, _| stables.iter().any(|e| &e.name == n));
        }
        let same = next.len() == current.slots.len()
            && next.iter().zip(&current.slots).all(|(a, b)| a.same_as(b));
        if !same {
            let v = self.install_slots(next);
            report.swapped_to = Some(v);
            report.swap_time = last_validated.map(|t| t.elapsed());
            self.metrics.reloads.inc();
        }
        self.publish();
        report
    }

    /// One version of a slot from its file: the new one, the one running when the file is
    /// unchanged or refused, or None when there is neither.
    fn load_slot_part(
        &self,
        e: &dir::Entry,
        plugin: &str,
        old: Option<&Arc<Loaded>>,
        report: &mut ReloadReport,
    ) -> Option<Arc<Loaded>> {
        match self.load_entry(e, plugin, old) {
            Ok(p) => {
                if old.is_none_or(|o| !Arc::ptr_eq(o, &p)) {
                    let role = if e.name.ends_with(CANARY_SUFFIX) {
                        format!(
                            " (canary, {:.0}% of traces)",
                            100.0 * p.canary.unwrap_or(DEFAULT_CANARY_FRACTION)
                        )
                    } else {
                        String::new()
                    };
                    report.loaded.push(format!("{}{role}", p.id()));
                }
                Some(p)
            }
            Err(Outcome::Pending) => {
                report.pending.push(e.name.clone());
                old.cloned()
            }
            Err(Outcome::Rejected(why)) => {
                report.rejected.push((e.name.clone(), why));
                old.cloned()
            }
            Err(Outcome::Unchanged) => old.cloned(),
        }
    }

    /// Loads one directory entry unless its content is what already runs, or was already
    /// refused, quarantined or rolled back (then what runs stays).
    fn load_entry(
        &self,
        e: &dir::Entry,
        plugin: &str,
        old: Option<&Arc<Loaded>>,
    ) -> Result<Arc<Loaded>, Outcome> {
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
            return Ok(o.clone());
        }
        let prev = self.files.lock().ok().and_then(|f| f.get(&e.name).cloned());
        if let Some(r) = prev
            && r.hash == hash
            && r.state.label().is_some()
        {
            return Err(Outcome::Unchanged);
        }
        match self.load(plugin, &e.wasm, &wasm, &config) {
            Ok(p) => {
                self.record(&e.name, hash, FileState::Active);
                Ok(p)
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
        let describe = |p: &Arc<Loaded>, role: &str, fraction: Option<f64>| {
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
                "role": role,
                "contract": p.contract,
                "canary_fraction": fraction,
                "file": p.file.display().to_string(),
                "state": if p.is_quarantined() { "quarantined" } else { "active" },
                "on_failure": match p.on_failure { OnFailure::Pass => "pass", OnFailure::Drop => "drop" },
                "loaded_at_unix": p.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "interest": {"attributes": attrs, "resource_attributes": res, "span_name": name},
                "counters": counters,
                "call_seconds": p.stats.call_seconds.get(),
                "last_error": p.last_error.lock().ok().and_then(|e| e.clone()),
            })
        };
        let previous = self.previous.lock().map(|p| p.clone()).unwrap_or_default();
        let mut plugins = Vec::new();
        for slot in &chain.slots {
            plugins.push(describe(&slot.stable, "stable", None));
            if let Some(c) = &slot.canary {
                plugins.push(describe(&c.plugin, "canary", Some(c.fraction)));
            }
        }
        let rollback_to: serde_json::Map<_, _> = previous
            .iter()
            .map(|(n, p)| (n.clone(), json!(p.id())))
            .collect();
        let others: Vec<_> = files
            .iter()
            .filter_map(|(n, r)| match &r.state {
                FileState::Active => None,
                FileState::Rejected(why)
                | FileState::Quarantined(why)
                | FileState::RolledBack(why) => {
                    Some(json!({"name": n, "state": r.state.label(), "error": why}))
                }
            })
            .collect();
        json!({
            "directory": self.settings.dir.as_ref().map(|d| d.display().to_string()),
            "chain": {"version": chain.version, "label": chain.label()},
            "plugins": plugins,
            "not_running": others,
            "rollback_to": rollback_to,
            "recent_changes": self.changes.recent(),
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

/// Where plugin `name` sits in `chain`, or what runs instead.
fn slot_index(name: &str, chain: &Chain) -> Result<usize, String> {
    chain
        .slots
        .iter()
        .position(|s| *s.stable.name == *name)
        .ok_or_else(|| {
            let names: Vec<&str> = chain.slots.iter().map(|s| &*s.stable.name).collect();
            format!(
                "no plugin {name:?} in the chain (running: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })
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
    // Keys are static, as the span builder's are (semconv constants).
    let s =
        |i: u8, kind, name: &str, dur_ms: u64, status, attrs: Vec<(&'static str, Value)>| Span {
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
            attributes: attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
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
            let (r, _) = reload(host.clone(), Some(Trigger::file_watch)).await;
            if r.pending.is_empty() {
                applied = now.clone();
            }
        }
        last = now;
    }
}

/// Reloads the directory off the async threads (compiling takes milliseconds per plugin) and
/// logs one line: info when all went well, warn when a file was refused. With a trigger, the
/// reload is also reported as a change (without, the caller reports it with its own).
pub async fn reload(host: Arc<PluginHost>, trigger: Option<Trigger>) -> (ReloadReport, String) {
    let (r, msg) = tokio::task::spawn_blocking(move || {
        let t0 = (SystemTime::now(), Instant::now());
        let r = host.reload_dir();
        let msg = r.summary(&host.chain());
        if let Some(t) = trigger {
            host.report(t, t0, r.changes(), r.outcome());
        }
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
