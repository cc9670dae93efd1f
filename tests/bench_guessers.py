"""Benchmark: do password guessers slow participants down? (``docs/benchmarks.md``)

Runs a real server (``advbias serve --workers 2 --threads 4``, SQLite by default) and
paced participants (``--rate`` answers per second in total, latency counted from each
answer's due time), twice in one run: alone, and with ``--guessers`` threads posting
wrong admin passwords as fast as the server answers them, for the whole run. Prints the
answer latency percentiles of both phases side by side, and what the guessers got
(``401`` = a password was checked, ``429`` = refused by the back-off without hashing).

    .venv/bin/python tests/bench_guessers.py [--participants 40] [--rate 40] [--guessers 8]
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import secrets
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests  # noqa: E402

from advbias.client import Participant  # noqa: E402
from loadtest import drive, ensure_stimulus_set, prepare_database  # noqa: E402
from servers import ServerProcess, percentile  # noqa: E402


def guess(url: str, stop: threading.Event, tally: collections.Counter, lock: threading.Lock) -> None:
    """Post wrong passwords (each with a fresh CSRF token, as a browser would) until ``stop``."""
    http = requests.Session()
    while not stop.is_set():
        try:
            form = http.get(f"{url}/admin/login", timeout=30).text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            reply = http.post(f"{url}/admin/login", allow_redirects=False, timeout=30,
                              data={"username": "admin", "password": secrets.token_hex(6), "csrf_token": token})
            status = reply.status_code
        except (requests.RequestException, AttributeError):
            status = 0
        with lock:
            tally[status] += 1


def phase(url: str, slug: str, participants: int, rate: float, guessers: int) -> dict[str, Any]:
    people = [Participant(slug, f"{slug}-{guessers}-{i:04d}", session_id=f"S{i}") for i in range(participants)]
    stop, lock, tally = threading.Event(), threading.Lock(), collections.Counter()
    threads = [threading.Thread(target=guess, args=(url, stop, tally, lock), daemon=True) for _ in range(guessers)]
    for t in threads:
        t.start()
    started = time.monotonic()
    latencies, _spans, errors, _retries = drive(people, url, concurrency=16, rate=rate)
    seconds = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(timeout=60)
    answers = sorted(latencies.get("respond", []))
    return {
        "guessers": guessers, "answers": len(answers), "seconds": round(seconds, 1), "errors": len(errors),
        **{f"p{q}_ms": round(1000 * percentile(answers, q), 1) for q in (50, 95, 99)},
        "max_ms": round(1000 * answers[-1], 1) if answers else None,
        "guesses": dict(sorted(tally.items())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=40)
    parser.add_argument("--rate", type=float, default=40.0, help="answers per second, all participants together")
    parser.add_argument("--guessers", type=int, default=8)
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="advbias-bench-guessers-"))
    setdir = ensure_stimulus_set(None, Path(tempfile.gettempdir()) / "advbias-loadtest-set")
    url = args.database_url or f"sqlite:///{work / 'bench.db'}"
    slug = f"guess-{uuid.uuid4().hex[:6]}"
    prepare_database(url, work, setdir, slug, {"completion_code": "BENCH"})
    from experiment.accounts import set_password
    from experiment.db import Database

    db = Database(url)
    set_password(db, secrets.token_urlsafe(16))
    db.dispose()
    results = []
    with ServerProcess(work, url, workers=2, threads=4) as server:
        for guessers in (0, args.guessers):
            results.append(phase(server.url, slug, args.participants, args.rate, guessers))
    print(f"{'guessers':>8} {'answers':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}  guesses by status")
    for r in results:
        print(f"{r['guessers']:>8} {r['answers']:>7} {r['p50_ms']:>7} {r['p95_ms']:>7} {r['p99_ms']:>7} "
              f"{r['max_ms']:>7}  {r['guesses']}")
    if args.json:
        args.json.write_text(json.dumps({"participants": args.participants, "rate": args.rate, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
