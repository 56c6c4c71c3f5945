#!/usr/bin/env python3
"""A TLS connection that carries something other than HTTP: line echo.

Usage: tls_echo.py server PORT CERT KEY
       tls_echo.py client PORT N

The client sends N lines `ping I` on one TLS connection, reads each echo back, and prints
`done N` when all came back.
"""
import socket
import ssl
import sys
import threading


def serve(port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsock = socket.create_server(("127.0.0.1", port))

    def echo(conn):
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                f = s.makefile("rwb")
                for line in f:
                    f.write(line)
                    f.flush()
        except (ssl.SSLError, OSError):
            pass  # readiness probes close without a handshake

    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def client(port, n):
    ctx = ssl._create_unverified_context()
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as s:
        f = s.makefile("rwb")
        for i in range(n):
            f.write(b"ping %d\n" % i)
            f.flush()
            assert f.readline() == b"ping %d\n" % i
    print("done", n, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        client(int(sys.argv[2]), int(sys.argv[3]))
