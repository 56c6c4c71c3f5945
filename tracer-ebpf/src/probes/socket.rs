//! Connection lifecycle: accept, accept4, connect, close.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{direction, role};

use crate::{
    capture::{on_close, on_setup, save_args, take_args},
    diag::args_failed,
};

// Offsets in the syscalls/* tracepoint records: arguments start at 16, 8 bytes each;
// the return value of sys_exit_* is at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;
const EINPROGRESS: i64 = 115;

#[inline(always)]
fn enter(ctx: &TracePointContext, syscall: u8) -> Result<(), i64> {
    let fd: u64 = unsafe { ctx.read_at(ARG0) }?;
    let addr: u64 = unsafe { ctx.read_at(ARG1) }?;
    save_args(fd, addr, 0, syscall, direction::INGRESS);
    Ok(())
}

// The syscall ids below are only tags for the saved arguments (0: accept, 255: connect).
const ACCEPT: u8 = 0;
const CONNECT: u8 = 255;

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    if let Err(e) = enter(&ctx, ACCEPT) {
        args_failed(&ctx, "sys_enter_accept", e);
    }
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    if let Err(e) = enter(&ctx, ACCEPT) {
        args_failed(&ctx, "sys_enter_accept4", e);
    }
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if let Err(e) = enter(&ctx, CONNECT) {
        args_failed(&ctx, "sys_enter_connect", e);
    }
    0
}

#[inline(always)]
fn exit(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(args) = take_args() else {
        return Ok(());
    };
    let ret: i64 = unsafe { ctx.read_at(RET) }?;
    match args.syscall {
        // accept returns the new connection's fd; the sockaddr was filled with the peer.
        ACCEPT if ret >= 0 => on_setup(ret as u64, args.ptr, role::ACCEPTED),
        // A non-blocking connect reports EINPROGRESS and completes later.
        CONNECT if ret == 0 || ret == -EINPROGRESS => on_setup(args.fd, args.ptr, role::CONNECTED),
        _ => {}
    }
    Ok(())
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    if let Err(e) = exit(&ctx) {
        args_failed(&ctx, "sys_exit_accept", e);
    }
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    if let Err(e) = exit(&ctx) {
        args_failed(&ctx, "sys_exit_accept4", e);
    }
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    if let Err(e) = exit(&ctx) {
        args_failed(&ctx, "sys_exit_connect", e);
    }
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    match unsafe { ctx.read_at::<u64>(ARG0) } {
        Ok(fd) => on_close(fd),
        Err(e) => args_failed(&ctx, "sys_enter_close", e.into()),
    }
    0
}
