"""The web-server load benchmark (``make loadtest``): N simulated participants take the whole study
over HTTP against gunicorn with several workers, on SQLite and on PostgreSQL.

It reports answers stored per second, the p50/p95/p99 latency of the answer POST, the server's
CPU time per answer, and checks the database afterwards: every acknowledged answer must be
stored exactly once (``lost`` and ``duplicated`` must be zero). Results are printed and written
as JSON. Participants take part through :mod:`advbias.client`, as ``advbias simulate`` does.
Run as ``python tests/loadtest.py``.
"""

import argparse
from contextlib import contextmanager
import collections
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence


from advbias.client import HttpClient, Participant as SimulatedParticipant, ProtocolError
from servers import (PrivatePostgres, ServerProcess, compare, percentile, scratch_postgres, stored_answers)

#: The small stimulus set the benchmark builds when none is given (same as the test suite's).
SET_PARAMS: dict[str, Any] = dict(
    images="builtin", pairs=[("cat", "truck")], eps=[2, 16], steps=1, models=["lite0"],
    controls=("flip", "noise"), limit=8, seed=0,
)

#: Server settings for benchmarks: every simulated participant comes from 127.0.0.1, so limits per
#: address (which protect a real study from floods) must be off here.
BENCHMARK_ENV: dict[str, str] = {"ADVBIAS_START_LIMIT": "0"}

# =========================================================================== the benchmark

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
                latency = t1 - (t0 if due is None else min(due, t0))  # retries included
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
    env.update(BENCHMARK_ENV)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tests/loadtest.py",
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
    parser.add_argument("--burst", type=int, default=0, metavar="N",
                        help="instead of the load runs: N participants start at one instant while --running "
                        "participants answer once a second (tests/burst.py)")
    parser.add_argument("--running", type=int, default=30,
                        help="with --burst: participants already answering (default 30)")
    parser.add_argument("--concurrent-starts", default="1",
                        help="with --burst: comma-separated ADVBIAS_CONCURRENT_STARTS values to compare, e.g. 1,64 "
                        "(64: no effective limit) (default 1)")
    parser.add_argument("--code", type=Path, action="append", metavar="DIR",
                        help="with --burst, repeatable: run every configuration, interleaved, with the server's "
                        "packages taken from each DIR (e.g. a `git archive <commit> advbias experiment templates "
                        "static` of the code before a change and one after it), labelled by the folder's name: "
                        "before/after in one run (default: this tree's code only)")
    parser.add_argument("--newcomers", default="process",
                        help="with --burst, comma-separated: `process` (the newcomers' client in a process of its own, "
                        "as other people's browsers are) and/or `threads` (threads of the running participants' client "
                        "process, whose work then delays their answers too) (default process)")
    parser.add_argument("--keep", action="store_true", help="keep each run's instance folder (database, server log)")
    return parser


@contextmanager
def _scratch(databases: Any, backend: str, args: argparse.Namespace, prefix: str) -> Iterator[tuple[Path, str | None]]:
    """A fresh instance folder and database for one run (url None: that back end is not available here);
    both are removed afterwards unless --keep."""
    instance = Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    url, drop = databases.get(backend, instance)
    try:
        yield instance.resolve(), url
    finally:
        if drop is not None:
            drop()
        if not args.keep or url is None:
            shutil.rmtree(instance, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
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
    runs: list[tuple[str, str | None]] = []
    for backend in backends:
        if backend == "sqlite":
            runs.extend(("sqlite", m.strip().upper()) for m in args.sqlite_synchronous.split(",") if m.strip())
        else:
            runs.append(("postgresql", None))
    if args.burst:
        return _main_burst(args, runs, setdir)
    results: list[LoadResult] = []
    plan = [(run, rate) for _ in range(args.repeat) for run in runs for rate in rates]
    databases = _Databases(args.postgres_url, args.no_private_postgres)
    try:
        for (backend, sync), rate in plan:
            with _scratch(databases, backend, args, f"{backend}-") as (instance, url):
                if url is None:
                    continue
                result = run_load(backend, url, instance, setdir.resolve(), participants=args.participants,
                                  concurrency=args.concurrency, workers=args.workers, threads=args.threads,
                                  sqlite_synchronous=sync, rate=rate)
            results.append(result)
            print(_report(result), flush=True)
    finally:
        databases.close()
    if args.repeat > 1:
        print(_summary(results))
    out = args.workdir / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    print(f"results written to {out}")
    bad = [r for r in results if r.check.get("lost") or r.check.get("duplicated") or r.errors]
    return 1 if bad else 0


class _Databases:
    """A database per run: a SQLite file in the run's folder, or a scratch PostgreSQL database.

    PostgreSQL comes from ``--postgres-url``; when that server is missing or refuses, a private
    server is started once for the whole benchmark (and stopped by :meth:`close`).
    """

    def __init__(self, postgres_url: str, no_private: bool) -> None:
        self.postgres_url = postgres_url
        self.no_private = no_private
        self.private: PrivatePostgres | None = None

    def get(self, backend: str, instance: Path) -> tuple[str | None, Any]:
        """(url, drop function or None); url None when PostgreSQL is unavailable (the reason is printed)."""
        if backend == "sqlite":
            return f"sqlite:///{(instance / 'advbias.db').resolve()}", None
        try:
            return scratch_postgres(self.private.url if self.private else self.postgres_url)
        except Exception as exc:  # psycopg.Error and friends: no usable server there
            if self.private is not None or self.no_private:
                print(f"postgresql: skipped, cannot create a scratch database: {str(exc).splitlines()[0]}")
                return None, None
            print(f"no usable PostgreSQL at {self.postgres_url} ({str(exc).splitlines()[0]}); "
                  "starting a private server for the benchmark", flush=True)
        try:
            self.private = PrivatePostgres()
            self.private.start()
            return scratch_postgres(self.private.url)
        except Exception as exc2:  # not installed, initdb failed, ...: go on with the other backends
            print(f"postgresql: skipped, cannot start a private server: {str(exc2).splitlines()[0]}")
            self.close()
            return None, None

    def close(self) -> None:
        if self.private is not None:
            self.private.stop()
            self.private = None


def _main_burst(args: argparse.Namespace, runs: list[tuple[str, str | None]], setdir: Path) -> int:
    """``--burst N``: N starts at one instant while ``--running`` participants answer (tests/burst.py)."""
    from burst import report, run_burst, summary

    results = []
    databases = _Databases(args.postgres_url, args.no_private_postgres)
    try:
        gates = [int(g) for g in args.concurrent_starts.split(",") if g.strip()]
        codes: list[Path | None] = [c.resolve() for c in args.code] if args.code else [None]
        ways = [w.strip() for w in args.newcomers.split(",") if w.strip()]
        if not ways or not set(ways) <= {"process", "threads"}:
            raise SystemExit("--newcomers takes process and/or threads")
        plan = [(run, g, c, w) for run in runs for g in gates for c in codes for w in ways]
        for _ in range(args.repeat):
            for (backend, sync), gate, code, way in plan:
                env = {"ADVBIAS_SQLITE_SYNCHRONOUS": sync} if sync else {}
                env.update(BENCHMARK_ENV)
                env["ADVBIAS_CONCURRENT_STARTS"] = str(gate)
                label = f"{backend}{' ' + sync if sync else ''}, {gate} start(s) at once"
                if code is not None:  # that folder's packages come first on the server's path
                    env["PYTHONPATH"] = str(code)
                    label += f", code {code.name}"
                if len(ways) > 1:
                    label += f", newcomers' client: {way}"
                with _scratch(databases, backend, args, f"burst-{backend}-") as (instance, url):
                    if url is None:
                        continue
                    result = run_burst(label, url, instance,
                                       setdir.resolve(), running=args.running, burst=args.burst,
                                       workers=args.workers, threads=args.threads, env=env,
                                       newcomers_process=way == "process")
                results.append(result)
                print(report(result), flush=True)
    finally:
        databases.close()
    if args.repeat > 1:
        print(summary(results))
    out = args.workdir / f"burst-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps([{**r.__dict__, "ratio": r.ratio} for r in results], indent=2))
    print(f"results written to {out}")
    bad = [r for r in results if r.check.get("lost") or r.check.get("duplicated") or r.errors]
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
