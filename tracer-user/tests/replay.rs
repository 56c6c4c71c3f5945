//! Golden tests: events recorded from real probes (`tracer run --record`, python http.server,
//! curl, a keep-alive client) replayed through the same code path as live traffic. No root.
//!
//! The fixture was recorded with the script in `fixtures/README.md`; the golden file lists the
//! stable fields of each span (ids and times differ per run).
use std::collections::{BTreeSet, HashMap};

use tracer_common::DataEvent;
use tracer_user::{
    conntrack::{ConnTable, TableOptions},
    events::{ConnId, Event},
    metrics::Registry,
    pipeline::{read_recording, replay},
    process::Processes,
    span::{Span, SpanKind, Status, Value},
};

const RECORDING: &[u8] = include_bytes!("fixtures/python_curl.bin");
const GOLDEN: &str = include_str!("fixtures/python_curl.golden");

fn table() -> ConnTable {
    // The recorded pids mean nothing on this machine: name processes by their recorded comm.
    let root = std::env::temp_dir().join("tracer-replay-no-proc");
    ConnTable::new(
        Processes::new(&root, vec![]),
        &root,
        tracer_user::span::Clock { offset_ns: 0 },
        TableOptions::default(),
        &Registry::default(),
    )
}

/// One line per span: the fields that must not change from run to run.
fn summary(sp: &Span) -> String {
    let a = |k: &str| sp.attr(k).map_or("-".to_string(), Value::to_string);
    format!(
        "{} {} {} {} {} status={} req_body={} resp_body={} error={} parent={} peer_port_known={}{}",
        sp.kind.as_str(),
        sp.resource.service_name,
        a("http.request.method"),
        a("url.path"),
        a("url.query"),
        a("http.response.status_code"),
        a("http.request.body.size"),
        a("http.response.body.size"),
        match &sp.status {
            Status::Unset => "-".to_string(),
            Status::Error(e) => e.clone(),
        },
        // The fixture's one upstream id, sent in a traceparent; other parents are spans of the
        // recording, with ids that differ per run (checked by `joins_are_right`).
        match sp.parent_span_id.map(|p| tracer_user::span::hex(&p)) {
            None => "-".to_string(),
            Some(p) if p == UPSTREAM => p,
            Some(_) => "joined".to_string(),
        },
        sp.attr("network.peer.port").is_some(),
        // A chunked body read in syscalls larger than the capture: its framing was lost.
        if sp.attr("tracer.http.response_end_estimated").is_some() {
            " end_estimated"
        } else {
            ""
        },
    )
}

const UPSTREAM: &str = "00f067aa0ba902b7";

/// Every joined span's parent is the CLIENT span of the same request in the same trace, sent
/// before it.
fn joins_are_right(spans: &[Span]) {
    for (i, sp) in spans.iter().enumerate() {
        let Some(p) = sp.parent_span_id else { continue };
        if tracer_user::span::hex(&p) == UPSTREAM {
            continue;
        }
        let j = spans
            .iter()
            .position(|c| c.span_id == p)
            .unwrap_or_else(|| panic!("parent of {} not exported", summary(sp)));
        let parent = &spans[j];
        assert!(j < i, "parent after child: {}", summary(sp));
        assert_eq!(parent.trace_id, sp.trace_id, "{}", summary(sp));
        assert_eq!((parent.kind, sp.kind), (SpanKind::Client, SpanKind::Server));
        assert_eq!(parent.attr("url.path"), sp.attr("url.path"));
        assert_eq!(parent.attr("url.query"), sp.attr("url.query"));
    }
}

fn records() -> Vec<Vec<u8>> {
    let (recs, truncated) = read_recording(RECORDING).unwrap();
    assert!(!truncated);
    recs
}

#[test]
fn recorded_traffic_gives_the_golden_spans() {
    let mut t = table();
    let spans = replay(&records(), &mut t);
    let got: Vec<String> = spans.iter().map(summary).collect();
    let want: Vec<&str> = GOLDEN.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(got, want, "\ngot:\n{}\n", got.join("\n"));
    for sp in &spans {
        assert!(sp.start_unix_ns < sp.end_unix_ns, "{}", summary(sp));
    }
    joins_are_right(&spans);
    assert_eq!(
        t.join_metrics().links_connection.get(),
        8,
        "every request of a traced client to the traced server, but the one with a traceparent"
    );
    assert_eq!(t.metrics().sequence_gaps.get(), 0);
}

#[test]
fn a_recording_cut_short_keeps_every_whole_record() {
    let (recs, truncated) = read_recording(&RECORDING[..RECORDING.len() - 7]).unwrap();
    assert!(truncated, "the cut must be reported");
    assert_eq!(recs.len(), records().len() - 1);
    let spans = replay(&recs, &mut table());
    // Only the exchange(s) the last record completed can be missing.
    let want: Vec<&str> = GOLDEN.lines().filter(|l| !l.is_empty()).collect();
    let got: Vec<String> = spans.iter().map(summary).collect();
    assert!(
        got.len() + 2 >= want.len() && got.iter().all(|g| want.contains(&g.as_str())),
        "{got:#?}"
    );
}

#[test]
fn lost_records_lose_exchanges_but_never_mispair() {
    let all = records();
    let want: Vec<&str> = GOLDEN.lines().filter(|l| !l.is_empty()).collect();
    // Drop every k-th record, for several k: the kernel ring buffer overflowing.
    for k in [3usize, 5, 7, 11, 13] {
        let kept: Vec<Vec<u8>> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % k != k - 1)
            .map(|(_, r)| r.clone())
            .collect();
        let mut t = table();
        let spans = replay(&kept, &mut t);
        joins_are_right(&spans);
        for sp in &spans {
            let s = summary(sp);
            // A span whose end was lost ends early or as closed-mid-response; its request
            // line, status and peer must still be one that really happened.
            let key = s.split(" status=").next().unwrap();
            assert!(
                want.iter().any(|w| w.starts_with(key)),
                "k={k}: invented span {s}"
            );
            if let Some(Value::Int(code)) = sp.attr("http.response.status_code") {
                assert!(
                    want.iter()
                        .any(|w| w.starts_with(key) && w.contains(&format!("status={code} "))),
                    "k={k}: mispaired {s}"
                );
            }
        }
        assert!(t.metrics().sequence_gaps.get() > 0, "k={k}");
    }
}

/// The connection of each record: its socket fd in its process, and how many connections that
/// fd carried up to it (a CONN record starts one). Connections are decoded independently; only
/// the join links spans across them.
fn connections(recs: &[Vec<u8>]) -> Vec<(ConnId, u32)> {
    let mut carried: HashMap<ConnId, u32> = HashMap::new();
    recs.iter()
        .map(|r| {
            let (id, starts) = match Event::parse(r).expect("the fixture's records parse") {
                Event::Conn(c) => (c.id, true),
                Event::Data(d) => (d.id, false),
                Event::Close { id, .. } | Event::Context { id, .. } => (id, false),
            };
            let n = carried.entry(id).or_default();
            *n += u32::from(starts);
            (id, *n)
        })
        .collect()
}

/// A [`summary`] line with a joined parent shown as none: whether a span is joined depends on
/// the connection of its other end.
fn unjoined(line: &str) -> String {
    line.replace(" parent=joined ", " parent=- ")
}

/// Whether every line of `part` has a line of `whole` that is `same`, each used once.
fn within(part: &[String], whole: &[String], same: impl Fn(&str, &str) -> bool) -> bool {
    let mut left = whole.to_vec();
    part.iter()
        .all(|p| match left.iter().position(|w| same(p, w)) {
            Some(i) => {
                left.swap_remove(i);
                true
            }
            None => false,
        })
}

/// The request (kind, process, method, path, query) and the status of a [`summary`] line.
fn exchange(line: &str) -> (&str, &str) {
    let (request, rest) = line.split_once(" status=").expect("a summary line");
    (request, rest.split(' ').next().unwrap())
}

/// `got` is the exchange `real`: the same request and status, or no status (its response was
/// damaged), never another one.
fn same_exchange(got: &str, real: &str) -> bool {
    let ((req, status), (real_req, real_status)) = (exchange(got), exchange(real));
    req == real_req && (status == real_status || status == "-")
}

#[test]
fn corrupted_payloads_never_panic_or_invent() {
    let all = records();
    let golden: Vec<String> = GOLDEN
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    // Control bytes but HTAB, and DEL: no start line, header or chunk-size line may hold one, so
    // a head they land in is malformed, and nothing read from it may reach a span.
    let damage: Vec<u8> = (0..0x20).filter(|&b| b != b'\t').chain([0x7f]).collect();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    let conns = connections(&all);
    let (mut lost, mut kept_from_damaged) = (0, 0);
    for round in 0..200 {
        // One byte of about every fourth DATA payload; the fixed parts stay valid.
        let mut recs = all.clone();
        let mut damaged = BTreeSet::new();
        for (r, conn) in recs.iter_mut().zip(&conns) {
            let len = match Event::parse(r) {
                Ok(Event::Data(d)) if !d.payload.is_empty() => d.payload.len(),
                _ => continue,
            };
            if next() % 4 == 0 {
                r[size_of::<DataEvent>() + next() % len] = damage[next() % damage.len()];
                damaged.insert(conn);
            }
        }
        let spans = |recs: &[Vec<u8>]| -> Vec<String> {
            let spans = replay(recs, &mut table());
            joins_are_right(&spans);
            spans.iter().map(summary).collect()
        };
        let got = spans(&recs);
        let undamaged: Vec<Vec<u8>> = all
            .iter()
            .zip(&conns)
            .filter(|(_, conn)| !damaged.contains(conn))
            .map(|(r, _)| r.clone())
            .collect();
        let want = spans(&undamaged);
        assert!(
            within(&want, &got, |a, b| unjoined(a) == unjoined(b)),
            "round {round}: spans of undamaged connections are missing\ngot:\n{}\nwant:\n{}",
            got.join("\n"),
            want.join("\n")
        );
        // Spans with a status first, so that one without cannot take their exchange.
        let mut by_status = got.clone();
        by_status.sort_by_key(|s| exchange(s).1 == "-");
        assert!(
            within(&by_status, &golden, same_exchange),
            "round {round}: a span that did not happen\ngot:\n{}",
            got.join("\n")
        );
        lost += golden.len() - got.len();
        kept_from_damaged += got.len() - want.len();
    }
    // Both sides were tested: damage cost spans, and damaged connections still gave some.
    assert!(
        lost > 0 && kept_from_damaged > 0,
        "{lost} {kept_from_damaged}"
    );
}
