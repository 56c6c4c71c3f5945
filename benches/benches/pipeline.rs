//! Userspace cost per request: ring-buffer records -> decoder -> span, and span -> OTLP bytes.
//! `cargo bench -p tracer-benches`
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use tracer_user::{
    conntrack::{ConnTable, TableOptions},
    events::{ConnId, Dir, Role, encode},
    export::otlp,
    metrics::Metrics,
    pipeline,
    process::Processes,
    span::Clock,
};

const REQ: &[u8] = b"GET /api/users/123?page=2 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 612\r\nConnection: keep-alive\r\n\r\n";

/// `n` keep-alive exchanges on one server connection, as the probes would record them
/// (response headers in one write, the 612-byte body counted by a sendfile).
fn records(n: u32) -> Vec<Vec<u8>> {
    let id = ConnId { pid: 1, fd: 9 };
    let mut v = vec![encode::conn(
        id,
        0,
        Role::Accepted,
        Some("127.0.0.1:40000".parse().unwrap()),
        "nginx",
    )];
    for i in 0..n {
        let t = i as u64 * 1000;
        v.push(encode::data(
            id,
            i,
            Dir::Ingress,
            (t, t + 1),
            REQ.len() as u64,
            REQ,
            "nginx",
        ));
        v.push(encode::data(
            id,
            2 * i,
            Dir::Egress,
            (t + 2, t + 3),
            RESP.len() as u64,
            RESP,
            "nginx",
        ));
        v.push(encode::data(
            id,
            2 * i + 1,
            Dir::Egress,
            (t + 4, t + 5),
            612,
            &[],
            "nginx",
        ));
    }
    v
}

fn table(m: &Arc<Metrics>) -> ConnTable {
    let root = std::env::temp_dir().join("tracer-bench-no-proc");
    ConnTable::new(
        Processes::new(&root, vec![]),
        &root,
        Clock::now(),
        TableOptions::default(),
        m.clone(),
    )
}

fn bench(c: &mut Criterion) {
    const N: u32 = 1000;
    let recs = records(N);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("records_to_spans_per_request", |b| {
        let m = Arc::new(Metrics::default());
        b.iter_batched(
            || table(&m),
            |mut t| {
                let spans = pipeline::replay(&recs, &mut t, &m);
                assert_eq!(spans.len(), N as usize);
                spans
            },
            BatchSize::SmallInput,
        )
    });
    let m = Arc::new(Metrics::default());
    let spans = pipeline::replay(&recs, &mut table(&m), &m);
    g.bench_function("spans_to_otlp_bytes_per_span", |b| {
        b.iter_batched(
            || spans.clone(),
            |s| otlp::request(s).encode_to_vec(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
