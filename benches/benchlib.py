"""Helpers shared by the load benches (load.py, h2load.py, cost.py): ports, processes, CPU and
memory readings, pinning, the collector, and a handle on a running tracer (start, counters,
waiting for the export to drain, stop)."""
import os, re, shutil, signal, socket, statistics, subprocess, sys, time, urllib.request


class BenchError(Exception):
    """A bench step that cannot go on (a tool missing, a process that did not start)."""


def need_tools(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: run `cargo xtask setup` "
                         f"(taskset is in util-linux, dd in coreutils)")


def rotel_bin():
    try:
        import rotel
    except ImportError:
        raise BenchError("the rotel collector (PyPI `rotel`) is missing: run `cargo xtask setup`")
    return os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {port} after {timeout}s")


def log(msg):
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- CPU placement ------------------------------------------------------------------------

def taskset(cpus):
    """Command prefix that runs a program on these CPUs (nothing when cpus is None)."""
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def all_cpus():
    return sorted(os.sched_getaffinity(0))


def pin(pid, cpus):
    """Moves every thread of a running process to these CPUs (None: to all of them)."""
    subprocess.run(["taskset", "-a", "-p", "-c", ",".join(map(str, cpus or all_cpus())), str(pid)],
                   check=True, stdout=subprocess.DEVNULL)


# --- /proc readings -----------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _status_mb(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid):
    return _status_mb(pid, "VmRSS:")


def hwm_mb(pid):
    """Peak RSS since the process started (VmHWM)."""
    return _status_mb(pid, "VmHWM:")


def other_tracers(mine=()):
    """Pids of `tracer` processes this bench did not start (they would skew the figures)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in mine:
            try:
                if open(f"/proc/{d}/comm").read().strip() == "tracer":
                    found.append(int(d))
            except OSError:
                pass
    return found


# --- the tracer's counters ----------------------------------------------------------------

COUNTER = re.compile(r"([A-Za-z_]\w*(?:\{[^}]*\})?)=(\d+)")


def counters(stderr_text):
    """The last `counters: k=v ...` line of a tracer's log; labelled members of a family keep
    their label: `spans_dropped_total{reason="export_queue_full"}`."""
    last = [l for l in stderr_text.splitlines() if "counters:" in l]
    if not last:
        return {}
    return {k: int(v) for k, v in COUNTER.findall(last[-1].split("counters:", 1)[1])}


def prometheus(text):
    """/metrics text -> the same keys as `counters()` (no `tracer_` prefix)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name.removeprefix("tracer_")] = int(float(value))
            except ValueError:
                pass
    return out


# Spans the tracer chose not to deliver (filters, sampling plugins): not losses.
INTENDED = ("spans_filtered_total", "spans_plugin_dropped_total")


def span_drops(c):
    """Spans lost between the span builder and delivery, by counter: spans_queue_full_total,
    spans_export_failed_total, spans_dropped_total{reason=...}, ... (whatever this build has)."""
    return {k: v for k, v in c.items()
            if k.startswith("spans_") and k not in INTENDED and re.search(r"drop|queue_full|fail", k)}


def record_drops(c):
    """Ring-buffer records the daemon read but dropped (the kernel's own are events_lost_total)."""
    return {k: v for k, v in c.items() if k.startswith("records_") and re.search(r"drop|lost|full", k)}


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def loss_summary(c):
    """Built / exported / dropped / lost figures of a counter set (totals or a delta)."""
    drops = span_drops(c)
    return {
        "spans_built": c.get("spans_built_total", 0),
        "spans_exported": c.get("spans_exported_total", 0),
        "spans_dropped": sum(drops.values()),
        "spans_dropped_by_counter": drops,
        "spans_intended_drops": sum(c.get(k, 0) for k in INTENDED),
        "kernel_events_lost": c.get("events_lost_total", 0),
        "records_dropped": sum(record_drops(c).values()),
        "sequence_gaps": c.get("sequence_gaps_total", 0),
        "lost_exchanges": c.get("decode_lost_exchanges_total", 0),
    }


# --- processes ----------------------------------------------------------------------------

def clean_env():
    """The environment without OTEL_* variables: the tracer runs with its default settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def start_collector(tmp, cpus=None):
    """rotel (blackhole exporter) on free ports; returns (process, gRPC port)."""
    gport, hport = free_port(), free_port()
    p = subprocess.Popen(taskset(cpus) + [rotel_bin(), "start", "--exporter", "blackhole",
                                          "--otlp-grpc-endpoint", f"127.0.0.1:{gport}",
                                          "--otlp-http-endpoint", f"127.0.0.1:{hport}",
                                          "--pid-file", os.path.join(tmp, f"rotel-{gport}.pid"),
                                          "--log-file", os.path.join(tmp, f"rotel-{gport}.log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(gport)
    return p, gport


def otlp_grpc(gport):
    return ["--otlp-endpoint", f"http://127.0.0.1:{gport}", "--otlp-protocol", "grpc"]


class Tracer:
    """`tracer run ARGS` with its log in a file and its admin endpoint on a free port; blocks
    until the probes are attached (raises BenchError with the log's tail if it does not start)."""

    def __init__(self, binary, args, tmp, env=None, cpus=None, name="tracer", timeout=60):
        self.admin = free_port()
        self.path = os.path.join(tmp, f"{name}.err")
        self.err = open(self.path, "w+")
        cmd = taskset(cpus) + [binary, "run", *args, "--admin-addr", f"127.0.0.1:{self.admin}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err,
                                     env=clean_env() if env is None else env)
        self.pid = self.proc.pid
        end = time.time() + timeout
        while "tracing HTTP" not in self.log():
            if self.proc.poll() is not None or time.time() > end:
                self.stop()
                tail = "\n".join(self.log().splitlines()[-15:])
                raise BenchError(f"the tracer did not start ({' '.join(cmd)}):\n{tail}")
            time.sleep(0.1)
        self.final = None

    def log(self):
        self.err.seek(0)
        return self.err.read()

    def cpu(self):
        return cpu_seconds(self.pid)

    def rss(self):
        return rss_mb(self.pid)

    def hwm(self):
        return hwm_mb(self.pid)

    def metrics(self):
        """Every counter now: from /metrics, else (admin unreachable) from a SIGUSR1 log line."""
        try:
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
            with direct.open(f"http://127.0.0.1:{self.admin}/metrics", timeout=2) as r:
                return prometheus(r.read().decode())
        except OSError:
            before = self.log().count("counters:")
            self.proc.send_signal(signal.SIGUSR1)
            for _ in range(50):
                text = self.log()
                if text.count("counters:") > before:
                    return counters(text)
                time.sleep(0.05)
            return counters(self.log())

    def settle(self, timeout=60, poll=0.25, sample=None):
        """Waits until every span built has been exported or dropped and nothing moves any more
        (records read, spans built and their fate unchanged over two polls). Returns
        (counters, seconds waited, drained?). `sample` is called at each poll (RSS sampling)."""
        t0 = time.time()
        last, steady = None, 0
        while True:
            c = self.metrics()
            if sample:
                sample()
            built = c.get("spans_built_total", 0)
            done = (c.get("spans_exported_total", 0) + sum(span_drops(c).values())
                    + sum(c.get(k, 0) for k in INTENDED))
            now = (c.get("events_read_total", 0), built, done)
            steady = steady + 1 if now == last and done >= built else 0
            if steady >= 2:
                return c, time.time() - t0, True
            if time.time() - t0 > timeout:
                return c, time.time() - t0, False
            last = now
            time.sleep(poll)

    def stop(self):
        """SIGINT, wait for the flush; returns the counters of the tracer's last log line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.final = counters(self.log())
        return self.final

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def sample_rss(tracer, peak):
    """A closure that records the tracer's RSS into peak[0] (max)."""
    def f():
        try:
            peak[0] = max(peak[0], tracer.rss())
        except OSError:
            pass
    return f


def run_loaded(tracer, load, settle_timeout=60, idle_wait=1.0):
    """Runs `load()` (a thread-free callable returning its figures) while sampling the tracer's
    RSS, then waits for the export to drain. Returns a dict with the load's result, the tracer's
    CPU from the load's start to the drain's end, the elapsed load time, counters before/after."""
    import threading
    time.sleep(idle_wait)  # startup allocations settle before the idle reading
    before = tracer.metrics()
    idle = tracer.rss()
    peak = [idle]
    sample = sample_rss(tracer, peak)
    cpu0 = tracer.cpu()
    holder = {}

    def go():
        try:
            holder["r"] = load()
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            holder["e"] = e

    t0 = time.time()
    th = threading.Thread(target=go)
    th.start()
    while th.is_alive():
        sample()
        th.join(0.2)
    elapsed = time.time() - t0
    cpu_load = tracer.cpu() - cpu0
    if "e" in holder:
        raise holder["e"]
    after, drain_s, drained = tracer.settle(timeout=settle_timeout, sample=sample)
    return {"load": holder["r"], "elapsed": elapsed, "cpu_load": cpu_load,
            "cpu_total": tracer.cpu() - cpu0, "drain_s": drain_s, "drained": drained,
            "idle_rss": idle, "peak_rss": peak[0], "hwm": tracer.hwm(),
            "before": before, "after": after, "delta": delta(after, before)}
