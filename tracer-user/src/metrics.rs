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
    /// CLOCK_MONOTONIC seconds since which the decode stage works on its current batch
    /// (0: waiting for one).
    pub decode_busy_since_s: AtomicU64,
    /// The same for the plugin stage.
    pub plugins_busy_since_s: AtomicU64,
    /// The last export attempt failed for good (cleared by the next success).
    pub export_failing: AtomicBool,
    pub last_export_error: Mutex<String>,
    /// Finished spans waiting to be joined into their trace.
    pub join_spans_held: AtomicU64,
    /// Requests the joiner remembers (running, or ended a moment ago).
    pub join_requests_tracked: AtomicU64,
    /// Files with OpenSSL's API the TLS probes are attached to.
    pub tls_libraries_probed: AtomicU64,
}

impl Health {
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

/// One value of [`Metrics::snapshot`]: a counter, or one reason of a family of counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    /// The `reason` label of a family member.
    pub reason: Option<&'static str>,
    pub value: u64,
}

/// An enum of the reasons a family of counters is split by.
macro_rules! reasons {
    ($(#[doc = $doc:literal])* $name:ident { $($variant:ident => $label:literal,)* }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant,)* }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The value of the `reason` label.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
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

macro_rules! counters {
    (
        $($field:ident => $help:literal,)*
        ; $($family:ident by $reason:ident => $fhelp:literal,)*
    ) => {
        /// Process-wide counters, shared by the pipeline stages, and the health they imply.
        #[derive(Default, Debug)]
        pub struct Metrics {
            $(#[doc = $help] pub $field: AtomicU64,)*
            $(#[doc = $fhelp] $family: [AtomicU64; $reason::ALL.len()],)*
            pub health: Health,
        }

        impl Metrics {
            /// Every counter, in a stable order; the members of a family are adjacent.
            pub fn snapshot(&self) -> Vec<Sample> {
                let mut v = vec![$(Sample {
                    name: concat!("tracer_", stringify!($field)),
                    help: $help,
                    reason: None,
                    value: self.$field.load(Relaxed),
                },)*];
                $(v.extend($reason::ALL.iter().map(|r| Sample {
                    name: concat!("tracer_", stringify!($family)),
                    help: $fhelp,
                    reason: Some(r.label()),
                    value: self.$family[*r as usize].load(Relaxed),
                }));)*
                v
            }
        }
    };
}

counters! {
    events_read_total => "Ring-buffer records read and decoded (records the daemon had to drop are records_dropped_total)",
    events_invalid_total => "Records that could not be parsed (wrong version, kind or size)",
    events_lost_total => "Records the kernel could not put in the ring buffer (buffer full)",
    kernel_conn_map_full_total => "Connections the kernel could not track (map full)",
    kernel_read_failed_total => "Payload copies from user memory that failed (byte counts still right)",
    kernel_h2_frames_lost_total => "Syscalls whose bytes the HTTP/2 frame walk could not follow as frames (copied as a prefix until a syscall starts at a frame)",
    kernel_unsupported_calls_total => "Socket I/O of traced processes not made by a read/write-family syscall (io_uring, sendmmsg, in-kernel users): not decoded",
    kernel_fd_reused_total => "Connections ended because their fd was reused by a new socket before their close was seen",
    kernel_probe_errors_total => "Syscalls and TLS calls a probe could not read the arguments of (not followed; --kernel-log debug names them)",
    kernel_tls_no_socket_total => "TLS calls whose plaintext was not traced because the library moved its encrypted bytes itself (a memory BIO), so their socket is unknown",
    tls_probe_failures_total => "TLS libraries found that the probes could not be attached to (the log says why)",
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
    spans_unsampled_total => "Spans not exported because the upstream's trace context said not sampled (--export-unsampled keeps them)",
    links_connection_total => "SERVER spans joined to the CLIENT span of the same request at the other end of a connection on this node",
    links_thread_total => "CLIENT spans joined to the SERVER request their thread was serving",
    links_ambiguous_total => "CLIENT spans left unjoined because their thread served several requests at once, or its process answers requests from other threads than the ones that read them",
    links_timed_out_total => "Spans exported before their join was decided (they waited longer than --join-hold)",
    join_table_full_total => "Requests not joined because the join table was full",
    spans_plugin_dropped_total => "Spans plugins dropped (sampling decisions)",
    spans_plugin_failed_total => "Spans dropped because a plugin failed and --plugins-fail-closed is set",
    spans_exported_total => "Spans the exporter delivered",
    config_reloads_total => "Config reloads applied (SIGHUP or POST /reload)",
    config_reload_failures_total => "Config reloads rejected (the running config stayed)",
    // Families of counters, one per reason:
    ;
    records_dropped_total by RecordDrop => "Ring-buffer records the daemon read but dropped before decoding, by reason",
    spans_dropped_total by SpanDrop => "Spans dropped between the span builder and delivery, by reason (filters and plugin sampling are counted apart)",
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Relaxed);
        }
    }

    pub fn drop_records(&self, why: RecordDrop, n: u64) {
        Self::add(&self.records_dropped_total[why as usize], n);
    }

    pub fn drop_spans(&self, why: SpanDrop, n: u64) {
        Self::add(&self.spans_dropped_total[why as usize], n);
    }

    pub fn records_dropped(&self, why: RecordDrop) -> u64 {
        self.records_dropped_total[why as usize].load(Relaxed)
    }

    pub fn spans_dropped(&self, why: SpanDrop) -> u64 {
        self.spans_dropped_total[why as usize].load(Relaxed)
    }

    /// Counters that are not zero, as `name=value` pairs for a log line.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for c in self.snapshot().into_iter().filter(|c| c.value > 0) {
            let _ = write!(
                s,
                "{}{}{}={}",
                if s.is_empty() { "" } else { " " },
                c.name.trim_start_matches("tracer_"),
                Label(c.reason),
                c.value
            );
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
        let mut family = "";
        for c in self.snapshot() {
            if c.name != family {
                family = c.name;
                let _ = writeln!(s, "# HELP {0} {1}\n# TYPE {0} counter", c.name, c.help);
            }
            let _ = writeln!(s, "{}{} {}", c.name, Label(c.reason), c.value);
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
        for (name, help, v) in [
            (
                "tracer_join_spans_held",
                "Finished spans waiting to be joined into their trace (at most --join-hold-ms)",
                &h.join_spans_held,
            ),
            (
                "tracer_join_requests_tracked",
                "Requests the trace joiner remembers: running, or ended within two holds",
                &h.join_requests_tracked,
            ),
            (
                "tracer_tls_libraries_probed",
                "Files with OpenSSL's API (libssl, binaries that link it in) the TLS probes are attached to",
                &h.tls_libraries_probed,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
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

/// `{reason="..."}` of a family member, nothing for a plain counter.
struct Label(Option<&'static str>);

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{{reason=\"{r}\"}}"),
            None => Ok(()),
        }
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
        m.drop_spans(SpanDrop::ExportQueueFull, 2);
        assert_eq!(
            m.summary(),
            "events_read_total=3 spans_built_total=1 spans_dropped_total{reason=\"export_queue_full\"}=2"
        );
        let text = m.prometheus();
        assert!(
            text.contains("# TYPE tracer_events_read_total counter\ntracer_events_read_total 3\n")
        );
        // A family: one HELP and TYPE, then every reason (zeros included).
        assert_eq!(
            text.matches("# TYPE tracer_spans_dropped_total counter")
                .count(),
            1
        );
        assert!(text.contains(
            "tracer_spans_dropped_total{reason=\"plugin_queue_full\"} 0\ntracer_spans_dropped_total{reason=\"export_queue_full\"} 2\n"
        ));
        assert!(text.contains("tracer_records_dropped_total{reason=\"decode_queue_full\"} 0\n"));
    }
}
