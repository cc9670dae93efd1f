"""Database engines, sessions and the schema version check.

SQLite is the default (a file in the instance folder) and is tuned for several
server processes writing at once: WAL journal, ``synchronous=FULL`` so that an
acknowledged commit survives a crash, a busy timeout instead of immediate
"database is locked" errors, and ``BEGIN IMMEDIATE`` for write transactions so
that two writers never deadlock on a read-to-write lock upgrade. PostgreSQL is
used when the URL says so (``postgresql://`` is mapped to the psycopg 3 driver).

The schema belongs to the Alembic migrations shipped in ``experiment/migrations``;
:func:`check_schema` refuses to run on a database that is not at their head.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from advbias.errors import InputError
from experiment.settings import SYNCHRONOUS_MODES

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class SchemaError(RuntimeError):
    """The database schema does not match this version of advbias."""


def normalize_url(url: str) -> str:
    """Accept the usual spellings of a PostgreSQL URL and pick the installed driver (psycopg 3)."""
    url = url.strip()
    if not url:
        raise InputError("the database URL is empty")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise InputError(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InputError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://")
    return url


def sqlite_synchronous(value: str | None = None) -> str:
    """The SQLite ``synchronous`` mode: ``value`` (the setting ``SQLITE_SYNCHRONOUS``) or FULL.

    FULL (the default) flushes every commit to disk before the server confirms an
    answer: nothing acknowledged is lost even on power failure. NORMAL skips that
    flush (in WAL mode a killed or crashed server still loses nothing; an operating
    system crash or power cut may lose the last commits) and is many times faster on
    disks with slow flushes.
    """
    mode = (value or "FULL").strip().upper()
    if mode not in SYNCHRONOUS_MODES:
        raise InputError(f"SQLite synchronous mode {mode!r}: choose {', '.join(SYNCHRONOUS_MODES)}")
    return mode


def make_engine(url: str, synchronous: str | None = None) -> Engine:
    """Create an engine with the settings that make concurrent, durable writes safe."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise InputError("advbias needs a SQLite file, not an in-memory database")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine, sqlite_synchronous(synchronous))
        return engine
    engine = create_engine(url, pool_size=5, max_overflow=10)
    _ping_when_idle(engine)
    return engine


#: A pooled PostgreSQL connection that sat unused for longer than this (seconds) is pinged before use.
PG_IDLE_PING_S = 10.0


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use, but only if it sat idle.

    ``pool_pre_ping`` pings before every checkout: one more round trip per request, about a
    quarter of the CPU of storing an answer. A connection returned a moment ago is alive
    unless the server restarted in between; one that sat idle may have been dropped (server
    restart, firewall). A connection that fails the ping is replaced (SQLAlchemy retries the
    checkout with a new one). After a server restart under load, the request that first meets
    a dead connection fails once (the browser retries it) and SQLAlchemy then replaces every
    older connection of the pool.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        record.info["advbias_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        since = record.info.get("advbias_idle_since")
        if since is None or time.monotonic() - since < PG_IDLE_PING_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the driver's error for a dead connection
            raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc
        if alive is False:
            raise DisconnectionError("idle connection failed its ping")


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy (below) issue BEGIN itself instead of the sqlite3 module's own logic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get("advbias_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class WriterLock:
    """Queues SQLite writers of all threads and processes on one file lock.

    SQLite lets one writer in at a time; the others wait in its busy handler, which
    polls with growing sleeps (up to 100 ms) and so turns contention into long
    latency tails. A blocking ``flock`` wakes the next writer the moment the lock is
    free. The thread lock comes first because ``flock`` does not exclude threads
    that share one file descriptor.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            try:
                import fcntl
            except ImportError:  # no flock on this platform: SQLite's own locking still applies
                yield
                return
            if self._pid != os.getpid():  # opened per process (gunicorn forks workers)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


class Database:
    """An engine plus the two session factories the app uses (read and write)."""

    def __init__(self, url: str, sqlite_synchronous: str | None = None) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, sqlite_synchronous)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.write_engine = self.engine.execution_options(advbias_write=True)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        self._writer_lock = WriterLock(Path(f"{self.engine.url.database}.writelock")) if self.is_sqlite else None

    def session(self) -> Session:
        """A session for reading (and for writes that cannot conflict)."""
        return self._read()

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[None]:
        if self._writer_lock is None:
            yield
        else:
            with self._writer_lock.hold():
                yield

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._serialised():
            session = self._write()
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    @contextlib.contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core-level write transaction (for the hot path of storing an answer)."""
        with self._serialised():
            with self.write_engine.begin() as conn:
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


# --------------------------------------------------------------------------- migrations

def _alembic_config(connection=None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``revision``; returns (before, after)."""
    from alembic import command

    before = current_revision(engine)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)
    return before, current_revision(engine) or ""


def downgrade(engine: Engine, revision: str) -> None:
    """Go back to an older schema (used to test the out-of-date refusal)."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), revision)


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaError` unless the database is exactly at the head migration."""
    head = head_revision()
    try:
        current = current_revision(engine)
    except Exception as exc:  # cannot even connect: say so plainly
        raise SchemaError(f"cannot read the database: {str(exc).splitlines()[0]}") from exc
    if current == head:
        return
    if current is None:
        tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
        what = "has no advbias schema" if not tables else "has tables but no advbias schema version"
        raise SchemaError(f"the database {what}: run `advbias db upgrade`")
    from alembic.script import ScriptDirectory

    known = {rev.revision for rev in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"the database schema ({current}) is newer than this version of advbias (head {head}): upgrade advbias"
        )
    raise SchemaError(f"the database schema is out of date ({current}, needs {head}): run `advbias db upgrade`")
