//! Wire types shared by the kernel probes (`tracer-ebpf`) and the daemon (`tracer-user`), and
//! the rules both sides follow ([`h2`], [`glob_match`]).
//!
//! The wire types cross the kernel/user boundary byte for byte, so: `#[repr(C)]`,
//! fixed-width integers only (no `bool`, no enums), explicit padding, and every ring-buffer
//! record starts with [`EventHeader`] carrying [`WIRE_VERSION`] and a kind.
#![no_std]

pub mod h2;
pub mod propagate;

/// Bumped whenever a layout below changes; the daemon refuses records of another version.
pub const WIRE_VERSION: u16 = 3;

/// Largest payload prefix the probes can copy per syscall (power of two: the probes mask with it).
pub const MAX_CAPTURE: usize = 8192;
/// Default payload prefix: a request line plus a typical header block.
pub const DEFAULT_CAPTURE: u32 = 4096;
/// iovec entries looked at per readv/writev/sendmsg/recvmsg (the kernel's IOV_MAX: every one).
/// The probes walk them with `bpf_loop`, so the count does not grow the program.
pub const MAX_IOV: usize = 1024;
pub const COMM_LEN: usize = 16;

pub mod kind {
    /// A connection starts carrying HTTP: its addresses and role, sent once before its first
    /// DATA record.
    pub const CONN: u16 = 1;
    /// Bytes moved by one read/write-family syscall on a traced connection.
    pub const DATA: u16 = 2;
    /// A traced connection was closed.
    pub const CLOSE: u16 = 3;
    /// A process mapped new code: it exec'd, or its dynamic linker loaded libraries. The
    /// daemon looks for TLS libraries to probe in it ([`CodeEvent`]).
    pub const CODE_LOADED: u16 = 4;
    /// The probes wrote a trace context into the request the next DATA record of this
    /// connection carries ([`ContextEvent`]; opt-in, see [`crate::propagate`]).
    pub const CONTEXT: u16 = 5;
}

/// Direction of a [`DataEvent`], from the traced process's point of view.
pub mod direction {
    pub const INGRESS: u8 = 1;
    pub const EGRESS: u8 = 2;
}

/// Protocol a connection was classified as (kept in the kernel's connection map).
pub mod protocol {
    pub const UNKNOWN: u8 = 0;
    pub const HTTP1: u8 = 1;
    pub const HTTP2: u8 = 2;
    /// TLS records, on a socket not yet tied to a TLS library call: nothing is copied; the
    /// socket waits to be claimed by the connection object whose plaintext it carries.
    pub const TLS: u8 = 3;
    /// Not HTTP: the probes stop copying anything for it.
    pub const OTHER: u8 = 255;
}

/// Which syscall produced a [`DataEvent`] (for counters and debugging).
pub mod syscall {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READV: u8 = 3;
    pub const WRITEV: u8 = 4;
    pub const RECVFROM: u8 = 5;
    pub const SENDTO: u8 = 6;
    pub const RECVMSG: u8 = 7;
    pub const SENDMSG: u8 = 8;
    pub const SENDFILE: u8 = 9;
    /// Plaintext a TLS library call returned (SSL_read, SSL_read_ex) or took (SSL_write,
    /// SSL_write_ex), in a flat buffer; the fd is the socket the library's bytes went through.
    pub const SSL_READ: u8 = 10;
    pub const SSL_WRITE: u8 = 11;

    /// Whether the record holds plaintext from a TLS library rather than socket bytes.
    pub const fn is_tls(s: u8) -> bool {
        s == SSL_READ || s == SSL_WRITE
    }
}

/// Role of a connection: from the syscall that created it (syscall hooks), or from who sent
/// the first message of a connection seen from its first byte (socket hooks).
pub mod role {
    /// Joined mid-conversation (open before the probes attached) or not seen set up.
    pub const UNKNOWN: u8 = 0;
    /// The traced process is the server (accepted it, or read a request / wrote a response first).
    pub const ACCEPTED: u8 = 1;
    /// The traced process is the client (connected it, or wrote a request / read a response first).
    pub const CONNECTED: u8 = 2;
}

/// Linux syscall numbers (x86_64) the socket hooks find in the task's saved registers.
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const SPLICE: u64 = 275;
}

/// Syscall tag of a socket-hook event from the syscall number in the task's registers, or
/// `None` for socket I/O made another way (io_uring, sendmmsg, the kernel itself): its buffer
/// is not where the registers say.
#[inline(always)]
pub const fn syscall_of_nr(nr: u64) -> Option<u8> {
    match nr {
        nr::READ => Some(syscall::READ),
        nr::WRITE => Some(syscall::WRITE),
        nr::READV => Some(syscall::READV),
        nr::WRITEV => Some(syscall::WRITEV),
        nr::RECVFROM => Some(syscall::RECVFROM),
        nr::SENDTO => Some(syscall::SENDTO),
        nr::RECVMSG => Some(syscall::RECVMSG),
        nr::SENDMSG => Some(syscall::SENDMSG),
        // The bytes come from a file or a pipe, not user memory: counted, not copied.
        nr::SENDFILE | nr::SPLICE => Some(syscall::SENDFILE),
        _ => None,
    }
}

/// Index of each counter in the per-CPU `COUNTERS` map.
pub mod counter {
    /// A record did not fit in the ring buffer and was lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// The connection map was full: a connection could not be tracked.
    pub const CONN_MAP_FULL: u32 = 1;
    /// Copying user memory failed (the payload prefix is then empty, byte counts stay right).
    pub const READ_USER_FAILED: u32 = 2;
    /// The HTTP/2 frame walk met bytes that are not a frame header: that direction goes back
    /// to prefix copies until a syscall starts with a frame header again.
    pub const H2_FRAMES_LOST: u32 = 3;
    /// Socket I/O of a traced process that did not come from a read/write-family syscall
    /// (io_uring, sendmmsg/recvmmsg, in-kernel users): not decoded.
    pub const UNSUPPORTED_CALL: u32 = 4;
    /// A socket's fd was reused by a new socket before the old one's close was seen: the old
    /// connection was ended there.
    pub const FD_REUSED: u32 = 5;
    /// Plaintext of a TLS call whose socket the probes never saw (the library moved its
    /// encrypted bytes itself, through a memory BIO): not decoded.
    pub const TLS_NO_SOCKET: u32 = 6;
    /// A probe could not read its own arguments (the tracepoint record or the registers):
    /// that syscall or call was not followed.
    pub const PROBE_ARGS: u32 = 7;
    /// Outgoing requests given a `traceparent` by the probes, then the ones sent unchanged,
    /// by reason (in the order of `propagate::Verdict`), and the sockets the probes could not
    /// take because another socket-map program (a CNI's) owns them.
    pub const PROPAGATE_WRITTEN: u32 = 8;
    pub const PROPAGATE_HAS_CONTEXT: u32 = 9;
    pub const PROPAGATE_SPLIT: u32 = 10;
    pub const PROPAGATE_UNSAFE: u32 = 11;
    pub const PROPAGATE_NO_ROOM: u32 = 12;
    pub const PROPAGATE_SOCKET_BUSY: u32 = 13;
    pub const LEN: u32 = 14;
}

/// First field of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub version: u16,
    pub kind: u16,
    /// Process id (thread-group id) of the traced process.
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) when the syscall returned.
    pub ts_ns: u64,
}

/// IPv4 or IPv6 socket address; IPv4 uses the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    /// AF_INET (2), AF_INET6 (10) or 0 when unknown.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub role: u8,
    /// [`conn_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Inode of the socket's network namespace (0 when unknown: syscall hooks, or a kernel
    /// whose BTF does not say where it is). Loopback addresses repeat in every namespace.
    pub netns: u32,
    pub peer: SockAddr,
    /// The traced process's own end (family 0 when the hooks cannot tell: syscall hooks).
    pub local: SockAddr,
    pub comm: [u8; COMM_LEN],
}

/// Bits of [`ConnEvent::flags`].
pub mod conn_flags {
    /// The connection is TLS: its DATA records are the plaintext of the TLS library's calls,
    /// and its encrypted bytes are never sent.
    pub const TLS: u8 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub header: EventHeader,
}

/// See [`kind::CONTEXT`]: the ids the probes wrote into a request, sent right before the
/// DATA record of the write that carried it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEvent {
    pub header: EventHeader,
    /// Sequence number of that DATA record (egress).
    pub seq: u32,
    /// W3C trace flags written.
    pub flags: u8,
    /// Non-zero when the trace is that of the request the thread was serving.
    pub from_thread: u8,
    pub _pad: [u8; 2],
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// The trace a thread's current server request belongs to, as the probes know it (keyed by
/// pid_tgid): an outgoing request of that thread continues it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadTrace {
    pub trace_id: [u8; 16],
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// A request the `sk_msg` program wrote a context into, until the socket hook of the same
/// write reports it (keyed by pid_tgid: one write in flight per thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// The socket written to (`struct sock *`).
    pub sk: u64,
    /// CLOCK_MONOTONIC when it was written: the syscall hooks, which do not know the socket,
    /// take it only for a write that began before.
    pub ts_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    pub from_thread: u8,
    pub _pad: [u8; 6],
}

/// See [`kind::CODE_LOADED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeEvent {
    pub header: EventHeader,
}

/// Fixed part of a DATA record; `captured` payload bytes follow it in the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataEvent {
    pub header: EventHeader,
    /// CLOCK_MONOTONIC when the syscall was entered.
    pub ts_enter_ns: u64,
    /// Bytes the syscall really moved (its return value): framing uses this, never `captured`.
    pub len: u64,
    /// Sequence number of DATA records per connection and direction; a gap means records of
    /// this direction were lost.
    pub seq: u32,
    /// Payload bytes that follow this header (a prefix of what moved).
    pub captured: u32,
    pub direction: u8,
    pub syscall: u8,
    pub protocol: u8,
    pub role: u8,
    /// [`data_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; COMM_LEN],
    /// With [`data_flags::H2_FRAMES`]: offset in the syscall's bytes of the first frame header
    /// that starts in it, or [`NO_FRAME`].
    pub frame_at: u32,
    /// Where that frame header is in the payload (the payload leaves DATA bytes out).
    pub frame_at_captured: u32,
}

/// [`DataEvent::frame_at`] when no frame header starts in the syscall (or none was captured).
pub const NO_FRAME: u32 = u32::MAX;

/// Bits of [`DataEvent::flags`].
pub mod data_flags {
    /// The payload is the syscall's HTTP/2 byte stream with the payload of DATA frames left
    /// out (all but the pad-length byte of a padded one, see [`crate::h2::copied_len`]): frame
    /// headers and header blocks fit the capture budget however large the bodies are. Without
    /// this flag the payload is a plain prefix.
    pub const H2_FRAMES: u8 = 1;
    /// The probes lost the frame boundaries after the payload's last byte (the rest of the
    /// syscall did not look like frames): whoever decodes it must re-synchronise too.
    pub const H2_FRAMES_LOST: u8 = 2;
}

/// A DATA record as the probes build it in scratch memory: header then payload room.
#[repr(C)]
pub struct DataRecord {
    pub event: DataEvent,
    pub payload: [u8; MAX_CAPTURE * 2],
}

/// Key of the kernel's connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

/// What the probes know about a socket of a traced process (value of the kernel's
/// connection map). The daemon writes entries too: the sockets that were already open when the
/// probes attached (see [`ConnState::PREEXISTING_SNIFFS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    pub peer: SockAddr,
    /// The kernel socket (`struct sock *`) behind the fd, 0 until a socket hook saw it: a
    /// different one on the same fd means the fd was closed and reused.
    pub sk: u64,
    /// DATA records emitted so far in each direction (index `direction - 1`): the daemon
    /// detects lost records, and which direction lost them, from gaps.
    pub seq: [u32; 2],
    pub protocol: u8,
    pub role: u8,
    /// Whether the CONN record was sent (only once the connection is known to carry HTTP).
    pub announced: u8,
    /// Non-zero for a socket that was open before the probes attached: its next syscalls may
    /// start anywhere in a conversation, so an HTTP/2 frame header also classifies it, and this
    /// many syscalls are sniffed before it is given up as not HTTP.
    pub sniffs_left: u8,
    /// Frame walk of each direction (index `direction - 1`) of an HTTP/2 connection.
    pub h2: [H2Walk; 2],
    /// Non-zero once the socket is known to carry TLS: from then on only the TLS library's
    /// plaintext is followed, the socket's own (encrypted) bytes never are.
    pub tls: u8,
    pub _pad: [u8; 3],
}

/// Where the HTTP/2 frames of one direction of a connection stand between two syscalls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Walk {
    /// Payload bytes of the current frame still to come.
    pub rem: u32,
    /// Of those, how many are copied (see [`h2::copied_len`]); the rest are skipped.
    pub copy: u32,
    /// Non-zero once the probes know where frames start in this direction.
    pub synced: u8,
    /// Bytes of a frame header split across syscalls already seen (they are in `hdr`).
    pub hdr_have: u8,
    pub hdr: [u8; 9],
    pub _pad: [u8; 1],
}

impl ConnState {
    /// Syscalls sniffed on a socket that was open before the probes attached.
    pub const PREEXISTING_SNIFFS: u8 = 64;

    /// A connection nothing was sent about yet.
    pub const fn new(peer: SockAddr, sk: u64, protocol: u8, role: u8, sniffs_left: u8) -> Self {
        ConnState {
            peer,
            sk,
            seq: [0; 2],
            protocol,
            role,
            announced: 0,
            sniffs_left,
            h2: [H2Walk::IDLE; 2],
            tls: 0,
            _pad: [0; 3],
        }
    }
}

impl H2Walk {
    const IDLE: H2Walk = H2Walk {
        rem: 0,
        copy: 0,
        synced: 0,
        hdr_have: 0,
        hdr: [0; 9],
        _pad: [0; 1],
    };
}

/// Filter flags in [`Config::flags`].
pub mod filter {
    /// Only processes listed in the PIDS map are traced.
    pub const BY_PID: u32 = 1;
    /// Only processes whose comm equals [`super::Config::comm`] are traced.
    pub const BY_COMM: u32 = 2;
    /// Only connections whose local or peer port is listed in the PORTS map are traced.
    pub const BY_PORT: u32 = 4;
}

/// Runtime settings, written by the daemon into the single-entry `CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Payload prefix to copy per syscall, clamped to [`MAX_CAPTURE`].
    pub capture_size: u32,
    pub flags: u32,
    /// The daemon's own pid: never traced (its OTLP traffic would feed back into itself).
    pub self_tgid: u32,
    /// Ask for a ring-buffer wake-up only once this many bytes wait to be read.
    pub wakeup_bytes: u32,
    pub comm: [u8; COMM_LEN],
    /// Offsets in `struct sock` of this kernel (from its BTF), for the socket hooks: the
    /// protocol, and the IPv6 peer and local addresses (0: unknown, IPv6 addresses not read).
    pub sk_protocol_off: u16,
    pub sk_v6_daddr_off: u16,
    pub sk_v6_saddr_off: u16,
    /// Where the socket's `struct net *` is in `struct sock`, and the namespace inode in
    /// `struct net` (0: unknown, the namespace is not read).
    pub sk_net_off: u16,
    pub net_inum_off: u16,
    /// [`feature`] bits: which optional probes are attached.
    pub features: u16,
    pub _pad: [u16; 2],
}

/// Bits of [`Config::features`].
pub mod feature {
    /// TLS library probes are attached: sockets of non-HTTP bytes may carry TLS, so their
    /// syscalls inside a TLS call are looked at.
    pub const TLS: u16 = 1;
    /// The trace-context writer (`sockops` + `sk_msg`) is attached: traced client requests
    /// get a `traceparent`, and the capture reports the ids written.
    pub const PROPAGATE: u16 = 2;
}

/// Fixed offsets in `struct sock_common`, the same on every Linux since 2.6: IPv4 peer and
/// local address, peer port (network order), local port (host order), address family.
pub mod sk {
    pub const DADDR: usize = 0;
    pub const RCV_SADDR: usize = 4;
    pub const DPORT: usize = 12;
    pub const NUM: usize = 14;
    pub const FAMILY: usize = 16;
    /// Bytes read to get all of the above at once.
    pub const HEAD: usize = 18;
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;
    pub const IPPROTO_TCP: u16 = 6;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), integers and byte arrays only, no implicit padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnState {}
}

/// The plugin contract's key patterns: `*` matches any run of bytes, everything else itself
/// (per `eq`). Shared by the host, which filters what it sends a plugin, and the plugin SDK.
/// Iterative with one backtrack point: linear in practice.
pub fn glob_match(p: &[u8], s: &[u8], eq: impl Fn(u8, u8) -> bool) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && eq(p[pi], s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn socket_hook_syscalls() {
        assert_eq!(syscall_of_nr(nr::WRITE), Some(syscall::WRITE));
        assert_eq!(syscall_of_nr(nr::RECVMSG), Some(syscall::RECVMSG));
        assert_eq!(syscall_of_nr(nr::SPLICE), Some(syscall::SENDFILE));
        // io_uring_enter, sendmmsg: the registers do not point at the bytes.
        assert_eq!(syscall_of_nr(426), None);
        assert_eq!(syscall_of_nr(307), None);
    }

    // The layouts are a contract with the kernel side: a size change must be deliberate
    // (and come with a WIRE_VERSION bump).
    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<SockAddr>(), 24);
        assert_eq!(size_of::<ConnEvent>(), 24 + 8 + 24 + 24 + 16);
        assert_eq!(size_of::<DataEvent>(), 24 + 8 + 8 + 4 + 4 + 8 + 16 + 8);
        assert_eq!(size_of::<Config>(), 48);
        assert_eq!(size_of::<ConnKey>(), 8);
        assert_eq!(size_of::<H2Walk>(), 20);
        assert_eq!(size_of::<ConnState>(), 24 + 8 + 8 + 4 + 2 * 20 + 4);
        assert_eq!(size_of::<ContextEvent>(), 24 + 8 + 16 + 8);
        assert_eq!(size_of::<Injected>(), 8 + 8 + 16 + 8 + 8);
        assert_eq!(size_of::<ThreadTrace>(), 24);
    }
}
