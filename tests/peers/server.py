#!/usr/bin/env python3
"""HTTP/1.1 test server for the tracer's end-to-end tests.

Usage: server.py PORT [--tls CERT KEY]

--tls CERT KEY   serve HTTPS (Python's ssl module, on the system's libssl) with this
                 certificate and key; the TLS handshake runs in the connection's thread.

Routes (any method unless noted):
  /status/NNN                  reply NNN with a small body (no body for 1xx, 204, 304)
  /big?bytes=N                 Content-Length body of N bytes, written in 64 KiB writes
  /chunked?chunks=N&size=S     Transfer-Encoding: chunked, N chunks of S bytes
  /slow?ms=N                   sleep N ms, then reply 200
  POST/PUT /upload             read the Content-Length body fully, reply 200 with the byte count
  anything else                404

protocol_version is HTTP/1.1, so connections are kept alive and `Expect: 100-continue`
is answered with an interim 100 by http.server itself.
"""
import socketserver
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WRITE_SIZE = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the peer's
    # delayed ACK adds ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # keep the test output quiet
        pass

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def end_headers(self):
        # Say so when this response ends the connection (the request asked for
        # `Connection: close`): otherwise a client may reuse the socket we are closing,
        # find it dead and resend the request on a new one (curl does: one request, two spans).
        if self.close_connection and getattr(self, "_final_response", False):
            self.send_header("Connection", "close")
        super().end_headers()

    def send_response_only(self, code, message=None):
        # Interim 1xx responses (the `100 Continue` http.server sends itself) never say close.
        self._final_response = code >= 200
        super().send_response_only(code, message)

    def _query(self):
        return parse_qs(urlsplit(self.path).query)

    def _int_arg(self, name, default):
        try:
            return int(self._query()[name][0])
        except (KeyError, ValueError, IndexError):
            return default

    def _discard_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        left = n
        while left > 0:
            got = self.rfile.read(min(left, WRITE_SIZE))
            if not got:
                break
            left -= len(got)
        return n - left

    def _reply(self, code, body=b""):
        self.send_response(code)
        if 100 <= code < 200 or code in (204, 304):
            # These responses never have a body, so no Content-Length either.
            self.end_headers()
            return
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self):
        path = urlsplit(self.path).path
        if self.command in ("POST", "PUT") and path == "/upload":
            n = self._discard_body()
            self._reply(200, str(n).encode())
            return
        # Any other request body is read and dropped so the connection stays usable.
        self._discard_body()
        if path.startswith("/status/"):
            try:
                code = int(path[len("/status/"):])
            except ValueError:
                self._reply(400, b"bad status\n")
                return
            self._reply(code, ("status %d\n" % code).encode())
        elif path == "/big":
            n = self._int_arg("bytes", 0)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"x" * WRITE_SIZE
            left = n
            while left > 0:
                k = min(left, WRITE_SIZE)
                self.wfile.write(block[:k])
                left -= k
        elif path == "/chunked":
            chunks = self._int_arg("chunks", 1)
            size = self._int_arg("size", 100)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = b"y" * size
            for _ in range(chunks):
                self.wfile.write(b"%x\r\n" % size + data + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/slow":
            time.sleep(self._int_arg("ms", 100) / 1000.0)
            self._reply(200, b"slow\n")
        else:
            self._reply(404, b"not found\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind resolves the host name (socket.getfqdn): skip that lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class TlsServer(Server):
    def __init__(self, addr, handler, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        super().__init__(addr, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        # Not in the accepting thread: a client that never finishes its handshake (the test
        # harness's readiness probe) must not hold up the others.
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        pass  # failed handshakes of readiness probes


def main():
    port = int(sys.argv[1])
    if sys.argv[2:3] == ["--tls"]:
        TlsServer(("127.0.0.1", port), Handler, sys.argv[3], sys.argv[4]).serve_forever()
    else:
        Server(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
