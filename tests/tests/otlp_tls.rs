//! OTLP over TLS: the tracer exports spans and metrics to a real collector (rotel) behind a
//! real TLS terminator (nginx: `proxy_pass` for OTLP/HTTP, `grpc_pass` for OTLP/gRPC), trusting
//! a private CA; with a client certificate where nginx asks for one (mTLS); and refusing, with
//! a clear error and the drops counted, a collector whose certificate another CA signed.
//!
//! Needs root; run one at a time (see tests/tests/e2e.rs).
use std::{fs, process::Command, time::Duration};

use tracer_tests::*;

const SETTLE: Duration = Duration::from_secs(30);

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a second
/// CA that signed nothing here. Made with the openssl CLI.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("pki");
        let p = |f: &str| dir.join(f).display().to_string();
        for ca in ["ca", "other-ca"] {
            run_ok(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN=tracer test {ca}"),
                    "-keyout",
                    &p(&format!("{ca}.key")),
                    "-out",
                    &p(&format!("{ca}.pem")),
                ],
            );
        }
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            fs::write(
                dir.join(&format!("{name}.ext")),
                format!("basicConstraints=CA:FALSE\n{ext}"),
            )
            .unwrap();
            run_ok(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &p(&format!("{name}.key")),
                    "-out",
                    &p(&format!("{name}.csr")),
                ],
            );
            run_ok(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-days",
                    "1",
                    "-in",
                    &p(&format!("{name}.csr")),
                    "-CA",
                    &p("ca.pem"),
                    "-CAkey",
                    &p("ca.key"),
                    "-CAcreateserial",
                    "-extfile",
                    &p(&format!("{name}.ext")),
                    "-out",
                    &p(&format!("{name}.pem")),
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// nginx terminating TLS in front of the collector: OTLP/HTTP and OTLP/gRPC, each once open
/// to any client and once asking for a client certificate from the CA.
struct Front {
    _server: Server,
    http: u16,
    grpc: u16,
    http_mtls: u16,
    grpc_mtls: u16,
}

fn front(pki: &Pki, col: &Collector, dir: &TempDir) -> Front {
    let [http, grpc, http_mtls, grpc_mtls] = [0; 4].map(|_| free_port());
    let root = dir.path().display();
    let tls = format!(
        "ssl_certificate {}; ssl_certificate_key {};",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let mtls = format!(
        "{tls} ssl_verify_client on; ssl_client_certificate {};",
        pki.path("ca.pem")
    );
    let server = |port: u16, h2: bool, tls: &str| {
        let pass = if h2 {
            format!("grpc_pass grpc://127.0.0.1:{};", col.grpc_port)
        } else {
            format!("proxy_pass http://127.0.0.1:{};", col.http_port)
        };
        let h2 = if h2 { " http2" } else { "" };
        format!("  server {{ listen 127.0.0.1:{port} ssl{h2}; {tls} location / {{ {pass} }} }}\n")
    };
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {root}; proxy_temp_path {root};
  fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};
{}{}{}{}}}
",
            server(http, false, &tls),
            server(grpc, true, &tls),
            server(http_mtls, false, &mtls),
            server(grpc_mtls, true, &mtls),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.args(["-c", conf.to_str().unwrap(), "-p", &root.to_string()]);
    Front {
        _server: Server::spawn(cmd, http),
        http,
        grpc,
        http_mtls,
        grpc_mtls,
    }
}

fn setup_otlp_tls() -> Option<(
    std::sync::MutexGuard<'static, ()>,
    Collector,
    Pki,
    TempDir,
    Front,
)> {
    let g = setup_with_curl()?;
    let agent = rotel_agent();
    let ok = require("rotel (pip install rotel)", agent.is_some())
        && require("nginx", which("nginx").is_some())
        && require("openssl (makes the test PKI)", which("openssl").is_some());
    if !ok {
        return None;
    }
    let col = Collector::start_logging(&agent.unwrap(), &["traces", "metrics"]);
    let pki = Pki::new();
    let dir = TempDir::new("otlp-tls");
    let f = front(&pki, &col, &dir);
    Some((g, col, pki, dir, f))
}

/// A tracer on `server`'s port exporting to `endpoint` with `env`.
fn tracer(server: &Server, protocol: &str, endpoint: &str, env: &[(&str, &str)]) -> Tracer {
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
    ];
    all.extend_from_slice(env);
    Tracer::start_with(&["--port", &server.port().to_string()], &all, false)
}

/// Requests `/status/{code}` once and waits until the collector printed its span.
fn arrives(server: &Server, col: &Collector, code: u16) -> bool {
    let path = format!("/status/{code}");
    assert_eq!(curl(&[&server.url(&path)]).http_code, code);
    let seen = format!("-> url.path: Str({path})");
    wait_until(SETTLE, || col.output().contains(&seen))
}

/// Requests `/status/{code}` once (its span must not get to the collector).
fn request(server: &Server, code: u16) -> String {
    let path = format!("/status/{code}");
    assert_eq!(curl(&[&server.url(&path)]).http_code, code);
    format!("-> url.path: Str({path})")
}

/// Whether the collector printed a request-duration point for status `code`.
fn metric_arrived(col: &Collector, code: u16) -> bool {
    let point = format!("http.response.status_code: Int({code})");
    col.output()
        .split("Metric #")
        .any(|m| m.contains("Name: http.server.request.duration\n") && m.contains(&point))
}

fn dropped(t: &Tracer, reason: &str) -> f64 {
    let (_, text) = t.admin("GET", "/metrics");
    metric(
        &text,
        &format!("tracer_spans_dropped_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn spans_and_metrics_reach_a_collector_behind_tls_over_http_and_grpc() {
    let Some((_g, col, pki, _dir, f)) = setup_otlp_tls() else {
        return;
    };
    let server = Server::test_server();
    let ca = pki.path("ca.pem");
    for (protocol, port, code) in [("http/protobuf", f.http, 201), ("grpc", f.grpc, 202)] {
        let endpoint = format!("https://127.0.0.1:{port}");
        let t = tracer(
            &server,
            protocol,
            &endpoint,
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)],
        );
        assert!(
            arrives(&server, &col, code),
            "{protocol}: no span at the collector through {endpoint}; tracer:\n{}",
            t.stderr()
        );
        assert!(
            wait_until(SETTLE, || metric_arrived(&col, code)),
            "{protocol}: no request metrics through TLS:\n{}",
            t.stderr()
        );
        let (_, text) = t.admin("GET", "/metrics");
        assert_eq!(metric(&text, "tracer_export_failing"), Some(0.0), "{text}");
        t.stop();
    }
}

#[test]
fn mutual_tls_shows_the_client_certificate_and_without_it_nothing_gets_in() {
    let Some((_g, col, pki, _dir, f)) = setup_otlp_tls() else {
        return;
    };
    let server = Server::test_server();
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let with_cert = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
    ];
    for (protocol, port, code) in [
        ("http/protobuf", f.http_mtls, 203),
        ("grpc", f.grpc_mtls, 204),
    ] {
        let endpoint = format!("https://127.0.0.1:{port}");
        let t = tracer(&server, protocol, &endpoint, &with_cert);
        assert!(
            arrives(&server, &col, code),
            "{protocol}: no span through mTLS at {endpoint}; tracer:\n{}",
            t.stderr()
        );
        t.stop();

        // No client certificate: nginx turns the export away; the spans are counted as lost.
        let t = tracer(
            &server,
            protocol,
            &endpoint,
            &[
                with_cert[0],
                ("OTEL_BSP_EXPORT_TIMEOUT", "2000"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ],
        );
        let seen = request(&server, code + 10);
        assert!(
            wait_until(SETTLE, || dropped(&t, "export_rejected")
                + dropped(&t, "export_failed")
                >= 1.0),
            "{protocol}: the refused export was not counted:\n{}",
            t.stderr()
        );
        assert!(
            !col.output().contains(&seen),
            "{protocol}: got in without a certificate"
        );
        t.stop();
    }
}

#[test]
fn a_collector_certificate_from_another_ca_is_refused_said_and_counted() {
    let Some((_g, col, pki, _dir, f)) = setup_otlp_tls() else {
        return;
    };
    let server = Server::test_server();
    let other = pki.path("other-ca.pem");
    for (protocol, port, code) in [("http/protobuf", f.http, 205), ("grpc", f.grpc, 206)] {
        let endpoint = format!("https://127.0.0.1:{port}");
        let t = tracer(
            &server,
            protocol,
            &endpoint,
            &[
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", &other),
                ("OTEL_BSP_EXPORT_TIMEOUT", "2000"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ],
        );
        let seen = request(&server, code);
        assert!(
            wait_until(SETTLE, || dropped(&t, "export_failed") >= 1.0),
            "{protocol}: no export_failed drop:\n{}",
            t.stderr()
        );
        assert!(
            !col.output().contains(&seen),
            "{protocol}: exported to an untrusted collector"
        );
        assert!(
            wait_until(SETTLE, || t.admin("GET", "/readyz").0 == 503),
            "{protocol}: readyz stays ready while every export fails"
        );
        let log = t.stderr();
        assert!(
            log.contains("UnknownIssuer") || log.contains("unknown issuer"),
            "{protocol}: the log does not say the certificate was not trusted:\n{log}"
        );
        t.stop();
    }
}

#[test]
fn a_certificate_file_that_cannot_be_read_stops_the_start_naming_the_variable() {
    let Some(_g) = setup() else { return };
    let out = Command::new(tracer_bin().expect("checked by setup()"))
        .args(["run", "--admin-addr", "off"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
}
