//! HTTP/1.x decoder over syscall-level chunks seen by an eBPF tracer.
//!
//! Design:
//! - Each direction is a state machine driven by the syscall's *real* byte count. Bodies
//!   (Content-Length, chunk data) are consumed by count, so uncaptured bytes never shift
//!   parsing; captured bytes are needed only for start lines, headers and chunk-size lines.
//! - Whenever framing cannot be followed exactly (start line or chunk-size line uncaptured,
//!   header block cut by the capture, garbage, event gap) the direction enters *resync*: it
//!   skips whole chunks until one whose captured prefix begins with a valid start line. A new
//!   decoder starts in resync because it may have attached in the middle of a message.
//!   At a resync point the position is a guess, so request lines must use a well-known
//!   method there (a chunk starting "EAD / HTTP/1.1" must not become method "EAD").
//! - Requests are queued when their header block ends; a response pairs with the oldest
//!   queued request (FIFO, so pipelining works) and the exchange is emitted when the
//!   response's last byte is consumed. Mis-pairing is worse than losing an exchange, so:
//!   a request known to be lost (its start was not captured) keeps a placeholder in the
//!   queue, which turns its response into an orphan; a response whose first chunk ended
//!   before the head request started cannot answer it (causality); and an orphan's body
//!   framing is a guess (its request may have been HEAD), so a chunk starting with a status
//!   line ends it.
//! - Memory is bounded: bodies are never stored, header blocks are capped at 64 KiB and at
//!   most 64 requests wait for an answer.
//!
//! `body_len` is the payload size: bytes after the header block for Content-Length and
//! until-close bodies, the sum of chunk sizes for chunked bodies. When framing is lost, the
//! raw bytes of the chunks attributed to the message are added instead (best effort).
//! `Stats::malformed` counts occurrences (not bytes) of non-HTTP data where HTTP was
//! expected; a never-synced direction counts its first non-HTTP chunk once.
//! `Stats::lost_exchanges` also counts requests dropped by queue overflow or whose start
//! was never captured.

use std::{borrow::Cow, collections::VecDeque};

pub use super::{Chunk, Direction, Header, Layout, Opened, RequestKey, Role};
use crate::context::TraceContext;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request-target as sent (path?query or absolute-form).
    pub target: String,
    pub version: Version,
    /// Names lowercased, values trimmed; only what was captured.
    pub headers: Vec<Header>,
    /// Header block not fully captured (longer than capture or bytes missing).
    pub headers_truncated: bool,
    pub body_len: u64,
    pub ts_start: u64,
    pub ts_end: u64,
    /// Which request of the connection this is (from 0).
    pub seq: u64,
    /// The thread that moved the head's first bytes.
    pub tid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub version: Version,
    pub headers: Vec<Header>,
    pub headers_truncated: bool,
    pub body_len: u64,
    pub ts_start: u64,
    pub ts_end: u64,
    /// The thread that moved the head's first bytes.
    pub tid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// Connection closed, no response bytes seen.
    ClosedBeforeResponse,
    /// Response headers seen, body not finished when closed.
    ClosedMidResponse,
    /// Response end could not be determined exactly.
    FramingLost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub role: Role,
    pub request: Request,
    pub response: Option<Response>,
    pub outcome: Outcome,
}

#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes that should have been a start line or header but were not HTTP (occurrences).
    pub malformed: u64,
    /// Times a direction entered resync mode.
    pub resyncs: u64,
    /// Responses with no pending request (attached mid-exchange, or lost request).
    pub orphan_responses: u64,
    /// Pending requests discarded because of a gap (or queue overflow).
    pub lost_exchanges: u64,
    pub truncated_headers: u64,
}

const MAX_HEAD: usize = 64 * 1024;
/// First size of the buffer of a header block that spans chunks: most heads fit.
const HEAD_BUF: usize = 512;
const MAX_PENDING: usize = 64;
/// Shortest possible start line + blank line ("HTTP/1.1 200\n\n").
const MIN_MESSAGE: u64 = 14;
const MAX_CHUNK_SIZE: u64 = 1 << 60;
const MAX_CHUNK_EXT: u32 = 4096;
const MAX_TRAILER_LINE: u32 = 64 * 1024;
/// Bytes of an unterminated line re-validated per chunk: rejects garbage early without
/// rescanning long lines quadratically when they arrive in tiny pieces.
const PREFIX_CHECK: usize = 256;

// ---------------------------------------------------------------------------------------
// Line validation. `complete == false` accepts any prefix of a valid line, so garbage is
// rejected as soon as it is seen instead of being buffered up to the cap.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Req,
    Resp,
}

/// Which start lines a direction may carry (both until the role is known).
#[derive(Clone, Copy)]
struct Kinds {
    req: bool,
    resp: bool,
}

impl Kinds {
    fn allows(self, k: Kind) -> bool {
        match k {
            Kind::Req => self.req,
            Kind::Resp => self.resp,
        }
    }
}

/// RFC 9110 token characters, by byte (a table: every header name byte is tested).
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// HTAB, SP, VCHAR, obs-text: what a header value or reason phrase may hold.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

fn strip_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn version_ok(v: &[u8], complete: bool) -> bool {
    let ok = |full: &[u8]| {
        if complete {
            v == full
        } else {
            full.starts_with(v)
        }
    };
    ok(b"HTTP/1.0") || ok(b"HTTP/1.1")
}

fn request_line_ok(line: &[u8], complete: bool) -> bool {
    let m = line
        .iter()
        .take_while(|&&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        .count();
    if m > 20 {
        return false;
    }
    if m == line.len() {
        return !complete;
    }
    if m == 0 || line[m] != b' ' {
        return false;
    }
    let rest = &line[m + 1..];
    let t = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    if t == rest.len() {
        return !complete;
    }
    if t == 0 || rest[t] != b' ' {
        return false;
    }
    version_ok(&rest[t + 1..], complete)
}

fn status_line_ok(line: &[u8], complete: bool) -> bool {
    if line.len() < 8 {
        return !complete && version_ok(line, false);
    }
    if !version_ok(&line[..8], true) {
        return false;
    }
    let rest = &line[8..];
    if rest.is_empty() {
        return !complete;
    }
    if rest[0] != b' ' {
        return false;
    }
    let code = &rest[1..];
    for (i, &b) in code.iter().take(3).enumerate() {
        // First digit 1..=5 keeps the code in 100..=599.
        let ok = if i == 0 {
            (b'1'..=b'5').contains(&b)
        } else {
            b.is_ascii_digit()
        };
        if !ok {
            return false;
        }
    }
    match code.get(3) {
        None => code.len() == 3 || !complete,
        Some(b' ') => field_bytes_ok(&code[4..]),
        Some(_) => false,
    }
}

/// Whether every byte may be in a field value (no early exit, so the loop vectorizes).
fn field_bytes_ok(v: &[u8]) -> bool {
    v.iter().fold(true, |ok, &b| ok & is_field_byte(b))
}

/// Where the colon of a valid header line is.
fn header_colon(line: &[u8]) -> Option<usize> {
    let n = line.iter().take_while(|&&b| is_tchar(b)).count();
    (n > 0 && line.get(n) == Some(&b':') && field_bytes_ok(&line[n + 1..])).then_some(n)
}

/// A valid header line, or (`complete` false) the start of one: a name so far.
fn header_ok(line: &[u8], complete: bool) -> bool {
    header_colon(line).is_some() || (!complete && line.iter().all(|&b| is_tchar(b)))
}

fn start_kind(line: &[u8], complete: bool, k: Kinds) -> Option<Kind> {
    if k.req && request_line_ok(line, complete) {
        Some(Kind::Req)
    } else if k.resp && status_line_ok(line, complete) {
        Some(Kind::Resp)
    } else {
        None
    }
}

/// Validate an unterminated line; a trailing CR means only the LF is missing.
fn partial_ok(line: &[u8], f: impl Fn(&[u8], bool) -> bool) -> bool {
    match line.strip_suffix(b"\r") {
        Some(l) => f(l, true),
        None => f(line, false),
    }
}

/// Methods accepted when resyncing. There the position in the stream is a guess, and a
/// chunk starting mid-line ("EAD /x HTTP/1.1" after a lost "H") would otherwise invent a
/// method; in sync any token is accepted.
#[rustfmt::skip]
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"QUERY", b"PURGE", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK",
    b"UNLOCK", b"SEARCH", b"REPORT", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE",
];

fn known_method_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b' ') {
        Some(sp) => KNOWN_METHODS.contains(&&line[..sp]),
        None => KNOWN_METHODS.iter().any(|m| m.starts_with(line)),
    }
}

/// Resync test: does this chunk's captured data begin with a valid start line?
/// `whole` = the chunk was fully captured, so a start line cut at its end is just split.
fn begins_with_start_line(data: &[u8], whole: bool, k: Kinds) -> bool {
    let skip = data
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let rest = &data[skip..];
    let kind = match memchr::memchr(b'\n', rest) {
        Some(p) => start_kind(strip_cr(&rest[..p]), true, k),
        None if whole && !rest.is_empty() => match rest.strip_suffix(b"\r") {
            Some(l) => start_kind(l, true, k),
            None => start_kind(rest, false, k),
        },
        None => None,
    };
    match kind {
        Some(Kind::Req) => known_method_start(rest),
        Some(Kind::Resp) => true,
        None => false,
    }
}

// ---------------------------------------------------------------------------------------
// Header block accumulation.

struct Head {
    /// The block's bytes once it spans chunks; empty while its first chunk is read in place.
    buf: Vec<u8>,
    line_start: usize,
    /// The fields of the terminated header lines that the decoder keeps.
    headers: Vec<Header>,
    /// Set once the start line is terminated and valid.
    kind: Option<Kind>,
    announced: bool,
    /// Begun at a resync point (position guessed): request methods must be well known.
    speculative: bool,
    tid: u32,
    ts_start: u64,
    /// ts_end of the first chunk: used for the causality check when pairing.
    ts_first_end: u64,
    ts_end: u64,
}

enum HeadRes {
    /// Consumed n bytes, no blank line yet (input exhausted or buffer full).
    Need(usize),
    /// Header block ended after n bytes.
    Done(usize),
    Bad,
}

impl Head {
    fn new(tid: u32, ts_start: u64, ts_end: u64, speculative: bool) -> Self {
        Head {
            buf: Vec::new(),
            line_start: 0,
            headers: Vec::new(),
            kind: None,
            announced: false,
            speculative,
            tid,
            ts_start,
            ts_first_end: ts_end,
            ts_end,
        }
    }

    fn start_kind(&self, line: &[u8], complete: bool, kinds: Kinds) -> Option<Kind> {
        let k = start_kind(line, complete, kinds)?;
        (k == Kind::Resp || !self.speculative || known_method_start(line)).then_some(k)
    }

    fn full(&self) -> bool {
        self.buf.len() >= MAX_HEAD
    }

    /// The block goes on past the chunk being read: its bytes so far are kept.
    fn spill(&mut self, bytes: &[u8]) {
        self.buf.reserve(HEAD_BUF.max(bytes.len()));
        self.buf.extend_from_slice(bytes);
    }

    /// Takes bytes up to the end of the block, validating each line and keeping the header
    /// fields `keep` names (all of them when `None`). A block that ends in its first chunk is
    /// read where it is; one that goes on in a later chunk is copied.
    fn push(
        &mut self,
        bytes: &[u8],
        kinds: Kinds,
        keep: Option<&'static [&'static str]>,
    ) -> HeadRes {
        let direct = self.buf.is_empty();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            let nl = memchr::memchr(b'\n', rest);
            let take = nl.map_or(rest.len(), |p| p + 1);
            let room = MAX_HEAD.saturating_sub(if direct { i } else { self.buf.len() });
            if take > room {
                if direct {
                    self.spill(&bytes[..i]);
                }
                self.buf.extend_from_slice(&rest[..room]);
                return HeadRes::Need(i + room);
            }
            let line = if direct {
                &rest[..take]
            } else {
                self.buf.extend_from_slice(&rest[..take]);
                &self.buf[self.line_start..]
            };
            i += take;
            if nl.is_some() {
                let line = strip_cr(&line[..line.len() - 1]);
                match self.kind {
                    None => match self.start_kind(line, true, kinds) {
                        Some(k) => self.kind = Some(k),
                        None => return HeadRes::Bad,
                    },
                    Some(_) if line.is_empty() => return HeadRes::Done(i),
                    Some(_) => match header_colon(line) {
                        Some(colon) => {
                            if let Some(field) = kept_field(line, colon, keep) {
                                self.headers.push(field);
                            }
                        }
                        None => return HeadRes::Bad,
                    },
                }
                self.line_start = if direct { i } else { self.buf.len() };
            } else {
                let whole = line.len() <= PREFIX_CHECK;
                let line = &line[..line.len().min(PREFIX_CHECK)];
                let ok = match (self.kind, whole) {
                    (None, true) => partial_ok(line, |l, c| self.start_kind(l, c, kinds).is_some()),
                    (None, false) => self.start_kind(line, false, kinds).is_some(),
                    (Some(_), true) => partial_ok(line, |l, c| l.is_empty() || header_ok(l, c)),
                    (Some(_), false) => header_ok(line, false),
                };
                if !ok {
                    return HeadRes::Bad;
                }
            }
        }
        if direct {
            self.spill(bytes);
        }
        HeadRes::Need(i)
    }
}

/// Headers the decoder keeps: what framing and span building read. Everything else is
/// skipped without allocating (it is the hot path), and credentials (Authorization, Cookie,
/// Set-Cookie) never leave the decoder.
pub const KEPT_HEADERS: &[&str] = &[
    "host",
    "user-agent",
    // Trace context (crate::context): W3C and B3.
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-forwarded-for",
    "content-length",
    "transfer-encoding",
    // `Upgrade: h2c`: the connection goes on as HTTP/2.
    "upgrade",
];

/// Whether a 101 switched to h2c: the request asked for it, and the response (when its
/// Upgrade header was captured) names it.
fn upgrades_to_h2c(req: &[Header], resp: &[Header]) -> bool {
    let names_h2c = |headers: &[Header]| {
        headers
            .iter()
            .filter(|(k, _)| k == "upgrade")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    };
    let resp_says = resp.iter().any(|(k, _)| k == "upgrade");
    names_h2c(req) && (!resp_says || names_h2c(resp))
}

/// Without the spaces and tabs around it (a header value).
fn trim_ows(b: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = b.iter().position(|b| !ows(b)).unwrap_or(b.len());
    let end = b.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &b[start..end]
}

/// Bytes as text, invalid UTF-8 replaced (`from_utf8_lossy`, whose checks cost more).
fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// The field of a valid header line (its colon at `c`), if `keep` names it: name
/// lowercased, value trimmed.
fn kept_field(line: &[u8], c: usize, keep: Option<&'static [&'static str]>) -> Option<Header> {
    let name = match keep {
        // A kept name is one of ours, already lowercase.
        Some(k) => Cow::Borrowed(
            *k.iter()
                .find(|n| n.as_bytes().eq_ignore_ascii_case(&line[..c]))?,
        ),
        None => Cow::Owned(text(&line[..c]).to_ascii_lowercase()),
    };
    Some((name, text(trim_ows(&line[c + 1..]))))
}

fn parse_version(v: &[u8]) -> Version {
    if v == b"HTTP/1.0" {
        Version::Http10
    } else {
        Version::Http11
    }
}

// ---------------------------------------------------------------------------------------
// Body framing.

enum Ck {
    Size {
        val: u64,
        digits: bool,
        ext: u32,
        in_ext: bool,
    },
    Data(u64),
    /// CRLF after chunk data.
    DataEnd {
        cr: bool,
    },
    /// After the last chunk: trailer lines up to an empty line.
    Trailer {
        line: u32,
    },
}

impl Ck {
    fn new() -> Self {
        Ck::Size {
            val: 0,
            digits: false,
            ext: 0,
            in_ext: false,
        }
    }

    /// One framing byte; Ok(true) when the whole chunked body ended.
    fn byte(&mut self, b: u8) -> Result<bool, ()> {
        match self {
            Ck::Size {
                val,
                digits,
                ext,
                in_ext,
            } => {
                if b == b'\n' {
                    if !*digits {
                        return Err(());
                    }
                    let v = *val;
                    *self = if v == 0 {
                        Ck::Trailer { line: 0 }
                    } else {
                        Ck::Data(v)
                    };
                } else if *in_ext {
                    *ext += 1;
                    if *ext > MAX_CHUNK_EXT || !(is_field_byte(b) || b == b'\r') {
                        return Err(());
                    }
                } else if let Some(h) = (b as char).to_digit(16) {
                    *val = val
                        .checked_mul(16)
                        .map(|v| v + u64::from(h))
                        .filter(|&v| v <= MAX_CHUNK_SIZE)
                        .ok_or(())?;
                    *digits = true;
                } else if *digits && matches!(b, b';' | b' ' | b'\t' | b'\r') {
                    *in_ext = true;
                } else {
                    return Err(());
                }
            }
            // Chunk data is consumed by count in `Framing::step`, never byte by byte.
            Ck::Data(_) => {}
            Ck::DataEnd { cr } => match b {
                b'\r' if !*cr => *cr = true,
                b'\n' => *self = Ck::new(),
                _ => return Err(()),
            },
            Ck::Trailer { line } => match b {
                b'\n' if *line == 0 => return Ok(true),
                b'\n' => *line = 0,
                b'\r' => {}
                _ => {
                    *line += 1;
                    if *line > MAX_TRAILER_LINE {
                        return Err(());
                    }
                }
            },
        }
        Ok(false)
    }
}

enum Framing {
    Length(u64),
    Chunked(Ck),
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
    /// A framing byte was not captured.
    Lost,
    /// A framing byte was invalid.
    Bad,
}

impl Framing {
    /// Consume from `pos`; returns (new pos, payload bytes, step).
    fn step(&mut self, data: &[u8], mut pos: u64, len: u64) -> (u64, u64, Step) {
        let avail = len.saturating_sub(pos);
        match self {
            Framing::UntilClose => (len, avail, Step::More),
            Framing::Length(rem) => {
                let n = (*rem).min(avail);
                *rem -= n;
                let st = if *rem == 0 { Step::Done } else { Step::More };
                (pos + n, n, st)
            }
            Framing::Chunked(ck) => {
                let mut payload = 0u64;
                while pos < len {
                    if let Ck::Data(rem) = ck {
                        let n = (*rem).min(len - pos);
                        *rem -= n;
                        pos += n;
                        payload += n;
                        if *rem == 0 {
                            *ck = Ck::DataEnd { cr: false };
                        }
                        continue;
                    }
                    let Some(&b) = usize::try_from(pos).ok().and_then(|p| data.get(p)) else {
                        return (pos, payload, Step::Lost);
                    };
                    pos += 1;
                    match ck.byte(b) {
                        Ok(true) => return (pos, payload, Step::Done),
                        Ok(false) => {}
                        Err(()) => return (pos, payload, Step::Bad),
                    }
                }
                (pos, payload, Step::More)
            }
        }
    }
}

/// Body framing from headers. Err = framing cannot be trusted.
fn body_framing(headers: &[Header], request: bool) -> Result<Option<Framing>, ()> {
    if let Some((_, te)) = headers.iter().rev().find(|(n, _)| n == "transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Some(Framing::Chunked(Ck::new())))
        } else if request {
            Err(())
        } else {
            Ok(Some(Framing::UntilClose))
        };
    }
    let mut cl: Option<u64> = None;
    for (_, v) in headers.iter().filter(|(n, _)| n == "content-length") {
        for part in v.split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: u64 = part.parse().map_err(|_| ())?;
            if cl.is_some_and(|c| c != n) {
                return Err(());
            }
            cl = Some(n);
        }
    }
    Ok(match cl {
        Some(0) => None,
        Some(n) => Some(Framing::Length(n)),
        None if request => None,
        None => Some(Framing::UntilClose),
    })
}

// ---------------------------------------------------------------------------------------
// Connection.

enum Phase {
    /// Skip whole chunks until one begins with a valid start line.
    Resync,
    /// At a message boundary, in sync.
    Sync,
    Head(Head),
    Body(Framing),
}

struct Dir {
    phase: Phase,
    /// A gap in the other direction: finish the current message, then resync.
    resync_after: bool,
    seen_http: bool,
    noted_garbage: bool,
}

impl Dir {
    fn new() -> Self {
        Dir {
            phase: Phase::Resync,
            resync_after: false,
            seen_http: false,
            noted_garbage: false,
        }
    }
}

struct PendingReq {
    id: u64,
    req: Request,
    head: bool,
    connect: bool,
}

struct RespCtx {
    resp: Response,
    /// None for an orphan: its framing is still followed, nothing is emitted.
    req: Option<PendingReq>,
    /// Framing lost: the response absorbs chunks until a new message shows up.
    lost: bool,
    until_close: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadEnd {
    Complete,
    /// Capture or buffer cap cut the block: the header block is assumed to end here.
    Truncated,
    /// Connection closed inside the block.
    Closing,
}

/// A request that switched its connection to HTTP/2 (`Upgrade: h2c` answered by 101): per
/// RFC 9113 section 3.2 (RFC 7540 3.2) it is stream 1, and its response comes as HTTP/2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2cUpgrade {
    pub role: Role,
    pub request: Request,
    /// Where HTTP/2 starts: right after the 101's head, in the chunk that carried it
    /// (the server's SETTINGS and stream 1's response often share that write).
    pub offset: u64,
}

pub struct Http1Conn {
    role: Option<Role>,
    /// Set when a 101 switched the connection to h2c; taken by [`Http1Conn::take_h2c`].
    h2c: Option<H2cUpgrade>,
    dirs: [Dir; 2],
    /// Unanswered requests, oldest first. `None` marks a request known to be lost (not
    /// captured): its response still comes and must not be paired with a later request.
    pending: VecDeque<Option<PendingReq>>,
    /// Request whose body (or lost-framing remainder) the request direction is consuming.
    cur_req: Option<u64>,
    /// Response being consumed by the response direction (already paired).
    cur_resp: Option<RespCtx>,
    next_id: u64,
    /// Slots that overflowed off the front of `pending`: the next that many responses
    /// answer them and become orphans, which keeps FIFO pairing aligned.
    dropped: u64,
    upgraded: bool,
    stats: Stats,
    /// Header names to keep (`None`: all).
    keep: Option<&'static [&'static str]>,
    /// Requests begun since [`Http1Conn::take_opened`] last emptied it.
    opened: Vec<Opened>,
}

impl Default for Http1Conn {
    fn default() -> Self {
        Self::new()
    }
}

fn idx(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl Http1Conn {
    pub fn new() -> Self {
        Http1Conn {
            role: None,
            h2c: None,
            dirs: [Dir::new(), Dir::new()],
            pending: VecDeque::new(),
            cur_req: None,
            cur_resp: None,
            next_id: 0,
            dropped: 0,
            upgraded: false,
            stats: Stats::default(),
            keep: Some(KEPT_HEADERS),
            opened: Vec::new(),
        }
    }

    /// A decoder that reports every header (for tools and tests, not the daemon).
    pub fn keeping_all() -> Self {
        Http1Conn {
            keep: None,
            ..Self::new()
        }
    }

    /// Moves the requests begun since the last call to `out`.
    pub fn take_opened(&mut self, out: &mut Vec<Opened>) {
        out.append(&mut self.opened);
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// The connection switched to HTTP/2 in the chunk just fed (`Upgrade: h2c`, 101): the
    /// upgrade request, whose exchange is not reported here, and where HTTP/2 begins. The
    /// caller goes on with an HTTP/2 decoder.
    pub fn take_h2c(&mut self) -> Option<H2cUpgrade> {
        self.h2c.take()
    }

    /// Feed one syscall's worth of bytes; push completed exchanges to `out`.
    pub fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        if self.upgraded || chunk.len == 0 {
            return;
        }
        let d = idx(chunk.dir);
        let len = chunk.len;
        let data = &chunk.data[..chunk
            .data
            .len()
            .min(usize::try_from(len).unwrap_or(usize::MAX))];
        let cap = data.len() as u64;

        let mut speculative = false;
        if matches!(self.dirs[d].phase, Phase::Resync) {
            if !begins_with_start_line(data, cap == len, self.kinds(d)) {
                let dir = &mut self.dirs[d];
                if !dir.seen_http && !dir.noted_garbage {
                    dir.noted_garbage = true;
                    self.stats.malformed += 1;
                }
                self.touch(d, len, chunk.ts_end);
                return;
            }
            self.end_lost(d, out);
            self.dirs[d].phase = Phase::Sync;
            speculative = true;
        } else if matches!(self.dirs[d].phase, Phase::Body(_))
            && self.cur_resp.as_ref().is_some_and(|c| c.req.is_none())
            && begins_with_start_line(data, cap == len, self.kinds(d))
        {
            // An orphan's framing is a guess (its request may have been HEAD), and it
            // emits nothing: a chunk that starts with a status line ends it.
            self.message_done(d, out);
        } else if matches!(self.dirs[d].phase, Phase::Body(_))
            && !self.is_req_dir(d)
            && self.answered_later()
            && begins_with_start_line(data, cap == len, self.kinds(d))
        {
            // The peer already sent a later request and this chunk starts a new response:
            // the current body's last bytes were never seen (a syscall not captured, e.g. a
            // sendfile while the probes were attaching). Counting them into the body would
            // eat the following responses and mis-pair every exchange after.
            if let Some(c) = self.cur_resp.take() {
                self.emit(c.req, Some(c.resp), Outcome::FramingLost, out);
            }
            self.stats.resyncs += 1;
            self.dirs[d].phase = Phase::Sync;
        }

        let mut pos = 0u64;
        while pos < len && !self.upgraded {
            match std::mem::replace(&mut self.dirs[d].phase, Phase::Sync) {
                Phase::Resync => {
                    // Lost sync mid-chunk: the rest belongs to the lost message, if any.
                    self.dirs[d].phase = Phase::Resync;
                    self.touch(d, len - pos, chunk.ts_end);
                    return;
                }
                Phase::Sync => {
                    // Tolerate stray CRLFs between messages (RFC 9112 section 2.2).
                    while pos < cap && matches!(data[pos as usize], b'\r' | b'\n') {
                        pos += 1;
                    }
                    if pos >= len {
                        break;
                    }
                    if pos >= cap {
                        if len - pos < MIN_MESSAGE {
                            // Too short to be a message (stray CRLF after a body).
                            pos = len;
                        } else {
                            // A message starts in uncaptured bytes: it cannot be decoded.
                            self.lose_one(d);
                            self.enter_resync(d);
                        }
                    } else {
                        self.dirs[d].phase = Phase::Head(Head::new(
                            chunk.tid,
                            chunk.ts_start,
                            chunk.ts_end,
                            std::mem::take(&mut speculative),
                        ));
                    }
                }
                Phase::Head(mut h) => {
                    let res = if pos < cap {
                        h.push(&data[pos as usize..], self.kinds(d), self.keep)
                    } else {
                        HeadRes::Need(0)
                    };
                    h.ts_end = chunk.ts_end;
                    if let (Some(k), false) = (h.kind, h.announced) {
                        h.announced = true;
                        self.announce(d, k, out);
                    }
                    match res {
                        HeadRes::Bad => {
                            self.stats.malformed += 1;
                            self.enter_resync(d);
                        }
                        HeadRes::Done(n) => {
                            // Read in place (not copied): the block is in this chunk.
                            let block = h.buf.is_empty().then(|| {
                                let p = pos as usize;
                                &data[p..p + n]
                            });
                            pos += n as u64;
                            self.head_done(d, h, block, HeadEnd::Complete, out);
                            if let Some(u) = self.h2c.as_mut() {
                                u.offset = pos;
                            }
                        }
                        HeadRes::Need(n) => {
                            pos += n as u64;
                            if pos < len || h.full() {
                                // Blank line not captured: assume the block ends with this
                                // chunk; the body start is unknown, so resync afterwards.
                                pos = len;
                                self.head_done(d, h, None, HeadEnd::Truncated, out);
                            } else {
                                self.dirs[d].phase = Phase::Head(h);
                            }
                        }
                    }
                }
                Phase::Body(mut f) => {
                    let (np, payload, step) = f.step(data, pos, len);
                    if np > pos {
                        self.touch(d, payload, chunk.ts_end);
                    }
                    pos = np;
                    match step {
                        Step::More => self.dirs[d].phase = Phase::Body(f),
                        Step::Done => self.message_done(d, out),
                        Step::Lost | Step::Bad => {
                            if step == Step::Bad {
                                self.stats.malformed += 1;
                            }
                            let resp_dir = !self.is_req_dir(d);
                            if let Some(c) = self.cur_resp.as_mut().filter(|_| resp_dir) {
                                c.lost = true;
                            }
                            self.enter_resync(d);
                        }
                    }
                }
            }
        }
    }

    /// Events were lost in `dir` (sequence gap): bytes are missing there.
    pub fn gap(&mut self, dir: Direction) {
        if self.upgraded {
            return;
        }
        let d = idx(dir);
        if self.role.is_some() {
            if self.is_req_dir(d) {
                self.cur_req = None;
            } else if self.cur_resp.take().is_some_and(|c| c.req.is_some()) {
                self.stats.lost_exchanges += 1;
            }
        }
        // Unanswered requests can no longer be paired safely.
        self.stats.lost_exchanges += self.pending.iter().flatten().count() as u64;
        self.pending.clear();
        self.dropped = 0;
        self.dirs[d].resync_after = false;
        if !matches!(self.dirs[d].phase, Phase::Resync) {
            self.enter_resync(d);
        }
        // The other direction's bytes are intact: let its current message finish exactly.
        let o = 1 - d;
        match self.dirs[o].phase {
            Phase::Resync => {}
            Phase::Sync => self.enter_resync(o),
            _ => self.dirs[o].resync_after = true,
        }
    }

    /// The connection closed at `ts`: flush what is pending.
    /// (Every reported time is a byte time, so `ts` itself is not needed.)
    pub fn close(&mut self, _ts: u64, out: &mut Vec<Exchange>) {
        if let (Some(rd), false) = (self.req_dir(), self.upgraded) {
            let sd = 1 - rd;
            if let Phase::Head(h) = std::mem::replace(&mut self.dirs[sd].phase, Phase::Resync) {
                self.head_done(sd, h, None, HeadEnd::Closing, out);
            }
            if let Some(c) = self.cur_resp.take() {
                let outcome = if c.lost {
                    Outcome::FramingLost
                } else if c.until_close {
                    Outcome::Complete
                } else {
                    Outcome::ClosedMidResponse
                };
                self.emit(c.req, Some(c.resp), outcome, out);
            }
            if let Phase::Head(h) = std::mem::replace(&mut self.dirs[rd].phase, Phase::Resync) {
                self.head_done(rd, h, None, HeadEnd::Closing, out);
            }
            while let Some(slot) = self.pending.pop_front() {
                self.emit(slot, None, Outcome::ClosedBeforeResponse, out);
            }
        }
        self.pending.clear();
        self.dropped = 0;
        self.cur_resp = None;
        self.cur_req = None;
        for dir in &mut self.dirs {
            dir.phase = Phase::Resync;
            dir.resync_after = false;
        }
    }

    fn req_dir(&self) -> Option<usize> {
        self.role.map(|r| match r {
            Role::Server => 0,
            Role::Client => 1,
        })
    }

    fn is_req_dir(&self, d: usize) -> bool {
        self.req_dir() == Some(d)
    }

    fn kinds(&self, d: usize) -> Kinds {
        match self.req_dir() {
            None => Kinds {
                req: true,
                resp: true,
            },
            Some(rd) => Kinds {
                req: rd == d,
                resp: rd != d,
            },
        }
    }

    /// A whole message of direction `d` was not captured; assume exactly one (the common
    /// case) so that later responses still pair with their own requests.
    fn lose_one(&mut self, d: usize) {
        if self.role.is_none() {
            return;
        }
        if self.is_req_dir(d) {
            self.stats.lost_exchanges += 1;
            self.push_slot(None);
        } else if self.pop_answered(None).is_some() {
            self.stats.lost_exchanges += 1;
        }
    }

    fn push_slot(&mut self, slot: Option<PendingReq>) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(Some(_)) = self.pending.pop_front() {
                self.stats.lost_exchanges += 1;
            }
            self.dropped += 1;
        }
        self.pending.push_back(slot);
    }

    /// The request a new response answers (FIFO). None = orphan. A response whose first
    /// chunk ended before the request started cannot answer it (causality), so the
    /// request is kept for a later response.
    fn pop_answered(&mut self, resp_ts_end: Option<u64>) -> Option<PendingReq> {
        if self.dropped > 0 {
            self.dropped -= 1;
            return None;
        }
        match self.pending.front()? {
            Some(p) if resp_ts_end.is_some_and(|t| p.req.ts_start > t) => None,
            _ => self.pending.pop_front().flatten(),
        }
    }

    fn enter_resync(&mut self, d: usize) {
        self.dirs[d].phase = Phase::Resync;
        self.dirs[d].resync_after = false;
        self.stats.resyncs += 1;
    }

    fn emit(
        &self,
        req: Option<PendingReq>,
        response: Option<Response>,
        outcome: Outcome,
        out: &mut Vec<Exchange>,
    ) {
        if let (Some(role), Some(p)) = (self.role, req) {
            out.push(Exchange {
                role,
                request: p.req,
                response,
                outcome,
            });
        }
    }

    fn req_mut(&mut self, id: u64) -> Option<&mut Request> {
        if let Some(p) = self.pending.iter_mut().rev().flatten().find(|p| p.id == id) {
            return Some(&mut p.req);
        }
        let c = self.cur_resp.as_mut()?.req.as_mut()?;
        (c.id == id).then_some(&mut c.req)
    }

    /// Account bytes of direction `d` to its current message.
    fn touch(&mut self, d: usize, n: u64, ts_end: u64) {
        let Some(rd) = self.req_dir() else { return };
        let (body_len, ts) = if d == rd {
            let Some(r) = self.cur_req.and_then(|id| self.req_mut(id)) else {
                return;
            };
            (&mut r.body_len, &mut r.ts_end)
        } else {
            let Some(c) = self.cur_resp.as_mut() else {
                return;
            };
            (&mut c.resp.body_len, &mut c.resp.ts_end)
        };
        *body_len = body_len.saturating_add(n);
        *ts = ts_end;
    }

    /// A start line was validated in direction `d`.
    fn announce(&mut self, d: usize, k: Kind, out: &mut Vec<Exchange>) {
        self.dirs[d].seen_http = true;
        if self.role.is_none() {
            self.role = Some(match (k, d) {
                (Kind::Req, 0) | (Kind::Resp, 1) => Role::Server,
                _ => Role::Client,
            });
        }
        // A new request ends a response whose framing was lost.
        if k == Kind::Req && self.is_req_dir(d) {
            self.end_lost(1 - d, out);
        }
    }

    /// Stop attributing chunks to the lost-framing message of direction `d`.
    fn end_lost(&mut self, d: usize, out: &mut Vec<Exchange>) {
        if self.role.is_none() {
            return;
        }
        if self.is_req_dir(d) {
            self.cur_req = None;
        } else if let Some(c) = self.cur_resp.take_if(|c| c.lost) {
            self.emit(c.req, Some(c.resp), Outcome::FramingLost, out);
        }
    }

    /// A complete request is waiting that began after the response in progress began.
    fn answered_later(&self) -> bool {
        let Some(c) = self.cur_resp.as_ref().filter(|c| c.req.is_some()) else {
            return false;
        };
        self.pending
            .iter()
            .flatten()
            .any(|p| p.req.ts_start > c.resp.ts_start)
    }

    fn message_done(&mut self, d: usize, out: &mut Vec<Exchange>) {
        if self.is_req_dir(d) {
            self.cur_req = None;
        } else if let Some(c) = self.cur_resp.take() {
            self.emit(c.req, Some(c.resp), Outcome::Complete, out);
        }
        let dir = &mut self.dirs[d];
        if std::mem::take(&mut dir.resync_after) {
            self.enter_resync(d);
        } else {
            dir.phase = Phase::Sync;
        }
    }

    /// Header block finished (or cut): create the message and set up its body framing.
    /// `block`: the block's bytes when they were read in place, not copied into `h`.
    fn head_done(
        &mut self,
        d: usize,
        h: Head,
        block: Option<&[u8]>,
        end: HeadEnd,
        out: &mut Vec<Exchange>,
    ) {
        let kind = match h.kind {
            Some(k) if self.kinds(d).allows(k) => k,
            Some(_) if end != HeadEnd::Closing => {
                // Both directions raced to a role before it was known; this one lost.
                self.stats.malformed += 1;
                return self.enter_resync(d);
            }
            // Start line itself not complete: nothing trustworthy to report.
            _ => {
                if end == HeadEnd::Truncated {
                    self.lose_one(d);
                    self.enter_resync(d);
                }
                return;
            }
        };
        let truncated = end != HeadEnd::Complete;
        if truncated {
            self.stats.truncated_headers += 1;
        }
        let block = block.unwrap_or(&h.buf);
        let start = match memchr::memchr(b'\n', block) {
            Some(end) => strip_cr(&block[..end]),
            None => &[],
        };
        let headers = h.headers;
        let framing = if truncated {
            Err(())
        } else {
            body_framing(&headers, kind == Kind::Req)
        };
        match kind {
            Kind::Req => {
                let mut parts = start.splitn(3, |&b| b == b' ');
                let method = text(parts.next().unwrap_or_default());
                let target = text(parts.next().unwrap_or_default());
                let version = parse_version(parts.next().unwrap_or_default());
                let id = self.next_id;
                self.next_id += 1;
                if let Some(role) = self.role {
                    self.opened.push(Opened {
                        role,
                        key: RequestKey::Http1(id),
                        tid: h.tid,
                        ts: h.ts_start,
                        context: TraceContext::from_headers(&headers),
                    });
                }
                self.push_slot(Some(PendingReq {
                    id,
                    head: method == "HEAD",
                    connect: method == "CONNECT",
                    req: Request {
                        method,
                        target,
                        version,
                        headers,
                        headers_truncated: truncated,
                        body_len: 0,
                        ts_start: h.ts_start,
                        ts_end: h.ts_end,
                        seq: id,
                        tid: h.tid,
                    },
                }));
                self.cur_req = Some(id);
                match framing {
                    Ok(None) => self.message_done(d, out),
                    Ok(Some(f)) => self.dirs[d].phase = Phase::Body(f),
                    // Keep cur_req: following chunks are attributed to it until resync.
                    Err(()) if end == HeadEnd::Closing => {}
                    Err(()) => self.enter_resync(d),
                }
            }
            Kind::Resp => {
                let version = parse_version(start.get(..8).unwrap_or_default());
                let status = start
                    .get(9..12)
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<u16>().ok())
                    .unwrap_or(0);
                if (100..200).contains(&status) && status != 101 {
                    // Interim response (e.g. 100 Continue): the final one pairs instead.
                    return match end {
                        HeadEnd::Complete => self.message_done(d, out),
                        HeadEnd::Truncated => self.enter_resync(d),
                        HeadEnd::Closing => {}
                    };
                }
                let req = self.pop_answered(Some(h.ts_first_end));
                if req.is_none() {
                    self.stats.orphan_responses += 1;
                }
                let (head, connect) = req.as_ref().map_or((false, false), |p| (p.head, p.connect));
                let resp = Response {
                    status,
                    version,
                    headers,
                    headers_truncated: truncated,
                    body_len: 0,
                    ts_start: h.ts_start,
                    ts_end: h.ts_end,
                    tid: h.tid,
                };
                if status == 101 || (connect && (200..300).contains(&status)) {
                    self.upgraded = true;
                    if let (101, Some(role), Some(p)) = (status, self.role, req.as_ref())
                        && upgrades_to_h2c(&p.req.headers, &resp.headers)
                        && let Some(p) = req
                    {
                        // Not an exchange of its own: stream 1 of the HTTP/2 connection.
                        self.h2c = Some(H2cUpgrade {
                            role,
                            request: p.req,
                            offset: 0,
                        });
                        return;
                    }
                    return self.emit(req, Some(resp), Outcome::Complete, out);
                }
                let framing = match framing {
                    Ok(_) if head || status == 204 || status == 304 => Ok(None),
                    f => f,
                };
                let until_close = matches!(framing, Ok(Some(Framing::UntilClose)));
                self.cur_resp = Some(RespCtx {
                    resp,
                    req,
                    lost: false,
                    until_close,
                });
                match framing {
                    Ok(None) => self.message_done(d, out),
                    Ok(Some(f)) => self.dirs[d].phase = Phase::Body(f),
                    Err(()) if end == HeadEnd::Closing => {}
                    Err(()) => {
                        if let Some(c) = self.cur_resp.as_mut() {
                            c.lost = true;
                        }
                        self.enter_resync(d);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Egress as E, Ingress as I};

    #[test]
    fn daemon_decoder_keeps_only_needed_headers_and_never_credentials() {
        let mut c = Http1Conn::new();
        let mut out = Vec::new();
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nCookie: s=1\r\nTraceparent: t\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=2\r\nContent-Length: 0\r\n\r\n";
        for (dir, b, t) in [(I, &req[..], 1), (E, &resp[..], 2)] {
            c.feed(
                Chunk {
                    tid: 0,
                    dir,
                    len: b.len() as u64,
                    data: b,
                    layout: Layout::Prefix,
                    ts_start: t,
                    ts_end: t,
                },
                &mut out,
            );
        }
        assert_eq!(out.len(), 1);
        let names: Vec<_> = out[0].request.headers.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["host", "traceparent"]);
        let names: Vec<_> = out[0]
            .response
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .map(|(n, _)| &**n)
            .collect();
        assert_eq!(names, ["content-length"]);
    }

    /// Test driver: every chunk gets fresh, increasing timestamps (start = t, end = t + 5).
    struct T {
        c: Http1Conn,
        out: Vec<Exchange>,
        t: u64,
    }

    impl T {
        fn new() -> Self {
            T {
                c: Http1Conn::keeping_all(),
                out: Vec::new(),
                t: 0,
            }
        }
        /// One syscall of `len` real bytes of which `data` was captured; returns (ts_start, ts_end).
        fn part(&mut self, dir: Direction, data: &[u8], len: u64) -> (u64, u64) {
            self.t += 10;
            let (ts_start, ts_end) = (self.t, self.t + 5);
            let chunk = Chunk {
                tid: 0,
                dir,
                len,
                data,
                layout: Layout::Prefix,
                ts_start,
                ts_end,
            };
            self.c.feed(chunk, &mut self.out);
            (ts_start, ts_end)
        }
        fn send(&mut self, dir: Direction, data: &[u8]) -> (u64, u64) {
            self.part(dir, data, data.len() as u64)
        }
        fn close(&mut self) {
            self.t += 10;
            self.c.close(self.t, &mut self.out);
        }
        fn take(&mut self) -> Vec<Exchange> {
            std::mem::take(&mut self.out)
        }
        fn stats(&self) -> Stats {
            self.c.stats().clone()
        }
    }

    fn resp(x: &Exchange) -> &Response {
        x.response.as_ref().expect("response")
    }

    fn targets(xs: &[Exchange]) -> Vec<&str> {
        xs.iter().map(|x| x.request.target.as_str()).collect()
    }

    /// Minimal xorshift64* PRNG: deterministic, no dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn simple_get_server() {
        let mut t = T::new();
        let (rs, re) = t.send(
            I,
            b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com\r\nX-Y:  v w \t\r\n\r\n",
        );
        assert!(t.take().is_empty());
        let (ps, pe) = t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        let x = &ex[0];
        assert_eq!((x.role, x.outcome), (Role::Server, Outcome::Complete));
        let r = &x.request;
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/a?b=1"));
        assert_eq!(r.version, Version::Http11);
        assert_eq!(
            r.headers,
            vec![
                ("host".into(), "Example.com".to_string()),
                ("x-y".into(), "v w".to_string())
            ]
        );
        assert!(!r.headers_truncated);
        assert_eq!((r.body_len, r.ts_start, r.ts_end), (0, rs, re));
        let p = resp(x);
        assert_eq!((p.status, p.version, p.body_len), (200, Version::Http11, 5));
        assert_eq!((p.ts_start, p.ts_end), (ps, pe));
        assert_eq!(t.stats(), Stats::default());
    }

    #[test]
    fn client_role_with_split_bodies() {
        let mut t = T::new();
        let (rs, _) = t.send(E, b"POST /submit HTTP/1.1\r\nContent-Length: 3\r\n\r\n");
        let (_, re) = t.send(E, b"abc");
        let (ps, _) = t.send(I, b"HTTP/1.0 404 Not Found\r\nContent-Length: 4\r\n\r\nno");
        assert!(t.take().is_empty());
        let (_, pe) = t.send(I, b"pe");
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        let x = &ex[0];
        assert_eq!(x.role, Role::Client);
        assert_eq!(
            (x.request.body_len, x.request.ts_start, x.request.ts_end),
            (3, rs, re)
        );
        let p = resp(x);
        assert_eq!((p.status, p.version, p.body_len), (404, Version::Http10, 4));
        assert_eq!((p.ts_start, p.ts_end), (ps, pe));
    }

    #[test]
    fn keep_alive_three_requests() {
        let mut t = T::new();
        for i in 0..3 {
            t.send(
                I,
                format!("GET /k{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
            );
            let body = "x".repeat(i + 1);
            let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", i + 1);
            t.send(E, r.as_bytes());
        }
        let ex = t.take();
        assert_eq!(targets(&ex), ["/k0", "/k1", "/k2"]);
        for (i, x) in ex.iter().enumerate() {
            assert_eq!(x.outcome, Outcome::Complete);
            assert_eq!(resp(x).body_len, i as u64 + 1);
        }
    }

    #[test]
    fn pipelining_many_per_chunk() {
        let mut t = T::new();
        t.send(
            I,
            b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET /3 HTTP/1.1\r\n\r\n",
        );
        t.send(
            E,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA\
              HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nBB\r\n0\r\n\r\n\
              HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        );
        let ex = t.take();
        assert_eq!(targets(&ex), ["/1", "/2", "/3"]);
        let st: Vec<_> = ex
            .iter()
            .map(|x| (resp(x).status, resp(x).body_len))
            .collect();
        assert_eq!(st, [(200, 1), (201, 2), (404, 0)]);
        assert_eq!(ex[1].request.body_len, 4);
    }

    fn feed_split(t: &mut T, dir: Direction, bytes: &[u8], sizes: &mut dyn FnMut() -> usize) {
        let mut i = 0;
        while i < bytes.len() {
            let n = sizes().clamp(1, bytes.len() - i);
            t.send(dir, &bytes[i..i + n]);
            i += n;
        }
    }

    #[test]
    fn request_and_response_byte_by_byte() {
        let req = b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz";
        let rsp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\n\r\n";
        let mut t = T::new();
        feed_split(&mut t, I, req, &mut || 1);
        feed_split(&mut t, E, rsp, &mut || 1);
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(
            (ex[0].request.method.as_str(), ex[0].request.body_len),
            ("PUT", 3)
        );
        assert_eq!(ex[0].request.headers.len(), 2);
        assert_eq!((resp(&ex[0]).status, resp(&ex[0]).body_len), (200, 3));
        // The request's first byte came in the first chunk, its last in the last one.
        assert_eq!(ex[0].request.ts_start, 10);
        assert_eq!(ex[0].request.ts_end, 10 * req.len() as u64 + 5);
        assert_eq!(t.stats(), Stats::default());
    }

    #[test]
    fn headers_split_mid_line() {
        let mut t = T::new();
        for p in [
            "GET /s HTT",
            "P/1.1\r\nHos",
            "t: a\r",
            "\nAccept: */*\r\n\r",
            "\n",
        ] {
            t.send(I, p.as_bytes());
        }
        for p in ["HTTP/1.1 2", "00 OK\r\nContent-", "Length: 2\r\n", "\r\nok"] {
            t.send(E, p.as_bytes());
        }
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        let h: Vec<_> = ex[0].request.headers.iter().map(|(n, _)| &**n).collect();
        assert_eq!(h, ["host", "accept"]);
        assert_eq!(resp(&ex[0]).body_len, 2);
    }

    #[test]
    fn big_body_partially_captured() {
        const BODY: u64 = 10 << 20;
        let head = format!("POST /big HTTP/1.1\r\nContent-Length: {BODY}\r\n\r\n");
        let mut t = T::new();
        let total = head.len() as u64 + BODY;
        let mut first = head.clone().into_bytes();
        first.resize(4096, b'z');
        let mut sent = 0u64;
        let mut last_end = 0;
        while sent < total {
            let len = (total - sent).min(64 << 10);
            // Only the first 4 KiB of every 64 KiB write is captured.
            let data: &[u8] = if sent == 0 { &first } else { &[b'z'; 4096] };
            last_end = t.part(I, &data[..data.len().min(len as usize)], len).1;
            sent += len;
        }
        t.send(
            E,
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
        );
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(
            (ex[0].request.body_len, ex[0].request.ts_end),
            (BODY, last_end)
        );
        assert_eq!(resp(&ex[0]).status, 413);
        assert_eq!(t.stats(), Stats::default());
    }

    fn chunked_body(rng: &mut Rng, body: &[u8], ext: bool, trailer: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0;
        while i < body.len() {
            let n = (rng.below(body.len() as u64) as usize + 1).min(body.len() - i);
            v.extend_from_slice(format!("{n:x}").as_bytes());
            if ext && rng.below(2) == 0 {
                v.extend_from_slice(b";name=\"v\"");
            }
            v.extend_from_slice(b"\r\n");
            v.extend_from_slice(&body[i..i + n]);
            v.extend_from_slice(b"\r\n");
            i += n;
        }
        v.extend_from_slice(b"0\r\n");
        if trailer {
            v.extend_from_slice(b"X-Checksum: 1\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn chunked_many_chunks_split_size_lines() {
        let mut rng = Rng(7);
        let mut rsp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
        let mut total = 0u64;
        for n in 1..=50usize {
            rsp.extend_from_slice(format!("{n:X};ext={n}\r\n").as_bytes());
            rsp.extend(std::iter::repeat_n(b'q', n));
            rsp.extend_from_slice(b"\r\n");
            total += n as u64;
        }
        rsp.extend_from_slice(b"0\r\nTrailer-A: 1\r\n\r\n");
        for step in [1usize, 2, 3, 5, 7, 100] {
            let mut t = T::new();
            t.send(I, b"GET /c HTTP/1.1\r\n\r\n");
            feed_split(&mut t, E, &rsp, &mut || step);
            let ex = t.take();
            assert_eq!(ex.len(), 1, "step {step}");
            assert_eq!(resp(&ex[0]).body_len, total);
            assert_eq!(ex[0].outcome, Outcome::Complete);
        }
        let _ = chunked_body(&mut rng, b"x", true, true);
    }

    #[test]
    fn chunked_huge_uncaptured_chunk_then_size_line_at_boundary() {
        let mut t = T::new();
        t.send(E, b"GET /dl HTTP/1.1\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n";
        // One write: headers + 1 MiB of chunk data, only the first bytes captured.
        t.part(I, head, head.len() as u64 + 0x100000);
        let (_, pe) = t.send(I, b"\r\n5\r\nhello\r\n0\r\n\r\n");
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        let p = resp(&ex[0]);
        assert_eq!(
            (p.body_len, p.ts_end, ex[0].outcome),
            (0x100005, pe, Outcome::Complete)
        );
        assert_eq!(t.stats().resyncs, 0);
    }

    #[test]
    fn chunked_size_line_uncaptured_framing_lost() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n5\r\nhello\r\n0\r\n\r\n";
        let cut = wire.len() - 19; // capture ends after the 16 data bytes
        for close in [false, true] {
            let mut t = T::new();
            t.send(I, b"GET /one HTTP/1.1\r\n\r\n");
            t.part(E, &wire[..cut], wire.len() as u64);
            // A further chunk that does not start with a status line belongs to it.
            let (_, last) = t.part(E, b"", 100);
            assert!(t.take().is_empty());
            if close {
                t.close();
            } else {
                t.send(I, b"GET /two HTTP/1.1\r\n\r\n");
            }
            let ex = t.take();
            assert_eq!(ex.len(), 1);
            assert_eq!(
                (ex[0].request.target.as_str(), ex[0].outcome),
                ("/one", Outcome::FramingLost)
            );
            let p = resp(&ex[0]);
            assert_eq!(p.ts_end, last);
            assert!(p.body_len >= 16);
            if !close {
                t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2");
                let ex = t.take();
                assert_eq!(targets(&ex), ["/two"]);
                assert_eq!(
                    (ex[0].outcome, resp(&ex[0]).body_len),
                    (Outcome::Complete, 1)
                );
            }
            assert_eq!(t.stats().resyncs, 1);
        }
    }

    #[test]
    fn chunk_size_limits() {
        let mut t = T::new();
        t.send(I, b"GET /huge HTTP/1.1\r\n\r\n");
        t.send(
            E,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n",
        );
        t.part(E, b"", 1 << 40);
        t.close();
        let ex = t.take();
        assert_eq!(ex[0].outcome, Outcome::ClosedMidResponse);
        assert_eq!(resp(&ex[0]).body_len, 1 << 40);

        let mut t = T::new();
        t.send(I, b"GET /over HTTP/1.1\r\n\r\n");
        t.send(
            E,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000001\r\n",
        );
        t.close();
        assert_eq!(t.take()[0].outcome, Outcome::FramingLost);
        assert_eq!(t.stats().malformed, 1);
    }

    #[test]
    fn chunked_request_with_trailers() {
        let mut t = T::new();
        t.send(
            I,
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5 ; e=1\r\npedia\r\n0\r\nT: x\r\n\r\n",
        );
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = t.take();
        assert_eq!(
            (ex[0].request.body_len, ex[0].outcome),
            (9, Outcome::Complete)
        );
    }

    #[test]
    fn http10_body_until_close() {
        let mut t = T::new();
        t.send(I, b"GET /old HTTP/1.0\r\n\r\n");
        t.send(E, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc");
        let (_, last) = t.part(E, b"defg", 1000);
        assert!(t.take().is_empty());
        t.close();
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(
            (ex[0].request.version, ex[0].outcome),
            (Version::Http10, Outcome::Complete)
        );
        assert_eq!((resp(&ex[0]).body_len, resp(&ex[0]).ts_end), (1003, last));
    }

    #[test]
    fn head_response_has_no_body() {
        let mut t = T::new();
        t.send(I, b"HEAD /h HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        t.send(I, b"GET /g HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/h", "/g"]);
        assert_eq!((resp(&ex[0]).body_len, resp(&ex[1]).body_len), (0, 2));
    }

    #[test]
    fn status_204_and_304_have_no_body() {
        let mut t = T::new();
        t.send(
            I,
            b"DELETE /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
        );
        t.send(E, b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!");
        let ex = t.take();
        let st: Vec<_> = ex
            .iter()
            .map(|x| (resp(x).status, resp(x).body_len))
            .collect();
        assert_eq!(st, [(204, 0), (304, 0), (200, 1)]);
    }

    #[test]
    fn expect_100_continue() {
        let mut t = T::new();
        let (rs, _) = t.send(
            I,
            b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        );
        t.send(E, b"HTTP/1.1 100 Continue\r\n\r\n");
        let (_, re) = t.send(I, b"hello");
        t.send(E, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
        let (ps, _) = t.send(E, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(
            (
                ex[0].request.body_len,
                ex[0].request.ts_start,
                ex[0].request.ts_end
            ),
            (5, rs, re)
        );
        assert_eq!((resp(&ex[0]).status, resp(&ex[0]).ts_start), (201, ps));
        assert_eq!(t.stats().orphan_responses, 0);
    }

    #[test]
    fn upgrade_101_stops_parsing() {
        let mut t = T::new();
        t.send(
            I,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        t.send(
            E,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        );
        assert!(t.c.upgraded());
        t.send(I, b"\x81\x85garbage");
        t.send(I, b"GET /not-http-anymore HTTP/1.1\r\n\r\n");
        t.close();
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        assert_eq!(
            (resp(&ex[0]).status, ex[0].outcome),
            (101, Outcome::Complete)
        );
        assert_eq!(t.stats().malformed, 0);
    }

    #[test]
    fn upgrade_to_h2c_hands_over_stream_1() {
        let mut t = T::new();
        t.send(
            I,
            b"GET /up HTTP/1.1\r\nHost: a:80\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        );
        assert_eq!(t.c.take_h2c(), None);
        let head =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        // The server's SETTINGS follows in the same write.
        let settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        t.send(E, &[&head[..], &settings[..]].concat());
        assert!(t.c.upgraded());
        let u = t.c.take_h2c().expect("h2c upgrade");
        assert_eq!(u.offset, head.len() as u64);
        assert_eq!(u.role, Role::Server);
        assert_eq!(u.request.method, "GET");
        assert_eq!(u.request.target, "/up");
        assert_eq!(t.c.take_h2c(), None);
        // Stream 1 is reported by the HTTP/2 decoder, not as a 101 exchange.
        t.close();
        assert!(t.take().is_empty());

        // A 101 to something else than the h2c asked for stays an ordinary upgrade.
        let mut t = T::new();
        t.send(I, b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n");
        t.send(
            E,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(t.c.take_h2c(), None);
        t.close();
        assert_eq!(resp(&t.take()[0]).status, 101);
    }

    #[test]
    fn connect_tunnel() {
        let mut t = T::new();
        t.send(
            E,
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        );
        t.send(
            I,
            b"HTTP/1.1 407 Proxy Auth Required\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(!t.c.upgraded());
        t.send(E, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
        t.send(I, b"HTTP/1.1 200 Connection established\r\n\r\n");
        assert!(t.c.upgraded());
        t.send(E, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03");
        let ex = t.take();
        let st: Vec<_> = ex.iter().map(|x| resp(x).status).collect();
        assert_eq!(st, [407, 200]);
        assert_eq!(ex[1].request.target, "example.com:443");
    }

    #[test]
    fn request_headers_longer_than_capture() {
        let mut t = T::new();
        let mut req = b"GET /first?x=1 HTTP/1.1\r\nHost: a\r\nCookie: ".to_vec();
        req.extend(std::iter::repeat_n(b'c', 8000));
        req.extend_from_slice(b"\r\nAccept: */*\r\n\r\n");
        t.part(I, &req[..4096], req.len() as u64);
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        t.send(I, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/first?x=1", "/next"]);
        let r = &ex[0].request;
        assert_eq!(r.method, "GET");
        assert!(r.headers_truncated);
        assert_eq!(r.headers, vec![("host".into(), "a".to_string())]);
        assert!(!ex[1].request.headers_truncated);
        assert!(ex.iter().all(|x| x.outcome == Outcome::Complete));
        let s = t.stats();
        assert_eq!((s.truncated_headers, s.resyncs, s.malformed), (1, 1, 0));
    }

    #[test]
    fn response_headers_longer_than_capture() {
        let mut t = T::new();
        t.send(I, b"GET /a HTTP/1.1\r\n\r\n");
        let mut rsp = b"HTTP/1.1 200 OK\r\nSet-Cookie: ".to_vec();
        rsp.extend(std::iter::repeat_n(b's', 5000));
        rsp.extend_from_slice(b"\r\nContent-Length: 3\r\n\r\nabc");
        t.part(E, &rsp[..4096], rsp.len() as u64);
        t.send(I, b"GET /b HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/a", "/b"]);
        assert_eq!(ex[0].outcome, Outcome::FramingLost);
        assert!(resp(&ex[0]).headers_truncated);
        assert_eq!(resp(&ex[0]).status, 200);
        assert_eq!(
            (resp(&ex[1]).status, ex[1].outcome),
            (500, Outcome::Complete)
        );
    }

    #[test]
    fn header_block_over_64k_is_truncated() {
        let mut t = T::new();
        let mut req = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..3000 {
            req.extend_from_slice(format!("X-H{i}: some value here\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert!(req.len() > MAX_HEAD);
        t.send(I, &req);
        t.send(E, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n");
        let ex = t.take();
        assert_eq!(ex.len(), 1);
        assert!(ex[0].request.headers_truncated);
        assert!(ex[0].request.headers.len() > 1000);
        assert_eq!(t.stats().truncated_headers, 1);
    }

    #[test]
    fn not_http_is_rejected() {
        let tls_hello: &[u8] = &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x0a, 0x47, 0x45,
            0x54, 0x20, 0x2f, 0x0a,
        ];
        let mut rng = Rng(42);
        let random = rng.bytes(4096);
        let near_misses: &[&[u8]] = &[
            b"hello world\r\nfoo\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 600 Nope\r\n\r\n",
            b"HTTP/1.1 099 Nope\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            tls_hello,
            &random,
        ];
        for (i, bad) in near_misses.iter().enumerate() {
            let mut t = T::new();
            for _ in 0..3 {
                t.send(I, bad);
                t.send(E, bad);
            }
            t.close();
            assert!(t.take().is_empty(), "case {i}");
            assert!(t.c.role.is_none(), "case {i}");
            assert_eq!(t.stats().malformed, 2, "case {i}");
        }
        // Many random binary chunks: nothing comes out.
        let mut t = T::new();
        for _ in 0..200 {
            let n = rng.below(2000) as usize + 1;
            let b = rng.bytes(n);
            t.send(if rng.below(2) == 0 { I } else { E }, &b);
        }
        t.close();
        assert!(t.take().is_empty());
    }

    #[test]
    fn garbage_after_sync_resyncs() {
        let mut t = T::new();
        t.send(I, b"GET /a HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        t.send(I, b"\x16\x03\x01 binary junk");
        t.send(I, b"more junk");
        t.send(I, b"GET /b HTTP/1.1\r\nBad Header Line\r\n\r\n");
        t.send(I, b"GET /c HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/a", "/c"]);
        let s = t.stats();
        assert_eq!((s.malformed, s.resyncs), (2, 2));
    }

    #[test]
    fn gap_in_response_direction_discards_pending() {
        let mut t = T::new();
        t.send(I, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        t.send(
            E,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        );
        t.c.gap(E);
        // The rest of /a's body, then /b's response: must not pair with anything.
        t.send(E, &[b'9'; 90]);
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbbb");
        t.send(I, b"GET /c HTTP/1.1\r\n\r\n");
        t.send(
            E,
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 7\r\n\r\nccccccc",
        );
        let ex = t.take();
        assert_eq!(targets(&ex), ["/c"]);
        assert_eq!((resp(&ex[0]).status, resp(&ex[0]).body_len), (202, 7));
        let s = t.stats();
        assert_eq!((s.lost_exchanges, s.orphan_responses), (2, 1));
    }

    #[test]
    fn gap_in_request_direction() {
        let mut t = T::new();
        t.send(I, b"GET /a HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234");
        t.send(I, b"GET /b HTTP/1.1\r\n\r\n");
        t.c.gap(I);
        // /a's response keeps exact framing: its bytes were not lost.
        t.send(E, b"56789");
        // /b was discarded: its response is an orphan, not mis-paired.
        t.send(E, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        t.send(I, b"GET /c HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/a", "/c"]);
        assert_eq!(resp(&ex[0]).body_len, 10);
        assert_eq!(resp(&ex[1]).body_len, 1);
        let s = t.stats();
        assert_eq!((s.lost_exchanges, s.orphan_responses), (1, 1));
    }

    #[test]
    fn response_older_than_request_is_orphan() {
        // Events of the two directions arrive out of order: a stale response (read
        // before /b was written) must not be paired with /b.
        let mut t = T::new();
        let mut out = Vec::new();
        let ch = |dir, data: &'static [u8], ts| Chunk {
            tid: 0,
            dir,
            len: data.len() as u64,
            data,
            layout: Layout::Prefix,
            ts_start: ts,
            ts_end: ts + 1,
        };
        t.c.feed(ch(E, b"GET /b HTTP/1.1\r\n\r\n", 100), &mut out);
        t.c.feed(
            ch(I, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 50),
            &mut out,
        );
        t.c.feed(
            ch(I, b"HTTP/1.1 201 OK\r\nContent-Length: 1\r\n\r\nb", 150),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].request.target.as_str(), resp(&out[0]).status),
            ("/b", 201)
        );
        assert_eq!(t.stats().orphan_responses, 1);
    }

    #[test]
    fn decoder_created_mid_body() {
        let mut t = T::new();
        t.part(E, b"middle of some response body", 70000);
        t.send(E, b"tail\r\n\r\n");
        t.part(I, b"\x00\x01 rest of an upload", 5000);
        t.send(I, b"GET /fresh HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/fresh"]);
        assert_eq!((ex[0].role, resp(&ex[0]).body_len), (Role::Server, 2));
        assert_eq!(t.stats().orphan_responses, 0);
    }

    #[test]
    fn orphan_response_first_sets_role() {
        let mut t = T::new();
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        t.send(I, b"GET /x HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/x"]);
        assert_eq!(ex[0].role, Role::Server);
        assert_eq!(t.stats().orphan_responses, 1);
    }

    #[test]
    fn close_outcomes() {
        let mut t = T::new();
        t.send(
            I,
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
        );
        let (_, pe) = t.send(
            E,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        );
        t.close();
        let ex = t.take();
        assert_eq!(targets(&ex), ["/a", "/b", "/c"]);
        assert_eq!(ex[0].outcome, Outcome::ClosedMidResponse);
        assert_eq!((resp(&ex[0]).body_len, resp(&ex[0]).ts_end), (10, pe));
        assert!(
            ex[1..]
                .iter()
                .all(|x| x.outcome == Outcome::ClosedBeforeResponse && x.response.is_none())
        );

        // Close inside the response header block.
        let mut t = T::new();
        t.send(I, b"GET /p HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Le");
        t.close();
        let ex = t.take();
        assert_eq!(ex[0].outcome, Outcome::ClosedMidResponse);
        let p = resp(&ex[0]);
        assert_eq!(
            (p.status, p.headers_truncated, p.headers.len()),
            (503, true, 1)
        );
    }

    #[test]
    fn binary_body_containing_http_text() {
        let mut body = vec![0u8, 1, 2, 0xff];
        body.extend_from_slice(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let tail: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let n = body.len() + tail.len();
        for role_dirs in [(I, E), (E, I)] {
            let (rq, rs) = role_dirs;
            let mut t = T::new();
            t.send(
                rq,
                format!("POST /u HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").as_bytes(),
            );
            t.send(rq, &body);
            t.send(rq, tail); // a body chunk that begins like a response
            t.send(
                rs,
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", tail.len()).as_bytes(),
            );
            t.send(rs, tail); // a response body chunk that begins like a response
            let ex = t.take();
            assert_eq!(ex.len(), 1);
            assert_eq!(
                (ex[0].request.body_len, resp(&ex[0]).body_len),
                (n as u64, tail.len() as u64)
            );
            let s = t.stats();
            assert_eq!((s.orphan_responses, s.malformed), (0, 0));
        }
    }

    #[test]
    fn pending_queue_is_capped() {
        let mut t = T::new();
        let mut reqs = Vec::new();
        for i in 0..70 {
            reqs.extend_from_slice(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
        }
        t.send(I, &reqs);
        t.close();
        let ex = t.take();
        assert_eq!(ex.len(), 64);
        assert_eq!(ex[0].request.target, "/6");
        assert_eq!(t.stats().lost_exchanges, 6);
    }

    #[test]
    fn bare_lf_and_leading_crlf() {
        let mut t = T::new();
        t.send(I, b"GET /lf HTTP/1.1\nHost: a\n\n");
        t.send(E, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok");
        // Some clients send a stray CRLF after a body.
        t.send(I, b"\r\nGET /crlf HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
        let ex = t.take();
        assert_eq!(targets(&ex), ["/lf", "/crlf"]);
        assert_eq!(ex[0].request.headers.len(), 1);
        assert_eq!(t.stats(), Stats::default());
    }

    #[test]
    fn bad_content_length_loses_framing() {
        let mut t = T::new();
        t.send(I, b"GET /a HTTP/1.1\r\n\r\n");
        t.send(
            E,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        );
        t.send(I, b"GET /b HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
        let ex = t.take();
        let o: Vec<_> = ex.iter().map(|x| x.outcome).collect();
        assert_eq!(o, [Outcome::FramingLost, Outcome::Complete]);
    }

    #[test]
    fn pending_overflow_keeps_pairing_aligned() {
        let mut t = T::new();
        let mut reqs = Vec::new();
        let mut rsps = Vec::new();
        for i in 0..70 {
            reqs.extend_from_slice(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
            let body = "b".repeat(i);
            rsps.extend_from_slice(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {i}\r\n\r\n{body}").as_bytes(),
            );
        }
        t.send(I, &reqs);
        t.send(E, &rsps);
        let ex = t.take();
        assert_eq!(ex.len(), 64);
        for x in &ex {
            assert_eq!(x.request.target, format!("/{}", resp(x).body_len));
        }
        let s = t.stats();
        assert_eq!((s.lost_exchanges, s.orphan_responses), (6, 6));
    }

    #[test]
    fn uncaptured_pipelined_request_does_not_shift_pairing() {
        let mut t = T::new();
        let r1 = b"GET /1 HTTP/1.1\r\n\r\n";
        let mut w = r1.to_vec();
        w.extend_from_slice(b"GET /2 HTTP/1.1\r\nHost: some.host\r\n\r\n");
        t.part(I, &w[..r1.len()], w.len() as u64);
        t.send(I, b"GET /3 HTTP/1.1\r\n\r\n");
        t.send(
            E,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb",
        );
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nccc");
        let ex = t.take();
        let got: Vec<_> = ex
            .iter()
            .map(|x| (x.request.target.as_str(), resp(x).body_len))
            .collect();
        assert_eq!(got, [("/1", 1), ("/3", 3)]);
        let s = t.stats();
        assert_eq!((s.lost_exchanges, s.orphan_responses), (1, 1));
    }

    #[test]
    fn uncaptured_response_start_drops_its_request() {
        let mut t = T::new();
        t.send(E, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        let r1 = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
        let mut w = r1.to_vec();
        w.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nbb");
        t.part(I, &w[..r1.len()], w.len() as u64);
        t.send(E, b"GET /3 HTTP/1.1\r\n\r\n");
        t.send(I, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nccc");
        let ex = t.take();
        let got: Vec<_> = ex
            .iter()
            .map(|x| (x.request.target.as_str(), resp(x).body_len))
            .collect();
        assert_eq!(got, [("/1", 1), ("/3", 3)]);
        assert_eq!(t.stats().lost_exchanges, 1);
    }

    #[test]
    fn uncaptured_stray_crlf_is_not_a_message() {
        let mut t = T::new();
        let w = b"POST /p HTTP/1.1\r\nContent-Length: 2\r\n\r\nab\r\n";
        t.part(I, &w[..w.len() - 2], w.len() as u64);
        t.send(I, b"GET /q HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(targets(&t.take()), ["/p", "/q"]);
        assert_eq!(t.stats(), Stats::default());
    }

    #[test]
    fn close_inside_request_head() {
        let mut t = T::new();
        t.send(E, b"GET /a HTTP/1.1\r\n\r\n");
        t.send(E, b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Le");
        t.close();
        let ex = t.take();
        assert_eq!(targets(&ex), ["/a", "/b"]);
        assert!(
            ex.iter()
                .all(|x| x.outcome == Outcome::ClosedBeforeResponse)
        );
        assert!(ex[1].request.headers_truncated);
        assert_eq!(ex[1].request.headers.len(), 1);
    }

    #[test]
    fn gap_inside_request_head() {
        let mut t = T::new();
        t.send(I, b"GET /a HTTP/1.1\r\nHost: x\r\n");
        t.c.gap(I);
        t.send(I, b"Accept: */*\r\n\r\n");
        t.send(I, b"GET /b HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(targets(&t.take()), ["/b"]);
        let s = t.stats();
        assert_eq!((s.malformed, s.lost_exchanges, s.resyncs), (0, 0, 1));
    }

    // ---- property and fuzz tests ----

    fn gen_body(rng: &mut Rng, max: u64, fake: bool) -> Vec<u8> {
        let n = rng.below(max) as usize;
        let mut b = rng.bytes(n);
        // Protocol-looking text inside bodies must never be parsed.
        if fake && rng.below(3) == 0 {
            let at = rng.below(b.len() as u64 + 1) as usize;
            let fake: &[u8] = if rng.below(2) == 0 {
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"GET /evil HTTP/1.1\r\n\r\n"
            };
            b.splice(at..at, fake.iter().copied());
        }
        b
    }

    /// One random exchange: (request bytes, response bytes, expected request target,
    /// request body length, status, response body length).
    fn gen_exchange(
        rng: &mut Rng,
        i: usize,
        fake: bool,
    ) -> (Vec<u8>, Vec<u8>, (String, u64, u16, u64)) {
        let target = format!("/item/{i}?q={}", rng.below(1000));
        let method = ["GET", "HEAD", "POST", "PUT"][rng.below(4) as usize];
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n").into_bytes();
        let mut req_body = 0;
        let mut expect = false;
        match method {
            "POST" => {
                let b = gen_body(rng, 3000, fake);
                expect = rng.below(2) == 0;
                if expect {
                    req.extend_from_slice(b"Expect: 100-continue\r\n");
                }
                req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                req.extend_from_slice(&b);
                req_body = b.len() as u64;
            }
            "PUT" => {
                let b = gen_body(rng, 3000, fake);
                req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let ext = rng.below(2) == 0;
                let trailer = rng.below(2) == 0;
                req.extend_from_slice(&chunked_body(rng, &b, ext, trailer));
                req_body = b.len() as u64;
            }
            _ => req.extend_from_slice(b"\r\n"),
        }
        let status = [200u16, 201, 204, 304, 404, 500][rng.below(6) as usize];
        let mut rsp = Vec::new();
        if expect {
            rsp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        rsp.extend_from_slice(format!("HTTP/1.1 {status} Reason\r\nX-Id: {i}\r\n").as_bytes());
        let mut rsp_body = 0;
        if method == "HEAD" {
            rsp.extend_from_slice(b"Content-Length: 1234\r\n\r\n");
        } else if status == 204 || status == 304 {
            rsp.extend_from_slice(b"\r\n");
        } else {
            let b = gen_body(rng, 3000, fake);
            rsp_body = b.len() as u64;
            if rng.below(2) == 0 {
                rsp.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                rsp.extend_from_slice(&b);
            } else {
                rsp.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let ext = rng.below(2) == 0;
                rsp.extend_from_slice(&chunked_body(rng, &b, ext, false));
            }
        }
        (req, rsp, (target, req_body, status, rsp_body))
    }

    fn without_ts(mut x: Exchange) -> Exchange {
        x.request.ts_start = 0;
        x.request.ts_end = 0;
        if let Some(r) = x.response.as_mut() {
            r.ts_start = 0;
            r.ts_end = 0;
        }
        x
    }

    #[test]
    fn property_random_splits_match_whole_feed() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..300 {
            let n = rng.below(6) as usize + 1;
            let exs: Vec<_> = (0..n).map(|i| gen_exchange(&mut rng, i, true)).collect();
            let (rq, rs) = if rng.below(2) == 0 { (I, E) } else { (E, I) };
            let pipelined = rng.below(2) == 0;
            let mut segments: Vec<(Direction, Vec<u8>)> = Vec::new();
            if pipelined {
                segments.push((rq, exs.iter().flat_map(|e| e.0.clone()).collect()));
                segments.push((rs, exs.iter().flat_map(|e| e.1.clone()).collect()));
            } else {
                for e in &exs {
                    segments.push((rq, e.0.clone()));
                    segments.push((rs, e.1.clone()));
                }
            }
            let max = [1u64, 3, 17, 200, 5000][rng.below(5) as usize];
            let mut whole = T::new();
            let mut split = T::new();
            for (dir, bytes) in &segments {
                whole.send(*dir, bytes);
                feed_split(&mut split, *dir, bytes, &mut || rng.below(max) as usize + 1);
            }
            whole.close();
            split.close();
            let (a, b) = (whole.take(), split.take());
            let got: Vec<_> = b
                .iter()
                .map(|x| {
                    let r = resp(x);
                    (
                        x.request.target.clone(),
                        x.request.body_len,
                        r.status,
                        r.body_len,
                    )
                })
                .collect();
            let want: Vec<_> = exs.iter().map(|e| e.2.clone()).collect();
            assert_eq!(got, want, "round {round}");
            for x in &b {
                assert_eq!(x.outcome, Outcome::Complete);
                let r = resp(x);
                assert!(x.request.ts_start <= x.request.ts_end && r.ts_start <= r.ts_end);
                assert!(x.request.ts_start <= r.ts_start);
            }
            let a: Vec<_> = a.into_iter().map(without_ts).collect();
            let b: Vec<_> = b.into_iter().map(without_ts).collect();
            assert_eq!(a, b, "round {round}");
            assert_eq!(split.stats(), Stats::default(), "round {round}");
        }
    }

    #[test]
    fn property_partial_capture_and_gaps_never_mispair() {
        let mut rng = Rng(0x0bad_cafe_1234_5678);
        let (mut total, mut complete, mut gaps) = (0, 0, 0);
        for round in 0..400 {
            let n = rng.below(8) as usize + 1;
            let exs: Vec<_> = (0..n).map(|i| gen_exchange(&mut rng, i, false)).collect();
            let (rq, rs) = if rng.below(2) == 0 { (I, E) } else { (E, I) };
            let max = [8u64, 64, 700, 5000][rng.below(4) as usize];
            let mut t = T::new();
            for e in &exs {
                for (dir, bytes) in [(rq, &e.0), (rs, &e.1)] {
                    let mut p = 0;
                    while p < bytes.len() {
                        let k = (rng.below(max) as usize + 1).min(bytes.len() - p);
                        let chunk = &bytes[p..p + k];
                        p += k;
                        if rng.below(60) == 0 {
                            // A lost event: the chunk never arrives.
                            t.c.gap(dir);
                            gaps += 1;
                            continue;
                        }
                        // Captures are prefixes; keep at least a start line's worth.
                        let cap = match rng.below(4) {
                            0 => k.min(64 + rng.below(k as u64) as usize),
                            _ => k,
                        };
                        t.part(dir, &chunk[..cap], k as u64);
                    }
                }
            }
            t.close();
            for x in t.take() {
                total += 1;
                complete += usize::from(x.outcome == Outcome::Complete);
                let id = x.request.target.trim_start_matches("/item/");
                let id = id.split('?').next().unwrap_or_default();
                let rid = x.response.as_ref().and_then(|r| {
                    r.headers
                        .iter()
                        .find(|(n, _)| n == "x-id")
                        .map(|(_, v)| v.as_str())
                });
                if let Some(rid) = rid {
                    assert_eq!(rid, id, "round {round}: mis-paired {x:?}");
                }
                // Nothing invented: the start lines are exactly what was sent.
                let want = id.parse::<usize>().ok().and_then(|i| exs.get(i));
                let want = want.unwrap_or_else(|| panic!("round {round}: bad target {x:?}"));
                assert!(
                    want.0
                        .starts_with(format!("{} ", x.request.method).as_bytes())
                );
                assert_eq!(x.request.target, want.2.0, "round {round}");
                if let (Some(r), Some(_)) = (&x.response, rid) {
                    assert_eq!(r.status, want.2.2, "round {round}");
                }
            }
        }
        assert!(
            gaps > 50 && complete * 2 > total,
            "{complete}/{total}, {gaps} gaps"
        );
    }

    #[test]
    fn fuzz_random_chunks_never_panic() {
        fuzz(0xdead_beef_cafe_f00d);
    }

    fn fuzz(seed: u64) {
        let frags: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"HEAD /h HTTP/1.0\r\n",
            b"CONNECT a:1 HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 101 Switching\r\n\r\n",
            b"HTTP/1.0 204 No\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: 99999999999999999999999\r\n",
            b"Content-Length: 18446744073709551615\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"\n",
            b"5\r\nhello\r\n",
            b"ffffffffffffffffff\r\n",
            b"1000000000000000\r\n",
            b"0\r\n\r\n",
            b"3;x\r\nabc\r\n",
            b"Name: value\r\n",
        ];
        let mut rng = Rng(seed);
        let mut c = Http1Conn::new();
        let mut out = Vec::new();
        let mut ts = 0u64;
        for i in 0..10_000 {
            let mut data = Vec::new();
            // Mostly well-formed traffic, sliced and sometimes bit-flipped, so that the
            // decoder gets deep into its states; the rest is fragment soup.
            let mut dir = if rng.below(2) == 0 { I } else { E };
            if rng.below(3) != 0 {
                let (rq, rs, _) = gen_exchange(&mut rng, i, true);
                let is_req = rng.below(2) == 0;
                let v = if is_req { rq } else { rs };
                if rng.below(10) != 0 {
                    dir = if is_req { I } else { E };
                }
                let a = if rng.below(3) == 0 {
                    rng.below(v.len() as u64) as usize
                } else {
                    0
                };
                let b = a + rng.below((v.len() - a) as u64) as usize + 1;
                data.extend_from_slice(&v[a..b]);
                if rng.below(5) == 0 {
                    let k = rng.below(data.len() as u64) as usize;
                    data[k] ^= 1 << rng.below(8);
                }
            } else {
                for _ in 0..rng.below(5) + 1 {
                    if rng.below(3) == 0 {
                        let n = rng.below(64) as usize;
                        data.extend(rng.bytes(n));
                    } else {
                        data.extend_from_slice(frags[rng.below(frags.len() as u64) as usize]);
                    }
                }
            }
            let cut = match rng.below(4) {
                0 => rng.below(data.len() as u64 + 1) as usize,
                _ => data.len(),
            };
            let extra = match rng.below(8) {
                0 => rng.below(1 << 20),
                1 => rng.next() >> rng.below(64),
                2 => u64::MAX,
                _ => 0,
            };
            let len = match rng.below(20) {
                0 => 0,
                1 => (cut / 2) as u64, // contract violation: more data than len
                _ => (cut as u64).saturating_add(extra).max(1),
            };
            ts += rng.below(100);
            let chunk = Chunk {
                tid: 0,
                dir,
                len,
                data: &data[..cut],
                layout: Layout::Prefix,
                ts_start: ts,
                ts_end: ts + rng.below(10),
            };
            c.feed(chunk, &mut out);
            match rng.below(60) {
                0 => c.gap(if rng.below(2) == 0 { I } else { E }),
                1 => c.close(ts, &mut out),
                _ => {}
            }
            if c.upgraded() || rng.below(300) == 0 {
                c.close(ts, &mut out);
                c = Http1Conn::new();
            }
        }
        for x in &out {
            assert!(!x.request.method.is_empty() && !x.request.target.is_empty());
            if let Some(r) = &x.response {
                assert!((100..=599).contains(&r.status));
            }
        }
        // The input must reach every outcome, or the test is not exercising much.
        for o in [
            Outcome::Complete,
            Outcome::ClosedBeforeResponse,
            Outcome::ClosedMidResponse,
            Outcome::FramingLost,
        ] {
            assert!(out.iter().any(|x| x.outcome == o), "{o:?} never produced");
        }
    }
}

#[cfg(test)]
mod recovery_tests {
    use super::*;

    /// nginx answers keep-alive requests with a header writev and a sendfile body. When the
    /// body syscalls are missing for a while (a probe not attached yet, records lost without a
    /// sequence gap), the decoder must lose those exchanges and then recover for good.
    #[test]
    fn recovers_after_bodies_went_missing() {
        let req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18100\r\n\r\n";
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 612\r\nConnection: keep-alive\r\n\r\n";
        let mut c = Http1Conn::new();
        let mut out = Vec::new();
        let mut t = 0u64;
        let mut next =
            |dir, len: u64, data: &'static [u8], c: &mut Http1Conn, out: &mut Vec<Exchange>| {
                t += 10;
                c.feed(
                    Chunk {
                        tid: 0,
                        dir,
                        len,
                        data,
                        layout: Layout::Prefix,
                        ts_start: t,
                        ts_end: t + 1,
                    },
                    out,
                );
                t
            };
        for i in 0..300u64 {
            let start = next(Direction::Ingress, req.len() as u64, req, &mut c, &mut out);
            next(Direction::Egress, head.len() as u64, head, &mut c, &mut out);
            if i >= 233 {
                let end = next(Direction::Egress, 612, &[], &mut c, &mut out);
                if i >= 240 {
                    let last = out.last().expect("decoding resumed");
                    assert_eq!(
                        (
                            last.request.ts_start,
                            last.response.as_ref().unwrap().ts_end
                        ),
                        (start, end + 1),
                        "exchange {i} mispaired: {last:?}"
                    );
                }
            }
        }
        assert!(
            out.len() >= 55,
            "only {} exchanges after recovery; stats {:?}",
            out.len(),
            c.stats()
        );
    }
}
