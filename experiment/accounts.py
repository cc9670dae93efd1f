"""Admin accounts: passwords, login with back-off, and revocable sessions.

* Only a salted scrypt hash of a password is stored (``advbias admin set-password``).
* Every admin cookie carries the account's ``session_version``; logout and a password
  change raise it, so every copy of an older cookie (another browser, a stolen one)
  stops working at its next request, on every server that shares the database.
* Failed logins are counted per account and per address (:mod:`experiment.throttle`).
  Past a threshold each further failure blocks that account or address for a doubling
  time (capped); while blocked, a login is refused *before* any password is hashed, so
  guessing costs the server almost nothing. At most one password hash runs at a time in
  each server process, so even guessers spread over many addresses and names use at
  most one core per process and never starve participants' requests of CPU.
"""
from __future__ import annotations

import functools
import secrets
import threading
from dataclasses import dataclass

from sqlalchemy import select, update
from werkzeug.security import check_password_hash, generate_password_hash

from experiment import throttle
from experiment.db import Database
from experiment.fields import SLUG_RE
from experiment.models import Admin, utcnow

from advbias.errors import InputError

MIN_PASSWORD_LENGTH = 10
USERNAME = "admin"
#: Failed logins tolerated per account, and per address, within the window before back-off starts.
ACCOUNT_FAILURES = 5
ADDRESS_FAILURES = 20
FAILURE_WINDOW_S = 3600.0
#: The back-off after failure n past the threshold is 2**n seconds, at most this long.
MAX_BLOCK_S = 900.0
#: How long a login waits for this process's one password-hashing slot before it is refused as busy.
HASH_WAIT_S = 2.0

_HASH_SLOT = threading.BoundedSemaphore(1)


@dataclass(frozen=True)
class LoginResult:
    """``version`` is set when the login succeeded; ``retry_after`` (seconds) when it was throttled."""

    version: int | None = None
    retry_after: float = 0.0


def set_password(db: Database, password: str, username: str = USERNAME) -> None:
    """Create or update an admin account; only the hash is stored, and every existing session ends."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if not SLUG_RE.fullmatch(username):
        raise InputError("the user name must be lowercase letters, digits or '-'")
    hashed = generate_password_hash(password)
    with db.write() as s:
        admin = s.scalar(select(Admin).where(Admin.username == username))
        if admin is None:
            s.add(Admin(username=username, password_hash=hashed, updated_at=utcnow(), session_version=0))
        else:
            admin.password_hash = hashed
            admin.updated_at = utcnow()
            admin.session_version = admin.session_version + 1


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def _keys(secret: str, username: str, address: str) -> tuple[str, str]:
    return throttle.throttle_key(secret, "login-user", username), throttle.throttle_key(secret, "login-addr", address)


def _backoff(failures: int, allowed: int) -> float:
    return 0.0 if failures <= allowed else min(MAX_BLOCK_S, 2.0 ** (failures - allowed))


def authenticate(
    db: Database, secret: str, username: str, password: str, address: str, *, clock: throttle.Clock = utcnow
) -> LoginResult:
    """Check a login; a throttled or busy one is refused without hashing (``retry_after`` > 0).

    ``clock`` is the time the back-off is measured in (the wall clock unless a caller says otherwise).
    """
    user_key, addr_key = _keys(secret, username, address)
    wait = throttle.blocked_for(db, [user_key, addr_key], clock=clock)
    if wait > 0:
        return LoginResult(retry_after=wait)
    admin = None
    if SLUG_RE.fullmatch(username):
        with db.session() as s:
            admin = s.scalar(select(Admin).where(Admin.username == username))
    # Hash even for unknown users so the answer time does not reveal which names exist.
    stored = admin.password_hash if admin else _dummy_hash()
    if not _HASH_SLOT.acquire(timeout=HASH_WAIT_S):
        return LoginResult(retry_after=HASH_WAIT_S)
    try:
        ok = check_password_hash(stored, password) and admin is not None
    finally:
        _HASH_SLOT.release()
    if ok:
        assert admin is not None
        throttle.clear(db, user_key)
        throttle.purge(db, clock=clock)
        return LoginResult(version=admin.session_version)
    for key, allowed in ((user_key, ACCOUNT_FAILURES), (addr_key, ADDRESS_FAILURES)):
        pause = _backoff(throttle.hit(db, key, FAILURE_WINDOW_S, clock=clock), allowed)
        if pause > 0:
            throttle.block(db, key, pause, clock=clock)
    return LoginResult()


def session_is_current(db: Database, username: str, version: object) -> bool:
    """True if a cookie issued to ``username`` under ``version`` is still valid."""
    if not isinstance(username, str) or not isinstance(version, int):
        return False
    with db.session() as s:
        current = s.scalar(select(Admin.session_version).where(Admin.username == username))
    return current is not None and current == version


def end_sessions(db: Database, username: str) -> None:
    """Revoke every cookie of ``username`` (logout ends all copies, in every browser)."""
    with db.write() as s:
        s.execute(update(Admin).where(Admin.username == username).values(session_version=Admin.session_version + 1))
