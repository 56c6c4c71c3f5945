//! HTTP/2 (h2c with prior knowledge) end to end: nghttpd, nghttp and h2load from Debian's
//! nghttp2 packages, traced from the connection's start.
use std::process::Command;

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
    let out = Command::new("h2load")
        .args(["-n", "100", "-c", "1", "-m", "10", &url("/index.html")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("100 succeeded"), "{text}");
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
        assert!(
            s["attributes"]
                .get("tracer.http.headers_incomplete")
                .is_none(),
            "{s}"
        );
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
