//! Userspace cost per request, stage by stage, for an HTTP/1.1 and an HTTP/2 (h2c) workload:
//! ring-buffer records -> decoded exchange (decoder only) -> span (span builder) -> OTLP
//! bytes, and the whole path records -> OTLP bytes through the connection table (which joins
//! the spans into traces); then the joiner alone, on client/server pairs it links.
//! `cargo bench -p tracer-benches --bench pipeline`
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tracer_user::{
    conntrack::{ConnTable, TableOptions},
    decode::{Chunk, Direction, http1::Http1Conn, http2::H2Conn},
    events::{ConnId, Dir, Event, Role, encode},
    export::otlp,
    metrics::Registry,
    pipeline,
    process::Processes,
    span::{self, Clock, ConnInfo, Resource, Span, SpanOptions},
};

/// Requests per iteration, all on one keep-alive connection.
const N: u32 = 1000;
const ID: ConnId = ConnId { pid: 1, fd: 9 };
const COMM: &str = "nginx";
const PEER: &str = "127.0.0.1:40000";
const BODY: u64 = 612;

const REQ: &[u8] = b"GET /api/users/123?page=2 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 612\r\nConnection: keep-alive\r\n\r\n";

fn conn_record() -> Vec<u8> {
    encode::conn(ID, 0, Role::Accepted, Some(PEER.parse().unwrap()), COMM)
}

/// `n` keep-alive exchanges on one server connection, as the probes would record them
/// (response headers in one write, the 612-byte body counted by a sendfile).
fn http1_records(n: u32) -> Vec<Vec<u8>> {
    let mut v = vec![conn_record()];
    for i in 0..n {
        let t = i as u64 * 1000;
        let data =
            |seq, dir, ts, len, bytes: &[u8]| encode::data(ID, seq, dir, ts, len, bytes, COMM);
        v.push(data(i, Dir::Ingress, (t, t + 1), REQ.len() as u64, REQ));
        v.push(data(
            2 * i,
            Dir::Egress,
            (t + 2, t + 3),
            RESP.len() as u64,
            RESP,
        ));
        v.push(data(2 * i + 1, Dir::Egress, (t + 4, t + 5), BODY, &[]));
    }
    v
}

fn h2_frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend([ty, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
}

/// HPACK "literal without indexing" with a static-table name (RFC 7541 6.2.2), plain string.
fn hpack_literal(out: &mut Vec<u8>, name_index: u8, value: &str) {
    if name_index < 15 {
        out.push(name_index);
    } else {
        out.extend([0x0f, name_index - 15]);
    }
    out.push(value.len() as u8);
    out.extend(value.as_bytes());
}

/// An h2load-like GET and nghttpd-like answer per stream: `:method GET`, `:scheme http`,
/// path, authority, user-agent, accept; `:status 200`, server, content-type, content-length.
fn h2_blocks() -> (Vec<u8>, Vec<u8>) {
    let mut req = vec![0x82, 0x86];
    hpack_literal(&mut req, 4, "/api/users/123?page=2");
    hpack_literal(&mut req, 1, "localhost:8080");
    hpack_literal(&mut req, 58, "h2load nghttp2/1.64.0");
    hpack_literal(&mut req, 19, "*/*");
    let mut resp = vec![0x88];
    hpack_literal(&mut resp, 54, "nghttpd nghttp2/1.64.0");
    hpack_literal(&mut resp, 31, "text/html");
    hpack_literal(&mut resp, 28, &BODY.to_string());
    (req, resp)
}

/// `n` streams on one h2c server connection, recorded as the probes' frame walk makes it: one
/// read per request (HEADERS with END_STREAM), one write per response (HEADERS, then DATA
/// whose 612-byte payload is counted, not copied).
fn h2_records(n: u32) -> Vec<Vec<u8>> {
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;
    let rec = |seq, dir, t: u64, len, bytes: &[u8]| {
        let r = encode::data(ID, seq, dir, (t, t + 1), len, bytes, COMM);
        encode::h2_frames(r, Some((0, 0)), false)
    };
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut preface, SETTINGS, 0, 0, &[]);
    let mut server_settings = Vec::new();
    h2_frame(&mut server_settings, SETTINGS, 0, 0, &[]);
    h2_frame(&mut server_settings, SETTINGS, 1, 0, &[]);
    let mut ack = Vec::new();
    h2_frame(&mut ack, SETTINGS, 1, 0, &[]);
    let mut v = vec![
        conn_record(),
        rec(0, Dir::Ingress, 0, preface.len() as u64, &preface),
        rec(
            0,
            Dir::Egress,
            1,
            server_settings.len() as u64,
            &server_settings,
        ),
        rec(1, Dir::Ingress, 2, ack.len() as u64, &ack),
    ];
    let (req_block, resp_block) = h2_blocks();
    for i in 0..n {
        let (t, stream) = (10 + i as u64 * 1000, 2 * i + 1);
        let mut req = Vec::new();
        h2_frame(
            &mut req,
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &req_block,
        );
        v.push(rec(2 + i, Dir::Ingress, t, req.len() as u64, &req));
        let mut resp = Vec::new();
        h2_frame(&mut resp, HEADERS, END_HEADERS, stream, &resp_block);
        // DATA frame header: length 612, END_STREAM; the payload is not captured.
        resp.extend(&(BODY as u32).to_be_bytes()[1..]);
        resp.extend([0, END_STREAM]);
        resp.extend(stream.to_be_bytes());
        v.push(rec(
            1 + i,
            Dir::Egress,
            t + 2,
            resp.len() as u64 + BODY,
            &resp,
        ));
    }
    v
}

/// The DATA records as decoder chunks, with the byte times the connection table gives them.
fn chunks(records: &[Vec<u8>]) -> impl Iterator<Item = Chunk<'_>> {
    records
        .iter()
        .filter_map(|r| match Event::parse(r).unwrap() {
            Event::Data(d) => Some(Chunk {
                tid: d.tid,
                dir: match d.dir {
                    Dir::Ingress => Direction::Ingress,
                    Dir::Egress => Direction::Egress,
                },
                len: d.len,
                data: d.payload,
                layout: d.layout,
                ts_start: match d.dir {
                    Dir::Ingress => d.ts_exit_ns,
                    Dir::Egress => d.ts_enter_ns,
                },
                ts_end: d.ts_exit_ns,
            }),
            _ => None,
        })
}

fn table() -> ConnTable {
    let root = std::env::temp_dir().join("tracer-bench-no-proc");
    ConnTable::new(
        Processes::new(&root, vec![]),
        &root,
        Clock::now(),
        TableOptions::default(),
        &Registry::default(),
    )
}

fn resource() -> Arc<Resource> {
    let root = std::env::temp_dir().join("tracer-bench-no-proc");
    Processes::new(&root, vec![]).resource(ID.pid, COMM)
}

fn conn_info() -> ConnInfo {
    ConnInfo {
        peer: Some(PEER.parse().unwrap()),
        local: None,
        tls: false,
    }
}

/// The stages of one protocol's workload: `decode` (records -> what the decoder completes),
/// `span` (those -> spans), `otlp` (spans -> bytes); then through the connection table, as
/// the daemon runs it: `records_to_spans` and the whole path `records_to_otlp`.
fn stages<T: Clone>(
    c: &mut Criterion,
    proto: &str,
    records: &[Vec<u8>],
    decode: impl Fn(&[Vec<u8>]) -> Vec<T>,
    build: impl Fn(T, &ConnInfo, &Arc<Resource>) -> Span,
) {
    let mut g = c.benchmark_group(proto);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("decode_per_request", |b| {
        b.iter(|| {
            let done = decode(records);
            assert_eq!(done.len(), N as usize);
            done
        })
    });
    let done = decode(records);
    let (info, res) = (conn_info(), resource());
    g.bench_function("span_per_request", |b| {
        b.iter_batched(
            || done.clone(),
            |done| {
                done.into_iter()
                    .map(|d| build(d, &info, &res))
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });
    let spans = pipeline::replay(records, &mut table());
    assert_eq!(spans.len(), N as usize);
    g.bench_function("otlp_per_span", |b| b.iter(|| otlp::encode_request(&spans)));
    // One table for every iteration, as the daemon keeps one: each replay begins with the
    // CONN record, which starts the connection afresh.
    let mut t = table();
    g.bench_function("records_to_spans_per_request", |b| {
        b.iter(|| pipeline::replay(records, &mut t))
    });
    g.bench_function("records_to_otlp_per_request", |b| {
        b.iter(|| {
            let spans = pipeline::replay(records, &mut t);
            assert_eq!(spans.len(), N as usize);
            otlp::encode_request(&spans)
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let opts = SpanOptions::default();
    let clock = Clock::now();
    stages(
        c,
        "http1",
        &http1_records(N),
        |recs| {
            let (mut dec, mut out) = (Http1Conn::new(), Vec::new());
            chunks(recs).for_each(|ch| dec.feed(ch, &mut out));
            out
        },
        |ex, info, res| span::build(ex, info, res, clock, &opts),
    );
    stages(
        c,
        "h2c",
        &h2_records(N),
        |recs| {
            let (mut dec, mut out) = (H2Conn::new(), Vec::new());
            chunks(recs).for_each(|ch| dec.feed(ch, &mut out));
            out
        },
        |st, info, res| span::build_h2(st, info, res, clock, &opts),
    );
}

/// The joiner alone: `N` requests whose client and server ends are both on this node, each
/// opened on both ends, ended, linked and released (its cost per span is half a pair's).
fn join(c: &mut Criterion) {
    use tracer_user::{
        decode::{RequestKey, Role as End},
        join::{Begin, End as Done, JoinMetrics, JoinOptions, Joiner, PeerKey},
    };
    let m = JoinMetrics::new(&Registry::default());
    let template = pipeline::replay(&http1_records(1), &mut table()).remove(0);
    let mut g = c.benchmark_group("join");
    g.throughput(Throughput::Elements(2 * N as u64));
    let mut j = Joiner::new(JoinOptions::default());
    let mut t0 = 0u64;
    g.bench_function("join_per_span", |b| {
        b.iter_batched(
            || vec![template.clone(); 2 * N as usize],
            |mut spans| {
                let mut out = Vec::with_capacity(spans.len());
                for i in 0..N {
                    t0 += 10_000;
                    let request = RequestKey::Http1(u64::from(i));
                    let client = ConnId { pid: 2, fd: 5 };
                    let server = ConnId { pid: 1, fd: 9 };
                    let peer = Some(PeerKey {
                        client: PEER.parse().unwrap(),
                        netns: 1,
                        request,
                    });
                    for (conn, role) in [(client, End::Client), (server, End::Server)] {
                        j.open(
                            Begin {
                                conn,
                                request,
                                role,
                                tid: conn.pid,
                                ts: t0,
                                context: None,
                                peer,
                                serves_on_thread: role == End::Server,
                            },
                            &m,
                        );
                    }
                    for conn in [server, client] {
                        let span = spans.pop();
                        let response_tid = Some(conn.pid);
                        j.end(
                            Done {
                                conn,
                                request,
                                ts_end: t0 + 5_000,
                                response_tid,
                                span,
                            },
                            &m,
                            &mut out,
                        );
                    }
                }
                // Forgets what ended (the hold passed): the table stays small, as it does live.
                j.tick(t0 + 2 * JoinOptions::default().hold_ns, &m, &mut out);
                t0 += 2 * JoinOptions::default().hold_ns;
                assert_eq!(out.len(), 2 * N as usize);
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench, join);
criterion_main!(benches);
