"""Slow-client probes against a served study: slow headers, slow bodies, and who is still answered meanwhile.

Used by ``tests/test_slow_clients.py`` (short holds) and ``tests/bench_slow_clients.py`` (the 30 s
version, figures in docs/benchmarks.md). Loopback only; every probe stops by itself after its hold
(or when the server closes the connection). Not part of the product.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

#: An answer counts when it arrives within this many seconds.
ANSWER_WITHIN_S = 2.0
BROWSER = {"window_width": 1280, "window_height": 800, "refresh_hz": 60.0, "device_pixel_ratio": 1.0}


@dataclass
class Target:
    """Where the study is served: plain HTTP (the app directly) or HTTPS (through a proxy)."""

    port: int
    tls: bool = False
    host: str = "127.0.0.1"

    @property
    def host_header(self) -> str:
        """What a browser sends as ``Host`` (the proxy's site address is ``localhost:PORT``)."""
        return f"localhost:{self.port}"

    def connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        if self.tls:
            sock = _insecure().wrap_socket(sock, server_hostname="localhost")
        return sock

    def http(self, timeout: float = ANSWER_WITHIN_S) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=_insecure())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def _insecure() -> ssl.SSLContext:
    """The test's own self-signed certificate: no verification (loopback only)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def call(target: Target, method: str, path: str, body: Any = None,
         timeout: float = ANSWER_WITHIN_S) -> tuple[int, Any]:
    """One request on a fresh connection; (status, JSON body) or (0, None) when it did not answer in time."""
    conn = target.http(timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Host": target.host_header}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        reply = conn.getresponse()
        raw = reply.read()
        try:
            return reply.status, json.loads(raw) if raw else None
        except ValueError:
            return reply.status, None
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        conn.close()


def ready_participant(target: Target, slug: str) -> tuple[str, list[dict[str, Any]]]:
    """A participant through consent and the browser check: (token, their trials)."""
    status, state = call(target, "POST", f"/api/v1/experiments/{slug}/participants",
                         {"prolific_pid": "P" + uuid.uuid4().hex[:12]}, timeout=30)
    assert status == 201, (status, state)
    base = f"/api/v1/participants/{state['token']}"
    assert call(target, "POST", f"{base}/consent", {"consent": True}, timeout=30)[0] == 200
    assert call(target, "POST", f"{base}/browser-check", BROWSER, timeout=30)[0] == 200
    status, page = call(target, "GET", f"{base}/trials?start=0&count=500", timeout=30)
    assert status == 200, status
    return state["token"], page["trials"]


# --------------------------------------------------------------------------- the slow clients

def _hold(target: Target, head: bytes, drip: bytes, every_s: float, until: float, opened: list[int]) -> None:
    """Keep one slow connection open until ``until``: when the server cuts it off, open another."""
    while time.monotonic() < until:
        _hold_once(target, head, drip, every_s, until, opened)


def _hold_once(target: Target, head: bytes, drip: bytes, every_s: float, until: float, opened: list[int]) -> None:
    """Open a connection, send ``head``, then one ``drip`` every ``every_s`` until ``until`` or a close."""
    try:
        sock = target.connect(timeout=5)
    except OSError:
        time.sleep(every_s)
        return
    opened.append(1)
    try:
        sock.settimeout(every_s)
        sock.sendall(head)
        while time.monotonic() < until:
            try:
                if sock.recv(4096) == b"":  # the server gave up on us (408) and closed: stop
                    return
            except (socket.timeout, TimeoutError):
                pass
            sock.sendall(drip)
    except OSError:
        return
    finally:
        sock.close()


def slow_headers(target: Target, until: float, every_s: float, opened: list[int]) -> threading.Thread:
    """Headers one line every ``every_s`` seconds (never finishing them)."""
    head = f"GET /api/v1/health HTTP/1.1\r\nHost: {target.host_header}\r\n".encode()
    return _spawn(_hold, target, head, b"X-Slow: 1\r\n", every_s, until, opened)


def slow_body(target: Target, slug: str, until: float, every_s: float, opened: list[int]) -> threading.Thread:
    """A start call declaring a 200-byte body, sent one byte every ``every_s`` seconds."""
    head = (f"POST /api/v1/experiments/{slug}/participants HTTP/1.1\r\nHost: {target.host_header}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n").encode()
    return _spawn(_hold, target, head, b" ", every_s, until, opened)


def _spawn(fn: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- who is answered meanwhile

@dataclass
class Tally:
    """Requests made during the hold, by kind: how many, and how many were answered within 2 s."""

    made: dict[str, int] = field(default_factory=dict)
    answered: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # "kind status" (0: no answer) or "kind slow"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, ok_status: int, began: float) -> None:
        took = time.monotonic() - began
        ok = status == ok_status and took <= ANSWER_WITHIN_S
        with self.lock:
            self.made[kind] = self.made.get(kind, 0) + 1
            self.answered[kind] = self.answered.get(kind, 0) + int(ok)
            if not ok:
                why = f"{kind} {status}" if status != ok_status else f"{kind} slow"
                self.failures[why] = self.failures.get(why, 0) + 1

    def share(self, kind: str) -> float:
        return self.answered.get(kind, 0) / max(1, self.made.get(kind, 0))

    def summary(self) -> dict[str, str]:
        out = {k: f"{self.answered.get(k, 0)}/{n}" for k, n in sorted(self.made.items())}
        return {**out, **{f"failed: {k}": str(n) for k, n in sorted(self.failures.items())}}


def _answers(target: Target, token: str, trials: list[dict[str, Any]], until: float, tally: Tally) -> None:
    base = f"/api/v1/participants/{token}"
    for trial in trials:
        if time.monotonic() >= until:
            return
        began = time.monotonic()
        status, _ = call(target, "POST", f"{base}/responses", {
            "trial_id": trial["id"], "idempotency_key": uuid.uuid4().hex, "response": "left", "rt_ms": 600.0})
        tally.add("answer", status, 200, began)
        time.sleep(0.2)  # a participant answers a few times a second at most


def _health(target: Target, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        began = time.monotonic()
        status, _ = call(target, "GET", "/api/v1/health")
        tally.add("health", status, 200, began)
        time.sleep(0.25)


def _newcomers(target: Target, slug: str, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        began = time.monotonic()
        status, _ = call(target, "POST", f"/api/v1/experiments/{slug}/participants",
                         {"prolific_pid": "N" + uuid.uuid4().hex[:12]})
        tally.add("start", status, 201, began)
        time.sleep(0.5)


def probe(target: Target, slug: str, *, hold_s: float, slow_header_conns: int = 8, slow_body_conns: int = 2,
          participants: int = 3, header_every_s: float = 3.0, body_every_s: float = 2.0) -> Tally:
    """Hold slow connections for ``hold_s`` while participants answer, health is checked and newcomers start.

    Slow clients open first (and get a second to settle), then the others are measured
    for the rest of the hold; everything stops by itself when the hold ends.
    """
    people = [ready_participant(target, slug) for _ in range(participants)]
    until = time.monotonic() + hold_s
    opened: list[int] = []
    slow = [slow_headers(target, until, header_every_s, opened) for _ in range(slow_header_conns)]
    slow += [slow_body(target, slug, until, body_every_s, opened) for _ in range(slow_body_conns)]
    time.sleep(1.0)  # the slow clients hold their connections before anyone else asks
    tally = Tally()
    others = [_spawn(_answers, target, token, trials, until, tally) for token, trials in people]
    others += [_spawn(_health, target, until, tally), _spawn(_newcomers, target, slug, until, tally)]
    for thread in others + slow:
        thread.join(timeout=hold_s + 30)
    tally.made["slow connections opened"] = len(opened)
    tally.answered["slow connections opened"] = len(opened)  # more than 10: some were cut off and came back
    return tally
