"""Requests that gunicorn refuses before the app sees them are answered in JSON too."""
from __future__ import annotations

import json
import socket
from typing import Any


def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_gunicorn_refusals_are_json(live_study: Any) -> None:
    port = live_study.server.port
    cases = {
        "request line too long": b"GET /api/v1/health?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "malformed request line": b"NOT A REQUEST\r\n\r\n",
        "header too large": b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        "too many headers": b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: y\r\n" % i for i in range(120)) + b"\r\n",
    }
    for name, request in cases.items():
        status, headers, body = raw(port, request)
        assert 400 <= status < 500, (name, status, body[:200])
        assert headers["content-type"] == "application/json", name
        assert json.loads(body)["error"], name
    # the app's own answers are unchanged
    status, headers, body = raw(port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and json.loads(body)["ok"] is True
