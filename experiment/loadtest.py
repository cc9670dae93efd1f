"""A real server under real traffic: gunicorn in a subprocess and simulated participants over HTTP.

This module serves two purposes:

* ``python -m experiment.loadtest`` (``make loadtest``) is the web-server load benchmark:
  N simulated participants (default 500) take the whole study at once (start, consent,
  browser check, trial list, one POST per answer, debrief) against gunicorn with several
  workers, on SQLite and on PostgreSQL. It reports answers stored per second, the p50/p95/p99
  latency of the answer POST, the server's CPU time per answer, and checks the database
  afterwards: every acknowledged answer must be stored exactly once (``lost`` and
  ``duplicated`` must be zero). Results are printed and written as JSON.
* The crash and browser tests use :class:`ServerProcess` (start, SIGKILL, restart a real
  gunicorn on a loopback port) and :class:`SimulatedParticipant` / :class:`HttpClient`.

The client is deliberately plain (``http.client`` with one keep-alive connection per thread,
a bounded thread pool, no asyncio) so that it stops by itself and costs little CPU next to
the server it measures. Every advbias call is idempotent (a replayed answer carries the
same idempotency key), so the client may retry any request after a connection failure,
exactly as the browser does.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

#: The small stimulus set the benchmark builds when none is given (same as the test suite's).
SET_PARAMS: dict[str, Any] = dict(
    images="builtin", pairs=[("cat", "truck")], eps=[2, 16], steps=1, models=["lite0"],
    controls=("flip", "noise"), limit=8, seed=0,
)
BROWSER_CHECK = {"window_width": 1280, "window_height": 800, "screen_width": 1920, "screen_height": 1080,
                 "device_pixel_ratio": 1.0, "refresh_hz": 60.0, "image_px": 448, "user_agent": "advbias-loadtest",
                 "fullscreen": False}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# =========================================================================== the server

class ServerError(RuntimeError):
    """The server did not start (its log's tail is in the message)."""


class ServerProcess:
    """``advbias serve --workers N`` (gunicorn) in its own process group on a loopback port.

    The server runs in a new session so that :meth:`kill` can SIGKILL the master and every
    worker at once, the way a crash or an out-of-memory kill takes a whole server down.
    :meth:`start` may be called again after :meth:`kill` or :meth:`stop`: the server comes
    back on the same port with the same database.
    """

    def __init__(
        self,
        instance: Path,
        database_url: str,
        *,
        workers: int = 2,
        threads: int = 4,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.instance = Path(instance)
        self.database_url = database_url
        self.workers = workers
        self.threads = threads
        self.port = port or free_port()
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else self.instance / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "experiment.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--threads", str(self.threads),
            "--instance", str(self.instance), "--database-url", self.database_url,
        ]

    def start(self, timeout: float = 90.0) -> "ServerProcess":
        """Start the server and wait until ``/api/v1/health`` answers; raises :class:`ServerError`."""
        if self.process is not None and self.process.poll() is None:
            raise ServerError("the server is already running")
        env = {**os.environ, "ADVBIAS_SECURE_COOKIES": "0", "PYTHONUNBUFFERED": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the server exited with status {self.process.returncode}: {self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.1)
        self.kill()
        raise ServerError(f"the server did not answer within {timeout:.0f} s: {self.log_tail()}")

    def healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/api/v1/health")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            return response.status == 200 and json.loads(body).get("ok") is True
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def group_pids(self) -> list[int]:
        """Every live process of the server's process group (master and workers)."""
        if self.process is None:
            return []
        pgid = self.process.pid
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the live processes of the server (Linux only)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.group_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, IndexError, ValueError):
                continue
        return total

    def kill(self) -> None:
        """SIGKILL the whole process group (no graceful shutdown, nothing flushed), then reap the master."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        deadline = time.monotonic() + 10
        while self.group_pids() and time.monotonic() < deadline:  # workers die with their master's group
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful shutdown (SIGTERM to the group), SIGKILL if it takes longer than ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# =========================================================================== the client

@dataclass
class Reply:
    status: int
    data: Any
    headers: dict[str, str]
    seconds: float  # duration of the attempt that got this reply
    retries: int


class HttpClient:
    """One keep-alive HTTP/1.1 connection; requests are retried after connection failures.

    ``retry_for`` bounds how long a request keeps being retried (seconds since its first
    attempt): long enough to ride out a server restart in the crash test, finite so that a
    dead server ends the run with an error instead of hanging it.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, retry_for: float = 0.0) -> None:
        assert url.startswith("http://")
        host, _, port = url[len("http://"):].rstrip("/").partition(":")
        self.host, self.port = host, int(port or 80)
        self.timeout = timeout
        self.retry_for = retry_for
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
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                seconds = time.monotonic() - started
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = raw.decode("utf-8", "replace")
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return Reply(response.status, data, {k.lower(): v for k, v in response.getheaders()}, seconds, retries)
            except (OSError, http.client.HTTPException):
                self.close()
                # A keep-alive connection the server closed while idle fails at once: retry it without waiting.
                if retries > 0 and time.monotonic() - first > self.retry_for:
                    raise
                retries += 1
                if retries > 1:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)


class ProtocolError(RuntimeError):
    """The server answered something a correct server never answers to this participant."""


@dataclass
class Ack:
    """An answer that the server acknowledged (HTTP 200)."""

    prolific_pid: str
    trial_id: str
    index: int
    key: str
    replayed: bool


@dataclass
class SimulatedParticipant:
    """One participant as a state machine, so that many can be interleaved on a few threads.

    :meth:`next_request` says what the participant sends next; :meth:`handle` checks the
    reply and moves on. A request is repeated unchanged (same idempotency key) until a
    reply arrives, so a retried answer can only ever be stored once.
    """

    slug: str
    prolific_pid: str
    choose: str = "alternate"
    stage: str = "start"
    token: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    position: int = 0
    key: str | None = None
    acks: list[Ack] = field(default_factory=list)
    completion_code: str | None = None

    STAGES = ("start", "consent", "check", "trials", "respond", "finish", "done")

    @property
    def done(self) -> bool:
        return self.stage == "done"

    @property
    def base(self) -> str:
        return f"/api/v1/participants/{self.token}"

    def next_request(self) -> tuple[str, str, Any, str]:
        """(method, path, body, kind) of the next call."""
        if self.stage == "start":
            body = {"prolific_pid": self.prolific_pid, "study_id": "LOADTEST", "session_id": "S"}
            return "POST", f"/api/v1/experiments/{self.slug}/participants", body, "start"
        if self.stage == "consent":
            return "POST", f"{self.base}/consent", {"consent": True}, "consent"
        if self.stage == "check":
            return "POST", f"{self.base}/browser-check", BROWSER_CHECK, "check"
        if self.stage == "trials":
            return "GET", f"{self.base}/trials?start=0&count=500", None, "trials"
        if self.stage == "respond":
            trial = self.trials[self.position]
            if self.key is None:
                self.key = secrets.token_hex(12)
            side = "left" if self.choose == "left" or (self.choose == "alternate" and trial["index"] % 2 == 0) else "right"
            body = {
                "trial_id": trial["id"], "idempotency_key": self.key, "response": side, "response_source": "key",
                "rt_ms": 400.0 + trial["index"], "onset_frame_ms": 1000.0 + 16.7 * trial["index"],
                "offset_frame_ms": None, "fullscreen": False, "blurred": False, "blur_events": 0,
            }
            return "POST", f"{self.base}/responses", body, "respond"
        if self.stage == "finish":
            return "POST", f"{self.base}/finish", {"text": ""}, "finish"
        raise ProtocolError("the participant has finished")

    def handle(self, reply: Reply) -> None:
        expected = {"start": (200, 201)}.get(self.stage, (200,))
        if reply.status not in expected:
            raise ProtocolError(f"{self.prolific_pid} {self.stage}: HTTP {reply.status} {reply.data!r}"[:300])
        data = reply.data
        if self.stage == "start":
            self.token = data["token"]
            if data["status"] != "in_progress":
                self.completion_code = data["completion_code"]
                self.stage = "done"
            elif not data["consented"]:
                self.stage = "consent"
            elif not data["browser_checked"]:
                self.stage = "check"
            else:
                self.stage = "trials"
        elif self.stage == "consent":
            self.stage = "check"
        elif self.stage == "check":
            self.stage = "trials"
        elif self.stage == "trials":
            self.trials = data["trials"]
            self.position = data["next_index"]
            self.stage = "respond" if self.position < len(self.trials) else "finish"
        elif self.stage == "respond":
            trial = self.trials[self.position]
            if data.get("trial_id") != trial["id"] or data.get("stored") is not True:
                raise ProtocolError(f"{self.prolific_pid}: unexpected answer {data!r}"[:300])
            assert self.key is not None
            self.acks.append(Ack(self.prolific_pid, trial["id"], trial["index"], self.key,
                                 reply.headers.get("idempotent-replayed") == "true"))
            self.key = None
            self.position += 1
            if self.position >= len(self.trials):
                self.stage = "finish"
        elif self.stage == "finish":
            if data.get("status") not in ("completed", "screened_out") or not data.get("completion_code"):
                raise ProtocolError(f"{self.prolific_pid}: finish answered {data!r}"[:300])
            self.completion_code = data["completion_code"]
            self.stage = "done"

    def run(self, client: HttpClient) -> "SimulatedParticipant":
        """Take the whole study on one connection (used by the crash test: one thread per participant)."""
        while not self.done:
            method, path, body, _ = self.next_request()
            self.handle(client.request(method, path, body))
        return self


# =========================================================================== checking the database

def stored_answers(database_url: str, slug: str) -> dict[str, Any]:
    """What the database holds for experiment ``slug``: participants and answers, for comparison with acks."""
    from sqlalchemy import func, select

    from experiment.db import Database
    from experiment.models import Experiment, Participant, Response, Trial

    db = Database(database_url)
    try:
        with db.session() as s:
            exp_id = s.scalar(select(Experiment.id).where(Experiment.slug == slug))
            rows = s.execute(
                select(Participant.prolific_pid, Trial.public_id, Trial.index, Response.idempotency_key)
                .join(Trial, Trial.id == Response.trial_id)
                .join(Participant, Participant.id == Response.participant_id)
                .where(Participant.experiment_id == exp_id)
            ).all()
            per_pid = dict(
                s.execute(
                    select(Participant.prolific_pid, func.count())
                    .where(Participant.experiment_id == exp_id)
                    .group_by(Participant.prolific_pid)
                ).all()
            )
            statuses = collections.Counter(
                s.scalars(select(Participant.status).where(Participant.experiment_id == exp_id)).all()
            )
    finally:
        db.dispose()
    return {"rows": [tuple(r) for r in rows], "participants_per_pid": per_pid, "statuses": dict(statuses)}


def compare(acks: Iterable[Ack], stored: dict[str, Any]) -> dict[str, int]:
    """Lost = acknowledged but not stored; duplicated = a trial or participant stored more than once."""
    rows = stored["rows"]
    stored_keys = {(pid, trial_id, key) for pid, trial_id, _index, key in rows}
    acked = {(a.prolific_pid, a.trial_id, a.key) for a in acks}
    per_trial = collections.Counter((pid, index) for pid, _trial_id, index, _key in rows)
    return {
        "acknowledged": len(acked),
        "stored": len(rows),
        "lost": len(acked - stored_keys),
        "unacknowledged_stored": len(stored_keys - acked),
        "duplicated": sum(n - 1 for n in per_trial.values() if n > 1)
        + sum(n - 1 for n in stored["participants_per_pid"].values() if n > 1),
    }


# =========================================================================== the benchmark

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(round(q / 100 * len(sorted_values) + 0.5 - 1e-9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadResult:
    backend: str
    participants: int
    concurrency: int
    workers: int
    threads: int
    sqlite_synchronous: str | None
    rate: float = 0.0
    responses: int = 0
    seconds: float = 0.0
    responses_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_cpu_ms_per_response: float = 0.0
    client_cpu_ms_per_response: float = 0.0
    other_requests: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    check: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)


def drive(participants: list[SimulatedParticipant], url: str, concurrency: int, rate: float = 0.0,
          on_reply: Any = None) -> tuple[dict[str, list[float]], list[tuple[float, float]], list[str], int]:
    """Interleave the participants round-robin on ``concurrency`` threads until all are done.

    Every thread owns one keep-alive connection; it takes the participant at the head of
    the queue, sends that participant's next request and puts the participant back at the
    tail. All participants are therefore in the study at once and move through it in
    step: first every start, then every consent, ..., then the answers trial by trial.

    ``rate`` 0 sends as fast as the server answers (the most it can do with ``concurrency``
    requests in flight). A positive ``rate`` paces the answers: answer k is due at
    ``first + k / rate`` and its latency counts from that moment, so time spent waiting for
    a free connection because the server fell behind is part of the latency (no
    "coordinated omission"). The few other calls (start, consent, ...) are not paced.
    """
    queue: collections.deque[SimulatedParticipant] = collections.deque(participants)
    lock = threading.Lock()
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    spans: list[tuple[float, float]] = []  # (start, end) of every answer POST
    errors: list[str] = []
    retries = [0]
    schedule: list[float | None] = [None]  # when the next paced answer is due

    def worker() -> None:
        client = HttpClient(url, retry_for=30.0)
        try:
            while True:
                with lock:
                    if not queue or len(errors) > 20:
                        return
                    p = queue.popleft()
                    method, path, body, kind = p.next_request()
                    due = None
                    if rate > 0 and kind == "respond":
                        if schedule[0] is None:
                            schedule[0] = time.monotonic()
                        due = schedule[0]
                        schedule[0] += 1.0 / rate
                if due is not None:
                    time.sleep(max(0.0, due - time.monotonic()))
                t0 = time.monotonic()
                try:
                    reply = client.request(method, path, body)
                    p.handle(reply)
                except (ProtocolError, OSError, http.client.HTTPException, KeyError, TypeError) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue  # this participant is dropped; its acks so far still count
                t1 = time.monotonic()
                latency = reply.seconds if due is None else t1 - min(due, t0)
                with lock:
                    latencies[kind].append(latency)
                    retries[0] += reply.retries
                    if kind == "respond":
                        spans.append((t0, t1))
                    if not p.done:
                        queue.append(p)
                if on_reply is not None:
                    on_reply(kind)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, spans, errors, retries[0]


def ensure_stimulus_set(path: Path | None, cache: Path) -> Path:
    """The given set, or the small benchmark set built (once) in ``cache``."""
    if path is not None:
        return path
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import stimuli

    if not (cache / "set.json").is_file():
        print(f"building the benchmark stimulus set in {cache} (once)", flush=True)
    return Path(stimuli.generate_set(out=cache, progress=False, **SET_PARAMS))


def prepare_database(url: str, instance: Path, setdir: Path, slug: str, config: dict[str, Any]) -> None:
    """Upgrade the schema and create the experiment, as ``advbias db upgrade`` and ``experiment create`` do."""
    from experiment.db import Database, upgrade
    from experiment.study import create_experiment

    db = Database(url)
    try:
        upgrade(db.engine)
        create_experiment(db, slug, setdir, config, instance / "stimuli")
    finally:
        db.dispose()


def run_load(
    backend: str, database_url: str, instance: Path, setdir: Path, *, participants: int, concurrency: int,
    workers: int, threads: int, sqlite_synchronous: str | None, rate: float = 0.0,
    config: dict[str, Any] | None = None,
) -> LoadResult:
    """One benchmark run against a fresh experiment in ``database_url``."""
    slug = f"load-{uuid.uuid4().hex[:8]}"
    prepare_database(database_url, instance, setdir, slug, dict(config or {"completion_code": "LOADDONE"}))
    env = {"ADVBIAS_SQLITE_SYNCHRONOUS": sqlite_synchronous} if sqlite_synchronous else {}
    result = LoadResult(backend, participants, concurrency, workers, threads,
                        sqlite_synchronous if backend == "sqlite" else None, rate)
    people = [SimulatedParticipant(slug, f"{slug}-{i:05d}") for i in range(participants)]
    server = ServerProcess(instance, database_url, workers=workers, threads=threads, env=env,
                           log_path=instance / f"server-{slug}.log")
    with server:
        cpu_before = server.cpu_seconds()
        client_cpu = time.process_time()
        cpu_marks: dict[str, float] = {}

        def mark(kind: str) -> None:  # server CPU at the first and the last answer
            if kind == "respond" and "first" not in cpu_marks:
                cpu_marks["first"] = server.cpu_seconds()

        latencies, spans, errors, retries = drive(people, server.url, concurrency, rate, on_reply=mark)
        cpu_after = server.cpu_seconds()
        client_cpu = time.process_time() - client_cpu
    result.load_average = os.getloadavg()
    answers = sorted(latencies.get("respond", []))
    result.responses = len(answers)
    if spans:
        result.seconds = max(e for _, e in spans) - min(s for s, _ in spans)
        result.responses_per_s = len(spans) / result.seconds if result.seconds > 0 else float("nan")
    if answers:
        result.p50_ms, result.p95_ms, result.p99_ms = (1000 * percentile(answers, q) for q in (50, 95, 99))
        result.max_ms = 1000 * answers[-1]
        # The answer phase dominates; setup calls before it are excluded by the first-answer mark.
        result.server_cpu_ms_per_response = 1000 * (cpu_after - cpu_marks.get("first", cpu_before)) / len(answers)
        result.client_cpu_ms_per_response = 1000 * client_cpu / sum(len(v) for v in latencies.values())
    for kind, values in latencies.items():
        if kind != "respond":
            values = sorted(values)
            result.other_requests[kind] = {"n": len(values), "p50_ms": 1000 * percentile(values, 50),
                                           "p99_ms": 1000 * percentile(values, 99)}
    result.errors = errors
    result.retries = retries
    result.check = compare([a for p in people for a in p.acks], stored_answers(database_url, slug))
    result.completed = sum(1 for p in people if p.done)
    return result


def _report(r: LoadResult) -> str:
    mode = f" synchronous={r.sqlite_synchronous}" if r.sqlite_synchronous else ""
    pace = f"answers paced at {r.rate:g}/s" if r.rate else "as fast as answered"
    lines = [
        f"{r.backend}{mode}: {r.participants} participants, {r.concurrency} client connections ({pace}), "
        f"gunicorn {r.workers} worker(s) x {r.threads} thread(s)",
        f"  answers: {r.responses} in {r.seconds:.1f} s = {r.responses_per_s:.0f}/s; "
        f"POST latency p50 {r.p50_ms:.1f} ms, p95 {r.p95_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms",
        f"  CPU per answer: server {r.server_cpu_ms_per_response:.2f} ms, client {r.client_cpu_ms_per_response:.2f} ms; "
        f"load average during the run {r.load_average[0]:.1f}",
        f"  check: {r.check}; completed {r.completed}/{r.participants}; retries {r.retries}; errors {len(r.errors)}",
    ]
    for kind, s in r.other_requests.items():
        lines.append(f"  {kind}: n={s['n']:.0f} p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms")
    lines.extend(f"  error: {e}" for e in r.errors[:5])
    return "\n".join(lines)


def _summary(results: list[LoadResult]) -> str:
    """Median and range per configuration over repeated runs (a shared machine makes single runs noisy)."""
    import statistics

    groups: dict[tuple[Any, ...], list[LoadResult]] = collections.defaultdict(list)
    for r in results:
        groups[(r.backend, r.sqlite_synchronous, r.rate)].append(r)
    lines = ["summary: median [min - max] over the runs of each configuration"]
    for (backend, sync, rate), rs in groups.items():
        def span(values: list[float], fmt: str = "{:.0f}") -> str:
            return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))} - {fmt.format(max(values))}]"

        name = f"{backend}{' ' + sync if sync else ''}, {'paced at %g/s' % rate if rate else 'as fast as answered'}"
        lines.append(
            f"  {name} ({len(rs)} runs): {span([r.responses_per_s for r in rs])} answers/s; "
            f"p50 {span([r.p50_ms for r in rs], '{:.1f}')} ms; p99 {span([r.p99_ms for r in rs], '{:.1f}')} ms; "
            f"server CPU {span([r.server_cpu_ms_per_response for r in rs], '{:.2f}')} ms/answer; "
            f"lost {sum(r.check.get('lost', 0) for r in rs)}, duplicated {sum(r.check.get('duplicated', 0) for r in rs)}"
        )
    return "\n".join(lines)


def _scratch_postgres(admin_url: str) -> tuple[str, Any]:
    """Create a uniquely named database on the server of ``admin_url``; returns (url, drop function)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from experiment.db import normalize_url

    parsed = make_url(normalize_url(admin_url))
    kwargs = {"host": parsed.host or "127.0.0.1", "port": parsed.port or 5432, "user": parsed.username or "postgres",
              "dbname": parsed.database or "postgres"}
    if parsed.password:
        kwargs["password"] = parsed.password
    name = f"advbias_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(autocommit=True, connect_timeout=5, **kwargs) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(autocommit=True, **kwargs) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return parsed.set(database=name).render_as_string(hide_password=False), drop


class PrivatePostgres:
    """A throwaway PostgreSQL server (initdb + pg_ctl) on a free loopback port, for machines without one.

    Run as the ``postgres`` user when started as root (PostgreSQL refuses to run as root).
    Unlike the test suite's private server it keeps ``fsync`` on, so that the benchmark pays
    for durable commits as a real deployment does.
    """

    def __init__(self) -> None:
        from glob import glob

        found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
        self.bindir = Path(found[-1]).parent
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.workdir = Path(tempfile.mkdtemp(prefix="advbias-loadtest-pg-"))
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> "PrivatePostgres":
        if self.prefix:
            shutil.chown(self.workdir, "postgres", "postgres")
        data = self.workdir / "data"
        subprocess.run([*self.prefix, str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        options = f"-p {self.port} -h 127.0.0.1 -k {self.workdir} -c max_connections=200"
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options,
                        "-l", str(self.workdir / "log"), "-w", "start"], check=True, capture_output=True)
        return self

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.workdir / "data"), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiment.loadtest",
        description="Web server load benchmark: N simulated participants take the whole study at once over HTTP.",
    )
    parser.add_argument("--participants", type=int, default=500, help="simulated participants (default 500)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="client connections = threads, each interleaving participants (default 32)")
    parser.add_argument("--rates", default="0,500",
                          help="comma-separated answer rates to run: 0 = as fast as the server answers, R = answers "
                        "paced at R per second, latency counted from when each was due (default 0,500)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (default 4)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--sqlite-synchronous", default="FULL,NORMAL",
                        help="SQLite synchronous modes to run, comma-separated (default FULL,NORMAL)")
    parser.add_argument("--postgres-url", default=os.environ.get("ADVBIAS_LOADTEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL server where a scratch database may be created (and dropped afterwards)")
    parser.add_argument("--stimuli", type=Path, help="stimulus set (default: a small built-in set, built once)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-results/loadtest"),
                        help="folder for the instance, logs and results (default bench-results/loadtest)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, interleaved, and summarise (default 1)")
    parser.add_argument("--no-private-postgres", action="store_true",
                        help="skip PostgreSQL instead of starting a private server when --postgres-url has none")
    parser.add_argument("--keep", action="store_true", help="keep each run's instance folder (database, server log)")
    args = parser.parse_args(argv)
    if not 1 <= args.participants <= 100_000 or not 1 <= args.concurrency <= 512:
        parser.error("--participants must be 1..100000 and --concurrency 1..512")
    if not 1 <= args.repeat <= 100:
        parser.error("--repeat must be 1..100")
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates takes numbers, e.g. 0,500")
    if not rates or any(r < 0 for r in rates):
        parser.error("--rates takes numbers >= 0, e.g. 0,500")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(backends) <= {"sqlite", "postgresql"}:
        parser.error("--backends takes sqlite and/or postgresql")

    args.workdir.mkdir(parents=True, exist_ok=True)
    setdir = ensure_stimulus_set(args.stimuli, args.workdir.parent / "loadtest-set")
    results: list[LoadResult] = []
    runs: list[tuple[str, str | None]] = []
    for backend in backends:
        if backend == "sqlite":
            runs.extend(("sqlite", m.strip().upper()) for m in args.sqlite_synchronous.split(",") if m.strip())
        else:
            runs.append(("postgresql", None))
    plan = [(run, rate) for _ in range(args.repeat) for run in runs for rate in rates]
    private: PrivatePostgres | None = None  # started only if --postgres-url has no usable server
    try:
        for (backend, sync), rate in plan:
            instance = Path(tempfile.mkdtemp(prefix=f"{backend}-", dir=args.workdir))
            drop = None
            if backend == "sqlite":
                url = f"sqlite:///{(instance / 'advbias.db').resolve()}"
            else:
                try:
                    url, drop = _scratch_postgres(private.url if private else args.postgres_url)
                except Exception as exc:  # psycopg.Error and friends: no usable server there
                    if private is not None or args.no_private_postgres:
                        print(f"postgresql: skipped, cannot create a scratch database: {str(exc).splitlines()[0]}")
                        shutil.rmtree(instance, ignore_errors=True)
                        continue
                    print(f"no usable PostgreSQL at {args.postgres_url} ({str(exc).splitlines()[0]}); "
                          "starting a private server for the benchmark", flush=True)
                    try:
                        private = PrivatePostgres()
                        private.start()
                        url, drop = _scratch_postgres(private.url)
                    except Exception as exc2:  # not installed, initdb failed, ...: go on with the other backends
                        print(f"postgresql: skipped, cannot start a private server: {str(exc2).splitlines()[0]}")
                        if private is not None:
                            private.stop()
                            private = None
                        shutil.rmtree(instance, ignore_errors=True)
                        continue
            try:
                result = run_load(backend, url, instance.resolve(), setdir.resolve(), participants=args.participants,
                                  concurrency=args.concurrency, workers=args.workers, threads=args.threads,
                                  sqlite_synchronous=sync, rate=rate)
            finally:
                if drop is not None:
                    drop()
                if not args.keep:
                    shutil.rmtree(instance, ignore_errors=True)
            results.append(result)
            print(_report(result), flush=True)
    finally:
        if private is not None:
            private.stop()
    if args.repeat > 1:
        print(_summary(results))
    out = args.workdir / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    print(f"results written to {out}")
    bad = [r for r in results if r.check.get("lost") or r.check.get("duplicated") or r.errors]
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
