//! Trace context written into outgoing HTTP/1 requests (opt-in): the rules of what may be
//! rewritten and the bytes written, shared by the kernel's `sk_msg` program and the daemon's
//! tests of it.
//!
//! A request is rewritten only when its whole head is in the message being sent and nothing
//! but its own body follows it; one `traceparent` line goes right after the request line.

/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`.
pub const HEADER_LEN: usize = 13 + 55 + 2;
/// Head bytes looked at per message (a power of two: the probes mask with it). A head
/// longer than this is sent as it is.
pub const HEAD_MAX: usize = 2048;

/// What [`Scan`] learnt of a message's first bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Scan {
    /// Offset right after the request line's CRLF (0: not found yet).
    pub line_end: u32,
    /// Offset right after the head's blank line (0: not found).
    pub head_end: u32,
    /// Content-Length of the request (`NO_LENGTH` when it has none).
    pub content_length: u64,
    /// Non-zero when a header makes the rewrite unsafe or pointless: a trace context is
    /// already there, a chunked body (its end is not known here), a bare LF, two lengths.
    pub has_context: u8,
    pub chunked: u8,
    pub malformed: u8,
    pub _pad: [u8; 1],
    /// Where the value of a `traceparent` header starts (0: none).
    pub context_at: u32,
}

pub const NO_LENGTH: u64 = u64::MAX;

/// Why a request was sent as it was (kernel counter indices follow this order, from
/// `counter::PROPAGATE_WRITTEN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewrite: a `traceparent` line goes at `line_end`.
    Write,
    /// The request carries its own trace context.
    HasContext,
    /// The head does not end in this message (split across sends, or longer than `HEAD_MAX`).
    Split,
    /// More than this request's body follows its head (pipelined requests, or a chunked
    /// body whose end cannot be told here), or the head is not plain CRLF HTTP/1.
    Unsafe,
}

impl Scan {
    pub const fn new() -> Scan {
        Scan {
            line_end: 0,
            head_end: 0,
            content_length: NO_LENGTH,
            has_context: 0,
            chunked: 0,
            malformed: 0,
            _pad: [0; 1],
            context_at: 0,
        }
    }

    /// Looks at byte `i` of the message (`at(j)` gives byte `j`, `len` bytes are there).
    /// Returns `false` once the head's end is found or the scan can stop.
    #[inline(always)]
    pub fn step(&mut self, i: usize, len: usize, at: impl Fn(usize) -> u8) -> bool {
        if at(i) != b'\n' {
            return true;
        }
        if i == 0 || at(i - 1) != b'\r' {
            self.malformed = 1;
            return false;
        }
        if self.line_end == 0 {
            self.line_end = (i + 1) as u32;
        }
        // A line start: the blank line ends the head.
        if i + 2 < len && at(i + 1) == b'\r' && at(i + 2) == b'\n' {
            self.head_end = (i + 3) as u32;
            return false;
        }
        let named = |name: &[u8]| {
            let mut k = 0;
            while k < name.len() {
                let j = i + 1 + k;
                if j >= len || at(j).to_ascii_lowercase() != name[k] {
                    return false;
                }
                k += 1;
            }
            true
        };
        if named(b"traceparent:") {
            self.has_context = 1;
            self.context_at = (i + 1 + 12) as u32;
            // On to the head's end: the body's length says where the next request starts.
            return true;
        }
        if named(b"transfer-encoding:") {
            self.chunked = 1;
        } else if named(b"content-length:") {
            if self.content_length != NO_LENGTH {
                self.malformed = 1;
                return false;
            }
            let mut v: u64 = 0;
            // Constant bounds on both loops: older verifiers walk them and give up on a
            // loop whose end depends on the bytes alone.
            let mut j = i + 1 + 15;
            let mut spaces = 0;
            while spaces < 8 && j < len && at(j) == b' ' {
                j += 1;
                spaces += 1;
            }
            let mut digits = 0;
            while j < len && digits < 19 && at(j).is_ascii_digit() {
                v = v * 10 + (at(j) - b'0') as u64;
                j += 1;
                digits += 1;
            }
            if digits == 0 || (j < len && at(j) != b'\r' && at(j) != b' ') {
                self.malformed = 1;
                return false;
            }
            self.content_length = v;
        }
        true
    }

    /// The decision for a message of `size` bytes whose first bytes were scanned.
    pub fn verdict(&self, size: u64) -> Verdict {
        if self.has_context != 0 {
            return Verdict::HasContext;
        }
        if self.malformed != 0 {
            return Verdict::Unsafe;
        }
        if self.head_end == 0 {
            return Verdict::Split;
        }
        let rest = size.saturating_sub(self.head_end as u64);
        let body = if self.chunked != 0 {
            0
        } else if self.content_length == NO_LENGTH {
            0
        } else {
            self.content_length
        };
        if rest > body {
            return Verdict::Unsafe;
        }
        Verdict::Write
    }

    /// Body bytes of this request still to come in later writes of `size`-byte message's
    /// connection, or None when where the next request starts cannot be known (a chunked
    /// body, a head that did not end, more than one request): the connection is then left
    /// alone for good, so a body is never taken for a head.
    pub fn body_left(&self, size: u64) -> Option<u64> {
        if self.malformed != 0 || self.head_end == 0 || self.chunked != 0 {
            return None;
        }
        let body = if self.content_length == NO_LENGTH {
            0
        } else {
            self.content_length
        };
        body.checked_sub(size.saturating_sub(self.head_end as u64))
    }
}

/// Body bytes left of a connection that is left alone for good (the probes' per-socket value).
pub const LOST: u64 = u64::MAX;

const HEX: &[u8; 16] = b"0123456789abcdef";

#[inline(always)]
fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Where a `traceparent` value that starts at `start` (right after the colon) has its
/// version field, when its fixed layout fits in `len` bytes: W3C version 00, or a later
/// one read as 00.
#[inline(always)]
pub fn traceparent_at(start: usize, len: usize, at: impl Fn(usize) -> u8) -> Option<usize> {
    // A constant bound on the spaces skipped: the verifier walks this loop.
    let mut k = 0;
    while k < 8 && start + k < len && at(start + k) == b' ' {
        k += 1;
    }
    let i = start + k;
    if i + 55 > len || at(i + 2) != b'-' || at(i + 35) != b'-' || at(i + 52) != b'-' {
        return None;
    }
    match traceparent_byte(i, TRACEPARENT_VERSION, &at) {
        Some(0xff) | None => None,
        Some(_) => Some(i),
    }
}

/// Byte `k` of a `traceparent` value at `v` (see [`traceparent_at`]): 0..16 the trace id,
/// 16..24 the parent id, [`TRACEPARENT_FLAGS`] the flags; lowercase hex only.
#[inline(always)]
pub fn traceparent_byte(v: usize, k: usize, at: &impl Fn(usize) -> u8) -> Option<u8> {
    let j = match k {
        0..16 => v + 3 + 2 * k,
        16..24 => v + 36 + 2 * (k - 16),
        TRACEPARENT_FLAGS => v + 53,
        _ => v,
    };
    Some(unhex(at(j))? << 4 | unhex(at(j + 1))?)
}

pub const TRACEPARENT_FLAGS: usize = 24;
const TRACEPARENT_VERSION: usize = 25;

/// The trace id and flags of a `traceparent` value (see [`traceparent_at`]), ids not all
/// zero. The probes take the same steps one byte per loop turn.
pub fn parse_traceparent(
    start: usize,
    len: usize,
    at: impl Fn(usize) -> u8,
    trace_id: &mut [u8; 16],
) -> Option<u8> {
    let v = traceparent_at(start, len, &at)?;
    let (mut trace_any, mut span_any) = (0, 0);
    for k in 0..24 {
        let b = traceparent_byte(v, k, &at)?;
        if k < 16 {
            trace_id[k] = b;
            trace_any |= b;
        } else {
            span_any |= b;
        }
    }
    if trace_any == 0 || span_any == 0 {
        return None;
    }
    traceparent_byte(v, TRACEPARENT_FLAGS, &at)
}

/// The header line for these ids, as it goes on the wire.
#[inline(always)]
pub fn header(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8, out: &mut [u8; HEADER_LEN]) {
    let prefix = b"traceparent: 00-";
    let mut i = 0;
    while i < prefix.len() {
        out[i] = prefix[i];
        i += 1;
    }
    let mut k = 0;
    while k < 16 {
        out[16 + 2 * k] = HEX[(trace_id[k] >> 4) as usize];
        out[17 + 2 * k] = HEX[(trace_id[k] & 15) as usize];
        k += 1;
    }
    out[48] = b'-';
    k = 0;
    while k < 8 {
        out[49 + 2 * k] = HEX[(span_id[k] >> 4) as usize];
        out[50 + 2 * k] = HEX[(span_id[k] & 15) as usize];
        k += 1;
    }
    out[65] = b'-';
    out[66] = HEX[(flags >> 4) as usize];
    out[67] = HEX[(flags & 15) as usize];
    out[68] = b'\r';
    out[69] = b'\n';
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(msg: &[u8]) -> Scan {
        let mut s = Scan::new();
        for i in 0..msg.len().min(HEAD_MAX) {
            if !s.step(i, msg.len().min(HEAD_MAX), |j| msg[j]) {
                break;
            }
        }
        s
    }

    #[test]
    fn plain_get_is_written_after_its_request_line() {
        let m = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let s = scan(m);
        assert_eq!(s.line_end, 17);
        assert_eq!(s.head_end as usize, m.len());
        assert_eq!(s.verdict(m.len() as u64), Verdict::Write);
    }

    #[test]
    fn a_body_in_the_same_send_is_fine_more_is_not() {
        let m = b"POST / HTTP/1.1\r\ncontent-length:  5\r\n\r\nhello";
        let s = scan(m);
        assert_eq!(s.content_length, 5);
        assert_eq!(s.verdict(m.len() as u64), Verdict::Write);
        // The body still to come in later sends.
        assert_eq!(s.verdict(m.len() as u64 - 3), Verdict::Write);
        let two = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(scan(two).verdict(two.len() as u64), Verdict::Unsafe);
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        assert_eq!(scan(chunked).verdict(chunked.len() as u64), Verdict::Unsafe);
    }

    #[test]
    fn the_body_left_says_where_the_next_request_starts() {
        let m = b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nhello";
        assert_eq!(scan(m).body_left(m.len() as u64), Some(5));
        let m = b"GET / HTTP/1.1\r\ntraceparent: 00-1-2-01\r\n\r\n";
        assert_eq!(scan(m).body_left(m.len() as u64), Some(0));
        let two = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(two).body_left(two.len() as u64), None);
        let m = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(m).body_left(m.len() as u64), None);
        let m = b"GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(scan(m).body_left(m.len() as u64), None);
    }

    /// Found by the `propagate` fuzz target: such a head is rewritten (nothing follows it in
    /// the write), and its connection is then left alone, since its body's end is not known.
    #[test]
    fn a_chunked_head_that_ends_its_write_is_written_then_its_connection_left_alone() {
        let m = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let s = scan(m);
        assert_eq!(s.verdict(m.len() as u64), Verdict::Write);
        assert_eq!(s.body_left(m.len() as u64), None);
    }

    #[test]
    fn existing_context_split_heads_and_odd_framing_are_left_alone() {
        let m = b"GET / HTTP/1.1\r\nTraceParent: 00-1-2-01\r\n\r\n";
        assert_eq!(scan(m).verdict(m.len() as u64), Verdict::HasContext);
        let m = b"GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(scan(m).verdict(m.len() as u64), Verdict::Split);
        let m = b"GET / HTTP/1.1\nHost: x\n\n";
        assert_eq!(scan(m).verdict(m.len() as u64), Verdict::Unsafe);
        let m = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(scan(m).verdict(m.len() as u64), Verdict::Unsafe);
        let m = b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\nx";
        assert_eq!(scan(m).verdict(m.len() as u64), Verdict::Unsafe);
    }

    #[test]
    fn an_incoming_context_is_read() {
        let m = b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
        let s = scan(m);
        let mut trace = [0; 16];
        let flags = parse_traceparent(s.context_at as usize, m.len(), |j| m[j], &mut trace);
        assert_eq!(flags, Some(1));
        assert_eq!(trace[..3], [0x0a, 0xf7, 0x65]);
        let zero = b"traceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01\r\n";
        assert_eq!(
            parse_traceparent(12, zero.len(), |j| zero[j], &mut trace),
            None
        );
        let upper = b"traceparent: 00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01\r\n";
        assert_eq!(
            parse_traceparent(12, upper.len(), |j| upper[j], &mut trace),
            None
        );
        let short = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169";
        assert_eq!(
            parse_traceparent(12, short.len(), |j| short[j], &mut trace),
            None
        );
    }

    #[test]
    fn the_header_line_is_w3c() {
        let mut out = [0; HEADER_LEN];
        let trace = [0xab; 16];
        let span = [1, 2, 3, 4, 5, 6, 7, 8];
        header(&trace, &span, 1, &mut out);
        assert_eq!(
            core::str::from_utf8(&out).unwrap(),
            "traceparent: 00-abababababababababababababababab-0102030405060708-01\r\n"
        );
    }
}
