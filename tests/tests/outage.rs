//! Outages and overload, end to end and bounded in time: the collector gone under load and
//! back, and a flood of malformed HTTP on a traced port. The daemon keeps running, counts what
//! it drops by reason, and its memory stays bounded by its queues.
use std::{
    io::Write,
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tracer_tests::*;

/// Spans dropped while the collector is down before it comes back (at the ~5-10k spans/s
/// these machines trace, tens of seconds).
const DROPPED_WHILE_DOWN: f64 = 150_000.0;

/// How much the tracer's resident memory may grow once its export queue is full: the queue is
/// bounded (8 MiB here), so what grows past it is a leak.
const RSS_SLACK_KIB: u64 = 32 * 1024;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn metrics(t: &Tracer) -> String {
    let (code, body) = t.admin("GET", "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

fn dropped(m: &str) -> f64 {
    series_sum(m, "tracer_spans_dropped_total", &[])
}

fn exported(m: &str) -> f64 {
    metric(m, "tracer_spans_exported_total").unwrap_or(0.0)
}

/// h2load sending HTTP/1.1 requests to `port` on 4 keep-alive connections until killed.
fn load(port: u16) -> Child {
    Command::new("h2load")
        .args(["--h1", "-c", "4", "-m", "1", "-D", "600"])
        .arg(format!("http://127.0.0.1:{port}/ok"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("h2load")
}

/// The collector dies under load and comes back minutes later on the same address: export
/// failures are counted and readyz says so, the queue stays within its memory, and when the
/// collector is back the export resumes by itself and readyz recovers. At the end every span
/// built is exported or dropped by reason.
#[test]
fn the_collector_down_under_load_and_back() {
    let Some(_g) = setup() else { return };
    if !require("h2load (Debian nghttp2-client)", which("h2load").is_some())
        || !require("nginx (Debian nginx)", which("nginx").is_some())
    {
        return;
    }
    let Some(agent) = rotel_agent() else {
        require("rotel (pip install rotel; `cargo xtask setup`)", false);
        return;
    };
    let dir = TempDir::new("outage");
    let web = nginx(&dir);
    let collector = Collector::start_logging(&agent, &[]);
    let (grpc, http) = (collector.grpc_port, collector.http_port);
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let port = web.port().to_string();
    let tracer = Tracer::start_with(
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--export-queue-mib",
            "8",
            "--port",
            &port,
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
        false,
    );
    let mut h2load = load(web.port());
    let ready = |t: &Tracer| t.admin("GET", "/readyz").0;

    assert!(
        wait_until(Duration::from_secs(60), || exported(&metrics(&tracer))
            >= 20_000.0),
        "spans are not exported under load:\n{}",
        metrics(&tracer)
    );
    assert_eq!(ready(&tracer), 200);

    drop(collector);
    let down = std::time::Instant::now();
    let before = dropped(&metrics(&tracer));
    assert!(
        wait_until(Duration::from_secs(60), || ready(&tracer) == 503),
        "readyz stays ready with the collector gone:\n{}",
        metrics(&tracer)
    );
    // Once spans are dropped because the queue is full, it is as big as it gets.
    assert!(
        wait_until(Duration::from_secs(120), || {
            series_sum(
                &metrics(&tracer),
                "tracer_spans_dropped_total",
                &[("reason", "export_queue_full")],
            ) > 0.0
        }),
        "the export queue never filled:\n{}",
        metrics(&tracer)
    );
    let rss_full = rss_kib(tracer.pid());
    assert!(
        wait_until(Duration::from_secs(240), || dropped(&metrics(&tracer))
            >= before + DROPPED_WHILE_DOWN),
        "fewer than {DROPPED_WHILE_DOWN} spans dropped while the collector was down:\n{}",
        metrics(&tracer)
    );
    let rss_down = rss_kib(tracer.pid());
    assert!(
        rss_down <= rss_full + RSS_SLACK_KIB,
        "the tracer's RSS grew from {rss_full} to {rss_down} KiB while its queue was full"
    );
    let m = metrics(&tracer);
    assert!(
        series_sum(
            &m,
            "tracer_spans_dropped_total",
            &[("reason", "export_failed")]
        ) > 0.0,
        "no export failures counted with the collector gone:\n{m}"
    );

    let at_return = exported(&m);
    let down_for = down.elapsed();
    let collector = Collector::start_on(&agent, &[], grpc, http);
    assert!(
        wait_until(Duration::from_secs(120), || exported(&metrics(&tracer))
            >= at_return + 20_000.0),
        "export did not resume with the collector back:\n{}",
        metrics(&tracer)
    );
    assert!(
        wait_until(Duration::from_secs(30), || ready(&tracer) == 200),
        "readyz did not recover with the collector back"
    );
    h2load.kill().ok();
    h2load.wait().ok();
    let stopped = tracer.stop_full();
    let line = counters_line(&stopped.stderr).expect("counters line");
    let built = counter(line, "spans_built_total");
    let out = counter(line, "spans_exported_total")
        + line
            .split_whitespace()
            .filter(|c| c.starts_with("spans_dropped_total{"))
            .map(|c| c.rsplit('=').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
    assert_eq!(
        built, out,
        "spans built and spans exported or dropped: {line}"
    );
    eprintln!(
        "outage: collector down {down_for:?}; RSS {rss_full} KiB with the queue full, {rss_down} KiB {DROPPED_WHILE_DOWN} drops later; {line}"
    );
    drop(collector);
}

/// Junk a traced server receives, none of it a request: bytes that are no HTTP, a request
/// line longer than the capture, a header line without a colon, an HTTP/2 preface followed by
/// garbage frames, a response sent as a request, a method of symbols. (A request cut short by
/// its client closing is a request: its span says the connection closed before a response.)
fn junk(i: usize) -> Vec<u8> {
    let x = i as u8;
    match i % 6 {
        0 => (0..512).map(|j| (j as u8).wrapping_mul(31) ^ x).collect(),
        1 => [&b"GET /"[..], &vec![b'a'; 16 * 1024], b" HTTP/1.1\r\n\r\n"].concat(),
        2 => b"GET /c HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        3 => [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            &[0xff; 64],
            &[x; 64],
        ]
        .concat(),
        4 => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        _ => [&b"G\x00T /\x01 HTTP/9.9\r\n"[..], &[b':'; 300], b"\r\n\r\n"].concat(),
    }
}

/// A flood of malformed traffic on a traced port (nginx, which answers each with a 400 and
/// closes): the tracer counts it, builds no span of it, keeps running, and traces the next
/// well-formed request exactly.
#[test]
fn a_flood_of_malformed_http_is_counted_and_tracing_goes_on() {
    let Some(_g) = setup_with_curl() else { return };
    if !require("nginx (Debian nginx)", which("nginx").is_some()) {
        return;
    }
    let dir = TempDir::new("flood");
    let web = nginx(&dir);
    let tracer = Tracer::start(&["--port", &web.port().to_string()]);
    const FLOOD: usize = 3_000;
    for i in 0..FLOOD {
        if let Ok(mut s) = TcpStream::connect(localhost(web.port())) {
            let _ = s.write_all(&junk(i));
        }
    }
    let counted = |m: &str| {
        ["malformed", "resyncs", "orphan_responses"]
            .iter()
            .map(|r| metric(m, &format!("tracer_decode_{r}_total")).unwrap_or(0.0))
            .sum::<f64>()
    };
    assert!(
        wait_until(Duration::from_secs(60), || counted(&metrics(&tracer))
            >= FLOOD as f64 / 2.0),
        "the junk was not counted as malformed:\n{}",
        metrics(&tracer)
    );
    let ok = curl(&[&format!("http://127.0.0.1:{}/ok", web.port())]);
    assert_eq!(ok.http_code, 200);
    let stopped = tracer.stop_full();
    let servers = of_kind(&stopped.spans, "SERVER");
    assert_eq!(
        servers.len(),
        1,
        "only the well-formed request is a server span:\n{}",
        pretty(&servers)
    );
    assert_eq!(attr_str(servers[0], "url.path"), Some("/ok"));
    assert_eq!(attr_u64(servers[0], "http.response.status_code"), Some(200));
    assert_eq!(of_kind_pid(&stopped.spans, "CLIENT", ok.pid).len(), 1);
    eprintln!(
        "flood: {}",
        counters_line(&stopped.stderr).unwrap_or("no counters line")
    );
}

/// Every span whose path names a status (`/status/NNN`) carries that status: a request paired
/// with another request's response would not.
fn assert_paired(spans: &[Value]) {
    for s in spans {
        if let Some(code) = attr_str(s, "url.path").and_then(|p| p.strip_prefix("/status/")) {
            assert_eq!(
                attr_u64(s, "http.response.status_code").map(|c| c.to_string()),
                Some(code.to_string()),
                "a request paired with another's response: {s}"
            );
        }
    }
}

/// The ring buffer made to overflow: while the tracer is stopped (SIGSTOP), a keep-alive
/// client downloads more than the 1 MiB ring holds, so the probes find it full. The records
/// lost are counted, no span pairs a request with another's response, and the requests after
/// the tracer resumes are all spans.
#[test]
fn a_ring_buffer_overflow_is_counted_and_no_span_is_mis_paired() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let port = server.port();
    let tracer = Tracer::start(&["--port", &port.to_string(), "--ring-buffer-mib", "1"]);
    tracer.signal(libc::SIGSTOP);
    let during = KeepAliveClient::spawn(port, 40, &["/big?bytes=1000000"]).finish();
    assert_eq!(during.len(), 40);
    let mixed = KeepAliveClient::spawn(port, 8, &["/status/203"]).finish();
    assert_eq!(mixed.len(), 8);
    tracer.signal(libc::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(30), || {
            metric(&metrics(&tracer), "tracer_events_lost_total").unwrap_or(0.0) > 0.0
        }),
        "the ring never overflowed:\n{}",
        metrics(&tracer)
    );
    let codes = ["201", "404", "503"];
    let mut clients = Vec::new();
    for code in codes {
        let c = KeepAliveClient::spawn(port, 5, &[&format!("/status/{code}")]);
        clients.push((code, c.pid(), c.finish()));
    }
    let spans = tracer.stop();
    assert_paired(&spans);
    for (code, pid, done) in clients {
        assert_eq!(done.len(), 5);
        let path = format!("/status/{code}");
        let of = |kind: &str, pid: u32| {
            of_kind_pid(&spans, kind, pid)
                .into_iter()
                .filter(|s| attr_str(s, "url.path") == Some(&path[..]))
                .count()
        };
        assert_eq!(
            of("CLIENT", pid),
            5,
            "{path} after the overflow, client spans"
        );
        assert_eq!(
            of("SERVER", server.pid()),
            5,
            "{path} after the overflow, server spans"
        );
    }
}
