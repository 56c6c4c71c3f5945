//! Trace context on the wire (opt-in): `sockops` on the cgroup the daemon names, which puts
//! the client sockets of traced processes in a socket map, and `sk_msg` on that map, which
//! sees their writes before TCP does.
use aya_ebpf::{
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};

use crate::propagate::{on_msg, on_sock_ops};

#[sock_ops]
pub fn propagate_sockops(ctx: SockOpsContext) -> u32 {
    on_sock_ops(&ctx);
    1
}

/// SK_PASS, whatever happened: the bytes always go.
#[sk_msg]
pub fn propagate_msg(ctx: SkMsgContext) -> u32 {
    on_msg(&ctx);
    1
}
