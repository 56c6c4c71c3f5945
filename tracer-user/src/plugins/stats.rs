//! Per-version counters: one family per counter, labelled by plugin and version (the content
//! hash), so a canary and its stable version, or a new version and the one it replaced, are
//! told apart. A version's series live while it runs or can be rolled back to.
use std::sync::{Arc, Mutex, atomic::AtomicU64};

use prometheus_client::metrics::family::Family;

use crate::metrics::{Counter, Registry};

/// Distinct custom counter names one plugin may create.
const MAX_CUSTOM: usize = 32;
/// Log lines one plugin may write per second.
const LOGS_PER_S: u64 = 20;

type Label = [(&'static str, Arc<str>); 2];
type CustomLabels = [(&'static str, Arc<str>); 3];
/// Seconds, counted in f64 (an atomic u64 holding the bits).
pub type Seconds = Counter<f64, AtomicU64>;

macro_rules! plugin_counters {
    ($($field:ident => $name:literal, $help:literal,)*) => {
        /// The families of every plugin's counters. A default one is registered nowhere: the
        /// stats it hands out count for nobody (a self-test instance's).
        #[derive(Debug, Default)]
        pub struct Families {
            $($field: Family<Label, Counter>,)*
            call_seconds: Family<Label, Seconds>,
            custom: Family<CustomLabels, Counter>,
        }

        impl Families {
            pub fn register(reg: &Registry) -> Self {
                let f = Families::default();
                $(reg.register($name, $help, f.$field.clone());)*
                reg.register(
                    "plugin_call_seconds",
                    "Time spent in the plugin's process-batch calls",
                    f.call_seconds.clone(),
                );
                reg.register(
                    "plugin_custom",
                    "Counters the plugins add themselves (host counter-add)",
                    f.custom.clone(),
                );
                f
            }

            /// The counters of version `hash` of plugin `name`, created at 0 the first time.
            pub fn stats(&self, name: &str, hash: &str) -> PluginStats {
                let label: Label = [("plugin", name.into()), ("version", hash.into())];
                PluginStats {
                    $($field: self.$field.get_or_create_owned(&label),)*
                    call_seconds: self.call_seconds.get_or_create_owned(&label),
                    custom: self.custom.clone(),
                    custom_names: Mutex::default(),
                    log_window: Mutex::default(),
                    label,
                }
            }

            /// Removes a version's series from /metrics.
            pub fn forget(&self, st: &PluginStats) {
                $(self.$field.remove(&st.label);)*
                self.call_seconds.remove(&st.label);
                for n in st.custom_names.lock().map(|n| n.clone()).unwrap_or_default() {
                    self.custom.remove(&st.custom_label(&n));
                }
            }
        }

        #[derive(Debug)]
        pub struct PluginStats {
            $(#[doc = $help] pub $field: Counter,)*
            /// Time spent in the plugin's calls.
            pub call_seconds: Seconds,
            custom: Family<CustomLabels, Counter>,
            label: Label,
            custom_names: Mutex<Vec<String>>,
            log_window: Mutex<(u64, u64)>,
        }

        impl PluginStats {
            /// (name, value) of every counter, as `/plugins` shows them.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((concat!(stringify!($field), "_total"), self.$field.get()),)*]
            }
        }
    };
}

plugin_counters! {
    calls => "plugin_calls", "process-batch calls",
    spans_in => "plugin_spans_in", "Spans given to the plugin",
    spans_dropped => "plugin_spans_dropped", "Spans the plugin dropped (sampled out)",
    spans_edited => "plugin_spans_edited", "Spans the plugin changed (attributes set or removed, renamed)",
    traps => "plugin_traps", "Calls that trapped (the batch went on unchanged, or was dropped when fail-closed)",
    timeouts => "plugin_timeouts", "Calls stopped at their deadline",
    memory_exceeded => "plugin_memory_exceeded", "Calls stopped for using more than the memory cap",
    invalid_results => "plugin_invalid_results", "Calls whose result broke the contract (index out of range, oversized edits)",
    restarts => "plugin_restarts", "Fresh instances started after a failed call",
}

impl PluginStats {
    pub fn custom_add(&self, name: &str, delta: u64) {
        let Ok(mut names) = self.custom_names.lock() else {
            return;
        };
        if !names.iter().any(|n| n == name) {
            if names.len() >= MAX_CUSTOM || name.is_empty() || name.len() > 64 {
                return;
            }
            names.push(name.to_owned());
        }
        self.custom
            .get_or_create(&self.custom_label(name))
            .inc_by(delta);
    }

    fn custom_label(&self, name: &str) -> CustomLabels {
        let [plugin, version] = self.label.clone();
        [plugin, version, ("name", name.into())]
    }

    /// A token bucket of one second: at most LOGS_PER_S lines.
    pub fn log_allowed(&self) -> bool {
        let now = crate::span::clock_ns(libc::CLOCK_MONOTONIC) / 1_000_000_000;
        let Ok(mut w) = self.log_window.lock() else {
            return false;
        };
        if w.0 != now {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 <= LOGS_PER_S
    }
}
