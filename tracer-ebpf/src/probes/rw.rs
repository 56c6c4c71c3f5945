//! Flat-buffer data syscalls: read, write, recvfrom, sendto, and sendfile (bytes counted only).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{direction, syscall};

use crate::{
    capture::{MSG_PEEK, args_from_regs, on_data, save_args, save_peek, take_args},
    diag::args_failed,
};

const ARG0: usize = 16;
const ARG1: usize = 24;
/// recvfrom's flags.
const ARG3: usize = 40;
const RET: usize = 16;

#[inline(always)]
fn enter(ctx: &TracePointContext, syscall: u8, dir: u8) -> Result<(), i64> {
    let fd: u64 = unsafe { ctx.read_at(ARG0) }?;
    // sendfile's second argument is the source fd, not memory: nothing to copy.
    let buf: u64 = if syscall == syscall::SENDFILE {
        0
    } else {
        unsafe { ctx.read_at(ARG1) }?
    };
    if syscall == syscall::RECVFROM && unsafe { ctx.read_at::<u64>(ARG3) }? & MSG_PEEK != 0 {
        save_peek(fd, syscall);
        return Ok(());
    }
    save_args(fd, buf, 0, syscall, dir);
    Ok(())
}

#[inline(always)]
pub fn exit(ctx: &TracePointContext, syscall: u8, dir: u8) -> Result<(), i64> {
    // An untraced process saved nothing at entry: the filter answers before any map lookup.
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if !crate::filter::traced(tgid) {
        return Ok(());
    }
    let Some(args) = take_args().or_else(|| args_from_regs(syscall, dir)) else {
        return Ok(());
    };
    if args.is_peek() {
        return Ok(());
    }
    let ret: i64 = unsafe { ctx.read_at(RET) }?;
    on_data(&args, ret);
    Ok(())
}

macro_rules! data_probes {
    ($($enter:ident, $exit:ident, $sys:expr, $dir:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            if let Err(e) = enter(&ctx, $sys, $dir) {
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

data_probes! {
    sys_enter_read, sys_exit_read, syscall::READ, direction::INGRESS;
    sys_enter_write, sys_exit_write, syscall::WRITE, direction::EGRESS;
    sys_enter_recvfrom, sys_exit_recvfrom, syscall::RECVFROM, direction::INGRESS;
    sys_enter_sendto, sys_exit_sendto, syscall::SENDTO, direction::EGRESS;
    sys_enter_sendfile64, sys_exit_sendfile64, syscall::SENDFILE, direction::EGRESS;
}
