//! Admin endpoint and live configuration, end to end: the real daemon, real traffic.
use std::{fs, process::Command, time::Duration};

use serde_json::Value;
use tracer_tests::*;

/// Parses Prometheus text with the reference parser (prometheus_client, PyPI) and returns
/// `name value` for every sample.
fn prometheus_samples(text: &str) -> Vec<(String, f64)> {
    let dir = TempDir::new("prom");
    fs::write(dir.join("metrics.txt"), text).unwrap();
    let out = Command::new(python().unwrap())
        .arg("-c")
        .arg(
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
             for fam in f(open(sys.argv[1]).read()):\n    for s in fam.samples:\n        print(s.name, s.value)",
        )
        .arg(dir.join("metrics.txt"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(n, v)| (n.to_string(), v.parse().unwrap()))
        })
        .collect()
}

fn has_prometheus_parser() -> bool {
    python().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .1
}

#[test]
fn health_readiness_and_metrics() {
    let Some(_g) = setup_with_curl() else { return };
    if !require(
        "the prometheus_client python module (pip install prometheus-client)",
        has_prometheus_parser(),
    ) {
        return;
    }
    let server = Server::test_server();
    let tracer = Tracer::start(&["--port", &server.port().to_string()]);
    assert_eq!(tracer.admin("GET", "/healthz"), (200, "ok\n".into()));
    assert_eq!(tracer.admin("GET", "/readyz"), (200, "ready\n".into()));
    assert_eq!(tracer.admin("GET", "/nope").0, 404);
    assert_eq!(tracer.admin("DELETE", "/metrics").0, 405);
    for i in 0..3 {
        assert_eq!(
            curl(&[&server.url(&format!("/status/20{i}"))]).http_code,
            200 + i
        );
    }
    // Spans are built as the reader drains the ring (at most 50 ms later).
    let mut samples = vec![];
    assert!(wait_until(Duration::from_secs(10), || {
        let (code, body) = tracer.admin("GET", "/metrics");
        assert_eq!(code, 200);
        samples = prometheus_samples(&body);
        sample(&samples, "tracer_spans_built_total") >= 6.0
    }));
    assert_eq!(sample(&samples, "tracer_probes_attached"), 1.0);
    assert_eq!(sample(&samples, "tracer_events_lost_total"), 0.0);
    assert!(sample(&samples, "tracer_events_read_total") >= 12.0);
    let spans = tracer.stop();
    assert_eq!(spans.len(), 6, "3 server + 3 client spans");
}

#[test]
fn readiness_reports_a_dead_otlp_endpoint() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let dead = free_port();
    let tracer = Tracer::start_with(
        &[
            "--port",
            &server.port().to_string(),
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{dead}"),
        ],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "300"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "200"),
        ],
        false,
    );
    curl(&[&server.url("/status/200")]);
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = tracer.admin("GET", "/readyz");
            last.0 == 503
        }),
        "readyz stayed {last:?}"
    );
    assert!(last.1.contains("exporting fails"), "{last:?}");
    assert_eq!(
        tracer.admin("GET", "/healthz").0,
        200,
        "alive even though export fails"
    );
    let stopped = tracer.stop_full();
    let counters = counters_line(&stopped.stderr)
        .unwrap_or_default()
        .to_string();
    assert!(
        counters.contains("spans_dropped_total{reason=\"export_failed\"}=2"),
        "{counters}"
    );
}

fn paths(spans: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = spans
        .iter()
        .filter_map(|s| attr_str(s, "url.path").map(String::from))
        .collect();
    v.sort();
    v
}

#[test]
fn config_reload_applies_valid_files_and_keeps_running_settings_on_bad_ones() {
    let Some(_g) = setup_with_curl() else { return };
    let a = Server::test_server();
    let b = Server::test_server();
    let dir = TempDir::new("config");
    let cfg = dir.join("tracer.yaml");
    fs::write(&cfg, format!("port: [{}]\n", a.port())).unwrap();
    let tracer = Tracer::start(&["--config", cfg.to_str().unwrap()]);

    // A broken file (SIGHUP): rejected, the port-a filter stays.
    fs::write(&cfg, "port: [not a port\n").unwrap();
    tracer.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || tracer
            .stderr()
            .contains("config rejected")),
        "{}",
        tracer.stderr()
    );
    curl(&[&a.url("/status/200")]);
    curl(&[&b.url("/status/201")]);
    // The port filter applies as each exchange is decoded: let these four be decided (two
    // built, two filtered before a span was built) under the old settings before changing them.
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, m) = tracer.admin("GET", "/metrics");
        m.contains("tracer_spans_built_total 2\n") && m.contains("tracer_spans_filtered_total 2\n")
    }));

    // A valid file (POST /reload): the filter moves to port b.
    fs::write(&cfg, format!("port: [{}]\n", b.port())).unwrap();
    let (code, body) = tracer.admin("POST", "/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("reloaded"), "{body}");
    curl(&[&a.url("/status/202")]);
    curl(&[&b.url("/status/203")]);

    // An invalid value (POST /reload): 422 with the reason.
    fs::write(&cfg, "capture-size: 5\n").unwrap();
    let (code, body) = tracer.admin("POST", "/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("capture-size 5"), "{body}");
    let (_, metrics) = tracer.admin("GET", "/metrics");
    assert!(
        metrics.contains("tracer_config_reloads_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tracer_config_reload_failures_total 2\n"),
        "{metrics}"
    );

    let spans = tracer.stop();
    // Client and server span of /status/200 (port a, before), and of /status/203 (port b, after).
    assert_eq!(
        paths(&spans),
        ["/status/200", "/status/200", "/status/203", "/status/203"],
        "{spans:#?}"
    );
}

/// An address that is not loopback (198.18.0.77, on `lo`): a connection from it to the admin
/// endpoint is a connection from the network. Removed on drop.
struct NetworkAddress {
    ip: &'static str,
}

impl NetworkAddress {
    fn new() -> NetworkAddress {
        let ip = "198.18.0.77";
        run_ok("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        NetworkAddress { ip }
    }
}

impl Drop for NetworkAddress {
    fn drop(&mut self) {
        let cidr = format!("{}/32", self.ip);
        let _ = Command::new("ip")
            .args(["addr", "del", &cidr, "dev", "lo"])
            .status();
    }
}

/// One request to `addr`, with an Authorization header when given: (status, body).
fn request(addr: &str, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let auth = auth.map(|a| format!("Authorization: {a}"));
    http_request(
        addr,
        method,
        path,
        auth.as_slice()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    )
}

#[test]
fn over_the_network_state_changes_need_the_admin_token() {
    let Some(_g) = setup() else { return };
    if !require("ip (iproute2)", which("ip").is_some()) {
        return;
    }
    let net = NetworkAddress::new();
    let dir = TempDir::new("admin-token");
    let (cfg, token) = (dir.join("tracer.yaml"), dir.join("token"));
    fs::write(&cfg, "port: [1]\n").unwrap();
    fs::write(&token, "0123456789abcdef-token\n").unwrap();
    let port = free_port();
    let tracer = Tracer::start_with(
        &[
            "--admin-addr",
            &format!("0.0.0.0:{port}"),
            "--admin-token-file",
            token.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
        false,
    );
    let remote = format!("{}:{port}", net.ip);
    let good = Some("Bearer 0123456789abcdef-token");
    // Read-only: open to the network.
    assert_eq!(request(&remote, "GET", "/metrics", None).0, 200);
    for (method, path) in [("POST", "/reload"), ("GET", "/plugins"), ("GET", "/config")] {
        for auth in [
            None,
            Some("Bearer 0123456789abcdef-tokeN"),
            Some("Bearer x"),
        ] {
            let (code, body) = request(&remote, method, path, auth);
            assert_eq!(code, 403, "{method} {path} with {auth:?}: {body}");
            assert!(body.contains("--admin-token-file"), "{body}");
        }
        let (code, body) = request(&remote, method, path, good);
        assert_eq!(code, 200, "{method} {path} with the token: {body}");
    }
    // From this host, no token needed.
    let (code, body) = request(&format!("127.0.0.1:{port}"), "POST", "/reload", None);
    assert_eq!(code, 200, "{body}");
    let log = tracer.stderr();
    // Exactly the two allowed reloads ran; the refused ones never reached the reloader.
    assert_eq!(log.matches("tracer.yaml unchanged").count(), 2, "{log}");
    tracer.stop();
}
