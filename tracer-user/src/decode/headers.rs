//! The header fields the decoders keep: one table saying which decoder keeps which, and the
//! names the decoders and span building read them by. Everything else is skipped without
//! allocating (the decoders' hot path), and credentials (Authorization, Cookie, Set-Cookie)
//! never leave a decoder.

pub const HOST: &str = "host";
pub const USER_AGENT: &str = "user-agent";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const B3: &str = "b3";
pub const X_B3_TRACEID: &str = "x-b3-traceid";
pub const X_B3_SPANID: &str = "x-b3-spanid";
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
pub const X_B3_FLAGS: &str = "x-b3-flags";
pub const CONTENT_LENGTH: &str = "content-length";
pub const TRANSFER_ENCODING: &str = "transfer-encoding";
pub const UPGRADE: &str = "upgrade";
pub const CONTENT_TYPE: &str = "content-type";
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Which decoders keep a header.
#[derive(Clone, Copy)]
enum By {
    Both,
    Http1,
    Http2,
}

/// Every kept header, and who keeps it.
const KEPT: [(&str, By); 15] = [
    // What span building reads: server.address (HTTP/2 has :authority instead),
    // user_agent.original, client.address.
    (HOST, By::Http1),
    (USER_AGENT, By::Both),
    (X_FORWARDED_FOR, By::Both),
    // Trace context (crate::context): W3C and B3.
    (TRACEPARENT, By::Both),
    (TRACESTATE, By::Both),
    (B3, By::Both),
    (X_B3_TRACEID, By::Both),
    (X_B3_SPANID, By::Both),
    (X_B3_SAMPLED, By::Both),
    (X_B3_FLAGS, By::Both),
    // HTTP/1 body framing; `Upgrade: h2c` means the connection goes on as HTTP/2.
    (CONTENT_LENGTH, By::Http1),
    (TRANSFER_ENCODING, By::Http1),
    (UPGRADE, By::Http1),
    // gRPC: what marks a call, and its deadline.
    (CONTENT_TYPE, By::Http2),
    (GRPC_TIMEOUT, By::Http2),
];

const fn keeps(by: By, http2: bool) -> bool {
    matches!(
        (by, http2),
        (By::Both, _) | (By::Http1, false) | (By::Http2, true)
    )
}

const fn count(http2: bool) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < KEPT.len() {
        if keeps(KEPT[i].1, http2) {
            n += 1;
        }
        i += 1;
    }
    n
}

const fn names<const N: usize>(http2: bool) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut n, mut i) = (0, 0);
    while i < KEPT.len() {
        if keeps(KEPT[i].1, http2) {
            out[n] = KEPT[i].0;
            n += 1;
        }
        i += 1;
    }
    out
}

const HTTP1_NAMES: [&str; count(false)] = names(false);
const HTTP2_NAMES: [&str; count(true)] = names(true);
/// What the HTTP/1 decoder keeps (lowercase; names on the wire match case-insensitively).
pub const HTTP1: &[&str] = &HTTP1_NAMES;
/// What the HTTP/2 decoder keeps (HPACK names are lowercase).
pub const HTTP2: &[&str] = &HTTP2_NAMES;

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(names: &[&'static str]) -> Vec<&'static str> {
        let mut v = names.to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn each_decoder_keeps_its_own_set() {
        let trace = [
            "b3",
            "traceparent",
            "tracestate",
            "x-b3-flags",
            "x-b3-sampled",
            "x-b3-spanid",
            "x-b3-traceid",
        ];
        let both = [&trace[..], &["user-agent", "x-forwarded-for"]].concat();
        let http1 = [
            &both[..],
            &["content-length", "host", "transfer-encoding", "upgrade"],
        ]
        .concat();
        let http2 = [&both[..], &["content-type", "grpc-timeout"]].concat();
        assert_eq!(sorted(HTTP1), sorted(&http1));
        assert_eq!(sorted(HTTP2), sorted(&http2));
    }

    #[test]
    fn credentials_are_never_kept() {
        for name in [
            "authorization",
            "cookie",
            "set-cookie",
            "proxy-authorization",
        ] {
            assert!(!HTTP1.contains(&name) && !HTTP2.contains(&name), "{name}");
        }
    }
}
