//! Every map the probes share with each other and with the daemon (names are the daemon's API).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use tracer_common::{Config, ConnKey, ConnState, DataRecord, Injected, ThreadTrace};

/// Records for the daemon. The daemon may resize it before load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// New-code records (`kind::CODE_LOADED`), apart from the traffic: rare, and read by the
/// daemon's TLS library tracker, not its decoders.
#[map]
pub static CODE_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Single entry: the daemon's settings.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Processes to trace when `filter::BY_PID` is set.
#[map]
pub static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Drop and failure counters, indexed by `tracer_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(tracer_common::counter::LEN, 0);

/// Scratch room for one DATA record (too large for the 512-byte BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<DataRecord> = PerCpuArray::with_max_entries(1, 0);

/// State of the iovec copy of the syscall being handled (`capture::walk_iovecs`).
#[map]
pub static IOV_WALK: PerCpuArray<crate::capture::IovWalk> = PerCpuArray::with_max_entries(1, 0);

/// State of the HTTP/2 frame walk of the syscall being handled (`frames::walk`).
#[map]
pub static WALK: PerCpuArray<crate::frames::Walk> = PerCpuArray::with_max_entries(1, 0);

/// Connections of traced processes (the daemon adds the sockets open before it attached). LRU: a process that exits closes its sockets without
/// close(2), so entries must be able to age out.
#[map]
pub static CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// The connection-map key of each announced socket (by `struct sock *`): the socket hooks
/// learn that a socket is gone from `tcp_destroy_sock`, which knows only the socket.
#[map]
pub static SOCKS: LruHashMap<u64, ConnKey> = LruHashMap::with_max_entries(65536, 0);

/// What the capture code needs of one data syscall: saved at entry by the syscall hooks, or
/// read from the task's registers by the socket hooks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub fd: u64,
    /// The kernel socket (socket hooks), 0 for the syscall hooks.
    pub sk: u64,
    /// Data buffer, iovec array, msghdr or sockaddr, depending on the syscall.
    pub ptr: u64,
    /// iovec count for the vectored calls.
    pub iovcnt: u64,
    pub ts_enter: u64,
    pub syscall: u8,
    pub direction: u8,
    pub _pad: [u8; 6],
}

impl SyscallArgs {
    /// Saved by `capture::save_peek`: a MSG_PEEK receive, ignored at exit.
    #[inline(always)]
    pub fn is_peek(&self) -> bool {
        self.direction == 0
    }

    /// Arguments of a syscall entered now.
    #[inline(always)]
    pub fn now(fd: u64, ptr: u64, iovcnt: u64, syscall: u8, direction: u8) -> Self {
        SyscallArgs {
            fd,
            sk: 0,
            ptr,
            iovcnt,
            ts_enter: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
            syscall,
            direction,
            _pad: [0; 6],
        }
    }
}

/// Keyed by pid_tgid: one syscall in flight per thread.
#[map]
pub static ARGS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// A TLS library call in flight, saved at its entry (keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The library's connection object (`SSL *`).
    pub ssl: u64,
    /// Plaintext buffer.
    pub buf: u64,
    /// `size_t *` the `_ex` calls return the byte count through (0: the count is the return
    /// value).
    pub count_out: u64,
    pub ts_enter: u64,
    /// The socket a syscall inside the call moved encrypted bytes on, or `NO_FD`.
    pub fd: u32,
    pub direction: u8,
    pub _pad: [u8; 3],
}

pub const NO_FD: u32 = u32::MAX;

/// The plaintext of the TLS call returning now, described as a syscall's bytes for the
/// capture code (per-CPU: off the return probe's small stack).
#[map]
pub static TLS_ARGS: PerCpuArray<SyscallArgs> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// What a thread's last TLS-related step was, for the libraries that move their encrypted
/// bytes themselves through a memory BIO (node): their calls and the socket I/O they cause
/// follow each other on one thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsStep {
    /// It received TLS records on this unclaimed socket (else `NO_FD`): the next TLS call
    /// on the thread is the one they were for.
    pub recv_fd: u32,
    pub _pad: u32,
    /// It made a TLS call on this unbound connection object (else 0) that moved no bytes on
    /// a socket: the next TLS records it sends are that call's.
    pub ssl: u64,
}

#[map]
pub static TLS_STEPS: LruHashMap<u64, TlsStep> = LruHashMap::with_max_entries(16384, 0);

/// Key of `GO_CALLS`: a goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// Go TLS calls in flight, by goroutine (their return may run on another thread).
#[map]
pub static GO_CALLS: LruHashMap<GoKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// Key of `TLS_SOCKETS`: a TLS connection object of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// The socket fd of each TLS connection object: from `SSL_set_fd`, or from the syscalls
/// made inside its calls. Its calls that move no bytes on the socket (served from the
/// library's buffer) find their socket here.
#[map]
pub static TLS_SOCKETS: LruHashMap<TlsKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Client sockets whose writes the `sk_msg` program sees (trace context on the wire, opt-in),
/// by socket cookie. The kernel drops a socket from it when the socket closes.
#[map]
pub static PROPAGATE_SOCKETS: SockHash<u64> = SockHash::with_max_entries(65536, 0);
/// Sockets a traced process is connecting (by cookie), until they are established.
#[map]
pub static CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);
/// Ids written into a request, until the socket hook of the same write reports them.
#[map]
pub static INJECTED: LruHashMap<u64, Injected> = LruHashMap::with_max_entries(16384, 0);
/// The trace of the request each server thread is serving (by pid_tgid).
#[map]
pub static THREAD_TRACES: LruHashMap<u64, ThreadTrace> = LruHashMap::with_max_entries(16384, 0);
/// The head being scanned and the line being written (too large for the stack).
#[map]
pub static HEAD: PerCpuArray<crate::propagate::Head> = PerCpuArray::with_max_entries(1, 0);
/// Request body bytes still to come on each client socket of `PROPAGATE_SOCKETS` (by
/// `struct sock *`), or `propagate::LOST` for a socket left alone: a write is only read as a head
/// where a request starts.
#[map]
pub static BODY_LEFT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);
