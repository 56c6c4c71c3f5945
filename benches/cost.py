#!/usr/bin/env python3
"""What tracing costs (issue 9, "make tracing cheap"): every figure against an untraced
baseline taken in the same run, the tracer with its default settings (only the OTLP endpoint
is set; OTEL_* variables are removed from its environment).

Parts (--only, comma-separated; default all; `nginx` = pinned,unpinned):
  syscalls   ns added per syscall by the probes: `dd if=/dev/zero of=/dev/null bs=1` (2 syscalls
             per byte) untraced, with `tracer run --pid 1` (probes attached, dd filtered out in
             the kernel), and with dd itself traced (`--pid <dd>`; its fds are not sockets).
             dd on CPU 0, the tracer on CPU 1; per round (traced CPU - untraced CPU) / syscalls,
             the median over the rounds.
  pinned     nginx (1 worker, 612 B page, sendfile) + wrk -t1 -c16 on CPU 0, tracer + rotel
             (OTLP/gRPC, blackhole) on CPU 1: throughput ratio, nginx worker CPU per request
             added, daemon CPU per exported span, capture ratio, daemon RSS idle / peak; then the
             same with `--pid 1` (probes attached, nothing traced). Median over the rounds.
  unpinned   the same nginx run with everything sharing every CPU (load.py's layout).
  tls        the pinned run over HTTPS (nginx `ssl`, wrk's OpenSSL, keep-alive): what the TLS
             uprobes add per request, traced, and with `--pid 1` (the uprobes still fire in
             every process that uses the library; the probe returns at once).
  propagate  what `--propagate` costs the traced client: wrk -t1 -c16 -> nginx, both on CPU 0,
             tracer + rotel on CPU 1; wrk traced (`--comm wrk`) without and with `--propagate`
             in each round (so the difference is the writer alone): wrk CPU per request, the
             throughput ratio, and how many requests got a traceparent.
  h2load     h2load bursts against nghttpd (h2c) traced (`--pid <nghttpd>`), exporting to rotel:
             -n 2000 x3 then -n 4000 x5 back to back (-c4 -m50), drain, then one -n 50000 burst:
             spans built / exported / dropped, kernel records lost, throughput vs the same
             bursts untraced.
  criterion  `cargo bench -p tracer-benches --bench pipeline` (userspace cost per stage).

Usage: python3 benches/cost.py --tracer target/release/tracer [--only syscalls,nginx,h2load,criterion]
       [--json FILE] [--duration 8] [--rounds 3] [--syscall-bytes 2000000] [--syscall-rounds 5]
(`cargo xtask bench [ARGS]` builds the tracer and runs this with ARGS.) Needs root.
"""
import argparse, datetime, json, os, platform, re, shlex, signal, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import (  # noqa: E402
    BenchError, Tracer, all_cpus, free_port, log, loss_summary, median, need_tools, other_tracers,
    otlp_grpc, pin, rotel_bin, run_loaded, span_drops, start_collector, taskset)
from h2load import h2load, start_nghttpd  # noqa: E402
from load import nginx_pair, start_nginx, wrk  # noqa: E402

PARTS = ["syscalls", "pinned", "unpinned", "tls", "propagate", "h2load", "criterion"]
ALIASES = {"nginx": ["pinned", "unpinned"], "all": PARTS}
TOOLS = {"syscalls": ["dd", "taskset"], "pinned": ["nginx", "wrk", "taskset", "pgrep"],
         "unpinned": ["nginx", "wrk", "pgrep"], "tls": ["nginx", "wrk", "taskset", "pgrep", "openssl"],
         "propagate": ["nginx", "wrk", "taskset", "pgrep"], "h2load": ["nghttpd", "h2load"],
         "criterion": ["cargo"]}


def rnd(x, n=3):
    return None if x is None else round(x, n)


# --- 1. syscalls ----------------------------------------------------------------------------

def held_dd(count, cpus):
    """dd, started but held (by a shell reading a pipe) until release(): its pid is known before
    it runs and stays the same through the shell's and taskset's exec, so a tracer can be told
    to trace it. Every condition starts dd this way: the wrapper's cost is in every baseline."""
    r, w = os.pipe()
    cmd = taskset(cpus) + ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={count}", "status=none"]
    p = subprocess.Popen(["sh", "-c", f'read x <&{r}; exec {r}<&-; exec "$@"', "held-dd", *cmd],
                         pass_fds=(r,), stdout=subprocess.DEVNULL)
    os.close(r)
    return p, w


def release(held):
    """Lets a held dd run; returns its CPU seconds (user + system, from wait4) and wall time."""
    p, w = held
    t0 = time.perf_counter()
    os.write(w, b"go\n")
    os.close(w)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise BenchError(f"dd exited with {p.returncode}")
    return {"cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime, "wall": wall}


def part_syscalls(a, tmp):
    cpus = all_cpus()
    dd_cpus, tracer_cpus = ([cpus[0]], [cpus[1]]) if len(cpus) > 1 else (None, None)
    syscalls = 2 * a.syscall_bytes  # one read and one write per byte
    rounds = []
    release(held_dd(a.syscall_bytes // 10, dd_cpus))  # warm-up (page cache, CPU frequency)
    for i in range(a.syscall_rounds):
        log(f"syscalls round {i + 1}/{a.syscall_rounds}: untraced, --pid 1, dd traced")
        r = {"base": release(held_dd(a.syscall_bytes, dd_cpus))}
        with Tracer(a.tracer, ["--pid", "1"], tmp, cpus=tracer_cpus, name="tracer-pid1"):
            r["filtered"] = release(held_dd(a.syscall_bytes, dd_cpus))
        held = held_dd(a.syscall_bytes, dd_cpus)
        try:
            with Tracer(a.tracer, ["--pid", str(held[0].pid)], tmp, cpus=tracer_cpus,
                        name="tracer-dd") as t:
                r["traced"] = release(held)
                r["traced_counters"] = t.metrics()
        finally:
            if held[0].returncode is None:  # the tracer did not start: dd is still held
                held[0].kill()
                held[0].wait()
                os.close(held[1])
        rounds.append(r)

    def added(kind, key):
        return median([(r[kind][key] - r["base"][key]) / syscalls * 1e9 for r in rounds])

    def added_fastest(kind):  # fastest runs of each condition: less sensitive to a noisy round
        return (min(r[kind]["cpu"] for r in rounds) - min(r["base"]["cpu"] for r in rounds)) / syscalls * 1e9

    return {
        "command": f"dd if=/dev/zero of=/dev/null bs=1 count={a.syscall_bytes}",
        "syscalls_per_run": syscalls,
        "dd_cpus": dd_cpus, "tracer_cpus": tracer_cpus, "rounds": a.syscall_rounds,
        "base_cpu_s": rnd(median(r["base"]["cpu"] for r in rounds), 4),
        "base_ns_per_syscall": rnd(median(r["base"]["cpu"] for r in rounds) / syscalls * 1e9, 1),
        "filtered_cpu_s": rnd(median(r["filtered"]["cpu"] for r in rounds), 4),
        "traced_cpu_s": rnd(median(r["traced"]["cpu"] for r in rounds), 4),
        "ns_added_per_syscall_not_traced": rnd(added("filtered", "cpu"), 1),
        "ns_added_per_syscall_traced_non_socket": rnd(added("traced", "cpu"), 1),
        "ns_added_per_syscall_not_traced_fastest": rnd(added_fastest("filtered"), 1),
        "ns_added_per_syscall_traced_non_socket_fastest": rnd(added_fastest("traced"), 1),
        "ns_added_per_syscall_not_traced_wall": rnd(added("filtered", "wall"), 1),
        "ns_added_per_syscall_traced_non_socket_wall": rnd(added("traced", "wall"), 1),
        "per_round": [{k: {kk: round(vv, 4) for kk, vv in r[k].items()}
                       for k in ("base", "filtered", "traced")} for r in rounds],
        "traced_counters_last_round": rounds[-1]["traced_counters"] if rounds else {},
    }


# --- 2./3. nginx -----------------------------------------------------------------------------

def pair_figures(p, worker, nothing_traced=False):
    """The figures of one untraced/traced wrk pair."""
    b, t, d = p["base"], p["traced"], p["delta"]
    spans = d.get("spans_exported_total", 0)
    f = {
        "untraced_rps": round(b["rps"]), "traced_rps": round(t["rps"]),
        "throughput_ratio": t["rps"] / b["rps"],
        "p50_added_us": t["p50_us"] - b["p50_us"], "p99_added_us": t["p99_us"] - b["p99_us"],
        "worker_cpu_us_per_req_untraced": 1e6 * b["cpu"][worker] / b["requests"],
        "worker_cpu_us_per_req_traced": 1e6 * t["cpu"][worker] / t["requests"],
        "daemon_cpu_percent_of_core": 100 * p["cpu_load"] / p["elapsed"],
        "daemon_cpu_s": p["cpu_total"],
        "requests": t["requests"], "spans_exported": spans,
        "daemon_rss_idle_mb": p["idle_rss"], "daemon_rss_peak_mb": p["peak_rss"],
        "daemon_rss_hwm_mb": p["hwm"], "drain_s": p["drain_s"], "drained": p["drained"],
        **loss_summary(d),
    }
    f["worker_cpu_us_per_req_added"] = f["worker_cpu_us_per_req_traced"] - f["worker_cpu_us_per_req_untraced"]
    if not nothing_traced:
        f["capture_ratio"] = spans / t["requests"] if t["requests"] else None
        f["daemon_cpu_us_per_span"] = 1e6 * p["cpu_total"] / spans if spans else None
    return f


def summarize(pairs):
    """Median of every numeric figure over the rounds; the ratios of every round too."""
    out = {}
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    for k in pairs[0]:
        vals = [p[k] for p in pairs]
        if all(x is None for x in vals):
            out[k] = None
        elif all(x is None or number(x) for x in vals):
            out[k] = rnd(median(vals), 4)
        else:
            out[k] = vals[0] if all(x == vals[0] for x in vals) else vals
    out["throughput_ratio_all_rounds"] = sorted(rnd(p["throughput_ratio"]) for p in pairs)
    out["spans_dropped_all_rounds"] = [p["spans_dropped"] for p in pairs]
    return out


def part_nginx(a, tmp, pinned, tls=False):
    cpus = all_cpus()
    if pinned and len(cpus) < 2:
        raise BenchError("the pinned run needs 2 CPUs")
    load_cpus, side_cpus = ([cpus[0]], [cpus[1]]) if pinned else (None, None)
    port = free_port()
    scheme = "https" if tls else "http"
    nginx, workers = start_nginx(port, tempfile.mkdtemp(dir=tmp, prefix="nginx-"), tls=tls)
    worker = workers[0]
    collector, gport = start_collector(tmp, side_cpus)
    try:
        if pinned:
            pin(nginx.pid, load_cpus)
            for w in workers:
                pin(w, load_cpus)
        wrk(port, 2, a.connections, 1, cpus=load_cpus, scheme=scheme)  # warm-up
        traced, probes = [], []
        for i in range(a.rounds):
            log(f"{'pinned' if pinned else 'unpinned'} nginx round {i + 1}/{a.rounds}: untraced, traced")
            pair = nginx_pair(a.tracer, ["--pid", str(worker)] + otlp_grpc(gport), port, [worker],
                              tmp, a.duration, a.connections, 1, load_cpus=load_cpus,
                              tracer_cpus=side_cpus, scheme=scheme)
            traced.append(pair_figures(pair, worker))
            if pinned:
                log(f"pinned nginx round {i + 1}/{a.rounds}: untraced, --pid 1")
                pair = nginx_pair(a.tracer, ["--pid", "1"] + otlp_grpc(gport), port, [worker], tmp,
                                  a.duration, a.connections, 1, load_cpus=load_cpus,
                                  tracer_cpus=side_cpus, scheme=scheme)
                probes.append(pair_figures(pair, worker, nothing_traced=True))
    finally:
        nginx.send_signal(signal.SIGQUIT)
        collector.terminate()
        nginx.wait(10)
        collector.wait(10)
    out = {"layout": (f"{'HTTPS ' if tls else ''}nginx + wrk -t1 -c{a.connections} on CPU {load_cpus[0]}, tracer + rotel on "
                      f"CPU {side_cpus[0]}") if pinned else "everything on every CPU",
           "duration_s": a.duration, "rounds": a.rounds, "traced": summarize(traced),
           "per_round": traced}
    if pinned:
        out["pid1"] = summarize(probes)
        out["pid1_per_round"] = probes
    return out


# --- trace context on the wire ------------------------------------------------------------

def part_propagate(a, tmp):
    cpus = all_cpus()
    if len(cpus) < 2:
        raise BenchError("the propagate run needs 2 CPUs")
    load_cpus, side_cpus = [cpus[0]], [cpus[1]]
    port = free_port()
    nginx, workers = start_nginx(port, tempfile.mkdtemp(dir=tmp, prefix="nginx-"))
    collector, gport = start_collector(tmp, side_cpus)

    def load():
        # wrk is the process whose requests are rewritten: its own CPU (a waited-for child).
        before = os.times()
        r = wrk(port, a.duration, a.connections, 1, cpus=load_cpus)
        after = os.times()
        r["wrk_cpu"] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        return r

    rounds = []
    try:
        for w in [nginx.pid] + workers:
            pin(w, load_cpus)
        wrk(port, 2, a.connections, 1, cpus=load_cpus)  # warm-up
        for i in range(a.rounds):
            log(f"propagate round {i + 1}/{a.rounds}: untraced, wrk traced, wrk traced with --propagate")
            base = load()
            runs = {}
            for name, extra in [("traced", []), ("propagate", ["--propagate"])]:
                with Tracer(a.tracer, ["--comm", "wrk"] + extra + otlp_grpc(gport), tmp, cpus=side_cpus) as t:
                    r = run_loaded(t, load)
                    r["counters"] = t.final
                runs[name] = r
            t_, p_ = runs["traced"]["load"], runs["propagate"]["load"]
            after = runs["propagate"]["after"]
            written = after.get('trace_context_requests_total{outcome="written"}', 0)
            rounds.append({
                "untraced_rps": round(base["rps"]), "traced_rps": round(t_["rps"]),
                "propagate_rps": round(p_["rps"]),
                "throughput_ratio_propagate_vs_traced": p_["rps"] / t_["rps"],
                "throughput_ratio_propagate_vs_untraced": p_["rps"] / base["rps"],
                "wrk_cpu_us_per_req_untraced": 1e6 * base["wrk_cpu"] / base["requests"],
                "wrk_cpu_us_per_req_traced": 1e6 * t_["wrk_cpu"] / t_["requests"],
                "wrk_cpu_us_per_req_propagate": 1e6 * p_["wrk_cpu"] / p_["requests"],
                "requests_propagate": p_["requests"], "written": written,
                "written_ratio": written / p_["requests"] if p_["requests"] else None,
            })
            f = rounds[-1]
            f["wrk_cpu_us_per_req_added_by_propagate"] = f["wrk_cpu_us_per_req_propagate"] - f["wrk_cpu_us_per_req_traced"]
    finally:
        nginx.send_signal(signal.SIGQUIT)
        collector.terminate()
        nginx.wait(10)
        collector.wait(10)
    med = {k: rnd(median([r[k] for r in rounds]), 4) for k in rounds[0] if rounds[0][k] is not None}
    return {"layout": f"nginx + wrk -t1 -c{a.connections} on CPU {load_cpus[0]}, tracer + rotel on CPU {side_cpus[0]}",
            "duration_s": a.duration, "rounds": a.rounds, "median": med, "per_round": rounds}


# --- 4. h2load bursts ------------------------------------------------------------------------

def part_h2load(a, tmp):
    bursts = [(int(n), int(k)) for n, k in (b.split("x") for b in a.bursts.split(","))]
    port = free_port()
    server = start_nghttpd(port, tempfile.mkdtemp(dir=tmp, prefix="nghttpd-"))
    collector, gport = start_collector(tmp)

    def run(n):
        return h2load(port, a.h2_clients, a.h2_streams, requests=n)

    def small():
        return [run(n) for n, k in bursts for _ in range(k)]

    def total(rs):
        req = sum(r["requests"] for r in rs)
        secs = sum(r["seconds"] for r in rs)
        return {"runs": len(rs), "requests": req, "succeeded": sum(r["succeeded"] for r in rs),
                "seconds": secs, "rps": req / secs if secs else None}

    try:
        run(2000)  # warm-up
        log("h2load bursts untraced")
        base_small, base_big = total(small()), total([run(a.big_burst)])
        log("h2load bursts traced")
        with Tracer(a.tracer, ["--pid", str(server.pid)] + otlp_grpc(gport), tmp,
                    name="tracer-h2") as t:
            s = run_loaded(t, lambda: total(small()), settle_timeout=a.settle_timeout)
            b = run_loaded(t, lambda: total([run(a.big_burst)]), settle_timeout=a.settle_timeout,
                           idle_wait=0)
    finally:
        server.terminate()
        collector.terminate()
        server.wait(10)
        collector.wait(10)

    def phase(name, base, r):
        d, load = r["delta"], r["load"]
        f = {"bursts": name, "requests": load["requests"], "untraced_rps": rnd(base["rps"], 0),
             "traced_rps": rnd(load["rps"], 0),
             "throughput_ratio": rnd(load["rps"] / base["rps"], 4) if base["rps"] else None,
             **loss_summary(d), "drain_s": rnd(r["drain_s"], 2), "drained": r["drained"],
             "daemon_cpu_s": rnd(r["cpu_total"], 3), "daemon_rss_peak_mb": rnd(r["peak_rss"], 1)}
        f["capture_ratio"] = rnd(f["spans_exported"] / load["requests"], 5) if load["requests"] else None
        f["daemon_cpu_us_per_span"] = (rnd(1e6 * r["cpu_total"] / f["spans_exported"], 2)
                                       if f["spans_exported"] else None)
        return f

    small_name = " + ".join(f"{k}x -n{n}" for n, k in bursts) + f" -c{a.h2_clients} -m{a.h2_streams}"
    c = t.final
    return {
        "phases": [phase(small_name, base_small, s),
                   phase(f"1x -n{a.big_burst} -c{a.h2_clients} -m{a.h2_streams}", base_big, b)],
        "final_counters": c,
        "total": {**loss_summary(c), "spans_dropped_by_counter": span_drops(c)},
        "daemon_rss_idle_mb": rnd(s["idle_rss"], 1),
        "daemon_rss_peak_mb": rnd(max(s["peak_rss"], b["peak_rss"]), 1),
        "daemon_rss_hwm_mb": rnd(b["hwm"], 1),
    }


# --- 5. criterion ----------------------------------------------------------------------------

TIME_NS = {"ps": 1e-3, "ns": 1, "us": 1e3, "\u00b5s": 1e3, "ms": 1e6, "s": 1e9}
ELEM = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}


def parse_criterion(text):
    """criterion's report -> {bench: {time_ns, time_low_ns, time_high_ns, per_element_ns}}."""
    out = {}
    pat = re.compile(r"^(\S+)\s*(?:\n\s+)?time:\s+\[([\d.]+) (\S+) ([\d.]+) (\S+) ([\d.]+) (\S+)\]"
                     r"(?:\s*\n\s+thrpt:\s+\[[\d.]+ \S+ ([\d.]+) (\S+) [\d.]+ \S+\])?", re.M)
    for m in pat.finditer(text):
        g = m.groups()
        b = {"time_ns": float(g[3]) * TIME_NS[g[4]], "time_low_ns": float(g[1]) * TIME_NS[g[2]],
             "time_high_ns": float(g[5]) * TIME_NS[g[6]]}
        if g[7] and g[8] in ELEM:
            b["per_element_ns"] = 1e9 / (float(g[7]) * ELEM[g[8]])
        out[g[0]] = {k: round(v, 2) for k, v in b.items()}
    return out


def part_criterion(a, tmp):
    repo = os.path.dirname(HERE)
    cmd = ["cargo", "bench", "-p", "tracer-benches", "--bench", "pipeline"]
    if a.bench_args:
        cmd += ["--"] + shlex.split(a.bench_args)
    # As xtask's cargo(): not the outer cargo's toolchain (when run from `cargo xtask`).
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("RUSTUP_TOOLCHAIN") or k in ("RUSTC", "CARGO_ENCODED_RUSTFLAGS"))}
    log("$ " + " ".join(cmd))
    p = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in p.stdout:
        print(line, end="", file=sys.stderr, flush=True)
        lines.append(line)
    if p.wait() != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({p.returncode})")
    text = "".join(lines)
    with open(os.path.join(tmp, "criterion.txt"), "w") as f:
        f.write(text)
    benches = parse_criterion(text)
    if not benches:
        raise BenchError("no criterion result in the bench's output")
    return {"command": " ".join(cmd), "benches": benches}


# --- report ----------------------------------------------------------------------------------

def fmt(v, unit="", nd=2, sign=False):
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:+,.{nd}f}" if sign else f"{v:,.{nd}f}"
    else:
        s = f"{v:+,}" if sign else f"{v:,}"
    return s + unit


def table(title, rows):
    lines = [f"\n== {title}"]
    w = max([len(r[0]) for r in rows] + [10])
    for r in rows:
        lines.append(f"  {r[0]:<{w}}  {r[1]:>14}  {r[2] if len(r) > 2 else ''}".rstrip())
    return "\n".join(lines)


def by(f):
    """ ' (counter=n, ...)' for the counters that dropped spans, nothing when none did."""
    d = {k: v for k, v in f["spans_dropped_by_counter"].items() if v}
    return f" ({', '.join(f'{k}={v:,}' for k, v in d.items())})" if d else ""


def report(res):
    out = []
    if "syscalls" in res:
        s = res["syscalls"]
        if "error" in s:
            out.append(table("syscalls", [("error", "", s["error"])]))
        else:
            out.append(table(
                f"syscalls: {s['command']} ({s['syscalls_per_run']:,} read/write syscalls), "
                f"median of {s['rounds']} rounds, CPU time of dd", [
                    ("untraced", fmt(s["base_ns_per_syscall"], " ns", 1), f"per syscall ({s['base_cpu_s']} s)"),
                    ("probes, dd not traced (--pid 1)", fmt(s["ns_added_per_syscall_not_traced"], " ns", 1, True),
                     f"per syscall ({s['filtered_cpu_s']} s; fastest runs {fmt(s['ns_added_per_syscall_not_traced_fastest'], ' ns', 1, True)}, "
                     f"wall {fmt(s['ns_added_per_syscall_not_traced_wall'], ' ns', 1, True)})"),
                    ("dd traced, non-socket fds", fmt(s["ns_added_per_syscall_traced_non_socket"], " ns", 1, True),
                     f"per syscall ({s['traced_cpu_s']} s; fastest runs {fmt(s['ns_added_per_syscall_traced_non_socket_fastest'], ' ns', 1, True)}, "
                     f"wall {fmt(s['ns_added_per_syscall_traced_non_socket_wall'], ' ns', 1, True)})"),
                ]))
    if "propagate" in res:
        pr = res["propagate"]
        if "error" in pr:
            out.append(table("--propagate", [("error", "", pr["error"])]))
        else:
            m = pr["median"]
            out.append(table(f"--propagate: {pr['layout']}, median of {pr['rounds']} rounds", [
                ("wrk CPU per request", fmt(m["wrk_cpu_us_per_req_untraced"], " us"),
                 f"untraced; traced {fmt(m['wrk_cpu_us_per_req_traced'], ' us')}, "
                 f"with --propagate {fmt(m['wrk_cpu_us_per_req_propagate'], ' us')}"),
                ("added by --propagate", fmt(m["wrk_cpu_us_per_req_added_by_propagate"], " us", 2, True),
                 "per request, against wrk traced without it"),
                ("throughput", fmt(m["throughput_ratio_propagate_vs_traced"]),
                 f"with / without --propagate ({fmt(m['throughput_ratio_propagate_vs_untraced'])} of untraced)"),
                ("requests written", fmt(m["written_ratio"], "", 4),
                 f"{m['written']:,.0f} of {m['requests_propagate']:,.0f}"),
            ]))
    for key, title in (("pinned", "nginx pinned"), ("unpinned", "nginx unpinned (contention included)"),
                       ("tls", "HTTPS nginx pinned")):
        if key not in res:
            continue
        n = res[key]
        if "error" in n:
            out.append(table(title, [("error", "", n["error"])]))
            continue
        t = n["traced"]
        rows = [
            ("throughput traced / untraced", fmt(t["throughput_ratio"], "", 3),
             f"{t['untraced_rps']:,} -> {t['traced_rps']:,} req/s; rounds {t['throughput_ratio_all_rounds']}"),
            ("nginx worker CPU per request added", fmt(t["worker_cpu_us_per_req_added"], " us", 2, True),
             f"{fmt(t['worker_cpu_us_per_req_untraced'], ' us')} -> {fmt(t['worker_cpu_us_per_req_traced'], ' us')}"),
            ("p50 / p99 latency added", fmt(t["p50_added_us"], " us", 0, True), fmt(t["p99_added_us"], " us", 0, True)),
            ("daemon CPU per exported span", fmt(t["daemon_cpu_us_per_span"], " us", 2),
             f"{fmt(t['daemon_cpu_percent_of_core'], '%', 1)} of a core under load"),
            ("capture ratio (exported / requests)", fmt(t["capture_ratio"], "", 4),
             f"{t['spans_exported']:,} / {t['requests']:,}; dropped {t['spans_dropped']:,}, kernel lost {t['kernel_events_lost']:,}"),
            ("daemon RSS idle / peak", f"{fmt(t['daemon_rss_idle_mb'], ' MB', 1)}",
             f"/ {fmt(t['daemon_rss_peak_mb'], ' MB', 1)} (VmHWM {fmt(t['daemon_rss_hwm_mb'], ' MB', 1)})"),
        ]
        if "pid1" in n:
            p = n["pid1"]
            rows += [
                ("--pid 1: throughput traced / untraced", fmt(p["throughput_ratio"], "", 3),
                 f"{p['untraced_rps']:,} -> {p['traced_rps']:,} req/s; rounds {p['throughput_ratio_all_rounds']}"),
                ("--pid 1: worker CPU per request added", fmt(p["worker_cpu_us_per_req_added"], " us", 2, True), ""),
                ("--pid 1: daemon CPU, RSS idle / peak", fmt(p["daemon_cpu_percent_of_core"], "%", 1),
                 f"{fmt(p['daemon_rss_idle_mb'], ' MB', 1)} / {fmt(p['daemon_rss_peak_mb'], ' MB', 1)}"),
            ]
        out.append(table(f"{title}: {n['layout']}, {n['duration_s']} s runs, median of {n['rounds']} rounds", rows))
    if "h2load" in res:
        h = res["h2load"]
        if "error" in h:
            out.append(table("h2load bursts", [("error", "", h["error"])]))
        else:
            rows = []
            for p in h["phases"]:
                rows += [
                    (p["bursts"], f"{p['requests']:,} req",
                     f"{fmt(p['untraced_rps'], '', 0)} -> {fmt(p['traced_rps'], '', 0)} req/s (ratio {fmt(p['throughput_ratio'], '', 3)})"),
                    ("  spans built / exported / dropped", f"{p['spans_built']:,}",
                     f"/ {p['spans_exported']:,} / {p['spans_dropped']:,}{by(p)}"),
                    ("  capture ratio, kernel records lost", fmt(p["capture_ratio"], "", 4),
                     f"lost {p['kernel_events_lost']:,}, daemon dropped {p['records_dropped']:,}, "
                     f"drained in {p['drain_s']} s{'' if p['drained'] else ' (NOT drained)'}"),
                    ("  daemon CPU per exported span", fmt(p["daemon_cpu_us_per_span"], " us"), ""),
                ]
            tt = h["total"]
            rows += [("total at exit: built / exported / dropped", f"{tt['spans_built']:,}",
                      f"/ {tt['spans_exported']:,} / {tt['spans_dropped']:,}{by(tt)}; "
                      f"kernel lost {tt['kernel_events_lost']:,}"),
                     ("daemon RSS idle / peak", fmt(h["daemon_rss_idle_mb"], " MB", 1),
                      f"/ {fmt(h['daemon_rss_peak_mb'], ' MB', 1)} (VmHWM {fmt(h['daemon_rss_hwm_mb'], ' MB', 1)})")]
            out.append(table("h2load bursts against nghttpd (default settings, OTLP/gRPC to rotel)", rows))
    if "criterion" in res:
        c = res["criterion"]
        if "error" in c:
            out.append(table("criterion", [("error", "", c["error"])]))
        else:
            out.append(table(f"criterion: {c['command']}", [
                (k, fmt(v.get("per_element_ns", v["time_ns"]), " ns", 1),
                 f"per element (iteration {fmt(v['time_ns'] / 1e3, ' us', 1)})" if "per_element_ns" in v
                 else "per iteration")
                for k, v in c["benches"].items()]))
    return "\n".join(out)


def meta(a):
    def git(*args):
        r = subprocess.run(["git", *args], cwd=os.path.dirname(HERE), capture_output=True, text=True)
        return r.stdout.strip()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "commit": git("rev-parse", "--short", "HEAD"), "worktree_dirty": bool(git("status", "--porcelain", "-uno")),
            "kernel": platform.release(), "cpus": len(all_cpus()), "loadavg_at_start": os.getloadavg(),
            "tracer": os.path.abspath(a.tracer), "argv": sys.argv[1:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracer", required=True, help="the tracer binary (target/release/tracer)")
    ap.add_argument("--only", default="all", help=f"parts to run, comma-separated: {', '.join(PARTS)}, nginx, all")
    ap.add_argument("--json", help="write every figure (and the per-round data) to this file")
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="untraced/traced wrk pairs per nginx part")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c")
    ap.add_argument("--syscall-bytes", type=int, default=2_000_000, help="dd count (bs=1): 2 syscalls each")
    ap.add_argument("--syscall-rounds", type=int, default=5)
    ap.add_argument("--bursts", default="2000x3,4000x5", help="h2load -n N x K, back to back")
    ap.add_argument("--big-burst", type=int, default=50_000, help="h2load -n of the last burst")
    ap.add_argument("--h2-clients", type=int, default=4, help="h2load -c")
    ap.add_argument("--h2-streams", type=int, default=50, help="h2load -m")
    ap.add_argument("--settle-timeout", type=int, default=60, help="seconds to wait for the export to drain")
    ap.add_argument("--bench-args", default="", help="arguments for criterion (after --), e.g. "
                    "'--warm-up-time 1 --measurement-time 3'")
    a = ap.parse_args()

    parts = []
    for p in a.only.split(","):
        for q in ALIASES.get(p.strip(), [p.strip()]):
            if q not in PARTS:
                sys.exit(f"unknown part {q!r}: {', '.join(PARTS)}, nginx, all")
            if q not in parts:
                parts.append(q)
    parts.sort(key=PARTS.index)
    try:
        need_tools(*sorted({t for p in parts for t in TOOLS[p]}))
        if any(p in parts for p in ("pinned", "unpinned", "tls", "h2load")):
            rotel_bin()
    except BenchError as e:
        sys.exit(str(e))
    if any(p != "criterion" for p in parts):
        if os.geteuid() != 0:
            sys.exit("the load parts attach the probes: run as root")
        if not os.access(a.tracer, os.X_OK):
            sys.exit(f"{a.tracer} is not an executable: `cargo xtask build`")
    others = other_tracers()
    if others:
        print(f"warning: other tracer processes are running ({others}): their probes add to every "
              "figure here", file=sys.stderr)

    res = {"meta": meta(a)}
    res["meta"]["other_tracers"] = others
    tmp = tempfile.mkdtemp(prefix="tracer-cost-")
    runners = {"syscalls": part_syscalls, "pinned": lambda a, t: part_nginx(a, t, True),
               "unpinned": lambda a, t: part_nginx(a, t, False),
               "tls": lambda a, t: part_nginx(a, t, True, tls=True), "h2load": part_h2load,
               "propagate": part_propagate, "criterion": part_criterion}
    for p in parts:
        print(f"==> {p}", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            res[p] = runners[p](a, tmp)
        except (BenchError, subprocess.SubprocessError, OSError) as e:
            print(f"    {p} failed: {e}", file=sys.stderr)
            res[p] = {"error": str(e)}
        res[p]["seconds"] = round(time.time() - t0, 1)
        if a.json:  # written after every part: a late failure keeps the earlier figures
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)
    print(report(res))
    print(f"\n(logs in {tmp})")
    if any("error" in res[p] for p in parts):
        sys.exit(1)


if __name__ == "__main__":
    main()
