"""Slow clients against a served study: ``python tests/bench_slow_clients.py [--hold 30] [--worker gthread]``.

Holds 8 slow-header connections (one header line every 3 s) and 2 slow-body starts (one byte every
2 s of a declared 200) for ``--hold`` seconds against ``advbias serve --workers 2 --threads 4`` on
SQLite, directly (``--via direct``) or behind the shipped nginx or Caddy config with TLS (``--via
nginx|caddy``), and prints the share of other participants' answers, health checks and newcomers'
starts answered within 2 s. ``--worker gthread`` serves with gunicorn's plain threaded worker instead
of advbias's (the comparison in docs/benchmarks.md). Not part of the product.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxies import PROXIES, running_proxy  # noqa: E402
from servers import ServerProcess  # noqa: E402
from slow_clients import Target, probe  # noqa: E402


class PlainGthreadServer(ServerProcess):
    """``advbias serve`` with gunicorn's own gthread worker (the baseline)."""

    def command(self) -> list[str]:
        argv = super().command()[3:]
        code = ("import sys, experiment.commands as c; c.WORKER_CLASS = 'gthread'; "
                "from advbias.cli import main; sys.exit(main(sys.argv[1:]))")
        return [self.python, "-c", code, *argv]


def study(workdir: Path, stimulus_set: Path) -> tuple[str, str]:
    """An upgraded SQLite database with one experiment: (database URL, slug)."""
    from experiment.db import Database, upgrade
    from experiment.study import create_experiment

    url = f"sqlite:///{workdir / 'advbias.db'}"
    db = Database(url)
    upgrade(db.engine)
    create_experiment(db, "slow", stimulus_set, {"completion_code": "SLOW-DONE"}, workdir / "instance" / "stimuli")
    db.dispose()
    return url, "slow"


def run(hold: float, via: str, worker: str, stimulus_set: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="advbias-slow-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        url, slug = study(work, stimulus_set)
        cls = PlainGthreadServer if worker == "gthread" else ServerProcess
        env = {"ADVBIAS_TRUSTED_PROXIES": "1"} if via != "direct" else {}
        server = stack.enter_context(cls(work / "instance", url, workers=2, threads=4, env=env))
        target = Target(server.port)
        if via != "direct":
            target = Target(stack.enter_context(running_proxy(via, server.port, work / via)), tls=True)
        tally = probe(target, slug, hold_s=hold)
    return {"via": via, "worker": worker, "hold_s": hold, "answered": tally.summary(),
            "shares": {k: round(tally.share(k), 3) for k in ("answer", "health", "start")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--via", choices=["direct", *PROXIES], action="append")
    parser.add_argument("--worker", choices=["advbias", "gthread"], default="advbias")
    parser.add_argument("--set", type=Path, required=True, help="a stimulus set folder")
    args = parser.parse_args()
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for via in args.via or ["direct", *PROXIES]:
        print(json.dumps(run(args.hold, via, args.worker, args.set)), flush=True)


if __name__ == "__main__":
    main()
