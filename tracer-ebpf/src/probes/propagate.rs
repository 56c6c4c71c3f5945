//! Trace context on the wire (opt-in): `sockops` on the cgroup the daemon names, which puts
//! the client sockets of traced processes in a socket map, and `sk_msg` on that map, which
//! sees their writes before TCP does.
use aya_ebpf::{
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};

use crate::{
    filter::{config, traced, traced_pid},
    propagate::{on_msg, on_sock_ops},
};

#[sock_ops]
pub fn propagate_sockops(ctx: SockOpsContext) -> u32 {
    on_sock_ops(&ctx, traced);
    1
}

/// For kernels whose sockops programs may not read the command name (6.12): loaded when the
/// one above is refused; no socket is taken while a `--comm` filter is set.
#[sock_ops]
pub fn propagate_sockops_pid(ctx: SockOpsContext) -> u32 {
    on_sock_ops(&ctx, |tgid| {
        traced_pid(tgid) && config().is_some_and(|c| c.flags & tracer_common::filter::BY_COMM == 0)
    });
    1
}

/// SK_PASS, whatever happened: the bytes always go.
#[sk_msg]
pub fn propagate_msg(ctx: SkMsgContext) -> u32 {
    on_msg(&ctx);
    1
}
