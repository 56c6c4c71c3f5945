#!/usr/bin/env python3
"""Services that call services, for the trace-join tests.

    chain.py backend PORT [--delay-ms MS]
    chain.py frontend PORT BACKEND_PORT[,BACKEND_PORT...] [--keep-alive]

`backend` answers GET /back/<id> with "back <id>", after MS milliseconds when given (so that
the requests of concurrent clients overlap in a frontend).

`frontend` answers GET /front/<id>: the thread handling it calls GET /back/<id> on every backend
with http.client, one after the other, then answers with their bodies. It is a
ThreadingHTTPServer: one thread per client connection, so a thread serves one request at a time.
With --keep-alive a handler keeps its backend connections open across the requests of its
client's connection; without, every backend call has a connection of its own.
"""
import http.client
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Backend(Base):
    delay = 0.0

    def do_GET(self):
        time.sleep(self.delay)
        self.answer(("back " + self.path.rsplit("/", 1)[-1]).encode())


def frontend(backends, keep_alive):
    class Frontend(Base):
        def setup(self):
            super().setup()
            self.conns = {}

        def call(self, port, path):
            c = self.conns.get(port) if keep_alive else None
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                if keep_alive:
                    self.conns[port] = c
            c.request("GET", path)
            body = c.getresponse().read()
            if not keep_alive:
                c.close()
            return body

        def do_GET(self):
            rid = self.path.rsplit("/", 1)[-1]
            bodies = [self.call(p, "/back/" + rid) for p in backends]
            self.answer(b"; ".join(bodies))

    return Frontend


def main():
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "backend":
        handler = Backend
        if "--delay-ms" in sys.argv:
            Backend.delay = int(sys.argv[sys.argv.index("--delay-ms") + 1]) / 1000
    else:
        backends = [int(p) for p in sys.argv[3].split(",")]
        handler = frontend(backends, "--keep-alive" in sys.argv[4:])
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
