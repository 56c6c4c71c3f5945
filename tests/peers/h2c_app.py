"""ASGI app for hypercorn (h2c with the HTTP/1.1 `Upgrade: h2c` path, and prior knowledge).

    python3 -m hypercorn --bind 127.0.0.1:PORT --chdir tests/peers h2c_app:app

GET /index.html -> 200 "hello over h2\n" (14 bytes); anything else -> 404 "nope\n".
"""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    found = scope["path"] == "/index.html"
    body = b"hello over h2\n" if found else b"nope\n"
    await send({
        "type": "http.response.start",
        "status": 200 if found else 404,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
