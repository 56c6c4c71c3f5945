//! Kernel side of the tracer: socket or syscall tracepoints that follow sockets carrying HTTP,
//! and uprobes on TLS libraries for their plaintext, copying what the daemon needs into a ring
//! buffer. One file per syscall family under `probes/`.
#![no_std]
#![no_main]

mod capture;
mod diag;
mod filter;
mod frames;
mod maps;
mod probes;
mod propagate;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach this; it only exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
