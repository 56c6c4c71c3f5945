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
//!
//! This file is the connection state machine ([`Http1Conn`]: pairing, resync, outcomes);
//! beside it `syntax` says what start and header lines may hold, `head` gathers a message's
//! head and `body` follows its framing.

use std::collections::VecDeque;

use super::headers::{self, UPGRADE};
pub use super::{Chunk, Direction, Header, Layout, Opened, RequestKey, Role};
use crate::context::TraceContext;
use body::{Framing, Step, body_framing};
use head::{Head, HeadRes, parse_version, text};
use syntax::{Kind, Kinds, begins_with_start_line, strip_cr};

mod body;
mod head;
mod syntax;

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

const MAX_PENDING: usize = 64;
/// Shortest possible start line + blank line ("HTTP/1.1 200\n\n").
const MIN_MESSAGE: u64 = 14;

/// Whether a 101 switched to h2c: the request asked for it, and the response (when its
/// Upgrade header was captured) names it.
fn upgrades_to_h2c(req: &[Header], resp: &[Header]) -> bool {
    let names_h2c = |headers: &[Header]| {
        headers
            .iter()
            .filter(|(k, _)| k == UPGRADE)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    };
    let resp_says = resp.iter().any(|(k, _)| k == UPGRADE);
    names_h2c(req) && (!resp_says || names_h2c(resp))
}

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
            keep: Some(headers::HTTP1),
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
                        written: None,
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
    use crate::decode::testkit::{H1, Rng, chunked_body, resp, targets};
    use Direction::{Egress as E, Ingress as I};

    #[test]
    fn simple_get_server() {
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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

    #[test]
    fn request_and_response_byte_by_byte() {
        let req = b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz";
        let rsp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\n\r\n";
        let mut t = H1::new();
        t.send_split(I, req, &mut || 1);
        t.send_split(E, rsp, &mut || 1);
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
    fn expect_100_continue() {
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
    fn gap_in_response_direction_discards_pending() {
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
    fn pending_queue_is_capped() {
        let mut t = H1::new();
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
    fn pending_overflow_keeps_pairing_aligned() {
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
        let w = b"POST /p HTTP/1.1\r\nContent-Length: 2\r\n\r\nab\r\n";
        t.part(I, &w[..w.len() - 2], w.len() as u64);
        t.send(I, b"GET /q HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(targets(&t.take()), ["/p", "/q"]);
        assert_eq!(t.stats(), Stats::default());
    }

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
            let mut whole = H1::new();
            let mut split = H1::new();
            for (dir, bytes) in &segments {
                whole.send(*dir, bytes);
                split.send_split(*dir, bytes, &mut || rng.below(max) as usize + 1);
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
            let mut t = H1::new();
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
