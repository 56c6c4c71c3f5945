//! HTTP/2 (h2c with prior knowledge) end to end: nghttpd, nghttp and h2load from Debian's
//! nghttp2 packages, traced from the connection's start.
use std::process::{Command, Stdio};

use tracer_tests::*;

fn have(tool: &str) -> bool {
    require(
        &format!("{tool} (Debian nghttp2-client / nghttp2-server)"),
        which(tool).is_some(),
    )
}

#[test]
fn h2c_server_and_clients_with_many_concurrent_streams() {
    let Some(_g) = setup() else { return };
    if !(have("nghttpd") && have("nghttp") && have("h2load")) {
        return;
    }
    let www = TempDir::new("h2www");
    std::fs::write(www.join("index.html"), "hello over h2\n").unwrap();
    let port = free_port();
    let mut cmd = Command::new(which("nghttpd").unwrap());
    cmd.args(["--no-tls", &port.to_string(), "-d"])
        .arg(www.path());
    let server = Server::spawn(cmd, port);

    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("nghttp").args(["-n", &url("/index.html")]));
    ok(Command::new("nghttp").args([
        "-n",
        "-H",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        &url("/missing"),
    ]));
    // 100 requests, 10 concurrent streams on one connection.
    h2load(100, 1, 10, &url("/index.html"));
    let spans = tracer.stop();

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(
        servers.len(),
        102,
        "{}",
        pretty(&servers[..servers.len().min(3)])
    );
    let clients = of_kind(&spans, "CLIENT");
    assert_eq!(clients.len(), 102);
    for s in servers.iter().chain(clients.iter()) {
        assert_well_formed(s);
        assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
        assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{s}");
        assert_headers_complete(s);
    }
    let h2load = clients
        .iter()
        .filter(|s| s["resource"]["service.name"] == "h2load")
        .count();
    assert_eq!(h2load, 100);
    let missing: Vec<_> = spans
        .iter()
        .filter(|s| attr_str(s, "url.path") == Some("/missing"))
        .collect();
    assert_eq!(missing.len(), 2);
    for s in missing {
        assert_eq!(attr_u64(s, "http.response.status_code"), Some(404));
        assert_eq!(s["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parent_span_id"], "00f067aa0ba902b7");
    }
    let index_ok = servers
        .iter()
        .filter(|s| attr_u64(s, "http.response.status_code") == Some(200))
        .count();
    assert_eq!(index_ok, 101);
}

/// `h2load -n N -c CLIENTS -m STREAMS URL`; every request must succeed.
fn h2load(n: u32, clients: u32, streams: u32, url: &str) {
    let out = Command::new(which("h2load").unwrap())
        .args(["-n", &n.to_string(), "-c", &clients.to_string()])
        .args(["-m", &streams.to_string(), url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{n} succeeded")), "{text}");
}

fn nghttpd(www: &TempDir) -> Server {
    std::fs::write(www.join("index.html"), "hello over h2\n").unwrap();
    nghttpd_serving(www)
}

fn nghttpd_serving(www: &TempDir) -> Server {
    let port = free_port();
    let mut cmd = Command::new(which("nghttpd").unwrap());
    cmd.args(["--no-tls", &port.to_string(), "-d"])
        .arg(www.path());
    Server::spawn(cmd, port)
}

fn have_hypercorn() -> bool {
    let ok = python().is_some_and(|py| {
        Command::new(py)
            .args(["-c", "import hypercorn"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    require(
        "python hypercorn (pip install hypercorn; `cargo xtask setup`)",
        ok,
    )
}

/// HTTP/1.1 `Upgrade: h2c`: curl --http2 asks for it, hypercorn switches (nghttpd does not
/// implement the upgrade). The upgrade request is HTTP/2 stream 1 (RFC 7540 3.2), answered in
/// frames after the 101; the next request is an ordinary stream on the same connection.
#[test]
fn h2c_upgrade_from_http1() {
    let Some(_g) = setup_with_curl() else { return };
    if !have_hypercorn() {
        return;
    }
    let port = free_port();
    let mut cmd = Command::new(python().unwrap());
    cmd.args(["-m", "hypercorn", "--bind", &format!("127.0.0.1:{port}")])
        .current_dir(peer(""))
        .arg("h2c_app:app");
    let server = Server::spawn(cmd, port);
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let out = Command::new("curl")
        .args(["-sv", "--http2", &url("/index.html"), &url("/missing")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Switching to HTTP/2"), "{err}");
    assert_eq!(out.stdout, b"hello over h2\nnope\n");
    let spans = tracer.stop();

    // hypercorn serves from a worker process it forks: its spans are the SERVER spans of
    // this port.
    let _ = server.pid();
    let servers: Vec<&Value> = of_port(&spans, port)
        .into_iter()
        .filter(|s| kind(s) == "SERVER")
        .collect();
    let clients = of_kind(&spans, "CLIENT");
    assert_eq!(servers.len(), 2, "{}", pretty(&servers));
    assert_eq!(clients.len(), 2, "{}", pretty(&clients));
    for list in [&servers, &clients] {
        for s in list.iter() {
            assert_well_formed(s);
            assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
            assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{s}");
            assert_headers_complete(s);
        }
        let up = one_with_path(list, "/index.html");
        assert_eq!(attr_u64(up, "http.response.status_code"), Some(200), "{up}");
        assert_eq!(attr_u64(up, "http.response.body.size"), Some(14), "{up}");
        assert_eq!(attr_u64(up, "server.port"), Some(port as u64), "{up}");
        assert_eq!(status_code(up), "UNSET", "{up}");
        let missing = one_with_path(list, "/missing");
        assert_eq!(attr_u64(missing, "http.response.status_code"), Some(404));
        assert_eq!(attr_u64(missing, "http.response.body.size"), Some(5));
        // curl closes once it has the 5 bytes content-length announced, before the server's
        // END_STREAM: still a whole response. A 404 is an error for the client only.
        let want = if kind(missing) == "CLIENT" {
            "ERROR"
        } else {
            "UNSET"
        };
        assert_eq!(status_code(missing), want, "{missing}");
        let error_type = (want == "ERROR").then_some("404");
        assert_eq!(attr_str(missing, "error.type"), error_type, "{missing}");
    }
}

/// A header block larger than a HEADERS frame (CONTINUATION frames follow) and larger than
/// the largest capture (8 KiB): the span keeps the method and path, which come first, and says
/// its headers are incomplete. Then 1000 requests with 100 concurrent streams on one
/// connection: one span each, never a wrong method, path or status.
#[test]
fn continuation_frames_and_100_concurrent_streams() {
    let Some(_g) = setup() else { return };
    if !(have("nghttpd") && have("nghttp") && have("h2load")) {
        return;
    }
    let www = TempDir::new("h2www");
    let server = nghttpd(&www);
    let port = server.port();
    let tracer = Tracer::start(&["--port", &port.to_string()]);
    let url = format!("http://127.0.0.1:{port}/index.html");
    // Huffman codes an "a" in 5 bits: 30 000 of them are ~18.8 kB, over one frame's 16 kB.
    let big = format!("x-big: {}", "a".repeat(30_000));
    let out = Command::new("nghttp")
        .args(["-nv", "-H", &big, &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", &text[..text.len().min(2000)]);
    // nghttp2 reports a HEADERS frame and its CONTINUATION frames as one, with the block's
    // length: over the 16 kB default frame size (nghttp sends before the server's SETTINGS can
    // raise it), the block went out as HEADERS + CONTINUATION.
    let block_len: usize = text
        .split("send HEADERS frame <length=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("nghttp -v reports the HEADERS frame it sent");
    assert!(block_len > 16_384, "no CONTINUATION needed: {block_len}");
    h2load(1000, 1, 100, &url);
    let spans = tracer.stop();

    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(
        servers.len(),
        1001,
        "{}",
        pretty(&servers[..servers.len().min(3)])
    );
    let by = |name: &str| -> Vec<&Value> {
        of_kind(&spans, "CLIENT")
            .into_iter()
            .filter(|s| s["resource"]["service.name"] == name)
            .collect()
    };
    let (nghttp, h2load) = (by("nghttp"), by("h2load"));
    assert_eq!(nghttp.len(), 1, "{}", pretty(&nghttp));
    assert_eq!(h2load.len(), 1000);
    // The big block: one span per side, first in time on the server.
    let mut sorted = servers.clone();
    sorted.sort_by_key(|s| s["start_unix_nano"].as_u64());
    for s in [sorted[0], nghttp[0]] {
        assert_eq!(attr_str(s, "url.path"), Some("/index.html"), "{s}");
        assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{s}");
        assert_eq!(attr_u64(s, "http.response.status_code"), Some(200), "{s}");
        assert_eq!(
            s["attributes"]["tracer.http.headers_incomplete"], true,
            "19 kB of headers cannot fit the capture: {s}"
        );
    }
    for s in sorted.iter().chain(h2load.iter()) {
        assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
        assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{s}");
        assert_eq!(attr_u64(s, "http.response.status_code"), Some(200), "{s}");
        // Every response ended: none is reported as failed.
        assert_eq!(status_code(s), "UNSET", "{s}");
        match attr_str(s, "url.path") {
            Some(p) => assert_eq!(p, "/index.html", "{s}"),
            None => assert_eq!(
                s["attributes"]["tracer.http.headers_incomplete"], true,
                "{s}"
            ),
        }
    }
    // h2load's connection never lost its HPACK state: the probes' frame walk copied every
    // header block however the 100 streams' frames were packed into syscalls.
    for s in sorted[1..].iter().chain(h2load.iter()) {
        assert_eq!(attr_str(s, "url.path"), Some("/index.html"), "{s}");
        assert_headers_complete(s);
    }
}

/// Bodies of real size: nghttpd answers many streams in one write and h2load reads 16 kB at
/// a time, so most frame headers sit far past any prefix of the syscall. The probes' frame
/// walk copies frame headers and header blocks and skips DATA payloads: every request is a
/// span, with its path and status, on both sides.
#[test]
fn every_stream_of_a_busy_connection_with_real_bodies() {
    let Some(_g) = setup() else { return };
    if !(have("nghttpd") && have("h2load")) {
        return;
    }
    let www = TempDir::new("h2www");
    std::fs::write(www.join("page.html"), "x".repeat(3000)).unwrap();
    let server = nghttpd_serving(&www);
    let port = server.port();
    // The default 4 KiB capture: ten 3 kB responses in one write would overflow a prefix.
    // 4000 spans in about a second: the default export queue holds them all.
    let tracer = Tracer::start_with(&["--port", &port.to_string()], &[], true);
    let url = format!("http://127.0.0.1:{port}/page.html");
    h2load(2000, 2, 32, &url);
    let stopped = tracer.stop_full();
    let spans = &stopped.spans;
    let servers = of_kind_pid(spans, "SERVER", server.pid());
    let clients: Vec<&Value> = of_kind(spans, "CLIENT")
        .into_iter()
        .filter(|s| s["resource"]["service.name"] == "h2load")
        .collect();
    let counters = counters_line(&stopped.stderr).unwrap_or_default();
    assert_eq!(servers.len(), 2000, "{counters}");
    assert_eq!(clients.len(), 2000, "{counters}");
    for s in servers.iter().chain(clients.iter()) {
        assert_eq!(attr_str(s, "url.path"), Some("/page.html"), "{s}");
        assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{s}");
        assert_eq!(attr_u64(s, "http.response.status_code"), Some(200), "{s}");
        assert_eq!(attr_u64(s, "http.response.body.size"), Some(3000), "{s}");
        assert_eq!(status_code(s), "UNSET", "{s}");
        assert_headers_complete(s);
    }
}

/// A Rust peer on both sides (hyper's h2 client and server, h2c with prior knowledge): 500
/// requests with bodies of 0 to 6 kB, 50 in flight on one connection, and a 404. Every request
/// is one span per side with its path, status and body size.
#[test]
fn rust_hyper_client_and_server() {
    let Some(_g) = setup() else { return };
    let peer = env!("CARGO_BIN_EXE_rust_h2_peer");
    let port = free_port();
    let mut cmd = Command::new(peer);
    cmd.args(["server", &port.to_string()]);
    let server = Server::spawn(cmd, port);
    let tracer = Tracer::start_with(&["--port", &port.to_string()], &[], true);
    let client = Command::new(peer)
        .args(["client", &port.to_string(), "500", "50"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client_pid = client.id();
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("ok 501 "),
        "{text}"
    );
    let spans = tracer.stop();
    let want_bytes: u64 = (0..500u64).map(|i| (i % 7) * 1000).sum::<u64>() + 13;
    for (kind, pid) in [("SERVER", server.pid()), ("CLIENT", client_pid)] {
        let list = of_kind_pid(&spans, kind, pid);
        assert_eq!(
            list.len(),
            501,
            "{kind}: {}",
            pretty(&list[..list.len().min(3)])
        );
        let mut bytes = 0;
        for s in &list {
            assert_well_formed(s);
            assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{s}");
            assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
            assert_headers_complete(s);
            let path = attr_str(s, "url.path").expect("url.path");
            let size = attr_u64(s, "http.response.body.size").unwrap_or(0);
            bytes += size;
            match path.strip_prefix("/items/") {
                Some(n) => {
                    assert_eq!(attr_u64(s, "http.response.status_code"), Some(200), "{s}");
                    assert_eq!(Some(size), n.parse().ok(), "{s}");
                }
                None => {
                    assert_eq!(path, "/missing", "{s}");
                    assert_eq!(attr_u64(s, "http.response.status_code"), Some(404), "{s}");
                }
            }
        }
        assert_eq!(bytes, want_bytes, "{kind}");
    }
}
