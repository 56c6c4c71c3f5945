//! The sandbox: one wasmtime engine, plugins compiled to components, each instance in its own
//! store with a memory cap and an epoch deadline per call. Plugins import only the `host`
//! interface of the contract: no filesystem, network, environment or clock beyond it.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::Duration,
};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ResourceLimiter, Store, Trap,
    component::{Component, Linker},
};

use super::{
    PluginError,
    abi::{
        self, Bindings, CONTRACTS, Compiled, HostVerdict, Interest, View, v2::tracer::plugin::host,
    },
    stats::PluginStats,
};
use crate::span::Span;

/// One epoch tick; deadlines are whole ticks.
const TICK: Duration = Duration::from_millis(1);

/// Why a call into a plugin did not return a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("ran past its deadline of {0:?}")]
    Timeout(Duration),
    #[error("tried to use more than its memory cap of {0} MiB")]
    Memory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned an invalid result: {0}")]
    Invalid(String),
}

/// Deadline of one `process-batch` call unless `--plugin-timeout-ms` says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(50);
/// Memory cap of each instance, in MiB, unless `--plugin-memory-mib` says otherwise.
pub const DEFAULT_MEMORY_MIB: usize = 64;

/// Limits applied to every plugin instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of one `process-batch` call.
    pub call_timeout: Duration,
    /// Deadline of `init` (and of instantiation).
    pub init_timeout: Duration,
    /// Linear memory cap per instance.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            init_timeout: Duration::from_secs(1),
            memory_bytes: DEFAULT_MEMORY_MIB << 20,
        }
    }
}

/// What a plugin's store carries: its identity for logs and counters, and its limits.
pub struct HostState {
    plugin: Arc<str>,
    stats: Arc<PluginStats>,
    memory_bytes: usize,
    memory_denied: bool,
    /// What the SDK's panic hook said during the current call: the trap that follows is
    /// reported with it rather than as a wasm backtrace.
    panic: Option<String>,
    /// Validation runs: counters and logs are not the live plugin's.
    self_test: bool,
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        use host::Level;
        let message: String = message.chars().take(1024).collect();
        if matches!(level, Level::Error) && message.starts_with("panicked") {
            self.panic = Some(message.clone());
        }
        // A chatty plugin must not flood the daemon's log.
        if !self.stats.log_allowed() {
            return;
        }
        let p = &*self.plugin;
        let test = if self.self_test { " (self-test)" } else { "" };
        match level {
            Level::Trace => tracing::trace!(plugin = p, "{message}{test}"),
            Level::Debug => tracing::debug!(plugin = p, "{message}{test}"),
            Level::Info => tracing::info!(plugin = p, "{message}{test}"),
            Level::Warn => tracing::warn!(plugin = p, "{message}{test}"),
            Level::Error => tracing::error!(plugin = p, "{message}{test}"),
        }
    }

    fn random_u64(&mut self) -> u64 {
        rand::random()
    }

    fn now_unix_nano(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        if !self.self_test {
            self.stats.custom_add(&name, delta);
        }
    }
}

/// Compiled components kept for reuse: a config-only change or a swap back to a previous
/// version skips the compiler.
const CACHED: usize = 16;

/// The engine every plugin shares, with the thread that advances its epoch.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    stop: Arc<AtomicBool>,
    cache: Mutex<Vec<([u8; 32], Compiled)>>,
}

impl Runtime {
    pub fn new() -> wasmtime::Result<Self> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg)?;
        let mut linker = Linker::new(&engine);
        abi::add_to_linker(&mut linker)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !s.load(Relaxed) {
                    thread::sleep(TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(Self {
            engine,
            linker,
            stop,
            cache: Mutex::default(),
        })
    }

    /// [`Self::compile`] through a small most-recently-used cache keyed by the file's SHA-256.
    pub fn compile_cached(&self, bytes: &[u8]) -> Result<Compiled, PluginError> {
        let key: [u8; 32] = Sha256::digest(bytes).into();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            let hit = cache.remove(i);
            let pre = hit.1.clone();
            cache.push(hit);
            return Ok(pre);
        }
        drop(cache);
        let pre = self.compile(bytes)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED {
            cache.remove(0);
        }
        cache.push((key, pre.clone()));
        Ok(pre)
    }

    /// Compiles and links a component (tens of milliseconds: never on the hot path).
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, PluginError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(PluginError::NotWasm);
        }
        // Byte 4..8: version and layer; a core module is layer 0.
        if bytes[6..8] == [0, 0] {
            return Err(PluginError::CoreModule);
        }
        let component =
            Component::from_binary(&self.engine, bytes).map_err(PluginError::Corrupt)?;
        let contract = contract_check(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(PluginError::Link)?;
        Compiled::new(contract, pre).map_err(PluginError::Exports)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// The contract version a component exports its plugin interface for, or what it was built
/// for instead.
fn contract_check(engine: &Engine, component: &Component) -> Result<&'static str, PluginError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()))
        .collect();
    for contract in CONTRACTS {
        let version = &contract["tracer:plugin@".len()..];
        if names.contains(&format!("tracer:plugin/plugin@{version}")) {
            return Ok(contract);
        }
    }
    Err(
        match names.iter().find(|n| n.starts_with("tracer:plugin/")) {
            Some(other) => PluginError::OtherContract {
                found: other.clone(),
            },
            None => PluginError::NotAPlugin {
                interfaces: if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                },
            },
        },
    )
}

/// A live instance: its store and the handles of its exports.
pub struct Instance {
    store: Store<HostState>,
    bindings: Bindings,
    limits: Limits,
}

impl Instance {
    /// Instantiates and runs `init(config)` within the init deadline.
    pub fn start(
        pre: &Compiled,
        plugin: Arc<str>,
        stats: Arc<PluginStats>,
        limits: &Limits,
        config: &str,
        self_test: bool,
    ) -> Result<(Self, Interest), PluginError> {
        let mut store = Store::new(
            pre.engine(),
            HostState {
                plugin,
                stats,
                memory_bytes: limits.memory_bytes,
                memory_denied: false,
                panic: None,
                self_test,
            },
        );
        store.limiter(|s| s);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(limits.init_timeout));
        let bindings = match pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => {
                return Err(PluginError::Init(classify(
                    e,
                    &store,
                    limits.init_timeout,
                    limits,
                )));
            }
        };
        let mut inst = Self {
            store,
            bindings,
            limits: limits.clone(),
        };
        let interest = inst
            .call(limits.init_timeout, |b, s| b.init(s, config))
            .map_err(PluginError::Init)?;
        let interest =
            interest.map_err(|msg| PluginError::ConfigRefused(msg.chars().take(512).collect()))?;
        Ok((inst, interest))
    }

    /// Sends `batch` as `view` allows; the verdicts come back in host types, not yet checked
    /// against the contract's limits.
    pub fn process(&mut self, batch: &[Span], view: &View) -> Result<Vec<HostVerdict>, CallError> {
        let timeout = self.limits.call_timeout;
        self.call(timeout, |b, s| b.process(s, batch, view))?
            .map_err(CallError::Invalid)
    }

    fn call<R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&mut Bindings, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        // Deadlines count from now: re-armed before every call.
        self.store.set_epoch_deadline(ticks(timeout));
        self.store.data_mut().memory_denied = false;
        self.store.data_mut().panic = None;
        f(&mut self.bindings, &mut self.store)
            .map_err(|e| classify(e, &self.store, timeout, &self.limits))
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() as u64 / TICK.as_millis() as u64).max(1)
}

fn classify(
    e: wasmtime::Error,
    store: &Store<HostState>,
    timeout: Duration,
    limits: &Limits,
) -> CallError {
    if store.data().memory_denied {
        return CallError::Memory(limits.memory_bytes >> 20);
    }
    match (e.downcast_ref::<Trap>(), &store.data().panic) {
        (Some(Trap::Interrupt), _) => CallError::Timeout(timeout),
        // The plugin's own words; the wasm backtrace says nothing to its author.
        (_, Some(panic)) => CallError::Trap(panic.clone()),
        _ => CallError::Trap(format!("{e:#}").chars().take(512).collect()),
    }
}
