//! Body framing (RFC 9112 section 6): Content-Length, chunked, or until the connection
//! closes. Bodies are consumed by count; only chunk-size lines and trailers are read.
use super::{
    Header,
    headers::{CONTENT_LENGTH, TRANSFER_ENCODING},
    syntax::is_field_byte,
};

const MAX_CHUNK_SIZE: u64 = 1 << 60;
const MAX_CHUNK_EXT: u32 = 4096;

const MAX_TRAILER_LINE: u32 = 64 * 1024;

pub(super) enum Ck {
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
    pub(super) fn new() -> Self {
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

pub(super) enum Framing {
    Length(u64),
    Chunked(Ck),
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    More,
    Done,
    /// A framing byte was not captured.
    Lost,
    /// A framing byte was invalid.
    Bad,
}

impl Framing {
    /// Consume from `pos`; returns (new pos, payload bytes, step).
    pub(super) fn step(&mut self, data: &[u8], mut pos: u64, len: u64) -> (u64, u64, Step) {
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
pub(super) fn body_framing(headers: &[Header], request: bool) -> Result<Option<Framing>, ()> {
    if let Some((_, te)) = headers.iter().rev().find(|(n, _)| n == TRANSFER_ENCODING) {
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
    for (_, v) in headers.iter().filter(|(n, _)| n == CONTENT_LENGTH) {
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

#[cfg(test)]
mod tests {
    use crate::decode::{
        Direction::{Egress as E, Ingress as I},
        http1::{Outcome, Stats, Version},
        testkit::*,
    };

    #[test]
    fn big_body_partially_captured() {
        const BODY: u64 = 10 << 20;
        let head = format!("POST /big HTTP/1.1\r\nContent-Length: {BODY}\r\n\r\n");
        let mut t = H1::new();
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
            let mut t = H1::new();
            t.send(I, b"GET /c HTTP/1.1\r\n\r\n");
            t.send_split(E, &rsp, &mut || step);
            let ex = t.take();
            assert_eq!(ex.len(), 1, "step {step}");
            assert_eq!(resp(&ex[0]).body_len, total);
            assert_eq!(ex[0].outcome, Outcome::Complete);
        }
        let _ = chunked_body(&mut rng, b"x", true, true);
    }

    #[test]
    fn chunked_huge_uncaptured_chunk_then_size_line_at_boundary() {
        let mut t = H1::new();
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
            let mut t = H1::new();
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
        let mut t = H1::new();
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

        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
    fn binary_body_containing_http_text() {
        let mut body = vec![0u8, 1, 2, 0xff];
        body.extend_from_slice(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let tail: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let n = body.len() + tail.len();
        for role_dirs in [(I, E), (E, I)] {
            let (rq, rs) = role_dirs;
            let mut t = H1::new();
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
    fn bad_content_length_loses_framing() {
        let mut t = H1::new();
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
}
