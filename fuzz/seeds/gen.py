import os, struct
base = os.path.dirname(os.path.abspath(__file__))
def w(target, name, data):
    d = os.path.join(base, target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), 'wb').write(data)
def ln(n):
    assert n < 4096
    return bytes([n]) if n < 0xF0 else bytes([0xF0 | (n >> 8), n & 0xFF])
def chunk(ctl, data, extra=None):
    out = bytes([ctl])
    if extra is not None: out += bytes([extra])
    return out + ln(len(data)) + data
I, E = 0, 1
req = b"GET /a?q=1 HTTP/1.1\r\nHost: x:80\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
rsp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
w('http1', 'keepalive', b"\0" + chunk(I, req) + chunk(E | 0x40, rsp) + chunk(I, req[:20]) + chunk(I, req[20:]) + chunk(E, rsp[:30]) + chunk(E | 4, rsp[30:32], 3))
post = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n"
w('http1', 'chunked_pipelined', b"\0" + chunk(E, post + req) + chunk(I, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No\r\n\r\n" + rsp) + bytes([0x0F]))
up = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
settings = struct.pack('>I', 0)[1:] + bytes([4, 0]) + struct.pack('>I', 0)
w('http1', 'h2c_upgrade', b"\x01" + chunk(I, up) + chunk(E, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + settings + bytes([0,0,1,1,5,0,0,0,1,0x88])))
def frame(ty, flags, sid, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([ty, flags]) + struct.pack('>I', sid) + payload
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
hdrs = bytes([0x82, 0x84, 0x86, 0x41, 1]) + b"x" + bytes([0x40, 11]) + b"traceparent" + bytes([55]) + b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
req2 = preface + frame(4, 0, 0, b"") + frame(1, 5, 1, hdrs)
rsp2 = frame(4, 0, 0, b"") + frame(1, 4, 1, bytes([0x88])) + frame(0, 1, 1, b"hello")
w('http2', 'get', b"\0" + chunk(I, req2) + chunk(E, rsp2) + chunk(I, frame(1, 5, 3, bytes([0xbe, 0x82, 0x84, 0x86]))) + chunk(E, frame(1, 5, 3, bytes([0x88]))))
grpc_hdr = bytes([0x83, 0x86, 0x44, 5]) + b"/a/Bc" + bytes([0x5f, 16]) + b"application/grpc"
grpc_rsp = frame(1, 4, 1, bytes([0x88])) + frame(0, 0, 1, b"\0\0\0\0\1x") + frame(1, 5, 1, bytes([0x40, 11]) + b"grpc-status" + bytes([1]) + b"0")
w('http2', 'grpc_frames_layout', b"\0" + chunk(I, preface + frame(4, 0, 0, b"") + frame(1, 4, 1, grpc_hdr) + frame(0, 1, 1, b"\0\0\0\0\1y")) + bytes([E | 0x20, 1, 0, 0, 0, 0]) + ln(len(grpc_rsp)) + grpc_rsp)
w('http2', 'mid_stream', b"\x01" + chunk(E, frame(1, 5, 7, bytes([0x88]))) + chunk(I, frame(1, 5, 9, bytes([0x82, 0x84, 0x86]))) + chunk(E, frame(3, 0, 9, b"\0\0\0\x08")))
# records: fix-up header; CONN, DATA x2, CLOSE
def rec(c1, c2, body):
    return bytes([c1, c2]) + ln(len(body)) + body
DATA_HDR = 80
conn = rec(0x01 | 0x40, 0, b"")
d_in = rec(0x01 | 2 | 0x40, 1 | 2 | 8 | 32, bytes(DATA_HDR) + req)
d_out = rec(0x01 | 2 | 0x40, 1 | 2 | 8 | 32 | 64, bytes(DATA_HDR) + rsp)
close = rec(0x01 | 4 | 0x40, 0, b"")
w('records', 'http1_exchange', b"\0" + conn + d_in + d_out + close)
h2in = rec(0x01 | 2 | 0x40, 1 | 2 | 16 | 32, bytes(DATA_HDR) + req2)
h2out = rec(0x01 | 2 | 0x40, 1 | 2 | 16 | 32 | 64, bytes(DATA_HDR) + rsp2)
w('records', 'http2_exchange', b"\x08" + conn + h2in + h2out + rec(0x81 | 4 | 0x40, 1, b""))
w('config', 'yaml', b"\0port: [80, 8080]\ncomm: nginx\ncapture-size: 512\nring-buffer-mib: 16\nadmin-addr: 127.0.0.1:9464\njoin-hold-ms: 100\nk8s-label: [app]\n")
w('config', 'toml', b"\x01pid = [1, 2]\nhooks = \"socket\"\notlp-protocol = \"grpc\"\nexport-queue-mib = 8\nplugins-dir = \"off\"\nplugin-timeout-ms = 5\n")
env = b"http://collector:4318/\0http/protobuf\0" + b"\0".join([
    b"\x00deployment.environment=prod,team=a%2Cb,k=%e9%",
    b"\x09api-key=secret%20x,other=1",
    b"\x07true", b"\x0c2500", b"\x0egzip", b"\x10100", b"\x11500", b"\x14otlp",
    b"\x15delta", b"\x1660000", b"\xffOTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector:4317"])
w('otel_env', 'all', env)
w('otel_env', 'grpc', b"\0grpc\0\x02localhost:4317\0\x05grpc\0\x08false")
# propagate: 8 bytes of write size (shifted down 40 bits by the target), then the head
size = lambda n: struct.pack('<Q', n << 40)
w('propagate', 'get', size(len(req)) + req)
body_req = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
w('propagate', 'body_in_later_writes', size(len(body_req) + 10) + body_req + b"0123456789")
w('propagate', 'pipelined', size(2 * len(rsp)) + b"GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
w('propagate', 'chunked', size(len(post)) + post)
