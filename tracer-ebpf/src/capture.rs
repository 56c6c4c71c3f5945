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
    CloseEvent, CodeEvent, Config, ConnEvent, ConnKey, ConnState, DataEvent, EventHeader,
    MAX_CAPTURE, MAX_IOV, NO_FRAME, SockAddr, WIRE_VERSION, conn_flags, counter, direction,
    feature,
    h2::{FrameHeader, Rules},
    kind, protocol, role, syscall,
};

use crate::{
    filter::config,
    frames::Placed,
    maps::{ARGS, CODE_EVENTS, CONNS, EVENTS, IOV_WALK, SCRATCH, SOCKS, SyscallArgs, count},
};

/// What the first bytes of a connection were: a request (or the HTTP/2 client preface), a
/// response (or an HTTP/2 server's SETTINGS), or an HTTP/2 frame from the middle of a
/// conversation. Who sent the first message tells who is the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum First {
    Request,
    Response,
    Frame,
}

#[derive(Clone, Copy)]
struct Sniffed {
    protocol: u8,
    first: First,
}

impl Sniffed {
    const NONE: Sniffed = Sniffed {
        protocol: protocol::UNKNOWN,
        first: First::Frame,
    };

    /// The role of the traced process, when these were the connection's first bytes.
    #[inline(always)]
    fn role(self, dir: u8) -> u8 {
        let sent = dir == tracer_common::direction::EGRESS;
        match self.first {
            First::Frame => role::UNKNOWN,
            First::Request if sent => role::CONNECTED,
            First::Response if !sent => role::CONNECTED,
            _ => role::ACCEPTED,
        }
    }
}

/// Protocol of a message from its first 8 bytes, or UNKNOWN.
#[inline(always)]
fn classify(head: u64) -> Sniffed {
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
    let (protocol, first) = if starts(b"GET /")
        || starts(b"POST /")
        || starts(b"PUT /")
        || starts(b"HEAD /")
        || starts(b"DELETE /")
        || starts(b"PATCH /")
        || starts(b"OPTIONS ")
        || starts(b"CONNECT ")
        || starts(b"TRACE /")
    {
        (protocol::HTTP1, First::Request)
    } else if starts(b"HTTP/1.") {
        (protocol::HTTP1, First::Response)
    } else if starts(b"PRI * HT") {
        (protocol::HTTP2, First::Request)
    } else if (0x14..=0x17).contains(&b[0]) && b[1] == 3 && b[2] <= 4 {
        // A TLS record header: content type, version 3.x.
        (protocol::TLS, First::Frame)
    } else if FrameHeader::parse(&[b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 0])
        .follows(Rules::SERVER_PREFACE)
    {
        // An h2c server writes its SETTINGS first, before it has read the client's preface.
        // Of the stream id, 8 bytes hold all but the last byte: taken as 0, the rest is checked.
        (protocol::HTTP2, First::Response)
    } else {
        return Sniffed::NONE;
    };
    Sniffed { protocol, first }
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

/// Whether a message's first 8 bytes start an HTTP/1 request.
#[inline(always)]
pub(crate) fn is_request(head: u64) -> bool {
    let s = classify(head);
    s.protocol == protocol::HTTP1 && s.first == First::Request
}

/// Whether a message's first 8 bytes start an HTTP/1 response.
#[inline(always)]
pub(crate) fn is_response(head: u64) -> bool {
    let s = classify(head);
    s.protocol == protocol::HTTP1 && s.first == First::Response
}

/// A small record of this thread, now.
#[inline(always)]
pub(crate) fn output_record<T>(rec: &T) {
    let wake = config().map_or(0, |c| c.wakeup_bytes);
    output(rec, core::mem::size_of::<T>(), wake);
}

#[inline(always)]
fn header(kind: u16, fd: u32) -> EventHeader {
    header_now(kind, bpf_get_current_pid_tgid(), fd)
}

/// A record header of thread `pid_tgid` (the caller already has it), now.
#[inline(always)]
pub(crate) fn header_now(kind: u16, pid_tgid: u64, fd: u32) -> EventHeader {
    header_of(kind, (pid_tgid >> 32) as u32, pid_tgid as u32, fd)
}

#[inline(always)]
fn header_of(kind: u16, tgid: u32, tid: u32, fd: u32) -> EventHeader {
    header_at(kind, tgid, tid, fd, unsafe { bpf_ktime_get_ns() })
}

#[inline(always)]
fn header_at(kind: u16, tgid: u32, tid: u32, fd: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        version: WIRE_VERSION,
        kind,
        tgid,
        tid,
        fd,
        ts_ns,
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

/// The user registers a task saved when it entered its current syscall (x86_64): the syscall
/// number and the arguments the probes need.
#[derive(Clone, Copy)]
struct UserRegs {
    r10: u64,
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
}

// The eBPF target is always `bpf`; `bpf_target_arch` (build.rs) names the kernel's.
#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!(
    "tracer-ebpf reads syscall arguments from x86_64 registers (pt_regs orig_rax, rdi, rsi, rdx, \
     r10) and matches x86_64 syscall numbers (tracer_common::nr): port user_regs() and nr first"
);

/// `bpf_task_pt_regs` returns a pointer the verifier knows the type of (BTF), so the fields are
/// read with plain loads, which the kernel guards itself: no `bpf_probe_read_kernel` call.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn user_regs() -> Option<UserRegs> {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    // SAFETY: a BTF pointer to the task's saved registers; the verifier checks each offset.
    unsafe {
        Some(UserRegs {
            r10: core::ptr::read_volatile(core::ptr::addr_of!((*regs).r10)),
            dx: core::ptr::read_volatile(core::ptr::addr_of!((*regs).rdx)),
            si: core::ptr::read_volatile(core::ptr::addr_of!((*regs).rsi)),
            di: core::ptr::read_volatile(core::ptr::addr_of!((*regs).rdi)),
            orig_ax: core::ptr::read_volatile(core::ptr::addr_of!((*regs).orig_rax)),
        })
    }
}

/// Arguments of data syscall `syscall` from its saved registers (x86_64 ABI: rdi, rsi, rdx,
/// r10); `None` for a peek, whose bytes will be read again.
#[inline(always)]
fn args_of(regs: &UserRegs, syscall: u8, direction: u8) -> Option<SyscallArgs> {
    let (ptr, iovcnt) = match syscall {
        syscall::SENDFILE => (0, 0),
        syscall::READV | syscall::WRITEV => (regs.si, regs.dx),
        syscall::RECVMSG if regs.dx & MSG_PEEK != 0 => return None,
        syscall::RECVFROM if regs.r10 & MSG_PEEK != 0 => return None,
        syscall::RECVMSG | syscall::SENDMSG => {
            let msg: [u64; 4] = read_user(regs.si)?;
            (msg[2], msg[3])
        }
        _ => (regs.si, 0),
    };
    Some(SyscallArgs::now(regs.di, ptr, iovcnt, syscall, direction))
}

/// Arguments of a data syscall whose entry we did not see: it was already blocked (an idle
/// keep-alive connection waiting in read) when the probes attached. The user registers saved
/// at syscall entry still hold the arguments.
#[inline(always)]
pub fn args_from_regs(syscall: u8, direction: u8) -> Option<SyscallArgs> {
    let id = bpf_get_current_pid_tgid();
    if !crate::filter::traced((id >> 32) as u32) {
        return None;
    }
    args_of(&user_regs()?, syscall, direction)
}

/// Arguments of the syscall that made socket `sk` move bytes (the socket hooks fire inside it,
/// in the calling task): which syscall from the saved `orig_ax`, the rest from its registers.
#[inline(always)]
pub fn args_from_sock(sk: u64, direction: u8) -> Option<SyscallArgs> {
    let id = bpf_get_current_pid_tgid();
    if !crate::filter::traced((id >> 32) as u32) {
        return None;
    }
    let regs = user_regs()?;
    let Some(syscall) = tracer_common::syscall_of_nr(regs.orig_ax) else {
        count(counter::UNSUPPORTED_CALL);
        return None;
    };
    let mut args = args_of(&regs, syscall, direction)?;
    args.sk = sk;
    Some(args)
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

/// Handles a read/write-family syscall that moved `ret` bytes. Its own BPF function, so its
/// stack is not added to that of the hook that found the arguments.
#[inline(never)]
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
    let mut found = CONNS.get_ptr_mut(&key);
    if let Some(s) = found {
        // SAFETY: map value pointer, valid for this program run.
        let known = unsafe { (*s).sk };
        if args.sk != 0 && known != 0 && known != args.sk {
            // The fd names another socket now: the old one closed without our seeing it end.
            count(counter::FD_REUSED);
            end(&key, unsafe { (*s).announced }, known);
            found = None;
        }
    }
    // Only a tracked socket not classified in the clear yet (unknown, TLS records, or TLS) is
    // looked up in the TLS calls: HTTP, other protocols and the fds the syscall hooks see that
    // are no sockets pay nothing for it. A fresh socket's first bytes inside a TLS call are
    // TLS records: its next syscall in the call finds it.
    // SAFETY: as above.
    let unsettled = found.is_some_and(|s| unsafe {
        (*s).tls != 0 || (*s).protocol == protocol::UNKNOWN || (*s).protocol == protocol::TLS
    });
    if cfg.features & feature::TLS != 0
        && unsettled
        && let Some(s) = found
        && crate::tls::in_call(args.fd)
    {
        // Encrypted bytes of a TLS call: the call's plaintext stands for them.
        // SAFETY: as above.
        become_tls(unsafe { &mut *s });
        return;
    }
    // SAFETY: as above.
    if found.is_some_and(|s| unsafe { (*s).tls } != 0) {
        // Encrypted bytes moved outside a TLS call (the handshake, a memory BIO).
        if cfg.features & feature::TLS != 0 {
            crate::tls::other_io();
        }
        return;
    }
    if found.is_none() {
        if !start(args, ret, &key) {
            return;
        }
        found = CONNS.get_ptr_mut(&key);
    }
    // SAFETY: as above.
    let Some(state) = found.map(|s| unsafe { &mut *s }) else {
        return;
    };
    if state.sk == 0 && args.sk != 0 {
        // Seeded by the daemon (open before we attached): from now on it is this socket.
        state.sk = args.sk;
        remember_sock(args.sk, &key);
    }
    if state.protocol == protocol::TLS {
        // TLS records moved outside a TLS call: a library with a memory BIO (node) moves them
        // itself, just before or after the call they belong to.
        if cfg.features & feature::TLS != 0 {
            crate::tls::memory_bio_io(args, state);
        }
        return;
    }
    follow(args, ret, state);
}

/// Plaintext of a TLS call on socket `fd` (`args.syscall` is SSL_READ or SSL_WRITE, `ptr`
/// the plaintext buffer): followed like a syscall's bytes, on the socket's own entry.
#[inline(never)]
pub fn on_tls_data(args: &SyscallArgs, ret: i64) {
    if ret <= 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: args.fd as u32,
    };
    if CONNS.get_ptr_mut(&key).is_none() && !track_tls(&key) {
        return;
    }
    // SAFETY: map value pointer, valid for this program run.
    let Some(state) = CONNS.get_ptr_mut(&key).map(|s| unsafe { &mut *s }) else {
        return;
    };
    become_tls(state);
    follow(args, ret, state);
}

/// Puts a TLS connection whose socket the probes have not met yet in the map. Its own BPF
/// function: the new entry's stack is not added to the data path's.
#[inline(never)]
fn track_tls(key: &ConnKey) -> bool {
    let fresh = ConnState::new(SockAddr::default(), 0, protocol::UNKNOWN, role::UNKNOWN, 0);
    track(key, &fresh, 0).is_some()
}

/// Puts a new connection in the map and returns its entry.
#[inline(always)]
fn track(key: &ConnKey, state: &ConnState, sk: u64) -> Option<&'static mut ConnState> {
    if CONNS.insert(key, state, 0).is_err() {
        count(counter::CONN_MAP_FULL);
        return None;
    }
    if sk != 0 {
        remember_sock(sk, key);
    }
    // SAFETY: map value pointer, valid for this program run.
    CONNS.get_ptr_mut(key).map(|s| unsafe { &mut *s })
}

/// From now on the connection is followed through its TLS library's plaintext. Until it was
/// announced, what its encrypted bytes looked like (not HTTP) says nothing of the plaintext.
#[inline(always)]
pub(crate) fn become_tls(state: &mut ConnState) {
    if state.tls == 0 {
        state.tls = 1;
        if state.announced == 0 {
            state.protocol = protocol::UNKNOWN;
        }
    }
}

/// Classifies a tracked connection from its bytes until it is known, announces it once it
/// carries HTTP, and emits its DATA record. The three steps are BPF functions of their own,
/// called one after the other: the verifier's stack budget (512 bytes along a chain of calls,
/// on kernels without private BPF stacks) counts the largest one only.
#[inline(always)]
fn follow(args: &SyscallArgs, ret: i64, state: &mut ConnState) {
    let http = classify_http(args, ret, state);
    if http == Http::No {
        return;
    }
    if http == Http::First {
        announce(args, state);
    }
    let propagate = config().is_some_and(|c| c.features & feature::PROPAGATE != 0)
        && state.protocol == protocol::HTTP1;
    if propagate && args.direction == direction::EGRESS && state.role != role::ACCEPTED {
        // The ids written into these bytes, if any, before the bytes themselves.
        crate::propagate::report(args, state.seq[1]);
    }
    emit(args, ret, state);
    if propagate && state.role != role::CONNECTED {
        crate::propagate::follow_thread(args.direction);
    }
}

/// What a connection's bytes are, as far as following it goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Http {
    /// Not HTTP (or not yet known): nothing is emitted.
    No,
    /// HTTP, for the first time: its CONN record goes before its first DATA record.
    First,
    Known,
}

/// Whether the connection carries HTTP (`First` the first time it does).
#[inline(never)]
fn classify_http(args: &SyscallArgs, ret: i64, state: &mut ConnState) -> Http {
    let Some(cfg) = config() else {
        return Http::No;
    };
    if state.protocol == protocol::OTHER || state.protocol == protocol::TLS {
        return Http::No;
    }
    if state.protocol == protocol::UNKNOWN {
        let preexisting = state.sniffs_left != 0;
        let sniffed = sniff(args, ret, preexisting);
        if sniffed.protocol == protocol::TLS && state.tls == 0 && cfg.features & feature::TLS != 0 {
            // Encrypted: the TLS library's plaintext will stand for it.
            state.protocol = protocol::TLS;
            return Http::No;
        }
        if sniffed.protocol == protocol::UNKNOWN || sniffed.protocol == protocol::TLS {
            // The first bytes of a fresh socket decide: anything else is not ours to copy. A
            // socket open before we attached gets a few more chances (its syscalls may start
            // inside a message).
            if preexisting {
                state.sniffs_left -= 1;
            }
            if state.sniffs_left == 0 {
                state.protocol = protocol::OTHER;
            }
            return Http::No;
        }
        state.protocol = sniffed.protocol;
        // A TLS socket's encrypted first bytes did not say who the client is; its plaintext does.
        if state.tls != 0 && state.role == role::UNKNOWN {
            state.role = sniffed.role(args.direction);
        }
    }
    if state.announced == 0 {
        state.announced = 1;
        return Http::First;
    }
    Http::Known
}

/// Emits the DATA record of bytes the connection moved, with its next sequence number.
#[inline(never)]
fn emit(args: &SyscallArgs, ret: i64, state: &mut ConnState) {
    let Some(cfg) = config() else { return };
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

/// Puts a socket the probes meet for the first time in the map, unless it is not worth an
/// entry. Syscall hooks: an fd not seen being set up (opened before we started, or not a
/// socket) is only followed if these bytes start an HTTP message; the daemon checks it is a
/// socket. Socket hooks: it is a socket opened since we attached (those open before were
/// seeded by the daemon), so its first bytes also say who is the client; a socket that is not
/// TCP or not HTTP is remembered as such, so its later syscalls cost one lookup. Its own BPF
/// function: the new entry's stack is not added to the data path's.
#[inline(never)]
fn start(args: &SyscallArgs, ret: i64, key: &ConnKey) -> bool {
    let Some(cfg) = config() else { return false };
    // The entry is made in the per-CPU scratch (free until the DATA record is built there),
    // not on the stack: this function sits on the data path's call chain.
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch, larger than a ConnState, used by one program run at a time.
    let fresh = unsafe { &mut *rec.cast::<ConnState>() };
    *fresh = ConnState::new(
        SockAddr::default(),
        args.sk,
        protocol::OTHER,
        role::UNKNOWN,
        0,
    );
    if args.sk == 0 {
        let sniffed = sniff(args, ret, false);
        if sniffed.protocol == protocol::UNKNOWN
            || (sniffed.protocol == protocol::TLS && cfg.features & feature::TLS == 0)
        {
            return false;
        }
        fresh.protocol = sniffed.protocol;
    } else if sock_ends(args.sk, cfg, &mut fresh.peer, &mut SockAddr::default()) {
        let sniffed = sniff(args, ret, false);
        fresh.protocol = match sniffed.protocol {
            protocol::UNKNOWN => protocol::OTHER,
            protocol::TLS if cfg.features & feature::TLS == 0 => protocol::OTHER,
            p => p,
        };
        fresh.role = sniffed.role(args.direction);
    } else {
        fresh.peer = SockAddr::default();
    }
    track(key, fresh, args.sk).is_some()
}

/// Peer and local address of a TCP socket, written in place (`false` for anything else: UDP,
/// unix sockets; then what was written means nothing). The IPv4 fields sit at fixed offsets;
/// the protocol and IPv6 addresses at offsets the daemon read from the kernel's BTF. In place
/// because the callers' copies would be on the data path's stack.
#[inline(always)]
fn sock_ends(sk: u64, cfg: &Config, peer: &mut SockAddr, local: &mut SockAddr) -> bool {
    use tracer_common::sk as off;
    let Some(head) = kernel_read::<[u8; off::HEAD]>(sk) else {
        return false;
    };
    if cfg.sk_protocol_off != 0 {
        match kernel_read::<u16>(sk + cfg.sk_protocol_off as u64) {
            Some(off::IPPROTO_TCP) => {}
            _ => return false,
        }
    }
    let family = u16::from_ne_bytes([head[off::FAMILY], head[off::FAMILY + 1]]);
    peer.family = family;
    peer.port = u16::from_be_bytes([head[off::DPORT], head[off::DPORT + 1]]);
    local.family = family;
    local.port = u16::from_ne_bytes([head[off::NUM], head[off::NUM + 1]]);
    peer.addr = [0; 16];
    local.addr = [0; 16];
    match family {
        off::AF_INET => {
            peer.addr[..4].copy_from_slice(&head[off::DADDR..off::DADDR + 4]);
            local.addr[..4].copy_from_slice(&head[off::RCV_SADDR..off::RCV_SADDR + 4]);
        }
        off::AF_INET6 if cfg.sk_v6_daddr_off != 0 && cfg.sk_v6_saddr_off != 0 => {
            let from = |o: u16, to: &mut [u8; 16]| unsafe {
                generated::bpf_probe_read_kernel(
                    to.as_mut_ptr().cast::<c_void>(),
                    16,
                    (sk + o as u64) as *const c_void,
                ) == 0
            };
            if !from(cfg.sk_v6_daddr_off, &mut peer.addr)
                || !from(cfg.sk_v6_saddr_off, &mut local.addr)
            {
                return false;
            }
        }
        // This kernel's BTF did not say where IPv6 addresses are: ports only.
        off::AF_INET6 => {
            peer.family = 0;
            local.family = 0;
        }
        _ => return false,
    }
    true
}

/// The inode of the network namespace socket `sk` lives in (0 when this kernel's BTF did not
/// say where it is).
#[inline(always)]
fn sock_netns(sk: u64, cfg: &Config) -> u32 {
    if cfg.sk_net_off == 0 || cfg.net_inum_off == 0 {
        return 0;
    }
    let Some(net) = kernel_read::<u64>(sk + cfg.sk_net_off as u64) else {
        return 0;
    };
    if net == 0 {
        return 0;
    }
    kernel_read::<u32>(net + cfg.net_inum_off as u64).unwrap_or(0)
}

/// Lets `tcp_destroy_sock` find the entry of socket `sk`, to end it before the socket's memory
/// can be reused for another one (a pointer alone does not tell a new connection from an old
/// one at the same address).
#[inline(always)]
fn remember_sock(sk: u64, key: &ConnKey) {
    if SOCKS.insert(&sk, key, 0).is_err() {
        count(counter::CONN_MAP_FULL);
    }
}

#[inline(always)]
fn kernel_read<T>(src: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(src as *const T) }.ok()
}

/// Sends the CONN record of a connection about to carry its first DATA record. Its own BPF
/// function, with the record built in the per-CPU scratch (free until the DATA record is
/// built there): the data path's stack stays small.
#[inline(never)]
fn announce(args: &SyscallArgs, state: &ConnState) {
    let Some(cfg) = config() else { return };
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, larger than a ConnEvent, used by one program run at a time.
    let ev = unsafe { &mut *rec.cast::<ConnEvent>() };
    ev.header = header(kind::CONN, args.fd as u32);
    ev.role = state.role;
    ev.flags = if state.tls != 0 { conn_flags::TLS } else { 0 };
    ev._pad = [0; 2];
    ev.netns = if state.sk != 0 {
        sock_netns(state.sk, cfg)
    } else {
        0
    };
    if state.sk == 0 || !sock_ends(state.sk, cfg, &mut ev.peer, &mut ev.local) {
        ev.peer = state.peer;
        ev.local = SockAddr::default();
    }
    // Straight into the record: a copy would be on the data path's stack.
    // SAFETY: the helper writes at most the 16 bytes it is given.
    if unsafe { generated::bpf_get_current_comm(ev.comm.as_mut_ptr().cast::<c_void>(), 16) } != 0 {
        ev.comm = [0; 16];
    }
    // A connection of unknown role was set up before we attached: the daemon must look it up
    // in /proc while it still exists, so wake it now.
    let threshold = if state.role == role::UNKNOWN {
        0
    } else {
        cfg.wakeup_bytes
    };
    output(ev, core::mem::size_of::<ConnEvent>(), threshold);
}

/// Protocol of the bytes a syscall moved, from their start. `frames`: the connection may be
/// in the middle of a conversation (it was open before the probes attached), so an HTTP/2
/// frame header counts too.
#[inline(always)]
fn sniff(args: &SyscallArgs, ret: i64, frames: bool) -> Sniffed {
    if ret < 8 {
        return Sniffed::NONE;
    }
    let Some((buf, n)) = first_buf(args, ret as u64) else {
        return Sniffed::NONE;
    };
    if n < 8 {
        return Sniffed::NONE;
    }
    let Some(head) = read_user::<u64>(buf) else {
        return Sniffed::NONE;
    };
    let sniffed = classify(head);
    if sniffed.protocol != protocol::UNKNOWN || !frames || n < 9 {
        return sniffed;
    }
    match read_user::<[u8; 9]>(buf) {
        Some(h) if FrameHeader::parse(&h).follows(Rules::FIRST_FRAME) => Sniffed {
            protocol: protocol::HTTP2,
            first: First::Frame,
        },
        _ => Sniffed::NONE,
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
    // Read back through a volatile load, the bound is checked on the very value passed:
    // otherwise the compiler may pass another register it knows to be equal (the syscall's
    // length), and verifiers before 6.x's linked-register tracking see an unbounded size.
    let n = clamp(n, MAX_CAPTURE as u64);
    let n = unsafe { core::ptr::read_volatile(&n) };
    if n > MAX_CAPTURE as u64 {
        return false;
    }
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
    // The socket hooks run once the bytes moved: the time taken for the arguments is the
    // syscall's end too (one clock read less).
    let id = bpf_get_current_pid_tgid();
    let ts = if args.sk != 0 {
        args.ts_enter
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    let h = header_at(kind::DATA, (id >> 32) as u32, id as u32, args.fd as u32, ts);
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

/// A traced process mapped new code: tell the daemon, which looks for TLS libraries in it.
#[inline(always)]
pub fn on_code_loaded() {
    let id = bpf_get_current_pid_tgid();
    if !crate::filter::traced((id >> 32) as u32) {
        return;
    }
    let ev = CodeEvent {
        header: header(kind::CODE_LOADED, 0),
    };
    // Rare, and the daemon must read the process's maps soon (its first TLS calls come right
    // after): it is woken at once.
    if CODE_EVENTS
        .output::<CodeEvent>(&ev, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        count(counter::RINGBUF_FULL);
    }
}

/// A socket of a traced process is closing (close(2), syscall hooks).
#[inline(always)]
pub fn on_close(fd: u64) {
    let id = bpf_get_current_pid_tgid();
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: fd as u32,
    };
    if let Some(state) = unsafe { CONNS.get(&key) } {
        end(&key, state.announced, state.sk);
    }
}

/// A TCP socket is gone (`tcp_destroy_sock`): whatever the probes knew about it ends. It may
/// run in any task or in softirq, so the connection is found by its socket.
#[inline(always)]
pub fn on_sock_close(sk: u64) {
    let Some(key) = (unsafe { SOCKS.get(&sk) }).copied() else {
        return;
    };
    match unsafe { CONNS.get(&key) } {
        Some(state) if state.sk == sk => end(&key, state.announced, sk),
        // The fd already names another socket (that one was ended when it was reused).
        _ => {
            let _ = SOCKS.remove(&sk);
        }
    }
}

/// Forgets a connection, and tells the daemon if it carried HTTP.
#[inline(always)]
fn end(key: &ConnKey, announced: u8, sk: u64) {
    let _ = CONNS.remove(key);
    if sk != 0 {
        let _ = SOCKS.remove(&sk);
    }
    if announced != 0 {
        let wake = config().map_or(0, |c| c.wakeup_bytes);
        let ev = CloseEvent {
            header: header_of(kind::CLOSE, key.tgid, 0, key.fd),
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
    let state = ConnState::new(peer, 0, protocol::UNKNOWN, role, 0);
    if CONNS.insert(&key, &state, 0).is_err() {
        count(counter::CONN_MAP_FULL);
    }
}
