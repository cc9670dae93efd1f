"""Counters shared by every server process and machine: login back-off and start limits.

The counts live in the database (table ``throttle``) rather than in a process's memory,
because gunicorn runs several workers and a study may run several servers on one
PostgreSQL: an attacker whose requests are spread over them must meet one count.
Keys are keyed hashes (HMAC-SHA256 with the app's secret) of a scope and a value, so
the table never holds an IP address or a user name.

Each counter is a fixed window: the first hit opens a window of ``window_s`` seconds;
hits inside it add up; the first hit after it starts again from one. One upsert per hit
(``INSERT ... ON CONFLICT DO UPDATE``) keeps it to a single statement on both SQLite
and PostgreSQL.

Every function takes the current time from ``clock`` (default: the wall clock), so that a
caller, or a test, can let windows and blocks pass without waiting for them.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import case, delete, select, update

from experiment.db import Database
from experiment.models import Throttle, utcnow

#: Where the time comes from: a callable returning a timezone-aware UTC datetime.
Clock = Callable[[], datetime]


def throttle_key(secret: str, scope: str, value: str) -> str:
    """The table key for ``value`` in ``scope`` (64 hex characters; not reversible without the secret)."""
    return hmac.new(secret.encode(), f"{scope}\0{value}".encode(), hashlib.sha256).hexdigest()


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:  # SQLite hands back naive UTC
        return moment.replace(tzinfo=timezone.utc)
    return moment


def _insert(db: Database):  # type: ignore[no-untyped-def]
    if db.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(Throttle)


def hit(db: Database, key: str, window_s: float, *, clock: Clock = utcnow) -> int:
    """Count one event for ``key``; returns the count in the current window (this event included)."""
    now = clock()
    ends = now + timedelta(seconds=window_s)
    table = Throttle.__table__
    stmt = _insert(db).values(key=key, count=1, window_ends=ends, blocked_until=None)
    expired = table.c.window_ends <= now
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={
            "count": case((expired, 1), else_=table.c.count + 1),
            "window_ends": case((expired, ends), else_=table.c.window_ends),
        },
    ).returning(table.c.count)
    with db.write_connection() as conn:
        return int(conn.execute(stmt).scalar_one())


def blocked_for(db: Database, keys: list[str], *, clock: Clock = utcnow) -> float:
    """Seconds until every one of ``keys`` is unblocked (0 when none is blocked)."""
    now = clock()
    with db.session() as s:
        until = [_aware(u) for u in s.scalars(select(Throttle.blocked_until).where(Throttle.key.in_(keys)))]
    later = [u for u in until if u is not None and u > now]
    return max((u - now).total_seconds() for u in later) if later else 0.0


def block(db: Database, key: str, seconds: float, *, clock: Clock = utcnow) -> None:
    """Refuse ``key`` for the next ``seconds`` (kept at least as long as the block)."""
    until = clock() + timedelta(seconds=seconds)
    with db.write() as s:
        s.execute(
            update(Throttle).where(Throttle.key == key).values(
                blocked_until=until, window_ends=case((Throttle.window_ends < until, until), else_=Throttle.window_ends)
            )
        )


def clear(db: Database, key: str) -> None:
    """Forget ``key`` (after a successful login)."""
    with db.write() as s:
        s.execute(delete(Throttle).where(Throttle.key == key))


def purge(db: Database, *, clock: Clock = utcnow) -> int:
    """Delete counters whose window and block have both passed; returns how many."""
    now = clock()
    with db.write() as s:
        gone = s.execute(
            delete(Throttle).where(
                Throttle.window_ends <= now, (Throttle.blocked_until.is_(None)) | (Throttle.blocked_until <= now)
            )
        ).rowcount
    return int(gone or 0)
