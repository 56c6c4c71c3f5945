#!/usr/bin/env python3
"""HTTP/2 load benchmark: the same h2load load against nghttpd (h2c), untraced then traced,
in one run.

Reports the throughput ratio (traced / untraced), the capture ratio (server spans exported /
requests h2load completed) and the daemon's CPU per 10k streams/s. The tracer traces the
nghttpd process only (`--pid`), and exports every span over OTLP/gRPC to a real collector
(rotel, blackhole exporter), as in production.
Usage: python3 benches/h2load.py --tracer target/release/tracer [--duration 8] [--clients 4]
       [--streams 10] [--rounds 3]
"""
import argparse, json, os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    BenchError, Tracer, free_port, need_tools, otlp_grpc, run_loaded, start_collector, taskset,
    wait_port)


def start_nghttpd(port, root):
    """nghttpd (h2c) serving a 612-byte index.html from root/www."""
    www = os.path.join(root, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("x" * 612)
    p = subprocess.Popen(["nghttpd", "--no-tls", str(port), "-d", www],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def h2load(port, clients, streams, threads=1, duration=None, requests=None, cpus=None):
    """One h2load run: for `duration` seconds (-D) or `requests` requests (-n)."""
    span = [f"-D{duration}"] if duration else [f"-n{requests}"]
    out = subprocess.run(
        taskset(cpus) + ["h2load", *span, f"-c{clients}", f"-m{streams}", f"-t{threads}",
                         f"http://127.0.0.1:{port}/index.html"],
        capture_output=True, text=True, check=True, timeout=(duration or 0) + 300).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    if not m:
        raise BenchError(f"cannot read h2load's output:\n{out}")
    f = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", out)
    secs = float(f.group(1)) * {"s": 1, "ms": 1e-3, "us": 1e-6}.get(f.group(2), 1)
    return {"requests": int(m.group(3)), "succeeded": int(m.group(4)), "rps": float(f.group(3)),
            "seconds": secs}


def traced_round(a, port, gport, server_pid, tmp):
    """One untraced h2load run, then the same run with the tracer attached."""
    def load():
        return h2load(port, a.clients, a.streams, a.threads, duration=a.duration)

    base = load()
    env = dict(os.environ, OTEL_BSP_MAX_QUEUE_SIZE="65536", OTEL_BSP_SCHEDULE_DELAY="500")
    with Tracer(a.tracer, ["--pid", str(server_pid)] + otlp_grpc(gport), tmp, env=env) as t:
        run = run_loaded(t, load)
    return {"base": base, "traced": run["load"], "counters": t.final, "elapsed": run["elapsed"],
            "cpu": run["cpu_load"], "idle_rss": run["idle_rss"], "peak_rss": run["peak_rss"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracer", required=True)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--clients", type=int, default=4, help="h2load -c: connections")
    ap.add_argument("--streams", type=int, default=10, help="h2load -m: concurrent streams per connection")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="untraced/traced pairs; the median pair is reported")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    try:
        need_tools("nghttpd", "h2load")
        tmp = tempfile.mkdtemp(prefix="tracer-h2bench-")
        port = free_port()
        server = start_nghttpd(port, tmp)
        collector, gport = start_collector(tmp)
        try:
            h2load(port, a.clients, a.streams, a.threads, duration=2)  # warm-up
            rounds = [traced_round(a, port, gport, server.pid, tmp) for _ in range(a.rounds)]
        finally:
            server.terminate()
            collector.terminate()
    except BenchError as e:
        sys.exit(str(e))
    rounds.sort(key=lambda r: r["traced"]["rps"] / r["base"]["rps"])
    mid = rounds[len(rounds) // 2]  # the median round by throughput ratio
    base, t, c, elapsed, cpu = mid["base"], mid["traced"], mid["counters"], mid["elapsed"], mid["cpu"]
    spans = c.get("spans_exported_total", 0)
    streams_per_s = t["requests"] / elapsed
    r = {
        "untraced_rps": round(base["rps"]),
        "traced_rps": round(t["rps"]),
        "throughput_ratio": round(t["rps"] / base["rps"], 4),
        "throughput_ratio_all_rounds": sorted(round(r["traced"]["rps"] / r["base"]["rps"], 3) for r in rounds),
        "requests_done": t["requests"],
        "requests_succeeded": t["succeeded"],
        "spans_exported": spans,
        "capture_ratio": round(spans / t["requests"], 5) if t["requests"] else None,
        "capture_ratio_all_rounds": sorted(
            round(r["counters"].get("spans_exported_total", 0) / r["traced"]["requests"], 5) for r in rounds),
        "streams_per_s": round(streams_per_s),
        "daemon_cpu_percent_of_core": round(100 * cpu / elapsed, 1),
        "daemon_cpu_percent_per_10k_streams_s": round(100 * cpu / elapsed / (streams_per_s / 10000), 2)
        if streams_per_s else None,
        "daemon_rss_idle_mb": round(mid["idle_rss"], 1),
        "daemon_rss_load_mb": round(mid["peak_rss"], 1),
        "counters": c,
    }
    print(json.dumps(r, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
