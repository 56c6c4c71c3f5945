//! TLS library calls: which socket a call's plaintext belongs to. The probes on the library
//! (`probes::tls`) save each call at entry; the socket hooks, which fire inside it when the
//! library moves its encrypted bytes, tell it its socket; its return emits the plaintext on
//! that socket's connection.
//!
//! A library with a memory BIO (node) moves its encrypted bytes outside its calls. There a
//! connection object is tied to a socket by what happens next to each other on one thread,
//! and only while both are unclaimed: the TLS call right after the thread received records on
//! a fresh TLS socket (node decrypts what it just read), or the records a thread sends right
//! after a TLS call (node flushes what the call encrypted). A connection object or socket is
//! tied once; nothing is guessed after that.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::RetProbeContext,
};
use aya_log_ebpf::debug;
use tracer_common::{counter, direction, syscall};

use crate::{
    capture::become_tls,
    capture::{on_tls_data, read_user},
    maps::{
        CONNS, GO_CALLS, GoKey, NO_FD, SyscallArgs, TLS_ARGS, TLS_CALLS, TLS_SOCKETS, TLS_STEPS,
        TlsCall, TlsKey, TlsStep, count,
    },
};
use tracer_common::{ConnKey, ConnState, protocol};

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
pub fn exit(ctx: &RetProbeContext, ret: i64) {
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
    } else if let Some(fd) = unsafe { TLS_SOCKETS.get(&key) } {
        *fd
    } else if let Some(fd) = after_recv(id, &key) {
        debug!(
            ctx,
            "TLS: pid {} connection object {:x} tied to fd {} (memory BIO)", key.tgid, ssl, fd
        );
        fd
    } else {
        if moved > 0 {
            count(counter::TLS_NO_SOCKET);
            debug!(
                ctx,
                "TLS: pid {}: {} bytes of connection object {:x}, whose socket is unknown",
                key.tgid,
                moved,
                ssl
            );
        }
        return;
    };
    if moved <= 0 {
        return;
    }
    plaintext(fd, buf, ts_enter, dir, moved);
}

/// Emits `moved` bytes of plaintext at `buf` on the connection of socket `fd`.
#[inline(always)]
fn plaintext(fd: u32, buf: u64, ts_enter: u64, dir: u8, moved: i64) {
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

/// Go: the fd under a `*tls.Conn`, read through its fields (`conn net.Conn` first: an
/// interface whose data is a `*net.TCPConn`, whose `*netFD` starts with a `poll.FD`, whose
/// `Sysfd` follows a 16-byte mutex). Only when the interface's type is `*net.TCPConn`: its
/// itab holds the type's hash at offset 16, compared with `tcp_hash`.
#[inline(always)]
fn go_fd(conn: u64, tcp_hash: u32) -> Option<u32> {
    let iface: [u64; 2] = read_user(conn)?;
    let hash: u32 = read_user(iface[0] + 16)?;
    if tcp_hash == 0 || hash != tcp_hash {
        return None;
    }
    let netfd: u64 = read_user(iface[1])?;
    let fd: i64 = read_user(netfd + 16)?;
    (0..=i32::MAX as i64).contains(&fd).then_some(fd as u32)
}

/// A Go TLS call begins on goroutine `g`. A write is emitted at once, all of it: Go's
/// `Write` writes the whole buffer or fails the connection, and at its return the peer's
/// answer may already have been read by another goroutine (Go's HTTP client reads responses
/// on one and writes requests on another), which would put the answer before the request.
#[inline(always)]
pub fn go_enter(conn: u64, buf: u64, len: u64, g: u64, tcp_hash: u32, direction: u8) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !crate::filter::traced(tgid) {
        return;
    }
    let Some(fd) = go_fd(conn, tcp_hash) else {
        count(counter::TLS_NO_SOCKET);
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if direction == direction::EGRESS {
        plaintext(fd, buf, now, direction, len as i64);
        return;
    }
    let call = TlsCall {
        ssl: conn,
        buf,
        count_out: 0,
        ts_enter: now,
        fd,
        direction,
        _pad: [0; 3],
    };
    let _ = GO_CALLS.insert(&GoKey { tgid, _pad: 0, g }, &call, 0);
}

/// A Go TLS call of goroutine `g` returns `n` bytes.
#[inline(always)]
pub fn go_exit(g: u64, n: i64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = GoKey { tgid, _pad: 0, g };
    let Some(call) = GO_CALLS.get_ptr(&key) else {
        return;
    };
    // SAFETY: map value pointer; the fields are copied out before the entry is removed.
    let (fd, buf, ts_enter, dir) = unsafe {
        let c = &*call;
        (c.fd, c.buf, c.ts_enter, c.direction)
    };
    let _ = GO_CALLS.remove(&key);
    if n > 0 {
        plaintext(fd, buf, ts_enter, dir, n);
    }
}

/// A TLS call on an unbound connection object moved no bytes on a socket (a memory BIO). If
/// the thread's last step was receiving records on an unclaimed TLS socket, the call was for
/// them: the two are tied, and the socket's fd returned. Otherwise the call is remembered for
/// the records the thread sends next.
#[inline(always)]
fn after_recv(id: u64, key: &TlsKey) -> Option<u32> {
    let step = unsafe { TLS_STEPS.get(&id) }.copied();
    let fd = step.map_or(NO_FD, |s| s.recv_fd);
    if fd != NO_FD
        && let Some(state) = unclaimed(key.tgid, fd)
    {
        let _ = TLS_STEPS.remove(&id);
        tie(key, fd, state);
        return Some(fd);
    }
    let next = TlsStep {
        recv_fd: NO_FD,
        _pad: 0,
        ssl: key.ssl,
    };
    let _ = TLS_STEPS.insert(&id, &next, 0);
    None
}

/// TLS records moved on a socket not yet tied to a connection object, outside any TLS call.
#[inline(always)]
pub fn memory_bio_io(args: &SyscallArgs, state: &mut ConnState) {
    let id = bpf_get_current_pid_tgid();
    let step = unsafe { TLS_STEPS.get(&id) }.copied();
    if args.direction == direction::EGRESS {
        let _ = TLS_STEPS.remove(&id);
        // The records of the TLS call this thread just made.
        if let Some(s) = step
            && s.ssl != 0
        {
            let key = TlsKey {
                tgid: (id >> 32) as u32,
                _pad: 0,
                ssl: s.ssl,
            };
            tie(&key, args.fd as u32, state);
        }
    } else {
        let next = TlsStep {
            recv_fd: args.fd as u32,
            _pad: 0,
            ssl: 0,
        };
        let _ = TLS_STEPS.insert(&id, &next, 0);
    }
}

/// Socket I/O of a connection already tied: whatever the thread did before is not next to
/// its next TLS call any more.
#[inline(always)]
pub fn other_io() {
    let id = bpf_get_current_pid_tgid();
    let _ = TLS_STEPS.remove(&id);
}

/// The connection of socket `fd` when it carries TLS records and no connection object claimed
/// it yet.
#[inline(always)]
fn unclaimed(tgid: u32, fd: u32) -> Option<&'static mut ConnState> {
    let state = CONNS.get_ptr_mut(&ConnKey { tgid, fd })?;
    // SAFETY: map value pointer, valid for this program run.
    let state = unsafe { &mut *state };
    (state.protocol == protocol::TLS && state.tls == 0).then_some(state)
}

fn tie(key: &TlsKey, fd: u32, state: &mut ConnState) {
    let _ = TLS_SOCKETS.insert(key, &fd, 0);
    become_tls(state);
}
