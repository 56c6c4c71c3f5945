#!/usr/bin/env python3
"""Send N HTTP/1.1 requests on ONE connection and report each one as a JSON line.

Usage: keepalive_client.py PORT N [PATH] [--pause-before-first S] [--header K:V]...
                           [--wait-file FILE]

PATH (default /status/200) may contain `{i}`, replaced by the request index (0-based),
so `/status/20{i}` with N=5 requests /status/200 ... /status/204.

--pause-before-first S   connect, then wait S seconds before the first request.
--wait-file FILE         send the first request, then wait until FILE exists before
                         sending the others (the connection stays open meanwhile).
--tls                    HTTPS (the server's certificate is not checked).

Output, one line per request, flushed as soon as the request is done:
  {"i": 0, "path": "/status/200", "status": 200, "duration_ns": 1234, "local_port": 40000,
   "body_bytes": 11}
duration_ns covers sending the request and reading the whole response (perf_counter_ns).
"""
import argparse
import http.client
import json
import os
import ssl
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("path", nargs="?", default="/status/200")
    p.add_argument("--pause-before-first", type=float, default=0.0)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--wait-file")
    p.add_argument("--tls", action="store_true")
    a = p.parse_args()

    headers = {}
    for h in a.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()

    if a.tls:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", a.port, timeout=30, context=ssl._create_unverified_context()
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    conn.connect()
    local_port = conn.sock.getsockname()[1]
    if a.pause_before_first > 0:
        time.sleep(a.pause_before_first)

    for i in range(a.n):
        if i == 1 and a.wait_file:
            while not os.path.exists(a.wait_file):
                time.sleep(0.01)
        path = a.path.replace("{i}", str(i))
        t0 = time.perf_counter_ns()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        t1 = time.perf_counter_ns()
        # The same socket must have carried every request.
        assert conn.sock is not None and conn.sock.getsockname()[1] == local_port, "reconnected"
        print(
            json.dumps(
                {
                    "i": i,
                    "path": path,
                    "status": resp.status,
                    "duration_ns": t1 - t0,
                    "local_port": local_port,
                    "body_bytes": len(body),
                }
            ),
            flush=True,
        )
    conn.close()


if __name__ == "__main__":
    sys.exit(main())
