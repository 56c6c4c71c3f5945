//! Feeds the HTTP/1 decoder (`decode::http1::Http1Conn`) the bytes of one connection as the
//! connection table does: one chunk per syscall, requests and responses in both directions,
//! some bytes uncaptured, gaps and closes in between (see `tracer_fuzz::Script`). These bytes
//! are whatever the traced processes send, so pairing, resync and body framing must never
//! panic, whatever they are. A `101` to `Upgrade: h2c` hands the rest to the HTTP/2 decoder,
//! as `conntrack` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_fuzz::{Input, Script, Step};
use tracer_user::decode::{
    http1::{Exchange, Http1Conn},
    http2::{H2Conn, Stream},
};

enum Decoder {
    Http1(Http1Conn),
    Http2(H2Conn),
}

fn fresh(keep_all: bool) -> Decoder {
    Decoder::Http1(if keep_all {
        Http1Conn::keeping_all()
    } else {
        Http1Conn::new()
    })
}

fn check(exchanges: &mut Vec<Exchange>) {
    for x in exchanges.drain(..) {
        assert!(!x.request.method.is_empty() && !x.request.target.is_empty());
        if let Some(r) = &x.response {
            assert!((100..=599).contains(&r.status), "status {}", r.status);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let keep_all = input.byte().unwrap_or(0) & 1 != 0;
    let mut d = fresh(keep_all);
    let (mut exchanges, mut streams, mut opened) = (Vec::new(), Vec::<Stream>::new(), Vec::new());
    let mut script = Script::new(input);
    while let Some(step) = script.next() {
        match (&mut d, step) {
            (Decoder::Http1(h), Step::Data(c)) => {
                h.feed(c, &mut exchanges);
                h.take_opened(&mut opened);
                if let Some(up) = h.take_h2c() {
                    // conntrack: HTTP/2 from right after the 101's head.
                    d = Decoder::Http2(H2Conn::upgraded_in(&up, c, &mut streams));
                }
            }
            (Decoder::Http2(h), Step::Data(c)) => h.feed(c, &mut streams),
            (Decoder::Http1(h), Step::Gap(dir)) => h.gap(dir),
            (Decoder::Http2(h), Step::Gap(dir)) => h.gap(dir),
            (d2, Step::Close { ts, fresh: f }) => {
                match d2 {
                    Decoder::Http1(h) => h.close(ts, &mut exchanges),
                    Decoder::Http2(h) => h.close(ts, &mut streams),
                }
                if f {
                    *d2 = fresh(keep_all);
                }
            }
        }
        check(&mut exchanges);
        streams.clear();
        opened.clear();
    }
    let ts = script.ts();
    match &mut d {
        Decoder::Http1(h) => {
            h.close(ts, &mut exchanges);
            let _ = h.stats();
        }
        Decoder::Http2(h) => h.close(ts, &mut streams),
    }
    check(&mut exchanges);
});
