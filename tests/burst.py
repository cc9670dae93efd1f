"""A burst of starts while others answer (``python tests/loadtest.py --burst``): what a study going live does.

``running`` participants are already in the study and answer at a steady pace (each about once a
second, latency counted from when the answer was due). After ``before_s`` seconds, ``burst``
newcomers arrive at the same instant, each on its own connection, and start. The report compares
the running participants' answer latency before the burst with the latency of the answers due while
it lasts, and gives the newcomers' start latency (from the instant they arrived, retries included).
"""

import collections
import http.client
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advbias.client import HttpClient, Participant as SimulatedParticipant, ProtocolError
from servers import ServerProcess, compare, percentile, stored_answers


@dataclass
class BurstResult:
    backend: str
    workers: int
    threads: int
    running: int
    burst: int
    pace_s: float
    before: dict[str, float] = field(default_factory=dict)
    during: dict[str, float] = field(default_factory=dict)
    starts: dict[str, float] = field(default_factory=dict)
    burst_seconds: float = 0.0
    start_retries: int = 0
    start_statuses: dict[str, int] = field(default_factory=dict)
    lists: dict[str, int] = field(default_factory=dict)
    check: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    newcomers_process: bool = True  # the newcomers' client in a process of its own (False: threads of this one)

    @property
    def ratio(self) -> float:
        return self.during.get("p99_ms", float("nan")) / max(self.before.get("p99_ms", float("nan")), 1e-9)


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": 1000 * percentile(values, 50), "p95_ms": 1000 * percentile(values, 95),
            "p99_ms": 1000 * percentile(values, 99), "max_ms": 1000 * max(values) if values else float("nan")}


def _prepare(url: str, people: list[SimulatedParticipant]) -> None:
    """Bring the running participants to their first answer (start, consent, check, trial list)."""
    client = HttpClient(url, retry_for=30.0)
    try:
        for p in people:
            while p.stage != "respond":
                method, path, body, _ = p.next_request()
                p.handle(client.request(method, path, body))
    finally:
        client.close()


class _Answering:
    """One running slot: answers once per ``pace_s`` on its own connection, through a queue of prepared participants."""

    def __init__(self, url: str, people: list[SimulatedParticipant], pace_s: float, phase: float,
                 stop: threading.Event, errors: list[str]) -> None:
        self.url, self.people, self.pace_s, self.phase = url, collections.deque(people), pace_s, phase
        self.stop, self.errors = stop, errors
        self.samples: list[tuple[float, float]] = []  # (due, latency)

    def run(self, t0: float) -> None:
        client = HttpClient(self.url, retry_for=30.0)
        due = t0 + self.phase
        try:
            while not self.stop.is_set() and self.people:
                p = self.people[0]
                if p.stage != "respond":  # finished its trials: the next prepared participant takes over
                    self.people.popleft()
                    continue
                time.sleep(max(0.0, due - time.monotonic()))
                method, path, body, _ = p.next_request()
                try:
                    p.handle(client.request(method, path, body))
                except (ProtocolError, OSError, http.client.HTTPException) as exc:
                    self.errors.append(f"answer: {exc}"[:300])
                    self.people.popleft()
                    continue
                self.samples.append((due, time.monotonic() - due))
                due += self.pace_s
        finally:
            client.close()


def _newcomer(url: str, person: SimulatedParticipant, gate: threading.Barrier, out: list[Any],
              errors: list[str]) -> None:
    client = HttpClient(url, retry_for=60.0)
    try:
        gate.wait()
        arrived = time.monotonic()
        method, path, body, _ = person.next_request()
        reply = client.request(method, path, body)  # a 503 is retried when the server says (advbias.client)
        retries, status = reply.retries, reply.status
        person.handle(reply)
        out.append((arrived, time.monotonic(), retries, status))
    except (ProtocolError, OSError, http.client.HTTPException) as exc:
        errors.append(f"start: {exc}"[:300])
    finally:
        client.close()


def _arrive(url: str, slug: str, burst: int, conn: Any) -> None:
    """The newcomers' own process: ``burst`` threads start at the moment the parent sends.

    Real newcomers are other people's browsers: their client work must not compete for the
    interpreter with the running participants' client (150 threads waking at one instant in
    the same process would delay the running participants' answers before they are sent).
    ``time.monotonic()`` is the system's monotonic clock, the same in both processes.
    """
    newcomers = [SimulatedParticipant(slug, f"new-{i:04d}") for i in range(burst)]
    gate = threading.Barrier(burst + 1)
    starts: list[tuple[float, float, int, int]] = []
    errors: list[str] = []
    arrivals = [threading.Thread(target=_newcomer, args=(url, p, gate, starts, errors), daemon=True)
                for p in newcomers]
    for t in arrivals:
        t.start()
    conn.send("ready")
    burst_at = conn.recv()
    time.sleep(max(0.0, burst_at - time.monotonic()))
    gate.wait()
    for t in arrivals:
        t.join(timeout=120)
    conn.send((starts, errors))


class _Newcomers:
    """The burst's newcomers, in this process (threads) or in a process of their own."""

    def __init__(self, url: str, slug: str, burst: int, own_process: bool) -> None:
        import multiprocessing

        self.own_process = own_process
        if own_process:
            self.conn, child = multiprocessing.Pipe()
            self.process = multiprocessing.get_context("spawn").Process(
                target=_arrive, args=(url, slug, burst, child), daemon=True)
            self.process.start()
            if not self.conn.poll(60) or self.conn.recv() != "ready":
                raise RuntimeError("the newcomers' process did not get ready")
            return
        self.starts: list[tuple[float, float, int, int]] = []
        self.errors: list[str] = []
        self.gate = threading.Barrier(burst + 1)
        self.arrivals = [threading.Thread(target=_newcomer, args=(url, SimulatedParticipant(slug, f"new-{i:04d}"),
                                                                  self.gate, self.starts, self.errors), daemon=True)
                         for i in range(burst)]
        for t in self.arrivals:
            t.start()

    def arrive(self, burst_at: float) -> tuple[list[tuple[float, float, int, int]], list[str]]:
        """Let every newcomer arrive at ``burst_at`` (time.monotonic()); their (arrived, started, retries, status)."""
        if self.own_process:
            self.conn.send(burst_at)
            if not self.conn.poll(150):
                raise RuntimeError("the newcomers did not all finish starting")
            starts, errors = self.conn.recv()
            self.process.join(10)
            return starts, errors
        time.sleep(max(0.0, burst_at - time.monotonic()))
        self.gate.wait()
        for t in self.arrivals:
            t.join(timeout=120)
        return self.starts, self.errors


def run_burst(backend: str, database_url: str, instance: Path, setdir: Path, *, running: int, burst: int,
              workers: int, threads: int, pace_s: float = 1.0, before_s: float = 8.0, after_s: float = 2.0,
              env: dict[str, str] | None = None, newcomers_process: bool = True) -> BurstResult:
    """One burst measurement against a fresh experiment in ``database_url``.

    ``newcomers_process``: the newcomers' client runs in a process of its own (as other people's
    browsers do), so that only the server's work shows in the running participants' latency.
    """
    import os

    from loadtest import prepare_database

    slug = f"burst-{uuid.uuid4().hex[:8]}"
    prepare_database(database_url, instance, setdir, slug, {"completion_code": "BURSTDONE"})
    result = BurstResult(backend, workers, threads, running, burst, pace_s, newcomers_process=newcomers_process)
    # Enough prepared participants per slot to keep answering through the whole measurement.
    per_slot = 2 + int((before_s + after_s + 10) / (12 * pace_s))
    server = ServerProcess(instance, database_url, workers=workers, threads=threads, env=dict(env or {}),
                           log_path=instance / f"server-{slug}.log")
    with server:
        people = [[SimulatedParticipant(slug, f"run-{s:03d}-{k}") for k in range(per_slot)] for s in range(running)]
        _prepare(server.url, [p for slot in people for p in slot])
        stop = threading.Event()
        errors: list[str] = []
        slots = [_Answering(server.url, people[s], pace_s, pace_s * s / running, stop, errors) for s in range(running)]
        newcomers = _Newcomers(server.url, slug, burst, newcomers_process)
        t0 = time.monotonic() + 0.2
        answering = [threading.Thread(target=s.run, args=(t0,), daemon=True) for s in slots]
        for t in answering:
            t.start()
        burst_at = t0 + before_s
        starts, newcomer_errors = newcomers.arrive(burst_at)
        errors.extend(newcomer_errors)
        burst_end = max((end for _, end, _, _ in starts), default=burst_at)
        time.sleep(after_s)
        stop.set()
        for t in answering:
            t.join(timeout=60)
    result.load_average = os.getloadavg()
    samples = [s for slot in slots for s in slot.samples]
    result.before = _summary([lat for due, lat in samples if t0 + 1.0 <= due < burst_at])
    result.during = _summary([lat for due, lat in samples if burst_at <= due <= burst_end])
    result.starts = _summary([end - arrived for arrived, end, _, _ in starts])
    result.burst_seconds = burst_end - burst_at
    result.start_retries = sum(r for _, _, r, _ in starts)
    result.start_statuses = dict(collections.Counter(str(status) for _, _, _, status in starts))
    result.errors = errors
    acks = [a for slot in people for p in slot for a in p.acks]
    result.check = compare(acks, stored_answers(database_url, slug))
    result.lists = _list_fill(database_url, slug)
    return result


def _list_fill(database_url: str, slug: str) -> dict[str, int]:
    """Participants per list after the burst (exact balance: the counts differ by at most one)."""
    from sqlalchemy import func, select

    from experiment.db import Database
    from experiment.models import Experiment, Participant

    db = Database(database_url)
    try:
        with db.session() as s:
            exp_id = s.scalar(select(Experiment.id).where(Experiment.slug == slug))
            rows = s.execute(select(Participant.list_index, func.count()).where(Participant.experiment_id == exp_id)
                             .group_by(Participant.list_index)).all()
    finally:
        db.dispose()
    return {str(k): n for k, n in sorted(rows)}


def report(r: BurstResult) -> str:
    b, d, s = r.before, r.during, r.starts
    return "\n".join([
        f"{r.backend}: gunicorn {r.workers} worker(s) x {r.threads} thread(s); {r.running} participants answering "
        f"once every {r.pace_s:g} s, then {r.burst} starts at one instant "
        f"({'from a client process of their own' if r.newcomers_process else 'from threads of the same client process'})",
        f"  answers before the burst: n={b['n']:.0f} p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, "
        f"max {b['max_ms']:.1f} ms",
        f"  answers during the burst ({r.burst_seconds:.2f} s): n={d['n']:.0f} p50 {d['p50_ms']:.1f} ms, "
        f"p99 {d['p99_ms']:.1f} ms, max {d['max_ms']:.1f} ms  ->  p99 ratio {r.ratio:.2f}",
        f"  starts: n={s['n']:.0f} p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, "
        f"max {s['max_ms']:.0f} ms; asked to retry {r.start_retries} times; statuses {r.start_statuses}",
        f"  lists {r.lists}; check {r.check}; errors {len(r.errors)}; load average {r.load_average[0]:.1f}",
        *[f"  error: {e}" for e in r.errors[:5]],
    ])


def summary(results: list[BurstResult]) -> str:
    """Median [min - max] per configuration over repeated runs (single runs on a shared machine are noisy)."""
    import statistics

    groups: dict[str, list[BurstResult]] = collections.defaultdict(list)
    for r in results:
        groups[r.backend].append(r)

    def span(values: list[float], fmt: str = "{:.0f}") -> str:
        return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))} - {fmt.format(max(values))}]"

    lines = ["summary: median [min - max] over the runs of each configuration"]
    for name, rs in groups.items():
        lines.append(
            f"  {name} ({len(rs)} runs): answer p99 before {span([r.before['p99_ms'] for r in rs], '{:.1f}')} ms, "
            f"during {span([r.during['p99_ms'] for r in rs], '{:.1f}')} ms, ratio {span([r.ratio for r in rs], '{:.2f}')}; "
            f"start p50 {span([r.starts['p50_ms'] for r in rs])} ms, p99 {span([r.starts['p99_ms'] for r in rs])} ms; "
            f"burst {span([r.burst_seconds for r in rs], '{:.2f}')} s; load average "
            f"{span([r.load_average[0] for r in rs], '{:.1f}')}; lost {sum(r.check.get('lost', 0) for r in rs)}"
        )
    return "\n".join(lines)
