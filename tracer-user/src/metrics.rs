//! Self-observability: every event read, dropped or failed is counted here. Names follow
//! Prometheus conventions so the same set can be served on /metrics later.
use std::{
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

/// What /healthz and /readyz report.
#[derive(Default, Debug)]
pub struct Health {
    /// All probes attached and configured.
    pub probes_attached: AtomicBool,
    /// CLOCK_MONOTONIC seconds of the reader loop's last turn (0: not started).
    pub reader_alive_s: AtomicU64,
    /// The last export attempt failed for good (cleared by the next success).
    pub export_failing: AtomicBool,
    pub last_export_error: Mutex<String>,
}

macro_rules! counters {
    ($($field:ident => $help:literal,)*) => {
        /// Process-wide counters, shared by the pipeline stages, and the health they imply.
        #[derive(Default, Debug)]
        pub struct Metrics { $(#[doc = $help] pub $field: AtomicU64,)* pub health: Health }

        impl Metrics {
            /// (name, help, value) of every counter, in a stable order.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((concat!("tracer_", stringify!($field)), $help, self.$field.load(Relaxed)),)*]
            }
        }
    };
}

counters! {
    events_read_total => "Ring-buffer records read",
    events_invalid_total => "Records that could not be parsed (wrong version, kind or size)",
    events_lost_total => "Records the kernel could not put in the ring buffer (buffer full)",
    kernel_conn_map_full_total => "Connections the kernel could not track (map full)",
    kernel_read_failed_total => "Payload copies from user memory that failed (byte counts still right)",
    kernel_h2_frames_lost_total => "Syscalls whose bytes the HTTP/2 frame walk could not follow as frames (copied as a prefix until a syscall starts at a frame)",
    sequence_gaps_total => "Gaps in a connection direction's records (records went missing)",
    connections_opened_total => "HTTP connections seen",
    peer_unknown_total => "Connections set up before the probes whose peer /proc no longer knew (closed at once)",
    non_socket_streams_total => "Streams that looked like HTTP but were not sockets (files, pipes)",
    decode_malformed_total => "Byte runs that should have been HTTP but were not",
    decode_resyncs_total => "Times a decoder lost framing and waited for the next message start",
    decode_orphan_responses_total => "Responses without a request (attached mid-exchange or lost)",
    decode_lost_exchanges_total => "Requests (HTTP/2: streams) discarded because records were lost",
    decode_truncated_headers_total => "Header blocks longer than the capture size (HTTP/2: not fully decodable)",
    spans_built_total => "Spans built from decoded exchanges",
    spans_filtered_total => "Spans dropped by filters (--port; OTLP exports received by a traced collector)",
    spans_plugin_dropped_total => "Spans plugins dropped (sampling decisions)",
    spans_plugin_failed_total => "Spans dropped because a plugin failed and --plugins-fail-closed is set",
    spans_exported_total => "Spans the exporter delivered",
    spans_export_failed_total => "Spans dropped after export retries failed",
    spans_queue_full_total => "Spans dropped because the export queue was full",
    config_reloads_total => "Config reloads applied (SIGHUP or POST /reload)",
    config_reload_failures_total => "Config reloads rejected (the running config stayed)",
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Relaxed);
        }
    }

    /// Counters that are not zero, as `name=value` pairs for a log line.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (name, _, v) in self.snapshot() {
            if v > 0 {
                let _ = write!(
                    s,
                    "{}{}={v}",
                    if s.is_empty() { "" } else { " " },
                    name.trim_start_matches("tracer_")
                );
            }
        }
        if s.is_empty() {
            "nothing traced yet".into()
        } else {
            s
        }
    }

    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let h = &self.health;
        for (name, help, v) in self.snapshot() {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        for (name, help, v) in [
            (
                "tracer_probes_attached",
                "1 when every probe is attached",
                h.probes_attached.load(Relaxed),
            ),
            (
                "tracer_export_failing",
                "1 while the last export failed after its retries",
                h.export_failing.load(Relaxed),
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                u8::from(v)
            );
        }
        let _ = writeln!(
            s,
            "# HELP tracer_build_info Build of the running tracer\n# TYPE tracer_build_info gauge\ntracer_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_nonzero_counters() {
        let m = Metrics::default();
        assert_eq!(m.summary(), "nothing traced yet");
        Metrics::add(&m.events_read_total, 3);
        Metrics::add(&m.spans_built_total, 1);
        assert_eq!(m.summary(), "events_read_total=3 spans_built_total=1");
        assert!(
            m.prometheus()
                .contains("# TYPE tracer_events_read_total counter\ntracer_events_read_total 3\n")
        );
    }
}
