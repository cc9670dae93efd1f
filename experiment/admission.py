"""Admission of participant starts, so that a burst of newcomers never starves those already answering.

Starting a participant is the most expensive call (it assigns a list and stores the whole
trial sequence), and on a launch hundreds arrive at the same instant. Without a limit they
take every server thread, and the answers of participants already in the study queue
behind them (measured: answer p99 from 30 ms to 1.4 s during a burst of 150 starts).

Each server process therefore runs at most ``concurrent`` starts at a time (they serialise
on the database anyway: SQLite has one writer, PostgreSQL locks the experiment row to
choose the least-filled list), lets at most ``max_waiting`` more wait briefly, and answers
any other start at once with 503, ``Retry-After`` and ``{"retry_after_ms": N}``. The gate
sits in front of the web framework (:class:`AdmissionMiddleware`), so a refusal costs a
small fraction of a request. The delays handed out are a
schedule, not a random back-off: each refused newcomer is given the next free moment
(estimated from how long starts take here), so refused newcomers come back one after
another at the rate the process can start them, instead of all together again.
Threads are never held by waiting newcomers beyond ``max_waiting``, so answers always
find one.
"""
from __future__ import annotations

import io
import json
import re
import threading
import time
from typing import Any, Callable, Iterable

#: Never ask a client to come back sooner than this, nor later than this (milliseconds).
MIN_RETRY_MS, MAX_RETRY_MS = 50, 10_000


class StartGate:
    """At most ``concurrent`` starts at once in this process; the others are told when to come back."""

    def __init__(self, concurrent: int = 1, max_waiting: int = 1, max_wait_s: float = 0.1,
                 first_estimate_s: float = 0.02) -> None:
        if concurrent < 1 or max_waiting < 0 or max_wait_s < 0:
            raise ValueError("a start gate needs concurrent >= 1, max_waiting >= 0 and max_wait_s >= 0")
        self.concurrent = concurrent
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._slots = threading.BoundedSemaphore(concurrent)
        self._lock = threading.Lock()
        self._waiting = 0
        self._step_s = first_estimate_s  # moving average of how long one start holds its slot (per slot)
        self._next_free = 0.0  # the moment up to which refused newcomers have been scheduled
        self.admitted = 0
        self.refused = 0

    def _acquire(self) -> bool:
        with self._lock:
            may_wait = self._waiting < self.max_waiting
            if may_wait:
                self._waiting += 1
        if not may_wait:
            return self._slots.acquire(blocking=False)
        try:
            return self._slots.acquire(timeout=self.max_wait_s)
        finally:
            with self._lock:
                self._waiting -= 1

    def _schedule(self) -> int:
        """The delay (ms) after which this refused newcomer should come back: the next free moment."""
        with self._lock:
            now = time.monotonic()
            self._next_free = max(self._next_free, now) + self._step_s
            self.refused += 1
            delay = self._next_free - now
        return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, 1000 * delay)))

    def try_enter(self) -> int | None:
        """Take a slot (None) or, if none frees up in time, the milliseconds after which to come back."""
        if self._acquire():
            return None
        return self._schedule()

    def leave(self, began: float) -> None:
        """Give the slot back; ``began`` is when it was taken (time.monotonic())."""
        took = time.monotonic() - began
        with self._lock:  # the pace of this process: how long one start holds its slot
            self._step_s = 0.8 * self._step_s + 0.2 * min(0.5, took) / self.concurrent
            self.admitted += 1
        self._slots.release()


#: Only the call that creates a participant is gated.
START_PATH = re.compile(r"/api/v1/experiments/[^/]+/participants/?")
BUSY_MESSAGE = "many participants are starting right now; please retry shortly"
BUSY_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", "default-src 'none'")]


class AdmissionMiddleware:
    """Applies the gate in front of the web framework, so that a refusal costs almost nothing.

    In a burst most newcomers are refused at first; answering each through the full request
    handling would itself take the time the gate is there to keep for participants' answers.
    """

    def __init__(self, app: Callable[..., Any], state: Any) -> None:
        self.app = app
        self.state = state  # the app's AdvbiasState: its ``start_gate`` is the gate

    @property
    def gate(self) -> StartGate:
        return self.state.start_gate

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or not START_PATH.fullmatch(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        wait_ms = self.gate.try_enter()
        if wait_ms is not None:
            body = json.dumps({"error": BUSY_MESSAGE, "retry_after_ms": wait_ms}).encode()
            start_response("503 Service Unavailable", [*BUSY_HEADERS, ("Content-Length", str(len(body))),
                                                       ("Retry-After", str(max(1, round(wait_ms / 1000))))])
            return [body]
        began = time.monotonic()
        try:
            result = self.app(environ, start_response)
            try:
                return list(result)  # the whole response is made inside the slot
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            self.gate.leave(began)


class BodyMiddleware:
    """Reads every request body whole, within its limit, before the start gate or the app runs.

    A slow client sending a start's body a byte at a time must never hold the start slot
    (measured: two such bodies kept 4 of 16 newcomers from starting), so the body is in
    memory before :class:`AdmissionMiddleware` takes a slot. A body over ``limit`` bytes,
    declared (``Content-Length``) or chunked, is answered 413 and nothing reaches the app:
    a chunked one is no longer cut at the limit and parsed.
    """

    def __init__(self, app: Callable[..., Any], limit: int) -> None:
        self.app = app
        self.limit = limit

    def _refuse(self, environ: dict[str, Any], start_response: Callable[..., Any], status: str,
                message: str) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/api/"):
            body, kind = json.dumps({"error": message}).encode(), "application/json"
        else:
            body, kind = f"<!doctype html><title>{status}</title><p>{message}</p>".encode(), "text/html; charset=utf-8"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body))), ("Connection", "close"),
                                ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
        return [body]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        declared = (environ.get("CONTENT_LENGTH") or "").strip()
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not declared and not chunked:
            return self.app(environ, start_response)
        too_large = f"request body too large (limit {self.limit} bytes)"
        stream = environ["wsgi.input"]
        if declared:
            if not re.fullmatch(r"[0-9]{1,18}", declared, re.ASCII):
                return self._refuse(environ, start_response, "400 Bad Request", "malformed Content-Length")
            wanted = int(declared)
            if wanted > self.limit:
                return self._refuse(environ, start_response, "413 Request Entity Too Large", too_large)
        else:
            wanted = self.limit + 1  # a chunked body ends where the server says; one byte more is too many
        parts, got = [], 0
        while got < wanted:
            part = stream.read(min(65536, wanted - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
        if got > self.limit:
            return self._refuse(environ, start_response, "413 Request Entity Too Large", too_large)
        body = b"".join(parts)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = True
        return self.app(environ, start_response)
