"""The experiment's settings, resolved once: explicit options, then ``ADVBIAS_*`` variables, then defaults.

:meth:`Settings.resolve` is the only place that reads the experiment's environment
variables. The commands build one :class:`Settings` from their options (``--instance``,
``--database-url``) and hand it down: to the database, to :func:`experiment.create_app`,
and, for ``advbias serve --workers N``, to every gunicorn worker (the master resolves it
before forking; the workers receive the object, not the environment). Nothing writes the
environment, so one command run in-process never changes the settings of the next.

==============================  ==================  ==============================================
variable                        option key          meaning
==============================  ==================  ==============================================
``ADVBIAS_INSTANCE_PATH``       ``INSTANCE_PATH``   folder for the database, images, secret key;
                                                    default ``./instance``
``ADVBIAS_DATABASE_URL``        ``DATABASE_URL``    default ``sqlite:///INSTANCE/advbias.db``;
                                                    ``postgresql://user@host/db`` for PostgreSQL
``ADVBIAS_SECRET_KEY``          ``SECRET_KEY``      signs admin sessions; default: a random key
                                                    kept in ``INSTANCE/secret_key``
``ADVBIAS_SECURE_COOKIES``      ``SECURE_COOKIES``  ``1`` (default): the admin cookie is sent over
                                                    HTTPS only; ``0`` for plain-HTTP local use
                                                    (``advbias serve`` on a loopback address
                                                    defaults to ``0``)
``ADVBIAS_SQLITE_SYNCHRONOUS``  ``SQLITE_SYNCHRONOUS``  ``FULL`` (default), ``NORMAL`` or ``EXTRA``: see
                                                    :func:`experiment.db.sqlite_synchronous`
``ADVBIAS_CONCURRENT_STARTS``   ``CONCURRENT_STARTS``  starts one process runs at once (default 1,
                                                    at most 64): see :mod:`experiment.admission`
``ADVBIAS_START_LIMIT``         ``START_LIMIT``     new participants per client address:
                                                    ``N/SECONDS`` (default ``30/600``); ``0``: none
``ADVBIAS_TRUSTED_PROXIES``     ``TRUSTED_PROXIES``  reverse proxies in front of the app whose
                                                    ``X-Forwarded-For/-Proto/-Host`` are believed
                                                    (default ``0``: none; ``1`` behind one Caddy)
``ADVBIAS_PUBLIC_URL``          ``PUBLIC_URL``      the server's public address, for the URLs the
                                                    commands print (default
                                                    ``http://127.0.0.1:5000``)
==============================  ==================  ==============================================

A bad value is an :class:`~advbias.errors.InputError` that names the variable (or option)
it came from, raised when the settings are resolved: a server never starts with one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from advbias.errors import InputError

#: New participants per client address: enough for a lab or a household behind one address,
#: far too few to fill a study's lists with invented PROLIFIC_PIDs.
DEFAULT_START_LIMIT = "30/600"
#: The SQLite ``synchronous`` modes advbias accepts (:func:`experiment.db.sqlite_synchronous`).
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
DEFAULT_PUBLIC_URL = "http://127.0.0.1:5000"

#: The option keys (``ADVBIAS_<KEY>`` in the environment) and their defaults.
DEFAULTS: dict[str, str | None] = {
    "INSTANCE_PATH": "instance",
    "DATABASE_URL": None,  # SQLite in the instance folder
    "SECRET_KEY": None,  # a random key kept in the instance folder
    "SECURE_COOKIES": "1",
    "SQLITE_SYNCHRONOUS": "FULL",
    "CONCURRENT_STARTS": "1",
    "START_LIMIT": DEFAULT_START_LIMIT,
    "TRUSTED_PROXIES": "0",
    "PUBLIC_URL": DEFAULT_PUBLIC_URL,
}
PREFIX = "ADVBIAS_"


def parse_start_limit(text: str | int | None, where: str = "") -> tuple[int, float]:
    """``"N/SECONDS"`` (or ``"N"`` for a 600 s window, ``"0"`` for none) as (limit, window_s)."""
    raw = str(text if text is not None else "0").strip()
    where = f" ({where})" if where else ""
    count, _, window = raw.partition("/")
    try:
        limit, seconds = int(count), float(window or 600)
    except ValueError:
        raise InputError(f"start limit {raw!r}{where}: write N/SECONDS, e.g. 30/600, or 0 for none") from None
    if limit < 0 or seconds <= 0:
        raise InputError(f"start limit {raw!r}{where}: N must be >= 0 and SECONDS > 0")
    return limit, seconds


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InputError(f"{where} must be 1 or 0 (true or false), not {value!r}")


def _whole(value: Any, where: str, low: int, high: int, what: str) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise InputError(f"{where} must be a whole number of {what}, not {value!r}") from None
    if not low <= number <= high:
        raise InputError(f"{where} must be between {low} and {high}, not {number}")
    return number


@dataclass(frozen=True)
class Settings:
    """Every setting of the experiment app and its commands, resolved and checked (module docstring)."""

    instance_path: Path
    database_url: str
    secret_key: str | None
    secure_cookies: bool
    sqlite_synchronous: str
    concurrent_starts: int
    start_limit: tuple[int, float]
    trusted_proxies: int
    public_url: str

    @property
    def stimulus_store(self) -> Path:
        """The folder the experiments' images are kept in (inside the instance folder)."""
        return self.instance_path / "stimuli"

    @classmethod
    def resolve(
        cls,
        options: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> "Settings":
        """Settings from ``options`` (keys as in :data:`DEFAULTS`; ``None`` means "not given"), then
        ``environ`` (``os.environ`` unless given) ``ADVBIAS_<KEY>``, then ``defaults``, then :data:`DEFAULTS`.

        Raises :class:`~advbias.errors.InputError` for an unknown option key or a bad value; the
        message names the variable or option the value came from.
        """
        options = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
        env = os.environ if environ is None else environ
        fallback = {**DEFAULTS, **(defaults or {})}
        values: dict[str, Any] = {}
        where: dict[str, str] = {}
        for key in DEFAULTS:
            if key in options:
                values[key], where[key] = options[key], key
            elif env.get(PREFIX + key) is not None:
                values[key], where[key] = env[PREFIX + key], PREFIX + key
            else:
                values[key], where[key] = fallback[key], key
        return cls._check(values, where)

    @classmethod
    def _check(cls, values: Mapping[str, Any], where: Mapping[str, str]) -> "Settings":
        instance = Path(str(values["INSTANCE_PATH"])).expanduser().resolve()
        database_url = str(values["DATABASE_URL"] or "").strip() or f"sqlite:///{instance / 'advbias.db'}"
        mode = str(values["SQLITE_SYNCHRONOUS"]).strip().upper()
        if mode not in SYNCHRONOUS_MODES:
            raise InputError(f"{where['SQLITE_SYNCHRONOUS']}: SQLite synchronous mode {mode!r}: "
                             f"choose {', '.join(SYNCHRONOUS_MODES)}")
        public_url = str(values["PUBLIC_URL"]).strip().rstrip("/")
        if not public_url.startswith(("http://", "https://")):
            raise InputError(f"{where['PUBLIC_URL']} must start with http:// or https://, not {public_url!r}")
        secret = values["SECRET_KEY"]
        return cls(
            instance_path=instance,
            database_url=database_url,
            secret_key=str(secret) if secret else None,
            secure_cookies=_flag(values["SECURE_COOKIES"], where["SECURE_COOKIES"]),
            sqlite_synchronous=mode,
            concurrent_starts=_whole(values["CONCURRENT_STARTS"], where["CONCURRENT_STARTS"], 1, 64, "starts"),
            start_limit=parse_start_limit(values["START_LIMIT"], where["START_LIMIT"]),
            trusted_proxies=_whole(values["TRUSTED_PROXIES"], where["TRUSTED_PROXIES"], 0, 10, "proxies"),
            public_url=public_url,
        )
