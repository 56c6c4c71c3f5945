//! New code in a traced process, where TLS libraries may have appeared: an exec, and the
//! dynamic linker's `_dl_debug_state` (called after it loads or unloads libraries, for
//! debuggers; a dlopen'd libssl is announced there).
use aya_ebpf::{
    macros::{raw_tracepoint, uprobe},
    programs::{ProbeContext, RawTracePointContext},
};

use crate::capture::on_code_loaded;

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    on_code_loaded();
    0
}

#[uprobe]
pub fn dl_debug_state(_ctx: ProbeContext) -> u32 {
    on_code_loaded();
    0
}
