//! Protocol decoders: byte streams of one connection -> request/response exchanges.
//! Both decoders take the same input: one chunk per syscall, framed by real byte counts.
use std::borrow::Cow;

use crate::context::{TraceContext, Written};

pub mod headers;
pub mod http1;
pub mod http2;
#[cfg(test)]
pub(crate) mod testkit;

/// A header field a decoder kept: its lowercase name, one of the decoder's own static names
/// (allocated only by a decoder that keeps every header), and its value.
pub type Header = (Cow<'static, str>, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The process read it.
    Ingress,
    /// The process wrote it.
    Egress,
}

#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The thread that moved the bytes.
    pub tid: u32,
    pub dir: Direction,
    /// Real bytes moved by the syscall (> 0).
    pub len: u64,
    /// Captured bytes (a prefix, unless `layout` says otherwise), data.len() <= len.
    pub data: &'a [u8],
    pub layout: Layout,
    /// ns; when the first byte of this chunk moved.
    pub ts_start: u64,
    /// ns; when the last byte moved.
    pub ts_end: u64,
}

/// What [`Chunk::data`] holds of the syscall's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Their first `data.len()` bytes.
    #[default]
    Prefix,
    /// The probes' HTTP/2 frame walk (`tracer_common::data_flags::H2_FRAMES`): the bytes with
    /// the payload of DATA frames left out (`tracer_common::h2::copied_len`).
    H2Frames {
        /// First frame header that starts in the syscall: (offset in its bytes, in `data`).
        first: Option<(u64, usize)>,
        /// The probes lost the frame boundaries after `data`.
        lost: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Requests were read (Ingress).
    Server,
    /// Requests were written (Egress).
    Client,
}

/// Which request of its connection an exchange is: the n-th HTTP/1 request (from 0), or the
/// HTTP/2 stream. Both ends of a connection number its requests alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKey {
    Http1(u64),
    Http2(u32),
}

/// A request whose head a decoder just finished: what joining spans needs to know before the
/// exchange ends (a thread serving a request makes its client calls meanwhile).
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    pub role: Role,
    pub key: RequestKey,
    /// The thread that moved the head's first bytes.
    pub tid: u32,
    /// When the head's first bytes moved.
    pub ts: u64,
    pub context: Option<TraceContext>,
    /// The ids the probes wrote into this request (set by the connection table).
    pub written: Option<Written>,
}
