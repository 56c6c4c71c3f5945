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
//! - Requests are queued when their header block ends; a response pairs with the oldest
//!   queued request (FIFO, so pipelining works) and the exchange is emitted when the
//!   response's last byte is consumed. A response that began before the head request did
//!   cannot be its answer (causality), so it is treated as an orphan instead of mis-paired.
//! - Memory is bounded: bodies are never stored, header blocks are capped at 64 KiB and at
//!   most 64 requests wait for an answer.
//!
//! `body_len` is the payload size: bytes after the header block for Content-Length and
//! until-close bodies, the sum of chunk sizes for chunked bodies. When framing is lost, the
//! raw bytes of the chunks attributed to the message are added instead (best effort).
//! `Stats::malformed` counts occurrences (not bytes) of non-HTTP data where HTTP was
//! expected; a never-synced direction counts its first non-HTTP chunk once.

use std::collections::VecDeque;

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
    pub headers: Vec<(String, String)>,
    /// Header block not fully captured (longer than capture or bytes missing).
    pub headers_truncated: bool,
    pub body_len: u64,
    pub ts_start: u64,
    pub ts_end: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub version: Version,
    pub headers: Vec<(String, String)>,
    pub headers_truncated: bool,
    pub body_len: u64,
    pub ts_start: u64,
    pub ts_end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Requests were read (Ingress).
    Server,
    /// Requests were written (Egress).
    Client,
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
const MAX_PENDING: usize = 64;
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

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
        Some(b' ') => code[4..].iter().all(|&b| is_field_byte(b)),
        Some(_) => false,
    }
}

fn header_ok(line: &[u8], complete: bool) -> bool {
    let n = line.iter().take_while(|&&b| is_tchar(b)).count();
    if n == line.len() {
        return !complete;
    }
    n > 0 && line[n] == b':' && line[n + 1..].iter().all(|&b| is_field_byte(b))
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

/// Resync test: does this chunk's captured data begin with a valid start line?
/// `whole` = the chunk was fully captured, so a start line cut at its end is just split.
fn begins_with_start_line(data: &[u8], whole: bool, k: Kinds) -> bool {
    let skip = data
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let rest = &data[skip..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(p) => start_kind(strip_cr(&rest[..p]), true, k).is_some(),
        None => whole && !rest.is_empty() && partial_ok(rest, |l, c| start_kind(l, c, k).is_some()),
    }
}

// ---------------------------------------------------------------------------------------
// Header block accumulation.

struct Head {
    buf: Vec<u8>,
    line_start: usize,
    /// Set once the start line is terminated and valid.
    kind: Option<Kind>,
    announced: bool,
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
    fn new(ts_start: u64, ts_end: u64) -> Self {
        Head {
            buf: Vec::new(),
            line_start: 0,
            kind: None,
            announced: false,
            ts_start,
            ts_first_end: ts_end,
            ts_end,
        }
    }

    fn full(&self) -> bool {
        self.buf.len() >= MAX_HEAD
    }

    fn push(&mut self, bytes: &[u8], kinds: Kinds) -> HeadRes {
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            let nl = rest.iter().position(|&b| b == b'\n');
            let take = nl.map_or(rest.len(), |p| p + 1);
            let room = MAX_HEAD.saturating_sub(self.buf.len());
            if take > room {
                self.buf.extend_from_slice(&rest[..room]);
                return HeadRes::Need(i + room);
            }
            self.buf.extend_from_slice(&rest[..take]);
            i += take;
            let line = &self.buf[self.line_start..];
            if nl.is_some() {
                let line = strip_cr(&line[..line.len() - 1]);
                match self.kind {
                    None => match start_kind(line, true, kinds) {
                        Some(k) => self.kind = Some(k),
                        None => return HeadRes::Bad,
                    },
                    Some(_) if line.is_empty() => return HeadRes::Done(i),
                    Some(_) if !header_ok(line, true) => return HeadRes::Bad,
                    Some(_) => {}
                }
                self.line_start = self.buf.len();
            } else {
                let whole = line.len() <= PREFIX_CHECK;
                let line = &line[..line.len().min(PREFIX_CHECK)];
                let ok = match (self.kind, whole) {
                    (None, true) => partial_ok(line, |l, c| start_kind(l, c, kinds).is_some()),
                    (None, false) => start_kind(line, false, kinds).is_some(),
                    (Some(_), true) => partial_ok(line, |l, c| l.is_empty() || header_ok(l, c)),
                    (Some(_), false) => header_ok(line, false),
                };
                if !ok {
                    return HeadRes::Bad;
                }
            }
        }
        HeadRes::Need(i)
    }
}

/// Start line and header fields of the terminated lines of a header block.
fn parse_head(buf: &[u8]) -> (&[u8], Vec<(String, String)>) {
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut lines = buf[..end].split(|&b| b == b'\n').map(strip_cr);
    let start = lines.next().unwrap_or(&[]);
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if let Some(c) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..c]).to_ascii_lowercase();
            let value = String::from_utf8_lossy(&line[c + 1..])
                .trim_matches([' ', '\t'])
                .to_string();
            headers.push((name, value));
        }
    }
    (start, headers)
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
fn body_framing(headers: &[(String, String)], request: bool) -> Result<Option<Framing>, ()> {
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

pub struct Http1Conn {
    role: Option<Role>,
    dirs: [Dir; 2],
    pending: VecDeque<PendingReq>,
    /// Request whose body (or lost-framing remainder) the request direction is consuming.
    cur_req: Option<u64>,
    /// Response being consumed by the response direction (already paired).
    cur_resp: Option<RespCtx>,
    next_id: u64,
    upgraded: bool,
    stats: Stats,
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
            dirs: [Dir::new(), Dir::new()],
            pending: VecDeque::new(),
            cur_req: None,
            cur_resp: None,
            next_id: 0,
            upgraded: false,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded
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
                        // A message starts in uncaptured bytes: cannot be decoded.
                        self.enter_resync(d);
                    } else {
                        self.dirs[d].phase = Phase::Head(Head::new(chunk.ts_start, chunk.ts_end));
                    }
                }
                Phase::Head(mut h) => {
                    let res = if pos < cap {
                        h.push(&data[pos as usize..], self.kinds(d))
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
                            pos += n as u64;
                            self.head_done(d, h, HeadEnd::Complete, out);
                        }
                        HeadRes::Need(n) => {
                            pos += n as u64;
                            if pos < len || h.full() {
                                // Blank line not captured: assume the block ends with this
                                // chunk; the body start is unknown, so resync afterwards.
                                pos = len;
                                self.head_done(d, h, HeadEnd::Truncated, out);
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
            } else if let Some(c) = self.cur_resp.take() {
                if c.req.is_some() {
                    self.stats.lost_exchanges += 1;
                }
            }
        }
        // Unanswered requests can no longer be paired safely.
        self.stats.lost_exchanges += self.pending.len() as u64;
        self.pending.clear();
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
                self.head_done(sd, h, HeadEnd::Closing, out);
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
                self.head_done(rd, h, HeadEnd::Closing, out);
            }
            while let Some(p) = self.pending.pop_front() {
                self.emit(Some(p), None, Outcome::ClosedBeforeResponse, out);
            }
        }
        self.pending.clear();
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

    fn enter_resync(&mut self, d: usize) {
        self.dirs[d].phase = Phase::Resync;
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
        if let Some(p) = self.pending.iter_mut().rev().find(|p| p.id == id) {
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
        } else if self.cur_resp.as_ref().is_some_and(|c| c.lost) {
            if let Some(c) = self.cur_resp.take() {
                self.emit(c.req, Some(c.resp), Outcome::FramingLost, out);
            }
        }
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
    fn head_done(&mut self, d: usize, h: Head, end: HeadEnd, out: &mut Vec<Exchange>) {
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
                    self.enter_resync(d);
                }
                return;
            }
        };
        let truncated = end != HeadEnd::Complete;
        if truncated {
            self.stats.truncated_headers += 1;
        }
        let (start, headers) = parse_head(&h.buf);
        let framing = if truncated {
            Err(())
        } else {
            body_framing(&headers, kind == Kind::Req)
        };
        match kind {
            Kind::Req => {
                let mut parts = start.splitn(3, |&b| b == b' ');
                let method = String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
                let target = String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string();
                let version = parse_version(parts.next().unwrap_or_default());
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                    self.stats.lost_exchanges += 1;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.pending.push_back(PendingReq {
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
                    },
                });
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
                let req = match self.pending.front() {
                    Some(p) if p.req.ts_start <= h.ts_first_end => self.pending.pop_front(),
                    _ => None,
                };
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
                };
                if status == 101 || (connect && (200..300).contains(&status)) {
                    self.upgraded = true;
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
