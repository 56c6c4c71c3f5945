//! Feeds ring-buffer records through the daemon's real path: `pipeline::process` (that is
//! `events::Event::parse`, then `conntrack::ConnTable::handle`: connections, sequence gaps,
//! both decoders, spans, the joiner), then what the spans become: request metrics, the
//! printer's lines and the OTLP request. Record payloads are what traced processes wrote, and
//! a record of another layout must be refused, not misread; `events::code_loaded` gets each
//! record too.
//!
//! Each record is two control bytes, a length ([`Input::len`]) and its bytes. Control byte 1:
//! bit 0 fixes up the header (padded to its kind's size, `WIRE_VERSION`) with bits 1-2 the
//! kind (CONN, DATA, CLOSE; 3 keeps the bytes'), bits 3-5 the connection (4 pids x 2 fds) and
//! bit 6 a monotonic timestamp; bit 7 makes time pass afterwards (`tick`, `maintain`).
//! Control byte 2 (a fixed-up DATA record): bit 0 `captured` = the payload's length, bit 1 the
//! next sequence number of its connection and direction, bit 2 `len` = captured + a few
//! uncaptured bytes, bits 3-4 the protocol (keep, HTTP/1, HTTP/2, keep), bit 5 the direction
//! (from bit 6). Without the fix-up the bytes go through as they are.
#![no_main]

use std::{collections::HashMap, mem::offset_of, path::PathBuf};

use libfuzzer_sys::fuzz_target;
use tracer_common::{CloseEvent, ConnEvent, DataEvent, EventHeader, WIRE_VERSION, direction, kind};
use tracer_fuzz::Input;
use tracer_user::{
    conntrack::{ConnTable, TableOptions},
    events,
    export::{otlp, printer},
    join::JoinOptions,
    metrics::Registry,
    pipeline,
    process::Processes,
    span::{Clock, SpanOptions},
    spanmetrics::SpanMetrics,
};

fn put<const N: usize>(rec: &mut [u8], at: usize, v: [u8; N]) {
    rec[at..at + N].copy_from_slice(&v);
}

fn get_u32(rec: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(rec[at..at + 4].try_into().unwrap())
}

fn get_u64(rec: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(rec[at..at + 8].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    // A /proc that does not exist: no process is known, spans are named by comm.
    let root = PathBuf::from("/nonexistent/tracer-fuzz-proc");
    let reg = Registry::default();
    let mut input = Input::new(data);
    let o = input.byte().unwrap_or(0);
    let opts = TableOptions {
        spans: SpanOptions {
            keep_query_values: o & 1 != 0,
        },
        ports: if o & 2 != 0 { vec![80, 8080] } else { vec![] },
        trace_own_exports: o & 4 != 0,
        join: JoinOptions {
            hold_ns: if o & 8 != 0 { 0 } else { 1_000_000 },
        },
    };
    let mut table = ConnTable::new(
        Processes::new(&root, vec![]),
        &root,
        Clock { offset_ns: 0 },
        opts,
        &reg,
    );
    let requests = SpanMetrics::new(10, &reg);
    let mut spans = Vec::new();
    let mut seq: HashMap<(u32, u32, u8), u32> = HashMap::new();
    let mut now = 1_000u64;
    while !input.is_empty() {
        let c1 = input.byte().unwrap_or(0);
        let c2 = input.byte().unwrap_or(0);
        let n = input.len();
        let mut rec = input.take(n).to_vec();
        if c1 & 1 != 0 {
            let k = match (c1 >> 1) & 3 {
                0 => Some(kind::CONN),
                1 => Some(kind::DATA),
                2 => Some(kind::CLOSE),
                _ => None,
            };
            let size = match k {
                Some(kind::CONN) => size_of::<ConnEvent>(),
                Some(kind::DATA) => size_of::<DataEvent>(),
                Some(_) => size_of::<CloseEvent>(),
                None => size_of::<EventHeader>(),
            };
            if rec.len() < size {
                rec.resize(size, 0);
            }
            put(
                &mut rec,
                offset_of!(EventHeader, version),
                WIRE_VERSION.to_ne_bytes(),
            );
            if let Some(k) = k {
                put(&mut rec, offset_of!(EventHeader, kind), k.to_ne_bytes());
            }
            let (pid, fd) = (100 + u32::from((c1 >> 3) & 3), 3 + u32::from((c1 >> 5) & 1));
            put(&mut rec, offset_of!(EventHeader, tgid), pid.to_ne_bytes());
            put(&mut rec, offset_of!(EventHeader, fd), fd.to_ne_bytes());
            if c1 & 64 != 0 {
                now += 1_000;
                put(&mut rec, offset_of!(EventHeader, ts_ns), now.to_ne_bytes());
                if k == Some(kind::DATA) {
                    put(
                        &mut rec,
                        offset_of!(DataEvent, ts_enter_ns),
                        (now - 500).to_ne_bytes(),
                    );
                }
            }
            if k == Some(kind::DATA) {
                let payload = (rec.len() - size_of::<DataEvent>()) as u32;
                if c2 & 1 != 0 {
                    put(
                        &mut rec,
                        offset_of!(DataEvent, captured),
                        payload.to_ne_bytes(),
                    );
                }
                if c2 & 32 != 0 {
                    let d = if c2 & 64 != 0 {
                        direction::EGRESS
                    } else {
                        direction::INGRESS
                    };
                    rec[offset_of!(DataEvent, direction)] = d;
                }
                if c2 & 2 != 0 {
                    let d = rec[offset_of!(DataEvent, direction)];
                    let s = seq.entry((pid, fd, d)).or_default();
                    put(&mut rec, offset_of!(DataEvent, seq), s.to_ne_bytes());
                    *s = s.wrapping_add(1);
                }
                if c2 & 4 != 0 {
                    let captured = u64::from(get_u32(&rec, offset_of!(DataEvent, captured)));
                    let len = captured + (get_u64(&rec, offset_of!(DataEvent, len)) & 0xFFF);
                    put(&mut rec, offset_of!(DataEvent, len), len.to_ne_bytes());
                }
                match (c2 >> 3) & 3 {
                    1 => rec[offset_of!(DataEvent, protocol)] = tracer_common::protocol::HTTP1,
                    2 => rec[offset_of!(DataEvent, protocol)] = tracer_common::protocol::HTTP2,
                    _ => {}
                }
            }
        }
        let _ = events::code_loaded(&rec);
        pipeline::process(&rec, &mut table, &mut spans);
        if c1 & 128 != 0 {
            now += u64::from(c2) * 10_000_000;
            table.tick(now, &mut spans);
            table.maintain(now, c2 & 1 != 0);
        }
    }
    table.flush(&mut spans);
    if !spans.is_empty() {
        requests.record(&spans);
        let _ = requests.snapshot();
        for s in &spans {
            let _ = printer::to_line(s);
            let _ = printer::to_json(s);
        }
        let _ = otlp::encode_request(&spans);
    }
});
