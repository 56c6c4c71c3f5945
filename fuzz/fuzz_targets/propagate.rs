//! Feeds the rules the kernel's `sk_msg` program applies to the first bytes of a traced
//! client's write (`tracer_common::propagate`): the head scan, the verdict, where the next
//! request starts, and the read of a `traceparent` value. The probes run the same code over
//! whatever an application sends, so it must stay in bounds and agree with itself: a rewrite
//! is only decided for a head that ends inside the bytes, after its request line, with nothing
//! but its own body behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_common::propagate::{HEAD_MAX, NO_LENGTH, Scan, Verdict, parse_traceparent};

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes: the write's size as the probes see it (the scan sees at most
    // HEAD_MAX of it); the rest are its first bytes.
    if data.len() < 8 {
        return;
    }
    let (size, bytes) = data.split_at(8);
    let n = bytes.len().min(HEAD_MAX);
    let size = (u64::from_le_bytes(size.try_into().unwrap()) >> 40).max(n as u64);
    let mut s = Scan::new();
    for i in 0..n {
        if !s.step(i, n, |j| bytes[j]) {
            break;
        }
    }
    let verdict = s.verdict(size);
    if verdict == Verdict::Write {
        assert!(s.line_end > 0 && s.line_end <= s.head_end && s.head_end as usize <= n);
        assert_eq!(&bytes[s.line_end as usize - 2..s.line_end as usize], b"\r\n");
        assert_eq!(&bytes[s.head_end as usize - 4..s.head_end as usize], b"\r\n\r\n");
        // Where the next request starts is known, or the connection is left alone from here
        // on: a chunked request whose head ends the write is written, its body's end is not
        // looked for.
        assert!(
            s.body_left(size).is_some() || (s.chunked != 0 && s.head_end as u64 == size),
            "a rewrite knows where the next request starts"
        );
    }
    if let Some(left) = s.body_left(size) {
        assert!(s.head_end > 0 && s.chunked == 0 && s.malformed == 0);
        if s.content_length == NO_LENGTH {
            assert_eq!(left, 0, "no length, no body");
        } else {
            assert!(left <= s.content_length);
        }
    }
    if s.context_at != 0 {
        let mut trace = [0u8; 16];
        if parse_traceparent(s.context_at as usize, n, |j| bytes[j], &mut trace).is_some() {
            assert_ne!(trace, [0; 16]);
        }
    }
});
