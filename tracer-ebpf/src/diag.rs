//! Diagnostics of the probes: failures they count, and say through aya-log. The daemon sets
//! the log level before loading (`--kernel-log`, off by default); at level off the verifier
//! sees a constant and removes the logging code, so it costs nothing.
use aya_ebpf::EbpfContext;
use aya_log_ebpf::debug;
use tracer_common::counter;

use crate::maps::count;

/// A probe could not read its arguments: counted, and logged at debug level.
#[inline(always)]
pub fn args_failed<C: EbpfContext>(ctx: &C, probe: &str, err: i64) {
    count(counter::PROBE_ARGS);
    debug!(
        ctx,
        "{}: reading the arguments failed (error {})", probe, err
    );
}
