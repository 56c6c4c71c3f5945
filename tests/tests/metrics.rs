//! Request metrics end to end: real servers (python, nginx, grpcio) answer requests of known
//! statuses and durations; the counts per label set must be exact on `/metrics` and at a real
//! collector (rotel), whatever a sampler drops; a route explosion stays under the series
//! limit; the service graph joins services on this node; `tracer top` shows them in a terminal.
use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use tracer_tests::*;

const HTTP_COUNT: &str = "http_server_request_duration_seconds_count";
const HTTP_BUCKET: &str = "http_server_request_duration_seconds_bucket";
const HTTP_SUM: &str = "http_server_request_duration_seconds_sum";
const CLIENT_COUNT: &str = "http_client_request_duration_seconds_count";
const RPC_COUNT: &str = "rpc_server_duration_milliseconds_count";
const RPC_CLIENT_COUNT: &str = "rpc_client_duration_milliseconds_count";

/// How long the metrics may take to show what the servers answered.
const SETTLE: Duration = Duration::from_secs(30);

fn metrics(t: &Tracer) -> String {
    let (code, body) = t.admin("GET", "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// A python test server whose service is `name` (its OTEL_SERVICE_NAME).
fn python_server(name: &str) -> Server {
    let port = free_port();
    let mut cmd = Command::new(python().expect("python3 (checked by setup())"));
    cmd.arg(peer("server.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", name);
    Server::spawn(cmd, port)
}

/// `n` requests for `path` on one keep-alive connection, all answered.
fn requests(port: u16, n: usize, path: &str) {
    let done = KeepAliveClient::spawn(port, n, &[path]).finish();
    assert_eq!(done.len(), n, "{path}");
}

/// The count of `svc`'s http.server.request.duration point with status `code` in the last
/// export rotel printed.
fn collector_count(out: &str, svc: &str, code: &str) -> Option<u64> {
    let resource = out
        .split("ResourceMetrics #")
        .filter(|r| r.contains(&format!("service.name: Str({svc})\n")))
        .last()?;
    let metric = resource
        .split("Metric #")
        .find(|m| m.contains("Name: http.server.request.duration\n"))?;
    let point = metric
        .split("HistogramDataPoints #")
        .find(|p| p.contains(&format!("http.response.status_code: Int({code})\n")))?;
    point
        .lines()
        .find_map(|l| l.strip_prefix("Count: "))?
        .trim()
        .parse()
        .ok()
}

fn collector() -> Option<Collector> {
    let agent = rotel_agent();
    require(
        "rotel (pip install rotel; `cargo xtask setup`)",
        agent.is_some(),
    )
    .then(|| Collector::start_logging(&agent.unwrap(), &["metrics"]))
}

/// A tracer on `ports`, exporting spans (printed too) and metrics every 500 ms to `c`.
fn tracer(ports: &[u16], c: &Collector, extra: &[&str]) -> Tracer {
    let mut args: Vec<String> = ports
        .iter()
        .flat_map(|p| ["--port".to_string(), p.to_string()])
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let endpoint = format!("http://127.0.0.1:{}", c.http_port);
    Tracer::start_with(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
        true,
    )
}

#[test]
fn every_request_is_counted_by_status_on_metrics_and_at_the_collector() {
    let Some(_g) = setup() else { return };
    if !require("nginx", which("nginx").is_some()) {
        return;
    }
    let Some(col) = collector() else { return };
    let dir = TempDir::new("red-nginx");
    let (py, ngx) = (python_server("red-python"), nginx(&dir));
    let t = tracer(&[py.port(), ngx.port()], &col, &[]);

    for (path, n) in [
        ("/status/200", 20),
        ("/status/404", 10),
        ("/status/500", 5),
        ("/slow?ms=300", 3),
    ] {
        requests(py.port(), n, path);
    }
    for (path, n) in [("/ok", 12), ("/missing", 6), ("/boom", 4)] {
        requests(ngx.port(), n, path);
    }
    let want = [
        ("red-python", "200", 23.0),
        ("red-python", "404", 10.0),
        ("red-python", "500", 5.0),
        ("nginx", "200", 12.0),
        ("nginx", "404", 6.0),
        ("nginx", "500", 4.0),
    ];
    let count = |text: &str, svc: &str, code: &str| {
        series_sum(
            text,
            HTTP_COUNT,
            &[("service_name", svc), ("http_response_status_code", code)],
        )
    };
    let mut text = String::new();
    let settled = wait_until(SETTLE, || {
        text = metrics(&t);
        want.iter().all(|(s, c, n)| count(&text, s, c) >= *n)
    });
    assert!(settled, "counts never reached {want:?}:\n{text}");
    for (svc, code, n) in want {
        assert_eq!(count(&text, svc, code), n, "{svc} {code}:\n{text}");
    }
    // nginx's two workers are one service: one series per status, no process.pid.
    assert_eq!(
        series(&text, HTTP_COUNT, &[("service_name", "nginx")]).len(),
        3,
        "{text}"
    );
    assert!(!text.contains("process_pid"), "{text}");
    assert!(!text.contains("url_path"), "never a raw path: {text}");
    for (svc, n) in [("red-python", 5.0), ("nginx", 4.0)] {
        let errors = series_sum(
            &text,
            HTTP_COUNT,
            &[("service_name", svc), ("error_type", "500")],
        );
        assert_eq!(errors, n, "{svc}: error.type on the 500s only");
    }
    // The 3 slow ones (300 ms) are above 0.25 s, the 20 fast ones below.
    let py200 = [
        ("service_name", "red-python"),
        ("http_response_status_code", "200"),
    ];
    let bucket = |le: &str| {
        let mut l = py200.to_vec();
        l.push(("le", le));
        series_sum(&text, HTTP_BUCKET, &l)
    };
    assert_eq!((bucket("0.25"), bucket("+Inf")), (20.0, 23.0), "{text}");
    // The clients (the keep-alive peer, python) are counted as clients of both servers.
    for (port, n) in [(py.port(), 38.0), (ngx.port(), 22.0)] {
        let p = port.to_string();
        assert_eq!(
            series_sum(&text, CLIENT_COUNT, &[("server_port", &p)]),
            n,
            "{text}"
        );
    }
    let sum = series_sum(&text, HTTP_SUM, &[("service_name", "red-python")]);

    // A real collector got the same numbers: wait for an export holding the final counts.
    let at_collector = |out: &str| {
        want.iter()
            .all(|(svc, code, n)| collector_count(out, svc, code) == Some(*n as u64))
    };
    assert!(
        wait_until(SETTLE, || at_collector(&col.output())),
        "rotel never printed the counts {want:?}:\n{}",
        col.output()
    );

    // The histogram's sum is the sum of the spans' durations.
    let spans = t.stop();
    let durations: f64 = of_kind_pid(&spans, "SERVER", py.pid())
        .iter()
        .map(|s| duration_ns(s) as f64 / 1e9)
        .sum();
    assert_eq!(of_kind_pid(&spans, "SERVER", py.pid()).len(), 38);
    assert!(
        (durations - sum).abs() < 1e-6,
        "spans {durations} s, histogram {sum} s"
    );
}

#[test]
fn a_sampler_dropping_most_spans_changes_no_count_and_routes_come_from_the_normalizer() {
    let Some(_g) = setup() else { return };
    let Some(col) = collector() else { return };
    let plugins = TempDir::new("red-plugins");
    for (file, name) in [
        ("route-normalizer.wasm", "10-route-normalizer.wasm"),
        ("ratio-sampler.wasm", "20-ratio-sampler.wasm"),
    ] {
        let src = workspace().join("target/plugins").join(file);
        if !require(
            &format!("{} (`cargo xtask build-plugins`)", src.display()),
            src.exists(),
        ) {
            return;
        }
        fs::copy(&src, plugins.join(name)).unwrap();
    }
    fs::write(plugins.join("20-ratio-sampler.toml"), "ratio = 0.1\n").unwrap();
    let py = python_server("red-sampled");
    let t = tracer(
        &[py.port()],
        &col,
        &["--plugins-dir", &plugins.path().display().to_string()],
    );
    assert!(
        wait_until(SETTLE, || t
            .admin("GET", "/plugins")
            .1
            .contains("20-ratio-sampler")),
        "the chain never loaded: {}",
        t.admin("GET", "/plugins").1
    );
    requests(py.port(), 200, "/status/200");
    requests(py.port(), 100, "/orders/{i}");
    let mut text = String::new();
    let svc = ("service_name", "red-sampled");
    assert!(
        wait_until(SETTLE, || {
            text = metrics(&t);
            series_sum(&text, HTTP_COUNT, &[svc]) >= 300.0
        }),
        "{text}"
    );
    assert_eq!(
        series_sum(
            &text,
            HTTP_COUNT,
            &[svc, ("http_response_status_code", "200")]
        ),
        200.0
    );
    assert_eq!(
        series_sum(&text, HTTP_COUNT, &[svc, ("http_route", "/orders/{id}")]),
        100.0,
        "{text}"
    );
    assert_eq!(
        series_sum(&text, HTTP_COUNT, &[svc, ("http_route", "/status/{id}")]),
        200.0,
        "{text}"
    );
    let dropped = metric(&text, "tracer_spans_plugin_dropped_total").unwrap_or(0.0);
    let spans = t.stop();
    let exported = of_kind_pid(&spans, "SERVER", py.pid()).len();
    assert!(
        dropped > 0.0 && exported < 300,
        "the sampler dropped {dropped}, {exported} exported"
    );
    assert!(exported < 100, "about 10% of 300 kept, not {exported}");
}

#[test]
fn ten_thousand_distinct_routes_stay_under_the_series_limit_with_one_overflow_series() {
    let Some(_g) = setup() else { return };
    let Some(col) = collector() else { return };
    let plugins = TempDir::new("red-card");
    let src = workspace().join("target/plugins/route-normalizer.wasm");
    if !require(
        &format!("{} (`cargo xtask build-plugins`)", src.display()),
        src.exists(),
    ) {
        return;
    }
    fs::copy(&src, plugins.join("10-route-normalizer.wasm")).unwrap();
    let py = python_server("red-card");
    let t = tracer(
        &[py.port()],
        &col,
        &[
            "--plugins-dir",
            &plugins.path().display().to_string(),
            "--metrics-series-limit",
            "20",
        ],
    );
    assert!(
        wait_until(SETTLE, || t
            .admin("GET", "/plugins")
            .1
            .contains("route-normalizer")),
        "the chain never loaded"
    );
    // Slugs are not id-like: the normalizer keeps each one, 10k routes (all 404).
    const N: usize = 10_000;
    requests(py.port(), N, "/item/slug-{i}");
    let svc = ("service_name", "red-card");
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            text = metrics(&t);
            series_sum(&text, HTTP_COUNT, &[svc]) >= N as f64
        }),
        "{}",
        series_sum(&text, HTTP_COUNT, &[svc])
    );
    assert_eq!(
        series_sum(&text, HTTP_COUNT, &[svc]),
        N as f64,
        "every request counted once"
    );
    let all = series(&text, HTTP_COUNT, &[svc]);
    assert_eq!(all.len(), 21, "20 series and the overflow one");
    let over = series_sum(&text, HTTP_COUNT, &[svc, ("otel_metric_overflow", "true")]);
    assert_eq!(over, (N - 20) as f64);
    assert_eq!(
        metric(&text, "tracer_span_metrics_overflowed_points_total"),
        Some(over)
    );
    // The client side (no path in its attributes) is one series.
    let p = py.port().to_string();
    assert_eq!(
        series(&text, CLIENT_COUNT, &[("server_port", &p)]).len(),
        1,
        "{text}"
    );
    assert!(!text.contains("url_path"));
}

#[test]
fn grpc_calls_are_counted_by_method_and_status_code() {
    let Some(_g) = setup() else { return };
    let grpc = python().is_some_and(|py| {
        Command::new(py)
            .args(["-c", "import grpc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !require("python grpcio (`cargo xtask setup`)", grpc) {
        return;
    }
    let Some(col) = collector() else { return };
    let port = free_port();
    let mut cmd = Command::new(python().unwrap());
    cmd.arg(peer("grpc_peer.py"))
        .args(["server", &port.to_string()])
        .env("OTEL_SERVICE_NAME", "red-grpc");
    let server = Server::spawn(cmd, port);
    let t = tracer(&[server.port()], &col, &[]);
    let out = Command::new(python().unwrap())
        .arg(peer("grpc_peer.py"))
        .args(["client", &port.to_string()])
        .env("OTEL_SERVICE_NAME", "red-grpc-client")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (method, gRPC status code): what grpc_peer.py's client calls, once each.
    let calls = [
        ("Unary", "0"),
        ("ServerStream", "0"),
        ("ClientStream", "0"),
        ("Bidi", "0"),
        ("Fail", "5"),
        ("Fail", "13"),
        ("Nope", "12"),
        ("Slow", "4"),
    ];
    let mut text = String::new();
    assert!(
        wait_until(SETTLE, || {
            text = metrics(&t);
            series_sum(&text, RPC_COUNT, &[("service_name", "red-grpc")]) >= 8.0
                && series_sum(
                    &text,
                    RPC_CLIENT_COUNT,
                    &[("service_name", "red-grpc-client")],
                ) >= 8.0
        }),
        "{text}"
    );
    for (name, svc) in [
        (RPC_COUNT, "red-grpc"),
        (RPC_CLIENT_COUNT, "red-grpc-client"),
    ] {
        assert_eq!(
            series_sum(&text, name, &[("service_name", svc)]),
            8.0,
            "{text}"
        );
        for (method, code) in calls {
            let l = [
                ("service_name", svc),
                ("rpc_system", "grpc"),
                ("rpc_service", "tracer.test.Echo"),
                ("rpc_method", method),
                ("rpc_grpc_status_code", code),
            ];
            assert_eq!(
                series_sum(&text, name, &l),
                1.0,
                "{name} {method} {code}:\n{text}"
            );
        }
    }
    // gRPC calls are RPCs, not HTTP requests.
    assert_eq!(
        series_sum(&text, HTTP_COUNT, &[("service_name", "red-grpc")]),
        0.0
    );
    assert!(
        wait_until(SETTLE, || col.output().contains("rpc.server.duration")),
        "rotel printed no rpc metrics:\n{}",
        col.output()
    );
}

#[test]
fn the_service_graph_joins_services_on_this_node_and_top_shows_them() {
    let Some(_g) = setup_with_curl() else { return };
    if !require("tmux", which("tmux").is_some()) {
        return;
    }
    let Some(col) = collector() else { return };
    let chain = |args: &[String], name: &str| {
        let port = free_port();
        let mut cmd = Command::new(python().unwrap());
        cmd.arg(peer("chain.py"))
            .arg(&args[0])
            .arg(port.to_string())
            .args(&args[1..])
            .env("OTEL_SERVICE_NAME", name);
        Server::spawn(cmd, port)
    };
    let back = chain(&["backend".into()], "graph-back");
    let front = chain(&["frontend".into(), back.port().to_string()], "graph-front");
    let t = tracer(&[front.port(), back.port()], &col, &[]);
    for i in 0..5 {
        assert_eq!(curl(&[&front.url(&format!("/front/{i}"))]).http_code, 200);
    }
    let edge = |text: &str, c: &str, s: &str| {
        series_sum(
            text,
            "traces_service_graph_request_total",
            &[("client", c), ("server", s)],
        )
    };
    let mut text = String::new();
    assert!(
        wait_until(SETTLE, || {
            text = metrics(&t);
            edge(&text, "graph-front", "graph-back") >= 5.0
                && edge(&text, "curl", "graph-front") >= 5.0
        }),
        "{text}"
    );
    assert_eq!(edge(&text, "graph-front", "graph-back"), 5.0, "{text}");
    assert_eq!(edge(&text, "curl", "graph-front"), 5.0, "{text}");
    assert!(
        !text.contains("connection_type=\"virtual_node\""),
        "both ends of every call are traced:\n{text}"
    );
    let failed = series_sum(
        &text,
        "traces_service_graph_request_failed_total",
        &[("server", "graph-back")],
    );
    assert_eq!(failed, 0.0);
    let hist = series_sum(
        &text,
        "traces_service_graph_request_server_seconds_count",
        &[("server", "graph-back")],
    );
    assert_eq!(hist, 5.0);

    // `tracer top` in a real terminal.
    let admin = t.admin.unwrap().to_string();
    let bin = tracer_bin().unwrap();
    let session = format!("tracer-top-{}", std::process::id());
    let top = format!("{} top --admin-addr {admin}", bin.display());
    run_ok(
        "tmux",
        &[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "30",
            &top,
        ],
    );
    let pane = || run_ok("tmux", &["capture-pane", "-p", "-t", &session]);
    let shown = wait_until(SETTLE, || {
        let p = pane();
        p.contains("graph-front") && p.contains("graph-back") && p.contains("http server")
    });
    let seen = pane();
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "r"])
        .status();
    let routes = wait_until(SETTLE, || pane().contains("(no route)"));
    let pane_after = pane();
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status();
    let gone = wait_until(SETTLE, || {
        !Command::new("tmux")
            .args(["has-session", "-t", &session])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !gone {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &session])
            .status();
    }
    assert!(shown, "tracer top never showed the services:\n{seen}");
    assert!(routes, "`r` did not show the routes:\n{}", pane_after);
    assert!(gone, "`q` did not quit tracer top");
    // And once, as text.
    let once = run_ok(
        &bin,
        &["top", "--admin-addr", &admin, "--once", "--interval", "0.2"],
    );
    let header = once.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("SERVICE") && header.contains("P99"),
        "{once}"
    );
    assert!(once.contains("graph-back"), "{once}");
}
