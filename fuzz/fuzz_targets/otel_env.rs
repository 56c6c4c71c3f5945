//! Feeds the readers of the `OTEL_*` environment: `process::parse_resource_attributes`
//! (OTEL_RESOURCE_ATTRIBUTES, `k1=v1,k2=v2`, percent-decoded), and the exporters' settings
//! (`export::otlp_config` and `signal_config` for traces and metrics, `metrics_config`,
//! `BatchConfig::from_env`) with an environment made from the fuzz input. The daemon reads
//! these once at start-up, from a pod spec or a unit file: a bad value must be an error that
//! names the variable, not a panic.
//!
//! The input is NUL-separated entries; an entry's first byte picks a variable from `VARS`
//! (its value is the rest), or, past the list, the entry is `NAME=VALUE`. The first two
//! entries are the `--otlp-endpoint` and `--otlp-protocol` flags (empty: not given). The TLS
//! variables (`..._CERTIFICATE`, `..._CLIENT_KEY`) name files that are read: they are never
//! set, or the fuzzer would read whatever path it makes up.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tracer_fuzz::Input;
use tracer_user::{
    export::{self, BatchConfig, Signal, metrics::metrics_config},
    process::{parse_resource_attributes, percent_decode},
};

const VARS: &[&str] = &[
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
];

/// Variables whose values are paths the readers open.
fn names_a_file(var: &str) -> bool {
    var.ends_with("CERTIFICATE") || var.ends_with("CLIENT_KEY")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let endpoint = text(input.until(0));
    let protocol = text(input.until(0));
    let mut vars: HashMap<String, String> = HashMap::new();
    while !input.is_empty() {
        let entry = input.until(0);
        let Some((&i, rest)) = entry.split_first() else {
            continue;
        };
        match VARS.get(usize::from(i)) {
            Some(v) => vars.insert(v.to_string(), text(rest)),
            None => {
                let e = text(rest);
                let (k, v) = e.split_once('=').unwrap_or((&e, ""));
                vars.insert(k.to_string(), v.to_string())
            }
        };
    }
    let env = |k: &str| vars.get(k).filter(|_| !names_a_file(k)).cloned();
    let flag = |f: &str| (!f.is_empty()).then(|| f.to_string());
    let (endpoint, protocol) = (flag(&endpoint), flag(&protocol));

    if let Some(r) = vars.get("OTEL_RESOURCE_ATTRIBUTES") {
        for kv in parse_resource_attributes(r) {
            assert!(!kv.key.is_empty());
        }
        let _ = percent_decode(r);
    }
    let (e, p) = (endpoint.as_deref(), protocol.as_deref());
    let _ = export::otlp_config(e, p, &env);
    let _ = export::signal_config(Signal::Metrics, e, p, &env);
    let _ = metrics_config(e, p, &env);
    let _ = BatchConfig::from_env(&env);
});
