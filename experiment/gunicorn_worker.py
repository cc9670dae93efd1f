"""The gunicorn worker ``advbias serve --workers N`` runs: gthread, with JSON refusals.

gunicorn refuses some requests itself, before the app sees them (a request line over
4,094 bytes, too many or too large headers, a malformed request line or header), with a
small HTML page. Every other refusal advbias makes is JSON ``{"error": "..."}``, and the
study page and the participant client read JSON: so this worker answers those refusals
in JSON too, with the same status and reason.
"""
from __future__ import annotations

import json
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, answering ``{"error": ...}`` instead of an HTML page."""
    text = f"{reason.lower()}: {mesg}" if mesg else reason.lower()
    body = json.dumps({"error": text[:500]}).encode("ascii")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorThreadWorker(ThreadWorker):
    """gunicorn's threaded worker whose own refusals are JSON (see the module docstring)."""

    def init_process(self) -> None:
        util.write_error = write_json_error  # the worker calls it through the module: one process-local switch
        super().init_process()
