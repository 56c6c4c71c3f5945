//! Per-plugin counters. They live as long as the plugin's name, across reloads, so the
//! Prometheus counters stay monotonic when a plugin is swapped.
use std::{
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

/// Distinct custom counter names one plugin may create.
const MAX_CUSTOM: usize = 32;
/// Log lines one plugin may write per second.
const LOGS_PER_S: u64 = 20;

macro_rules! plugin_counters {
    ($($field:ident => $help:literal,)*) => {
        #[derive(Default, Debug)]
        pub struct PluginStats {
            $(#[doc = $help] pub $field: AtomicU64,)*
            /// Time spent in the plugin's calls.
            pub call_ns: AtomicU64,
            custom: Mutex<Vec<(String, u64)>>,
            log_window: Mutex<(u64, u64)>,
        }

        impl PluginStats {
            /// (metric name, help, value) of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((concat!("tracer_plugin_", stringify!($field)), $help, self.$field.load(Relaxed)),)*]
            }
        }
    };
}

plugin_counters! {
    calls_total => "process-batch calls",
    spans_in_total => "Spans given to the plugin",
    spans_dropped_total => "Spans the plugin dropped (sampled out)",
    spans_edited_total => "Spans the plugin changed (attributes set or removed, renamed)",
    traps_total => "Calls that trapped (the batch went on unchanged, or was dropped when fail-closed)",
    timeouts_total => "Calls stopped at their deadline",
    memory_exceeded_total => "Calls stopped for using more than the memory cap",
    invalid_results_total => "Calls whose result broke the contract (index out of range, oversized edits)",
    restarts_total => "Fresh instances started after a failed call",
}

impl PluginStats {
    pub fn custom_add(&self, name: &str, delta: u64) {
        let Ok(mut c) = self.custom.lock() else {
            return;
        };
        if let Some((_, v)) = c.iter_mut().find(|(n, _)| n == name) {
            *v += delta;
        } else if c.len() < MAX_CUSTOM && !name.is_empty() && name.len() <= 64 {
            c.push((name.to_owned(), delta));
        }
    }

    pub fn custom(&self) -> Vec<(String, u64)> {
        self.custom.lock().map(|c| c.clone()).unwrap_or_default()
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

    /// Prometheus lines for this plugin (`# HELP`/`# TYPE` are written once by the caller).
    pub fn render(&self, plugin: &str, out: &mut Families) {
        let label = escape(plugin);
        for (name, help, v) in self.snapshot() {
            out.add(name, help, format!("{{plugin=\"{label}\"}} {v}"));
        }
        out.add(
            "tracer_plugin_call_seconds_total",
            "Time spent in the plugin's process-batch calls",
            format!(
                "{{plugin=\"{label}\"}} {}",
                self.call_ns.load(Relaxed) as f64 / 1e9
            ),
        );
        for (n, v) in self.custom() {
            out.add(
                "tracer_plugin_custom_total",
                "Counters the plugins add themselves (host counter-add)",
                format!("{{plugin=\"{label}\",name=\"{}\"}} {v}", escape(&n)),
            );
        }
    }
}

/// Metric families in first-seen order, so each gets one HELP/TYPE header.
#[derive(Default)]
pub struct Families(Vec<(String, String, Vec<String>)>);

impl Families {
    pub fn add(&mut self, name: &str, help: &str, sample: String) {
        match self.0.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, _, s)) => s.push(sample),
            None => self.0.push((name.into(), help.into(), vec![sample])),
        }
    }

    pub fn render(&self, kind: &str) -> String {
        let mut s = String::new();
        for (name, help, samples) in &self.0 {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for x in samples {
                let _ = writeln!(s, "{name}{x}");
            }
        }
        s
    }
}

/// Prometheus label value escaping.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
