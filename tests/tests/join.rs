//! Connected traces on one node, with real processes: curl -> a python frontend -> python
//! backends, and an event-loop frontend (node). Every span a test started is checked: it is in
//! the right trace under the right parent, or (event loop only) a root, counted as ambiguous.
//! No request carries a trace header: the tracer joins the spans by itself.
//!
//! Needs root; run one at a time (see tests/tests/e2e.rs).
use std::{
    collections::HashMap,
    process::{Command, Stdio},
};

use tracer_tests::*;

fn chain(args: &[&str]) -> Server {
    let port: u16 = args[1].parse().unwrap();
    let mut cmd = Command::new(python().expect("python3 (checked by setup())"));
    cmd.arg(peer("chain.py")).args(args);
    Server::spawn(cmd, port)
}

fn backend(extra: &[&str]) -> Server {
    let port = free_port().to_string();
    let mut args = vec!["backend", &port];
    args.extend(extra);
    chain(&args)
}

fn frontend(backends: &[&Server], extra: &[&str]) -> Server {
    let port = free_port().to_string();
    let ports: Vec<String> = backends.iter().map(|b| b.port().to_string()).collect();
    let ports = ports.join(",");
    let mut args = vec!["frontend", &port, &ports];
    args.extend(extra);
    chain(&args)
}

fn id(s: &Value, k: &str) -> String {
    s[k].as_str().unwrap_or_default().to_string()
}

fn path(s: &Value) -> &str {
    attr_str(s, "url.path").unwrap_or_default()
}

/// The one span of `trace` of this kind, pid and path (and server port, for client calls).
fn one<'a>(trace: &[&'a Value], k: &str, pid: u32, p: &str, server_port: Option<u16>) -> &'a Value {
    let found: Vec<&Value> = trace
        .iter()
        .copied()
        .filter(|s| kind(s) == k && resource_pid(s) == Some(pid.into()) && path(s) == p)
        .filter(|s| server_port.is_none_or(|port| attr_u64(s, "server.port") == Some(port.into())))
        .collect();
    assert_eq!(found.len(), 1, "{k} {pid} {p} in:\n{}", pretty(trace));
    found[0]
}

fn child_of(child: &Value, parent: &Value) {
    assert_eq!(
        id(child, "trace_id"),
        id(parent, "trace_id"),
        "{child}\n{parent}"
    );
    assert_eq!(
        id(child, "parent_span_id"),
        id(parent, "span_id"),
        "wrong parent:\n{child}\nnot under\n{parent}"
    );
}

/// Every request `curl -> frontend -> each backend` of request id `n` is one trace: the curl
/// span, the frontend's SERVER span under it, one CLIENT span per backend under that, and each
/// backend's SERVER span under its call. Nothing else is in the trace.
fn assert_chain(spans: &[Value], curl: &Value, front: &Server, backends: &[&Server], n: usize) {
    let trace: Vec<&Value> = spans
        .iter()
        .filter(|s| id(s, "trace_id") == id(curl, "trace_id"))
        .collect();
    assert!(curl["parent_span_id"].is_null(), "curl is the root: {curl}");
    assert_eq!(
        trace.len(),
        2 + 2 * backends.len(),
        "trace of request {n}:\n{}",
        pretty(&trace)
    );
    let served = one(&trace, "SERVER", front.pid(), &format!("/front/{n}"), None);
    child_of(served, curl);
    for b in backends {
        let back = format!("/back/{n}");
        let call = one(&trace, "CLIENT", front.pid(), &back, Some(b.port()));
        child_of(call, served);
        child_of(one(&trace, "SERVER", b.pid(), &back, None), call);
    }
}

/// [`assert_chain`] for every request curl sent: (request id, curl's pid).
fn assert_chains(spans: &[Value], sent: &[(usize, u32)], front: &Server, backends: &[&Server]) {
    for &(n, pid) in sent {
        assert_chain(spans, curl_span(spans, pid, n), front, backends, n);
    }
}

/// curl processes run at once, each sending `per_client` requests on its connection, with
/// request ids from `first` on: (request id, pid of the curl that sent it).
fn curls(front: &Server, first: usize, clients: usize, per_client: usize) -> Vec<(usize, u32)> {
    let mut running = Vec::new();
    for c in 0..clients {
        let urls: Vec<String> = (0..per_client)
            .map(|i| front.url(&format!("/front/{}", first + c * per_client + i)))
            .collect();
        let child = Command::new("curl")
            .args(["-sS", "--fail"])
            .args(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn curl");
        running.push((c, child));
    }
    let mut ids = Vec::new();
    for (c, mut child) in running {
        let pid = child.id();
        assert!(child.wait().unwrap().success(), "curl {c} failed");
        ids.extend((0..per_client).map(|i| (first + c * per_client + i, pid)));
    }
    ids
}

fn curl_span(spans: &[Value], pid: u32, n: usize) -> &Value {
    let mine = of_kind_pid(spans, "CLIENT", pid);
    one(&mine, "CLIENT", pid, &format!("/front/{n}"), None)
}

fn counter(stderr: &str, name: &str) -> u64 {
    let line = counters_line(stderr).unwrap_or_else(|| panic!("no counters line:\n{stderr}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .map_or(0, |v| v.parse().expect("counter value"))
}

#[test]
fn a_request_through_three_processes_is_one_trace() {
    let Some(_g) = setup_with_curl() else { return };
    let back = backend(&[]);
    let front = frontend(&[&back], &[]);
    let tracer = Tracer::start(&[]);
    let ids = curls(&front, 0, 1, 5);
    let stopped = tracer.stop_full();
    assert_chains(&stopped.spans, &ids, &front, &[&back]);
    assert!(counter(&stopped.stderr, "links_connection_total") >= 10);
    assert!(counter(&stopped.stderr, "links_thread_total") >= 5);
}

/// The first thing a new user tries: one curl, which exits right after its request, to a
/// python server. One trace: the server's span under curl's.
#[test]
fn one_curl_to_one_server_is_one_trace() {
    let Some(_g) = setup_with_curl() else { return };
    let server = Server::test_server();
    let tracer = Tracer::start(&[]);
    let r = curl(&[&server.url("/status/200")]);
    let spans = tracer.stop();
    assert_eq!(r.http_code, 200);
    let srv = one_with_path(&of_kind_pid(&spans, "SERVER", server.pid()), "/status/200");
    let call = spans
        .iter()
        .find(|s| kind(s) == "CLIENT" && s["resource"]["service.name"] == "curl")
        .unwrap_or_else(|| {
            panic!(
                "no curl span:\n{}",
                pretty(&spans.iter().collect::<Vec<_>>())
            )
        });
    child_of(srv, call);
    assert!(call["parent_span_id"].is_null(), "{call}");
}

#[test]
fn eight_concurrent_clients_never_get_a_wrong_parent() {
    let Some(_g) = setup_with_curl() else { return };
    let back = backend(&[]);
    let front = frontend(&[&back], &[]);
    let tracer = Tracer::start(&[]);
    let ids = curls(&front, 0, 8, 10);
    let stopped = tracer.stop_full();
    assert_eq!(ids.len(), 80);
    assert_chains(&stopped.spans, &ids, &front, &[&back]);
}

#[test]
fn a_frontend_reusing_its_connections_to_two_backends() {
    let Some(_g) = setup_with_curl() else { return };
    let (b1, b2) = (backend(&[]), backend(&[]));
    let front = frontend(&[&b1, &b2], &["--keep-alive"]);
    let tracer = Tracer::start(&[]);
    // Each curl sends its requests on one connection: one frontend thread serves them, over
    // one connection to each backend.
    let ids = curls(&front, 0, 3, 6);
    let stopped = tracer.stop_full();
    let spans = &stopped.spans;
    assert_chains(spans, &ids, &front, &[&b1, &b2]);
    // The backend connections were reused: fewer connections than calls.
    let calls = of_kind_pid(spans, "CLIENT", front.pid());
    let ports: std::collections::HashSet<u64> = calls
        .iter()
        .filter_map(|c| attr_u64(c, "network.peer.port"))
        .collect();
    assert_eq!(calls.len(), 2 * ids.len());
    assert_eq!(ports.len(), 2, "one port per backend: {ports:?}");
}

/// Node serves every request on one thread. Requests one at a time: each backend call is its
/// request's child. Eight clients at once against a slow backend: a call is either under the
/// request it was made for or a root, and the roots are counted as ambiguous.
#[test]
fn an_event_loop_frontend_is_joined_only_when_unambiguous() {
    let Some(_g) = setup_with_curl() else { return };
    let node = which("node").or_else(|| which("nodejs"));
    if !require("node", node.is_some()) {
        return;
    }
    let back = backend(&["--delay-ms", "20"]);
    let port = free_port();
    let mut cmd = Command::new(node.unwrap());
    cmd.arg(peer("chain_frontend.js"))
        .args([port.to_string(), back.port().to_string()]);
    let front = Server::spawn(cmd, port);
    let tracer = Tracer::start(&[]);
    let sequential = curls(&front, 0, 1, 5);
    curls(&front, 100, 8, 5);
    let stopped = tracer.stop_full();
    let spans = &stopped.spans;

    assert_chains(spans, &sequential, &front, &[&back]);
    let served: HashMap<String, &Value> = of_kind_pid(spans, "SERVER", front.pid())
        .into_iter()
        .map(|s| (id(s, "span_id"), s))
        .collect();
    let calls = of_kind_pid(spans, "CLIENT", front.pid());
    assert_eq!(calls.len(), 45, "{}", pretty(&calls));
    let mut roots = 0;
    for c in &calls {
        match c["parent_span_id"].as_str() {
            None => roots += 1,
            Some(p) => {
                let parent = served
                    .get(p)
                    .unwrap_or_else(|| panic!("parent not a request: {c}"));
                let n = path(c).strip_prefix("/back/").unwrap();
                assert_eq!(
                    path(parent),
                    format!("/front/{n}"),
                    "wrong parent:\n{c}\n{parent}"
                );
                child_of(c, parent);
            }
        }
    }
    // Each call's backend span is under the call, whatever the call's own parent.
    for c in &calls {
        let backs = of_kind_pid(spans, "SERVER", back.pid());
        child_of(one(&backs, "SERVER", back.pid(), path(c), None), c);
    }
    assert!(
        roots > 0,
        "eight clients at once against a 20 ms backend overlap on one thread"
    );
    assert_eq!(counter(&stopped.stderr, "links_ambiguous_total"), roots);
}

/// Two network namespaces, like two pods of one node: each with a veth to the host, which
/// routes between them, and a DNAT rule like a Service's, from a ClusterIP to the server.
/// Removed on drop.
struct Pods {
    client: String,
    server: String,
    table: String,
}

const CLIENT_IP: &str = "10.201.1.2";
const SERVER_IP: &str = "10.201.2.2";
const CLUSTER_IP: &str = "10.96.77.10";

impl Pods {
    fn create() -> Pods {
        let tag = std::process::id() % 100_000;
        let p = Pods {
            client: format!("tjc{tag}"),
            server: format!("tjs{tag}"),
            table: format!("tracer_join_{tag}"),
        };
        let sh = |script: &str| run_ok("sh", &["-ec", script]);
        for (ns, subnet) in [(&p.client, 1), (&p.server, 2)] {
            sh(&format!(
                "ip netns add {ns}
                 ip link add {ns}h type veth peer name {ns}p
                 ip link set {ns}p netns {ns}
                 ip addr add 10.201.{subnet}.1/24 dev {ns}h
                 ip link set {ns}h up
                 ip -n {ns} addr add 10.201.{subnet}.2/24 dev {ns}p
                 ip -n {ns} link set {ns}p up
                 ip -n {ns} link set lo up
                 ip -n {ns} route add default via 10.201.{subnet}.1"
            ));
        }
        sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1
             nft add table ip {t}
             nft 'add chain ip {t} pre {{ type nat hook prerouting priority -100; }}'
             nft add rule ip {t} pre ip daddr {CLUSTER_IP} tcp dport 80 dnat to {SERVER_IP}:8080",
            t = p.table
        ));
        p
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and so the pair.
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

/// Pod to pod over veth, and pod to a Service's ClusterIP (DNAT to the server pod): the server
/// sees the client's own address and port, the client's peer is the ClusterIP. Both requests
/// are joined by the client's address and port.
#[test]
fn across_pods_and_through_a_service_dnat() {
    let Some(_g) = setup_with_curl() else { return };
    if !require("ip (iproute2)", which("ip").is_some())
        || !require("nft (nftables)", which("nft").is_some())
    {
        return;
    }
    let pods = Pods::create();
    let www = TempDir::new("www");
    for f in ["direct.txt", "service.txt"] {
        std::fs::write(www.join(f), f).unwrap();
    }
    let mut server = pods
        .exec(
            &pods.server,
            &["python3", "-m", "http.server", "8080", "--bind", SERVER_IP],
        )
        .current_dir(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the server pod's http.server");
    let curl_in_pod = |url: &str| {
        let out = pods
            .exec(
                &pods.client,
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    url,
                ],
            )
            .output()
            .expect("run curl in the client pod");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    };
    let service = format!("http://{CLUSTER_IP}/service.txt");
    assert!(
        wait_until(SERVER_READY_TIMEOUT, || curl_in_pod(&service).0 == "200"),
        "the server pod never answered through the Service address"
    );
    let tracer = Tracer::start(&[]);
    let direct = curl_in_pod(&format!("http://{SERVER_IP}:8080/direct.txt"));
    let via = curl_in_pod(&service);
    let spans = tracer.stop();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!((direct.0.as_str(), via.0.as_str()), ("200", "200"));

    let servers = of_kind_pid(&spans, "SERVER", server.id());
    for (p, peer) in [("/direct.txt", SERVER_IP), ("/service.txt", CLUSTER_IP)] {
        let srv = one_with_path(&servers, p);
        assert_eq!(attr_str(srv, "client.address"), Some(CLIENT_IP), "{srv}");
        let call = spans
            .iter()
            .find(|s| {
                kind(s) == "CLIENT" && path(s) == p && s["resource"]["service.name"] == "curl"
            })
            .unwrap_or_else(|| panic!("no curl span for {p}"));
        assert_eq!(attr_str(call, "network.peer.address"), Some(peer), "{call}");
        child_of(srv, call);
    }
}
