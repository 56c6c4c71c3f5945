//! Feeds the `--config` file parser (`config::from_text`: YAML or TOML, then `validate`) any
//! text, and asks what a loaded file leads to: the table's, probes' and plugins' settings, the
//! options in effect after a live reload and those needing a restart (`reload` does this with
//! every SIGHUP). A file written by hand (or by anyone who can write it) must be refused with
//! an error, never crash the daemon or a reload. The first byte picks the format.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tracer_user::config::{self, RunOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&f, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let path = Path::new(if f & 1 == 0 { "fuzz.yaml" } else { "fuzz.toml" });
    let Ok(o) = config::from_text(path, text) else {
        return;
    };
    // What start-up and a reload take from a file that validated.
    let _ = o.table_options();
    let probes = o.probe_options();
    assert!(
        probes.ring_bytes >= 1 << 20,
        "ring-buffer-mib {} validated but gives a ring of {} bytes",
        o.ring_buffer_mib(),
        probes.ring_bytes
    );
    let _ = o.plugins();
    let _ = o.join();
    let _ = o.export_queue_bytes();
    let _ = o.metrics_series_limit();
    let _ = o.admin_addr();
    let started = RunOptions::default();
    let live = o.in_effect(&started);
    let _ = started.needs_restart(&o);
    let merged = o.clone().over(live);
    let _ = merged.validate();
});
