//! Ring-buffer records -> typed events. This is the seam every test replays through: the live
//! reader and recorded fixtures both hand raw bytes to [`Event::parse`].
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{
    CloseEvent, CodeEvent, ConnEvent, ContextEvent, DataEvent, EventHeader, NO_FRAME, WIRE_VERSION,
    conn_flags, data_flags, direction, kind, role,
};

use crate::{context::Written, decode::Layout};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record has wire version {0}, this daemon reads version {WIRE_VERSION}")]
    Version(u16),
    #[error("unknown record kind {0}")]
    Kind(u16),
    #[error("DATA record claims {claimed} payload bytes but carries {present}")]
    Payload { claimed: u32, present: usize },
}

/// Identifies a connection: a socket fd inside a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub pid: u32,
    pub fd: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Accepted,
    Connected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub id: ConnId,
    pub ts_ns: u64,
    pub role: Role,
    pub peer: Option<SocketAddr>,
    /// The traced process's own end, when the probes read it from the socket.
    pub local: Option<SocketAddr>,
    /// The socket's network namespace (inode), when the probes read it.
    pub netns: Option<u32>,
    /// Its DATA records are a TLS library's plaintext.
    pub tls: bool,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub id: ConnId,
    pub tid: u32,
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    pub len: u64,
    pub seq: u32,
    pub dir: Dir,
    pub syscall: u8,
    pub protocol: u8,
    /// Command name, NUL-padded (converted only when a connection is first seen).
    pub comm: [u8; 16],
    /// What `payload` holds of the syscall's bytes.
    pub layout: Layout,
    pub payload: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Conn(Conn),
    Data(Data<'a>),
    Close {
        id: ConnId,
        ts_ns: u64,
    },
    /// The probes wrote `written` into the request that egress DATA record `seq` carries.
    Context {
        id: ConnId,
        seq: u32,
        written: Written,
    },
}

/// Reads a `#[repr(C)]` plain-old-data value from the start of `buf`.
fn read_pod<T: Copy + Default>(buf: &[u8]) -> Option<T> {
    if buf.len() < size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: T is one of the tracer-common wire structs: integers and byte arrays only, so
    // every bit pattern is valid; the length was checked above.
    unsafe {
        std::ptr::copy_nonoverlapping(
            buf.as_ptr(),
            (&mut v as *mut T).cast::<u8>(),
            size_of::<T>(),
        )
    };
    Some(v)
}

pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// A socket address as the wire types carry it.
pub fn to_wire(a: &SocketAddr) -> tracer_common::SockAddr {
    let mut sa = tracer_common::SockAddr {
        port: a.port(),
        ..Default::default()
    };
    match a.ip() {
        IpAddr::V4(v4) => {
            sa.family = tracer_common::sk::AF_INET;
            sa.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            sa.family = tracer_common::sk::AF_INET6;
            sa.addr = v6.octets();
        }
    }
    sa
}

fn sockaddr(sa: &tracer_common::SockAddr) -> Option<SocketAddr> {
    let ip = match sa.family {
        2 => IpAddr::V4(Ipv4Addr::new(
            sa.addr[0], sa.addr[1], sa.addr[2], sa.addr[3],
        )),
        10 => {
            let v6 = Ipv6Addr::from(sa.addr);
            // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; show them as IPv4.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, sa.port))
}

fn layout(d: &DataEvent) -> Layout {
    if d.flags & data_flags::H2_FRAMES == 0 {
        return Layout::Prefix;
    }
    Layout::H2Frames {
        first: (d.frame_at != NO_FRAME && d.frame_at_captured < d.captured)
            .then_some((u64::from(d.frame_at), d.frame_at_captured as usize)),
        lost: d.flags & data_flags::H2_FRAMES_LOST != 0,
    }
}

impl<'a> Event<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        let h: EventHeader = read_pod(buf).ok_or(ParseError::Short(buf.len()))?;
        if h.version != WIRE_VERSION {
            return Err(ParseError::Version(h.version));
        }
        let id = ConnId {
            pid: h.tgid,
            fd: h.fd,
        };
        match h.kind {
            kind::CONN => {
                let c: ConnEvent = read_pod(buf).ok_or(ParseError::Short(buf.len()))?;
                Ok(Event::Conn(Conn {
                    id,
                    ts_ns: h.ts_ns,
                    role: match c.role {
                        role::ACCEPTED => Role::Accepted,
                        role::CONNECTED => Role::Connected,
                        _ => Role::Unknown,
                    },
                    peer: sockaddr(&c.peer),
                    local: sockaddr(&c.local),
                    netns: (c.netns != 0).then_some(c.netns),
                    tls: c.flags & conn_flags::TLS != 0,
                    comm: comm_str(&c.comm),
                }))
            }
            kind::DATA => {
                let d: DataEvent = read_pod(buf).ok_or(ParseError::Short(buf.len()))?;
                let payload = &buf[size_of::<DataEvent>()..];
                if payload.len() < d.captured as usize {
                    return Err(ParseError::Payload {
                        claimed: d.captured,
                        present: payload.len(),
                    });
                }
                Ok(Event::Data(Data {
                    id,
                    tid: h.tid,
                    ts_enter_ns: d.ts_enter_ns,
                    ts_exit_ns: h.ts_ns,
                    len: d.len,
                    seq: d.seq,
                    dir: if d.direction == direction::EGRESS {
                        Dir::Egress
                    } else {
                        Dir::Ingress
                    },
                    syscall: d.syscall,
                    protocol: d.protocol,
                    comm: d.comm,
                    layout: layout(&d),
                    payload: &payload[..d.captured as usize],
                }))
            }
            kind::CLOSE => {
                let _: CloseEvent = read_pod(buf).ok_or(ParseError::Short(buf.len()))?;
                Ok(Event::Close { id, ts_ns: h.ts_ns })
            }
            kind::CONTEXT => {
                let c: ContextEvent = read_pod(buf).ok_or(ParseError::Short(buf.len()))?;
                Ok(Event::Context {
                    id,
                    seq: c.seq,
                    written: Written {
                        trace_id: c.trace_id,
                        span_id: c.span_id,
                        flags: c.flags,
                        from_thread: c.from_thread != 0,
                    },
                })
            }
            k => Err(ParseError::Kind(k)),
        }
    }
}

/// The process of a [`kind::CODE_LOADED`] record (they come on their own ring buffer, read by
/// the TLS library tracker, not the decoders).
pub fn code_loaded(buf: &[u8]) -> Result<u32, ParseError> {
    let c: CodeEvent = read_pod(buf).ok_or(ParseError::Short(buf.len()))?;
    if c.header.version != WIRE_VERSION {
        return Err(ParseError::Version(c.header.version));
    }
    if c.header.kind != kind::CODE_LOADED {
        return Err(ParseError::Kind(c.header.kind));
    }
    Ok(c.header.tgid)
}

/// Builds raw records the way the probes do; used by tests, benches and fixtures.
pub mod encode {
    use super::*;

    fn bytes<T>(v: &T) -> &[u8] {
        // SAFETY: wire structs are repr(C) without implicit padding.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    fn header(kind: u16, id: ConnId, ts_ns: u64) -> EventHeader {
        EventHeader {
            version: WIRE_VERSION,
            kind,
            tgid: id.pid,
            tid: id.pid,
            fd: id.fd,
            ts_ns,
        }
    }

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        let n = s.len().min(15);
        c[..n].copy_from_slice(&s.as_bytes()[..n]);
        c
    }

    pub fn conn(
        id: ConnId,
        ts_ns: u64,
        role_: Role,
        peer: Option<SocketAddr>,
        name: &str,
    ) -> Vec<u8> {
        let ev = ConnEvent {
            header: header(kind::CONN, id, ts_ns),
            role: match role_ {
                Role::Unknown => role::UNKNOWN,
                Role::Accepted => role::ACCEPTED,
                Role::Connected => role::CONNECTED,
            },
            flags: 0,
            _pad: [0; 2],
            netns: 0,
            peer: peer.as_ref().map(to_wire).unwrap_or_default(),
            local: Default::default(),
            comm: comm(name),
        };
        bytes(&ev).to_vec()
    }

    /// A CONN record like [`conn`] that also knows the traced process's end (socket hooks).
    /// A CONN record of a TLS connection (its DATA records are the library's plaintext).
    pub fn as_tls(mut rec: Vec<u8>) -> Vec<u8> {
        rec[core::mem::offset_of!(ConnEvent, flags)] |= conn_flags::TLS;
        rec
    }

    /// A new-code record of process `pid`.
    pub fn code_loaded(pid: u32) -> Vec<u8> {
        bytes(&CodeEvent {
            header: header(kind::CODE_LOADED, ConnId { pid, fd: 0 }, 1),
        })
        .to_vec()
    }

    pub fn with_local(mut rec: Vec<u8>, local: SocketAddr) -> Vec<u8> {
        let off = core::mem::offset_of!(ConnEvent, local);
        rec[off..off + size_of::<tracer_common::SockAddr>()]
            .copy_from_slice(bytes(&to_wire(&local)));
        rec
    }

    /// A DATA record for a syscall that moved `len` bytes of which `captured` are given.
    pub fn data(
        id: ConnId,
        seq: u32,
        dir: Dir,
        ts: (u64, u64),
        len: u64,
        captured: &[u8],
        name: &str,
    ) -> Vec<u8> {
        let ev = DataEvent {
            header: header(kind::DATA, id, ts.1),
            ts_enter_ns: ts.0,
            len,
            seq,
            captured: captured.len() as u32,
            direction: match dir {
                Dir::Ingress => direction::INGRESS,
                Dir::Egress => direction::EGRESS,
            },
            syscall: 0,
            protocol: tracer_common::protocol::HTTP1,
            role: 0,
            flags: 0,
            _pad: [0; 3],
            comm: comm(name),
            frame_at: NO_FRAME,
            frame_at_captured: NO_FRAME,
        };
        let mut v = bytes(&ev).to_vec();
        v.extend_from_slice(captured);
        v
    }

    /// A DATA record like [`data`], classified by the probes as `protocol`.
    pub fn data_as(protocol: u8, mut rec: Vec<u8>) -> Vec<u8> {
        rec[core::mem::offset_of!(DataEvent, protocol)] = protocol;
        rec
    }

    /// A DATA record like [`data`] as the HTTP/2 frame walk makes it: `captured` leaves DATA
    /// payloads out; `first` is where the first frame header starting in the syscall is (in
    /// the syscall's bytes, in `captured`); `lost`: the walk lost the frames after `captured`.
    pub fn h2_frames(mut rec: Vec<u8>, first: Option<(u32, u32)>, lost: bool) -> Vec<u8> {
        rec[core::mem::offset_of!(DataEvent, protocol)] = tracer_common::protocol::HTTP2;
        rec[core::mem::offset_of!(DataEvent, flags)] =
            data_flags::H2_FRAMES | if lost { data_flags::H2_FRAMES_LOST } else { 0 };
        let (at, at_captured) = first.unwrap_or((NO_FRAME, NO_FRAME));
        let off = core::mem::offset_of!(DataEvent, frame_at);
        rec[off..off + 4].copy_from_slice(&at.to_ne_bytes());
        let off = core::mem::offset_of!(DataEvent, frame_at_captured);
        rec[off..off + 4].copy_from_slice(&at_captured.to_ne_bytes());
        rec
    }

    /// The ids `--propagate` wrote into the request of egress DATA record `seq`.
    pub fn context(id: ConnId, seq: u32, w: &Written) -> Vec<u8> {
        bytes(&ContextEvent {
            header: header(kind::CONTEXT, id, 1),
            seq,
            flags: w.flags,
            from_thread: u8::from(w.from_thread),
            _pad: [0; 2],
            trace_id: w.trace_id,
            span_id: w.span_id,
        })
        .to_vec()
    }

    pub fn close(id: ConnId, ts_ns: u64) -> Vec<u8> {
        bytes(&CloseEvent {
            header: header(kind::CLOSE, id, ts_ns),
        })
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let id = ConnId { pid: 42, fd: 7 };
        let peer: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local: SocketAddr = "[fd00::1]:443".parse().unwrap();
        let raw = encode::with_local(
            encode::conn(id, 5, Role::Accepted, Some(peer), "python3"),
            local,
        );
        assert_eq!(
            Event::parse(&raw).unwrap(),
            Event::Conn(Conn {
                id,
                ts_ns: 5,
                role: Role::Accepted,
                peer: Some(peer),
                local: Some(local),
                netns: None,
                tls: false,
                comm: "python3".into()
            })
        );
        let raw = encode::as_tls(encode::conn(id, 5, Role::Connected, Some(peer), "curl"));
        let Event::Conn(c) = Event::parse(&raw).unwrap() else {
            panic!("not a conn")
        };
        assert!(c.tls);
        let raw = encode::data(id, 3, Dir::Egress, (10, 20), 1000, b"GET /", "curl");
        let Event::Data(d) = Event::parse(&raw).unwrap() else {
            panic!("not data")
        };
        assert_eq!(
            (d.len, d.seq, d.dir, d.payload, d.ts_enter_ns, d.ts_exit_ns),
            (1000, 3, Dir::Egress, &b"GET /"[..], 10, 20)
        );
        assert_eq!(
            Event::parse(&encode::close(id, 9)).unwrap(),
            Event::Close { id, ts_ns: 9 }
        );
    }

    #[test]
    fn new_code_records_name_their_process() {
        assert_eq!(code_loaded(&encode::code_loaded(4242)), Ok(4242));
        // They come on a ring of their own: anything else there is refused, never misread.
        let id = ConnId { pid: 1, fd: 1 };
        assert_eq!(
            code_loaded(&encode::close(id, 1)),
            Err(ParseError::Kind(kind::CLOSE))
        );
        assert_eq!(code_loaded(&[1, 2]), Err(ParseError::Short(2)));
        // And the decoders' ring never carries them.
        assert_eq!(
            Event::parse(&encode::code_loaded(1)),
            Err(ParseError::Kind(kind::CODE_LOADED))
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Event::parse(&[1, 2, 3]), Err(ParseError::Short(3)));
        let id = ConnId { pid: 1, fd: 1 };
        let mut raw = encode::close(id, 1);
        raw[0] = 99;
        assert_eq!(Event::parse(&raw), Err(ParseError::Version(99)));
        let mut raw = encode::close(id, 1);
        raw[2] = 77;
        assert_eq!(Event::parse(&raw), Err(ParseError::Kind(77)));
        // Payload cut short (a truncated capture file).
        let raw = encode::data(id, 0, Dir::Ingress, (1, 1), 10, b"GET / HTTP/1.1", "x");
        assert!(matches!(
            Event::parse(&raw[..raw.len() - 4]),
            Err(ParseError::Payload { .. })
        ));
    }

    #[test]
    fn ipv4_mapped_peers_read_as_ipv4() {
        let id = ConnId { pid: 1, fd: 1 };
        let peer: SocketAddr = "[::ffff:10.0.0.1]:99".parse().unwrap();
        let Event::Conn(c) =
            Event::parse(&encode::conn(id, 0, Role::Accepted, Some(peer), "x")).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.peer, Some("10.0.0.1:99".parse().unwrap()));
    }
}
