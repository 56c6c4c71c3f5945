#!/usr/bin/env python3
"""Load benchmark: the same wrk load against nginx, untraced then traced, in one run.

Reports throughput ratio, added p50/p99 latency, daemon CPU per 10k spans/s, daemon RSS idle
and under load, and the capture ratio (spans exported / requests served).
Spans go over OTLP/gRPC to a real collector (rotel, blackhole exporter): the production path.
Usage: python3 benches/load.py --tracer target/release/tracer [--duration 10] [--connections 16]
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time


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
    sys.exit(f"nothing listens on {port} after {timeout}s")


def start_nginx(port, root):
    conf = os.path.join(root, "nginx.conf")
    os.makedirs(os.path.join(root, "www"), exist_ok=True)
    with open(os.path.join(root, "www", "index.html"), "w") as f:
        f.write("x" * 612)  # the size of nginx's default page
    with open(conf, "w") as f:
        f.write(f"""
daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root};
  uwsgi_temp_path {root}; scgi_temp_path {root};
  server {{ listen 127.0.0.1:{port}; root {root}/www; }}
}}""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    # The worker is the child that serves requests.
    time.sleep(0.3)
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return p, [int(k) for k in kids]


def wrk(port, duration, conns, threads):
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

    return {"requests": reqs, "rps": rps, "p50_us": pct(50), "p99_us": pct(99)}


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counters(stderr_text):
    last = [l for l in stderr_text.splitlines() if "counters:" in l]
    if not last:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", last[-1])}


def traced_round(a, port, gport, workers, tmp):
    """One untraced wrk run, then the same run with the tracer attached."""
    base = wrk(port, a.duration, a.connections, a.threads)
    err = open(os.path.join(tmp, "tracer.err"), "w+")
    env = dict(os.environ, OTEL_BSP_MAX_QUEUE_SIZE="65536", OTEL_BSP_SCHEDULE_DELAY="500")
    tracer = subprocess.Popen([a.tracer, "run", "--pid", str(a.only_pid or workers[0]),
                               "--otlp-endpoint", f"http://127.0.0.1:{gport}", "--otlp-protocol", "grpc"],
                              stdout=subprocess.DEVNULL, stderr=err, env=env)
    for _ in range(300):
        err.seek(0)
        if "tracing HTTP/1.x" in err.read():
            break
        time.sleep(0.1)
    else:
        sys.exit("tracer did not start")
    time.sleep(1)
    idle_rss = rss_mb(tracer.pid)
    cpu0 = cpu_seconds(tracer.pid)
    peak = [idle_rss]
    t0 = time.time()
    holder = {}
    import threading
    th = threading.Thread(target=lambda: holder.update(r=wrk(port, a.duration, a.connections, a.threads)))
    th.start()
    while th.is_alive():
        peak.append(rss_mb(tracer.pid))
        time.sleep(0.5)
    elapsed = time.time() - t0
    cpu = cpu_seconds(tracer.pid) - cpu0
    time.sleep(2)  # let the exporter deliver the last batches
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    err.seek(0)
    return {"base": base, "traced": holder["r"], "counters": counters(err.read()), "elapsed": elapsed,
            "cpu": cpu, "idle_rss": idle_rss, "peak_rss": max(peak)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracer", required=True)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="untraced/traced pairs; the median pair is reported")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--only-pid", type=int,
                    help="trace this pid instead of the nginx worker (e.g. 1: probes attached, nothing "
                         "traced, which isolates the probes' cost from the daemon's)")
    a = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run `cargo xtask setup`")
    import rotel
    rotel_bin = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")

    tmp = tempfile.mkdtemp(prefix="tracer-bench-")
    port = free_port()
    nginx, workers = start_nginx(port, tmp)
    gport, hport = free_port(), free_port()
    collector = subprocess.Popen([rotel_bin, "start", "--exporter", "blackhole",
                                  "--otlp-grpc-endpoint", f"127.0.0.1:{gport}",
                                  "--otlp-http-endpoint", f"127.0.0.1:{hport}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(gport)
    try:
        wrk(port, 2, a.connections, a.threads)  # warm-up
        rounds = [traced_round(a, port, gport, workers, tmp) for _ in range(a.rounds)]
    finally:
        nginx.send_signal(signal.SIGQUIT)
        collector.terminate()
    rounds.sort(key=lambda r: r["traced"]["rps"] / r["base"]["rps"])
    mid = rounds[len(rounds) // 2]  # the median round by throughput ratio
    base, t, c, elapsed, cpu = mid["base"], mid["traced"], mid["counters"], mid["elapsed"], mid["cpu"]
    idle_rss, peak = mid["idle_rss"], mid["peak_rss"]
    traced_reqs, traced_rps = t["requests"], t["rps"]
    spans = c.get("spans_exported_total", 0)
    spans_per_s = spans / elapsed
    r = {
        "untraced_rps": round(base["rps"]),
        "traced_rps": round(traced_rps),
        "throughput_ratio": round(traced_rps / base["rps"], 4),
        "p50_added_us": round(t["p50_us"] - base["p50_us"], 1),
        "p99_added_us": round(t["p99_us"] - base["p99_us"], 1),
        "throughput_ratio_all_rounds": sorted(round(r["traced"]["rps"] / r["base"]["rps"], 3) for r in rounds),
        "requests_sent": traced_reqs,
        "spans_exported": spans,
        "capture_ratio": round(spans / traced_reqs, 5) if traced_reqs and not a.only_pid else None,
        "daemon_cpu_percent_of_core": round(100 * cpu / elapsed, 1),
        "daemon_cpu_percent_per_10k_spans_s": round(100 * cpu / elapsed / (spans_per_s / 10000), 2) if spans else None,
        "daemon_rss_idle_mb": round(idle_rss, 1),
        "daemon_rss_load_mb": round(peak, 1),
        "kernel_events_lost": c.get("events_lost_total", 0),
        "counters": c,
    }
    print(json.dumps(r, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
