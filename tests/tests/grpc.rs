//! gRPC end to end with real grpcio (Python, the C core underneath) on both sides:
//! `tests/peers/grpc_peer.py` serves `tracer.test.Echo` with generic handlers (raw bytes, no
//! generated code) and calls it: unary, server-streaming, client-streaming and bidi calls,
//! NOT_FOUND and INTERNAL errors, an unknown method (UNIMPLEMENTED) and an exceeded deadline.
//! grpcio writes a header block as one sendmsg with ~25 iovecs (a name, a value per iovec).
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use tracer_tests::*;

const SERVICE: &str = "tracer.test.Echo";

fn have_grpcio() -> bool {
    let ok = python().is_some_and(|py| {
        Command::new(py)
            .args(["-c", "import grpc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    require(
        "python grpcio (pip install grpcio; `cargo xtask setup`)",
        ok,
    )
}

fn grpc_server() -> Server {
    let port = free_port();
    let mut cmd = Command::new(python().expect("python3 (checked by setup())"));
    cmd.arg(peer("grpc_peer.py"))
        .args(["server", &port.to_string()]);
    Server::spawn(cmd, port)
}

/// What each call of `grpc_peer.py client` (in its order) must give: (call, method, gRPC
/// status code, status name the client reports).
const CALLS: [(&str, &str, u32, &str); 8] = [
    ("unary", "Unary", 0, "OK"),
    ("server_stream", "ServerStream", 0, "OK"),
    ("client_stream", "ClientStream", 0, "OK"),
    ("bidi", "Bidi", 0, "OK"),
    ("not_found", "Fail", 5, "NOT_FOUND"),
    ("internal", "Fail", 13, "INTERNAL"),
    ("unimplemented", "Nope", 12, "UNIMPLEMENTED"),
    ("deadline", "Slow", 4, "DEADLINE_EXCEEDED"),
];

/// OTel gRPC conventions: server spans are errors for these codes only.
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

fn rpc_method(s: &Value) -> &str {
    attr_str(s, "rpc.method").unwrap_or("")
}

/// The gRPC attributes every span of a call must carry, whatever its outcome.
fn assert_grpc_span(s: &Value, method: &str) {
    assert_eq!(s["name"], format!("{SERVICE}/{method}"), "{s}");
    assert_eq!(attr_str(s, "rpc.system"), Some("grpc"), "{s}");
    assert_eq!(attr_str(s, "rpc.service"), Some(SERVICE), "{s}");
    assert_eq!(attr_str(s, "rpc.method"), Some(method), "{s}");
    assert_eq!(
        attr_str(s, "url.path"),
        Some(format!("/{SERVICE}/{method}").as_str()),
        "{s}"
    );
    assert_eq!(attr_str(s, "http.request.method"), Some("POST"), "{s}");
    assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
    assert!(
        s["attributes"]
            .get("tracer.http.headers_incomplete")
            .is_none(),
        "grpcio's many-iovec writes must be captured whole: {s}"
    );
    assert!(is_hex_id(&s["trace_id"], 32), "{s}");
    let start = s["start_unix_nano"].as_u64().expect("start");
    let end = s["end_unix_nano"].as_u64().expect("end");
    assert!(end >= start, "{s}");
}

#[test]
fn grpcio_calls_of_every_kind_and_status() {
    let Some(_g) = setup() else { return };
    if !have_grpcio() {
        return;
    }
    let server = grpc_server();
    let port = server.port();
    let tracer = Tracer::start(&["--port", &port.to_string()]);

    let client = Command::new(python().unwrap())
        .arg(peer("grpc_peer.py"))
        .args(["client", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn grpc_peer.py client");
    let client_pid = client.id();
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "grpc client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reported: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("client JSON line"))
        .collect();
    let codes: Vec<(&str, &str)> = reported
        .iter()
        .map(|v| (v["call"].as_str().unwrap(), v["code"].as_str().unwrap()))
        .collect();
    let want: Vec<(&str, &str)> = CALLS.iter().map(|c| (c.0, c.3)).collect();
    assert_eq!(codes, want, "what grpcio itself reported");
    let spans = tracer.stop();

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    let clients = of_kind_pid(&spans, "CLIENT", client_pid);
    assert_eq!(servers.len(), CALLS.len(), "{}", pretty(&servers));
    assert_eq!(clients.len(), CALLS.len(), "{}", pretty(&clients));

    for (side, list) in [("SERVER", &servers), ("CLIENT", &clients)] {
        // Spans come out when calls end: in call order, as the client makes them one by one.
        let mut sorted = list.clone();
        sorted.sort_by_key(|s| s["start_unix_nano"].as_u64());
        for (s, (call, method, code, _)) in sorted.iter().zip(CALLS) {
            assert_grpc_span(s, method);
            assert_eq!(
                attr_u64(s, "rpc.grpc.status_code"),
                Some(code as u64),
                "{side} {call}: {s}"
            );
            let error = match side {
                "SERVER" => SERVER_ERRORS.contains(&code),
                _ => code != 0,
            };
            if error {
                assert_eq!(status_code(s), "ERROR", "{side} {call}: {s}");
                assert_eq!(
                    attr_str(s, "error.type"),
                    Some(code.to_string().as_str()),
                    "{side} {call}: {s}"
                );
            } else {
                assert_eq!(status_code(s), "UNSET", "{side} {call}: {s}");
                assert!(s["attributes"].get("error.type").is_none(), "{s}");
            }
        }
    }
    // Client and server on one node: each server span is the child of the client span of
    // its call (the same HTTP/2 stream of the same connection), in its trace.
    for srv in &servers {
        let parent = srv["parent_span_id"]
            .as_str()
            .unwrap_or_else(|| panic!("not joined to its call: {srv}"));
        let call = clients
            .iter()
            .find(|c| c["span_id"].as_str() == Some(parent))
            .unwrap_or_else(|| panic!("parent is not a client span: {srv}"));
        assert_eq!(srv["trace_id"], call["trace_id"], "{srv}\n{call}");
        assert_eq!(rpc_method(srv), rpc_method(call), "{srv}\n{call}");
        assert!(call["parent_span_id"].is_null(), "{call}");
    }
    // Streaming calls: one span for the whole call, covering every message.
    let bidi = servers
        .iter()
        .find(|s| rpc_method(s) == "Bidi")
        .expect("bidi server span");
    // 4 messages of 1 byte, each with the 5-byte gRPC prefix.
    assert_eq!(
        attr_u64(bidi, "http.request.body.size"),
        Some(4 * 6),
        "{bidi}"
    );
    assert_eq!(
        attr_u64(bidi, "http.response.body.size"),
        Some(4 * 6),
        "{bidi}"
    );
    let stream = clients
        .iter()
        .find(|s| rpc_method(s) == "ServerStream")
        .expect("server-streaming client span");
    // 3 replies of 2 bytes ("s" + index).
    assert_eq!(
        attr_u64(stream, "http.response.body.size"),
        Some(3 * 7),
        "{stream}"
    );
    // The deadline call lasts about its 200 ms deadline on both sides, not the 2 s the
    // handler sleeps.
    for s in servers.iter().chain(clients.iter()) {
        if rpc_method(s) == "Slow" {
            let d = duration_ns(s);
            assert!(
                (150_000_000..1_500_000_000).contains(&d),
                "deadline call lasted {d} ns: {s}"
            );
        }
    }
}

/// A channel (one HTTP/2 connection) opened and used BEFORE the tracer starts, then used
/// again: the tracer joins it in the middle. Later calls must become spans whose method and
/// path are right, or absent with `tracer.http.headers_incomplete` when they came from the
/// HPACK dynamic table the tracer never saw; never a wrong one.
#[test]
fn grpc_connection_opened_before_the_tracer() {
    let Some(_g) = setup() else { return };
    if !have_grpcio() {
        return;
    }
    let server = grpc_server();
    let port = server.port();
    let mut client = Command::new(python().unwrap())
        .arg(peer("grpc_peer.py"))
        .args(["hold", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn grpc_peer.py hold");
    let client_pid = client.id();
    let mut stdin = client.stdin.take().unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("hold client output").unwrap();
    // A unary call before the tracer: its path and content-type are now in both HPACK tables.
    assert!(next().contains("\"OK\""));
    assert_eq!(next(), "ready");

    let tracer = Tracer::start(&["--port", &port.to_string()]);
    // Unary again (path from the dynamic table), then methods never called on this
    // connection (their :path is a literal the tracer can read), one of them twice.
    let calls = [
        ("unary", "Unary", "OK"),
        ("unary", "Unary", "OK"),
        ("not_found", "Fail", "NOT_FOUND"),
        ("server_stream", "ServerStream", "OK"),
        ("unimplemented", "Nope", "UNIMPLEMENTED"),
        // Its :path is in the tables now, inserted where the tracer saw it.
        ("not_found", "Fail", "NOT_FOUND"),
    ];
    for (call, _, code) in calls {
        writeln!(stdin, "{call}").unwrap();
        stdin.flush().unwrap();
        let line = next();
        assert!(line.contains(&format!("\"{code}\"")), "{call}: {line}");
    }
    drop(stdin);
    let st = client.wait().unwrap();
    assert!(st.success());
    let spans = tracer.stop();

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    let clients = of_kind_pid(&spans, "CLIENT", client_pid);
    assert_eq!(servers.len(), calls.len(), "{}", pretty(&servers));
    assert_eq!(clients.len(), calls.len(), "{}", pretty(&clients));
    for list in [&servers, &clients] {
        let mut sorted = list.clone();
        sorted.sort_by_key(|s| s["start_unix_nano"].as_u64());
        let mut known_paths = 0;
        for (s, (call, method, _)) in sorted.iter().zip(calls) {
            let incomplete = s["attributes"]
                .get("tracer.http.headers_incomplete")
                .is_some();
            match attr_str(s, "url.path") {
                Some(p) => {
                    assert_eq!(p, format!("/{SERVICE}/{method}"), "{call}: {s}");
                    known_paths += 1;
                }
                None => assert!(incomplete, "no path and not marked incomplete: {s}"),
            }
            if let Some(m) = attr_str(s, "http.request.method") {
                assert_eq!(m, "POST", "{s}");
            }
            if let Some(m) = attr_str(s, "rpc.method") {
                assert_eq!(m, method, "{s}");
                assert_eq!(s["name"], format!("{SERVICE}/{method}"), "{s}");
            }
            assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
            // The socket knows the server's end even where :authority came from the table.
            assert_eq!(attr_u64(s, "server.port"), Some(port as u64), "{s}");
            assert_eq!(attr_str(s, "server.address"), Some("127.0.0.1"), "{s}");
        }
        // The three methods first called after the tracer started were sent as literals, and
        // the repeated one is a literal again or a table entry inserted since the join.
        assert!(known_paths >= 4, "{}", pretty(&sorted));
    }
}
