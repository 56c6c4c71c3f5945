//! Shared by the data probes: protocol sniffing, payload copy, and emitting records.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_task_pt_regs, generated,
    },
};
use core::ffi::c_void;
use tracer_common::{
    CloseEvent, ConnEvent, ConnKey, ConnState, DataEvent, EventHeader, MAX_CAPTURE, MAX_IOV,
    NO_FRAME, WIRE_VERSION, counter, kind, protocol, syscall,
};

use crate::{
    filter::config,
    frames::Placed,
    maps::{ARGS, CONNS, EVENTS, IOV_WALK, SCRATCH, SyscallArgs, count},
};

/// An HTTP/2 SETTINGS frame header: what an h2c server writes first (its preface), before
/// it has read the client's. Length a multiple of 6 (one 6-byte entry per setting), type 4,
/// flags 0 or ACK, stream 0.
#[inline(always)]
fn is_h2_settings(b: &[u8; 8]) -> bool {
    let len = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
    len % 6 == 0 && len <= 60 && b[3] == 4 && b[4] & !1 == 0 && b[5] == 0 && b[6] == 0 && b[7] == 0
}

/// A plausible HTTP/2 frame header (RFC 9113 section 4.1 and 6): what a connection that began
/// before the probes shows first when it is in the middle of a conversation. Default maximum
/// frame size, a known type with only its defined flags, the reserved bit clear, and the
/// stream-id and fixed-length rules of that type.
#[inline(always)]
pub(crate) fn is_h2_frame_header(b: &[u8; 9]) -> bool {
    let len = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
    let (ty, flags) = (b[3], b[4]);
    if len > 16384 || b[5] & 0x80 != 0 {
        return false;
    }
    let sid = (b[5] as u32) << 24 | (b[6] as u32) << 16 | (b[7] as u32) << 8 | b[8] as u32;
    let stream = sid != 0;
    match ty {
        // DATA: END_STREAM, PADDED
        0 => stream && flags & !0x09 == 0,
        // HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY
        1 => stream && flags & !0x2d == 0 && len > 0,
        // PRIORITY
        2 => stream && flags == 0 && len == 5,
        // RST_STREAM
        3 => stream && flags == 0 && len == 4,
        // SETTINGS: ACK (then empty)
        4 => !stream && len % 6 == 0 && (flags == 0 || (flags == 1 && len == 0)),
        // PING: ACK
        6 => !stream && flags & !0x01 == 0 && len == 8,
        // GOAWAY
        7 => !stream && flags == 0 && len >= 8,
        // WINDOW_UPDATE
        8 => flags == 0 && len == 4,
        // CONTINUATION: END_HEADERS
        9 => stream && flags & !0x04 == 0,
        // PUSH_PROMISE (5) never starts what a client or server sends unprompted; others unknown.
        _ => false,
    }
}

/// Protocol of a message from its first 8 bytes, or UNKNOWN.
#[inline(always)]
fn classify(head: u64) -> u8 {
    let b = head.to_le_bytes();
    let starts = |p: &[u8]| {
        let mut i = 0;
        while i < p.len() {
            if b[i] != p[i] {
                return false;
            }
            i += 1;
        }
        true
    };
    if starts(b"GET /")
        || starts(b"POST /")
        || starts(b"PUT /")
        || starts(b"HEAD /")
        || starts(b"DELETE /")
        || starts(b"PATCH /")
        || starts(b"OPTIONS ")
        || starts(b"CONNECT ")
        || starts(b"TRACE /")
        || starts(b"HTTP/1.")
    {
        protocol::HTTP1
    } else if starts(b"PRI * HT") || is_h2_settings(&b) {
        protocol::HTTP2
    } else {
        protocol::UNKNOWN
    }
}

/// Ask for a wake-up only when enough is waiting: the daemon also drains on a timer, so a busy
/// service does not pay a wake-up per syscall.
#[inline(always)]
fn wakeup_flag(threshold: u32) -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn output<T>(rec: &T, len: usize, threshold: u32) {
    // SAFETY: `len` never exceeds the size of `rec` (callers clamp it).
    let bytes = unsafe { core::slice::from_raw_parts((rec as *const T).cast::<u8>(), len) };
    if EVENTS
        .output::<[u8]>(bytes, wakeup_flag(threshold))
        .is_err()
    {
        count(counter::RINGBUF_FULL);
    }
}

#[inline(always)]
fn header(kind: u16, fd: u32) -> EventHeader {
    let id = bpf_get_current_pid_tgid();
    EventHeader {
        version: WIRE_VERSION,
        kind,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        fd,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Saves a syscall's arguments at entry.
#[inline(always)]
pub fn save_args(fd: u64, ptr: u64, iovcnt: u64, syscall: u8, direction: u8) {
    let id = bpf_get_current_pid_tgid();
    if !crate::filter::traced((id >> 32) as u32) {
        return;
    }
    let _ = ARGS.insert(
        &id,
        &SyscallArgs::now(fd, ptr, iovcnt, syscall, direction),
        0,
    );
}

/// recv flag: the bytes stay in the socket and will be read again.
pub const MSG_PEEK: u64 = 2;

/// Marks this thread's syscall as a peek (recvfrom/recvmsg with MSG_PEEK): its exit copies
/// nothing and counts nothing, or the same bytes would count twice and shift the framing.
#[inline(always)]
pub fn save_peek(fd: u64, syscall: u8) {
    save_args(fd, 0, 0, syscall, 0);
}

/// Takes the arguments saved at entry by this thread.
#[inline(always)]
pub fn take_args() -> Option<SyscallArgs> {
    let id = bpf_get_current_pid_tgid();
    let args = unsafe { ARGS.get(&id) }.copied();
    if args.is_some() {
        let _ = ARGS.remove(&id);
    }
    args
}

/// Arguments of a data syscall whose entry we did not see: it was already blocked (an idle
/// keep-alive connection waiting in read) when the probes attached. The user registers saved
/// at syscall entry still hold the arguments (x86_64 ABI: rdi, rsi, rdx).
#[inline(always)]
pub fn args_from_regs(syscall: u8, direction: u8) -> Option<SyscallArgs> {
    let id = bpf_get_current_pid_tgid();
    if !crate::filter::traced((id >> 32) as u32) {
        return None;
    }
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    let reg = |r: *const u64| unsafe { bpf_probe_read_kernel(r) }.ok();
    let fd = reg(unsafe { core::ptr::addr_of!((*regs).rdi) })?;
    let arg1 = reg(unsafe { core::ptr::addr_of!((*regs).rsi) })?;
    let arg2 = reg(unsafe { core::ptr::addr_of!((*regs).rdx) })?;
    let (ptr, iovcnt) = match syscall {
        syscall::SENDFILE => (0, 0),
        syscall::READV | syscall::WRITEV => (arg1, arg2),
        syscall::RECVMSG if arg2 & MSG_PEEK != 0 => return None,
        syscall::RECVFROM => {
            let flags = reg(unsafe { core::ptr::addr_of!((*regs).r10) })?;
            if flags & MSG_PEEK != 0 {
                return None;
            }
            (arg1, 0)
        }
        syscall::RECVMSG | syscall::SENDMSG => {
            let msg: [u64; 4] = read_user(arg1)?;
            (msg[2], msg[3])
        }
        _ => (arg1, 0),
    };
    Some(SyscallArgs::now(fd, ptr, iovcnt, syscall, direction))
}

#[inline(always)]
pub(crate) fn read_user<T>(src: u64) -> Option<T> {
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(src as *const T) }.ok()
}

/// First user buffer of a syscall and how many of its bytes moved (for the vectored calls:
/// the first iovec).
#[inline(always)]
pub(crate) fn first_buf(args: &SyscallArgs, ret: u64) -> Option<(u64, u64)> {
    match args.syscall {
        syscall::READV | syscall::WRITEV | syscall::RECVMSG | syscall::SENDMSG => {
            let iov: [u64; 2] = read_user(args.ptr)?;
            Some((iov[0], clamp(iov[1], ret)))
        }
        syscall::SENDFILE => None,
        _ => Some((args.ptr, ret)),
    }
}

/// Handles the exit of a read/write-family syscall that moved `ret` bytes.
#[inline(always)]
pub fn on_data(args: &SyscallArgs, ret: i64) {
    if ret <= 0 {
        return;
    }
    let Some(cfg) = config() else { return };
    let id = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    let state = match CONNS.get_ptr_mut(&key) {
        // SAFETY: map value pointer, valid for this program run.
        Some(s) => unsafe { &mut *s },
        None => {
            // Not seen being set up (opened before we started, or not a socket): only follow it
            // if these bytes start an HTTP message. The daemon checks it really is a socket.
            let proto = sniff(args, ret, false);
            if proto == protocol::UNKNOWN {
                return;
            }
            let fresh = ConnState {
                peer: Default::default(),
                seq: [0; 2],
                protocol: proto,
                role: tracer_common::role::UNKNOWN,
                announced: 0,
                sniffs_left: 0,
                h2: Default::default(),
            };
            if CONNS.insert(&key, &fresh, 0).is_err() {
                count(counter::CONN_MAP_FULL);
                return;
            }
            match CONNS.get_ptr_mut(&key) {
                Some(s) => unsafe { &mut *s },
                None => return,
            }
        }
    };
    if state.protocol == protocol::OTHER {
        return;
    }
    if state.protocol == protocol::UNKNOWN {
        let preexisting = state.sniffs_left != 0;
        let proto = sniff(args, ret, preexisting);
        if proto == protocol::UNKNOWN {
            // The first bytes of a fresh socket decide: anything else is not ours to copy. A
            // socket open before we attached gets a few more chances (its syscalls may start
            // inside a message).
            if preexisting {
                state.sniffs_left -= 1;
            }
            if state.sniffs_left == 0 {
                state.protocol = protocol::OTHER;
            }
            return;
        }
        state.protocol = proto;
    }
    if state.announced == 0 {
        state.announced = 1;
        let ev = ConnEvent {
            header: header(kind::CONN, key.fd),
            role: state.role,
            _pad: [0; 7],
            peer: state.peer,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        // A connection set up before we attached: the daemon must look it up in /proc while it
        // still exists, so wake it now.
        let threshold = if state.role == tracer_common::role::UNKNOWN {
            0
        } else {
            cfg.wakeup_bytes
        };
        output(&ev, core::mem::size_of::<ConnEvent>(), threshold);
    }
    let d = (args.direction.wrapping_sub(1) & 1) as usize;
    let seq = state.seq[d];
    state.seq[d] = seq.wrapping_add(1);
    emit_data(
        args,
        ret as u64,
        seq,
        state,
        cfg.capture_size,
        cfg.wakeup_bytes,
    );
}

/// Protocol of the bytes a syscall moved, from their start. `frames`: the connection may be
/// in the middle of a conversation (it was open before the probes attached), so an HTTP/2
/// frame header counts too.
#[inline(always)]
fn sniff(args: &SyscallArgs, ret: i64, frames: bool) -> u8 {
    if ret < 8 {
        return protocol::UNKNOWN;
    }
    let Some((buf, n)) = first_buf(args, ret as u64) else {
        return protocol::UNKNOWN;
    };
    if n < 8 {
        return protocol::UNKNOWN;
    }
    let Some(head) = read_user::<u64>(buf) else {
        return protocol::UNKNOWN;
    };
    let proto = classify(head);
    if proto != protocol::UNKNOWN || !frames || n < 9 {
        return proto;
    }
    match read_user::<[u8; 9]>(buf) {
        Some(h) if is_h2_frame_header(&h) => protocol::HTTP2,
        _ => protocol::UNKNOWN,
    }
}

#[inline(always)]
pub(crate) fn clamp(n: u64, max: u64) -> u64 {
    if n > max { max } else { n }
}

/// Copies up to `n` bytes from user memory into the record's payload at `off`.
#[inline(always)]
pub(crate) fn copy_user(payload: *mut u8, off: u64, src: u64, n: u64) -> bool {
    // Bounds the verifier can follow: off < MAX_CAPTURE and n <= MAX_CAPTURE, and the payload
    // has room for 2 * MAX_CAPTURE.
    if off >= MAX_CAPTURE as u64 {
        return false;
    }
    let n = clamp(n, MAX_CAPTURE as u64);
    if n == 0 {
        return true;
    }
    let rc = unsafe {
        generated::bpf_probe_read_user(
            payload.add(off as usize).cast::<c_void>(),
            n as u32,
            src as *const c_void,
        )
    };
    if rc != 0 {
        count(counter::READ_USER_FAILED);
    }
    rc == 0
}

/// State of one iovec walk, shared with the `bpf_loop` callback. In a per-CPU map rather
/// than on the stack, like `frames::Walk`: the verifier then checks the callback once per call
/// site, not once per value the fields could have.
#[repr(C)]
pub struct IovWalk {
    /// User address of the iovec array.
    iov: u64,
    /// Payload bytes copied so far (also the offset of the next copy).
    captured: u64,
    /// Payload bytes wanted in all.
    want: u64,
}

/// One iovec of the walk: copies a prefix of it after what is already captured.
/// Returns 1 to stop the loop (budget reached, or user memory unreadable), 0 to go on.
#[inline(never)]
extern "C" fn copy_iovec(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = IOV_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let w = unsafe { &mut *w };
    if w.captured >= w.want {
        return 1;
    }
    let Some(iov) = read_user::<[u64; 2]>(w.iov + i * 16) else {
        return 1;
    };
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch, not shared with a concurrent run on this CPU.
    let payload = unsafe { (*rec).payload.as_mut_ptr() };
    let n = clamp(iov[1], w.want - w.captured);
    if !copy_user(payload, w.captured, iov[0], n) {
        return 1;
    }
    w.captured += clamp(n, MAX_CAPTURE as u64);
    0
}

/// Copies the first `want` bytes spread over `iovcnt` iovecs. A `bpf_loop` keeps the program
/// small whatever the iovec count: gRPC's C core writes a header block as dozens of iovecs
/// (one per name and value), and an unrolled loop past 8 iovecs hit the verifier's limit.
#[inline(always)]
fn walk_iovecs(iov: u64, iovcnt: u64, want: u64) -> u64 {
    let Some(w) = IOV_WALK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU map value, used by one program run at a time on this CPU.
    let w = unsafe { &mut *w };
    *w = IovWalk {
        iov,
        captured: 0,
        want,
    };
    let n = clamp(iovcnt, MAX_IOV as u64) as u32;
    let cb = copy_iovec as extern "C" fn(u64, *mut c_void) -> i64;
    // SAFETY: the callback only touches per-CPU map values.
    unsafe {
        generated::bpf_loop(n, cb as *mut c_void, core::ptr::null_mut(), 0);
    }
    w.captured
}

#[inline(always)]
fn emit_data(
    args: &SyscallArgs,
    len: u64,
    seq: u32,
    state: &mut ConnState,
    capture: u32,
    wake: u32,
) {
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, not shared with a concurrent run on this CPU.
    let rec = unsafe { &mut *rec };
    let want = clamp(len, clamp(capture as u64, MAX_CAPTURE as u64));
    let walked = if state.protocol == protocol::HTTP2 {
        let slot = &mut state.h2[(args.direction.wrapping_sub(1) & 1) as usize];
        // Frames keep the whole header blocks within the budget: their budget is the whole
        // capture size, not a prefix of `len`.
        crate::frames::walk(args, len, clamp(capture as u64, MAX_CAPTURE as u64), slot)
    } else {
        None
    };
    let placed = walked.unwrap_or_else(|| {
        let payload = rec.payload.as_mut_ptr();
        let captured = match args.syscall {
            syscall::SENDFILE => 0,
            syscall::READV | syscall::WRITEV | syscall::RECVMSG | syscall::SENDMSG => {
                walk_iovecs(args.ptr, args.iovcnt, want)
            }
            _ => {
                if copy_user(payload, 0, args.ptr, want) {
                    want
                } else {
                    0
                }
            }
        };
        Placed {
            captured,
            flags: 0,
            frame_at: NO_FRAME,
            frame_at_captured: NO_FRAME,
        }
    });
    let captured = clamp(placed.captured, MAX_CAPTURE as u64);
    let h = header(kind::DATA, args.fd as u32);
    rec.event = DataEvent {
        header: h,
        ts_enter_ns: args.ts_enter,
        len,
        seq,
        captured: captured as u32,
        direction: args.direction,
        syscall: args.syscall,
        protocol: state.protocol,
        role: state.role,
        flags: placed.flags,
        _pad: [0; 3],
        comm: bpf_get_current_comm().unwrap_or_default(),
        frame_at: placed.frame_at,
        frame_at_captured: placed.frame_at_captured,
    };
    output(
        rec,
        core::mem::size_of::<DataEvent>() + captured as usize,
        wake,
    );
}

/// A socket of a traced process is closing: forget it, and tell the daemon if it carried HTTP.
#[inline(always)]
pub fn on_close(fd: u64) {
    let id = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: fd as u32,
    };
    let Some(state) = (unsafe { CONNS.get(&key) }) else {
        return;
    };
    let announced = state.announced;
    let _ = CONNS.remove(&key);
    if announced != 0 {
        let wake = config().map_or(0, |c| c.wakeup_bytes);
        let ev = CloseEvent {
            header: header(kind::CLOSE, key.fd),
        };
        output(&ev, core::mem::size_of::<CloseEvent>(), wake);
    }
}

/// A connection of a traced process was set up (accept returned `fd`, or connect succeeded).
#[inline(always)]
pub fn on_setup(fd: u64, sockaddr: u64, role: u8) {
    let id = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: fd as u32,
    };
    let mut peer = tracer_common::SockAddr::default();
    if sockaddr != 0 {
        if let Some(raw) = read_user::<[u8; 24]>(sockaddr) {
            let family = u16::from_ne_bytes([raw[0], raw[1]]);
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            match family {
                2 => {
                    peer.family = family;
                    peer.port = port;
                    peer.addr[..4].copy_from_slice(&raw[4..8]);
                }
                10 => {
                    peer.family = family;
                    peer.port = port;
                    peer.addr.copy_from_slice(&raw[8..24]);
                }
                // AF_UNIX and friends: not network peers; still sniffed like unknown fds.
                _ => return,
            }
        }
    }
    let state = ConnState {
        peer,
        seq: [0; 2],
        protocol: protocol::UNKNOWN,
        role,
        announced: 0,
        sniffs_left: 0,
        h2: Default::default(),
    };
    if CONNS.insert(&key, &state, 0).is_err() {
        count(counter::CONN_MAP_FULL);
    }
}
