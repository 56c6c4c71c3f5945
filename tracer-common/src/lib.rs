//! Wire types shared by the kernel probes (`tracer-ebpf`) and the daemon (`tracer-user`).
//!
//! Everything here crosses the kernel/user boundary byte for byte, so: `#[repr(C)]`,
//! fixed-width integers only (no `bool`, no enums), explicit padding, and every ring-buffer
//! record starts with [`EventHeader`] carrying [`WIRE_VERSION`] and a kind.
#![no_std]

/// Bumped whenever a layout below changes; the daemon refuses records of another version.
pub const WIRE_VERSION: u16 = 1;

/// Largest payload prefix the probes can copy per syscall (power of two: the probes mask with it).
pub const MAX_CAPTURE: usize = 8192;
/// Default payload prefix: a request line plus a typical header block.
pub const DEFAULT_CAPTURE: u32 = 4096;
/// iovec entries looked at per readv/writev/sendmsg/recvmsg (the kernel's IOV_MAX: every one).
/// The probes walk them with `bpf_loop`, so the count does not grow the program.
pub const MAX_IOV: usize = 1024;
pub const COMM_LEN: usize = 16;

pub mod kind {
    /// A connection the kernel saw being set up (accept/connect), with the peer address.
    pub const CONN: u16 = 1;
    /// Bytes moved by one read/write-family syscall on a traced connection.
    pub const DATA: u16 = 2;
    /// A traced connection was closed.
    pub const CLOSE: u16 = 3;
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
}

/// Role of a connection known from the syscall that created it.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// accept/accept4: the traced process is the server.
    pub const ACCEPTED: u8 = 1;
    /// connect: the traced process is the client.
    pub const CONNECTED: u8 = 2;
}

/// Index of each counter in the per-CPU `COUNTERS` map.
pub mod counter {
    /// A record did not fit in the ring buffer and was lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// The connection map was full: a connection could not be tracked.
    pub const CONN_MAP_FULL: u32 = 1;
    /// Copying user memory failed (the payload prefix is then empty, byte counts stay right).
    pub const READ_USER_FAILED: u32 = 2;
    pub const LEN: u32 = 3;
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
    pub _pad: [u8; 7],
    pub peer: SockAddr,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
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
    /// Per-connection sequence number of DATA records; a gap means records were lost.
    pub seq: u32,
    /// Payload bytes that follow this header (a prefix of what moved).
    pub captured: u32,
    pub direction: u8,
    pub syscall: u8,
    pub protocol: u8,
    pub role: u8,
    pub _pad: [u8; 4],
    pub comm: [u8; COMM_LEN],
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
    /// DATA records emitted so far (the daemon detects lost records from gaps).
    pub seq: u32,
    pub protocol: u8,
    pub role: u8,
    /// Whether the CONN record was sent (only once the connection is known to carry HTTP).
    pub announced: u8,
    /// Non-zero for a socket that was open before the probes attached: its next syscalls may
    /// start anywhere in a conversation, so an HTTP/2 frame header also classifies it, and this
    /// many syscalls are sniffed before it is given up as not HTTP.
    pub sniffs_left: u8,
}

impl ConnState {
    /// Syscalls sniffed on a socket that was open before the probes attached.
    pub const PREEXISTING_SNIFFS: u8 = 64;
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

    // The layouts are a contract with the kernel side: a size change must be deliberate
    // (and come with a WIRE_VERSION bump).
    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<SockAddr>(), 24);
        assert_eq!(size_of::<ConnEvent>(), 24 + 8 + 24 + 16);
        assert_eq!(size_of::<DataEvent>(), 24 + 8 + 8 + 4 + 4 + 8 + 16);
        assert_eq!(size_of::<Config>(), 32);
        assert_eq!(size_of::<ConnKey>(), 8);
        assert_eq!(size_of::<ConnState>(), 24 + 4 + 4);
    }
}
