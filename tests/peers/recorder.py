"""A raw HTTP/1.1 server that records every request byte for byte as it arrived (head and
body) and answers each with 200 "ok". Keep-alive and pipelined requests work. A request for
/fwd?to=HOST:PORT&path=P first makes that GET from the thread serving it (a service calling
another).

Usage: recorder.py ADDR PORT LOG   (LOG: one JSON line per request, {"raw": hex})
"""
import http.client
import json
import socket
import sys
import threading
import urllib.parse

lock = threading.Lock()


def record(log, raw):
    with lock:
        log.write(json.dumps({"raw": raw.hex()}) + "\n")
        log.flush()


def serve(conn, log):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            data = conn.recv(65536)
            if not data:
                return
            rest += data
        record(log, head + b"\r\n\r\n" + rest[:length])
        buf = rest[length:]
        target = urllib.parse.urlsplit(head.split(b" ")[1].decode())
        if target.path == "/fwd":
            q = urllib.parse.parse_qs(target.query)
            host, port = q["to"][0].rsplit(":", 1)
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            c.request("GET", q.get("path", ["/"])[0])
            c.getresponse().read()
            c.close()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def main():
    addr, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    log = open(log_path, "a")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(64)
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=lambda c=conn: (serve(c, log), c.close()), daemon=True).start()


main()
