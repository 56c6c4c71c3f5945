//! Which processes are traced: cheap checks done at syscall entry, before anything is saved.
use aya_ebpf::helpers::bpf_get_current_comm;
use tracer_common::{Config, filter};

use crate::maps::{CONFIG, PIDS};

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn traced(tgid: u32) -> bool {
    if !traced_pid(tgid) {
        return false;
    }
    let Some(cfg) = config() else {
        return false;
    };
    if cfg.flags & filter::BY_COMM != 0 {
        match bpf_get_current_comm() {
            Ok(comm) if comm == cfg.comm => {}
            _ => return false,
        }
    }
    true
}

/// The filter but for the command name: for program types that may not read it (`sk_msg` on
/// 6.12 may not, 6.18 may), on sockets whose connect already passed [`traced`].
#[inline(always)]
pub fn traced_pid(tgid: u32) -> bool {
    let Some(cfg) = config() else {
        return false;
    };
    // capture_size 0 means the daemon has not configured us yet.
    if cfg.capture_size == 0 || tgid == cfg.self_tgid {
        return false;
    }
    !(cfg.flags & filter::BY_PID != 0 && unsafe { PIDS.get(&tgid) }.is_none())
}
