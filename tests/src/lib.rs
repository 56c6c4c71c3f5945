//! Harness for the privileged end-to-end tests (`tests/e2e.rs`).
//!
//! The tests run the real `tracer` binary as root with real kernel probes, against real servers
//! and clients (python3, curl) and a real OTLP collector (rotel). The tracer watches the whole
//! host, so tests must not overlap: every test holds [`serial()`] for its whole run, and the
//! documented way to run them is still
//!
//! ```text
//! cargo build -p tracer-user && cargo test -p tracer-tests -- --test-threads=1
//! ```
//!
//! Missing prerequisites (root, tools, the tracer binary) skip a test with a `SKIP` line on
//! stderr, except when `CI=true`: there they fail, so a broken CI image cannot pass silently.
//!
//! Spans of other processes on the host show up too: always select spans by the pid of a
//! process the test started and/or by the test server's port.
use std::os::unix::process::CommandExt;
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use serde_json::Value;

mod prereq;
pub use prereq::*;

/// How long the tracer may take to attach its probes.
pub const TRACER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the tracer may take to drain, flush and exit after SIGINT.
pub const TRACER_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to accept connections on its port.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Serialisation and prerequisites

static SERIAL: Mutex<()> = Mutex::new(());

/// Take the global test lock: every test traces the whole host, so two at once would see each
/// other's traffic and processes. A test that panicked poisons the lock; the next one still runs.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The real python3 executable (`sys.executable`), not a pyenv/asdf shim script: spawning it
/// directly makes the child's pid the pid the traced process really has, and starts faster.
pub fn python() -> Option<PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()?;
        let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (out.status.success() && is_executable(&p)).then_some(p)
    })
    .clone()
}

/// rotel's collector binary, shipped inside the `rotel` Python package.
pub fn rotel_agent() -> Option<PathBuf> {
    let out = Command::new(python()?)
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && is_executable(&p)).then_some(p)
}

/// The prerequisites every test has: root, the tracer binary and python3 (all servers are
/// python). Also takes the global lock. `None`: skip the test.
pub fn setup() -> Option<MutexGuard<'static, ()>> {
    let guard = serial();
    let ok = require("root (the tracer loads eBPF programs)", is_root())
        && require(
            "the tracer binary (set TRACER_BIN or run `cargo build -p tracer-user`)",
            tracer_bin().is_some(),
        )
        && require("python3", python().is_some());
    ok.then_some(guard)
}

/// [`setup`] plus curl.
pub fn setup_with_curl() -> Option<MutexGuard<'static, ()>> {
    let g = setup()?;
    require("curl", which("curl").is_some()).then_some(g)
}

/// The test peers (`tests/peers/*.py`).
pub fn peer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

// ---------------------------------------------------------------------------------------------
// Temporary directories

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "tracer-e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn send_signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `f` every 20 ms until it returns true or `timeout` passes. Returns its last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The tracer

/// A running `tracer run`. Killed (SIGKILL) on drop if [`Tracer::stop`] was not called.
pub struct Tracer {
    child: Option<Child>,
    dir: TempDir,
    /// Where its admin endpoint listens (each test tracer gets a free port of its own).
    pub admin: Option<SocketAddr>,
}

/// What a stopped tracer left: the spans it printed and its log.
pub struct Stopped {
    pub spans: Vec<Value>,
    pub stderr: String,
}

impl Tracer {
    /// `tracer run --output json <extra_args>`, waiting until the probes are attached.
    pub fn start(extra_args: &[&str]) -> Tracer {
        Tracer::start_with(extra_args, &[], true)
    }

    /// Like [`Tracer::start`], with extra environment variables, and `--output json` only when
    /// `json` is true.
    pub fn start_with(extra_args: &[&str], env: &[(&str, &str)], json: bool) -> Tracer {
        let bin = tracer_bin().expect("tracer binary (checked by setup())");
        let dir = TempDir::new("tracer");
        let mut cmd = Command::new(&bin);
        cmd.arg("run");
        if json {
            cmd.args(["--output", "json"]);
        }
        // Never the default port: a tracer already running on this machine may hold it.
        let admin = if extra_args.contains(&"--admin-addr") {
            None
        } else {
            let a = localhost(free_port());
            cmd.args(["--admin-addr", &a.to_string()]);
            Some(a)
        };
        cmd.args(extra_args)
            // Plain log lines: they are searched for text.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).expect("tracer stdout file"))
            .stderr(fs::File::create(dir.join("stderr")).expect("tracer stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut t = Tracer {
            child: Some(child),
            dir,
            admin,
        };
        let deadline = Instant::now() + TRACER_READY_TIMEOUT;
        loop {
            if t.stderr().contains("tracing HTTP/1.x") {
                return t;
            }
            let child = t.child.as_mut().expect("running");
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "the tracer exited ({st}) before it was ready; stderr:\n{}",
                    t.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the tracer did not log `tracing HTTP/1.x` within {TRACER_READY_TIMEOUT:?}; stderr:\n{}",
                    t.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the running tracer (e.g. SIGHUP to reload its config).
    pub fn signal(&self, sig: i32) {
        send_signal(self.child.as_ref().expect("running"), sig);
    }

    /// `METHOD path` on the admin endpoint: (status code, body).
    pub fn admin(&self, method: &str, path: &str) -> (u16, String) {
        let addr = self.admin.expect("started with its own admin endpoint");
        http_request(&addr.to_string(), method, path, &[])
    }

    /// The log so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.dir.join("stderr"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGINT, wait for a clean exit, and return the printed spans.
    pub fn stop(self) -> Vec<Value> {
        self.stop_full().spans
    }

    /// SIGINT, wait for a clean exit (status 0 within [`TRACER_STOP_TIMEOUT`]), and return the
    /// printed spans and the log. Every stdout line must be a JSON object.
    pub fn stop_full(mut self) -> Stopped {
        let mut child = self.child.take().expect("running");
        send_signal(&child, libc::SIGINT);
        let Some(status) = wait_timeout(&mut child, TRACER_STOP_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the tracer did not exit within {TRACER_STOP_TIMEOUT:?} of SIGINT; stderr:\n{}",
                self.stderr()
            );
        };
        let stderr = self.stderr();
        assert!(
            status.success(),
            "the tracer exited with {status} after SIGINT; stderr:\n{stderr}"
        );
        let spans = parse_spans(&read_lossy(&self.dir.join("stdout")));
        Stopped { spans, stderr }
    }

    /// The spans printed so far: the whole lines of stdout (the tracer may be writing one).
    pub fn printed(&self) -> Vec<Value> {
        let stdout = read_lossy(&self.dir.join("stdout"));
        parse_spans(stdout.rsplit_once('\n').map_or("", |(whole, _)| whole))
    }
}

/// Printed spans, one JSON object a line.
fn parse_spans(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("tracer stdout line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "tracer stdout line is not an object: {l}");
            v
        })
        .collect()
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `counters: ...` line the tracer logs when it exits.
pub fn counters_line(stderr: &str) -> Option<&str> {
    stderr.lines().rev().find(|l| l.contains("counters:"))
}

/// A counter of a [`counters_line`], which leaves out the ones that are zero.
pub fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

/// A sample without labels in `/metrics` text.
/// The sum of the samples of `name` (Prometheus text) whose labels include every one of
/// `labels`: a subset selects all the series it matches.
pub fn series_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name, labels).iter().map(|(_, v)| v).sum()
}

/// The samples of `name` whose labels include `labels`: (label text, value).
pub fn series<'a>(text: &'a str, name: &str, labels: &[(&str, &str)]) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            let (n, rest) = sample.split_once('{').unwrap_or((sample, ""));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (n == name && all).then(|| Some((rest, value.parse::<f64>().ok()?)))?
        })
        .collect()
}

pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The kernel's own count of probe runs

/// Where the kernel's per-program run counters are switched on.
pub const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's per-program run counters on for as long as it lives.
pub struct BpfStats(String);

impl BpfStats {
    pub fn on() -> BpfStats {
        let was = fs::read_to_string(BPF_STATS).expect("read bpf_stats_enabled");
        fs::write(BPF_STATS, "1").expect("enable bpf_stats_enabled");
        BpfStats(was.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

/// Runs of the loaded BPF programs whose name starts with one of `prefixes` (names are cut
/// to 15 characters by the kernel).
pub fn bpf_runs(prefixes: &[&str]) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .expect("a list of programs")
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| prefixes.iter().any(|x| n.starts_with(x)))
        })
        .map(|p| p["run_cnt"].as_u64().unwrap_or(0))
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Servers and clients

/// A port nobody listens on right now (the kernel picks it; it stays free in practice).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A background process listening on a TCP port. Killed on drop, with the processes it
/// started (nginx workers outlive a killed master).
pub struct Server {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Server {
    /// Spawn `cmd` (stdout and stderr go to files) and wait until 127.0.0.1:`port` accepts TCP
    /// connections. Start servers before the tracer: the readiness probe is a connection too.
    pub fn spawn(mut cmd: Command, port: u16) -> Server {
        let dir = TempDir::new("server");
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).expect("server stdout file"))
            .stderr(fs::File::create(dir.join("stderr")).expect("server stderr file"));
        let what = format!("{cmd:?}");
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut s = Server { child, port, dir };
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&localhost(port), Duration::from_secs(1)).is_ok() {
                return s;
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!(
                    "{what} exited ({st}) before listening on {port}; stderr:\n{}",
                    s.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what} did not listen on {port} within {SERVER_READY_TIMEOUT:?}; stderr:\n{}",
                    s.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `tests/peers/server.py PORT` on a free port.
    pub fn test_server() -> Server {
        let port = free_port();
        let mut cmd = Command::new(python().expect("python3 (checked by setup())"));
        cmd.arg(peer("server.py")).arg(port.to_string());
        Server::spawn(cmd, port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.dir.join("stdout"))
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.dir.join("stderr"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this server leads; no memory is involved.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to `addr` with extra header lines, on a connection of its own:
/// (status code, body).
pub fn http_request(addr: &str, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the endpoint accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("a response");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// One curl invocation and what curl measured itself.
#[derive(Debug, Clone)]
pub struct Curl {
    pub pid: u32,
    pub http_code: u16,
    /// curl's `%{time_total}`: from the start of the transfer (before connecting) to its end,
    /// microsecond resolution.
    pub time_total_ns: u64,
    pub local_port: u16,
    pub body: Vec<u8>,
}

/// curl prints time_total in whole microseconds (truncated): a span may exceed it by < 1 µs.
pub const CURL_RESOLUTION_NS: u64 = 1_000;

const CURL_MARK: &str = "\n@@curl-write-out@@ ";

/// `curl -sS <args>`: the body and curl's own measurements. Panics if curl fails.
pub fn curl(args: &[&str]) -> Curl {
    let w = format!("{CURL_MARK}%{{http_code}} %{{time_total}} %{{local_port}}");
    let child = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", &w])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = out.stdout;
    let mark = CURL_MARK.as_bytes();
    let at = stdout
        .windows(mark.len())
        .rposition(|w| w == mark)
        .unwrap_or_else(|| panic!("curl {args:?}: no write-out in its output"));
    let tail = String::from_utf8_lossy(&stdout[at + mark.len()..]).into_owned();
    let f: Vec<&str> = tail.split_whitespace().collect();
    assert_eq!(f.len(), 3, "curl write-out: {tail:?}");
    Curl {
        pid,
        http_code: f[0].parse().expect("http_code"),
        time_total_ns: parse_seconds_ns(f[1]),
        local_port: f[2].parse().expect("local_port"),
        body: stdout[..at].to_vec(),
    }
}

/// "0.006093" (seconds) as nanoseconds, exactly (no float rounding).
pub fn parse_seconds_ns(s: &str) -> u64 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(frac.len() <= 9, "too many decimals: {s}");
    let frac_ns: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().expect("fraction") * 10u64.pow(9 - frac.len() as u32)
    };
    int.parse::<u64>().expect("seconds") * 1_000_000_000 + frac_ns
}

/// One request reported by `tests/peers/keepalive_client.py`.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub path: String,
    pub status: u16,
    pub duration_ns: u64,
    pub local_port: u16,
}

impl ClientRequest {
    pub fn parse(line: &str) -> ClientRequest {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("keepalive_client output is not JSON ({e}): {line}"));
        ClientRequest {
            path: v["path"].as_str().expect("path").to_string(),
            status: v["status"].as_u64().expect("status") as u16,
            duration_ns: v["duration_ns"].as_u64().expect("duration_ns"),
            local_port: v["local_port"].as_u64().expect("local_port") as u16,
        }
    }
}

/// A running `tests/peers/keepalive_client.py`, read line by line. Killed on drop.
pub struct KeepAliveClient {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stderr_file: PathBuf,
    _dir: TempDir,
}

impl KeepAliveClient {
    /// `keepalive_client.py PORT N [args...]`.
    pub fn spawn(port: u16, n: usize, args: &[&str]) -> KeepAliveClient {
        let dir = TempDir::new("client");
        let stderr_file = dir.join("stderr");
        let mut child = Command::new(python().expect("python3 (checked by setup())"))
            .arg(peer("keepalive_client.py"))
            .arg(port.to_string())
            .arg(n.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr_file).expect("client stderr file"))
            .spawn()
            .expect("spawn keepalive_client.py");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        KeepAliveClient {
            child,
            stdout,
            stderr_file,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next request the client reports (blocks until it is done).
    pub fn next_request(&mut self) -> ClientRequest {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read client stdout");
        assert!(
            n > 0,
            "keepalive_client.py ended early; stderr:\n{}",
            read_lossy(&self.stderr_file)
        );
        ClientRequest::parse(&line)
    }

    /// Wait for the client to exit successfully and return the requests it still reports.
    pub fn finish(mut self) -> Vec<ClientRequest> {
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .expect("read client stdout");
        let st = wait_timeout(&mut self.child, Duration::from_secs(60))
            .expect("keepalive_client.py did not exit");
        assert!(
            st.success(),
            "keepalive_client.py failed ({st}); stderr:\n{}",
            read_lossy(&self.stderr_file)
        );
        rest.lines()
            .filter(|l| !l.trim().is_empty())
            .map(ClientRequest::parse)
            .collect()
    }
}

impl Drop for KeepAliveClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open a TCP connection to 127.0.0.1:`port`, write `bytes`, half-close, and read until the
/// server closes (so the server has handled the bytes before this returns).
pub fn send_raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(localhost(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

// ---------------------------------------------------------------------------------------------
// Selecting and reading spans

pub fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

pub fn attr_str<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key).as_str()
}

pub fn attr_u64(span: &Value, key: &str) -> Option<u64> {
    attr(span, key).as_u64()
}

pub fn resource_pid(span: &Value) -> Option<u64> {
    span["resource"]["process.pid"].as_u64()
}

pub fn kind(span: &Value) -> &str {
    span["kind"].as_str().unwrap_or("")
}

pub fn duration_ns(span: &Value) -> u64 {
    span["duration_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("span without duration_ns: {span}"))
}

pub fn status_code(span: &Value) -> &str {
    span["status"]["code"].as_str().unwrap_or("")
}

/// Spans of this kind (`"SERVER"` or `"CLIENT"`).
pub fn of_kind<'a>(spans: &'a [Value], k: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| kind(s) == k).collect()
}

/// Spans of the process with this pid.
pub fn of_pid(spans: &[Value], pid: u32) -> Vec<&Value> {
    spans
        .iter()
        .filter(|s| resource_pid(s) == Some(pid as u64))
        .collect()
}

/// Spans of this kind from the process with this pid.
pub fn of_kind_pid<'a>(spans: &'a [Value], k: &str, pid: u32) -> Vec<&'a Value> {
    of_pid(spans, pid)
        .into_iter()
        .filter(|s| kind(s) == k)
        .collect()
}

/// Spans about this port: server.port (from the Host header) or, for client spans, the peer's
/// port (where the request went).
pub fn of_port(spans: &[Value], port: u16) -> Vec<&Value> {
    let p = Some(port as u64);
    spans
        .iter()
        .filter(|s| {
            attr_u64(s, "server.port") == p
                || (kind(s) == "CLIENT" && attr_u64(s, "network.peer.port") == p)
        })
        .collect()
}

/// The only span in `spans` with this url.path; panics when there are none or several.
pub fn one_with_path<'a>(spans: &[&'a Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .copied()
        .filter(|s| attr_str(s, "url.path") == Some(path))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one span with url.path {path}, got {}:\n{}",
        found.len(),
        pretty(&found)
    );
    found[0]
}

/// Spans as readable JSON lines, for assertion messages.
pub fn pretty(spans: &[&Value]) -> String {
    spans
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Count of spans per url.path.
pub fn paths(spans: &[&Value]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in spans {
        *m.entry(attr_str(s, "url.path").unwrap_or("<none>").to_string())
            .or_insert(0) += 1;
    }
    m
}

/// A 32 (trace) or 16 (span) lowercase hex id that is not all zeros.
pub fn is_hex_id(v: &Value, len: usize) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    })
}

/// Run a command to completion and return its stdout; panics when it fails.
pub fn run_ok<S: AsRef<OsStr>>(prog: S, args: &[&str]) -> String {
    let prog = prog.as_ref();
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog:?}: {e}"));
    assert!(
        out.status.success(),
        "{prog:?} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Basic shape every span must have, whatever the test.
/// The span's headers were all decoded (no `tracer.http.headers_incomplete`).
pub fn assert_headers_complete(s: &Value) {
    assert!(
        s["attributes"]
            .get("tracer.http.headers_incomplete")
            .is_none(),
        "headers incomplete: {s}"
    );
}

/// `server` is the span of the request `client` sent over a connection between two processes
/// of this node: the tracer joined them, the server span is the client's child. The syscall
/// hooks learn a connection's local end from /proc, too late for a client that exited (one
/// curl): there the server span may be a root of its own, never under anything else.
pub fn assert_child_across_connection(server: &Value, client: &Value) {
    let syscall_hooks = std::env::var("TRACER_HOOKS").as_deref() == Ok("syscalls");
    if syscall_hooks && server["parent_span_id"].is_null() {
        assert_ne!(server["trace_id"], client["trace_id"], "{server}");
    } else {
        assert_eq!(server["trace_id"], client["trace_id"], "{server}\n{client}");
        assert_eq!(
            server["parent_span_id"], client["span_id"],
            "{server}\n{client}"
        );
    }
}

/// A well-formed span of a plain-HTTP request.
pub fn assert_well_formed(s: &Value) {
    assert_well_formed_as(s, "http");
}

/// A well-formed span of a request with this `url.scheme` (`https`: seen through TLS).
pub fn assert_well_formed_as(s: &Value, scheme: &str) {
    assert!(is_hex_id(&s["trace_id"], 32), "bad trace_id: {s}");
    assert!(is_hex_id(&s["span_id"], 16), "bad span_id: {s}");
    assert!(
        s["parent_span_id"].is_null() || is_hex_id(&s["parent_span_id"], 16),
        "bad parent_span_id: {s}"
    );
    assert!(matches!(kind(s), "SERVER" | "CLIENT"), "bad kind: {s}");
    assert_eq!(
        s["name"].as_str(),
        attr_str(s, "http.request.method"),
        "name is not the method: {s}"
    );
    let start = s["start_unix_nano"].as_u64().expect("start_unix_nano");
    let end = s["end_unix_nano"].as_u64().expect("end_unix_nano");
    assert!(end >= start, "ends before it starts: {s}");
    assert_eq!(
        duration_ns(s),
        end - start,
        "duration_ns != end - start: {s}"
    );
    assert!(resource_pid(s).is_some(), "no process.pid: {s}");
    assert_eq!(attr_str(s, "url.scheme"), Some(scheme), "{s}");
    if let Some(full) = attr_str(s, "url.full") {
        assert!(full.starts_with(&format!("{scheme}://")), "{s}");
    }
}

// ---------------------------------------------------------------------------------------------
// The collector

/// A span as rotel's `--debug-log-verbosity detailed` printed it. Attribute values keep the
/// printed form: `Str(curl)`, `Int(200)`.
#[derive(Debug, Clone, Default)]
pub struct CollectedSpan {
    pub resource: HashMap<String, String>,
    pub trace_id: String,
    pub parent_id: String,
    pub span_id: String,
    pub name: String,
    pub kind: String,
    pub status_code: String,
    pub attributes: HashMap<String, String>,
}

impl CollectedSpan {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attributes.get(k).map(String::as_str)
    }
}

/// Parse rotel's detailed debug output (collector "detailed" text format).
pub fn parse_collector_output(text: &str) -> Vec<CollectedSpan> {
    #[derive(PartialEq)]
    enum Section {
        None,
        Resource,
        Span,
    }
    let mut spans: Vec<CollectedSpan> = Vec::new();
    let mut resource: HashMap<String, String> = HashMap::new();
    let mut section = Section::None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("ResourceSpans #") {
            resource.clear();
            section = Section::None;
        } else if t == "Resource attributes:" {
            section = Section::Resource;
        } else if t.starts_with("ScopeSpans") || t.starts_with("InstrumentationScope") {
            section = Section::None;
        } else if t.starts_with("Span #") {
            spans.push(CollectedSpan {
                resource: resource.clone(),
                ..Default::default()
            });
            section = Section::None;
        } else if t == "Attributes:" {
            section = Section::Span;
        } else if let Some(kv) = t.strip_prefix("-> ") {
            let Some((k, v)) = kv.split_once(": ") else {
                continue;
            };
            match section {
                Section::Resource => {
                    resource.insert(k.to_string(), v.to_string());
                }
                Section::Span => {
                    if let Some(s) = spans.last_mut() {
                        s.attributes.insert(k.to_string(), v.to_string());
                    }
                }
                Section::None => {}
            }
        } else if let Some((k, v)) = t.split_once(" : ").or_else(|| {
            // Empty values print as "Parent ID      : " (trailing space trimmed away).
            t.strip_suffix(" :").map(|k| (k, ""))
        }) {
            let Some(s) = spans.last_mut() else { continue };
            let v = v.trim().to_string();
            match k.trim() {
                "Trace ID" => s.trace_id = v,
                "Parent ID" => s.parent_id = v,
                "ID" => s.span_id = v,
                "Name" => s.name = v,
                "Kind" => s.kind = v,
                "Status code" => s.status_code = v,
                _ => {}
            }
        } else if !t.is_empty() && !line.starts_with(' ') {
            // Any other top-level line (events, links, log lines) ends the attribute list.
            section = Section::None;
        }
    }
    spans
}

/// nginx (2 workers: one service) answering /ok 200, /boom 500 and anything else 404.
/// /boom has a body: nginx closes a keep-alive connection after its own 500 page.
/// Its service is `nginx`: nginx writes its process title over its environment block, so
/// /proc shows no OTEL_SERVICE_NAME.
pub fn nginx(dir: &TempDir) -> Server {
    let port = free_port();
    let root = dir.path().display();
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 2; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {root}; proxy_temp_path {root};
  fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};
  server {{
    listen 127.0.0.1:{port};
    location = /ok {{ return 200 \"ok\\n\"; }}
    location = /boom {{ return 500 \"boom\\n\"; }}
    location / {{ return 404; }}
  }}
}}
"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.args(["-c", conf.to_str().unwrap(), "-p", &root.to_string()]);
    Server::spawn(cmd, port)
}

/// A running rotel collector printing every span it receives (exporter: blackhole).
pub struct Collector {
    server: Server,
    pub grpc_port: u16,
    pub http_port: u16,
    _dir: TempDir,
}

impl Collector {
    /// rotel printing the spans it receives.
    pub fn start(agent: &Path) -> Collector {
        Collector::start_logging(agent, &["traces"])
    }

    /// rotel printing what it receives of each signal in `what` (`traces`, `metrics`).
    pub fn start_logging(agent: &Path, what: &[&str]) -> Collector {
        let grpc_port = free_port();
        let mut http_port = free_port();
        while http_port == grpc_port {
            http_port = free_port();
        }
        Collector::start_on(agent, what, grpc_port, http_port)
    }

    /// Like [`Collector::start_logging`], on these ports (a collector coming back).
    pub fn start_on(agent: &Path, what: &[&str], grpc_port: u16, http_port: u16) -> Collector {
        let dir = TempDir::new("rotel");
        let mut cmd = Command::new(agent);
        cmd.args(["start", "--exporter", "blackhole"])
            .args(what.iter().flat_map(|w| ["--debug-log", w]))
            .args(["--debug-log-verbosity", "detailed"])
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http_port}"))
            // Its defaults are shared paths in /tmp.
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .env("NO_COLOR", "1");
        let server = Server::spawn(cmd, http_port);
        assert!(
            wait_until(SERVER_READY_TIMEOUT, || TcpStream::connect(localhost(
                grpc_port
            ))
            .is_ok()),
            "rotel does not listen on its gRPC port {grpc_port}; stderr:\n{}",
            server.stderr()
        );
        Collector {
            server,
            grpc_port,
            http_port,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Everything rotel printed so far.
    pub fn output(&self) -> String {
        self.server.stdout()
    }
}
