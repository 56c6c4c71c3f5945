#!/usr/bin/env python3
"""gRPC test peer on real grpcio, without generated code (raw-bytes messages).

    grpc_peer.py server PORT
    grpc_peer.py client PORT [CALL...]
    grpc_peer.py hold PORT

The server exposes `tracer.test.Echo` with generic handlers:
  Unary         (unary-unary)     echoes the request
  ServerStream  (unary-stream)    replies 3 messages
  ClientStream  (stream-unary)    reads every message, replies once
  Bidi          (stream-stream)   echoes each message
  Fail          (unary-unary)     aborts with the status named in the request (e.g. b"NOT_FOUND")
  Slow          (unary-unary)     sleeps 2 s (the client gives it a 200 ms deadline)
Any other method is UNIMPLEMENTED (grpcio answers that itself).

`client` makes the named calls in order on ONE channel (one HTTP/2 connection) and prints one
JSON line per call: {"call": ..., "code": "OK"|"NOT_FOUND"|...}. CALL is one of unary,
server_stream, client_stream, bidi, not_found, internal, unimplemented, deadline; default: all.

`hold` opens a channel, makes one unary call, prints `ready`, then for every line read on stdin
makes the call it names (a CALL as above) on the same connection and prints its JSON line; it
exits at EOF. Used to test connections opened before the tracer started.
"""
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "tracer.test.Echo"


def ident(b):
    return b


def unary(req, ctx):
    return req


def server_stream(req, ctx):
    for i in range(3):
        yield req + bytes([i])


def client_stream(it, ctx):
    n = 0
    for m in it:
        n += len(m)
    return str(n).encode()


def bidi(it, ctx):
    for m in it:
        yield m


def fail(req, ctx):
    ctx.abort(getattr(grpc.StatusCode, req.decode()), "failed on purpose")


def slow(req, ctx):
    time.sleep(2)
    return req


def serve(port):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, ident, ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def path(method):
    return f"/{SERVICE}/{method}"


def call(ch, name):
    """Makes one call; returns its status code name."""
    try:
        if name == "unary":
            ch.unary_unary(path("Unary"))(b"hello", timeout=10)
        elif name == "server_stream":
            got = list(ch.unary_stream(path("ServerStream"))(b"s", timeout=10))
            assert len(got) == 3, got
        elif name == "client_stream":
            got = ch.stream_unary(path("ClientStream"))(iter([b"ab", b"cd", b"e"]), timeout=10)
            assert got == b"5", got
        elif name == "bidi":
            got = list(ch.stream_stream(path("Bidi"))(iter([b"x", b"y", b"z", b"w"]), timeout=10))
            assert got == [b"x", b"y", b"z", b"w"], got
        elif name == "not_found":
            ch.unary_unary(path("Fail"))(b"NOT_FOUND", timeout=10)
        elif name == "internal":
            ch.unary_unary(path("Fail"))(b"INTERNAL", timeout=10)
        elif name == "unimplemented":
            ch.unary_unary(path("Nope"))(b"?", timeout=10)
        elif name == "deadline":
            ch.unary_unary(path("Slow"))(b"zzz", timeout=0.2)
        else:
            raise SystemExit(f"unknown call {name}")
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


ALL = [
    "unary",
    "server_stream",
    "client_stream",
    "bidi",
    "not_found",
    "internal",
    "unimplemented",
    "deadline",
]


def channel(port):
    # One subchannel, no retries: every call is one stream on one connection.
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)],
    )


def client(port, names):
    with channel(port) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        for name in names:
            print(json.dumps({"call": name, "code": call(ch, name)}), flush=True)


def hold(port):
    with channel(port) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        print(json.dumps({"call": "unary", "code": call(ch, "unary")}), flush=True)
        print("ready", flush=True)
        for line in sys.stdin:
            name = line.strip() or "unary"
            print(json.dumps({"call": name, "code": call(ch, name)}), flush=True)


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "server":
        serve(port)
    elif mode == "client":
        client(port, sys.argv[3:] or ALL)
    elif mode == "hold":
        hold(port)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
