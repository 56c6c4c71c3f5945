#!/usr/bin/env python3
"""The cost of one call into libssl, to compare with and without probes on it: SSL_read_ex
on a memory BIO that has no data (it fails at once, no socket, no handshake), 100,000 times.

Usage: python3 benches/tls_floor.py    (run it alone, under `tracer run --pid 1`, and under
       a bpftrace one-liner on the same function; benches/README.md has the figures)
"""
import ssl
import time

N = 100_000

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
t = time.process_time()
for _ in range(N):
    try:
        obj.read(10)  # SSL_read_ex
    except ssl.SSLError:
        pass
print("%.2f us per call" % ((time.process_time() - t) / N * 1e6))
