//! Uprobes on Go's `crypto/tls.(*Conn).Read` and `Write` (Go 1.17+, register ABI): receiver in
//! RAX, the buffer's pointer and length in RBX and RCX, the goroutine in R14. Go moves
//! goroutines between threads and grows their stacks (uretprobes would break them), so the
//! return side of `Read` is a uprobe on each of its RET instructions, where RAX holds the byte
//! count, and calls are keyed by goroutine. `Write` is emitted at its entry (see `tls::go_enter`).
use aya_ebpf::{EbpfContext, macros::uprobe, programs::ProbeContext};
use tracer_common::direction;

use crate::tls;

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u8) {
    // SAFETY: a uprobe's context is the task's saved registers.
    let (conn, buf, len, g) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx, r.r14)
    };
    // The attach cookie is the hash of the type `*net.TCPConn` in this binary: the connection
    // under the TLS one must be a TCP socket to have an fd.
    let tcp_hash = unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) };
    tls::go_enter(conn, buf, len, g, tcp_hash as u32, dir);
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS);
    0
}

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS);
    0
}

/// At a RET of either function: `n` in RAX.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    // SAFETY: as above.
    let (n, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    tls::go_exit(g, n as i64);
    0
}
