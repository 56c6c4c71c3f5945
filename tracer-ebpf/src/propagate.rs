//! Trace context on the wire (opt-in, `feature::PROPAGATE`): a `sockops` program puts the TCP
//! sockets that traced processes connect into a socket map, and the `sk_msg` program run on
//! their writes adds a `traceparent` line to an HTTP/1 request whose head is whole in the
//! write and carries no context (`tracer_common::propagate`). The ids written wait per thread
//! until the socket hook of the same write emits them, as a CONTEXT record, just before the
//! DATA record of those bytes. Any failure sends the bytes as the application wrote them.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_sock_ops},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated,
    },
    programs::{SkMsgContext, SockOpsContext},
};
use core::ffi::c_void;
use tracer_common::{
    ContextEvent, Injected, ThreadTrace, counter, direction, feature, kind,
    propagate::{
        HEAD_MAX, HEADER_LEN, LOST, Scan, TRACEPARENT_FLAGS, Verdict, header, traceparent_at,
        traceparent_byte,
    },
};

use crate::{
    capture::{header_now, is_request, is_response, output_record},
    filter::{config, traced_pid},
    maps::{
        BODY_LEFT, CONNECTING, HEAD, INJECTED, PROPAGATE_SOCKETS, SCRATCH, SyscallArgs,
        THREAD_TRACES, count,
    },
};

const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;

/// Per-CPU room of the `sk_msg` program: the head it scans and the line it writes.
#[repr(C)]
pub struct Head {
    scan: Scan,
    len: u64,
    buf: [u8; HEAD_MAX],
    line: [u8; HEADER_LEN],
    _pad: [u8; 2],
    /// The trace of the server request being read, built here rather than on the stack.
    thread: ThreadTrace,
    /// Its `traceparent` value being read (`tracer_common::propagate::traceparent_at`).
    value_at: u32,
    /// Bits of the trace id and of the parent id, or-ed (all zero is invalid); `bad` once a
    /// digit is not lowercase hex.
    trace_any: u8,
    span_any: u8,
    bad: u8,
    _pad2: u8,
}

#[inline(always)]
fn enabled() -> bool {
    config().is_some_and(|c| c.features & feature::PROPAGATE != 0)
}

/// A traced process connects a TCP socket (this runs in its `connect`): remembered by cookie
/// until it is established (that callback may run in softirq, in no process of ours).
/// `traced` is the filter: the whole one, or, where sockops may not read the command name
/// (Linux 6.12), the pid filter alone, which then takes no socket while a `--comm` is set.
#[inline(always)]
pub fn on_sock_ops(ctx: &SockOpsContext, traced: impl Fn(u32) -> bool) {
    if !enabled() {
        return;
    }
    let ops = ctx.ops;
    // SAFETY: the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if traced((bpf_get_current_pid_tgid() >> 32) as u32) {
                let _ = CONNECTING.insert(&cookie, &0, 0);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: map lookup by value.
            if unsafe { CONNECTING.get(&cookie) }.is_none() {
                return;
            }
            let _ = CONNECTING.remove(&cookie);
            // A new socket at an old one's address starts with nothing known.
            // SAFETY: the program's context.
            let _ = BODY_LEFT.remove(&(unsafe { (*ops).__bindgen_anon_2.sk } as u64));
            let mut key = cookie;
            // SAFETY: the program's own context, as the helper wants it.
            let ops: &mut bpf_sock_ops = unsafe { &mut *ops };
            if PROPAGATE_SOCKETS
                .update(&mut key, ops, BPF_NOEXIST as u64)
                .is_err()
            {
                // EBUSY: another socket-map program (a CNI's) already owns the socket.
                count(counter::PROPAGATE_SOCKET_BUSY);
            }
        }
        _ => {}
    }
}

/// One scan step over the copied head (`bpf_loop` callback). 1 stops the loop.
#[inline(never)]
extern "C" fn scan_byte(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(h) = HEAD.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let h = unsafe { &mut *h };
    let len = (h.len as usize) & (HEAD_MAX * 2 - 1);
    let buf = &h.buf;
    let go = h.scan.step(i as usize, len, |j| buf[j & (HEAD_MAX - 1)]);
    if go { 0 } else { 1 }
}

/// Copies `n` bytes at `src` (kernel memory) into the head buffer and scans them.
///
/// `h` stays a raw pointer across `bpf_loop`, here and in every caller: the callback writes
/// the same map value through its own pointer, and a `&mut` held over the call lets the
/// compiler assume nothing changed (it read the results as they were before the loop).
#[inline(always)]
fn scan_head(h: *mut Head, src: *const u8, n: u64) -> bool {
    let n = unsafe { core::ptr::read_volatile(&n) };
    if n > HEAD_MAX as u64 || n == 0 {
        return false;
    }
    // SAFETY: reads kernel memory into the map value; the size is bounded by the buffer.
    if unsafe {
        generated::bpf_probe_read_kernel(
            (*h).buf.as_mut_ptr().cast::<c_void>(),
            n as u32,
            src.cast::<c_void>(),
        )
    } != 0
    {
        return false;
    }
    // SAFETY: a per-CPU map value, used by one program run at a time on this CPU.
    unsafe {
        (*h).len = n;
        (*h).scan = Scan::new();
    }
    let cb = scan_byte as extern "C" fn(u64, *mut c_void) -> i64;
    // SAFETY: the callback only touches per-CPU map values.
    unsafe { generated::bpf_loop(n as u32, cb as *mut c_void, core::ptr::null_mut(), 0) };
    true
}

/// The `sk_msg` verdict on one write of a socket in `PROPAGATE_SOCKETS`: always pass; the
/// bytes may have gained a `traceparent` line. A write is only looked at where a request
/// must start: `BODY_LEFT` follows each connection's request bodies, and a connection whose
/// framing is not known (not HTTP/1, pipelined, chunked, a split head) is left alone for good.
#[inline(always)]
pub fn on_msg(ctx: &SkMsgContext) {
    if !enabled() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    // Its connect passed the whole filter (`on_sock_ops`); this checks what a reload changed.
    if !traced_pid((id >> 32) as u32) {
        return;
    }
    let msg = ctx.msg;
    let size = ctx.size() as u64;
    // SAFETY: the program's context.
    // By socket address (sk_msg has no cookie helper): `sockops` clears it for a new socket.
    let cookie = unsafe { (*msg).__bindgen_anon_3.sk } as u64;
    // SAFETY: map value pointer, valid for this program run.
    if let Some(left) = BODY_LEFT.get_ptr_mut(&cookie).map(|p| unsafe { &mut *p }) {
        if *left == LOST {
            return;
        }
        if *left >= size {
            // All body.
            *left -= size;
            if *left == 0 {
                let _ = BODY_LEFT.remove(&cookie);
            }
            return;
        }
        // The rest of a body, then more: a request that does not start the write.
        *left = LOST;
        return count(counter::PROPAGATE_UNSAFE);
    }
    let want = if size > HEAD_MAX as u64 {
        HEAD_MAX as u64
    } else {
        size
    };
    // SAFETY: the program's context. Makes the first `want` bytes one flat run (a no-op when
    // they already are).
    if unsafe { generated::bpf_msg_pull_data(msg, 0, want as u32, 0) } != 0 {
        return lose(cookie, counter::PROPAGATE_NO_ROOM);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 8 > end {
        return lose(cookie, counter::PROPAGATE_SPLIT);
    }
    // SAFETY: bounds checked just above.
    let first = unsafe { core::ptr::read_unaligned(data as *const u64) };
    if !is_request(first) {
        // Not HTTP/1 (HTTP/2, another protocol): nothing to do on this connection.
        let _ = BODY_LEFT.insert(&cookie, &LOST, 0);
        return;
    }
    let Some(h) = HEAD.get_ptr_mut(0) else {
        return;
    };
    let have = (end - data) as u64;
    if !scan_head(h, data as *const u8, if have > want { want } else { have }) {
        return lose(cookie, counter::PROPAGATE_SPLIT);
    }
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let h = unsafe { &mut *h };
    let verdict = h.scan.verdict(size);
    match h.scan.body_left(size) {
        Some(0) => {}
        Some(n) => {
            let _ = BODY_LEFT.insert(&cookie, &n, 0);
        }
        None => {
            let _ = BODY_LEFT.insert(&cookie, &LOST, 0);
        }
    }
    match verdict {
        Verdict::Write => write(ctx, h, id),
        Verdict::HasContext => count(counter::PROPAGATE_HAS_CONTEXT),
        Verdict::Split => count(counter::PROPAGATE_SPLIT),
        Verdict::Unsafe => count(counter::PROPAGATE_UNSAFE),
    }
}

/// This connection is left alone from now on, for `why`.
#[inline(always)]
fn lose(cookie: u64, why: u32) {
    let _ = BODY_LEFT.insert(&cookie, &LOST, 0);
    count(why);
}

/// Writes the line at the end of the request line and leaves the ids for the socket hook.
#[inline(never)]
fn write(ctx: &SkMsgContext, h: &mut Head, id: u64) {
    let mut inj = Injected::default();
    // SAFETY: map lookup by value.
    match unsafe { THREAD_TRACES.get(&id) } {
        Some(t) => {
            inj.trace_id = t.trace_id;
            inj.flags = t.flags;
            inj.from_thread = 1;
        }
        None => {
            random_into(&mut inj.trace_id);
            inj.flags = 1;
        }
    }
    random_into(&mut inj.span_id);
    header(&inj.trace_id, &inj.span_id, inj.flags, &mut h.line);
    let at = h.scan.line_end;
    let head_end = h.scan.head_end + HEADER_LEN as u32;
    if at as usize >= HEAD_MAX || ctx.push_data(at, HEADER_LEN as u32, 0).is_err() {
        return count(counter::PROPAGATE_NO_ROOM);
    }
    // The whole head, line included, made one flat run: the room pushed is a piece of its own,
    // which TCP could send as a segment of its own, and a server reading the head in two
    // pieces is harder on everyone (the probes on its side read a head per read).
    // SAFETY: the program's context.
    let pulled = unsafe { generated::bpf_msg_pull_data(ctx.msg, 0, head_end, 0) } == 0;
    let (data, end) = (ctx.data(), ctx.data_end());
    let start = data + (at as usize & (HEAD_MAX - 1));
    if !pulled || start + HEADER_LEN > end {
        // Take the room back out: the bytes go as they were written.
        let _ = ctx.pop_data(at, HEADER_LEN as u32, 0);
        return count(counter::PROPAGATE_NO_ROOM);
    }
    let out = start as *mut u8;
    let mut i = 0;
    while i < HEADER_LEN {
        // SAFETY: `start + HEADER_LEN <= end` was checked.
        unsafe { *out.add(i) = h.line[i] };
        i += 1;
    }
    // SAFETY: the context's socket pointer, kept as a number to match the socket hook's.
    inj.sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk } as u64;
    // SAFETY: no arguments.
    inj.ts_ns = unsafe { bpf_ktime_get_ns() };
    let _ = INJECTED.insert(&id, &inj, 0);
    count(counter::PROPAGATE_WRITTEN);
}

#[inline(always)]
fn random_into<const N: usize>(out: &mut [u8; N]) {
    let mut i = 0;
    while i < N {
        // SAFETY: no arguments.
        let r = unsafe { bpf_get_prandom_u32() }.to_le_bytes();
        let mut k = 0;
        while k < 4 && i + k < N {
            out[i + k] = r[k];
            k += 1;
        }
        i += 4;
    }
    // All-zero ids are invalid in W3C.
    out[0] |= 1;
}

/// Socket-hook side: the write that just moved carried ids the `sk_msg` program wrote; its
/// CONTEXT record goes before its DATA record (sequence number `seq`).
#[inline(never)]
pub fn report(args: &SyscallArgs, seq: u32) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map lookup by value.
    let Some(inj) = (unsafe { INJECTED.get(&id) }).copied() else {
        return;
    };
    let _ = INJECTED.remove(&id);
    // The socket hooks know the socket; the syscall hooks know when the write began.
    if (args.sk != 0 && inj.sk != args.sk) || (args.sk == 0 && inj.ts_ns < args.ts_enter) {
        return;
    }
    let ev = ContextEvent {
        header: header_now(kind::CONTEXT, id, args.fd as u32),
        seq,
        flags: inj.flags,
        from_thread: inj.from_thread,
        _pad: [0; 2],
        trace_id: inj.trace_id,
        span_id: inj.span_id,
    };
    output_record(&ev);
}

/// Capture side, connections not known to be a client's, after the DATA record was built in
/// the scratch: a thread that reads a request head serves that request until it writes a
/// response head; its outgoing requests continue the request's trace (its `traceparent`'s, or
/// a new one). Judged by the bytes, since a connection the syscall hooks did not see accepted
/// (its server was already waiting in `accept` when they attached) has no role.
#[inline(never)]
pub fn follow_thread(direction_of: u8) {
    let id = bpf_get_current_pid_tgid();
    let (Some(rec), Some(h)) = (SCRATCH.get_ptr_mut(0), HEAD.get_ptr_mut(0)) else {
        return;
    };
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let rec = unsafe { &*rec };
    let captured = rec.event.captured as u64;
    if captured < 8 {
        return;
    }
    // SAFETY: the payload holds at least 8 bytes.
    let first = unsafe { core::ptr::read_unaligned(rec.payload.as_ptr().cast::<u64>()) };
    if direction_of == direction::EGRESS {
        if is_response(first) {
            let _ = THREAD_TRACES.remove(&id);
        }
        return;
    }
    if !is_request(first) {
        return;
    }
    let n = if captured > HEAD_MAX as u64 {
        HEAD_MAX as u64
    } else {
        captured
    };
    if !scan_head(h, rec.payload.as_ptr(), n) {
        return;
    }
    let parsed = incoming_trace(h);
    // SAFETY: as above; no loop runs from here on.
    let t = unsafe { &mut (*h).thread };
    if !parsed {
        random_into(&mut t.trace_id);
        t.flags = 1;
    }
    let _ = THREAD_TRACES.insert(&id, t, 0);
}

/// Reads the scanned head's `traceparent` into `h.thread`, one byte per loop turn (an
/// unrolled parse spilled its digits to the stack, which the capture's call chain cannot
/// spare). `false` when it has none or an invalid one.
#[inline(always)]
fn incoming_trace(h: *mut Head) -> bool {
    {
        // SAFETY: per-CPU map value; this borrow ends before the loop.
        let h = unsafe { &mut *h };
        if h.scan.context_at == 0 {
            return false;
        }
        let len = (h.len as usize) & (HEAD_MAX * 2 - 1);
        let buf = &h.buf;
        let at = h.scan.context_at as usize;
        let Some(v) = traceparent_at(at, len, |j| buf[j & (HEAD_MAX - 1)]) else {
            return false;
        };
        h.value_at = v as u32;
        h.trace_any = 0;
        h.span_any = 0;
        h.bad = 0;
    }
    let cb = traceparent_digit as extern "C" fn(u64, *mut c_void) -> i64;
    // SAFETY: the callback only touches per-CPU map values.
    unsafe {
        generated::bpf_loop(
            TRACEPARENT_FLAGS as u32 + 1,
            cb as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above, read after the loop wrote them.
    unsafe { (*h).bad == 0 && (*h).trace_any != 0 && (*h).span_any != 0 }
}

/// Byte `k` of the `traceparent` value (`bpf_loop` callback). 1 stops the loop.
#[inline(never)]
extern "C" fn traceparent_digit(k: u64, _ctx: *mut c_void) -> i64 {
    let Some(h) = HEAD.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let h = unsafe { &mut *h };
    let buf = &h.buf;
    let k = k as usize;
    let Some(b) = traceparent_byte(h.value_at as usize, k, &|j| buf[j & (HEAD_MAX - 1)]) else {
        h.bad = 1;
        return 1;
    };
    if k < 16 {
        // The mask read back through a volatile load: otherwise the compiler drops it (k < 16
        // is known here), and the 6.1 verifier, which lost the bound on this branch, refuses
        // the store.
        let i = unsafe { core::ptr::read_volatile(&k) } & 15;
        h.thread.trace_id[i] = b;
        h.trace_any |= b;
    } else if k < TRACEPARENT_FLAGS {
        h.span_any |= b;
    } else {
        h.thread.flags = b;
    }
    0
}
