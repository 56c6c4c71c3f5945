//! What HTTP/1 start lines and header lines may hold (RFC 9110, RFC 9112). A line is checked
//! as its bytes arrive: `complete == false` accepts any prefix of a valid line, so garbage is
//! rejected as soon as it is seen instead of being buffered up to the cap.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Req,
    Resp,
}

/// Which start lines a direction may carry (both until the role is known).
#[derive(Clone, Copy)]
pub(super) struct Kinds {
    pub(super) req: bool,
    pub(super) resp: bool,
}

impl Kinds {
    pub(super) fn allows(self, k: Kind) -> bool {
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
pub(super) fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

pub(super) fn strip_cr(l: &[u8]) -> &[u8] {
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
pub(super) fn header_colon(line: &[u8]) -> Option<usize> {
    let n = line.iter().take_while(|&&b| is_tchar(b)).count();
    (n > 0 && line.get(n) == Some(&b':') && field_bytes_ok(&line[n + 1..])).then_some(n)
}

/// A valid header line, or (`complete` false) the start of one: a name so far.
pub(super) fn header_ok(line: &[u8], complete: bool) -> bool {
    header_colon(line).is_some() || (!complete && line.iter().all(|&b| is_tchar(b)))
}

pub(super) fn start_kind(line: &[u8], complete: bool, k: Kinds) -> Option<Kind> {
    if k.req && request_line_ok(line, complete) {
        Some(Kind::Req)
    } else if k.resp && status_line_ok(line, complete) {
        Some(Kind::Resp)
    } else {
        None
    }
}

/// Validate an unterminated line; a trailing CR means only the LF is missing.
pub(super) fn partial_ok(line: &[u8], f: impl Fn(&[u8], bool) -> bool) -> bool {
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

pub(super) fn known_method_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b' ') {
        Some(sp) => KNOWN_METHODS.contains(&&line[..sp]),
        None => KNOWN_METHODS.iter().any(|m| m.starts_with(line)),
    }
}

/// Resync test: does this chunk's captured data begin with a valid start line?
/// `whole` = the chunk was fully captured, so a start line cut at its end is just split.
pub(super) fn begins_with_start_line(data: &[u8], whole: bool, k: Kinds) -> bool {
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

#[cfg(test)]
mod tests {
    use crate::decode::{
        Direction::{Egress as E, Ingress as I},
        http1::Stats,
        testkit::*,
    };

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
            let mut t = H1::new();
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
        let mut t = H1::new();
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
        let mut t = H1::new();
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
    fn bare_lf_and_leading_crlf() {
        let mut t = H1::new();
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
}
