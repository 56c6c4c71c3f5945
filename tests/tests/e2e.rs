//! End-to-end tests: the real tracer, real kernel probes, real servers and clients.
//!
//! Needs root. Run them one at a time (they also hold a global lock, see `tracer_tests::serial`):
//!
//! ```text
//! cargo build -p tracer-user && cargo test -p tracer-tests -- --test-threads=1
//! ```
//!
//! Every count is exact: spans are selected by the pid of a process the test started (and the
//! test server's port), so traffic of other processes on the host does not matter. Durations are
//! only compared with what the clients measured themselves.
use std::{collections::BTreeSet, fs, process::Command, time::Duration};

use tracer_tests::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// The client span fits in what the client measured around the whole request.
fn assert_fits_client(span: &Value, measured_ns: u64, resolution_ns: u64) {
    assert!(
        duration_ns(span) <= measured_ns + resolution_ns,
        "span lasts {} ns but the client measured {measured_ns} ns for the whole request: {span}",
        duration_ns(span)
    );
}

/// The server handled the request inside the client's exchange, so its span is not longer.
fn assert_server_fits(server: &Value, client: &Value) {
    assert!(
        duration_ns(server) <= duration_ns(client),
        "server span ({} ns) longer than the client span ({} ns):\nserver: {server}\nclient: {client}",
        duration_ns(server),
        duration_ns(client)
    );
}

fn assert_status(span: &Value, code: &str, message: Option<&str>) {
    assert_eq!(status_code(span), code, "status: {span}");
    if let Some(m) = message {
        assert_eq!(
            span["status"]["message"].as_str(),
            Some(m),
            "status: {span}"
        );
        assert_eq!(attr_str(span, "error.type"), Some(m), "error.type: {span}");
    } else {
        assert!(
            attr(span, "error.type").is_null(),
            "error.type on a span that is not an error: {span}"
        );
    }
}

/// Client spans of curl to this port.
fn curl_spans(spans: &[Value], port: u16) -> Vec<&Value> {
    of_port(spans, port)
        .into_iter()
        .filter(|s| kind(s) == "CLIENT" && s["resource"]["service.name"] == "curl")
        .collect()
}

#[test]
fn python_http_server_and_curl() {
    let Some(_g) = setup_with_curl() else { return };
    let www = TempDir::new("www");
    fs::write(www.join("hello.txt"), "hello from the e2e test\n").unwrap();
    let port = free_port();
    let mut cmd = Command::new(python().unwrap());
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .current_dir(www.path());
    let server = Server::spawn(cmd, port);

    let tracer = Tracer::start(&[]);
    let file = curl(&[&server.url("/hello.txt")]);
    let missing = curl(&[&server.url("/missing")]);
    let query = curl(&[&server.url("/?a=1&b=2")]);
    let spans = tracer.stop();

    assert_eq!(file.http_code, 200);
    assert_eq!(file.body, b"hello from the e2e test\n");
    assert_eq!(missing.http_code, 404);
    assert_eq!(query.http_code, 200);

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(servers.len(), 3, "server spans:\n{}", pretty(&servers));
    let clients = curl_spans(&spans, port);
    assert_eq!(clients.len(), 3, "curl spans:\n{}", pretty(&clients));

    let cases = [
        (&file, "/hello.txt", 200, None),
        (&missing, "/missing", 404, None),
        (&query, "/", 200, Some("a=REDACTED&b=REDACTED")),
    ];
    for (c, path, code, q) in cases {
        let s = one_with_path(&servers, path);
        let cl = one_with_path(&clients, path);
        for sp in [s, cl] {
            assert_well_formed(sp);
            assert_eq!(attr_str(sp, "http.request.method"), Some("GET"), "{sp}");
            assert_eq!(
                attr_u64(sp, "http.response.status_code"),
                Some(code),
                "{sp}"
            );
            assert_eq!(attr_str(sp, "url.query"), q, "{sp}");
            assert_eq!(attr_str(sp, "server.address"), Some("127.0.0.1"), "{sp}");
            assert_eq!(attr_u64(sp, "server.port"), Some(port as u64), "{sp}");
            assert_eq!(
                attr_str(sp, "network.protocol.version"),
                Some("1.1"),
                "{sp}"
            );
            assert!(
                attr_str(sp, "user_agent.original").is_some_and(|u| u.starts_with("curl/")),
                "{sp}"
            );
            assert_eq!(
                attr_str(sp, "network.peer.address"),
                Some("127.0.0.1"),
                "{sp}"
            );
        }
        // Server side: the peer is curl's socket, the resource is the python process.
        assert_eq!(attr_str(s, "client.address"), Some("127.0.0.1"), "{s}");
        assert_eq!(
            attr_u64(s, "network.peer.port"),
            Some(c.local_port as u64),
            "server span peer port is not curl's local port: {s}"
        );
        let exe = s["resource"]["process.executable.name"]
            .as_str()
            .unwrap_or("");
        assert!(exe.starts_with("python3"), "{s}");
        assert_eq!(s["resource"]["service.name"].as_str(), Some(exe), "{s}");
        // Client side: curl's own process, the peer is the server.
        assert_eq!(resource_pid(cl), Some(c.pid as u64), "{cl}");
        assert_eq!(attr_u64(cl, "network.peer.port"), Some(port as u64), "{cl}");
        let full = format!(
            "http://127.0.0.1:{port}{path}{}",
            q.map(|q| format!("?{q}")).unwrap_or_default()
        );
        assert_eq!(attr_str(cl, "url.full"), Some(full.as_str()), "{cl}");
        // 4xx is an error for the client only.
        if code == 404 {
            assert_status(cl, "ERROR", Some("404"));
        } else {
            assert_status(cl, "UNSET", None);
        }
        assert_status(s, "UNSET", None);
        assert_fits_client(cl, c.time_total_ns, CURL_RESOLUTION_NS);
        assert_server_fits(s, cl);
    }
}

#[test]
fn keep_alive_one_connection() {
    let Some(_g) = setup() else { return };
    let server = Server::test_server();
    let tracer = Tracer::start(&[]);
    // Distinct paths (query values are redacted, paths are not); 204 has no body at all.
    let client = KeepAliveClient::spawn(server.port(), 5, &["/status/20{i}"]);
    let client_pid = client.pid();
    let reqs = client.finish();
    let spans = tracer.stop();

    assert_eq!(reqs.len(), 5);
    let local_port = reqs[0].local_port;
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.path, format!("/status/20{i}"));
        assert_eq!(r.status, 200 + i as u16);
        assert_eq!(r.local_port, local_port, "the client used one connection");
    }

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(servers.len(), 5, "server spans:\n{}", pretty(&servers));
    let clients = of_kind_pid(&spans, "CLIENT", client_pid);
    assert_eq!(clients.len(), 5, "client spans:\n{}", pretty(&clients));
    for r in &reqs {
        let s = one_with_path(&servers, &r.path);
        let c = one_with_path(&clients, &r.path);
        for sp in [s, c] {
            assert_well_formed(sp);
            assert_eq!(
                attr_u64(sp, "http.response.status_code"),
                Some(r.status as u64),
                "{sp}"
            );
            assert_status(sp, "UNSET", None);
        }
        assert_eq!(
            attr_u64(s, "network.peer.port"),
            Some(local_port as u64),
            "every server span is on the client's one connection: {s}"
        );
        assert_eq!(
            attr_u64(c, "network.peer.port"),
            Some(server.port() as u64),
            "{c}"
        );
        if r.status == 204 {
            assert!(attr(s, "http.response.body.size").is_null(), "{s}");
        } else {
            assert_eq!(attr_u64(s, "http.response.body.size"), Some(11), "{s}");
        }
        // perf_counter_ns brackets the syscalls the span is made of: no resolution slack.
        assert_fits_client(c, r.duration_ns, 0);
        assert_server_fits(s, c);
    }
}

#[test]
fn traceparent_makes_child_spans() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let tracer = Tracer::start(&[]);
    let with = curl(&[
        "-H",
        &format!("traceparent: {TRACEPARENT}"),
        &server.url("/status/200"),
    ]);
    let without = curl(&[&server.url("/status/201")]);
    let spans = tracer.stop();
    assert_eq!((with.http_code, without.http_code), (200, 201));

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(servers.len(), 2, "server spans:\n{}", pretty(&servers));
    let c_with = of_kind_pid(&spans, "CLIENT", with.pid);
    assert_eq!(c_with.len(), 1, "client spans:\n{}", pretty(&c_with));
    let c_without = of_kind_pid(&spans, "CLIENT", without.pid);
    assert_eq!(c_without.len(), 1, "client spans:\n{}", pretty(&c_without));

    // Both sides of the request that carried the header are children of its parent.
    let s_with = one_with_path(&servers, "/status/200");
    for sp in [s_with, c_with[0]] {
        assert_well_formed(sp);
        assert_eq!(sp["trace_id"].as_str(), Some(TRACE_ID), "{sp}");
        assert_eq!(sp["parent_span_id"].as_str(), Some(PARENT_ID), "{sp}");
        assert_ne!(sp["span_id"].as_str(), Some(PARENT_ID), "{sp}");
    }
    assert_ne!(s_with["span_id"], c_with[0]["span_id"]);

    // Without the header: curl's span is a fresh root, and the server's span is its child
    // (both ends of the connection are on this node: the tracer joins them).
    let s_without = one_with_path(&servers, "/status/201");
    for sp in [s_without, c_without[0]] {
        assert_well_formed(sp);
        assert_ne!(sp["trace_id"].as_str(), Some(TRACE_ID), "{sp}");
    }
    assert!(c_without[0]["parent_span_id"].is_null(), "{}", c_without[0]);
    assert_child_across_connection(s_without, c_without[0]);
}

#[test]
fn errors_and_bodies() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let dir = TempDir::new("upload");
    let upload = dir.join("upload.bin");
    fs::write(&upload, vec![b'u'; 2_000_000]).unwrap();
    let data = format!("@{}", upload.display());

    let tracer = Tracer::start(&[]);
    let e500 = curl(&[&server.url("/status/500")]);
    let e404 = curl(&[&server.url("/status/404")]);
    let big = curl(&[&server.url("/big?bytes=3000000")]);
    let chunked = curl(&[&server.url("/chunked?chunks=50&size=1000")]);
    // curl would send `Expect: 100-continue` for a body this large anyway; say it explicitly
    // so the interim 100 response is certain.
    let post = curl(&[
        "--data-binary",
        &data,
        "-H",
        "Expect: 100-continue",
        &server.url("/upload"),
    ]);
    let spans = tracer.stop();

    assert_eq!(e500.http_code, 500);
    assert_eq!(e404.http_code, 404);
    assert_eq!((big.http_code, big.body.len()), (200, 3_000_000));
    assert_eq!((chunked.http_code, chunked.body.len()), (200, 50_000));
    assert_eq!(
        (post.http_code, post.body.as_slice()),
        (200, &b"2000000"[..])
    );

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(servers.len(), 5, "server spans:\n{}", pretty(&servers));
    let paths_seen = paths(&servers);
    for p in ["/status/500", "/status/404", "/big", "/chunked", "/upload"] {
        assert_eq!(
            paths_seen.get(p),
            Some(&1),
            "server spans per path: {paths_seen:?}"
        );
    }

    for (c, path, code) in [
        (&e500, "/status/500", 500),
        (&e404, "/status/404", 404),
        (&big, "/big", 200),
        (&chunked, "/chunked", 200),
        (&post, "/upload", 200),
    ] {
        let s = one_with_path(&servers, path);
        let cs = of_kind_pid(&spans, "CLIENT", c.pid);
        assert_eq!(cs.len(), 1, "curl spans for {path}:\n{}", pretty(&cs));
        let cl = cs[0];
        for sp in [s, cl] {
            assert_well_formed(sp);
            assert_eq!(attr_str(sp, "url.path"), Some(path), "{sp}");
            assert_eq!(
                attr_u64(sp, "http.response.status_code"),
                Some(code),
                "{sp}"
            );
        }
        match code {
            500 => {
                assert_status(s, "ERROR", Some("500"));
                assert_status(cl, "ERROR", Some("500"));
            }
            404 => {
                assert_status(s, "UNSET", None);
                assert_status(cl, "ERROR", Some("404"));
            }
            _ => {
                assert_status(s, "UNSET", None);
                assert_status(cl, "UNSET", None);
            }
        }
        assert_fits_client(cl, c.time_total_ns, CURL_RESOLUTION_NS);
        assert_server_fits(s, cl);
    }

    let s_big = one_with_path(&servers, "/big");
    let c_big = of_kind_pid(&spans, "CLIENT", big.pid)[0];
    for sp in [s_big, c_big] {
        assert_eq!(
            attr_u64(sp, "http.response.body.size"),
            Some(3_000_000),
            "{sp}"
        );
    }
    let s_post = one_with_path(&servers, "/upload");
    let c_post = of_kind_pid(&spans, "CLIENT", post.pid)[0];
    for sp in [s_post, c_post] {
        // The interim `100 Continue` is not the response: one span, POST, final status 200.
        assert_eq!(attr_str(sp, "http.request.method"), Some("POST"), "{sp}");
        assert_eq!(
            attr_u64(sp, "http.request.body.size"),
            Some(2_000_000),
            "{sp}"
        );
        assert_eq!(attr_u64(sp, "http.response.body.size"), Some(7), "{sp}");
    }
}

#[test]
fn connection_open_before_tracer_started() {
    let Some(_g) = setup() else { return };
    let server = Server::test_server();
    let dir = TempDir::new("flag");
    let flag = dir.join("tracer-ready");
    let flag_arg = flag.to_str().unwrap().to_string();
    let mut client = KeepAliveClient::spawn(
        server.port(),
        4,
        &["/status/20{i}", "--wait-file", &flag_arg],
    );
    // The first request is done (and the connection open) before the tracer exists.
    let first = client.next_request();
    assert_eq!((first.path.as_str(), first.status), ("/status/200", 200));

    let tracer = Tracer::start(&[]);
    fs::write(&flag, b"go").unwrap();
    let client_pid = client.pid();
    let rest = client.finish();
    let spans = tracer.stop();

    assert_eq!(rest.len(), 3);
    for (i, r) in rest.iter().enumerate() {
        assert_eq!(r.path, format!("/status/20{}", i + 1));
        assert_eq!(
            r.local_port, first.local_port,
            "the client used one connection"
        );
    }

    // The server's handler thread was already blocked reading the next request when the probes
    // attached: the request it then reads (/status/201) counts like the others. The peer of a
    // connection accepted before the tracer started is still known (the socket knows it).
    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(servers.len(), 3, "server spans:\n{}", pretty(&servers));
    for r in &rest {
        let s = one_with_path(&servers, &r.path);
        assert_well_formed(s);
        assert_eq!(attr_str(s, "client.address"), Some("127.0.0.1"), "{s}");
        assert_eq!(
            attr_u64(s, "network.peer.port"),
            Some(first.local_port as u64),
            "{s}"
        );
        assert_eq!(
            attr_u64(s, "http.response.status_code"),
            Some(r.status as u64),
            "{s}"
        );
    }
    // The client's side of the same connection is just as traceable.
    let clients = of_kind_pid(&spans, "CLIENT", client_pid);
    assert_eq!(clients.len(), 3, "client spans:\n{}", pretty(&clients));
    for r in &rest {
        let c = one_with_path(&clients, &r.path);
        assert_well_formed(c);
        assert_eq!(
            attr_u64(c, "network.peer.port"),
            Some(server.port() as u64),
            "{c}"
        );
        assert_eq!(
            attr_u64(c, "http.response.status_code"),
            Some(r.status as u64),
            "{c}"
        );
        assert_fits_client(c, r.duration_ns, 0);
        assert_server_fits(one_with_path(&servers, &r.path), c);
    }
}

#[test]
fn many_short_connections() {
    let Some(_g) = setup_with_curl() else { return };
    const N: usize = 200;
    let server = Server::test_server();
    let tracer = Tracer::start(&[]);
    // One curl, 200 URLs (glob); `Connection: close` makes every request a new connection.
    let url = server.url(&format!("/status/200?i=[1-{N}]"));
    let out = Command::new("curl")
        .args(["-sS", "-H", "Connection: close"])
        .args(["-w", "\n@@ %{http_code} %{local_port}\n"])
        .arg(&url)
        .output()
        .expect("curl");
    let stopped = tracer.stop_full();
    assert!(out.status.success(), "curl failed: {out:?}");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut local_ports = BTreeSet::new();
    let mut n = 0;
    for l in stdout.lines().filter_map(|l| l.strip_prefix("@@ ")) {
        let (code, lport) = l.split_once(' ').unwrap();
        assert_eq!(code, "200");
        local_ports.insert(lport.parse::<u64>().unwrap());
        n += 1;
    }
    assert_eq!(n, N);
    assert_eq!(local_ports.len(), N, "curl reused a connection");

    let spans = &stopped.spans;
    let servers = of_kind_pid(spans, "SERVER", server.pid());
    assert_eq!(servers.len(), N, "server spans");
    let peer_ports: BTreeSet<u64> = servers
        .iter()
        .map(|s| attr_u64(s, "network.peer.port").unwrap())
        .collect();
    assert_eq!(peer_ports, local_ports, "one server span per connection");
    for s in &servers {
        assert_well_formed(s);
        assert_eq!(attr_str(s, "url.path"), Some("/status/200"), "{s}");
        assert_eq!(attr_u64(s, "http.response.status_code"), Some(200), "{s}");
    }
    let clients: Vec<&Value> = curl_spans(spans, server.port());
    assert_eq!(clients.len(), N, "curl spans");

    let counters = counters_line(&stopped.stderr)
        .unwrap_or_else(|| panic!("no counters line in the log:\n{}", stopped.stderr));
    assert!(
        !counters.contains("events_lost_total"),
        "the tracer lost events: {counters}"
    );
}

#[test]
fn garbage_on_http_port() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let port = server.port();
    let mut tracer = Tracer::start(&[]);

    // Random binary bytes (fixed seed: reproducible, and they do not start with a method).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert!(!random[0].is_ascii_alphabetic());
    // Each blob reaches the server, which rejects it with a 400 and closes: output the tracer
    // sees without any request it could decode.
    let rejected = |reply: Vec<u8>| {
        let r = String::from_utf8_lossy(&reply).into_owned();
        // Without a parsable version http.server answers HTTP/0.9-style: the error page only.
        assert!(r.contains("400"), "server reply: {r:?}");
    };
    rejected(send_raw(port, &random));
    // Something like a TLS 1.2 ClientHello with an SNI, sent to a plain-HTTP port.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x4a, 0x01, 0x00, 0x00, 0x46, 0x03, 0x03,
    ];
    hello.extend_from_slice(&random[..32]); // client random
    hello.extend_from_slice(&[0x00, 0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f, 0x01, 0x00]);
    hello.extend_from_slice(&[0x00, 0x0e, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x08, 0x00, 0x00]);
    hello.extend_from_slice(&[0x05]);
    hello.extend_from_slice(b"local");
    rejected(send_raw(port, &hello));
    rejected(send_raw(port, b"HELLO\r\n\r\n"));

    let ok = curl(&[&server.url("/status/200")]);
    assert_eq!(ok.http_code, 200);
    assert!(tracer.is_running(), "the tracer died:\n{}", tracer.stderr());
    let spans = tracer.stop();

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(servers.len(), 1, "server spans:\n{}", pretty(&servers));
    assert_well_formed(servers[0]);
    assert_eq!(attr_str(servers[0], "url.path"), Some("/status/200"));
    assert_eq!(
        attr_u64(servers[0], "network.peer.port"),
        Some(ok.local_port as u64)
    );
    let clients = of_kind_pid(&spans, "CLIENT", ok.pid);
    assert_eq!(clients.len(), 1, "curl spans:\n{}", pretty(&clients));
    // The raw sockets were this test process's; the server's 400 replies are not spans.
    let mine = of_pid(&spans, std::process::id());
    assert!(
        mine.is_empty(),
        "spans of the garbage sender:\n{}",
        pretty(&mine)
    );
}

/// What rotel printed for [`otlp_roundtrip`], and what the test knows about the requests.
struct Roundtrip {
    out: String,
    spans: Vec<CollectedSpan>,
    port: u16,
    curls: Vec<Curl>,
    /// With `linger`: another application that sent rotel an export of its own.
    other_exporter: Option<OtherExporter>,
}

/// curl 2 requests (each with its own traceparent) through a tracer exporting to rotel; return
/// what rotel printed once it has printed every span the tracer delivered to it.
///
/// `linger`: keep the tracer running until rotel has the spans and the tracer has seen rotel
/// receive an export, then have another application (curl, or python's grpcio) send rotel an
/// empty export of the same protocol and wait for rotel to get its span, before stopping the
/// tracer. Otherwise stop right after the requests: the spans then only reach rotel if
/// stopping flushes them.
fn otlp_roundtrip(grpc: bool, linger: bool) -> Option<Roundtrip> {
    let _g = setup_with_curl()?;
    let agent = rotel_agent();
    if !require("rotel (pip install rotel)", agent.is_some()) {
        return None;
    }
    let collector = Collector::start(&agent.unwrap());
    let server = Server::test_server();
    let port = server.port();
    let endpoint = if grpc {
        format!("http://127.0.0.1:{}", collector.grpc_port)
    } else {
        format!("http://127.0.0.1:{}", collector.http_port)
    };
    let mut args = vec!["--otlp-endpoint", endpoint.as_str()];
    if grpc {
        args.extend(["--otlp-protocol", "grpc"]);
    }
    let tracer = Tracer::start_with(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "200")], true);
    let mut curls = Vec::new();
    for (i, path) in ["/status/200", "/status/201"].iter().enumerate() {
        let tp = format!("00-{}-{PARENT_ID}-01", trace_id(i));
        curls.push(curl(&[
            "-H",
            &format!("traceparent: {tp}"),
            &server.url(path),
        ]));
    }
    let expected = |out: &str| {
        (0..2).all(|i| out.contains(&trace_id(i)))
            && out.contains("-> url.path: Str(/status/200)")
            && out.contains("-> url.path: Str(/status/201)")
            && out.matches("Kind           : SPAN_KIND_SERVER").count() >= 2
            && out.contains("service.name: Str(curl)")
    };
    let mut other_exporter = None;
    if linger {
        wait_until(Duration::from_secs(10), || expected(&collector.output()));
        // rotel receiving an export is HTTP the tracer sees. No --port here, so the only spans
        // it filters are those; once it has, one traced back would be in the flush below.
        let filtered = || {
            let (_, text) = tracer.admin("GET", "/metrics");
            metric(&text, "tracer_spans_filtered_total").unwrap_or(0.0)
        };
        assert!(
            wait_until(Duration::from_secs(10), || filtered() >= 1.0),
            "the tracer did not filter rotel's receiving of an export (not seen, or traced):\n{}",
            tracer.stderr()
        );
        let other = if grpc {
            let py = python()?;
            let call = format!(
                "import grpc; grpc.insecure_channel('127.0.0.1:{}').unary_unary('{EXPORT_METHOD}')(b'', timeout=10)",
                collector.grpc_port
            );
            let child = Command::new(py).args(["-c", &call]).spawn().unwrap();
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "grpcio's export to rotel failed");
            // grpcio does not say which port it connected from.
            OtherExporter {
                pid,
                local_port: None,
            }
        } else {
            let url = format!("http://127.0.0.1:{}/v1/traces", collector.http_port);
            let c = curl(&[
                "-H",
                "Content-Type: application/x-protobuf",
                "--data-binary",
                "",
                &url,
            ]);
            assert_eq!(c.http_code, 200, "curl's export to rotel");
            OtherExporter {
                pid: c.pid,
                local_port: Some(c.local_port),
            }
        };
        assert!(
            wait_until(Duration::from_secs(10), || {
                !exports_received(&parse_collector_output(&collector.output())).is_empty()
            }),
            "rotel's span of another application's export did not reach rotel:\n{}",
            collector.output()
        );
        other_exporter = Some(other);
    }
    // Stopping flushes the export queue.
    let stopped = tracer.stop_full();
    let printed = &stopped.spans;
    assert_eq!(
        of_kind_pid(printed, "SERVER", server.pid()).len(),
        2,
        "the tracer itself did not see the requests:\n{}",
        pretty(&printed.iter().collect::<Vec<_>>())
    );
    // Exported spans count both sinks: the printed ones and those rotel accepted.
    let exported = counters_line(&stopped.stderr).map_or(0, |l| counter(l, "spans_exported_total"));
    let delivered = exported as usize - printed.len();
    let rotel_printed = || parse_collector_output(&collector.output()).len();
    assert!(
        wait_until(Duration::from_secs(10), || rotel_printed() >= delivered),
        "rotel did not print the {delivered} spans it accepted:\n{}",
        collector.output()
    );
    let out = collector.output();
    Some(Roundtrip {
        spans: parse_collector_output(&out),
        out,
        port,
        curls,
        other_exporter,
    })
}

struct OtherExporter {
    pid: u32,
    local_port: Option<u16>,
}

const EXPORT_METHOD: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// rotel's SERVER spans of OTLP trace exports it received, over HTTP or gRPC.
fn exports_received(spans: &[CollectedSpan]) -> Vec<&CollectedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.kind == "SPAN_KIND_SERVER"
                && (s.attr("url.path") == Some("Str(/v1/traces)")
                    || s.attr("rpc.method") == Some("Str(Export)"))
        })
        .collect()
}

/// The pid of the process whose CLIENT span is the parent of `s` (both on this node, so the
/// tracer joined them), from rotel's output.
fn parent_pid(out: &str, s: &CollectedSpan) -> Option<u32> {
    parse_collector_output(out)
        .into_iter()
        .find(|c| c.span_id == s.parent_id && c.kind == "SPAN_KIND_CLIENT")?
        .resource
        .get("process.pid")?
        .strip_prefix("Int(")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

fn trace_id(i: usize) -> String {
    format!("4bf92f3577b34da6a3ce929d0e0e473{i}")
}

fn check_collected(r: &Roundtrip) {
    let Roundtrip {
        out,
        spans,
        port,
        curls,
        ..
    } = r;
    for (i, path) in ["/status/200", "/status/201"].iter().enumerate() {
        let tid = trace_id(i);
        assert!(out.contains(&tid), "trace id {tid} not exported:\n{out}");
        assert!(
            out.contains(&format!("-> url.path: Str({path})")),
            "url.path {path} not exported:\n{out}"
        );
        let ours: Vec<&CollectedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == tid && s.attr("server.port") == Some(&format!("Int({port})")))
            .collect();
        let server: Vec<_> = ours
            .iter()
            .filter(|s| s.kind == "SPAN_KIND_SERVER")
            .collect();
        let client: Vec<_> = ours
            .iter()
            .filter(|s| s.kind == "SPAN_KIND_CLIENT")
            .collect();
        assert_eq!(
            (server.len(), client.len()),
            (1, 1),
            "spans of trace {tid}: {ours:#?}"
        );
        for s in [server[0], client[0]] {
            assert_eq!(s.parent_id, PARENT_ID, "{s:#?}");
            assert_eq!(s.name, "GET", "{s:#?}");
            assert_eq!(
                s.attr("url.path"),
                Some(&format!("Str({path})")[..]),
                "{s:#?}"
            );
            let code = 200 + i;
            assert_eq!(
                s.attr("http.response.status_code"),
                Some(&format!("Int({code})")[..]),
                "{s:#?}"
            );
        }
        assert_eq!(
            client[0].resource.get("service.name").map(String::as_str),
            Some("Str(curl)")
        );
        assert_eq!(
            client[0].resource.get("process.pid"),
            Some(&format!("Int({})", curls[i].pid))
        );
        assert!(
            server[0]
                .resource
                .get("service.name")
                .is_some_and(|s| s.starts_with("Str(python3")),
            "{:#?}",
            server[0]
        );
    }
    assert!(out.contains("Kind           : SPAN_KIND_SERVER"));
    assert!(out.contains("service.name: Str(curl)"));
}

#[test]
fn otlp_export_http() {
    let Some(r) = otlp_roundtrip(false, false) else {
        return;
    };
    check_collected(&r);
}

#[test]
fn otlp_export_grpc() {
    let Some(r) = otlp_roundtrip(true, false) else {
        return;
    };
    check_collected(&r);
}

/// The collector is itself a server on this host: the tracer must not trace the export
/// requests it receives from the tracer, or every batch would cause another span, forever. It
/// tells them by their sockets: the same export from another application is a span like any
/// other, its client's CLIENT span too.
fn own_exports_are_not_traced_back(grpc: bool) {
    let Some(r) = otlp_roundtrip(grpc, true) else {
        return;
    };
    check_collected(&r);
    let exports = exports_received(&r.spans);
    assert_eq!(
        exports.len(),
        1,
        "rotel's spans of exports it received: only the other application's one is wanted:\n{exports:#?}\n{}",
        r.out
    );
    let other = r.other_exporter.as_ref().expect("lingered");
    if let Some(port) = other.local_port {
        assert_eq!(
            exports[0].attr("network.peer.port"),
            Some(&format!("Int({port})")[..]),
            "not the other application's export: {:#?}",
            exports[0]
        );
    }
    // Joined to its client's span when the tracer could pair them (the syscall hooks may not
    // know a short-lived client's ends in time).
    if !exports[0].parent_id.is_empty() {
        assert_eq!(
            parent_pid(&r.out, exports[0]),
            Some(other.pid),
            "{:#?}",
            exports[0]
        );
    }
    let client = r.spans.iter().find(|s| {
        s.kind == "SPAN_KIND_CLIENT"
            && s.resource.get("process.pid") == Some(&format!("Int({})", other.pid))
    });
    assert!(
        client.is_some(),
        "no CLIENT span of the other exporter:\n{}",
        r.out
    );
}

#[test]
fn own_http_exports_are_not_traced_back() {
    own_exports_are_not_traced_back(false);
}

#[test]
fn own_grpc_exports_are_not_traced_back() {
    own_exports_are_not_traced_back(true);
}

/// `--pid` and `--comm` filter in the kernel, `--port` in the daemon: each keeps exactly the
/// spans it names and nothing else.
#[test]
fn filters_keep_only_what_they_name() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let other = Server::test_server();

    // --pid: only the server's spans; curl's CLIENT spans are not traced at all.
    let tracer = Tracer::start(&["--pid", &server.pid().to_string()]);
    curl(&[&server.url("/status/200")]);
    curl(&[&other.url("/status/201")]);
    let spans = tracer.stop();
    assert_eq!(
        spans.len(),
        1,
        "{}",
        pretty(&spans.iter().collect::<Vec<_>>())
    );
    assert_eq!(resource_pid(&spans[0]), Some(server.pid() as u64));
    assert_eq!(attr_str(&spans[0], "url.path"), Some("/status/200"));

    // --comm curl: only CLIENT spans of curl, for both servers.
    let tracer = Tracer::start(&["--comm", "curl"]);
    curl(&[&server.url("/status/202")]);
    curl(&[&other.url("/status/203")]);
    let spans = tracer.stop();
    let mine = of_port(&spans, server.port()).len() + of_port(&spans, other.port()).len();
    assert_eq!(mine, 2, "{}", pretty(&spans.iter().collect::<Vec<_>>()));
    assert!(
        spans.iter().all(|s| kind(s) == "CLIENT"),
        "{}",
        pretty(&spans.iter().collect::<Vec<_>>())
    );
    assert!(
        spans
            .iter()
            .all(|s| s["resource"]["service.name"] == "curl")
    );

    // --port: both sides of the exchanges on that port, nothing of the other server.
    let tracer = Tracer::start(&["--port", &other.port().to_string()]);
    curl(&[&server.url("/status/204")]);
    curl(&[&other.url("/status/205")]);
    let spans = tracer.stop();
    assert_eq!(
        spans.len(),
        2,
        "{}",
        pretty(&spans.iter().collect::<Vec<_>>())
    );
    assert!(
        spans
            .iter()
            .all(|s| attr_str(s, "url.path") == Some("/status/205"))
    );
    assert_eq!(of_kind(&spans, "SERVER").len(), 1);
    assert_eq!(of_kind(&spans, "CLIENT").len(), 1);
}
