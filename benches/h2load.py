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
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import counters, cpu_seconds, free_port, rss_mb, wait_port  # noqa: E402


def h2load(port, duration, clients, streams, threads):
    out = subprocess.run(
        ["h2load", f"-D{duration}", f"-c{clients}", f"-m{streams}", f"-t{threads}",
         f"http://127.0.0.1:{port}/index.html"],
        capture_output=True, text=True, check=True).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    if not m:
        sys.exit(f"cannot read h2load's output:\n{out}")
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))
    return {"requests": int(m.group(3)), "succeeded": int(m.group(4)), "rps": rps}


def traced_round(a, port, gport, server_pid, tmp):
    """One untraced h2load run, then the same run with the tracer attached."""
    base = h2load(port, a.duration, a.clients, a.streams, a.threads)
    err = open(os.path.join(tmp, "tracer.err"), "w+")
    env = dict(os.environ, OTEL_BSP_MAX_QUEUE_SIZE="65536", OTEL_BSP_SCHEDULE_DELAY="500")
    tracer = subprocess.Popen([a.tracer, "run", "--pid", str(server_pid), "--admin-addr", "off",
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
    th = threading.Thread(target=lambda: holder.update(
        r=h2load(port, a.duration, a.clients, a.streams, a.threads)))
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
    ap.add_argument("--clients", type=int, default=4, help="h2load -c: connections")
    ap.add_argument("--streams", type=int, default=10, help="h2load -m: concurrent streams per connection")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="untraced/traced pairs; the median pair is reported")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    for tool in ("nghttpd", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run `cargo xtask setup`")
    import rotel
    rotel_bin = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")

    tmp = tempfile.mkdtemp(prefix="tracer-h2bench-")
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("x" * 612)
    port = free_port()
    server = subprocess.Popen(["nghttpd", "--no-tls", str(port), "-d", www],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    gport, hport = free_port(), free_port()
    collector = subprocess.Popen([rotel_bin, "start", "--exporter", "blackhole",
                                  "--otlp-grpc-endpoint", f"127.0.0.1:{gport}",
                                  "--otlp-http-endpoint", f"127.0.0.1:{hport}",
                                  "--pid-file", os.path.join(tmp, "rotel.pid"),
                                  "--log-file", os.path.join(tmp, "rotel.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(gport)
    try:
        h2load(port, 2, a.clients, a.streams, a.threads)  # warm-up
        rounds = [traced_round(a, port, gport, server.pid, tmp) for _ in range(a.rounds)]
    finally:
        server.terminate()
        collector.terminate()
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
