#!/usr/bin/env python3
"""Load benchmark: the same wrk load against nginx, untraced then traced, in one run.

Reports throughput ratio, added p50/p99 latency, daemon CPU per 10k spans/s, daemon RSS idle
and under load, and the capture ratio (spans exported / requests served).
Spans go over OTLP/gRPC to a real collector (rotel, blackhole exporter): the production path.
Usage: python3 benches/load.py --tracer target/release/tracer [--duration 10] [--connections 16]
(`cargo xtask bench` runs benches/cost.py, which includes this run with the default settings.)
"""
import argparse, json, os, re, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    BenchError, Tracer, cpu_seconds, free_port, need_tools, otlp_grpc, run_loaded, start_collector,
    taskset, wait_port)


def start_nginx(port, root, tls=False):
    """nginx, 1 worker, a 612-byte page, sendfile on; returns (master, [worker pids]).
    tls: HTTPS (HTTP/1.1) with a self-signed certificate made here (sendfile is then unused)."""
    listen = f"127.0.0.1:{port}"
    if tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-keyout", f"{root}/key.pem", "-out",
                        f"{root}/cert.pem"], check=True, capture_output=True)
        listen += f" ssl; ssl_certificate {root}/cert.pem; ssl_certificate_key {root}/key.pem"
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
  server {{ listen {listen}; root {root}/www; }}
}}""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    # The worker is the child that serves requests.
    time.sleep(0.3)
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return p, [int(k) for k in kids]


def wrk(port, duration, conns, threads, cpus=None, watch=(), scheme="http"):
    """One wrk run (on `cpus` if given). `watch`: pids whose CPU seconds over the run are
    returned in "cpu" (e.g. the nginx worker)."""
    cpu0 = {p: cpu_seconds(p) for p in watch}
    out = subprocess.run(
        taskset(cpus) + ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency",
                         f"{scheme}://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    cpu = {p: cpu_seconds(p) - c for p, c in cpu0.items()}
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

    return {"requests": reqs, "rps": rps, "p50_us": pct(50), "p99_us": pct(99), "cpu": cpu}


def nginx_pair(tracer_bin, tracer_args, port, workers, tmp, duration, conns, threads,
               env=None, load_cpus=None, tracer_cpus=None, scheme="http"):
    """One untraced wrk run, then the same run with `tracer run TRACER_ARGS` (on tracer_cpus).
    wrk runs on load_cpus; the CPU of the nginx workers is measured around each run."""
    def load():
        return wrk(port, duration, conns, threads, cpus=load_cpus, watch=workers, scheme=scheme)

    base = load()
    with Tracer(tracer_bin, tracer_args, tmp, env=env, cpus=tracer_cpus) as t:
        run = run_loaded(t, load)
    run["base"], run["traced"], run["counters"] = base, run.pop("load"), t.final
    return run


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
    try:
        need_tools("nginx", "wrk")
        tmp = tempfile.mkdtemp(prefix="tracer-bench-")
        port = free_port()
        nginx, workers = start_nginx(port, tmp)
        collector, gport = start_collector(tmp)
        # The settings these figures were first taken with (benches/README.md).
        env = dict(os.environ, OTEL_BSP_MAX_QUEUE_SIZE="65536", OTEL_BSP_SCHEDULE_DELAY="500")
        args = ["--pid", str(a.only_pid or workers[0])] + otlp_grpc(gport)
        try:
            wrk(port, 2, a.connections, a.threads)  # warm-up
            rounds = [nginx_pair(a.tracer, args, port, workers, tmp, a.duration, a.connections,
                                 a.threads, env=env) for _ in range(a.rounds)]
        finally:
            nginx.send_signal(signal.SIGQUIT)
            collector.terminate()
    except BenchError as e:
        sys.exit(str(e))
    rounds.sort(key=lambda r: r["traced"]["rps"] / r["base"]["rps"])
    mid = rounds[len(rounds) // 2]  # the median round by throughput ratio
    base, t, c, elapsed, cpu = mid["base"], mid["traced"], mid["counters"], mid["elapsed"], mid["cpu_load"]
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
