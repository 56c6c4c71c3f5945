//! Feeds the HTTP/2 decoder (`decode::http2::H2Conn`, with its HPACK decoder) the bytes of
//! one connection as the connection table does: chunks of both directions, as a plain prefix
//! or in the probes' `H2Frames` layout, some bytes uncaptured, gaps and closes in between (see
//! `tracer_fuzz::Script`). Frames and header blocks come from the traced processes: whatever
//! they hold, the decoder must count it and go on. The first byte picks a decoder that saw the
//! connection from its start (`new`, preface and fresh HPACK tables) or one attached mid-stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_fuzz::{Input, Script, Step};
use tracer_user::decode::http2::H2Conn;

fn fresh(mid_stream: bool) -> H2Conn {
    if mid_stream {
        H2Conn::mid_stream()
    } else {
        H2Conn::new()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mid_stream = input.byte().unwrap_or(0) & 1 != 0;
    let mut h = fresh(mid_stream);
    let (mut streams, mut opened) = (Vec::new(), Vec::new());
    let mut script = Script::new(input);
    while let Some(step) = script.next() {
        match step {
            Step::Data(c) => h.feed(c, &mut streams),
            Step::Gap(dir) => h.gap(dir),
            Step::Close { ts, fresh: f } => {
                h.close(ts, &mut streams);
                if f {
                    h = fresh(mid_stream);
                }
            }
        }
        h.take_opened(&mut opened);
        streams.clear();
        opened.clear();
    }
    h.close(script.ts(), &mut streams);
    let _ = h.stats();
});
