"""Test scaffolding, the one place for it: free ports, a real gunicorn server in a subprocess,
private PostgreSQL servers and scratch databases, and a check of what the database holds
against what the server acknowledged.

Used by the fixtures in ``conftest.py`` (so by every test that needs a server or a database)
and by the benchmarks (``tests/loadtest.py``, ``tests/burst.py``, ``tests/bench_*.py``).
Not part of the product.
"""

import collections
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from advbias.client import Ack


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
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.instance = Path(instance)
        self.python = python
        self.cwd = cwd
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
            self.python, "-m", "advbias", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--threads", str(self.threads),
            "--instance", str(self.instance), "--database-url", self.database_url,
        ]

    def start(self, timeout: float = 90.0) -> "ServerProcess":
        """Start the server and wait until ``/api/v1/health`` answers; raises :class:`ServerError`."""
        if self.process is not None and self.process.poll() is None:
            raise ServerError("the server is already running")
        # Every simulated participant comes from 127.0.0.1: no per-address start limit unless a test sets one.
        env = {**os.environ, "ADVBIAS_SECURE_COOKIES": "0", "PYTHONUNBUFFERED": "1", "ADVBIAS_START_LIMIT": "0",
               **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, cwd=self.cwd,
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


# =========================================================================== PostgreSQL

def postgres_kwargs(url: str) -> dict[str, Any]:
    """psycopg connection arguments for the server (and database) of a PostgreSQL URL."""
    from sqlalchemy.engine import make_url

    from experiment.db import normalize_url

    parsed = make_url(normalize_url(url))
    kwargs: dict[str, Any] = {"host": parsed.host or "127.0.0.1", "port": parsed.port or 5432,
                              "user": parsed.username or "postgres", "dbname": parsed.database or "postgres"}
    if parsed.password:
        kwargs["password"] = parsed.password
    return kwargs


def postgres_answers(url: str) -> bool:
    """True if a PostgreSQL server at ``url`` accepts a connection (within 3 s)."""
    import psycopg

    try:
        with psycopg.connect(connect_timeout=3, **postgres_kwargs(url)):
            return True
    except psycopg.Error:
        return False


def scratch_postgres(admin_url: str, prefix: str = "advbias_scratch") -> tuple[str, Any]:
    """Create a uniquely named database on the server of ``admin_url``; returns (its URL, a drop function).

    Only databases made here are ever dropped (``DROP ... WITH (FORCE)`` ends their connections).
    """
    import psycopg
    from sqlalchemy.engine import make_url

    from experiment.db import normalize_url

    kwargs = postgres_kwargs(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(autocommit=True, connect_timeout=5, **kwargs) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(autocommit=True, **kwargs) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return make_url(normalize_url(admin_url)).set(database=name).render_as_string(hide_password=False), drop


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str = "advbias_scratch") -> Iterator[str]:
    """:func:`scratch_postgres` as a context manager: the database is dropped on the way out."""
    url, drop = scratch_postgres(admin_url, prefix)
    try:
        yield url
    finally:
        drop()


class PrivatePostgres:
    """A throwaway PostgreSQL server (initdb + pg_ctl) on a free loopback port, for machines without one.

    Run as the ``postgres`` user when started as root (PostgreSQL refuses to run as root).
    ``fsync=False`` suits the test suite (nothing outlives it); the load benchmark keeps it on,
    so that it pays for durable commits as a real deployment does.
    """

    def __init__(self, *, fsync: bool = True, max_connections: int = 200) -> None:
        from glob import glob

        found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                               "run tests/provision.sh")
        self.bindir = Path(found[-1]).parent
        self.fsync = fsync
        self.max_connections = max_connections
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.workdir = Path(tempfile.mkdtemp(prefix="advbias-pg-"))
        self.port = free_port()

    @property
    def server(self) -> str:
        """``host:port``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.server}/postgres"

    def start(self) -> "PrivatePostgres":
        if self.prefix:
            shutil.chown(self.workdir, "postgres", "postgres")
        data = self.workdir / "data"
        subprocess.run([*self.prefix, str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        options = f"-p {self.port} -h 127.0.0.1 -k {self.workdir} -c max_connections={self.max_connections}"
        if not self.fsync:
            options += " -c fsync=off"
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options,
                        "-l", str(self.workdir / "log"), "-w", "start"], check=True, capture_output=True)
        return self

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.workdir / "data"), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "PrivatePostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of any list."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(round(q / 100 * len(ordered) + 0.5 - 1e-9)))
    return ordered[min(rank, len(ordered)) - 1]
