"""A participant that takes a study through the participant HTTP API (``docs/running-a-study.md``).

One way of taking part, shared by ``advbias simulate`` (synthetic participants with
a known bias) and the load benchmark (many participants at once). It talks to the
server exactly as the browser does and knows nothing of the server's code.

:class:`HttpClient` is deliberately plain (``http.client``, one keep-alive
connection, no asyncio) so that it stops by itself and costs little CPU next to
the server it measures. Every advbias call is idempotent (a replayed answer
carries the same idempotency key), so a request may be retried after a
connection failure, as the browser does.

:class:`Participant` is a state machine (:meth:`~Participant.next_request`,
:meth:`~Participant.handle`) so that many participants can be interleaved on a
few threads; :meth:`~Participant.run` takes the whole study on one connection.
"""
from __future__ import annotations

import http.client
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from advbias.errors import CLIError

#: What the browser check reports for a synthetic participant.
BROWSER_CHECK: dict[str, Any] = {
    "window_width": 1280, "window_height": 800, "screen_width": 1920, "screen_height": 1080,
    "device_pixel_ratio": 1.0, "refresh_hz": 60.0, "image_px": 448, "user_agent": "advbias-client",
    "fullscreen": True,
}

#: A choice: ``(side, rt_ms)`` for one trial as the API lists it.
Chooser = Callable[[dict[str, Any]], tuple[str, float]]


@dataclass
class Reply:
    status: int
    data: Any
    headers: dict[str, str]
    seconds: float  # duration of the attempt that got this reply
    retries: int


class HttpClient:
    """One keep-alive HTTP/1.1 connection; requests are retried after connection failures, and after
    a 503 or 429 once the time the server asked for has passed.

    ``retry_for`` bounds how long a request keeps being retried after connection failures
    (seconds since its first attempt): long enough to ride out a server restart, finite so that
    a dead server ends the run with an error instead of hanging it. ``busy_for`` bounds how long
    a request that the server asked to come back later (a burst of starts) keeps coming back.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, retry_for: float = 0.0, busy_for: float = 120.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise CLIError(f"--url {url!r}: give an http://HOST[:PORT] address")
        self.url = url.rstrip("/")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.retry_for = retry_for
        self.busy_for = busy_for  # how long a request told to come back later (503, 429) keeps coming back
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        first = time.monotonic()
        delay = 0.02
        retries = 0
        while True:
            started = time.monotonic()
            try:
                conn = self._connection()
                conn.request(method, self.prefix + path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                seconds = time.monotonic() - started
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = raw.decode("utf-8", "replace")
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                wait = _come_back_after(response.status, data, response.getheader("Retry-After"))
                if wait is not None and time.monotonic() + wait - first <= max(self.retry_for, self.busy_for):
                    retries += 1  # the server is busy and said when to come back (experiment/admission.py)
                    time.sleep(wait)
                    continue
                return Reply(response.status, data, {k.lower(): v for k, v in response.getheaders()}, seconds,
                             retries)
            except (OSError, http.client.HTTPException):
                self.close()
                # A keep-alive connection the server closed while idle fails at once: retry it without waiting.
                if retries > 0 and time.monotonic() - first > self.retry_for:
                    raise
                retries += 1
                if retries > 1:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)


    def fetch(self, path: str) -> bytes:
        """The raw body of a GET (an image); a status other than 200 is a :class:`CLIError`."""
        try:
            conn = self._connection()
            conn.request("GET", self.prefix + path)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise CLIError(f"cannot reach {self.url}: {exc.__class__.__name__}: {exc}") from None
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        if response.status != 200:
            raise CLIError(f"GET {path} answered {response.status}")
        return body

def _come_back_after(status: int, data: Any, retry_after: str | None) -> float | None:
    """Seconds to wait before repeating a request the server refused for now (503 or 429), else None."""
    if status not in (429, 503):
        return None
    if isinstance(data, dict) and isinstance(data.get("retry_after_ms"), (int, float)):
        return max(0.0, float(data["retry_after_ms"]) / 1000)
    try:
        return max(0.0, float(retry_after or 1))
    except ValueError:
        return 1.0


class ProtocolError(CLIError):
    """The server answered something a correct server never answers to this participant."""


@dataclass
class Ack:
    """An answer that the server acknowledged (HTTP 200)."""

    prolific_pid: str
    trial_id: str
    index: int
    key: str
    replayed: bool


def alternate(trial: dict[str, Any]) -> tuple[str, float]:
    """The default chooser: left on even trial indices, right on odd ones."""
    return ("left" if trial["index"] % 2 == 0 else "right"), 400.0 + trial["index"]


@dataclass
class Participant:
    """One participant as a state machine, so that many can be interleaved on a few threads.

    :meth:`next_request` says what the participant sends next; :meth:`handle` checks the
    reply and moves on. A request is repeated unchanged (same idempotency key) until a
    reply arrives, so a retried answer can only ever be stored once.
    """

    slug: str
    prolific_pid: str | None
    study_id: str = "advbias-client"
    session_id: str = "S"
    choose: Chooser = alternate
    debrief: str = ""
    browser_check: dict[str, Any] = field(default_factory=lambda: dict(BROWSER_CHECK))
    stage: str = "start"
    token: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    position: int = 0
    key: str | None = None
    pending: dict[str, Any] | None = None
    acks: list[Ack] = field(default_factory=list)
    status: str | None = None
    completion_code: str | None = None
    clock_ms: float = 1000.0

    @property
    def done(self) -> bool:
        return self.stage == "done"

    @property
    def base(self) -> str:
        return f"/api/v1/participants/{self.token}"

    def _start_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"study_id": self.study_id, "session_id": self.session_id}
        if self.prolific_pid is not None:
            body["prolific_pid"] = self.prolific_pid
        return body

    def _answer_body(self, trial: dict[str, Any]) -> dict[str, Any]:
        if self.pending is None:  # choose once per trial: a retry sends the very same answer
            side, rt = self.choose(trial)
            self.clock_ms += rt + 1500.0
            self.key = secrets.token_hex(12)
            self.pending = {
                "trial_id": trial["id"], "idempotency_key": self.key, "response": side, "response_source": "key",
                "rt_ms": round(float(rt), 1), "onset_frame_ms": round(self.clock_ms, 3), "offset_frame_ms": None,
                "fullscreen": bool(self.browser_check.get("fullscreen")), "blurred": False, "blur_events": 0,
            }
        return self.pending

    def next_request(self) -> tuple[str, str, Any, str]:
        """(method, path, body, stage) of the next call."""
        if self.stage == "start":
            return "POST", f"/api/v1/experiments/{self.slug}/participants", self._start_body(), "start"
        if self.stage == "consent":
            return "POST", f"{self.base}/consent", {"consent": True}, "consent"
        if self.stage == "check":
            return "POST", f"{self.base}/browser-check", self.browser_check, "check"
        if self.stage == "trials":
            return "GET", f"{self.base}/trials?start=0&count=500", None, "trials"
        if self.stage == "respond":
            trial = self.trials[self.position]
            return "POST", f"{self.base}/responses", self._answer_body(trial), "respond"
        if self.stage == "finish":
            return "POST", f"{self.base}/finish", {"text": self.debrief}, "finish"
        raise ProtocolError("the participant has finished")

    def _refuse(self, reply: Reply) -> ProtocolError:
        data = reply.data
        said = data.get("error", data) if isinstance(data, dict) else data
        return ProtocolError(f"{self.prolific_pid or 'participant'} {self.stage}: HTTP {reply.status}: {said!r}"[:300])

    def handle(self, reply: Reply) -> None:
        expected = (200, 201) if self.stage == "start" else (200,)
        if reply.status not in expected:
            raise self._refuse(reply)
        data = reply.data
        if self.stage == "start":
            self.token = data["token"]
            self.status = data["status"]
            if data["status"] != "in_progress":
                self.completion_code = data.get("completion_code")
                self.stage = "done"
            else:
                self.stage = "trials" if data["consented"] and data["browser_checked"] else (
                    "check" if data["consented"] else "consent")
        elif self.stage == "consent":
            self.stage = "check"
        elif self.stage == "check":
            self.stage = "trials"
        elif self.stage == "trials":
            self.trials = data["trials"]
            self.position = data["next_index"]
            self.stage = "respond" if self.position < len(self.trials) else "finish"
        elif self.stage == "respond":
            self._acknowledged(reply)
        elif self.stage == "finish":
            if data.get("status") not in ("completed", "screened_out"):
                raise ProtocolError(f"{self.prolific_pid}: finish answered {data!r}"[:300])
            self.status = data["status"]
            self.completion_code = data.get("completion_code")
            self.stage = "done"

    def _acknowledged(self, reply: Reply) -> None:
        trial = self.trials[self.position]
        data = reply.data
        if data.get("trial_id") != trial["id"] or data.get("stored") is not True:
            raise ProtocolError(f"{self.prolific_pid}: unexpected answer {data!r}"[:300])
        assert self.key is not None
        self.acks.append(Ack(self.prolific_pid or "", trial["id"], trial["index"], self.key,
                             reply.headers.get("idempotent-replayed") == "true"))
        self.key = None
        self.pending = None
        self.position += 1
        if self.position >= len(self.trials):
            self.stage = "finish"

    def run(self, client: HttpClient) -> "Participant":
        """Take the whole study on one connection; a server that cannot be reached is a :class:`CLIError`."""
        while not self.done:
            method, path, body, _ = self.next_request()
            try:
                reply = client.request(method, path, body)
            except (OSError, http.client.HTTPException) as exc:
                raise CLIError(f"cannot reach {client.url}: {exc.__class__.__name__}: {exc}") from None
            self.handle(reply)
        return self
