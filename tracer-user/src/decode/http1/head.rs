//! A message's head: its start line and header block, gathered across chunks, each line
//! validated as it comes, the kept header fields picked out.
use std::borrow::Cow;

use super::{
    Header, Version,
    syntax::{
        Kind, Kinds, header_colon, header_ok, known_method_start, partial_ok, start_kind, strip_cr,
    },
};

const MAX_HEAD: usize = 64 * 1024;
/// First size of the buffer of a header block that spans chunks: most heads fit.
const HEAD_BUF: usize = 512;
/// Bytes of an unterminated line re-validated per chunk: rejects garbage early without
/// rescanning long lines quadratically when they arrive in tiny pieces.
const PREFIX_CHECK: usize = 256;

pub(super) struct Head {
    /// The block's bytes once it spans chunks; empty while its first chunk is read in place.
    pub(super) buf: Vec<u8>,
    line_start: usize,
    /// The fields of the terminated header lines that the decoder keeps.
    pub(super) headers: Vec<Header>,
    /// Set once the start line is terminated and valid.
    pub(super) kind: Option<Kind>,
    pub(super) announced: bool,
    /// Begun at a resync point (position guessed): request methods must be well known.
    speculative: bool,
    pub(super) tid: u32,
    pub(super) ts_start: u64,
    /// ts_end of the first chunk: used for the causality check when pairing.
    pub(super) ts_first_end: u64,
    pub(super) ts_end: u64,
}

pub(super) enum HeadRes {
    /// Consumed n bytes, no blank line yet (input exhausted or buffer full).
    Need(usize),
    /// Header block ended after n bytes.
    Done(usize),
    Bad,
}

impl Head {
    pub(super) fn new(tid: u32, ts_start: u64, ts_end: u64, speculative: bool) -> Self {
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

    pub(super) fn full(&self) -> bool {
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
    pub(super) fn push(
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

/// Without the spaces and tabs around it (a header value).
fn trim_ows(b: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = b.iter().position(|b| !ows(b)).unwrap_or(b.len());
    let end = b.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &b[start..end]
}

/// Bytes as text, invalid UTF-8 replaced (`from_utf8_lossy`, whose checks cost more).
pub(super) fn text(b: &[u8]) -> String {
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

pub(super) fn parse_version(v: &[u8]) -> Version {
    if v == b"HTTP/1.0" {
        Version::Http10
    } else {
        Version::Http11
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{
        Direction::{Egress as E, Ingress as I},
        http1::{Http1Conn, Outcome},
        testkit::*,
    };

    #[test]
    fn daemon_decoder_keeps_only_needed_headers_and_never_credentials() {
        let mut c = Http1Conn::new();
        let mut out = Vec::new();
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nCookie: s=1\r\nTraceparent: t\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=2\r\nContent-Length: 0\r\n\r\n";
        for (dir, b, t) in [(I, &req[..], 1), (E, &resp[..], 2)] {
            c.feed(chunk(dir, b, t), &mut out);
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

    #[test]
    fn headers_split_mid_line() {
        let mut t = H1::new();
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
    fn request_headers_longer_than_capture() {
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
    fn close_inside_request_head() {
        let mut t = H1::new();
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
        let mut t = H1::new();
        t.send(I, b"GET /a HTTP/1.1\r\nHost: x\r\n");
        t.c.gap(I);
        t.send(I, b"Accept: */*\r\n\r\n");
        t.send(I, b"GET /b HTTP/1.1\r\n\r\n");
        t.send(E, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(targets(&t.take()), ["/b"]);
        let s = t.stats();
        assert_eq!((s.malformed, s.lost_exchanges, s.resyncs), (0, 0, 1));
    }
}
