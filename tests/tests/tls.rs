//! HTTPS, seen from the TLS library's plaintext: python's ssl module and curl on the system's
//! libssl (OpenSSL 3), a keep-alive client, a process started after the tracer, a libssl
//! loaded from a directory of its own after the tracer started, and a TLS connection that
//! carries something other than HTTP.
//!
//! Needs root; run one at a time (see tests/tests/e2e.rs).
use std::{path::PathBuf, process::Command};

use tracer_tests::*;

/// A self-signed certificate and key for 127.0.0.1, made with the openssl CLI.
struct Cert {
    dir: TempDir,
}

impl Cert {
    fn new() -> Cert {
        let dir = TempDir::new("cert");
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
                "/CN=127.0.0.1",
                // gRPC clients check the address against the subject alternative names.
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                dir.join("key.pem").to_str().unwrap(),
                "-out",
                dir.join("cert.pem").to_str().unwrap(),
            ],
        );
        Cert { dir }
    }

    fn cert(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    fn key(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }
}

fn setup_tls() -> Option<std::sync::MutexGuard<'static, ()>> {
    let g = setup_with_curl()?;
    require(
        "openssl (makes the test certificate)",
        which("openssl").is_some(),
    )
    .then_some(g)
}

/// `server.py PORT --tls CERT KEY`, with extra environment.
fn https_server(cert: &Cert, env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let mut cmd = Command::new(python().expect("python3 (checked by setup())"));
    cmd.arg(peer("server.py"))
        .arg(port.to_string())
        .args(["--tls", &cert.cert(), &cert.key()])
        .envs(env.iter().copied());
    Server::spawn(cmd, port)
}

/// Every span of `pid` is an HTTPS request of the given kind, path and status.
fn assert_https(spans: &[&Value], path: &str, status: u64) {
    for s in spans {
        assert_eq!(attr_str(s, "url.path"), Some(path), "{s}");
        assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{s}");
        assert_eq!(
            attr_u64(s, "http.response.status_code"),
            Some(status),
            "{s}"
        );
        assert_well_formed_as(s, "https");
    }
}

/// The tracer logs each OpenSSL file it probes; waits until it names one ending in `suffix`.
fn wait_probed(t: &Tracer, suffix: &str) {
    let probed = |log: &str| {
        log.lines()
            .any(|l| l.contains("TLS: probing") && l.contains(suffix))
    };
    assert!(
        wait_until(TRACER_READY_TIMEOUT, || probed(&t.stderr())),
        "the tracer did not probe {suffix}; stderr:\n{}",
        t.stderr()
    );
}

/// Runs a client peer that prints `done N` when its N requests all got the right answer;
/// returns its pid.
fn run_client(cmd: &mut Command, n: usize) -> u32 {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for the client");
    assert!(out.status.success(), "{cmd:?}: {}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("done {n}")
    );
    pid
}

/// The spans of this kind and process: exactly `n` of them.
fn exactly<'a>(spans: &'a [Value], kind: &str, pid: u32, n: usize) -> Vec<&'a Value> {
    let found = of_kind_pid(spans, kind, pid);
    assert_eq!(
        found.len(),
        n,
        "{kind} of {pid}: {}",
        pretty(&of_pid(spans, pid))
    );
    found
}

const SYSTEM_LIBSSL: &str = "/libssl.so.3";

#[test]
fn curl_to_a_python_https_server() {
    let Some(_g) = setup_tls() else { return };
    let cert = Cert::new();
    let server = https_server(&cert, &[]);
    // `tracer check` names the library the running server uses.
    let check = run_ok(tracer_bin().expect("tracer binary"), &["check"]);
    let tls_line = check
        .lines()
        .find(|l| l.contains("TLS libraries in running processes"))
        .unwrap_or_else(|| panic!("no TLS libraries line:\n{check}"));
    assert!(tls_line.contains(SYSTEM_LIBSSL), "{check}");
    assert!(check.contains("ok    TLS probes load"), "{check}");
    let t = Tracer::start(&[]);
    wait_probed(&t, SYSTEM_LIBSSL);
    const N: usize = 5;
    let curls: Vec<Curl> = (0..N)
        .map(|i| {
            curl(&[
                "-k",
                &format!("https://127.0.0.1:{}/status/20{i}", server.port()),
            ])
        })
        .collect();
    let spans = t.stop();
    let servers = exactly(&spans, "SERVER", server.pid(), N);
    for (i, c) in curls.iter().enumerate() {
        assert_eq!(c.http_code, 200 + i as u16);
        let client = exactly(&spans, "CLIENT", c.pid, 1);
        let path = format!("/status/20{i}");
        assert_https(&client, &path, 200 + i as u64);
        assert_eq!(
            attr_str(client[0], "url.full"),
            Some(format!("https://127.0.0.1:{}{path}", server.port()).as_str())
        );
        assert_eq!(
            attr_u64(client[0], "server.port"),
            Some(server.port().into())
        );
        let srv = one_with_path(&servers, &path);
        assert_https(&[srv], &path, 200 + i as u64);
        // The plaintext rides on the socket's connection: the server span knows its peer, and
        // the two ends of the connection are one trace.
        assert_eq!(
            attr_u64(srv, "network.peer.port"),
            Some(c.local_port.into()),
            "{srv}"
        );
        assert_child_across_connection(srv, client[0]);
    }
}

#[test]
fn keep_alive_https_client_started_after_the_tracer() {
    let Some(_g) = setup_tls() else { return };
    let cert = Cert::new();
    let t = Tracer::start(&[]);
    wait_probed(&t, SYSTEM_LIBSSL);
    // Both processes start after the tracer: their libssl was probed at start.
    let server = https_server(&cert, &[]);
    const N: usize = 8;
    let client = KeepAliveClient::spawn(server.port(), N, &["/status/20{i}", "--tls"]);
    let cpid = client.pid();
    let reqs = client.finish();
    assert_eq!(reqs.len(), N);
    let spans = t.stop();
    let clients = exactly(&spans, "CLIENT", cpid, N);
    let servers = exactly(&spans, "SERVER", server.pid(), N);
    for (i, r) in reqs.iter().enumerate() {
        let path = format!("/status/20{i}");
        assert_eq!(r.path, path);
        let c = one_with_path(&clients, &path);
        let s = one_with_path(&servers, &path);
        assert_https(&[c, s], &path, 200 + i as u64);
        assert!(duration_ns(c) <= r.duration_ns + 1_000_000, "{c}");
        assert_eq!(
            attr_u64(s, "network.peer.port"),
            Some(r.local_port.into()),
            "{s}"
        );
    }
}

#[test]
fn a_libssl_loaded_after_the_tracer_started_is_probed() {
    let Some(_g) = setup_tls() else { return };
    let cert = Cert::new();
    // A copy of the system libssl in a directory of its own: a file (inode) the tracer has
    // never seen, like the libssl of a container image.
    let libdir = TempDir::new("libssl");
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if !require("the system's libssl.so.3", system.is_some()) {
        return;
    }
    std::fs::copy(system.unwrap(), libdir.join("libssl.so.3")).expect("copy libssl");
    let t = Tracer::start(&[]);
    wait_probed(&t, SYSTEM_LIBSSL);
    let copy = libdir.join("libssl.so.3").display().to_string();
    assert!(
        !t.stderr().contains(&copy),
        "probed before any process loaded it"
    );
    // python loads its ssl module, and with it libssl, when server.py imports ssl: the
    // dynamic linker reports the new library, and the tracer probes it.
    let server = https_server(
        &cert,
        &[("LD_LIBRARY_PATH", libdir.path().to_str().unwrap())],
    );
    wait_probed(&t, &copy);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    assert!(
        maps.contains(&copy),
        "the server does not use the copy:\n{maps}"
    );
    const N: usize = 3;
    let client = KeepAliveClient::spawn(server.port(), N, &["/status/200", "--tls"]);
    assert_eq!(client.finish().len(), N);
    let spans = t.stop();
    let servers = exactly(&spans, "SERVER", server.pid(), N);

    assert_https(&servers, "/status/200", 200);
}

#[test]
fn tls_that_is_not_http_makes_no_spans() {
    let Some(_g) = setup_tls() else { return };
    let cert = Cert::new();
    let port = free_port();
    let mut cmd = Command::new(python().expect("python3"));
    cmd.arg(peer("tls_echo.py"))
        .args(["server", &port.to_string(), &cert.cert(), &cert.key()]);
    let echo = Server::spawn(cmd, port);
    let t = Tracer::start(&[]);
    wait_probed(&t, SYSTEM_LIBSSL);
    let client = run_client(
        Command::new(python().expect("python3"))
            .arg(peer("tls_echo.py"))
            .args(["client", &port.to_string(), "20"]),
        20,
    );
    // An HTTPS request after it, through the same tracer: it is seen, so the probes were live.
    let cert_server = https_server(&cert, &[]);
    let c = curl(&[
        "-k",
        &format!("https://127.0.0.1:{}/status/200", cert_server.port()),
    ]);
    let spans = t.stop();
    assert_eq!(
        of_kind_pid(&spans, "CLIENT", c.pid).len(),
        1,
        "{}",
        pretty(&of_pid(&spans, c.pid))
    );
    assert!(
        of_pid(&spans, client).is_empty(),
        "{}",
        pretty(&of_pid(&spans, client))
    );
    assert!(
        of_pid(&spans, echo.pid()).is_empty(),
        "{}",
        pretty(&of_pid(&spans, echo.pid()))
    );
    assert!(
        of_port(&spans, port).is_empty(),
        "{}",
        pretty(&of_port(&spans, port))
    );
}

/// nginx with `ssl` and `http2` on one port (1 worker), answering `ok` on every path.
/// Returns the server and the worker's pid.
fn nginx_tls(cert: &Cert, dir: &TempDir) -> (Server, u32) {
    let port = free_port();
    let root = dir.path().display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {root}; proxy_temp_path {root};
  fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {}; ssl_certificate_key {};
    location / {{ return 200 \"ok\\n\"; }}
  }}
}}
",
            cert.cert(),
            cert.key()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.args(["-c", conf.to_str().unwrap(), "-p", &root.to_string()]);
    let server = Server::spawn(cmd, port);
    let mut worker = None;
    assert!(
        wait_until(SERVER_READY_TIMEOUT, || {
            worker = run_ok("pgrep", &["-P", &server.pid().to_string()])
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok());
            worker.is_some()
        }),
        "no nginx worker"
    );
    (server, worker.unwrap())
}

#[test]
fn nginx_https_over_http1_and_http2() {
    let Some(_g) = setup_tls() else { return };
    if !require("nginx", which("nginx").is_some()) {
        return;
    }
    let cert = Cert::new();
    let dir = TempDir::new("nginx-tls");
    let (server, worker) = nginx_tls(&cert, &dir);
    let t = Tracer::start(&[]);
    wait_probed(&t, SYSTEM_LIBSSL);
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", server.port());
    const N: usize = 3;
    let h1: Vec<Curl> = (0..N)
        .map(|i| curl(&["-k", "--http1.1", &url(&format!("/h1/{i}"))]))
        .collect();
    // ALPN h2: HTTP/2 inside TLS, several streams on one connection.
    let h2_urls: Vec<String> = (0..N).map(|i| url(&format!("/h2/{i}"))).collect();
    let mut args = vec!["-k", "--http2"];
    args.extend(h2_urls.iter().map(String::as_str));
    let h2 = curl(&args);
    let spans = t.stop();
    let servers = exactly(&spans, "SERVER", worker, 2 * N);

    for (i, c) in h1.iter().enumerate() {
        let path = format!("/h1/{i}");
        let s = one_with_path(&servers, &path);
        assert_https(&[s], &path, 200);
        assert_eq!(attr_str(s, "network.protocol.version"), Some("1.1"), "{s}");
        let client = exactly(&spans, "CLIENT", c.pid, 1);
        assert_https(&client, &path, 200);
    }
    let h2_clients = exactly(&spans, "CLIENT", h2.pid, N);
    for i in 0..N {
        let path = format!("/h2/{i}");
        let s = one_with_path(&servers, &path);
        let c = one_with_path(&h2_clients, &path);
        assert_https(&[s, c], &path, 200);
        assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
        assert_eq!(attr_str(c, "network.protocol.version"), Some("2"), "{c}");
    }
}

/// node links OpenSSL in and moves the encrypted bytes itself (memory BIOs): each connection
/// object is tied to its socket from what the event-loop thread does next to each call. Four
/// keep-alive sockets interleave on one thread at each end; every span must be on its own
/// connection (a server span's parent is the client span of the same path).
#[test]
fn node_https_server_and_client() {
    let Some(_g) = setup_tls() else { return };
    if !require("node", which("node").is_some()) {
        return;
    }
    let cert = Cert::new();
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(peer("https_node.js"))
        .args(["server", &port.to_string(), &cert.cert(), &cert.key()]);
    let server = Server::spawn(cmd, port);
    let t = Tracer::start(&[]);
    wait_probed(&t, "/node");
    const N: usize = 40;
    let cpid = run_client(
        Command::new("node").arg(peer("https_node.js")).args([
            "client",
            &port.to_string(),
            &N.to_string(),
            "4",
        ]),
        N,
    );
    let spans = t.stop();
    let servers = exactly(&spans, "SERVER", server.pid(), N);
    let clients = exactly(&spans, "CLIENT", cpid, N);
    for i in 0..N {
        let path = format!("/n/{i}");
        let s = one_with_path(&servers, &path);
        let c = one_with_path(&clients, &path);
        assert_https(&[s, c], &path, 200);
        assert_child_across_connection(s, c);
    }
}

/// Go's own crypto/tls (no OpenSSL): a net/http server and keep-alive clients over HTTP/1.1
/// and HTTP/2 (ALPN), built here with the Go toolchain. The server is started before the
/// tracer (probed by the start-up scan), the clients after (the same binary: already probed).
#[test]
fn go_https_server_and_client() {
    let Some(_g) = setup_tls() else { return };
    if !require("go (golang-go)", which("go").is_some()) {
        return;
    }
    let cert = Cert::new();
    let bin_dir = TempDir::new("go-https");
    let bin = bin_dir.join("go_https");
    let out = Command::new("go")
        .args(["build", "-o", bin.to_str().unwrap(), "."])
        .current_dir(peer("go_https"))
        .output()
        .expect("go build");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut cmd = Command::new(&bin);
    cmd.args(["server", &port.to_string(), &cert.cert(), &cert.key()]);
    let server = Server::spawn(cmd, port);
    let t = Tracer::start(&[]);
    wait_probed(&t, "/go_https");
    const N: usize = 10;
    let go_client = |h2: bool| {
        let mut cmd = Command::new(&bin);
        cmd.args(["client", &port.to_string(), &N.to_string()]);
        if h2 {
            cmd.arg("h2");
        }
        run_client(&mut cmd, N)
    };
    let (h1_pid, h2_pid) = (go_client(false), go_client(true));
    let Stopped { spans, stderr } = t.stop_full();
    let servers = of_kind_pid(&spans, "SERVER", server.pid());
    assert_eq!(
        servers.len(),
        2 * N,
        "{}\n{stderr}",
        pretty(&of_pid(&spans, server.pid()))
    );
    for (cpid, prefix, version) in [(h1_pid, "/go/", "1.1"), (h2_pid, "/h2/", "2")] {
        let clients = of_kind_pid(&spans, "CLIENT", cpid);
        assert_eq!(
            clients.len(),
            N,
            "{}\n{stderr}",
            pretty(&of_pid(&spans, cpid))
        );
        for i in 0..N {
            let path = format!("{prefix}{i}");
            let s = one_with_path(&servers, &path);
            let c = one_with_path(&clients, &path);
            assert_https(&[s, c], &path, 200);
            assert_eq!(
                attr_str(s, "network.protocol.version"),
                Some(version),
                "{s}"
            );
            assert_eq!(
                attr_str(c, "network.protocol.version"),
                Some(version),
                "{c}"
            );
            assert_child_across_connection(s, c);
        }
    }
}

/// `@grpc/grpc-js` (the gRPC most node services run), installed by `cargo xtask setup` under
/// tests/peers/node_modules.
fn grpc_js() -> Option<PathBuf> {
    let dir = peer("node_modules");
    dir.join("@grpc/grpc-js").is_dir().then_some(dir)
}

/// gRPC over TLS (ALPN h2) between a node server and a node client: every call one SERVER and
/// one CLIENT span with the gRPC attributes and status, the server's under the client's.
#[test]
fn grpc_over_tls_node() {
    let Some(_g) = setup_tls() else { return };
    if !require("node", which("node").is_some())
        || !require(
            "@grpc/grpc-js in tests/peers/node_modules (cargo xtask setup)",
            grpc_js().is_some(),
        )
    {
        return;
    }
    let modules = grpc_js().unwrap();
    let cert = Cert::new();
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(peer("grpc_node.js"))
        .args(["server", &port.to_string(), &cert.cert(), &cert.key()])
        .env("NODE_PATH", &modules);
    let server = Server::spawn(cmd, port);
    let t = Tracer::start(&[]);
    wait_probed(&t, "/node");
    const N: usize = 5;
    let cpid = run_client(
        Command::new("node")
            .arg(peer("grpc_node.js"))
            .args(["client", &port.to_string(), &cert.cert(), &N.to_string()])
            .env("NODE_PATH", &modules)
            // It warns that TLS SNI does not carry IP addresses: true, and not the point here.
            .env("NODE_NO_WARNINGS", "1"),
        N,
    );
    let spans = t.stop();
    let servers = exactly(&spans, "SERVER", server.pid(), N + 1);
    let clients = exactly(&spans, "CLIENT", cpid, N + 1);
    let mut statuses = Vec::new();
    for s in servers.iter().chain(clients.iter()) {
        assert_eq!(s["name"].as_str(), Some("tracer.test.Echo/Say"), "{s}");
        assert_eq!(attr_str(s, "url.scheme"), Some("https"), "{s}");
        assert_eq!(attr_str(s, "rpc.system"), Some("grpc"), "{s}");
        assert_eq!(attr_str(s, "rpc.service"), Some("tracer.test.Echo"), "{s}");
        assert_eq!(attr_str(s, "rpc.method"), Some("Say"), "{s}");
        assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{s}");
        statuses.push(attr_u64(s, "rpc.grpc.status_code"));
    }
    // N calls OK and one NOT_FOUND, seen from both ends.
    assert_eq!(
        statuses.iter().filter(|c| **c == Some(0)).count(),
        2 * N,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|c| **c == Some(5)).count(),
        2,
        "{statuses:?}"
    );
    let syscall_hooks = std::env::var("TRACER_HOOKS").as_deref() == Ok("syscalls");
    for s in &servers {
        // As in assert_child_across_connection: the syscall hooks may not know a client that
        // exited before its first record was read.
        if syscall_hooks && s["parent_span_id"].is_null() {
            continue;
        }
        let parent = clients
            .iter()
            .find(|c| c["span_id"] == s["parent_span_id"])
            .unwrap_or_else(|| panic!("no CLIENT span is the parent of {s}"));
        assert_child_across_connection(s, parent);
        assert_eq!(
            attr_u64(parent, "rpc.grpc.status_code"),
            attr_u64(s, "rpc.grpc.status_code"),
            "{s}\n{parent}"
        );
    }
}

/// Runs of the TLS probes while a process that is not traced calls into libssl 20,000 times
/// (`SSL_read_ex` on a memory BIO), with these tracer arguments.
fn tls_probe_runs_of_an_untraced_process(args: &[&str]) -> u64 {
    let t = Tracer::start(args);
    wait_probed(&t, SYSTEM_LIBSSL);
    let before = bpf_runs(&["ssl_"]);
    let out = Command::new(python().expect("python3"))
        .args([
            "-c",
            "import ssl\n\
             ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
             obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())\n\
             for _ in range(20000):\n    \
                 try: obj.read(10)\n    \
                 except ssl.SSLError: pass\n",
        ])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = bpf_runs(&["ssl_"]);
    t.stop();
    after - before
}

/// With `--pid`, the TLS probes are attached for the traced processes only: the others get no
/// breakpoint (a uprobe trap costs ~20 us on these machines, benches/README.md). Counted by the
/// kernel (each program's run count), with every process traced as the control.
#[test]
fn with_pid_filters_untraced_processes_get_no_tls_breakpoints() {
    let Some(_g) = setup_tls() else { return };
    if !require("bpftool", which("bpftool").is_some())
        || !require(
            "kernel.bpf_stats_enabled",
            std::path::Path::new(BPF_STATS).exists(),
        )
    {
        return;
    }
    let _stats = BpfStats::on();
    let everyone = tls_probe_runs_of_an_untraced_process(&[]);
    // Entry and return probe of each call, at least.
    assert!(everyone >= 40_000, "{everyone} probe runs for 20,000 calls");
    let cert = Cert::new();
    let server = https_server(&cert, &[]);
    let pid = server.pid().to_string();
    let filtered = tls_probe_runs_of_an_untraced_process(&["--pid", &pid]);
    assert_eq!(filtered, 0, "probe runs in a process --pid leaves out");
    // The traced process is still seen.
    let t = Tracer::start(&["--pid", &pid]);
    wait_probed(&t, SYSTEM_LIBSSL);
    let c = curl(&[
        "-k",
        &format!("https://127.0.0.1:{}/status/200", server.port()),
    ]);
    assert_eq!(c.http_code, 200);
    let spans = t.stop();
    let servers = exactly(&spans, "SERVER", server.pid(), 1);

    assert_https(&servers, "/status/200", 200);
    assert!(of_pid(&spans, c.pid).is_empty(), "curl is not traced");
}
