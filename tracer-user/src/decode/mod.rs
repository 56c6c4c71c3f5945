//! Protocol decoders: byte streams of one connection -> request/response exchanges.
//! Both decoders take the same input: one chunk per syscall, framed by real byte counts.
pub mod http1;
pub mod http2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The process read it.
    Ingress,
    /// The process wrote it.
    Egress,
}

#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub dir: Direction,
    /// Real bytes moved by the syscall (> 0).
    pub len: u64,
    /// Captured prefix, data.len() <= len.
    pub data: &'a [u8],
    /// ns; when the first byte of this chunk moved.
    pub ts_start: u64,
    /// ns; when the last byte moved.
    pub ts_end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Requests were read (Ingress).
    Server,
    /// Requests were written (Egress).
    Client,
}
