//! Trace context on the wire (`--propagate`). Two network namespaces joined by a veth pair
//! stand for two nodes; one tracer per node, each limited to its own processes by command
//! name, both exporting to one rotel. The client (`pyclient`, node A) writes its requests
//! with raw sockets and says which bytes it sent; the server (`pyserver`, node B) records the
//! bytes it received, so what the probes changed on the wire is compared byte for byte.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracer_tests::*;

const A_IP: &str = "10.203.0.1";
const B_IP: &str = "10.203.0.2";
const TRACEPARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT_PARENT: &str = "00f067aa0ba902b7";

/// Two namespaces and the veth pair between them; removed on drop.
struct Nodes {
    a: String,
    b: String,
}

impl Nodes {
    fn create(tag: &str) -> Nodes {
        let n = std::process::id() % 100_000;
        let nodes = Nodes {
            a: format!("tp{tag}a{n}"),
            b: format!("tp{tag}b{n}"),
        };
        let (a, b) = (&nodes.a, &nodes.b);
        run_ok(
            "sh",
            &[
                "-ec",
                &format!(
                    "ip netns add {a}
                     ip netns add {b}
                     ip -n {a} link add eth0 type veth peer name eth0 netns {b}
                     ip -n {a} addr add {A_IP}/24 dev eth0
                     ip -n {b} addr add {B_IP}/24 dev eth0
                     for ns in {a} {b}; do ip -n $ns link set eth0 up; ip -n $ns link set lo up; done"
                ),
            ],
        );
        nodes
    }

    /// `prog args` in namespace `ns` (the host's when empty).
    fn exec(ns: &str, prog: &Path, args: &[&str]) -> Command {
        if ns.is_empty() {
            let mut c = Command::new(prog);
            c.args(args);
            return c;
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(prog).args(args);
        c
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// python under another name: its processes' command name is `name` (the kernel takes it
/// from the path exec'd), which is what each tracer is limited to.
fn python_as(dir: &TempDir, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(python().expect("python3 (checked by setup())"), &link).unwrap();
    link
}

/// A recorder (`tests/peers/recorder.py`) on `ip:port` in `ns`, once it listens.
struct Recorder {
    child: Child,
    log: PathBuf,
}

impl Recorder {
    fn start(ns: &str, python: &Path, ip: &str, port: u16, log: PathBuf) -> Recorder {
        let port = port.to_string();
        let script = peer("recorder.py");
        let mut child = Nodes::exec(
            ns,
            python,
            &[script.to_str().unwrap(), ip, &port, log.to_str().unwrap()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn recorder.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "recorder.py did not start");
        Recorder { child, log }
    }

    /// The requests it received, each as the bytes that arrived.
    fn received(&self) -> Vec<Vec<u8>> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                unhex(
                    serde_json::from_str::<Value>(l).unwrap()["raw"]
                        .as_str()
                        .unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// What one run saw: the bytes the client sent (by request name), the bytes the server and
/// the backend received (in order), the spans rotel got, each tracer's metrics.
struct Run {
    sent: Vec<(String, Vec<u8>)>,
    server_got: Vec<Vec<u8>>,
    backend_got: Vec<Vec<u8>>,
    spans: Vec<CollectedSpan>,
    metrics_a: String,
    metrics_b: String,
}

/// Requests the client makes (`tests/peers/wire_client.py`), by the path the server sees.
const PATHS: &[&str] = &[
    "/ka/1", "/ka/2", "/body", "/traced", "/fwd", "/pipe/1", "/pipe/2",
];

fn path_of(s: &CollectedSpan) -> String {
    let p = s.attr("url.path").unwrap_or_default();
    p.strip_prefix("Str(")
        .and_then(|p| p.strip_suffix(')'))
        .unwrap_or(p)
        .to_string()
}

fn span<'a>(spans: &'a [CollectedSpan], kind: &str, path: &str) -> &'a CollectedSpan {
    let want = format!("SPAN_KIND_{kind}");
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == want && path_of(s) == path)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} span for {path}: {found:#?}");
    found[0]
}

fn run(tag: &str, propagate: bool) -> Option<Run> {
    let _g = setup()?;
    if !require("ip (iproute2)", which("ip").is_some()) {
        return None;
    }
    let agent = rotel_agent();
    if !require("rotel (pip install rotel)", agent.is_some()) {
        return None;
    }
    let nodes = Nodes::create(tag);
    let dir = TempDir::new("propagate");
    let (pyclient, pyserver) = (python_as(&dir, "pyclient"), python_as(&dir, "pyserver"));
    let plain = python().unwrap();
    let server = Recorder::start(&nodes.b, &pyserver, B_IP, 8080, dir.join("server.jsonl"));
    // Traced by neither tracer: it only shows what the server's own call carried.
    let backend = Recorder::start(&nodes.a, &plain, A_IP, 8081, dir.join("backend.jsonl"));
    let collector = Collector::start(&agent.unwrap());
    let endpoint = format!("http://127.0.0.1:{}", collector.grpc_port);
    let tracer = |comm: &str| {
        let mut args = vec![
            "--comm",
            comm,
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
        ];
        if propagate {
            args.push("--propagate");
        }
        Tracer::start_with(&args, &[("OTEL_BSP_SCHEDULE_DELAY", "200")], false)
    };
    let (tracer_a, tracer_b) = (tracer("pyclient"), tracer("pyserver"));
    if propagate {
        for t in [&tracer_a, &tracer_b] {
            assert!(
                t.stderr().contains("get a traceparent"),
                "--propagate did not attach:\n{}",
                t.stderr()
            );
        }
    }
    let script = peer("wire_client.py");
    let fwd = format!("{A_IP}:8081");
    let out = Nodes::exec(
        &nodes.a,
        &pyclient,
        &[script.to_str().unwrap(), B_IP, "8080", &fwd],
    )
    .output()
    .expect("run wire_client.py");
    assert!(
        out.status.success(),
        "wire_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Vec<(String, Vec<u8>)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                unhex(v["sent"].as_str().unwrap()),
            )
        })
        .collect();
    // Every request's two ends, and the server's own call to the backend.
    let complete = |spans: &[CollectedSpan]| {
        let has = |kind: &str, path: &str| {
            spans
                .iter()
                .any(|s| s.kind == format!("SPAN_KIND_{kind}") && path_of(s) == path)
        };
        PATHS.iter().all(|p| has("CLIENT", p) && has("SERVER", p)) && has("CLIENT", "/back")
    };
    assert!(
        wait_until(Duration::from_secs(20), || complete(
            &parse_collector_output(&collector.output())
        )),
        "rotel did not get every span; it got:\n{}\ntracer A:\n{}\ntracer B:\n{}",
        collector.output(),
        tracer_a.stderr(),
        tracer_b.stderr()
    );
    let (metrics_a, metrics_b) = (
        tracer_a.admin("GET", "/metrics").1,
        tracer_b.admin("GET", "/metrics").1,
    );
    let spans = parse_collector_output(&collector.output());
    drop((tracer_a.stop(), tracer_b.stop()));
    Some(Run {
        sent,
        server_got: server.received(),
        backend_got: backend.received(),
        spans,
        metrics_a,
        metrics_b,
    })
}

fn sent<'a>(r: &'a Run, name: &str) -> &'a [u8] {
    &r.sent.iter().find(|(n, _)| n == name).unwrap().1
}

/// The `traceparent` line the probes put right after the request line, and the request
/// without it.
fn split_written(got: &[u8]) -> Option<(String, Vec<u8>)> {
    let line_end = got.windows(2).position(|w| w == b"\r\n")? + 2;
    let rest = &got[line_end..];
    let header = rest.strip_prefix(b"traceparent: ")?;
    let end = header.windows(2).position(|w| w == b"\r\n")?;
    let value = String::from_utf8(header[..end].to_vec()).ok()?;
    let mut without = got[..line_end].to_vec();
    without.extend_from_slice(&header[end + 2..]);
    Some((value, without))
}

fn ids(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{value}");
    (parts[1].to_string(), parts[2].to_string())
}

#[test]
fn with_propagate_off_the_wire_is_untouched() {
    let Some(r) = run("off", false) else { return };
    let expected: Vec<&[u8]> = ["ka1", "ka2", "body", "traced", "fwd", "pipe1", "pipe2"]
        .iter()
        .map(|n| sent(&r, n))
        .collect();
    assert_eq!(r.server_got.len(), expected.len());
    for (got, want) in r.server_got.iter().zip(&expected) {
        assert!(got == want, "the server got other bytes than were sent");
    }
    assert!(
        !String::from_utf8_lossy(&r.backend_got[0]).contains("traceparent"),
        "nothing wrote a context"
    );
    // No header: the server spans on node B are roots (but the one the client set itself).
    for p in ["/ka/1", "/body", "/fwd"] {
        assert_eq!(span(&r.spans, "SERVER", p).parent_id, "", "{p}");
    }
    for m in [&r.metrics_a, &r.metrics_b] {
        assert_eq!(
            series_sum(m, "tracer_trace_context_requests_total", &[]),
            0.0,
            "the writer is not attached"
        );
    }
}

#[test]
fn one_trace_across_two_tracers() {
    let Some(r) = run("on", true) else { return };
    let got = |path: &str| {
        let target = |g: &[u8]| {
            let line =
                String::from_utf8_lossy(g.split(|b| *b == b'\r').next().unwrap()).into_owned();
            let t = line.split(' ').nth(1).unwrap_or_default().to_string();
            t.split('?').next().unwrap_or_default().to_string()
        };
        let found: Vec<&Vec<u8>> = r.server_got.iter().filter(|g| target(g) == path).collect();
        assert_eq!(found.len(), 1, "{path} received once");
        found[0].clone()
    };
    // Written: keep-alive requests, a 1 MiB body in the same write as its head, the call the
    // server then makes. The server's span is the child of the client's, in its trace.
    for (name, path) in [
        ("ka1", "/ka/1"),
        ("ka2", "/ka/2"),
        ("body", "/body"),
        ("fwd", "/fwd"),
    ] {
        let (value, without) =
            split_written(&got(path)).unwrap_or_else(|| panic!("{path}: no traceparent added"));
        assert!(
            without == sent(&r, name),
            "{path}: more changed than the one line"
        );
        let (trace, parent) = ids(&value);
        let client = span(&r.spans, "CLIENT", path);
        let server = span(&r.spans, "SERVER", path);
        assert_eq!(
            (&client.trace_id, &client.span_id),
            (&trace, &parent),
            "{path}: the CLIENT span has the ids written"
        );
        assert_eq!(
            (&server.trace_id, &server.parent_id),
            (&trace, &parent),
            "{path}: the server continued them"
        );
    }
    // Its own context: left alone.
    assert!(got("/traced") == sent(&r, "traced"));
    let traced = span(&r.spans, "SERVER", "/traced");
    assert_eq!(
        (traced.trace_id.as_str(), traced.parent_id.as_str()),
        (TRACEPARENT_TRACE, TRACEPARENT_PARENT)
    );
    // Pipelined in one write: sent as written, counted.
    for (name, path) in [("pipe1", "/pipe/1"), ("pipe2", "/pipe/2")] {
        assert!(got(path) == sent(&r, name), "{path} was changed");
        assert_eq!(span(&r.spans, "SERVER", path).parent_id, "");
    }
    let outcome =
        |m: &str, o: &str| series_sum(m, "tracer_trace_context_requests_total", &[("outcome", o)]);
    let a: HashMap<&str, f64> = [
        "written",
        "has_context",
        "unsafe_framing",
        "head_split",
        "no_room",
    ]
    .into_iter()
    .map(|o| (o, outcome(&r.metrics_a, o)))
    .collect();
    assert_eq!(
        a,
        HashMap::from([
            ("written", 4.0),
            ("has_context", 1.0),
            ("unsafe_framing", 1.0),
            ("head_split", 0.0),
            ("no_room", 0.0)
        ]),
        "node A's outcomes"
    );
    // Node B's server called the backend from the thread serving /fwd: that call continued
    // /fwd's trace, on the wire and in the spans, one trace across both tracers.
    assert_eq!(outcome(&r.metrics_b, "written"), 1.0);
    assert_eq!(r.backend_got.len(), 1);
    let (value, _) = split_written(&r.backend_got[0]).expect("the server's call got a traceparent");
    let (trace, parent) = ids(&value);
    let fwd_server = span(&r.spans, "SERVER", "/fwd");
    let call = span(&r.spans, "CLIENT", "/back");
    assert_eq!(
        trace, fwd_server.trace_id,
        "the call continued the request it served"
    );
    assert_eq!(call.span_id, parent);
    assert_eq!(
        (&call.trace_id, &call.parent_id),
        (&fwd_server.trace_id, &fwd_server.span_id)
    );
    assert_eq!(span(&r.spans, "CLIENT", "/fwd").trace_id, trace);
}

/// A socket that another socket-map program already owns (what a CNI's socket acceleration
/// does) cannot join ours: its request goes as the other program leaves it, ours is counted.
/// A second tracer writing trace context for the same process stands for that program.
#[test]
fn a_socket_another_socket_map_owns_is_left_to_it_and_counted() {
    let Some(_g) = setup() else { return };
    let dir = TempDir::new("propagate-busy");
    let pyclient = python_as(&dir, "pyclient");
    let port = free_port();
    let server = Recorder::start(
        "",
        &python().unwrap(),
        "127.0.0.1",
        port,
        dir.join("got.jsonl"),
    );
    let args = ["--comm", "pyclient", "--propagate"];
    let (first, second) = (Tracer::start(&args), Tracer::start(&args));
    let call = format!(
        "import socket; s = socket.create_connection(('127.0.0.1', {port})); \
         s.sendall(b'GET /one HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); \
         print(s.recv(100))"
    );
    let out = Command::new(&pyclient)
        .args(["-c", &call])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = |t: &Tracer| {
        let m = t.admin("GET", "/metrics").1;
        (
            series_sum(
                &m,
                "tracer_trace_context_requests_total",
                &[("outcome", "written")],
            ),
            metric(&m, "tracer_trace_context_sockets_busy_total").unwrap_or(0.0),
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (a, b) = (counts(&first), counts(&second));
            a.0 + b.0 == 1.0 && a.1 + b.1 == 1.0
        }),
        "one writer should have written, the other counted the socket as taken: {:?} {:?}",
        counts(&first),
        counts(&second)
    );
    let got = server.received();
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0]);
    assert_eq!(text.matches("traceparent:").count(), 1, "{text}");
    drop((first.stop(), second.stop()));
}
