//! Incoming trace context: what a request's headers say about the trace it belongs to. W3C
//! `traceparent` (with `tracestate`) wins; B3, single `b3` header or the `X-B3-*` set, is
//! accepted when there is no valid `traceparent`.
use crate::decode::{
    Header,
    headers::{B3, TRACEPARENT, TRACESTATE, X_B3_FLAGS, X_B3_SAMPLED, X_B3_SPANID, X_B3_TRACEID},
};

/// The upstream span a request continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
}

/// What the upstream said: its span (when it named one), whether it sampled, and the W3C
/// `tracestate` to carry on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// None for a B3 decision without ids (`b3: 0`).
    pub ids: Option<Ids>,
    pub sampled: bool,
    pub state: Option<String>,
}

/// Ids the tracer wrote into an outgoing request itself (`--propagate`): what the server
/// received as its parent, so the CLIENT span takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    /// The trace is that of the request the writing thread was serving, as the probes saw it.
    pub from_thread: bool,
}

/// W3C trace-flags bit 0.
pub const SAMPLED: u8 = 1;

impl TraceContext {
    /// Trace flags as W3C writes them.
    pub fn flags(&self) -> u8 {
        if self.sampled { SAMPLED } else { 0 }
    }

    /// The context the headers carry, if any valid one.
    pub fn from_headers(headers: &[Header]) -> Option<Self> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(ctx) = get(TRACEPARENT).and_then(parse_traceparent) {
            // tracestate only means something next to a valid traceparent.
            let state = get(TRACESTATE)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            return Some(TraceContext { state, ..ctx });
        }
        if let Some(v) = get(B3) {
            return parse_b3_single(v);
        }
        parse_b3_multi(
            get(X_B3_TRACEID),
            get(X_B3_SPANID),
            get(X_B3_SAMPLED),
            get(X_B3_FLAGS),
        )
    }
}

/// Lowercase hex of exactly `out.len() * 2` digits; `upper` also takes A-F (B3 is lenient).
fn hex_into(s: &str, out: &mut [u8], upper: bool) -> Option<()> {
    let ok = |b: u8| {
        b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || (upper && (b'A'..=b'F').contains(&b))
    };
    if s.len() != out.len() * 2 || !s.bytes().all(ok) {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

/// `version-traceid-parentid-flags`; invalid or all-zero ids are ignored, as W3C says.
pub fn parse_traceparent(v: &str) -> Option<TraceContext> {
    let mut parts = v.trim().split('-');
    let (ver, tid, pid, fl) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let mut version = [0u8; 1];
    hex_into(ver, &mut version, false)?;
    // Version ff is forbidden; version 00 has exactly four fields.
    if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
        return None;
    }
    let mut ids = Ids {
        trace_id: [0; 16],
        parent_id: [0; 8],
    };
    hex_into(tid, &mut ids.trace_id, false)?;
    hex_into(pid, &mut ids.parent_id, false)?;
    let mut flags = [0u8; 1];
    hex_into(fl, &mut flags, false)?;
    if ids.trace_id == [0; 16] || ids.parent_id == [0; 8] {
        return None;
    }
    Some(TraceContext {
        ids: Some(ids),
        sampled: flags[0] & SAMPLED != 0,
        state: None,
    })
}

/// A B3 trace id: 32 hex digits, or 16 (a 64-bit id, left-padded with zeros).
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    match s.len() {
        32 => hex_into(s, &mut id, true)?,
        16 => hex_into(s, &mut id[8..], true)?,
        _ => return None,
    }
    (id != [0; 16]).then_some(id)
}

fn b3_span_id(s: &str) -> Option<[u8; 8]> {
    let mut id = [0u8; 8];
    hex_into(s, &mut id, true)?;
    (id != [0; 8]).then_some(id)
}

/// A B3 sampling decision: `1`/`d` (debug) sample, `0` does not; `true`/`false` are old
/// spellings of the `X-B3-Sampled` header.
fn b3_sampled(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or only the decision (`b3: 0`).
fn parse_b3_single(v: &str) -> Option<TraceContext> {
    let v = v.trim();
    let mut parts = v.split('-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        // Only a decision: no upstream span to continue.
        return Some(TraceContext {
            ids: None,
            sampled: b3_sampled(first)?,
            state: None,
        });
    };
    let ids = Ids {
        trace_id: b3_trace_id(first)?,
        parent_id: b3_span_id(span)?,
    };
    let sampled = match parts.next() {
        Some(s) => b3_sampled(s)?,
        // Deferred: the upstream left the decision to us; we trace.
        None => true,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(TraceContext {
        ids: Some(ids),
        sampled,
        state: None,
    })
}

fn parse_b3_multi(
    trace: Option<&str>,
    span: Option<&str>,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<TraceContext> {
    // `X-B3-Flags: 1` is debug, which implies sampled.
    let decision = match (flags.map(str::trim), sampled) {
        (Some("1"), _) => Some(true),
        (_, Some(s)) => Some(b3_sampled(s)?),
        _ => None,
    };
    let ids = match (trace, span) {
        (Some(t), Some(s)) => Some(Ids {
            trace_id: b3_trace_id(t.trim())?,
            parent_id: b3_span_id(s.trim())?,
        }),
        (None, None) => None,
        // Half a context is not one.
        _ => return None,
    };
    if ids.is_none() && decision.is_none() {
        return None;
    }
    Some(TraceContext {
        ids,
        sampled: decision.unwrap_or(true),
        state: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(headers: &[(&'static str, &str)]) -> Option<TraceContext> {
        let h: Vec<Header> = headers
            .iter()
            .map(|(k, v)| ((*k).into(), v.to_string()))
            .collect();
        TraceContext::from_headers(&h)
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn ids(trace: &str, span: &str) -> Option<Ids> {
        let mut i = Ids {
            trace_id: [0; 16],
            parent_id: [0; 8],
        };
        hex_into(trace, &mut i.trace_id, false)?;
        hex_into(span, &mut i.parent_id, false)?;
        Some(i)
    }

    #[test]
    fn traceparent_with_tracestate() {
        let c = ctx(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", " vendor=abc,other=1 "),
        ])
        .unwrap();
        assert_eq!(c.ids, ids(TRACE, SPAN));
        assert!(c.sampled);
        assert_eq!(c.state.as_deref(), Some("vendor=abc,other=1"));
        let unsampled = ctx(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]).unwrap();
        assert!(!unsampled.sampled);
        assert_eq!(unsampled.flags(), 0);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
            // Nor does a tracestate alone make a context.
            assert_eq!(ctx(&[("traceparent", bad), ("tracestate", "a=b")]), None);
        }
        // A future version may carry more fields.
        assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-x")).is_some());
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let c = ctx(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ])
        .unwrap();
        assert_eq!(c.ids, ids(TRACE, SPAN));
        assert!(c.sampled);
    }

    #[test]
    fn b3_single_header() {
        let c = ctx(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )])
        .unwrap();
        assert_eq!(
            c.ids,
            ids("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1")
        );
        assert!(c.sampled);
        // 64-bit trace id, padded; no decision: deferred to us.
        let c = ctx(&[("b3", "a3ce929d0e0e4736-00F067AA0BA902B7")]).unwrap();
        assert_eq!(c.ids, ids("0000000000000000a3ce929d0e0e4736", SPAN));
        assert!(c.sampled);
        let c = ctx(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")]).unwrap();
        assert!(c.sampled, "debug samples");
        // Only a decision.
        assert_eq!(
            ctx(&[("b3", "0")]),
            Some(TraceContext {
                ids: None,
                sampled: false,
                state: None
            })
        );
        for bad in [
            "",
            "x",
            "a3ce929d0e0e4736",
            "a3ce929d0e0e4736-00f067aa0ba902b7-2",
            "a3ce929d0e0e473-00f067aa0ba902b7",
            "0000000000000000-00f067aa0ba902b7",
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-zz",
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90-x",
        ] {
            assert_eq!(ctx(&[("b3", bad)]), None, "{bad:?}");
        }
    }

    #[test]
    fn b3_multiple_headers() {
        let c = ctx(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ])
        .unwrap();
        assert_eq!(
            c.ids,
            ids("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1")
        );
        assert!(!c.sampled);
        let debug = ctx(&[
            ("x-b3-traceid", "80f198ee56343ba8"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ])
        .unwrap();
        assert!(debug.sampled, "debug overrides");
        assert_eq!(
            ctx(&[("x-b3-sampled", "false")]).map(|c| (c.ids, c.sampled)),
            Some((None, false))
        );
        assert_eq!(ctx(&[("x-b3-traceid", "80f198ee56343ba8")]), None, "half");
        assert_eq!(
            ctx(&[("x-b3-traceid", "80f198ee56343ba8"), ("x-b3-spanid", "x")]),
            None
        );
        assert_eq!(ctx(&[]), None);
    }
}
