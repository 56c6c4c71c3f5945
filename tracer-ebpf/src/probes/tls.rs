//! Uprobes on TLS libraries (OpenSSL 1.1 and 3, BoringSSL, LibreSSL: the same symbols), in
//! shared `libssl` and in binaries that carry it (node). One return probe serves every call:
//! what the return value means was saved at entry.
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::direction;

use crate::{diag::args_failed, tls};

/// `int SSL_read(SSL *, void *buf, int num)`, `int SSL_write(SSL *, const void *buf, int num)`.
#[inline(always)]
fn plain(ctx: &ProbeContext, dir: u8) {
    match (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        (Some(ssl), Some(buf)) => tls::enter(ssl, buf, 0, dir),
        _ => args_failed(ctx, "ssl_read/ssl_write", 0),
    }
}

/// `int SSL_read_ex(SSL *, void *buf, size_t num, size_t *readbytes)`, and `SSL_write_ex`.
#[inline(always)]
fn ex(ctx: &ProbeContext, dir: u8) {
    match (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(3)) {
        (Some(ssl), Some(buf), Some(out)) => tls::enter(ssl, buf, out, dir),
        _ => args_failed(ctx, "ssl_read_ex/ssl_write_ex", 0),
    }
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    plain(&ctx, direction::INGRESS);
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    plain(&ctx, direction::EGRESS);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    ex(&ctx, direction::INGRESS);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    ex(&ctx, direction::EGRESS);
    0
}

#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    // The C `int` return value, sign-extended.
    tls::exit(&ctx, ctx.ret::<u64>() as i32 as i64);
    0
}

/// `int SSL_set_fd(SSL *, int fd)`.
#[uprobe]
pub fn ssl_set_fd(ctx: ProbeContext) -> u32 {
    match (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        (Some(ssl), Some(fd)) => tls::set_fd(ssl, fd as u32 as u64),
        _ => args_failed(&ctx, "ssl_set_fd", 0),
    }
    0
}
