//! Socket tracepoints (Linux 6.3+): `sock_send_length` and `sock_recv_length` fire inside
//! `sock_sendmsg`/`sock_recvmsg`, in the calling task, after the bytes moved; only socket
//! I/O runs them, so the rest of the node's syscalls pay nothing. `tcp_destroy_sock` tells
//! when a TCP socket is gone.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::direction;

use crate::capture::{MSG_PEEK, args_from_sock, on_data, on_sock_close};

/// TP_PROTO(struct sock *sk, int ret, int flags): `ret` bytes moved, or an error.
#[inline(always)]
fn on_io(ctx: &RawTracePointContext, dir: u8) {
    let ret = ctx.arg::<u64>(1) as i32;
    // EAGAIN on a non-blocking socket, EOF, errors: nothing moved (the cheapest way out,
    // taken by every such call on the node).
    if ret <= 0 {
        return;
    }
    // A peek leaves the bytes in the socket to be read again.
    if dir == direction::INGRESS && ctx.arg::<u64>(2) & MSG_PEEK != 0 {
        return;
    }
    let Some(args) = args_from_sock(ctx.arg::<u64>(0), dir) else {
        return;
    };
    on_data(&args, ret as i64);
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    on_io(&ctx, direction::EGRESS);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    on_io(&ctx, direction::INGRESS);
    0
}

/// TP_PROTO(struct sock *sk): a TCP socket is destroyed, which happens only once its process
/// closed it and TCP is done with it (after both FINs, a reset, or the FIN_WAIT2 timeout), and
/// before its memory can hold another socket. So the connection ends after the last byte its
/// process read, even when a reset arrived while that process still had data to read.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    on_sock_close(ctx.arg::<u64>(0));
    0
}
