//! The decoders' test kit: one PRNG, chunks as the probes deliver them, an HTTP/1 driver, a
//! HPACK encoder, and HTTP/2 frames and conversations.
use super::{
    Chunk, Direction, Header, Layout,
    http1::{Exchange, Http1Conn, Response, Stats},
    http2::{H2Conn, Stream, hpack::HUFFMAN},
};
use tracer_common::h2::{
    PREFACE, flag,
    frame_type::{DATA, HEADERS, RST_STREAM, SETTINGS},
};

/// xorshift64*: deterministic and without dependencies, so a failing seed fails again.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One syscall that moved `b`, all of it captured, from `t` to `t + 5`.
pub fn chunk(dir: Direction, b: &[u8], t: u64) -> Chunk<'_> {
    Chunk {
        tid: 0,
        dir,
        len: b.len() as u64,
        data: b,
        layout: Layout::Prefix,
        ts_start: t,
        ts_end: t + 5,
    }
}

/// Kept request headers, as a decoder reports them.
pub fn kept(p: &[(&'static str, &str)]) -> Vec<Header> {
    p.iter().map(|&(a, b)| (a.into(), b.to_string())).collect()
}

// ----- HTTP/1 -----

/// An HTTP/1 decoder that keeps every header, fed one syscall at a time: every chunk gets
/// fresh, increasing timestamps (start = t, end = t + 5).
pub struct H1 {
    pub c: Http1Conn,
    out: Vec<Exchange>,
    t: u64,
}

impl H1 {
    pub fn new() -> Self {
        H1 {
            c: Http1Conn::keeping_all(),
            out: Vec::new(),
            t: 0,
        }
    }

    /// One syscall of `len` real bytes of which `data` was captured; returns (ts_start, ts_end).
    pub fn part(&mut self, dir: Direction, data: &[u8], len: u64) -> (u64, u64) {
        self.t += 10;
        let c = Chunk {
            len,
            ..chunk(dir, data, self.t)
        };
        self.c.feed(c, &mut self.out);
        (c.ts_start, c.ts_end)
    }

    pub fn send(&mut self, dir: Direction, data: &[u8]) -> (u64, u64) {
        self.part(dir, data, data.len() as u64)
    }

    /// `bytes` in syscalls of the sizes `sizes` draws.
    pub fn send_split(&mut self, dir: Direction, bytes: &[u8], sizes: &mut dyn FnMut() -> usize) {
        let mut i = 0;
        while i < bytes.len() {
            let n = sizes().clamp(1, bytes.len() - i);
            self.send(dir, &bytes[i..i + n]);
            i += n;
        }
    }

    pub fn close(&mut self) {
        self.t += 10;
        self.c.close(self.t, &mut self.out);
    }

    pub fn take(&mut self) -> Vec<Exchange> {
        std::mem::take(&mut self.out)
    }

    pub fn stats(&self) -> Stats {
        self.c.stats().clone()
    }
}

pub fn resp(x: &Exchange) -> &Response {
    x.response.as_ref().expect("response")
}

pub fn targets(xs: &[Exchange]) -> Vec<&str> {
    xs.iter().map(|x| x.request.target.as_str()).collect()
}

/// `body` in chunks of random sizes, with chunk extensions (`ext`) and a trailer field.
pub fn chunked_body(rng: &mut Rng, body: &[u8], ext: bool, trailer: bool) -> Vec<u8> {
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

// ----- HPACK encoder (RFC 7541) -----

/// An integer with an N-bit prefix (5.1).
pub fn enc_int(out: &mut Vec<u8>, flags: u8, prefix: u8, v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut v = v - max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

pub fn huff_enc(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut n) = (0u64, 0u32);
    for &b in s {
        let (len, code) = HUFFMAN[b as usize];
        acc = (acc << len) | u64::from(code);
        n += u32::from(len);
        while n >= 8 {
            out.push((acc >> (n - 8)) as u8);
            n -= 8;
        }
        acc &= (1u64 << n) - 1;
    }
    if n > 0 {
        out.push(((acc << (8 - n)) | ((1 << (8 - n)) - 1)) as u8);
    }
    out
}

fn enc_str(out: &mut Vec<u8>, s: &str, huff: bool) {
    if huff {
        let h = huff_enc(s.as_bytes());
        enc_int(out, 0x80, 7, h.len());
        out.extend(h);
    } else {
        enc_int(out, 0, 7, s.len());
        out.extend(s.as_bytes());
    }
}

/// A header field representation (section 6).
pub enum H<'a> {
    Idx(usize),
    /// literal with incremental indexing, literal name
    Inc(&'a str, &'a str),
    /// literal with incremental indexing, indexed name
    IncN(usize, &'a str),
    /// literal without indexing, literal name
    No(&'a str, &'a str),
    /// literal without indexing, indexed name
    NoN(usize, &'a str),
    /// never indexed, literal name
    Never(&'a str, &'a str),
    Size(usize),
}

/// A header block; `huff`: string literals Huffman-coded.
pub fn block(fields: &[H], huff: bool) -> Vec<u8> {
    let mut o = Vec::new();
    for f in fields {
        match *f {
            H::Idx(i) => enc_int(&mut o, 0x80, 7, i),
            H::Inc(n, v) => {
                o.push(0x40);
                enc_str(&mut o, n, huff);
                enc_str(&mut o, v, huff);
            }
            H::IncN(i, v) => {
                enc_int(&mut o, 0x40, 6, i);
                enc_str(&mut o, v, huff);
            }
            H::No(n, v) => {
                o.push(0x00);
                enc_str(&mut o, n, huff);
                enc_str(&mut o, v, huff);
            }
            H::NoN(i, v) => {
                enc_int(&mut o, 0x00, 4, i);
                enc_str(&mut o, v, huff);
            }
            H::Never(n, v) => {
                o.push(0x10);
                enc_str(&mut o, n, huff);
                enc_str(&mut o, v, huff);
            }
            H::Size(s) => enc_int(&mut o, 0x20, 5, s),
        }
    }
    o
}

// ----- HTTP/2 frames -----

pub fn frame(ty: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    let l = payload.len() as u32;
    let mut v = vec![(l >> 16) as u8, (l >> 8) as u8, l as u8, ty, flags];
    v.extend(sid.to_be_bytes());
    v.extend(payload);
    v
}

pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend(id.to_be_bytes());
        p.extend(v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// HEADERS with END_HEADERS.
pub fn headers(sid: u32, end_stream: bool, blk: &[u8]) -> Vec<u8> {
    let fl = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
    frame(HEADERS, fl, sid, blk)
}

/// DATA with `n` payload bytes.
pub fn data(sid: u32, end_stream: bool, n: usize) -> Vec<u8> {
    frame(
        DATA,
        if end_stream { flag::END_STREAM } else { 0 },
        sid,
        &vec![b'x'; n],
    )
}

pub fn rst(sid: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, sid, &code.to_be_bytes())
}

pub fn client_preface() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(settings(&[(2, 0), (4, 65535)]));
    v
}

pub fn server_preface() -> Vec<u8> {
    let mut v = settings(&[(3, 100)]);
    v.extend(frame(SETTINGS, flag::ACK, 0, &[]));
    v
}

// ----- HTTP/2 conversations -----

/// A GET request whose :path/:authority/user-agent go into the table.
pub fn get_req(sid: u32, path: &str) -> Vec<u8> {
    headers(
        sid,
        true,
        &block(
            &[
                H::Idx(2),
                H::Idx(6),
                H::IncN(4, path),
                H::IncN(1, "example.com"),
                H::IncN(58, "test/1.0"),
                H::Never("authorization", "secret"),
                H::NoN(32, "c=1"),
            ],
            true,
        ),
    )
}

/// The header block of a 200 with a content-type.
pub fn resp_200() -> Vec<u8> {
    block(&[H::Idx(8), H::IncN(31, "text/plain")], false)
}

/// A gRPC call's request headers, with a `grpc-timeout` of 1S.
pub fn grpc_req(sid: u32, method: &str) -> Vec<u8> {
    headers(
        sid,
        false,
        &block(
            &[
                H::Idx(3),
                H::Idx(6),
                H::IncN(4, method),
                H::IncN(1, "svc:50051"),
                H::IncN(31, "application/grpc"),
                H::Inc("te", "trailers"),
                H::Inc("grpc-timeout", "1S"),
                H::IncN(58, "grpc-go/1.60"),
            ],
            true,
        ),
    )
}

/// One gRPC message of `n` bytes (5 bytes of framing before it) in a DATA frame.
pub fn grpc_msg(sid: u32, end: bool, n: usize) -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend((n as u32).to_be_bytes());
    p.extend(vec![7u8; n]);
    frame(DATA, if end { flag::END_STREAM } else { 0 }, sid, &p)
}

/// Bytes one syscall moved in a direction.
pub type Ev = (Direction, Vec<u8>);

/// Feeds each event as one chunk, 10 ns apart.
pub fn run(c: &mut H2Conn, evs: &[Ev]) -> Vec<Stream> {
    let mut out = Vec::new();
    for (i, (d, b)) in evs.iter().enumerate() {
        let t = i as u64 * 10;
        c.feed(chunk(*d, b, t), &mut out);
    }
    out
}
