//! Self-observability: one `prometheus-client` registry (prefix `tracer`) that each subsystem
//! registers its own metrics into where it is built, keeping cloned handles to count with.
//! `/metrics` is that registry encoded, and the `counters:` log line is read back from it.
use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use prometheus_client::{
    encoding::{prometheus_text, text as openmetrics_text},
    metrics::{family::Family, info::Info},
    registry::Metric,
};

pub use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

/// The registry every subsystem registers into, shared by those that build them and those
/// that read it (the admin endpoint, the counters log). Registering takes the lock and
/// scraping reads under it; counting never does (subsystems keep their own handles).
#[derive(Clone)]
pub struct Registry(Arc<RwLock<prometheus_client::registry::Registry>>);

impl Default for Registry {
    fn default() -> Self {
        let mut r = prometheus_client::registry::Registry::with_prefix("tracer");
        r.register(
            "build",
            "Build of the running tracer",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        Registry(Arc::new(RwLock::new(r)))
    }
}

impl Registry {
    /// Registers `metric` as `tracer_<name>` (counters get `_total` when encoded).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.register(name, help, c.clone());
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.register(name, help, g.clone());
        g
    }

    /// The Prometheus text format (version 0.0.4), what `/metrics` serves by default.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut s, &self.0.read().unwrap_or_else(|p| p.into_inner()));
        s
    }

    /// The OpenMetrics text format, for scrapers that ask for it.
    pub fn openmetrics(&self) -> String {
        let mut s = String::new();
        let _ = openmetrics_text::encode(&mut s, &self.0.read().unwrap_or_else(|p| p.into_inner()));
        s
    }

    /// Counters that are not zero, as `name=value` pairs for a log line (gauges left out).
    pub fn summary(&self) -> String {
        let text = self.prometheus();
        let mut s = String::new();
        let mut counter = false;
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                counter = t.ends_with(" counter");
                continue;
            }
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            // Float counters (seconds) may read `0.0`.
            if !counter || line.starts_with('#') || value.parse::<f64>() == Ok(0.0) {
                continue;
            }
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(name.strip_prefix("tracer_").unwrap_or(name));
            s.push('=');
            s.push_str(value);
        }
        if s.is_empty() {
            "nothing traced yet".into()
        } else {
            s
        }
    }
}

/// An enum of the reasons a family of counters is split by.
macro_rules! reasons {
    ($(#[doc = $doc:literal])* $name:ident { $($variant:ident => $label:literal,)* }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant,)* }

        impl Reason for $name {
            const ALL: &[$name] = &[$($name::$variant,)*];

            fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// The reasons of a [`ByReason`] family.
pub trait Reason: Copy + 'static {
    const ALL: &[Self];
    /// The value of the `reason` label.
    fn label(self) -> &'static str;
    /// Where the reason is in `ALL`.
    fn index(self) -> usize;
}

reasons! {
    /// Why the daemon dropped ring-buffer records it had read (the kernel's own losses are
    /// `events_lost_total`).
    RecordDrop {
        DecodeQueueFull => "decode_queue_full",
    }
}

reasons! {
    /// Why a built span that passed the filters and plugins was not delivered.
    SpanDrop {
        PluginQueueFull => "plugin_queue_full",
        ExportQueueFull => "export_queue_full",
        ExportFailed => "export_failed",
        ExportRejected => "export_rejected",
        Shutdown => "shutdown",
    }
}

/// A family of counters split by a `reason` label. Every reason is there from the start, at
/// 0, so alerts on one work before it ever happened; counting is one atomic add.
#[derive(Clone, Debug)]
pub struct ByReason<R> {
    /// Indexed by [`Reason::index`].
    counters: Arc<[Counter]>,
    _reason: std::marker::PhantomData<R>,
}

impl<R: Reason> ByReason<R> {
    pub fn register(reg: &Registry, name: &str, help: &str) -> Self {
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let counters = R::ALL
            .iter()
            .map(|r| family.get_or_create_owned(&[("reason", r.label())]))
            .collect();
        reg.register(name, help, family);
        ByReason {
            counters,
            _reason: std::marker::PhantomData,
        }
    }

    pub fn add(&self, why: R, n: u64) {
        if n > 0 {
            self.counters[why.index()].inc_by(n);
        }
    }

    pub fn get(&self, why: R) -> u64 {
        self.counters[why.index()].get()
    }
}

reasons! {
    /// What the probes did with an outgoing HTTP/1 request of a traced process (--propagate).
    ContextOutcome {
        Written => "written",
        HasContext => "has_context",
        HeadSplit => "head_split",
        UnsafeFraming => "unsafe_framing",
        NoRoom => "no_room",
    }
}

/// Outgoing requests by what the probes did with them; a family like [`ByReason`] but
/// labelled `outcome`, since `written` is no drop.
pub fn context_outcomes(reg: &Registry) -> Vec<(ContextOutcome, Counter)> {
    let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let out = ContextOutcome::ALL
        .iter()
        .map(|o| (*o, family.get_or_create_owned(&[("outcome", o.label())])))
        .collect();
    reg.register(
        "trace_context_requests",
        "Outgoing HTTP/1 requests of traced processes the probes looked at (--propagate), by outcome: written (a traceparent added), or sent unchanged because it had a trace context, its head did not end in the write, more than its own body followed it, or the kernel had no room",
        family,
    );
    out
}

/// Spans dropped between the span builder and delivery: by the pipeline's stages and by the
/// exporters, one family for both.
pub type SpanDrops = ByReason<SpanDrop>;

impl SpanDrops {
    pub fn new(reg: &Registry) -> Self {
        Self::register(
            reg,
            "spans_dropped",
            "Spans dropped between the span builder and delivery, by reason (filters and plugin sampling are counted apart)",
        )
    }
}

/// Ring-buffer records the daemon read but dropped before decoding.
pub type RecordDrops = ByReason<RecordDrop>;

impl RecordDrops {
    pub fn new(reg: &Registry) -> Self {
        Self::register(
            reg,
            "records_dropped",
            "Ring-buffer records the daemon read but dropped before decoding, by reason",
        )
    }
}

/// A yes/no gauge (1 or 0).
#[derive(Debug)]
pub struct Flag(Gauge);

impl Flag {
    pub fn set(&self, on: bool) {
        self.0.set(i64::from(on));
    }

    pub fn get(&self) -> bool {
        self.0.get() != 0
    }
}

/// What /healthz and /readyz report.
#[derive(Debug)]
pub struct Health {
    /// All probes attached and configured.
    pub probes_attached: Flag,
    /// CLOCK_MONOTONIC seconds of the reader loop's last turn (0: not started).
    pub reader_alive_s: AtomicU64,
    /// CLOCK_MONOTONIC seconds since which the decode stage works on its current batch
    /// (0: waiting for one).
    pub decode_busy_since_s: AtomicU64,
    /// The same for the plugin stage.
    pub plugins_busy_since_s: AtomicU64,
    /// The last export attempt failed for good (cleared by the next success).
    pub export_failing: Flag,
    pub last_export_error: Mutex<String>,
}

impl Health {
    pub fn new(reg: &Registry) -> Self {
        let flag = |name, help| Flag(reg.gauge(name, help));
        Health {
            probes_attached: flag("probes_attached", "1 when every probe is attached"),
            reader_alive_s: AtomicU64::new(0),
            decode_busy_since_s: AtomicU64::new(0),
            plugins_busy_since_s: AtomicU64::new(0),
            export_failing: flag(
                "export_failing",
                "1 while the last export failed after its retries",
            ),
            last_export_error: Mutex::default(),
        }
    }

    /// The first stage that has not made progress for more than `stall_s` seconds, and for
    /// how long: the reader (which turns at least every tick), or a stage stuck on one batch.
    pub fn stalled(&self, now_s: u64, stall_s: u64) -> Option<(&'static str, u64)> {
        [
            ("event reader", &self.reader_alive_s),
            ("decode stage", &self.decode_busy_since_s),
            ("plugin stage", &self.plugins_busy_since_s),
        ]
        .into_iter()
        .map(|(stage, since)| (stage, since.load(Relaxed)))
        .find(|&(_, since)| since != 0 && now_s.saturating_sub(since) > stall_s)
        .map(|(stage, since)| (stage, now_s - since))
    }
}

/// CLOCK_MONOTONIC in whole seconds: the clock of the health fields.
pub fn monotonic_s() -> u64 {
    crate::span::clock_ns(libc::CLOCK_MONOTONIC) / 1_000_000_000
}

/// Marks a stage busy (its `*_busy_since_s` field) until dropped.
pub struct Busy<'a>(&'a AtomicU64);

impl<'a> Busy<'a> {
    pub fn new(since: &'a AtomicU64) -> Self {
        since.store(monotonic_s().max(1), Relaxed);
        Busy(since)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_nonzero_counters() {
        let reg = Registry::default();
        let read = reg.counter("events_read", "Records read");
        let built = reg.counter("spans_built", "Spans built");
        let drops = SpanDrops::new(&reg);
        let held = reg.gauge("join_spans_held", "Spans held");
        assert_eq!(reg.summary(), "nothing traced yet");
        read.inc_by(3);
        built.inc();
        drops.add(SpanDrop::ExportQueueFull, 2);
        held.set(4);
        assert_eq!(
            reg.summary(),
            "events_read_total=3 spans_built_total=1 spans_dropped_total{reason=\"export_queue_full\"}=2"
        );
    }

    #[test]
    fn the_registry_encodes_every_metric_with_its_prometheus_name() {
        let reg = Registry::default();
        let read = reg.counter("events_read", "Records read");
        let drops = SpanDrops::new(&reg);
        RecordDrops::new(&reg);
        let health = Health::new(&reg);
        read.inc_by(3);
        drops.add(SpanDrop::ExportQueueFull, 2);
        health.probes_attached.set(true);
        let text = reg.prometheus();
        for line in [
            "# HELP tracer_events_read_total Records read.\n# TYPE tracer_events_read_total counter\ntracer_events_read_total 3\n",
            "tracer_spans_dropped_total{reason=\"plugin_queue_full\"} 0\n",
            "tracer_spans_dropped_total{reason=\"export_queue_full\"} 2\n",
            "tracer_spans_dropped_total{reason=\"shutdown\"} 0\n",
            "tracer_records_dropped_total{reason=\"decode_queue_full\"} 0\n",
            "# TYPE tracer_probes_attached gauge\ntracer_probes_attached 1\n",
            "tracer_export_failing 0\n",
            "# TYPE tracer_build_info gauge\n",
            &format!(
                "tracer_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // A family: one HELP and TYPE, then every reason (zeros included).
        assert_eq!(
            text.matches("# TYPE tracer_spans_dropped_total counter")
                .count(),
            1
        );
        assert_eq!(
            text.matches("tracer_spans_dropped_total{").count(),
            SpanDrop::ALL.len()
        );
        // OpenMetrics: the family is named without `_total`, its samples keep it.
        let om = reg.openmetrics();
        assert!(om.contains("# TYPE tracer_events_read counter\ntracer_events_read_total 3\n"));
        assert!(om.ends_with("# EOF\n"));
    }
}
