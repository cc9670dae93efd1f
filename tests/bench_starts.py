"""Benchmark: what one participant start costs, one after another (``docs/benchmarks.md``, a burst of starts).

Each measurement is a fresh process that creates an experiment (SQLite file with the default
``synchronous=FULL``, or a scratch PostgreSQL database) and posts ``--starts`` starts, one at a
time, through the app's WSGI test client (no HTTP server, no other load). It prints the first
start of the process (cold: connections, caches) and the mean wall time and CPU time of the
others (warm; the CPU is the client's and the server's together, one process). ``--code DIR``
(repeatable) runs the app from each folder's copy of the packages, interleaved over
``--repeat`` rounds, for a before/after comparison in one run. A burst (many at once, with
participants answering) is measured by ``tests/loadtest.py --burst``.

    .venv/bin/python tests/bench_starts.py [--backends sqlite,postgresql] [--code DIR ...] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def measure(backend: str, starts: int, postgres_url: str, setdir: Path) -> dict[str, float]:
    """One process's measurement (run in a child process: ``--child``)."""
    from loadtest import prepare_database
    from servers import scratch_postgres

    from experiment import create_app

    instance = Path(tempfile.mkdtemp(prefix="bench-starts-"))
    url, drop = (f"sqlite:///{instance / 'advbias.db'}", None) if backend == "sqlite" else scratch_postgres(postgres_url)
    try:
        prepare_database(url, instance, setdir, "starts", {"completion_code": "BENCH"})
        app = create_app({"DATABASE_URL": url, "INSTANCE_PATH": str(instance), "SECRET_KEY": "bench-" + "x" * 32,
                          "START_LIMIT": "0", "TESTING": True})
        client = app.test_client()
        path = "/api/v1/experiments/starts/participants"
        began = time.perf_counter()
        assert client.post(path, json={"prolific_pid": "first"}).status_code == 201
        cold_ms = 1000 * (time.perf_counter() - began)
        cpu, began = time.process_time(), time.perf_counter()
        for i in range(starts):
            assert client.post(path, json={"prolific_pid": f"p{i}"}).status_code == 201
        wall_ms = 1000 * (time.perf_counter() - began) / starts
        cpu_ms = 1000 * (time.process_time() - cpu) / starts
        app.extensions["advbias"].db.dispose()
        return {"cold_ms": cold_ms, "warm_ms": wall_ms, "cpu_ms": cpu_ms}
    finally:
        if drop is not None:
            drop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/bench_starts.py", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--starts", type=int, default=200, help="warm starts per measurement (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--code", type=Path, action="append", metavar="DIR",
                        help="repeatable: a folder with a copy of the packages to run (default: this tree's)")
    parser.add_argument("--postgres-url", default=os.environ.get("ADVBIAS_LOADTEST_POSTGRES",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--set", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.starts, args.postgres_url, args.set)))
        return 0
    from loadtest import ensure_stimulus_set

    setdir = ensure_stimulus_set(None, Path("bench-results/loadtest-set")).resolve()
    codes: list[Path | None] = [c.resolve() for c in args.code] if args.code else [None]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for round_ in range(1, args.repeat + 1):
        for code in codes:
            for backend in backends:
                env = {**os.environ, "GIT_PYTHON_REFRESH": "quiet"}
                if code is not None:
                    env["PYTHONPATH"] = str(code)
                out = subprocess.run(
                    [sys.executable, __file__, "--child", backend, "--starts", str(args.starts), "--set", str(setdir),
                     "--postgres-url", args.postgres_url], env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {round_}, {backend}, code {code.name if code else 'this tree'}: first start "
                      f"{r['cold_ms']:.1f} ms; then {r['warm_ms']:.2f} ms per start, {r['cpu_ms']:.2f} ms CPU; "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
