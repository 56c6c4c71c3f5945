//! Vectored data syscalls: readv, writev (iovec array), recvmsg, sendmsg (msghdr).
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tracer_common::{direction, syscall};

use super::rw::exit;
use crate::{
    capture::{MSG_PEEK, save_args, save_peek},
    diag::args_failed,
};

const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
/// struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

#[inline(always)]
fn enter_iov(ctx: &TracePointContext, syscall: u8, dir: u8) -> Result<(), i64> {
    let fd: u64 = unsafe { ctx.read_at(ARG0) }?;
    let iov: u64 = unsafe { ctx.read_at(ARG1) }?;
    let cnt: u64 = unsafe { ctx.read_at(ARG2) }?;
    save_args(fd, iov, cnt, syscall, dir);
    Ok(())
}

#[inline(always)]
fn enter_msg(ctx: &TracePointContext, syscall: u8, dir: u8) -> Result<(), i64> {
    let fd: u64 = unsafe { ctx.read_at(ARG0) }?;
    let msg: u64 = unsafe { ctx.read_at(ARG1) }?;
    if syscall == syscall::RECVMSG && unsafe { ctx.read_at::<u64>(ARG2) }? & MSG_PEEK != 0 {
        save_peek(fd, syscall);
        return Ok(());
    }
    let iov: u64 = unsafe { bpf_probe_read_user((msg + MSG_IOV) as *const u64) }?;
    let cnt: u64 = unsafe { bpf_probe_read_user((msg + MSG_IOVLEN) as *const u64) }?;
    save_args(fd, iov, cnt, syscall, dir);
    Ok(())
}

macro_rules! vectored_probes {
    ($($enter:ident, $exit:ident, $how:ident, $sys:expr, $dir:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            if let Err(e) = $how(&ctx, $sys, $dir) {
                args_failed(&ctx, stringify!($enter), e);
            }
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            if let Err(e) = exit(&ctx, $sys, $dir) {
                args_failed(&ctx, stringify!($exit), e);
            }
            0
        }
    )*};
}

vectored_probes! {
    sys_enter_readv, sys_exit_readv, enter_iov, syscall::READV, direction::INGRESS;
    sys_enter_writev, sys_exit_writev, enter_iov, syscall::WRITEV, direction::EGRESS;
    sys_enter_recvmsg, sys_exit_recvmsg, enter_msg, syscall::RECVMSG, direction::INGRESS;
    sys_enter_sendmsg, sys_exit_sendmsg, enter_msg, syscall::SENDMSG, direction::EGRESS;
}
