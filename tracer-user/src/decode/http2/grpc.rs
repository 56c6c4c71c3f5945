//! gRPC over HTTP/2: what its headers and resets say about a call.
use super::{Stream, headers::GRPC_TIMEOUT};

/// RST_STREAM error code CANCEL (RFC 9113 section 7).
const CANCEL: u32 = 0x8;

/// A `grpc-timeout` value (`1*8DIGIT unit`, unit one of H M S m u n) in nanoseconds.
fn grpc_timeout_ns(v: &str) -> Option<u64> {
    let unit = v.as_bytes().last()?;
    let digits = &v[..v.len() - 1];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let per = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    n.checked_mul(per)
}

/// A gRPC call whose deadline passed ends with RST_STREAM(CANCEL) and no trailers (gRPC over
/// HTTP/2: "when the deadline expires the client cancels the call"); both ends then report
/// DEADLINE_EXCEEDED. Say so when the stream was cancelled once its `grpc-timeout` had run
/// out. Senders round the timeout up (grpc-core sent `201m` for 200 ms), and our start is the
/// HEADERS write, not the call's start: 2% + 2 ms of slack.
pub(super) fn deadline_from_cancel(s: &mut Stream, code: u32, ts_end: u64) {
    if code != CANCEL || !s.is_grpc || s.grpc_status.is_some() {
        return;
    }
    let Some(timeout) = s
        .request_headers
        .iter()
        .find(|(k, _)| k == GRPC_TIMEOUT)
        .and_then(|(_, v)| grpc_timeout_ns(v))
    else {
        return;
    };
    let slack = timeout / 50 + 2_000_000;
    if ts_end.saturating_sub(s.ts_start) + slack >= timeout {
        s.grpc_status = Some(4);
        s.grpc_message = Some("deadline exceeded (stream cancelled after grpc-timeout)".into());
    }
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// gRPC percent-encodes grpc-message; invalid escapes are kept verbatim.
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hi = b.get(i + 1).copied().and_then(hexval);
            let lo = b.get(i + 2).copied().and_then(hexval);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{
        Direction::{Egress, Ingress},
        http2::H2Conn,
        testkit::*,
    };

    #[test]
    fn grpc_unary_ok() {
        let mut c = H2Conn::new();
        let resp_h = headers(
            1,
            false,
            &block(&[H::Idx(8), H::IncN(31, "application/grpc")], true),
        );
        let trailers = headers(
            1,
            true,
            &block(
                &[H::Inc("grpc-status", "0"), H::Inc("grpc-message", "")],
                true,
            ),
        );
        let evs = vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (
                Egress,
                [grpc_req(1, "/pkg.Svc/Get"), grpc_msg(1, true, 20)].concat(),
            ),
            (Ingress, [resp_h, grpc_msg(1, false, 30)].concat()),
            (Ingress, trailers),
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert!(s.is_grpc);
        assert_eq!(s.path.as_deref(), Some("/pkg.Svc/Get"));
        assert_eq!(s.grpc_status, Some(0));
        assert_eq!(s.grpc_message.as_deref(), Some(""));
        assert_eq!(s.request_body_len, 25);
        assert_eq!(s.response_body_len, 35);
        assert_eq!(s.ts_end, 45);
        assert_eq!(
            s.request_headers,
            kept(&[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "1S"),
                ("user-agent", "grpc-go/1.60")
            ])
        );
    }

    #[test]
    fn grpc_trailers_only() {
        let mut c = H2Conn::new();
        let resp = headers(
            1,
            true,
            &block(
                &[
                    H::Idx(8),
                    H::IncN(31, "application/grpc"),
                    H::Inc("grpc-status", "12"),
                    H::Inc("grpc-message", "unknown%20method%3A%20%E2%9C%93 x%2"),
                ],
                false,
            ),
        );
        let evs = vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (
                Egress,
                [grpc_req(1, "/pkg.Svc/Nope"), grpc_msg(1, true, 0)].concat(),
            ),
            (Ingress, resp),
        ];
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Some(200));
        assert_eq!(out[0].grpc_status, Some(12));
        assert_eq!(
            out[0].grpc_message.as_deref(),
            Some("unknown method: \u{2713} x%2")
        );
    }

    #[test]
    fn grpc_server_streaming() {
        let mut c = H2Conn::new();
        let mut evs = vec![
            (Egress, client_preface()),
            (Ingress, server_preface()),
            (
                Egress,
                [grpc_req(1, "/pkg.Svc/Watch"), grpc_msg(1, true, 4)].concat(),
            ),
            (
                Ingress,
                headers(
                    1,
                    false,
                    &block(&[H::Idx(8), H::IncN(31, "application/grpc+proto")], false),
                ),
            ),
        ];
        for _ in 0..50 {
            evs.push((Ingress, grpc_msg(1, false, 10)));
        }
        evs.push((
            Ingress,
            headers(1, true, &block(&[H::Inc("grpc-status", "0")], false)),
        ));
        let out = run(&mut c, &evs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].response_body_len, 50 * 15);
        assert_eq!(out[0].grpc_status, Some(0));
        assert!(out[0].is_grpc);
        // Response ended; the request side ending late is harmless.
        assert!(run(&mut c, &[(Egress, data(1, true, 0))]).is_empty());
        assert_eq!(c.stats().lost_streams, 0);
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(grpc_timeout_ns("201m"), Some(201_000_000));
        assert_eq!(grpc_timeout_ns("1S"), Some(1_000_000_000));
        assert_eq!(grpc_timeout_ns("2H"), Some(7_200_000_000_000));
        assert_eq!(grpc_timeout_ns("99999999n"), Some(99_999_999));
        assert_eq!(grpc_timeout_ns("123456789m"), None); // at most 8 digits
        assert_eq!(grpc_timeout_ns("m"), None);
        assert_eq!(grpc_timeout_ns("10x"), None);
        assert_eq!(grpc_timeout_ns("-1S"), None);
        assert_eq!(grpc_timeout_ns(""), None);
    }

    /// A call cancelled (RST_STREAM CANCEL, no trailers) once its grpc-timeout (1S in
    /// `grpc_req`) ran out reports DEADLINE_EXCEEDED; cancelled earlier, or reset with another
    /// code, it has no gRPC status.
    #[test]
    fn grpc_cancel_after_deadline_is_deadline_exceeded() {
        const MS: u64 = 1_000_000;
        let cases = [
            (Egress, CANCEL, 1000 * MS, Some(4)),
            (Ingress, CANCEL, 995 * MS, Some(4)), // within the slack, from the server
            (Egress, CANCEL, 900 * MS, None),     // cancelled before the deadline
            (Egress, 0x2, 1500 * MS, None),       // INTERNAL_ERROR: not a deadline
        ];
        for (dir, code, at, want) in cases {
            let mut c = H2Conn::new();
            let mut out = Vec::new();
            let req = [grpc_req(1, "/pkg.Svc/Slow"), grpc_msg(1, true, 3)].concat();
            let rst = rst(1, code);
            for (d, b, t) in [
                (Egress, client_preface(), 0),
                (Ingress, server_preface(), 0),
                (Egress, req, 0),
                (dir, rst, at),
            ] {
                c.feed(chunk(d, &b, t), &mut out);
            }
            assert_eq!(out.len(), 1, "{code} at {at}");
            assert_eq!(out[0].reset, Some(code));
            assert_eq!(out[0].grpc_status, want, "{code} at {at}");
        }
    }
}
