"""PostgreSQL connection handling: a dropped connection is replaced, not handed to a request.

The pool pings a connection before use only when it sat idle (``experiment.db.PG_IDLE_PING_S``),
instead of before every request. These tests drop the server side of a pooled connection
(``pg_terminate_backend``, what a server restart does) and check both cases against a real
server: an idle connection is replaced silently; a connection used a moment ago fails once,
after which the pool hands out fresh connections.
"""
from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import experiment.db as edb

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(postgres_server: str) -> Iterator[tuple[Any, Any]]:
    """A Database on a scratch PostgreSQL database, and a separate admin connection to that server."""
    import psycopg

    host, port = postgres_server.split(":")
    name = f"advbias_pool_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(host=host, port=int(port), user="postgres", dbname="postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    db = edb.Database(f"postgresql://postgres@{postgres_server}/{name}")
    try:
        yield db, admin
    finally:
        db.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _backend_pid(db: Any) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar())


def _terminate(admin: Any, pid: int) -> None:
    assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True


def test_an_idle_dropped_connection_is_replaced(pg: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    db, admin = pg
    first = _backend_pid(db)
    _terminate(admin, first)
    monkeypatch.setattr(edb, "PG_IDLE_PING_S", 0.0)  # the pooled connection counts as idle: it is pinged
    second = _backend_pid(db)  # no error: the dead connection failed its ping and was replaced
    assert second != first
    assert _backend_pid(db) == second  # the new connection is pooled and reused


def test_a_busy_dropped_connection_fails_once(pg: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    db, admin = pg
    first = _backend_pid(db)
    _terminate(admin, first)
    monkeypatch.setattr(edb, "PG_IDLE_PING_S", 3600.0)  # used a moment ago: not pinged
    with pytest.raises(OperationalError):
        _backend_pid(db)
    second = _backend_pid(db)  # the pool dropped the dead connection
    assert second != first
