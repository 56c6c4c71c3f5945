//! TLS library calls: which socket a call's plaintext belongs to. The probes on the library
//! (`probes::tls`) save each call at entry; the socket hooks, which fire inside it when the
//! library moves its encrypted bytes, tell it its socket; its return emits the plaintext on
//! that socket's connection.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tracer_common::{counter, direction, syscall};

use crate::{
    capture::{on_tls_data, read_user},
    maps::{NO_FD, SyscallArgs, TLS_ARGS, TLS_CALLS, TLS_SOCKETS, TlsCall, TlsKey, count},
};

/// A TLS call of a traced thread begins.
#[inline(always)]
pub fn enter(ssl: u64, buf: u64, count_out: u64, direction: u8) {
    let id = bpf_get_current_pid_tgid();
    if !crate::filter::traced((id >> 32) as u32) {
        return;
    }
    let call = TlsCall {
        ssl,
        buf,
        count_out,
        ts_enter: unsafe { bpf_ktime_get_ns() },
        fd: NO_FD,
        direction,
        _pad: [0; 3],
    };
    let _ = TLS_CALLS.insert(&id, &call, 0);
}

/// Whether this thread is inside a TLS call; if so, `fd` is the call's socket.
#[inline(always)]
pub fn in_call(fd: u64) -> bool {
    let id = bpf_get_current_pid_tgid();
    match TLS_CALLS.get_ptr_mut(&id) {
        Some(call) => {
            // SAFETY: map value pointer, valid for this program run.
            unsafe { (*call).fd = fd as u32 };
            true
        }
        None => false,
    }
}

/// `SSL_set_fd`: the connection object's socket, known before any byte moves.
#[inline(always)]
pub fn set_fd(ssl: u64, fd: u64) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !crate::filter::traced(tgid) {
        return;
    }
    let key = TlsKey { tgid, _pad: 0, ssl };
    let _ = TLS_SOCKETS.insert(&key, &(fd as u32), 0);
}

/// A TLS call returns `ret` (a byte count, or for the `_ex` calls 1 with the count stored
/// through `count_out`).
#[inline(always)]
pub fn exit(ret: i64) {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = TLS_CALLS.get_ptr(&id) else {
        return;
    };
    // SAFETY: map value pointer; the fields are copied out before the entry is removed.
    let (ssl, buf, count_out, ts_enter, call_fd, dir) = unsafe {
        let c = &*call;
        (c.ssl, c.buf, c.count_out, c.ts_enter, c.fd, c.direction)
    };
    let _ = TLS_CALLS.remove(&id);
    let moved = if count_out != 0 {
        if ret == 1 {
            read_user::<u64>(count_out).unwrap_or(0) as i64
        } else {
            0
        }
    } else {
        ret
    };
    let key = TlsKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        ssl,
    };
    let fd = if call_fd != NO_FD {
        let _ = TLS_SOCKETS.insert(&key, &call_fd, 0);
        call_fd
    } else {
        match unsafe { TLS_SOCKETS.get(&key) } {
            Some(fd) => *fd,
            None => {
                if moved > 0 {
                    count(counter::TLS_NO_SOCKET);
                }
                return;
            }
        }
    };
    if moved <= 0 {
        return;
    }
    let Some(args) = TLS_ARGS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let args = unsafe { &mut *args };
    *args = SyscallArgs {
        fd: fd as u64,
        sk: 0,
        ptr: buf,
        iovcnt: 0,
        ts_enter,
        syscall: if dir == direction::INGRESS {
            syscall::SSL_READ
        } else {
            syscall::SSL_WRITE
        },
        direction: dir,
        _pad: [0; 6],
    };
    on_tls_data(args, moved);
}
