"""HTTP/1.1 requests written with raw sockets, so the bytes sent are known exactly: prints
one JSON line per request, {"name", "sent": hex}, in the order sent.

Usage: wire_client.py HOST PORT FWD_TO
  on one keep-alive connection, one write each:
    GET /ka/1, GET /ka/2
    POST /body with a 1 MiB body, head and body in one write
    GET /traced carrying its own traceparent
    GET /fwd?to=FWD_TO&path=/back (the server calls FWD_TO)
  then on another: GET /pipe/1 and /pipe/2 in one write
"""
import json
import socket
import sys

host, port, fwd = sys.argv[1], int(sys.argv[2]), sys.argv[3]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def get(path, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()


def answers(sock, n):
    got = b""
    while got.count(b"\r\n\r\nok") < n:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("connection closed before the responses")
        got += data


def say(name, sent):
    print(json.dumps({"name": name, "sent": sent.hex()}), flush=True)


s = socket.create_connection((host, port))
for i in (1, 2):
    req = get(f"/ka/{i}")
    s.sendall(req)
    answers(s, 1)
    say(f"ka{i}", req)
body = bytes(range(256)) * 4096
req = f"POST /body HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
s.sendall(req)
answers(s, 1)
say("body", req)
req = get("/traced", f"traceparent: {TRACEPARENT}\r\n")
s.sendall(req)
answers(s, 1)
say("traced", req)
req = get(f"/fwd?to={fwd}&path=/back")
s.sendall(req)
answers(s, 1)
say("fwd", req)
s.close()
# A connection whose first write is a pipelined burst.
s = socket.create_connection((host, port))
s.sendall(get("/pipe/1") + get("/pipe/2"))
answers(s, 2)
say("pipe1", get("/pipe/1"))
say("pipe2", get("/pipe/2"))
s.close()
