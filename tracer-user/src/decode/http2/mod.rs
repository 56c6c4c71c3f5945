//! HTTP/2 (h2c) stream decoder with HPACK and gRPC awareness.
//!
//! Input is the byte flow of one TCP connection as seen by syscall probes: each
//! chunk reports the real byte count (`len`) and the captured bytes (`data`): a
//! prefix, or what the probes' frame walk keeps (frame headers and header blocks,
//! DATA payloads left out: [`Layout::H2Frames`]). Frame boundaries are tracked
//! from the 9-byte frame headers, so uncaptured bytes are consumed without being
//! read. Header blocks that were not captured
//! are never guessed: the HPACK decoder of that direction becomes *untrusted*
//! and from then on only yields fields that do not depend on the dynamic table.
//!
//! This file is the connection state machine ([`H2Conn`]); beside it `hpack` decodes header
//! blocks, `frame` holds the frames being read, `fields` what a header block says and `grpc`
//! what gRPC adds.
//!
//! Design notes (why, briefly):
//! * Streams live in a `BTreeMap` keyed by stream id: client stream ids grow
//!   monotonically, so the first key is the oldest one when we must evict.
//! * A small ring of recently finished stream ids makes late frames (request
//!   trailers after the response ended, RST after END_STREAM) harmless and
//!   keeps `lost_streams` from counting one stream twice.

use std::collections::{BTreeMap, VecDeque};

use super::headers::{self, HOST};
pub use super::{Chunk, Direction, Header, Layout, Opened, RequestKey, Role};
use crate::context::TraceContext;
use fields::Fields;
use frame::{Block, Frame, MAX_BLOCK, looks_like_h2_frames};
use grpc::deadline_from_cancel;
use hpack::Hpack;
use tracer_common::h2::{
    FrameHeader, PREFACE, Rules, copied_len, flag,
    frame_type::{CONTINUATION, DATA, GOAWAY, HEADERS, PUSH_PROMISE, RST_STREAM, SETTINGS},
};

mod fields;
mod frame;
mod grpc;
pub(super) mod hpack;

impl Direction {
    fn idx(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }
    fn other(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }
}

const DIRS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub role: Role,
    pub stream_id: u32,
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub status: Option<u16>,
    /// Only kept headers ([`headers::HTTP2`]); never authorization/cookie.
    pub request_headers: Vec<Header>,
    pub grpc_status: Option<u32>,
    pub grpc_message: Option<String>,
    pub is_grpc: bool,
    pub request_body_len: u64,
    pub response_body_len: u64,
    pub ts_start: u64,
    pub ts_end: u64,
    /// RST_STREAM error code; `RST_CODE_UNKNOWN` if the payload was not captured.
    pub reset: Option<u32>,
    pub headers_incomplete: bool,
    pub closed_early: bool,
    /// The response's content-length, when it had one.
    pub response_content_length: Option<u64>,
    /// Framing of the response direction was lost while this stream was open: its response
    /// (or its end) may have gone by unseen, so `ts_end` is an estimate (when framing was lost)
    /// if the end was never seen, and an early close is not evidence of a failure.
    pub framing_lost: bool,
}

#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub frames: u64,
    pub malformed: u64,
    pub hpack_errors: u64,
    pub incomplete_headers: u64,
    pub lost_streams: u64,
    pub resyncs: u64,
}

/// Reported in `Stream::reset` when a RST_STREAM was seen but its error code
/// was in uncaptured bytes.
pub const RST_CODE_UNKNOWN: u32 = u32::MAX;

const MAX_OPEN_STREAMS: usize = 1024;

const CLOSED_RING: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Matching the client preface; the value is how many bytes matched.
    Preface(usize),
    Frames,
    /// Framing lost: skip chunks until one starts with a plausible frame.
    Resync,
}

#[derive(Debug)]
struct DirState {
    mode: Mode,
    hdr: [u8; 9],
    hdr_have: usize,
    hdr_ts: u64,
    frame: Option<Frame>,
    block: Option<Block>,
    hpack: Hpack,
    /// Connection seen from the start: the first frame must be SETTINGS.
    need_settings: bool,
}

impl DirState {
    fn new(from_start: bool) -> Self {
        DirState {
            mode: if from_start {
                Mode::Preface(0)
            } else {
                Mode::Resync
            },
            hdr: [0; 9],
            hdr_have: 0,
            hdr_ts: 0,
            frame: None,
            block: None,
            hpack: if from_start {
                Hpack::new()
            } else {
                Hpack::untrusted()
            },
            need_settings: from_start,
        }
    }
}

pub struct H2Conn {
    dirs: [DirState; 2],
    /// Direction carrying requests (preface / HEADERS with :method).
    req_dir: Option<Direction>,
    streams: BTreeMap<u32, Stream>,
    /// Recently finished or given-up stream ids.
    closed: VecDeque<u32>,
    /// The largest id ever put in `closed`.
    closed_max: u32,
    /// Streams completed inside `gap()`, which has no output vector.
    pending: Vec<Stream>,
    last_ts: u64,
    /// The thread of the chunk being decoded.
    tid: u32,
    /// Requests begun since [`H2Conn::take_opened`] last emptied it.
    opened: Vec<Opened>,
    stats: Stats,
}

impl Default for H2Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl H2Conn {
    /// Connection seen from its start (the client preface will come).
    pub fn new() -> Self {
        Self::build(true)
    }

    /// Attached to a running connection: HPACK dynamic tables unknown.
    pub fn mid_stream() -> Self {
        Self::build(false)
    }

    /// [`H2Conn::after_h2c_upgrade`], fed the rest of the chunk that carried the 101 (the
    /// server's SETTINGS and stream 1's response often share its write).
    pub fn upgraded_in(up: &super::http1::H2cUpgrade, c: Chunk<'_>, out: &mut Vec<Stream>) -> Self {
        let mut h2 = Self::after_h2c_upgrade(up);
        let off = up.offset.min(c.len);
        if off < c.len {
            let cut = usize::try_from(off).map_or(c.data.len(), |o| o.min(c.data.len()));
            let rest = Chunk {
                len: c.len - off,
                data: &c.data[cut..],
                ..c
            };
            h2.feed(rest, out);
        }
        h2
    }

    /// The connection switched from HTTP/1.1 (`Upgrade: h2c`, 101): both sides start HTTP/2
    /// now (client preface, SETTINGS first, fresh HPACK tables), and the upgrade request is
    /// stream 1, half-closed by the client; its response comes in HTTP/2 frames.
    pub fn after_h2c_upgrade(up: &super::http1::H2cUpgrade) -> Self {
        let mut c = Self::build(true);
        c.req_dir = Some(match up.role {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        });
        let r = &up.request;
        let host = r
            .headers
            .iter()
            .find(|(k, _)| k == HOST)
            .map(|(_, v)| v.clone());
        let mut kept = Fields::default();
        for (k, v) in &r.headers {
            if headers::HTTP2.contains(&&**k) {
                kept.add(k, v);
            }
        }
        c.streams.insert(
            1,
            Stream {
                role: up.role,
                stream_id: 1,
                method: Some(r.method.clone()),
                path: Some(r.target.clone()),
                authority: host,
                scheme: Some("http".into()),
                status: None,
                request_headers: kept.kept,
                grpc_status: None,
                grpc_message: None,
                is_grpc: kept.grpc,
                request_body_len: r.body_len,
                response_body_len: 0,
                ts_start: r.ts_start,
                ts_end: 0,
                reset: None,
                headers_incomplete: r.headers_truncated,
                closed_early: false,
                framing_lost: false,
                response_content_length: None,
            },
        );
        c
    }

    fn build(from_start: bool) -> Self {
        H2Conn {
            dirs: [DirState::new(from_start), DirState::new(from_start)],
            req_dir: None,
            streams: BTreeMap::new(),
            closed: VecDeque::new(),
            closed_max: 0,
            pending: Vec::new(),
            last_ts: 0,
            tid: 0,
            opened: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Moves the requests begun since the last call to `out`.
    pub fn take_opened(&mut self, out: &mut Vec<Opened>) {
        out.append(&mut self.opened);
    }

    /// Decodes one syscall's bytes. `pos` walks the syscall's bytes, `cpos` the captured ones:
    /// the same offsets in a prefix; with [`Layout::H2Frames`] the captured bytes leave out
    /// DATA payloads (all but [`copied_len`] of each frame).
    pub fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Stream>) {
        out.append(&mut self.pending);
        self.last_ts = self.last_ts.max(chunk.ts_end);
        self.tid = chunk.tid;
        let d = chunk.dir.idx();
        // Defensive: never trust captured bytes beyond the reported length.
        let keep = usize::try_from(chunk.len).map_or(chunk.data.len(), |l| l.min(chunk.data.len()));
        let data = &chunk.data[..keep];
        let cap = data.len() as u64;
        let total = chunk.len;
        let (frames, first, lost) = match chunk.layout {
            Layout::Prefix => (false, None, false),
            Layout::H2Frames { first, lost } => (true, first, lost),
        };
        let (mut pos, mut cpos) = (0u64, 0u64);
        if self.dirs[d].mode == Mode::Resync {
            if frames {
                // The probes know where a frame starts: pick the frames up there.
                let Some((at, at_captured)) = first.filter(|&(at, c)| at < total && c < data.len())
                else {
                    return;
                };
                self.relock(d, Mode::Frames);
                (pos, cpos) = (at, at_captured as u64);
            } else if !self.try_relock(d, data) {
                return;
            }
        }
        while pos < total {
            match self.dirs[d].mode {
                Mode::Resync => break,
                Mode::Preface(m) => {
                    let Some(&b) = (if cpos < cap {
                        data.get(cpos as usize)
                    } else {
                        None
                    }) else {
                        self.lose_framing(d, out);
                        break;
                    };
                    if PREFACE.get(m) == Some(&b) {
                        pos += 1;
                        cpos += 1;
                        if m + 1 == PREFACE.len() {
                            self.dirs[d].mode = Mode::Frames;
                            if self.req_dir.is_none() {
                                self.req_dir = Some(chunk.dir);
                            }
                        } else {
                            self.dirs[d].mode = Mode::Preface(m + 1);
                        }
                    } else if m == 0 {
                        // No preface in this direction: the server side.
                        self.dirs[d].mode = Mode::Frames;
                    } else {
                        self.stats.malformed += 1;
                        self.lose_framing(d, out);
                        break;
                    }
                }
                Mode::Frames => {
                    if self.dirs[d].frame.is_none() {
                        if cpos >= cap {
                            // The next frame header is in uncaptured bytes.
                            self.lose_framing(d, out);
                            break;
                        }
                        let st = &mut self.dirs[d];
                        if st.hdr_have == 0 {
                            st.hdr_ts = chunk.ts_start;
                        }
                        let p = cpos as usize;
                        let take = (9 - st.hdr_have)
                            .min(data.len() - p)
                            .min(usize::try_from(total - pos).unwrap_or(usize::MAX));
                        st.hdr[st.hdr_have..st.hdr_have + take].copy_from_slice(&data[p..p + take]);
                        st.hdr_have += take;
                        pos += take as u64;
                        cpos += take as u64;
                        if st.hdr_have == 9 {
                            st.hdr_have = 0;
                            self.start_frame(d, chunk.ts_end, out);
                        }
                    } else {
                        let st = &mut self.dirs[d];
                        let Some(f) = st.frame.as_mut() else { break };
                        let n = u64::from(f.len - f.done).min(total - pos);
                        // Of these bytes, the ones the capture holds.
                        let present = if frames {
                            u64::from(copied_len(f.ty, f.flags, f.len).saturating_sub(f.done))
                                .min(n)
                        } else {
                            n
                        };
                        if !f.gap {
                            if cpos < cap {
                                let end = (cpos + present).min(cap) as usize;
                                let slice = &data[cpos as usize..end];
                                let room = f.cap.saturating_sub(f.buf.len());
                                f.buf.extend_from_slice(&slice[..slice.len().min(room)]);
                            }
                            if cpos + present > cap {
                                f.gap = true;
                            }
                        }
                        // n <= f.len - f.done, so this fits in u32.
                        f.done += n as u32;
                        pos += n;
                        cpos += present;
                        if f.done == f.len
                            && let Some(f) = st.frame.take()
                        {
                            self.end_frame(d, f, chunk.ts_end, out);
                        }
                    }
                }
            }
        }
        if lost {
            // The probes could not follow the rest of this syscall as frames.
            self.lose_framing(d, out);
        }
    }

    /// Records were lost in `dir`: framing and HPACK state are gone.
    pub fn gap(&mut self, dir: Direction) {
        let mut tmp = Vec::new();
        self.lose_framing(dir.idx(), &mut tmp);
        self.pending.append(&mut tmp);
    }

    /// Connection closed: flush every open stream with `closed_early`.
    pub fn close(&mut self, ts: u64, out: &mut Vec<Stream>) {
        out.append(&mut self.pending);
        for d in 0..2 {
            self.salvage(d, ts, out);
        }
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            // A client may close once it has the content-length's worth of body, before the
            // END_STREAM that follows (curl does): that response was complete.
            let whole = self.streams.get(&id).and_then(|s| {
                (s.status.is_some() && s.response_content_length == Some(s.response_body_len))
                    .then_some(s.ts_end)
            });
            match whole {
                Some(end) => self.complete(id, end, None, false, out),
                None => self.complete(id, ts, None, true, out),
            }
        }
    }

    fn try_relock(&mut self, d: usize, data: &[u8]) -> bool {
        if data.len() >= 4 && PREFACE.starts_with(&data[..data.len().min(PREFACE.len())]) {
            // The h2 session really starts here: fresh HPACK state is exact.
            let st = &mut self.dirs[d];
            st.hpack = Hpack::new();
            st.need_settings = true;
            self.relock(d, Mode::Preface(0));
        } else if looks_like_h2_frames(data) {
            self.relock(d, Mode::Frames);
        } else {
            return false;
        }
        true
    }

    /// Decoding of direction `d` resumes in `mode` at a frame boundary: nothing half-read
    /// from before carries over.
    fn relock(&mut self, d: usize, mode: Mode) {
        let st = &mut self.dirs[d];
        st.mode = mode;
        st.hdr_have = 0;
        st.frame = None;
        st.block = None;
    }

    /// Decode what we have of a half-received header frame / block.
    fn salvage(&mut self, d: usize, ts: u64, out: &mut Vec<Stream>) {
        let st = &mut self.dirs[d];
        st.hdr_have = 0;
        if let Some(f) = st.frame.take()
            && matches!(f.ty, HEADERS | CONTINUATION | PUSH_PROMISE)
        {
            self.end_frame(d, f, ts, out);
        }
        if let Some(mut b) = self.dirs[d].block.take() {
            b.cut = true;
            self.finish_block(d, b, ts, out);
        }
    }

    fn lose_framing(&mut self, d: usize, out: &mut Vec<Stream>) {
        self.dirs[d].hpack.distrust();
        if self.dirs[d].mode == Mode::Resync {
            return;
        }
        let ts = self.last_ts;
        if self.req_dir != Some(DIRS[d]) {
            // Responses may end in the bytes we cannot follow.
            for s in self.streams.values_mut().filter(|s| !s.framing_lost) {
                s.framing_lost = true;
                s.ts_end = ts;
            }
        }
        self.salvage(d, ts, out);
        self.dirs[d].mode = Mode::Resync;
        self.dirs[d].hpack.distrust();
        self.stats.resyncs += 1;
    }

    fn start_frame(&mut self, d: usize, ts_end: u64, out: &mut Vec<Stream>) {
        let h = FrameHeader::parse(&self.dirs[d].hdr);
        self.stats.frames += 1;
        if !h.follows(Rules::IN_SYNC) {
            self.stats.malformed += 1;
            self.lose_framing(d, out);
            return;
        }
        if self.dirs[d].need_settings {
            if h.ty != SETTINGS || h.flags & flag::ACK != 0 {
                // Not HTTP/2 after all (or not from its start).
                self.stats.malformed += 1;
                self.lose_framing(d, out);
                return;
            }
            self.dirs[d].need_settings = false;
        }
        let pending_sid = self.dirs[d].block.as_ref().map(|b| b.sid);
        let mut cap = match h.ty {
            DATA => usize::from(h.flags & flag::PADDED != 0),
            HEADERS | CONTINUATION | PUSH_PROMISE => (h.len as usize).min(MAX_BLOCK + 512),
            SETTINGS => (h.len as usize).min(1024),
            RST_STREAM => 4,
            GOAWAY => 8,
            _ => 0,
        };
        match pending_sid {
            Some(sid) if !(h.ty == CONTINUATION && h.stream == sid) => {
                // 6.10: only CONTINUATION of the same stream may follow.
                self.stats.malformed += 1;
                if let Some(mut b) = self.dirs[d].block.take() {
                    b.cut = true;
                    self.finish_block(d, b, ts_end, out);
                }
            }
            None if h.ty == CONTINUATION => {
                // The start of this block was never seen.
                self.stats.malformed += 1;
                self.dirs[d].hpack.distrust();
                cap = 0;
            }
            _ => {}
        }
        if h.ty > CONTINUATION {
            self.stats.malformed += 1;
        }
        let f = Frame {
            ty: h.ty,
            flags: h.flags,
            sid: h.stream,
            len: h.len,
            done: 0,
            buf: Vec::with_capacity(cap.min(h.len as usize).min(16 * 1024)),
            cap,
            gap: false,
            ts_start: self.dirs[d].hdr_ts,
        };
        if h.len == 0 {
            self.end_frame(d, f, ts_end, out);
        } else {
            self.dirs[d].frame = Some(f);
        }
    }

    fn end_frame(&mut self, d: usize, f: Frame, ts_end: u64, out: &mut Vec<Stream>) {
        let dir = DIRS[d];
        match f.ty {
            DATA => self.on_data(dir, &f, ts_end, out),
            HEADERS | PUSH_PROMISE => {
                let len = f.len as usize;
                let mut off = 0usize;
                let mut end = len;
                let mut bad = false;
                if f.flags & flag::PADDED != 0 {
                    off = 1;
                    // Pad length unknown when not captured: `buf` is empty then.
                    if let Some(&p) = f.buf.first() {
                        match len.checked_sub(usize::from(p)) {
                            Some(e) => end = e,
                            None => bad = true,
                        }
                    }
                }
                if f.ty == HEADERS && f.flags & flag::PRIORITY != 0 {
                    off += 5;
                }
                if f.ty == PUSH_PROMISE {
                    off += 4;
                }
                if off > end {
                    bad = true;
                }
                if bad {
                    self.stats.malformed += 1;
                }
                let lo = off.min(f.buf.len());
                let hi = end.min(f.buf.len()).max(lo);
                let cut = bad || f.buf.len() < end;
                // The frame's buffer becomes the block's (no copy).
                let mut frag = f.buf;
                frag.truncate(if bad { 0 } else { hi });
                frag.drain(..lo.min(frag.len()));
                let over = frag.len() > MAX_BLOCK;
                frag.truncate(MAX_BLOCK);
                let block = Block {
                    sid: f.sid,
                    end_stream: f.ty == HEADERS && f.flags & flag::END_STREAM != 0,
                    push: f.ty == PUSH_PROMISE,
                    buf: frag,
                    cut: cut || over,
                    ts_start: f.ts_start,
                };
                if f.flags & flag::END_HEADERS != 0 {
                    self.finish_block(d, block, ts_end, out);
                } else {
                    self.dirs[d].block = Some(block);
                }
            }
            CONTINUATION => {
                if let Some(mut b) = self.dirs[d].block.take() {
                    b.append(&f.buf, f.buf.len() < f.len as usize);
                    if f.flags & flag::END_HEADERS != 0 {
                        self.finish_block(d, b, ts_end, out);
                    } else {
                        self.dirs[d].block = Some(b);
                    }
                }
            }
            RST_STREAM => {
                let code = match f.buf.get(..4) {
                    Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    None => RST_CODE_UNKNOWN,
                };
                if let Some(s) = self.streams.get_mut(&f.sid) {
                    if s.status.is_some() && s.response_content_length == Some(s.response_body_len)
                    {
                        // The whole response (its content-length's worth) had come: a client
                        // resetting before the END_STREAM that follows (curl may) lost nothing.
                        let end = s.ts_end;
                        self.complete(f.sid, end, None, false, out);
                    } else {
                        deadline_from_cancel(s, code, ts_end);
                        self.complete(f.sid, ts_end, Some(code), false, out);
                    }
                } else {
                    self.note_lost(f.sid);
                }
            }
            SETTINGS if f.flags & flag::ACK == 0 => {
                // Our direction's SETTINGS bound the *peer's* encoder.
                let peer = &mut self.dirs[1 - d].hpack;
                for p in f.buf.chunks_exact(6) {
                    if p[0] == 0 && p[1] == 1 {
                        let v = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                        peer.raise_bound(v as usize);
                    }
                }
                if f.buf.len() < f.len as usize {
                    // Values not captured: accept any table size update.
                    peer.raise_bound(usize::MAX);
                }
            }
            GOAWAY => {
                // Only the server's GOAWAY talks about client-initiated streams.
                if self.req_dir == Some(dir.other())
                    && let Some(b) = f.buf.get(..4)
                {
                    let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
                    let ids: Vec<u32> = self
                        .streams
                        .range(last.saturating_add(1)..)
                        .map(|(k, _)| *k)
                        .collect();
                    if last < u32::MAX {
                        for id in ids {
                            self.complete(id, ts_end, None, true, out);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_data(&mut self, dir: Direction, f: &Frame, ts_end: u64, out: &mut Vec<Stream>) {
        let mut body = u64::from(f.len);
        if f.flags & flag::PADDED != 0 {
            let pad = f.buf.first().map_or(0, |&p| u64::from(p));
            body = body.saturating_sub(1 + pad);
        }
        let end = f.flags & flag::END_STREAM != 0;
        let Some(req) = self.req_dir else {
            if end {
                self.note_lost(f.sid);
            }
            return;
        };
        if let Some(s) = self.streams.get_mut(&f.sid) {
            if dir == req {
                s.request_body_len = s.request_body_len.saturating_add(body);
            } else {
                s.response_body_len = s.response_body_len.saturating_add(body);
                if !s.framing_lost {
                    s.ts_end = ts_end; // the latest response byte so far
                }
                if end {
                    self.complete(f.sid, ts_end, None, false, out);
                }
            }
        } else if end {
            self.note_lost(f.sid);
        }
    }

    fn finish_block(&mut self, d: usize, b: Block, ts_end: u64, out: &mut Vec<Stream>) {
        let dir = DIRS[d];
        let mut fields = Fields::default();
        let res = self.dirs[d]
            .hpack
            .decode_block(&b.buf, b.cut, &mut |n, v| fields.add(n, v));
        if res.error {
            self.stats.hpack_errors += 1;
        }
        let incomplete = res.skipped || res.error || fields.overflow;
        if incomplete {
            self.stats.incomplete_headers += 1;
        }
        if b.push {
            return; // decoded only to keep the HPACK state in sync
        }
        let is_req = match self.req_dir {
            Some(r) => r == dir,
            None if fields.method.is_some() && !b.sid.is_multiple_of(2) => {
                self.req_dir = Some(dir);
                true
            }
            None if fields.status.is_some() => {
                self.req_dir = Some(dir.other());
                false
            }
            None => return, // cannot attribute; the stream will count as lost
        };
        if is_req {
            if self.streams.contains_key(&b.sid) || self.recently_closed(b.sid) {
                return; // request trailers, or a late block of a finished stream
            }
            if self.streams.len() >= MAX_OPEN_STREAMS
                && let Some((old, _)) = self.streams.pop_first()
            {
                self.stats.lost_streams += 1;
                self.remember(old);
            }
            let role = if self.req_dir == Some(Direction::Ingress) {
                Role::Server
            } else {
                Role::Client
            };
            self.opened.push(Opened {
                role,
                key: RequestKey::Http2(b.sid),
                tid: self.tid,
                ts: b.ts_start,
                context: TraceContext::from_headers(&fields.kept),
                written: None,
            });
            let s = Stream {
                role,
                stream_id: b.sid,
                method: fields.method,
                path: fields.path,
                authority: fields.authority,
                scheme: fields.scheme,
                status: None,
                request_headers: fields.kept,
                grpc_status: None,
                grpc_message: None,
                is_grpc: fields.grpc,
                request_body_len: 0,
                response_body_len: 0,
                ts_start: b.ts_start,
                ts_end: 0,
                reset: None,
                headers_incomplete: incomplete,
                closed_early: false,
                framing_lost: false,
                response_content_length: None,
            };
            self.streams.insert(b.sid, s);
        } else if let Some(s) = self.streams.get_mut(&b.sid) {
            if let Some(st) = fields.status
                && s.status.is_none_or(|old| old < 200)
            {
                s.status = Some(st); // a final status replaces 1xx
            }
            s.is_grpc |= fields.grpc;
            s.headers_incomplete |= incomplete;
            if fields.status.is_some_and(|st| st >= 200) {
                s.response_content_length = fields.content_length;
            }
            if b.end_stream {
                if fields.grpc_status.is_some() {
                    s.grpc_status = fields.grpc_status;
                }
                if fields.grpc_message.is_some() {
                    s.grpc_message = fields.grpc_message;
                }
                self.complete(b.sid, ts_end, None, false, out);
            }
        } else if b.end_stream {
            self.note_lost(b.sid);
        }
    }

    fn remember(&mut self, sid: u32) {
        self.closed_max = self.closed_max.max(sid);
        self.closed.push_back(sid);
        if self.closed.len() > CLOSED_RING {
            self.closed.pop_front();
        }
    }

    /// Whether `sid` finished recently. Client stream ids only grow, so a new stream's id is
    /// above all of them: no scan of the ring for it.
    fn recently_closed(&self, sid: u32) -> bool {
        sid <= self.closed_max && self.closed.contains(&sid)
    }

    /// A client stream ended whose request HEADERS we never saw.
    fn note_lost(&mut self, sid: u32) {
        if sid.is_multiple_of(2) || self.recently_closed(sid) {
            return; // server push (even) or already accounted for
        }
        self.stats.lost_streams += 1;
        self.remember(sid);
    }

    fn complete(
        &mut self,
        sid: u32,
        ts_end: u64,
        reset: Option<u32>,
        early: bool,
        out: &mut Vec<Stream>,
    ) {
        if let Some(mut s) = self.streams.remove(&sid) {
            if !(early && s.framing_lost) {
                s.ts_end = ts_end;
            }
            if reset.is_some() {
                s.reset = reset;
            }
            s.closed_early = early;
            self.remember(sid);
            out.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testkit::*;
    use Direction::{Egress, Ingress};
    use tracer_common::h2::frame_type::{PING, PRIORITY};

    fn basic_get() -> Vec<Ev> {
        vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (Egress, get_req(1, "/hello")),
            (
                Ingress,
                [headers(1, false, &resp_200()), data(1, true, 12)].concat(),
            ),
        ]
    }

    #[test]
    fn get_200() {
        let mut c = H2Conn::new();
        let out = run(&mut c, &basic_get());
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.role, Role::Client);
        assert_eq!(s.stream_id, 1);
        assert_eq!(s.method.as_deref(), Some("GET"));
        assert_eq!(s.path.as_deref(), Some("/hello"));
        assert_eq!(s.authority.as_deref(), Some("example.com"));
        assert_eq!(s.scheme.as_deref(), Some("http"));
        assert_eq!(s.status, Some(200));
        assert_eq!(s.request_headers, kept(&[("user-agent", "test/1.0")])); // no authorization/cookie
        assert_eq!(s.response_body_len, 12);
        assert_eq!(s.request_body_len, 0);
        assert_eq!((s.ts_start, s.ts_end), (20, 35));
        assert!(!s.headers_incomplete && !s.closed_early && !s.is_grpc && s.reset.is_none());
        assert_eq!(c.stats().frames, 6);
        assert_eq!(
            c.stats().malformed + c.stats().hpack_errors + c.stats().resyncs,
            0
        );
    }

    #[test]
    fn server_role_and_dynamic_table_reuse() {
        // Seen from the server: the preface is read (Ingress). The second
        // request references the dynamic table entries of the first.
        let mut c = H2Conn::new();
        let second = headers(
            3,
            true,
            &block(
                &[H::Idx(2), H::Idx(6), H::Idx(64), H::Idx(63), H::Idx(62)],
                false,
            ),
        );
        let evs = vec![
            (Ingress, [client_preface(), get_req(1, "/a")].concat()),
            (
                Egress,
                [server_preface(), headers(1, true, &resp_200())].concat(),
            ),
            (Ingress, second),
            (Egress, headers(3, true, &block(&[H::Idx(13)], false))),
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|s| s.role == Role::Server));
        assert_eq!(out[1].path.as_deref(), Some("/a"));
        assert_eq!(out[1].authority.as_deref(), Some("example.com"));
        assert_eq!(out[1].request_headers, kept(&[("user-agent", "test/1.0")]));
        assert_eq!(out[1].status, Some(404));
        assert!(!out[1].headers_incomplete);
    }

    #[test]
    fn post_with_body() {
        let mut c = H2Conn::new();
        let req = headers(
            1,
            false,
            &block(
                &[
                    H::Idx(3),
                    H::Idx(7),
                    H::IncN(4, "/upload"),
                    H::IncN(31, "application/json"),
                ],
                true,
            ),
        );
        let evs = vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (
                Egress,
                [req, data(1, false, 100), data(1, true, 50)].concat(),
            ),
            (
                Ingress,
                [
                    headers(1, false, &block(&[H::Idx(9)], false)),
                    data(1, true, 0),
                ]
                .concat(),
            ),
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.method.as_deref(), Some("POST"));
        assert_eq!(s.scheme.as_deref(), Some("https"));
        assert_eq!(s.request_body_len, 150);
        assert_eq!(s.response_body_len, 0);
        assert_eq!(s.status, Some(204));
        assert_eq!(
            s.request_headers,
            kept(&[("content-type", "application/json")])
        );
    }

    fn interleaved(n: u32) -> Vec<Ev> {
        let mut reqs = client_preface();
        for i in 0..n {
            let sid = 2 * i + 1;
            reqs.extend(get_req(sid, &format!("/item/{i}")));
        }
        let mut resp = server_preface();
        for i in (0..n).rev() {
            resp.extend(headers(2 * i + 1, false, &resp_200()));
        }
        for i in 0..n {
            resp.extend(data(2 * i + 1, false, i as usize));
        }
        for i in 0..n {
            resp.extend(data(2 * i + 1, true, 1));
        }
        vec![(Egress, reqs), (Ingress, resp)]
    }

    fn check_interleaved(out: &[Stream], n: u32) {
        assert_eq!(out.len(), n as usize);
        for s in out {
            let i = (s.stream_id - 1) / 2;
            assert_eq!(s.path.as_deref(), Some(format!("/item/{i}").as_str()));
            assert_eq!(s.status, Some(200));
            assert_eq!(s.response_body_len, u64::from(i) + 1);
            assert!(!s.headers_incomplete);
        }
    }

    #[test]
    fn hundred_interleaved_streams_one_chunk() {
        let mut c = H2Conn::new();
        let out = run(&mut c, &interleaved(100));
        check_interleaved(&out, 100);
        assert_eq!(c.stats().hpack_errors, 0);
    }

    #[test]
    fn hundred_interleaved_streams_byte_by_byte() {
        let mut c = H2Conn::new();
        let mut out = Vec::new();
        for (d, b) in interleaved(100) {
            for (i, byte) in b.iter().enumerate() {
                c.feed(chunk(d, std::slice::from_ref(byte), i as u64), &mut out);
            }
        }
        check_interleaved(&out, 100);
    }

    #[test]
    fn continuation_frames() {
        let blk = block(
            &[
                H::Idx(2),
                H::Idx(6),
                H::IncN(4, "/continued/path"),
                H::IncN(1, "host.example"),
                H::Inc("traceparent", "00-abc-def-01"),
            ],
            true,
        );
        let (a, rest) = blk.split_at(3);
        let (b, c2) = rest.split_at(7);
        let req = [
            frame(HEADERS, flag::END_STREAM, 1, a),
            frame(CONTINUATION, 0, 1, b),
            frame(CONTINUATION, flag::END_HEADERS, 1, c2),
        ]
        .concat();
        let mut c = H2Conn::new();
        let evs = vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (Egress, req),
            (Ingress, headers(1, true, &resp_200())),
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path.as_deref(), Some("/continued/path"));
        assert_eq!(
            out[0].request_headers,
            kept(&[("traceparent", "00-abc-def-01")])
        );
        assert_eq!(c.stats().malformed, 0);
    }

    #[test]
    fn padded_and_priority_headers_and_data() {
        let blk = block(&[H::Idx(3), H::Idx(6), H::IncN(4, "/padded")], false);
        let mut p = vec![5u8]; // pad length
        p.extend([0x80, 0, 0, 3, 200]); // priority: exclusive, dep 3, weight
        p.extend(&blk);
        p.extend([0u8; 5]);
        let req = frame(
            HEADERS,
            flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
            1,
            &p,
        );
        let mut dp = vec![3u8];
        dp.extend([b'y'; 10]);
        dp.extend([0u8; 3]);
        let body = frame(DATA, flag::END_STREAM | flag::PADDED, 1, &dp);
        let mut c = H2Conn::new();
        let evs = vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (Egress, [req, body].concat()),
            (
                Ingress,
                [
                    frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
                    headers(1, true, &resp_200()),
                ]
                .concat(),
            ),
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path.as_deref(), Some("/padded"));
        assert_eq!(out[0].request_body_len, 10);
        assert!(!out[0].headers_incomplete);
    }

    #[test]
    fn rst_stream_sets_reset() {
        let mut c = H2Conn::new();
        let evs = vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (Egress, get_req(1, "/slow")),
            (Ingress, headers(1, false, &resp_200())),
            (Egress, rst(1, 8)), // CANCEL
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reset, Some(8));
        assert_eq!(out[0].status, Some(200));
        assert_eq!(out[0].ts_end, 45);
        // A late RST / DATA for the finished stream changes nothing.
        let more = run(&mut c, &[(Ingress, [rst(1, 5), data(1, true, 3)].concat())]);
        assert!(more.is_empty());
        assert_eq!(c.stats().lost_streams, 0);
    }

    #[test]
    fn mid_stream_dynamic_table_unknown() {
        // Full conversation; we attach after stream 1's request.
        let mut full = basic_get();
        let second = headers(
            3,
            true,
            &block(
                &[H::Idx(2), H::Idx(6), H::Idx(64), H::Idx(63), H::Idx(62)],
                false,
            ),
        );
        full.push((Egress, second));
        full.push((Ingress, headers(3, true, &block(&[H::Idx(8)], false))));
        let mut c = H2Conn::mid_stream();
        let out = run(&mut c, &full[3..]);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.stream_id, 3);
        assert_eq!(s.method.as_deref(), Some("GET"));
        assert_eq!(s.scheme.as_deref(), Some("http"));
        assert_eq!(s.path, None);
        assert_eq!(s.authority, None);
        assert!(s.request_headers.is_empty());
        assert!(s.headers_incomplete);
        assert_eq!(s.status, Some(200));
        assert_eq!(s.role, Role::Client);
        assert_eq!(c.stats().lost_streams, 1); // stream 1: response only
        assert_eq!(c.stats().resyncs, 0);
        assert_eq!(c.stats().hpack_errors, 0); // unknown, not invalid
    }

    /// Joined mid-stream: what a request inserts into the table after the join, a later one
    /// may reference, and both decode whole.
    #[test]
    fn mid_stream_entries_inserted_after_the_join_are_used() {
        let req = |id, fields: &[H]| (Egress, headers(id, true, &block(fields, false)));
        let ok = |id| (Ingress, headers(id, true, &block(&[H::Idx(8)], false)));
        let mut c = H2Conn::mid_stream();
        let out = run(
            &mut c,
            &[
                req(
                    3,
                    &[
                        H::Idx(2),
                        H::Idx(6),
                        H::IncN(1, "svc:50051"),
                        H::IncN(4, "/a/B"),
                    ],
                ),
                ok(3),
                req(5, &[H::Idx(2), H::Idx(6), H::Idx(63), H::Idx(62)]),
                ok(5),
                // 64 is from before the join.
                req(7, &[H::Idx(2), H::Idx(6), H::Idx(64), H::Idx(62)]),
                ok(7),
            ],
        );
        assert_eq!(out.len(), 3);
        for s in &out {
            assert_eq!(s.path.as_deref(), Some("/a/B"), "stream {}", s.stream_id);
        }
        for s in &out[..2] {
            assert_eq!(
                s.authority.as_deref(),
                Some("svc:50051"),
                "stream {}",
                s.stream_id
            );
            assert!(!s.headers_incomplete, "stream {}", s.stream_id);
        }
        assert_eq!(out[2].authority, None);
        assert!(out[2].headers_incomplete);
        assert_eq!(c.stats().hpack_errors, 0);
    }

    #[test]
    fn gap_then_static_and_literal_fields_only() {
        let mut c = H2Conn::new();
        let mut out = run(&mut c, &basic_get());
        assert_eq!(out.len(), 1);
        c.gap(Egress);
        // Stream 3 re-uses dynamic entries (encoder's table is fine; ours is not).
        let s3 = headers(
            3,
            true,
            &block(
                &[H::Idx(2), H::Idx(6), H::Idx(64), H::Idx(63), H::Idx(62)],
                false,
            ),
        );
        // Stream 5: a literal :path and a dynamic ref for :authority.
        let s5 = headers(
            5,
            true,
            &block(&[H::Idx(3), H::IncN(4, "/lit"), H::Idx(64)], false),
        );
        // Stream 7: everything literal/static: complete even though untrusted.
        let s7 = headers(
            7,
            true,
            &block(&[H::Idx(2), H::NoN(4, "/seven"), H::NoN(1, "h")], false),
        );
        for (d, b) in [
            (Egress, s3),
            (Ingress, headers(3, true, &block(&[H::Idx(8)], false))),
            (Egress, s5),
            (Ingress, headers(5, true, &block(&[H::Idx(8)], false))),
            (Egress, s7),
            (Ingress, headers(7, true, &block(&[H::Idx(14)], false))),
        ] {
            c.feed(chunk(d, &b, 100), &mut out);
        }
        assert_eq!(out.len(), 4);
        let s3 = &out[1];
        assert_eq!(
            (
                s3.method.as_deref(),
                s3.path.as_deref(),
                s3.headers_incomplete
            ),
            (Some("GET"), None, true)
        );
        let s5 = &out[2];
        assert_eq!(s5.method.as_deref(), Some("POST"));
        assert_eq!(s5.path.as_deref(), Some("/lit"));
        assert_eq!(s5.authority, None);
        assert!(s5.headers_incomplete);
        let s7 = &out[3];
        assert_eq!(s7.path.as_deref(), Some("/seven"));
        assert_eq!(s7.status, Some(500));
        assert!(!s7.headers_incomplete);
        assert_eq!(c.stats().resyncs, 1);
        assert_eq!(c.stats().hpack_errors, 0);
    }

    #[test]
    fn uncaptured_data_payloads_are_counted() {
        let mut c = H2Conn::new();
        let mut out = run(&mut c, &basic_get()[..3]);
        let big = [
            headers(1, false, &resp_200()),
            data(1, false, 1000),
            data(1, true, 500),
        ]
        .concat();
        // Capture only the HEADERS and the first DATA header + 10 bytes.
        let hl_len = headers(1, false, &resp_200()).len();
        let captured = &big[..hl_len + 9 + 10];
        let ch = Chunk {
            tid: 0,
            dir: Ingress,
            len: (hl_len + 9 + 1000) as u64,
            data: captured,
            layout: Layout::Prefix,
            ts_start: 50,
            ts_end: 55,
        };
        c.feed(ch, &mut out);
        let rest = &big[hl_len + 9 + 1000..];
        let ch = Chunk {
            tid: 0,
            dir: Ingress,
            len: rest.len() as u64,
            data: &rest[..9],
            layout: Layout::Prefix,
            ts_start: 60,
            ts_end: 65,
        };
        c.feed(ch, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].response_body_len, 1500);
        assert_eq!(out[0].ts_end, 65);
        assert_eq!(c.stats().resyncs, 0);
    }

    #[test]
    fn uncaptured_headers_payload_is_incomplete_never_wrong() {
        let mut c = H2Conn::new();
        let mut out = run(&mut c, &basic_get()[..2]);
        let req = get_req(1, "/captured/prefix");
        // Frame header + first 4 block bytes captured (:method, :scheme, part of :path).
        let ch = Chunk {
            tid: 0,
            dir: Egress,
            len: req.len() as u64,
            data: &req[..13],
            layout: Layout::Prefix,
            ts_start: 7,
            ts_end: 8,
        };
        c.feed(ch, &mut out);
        run(&mut c, &[(Ingress, headers(1, true, &resp_200()))])
            .into_iter()
            .for_each(|s| out.push(s));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].method.as_deref(), Some("GET"));
        assert_eq!(out[0].path, None);
        assert!(out[0].headers_incomplete);
        assert_eq!(out[0].ts_start, 7);
        assert_eq!(c.stats().incomplete_headers, 1);
        assert!(!c.dirs[Egress.idx()].hpack.trusted);
        assert!(c.dirs[Ingress.idx()].hpack.trusted);
    }

    #[test]
    fn hole_inside_header_payload_keeps_prefix_only() {
        let mut c = H2Conn::new();
        let mut out = run(&mut c, &basic_get()[..2]);
        let req = get_req(1, "/hole/in/the/middle");
        // Chunk 1: header + 4 block bytes captured, 4 more uncaptured.
        c.feed(
            Chunk {
                tid: 0,
                dir: Egress,
                len: 17,
                data: &req[..13],
                layout: Layout::Prefix,
                ts_start: 1,
                ts_end: 1,
            },
            &mut out,
        );
        // Chunk 2: the rest, fully captured; must not be glued after the hole.
        c.feed(chunk(Egress, &req[17..], 2), &mut out);
        c.feed(chunk(Ingress, &headers(1, true, &resp_200()), 3), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].method.as_deref(), Some("GET"));
        assert_eq!(
            (out[0].path.as_ref(), out[0].authority.as_ref()),
            (None, None)
        );
        assert!(out[0].headers_incomplete);
        assert_eq!(c.stats().hpack_errors, 0);
        assert_eq!(c.stats().resyncs, 0);
    }

    #[test]
    fn frame_header_in_uncaptured_region_resyncs() {
        let mut c = H2Conn::new();
        let mut out = run(&mut c, &basic_get()[..3]);
        // DATA(100) + trailers; only 20 bytes captured -> the trailers' frame
        // header is invisible.
        let b = [
            headers(1, false, &resp_200()),
            data(1, false, 100),
            headers(1, true, &block(&[H::Idx(8)], false)),
        ]
        .concat();
        let seen = headers(1, false, &resp_200()).len() + 9 + 5;
        let ch = Chunk {
            tid: 0,
            dir: Ingress,
            len: b.len() as u64,
            data: &b[..seen],
            layout: Layout::Prefix,
            ts_start: 1,
            ts_end: 2,
        };
        c.feed(ch, &mut out);
        assert_eq!(c.stats().resyncs, 1);
        // A chunk that does not start at a frame boundary is skipped...
        c.feed(
            chunk(
                Ingress,
                &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 1],
                3,
            ),
            &mut out,
        );
        // ...one that does re-locks; stream 3 then works (status static).
        c.feed(
            chunk(
                Egress,
                &headers(3, true, &block(&[H::Idx(2), H::NoN(4, "/3")], false)),
                4,
            ),
            &mut out,
        );
        c.feed(
            chunk(Ingress, &headers(3, true, &block(&[H::Idx(8)], false)), 5),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stream_id, 3);
        assert_eq!(out[0].path.as_deref(), Some("/3"));
        c.close(99, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].stream_id, 1);
        assert!(out[1].closed_early);
        // Its end went by in the bytes that could not be followed: the estimate is when
        // framing was lost (the latest byte time seen then: 25 from `run`), not the
        // connection's close.
        assert!(out[1].framing_lost);
        assert_eq!(out[1].ts_end, 25);
        assert_eq!(out[1].response_body_len, 100);
        // Stream 3 began after the loss and ended in sight.
        assert!(!out[0].framing_lost);
    }

    #[test]
    fn garbage_is_malformed() {
        let mut c = H2Conn::new();
        let mut out = Vec::new();
        c.feed(
            chunk(Egress, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0),
            &mut out,
        );
        c.feed(chunk(Ingress, b"HTTP/1.1 200 OK\r\n\r\n", 1), &mut out);
        assert!(out.is_empty());
        assert_eq!(c.stats().malformed, 2);
        assert_eq!(c.stats().resyncs, 2);
        // A wrong preface byte in the middle is malformed too.
        let mut c = H2Conn::new();
        c.feed(chunk(Egress, b"PRI * HTTP/1.1\r\n", 0), &mut out);
        assert_eq!(c.stats().malformed, 1);
        // Garbage mid-connection: an impossible frame header.
        let mut c = H2Conn::new();
        let mut evs = basic_get();
        evs.push((Egress, frame(SETTINGS, 0, 3, &[1, 2, 3])));
        evs.push((Egress, frame(0x42, 0, 0, &[1, 2, 3]))); // not re-locked: skipped
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(c.stats().malformed, 1);
        assert_eq!(c.stats().resyncs, 1);
        // Unknown frame type in a healthy stream: counted, skipped by length.
        let mut c = H2Conn::new();
        let mut evs = basic_get();
        evs.insert(3, (Egress, frame(0x42, 0, 0, &[1, 2, 3])));
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(c.stats().malformed, 1);
        assert_eq!(c.stats().resyncs, 0);
    }

    #[test]
    fn preface_split_across_chunks() {
        let mut c = H2Conn::new();
        let mut out = Vec::new();
        let all: Vec<u8> = basic_get()
            .into_iter()
            .filter(|e| e.0 == Egress)
            .flat_map(|e| e.1)
            .collect();
        for part in [&all[..3], &all[3..17], &all[17..30], &all[30..]] {
            c.feed(chunk(Egress, part, 0), &mut out);
        }
        c.feed(chunk(Ingress, &basic_get()[1].1, 0), &mut out);
        c.feed(chunk(Ingress, &basic_get()[3].1, 0), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].path.as_deref(), Some("/hello"));
    }

    #[test]
    fn goaway_and_close_flush() {
        let mut c = H2Conn::new();
        let mut evs = basic_get()[..2].to_vec();
        evs.push((
            Egress,
            [get_req(1, "/a"), get_req(3, "/b"), get_req(5, "/c")].concat(),
        ));
        let mut ga = 1u32.to_be_bytes().to_vec();
        ga.extend(0u32.to_be_bytes());
        evs.push((Ingress, frame(GOAWAY, 0, 0, &ga)));
        let out = run(&mut c, &evs);
        assert_eq!(
            out.iter().map(|s| s.stream_id).collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert!(out.iter().all(|s| s.closed_early));
        let mut out = Vec::new();
        c.close(1000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stream_id, 1);
        assert!(out[0].closed_early);
    }

    /// curl closes once it has content-length bytes of body, before the server's empty
    /// END_STREAM DATA frame arrives: that response was complete, not cut.
    #[test]
    fn close_after_content_length_body_is_complete() {
        let mut evs = basic_get()[..3].to_vec();
        let resp = headers(1, false, &block(&[H::Idx(8), H::IncN(28, "5")], false));
        evs.push((Ingress, [resp, data(1, false, 5)].concat()));
        let mut c = H2Conn::new();
        let mut out = run(&mut c, &evs);
        assert!(out.is_empty());
        c.close(1000, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].closed_early);
        assert_eq!(out[0].response_body_len, 5);
        assert_eq!(out[0].ts_end, 35); // the DATA frame's chunk, not the close

        // One byte short: cut.
        let mut evs = basic_get()[..3].to_vec();
        let resp = headers(1, false, &block(&[H::Idx(8), H::IncN(28, "6")], false));
        evs.push((Ingress, [resp, data(1, false, 5)].concat()));
        let mut c = H2Conn::new();
        let mut out = run(&mut c, &evs);
        c.close(1000, &mut out);
        assert!(out[0].closed_early);
        assert_eq!(out[0].ts_end, 1000);
    }

    #[test]
    fn reset_after_the_whole_content_length_is_complete() {
        // curl may reset an h2c upgrade's stream once it has the announced body, before the
        // server's END_STREAM: the response was whole, not a failure.
        for (announced, reset) in [("5", None), ("6", Some(8))] {
            let mut evs = basic_get()[..3].to_vec();
            let resp = headers(
                1,
                false,
                &block(&[H::Idx(8), H::IncN(28, announced)], false),
            );
            evs.push((Ingress, [resp, data(1, false, 5)].concat()));
            evs.push((Egress, rst(1, 8)));
            let out = run(&mut H2Conn::new(), &evs);
            assert_eq!(out.len(), 1);
            assert_eq!(
                (out[0].status, out[0].reset),
                (Some(200), reset),
                "{announced}"
            );
            assert_eq!(out[0].response_body_len, 5);
        }
    }

    #[test]
    fn settings_header_table_size_and_push_promise() {
        // The client allows an 8 KiB table; the server's encoder uses it.
        let mut c = H2Conn::new();
        let big = "v".repeat(5000);
        let mut cp = PREFACE.to_vec();
        cp.extend(settings(&[(1, 8192)]));
        let mut pp = vec![0, 0, 0, 2];
        pp.extend(block(&[H::Idx(2), H::IncN(4, "/pushed")], false));
        let evs = vec![
            (Egress, cp),
            (Ingress, server_preface()),
            (Egress, get_req(1, "/")),
            (
                Ingress,
                [
                    frame(PUSH_PROMISE, flag::END_HEADERS, 1, &pp),
                    headers(
                        1,
                        false,
                        &block(&[H::Size(8192), H::Idx(8), H::Inc("x-big", &big)], false),
                    ),
                    headers(
                        1,
                        true,
                        &block(&[H::Idx(63), H::Inc("grpc-status", "3")], false),
                    ),
                ]
                .concat(),
            ),
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Some(200));
        assert_eq!(out[0].grpc_status, Some(3));
        assert!(!out[0].headers_incomplete, "{:?}", c.stats());
        assert_eq!(c.stats().hpack_errors, 0);
    }

    #[test]
    fn max_open_streams_evicts_oldest() {
        let mut c = H2Conn::new();
        let mut reqs = client_preface();
        for i in 0..(MAX_OPEN_STREAMS as u32 + 5) {
            reqs.extend(headers(
                2 * i + 1,
                true,
                &block(&[H::Idx(2), H::Idx(4)], false),
            ));
        }
        let out = run(&mut c, &[(Egress, reqs), (Ingress, server_preface())]);
        assert!(out.is_empty());
        assert_eq!(c.streams.len(), MAX_OPEN_STREAMS);
        assert_eq!(c.stats().lost_streams, 5);
        assert_eq!(c.streams.keys().next(), Some(&11));
    }

    /// A varied conversation: GET, POST, gRPC, CONTINUATION, padding, RST.
    fn rich_conversation() -> Vec<Ev> {
        let mut evs = vec![(Egress, client_preface()), (Ingress, server_preface())];
        for i in 0..30u32 {
            let sid = 2 * i + 1;
            let path = format!("/r/{i}");
            match i % 5 {
                0 => {
                    evs.push((Egress, get_req(sid, &path)));
                    evs.push((
                        Ingress,
                        [
                            headers(sid, false, &resp_200()),
                            data(sid, true, i as usize),
                        ]
                        .concat(),
                    ));
                }
                1 => {
                    evs.push((
                        Egress,
                        [grpc_req(sid, &path), grpc_msg(sid, true, 9)].concat(),
                    ));
                    evs.push((
                        Ingress,
                        headers(
                            sid,
                            false,
                            &block(&[H::Idx(8), H::IncN(31, "application/grpc")], true),
                        ),
                    ));
                    evs.push((Ingress, grpc_msg(sid, false, 3)));
                    evs.push((
                        Ingress,
                        headers(sid, true, &block(&[H::Inc("grpc-status", "0")], true)),
                    ));
                }
                2 => {
                    let blk = block(&[H::Idx(3), H::Idx(6), H::IncN(4, &path), H::Idx(62)], true);
                    let (a, b) = blk.split_at(blk.len() / 2);
                    evs.push((
                        Egress,
                        [
                            frame(HEADERS, 0, sid, a),
                            frame(CONTINUATION, flag::END_HEADERS, sid, b),
                            data(sid, true, 33),
                        ]
                        .concat(),
                    ));
                    evs.push((Ingress, headers(sid, true, &block(&[H::Idx(13)], false))));
                }
                3 => {
                    let mut p = vec![4u8];
                    p.extend(block(&[H::Idx(2), H::NoN(4, &path)], false));
                    p.extend([0; 4]);
                    evs.push((
                        Egress,
                        frame(
                            HEADERS,
                            flag::END_HEADERS | flag::PADDED | flag::END_STREAM,
                            sid,
                            &p,
                        ),
                    ));
                    evs.push((
                        Ingress,
                        [headers(sid, false, &resp_200()), rst(sid, 2)].concat(),
                    ));
                }
                _ => {
                    evs.push((Egress, get_req(sid, &path)));
                    evs.push((Ingress, frame(PING, 0, 0, &[1; 8])));
                    evs.push((Ingress, headers(sid, true, &block(&[H::Idx(8)], false))));
                }
            }
        }
        evs
    }

    /// Feeds `runs` cut at random points (at most `max_cut` bytes) into syscalls, each captured
    /// as `capture` makes it.
    fn feed_cuts(
        c: &mut H2Conn,
        runs: &[Ev],
        rng: &mut Rng,
        max_cut: usize,
        mut capture: impl FnMut(Direction, &[u8]) -> (Vec<u8>, Layout),
    ) -> Vec<Stream> {
        let mut out = Vec::new();
        for (d, b) in runs {
            let mut rest = &b[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(max_cut) as u64) as usize;
                let (a, r) = rest.split_at(n);
                let (data, layout) = capture(*d, a);
                c.feed(
                    Chunk {
                        tid: 0,
                        dir: *d,
                        len: a.len() as u64,
                        data: &data,
                        layout,
                        ts_start: 0,
                        ts_end: 0,
                    },
                    &mut out,
                );
                rest = r;
            }
        }
        out
    }

    fn feed_split(c: &mut H2Conn, evs: &[Ev], rng: &mut Rng) -> Vec<Stream> {
        // Merge consecutive same-direction events, then cut at random points.
        let mut runs: Vec<Ev> = Vec::new();
        for (d, b) in evs {
            match runs.last_mut() {
                Some((ld, lb)) if ld == d && rng.below(2) == 0 => lb.extend(b),
                _ => runs.push((*d, b.clone())),
            }
        }
        feed_cuts(c, &runs, rng, 64, |_, a| (a.to_vec(), Layout::Prefix))
    }

    /// Each event as one syscall, captured whole, at time 0 (what the split feeds compare to).
    fn whole(c: &mut H2Conn, evs: &[Ev]) -> Vec<Stream> {
        let mut out = Vec::new();
        for (d, b) in evs {
            c.feed(
                Chunk {
                    ts_end: 0,
                    ..chunk(*d, b, 0)
                },
                &mut out,
            );
        }
        out
    }

    #[test]
    fn random_split_gives_same_streams() {
        let evs = rich_conversation();
        let mut c = H2Conn::new();
        let reference = whole(&mut c, &evs);
        assert_eq!(reference.len(), 30);
        assert_eq!(
            c.stats().malformed + c.stats().hpack_errors + c.stats().resyncs,
            0
        );
        assert!(
            reference
                .iter()
                .all(|s| !s.headers_incomplete && s.path.is_some())
        );
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..40 {
            let mut c2 = H2Conn::new();
            let got = feed_split(&mut c2, &evs, &mut rng);
            assert_eq!(got, reference);
            assert_eq!(c2.stats(), c.stats());
        }
    }

    #[test]
    fn fuzz_10k_random_chunks_no_panic() {
        let evs = rich_conversation();
        let valid: Vec<u8> = evs.iter().flat_map(|e| e.1.clone()).collect();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..4 {
            let mut c = if round % 2 == 0 {
                H2Conn::new()
            } else {
                H2Conn::mid_stream()
            };
            let mut out = Vec::new();
            for _ in 0..2500 {
                let dir = if rng.below(2) == 0 { Ingress } else { Egress };
                let n = rng.below(80) as usize;
                let buf: Vec<u8> = match rng.below(4) {
                    0 => (0..n).map(|_| rng.next() as u8).collect(),
                    1 | 2 => {
                        let s = rng.below(valid.len() as u64) as usize;
                        valid[s..(s + n).min(valid.len())].to_vec()
                    }
                    _ => {
                        // a frame header with random fields
                        let mut v = Vec::new();
                        v.extend((0..9).map(|_| rng.next() as u8));
                        v.extend((0..n).map(|_| rng.next() as u8));
                        v
                    }
                };
                let cap = rng.below(buf.len() as u64 + 1) as usize;
                let len = match rng.below(5) {
                    0 => buf.len() as u64 + rng.below(1 << 20),
                    1 => rng.next(),
                    _ => buf.len() as u64,
                };
                let t = rng.next();
                let layout = match rng.below(3) {
                    0 => Layout::Prefix,
                    _ => Layout::H2Frames {
                        first: (rng.below(2) == 0)
                            .then(|| (rng.below(len.max(1)), rng.below(cap as u64 + 2) as usize)),
                        lost: rng.below(4) == 0,
                    },
                };
                c.feed(
                    Chunk {
                        tid: 0,
                        dir,
                        len,
                        data: &buf[..cap],
                        layout,
                        ts_start: t,
                        ts_end: t,
                    },
                    &mut out,
                );
                if rng.below(100) == 0 {
                    c.gap(dir);
                }
            }
            c.close(u64::MAX, &mut out);
            assert!(c.streams.is_empty());
            for s in &out {
                if let Some(m) = &s.method {
                    assert!(!m.is_empty());
                }
            }
        }
    }

    /// What the probes' frame walk (tracer-ebpf/src/frames.rs) makes of one direction's
    /// syscalls: the same rules, written plainly, so the decoder is tested against them.
    #[derive(Default)]
    struct KernelWalk {
        rem: u32,
        copy: u32,
        hdr: Vec<u8>,
    }

    impl KernelWalk {
        /// A direction whose first syscall starts with the client preface.
        fn client() -> Self {
            KernelWalk {
                rem: 24,
                copy: 24,
                hdr: Vec::new(),
            }
        }

        /// (captured bytes within `budget`, first frame header (offset, offset in captured)).
        fn syscall(&mut self, bytes: &[u8], budget: usize) -> (Vec<u8>, Option<(u64, usize)>) {
            let mut out = Vec::new();
            let mut first = None;
            let mut i = 0;
            let put = |out: &mut Vec<u8>, b: &[u8]| {
                let room = budget.saturating_sub(out.len());
                out.extend_from_slice(&b[..b.len().min(room)]);
            };
            while i < bytes.len() {
                if self.rem > 0 {
                    let n = (self.rem as usize).min(bytes.len() - i);
                    let c = n.min(self.copy as usize);
                    if c > 0 {
                        put(&mut out, &bytes[i..i + c]);
                        self.copy -= c as u32;
                        self.rem -= c as u32;
                        i += c;
                    } else {
                        self.rem -= n as u32;
                        i += n;
                    }
                    continue;
                }
                if self.hdr.is_empty() && first.is_none() {
                    first = Some((i as u64, out.len()));
                }
                self.hdr.push(bytes[i]);
                put(&mut out, &bytes[i..i + 1]);
                i += 1;
                if self.hdr.len() == 9 {
                    let h = std::mem::take(&mut self.hdr);
                    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    self.rem = len;
                    self.copy = copied_len(h[3], h[4], len);
                }
            }
            let first = first.filter(|&(_, c)| c < out.len());
            (out, first)
        }
    }

    /// Feeds `evs` as the frame walk captures them, cut at random points into syscalls, each
    /// captured within `budget` bytes.
    fn feed_walked(c: &mut H2Conn, evs: &[Ev], rng: &mut Rng, budget: usize) -> Vec<Stream> {
        let mut walks = [KernelWalk::default(), KernelWalk::default()];
        // The direction that opens with the client preface is walked from it.
        if let Some((d, _)) = evs.iter().find(|(_, b)| b.starts_with(PREFACE)) {
            walks[d.idx()] = KernelWalk::client();
        }
        feed_cuts(c, evs, rng, 200, |d, a| {
            let (captured, first) = walks[d.idx()].syscall(a, budget);
            (captured, Layout::H2Frames { first, lost: false })
        })
    }

    #[test]
    fn frame_walk_payloads_decode_like_whole_bytes() {
        let evs = rich_conversation();
        let mut c = H2Conn::new();
        let reference = whole(&mut c, &evs);
        let mut rng = Rng(0x5151_2323_abab_0101);
        for _ in 0..40 {
            let mut c2 = H2Conn::new();
            let got = feed_walked(&mut c2, &evs, &mut rng, usize::MAX);
            assert_eq!(got, reference);
            assert_eq!(c2.stats(), c.stats());
        }
    }

    /// A server answering ten streams in one write with large bodies: a prefix of the write
    /// holds only the first response, the frame walk holds all ten within a small budget.
    #[test]
    fn frame_walk_keeps_every_response_of_one_big_write() {
        let mut req = client_preface();
        for sid in (1..=19).step_by(2) {
            req.extend(get_req(sid, "/index.html"));
        }
        let mut resp = server_preface();
        for sid in (1..=19).step_by(2) {
            resp.extend(headers(sid, false, &resp_200()));
            resp.extend(data(sid, true, 3000));
        }
        let budget = 1024;
        let run = |walked: bool| {
            let mut c = H2Conn::new();
            let mut out = Vec::new();
            let mut walks = [KernelWalk::client(), KernelWalk::default()];
            for (dir, b) in [(Ingress, &req), (Egress, &resp)] {
                let (data, layout) = if walked {
                    let (cap, first) = walks[dir.idx()].syscall(b, budget);
                    (cap, Layout::H2Frames { first, lost: false })
                } else {
                    (b[..b.len().min(budget)].to_vec(), Layout::Prefix)
                };
                c.feed(
                    Chunk {
                        tid: 0,
                        dir,
                        len: b.len() as u64,
                        data: &data,
                        layout,
                        ts_start: 1,
                        ts_end: 2,
                    },
                    &mut out,
                );
            }
            c.close(3, &mut out);
            out
        };
        let walked = run(true);
        assert_eq!(walked.len(), 10);
        for s in &walked {
            assert_eq!(s.status, Some(200), "{s:?}");
            assert_eq!(s.response_body_len, 3000);
            assert!(!s.framing_lost && !s.closed_early, "{s:?}");
        }
        let prefix = run(false);
        assert!(
            prefix
                .iter()
                .filter(|s| s.status == Some(200) && !s.framing_lost)
                .count()
                < 2,
            "{prefix:?}"
        );
    }

    /// Records lost: the next record says where its first frame starts, and decoding picks
    /// up there (HPACK state unknown: static and literal fields only).
    #[test]
    fn frame_walk_relocks_where_the_probes_say_after_a_gap() {
        let mut w = [KernelWalk::client(), KernelWalk::default()];
        let mut c = H2Conn::new();
        let mut out = Vec::new();
        let feed = |c: &mut H2Conn, out: &mut Vec<Stream>, w: &mut KernelWalk, dir, b: &[u8]| {
            let (data, first) = w.syscall(b, usize::MAX);
            c.feed(
                Chunk {
                    tid: 0,
                    dir,
                    len: b.len() as u64,
                    data: &data,
                    layout: Layout::H2Frames { first, lost: false },
                    ts_start: 1,
                    ts_end: 2,
                },
                out,
            );
        };
        let [wi, we] = &mut w;
        feed(&mut c, &mut out, wi, Ingress, &client_preface());
        feed(&mut c, &mut out, we, Egress, &server_preface());
        // A request whose syscall went missing, ending inside a DATA frame: the walk in the
        // kernel still followed it.
        let body = data(1, false, 100);
        let lost = [get_req(1, "/lost"), body[..50].to_vec()].concat();
        let _ = wi.syscall(&lost, usize::MAX);
        c.gap(Ingress);
        // The next syscall starts inside that DATA frame, then a new request with a literal path.
        let tail = [
            body[50..].to_vec(),
            data(1, true, 0),
            headers(
                3,
                true,
                &block(&[H::Idx(2), H::Idx(6), H::NoN(4, "/after")], false),
            ),
        ]
        .concat();
        feed(&mut c, &mut out, wi, Ingress, &tail);
        feed(
            &mut c,
            &mut out,
            we,
            Egress,
            &headers(3, true, &block(&[H::Idx(8)], false)),
        );
        let s = out.iter().find(|s| s.stream_id == 3).expect("stream 3");
        assert_eq!(s.path.as_deref(), Some("/after"));
        assert_eq!(s.method.as_deref(), Some("GET"));
        assert_eq!(s.status, Some(200));
    }

    /// The probes lost the frames after a syscall's captured bytes: the decoder must not go
    /// on reading what follows as frames.
    #[test]
    fn frames_lost_in_the_kernel_resyncs_the_decoder() {
        let mut c = H2Conn::new();
        let mut out = Vec::new();
        let pre = client_preface();
        c.feed(
            Chunk {
                tid: 0,
                dir: Ingress,
                len: pre.len() as u64 + 40,
                data: &pre,
                layout: Layout::H2Frames {
                    first: None,
                    lost: true,
                },
                ts_start: 1,
                ts_end: 1,
            },
            &mut out,
        );
        assert_eq!(c.dirs[0].mode, Mode::Resync);
        assert_eq!(c.stats().resyncs, 1);
    }
}
