//! The only dependency a tracer span plugin needs.
//!
//! A plugin is a type implementing [`Plugin`] (every method but `init` has a no-op default)
//! and one [`export_plugin!`] line:
//!
//! ```ignore
//! use tracer_plugin_sdk::{Action, Config, Interest, Plugin, Resource, Span};
//!
//! struct DropHealthChecks;
//!
//! impl Plugin for DropHealthChecks {
//!     fn init(_: &Config) -> Result<Self, String> {
//!         Ok(Self)
//!     }
//!     fn interest(&self) -> Interest {
//!         Interest::none().attributes(["url.path"])
//!     }
//!     fn on_span(&mut self, span: &Span, _: &Resource) -> Action {
//!         if span.str_attr("url.path") == Some("/healthz") { Action::drop() } else { Action::keep() }
//!     }
//! }
//!
//! tracer_plugin_sdk::export_plugin!(DropHealthChecks);
//! ```
//!
//! Built for `wasm32-unknown-unknown` and turned into a component (`cargo xtask build-plugins`),
//! it imports nothing but the tracer's `host` interface. The same code builds natively, where
//! the host functions have stand-ins, so plugin logic is unit-tested with plain `cargo test`
//! (see [`testing`]).

pub use serde;
pub use wit_bindgen;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "span-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_span_plugin",
        default_bindings_module: "tracer_plugin_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

use std::{any::Any, cell::RefCell, fmt};

use bindings::tracer::plugin::host;
pub use bindings::tracer::plugin::types::{FailurePolicy, SpanKind};
pub use host::Level;

mod packed;

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Boolean(bool),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub key: String,
    pub value: Value,
}

/// OpenTelemetry span status; `Error` carries its description.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Unset,
    Ok,
    Error(String),
}

/// The attributes of one process (an OpenTelemetry resource), shared by its spans.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Resource {
    /// Only the keys matching [`Interest::resource_attributes`].
    pub attributes: Vec<Attribute>,
}

/// One finished span, as much of it as the plugin's [`Interest`] asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The 16 bytes of the trace id as two big-endian halves: (bytes 0..8, bytes 8..16).
    pub trace_id: (u64, u64),
    /// The 8 bytes of the span id, big-endian.
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    /// W3C trace flags (see [`Span::sampled`]).
    pub trace_flags: u8,
    /// W3C `tracestate`; None unless [`Interest::trace_state`] asked for it.
    pub trace_state: Option<String>,
    pub kind: SpanKind,
    /// Empty unless [`Interest::span_name`] asked for it.
    pub name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: Status,
    /// Only the keys matching [`Interest::attributes`].
    pub attributes: Vec<Attribute>,
    /// Index into the batch's resources (see [`Batch::resource`]).
    pub resource: u32,
}

/// A change to one span.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Add the attribute, or replace the value of the one with that key.
    Set(Attribute),
    /// Remove the attribute with this key (nothing happens if there is none).
    Remove(String),
    /// Rename the span.
    Rename(String),
}

impl Edit {
    /// `Set` of an attribute, without spelling out the [`Attribute`].
    pub fn set(key: impl Into<String>, value: impl Into<Value>) -> Self {
        Edit::Set(Attribute {
            key: key.into(),
            value: value.into(),
        })
    }
}

/// The decision for one span of the batch. Spans without a verdict are kept unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Index of the span in the batch.
    pub span: u32,
    /// False drops the span; edits are then ignored.
    pub keep: bool,
    pub edits: Vec<Edit>,
}

/// What a plugin needs to see ([`Interest::none`] and its builder methods), and what the
/// tracer does with a batch the plugin fails on.
#[derive(Clone, Debug, PartialEq)]
pub struct Interest {
    pub attributes: Vec<String>,
    pub resource_attributes: Vec<String>,
    pub span_name: bool,
    pub trace_state: bool,
    pub on_failure: FailurePolicy,
}

/// A span plugin. Only `init` is required.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its configuration (the plugin's `.toml` file). An error refuses
    /// the plugin with that message; the tracer keeps the previous version.
    fn init(config: &Config) -> Result<Self, String>;

    /// What the plugin needs to see of each span. Default: ids, kind, times and status only.
    fn interest(&self) -> Interest {
        Interest::none()
    }

    /// The decision for one span. Default: keep it unchanged.
    fn on_span(&mut self, _span: &Span, _resource: &Resource) -> Action {
        Action::keep()
    }

    /// The decisions for a whole batch. Default: `on_span` for each span.
    fn on_batch(&mut self, batch: &Batch<'_>, out: &mut Vec<Verdict>) {
        for (i, span) in batch.spans.iter().enumerate() {
            self.on_span(span, batch.resource(span)).push_to(i, out);
        }
    }
}

/// One batch of spans and the resources they point into.
pub struct Batch<'a> {
    pub spans: &'a [Span],
    pub resources: &'a [Resource],
}

impl Batch<'_> {
    /// The resource of a span (empty if the host sent an index out of range).
    pub fn resource(&self, span: &Span) -> &Resource {
        static EMPTY: Resource = Resource {
            attributes: Vec::new(),
        };
        self.resources.get(span.resource as usize).unwrap_or(&EMPTY)
    }
}

/// What happens to one span: kept or dropped, plus edits.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct Action {
    keep: bool,
    edits: Vec<Edit>,
}

impl Action {
    pub fn keep() -> Self {
        Self {
            keep: true,
            edits: Vec::new(),
        }
    }

    /// Drops the span (it is counted as dropped by this plugin).
    pub fn drop() -> Self {
        Self {
            keep: false,
            edits: Vec::new(),
        }
    }

    /// Sets an attribute (replacing the value of an existing one).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.edits.push(Edit::set(key, value));
        self
    }

    /// Removes an attribute.
    pub fn remove(mut self, key: impl Into<String>) -> Self {
        self.edits.push(Edit::Remove(key.into()));
        self
    }

    /// Renames the span.
    pub fn rename(mut self, name: impl Into<String>) -> Self {
        self.edits.push(Edit::Rename(name.into()));
        self
    }

    pub fn is_kept(&self) -> bool {
        self.keep
    }

    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    /// Appends the verdict for span `index`, unless the action changes nothing.
    pub fn push_to(self, index: usize, out: &mut Vec<Verdict>) {
        if !self.keep || !self.edits.is_empty() {
            out.push(Verdict {
                span: index as u32,
                keep: self.keep,
                edits: self.edits,
            });
        }
    }
}

impl AsRef<[Edit]> for Action {
    fn as_ref(&self) -> &[Edit] {
        &self.edits
    }
}

impl AsRef<[Edit]> for Verdict {
    fn as_ref(&self) -> &[Edit] {
        &self.edits
    }
}

impl Interest {
    /// Nothing beyond ids, trace flags, kind, times and status; failures handled as the
    /// tracer is configured to.
    pub fn none() -> Self {
        Self {
            attributes: Vec::new(),
            resource_attributes: Vec::new(),
            span_name: false,
            trace_state: false,
            on_failure: FailurePolicy::HostDefault,
        }
    }

    /// Span attribute key patterns to receive; `*` matches any run of characters.
    pub fn attributes<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.attributes.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Resource attribute key patterns to receive (`service.name`, `k8s.*`, ...).
    pub fn resource_attributes<S: Into<String>>(
        mut self,
        keys: impl IntoIterator<Item = S>,
    ) -> Self {
        self.resource_attributes
            .extend(keys.into_iter().map(Into::into));
        self
    }

    /// Receive the span name too.
    pub fn span_name(mut self) -> Self {
        self.span_name = true;
        self
    }

    /// Receive the W3C `tracestate` too.
    pub fn trace_state(mut self) -> Self {
        self.trace_state = true;
        self
    }

    /// What the tracer does with a batch when this plugin fails on it (a trap, its deadline,
    /// a result it refuses) or is out of the chain for failing: `Pass` lets it go on as it
    /// was, `Drop` drops it. A redactor says `Drop`: a span it did not see must not leave.
    /// An operator's `[tracer] on-failure` in the plugin's config overrules this.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }
}

fn find<'a>(attrs: &'a [Attribute], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|a| a.key == key).map(|a| &a.value)
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        find(&self.attributes, key)
    }

    /// A string attribute's value (None if absent or not a string).
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute's value (None if absent or not an integer).
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn trace_id_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.trace_id.0.to_be_bytes());
        b[8..].copy_from_slice(&self.trace_id.1.to_be_bytes());
        b
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    pub fn is_error(&self) -> bool {
        matches!(self.status, Status::Error(_))
    }

    /// The W3C trace flags the trace arrived with (or the tracer decided on).
    pub fn trace_flags(&self) -> u8 {
        self.trace_flags
    }

    /// Whether the `sampled` trace flag is set: someone upstream chose to record the trace.
    pub fn sampled(&self) -> bool {
        self.trace_flags & 1 != 0
    }

    /// The W3C `tracestate` (None unless [`Interest::trace_state`] asked for it, or if the
    /// trace has none).
    pub fn trace_state(&self) -> Option<&str> {
        self.trace_state.as_deref()
    }
}

impl Resource {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        find(&self.attributes, key)
    }

    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Boolean(b) => write!(f, "{b}"),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

/// The plugin's configuration: the text of its `.toml` file, empty if there is none.
#[derive(Clone, Debug, Default)]
pub struct Config {
    text: String,
}

impl Config {
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Deserializes the TOML text (an empty file is an empty table, so `#[serde(default)]`
    /// fields get their defaults). The error names the bad key or line.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        toml::from_str(&self.text).map_err(|e| format!("invalid config: {e}"))
    }
}

/// A line in the tracer's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[plugin {level:?}] {message}");
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log($crate::Level::Info, &format!($($t)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log($crate::Level::Warn, &format!($($t)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log($crate::Level::Debug, &format!($($t)*)) };
}

/// A random number from the host.
pub fn random_u64() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return host::random_u64();
    #[cfg(not(target_arch = "wasm32"))]
    return testing::next_random();
}

/// Nanoseconds since the Unix epoch, from the host.
pub fn now_unix_nano() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return host::now_unix_nano();
    #[cfg(not(target_arch = "wasm32"))]
    return std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
}

thread_local! {
    /// Counter increments of the current batch, sent to the host once at its end.
    static COUNTS: RefCell<Vec<(String, u64)>> = const { RefCell::new(Vec::new()) };
    static STATE: RefCell<Option<Box<dyn Any>>> = RefCell::new(None);
}

/// Adds to the plugin's counter `name`, served as
/// `tracer_plugin_custom_total{plugin="...",name="..."}`. Cheap: sums are sent once per batch.
pub fn count(name: &str, delta: u64) {
    COUNTS.with(|c| {
        let mut c = c.borrow_mut();
        match c.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v += delta,
            None => c.push((name.to_owned(), delta)),
        }
    });
}

fn flush_counts() {
    let counts = COUNTS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    for (name, delta) in counts {
        #[cfg(target_arch = "wasm32")]
        host::counter_add(&name, delta);
        #[cfg(not(target_arch = "wasm32"))]
        testing::record_count(name, delta);
    }
}

#[doc(hidden)]
pub mod __rt {
    use super::*;
    use bindings::tracer::plugin::types as wit;

    /// What `init` answers the host.
    pub fn init_export<P: Plugin>(config: String) -> Result<wit::Interest, String> {
        #[cfg(target_arch = "wasm32")]
        panic_to_log();
        init::<P>(config).map(packed::interest)
    }

    /// What `process-batch` answers the host.
    pub fn process_export<P: Plugin>(batch: wit::Batch) -> wit::Verdicts {
        let (spans, resources) = packed::unpack(&batch);
        drop(batch);
        packed::pack(process::<P>(spans, resources))
    }

    /// Sends a panic's message and location to the tracer's log before the trap that
    /// follows it, which on its own only says "unreachable" at some wasm offset.
    #[cfg(target_arch = "wasm32")]
    fn panic_to_log() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let msg = info
                    .payload_as_str()
                    .unwrap_or("(a panic payload that is not a string)");
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                host::log(Level::Error, &format!("panicked{at}: {msg}"));
            }))
        });
    }

    pub fn init<P: Plugin>(config: String) -> Result<Interest, String> {
        let plugin = P::init(&Config::new(config))?;
        let interest = plugin.interest();
        STATE.with(|s| *s.borrow_mut() = Some(Box::new(plugin)));
        Ok(interest)
    }

    pub fn process<P: Plugin>(spans: Vec<Span>, resources: Vec<Resource>) -> Vec<Verdict> {
        let mut out = Vec::new();
        STATE.with(|s| {
            let mut state = s.borrow_mut();
            let plugin = state
                .as_mut()
                .and_then(|p| p.downcast_mut::<P>())
                .expect("process-batch called before a successful init");
            plugin.on_batch(
                &Batch {
                    spans: &spans,
                    resources: &resources,
                },
                &mut out,
            );
        });
        flush_counts();
        out
    }
}

/// Exports a [`Plugin`] type as the component's `tracer:plugin/plugin` interface.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __TracerPluginExport;

        impl $crate::bindings::exports::tracer::plugin::plugin::Guest for __TracerPluginExport {
            fn init(
                config: String,
            ) -> Result<$crate::bindings::tracer::plugin::types::Interest, String> {
                $crate::__rt::init_export::<$plugin>(config)
            }
            fn process_batch(
                batch: $crate::bindings::tracer::plugin::types::Batch,
            ) -> $crate::bindings::tracer::plugin::types::Verdicts {
                $crate::__rt::process_export::<$plugin>(batch)
            }
        }

        // Native builds (unit tests) export nothing: the names are not valid linker symbols.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_span_plugin!(__TracerPluginExport with_types_in $crate::bindings);
    };
}

/// What the host accepts in a result; a result beyond these is refused whole (the batch goes
/// on unchanged, or is dropped when the tracer runs fail-closed) and counted as a failure.
pub mod limits {
    /// Edits in one verdict.
    pub const MAX_EDITS: usize = 64;
    /// Bytes of an attribute key, and of a span name given to `rename`.
    pub const MAX_KEY: usize = 256;
    /// Bytes of a string attribute value.
    pub const MAX_VALUE: usize = 4096;
    /// Spans in one batch (so a plugin's working memory per call is bounded).
    pub const MAX_BATCH: usize = 256;
}

/// Consistent probability sampling keyed on the trace id, as OpenTelemetry specifies it
/// ("TraceState: Probability Sampling", the `th` threshold rule): the randomness `R` is the low
/// 56 bits of the trace id (bytes 9..16, random by W3C Trace Context Level 2), the rejection
/// threshold for probability `p` is `T = 2^56 - round(p * 2^56)`, and a span is kept iff
/// `R >= T`. Every node (and every OpenTelemetry SDK or collector using the same rule) makes the
/// same decision for a trace, and a trace kept at probability `p` is kept at any `q >= p`.
pub mod sampling {
    /// 2^56: the range of the randomness value.
    pub const MAX: u64 = 1 << 56;

    /// The randomness value of a trace: its low 56 bits.
    pub fn randomness(trace_id: (u64, u64)) -> u64 {
        trace_id.1 & (MAX - 1)
    }

    /// A sampling probability turned into its rejection threshold once, at init.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Threshold(u64);

    impl Threshold {
        /// The threshold for probability `ratio`; an error names the value unless it is in 0..=1.
        pub fn new(ratio: f64) -> Result<Self, String> {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!("ratio must be between 0 and 1, not {ratio}"));
            }
            Ok(Self(MAX - (ratio * MAX as f64).round() as u64))
        }

        /// Keeps everything.
        pub const ALWAYS: Self = Self(0);

        /// `T`: a trace is kept iff its randomness is at least this.
        pub fn rejection(self) -> u64 {
            self.0
        }

        /// The probability this threshold keeps a trace with.
        pub fn probability(self) -> f64 {
            (MAX - self.0) as f64 / MAX as f64
        }

        /// The OpenTelemetry `th` tracestate value: `T` in 14 hex digits, trailing zeros removed
        /// (`"0"` for always; `None` for never, which has no encoding).
        pub fn th(self) -> Option<String> {
            match self.0 {
                0 => Some("0".into()),
                MAX => None,
                t => Some(format!("{t:014x}").trim_end_matches('0').to_string()),
            }
        }

        pub fn keeps(self, trace_id: (u64, u64)) -> bool {
            randomness(trace_id) >= self.0
        }
    }

    /// Whether the trace is kept at probability `ratio` (see [`Threshold`]; compute the
    /// threshold once at init when the ratio is fixed).
    pub fn keep_trace(trace_id: (u64, u64), ratio: f64) -> bool {
        Threshold::new(ratio.clamp(0.0, 1.0)).is_ok_and(|t| t.keeps(trace_id))
    }
}

/// Key patterns as the host matches them: `*` matches any run of characters, everything else
/// itself. Plugins use this to tell apart keys that arrived for different reasons.
pub mod pattern {
    /// Whether `text` matches `pattern` (iterative, one backtrack point: linear in practice).
    pub fn matches(pattern: &str, text: &str) -> bool {
        glob(pattern.as_bytes(), text.as_bytes(), |a, b| a == b)
    }

    /// The same, ignoring ASCII case (query parameter names, header names).
    pub fn matches_ignore_case(pattern: &str, text: &str) -> bool {
        glob(pattern.as_bytes(), text.as_bytes(), |a, b| {
            a.eq_ignore_ascii_case(&b)
        })
    }

    use tracer_common::glob_match as glob;

    /// A list of patterns, checked in order.
    #[derive(Clone, Debug, Default)]
    pub struct Patterns(Vec<String>);

    impl Patterns {
        /// Refuses empty patterns, naming `what` (the config key) in the message.
        pub fn new(what: &str, patterns: Vec<String>) -> Result<Self, String> {
            if let Some(i) = patterns.iter().position(|p| p.is_empty()) {
                return Err(format!("{what}[{i}] is empty"));
            }
            Ok(Self(patterns))
        }

        pub fn matches(&self, text: &str) -> bool {
            self.0.iter().any(|p| matches(p, text))
        }

        pub fn matches_ignore_case(&self, text: &str) -> bool {
            self.0.iter().any(|p| matches_ignore_case(p, text))
        }

        pub fn as_slice(&self) -> &[String] {
            &self.0
        }

        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }
}

/// Native unit tests of plugin logic: sample spans, and running a plugin on them without a
/// tracer (init, then one batch, exactly as the host calls it).
pub mod testing {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static SEED: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
        static COUNTED: RefCell<Vec<(String, u64)>> = const { RefCell::new(Vec::new()) };
    }

    #[doc(hidden)]
    pub fn next_random() -> u64 {
        // xorshift64*: deterministic, so native tests are repeatable.
        SEED.with(|s| {
            let mut x = s.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            s.set(x);
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
    }

    #[doc(hidden)]
    pub fn record_count(name: String, delta: u64) {
        COUNTED.with(|c| c.borrow_mut().push((name, delta)));
    }

    /// Counter increments sent since the last call (native builds only).
    pub fn take_counts() -> Vec<(String, u64)> {
        COUNTED.with(|c| std::mem::take(&mut *c.borrow_mut()))
    }

    /// A server span `GET` of 1 ms with trace id (1, 2) and span id 3, no attributes.
    pub fn span() -> Span {
        Span {
            trace_id: (1, 2),
            span_id: 3,
            parent_span_id: None,
            trace_flags: 1,
            trace_state: None,
            kind: SpanKind::Server,
            name: "GET".into(),
            start_unix_nano: 1_000_000_000,
            end_unix_nano: 1_001_000_000,
            status: Status::Unset,
            attributes: Vec::new(),
            resource: 0,
        }
    }

    impl Span {
        /// Test helper: the span with this trace id.
        pub fn with_trace_id(mut self, trace_id: (u64, u64)) -> Self {
            self.trace_id = trace_id;
            self
        }

        /// Test helper: the span with this status.
        pub fn with_status(mut self, status: Status) -> Self {
            self.status = status;
            self
        }

        /// Test helper: the span lasting `ms` milliseconds.
        pub fn with_duration_ms(mut self, ms: u64) -> Self {
            self.end_unix_nano = self.start_unix_nano + ms * 1_000_000;
            self
        }

        /// Test helper: the span with this kind.
        pub fn with_kind(mut self, kind: SpanKind) -> Self {
            self.kind = kind;
            self
        }

        /// Test helper: the span with this name.
        pub fn with_name(mut self, name: &str) -> Self {
            self.name = name.into();
            self
        }

        /// Test helper: the span with one more attribute.
        pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
            self.attributes.push(Attribute {
                key: key.into(),
                value: value.into(),
            });
            self
        }
    }

    /// `init(config)` only, as the host calls it: the interest the plugin declares.
    pub fn init<P: Plugin>(config: &str) -> Result<Interest, String> {
        __rt::init::<P>(config.to_owned())
    }

    /// One more batch (with one empty resource) on the instance the last `init` or `run` made.
    pub fn process<P: Plugin>(spans: Vec<Span>) -> Vec<Verdict> {
        process_with::<P>(
            spans,
            vec![Resource {
                attributes: Vec::new(),
            }],
        )
    }

    /// One more batch with these resources.
    pub fn process_with<P: Plugin>(spans: Vec<Span>, resources: Vec<Resource>) -> Vec<Verdict> {
        __rt::process::<P>(spans, resources)
    }

    /// Panics (showing the edits) unless they set `key` to `value`. Takes an [`Action`], a
    /// [`Verdict`] or its edits.
    #[track_caller]
    pub fn assert_set(edits: &impl AsRef<[Edit]>, key: &str, value: impl Into<Value>) {
        let (edits, value) = (edits.as_ref(), value.into());
        assert!(
            edits
                .iter()
                .any(|e| matches!(e, Edit::Set(a) if a.key == key && a.value == value)),
            "no edit sets {key} = {value:?}: {edits:?}"
        );
    }

    /// Panics (showing the edits) unless they remove `key`.
    #[track_caller]
    pub fn assert_removed(edits: &impl AsRef<[Edit]>, key: &str) {
        let edits = edits.as_ref();
        assert!(
            edits
                .iter()
                .any(|e| matches!(e, Edit::Remove(k) if k == key)),
            "no edit removes {key}: {edits:?}"
        );
    }

    /// Panics (showing the edits) unless they rename the span to `name`.
    #[track_caller]
    pub fn assert_renamed(edits: &impl AsRef<[Edit]>, name: &str) {
        let edits = edits.as_ref();
        assert!(
            edits
                .iter()
                .any(|e| matches!(e, Edit::Rename(n) if n == name)),
            "no edit renames the span to {name:?}: {edits:?}"
        );
    }

    /// Panics (showing the verdicts) unless span `index` of the batch is dropped.
    #[track_caller]
    pub fn assert_dropped(verdicts: &[Verdict], index: u32) {
        assert!(
            verdicts.iter().any(|v| v.span == index && !v.keep),
            "span {index} is not dropped: {verdicts:?}"
        );
    }

    /// What the host makes of `spans` with these verdicts: each span edited, or None if dropped.
    pub fn apply(spans: &[Span], verdicts: &[Verdict]) -> Vec<Option<Span>> {
        let mut out: Vec<Option<Span>> = spans.iter().cloned().map(Some).collect();
        for v in verdicts {
            let Some(slot) = out.get_mut(v.span as usize) else {
                continue;
            };
            let Some(span) = slot.as_mut().filter(|_| v.keep) else {
                *slot = None;
                continue;
            };
            for e in &v.edits {
                match e {
                    Edit::Set(a) => match span.attributes.iter_mut().find(|x| x.key == a.key) {
                        Some(x) => x.value = a.value.clone(),
                        None => span.attributes.push(a.clone()),
                    },
                    Edit::Remove(k) => span.attributes.retain(|x| x.key != *k),
                    Edit::Rename(n) => span.name = n.clone(),
                }
            }
        }
        out
    }

    /// Runs `P` as the host would: `init(config)`, then one batch with one empty resource.
    pub fn run<P: Plugin>(config: &str, spans: Vec<Span>) -> Result<Vec<Verdict>, String> {
        __rt::init::<P>(config.to_owned())?;
        Ok(__rt::process::<P>(
            spans,
            vec![Resource {
                attributes: Vec::new(),
            }],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{Action, Verdict, pattern, sampling::*, testing};

    #[test]
    fn the_test_kit_applies_and_asserts_edits() {
        let a = Action::keep().set("k", 1i64).remove("r").rename("n");
        testing::assert_set(&a, "k", 1i64);
        testing::assert_removed(&a, "r");
        testing::assert_renamed(&a, "n");
        let spans = [
            testing::span().with("r", true),
            testing::span().with("k", 0i64),
        ];
        let mut v = Vec::new();
        Action::drop().push_to(0, &mut v);
        a.push_to(1, &mut v);
        Action::keep().push_to(2, &mut v);
        assert_eq!(v.len(), 2, "a keep without edits sends nothing");
        testing::assert_dropped(&v, 0);
        let out = testing::apply(&spans, &v);
        let s = out[1].as_ref().unwrap();
        assert!(out[0].is_none());
        assert_eq!((s.int_attr("k"), s.name.as_str()), (Some(1), "n"));
        assert_eq!(s.attributes.len(), 1);
        let unchanged = testing::apply(&spans, &[] as &[Verdict]);
        assert_eq!(unchanged[0].as_ref(), Some(&spans[0]));
    }

    #[test]
    fn thresholds_follow_the_opentelemetry_rule() {
        assert_eq!(Threshold::new(1.0).unwrap(), Threshold::ALWAYS);
        assert_eq!(Threshold::new(1.0).unwrap().th().as_deref(), Some("0"));
        assert_eq!(Threshold::new(0.5).unwrap().th().as_deref(), Some("8"));
        assert_eq!(Threshold::new(0.25).unwrap().th().as_deref(), Some("c"));
        assert_eq!(Threshold::new(0.0).unwrap().th(), None);
        assert!(Threshold::new(1.5).unwrap_err().contains("1.5"));
        assert!(Threshold::new(f64::NAN).is_err());
        let half = Threshold::new(0.5).unwrap();
        // Only the low 56 bits count; the high byte of the second half is ignored.
        assert!(half.keeps((0, 0x00ff_ffff_ffff_ffff)));
        assert!(half.keeps((0, 0x0080_0000_0000_0000)));
        assert!(!half.keeps((u64::MAX, 0xff7f_ffff_ffff_ffff)));
        assert!(!Threshold::new(0.0).unwrap().keeps((0, u64::MAX)));
        assert!(Threshold::ALWAYS.keeps((0, 0)));
        assert!(keep_trace((0, 0x00ff_0000_0000_0000), 0.1));
        assert!(!keep_trace((0, 0), 0.999));
    }

    #[test]
    fn patterns_match_like_the_host() {
        assert!(pattern::matches("*", ""));
        assert!(pattern::matches("http.*", "http.route"));
        assert!(pattern::matches("*token*", "x.token.y"));
        assert!(pattern::matches("*token*", "token"));
        assert!(!pattern::matches("*token*", "tokn"));
        assert!(pattern::matches("a*b*c", "aXbYbc"));
        assert!(!pattern::matches("a*b*c", "aXbYb"));
        assert!(!pattern::matches("user.email", "user.emails"));
        assert!(pattern::matches_ignore_case("Sig*", "signature"));
        let p = pattern::Patterns::new("remove", vec!["a".into(), "".into()]);
        assert_eq!(p.unwrap_err(), "remove[1] is empty");
    }
}
